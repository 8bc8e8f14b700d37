//! Pub/sub for [`RedisTransport`](super::RedisTransport): one dedicated connection per
//! transport, shared by every subscription.
//!
//! - **Multiplexed and reference-counted.** Each channel is `SUBSCRIBE`d (each pattern
//!   `PSUBSCRIBE`d) once, however many [`Subscription`]s want it; the last one dropped sends
//!   `UNSUBSCRIBE` (`PUNSUBSCRIBE`). Subscribe and
//!   unsubscribe commands are sent under one lock, in the order the counts were decided, so
//!   a subscribe racing the last unsubscribe of the same channel cannot lose.
//! - **Lazy.** The connection opens on the first [`subscribe`](Hub::subscribe), in a
//!   background task (the driver) that reads messages and hands them to the subscriptions.
//! - **Bounded.** A connect attempt is cut off after `dial_timeout + write_timeout +
//!   read_timeout` per node, and `subscribe` never takes longer than the transport's call
//!   budget. While Redis is down `subscribe` fails at once with the driver's last error.
//! - **Resuming.** When the connection is lost (EOF, reset, or an unanswered `PING` every
//!   [`PING_EVERY`]), the driver reconnects with exponential backoff
//!   ([`BACKOFF_MIN`]–[`BACKOFF_MAX`]) and re-subscribes every live channel. Subscriptions
//!   stay open across this; messages published while the connection was down are lost
//!   (Redis pub/sub is at-most-once), and each subscription counts the gap in
//!   [`Subscription::gaps`].
//! - **Where.** Standalone: the server. Cluster: any reachable node — classic `PUBLISH` is
//!   broadcast to every node of a Redis Cluster — trying the known masters then the seeds,
//!   the node that just failed last. Sentinel: the current master; the driver moves when
//!   the transport follows a failover.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use larder_core::transport::{BoxSubscription, Message, Subscription};
use larder_core::{ErrorKind, TransportError};
use parking_lot::{Mutex, RwLock};
use redis::ConnectionInfo;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::convert::{deadline_error, transport_error};
use crate::options::Settings;

/// First wait before reconnecting a lost pub/sub connection.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(25);
/// Longest wait between reconnect attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often an idle pub/sub connection is checked with `PING` (a half-open TCP connection
/// would otherwise look alive forever).
pub(crate) const PING_EVERY: Duration = Duration::from_secs(5);
/// Messages queued per subscription before newer ones are dropped (and counted as a gap).
const QUEUE: usize = 1024;

/// Refreshes a cluster's known masters (best effort).
pub(crate) type RefreshFn =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Where the pub/sub connection may go.
pub(crate) enum Source {
    /// One server (standalone).
    Server(ConnectionInfo),
    /// A Redis Cluster: any node will do.
    Cluster {
        /// The seed addresses.
        seeds: Vec<ConnectionInfo>,
        /// Masters learned from `CLUSTER SLOTS` (shared with the transport's scans).
        known: Arc<RwLock<Vec<(String, u16)>>>,
        /// How to reach a node (credentials, TLS).
        template: ConnectionInfo,
        /// Refreshes `known` (`CLUSTER SLOTS` through the cluster connection).
        refresh: RefreshFn,
    },
    /// The master a Sentinel transport uses now, and a signal that it changed.
    Sentinel {
        current: Box<dyn Fn() -> ConnectionInfo + Send + Sync>,
        moved: watch::Receiver<u64>,
    },
}

impl Source {
    /// The nodes to try, in order; `failed` (the node just lost) goes last.
    fn candidates(&self, failed: Option<&str>) -> Vec<ConnectionInfo> {
        let mut nodes = match self {
            Source::Server(info) => vec![info.clone()],
            Source::Cluster {
                seeds,
                known,
                template,
                ..
            } => {
                let mut nodes: Vec<ConnectionInfo> = known
                    .read()
                    .iter()
                    .filter_map(|(h, p)| super::sentinel::master_info(template, h, *p).ok())
                    .collect();
                nodes.extend(seeds.iter().cloned());
                let mut seen = HashSet::new();
                nodes.retain(|n| seen.insert(n.addr().to_string()));
                nodes
            }
            Source::Sentinel { current, .. } => vec![current()],
        };
        if let Some(failed) = failed
            && let Some(i) = nodes.iter().position(|n| n.addr().to_string() == failed)
        {
            let n = nodes.remove(i);
            nodes.push(n);
        }
        nodes
    }

    fn moved(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Source::Sentinel { moved, .. } => Some(moved.clone()),
            _ => None,
        }
    }
}

/// What the driver is doing.
#[derive(Debug, Clone)]
enum Status {
    /// No channel to serve: no connection.
    Idle,
    /// Opening a connection.
    Connecting,
    /// Connected to `node`.
    Up { node: String },
    /// The last attempt failed; retrying after a backoff.
    Down(TransportError),
}

/// One subscription's end of the dispatch.
struct Tx {
    tx: mpsc::Sender<Event>,
    /// Messages dropped because the queue was full.
    dropped: Arc<AtomicU64>,
    /// The connection was lost since this subscription was confirmed: tell it when the
    /// channel is subscribed again.
    lost: bool,
}

enum Event {
    Message(Message),
    Gap,
}

/// What a subscription listens to: a channel (`SUBSCRIBE`) or a pattern (`PSUBSCRIBE`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Topic {
    pub(crate) pattern: bool,
    pub(crate) name: Bytes,
}

impl Topic {
    fn command(&self) -> &'static str {
        if self.pattern {
            "PSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        }
    }
}

#[derive(Default)]
struct Subs {
    channels: HashMap<Topic, HashMap<u64, Tx>>,
    next_id: u64,
    /// Topics whose last subscription was dropped: unsubscribe them.
    idle: HashSet<Topic>,
}

/// The live connection's command half and what it is subscribed to.
struct Live {
    sink: PubSubSink,
    /// Topics Redis confirmed on this connection and not unsubscribed since: a new
    /// subscription to one of them needs no command (a thousand subscribers of one channel
    /// cost one `SUBSCRIBE`, not a thousand in a row).
    subscribed: HashSet<Topic>,
}

pub(crate) struct HubInner {
    source: Source,
    settings: Settings,
    subs: Mutex<Subs>,
    /// The live connection's command half. `SUBSCRIBE`/`UNSUBSCRIBE` are sent while holding
    /// this lock, so they reach Redis in the order the reference counts were decided.
    sink: tokio::sync::Mutex<Option<Live>>,
    status: watch::Sender<Status>,
    /// Wakes the driver: a channel to serve, a retry to make now, or one to unsubscribe.
    kick: Notify,
    driver: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    reconnects: AtomicU64,
    messages: AtomicU64,
}

/// The pub/sub side of one transport (see the module docs).
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

/// The state of a [`RedisTransport`](super::RedisTransport)'s pub/sub connection, from
/// [`RedisTransport::pubsub_status`](super::RedisTransport::pubsub_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubStatus {
    /// The node the connection is on now (`host:port`), if it is up.
    pub connected_to: Option<String>,
    /// Channels subscribed (each counted once, however many subscriptions share it).
    pub channels: usize,
    /// Times the connection was re-established after being lost (each a gap: messages
    /// published in between were lost).
    pub reconnects: u64,
    /// Messages received and handed to subscriptions.
    pub messages: u64,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("status", &*self.inner.status.borrow())
            .field("channels", &self.inner.subs.lock().channels.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.inner.shut_down();
    }
}

impl Hub {
    pub(crate) fn new(source: Source, settings: &Settings) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                source,
                settings: settings.clone(),
                subs: Mutex::new(Subs::default()),
                sink: tokio::sync::Mutex::new(None),
                status: watch::Sender::new(Status::Idle),
                kick: Notify::new(),
                driver: Mutex::new(None),
                closed: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
                messages: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn status(&self) -> PubSubStatus {
        let connected_to = match &*self.inner.status.borrow() {
            Status::Up { node } => Some(node.clone()),
            _ => None,
        };
        PubSubStatus {
            connected_to,
            channels: self.inner.subs.lock().channels.len(),
            reconnects: self.inner.reconnects.load(Ordering::Relaxed),
            messages: self.inner.messages.load(Ordering::Relaxed),
        }
    }

    /// Ends every subscription and the connection.
    pub(crate) fn close(&self) {
        self.inner.shut_down();
    }

    /// Subscribes to `topic`; returns once Redis confirmed it, within `budget`.
    pub(crate) async fn subscribe(
        &self,
        channel: Topic,
        budget: Duration,
    ) -> Result<BoxSubscription, TransportError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::new(
                ErrorKind::Closed,
                "the Redis transport was closed; build a new one",
            ));
        }
        let sub = inner.register(&channel);
        inner.start_driver();
        match tokio::time::timeout(budget, inner.confirm(&channel)).await {
            Ok(Ok(())) => Ok(Box::new(sub)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let last = match &*inner.status.borrow() {
                    Status::Down(e) => format!(" (last error: {})", e.message()),
                    _ => String::new(),
                };
                let mut e = deadline_error(
                    &format!(
                        "{} {}",
                        channel.command(),
                        String::from_utf8_lossy(&channel.name)
                    ),
                    budget,
                );
                if !last.is_empty() {
                    e = TransportError::new(e.kind(), format!("{}{last}", e.message()));
                }
                Err(e)
            }
        }
        // On error `sub` is dropped here, which unregisters it.
    }
}

impl HubInner {
    fn register(self: &Arc<Self>, channel: &Topic) -> RedisSubscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = self.subs.lock();
        let id = subs.next_id;
        subs.next_id += 1;
        subs.idle.remove(channel);
        subs.channels.entry(channel.clone()).or_default().insert(
            id,
            Tx {
                tx,
                dropped: dropped.clone(),
                lost: false,
            },
        );
        RedisSubscription {
            hub: self.clone(),
            channel: channel.clone(),
            id,
            rx,
            gaps: 0,
            dropped,
        }
    }

    fn unregister(&self, channel: &Topic, id: u64) {
        let mut subs = self.subs.lock();
        let Some(ids) = subs.channels.get_mut(channel) else {
            return;
        };
        ids.remove(&id);
        if ids.is_empty() {
            subs.channels.remove(channel);
            subs.idle.insert(channel.clone());
            drop(subs);
            self.kick.notify_one();
        }
    }

    fn start_driver(self: &Arc<Self>) {
        let mut driver = self.driver.lock();
        if driver.is_none() && !self.closed.load(Ordering::Acquire) {
            *driver = Some(tokio::spawn(drive(self.clone())));
        }
        drop(driver);
        self.kick.notify_one();
    }

    fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(d) = self.driver.lock().take() {
            d.abort();
        }
        // Dropping the senders ends every subscription (`Ready(None)`).
        let mut subs = self.subs.lock();
        subs.channels.clear();
        subs.idle.clear();
        self.status.send_replace(Status::Idle);
    }

    /// Waits until `channel` is subscribed on a live connection.
    async fn confirm(&self, channel: &Topic) -> Result<(), TransportError> {
        let mut status = self.status.subscribe();
        let mut retried = false;
        loop {
            let now = status.borrow_and_update().clone();
            match now {
                Status::Up { .. } => {
                    let mut live = self.sink.lock().await;
                    if let Some(live) = live.as_mut() {
                        if live.subscribed.contains(channel) {
                            return Ok(());
                        }
                        let sent = tokio::time::timeout(
                            self.settings.response_timeout(),
                            send(&mut live.sink, channel.pattern, true, &[&channel.name[..]]),
                        )
                        .await;
                        match sent {
                            Ok(Ok(())) => {
                                live.subscribed.insert(channel.clone());
                                return Ok(());
                            }
                            // Refused (an ACL without this channel): no retry will help.
                            Ok(Err(e)) if e.code().is_some() => return Err(refused(&e, channel)),
                            // The connection is going away: the driver will say so.
                            _ => {}
                        }
                    }
                }
                // The driver failed its last attempt: ask it to try again now, once, and
                // report its answer.
                Status::Down(e) if retried => return Err(e),
                Status::Down(_) => {
                    retried = true;
                    self.kick.notify_one();
                }
                Status::Idle | Status::Connecting => {}
            }
            if status.changed().await.is_err() {
                return Err(TransportError::new(
                    ErrorKind::Closed,
                    "the Redis transport was closed; build a new one",
                ));
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(TransportError::new(
                    ErrorKind::Closed,
                    "the Redis transport was closed; build a new one",
                ));
            }
        }
    }

    fn live_channels(&self) -> Vec<Topic> {
        self.subs.lock().channels.keys().cloned().collect()
    }

    fn has_channels(&self) -> bool {
        !self.subs.lock().channels.is_empty()
    }

    /// Marks every subscription as having lost the connection.
    fn mark_lost(&self) {
        let mut subs = self.subs.lock();
        subs.idle.clear(); // nothing to unsubscribe on a connection that is gone
        for tx in subs.channels.values_mut().flat_map(|ids| ids.values_mut()) {
            tx.lost = true;
        }
    }

    /// After re-subscribing: tells the subscriptions that lived through the loss.
    fn report_gaps(&self) {
        let mut subs = self.subs.lock();
        for tx in subs.channels.values_mut().flat_map(|ids| ids.values_mut()) {
            if std::mem::take(&mut tx.lost) && tx.tx.try_send(Event::Gap).is_err() {
                tx.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn dispatch(&self, msg: redis::Msg) {
        let Ok(channel) = msg.get_channel::<Vec<u8>>() else {
            return;
        };
        let channel = Bytes::from(channel);
        let topic = if msg.from_pattern() {
            let Ok(pattern) = msg.get_pattern::<Vec<u8>>() else {
                return;
            };
            Topic {
                pattern: true,
                name: Bytes::from(pattern),
            }
        } else {
            Topic {
                pattern: false,
                name: channel.clone(),
            }
        };
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        self.messages.fetch_add(1, Ordering::Relaxed);
        let subs = self.subs.lock();
        if let Some(ids) = subs.channels.get(&topic) {
            for tx in ids.values() {
                let m = Message::new(channel.clone(), payload.clone());
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.tx.try_send(Event::Message(m)) {
                    tx.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Opens a connection on the first candidate that answers and subscribes every live
    /// channel on it, holding the sink lock until the new sink is installed.
    async fn connect(
        &self,
        failed: Option<&str>,
    ) -> Result<(String, PubSubStream), TransportError> {
        let per_node = self.settings.dial_timeout + self.settings.response_timeout();
        if let Source::Cluster { refresh, .. } = &self.source {
            // Learn the current masters first (a failover may have replaced the ones known).
            let _ = tokio::time::timeout(self.settings.call_budget(), refresh()).await;
        }
        let mut problems = Vec::new();
        for info in self.source.candidates(failed) {
            let node = info.addr().to_string();
            let opened = tokio::time::timeout(per_node, async {
                let client = self.settings.client(info)?;
                client.get_async_pubsub().await
            })
            .await;
            let (mut sink, stream) = match opened {
                Ok(Ok(pubsub)) => pubsub.split(),
                Ok(Err(e)) => {
                    problems.push(transport_error(
                        &e,
                        &format!("pub/sub connection to {node}"),
                    ));
                    continue;
                }
                Err(_) => {
                    problems.push(deadline_error(
                        &format!("pub/sub connection to {node}"),
                        per_node,
                    ));
                    continue;
                }
            };
            let mut guard = self.sink.lock().await;
            let channels = self.live_channels();
            let subscribed = match self.subscribe_all(&mut sink, channels).await {
                Ok(subscribed) => subscribed,
                Err(e) => {
                    problems.push(TransportError::new(
                        e.kind(),
                        format!("on {node}: {}", e.message()),
                    ));
                    continue;
                }
            };
            *guard = Some(Live { sink, subscribed });
            return Ok((node, stream));
        }
        let auth = problems.iter().any(|p| p.kind() == ErrorKind::Auth);
        let kind = if auth {
            ErrorKind::Auth
        } else {
            problems.last().map_or(ErrorKind::Unavailable, |p| p.kind())
        };
        Err(TransportError::new(
            kind,
            format!(
                "no pub/sub connection: {}; larder retries with backoff (waiters poll meanwhile)",
                problems
                    .iter()
                    .map(|p| p.message())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ))
    }

    /// Subscribes every live channel and pattern on a new connection, in one command per
    /// kind. If Redis refuses it (an ACL that denies some channel), one by one: the
    /// subscriptions of a refused topic end (`None`), the others carry on. Returns the topics
    /// subscribed; `Err` means the connection failed.
    async fn subscribe_all(
        &self,
        sink: &mut PubSubSink,
        topics: Vec<Topic>,
    ) -> Result<HashSet<Topic>, TransportError> {
        let mut subscribed = HashSet::with_capacity(topics.len());
        let limit = self.settings.response_timeout();
        for pattern in [false, true] {
            let names = names_of(&topics, pattern);
            if names.is_empty() {
                continue;
            }
            let what = if pattern { "PSUBSCRIBE" } else { "SUBSCRIBE" };
            let sent = tokio::time::timeout(limit, send(sink, pattern, true, &names)).await;
            match sent {
                Ok(Ok(())) => {
                    subscribed.extend(topics.iter().filter(|t| t.pattern == pattern).cloned());
                    continue;
                }
                Ok(Err(e)) if e.code().is_some() => {}
                Ok(Err(e)) => return Err(transport_error(&e, what)),
                Err(_) => return Err(deadline_error(what, limit)),
            }
            for topic in topics.iter().filter(|t| t.pattern == pattern) {
                let sent =
                    tokio::time::timeout(limit, send(sink, pattern, true, &[&topic.name[..]]))
                        .await;
                match sent {
                    Ok(Ok(())) => {
                        subscribed.insert(topic.clone());
                    }
                    Ok(Err(e)) if e.code().is_some() => {
                        tracing::warn!(error = %refused(&e, topic), "larder: subscription refused");
                        // Dropping the senders ends those subscriptions.
                        self.subs.lock().channels.remove(topic);
                    }
                    Ok(Err(e)) => return Err(transport_error(&e, what)),
                    Err(_) => return Err(deadline_error(what, limit)),
                }
            }
        }
        Ok(subscribed)
    }

    /// `UNSUBSCRIBE`s the channels nobody wants any more. An error means the connection is
    /// lost.
    async fn unsubscribe_idle(&self) -> Result<(), ()> {
        let mut guard = self.sink.lock().await;
        let idle: Vec<Topic> = {
            let mut subs = self.subs.lock();
            let idle: Vec<Topic> = subs
                .idle
                .iter()
                .filter(|c| !subs.channels.contains_key(*c))
                .cloned()
                .collect();
            subs.idle.clear();
            idle
        };
        let Some(live) = guard.as_mut() else {
            return Ok(());
        };
        for topic in &idle {
            live.subscribed.remove(topic);
        }
        let sink = &mut live.sink;
        for pattern in [false, true] {
            let names = names_of(&idle, pattern);
            if names.is_empty() {
                continue;
            }
            let sent = tokio::time::timeout(
                self.settings.response_timeout(),
                send(sink, pattern, false, &names),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return Err(());
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), ()> {
        let mut guard = self.sink.lock().await;
        let Some(live) = guard.as_mut() else {
            return Err(());
        };
        match tokio::time::timeout(
            self.settings.response_timeout(),
            live.sink.ping::<redis::Value>(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(()),
        }
    }
}

/// The names of the channels (or, with `pattern`, the patterns) among `topics`.
fn names_of(topics: &[Topic], pattern: bool) -> Vec<&[u8]> {
    topics
        .iter()
        .filter(|t| t.pattern == pattern)
        .map(|t| &t.name[..])
        .collect()
}

/// `SUBSCRIBE` (`on`) or `UNSUBSCRIBE` `names`, or their pattern forms with `pattern`.
async fn send(
    sink: &mut PubSubSink,
    pattern: bool,
    on: bool,
    names: &[&[u8]],
) -> redis::RedisResult<()> {
    match (pattern, on) {
        (false, true) => sink.subscribe(names).await,
        (true, true) => sink.psubscribe(names).await,
        (false, false) => sink.unsubscribe(names).await,
        (true, false) => sink.punsubscribe(names).await,
    }
}

/// The error of a `SUBSCRIBE` (`PSUBSCRIBE`) the server refused.
fn refused(e: &redis::RedisError, topic: &Topic) -> TransportError {
    let command = topic.command();
    let channel = String::from_utf8_lossy(&topic.name);
    let text = match e.detail() {
        Some(detail) => format!("{} {detail}", e.code().unwrap_or("ERR")),
        None => e.code().unwrap_or("ERR").to_owned(),
    };
    if e.code() == Some("NOPERM") {
        TransportError::new(
            ErrorKind::Auth,
            format!(
                "{command} {channel}: Redis refused it ({text}); grant the ACL user the \
                 channel (`&{channel}`, or `&<prefix>:events:*` for all of larder's)"
            ),
        )
    } else {
        TransportError::new(
            ErrorKind::Other,
            format!("{command} {channel}: Redis answered {text}"),
        )
    }
}

/// Why a connection stopped serving.
enum Ended {
    /// Lost (EOF, reset, no `PONG`).
    Lost(&'static str),
    /// The Sentinel transport moved to another master.
    Moved,
}

/// The driver: connects when there is a channel to serve, reads messages, reconnects.
async fn drive(hub: Arc<HubInner>) {
    let mut backoff = reconnect_backoff(BACKOFF_MIN, BACKOFF_MAX);
    let mut failed: Option<String> = None;
    let mut ever_up = false;
    loop {
        while !hub.has_channels() {
            hub.status.send_replace(Status::Idle);
            hub.kick.notified().await;
        }
        hub.status.send_replace(Status::Connecting);
        let mut moved = hub.source.moved();
        if let Some(m) = moved.as_mut() {
            m.borrow_and_update();
        }
        match hub.connect(failed.as_deref()).await {
            Ok((node, mut stream)) => {
                if ever_up {
                    hub.reconnects.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("larder_redis_pubsub_reconnects_total").increment(1);
                    tracing::info!(node = %node, "larder: pub/sub re-subscribed after a loss");
                }
                ever_up = true;
                hub.report_gaps();
                hub.status.send_replace(Status::Up { node: node.clone() });
                backoff = reconnect_backoff(BACKOFF_MIN, BACKOFF_MAX);
                failed = None;
                let ended = serve(&hub, &mut stream, moved.as_mut()).await;
                *hub.sink.lock().await = None;
                hub.mark_lost();
                hub.status.send_replace(Status::Connecting);
                match ended {
                    Ended::Moved => {
                        tracing::info!(node = %node, "larder: pub/sub following the new master");
                    }
                    Ended::Lost(why) => {
                        tracing::warn!(node = %node, why, "larder: pub/sub connection lost; reconnecting");
                        failed = Some(node);
                        // A connection that just died is usually followed by refused
                        // attempts: the first retry is quick, then the backoff grows.
                        tokio::time::sleep(BACKOFF_MIN).await;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "larder: pub/sub connect failed");
                hub.status.send_replace(Status::Down(e));
                // Sleep the backoff, unless kicked (a caller wants an answer now: wait the
                // minimum only) or the master moved.
                let sleep = tokio::time::sleep(backoff.next().unwrap_or(BACKOFF_MAX));
                tokio::pin!(sleep);
                tokio::select! {
                    () = &mut sleep => {}
                    () = hub.kick.notified() => tokio::time::sleep(BACKOFF_MIN).await,
                    () = changed(moved.as_mut()) => {}
                }
            }
        }
    }
}

/// Reconnection pauses: `min` doubling up to `max` (no jitter: one connection per process).
pub(crate) fn reconnect_backoff(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Resolves when the watched value changes; never without one.
async fn changed(moved: Option<&mut watch::Receiver<u64>>) {
    match moved {
        Some(m) => {
            if m.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Reads messages until the connection is lost or must move.
async fn serve(
    hub: &HubInner,
    stream: &mut PubSubStream,
    mut moved: Option<&mut watch::Receiver<u64>>,
) -> Ended {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => hub.dispatch(msg),
                None => return Ended::Lost("the connection closed"),
            },
            () = hub.kick.notified() => {
                if hub.unsubscribe_idle().await.is_err() {
                    return Ended::Lost("UNSUBSCRIBE got no answer");
                }
            }
            _ = ping.tick() => {
                if hub.ping().await.is_err() {
                    return Ended::Lost("PING got no answer");
                }
            }
            () = changed(moved.as_deref_mut()) => return Ended::Moved,
        }
    }
}

/// A [`Subscription`] of a [`RedisTransport`](super::RedisTransport).
struct RedisSubscription {
    hub: Arc<HubInner>,
    channel: Topic,
    id: u64,
    rx: mpsc::Receiver<Event>,
    /// Gaps reported by the driver (reconnects).
    gaps: u64,
    /// Messages dropped because this subscription's queue was full.
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSubscription")
            .field("channel", &String::from_utf8_lossy(&self.channel.name))
            .field("pattern", &self.channel.pattern)
            .field("gaps", &self.gaps())
            .finish_non_exhaustive()
    }
}

impl Subscription for RedisSubscription {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Event::Message(m))) => return Poll::Ready(Some(m)),
                Poll::Ready(Some(Event::Gap)) => self.gaps += 1,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn gaps(&self) -> u64 {
        self.gaps + self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        self.hub.unregister(&self.channel, self.id);
    }
}
