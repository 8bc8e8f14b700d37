//! larder-native: what larder needs on a native (tokio) runtime.
//!
//! Today: [`SystemClock`], the wall clock and tokio timer that native caches use. The
//! redis-rs transport (standalone, Cluster, Sentinel), the HTTP gateway and the `larder` CLI
//! are built here next.

#![deny(missing_docs)]

mod clock;

pub use clock::SystemClock;
pub use larder_core as core;
