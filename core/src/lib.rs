//! larder-core: the runtime-agnostic heart of larder.
//!
//! Everything that decides lives here and compiles to `wasm32-unknown-unknown`: the key
//! scheme, the value envelope, the memory tier (W-TinyLFU + TTL), the [`Cache`] trait and
//! the Redis cache written over a [`Transport`]. There is no I/O, no async runtime and no
//! system clock in this crate: adapters (`larder-native`, `larder-edge`) bring a
//! [`Transport`] and a [`Clock`].

#![deny(missing_docs)]
// The memory tier's index entry (`memory/entry.rs`) is the one exception, allowed there.
#![deny(unsafe_code)]

pub mod breaker;
pub mod cache;
pub mod clock;
pub mod compute;
pub mod envelope;
pub mod error;
pub mod fallback;
pub mod keys;
pub mod memory;
pub mod observe;
pub mod proxy;
pub mod redis;
pub mod response;
pub mod rest;
pub mod runtime;
pub mod seal;
pub mod stream;
pub mod tiered;
pub mod tools;
pub mod transport;
pub mod value;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use bytes::Bytes;
pub use cache::{Cache, CacheExt, CacheStats, KeyTtl, SharedStats};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use compute::{ComputeCache, ComputeCacheBuilder, ComputeError, Fetched, RedisLock, Status};
pub use envelope::{Decoded, Envelope};
pub use error::{Error, ErrorKind, Result, TransportError};
pub use keys::{KeyScheme, Stat, canonical_json, go_deep_agent_key, request_hash};
pub use memory::{MemoryCache, MemoryCacheBuilder};
pub use redis::{RedisCache, RedisCacheBuilder};
pub use response::{CacheControl, LlmRequest, LlmResponse, ResponseCache, Usage};
pub use tiered::{Backplane, TieredCache, TieredCacheBuilder};
pub use transport::{
    Commands, MaybeSend, MaybeSync, ScanCursor, Script, SetOptions, SharedTransport, Transport,
};
pub use value::{Cmd, IntoArg, Value};
