//! Staying up when Redis is not: [`LazyTransport`] (a transport that connects in the
//! background, so a cache can be built while Redis is unreachable) and [`FallbackCache`]
//! (a cache that serves from memory while its primary fails).
//!
//! Together they are the seed's "gradual rollout": a service configured with Redis starts
//! even when Redis is down, runs on memory, and moves to Redis as soon as it answers, with
//! no restart.
//!
//! ```
//! # futures_executor::block_on(async {
//! use std::sync::Arc;
//! use larder_core::fallback::{FallbackCache, LazyTransport};
//! use larder_core::{Cache, Error, ErrorKind, MemoryCache, RedisCache, TransportError};
//! use larder_core::testing::MemTransport;
//!
//! let redis = MemTransport::new();
//! let clock = Arc::new(redis.clock());
//! let reachable = Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let (r, up) = (redis.clone(), reachable.clone());
//! // Natively: `move || RedisTransport::connect(url)`.
//! let transport = LazyTransport::new(move || {
//!     let (r, up) = (r.clone(), up.load(std::sync::atomic::Ordering::SeqCst));
//!     async move {
//!         if up { Ok(r) } else { Err(Error::from(TransportError::new(ErrorKind::Io, "refused"))) }
//!     }
//! }).clock(clock.clone());
//! let cache = FallbackCache::new(
//!     RedisCache::new(transport.clone()),
//!     MemoryCache::builder().clock(clock.clone()).max_entries(1_000).build().unwrap(),
//! );
//!
//! cache.set("k", "v".into(), None).await?; // Redis unreachable: stored in memory
//! assert!(cache.is_degraded());
//! assert_eq!(cache.get("k").await?.as_deref(), Some(&b"v"[..]));
//!
//! reachable.store(true, std::sync::atomic::Ordering::SeqCst);
//! redis.clock().advance(std::time::Duration::from_secs(1)); // the next connection attempt is due
//! cache.set("k2", "v2".into(), None).await?; // connects, and writes to Redis
//! assert!(transport.is_connected() && !cache.is_degraded());
//! # Ok::<(), larder_core::Error>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cache::{Cache, CacheStats, KeyTtl};
use crate::clock::{SharedClock, duration_ms};
use crate::error::{Error, ErrorKind, Result, TransportError};
use crate::memory::MemoryCache;
use crate::runtime::{BoxFuture, SharedRuntime};
use crate::transport::{BoxSubscription, MaybeSend, MaybeSync, ScanCursor, Transport};
use crate::value::{Cmd, Value};

#[cfg(not(target_arch = "wasm32"))]
type ConnectFn<T> = dyn Fn() -> BoxFuture<'static, Result<T>> + Send + Sync;
#[cfg(target_arch = "wasm32")]
type ConnectFn<T> = dyn Fn() -> BoxFuture<'static, Result<T>>;

/// Default [`LazyTransport::retry_every`].
const DEFAULT_RETRY_EVERY: Duration = Duration::from_secs(1);

/// A [`Transport`] that connects on first use, and keeps trying in the background while the
/// backend is unreachable, failing calls fast (`Unavailable`) until it is connected.
///
/// `connect` builds the real transport (natively `RedisTransport::connect(url)`); it is
/// called at most once per [`retry_every`](LazyTransport::retry_every) until it succeeds,
/// then never again (the real transport reconnects by itself after that). With a runtime
/// the attempts run in the background; without one, the call that finds an attempt due
/// makes it (and waits for it).
pub struct LazyTransport<T> {
    inner: Arc<LazyInner<T>>,
}

impl<T> Clone for LazyTransport<T> {
    fn clone(&self) -> Self {
        LazyTransport {
            inner: self.inner.clone(),
        }
    }
}

struct LazyInner<T> {
    connect: Box<ConnectFn<T>>,
    clock: SharedClock,
    runtime: Option<SharedRuntime>,
    retry_every: Duration,
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    transport: Option<T>,
    connecting: bool,
    next_attempt_ms: u64,
    attempts: u64,
    last_error: Option<String>,
}

impl<T: fmt::Debug> fmt::Debug for LazyTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.inner.slot.lock();
        f.debug_struct("LazyTransport")
            .field("transport", &slot.transport)
            .field("attempts", &slot.attempts)
            .field("last_error", &slot.last_error)
            .finish_non_exhaustive()
    }
}

impl<T: Transport + Clone + 'static> LazyTransport<T> {
    /// A transport that will connect with `connect` on first use (or, given a
    /// [`runtime`](LazyTransport::runtime), in the background at once).
    pub fn new<F, Fut>(connect: F) -> Self
    where
        F: Fn() -> Fut + MaybeSend + MaybeSync + 'static,
        Fut: Future<Output = Result<T>> + MaybeSend + 'static,
    {
        LazyTransport {
            inner: Arc::new(LazyInner {
                connect: Box::new(move || Box::pin(connect())),
                clock: crate::clock::system(),
                runtime: None,
                retry_every: DEFAULT_RETRY_EVERY,
                slot: Mutex::new(Slot {
                    transport: None,
                    connecting: false,
                    next_attempt_ms: 0,
                    attempts: 0,
                    last_error: None,
                }),
            }),
        }
    }

    /// The clock retries are paced with (default: [`SystemClock`](crate::SystemClock)).
    /// Call before sharing the transport (it has no effect on clones made earlier).
    #[must_use]
    pub fn clock(mut self, clock: impl crate::Clock + 'static) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = Arc::new(clock);
        }
        self
    }

    /// Runs connection attempts in the background on `runtime`, starting now. Call last,
    /// before sharing the transport.
    #[must_use]
    pub fn runtime(mut self, runtime: SharedRuntime) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.runtime = Some(runtime);
        }
        self.start_attempt_if_due();
        self
    }

    /// How long to wait between connection attempts (default 1 s). Call before sharing the
    /// transport (it has no effect on clones made earlier).
    #[must_use]
    pub fn retry_every(mut self, every: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.retry_every = every;
        }
        self
    }

    /// Tries to connect now (unless connected), waiting for the attempt.
    ///
    /// # Errors
    ///
    /// The attempt's error.
    pub async fn connect_now(&self) -> Result<()> {
        if self.is_connected() {
            return Ok(());
        }
        self.inner.slot.lock().connecting = true;
        self.attempt().await;
        let slot = self.inner.slot.lock();
        if slot.transport.is_some() {
            Ok(())
        } else {
            Err(not_connected(slot.last_error.as_deref()).into())
        }
    }

    /// Whether the real transport exists yet.
    pub fn is_connected(&self) -> bool {
        self.inner.slot.lock().transport.is_some()
    }

    /// The real transport, once connected.
    pub fn get(&self) -> Option<T> {
        self.inner.slot.lock().transport.clone()
    }

    /// Connection attempts made so far.
    pub fn attempts(&self) -> u64 {
        self.inner.slot.lock().attempts
    }

    /// Marks an attempt as started if one is due; returns whether it did.
    fn claim_attempt(&self) -> bool {
        let mut slot = self.inner.slot.lock();
        let due = slot.transport.is_none()
            && !slot.connecting
            && self.inner.clock.now_ms() >= slot.next_attempt_ms;
        if due {
            slot.connecting = true;
        }
        due
    }

    fn start_attempt_if_due(&self) {
        if let Some(rt) = &self.inner.runtime
            && self.claim_attempt()
        {
            let this = self.clone();
            rt.spawn(Box::pin(async move { this.attempt().await }));
        }
    }

    async fn attempt(&self) {
        let result = (self.inner.connect)().await;
        let now = self.inner.clock.now_ms();
        let mut slot = self.inner.slot.lock();
        slot.connecting = false;
        slot.attempts += 1;
        match result {
            Ok(t) => {
                slot.transport = Some(t);
                slot.last_error = None;
            }
            Err(e) => {
                slot.last_error = Some(e.to_string());
                slot.next_attempt_ms = now.saturating_add(duration_ms(self.inner.retry_every));
            }
        }
    }

    async fn transport(&self) -> Result<T, TransportError> {
        if let Some(t) = self.get() {
            return Ok(t);
        }
        if self.inner.runtime.is_some() {
            self.start_attempt_if_due();
        } else if self.claim_attempt() {
            self.attempt().await;
            if let Some(t) = self.get() {
                return Ok(t);
            }
        }
        Err(not_connected(self.inner.slot.lock().last_error.as_deref()))
    }
}

fn not_connected(last_error: Option<&str>) -> TransportError {
    TransportError::new(
        ErrorKind::Unavailable,
        match last_error {
            Some(e) => format!("not connected to Redis yet (last attempt: {e}); retrying"),
            None => "not connected to Redis yet; connecting".to_owned(),
        },
    )
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<T: Transport + Clone + 'static> Transport for LazyTransport<T> {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.transport().await?.exec(cmd).await
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.transport().await?.pipeline(cmds).await
    }

    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        self.transport()
            .await?
            .scan_page(cursor, pattern, count)
            .await
    }

    async fn close(&self) -> Result<(), TransportError> {
        match self.get() {
            Some(t) => t.close().await,
            None => Ok(()),
        }
    }

    /// Known only once connected (false before).
    fn supports_pubsub(&self) -> bool {
        self.get().is_some_and(|t| t.supports_pubsub())
    }

    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.transport().await?.subscribe(channel).await
    }

    async fn psubscribe(&self, pattern: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.transport().await?.psubscribe(pattern).await
    }
}

/// A cache that uses its primary (Redis) and, whenever a primary call fails with an outage
/// (transport errors, Redis error replies), serves that call from a [`MemoryCache`]
/// instead: reads and writes keep working, in memory, and go back to the primary as soon as
/// it answers again.
///
/// Entries written to memory during an outage are not copied to the primary afterwards. A
/// closed cache and rejected arguments are still errors; [`Cache::ping`] reports the
/// primary's health unchanged. For an L1 that is used all the time, see
/// [`TieredCache`](crate::TieredCache).
pub struct FallbackCache<P> {
    inner: Arc<FallbackInner<P>>,
}

impl<P> Clone for FallbackCache<P> {
    fn clone(&self) -> Self {
        FallbackCache {
            inner: self.inner.clone(),
        }
    }
}

struct FallbackInner<P> {
    primary: P,
    memory: MemoryCache,
    degraded: AtomicBool,
    fallbacks: AtomicU64,
}

impl<P: fmt::Debug> fmt::Debug for FallbackCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackCache")
            .field("primary", &self.inner.primary)
            .field("memory", &self.inner.memory)
            .field("degraded", &self.inner.degraded.load(Ordering::Relaxed))
            .finish()
    }
}

impl<P: Cache> FallbackCache<P> {
    /// `primary`, backed by `memory` while it fails.
    pub fn new(primary: P, memory: MemoryCache) -> Self {
        FallbackCache {
            inner: Arc::new(FallbackInner {
                primary,
                memory,
                degraded: AtomicBool::new(false),
                fallbacks: AtomicU64::new(0),
            }),
        }
    }

    /// The primary cache.
    pub fn primary(&self) -> &P {
        &self.inner.primary
    }

    /// The memory cache used during outages.
    pub fn memory(&self) -> &MemoryCache {
        &self.inner.memory
    }

    /// Whether the last primary call failed (the cache is running on memory).
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// Calls served from memory because the primary failed.
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// `Ok(Some)` from the primary, `Ok(None)` when its failure must be served from memory.
    fn route<T>(&self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => {
                self.inner.degraded.store(false, Ordering::Relaxed);
                Ok(Some(v))
            }
            Err(e @ (Error::Closed | Error::InvalidInput(_) | Error::Serialize(_))) => Err(e),
            Err(_) => {
                self.inner.degraded.store(true, Ordering::Relaxed);
                self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }
}

/// Runs `$call` on the primary, falling back to the same call on memory.
macro_rules! routed {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let r = $self.inner.primary.$method($($arg),*).await;
        match $self.route(r)? {
            Some(v) => Ok(v),
            None => $self.inner.memory.$method($($arg),*).await,
        }
    }};
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<P: Cache> Cache for FallbackCache<P> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        routed!(self.get(key))
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        routed!(self.get_with_ttl(key))
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        routed!(self.set(key, value.clone(), ttl))
    }
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        routed!(self.set_nx(key, value.clone(), ttl))
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        routed!(self.delete(key))
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        routed!(self.exists(key))
    }
    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        routed!(self.ttl(key))
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        routed!(self.expire(key, ttl))
    }
    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        routed!(self.mget(keys))
    }
    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        routed!(self.mset(entries, ttl))
    }
    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        routed!(self.delete_pattern(pattern))
    }
    async fn clear(&self) -> Result<u64> {
        routed!(self.clear())
    }
    async fn stats(&self) -> Result<CacheStats> {
        routed!(self.stats())
    }
    async fn ping(&self) -> Result<()> {
        self.inner.primary.ping().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.memory.close().await?;
        self.inner.primary.close().await
    }
    fn record_corrupt(&self) {
        if self.is_degraded() {
            self.inner.memory.record_corrupt();
        } else {
            self.inner.primary.record_corrupt();
        }
    }
    fn clock(&self) -> Option<crate::SharedClock> {
        self.inner.memory.clock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::tests::support::{TokioClock, runtime};
    use crate::testing::MemTransport;
    use crate::{Commands, RedisCache};
    use std::sync::atomic::AtomicBool;

    fn refused() -> Error {
        TransportError::new(ErrorKind::Io, "connection refused").into()
    }

    #[tokio::test(start_paused = true)]
    async fn built_while_unreachable_then_switches_to_redis_without_restart() {
        let clock = TokioClock::shared();
        let redis = MemTransport::with_clock(clock.clone());
        let up = Arc::new(AtomicBool::new(false));
        let (r, u) = (redis.clone(), up.clone());
        let lazy = LazyTransport::new(move || {
            let (r, u) = (r.clone(), u.load(Ordering::SeqCst));
            async move { if u { Ok(r) } else { Err(refused()) } }
        })
        .clock(clock.clone())
        .runtime(runtime())
        .retry_every(Duration::from_millis(200));
        let cache = FallbackCache::new(
            RedisCache::builder(lazy.clone())
                .prefix("p")
                .build()
                .unwrap(),
            MemoryCache::builder()
                .clock(clock.clone())
                .max_entries(100)
                .build()
                .unwrap(),
        );
        cache.set("a", "1".into(), None).await.unwrap();
        assert!(cache.is_degraded());
        assert_eq!(cache.get("a").await.unwrap(), Some("1".into()));
        assert!(cache.ping().await.is_err());

        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await; // the background retry
        cache.get("x").await.unwrap(); // triggers the attempt if not yet
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(lazy.is_connected(), "attempts: {}", lazy.attempts());
        cache.set("b", "2".into(), None).await.unwrap();
        assert!(!cache.is_degraded());
        assert_eq!(redis.get(b"p:cache:b").await.unwrap(), Some("2".into()));
        assert!(cache.fallbacks() >= 2);
    }

    #[test]
    fn without_a_runtime_attempts_are_inline_and_paced() {
        futures_executor::block_on(async {
            let redis = MemTransport::new();
            let clock = redis.clock();
            let calls = Arc::new(AtomicU64::new(0));
            let c = calls.clone();
            let lazy = LazyTransport::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { Err::<MemTransport, _>(refused()) }
            })
            .clock(clock.clone());
            for _ in 0..10 {
                let e = lazy.exec(Cmd::new("PING")).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unavailable);
                assert!(e.message().contains("connection refused"), "{e}");
            }
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "one attempt per retry period"
            );
            clock.advance(Duration::from_secs(1));
            let _ = lazy.exec(Cmd::new("PING")).await;
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            assert!(lazy.connect_now().await.is_err());
        });
    }
}
