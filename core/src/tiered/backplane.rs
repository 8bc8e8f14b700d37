//! The backplane: invalidations and overwrites published on Redis pub/sub, evicting the key
//! from every other instance's L1.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::clock::{SharedClock, duration_ms};
use crate::compute::{event_channel, random_token};
use crate::keys::KeyScheme;
use crate::memory::MemoryCache;
use crate::runtime::SharedRuntime;
use crate::transport::{BoxSubscription, SharedTransport, Transport};
use crate::value::Cmd;

/// How long to wait before subscribing again after a failure.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Where [`TieredCache`](super::TieredCache)s of one deployment tell each other about
/// writes: the pub/sub channel `{prefix}:events:invalidate` on a transport that has pub/sub.
///
/// Every write, delete, expiry change or clear made through one instance is published after
/// it reached L2; the other instances drop the keys from their L1 before their next
/// operation. An instance ignores its own messages.
///
/// While the subscription is down (Redis unreachable), messages are lost: when it is
/// re-established the instance clears its whole L1, so no invalidated entry survives the gap
/// (entries written meanwhile were bounded by the L1 TTL anyway). That holds both when the
/// subscription ends and is made again, and when the transport resumes it by itself
/// (larder-native reconnects and re-subscribes; the gap shows in
/// [`Subscription::gaps`](crate::transport::Subscription::gaps) and in
/// [`BackplaneStats::gaps`]).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use larder_core::tiered::Backplane;
/// use larder_core::{KeyScheme, testing::MemTransport};
///
/// let redis = MemTransport::new();
/// let bp = Backplane::new(redis.clone(), &KeyScheme::new("app").unwrap()).clock(redis.clock());
/// assert_eq!(bp.channel(), "app:events:invalidate");
/// ```
pub struct Backplane {
    transport: SharedTransport,
    channel: String,
    clock: SharedClock,
}

impl fmt::Debug for Backplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backplane")
            .field("transport", &self.transport)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Backplane {
    /// A backplane on `transport` for the caches under `keys`' prefix.
    pub fn new(transport: impl Transport + 'static, keys: &KeyScheme) -> Self {
        Backplane {
            transport: Arc::new(transport),
            channel: event_channel(keys, "invalidate"),
            clock: crate::clock::system(),
        }
    }

    /// The clock that paces re-subscribing after a lost subscription (default:
    /// [`SystemClock`](crate::SystemClock)).
    #[must_use]
    pub fn clock(mut self, clock: impl crate::Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The channel: `{prefix}:events:invalidate`.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn attach(self, l1: MemoryCache, runtime: Option<SharedRuntime>) -> Link {
        let instance = random_token(&*self.clock);
        Link {
            inner: Arc::new(LinkInner {
                transport: self.transport,
                channel: Bytes::from(self.channel),
                clock: self.clock,
                instance,
                l1,
                runtime,
                state: Mutex::new(LinkState::default()),
                subscribed: AtomicBool::new(false),
                counters: BackplaneCounters::default(),
            }),
        }
    }
}

/// Counters of a backplane, in [`TieredStats::backplane`](super::TieredStats::backplane).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Whether the subscription is up now.
    pub subscribed: bool,
    /// Messages this instance published.
    pub published: u64,
    /// Publishes that failed (Redis unreachable).
    pub publish_errors: u64,
    /// Messages received from other instances.
    pub received: u64,
    /// L1 entries removed because of them.
    pub evicted: u64,
    /// Times the subscription was (re-)established (each clears the L1).
    pub subscriptions: u64,
    /// Times the transport resumed the subscription after messages may have been lost
    /// ([`Subscription::gaps`](crate::transport::Subscription::gaps); each clears the L1).
    pub gaps: u64,
}

#[derive(Debug, Default)]
struct BackplaneCounters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    evicted: AtomicU64,
    subscriptions: AtomicU64,
    gaps: AtomicU64,
}

/// What a message asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Op {
    /// These keys changed.
    Del { keys: Vec<String> },
    /// Keys matching this glob were deleted.
    Pattern { pattern: String },
    /// Everything was deleted.
    Clear,
}

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// The sending instance.
    src: String,
    #[serde(flatten)]
    op: Op,
}

#[derive(Default)]
struct LinkState {
    sub: Option<BoxSubscription>,
    /// [`Subscription::gaps`](crate::transport::Subscription::gaps) of `sub` when last seen.
    gaps: u64,
    subscribing: bool,
    retry_at_ms: u64,
    /// A background task polls the subscription (with a runtime): operations do not.
    driven: bool,
}

struct LinkInner {
    transport: SharedTransport,
    channel: Bytes,
    clock: SharedClock,
    instance: String,
    l1: MemoryCache,
    runtime: Option<SharedRuntime>,
    state: Mutex<LinkState>,
    subscribed: AtomicBool,
    counters: BackplaneCounters,
}

/// A backplane attached to one L1.
#[derive(Clone)]
pub(crate) struct Link {
    inner: Arc<LinkInner>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backplane")
            .field("channel", &String::from_utf8_lossy(&self.inner.channel))
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Applies what other instances published, and (re-)subscribes when due. Called before
    /// every operation; costs no I/O while subscribed.
    pub(crate) async fn sync(&self) {
        let inner = &*self.inner;
        let mut ops = Vec::new();
        let mut gap = false;
        let due = {
            let mut st = inner.state.lock();
            let st = &mut *st;
            if let (Some(sub), false) = (st.sub.as_mut(), st.driven) {
                let mut cx = Context::from_waker(Waker::noop());
                loop {
                    match sub.poll_message(&mut cx) {
                        Poll::Ready(Some(msg)) => ops.push(msg.payload),
                        Poll::Ready(None) => {
                            st.sub = None;
                            inner.subscribed.store(false, Ordering::Relaxed);
                            break;
                        }
                        Poll::Pending => {
                            let gaps = sub.gaps();
                            gap = gaps != st.gaps;
                            st.gaps = gaps;
                            break;
                        }
                    }
                }
            }
            let due = st.sub.is_none() && !st.subscribing && inner.clock.now_ms() >= st.retry_at_ms;
            if due {
                st.subscribing = true;
            }
            due
        };
        for payload in ops {
            self.apply(&payload).await;
        }
        if gap {
            self.after_gap();
        }
        if due {
            match &inner.runtime {
                Some(rt) => {
                    let link = self.clone();
                    rt.spawn(Box::pin(async move { link.subscribe().await }));
                }
                None => self.subscribe().await,
            }
        }
    }

    async fn subscribe(&self) {
        let inner = &*self.inner;
        let result = inner.transport.subscribe(&inner.channel).await;
        let mut st = inner.state.lock();
        st.subscribing = false;
        match result {
            Ok(sub) => {
                st.gaps = sub.gaps();
                st.sub = Some(sub);
                st.driven = inner.runtime.is_some();
                inner.subscribed.store(true, Ordering::Relaxed);
                inner.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
                drop(st);
                // Messages published while we were not subscribed are lost: whatever L1 held
                // may have been invalidated meanwhile.
                inner.l1.clear_all();
                if let Some(rt) = &inner.runtime {
                    let link = self.clone();
                    rt.spawn(Box::pin(async move { link.drive().await }));
                }
            }
            Err(_) => {
                st.retry_at_ms = inner.clock.now_ms() + duration_ms(RESUBSCRIBE_AFTER);
            }
        }
    }

    /// With a runtime: applies messages as they arrive, so an idle instance does not let
    /// them pile up, until the subscription ends.
    async fn drive(&self) {
        let inner = &*self.inner;
        enum Next {
            Message(Bytes),
            Gap,
            Ended,
        }
        loop {
            let next = std::future::poll_fn(|cx| {
                let mut st = inner.state.lock();
                let st = &mut *st;
                let Some(sub) = st.sub.as_mut() else {
                    return Poll::Ready(Next::Ended);
                };
                match sub.poll_message(cx) {
                    Poll::Ready(Some(msg)) => Poll::Ready(Next::Message(msg.payload)),
                    Poll::Ready(None) => {
                        st.sub = None;
                        st.driven = false;
                        inner.subscribed.store(false, Ordering::Relaxed);
                        Poll::Ready(Next::Ended)
                    }
                    Poll::Pending => {
                        let gaps = sub.gaps();
                        if gaps != st.gaps {
                            st.gaps = gaps;
                            Poll::Ready(Next::Gap)
                        } else {
                            Poll::Pending
                        }
                    }
                }
            })
            .await;
            match next {
                Next::Message(payload) => self.apply(&payload).await,
                Next::Gap => self.after_gap(),
                Next::Ended => return,
            }
        }
    }

    /// The transport resumed the subscription, but messages published meanwhile are lost:
    /// whatever L1 held may have been invalidated, so it goes.
    fn after_gap(&self) {
        let inner = &*self.inner;
        inner.counters.gaps.fetch_add(1, Ordering::Relaxed);
        inner.l1.clear_all();
    }

    async fn apply(&self, payload: &[u8]) {
        let inner = &*self.inner;
        let Ok(wire) = serde_json::from_slice::<Wire>(payload) else {
            return; // not ours: ignore
        };
        if wire.src == inner.instance {
            return;
        }
        inner.counters.received.fetch_add(1, Ordering::Relaxed);
        let evicted = match wire.op {
            Op::Del { keys } => keys.iter().filter(|k| inner.l1.remove(k)).count(),
            Op::Pattern { pattern } => Cache::delete_pattern(&inner.l1, &pattern)
                .await
                .unwrap_or(0) as usize,
            Op::Clear => inner.l1.clear_all(),
        };
        inner
            .counters
            .evicted
            .fetch_add(evicted as u64, Ordering::Relaxed);
    }

    /// Tells the other instances (after the change reached L2). Failures are counted, not
    /// returned: the write itself succeeded.
    pub(crate) async fn publish(&self, op: Op) {
        let inner = &*self.inner;
        let wire = Wire {
            src: inner.instance.clone(),
            op,
        };
        let payload = serde_json::to_vec(&wire).expect("a backplane message serializes");
        let cmd = Cmd::new("PUBLISH").arg(&inner.channel).arg(payload);
        let send = {
            let link = self.clone();
            async move {
                let c = &link.inner.counters;
                match link.inner.transport.exec(cmd).await {
                    Ok(crate::Value::Error(_)) | Err(_) => {
                        c.publish_errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => c.published.fetch_add(1, Ordering::Relaxed),
                };
            }
        };
        match &inner.runtime {
            Some(rt) => rt.spawn(Box::pin(send)),
            None => send.await,
        }
    }

    pub(crate) fn stats(&self) -> BackplaneStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackplaneStats {
            subscribed: self.inner.subscribed.load(Ordering::Relaxed),
            published: l(&c.published),
            publish_errors: l(&c.publish_errors),
            received: l(&c.received),
            evicted: l(&c.evicted),
            subscriptions: l(&c.subscriptions),
            gaps: l(&c.gaps),
        }
    }
}
