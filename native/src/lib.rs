//! larder-native: what larder needs on a native (tokio) runtime.
//!
//! - [`RedisTransport`]: larder's `Transport` on redis-rs 1.8 for a standalone server, a
//!   Redis Cluster or a Sentinel-managed master, with bounded calls while Redis is down,
//!   slot-aware pipelines and scans on every master, failover following, and pub/sub (one
//!   shared, self-healing subscription connection; [`PubSubStatus`]) for stampede wake-ups
//!   and the tiered cache's backplane.
//! - [`RedisOptions`]: how to reach Redis — [`Servers`] (standalone, Cluster, Sentinel),
//!   credentials, pool and timeouts. A Redis cache is
//!   `RedisCache::builder(RedisTransport::from_options(&opts).await?)` (or
//!   `RedisTransport::connect(url)`), with the prefix and TTL on the cache's builder.
//!
//! ```no_run
//! # async fn demo() -> larder_core::Result<()> {
//! use larder_core::{Cache, RedisCache};
//! use larder_native::RedisTransport;
//!
//! let cache = RedisCache::builder(RedisTransport::connect("redis://127.0.0.1:6379").await?)
//!     .prefix("myapp")
//!     .build()?;
//! cache.set("greeting", "hello".into(), None).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
// No unsafe code; only the test harness (`testing`, behind `test-util`) signals processes.
#![cfg_attr(not(any(test, feature = "test-util")), forbid(unsafe_code))]
#![cfg_attr(any(test, feature = "test-util"), deny(unsafe_code))]

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "gateway")]
pub mod gateway;
mod options;
#[cfg(feature = "proxy")]
pub mod proxy;
mod runtime;
#[cfg(feature = "gateway")]
mod server;
#[cfg(any(test, feature = "test-util"))]
#[allow(unsafe_code)]
pub mod testing;
pub mod transport;

pub use larder_core as core;
pub use options::{
    DEFAULT_DIAL_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    RedisOptions, Servers, TlsOptions,
};
pub use runtime::TokioRuntime;
pub use transport::{PubSubStatus, RedisTransport, Topology};
