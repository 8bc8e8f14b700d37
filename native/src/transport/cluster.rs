//! Redis Cluster: redis-rs's async `ClusterConnection`, plus what it lacks for a cache.
//!
//! - **Pipelines across slots.** redis-rs rejects a pipeline whose commands cross slots, so
//!   a pipeline is [planned](super::slots::Plan): one pipeline per slot, run concurrently,
//!   replies put back in order; multi-key commands inside it are split per slot the same
//!   way. (A single multi-key command outside a pipeline is split by redis-rs itself.)
//! - **Scanning every master.** A plain `SCAN` reaches one random node; [`Cluster::scan_page`]
//!   lists the masters (`CLUSTER SLOTS`) when a scan starts and walks them one after the
//!   other, routing each `SCAN` by address. [`ScanCursor::node`] indexes that list.
//! - **Bounded failover stalls.** redis-rs waits at least 1.28 s between retries by default
//!   (a master kill stalled one `SET` 7.8 s here); retries here wait 10–300 ms, and every
//!   request is bounded by the call budget.
//! - **Wedged connections replaced.** redis-rs 1.8.1 can deadlock a `ClusterConnection` for
//!   good when slots move under load (`redis-cli --cluster reshard`/`rebalance`, a
//!   failover): a `MOVED` triggers a slot refresh, which waits for the write lock of the
//!   connection map (a fair tokio `RwLock`, held across the refresh's network calls) while a
//!   redirected request that already holds a read permit is never polled again, since
//!   redis-rs polls no request while a refresh is pending. Every request on that connection
//!   then times out, forever; a new connection works. So each connection has a watchdog
//!   task: when calls are waiting and the connection has answered nothing at all (no reply,
//!   no error) for the response timeout (at least 500 ms), it is dropped from the pool (the
//!   next call opens a new one), the calls waiting on it fail at once with a timeout, and
//!   `larder_cluster_connections_replaced_total` counts it. Nothing is re-sent: a command
//!   never runs twice. (Upstream fix: no write lock across the refresh's I/O, or keep polling
//!   requests while refreshing.)
//! - **Timeouts at both levels.** redis-rs's cluster client has no timeout by default. Here
//!   the overall response timeout (the call budget) bounds a request with its retries, and
//!   the per-node response timeout (`write_timeout + read_timeout`) bounds each node
//!   command — including the `CLUSTER SLOTS` of a slot refresh, which runs under the
//!   client's connection lock: without it, one node that stops answering without closing
//!   its socket (a partition, SIGSTOP) would hold every request of the client until the
//!   overall timeout, at every refresh. The two timers cost ~7% of throughput under load
//!   against an unbounded raw client (see `LARDER_BENCH_RAW_BOUNDED` in the benchmark).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use bytes::Bytes;
use futures_util::future::try_join_all;
use larder_core::transport::parse_scan_reply;
use larder_core::{Cmd, ErrorKind, ScanCursor, TransportError, Value};
use parking_lot::RwLock;
use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{Mutex as AsyncMutex, Notify};

use super::convert::{
    deadline_error, from_redis_value, replies, reply, to_redis_cmd, to_redis_pipeline,
    transport_error,
};
use super::slots::{Plan, Sub};
use crate::options::Settings;

/// Retries of one request inside redis-rs (redirections, reconnects, `TRYAGAIN`…); the call
/// budget cuts them short anyway.
const CLUSTER_RETRIES: u32 = 10;
/// Shortest wait between retries, in ms (redis-rs default: 1280).
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;
/// Longest wait between retries, in ms.
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 300;

/// How long a connection with requests outstanding may answer nothing at all (no reply, no
/// error, to any of them) before it counts as wedged and is replaced (see the module docs).
/// redis-rs bounds each node command by the response timeout, so a live connection with
/// requests outstanding answers something well within this.
fn stall_limit(response_timeout: Duration) -> Duration {
    response_timeout.max(Duration::from_millis(500))
}

/// One connection of the pool, and what its watchdog looks at.
struct Entry {
    conn: ClusterConnection,
    /// Milliseconds since [`Slot::epoch`] of the last reply or error from redis-rs (timeouts
    /// aside), or of the moment the connection went from idle to busy.
    answered: AtomicU64,
    /// Calls waiting on the connection now.
    in_flight: AtomicUsize,
    /// Set (and `died` notified) when the watchdog gave the connection up.
    dead: AtomicBool,
    died: Notify,
}

/// A place in the pool: empty until first used, emptied again when its connection wedges.
struct Slot {
    current: ArcSwapOption<Entry>,
    /// Held while opening, so that concurrent calls open one connection, not many.
    opening: AsyncMutex<()>,
    epoch: Instant,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            current: ArcSwapOption::empty(),
            opening: AsyncMutex::new(()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `fut` on `entry`'s connection; fails it at once if the watchdog gives the
    /// connection up meanwhile.
    async fn watch<T>(
        &self,
        entry: &Arc<Entry>,
        label: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<redis::RedisResult<T>, TransportError> {
        let died = entry.died.notified();
        let mut died = std::pin::pin!(died);
        died.as_mut().enable();
        if entry.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            // Busy from now: an idle spell is not silence.
            entry.answered.fetch_max(self.now_ms(), Ordering::AcqRel);
        }
        let _in_flight = InFlight(entry);
        if entry.dead.load(Ordering::Acquire) {
            return Err(wedged(label));
        }
        tokio::select! {
            result = fut => {
                if !matches!(&result, Err(e) if e.is_timeout()) {
                    entry.answered.fetch_max(self.now_ms(), Ordering::AcqRel);
                }
                Ok(result)
            }
            () = died => Err(wedged(label)),
        }
    }
}

/// Counts a call on a connection while it lives.
struct InFlight<'a>(&'a Entry);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn wedged(label: &str) -> TransportError {
    TransportError::new(
        ErrorKind::Timeout,
        format!(
            "cluster {label}: the connection answered nothing for too long and was replaced \
             (a redis-rs slot-refresh deadlock); retry"
        ),
    )
}

/// The watchdog of one connection (one task per connection, not a timer per call): while
/// calls are waiting and the connection has answered nothing for `stall`, it empties the
/// pool's slot (the next call opens a new connection) and fails the waiting calls. Ends
/// with the connection.
async fn watchdog(
    conns: Arc<[Slot]>,
    i: usize,
    entry: std::sync::Weak<Entry>,
    stall: Duration,
    label: String,
) {
    let stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval((stall / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(entry) = entry.upgrade() else {
            return;
        };
        let slot = &conns[i];
        let quiet = slot
            .now_ms()
            .saturating_sub(entry.answered.load(Ordering::Acquire));
        if entry.in_flight.load(Ordering::Acquire) == 0 || quiet < stall_ms {
            continue;
        }
        entry.dead.store(true, Ordering::Release);
        let current = slot.current.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &entry)) {
            slot.current.store(None);
        }
        entry.died.notify_waiters();
        tracing::warn!(
            cluster = %label,
            quiet_ms = quiet,
            waiting = entry.in_flight.load(Ordering::Acquire),
            "larder: a cluster connection answered nothing; replacing it"
        );
        metrics::counter!("larder_cluster_connections_replaced_total").increment(1);
        return;
    }
}

/// `pool_size` cluster connections (each with its own connection per node), used
/// round-robin; each opens on first use unless opened eagerly, and again after it wedged.
pub(crate) struct Cluster {
    client: ClusterClient,
    conns: Arc<[Slot]>,
    stall: Duration,
    next: AtomicUsize,
    /// Masters as `(host, port)`, listed when a scan starts or the pub/sub connection
    /// looks for a node.
    masters: Arc<RwLock<Vec<(String, u16)>>>,
    budget: Duration,
    /// The seed addresses (no credentials), for messages.
    label: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.label)
            .field("connections", &self.conns.len())
            .field("masters", &*self.masters.read())
            .finish()
    }
}

impl Cluster {
    /// Connects to the cluster through `seeds`, opening `min_idle_conns` connections now.
    pub(crate) async fn connect(
        seeds: Vec<redis::ConnectionInfo>,
        s: &Settings,
    ) -> Result<Cluster, TransportError> {
        let label = seeds
            .iter()
            .map(|i| i.addr().to_string())
            .collect::<Vec<_>>()
            .join(",");
        #[cfg(feature = "tls")]
        let seeds_tls = seeds
            .first()
            .map(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }));
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(s.dial_timeout)
            .response_timeout(s.response_timeout())
            .overall_response_timeout(Some(s.call_budget()))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
            .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
            .retry_wait_formula(10, 2);
        if let Some(user) = &s.username {
            builder = builder.username(user);
        }
        if let Some(password) = &s.password {
            builder = builder.password(password);
        }
        #[cfg(feature = "tls")]
        if let Some(certs) = s.tls.certificates() {
            // `certs` turns TLS on: only for `rediss://` seeds.
            if matches!(seeds_tls, Some(true)) {
                builder = builder.certs(certs);
            }
        }
        let client = builder
            .build()
            .map_err(|e| transport_error(&e, &format!("connecting to cluster {label}")))?;
        let cluster = Cluster {
            client,
            conns: (0..s.pool_size.max(1)).map(|_| Slot::new()).collect(),
            stall: stall_limit(s.response_timeout()),
            next: AtomicUsize::new(0),
            masters: Arc::new(RwLock::new(Vec::new())),
            budget: s.call_budget(),
            label,
        };
        let eager = s.min_idle_conns.min(cluster.conns.len());
        let opened = try_join_all((0..eager).map(|i| cluster.conn_at(i)));
        match tokio::time::timeout(cluster.budget, opened).await {
            Ok(Ok(_)) => Ok(cluster),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(deadline_error(
                &format!("connecting to cluster {}", cluster.label),
                cluster.budget,
            )),
        }
    }

    async fn conn_at(&self, i: usize) -> Result<Arc<Entry>, TransportError> {
        open_conn(&self.conns, i, &self.client, &self.label, self.stall).await
    }

    /// Where the pub/sub connection goes: any node (classic `PUBLISH` is broadcast to every
    /// node), the known masters first, then the seeds.
    pub(crate) fn pubsub_source(&self, seeds: Vec<redis::ConnectionInfo>) -> super::pubsub::Source {
        let template = seeds[0].clone();
        let (conns, client, label, known, stall) = (
            self.conns.clone(),
            self.client.clone(),
            self.label.clone(),
            self.masters.clone(),
            self.stall,
        );
        let known_out = known.clone();
        super::pubsub::Source::Cluster {
            seeds,
            known: known_out,
            template,
            refresh: Box::new(move || {
                let (conns, client, label, known) =
                    (conns.clone(), client.clone(), label.clone(), known.clone());
                Box::pin(async move {
                    let Ok(entry) = open_conn(&conns, 0, &client, &label, stall).await else {
                        return;
                    };
                    let listing = async {
                        Ok::<_, redis::RedisError>(list_masters(&mut entry.conn.clone()).await)
                    };
                    if let Ok(Ok(Ok(masters))) = conns[0].watch(&entry, &label, listing).await
                        && !masters.is_empty()
                    {
                        *known.write() = masters;
                    }
                })
            }),
        }
    }

    /// Whether every connection of the pool is open (requests are then bounded by redis-rs's
    /// overall response timeout alone).
    pub(crate) fn all_open(&self) -> bool {
        self.conns.iter().all(|s| s.current.load().is_some())
    }

    async fn conn(&self) -> Result<(&Slot, Arc<Entry>), TransportError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        Ok((&self.conns[i], self.conn_at(i).await?))
    }

    /// Runs one command. redis-rs routes it: by its key's slot, to every master for keyless
    /// commands that need it (`FLUSHDB`…), and split per slot for `MGET`, `MSET`, `DEL`,
    /// `UNLINK`, `EXISTS` and `TOUCH` (replies reassembled in key order, counts added).
    pub(crate) async fn exec(&self, cmd: &Cmd) -> Result<Value, TransportError> {
        let (slot, entry) = self.conn().await?;
        let mut conn = entry.conn.clone();
        let redis_cmd = to_redis_cmd(cmd);
        let result = slot
            .watch(&entry, &self.label, conn.req_packed_command(&redis_cmd))
            .await?;
        reply(result, || cmd.name())
    }

    /// Runs a pipeline: one pipeline per slot, concurrently, replies in the caller's order.
    pub(crate) async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        let (slot, entry) = self.conn().await?;
        let mut plan = Plan::new(cmds);
        let subs = plan.take_subs();
        let heard = || entry.answered.fetch_max(slot.now_ms(), Ordering::AcqRel);
        let run =
            async { Ok::<_, redis::RedisError>(run_subs(entry.conn.clone(), subs, &heard).await) };
        let results = slot
            .watch(&entry, &self.label, run)
            .await?
            .map_err(|e| transport_error(&e, "pipeline"))??;
        plan.assemble(results)
    }

    /// One page of a scan over every master (see the module docs).
    pub(crate) async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        if cursor.is_done() {
            return Ok((cursor, Vec::new()));
        }
        let (slot, entry) = self.conn().await?;
        let mut conn = entry.conn.clone();
        if cursor == ScanCursor::START || self.masters.read().is_empty() {
            let listing =
                async { Ok::<_, redis::RedisError>(list_masters(&mut conn.clone()).await) };
            let masters = slot
                .watch(&entry, &self.label, listing)
                .await?
                .map_err(|e| transport_error(&e, "CLUSTER SLOTS"))??;
            *self.masters.write() = masters;
        }
        let Some((host, port)) = self.masters.read().get(cursor.node).cloned() else {
            return Ok((ScanCursor::done(), Vec::new()));
        };
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor.cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port,
        });
        let result = slot
            .watch(&entry, &self.label, conn.route_command(scan, routing))
            .await?;
        let value = reply(result, || format!("SCAN on master {host}:{port}"))?;
        if let Value::Error(e) = &value {
            return Err(TransportError::new(
                ErrorKind::Unavailable,
                format!("SCAN on master {host}:{port} failed: {e}; retry later"),
            ));
        }
        let (next, keys) = parse_scan_reply(value)?;
        let masters = self.masters.read().len();
        let next = if next != 0 {
            ScanCursor::at(cursor.node, next)
        } else if cursor.node + 1 < masters {
            ScanCursor::at(cursor.node + 1, 0)
        } else {
            ScanCursor::done()
        };
        Ok((next, keys))
    }
}

async fn open_conn(
    conns: &Arc<[Slot]>,
    i: usize,
    client: &ClusterClient,
    label: &str,
    stall: Duration,
) -> Result<Arc<Entry>, TransportError> {
    let slot = &conns[i];
    if let Some(entry) = slot.current.load_full() {
        return Ok(entry);
    }
    let _opening = slot.opening.lock().await;
    if let Some(entry) = slot.current.load_full() {
        return Ok(entry);
    }
    let conn = client
        .get_async_connection()
        .await
        .map_err(|e| transport_error(&e, &format!("connecting to cluster {label}")))?;
    let entry = Arc::new(Entry {
        conn,
        answered: AtomicU64::new(slot.now_ms()),
        in_flight: AtomicUsize::new(0),
        dead: AtomicBool::new(false),
        died: Notify::new(),
    });
    slot.current.store(Some(entry.clone()));
    tokio::spawn(watchdog(
        conns.clone(),
        i,
        Arc::downgrade(&entry),
        stall,
        label.to_owned(),
    ));
    Ok(entry)
}

/// Lists the masters with `CLUSTER SLOTS`, in slot order, without duplicates.
async fn list_masters(conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>, TransportError> {
    let cmd = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
    let value = conn
        .req_packed_command(&cmd)
        .await
        .map_err(|e| transport_error(&e, "CLUSTER SLOTS"))?;
    parse_cluster_slots(from_redis_value(value))
}

/// Parses a `CLUSTER SLOTS` reply into the masters, ordered by their first slot.
pub(crate) fn parse_cluster_slots(value: Value) -> Result<Vec<(String, u16)>, TransportError> {
    let bad = |what: &str| {
        TransportError::new(
            ErrorKind::Protocol,
            format!("unexpected CLUSTER SLOTS reply: {what}"),
        )
    };
    let Value::Array(ranges) = value else {
        return Err(bad(&format!("{value:?}")));
    };
    let mut found: Vec<(i64, String, u16)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad("a range is not an array"));
        };
        let start = parts
            .first()
            .and_then(Value::as_int)
            .ok_or_else(|| bad("no start slot"))?;
        let Some(Value::Array(master)) = parts.get(2) else {
            return Err(bad("a range has no master"));
        };
        let host = master
            .first()
            .and_then(|h| h.as_bytes())
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .ok_or_else(|| bad("master without host"))?;
        let port = master
            .get(1)
            .and_then(Value::as_int)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| bad("master without port"))?;
        match found.iter_mut().find(|(_, h, p)| *h == host && *p == port) {
            Some(entry) => entry.0 = entry.0.min(start),
            None => found.push((start, host, port)),
        }
    }
    found.sort_by_key(|(start, _, _)| *start);
    Ok(found.into_iter().map(|(_, h, p)| (h, p)).collect())
}

fn master_of(slot: u16) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
}

/// Runs the sub-commands of a plan: one pipeline per slot and the keyless commands one by
/// one, all concurrently, calling `heard` as each answers (the watchdog's sign of life).
/// Returns the replies indexed like `subs`.
async fn run_subs(
    conn: ClusterConnection,
    subs: Vec<Sub>,
    heard: &(dyn Fn() -> u64 + Sync),
) -> Result<Vec<Value>, TransportError> {
    let (groups, keyless) = Plan::groups(&subs);
    let subs = &subs;
    let slot_runs = groups.into_iter().map(|(slot, idxs)| {
        let mut conn = conn.clone();
        async move {
            let values = if idxs.len() == 1 {
                let cmd = &subs[idxs[0]].cmd;
                let result = conn
                    .route_command(to_redis_cmd(cmd), RoutingInfo::SingleNode(master_of(slot)))
                    .await;
                if !matches!(&result, Err(e) if e.is_timeout()) {
                    heard();
                }
                vec![reply(result, || cmd.name())?]
            } else {
                let pipe = to_redis_pipeline(idxs.iter().map(|&i| &subs[i].cmd));
                let result = conn
                    .route_pipeline(pipe, 0, idxs.len(), master_of(slot))
                    .await;
                if !matches!(&result, Err(e) if e.is_timeout()) {
                    heard();
                }
                replies(result, idxs.len(), || format!("pipeline on slot {slot}"))?
            };
            Ok::<_, TransportError>(idxs.into_iter().zip(values).collect::<Vec<_>>())
        }
    });
    let keyless_runs = keyless.into_iter().map(|i| {
        let mut conn = conn.clone();
        async move {
            let cmd = &subs[i].cmd;
            let result = conn.req_packed_command(&to_redis_cmd(cmd)).await;
            if !matches!(&result, Err(e) if e.is_timeout()) {
                heard();
            }
            Ok::<_, TransportError>(vec![(i, reply(result, || cmd.name())?)])
        }
    });
    let (by_slot, by_name) =
        futures_util::future::try_join(try_join_all(slot_runs), try_join_all(keyless_runs)).await?;
    let mut results = vec![Value::Nil; subs.len()];
    for (i, v) in by_slot.into_iter().chain(by_name).flatten() {
        results[i] = v;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Bulk(Bytes::copy_from_slice(host.as_bytes())),
            Value::Int(port),
            Value::Bulk(Bytes::from_static(b"id")),
        ])
    }

    #[test]
    fn cluster_slots_give_masters_in_slot_order() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7002),
                node("127.0.0.1", 7005),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
            ]),
            Value::Array(vec![
                Value::Int(16000),
                Value::Int(16001),
                node("127.0.0.1", 7000),
            ]),
        ]);
        assert_eq!(
            parse_cluster_slots(reply).unwrap(),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
        assert!(parse_cluster_slots(Value::Int(1)).is_err());
    }
}
