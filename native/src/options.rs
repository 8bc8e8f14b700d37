//! How to reach Redis: [`RedisOptions`] with its [`Servers`] (standalone, Cluster or
//! Sentinel). A plain value with chainable setters; passwords never appear in its `Debug`
//! output.

use std::fmt;
use std::time::Duration;

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
/// use larder_native::{RedisOptions, TlsOptions};
///
/// let ca = b"-----BEGIN CERTIFICATE-----\n...".to_vec();
/// let opts = RedisOptions::standalone("rediss://redis.internal:6380").tls(TlsOptions::new().root_certs_pem(ca));
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

/// Where the Redis servers are: one server, a Cluster, or a master found through Sentinel.
///
/// An address is `host:port`, or a URL `redis://[user[:password]@]host:port[/db]` /
/// `rediss://…` for TLS.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Servers {
    /// One server.
    Standalone(String),
    /// A Redis Cluster, reached through any of these nodes (the rest of the topology is
    /// discovered).
    Cluster(Vec<String>),
    /// The master `master_name` of a Sentinel deployment. The transport asks the sentinels
    /// for it, checks with `ROLE` that the server it reaches really is the master, and
    /// follows failovers: it listens for `+switch-master` on every sentinel and asks again
    /// when the master stops answering or answers `READONLY`.
    Sentinel {
        /// The master's name in the sentinels' configuration.
        master_name: String,
        /// Sentinel addresses.
        sentinels: Vec<String>,
    },
}

impl fmt::Debug for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Servers::Standalone(a) => f.debug_tuple("Standalone").field(&redact_url(a)).finish(),
            Servers::Cluster(a) => f.debug_tuple("Cluster").field(&redacted_addrs(a)).finish(),
            Servers::Sentinel {
                master_name,
                sentinels,
            } => f
                .debug_struct("Sentinel")
                .field("master_name", master_name)
                .field("sentinels", &redacted_addrs(sentinels))
                .finish(),
        }
    }
}

/// How to reach Redis: where the servers are ([`Servers`]), credentials, pool and timeouts.
/// Cache settings (prefix, default TTL) belong to
/// [`RedisCacheBuilder`](larder_core::RedisCacheBuilder).
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
/// use larder_native::RedisOptions;
/// use std::time::Duration;
///
/// let opts = RedisOptions::standalone("127.0.0.1:6379")
///     .password("s3cret")
///     .pool_size(8)
///     .read_timeout(Duration::from_millis(200));
/// assert!(!format!("{opts:?}").contains("s3cret"));
///
/// let sentinel = RedisOptions::sentinel("mymaster", ["10.0.0.1:26379", "10.0.0.2:26379"])
///     .sentinel_password("sentinel-secret")
///     .password("redis-secret");
/// assert!(!format!("{sentinel:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Where the servers are.
    pub servers: Servers,
    /// ACL user name (Redis 6+) on the data servers; `None` authenticates as `default`.
    pub username: Option<String>,
    /// Password (`AUTH`) on the data servers; `None` sends none.
    pub password: Option<String>,
    /// ACL user name for the sentinels ([`Servers::Sentinel`] only).
    pub sentinel_username: Option<String>,
    /// Password for the sentinels (`requirepass` in sentinel.conf; [`Servers::Sentinel`]
    /// only).
    pub sentinel_password: Option<String>,
    /// Database number (a Cluster has only database 0).
    pub db: i64,
    /// Multiplexed connections (per server) used round-robin.
    pub pool_size: usize,
    /// Connections opened when the transport is created; the rest open on first use. With
    /// 0, creating it never touches the network (an unreachable server shows up on the first
    /// call instead).
    pub min_idle_conns: usize,
    /// Time allowed to open a connection (TCP, TLS, `AUTH`, `SELECT`).
    pub dial_timeout: Duration,
    /// Time allowed for a reply once a command is written.
    pub read_timeout: Duration,
    /// Time allowed to write a command.
    pub write_timeout: Duration,
    /// Certificates for `rediss://` addresses (default: the webpki roots, no client
    /// certificate).
    pub tls: TlsOptions,
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("RedisOptions")
            .field("servers", &self.servers)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &redacted(&self.sentinel_password))
            .field("db", &self.db)
            .field("pool_size", &self.pool_size)
            .field("min_idle_conns", &self.min_idle_conns)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisOptions {
    fn with(servers: Servers) -> Self {
        RedisOptions {
            servers,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            db: 0,
            pool_size: DEFAULT_POOL_SIZE,
            min_idle_conns: 1,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            tls: TlsOptions::default(),
        }
    }

    /// One standalone server.
    pub fn standalone(addr: impl Into<String>) -> Self {
        Self::with(Servers::Standalone(addr.into()))
    }

    /// A Redis Cluster reached through any of `addrs`.
    pub fn cluster<I, S>(addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with(Servers::Cluster(
            addrs.into_iter().map(Into::into).collect(),
        ))
    }

    /// The master `master_name` known to `sentinels`.
    pub fn sentinel<I, S>(master_name: impl Into<String>, sentinels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with(Servers::Sentinel {
            master_name: master_name.into(),
            sentinels: sentinels.into_iter().map(Into::into).collect(),
        })
    }

    /// What a URL names: `redis://…` / `rediss://…` / `host:port` is one server, several
    /// comma-separated ones a Cluster.
    pub fn from_url(url: &str) -> Self {
        let addrs: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        match <[String; 1]>::try_from(addrs) {
            Ok([one]) => Self::standalone(one),
            Err(many) => Self::cluster(many),
        }
    }

    /// Sets the ACL user name on the data servers.
    #[must_use]
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the password on the data servers (an empty one means none).
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// Sets the ACL user name for the sentinels ([`Servers::Sentinel`] only; connecting
    /// with it set on another topology is an error).
    #[must_use]
    pub fn sentinel_username(mut self, username: impl Into<String>) -> Self {
        self.sentinel_username = Some(username.into());
        self
    }

    /// Sets the sentinels' password (an empty one means none; [`Servers::Sentinel`] only).
    #[must_use]
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into()).filter(|p| !p.is_empty());
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

    /// Sets how many connections open when the transport is created.
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

/// The connection settings every topology shares.
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
        let opts = RedisOptions::standalone("redis://alice:hunter2@cache.internal:6380/2")
            .password("p4ssw0rd")
            .username("alice");
        let dbg = format!("{opts:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("p4ssw0rd"), "{dbg}");
        assert!(dbg.contains("cache.internal:6380"), "{dbg}");
        let s = RedisOptions::sentinel("m", ["redis://:topsecret@s1:26379"])
            .sentinel_password("sentpw")
            .password("masterpw");
        let dbg = format!("{s:?}");
        for secret in ["topsecret", "sentpw", "masterpw"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        let c = RedisOptions::cluster(["redis://:clustersecret@a:1", "b:2"]);
        assert!(!format!("{c:?}").contains("clustersecret"));
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
        let o = RedisOptions::standalone("h:1")
            .pool_size(0)
            .password("")
            .dial_timeout(Duration::from_millis(100))
            .read_timeout(Duration::from_millis(20))
            .write_timeout(Duration::from_millis(30));
        assert_eq!(o.pool_size, 1);
        assert_eq!(o.password, None);
        let s = o.settings();
        assert_eq!(s.response_timeout(), Duration::from_millis(50));
        assert_eq!(s.call_budget(), Duration::from_millis(150));
        assert_eq!(
            RedisOptions::from_url("redis://a:1, redis://b:2").servers,
            Servers::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            RedisOptions::from_url("redis://a:1").servers,
            Servers::Standalone("redis://a:1".into())
        );
    }
}
