//! Redis Cluster (3 masters + 3 replicas): cross-slot pipelines and scans, and a master
//! killed under load.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use larder_core::{Cache, Cmd, ScanCursor, Transport, Value};
use larder_native::testing::{RedisCluster, RespValue};
use larder_native::{RedisOptions, RedisTransport, Topology};

use crate::common::{Load, blocking, first_success_after, summarize};

/// Scheduling slack over the configured budget (calls here do run into the budget).
const SLACK: Duration = Duration::from_millis(400);

fn dbsize(cluster: &RedisCluster, addr: &str) -> i64 {
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    match cluster.cmd(port, &["DBSIZE"]).unwrap() {
        RespValue::Integer(n) => n,
        other => panic!("DBSIZE answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pipelines_and_multi_key_commands_cross_slots() {
    let cluster = blocking(RedisCluster::start_default)
        .await
        .expect("start cluster");
    let t = RedisTransport::from_options(&RedisOptions::cluster(cluster.seed_urls()))
        .await
        .expect("connect");
    assert_eq!(t.topology(), Topology::Cluster);

    // A pipeline over 200 slots, with a read of each key right after its write.
    let mut cmds = Vec::new();
    for i in 0..200 {
        cmds.push(Cmd::new("SET").arg(format!("pk{i}")).arg(format!("v{i}")));
        cmds.push(Cmd::new("GET").arg(format!("pk{i}")));
    }
    let replies = t.pipeline(cmds).await.expect("cross-slot pipeline");
    assert_eq!(replies.len(), 400);
    for i in 0..200 {
        assert!(replies[2 * i].is_ok(), "{:?}", replies[2 * i]);
        assert_eq!(
            replies[2 * i + 1],
            Value::Bulk(Bytes::from(format!("v{i}")))
        );
    }
    // Multi-key commands split per slot, replies in key order.
    let keys: Vec<String> = (0..200)
        .map(|i| format!("pk{i}"))
        .chain(["missing".into()])
        .collect();
    let mget = t.exec(Cmd::new("MGET").args_from(&keys)).await.unwrap();
    let Value::Array(items) = mget else {
        panic!("{mget:?}")
    };
    assert_eq!(items.len(), 201);
    assert_eq!(items[37], Value::Bulk(Bytes::from_static(b"v37")));
    assert_eq!(items[200], Value::Nil);
    let mut mset = Cmd::new("MSET");
    for i in 0..50 {
        mset.push_arg(format!("ms{i}")).push_arg(format!("{i}"));
    }
    assert!(t.exec(mset).await.unwrap().is_ok());
    assert_eq!(
        t.exec(Cmd::new("EXISTS").args_from(&keys)).await.unwrap(),
        Value::Int(200)
    );
    assert_eq!(
        t.pipeline(vec![
            Cmd::new("UNLINK").args_from(&keys),
            Cmd::new("DEL").arg("ms1").arg("ms2").arg("ms3")
        ])
        .await
        .unwrap(),
        vec![Value::Int(200), Value::Int(3)]
    );
    // Server errors stay in band, with the exact text.
    t.exec(Cmd::new("LPUSH").arg("alist").arg("x"))
        .await
        .unwrap();
    assert_eq!(
        t.pipeline(vec![Cmd::new("GET").arg("alist"), Cmd::new("PING")])
            .await
            .unwrap(),
        vec![
            Value::Error(
                "WRONGTYPE Operation against a key holding the wrong kind of value".into()
            ),
            Value::Status("PONG".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scan_visits_every_master() {
    let cluster = blocking(RedisCluster::start_default)
        .await
        .expect("start cluster");
    let t = RedisTransport::from_options(&RedisOptions::cluster(cluster.seed_urls()))
        .await
        .expect("connect");
    let mut mset = Cmd::new("MSET");
    for i in 0..300 {
        mset.push_arg(format!("scan:{i}")).push_arg("v");
    }
    assert!(t.exec(mset).await.unwrap().is_ok());
    t.exec(Cmd::new("SET").arg("other:1").arg("v"))
        .await
        .unwrap();
    let masters = cluster.master_addrs();
    assert_eq!(masters.len(), 3);
    for m in &masters {
        assert!(dbsize(&cluster, m) > 50, "keys spread over every master");
    }
    let mut cursor = ScanCursor::START;
    let mut seen = BTreeSet::new();
    let mut nodes = BTreeSet::new();
    loop {
        let (next, keys) = t.scan_page(cursor, b"scan:*", 40).await.expect("scan page");
        nodes.insert(cursor.node);
        seen.extend(keys);
        if next.is_done() {
            break;
        }
        cursor = next;
    }
    assert_eq!(nodes.len(), 3, "one pass per master");
    assert_eq!(
        seen.len(),
        300,
        "every key, each once, none outside the pattern"
    );
    // Through the cache: clear() scans every master too.
    let cache = crate::common::cache_with(&RedisOptions::cluster(cluster.seed_urls()), "clr")
        .await
        .unwrap();
    let entries: Vec<(String, Bytes)> = (0..120)
        .map(|i| (format!("k{i}"), Bytes::from_static(b"v")))
        .collect();
    let refs: Vec<(&str, Bytes)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    cache.mset(&refs, None).await.unwrap();
    assert_eq!(cache.clear().await.unwrap(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_under_load() {
    let mut cluster = blocking(RedisCluster::start_default)
        .await
        .expect("start cluster");
    let opts = RedisOptions::cluster(cluster.seed_urls())
        .dial_timeout(Duration::from_millis(300))
        .write_timeout(Duration::from_millis(200))
        .read_timeout(Duration::from_millis(300))
        .pool_size(2);
    let cache = Arc::new(
        crate::common::cache_with(&opts, "larder")
            .await
            .expect("connect"),
    );
    let budget = cache.transport().call_timeout();
    let load = Load::start(cache.clone(), 12, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed_at = load.now();
    let (cluster_back, killed_port) = blocking(move || {
        let port = cluster.kill_master(0).expect("kill a master");
        (cluster, port)
    })
    .await;
    cluster = cluster_back;
    let (cluster_back, new_port) = blocking(move || {
        let new = cluster
            .wait_for_failover(killed_port, Duration::from_secs(30))
            .expect("a replica takes over");
        (cluster, new)
    })
    .await;
    cluster = cluster_back;
    let failed_over_at = load.now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;

    let s = summarize(&samples);
    eprintln!(
        "cluster master {killed_port} killed at {killed_at:?}, replica {new_port} serving at \
         {failed_over_at:?}: {} calls, {} errors {:?}, errors from {:?} to {:?}; budget \
         {budget:?}, max call {:?}",
        s.calls, s.errors, s.kinds, s.first_error, s.last_error, s.max_took
    );
    assert!(
        s.max_took <= budget + SLACK,
        "a call stalled {:?} (budget {budget:?})",
        s.max_took
    );
    assert!(
        s.errors > 0,
        "calls to the dead master's slots must have failed for a while"
    );
    // Service resumes: shortly after the failover every call succeeds.
    let resumed =
        first_success_after(&samples, failed_over_at).expect("calls succeed after failover");
    let settle = failed_over_at.max(resumed.at) + Duration::from_millis(1000);
    let late: Vec<_> = samples.iter().filter(|x| x.at >= settle).collect();
    assert!(!late.is_empty());
    let late_errors: Vec<_> = late.iter().filter(|x| !x.ok()).collect();
    assert!(
        late_errors.is_empty(),
        "{} errors more than 1 s after the failover, e.g. {:?}",
        late_errors.len(),
        late_errors.first()
    );
    let last_error_after_failover = s.last_error.map(|e| e.saturating_sub(failed_over_at));
    eprintln!("last error {last_error_after_failover:?} after the cluster reported the failover");
    // Writes across every slot work and scans see the new master.
    let entries: Vec<(String, Bytes)> = (0..100)
        .map(|i| (format!("after{i}"), Bytes::from_static(b"v")))
        .collect();
    let refs: Vec<(&str, Bytes)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    cache.mset(&refs, None).await.expect("mset after failover");
    assert_eq!(cache.delete_pattern("after*").await.unwrap(), 100);
    drop(cluster);
}
