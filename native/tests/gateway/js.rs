//! The `larder` npm package (js/: larder-core through wasm-bindgen) against a real Redis
//! through the gateway: its Node test suite, and a TypeScript Worker on it served by workerd,
//! sharing entries with the native crates and with the Rust Worker (examples/edge-worker),
//! with the Vercel AI SDK's middleware.
//!
//! Needs the built package (`scripts/build-js.sh`), its npm dev dependencies (`js/node_modules`)
//! and the bundled Worker (`scripts/js-tests.sh` does all three). Without them the tests are
//! skipped, unless `LARDER_JS_TESTS=require`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache};
use larder_core::seal::{HashKey, Keyring};
use larder_core::{RedisCache, request_hash};
use larder_native::RedisTransport;
use larder_native::testing::Workerd;
use serde_json::{Value as Json, json};

use crate::support::{FULL, Setup};

const PREFIX: &str = "jspkg";

fn js_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../js"))
}

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("LARDER_JS_TESTS").as_deref() != Ok("require"),
        "LARDER_JS_TESTS=require but {why}"
    );
    eprintln!("skipped: {why}");
}

/// Whether the package is built and its test dependencies installed.
fn ready() -> bool {
    for need in [
        "dist/wasm/larder_bg.wasm",
        "node_modules/ai",
        "test/worker/build/index.js",
    ] {
        if !js_dir().join(need).exists() {
            skip_or_fail(&format!("js/{need} is missing; run scripts/js-tests.sh"));
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_package_node_suite_through_the_gateway() {
    if !ready() {
        return;
    }
    let s = Setup::start().await;
    let url = s.gateway.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(["--test", "test/larder.test.mjs"])
            .current_dir(js_dir())
            .env("LARDER_JS_REDIS_URL", &url)
            .env("LARDER_JS_REDIS_TOKEN", FULL)
            .env("LARDER_JS_TESTS", "require")
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the Node suite ends within 5 minutes")
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Node suite failed");
    // The Redis part ran (not skipped): its suite is in the report.
    assert!(stdout.contains("Redis through larder gateway"), "{stdout}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
}

/// A workerd serving `build` (a Worker with `index.js` and `index_bg.wasm`).
struct Served {
    _workerd: Workerd,
    url: String,
    http: reqwest::Client,
}

impl Served {
    fn start(build: &Path, bindings: &[(&str, &str)]) -> Served {
        let w = Workerd::start(build, bindings).expect("workerd starts");
        w.wait_until_serving("/vectors", Duration::from_secs(30))
            .expect("workerd serves the Worker");
        Served {
            url: w.url().to_owned(),
            _workerd: w,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Json) -> Json {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"))
    }

    async fn get(&self, path: &str) -> Json {
        let text = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"))
    }
}

fn bindings<'a>(gateway: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut b = vec![
        ("UPSTASH_REDIS_REST_URL", gateway),
        ("UPSTASH_REDIS_REST_TOKEN", FULL),
        ("LARDER_REST_BASE64_ARGS", "1"),
        ("LARDER_PREFIX", PREFIX),
    ];
    b.extend_from_slice(extra);
    b
}

fn response_cache(native: &RedisTransport, keys: Option<(&str, &str)>) -> ResponseCache {
    let redis = RedisCache::builder(native.clone())
        .prefix(PREFIX)
        .build()
        .unwrap();
    let mut b = ResponseCache::redis(redis);
    if let Some((ring, secret)) = keys {
        b = b
            .encryption(Keyring::parse(ring).unwrap())
            .hash_key(HashKey::parse(secret).unwrap());
    }
    b.build().unwrap()
}

fn chat_chunks(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split_inclusive(' ')
        .map(|t| {
            format!(
                "data: {}\n\n",
                json!({"id": "c-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                       "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
            )
        })
        .collect();
    out.push("data: [DONE]\n\n".into());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_package_typescript_on_the_edge_runtime_shares_the_cache() {
    if !ready() {
        return;
    }
    let s = Setup::start().await;
    let gateway = s.gateway.url();
    let ts = Served::start(
        &js_dir().join("test/worker/build"),
        &bindings(&gateway, &[]),
    );
    let native = response_cache(&s.native, None);

    // The golden vectors, inside workerd.
    let v = ts.get("/vectors").await;
    assert_eq!(v["mismatches"], json!([]), "{v}");
    assert!(v["checked"].as_u64().unwrap() >= 80, "{v}");

    // MISS then HIT in the TypeScript Worker; a hit is one subrequest.
    let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Capital of France? 🇫🇷"}]});
    let first = ts
        .post("/compute", json!({"request": request, "text": "Paris."}))
        .await;
    assert_eq!(
        (&first["status"], &first["text"], &first["backend"]),
        (&json!("MISS"), &json!("Paris."), &json!("redis"))
    );
    let second = ts
        .post("/compute", json!({"request": request, "text": "never"}))
        .await;
    assert_eq!(
        (&second["status"], &second["text"]),
        (&json!("HIT"), &json!("Paris."))
    );
    assert_eq!(second["requests"], json!(1), "{second}");

    // TypeScript wrote it, Rust reads it: the same key and envelope.
    let req = LlmRequest::from_json(request.clone()).unwrap();
    let control = CacheControl::default();
    assert_eq!(first["key"], json!(native.key(&req, &control).unwrap()));
    let hit = native
        .get(&req, &control)
        .await
        .unwrap()
        .expect("Rust reads the TS entry");
    assert_eq!(hit.value.text, "Paris.");
    assert_eq!(hit.value.model, "worker-model");

    // Rust writes, TypeScript reads (in a namespace, to check those too).
    let req2 = json!({"model": "claude-sonnet", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.2});
    native
        .put(
            &LlmRequest::from_json(req2.clone()).unwrap(),
            &CacheControl::default().namespace("tenant-7"),
            &LlmResponse::new("Hello from Rust."),
        )
        .await
        .unwrap();
    let got = ts
        .post("/get", json!({"request": req2, "namespace": "tenant-7"}))
        .await;
    assert_eq!(
        got,
        json!({"hit": true, "text": "Hello from Rust.", "status": "HIT", "backend": "redis", "requests": got["requests"]})
    );
    let other = ts.post("/get", json!({"request": req2})).await;
    assert_eq!(other["hit"], json!(false), "another namespace: {other}");

    // Streams: recorded by TypeScript, replayed by Rust event for event, and the other way.
    let sreq = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Stream it"}], "stream": true});
    let chunks = chat_chunks("Streamed from the edge.");
    let resp = ts
        .http
        .post(format!("{}/stream", ts.url))
        .body(json!({"request": sreq, "events": chunks}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-cache"], "MISS");
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        chunks.concat(),
        "MISS passes the stream on byte for byte"
    );
    let replay = native
        .stream_with(
            &LlmRequest::from_json(sreq.clone()).unwrap(),
            &control,
            || async {
                Err::<futures_util::stream::Empty<Result<Bytes, std::io::Error>>, _>(
                    std::io::Error::other("not called"),
                )
            },
        )
        .await
        .unwrap();
    assert_eq!(replay.status().as_str(), "HIT");
    let events: Vec<_> = replay.map(|e| e.unwrap()).collect().await;
    let wire: Vec<u8> = events.iter().flat_map(|e| e.encode().to_vec()).collect();
    assert_eq!(String::from_utf8(wire).unwrap(), chunks.concat());

    let sreq2 = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Stream it natively"}], "stream": true});
    let chunks2 = chat_chunks("Streamed from Rust.");
    let body2 = Bytes::from(chunks2.concat());
    let live = native
        .stream_with(
            &LlmRequest::from_json(sreq2.clone()).unwrap(),
            &control,
            || async move {
                Ok::<_, std::io::Error>(futures_util::stream::iter([Ok::<_, std::io::Error>(
                    body2,
                )]))
            },
        )
        .await
        .unwrap();
    assert_eq!(live.status().as_str(), "MISS");
    let _: Vec<_> = live.collect().await;
    let resp = ts
        .http
        .post(format!("{}/stream", ts.url))
        .body(json!({"request": sreq2, "events": ["data: not called\n\n"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-cache"], "HIT");
    assert_eq!(resp.text().await.unwrap(), chunks2.concat());

    // The Vercel AI SDK (ai 7) with larder's middleware: MISS then HIT, generate and stream.
    let g1 = ts
        .post(
            "/ai/generate",
            json!({"prompt": "Weather in Paris?", "text": "Sunny, 21 °C."}),
        )
        .await;
    let g2 = ts
        .post(
            "/ai/generate",
            json!({"prompt": "Weather in Paris?", "text": "never"}),
        )
        .await;
    assert_eq!(
        (&g1["calls"], &g2["calls"]),
        (&json!(1), &json!(0)),
        "{g1} {g2}"
    );
    assert_eq!(
        (&g1["text"], &g2["text"]),
        (&json!("Sunny, 21 °C."), &json!("Sunny, 21 °C."))
    );
    assert_eq!(g2["timestampIsDate"], json!(true));
    assert_eq!(g1["timestamp"], g2["timestamp"]);
    assert_eq!(g1["inputTokens"], g2["inputTokens"]);
    let s1 = ts
        .post(
            "/ai/stream",
            json!({"prompt": "Weather in Lyon?", "text": "Cloudy, 15 °C."}),
        )
        .await;
    let s2 = ts
        .post(
            "/ai/stream",
            json!({"prompt": "Weather in Lyon?", "text": "never"}),
        )
        .await;
    assert_eq!(
        (&s1["calls"], &s2["calls"]),
        (&json!(1), &json!(0)),
        "{s1} {s2}"
    );
    assert_eq!(s1["text"], json!("Cloudy, 15 °C."));
    assert_eq!(
        s1["parts"], s2["parts"],
        "the stream parts replay identically"
    );
    let parts = s2["parts"].as_array().unwrap();
    assert!(
        parts
            .iter()
            .any(|p| p["type"] == "tool-call" && p["toolName"] == "weather"),
        "{s2}"
    );
    assert!(
        parts.iter().filter(|p| p["type"] == "text-delta").count() >= 3,
        "{s2}"
    );
    assert_eq!(s2["metadataDate"], json!(true));
    // Another prompt is another key.
    let s3 = ts
        .post(
            "/ai/stream",
            json!({"prompt": "Weather in Nice?", "text": "Warm."}),
        )
        .await;
    assert_eq!(s3["calls"], json!(1));

    // The Rust Worker (examples/edge-worker) and the TypeScript Worker share raw entries.
    let rust_build = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/edge-worker/build"
    ));
    if !rust_build.join("index_bg.wasm").exists() {
        return skip_or_fail("the Rust Worker is not built; run scripts/edge-e2e.sh");
    }
    let rust = Served::start(&rust_build, &bindings(&gateway, &[]));
    let q = json!({"model": "m-1", "prompt": "from the Rust Worker"});
    let r = rust.post("/compute", q.clone()).await;
    assert_eq!(r["computed"], json!(true));
    let hash = request_hash(&q).unwrap();
    let e = ts.post("/envelope/get", json!({"key": hash})).await;
    assert_eq!(
        e["envelope"]["response"],
        json!("echo: from the Rust Worker"),
        "{e}"
    );
    assert_eq!(e["envelope"]["model"], json!("m-1"));
    let q2 = json!({"model": "m-2", "prompt": "from the TypeScript Worker"});
    ts.post(
        "/envelope/set",
        json!({"key": request_hash(&q2).unwrap(), "envelope": {"response": "stored by TypeScript", "model": "m-2", "timestamp": 1_764_090_000}}),
    )
    .await;
    let r2 = rust.post("/compute", q2).await;
    assert_eq!(
        (&r2["computed"], &r2["response"], &r2["model"]),
        (&json!(false), &json!("stored by TypeScript"), &json!("m-2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_package_encrypted_entries_are_shared_and_opaque() {
    if !ready() {
        return;
    }
    let s = Setup::start().await;
    let gateway = s.gateway.url();
    let ring = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=,k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let secret = "bGFyZGVyLXRlc3QtaGFzaC1zZWNyZXQtMzItYnl0ZXM=";
    let ts = Served::start(
        &js_dir().join("test/worker/build"),
        &bindings(
            &gateway,
            &[
                ("LARDER_ENCRYPTION_KEYS", ring),
                ("LARDER_HASH_SECRET", secret),
            ],
        ),
    );
    let native = response_cache(&s.native, Some((ring, secret)));
    let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my secret question"}]});
    let a = ts
        .post(
            "/compute",
            json!({"request": request, "text": "the secret answer"}),
        )
        .await;
    assert_eq!(a["status"], json!("MISS"));
    let req = LlmRequest::from_json(request.clone()).unwrap();
    let hit = native
        .get(&req, &CacheControl::default())
        .await
        .unwrap()
        .expect("Rust opens what TypeScript sealed");
    assert_eq!(hit.value.text, "the secret answer");
    native
        .put(
            &LlmRequest::from_json(json!({"model": "m", "prompt": "rust secret"})).unwrap(),
            &CacheControl::default(),
            &LlmResponse::new("sealed by Rust"),
        )
        .await
        .unwrap();
    let got = ts
        .post(
            "/get",
            json!({"request": {"model": "m", "prompt": "rust secret"}}),
        )
        .await;
    assert_eq!(got["text"], json!("sealed by Rust"));

    // Nothing in Redis holds the question or the answer in clear.
    let keys = larder_native::testing::command(&s.redis.addr(), &["KEYS", "*"])
        .unwrap()
        .as_array()
        .unwrap()
        .to_vec();
    assert!(keys.len() >= 2, "{keys:?}");
    for k in keys {
        let k = k.as_text().unwrap();
        assert!(!k.contains("secret"), "{k}");
        if !k.contains(":cache:") {
            continue;
        }
        let v = larder_native::testing::command(&s.redis.addr(), &["GET", k.as_str()]).unwrap();
        let v = format!("{v:?}");
        assert!(
            !v.contains("secret") && !v.contains("sealed by"),
            "{k}: {v}"
        );
    }
}
