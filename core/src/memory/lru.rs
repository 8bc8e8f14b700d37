//! [`Lru`]: one shard of the memory tier, a bounded LRU map from string keys to [`Bytes`]
//! with per-entry expiry.
//!
//! Entries live in a slab (`Vec` of slots with a free list) and are doubly linked by `u32`
//! slot indices, most recently used first; a [`hashbrown::HashTable`] of slot indices, keyed
//! by the key's hash, finds them. Lookup, insertion and removal are O(1) and a lookup
//! allocates nothing. There are no pointers and no `unsafe`.
//!
//! The map has no clock: every call that needs the time takes `now_ms` (unix milliseconds),
//! so it runs the same natively, on `wasm32` and under a manual clock in tests.

use std::fmt;
use std::hash::BuildHasher;
use std::iter::FusedIterator;
use std::mem;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};

use crate::cache::CacheStats;

/// "No slot": the end of a list.
const NIL: u32 = u32::MAX;
/// The expiry of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;
/// The largest number of entries one [`Lru`] can hold (slot indices are `u32`, `NIL` excluded).
const MAX_SLOTS: usize = (u32::MAX - 1) as usize;

/// The current time, read only when an entry with an expiry needs it.
///
/// `u64` is a time already known; the memory cache passes a source that reads its clock on
/// first use, so entries without a TTL never cost a clock read.
pub(crate) trait Now {
    /// Unix milliseconds.
    fn now_ms(&mut self) -> u64;
}

impl Now for u64 {
    #[inline]
    fn now_ms(&mut self) -> u64 {
        *self
    }
}

struct Slot {
    key: Box<str>,
    value: Bytes,
    hash: u64,
    /// Absolute unix ms; [`NEVER`] when the entry never expires. Expired when `now >= this`.
    expires_at: u64,
    /// Towards the most recently used end; in a free slot, unused.
    prev: u32,
    /// Towards the least recently used end; in a free slot, the next free slot.
    next: u32,
}

impl Slot {
    #[inline]
    fn size(&self) -> u64 {
        entry_size(&self.key, &self.value)
    }

    #[inline]
    fn is_expired(&self, now: &mut impl Now) -> bool {
        self.expires_at != NEVER && now.now_ms() >= self.expires_at
    }
}

#[inline]
fn entry_size(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64
}

fn to_option(expires_at: u64) -> Option<u64> {
    (expires_at != NEVER).then_some(expires_at)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    hits: u64,
    misses: u64,
    writes: u64,
    deletes: u64,
    evictions: u64,
    expirations: u64,
}

/// A bounded least-recently-used map from string keys to [`Bytes`], with an optional expiry
/// per entry: one shard of [`MemoryCache`](crate::MemoryCache), usable on its own.
///
/// # Bounds and eviction
///
/// The map holds at most `max_entries` entries and at most `max_bytes` bytes, where an
/// entry's size is `key.len() + value.len()`. An insertion that would exceed either bound
/// first removes entries from the least recently used end until both hold. An entry removed
/// that way counts as an *eviction*, or as an *expiration* if its expiry had already passed.
///
/// An entry larger than `max_bytes` on its own (and any entry when `max_entries` is 0) is
/// *rejected*: it is not stored, [`Lru::insert`] returns `false`, any older value under that
/// key is removed, and the rejected write counts as one write and one eviction (as if it
/// were stored and evicted at once).
///
/// # Expiry
///
/// An entry inserted with `expires_at_ms = Some(t)` is live while `now_ms < t`. Expiry is
/// lazy: an expired entry stays in memory (and in [`Lru::len`] and [`Lru::size_bytes`])
/// until a call finds it, evicts it, or [`Lru::purge_expired`] sweeps it; it then counts as
/// an expiration. An expired entry is never returned.
///
/// # Recency
///
/// [`Lru::get`], [`Lru::get_with_expiry`] and [`Lru::insert`] make an entry the most
/// recently used; [`Lru::peek`], [`Lru::contains`], [`Lru::expiry`] and
/// [`Lru::set_expiry`] do not.
///
/// # Counters
///
/// [`Lru::stats`] reports hits and misses (of [`Lru::get`] and [`Lru::get_with_expiry`]
/// only), writes (every [`Lru::insert`]), deletes (live entries removed by
/// [`Lru::remove`], [`Lru::remove_matching`] and [`Lru::clear`]), evictions and expirations.
///
/// # Examples
///
/// ```
/// use larder_core::Bytes;
/// use larder_core::memory::Lru;
///
/// let mut lru = Lru::new(2, 1024);
/// let now = 1_000;
/// lru.insert("a", Bytes::from_static(b"1"), None, now);
/// lru.insert("b", Bytes::from_static(b"2"), Some(now + 500), now);
/// assert_eq!(lru.get("a", now).map(|v| &v[..]), Some(&b"1"[..])); // "a" is now most recent
/// lru.insert("c", Bytes::from_static(b"3"), None, now); // evicts "b", the least recent
/// assert!(!lru.contains("b", now));
/// assert_eq!(lru.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["c", "a"]);
/// assert_eq!(lru.stats().evictions, 1);
/// ```
pub struct Lru {
    slots: Vec<Slot>,
    table: HashTable<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    /// First free slot.
    free: u32,
    len: usize,
    bytes: u64,
    max_entries: usize,
    max_bytes: u64,
    hasher: DefaultHashBuilder,
    counters: Counters,
}

impl fmt::Debug for Lru {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lru")
            .field("len", &self.len)
            .field("bytes", &self.bytes)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Lru {
    /// An empty map holding at most `max_entries` entries (capped at `u32::MAX - 1`) and
    /// `max_bytes` bytes of keys and values. Memory is allocated as entries arrive.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::memory::Lru;
    ///
    /// let lru = Lru::new(100, 64 * 1024);
    /// assert!(lru.is_empty());
    /// assert_eq!(lru.max_entries(), 100);
    /// ```
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self::with_hasher(max_entries, max_bytes, DefaultHashBuilder::default())
    }

    /// An empty map hashing keys with `hasher`; the memory cache gives every shard the same
    /// hasher so that one hash of a key picks the shard and finds the entry.
    pub(crate) fn with_hasher(
        max_entries: usize,
        max_bytes: u64,
        hasher: DefaultHashBuilder,
    ) -> Self {
        Lru {
            slots: Vec::new(),
            table: HashTable::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            len: 0,
            bytes: 0,
            max_entries: max_entries.min(MAX_SLOTS),
            max_bytes,
            hasher,
            counters: Counters::default(),
        }
    }

    /// The number of entries held, including expired entries not yet removed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes held: the sum of `key.len() + value.len()` over all entries, including
    /// expired entries not yet removed.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// The entry bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Activity counters (see [Counters](Lru#counters)); `corrupt` and `errors` are 0,
    /// `entries` and `bytes` are set.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits,
            misses: c.misses,
            writes: c.writes,
            deletes: c.deletes,
            evictions: c.evictions,
            expirations: c.expirations,
            entries: Some(self.len as u64),
            bytes: Some(self.bytes),
            ..CacheStats::default()
        }
    }

    /// Reads a live value and makes it the most recently used. Counts a hit or a miss; an
    /// expired entry is removed and is a miss.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::Bytes;
    /// use larder_core::memory::Lru;
    ///
    /// let mut lru = Lru::new(10, 1024);
    /// lru.insert("k", Bytes::from_static(b"v"), Some(2_000), 1_000);
    /// assert!(lru.get("k", 1_999).is_some());
    /// assert!(lru.get("k", 2_000).is_none()); // expired at 2_000
    /// assert!(lru.is_empty());
    /// ```
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<&Bytes> {
        let hash = self.hash(key);
        self.get_hashed(hash, key, &mut { now_ms }).map(|(v, _)| v)
    }

    /// Like [`Lru::get`], also returning the entry's absolute expiry (`None`: never).
    pub fn get_with_expiry(&mut self, key: &str, now_ms: u64) -> Option<(&Bytes, Option<u64>)> {
        let hash = self.hash(key);
        self.get_hashed(hash, key, &mut { now_ms })
            .map(|(v, e)| (v, to_option(e)))
    }

    /// Reads a live value without changing recency or counters, and without removing an
    /// expired entry (it returns `None` for it).
    pub fn peek(&self, key: &str, now_ms: u64) -> Option<&Bytes> {
        let i = self.find(self.hash(key), key)?;
        let slot = &self.slots[i as usize];
        (!slot.is_expired(&mut { now_ms })).then_some(&slot.value)
    }

    /// Whether `key` holds a live value. Does not change recency or hit/miss counters; an
    /// expired entry is removed (and counted as an expiration).
    pub fn contains(&mut self, key: &str, now_ms: u64) -> bool {
        let hash = self.hash(key);
        self.live(hash, key, &mut { now_ms }).is_some()
    }

    /// The absolute expiry of a live entry: `None` when `key` holds no live value,
    /// `Some(None)` when it never expires. Does not change recency.
    pub fn expiry(&mut self, key: &str, now_ms: u64) -> Option<Option<u64>> {
        let hash = self.hash(key);
        self.expiry_hashed(hash, key, &mut { now_ms })
            .map(to_option)
    }

    /// Replaces the expiry of a live entry (`None`: never expires). Returns whether `key`
    /// held a live value. Does not change recency.
    pub fn set_expiry(&mut self, key: &str, expires_at_ms: Option<u64>, now_ms: u64) -> bool {
        let hash = self.hash(key);
        self.set_expiry_hashed(hash, key, expires_at_ms.unwrap_or(NEVER), &mut { now_ms })
    }

    /// Stores `value` under `key` as the most recently used entry, expiring at
    /// `expires_at_ms` (`None`: never), evicting least recently used entries as needed.
    /// Returns `false` when the entry was rejected as too large (see
    /// [Bounds and eviction](Lru#bounds-and-eviction)).
    ///
    /// The key is copied only when it is new; replacing a value reuses the stored key.
    /// `Some(u64::MAX)` is the same as `None`.
    pub fn insert(
        &mut self,
        key: &str,
        value: Bytes,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> bool {
        let hash = self.hash(key);
        self.insert_hashed(hash, key, value, expires_at_ms.unwrap_or(NEVER), &mut {
            now_ms
        })
    }

    /// Removes `key`, returning its value if it was live (counted as a delete). An expired
    /// entry is removed too, counted as an expiration, and `None` is returned.
    pub fn remove(&mut self, key: &str, now_ms: u64) -> Option<Bytes> {
        let hash = self.hash(key);
        self.remove_hashed(hash, key, &mut { now_ms })
    }

    /// Removes every entry whose key satisfies `pred`; returns how many live entries were
    /// removed (deletes). Matching expired entries are removed as expirations. O(n).
    pub fn remove_matching(&mut self, pred: impl FnMut(&str) -> bool, now_ms: u64) -> usize {
        self.remove_matching_with(pred, &mut { now_ms })
    }

    /// Removes every expired entry; returns how many. O(n).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::Bytes;
    /// use larder_core::memory::Lru;
    ///
    /// let mut lru = Lru::new(10, 1024);
    /// lru.insert("short", Bytes::new(), Some(1_100), 1_000);
    /// lru.insert("forever", Bytes::new(), None, 1_000);
    /// assert_eq!(lru.purge_expired(5_000), 1);
    /// assert_eq!(lru.len(), 1);
    /// ```
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let mut now = now_ms;
        let mut removed = 0;
        let mut i = self.head;
        while i != NIL {
            let next = self.slots[i as usize].next;
            if self.slots[i as usize].is_expired(&mut now) {
                self.remove_at(i);
                self.counters.expirations += 1;
                removed += 1;
            }
            i = next;
        }
        removed
    }

    /// Removes every entry; returns how many were live (counted as deletes; expired ones
    /// count as expirations). Keeps the allocated capacity.
    pub fn clear(&mut self, now_ms: u64) -> usize {
        self.clear_with(&mut { now_ms })
    }

    /// The entries, most recently used first, as `(key, value)`, including expired entries
    /// not yet removed. Does not change recency.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            lru: self,
            cur: self.head,
            remaining: self.len,
        }
    }

    // ---- crate API: the hash is computed once by the caller (it also picks the shard) ----

    #[inline]
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Reads a live value, refreshing recency and counting a hit or a miss; returns the value
    /// and its raw expiry ([`NEVER`] when none).
    #[inline]
    pub(crate) fn get_hashed(
        &mut self,
        hash: u64,
        key: &str,
        now: &mut impl Now,
    ) -> Option<(&Bytes, u64)> {
        match self.live(hash, key, now) {
            Some(i) => {
                self.counters.hits += 1;
                self.touch(i);
                let slot = &self.slots[i as usize];
                Some((&slot.value, slot.expires_at))
            }
            None => {
                self.counters.misses += 1;
                None
            }
        }
    }

    pub(crate) fn contains_hashed(&mut self, hash: u64, key: &str, now: &mut impl Now) -> bool {
        self.live(hash, key, now).is_some()
    }

    pub(crate) fn expiry_hashed(
        &mut self,
        hash: u64,
        key: &str,
        now: &mut impl Now,
    ) -> Option<u64> {
        self.live(hash, key, now)
            .map(|i| self.slots[i as usize].expires_at)
    }

    pub(crate) fn set_expiry_hashed(
        &mut self,
        hash: u64,
        key: &str,
        expires_at: u64,
        now: &mut impl Now,
    ) -> bool {
        match self.live(hash, key, now) {
            Some(i) => {
                self.slots[i as usize].expires_at = expires_at;
                true
            }
            None => false,
        }
    }

    pub(crate) fn remove_hashed(
        &mut self,
        hash: u64,
        key: &str,
        now: &mut impl Now,
    ) -> Option<Bytes> {
        let i = self.live(hash, key, now)?;
        self.counters.deletes += 1;
        Some(self.remove_at(i))
    }

    pub(crate) fn insert_hashed(
        &mut self,
        hash: u64,
        key: &str,
        value: Bytes,
        expires_at: u64,
        now: &mut impl Now,
    ) -> bool {
        self.counters.writes += 1;
        let size = entry_size(key, &value);
        let existing = self.find(hash, key);
        if let Some(i) = existing
            && self.slots[i as usize].is_expired(now)
        {
            self.counters.expirations += 1;
        }
        if size > self.max_bytes || self.max_entries == 0 {
            if let Some(i) = existing {
                self.remove_at(i);
            }
            self.counters.evictions += 1;
            return false;
        }
        if let Some(i) = existing {
            let slot = &mut self.slots[i as usize];
            let old_size = slot.size();
            let old = mem::replace(&mut slot.value, value);
            slot.expires_at = expires_at;
            self.bytes = self.bytes - old_size + size;
            self.touch(i);
            // The entry fits alone, so eviction stops before reaching it at the head.
            while self.bytes > self.max_bytes {
                self.evict_tail(now);
            }
            drop(old);
            return true;
        }
        while self.len >= self.max_entries || self.bytes + size > self.max_bytes {
            self.evict_tail(now);
        }
        let slot = Slot {
            key: key.into(),
            value,
            hash,
            expires_at,
            prev: NIL,
            next: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slots[i as usize].next;
            self.slots[i as usize] = slot;
            i
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
        self.push_front(i);
        self.len += 1;
        self.bytes += size;
        true
    }

    pub(crate) fn remove_matching_with(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        now: &mut impl Now,
    ) -> usize {
        let mut removed = 0;
        let mut i = self.head;
        while i != NIL {
            let slot = &self.slots[i as usize];
            let next = slot.next;
            if pred(&slot.key) {
                if slot.is_expired(now) {
                    self.counters.expirations += 1;
                } else {
                    self.counters.deletes += 1;
                    removed += 1;
                }
                self.remove_at(i);
            }
            i = next;
        }
        removed
    }

    /// Drops every entry without counting anything (closing the cache).
    pub(crate) fn reset(&mut self) {
        self.slots = Vec::new();
        self.table = HashTable::new();
        self.head = NIL;
        self.tail = NIL;
        self.free = NIL;
        self.len = 0;
        self.bytes = 0;
    }

    pub(crate) fn clear_with(&mut self, now: &mut impl Now) -> usize {
        let mut live = 0;
        let mut i = self.head;
        while i != NIL {
            let slot = &self.slots[i as usize];
            if slot.is_expired(now) {
                self.counters.expirations += 1;
            } else {
                live += 1;
            }
            i = slot.next;
        }
        self.counters.deletes += live as u64;
        self.slots.clear();
        self.table.clear();
        self.head = NIL;
        self.tail = NIL;
        self.free = NIL;
        self.len = 0;
        self.bytes = 0;
        live
    }

    // ---- internals ----

    #[inline]
    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                let slot = &slots[i as usize];
                slot.hash == hash && *slot.key == *key
            })
            .copied()
    }

    /// The slot of `key` if it holds a live value; an expired entry is removed and counted.
    #[inline]
    fn live(&mut self, hash: u64, key: &str, now: &mut impl Now) -> Option<u32> {
        let i = self.find(hash, key)?;
        if self.slots[i as usize].is_expired(now) {
            self.remove_at(i);
            self.counters.expirations += 1;
            return None;
        }
        Some(i)
    }

    fn evict_tail(&mut self, now: &mut impl Now) {
        let i = self.tail;
        debug_assert_ne!(i, NIL, "evicting from an empty list");
        if self.slots[i as usize].is_expired(now) {
            self.counters.expirations += 1;
        } else {
            self.counters.evictions += 1;
        }
        self.remove_at(i);
    }

    /// Unlinks and frees slot `i`, returning its value.
    fn remove_at(&mut self, i: u32) -> Bytes {
        let hash = self.slots[i as usize].hash;
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        } else {
            debug_assert!(false, "slot {i} missing from the index");
        }
        self.unlink(i);
        let free = self.free;
        let slot = &mut self.slots[i as usize];
        self.bytes -= slot.size();
        self.len -= 1;
        // Empty `Box<str>` and `Bytes` do not allocate.
        slot.key = Box::default();
        let value = mem::take(&mut slot.value);
        slot.prev = NIL;
        slot.next = free;
        self.free = i;
        value
    }

    #[inline]
    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    #[inline]
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let slot = &self.slots[i as usize];
            (slot.prev, slot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    #[inline]
    fn push_front(&mut self, i: u32) {
        let old_head = self.head;
        {
            let slot = &mut self.slots[i as usize];
            slot.prev = NIL;
            slot.next = old_head;
        }
        if old_head == NIL {
            self.tail = i;
        } else {
            self.slots[old_head as usize].prev = i;
        }
        self.head = i;
    }

    /// Slots allocated, free or not (tests).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Panics unless the list, the index, the free list and the byte count agree.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.table.len(), self.len, "index size != len");
        let mut count = 0;
        let mut bytes = 0;
        let mut prev = NIL;
        let mut i = self.head;
        while i != NIL {
            let slot = &self.slots[i as usize];
            assert_eq!(slot.prev, prev, "broken back link at slot {i}");
            assert_eq!(slot.hash, self.hash(&slot.key), "stale hash at slot {i}");
            assert_eq!(
                self.find(slot.hash, &slot.key),
                Some(i),
                "index misses slot {i}"
            );
            count += 1;
            bytes += slot.size();
            assert!(count <= self.len, "cycle in the list");
            prev = i;
            i = slot.next;
        }
        assert_eq!(self.tail, prev, "tail is not the last entry");
        assert_eq!(count, self.len, "list length != len");
        assert_eq!(bytes, self.bytes, "byte count drifted");
        let mut free = 0;
        let mut i = self.free;
        while i != NIL {
            let slot = &self.slots[i as usize];
            assert!(
                slot.key.is_empty() && slot.value.is_empty(),
                "free slot holds data"
            );
            free += 1;
            assert!(free <= self.slots.len(), "cycle in the free list");
            i = slot.next;
        }
        assert_eq!(free + self.len, self.slots.len(), "slots leaked");
        assert!(self.len <= self.max_entries, "entry bound exceeded");
        assert!(self.bytes <= self.max_bytes, "byte bound exceeded");
    }
}

/// The entries of an [`Lru`], most recently used first: see [`Lru::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    lru: &'a Lru,
    cur: u32,
    remaining: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        if self.cur == NIL {
            return None;
        }
        let slot = &self.lru.slots[self.cur as usize];
        self.cur = slot.next;
        self.remaining -= 1;
        Some((&slot.key, &slot.value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Iter<'_> {}
impl FusedIterator for Iter<'_> {}
