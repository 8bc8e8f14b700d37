//! [`Entry`]: an entry of a [`TinyLfu`](super::TinyLfu)'s index, the key and the slot holding
//! the rest of the entry, in 16 bytes on 64-bit targets.
//!
//! This is the only `unsafe` in larder-core. On 64-bit targets `Box<str>` and a `u32` take
//! 24 bytes (the box's length is a `usize`, the `u32` is padded); with the length kept as a
//! `u32` beside the slot the entry takes 16, four to a cache line and none across two (on
//! 32-bit targets both take 12). On the memory
//! benchmark (BENCHMARKS.md) that makes every operation faster and every entry smaller. A
//! thin pointer with the length in front of the key (`thin-vec`, `triomphe::ThinArc`) does
//! not help: a quarter of the keys then span three cache lines, and reads got slower.
//!
//! The entry owns its key exactly as a `Box<str>` does: it is made from one
//! ([`Entry::new`]), gives it back ([`Entry::into_key`]) or frees it when dropped, and lends
//! it only as a shared `&str` ([`Entry::key`]).
//!
//! `scripts/test.sh` runs the memory tier's tests under AddressSanitizer (double frees, uses
//! after free, leaks), and `core/tests/memory_allocations.rs` checks that every key is freed
//! with the size it was allocated with (which the system allocator does not check).
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// A key (an owned `str` of at most `u32::MAX` bytes) and a slot index.
pub(super) struct Entry {
    /// From `Box::leak` of a `Box<str>` of `len` bytes, owned by this entry.
    ptr: NonNull<u8>,
    len: u32,
    /// The slot holding the rest of the entry.
    pub(super) slot: u32,
}

// The index takes 16 bytes per entry on 64-bit targets (the point of this type).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() == 16);

// SAFETY: an `Entry` owns its key's allocation and hands out only shared borrows of it tied
// to `&self`, as `Box<str>` (which is `Send` and `Sync`) does.
unsafe impl Send for Entry {}
// SAFETY: as above; `&Entry` gives only `&str`.
unsafe impl Sync for Entry {}

impl Entry {
    /// Whether a key of `len` bytes fits an entry (at most `u32::MAX` bytes).
    #[inline]
    pub(super) fn fits(len: usize) -> bool {
        u32::try_from(len).is_ok()
    }

    /// An entry owning `key`, or `None` when the key does not fit ([`Entry::fits`]).
    #[inline]
    pub(super) fn new(key: Box<str>, slot: u32) -> Option<Entry> {
        let len = u32::try_from(key.len()).ok()?;
        let ptr = NonNull::from(Box::leak(key)).cast::<u8>();
        Some(Entry { ptr, len, slot })
    }

    /// The key.
    #[inline(always)]
    pub(super) fn key(&self) -> &str {
        // SAFETY: `ptr` and `len` are those of a `Box<str>` this entry owns (see `new`);
        // it is freed only by `drop` or moved out by `into_key`, both of which end the
        // entry, so the `str` lives as long as `&self`, and nothing mutates it.
        unsafe {
            &*(std::ptr::slice_from_raw_parts(self.ptr.as_ptr(), self.len as usize) as *const str)
        }
    }

    /// The key, as the `Box<str>` the entry was made from.
    #[inline]
    pub(super) fn into_key(self) -> Box<str> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: as in `key`; the entry is not dropped (`ManuallyDrop`), so the box is
        // rebuilt once and ownership passes to it.
        unsafe { this.take_key() }
    }

    /// Rebuilds the box the entry was made from.
    ///
    /// # Safety
    ///
    /// At most once per entry, and the entry must not be used afterwards.
    #[inline]
    unsafe fn take_key(&self) -> Box<str> {
        let raw = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize);
        // SAFETY: `raw` is the pointer `Box::leak` returned in `new`, with its length; the
        // caller guarantees the box is rebuilt once.
        unsafe { Box::from_raw(raw as *mut str) }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: the entry ends here and was not taken apart by `into_key` (which does not
        // drop it).
        drop(unsafe { self.take_key() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_and_gives_back_the_key() {
        for key in ["", "k", "larder:cache:0123456789abcdef", "ключ ✓"] {
            let entry = Entry::new(key.into(), 7).unwrap();
            assert_eq!(entry.key(), key);
            assert_eq!(entry.slot, 7);
            let back = entry.into_key();
            assert_eq!(&*back, key);
            drop(Entry::new(back, 0).unwrap()); // frees it
        }
    }

    #[test]
    fn the_key_stays_where_the_box_put_it() {
        let key: Box<str> = "larder:cache:stays".into();
        let at = key.as_ptr();
        let entry = Entry::new(key, 0).unwrap();
        assert_eq!(entry.key().as_ptr(), at, "no copy on the way in");
        let back = entry.into_key();
        assert_eq!(back.as_ptr(), at, "nor on the way out");
    }
}
