//! Slots moving under load: RedisTransport on a 3-master Redis Cluster (with replicas) under
//! 100 concurrent tasks (GET, SET, and MGET across slots) while slots move — `redis-cli
//! --cluster reshard`, then `--cluster rebalance`, then a `CLUSTER FAILOVER` — each on a fresh
//! cluster. Per 500 ms window it prints ops/s and errors, and it checks: no wrong value ever,
//! no call past the call budget, no error from 2 s after the move on, and the transport that
//! lived through the move serving ≥ 80 % of what a new transport does (and ≥ 50 % of the rate
//! before the move, which this machine's noise allows to be asserted).
//!
//! redis-rs 1.8.1 wedged a cluster connection for good here (every call timing out, ~100
//! ops/s, no recovery) within a second of the first move; see `transport/cluster.rs`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::{Cmd, ErrorKind, Transport, Value};
use larder_native::testing::{RedisCluster, RespValue};
use larder_native::{RedisOptions, RedisTransport};

const KEYS: u64 = 30_000;
const WINDOW: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    timeouts: AtomicU64,
    other_errors: AtomicU64,
    wrong: AtomicU64,
    /// Calls that took longer than the call budget (plus scheduling slack).
    late: AtomicU64,
}

fn value_of(k: u64) -> Bytes {
    Bytes::from(format!("value-{k}"))
}

fn myid(cluster: &RedisCluster, port: u16) -> String {
    match cluster.cmd(port, &["CLUSTER", "MYID"]).unwrap() {
        RespValue::Bulk(b) => String::from_utf8(b).unwrap(),
        other => panic!("CLUSTER MYID: {other:?}"),
    }
}

fn redis_cli(args: &[String]) {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Copy, Debug)]
enum Disturbance {
    /// `--cluster reshard` of 1000 slots from the first master to the second.
    Reshard,
    /// 3000 slots resharded first (before the load), then `--cluster rebalance` under load.
    Rebalance,
    /// `CLUSTER FAILOVER` on the replica of the first master.
    Failover,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// GETs per second of 100 tasks on `t` over 3 s.
async fn get_rate(t: &Arc<RedisTransport>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let (t, stop, done) = (t.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut x = i + 1;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    if t.exec(Cmd::new("GET").arg(format!("key:{}", x % KEYS)))
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed) as f64 / 3.0
}

async fn run(kind: Disturbance) {
    let tasks = 100;
    let cluster = Arc::new(
        blocking(RedisCluster::start_default)
            .await
            .expect("cluster"),
    );
    let masters: Vec<u16> = cluster
        .master_addrs()
        .iter()
        .map(|a| a.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    let entry = format!("127.0.0.1:{}", masters[0]);
    if let Disturbance::Rebalance = kind {
        let (c, e) = (cluster.clone(), entry.clone());
        let (from, to) = (myid(&c, masters[0]), myid(&c, masters[1]));
        blocking(move || {
            redis_cli(&[
                "--cluster".into(),
                "reshard".into(),
                e,
                "--cluster-from".into(),
                from,
                "--cluster-to".into(),
                to,
                "--cluster-slots".into(),
                "3000".into(),
                "--cluster-yes".into(),
            ]);
            drop(c);
        })
        .await;
    }
    let opts = RedisOptions::cluster(cluster.seed_urls());
    let budget = opts.dial_timeout + opts.write_timeout + opts.read_timeout;
    let t = Arc::new(RedisTransport::from_options(&opts).await.expect("connect"));
    // Preload every key, so that a GET returns the key's value or (never) something else.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let cmds: Vec<Cmd> = chunk
            .iter()
            .map(|&k| Cmd::new("SET").arg(format!("key:{k}")).arg(value_of(k)))
            .collect();
        // A connection replaced by the watchdog fails its calls once: retry.
        let mut tries = 0;
        while let Err(e) = t.pipeline(cmds.clone()).await {
            tries += 1;
            assert!(tries < 3, "preload: {e}");
        }
    }

    let c = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (t, c, stop) = (t.clone(), c.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (task as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = x % KEYS;
                let key = format!("key:{k}");
                let started = Instant::now();
                let r = match x >> 40 & 0xf {
                    0 => {
                        // Three keys in three slots (most likely), one command.
                        let ks = [k, (k + 7919) % KEYS, (k + 15_485) % KEYS];
                        let mut mget = Cmd::new("MGET");
                        for k in ks {
                            mget = mget.arg(format!("key:{k}"));
                        }
                        t.exec(mget).await.map(|v| match v {
                            Value::Array(vs)
                                if vs.iter().zip(ks).all(
                                    |(v, k)| matches!(v, Value::Bulk(b) if *b == value_of(k)),
                                ) =>
                            {
                                Value::Status("OK".into())
                            }
                            other => Value::Array(vec![other]),
                        })
                    }
                    1..=7 => t.exec(Cmd::new("GET").arg(key)).await,
                    _ => t.exec(Cmd::new("SET").arg(key).arg(value_of(k))).await,
                };
                if started.elapsed() > budget + Duration::from_millis(500) {
                    c.late.fetch_add(1, Ordering::Relaxed);
                }
                match r {
                    Ok(Value::Bulk(b)) if b != value_of(k) => {
                        c.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Value::Nil | Value::Array(_)) => {
                        c.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::Timeout => {
                        c.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if c.other_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("error: {e}");
                        }
                    }
                }
            }
        }));
    }

    // Sampler: ops/s per window.
    let origin = Instant::now();
    let samples = Arc::new(parking_lot::Mutex::new(
        Vec::<(f64, f64, u64, u64, u64)>::new(),
    ));
    let sampler = {
        let (c, stop, samples) = (c.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            let mut last = (0, 0, 0);
            let mut tick = tokio::time::interval(WINDOW);
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = (
                    c.ok.load(Ordering::Relaxed),
                    c.timeouts.load(Ordering::Relaxed),
                    c.other_errors.load(Ordering::Relaxed),
                );
                let rate = (now.0 - last.0) as f64 / WINDOW.as_secs_f64();
                samples.lock().push((
                    origin.elapsed().as_secs_f64(),
                    rate,
                    now.1 - last.1,
                    now.2 - last.2,
                    c.wrong.load(Ordering::Relaxed),
                ));
                last = now;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let move_start = origin.elapsed().as_secs_f64();
    let (cl, e) = (cluster.clone(), entry.clone());
    let m = masters.clone();
    blocking(move || match kind {
        Disturbance::Reshard => {
            let (from, to) = (myid(&cl, m[0]), myid(&cl, m[1]));
            redis_cli(&[
                "--cluster".into(),
                "reshard".into(),
                e,
                "--cluster-from".into(),
                from,
                "--cluster-to".into(),
                to,
                "--cluster-slots".into(),
                "1000".into(),
                "--cluster-yes".into(),
            ]);
        }
        Disturbance::Rebalance => {
            redis_cli(&["--cluster".into(), "rebalance".into(), e]);
        }
        Disturbance::Failover => {
            // The replica of the first master.
            let replica = cl
                .nodes()
                .into_iter()
                .map(|n| n.port)
                .find(|&p| {
                    !m.contains(&p)
                        && matches!(cl.cmd(p, &["INFO", "replication"]),
                            Ok(RespValue::Bulk(b)) if String::from_utf8_lossy(&b)
                                .contains(&format!("master_port:{}", m[0])))
                })
                .expect("replica of master 0");
            let r = cl.cmd(replica, &["CLUSTER", "FAILOVER"]).unwrap();
            assert!(matches!(r, RespValue::Simple(_)), "{r:?}");
            // Until the replica is master.
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                if let Ok(RespValue::Array(a)) = cl.cmd(replica, &["ROLE"])
                    && matches!(a.first(), Some(RespValue::Bulk(r)) if r == b"master")
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
    .await;
    let move_end = origin.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stop_at = origin.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    let _ = sampler.await;

    // What the cluster serves now: the transport that lived through the move against a
    // new one, interleaved (old, new, old) so that the machine's drift hits both alike.
    let fresh = Arc::new(RedisTransport::from_options(&opts).await.expect("connect"));
    let old_first = get_rate(&t).await;
    let fresh_rate = get_rate(&fresh).await;
    let old_second = get_rate(&t).await;
    let old_rate = (old_first + old_second) / 2.0;
    println!(
        "after the move: {old_rate:.0} GET/s on the transport that lived through it, \
         {fresh_rate:.0} on a new one"
    );
    let samples = samples.lock().clone();
    println!("{kind:?}, {tasks} tasks: move from {move_start:.1}s to {move_end:.1}s");
    println!("   t(s)     ops/s  timeouts  errors  wrong(total)");
    for (at, rate, to, err, wrong) in &samples {
        let mark = if *at > move_start && *at <= move_end + 0.5 {
            " <move"
        } else {
            ""
        };
        println!("{at:7.1} {rate:9.0} {to:9} {err:7} {wrong:7}{mark}");
    }
    // Medians: one window disturbed by the machine (two cores shared with six Redis servers)
    // says nothing about the cluster.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let baseline = median(
        samples
            .iter()
            .filter(|s| s.0 > 1.0 && s.0 <= move_start)
            .map(|s| s.1)
            .collect(),
    );
    // The windows from 2 s after the move ended until the load stopped.
    let recovered = median(
        samples
            .iter()
            .filter(|s| s.0 - WINDOW.as_secs_f64() >= move_end + 2.0 && s.0 <= stop_at)
            .map(|s| s.1)
            .collect(),
    );
    let wrong = c.wrong.load(Ordering::Relaxed);
    println!(
        "median baseline {baseline:.0} ops/s, from 2 s after the move {recovered:.0} ops/s ({:.0} %); \
         timeouts {}, other errors {}, wrong values {wrong}",
        100.0 * recovered / baseline,
        c.timeouts.load(Ordering::Relaxed),
        c.other_errors.load(Ordering::Relaxed),
    );
    assert_eq!(wrong, 0, "wrong values read");
    assert_eq!(
        c.late.load(Ordering::Relaxed),
        0,
        "calls past the call budget ({budget:?})"
    );
    let errors_after: u64 = samples
        .iter()
        .filter(|s| s.0 - WINDOW.as_secs_f64() >= move_end + 2.0)
        .map(|s| s.2 + s.3)
        .sum();
    assert_eq!(errors_after, 0, "errors from 2 s after the move on");
    // Recovered: the transport that lived through the move serves ≥ 80 % of what a new one
    // does. Against the rate before the move only a loose bound holds here: two cores shared
    // with six Redis servers swing the rate by a third from one run to the next (69–123 %
    // seen), while without the watchdog every case falls to ~0 %.
    assert!(
        old_rate >= 0.8 * fresh_rate,
        "{old_rate:.0} GET/s on the transport that lived through the move, {fresh_rate:.0} \
         on a new one"
    );
    assert!(
        recovered >= 0.5 * baseline,
        "throughput {recovered:.0} ops/s 2 s after the move, {baseline:.0} before"
    );
}

/// One test, the three disturbances in turn: run side by side they would share the two cores
/// and make each other's throughput meaningless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moving_under_load_are_a_non_event() {
    for kind in [
        Disturbance::Reshard,
        Disturbance::Rebalance,
        Disturbance::Failover,
    ] {
        run(kind).await;
    }
}
