//! The [`Cache`] trait every backend implements, and its statistics.

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;

use crate::envelope::{Decoded, Envelope};
use crate::error::Result;
use crate::transport::{MaybeSend, MaybeSync};

/// The remaining lifetime of a key, as reported by [`Cache::ttl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key does not exist (or has expired).
    Missing,
    /// The key exists and never expires.
    NoExpiry,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

/// Counters describing a cache's activity.
///
/// Counts are for this cache instance since it was built, except [`CacheStats::shared`],
/// which a Redis-backed cache fills with the deployment-wide totals stored in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found nothing (including expired and corrupt entries).
    pub misses: u64,
    /// Values written.
    pub writes: u64,
    /// Keys deleted by `delete`, `delete_pattern` or `clear`.
    pub deletes: u64,
    /// Values that were present but could not be decoded, or keys holding a value of the
    /// wrong type (`WRONGTYPE`); each is also a miss.
    pub corrupt: u64,
    /// Entries removed to make room (memory tier).
    pub evictions: u64,
    /// Entries found expired and dropped (memory tier).
    pub expirations: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Entries currently held, where the backend knows it cheaply (memory tier).
    pub entries: Option<u64>,
    /// Bytes currently held (keys + values), where the backend knows it cheaply.
    pub bytes: Option<u64>,
    /// Deployment-wide totals read from the shared store (Redis), when there is one.
    pub shared: Option<SharedStats>,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 when there were no reads.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.misses)
    }
}

/// Totals every instance of a deployment contributed to (stored under
/// `{prefix}:stats:hits|misses|writes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// Hits across all instances.
    pub hits: u64,
    /// Misses across all instances.
    pub misses: u64,
    /// Writes across all instances.
    pub writes: u64,
}

impl SharedStats {
    /// Builds shared totals.
    pub fn new(hits: u64, misses: u64, writes: u64) -> Self {
        SharedStats {
            hits,
            misses,
            writes,
        }
    }

    /// `hits / (hits + misses)`, or 0 when there were no reads.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.misses)
    }
}

fn ratio(hits: u64, misses: u64) -> f64 {
    let total = hits + misses;
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// An asynchronous key-value cache of byte values with per-entry TTLs.
///
/// Implemented by [`MemoryCache`](crate::MemoryCache) and by
/// [`RedisCache`](crate::RedisCache) over any [`Transport`](crate::Transport).
///
/// # TTLs
///
/// Every write takes `ttl: Option<Duration>`: `None` uses the cache's default TTL (which may
/// itself be "never expires"); `Some(d)` expires the entry after `d`. A zero duration is
/// rejected with [`Error::InvalidInput`](crate::Error::InvalidInput). TTLs have millisecond
/// resolution; a non-zero TTL below 1 ms is rounded up to 1 ms.
///
/// # Keys and values
///
/// Keys are any UTF-8 strings, including spaces and non-ASCII text. Values are arbitrary
/// bytes; an empty value is a value, distinct from a miss (`Some(empty)` vs `None`).
///
/// # Errors
///
/// Backend failures are returned as [`Error`](crate::Error); a value that is present but
/// cannot be decoded is never an error (see [`CacheExt::get_envelope`]).
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait Cache: MaybeSend + MaybeSync + Debug {
    /// Reads a value.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Reads a value and its remaining TTL (`None` when it never expires).
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>>;

    /// Writes a value, replacing any previous one.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Writes a value only if the key holds none. Returns whether it was written.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool>;

    /// Deletes a key. Returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Whether a key holds a live value.
    async fn exists(&self, key: &str) -> Result<bool>;

    /// The remaining lifetime of a key.
    async fn ttl(&self, key: &str) -> Result<KeyTtl>;

    /// Sets a new TTL on an existing key. Returns whether the key existed.
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool>;

    /// Reads many values at once; the result has one slot per key, in order, `None` for a
    /// miss.
    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>>;

    /// Writes many values, all with the same TTL.
    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()>;

    /// Deletes every key matching a glob pattern (`*`, `?`, `[…]`, `\` as in Redis `MATCH`).
    /// Returns how many were deleted.
    async fn delete_pattern(&self, pattern: &str) -> Result<u64>;

    /// Deletes every entry of this cache (and nothing else: for Redis, only keys under this
    /// cache's prefix). Returns how many were deleted.
    async fn clear(&self) -> Result<u64>;

    /// Activity counters.
    async fn stats(&self) -> Result<CacheStats>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()>;

    /// Flushes pending statistics and releases the backend. Later calls fail with
    /// [`Error::Closed`](crate::Error::Closed).
    async fn close(&self) -> Result<()>;

    /// Records that a value read through this cache could not be decoded (counted in
    /// [`CacheStats::corrupt`]). Called by [`CacheExt::get_envelope`]; the default does
    /// nothing.
    fn record_corrupt(&self) {}

    /// The clock this cache reads time from, when it reads any (the memory tier does: its
    /// TTLs; Redis keeps time itself). Layers built over a cache — get-or-compute, the
    /// response cache — use it unless given another, so a test's clock is given once.
    fn clock(&self) -> Option<crate::SharedClock> {
        None
    }
}

/// Envelope-level helpers available on every [`Cache`].
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait CacheExt: Cache {
    /// Reads and decodes an [`Envelope`]. A legacy raw-text value becomes an envelope with
    /// only `response` set; a value that cannot be decoded is a miss counted as corrupt
    /// (see [`Cache::record_corrupt`]) and never an error.
    async fn get_envelope(&self, key: &str) -> Result<Option<Envelope>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(raw) => match Envelope::decode(&raw) {
                Decoded::Envelope(e) | Decoded::Legacy(e) => Ok(Some(e)),
                Decoded::Corrupt(_) => {
                    self.record_corrupt();
                    Ok(None)
                }
            },
        }
    }

    /// Encodes and writes an [`Envelope`].
    async fn set_envelope(
        &self,
        key: &str,
        envelope: &Envelope,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.set(key, envelope.encode(), ttl).await
    }
}

impl<C: Cache + ?Sized> CacheExt for C {}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<C: Cache + ?Sized> Cache for std::sync::Arc<C> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        (**self).get(key).await
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        (**self).get_with_ttl(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        (**self).set(key, value, ttl).await
    }
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        (**self).set_nx(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        (**self).exists(key).await
    }
    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        (**self).ttl(key).await
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        (**self).expire(key, ttl).await
    }
    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        (**self).mget(keys).await
    }
    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        (**self).mset(entries, ttl).await
    }
    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        (**self).delete_pattern(pattern).await
    }
    async fn clear(&self) -> Result<u64> {
        (**self).clear().await
    }
    async fn stats(&self) -> Result<CacheStats> {
        (**self).stats().await
    }
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
    fn record_corrupt(&self) {
        (**self).record_corrupt()
    }
    fn clock(&self) -> Option<crate::SharedClock> {
        (**self).clock()
    }
}

/// Validates a per-call TTL: `Some(0)` is rejected.
pub(crate) fn check_ttl(ttl: Option<Duration>) -> Result<()> {
    match ttl {
        Some(d) if d.is_zero() => Err(crate::Error::InvalidInput(
            "a TTL of zero would expire the entry at once; pass None for the default TTL".into(),
        )),
        _ => Ok(()),
    }
}

/// Glob matching with Redis `MATCH` semantics (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`),
/// for backends that filter keys themselves.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let (mut star_p, mut star_t) = (usize::MAX, 0usize);
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = p;
                    star_t = t;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        if star_p != usize::MAX {
            p = star_p + 1;
            star_t += 1;
            t = star_t;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Matches one `[...]` class at `pattern[start]`; returns (matched, index after `]`), or
/// `None` when the class is unterminated.
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < pattern.len() && pattern[i] == b'^';
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() && (pattern[i] != b']' || first) {
        first = false;
        let mut lo = pattern[i];
        if lo == b'\\' && i + 1 < pattern.len() {
            i += 1;
            lo = pattern[i];
        }
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let hi = pattern[i + 2];
            let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            if (a..=b).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    if i >= pattern.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"user:*", b"user:42"));
        assert!(!glob_match(b"user:*", b"users:42"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(!glob_match(b"h?llo", b"hllo"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[ae]llo", b"hillo"));
        assert!(glob_match(b"h[^e]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*a*b*", b"xxaxxbxx"));
        assert!(glob_match("ключ:*".as_bytes(), "ключ:значение".as_bytes()));
    }

    #[test]
    fn stats_hit_rate() {
        let s = CacheStats {
            hits: 3,
            misses: 1,
            ..Default::default()
        };
        assert!((s.hit_rate() - 0.75).abs() < 1e-12);
        assert_eq!(CacheStats::default().hit_rate(), 0.0);
    }

    #[test]
    fn zero_ttl_is_rejected() {
        assert!(check_ttl(Some(Duration::ZERO)).is_err());
        assert!(check_ttl(None).is_ok());
        assert!(check_ttl(Some(Duration::from_millis(1))).is_ok());
    }
}
