//! [`RedisCache`]: the [`Cache`] over any [`Transport`].
//!
//! Written once, used by every backend: redis-rs natively (standalone, Cluster, Sentinel),
//! the Upstash REST dialect at the edge, and the in-memory transport in tests.
//!
//! # Keys
//!
//! A user key `k` is stored at `{prefix}:cache:k` (see [`KeyScheme`]); two caches with
//! different prefixes never see each other's entries, and [`Cache::clear`] only touches
//! `{prefix}:cache:*`.
//!
//! # Statistics without extra round trips
//!
//! Hits, misses and writes are counted locally and added to the shared counters
//! `{prefix}:stats:hits|misses|writes` with `INCRBY`, sent in the same pipeline as the next
//! operation once [`RedisCacheBuilder::stats_batch`] increments are pending, so counting
//! never costs the caller a round trip and costs Redis one small command per batch, not per
//! operation. [`RedisCache::flush_stats`] pushes them explicitly (from a periodic task
//! natively, `ctx.wait_until` on Workers); [`Cache::stats`] and [`Cache::close`] flush too.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::cache::{Cache, CacheStats, KeyTtl, SharedStats, check_ttl};
use crate::error::{Error, Result};
use crate::keys::{KeyScheme, Stat};
use crate::transport::{
    Commands, ScanCursor, SetOptions, Transport, bulk_opt, int, mget_reply, set_reply,
};
use crate::value::{Cmd, Value};

/// How many keys one `SCAN` page asks for, and how many keys one `UNLINK` deletes.
const DEFAULT_SCAN_COUNT: usize = 500;
/// Pending stat increments that make a read carry a flush.
const DEFAULT_STATS_BATCH: u64 = 64;

/// A cache stored in Redis, reached through a [`Transport`].
///
/// Cloning is cheap and shares the connection and counters.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use larder_core::{Cache, RedisCache, testing::MemTransport};
/// use std::time::Duration;
///
/// let cache = RedisCache::builder(MemTransport::new())
///     .prefix("myapp")
///     .default_ttl(Duration::from_secs(3600))
///     .build().unwrap();
/// cache.set("greeting", "hello".into(), None).await?;
/// assert_eq!(cache.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
pub struct RedisCache<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for RedisCache<T> {
    fn clone(&self) -> Self {
        RedisCache {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    transport: T,
    keys: KeyScheme,
    default_ttl: Option<Duration>,
    scan_count: usize,
    stats_batch: u64,
    counters: Counters,
    pending: Pending,
    closed: AtomicBool,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
}

/// Increments not yet added to the shared counters in Redis (signed: a read later found
/// corrupt moves one hit to the misses, which may be a negative `INCRBY`).
#[derive(Default)]
struct Pending {
    hits: AtomicI64,
    misses: AtomicI64,
    writes: AtomicI64,
}

impl Pending {
    fn total(&self) -> u64 {
        [&self.hits, &self.misses, &self.writes]
            .iter()
            .map(|c| c.load(Ordering::Relaxed).unsigned_abs())
            .sum()
    }

    /// Takes every pending increment (leaving zero).
    fn take(&self) -> [i64; 3] {
        [
            self.hits.swap(0, Ordering::AcqRel),
            self.misses.swap(0, Ordering::AcqRel),
            self.writes.swap(0, Ordering::AcqRel),
        ]
    }

    /// Puts increments back after a failed flush.
    fn restore(&self, taken: [i64; 3]) {
        self.hits.fetch_add(taken[0], Ordering::AcqRel);
        self.misses.fetch_add(taken[1], Ordering::AcqRel);
        self.writes.fetch_add(taken[2], Ordering::AcqRel);
    }
}

const STATS: [Stat; 3] = [Stat::Hits, Stat::Misses, Stat::Writes];

impl<T> fmt::Debug for RedisCache<T>
where
    T: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("transport", &self.inner.transport)
            .field("prefix", &self.inner.keys.prefix())
            .field("default_ttl", &self.inner.default_ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisCache`]. Start with [`RedisCache::builder`].
#[derive(Debug)]
#[must_use]
pub struct RedisCacheBuilder<T> {
    transport: T,
    keys: Result<KeyScheme>,
    default_ttl: Option<Duration>,
    scan_count: usize,
    stats_batch: u64,
}

impl<T: Transport> RedisCacheBuilder<T> {
    /// The key prefix (default `larder`). A trailing `:` is not doubled. A prefix with `{`
    /// or `}` makes [`build`](Self::build) fail (see [`KeyScheme::new`]).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.keys = KeyScheme::new(prefix);
        self
    }

    /// A ready-made key scheme.
    pub fn key_scheme(mut self, keys: KeyScheme) -> Self {
        self.keys = Ok(keys);
        self
    }

    /// The TTL used when a write passes `ttl: None`. Without this call such entries never
    /// expire. A zero TTL is an error at [`build`](RedisCacheBuilder::build).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Keys per `SCAN` page and per `UNLINK` batch in `clear` and `delete_pattern`
    /// (default 500).
    pub fn scan_count(mut self, count: usize) -> Self {
        self.scan_count = count.max(1);
        self
    }

    /// Pending statistic increments after which the next operation carries them to Redis in
    /// its own pipeline (default 64). 0 makes every operation carry them.
    pub fn stats_batch(mut self, batch: u64) -> Self {
        self.stats_batch = batch;
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a prefix with `{` or `}`, or a zero default TTL.
    pub fn build(self) -> Result<RedisCache<T>> {
        check_ttl(self.default_ttl)?;
        Ok(RedisCache {
            inner: Arc::new(Inner {
                transport: self.transport,
                keys: self.keys?,
                default_ttl: self.default_ttl,
                scan_count: self.scan_count,
                stats_batch: self.stats_batch,
                counters: Counters::default(),
                pending: Pending::default(),
                closed: AtomicBool::new(false),
            }),
        })
    }
}

impl<T: Transport> RedisCache<T> {
    /// A cache over `transport` with the default prefix and no default TTL.
    pub fn new(transport: T) -> Self {
        Self::builder(transport)
            .build()
            .expect("the default prefix is valid")
    }

    /// Starts building a cache over `transport`.
    pub fn builder(transport: T) -> RedisCacheBuilder<T> {
        RedisCacheBuilder {
            transport,
            keys: Ok(KeyScheme::default()),
            default_ttl: None,
            scan_count: DEFAULT_SCAN_COUNT,
            stats_batch: DEFAULT_STATS_BATCH,
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// The key scheme (prefix and key layout).
    pub fn key_scheme(&self) -> &KeyScheme {
        &self.inner.keys
    }

    /// The TTL used when a write passes `None`.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.default_ttl
    }

    /// Adds pending hit/miss/write counts to the shared counters in Redis now (one round
    /// trip; nothing is sent when nothing is pending). On failure the counts stay pending.
    pub async fn flush_stats(&self) -> Result<()> {
        let taken = self.inner.pending.take();
        let cmds = self.stats_cmds(taken);
        if cmds.is_empty() {
            return Ok(());
        }
        match self.inner.transport.pipeline(cmds).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.inner.pending.restore(taken);
                Err(self.fail(e.into()))
            }
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn fail(&self, e: Error) -> Error {
        self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
        e
    }

    fn count(&self, stat: Stat, n: u64) {
        if n == 0 {
            return;
        }
        let (c, p) = match stat {
            Stat::Hits => (&self.inner.counters.hits, &self.inner.pending.hits),
            Stat::Misses => (&self.inner.counters.misses, &self.inner.pending.misses),
            _ => (&self.inner.counters.writes, &self.inner.pending.writes),
        };
        c.fetch_add(n, Ordering::Relaxed);
        p.fetch_add(n as i64, Ordering::Relaxed);
    }

    fn stats_cmds(&self, taken: [i64; 3]) -> Vec<Cmd> {
        STATS
            .iter()
            .zip(taken)
            .filter(|(_, n)| *n != 0)
            .map(|(stat, n)| {
                Cmd::new("INCRBY")
                    .arg(self.inner.keys.stats_key(*stat))
                    .arg(n)
            })
            .collect()
    }

    /// Runs `cmds` in one round trip, carrying pending stats when the batch threshold is
    /// reached. Returns the replies to `cmds` only.
    async fn run(&self, mut cmds: Vec<Cmd>) -> Result<Vec<Value>> {
        self.check_open()?;
        let n = cmds.len();
        let carry = self.inner.pending.total() > self.inner.stats_batch;
        let taken = if carry {
            self.inner.pending.take()
        } else {
            [0; 3]
        };
        cmds.extend(self.stats_cmds(taken));
        let result = if cmds.len() == 1 {
            let cmd = cmds.pop().expect("one command");
            self.inner.transport.exec(cmd).await.map(|v| vec![v])
        } else {
            self.inner.transport.pipeline(cmds).await
        };
        match result {
            Ok(mut replies) => {
                replies.truncate(n);
                if replies.len() != n {
                    return Err(self.fail(Error::UnexpectedReply {
                        command: "pipeline",
                        detail: format!("expected {n} replies, got {}", replies.len()),
                    }));
                }
                Ok(replies)
            }
            Err(e) => {
                self.inner.pending.restore(taken);
                Err(self.fail(e.into()))
            }
        }
    }

    async fn run_one(&self, cmd: Cmd) -> Result<Value> {
        if self.inner.pending.total() <= self.inner.stats_batch {
            // No stats to carry: one command, no pipeline (the common case).
            self.check_open()?;
            return self
                .inner
                .transport
                .exec(cmd)
                .await
                .map_err(|e| self.fail(e.into()));
        }
        let mut replies = self.run(vec![cmd]).await?;
        Ok(replies.pop().expect("one reply"))
    }

    fn ttl_or_default(&self, ttl: Option<Duration>) -> Result<Option<Duration>> {
        check_ttl(ttl)?;
        Ok(ttl.or(self.inner.default_ttl))
    }

    fn checked<V>(&self, r: Result<V>) -> Result<V> {
        r.map_err(|e| self.fail(e))
    }

    async fn delete_matching(&self, redis_pattern: String) -> Result<u64> {
        self.check_open()?;
        let mut cursor = ScanCursor::START;
        let mut deleted = 0u64;
        loop {
            let (next, keys) = self
                .inner
                .transport
                .scan_page(cursor, redis_pattern.as_bytes(), self.inner.scan_count)
                .await
                .map_err(|e| self.fail(e.into()))?;
            for chunk in keys.chunks(self.inner.scan_count) {
                let refs: Vec<&[u8]> = chunk.iter().map(|k| &k[..]).collect();
                let n = self
                    .inner
                    .transport
                    .unlink(&refs)
                    .await
                    .map_err(|e| self.fail(e))?;
                deleted += n;
            }
            if next.is_done() {
                break;
            }
            cursor = next;
        }
        self.inner
            .counters
            .deletes
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<T: Transport> Cache for RedisCache<T> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let reply = self
            .run_one(Cmd::new("GET").arg(self.inner.keys.value_key(key)))
            .await?;
        let value = match bulk_opt("GET", reply) {
            Err(e) if e.is_wrong_type() => {
                // Another program's hash/list/… at a cache key: unreadable, so a corrupt
                // miss in the counts; the caller gets Redis's error.
                self.inner.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                self.count(Stat::Misses, 1);
                return Err(self.fail(e));
            }
            r => self.checked(r)?,
        };
        self.count(
            if value.is_some() {
                Stat::Hits
            } else {
                Stat::Misses
            },
            1,
        );
        Ok(value)
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        let k = self.inner.keys.value_key(key);
        let mut replies = self
            .run(vec![Cmd::new("GET").arg(&k), Cmd::new("PTTL").arg(&k)])
            .await?;
        let pttl = replies.pop().expect("two replies");
        let value = match bulk_opt("GET", replies.pop().expect("two replies")) {
            Err(e) if e.is_wrong_type() => {
                self.inner.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                self.count(Stat::Misses, 1);
                return Err(self.fail(e));
            }
            r => self.checked(r)?,
        };
        let Some(value) = value else {
            self.count(Stat::Misses, 1);
            return Ok(None);
        };
        self.count(Stat::Hits, 1);
        let ms = self.checked(int("PTTL", pttl))?;
        let ttl = u64::try_from(ms).ok().map(Duration::from_millis);
        Ok(Some((value, ttl)))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let ttl = self.ttl_or_default(ttl)?;
        let cmd = SetOptions::ttl(ttl).command(self.inner.keys.value_key(key), &value);
        let reply = self.run_one(cmd).await?;
        self.checked(set_reply(reply))?;
        self.count(Stat::Writes, 1);
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        let ttl = self.ttl_or_default(ttl)?;
        let cmd = SetOptions::ttl(ttl)
            .nx()
            .command(self.inner.keys.value_key(key), &value);
        let reply = self.run_one(cmd).await?;
        let written = self.checked(set_reply(reply))?;
        if written {
            self.count(Stat::Writes, 1);
        }
        Ok(written)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let reply = self
            .run_one(Cmd::new("UNLINK").arg(self.inner.keys.value_key(key)))
            .await?;
        let existed = self.checked(int("UNLINK", reply))? > 0;
        if existed {
            self.inner.counters.deletes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(existed)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let reply = self
            .run_one(Cmd::new("EXISTS").arg(self.inner.keys.value_key(key)))
            .await?;
        Ok(self.checked(int("EXISTS", reply))? > 0)
    }

    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let reply = self
            .run_one(Cmd::new("PTTL").arg(self.inner.keys.value_key(key)))
            .await?;
        Ok(match self.checked(int("PTTL", reply))? {
            -2 => KeyTtl::Missing,
            -1 => KeyTtl::NoExpiry,
            ms => KeyTtl::ExpiresIn(Duration::from_millis(ms.max(0) as u64)),
        })
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        check_ttl(Some(ttl))?;
        let reply = self
            .run_one(
                Cmd::new("PEXPIRE")
                    .arg(self.inner.keys.value_key(key))
                    .arg(crate::clock::duration_ms(ttl)),
            )
            .await?;
        Ok(self.checked(int("PEXPIRE", reply))? == 1)
    }

    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.check_open()?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = Cmd::new("MGET").args_from(keys.iter().map(|k| self.inner.keys.value_key(k)));
        let reply = self.run_one(cmd).await?;
        let values = self.checked(mget_reply(reply, keys.len()))?;
        let hits = values.iter().filter(|v| v.is_some()).count() as u64;
        self.count(Stat::Hits, hits);
        self.count(Stat::Misses, keys.len() as u64 - hits);
        Ok(values)
    }

    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        self.check_open()?;
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl_or_default(ttl)?;
        let cmds = if ttl.is_none() {
            // No TTL: one `MSET` (on a Cluster it is split per slot).
            vec![
                Cmd::new("MSET").args_from(
                    entries
                        .iter()
                        .flat_map(|(k, v)| [Bytes::from(self.inner.keys.value_key(k)), v.clone()]),
                ),
            ]
        } else {
            // `MSET` cannot set a TTL: one `SET … PX` per entry, pipelined.
            let opts = SetOptions::ttl(ttl);
            entries
                .iter()
                .map(|(k, v)| opts.command(self.inner.keys.value_key(k), v))
                .collect()
        };
        let replies = self.run(cmds).await?;
        for reply in replies {
            self.checked(set_reply(reply))?;
        }
        self.count(Stat::Writes, entries.len() as u64);
        Ok(())
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        if pattern.is_empty() {
            return Err(Error::InvalidInput(
                "empty pattern; use \"*\" (or clear()) to delete every entry".into(),
            ));
        }
        self.delete_matching(self.inner.keys.value_pattern(pattern))
            .await
    }

    async fn clear(&self) -> Result<u64> {
        self.delete_matching(self.inner.keys.value_pattern("*"))
            .await
    }

    async fn stats(&self) -> Result<CacheStats> {
        let c = &self.inner.counters;
        let mut stats = CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        if self.check_open().is_err() {
            return Ok(stats);
        }
        // One round trip: flush what is pending and read the shared totals.
        let taken = self.inner.pending.take();
        let mut cmds = self.stats_cmds(taken);
        let flushed = cmds.len();
        cmds.push(Cmd::new("MGET").args_from(STATS.iter().map(|s| self.inner.keys.stats_key(*s))));
        match self.inner.transport.pipeline(cmds).await {
            Ok(mut replies) if replies.len() == flushed + 1 => {
                if let Ok(values) = mget_reply(replies.pop().expect("len checked"), 3) {
                    let read = |v: &Option<Bytes>| {
                        v.as_ref()
                            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    stats.shared = Some(SharedStats::new(
                        read(&values[0]),
                        read(&values[1]),
                        read(&values[2]),
                    ));
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Stats stay available while Redis is down: report local counts only.
                self.inner.pending.restore(taken);
                stats.errors += 1;
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(stats)
    }

    async fn ping(&self) -> Result<()> {
        self.check_open()?;
        let r = self.inner.transport.ping().await;
        self.checked(r)
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Best effort: pending stats are sent before the transport goes away.
        let taken = self.inner.pending.take();
        let cmds = self.stats_cmds(taken);
        if !cmds.is_empty() {
            let _ = self.inner.transport.pipeline(cmds).await;
        }
        self.inner
            .transport
            .close()
            .await
            .map_err(|e| self.fail(e.into()))
    }

    fn record_corrupt(&self) {
        // The read that found the value counted a hit; the caller saw a miss.
        let c = &self.inner.counters;
        c.corrupt.fetch_add(1, Ordering::Relaxed);
        let _ = c
            .hits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| h.checked_sub(1));
        c.misses.fetch_add(1, Ordering::Relaxed);
        self.inner.pending.hits.fetch_sub(1, Ordering::Relaxed);
        self.inner.pending.misses.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix from configuration that Redis Cluster would read as a hash tag is an error
    /// from `build()`, for the Redis cache and the response cache alike, never a panic.
    #[test]
    fn a_prefix_with_braces_is_an_error_not_a_panic() {
        let t = crate::testing::MemTransport::new();
        for prefix in ["a{b", "}", "{tenant}"] {
            let err = RedisCache::builder(t.clone())
                .prefix(prefix)
                .build()
                .unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
            let redis = RedisCache::new(t.clone());
            let clock: crate::SharedClock = Arc::new(t.clock());
            let err = crate::ResponseCache::redis(redis)
                .clock(clock)
                .prefix(prefix)
                .build()
                .unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        }
        assert!(RedisCache::builder(t).prefix("app:").build().is_ok());
    }
    use crate::ErrorKind;
    use crate::cache::CacheExt;
    use crate::testing::MemTransport;
    use futures_executor::block_on;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn every_operation_is_one_round_trip() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
            t.reset_counters();
            c.set("k", b("v"), None).await.unwrap();
            assert_eq!(t.calls(), 1, "set + stats in one pipeline");
            c.get("k").await.unwrap();
            c.get_with_ttl("k").await.unwrap();
            c.mget(&["k", "x"]).await.unwrap();
            c.mset(&[("a", b("1")), ("b", b("2"))], None).await.unwrap();
            c.delete("a").await.unwrap();
            assert_eq!(t.calls(), 6);
        });
    }

    #[test]
    fn stats_wait_for_the_batch_even_on_writes() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
            c.get("missing").await.unwrap();
            c.get("missing").await.unwrap();
            t.reset_counters();
            c.set("k", b("v"), None).await.unwrap();
            assert_eq!(
                t.command_log(),
                vec!["SET"],
                "a write alone carries no INCRBY"
            );
            assert_eq!(t.get(b"p:stats:misses").await.unwrap(), None);
            c.flush_stats().await.unwrap();
            assert_eq!(t.get(b"p:stats:misses").await.unwrap(), Some(b("2")));
            assert_eq!(t.get(b"p:stats:writes").await.unwrap(), Some(b("1")));
            assert_eq!(t.get(b"p:stats:hits").await.unwrap(), None);
        });
    }

    #[test]
    fn reads_carry_stats_once_the_batch_is_full() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone())
                .prefix("p")
                .stats_batch(3)
                .build()
                .unwrap();
            for _ in 0..4 {
                c.get("x").await.unwrap();
            }
            assert_eq!(t.get(b"p:stats:misses").await.unwrap(), None);
            t.reset_counters();
            c.set("k", b("v"), None).await.unwrap();
            assert_eq!(t.calls(), 1, "still one round trip");
            assert_eq!(t.command_log(), vec!["SET", "INCRBY"]);
            assert_eq!(t.get(b"p:stats:misses").await.unwrap(), Some(b("4")));
        });
    }

    #[test]
    fn failed_flush_keeps_counts_pending() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
            c.get("x").await.unwrap();
            c.set("k", b("v"), None).await.unwrap();
            t.fail_next(1, ErrorKind::Io);
            let err = c.flush_stats().await.unwrap_err();
            assert_eq!(err.transport_kind(), Some(ErrorKind::Io));
            t.fail_next(1, ErrorKind::Io);
            assert!(c.set("k2", b("v"), None).await.is_err());
            c.flush_stats().await.unwrap();
            assert_eq!(t.get(b"p:stats:misses").await.unwrap(), Some(b("1")));
            assert_eq!(
                t.get(b"p:stats:writes").await.unwrap(),
                Some(b("1")),
                "only the acknowledged write is counted"
            );
            assert_eq!(c.stats().await.unwrap().errors, 2);
        });
    }

    #[test]
    fn outage_is_an_error_not_a_hang_and_stats_stay_readable() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
            c.set("k", b("v"), None).await.unwrap();
            t.set_down(true);
            let err = c.get("k").await.unwrap_err();
            assert!(err.is_retryable(), "{err:?}");
            let s = c.stats().await.unwrap();
            assert_eq!(s.writes, 1);
            assert_eq!(s.shared, None, "no shared totals while Redis is down");
            t.set_down(false);
            assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
        });
    }

    #[test]
    fn server_error_replies_pass_through_unchanged() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
            t.exec(Cmd::new("HSET").arg("p:cache:h").arg("f").arg("v"))
                .await
                .unwrap();
            let err = c.get("h").await.unwrap_err();
            assert_eq!(
                err,
                Error::Server(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into()
                )
            );
        });
    }

    #[test]
    fn corrupt_read_moves_a_hit_to_the_misses_everywhere() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
            t.set(
                b"p:cache:bad",
                &Bytes::from_static(b"\xff\x00"),
                SetOptions::default(),
            )
            .await
            .unwrap();
            assert_eq!(c.get_envelope("bad").await.unwrap(), None);
            let s = c.stats().await.unwrap();
            assert_eq!((s.hits, s.misses, s.corrupt), (0, 1, 1));
            let shared = s.shared.unwrap();
            assert_eq!((shared.hits, shared.misses), (0, 1));
        });
    }

    #[test]
    fn clear_uses_scan_and_unlink_never_flush() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone())
                .prefix("p")
                .scan_count(10)
                .build()
                .unwrap();
            for i in 0..25 {
                c.set(&format!("k{i}"), b("v"), None).await.unwrap();
            }
            t.set(b"other", &b("x"), SetOptions::default())
                .await
                .unwrap();
            t.reset_counters();
            assert_eq!(c.clear().await.unwrap(), 25);
            let log = t.command_log();
            assert!(log.iter().all(|c| c == "SCAN" || c == "UNLINK"), "{log:?}");
            assert!(!log.iter().any(|c| c.starts_with("FLUSH")));
            assert_eq!(t.get(b"other").await.unwrap(), Some(b("x")));
        });
    }

    #[test]
    fn default_ttl_and_explicit_ttl_reach_redis_as_px() {
        block_on(async {
            let t = MemTransport::new();
            let c = RedisCache::builder(t.clone())
                .prefix("p")
                .default_ttl(Duration::from_secs(60))
                .build()
                .unwrap();
            c.set("a", b("v"), None).await.unwrap();
            c.set("b", b("v"), Some(Duration::from_millis(1500)))
                .await
                .unwrap();
            assert_eq!(t.pttl(b"p:cache:a").await.unwrap(), 60_000);
            assert_eq!(t.pttl(b"p:cache:b").await.unwrap(), 1_500);
            t.clock().advance(Duration::from_millis(1500));
            assert_eq!(c.get("b").await.unwrap(), None);
        });
    }

    #[test]
    fn debug_shows_prefix_not_values() {
        let c = RedisCache::builder(MemTransport::new())
            .prefix("dbg")
            .build()
            .unwrap();
        let s = format!("{c:?}");
        assert!(s.contains("dbg"), "{s}");
    }
}
