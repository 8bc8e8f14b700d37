//! [`RedisTransport`]: larder's [`Transport`] on redis-rs, for a standalone server, a Redis
//! Cluster or a Sentinel-managed master.
//!
//! The transport translates and bounds; it decides nothing that core could decide. Per
//! topology it adds what redis-rs's defaults lack under failure (measured in the design
//! notes): a reconnect policy that fails fast while Redis is down, slot-aware pipelines and
//! full-cluster scans, and a Sentinel client that follows failovers. No call takes longer than
//! `dial_timeout + write_timeout + read_timeout`: by construction where the parts are bounded
//! (a timed connect, then redis-rs's response timeout), else under a timer set to that budget
//! (see `RedisTransport::bounds_requests`).

mod cluster;
pub(crate) mod convert;
mod pool;
mod pubsub;
mod sentinel;
mod slots;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Either;
use larder_core::transport::BoxSubscription;
use larder_core::{Cmd, Error, ErrorKind, ScanCursor, Transport, TransportError, Value};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tracing::Instrument;

use crate::options::{RedisOptions, Servers, Settings, redact_url};
use cluster::Cluster;
use convert::{deadline_error, unavailable_reply};
use pool::Pool;
pub use pubsub::PubSubStatus;
use pubsub::{Hub, Source};
use sentinel::Sentinel;

/// Which kind of deployment a [`RedisTransport`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Topology {
    /// One server.
    Standalone,
    /// A Redis Cluster.
    Cluster,
    /// A master found through Redis Sentinel.
    Sentinel,
}

impl Topology {
    /// `"standalone"`, `"cluster"` or `"sentinel"` (stable, for logs and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Standalone => "standalone",
            Topology::Cluster => "cluster",
            Topology::Sentinel => "sentinel",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

enum Backend {
    Standalone(Pool),
    Cluster(Box<Cluster>),
    Sentinel(Sentinel),
}

struct Inner {
    backend: Backend,
    /// The pub/sub connection (opened on the first subscribe).
    pubsub: Hub,
    /// The hard limit of one call.
    budget: Duration,
    closed: AtomicBool,
}

/// A [`Transport`] over redis-rs: standalone, Cluster or Sentinel. Cheap to clone (clones
/// share the connections).
///
/// Build one with [`connect`](RedisTransport::connect) (a URL) or
/// [`from_options`](RedisTransport::from_options) (standalone, Cluster or Sentinel), and a
/// cache around it with `RedisCache::builder(transport)`.
///
/// # Errors and time limits
///
/// A command the server rejects comes back in band as [`Value::Error`] with the server's
/// text (`WRONGTYPE …`, `NOSCRIPT …`). `Err` means the transport failed:
/// [`ErrorKind::Io`] (refused, reset), [`ErrorKind::Timeout`], [`ErrorKind::Auth`],
/// [`ErrorKind::Protocol`], [`ErrorKind::Closed`], or [`ErrorKind::Unavailable`] — no
/// master known, or a reply that says the server cannot serve anyone right now (`LOADING`,
/// `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`), which fails the whole
/// call, pipelines included. No call takes longer than
/// [`call_timeout`](RedisTransport::call_timeout).
///
/// # Pub/sub
///
/// [`subscribe`](Transport::subscribe) works on every topology, over one dedicated
/// connection per transport (cloned transports share it) that opens on the first subscribe.
/// Channels are multiplexed on it and reference-counted: the first subscription to a channel
/// sends `SUBSCRIBE`, dropping the last sends `UNSUBSCRIBE`.
///
/// - **Standalone**: on the server. **Cluster**: on any one reachable node — a classic
///   `PUBLISH` reaches every node of a Redis Cluster, so one subscription hears publishes
///   made on any node; when that node dies the connection moves to another (the masters
///   from `CLUSTER SLOTS`, then the seeds). **Sentinel**: on the master in use; when the
///   transport follows a failover the connection moves to the new master.
/// - **Lost connections** (server restart, node death, no answer to a `PING` sent every
///   5 s) are re-established in the background with backoff (25 ms doubling to 1 s), and
///   every live channel is subscribed again; [`pubsub_status`](RedisTransport::pubsub_status)
///   counts the reconnects. Subscriptions stay open across this.
/// - **Delivery is at-most-once**, as with Redis itself: messages published while the
///   connection is down (or while it moves) are lost. Each subscription counts such a gap in
///   [`Subscription::gaps`](larder_core::transport::Subscription::gaps). larder's users of
///   pub/sub are built for this: lease waiters also poll with backoff (a lost wake-up costs
///   latency, never correctness) and look at the lease again as soon as a gap is reported;
///   the tiered cache's backplane clears its L1 after a gap.
/// - **Bounded**: `subscribe` returns within [`call_timeout`](RedisTransport::call_timeout);
///   while Redis is unreachable it fails fast with the last connect error.
///   [`close`](Transport::close) ends every subscription (`None` from the stream).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> larder_core::Result<()> {
/// use larder_core::{Cmd, Transport};
/// use larder_native::RedisTransport;
///
/// let redis = RedisTransport::connect("redis://127.0.0.1:6379").await?;
/// let pong = redis.exec(Cmd::new("PING")).await?;
/// assert!(pong.as_bytes() == Some(b"PONG"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisTransport");
        match &self.inner.backend {
            Backend::Standalone(p) => d.field("standalone", p),
            Backend::Cluster(c) => d.field("cluster", c),
            Backend::Sentinel(s) => d.field("sentinel", s),
        };
        d.field("pubsub", &self.inner.pubsub)
            .field("call_timeout", &self.inner.budget)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisTransport {
    /// Connects to the server (or cluster) a URL names: `redis://[user:password@]host:port[/db]`,
    /// `rediss://…` for TLS, or several comma-separated URLs for a Redis Cluster
    /// ([`RedisOptions::from_url`]). Other settings are the [`RedisOptions`] defaults.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a malformed URL; [`Error::Transport`] when the server
    /// cannot be reached or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        RedisTransport::from_options(&RedisOptions::from_url(url)).await
    }

    /// Connects as the options say: a standalone server, a Cluster, or the master of a
    /// Sentinel deployment (followed across failovers).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for bad options (no address, a malformed one, a database other
    /// than 0 on a Cluster, sentinel credentials on another topology, `rediss://` without
    /// the `tls` feature); [`Error::Transport`] when Redis cannot be reached in time (no
    /// sentinel names a master that confirms its role) or refuses the credentials.
    pub async fn from_options(opts: &RedisOptions) -> Result<Self, Error> {
        let settings = opts.settings();
        let (addrs, master_name) = match &opts.servers {
            Servers::Standalone(addr) => (std::slice::from_ref(addr), None),
            Servers::Cluster(addrs) => (addrs.as_slice(), None),
            Servers::Sentinel {
                master_name,
                sentinels,
            } => (sentinels.as_slice(), Some(master_name)),
        };
        if addrs.is_empty() {
            return Err(Error::InvalidInput(
                "no Redis address given; set RedisOptions::servers".into(),
            ));
        }
        if let Some(master_name) = master_name {
            return Self::sentinel(opts, master_name, settings).await;
        }
        if opts.sentinel_username.is_some() || opts.sentinel_password.is_some() {
            return Err(Error::InvalidInput(
                "sentinel credentials are set but the servers are not Servers::Sentinel".into(),
            ));
        }
        let infos = addrs
            .iter()
            .map(|a| connection_info(a, &settings))
            .collect::<Result<Vec<_>, _>>()?;
        let (backend, source) = match &opts.servers {
            Servers::Standalone(_) => {
                let info = infos.into_iter().next().expect("one address");
                let source = Source::Server(info.clone());
                (
                    Backend::Standalone(Pool::connect(info, &settings).await?),
                    source,
                )
            }
            _ => {
                if settings.db != 0 {
                    return Err(Error::InvalidInput(format!(
                        "Redis Cluster has only database 0, but db = {} was asked for",
                        settings.db
                    )));
                }
                let cluster = Cluster::connect(infos.clone(), &settings).await?;
                let source = cluster.pubsub_source(infos);
                (Backend::Cluster(Box::new(cluster)), source)
            }
        };
        Ok(RedisTransport::with_backend(backend, source, &settings))
    }

    /// Finds the master through Redis Sentinel.
    async fn sentinel(
        opts: &RedisOptions,
        master_name: &str,
        settings: Settings,
    ) -> Result<Self, Error> {
        let Servers::Sentinel { sentinels, .. } = &opts.servers else {
            unreachable!("called for Sentinel servers only");
        };
        if master_name.is_empty() {
            return Err(Error::InvalidInput(
                "empty master name in Servers::Sentinel".into(),
            ));
        }
        let infos = sentinels
            .iter()
            .map(|a| {
                sentinel::sentinel_info(
                    a,
                    opts.sentinel_username.as_deref(),
                    opts.sentinel_password.as_deref(),
                )
                .map_err(|e| Error::InvalidInput(e.message().to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Masters are reached like the first sentinel (TLS or not), with the master's
        // credentials.
        let template = {
            let scheme = if sentinels[0].starts_with("rediss://") {
                "rediss"
            } else {
                "redis"
            };
            connection_info(&format!("{scheme}://127.0.0.1:6379"), &settings)?
        };
        let sentinel =
            Sentinel::connect(master_name.to_owned(), infos, template, settings.clone()).await?;
        let source = sentinel.pubsub_source();
        Ok(RedisTransport::with_backend(
            Backend::Sentinel(sentinel),
            source,
            &settings,
        ))
    }

    fn with_backend(backend: Backend, source: Source, settings: &Settings) -> Self {
        RedisTransport {
            inner: Arc::new(Inner {
                backend,
                pubsub: Hub::new(source, settings),
                budget: settings.call_budget(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The kind of deployment this transport talks to.
    pub fn topology(&self) -> Topology {
        match &self.inner.backend {
            Backend::Standalone(_) => Topology::Standalone,
            Backend::Cluster(_) => Topology::Cluster,
            Backend::Sentinel(_) => Topology::Sentinel,
        }
    }

    /// The longest any one call may take (`dial_timeout + write_timeout + read_timeout`).
    pub fn call_timeout(&self) -> Duration {
        self.inner.budget
    }

    /// With Sentinel: the master in use now, as `host:port`.
    pub fn sentinel_master(&self) -> Option<String> {
        match &self.inner.backend {
            Backend::Sentinel(s) => Some(s.master_addr()),
            _ => None,
        }
    }

    /// The state of the pub/sub connection that [`subscribe`](Transport::subscribe) uses:
    /// the node it is on, the channels subscribed, how often it was re-established.
    pub fn pubsub_status(&self) -> PubSubStatus {
        self.inner.pubsub.status()
    }

    /// With Sentinel: how many times the transport has moved to a new master.
    pub fn failovers_followed(&self) -> u64 {
        match &self.inner.backend {
            Backend::Sentinel(s) => s.switches(),
            _ => 0,
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(TransportError::new(
                ErrorKind::Closed,
                "the Redis transport was closed; build a new one",
            ))
        } else {
            Ok(())
        }
    }

    /// Whether one `exec` or `pipeline` is bounded by the call budget without a timer of our
    /// own around it:
    ///
    /// - standalone: always — the pool times its connects and redis-rs's response timeout
    ///   covers each request (see `pool`);
    /// - Cluster: once every connection is open — redis-rs's overall response timeout (set
    ///   to the budget) covers a request with all its retries and redirections, but not the
    ///   first connect;
    /// - Sentinel: never — a call may wait for a promotion and re-resolve the master.
    fn bounds_requests(&self) -> bool {
        match &self.inner.backend {
            Backend::Standalone(_) => true,
            Backend::Cluster(c) => c.all_open(),
            Backend::Sentinel(_) => false,
        }
    }

    /// Runs `work` within the call budget, in a `larder.redis` span, recording metrics. Unless
    /// `bounded_inside` says `work` is bounded by construction (see
    /// [`bounds_requests`](Self::bounds_requests)), one timer set to the budget cuts it off.
    ///
    /// Not an `async fn`: that would keep `work` twice in its state (as the argument and
    /// inside the awaited future), and every call's future is boxed by `Transport`'s
    /// `async_trait`. `what` (the command, for the span) runs only when the span is enabled.
    fn call<'a, T, W>(
        &'a self,
        op: &'static str,
        what: impl FnOnce() -> String + Send + 'a,
        work: W,
        bounded_inside: bool,
    ) -> impl Future<Output = Result<T, TransportError>> + Send + 'a
    where
        T: Send + 'a,
        W: Future<Output = Result<T, TransportError>> + Send + 'a,
    {
        if let Err(e) = self.check_open() {
            return Either::Left(std::future::ready(Err(e)));
        }
        let budget = self.inner.budget;
        let bounded = if bounded_inside {
            Either::Left(work)
        } else {
            Either::Right(
                tokio::time::timeout(budget, work)
                    .map(move |r| r.unwrap_or_else(|_| Err(deadline_error(op, budget)))),
            )
        };
        let topology = self.topology().as_str();
        let span = tracing::debug_span!(
            "larder.redis",
            op,
            topology,
            command = tracing::field::Empty
        );
        if !span.is_disabled() {
            span.record("command", what());
        }
        let start = Instant::now();
        Either::Right(
            bounded
                .map(move |result| {
                    observe(op, topology, start.elapsed(), &result);
                    result
                })
                .instrument(span),
        )
    }
}

/// The log line and metrics of one Redis call (inside its span).
fn observe<T>(
    op: &'static str,
    topology: &'static str,
    elapsed: Duration,
    result: &Result<T, TransportError>,
) {
    match result {
        Ok(_) => tracing::trace!(op, topology, ?elapsed, "larder: redis call"),
        Err(e) => tracing::warn!(
            op,
            topology,
            kind = e.kind().as_str(),
            error = %e,
            ?elapsed,
            "larder: redis call failed"
        ),
    }
    metrics::counter!("larder_redis_calls_total", "op" => op, "topology" => topology).increment(1);
    metrics::histogram!("larder_redis_call_duration_seconds", "op" => op, "topology" => topology)
        .record(elapsed.as_secs_f64());
    if let Err(e) = result {
        metrics::counter!(
            "larder_redis_errors_total",
            "op" => op,
            "topology" => topology,
            "kind" => e.kind().as_str()
        )
        .increment(1);
    }
}

#[async_trait::async_trait]
impl Transport for RedisTransport {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        let name = || cmd.name();
        let work = async {
            let value = match &self.inner.backend {
                Backend::Standalone(p) => p.exec(&cmd).await,
                Backend::Cluster(c) => c.exec(&cmd).await,
                // Its future is several KB (failover handling): boxed, so that the others
                // do not carry its size.
                Backend::Sentinel(s) => Box::pin(s.exec(&cmd)).await,
            }?;
            match unavailable_reply(&cmd, &value) {
                Some(e) => Err(e),
                None => Ok(value),
            }
        };
        self.call("exec", name, work, self.bounds_requests()).await
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        if cmds.is_empty() {
            self.check_open()?;
            return Ok(Vec::new());
        }
        let what = || {
            let mut names: Vec<String> = cmds.iter().take(4).map(Cmd::name).collect();
            if cmds.len() > 4 {
                names.push(format!("…{} in all", cmds.len()));
            }
            names.join(",")
        };
        let work = async {
            let values = match &self.inner.backend {
                Backend::Standalone(p) => p.pipeline(&cmds).await,
                Backend::Cluster(c) => Box::pin(c.pipeline(cmds.clone())).await,
                Backend::Sentinel(s) => Box::pin(s.pipeline(&cmds)).await,
            }?;
            // A server that cannot serve (loading, read-only, cluster down) fails the whole
            // pipeline: its other replies cannot be trusted to mean what they say.
            match cmds
                .iter()
                .zip(&values)
                .find_map(|(cmd, value)| unavailable_reply(cmd, value))
            {
                Some(e) => Err(e),
                None => Ok(values),
            }
        };
        self.call("pipeline", what, work, self.bounds_requests())
            .await
    }

    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        match &self.inner.backend {
            Backend::Cluster(c) => {
                self.call(
                    "scan",
                    || format!("SCAN node {}", cursor.node),
                    c.scan_page(cursor, pattern, count),
                    false,
                )
                .await
            }
            // One node: core's default (`SCAN` through `exec`).
            _ => {
                if cursor.is_done() {
                    return Ok((cursor, Vec::new()));
                }
                let reply = self
                    .exec(
                        Cmd::new("SCAN")
                            .arg(cursor.cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(count),
                    )
                    .await?;
                let (next, keys) = larder_core::transport::parse_scan_reply(reply)?;
                let next = if next == 0 {
                    ScanCursor::done()
                } else {
                    ScanCursor::at(cursor.node, next)
                };
                Ok((next, keys))
            }
        }
    }

    async fn close(&self) -> Result<(), TransportError> {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner.pubsub.close();
            if let Backend::Sentinel(s) = &self.inner.backend {
                s.close();
            }
        }
        Ok(())
    }

    /// True: redis-rs keeps a persistent connection to subscribe on.
    fn supports_pubsub(&self) -> bool {
        true
    }

    /// Subscribes on the transport's one pub/sub connection (opened on first use, shared
    /// by every subscription; see [`RedisTransport`]'s "Pub/sub" section). Returns once
    /// Redis confirmed the `SUBSCRIBE`, within [`call_timeout`](RedisTransport::call_timeout).
    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.subscribe_topic(false, channel).await
    }

    /// Like [`subscribe`](Transport::subscribe), with `PSUBSCRIBE` on the same connection.
    async fn psubscribe(&self, pattern: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.subscribe_topic(true, pattern).await
    }
}

impl RedisTransport {
    async fn subscribe_topic(
        &self,
        pattern: bool,
        name: &[u8],
    ) -> Result<BoxSubscription, TransportError> {
        self.check_open()?;
        let topic = pubsub::Topic {
            pattern,
            name: Bytes::copy_from_slice(name),
        };
        let result = self.inner.pubsub.subscribe(topic, self.inner.budget).await;
        if let Err(e) = &result {
            tracing::warn!(
                channel = %String::from_utf8_lossy(name),
                pattern,
                topology = self.topology().as_str(),
                kind = e.kind().as_str(),
                error = %e,
                "larder: SUBSCRIBE failed"
            );
        }
        result
    }
}

/// The redis-rs connection info for an address (`host:port` or URL), with the options'
/// credentials and database applied over the URL's.
fn connection_info(addr: &str, s: &Settings) -> Result<ConnectionInfo, Error> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    };
    let info = url.as_str().into_connection_info().map_err(|e| {
        Error::InvalidInput(format!(
            "invalid Redis address {}: {e}; use host:port or redis://[user:password@]host:port[/db]",
            redact_url(addr)
        ))
    })?;
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        enable_tls()?;
    }
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &s.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &s.password {
        redis = redis.set_password(password);
    }
    if s.db != 0 {
        redis = redis.set_db(s.db);
    }
    Ok(info.set_redis_settings(redis))
}

#[cfg(feature = "tls")]
fn enable_tls() -> Result<(), Error> {
    // rustls needs a process-wide crypto provider; keep one that is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn enable_tls() -> Result<(), Error> {
    Err(Error::InvalidInput(
        "rediss:// (TLS) needs the `tls` feature of larder-native".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_credentials() {
        let s = RedisOptions::standalone("x")
            .password("pw")
            .db(3)
            .settings();
        let info = connection_info("127.0.0.1:6380", &s).unwrap();
        assert_eq!(info.addr().to_string(), "127.0.0.1:6380");
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().db(), 3);
        let plain = RedisOptions::standalone("x").settings();
        let info = connection_info("redis://:urlpw@h:1/2", &plain).unwrap();
        assert_eq!(info.redis_settings().password(), Some("urlpw"));
        assert_eq!(info.redis_settings().db(), 2);
        let err = connection_info("redis://:secretpw@h:notaport", &plain).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
        assert!(!err.to_string().contains("secretpw"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rediss_is_tls() {
        let s = RedisOptions::standalone("x").settings();
        let info = connection_info("rediss://cache.example.com:6380", &s).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
    }

    #[tokio::test]
    async fn unreachable_server_fails_fast_with_io() {
        // Bind then drop a listener: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = Instant::now();
        let err = RedisTransport::connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(err.transport_kind(), Some(ErrorKind::Io), "{err}");
    }

    /// A lazy transport (nothing opened yet) to a port nobody listens on, with a 400 ms
    /// budget.
    async fn unreachable_lazy_transport() -> RedisTransport {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = RedisOptions::standalone(format!("127.0.0.1:{port}"))
            .min_idle_conns(0)
            .dial_timeout(Duration::from_millis(200))
            .read_timeout(Duration::from_millis(100))
            .write_timeout(Duration::from_millis(100));
        RedisTransport::from_options(&opts).await.unwrap()
    }

    #[tokio::test]
    async fn lazy_transport_fails_calls_within_budget() {
        let t = unreachable_lazy_transport().await;
        assert_eq!(t.topology(), Topology::Standalone);
        assert_eq!(t.call_timeout(), Duration::from_millis(400));
        for _ in 0..3 {
            let start = Instant::now();
            let err = t.exec(Cmd::new("GET").arg("k")).await.unwrap_err();
            assert!(err.is_retryable(), "{err}");
            assert!(start.elapsed() <= t.call_timeout() + Duration::from_millis(50));
        }
        t.close().await.unwrap();
        assert_eq!(
            t.exec(Cmd::new("PING")).await.unwrap_err().kind(),
            ErrorKind::Closed
        );
    }

    #[tokio::test]
    async fn subscribe_to_an_unreachable_server_fails_within_budget() {
        let t = unreachable_lazy_transport().await;
        assert!(t.supports_pubsub());
        for _ in 0..3 {
            let start = Instant::now();
            let err = t.subscribe(b"ch").await.unwrap_err();
            assert!(err.is_retryable(), "{err}");
            assert!(
                start.elapsed() <= t.call_timeout() + Duration::from_millis(50),
                "{:?}",
                start.elapsed()
            );
        }
        let status = t.pubsub_status();
        assert_eq!((status.connected_to, status.channels), (None, 0));
        t.close().await.unwrap();
        assert_eq!(
            t.subscribe(b"ch").await.unwrap_err().kind(),
            ErrorKind::Closed
        );
    }

    #[tokio::test]
    async fn bad_options_are_invalid_input() {
        for opts in [
            RedisOptions::cluster(Vec::<String>::new()),
            RedisOptions::cluster(["a:1", "b:2"]).db(1),
            RedisOptions::sentinel("m", Vec::<String>::new()),
            RedisOptions::sentinel("", ["127.0.0.1:1"]),
            RedisOptions::standalone("127.0.0.1:1").sentinel_password("pw"),
        ] {
            let e = RedisTransport::from_options(&opts).await.unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{opts:?}: {e}");
        }
    }
}
