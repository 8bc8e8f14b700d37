//! Redis Sentinel: find the master through the sentinels and follow it across failovers.
//!
//! redis-rs's `SentinelClient` resolves the master once and never again: after a
//! `SENTINEL FAILOVER` the old master kept accepting writes for ~11 s here, and those writes
//! were lost when it became a replica. This transport:
//!
//! - **resolves** the master with `SENTINEL get-master-addr-by-name` (asking each sentinel in
//!   turn) and **verifies** it with `ROLE` before using it;
//! - **listens** on every sentinel (one pub/sub connection each, reconnected with backoff)
//!   and moves to the new master as soon as the failover makes it one: at
//!   `+failover-state-wait-promotion` (the leader has just sent `REPLICAOF NO ONE` to the
//!   chosen replica), confirmed with `ROLE` on the replica, or at `+switch-master` at the
//!   latest. From that moment no command is sent to the old master. Waiting for
//!   `+switch-master` alone would leave ~0.9 s (measured here) in which writes reach the old
//!   master after the replica stopped replicating from it — writes the failover then loses;
//! - **fences** the master it left: a sentinel that has not heard of the failover yet, and
//!   the old master (which keeps answering `ROLE master` until the sentinels demote it ~10 s
//!   later), cannot lead the transport back to it; only a new announcement can;
//! - **re-resolves** when the master stops answering (I/O errors, timeouts) and when it
//!   answers `READONLY`: a command refused with `READONLY` did not run, so it is retried on
//!   the new master (or, while a promotion is under way, on the promoted replica once it
//!   accepts writes);
//! - re-resolves each time a sentinel subscription is (re)established, so an announcement
//!   missed while disconnected is caught up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use larder_core::{Cmd, ErrorKind, TransportError, Value};
use parking_lot::{Mutex, RwLock};
use redis::aio::ConnectionLike;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::task::JoinHandle;

use super::convert::{from_redis_value, transport_error};
use super::pool::Pool;
use crate::options::Settings;

/// The pub/sub channel sentinels announce a completed failover on.
const SWITCH_MASTER: &str = "+switch-master";
/// The channel the failover leader announces on right after sending `REPLICAOF NO ONE` to
/// the replica it chose.
const WAIT_PROMOTION: &str = "+failover-state-wait-promotion";
/// How long a replica named by `+failover-state-wait-promotion` has to answer `ROLE master`
/// before the transport goes back to asking the sentinels.
const PROMOTION_GRACE: Duration = Duration::from_secs(2);
/// How often the promoted replica's `ROLE` is checked, and how long a command refused with
/// `READONLY` waits before it is retried during a promotion.
const PROMOTION_POLL: Duration = Duration::from_millis(10);
/// How long a master the transport moved away from stays fenced (ignored when a sentinel
/// still names it) unless a new announcement names it.
const FENCE_TTL: Duration = Duration::from_secs(60);
/// Retries of one call refused with `READONLY`.
const READONLY_RETRIES: usize = 50;
/// Re-resolutions triggered by errors are at most this frequent.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// First wait before reconnecting a lost sentinel subscription.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting a lost sentinel subscription.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The master in use and the connections to it.
#[derive(Debug)]
struct Master {
    host: String,
    port: u16,
    pool: Pool,
    /// Increases with every switch.
    epoch: u64,
}

struct Shared {
    master_name: String,
    sentinels: Vec<ConnectionInfo>,
    /// How connections to a master are made (credentials, db, TLS or not).
    master_template: ConnectionInfo,
    settings: Settings,
    current: RwLock<Arc<Master>>,
    /// Serializes re-resolutions; holds when the last one started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    switches: AtomicU64,
    /// A background re-resolution is queued or running.
    refreshing: AtomicBool,
    /// The transport moved to a replica being promoted that has not confirmed `ROLE master`
    /// yet.
    promoting: AtomicBool,
    /// Masters the transport moved away from, and since when.
    fenced: Mutex<Vec<(String, u16, Instant)>>,
    closed: AtomicBool,
    /// The epoch of the master in use, for the pub/sub connection to follow.
    moved: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn is_fenced(&self, host: &str, port: u16) -> bool {
        let mut fenced = self.fenced.lock();
        fenced.retain(|(_, _, since)| since.elapsed() < FENCE_TTL);
        fenced.iter().any(|(h, p, _)| h == host && *p == port)
    }

    fn unfence(&self, host: &str, port: u16) {
        self.fenced
            .lock()
            .retain(|(h, p, _)| !(h == host && *p == port));
    }
}

/// A master found and followed through Redis Sentinel.
pub(crate) struct Sentinel {
    shared: Arc<Shared>,
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.shared.current.read().clone();
        f.debug_struct("Sentinel")
            .field("master_name", &self.shared.master_name)
            .field("master", &format_args!("{}:{}", m.host, m.port))
            .field(
                "sentinels",
                &self
                    .shared
                    .sentinels
                    .iter()
                    .map(|s| s.addr().to_string())
                    .collect::<Vec<_>>(),
            )
            .field(
                "failovers_followed",
                &self.shared.switches.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        for w in self.watchers.lock().drain(..) {
            w.abort();
        }
    }
}

impl Sentinel {
    /// Resolves and verifies the master, opens `min_idle_conns` connections to it and starts
    /// watching every sentinel.
    pub(crate) async fn connect(
        master_name: String,
        sentinels: Vec<ConnectionInfo>,
        master_template: ConnectionInfo,
        settings: Settings,
    ) -> Result<Sentinel, TransportError> {
        if sentinels.is_empty() {
            return Err(TransportError::new(
                ErrorKind::Refused,
                "no sentinel address given; pass at least one in Servers::Sentinel",
            ));
        }
        let (host, port) = resolve(
            &master_name,
            &sentinels,
            &master_template,
            &settings,
            &|_, _| false,
        )
        .await?;
        let pool = Pool::connect(master_info(&master_template, &host, port)?, &settings).await?;
        let shared = Arc::new(Shared {
            master_name,
            sentinels,
            master_template,
            settings,
            current: RwLock::new(Arc::new(Master {
                host,
                port,
                pool,
                epoch: 0,
            })),
            refresh: tokio::sync::Mutex::new(None),
            switches: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            promoting: AtomicBool::new(false),
            fenced: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            moved: tokio::sync::watch::Sender::new(0),
        });
        let watchers = (0..shared.sentinels.len())
            .map(|i| tokio::spawn(watch(Arc::downgrade(&shared), i)))
            .collect();
        Ok(Sentinel {
            shared,
            watchers: Mutex::new(watchers),
        })
    }

    /// The master in use, as `host:port`.
    pub(crate) fn master_addr(&self) -> String {
        let m = self.shared.current.read();
        format!("{}:{}", m.host, m.port)
    }

    /// Where the pub/sub connection goes: the master in use now; it moves when the
    /// transport follows a failover.
    pub(crate) fn pubsub_source(&self) -> super::pubsub::Source {
        let shared = Arc::downgrade(&self.shared);
        let fallback = self.shared.master_template.clone();
        super::pubsub::Source::Sentinel {
            current: Box::new(move || {
                let Some(s) = shared.upgrade() else {
                    return fallback.clone();
                };
                let m = s.current.read().clone();
                master_info(&s.master_template, &m.host, m.port)
                    .unwrap_or_else(|_| fallback.clone())
            }),
            moved: self.shared.moved.subscribe(),
        }
    }

    /// How many times the transport moved to a new master.
    pub(crate) fn switches(&self) -> u64 {
        self.shared.switches.load(Ordering::Relaxed)
    }

    /// Stops watching the sentinels.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        for w in self.watchers.lock().drain(..) {
            w.abort();
        }
    }

    /// Runs one command on the master (see the module docs for `READONLY` and errors).
    pub(crate) async fn exec(&self, cmd: &Cmd) -> Result<Value, TransportError> {
        let mut retries = 0;
        loop {
            let master = self.shared.current.read().clone();
            let result = master.pool.exec(cmd).await;
            match &result {
                Ok(v) if is_readonly(v) && retries < READONLY_RETRIES => {
                    retries += 1;
                    if self.after_readonly(&master).await {
                        continue;
                    }
                }
                Err(e) => self.after_error(e),
                Ok(_) => {}
            }
            return result;
        }
    }

    /// Runs a pipeline on the master (see the module docs for `READONLY` and errors).
    pub(crate) async fn pipeline(&self, cmds: &[Cmd]) -> Result<Vec<Value>, TransportError> {
        let mut retries = 0;
        loop {
            let master = self.shared.current.read().clone();
            let result = master.pool.pipeline(cmds).await;
            match &result {
                // On a replica every write was refused and nothing was written: the whole
                // pipeline can run again on the master.
                Ok(values) if values.iter().any(is_readonly) && retries < READONLY_RETRIES => {
                    retries += 1;
                    if self.after_readonly(&master).await {
                        continue;
                    }
                }
                Err(e) => self.after_error(e),
                Ok(_) => {}
            }
            return result;
        }
    }

    /// The master answered `READONLY`. Returns whether to try again: after a short wait
    /// while a promotion is under way, or when re-resolving found a new master.
    async fn after_readonly(&self, used: &Arc<Master>) -> bool {
        if self.shared.promoting.load(Ordering::Acquire) {
            tokio::time::sleep(PROMOTION_POLL).await;
            return true;
        }
        let _ = refresh(&self.shared, "the master answered READONLY").await;
        self.shared.current.read().epoch != used.epoch
    }

    /// The master did not answer: look for another in the background (the caller already
    /// has its answer and must not wait for the sentinels).
    fn after_error(&self, e: &TransportError) {
        if matches!(
            e.kind(),
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Unavailable
        ) && !self.shared.refreshing.swap(true, Ordering::AcqRel)
        {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _ = refresh(&shared, "the master is not answering").await;
                shared.refreshing.store(false, Ordering::Release);
            });
        }
    }
}

fn is_readonly(v: &Value) -> bool {
    matches!(v, Value::Error(e) if e.starts_with("READONLY"))
}

/// The connection info of a master at `host:port`, with the template's credentials and TLS.
pub(super) fn master_info(
    template: &ConnectionInfo,
    host: &str,
    port: u16,
) -> Result<ConnectionInfo, TransportError> {
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    Ok(template.clone().set_addr(addr))
}

fn conn_config(s: &Settings) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(s.dial_timeout))
        .set_response_timeout(Some(s.response_timeout()))
}

/// Runs one command on a fresh connection, bounded by the call budget.
async fn one_shot(
    info: &ConnectionInfo,
    s: &Settings,
    cmd: redis::Cmd,
) -> Result<Value, TransportError> {
    let label = info.addr().to_string();
    let work = async {
        let client = s
            .client(info.clone())
            .map_err(|e| transport_error(&e, &label))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&conn_config(s))
            .await
            .map_err(|e| transport_error(&e, &format!("connecting to {label}")))?;
        let v = conn
            .req_packed_command(&cmd)
            .await
            .map_err(|e| transport_error(&e, &label))?;
        Ok(from_redis_value(v))
    };
    match tokio::time::timeout(s.call_budget(), work).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::new(
            ErrorKind::Timeout,
            format!(
                "{label} did not answer within {} ms",
                s.call_budget().as_millis()
            ),
        )),
    }
}

/// Asks the sentinels for the master and checks it with `ROLE`.
async fn resolve(
    name: &str,
    sentinels: &[ConnectionInfo],
    template: &ConnectionInfo,
    s: &Settings,
    fenced: &(dyn Fn(&str, u16) -> bool + Sync),
) -> Result<(String, u16), TransportError> {
    let mut problems = Vec::new();
    for sentinel in sentinels {
        let label = sentinel.addr().to_string();
        let ask = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .to_owned();
        let (host, port) = match one_shot(sentinel, s, ask).await {
            Ok(Value::Array(parts)) if parts.len() == 2 => {
                let host = parts[0]
                    .as_bytes()
                    .map(|h| String::from_utf8_lossy(h).into_owned());
                let port = parts[1].as_int().and_then(|p| u16::try_from(p).ok());
                match (host, port) {
                    (Some(h), Some(p)) => (h, p),
                    _ => {
                        problems.push(format!("sentinel {label} sent a malformed address"));
                        continue;
                    }
                }
            }
            Ok(Value::Nil) => {
                problems.push(format!(
                    "sentinel {label} does not know a master named {name:?}"
                ));
                continue;
            }
            Ok(Value::Error(e)) => {
                problems.push(format!("sentinel {label} answered {e}"));
                continue;
            }
            Ok(other) => {
                problems.push(format!("sentinel {label} answered {other:?}"));
                continue;
            }
            Err(e) => {
                problems.push(format!("sentinel {label}: {}", e.message()));
                continue;
            }
        };
        if fenced(&host, port) {
            problems.push(format!(
                "sentinel {label} still names {host}:{port}, the master a failover just replaced"
            ));
            continue;
        }
        match role_is_master(template, &host, port, s).await {
            Ok(true) => return Ok((host, port)),
            Ok(false) => problems.push(format!(
                "sentinel {label} names {host}:{port}, but ROLE there is not master (failover in progress?)"
            )),
            Err(e) => problems.push(format!("master {host}:{port} named by {label}: {}", e.message())),
        }
    }
    let auth = problems
        .iter()
        .any(|p| p.contains("WRONGPASS") || p.contains("NOAUTH"));
    Err(TransportError::new(
        if auth {
            ErrorKind::Auth
        } else {
            ErrorKind::Unavailable
        },
        format!(
            "no master for {name:?} could be confirmed through the sentinels ({}); check the \
             sentinel addresses, the master name and the passwords, or retry after the failover",
            problems.join("; ")
        ),
    ))
}

async fn role_is_master(
    template: &ConnectionInfo,
    host: &str,
    port: u16,
    s: &Settings,
) -> Result<bool, TransportError> {
    let info = master_info(template, host, port)?;
    match one_shot(&info, s, redis::cmd("ROLE")).await? {
        Value::Array(parts) => Ok(parts
            .first()
            .and_then(Value::as_bytes)
            .is_some_and(|r| r == b"master")),
        Value::Error(e) => Err(TransportError::new(ErrorKind::Other, e)),
        _ => Ok(false),
    }
}

/// Moves to the master at `host:port` at once (connections open on first use). Returns
/// whether it was a change.
fn switch_to(shared: &Shared, host: String, port: u16, why: &str) -> Result<bool, TransportError> {
    let mut current = shared.current.write();
    if current.host == host && current.port == port {
        return Ok(false);
    }
    let pool = Pool::lazy(
        master_info(&shared.master_template, &host, port)?,
        &shared.settings,
    )?;
    let old = format!("{}:{}", current.host, current.port);
    shared
        .fenced
        .lock()
        .push((current.host.clone(), current.port, Instant::now()));
    let epoch = current.epoch + 1;
    *current = Arc::new(Master {
        host,
        port,
        pool,
        epoch,
    });
    let new = format!("{}:{}", current.host, current.port);
    drop(current);
    shared.moved.send_replace(epoch);
    shared.switches.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        master_name = %shared.master_name,
        old = %old,
        new = %new,
        reason = why,
        "larder: following Redis Sentinel failover"
    );
    metrics::counter!("larder_redis_sentinel_switches_total").increment(1);
    Ok(true)
}

/// Asks the sentinels again (single-flight, at most every [`MIN_REFRESH_INTERVAL`]) and moves
/// to the master they confirm.
async fn refresh(shared: &Arc<Shared>, why: &str) -> Result<(), TransportError> {
    let epoch = shared.current.read().epoch;
    let mut last = shared.refresh.lock().await;
    if shared.current.read().epoch != epoch {
        return Ok(()); // someone else already moved on while we waited
    }
    if (*last).is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL) {
        return Ok(());
    }
    *last = Some(Instant::now());
    let fenced = |h: &str, p: u16| shared.is_fenced(h, p);
    let (host, port) = resolve(
        &shared.master_name,
        &shared.sentinels,
        &shared.master_template,
        &shared.settings,
        &fenced,
    )
    .await?;
    switch_to(shared, host, port, why)?;
    Ok(())
}

/// Parses a `+switch-master` payload: `<name> <old-ip> <old-port> <new-ip> <new-port>`.
fn parse_switch(payload: &str, name: &str) -> Option<(String, u16)> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        [n, _, _, host, port] if *n == name => Some(((*host).to_owned(), port.parse().ok()?)),
        _ => None,
    }
}

/// Parses a `+failover-state-wait-promotion` payload:
/// `slave <ip>:<port> <ip> <port> @ <name> <master-ip> <master-port>`. Returns the replica
/// being promoted and the master it replaces.
fn parse_promotion(payload: &str, name: &str) -> Option<((String, u16), (String, u16))> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        ["slave", _, host, port, "@", n, mhost, mport] if *n == name => Some((
            ((*host).to_owned(), port.parse().ok()?),
            ((*mhost).to_owned(), mport.parse().ok()?),
        )),
        _ => None,
    }
}

/// The leader sent `REPLICAOF NO ONE` to `target`: stop using the old master now, and make
/// sure the replica really becomes a master (else ask the sentinels again).
fn begin_promotion(shared: &Arc<Shared>, target: (String, u16), old: (String, u16), why: &str) {
    {
        let current = shared.current.read();
        if current.host != old.0 || current.port != old.1 {
            return; // not the master we use
        }
    }
    shared.promoting.store(true, Ordering::Release);
    if !switch_to(shared, target.0.clone(), target.1, why).unwrap_or(false) {
        shared.promoting.store(false, Ordering::Release);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let confirmed = loop {
            match role_is_master(
                &shared.master_template,
                &target.0,
                target.1,
                &shared.settings,
            )
            .await
            {
                Ok(true) => break true,
                _ if start.elapsed() >= PROMOTION_GRACE => break false,
                _ => tokio::time::sleep(PROMOTION_POLL).await,
            }
        };
        shared.promoting.store(false, Ordering::Release);
        if !confirmed {
            // The promotion did not happen (the failover may have been aborted): the old
            // master may still be the master.
            shared.unfence(&old.0, old.1);
            let _ = refresh(&shared, "the replica being promoted never became a master").await;
        }
    });
}

/// Watches one sentinel for `+switch-master` until the transport is dropped or closed.
async fn watch(shared: Weak<Shared>, index: usize) {
    let mut backoff = super::pubsub::reconnect_backoff(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
    let mut first = true;
    loop {
        let Some(s) = shared.upgrade() else { return };
        if s.closed.load(Ordering::Acquire) {
            return;
        }
        let info = s.sentinels[index].clone();
        let label = info.addr().to_string();
        let dial = s.settings.dial_timeout;
        let client = s.settings.client(info);
        drop(s);

        let subscribed = tokio::time::timeout(dial + dial, async {
            let mut pubsub = client?.get_async_pubsub().await?;
            pubsub.subscribe(&[SWITCH_MASTER, WAIT_PROMOTION]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                backoff = super::pubsub::reconnect_backoff(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
                if !first {
                    // Catch up on an announcement missed while we were not subscribed.
                    if let Some(s) = shared.upgrade() {
                        let _ = refresh(&s, "a sentinel subscription was re-established").await;
                    }
                }
                first = false;
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(s) = shared.upgrade() else { return };
                    let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    match msg.get_channel_name() {
                        WAIT_PROMOTION => {
                            if let Some((target, old)) = parse_promotion(&payload, &s.master_name) {
                                let why = format!("{WAIT_PROMOTION} from sentinel {label}");
                                begin_promotion(&s, target, old, &why);
                            }
                        }
                        _ => {
                            if let Some((host, port)) = parse_switch(&payload, &s.master_name) {
                                let why = format!("{SWITCH_MASTER} from sentinel {label}");
                                // An announcement overrides any fence on the new master.
                                s.unfence(&host, port);
                                if switch_to(&s, host.clone(), port, &why).unwrap_or(false) {
                                    // Check the new master in the background; ask again if it
                                    // is not one.
                                    let s2 = s.clone();
                                    tokio::spawn(async move {
                                        let ok = role_is_master(
                                            &s2.master_template,
                                            &host,
                                            port,
                                            &s2.settings,
                                        )
                                        .await;
                                        if !matches!(ok, Ok(true)) {
                                            let _ = refresh(
                                                &s2,
                                                "the announced master does not confirm ROLE master",
                                            )
                                            .await;
                                        }
                                    });
                                }
                            }
                        }
                    }
                }
                tracing::debug!(sentinel = %label, "larder: sentinel subscription lost; reconnecting");
            }
            Ok(Err(e)) => {
                tracing::debug!(sentinel = %label, error = %e, "larder: cannot subscribe to sentinel");
            }
            Err(_) => {
                tracing::debug!(sentinel = %label, "larder: sentinel subscription timed out");
            }
        }
        tokio::time::sleep(backoff.next().unwrap_or(WATCH_BACKOFF_MAX)).await;
    }
}

/// A sentinel's connection info from an address (`host:port` or a URL), with the sentinel
/// credentials.
pub(crate) fn sentinel_info(
    addr: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, TransportError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    };
    let info = url.as_str().into_connection_info().map_err(|e| {
        TransportError::new(
            ErrorKind::Refused,
            format!(
                "invalid sentinel address {}: {e}",
                crate::options::redact_url(addr)
            ),
        )
    })?;
    let mut redis = info.redis_settings().clone().set_db(0);
    if let Some(u) = username {
        redis = redis.set_username(u);
    }
    if let Some(p) = password {
        redis = redis.set_password(p);
    }
    Ok(info.set_redis_settings(redis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_payloads() {
        assert_eq!(
            parse_switch("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            Some(("127.0.0.1".to_owned(), 6380))
        );
        assert_eq!(
            parse_switch("other 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            None
        );
        assert_eq!(parse_switch("mymaster 127.0.0.1 6379", "mymaster"), None);
        assert_eq!(parse_switch("mymaster a 1 b notaport", "mymaster"), None);
    }

    #[test]
    fn wait_promotion_payloads() {
        assert_eq!(
            parse_promotion(
                "slave 127.0.0.1:43661 127.0.0.1 43661 @ mymaster 127.0.0.1 33377",
                "mymaster"
            ),
            Some((
                ("127.0.0.1".to_owned(), 43661),
                ("127.0.0.1".to_owned(), 33377)
            ))
        );
        assert_eq!(
            parse_promotion(
                "slave 127.0.0.1:43661 127.0.0.1 43661 @ other 127.0.0.1 33377",
                "mymaster"
            ),
            None
        );
        assert_eq!(
            parse_promotion("master mymaster 127.0.0.1 33377", "mymaster"),
            None
        );
    }

    #[test]
    fn readonly_detection() {
        assert!(is_readonly(&Value::Error(
            "READONLY You can't write against a read only replica.".into()
        )));
        assert!(!is_readonly(&Value::Error("ERR x".into())));
        assert!(!is_readonly(&Value::Nil));
    }

    #[test]
    fn master_info_keeps_credentials() {
        let template = sentinel_info("127.0.0.1:1", None, Some("pw")).unwrap();
        let info = master_info(&template, "10.1.2.3", 7000).unwrap();
        assert_eq!(info.addr().to_string(), "10.1.2.3:7000");
        assert_eq!(info.redis_settings().password(), Some("pw"));
    }
}
