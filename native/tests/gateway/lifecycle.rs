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
    let text = s.metrics().await;
    assert!(
        text.contains(r#"larder_gateway_requests_total{endpoint="command",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"larder_gateway_requests_total{endpoint="pipeline",outcome="ok"} 1"#));
    assert!(
        text.contains(
            r#"larder_gateway_requests_total{endpoint="command",outcome="unauthorized"} 1"#
        )
    );
    assert!(text.contains("larder_gateway_denied_commands_total 1"));
    assert!(!text.contains(FULL), "tokens never appear");
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
