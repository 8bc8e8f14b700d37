//! # larder
//!
//! A cache for LLM and agent responses that runs the same logic natively and on Cloudflare
//! Workers. This facade re-exports [`larder_core`] (every decision: keys, envelope, memory
//! LRU+TTL, the [`Cache`] trait, the Redis cache over a [`Transport`]) and, by default,
//! [`larder_native`] (the tokio clock and, as it grows, the redis-rs transport); the `edge`
//! feature adds `larder_edge`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> larder::Result<()> {
//! use larder::{Cache, MemoryCache, SystemClock, request_hash};
//! use std::time::Duration;
//!
//! let cache = MemoryCache::builder(SystemClock::shared())
//!     .max_entries(10_000)
//!     .default_ttl(Some(Duration::from_secs(3600)))
//!     .build();
//! let key = request_hash(&serde_json::json!({"model": "gpt-4o-mini", "prompt": "Hi"}))?;
//! cache.set(&key, "Hello!".into(), None).await?;
//! assert_eq!(cache.get(&key).await?.as_deref(), Some(&b"Hello!"[..]));
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

/// The README's code, compiled as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use larder_core::*;

#[cfg(feature = "native")]
pub use larder_native::{
    self as native, CacheBuilder, RedisCacheExt, RedisCacheOptions, RedisTransport,
    SentinelOptions, SystemClock,
};

#[cfg(feature = "edge")]
pub use larder_edge as edge;
