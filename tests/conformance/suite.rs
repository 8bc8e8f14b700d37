//! The cases. Each takes a [`Backend`] and asserts one behaviour of `RedisCache` over the
//! backend's transport. Prefixes are unique per case, so cases may share one Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder::{
    Bytes, Cache, CacheExt, Cmd, Commands, Envelope, Error, KeyTtl, RedisCache, SetOptions,
    SharedTransport,
};

pub(crate) use crate::streams::{
    stream_failures_store_nothing, stream_leader_death_is_an_error,
    stream_over_the_limit_is_not_stored, stream_replay_per_format, stream_shared_between_instances,
};

/// What a backend provides to the suite.
#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync {
    /// A transport to the backend's Redis (shared by every cache of one case).
    fn transport(&self) -> SharedTransport;
    /// Lets `d` of time pass for the backend (a real sleep against a real server).
    async fn sleep(&self, d: Duration);
}

/// A prefix no other case (or process) uses.
pub(crate) fn unique_prefix(case: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "conf-{case}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn cache(b: &impl Backend, prefix: &str) -> RedisCache<SharedTransport> {
    RedisCache::builder(b.transport())
        .prefix(prefix)
        .build()
        .unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Generates one `#[tokio::test]` per case for a backend expression.
macro_rules! conformance_tests {
    ($backend:expr) => {
        conformance_tests!(@cases $backend;
            get_missing_is_none, set_then_get, empty_value_is_not_a_miss, overwrite_replaces,
            binary_values_round_trip, large_value_1mb, unicode_and_space_keys,
            ttl_expires_entries, default_ttl_applies, no_ttl_means_no_expiry, zero_ttl_is_rejected,
            set_nx_only_when_absent, set_nx_succeeds_after_expiry, delete_reports_existence,
            exists_tracks_values, ttl_reports_three_states, expire_changes_ttl,
            get_with_ttl_returns_remaining, mget_with_misses_and_empty_values, mget_of_nothing,
            mset_writes_all_with_ttl, mset_without_ttl_writes_all_and_clears_old_ttls, prefix_isolation, delete_pattern_stays_in_prefix,
            clear_only_touches_own_prefix, clear_many_keys_in_batches,
            glob_chars_in_prefix_are_literal, stats_count_locally, stats_are_shared_in_redis,
            ping_answers, close_then_calls_fail, corrupt_value_is_a_counted_miss,
            legacy_raw_value_reads_as_response, envelope_round_trip, pubsub_round_trip_or_refused,
            stream_replay_per_format, stream_failures_store_nothing,
            stream_over_the_limit_is_not_stored, stream_shared_between_instances,
            stream_leader_death_is_an_error, tool_results_are_shared_by_instances_within_their_scope,
            tool_results_are_invalidated_per_tool
        );
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend;
                $crate::suite::$case(&backend).await;
            }
        )*
    };
}

pub(crate) async fn get_missing_is_none(be: &impl Backend) {
    let c = cache(be, &unique_prefix("miss"));
    assert_eq!(c.get("nope").await.unwrap(), None);
}

pub(crate) async fn set_then_get(be: &impl Backend) {
    let c = cache(be, &unique_prefix("setget"));
    c.set("k", b("v"), None).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
}

pub(crate) async fn empty_value_is_not_a_miss(be: &impl Backend) {
    let c = cache(be, &unique_prefix("empty"));
    c.set("e", Bytes::new(), None).await.unwrap();
    assert_eq!(c.get("e").await.unwrap(), Some(Bytes::new()));
    assert!(c.exists("e").await.unwrap());
}

pub(crate) async fn overwrite_replaces(be: &impl Backend) {
    let c = cache(be, &unique_prefix("overwrite"));
    c.set("k", b("one"), None).await.unwrap();
    c.set("k", b("two"), None).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(b("two")));
}

pub(crate) async fn binary_values_round_trip(be: &impl Backend) {
    let c = cache(be, &unique_prefix("binary"));
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    c.set("bin", Bytes::from(all.clone()), None).await.unwrap();
    assert_eq!(c.get("bin").await.unwrap().as_deref(), Some(&all[..]));
}

pub(crate) async fn large_value_1mb(be: &impl Backend) {
    let c = cache(be, &unique_prefix("large"));
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    c.set("big", Bytes::from(big.clone()), None).await.unwrap();
    let got = c.get("big").await.unwrap().expect("1 MB value");
    assert_eq!(got.len(), big.len());
    assert!(got[..] == big[..], "1 MB value differs");
}

pub(crate) async fn unicode_and_space_keys(be: &impl Backend) {
    let c = cache(be, &unique_prefix("unicode"));
    let keys = [
        "with space",
        "ключ",
        "键 🔑",
        "tab\there",
        "quote\"s",
        "new\nline",
    ];
    for (i, k) in keys.iter().enumerate() {
        c.set(k, Bytes::from(i.to_string()), None).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            c.get(k).await.unwrap(),
            Some(Bytes::from(i.to_string())),
            "{k:?}"
        );
    }
    let got = c.mget(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    assert!(got.iter().all(Option::is_some));
}

pub(crate) async fn ttl_expires_entries(be: &impl Backend) {
    let c = cache(be, &unique_prefix("ttl"));
    c.set("short", b("v"), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    c.set("long", b("v"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(c.get("short").await.unwrap().is_some());
    be.sleep(Duration::from_millis(250)).await;
    assert_eq!(c.get("short").await.unwrap(), None, "expired after its TTL");
    assert!(
        c.get("long").await.unwrap().is_some(),
        "longer TTL survives"
    );
}

pub(crate) async fn default_ttl_applies(be: &impl Backend) {
    let c = RedisCache::builder(be.transport())
        .prefix(&unique_prefix("defttl"))
        .default_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    c.set("k", b("v"), None).await.unwrap();
    match c.ttl("k").await.unwrap() {
        KeyTtl::ExpiresIn(d) => assert!(
            d <= Duration::from_secs(10) && d > Duration::from_secs(8),
            "{d:?}"
        ),
        other => panic!("expected the default TTL, got {other:?}"),
    }
    c.set("k2", b("v"), Some(Duration::from_secs(100)))
        .await
        .unwrap();
    match c.ttl("k2").await.unwrap() {
        KeyTtl::ExpiresIn(d) => assert!(d > Duration::from_secs(90), "{d:?}"),
        other => panic!("expected the explicit TTL, got {other:?}"),
    }
}

pub(crate) async fn no_ttl_means_no_expiry(be: &impl Backend) {
    let c = cache(be, &unique_prefix("nottl"));
    c.set("k", b("v"), None).await.unwrap();
    assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::NoExpiry);
}

pub(crate) async fn zero_ttl_is_rejected(be: &impl Backend) {
    let c = cache(be, &unique_prefix("zerottl"));
    let err = c.set("k", b("v"), Some(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(c.get("k").await.unwrap(), None, "nothing written");
}

pub(crate) async fn set_nx_only_when_absent(be: &impl Backend) {
    let c = cache(be, &unique_prefix("nx"));
    assert!(c.set_nx("k", b("first"), None).await.unwrap());
    assert!(!c.set_nx("k", b("second"), None).await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), Some(b("first")));
}

pub(crate) async fn set_nx_succeeds_after_expiry(be: &impl Backend) {
    let c = cache(be, &unique_prefix("nxexp"));
    assert!(
        c.set_nx("k", b("a"), Some(Duration::from_millis(100)))
            .await
            .unwrap()
    );
    be.sleep(Duration::from_millis(250)).await;
    assert!(c.set_nx("k", b("b"), None).await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), Some(b("b")));
}

pub(crate) async fn delete_reports_existence(be: &impl Backend) {
    let c = cache(be, &unique_prefix("del"));
    c.set("k", b("v"), None).await.unwrap();
    assert!(c.delete("k").await.unwrap());
    assert!(!c.delete("k").await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), None);
}

pub(crate) async fn exists_tracks_values(be: &impl Backend) {
    let c = cache(be, &unique_prefix("exists"));
    assert!(!c.exists("k").await.unwrap());
    c.set("k", b("v"), None).await.unwrap();
    assert!(c.exists("k").await.unwrap());
}

pub(crate) async fn ttl_reports_three_states(be: &impl Backend) {
    let c = cache(be, &unique_prefix("ttlstates"));
    assert_eq!(c.ttl("missing").await.unwrap(), KeyTtl::Missing);
    c.set("forever", b("v"), None).await.unwrap();
    assert_eq!(c.ttl("forever").await.unwrap(), KeyTtl::NoExpiry);
    c.set("soon", b("v"), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(matches!(
        c.ttl("soon").await.unwrap(),
        KeyTtl::ExpiresIn(d) if d <= Duration::from_secs(30) && d > Duration::from_secs(25)
    ));
}

pub(crate) async fn expire_changes_ttl(be: &impl Backend) {
    let c = cache(be, &unique_prefix("expire"));
    assert!(!c.expire("missing", Duration::from_secs(5)).await.unwrap());
    c.set("k", b("v"), None).await.unwrap();
    assert!(c.expire("k", Duration::from_millis(100)).await.unwrap());
    assert!(matches!(c.ttl("k").await.unwrap(), KeyTtl::ExpiresIn(_)));
    be.sleep(Duration::from_millis(250)).await;
    assert_eq!(c.get("k").await.unwrap(), None);
}

pub(crate) async fn get_with_ttl_returns_remaining(be: &impl Backend) {
    let c = cache(be, &unique_prefix("getttl"));
    assert_eq!(c.get_with_ttl("none").await.unwrap(), None);
    c.set("k", b("v"), Some(Duration::from_secs(20)))
        .await
        .unwrap();
    let (v, ttl) = c.get_with_ttl("k").await.unwrap().expect("present");
    assert_eq!(v, b("v"));
    let ttl = ttl.expect("has a TTL");
    assert!(ttl <= Duration::from_secs(20) && ttl > Duration::from_secs(15));
    c.set("p", b("v"), None).await.unwrap();
    assert_eq!(c.get_with_ttl("p").await.unwrap(), Some((b("v"), None)));
}

pub(crate) async fn mget_with_misses_and_empty_values(be: &impl Backend) {
    let c = cache(be, &unique_prefix("mget"));
    c.set("a", b("1"), None).await.unwrap();
    c.set("empty", Bytes::new(), None).await.unwrap();
    c.set("c", b("3"), None).await.unwrap();
    let got = c.mget(&["a", "missing", "empty", "c", "a"]).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(b("1")),
            None,
            Some(Bytes::new()),
            Some(b("3")),
            Some(b("1"))
        ]
    );
}

pub(crate) async fn mget_of_nothing(be: &impl Backend) {
    let c = cache(be, &unique_prefix("mget0"));
    assert_eq!(c.mget(&[]).await.unwrap(), Vec::<Option<Bytes>>::new());
}

pub(crate) async fn mset_writes_all_with_ttl(be: &impl Backend) {
    let c = cache(be, &unique_prefix("mset"));
    let entries: Vec<(String, Bytes)> = (0..50)
        .map(|i| (format!("key {i}"), Bytes::from(format!("value {i}"))))
        .collect();
    let refs: Vec<(&str, Bytes)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    c.mset(&refs, Some(Duration::from_secs(30))).await.unwrap();
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let got = c.mget(&keys).await.unwrap();
    for ((_, want), got) in entries.iter().zip(got) {
        assert_eq!(got.as_ref(), Some(want));
    }
    assert!(matches!(
        c.ttl("key 7").await.unwrap(),
        KeyTtl::ExpiresIn(_)
    ));
}

pub(crate) async fn prefix_isolation(be: &impl Backend) {
    let a = cache(be, &unique_prefix("isoA"));
    let b_ = cache(be, &unique_prefix("isoB"));
    a.set("shared-name", b("from a"), None).await.unwrap();
    assert_eq!(b_.get("shared-name").await.unwrap(), None);
    b_.set("shared-name", b("from b"), None).await.unwrap();
    assert_eq!(a.get("shared-name").await.unwrap(), Some(b("from a")));
    assert_eq!(b_.clear().await.unwrap(), 1);
    assert_eq!(a.get("shared-name").await.unwrap(), Some(b("from a")));
}

pub(crate) async fn delete_pattern_stays_in_prefix(be: &impl Backend) {
    let prefix = unique_prefix("pattern");
    let c = cache(be, &prefix);
    let other = cache(be, &unique_prefix("pattern-other"));
    for k in ["user:1", "user:2", "user:3", "session:1"] {
        c.set(k, b("v"), None).await.unwrap();
        other.set(k, b("v"), None).await.unwrap();
    }
    assert_eq!(c.delete_pattern("user:*").await.unwrap(), 3);
    assert_eq!(c.get("user:1").await.unwrap(), None);
    assert_eq!(c.get("session:1").await.unwrap(), Some(b("v")));
    assert_eq!(other.get("user:1").await.unwrap(), Some(b("v")));
    assert_eq!(c.delete_pattern("nothing:*").await.unwrap(), 0);
    assert!(matches!(
        c.delete_pattern("").await,
        Err(Error::InvalidInput(_))
    ));
}

pub(crate) async fn clear_only_touches_own_prefix(be: &impl Backend) {
    let prefix = unique_prefix("clear");
    let c = cache(be, &prefix);
    let t = be.transport();
    // A key that is not a cache entry but shares the prefix text, and one outside it.
    let foreign = format!("{prefix}-foreign-key");
    let beside = format!("{prefix}:other:thing");
    t.set(foreign.as_bytes(), &b("keep"), SetOptions::default())
        .await
        .unwrap();
    t.set(beside.as_bytes(), &b("keep"), SetOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        c.set(&format!("k{i}"), b("v"), None).await.unwrap();
    }
    assert_eq!(c.clear().await.unwrap(), 10);
    assert_eq!(c.get("k3").await.unwrap(), None);
    assert_eq!(t.get(foreign.as_bytes()).await.unwrap(), Some(b("keep")));
    assert_eq!(t.get(beside.as_bytes()).await.unwrap(), Some(b("keep")));
    t.del(&[foreign.as_bytes(), beside.as_bytes()])
        .await
        .unwrap();
}

pub(crate) async fn mset_without_ttl_writes_all_and_clears_old_ttls(be: &impl Backend) {
    let c = cache(be, &unique_prefix("mset0"));
    c.set("key 7", b("old"), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let entries: Vec<(String, Bytes)> = (0..50)
        .map(|i| (format!("key {i}"), Bytes::from(format!("value {i}"))))
        .collect();
    let refs: Vec<(&str, Bytes)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    c.mset(&refs, None).await.unwrap();
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let got = c.mget(&keys).await.unwrap();
    for ((_, want), got) in entries.iter().zip(got) {
        assert_eq!(got.as_ref(), Some(want));
    }
    // As with `set`, a write without a TTL leaves the entry without one.
    assert_eq!(c.ttl("key 7").await.unwrap(), KeyTtl::NoExpiry);
    assert_eq!(c.stats().await.unwrap().writes, 51);
}

pub(crate) async fn clear_many_keys_in_batches(be: &impl Backend) {
    let c = RedisCache::builder(be.transport())
        .prefix(&unique_prefix("clearmany"))
        .scan_count(100)
        .build()
        .unwrap();
    let entries: Vec<(String, Bytes)> = (0..1234).map(|i| (format!("k{i}"), b("v"))).collect();
    for chunk in entries.chunks(200) {
        let refs: Vec<(&str, Bytes)> = chunk.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        c.mset(&refs, None).await.unwrap();
    }
    assert_eq!(c.clear().await.unwrap(), 1234);
    assert_eq!(c.get("k1000").await.unwrap(), None);
}

pub(crate) async fn glob_chars_in_prefix_are_literal(be: &impl Backend) {
    let base = unique_prefix("glob");
    let tricky = cache(be, &format!("{base}[1]*?"));
    let victim = cache(be, &format!("{base}1xx"));
    victim.set("k", b("v"), None).await.unwrap();
    tricky.set("k", b("v"), None).await.unwrap();
    assert_eq!(tricky.clear().await.unwrap(), 1);
    assert_eq!(victim.get("k").await.unwrap(), Some(b("v")));
    victim.clear().await.unwrap();
}

pub(crate) async fn stats_count_locally(be: &impl Backend) {
    let c = cache(be, &unique_prefix("stats"));
    c.set("a", b("1"), None).await.unwrap();
    c.get("a").await.unwrap();
    c.get("a").await.unwrap();
    c.get("b").await.unwrap();
    c.mget(&["a", "b", "c"]).await.unwrap();
    c.delete("a").await.unwrap();
    let s = c.stats().await.unwrap();
    assert_eq!((s.hits, s.misses, s.writes, s.deletes), (3, 3, 1, 1));
    assert!((s.hit_rate() - 0.5).abs() < 1e-9);
}

pub(crate) async fn stats_are_shared_in_redis(be: &impl Backend) {
    let prefix = unique_prefix("sharedstats");
    let one = cache(be, &prefix);
    let two = cache(be, &prefix);
    one.set("k", b("v"), None).await.unwrap();
    one.get("k").await.unwrap();
    two.get("k").await.unwrap();
    two.get("nope").await.unwrap();
    one.flush_stats().await.unwrap();
    two.flush_stats().await.unwrap();
    let shared = two.stats().await.unwrap().shared.expect("shared totals");
    assert_eq!((shared.hits, shared.misses, shared.writes), (2, 1, 1));
    // The counters are plain integers under {prefix}:stats:*, INCRBY-compatible.
    let t = be.transport();
    let raw = t
        .get(format!("{prefix}:stats:hits").as_bytes())
        .await
        .unwrap();
    assert_eq!(raw, Some(b("2")));
    t.del(&[
        format!("{prefix}:stats:hits").as_bytes(),
        format!("{prefix}:stats:misses").as_bytes(),
        format!("{prefix}:stats:writes").as_bytes(),
    ])
    .await
    .unwrap();
}

pub(crate) async fn ping_answers(be: &impl Backend) {
    let c = cache(be, &unique_prefix("ping"));
    c.ping().await.unwrap();
    let pong = be.transport().exec(Cmd::new("PING")).await.unwrap();
    assert_eq!(pong.as_bytes(), Some(&b"PONG"[..]));
}

pub(crate) async fn close_then_calls_fail(be: &impl Backend) {
    // A cache over its own connection: closing it must not disturb other cases.
    let c = cache(be, &unique_prefix("close"));
    c.set("k", b("v"), None).await.unwrap();
    c.close().await.unwrap();
    assert_eq!(c.get("k").await.unwrap_err(), Error::Closed);
    assert_eq!(c.set("k", b("v"), None).await.unwrap_err(), Error::Closed);
    c.close().await.unwrap();
}

pub(crate) async fn corrupt_value_is_a_counted_miss(be: &impl Backend) {
    let prefix = unique_prefix("corrupt");
    let c = cache(be, &prefix);
    let t = be.transport();
    let key = c.key_scheme().value_key("k");
    t.set(
        key.as_bytes(),
        &Bytes::from_static(b"\xff\xfe{\"v\":1,garbage"),
        SetOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(c.get_envelope("k").await.unwrap(), None);
    let s = c.stats().await.unwrap();
    assert_eq!((s.corrupt, s.hits, s.misses), (1, 0, 1));
    // The raw bytes are untouched: nothing is lost by reading them.
    assert!(t.get(key.as_bytes()).await.unwrap().is_some());
}

pub(crate) async fn legacy_raw_value_reads_as_response(be: &impl Backend) {
    let c = cache(be, &unique_prefix("legacy"));
    c.set("k", b("The capital of France is Paris."), None)
        .await
        .unwrap();
    let e = c.get_envelope("k").await.unwrap().expect("legacy value");
    assert_eq!(e.response, "The capital of France is Paris.");
}

pub(crate) async fn envelope_round_trip(be: &impl Backend) {
    let c = cache(be, &unique_prefix("envelope"));
    let e = Envelope::new("Paris.", "gpt-4o-mini", 1_764_090_000)
        .with_metadata("prompt_tokens", 12)
        .with_tags(["geo"]);
    c.set_envelope("k", &e, None).await.unwrap();
    assert_eq!(c.get_envelope("k").await.unwrap(), Some(e));
}

/// With pub/sub: a subscription hears what is published after `subscribe` returns (on a
/// Cluster, whichever node the publish reaches), a pattern subscription hears every matching
/// channel, and dropping it unsubscribes. Without: `subscribe` is refused (`ErrorKind::Refused`).
pub(crate) async fn pubsub_round_trip_or_refused(be: &impl Backend) {
    use larder::transport::next_message;
    let t = be.transport();
    let channel = format!("{}:events:test", unique_prefix("pubsub"));
    if !t.supports_pubsub() {
        let err = t.subscribe(channel.as_bytes()).await.unwrap_err();
        assert_eq!(err.kind(), larder::ErrorKind::Refused, "{err}");
        return;
    }
    let mut sub = t.subscribe(channel.as_bytes()).await.unwrap();
    let publish = |payload: &'static [u8]| {
        let t = t.clone();
        let channel = channel.clone();
        async move {
            let n = t
                .exec(Cmd::new("PUBLISH").arg(channel.as_str()).arg(payload))
                .await
                .unwrap();
            n.as_int().expect("PUBLISH answers a count")
        }
    };
    // On a Redis Cluster `PUBLISH` counts only the subscribers of the node that received
    // it, which need not be the one the subscription is on: 0 there is no proof of absence.
    let counted = publish(b"one\x00\xff").await >= 1;
    let m = tokio::time::timeout(Duration::from_secs(5), next_message(&mut sub))
        .await
        .expect("the message arrives")
        .expect("the subscription is open");
    assert_eq!(
        (&m.channel[..], &m.payload[..]),
        (channel.as_bytes(), &b"one\x00\xff"[..])
    );
    drop(sub);
    // A pattern hears every matching channel, and names the channel of each message.
    let mut psub = t
        .psubscribe(format!("{channel}:*").as_bytes())
        .await
        .unwrap();
    for (suffix, payload) in [(":a", "first"), ("-no", "skipped"), (":b", "second")] {
        t.exec(
            Cmd::new("PUBLISH")
                .arg(format!("{channel}{suffix}"))
                .arg(payload),
        )
        .await
        .unwrap();
    }
    // On a Cluster the two `PUBLISH`es may go through different nodes, whose messages
    // reach the subscriber's node in either order: compare them as a set.
    let mut heard = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), next_message(&mut psub))
            .await
            .expect("the pattern's message arrives")
            .expect("the subscription is open");
        heard.push((m.channel.to_vec(), m.payload.to_vec()));
    }
    heard.sort();
    let expected: Vec<(Vec<u8>, Vec<u8>)> = [(":a", "first"), (":b", "second")]
        .iter()
        .map(|(suffix, payload)| {
            (
                format!("{channel}{suffix}").into_bytes(),
                payload.as_bytes().to_vec(),
            )
        })
        .collect();
    assert_eq!(heard, expected, "both matching channels, not the other one");
    drop(psub);
    if !counted {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while publish(b"two").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "dropping the subscription unsubscribes"
        );
        be.sleep(Duration::from_millis(10)).await;
    }
}

/// Two tool caches (as two processes) on one backend: a result computed by one is a HIT for
/// the other, once for concurrent identical calls (the lease), within its tenant only.
pub(crate) async fn tool_results_are_shared_by_instances_within_their_scope(be: &impl Backend) {
    use larder::compute::{ComputeCache, RedisLock, Status};
    use larder::tools::{ToolCache, ToolCall, ToolPolicy, ToolScope};
    use serde_json::json;
    let prefix = unique_prefix("tools");
    let instance = || {
        let c = cache(be, &prefix);
        let engine = ComputeCache::builder(c.clone())
            .lock(RedisLock::for_cache(&c))
            .build()
            .unwrap();
        std::sync::Arc::new(
            ToolCache::builder(engine)
                .policy("search", ToolPolicy::cache_for(Duration::from_secs(60)))
                .policy(
                    "inbox",
                    ToolPolicy::cache_for(Duration::from_secs(60)).scope(ToolScope::Tenant),
                )
                .build()
                .unwrap(),
        )
    };
    let (a, b) = (instance(), instance());
    let runs = std::sync::Arc::new(AtomicU64::new(0));
    let call = ToolCall::new("search", json!({"q": "capital of France", "n": 3}));
    let tasks: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|t| {
            let (call, runs) = (call.clone(), runs.clone());
            tokio::spawn(async move {
                t.call(&call, move || async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(json!(["Paris", {"score": 0.9}]))
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().value, json!(["Paris", {"score": 0.9}]));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one run for four concurrent calls"
    );
    let hit = b
        .call(&call, || async { Ok::<_, std::io::Error>(json!("?")) })
        .await
        .unwrap();
    assert_eq!(hit.status, Status::Hit);
    // Tenant-scoped: the other tenant's identical call runs the tool.
    let acme = ToolCall::new("inbox", json!({})).tenant("acme");
    let globex = ToolCall::new("inbox", json!({})).tenant("globex");
    a.call(&acme, || async {
        Ok::<_, std::io::Error>(json!("acme mail"))
    })
    .await
    .unwrap();
    let other = b
        .call(&globex, || async {
            Ok::<_, std::io::Error>(json!("globex mail"))
        })
        .await
        .unwrap();
    assert_eq!(
        (other.status, other.value),
        (Status::Miss, json!("globex mail"))
    );
    let same = b
        .call(&acme, || async { Ok::<_, std::io::Error>(json!("?")) })
        .await
        .unwrap();
    assert_eq!((same.status, same.value), (Status::Hit, json!("acme mail")));
}

/// Invalidating a tool deletes its results (every scope and argument), and no other tool's.
pub(crate) async fn tool_results_are_invalidated_per_tool(be: &impl Backend) {
    use larder::compute::{ComputeCache, Status};
    use larder::tools::{ToolCache, ToolCall, ToolPolicy};
    use serde_json::json;
    let prefix = unique_prefix("tools-inval");
    let engine = ComputeCache::builder(cache(be, &prefix)).build().unwrap();
    let t = ToolCache::builder(engine)
        .default_policy(ToolPolicy::cache_for(Duration::from_secs(60)))
        .build()
        .unwrap();
    for (tool, n) in [
        ("search", 1),
        ("search", 2),
        ("search_web", 1),
        ("weather", 1),
    ] {
        t.call(&ToolCall::new(tool, json!({"n": n})), || async {
            Ok::<_, std::io::Error>(json!(n))
        })
        .await
        .unwrap();
    }
    assert_eq!(t.invalidate_tool("search").await.unwrap(), 2);
    for (tool, status) in [
        ("search", Status::Miss),
        ("search_web", Status::Hit),
        ("weather", Status::Hit),
    ] {
        let got = t
            .call(&ToolCall::new(tool, json!({"n": 1})), || async {
                Ok::<_, std::io::Error>(json!(0))
            })
            .await
            .unwrap();
        assert_eq!(got.status, status, "{tool}");
    }
}
