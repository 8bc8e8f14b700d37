//! The cost of encryption at rest: sealing and opening a 1 KB and a 64 KB value
//! (AES-256-GCM with the Redis key as associated data), per operation and per KB, and of a
//! keyed request hash. With `LARDER_BENCH_JSON` set, each figure is appended to it as one
//! JSON line (suite `seal`).

use std::io::Write;
use std::time::{Duration, Instant};

use larder_core::seal::{HashKey, Keyring};

fn emit(record: serde_json::Value) {
    println!("{record}");
    let Some(path) = std::env::var_os("LARDER_BENCH_JSON") else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open $LARDER_BENCH_JSON");
    writeln!(file, "{record}").expect("write $LARDER_BENCH_JSON");
}

/// Median of 7 rounds of ~200 ms, in ns per call.
fn measure(mut f: impl FnMut()) -> f64 {
    let mut rounds = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            for _ in 0..64 {
                f();
            }
            n += 64;
        }
        rounds.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

fn main() {
    let ring = Keyring::parse("k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
    let key = b"larder:cache:0123456789abcdef0123456789abcdef0123456789abcdef01234567";
    for kb in [1usize, 64] {
        let plain = vec![b'x'; kb * 1024];
        let sealed = ring.seal(key, &plain).unwrap();
        let seal_ns = measure(|| {
            std::hint::black_box(ring.seal(key, std::hint::black_box(&plain)).unwrap());
        });
        let open_ns = measure(|| {
            std::hint::black_box(ring.open(key, std::hint::black_box(&sealed)).unwrap());
        });
        emit(serde_json::json!({
            "suite": "seal", "kind": "value", "kb": kb,
            "seal_ns": seal_ns, "open_ns": open_ns,
            "seal_ns_per_kb": seal_ns / kb as f64, "open_ns_per_kb": open_ns / kb as f64,
        }));
    }
    let hk = HashKey::new(vec![7u8; 32]).unwrap();
    let canonical = br#"{"messages":[{"content":"What is the capital of France?","role":"user"}],"model":"gpt-4o-mini","temperature":0}"#;
    let hmac_ns = measure(|| {
        std::hint::black_box(hk.hash_hex(std::hint::black_box(canonical)));
    });
    let tenant_ns = measure(|| {
        std::hint::black_box(hk.for_tenant("t-0123456789abcdef").hash_hex(canonical));
    });
    emit(serde_json::json!({
        "suite": "seal", "kind": "hash", "bytes": canonical.len(),
        "hmac_ns": hmac_ns, "tenant_hkdf_and_hmac_ns": tenant_ns,
    }));
}
