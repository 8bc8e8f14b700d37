//! Options of a Redis-backed cache: [`RedisCacheOptions`] (standalone or Cluster) and
//! [`SentinelOptions`] (a master found through Redis Sentinel).
//!
//! Both are plain values with chainable setters; passwords never appear in their `Debug`
//! output.

use std::fmt;
use std::time::Duration;

use larder_core::KeyScheme;

/// Connect timeout used when none is set.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Reply timeout used when none is set.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Write timeout used when none is set.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Multiplexed connections per server used when none is set.
///
/// Each connection is pipelined (any number of calls share it), so more connections do not
/// add server-side parallelism; they spread the client's encode/decode work over more tasks
/// and limit head-of-line blocking behind large values. Measured on 2 cores (GET of 1 KB,
/// 100 tasks): 2 connections were fastest on standalone and on Cluster; 4 were 12% (standalone)
/// and 20–30% (Cluster) slower, because each connection's writes and reads batch fewer
/// commands. Raise it on machines with many cores and heavy traffic, and measure.
pub const DEFAULT_POOL_SIZE: usize = 2;

/// Certificates for `rediss://` connections, when the webpki roots are not the right trust
/// store: a private CA, and a client certificate for mutual TLS (`tls-auth-clients yes`).
///
/// Applies to every TLS connection the transport opens: the server or Cluster nodes, the
/// Sentinel master and the sentinels, and the pub/sub connection. Plain `redis://` addresses
/// ignore it. Needs the `tls` feature.
///
/// # Examples
///
/// ```
/// use larder_native::{RedisCacheOptions, TlsOptions};
///
/// let ca = b"-----BEGIN CERTIFICATE-----\n...".to_vec();
/// let opts = RedisCacheOptions::new("rediss://redis.internal:6380").tls(TlsOptions::new().root_certs_pem(ca));
/// assert!(opts.tls.root_certs_pem.is_some());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the webpki roots.
    pub root_certs_pem: Option<Vec<u8>>,
    /// Client certificate chain and its private key (PEM), presented for mutual TLS.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field(
                "root_certs_pem",
                &self
                    .root_certs_pem
                    .as_ref()
                    .map(|p| format!("{} bytes", p.len())),
            )
            .field(
                "client_identity_pem",
                &self.client_identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TlsOptions {
    /// No custom certificates: the webpki roots, no client certificate.
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Trusts these CA certificates (PEM, one or more) instead of the webpki roots.
    #[must_use]
    pub fn root_certs_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certs_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate chain and private key (both PEM) for mutual TLS.
    #[must_use]
    pub fn client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_identity_pem = Some((cert.into(), key.into()));
        self
    }

    #[cfg(feature = "tls")]
    fn is_default(&self) -> bool {
        self.root_certs_pem.is_none() && self.client_identity_pem.is_none()
    }

    /// The redis-rs form, `None` when nothing is customised.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.is_default() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self.client_identity_pem.as_ref().map(|(cert, key)| {
                redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }
            }),
            root_cert: self.root_certs_pem.clone(),
        })
    }
}

/// How to reach Redis (standalone or Cluster) and how the cache on top behaves.
///
/// One address means a standalone server; several mean a Redis Cluster (any reachable
/// nodes: the rest of the topology is discovered). An address is `host:port`, or a URL
/// `redis://[user[:password]@]host:port[/db]` / `rediss://…` for TLS.
///
/// # Timeouts
///
/// redis-rs reads and writes a command as one operation, so a command may take
/// `write_timeout + read_timeout` once connected. A call that must first (re)connect may add
/// `dial_timeout`; every call is cut off after `dial_timeout + write_timeout + read_timeout`
/// whatever happens, so a down or hung Redis costs a caller at most that long (defaults:
/// 1 s + 0.5 s + 0.5 s), never redis-rs's default of ~9 s of reconnect retries.
///
/// # Examples
///
/// ```
/// use larder_native::RedisCacheOptions;
/// use std::time::Duration;
///
/// let opts = RedisCacheOptions::new("127.0.0.1:6379")
///     .password("s3cret")
///     .pool_size(8)
///     .read_timeout(Duration::from_millis(200))
///     .key_prefix("myapp")
///     .default_ttl(Duration::from_secs(3600));
/// assert!(!format!("{opts:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisCacheOptions {
    /// Server addresses: one for standalone, several for a Cluster.
    pub addrs: Vec<String>,
    /// ACL user name (Redis 6+); `None` authenticates as `default`.
    pub username: Option<String>,
    /// Password (`AUTH`); `None` sends none.
    pub password: Option<String>,
    /// Database number (standalone only: a Cluster has only database 0).
    pub db: i64,
    /// Multiplexed connections (per server) used round-robin.
    pub pool_size: usize,
    /// Connections opened when the cache is created; the rest open on first use. With 0,
    /// creating the cache never touches the network (an unreachable server shows up on the
    /// first call instead).
    pub min_idle_conns: usize,
    /// Time allowed to open a connection (TCP, TLS, `AUTH`, `SELECT`).
    pub dial_timeout: Duration,
    /// Time allowed for a reply once a command is written.
    pub read_timeout: Duration,
    /// Time allowed to write a command.
    pub write_timeout: Duration,
    /// Prefix of every key (default `larder`).
    pub key_prefix: String,
    /// TTL of writes that pass none (`None`: entries never expire).
    pub default_ttl: Option<Duration>,
    /// Emit a `tracing` span (and a warning on failure) for every Redis call; caches built
    /// with [`CacheBuilder`](crate::CacheBuilder) also get a span per cache operation
    /// ([`Instrumented`](larder_core::observe::Instrumented)).
    pub enable_tracing: bool,
    /// Record `metrics` counters and a latency histogram for every Redis call (and, through
    /// [`CacheBuilder`](crate::CacheBuilder), per cache operation: hits, misses, errors).
    pub enable_metrics: bool,
    /// Certificates for `rediss://` addresses (default: the webpki roots, no client
    /// certificate).
    pub tls: TlsOptions,
}

impl Default for RedisCacheOptions {
    fn default() -> Self {
        RedisCacheOptions {
            addrs: vec!["127.0.0.1:6379".to_owned()],
            username: None,
            password: None,
            db: 0,
            pool_size: DEFAULT_POOL_SIZE,
            min_idle_conns: 1,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            key_prefix: KeyScheme::default().prefix().to_owned(),
            default_ttl: None,
            enable_tracing: false,
            enable_metrics: false,
            tls: TlsOptions::default(),
        }
    }
}

impl fmt::Debug for RedisCacheOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheOptions")
            .field("addrs", &redacted_addrs(&self.addrs))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("pool_size", &self.pool_size)
            .field("min_idle_conns", &self.min_idle_conns)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("default_ttl", &self.default_ttl)
            .field("enable_tracing", &self.enable_tracing)
            .field("enable_metrics", &self.enable_metrics)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl RedisCacheOptions {
    /// Options for one standalone server.
    pub fn new(addr: impl Into<String>) -> Self {
        RedisCacheOptions {
            addrs: vec![addr.into()],
            ..Default::default()
        }
    }

    /// Options for a Redis Cluster reached through any of `addrs`.
    pub fn cluster<I, S>(addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisCacheOptions {
            addrs: addrs.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Replaces the server addresses.
    #[must_use]
    pub fn addrs<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.addrs = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the ACL user name.
    #[must_use]
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the password (an empty one means none).
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// Sets the database number.
    #[must_use]
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Sets the number of multiplexed connections used round-robin (at least 1).
    #[must_use]
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Sets how many connections open when the cache is created.
    #[must_use]
    pub fn min_idle_conns(mut self, n: usize) -> Self {
        self.min_idle_conns = n;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// Sets the reply timeout.
    #[must_use]
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// Sets the write timeout.
    #[must_use]
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the TTL of writes that pass none (zero means "never expire").
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl).filter(|d| !d.is_zero());
        self
    }

    /// Turns `tracing` spans on Redis calls on or off.
    #[must_use]
    pub fn enable_tracing(mut self, on: bool) -> Self {
        self.enable_tracing = on;
        self
    }

    /// Turns `metrics` recording of Redis calls on or off.
    #[must_use]
    pub fn enable_metrics(mut self, on: bool) -> Self {
        self.enable_metrics = on;
        self
    }

    /// Sets the certificates for `rediss://` connections (a private CA, a client
    /// certificate for mutual TLS).
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    pub(crate) fn settings(&self) -> Settings {
        Settings {
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db,
            pool_size: self.pool_size.max(1),
            min_idle_conns: self.min_idle_conns,
            dial_timeout: self.dial_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            enable_tracing: self.enable_tracing,
            enable_metrics: self.enable_metrics,
            tls: self.tls.clone(),
        }
    }
}

/// How to find the master of a Sentinel-managed deployment, and how the cache on top
/// behaves.
///
/// The transport asks the sentinels for `master_name`, checks with `ROLE` that the server
/// it reaches really is the master, and follows failovers: it listens for `+switch-master`
/// on every sentinel and asks again when the master stops answering or answers `READONLY`.
///
/// # Examples
///
/// ```
/// use larder_native::SentinelOptions;
///
/// let opts = SentinelOptions::new("mymaster", ["10.0.0.1:26379", "10.0.0.2:26379"])
///     .sentinel_password("sentinel-secret")
///     .password("redis-secret");
/// let dbg = format!("{opts:?}");
/// assert!(!dbg.contains("secret"), "{dbg}");
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelOptions {
    /// The master's name in the sentinels' configuration.
    pub master_name: String,
    /// Sentinel addresses (`host:port` or `redis://…` URLs).
    pub sentinel_addrs: Vec<String>,
    /// ACL user name for the sentinels.
    pub sentinel_username: Option<String>,
    /// Password for the sentinels (`requirepass` in sentinel.conf).
    pub sentinel_password: Option<String>,
    /// ACL user name for the master.
    pub username: Option<String>,
    /// Password for the master.
    pub password: Option<String>,
    /// Database number on the master.
    pub db: i64,
    /// Multiplexed connections to the master used round-robin.
    pub pool_size: usize,
    /// Certificates for `rediss://` connections to the master and the sentinels.
    pub tls: TlsOptions,
    /// Connections opened when the cache is created (see [`RedisCacheOptions::min_idle_conns`]).
    pub min_idle_conns: usize,
    /// Time allowed to open a connection (to a sentinel or to the master).
    pub dial_timeout: Duration,
    /// Time allowed for a reply once a command is written.
    pub read_timeout: Duration,
    /// Time allowed to write a command.
    pub write_timeout: Duration,
    /// Prefix of every key (default `larder`).
    pub key_prefix: String,
    /// TTL of writes that pass none (`None`: entries never expire).
    pub default_ttl: Option<Duration>,
    /// Emit a `tracing` span for every Redis call (and an event on every failover followed).
    pub enable_tracing: bool,
    /// Record `metrics` for every Redis call (and count failovers followed).
    pub enable_metrics: bool,
}

impl fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelOptions")
            .field("master_name", &self.master_name)
            .field("sentinel_addrs", &redacted_addrs(&self.sentinel_addrs))
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("pool_size", &self.pool_size)
            .field("min_idle_conns", &self.min_idle_conns)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("default_ttl", &self.default_ttl)
            .field("enable_tracing", &self.enable_tracing)
            .field("enable_metrics", &self.enable_metrics)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl SentinelOptions {
    /// Options for the master `master_name` known to `sentinel_addrs`.
    pub fn new<I, S>(master_name: impl Into<String>, sentinel_addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let base = RedisCacheOptions::default();
        SentinelOptions {
            master_name: master_name.into(),
            sentinel_addrs: sentinel_addrs.into_iter().map(Into::into).collect(),
            sentinel_username: None,
            sentinel_password: None,
            username: None,
            password: None,
            db: 0,
            pool_size: base.pool_size,
            min_idle_conns: base.min_idle_conns,
            dial_timeout: base.dial_timeout,
            read_timeout: base.read_timeout,
            write_timeout: base.write_timeout,
            key_prefix: base.key_prefix,
            default_ttl: None,
            enable_tracing: false,
            enable_metrics: false,
            tls: TlsOptions::default(),
        }
    }

    /// Sets the ACL user name for the sentinels.
    #[must_use]
    pub fn sentinel_username(mut self, username: impl Into<String>) -> Self {
        self.sentinel_username = Some(username.into());
        self
    }

    /// Sets the sentinels' password (an empty one means none).
    #[must_use]
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// Sets the ACL user name for the master.
    #[must_use]
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the master's password (an empty one means none).
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// Sets the database number.
    #[must_use]
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Sets the number of multiplexed connections to the master (at least 1).
    #[must_use]
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Sets how many connections open when the cache is created.
    #[must_use]
    pub fn min_idle_conns(mut self, n: usize) -> Self {
        self.min_idle_conns = n;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// Sets the reply timeout.
    #[must_use]
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// Sets the write timeout.
    #[must_use]
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the TTL of writes that pass none (zero means "never expire").
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl).filter(|d| !d.is_zero());
        self
    }

    /// Turns `tracing` spans on Redis calls on or off.
    #[must_use]
    pub fn enable_tracing(mut self, on: bool) -> Self {
        self.enable_tracing = on;
        self
    }

    /// Turns `metrics` recording of Redis calls on or off.
    #[must_use]
    pub fn enable_metrics(mut self, on: bool) -> Self {
        self.enable_metrics = on;
        self
    }

    /// Sets the certificates for `rediss://` connections (a private CA, a client
    /// certificate for mutual TLS).
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    pub(crate) fn settings(&self) -> Settings {
        Settings {
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db,
            pool_size: self.pool_size.max(1),
            min_idle_conns: self.min_idle_conns,
            dial_timeout: self.dial_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            enable_tracing: self.enable_tracing,
            enable_metrics: self.enable_metrics,
            tls: self.tls.clone(),
        }
    }
}

/// Addresses with any `user:password@` part of a URL replaced.
fn redacted_addrs(addrs: &[String]) -> Vec<String> {
    addrs.iter().map(|a| redact_url(a)).collect()
}

// Hand-written, not the `url` crate: a malformed address (which no URL parser accepts) must be
// redacted too, since that is exactly the one printed in an error.
/// `redis://user:pw@host` → `redis://user:<redacted>@host`. Whatever precedes the last
/// `@` is credentials, even in a malformed address (`redis//:pw@host`, a password with `/`
/// or `@` in it): only a well-formed `scheme://user:` keeps its user name.
pub(crate) fn redact_url(addr: &str) -> String {
    let Some(at) = addr.rfind('@') else {
        return addr.to_owned();
    };
    let host = &addr[at + 1..];
    if let Some((scheme, rest)) = addr[..at].split_once("://")
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+')
    {
        return match rest.split_once(':') {
            Some((user, _)) if !user.contains('/') => {
                format!("{scheme}://{user}:<redacted>@{host}")
            }
            _ => format!("{scheme}://<redacted>@{host}"),
        };
    }
    format!("<redacted>@{host}")
}

/// The connection settings every topology shares (derived from either options type).
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: i64,
    pub(crate) pool_size: usize,
    pub(crate) min_idle_conns: usize,
    pub(crate) dial_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) enable_tracing: bool,
    pub(crate) enable_metrics: bool,
    // Read only by TLS connections.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls: TlsOptions,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("username", &self.username)
            .field("db", &self.db)
            .field("pool_size", &self.pool_size)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// A redis-rs client for one node, with the TLS certificates when the node is reached
    /// over TLS and custom ones are set.
    pub(crate) fn client(&self, info: redis::ConnectionInfo) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let (redis::ConnectionAddr::TcpTls { .. }, Some(certs)) =
            (info.addr(), self.tls.certificates())
        {
            return redis::Client::build_with_tls(info, certs);
        }
        redis::Client::open(info)
    }

    /// What redis-rs calls the response timeout: writing plus reading one command.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.write_timeout + self.read_timeout
    }

    /// The most any one call may take: (re)connecting, writing and reading.
    pub(crate) fn call_budget(&self) -> Duration {
        self.dial_timeout + self.write_timeout + self.read_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_passwords() {
        let opts = RedisCacheOptions::new("redis://alice:hunter2@cache.internal:6380/2")
            .password("p4ssw0rd")
            .username("alice");
        let dbg = format!("{opts:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("p4ssw0rd"), "{dbg}");
        assert!(dbg.contains("cache.internal:6380"), "{dbg}");
        let s = SentinelOptions::new("m", ["redis://:topsecret@s1:26379"])
            .sentinel_password("sentpw")
            .password("masterpw");
        let dbg = format!("{s:?}");
        for secret in ["topsecret", "sentpw", "masterpw"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }

    #[test]
    fn redact_url_forms() {
        assert_eq!(redact_url("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact_url("rediss://u:p@h:1/0"),
            "rediss://u:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("redis://p@h:1"), "redis://<redacted>@h:1");
        // Malformed addresses and odd passwords never show the secret.
        for (addr, secret) in [
            ("redis//:SECRET@h:1", "SECRET"),
            ("redis:/u:SECRET@h:1", "SECRET"),
            ("redis://u:SE/CRET@h:1/0", "SE/CRET"),
            ("redis://u:SE@CRET@h:1", "SE@CRET"),
            (":SECRET@h:1", "SECRET"),
            ("redis://:SECRET@h:1", "SECRET"),
        ] {
            let shown = redact_url(addr);
            for part in secret.split(['/', '@']) {
                assert!(!shown.contains(part), "{addr} → {shown}");
            }
            assert!(
                shown.ends_with("@h:1") || shown.ends_with("@h:1/0"),
                "{shown}"
            );
        }
    }

    #[test]
    fn setters_and_budget() {
        let o = RedisCacheOptions::new("h:1")
            .pool_size(0)
            .password("")
            .dial_timeout(Duration::from_millis(100))
            .read_timeout(Duration::from_millis(20))
            .write_timeout(Duration::from_millis(30))
            .default_ttl(Duration::ZERO);
        assert_eq!(o.pool_size, 1);
        assert_eq!(o.password, None);
        assert_eq!(o.default_ttl, None);
        let s = o.settings();
        assert_eq!(s.response_timeout(), Duration::from_millis(50));
        assert_eq!(s.call_budget(), Duration::from_millis(150));
        assert_eq!(RedisCacheOptions::cluster(["a:1", "b:2"]).addrs.len(), 2);
    }
}
