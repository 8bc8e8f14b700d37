//! # larder
//!
//! A cache for LLM and agent responses that runs the same logic natively and on Cloudflare
//! Workers. This facade re-exports [`larder_core`] (every decision: keys, envelope, memory
//! W-TinyLFU+TTL, get-or-compute, the response cache, the [`Cache`] trait, the Redis cache over a
//! [`Transport`]); the `native` feature adds `larder_native` (the redis-rs transport), the
//! `edge` feature `larder_edge` (Redis over HTTP), the `rig` feature [`rig`] (rig models and
//! tools cached).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> larder::Result<()> {
//! use larder::{Cache, MemoryCache, request_hash};
//! use std::time::Duration;
//!
//! let cache = MemoryCache::builder()
//!     .max_entries(10_000)
//!     .default_ttl(Duration::from_secs(3600))
//!     .build()?;
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

/// docs/CACHING_GUIDE.md's code, compiled as a doctest.
#[doc = include_str!("../docs/CACHING_GUIDE.md")]
#[cfg(doctest)]
pub struct CachingGuideDoctests;

/// docs/REDIS_DEPLOYMENT.md's code, compiled as a doctest.
#[doc = include_str!("../docs/REDIS_DEPLOYMENT.md")]
#[cfg(doctest)]
pub struct RedisDeploymentDoctests;

/// docs/KEY_FORMAT.md's code, compiled as a doctest.
#[doc = include_str!("../docs/KEY_FORMAT.md")]
#[cfg(doctest)]
pub struct KeyFormatDoctests;

/// docs/SECURITY.md's code, compiled as a doctest.
#[doc = include_str!("../docs/SECURITY.md")]
#[cfg(doctest)]
pub struct SecurityDoctests;

/// docs/FUZZING.md's code, compiled as a doctest.
#[doc = include_str!("../docs/FUZZING.md")]
#[cfg(doctest)]
pub struct FuzzingDoctests;

pub use larder_core::*;

#[cfg(feature = "native")]
pub use larder_native::{self as native, RedisOptions, RedisTransport, Servers};

#[cfg(feature = "edge")]
pub use larder_edge as edge;

#[cfg(feature = "rig")]
pub mod rig;
