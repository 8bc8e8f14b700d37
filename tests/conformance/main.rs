//! The conformance suite: one set of behaviours every [`larder::Cache`] backend over a
//! [`larder::Transport`] must show, written once and run unchanged per transport.
//!
//! Each backend module instantiates [`conformance_tests!`] with an expression that yields a
//! [`suite::Backend`]; every case becomes a `#[tokio::test]` named `<backend>::<case>`.

#[macro_use]
mod suite;
mod cluster;
mod edge;
mod mem;
mod sentinel;
mod standalone;
mod streams;
