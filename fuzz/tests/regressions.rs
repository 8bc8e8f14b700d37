//! Replays every saved fuzz input (`fuzz/regressions/<target>/*`) through its target's check,
//! so that a bug the fuzzer found stays fixed under plain `cargo test`.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
    files.sort();
    for path in files {
        let data = std::fs::read(&path).expect("readable input");
        eprintln!("replaying {}", path.display());
        check(&data);
    }
}

#[test]
fn envelope_decode() {
    replay("envelope_decode", larder_fuzz::envelope_decode::check);
}

#[test]
fn rest_codec() {
    replay("rest_codec", larder_fuzz::rest_codec::check);
}

#[test]
fn gateway_request() {
    replay("gateway_request", larder_fuzz::gateway_request::check);
}

#[test]
fn keys_canonical() {
    replay("keys_canonical", larder_fuzz::keys_canonical::check);
}

#[test]
fn resp_values() {
    replay("resp_values", larder_fuzz::resp_values::check);
}
