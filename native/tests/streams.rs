//! Streamed answers shared between real processes on one real Redis: this test binary runs
//! copies of itself as the other processes (`child`, selected by an environment variable).

use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use larder_core::response::{CacheControl, LlmRequest, ResponseCache};
use larder_core::stream::{StreamError, Streamed};
use larder_core::{Bytes, Cmd, RedisCache, Status, Transport};
use larder_native::RedisTransport;
use larder_native::testing::RedisServer;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../core/tests/fixtures/streams/openai_chat_tools.sse"
);
const ROLE: &str = "LARDER_STREAM_CHILD";
const PREFIX: &str = "procs";
/// The counter of upstream calls, across processes.
const OPENS: &str = "procs:test:opens";

fn question() -> LlmRequest {
    LlmRequest::chat("gpt-4o-mini")
        .user("What is the weather in Paris and the time there?")
        .temperature(0.0)
}

#[derive(Debug)]
struct UpErr;

impl std::fmt::Display for UpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream failed")
    }
}

impl std::error::Error for UpErr {}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, UpErr>> + Send>>;

/// The model provider: counts its calls in Redis, then streams the fixture in 40-byte
/// chunks `gap` apart.
fn upstream(
    t: RedisTransport,
    gap: Duration,
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<Body, UpErr>> + Send>> + Send {
    move || {
        Box::pin(async move {
            t.exec(Cmd::new("INCR").arg(OPENS))
                .await
                .map_err(|_| UpErr)?;
            let bytes = std::fs::read(FIXTURE).expect("fixture");
            let chunks: Vec<Bytes> = bytes.chunks(40).map(Bytes::copy_from_slice).collect();
            let body = futures_util::stream::iter(chunks).then(move |c| async move {
                tokio::time::sleep(gap).await;
                Ok(c)
            });
            Ok(Box::pin(body) as Body)
        })
    }
}

async fn cache(url: &str) -> (ResponseCache, RedisTransport) {
    let t = RedisTransport::connect(url).await.expect("connect");
    let redis = RedisCache::builder(t.clone())
        .prefix(PREFIX)
        .build()
        .unwrap();
    let cache = ResponseCache::redis(redis)
        .lease_ttl(Duration::from_secs(2))
        .build()
        .unwrap();
    (cache, t)
}

async fn read_all(mut s: Streamed) -> (Vec<u8>, Option<StreamError>) {
    let mut wire = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(e) => e.encode_into(&mut wire),
            Err(e) => return (wire, Some(e)),
        }
    }
    (wire, None)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The other processes. Does nothing when run as an ordinary test.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let url = std::env::var("LARDER_STREAM_URL").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (cache, t) = cache(&url).await;
        match role.as_str() {
            // 25 concurrent callers, all starting at the same instant.
            "callers" => {
                let start: u64 = std::env::var("LARDER_STREAM_START")
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(start.saturating_sub(now_ms()))).await;
                let tasks: Vec<_> = (0..25)
                    .map(|_| {
                        let cache = cache.clone();
                        let open = upstream(t.clone(), Duration::from_millis(30));
                        tokio::spawn(async move {
                            let s = cache
                                .stream_with(&question(), &CacheControl::default(), open)
                                .await
                                .expect("opens");
                            let status = s.status();
                            let (wire, err) = read_all(s).await;
                            (status, wire, err)
                        })
                    })
                    .collect();
                for task in tasks {
                    let (status, wire, err) = task.await.unwrap();
                    println!(
                        "RESULT {status} {} {}",
                        wire == std::fs::read(FIXTURE).unwrap(),
                        err.map_or("none".to_owned(), |e| e.to_string())
                    );
                }
            }
            // Leads a slow stream and reads it until killed.
            "leader" => {
                let s = cache
                    .stream_with(
                        &question(),
                        &CacheControl::default(),
                        upstream(t.clone(), Duration::from_millis(150)),
                    )
                    .await
                    .unwrap();
                assert_eq!(s.status(), Status::Miss);
                let mut s = s;
                s.next().await.unwrap().unwrap();
                println!("LEADING");
                while s.next().await.is_some() {}
                println!("FINISHED");
            }
            other => panic!("unknown role {other}"),
        }
    });
}

fn spawn_child(role: &str, url: &str, start: Option<u64>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("LARDER_STREAM_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(s) = start {
        cmd.env("LARDER_STREAM_START", s.to_string());
    }
    cmd.spawn().expect("spawn a child process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_streamed_requests_in_four_processes_make_one_upstream_call() {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().expect("redis-server"))
        .await
        .unwrap();
    let url = server.url();
    let start = now_ms() + 1_500;
    let children: Vec<Child> = (0..4)
        .map(|_| spawn_child("callers", &url, Some(start)))
        .collect();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for child in children {
            let out = child.wait_with_output().expect("child output");
            assert!(out.status.success(), "a child failed: {:?}", out.status);
            lines.extend(
                String::from_utf8(out.stdout)
                    .unwrap()
                    .lines()
                    // libtest may print "test child ... " on the same line first.
                    .filter_map(|l| l.find("RESULT ").map(|at| l[at..].to_owned())),
            );
        }
        lines
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 100, "every caller answered");
    let t = RedisTransport::connect(&url).await.unwrap();
    let opens = t.exec(Cmd::new("GET").arg(OPENS)).await.unwrap();
    assert_eq!(
        opens,
        larder_core::Value::Bulk(Bytes::from_static(b"1")),
        "exactly one upstream call"
    );
    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
    assert_eq!(count("RESULT MISS true none"), 1, "{lines:#?}");
    assert_eq!(
        count("RESULT COALESCED true none"),
        99,
        "every other caller joined it and got the identical event sequence: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_process_that_holds_the_lease_gives_followers_an_error() {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().expect("redis-server"))
        .await
        .unwrap();
    let url = server.url();
    let mut leader = spawn_child("leader", &url, None);
    let stdout = leader.stdout.take().unwrap();
    let leading = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("LEADING"))
    });
    assert!(leading.await.unwrap(), "the child leads the stream");
    let (cache, t) = cache(&url).await;
    let follower = tokio::spawn({
        let cache = cache.clone();
        let open = upstream(t.clone(), Duration::ZERO);
        async move {
            let s = cache
                .stream_with(&question(), &CacheControl::default(), open)
                .await
                .unwrap();
            let status = s.status();
            (status, read_all(s).await)
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    leader.kill().expect("SIGKILL the leader");
    let _ = leader.wait();
    let killed_at = std::time::Instant::now();
    let (status, (wire, err)) = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower does not hang")
        .unwrap();
    assert_eq!(
        status,
        Status::Coalesced,
        "it followed the killed process's stream"
    );
    assert!(
        !wire.is_empty(),
        "it had the events published before the kill"
    );
    assert!(
        matches!(err, Some(StreamError::LeaderGone)),
        "an error, never a short answer: {err:?}"
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(4),
        "gave up about when the 2 s lease lapsed ({:?})",
        killed_at.elapsed()
    );
    let after = cache
        .stream_with(
            &question(),
            &CacheControl::default(),
            upstream(t.clone(), Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(after.status(), Status::Miss, "nothing was stored");
    let (wire, err) = read_all(after).await;
    assert!(err.is_none());
    assert_eq!(wire, std::fs::read(FIXTURE).unwrap());
}
