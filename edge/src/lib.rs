//! larder-edge: Redis over HTTP (the Upstash REST dialect) for Cloudflare Workers.
//!
//! [`RestTransport`] is a `larder_core::Transport`, so a `RedisCache` over it is the very
//! same cache as natively — same keys, same envelope, same statistics — reached with one
//! HTTP request per cache operation:
//!
//! - on `wasm32` with the `worker` feature (default) requests go through the Workers
//!   runtime's `fetch` (`FetchClient`);
//! - with the `native-client` feature they go through reqwest (`ReqwestClient`): for
//!   Upstash from servers and Lambda-style functions, and to test the edge logic natively;
//! - any other client plugs in through [`HttpClient`].
//!
//! The server is Upstash itself or `larder gateway` (in `larder-native`) in front of a
//! self-hosted Redis, standalone, Cluster or Sentinel. The wire format lives in
//! `larder_core::rest`, shared with the gateway.
//!
//! # Examples
//!
//! In a Worker (`examples/edge-worker/` is a complete one):
//!
//! ```ignore
//! use larder_core::{Cache, RedisCache};
//! use larder_edge::RestTransport;
//!
//! #[worker::event(fetch)]
//! async fn fetch(req: worker::Request, env: worker::Env, _ctx: worker::Context) -> worker::Result<worker::Response> {
//!     let transport = RestTransport::from_worker_env(&env).map_err(|e| e.to_string())?;
//!     let cache = RedisCache::builder(transport).prefix("myapp").build().unwrap();
//!     let hit = cache.get("greeting").await.map_err(|e| e.to_string())?;
//!     worker::Response::ok(format!("{hit:?}"))
//! }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod http;
mod subscriptions;
mod transport;

#[cfg(all(not(target_arch = "wasm32"), feature = "native-client"))]
mod native;
#[cfg(all(target_arch = "wasm32", feature = "worker"))]
mod workers;

pub use http::{ByteStream, HttpClient, HttpRequest, HttpResponse, HttpStream};
pub use larder_core as core;
pub use transport::{
    BASE64_ARGS_ENV, ConfigError, RestTransport, RestTransportBuilder, TOKEN_ENV, URL_ENV,
};

#[cfg(all(not(target_arch = "wasm32"), feature = "native-client"))]
pub use native::{DEFAULT_STREAM_IDLE_TIMEOUT, ReqwestClient};
#[cfg(all(target_arch = "wasm32", feature = "worker"))]
pub use workers::{FetchClient, WaitUntil};
