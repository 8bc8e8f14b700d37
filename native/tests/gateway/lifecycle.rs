//! Health, Redis outages, metrics and graceful shutdown.

use std::time::Duration;

use serde_json::json;

use crate::support::{FULL, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_follows_redis_down_and_back() {
    let mut s = Setup::start_with(|b| b.health_timeout(Duration::from_millis(500))).await;
    let url = format!("{}/healthz", s.gateway.url());
    let health = s.http.get(&url).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&health.bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!({"status": "ok"}));

    s.redis.kill();
    let health = s.http.get(&url).send().await.unwrap();
    assert_eq!(health.status(), 503);
    // Commands get a 5xx JSON error (retryable for clients), not a hang.
    let started = std::time::Instant::now();
    let (status, _, body) = s.post("/", r#"["GET","k"]"#, false).await;
    assert!(status == 503 || status == 504, "{status} {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach Redis"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    tokio::task::block_in_place(|| s.redis.restart()).unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if s.http.get(&url).send().await.unwrap().status() == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthy again after Redis restarts");
}

#[tokio::test]
async fn metrics_count_requests_and_denials() {
    let s = Setup::start().await;
    s.post("/", r#"["PING"]"#, false).await;
    s.post("/pipeline", r#"[["PING"],["FLUSHALL"]]"#, false)
        .await;
    s.post_as(None, "/", b"[\"PING\"]".to_vec(), false).await;
    for (endpoint, outcome) in [
        ("command", "ok"),
        ("pipeline", "ok"),
        ("command", "unauthorized"),
    ] {
        let n = s
            .metric(
                "larder_gateway_requests_total",
                &[("endpoint", endpoint), ("outcome", outcome)],
            )
            .await;
        assert_eq!(n, 1.0, "{endpoint} {outcome}");
    }
    assert_eq!(
        s.metric("larder_gateway_denied_commands_total", &[]).await,
        1.0
    );
    let text = s.metrics().await;
    assert!(!text.contains(FULL), "tokens never appear");
}

/// `/metrics` is the process's Prometheus recorder: next to the gateway's own metrics it shows
/// what the library emits anywhere in the process — the redis-rs transport, caches, circuit
/// breakers. Without a recorder it is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_transport_caches_and_breakers_of_the_process() {
    use larder_core::breaker::CircuitBreakerLayer;
    use larder_core::observe::Instrumented;
    use larder_core::{Cache, Cmd, MemoryCache, Transport};
    use larder_native::{RedisOptions, RedisTransport};

    let s = Setup::start().await;
    s.post("/", r#"["SET","k","v"]"#, false).await;
    let cache_name = format!("{}-cache", s.name);
    let cache = Instrumented::new(MemoryCache::builder().build().unwrap()).name(&cache_name);
    cache.set("k", "v".into(), None).await.unwrap();
    assert!(cache.get("k").await.unwrap().is_some());
    // A breaker in front of a Redis nobody listens on opens at its first failure.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = RedisTransport::from_options(
        &RedisOptions::standalone(format!("127.0.0.1:{port}")).min_idle_conns(0),
    )
    .await
    .unwrap();
    let guarded = CircuitBreakerLayer::new().failure_threshold(1).layer(dead);
    assert!(guarded.exec(Cmd::new("PING")).await.is_err());

    let text = s.metrics().await;
    let has = |name: &str, labels: &[(&str, &str)]| {
        crate::support::metric_value(&text, name, labels) >= 1.0
    };
    assert!(
        has(
            "larder_gateway_requests_total",
            &[("gateway", &s.name), ("outcome", "ok")]
        ),
        "{text}"
    );
    assert!(
        has("larder_redis_calls_total", &[("topology", "standalone")]),
        "{text}"
    );
    assert!(
        has("larder_redis_errors_total", &[]),
        "the dead Redis's error: {text}"
    );
    assert!(
        has(
            "larder_cache_operations_total",
            &[("cache", &cache_name), ("op", "get"), ("outcome", "hit")]
        ),
        "{text}"
    );
    assert!(
        has("larder_cache_hits_total", &[("cache", &cache_name)]),
        "{text}"
    );
    assert!(
        has("larder_breaker_transitions_total", &[("to", "open")]),
        "{text}"
    );
    assert!(
        text.contains("# HELP larder_gateway_requests_total"),
        "{text}"
    );

    let bare = larder_native::gateway::Gateway::builder(std::sync::Arc::new(s.native.clone()))
        .token(larder_native::gateway::Token::new(FULL).unwrap())
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let resp = s
        .http
        .get(format!("{}/metrics", bare.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "no recorder, no /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let s = Setup::start().await;
    let url = s.gateway.url();
    let client = s.http.clone();
    let slow = tokio::spawn(async move {
        client
            .post(format!("{url}/"))
            .bearer_auth(FULL)
            // Keeps Redis (and so this request) busy for 400 ms.
            .body(
                r#"["EVAL","local t=redis.call('TIME') local s=t[1]*1e6+t[2] while true do t=redis.call('TIME') if t[1]*1e6+t[2]-s>4e5 then return 1 end end","0"]"#,
            )
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = s.gateway.addr();
    let Setup { gateway, .. } = s;
    let stopping = tokio::spawn(gateway.shutdown());
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the request in flight completed"
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting connections"
    );
}
