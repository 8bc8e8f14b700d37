//! The agent-facing API: [`ResponseCache`] caches whole LLM responses.
//!
//! A [`ResponseCache`] is keyed on a whole [`LlmRequest`] (model, messages or prompt,
//! system, temperature and every other generation parameter, minus the
//! [`EXCLUDED_FIELDS`]) and stores an [`Envelope`] holding the response, the model, the time
//! and metadata (temperature, token counts). Every answer says whether it was a
//! [HIT, MISS, COALESCED or STALE](Status).
//!
//! - **Per-request controls** ([`CacheControl`]): TTL, no-cache, no-store, force-refresh,
//!   namespace and tags.
//! - **Invalidation beyond TTL**: a namespace in O(1)
//!   ([`invalidate_namespace`](ResponseCache::invalidate_namespace): one `INCR` of a
//!   generation counter that every read fetches in the same pipeline as the value), a tag
//!   lazily ([`invalidate_tag`](ResponseCache::invalidate_tag): one `SET` of the tag's
//!   invalidation time; an entry written before it is a miss), a model
//!   ([`invalidate_model`](ResponseCache::invalidate_model)), and a key pattern for admins
//!   ([`purge_pattern`](ResponseCache::purge_pattern): `SCAN` on every master).
//! - **Analytics**: hits, misses, tokens and estimated cost saved per model
//!   ([`Prices`] configurable), kept in Redis so that every instance adds to the same totals,
//!   flushed in the same pipeline as the next write (or a lookup's, once
//!   [`flush_every`](ResponseCacheBuilder::flush_every) events are pending); a [hit-rate alert
//!   hook](ResponseCacheBuilder::on_low_hit_rate).
//! - **Warming** ([`warm`](ResponseCache::warm)): compute many requests with bounded
//!   concurrency and a progress callback.
//! - **go-deep-agent compatibility** ([`Mode::GoDeepAgent`]): the Go agent's keys, prefix,
//!   raw-text values and stats counters, so a Rust service and the Go agent share one Redis.
//!
//! # Round trips
//!
//! A lookup is one round trip: `GET {prefix}:ns:{namespace}`, `GET` of the value and `MGET`
//! of the tags' invalidation times travel in one pipeline (plus, once enough are pending,
//! the analytics increments). Storing a computed answer is one more (`SET … PX` with the
//! pending analytics); the stampede lease adds three to a miss (`SET … NX PX` and a re-read
//! before computing, the release script after storing). An entry whose envelope carries tags the request did not name costs
//! one extra `MGET` to check them.
//!
//! # Examples
//!
//! ```
//! # futures_executor::block_on(async {
//! use larder_core::Status;
//! use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache, Usage};
//! use larder_core::{RedisCache, testing::MemTransport};
//! use std::time::Duration;
//!
//! let redis = MemTransport::new();
//! let cache = ResponseCache::redis(RedisCache::new(redis.clone())).clock(redis.shared_clock())
//!     .default_ttl(Duration::from_secs(3600))
//!     .build().unwrap();
//! let request = LlmRequest::chat("gpt-4o-mini").user("What is the capital of France?");
//! let ask = || async {
//!     // call the model here
//!     Ok::<_, std::io::Error>(LlmResponse::new("Paris.").with_usage(Usage::new(14, 2)))
//! };
//!
//! let first = cache.try_get_with(&request, &CacheControl::default(), ask).await?;
//! assert_eq!((first.text(), first.status), ("Paris.", Status::Miss));
//! let second = cache.try_get_with(&request, &CacheControl::default(), ask).await?;
//! assert_eq!(second.status, Status::Hit);
//!
//! cache.flush().await?; // analytics reach Redis (normally with the next write)
//! let report = cache.analytics().await?;
//! assert_eq!(report.models["gpt-4o-mini"].tokens_saved(), 16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod analytics;
mod answer;
mod control;
mod keys;
mod request;
mod stampede;
mod streaming;
mod warm;

#[cfg(test)]
mod seal_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value as Json;

use crate::cache::Cache;
use crate::clock::{SharedClock, duration_ms};
use crate::compute::{ComputeError, Fetched, RedisLock, Status};
use crate::envelope::{Decoded, Envelope};
use crate::error::{Error, Result};
use crate::keys::{GO_DEEP_AGENT_PREFIX, KeyScheme};
use crate::redis::RedisCache;
use crate::transport::{
    BoxSubscription, MaybeSend, MaybeSync, ScanCursor, SetOptions, SharedTransport, Transport,
    bulk_opt, mget_reply, set_reply,
};
use crate::value::{Cmd, Value};

pub use analytics::{
    AlertHook, AnalyticsReport, HitRateAlert, ModelAnalytics, ModelPrice, Prices, StatsTotals,
};
pub use answer::{LlmResponse, Usage};
pub use control::{CacheControl, DEFAULT_NAMESPACE};
pub use request::{EXCLUDED_FIELDS, LlmRequest};
pub use warm::{ProgressHook, WarmOptions, WarmProgress, WarmReport};

use analytics::{Alert, Counts, Recorder};
pub(crate) use answer::meta;
use keys::{ResponseKeys, model_tag};
use stampede::{Got, Lease, Leased, Nap, Stampede};

/// The TTL go-deep-agent uses when none is configured (5 minutes), and so the default of
/// [`Mode::GoDeepAgent`].
pub const GO_DEEP_AGENT_DEFAULT_TTL: Duration = Duration::from_secs(300);

/// How often a follower of another process's stream reads it without a notification.
const DEFAULT_STREAM_POLL: Duration = Duration::from_millis(50);

/// How many analytics events may be pending before a lookup carries them to Redis.
const DEFAULT_FLUSH_EVERY: u64 = 64;

/// How keys and values are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// larder's own format: key = SHA-256 of the canonical request JSON, value = an
    /// [`Envelope`], namespaces and tags available.
    #[default]
    Larder,
    /// go-deep-agent's format (docs/KEY_FORMAT.md §4): key =
    /// [`LlmRequest::go_deep_agent_key`] under the prefix `go-deep-agent` (unless another is
    /// set), value = the raw response text, default TTL 5 minutes, the same
    /// `{prefix}:stats:hits|misses|writes` counters. Namespaces and tags are not available
    /// (raw text cannot carry a generation or a write time).
    GoDeepAgent,
}

/// A cache of LLM responses over Redis (any [`Transport`]) or a local [`Cache`].
///
/// Cloning is cheap and shares everything. See the [module docs](self) for an overview.
///
/// # Concurrent calls on the same key
///
/// One model call per missing answer. Concurrent misses of one request in a process share
/// one computation (the others wait for it and receive its answer, or its error; if the
/// computing caller is dropped, a waiter computes instead). Over Redis, misses in other
/// processes wait too: the computing process holds a lease `{prefix}:lock:{hash}`
/// (`SET NX PX`, extended while the model runs, released by a compare-and-delete script
/// that publishes the release), and waiters re-read the entry when woken — by pub/sub on
/// transports that have it, else by polling with jittered backoff. A holder that dies
/// blocks others at most [`lease_ttl`](ResponseCacheBuilder::lease_ttl); nobody waits
/// longer than [`max_wait`](ResponseCacheBuilder::max_wait) before computing itself.
/// The lease costs a miss three more round trips (take, re-read under it, release); turn it
/// off with
/// [`lease(false)`](ResponseCacheBuilder::lease).
///
/// # Errors
///
/// An invalid request or control (a zero TTL, a namespace with spaces) is always an error.
/// Cache failures are not errors of [`try_get_with`](ResponseCache::try_get_with) when
/// the cache is [fail-open](ResponseCacheBuilder::fail_open) (the default): the answer is
/// computed and returned, and the failure is logged and counted in
/// [`errors`](ResponseCache::errors). The plain operations (`get`, `put`, invalidation,
/// analytics) return cache failures.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    keys: ResponseKeys,
    mode: Mode,
    clock: SharedClock,
    default_ttl: Option<Duration>,
    stale_window: Option<Duration>,
    prices: Prices,
    analytics: bool,
    flush_every: u64,
    fail_open: bool,
    recorder: Recorder,
    alert: Option<Alert>,
    corrupt: AtomicU64,
    errors: AtomicU64,
    stampede: Stampede,
    max_stream_bytes: usize,
    publish_streams: bool,
    stream_poll: Duration,
    /// Seals and opens stored values (encryption at rest).
    keyring: Option<Arc<crate::seal::Keyring>>,
    /// Keys request hashes (HMAC instead of SHA-256), per namespace.
    hash_key: Option<crate::seal::HashKey>,
    /// Streams in flight, by flight key, for callers that join them.
    streams: Mutex<HashMap<String, std::sync::Weak<crate::stream::tee::Tee>>>,
}

enum Backend {
    /// Redis: the transport for pipelines, the cache it came from kept alive.
    Redis { transport: SharedTransport },
    /// A local cache: namespace generations and tag times live in this process.
    Local {
        cache: Arc<dyn Cache>,
        state: Mutex<LocalState>,
    },
}

#[derive(Default)]
struct LocalState {
    generations: HashMap<String, u64>,
    tags: HashMap<String, u64>,
}

impl fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        let backend = match &i.backend {
            Backend::Redis { transport } => format!("Redis({transport:?})"),
            Backend::Local { cache, .. } => format!("Local({cache:?})"),
        };
        f.debug_struct("ResponseCache")
            .field("backend", &backend)
            .field("prefix", &i.keys.scheme().prefix())
            .field("mode", &i.mode)
            .field("default_ttl", &i.default_ttl)
            .field("stale_window", &i.stale_window)
            .field("alert", &i.alert)
            .finish_non_exhaustive()
    }
}

/// Exposes a [`RedisCache`]'s transport as a transport, so that caches over any `T` share
/// one type-erased backend.
struct ViaCache<T>(RedisCache<T>);

impl<T: Transport> fmt::Debug for ViaCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.transport(), f)
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<T: Transport> Transport for ViaCache<T> {
    async fn exec(&self, cmd: Cmd) -> std::result::Result<Value, crate::TransportError> {
        self.0.transport().exec(cmd).await
    }
    async fn pipeline(
        &self,
        cmds: Vec<Cmd>,
    ) -> std::result::Result<Vec<Value>, crate::TransportError> {
        self.0.transport().pipeline(cmds).await
    }
    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> std::result::Result<(ScanCursor, Vec<Bytes>), crate::TransportError> {
        self.0.transport().scan_page(cursor, pattern, count).await
    }
    fn supports_pubsub(&self) -> bool {
        self.0.transport().supports_pubsub()
    }
    async fn subscribe(
        &self,
        channel: &[u8],
    ) -> std::result::Result<BoxSubscription, crate::TransportError> {
        self.0.transport().subscribe(channel).await
    }
    async fn psubscribe(
        &self,
        pattern: &[u8],
    ) -> std::result::Result<BoxSubscription, crate::TransportError> {
        self.0.transport().psubscribe(pattern).await
    }
}

/// Builds a [`ResponseCache`]; start with [`ResponseCache::redis`] or
/// [`ResponseCache::local`].
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct ResponseCacheBuilder {
    backend: Backend,
    scheme: KeyScheme,
    prefix: Option<Result<KeyScheme>>,
    mode: Mode,
    clock: SharedClock,
    backend_ttl: Option<Duration>,
    default_ttl: Option<Duration>,
    stale_window: Option<Duration>,
    prices: Prices,
    analytics: bool,
    flush_every: u64,
    fail_open: bool,
    alert: Option<Alert>,
    lease: bool,
    lease_ttl: Duration,
    max_wait: Duration,
    max_polls: u32,
    max_stream_bytes: usize,
    publish_streams: bool,
    stream_poll: Duration,
    keyring: Option<Arc<crate::seal::Keyring>>,
    hash_key: Option<crate::seal::HashKey>,
}

impl fmt::Debug for ResponseCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheBuilder")
            .field("mode", &self.mode)
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl ResponseCacheBuilder {
    fn new(
        backend: Backend,
        scheme: KeyScheme,
        backend_ttl: Option<Duration>,
        clock: SharedClock,
    ) -> Self {
        ResponseCacheBuilder {
            backend,
            scheme,
            prefix: None,
            mode: Mode::Larder,
            clock,
            backend_ttl,
            default_ttl: None,
            stale_window: None,
            prices: Prices::default(),
            analytics: true,
            flush_every: DEFAULT_FLUSH_EVERY,
            fail_open: true,
            alert: None,
            lease: true,
            lease_ttl: stampede::DEFAULT_LEASE_TTL,
            max_wait: stampede::DEFAULT_MAX_WAIT,
            max_polls: stampede::DEFAULT_MAX_POLLS,
            max_stream_bytes: crate::stream::DEFAULT_MAX_STREAM_BYTES,
            publish_streams: true,
            stream_poll: DEFAULT_STREAM_POLL,
            keyring: None,
            hash_key: None,
        }
    }

    /// The clock that stamps entries and decides freshness. Default: the local cache's clock
    /// ([`Cache::clock`]), else [`SystemClock`](crate::SystemClock).
    pub fn clock(mut self, clock: impl crate::Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The key and value format (default [`Mode::Larder`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Shorthand for `.mode(Mode::GoDeepAgent)`: share go-deep-agent's cache.
    pub fn go_deep_agent_compat(self) -> Self {
        self.mode(Mode::GoDeepAgent)
    }

    /// The key prefix. Default: the [`RedisCache`]'s prefix in [`Mode::Larder`], and
    /// `go-deep-agent` in [`Mode::GoDeepAgent`]. A prefix with `{` or `}` makes
    /// [`build`](Self::build) fail (see [`KeyScheme::new`]).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(KeyScheme::new(prefix));
        self
    }

    /// How long answers stay fresh when the request sets no TTL. Default: the backend's
    /// default TTL ([`RedisCache::default_ttl`]); in [`Mode::GoDeepAgent`] 5 minutes when
    /// that is unset too.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl).filter(|d| !d.is_zero());
        self
    }

    /// Keeps answers this long past their freshness, to serve them as
    /// [STALE](Status::Stale) when computing a new one fails (fail-safe). Default: none.
    pub fn stale_window(mut self, window: Duration) -> Self {
        self.stale_window = Some(window).filter(|d| !d.is_zero());
        self
    }

    /// The prices used to estimate the cost saved by hits.
    pub fn prices(mut self, prices: Prices) -> Self {
        self.prices = prices;
        self
    }

    /// Whether to keep per-model analytics in Redis (default true). The prefix-wide
    /// `{prefix}:stats:*` counters are always kept.
    pub fn analytics(mut self, on: bool) -> Self {
        self.analytics = on;
        self
    }

    /// Pending analytics events after which a lookup carries them to Redis in its own
    /// pipeline (default 64; writes always carry them).
    pub fn flush_every(mut self, events: u64) -> Self {
        self.flush_every = events;
        self
    }

    /// When true (the default), a cache failure during
    /// [`try_get_with`](ResponseCache::try_get_with) is logged and counted and the
    /// answer computed anyway; when false it is returned as [`ComputeError::Cache`].
    pub fn fail_open(mut self, on: bool) -> Self {
        self.fail_open = on;
        self
    }

    /// Calls `hook` when this instance's hit rate over a window of `window` lookups falls
    /// below `threshold` (0.0–1.0). The hook fires once per drop: again only after a window
    /// at or above the threshold. Keep it cheap (it runs on the lookup's path): log, bump
    /// a metric, or hand off to a task.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::response::ResponseCache;
    /// use larder_core::{ManualClock, MemoryCache};
    /// use std::sync::Arc;
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let cache = ResponseCache::local(MemoryCache::builder().clock(clock.clone()).max_entries(1000).build().unwrap())
    ///     .on_low_hit_rate(0.5, 100, |alert| {
    ///         eprintln!("hit rate {:.0}% < {:.0}%", alert.hit_rate * 100.0, alert.threshold * 100.0)
    ///     })
    ///     .build().unwrap();
    /// # drop(cache);
    /// ```
    pub fn on_low_hit_rate(
        mut self,
        threshold: f64,
        window: u64,
        hook: impl AlertHook + 'static,
    ) -> Self {
        self.alert = Some(Alert::new(threshold, window, Arc::new(hook)));
        self
    }

    /// Whether concurrent misses in different processes share one computation through a
    /// lease in Redis (default true; a cache over a local [`Cache`] has no lease and
    /// coalesces within the process only). See
    /// [concurrent calls](ResponseCache#concurrent-calls-on-the-same-key).
    pub fn lease(mut self, on: bool) -> Self {
        self.lease = on;
        self
    }

    /// How long a lease lives unless its holder extends it (default 10 s). A holder that
    /// dies blocks others at most this long; a long computation extends its lease every
    /// third of it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long a miss waits for another process's computation before computing itself
    /// (default 30 s).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// How many times a waiting miss re-reads the entry before computing itself (default
    /// 20). Each poll is a lookup and a `SET NX`: two subrequests over HTTP, so keep it
    /// within a Worker's subrequest budget.
    pub fn max_polls(mut self, polls: u32) -> Self {
        self.max_polls = polls;
        self
    }

    /// The size (bytes received) past which a streamed answer is passed through but not
    /// stored, and no longer joinable by new callers. Default
    /// [`DEFAULT_MAX_STREAM_BYTES`](crate::stream::DEFAULT_MAX_STREAM_BYTES).
    pub fn max_stream_bytes(mut self, bytes: usize) -> Self {
        self.max_stream_bytes = bytes;
        self
    }

    /// Whether a stream in flight is published to Redis (a Redis Stream under the lease's
    /// key, one pipelined `XADD` batch per upstream chunk) so that identical requests in
    /// other processes follow it from its first event instead of waiting for it to end
    /// (default true; needs the [lease](Self::lease)).
    pub fn publish_streams(mut self, on: bool) -> Self {
        self.publish_streams = on;
        self
    }

    /// How often a streaming caller waiting for another process looks again when no
    /// notification arrives — for the other process's stream to start (up to
    /// [`max_wait`](Self::max_wait), whatever [`max_polls`](Self::max_polls) says) and then
    /// for its next events. On transports without pub/sub (HTTP) this is the polling
    /// interval, so it bounds how far a follower trails the leader, and sets how many
    /// requests a follower makes (mind a Worker's subrequest limit); with pub/sub it is a
    /// safety net for a lost message. Default 50 ms.
    pub fn stream_poll_interval(mut self, every: Duration) -> Self {
        self.stream_poll = every;
        self
    }

    /// Encrypts stored answers (AES-256-GCM, the Redis key bound as associated data; see
    /// [`crate::seal`]). Entries that do not open with this keyring — sealed with a key it
    /// lacks, moved to another key, altered, or written in clear — are counted corrupt
    /// misses. Needs [`Mode::Larder`].
    pub fn encryption(mut self, keyring: crate::seal::Keyring) -> Self {
        self.keyring = Some(Arc::new(keyring));
        self
    }

    /// Keys request hashes: HMAC-SHA-256 with a per-namespace key derived from `key` (HKDF)
    /// instead of SHA-256, so a key in Redis reveals nothing about its request. Every
    /// instance sharing the cache needs the same secret. Needs [`Mode::Larder`].
    pub fn hash_key(mut self, key: crate::seal::HashKey) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a prefix with `{` or `}`, a zero
    /// [`max_stream_bytes`](Self::max_stream_bytes), or encryption or keyed hashes in
    /// go-deep-agent mode (its keys and raw-text values are fixed by go-deep-agent).
    pub fn build(self) -> Result<ResponseCache> {
        if self.mode == Mode::GoDeepAgent && (self.keyring.is_some() || self.hash_key.is_some()) {
            return Err(Error::InvalidInput(
                "encryption and keyed hashes need larder's format (Mode::Larder); \
                 go-deep-agent reads raw text under its own keys"
                    .into(),
            ));
        }
        if self.stream_poll.is_zero() {
            return Err(Error::InvalidInput(
                "stream_poll_interval must be greater than zero".into(),
            ));
        }
        if self.max_stream_bytes == 0 {
            return Err(Error::InvalidInput(
                "max_stream_bytes must be greater than zero".into(),
            ));
        }
        let scheme = match (self.prefix, self.mode) {
            (Some(p), _) => p?,
            (None, Mode::GoDeepAgent) => KeyScheme::new(GO_DEEP_AGENT_PREFIX)?,
            (None, _) => self.scheme,
        };
        let default_ttl = self.default_ttl.or(self.backend_ttl).or(match self.mode {
            Mode::GoDeepAgent => Some(GO_DEEP_AGENT_DEFAULT_TTL),
            _ => None,
        });
        let lease = match (&self.backend, self.lease) {
            (Backend::Redis { transport }, true) => Some(Lease {
                lock: Arc::new(
                    RedisLock::new(transport.clone(), scheme.clone()).clock(self.clock.clone()),
                ),
                ttl: self.lease_ttl,
                max_wait: self.max_wait,
                max_polls: self.max_polls,
            }),
            _ => None,
        };
        Ok(ResponseCache {
            inner: Arc::new(Inner {
                backend: self.backend,
                keys: ResponseKeys::new(scheme),
                mode: self.mode,
                clock: self.clock,
                default_ttl,
                stale_window: self.stale_window,
                prices: self.prices,
                analytics: self.analytics,
                flush_every: self.flush_every,
                fail_open: self.fail_open,
                recorder: Recorder::default(),
                alert: self.alert,
                corrupt: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                stampede: Stampede::new(lease),
                max_stream_bytes: self.max_stream_bytes,
                publish_streams: self.publish_streams,
                stream_poll: self.stream_poll,
                keyring: self.keyring,
                hash_key: self.hash_key,
                streams: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Where one request's answer lives.
#[derive(Debug, Clone)]
struct Target {
    /// The backend key: the full Redis key, or the local cache's key.
    key: String,
    /// What follows `{prefix}:cache:` (`{hash}` or `{namespace}:{hash}`); names the lease.
    user: String,
    namespace: String,
    model: String,
    /// The request's tags and its model tag, without duplicates.
    tags: Vec<String>,
}

/// How a miss is handled after computing.
#[derive(Debug, Clone, Copy)]
struct Miss {
    /// The namespace generation the lookup saw (stored with the answer).
    generation: u64,
    /// Whether the answer is written (not no-store, and the lookup reached the cache).
    store: bool,
    /// Whether a failed write is only logged (else it is the caller's error).
    fail_open: bool,
}

/// A usable cached entry.
#[derive(Debug)]
enum Entry {
    Fresh(Envelope),
    Stale(Envelope),
}

/// What a lookup found.
#[derive(Debug, Default)]
struct Lookup {
    entry: Option<Entry>,
    /// The namespace's current generation (0 when unknown or in go-deep-agent mode).
    generation: u64,
}

impl ResponseCache {
    /// The clock the cache reads.
    pub(crate) fn shared_clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// A response cache over a [`RedisCache`] (any transport: redis-rs, HTTP, in-memory),
    /// using its prefix and default TTL unless the builder says otherwise.
    pub fn redis<T: Transport + 'static>(cache: RedisCache<T>) -> ResponseCacheBuilder {
        let scheme = cache.key_scheme().clone();
        let ttl = cache.default_ttl();
        let transport: SharedTransport = Arc::new(ViaCache(cache));
        ResponseCacheBuilder::new(
            Backend::Redis { transport },
            scheme,
            ttl,
            crate::clock::system(),
        )
    }

    /// A response cache over a local [`Cache`] such as a [`MemoryCache`](crate::MemoryCache).
    ///
    /// Namespace generations and tag invalidation times are kept in this process (there is
    /// no Redis to share them through), and analytics are this instance's own.
    pub fn local(cache: impl Cache + 'static) -> ResponseCacheBuilder {
        let clock = cache.clock().unwrap_or_else(crate::clock::system);
        ResponseCacheBuilder::new(
            Backend::Local {
                cache: Arc::new(cache),
                state: Mutex::new(LocalState::default()),
            },
            KeyScheme::default(),
            None,
            clock,
        )
    }

    /// The key and value format.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The key scheme (prefix) in use.
    pub fn key_scheme(&self) -> &KeyScheme {
        self.inner.keys.scheme()
    }

    /// The TTL of answers whose request sets none (`None`: kept until evicted).
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.default_ttl
    }

    /// Cache failures seen (each also logged); the answer was computed anyway when the
    /// cache is fail-open.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Stored values that could not be decoded, or keys holding a value of the wrong type
    /// (each was treated as a miss).
    pub fn corrupt(&self) -> u64 {
        self.inner.corrupt.load(Ordering::Relaxed)
    }

    /// The key a request's answer is stored under: the full Redis key
    /// (`{prefix}:cache:{hash}`, `{prefix}:cache:{namespace}:{hash}`) or the local cache's
    /// key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for invalid controls, or a namespace or tags in
    /// [`Mode::GoDeepAgent`].
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::response::{CacheControl, LlmRequest, ResponseCache};
    /// use larder_core::{RedisCache, testing::MemTransport};
    ///
    /// let t = MemTransport::new();
    /// let go = ResponseCache::redis(RedisCache::new(t.clone())).clock(t.shared_clock())
    ///     .go_deep_agent_compat()
    ///     .build().unwrap();
    /// let request = LlmRequest::prompt("gpt-4o-mini", "What is the capital of France?")
    ///     .system("You are a helpful assistant.")
    ///     .temperature(0.7);
    /// assert_eq!(
    ///     go.key(&request, &CacheControl::default())?,
    ///     "go-deep-agent:cache:98cfa39c5e32d1ac9ff4031d1fc08077d154354b852aac1ecd42a83baa24ed71"
    /// );
    /// # Ok::<(), larder_core::Error>(())
    /// ```
    pub fn key(&self, request: &LlmRequest, control: &CacheControl) -> Result<String> {
        Ok(self.target(request, control)?.key)
    }

    fn target(&self, request: &LlmRequest, control: &CacheControl) -> Result<Target> {
        control.validate()?;
        let namespace = control.namespace_name().to_owned();
        let model = request.model().to_owned();
        let hash = match self.inner.mode {
            Mode::GoDeepAgent => {
                if namespace != DEFAULT_NAMESPACE || !control.tags.is_empty() {
                    return Err(Error::InvalidInput(
                        "namespaces and tags need larder's envelope format; go-deep-agent \
                         compatibility mode stores raw text (use Mode::Larder)"
                            .into(),
                    ));
                }
                request.go_deep_agent_key()
            }
            Mode::Larder => match &self.inner.hash_key {
                Some(k) => request.keyed_hash(&k.for_tenant(&namespace))?,
                None => request.hash()?,
            },
        };
        let user = ResponseKeys::user_key(&namespace, &hash);
        let key = match &self.inner.backend {
            Backend::Redis { .. } => self.inner.keys.scheme().value_key(&user),
            Backend::Local { .. } => user.clone(),
        };
        let mut tags = Vec::with_capacity(control.tags.len() + 1);
        if self.inner.mode == Mode::Larder {
            tags.push(model_tag(&model));
            for t in &control.tags {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        Ok(Target {
            key,
            user,
            namespace,
            model,
            tags,
        })
    }

    /// Looks a request up without computing. Returns a fresh answer
    /// ([`Status::Hit`]) or `None`; the lookup counts as a hit or a miss.
    ///
    /// # Errors
    ///
    /// Invalid controls, and cache failures.
    pub async fn get(
        &self,
        request: &LlmRequest,
        control: &CacheControl,
    ) -> Result<Option<Fetched<LlmResponse>>> {
        let t = self.target(request, control)?;
        let started = self.inner.clock.now_ms();
        let lookup = self
            .lookup(&t, true)
            .await
            .inspect_err(|e| self.failed("get", e))?;
        let answer = match lookup.entry {
            Some(Entry::Fresh(e)) => {
                self.record_hit(&t, &e);
                Some(answer_of(e, Status::Hit, &t))
            }
            _ => {
                self.record_miss(&t);
                None
            }
        };
        self.observe("get", &t, answer.as_ref().map(|a| a.status), started);
        Ok(answer)
    }

    /// Reads a request's entry without counting it: a fresh answer as
    /// [`Status::Hit`], one past its freshness but inside the stale window as
    /// [`Status::Stale`], or `None` (absent, invalidated, expired or corrupt). For
    /// tools and admin commands (`larder get`).
    ///
    /// # Errors
    ///
    /// Invalid controls, and cache failures.
    pub async fn peek(
        &self,
        request: &LlmRequest,
        control: &CacheControl,
    ) -> Result<Option<Fetched<LlmResponse>>> {
        let t = self.target(request, control)?;
        let lookup = self.lookup(&t, true).await?;
        Ok(match lookup.entry {
            Some(Entry::Fresh(e)) => Some(answer_of(e, Status::Hit, &t)),
            Some(Entry::Stale(e)) => Some(answer_of(e, Status::Stale, &t)),
            None => None,
        })
    }

    /// Stores an answer for a request (its TTL, namespace and tags from `control`) and
    /// returns the key. In [`Mode::Larder`] over Redis this reads the namespace's generation
    /// first (one more round trip than the write inside
    /// [`try_get_with`](ResponseCache::try_get_with), which already has it).
    ///
    /// # Errors
    ///
    /// Invalid controls, and cache failures.
    pub async fn put(
        &self,
        request: &LlmRequest,
        control: &CacheControl,
        response: &LlmResponse,
    ) -> Result<String> {
        let t = self.target(request, control)?;
        let generation = if self.inner.mode == Mode::Larder {
            self.lookup(&t, false).await?.generation
        } else {
            0
        };
        self.store(&t, request, control, response, generation)
            .await?;
        Ok(t.key)
    }

    /// Deletes a request's entry. Returns whether it existed.
    ///
    /// # Errors
    ///
    /// Invalid controls, and cache failures.
    pub async fn delete(&self, request: &LlmRequest, control: &CacheControl) -> Result<bool> {
        let t = self.target(request, control)?;
        match &self.inner.backend {
            Backend::Redis { transport } => {
                let reply = transport.exec(Cmd::new("UNLINK").arg(&t.key)).await?;
                Ok(crate::transport::int("UNLINK", reply)? > 0)
            }
            Backend::Local { cache, .. } => cache.delete(&t.key).await,
        }
    }

    /// Answers a request from the cache, or computes, stores and returns the answer.
    ///
    /// - A fresh entry is a [HIT](Status::Hit) and `compute` is not called.
    /// - Otherwise `compute` runs; its answer is a [MISS](Status::Miss) and is stored
    ///   (unless [`no_store`](CacheControl::no_store)).
    /// - If `compute` fails while an entry past its freshness is still inside the
    ///   [stale window](ResponseCacheBuilder::stale_window) (or, with
    ///   [`force_refresh`](CacheControl::force_refresh), a fresh one exists), that entry is
    ///   served as [STALE](Status::Stale).
    ///
    /// # Concurrent calls on the same key
    ///
    /// See [`ResponseCache`](ResponseCache#concurrent-calls-on-the-same-key): one model
    /// call per missing answer, in this process and, through the lease, across processes.
    /// Callers that waited for another's computation get its answer as
    /// [COALESCED](Status::Coalesced).
    ///
    /// # Errors
    ///
    /// [`ComputeError::Compute`] when `compute` failed with nothing to fall back to;
    /// [`ComputeError::Cache`] for invalid controls, and for cache failures when the cache
    /// is not [fail-open](ResponseCacheBuilder::fail_open).
    pub async fn try_get_with<F, Fut, E>(
        &self,
        request: &LlmRequest,
        control: &CacheControl,
        compute: F,
    ) -> std::result::Result<Fetched<LlmResponse>, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<LlmResponse, E>>,
        E: MaybeSend + MaybeSync + 'static,
    {
        let t = self.target(request, control)?;
        let started = self.inner.clock.now_ms();
        let compat = self.inner.mode == Mode::GoDeepAgent;
        // no-cache in go-deep-agent mode needs nothing from Redis before computing.
        let skip_lookup = compat && control.no_cache;
        let (lookup, lookup_ok) = if skip_lookup {
            (Lookup::default(), true)
        } else {
            self.lookup_fail_open(&t, control).await?
        };
        let generation = lookup.generation;
        let mut fallback = None;
        match lookup.entry {
            Some(Entry::Fresh(e)) if !control.skips_read() => {
                self.record_hit(&t, &e);
                self.observe("try_get_with", &t, Some(Status::Hit), started);
                return Ok(answer_of(e, Status::Hit, &t));
            }
            Some(Entry::Fresh(e)) if control.force_refresh => fallback = Some(e),
            Some(Entry::Stale(e)) => {
                if !control.skips_read() {
                    self.record_miss(&t);
                }
                if !control.no_cache {
                    fallback = Some(e);
                }
            }
            _ => {
                if !control.skips_read() && lookup_ok {
                    self.record_miss(&t);
                }
            }
        }
        let computed = self
            .compute_path(
                &t,
                request,
                control,
                Miss {
                    generation,
                    store: !control.skips_write() && lookup_ok,
                    fail_open: self.inner.fail_open,
                },
                compute,
            )
            .await;
        match computed {
            Ok(Got::Computed(response)) => Ok(self.fresh(response, Status::Miss, &t, started)),
            Ok(Got::Joined(response)) => Ok(self.fresh(response, Status::Coalesced, &t, started)),
            Ok(Got::Found(e)) => {
                self.observe("try_get_with", &t, Some(Status::Coalesced), started);
                Ok(answer_of(e, Status::Coalesced, &t))
            }
            Ok(Got::Live(..) | Got::Remote(_)) => {
                unreachable!("answer flights never carry streams")
            }
            Err(ComputeError::Compute(err)) => match fallback {
                Some(e) => {
                    tracing::warn!(
                        key = %short(&t.key),
                        "computing the response failed; serving the stale answer"
                    );
                    self.observe("try_get_with", &t, Some(Status::Stale), started);
                    Ok(answer_of(e, Status::Stale, &t))
                }
                None => Err(ComputeError::Compute(err)),
            },
            Err(e) => Err(e),
        }
    }

    /// The answer of a computation, by this caller (MISS) or one it joined (COALESCED).
    fn fresh(
        &self,
        mut response: LlmResponse,
        status: Status,
        t: &Target,
        started: u64,
    ) -> Fetched<LlmResponse> {
        self.observe("try_get_with", t, Some(status), started);
        if response.model.is_empty() {
            response.model = t.model.clone();
        }
        Fetched::new(response, status)
    }

    /// Computes (and stores) a missing answer: the one place that decides how a miss is
    /// computed. Concurrent misses of the same key in this process share one computation;
    /// with a lease, so do misses in other processes (see [`stampede`]).
    async fn compute_path<F, Fut, E>(
        &self,
        t: &Target,
        request: &LlmRequest,
        control: &CacheControl,
        miss: Miss,
        compute: F,
    ) -> std::result::Result<Got, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<LlmResponse, E>>,
        E: MaybeSend + MaybeSync + 'static,
    {
        let Miss {
            generation,
            store: stores,
            fail_open,
        } = miss;
        // Callers that would store differently never share a computation.
        let flight = format!("{}\u{0}{}{}", t.key, u8::from(stores), u8::from(fail_open));
        let stampede = &self.inner.stampede;
        stampede
            .coalesce(&flight, compute, |compute: F| async move {
                // The lease: only when the result will be stored (else others gain nothing
                // by waiting) and Redis answered the lookup.
                // A caller that skips the read (no-cache, force-refresh) wants a new answer:
                // it may wait for another's computation, but never takes the entry it
                // found stale or invalidated.
                let accepts_cached = !control.skips_read();
                let recheck = || async move {
                    if accepts_cached {
                        self.recheck(t).await
                    } else {
                        None
                    }
                };
                let leased = if stores && stampede.has_lease() {
                    stampede
                        .acquire(&self.inner.clock, &t.user, Nap::Backoff, recheck)
                        .await
                } else {
                    Leased::Unleased
                };
                let held = match leased {
                    Leased::Found(e) => return Ok(Got::Found(e)),
                    Leased::Held(h) => Some(h),
                    Leased::Unleased => None,
                };
                let result = stampede
                    .keep_alive(&self.inner.clock, held.as_ref(), compute())
                    .await;
                let outcome = match result {
                    Ok(response) => {
                        let stored = if stores {
                            self.store(t, request, control, &response, generation).await
                        } else {
                            Ok(())
                        };
                        match stored {
                            Err(e) => {
                                self.failed("store", &e);
                                if fail_open {
                                    Ok(Got::Computed(response))
                                } else {
                                    Err(ComputeError::Cache(e))
                                }
                            }
                            Ok(()) => Ok(Got::Computed(response)),
                        }
                    }
                    Err(e) => Err(ComputeError::Compute(Arc::new(e))),
                };
                if let Some(h) = held
                    && let Err(e) = h.release().await
                {
                    self.failed("release lease", &e);
                }
                outcome
            })
            .await
    }

    /// The lookup of a get-or-compute call: a failure is the caller's error only when the
    /// cache is not fail-open; otherwise it is logged and the call goes on as a miss that
    /// is not stored (`false`).
    async fn lookup_fail_open<E>(
        &self,
        t: &Target,
        control: &CacheControl,
    ) -> std::result::Result<(Lookup, bool), ComputeError<E>> {
        match self.lookup(t, !control.no_cache).await {
            Ok(l) => Ok((l, true)),
            Err(e) => {
                self.failed("lookup", &e);
                if !self.inner.fail_open {
                    return Err(ComputeError::Cache(e));
                }
                Ok((Lookup::default(), false))
            }
        }
    }

    /// Re-reads a request's entry while waiting for another process's computation.
    async fn recheck(&self, t: &Target) -> Option<Envelope> {
        match self.lookup_counting(t, true, false).await {
            Ok(Lookup {
                entry: Some(Entry::Fresh(e)),
                ..
            }) => Some(e),
            _ => None,
        }
    }

    /// Makes every entry of a namespace a miss, in O(1): one `INCR` of the namespace's
    /// generation counter. Entries written under an older generation are ignored by every
    /// instance from the next read on (and expire with their TTL). Returns the new
    /// generation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an invalid namespace or in [`Mode::GoDeepAgent`]; cache
    /// failures.
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<u64> {
        self.larder_only("namespace invalidation")?;
        let namespace = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        control::validate_namespace(namespace)?;
        let generation = match &self.inner.backend {
            Backend::Redis { transport } => {
                let reply = transport
                    .exec(Cmd::new("INCR").arg(self.inner.keys.generation_key(namespace)))
                    .await?;
                crate::transport::int("INCR", reply)?.max(0) as u64
            }
            Backend::Local { state, .. } => {
                let mut s = state.lock();
                let g = s.generations.entry(namespace.to_owned()).or_insert(0);
                *g += 1;
                *g
            }
        };
        tracing::info!(namespace, generation, "namespace invalidated");
        Ok(generation)
    }

    /// Makes every entry tagged `tag` and written up to now a miss (lazily: one `SET` of the
    /// tag's invalidation time, which every read checks in its pipeline).
    ///
    /// Instances compare their own clocks with the invalidation time: keep them in sync
    /// (NTP); an entry written within the clock skew of the invalidation may survive it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an invalid tag or in [`Mode::GoDeepAgent`]; cache
    /// failures.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        control::validate_tag(tag)?;
        self.invalidate_tag_unchecked(tag).await
    }

    /// Makes every answer of requests for `model` written up to now a miss (the implicit
    /// tag `model:{model}` every entry carries).
    ///
    /// # Errors
    ///
    /// As [`invalidate_tag`](ResponseCache::invalidate_tag).
    pub async fn invalidate_model(&self, model: &str) -> Result<()> {
        if model.is_empty() {
            return Err(Error::InvalidInput("empty model name".into()));
        }
        self.invalidate_tag_unchecked(&model_tag(model)).await
    }

    async fn invalidate_tag_unchecked(&self, tag: &str) -> Result<()> {
        self.larder_only("tag invalidation")?;
        let now = self.inner.clock.now_ms();
        match &self.inner.backend {
            Backend::Redis { transport } => {
                let reply = transport
                    .exec(Cmd::new("SET").arg(self.inner.keys.tag_key(tag)).arg(now))
                    .await?;
                set_reply(reply)?;
            }
            Backend::Local { state, .. } => {
                state.lock().tags.insert(tag.to_owned(), now);
            }
        }
        tracing::info!(tag, at_ms = now, "tag invalidated");
        Ok(())
    }

    /// Deletes every answer whose key (after `{prefix}:cache:`) matches a glob (`*`, `?`,
    /// `[…]` as in Redis `MATCH`), with `SCAN` on every master and `UNLINK`. An admin
    /// operation: it walks the whole keyspace. Returns how many were deleted.
    ///
    /// In a namespace, keys are `{namespace}:{hash}`, so `"tenant-7:*"` deletes one
    /// namespace (but [`invalidate_namespace`](ResponseCache::invalidate_namespace) does it
    /// in O(1)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty pattern; cache failures.
    pub async fn purge_pattern(&self, glob: &str) -> Result<u64> {
        if glob.is_empty() {
            return Err(Error::InvalidInput(
                "empty pattern; use \"*\" to delete every answer under this prefix".into(),
            ));
        }
        let deleted = match &self.inner.backend {
            Backend::Redis { transport } => {
                let pattern = self.inner.keys.scheme().value_pattern(glob);
                let mut cursor = ScanCursor::START;
                let mut deleted = 0;
                loop {
                    let (next, keys) = transport.scan_page(cursor, pattern.as_bytes(), 500).await?;
                    if !keys.is_empty() {
                        let reply = transport
                            .exec(Cmd::new("UNLINK").args_from(keys.iter().map(|k| &k[..])))
                            .await?;
                        deleted += crate::transport::int("UNLINK", reply)?.max(0) as u64;
                    }
                    if next.is_done() {
                        break;
                    }
                    cursor = next;
                }
                deleted
            }
            Backend::Local { cache, .. } => cache.delete_pattern(glob).await?,
        };
        tracing::info!(pattern = glob, deleted, "answers purged");
        Ok(deleted)
    }

    /// Sends pending analytics and statistics to Redis now (one round trip; none when
    /// nothing is pending). Call it before shutdown, or periodically from a background task
    /// (`ctx.wait_until` on Workers). On failure the counts stay pending.
    ///
    /// # Errors
    ///
    /// Cache failures.
    pub async fn flush(&self) -> Result<()> {
        let Backend::Redis { transport } = &self.inner.backend else {
            return Ok(());
        };
        let batch = self.inner.recorder.take();
        if batch.is_empty() {
            return Ok(());
        }
        let cmds = batch.commands(&self.inner.keys, self.inner.analytics);
        match transport.pipeline(cmds).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.inner.recorder.restore(batch);
                let e = Error::from(e);
                self.failed("flush", &e);
                Err(e)
            }
        }
    }

    /// This instance's analytics since it was built (nothing read from Redis).
    pub fn local_analytics(&self) -> AnalyticsReport {
        self.inner.recorder.local_report()
    }

    /// The analytics of every instance sharing this prefix: flushes this instance's pending
    /// counts, then reads the per-model hashes and the `{prefix}:stats:*` counters (two
    /// round trips). For a local backend, [`local_analytics`](ResponseCache::local_analytics).
    ///
    /// # Errors
    ///
    /// Cache failures.
    pub async fn analytics(&self) -> Result<AnalyticsReport> {
        let Backend::Redis { transport } = &self.inner.backend else {
            return Ok(self.local_analytics());
        };
        let keys = &self.inner.keys;
        let batch = self.inner.recorder.take();
        let mut cmds = batch.commands(keys, self.inner.analytics);
        let flushed = cmds.len();
        cmds.push(Cmd::new("SMEMBERS").arg(keys.analytics_models_key()));
        cmds.push(
            Cmd::new("MGET").args_from(
                crate::keys::Stat::ALL
                    .iter()
                    .map(|s| keys.scheme().stats_key(*s)),
            ),
        );
        let mut replies = match transport.pipeline(cmds).await {
            Ok(r) if r.len() == flushed + 2 => r,
            Ok(r) => {
                self.inner.recorder.restore(batch);
                return Err(Error::UnexpectedReply {
                    command: "pipeline",
                    detail: format!("expected {} replies, got {}", flushed + 2, r.len()),
                });
            }
            Err(e) => {
                self.inner.recorder.restore(batch);
                return Err(e.into());
            }
        };
        let stats = mget_reply(replies.pop().expect("len checked"), 3)?;
        let read = |v: &Option<Bytes>| {
            v.as_ref()
                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
                .map_or(0, |n| n.max(0) as u64)
        };
        let stats = StatsTotals {
            hits: read(&stats[0]),
            misses: read(&stats[1]),
            writes: read(&stats[2]),
        };
        let mut models: Vec<String> =
            match crate::transport::server(replies.pop().expect("len checked"))? {
                Value::Array(items) => items
                    .iter()
                    .filter_map(|v| {
                        v.as_bytes()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                    })
                    .collect(),
                _ => Vec::new(),
            };
        models.sort();
        let mut report = AnalyticsReport {
            stats,
            ..AnalyticsReport::default()
        };
        if models.is_empty() {
            return Ok(report);
        }
        let cmds = models
            .iter()
            .map(|m| Cmd::new("HGETALL").arg(keys.analytics_key(m)))
            .collect();
        let replies = transport.pipeline(cmds).await?;
        for (model, reply) in models.into_iter().zip(replies) {
            let reply = crate::transport::server(reply)?;
            report
                .models
                .insert(model, Counts::from_hash(&reply).to_analytics());
        }
        Ok(report)
    }

    /// Resets nothing in Redis; returns an error in go-deep-agent mode for features that
    /// need envelopes.
    fn larder_only(&self, what: &str) -> Result<()> {
        if self.inner.mode == Mode::GoDeepAgent {
            return Err(Error::InvalidInput(format!(
                "{what} needs larder's envelope format; go-deep-agent compatibility mode \
                 stores raw text (use Mode::Larder)"
            )));
        }
        Ok(())
    }

    fn failed(&self, op: &'static str, e: &Error) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("larder_response_errors_total", "op" => op).increment(1);
        tracing::warn!(op, error = %e, "response cache operation failed");
    }

    fn observe(&self, op: &'static str, t: &Target, status: Option<Status>, started_ms: u64) {
        let elapsed_ms = self.inner.clock.now_ms().saturating_sub(started_ms);
        let status = status.map_or("MISS", Status::as_str);
        metrics::counter!("larder_response_lookups_total", "op" => op, "status" => status)
            .increment(1);
        metrics::histogram!("larder_response_duration_seconds", "op" => op)
            .record(elapsed_ms as f64 / 1000.0);
        tracing::debug!(
            op,
            key = %short(&t.key),
            namespace = %t.namespace,
            model = %t.model,
            status,
            elapsed_ms,
            "response cache"
        );
    }

    fn record_hit(&self, t: &Target, e: &Envelope) {
        let usage = usage_of(e);
        let cost = usage.map_or(0.0, |u| self.inner.prices.cost(&t.model, u));
        self.inner.recorder.hit(&t.model, usage, cost);
        if let Some(u) = usage {
            // Per model and namespace (a proxy's tenant): one series per pair in use.
            let labels = [
                ("model", t.model.clone()),
                ("namespace", t.namespace.clone()),
            ];
            metrics::counter!("larder_response_tokens_saved_total", &labels).increment(u.total());
            metrics::counter!("larder_response_cost_saved_nanousd_total", &labels)
                .increment((cost * 1e9).round() as u64);
        }
        if let Some(alert) = &self.inner.alert {
            alert.record(true);
        }
    }

    fn record_miss(&self, t: &Target) {
        self.inner.recorder.miss(&t.model);
        if let Some(alert) = &self.inner.alert {
            alert.record(false);
        }
    }

    /// Reads a request's entry (when `read_value`) and its namespace's generation, and
    /// decides whether the entry is usable. One round trip, plus one when the entry carries
    /// tags the request did not name.
    async fn lookup(&self, t: &Target, read_value: bool) -> Result<Lookup> {
        self.lookup_counting(t, read_value, true).await
    }

    /// [`lookup`](Self::lookup); `count` says whether a corrupt entry is counted (a re-read
    /// of an entry already counted does not count it again).
    async fn lookup_counting(&self, t: &Target, read_value: bool, count: bool) -> Result<Lookup> {
        self.lookup_with(t, read_value, count, None).await
    }

    /// [`lookup_counting`](Self::lookup_counting), with one more command sent in the same
    /// round trip to Redis (its reply goes to the `Option`; nothing is sent for a local
    /// backend).
    async fn lookup_with(
        &self,
        t: &Target,
        read_value: bool,
        count: bool,
        extra: Option<(Cmd, &mut Option<Value>)>,
    ) -> Result<Lookup> {
        let (extra_cmd, extra_out) = match extra {
            Some((c, out)) => (Some(c), Some(out)),
            None => (None, None),
        };
        let now = self.inner.clock.now_ms();
        match &self.inner.backend {
            Backend::Redis { transport } => {
                let keys = &self.inner.keys;
                let compat = self.inner.mode == Mode::GoDeepAgent;
                let mut cmds = Vec::with_capacity(3);
                if !compat {
                    cmds.push(Cmd::new("GET").arg(keys.generation_key(&t.namespace)));
                }
                if read_value {
                    cmds.push(Cmd::new("GET").arg(&t.key));
                    if !t.tags.is_empty() {
                        cmds.push(
                            Cmd::new("MGET").args_from(t.tags.iter().map(|tag| keys.tag_key(tag))),
                        );
                    }
                }
                if cmds.is_empty() {
                    return Ok(Lookup::default());
                }
                let has_extra = extra_cmd.is_some();
                cmds.extend(extra_cmd);
                let carry = self.inner.recorder.pending_events() >= self.inner.flush_every;
                let mut all = self.run(transport, cmds, carry).await?;
                if has_extra && let Some(out) = extra_out {
                    *out = all.pop();
                }
                let mut replies = all.into_iter();
                let generation = if compat {
                    0
                } else {
                    parse_generation(replies.next().expect("reply per command"))?
                };
                if !read_value {
                    return Ok(Lookup {
                        entry: None,
                        generation,
                    });
                }
                let raw = match bulk_opt("GET", replies.next().expect("reply per command")) {
                    // Another program's hash/list/… at the key: a corrupt entry, a miss.
                    Err(e) if e.is_wrong_type() => {
                        if count {
                            self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "cached key of the wrong type treated as a miss");
                        }
                        None
                    }
                    r => r?,
                };
                let mut tag_times: HashMap<&str, u64> = HashMap::new();
                if !t.tags.is_empty() {
                    let times =
                        mget_reply(replies.next().expect("reply per command"), t.tags.len())?;
                    for (tag, time) in t.tags.iter().zip(times) {
                        if let Some(ms) = time.as_deref().and_then(parse_u64) {
                            tag_times.insert(tag, ms);
                        }
                    }
                }
                let Some(envelope) = raw.and_then(|raw| self.decode(&t.key, &raw, count)) else {
                    return Ok(Lookup {
                        entry: None,
                        generation,
                    });
                };
                // Tags stored with the entry that the request did not name: one more read.
                let extra: Vec<String> = envelope
                    .tags
                    .iter()
                    .filter(|tag| !t.tags.contains(tag))
                    .cloned()
                    .collect();
                let mut extra_times: HashMap<String, u64> = HashMap::new();
                if !extra.is_empty() {
                    let reply = transport
                        .exec(Cmd::new("MGET").args_from(extra.iter().map(|tag| keys.tag_key(tag))))
                        .await?;
                    for (tag, time) in extra.iter().zip(mget_reply(reply, extra.len())?) {
                        if let Some(ms) = time.as_deref().and_then(parse_u64) {
                            extra_times.insert(tag.clone(), ms);
                        }
                    }
                }
                let tag_time =
                    |tag: &str| tag_times.get(tag).or_else(|| extra_times.get(tag)).copied();
                let entry = classify(envelope, generation, compat, t, &tag_time, now);
                Ok(Lookup { entry, generation })
            }
            Backend::Local { cache, state } => {
                let compat = self.inner.mode == Mode::GoDeepAgent;
                let generation = if compat {
                    0
                } else {
                    state
                        .lock()
                        .generations
                        .get(&t.namespace)
                        .copied()
                        .unwrap_or(0)
                };
                if !read_value {
                    return Ok(Lookup {
                        entry: None,
                        generation,
                    });
                }
                let raw = match cache.get(&t.key).await {
                    Err(e) if e.is_wrong_type() => {
                        if count {
                            self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "cached key of the wrong type treated as a miss");
                        }
                        None
                    }
                    r => r?,
                };
                let Some(envelope) = raw.and_then(|raw| self.decode(&t.key, &raw, count)) else {
                    return Ok(Lookup {
                        entry: None,
                        generation,
                    });
                };
                let tags = state.lock().tags.clone();
                let tag_time = |tag: &str| tags.get(tag).copied();
                let entry = classify(envelope, generation, compat, t, &tag_time, now);
                Ok(Lookup { entry, generation })
            }
        }
    }

    fn decode(&self, key: &str, raw: &[u8], count: bool) -> Option<Envelope> {
        let opened;
        let raw = match &self.inner.keyring {
            None => raw,
            Some(ring) => match ring.open(key.as_bytes(), raw) {
                Some(plain) => {
                    opened = plain;
                    &opened[..]
                }
                None => {
                    if count {
                        self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            sealed = crate::seal::is_sealed(raw),
                            "a cached value that does not open with this keyring treated as a miss"
                        );
                    }
                    return None;
                }
            },
        };
        match Envelope::decode(raw) {
            Decoded::Envelope(e) | Decoded::Legacy(e) => Some(e),
            Decoded::Corrupt(why) => {
                if count {
                    self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%why, "undecodable cached value treated as a miss");
                }
                None
            }
        }
    }

    /// Writes an answer. Counts the write first so that it travels in this pipeline.
    async fn store(
        &self,
        t: &Target,
        request: &LlmRequest,
        control: &CacheControl,
        response: &LlmResponse,
        generation: u64,
    ) -> Result<()> {
        self.store_recorded(t, request, control, response, generation, None)
            .await
    }

    /// Writes an answer, with the events of the stream it came from.
    async fn store_recorded(
        &self,
        t: &Target,
        request: &LlmRequest,
        control: &CacheControl,
        response: &LlmResponse,
        generation: u64,
        stream: Option<crate::stream::Recording>,
    ) -> Result<()> {
        let now = self.inner.clock.now_ms();
        let ttl = control.ttl.or(self.inner.default_ttl);
        let stale = self.inner.stale_window;
        let total_ttl = ttl.map(|d| d + stale.unwrap_or_default());
        let bytes = match self.inner.mode {
            Mode::GoDeepAgent => Bytes::from(response.text.clone()),
            Mode::Larder => {
                let model = if response.model.is_empty() {
                    t.model.as_str()
                } else {
                    response.model.as_str()
                };
                let mut e = Envelope::new(response.text.clone(), model, (now / 1000) as i64);
                if let Some(temp) = request.body().get("temperature")
                    && !temp.is_null()
                {
                    e = e.with_metadata(meta::TEMPERATURE, temp.clone());
                }
                if let Some(u) = response.usage {
                    e = e
                        .with_metadata(meta::PROMPT_TOKENS, u.prompt_tokens)
                        .with_metadata(meta::COMPLETION_TOKENS, u.completion_tokens);
                }
                for (k, v) in &response.metadata {
                    e.metadata.entry(k.clone()).or_insert_with(|| v.clone());
                }
                if generation != 0 {
                    e = e.with_metadata(meta::GENERATION, generation);
                }
                e = e.with_metadata(meta::CREATED_MS, now);
                let fresh_until = ttl.map(|d| now.saturating_add(duration_ms(d)));
                let stale_until = match (fresh_until, stale) {
                    (Some(f), Some(s)) => Some(f.saturating_add(duration_ms(s))),
                    _ => None,
                };
                e.stream = stream;
                let plain = e
                    .with_windows(fresh_until, stale_until)
                    .with_tags(control.tags.iter().cloned())
                    .encode();
                match &self.inner.keyring {
                    Some(ring) => Bytes::from(ring.seal(t.key.as_bytes(), &plain)?),
                    None => plain,
                }
            }
        };
        let provider_cache = |k: &str| response.metadata.get(k).and_then(Json::as_u64);
        self.inner.recorder.write(
            &t.model,
            provider_cache(meta::CACHE_READ_TOKENS).unwrap_or(0),
            provider_cache(meta::CACHE_WRITE_TOKENS).unwrap_or(0),
        );
        match &self.inner.backend {
            Backend::Redis { transport } => {
                let cmd = SetOptions::ttl(total_ttl).command(t.key.as_bytes(), &bytes);
                let reply = self.run(transport, vec![cmd], true).await?;
                set_reply(reply.into_iter().next().expect("one reply"))?;
            }
            Backend::Local { cache, .. } => cache.set(&t.key, bytes, total_ttl).await?,
        }
        Ok(())
    }

    /// Runs `cmds` in one round trip, with the pending analytics appended when `carry`.
    /// Returns the replies to `cmds` only.
    async fn run(
        &self,
        transport: &SharedTransport,
        mut cmds: Vec<Cmd>,
        carry: bool,
    ) -> Result<Vec<Value>> {
        let n = cmds.len();
        let batch = if carry {
            self.inner.recorder.take()
        } else {
            Default::default()
        };
        cmds.extend(batch.commands(&self.inner.keys, self.inner.analytics));
        let result = if cmds.len() == 1 {
            let cmd = cmds.pop().expect("one command");
            transport.exec(cmd).await.map(|v| vec![v])
        } else {
            transport.pipeline(cmds).await
        };
        match result {
            Ok(mut replies) if replies.len() >= n => {
                replies.truncate(n);
                Ok(replies)
            }
            Ok(replies) => {
                self.inner.recorder.restore(batch);
                Err(Error::UnexpectedReply {
                    command: "pipeline",
                    detail: format!("expected {n} replies, got {}", replies.len()),
                })
            }
            Err(e) => {
                self.inner.recorder.restore(batch);
                Err(e.into())
            }
        }
    }
}

/// Decides whether an entry is usable: same generation, written after every tag's
/// invalidation, and fresh or inside its stale window.
fn classify(
    e: Envelope,
    generation: u64,
    compat: bool,
    t: &Target,
    tag_time: &dyn Fn(&str) -> Option<u64>,
    now: u64,
) -> Option<Entry> {
    if !compat {
        let entry_gen = e
            .metadata
            .get(meta::GENERATION)
            .and_then(Json::as_u64)
            .unwrap_or(0);
        if entry_gen != generation {
            return None;
        }
        let created = e
            .metadata
            .get(meta::CREATED_MS)
            .and_then(Json::as_u64)
            .unwrap_or_else(|| u64::try_from(e.timestamp).unwrap_or(0).saturating_mul(1000));
        let invalidated = t
            .tags
            .iter()
            .chain(e.tags.iter())
            .filter_map(|tag| tag_time(tag))
            .any(|at| created <= at);
        if invalidated {
            return None;
        }
    }
    if e.is_fresh(now) {
        Some(Entry::Fresh(e))
    } else if e.is_stale_servable(now) {
        Some(Entry::Stale(e))
    } else {
        None
    }
}

fn answer_of(e: Envelope, status: Status, t: &Target) -> Fetched<LlmResponse> {
    let stored_at_ms = e.stored_at_ms();
    let mut response = LlmResponse::from_envelope(e);
    if response.model.is_empty() {
        response.model = t.model.clone();
    }
    Fetched {
        value: response,
        status,
        stored_at_ms,
    }
}

fn usage_of(e: &Envelope) -> Option<Usage> {
    let p = e.metadata.get(meta::PROMPT_TOKENS).and_then(Json::as_u64);
    let c = e
        .metadata
        .get(meta::COMPLETION_TOKENS)
        .and_then(Json::as_u64);
    (p.is_some() || c.is_some()).then(|| Usage::new(p.unwrap_or(0), c.unwrap_or(0)))
}

fn parse_generation(v: Value) -> Result<u64> {
    match bulk_opt("GET", v)? {
        None => Ok(0),
        Some(b) => parse_u64(&b).ok_or_else(|| Error::UnexpectedReply {
            command: "GET",
            detail: format!(
                "namespace generation is not a number: {:?}",
                String::from_utf8_lossy(&b)
            ),
        }),
    }
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// The start of a key's hash, for logs (never the whole key).
fn short(key: &str) -> &str {
    let hash = key.rsplit(':').next().unwrap_or(key);
    &hash[..hash.len().min(12)]
}
