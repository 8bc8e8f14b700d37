//! The gateway against real Redis servers: the dialect, security, health and shutdown, the
//! edge transport through it, and the `larder gateway` binary.
//!
//! Every test starts its own `redis-server` (on a free port, through
//! `larder_native::testing`) and its own gateway on `127.0.0.1:0`.

mod support;

mod attacks;
mod cache;
mod cli;
mod dialect;
mod hostile;
mod js;
mod lifecycle;
mod limits;
mod security;
mod subscribe;
mod upstash;
mod worker;
