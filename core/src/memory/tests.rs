//! Unit and property tests of the memory tier.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;
use proptest::prelude::*;

use super::{MemoryCache, TinyLfu};
use crate::cache::{Cache, CacheStats, KeyTtl};
use crate::clock::{Clock, ManualClock};
use crate::error::Error;

const START: u64 = 1_700_000_000_000;

/// A single-shard cache on a manual clock.
fn cache(max_entries: usize, max_bytes: u64) -> (ManualClock, MemoryCache) {
    let clock = ManualClock::new(START);
    let cache = MemoryCache::builder()
        .clock(clock.clone())
        .max_entries(max_entries)
        .max_bytes(max_bytes)
        .shards(1)
        .build()
        .unwrap();
    (clock, cache)
}

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn stats(cache: &MemoryCache) -> CacheStats {
    block_on(cache.stats()).unwrap()
}

#[test]
fn a_full_shard_evicts_one_entry_per_new_key_and_keeps_the_new_one() {
    let (_, c) = cache(3, 1 << 20);
    for k in ["a", "b", "c", "d"] {
        assert!(c.insert(k, val(k), None));
        assert_eq!(
            c.lookup(k),
            Some(val(k)),
            "a just-written entry is readable"
        );
    }
    assert_eq!(c.len(), 3);
    assert_eq!(stats(&c).evictions, 1);
    assert_eq!(c.shard_keys(0).len(), 3);
}

#[test]
fn a_frequently_used_entry_survives_a_scan_of_one_off_keys() {
    let (_, c) = cache(100, 1 << 20);
    c.insert("hot", val("h"), None);
    // Used now and then, between other keys (uses in a row would count once: see below).
    for i in 0..5 {
        c.insert(&format!("warm-{i}"), val("w"), None);
        assert_eq!(c.lookup("hot"), Some(val("h")));
    }
    for i in 0..1_000 {
        let key = format!("once-{i}");
        assert!(c.lookup(&key).is_none());
        assert!(c.insert(&key, val("x"), None));
    }
    assert_eq!(
        c.lookup("hot"),
        Some(val("h")),
        "the scan flushed the hot entry"
    );
    assert_eq!(c.len(), 100);
}

#[test]
fn a_loop_slightly_larger_than_the_cache_keeps_hitting() {
    // A strict LRU (and FIFO) misses every request of this loop.
    let (_, c) = cache(1_000, 1 << 20);
    let keys: Vec<String> = (0..1_100).map(|i| format!("loop-{i}")).collect();
    let mut hits = 0;
    for pass in 0..20 {
        for k in &keys {
            if c.lookup(k).is_some() {
                hits += usize::from(pass >= 10);
            } else {
                c.insert(k, val("v"), None);
            }
        }
    }
    let ratio = hits as f64 / (10 * keys.len()) as f64;
    assert!(ratio > 0.7, "hit ratio {ratio}");
}

#[test]
fn a_protected_entry_read_lately_gets_a_second_chance_when_protected_overflows() {
    // 100 entries: the protected segment holds 83 of them.
    let mut map = TinyLfu::new(100, 1 << 20);
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert!(map.insert(k, val("v"), None, 0));
    }
    // Promoted in order: k0 is the oldest of the protected segment, then k1.
    for k in &keys[..83] {
        assert!(map.get(k, 0).is_some());
        assert!(map.is_protected(k));
    }
    assert!(map.get("k0", 0).is_some(), "marks k0");
    // Promoting k83 overflows the protected segment: k0 is marked and stays, k1 goes.
    assert!(map.get("k83", 0).is_some());
    assert!(map.is_protected("k83"));
    assert!(map.is_protected("k0"), "the marked entry was demoted");
    assert!(
        !map.is_protected("k1"),
        "the unmarked oldest entry was kept"
    );
    assert!(map.contains("k1", 0), "a demoted entry stays in the map");
    map.check_invariants();
}

#[test]
fn contains_ttl_and_expire_do_not_count_as_a_use() {
    let (_, c) = cache(10, 1 << 20);
    c.insert("a", val("a"), None);
    // Out of the window (one entry here), where reads count.
    c.insert("b", val("b"), None);
    let before = c.frequency("a");
    for _ in 0..5 {
        assert!(c.contains("a"));
        assert_ne!(c.key_ttl("a"), KeyTtl::Missing);
        assert!(block_on(c.expire("a", ms(1_000))).unwrap());
    }
    assert_eq!(c.frequency("a"), before);
    assert_eq!(c.lookup("a"), Some(val("a")));
    assert_eq!(c.frequency("a"), before + 1, "a read is a use");
}

#[test]
fn uses_in_a_row_while_in_the_window_count_once() {
    let (_, c) = cache(1_000, 1 << 20);
    for i in 0..20 {
        c.insert(&format!("before-{i}"), val("k"), None);
    }
    c.insert("burst", val("b"), None);
    let arrived = c.frequency("burst");
    assert_eq!(arrived, 1, "the arrival counts");
    for _ in 0..5 {
        assert_eq!(
            c.lookup("burst"),
            Some(val("b")),
            "a window entry is readable"
        );
    }
    assert_eq!(c.frequency("burst"), arrived, "a burst of reads is one use");
    c.insert("burst", val("B"), None);
    assert_eq!(
        c.frequency("burst"),
        arrived,
        "so is an overwrite in the window"
    );
    // The window holds 5 of 1,000 entries: past it, every read counts.
    for i in 0..10 {
        c.insert(&format!("k{i}"), val("k"), None);
    }
    assert_eq!(c.lookup("burst"), Some(val("B")));
    assert_eq!(
        c.frequency("burst"),
        arrived + 1,
        "a read out of the window counts"
    );
}

#[test]
fn overwrite_keeps_one_entry_and_counts_a_use() {
    let (_, c) = cache(3, 1 << 20);
    for k in ["a", "b", "c"] {
        c.insert(k, val(k), None);
    }
    let before = c.frequency("a");
    c.insert("a", val("A2"), None);
    assert_eq!(c.len(), 3);
    assert_eq!(c.frequency("a"), before + 1);
    assert_eq!(c.lookup("a"), Some(val("A2")));
    assert_eq!(c.size_bytes(), 2 + 2 + 2 + 1);
}

#[test]
fn byte_bound_evicts_until_it_fits() {
    // Entry sizes are key + value: "k1" + 10 bytes = 12.
    let (_, c) = cache(100, 40);
    for k in ["k1", "k2", "k3"] {
        c.insert(k, Bytes::from(vec![0; 10]), None);
    }
    assert_eq!(c.size_bytes(), 36);
    // 2 + 20 = 22 bytes: two of the others must go (36 - 24 + 22 = 34 <= 40).
    assert!(c.insert("k4", Bytes::from(vec![0; 20]), None));
    assert!(c.contains("k4"));
    assert_eq!(c.len(), 2);
    assert_eq!(c.size_bytes(), 34);
    assert_eq!(stats(&c).evictions, 2);
}

#[test]
fn growing_a_value_in_place_evicts_others() {
    let (_, c) = cache(100, 30);
    c.insert("a", Bytes::from(vec![0; 9]), None);
    c.insert("b", Bytes::from(vec![0; 9]), None);
    c.insert("c", Bytes::from(vec![0; 9]), None);
    assert!(c.insert("b", Bytes::from(vec![0; 19]), None));
    assert_eq!(
        c.lookup("b").map(|v| v.len()),
        Some(19),
        "the grown entry stays"
    );
    assert_eq!(c.len(), 2);
    assert_eq!(c.size_bytes(), 30);
    assert_eq!(stats(&c).evictions, 1);
}

#[test]
fn an_entry_as_large_as_the_shard_evicts_everything_else_and_stays() {
    let (_, c) = cache(100, 64);
    for i in 0..10 {
        let key = format!("k{i}");
        c.insert(&key, val("v"), None);
        c.lookup(&key);
    }
    assert!(c.insert("big", Bytes::from(vec![0; 61]), None));
    assert_eq!(c.lookup("big").map(|v| v.len()), Some(61));
    assert_eq!(c.len(), 1);
    assert_eq!(c.size_bytes(), 64);
}

#[test]
fn keys_written_over_evicted_keys_of_the_same_length_are_stored_exactly() {
    // Each insertion evicts one entry; a new key as long as the evicted one is copied into
    // its allocation.
    let mut map = TinyLfu::new(3, 1 << 20);
    let mut written = Vec::new();
    for i in 0..200 {
        let key = if i % 7 == 0 {
            format!("long-key-{i:05}")
        } else {
            format!("key-{i:04}")
        };
        assert!(map.insert(&key, Bytes::from(key.clone()), None, 0));
        assert_eq!(map.get(&key, 0), Some(&Bytes::from(key.clone())), "{key}");
        written.push(key);
    }
    assert_eq!(map.len(), 3);
    for (key, value) in map.iter() {
        assert_eq!(key.as_bytes(), &value[..], "every key keeps its own value");
        assert!(written.iter().any(|k| k == key));
    }
    let held: Vec<String> = map.iter().map(|(k, _)| k.to_owned()).collect();
    for key in &written {
        assert_eq!(map.peek(key, 0).is_some(), held.contains(key), "{key}");
    }
    map.check_invariants();
}

/// A value that records, when its last copy is dropped, whether its shard's lock was held.
struct LockProbe {
    cache: MemoryCache,
    dropped_under_lock: Arc<std::sync::Mutex<Vec<bool>>>,
}

impl AsRef<[u8]> for LockProbe {
    fn as_ref(&self) -> &[u8] {
        b"probe"
    }
}

impl Drop for LockProbe {
    fn drop(&mut self) {
        let locked = self.cache.inner.shards[0].0.is_locked();
        self.dropped_under_lock.lock().unwrap().push(locked);
    }
}

#[test]
fn evicted_replaced_removed_cleared_and_closed_values_are_dropped_after_the_lock_is_released() {
    let (_clock, cache) = cache(1, 1 << 20);
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = || {
        Bytes::from_owner(LockProbe {
            cache: cache.clone(),
            dropped_under_lock: log.clone(),
        })
    };
    let drops = || log.lock().unwrap().clone();
    assert!(cache.insert("a", probe(), None));
    assert!(cache.insert("a", probe(), None), "replaces the first value");
    assert_eq!(drops(), [false], "the replaced value");
    assert!(cache.insert("b", probe(), None), "evicts a");
    assert_eq!(drops(), [false, false], "the evicted value");
    assert!(cache.remove("b"));
    assert_eq!(drops(), [false, false, false], "the removed value");
    block_on(cache.set_nx("c", probe(), None)).unwrap();
    block_on(cache.set_nx("d", probe(), None)).unwrap();
    assert_eq!(drops(), [false, false, false, false], "evicted by set_nx");
    assert_eq!(block_on(cache.clear()).unwrap(), 1);
    assert_eq!(drops(), [false; 5], "the value clearing dropped");
    assert!(
        cache.insert("e", probe(), None),
        "a cleared cache takes entries"
    );
    block_on(cache.close()).unwrap();
    assert_eq!(drops(), [false; 6], "the value closing dropped");
}

#[test]
fn a_shards_hit_counter_shares_the_cache_line_of_its_lock() {
    let shard = super::Shard(parking_lot::Mutex::new(TinyLfu::new(10, 1024)));
    assert_eq!(
        std::mem::align_of_val(&shard) % 64,
        0,
        "a shard starts a cache line"
    );
    let start = &shard as *const super::Shard as usize;
    let data = shard.0.data_ptr() as usize;
    assert!(
        data - start + TinyLfu::counters_end() <= 64,
        "the lock and the counters lie in the shard's first 64 bytes"
    );
}

#[test]
fn the_frequency_sketch_takes_one_word_per_entry() {
    let mut map = TinyLfu::new(1_000, 1 << 30);
    for i in 0..1_000 {
        map.insert(&format!("k{i}"), val("v"), None, 0);
    }
    assert_eq!(map.sketch_bytes(), 1_024 * 8);
    map.check_invariants();
}

#[test]
fn oversize_value_is_rejected_and_removes_the_old_value() {
    let (_, c) = cache(10, 16);
    assert!(c.insert("key", val("small"), None));
    assert!(
        !c.insert("key", Bytes::from(vec![0; 14]), None),
        "3 + 14 > 16"
    );
    assert_eq!(c.lookup("key"), None, "the stale value must not survive");
    assert!(c.is_empty());
    assert_eq!(c.size_bytes(), 0);
    let s = stats(&c);
    assert_eq!((s.writes, s.evictions, s.deletes), (2, 1, 0));
    // Exactly max_bytes fits.
    assert!(c.insert("key", Bytes::from(vec![0; 13]), None));
    // A set of an oversize value succeeds without storing anything.
    block_on(c.set("other", Bytes::from(vec![0; 100]), None)).unwrap();
    assert!(!c.contains("other"));
}

#[test]
fn zero_max_entries_stores_nothing() {
    let (_, c) = cache(0, 1 << 20);
    assert!(!c.insert("a", val("a"), None));
    assert!(c.is_empty());
    assert!(!block_on(c.set_nx("a", val("a"), None)).unwrap());
}

#[test]
fn ttl_expires_at_exactly_the_deadline() {
    let (clock, c) = cache(10, 1 << 20);
    c.insert("k", val("v"), Some(ms(1_000)));
    clock.advance(ms(999));
    assert_eq!(c.lookup("k"), Some(val("v")));
    assert_eq!(c.key_ttl("k"), KeyTtl::ExpiresIn(ms(1)));
    clock.advance(ms(1));
    assert_eq!(c.lookup("k"), None);
    assert!(c.is_empty(), "an expired entry found by a read is dropped");
    let s = stats(&c);
    assert_eq!((s.hits, s.misses, s.expirations), (1, 1, 1));
}

#[test]
fn default_ttl_applies_only_without_explicit_ttl() {
    let clock = ManualClock::new(START);
    let c = MemoryCache::builder()
        .clock(clock.clone())
        .default_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    c.insert("default", val("1"), None);
    c.insert("explicit", val("2"), Some(Duration::from_secs(60)));
    assert_eq!(
        c.key_ttl("default"),
        KeyTtl::ExpiresIn(Duration::from_secs(10))
    );
    clock.advance(Duration::from_secs(30));
    assert!(!c.contains("default"));
    assert!(c.contains("explicit"));
    // A zero default TTL is refused, like a zero TTL anywhere else.
    let err = MemoryCache::builder()
        .clock(clock.clone())
        .default_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, crate::Error::InvalidInput(_)), "{err}");
    // And a zero TTL on one write stores nothing (the async `set` returns the error).
    assert!(!c.insert("zero", val("z"), Some(Duration::ZERO)));
    assert!(!c.contains("zero"));
}

#[test]
fn expired_entries_evicted_count_as_expirations_not_evictions() {
    let (clock, c) = cache(2, 1 << 20);
    c.insert("short", val("1"), Some(ms(10)));
    c.insert("long", val("2"), None);
    clock.advance(ms(10));
    c.insert("new", val("3"), None); // evicts "short", already expired
    c.insert("newer", val("4"), None); // evicts a live entry
    let s = stats(&c);
    assert_eq!((s.expirations, s.evictions), (1, 1));
    assert!(!c.shard_keys(0).contains(&"short".to_owned()));
    assert!(c.contains("newer"));
}

#[test]
fn set_nx_writes_over_an_expired_value() {
    let (clock, c) = cache(10, 1 << 20);
    block_on(async {
        assert!(c.set_nx("lock", val("a"), Some(ms(100))).await.unwrap());
        assert!(!c.set_nx("lock", val("b"), Some(ms(100))).await.unwrap());
        assert_eq!(c.get("lock").await.unwrap(), Some(val("a")));
        clock.advance(ms(100));
        assert!(c.set_nx("lock", val("c"), None).await.unwrap());
        assert_eq!(c.get("lock").await.unwrap(), Some(val("c")));
        assert_eq!(c.ttl("lock").await.unwrap(), KeyTtl::NoExpiry);
    });
    assert_eq!(stats(&c).expirations, 1);
}

#[test]
fn expire_and_ttl_semantics() {
    let (clock, c) = cache(10, 1 << 20);
    block_on(async {
        assert!(!c.expire("missing", ms(100)).await.unwrap());
        assert_eq!(c.ttl("missing").await.unwrap(), KeyTtl::Missing);
        c.set("k", val("v"), None).await.unwrap();
        assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::NoExpiry);
        assert!(c.expire("k", ms(500)).await.unwrap());
        assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::ExpiresIn(ms(500)));
        clock.advance(ms(200));
        assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::ExpiresIn(ms(300)));
        // A sub-millisecond TTL rounds up to 1 ms, a zero one is refused.
        assert!(c.expire("k", Duration::from_micros(10)).await.unwrap());
        assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::ExpiresIn(ms(1)));
        assert!(matches!(
            c.expire("k", Duration::ZERO).await,
            Err(Error::InvalidInput(_))
        ));
        clock.advance(ms(1));
        assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::Missing);
        assert!(
            !c.expire("k", ms(100)).await.unwrap(),
            "expired keys cannot be revived"
        );
    });
}

#[test]
fn zero_ttl_writes_are_rejected() {
    let (_, c) = cache(10, 1 << 20);
    block_on(async {
        let zero = Some(Duration::ZERO);
        assert!(matches!(
            c.set("k", val("v"), zero).await,
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            c.set_nx("k", val("v"), zero).await,
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            c.mset(&[("k", val("v"))], zero).await,
            Err(Error::InvalidInput(_))
        ));
    });
    assert!(c.is_empty());
    assert_eq!(stats(&c).writes, 0);
}

#[test]
fn get_with_ttl_reports_remaining_time() {
    let (clock, c) = cache(10, 1 << 20);
    block_on(async {
        c.set("t", val("1"), Some(Duration::from_secs(30)))
            .await
            .unwrap();
        c.set("n", val("2"), None).await.unwrap();
        clock.advance(Duration::from_secs(12));
        assert_eq!(
            c.get_with_ttl("t").await.unwrap(),
            Some((val("1"), Some(Duration::from_secs(18))))
        );
        assert_eq!(c.get_with_ttl("n").await.unwrap(), Some((val("2"), None)));
        assert_eq!(c.get_with_ttl("x").await.unwrap(), None);
    });
}

#[test]
fn mget_keeps_order_and_tells_empty_from_missing() {
    let (_, c) = cache(10, 1 << 20);
    block_on(async {
        c.mset(
            &[("a", val("1")), ("empty", Bytes::new()), ("c", val("3"))],
            None,
        )
        .await
        .unwrap();
        let got = c.mget(&["c", "missing", "empty", "a"]).await.unwrap();
        assert_eq!(
            got,
            vec![Some(val("3")), None, Some(Bytes::new()), Some(val("1"))]
        );
        assert_eq!(c.mget(&[]).await.unwrap(), vec![]);
    });
    let s = stats(&c);
    assert_eq!((s.hits, s.misses, s.writes), (3, 1, 3));
}

#[test]
fn delete_pattern_removes_only_matching_keys() {
    let clock = ManualClock::new(START);
    let c = MemoryCache::builder()
        .clock(clock.clone())
        .shards(4)
        .max_entries(1_000)
        .build()
        .unwrap();
    block_on(async {
        for i in 0..50 {
            c.set(&format!("user:{i}"), val("u"), None).await.unwrap();
            c.set(&format!("session:{i}"), val("s"), None)
                .await
                .unwrap();
        }
        c.set("user:expired", val("x"), Some(ms(5))).await.unwrap();
        clock.advance(ms(5));
        assert_eq!(
            c.delete_pattern("user:*").await.unwrap(),
            50,
            "expired keys are not counted"
        );
        assert_eq!(c.delete_pattern("user:*").await.unwrap(), 0);
        assert_eq!(c.delete_pattern("session:[0-4]").await.unwrap(), 5);
        assert!(c.exists("session:10").await.unwrap());
        assert!(!c.exists("session:3").await.unwrap());
    });
    assert_eq!(c.len(), 45);
    let s = stats(&c);
    assert_eq!((s.deletes, s.expirations), (55, 1));
}

#[test]
fn clear_returns_the_number_of_live_entries() {
    let (clock, c) = cache(10, 1 << 20);
    block_on(async {
        c.set("a", val("1"), None).await.unwrap();
        c.set("b", val("2"), None).await.unwrap();
        c.set("gone", val("3"), Some(ms(1))).await.unwrap();
        clock.advance(ms(1));
        assert_eq!(c.clear().await.unwrap(), 2);
        assert_eq!(c.get("a").await.unwrap(), None);
        assert_eq!(c.clear().await.unwrap(), 0);
    });
    let s = stats(&c);
    assert_eq!(
        (s.deletes, s.expirations, s.entries, s.bytes),
        (2, 1, Some(0), Some(0))
    );
}

#[test]
fn delete_reports_whether_a_live_value_existed() {
    let (clock, c) = cache(10, 1 << 20);
    block_on(async {
        c.set("k", val("v"), Some(ms(10))).await.unwrap();
        assert!(c.delete("k").await.unwrap());
        assert!(!c.delete("k").await.unwrap());
        c.set("k", val("v"), Some(ms(10))).await.unwrap();
        clock.advance(ms(10));
        assert!(
            !c.delete("k").await.unwrap(),
            "an expired key is already gone"
        );
    });
    let s = stats(&c);
    assert_eq!((s.deletes, s.expirations, s.entries), (1, 1, Some(0)));
}

#[test]
fn closed_cache_returns_closed_for_every_call() {
    let (_, c) = cache(10, 1 << 20);
    let other = c.clone();
    block_on(async {
        c.set("k", val("v"), None).await.unwrap();
        c.close().await.unwrap();
        assert!(matches!(other.get("k").await, Err(Error::Closed)));
        assert!(matches!(other.get_with_ttl("k").await, Err(Error::Closed)));
        assert!(matches!(
            other.set("k", val("v"), None).await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            other.set_nx("k", val("v"), None).await,
            Err(Error::Closed)
        ));
        assert!(matches!(other.delete("k").await, Err(Error::Closed)));
        assert!(matches!(other.exists("k").await, Err(Error::Closed)));
        assert!(matches!(other.ttl("k").await, Err(Error::Closed)));
        assert!(matches!(other.expire("k", ms(1)).await, Err(Error::Closed)));
        assert!(matches!(other.mget(&["k"]).await, Err(Error::Closed)));
        assert!(matches!(
            other.mset(&[("k", val("v"))], None).await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            other.delete_pattern("*").await,
            Err(Error::Closed)
        ));
        assert!(matches!(other.clear().await, Err(Error::Closed)));
        assert!(matches!(other.stats().await, Err(Error::Closed)));
        assert!(matches!(other.ping().await, Err(Error::Closed)));
        assert!(other.close().await.is_ok(), "close is idempotent");
    });
    assert!(c.is_empty(), "closing drops the entries");
    assert!(
        !c.insert("k", val("v"), None),
        "a closed cache stores nothing"
    );
    assert!(c.is_empty());
    assert!(format!("{c:?}").contains("closed: true"));
}

#[test]
fn removed_slots_are_reused() {
    let mut lru = TinyLfu::new(4, 1 << 20);
    for round in 0..100u64 {
        for k in ["a", "b", "c", "d"] {
            lru.insert(k, val(k), None, round);
        }
        // Two of the five keys leave (whichever the policy kept).
        let gone = ["b", "d", "e", "a", "c"]
            .into_iter()
            .filter(|k| lru.remove(k, round).is_some())
            .take(2)
            .count();
        assert_eq!(gone, 2);
        lru.insert("e", val("e"), None, round);
        lru.check_invariants();
        // "e" reuses a freed slot, so do "b" and "d" next round; "a"/"c" update in place.
    }
    assert_eq!(
        lru.slot_count(),
        4,
        "freed slots are reused, the slab never grows"
    );
    assert_eq!(lru.len(), 3);
}

#[test]
fn slots_never_exceed_max_entries_under_churn() {
    let mut lru = TinyLfu::new(8, 1 << 20);
    for i in 0..10_000 {
        lru.insert(&format!("key{i}"), val("v"), None, 0);
    }
    assert_eq!(lru.len(), 8);
    assert_eq!(
        lru.slot_count(),
        8,
        "evicting before inserting reuses the evicted slot"
    );
    lru.check_invariants();
}

#[test]
fn keys_of_64_kib_and_more_are_sized_found_and_listed_exactly() {
    // A slot keeps a key's length in 16 bits; longer keys take their length from the index.
    let mut map = TinyLfu::new(8, u64::MAX);
    let keys: Vec<String> = [65_534usize, 65_535, 65_536, 70_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| format!("{i}{}", "k".repeat(n - 1)))
        .collect();
    let total =
        |map: &TinyLfu| -> u64 { map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum() };
    for k in &keys {
        assert!(map.insert(k, Bytes::from_static(b"vv"), None, START));
        map.check_invariants();
    }
    assert_eq!(
        map.size_bytes(),
        keys.iter().map(|k| k.len() as u64 + 2).sum::<u64>()
    );
    // Reads move entries through the window and probation into protected.
    for (i, k) in keys.iter().enumerate() {
        map.insert(&format!("other{i}"), Bytes::new(), None, START);
        for _ in 0..3 {
            assert_eq!(
                map.get(k, START),
                Some(&Bytes::from_static(b"vv")),
                "{}",
                k.len()
            );
        }
        map.check_invariants();
    }
    let mut listed: Vec<&str> = map.iter().map(|(k, _)| k).collect();
    listed.sort_unstable();
    assert_eq!(listed.len(), 8);
    assert!(
        keys.iter().all(|k| listed.contains(&k.as_str())),
        "every key is listed"
    );
    // More keys than fit: evictions and demotions account the long keys' sizes.
    for i in 0..20 {
        map.insert(&format!("more{i}"), Bytes::from_static(b"x"), None, START);
        map.check_invariants();
        assert_eq!(map.size_bytes(), total(&map));
    }
    let long_held = keys.iter().filter(|k| map.peek(k, START).is_some()).count();
    assert!(long_held > 0, "the keys read often stay");
    let long_over_u16 = keys
        .iter()
        .filter(|k| k.len() >= 65_535 && map.peek(k, START).is_some())
        .count();
    assert_eq!(
        map.remove_matching(|k| k.len() >= 65_535, START),
        long_over_u16
    );
    map.check_invariants();
    assert_eq!(map.size_bytes(), total(&map));
}

#[test]
fn unicode_and_odd_keys_are_distinct_and_sized_in_bytes() {
    let (_, c) = cache(100, 1 << 20);
    let keys = [
        "ключ",
        "🦀",
        "clé",
        "cle\u{301}",
        "with space",
        "",
        "nul\0byte",
        "key:{x}",
    ];
    for (i, k) in keys.iter().enumerate() {
        assert!(c.insert(k, Bytes::from(vec![i as u8; i]), None));
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            c.lookup(k),
            Some(Bytes::from(vec![i as u8; i])),
            "key {k:?}"
        );
    }
    let expected: usize = keys.iter().enumerate().map(|(i, k)| k.len() + i).sum();
    assert_eq!(c.size_bytes(), expected as u64);
    assert_eq!(
        block_on(c.delete_pattern("cl?")).unwrap(),
        0,
        "? matches one byte, not a char"
    );
    assert_eq!(block_on(c.delete_pattern("ключ")).unwrap(), 1);
}

#[test]
fn stats_count_reads_writes_and_corruption() {
    let (_, c) = cache(10, 1 << 20);
    block_on(async {
        c.set("a", val("1"), None).await.unwrap();
        c.get("a").await.unwrap();
        c.get("a").await.unwrap();
        c.get("b").await.unwrap();
        c.exists("a").await.unwrap(); // not a read
        c.record_corrupt();
        c.delete("a").await.unwrap();
    });
    let s = stats(&c);
    assert_eq!(
        (s.hits, s.misses, s.writes, s.deletes, s.corrupt),
        (1, 2, 1, 1, 1),
        "the corrupt read is reported as a miss, not a hit"
    );
    assert_eq!((s.errors, s.evictions, s.expirations), (0, 0, 0));
    assert_eq!((s.entries, s.bytes), (Some(0), Some(0)));
    assert!((s.hit_rate() - 1.0 / 3.0).abs() < 1e-9);
    block_on(c.ping()).unwrap();
}

#[test]
fn purge_expired_drops_only_expired_entries() {
    let (clock, c) = cache(10, 1 << 20);
    c.insert("a", val("1"), Some(ms(10)));
    c.insert("b", val("2"), Some(ms(20)));
    c.insert("c", val("3"), None);
    clock.advance(ms(15));
    assert_eq!(c.len(), 3);
    assert_eq!(c.purge_expired(), 1);
    assert_eq!(c.shard_keys(0), ["c", "b"]);
    assert_eq!(stats(&c).expirations, 1);
}

#[test]
fn shard_count_follows_the_documented_rules() {
    let clock: crate::SharedClock = Arc::new(ManualClock::new(0));
    let shards = |b: super::MemoryCacheBuilder| b.build().unwrap().shard_count();
    let b = || MemoryCache::builder().clock(clock.clone());
    let native = !cfg!(target_arch = "wasm32");
    assert_eq!(shards(b()), if native { 16 } else { 1 }); // 10_000 entries, 256 MiB
    assert_eq!(shards(b().max_entries(600)), if native { 2 } else { 1 }); // >= 256 per shard
    assert_eq!(shards(b().max_entries(500)), 1);
    assert_eq!(shards(b().max_bytes(3 << 20)), if native { 2 } else { 1 }); // >= 1 MiB per shard
    assert_eq!(shards(b().max_entries(10)), 1);
    assert_eq!(shards(b().shards(5)), 8);
    assert_eq!(shards(b().shards(0)), 1);
    assert_eq!(shards(b().shards(1 << 20).max_entries(1 << 20)), 1024);
    assert_eq!(
        shards(b().shards(16).max_entries(6)),
        4,
        "every shard holds an entry"
    );
}

#[test]
fn bounds_are_split_exactly_across_shards() {
    let c = MemoryCache::builder()
        .clock(ManualClock::new(0))
        .shards(4)
        .max_entries(10)
        .max_bytes(1_003)
        .build()
        .unwrap();
    let lrus: Vec<_> = c
        .inner
        .shards
        .iter()
        .map(|s| {
            let l = s.0.lock();
            (l.max_entries(), l.max_bytes())
        })
        .collect();
    assert_eq!(lrus, [(3, 251), (3, 251), (2, 251), (2, 250)]);
    assert_eq!((c.max_entries(), c.max_bytes()), (10, 1_003));
}

#[test]
fn clones_share_entries_and_debug_hides_nothing_sensitive() {
    let (_, c) = cache(10, 1 << 20);
    let d = c.clone();
    c.insert("k", val("v"), None);
    assert_eq!(d.lookup("k"), Some(val("v")));
    let dbg = format!("{c:?}");
    assert!(
        dbg.starts_with("MemoryCache {") && dbg.contains("max_entries: 10"),
        "{dbg}"
    );
}

/// A clock that must not be read: entries without a TTL never need the time.
#[derive(Debug)]
struct NoClock;

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl Clock for NoClock {
    fn now_ms(&self) -> u64 {
        panic!("the clock was read for an entry without a TTL")
    }
    async fn sleep(&self, _: Duration) {}
}

#[test]
fn entries_without_ttl_never_read_the_clock() {
    let c = MemoryCache::builder()
        .clock(NoClock)
        .max_entries(2)
        .build()
        .unwrap();
    for k in ["a", "b", "c", "a"] {
        c.insert(k, val(k), None);
    }
    assert_eq!(c.lookup("a"), Some(val("a")));
    assert_eq!(c.lookup_with_ttl("a"), Some((val("a"), None)));
    assert_eq!(c.lookup("missing"), None);
    assert_eq!(c.len(), 2);
    let kept = if c.contains("b") { "b" } else { "c" };
    assert!(c.contains(kept));
    assert_eq!(c.key_ttl(kept), KeyTtl::NoExpiry);
    assert!(c.remove(kept));
    assert_eq!(c.clear_all(), 1);
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn concurrent_use_keeps_bounds_on_16_shards() {
    const MAX_ENTRIES: usize = 512;
    const MAX_BYTES: u64 = 64 * 1024;
    let clock = ManualClock::new(START);
    let c = MemoryCache::builder()
        .clock(clock.clone())
        .shards(16)
        .max_entries(MAX_ENTRIES)
        .max_bytes(MAX_BYTES)
        .build()
        .unwrap();
    assert_eq!(c.shard_count(), 16);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let c = c.clone();
            let clock = clock.clone();
            std::thread::spawn(move || {
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for i in 0..20_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("k{}", x % 2_000);
                    match x % 8 {
                        0 => {
                            c.remove(&key);
                        }
                        1 => {
                            c.insert(
                                &key,
                                Bytes::from(vec![0; (x % 300) as usize]),
                                Some(ms(x % 50 + 1)),
                            );
                        }
                        2 | 3 => {
                            c.insert(&key, Bytes::from(vec![1; (x % 200) as usize]), None);
                        }
                        4 if i % 64 == 0 => {
                            clock.advance(ms(7));
                            assert!(c.len() <= MAX_ENTRIES);
                            assert!(c.size_bytes() <= MAX_BYTES);
                        }
                        _ => {
                            if let Some(v) = c.lookup(&key) {
                                assert!(v.iter().all(|&b| b == v[0]));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker panicked");
    }
    assert!(c.len() <= MAX_ENTRIES);
    assert!(c.size_bytes() <= MAX_BYTES);
    for shard in 0..16 {
        c.shard_keys(shard); // checks the shard's invariants
    }
    let s = c.current_stats();
    assert!(
        s.writes > 0 && s.evictions > 0 && s.hits + s.misses > 0,
        "{s:?}"
    );
    assert_eq!(s.entries, Some(c.len() as u64));
}

// ---------------------------------------------------------------------------------------
// Property tests.

const KEYS: [&str; 7] = ["a", "b", "c", "dd", "eee", "ключ", "🦀"];

#[derive(Debug, Clone)]
enum Op {
    Get(usize),
    GetWithTtl(usize),
    Insert(usize, usize, Option<u64>),
    Remove(usize),
    Contains(usize),
    Ttl(usize),
    Advance(u64),
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        3 => key.clone().prop_map(Op::Get),
        1 => key.clone().prop_map(Op::GetWithTtl),
        4 => (key.clone(), 0..40usize, prop::option::of(0..200u64))
            .prop_map(|(k, len, ttl)| Op::Insert(k, len, ttl)),
        1 => key.clone().prop_map(Op::Remove),
        1 => key.clone().prop_map(Op::Contains),
        1 => key.prop_map(Op::Ttl),
        2 => (0..120u64).prop_map(Op::Advance),
        1 => Just(Op::Purge),
    ]
}

/// What was last written under each key, with the documented TTL rules and no eviction: the
/// cache may hold less than this (it evicts), never anything else.
#[derive(Debug, Default)]
struct Model {
    /// key → (value, absolute expiry)
    entries: std::collections::HashMap<String, (Vec<u8>, Option<u64>)>,
    default_ttl: Option<u64>,
    now: u64,
}

impl Model {
    /// The live value of `key` and its remaining TTL.
    fn live(&self, key: &str) -> Option<(Vec<u8>, Option<Duration>)> {
        let (v, expires) = self.entries.get(key)?;
        match *expires {
            Some(t) if self.now >= t => None,
            _ => Some((
                v.clone(),
                expires.map(|t| Duration::from_millis(t - self.now)),
            )),
        }
    }

    fn insert(&mut self, key: &str, value: Vec<u8>, ttl: Option<u64>) {
        let expires = ttl.or(self.default_ttl).map(|t| self.now + t);
        self.entries.insert(key.to_owned(), (value, expires));
    }
}

#[test]
fn making_room_by_the_shortcut_ends_where_the_general_path_does() {
    // The same operations on two maps with the same hasher, one making room for an insertion
    // into a full map by the shortcut (`admit_one`) and one by the general path only: after
    // every operation, the same entries in the same order and the same counters. Seeded
    // (proptest's deterministic generator), over entry and byte bounds, expiries and keys
    // of several lengths.
    use super::tinylfu::{ADMIT_ONE, ADMITTED_ONE};
    use proptest::test_runner::{RngAlgorithm, TestRng};
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut next = |n: u64| rng.random_range(0..n);
    ADMITTED_ONE.set(0);
    for case in 0..150 {
        let max_entries = 1 + next(40) as usize;
        let max_bytes = if next(2) == 0 {
            u64::MAX
        } else {
            40 + next(2_000)
        };
        let keys = 2 + next(120);
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut fast = TinyLfu::with_hasher(max_entries, max_bytes, hasher.clone());
        let mut general = TinyLfu::with_hasher(max_entries, max_bytes, hasher);
        let mut now = START;
        for step in 0..1_500 {
            let key = format!("key-{}{}", next(keys), "-".repeat(next(3) as usize * 9));
            let at = format!("case {case} step {step} key {key}");
            match next(20) {
                0..=9 => {
                    let len = if next(4) == 0 { next(300) } else { 10 } as usize;
                    let value = Bytes::from(vec![7; len]);
                    let expires = (next(5) == 0).then(|| now + next(60));
                    let stored = fast.insert(&key, value.clone(), expires, now);
                    ADMIT_ONE.set(false);
                    let also = general.insert(&key, value, expires, now);
                    ADMIT_ONE.set(true);
                    assert_eq!(stored, also, "{at}");
                }
                10..=17 => assert_eq!(fast.get(&key, now), general.get(&key, now), "{at}"),
                18 => assert_eq!(fast.remove(&key, now), general.remove(&key, now), "{at}"),
                _ => now += next(20),
            }
            let entries = |m: &TinyLfu| {
                m.iter()
                    .map(|(k, v)| (k.to_owned(), v.len()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(entries(&fast), entries(&general), "{at}");
            assert_eq!(fast.stats(), general.stats(), "{at}");
        }
    }
    assert!(
        ADMITTED_ONE.get() > 10_000,
        "the shortcut ran {} times",
        ADMITTED_ONE.get()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn single_shard_keeps_its_promises(
        max_entries in 0..6usize,
        max_bytes in 0..120u64,
        default_ttl in prop::option::of(1..300u64),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        // Whatever the policy evicts: a read returns the last value written and never an
        // expired one; an admissible write is readable right away; the bounds always hold;
        // the counters add up.
        let clock = ManualClock::new(START);
        let mut b = MemoryCache::builder().clock(clock.clone())
            .shards(1)
            .max_entries(max_entries)
            .max_bytes(max_bytes);
        if let Some(ms) = default_ttl {
            b = b.default_ttl(Duration::from_millis(ms));
        }
        let c = b.build().unwrap();
        let mut m = Model { default_ttl, now: START, ..Model::default() };
        let (mut reads, mut hits, mut writes) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Get(k) => {
                    reads += 1;
                    let got = c.lookup(KEYS[k]).map(|b| b.to_vec());
                    hits += u64::from(got.is_some());
                    if got.is_some() {
                        prop_assert_eq!(got, m.live(KEYS[k]).map(|(v, _)| v), "{:?}", op);
                    }
                }
                Op::GetWithTtl(k) => {
                    reads += 1;
                    let got = c.lookup_with_ttl(KEYS[k]).map(|(b, t)| (b.to_vec(), t));
                    hits += u64::from(got.is_some());
                    if got.is_some() {
                        prop_assert_eq!(got, m.live(KEYS[k]), "{:?}", op);
                    }
                }
                Op::Insert(k, len, ttl) => {
                    let value = vec![len as u8; len];
                    let stored = c.insert(KEYS[k], Bytes::from(value.clone()), ttl.map(Duration::from_millis));
                    if ttl == Some(0) {
                        prop_assert!(!stored, "a zero TTL is refused");
                        continue;
                    }
                    writes += 1;
                    let admissible = max_entries > 0 && (KEYS[k].len() + len) as u64 <= max_bytes;
                    prop_assert_eq!(stored, admissible, "{:?}", op);
                    if stored {
                        m.insert(KEYS[k], value.clone(), ttl);
                        reads += 1;
                        hits += 1;
                        prop_assert_eq!(c.lookup(KEYS[k]), Some(Bytes::from(value)), "get after {:?}", op);
                    } else {
                        m.entries.remove(KEYS[k]);
                        prop_assert!(!c.contains(KEYS[k]), "a refused write leaves no value");
                    }
                }
                Op::Remove(k) => {
                    if c.remove(KEYS[k]) {
                        prop_assert!(m.live(KEYS[k]).is_some(), "{:?}", op);
                    }
                    m.entries.remove(KEYS[k]);
                }
                Op::Contains(k) => {
                    if c.contains(KEYS[k]) {
                        prop_assert!(m.live(KEYS[k]).is_some(), "{:?}", op);
                    }
                }
                Op::Ttl(k) => {
                    let ttl = c.key_ttl(KEYS[k]);
                    let expected = match m.live(KEYS[k]) {
                        None => KeyTtl::Missing,
                        Some((_, None)) => KeyTtl::NoExpiry,
                        Some((_, Some(d))) => KeyTtl::ExpiresIn(d),
                    };
                    if ttl != KeyTtl::Missing {
                        prop_assert_eq!(ttl, expected, "{:?}", op);
                    }
                }
                Op::Advance(d) => {
                    clock.advance(Duration::from_millis(d));
                    m.now += d;
                }
                Op::Purge => {
                    c.purge_expired();
                    for key in c.shard_keys(0) {
                        prop_assert!(m.live(&key).is_some(), "{} survived the purge", key);
                    }
                }
            }
            let keys = c.shard_keys(0); // checks the shard's invariants
            prop_assert!(c.len() <= max_entries, "entry bound after {:?}", op);
            prop_assert!(c.size_bytes() <= max_bytes, "byte bound after {:?}", op);
            prop_assert_eq!(keys.len(), c.len());
            let s = c.current_stats();
            prop_assert_eq!((s.hits, s.misses, s.writes), (hits, reads - hits, writes));
            prop_assert_eq!(s.entries, Some(c.len() as u64));
            prop_assert_eq!(s.bytes, Some(c.size_bytes()));
        }
    }

    #[test]
    fn sharded_cache_bounds_hold_after_any_operations(
        shards in 1..5usize,
        max_entries in 0..40usize,
        max_bytes in 0..600u64,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let clock = ManualClock::new(START);
        let c = MemoryCache::builder().clock(clock.clone())
            .shards(shards)
            .max_entries(max_entries)
            .max_bytes(max_bytes)
            .build()
            .unwrap();
        for op in ops {
            match op {
                Op::Get(k) | Op::GetWithTtl(k) => {
                    c.lookup(KEYS[k]);
                }
                Op::Insert(k, len, ttl) => {
                    let stored = c.insert(KEYS[k], Bytes::from(vec![1; len]), ttl.map(Duration::from_millis));
                    if stored {
                        prop_assert_eq!(c.lookup(KEYS[k]).map(|v| v.len()), Some(len), "get after {:?}", op);
                    }
                }
                Op::Remove(k) => {
                    c.remove(KEYS[k]);
                }
                Op::Contains(k) | Op::Ttl(k) => {
                    c.contains(KEYS[k]);
                }
                Op::Advance(d) => clock.advance(Duration::from_millis(d)),
                Op::Purge => {
                    c.purge_expired();
                }
            }
            prop_assert!(c.len() <= max_entries, "entry bound after {:?}", op);
            prop_assert!(c.size_bytes() <= max_bytes, "byte bound after {:?}", op);
            for shard in 0..c.shard_count() {
                c.shard_keys(shard); // checks each shard's own bounds and invariants
            }
        }
    }

    #[test]
    fn shard_invariants_hold_after_random_operations(
        max_entries in 0..10usize,
        max_bytes in 0..200u64,
        ops in prop::collection::vec((0..9u8, 0..12usize, 0..50usize, 0..100u64), 1..300),
    ) {
        let mut lru = TinyLfu::new(max_entries, max_bytes);
        let mut now = START;
        for (kind, k, len, d) in ops {
            let key = format!("key{k}");
            match kind {
                0 | 1 => {
                    lru.insert(&key, Bytes::from(vec![7; len]), None, now);
                }
                2 => {
                    lru.insert(&key, Bytes::from(vec![7; len]), Some(now + d), now);
                }
                3 => {
                    lru.get(&key, now);
                }
                4 => {
                    lru.remove(&key, now);
                }
                5 => {
                    lru.set_expiry(&key, Some(now + d), now);
                }
                6 => now += d,
                7 => {
                    if d < 10 {
                        lru.remove_matching(|key| key.ends_with('1'), now);
                    } else if d < 20 {
                        lru.clear(now);
                    } else {
                        lru.purge_expired(now);
                    }
                }
                _ => {
                    if let Some(v) = lru.peek(&key, now) {
                        prop_assert!(v.iter().all(|&b| b == 7));
                    }
                }
            }
            lru.check_invariants();
            prop_assert_eq!(lru.iter().len(), lru.len());
            prop_assert_eq!(lru.stats().entries, Some(lru.len() as u64));
        }
    }
}
