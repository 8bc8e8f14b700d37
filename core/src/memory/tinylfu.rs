//! [`TinyLfu`]: one shard of the memory tier, a bounded map from string keys to [`Bytes`]
//! with per-entry expiry, evicting by W-TinyLFU.
//!
//! Entries live in a slab (`Vec` of slots with a free list) and are doubly linked by `u32`
//! slot indices into three lists (the window, probation and protected segments), most
//! recently placed first; a [`hashbrown::HashTable`] of (key, slot index) pairs, keyed by
//! the key's hash, finds them. The key lives in the index, not in the slot: a lookup reads
//! the key and the slot (value, expiry, marks, links: one cache line) at once, rather than
//! the slot first and then the key it points to. An index entry ([`Entry`]) takes 16 bytes
//! on 64-bit targets, four to a cache line. A [`Sketch`] estimates how often keys were used
//! lately. Lookup, insertion and removal are O(1) and a lookup allocates nothing; a read of
//! a protected entry writes nothing but a mark in its slot. Entries refer to each other by
//! slot index, not by pointer; the only `unsafe` is in [`Entry`].
//!
//! The map has no clock: every call that needs the time takes `now_ms` (unix milliseconds),
//! so it runs the same natively, on `wasm32` and under a manual clock in tests.

use std::fmt;
use std::hash::BuildHasher;
use std::iter::FusedIterator;
use std::mem;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};

use super::entry::Entry;
use super::sketch::Sketch;
use crate::cache::CacheStats;

#[cfg(test)]
thread_local! {
    /// Whether [`TinyLfu::admit_one`] is on (tests turn it off to compare its outcome with
    /// the general path's).
    pub(crate) static ADMIT_ONE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    /// How many times [`TinyLfu::admit_one`] made room (tests).
    pub(crate) static ADMITTED_ONE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// "No slot": the end of a list.
const NIL: u32 = u32::MAX;
/// The expiry of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;
/// The largest number of entries one [`TinyLfu`] can hold (slot indices are `u32`, `NIL`
/// excluded).
const MAX_SLOTS: usize = (u32::MAX - 1) as usize;

/// The segments, as list indices.
const WINDOW: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

/// The most second chances one promotion gives protected entries (see
/// [`TinyLfu::promote`]); bounds its work.
const SECOND_CHANCES: u32 = 16;

/// Shares of the capacity are fixed-point fractions of `1 << FRAC_BITS`.
const FRAC_BITS: u32 = 20;
const FRAC_ONE: u64 = 1 << FRAC_BITS;
/// The window's share of the capacity: half a percent (Caffeine starts at one). Window
/// entries churn by recency, so on a loop slightly larger than the cache every window slot
/// is a miss; half a percent keeps the burst-absorbing window and hits the loop more often
/// (the memory benchmark).
const WINDOW_SHARE: u64 = FRAC_ONE / 200;
/// The protected segment's share of the capacity: 83 % of the rest (Caffeine's is 80 %). A
/// larger protected segment favours frequency (Zipf and scans at small capacities), a
/// smaller one recency (a moving hot set); 83 % is where the memory benchmark's traces meet
/// in the middle.
const PROTECTED_SHARE: u64 = (FRAC_ONE - WINDOW_SHARE) * 83 / 100;

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

/// An entry but its key, on one cache line: the value, the expiry, the policy's marks,
/// the key's hash and length, and the entry's place in its segment's list. The key is in
/// the index ([`Entry`]).
#[repr(align(64))]
struct Slot {
    value: Bytes,
    /// Absolute unix ms; [`NEVER`] when the entry never expires. Expired when `now >= this`.
    expires_at: u64,
    hash: u64,
    /// Towards the head of the list; in a free slot, unused.
    prev: u32,
    /// Towards the tail of the list; in a free slot, the next free slot.
    next: u32,
    /// The key's estimate in the sketch when it was last counted, with the sketch's epoch
    /// then ([`Sketch::count`]); 0 when not counted.
    counted: u32,
    /// The key's length, or [`LONG_KEY`] when it does not fit (then the index has it).
    key_len: u16,
    /// The segment holding the entry.
    segment: u8,
    /// In the protected segment: read since it last reached the segment's end.
    referenced: bool,
}

// A slot is one cache line (the layout above leaves no padding on 64-bit targets).
const _: () = assert!(mem::size_of::<Slot>() == 64);

/// [`Slot::key_len`] of a key of `u16::MAX` bytes or more.
const LONG_KEY: u16 = u16::MAX;

/// The entries [`TinyLfu::reset`] or [`TinyLfu::clear_with`] took out of the map, dropped
/// where this is (after the shard's lock is released).
pub(crate) struct ResetEntries {
    _slots: Vec<Slot>,
    _table: HashTable<Entry>,
}

/// A key and value an insertion took out of the map, for the caller to drop once it has
/// released the shard's lock: dropping a value may free a large buffer, and other threads
/// wait for the lock meanwhile (quick_cache and moka also drop outside their locks). Holds
/// the first one (an insertion usually evicts one entry or replaces one value); any more
/// are dropped at once. A new key as long as the evicted one is copied into the evicted
/// key's allocation instead ([`Removed::reuse_for`]).
#[derive(Default)]
pub(crate) struct Removed(Option<(Box<str>, Bytes)>);

impl Removed {
    #[inline]
    fn push(&mut self, key: Box<str>, value: Bytes) {
        if self.0.is_none() {
            self.0 = Some((key, value));
        }
    }

    /// A copy of `key` to store, in the evicted key's allocation when the two are as long
    /// (the response cache's keys all are): one allocation and one free fewer.
    #[inline(always)]
    fn reuse_for(&mut self, key: &str) -> Box<str> {
        match &mut self.0 {
            Some((old, _)) if old.len() == key.len() => {
                let mut reused = String::from(mem::take(old));
                reused.clear();
                reused.push_str(key);
                // Its capacity is its length: no reallocation.
                reused.into_boxed_str()
            }
            _ => key.into(),
        }
    }
}

impl Slot {
    const FREE: Slot = Slot {
        value: Bytes::new(),
        expires_at: NEVER,
        hash: 0,
        prev: NIL,
        next: NIL,
        counted: 0,
        key_len: 0,
        segment: WINDOW,
        referenced: false,
    };

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

/// One segment's list: its ends and its totals.
#[derive(Debug, Clone, Copy)]
struct List {
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    len: usize,
    bytes: u64,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
        bytes: 0,
    };
}

/// An entry bound and a byte bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    entries: usize,
    bytes: u64,
}

impl Limit {
    /// `share` (a fraction of `FRAC_ONE`) of `self`, rounded up.
    fn share(self, share: u64) -> Limit {
        let rest = |total: u128| total - ((total * u128::from(FRAC_ONE - share)) >> FRAC_BITS);
        Limit {
            entries: rest(self.entries as u128) as usize,
            bytes: rest(u128::from(self.bytes)) as u64,
        }
    }

    /// Whether `len` entries of `bytes` bytes exceed this limit.
    #[inline]
    fn exceeded_by(self, len: usize, bytes: u64) -> bool {
        len > self.entries || bytes > self.bytes
    }
}

/// Kept small and first in [`TinyLfu`] (see there).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Counters {
    hits: u64,
    misses: u64,
    writes: u64,
    deletes: u64,
    evictions: u64,
    expirations: u64,
}

/// A bounded map from string keys to [`Bytes`] with an optional expiry per entry, evicting
/// by W-TinyLFU: one shard of [`MemoryCache`](crate::MemoryCache), usable on its own.
///
/// # Policy
///
/// New entries enter a small *window* ordered by recency. What leaves the window joins the
/// *probation* segment of the main space, but only if it was used more often lately than
/// the entry it would displace there (the least recently used of probation); otherwise it
/// is the one evicted. Usage is estimated by a frequency sketch that counts reads and writes
/// and halves its counts periodically, so that it follows recent popularity. Uses of an
/// entry while it is in the window are not counted: they are correlated references (a
/// retry, a burst of identical calls), and counting them would make a prompt sent five
/// times in a row and never again look more popular than one asked for every minute. A
/// read of a probation entry promotes it to the *protected* segment, whose overflow is
/// demoted back to probation. A read of a protected entry only marks it: when the protected
/// segment overflows, its oldest entry is demoted unless it is marked, in which case it is
/// unmarked and stays for another round (a second chance, as in the CLOCK algorithm). So
/// an entry used once cannot push out entries used often (scans and one-off keys pass
/// through the window), and a loop over slightly more keys than fit keeps most of them.
///
/// The window holds a small fixed share of the capacity and the protected segment most of
/// the rest. (Caffeine also adapts the window's share by hill climbing on the sampled hit
/// rate; per shard, on the memory benchmark's traces, that lost hit ratio, so the share is
/// fixed.)
///
/// A write never evicts the entry it writes: an entry that fits the bounds is readable
/// right after [`TinyLfu::insert`] returns `true`.
///
/// # Bounds and eviction
///
/// The map holds at most `max_entries` entries and at most `max_bytes` bytes, where an
/// entry's size is `key.len() + value.len()`; the segments' shares apply to both bounds. An
/// insertion that would exceed either bound first removes entries, as the policy chooses,
/// until both hold; expired entries met on the way go first. An entry removed that way
/// counts as an *eviction*, or as an *expiration* if its expiry had already passed.
///
/// An entry larger than `max_bytes` on its own or with a key of 4 GiB or more (and any
/// entry when `max_entries` is 0) is *rejected*: it is not stored, [`TinyLfu::insert`]
/// returns `false`, any older value under that key is removed, and the rejected write
/// counts as one write and one eviction (as if it were stored and evicted at once).
///
/// # Expiry
///
/// An entry inserted with `expires_at_ms = Some(t)` is live while `now_ms < t`. Expiry is
/// lazy: an expired entry stays in memory (and in [`TinyLfu::len`] and
/// [`TinyLfu::size_bytes`]) until a call finds it, evicts it, or [`TinyLfu::purge_expired`]
/// sweeps it; it then counts as an expiration. An expired entry is never returned.
///
/// # Use
///
/// [`TinyLfu::get`], [`TinyLfu::get_with_expiry`] and [`TinyLfu::insert`] count as a use of
/// the key (for the entry's recency and, except while the entry is in the window, for the
/// frequency estimate: see [Policy](TinyLfu#policy)); [`TinyLfu::peek`],
/// [`TinyLfu::contains`], [`TinyLfu::expiry`] and [`TinyLfu::set_expiry`] do not.
///
/// # Counters
///
/// [`TinyLfu::stats`] reports hits and misses (of [`TinyLfu::get`] and
/// [`TinyLfu::get_with_expiry`] only), writes (every [`TinyLfu::insert`]), deletes (live
/// entries removed by [`TinyLfu::remove`], [`TinyLfu::remove_matching`] and
/// [`TinyLfu::clear`]), evictions and expirations.
///
/// # Examples
///
/// ```
/// use larder_core::Bytes;
/// use larder_core::memory::TinyLfu;
///
/// let mut map = TinyLfu::new(100, 64 * 1024);
/// let now = 1_000;
/// map.insert("popular", Bytes::from_static(b"1"), None, now);
/// // Used now and then, between other keys (reads in a row count as one use).
/// for i in 0..5 {
///     map.insert(&format!("other-{i}"), Bytes::from_static(b"2"), None, now);
///     assert!(map.get("popular", now).is_some());
/// }
/// // A scan of one-off keys, ten times the capacity, passes through without evicting it.
/// for i in 0..1_000 {
///     map.insert(&format!("once-{i}"), Bytes::from_static(b"x"), None, now);
/// }
/// assert!(map.contains("popular", now));
/// assert_eq!(map.len(), 100);
/// ```
// `repr(C)` keeps the declared order: the counters come first, so that in a shard of the
// memory cache (`Mutex<TinyLfu>`) the only field a read of a protected entry writes (`hits`)
// shares the lock's cache line, and a read of a shard another thread used last moves one
// line between cores rather than two. The fields after it are only read by such a read.
#[repr(C)]
pub struct TinyLfu {
    counters: Counters,
    table: HashTable<Entry>,
    slots: Vec<Slot>,
    /// The window, probation and protected segments (indexed by `WINDOW`, …).
    lists: [List; 3],
    /// First free slot.
    free: u32,
    len: usize,
    bytes: u64,
    max: Limit,
    /// The window's and the protected segment's limits under the current shares.
    window_max: Limit,
    protected_max: Limit,
    sketch: Sketch,
    /// Grow the sketch when `len` reaches this.
    sketch_grow_at: usize,
    hasher: DefaultHashBuilder,
}

impl fmt::Debug for TinyLfu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinyLfu")
            .field("len", &self.len)
            .field("bytes", &self.bytes)
            .field("max_entries", &self.max.entries)
            .field("max_bytes", &self.max.bytes)
            .field("window_len", &self.lists[WINDOW as usize].len)
            .field("protected_len", &self.lists[PROTECTED as usize].len)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl TinyLfu {
    /// An empty map holding at most `max_entries` entries (capped at `u32::MAX - 1`) and
    /// `max_bytes` bytes of keys and values. Memory is allocated as entries arrive.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::memory::TinyLfu;
    ///
    /// let map = TinyLfu::new(100, 64 * 1024);
    /// assert!(map.is_empty());
    /// assert_eq!(map.max_entries(), 100);
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
        let max = Limit {
            entries: max_entries.min(MAX_SLOTS),
            bytes: max_bytes,
        };
        let mut map = TinyLfu {
            slots: Vec::new(),
            table: HashTable::new(),
            lists: [List::EMPTY; 3],
            free: NIL,
            len: 0,
            bytes: 0,
            max,
            window_max: max.share(WINDOW_SHARE),
            protected_max: max.share(PROTECTED_SHARE),
            sketch: Sketch::empty(),
            sketch_grow_at: 0,
            hasher,
            counters: Counters::default(),
        };
        map.reset_sketch();
        map
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
        self.max.entries
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.max.bytes
    }

    /// Activity counters (see [Counters](TinyLfu#counters)); `corrupt` and `errors` are 0,
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

    /// Reads a live value, counting a use of the key. Counts a hit or a miss; an expired
    /// entry is removed and is a miss.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::Bytes;
    /// use larder_core::memory::TinyLfu;
    ///
    /// let mut map = TinyLfu::new(10, 1024);
    /// map.insert("k", Bytes::from_static(b"v"), Some(2_000), 1_000);
    /// assert!(map.get("k", 1_999).is_some());
    /// assert!(map.get("k", 2_000).is_none()); // expired at 2_000
    /// assert!(map.is_empty());
    /// ```
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<&Bytes> {
        let hash = self.hash(key);
        self.get_hashed(hash, key, &mut { now_ms }).map(|(v, _)| v)
    }

    /// Like [`TinyLfu::get`], also returning the entry's absolute expiry (`None`: never).
    pub fn get_with_expiry(&mut self, key: &str, now_ms: u64) -> Option<(&Bytes, Option<u64>)> {
        let hash = self.hash(key);
        self.get_hashed(hash, key, &mut { now_ms })
            .map(|(v, e)| (v, to_option(e)))
    }

    /// Reads a live value without counting a use or a hit, and without removing an expired
    /// entry (it returns `None` for it).
    pub fn peek(&self, key: &str, now_ms: u64) -> Option<&Bytes> {
        let i = self.find(self.hash(key), key)?;
        let slot = &self.slots[i as usize];
        (!slot.is_expired(&mut { now_ms })).then_some(&slot.value)
    }

    /// Whether `key` holds a live value. Does not count a use or a hit; an expired entry is
    /// removed (and counted as an expiration).
    pub fn contains(&mut self, key: &str, now_ms: u64) -> bool {
        let hash = self.hash(key);
        self.live(hash, key, &mut { now_ms }).is_some()
    }

    /// The absolute expiry of a live entry: `None` when `key` holds no live value,
    /// `Some(None)` when it never expires. Does not count a use.
    pub fn expiry(&mut self, key: &str, now_ms: u64) -> Option<Option<u64>> {
        let hash = self.hash(key);
        self.expiry_hashed(hash, key, &mut { now_ms })
            .map(to_option)
    }

    /// Replaces the expiry of a live entry (`None`: never expires). Returns whether `key`
    /// held a live value. Does not count a use.
    pub fn set_expiry(&mut self, key: &str, expires_at_ms: Option<u64>, now_ms: u64) -> bool {
        let hash = self.hash(key);
        self.set_expiry_hashed(hash, key, expires_at_ms.unwrap_or(NEVER), &mut { now_ms })
    }

    /// Stores `value` under `key`, expiring at `expires_at_ms` (`None`: never), evicting
    /// other entries as the policy chooses (see [Policy](TinyLfu#policy)); counts a use of
    /// the key. Returns `false` when the entry was rejected as too large (see
    /// [Bounds and eviction](TinyLfu#bounds-and-eviction)); otherwise the entry is readable
    /// until something else removes it.
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
        let expires_at = expires_at_ms.unwrap_or(NEVER);
        self.insert_hashed(
            hash,
            key,
            value,
            expires_at,
            &mut { now_ms },
            &mut Removed::default(),
        )
    }

    /// Removes `key`, returning its value if it was live (counted as a delete). An expired
    /// entry is removed too, counted as an expiration, and `None` is returned.
    pub fn remove(&mut self, key: &str, now_ms: u64) -> Option<Bytes> {
        let hash = self.hash(key);
        self.remove_hashed(hash, key, &mut { now_ms })
            .map(|(_, value)| value)
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
    /// use larder_core::memory::TinyLfu;
    ///
    /// let mut map = TinyLfu::new(10, 1024);
    /// map.insert("short", Bytes::new(), Some(1_100), 1_000);
    /// map.insert("forever", Bytes::new(), None, 1_000);
    /// assert_eq!(map.purge_expired(5_000), 1);
    /// assert_eq!(map.len(), 1);
    /// ```
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let mut now = now_ms;
        let mut removed = 0;
        for segment in [WINDOW, PROBATION, PROTECTED] {
            let mut i = self.lists[segment as usize].head;
            while i != NIL {
                let next = self.slots[i as usize].next;
                if self.slots[i as usize].is_expired(&mut now) {
                    self.remove_at(i);
                    self.counters.expirations += 1;
                    removed += 1;
                }
                i = next;
            }
        }
        removed
    }

    /// Removes every entry; returns how many were live (counted as deletes; expired ones
    /// count as expirations). Keeps room for as many entries as it had room for; forgets
    /// the usage history.
    pub fn clear(&mut self, now_ms: u64) -> usize {
        self.clear_with(&mut { now_ms }).0
    }

    /// The entries as `(key, value)`, including expired entries not yet removed: the window,
    /// then the probation and the protected segments, each most recently placed first (a
    /// read moves a window entry to the front, promotes a probation entry and only marks a
    /// protected one). Does not count a use.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            map: self,
            segment: WINDOW,
            cur: self.lists[WINDOW as usize].head,
            remaining: self.len,
        }
    }

    // ---- crate API: the hash is computed once by the caller (it also picks the shard) ----

    #[inline]
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Reads a live value, counting a use and a hit or a miss; returns the value and its raw
    /// expiry ([`NEVER`] when none).
    #[inline]
    pub(crate) fn get_hashed(
        &mut self,
        hash: u64,
        key: &str,
        now: &mut impl Now,
    ) -> Option<(&Bytes, u64)> {
        let Some(i) = self.live(hash, key, now) else {
            self.counters.misses += 1;
            return None;
        };
        self.counters.hits += 1;
        self.use_entry(i, hash);
        let slot = &self.slots[i as usize];
        Some((&slot.value, slot.expires_at))
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

    /// Removes a live entry, returning its key and value (see [`Removed`]).
    pub(crate) fn remove_hashed(
        &mut self,
        hash: u64,
        key: &str,
        now: &mut impl Now,
    ) -> Option<(Box<str>, Bytes)> {
        let i = self.live(hash, key, now)?;
        self.counters.deletes += 1;
        Some(self.remove_at(i))
    }

    /// Stores an entry (see [`TinyLfu::insert`]); the entries it evicts and the value it
    /// replaces go to `removed`.
    pub(crate) fn insert_hashed(
        &mut self,
        hash: u64,
        key: &str,
        value: Bytes,
        expires_at: u64,
        now: &mut impl Now,
        removed: &mut Removed,
    ) -> bool {
        self.counters.writes += 1;
        let size = entry_size(key, &value);
        let existing = self.find(hash, key);
        if let Some(i) = existing
            && self.slots[i as usize].is_expired(now)
        {
            self.counters.expirations += 1;
        }
        if size > self.max.bytes || self.max.entries == 0 || !Entry::fits(key.len()) {
            if let Some(i) = existing {
                let (key, value) = self.remove_at(i);
                removed.push(key, value);
            }
            self.counters.evictions += 1;
            return false;
        }
        if let Some(i) = existing {
            let old_size = self.size(i);
            let slot = &mut self.slots[i as usize];
            let old = mem::replace(&mut slot.value, value);
            slot.expires_at = expires_at;
            let list = &mut self.lists[slot.segment as usize];
            list.bytes = list.bytes - old_size + size;
            self.bytes = self.bytes - old_size + size;
            self.use_entry(i, hash);
            removed.push(Box::default(), old);
            // The entry fits alone, so eviction stops before it has to consider it.
            self.make_room(0, 0, i, now, removed);
            return true;
        }
        let counted = self.sketch.count(hash);
        self.make_room(1, size, NIL, now, removed);
        let slot = Slot {
            value,
            expires_at,
            hash,
            counted,
            key_len: u16::try_from(key.len()).unwrap_or(LONG_KEY),
            ..Slot::FREE
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slots[i as usize].next;
            self.slots[i as usize] = slot;
            i
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling, but never past the entry bound: a full map holds no
                // spare slots.
                let room = self.max.entries - self.slots.len();
                let more = self.slots.len().max(4).min(room).max(1);
                self.slots.reserve_exact(more);
            }
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        let key = removed.reuse_for(key);
        let slots = &self.slots;
        let Some(entry) = Entry::new(key, i) else {
            unreachable!("a key that does not fit an entry is rejected above")
        };
        self.table
            .insert_unique(hash, entry, |e| slots[e.slot as usize].hash);
        self.push_front(i, WINDOW, size);
        self.len += 1;
        self.bytes += size;
        if self.len >= self.sketch_grow_at {
            self.grow_sketch();
        }
        true
    }

    pub(crate) fn remove_matching_with(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        now: &mut impl Now,
    ) -> usize {
        let mut removed = 0;
        for segment in [WINDOW, PROBATION, PROTECTED] {
            let mut i = self.lists[segment as usize].head;
            while i != NIL {
                let slot = &self.slots[i as usize];
                let next = slot.next;
                if pred(self.key(i)) {
                    if self.slots[i as usize].is_expired(now) {
                        self.counters.expirations += 1;
                    } else {
                        self.counters.deletes += 1;
                        removed += 1;
                    }
                    self.remove_at(i);
                }
                i = next;
            }
        }
        removed
    }

    /// Takes out every entry and drops the usage history, without counting anything
    /// (closing the cache). The entries are returned for the caller to drop after it has
    /// released the shard's lock (see [`Removed`]).
    #[must_use = "the entries are dropped where the result is"]
    pub(crate) fn reset(&mut self) -> ResetEntries {
        let entries = ResetEntries {
            _slots: mem::take(&mut self.slots),
            _table: mem::take(&mut self.table),
        };
        self.lists = [List::EMPTY; 3];
        self.free = NIL;
        self.len = 0;
        self.bytes = 0;
        self.reset_sketch();
        entries
    }

    /// Removes every entry (see [`TinyLfu::clear`]); returns how many were live, and the
    /// entries for the caller to drop after it has released the shard's lock. The map gets
    /// fresh room for as many entries as it had.
    #[must_use = "the entries are dropped where the result is"]
    pub(crate) fn clear_with(&mut self, now: &mut impl Now) -> (usize, ResetEntries) {
        let mut live = 0;
        for list in self.lists {
            let mut i = list.head;
            while i != NIL {
                if self.slots[i as usize].is_expired(now) {
                    self.counters.expirations += 1;
                } else {
                    live += 1;
                }
                i = self.slots[i as usize].next;
            }
        }
        self.counters.deletes += live as u64;
        let (slots, table) = (self.slots.capacity(), self.table.capacity());
        let entries = ResetEntries {
            _slots: mem::replace(&mut self.slots, Vec::with_capacity(slots)),
            _table: mem::replace(&mut self.table, HashTable::with_capacity(table)),
        };
        self.lists = [List::EMPTY; 3];
        self.free = NIL;
        self.len = 0;
        self.bytes = 0;
        self.sketch.clear();
        (live, entries)
    }

    // ---- the policy ----

    /// A use of live entry `i` (a hit or an overwrite), whose key has this hash.
    ///
    /// It is counted in the sketch unless the entry is in the window (uses there are
    /// correlated with the one that brought it in: see Policy) or its counters were found
    /// saturated since they last could decrease. Then a window entry becomes the window's
    /// most recently used, a probation entry is promoted to protected, and a protected
    /// entry is marked (see [`TinyLfu::promote`]).
    #[inline]
    fn use_entry(&mut self, i: u32, hash: u64) {
        let slot = &mut self.slots[i as usize];
        let segment = slot.segment;
        if segment != WINDOW && !self.sketch.is_saturated(slot.counted) {
            slot.counted = self.sketch.count(hash);
        }
        if segment == PROTECTED {
            // Written only when it changes: a read of a marked entry writes nothing, so
            // threads reading the same entries do not take its cache line from each other.
            if !slot.referenced {
                slot.referenced = true;
            }
        } else if segment == PROBATION {
            self.promote(i);
        } else if self.lists[WINDOW as usize].head != i {
            self.move_front(i, WINDOW);
        }
    }

    /// Moves probation entry `i` to the protected segment, first demoting the protected
    /// segment's overflow to probation, oldest first; a marked entry met there is unmarked
    /// and moved to the front instead (at most `SECOND_CHANCES` times, then the oldest goes
    /// whether marked or not).
    fn promote(&mut self, i: u32) {
        let size = self.unlink(i);
        let mut chances = SECOND_CHANCES;
        loop {
            let p = self.lists[PROTECTED as usize];
            if p.tail == NIL || !self.protected_max.exceeded_by(p.len + 1, p.bytes + size) {
                break;
            }
            let j = p.tail;
            let again = mem::take(&mut self.slots[j as usize].referenced) && chances > 0;
            if again {
                chances -= 1;
                self.move_front(j, PROTECTED);
            } else {
                self.move_front(j, PROBATION);
            }
        }
        self.push_front(i, PROTECTED, size);
    }

    /// Makes room for `extra_entries` more entries of `extra_bytes` bytes in total (to be
    /// added to the window), never evicting slot `keep`.
    ///
    /// The window's overflow moves to probation as candidates; while the bounds are
    /// exceeded, each candidate is compared with probation's least recently used entry (the
    /// victim) and the less frequently used of the two is evicted. Without candidates the
    /// victim is evicted; when probation is empty the victim comes from protected, then from
    /// the window. Expired entries met on the way are evicted first.
    fn make_room(
        &mut self,
        extra_entries: usize,
        extra_bytes: u64,
        keep: u32,
        now: &mut impl Now,
        removed: &mut Removed,
    ) {
        self.admit_one(extra_entries, extra_bytes, keep, now, removed);
        let mut candidates = 0usize;
        loop {
            let w = self.lists[WINDOW as usize];
            if !self
                .window_max
                .exceeded_by(w.len + extra_entries, w.bytes + extra_bytes)
                || w.tail == NIL
                || w.tail == keep
            {
                break;
            }
            self.move_front(w.tail, PROBATION);
            candidates += 1;
        }
        let mut candidate = if candidates > 0 {
            self.lists[PROBATION as usize].head
        } else {
            NIL
        };
        while self
            .max
            .exceeded_by(self.len + extra_entries, self.bytes + extra_bytes)
        {
            let victim = self.victim(keep);
            if candidate == NIL || victim == candidate {
                if victim == candidate {
                    candidate = NIL;
                }
                self.evict(victim, now, removed);
                continue;
            }
            if self.slots[victim as usize].is_expired(now) {
                self.evict(victim, now, removed);
                continue;
            }
            let next = self.slots[candidate as usize].next;
            candidates -= 1;
            let rejected =
                self.slots[candidate as usize].is_expired(now) || !self.admit(candidate, victim);
            let evicted = if rejected { candidate } else { victim };
            self.evict(evicted, now, removed);
            // The next candidate, if any, is the next entry towards probation's tail.
            candidate = if candidates == 0 || next == evicted {
                NIL
            } else {
                next
            };
        }
    }

    /// The first step of [`TinyLfu::make_room`] in its common case (an insertion into a
    /// full map): the window is over its share by its oldest entry alone, the map needs an
    /// eviction, and probation's oldest entry is live. The two are compared where they
    /// are, so that a rejected candidate is evicted from the window rather than first moved
    /// to probation and then evicted from there; the outcome is the one `make_room` would
    /// reach, which goes on from the state this leaves (the window within its share).
    #[inline]
    fn admit_one(
        &mut self,
        extra_entries: usize,
        extra_bytes: u64,
        keep: u32,
        now: &mut impl Now,
        removed: &mut Removed,
    ) {
        #[cfg(test)]
        if !ADMIT_ONE.get() {
            return;
        }
        let w = self.lists[WINDOW as usize];
        let victim = self.lists[PROBATION as usize].tail;
        let candidate = w.tail;
        if candidate == NIL
            || victim == NIL
            || candidate == keep
            || victim == keep
            || !self
                .max
                .exceeded_by(self.len + extra_entries, self.bytes + extra_bytes)
            || !self
                .window_max
                .exceeded_by(w.len + extra_entries, w.bytes + extra_bytes)
        {
            return;
        }
        let size = self.size(candidate);
        if self
            .window_max
            .exceeded_by(w.len - 1 + extra_entries, w.bytes - size + extra_bytes)
            || self.slots[victim as usize].is_expired(now)
        {
            return;
        }
        #[cfg(test)]
        ADMITTED_ONE.set(ADMITTED_ONE.get() + 1);
        if self.slots[candidate as usize].is_expired(now) || !self.admit(candidate, victim) {
            self.evict(candidate, now, removed);
        } else {
            self.evict(victim, now, removed);
            self.unlink(candidate);
            self.push_front(candidate, PROBATION, size);
        }
    }

    /// The entry to evict next: probation's least recently used, else protected's, else
    /// the window's; never `keep`.
    #[inline]
    fn victim(&self, keep: u32) -> u32 {
        for segment in [PROBATION, PROTECTED, WINDOW] {
            let tail = self.lists[segment as usize].tail;
            if tail == NIL {
                continue;
            }
            if tail != keep {
                return tail;
            }
            let prev = self.slots[tail as usize].prev;
            if prev != NIL {
                return prev;
            }
        }
        unreachable!("evicting with nothing left to evict but the kept entry")
    }

    /// Whether `candidate` should displace `victim`: it was used more often lately. The
    /// estimates cached in the slots spare reading the victim's counters (a cache miss) on
    /// every eviction.
    #[inline]
    fn admit(&self, candidate: u32, victim: u32) -> bool {
        self.estimate(candidate) > self.estimate(victim)
    }

    /// The sketch's estimate for slot `i`'s key, from the estimate cached in the slot while
    /// it is current ([`Sketch::estimate`]).
    #[inline(always)]
    fn estimate(&self, i: u32) -> u8 {
        let slot = &self.slots[i as usize];
        self.sketch.estimate(slot.counted, slot.hash)
    }

    /// Evicts slot `i` into `removed`, counting an expiration or an eviction.
    #[inline(always)]
    fn evict(&mut self, i: u32, now: &mut impl Now, removed: &mut Removed) {
        if self.slots[i as usize].is_expired(now) {
            self.counters.expirations += 1;
        } else {
            self.counters.evictions += 1;
        }
        let (key, value) = self.remove_at(i);
        removed.push(key, value);
    }

    /// Empties the sketch; it gets counters again as entries arrive.
    fn reset_sketch(&mut self) {
        self.sketch = self.sketch.successor();
        self.sketch_grow_at = 0;
    }

    /// Sizes the sketch for twice the entries held, up to the entry bound, carrying over
    /// the estimates of the entries held (those of keys not held are forgotten).
    #[cold]
    fn grow_sketch(&mut self) {
        let entries = self
            .len
            .saturating_mul(2)
            .max(16)
            .min(self.max.entries.max(1));
        let new = self.sketch.successor();
        let old = mem::replace(&mut self.sketch, new);
        self.sketch.resize(entries);
        for list in self.lists {
            let mut i = list.head;
            while i != NIL {
                let slot = &self.slots[i as usize];
                let (hash, next) = (slot.hash, slot.next);
                for _ in 0..old.frequency(hash) {
                    self.sketch.increment(hash);
                }
                i = next;
            }
        }
        self.sketch_grow_at = if entries >= self.max.entries {
            usize::MAX
        } else {
            entries
        };
    }

    // ---- internals ----

    #[inline]
    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        self.table.find(hash, |e| *e.key() == *key).map(|e| e.slot)
    }

    /// The key of live slot `i` (a lookup in the index).
    fn key(&self, i: u32) -> &str {
        match self
            .table
            .find(self.slots[i as usize].hash, |e| e.slot == i)
        {
            Some(e) => e.key(),
            None => {
                debug_assert!(false, "slot {i} missing from the index");
                ""
            }
        }
    }

    /// The size of live slot `i`: its key's length and its value's.
    #[inline]
    fn size(&self, i: u32) -> u64 {
        let slot = &self.slots[i as usize];
        let key_len = if slot.key_len == LONG_KEY {
            self.key(i).len() as u64
        } else {
            u64::from(slot.key_len)
        };
        key_len + slot.value.len() as u64
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

    /// Unlinks and frees slot `i`, returning its key and value.
    fn remove_at(&mut self, i: u32) -> (Box<str>, Bytes) {
        // Unlinked while still in the index: a long key's size is read from there.
        let size = self.unlink(i);
        let hash = self.slots[i as usize].hash;
        let key = match self.table.find_entry(hash, |e| e.slot == i) {
            Ok(entry) => entry.remove().0.into_key(),
            Err(_) => {
                debug_assert!(false, "slot {i} missing from the index");
                Box::default()
            }
        };
        self.bytes -= size;
        self.len -= 1;
        let free = self.free;
        let slot = mem::replace(
            &mut self.slots[i as usize],
            Slot {
                next: free,
                ..Slot::FREE
            },
        );
        self.free = i;
        (key, slot.value)
    }

    /// Takes slot `i` out of its segment's list; returns the entry's size.
    #[inline(always)]
    fn unlink(&mut self, i: u32) -> u64 {
        let size = self.size(i);
        let slot = &self.slots[i as usize];
        let (prev, next, segment) = (slot.prev, slot.next, slot.segment);
        let list = &mut self.lists[segment as usize];
        list.len -= 1;
        list.bytes -= size;
        if prev == NIL {
            list.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        let list = &mut self.lists[segment as usize];
        if next == NIL {
            list.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        size
    }

    /// Moves slot `i` from its segment to the front of `segment` (the same or another).
    #[inline]
    fn move_front(&mut self, i: u32, segment: u8) {
        let size = self.unlink(i);
        self.push_front(i, segment, size);
    }

    /// Makes unlinked slot `i`, of `size` bytes, the most recently used of `segment`.
    #[inline]
    fn push_front(&mut self, i: u32, segment: u8, size: u64) {
        let list = &mut self.lists[segment as usize];
        let old_head = list.head;
        list.head = i;
        list.len += 1;
        list.bytes += size;
        if old_head == NIL {
            list.tail = i;
        }
        let slot = &mut self.slots[i as usize];
        slot.prev = NIL;
        slot.next = old_head;
        slot.segment = segment;
        if old_head != NIL {
            self.slots[old_head as usize].prev = i;
        }
    }

    /// Where the counters end, in bytes from the start of the map (tests).
    #[cfg(test)]
    pub(crate) fn counters_end() -> usize {
        mem::offset_of!(TinyLfu, counters) + mem::size_of::<Counters>()
    }

    /// Slots allocated, free or not (tests).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The sketch's estimate for the key with this hash (tests).
    #[cfg(test)]
    pub(crate) fn frequency_hashed(&self, hash: u64) -> u8 {
        self.sketch.frequency(hash)
    }

    /// Heap bytes of the frequency sketch (tests).
    #[cfg(test)]
    pub(crate) fn sketch_bytes(&self) -> usize {
        self.sketch.heap_bytes()
    }

    /// Whether `key` is in the protected segment (tests).
    #[cfg(test)]
    pub(crate) fn is_protected(&self, key: &str) -> bool {
        self.find(self.hash(key), key)
            .is_some_and(|i| self.slots[i as usize].segment == PROTECTED)
    }

    /// Panics unless the lists, the index, the free list and the byte counts agree.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.table.len(), self.len, "index size != len");
        let mut count = 0;
        let mut bytes = 0;
        for segment in [WINDOW, PROBATION, PROTECTED] {
            let list = &self.lists[segment as usize];
            let mut list_count = 0;
            let mut list_bytes = 0;
            let mut prev = NIL;
            let mut i = list.head;
            while i != NIL {
                let slot = &self.slots[i as usize];
                let key = self.key(i);
                assert_eq!(slot.prev, prev, "broken back link at slot {i}");
                assert_eq!(slot.segment, segment, "slot {i} in the wrong list");
                assert!(
                    !slot.referenced || segment == PROTECTED,
                    "slot {i} marked outside the protected segment"
                );
                assert_eq!(slot.hash, self.hash(key), "stale hash at slot {i}");
                assert_eq!(self.find(slot.hash, key), Some(i), "index misses slot {i}");
                assert_eq!(
                    slot.key_len,
                    u16::try_from(key.len()).unwrap_or(LONG_KEY),
                    "stale key length at slot {i}"
                );
                list_count += 1;
                list_bytes += self.size(i);
                assert!(list_count <= self.len, "cycle in the list");
                prev = i;
                i = slot.next;
            }
            assert_eq!(list.tail, prev, "tail is not the last entry");
            assert_eq!(list_count, list.len, "list length drifted");
            assert_eq!(list_bytes, list.bytes, "list bytes drifted");
            count += list_count;
            bytes += list_bytes;
        }
        assert_eq!(count, self.len, "list lengths != len");
        assert_eq!(bytes, self.bytes, "byte count drifted");
        let mut free = 0;
        let mut i = self.free;
        while i != NIL {
            let slot = &self.slots[i as usize];
            assert!(
                slot.key_len == 0 && slot.value.is_empty(),
                "free slot holds data"
            );
            free += 1;
            assert!(free <= self.slots.len(), "cycle in the free list");
            i = slot.next;
        }
        assert_eq!(free + self.len, self.slots.len(), "slots leaked");
        assert!(self.slots.len() <= self.max.entries.max(1), "spare slots");
        assert!(self.len <= self.max.entries, "entry bound exceeded");
        assert!(self.bytes <= self.max.bytes, "byte bound exceeded");
    }
}

/// The entries of a [`TinyLfu`]: see [`TinyLfu::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    map: &'a TinyLfu,
    segment: u8,
    cur: u32,
    remaining: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        while self.cur == NIL {
            if self.segment == PROTECTED {
                return None;
            }
            self.segment += 1;
            self.cur = self.map.lists[self.segment as usize].head;
        }
        let (i, slot) = (self.cur, &self.map.slots[self.cur as usize]);
        self.cur = slot.next;
        self.remaining -= 1;
        Some((self.map.key(i), &slot.value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Iter<'_> {}
impl FusedIterator for Iter<'_> {}
