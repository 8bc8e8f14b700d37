//! Tiered mode against real Redis: the backplane across two processes, Redis killed under
//! load, corrupt bytes under a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::breaker::BreakerState;
use larder_core::compute::Status;
use larder_core::{Cache, Envelope, Transport};
use larder_native::testing::{RedisServer, RespValue};
use serde_json::json;

use crate::{PREFIX, child_result, env, report, spawn_child, tiered_stack, transport};

const KEY: &str = "shared-key";

/// Reads a plain key through a raw connection (no cache in between).
async fn raw_get(t: &larder_native::RedisTransport, key: &str) -> Option<Bytes> {
    use larder_core::Commands;
    t.get(key.as_bytes()).await.expect("GET")
}

async fn wait_for(t: &larder_native::RedisTransport, key: &str, value: &str) {
    let started = Instant::now();
    while raw_get(t, key).await.as_deref() != Some(value.as_bytes()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {key}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn raw_set(t: &larder_native::RedisTransport, key: &str, value: &str) {
    use larder_core::{Commands, SetOptions};
    t.set(
        key.as_bytes(),
        &Bytes::copy_from_slice(value.as_bytes()),
        SetOptions::default(),
    )
    .await
    .expect("SET");
}

/// Waits until the backplane's subscription is up, reading an unrelated key (operations
/// start the subscription): subscribing clears L1 (messages sent before it were missed), so
/// an L1 filled earlier may be emptied by it.
async fn until_subscribed(cache: &larder_core::ComputeCache<crate::Tiered>) {
    let started = Instant::now();
    while !cache
        .cache()
        .tiered_stats()
        .backplane
        .is_some_and(|b| b.subscribed)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the backplane never subscribed"
        );
        let _ = cache.get("subscribe-probe").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Child: fills its L1 with `KEY`, then (once the parent has overwritten it in the other
/// process) reads it again and reports what it got.
pub(crate) async fn child_backplane() {
    let url = env("REDIS_URL");
    let (compute, _) = tiered_stack(&url).await;
    let cache = compute.build().unwrap();
    let raw = transport(&url).await;
    until_subscribed(&cache).await;
    wait_for(&raw, "test:phase", "1").await;
    let first = cache.get(KEY).await.expect("get").expect("v1 is there");
    let filled = cache.cache().l1().contains(KEY);
    raw_set(&raw, "test:ack", "1").await;
    wait_for(&raw, "test:phase", "2").await;
    let second = cache.get(KEY).await.expect("get");
    let stats = cache.cache().tiered_stats();
    report(json!({
        "first": String::from_utf8_lossy(&first),
        "filled_l1": filled,
        "second": second.map(|v| String::from_utf8_lossy(&v).into_owned()),
        "received": stats.backplane.map(|b| b.received),
        "l2_hits": stats.l2_hits,
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_overwrite_in_one_process_evicts_the_other_processes_l1() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server");
    let url = server.url();
    let (compute, _) = tiered_stack(&url).await;
    let cache = compute.build().unwrap();
    let raw = transport(&url).await;
    let child = spawn_child("backplane", &[("REDIS_URL", url.clone())]);

    cache
        .set(KEY, "v1".into(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    raw_set(&raw, "test:phase", "1").await;
    wait_for(&raw, "test:ack", "1").await;
    cache
        .set(KEY, "v2".into(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    // Give the message its way through Redis before the child looks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw_set(&raw, "test:phase", "2").await;

    let r = tokio::task::spawn_blocking(move || child_result(child))
        .await
        .unwrap();
    eprintln!("child: {r}");
    assert_eq!(r["first"], "v1");
    assert_eq!(
        r["filled_l1"], true,
        "the child held v1 in its L1 (10 min L1 TTL)"
    );
    assert_eq!(r["second"], "v2", "the overwrite evicted the child's L1");
    assert!(r["received"].as_u64().unwrap() >= 1);
    assert_eq!(r["l2_hits"], 2, "read from L2 again after the eviction");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_10_s_under_100_tasks_in_tiered_mode_returns_no_errors() {
    const TASKS: usize = 100;
    const KEYS: u64 = 5_000;
    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server");
    let url = server.url();
    let (compute, guarded) = tiered_stack(&url).await;
    let cache = compute
        .hard_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS as u64 {
        let cache = cache.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // (ms since origin, latency, error)
            let mut samples: Vec<(u64, Duration, bool)> = Vec::new();
            let mut i = t;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    % KEYS;
                n += 1;
                // Mostly a hot set that L1 holds, plus 1 in 50 keys never seen before: those
                // miss L1 and must go to L2, so the outage is met (and the breaker opens).
                let key = if n.is_multiple_of(50) {
                    format!("fresh-{t}-{n}")
                } else {
                    format!("k{i}")
                };
                let at = origin.elapsed();
                let started = Instant::now();
                let r = cache
                    .get_with(&key, Some(Duration::from_secs(3600)), async move {
                        Bytes::from(format!("value-{i}"))
                    })
                    .await;
                samples.push((at.as_millis() as u64, started.elapsed(), r.is_err()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_at = origin.elapsed();
    server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restart_at = origin.elapsed();
    server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart redis-server");
        server
    })
    .await
    .unwrap();
    let restarted = Instant::now();
    // Recovery: a value computed now reaches Redis (L2) again.
    let mut recovered = None;
    for n in 0.. {
        let key = format!("recovery-{n}");
        cache
            .get_with(&key, None, async { Bytes::from_static(b"r") })
            .await
            .unwrap();
        let exists = server
            .cmd(&["EXISTS", &format!("{PREFIX}:cache:{key}")])
            .unwrap();
        if exists == RespValue::Integer(1) {
            recovered = Some(restarted.elapsed());
            break;
        }
        if restarted.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("no task panicked"));
    }
    let errors = all.iter().filter(|s| s.2).count();
    let (kill_ms, restart_ms) = (kill_at.as_millis() as u64, restart_at.as_millis() as u64);
    let mut outage: Vec<Duration> = all
        .iter()
        .filter(|s| s.0 >= kill_ms && s.0 < restart_ms)
        .map(|s| s.1)
        .collect();
    outage.sort();
    let p50 = percentile(&outage, 0.50);
    let p99 = percentile(&outage, 0.99);
    let max = outage.last().copied().unwrap_or_default();
    let c = cache.compute_stats();
    let t = cache.cache().tiered_stats();
    let b = guarded.stats();
    eprintln!(
        "ops {} (outage {}), errors {errors}; outage latency p50 {p50:?} p99 {p99:?} max {max:?}; \
         recovery to L2 {recovered:?}; compute {c:?}; tiered l2_errors {} ; breaker {b:?}",
        all.len(),
        outage.len(),
        t.l2_errors
    );
    assert_eq!(errors, 0, "no error reached a caller");
    assert!(outage.len() > 1_000, "load kept running during the outage");
    assert!(
        p99 <= Duration::from_millis(50),
        "outage p99 {p99:?} over the 50 ms target"
    );
    let recovered = recovered.expect("L2 came back");
    assert!(
        recovered <= Duration::from_secs(1),
        "recovery to L2 took {recovered:?}"
    );
    assert_eq!(guarded.state(), BreakerState::Closed);
    assert!(
        t.l2_errors > 0 && b.rejected > 0,
        "the outage was seen and the breaker opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_under_a_key_are_a_counted_miss_and_recomputed() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server");
    let url = server.url();
    let (compute, _) = tiered_stack(&url).await;
    let cache = compute.build().unwrap();
    let raw = transport(&url).await;
    let redis_key = format!("{PREFIX}:cache:bad");
    raw.exec(
        larder_core::Cmd::new("SET")
            .arg(redis_key.as_str())
            .arg(&b"{\"v\":1,\"response\":\"trunc\xff"[..]),
    )
    .await
    .unwrap();
    let got = cache
        .try_fetch::<Envelope, _, std::convert::Infallible>(
            "bad",
            Some(Duration::from_secs(60)),
            async { Ok(Envelope::new("recomputed", "m", 0)) },
        )
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    assert_eq!(got.value.response, "recomputed");
    assert_eq!(cache.compute_stats().corrupt, 1);
    let stats = cache.stats().await.unwrap();
    assert_eq!((stats.corrupt, stats.hits), (1, 0), "{stats:?}");
    let stored = raw_get(&raw, &redis_key).await.unwrap();
    assert!(stored.starts_with(b"{\"v\":1,\"response\":\"recomputed\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connection_killed_clears_l1_when_the_transport_resumes_it() {
    use larder_core::RedisCache;
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server");
    let url = server.url();
    let (compute, _) = tiered_stack(&url).await;
    let cache = compute.build().unwrap();
    let key = "gap-key";
    cache
        .set(key, "v1".into(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    until_subscribed(&cache).await;
    // Subscribing cleared L1: fill it again.
    let _ = cache.get(key).await;
    assert!(cache.cache().l1().contains(key));
    // Another writer changes L2 without any message (a plain RedisCache, no backplane): the
    // L1 copy is now stale, and only a gap can tell.
    let plain = RedisCache::builder(transport(&url).await)
        .prefix(PREFIX)
        .build()
        .unwrap();
    plain
        .set(key, "v2".into(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(cache.get(key).await.unwrap().as_deref(), Some(&b"v1"[..]));
    // Redis drops every pub/sub connection; the transport reconnects and re-subscribes, and
    // its subscription reports the gap.
    server
        .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap()
        .into_result()
        .unwrap();
    let killed = Instant::now();
    while cache
        .cache()
        .tiered_stats()
        .backplane
        .is_none_or(|b| b.gaps == 0)
    {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no gap reported: {:?}",
            cache.cache().tiered_stats().backplane
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("gap reported {:?} after CLIENT KILL", killed.elapsed());
    assert!(!cache.cache().l1().contains(key), "the gap cleared L1");
    assert_eq!(cache.get(key).await.unwrap().as_deref(), Some(&b"v2"[..]));
    let bp = cache.cache().tiered_stats().backplane.unwrap();
    assert_eq!(
        bp.subscriptions, 1,
        "resumed by the transport, not re-made: {bp:?}"
    );
}
