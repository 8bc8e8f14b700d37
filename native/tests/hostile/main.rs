//! Hostility from the Redis side, against a real `redis-server`: other programs writing
//! under larder's keys — raw text, foreign JSON, binary garbage, a 20 MB value, values of
//! the wrong type at cache keys, foreign or wrong-typed lock keys, stats keys that are not
//! integers. Each must end as documented in docs/SECURITY.md: a corrupt value is a counted
//! miss, nothing panics, and nothing larder does destroys another program's lock or data.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::compute::{ComputeCache, ComputeError, RedisLock, Status, WaitPolicy};
use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache};
use larder_core::{Cache, Cmd, Envelope, Error, KeyScheme, RedisCache, Stat, Transport, Value};
use larder_native::testing::RedisServer;
use larder_native::{RedisTransport, TokioRuntime};

const PREFIX: &str = "hx";

struct Setup {
    _redis: RedisServer,
    raw: RedisTransport,
    cache: RedisCache<RedisTransport>,
}

impl Setup {
    async fn start() -> Setup {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap()
            .expect("redis-server starts");
        let raw = RedisTransport::connect(&redis.url()).await.unwrap();
        let cache = RedisCache::builder(raw.clone())
            .prefix(PREFIX)
            .build()
            .unwrap();
        Setup {
            _redis: redis,
            raw,
            cache,
        }
    }

    fn keys(&self) -> &KeyScheme {
        self.cache.key_scheme()
    }

    /// Another program's command, run as is.
    async fn foreign(&self, parts: &[&[u8]]) -> Value {
        let cmd =
            Cmd::from_parts(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()).unwrap();
        self.raw.exec(cmd).await.expect("the foreign command runs")
    }

    async fn raw_get(&self, key: &str) -> Value {
        self.foreign(&[b"GET", key.as_bytes()]).await
    }

    fn compute(
        &self,
        policy: WaitPolicy,
        max_wait: Duration,
    ) -> ComputeCache<RedisCache<RedisTransport>> {
        ComputeCache::builder(self.cache.clone())
            .lock(RedisLock::for_cache(&self.cache))
            .runtime(TokioRuntime::shared())
            .lease_ttl(Duration::from_secs(5))
            .max_wait(max_wait)
            .wait_policy(policy)
            .build()
            .unwrap()
    }
}

/// An Envelope computation that counts its runs.
fn answer(
    runs: &Arc<AtomicU32>,
    text: &'static str,
) -> impl Future<Output = Result<Envelope, Infallible>> + Send + 'static {
    let runs = runs.clone();
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(Envelope::new(text, "m", 0))
    }
}

fn bulk(v: &Value) -> &[u8] {
    match v {
        Value::Bulk(b) => b,
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_at_cache_keys_are_legacy_text_or_counted_misses() {
    let s = Setup::start().await;
    let compute = s.compute(WaitPolicy::Compute, Duration::from_millis(200));
    let runs = Arc::new(AtomicU32::new(0));
    // Another program's key beside ours: whatever happens, it is untouched.
    s.foreign(&[b"SET", b"not-larder", b"precious"]).await;

    // Readable text (go-deep-agent writes raw text; foreign JSON without "v" is text too):
    // served as a legacy hit, never recomputed, never rewritten.
    for (key, stored) in [
        ("raw", &b"The capital of France is Paris."[..]),
        ("json", br#"{"answer":42,"from":"another program"}"#),
        ("array", b"[1,2,3]"),
    ] {
        s.foreign(&[b"SET", s.keys().value_key(key).as_bytes(), stored])
            .await;
        let got = compute
            .try_fetch(key, None, answer(&runs, "computed"))
            .await
            .unwrap();
        assert_eq!(got.status, Status::Hit, "{key}");
        assert_eq!(got.value.response.as_bytes(), stored, "{key}");
        assert_eq!(bulk(&s.raw_get(&s.keys().value_key(key)).await), stored);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    // Undecodable: binary garbage, a broken envelope, an envelope with wrong field types.
    // Each is a counted miss, recomputed, and replaced by a real envelope.
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("binary", vec![0xff, 0x00, 0xfe, 0x80, 0x01]),
        ("truncated", br#"{"v":1,"response":"cut of"#.to_vec()),
        ("wrong-fields", br#"{"v":"one","response":["x"]}"#.to_vec()),
        (
            "deep",
            format!("{{\"v\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ),
    ];
    for (i, (key, bytes)) in garbage.iter().enumerate() {
        s.foreign(&[b"SET", s.keys().value_key(key).as_bytes(), bytes])
            .await;
        let got = compute
            .try_fetch(key, None, answer(&runs, "recomputed"))
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.value.response.as_str()),
            (Status::Miss, "recomputed"),
            "{key}"
        );
        assert_eq!(
            compute.compute_stats().corrupt,
            i as u64 + 1,
            "{key} counted corrupt"
        );
        let stored = s.raw_get(&s.keys().value_key(key)).await;
        assert!(
            matches!(Envelope::decode(bulk(&stored)), larder_core::Decoded::Envelope(e) if e.response == "recomputed"),
            "{key} replaced by an envelope"
        );
    }
    let stats = s.cache.stats().await.unwrap();
    assert_eq!(stats.corrupt, 4, "{stats:?}");
    assert_eq!(bulk(&s.raw_get("not-larder").await), b"precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_foreign_value_is_read_or_counted_corrupt_without_harm() {
    let s = Setup::start().await;
    let compute = s.compute(WaitPolicy::Compute, Duration::from_millis(200));
    let runs = Arc::new(AtomicU32::new(0));
    let text = "a".repeat(20 * 1024 * 1024);
    s.foreign(&[
        b"SET",
        s.keys().value_key("big-text").as_bytes(),
        text.as_bytes(),
    ])
    .await;
    let started = Instant::now();
    let got = compute
        .try_fetch("big-text", None, answer(&runs, "small"))
        .await
        .unwrap();
    eprintln!(
        "20 MB legacy value read and decoded in {:?}",
        started.elapsed()
    );
    assert_eq!(got.status, Status::Hit);
    assert_eq!(got.value.response.len(), text.len());

    let mut binary = vec![0xffu8; 20 * 1024 * 1024];
    binary[0] = b'{';
    s.foreign(&[b"SET", s.keys().value_key("big-binary").as_bytes(), &binary])
        .await;
    let started = Instant::now();
    let got = compute
        .try_fetch("big-binary", None, answer(&runs, "small"))
        .await
        .unwrap();
    eprintln!(
        "20 MB binary value found corrupt and replaced in {:?}",
        started.elapsed()
    );
    assert_eq!(got.status, Status::Miss);
    assert_eq!(compute.compute_stats().corrupt, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The raw API hands the bytes back unchanged.
    s.foreign(&[b"SET", s.keys().value_key("big-raw").as_bytes(), &binary])
        .await;
    assert_eq!(
        s.cache.get("big-raw").await.unwrap().unwrap().len(),
        binary.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_at_cache_keys_are_surfaced_raw_and_a_counted_miss_when_computing() {
    let s = Setup::start().await;
    let compute = s.compute(WaitPolicy::Compute, Duration::from_millis(200));
    let runs = Arc::new(AtomicU32::new(0));
    let h = s.keys().value_key("hash");
    let l = s.keys().value_key("list");
    s.foreign(&[b"HSET", h.as_bytes(), b"f", b"v"]).await;
    s.foreign(&[b"RPUSH", l.as_bytes(), b"a"]).await;

    // The raw cache API reports what Redis said.
    let err = s.cache.get("hash").await.unwrap_err();
    assert!(
        matches!(&err, Error::Server(m) if m.starts_with("WRONGTYPE")),
        "{err}"
    );
    assert!(matches!(s.cache.mget(&["list", "hash"]).await, Ok(v) if v == vec![None, None]));

    // get-or-compute: a counted corrupt miss, computed under the lease like any miss, and
    // the key (larder's) now holds the computed envelope.
    for (i, key) in ["hash", "list"].into_iter().enumerate() {
        let got = compute
            .try_fetch(key, None, answer(&runs, "computed"))
            .await
            .unwrap();
        assert_eq!(got.status, Status::Miss, "{key}");
        let st = compute.compute_stats();
        assert_eq!(
            (st.corrupt, st.lock_acquired, st.cache_errors),
            (i as u64 + 1, i as u64 + 1, 0),
            "{key}: {st:?}"
        );
        let stored = s.raw_get(&s.keys().value_key(key)).await;
        assert!(matches!(
            Envelope::decode(bulk(&stored)),
            larder_core::Decoded::Envelope(_)
        ));
    }
    let stats = s.cache.stats().await.unwrap();
    assert_eq!(
        (stats.corrupt, stats.hits),
        (3, 0),
        "the raw read and both computes: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_garbage_under_response_cache_keys_are_counted_misses() {
    let s = Setup::start().await;
    let responses = ResponseCache::redis(s.cache.clone()).build().unwrap();
    let control = CacheControl::default();
    let request = LlmRequest::prompt("m", "What is the capital of France?");
    let key = responses
        .put(&request, &control, &LlmResponse::new("Paris."))
        .await
        .unwrap();
    for foreign in [
        &[&b"SET"[..], key.as_bytes(), b"\xff\xfe garbage"][..],
        &[b"DEL", key.as_bytes()],
        &[b"HSET", key.as_bytes(), b"f", b"v"],
    ] {
        if foreign[0] == b"HSET" {
            s.foreign(&[b"DEL", key.as_bytes()]).await;
        }
        assert!(
            !matches!(s.foreign(foreign).await, Value::Error(_)),
            "{foreign:?}"
        );
        let before = responses.corrupt();
        assert_eq!(
            responses.get(&request, &control).await.unwrap(),
            None,
            "{foreign:?}"
        );
        let answer = responses
            .try_get_with(&request, &control, || async {
                Ok::<_, Infallible>(LlmResponse::new("Paris, recomputed."))
            })
            .await
            .unwrap();
        assert_eq!(answer.status, Status::Miss);
        let expected = u64::from(foreign[0] != b"DEL");
        assert_eq!(responses.corrupt() - before, 2 * expected, "{foreign:?}");
        let hit = responses
            .get(&request, &control)
            .await
            .unwrap()
            .expect("stored again");
        assert_eq!(hit.text(), "Paris, recomputed.");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_lock_value_is_never_deleted_or_extended_and_each_wait_policy_completes() {
    let s = Setup::start().await;
    let runs = Arc::new(AtomicU32::new(0));
    let max_wait = Duration::from_millis(300);
    let lock = s.keys().lock_key("locked");
    s.foreign(&[
        b"SET",
        lock.as_bytes(),
        b"someone-elses-token",
        b"PX",
        b"60000",
    ])
    .await;

    // Compute (the default): waits out the bound, then computes without the lease.
    let compute = s.compute(WaitPolicy::Compute, max_wait);
    let started = Instant::now();
    let got = compute
        .try_fetch("locked", None, answer(&runs, "computed"))
        .await
        .unwrap();
    let waited = started.elapsed();
    eprintln!("WaitPolicy::Compute computed after {waited:?} behind a foreign lock");
    assert_eq!(got.status, Status::Miss);
    assert!(waited >= max_wait && waited < max_wait * 5, "{waited:?}");
    assert_eq!(compute.compute_stats().lock_wait_timeouts, 1);

    // Error: fails with LockWait after the bound.
    s.cache.delete("locked").await.unwrap();
    let erring = s.compute(WaitPolicy::Error, max_wait);
    let started = Instant::now();
    let err = erring
        .try_fetch("locked", None, answer(&runs, "never"))
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::LockWait { .. }), "{err:?}");
    assert!(started.elapsed() >= max_wait);

    // ServeStale with nothing stale: computes.
    let stale = s.compute(WaitPolicy::ServeStale, max_wait);
    s.cache.delete("locked").await.unwrap();
    let got = stale
        .try_fetch("locked", None, answer(&runs, "computed"))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);

    // The foreign lock is exactly as it was: same value, TTL only ever counting down.
    assert_eq!(bulk(&s.raw_get(&lock).await), b"someone-elses-token");
    let pttl = s
        .foreign(&[b"PTTL", lock.as_bytes()])
        .await
        .as_int()
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 60_000 - started.elapsed().as_millis() as i64,
        "{pttl}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_key_of_the_wrong_type_is_waited_out_and_left_alone() {
    let s = Setup::start().await;
    let runs = Arc::new(AtomicU32::new(0));
    let lock = s.keys().lock_key("typed");
    s.foreign(&[b"HSET", lock.as_bytes(), b"owner", b"another-program"])
        .await;
    let compute = s.compute(WaitPolicy::Compute, Duration::from_millis(200));
    let got = compute
        .try_fetch("typed", None, answer(&runs, "computed"))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    let st = compute.compute_stats();
    assert_eq!((st.lock_acquired, st.lock_wait_timeouts), (0, 1), "{st:?}");
    let owner = s.foreign(&[b"HGET", lock.as_bytes(), b"owner"]).await;
    assert_eq!(bulk(&owner), b"another-program");
    // Past the wait the value is cached, so the next call is a hit and does not wait.
    let started = Instant::now();
    let got = compute
        .try_fetch("typed", None, answer(&runs, "again"))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Hit);
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_over_during_the_compute_is_neither_released_nor_extended() {
    let s = Setup::start().await;
    let compute = s.compute(WaitPolicy::Compute, Duration::from_millis(200));
    for (key, intruder) in [
        (
            "string",
            &[&b"SET"[..], b"{lock}", b"intruder-token", b"PX", b"60000"][..],
        ),
        ("hash", &[&b"DEL"[..], b"{lock}"][..]),
    ] {
        let lock = s.keys().lock_key(key);
        let raw = s.raw.clone();
        let parts: Vec<Vec<u8>> = intruder
            .iter()
            .map(|p| {
                if *p == b"{lock}" {
                    lock.clone().into_bytes()
                } else {
                    p.to_vec()
                }
            })
            .collect();
        let hash_lock = key == "hash";
        let lock_for_task = lock.clone();
        let got = compute
            .try_fetch::<Bytes, _, Infallible>(key, None, async move {
                // While we hold the lease, another program replaces it.
                raw.exec(Cmd::from_parts(parts.into_iter().map(Bytes::from).collect()).unwrap())
                    .await
                    .unwrap();
                if hash_lock {
                    raw.exec(Cmd::new("HSET").arg(&lock_for_task).arg("f").arg("v"))
                        .await
                        .unwrap();
                }
                Ok(Bytes::from_static(b"v"))
            })
            .await
            .unwrap();
        assert_eq!(got.status, Status::Miss, "{key}");
        if hash_lock {
            let f = s.foreign(&[b"HGET", lock.as_bytes(), b"f"]).await;
            assert_eq!(bulk(&f), b"v", "the intruder's hash survives our release");
        } else {
            assert_eq!(bulk(&s.raw_get(&lock).await), b"intruder-token");
            let pttl = s
                .foreign(&[b"PTTL", lock.as_bytes()])
                .await
                .as_int()
                .unwrap();
            assert!(pttl <= 60_000, "{pttl}");
        }
    }
    let st = compute.compute_stats();
    eprintln!("after two take-overs: {st:?}");
    assert_eq!(st.lock_acquired, 2);
    assert_eq!(
        st.lock_errors, 1,
        "the release found a hash: a counted lock error, no harm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_keys_that_are_not_integers_never_fail_a_cache_operation_nor_get_overwritten() {
    let s = Setup::start().await;
    let cache = RedisCache::builder(s.raw.clone())
        .prefix(PREFIX)
        .stats_batch(0)
        .build()
        .unwrap();
    let hits = s.keys().stats_key(Stat::Hits);
    let misses = s.keys().stats_key(Stat::Misses);
    let writes = s.keys().stats_key(Stat::Writes);
    s.foreign(&[b"SET", hits.as_bytes(), b"not a number"]).await;
    s.foreign(&[b"HSET", misses.as_bytes(), b"f", b"1"]).await;
    s.foreign(&[b"SET", writes.as_bytes(), b"99999999999999999999999"])
        .await;
    for i in 0..5 {
        cache
            .set("k", Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        assert!(cache.get("k").await.unwrap().is_some(), "{i}");
        assert!(cache.get("absent").await.unwrap().is_none(), "{i}");
    }
    cache.flush_stats().await.unwrap();
    let stats = cache.stats().await.unwrap();
    assert_eq!(
        (stats.hits, stats.misses, stats.writes),
        (5, 5, 5),
        "local counts"
    );
    let shared = stats.shared.expect("shared stats are read");
    assert_eq!(
        (shared.hits, shared.misses, shared.writes),
        (0, 0, 0),
        "unreadable counters read as 0"
    );
    assert_eq!(
        bulk(&s.raw_get(&hits).await),
        b"not a number",
        "not overwritten"
    );
    let f = s.foreign(&[b"HGET", misses.as_bytes(), b"f"]).await;
    assert_eq!(bulk(&f), b"1");
    assert_eq!(bulk(&s.raw_get(&writes).await), b"99999999999999999999999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_under_a_tiered_cache_is_a_corrupt_miss_not_an_l2_outage() {
    use larder_core::{MemoryCache, TieredCache};
    let s = Setup::start().await;
    let tiered = TieredCache::builder(
        MemoryCache::builder().max_entries(1000).build().unwrap(),
        s.cache.clone(),
    )
    .runtime(TokioRuntime::shared())
    .build()
    .unwrap();
    let compute = ComputeCache::builder(tiered.clone())
        .lock(RedisLock::for_cache(&s.cache))
        .runtime(TokioRuntime::shared())
        .build()
        .unwrap();
    let key = s.keys().value_key("tiered");
    s.foreign(&[b"SADD", key.as_bytes(), b"member"]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let got = compute
        .try_fetch("tiered", None, answer(&runs, "computed"))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    let st = compute.compute_stats();
    assert_eq!((st.lock_acquired, st.cache_errors), (1, 0), "{st:?}");
    let ts = tiered.tiered_stats();
    assert_eq!(ts.l2_errors, 0, "{ts:?}");
    let stats = tiered.stats().await.unwrap();
    assert_eq!(
        (stats.corrupt, stats.misses, stats.hits),
        (1, 1, 0),
        "{stats:?}"
    );
    let stored = s.raw_get(&key).await;
    assert!(matches!(
        Envelope::decode(bulk(&stored)),
        larder_core::Decoded::Envelope(_)
    ));
}
