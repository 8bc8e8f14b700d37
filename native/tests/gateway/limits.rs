//! Resource limits against abusive connections: the connection cap (in process and on the
//! `larder gateway` binary under 10 000 concurrent connections), and the header and body
//! read timeouts that close slowloris connections.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_core::Commands;
use larder_native::testing::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{FULL, Setup, metric_value};

/// Reads until the peer closes the connection; returns what arrived and when it closed.
async fn until_closed(
    tcp: &mut TcpStream,
    started: Instant,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), tcp.read(&mut buf))
            .await
        {
            Ok(Ok(0) | Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection was still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_at_the_header_timeout() {
    let timeout = Duration::from_millis(500);
    let s = Setup::start_with(|b| b.header_read_timeout(timeout)).await;
    let addr = s.gateway.addr();

    // 1. Connects and sends nothing.
    let started = Instant::now();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (_, closed) = until_closed(&mut idle, started, Duration::from_secs(3)).await;
    eprintln!("idle connection closed after {closed:?}");
    assert!(
        closed >= timeout - Duration::from_millis(50) && closed < timeout * 3,
        "{closed:?}"
    );

    // 2. Drips a header byte every 50 ms, forever (slowloris).
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let drip = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"a").await.is_err() {
                return started.elapsed();
            }
        }
    };
    let refused = tokio::time::timeout(Duration::from_secs(3), drip)
        .await
        .expect("the server stops taking header bytes");
    eprintln!("slowloris headers cut off after {refused:?}");
    assert!(
        refused >= timeout - Duration::from_millis(50) && refused < timeout * 3,
        "{refused:?}"
    );

    // 3. A kept-alive connection that goes quiet after a request is closed too.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let (_, closed) = until_closed(&mut kept, started, Duration::from_secs(3)).await;
    eprintln!("idle kept-alive connection closed after {closed:?}");
    assert!(closed < timeout * 3, "{closed:?}");

    // Meanwhile, a prompt client is served.
    let ok = s
        .http
        .get(format!("{}/healthz", s.gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_json_and_the_connection_closed_at_the_body_timeout() {
    let timeout = Duration::from_millis(500);
    let s = Setup::start_with(|b| b.body_read_timeout(timeout)).await;
    let mut tcp = TcpStream::connect(s.gateway.addr()).await.unwrap();
    let started = Instant::now();
    tcp.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL}\r\n\
             Content-Length: 100\r\n\r\n[\"SET\",\"slow\",\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tx.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), rx.read_to_end(&mut got)).await;
    let closed = started.elapsed();
    drip.abort();
    assert!(read.is_ok(), "the connection was closed");
    eprintln!("slow body answered and closed after {closed:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        text.contains(r#"{"error":"ERR the request body did not arrive"#),
        "{text}"
    );
    assert!(closed >= timeout && closed < timeout * 3, "{closed:?}");
    assert_eq!(
        s.native.get(b"slow").await.unwrap(),
        None,
        "nothing was written"
    );
    let timeouts = s
        .metric(
            "larder_gateway_requests_total",
            &[("endpoint", "command"), ("outcome", "timeout")],
        )
        .await;
    assert_eq!(timeouts, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_unaccepted_until_one_closes() {
    let s = Setup::start_with(|b| {
        b.max_connections(2)
            .header_read_timeout(Duration::from_secs(30))
    })
    .await;
    let addr = s.gateway.addr();
    let holders = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third connects (the kernel's backlog) but is not served while two are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let waited =
        tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut got)).await;
    assert!(
        waited.is_err() && got.is_empty(),
        "not served at the cap: {got:?}"
    );
    // One holder leaves: the third is accepted and answered.
    let started = Instant::now();
    drop(holders);
    tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut got))
        .await
        .expect("served once a slot frees")
        .unwrap();
    eprintln!(
        "the waiting connection was served {:?} after a slot freed",
        started.elapsed()
    );
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The third's task may still be finishing its close: poll (on one kept-alive
    // connection) until only the metrics request itself is open.
    let ours = [("gateway", s.name.as_str())];
    let mut text = String::new();
    for _ in 0..50 {
        text = s.metrics().await;
        if metric_value(&text, "larder_gateway_open_connections", &ours) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both read from one answer: another poll could have opened a connection of its own.
    assert_eq!(
        metric_value(&text, "larder_gateway_connections_total", &ours),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "larder_gateway_open_connections", &ours),
        1.0,
        "only the metrics request itself is open: {text}"
    );
}

/// Lets this test process hold its 10 000 client sockets (soft limit up to the hard one).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_stay_bounded_by_the_cap_and_the_gateway_recovers() {
    let Some(bin) = option_env!("CARGO_BIN_EXE_larder") else {
        eprintln!("skipped: build with --features cli to test the binary");
        return;
    };
    const CAP: usize = 64;
    const CLIENTS: usize = 10_000;
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
        .args(["--max-connections", &CAP.to_string()])
        .args(["--header-timeout-ms", "60000"])
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env("LARDER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr: std::net::SocketAddr = crate::support::listening_addr(&mut child).parse().unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = format!("http://{addr}/healthz");
    assert_eq!(http.get(&health).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = open_fds(pid);
    raise_fd_limit();

    // 10 000 clients connect at once and hold their connections.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        tasks.spawn(async move {
            tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
                .await
                .ok()
                .and_then(Result::ok)
        });
    }
    let mut held = Vec::new();
    let mut peak = 0;
    while let Some(r) = tasks.join_next().await {
        if let Some(tcp) = r.unwrap() {
            held.push(tcp);
        }
        if held.len() % 500 == 0 {
            peak = peak.max(open_fds(pid));
        }
    }
    for _ in 0..10 {
        peak = peak.max(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{CLIENTS} clients: {} connected (kernel backlog included) in {:?}; gateway fds: \
         baseline {baseline}, peak {peak} (cap {CAP})",
        held.len(),
        started.elapsed()
    );
    assert!(
        peak <= baseline + CAP + 2,
        "open fds stay bounded by the cap: baseline {baseline}, peak {peak}"
    );
    assert!(
        peak >= baseline + CAP - 2,
        "the flood did fill the cap: baseline {baseline}, peak {peak}"
    );

    // Everyone leaves; the gateway answers again and its fds return to the baseline.
    drop(held);
    let started = Instant::now();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(1), http.get(&health).send()).await
        {
            served = r.status() == 200;
            if served {
                break;
            }
        }
    }
    eprintln!(
        "healthz answered {:?} after the clients left",
        started.elapsed()
    );
    assert!(served, "/healthz answers after the flood");
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let accepted = metric_value(&metrics, "larder_gateway_connections_total", &[]);
    assert!(accepted >= 1.0, "{metrics}");
    eprintln!("connections accepted in all: {accepted}");
    let mut settled = open_fds(pid);
    for _ in 0..50 {
        if settled <= baseline + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = open_fds(pid);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        settled <= baseline + 1,
        "fds back to baseline {baseline}: {settled}"
    );
}
