//! The proxy as a Cloudflare Worker (`examples/proxy-worker`, built by worker-build) in
//! workerd: the official SDKs through it, its cache shared with `larder proxy` on the same
//! Redis (the Worker through the gateway, natively over redis-rs), one upstream call for
//! concurrent identical requests in two workerd processes, and its subrequest counts.
//!
//! Needs the built Worker (`scripts/edge-e2e.sh` builds it) and workerd
//! (`tests/edge/node_modules`); without them the tests are skipped, unless
//! `LARDER_EDGE_TESTS=require`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use larder_core::Transport;
use larder_native::gateway::{Gateway, SpawnedGateway, Token};
use larder_native::testing::{FakeLlm, RedisServer, Workerd};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Answer, chat, post_to, proxy_for, redis_cache, streamed};

const TOKEN: &str = "worker-proxy-test-token-0123456789";
const PREFIX: &str = "wp";

fn build_dir() -> PathBuf {
    std::env::var_os("LARDER_PROXY_WORKER_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/proxy-worker/build"
            ))
        })
}

fn skip_or_fail(why: &str) {
    let required = std::env::var("LARDER_EDGE_TESTS").is_ok_and(|v| v == "require");
    assert!(!required, "LARDER_EDGE_TESTS=require but {why}");
    eprintln!("skipped: {why}");
}

/// A real Redis, the gateway in front of it, and the fake provider.
struct Backend {
    redis: RedisServer,
    gateway: SpawnedGateway,
    fake: FakeLlm,
}

impl Backend {
    async fn start() -> Backend {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap()
            .expect("redis-server starts");
        let native = larder_native::RedisTransport::connect(&redis.url())
            .await
            .unwrap();
        let gateway = Gateway::builder(Arc::new(native))
            .token(Token::new(TOKEN).unwrap())
            .build()
            .unwrap()
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
            .unwrap();
        let fake = FakeLlm::start().await.unwrap();
        Backend {
            redis,
            gateway,
            fake,
        }
    }

    /// The proxy Worker in a workerd of its own, on this Redis (through the gateway) or,
    /// with `redis` false, on its in-memory default. `None` after skip_or_fail when it
    /// cannot run here.
    async fn worker(&self, redis: bool) -> Option<Workerd> {
        self.worker_with(redis, &[]).await
    }

    /// [`worker`](Self::worker) with more bindings.
    async fn worker_with(&self, redis: bool, more: &[(&str, &str)]) -> Option<Workerd> {
        let gateway = self.gateway.url();
        let upstream = self.fake.url();
        let mut bindings = vec![
            ("LARDER_UPSTREAM", upstream.as_str()),
            ("LARDER_ANTHROPIC_UPSTREAM", upstream.as_str()),
            ("LARDER_PREFIX", PREFIX),
        ];
        if redis {
            bindings.extend([
                ("UPSTASH_REDIS_REST_URL", gateway.as_str()),
                ("UPSTASH_REDIS_REST_TOKEN", TOKEN),
                ("LARDER_REST_BASE64_ARGS", "1"),
            ]);
        }
        bindings.extend_from_slice(more);
        let w = match Workerd::start(&build_dir(), &bindings) {
            Ok(w) => w,
            Err(e) => {
                skip_or_fail(&format!("{e}; run scripts/edge-e2e.sh"));
                return None;
            }
        };
        let ready = tokio::task::block_in_place(|| {
            w.wait_until_serving("/healthz", Duration::from_secs(30))
        });
        ready.expect("workerd serves the Worker");
        Some(w)
    }
}

fn redis_requests(a: &Answer) -> u64 {
    a.headers
        .get("x-larder-redis-requests")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-larder-redis-requests: {:?}", a.headers))
}

/// The official SDKs (`openai` from npm and PyPI, `anthropic` from PyPI) run their suites
/// against the Worker exactly as against `larder proxy`: MISS then HIT, streamed and not,
/// events identical, tenants apart, STALE on a 500, a 400 passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_pass_through_the_worker() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proxy-sdk");
    let python = dir.join(".venv/bin/python");
    if !python.exists() || !dir.join("node_modules/openai/package.json").exists() {
        skip_or_fail("the SDKs are not installed: bash scripts/install-proxy-sdks.sh");
        return;
    }
    let b = Backend::start().await;
    let Some(w) = b.worker(true).await else {
        return;
    };
    super::run_sdk_suites(w.url(), "the proxy Worker").await;
}

/// What the Worker stored is a HIT for `larder proxy` on the same Redis, byte for byte,
/// and the other way round; streamed and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_and_the_native_proxy_share_one_cache() {
    let b = Backend::start().await;
    let Some(w) = b.worker(true).await else {
        return;
    };
    let native = proxy_for(redis_cache(&b.redis.url(), PREFIX).await, &b.fake).await;
    let client = reqwest::Client::new();
    let path = "/v1/chat/completions";
    let cases = [
        ("worker first", chat("shared, worker first"), true),
        ("native first", chat("shared, native first"), false),
        (
            "worker first, streamed",
            streamed(chat("shared s, worker first")),
            true,
        ),
        (
            "native first, streamed",
            streamed(chat("shared s, native first")),
            false,
        ),
    ];
    for (what, body, worker_first) in cases {
        let (first, second) = if worker_first {
            (w.url().to_owned(), native.url())
        } else {
            (native.url(), w.url().to_owned())
        };
        let calls = b.fake.calls();
        let a = post_to(&client, &first, path, &body, &[]).await;
        let h = post_to(&client, &second, path, &body, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{what}");
        assert_eq!(
            (a.cache.as_str(), h.cache.as_str()),
            ("MISS", "HIT"),
            "{what}"
        );
        assert_eq!(a.body, h.body, "{what}: byte-identical");
        assert_eq!(a.key, h.key, "{what}: the same key");
        assert_eq!(b.fake.calls() - calls, 1, "{what}: one upstream call");
        if body["stream"] == json!(true) {
            let text = String::from_utf8_lossy(&h.body);
            assert!(text.contains("data: [DONE]"), "{what}: {text}");
        }
    }
}

/// Two workerd processes (separate isolates) and 50 concurrent identical requests split
/// between them make exactly one upstream call, streamed and not; every caller gets the
/// same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_in_two_workerd_processes_make_one_upstream_call() {
    let b = Backend::start().await;
    let (Some(w1), Some(w2)) = (b.worker(true).await, b.worker(true).await) else {
        return;
    };
    b.fake.set_latency(Duration::from_millis(400));
    b.fake.set_chunk_gap(Duration::from_millis(20));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(100)
        .build()
        .unwrap();
    for (round, body) in [chat("fifty"), streamed(chat("fifty, streamed"))]
        .into_iter()
        .enumerate()
    {
        let bases = [w1.url().to_owned(), w2.url().to_owned()];
        let answers =
            super::identical_at_once(&client, &bases, 50, body, || b.fake.calls(), round).await;
        let most = answers.iter().map(redis_requests).max().unwrap();
        println!("round {round}: at most {most} Redis requests before a response started");
    }
}

/// Subrequests per request type: a hit makes one HTTP request to Redis (the lookup); a
/// miss makes the lookup and the lease before the upstream call (its store runs after the
/// response, under waitUntil); a bypass makes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subrequests_per_request_type() {
    let b = Backend::start().await;
    let Some(w) = b.worker(true).await else {
        return;
    };
    let client = reqwest::Client::new();
    for body in [chat("count"), streamed(chat("count, streamed"))] {
        let miss = post_to(&client, w.url(), "/v1/chat/completions", &body, &[]).await;
        let hit = post_to(&client, w.url(), "/v1/chat/completions", &body, &[]).await;
        let bypass = post_to(
            &client,
            w.url(),
            "/v1/chat/completions",
            &body,
            &[("x-larder-cache", "bypass")],
        )
        .await;
        assert_eq!(
            (
                miss.cache.as_str(),
                hit.cache.as_str(),
                bypass.cache.as_str()
            ),
            ("MISS", "HIT", "BYPASS")
        );
        assert_eq!(redis_requests(&hit), 1, "a hit is one request to Redis");
        assert_eq!(redis_requests(&bypass), 0, "a bypass does not touch Redis");
        let m = redis_requests(&miss);
        assert!((2..=8).contains(&m), "a miss before its answer: {m}");
        println!(
            "stream={}: miss {m}, hit {}, bypass {}",
            body["stream"] == json!(true),
            redis_requests(&hit),
            redis_requests(&bypass)
        );
    }
}

/// With no Redis configured the Worker caches in its isolate's memory: MISS then HIT,
/// streamed and not, and no Redis request count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_worker_caches_in_memory() {
    let b = Backend::start().await;
    let Some(w) = b.worker(false).await else {
        return;
    };
    let client = reqwest::Client::new();
    for body in [chat("memory"), streamed(chat("memory, streamed"))] {
        let calls = b.fake.calls();
        let a = post_to(&client, w.url(), "/v1/chat/completions", &body, &[]).await;
        let h = post_to(&client, w.url(), "/v1/chat/completions", &body, &[]).await;
        assert_eq!((a.cache.as_str(), h.cache.as_str()), ("MISS", "HIT"));
        assert_eq!(a.body, h.body);
        assert_eq!(b.fake.calls() - calls, 1);
        assert!(h.headers.get("x-larder-redis-requests").is_none());
    }
    let bad: Value = post_to(
        &client,
        w.url(),
        "/v1/chat/completions",
        &json!({"x": 1}),
        &[],
    )
    .await
    .json();
    assert!(bad["error"]["message"].is_string(), "{bad}");
}

/// Encryption at rest and keyed hashes, from the same secrets in the Worker and natively:
/// what one stored (sealed, under a keyed hash) the other reads, and Redis holds neither the
/// prompt nor the answer in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_entries_are_shared_between_the_worker_and_the_native_proxy() {
    const KEYS: &str = "k2:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const HASH: &str = "bGFyZGVyLXdvcmtlci1oYXNoLXNlY3JldA==";
    let b = Backend::start().await;
    let Some(w) = b
        .worker_with(
            true,
            &[
                ("LARDER_ENCRYPTION_KEYS", KEYS),
                ("LARDER_HASH_SECRET", HASH),
            ],
        )
        .await
    else {
        return;
    };
    let keyring = larder_core::seal::Keyring::parse(KEYS).unwrap();
    let hash = larder_core::seal::HashKey::parse(HASH).unwrap();
    let t = larder_native::RedisTransport::connect(&b.redis.url())
        .await
        .unwrap();
    let cache = larder_core::response::ResponseCache::redis(
        larder_core::RedisCache::builder(t.clone())
            .prefix(PREFIX)
            .build()
            .unwrap(),
    )
    .default_ttl(Duration::from_secs(3600))
    .encryption(keyring)
    .hash_key(hash.clone())
    .build()
    .unwrap();
    let native = larder_native::proxy::Proxy::builder(cache, b.fake.url())
        .tenant_key(hash)
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = reqwest::Client::new();
    let path = "/v1/chat/completions";
    for (what, body, worker_first) in [
        ("worker first", chat("sealed question one"), true),
        ("native first", streamed(chat("sealed question two")), false),
    ] {
        let (first, second) = if worker_first {
            (w.url().to_owned(), native.url())
        } else {
            (native.url(), w.url().to_owned())
        };
        let a = post_to(&client, &first, path, &body, &[]).await;
        let h = post_to(&client, &second, path, &body, &[]).await;
        assert_eq!(
            (a.cache.as_str(), h.cache.as_str()),
            ("MISS", "HIT"),
            "{what}"
        );
        assert_eq!(a.body, h.body, "{what}");
    }
    let mut clear = 0;
    let keys = match t
        .exec(larder_core::Cmd::new("KEYS").arg(format!("{PREFIX}:*")))
        .await
        .unwrap()
    {
        larder_core::Value::Array(keys) => keys,
        other => panic!("KEYS: {other:?}"),
    };
    assert!(!keys.is_empty());
    for key in keys {
        let key = key.as_bytes().unwrap().to_vec();
        let kind = t
            .exec(larder_core::Cmd::new("TYPE").arg(&key[..]))
            .await
            .unwrap();
        let read = match format!("{kind:?}") {
            k if k.contains("string") => larder_core::Cmd::new("GET").arg(&key[..]),
            k if k.contains("stream") => larder_core::Cmd::new("XRANGE")
                .arg(&key[..])
                .arg("-")
                .arg("+"),
            k if k.contains("hash") => larder_core::Cmd::new("HGETALL").arg(&key[..]),
            k if k.contains("zset") => larder_core::Cmd::new("ZRANGE")
                .arg(&key[..])
                .arg("0")
                .arg("-1"),
            k if k.contains("set") => larder_core::Cmd::new("SMEMBERS").arg(&key[..]),
            _ => continue,
        };
        let text = format!("{:?}", t.exec(read).await.unwrap());
        let key_text = String::from_utf8_lossy(&key);
        assert!(!key_text.contains("sealed question"), "{key_text}");
        if text.contains("sealed question") || text.contains("You said") {
            eprintln!("in clear under {key_text}: {text}");
            clear += 1;
        }
    }
    assert_eq!(clear, 0, "no prompt or answer in clear in Redis");
}

/// An upstream silent past `LARDER_PROXY_READ_TIMEOUT_MS` gets the caller a 504 in about
/// that time, not a wait as long as the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_a_504_after_the_read_timeout() {
    let b = Backend::start().await;
    let Some(w) = b
        .worker_with(true, &[("LARDER_PROXY_READ_TIMEOUT_MS", "300")])
        .await
    else {
        return;
    };
    b.fake.set_latency(Duration::from_secs(5));
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let a = post_to(&client, w.url(), "/v1/chat/completions", &chat("slow"), &[]).await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", a.json());
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
}
