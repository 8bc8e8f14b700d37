//! Tests of the tiered cache and its backplane (two "instances" share one MemTransport).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;

use super::*;
use crate::clock::SharedClock;
use crate::compute::tests::support::NoPubSub;
use crate::error::TransportError;
use crate::testing::MemTransport;
use crate::transport::{BoxSubscription, Commands, Message, Subscription, Transport};
use crate::value::{Cmd, Value};
use crate::{KeyScheme, RedisCache};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn instance<T: Transport + Clone + 'static>(
    t: &T,
    clock: &SharedClock,
    backplane: bool,
) -> TieredCache<RedisCache<T>> {
    let l2 = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
    let l1 = MemoryCache::builder()
        .clock(clock.clone())
        .max_entries(1000)
        .build()
        .unwrap();
    let mut builder = TieredCache::builder(l1, l2).l1_max_ttl(Duration::from_secs(60));
    if backplane {
        builder = builder.backplane(
            Backplane::new(t.clone(), &KeyScheme::new("p").unwrap()).clock(clock.clone()),
        );
    }
    builder.build().unwrap()
}

#[test]
fn l2_hit_fills_l1_for_no_longer_than_l2_keeps_it() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let c = instance(&t, &clock, false);
        t.set(
            b"p:cache:k",
            &b("v"),
            crate::SetOptions::ttl(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
        assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
        assert_eq!(
            c.l1().key_ttl("k"),
            KeyTtl::ExpiresIn(Duration::from_secs(10))
        );
        t.reset_counters();
        assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
        assert_eq!(t.calls(), 0, "served by L1");
        t.clock().advance(Duration::from_secs(10));
        assert_eq!(
            c.get("k").await.unwrap(),
            None,
            "expired from both tiers together"
        );
        let s = c.tiered_stats();
        assert_eq!((s.l1_hits, s.l2_hits, s.misses), (1, 1, 1));
    });
}

#[test]
fn writes_reach_both_tiers_and_l1_ttl_is_capped() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let c = instance(&t, &clock, false);
        c.set("k", b("v"), Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        assert_eq!(t.pttl(b"p:cache:k").await.unwrap(), 3_600_000);
        assert_eq!(
            c.l1().key_ttl("k"),
            KeyTtl::ExpiresIn(Duration::from_secs(60))
        );
        c.set("short", b("v"), Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            c.l1().key_ttl("short"),
            KeyTtl::ExpiresIn(Duration::from_secs(5))
        );
        assert_eq!(
            c.ttl("k").await.unwrap(),
            KeyTtl::ExpiresIn(Duration::from_secs(3600))
        );
        c.mset(
            &[("a", b("1")), ("b2", b("2"))],
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert_eq!(
            c.mget(&["a", "b2", "zz"]).await.unwrap(),
            vec![Some(b("1")), Some(b("2")), None]
        );
        assert!(c.delete("a").await.unwrap());
        assert_eq!(t.get(b"p:cache:a").await.unwrap(), None);
        assert!(!c.l1().contains("a"));
    });
}

#[test]
fn backplane_evicts_other_instances_l1_on_overwrite_delete_and_clear() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let a = instance(&t, &clock, true);
        let bb = instance(&t, &clock, true);
        // Both subscribe on their first operation.
        bb.set("k", b("v1"), None).await.unwrap();
        assert_eq!(a.get("k").await.unwrap(), Some(b("v1")));
        assert!(a.l1().contains("k"));

        bb.set("k", b("v2"), None).await.unwrap();
        assert_eq!(
            a.get("k").await.unwrap(),
            Some(b("v2")),
            "overwrite evicted A's L1"
        );

        bb.delete("k").await.unwrap();
        assert_eq!(a.get("k").await.unwrap(), None, "delete evicted A's L1");

        bb.set("user:1", b("x"), None).await.unwrap();
        bb.set("other", b("y"), None).await.unwrap();
        a.get("user:1").await.unwrap();
        a.get("other").await.unwrap();
        bb.delete_pattern("user:*").await.unwrap();
        assert_eq!(a.get("user:1").await.unwrap(), None);
        assert!(a.l1().contains("other"), "only the pattern's keys");

        bb.clear().await.unwrap();
        assert_eq!(a.get("other").await.unwrap(), None);

        let sa = a.tiered_stats().backplane.unwrap();
        assert!(sa.subscribed);
        assert!(sa.received >= 5 && sa.evicted >= 4, "{sa:?}");
        assert!(bb.tiered_stats().backplane.unwrap().published >= 6);
    });
}

#[test]
fn an_instance_ignores_its_own_messages() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let a = instance(&t, &clock, true);
        a.set("k", b("v"), None).await.unwrap();
        t.reset_counters();
        assert_eq!(a.get("k").await.unwrap(), Some(b("v")));
        assert_eq!(t.calls(), 0, "own write still in L1");
        assert_eq!(a.tiered_stats().backplane.unwrap().received, 0);
    });
}

#[test]
fn memory_mode_while_l2_is_down_returns_no_errors() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let c = instance(&t, &clock, true);
        c.set("k", b("v"), None).await.unwrap();
        t.set_down(true);
        assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
        assert_eq!(c.get("missing").await.unwrap(), None);
        c.set("new", b("n"), None).await.unwrap();
        assert_eq!(c.get("new").await.unwrap(), Some(b("n")));
        assert!(c.set_nx("new", b("again"), None).await.is_ok());
        assert!(c.delete("new").await.unwrap());
        assert!(c.ping().await.is_err(), "ping tells the truth");
        let s = c.tiered_stats();
        assert!(s.l2_errors >= 4, "{s:?}");
        let stats = c.stats().await.unwrap();
        assert_eq!(stats.errors, s.l2_errors);
        t.set_down(false);
        assert_eq!(
            t.get(b"p:cache:new").await.unwrap(),
            None,
            "memory-mode writes stayed local"
        );
        c.set("later", b("l"), None).await.unwrap();
        assert_eq!(t.get(b"p:cache:later").await.unwrap(), Some(b("l")));
    });
}

#[test]
fn closed_tiered_cache_reports_closed() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let c = instance(&t, &clock, false);
        c.close().await.unwrap();
        assert_eq!(c.get("k").await, Err(Error::Closed));
        assert_eq!(c.set("k", b("v"), None).await, Err(Error::Closed));
    });
}

#[test]
fn without_pubsub_the_backplane_is_inert() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let np = NoPubSub(t.clone());
        let c = instance(&np, &clock, true);
        c.set("k", b("v"), None).await.unwrap();
        assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
        let bp = c.tiered_stats().backplane.unwrap();
        assert!(!bp.subscribed);
        assert_eq!(bp.subscriptions, 0);
    });
}

/// A transport whose subscriptions can be cut, as a lost connection would.
#[derive(Debug, Clone)]
struct Cuttable {
    t: MemTransport,
    cut: Arc<AtomicBool>,
}

#[derive(Debug)]
struct CutSub {
    sub: BoxSubscription,
    cut: Arc<AtomicBool>,
}

impl Subscription for CutSub {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        self.sub.poll_message(cx)
    }
}

#[async_trait::async_trait]
impl Transport for Cuttable {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.t.exec(cmd).await
    }
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.t.pipeline(cmds).await
    }
    fn supports_pubsub(&self) -> bool {
        true
    }
    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.cut.store(false, Ordering::SeqCst);
        let sub = Transport::subscribe(&self.t, channel).await?;
        Ok(Box::new(CutSub {
            sub,
            cut: self.cut.clone(),
        }))
    }
}

#[test]
fn lost_subscription_clears_l1_when_it_is_re_established() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let cut = Cuttable {
            t: t.clone(),
            cut: Arc::new(AtomicBool::new(false)),
        };
        let a = instance(&cut, &clock, true);
        let other = instance(&t, &clock, true);
        a.set("k", b("v1"), None).await.unwrap();
        cut.cut.store(true, Ordering::SeqCst);
        // While A is deaf, another instance overwrites k.
        other.set("k", b("v2"), None).await.unwrap();
        t.clock().advance(Duration::from_secs(2));
        // A notices the loss, re-subscribes and drops its L1: it cannot serve v1 any more.
        assert_eq!(a.get("k").await.unwrap(), Some(b("v2")));
        assert_eq!(a.tiered_stats().backplane.unwrap().subscriptions, 2);
    });
}

#[tokio::test(start_paused = true)]
async fn with_a_runtime_invalidations_apply_even_to_an_idle_instance() {
    use crate::compute::tests::support::{TokioClock, runtime};
    let clock: SharedClock = TokioClock::shared();
    let t = MemTransport::with_clock(clock.clone());
    let build = || {
        let l2 = RedisCache::builder(t.clone()).prefix("p").build().unwrap();
        TieredCache::builder(
            MemoryCache::builder()
                .clock(clock.clone())
                .max_entries(100)
                .build()
                .unwrap(),
            l2,
        )
        .backplane(Backplane::new(t.clone(), &KeyScheme::new("p").unwrap()).clock(clock.clone()))
        .runtime(runtime())
        .build()
        .unwrap()
    };
    let (a, other) = (build(), build());
    a.get("warm-up").await.unwrap(); // subscribes
    other.get("warm-up").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    other.set("k", b("v1"), None).await.unwrap();
    a.get("k").await.unwrap();
    assert!(a.l1().contains("k"));
    other.set("k", b("v2"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // No operation on `a`: its background task applied the eviction.
    assert!(!a.l1().contains("k"));
    assert_eq!(a.tiered_stats().backplane.unwrap().evicted, 1);
}

/// A transport whose subscriptions resume by themselves after a gap (as larder-native's
/// do): while `deaf`, messages are dropped; `gaps` counts the resumptions.
#[derive(Debug, Clone)]
struct Resuming {
    t: MemTransport,
    deaf: Arc<AtomicBool>,
    gaps: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct ResumingSub {
    sub: BoxSubscription,
    deaf: Arc<AtomicBool>,
    gaps: Arc<std::sync::atomic::AtomicU64>,
}

impl Subscription for ResumingSub {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.sub.poll_message(cx) {
                Poll::Ready(Some(_)) if self.deaf.load(Ordering::SeqCst) => continue,
                other => return other,
            }
        }
    }

    fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Transport for Resuming {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.t.exec(cmd).await
    }
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.t.pipeline(cmds).await
    }
    fn supports_pubsub(&self) -> bool {
        true
    }
    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        let sub = Transport::subscribe(&self.t, channel).await?;
        Ok(Box::new(ResumingSub {
            sub,
            deaf: self.deaf.clone(),
            gaps: self.gaps.clone(),
        }))
    }
}

#[test]
fn a_subscription_resumed_after_a_gap_clears_l1() {
    block_on(async {
        let t = MemTransport::new();
        let clock: SharedClock = Arc::new(t.clock());
        let resuming = Resuming {
            t: t.clone(),
            deaf: Arc::new(AtomicBool::new(false)),
            gaps: Arc::default(),
        };
        let a = instance(&resuming, &clock, true);
        let other = instance(&t, &clock, true);
        a.set("k", b("v1"), None).await.unwrap();
        resuming.deaf.store(true, Ordering::SeqCst);
        // While A's connection is down, another instance overwrites k: the message is lost.
        other.set("k", b("v2"), None).await.unwrap();
        assert_eq!(a.get("k").await.unwrap(), Some(b("v1")), "deaf: stale L1");
        // The transport reconnects and re-subscribes; the subscription counts the gap.
        resuming.deaf.store(false, Ordering::SeqCst);
        resuming.gaps.fetch_add(1, Ordering::SeqCst);
        assert_eq!(a.get("k").await.unwrap(), Some(b("v2")));
        let bp = a.tiered_stats().backplane.unwrap();
        assert_eq!((bp.gaps, bp.subscriptions), (1, 1), "{bp:?}");
    });
}
