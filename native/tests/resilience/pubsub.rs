//! `RedisTransport`'s own pub/sub against real servers: round trips on every topology, a
//! Redis restart, reference counting down to `UNSUBSCRIBE`, and lease waiters woken by it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_core::compute::Status;
use larder_core::transport::{BoxSubscription, Subscription, next_message};
use larder_core::{Cmd, RedisCache, Transport, TransportError, Value};
use larder_native::testing::{RedisCluster, RedisServer, RespValue, SentinelSetup};
use larder_native::{RedisOptions, RedisTransport};

use crate::{PREFIX, options, redis_stack, transport};

/// Generous bound for one message to arrive.
const ARRIVE: Duration = Duration::from_secs(5);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

async fn recv(sub: &mut BoxSubscription, within: Duration) -> Option<(Bytes, Bytes)> {
    tokio::time::timeout(within, next_message(sub))
        .await
        .ok()
        .flatten()
        .map(|m| (m.channel, m.payload))
}

async fn publish(t: &impl Transport, channel: &str, payload: &str) -> i64 {
    let v = t
        .exec(Cmd::new("PUBLISH").arg(channel).arg(payload))
        .await
        .expect("PUBLISH");
    v.as_int().expect("PUBLISH answers a count")
}

fn numsub(reply: RespValue) -> i64 {
    match reply {
        RespValue::Array(items) if items.len() == 2 => items[1].as_int().expect("a count"),
        other => panic!("PUBSUB NUMSUB: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_subscribe_publish_round_trip_shares_one_connection() {
    let server = blocking(RedisServer::start).await.expect("redis-server");
    let t = transport(&server.url()).await;
    assert!(t.supports_pubsub());
    assert_eq!(
        t.pubsub_status().connected_to,
        None,
        "lazy: no connection yet"
    );
    let mut a = t.subscribe(b"ch:one").await.expect("subscribe");
    let mut b = t
        .clone()
        .subscribe(b"ch:one")
        .await
        .expect("subscribe again");
    let mut other = t.subscribe(b"ch:two").await.expect("subscribe another");
    let status = t.pubsub_status();
    assert_eq!(status.channels, 2);
    assert_eq!(status.connected_to, Some(server.addr()));
    // Two channels, three subscriptions, one connection subscribed once per channel.
    assert_eq!(
        numsub(server.cmd(&["PUBSUB", "NUMSUB", "ch:one"]).unwrap()),
        1
    );
    assert_eq!(publish(&t, "ch:one", "hello").await, 1);
    assert_eq!(
        recv(&mut a, ARRIVE).await,
        Some((Bytes::from("ch:one"), Bytes::from("hello")))
    );
    assert_eq!(
        recv(&mut b, ARRIVE).await,
        Some((Bytes::from("ch:one"), Bytes::from("hello")))
    );
    publish(&t, "ch:two", "\u{0}bin\u{ff}").await;
    let (_, payload) = recv(&mut other, ARRIVE).await.expect("a message");
    assert_eq!(&payload[..], "\u{0}bin\u{ff}".as_bytes(), "binary-safe");
    assert!(
        recv(&mut a, Duration::from_millis(100)).await.is_none(),
        "a does not hear ch:two"
    );
    assert_eq!(a.gaps(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_subscription_sends_unsubscribe() {
    let server = blocking(RedisServer::start).await.expect("redis-server");
    let t = transport(&server.url()).await;
    let n = || numsub(server.cmd(&["PUBSUB", "NUMSUB", "refcount"]).unwrap());
    let a = t.subscribe(b"refcount").await.unwrap();
    let b = t.subscribe(b"refcount").await.unwrap();
    assert_eq!(n(), 1);
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(n(), 1, "b still listens");
    drop(b);
    let started = Instant::now();
    while n() != 0 {
        assert!(
            started.elapsed() < ARRIVE,
            "UNSUBSCRIBE never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("UNSUBSCRIBE seen after {:?}", started.elapsed());
    assert_eq!(t.pubsub_status().channels, 0);
    // Subscribing again works on the same connection.
    let mut c = t.subscribe(b"refcount").await.unwrap();
    assert_eq!(n(), 1);
    publish(&t, "refcount", "again").await;
    assert!(recv(&mut c, ARRIVE).await.is_some());
    assert_eq!(t.pubsub_status().reconnects, 0);
    // Closing the transport ends the subscription.
    t.close().await.unwrap();
    assert_eq!(recv(&mut c, ARRIVE).await, None);
    assert_eq!(
        t.subscribe(b"x").await.unwrap_err().kind(),
        larder_core::ErrorKind::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_redis_restart() {
    let mut server = blocking(RedisServer::start).await.expect("redis-server");
    let t = transport(&server.url()).await;
    let mut sub = t.subscribe(b"restart").await.unwrap();
    let mut second = t.subscribe(b"restart:second").await.unwrap();
    publish(&t, "restart", "before").await;
    assert!(recv(&mut sub, ARRIVE).await.is_some());

    server = blocking(move || {
        server.kill();
        server
    })
    .await;
    // While Redis is down, subscribing fails within the call budget.
    let started = Instant::now();
    let err = t.subscribe(b"while-down").await.unwrap_err();
    let failed_in = started.elapsed();
    eprintln!("subscribe while down failed in {failed_in:?}: {err}");
    assert!(
        failed_in <= t.call_timeout() + Duration::from_millis(100),
        "{failed_in:?}"
    );
    assert!(err.is_retryable(), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    server = blocking(move || {
        server.restart().expect("restart redis-server");
        server
    })
    .await;
    let restarted = Instant::now();
    // Publish until the subscription hears it: the driver reconnects and re-subscribes.
    let raw = transport(&server.url()).await;
    let mut n = 0;
    let heard = loop {
        n += 1;
        publish(&raw, "restart", &format!("after-{n}")).await;
        if let Some((_, payload)) = recv(&mut sub, Duration::from_millis(20)).await {
            break payload;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "the subscription never came back"
        );
    };
    let recovery = restarted.elapsed();
    eprintln!(
        "pub/sub recovered {recovery:?} after the restart (first message {heard:?}); status {:?}",
        t.pubsub_status()
    );
    assert!(heard.starts_with(b"after-"));
    assert!(sub.gaps() >= 1, "the subscription reports the gap");
    assert!(t.pubsub_status().reconnects >= 1);
    assert!(recovery < Duration::from_secs(3), "{recovery:?}");
    // Later messages arrive in order.
    publish(&raw, "restart", "last").await;
    let mut last = None;
    while let Some((_, p)) = recv(&mut sub, Duration::from_millis(500)).await {
        last = Some(p);
    }
    assert_eq!(last.as_deref(), Some(&b"last"[..]));
    // Every live channel was subscribed again, not only the first.
    publish(&raw, "restart:second", "also").await;
    assert_eq!(
        recv(&mut second, ARRIVE).await.map(|(_, p)| p),
        Some(Bytes::from("also"))
    );
    assert!(second.gaps() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_without_the_channel_refuses_subscribe_with_an_auth_error() {
    let server = blocking(RedisServer::start).await.expect("redis-server");
    server
        .cmd(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">secret",
            "~*",
            "&allowed:*",
            "+@all",
        ])
        .unwrap()
        .into_result()
        .unwrap();
    let url = format!("redis://app:secret@{}", server.addr());
    let t = transport(&url).await;
    let mut ok = t
        .subscribe(b"allowed:ch")
        .await
        .expect("an allowed channel");
    let started = Instant::now();
    let err = t.subscribe(b"denied").await.unwrap_err();
    eprintln!("refused in {:?}: {err}", started.elapsed());
    assert_eq!(err.kind(), larder_core::ErrorKind::Auth, "{err}");
    assert!(
        err.message().contains("&denied"),
        "says what to grant: {err}"
    );
    assert!(started.elapsed() < t.call_timeout());
    // The refusal did not disturb the allowed channel.
    publish(&t, "allowed:ch", "still").await;
    assert_eq!(
        recv(&mut ok, ARRIVE).await.map(|(_, p)| p),
        Some(Bytes::from("still"))
    );
    assert_eq!(t.pubsub_status().reconnects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_publish_on_another_node_reaches_the_subscriber_and_survives_its_death() {
    let mut cluster = blocking(RedisCluster::start_default)
        .await
        .expect("redis cluster");
    let opts = RedisOptions::cluster(cluster.seed_urls())
        .dial_timeout(Duration::from_millis(250))
        .read_timeout(Duration::from_millis(250))
        .write_timeout(Duration::from_millis(250));
    let t = RedisTransport::from_options(&opts).await.expect("cluster");
    let mut sub = t.subscribe(b"cluster:ch").await.unwrap();
    let node = t.pubsub_status().connected_to.expect("connected");
    let node_port: u16 = node.rsplit(':').next().unwrap().parse().unwrap();
    let others: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|p| *p != node_port)
        .collect();
    // PUBLISH on every other node (masters and replicas): each reaches the subscriber.
    for (i, port) in others.iter().enumerate() {
        cluster
            .cmd(*port, &["PUBLISH", "cluster:ch", &format!("from-{port}")])
            .unwrap();
        let got = recv(&mut sub, ARRIVE).await;
        assert_eq!(
            got.map(|(_, p)| p),
            Some(Bytes::from(format!("from-{port}"))),
            "publish #{i} on node {port} (subscriber on {node})"
        );
    }

    // Kill the node the subscription is on: it moves to another node.
    let killed = Instant::now();
    cluster = blocking(move || {
        cluster.kill_node(node_port).expect("kill");
        cluster
    })
    .await;
    let survivor = others[0];
    let mut n = 0;
    loop {
        n += 1;
        let _ = cluster.cmd(survivor, &["PUBLISH", "cluster:ch", &format!("after-{n}")]);
        if recv(&mut sub, Duration::from_millis(50)).await.is_some() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the subscription never moved; status {:?}",
            t.pubsub_status()
        );
    }
    let moved = t.pubsub_status();
    eprintln!(
        "cluster pub/sub moved from {node} in {:?}: {moved:?}",
        killed.elapsed()
    );
    assert_ne!(moved.connected_to, Some(node));
    assert!(sub.gaps() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_subscription_follows_the_master_across_a_failover() {
    let setup = blocking(SentinelSetup::start)
        .await
        .expect("sentinel setup");
    let t = sentinel_transport(&setup).await;
    let mut sub = t.subscribe(b"sentinel:ch").await.unwrap();
    let master = setup.master_addr().unwrap();
    assert_eq!(t.pubsub_status().connected_to, Some(master.clone()));
    assert_eq!(publish(&t, "sentinel:ch", "one").await, 1);
    assert_eq!(
        recv(&mut sub, ARRIVE).await.map(|(_, p)| p),
        Some(Bytes::from("one"))
    );

    let (setup, new_master) = blocking(move || {
        setup.failover().expect("SENTINEL FAILOVER");
        let new = setup
            .wait_for_new_master(&master, Duration::from_secs(30))
            .expect("a new master");
        (setup, new)
    })
    .await;
    let started = Instant::now();
    let port: u16 = new_master.rsplit(':').next().unwrap().parse().unwrap();
    loop {
        let _ = setup.cmd(port, &["PUBLISH", "sentinel:ch", "after"]);
        if t.pubsub_status().connected_to.as_deref() == Some(new_master.as_str())
            && recv(&mut sub, Duration::from_millis(50)).await.is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "pub/sub did not follow the failover: {:?}",
            t.pubsub_status()
        );
    }
    eprintln!(
        "sentinel pub/sub on the new master {new_master} {:?} after it was agreed",
        started.elapsed()
    );
    assert!(t.failovers_followed() >= 1);
}

/// A transport without pub/sub (waiters can only poll), for comparison.
#[derive(Debug, Clone)]
struct PollingOnly(RedisTransport);

#[async_trait::async_trait]
impl Transport for PollingOnly {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.0.exec(cmd).await
    }
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.0.pipeline(cmds).await
    }
}

/// One holder computes for 200 ms in one cache; a waiter in another cache (its own
/// transport, as in another process) waits on the lease with a 1 s polling interval. Returns
/// how long after the holder's compute finished the waiter had the value, and its polls.
async fn waiter_latency<T: Transport + Clone + 'static>(
    url: &str,
    waiter_transport: T,
    key: &str,
) -> (Duration, u64) {
    use larder_core::compute::{ComputeCache, RedisLock};
    let holder = redis_stack(url).await.build().unwrap();
    let cache = RedisCache::builder(waiter_transport)
        .prefix(PREFIX)
        .build()
        .unwrap();
    let clock = crate::clock();
    let waiter = ComputeCache::builder(cache.clone())
        .clock(clock.clone())
        .lock(RedisLock::for_cache(&cache).clock(clock))
        .runtime(larder_native::TokioRuntime::shared())
        .poll_backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let key_owned = key.to_owned();
    let holding = tokio::spawn(async move {
        holder
            .get_with(&key_owned, None, async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = done_tx.send(Instant::now());
                Bytes::from_static(b"the value")
            })
            .await
            .expect("holder")
    });
    // Wait until the holder holds the lease, then wait on it.
    let raw = transport(url).await;
    let lock_key = format!("{PREFIX}:lock:{key}");
    while raw
        .exec(Cmd::new("EXISTS").arg(lock_key.as_str()))
        .await
        .unwrap()
        .as_int()
        != Some(1)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = waiter
        .try_fetch::<Bytes, _, std::convert::Infallible>(key, None, async {
            Ok(Bytes::from_static(b"the waiter computed"))
        })
        .await
        .expect("a value");
    let woke = Instant::now();
    holding.await.unwrap();
    let done = done_rx.await.expect("the holder computed");
    assert_eq!(
        &got.value[..],
        b"the value",
        "the waiter got the holder's value"
    );
    assert_ne!(got.status, Status::Miss);
    let stats = waiter.compute_stats();
    assert_eq!(stats.lock_waits, 1, "the waiter waited on the lease");
    (woke.saturating_duration_since(done), stats.polls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_waiters_on_redis_transport_are_woken_by_pubsub_not_polling() {
    let server = blocking(RedisServer::start).await.expect("redis-server");
    let url = server.url();
    let t = RedisTransport::from_options(&options(&url)).await.unwrap();
    let (pubsub, pubsub_polls) = waiter_latency(&url, t, "woken").await;
    let polling_t = PollingOnly(transport(&url).await);
    let (polling, polling_polls) = waiter_latency(&url, polling_t, "polled").await;
    eprintln!(
        "wake-up after the holder finished: pub/sub {pubsub:?} ({pubsub_polls} polls), \
         polling every 1 s ±50 % {polling:?} ({polling_polls} polls)"
    );
    // Polling alone sleeps 0.5–1.5 s before it looks; pub/sub wakes the waiter at release.
    assert!(
        pubsub < Duration::from_millis(250),
        "pub/sub wake-up took {pubsub:?}"
    );
    assert_eq!(pubsub_polls, 1, "one look, right after the wake-up");
    assert!(
        polling >= Duration::from_millis(150),
        "polling cannot be that fast: {polling:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_subscription_survives_the_master_killed_with_sigkill() {
    let setup = blocking(SentinelSetup::start)
        .await
        .expect("sentinel setup");
    let t = sentinel_transport(&setup).await;
    let mut sub = t.subscribe(b"sentinel:kill").await.unwrap();
    let old = setup.master_addr().unwrap();
    let (setup, killed, new_master) = blocking(move || {
        let mut setup = setup;
        setup.kill_master().expect("SIGKILL the master");
        let killed = Instant::now();
        let new = setup
            .wait_for_new_master(&old, Duration::from_secs(30))
            .expect("a new master");
        (setup, killed, new)
    })
    .await;
    let promoted = killed.elapsed();
    let port: u16 = new_master.rsplit(':').next().unwrap().parse().unwrap();
    // The old master is dead: only a subscription on the new one can hear this.
    loop {
        let _ = setup.cmd(port, &["PUBLISH", "sentinel:kill", "after"]);
        if recv(&mut sub, Duration::from_millis(50)).await.is_some() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "pub/sub never reached the new master: {:?}",
            t.pubsub_status()
        );
    }
    let heard = killed.elapsed();
    eprintln!(
        "master killed: sentinels agreed on {new_master} after {promoted:?}, the subscription \
         heard it {:?} later; {:?}",
        heard.saturating_sub(promoted),
        t.pubsub_status()
    );
    assert_eq!(t.pubsub_status().connected_to, Some(new_master));
    assert!(sub.gaps() >= 1);
}

/// A transport through `setup`'s sentinels with 250 ms limits.
async fn sentinel_transport(setup: &SentinelSetup) -> RedisTransport {
    let opts = RedisOptions::sentinel(setup.master_name(), setup.sentinel_addrs())
        .dial_timeout(Duration::from_millis(250))
        .read_timeout(Duration::from_millis(250))
        .write_timeout(Duration::from_millis(250));
    RedisTransport::from_options(&opts).await.expect("sentinel")
}
