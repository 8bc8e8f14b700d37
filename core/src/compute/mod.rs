//! Stampede protection and fail-safe serving: [`ComputeCache`] and its `get_with`
//! family.
//!
//! When a value is missing, exactly one caller computes it — per process through an
//! in-process single-flight, and across the deployment through a lease in Redis
//! ([`RedisLock`]) — while everyone else waits for that result instead of stampeding the
//! model provider. With fail-safe on, a value past its fresh time is kept for a stale window
//! and served (status [`Status::Stale`]) when recomputing fails, is slow, or is already
//! under way elsewhere.
//!
//! # The pieces
//!
//! | what | where |
//! | --- | --- |
//! | one compute per key per process, surviving a dropped leader | [`ComputeCache`] |
//! | one compute per key per deployment | [`ComputeCacheBuilder::lock`] with [`RedisLock`] |
//! | what a waiter does past the wait bound | [`WaitPolicy`] |
//! | stale windows, soft and hard timeouts, background refresh | [`ComputeCacheBuilder::fail_safe`], [`ComputeCache::fetch`] |
//! | what is stored | [`CacheValue`]: raw bytes, [`Json`], [`Envelope`](crate::Envelope) |

mod error;
mod flight;
mod lock;
mod util;
mod value;

#[cfg(test)]
pub(crate) mod tests;

use std::any::TypeId;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{Cache, CacheStats, KeyTtl, check_ttl};
use crate::clock::{SharedClock, duration_ms};
use crate::error::{Error, Result};
use crate::runtime::{BoxFuture, SharedRuntime};
use crate::transport::{MaybeSend, MaybeSync};

pub use error::ComputeError;
pub use lock::{Listener, LockBackend, RedisLock};
pub use value::{CacheValue, Json};

#[cfg(any(test, feature = "test-util"))]
pub(crate) use lock::emulate_scripts;
pub(crate) use lock::event_channel;
pub(crate) use util::{Pacer, Pacing, random_token, until};

pub(crate) use flight::{Flights, Join, Waited};
pub(crate) use lock::{HeldLease, with_keep_alive};

use flight::{AnyArc, Leader};
use value::{Freshness, freshness};

/// How a value was obtained: the one status of every get-or-compute in larder
/// ([`ComputeCache`], the response cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Status {
    /// Found fresh in the cache.
    Hit,
    /// Computed by this call (nothing usable was cached, or the call skipped the read).
    Miss,
    /// Computed by another caller — in this process or, through the lease, in another —
    /// while this call waited.
    Coalesced,
    /// A stale value (past its fresh time, inside its stale window), served because
    /// recomputing failed, exceeded the soft timeout, or was under way elsewhere.
    Stale,
}

impl Status {
    /// `HIT`, `MISS`, `COALESCED` or `STALE`: stable, for headers (`x-cache`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Coalesced => "COALESCED",
            Status::Stale => "STALE",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value and how it was obtained: what every get-or-compute in larder returns
/// ([`ComputeCache`], and the response cache as `Fetched<LlmResponse>`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Fetched<V> {
    /// The value.
    pub value: V,
    /// How it was obtained.
    pub status: Status,
    /// When the served entry was written (unix ms), for values read from the cache that
    /// record it (an [`Envelope`](crate::Envelope), a response); `None` for one computed by
    /// this call. For an `Age` header.
    pub stored_at_ms: Option<u64>,
}

impl<V> Fetched<V> {
    /// A value and its status, with no write time.
    pub(crate) fn new(value: V, status: Status) -> Self {
        Fetched {
            value,
            status,
            stored_at_ms: None,
        }
    }

    /// A value read from the cache, with its write time if it records one.
    fn cached(value: V, status: Status) -> Self
    where
        V: CacheValue,
    {
        let stored_at_ms = value.stored_at_ms();
        Fetched {
            value,
            status,
            stored_at_ms,
        }
    }

    /// True for [`Status::Hit`].
    pub fn is_hit(&self) -> bool {
        self.status == Status::Hit
    }

    /// The same value seen by a caller that waited for it.
    fn coalesced(self) -> Self {
        match self.status {
            Status::Miss => Fetched {
                status: Status::Coalesced,
                ..self
            },
            _ => self,
        }
    }
}

/// What a waiter does when another process holds the lease past the wait bound
/// ([`ComputeCacheBuilder::max_wait`] or [`ComputeCacheBuilder::max_polls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitPolicy {
    /// Compute anyway, without the lease (availability first; the default).
    #[default]
    Compute,
    /// Return [`ComputeError::LockWait`].
    Error,
    /// Serve a stale value if there is one, else compute anyway.
    ServeStale,
}

/// Counters of a [`ComputeCache`] since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ComputeStats {
    /// Calls answered by a fresh cached value.
    pub hits: u64,
    /// Calls that computed the value themselves.
    pub computed: u64,
    /// Calls that received a value another caller computed.
    pub coalesced: u64,
    /// Calls answered by a stale value.
    pub stale: u64,
    /// Calls that returned an error (including timeouts).
    pub errors: u64,
    /// Calls that returned [`ComputeError::Timeout`].
    pub timeouts: u64,
    /// Computations that failed.
    pub compute_errors: u64,
    /// Cache reads and writes that failed and were absorbed (the call went on without the
    /// cache).
    pub cache_errors: u64,
    /// Stored values that could not be decoded, or keys of the wrong type (`WRONGTYPE`),
    /// treated as misses and recomputed.
    pub corrupt: u64,
    /// Leases taken.
    pub lock_acquired: u64,
    /// Calls that found the lease held by another process and waited.
    pub lock_waits: u64,
    /// Waits that reached the wait bound.
    pub lock_wait_timeouts: u64,
    /// Lease operations that failed (the call went on without the lease).
    pub lock_errors: u64,
    /// Leases found lost while computing (expired, maybe taken by another holder).
    pub lock_lost: u64,
    /// Polls made while waiting for a lease (each costs up to two requests).
    pub polls: u64,
    /// Keys being computed in this process right now.
    pub in_flight: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    computed: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    compute_errors: AtomicU64,
    cache_errors: AtomicU64,
    corrupt: AtomicU64,
    lock_acquired: AtomicU64,
    lock_waits: AtomicU64,
    lock_wait_timeouts: AtomicU64,
    lock_errors: AtomicU64,
    lock_lost: AtomicU64,
    polls: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Defaults of [`ComputeCacheBuilder`].
// The lease defaults of every get-or-compute (this engine and the response cache's).
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_POLLS: u32 = 20;
pub(crate) const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub(crate) const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const DEFAULT_HARD_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Settings {
    default_ttl: Option<Duration>,
    stale_for: Option<Duration>,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    lease_ttl: Duration,
    max_wait: Duration,
    max_polls: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    wait_policy: WaitPolicy,
}

type Lease = Arc<HeldLease>;
type Outcome<V, E> = std::result::Result<Fetched<V>, ComputeError<E>>;

struct Inner<C> {
    cache: C,
    clock: SharedClock,
    lock: Option<Arc<dyn LockBackend>>,
    runtime: Option<SharedRuntime>,
    flights: Arc<Flights<Lease>>,
    settings: Settings,
    counters: Counters,
}

/// A [`Cache`] that computes missing values once: `get_with` with in-process
/// single-flight, an optional distributed lease, and fail-safe stale serving.
///
/// It wraps any cache (memory, Redis, tiered) and is itself a [`Cache`] (every trait method
/// is passed through). Cloning is cheap and clones share everything, including the
/// in-flight computations.
///
/// # Concurrent calls on the same key
///
/// Concurrent `get_with` calls for one missing key in one process are coalesced: one
/// caller (the leader) reads the cache, takes the lease and runs its `init` future; the
/// others wait and receive a clone of its outcome, value or error ([`Status::Coalesced`]).
/// Their own `init` futures are dropped without being polled. Calls that expect different
/// value or error types for the same key are not coalesced with each other.
///
/// With a [lock](ComputeCacheBuilder::lock), the leader takes a lease in Redis
/// (`SET {prefix}:lock:{key} <random token> NX PX <lease_ttl>`) before computing. A leader
/// that finds the lease held waits — polling with jittered exponential backoff, and woken
/// early by the release on pub/sub where the transport has it — until the value appears, the
/// lease is released (it then takes it), or the wait bound passes ([`WaitPolicy`]). Pub/sub
/// is at-most-once: a release published while the subscription is down is lost, which costs
/// the waiter the rest of its nap, never the value (when the transport reports the gap,
/// [`Subscription::gaps`](crate::transport::Subscription::gaps), waiters look at once). While computing,
/// the holder extends its lease every `lease_ttl / 3`; a holder that dies releases nothing and
/// its lease expires after `lease_ttl`.
///
/// # Cancellation
///
/// Dropping the leader's future (a timeout, a client that went away) does not strand the
/// waiters: a waiter takes over — with its own `init` future, and with the lease the leader
/// held — and computes. Dropping a waiter's future affects nobody else.
///
/// # Errors
///
/// The leader's error reaches every waiter ([`ComputeError::Compute`], shared behind an
/// `Arc`); nothing is cached, so the next call computes again — there is no poisoned entry.
/// Cache and lease failures (Redis down, circuit breaker open) never fail a call: the value
/// is computed and returned, and the failure is counted in [`ComputeStats`].
///
/// # Panics
///
/// A panic in `init` unwinds through the leader's call; as with a dropped leader, a waiter
/// takes over.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_core::compute::{ComputeCache, RedisLock};
/// use larder_core::{Bytes, RedisCache, testing::MemTransport};
///
/// let redis = MemTransport::new();
/// let clock = Arc::new(redis.clock());
/// let cache = RedisCache::builder(redis.clone()).prefix("app").build().unwrap();
/// let cache = ComputeCache::builder(cache.clone()).clock(clock.clone())
///     .lock(RedisLock::for_cache(&cache).clock(clock))
///     .build()?;
///
/// let answer = cache
///     .get_with("q1", Some(Duration::from_secs(3600)), async { Bytes::from("42") })
///     .await?;
/// assert_eq!(answer, "42");
/// // Cached now: this `init` never runs.
/// let again = cache.get_with("q1", None, async { unreachable!() }).await?;
/// assert_eq!(again, "42");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct ComputeCache<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for ComputeCache<C> {
    fn clone(&self) -> Self {
        ComputeCache {
            inner: self.inner.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for ComputeCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComputeCache")
            .field("cache", &self.inner.cache)
            .field("lock", &self.inner.lock)
            .field("runtime", &self.inner.runtime.is_some())
            .field("settings", &self.inner.settings)
            .field("in_flight", &self.inner.flights.len())
            .finish()
    }
}

/// Configures a [`ComputeCache`]; start with [`ComputeCache::builder`].
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct ComputeCacheBuilder<C> {
    cache: C,
    clock: Option<SharedClock>,
    lock: Option<Arc<dyn LockBackend>>,
    runtime: Option<SharedRuntime>,
    settings: Settings,
}

impl<C: fmt::Debug> fmt::Debug for ComputeCacheBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComputeCacheBuilder")
            .field("cache", &self.cache)
            .field("lock", &self.lock)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<C: Cache + 'static> ComputeCacheBuilder<C> {
    /// Takes a lease in Redis (or elsewhere) around each computation, so that it runs once
    /// across processes. Without one, coalescing is per process only.
    pub fn lock(mut self, lock: impl LockBackend + 'static) -> Self {
        self.lock = Some(Arc::new(lock));
        self
    }

    /// Where background work runs: a refresh that continues after a stale value or a
    /// timeout was returned ([`ComputeCache::fetch`]), and the release of a lease whose
    /// holder was dropped. Without one, such work is cancelled and such leases expire.
    pub fn runtime(mut self, runtime: SharedRuntime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The fresh TTL of computed values when a call passes `ttl: None`. Without this call:
    /// the cache's own default TTL, and no fail-safe windows. A zero TTL is an error at
    /// [`build`](ComputeCacheBuilder::build).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.settings.default_ttl = Some(ttl);
        self
    }

    /// The clock deadlines, fail-safe windows and poll pauses are measured with. Default:
    /// the wrapped cache's clock ([`Cache::clock`]), else [`SystemClock`](crate::SystemClock).
    pub fn clock(mut self, clock: impl crate::Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Fail-safe: values that carry windows ([`Envelope`](crate::Envelope)) are kept
    /// `stale_for` past their fresh TTL and served stale when recomputing fails, exceeds the
    /// [soft timeout](ComputeCacheBuilder::soft_timeout), or is under way in another
    /// process. `Duration::ZERO` turns it off (the default).
    pub fn fail_safe(mut self, stale_for: Duration) -> Self {
        self.settings.stale_for = Some(stale_for).filter(|d| !d.is_zero());
        self
    }

    /// With a stale value at hand, how long a computation may run before the stale value is
    /// served instead; the computation goes on in the background ([`ComputeCache::fetch`]
    /// with a runtime). Default `None`: wait for it (up to the hard timeout).
    pub fn soft_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.soft_timeout = timeout;
        self
    }

    /// The most a call may take, waiting and computing included (default 60 s; `None`: no
    /// bound). Past it the call returns a stale value if it has one, else
    /// [`ComputeError::Timeout`].
    pub fn hard_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.hard_timeout = timeout;
        self
    }

    /// The lease's expiry (default 10 s): how long a dead holder blocks others. A live
    /// holder extends it every third of it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lease_ttl = ttl.max(Duration::from_millis(3));
        self
    }

    /// How long to wait for another process's lease before the [`WaitPolicy`] applies
    /// (default 30 s).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.max_wait = wait;
        self
    }

    /// How many polls (cache read + lease attempt, up to two requests each) one wait may make
    /// (default 20). Over HTTP every poll is a subrequest: keep it within your platform's
    /// budget (50 per request on the Workers free plan).
    pub fn max_polls(mut self, polls: u32) -> Self {
        self.settings.max_polls = polls;
        self
    }

    /// The first and the longest pause between polls (default 20 ms doubling up to 1 s,
    /// each pause cut by up to half at random).
    pub fn poll_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.backoff_min = min.max(Duration::from_millis(1));
        self.settings.backoff_max = max.max(self.settings.backoff_min);
        self
    }

    /// What to do when the wait bound passes (default [`WaitPolicy::Compute`]).
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.settings.wait_policy = policy;
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero default TTL.
    pub fn build(self) -> Result<ComputeCache<C>> {
        check_ttl(self.settings.default_ttl)?;
        let clock = self
            .clock
            .or_else(|| self.cache.clock())
            .unwrap_or_else(crate::clock::system);
        Ok(ComputeCache {
            inner: Arc::new(Inner {
                cache: self.cache,
                clock,
                lock: self.lock,
                runtime: self.runtime,
                flights: Arc::new(Flights::default()),
                settings: self.settings,
                counters: Counters::default(),
            }),
        })
    }
}

/// What a cache read found.
enum Read<V> {
    Fresh(V),
    Stale(V),
    /// Nothing at the key.
    Absent,
    /// Something unusable at the key (undecodable, of another type, past its stale window).
    Miss,
    Failed(Error),
}

/// What the lease phase decided.
enum Step<V, E> {
    Acquired(HeldLease),
    Found(V),
    ServeStale,
    Proceed,
    Fail(ComputeError<E>),
    TimedOut,
}

fn min_deadline(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<C: Cache + 'static> ComputeCache<C> {
    /// Starts configuring a compute cache over `cache`: in-process coalescing only, no
    /// fail-safe, a hard timeout of 60 s, the cache's clock.
    pub fn builder(cache: C) -> ComputeCacheBuilder<C> {
        ComputeCacheBuilder {
            cache,
            clock: None,
            lock: None,
            runtime: None,
            settings: Settings {
                default_ttl: None,
                stale_for: None,
                soft_timeout: None,
                hard_timeout: Some(DEFAULT_HARD_TIMEOUT),
                lease_ttl: DEFAULT_LEASE_TTL,
                max_wait: DEFAULT_MAX_WAIT,
                max_polls: DEFAULT_MAX_POLLS,
                backoff_min: DEFAULT_BACKOFF_MIN,
                backoff_max: DEFAULT_BACKOFF_MAX,
                wait_policy: WaitPolicy::Compute,
            },
        }
    }

    /// The wrapped cache.
    pub fn cache(&self) -> &C {
        &self.inner.cache
    }

    /// The clock this cache reads.
    pub(crate) fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// Counters since this cache was built.
    pub fn compute_stats(&self) -> ComputeStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ComputeStats {
            hits: l(&c.hits),
            computed: l(&c.computed),
            coalesced: l(&c.coalesced),
            stale: l(&c.stale),
            errors: l(&c.errors),
            timeouts: l(&c.timeouts),
            compute_errors: l(&c.compute_errors),
            cache_errors: l(&c.cache_errors),
            corrupt: l(&c.corrupt),
            lock_acquired: l(&c.lock_acquired),
            lock_waits: l(&c.lock_waits),
            lock_wait_timeouts: l(&c.lock_wait_timeouts),
            lock_errors: l(&c.lock_errors),
            lock_lost: l(&c.lock_lost),
            polls: l(&c.polls),
            in_flight: self.inner.flights.len() as u64,
        }
    }

    /// Returns the value of `key`, computing it with `init` (once, however many callers ask
    /// concurrently) when it is missing, and storing it for `ttl` (`None`: the default TTL).
    ///
    /// See [Concurrent calls on the same key](ComputeCache#concurrent-calls-on-the-same-key),
    /// [Cancellation](ComputeCache#cancellation) and [Errors](ComputeCache#errors).
    ///
    /// # Errors
    ///
    /// [`ComputeError::Timeout`] past the hard timeout, [`ComputeError::LockWait`] under
    /// [`WaitPolicy::Error`], [`ComputeError::Cache`] for a closed cache or a zero TTL.
    pub async fn get_with<F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> std::result::Result<Bytes, ComputeError>
    where
        F: Future<Output = Bytes> + MaybeSend,
    {
        self.try_fetch::<Bytes, _, Infallible>(key, ttl, async move { Ok(init.await) })
            .await
            .map(|f| f.value)
    }

    /// Like [`get_with`](ComputeCache::get_with) with a fallible `init`: its
    /// error is returned to this caller and every caller coalesced onto it, and nothing is
    /// cached.
    ///
    /// # Errors
    ///
    /// [`ComputeError::Compute`] with `init`'s error, and those of
    /// [`get_with`](ComputeCache::get_with).
    pub async fn try_get_with<F, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> std::result::Result<Bytes, ComputeError<E>>
    where
        F: Future<Output = std::result::Result<Bytes, E>> + MaybeSend,
        E: MaybeSend + MaybeSync + 'static,
    {
        self.try_fetch::<Bytes, _, E>(key, ttl, init)
            .await
            .map(|f| f.value)
    }

    /// [`get_with`](ComputeCache::get_with) for a serde type, stored as JSON. A
    /// stored value that does not deserialize as `T` is treated as a miss and recomputed.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use std::sync::Arc;
    /// use larder_core::compute::ComputeCache;
    /// use larder_core::{ManualClock, MemoryCache};
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let cache = ComputeCache::builder(MemoryCache::builder().clock(clock.clone()).max_entries(100).build().unwrap()).build().unwrap();
    /// let n: Vec<u32> = cache.get_with_json("primes", None, async { vec![2, 3, 5] }).await?;
    /// assert_eq!(n, [2, 3, 5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get_with`](ComputeCache::get_with).
    pub async fn get_with_json<T, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> std::result::Result<T, ComputeError>
    where
        T: Serialize + DeserializeOwned + Clone + MaybeSend + MaybeSync + 'static,
        F: Future<Output = T> + MaybeSend,
    {
        self.try_fetch::<Json<T>, _, Infallible>(key, ttl, async move { Ok(Json(init.await)) })
            .await
            .map(|f| f.value.0)
    }

    /// [`get_with_json`](ComputeCache::get_with_json) with a fallible `init`.
    ///
    /// # Errors
    ///
    /// As [`try_get_with`](ComputeCache::try_get_with).
    pub async fn try_get_with_json<T, F, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> std::result::Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + MaybeSend + MaybeSync + 'static,
        F: Future<Output = std::result::Result<T, E>> + MaybeSend,
        E: MaybeSend + MaybeSync + 'static,
    {
        self.try_fetch::<Json<T>, _, E>(key, ttl, async move { init.await.map(Json) })
            .await
            .map(|f| f.value.0)
    }

    /// The general form: any [`CacheValue`] (for example an [`Envelope`](crate::Envelope),
    /// which carries fail-safe windows), returning how the value was obtained.
    ///
    /// `init` may borrow from the caller, so it cannot outlive this call: when the soft or
    /// hard timeout passes it is cancelled (use [`fetch`](ComputeCache::fetch) to let it
    /// finish in the background).
    ///
    /// # Errors
    ///
    /// As [`try_get_with`](ComputeCache::try_get_with).
    pub async fn try_fetch<V, F, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> Outcome<V, E>
    where
        V: CacheValue,
        F: Future<Output = std::result::Result<V, E>> + MaybeSend,
        E: MaybeSend + MaybeSync + 'static,
    {
        let (outcome, rest) = self.run(key, ttl, init).await;
        drop(rest);
        outcome
    }

    /// Fail-safe `get_with`: like
    /// [`try_fetch`](ComputeCache::try_fetch), but a
    /// computation that outlives the call — the soft timeout served a stale value, or the hard
    /// timeout passed — goes on in the background on the configured
    /// [runtime](ComputeCacheBuilder::runtime), keeps its lease alive, stores its value and
    /// releases the lease. (Without a runtime it is cancelled.) `init` must therefore own
    /// what it uses (`'static`).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use larder_core::compute::{ComputeCache, Status};
    /// use larder_core::{Envelope, ManualClock, MemoryCache};
    ///
    /// let clock = ManualClock::new(1_000_000);
    /// let shared = Arc::new(clock.clone());
    /// let cache = ComputeCache::builder(MemoryCache::builder().clock(shared.clone()).max_entries(100).build().unwrap())
    ///     .fail_safe(Duration::from_secs(3600))
    ///     .build()?;
    /// let ttl = Some(Duration::from_secs(60));
    /// let first = cache
    ///     .fetch("q", ttl, async { Ok::<_, std::io::Error>(Envelope::new("Paris.", "m", 0)) })
    ///     .await?;
    /// assert_eq!(first.status, Status::Miss);
    ///
    /// clock.advance(Duration::from_secs(61)); // past fresh, inside the stale window
    /// let second = cache
    ///     .fetch("q", ttl, async { Err::<Envelope, _>(std::io::Error::other("provider down")) })
    ///     .await?;
    /// assert_eq!((second.status, second.value.response.as_str()), (Status::Stale, "Paris."));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_get_with`](ComputeCache::try_get_with).
    pub async fn fetch<V, F, E>(&self, key: &str, ttl: Option<Duration>, init: F) -> Outcome<V, E>
    where
        V: CacheValue,
        F: Future<Output = std::result::Result<V, E>> + MaybeSend + 'static,
        E: MaybeSend + MaybeSync + 'static,
    {
        let (outcome, rest) = self.run(key, ttl, init).await;
        if let Some(rest) = rest {
            match &self.inner.runtime {
                Some(rt) => rt.spawn(rest),
                None => drop(rest),
            }
        }
        outcome
    }

    /// Joins or leads the key's flight. Returns this caller's outcome and, when a deadline
    /// passed mid-computation, the rest of the computation (to spawn or to drop).
    async fn run<'f, V, F, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> (Outcome<V, E>, Option<BoxFuture<'f, ()>>)
    where
        V: CacheValue,
        F: Future<Output = std::result::Result<V, E>> + MaybeSend + 'f,
        E: MaybeSend + MaybeSync + 'static,
    {
        let inner = &*self.inner;
        if let Err(e) = check_ttl(ttl) {
            bump(&inner.counters.errors);
            return (Err(ComputeError::Cache(e)), None);
        }
        let start = inner.clock.now_ms();
        let hard = inner
            .settings
            .hard_timeout
            .map(|h| start.saturating_add(duration_ms(h)));
        let mut joined = inner.flights.join(key, TypeId::of::<(V, E)>());
        loop {
            match joined {
                Join::Leader(leader) => {
                    let (outcome, rest) = self.lead(key, ttl, init, leader, hard).await;
                    self.count(&outcome);
                    return (outcome, rest);
                }
                Join::Waiter(waiter) => match until(&*inner.clock, hard, waiter).await {
                    None => {
                        let outcome = Err(self.timeout());
                        self.count(&outcome);
                        return (outcome, None);
                    }
                    Some(Waited::Outcome(shared)) => {
                        let outcome = shared
                            .downcast_ref::<Outcome<V, E>>()
                            .expect("flights are keyed by outcome type")
                            .clone()
                            .map(Fetched::coalesced);
                        self.count(&outcome);
                        return (outcome, None);
                    }
                    Some(Waited::Promoted(leader)) => joined = Join::Leader(leader),
                },
            }
        }
    }

    fn timeout<E>(&self) -> ComputeError<E> {
        ComputeError::Timeout {
            after: self.inner.settings.hard_timeout.unwrap_or_default(),
        }
    }

    fn count<V, E>(&self, outcome: &Outcome<V, E>) {
        let c = &self.inner.counters;
        match outcome {
            Ok(f) => bump(match f.status {
                Status::Hit => &c.hits,
                Status::Miss => &c.computed,
                Status::Coalesced => &c.coalesced,
                Status::Stale => &c.stale,
            }),
            Err(e) => {
                bump(&c.errors);
                if e.is_timeout() {
                    bump(&c.timeouts);
                }
            }
        }
    }

    /// Finishes the flight with `outcome` (releasing a lease the leader holds).
    async fn settle<'f, V, E>(
        &self,
        leader: Leader<Lease>,
        outcome: Outcome<V, E>,
    ) -> (Outcome<V, E>, Option<BoxFuture<'f, ()>>)
    where
        V: CacheValue,
        E: MaybeSend + MaybeSync + 'static,
    {
        if let Some(lease) = leader.handoff()
            && lease.release().await.is_err()
        {
            bump(&self.inner.counters.lock_errors);
        }
        leader.complete(Arc::new(outcome.clone()) as AnyArc);
        (outcome, None)
    }

    /// The leader's work: read, lease, compute, store.
    async fn lead<'f, V, F, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
        mut leader: Leader<Lease>,
        hard: Option<u64>,
    ) -> (Outcome<V, E>, Option<BoxFuture<'f, ()>>)
    where
        V: CacheValue,
        F: Future<Output = std::result::Result<V, E>> + MaybeSend + 'f,
        E: MaybeSend + MaybeSync + 'static,
    {
        let inner = &*self.inner;
        let clock = &*inner.clock;

        // 1. The cache. (A timeout drops the leader: a waiter takes over, with the lease.)
        let Some(read) = until(clock, hard, self.read::<V>(key)).await else {
            return (Err(self.timeout()), None);
        };
        let mut stale = None;
        let mut cache_up = true;
        let absent = matches!(read, Read::Absent);
        match read {
            Read::Fresh(v) => {
                return self
                    .settle(leader, Ok(Fetched::cached(v, Status::Hit)))
                    .await;
            }
            Read::Stale(v) => stale = Some(v),
            Read::Absent | Read::Miss => {}
            Read::Failed(Error::Closed) => {
                return self
                    .settle(leader, Err(ComputeError::Cache(Error::Closed)))
                    .await;
            }
            Read::Failed(_) => cache_up = false,
        }

        // 2. The lease (unless a dropped predecessor handed us its own, or Redis is down).
        if let (Some(lock), None, true) = (&inner.lock, leader.handoff(), cache_up) {
            match self
                .acquire_or_wait::<V, E>(lock, key, &mut stale, absent, hard)
                .await
            {
                Step::Acquired(held) => leader.set_handoff(Some(Arc::new(held))),
                Step::Found(v) => {
                    return self
                        .settle(leader, Ok(Fetched::cached(v, Status::Coalesced)))
                        .await;
                }
                Step::ServeStale => {
                    let v = stale.expect("ServeStale only with a stale value");
                    return self
                        .settle(leader, Ok(Fetched::cached(v, Status::Stale)))
                        .await;
                }
                Step::Proceed => {}
                Step::Fail(e) => return self.settle(leader, Err(e)).await,
                Step::TimedOut => return (Err(self.timeout()), None),
            }
        }

        // 3. Compute and store, racing the soft (with a stale value) and hard deadlines.
        let lease = leader.handoff().cloned();
        let sharer = leader.sharer();
        let this = self.clone();
        let owned_key = key.to_owned();
        let fallback = stale.clone();
        let mut finish: BoxFuture<'f, Outcome<V, E>> = Box::pin(async move {
            let outcome = this
                .compute_and_store(&owned_key, ttl, init, lease.as_deref(), fallback)
                .await;
            leader.complete(Arc::new(outcome.clone()) as AnyArc);
            outcome
        });
        let soft = stale
            .as_ref()
            .and(inner.settings.soft_timeout)
            .map(|s| clock.now_ms().saturating_add(duration_ms(s)));
        match until(clock, min_deadline(soft, hard), &mut finish).await {
            Some(outcome) => (outcome, None),
            None => {
                let rest: BoxFuture<'f, ()> = Box::pin(async move {
                    let _ = finish.await;
                });
                match stale {
                    Some(v) => {
                        let outcome = Ok(Fetched::cached(v, Status::Stale));
                        sharer.share(Arc::new(outcome.clone()) as AnyArc);
                        (outcome, Some(rest))
                    }
                    None => (Err(self.timeout()), Some(rest)),
                }
            }
        }
    }

    async fn compute_and_store<V, F, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
        lease: Option<&HeldLease>,
        stale: Option<V>,
    ) -> Outcome<V, E>
    where
        V: CacheValue,
        F: Future<Output = std::result::Result<V, E>>,
    {
        let inner = &*self.inner;
        let c = &inner.counters;
        let result = with_keep_alive(init, lease, &*inner.clock, inner.settings.lease_ttl).await;
        if lease.is_some_and(HeldLease::is_lost) {
            bump(&c.lock_lost);
        }
        let outcome = match result {
            Ok(mut value) => {
                let physical = self.stamp(&mut value, ttl);
                match value.encode() {
                    Ok(bytes) => {
                        if inner.cache.set(key, bytes, physical).await.is_err() {
                            bump(&c.cache_errors);
                        }
                    }
                    Err(_) => bump(&c.cache_errors),
                }
                Ok(Fetched::new(value, Status::Miss))
            }
            Err(e) => {
                bump(&c.compute_errors);
                match stale {
                    Some(v) => Ok(Fetched::cached(v, Status::Stale)),
                    None => Err(ComputeError::Compute(Arc::new(e))),
                }
            }
        };
        if let Some(lease) = lease
            && lease.release().await.is_err()
        {
            bump(&c.lock_errors);
        }
        outcome
    }

    /// Stamps fail-safe windows on a value that carries them; returns the TTL to store it
    /// with (fresh TTL plus stale window).
    fn stamp<V: CacheValue>(&self, value: &mut V, ttl: Option<Duration>) -> Option<Duration> {
        let s = &self.inner.settings;
        let ttl = ttl.or(s.default_ttl);
        let (Some(fresh), Some(_)) = (ttl, value.windows()) else {
            return ttl;
        };
        let now = self.inner.clock.now_ms();
        let fresh_until = now.saturating_add(duration_ms(fresh));
        let stale_until = s
            .stale_for
            .map(|st| fresh_until.saturating_add(duration_ms(st)));
        value.set_windows(Some(fresh_until), stale_until);
        Some(fresh + s.stale_for.unwrap_or_default())
    }

    async fn read<V: CacheValue>(&self, key: &str) -> Read<V> {
        let inner = &*self.inner;
        match inner.cache.get(key).await {
            Ok(None) => Read::Absent,
            Ok(Some(bytes)) => match V::decode(&bytes) {
                None => {
                    inner.cache.record_corrupt();
                    bump(&inner.counters.corrupt);
                    Read::Miss
                }
                Some(v) => match freshness(&v, inner.clock.now_ms()) {
                    Freshness::Fresh => Read::Fresh(v),
                    Freshness::Stale => Read::Stale(v),
                    Freshness::Dead => Read::Miss,
                },
            },
            Err(e) if e.is_wrong_type() => {
                // A value of another type at our key (written by another program): as
                // corrupt as undecodable bytes. The cache counted it; recompute under the
                // lease, and the write replaces it.
                bump(&inner.counters.corrupt);
                Read::Miss
            }
            Err(e) => {
                bump(&inner.counters.cache_errors);
                Read::Failed(e)
            }
        }
    }

    /// Just took the lease after reading nothing at the key: looks again first. Taking the
    /// lease proves nobody is computing, not that nobody just finished — a holder may have
    /// stored the value and released between our read and our `SET NX` — so a fresh value
    /// found now is served (and the lease given back) instead of being computed again.
    /// `EXISTS` first, so that the usual empty answer counts no second miss in the cache's
    /// statistics. After an unusable value (`absent` false) nothing is re-read: it was
    /// counted once and the write under this lease replaces it.
    async fn under_lease<V: CacheValue, E>(
        &self,
        held: HeldLease,
        key: &str,
        stale: &mut Option<V>,
        absent: bool,
    ) -> Step<V, E> {
        if !absent || !matches!(self.inner.cache.exists(key).await, Ok(true)) {
            return Step::Acquired(held);
        }
        match self.read::<V>(key).await {
            Read::Fresh(v) => {
                if held.release().await.is_err() {
                    bump(&self.inner.counters.lock_errors);
                }
                Step::Found(v)
            }
            Read::Stale(v) => {
                *stale = Some(v);
                Step::Acquired(held)
            }
            Read::Absent | Read::Miss | Read::Failed(_) => Step::Acquired(held),
        }
    }

    /// Takes the lease, or waits for the holder's value (or release), within the bounds.
    async fn acquire_or_wait<V: CacheValue, E>(
        &self,
        lock: &Arc<dyn LockBackend>,
        key: &str,
        stale: &mut Option<V>,
        absent: bool,
        hard: Option<u64>,
    ) -> Step<V, E> {
        let inner = &*self.inner;
        let clock = &*inner.clock;
        let s = &inner.settings;
        let c = &inner.counters;
        let token = random_token(clock);
        let held = || HeldLease::new(lock.clone(), key, token.clone(), inner.runtime.clone());
        // Listen before the first attempt, so a release right after it is not missed.
        let mut listener = lock.listen(key);
        match until(clock, hard, lock.try_acquire(key, &token, s.lease_ttl)).await {
            None => return Step::TimedOut,
            Some(Ok(true)) => {
                bump(&c.lock_acquired);
                return self.under_lease(held(), key, stale, absent).await;
            }
            Some(Ok(false)) => {}
            Some(Err(_)) => {
                bump(&c.lock_errors);
                return Step::Proceed;
            }
        }
        bump(&c.lock_waits);
        if stale.is_some() {
            // Someone else is refreshing: serve what we have rather than wait.
            return Step::ServeStale;
        }
        let start = clock.now_ms();
        let bound = start.saturating_add(duration_ms(s.max_wait));
        let bound = hard.map_or(bound, |h| h.min(bound));
        let mut pacer = Pacer::new(Pacing {
            clock,
            deadline_ms: bound,
            max_polls: s.max_polls,
            backoff_min: s.backoff_min,
            backoff_max: s.backoff_max,
        });
        while pacer.nap(&mut listener).await {
            bump(&c.polls);
            let mut absent = false;
            match self.read::<V>(key).await {
                Read::Fresh(v) => return Step::Found(v),
                Read::Stale(v) => *stale = Some(v),
                Read::Absent => absent = true,
                Read::Miss => {}
                Read::Failed(_) => return Step::Proceed,
            }
            match lock.try_acquire(key, &token, s.lease_ttl).await {
                Ok(true) => {
                    bump(&c.lock_acquired);
                    return self.under_lease(held(), key, stale, absent).await;
                }
                Ok(false) => {}
                Err(_) => {
                    bump(&c.lock_errors);
                    return Step::Proceed;
                }
            }
        }
        let polls = pacer.polls();
        bump(&c.lock_wait_timeouts);
        let now = clock.now_ms();
        if hard.is_some_and(|h| now >= h) {
            return Step::TimedOut;
        }
        match s.wait_policy {
            WaitPolicy::Error => Step::Fail(ComputeError::LockWait {
                waited: Duration::from_millis(now.saturating_sub(start)),
                polls,
            }),
            WaitPolicy::ServeStale if stale.is_some() => Step::ServeStale,
            WaitPolicy::Compute | WaitPolicy::ServeStale => Step::Proceed,
        }
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<C: Cache + 'static> Cache for ComputeCache<C> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.inner.cache.get(key).await
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        self.inner.cache.get_with_ttl(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.inner.cache.set(key, value, ttl).await
    }
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        self.inner.cache.set_nx(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.cache.delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.cache.exists(key).await
    }
    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        self.inner.cache.ttl(key).await
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.inner.cache.expire(key, ttl).await
    }
    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.inner.cache.mget(keys).await
    }
    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        self.inner.cache.mset(entries, ttl).await
    }
    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.inner.cache.delete_pattern(pattern).await
    }
    async fn clear(&self) -> Result<u64> {
        self.inner.cache.clear().await
    }
    async fn stats(&self) -> Result<CacheStats> {
        self.inner.cache.stats().await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.cache.ping().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.cache.close().await
    }
    fn record_corrupt(&self) {
        self.inner.cache.record_corrupt()
    }

    fn clock(&self) -> Option<SharedClock> {
        Some(self.inner.clock.clone())
    }
}
