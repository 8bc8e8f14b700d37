//! `larder proxy` against LiteLLM's proxy (`litellm[proxy]` from PyPI, with its Redis cache),
//! the same fake provider behind both, in one run: cache-hit requests/s and latency, the
//! latency a miss adds over calling the provider directly, and upstream calls for 100
//! concurrent identical requests. When the proxy Worker is built (`scripts/edge-e2e.sh`) and
//! workerd is installed, the same cases run through the Worker in workerd (on the same Redis,
//! through `larder gateway`), with its wasm size.
//!
//! Run with `scripts/bench.sh` (part `proxy`, which installs the pinned LiteLLM into a venv
//! and sets `LITELLM_BIN`), or `cargo bench -p larder-native --features cli,test-util --bench
//! proxy` (larder only when `LITELLM_BIN` is unset). With `LARDER_BENCH_JSON` set, every
//! figure is appended to it as one JSON line (suite `proxy`).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder_core::RedisCache;
use larder_core::response::ResponseCache;
use larder_native::RedisTransport;
use larder_native::gateway::{Gateway, Token};
use larder_native::proxy::Proxy;
use larder_native::testing::{FakeLlm, RedisServer, Workerd};
use serde_json::json;

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

/// Every request's credential (LiteLLM's master key; a tenant for larder).
const MASTER_KEY: &str = "sk-larder-bench-5f0e2b7c9d1a4e3f8b6c0a2d4e6f8a1c";

fn secs() -> Duration {
    let s: f64 = std::env::var("LARDER_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s.max(0.5))
}

fn body(text: &str) -> String {
    json!({"model": "gpt-4o-mini", "temperature": 0,
           "messages": [{"role": "user", "content": text}]})
    .to_string()
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, Duration) {
    let t0 = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            (status, t0.elapsed())
        }
        Err(_) => (0, t0.elapsed()),
    }
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// `concurrency` tasks repeat one cached request for the run's duration.
async fn hits(name: &str, url: &str, concurrency: usize, fake: &FakeLlm) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let (status, _) = post(&client, url, body("the cached question")).await;
    assert_eq!(status, 200, "{name}: the warm-up request");
    let _ = post(&client, url, body("the cached question")).await;
    let calls_before = fake.calls();
    let deadline = Instant::now() + secs();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let (status, d) = post(&client, &url, body("the cached question")).await;
                    if status == 200 {
                        lat.push(d);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let took = started.elapsed().as_secs_f64();
    emit(json!({
        "suite": "proxy", "kind": "hits", "proxy": name, "concurrency": concurrency,
        "requests": all.len(), "errors": errors, "rps": all.len() as f64 / took,
        "upstream_calls": fake.calls() - calls_before,
        "p50_ms": pct(&mut all, 0.5), "p99_ms": pct(&mut all, 0.99),
    }));
}

/// Sequential misses (a new question each time) through `url`, and the same straight to
/// the provider, interleaved: what a miss adds.
async fn misses(name: &str, url: &str, upstream: &str, n: usize) {
    let client = reqwest::Client::new();
    let mut through = Vec::new();
    let mut direct = Vec::new();
    for i in 0..n {
        let (s1, d1) = post(&client, url, body(&format!("{name} miss {i}"))).await;
        let (s2, d2) = post(&client, upstream, body(&format!("{name} direct {i}"))).await;
        if s1 == 200 && s2 == 200 {
            through.push(d1);
            direct.push(d2);
        }
    }
    let (t50, d50) = (pct(&mut through, 0.5), pct(&mut direct, 0.5));
    emit(json!({
        "suite": "proxy", "kind": "miss", "proxy": name, "n": through.len(),
        "through_p50_ms": t50, "direct_p50_ms": d50, "added_p50_ms": t50 - d50,
        "through_p99_ms": pct(&mut through, 0.99), "direct_p99_ms": pct(&mut direct, 0.99),
    }));
}

/// 100 identical requests at once (a question nobody asked yet): upstream calls made.
async fn stampede(name: &str, url: &str, fake: &FakeLlm) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(100)
        .build()
        .unwrap();
    let before = fake.calls();
    let q = format!("{name} stampede");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, url, q) = (client.clone(), url.to_owned(), q.clone());
            tokio::spawn(async move { post(&client, &url, body(&q)).await.0 })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    emit(json!({
        "suite": "proxy", "kind": "stampede", "proxy": name, "requests": 100, "ok": ok,
        "upstream_calls": fake.calls() - before, "model_latency_ms": 300,
    }));
}

/// The proxy Worker's build directory.
fn worker_build() -> std::path::PathBuf {
    std::env::var_os("LARDER_PROXY_WORKER_BUILD")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/proxy-worker/build"
            ))
        })
}

/// The proxy Worker in workerd, on the Redis at `redis_url` through a gateway of its own,
/// forwarding to `upstream`; its wasm size is emitted. `None` when it is not built here.
async fn start_worker(
    redis_url: &str,
    upstream: &str,
) -> Option<(Workerd, larder_native::gateway::SpawnedGateway)> {
    const TOKEN: &str = "bench-proxy-worker-token-0123456789";
    let build = worker_build();
    let wasm = std::fs::read(build.join("index_bg.wasm")).ok()?;
    let gzip = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(build.join("index_bg.wasm"))
        .output()
        .ok()?
        .stdout
        .len();
    emit(
        json!({"suite": "proxy", "kind": "worker_size", "raw_bytes": wasm.len(),
                "gzip_bytes": gzip}),
    );
    let transport = RedisTransport::connect(redis_url).await.ok()?;
    let gateway = Gateway::builder(std::sync::Arc::new(transport))
        .token(Token::new(TOKEN).ok()?)
        .build()
        .ok()?
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?)
        .ok()?;
    let gateway_url = gateway.url();
    let w = Workerd::start(
        &build,
        &[
            ("LARDER_UPSTREAM", upstream),
            ("LARDER_PREFIX", "bench-proxy"),
            ("UPSTASH_REDIS_REST_URL", gateway_url.as_str()),
            ("UPSTASH_REDIS_REST_TOKEN", TOKEN),
            ("LARDER_REST_BASE64_ARGS", "1"),
        ],
    )
    .map_err(|e| eprintln!("the proxy Worker does not run here: {e}"))
    .ok()?;
    match w.wait_until_serving("/healthz", Duration::from_secs(30)) {
        Ok(()) => Some((w, gateway)),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// LiteLLM's proxy with its Redis cache in front of the fake provider.
fn start_litellm(
    bin: &str,
    fake: &str,
    redis_port: u16,
) -> Option<(Child, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: {fake}/v1\n      api_key: sk-fake\nlitellm_settings:\n  cache: true\n  cache_params:\n    type: redis\n    host: 127.0.0.1\n    port: {redis_port}\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--num_workers",
            "1",
        ])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_MASTER_KEY", MASTER_KEY)
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOG", "ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, url, dir));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("LiteLLM did not start listening within 120 s");
    None
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start().expect("redis-server");
    rt.block_on(async {
        let fake = FakeLlm::start().await.unwrap();
        let redis = RedisCache::builder(RedisTransport::connect(&server.url()).await.unwrap())
            .prefix("bench-proxy")
            .build()
            .unwrap();
        let cache = ResponseCache::redis(redis)
            .default_ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        let larder = Proxy::builder(cache, fake.url())
            .build()
            .unwrap()
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
            .unwrap();
        let litellm = std::env::var("LITELLM_BIN")
            .ok()
            .and_then(|bin| start_litellm(&bin, &fake.url(), server.port()));
        let mut proxies: Vec<(&str, String)> = vec![("larder proxy", larder.url())];
        if let Some((_, url, _)) = &litellm {
            proxies.push(("LiteLLM proxy", url.clone()));
        } else {
            eprintln!("LITELLM_BIN unset or LiteLLM failed to start: larder only");
        }
        let worker = start_worker(&server.url(), &fake.url()).await;
        match &worker {
            Some((w, _)) => proxies.push(("proxy Worker (workerd)", w.url().to_owned())),
            None => eprintln!("the proxy Worker is not built (scripts/edge-e2e.sh): skipped"),
        }
        for (name, url) in &proxies {
            hits(name, url, 1, &fake).await;
            hits(name, url, 50, &fake).await;
            misses(name, url, &fake.url(), 50).await;
        }
        fake.set_latency(Duration::from_millis(300));
        for (name, url) in &proxies {
            stampede(name, url, &fake).await;
        }
        drop(worker);
        if let Some((mut child, _, _dir)) = litellm {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
    drop(server);
}
