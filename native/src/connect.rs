//! Building caches: [`RedisCacheExt`] (`RedisCache::connect(url)` and friends) and
//! [`CacheBuilder`], the seed's builder API.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use larder_core::keys::KeyScheme;
use larder_core::observe::Instrumented;
use larder_core::{Cache, Error, MemoryCache, RedisCache, Result};

use crate::options::{RedisCacheOptions, SentinelOptions};
use crate::transport::RedisTransport;

/// Constructors of a [`RedisCache`] over the redis-rs [`RedisTransport`].
///
/// `RedisCache` lives in `larder-core`, which does no I/O; this trait adds the constructors
/// that connect. It is implemented only for `RedisCache<RedisTransport>`, so
/// `RedisCache::connect(url)` needs no type annotation.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> larder_core::Result<()> {
/// use larder_core::{Cache, RedisCache};
/// use larder_native::{RedisCacheExt, RedisCacheOptions};
/// use std::time::Duration;
///
/// // A URL…
/// let cache = RedisCache::connect("redis://127.0.0.1:6379/0").await?;
/// // …the seed's four arguments…
/// let cache = RedisCache::new_redis("127.0.0.1:6379", "", 0, Some(Duration::from_secs(3600))).await?;
/// // …or every option.
/// let cache = RedisCache::from_options(
///     RedisCacheOptions::cluster(["10.0.0.1:7000", "10.0.0.2:7000"]).key_prefix("myapp"),
/// )
/// .await?;
/// cache.set("k", "v".into(), None).await?;
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait RedisCacheExt: Sized {
    /// Connects to the Redis a URL names (see [`RedisTransport::connect`]), with the default
    /// prefix and no default TTL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a malformed URL; [`Error::Transport`] when Redis cannot be
    /// reached or refuses the credentials.
    async fn connect(url: &str) -> Result<Self>;

    /// Connects like the seed's `NewRedisCache(addr, password, db, defaultTTL)`: `addr` is
    /// `host:port`, an empty `password` means none.
    ///
    /// # Errors
    ///
    /// As [`connect`](RedisCacheExt::connect).
    async fn new_redis(
        addr: &str,
        password: &str,
        db: i64,
        default_ttl: Option<Duration>,
    ) -> Result<Self>;

    /// Connects as the options say (standalone or Cluster), with their prefix and TTL.
    ///
    /// # Errors
    ///
    /// As [`RedisTransport::from_options`]; also [`Error::InvalidInput`] for a prefix with
    /// `{` or `}`.
    async fn from_options(opts: RedisCacheOptions) -> Result<Self>;

    /// Connects to the master of a Sentinel deployment and follows its failovers.
    ///
    /// # Errors
    ///
    /// As [`RedisTransport::from_sentinel`]; also [`Error::InvalidInput`] for a prefix with
    /// `{` or `}`.
    async fn from_sentinel(opts: SentinelOptions) -> Result<Self>;
}

#[async_trait::async_trait]
impl RedisCacheExt for RedisCache<RedisTransport> {
    async fn connect(url: &str) -> Result<Self> {
        let transport = RedisTransport::connect(url).await?;
        Ok(RedisCache::new(transport))
    }

    async fn new_redis(
        addr: &str,
        password: &str,
        db: i64,
        default_ttl: Option<Duration>,
    ) -> Result<Self> {
        let mut opts = RedisCacheOptions::new(addr).password(password).db(db);
        opts.default_ttl = default_ttl.filter(|d| !d.is_zero());
        RedisCache::from_options(opts).await
    }

    async fn from_options(opts: RedisCacheOptions) -> Result<Self> {
        let keys = KeyScheme::new(&opts.key_prefix)?;
        let transport = RedisTransport::from_options(&opts).await?;
        let mut cache = RedisCache::builder(transport).key_scheme(keys);
        if let Some(ttl) = opts.default_ttl {
            cache = cache.default_ttl(ttl);
        }
        cache.build()
    }

    async fn from_sentinel(opts: SentinelOptions) -> Result<Self> {
        let keys = KeyScheme::new(&opts.key_prefix)?;
        let transport = RedisTransport::from_sentinel(&opts).await?;
        let mut cache = RedisCache::builder(transport).key_scheme(keys);
        if let Some(ttl) = opts.default_ttl {
            cache = cache.default_ttl(ttl);
        }
        cache.build()
    }
}

/// Entries of the memory cache [`CacheBuilder`] builds when no backend is chosen.
pub const DEFAULT_MEMORY_CAPACITY: usize = 10_000;

enum Backend {
    Memory {
        capacity: usize,
        ttl: Option<Duration>,
    },
    Redis(RedisCacheOptions),
    Sentinel(SentinelOptions),
    Custom(Arc<dyn Cache>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Memory { capacity, ttl } => f
                .debug_struct("Memory")
                .field("capacity", capacity)
                .field("ttl", ttl)
                .finish(),
            Backend::Redis(o) => f.debug_tuple("Redis").field(o).finish(),
            Backend::Sentinel(o) => f.debug_tuple("Sentinel").field(o).finish(),
            Backend::Custom(c) => f.debug_tuple("Custom").field(c).finish(),
        }
    }
}

/// Builds a cache the way the seed's builder does, as an `Arc<dyn Cache>`.
///
/// Choose one backend — [`redis`](CacheBuilder::redis),
/// [`redis_options`](CacheBuilder::redis_options),
/// [`redis_sentinel`](CacheBuilder::redis_sentinel), [`memory`](CacheBuilder::memory) or any
/// [`cache`](CacheBuilder::cache) — (the last one chosen wins; with none, a memory cache of
/// [`DEFAULT_MEMORY_CAPACITY`] entries), optionally a default [`ttl`](CacheBuilder::ttl),
/// then [`build`](CacheBuilder::build).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_core::Result<()> {
/// use larder_native::CacheBuilder;
/// use std::time::Duration;
///
/// let cache = CacheBuilder::new()
///     .memory(1_000, Duration::from_secs(60))
///     .build()
///     .await?;
/// cache.set("greeting", "hello".into(), None).await?;
/// assert_eq!(cache.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    backend: Backend,
    ttl: Option<Duration>,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder::new()
    }
}

impl CacheBuilder {
    /// A builder with no backend chosen yet.
    pub fn new() -> Self {
        CacheBuilder {
            backend: Backend::Memory {
                capacity: DEFAULT_MEMORY_CAPACITY,
                ttl: None,
            },
            ttl: None,
        }
    }

    /// Redis at `addr` (`host:port` or a URL); an empty `password` means none.
    pub fn redis(self, addr: &str, password: &str, db: i64) -> Self {
        self.redis_options(RedisCacheOptions::new(addr).password(password).db(db))
    }

    /// Redis (standalone or Cluster) with every option.
    pub fn redis_options(mut self, opts: RedisCacheOptions) -> Self {
        self.backend = Backend::Redis(opts);
        self
    }

    /// A Sentinel-managed master.
    pub fn redis_sentinel(mut self, opts: SentinelOptions) -> Self {
        self.backend = Backend::Sentinel(opts);
        self
    }

    /// An in-process LRU of `capacity` entries whose entries expire after `ttl` by default
    /// (zero: never).
    pub fn memory(mut self, capacity: usize, ttl: Duration) -> Self {
        self.backend = Backend::Memory {
            capacity,
            ttl: Some(ttl).filter(|d| !d.is_zero()),
        };
        self
    }

    /// Any cache, used as is ([`ttl`](CacheBuilder::ttl) does not apply to it).
    pub fn cache(mut self, cache: impl Cache + 'static) -> Self {
        self.backend = Backend::Custom(Arc::new(cache));
        self
    }

    /// The TTL of writes that pass none, overriding the backend's (zero: never expire).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Builds the cache, connecting to Redis when a Redis backend was chosen.
    ///
    /// # Errors
    ///
    /// As [`RedisCacheExt::from_options`] / [`RedisCacheExt::from_sentinel`] for Redis
    /// backends; [`Error::InvalidInput`] for a memory capacity of 0.
    pub async fn build(self) -> Result<Arc<dyn Cache>> {
        let ttl_override = self.ttl.map(|d| Some(d).filter(|d| !d.is_zero()));
        Ok(match self.backend {
            Backend::Memory { capacity, ttl } => {
                if capacity == 0 {
                    return Err(Error::InvalidInput(
                        "memory cache capacity must be at least 1 entry".into(),
                    ));
                }
                let mut memory = MemoryCache::builder().max_entries(capacity);
                if let Some(ttl) = ttl_override.unwrap_or(ttl) {
                    memory = memory.default_ttl(ttl);
                }
                Arc::new(memory.build()?)
            }
            Backend::Redis(mut opts) => {
                if let Some(ttl) = ttl_override {
                    opts.default_ttl = ttl;
                }
                let (tracing, metrics) = (opts.enable_tracing, opts.enable_metrics);
                instrumented(RedisCache::from_options(opts).await?, tracing, metrics)
            }
            Backend::Sentinel(mut opts) => {
                if let Some(ttl) = ttl_override {
                    opts.default_ttl = ttl;
                }
                let (tracing, metrics) = (opts.enable_tracing, opts.enable_metrics);
                instrumented(RedisCache::from_sentinel(opts).await?, tracing, metrics)
            }
            Backend::Custom(cache) => cache,
        })
    }
}

/// The cache, wrapped in [`Instrumented`] (a span and metrics per cache operation, on top
/// of the transport's per-call ones) when the options ask for tracing or metrics.
fn instrumented(cache: impl Cache + 'static, tracing: bool, metrics: bool) -> Arc<dyn Cache> {
    if tracing || metrics {
        Arc::new(
            Instrumented::new(cache)
                .name("redis")
                .tracing(tracing)
                .metrics(metrics),
        )
    } else {
        Arc::new(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_core::KeyTtl;

    #[tokio::test]
    async fn memory_backend_with_ttl_override() {
        let cache = CacheBuilder::new()
            .memory(10, Duration::from_secs(60))
            .ttl(Duration::from_secs(5))
            .build()
            .await
            .unwrap();
        cache.set("k", "v".into(), None).await.unwrap();
        match cache.ttl("k").await.unwrap() {
            KeyTtl::ExpiresIn(d) => assert!(d <= Duration::from_secs(5), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn custom_cache_is_used_as_is_and_zero_capacity_is_refused() {
        let mem = MemoryCache::builder().max_entries(5).build().unwrap();
        let cache = CacheBuilder::new().cache(mem).build().await.unwrap();
        cache.set("k", "v".into(), None).await.unwrap();
        assert_eq!(cache.ttl("k").await.unwrap(), KeyTtl::NoExpiry);
        let err = CacheBuilder::new()
            .memory(0, Duration::ZERO)
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
    }

    #[tokio::test]
    async fn bad_prefix_is_invalid_input() {
        let err = RedisCache::from_options(RedisCacheOptions::new("127.0.0.1:1").key_prefix("{x}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }
}
