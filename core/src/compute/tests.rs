//! Tests of `get_with`: single-flight, the lease, wait policies, fail-safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;

use super::*;
use crate::Clock;
use crate::testing::MemTransport;
use crate::transport::{Commands, SetOptions, Transport};
use crate::value::{Cmd, Value};
use crate::{Envelope, ManualClock, MemoryCache, RedisCache};

/// Shared helpers for tests that need real concurrency or time that waits.
pub(crate) mod support {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::clock::{Clock, SharedClock};
    use crate::error::TransportError;
    use crate::runtime::{BoxFuture, Runtime, SharedRuntime};
    use crate::transport::Transport;
    use crate::value::{Cmd, Value};

    /// Time from tokio: under `#[tokio::test(start_paused = true)]` it only moves when every
    /// task waits, so timing tests are exact and instant.
    #[derive(Debug)]
    pub(crate) struct TokioClock {
        base_ms: u64,
        start: tokio::time::Instant,
    }

    impl TokioClock {
        pub(crate) fn shared() -> Arc<TokioClock> {
            Arc::new(TokioClock {
                base_ms: 1_700_000_000_000,
                start: tokio::time::Instant::now(),
            })
        }
    }

    #[async_trait::async_trait]
    impl Clock for TokioClock {
        fn now_ms(&self) -> u64 {
            self.base_ms + self.start.elapsed().as_millis() as u64
        }
        async fn sleep(&self, d: Duration) {
            tokio::time::sleep(d).await;
        }
    }

    pub(crate) fn clock_of(c: &Arc<TokioClock>) -> SharedClock {
        c.clone()
    }

    /// `tokio::spawn` as a [`Runtime`].
    #[derive(Debug)]
    pub(crate) struct TokioRuntime;

    impl Runtime for TokioRuntime {
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            tokio::spawn(task);
        }
    }

    pub(crate) fn runtime() -> SharedRuntime {
        Arc::new(TokioRuntime)
    }

    /// A transport without pub/sub (like HTTP), forwarding to another.
    #[derive(Debug, Clone)]
    pub(crate) struct NoPubSub<T>(pub(crate) T);

    #[async_trait::async_trait]
    impl<T: Transport> Transport for NoPubSub<T> {
        async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
            self.0.exec(cmd).await
        }
        async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
            self.0.pipeline(cmds).await
        }
    }
}

use support::{NoPubSub, TokioClock, clock_of, runtime};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[derive(Debug, Clone, PartialEq)]
struct Boom(&'static str);

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Boom {}

/// A Redis-backed compute cache with the lease, on a tokio clock.
fn redis_compute(
    t: &MemTransport,
    clock: &Arc<TokioClock>,
) -> ComputeCacheBuilder<RedisCache<MemTransport>> {
    let cache = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
    ComputeCache::builder(cache.clone())
        .clock(clock_of(clock))
        .lock(RedisLock::for_cache(&cache).clock(clock_of(clock)))
        .runtime(runtime())
}

#[test]
fn computes_once_then_hits_and_counts() {
    block_on(async {
        let clock = Arc::new(ManualClock::new(0));
        let cache = ComputeCache::builder(
            MemoryCache::builder()
                .clock(clock.clone())
                .max_entries(10)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
        let v = cache.get_with("k", None, async { b("v1") }).await.unwrap();
        assert_eq!(v, b("v1"));
        let v = cache
            .get_with("k", None, async { unreachable!("cached") })
            .await
            .unwrap();
        assert_eq!(v, b("v1"));
        let s = cache.compute_stats();
        assert_eq!((s.computed, s.hits, s.in_flight), (1, 1, 0));
    });
}

#[test]
fn zero_ttl_is_rejected_before_anything_runs() {
    block_on(async {
        let clock = Arc::new(ManualClock::new(0));
        let cache = ComputeCache::builder(
            MemoryCache::builder()
                .clock(clock.clone())
                .max_entries(10)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
        let err = cache
            .get_with("k", Some(Duration::ZERO), async { unreachable!() })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ComputeError::Cache(Error::InvalidInput(_))),
            "{err}"
        );
    });
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_compute() {
    let clock = TokioClock::shared();
    let cache = ComputeCache::builder(
        MemoryCache::builder()
            .clock(clock_of(&clock))
            .max_entries(10)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .try_fetch::<Bytes, _, Infallible>("k", None, async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(b("v"))
                })
                .await
                .unwrap()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let f = t.await.unwrap();
        assert_eq!(f.value, b("v"));
        statuses.push(f.status);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(statuses.iter().filter(|s| **s == Status::Miss).count(), 1);
    assert_eq!(
        statuses.iter().filter(|s| **s == Status::Coalesced).count(),
        49
    );
    assert_eq!(cache.compute_stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn leader_error_reaches_every_waiter_and_is_not_cached() {
    let clock = TokioClock::shared();
    let cache = ComputeCache::builder(
        MemoryCache::builder()
            .clock(clock_of(&clock))
            .max_entries(10)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .try_get_with("k", None, async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Bytes, _>(Boom("provider down"))
                })
                .await
        }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.compute_error(), Some(&Boom("provider down")));
        assert_eq!(
            std::error::Error::source(&err).map(|e| e.to_string()),
            Some("provider down".into())
        );
    }
    let s = cache.compute_stats();
    assert_eq!((s.compute_errors, s.errors), (1, 10));
    // No poisoned entry: the next call computes.
    let v = cache
        .try_get_with("k", None, async { Ok::<_, Boom>(b("ok")) })
        .await
        .unwrap();
    assert_eq!(v, b("ok"));
}

#[tokio::test(start_paused = true)]
async fn dropped_leader_hands_the_work_to_a_waiter() {
    let clock = TokioClock::shared();
    let cache = ComputeCache::builder(
        MemoryCache::builder()
            .clock(clock_of(&clock))
            .max_entries(10)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_with("k", None, async {
                    std::future::pending::<()>().await;
                    b("never")
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get_with("k", None, async { b("waiter's") }).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    let v = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter does not hang")
        .unwrap()
        .unwrap();
    assert_eq!(v, b("waiter's"));
    assert_eq!(cache.compute_stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn hard_timeout_bounds_the_call_and_frees_the_key() {
    let clock = TokioClock::shared();
    let cache = ComputeCache::builder(
        MemoryCache::builder()
            .clock(clock_of(&clock))
            .max_entries(10)
            .build()
            .unwrap(),
    )
    .hard_timeout(Some(Duration::from_secs(2)))
    .build()
    .unwrap();
    let started = tokio::time::Instant::now();
    let err = cache
        .get_with("k", None, async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            b("late")
        })
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(cache.compute_stats().timeouts, 1);
    let v = cache.get_with("k", None, async { b("now") }).await.unwrap();
    assert_eq!(v, b("now"));
}

#[tokio::test(start_paused = true)]
async fn lease_makes_two_instances_compute_once() {
    let t = MemTransport::with_clock(TokioClock::shared());
    let clock = TokioClock::shared();
    let a = redis_compute(&t, &clock).build().unwrap();
    let b_ = redis_compute(&t, &clock).build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let cache = if i % 2 == 0 { a.clone() } else { b_.clone() };
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_with("k", Some(Duration::from_secs(60)), async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    b("v")
                })
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), b("v"));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one compute across both instances"
    );
    assert!(t.keys().contains(&b("p:cache:k")));
    assert!(!t.keys().contains(&b("p:lock:k")), "the lease was released");
    let (sa, sb) = (a.compute_stats(), b_.compute_stats());
    assert_eq!(sa.lock_acquired + sb.lock_acquired, 1);
    assert_eq!(
        sa.lock_waits + sb.lock_waits,
        1,
        "one waiting leader per instance"
    );
}

#[tokio::test(start_paused = true)]
async fn waiter_is_woken_by_the_release_publish_not_its_backoff() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let slow_polls = |c: ComputeCacheBuilder<_>| {
        c.poll_backoff(Duration::from_secs(20), Duration::from_secs(20))
            .max_wait(Duration::from_secs(50))
    };
    let holder = slow_polls(redis_compute(&t, &clock)).build().unwrap();
    let waiter = slow_polls(redis_compute(&t, &clock)).build().unwrap();
    let h = tokio::spawn(async move {
        holder
            .get_with("k", None, async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                b("v")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    let got = waiter
        .try_fetch::<Bytes, _, Infallible>("k", None, async { unreachable!() })
        .await
        .unwrap();
    assert_eq!((got.value, got.status), (b("v"), Status::Coalesced));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "woken by pub/sub after {:?}",
        started.elapsed()
    );
    assert_eq!(waiter.compute_stats().polls, 1);
    h.await.unwrap().unwrap();
}

/// A transport whose subscriptions resume by themselves after a gap (as larder-native's
/// do): while `deaf` messages are dropped; `resume` counts a gap and wakes the reader.
#[derive(Debug, Clone)]
struct Resuming {
    t: MemTransport,
    shared: Arc<ResumingShared>,
}

#[derive(Debug, Default)]
struct ResumingShared {
    deaf: std::sync::atomic::AtomicBool,
    gaps: std::sync::atomic::AtomicU64,
    waker: parking_lot::Mutex<Option<std::task::Waker>>,
}

impl Resuming {
    fn resume(&self) {
        self.shared.deaf.store(false, Ordering::SeqCst);
        self.shared.gaps.fetch_add(1, Ordering::SeqCst);
        if let Some(w) = self.shared.waker.lock().take() {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct ResumingSub {
    sub: crate::transport::BoxSubscription,
    shared: Arc<ResumingShared>,
}

impl crate::transport::Subscription for ResumingSub {
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<crate::transport::Message>> {
        *self.shared.waker.lock() = Some(cx.waker().clone());
        loop {
            match self.sub.poll_message(cx) {
                std::task::Poll::Ready(Some(_)) if self.shared.deaf.load(Ordering::SeqCst) => {}
                other => return other,
            }
        }
    }

    fn gaps(&self) -> u64 {
        self.shared.gaps.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Transport for Resuming {
    async fn exec(&self, cmd: Cmd) -> Result<Value, crate::TransportError> {
        self.t.exec(cmd).await
    }
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, crate::TransportError> {
        self.t.pipeline(cmds).await
    }
    fn supports_pubsub(&self) -> bool {
        true
    }
    async fn subscribe(
        &self,
        channel: &[u8],
    ) -> Result<crate::transport::BoxSubscription, crate::TransportError> {
        let sub = Transport::subscribe(&self.t, channel).await?;
        Ok(Box::new(ResumingSub {
            sub,
            shared: self.shared.clone(),
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_release_is_made_up_for_when_the_subscription_resumes() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let resuming = Resuming {
        t: t.clone(),
        shared: Arc::default(),
    };
    let holder = redis_compute(&t, &clock).build().unwrap();
    let cache = RedisCache::builder(resuming.clone())
        .prefix("p")
        .build()
        .unwrap();
    let waiter = ComputeCache::builder(cache.clone())
        .clock(clock_of(&clock))
        .lock(RedisLock::for_cache(&cache).clock(clock_of(&clock)))
        .poll_backoff(Duration::from_secs(20), Duration::from_secs(20))
        .max_wait(Duration::from_secs(50))
        .build()
        .unwrap();
    let h = tokio::spawn(async move {
        holder
            .get_with("k", None, async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                b("v")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The waiter's connection is down when the holder releases: the release is lost.
    resuming.shared.deaf.store(true, Ordering::SeqCst);
    let r = resuming.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        r.resume();
    });
    let started = tokio::time::Instant::now();
    let got = waiter
        .try_fetch::<Bytes, _, Infallible>("k", None, async { unreachable!() })
        .await
        .unwrap();
    assert_eq!(got.value, b("v"));
    let waited = started.elapsed();
    // Not the 10–30 s nap: the waiter looked as soon as the subscription resumed.
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(waiter.compute_stats().polls, 1);
    h.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_pubsub_waiters_poll_with_backoff_within_the_budget() {
    let clock = TokioClock::shared();
    let mem = MemTransport::with_clock(clock.clone());
    let t = NoPubSub(mem.clone());
    // Another process holds the lease and never finishes.
    mem.set(
        b"p:lock:k",
        &b("their-token"),
        SetOptions::ttl(Some(Duration::from_secs(600))),
    )
    .await
    .unwrap();
    let cache = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
    let c = ComputeCache::builder(cache.clone())
        .clock(clock_of(&clock))
        .lock(RedisLock::for_cache(&cache).clock(clock_of(&clock)))
        .max_polls(4)
        .poll_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .wait_policy(WaitPolicy::Error)
        .build()
        .unwrap();
    mem.reset_counters();
    let started = tokio::time::Instant::now();
    let err = c
        .get_with("k", None, async { unreachable!("policy is Error") })
        .await
        .unwrap_err();
    match err {
        ComputeError::LockWait { polls, .. } => assert_eq!(polls, 4),
        other => panic!("{other:?}"),
    }
    // GET + SET NX, then per poll GET + SET NX: the request budget is explicit.
    assert_eq!(mem.calls(), 2 + 4 * 2, "{:?}", mem.command_log());
    // Backoff doubles from 100 ms (±50 %): 4 pauses take between 0.75 s and 2.25 s.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(750) && waited <= Duration::from_millis(2250),
        "{waited:?}"
    );
    assert_eq!(c.compute_stats().lock_wait_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn wait_policy_compute_anyway_computes_past_the_bound() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    t.set(
        b"p:lock:k",
        &b("theirs"),
        SetOptions::ttl(Some(Duration::from_secs(600))),
    )
    .await
    .unwrap();
    let c = redis_compute(&t, &clock)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let got = c
        .try_fetch::<Bytes, _, Infallible>("k", None, async { Ok(b("mine")) })
        .await
        .unwrap();
    assert_eq!((got.value, got.status), (b("mine"), Status::Miss));
    assert_eq!(
        t.get(b"p:lock:k").await.unwrap(),
        Some(b("theirs")),
        "someone else's lock is never deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn dead_holders_lease_expires_then_a_waiter_computes() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    // A holder that died: its lease is not extended and expires in 1.5 s.
    t.set(
        b"p:lock:k",
        &b("dead"),
        SetOptions::ttl(Some(Duration::from_millis(1500))),
    )
    .await
    .unwrap();
    let c = redis_compute(&t, &clock).build().unwrap();
    let started = tokio::time::Instant::now();
    let got = c
        .try_fetch::<Bytes, _, Infallible>("k", None, async { Ok(b("v")) })
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(5000),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn long_compute_extends_its_lease() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let c = redis_compute(&t, &clock)
        .lease_ttl(Duration::from_secs(3))
        .build()
        .unwrap();
    let t2 = t.clone();
    let probe = tokio::spawn(async move {
        // Well past one lease TTL, the lock is still held.
        tokio::time::sleep(Duration::from_secs(10)).await;
        t2.pttl(b"p:lock:k").await.unwrap()
    });
    c.get_with("k", None, async {
        tokio::time::sleep(Duration::from_secs(12)).await;
        b("v")
    })
    .await
    .unwrap();
    let pttl = probe.await.unwrap();
    assert!(pttl > 0 && pttl <= 3000, "lock alive at 10 s: pttl {pttl}");
    assert_eq!(t.pttl(b"p:lock:k").await.unwrap(), -2, "released after");
    assert_eq!(c.compute_stats().lock_lost, 0);
}

#[test]
fn release_and_extend_only_act_on_our_token() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let lock = RedisLock::new(t.clone(), crate::KeyScheme::new("p").unwrap()).clock(clock);
        let ttl = Duration::from_secs(2);
        assert!(lock.try_acquire("k", "a", ttl).await.unwrap());
        t.clock().advance(Duration::from_secs(3)); // a's lease expired…
        assert!(lock.try_acquire("k", "b", ttl).await.unwrap()); // …and b took it
        assert!(!lock.extend("k", "a", ttl).await.unwrap());
        assert!(
            !lock.release("k", "a").await.unwrap(),
            "a must not delete b's lock"
        );
        assert_eq!(t.get(b"p:lock:k").await.unwrap(), Some(b("b")));
        let sub = t.subscribe(b"p:events:lock");
        assert!(lock.extend("k", "b", Duration::from_secs(9)).await.unwrap());
        assert_eq!(t.pttl(b"p:lock:k").await.unwrap(), 9_000);
        assert!(lock.release("k", "b").await.unwrap());
        assert_eq!(sub.try_recv(), Some(b("k")), "release publishes the key");
        let log = t.command_log();
        assert!(
            !log.iter().any(|c| c == "DEL"),
            "never a plain DEL: {log:?}"
        );
        assert!(log.iter().any(|c| c == "EVALSHA"), "{log:?}");
    });
}

#[tokio::test(start_paused = true)]
async fn promoted_waiter_inherits_the_dropped_leaders_lease() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let c = redis_compute(&t, &clock).build().unwrap();
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_with("k", None, async {
                std::future::pending::<()>().await;
                b("never")
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let token = t
        .get(b"p:lock:k")
        .await
        .unwrap()
        .expect("the leader holds the lease");
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.try_fetch::<Bytes, _, Infallible>("k", None, async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(b("w"))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        t.get(b"p:lock:k").await.unwrap(),
        Some(token),
        "the lease passed to the new leader, not released and re-taken"
    );
    let got = waiter.await.unwrap().unwrap();
    assert_eq!((got.value, got.status), (b("w"), Status::Miss));
    assert_eq!(c.compute_stats().lock_acquired, 1);
    assert_eq!(t.get(b"p:lock:k").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn abandoned_lease_is_released_in_the_background() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let c = redis_compute(&t, &clock).build().unwrap();
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_with("k", None, async {
                std::future::pending::<()>().await;
                b("never")
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(t.get(b"p:lock:k").await.unwrap().is_some());
    leader.abort();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        t.get(b"p:lock:k").await.unwrap(),
        None,
        "released, not left to expire"
    );
}

#[test]
fn redis_down_computes_anyway_without_errors() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let cache = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
        let c = ComputeCache::builder(cache.clone())
            .clock(clock.clone())
            .lock(RedisLock::for_cache(&cache).clock(clock))
            .build()
            .unwrap();
        t.set_down(true);
        let v = c.get_with("k", None, async { b("v") }).await.unwrap();
        assert_eq!(v, b("v"));
        let s = c.compute_stats();
        assert_eq!((s.computed, s.errors, s.cache_errors), (1, 0, 2), "{s:?}");
        assert_eq!(
            s.lock_acquired + s.lock_errors,
            0,
            "no lease attempt while down"
        );
    });
}

#[test]
fn corrupt_bytes_are_a_counted_miss_and_recomputed() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let cache = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
        let c = ComputeCache::builder(cache.clone())
            .clock(clock)
            .build()
            .unwrap();
        t.set(
            b"p:cache:k",
            &Bytes::from_static(b"{\"v\":1,\"resp"),
            SetOptions::default(),
        )
        .await
        .unwrap();
        let got = c
            .try_fetch::<Envelope, _, Infallible>("k", None, async {
                Ok(Envelope::new("fresh", "m", 0))
            })
            .await
            .unwrap();
        assert_eq!(
            (got.value.response.as_str(), got.status),
            ("fresh", Status::Miss)
        );
        assert_eq!(c.compute_stats().corrupt, 1);
        let s = cache.stats().await.unwrap();
        assert_eq!((s.corrupt, s.hits, s.misses), (1, 0, 1));
        let stored = t.get(b"p:cache:k").await.unwrap().unwrap();
        assert!(stored.starts_with(b"{\"v\":1,\"response\":\"fresh\""));
    });
}

#[test]
fn typed_values_round_trip_as_json() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Answer {
        text: String,
        tokens: u32,
    }
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let c = ComputeCache::builder(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
            .clock(clock)
            .build()
            .unwrap();
        let a = Answer {
            text: "hi".into(),
            tokens: 3,
        };
        let expected = a.clone();
        let got: Answer = c
            .try_get_with_json("k", None, async move { Ok::<_, Boom>(a) })
            .await
            .unwrap();
        assert_eq!(got, expected);
        assert_eq!(
            t.get(b"p:cache:k").await.unwrap(),
            Some(b(r#"{"text":"hi","tokens":3}"#))
        );
        let again: Answer = c
            .get_with_json("k", None, async { unreachable!() })
            .await
            .unwrap();
        assert_eq!(again, expected);
    });
}

fn envelope(text: &str) -> Envelope {
    Envelope::new(text, "m", 0)
}

#[test]
fn fail_safe_stamps_windows_and_stores_for_fresh_plus_stale() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let now = t.clock().now_ms();
        let c = ComputeCache::builder(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
            .clock(clock)
            .fail_safe(Duration::from_secs(600))
            .build()
            .unwrap();
        let got = c
            .fetch("k", Some(Duration::from_secs(60)), async {
                Ok::<_, Boom>(envelope("a"))
            })
            .await
            .unwrap();
        assert_eq!(got.value.fresh_until, Some(now + 60_000));
        assert_eq!(got.value.stale_until, Some(now + 660_000));
        assert_eq!(t.pttl(b"p:cache:k").await.unwrap(), 660_000);
    });
}

#[test]
fn stale_value_is_served_when_the_compute_fails_and_expires_after_its_window() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let c = ComputeCache::builder(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
            .clock(clock)
            .fail_safe(Duration::from_secs(600))
            .build()
            .unwrap();
        let ttl = Some(Duration::from_secs(60));
        c.fetch("k", ttl, async { Ok::<_, Boom>(envelope("old")) })
            .await
            .unwrap();
        t.clock().advance(Duration::from_secs(120));
        let got = c
            .fetch("k", ttl, async { Err::<Envelope, _>(Boom("down")) })
            .await
            .unwrap();
        assert_eq!(
            (got.value.response.as_str(), got.status),
            ("old", Status::Stale)
        );
        t.clock().advance(Duration::from_secs(600));
        let err = c
            .fetch("k", ttl, async { Err::<Envelope, _>(Boom("down")) })
            .await
            .unwrap_err();
        assert_eq!(
            err.compute_error(),
            Some(&Boom("down")),
            "no stale past the window"
        );
        let s = c.compute_stats();
        assert_eq!((s.stale, s.compute_errors), (1, 2));
    });
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_serves_stale_and_the_refresh_finishes_in_the_background() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let c = redis_compute(&t, &clock)
        .fail_safe(Duration::from_secs(600))
        .soft_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let ttl = Some(Duration::from_secs(60));
    c.fetch("k", ttl, async { Ok::<_, Boom>(envelope("old")) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let started = tokio::time::Instant::now();
    let got = c
        .fetch("k", ttl, async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Boom>(envelope("new"))
        })
        .await
        .unwrap();
    assert_eq!(
        (got.value.response.as_str(), got.status),
        ("old", Status::Stale)
    );
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    // A caller arriving during the refresh gets the stale value at once, computing nothing.
    let during = c
        .fetch("k", ttl, async { Ok::<_, Boom>(envelope("duplicate")) })
        .await
        .unwrap();
    assert_eq!(during.status, Status::Stale);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c
        .fetch("k", ttl, async { Ok::<_, Boom>(envelope("unused")) })
        .await
        .unwrap();
    assert_eq!(
        (after.value.response.as_str(), after.status),
        ("new", Status::Hit)
    );
    assert_eq!(
        t.get(b"p:lock:k").await.unwrap(),
        None,
        "the background refresh released"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_is_served_at_once_while_another_process_refreshes() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let a = redis_compute(&t, &clock)
        .fail_safe(Duration::from_secs(600))
        .build()
        .unwrap();
    let other = redis_compute(&t, &clock)
        .fail_safe(Duration::from_secs(600))
        .build()
        .unwrap();
    let ttl = Some(Duration::from_secs(60));
    a.fetch("k", ttl, async { Ok::<_, Boom>(envelope("old")) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let refreshing = tokio::spawn(async move {
        other
            .fetch("k", ttl, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Boom>(envelope("new"))
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    let got = a
        .fetch("k", ttl, async { Ok::<_, Boom>(envelope("dup")) })
        .await
        .unwrap();
    assert_eq!(
        (got.value.response.as_str(), got.status),
        ("old", Status::Stale)
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(refreshing.await.unwrap().unwrap().status, Status::Miss);
}

#[tokio::test(start_paused = true)]
async fn hard_timeout_with_a_runtime_lets_the_compute_finish_and_store() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let c = redis_compute(&t, &clock)
        .hard_timeout(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let err = c
        .fetch("k", None, async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, Boom>(b("late"))
        })
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.get(b"p:cache:k").await.unwrap(), Some(b("late")));
    assert_eq!(t.get(b"p:lock:k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_threads_one_compute_and_no_partial_values() {
    // Real threads and the real clock: 8 instances (as if processes) × 25 tasks.
    #[derive(Debug)]
    struct Wall;
    #[async_trait::async_trait]
    impl crate::Clock for Wall {
        fn now_ms(&self) -> u64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        }
        async fn sleep(&self, d: Duration) {
            tokio::time::sleep(d).await;
        }
    }
    let clock: SharedClock = Arc::new(Wall);
    let t = MemTransport::with_clock(clock.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let cache = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
        let c = ComputeCache::builder(cache.clone())
            .clock(clock.clone())
            .lock(RedisLock::for_cache(&cache).clock(clock.clone()))
            .runtime(runtime())
            .build()
            .unwrap();
        for _ in 0..25 {
            let c = c.clone();
            let runs = runs.clone();
            let big = big.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i)).await;
                c.get_with("k", None, async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    big
                })
                .await
                .unwrap()
            }));
        }
    }
    for task in tasks {
        assert_eq!(
            task.await.unwrap(),
            big,
            "every caller sees the whole value"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn tiered_with_a_breaker_keeps_answering_while_redis_is_down() {
    use crate::breaker::{BreakerState, CircuitBreakerLayer};
    use crate::tiered::{Backplane, TieredCache};
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let guarded = CircuitBreakerLayer::new()
        .clock(clock_of(&clock))
        .failure_threshold(2)
        .cooldown(Duration::from_millis(500))
        .layer(t.clone());
    let l2 = RedisCache::builder(guarded.clone())
        .prefix("p")
        .build()
        .unwrap();
    let tiered = TieredCache::builder(
        MemoryCache::builder()
            .clock(clock_of(&clock))
            .max_entries(100)
            .build()
            .unwrap(),
        l2.clone(),
    )
    .backplane(Backplane::new(guarded.clone(), l2.key_scheme()).clock(clock_of(&clock)))
    .runtime(runtime())
    .build()
    .unwrap();
    let c = ComputeCache::builder(tiered.clone())
        .clock(clock_of(&clock))
        .lock(RedisLock::for_cache(&l2).clock(clock_of(&clock)))
        .runtime(runtime())
        .build()
        .unwrap();
    let ttl = Some(Duration::from_secs(3600));
    assert_eq!(
        c.get_with("warm", ttl, async { b("w") }).await.unwrap(),
        b("w")
    );

    t.set_down(true);
    t.reset_counters();
    for i in 0..20 {
        // Cached keys come from L1; new keys are computed; nothing fails.
        assert_eq!(
            c.get_with("warm", ttl, async { unreachable!() })
                .await
                .unwrap(),
            b("w")
        );
        let key = format!("new{i}");
        let v = c.get_with(&key, ttl, async { b("n") }).await.unwrap();
        assert_eq!(v, b("n"));
    }
    assert_eq!(guarded.state(), BreakerState::Open);
    assert!(
        t.calls() <= 3,
        "the breaker keeps calls off Redis: {}",
        t.calls()
    );
    assert_eq!(c.compute_stats().errors, 0);

    t.set_down(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.get_with("after", ttl, async { b("a") }).await.unwrap();
    assert_eq!(guarded.state(), BreakerState::Closed);
    assert_eq!(
        t.get(b"p:cache:after").await.unwrap(),
        Some(b("a")),
        "back on Redis"
    );
}

#[tokio::test(start_paused = true)]
async fn the_release_subscription_ends_when_nobody_waits() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let holder = redis_compute(&t, &clock).build().unwrap();
    let waiter = redis_compute(&t, &clock).build().unwrap();
    let h = tokio::spawn(async move {
        holder
            .get_with("k", None, async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                b("v")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    waiter
        .get_with("k", None, async { unreachable!() })
        .await
        .unwrap();
    h.await.unwrap().unwrap();
    let receivers = t
        .exec(Cmd::new("PUBLISH").arg("p:events:lock").arg("x"))
        .await
        .unwrap();
    assert_eq!(
        receivers,
        Value::Int(0),
        "unsubscribed once the wait was over"
    );
}

/// A lease whose first `try_acquire` lets "another process" store the value and release
/// just before it succeeds: the race between our cache read and our `SET NX`.
#[derive(Debug)]
struct RacingLock {
    inner: RedisLock<MemTransport>,
    cache: RedisCache<MemTransport>,
    raced: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl LockBackend for RacingLock {
    async fn try_acquire(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        if !self.raced.swap(true, Ordering::SeqCst) {
            self.cache
                .set(key, b("from the other process"), None)
                .await?;
        }
        self.inner.try_acquire(key, token, ttl).await
    }
    async fn extend(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        self.inner.extend(key, token, ttl).await
    }
    async fn release(&self, key: &str, token: &str) -> Result<bool> {
        self.inner.release(key, token).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_value_stored_between_our_read_and_our_lease_is_served_not_recomputed() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let cache = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
    let lock = RacingLock {
        inner: RedisLock::for_cache(&cache).clock(clock_of(&clock)),
        cache: cache.clone(),
        raced: Default::default(),
    };
    let c = ComputeCache::builder(cache.clone())
        .clock(clock_of(&clock))
        .lock(lock)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let v = c
        .get_with("k", None, async move {
            r.fetch_add(1, Ordering::SeqCst);
            b("computed again")
        })
        .await
        .unwrap();
    assert_eq!(v, b("from the other process"));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing computed");
    assert!(
        !t.keys().contains(&b("p:lock:k")),
        "the lease was given back"
    );
}

/// Subscribing takes 300 ms (a thousand waiters subscribing over HTTP at once). Counts
/// attempts.
#[derive(Debug, Clone)]
struct SlowSubscribe {
    t: MemTransport,
    attempts: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Transport for SlowSubscribe {
    async fn exec(&self, cmd: Cmd) -> Result<Value, crate::TransportError> {
        self.t.exec(cmd).await
    }
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, crate::TransportError> {
        self.t.pipeline(cmds).await
    }
    fn supports_pubsub(&self) -> bool {
        true
    }
    async fn subscribe(
        &self,
        channel: &[u8],
    ) -> Result<crate::transport::BoxSubscription, crate::TransportError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Transport::subscribe(&self.t, channel).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscription_never_delays_a_look_and_outlives_the_nap_that_started_it() {
    let clock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let slow = SlowSubscribe {
        t: t.clone(),
        attempts: Arc::default(),
    };
    let cache = RedisCache::builder(slow.clone())
        .prefix("p")
        .build()
        .unwrap();
    let lock = RedisLock::for_cache(&cache).clock(clock_of(&clock));
    lock.try_acquire("p:lock:k", "theirs", Duration::from_secs(60))
        .await
        .unwrap();
    let mut waiter = lock.listen("p:lock:k");
    let started = tokio::time::Instant::now();
    // The nap ends before the subscription is in place: the waiter looks on time.
    waiter.wait(&*clock, Duration::from_millis(200)).await;
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    // The next nap carries on with the same attempt (not a new one), which is in place at
    // 300 ms and hears the release at 350 ms, long before the nap's end.
    let l2 = lock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        l2.release("p:lock:k", "theirs").await.unwrap();
    });
    waiter.wait(&*clock, Duration::from_secs(30)).await;
    assert_eq!(started.elapsed(), Duration::from_millis(350));
    assert_eq!(slow.attempts.load(Ordering::SeqCst), 1);
}
