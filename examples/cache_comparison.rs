//! Memory vs Redis vs tiered (memory in front of Redis): timings of the same workload, then
//! what each strategy does when Redis fails.
//!
//! Run with `cargo run --release --example cache_comparison`.
//!
//! It uses `REDIS_URL`, or starts a throwaway `redis-server` on a free port with larder's
//! test harness (and stops it at the end). Without either, only the memory tier runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::Status;
use larder::fallback::{FallbackCache, LazyTransport};
use larder::native::RedisTransport;
use larder::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache};
use larder::tiered::TieredCache;
use larder::{Cache, MemoryCache, RedisCache, SharedClock};
use larder_native::testing::RedisServer;

type Error = Box<dyn std::error::Error + Send + Sync>;

const KEYS: usize = 500;
const READS: usize = 5_000;

/// Microseconds per operation at the median and the 99th percentile.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// Writes `KEYS` 1 KB values, then reads them `READS` times (sequentially: latency, not
/// throughput).
async fn workload(name: &str, cache: &dyn Cache) -> Result<(), Error> {
    let value = larder::Bytes::from(vec![b'x'; 1024]);
    let mut writes = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let t = Instant::now();
        cache
            .set(
                &format!("cmp:{i}"),
                value.clone(),
                Some(Duration::from_secs(300)),
            )
            .await?;
        writes.push(t.elapsed());
    }
    let mut reads = Vec::with_capacity(READS);
    for i in 0..READS {
        let t = Instant::now();
        let hit = cache.get(&format!("cmp:{}", i % KEYS)).await?;
        reads.push(t.elapsed());
        assert!(hit.is_some());
    }
    let (w50, w99) = summary(writes);
    let (r50, r99) = summary(reads);
    println!(
        "{name:<28} set p50 {w50:>8.1} µs  p99 {w99:>8.1} µs   get p50 {r50:>8.1} µs  p99 {r99:>8.1} µs"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let memory = || MemoryCache::builder().max_entries(100_000).build().unwrap();

    let mut server = None;
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => match tokio::task::spawn_blocking(RedisServer::start).await? {
            Ok(s) => {
                let url = s.url();
                server = Some(s);
                Some(url)
            }
            Err(e) => {
                println!("no REDIS_URL and no redis-server ({e}): memory only");
                None
            }
        },
    };

    println!("== timings ({KEYS} keys of 1 KB, {READS} reads) ==");
    workload("memory (W-TinyLFU + TTL)", &memory()).await?;
    let Some(url) = url else { return Ok(()) };
    let redis = RedisCache::builder(RedisTransport::connect(&url).await?)
        .prefix("cmp-redis")
        .build()?;
    workload("redis", &redis).await?;
    let l2 = RedisCache::builder(RedisTransport::connect(&url).await?)
        .prefix("cmp-tiered")
        .build()?;
    let tiered = TieredCache::builder(memory(), l2.clone())
        .l1_max_ttl(Duration::from_secs(60))
        .build()?;
    workload("tiered (memory + redis)", &tiered).await?;

    // The response cache on top: a hit costs one lookup (one round trip on Redis).
    let request = LlmRequest::chat("gpt-4o-mini").user("What is the capital of France?");
    let control = CacheControl::default();
    for (name, cache) in [
        (
            "ResponseCache on memory",
            ResponseCache::local(memory()).build()?,
        ),
        (
            "ResponseCache on redis",
            ResponseCache::redis(redis.clone()).build()?,
        ),
    ] {
        cache
            .put(&request, &control, &LlmResponse::new("Paris."))
            .await?;
        let mut samples = Vec::new();
        for _ in 0..1_000 {
            let t = Instant::now();
            let a = cache.get(&request, &control).await?;
            samples.push(t.elapsed());
            assert!(a.is_some_and(|a| a.is_hit()));
        }
        let (p50, p99) = summary(samples);
        println!("{name:<28} hit p50 {p50:>8.1} µs  p99 {p99:>8.1} µs");
    }

    println!("\n== when Redis fails ==");
    // A Redis we cannot reach: nothing listens on this port.
    let dead = "redis://127.0.0.1:1".to_owned();

    // 1. Plain Redis: the caller sees the error (retryable) and decides.
    match RedisTransport::connect(&dead).await {
        Err(e) => println!(
            "redis only:        connect fails fast: retryable={} ({e})",
            e.is_retryable()
        ),
        Ok(_) => println!("redis only:        unexpectedly connected"),
    }

    // 2. Fallback: start on memory, move to Redis as soon as it answers (no restart).
    let target = dead.clone();
    let lazy = LazyTransport::new(move || {
        let url = target.clone();
        async move { RedisTransport::connect(&url).await }
    });
    let fallback = FallbackCache::new(RedisCache::new(lazy), memory());
    fallback.set("k", "kept in memory".into(), None).await?;
    println!(
        "fallback cache:    degraded={} get={:?}",
        fallback.is_degraded(),
        fallback
            .get("k")
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    );

    // 3. Tiered: Redis dies after warm-up; L1 keeps serving and accepting writes.
    tiered.set("warm", "from L1".into(), None).await?;
    if let Some(s) = server.as_mut() {
        s.kill();
        let got = tiered.get("warm").await?;
        tiered
            .set("new", "written while Redis is down".into(), None)
            .await?;
        println!(
            "tiered cache:      Redis killed; get={:?}, l2 errors so far {}",
            got.map(|b| String::from_utf8_lossy(&b).into_owned()),
            tiered.tiered_stats().l2_errors
        );

        // 4. Response cache, fail-open: computes the answer anyway (MISS, not an error).
        let cache = ResponseCache::redis(redis.clone()).build()?;
        let a = cache
            .try_get_with(&request, &control, || async {
                Ok::<_, std::io::Error>(LlmResponse::new("computed while Redis is down"))
            })
            .await?;
        println!(
            "response cache:    {} {:?} ({} cache errors counted)",
            a.status,
            a.text(),
            cache.errors()
        );
        s.restart()?;
    } else {
        println!(
            "(REDIS_URL given: not killing someone else's Redis; start without it to see this part)"
        );
    }

    // 5. Fail-safe: a stale answer beats an error when the model is down.
    let clock_now = larder::ManualClock::new(1_000_000);
    let manual: SharedClock = Arc::new(clock_now.clone());
    let cache = ResponseCache::local(
        MemoryCache::builder()
            .clock(manual.clone())
            .max_entries(100)
            .build()
            .unwrap(),
    )
    .default_ttl(Duration::from_secs(60))
    .stale_window(Duration::from_secs(3600))
    .build()?;
    cache
        .put(&request, &control, &LlmResponse::new("Paris."))
        .await?;
    clock_now.advance(Duration::from_secs(120)); // past fresh, inside the stale window
    let a = cache
        .try_get_with(&request, &control, || async {
            Err::<LlmResponse, _>(std::io::Error::other("model provider down"))
        })
        .await?;
    assert_eq!(a.status, Status::Stale);
    println!(
        "stale window:      model down -> {} {:?}",
        a.status,
        a.text()
    );

    let _ = redis.clear().await;
    let _ = l2.clear().await;
    Ok(())
}
