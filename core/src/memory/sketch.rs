//! [`Sketch`]: how often keys were used lately, estimated in a fixed amount of memory.
//!
//! A count-min sketch of 4-bit counters, sixteen to a `u64` word, the words grouped in blocks
//! of one cache line: a key's four counters all lie in one block, so an increment touches one
//! line. The estimate of a key is the least of its four counters, which can only overstate
//! (another key may share a counter). After a number of increments proportional to the
//! capacity, every counter is halved, so the sketch follows what is used *lately* (the
//! "reset" of TinyLFU). This is the layout of Caffeine's `FrequencySketch`.

/// Words per block: one 64-byte cache line.
const BLOCK_WORDS: usize = 8;
/// Halves every counter of a word (after the shift, no bit crosses into the next counter).
const RESET_MASK: u64 = 0x7777_7777_7777_7777;
/// The lowest bit of every counter (counted to correct the size after halving).
const ONE_MASK: u64 = 0x1111_1111_1111_1111;
/// Increments between halvings, per entry of capacity: twenty (Caffeine uses ten). Uses in
/// the window are not counted (see `TinyLfu`), so fewer increments arrive per request, and
/// on the memory benchmark's Zipf, scan and loop traces at small capacities the longer
/// memory hits more often.
const SAMPLE_PER_ENTRY: usize = 20;
/// The step between epochs: their low four bits are free to hold an estimate (0 to 15)
/// beside the epoch it was read in (see [`Sketch::count`]).
const EPOCH_STEP: u32 = 16;

pub(super) struct Sketch {
    /// The blocks; their count is a power of two.
    table: Box<[Block]>,
    /// Blocks − 1.
    block_mask: usize,
    /// Increments since the last halving (those that changed a counter).
    size: usize,
    /// Halve when `size` reaches this.
    sample_size: usize,
    /// Changes whenever counters may have decreased (halving, clearing, resizing): a
    /// multiple of [`EPOCH_STEP`], never 0.
    epoch: u32,
}

/// One cache line of counters (aligned, so that a key's counters never straddle two lines).
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Block([u64; BLOCK_WORDS]);

const ZERO_BLOCK: Block = Block([0; BLOCK_WORDS]);

/// A 64-bit finalizer (from SplitMix64): the key's hash also picks the shard and the hash
/// bucket, so its bits are remixed before choosing counters.
#[inline]
fn mix(hash: u64) -> u64 {
    let mut z = hash.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The word (within its block) and the shift of counter `i` (0 to 3) of a key, from the
/// high half of its remixed hash: counter `i` lies in word `2i` or `2i + 1`, so the four
/// never share a word.
#[inline(always)]
fn counter(h: u64, i: u32) -> (usize, u32) {
    let c = (h >> 32 >> (i * 8)) as u32;
    ((i as usize) * 2 + (c & 1) as usize, ((c >> 1) & 15) * 4)
}

impl Sketch {
    /// A sketch with no counters: increments do nothing, every estimate is 0.
    pub(super) fn empty() -> Self {
        Sketch {
            table: Box::new([]),
            block_mask: 0,
            size: 0,
            sample_size: usize::MAX,
            epoch: EPOCH_STEP,
        }
    }

    /// An empty sketch whose epoch follows `self`'s.
    pub(super) fn successor(&self) -> Self {
        let mut next = Sketch::empty();
        next.epoch = self.epoch;
        next.next_epoch();
        next
    }

    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(EPOCH_STEP).max(EPOCH_STEP);
    }

    /// Replaces the counters with zeroed ones sized for `entries` (one word per entry,
    /// rounded up to a power of two).
    pub(super) fn resize(&mut self, entries: usize) {
        let entries = entries.clamp(1, 1 << 30);
        let words = entries.next_power_of_two().max(BLOCK_WORDS);
        self.table = vec![ZERO_BLOCK; words / BLOCK_WORDS].into_boxed_slice();
        self.block_mask = words / BLOCK_WORDS - 1;
        self.size = 0;
        self.sample_size = SAMPLE_PER_ENTRY * entries;
        self.next_epoch();
    }

    /// Zeroes every counter.
    pub(super) fn clear(&mut self) {
        self.table.fill(ZERO_BLOCK);
        self.size = 0;
        self.next_epoch();
    }

    /// Counts one use of the key with this hash; returns its estimate after counting (as
    /// [`Sketch::frequency`] would). At 15 the key's counters are saturated: further
    /// increments change nothing until the epoch changes.
    #[inline(always)]
    pub(super) fn increment(&mut self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let h = mix(hash);
        let block = &mut self.table[h as usize & self.block_mask].0;
        let (w0, s0) = counter(h, 0);
        let (w1, s1) = counter(h, 1);
        let (w2, s2) = counter(h, 2);
        let (w3, s3) = counter(h, 3);
        let (n0, n1) = ((block[w0] >> s0) & 15, (block[w1] >> s1) & 15);
        let (n2, n3) = ((block[w2] >> s2) & 15, (block[w3] >> s3) & 15);
        let min = n0.min(n1).min(n2.min(n3));
        if min == 15 {
            return 15;
        }
        // Conservative update: only the counters at the minimum grow, the others already
        // overstate this key.
        block[w0] += u64::from(n0 == min) << s0;
        block[w1] += u64::from(n1 == min) << s1;
        block[w2] += u64::from(n2 == min) << s2;
        block[w3] += u64::from(n3 == min) << s3;
        self.size += 1;
        if self.size >= self.sample_size {
            self.halve();
            return self.frequency(hash);
        }
        // The counters at the minimum grew by one, the others were already above it.
        min as u8 + 1
    }

    /// Counts one use of the key with this hash, like [`Sketch::increment`]; returns its
    /// estimate after counting together with the current epoch, for [`Sketch::estimate`]
    /// and [`Sketch::is_saturated`] to read back.
    #[inline]
    pub(super) fn count(&mut self, hash: u64) -> u32 {
        let estimate = self.increment(hash);
        self.epoch | u32::from(estimate)
    }

    /// Whether `counted` (from [`Sketch::count`]) says the key's counters are saturated:
    /// counting it again would change nothing.
    #[inline]
    pub(super) fn is_saturated(&self, counted: u32) -> bool {
        counted == self.epoch | 15
    }

    /// The estimated uses of the key with this hash: the one in `counted` (from
    /// [`Sketch::count`]) while the epoch has not changed since (no counter of the key can
    /// have changed but by other keys' increments, which only overstate it); otherwise the
    /// current one. Reading the cached one spares a cache miss.
    #[inline]
    pub(super) fn estimate(&self, counted: u32, hash: u64) -> u8 {
        if counted & !(EPOCH_STEP - 1) == self.epoch {
            (counted & (EPOCH_STEP - 1)) as u8
        } else {
            self.frequency(hash)
        }
    }

    /// The estimated uses of the key with this hash (at most 15).
    #[inline]
    pub(super) fn frequency(&self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let h = mix(hash);
        let block = &self.table[h as usize & self.block_mask].0;
        let count = |i| {
            let (word, shift) = counter(h, i);
            (block[word] >> shift) & 15
        };
        count(0).min(count(1)).min(count(2).min(count(3))) as u8
    }

    /// Halves every counter (the decay that makes old popularity fade).
    fn halve(&mut self) {
        let mut odd = 0usize;
        for w in self.table.iter_mut().flat_map(|b| &mut b.0) {
            odd += (*w & ONE_MASK).count_ones() as usize;
            *w = (*w >> 1) & RESET_MASK;
        }
        self.size = (self.size - odd / 4) / 2;
        self.next_epoch();
    }

    /// Heap bytes held (tests).
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.table.len() * BLOCK_WORDS * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_fifteen_and_halves_after_the_sample() {
        let mut s = Sketch::empty();
        s.increment(1);
        assert_eq!(s.frequency(1), 0, "an empty sketch counts nothing");
        s.resize(64);
        for n in 1..=20u8 {
            s.increment(42);
            assert_eq!(s.frequency(42), n.min(15));
        }
        assert_eq!(s.frequency(43), 0);
        // Increments of other keys until the sample is full: then every counter halves.
        let mut key = 1_000u64;
        let mut last = s.size;
        loop {
            s.increment(key);
            key += 1;
            if s.size < last {
                break;
            }
            last = s.size;
        }
        assert_eq!(s.frequency(42), 7, "15 halved");
    }

    #[test]
    fn reports_the_estimate_and_a_new_epoch_when_counts_may_drop() {
        let mut s = Sketch::empty();
        s.resize(64);
        for n in 1..15 {
            assert_eq!(s.increment(42), n, "the estimate after counting");
        }
        assert_eq!(s.increment(42), 15, "the fifteenth use saturates");
        assert_eq!(s.increment(42), 15, "and it stays saturated");
        assert_eq!(
            s.epoch % EPOCH_STEP,
            0,
            "an epoch leaves room for an estimate"
        );
        let counted = s.count(42);
        assert!(s.is_saturated(counted));
        assert_eq!(s.estimate(counted, 42), 15);
        let epoch = s.epoch;
        let mut key = 1_000u64;
        while s.epoch == epoch {
            s.increment(key);
            key += 1;
        }
        assert_eq!(s.frequency(42), 7, "a new epoch came with the halving");
        assert!(
            !s.is_saturated(counted),
            "saturation is forgotten with the epoch"
        );
        assert_eq!(s.estimate(counted, 42), 7, "a stale estimate is read again");
        s.clear();
        assert_ne!(s.epoch, epoch);
        assert_ne!(s.successor().epoch, s.epoch);
    }

    #[test]
    fn sized_to_one_word_per_entry() {
        let mut s = Sketch::empty();
        s.resize(1000);
        assert_eq!(s.heap_bytes(), 1024 * 8);
        assert_eq!(s.sample_size, 20_000);
    }
}
