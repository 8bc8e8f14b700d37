//! The cache's own paths on a real Redis the harness starts: tiered latency (L1 hit, L2 hit,
//! miss + compute), a stampede of 1000 waiters on one key (native transport, HTTP subscribed and HTTP polling
//! through the gateway), and op latency while Redis is down (larder's breaker and tiered
//! cache against redis-rs `ConnectionManager` with its defaults).
//!
//! Run with `scripts/bench.sh` (or `cargo bench -p larder-native --features test-util,gateway
//! --bench scenarios`). With `LARDER_BENCH_JSON` set to a file path, every figure is also
//! appended to it as one JSON line (suites `tiered`, `stampede`, `stream_follow`,
//! `stream_replay`, `outage`).
//! `LARDER_BENCH_ONLY` = `tiered`, `stampede`, `streams` or `outage` runs one part.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::breaker::CircuitBreakerLayer;
use larder_core::compute::{ComputeCache, RedisLock};
use larder_core::response::{CacheControl, LlmRequest, ResponseCache};
use larder_core::stream::Streamed;
use larder_core::tiered::TieredCache;
use larder_core::{Cache, MemoryCache, RedisCache, SharedClock, Transport};
use larder_edge::RestTransport;
use larder_native::gateway::{Gateway, Token};
use larder_native::testing::RedisServer;
use larder_native::{RedisOptions, RedisTransport, TokioRuntime};
use parking_lot::Mutex;
use serde_json::json;

const PREFIX: &str = "bench";
const TOKEN: &str = "bench-token-0123456789abcdef";

/// Appends one JSON line to `$LARDER_BENCH_JSON` (nothing when it is unset).
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

fn clock() -> SharedClock {
    std::sync::Arc::new(larder_core::SystemClock)
}

/// p50, p99 and max of `samples` in microseconds.
fn summary(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let pick = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    json!({
        "n": samples.len(),
        "p50_us": pick(0.5),
        "p99_us": pick(0.99),
        "max_us": pick(1.0),
    })
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn value_1k() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

async fn transport(server: &RedisServer) -> RedisTransport {
    RedisTransport::from_options(&RedisOptions::standalone(server.addr()))
        .await
        .expect("connect to the bench Redis")
}

// ---------------------------------------------------------------------------------------
// Tiered: L1 hit, L2 hit, miss + compute.

async fn tiered(server: &RedisServer) {
    let l2 = RedisCache::builder(transport(server).await)
        .prefix(PREFIX)
        .build()
        .unwrap();
    let tiered = TieredCache::builder(
        MemoryCache::builder()
            .clock(clock())
            .max_entries(100_000)
            .build()
            .unwrap(),
        l2.clone(),
    )
    .l1_max_ttl(Duration::from_secs(600))
    .runtime(TokioRuntime::shared())
    .build()
    .unwrap();
    let ttl = Some(Duration::from_secs(600));

    // L1 hit: one key, read again and again.
    tiered.set("hot", value_1k(), ttl).await.unwrap();
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let v = tiered.get("hot").await.unwrap();
        samples.push(t.elapsed());
        assert!(v.is_some());
    }
    emit(merge(
        json!({"suite": "tiered", "case": "L1 hit"}),
        summary(&mut samples),
    ));

    // L2 hit: keys written to Redis only, each read once through the tiered cache.
    let n = 2000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("l2-{i}")).collect();
        let entries: Vec<(&str, Bytes)> = keys.iter().map(|k| (k.as_str(), value_1k())).collect();
        l2.mset(&entries, ttl).await.unwrap();
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("l2-{i}");
        let t = Instant::now();
        let v = tiered.get(&key).await.unwrap();
        samples.push(t.elapsed());
        assert!(v.is_some());
    }
    let s = tiered.tiered_stats();
    emit(merge(
        json!({"suite": "tiered", "case": "L2 hit (fills L1)", "stats": format!("{s:?}")}),
        summary(&mut samples),
    ));

    // Miss + compute: get_with with the Redis lease, an instant compute; the figure
    // is the cache's own cost of a miss (L1, L2, lease, write to both, release).
    let compute = ComputeCache::builder(tiered.clone())
        .clock(clock())
        .lock(RedisLock::for_cache(&l2).clock(clock()))
        .runtime(TokioRuntime::shared())
        .build()
        .unwrap();
    let n = 2000;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("miss-{i}");
        let t = Instant::now();
        let v = compute
            .get_with(&key, ttl, async { value_1k() })
            .await
            .unwrap();
        samples.push(t.elapsed());
        assert_eq!(v.len(), 1024);
    }
    let s = compute.compute_stats();
    assert_eq!(s.computed, n as u64);
    emit(merge(
        json!({"suite": "tiered", "case": "miss + compute (lease, instant compute)"}),
        summary(&mut samples),
    ));
}

// ---------------------------------------------------------------------------------------
// Stampede: 1000 callers ask for one missing key at once.

const COMPUTE_TIME: Duration = Duration::from_millis(300);

/// `processes` independent compute caches (each its own single-flight and lease waiter, as
/// separate processes or Worker isolates would be) sharing `t`, with `tasks` callers each.
async fn stampede<T>(label: &str, t: T, processes: usize, tasks: usize, run: u64)
where
    T: Transport + Clone + 'static,
{
    let notify = if t.supports_pubsub() {
        "pub/sub"
    } else {
        "polling"
    };
    let key = format!("stampede-{run}");
    let caches: Vec<_> = (0..processes)
        .map(|_| {
            let cache = RedisCache::builder(t.clone())
                .prefix(PREFIX)
                .build()
                .unwrap();
            ComputeCache::builder(cache.clone())
                .clock(clock())
                .lock(RedisLock::for_cache(&cache).clock(clock()))
                .runtime(TokioRuntime::shared())
                .build()
                .unwrap()
        })
        .collect();
    let computes = Arc::new(AtomicU64::new(0));
    // (start, end) of every compute that ran.
    let compute_runs: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(tokio::sync::Barrier::new(processes * tasks));
    let mut handles = Vec::new();
    for cache in &caches {
        for _ in 0..tasks {
            let cache = cache.clone();
            let key = key.clone();
            let computes = computes.clone();
            let compute_runs = compute_runs.clone();
            let barrier = barrier.clone();
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let f = cache
                    .try_fetch::<Bytes, _, std::convert::Infallible>(
                        &key,
                        Some(Duration::from_secs(60)),
                        async move {
                            let start = Instant::now();
                            computes.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(COMPUTE_TIME).await;
                            compute_runs.lock().push((start, Instant::now()));
                            Ok(Bytes::from_static(b"the answer"))
                        },
                    )
                    .await;
                (Instant::now(), f)
            }));
        }
    }
    let mut done = Vec::new();
    let mut statuses = BTreeMap::<String, u64>::new();
    let mut errors = 0u64;
    for h in handles {
        let (at, f) = h.await.expect("stampede task");
        match f {
            Ok(f) => {
                assert_eq!(&f.value[..], b"the answer");
                *statuses.entry(f.status.to_string()).or_default() += 1;
                done.push(at);
            }
            Err(e) => {
                eprintln!("stampede caller failed: {e}");
                errors += 1;
            }
        }
    }
    // From the end of the first compute; a later compute (a lost race) is reported by when
    // it started relative to that end.
    let mut runs = compute_runs.lock().clone();
    runs.sort();
    let end = runs.first().expect("a compute ran").1;
    let late_starts_ms: Vec<f64> = runs[1..]
        .iter()
        .map(|(start, _)| {
            if *start >= end {
                start.duration_since(end).as_secs_f64() * 1e3
            } else {
                -(end.duration_since(*start).as_secs_f64() * 1e3)
            }
        })
        .collect();
    let mut after: Vec<Duration> = done
        .iter()
        .map(|at| at.saturating_duration_since(end))
        .collect();
    let polls: u64 = caches.iter().map(|c| c.compute_stats().polls).sum();
    let lock_waits: u64 = caches.iter().map(|c| c.compute_stats().lock_waits).sum();
    emit(merge(
        json!({
            "suite": "stampede", "transport": label, "notify": notify,
            "processes": processes, "tasks_per_process": tasks, "waiters": processes * tasks,
            "computes": computes.load(Ordering::SeqCst), "errors": errors,
            "statuses": statuses, "polls": polls,
            "extra_compute_start_ms_after_first_end": late_starts_ms, "lock_waits": lock_waits,
            "compute_ms": COMPUTE_TIME.as_millis() as u64,
        }),
        summary(&mut after),
    ));
}

/// `larder gateway` in this process over `native`, and larder-edge's `RestTransport` (native
/// reqwest client) to it, subscribing through the gateway's event streams, and one that
/// only polls (as in Workers, or against Upstash).
async fn http_via_gateway(
    native: &RedisTransport,
) -> (
    larder_native::gateway::SpawnedGateway,
    RestTransport,
    RestTransport,
) {
    let gateway = Gateway::builder(Arc::new(native.clone()))
        .token(Token::new(TOKEN).unwrap())
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let rest = |subscriptions| {
        RestTransport::builder(gateway.url(), TOKEN)
            .base64_args(true)
            .subscriptions(subscriptions)
            .build()
            .expect("RestTransport with the native client")
    };
    let (subscribing, polling) = (rest(true), rest(false));
    (gateway, subscribing, polling)
}

async fn stampedes(server: &RedisServer) {
    let native = transport(server).await;
    let (gateway, rest, polling) = http_via_gateway(&native).await;
    let mut run = 0;
    for (processes, tasks) in [(1, 1000), (1000, 1)] {
        run += 1;
        stampede(
            "native RedisTransport",
            native.clone(),
            processes,
            tasks,
            run,
        )
        .await;
        run += 1;
        stampede(
            "HTTP RestTransport → gateway",
            rest.clone(),
            processes,
            tasks,
            run,
        )
        .await;
        run += 1;
        stampede(
            "HTTP RestTransport → gateway",
            polling.clone(),
            processes,
            tasks,
            run,
        )
        .await;
    }
    emit(json!({"suite": "stampede", "kind": "http_requests",
                "requests": rest.requests() + polling.requests()}));
    drop(gateway);
}

// ---------------------------------------------------------------------------------------
// Streams: how soon a caller that joins a stream in flight gets its first event, and how
// fast a recorded stream replays.

#[derive(Debug)]
struct NoUpstream;

impl std::fmt::Display for NoUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no upstream")
    }
}

impl std::error::Error for NoUpstream {}

type SseBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, NoUpstream>> + Send>>;

/// An OpenAI chat stream of `n` events (`n - 2` content chunks, the finish chunk, `[DONE]`).
fn chat_events(n: usize) -> Vec<Bytes> {
    let chunk = |delta: &str, finish: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\
             \"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\
             \"finish_reason\":{finish}}}]}}\n\n"
        ))
    };
    let mut out: Vec<Bytes> = (0..n.saturating_sub(2))
        .map(|i| chunk(&format!("{{\"content\":\"token{i} \"}}"), "null"))
        .collect();
    out.push(chunk("{}", "\"stop\""));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// A model that thinks `think`, then sends `events` one every `gap`.
fn model(
    events: Vec<Bytes>,
    think: Duration,
    gap: Duration,
) -> impl FnOnce() -> std::future::Ready<Result<SseBody, NoUpstream>> + Send {
    move || {
        use futures_util::StreamExt;
        let body = futures_util::stream::iter(events.into_iter().enumerate()).then(
            move |(i, e)| async move {
                tokio::time::sleep(if i == 0 { think } else { gap }).await;
                Ok(e)
            },
        );
        std::future::ready(Ok(Box::pin(body) as SseBody))
    }
}

fn response_cache<T: Transport + Clone + 'static>(t: &T, prefix: &str) -> ResponseCache {
    let redis = RedisCache::builder(t.clone())
        .prefix(prefix)
        .build()
        .unwrap();
    ResponseCache::redis(redis).build().unwrap()
}

/// Reads a stream; returns when its first and last events arrived (since `t0`) and how many
/// there were.
async fn read_timed(mut s: Streamed, t0: Instant) -> (Duration, Duration, usize) {
    use futures_util::StreamExt;
    let mut first = None;
    let mut n = 0;
    while let Some(e) = s.next().await {
        e.expect("the stream completes");
        first.get_or_insert_with(|| t0.elapsed());
        n += 1;
    }
    (first.unwrap_or_default(), t0.elapsed(), n)
}

/// Time to first (and last) event of a follower that asks 5 ms after the leader, relative
/// to the leader's, `runs` times.
async fn follower_lag(label: &str, leader: &ResponseCache, follower: &ResponseCache, runs: usize) {
    let events = chat_events(100);
    let mut first_lag = Vec::new();
    let mut last_lag = Vec::new();
    let mut leader_first = Vec::new();
    let mut statuses = BTreeMap::<String, u64>::new();
    for run in 0..runs {
        let request = LlmRequest::chat("gpt-4o-mini").user(format!("{label} run {run}"));
        let t0 = Instant::now();
        let lead = leader
            .stream_with(
                &request,
                &CacheControl::default(),
                model(
                    events.clone(),
                    Duration::from_millis(50),
                    Duration::from_millis(1),
                ),
            )
            .await
            .expect("the leader opens");
        let lead = tokio::spawn(read_timed(lead, t0));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let follow = follower
            .stream_with(
                &request,
                &CacheControl::default(),
                model(events.clone(), Duration::ZERO, Duration::ZERO),
            )
            .await
            .expect("the follower opens");
        *statuses.entry(follow.status().to_string()).or_default() += 1;
        let (f_first, f_last, f_n) = read_timed(follow, t0).await;
        let (l_first, l_last, l_n) = lead.await.expect("leader task");
        assert_eq!((l_n, f_n), (events.len(), events.len()));
        first_lag.push(f_first.saturating_sub(l_first));
        last_lag.push(f_last.saturating_sub(l_last));
        leader_first.push(l_first);
    }
    let ms = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i].as_secs_f64() * 1e3
    };
    emit(json!({
        "suite": "stream_follow", "mode": label, "runs": runs, "events": events.len(),
        "statuses": statuses,
        "leader_first_ms_p50": ms(&mut leader_first, 0.5),
        "first_lag_ms_p50": ms(&mut first_lag, 0.5), "first_lag_ms_p99": ms(&mut first_lag, 0.99),
        "last_lag_ms_p50": ms(&mut last_lag, 0.5), "last_lag_ms_p99": ms(&mut last_lag, 0.99),
    }));
}

/// Events per second of replaying a recorded 1,000-event stream (lookup included).
async fn replay_rate(label: &str, cache: &ResponseCache) {
    let events = chat_events(1000);
    let request = LlmRequest::chat("gpt-4o-mini").user(format!("replay {label}"));
    let s = cache
        .stream_with(
            &request,
            &CacheControl::default(),
            model(events.clone(), Duration::ZERO, Duration::ZERO),
        )
        .await
        .unwrap();
    read_timed(s, Instant::now()).await;
    let mut rates = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline || rates.len() < 5 {
        let t0 = Instant::now();
        let s = cache
            .stream_with(
                &request,
                &CacheControl::default(),
                model(Vec::new(), Duration::ZERO, Duration::ZERO),
            )
            .await
            .unwrap();
        assert_eq!(s.status(), larder_core::Status::Hit);
        let (_, took, n) = read_timed(s, t0).await;
        assert_eq!(n, events.len());
        rates.push(n as f64 / took.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    emit(json!({
        "suite": "stream_replay", "backend": label, "events": events.len(),
        "replays": rates.len(), "events_per_s_p50": rates[rates.len() / 2],
        "events_per_s_min": rates[0],
    }));
}

async fn streams(server: &RedisServer) {
    let native = transport(server).await;
    let other = transport(server).await;
    let (gateway, rest, polling) = http_via_gateway(&native).await;
    let runs = 20;
    let a = response_cache(&native, "bench-streams");
    follower_lag("in-process", &a, &a, runs).await;
    let b = response_cache(&other, "bench-streams");
    follower_lag("cross-process, native (pub/sub)", &a, &b, runs).await;
    let c = response_cache(&rest, "bench-streams");
    follower_lag(
        "cross-process, HTTP via the gateway (subscribed)",
        &a,
        &c,
        runs,
    )
    .await;
    let d = response_cache(&polling, "bench-streams");
    follower_lag(
        "cross-process, HTTP via the gateway (50 ms polling)",
        &a,
        &d,
        runs,
    )
    .await;
    let memory = ResponseCache::local(MemoryCache::builder().build().unwrap())
        .build()
        .unwrap();
    replay_rate("memory", &memory).await;
    replay_rate("Redis (native)", &a).await;
    drop(gateway);
}

// ---------------------------------------------------------------------------------------
// Outage: op latency while Redis is down.

/// Runs `op` sequentially until `n` samples or `cap` elapsed; records latency and outcome.
async fn sequential<F, Fut>(client: &str, n: usize, cap: Duration, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let (mut served, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    while samples.len() < n && started.elapsed() < cap {
        let t = Instant::now();
        let r = op().await;
        samples.push(t.elapsed());
        match r {
            Ok(true) => served += 1,
            Ok(false) => {}
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    emit(merge(
        json!({"suite": "outage", "client": client, "served_value": served, "errors": errors,
               "error": first_error}),
        summary(&mut samples),
    ));
}

async fn outage() {
    let mut server = RedisServer::start().expect("start redis-server");
    let plain = RedisCache::builder(transport(&server).await)
        .prefix(PREFIX)
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::new()
        .clock(clock())
        .layer(transport(&server).await);
    let guarded = RedisCache::builder(breaker.clone())
        .prefix(PREFIX)
        .build()
        .unwrap();
    let tiered = TieredCache::builder(
        MemoryCache::builder()
            .clock(clock())
            .max_entries(10_000)
            .build()
            .unwrap(),
        guarded.clone(),
    )
    .l1_max_ttl(Duration::from_secs(600))
    .runtime(TokioRuntime::shared())
    .build()
    .unwrap();
    tiered
        .set("warm", value_1k(), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let manager = client.get_connection_manager().await.unwrap();
    let _: () = redis::cmd("PING")
        .query_async(&mut manager.clone())
        .await
        .unwrap();

    server.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let n = 300;
    let cap = Duration::from_secs(5);
    sequential("larder RedisCache (no breaker)", n, cap, || async {
        plain
            .get("warm")
            .await
            .map(|v| v.is_some())
            .map_err(|e| e.to_string())
    })
    .await;
    sequential("larder RedisCache + breaker", n, cap, || async {
        guarded
            .get("warm")
            .await
            .map(|v| v.is_some())
            .map_err(|e| e.to_string())
    })
    .await;
    sequential("larder tiered + breaker (L1 hit)", n, cap, || async {
        tiered
            .get("warm")
            .await
            .map(|v| v.is_some())
            .map_err(|e| e.to_string())
    })
    .await;
    sequential("larder tiered + breaker (L1 miss)", n, cap, || async {
        tiered
            .get("cold")
            .await
            .map(|v| v.is_some())
            .map_err(|e| e.to_string())
    })
    .await;
    emit(json!({"suite": "outage", "kind": "breaker", "stats": format!("{:?}", breaker.stats())}));

    // redis-rs ConnectionManager with its defaults: each call retries for seconds, so the
    // samples are concurrent calls (10 tasks × 2 calls) rather than hundreds in a row.
    let started = Instant::now();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..2 {
                    let mut m = manager.clone();
                    let t = Instant::now();
                    let r: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
                        .arg("bench:cache:warm")
                        .query_async(&mut m)
                        .await;
                    out.push((t.elapsed(), r.map_err(|e| e.to_string())));
                }
                out
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for h in handles {
        for (d, r) in h.await.unwrap() {
            samples.push(d);
            if let Err(e) = r {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    emit(merge(
        json!({"suite": "outage", "client": "redis-rs ConnectionManager (defaults)",
               "served_value": 0, "errors": errors, "error": first_error,
               "wall_ms": started.elapsed().as_millis() as u64}),
        summary(&mut samples),
    ));
}

fn main() {
    let only = std::env::var("LARDER_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start().expect("start redis-server");
    rt.block_on(async {
        if part("tiered") {
            eprintln!("tiered");
            tiered(&server).await;
        }
        if part("stampede") {
            eprintln!("stampede");
            stampedes(&server).await;
        }
        if part("streams") {
            eprintln!("streams");
            streams(&server).await;
        }
        if part("outage") {
            eprintln!("outage");
            outage().await;
        }
    });
    drop(server);
}
