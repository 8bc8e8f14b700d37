//! Memory-tier benchmark: larder's `MemoryCache` (and its single-shard `TinyLfu`) side by
//! side with the `lru` crate, moka (sync) and quick_cache, in one run.
//!
//! Run: `cargo bench -p larder-core --bench memory` (or `scripts/bench.sh`). Prints Markdown
//! tables: throughput (median of several rounds) and the ratio to quick_cache (its median
//! and 95 % confidence interval over paired rounds), hit ratios on seven traces at three
//! capacities, and heap bytes of overhead per entry measured with a counting allocator.
//! With `LARDER_BENCH_JSON` set to a file path, every figure is also appended to it as one
//! JSON line (`suite: "memory"`), which `scripts/bench-report.py` turns into BENCHMARKS.md.
//!
//! Every cache holds `String` keys of the shape the response cache stores (`larder:cache:`
//! and 64 hex digits, 77 bytes) and `Bytes` values of 64 bytes. The `lru` crate is not
//! thread-safe, so it is measured as `Mutex<LruCache>` (what a user would write).
//!
//! `LARDER_BENCH_ONLY` runs one part: `throughput`, `hit-ratio` or `overhead` (the hit-ratio
//! part is quick, for trying policy changes), or `get-hit`, `insert` or
//! `mixed`: one throughput column. `LARDER_BENCH_CONTENDERS` (comma-separated name prefixes,
//! such as `larder,quick`) runs only those contenders.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use larder_core::{ManualClock, MemoryCache, memory::TinyLfu};
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

struct LarderShard(Mutex<TinyLfu>);
impl Contender for LarderShard {
    fn name(&self) -> &'static str {
        "larder TinyLfu (1 shard, Mutex)"
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

/// The contenders, or those whose names start with one of `LARDER_BENCH_CONTENDERS`'s
/// comma-separated prefixes.
fn contenders(capacity: usize) -> Vec<Box<dyn Contender>> {
    let mut all = every_contender(capacity);
    if let Ok(only) = std::env::var("LARDER_BENCH_CONTENDERS") {
        all.retain(|c| only.split(',').any(|p| c.name().starts_with(p.trim())));
    }
    all
}

fn every_contender(capacity: usize) -> Vec<Box<dyn Contender>> {
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
        Box::new(LarderShard(Mutex::new(TinyLfu::new(
            capacity,
            u64::MAX / 2,
        )))),
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
/// Rounds of every contender's throughput (the table's cells).
const ROUNDS: usize = 9;
/// Rounds of the paired larder ÷ quick_cache ratio, which decides the speed targets: enough
/// for a 95 % confidence interval of the median well inside the range of the rounds. The
/// rounds of insert at 1 thread spread over ±15 %, which left 25 rounds an interval about
/// 10 % wide; 49 narrow it by 30 %.
const RATIO_ROUNDS: usize = 49;

/// `n` distinct keys of the shape the response cache stores: `larder:cache:` and 64 hex
/// digits (a request's SHA-256), 77 bytes.
fn keys(n: usize) -> Vec<String> {
    let mut rng = Rng(0x1a4de7);
    (0..n)
        .map(|i| {
            // The index makes the keys distinct; the rest is random.
            let (a, b, c) = (rng.next(), rng.next(), rng.next());
            format!("larder:cache:{i:016x}{a:016x}{b:016x}{c:016x}")
        })
        .collect()
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

/// Pins the calling thread to CPU `cpu` where the OS allows (Linux); false otherwise.
fn pin_to(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the
        // call reads `size_of::<cpu_set_t>()` bytes of it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

/// Fills `c` to capacity with the first CAPACITY keys.
fn warm(c: &dyn Contender, keys: &[String]) {
    let value = Bytes::from(vec![7u8; 64]);
    for k in &keys[..CAPACITY] {
        c.insert(k, value.clone());
    }
}

/// One round: million operations per second of `threads` threads (thread `t` pinned to
/// CPU `t` when `pinned`).
fn round(
    c: &dyn Contender,
    w: Workload,
    threads: usize,
    keys: &[String],
    seed: usize,
    cpus: usize,
) -> f64 {
    let value = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let value = value.clone();
            s.spawn(move || {
                if cpus > 1 {
                    pin_to(t % cpus);
                }
                let mut rng = Rng((seed * 31 + t) as u64 + 1);
                ops(c, w, OPS_PER_THREAD, &mut rng, keys, &value);
            });
        }
    });
    (threads * OPS_PER_THREAD) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// `n` operations of workload `w` on `c`.
#[inline(always)]
fn ops(c: &dyn Contender, w: Workload, n: usize, rng: &mut Rng, keys: &[String], value: &Bytes) {
    for _ in 0..n {
        match w {
            Workload::GetHit => {
                // Hot keys stay within capacity: a hit for every contender (moka admits
                // lazily, so its rate may be slightly lower).
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
}

/// The order of a paired measurement's chunks (0: A, 1: B). Counterbalanced: each contender
/// runs four chunks and follows itself once; A opens the round and B closes it.
const PAIR_ORDER: [usize; 8] = [0, 1, 1, 0, 1, 0, 0, 1];
/// Chunks of a paired measurement.
const PAIR_CHUNKS: usize = PAIR_ORDER.len();

/// `a`'s throughput ÷ `b`'s in one round, measured in alternating chunks of a quarter
/// round each (A B B A B A A B, every thread running the same contender at once), so that
/// a slow stretch of the machine falls on both alike. Each chunk is preceded by an untimed
/// warm-up of a sixteenth of its length, so that neither pays for refilling the CPU caches
/// after the other ran.
fn paired_ratio(
    a: &dyn Contender,
    b: &dyn Contender,
    w: Workload,
    threads: usize,
    keys: &[String],
    seed: usize,
    cpus: usize,
) -> f64 {
    let value = Bytes::from(vec![7u8; 64]);
    let barrier = std::sync::Barrier::new(threads);
    let elapsed = Mutex::new([0f64; 2]);
    let chunk = OPS_PER_THREAD / 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (value, barrier, elapsed) = (value.clone(), &barrier, &elapsed);
            s.spawn(move || {
                if cpus > 1 {
                    pin_to(t % cpus);
                }
                // Both contenders see the same key sequence.
                let seed = (seed * 31 + t) as u64 + 1;
                let mut rngs = [Rng(seed), Rng(seed)];
                for which in PAIR_ORDER {
                    let c = [a, b][which];
                    barrier.wait();
                    ops(c, w, chunk / 16, &mut rngs[which], keys, &value);
                    barrier.wait();
                    let start = Instant::now();
                    ops(c, w, chunk, &mut rngs[which], keys, &value);
                    barrier.wait();
                    if t == 0 {
                        elapsed.lock()[which] += start.elapsed().as_secs_f64();
                    }
                }
            });
        }
    });
    let [ta, tb] = *elapsed.lock();
    tb / ta
}

/// A median with a distribution-free confidence interval, and the range of the values.
struct MedianCi {
    median: f64,
    low: f64,
    high: f64,
    /// The interval's coverage (at least 0.95 when there are 6 values or more).
    level: f64,
    lowest: f64,
    highest: f64,
}

/// The median of `v` and the narrowest interval between order statistics, the `k`-th lowest
/// and the `k`-th highest value, that holds the true median with probability ≥ 95 %: that
/// probability is 1 − 2 P(B ≤ k − 1) for B ~ Binomial(n, ½), whatever the distribution of
/// the values (the sign-test interval). With 25 values, k = 8 (95.7 %).
fn median_ci(v: &[f64]) -> MedianCi {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let mut k = 1;
    // P(B ≤ k − 1) and P(B = k).
    let (mut below, mut term) = (0.5f64.powi(n as i32), n as f64 * 0.5f64.powi(n as i32));
    while k < n / 2 && 1.0 - 2.0 * (below + term) >= 0.95 {
        below += term;
        k += 1;
        term *= (n - k + 1) as f64 / k as f64;
    }
    let (low, high) = (v[k - 1], v[n - k]);
    let (median, lowest, highest) = median_spread(v);
    MedianCi {
        median,
        low,
        high,
        level: 1.0 - 2.0 * below,
        lowest,
        highest,
    }
}

/// The median of `v` and the spread around it (the lowest and highest value).
fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
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

/// Hit ratio of `trace` (indices into `keys`) with cache-aside fills (a miss inserts).
fn hit_ratio(c: &dyn Contender, trace: &[usize], keys: &[String]) -> f64 {
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

/// Keys in the hit-ratio traces' key space; capacities are fractions of it.
const SPACE: usize = 100_000;
/// Requests per hit-ratio trace.
const REQUESTS: usize = 500_000;
/// Runs per contender and trace, each on a fresh instance (hasher seeds are random per
/// instance, and with them which keys share a sketch counter or a shard): the table shows
/// their mean.
const HIT_RATIO_RUNS: usize = 20;

/// A trace of REQUESTS indices. Indices ≥ SPACE are one-off keys (never requested again).
fn trace(name: &str, capacity: usize) -> Vec<usize> {
    let mut rng = Rng(7);
    let mut one_off = SPACE;
    let mut fresh = || {
        one_off += 1;
        one_off - 1
    };
    match name {
        "loop" => {
            // A loop over 10 % more keys than fit: LRU and FIFO miss every request.
            let n = capacity + capacity / 10;
            (0..REQUESTS).map(|i| i % n).collect()
        }
        "scan + hot" => {
            // Zipf(0.9) requests to the key space, and every fifth stretch of 5,000
            // requests a scan of one-off keys.
            let zipf = Zipf::new(SPACE, 0.9);
            (0..REQUESTS)
                .map(|i| {
                    if (i / 5_000) % 5 == 4 {
                        fresh()
                    } else {
                        zipf.sample(&mut rng)
                    }
                })
                .collect()
        }
        "agent" => {
            // An agent fleet: 30 % one-off prompts; the rest Zipf(1.0) over a hot set of
            // 2,000 prompts that moves on by 500 every 50,000 requests; and bursts, where a
            // request is repeated right away 1–5 times (retries, parallel identical calls).
            let zipf = Zipf::new(2_000, 1.0);
            let mut out = Vec::with_capacity(REQUESTS);
            while out.len() < REQUESTS {
                let shift = (out.len() / 50_000) * 500;
                let k = if rng.below(10) < 3 {
                    fresh()
                } else {
                    (shift + zipf.sample(&mut rng)) % SPACE
                };
                out.push(k);
                if rng.below(5) == 0 {
                    for _ in 0..=rng.below(5) {
                        out.push(k);
                    }
                }
            }
            out.truncate(REQUESTS);
            out
        }
        zipf => {
            let s: f64 = zipf.trim_start_matches("zipf ").parse().expect("zipf S");
            let zipf = Zipf::new(SPACE, s);
            (0..REQUESTS).map(|_| zipf.sample(&mut rng)).collect()
        }
    }
}

/// The hit-ratio table: every trace at every capacity, every contender, in one run.
fn hit_ratios() {
    const TRACES: [&str; 7] = [
        "zipf 0.6",
        "zipf 0.8",
        "zipf 1.0",
        "zipf 1.2",
        "loop",
        "scan + hot",
        "agent",
    ];
    let keys = keys(SPACE + REQUESTS);
    let names: Vec<&str> = contenders(1).iter().map(|c| c.name()).collect();
    println!(
        "### Hit ratio: {REQUESTS} requests per trace over {SPACE} keys (plus one-off keys), \
         cache-aside fills; mean of {HIT_RATIO_RUNS} fresh instances\n"
    );
    println!("| trace | capacity | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    for t in TRACES {
        for pct in [1usize, 10, 50] {
            let capacity = SPACE * pct / 100;
            let trace = trace(t, capacity);
            // Fresh instances per run: each has its own random hasher seed.
            let mut runs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
            for _ in 0..HIT_RATIO_RUNS {
                for (i, c) in contenders(capacity).iter().enumerate() {
                    runs[i].push(hit_ratio(c.as_ref(), &trace, &keys));
                }
            }
            let cells: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.3}", r.iter().sum::<f64>() / r.len() as f64))
                .collect();
            println!("| {t} | {pct} % | {} |", cells.join(" | "));
            for (name, r) in names.iter().zip(&runs) {
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                let low = r.iter().copied().fold(f64::INFINITY, f64::min);
                let high = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                emit(serde_json::json!({
                    "suite": "memory", "kind": "hit_ratio", "contender": name,
                    "hit_ratio": mean, "low": low, "high": high, "runs": r.len(),
                    "trace": t, "capacity_pct": pct,
                    "capacity": capacity, "requests": REQUESTS, "keys": SPACE,
                }));
            }
        }
    }
    println!();
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
    let only = std::env::var("LARDER_BENCH_ONLY").ok();
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    println!("## Memory tier\n");
    if run("throughput") {
        throughput(&[Workload::GetHit, Workload::Insert, Workload::Mixed9010]);
    }
    for (part, w) in [
        ("get-hit", Workload::GetHit),
        ("insert", Workload::Insert),
        ("mixed", Workload::Mixed9010),
    ] {
        if only.as_deref() == Some(part) {
            throughput(&[w]);
        }
    }
    if run("hit-ratio") {
        hit_ratios();
    }
    if run("overhead") {
        overheads();
    }
}

/// The throughput tables: every workload at 1 and 2 threads, contenders interleaved.
fn throughput(workloads: &[Workload]) {
    let all_keys = keys(CAPACITY * 10);
    println!(
        "{} threads available; {OPS_PER_THREAD} ops per thread per round; median of {ROUNDS} rounds; \
         capacity {CAPACITY}; keys `String` ({} B), values `Bytes` (64 B).\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        all_keys[0].len(),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus > 1 && pin_to(0);
    println!(
        "Contenders interleaved round by round (the order rotating), {ROUNDS} rounds; threads \
         {}pinned to CPUs; the ratio is larder MemoryCache ÷ quick_cache in each of \
         {RATIO_ROUNDS} rounds, measured in {PAIR_CHUNKS} alternating chunks (A B B A B A A \
         B, each after an untimed warm-up): median [95 % confidence interval, its ends rounded \
         outwards], and the range of the rounds.\n",
        if pinned { "" } else { "not " }
    );
    for threads in [1usize, 2] {
        println!("### {threads} thread(s): million ops/s, median [lowest – highest]\n");
        let columns: Vec<&str> = workloads.iter().map(|w| w.name()).collect();
        println!("| contender | {} |", columns.join(" | "));
        println!("|---|{}", "---|".repeat(columns.len()));
        let mut cells: Vec<Vec<String>> = Vec::new();
        let mut ratio_row = Vec::new();
        let all = contenders(CAPACITY);
        let names: Vec<&str> = all.iter().map(|c| c.name()).collect();
        for &w in workloads {
            let cs = contenders(CAPACITY);
            for c in &cs {
                warm(c.as_ref(), &all_keys);
            }
            let larder = names.iter().position(|n| *n == "larder MemoryCache");
            let quick = names.iter().position(|n| *n == "quick_cache sync");
            let pair = larder.zip(quick);
            let mut per: Vec<Vec<f64>> = vec![Vec::new(); cs.len()];
            let mut ratios = Vec::new();
            if let Some((l, q)) = pair {
                for r in 0..RATIO_ROUNDS {
                    ratios.push(paired_ratio(
                        cs[l].as_ref(),
                        cs[q].as_ref(),
                        w,
                        threads,
                        &all_keys,
                        r,
                        if pinned { cpus } else { 1 },
                    ));
                }
            }
            for r in 0..ROUNDS {
                for k in 0..cs.len() {
                    let i = (r + k) % cs.len();
                    per[i].push(round(
                        cs[i].as_ref(),
                        w,
                        threads,
                        &all_keys,
                        r,
                        if pinned { cpus } else { 1 },
                    ));
                }
            }
            if ratios.is_empty() {
                ratio_row.push("–".to_owned());
            } else {
                let ci = median_ci(&ratios);
                let (rlo, rhi) = (ci.lowest, ci.highest);
                let decided = if ci.low >= 1.0 {
                    "met"
                } else if ci.high < 1.0 {
                    "not met"
                } else {
                    "not decided"
                };
                // The interval's ends rounded outwards, so that a shown bound never claims more.
                ratio_row.push(format!(
                    "{:.2}× [{:.2} – {:.2}] {decided} ({:.1} % CI; rounds {rlo:.2} – {rhi:.2})",
                    ci.median,
                    (ci.low * 100.0).floor() / 100.0,
                    (ci.high * 100.0).ceil() / 100.0,
                    ci.level * 100.0,
                ));
                emit(serde_json::json!({
                    "suite": "memory", "kind": "ratio", "workload": w.name(), "threads": threads,
                    "vs": "quick_cache sync", "median": ci.median, "ci_low": ci.low,
                    "ci_high": ci.high, "ci_level": ci.level, "low": rlo, "high": rhi,
                    "rounds": RATIO_ROUNDS, "pinned": pinned, "paired_chunks": PAIR_CHUNKS,
                }));
            }
            for (i, rounds) in per.into_iter().enumerate() {
                let (m, lo, hi) = median_spread(rounds);
                if cells.len() <= i {
                    cells.push(Vec::new());
                }
                cells[i].push(format!("{m:.2} [{lo:.2} – {hi:.2}]"));
                emit(serde_json::json!({
                    "suite": "memory", "kind": "throughput", "contender": names[i],
                    "workload": w.name(), "threads": threads, "mops": m, "low": lo,
                    "high": hi, "rounds": ROUNDS, "ops_per_thread": OPS_PER_THREAD,
                    "key_bytes": all_keys[0].len(),
                    "pinned": pinned,
                }));
            }
        }
        for (name, row) in names.iter().zip(&cells) {
            println!("| {name} | {} |", row.join(" | "));
        }
        println!("| **larder ÷ quick_cache** | {} |\n", ratio_row.join(" | "));
    }
}

/// The heap bytes per entry of every contender.
fn overheads() {
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
