//! [`TieredCache`]: an in-process L1 ([`MemoryCache`]) in front of any L2 cache (Redis,
//! over any transport), kept coherent across instances by a [`Backplane`].
//!
//! Reads go L1 → L2 (an L2 hit fills L1); writes go to both; an entry never lives longer in
//! L1 than in L2. When L2 fails — Redis down, or a [circuit
//! breaker](crate::breaker::CircuitBreaker) open in front of it — the cache keeps working on
//! L1 alone ("memory mode"): reads are L1 hits or misses, writes land in L1, and no call
//! returns the L2 error (it is counted in [`TieredStats::l2_errors`]).

mod backplane;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::cache::{Cache, CacheStats, KeyTtl, check_ttl};
use crate::error::{Error, Result};
use crate::memory::MemoryCache;
use crate::runtime::SharedRuntime;

pub use backplane::{Backplane, BackplaneStats};
use backplane::{Link, Op};

/// Default [`TieredCacheBuilder::l1_max_ttl`]: 5 minutes.
const DEFAULT_L1_MAX_TTL: Duration = Duration::from_secs(300);

/// An L1 memory cache in front of an L2 cache, with an optional [`Backplane`].
///
/// Cloning is cheap and clones share both tiers.
///
/// # TTLs
///
/// A write with TTL `d` (or, for `ttl: None`, the [default TTL](TieredCacheBuilder::default_ttl))
/// goes to L2 with `d` and to L1 with `min(d, l1_max_ttl)`. An L2 hit fills L1 for
/// `min(remaining L2 TTL, l1_max_ttl)`. A write with no TTL at all (no default either) is
/// kept in L1 for `l1_max_ttl` (or, with no cap, the L1's own default TTL): set
/// [`TieredCacheBuilder::default_ttl`] to L2's default TTL if that is shorter.
/// [`Cache::mget`] does not fill L1 (it learns no TTLs).
///
/// # Failures
///
/// L2 failures (transport errors and Redis error replies) are absorbed: the call is served by
/// L1 alone and the failure counted. [`Error::Closed`] and rejected arguments are returned.
/// [`Cache::ping`] reports L2's health unchanged.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_core::tiered::{Backplane, TieredCache};
/// use larder_core::{Cache, MemoryCache, RedisCache, testing::MemTransport};
///
/// let redis = MemTransport::new();
/// let clock = Arc::new(redis.clock());
/// let l2 = RedisCache::builder(redis.clone()).prefix("app").build().unwrap();
/// let cache = TieredCache::builder(MemoryCache::builder().clock(clock.clone()).max_entries(10_000).build().unwrap(), l2.clone())
///     .l1_max_ttl(Duration::from_secs(60))
///     .backplane(Backplane::new(redis.clone(), l2.key_scheme()).clock(clock))
///     .build()?;
///
/// cache.set("k", "v".into(), Some(Duration::from_secs(3600))).await?;
/// redis.set_down(true); // Redis goes away: L1 still answers, and writes still succeed
/// assert_eq!(cache.get("k").await?.as_deref(), Some(&b"v"[..]));
/// cache.set("k2", "v2".into(), None).await?;
/// assert_eq!(cache.tiered_stats().l2_errors, 1);
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
pub struct TieredCache<L2> {
    inner: Arc<Inner<L2>>,
}

impl<L2> Clone for TieredCache<L2> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<L2> {
    l1: MemoryCache,
    l2: L2,
    default_ttl: Option<Duration>,
    l1_max_ttl: Option<Duration>,
    backplane: Option<Link>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    corrupt: AtomicU64,
    l2_errors: AtomicU64,
}

/// What a [`TieredCache`] did, per tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Reads answered by L1.
    pub l1_hits: u64,
    /// Reads answered by L2 (each filled L1).
    pub l2_hits: u64,
    /// Reads that found nothing in either tier (or nothing in L1 while L2 failed).
    pub misses: u64,
    /// L2 failures absorbed (the call went on with L1 alone).
    pub l2_errors: u64,
    /// The L1's own statistics (entries, bytes, evictions…).
    pub l1: CacheStats,
    /// The backplane's counters, when there is one.
    pub backplane: Option<BackplaneStats>,
}

impl<L2: fmt::Debug> fmt::Debug for TieredCache<L2> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("l1", &self.inner.l1)
            .field("l2", &self.inner.l2)
            .field("default_ttl", &self.inner.default_ttl)
            .field("l1_max_ttl", &self.inner.l1_max_ttl)
            .field("backplane", &self.inner.backplane)
            .finish()
    }
}

/// Configures a [`TieredCache`]; start with [`TieredCache::builder`].
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct TieredCacheBuilder<L2> {
    l1: MemoryCache,
    l2: L2,
    default_ttl: Option<Duration>,
    l1_max_ttl: Option<Duration>,
    backplane: Option<Backplane>,
    runtime: Option<SharedRuntime>,
}

impl<L2: fmt::Debug> fmt::Debug for TieredCacheBuilder<L2> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("default_ttl", &self.default_ttl)
            .field("l1_max_ttl", &self.l1_max_ttl)
            .field("backplane", &self.backplane)
            .finish_non_exhaustive()
    }
}

impl<L2: Cache> TieredCacheBuilder<L2> {
    /// The TTL of writes that pass `ttl: None`. Without this call: L2's own default. Set it
    /// to L2's default TTL when that is shorter than `l1_max_ttl`. A zero TTL is an error at
    /// [`build`](TieredCacheBuilder::build).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The longest an entry stays in L1 (default 5 minutes; `Duration::MAX`: as long as in
    /// L2). It bounds how stale an L1 entry can be when the backplane is down or absent. A
    /// zero TTL is an error at [`build`](TieredCacheBuilder::build).
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = Some(ttl);
        self
    }

    /// Keeps the L1s of every instance coherent through pub/sub (see [`Backplane`]).
    pub fn backplane(mut self, backplane: Backplane) -> Self {
        self.backplane = Some(backplane);
        self
    }

    /// Runs backplane (re-)subscriptions and publishes in the background instead of inside
    /// the calls that trigger them.
    pub fn runtime(mut self, runtime: SharedRuntime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero TTL.
    pub fn build(self) -> crate::Result<TieredCache<L2>> {
        crate::cache::check_ttl(self.default_ttl)?;
        crate::cache::check_ttl(self.l1_max_ttl)?;
        let l1_max_ttl = self.l1_max_ttl.filter(|d| *d != Duration::MAX);
        let backplane = self
            .backplane
            .map(|bp| bp.attach(self.l1.clone(), self.runtime.clone()));
        Ok(TieredCache {
            inner: Arc::new(Inner {
                l1: self.l1,
                l2: self.l2,
                default_ttl: self.default_ttl,
                l1_max_ttl,
                backplane,
                counters: Counters::default(),
            }),
        })
    }
}

fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl<L2: Cache> TieredCache<L2> {
    /// Starts configuring a tiered cache of `l1` in front of `l2`.
    pub fn builder(l1: MemoryCache, l2: L2) -> TieredCacheBuilder<L2> {
        TieredCacheBuilder {
            l1,
            l2,
            default_ttl: None,
            l1_max_ttl: Some(DEFAULT_L1_MAX_TTL),
            backplane: None,
            runtime: None,
        }
    }

    /// The memory tier.
    pub fn l1(&self) -> &MemoryCache {
        &self.inner.l1
    }

    /// The remote tier.
    pub fn l2(&self) -> &L2 {
        &self.inner.l2
    }

    /// Per-tier counters (no I/O).
    pub fn tiered_stats(&self) -> TieredStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TieredStats {
            l1_hits: l(&c.l1_hits),
            l2_hits: l(&c.l2_hits),
            misses: l(&c.misses),
            l2_errors: l(&c.l2_errors),
            l1: self.inner.l1.current_stats(),
            backplane: self.inner.backplane.as_ref().map(Link::stats),
        }
    }

    async fn sync(&self) {
        if let Some(bp) = &self.inner.backplane {
            bp.sync().await;
        }
    }

    async fn publish(&self, op: Op) {
        if let Some(bp) = &self.inner.backplane {
            bp.publish(op).await;
        }
    }

    /// `Ok(None)` when an L2 error is absorbed, `Err` when it must be returned.
    fn absorb<T>(&self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e @ (Error::Closed | Error::InvalidInput(_) | Error::Serialize(_))) => Err(e),
            Err(_) => {
                bump(&self.inner.counters.l2_errors, 1);
                Ok(None)
            }
        }
    }

    /// The L1 TTL of an entry that lives `l2_ttl` in L2 (`None`: no expiry, or unknown).
    fn l1_ttl(&self, l2_ttl: Option<Duration>) -> Option<Duration> {
        min_ttl(l2_ttl, self.inner.l1_max_ttl)
    }

    /// [`Error::Closed`] once closed (the L1 is closed together with the tiered cache).
    async fn ensure_open(&self) -> Result<()> {
        self.inner.l1.ping().await
    }

    async fn read_l2_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        let r = self.inner.l2.get_with_ttl(key).await;
        let c = &self.inner.counters;
        if let Err(e) = &r
            && e.is_wrong_type()
        {
            // Another program's hash/list/… at the key: a corrupt entry, not an L2 outage.
            // Counted as a found entry that proved corrupt (stats turn it into a miss), and
            // Redis's error goes to the caller as `RedisCache` does, so that layers above
            // (`ComputeCache`) see a corrupt entry, not an empty key.
            bump(&c.l2_hits, 1);
            bump(&c.corrupt, 1);
            return r;
        }
        match self.absorb(r)? {
            Some(Some((v, ttl))) => {
                bump(&c.l2_hits, 1);
                self.inner.l1.insert(key, v.clone(), self.l1_ttl(ttl));
                Ok(Some((v, ttl)))
            }
            Some(None) | None => {
                bump(&c.misses, 1);
                Ok(None)
            }
        }
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<L2: Cache> Cache for TieredCache<L2> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_with_ttl(key).await?.map(|(v, _)| v))
    }

    /// On an L1 hit the TTL is L1's remaining TTL (a lower bound of L2's).
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        self.sync().await;
        if let Some(hit) = self.inner.l1.get_with_ttl(key).await? {
            bump(&self.inner.counters.l1_hits, 1);
            return Ok(Some(hit));
        }
        self.read_l2_with_ttl(key).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        check_ttl(ttl)?;
        self.sync().await;
        let ttl = ttl.or(self.inner.default_ttl);
        let r = self.inner.l2.set(key, value.clone(), ttl).await;
        let reached_l2 = self.absorb(r)?.is_some();
        self.inner.l1.set(key, value, self.l1_ttl(ttl)).await?;
        bump(&self.inner.counters.writes, 1);
        if reached_l2 {
            self.publish(Op::Del {
                keys: vec![key.to_owned()],
            })
            .await;
        }
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        check_ttl(ttl)?;
        self.sync().await;
        let ttl = ttl.or(self.inner.default_ttl);
        let r = self.inner.l2.set_nx(key, value.clone(), ttl).await;
        let written = match self.absorb(r)? {
            Some(true) => {
                self.inner.l1.set(key, value, self.l1_ttl(ttl)).await?;
                self.publish(Op::Del {
                    keys: vec![key.to_owned()],
                })
                .await;
                true
            }
            Some(false) => false,
            None => self.inner.l1.set_nx(key, value, self.l1_ttl(ttl)).await?,
        };
        if written {
            bump(&self.inner.counters.writes, 1);
        }
        Ok(written)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.sync().await;
        let in_l1 = self.inner.l1.delete(key).await?;
        let r = self.inner.l2.delete(key).await;
        let existed = match self.absorb(r)? {
            Some(in_l2) => {
                self.publish(Op::Del {
                    keys: vec![key.to_owned()],
                })
                .await;
                in_l2 || in_l1
            }
            None => in_l1,
        };
        if existed {
            bump(&self.inner.counters.deletes, 1);
        }
        Ok(existed)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.sync().await;
        if self.inner.l1.exists(key).await? {
            return Ok(true);
        }
        let r = self.inner.l2.exists(key).await;
        Ok(self.absorb(r)?.unwrap_or(false))
    }

    /// L2's TTL (authoritative); L1's while L2 fails.
    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        self.sync().await;
        let in_l1 = self.inner.l1.ttl(key).await?;
        let r = self.inner.l2.ttl(key).await;
        Ok(self.absorb(r)?.unwrap_or(in_l1))
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        check_ttl(Some(ttl))?;
        self.sync().await;
        let l1_ttl = self.l1_ttl(Some(ttl)).unwrap_or(ttl);
        let in_l1 = self.inner.l1.expire(key, l1_ttl).await?;
        let r = self.inner.l2.expire(key, ttl).await;
        Ok(match self.absorb(r)? {
            Some(in_l2) => {
                self.publish(Op::Del {
                    keys: vec![key.to_owned()],
                })
                .await;
                in_l2
            }
            None => in_l1,
        })
    }

    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.sync().await;
        let mut out = self.inner.l1.mget(keys).await?;
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        let c = &self.inner.counters;
        bump(&c.l1_hits, (keys.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Ok(out);
        }
        let ask: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let r = self.inner.l2.mget(&ask).await;
        if let Some(values) = self.absorb(r)? {
            for (&i, v) in missing.iter().zip(values) {
                out[i] = v;
            }
        }
        let found = missing.iter().filter(|&&i| out[i].is_some()).count() as u64;
        bump(&c.l2_hits, found);
        bump(&c.misses, missing.len() as u64 - found);
        Ok(out)
    }

    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        check_ttl(ttl)?;
        self.sync().await;
        let ttl = ttl.or(self.inner.default_ttl);
        let r = self.inner.l2.mset(entries, ttl).await;
        let reached_l2 = self.absorb(r)?.is_some();
        self.inner.l1.mset(entries, self.l1_ttl(ttl)).await?;
        bump(&self.inner.counters.writes, entries.len() as u64);
        if reached_l2 && !entries.is_empty() {
            self.publish(Op::Del {
                keys: entries.iter().map(|(k, _)| (*k).to_owned()).collect(),
            })
            .await;
        }
        Ok(())
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.sync().await;
        let in_l1 = self.inner.l1.delete_pattern(pattern).await?;
        let r = self.inner.l2.delete_pattern(pattern).await;
        let n = match self.absorb(r)? {
            Some(n) => {
                self.publish(Op::Pattern {
                    pattern: pattern.to_owned(),
                })
                .await;
                n
            }
            None => in_l1,
        };
        bump(&self.inner.counters.deletes, n);
        Ok(n)
    }

    async fn clear(&self) -> Result<u64> {
        self.sync().await;
        let in_l1 = self.inner.l1.clear().await?;
        let r = self.inner.l2.clear().await;
        let n = match self.absorb(r)? {
            Some(n) => {
                self.publish(Op::Clear).await;
                n
            }
            None => in_l1,
        };
        bump(&self.inner.counters.deletes, n);
        Ok(n)
    }

    /// Hits of both tiers, L1's size and evictions, absorbed L2 failures as `errors`, and
    /// L2's deployment-wide totals in `shared`.
    async fn stats(&self) -> Result<CacheStats> {
        self.ensure_open().await?;
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let l1 = self.inner.l1.current_stats();
        let shared = match self.inner.l2.stats().await {
            Ok(s) => s.shared,
            Err(_) => None,
        };
        let corrupt = l(&c.corrupt);
        let hits = (l(&c.l1_hits) + l(&c.l2_hits)).saturating_sub(corrupt);
        Ok(CacheStats {
            hits,
            misses: l(&c.misses) + corrupt,
            writes: l(&c.writes),
            deletes: l(&c.deletes),
            corrupt,
            evictions: l1.evictions,
            expirations: l1.expirations,
            errors: l(&c.l2_errors),
            entries: l1.entries,
            bytes: l1.bytes,
            shared,
        })
    }

    async fn ping(&self) -> Result<()> {
        self.ensure_open().await?;
        self.inner.l2.ping().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.l1.close().await?;
        self.inner.l2.close().await
    }

    fn record_corrupt(&self) {
        bump(&self.inner.counters.corrupt, 1);
    }

    fn clock(&self) -> Option<crate::SharedClock> {
        self.inner.l1.clock()
    }
}
