//! `larder proxy` end to end over HTTP: a real client → the proxy → the fake provider
//! (`larder_native::testing::FakeLlm`), on the in-memory default and on a real Redis.

use std::sync::Arc;
use std::time::Duration;

use larder_core::response::ResponseCache;
use larder_core::{MemoryCache, RedisCache};
use larder_native::RedisTransport;
use larder_native::proxy::{Proxy, SpawnedProxy};
use larder_native::testing::{FakeLlm, RedisServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod worker;

struct Setup {
    fake: FakeLlm,
    proxy: SpawnedProxy,
    client: reqwest::Client,
}

fn memory_cache() -> ResponseCache {
    ResponseCache::local(MemoryCache::builder().build().unwrap())
        .default_ttl(Duration::from_secs(3600))
        .stale_window(Duration::from_secs(3600))
        .build()
        .unwrap()
}

async fn redis_cache(url: &str, prefix: &str) -> ResponseCache {
    let t = RedisTransport::connect(url).await.unwrap();
    let redis = RedisCache::builder(t).prefix(prefix).build().unwrap();
    ResponseCache::redis(redis)
        .default_ttl(Duration::from_secs(3600))
        .stale_window(Duration::from_secs(3600))
        .build()
        .unwrap()
}

async fn proxy_for(cache: ResponseCache, fake: &FakeLlm) -> SpawnedProxy {
    Proxy::builder(cache, fake.url())
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap()
}

async fn setup() -> Setup {
    let fake = FakeLlm::start().await.unwrap();
    let proxy = proxy_for(memory_cache(), &fake).await;
    Setup {
        fake,
        proxy,
        client: reqwest::Client::new(),
    }
}

struct Answer {
    status: StatusCode,
    cache: String,
    key: String,
    age: Option<String>,
    body: Vec<u8>,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn post(s: &Setup, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    post_to(&s.client, &s.proxy.url(), path, body, headers).await
}

async fn post_to(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = client
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        req = req.header("authorization", "Bearer sk-test-a");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, cache, key, age) = (
        resp.status(),
        h("x-larder-cache").unwrap_or_default(),
        h("x-larder-key").unwrap_or_default(),
        h("age"),
    );
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    Answer {
        status,
        cache,
        key,
        age,
        body,
        headers,
    }
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0,
           "messages": [{"role": "user", "content": text}]})
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_a_hit_with_the_same_body() {
    let s = setup().await;
    let first = post(&s, "/v1/chat/completions", &chat("hello"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache, "MISS");
    assert_eq!(
        first.json()["choices"][0]["message"]["content"],
        "You said: hello"
    );
    assert_eq!(first.key.len(), 16);
    let second = post(&s, "/v1/chat/completions", &chat("hello"), &[]).await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(
        second.body, first.body,
        "the stored body, byte for byte (same id)"
    );
    assert_eq!(second.key, first.key);
    assert!(second.age.is_some(), "Age on a hit");
    assert_eq!(s.fake.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_streamed_and_not_is_cached_and_replayed_identically() {
    let s = setup().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let cases: Vec<(&str, Value)> = vec![
        ("/v1/chat/completions", chat("a")),
        ("/v1/chat/completions", streamed(chat("b"))),
        ("/v1/chat/completions", {
            let mut b = streamed(chat("c"));
            b["stream_options"] = json!({"include_usage": true});
            b["tools"] = tools.clone();
            b
        }),
        (
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "d"}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "e", "stream": true}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4.1-mini", "input": "f"}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4.1-mini", "input": "g", "stream": true}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["h", "i"]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": "j"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "k"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "l"}]}),
        ),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let miss = post(&s, path, body, &[("anthropic-version", "2023-06-01")]).await;
        assert_eq!(
            (miss.status, miss.cache.as_str()),
            (StatusCode::OK, "MISS"),
            "{path} {body}"
        );
        let hit = post(&s, path, body, &[("anthropic-version", "2023-06-01")]).await;
        assert_eq!(hit.cache, "HIT", "{path} {body}");
        assert_eq!(
            String::from_utf8_lossy(&hit.body),
            String::from_utf8_lossy(&miss.body),
            "{path}: the same bytes (events, ids, data)"
        );
        if body["stream"] == true {
            assert_eq!(
                hit.headers["content-type"], "text/event-stream",
                "{path}: a replayed stream is a stream"
            );
        }
        assert_eq!(s.fake.calls(), i as u64 + 1, "{path}: one upstream call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_tenants() {
    let s = setup().await;
    let a = post(&s, "/v1/chat/completions", &chat("t"), &[]).await;
    let b = post(
        &s,
        "/v1/chat/completions",
        &chat("t"),
        &[("authorization", "Bearer sk-test-b")],
    )
    .await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("MISS", "MISS"));
    assert_ne!(
        a.body, b.body,
        "another tenant never gets the first one's answer"
    );
    let a2 = post(&s, "/v1/chat/completions", &chat("t"), &[]).await;
    assert_eq!(a2.cache, "HIT");
    assert_eq!(s.fake.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_stale_answers_and_rejections() {
    let s = setup().await;
    // A 4xx is passed through as is and not stored.
    let bad = post(
        &s,
        "/v1/chat/completions",
        &chat("x"),
        &[("x-fake-status", "400")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["message"], "fake failure 400");
    let ok = post(
        &s,
        "/v1/chat/completions",
        &chat("x"),
        &[("x-larder-ttl", "1")],
    )
    .await;
    assert_eq!(ok.cache, "MISS", "the 400 was not stored");
    // A 500 with nothing cached: the upstream's error, unchanged.
    let e = post(
        &s,
        "/v1/chat/completions",
        &chat("y"),
        &[("x-fake-status", "500")],
    )
    .await;
    assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(e.json()["error"]["message"], "fake failure 500");
    // Past its TTL, a 500 or 429 serves the stale answer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for status in ["500", "429", "503"] {
        let stale = post(
            &s,
            "/v1/chat/completions",
            &chat("x"),
            &[("x-fake-status", status)],
        )
        .await;
        assert_eq!(
            (stale.status, stale.cache.as_str()),
            (StatusCode::OK, "STALE"),
            "{status}"
        );
        assert_eq!(stale.body, ok.body);
    }
    // But a 4xx is the caller's answer even with a stale one there (a revoked key must not
    // read the cache).
    let denied = post(
        &s,
        "/v1/chat/completions",
        &chat("x"),
        &[("x-fake-status", "401")],
    )
    .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    // Streamed: the same rules.
    let bad = post(
        &s,
        "/v1/chat/completions",
        &streamed(chat("z")),
        &[("x-fake-status", "400")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let e = post(
        &s,
        "/v1/chat/completions",
        &streamed(chat("z")),
        &[("x-fake-status", "502")],
    )
    .await;
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_controls_and_their_aliases() {
    let s = setup().await;
    let only = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("x-larder-cache", "only-if-cached")],
    )
    .await;
    assert_eq!(only.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(s.fake.calls(), 0, "only-if-cached never asks the model");
    let no_store = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(no_store.cache, "MISS");
    let again = post(&s, "/v1/chat/completions", &chat("o"), &[]).await;
    assert_eq!(again.cache, "MISS", "no-store stored nothing");
    let only = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!((only.status, only.cache.as_str()), (StatusCode::OK, "HIT"));
    let refresh = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(refresh.cache, "MISS");
    assert_ne!(refresh.body, again.body, "asked the model again");
    let after = post(&s, "/v1/chat/completions", &chat("o"), &[]).await;
    assert_eq!(after.body, refresh.body, "and stored the new answer");
    let calls = s.fake.calls();
    let cf = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("cf-aig-skip-cache", "true")],
    )
    .await;
    assert_eq!(cf.cache, "BYPASS");
    assert_eq!(cf.headers["cf-aig-cache-status"], "MISS");
    let he = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("helicone-cache-enabled", "true")],
    )
    .await;
    assert_eq!(
        (
            he.cache.as_str(),
            he.headers["helicone-cache"].to_str().unwrap()
        ),
        ("HIT", "HIT")
    );
    let off = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("helicone-cache-enabled", "false")],
    )
    .await;
    assert_eq!(off.cache, "BYPASS");
    assert_eq!(
        s.fake.calls(),
        calls + 2,
        "the two bypasses asked the model"
    );
    let bad = post(
        &s,
        "/v1/chat/completions",
        &chat("o"),
        &[("x-larder-ttl", "soon")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-larder-ttl")
    );
    let not_json = s
        .client
        .post(format!("{}/v1/chat/completions", s.proxy.url()))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_routes_pass_through_untouched() {
    let s = setup().await;
    let models = s
        .client
        .get(format!("{}/v1/models", s.proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&models.bytes().await.unwrap()).unwrap();
    assert_eq!(v["data"][0]["id"], "fake-model");
    let unknown = post(&s, "/v1/unknown", &chat("u"), &[]).await;
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "the upstream's own answer"
    );
    assert!(unknown.cache.is_empty(), "not a cached route");
    let health = s
        .client
        .get(format!("{}/healthz", s.proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_urls_are_refused_at_build() {
    for bad in ["not a url", "ftp://x", "http://", "http://h/v1?x=1"] {
        let e = Proxy::builder(memory_cache(), bad).build().unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("the upstream") && text.contains(&format!("{bad:?}")),
            "{bad}: {e}"
        );
    }
}

/// Two proxies sharing one Redis (as two processes would): 100 identical requests, split
/// between them and sent at once, make one upstream call — streamed and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_requests_through_two_proxies_make_one_upstream_call() {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let fake = FakeLlm::start().await.unwrap();
    fake.set_latency(Duration::from_millis(300));
    fake.set_chunk_gap(Duration::from_millis(20));
    let a = proxy_for(redis_cache(&server.url(), "p2").await, &fake).await;
    let b = proxy_for(redis_cache(&server.url(), "p2").await, &fake).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    for (round, body) in [chat("together"), streamed(chat("together, streamed"))]
        .into_iter()
        .enumerate()
    {
        let bases = [a.url(), b.url()];
        identical_at_once(&client, &bases, 100, body, || fake.calls(), round).await;
    }
}

/// Sends `n` copies of `body` at once, spread over `bases`, and checks that they made one
/// upstream call (`calls` before and after), one MISS, and the same answer for all.
async fn identical_at_once(
    client: &reqwest::Client,
    bases: &[String],
    n: usize,
    body: Value,
    calls: impl Fn() -> u64,
    round: usize,
) -> Vec<Answer> {
    let before = calls();
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let base = bases[i % bases.len()].clone();
            let (client, body) = (client.clone(), body.clone());
            tokio::spawn(async move {
                post_to(&client, &base, "/v1/chat/completions", &body, &[]).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(
        calls() - before,
        1,
        "round {round}: exactly one upstream call"
    );
    let first = &answers[0].body;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK, "round {round}");
        assert_eq!(
            &a.body, first,
            "round {round}: every caller got the same answer"
        );
    }
    let misses = answers.iter().filter(|a| a.cache == "MISS").count();
    assert_eq!(misses, 1, "round {round}: one MISS, the rest joined or hit");
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_cache_status() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let fake = FakeLlm::start().await.unwrap();
    let proxy = Proxy::builder(memory_cache(), fake.url())
        .name("metrics-test")
        .prometheus(handle)
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = reqwest::Client::new();
    // A model of its own: other tests in this process emit to the same recorder.
    let mut body = chat("m");
    body["model"] = json!("gpt-4o-metrics");
    for _ in 0..3 {
        post_to(&client, &proxy.url(), "/v1/chat/completions", &body, &[]).await;
    }
    let text = client
        .get(format!("{}/metrics", proxy.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |cache: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("larder_proxy_requests_total")
                    && l.contains("proxy=\"metrics-test\"")
                    && l.contains(&format!("cache=\"{cache}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(line("MISS").as_deref(), Some("1"), "{text}");
    assert_eq!(line("HIT").as_deref(), Some("2"), "{text}");
    // Tokens saved per model and tenant (the tenant's hashed namespace, never the key).
    let saved = text
        .lines()
        .find(|l| {
            l.starts_with("larder_response_tokens_saved_total")
                && l.contains("model=\"gpt-4o-metrics\"")
                && l.contains("namespace=\"t-")
        })
        .unwrap_or_else(|| panic!("no tokens-saved series: {text}"));
    assert!(saved.ends_with(" 38"), "two hits of 12 + 7 tokens: {saved}");
    assert!(!text.contains("sk-test"), "no credential in /metrics");
}

/// The official SDKs against the proxy: `openai` and `anthropic` from PyPI
/// (tests/proxy-sdk/sdk_test.py) and `openai` from npm (tests/proxy-sdk/openai.test.mjs),
/// pinned and installed by `scripts/install-proxy-sdks.sh`. Skipped when they are not
/// installed, unless `LARDER_SDK_TESTS=require` (CI) makes that a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proxy-sdk");
    let python = dir.join(".venv/bin/python");
    let node_sdk = dir.join("node_modules/openai/package.json");
    let required = std::env::var("LARDER_SDK_TESTS").is_ok_and(|v| v == "require");
    if !python.exists() || !node_sdk.exists() {
        assert!(
            !required,
            "the SDKs are not installed: bash scripts/install-proxy-sdks.sh"
        );
        eprintln!("skipped: bash scripts/install-proxy-sdks.sh installs the official SDKs");
        return;
    }
    let s = setup().await;
    run_sdk_suites(&s.proxy.url(), "larder proxy").await;
}

/// Runs the official SDKs' suites (tests/proxy-sdk) against the proxy at `url`.
async fn run_sdk_suites(url: &str, what: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proxy-sdk");
    let python = dir.join(".venv/bin/python");
    for (sdk, program, args) in [
        ("python", python.clone(), vec![dir.join("sdk_test.py")]),
        (
            "node",
            std::path::PathBuf::from("node"),
            vec!["--test".into(), dir.join("openai.test.mjs")],
        ),
    ] {
        let url = url.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(program)
                .args(args)
                .env("LARDER_PROXY_URL", url)
                .output()
                .expect("run the SDK tests")
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("--- {sdk} against {what} ---\n{text}");
        assert!(
            out.status.success(),
            "{sdk} SDK tests against {what} failed:\n{text}"
        );
    }
}

/// The upstream gets the caller's credential, or the proxy's when it holds one; the
/// caller's still names the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_callers_credential_or_the_proxys() {
    let s = setup().await;
    post(&s, "/v1/chat/completions", &chat("cred"), &[]).await;
    assert_eq!(
        s.fake.last_credentials().0.as_deref(),
        Some("Bearer sk-test-a")
    );
    let fake = FakeLlm::start().await.unwrap();
    let held = Proxy::builder(memory_cache(), fake.url())
        .openai_key("sk-proxy-openai")
        .anthropic_key("sk-proxy-anthropic")
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = reqwest::Client::new();
    let a = post_to(
        &client,
        &held.url(),
        "/v1/chat/completions",
        &chat("cred"),
        &[],
    )
    .await;
    assert_eq!(a.cache, "MISS");
    assert_eq!(
        fake.last_credentials().0.as_deref(),
        Some("Bearer sk-proxy-openai"),
        "the proxy's key replaced the caller's"
    );
    let m = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "cred"}]});
    post_to(
        &client,
        &held.url(),
        "/v1/messages",
        &m,
        &[("x-api-key", "sk-caller-ant")],
    )
    .await;
    assert_eq!(
        fake.last_credentials().1.as_deref(),
        Some("sk-proxy-anthropic")
    );
    // Tenants still come from the caller's credential.
    let b = post_to(
        &client,
        &held.url(),
        "/v1/chat/completions",
        &chat("cred"),
        &[("authorization", "Bearer sk-other")],
    )
    .await;
    assert_eq!(b.cache, "MISS", "another caller, another tenant");
    let bad = Proxy::builder(memory_cache(), fake.url())
        .openai_key("bad\nkey")
        .build()
        .unwrap_err();
    assert!(bad.to_string().contains("LARDER_UPSTREAM_KEY"), "{bad}");
}

/// Shutting down lets a stream in flight finish: the client gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_streams_in_flight() {
    let fake = FakeLlm::start().await.unwrap();
    fake.set_chunk_gap(Duration::from_millis(30));
    let proxy = proxy_for(memory_cache(), &fake).await;
    let url = proxy.url();
    let client = reqwest::Client::new();
    let reading = tokio::spawn(async move {
        post_to(
            &client,
            &url,
            "/v1/chat/completions",
            &streamed(chat("shut down slowly please")),
            &[],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    proxy.shutdown().await.unwrap();
    let answer = reading.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let text = String::from_utf8(answer.body).unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the whole stream arrived: {text}"
    );
}

/// Callers that joined an upstream call that got a 4xx get that 4xx too, never a stale
/// answer in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_callers_of_a_rejected_call_are_not_served_stale() {
    let s = setup().await;
    let ok = post(
        &s,
        "/v1/chat/completions",
        &chat("revoked"),
        &[("x-larder-ttl", "1")],
    )
    .await;
    assert_eq!(ok.cache, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.fake.set_latency(Duration::from_millis(300));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.proxy.url());
            tokio::spawn(async move {
                post_to(
                    &client,
                    &url,
                    "/v1/chat/completions",
                    &chat("revoked"),
                    &[("x-fake-status", "401")],
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "cache {}", a.cache);
    }
    assert!(s.fake.calls() <= 3, "the callers shared the upstream call");
}
