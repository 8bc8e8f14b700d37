//! A standalone server: faults (killed and restarted under load, hung with SIGSTOP) and
//! behaviour of the options (pool size, db, password, tracing, metrics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder_core::{Cache, Cmd, ErrorKind, Transport, Value};
use larder_native::testing::{RedisServer, RespValue};
use larder_native::{RedisOptions, RedisTransport};

use crate::common::{Load, blocking, first_success_after, summarize};

/// Tight timeouts for fault tests: a call may take at most 300 + 200 + 200 = 700 ms.
fn tight(addr: &str) -> RedisOptions {
    RedisOptions::standalone(addr)
        .dial_timeout(Duration::from_millis(300))
        .write_timeout(Duration::from_millis(200))
        .read_timeout(Duration::from_millis(200))
}

/// Scheduling slack allowed over the configured budget (2-core CI under load).
const SLACK: Duration = Duration::from_millis(250);

fn info_field(server: &RedisServer, section: &str, field: &str) -> i64 {
    let text = match server.cmd(&["INFO", section]).expect("INFO") {
        RespValue::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO answered {other:?}"),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_killed_and_restarted_under_load() {
    let mut server = blocking(RedisServer::start).await.expect("start redis");
    let opts = tight(&server.addr()).pool_size(4);
    let cache = Arc::new(
        crate::common::cache_with(&opts, "larder")
            .await
            .expect("connect"),
    );
    let budget = cache.transport().call_timeout();
    let load = Load::start(cache.clone(), 16, Duration::from_millis(2));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = load.now();
    server = blocking(move || {
        server.kill();
        server
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarting_at = load.now();
    let server = blocking(move || {
        server.restart().expect("restart on the same port");
        server
    })
    .await;
    let restarted_at = load.now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = load.finish().await;

    let s = summarize(&samples);
    let recovered =
        first_success_after(&samples, restarted_at).expect("a call succeeded after the restart");
    let recovery = (recovered.at + recovered.took).saturating_sub(restarted_at);
    let during: Vec<_> = samples
        .iter()
        .filter(|x| x.at >= killed_at + Duration::from_millis(50) && x.at + x.took <= restarting_at)
        .collect();
    let down_max = during.iter().map(|x| x.took).max().unwrap_or_default();
    eprintln!(
        "standalone kill/restart: {} calls, {} errors {:?}; budget {budget:?}; max call {:?}; \
         max call while down {down_max:?}; restart took {:?}; recovery after restart {recovery:?}",
        s.calls,
        s.errors,
        s.kinds,
        s.max_took,
        restarted_at - restarting_at,
    );
    assert!(s.errors > 0, "the kill must have been noticed");
    assert!(
        s.max_took <= budget + SLACK,
        "a call took {:?}, over the {budget:?} budget",
        s.max_took
    );
    assert!(
        during.iter().all(|x| !x.ok()),
        "no call can succeed while the server is down"
    );
    for x in &during {
        let kind = x.error.as_deref().unwrap_or("");
        assert!(
            kind == "io" || kind == "timeout",
            "error kind while down: {kind}"
        );
    }
    assert!(
        recovery < Duration::from_secs(2),
        "recovery took {recovery:?} after the restart"
    );
    // After recovery every call succeeds.
    let settled = recovered.at + Duration::from_millis(500);
    let late: Vec<_> = samples.iter().filter(|x| x.at >= settled).collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|x| x.ok()),
        "errors after recovery: {:?}",
        late.iter().filter(|x| !x.ok()).take(3).collect::<Vec<_>>()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_hung_with_sigstop_times_out_then_recovers() {
    let server = blocking(RedisServer::start).await.expect("start redis");
    let pid = server.pid().expect("running");
    let cache = crate::common::cache_with(&tight(&server.addr()).pool_size(2), "larder")
        .await
        .expect("connect");
    let budget = cache.transport().call_timeout();
    cache.set("k", "v".into(), None).await.unwrap();

    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
    };
    signal("-STOP");
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        let err = cache
            .get("k")
            .await
            .expect_err("a stopped server cannot answer");
        let took = start.elapsed();
        assert!(
            took <= budget + SLACK,
            "call took {took:?} (budget {budget:?})"
        );
        kinds.push(err.transport_kind());
    }
    signal("-CONT");
    eprintln!("while stopped: {kinds:?}");
    assert!(
        kinds.iter().all(|k| *k == Some(ErrorKind::Timeout)),
        "{kinds:?}"
    );
    let start = Instant::now();
    loop {
        match cache.get("k").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some(&b"v"[..]));
                break;
            }
            Err(e) if start.elapsed() < Duration::from_secs(3) => {
                eprintln!("after SIGCONT: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("not recovered 3 s after SIGCONT: {e}"),
        }
    }
    eprintln!("recovered {:?} after SIGCONT", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_replies_are_in_band_with_exact_text() {
    let server = blocking(RedisServer::start).await.expect("start redis");
    let t = RedisTransport::connect(&server.url())
        .await
        .expect("connect");
    t.exec(Cmd::new("LPUSH").arg("list").arg("x"))
        .await
        .unwrap();
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    assert_eq!(
        t.exec(Cmd::new("GET").arg("list")).await.unwrap(),
        Value::Error(wrongtype.into())
    );
    let replies = t
        .pipeline(vec![
            Cmd::new("SET").arg("a").arg("1"),
            Cmd::new("INCR").arg("list"),
            Cmd::new("EVALSHA")
                .arg("ffffffffffffffffffffffffffffffffffffffff")
                .arg(0),
            Cmd::new("GET").arg("a"),
        ])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![
            Value::Status("OK".into()),
            Value::Error(wrongtype.into()),
            Value::Error("NOSCRIPT No matching script. Please use EVAL.".into()),
            Value::Bulk("1".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error_and_the_right_one_works() {
    let server = blocking(|| RedisServer::builder().password("s3cret pw").start())
        .await
        .expect("start redis");
    let with = |pw: &str| RedisOptions::standalone(server.addr()).password(pw);
    let err = crate::common::cache_with(&with("wrong"), "larder")
        .await
        .unwrap_err();
    assert_eq!(err.transport_kind(), Some(ErrorKind::Auth), "{err}");
    assert!(!err.to_string().contains("wrong\""), "{err}");
    let err = crate::common::cache_with(&with(""), "larder")
        .await
        .unwrap_err();
    assert_eq!(err.transport_kind(), Some(ErrorKind::Auth), "{err}");
    let cache = crate::common::cache_with(&with("s3cret pw"), "larder")
        .await
        .expect("right password");
    cache.set("k", "v".into(), None).await.unwrap();
    assert!(!format!("{cache:?}").contains("s3cret"));
    let url_cache = crate::common::cache_with(&RedisOptions::from_url(&server.url()), "larder")
        .await
        .expect("password in the URL");
    assert_eq!(
        url_cache.get("k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_and_db_options_take_effect() {
    let server = blocking(RedisServer::start).await.expect("start redis");
    let before = info_field(&server, "clients", "connected_clients");
    let opts = RedisOptions::standalone(server.addr())
        .pool_size(5)
        .min_idle_conns(5)
        .db(3);
    let cache = crate::common::cache_with(&opts, "pooltest")
        .await
        .expect("connect");
    let after = info_field(&server, "clients", "connected_clients");
    // The harness's probe connection is counted in both readings.
    assert_eq!(
        after - before,
        5,
        "min_idle_conns = pool_size = 5 connections"
    );
    for i in 0..20 {
        cache.set(&format!("k{i}"), "v".into(), None).await.unwrap();
    }
    let keys = |db: &str| match server.cmd(&["INFO", "keyspace"]).unwrap() {
        RespValue::Bulk(b) => String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{db}:keys="))
                    .map(|r| r.split(',').next().unwrap().parse::<i64>().unwrap())
            })
            .unwrap_or(0),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        keys("db3"),
        20,
        "20 entries in db 3 (stats still batched locally)"
    );
    cache.flush_stats().await.unwrap();
    assert_eq!(keys("db3"), 21, "20 entries + the writes counter in db 3");
    assert_eq!(keys("db0"), 0);
    // Lazy pool: nothing is opened before the first call.
    let lazy = crate::common::cache_with(
        &RedisOptions::standalone(server.addr())
            .pool_size(3)
            .min_idle_conns(0),
        "larder",
    )
    .await
    .expect("lazy");
    assert_eq!(info_field(&server, "clients", "connected_clients"), after);
    lazy.ping().await.unwrap();
    assert_eq!(
        info_field(&server, "clients", "connected_clients"),
        after + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_readonly_reply_is_unavailable_not_a_command_error() {
    let master = blocking(RedisServer::start).await.expect("start master");
    let port = master.port().to_string();
    let replica = blocking(move || {
        RedisServer::builder()
            .args(["--replicaof", "127.0.0.1", port.as_str()])
            .start()
    })
    .await
    .expect("start replica");
    let t = RedisTransport::connect(&replica.url())
        .await
        .expect("connect");
    let err = t
        .exec(Cmd::new("SET").arg("k").arg("v"))
        .await
        .expect_err("a replica refuses writes");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        err.message()
            .contains("READONLY You can't write against a read only replica."),
        "{err}"
    );
    let err = t
        .pipeline(vec![
            Cmd::new("GET").arg("k"),
            Cmd::new("SET").arg("k").arg("v"),
        ])
        .await
        .expect_err("the whole pipeline fails");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // Reads still work on the replica.
    assert_eq!(t.exec(Cmd::new("GET").arg("k")).await.unwrap(), Value::Nil);
}

/// `connected_clients` once it reaches `want` (connections close asynchronously on the
/// server side), or its last reading after 2 s.
async fn settled_clients(server: &RedisServer, want: i64) -> i64 {
    let start = Instant::now();
    loop {
        let n = info_field(server, "clients", "connected_clients");
        if n == want || start.elapsed() > Duration::from_secs(2) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_and_reconnects_share_one_dial_per_connection() {
    let mut server = blocking(RedisServer::start).await.expect("start redis");
    // The harness's probe connection is counted in every reading.
    let probe = info_field(&server, "clients", "connected_clients");
    let transport =
        RedisTransport::from_options(&tight(&server.addr()).pool_size(2).min_idle_conns(0))
            .await
            .expect("lazy transport");
    let burst = |t: RedisTransport| async move {
        let calls = (0..200).map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.exec(Cmd::new("PING")).await })
        });
        let mut ok = 0;
        for c in calls {
            if c.await.expect("task").is_ok() {
                ok += 1;
            }
        }
        ok
    };
    assert_eq!(
        burst(transport.clone()).await,
        200,
        "every first call succeeds"
    );
    assert_eq!(
        settled_clients(&server, probe + 2).await,
        probe + 2,
        "200 concurrent first calls open exactly pool_size = 2 connections"
    );

    server = blocking(move || {
        server.kill();
        server.restart().expect("restart on the same port");
        server
    })
    .await;
    let probe = info_field(&server, "clients", "connected_clients");
    // Bursts until one fully succeeds: the first finds both connections broken.
    let start = Instant::now();
    let mut bursts = 0;
    loop {
        bursts += 1;
        if burst(transport.clone()).await == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not recovered 3 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    eprintln!("recovered after {bursts} bursts of 200 calls");
    assert_eq!(
        settled_clients(&server, probe + 2).await,
        probe + 2,
        "after the restart, one new connection per pool slot (no reconnect storm)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_accepts_but_never_answers_is_bounded_by_dial_timeout() {
    // A "server" that accepts TCP connections and never sends a byte (a hung proxy, a
    // half-open path): connecting must give up after dial_timeout, not the whole budget.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let opts = tight(&addr.to_string())
        .password("secret")
        .pool_size(1)
        .min_idle_conns(0);
    let dial = opts.dial_timeout;
    let transport = RedisTransport::from_options(&opts).await.expect("lazy");
    let call = || async {
        let start = Instant::now();
        let err = transport
            .exec(Cmd::new("GET").arg("k"))
            .await
            .expect_err("nothing answers");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        start.elapsed()
    };
    let dialled = |took: Duration| {
        assert!(
            took >= dial.saturating_sub(Duration::from_millis(50)) && took <= dial + SLACK,
            "connecting took {took:?}; dial_timeout is {dial:?}"
        );
    };
    dialled(call().await);
    // Right after a failed connect (within 25 ms), calls fail at once with its error
    // instead of dialling. Only checked when this task was not descheduled in between.
    let failed_at = Instant::now();
    let fast = call().await;
    if failed_at.elapsed() - fast < Duration::from_millis(5) {
        assert!(fast < Duration::from_millis(20), "took {fast:?}");
    } else {
        eprintln!("descheduled between the calls: fail-fast window not checked");
    }
    // A little later the next call dials again (and is bounded again).
    tokio::time::sleep(Duration::from_millis(50)).await;
    dialled(call().await);
    accepting.abort();
}

/// A TCP proxy whose established connections can be silenced: they stop forwarding in both
/// directions but stay open, as when a NAT or load balancer forgets an idle flow. New
/// connections are forwarded normally.
struct SilencingProxy {
    addr: String,
    /// Connections accepted before the current generation are silent.
    generation: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SilencingProxy {
    async fn start(upstream: String) -> SilencingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap().to_string();
        let generation = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (g, a) = (generation.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                    let g = g.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if g.load(Ordering::SeqCst) != born {
                                // Silenced: swallow everything, keep both sockets open.
                                let _held = (from, to);
                                std::future::pending::<()>().await;
                                unreachable!();
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        SilencingProxy {
            addr,
            generation,
            accepted,
            task,
        }
    }

    fn silence_existing(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_silently_is_replaced_after_one_timeout() {
    let server = blocking(RedisServer::start).await.expect("start redis");
    let proxy = SilencingProxy::start(server.addr()).await;
    let opts = tight(&proxy.addr).pool_size(1);
    let response_timeout = opts.write_timeout + opts.read_timeout;
    let transport = RedisTransport::from_options(&opts).await.expect("connect");
    transport
        .exec(Cmd::new("SET").arg("k").arg("v"))
        .await
        .expect("SET");
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 1);

    // The flow is forgotten: the socket stays open, nothing gets through any more.
    proxy.silence_existing();
    let start = Instant::now();
    let err = transport
        .exec(Cmd::new("GET").arg("k"))
        .await
        .expect_err("nothing gets through the silenced connection");
    let took = start.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took <= response_timeout + SLACK, "took {took:?}");

    // The timed-out connection was replaced: the next call answers, over a new connection.
    let v = transport
        .exec(Cmd::new("GET").arg("k"))
        .await
        .expect("the replacement connection answers");
    assert_eq!(v.as_bytes(), Some(&b"v"[..]));
    assert_eq!(
        proxy.accepted.load(Ordering::SeqCst),
        2,
        "one new connection"
    );
    for _ in 0..20 {
        transport.exec(Cmd::new("PING")).await.expect("PING");
    }
    assert_eq!(
        proxy.accepted.load(Ordering::SeqCst),
        2,
        "and it is kept: no further reconnects"
    );
}
