//! The memory tier: [`MemoryCache`], a sharded W-TinyLFU cache with per-entry TTLs.
//!
//! Each shard is a [`TinyLfu`] behind a [`parking_lot::Mutex`]; a key's hash (computed once
//! per call) picks the shard and finds the entry in it. Expiry is lazy (there are no timers,
//! which `wasm32` lacks): an expired entry is dropped when a call finds it, when it reaches
//! the point of eviction, or by [`MemoryCache::purge_expired`]. Time comes from the
//! injected [`Clock`], read only when an entry has an expiry.

mod entry;
mod sketch;
#[cfg(test)]
mod tests;
mod tinylfu;

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::DefaultHashBuilder;
use parking_lot::Mutex;

use crate::cache::{Cache, CacheStats, KeyTtl, check_ttl, glob_match};
use crate::clock::{Clock, SharedClock, duration_ms};
use crate::error::{Error, Result};

pub use self::tinylfu::{Iter, TinyLfu};
use self::tinylfu::{NEVER, Now, Removed};

/// Default [`MemoryCacheBuilder::max_entries`].
const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Default [`MemoryCacheBuilder::max_bytes`]: 256 MiB.
const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default shard count on native targets (before the per-shard minimums).
const DEFAULT_SHARDS: usize = 16;
/// With the default shard count, every shard holds at least this many entries… Keys spread
/// unevenly over small shards, which costs hit ratio: on a loop over 10 % more keys than
/// 1,000 entries hold, 16 shards of 62 entries hit less often than 2 shards of 500 (the
/// memory benchmark).
const MIN_ENTRIES_PER_SHARD: usize = 256;
/// …and at least this many bytes.
const MIN_BYTES_PER_SHARD: u64 = 1024 * 1024;
/// The most shards [`MemoryCacheBuilder::shards`] accepts.
const MAX_SHARDS: usize = 1024;

/// Reads the clock once, on first use.
struct LazyNow<'a> {
    clock: &'a dyn Clock,
    now: Option<u64>,
}

impl<'a> LazyNow<'a> {
    fn new(clock: &'a dyn Clock) -> Self {
        LazyNow { clock, now: None }
    }
}

impl Now for LazyNow<'_> {
    #[inline]
    fn now_ms(&mut self) -> u64 {
        *self.now.get_or_insert_with(|| self.clock.now_ms())
    }
}

/// One shard, on its own cache lines so that neighbouring locks do not contend.
#[repr(align(128))]
struct Shard(Mutex<TinyLfu>);

struct Inner {
    shards: Box<[Shard]>,
    /// `shards.len() - 1` (the count is a power of two).
    mask: usize,
    hasher: DefaultHashBuilder,
    clock: SharedClock,
    /// Milliseconds; `None` when entries never expire by default.
    default_ttl_ms: Option<u64>,
    max_entries: usize,
    max_bytes: u64,
    corrupt: AtomicU64,
    closed: AtomicBool,
}

/// An in-process cache of byte values with per-entry TTLs, bounded by entry count and by
/// bytes: the memory tier of larder.
///
/// Cloning is cheap and clones share the same entries.
///
/// # Sharding
///
/// Entries are spread over a power-of-two number of shards by key hash, each a [`TinyLfu`]
/// behind its own lock, and the bounds are split evenly among them. Each shard chooses what
/// to evict on its own, and the largest storable entry is `max_bytes / shards` bytes (key
/// plus value). By default there are 16 shards natively and 1 on `wasm32` (single-threaded),
/// halved until each shard holds at least 256 entries and 1 MiB, so small caches are a
/// single shard (a shard's policy judges better over more entries).
/// [`MemoryCacheBuilder::shards`] overrides the count.
///
/// # Eviction policy
///
/// A shard keeps the entries most likely to be asked for again, judged by how recently
/// *and* how often they were used: new entries pass through a small window, and leaving it
/// they displace an older entry only if they were used more often lately (W-TinyLFU, as in
/// Caffeine; see [`TinyLfu`]). A scan of one-off keys does not flush popular entries, a
/// loop over slightly more keys than fit keeps hitting, and a burst of identical requests
/// (retries, parallel identical calls) counts as one use, so it does not make a one-off
/// prompt look popular. A write never evicts the entry it writes, so a value stored by
/// [`MemoryCache::insert`] can be read back right away.
///
/// # Sizes, eviction and rejection
///
/// An entry's size is `key.len() + value.len()`. Writing evicts entries of the shard, as
/// the policy chooses, until both bounds hold; each counts in [`CacheStats::evictions`] (or
/// in [`CacheStats::expirations`] if its TTL had passed). An entry too large for a shard (or
/// with a key of 4 GiB or more) is not stored and removes any older value under its key:
/// the write counts as a write and an eviction; [`MemoryCache::insert`] returns `false` and
/// [`Cache::set`] still succeeds.
///
/// # Expiry
///
/// An entry written with TTL `d` at time `t` (from the injected clock) is live while
/// `now < t + d`. Expired entries are dropped lazily, and until then still count in
/// [`MemoryCache::len`], [`MemoryCache::size_bytes`] and the `entries`/`bytes` stats.
///
/// # Statistics
///
/// Hits and misses count value reads ([`Cache::get`], [`Cache::get_with_ttl`],
/// [`Cache::mget`], [`MemoryCache::lookup`], [`MemoryCache::lookup_with_ttl`]); existence
/// and TTL checks are not reads. `errors` is always 0.
///
/// # Closing
///
/// [`Cache::close`] drops every entry and closes the cache for all clones: later [`Cache`]
/// calls (except `close` itself, which is idempotent, and `record_corrupt`) return
/// [`Error::Closed`], and [`MemoryCache::insert`] stores nothing.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_core::{Bytes, ManualClock, MemoryCache};
///
/// let clock = ManualClock::new(1_000);
/// let cache = MemoryCache::builder().clock(clock.clone())
///     .max_entries(1_000)
///     .max_bytes(1 << 20)
///     .default_ttl(Duration::from_secs(60))
///     .build()?;
///
/// cache.insert("greeting", Bytes::from_static(b"hello"), None);
/// assert_eq!(cache.lookup("greeting").as_deref(), Some(&b"hello"[..]));
///
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(cache.lookup("greeting"), None); // the default TTL has passed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Through the async [`Cache`] trait:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_core::{Bytes, Cache, KeyTtl, ManualClock, MemoryCache};
///
/// # futures_executor::block_on(async {
/// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(100).build().unwrap();
/// cache.set("k", Bytes::from_static(b"v"), Some(Duration::from_secs(5))).await?;
/// assert_eq!(cache.ttl("k").await?, KeyTtl::ExpiresIn(Duration::from_secs(5)));
/// assert!(!cache.set_nx("k", Bytes::new(), None).await?);
/// assert_eq!(cache.stats().await?.entries, Some(1));
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("MemoryCache")
            .field("shards", &inner.shards.len())
            .field("max_entries", &inner.max_entries)
            .field("max_bytes", &inner.max_bytes)
            .field("default_ttl_ms", &inner.default_ttl_ms)
            .field("closed", &inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Configures and builds a [`MemoryCache`]; start with [`MemoryCache::builder`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use larder_core::{ManualClock, MemoryCache};
///
/// let cache = MemoryCache::builder().clock(ManualClock::new(0))
///     .max_entries(100_000)
///     .max_bytes(64 * 1024 * 1024)
///     .shards(8)
///     .build()?;
/// assert_eq!(cache.shard_count(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct MemoryCacheBuilder {
    clock: SharedClock,
    max_entries: usize,
    max_bytes: u64,
    default_ttl: Option<Duration>,
    shards: Option<usize>,
}

impl MemoryCacheBuilder {
    /// The most entries the cache holds (default 10 000). 0 makes a cache that stores
    /// nothing.
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The most bytes (keys plus values) the cache holds (default 256 MiB).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The TTL of writes that pass `ttl: None`. Without this call such entries never
    /// expire. A zero TTL is an error at [`build`](MemoryCacheBuilder::build).
    pub fn default_ttl(mut self, default_ttl: Duration) -> Self {
        self.default_ttl = Some(default_ttl);
        self
    }

    /// The clock TTLs are measured with (default: [`SystemClock`](crate::SystemClock)); a
    /// [`ManualClock`](crate::ManualClock) in tests.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The number of shards, rounded up to a power of two, at most 1024, and halved while it
    /// exceeds `max_entries` (so that every shard can hold an entry). Without this call the
    /// count is chosen as described in [Sharding](MemoryCache#sharding).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero default TTL.
    pub fn build(self) -> Result<MemoryCache> {
        check_ttl(self.default_ttl)?;
        let n = shard_count(self.shards, self.max_entries, self.max_bytes);
        let hasher = DefaultHashBuilder::default();
        let shards = (0..n)
            .map(|i| {
                Shard(Mutex::new(TinyLfu::with_hasher(
                    split(self.max_entries as u64, n, i) as usize,
                    split(self.max_bytes, n, i),
                    hasher.clone(),
                )))
            })
            .collect();
        Ok(MemoryCache {
            inner: Arc::new(Inner {
                shards,
                mask: n - 1,
                hasher,
                clock: self.clock,
                default_ttl_ms: self.default_ttl.map(duration_ms),
                max_entries: self.max_entries,
                max_bytes: self.max_bytes,
                corrupt: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// Shard `i`'s part of `total` split over `n` shards (the remainder goes to the first ones).
fn split(total: u64, n: usize, i: usize) -> u64 {
    let n = n as u64;
    total / n + u64::from((i as u64) < total % n)
}

fn shard_count(requested: Option<usize>, max_entries: usize, max_bytes: u64) -> usize {
    let mut n = match requested {
        Some(n) => n.clamp(1, MAX_SHARDS).next_power_of_two(),
        None if cfg!(target_arch = "wasm32") => 1,
        None => DEFAULT_SHARDS,
    };
    while n > 1 && n > max_entries {
        n /= 2;
    }
    if requested.is_none() {
        while n > 1
            && (max_entries / n < MIN_ENTRIES_PER_SHARD
                || max_bytes / (n as u64) < MIN_BYTES_PER_SHARD)
        {
            n /= 2;
        }
    }
    n
}

/// The time left until `expires_at` (not [`NEVER`]).
fn remaining(expires_at: u64, now: u64) -> Duration {
    Duration::from_millis(expires_at.saturating_sub(now))
}

impl MemoryCache {
    /// Starts configuring a cache: at most 10 000 entries and 256 MiB, no default TTL, the
    /// runtime's clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder_core::MemoryCache;
    ///
    /// let cache = MemoryCache::builder()
    ///     .max_entries(500)
    ///     .default_ttl(Duration::from_secs(300))
    ///     .build()?;
    /// assert_eq!(cache.max_entries(), 500);
    /// # Ok::<(), larder_core::Error>(())
    /// ```
    pub fn builder() -> MemoryCacheBuilder {
        MemoryCacheBuilder {
            clock: crate::clock::system(),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            default_ttl: None,
            shards: None,
        }
    }

    /// Stores `value` under `key` with `ttl` (`None`: the default TTL), evicting as needed.
    /// Returns `false` if the value was not stored: too large for a shard (or its key 4 GiB
    /// or more), or the cache is closed, or `ttl` is zero (which [`Cache::set`] rejects as an
    /// error).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_bytes(100).build()?;
    /// assert!(cache.insert("small", Bytes::from(vec![0; 50]), None));
    /// assert!(!cache.insert("large", Bytes::from(vec![0; 200]), None)); // larger than max_bytes
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> bool {
        let inner = &*self.inner;
        if ttl.is_some_and(|t| t.is_zero()) {
            return false;
        }
        let ttl_ms = ttl.map(duration_ms).or(inner.default_ttl_ms);
        let mut now = LazyNow::new(&*inner.clock);
        let expires_at = ttl_ms.map_or(NEVER, |ms| now.now_ms().saturating_add(ms));
        let hash = inner.hasher.hash_one(key);
        let mut removed = Removed::default();
        let mut shard = self.shard(hash).lock();
        // Checked under the shard lock: `close` sets the flag before clearing each shard.
        if inner.closed.load(Ordering::Relaxed) {
            return false;
        }
        let stored = shard.insert_hashed(hash, key, value, expires_at, &mut now, &mut removed);
        drop(shard);
        // What the insertion evicted or replaced is dropped here, outside the lock.
        drop(removed);
        stored
    }

    /// Reads a live value, counting a use of the key for the eviction policy. Counts a hit or
    /// a miss.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(10).build().unwrap();
    /// cache.insert("k", Bytes::from_static(b"v"), None);
    /// assert_eq!(cache.lookup("k"), Some(Bytes::from_static(b"v")));
    /// assert_eq!(cache.lookup("other"), None);
    /// ```
    #[inline]
    pub fn lookup(&self, key: &str) -> Option<Bytes> {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut now = LazyNow::new(&*inner.clock);
        let mut shard = self.shard(hash).lock();
        shard
            .get_hashed(hash, key, &mut now)
            .map(|(v, _)| v.clone())
    }

    /// Like [`MemoryCache::lookup`], also returning the remaining TTL (`None`: never
    /// expires).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let clock = ManualClock::new(0);
    /// let cache = MemoryCache::builder().clock(clock.clone()).max_entries(10).build().unwrap();
    /// cache.insert("k", Bytes::from_static(b"v"), Some(Duration::from_secs(10)));
    /// clock.advance(Duration::from_secs(4));
    /// let (_, ttl) = cache.lookup_with_ttl("k").unwrap();
    /// assert_eq!(ttl, Some(Duration::from_secs(6)));
    /// ```
    pub fn lookup_with_ttl(&self, key: &str) -> Option<(Bytes, Option<Duration>)> {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut now = LazyNow::new(&*inner.clock);
        let mut shard = self.shard(hash).lock();
        let (value, expires_at) = shard.get_hashed(hash, key, &mut now)?;
        let value = value.clone();
        drop(shard);
        // An entry with an expiry has already read the clock; one without never needs to.
        let ttl = (expires_at != NEVER).then(|| remaining(expires_at, now.now_ms()));
        Some((value, ttl))
    }

    /// Removes `key`; returns whether it held a live value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(10).build().unwrap();
    /// cache.insert("k", Bytes::new(), None);
    /// assert!(cache.remove("k"));
    /// assert!(!cache.remove("k"));
    /// ```
    pub fn remove(&self, key: &str) -> bool {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut now = LazyNow::new(&*inner.clock);
        // The lock is released at the end of this statement; the entry is dropped after it.
        let removed = self.shard(hash).lock().remove_hashed(hash, key, &mut now);
        removed.is_some()
    }

    /// Whether `key` holds a live value (not counted as a read or a use).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(10).build().unwrap();
    /// cache.insert("k", Bytes::new(), None);
    /// assert!(cache.contains("k"));
    /// assert!(!cache.contains("x"));
    /// ```
    pub fn contains(&self, key: &str) -> bool {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut now = LazyNow::new(&*inner.clock);
        self.shard(hash).lock().contains_hashed(hash, key, &mut now)
    }

    /// The remaining lifetime of `key` (not counted as a read or a use).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use larder_core::{Bytes, KeyTtl, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(10).build().unwrap();
    /// cache.insert("k", Bytes::new(), None);
    /// assert_eq!(cache.key_ttl("k"), KeyTtl::NoExpiry);
    /// assert_eq!(cache.key_ttl("x"), KeyTtl::Missing);
    /// ```
    pub fn key_ttl(&self, key: &str) -> KeyTtl {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut now = LazyNow::new(&*inner.clock);
        let expiry = self.shard(hash).lock().expiry_hashed(hash, key, &mut now);
        match expiry {
            None => KeyTtl::Missing,
            Some(NEVER) => KeyTtl::NoExpiry,
            Some(at) => KeyTtl::ExpiresIn(remaining(at, now.now_ms())),
        }
    }

    /// The number of entries held, including expired entries not yet dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(10).build().unwrap();
    /// cache.insert("a", Bytes::new(), None);
    /// cache.insert("b", Bytes::new(), None);
    /// assert_eq!(cache.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Whether the cache holds no entries (expired ones not yet dropped count as held).
    pub fn is_empty(&self) -> bool {
        self.inner.shards.iter().all(|s| s.0.lock().is_empty())
    }

    /// The bytes held (keys plus values), including expired entries not yet dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let cache = MemoryCache::builder().clock(ManualClock::new(0)).max_entries(10).build().unwrap();
    /// cache.insert("key", Bytes::from_static(b"value"), None);
    /// assert_eq!(cache.size_bytes(), 8);
    /// ```
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock().size_bytes())
            .sum()
    }

    /// Removes every entry; returns how many were live (counted as deletes). Locks one
    /// shard at a time, and drops its entries after releasing its lock.
    pub fn clear_all(&self) -> usize {
        let mut now = LazyNow::new(&*self.inner.clock);
        let mut live = 0;
        for shard in self.inner.shards.iter() {
            // The lock is released at the end of this statement; the entries are dropped
            // after it.
            let (cleared, entries) = shard.0.lock().clear_with(&mut now);
            drop(entries);
            live += cleared;
        }
        live
    }

    /// Drops every expired entry now instead of lazily; returns how many. O(n), locking one
    /// shard at a time: for a periodic sweep where memory matters.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use larder_core::{Bytes, ManualClock, MemoryCache};
    ///
    /// let clock = ManualClock::new(0);
    /// let cache = MemoryCache::builder().clock(clock.clone()).max_entries(10).default_ttl(Duration::from_secs(1)).build().unwrap();
    /// cache.insert("k", Bytes::new(), None);
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(cache.len(), 1); // still held until something drops it
    /// assert_eq!(cache.purge_expired(), 1);
    /// assert!(cache.is_empty());
    /// ```
    pub fn purge_expired(&self) -> usize {
        let now = self.inner.clock.now_ms();
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock().purge_expired(now))
            .sum()
    }

    /// The counters, synchronously (what [`Cache::stats`] returns, also after closing).
    pub fn current_stats(&self) -> CacheStats {
        let mut total = CacheStats {
            corrupt: self.inner.corrupt.load(Ordering::Relaxed),
            entries: Some(0),
            bytes: Some(0),
            ..CacheStats::default()
        };
        for shard in self.inner.shards.iter() {
            let s = shard.0.lock().stats();
            total.hits += s.hits;
            total.misses += s.misses;
            total.writes += s.writes;
            total.deletes += s.deletes;
            total.evictions += s.evictions;
            total.expirations += s.expirations;
            total.entries = Some(total.entries.unwrap_or(0) + s.entries.unwrap_or(0));
            total.bytes = Some(total.bytes.unwrap_or(0) + s.bytes.unwrap_or(0));
        }
        // A read that found a value later found corrupt is a miss to the caller.
        let corrupt = total.corrupt.min(total.hits);
        total.hits -= corrupt;
        total.misses += corrupt;
        total
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The entry bound, as configured.
    pub fn max_entries(&self) -> usize {
        self.inner.max_entries
    }

    /// The byte bound, as configured.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// The TTL of writes without one (`None`: they never expire).
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.default_ttl_ms.map(Duration::from_millis)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<TinyLfu> {
        // Bits 32.. pick the shard: hashbrown uses the low bits for the bucket and the top 7
        // bits (of the low 32 on 32-bit targets) for its tag, so they stay independent.
        let inner = &*self.inner;
        &inner.shards[(hash >> 32) as usize & inner.mask].0
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The estimated uses of `key` lately, as the eviction policy sees them (tests).
    #[cfg(test)]
    fn frequency(&self, key: &str) -> u8 {
        let hash = self.inner.hasher.hash_one(key);
        self.shard(hash).lock().frequency_hashed(hash)
    }

    /// Keys of one shard, in [`TinyLfu::iter`] order (tests).
    #[cfg(test)]
    fn shard_keys(&self, shard: usize) -> Vec<String> {
        let lru = self.inner.shards[shard].0.lock();
        lru.check_invariants();
        lru.iter().map(|(k, _)| k.to_owned()).collect()
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.ensure_open()?;
        Ok(self.lookup(key))
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        self.ensure_open()?;
        Ok(self.lookup_with_ttl(key))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.ensure_open()?;
        check_ttl(ttl)?;
        self.insert(key, value, ttl);
        Ok(())
    }

    /// Writes unless `key` holds a live value (an expired entry does not count). Returns
    /// `false` when a live value exists, or when the value is too large to be stored.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        self.ensure_open()?;
        check_ttl(ttl)?;
        let inner = &*self.inner;
        let ttl_ms = ttl.map(duration_ms).or(inner.default_ttl_ms);
        let mut now = LazyNow::new(&*inner.clock);
        let expires_at = ttl_ms.map_or(NEVER, |ms| now.now_ms().saturating_add(ms));
        let hash = inner.hasher.hash_one(key);
        let mut removed = Removed::default();
        let mut shard = self.shard(hash).lock();
        if inner.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        if shard.contains_hashed(hash, key, &mut now) {
            return Ok(false);
        }
        let stored = shard.insert_hashed(hash, key, value, expires_at, &mut now, &mut removed);
        drop(shard);
        drop(removed);
        Ok(stored)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.ensure_open()?;
        Ok(self.remove(key))
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.ensure_open()?;
        Ok(self.contains(key))
    }

    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        self.ensure_open()?;
        Ok(self.key_ttl(key))
    }

    /// Sets a new TTL on a live key (not counted as a use); a zero TTL is rejected like in
    /// writes.
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.ensure_open()?;
        check_ttl(Some(ttl))?;
        let inner = &*self.inner;
        let now_ms = inner.clock.now_ms();
        let expires_at = now_ms.saturating_add(duration_ms(ttl));
        let hash = inner.hasher.hash_one(key);
        let mut now = now_ms;
        Ok(self
            .shard(hash)
            .lock()
            .set_expiry_hashed(hash, key, expires_at, &mut now))
    }

    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.ensure_open()?;
        Ok(keys.iter().map(|key| self.lookup(key)).collect())
    }

    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        self.ensure_open()?;
        check_ttl(ttl)?;
        for (key, value) in entries {
            self.insert(key, value.clone(), ttl);
        }
        Ok(())
    }

    /// Walks every shard (O(n), one shard locked at a time).
    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.ensure_open()?;
        let mut now = LazyNow::new(&*self.inner.clock);
        let pattern = pattern.as_bytes();
        let removed: usize = self
            .inner
            .shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .remove_matching_with(|key| glob_match(pattern, key.as_bytes()), &mut now)
            })
            .sum();
        Ok(removed as u64)
    }

    async fn clear(&self) -> Result<u64> {
        self.ensure_open()?;
        Ok(self.clear_all() as u64)
    }

    async fn stats(&self) -> Result<CacheStats> {
        self.ensure_open()?;
        Ok(self.current_stats())
    }

    async fn ping(&self) -> Result<()> {
        self.ensure_open()
    }

    /// Drops every entry and closes the cache for every clone; idempotent.
    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            // The lock is released at the end of this statement; the entries are dropped
            // after it.
            let entries = shard.0.lock().reset();
            drop(entries);
        }
        Ok(())
    }

    fn record_corrupt(&self) {
        self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    fn clock(&self) -> Option<SharedClock> {
        Some(self.inner.clock.clone())
    }
}
