//! larder over redis-rs against raw redis-rs, in the same run, on real servers started by
//! the harness (a standalone server and a 3-master Cluster).
//!
//! Operations: GET and SET of 1 KB values with 1, 100 and 1000 concurrent tasks, and MGET and
//! MSET of 100 keys (1 KB values) with 1 and 10 tasks. Three clients per operation:
//!
//! - `raw`: redis-rs alone — one `MultiplexedConnection` (standalone) or one async
//!   `ClusterConnection` (cluster), typed commands;
//! - `transport`: larder's `RedisTransport` (`Cmd` in, `Value` out, bounded calls);
//! - `cache`: `RedisCache` over it — what users call (key prefixing, hit/miss counting, and
//!   the stats `INCRBY` riding in each write's pipeline).
//!
//! Run with `scripts/bench.sh` (or `cargo bench -p larder-native --features test-util --bench
//! transport`). `LARDER_BENCH_SECS` sets the seconds per measurement (default 1; each client is
//! measured in 3 alternating rounds and its median round kept);
//! `LARDER_BENCH_POOL` larder's `pool_size` (default: the options' default);
//! `LARDER_BENCH_RAW_BOUNDED` gives the raw cluster client larder's timeouts (redis-rs's
//! cluster default has none); `LARDER_BENCH_ONLY`
//! = `standalone` or `cluster` runs one topology. With `LARDER_BENCH_JSON` set to a file path,
//! every measurement is also appended to it as one JSON line (`suite: "redis"`).

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::{Cache, Cmd, RedisCache, Transport};
use larder_native::testing::{RedisCluster, RedisServer};
use larder_native::{RedisOptions, RedisTransport};
use redis::AsyncCommands;

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
type Op = Arc<dyn Fn(u64) -> BoxFut + Send + Sync>;
/// The operations of one client, by name.
type Ops = [(&'static str, Op); 4];

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

const KEYS: u64 = 1000;
const PREFIX: &str = "bench";

/// Throughput and latency of one client on one operation.
#[derive(Debug, Clone, Copy)]
struct Measure {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `op` from `tasks` tasks for `secs` (after a short warm-up).
async fn measure(tasks: usize, secs: f64, op: Op) -> Measure {
    let warm = Duration::from_millis(200);
    let run = Duration::from_secs_f64(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            let stop = stop.clone();
            let counting = counting.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = t as u64 * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let start = Instant::now();
                    op(i % KEYS).await;
                    if counting.load(Ordering::Relaxed) {
                        lat.push(start.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(warm).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(run).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("bench task"));
    }
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measure {
        ops_per_sec: done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

/// Rounds per client and measurement (alternating clients).
const ROUNDS: usize = 3;

/// The round with the median throughput.
fn median(mut rounds: Vec<Measure>) -> Measure {
    rounds.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    rounds[rounds.len() / 2]
}

fn key(i: u64) -> String {
    format!("k{i}")
}

fn full_key(i: u64) -> String {
    format!("{PREFIX}:cache:{}", key(i))
}

/// Raw redis-rs operations over any async connection.
fn raw_ops<C>(conn: C) -> Ops
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let value = vec![b'x'; 1024];
    let get: Op = {
        let conn = conn.clone();
        Arc::new(move |i| {
            let mut c = conn.clone();
            Box::pin(async move {
                let v: Option<Vec<u8>> = c.get(full_key(i)).await.expect("raw GET");
                assert!(v.is_some());
            })
        })
    };
    let set: Op = {
        let conn = conn.clone();
        Arc::new(move |i| {
            let mut c = conn.clone();
            let value = value.clone();
            Box::pin(async move {
                let () = c.set(full_key(i), value).await.expect("raw SET");
            })
        })
    };
    let mget: Op = {
        let conn = conn.clone();
        Arc::new(move |i| {
            let mut c = conn.clone();
            Box::pin(async move {
                let keys: Vec<String> = (0..100).map(|j| full_key((i + j * 7) % KEYS)).collect();
                let v: Vec<Option<Vec<u8>>> = c.mget(keys).await.expect("raw MGET");
                assert_eq!(v.len(), 100);
            })
        })
    };
    let mset: Op = Arc::new(move |i| {
        let mut c = conn.clone();
        Box::pin(async move {
            let entries: Vec<(String, Vec<u8>)> = (0..100)
                .map(|j| (full_key((i + j * 7) % KEYS), vec![b'x'; 1024]))
                .collect();
            let () = c.mset(&entries).await.expect("raw MSET");
        })
    });
    [
        ("GET", get),
        ("SET", set),
        ("MGET100", mget),
        ("MSET100", mset),
    ]
}

fn transport_ops(t: RedisTransport) -> Ops {
    let value = Bytes::from(vec![b'x'; 1024]);
    let get: Op = {
        let t = t.clone();
        Arc::new(move |i| {
            let t = t.clone();
            Box::pin(async move {
                let v = t.exec(Cmd::new("GET").arg(full_key(i))).await.expect("GET");
                assert!(v.as_bytes().is_some());
            })
        })
    };
    let set: Op = {
        let t = t.clone();
        Arc::new(move |i| {
            let t = t.clone();
            let value = value.clone();
            Box::pin(async move {
                let v = t
                    .exec(Cmd::new("SET").arg(full_key(i)).arg(value))
                    .await
                    .expect("SET");
                assert!(v.is_ok());
            })
        })
    };
    let mget: Op = {
        let t = t.clone();
        Arc::new(move |i| {
            let t = t.clone();
            Box::pin(async move {
                let keys = (0..100).map(|j| full_key((i + j * 7) % KEYS));
                let v = t
                    .exec(Cmd::new("MGET").args_from(keys))
                    .await
                    .expect("MGET");
                assert!(matches!(v, larder_core::Value::Array(ref a) if a.len() == 100));
            })
        })
    };
    let mset: Op = Arc::new(move |i| {
        let t = t.clone();
        Box::pin(async move {
            let mut cmd = Cmd::new("MSET");
            for j in 0..100 {
                cmd = cmd.arg(full_key((i + j * 7) % KEYS)).arg(vec![b'x'; 1024]);
            }
            assert!(t.exec(cmd).await.expect("MSET").is_ok());
        })
    });
    [
        ("GET", get),
        ("SET", set),
        ("MGET100", mget),
        ("MSET100", mset),
    ]
}

fn cache_ops(cache: Arc<RedisCache<RedisTransport>>) -> Ops {
    let value = Bytes::from(vec![b'x'; 1024]);
    let get: Op = {
        let cache = cache.clone();
        Arc::new(move |i| {
            let cache = cache.clone();
            Box::pin(async move {
                assert!(cache.get(&key(i)).await.expect("get").is_some());
            })
        })
    };
    let set: Op = {
        let cache = cache.clone();
        Arc::new(move |i| {
            let cache = cache.clone();
            let value = value.clone();
            Box::pin(async move {
                cache.set(&key(i), value, None).await.expect("set");
            })
        })
    };
    let mget: Op = {
        let cache = cache.clone();
        Arc::new(move |i| {
            let cache = cache.clone();
            Box::pin(async move {
                let keys: Vec<String> = (0..100).map(|j| key((i + j * 7) % KEYS)).collect();
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                assert_eq!(cache.mget(&refs).await.expect("mget").len(), 100);
            })
        })
    };
    let mset: Op = Arc::new(move |i| {
        let cache = cache.clone();
        Box::pin(async move {
            let keys: Vec<String> = (0..100).map(|j| key((i + j * 7) % KEYS)).collect();
            let value = Bytes::from(vec![b'x'; 1024]);
            let entries: Vec<(&str, Bytes)> =
                keys.iter().map(|k| (k.as_str(), value.clone())).collect();
            cache.mset(&entries, None).await.expect("mset");
        })
    });
    [
        ("GET", get),
        ("SET", set),
        ("MGET100", mget),
        ("MSET100", mset),
    ]
}

struct Row {
    topology: &'static str,
    op: &'static str,
    tasks: usize,
    raw: Measure,
    transport: Measure,
    cache: Measure,
}

async fn bench_topology(
    topology: &'static str,
    raw: Ops,
    transport: Ops,
    cache: Ops,
    secs: f64,
    rows: &mut Vec<Row>,
) {
    for (i, (op, raw_op)) in raw.iter().enumerate() {
        let plans: &[usize] = if op.starts_with('M') {
            &[1, 10]
        } else {
            &[1, 100, 1000]
        };
        for &tasks in plans {
            // Rounds alternate the clients, so a burst of load elsewhere on the machine hits
            // all three alike; each client's median round is kept.
            let (mut rs, mut ts, mut cs) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                rs.push(measure(tasks, secs, raw_op.clone()).await);
                ts.push(measure(tasks, secs, transport[i].1.clone()).await);
                cs.push(measure(tasks, secs, cache[i].1.clone()).await);
            }
            let (r, t, c) = (median(rs), median(ts), median(cs));
            eprintln!(
                "  {topology} {op} x{tasks}: raw {:.0}/s, transport {:.0}/s, cache {:.0}/s",
                r.ops_per_sec, t.ops_per_sec, c.ops_per_sec
            );
            for (client, m) in [
                ("raw redis-rs", r),
                ("larder transport", t),
                ("larder cache", c),
            ] {
                emit(serde_json::json!({
                    "suite": "redis", "topology": topology, "op": op, "tasks": tasks,
                    "client": client, "ops_per_sec": m.ops_per_sec,
                    "p50_us": m.p50.as_secs_f64() * 1e6, "p99_us": m.p99.as_secs_f64() * 1e6,
                    "secs": secs, "rounds": ROUNDS,
                }));
            }
            rows.push(Row {
                topology,
                op,
                tasks,
                raw: r,
                transport: t,
                cache: c,
            });
        }
    }
}

fn fill_cmds() -> Vec<Cmd> {
    (0..KEYS)
        .map(|i| Cmd::new("SET").arg(full_key(i)).arg(vec![b'x'; 1024]))
        .collect()
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| topology   | op      | tasks | raw ops/s | transport ops/s | cache ops/s | transport/raw | cache/raw | p50 µs raw / transport / cache | p99 µs raw / transport / cache |"
    );
    println!(
        "|------------|---------|------:|----------:|----------------:|------------:|--------------:|----------:|--------------------------------|--------------------------------|"
    );
    for r in rows {
        println!(
            "| {:<10} | {:<7} | {:>5} | {:>9.0} | {:>15.0} | {:>11.0} | {:>12.2}x | {:>8.2}x | {:>30} | {:>30} |",
            r.topology,
            r.op,
            r.tasks,
            r.raw.ops_per_sec,
            r.transport.ops_per_sec,
            r.cache.ops_per_sec,
            r.transport.ops_per_sec / r.raw.ops_per_sec,
            r.cache.ops_per_sec / r.raw.ops_per_sec,
            format!(
                "{} / {} / {}",
                us(r.raw.p50),
                us(r.transport.p50),
                us(r.cache.p50)
            ),
            format!(
                "{} / {} / {}",
                us(r.raw.p99),
                us(r.transport.p99),
                us(r.cache.p99)
            ),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let secs: f64 = std::env::var("LARDER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let pool: usize = std::env::var("LARDER_BENCH_POOL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(larder_native::DEFAULT_POOL_SIZE);
    let only = std::env::var("LARDER_BENCH_ONLY").unwrap_or_default();
    let server = RedisServer::start().expect("start redis-server");
    let cluster = RedisCluster::start(3, 0).expect("start a 3-master cluster");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    rt.block_on(async {
        // Standalone.
        let client = redis::Client::open(server.url()).unwrap();
        let raw = client.get_multiplexed_async_connection().await.unwrap();
        let opts = RedisOptions::standalone(server.addr()).pool_size(pool);
        let transport = RedisTransport::from_options(&opts).await.unwrap();
        transport.pipeline(fill_cmds()).await.unwrap();
        let cache = Arc::new(
            RedisCache::builder(RedisTransport::from_options(&opts).await.unwrap())
                .prefix(PREFIX)
                .build()
                .unwrap(),
        );
        eprintln!("standalone ({:?})", transport);
        if only.is_empty() || only == "standalone" {
            bench_topology(
                "standalone",
                raw_ops(raw),
                transport_ops(transport),
                cache_ops(cache),
                secs,
                &mut rows,
            )
            .await;
        }

        // Cluster.
        let seeds = cluster.seed_urls();
        // redis-rs's cluster client has no timeouts by default; with
        // LARDER_BENCH_RAW_BOUNDED set, the raw client gets larder's default bounds (per-node
        // response timeout 1 s, overall 2 s) to show what the bounds cost.
        let raw_client = if std::env::var_os("LARDER_BENCH_RAW_BOUNDED").is_some() {
            redis::cluster::ClusterClientBuilder::new(seeds.clone())
                .response_timeout(Duration::from_secs(1))
                .overall_response_timeout(Some(Duration::from_secs(2)))
                .build()
        } else {
            redis::cluster::ClusterClient::new(seeds.clone())
        };
        let raw = raw_client.unwrap().get_async_connection().await.unwrap();
        let opts = RedisOptions::cluster(seeds).pool_size(pool);
        let transport = RedisTransport::from_options(&opts).await.unwrap();
        transport.pipeline(fill_cmds()).await.unwrap();
        let cache = Arc::new(
            RedisCache::builder(RedisTransport::from_options(&opts).await.unwrap())
                .prefix(PREFIX)
                .build()
                .unwrap(),
        );
        eprintln!("cluster ({:?})", transport);
        if only.is_empty() || only == "cluster" {
            bench_topology(
                "cluster",
                raw_ops(raw),
                transport_ops(transport),
                cache_ops(cache),
                secs,
                &mut rows,
            )
            .await;
        }
    });
    print_table(&rows);
    drop(cluster);
    drop(server);
}
