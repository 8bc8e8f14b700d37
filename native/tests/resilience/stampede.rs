//! One compute per key across processes, and a lease whose holder is killed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::compute::Status;
use larder_core::{Cmd, Transport};
use larder_native::testing::{RedisServer, RespValue};
use serde_json::json;

use crate::{PREFIX, child_result, env, now_ms, redis_stack, report, spawn_child, transport};

const PROCESSES: usize = 4;
const TASKS: usize = 250;
const KEY: &str = "the-one-key";

fn computes_key() -> String {
    format!("{PREFIX}:test:computes")
}

fn get_int(server: &RedisServer, key: &str) -> i64 {
    match server.cmd(&["GET", key]).expect("GET") {
        RespValue::Bulk(b) => String::from_utf8_lossy(&b).parse().expect("an integer"),
        RespValue::Nil => 0,
        other => panic!("GET {key}: {other:?}"),
    }
}

/// Child: `TASKS` tasks ask for `KEY` at the same instant; the compute counts itself in
/// Redis (INCR), takes a while, and returns a value naming this process.
pub(crate) async fn child_stampede() {
    let url = env("REDIS_URL");
    let start_at: u64 = env("START_AT").parse().expect("START_AT");
    let cache = redis_stack(&url).await.build().unwrap();
    let counter = transport(&url).await;
    let wait = start_at.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let cache = cache.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .try_fetch::<Bytes, _, std::convert::Infallible>(
                    KEY,
                    Some(Duration::from_secs(60)),
                    async move {
                        counter
                            .exec(Cmd::new("INCR").arg(computes_key()))
                            .await
                            .expect("INCR");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok(Bytes::from(format!("value-from-{}", std::process::id())))
                    },
                )
                .await
        }));
    }
    let mut values = BTreeMap::<String, u64>::new();
    let mut statuses = BTreeMap::<String, u64>::new();
    let mut errors = 0u64;
    for t in tasks {
        match t.await.expect("no panic") {
            Ok(f) => {
                *values
                    .entry(String::from_utf8_lossy(&f.value).into_owned())
                    .or_default() += 1;
                *statuses.entry(f.status.to_string()).or_default() += 1;
            }
            Err(_) => errors += 1,
        }
    }
    let s = cache.compute_stats();
    report(json!({
        "values": values,
        "statuses": statuses,
        "errors": errors,
        "lock_waits": s.lock_waits,
        "polls": s.polls,
    }));
}

#[test]
fn four_processes_times_250_tasks_compute_once() {
    let server = RedisServer::start().expect("redis-server");
    let start_at = now_ms() + 2_000;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            spawn_child(
                "stampede",
                &[
                    ("REDIS_URL", server.url()),
                    ("START_AT", start_at.to_string()),
                ],
            )
        })
        .collect();
    let results: Vec<_> = children.into_iter().map(child_result).collect();
    eprintln!("children: {results:#?}");
    assert_eq!(
        get_int(&server, &computes_key()),
        1,
        "the compute ran exactly once"
    );
    let mut all_values = BTreeMap::<String, u64>::new();
    for r in &results {
        assert_eq!(r["errors"], 0);
        for (v, n) in r["values"].as_object().expect("values") {
            *all_values.entry(v.clone()).or_default() += n.as_u64().expect("count");
        }
    }
    assert_eq!(
        all_values.len(),
        1,
        "every caller saw the same whole value: {all_values:?}"
    );
    assert_eq!(all_values.values().sum::<u64>(), (PROCESSES * TASKS) as u64);
}

/// Child: takes the lease for `KEY`, marks that it started, and computes forever (until it
/// is killed).
pub(crate) async fn child_holder() {
    let url = env("REDIS_URL");
    let cache = redis_stack(&url)
        .await
        .lease_ttl(Duration::from_millis(2_000))
        .hard_timeout(None)
        .build()
        .unwrap();
    let marker = transport(&url).await;
    let _ = cache
        .get_with(KEY, None, async move {
            marker
                .exec(Cmd::new("INCR").arg(computes_key()))
                .await
                .expect("INCR");
            marker
                .exec(
                    Cmd::new("SET")
                        .arg(format!("{PREFIX}:test:holder"))
                        .arg(std::process::id().to_string()),
                )
                .await
                .expect("SET");
            std::future::pending::<()>().await;
            Bytes::new()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_with_sigkill_mid_compute_lease_expires_and_another_computes() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server");
    let url = server.url();
    let mut holder = spawn_child("holder", &[("REDIS_URL", url.clone())]);
    let lock_key = format!("{PREFIX}:lock:{KEY}");
    let started = Instant::now();
    loop {
        let marker = server
            .cmd(&["GET", &format!("{PREFIX}:test:holder")])
            .unwrap();
        if matches!(marker, RespValue::Bulk(_)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the holder never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the holder extend its lease at least once, then kill it: it releases nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(matches!(
        server.cmd(&["GET", &lock_key]).unwrap(),
        RespValue::Bulk(_)
    ));
    holder.kill().expect("SIGKILL the holder");
    holder.wait().expect("reap the holder");
    let killed = Instant::now();

    let cache = redis_stack(&url)
        .await
        .lease_ttl(Duration::from_millis(2_000))
        .poll_backoff(Duration::from_millis(20), Duration::from_millis(250))
        .build()
        .unwrap();
    let got = cache
        .try_fetch::<Bytes, _, std::convert::Infallible>(KEY, None, async {
            Ok(Bytes::from_static(b"computed-after-the-holder-died"))
        })
        .await
        .expect("a value");
    let waited = killed.elapsed();
    eprintln!("waited {waited:?} for the dead holder's lease");
    assert_eq!(got.status, Status::Miss);
    assert_eq!(&got.value[..], b"computed-after-the-holder-died");
    assert!(
        waited <= Duration::from_millis(2_000 + 750),
        "the lease expired within its TTL (plus one poll interval): {waited:?}"
    );
    assert_eq!(
        get_int(&server, &computes_key()),
        1,
        "the dead holder computed once"
    );
    assert_eq!(server.cmd(&["GET", &lock_key]).unwrap(), RespValue::Nil);
    assert!(
        cache.compute_stats().lock_waits >= 1,
        "it found the dead holder's lease"
    );
}
