//! larder-edge: the Redis-over-HTTP (Upstash REST dialect) transport for Cloudflare Workers.
//!
//! This crate is being built up; see the project issues.

pub use larder_core as core;
