//! The memory tier gives every allocation back with the layout it was made with.
//!
//! The memory tier's index entry rebuilds each key's `Box<str>` from a pointer and a stored
//! length (larder-core's one `unsafe` type). Rust's allocator API requires a deallocation
//! to name the allocation's size; the system allocator's `free` ignores it, so neither a
//! crash nor AddressSanitizer (which `scripts/test.sh` runs on the memory tier's tests)
//! shows a wrong one. This binary's allocator records every allocation's layout in front
//! of it and counts deallocations that name another.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use larder_core::memory::TinyLfu;
use larder_core::{Bytes, Cache, ManualClock, MemoryCache};

/// The system allocator, with each allocation's layout stored in the 16 bytes before it.
struct CheckingAllocator;

static DEALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static MISMATCHES: AtomicUsize = AtomicUsize::new(0);

/// The layout asked of the system for `layout`, and where the caller's part starts in it.
fn with_header(layout: Layout) -> Option<(Layout, usize)> {
    let header = layout.align().max(16);
    let size = layout.size().checked_add(header)?;
    Some((Layout::from_size_align(size, header).ok()?, header))
}

// SAFETY: allocations come from `System` with room for the header; `dealloc` frees them
// with the layout they were allocated with (read back from the header, not trusted from
// the caller), so a wrong layout is counted, not passed on.
unsafe impl GlobalAlloc for CheckingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = with_header(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (the header).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // SAFETY: `header` ≥ 16 bytes lie before `user` inside the allocation, and `user` is
        // aligned to `header`, so the two words before it are aligned for `usize`.
        unsafe {
            let user = base.add(header);
            user.cast::<usize>()
                .sub(2)
                .cast::<[usize; 2]>()
                .write([layout.size(), layout.align()]);
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`, which wrote the layout in the two words before it.
        let [size, align] = unsafe { ptr.cast::<usize>().sub(2).cast::<[usize; 2]>().read() };
        if size != layout.size() || align != layout.align() {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
        }
        DEALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the layout `alloc` was given is valid, and this is the block it made.
        unsafe {
            let stored = Layout::from_size_align_unchecked(size, align);
            if let Some((outer, header)) = with_header(stored) {
                System.dealloc(ptr.sub(header), outer);
            }
        }
    }
}

#[global_allocator]
static ALLOCATOR: CheckingAllocator = CheckingAllocator;

/// Key number `n`, `len` characters long (or as long as `n` takes), some of them two bytes
/// long in UTF-8; empty when `len` is 0.
fn key(n: usize, len: usize) -> String {
    if len == 0 {
        return String::new();
    }
    let mut key = format!("{n}:");
    while key.chars().count() < len {
        key.push(if key.len() % 3 == 0 { 'é' } else { 'k' });
    }
    key
}

#[test]
fn every_key_and_value_is_freed_with_the_layout_it_was_allocated_with() {
    let before = DEALLOCATIONS.load(Ordering::Relaxed);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut map = TinyLfu::new(64, 16 * 1024);
    let mut now = 1_000;
    for step in 0..20_000 {
        let n = next(200) as usize;
        // Lengths 0 to 120 characters per key number (key 0 is empty), the same key always
        // as long.
        let k = key(n, n * 61 % 121);
        match next(10) {
            // Insertions evict (and reuse an evicted key's allocation when as long).
            0..=4 => {
                let value = Bytes::from(vec![1; next(600) as usize]);
                let expiry = (next(4) == 0).then(|| now + next(50));
                map.insert(&k, value, expiry, now);
            }
            5..=6 => {
                map.get(&k, now);
            }
            7 => {
                map.remove(&k, now);
            }
            8 => now += next(20),
            _ if step % 2 == 0 => {
                map.remove_matching(|k| k.len() % 7 == 0, now);
            }
            _ => {
                map.purge_expired(now);
            }
        }
        if step % 2_500 == 2_499 {
            map.clear(now);
        }
    }
    drop(map);

    // The sharded cache: eviction, replacement, clear and close (which takes the entries out
    // under each shard's lock and drops them after).
    let cache = MemoryCache::builder()
        .clock(ManualClock::new(0))
        .max_entries(100)
        .max_bytes(64 * 1024)
        .build()
        .unwrap();
    for i in 0..5_000 {
        let k = key(i % 300, i % 300 % 97);
        cache.insert(
            &k,
            Bytes::from(vec![2; i % 50]),
            Some(Duration::from_secs(60)),
        );
        if i % 500 == 0 {
            cache.clear_all();
        }
    }
    futures_executor::block_on(cache.close()).unwrap();
    drop(cache);

    let freed = DEALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(freed > 20_000, "the test freed only {freed} allocations");
    assert_eq!(
        MISMATCHES.load(Ordering::Relaxed),
        0,
        "deallocations naming another layout than their allocation's"
    );
}
