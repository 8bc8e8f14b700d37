//! Replies coming back from Redis: RESP bytes parsed by redis-rs, converted by the native
//! transport (`transport::convert`), then read by `RedisCache`.
//!
//! The input is a stream of RESP2/RESP3 frames (as a hostile or broken server could send).
//! Each parsed frame becomes a core `Value` the way the native transport converts it, and a
//! scripted transport answers the cache's commands with those values, in order (`Nil` once
//! they run out; a pipeline gets as many values as it has commands, as the native transport
//! guarantees, unless the input starts with `!` (one reply too few) or `?` (one too many):
//! a transport that breaks that contract must not break the cache either). Invariants: nothing panics or hangs, whatever the replies; a value the
//! cache returns from `get` is one of the bulk strings it was given.

use std::collections::VecDeque;
use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use larder_core::{Cache, CacheExt, Cmd, RedisCache, Transport, TransportError, Value};
use larder_native::fuzzing::{from_redis_value, unavailable_reply};
use parking_lot_shim::Mutex;

/// At most this many frames are parsed from one input.
const MAX_FRAMES: usize = 64;

/// Parses the frames in `data`, converts them and feeds them to a cache.
pub fn check(data: &[u8]) {
    let (skew, data) = match data.split_first() {
        Some((b'!', rest)) => (-1, rest),
        Some((b'?', rest)) => (1, rest),
        _ => (0, data),
    };
    let mut parser = redis::Parser::new();
    let mut cursor = Cursor::new(data);
    let mut replies = VecDeque::new();
    while replies.len() < MAX_FRAMES && (cursor.position() as usize) < data.len() {
        match parser.parse_value(&mut cursor) {
            Ok(v) => replies.push_back(from_redis_value(v)),
            Err(_) => break,
        }
    }
    for v in &replies {
        let _ = unavailable_reply(&Cmd::new("GET").arg("k"), v);
        let _ = (v.as_bytes(), v.as_int(), v.is_ok(), format!("{v:?}"));
    }
    let given: Vec<Bytes> = replies.iter().flat_map(bulks).collect();
    let transport = Scripted {
        replies: Mutex::new(replies),
        skew,
    };
    let cache = RedisCache::builder(transport)
        .stats_batch(1)
        .scan_count(10)
        .build().unwrap();
    crate::runtime().block_on(async {
        let found = |b: &Bytes| assert!(given.contains(b), "value {b:?} was never sent");
        if let Ok(Some(v)) = cache.get("k").await {
            found(&v);
        }
        if let Ok(Some((v, _))) = cache.get_with_ttl("k").await {
            found(&v);
        }
        if let Ok(vs) = cache.mget(&["a", "b", "c"]).await {
            assert_eq!(vs.len(), 3, "one answer per key");
            vs.iter().flatten().for_each(found);
        }
        let _ = cache.get_envelope("k").await;
        let _ = cache.exists("k").await;
        let _ = cache.ttl("k").await;
        let _ = cache.set_nx("k", Bytes::from_static(b"v"), None).await;
        let _ = cache
            .set("k", Bytes::from_static(b"v"), Some(Duration::from_secs(1)))
            .await;
        let _ = cache.expire("k", Duration::from_millis(1500)).await;
        let _ = cache.delete("k").await;
        let _ = cache.stats().await;
        let _ = cache.delete_pattern("*").await;
        let _ = cache.clear().await;
        let _ = cache.flush_stats().await;
        let _ = cache.ping().await;
    });
}

/// Every bulk string in a reply, at any depth (what a cache may legitimately return).
fn bulks(v: &Value) -> Vec<Bytes> {
    match v {
        Value::Bulk(b) => vec![b.clone()],
        Value::Status(s) => vec![Bytes::from(s.clone())],
        Value::Array(items) => items.iter().flat_map(bulks).collect(),
        _ => Vec::new(),
    }
}

/// A transport that answers with prepared replies, like the native one would.
#[derive(Debug)]
struct Scripted {
    replies: Mutex<VecDeque<Value>>,
    /// Replies per pipeline minus commands per pipeline (0 for a well-behaved transport).
    skew: isize,
}

impl Scripted {
    fn next(&self) -> Value {
        self.replies.lock().pop_front().unwrap_or(Value::Nil)
    }
}

#[async_trait::async_trait]
impl Transport for Scripted {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        let v = self.next();
        match unavailable_reply(&cmd, &v) {
            Some(e) => Err(e),
            None => Ok(v),
        }
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        let n = cmds.len().saturating_add_signed(self.skew);
        let values: Vec<Value> = (0..n).map(|_| self.next()).collect();
        match cmds
            .iter()
            .cycle()
            .zip(&values)
            .find_map(|(c, v)| unavailable_reply(c, v))
        {
            Some(e) => Err(e),
            None => Ok(values),
        }
    }
}

/// `std::sync::Mutex` with a `lock()` that cannot be poisoned-away silently.
mod parking_lot_shim {
    #[derive(Debug)]
    pub(super) struct Mutex<T>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(super) fn new(v: T) -> Self {
            Mutex(std::sync::Mutex::new(v))
        }

        pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}
