//! Memory-tier benchmark: larder's `MemoryCache` (and its single-shard `Lru`) side by side with
//! the `lru` crate, moka (sync) and quick_cache, in one run.
//!
//! Run: `cargo bench -p larder-core --bench memory` (or `scripts/bench.sh`). Prints Markdown
//! tables: throughput (median of several rounds) and ratios, Zipf(0.9) hit ratio, and heap
//! bytes of overhead per entry measured with a counting allocator. With `LARDER_BENCH_JSON`
//! set to a file path, every figure is also appended to it as one JSON line (`suite:
//! "memory"`), which `scripts/bench-report.py` turns into BENCHMARKS.md.
//!
//! Every cache holds `String` keys and `Bytes` values of 64 bytes. The `lru` crate is not
//! thread-safe, so it is measured as `Mutex<LruCache>` (what a user would write).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use larder_core::{ManualClock, MemoryCache, memory::Lru};
use parking_lot::Mutex;

// ---------------------------------------------------------------------------------------
// A counting allocator, for bytes per entry.

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------
// Machine-readable results.

/// Appends one JSON line to `$LARDER_BENCH_JSON` (nothing when it is unset).
fn emit(record: serde_json::Value) {
    let Some(path) = std::env::var_os("LARDER_BENCH_JSON") else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open $LARDER_BENCH_JSON");
    writeln!(file, "{record}").expect("write $LARDER_BENCH_JSON");
}

// ---------------------------------------------------------------------------------------
// The contenders, behind one small interface.

trait Contender: Send + Sync {
    fn name(&self) -> &'static str;
    fn get(&self, key: &str) -> Option<Bytes>;
    fn insert(&self, key: &str, value: Bytes);
}

struct Larder(MemoryCache);
impl Contender for Larder {
    fn name(&self) -> &'static str {
        "larder MemoryCache"
    }
    fn get(&self, key: &str) -> Option<Bytes> {
        self.0.lookup(key)
    }
    fn insert(&self, key: &str, value: Bytes) {
        self.0.insert(key, value, None);
    }
}

struct LarderLru(Mutex<Lru>);
impl Contender for LarderLru {
    fn name(&self) -> &'static str {
        "larder Lru (1 shard, Mutex)"
    }
    fn get(&self, key: &str) -> Option<Bytes> {
        self.0.lock().get(key, 0).cloned()
    }
    fn insert(&self, key: &str, value: Bytes) {
        self.0.lock().insert(key, value, None, 0);
    }
}

struct LruCrate(Mutex<lru::LruCache<String, Bytes>>);
impl Contender for LruCrate {
    fn name(&self) -> &'static str {
        "lru (Mutex)"
    }
    fn get(&self, key: &str) -> Option<Bytes> {
        self.0.lock().get(key).cloned()
    }
    fn insert(&self, key: &str, value: Bytes) {
        self.0.lock().put(key.to_owned(), value);
    }
}

struct Moka(moka::sync::Cache<String, Bytes>);
impl Contender for Moka {
    fn name(&self) -> &'static str {
        "moka sync"
    }
    fn get(&self, key: &str) -> Option<Bytes> {
        self.0.get(key)
    }
    fn insert(&self, key: &str, value: Bytes) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Quick(quick_cache::sync::Cache<String, Bytes>);
impl Contender for Quick {
    fn name(&self) -> &'static str {
        "quick_cache sync"
    }
    fn get(&self, key: &str) -> Option<Bytes> {
        self.0.get(key)
    }
    fn insert(&self, key: &str, value: Bytes) {
        self.0.insert(key.to_owned(), value);
    }
}

fn contenders(capacity: usize) -> Vec<Box<dyn Contender>> {
    let clock = Arc::new(ManualClock::new(0));
    vec![
        Box::new(Larder(
            MemoryCache::builder()
                .clock(clock)
                .max_entries(capacity)
                .max_bytes(u64::MAX / 2)
                .build()
                .unwrap(),
        )),
        Box::new(LarderLru(Mutex::new(Lru::new(capacity, u64::MAX / 2)))),
        Box::new(LruCrate(Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(capacity).expect("capacity > 0"),
        )))),
        Box::new(Moka(moka::sync::Cache::new(capacity as u64))),
        Box::new(Quick(quick_cache::sync::Cache::new(capacity))),
    ]
}

// ---------------------------------------------------------------------------------------
// Workloads.

const CAPACITY: usize = 10_000;
const OPS_PER_THREAD: usize = 400_000;
const ROUNDS: usize = 5;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("larder:cache:{i:016x}")).collect()
}

/// A fast deterministic PRNG (splitmix64) so every contender sees the same sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy)]
enum Workload {
    GetHit,
    Insert,
    Mixed9010,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::GetHit => "get (hit)",
            Workload::Insert => "insert",
            Workload::Mixed9010 => "mixed 90% get / 10% insert",
        }
    }
}

/// Million operations per second, median of ROUNDS, for `threads` threads.
fn throughput(c: &dyn Contender, w: Workload, threads: usize, keys: &[String]) -> f64 {
    let value = Bytes::from(vec![7u8; 64]);
    // Warm: fill to capacity with the first CAPACITY keys.
    for k in &keys[..CAPACITY] {
        c.insert(k, value.clone());
    }
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let value = value.clone();
                s.spawn(move || {
                    let mut rng = Rng((round * 31 + t) as u64 + 1);
                    for _ in 0..OPS_PER_THREAD {
                        match w {
                            Workload::GetHit => {
                                // Hot keys stay within capacity: a hit for every contender
                                // (moka admits lazily, so its rate may be slightly lower).
                                let k = &keys[rng.below(CAPACITY / 2)];
                                black_box(c.get(k));
                            }
                            Workload::Insert => {
                                let k = &keys[rng.below(keys.len())];
                                c.insert(k, value.clone());
                            }
                            Workload::Mixed9010 => {
                                let k = &keys[rng.below(CAPACITY * 2)];
                                if rng.below(10) == 0 {
                                    c.insert(k, value.clone());
                                } else {
                                    black_box(c.get(k));
                                }
                            }
                        }
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        results.push((threads * OPS_PER_THREAD) as f64 / secs / 1e6);
    }
    results.sort_by(|a, b| a.total_cmp(b));
    results[ROUNDS / 2]
}

/// A Zipf(s) sampler over `n` ranks by inverse CDF (binary search on the cumulative sums).
struct Zipf {
    cdf: Vec<f64>,
}
impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 1..=n {
            sum += 1.0 / (rank as f64).powf(s);
            cdf.push(sum);
        }
        for x in &mut cdf {
            *x /= sum;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Hit ratio on 1M requests over 100k keys, Zipf(0.9), capacity 10% of the keys, with
/// cache-aside fills (a miss inserts).
fn zipf_hit_ratio(c: &dyn Contender, trace: &[usize], keys: &[String]) -> f64 {
    let value = Bytes::from_static(b"v");
    let mut hits = 0usize;
    for &i in trace {
        if c.get(&keys[i]).is_some() {
            hits += 1;
        } else {
            c.insert(&keys[i], value.clone());
        }
    }
    hits as f64 / trace.len() as f64
}

/// Heap bytes per entry beyond the key and value payloads, after inserting `n` entries.
fn overhead_per_entry(make: &dyn Fn(usize) -> Box<dyn Contender>, n: usize) -> f64 {
    let keys = keys(n);
    let value = Bytes::from(vec![1u8; 64]);
    let before = LIVE.load(Ordering::Relaxed);
    let c = make(n);
    for k in &keys {
        // Values share one allocation (Bytes refcount), so only the cache's own bytes count.
        c.insert(k, value.clone());
    }
    // moka applies writes lazily; reading every key forces pending work through.
    for k in &keys {
        black_box(c.get(k));
    }
    let after = LIVE.load(Ordering::Relaxed);
    let key_bytes: usize = keys.iter().map(|k| k.len()).sum();
    let total = (after - before) as f64;
    drop(c);
    (total - key_bytes as f64) / n as f64
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let all_keys = keys(CAPACITY * 10);
    println!("## Memory tier\n");
    println!(
        "{} threads available; {OPS_PER_THREAD} ops per thread per round; median of {ROUNDS} rounds; \
         capacity {CAPACITY}; keys `String`, values `Bytes` (64 B).\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for threads in [1usize, 2] {
        println!("### {threads} thread(s): million ops/s (ratio = larder MemoryCache / other)\n");
        print!("| contender |");
        let workloads = [Workload::GetHit, Workload::Insert, Workload::Mixed9010];
        for w in workloads {
            print!(" {} |", w.name());
        }
        println!();
        println!("|---|---|---|---|");
        let mut table: Vec<(&'static str, Vec<f64>)> = Vec::new();
        for c in contenders(CAPACITY) {
            let row = workloads
                .iter()
                .map(|&w| throughput(c.as_ref(), w, threads, &all_keys))
                .collect();
            table.push((c.name(), row));
        }
        for (name, row) in &table {
            for (w, mops) in workloads.iter().zip(row) {
                emit(serde_json::json!({
                    "suite": "memory", "kind": "throughput", "contender": name,
                    "workload": w.name(), "threads": threads, "mops": mops,
                    "rounds": ROUNDS, "ops_per_thread": OPS_PER_THREAD,
                }));
            }
        }
        let base = table[0].1.clone();
        for (name, row) in &table {
            print!("| {name} |");
            for (i, v) in row.iter().enumerate() {
                if *name == table[0].0 {
                    print!(" {v:.2} |");
                } else {
                    print!(" {v:.2} ({:.2}×) |", base[i] / v);
                }
            }
            println!();
        }
        println!();
    }

    println!("### Hit ratio: Zipf(0.9), 1M requests, 100k keys, capacity 10k\n");
    let zipf = Zipf::new(100_000, 0.9);
    let mut rng = Rng(42);
    let trace: Vec<usize> = (0..1_000_000).map(|_| zipf.sample(&mut rng)).collect();
    let zkeys = keys(100_000);
    println!("| contender | hit ratio |\n|---|---|");
    for c in contenders(10_000) {
        let ratio = zipf_hit_ratio(c.as_ref(), &trace, &zkeys);
        println!("| {} | {ratio:.3} |", c.name());
        emit(serde_json::json!({
            "suite": "memory", "kind": "hit_ratio", "contender": c.name(), "hit_ratio": ratio,
            "requests": trace.len(), "keys": zkeys.len(), "capacity": 10_000, "zipf_s": 0.9,
        }));
    }

    println!("\n### Heap overhead per entry (100k entries; excludes key and value bytes)\n");
    println!("| contender | bytes/entry |\n|---|---|");
    let n = 100_000;
    for i in 0..contenders(1).len() {
        let name = contenders(1)[i].name();
        let make = |n: usize| contenders(n).swap_remove(i);
        let bytes = overhead_per_entry(&make, n);
        println!("| {name} | {bytes:.0} |");
        emit(serde_json::json!({
            "suite": "memory", "kind": "overhead", "contender": name,
            "bytes_per_entry": bytes, "entries": n,
        }));
    }
}
