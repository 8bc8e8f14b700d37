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
/// Increments between halvings, per entry of capacity.
const SAMPLE_PER_ENTRY: usize = 10;

pub(super) struct Sketch {
    table: Box<[u64]>,
    /// Blocks − 1 (the block count is a power of two).
    block_mask: usize,
    /// Increments since the last halving (those that changed a counter).
    size: usize,
    /// Halve when `size` reaches this.
    sample_size: usize,
}

/// A 64-bit finalizer (from SplitMix64): the key's hash also picks the shard and the hash
/// bucket, so its bits are remixed before choosing counters.
#[inline]
fn mix(hash: u64) -> u64 {
    let mut z = hash.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Sketch {
    /// A sketch with no counters: increments do nothing, every estimate is 0.
    pub(super) fn empty() -> Self {
        Sketch {
            table: Box::new([]),
            block_mask: 0,
            size: 0,
            sample_size: usize::MAX,
        }
    }

    /// Replaces the counters with zeroed ones sized for `entries` (one word per entry,
    /// rounded up to a power of two).
    pub(super) fn resize(&mut self, entries: usize) {
        let entries = entries.clamp(1, 1 << 30);
        let words = entries.next_power_of_two().max(BLOCK_WORDS);
        self.table = vec![0; words].into_boxed_slice();
        self.block_mask = words / BLOCK_WORDS - 1;
        self.size = 0;
        self.sample_size = SAMPLE_PER_ENTRY * entries;
    }

    /// Zeroes every counter.
    pub(super) fn clear(&mut self) {
        self.table.fill(0);
        self.size = 0;
    }

    /// The word and the shift of the `i`-th counter of a key.
    #[inline]
    fn index(&self, h: u64, i: u32) -> (usize, u32) {
        let block = (h as usize & self.block_mask) * BLOCK_WORDS;
        let c = (h >> 32 >> (i * 8)) as u32;
        let word = block + (c & 1) as usize + (i as usize) * 2;
        (word, ((c >> 1) & 15) * 4)
    }

    /// Counts one use of the key with this hash.
    #[inline]
    pub(super) fn increment(&mut self, hash: u64) {
        if self.table.is_empty() {
            return;
        }
        // Conservative update: only the counters at the minimum grow, the others already
        // overstate this key.
        let h = mix(hash);
        let index = [0, 1, 2, 3].map(|i| self.index(h, i));
        let count = |(word, shift): (usize, u32)| (self.table[word] >> shift) & 15;
        let min = index.iter().map(|&at| count(at)).min().unwrap_or(15);
        if min == 15 {
            return;
        }
        for (word, shift) in index {
            if (self.table[word] >> shift) & 15 == min {
                self.table[word] += 1 << shift;
            }
        }
        self.size += 1;
        if self.size >= self.sample_size {
            self.halve();
        }
    }

    /// The estimated uses of the key with this hash (at most 15).
    #[inline]
    pub(super) fn frequency(&self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let h = mix(hash);
        (0..4)
            .map(|i| {
                let (word, shift) = self.index(h, i);
                ((self.table[word] >> shift) & 15) as u8
            })
            .min()
            .unwrap_or(0)
    }

    /// Halves every counter (the decay that makes old popularity fade).
    fn halve(&mut self) {
        let mut odd = 0usize;
        for w in self.table.iter_mut() {
            odd += (*w & ONE_MASK).count_ones() as usize;
            *w = (*w >> 1) & RESET_MASK;
        }
        self.size = (self.size - odd / 4) / 2;
    }

    /// Heap bytes held (tests).
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.table.len() * 8
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
    fn sized_to_one_word_per_entry() {
        let mut s = Sketch::empty();
        s.resize(1000);
        assert_eq!(s.heap_bytes(), 1024 * 8);
        assert_eq!(s.sample_size, 10_000);
    }
}
