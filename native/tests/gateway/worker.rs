//! End to end in workerd: the example Worker (`examples/edge-worker`, Rust → wasm32) served
//! by workerd, talking through the gateway to a real Redis (standalone and Cluster), sharing
//! entries with native caches.
//!
//! Needs the built Worker (`examples/edge-worker/build/`, see `scripts/edge-e2e.sh`) and
//! workerd (`tests/edge/node_modules`). Without them the tests are skipped, unless
//! `LARDER_EDGE_TESTS=require`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::{Cache, CacheExt, RedisCache, request_hash};
use larder_native::RedisTransport;
use larder_native::gateway::{Gateway, SpawnedGateway, Token};
use larder_native::testing::RedisCluster;
use serde_json::{Value as Json, json};

use crate::support::{FULL, Setup};
use crate::upstash::skip_or_fail;

const PREFIX: &str = "e2e";

fn worker_build_dir() -> PathBuf {
    std::env::var_os("LARDER_EDGE_WORKER_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/edge-worker/build"
            ))
        })
}

/// workerd serving the example Worker.
struct Workerd {
    workerd: larder_native::testing::Workerd,
    url: String,
}

impl Workerd {
    /// `None` (after skip_or_fail) when the Worker or workerd is missing.
    async fn start(gateway_url: &str) -> Option<Workerd> {
        let build = worker_build_dir();
        let inner = match larder_native::testing::Workerd::start(
            &build,
            &[
                ("UPSTASH_REDIS_REST_URL", gateway_url),
                ("UPSTASH_REDIS_REST_TOKEN", FULL),
                ("LARDER_REST_BASE64_ARGS", "1"),
                ("LARDER_PREFIX", PREFIX),
            ],
        ) {
            Ok(w) => w,
            Err(e) => {
                skip_or_fail(&format!("{e}; run scripts/edge-e2e.sh"));
                return None;
            }
        };
        let w = Workerd {
            url: inner.url().to_owned(),
            workerd: inner,
        };
        tokio::task::block_in_place(|| {
            w.workerd
                .wait_until_serving("/vectors", Duration::from_secs(30))
        })
        .expect("workerd serves the Worker");
        Some(w)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Json {
        let http = reqwest::Client::new();
        let url = format!("{}{path}", self.url);
        let req = match method {
            "POST" => http.post(url).body(body.unwrap_or_default()),
            _ => http.get(url),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let json: Json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{path}: {status} {}", String::from_utf8_lossy(&bytes)));
        assert!(status.is_success(), "{path}: {status} {json}");
        json
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The scenario, for any Redis topology behind the gateway.
async fn scenario(native: RedisTransport, gateway: &SpawnedGateway, measure: bool) {
    let Some(w) = Workerd::start(&gateway.url()).await else {
        return;
    };
    let native = RedisCache::builder(native).prefix(PREFIX).build().unwrap();

    // Golden key vectors computed inside the Worker.
    let v = w.call("GET", "/vectors", None).await;
    assert_eq!(v["mismatches"], json!([]), "{v}");
    assert!(v["checked"].as_u64().unwrap() >= 79, "{v}");

    // The same request gives the same key in the Worker and natively.
    let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi 👋"}], "temperature": 0.7});
    let hash = request_hash(&request).unwrap();
    let h = w
        .call("POST", "/hash", Some(request.to_string().into_bytes()))
        .await;
    assert_eq!(h["hash"], json!(hash));
    assert_eq!(h["key"], json!(format!("larder:cache:{hash}")));

    // Worker writes, native reads.
    let r = w
        .call(
            "POST",
            &format!("/set?key={hash}&ttl_ms=60000"),
            Some(b"cached by the Worker".to_vec()),
        )
        .await;
    assert_eq!(r["requests"], json!(1), "set is one subrequest");
    assert_eq!(
        native.get(&hash).await.unwrap().as_deref(),
        Some(&b"cached by the Worker"[..])
    );
    // Native writes, Worker reads.
    native
        .set("from-native", Bytes::from_static(b"written natively"), None)
        .await
        .unwrap();
    let r = w.call("GET", "/get?key=from-native", None).await;
    assert_eq!(
        r,
        json!({"hit": true, "value": "written natively", "requests": 1})
    );
    let r = w.call("GET", "/get?key=absent", None).await;
    assert_eq!(r, json!({"hit": false, "value": null, "requests": 1}));
    let r = w
        .call(
            "GET",
            &format!("/mget?key=from-native&key=absent&key={hash}"),
            None,
        )
        .await;
    assert_eq!(
        r,
        json!({"values": ["written natively", null, "cached by the Worker"], "requests": 1})
    );

    // get-or-compute: a miss computes and stores an envelope, a hit reads it; natives see it.
    let req = json!({"model": "m-1", "prompt": "compute me"});
    let body = req.to_string().into_bytes();
    let first = w.call("POST", "/compute", Some(body.clone())).await;
    assert_eq!(first["computed"], json!(true));
    assert_eq!(first["requests"], json!(2), "a miss reads then writes");
    let second = w.call("POST", "/compute", Some(body)).await;
    assert_eq!(second["computed"], json!(false));
    assert_eq!(second["requests"], json!(1), "a hit is one subrequest");
    let envelope = native
        .get_envelope(&request_hash(&req).unwrap())
        .await
        .unwrap()
        .expect("the Worker's envelope");
    assert_eq!(envelope.response, "echo: compute me");
    assert_eq!(envelope.model, "m-1");

    // Stats reach the shared counters (flushed with wait_until after each response).
    let mut shared = json!(null);
    for _ in 0..50 {
        let s = w.call("GET", "/stats", None).await;
        assert_eq!(s["requests"], json!(1), "stats is one subrequest");
        shared = s["shared"].clone();
        if shared["hits"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shared["hits"].as_u64().unwrap() >= 3, "{shared}");
    assert!(shared["misses"].as_u64().unwrap() >= 2, "{shared}");
    assert!(shared["writes"].as_u64().unwrap() >= 2, "{shared}");

    if measure {
        let http = reqwest::Client::new();
        let url = format!("{}/get?key=from-native", w.url);
        let mut samples = Vec::with_capacity(300);
        for i in 0..320 {
            let t = Instant::now();
            let resp = http.get(&url).send().await.unwrap();
            assert!(resp.status().is_success());
            let _ = resp.bytes().await.unwrap();
            if i >= 20 {
                samples.push(t.elapsed());
            }
        }
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
        println!(
            "E2E Worker get (client → workerd → gateway → Redis), {} sequential requests: \
             p50 {:.2} ms, p99 {:.2} ms",
            samples.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_inworkerd_shares_the_cache_with_native_code() {
    let s = Setup::start().await;
    scenario(s.native.clone(), &s.gateway, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_inworkerd_on_a_cluster() {
    if !worker_build_dir().join("index_bg.wasm").exists() {
        return skip_or_fail("the built Worker is missing; run scripts/edge-e2e.sh");
    }
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_default)
        .await
        .unwrap()
        .expect("cluster starts");
    let native = RedisTransport::connect(&cluster.seed_urls().join(","))
        .await
        .expect("cluster transport");
    let gateway = Gateway::builder(Arc::new(native.clone()))
        .token(Token::new(FULL).unwrap())
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    scenario(native, &gateway, false).await;
}
