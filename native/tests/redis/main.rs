//! larder-native against real Redis processes (started by `larder_native::testing`):
//! behaviour of the redis-rs transport per topology, and fault tests, each named for the
//! fault it injects.
//!
//! Every test starts its own servers, so tests run in parallel without sharing state.

mod cluster;
mod common;
mod response;
mod sentinel;
mod standalone;
#[cfg(feature = "tls")]
mod tls;
