//! The `larder gateway` binary: starts, serves, stops on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use larder_native::testing::RedisServer;

use crate::support::FULL;

fn binary() -> Option<&'static str> {
    // Built only with the `cli` feature.
    option_env!("CARGO_BIN_EXE_larder")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_gateway_serves_and_stops_on_sigterm() {
    let Some(bin) = binary() else {
        eprintln!("skipped: build with --features cli to test the binary");
        return;
    };
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let mut child = Command::new(bin)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env("LARDER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = crate::support::listening_addr(&mut child);

    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/pipeline"))
        .bearer_auth(FULL)
        .header("Upstash-Encoding", "base64")
        .body(r#"[["SET","k","v"],["GET","k"]]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"[{"result":"T0s="},{"result":"dg=="}]"#
    );

    // SAFETY: signalling the child we spawned, by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the gateway did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn larder_gateway_refuses_to_start_without_a_token() {
    let Some(bin) = binary() else {
        return;
    };
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let out = Command::new(bin)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .env_remove("LARDER_GATEWAY_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LARDER_GATEWAY_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_gateway_fronts_a_sentinel_master() {
    use larder_core::{Commands, SetOptions};
    use larder_native::testing::SentinelSetup;
    use larder_native::{RedisOptions, RedisTransport};

    let Some(bin) = binary() else {
        return;
    };
    let setup = tokio::task::spawn_blocking(SentinelSetup::start)
        .await
        .unwrap()
        .expect("sentinel setup starts");
    let mut child = Command::new(bin)
        .args(["gateway", "--listen", "127.0.0.1:0", "--sentinel"])
        .arg(setup.sentinel_addrs().join(","))
        .args(["--sentinel-master", setup.master_name()])
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env("LARDER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = crate::support::listening_addr(&mut child);
    let edge = larder_edge::RestTransport::builder(format!("http://{addr}"), FULL)
        .build()
        .unwrap();
    let wrote = edge
        .set(b"via-sentinel", &"yes".into(), SetOptions::default())
        .await;
    let native = RedisTransport::from_options(&RedisOptions::sentinel(
        setup.master_name(),
        setup.sentinel_addrs(),
    ))
    .await
    .unwrap();
    let read = native.get(b"via-sentinel").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(wrote.unwrap());
    assert_eq!(read.unwrap().as_deref(), Some(&b"yes"[..]));
}

/// A Redis URL the gateway cannot parse is reported without its password, however it is
/// malformed (a missing `:`, a `/` or `@` in the password, a bad database, a bad host).
#[tokio::test]
async fn larder_gateway_never_prints_the_password_of_a_malformed_redis_url() {
    let Some(bin) = binary() else {
        return;
    };
    const SECRET: &str = "PaSsWoRdNeVeRsHoWn";
    for (flag, url) in [
        ("--redis-url", format!("redis//:{SECRET}@127.0.0.1:1")),
        ("--redis-url", format!("redis:/user:{SECRET}@127.0.0.1:1")),
        ("--redis-url", format!("redis://:{SECRET}/x@127.0.0.1:1")),
        (
            "--redis-url",
            format!("redis://u:{SECRET}@127.0.0.1:1/notadb"),
        ),
        ("--redis-url", format!("redis://u:{SECRET}@[::1")),
        ("--redis-url", format!("redis://u:{SECRET}@127.0.0.1:1")),
        ("--sentinel", format!("x//:{SECRET}@127.0.0.1:1")),
    ] {
        let out = Command::new(bin)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--redis-timeout-ms",
                "300",
            ])
            .args([flag, &url])
            .env("LARDER_GATEWAY_TOKEN", FULL)
            .env("LARDER_LOG", "trace")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            printed.contains("Redis") || printed.contains("entinel"),
            "{printed}"
        );
        for part in ["PaSsWoRd", "NeVeRsHoWn"] {
            assert!(!printed.contains(part), "{url}: {printed}");
        }
    }
}

/// The gateway takes the Redis password from `LARDER_REDIS_PASSWORD` like every larder
/// command (the Sentinel master's password comes the same way), so it stays out of the URL
/// and out of `ps`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_gateway_takes_the_redis_password_from_the_environment() {
    let Some(bin) = binary() else {
        return;
    };
    const PASSWORD: &str = "env-password-for-the-gateway-0123";
    let redis = tokio::task::spawn_blocking(|| RedisServer::builder().password(PASSWORD).start())
        .await
        .unwrap()
        .unwrap();
    let mut child = Command::new(bin)
        .args(["gateway", "--listen", "127.0.0.1:0"])
        .env("REDIS_URL", format!("redis://{}", redis.addr()))
        .env("LARDER_REDIS_PASSWORD", PASSWORD)
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env("LARDER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = crate::support::listening_addr(&mut child);
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .bearer_auth(FULL)
        .body(r#"["SET","from-env","yes"]"#)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    assert_eq!(
        redis.cmd(&["GET", "from-env"]).unwrap(),
        larder_native::testing::RespValue::Bulk(b"yes".to_vec())
    );
}

/// While Redis hangs (SIGSTOP), `larder gateway --redis-timeout-ms T` answers within T (not
/// twice T), then fails fast with 503 once its breaker opens, `/healthz` says why, and it
/// serves again once Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_gateway_answers_within_its_redis_timeout_and_fails_fast_while_redis_hangs() {
    use std::time::Instant;
    let Some(bin) = binary() else {
        return;
    };
    const TIMEOUT_MS: u64 = 1000;
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let mut child = Command::new(bin)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .args(["--redis-timeout-ms", &TIMEOUT_MS.to_string()])
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env("LARDER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = crate::support::listening_addr(&mut child);
    let http = reqwest::Client::new();
    let get = |http: reqwest::Client| {
        let url = format!("http://{addr}/");
        async move {
            let started = Instant::now();
            let resp = http
                .post(url)
                .bearer_auth(FULL)
                .body(r#"["GET","k"]"#)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            (status, body, started.elapsed())
        }
    };
    assert_eq!(get(http.clone()).await.0, 200);

    let pid = redis.pid().unwrap() as libc::pid_t;
    // SAFETY: signalling the redis-server this test started, by its pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let hung = futures_util::future::join_all((0..5).map(|_| get(http.clone()))).await;
    for (status, body, took) in &hung {
        assert!(matches!(status, 503 | 504), "{status} {body}");
        assert!(
            *took < Duration::from_millis(TIMEOUT_MS * 3 / 2),
            "answered after {took:?} with a {TIMEOUT_MS} ms timeout"
        );
    }
    let (status, body, took) = get(http.clone()).await;
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    let health_status = health.status().as_u16();
    let health_body = health.text().await.unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit breaker open"), "{body}");
    assert!(took < Duration::from_millis(200), "failed fast: {took:?}");
    assert_eq!(health_status, 503, "{health_body}");
    assert!(
        health_body.contains("circuit breaker open"),
        "{health_body}"
    );

    let started = Instant::now();
    loop {
        if get(http.clone()).await.0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway serves again once Redis does"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
