//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not a stable API.
//!
//! They expose the crate-private conversions that stand between a Redis server's replies and
//! larder's core, so that `fuzz/` can drive them with hostile input.

use larder_core::{TransportError, Value};

/// What the transport makes of one redis-rs reply (see `transport::convert`).
pub fn from_redis_value(v: redis::Value) -> Value {
    crate::transport::convert::from_redis_value(v)
}

/// The transport error a reply to `cmd` stands for when the server cannot serve now, if any.
pub fn unavailable_reply(cmd: &larder_core::Cmd, v: &Value) -> Option<TransportError> {
    crate::transport::convert::unavailable_reply(cmd, v)
}
