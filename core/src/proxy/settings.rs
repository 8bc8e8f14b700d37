//! [`ProxySettings`]: the proxy's configuration from environment-style variables, read
//! the same way by `larder proxy` and the proxy Worker (whose variables and secrets are
//! its bindings).

use std::fmt;
use std::time::Duration;

use super::{ProxyEngine, Tenancy};
use crate::error::{Error, Result};
use crate::response::{ResponseCache, ResponseCacheBuilder};
use crate::seal::{HashKey, Keyring};

/// Default `LARDER_UPSTREAM`.
pub const DEFAULT_UPSTREAM: &str = "https://api.openai.com";
/// Default `LARDER_ANTHROPIC_UPSTREAM`.
pub const DEFAULT_ANTHROPIC_UPSTREAM: &str = "https://api.anthropic.com";
/// Default `LARDER_PROXY_TTL_SECS`: one hour.
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// Default `LARDER_PROXY_STALE_SECS`: one day.
pub const DEFAULT_STALE_SECS: u64 = 86_400;
/// Default `LARDER_PROXY_MEMORY_ENTRIES`.
pub const DEFAULT_MEMORY_ENTRIES: usize = 10_000;
/// Default `LARDER_PREFIX`.
pub const DEFAULT_PREFIX: &str = "larder";
/// Default `LARDER_PROXY_READ_TIMEOUT_MS`: 300 s.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 300_000;

/// The proxy's settings. Variables (unset or blank: the default):
///
/// | variable | meaning | default |
/// | --- | --- | --- |
/// | `LARDER_UPSTREAM` | the OpenAI-compatible upstream | [`DEFAULT_UPSTREAM`] |
/// | `LARDER_ANTHROPIC_UPSTREAM` | the Anthropic upstream | [`DEFAULT_ANTHROPIC_UPSTREAM`] |
/// | `LARDER_UPSTREAM_KEY` (secret) | the key sent to the OpenAI upstream instead of the caller's | the caller's |
/// | `LARDER_ANTHROPIC_KEY` (secret) | the key sent to the Anthropic upstream | the caller's |
/// | `LARDER_PROXY_SHARED_TENANCY` | `1`/`true`: every caller shares one cache | one per credential |
/// | `LARDER_PROXY_TTL_SECS` | seconds an answer stays fresh | [`DEFAULT_TTL_SECS`] |
/// | `LARDER_PROXY_STALE_SECS` | seconds past freshness a stale answer may be served when the upstream fails; 0: never | [`DEFAULT_STALE_SECS`] |
/// | `LARDER_PROXY_BODY_LIMIT` | the largest cached request body, bytes | [`DEFAULT_BODY_LIMIT`](super::DEFAULT_BODY_LIMIT) |
/// | `LARDER_PROXY_MEMORY_ENTRIES` | entries of the in-memory cache (without Redis) | [`DEFAULT_MEMORY_ENTRIES`] |
/// | `LARDER_PREFIX` | the key prefix in Redis | [`DEFAULT_PREFIX`] |
/// | `LARDER_PROXY_READ_TIMEOUT_MS` | how long the upstream may stay silent (before its headers; natively also between two chunks); past it the caller gets 504, or a stale answer | [`DEFAULT_READ_TIMEOUT_MS`] |
/// | `LARDER_PROXY_STREAM_POLL_MS` | how often a caller waiting for another process's stream looks again without a notification (over HTTP: its polling interval, one to three subrequests per look) | the cache's, 50 ms |
/// | `LARDER_ENCRYPTION_KEYS` (secret) | encryption at rest: `id:base64key,…`, the current key first | off |
/// | `LARDER_HASH_SECRET` (secret) | keyed request hashes and tenant names (base64, ≥ 16 bytes) | off |
#[derive(Clone)]
#[non_exhaustive]
pub struct ProxySettings {
    /// `LARDER_UPSTREAM`.
    pub upstream: String,
    /// `LARDER_ANTHROPIC_UPSTREAM`.
    pub anthropic_upstream: String,
    /// `LARDER_UPSTREAM_KEY`.
    pub upstream_key: Option<String>,
    /// `LARDER_ANTHROPIC_KEY`.
    pub anthropic_key: Option<String>,
    /// `LARDER_PROXY_SHARED_TENANCY`.
    pub tenancy: Tenancy,
    /// `LARDER_PROXY_TTL_SECS`.
    pub ttl: Duration,
    /// `LARDER_PROXY_STALE_SECS` (`None`: 0).
    pub stale: Option<Duration>,
    /// `LARDER_PROXY_BODY_LIMIT`.
    pub body_limit: usize,
    /// `LARDER_PROXY_MEMORY_ENTRIES`.
    pub memory_entries: usize,
    /// `LARDER_PREFIX`.
    pub prefix: String,
    /// `LARDER_PROXY_STREAM_POLL_MS`.
    pub stream_poll: Option<Duration>,
    /// `LARDER_PROXY_READ_TIMEOUT_MS`.
    pub read_timeout: Duration,
    /// `LARDER_ENCRYPTION_KEYS`.
    pub keyring: Option<Keyring>,
    /// `LARDER_HASH_SECRET`.
    pub hash_key: Option<HashKey>,
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys or secrets.
        f.debug_struct("ProxySettings")
            .field("upstream", &self.upstream)
            .field("anthropic_upstream", &self.anthropic_upstream)
            .field("upstream_key", &self.upstream_key.is_some())
            .field("anthropic_key", &self.anthropic_key.is_some())
            .field("tenancy", &self.tenancy)
            .field("ttl", &self.ttl)
            .field("stale", &self.stale)
            .field("body_limit", &self.body_limit)
            .field("memory_entries", &self.memory_entries)
            .field("prefix", &self.prefix)
            .field("stream_poll", &self.stream_poll)
            .field("read_timeout", &self.read_timeout)
            .field("encrypted", &self.keyring.is_some())
            .field("keyed_hashes", &self.hash_key.is_some())
            .finish()
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::InvalidInput(format!("{name} must be a whole number, not {v:?}")))
}

impl ProxySettings {
    /// Reads the settings through `lookup` (a variable's value, or `None` when unset).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the variable that is malformed (never a secret's
    /// value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let secret = |name: &str| get(name).map(|v| v.trim().to_owned());
        let ttl: u64 = match get("LARDER_PROXY_TTL_SECS") {
            Some(v) => number("LARDER_PROXY_TTL_SECS", &v)?,
            None => DEFAULT_TTL_SECS,
        };
        let stale: u64 = match get("LARDER_PROXY_STALE_SECS") {
            Some(v) => number("LARDER_PROXY_STALE_SECS", &v)?,
            None => DEFAULT_STALE_SECS,
        };
        let shared = match get("LARDER_PROXY_SHARED_TENANCY") {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "LARDER_PROXY_SHARED_TENANCY must be true or false, not {v:?}"
                    )));
                }
            },
            None => false,
        };
        Ok(ProxySettings {
            upstream: get("LARDER_UPSTREAM").unwrap_or_else(|| DEFAULT_UPSTREAM.into()),
            anthropic_upstream: get("LARDER_ANTHROPIC_UPSTREAM")
                .unwrap_or_else(|| DEFAULT_ANTHROPIC_UPSTREAM.into()),
            upstream_key: secret("LARDER_UPSTREAM_KEY"),
            anthropic_key: secret("LARDER_ANTHROPIC_KEY"),
            tenancy: if shared {
                Tenancy::Shared
            } else {
                Tenancy::PerCredential
            },
            ttl: Duration::from_secs(ttl.max(1)),
            stale: (stale > 0).then(|| Duration::from_secs(stale)),
            body_limit: match get("LARDER_PROXY_BODY_LIMIT") {
                Some(v) => number("LARDER_PROXY_BODY_LIMIT", &v)?,
                None => super::DEFAULT_BODY_LIMIT,
            },
            memory_entries: match get("LARDER_PROXY_MEMORY_ENTRIES") {
                Some(v) => number("LARDER_PROXY_MEMORY_ENTRIES", &v)?,
                None => DEFAULT_MEMORY_ENTRIES,
            },
            prefix: get("LARDER_PREFIX").unwrap_or_else(|| DEFAULT_PREFIX.into()),
            read_timeout: Duration::from_millis(
                match get("LARDER_PROXY_READ_TIMEOUT_MS") {
                    Some(v) => number::<u64>("LARDER_PROXY_READ_TIMEOUT_MS", &v)?,
                    None => DEFAULT_READ_TIMEOUT_MS,
                }
                .max(1),
            ),
            stream_poll: match get("LARDER_PROXY_STREAM_POLL_MS") {
                Some(v) => Some(Duration::from_millis(
                    number::<u64>("LARDER_PROXY_STREAM_POLL_MS", &v)?.max(1),
                )),
                None => None,
            },
            keyring: get("LARDER_ENCRYPTION_KEYS")
                .map(|v| Keyring::parse(&v))
                .transpose()
                .map_err(|e| Error::InvalidInput(format!("LARDER_ENCRYPTION_KEYS: {e}")))?,
            hash_key: get("LARDER_HASH_SECRET")
                .map(|v| HashKey::parse(&v))
                .transpose()
                .map_err(|e| Error::InvalidInput(format!("LARDER_HASH_SECRET: {e}")))?,
        })
    }

    /// The response cache over `backend` with these settings (TTL, stale window, stream
    /// polling, encryption, keyed hashes).
    ///
    /// # Errors
    ///
    /// As [`ResponseCacheBuilder::build`].
    pub fn response_cache(&self, backend: ResponseCacheBuilder) -> Result<ResponseCache> {
        let mut cache = backend.default_ttl(self.ttl);
        if let Some(s) = self.stale {
            cache = cache.stale_window(s);
        }
        if let Some(p) = self.stream_poll {
            cache = cache.stream_poll_interval(p);
        }
        if let Some(k) = &self.keyring {
            cache = cache.encryption(k.clone());
        }
        if let Some(h) = &self.hash_key {
            cache = cache.hash_key(h.clone());
        }
        cache.build()
    }

    /// The proxy engine over `cache` with these settings (upstreams, keys, tenancy, body
    /// limit).
    ///
    /// # Errors
    ///
    /// As [`ProxyEngineBuilder::build`](super::ProxyEngineBuilder::build).
    pub fn engine(&self, cache: ResponseCache) -> Result<ProxyEngine> {
        let mut b = ProxyEngine::builder(cache, self.upstream.clone())
            .anthropic_upstream(self.anthropic_upstream.clone())
            .tenancy(self.tenancy)
            .body_limit(self.body_limit);
        if let Some(k) = &self.upstream_key {
            b = b.openai_key(k.clone());
        }
        if let Some(k) = &self.anthropic_key {
            b = b.anthropic_key(k.clone());
        }
        if let Some(h) = &self.hash_key {
            b = b.tenant_key(h.clone());
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let s = ProxySettings::from_lookup(vars(&[])).unwrap();
        assert_eq!(s.upstream, DEFAULT_UPSTREAM);
        assert_eq!(s.anthropic_upstream, DEFAULT_ANTHROPIC_UPSTREAM);
        assert_eq!(s.ttl, Duration::from_secs(DEFAULT_TTL_SECS));
        assert_eq!(s.stale, Some(Duration::from_secs(DEFAULT_STALE_SECS)));
        assert_eq!(s.tenancy, Tenancy::PerCredential);
        assert!(s.upstream_key.is_none() && s.keyring.is_none() && s.hash_key.is_none());
    }

    #[test]
    fn values_are_read_and_bad_ones_named() {
        let s = ProxySettings::from_lookup(vars(&[
            ("LARDER_UPSTREAM", "http://127.0.0.1:9/v1"),
            ("LARDER_PROXY_STALE_SECS", "0"),
            ("LARDER_PROXY_SHARED_TENANCY", "true"),
            ("LARDER_UPSTREAM_KEY", " sk-secret "),
            ("LARDER_PROXY_STREAM_POLL_MS", "200"),
        ]))
        .unwrap();
        assert_eq!(s.upstream, "http://127.0.0.1:9/v1");
        assert_eq!(s.stale, None);
        assert_eq!(s.tenancy, Tenancy::Shared);
        assert_eq!(s.upstream_key.as_deref(), Some("sk-secret"));
        assert_eq!(s.stream_poll, Some(Duration::from_millis(200)));
        assert!(!format!("{s:?}").contains("sk-secret"));
        for (name, bad) in [
            ("LARDER_PROXY_TTL_SECS", "soon"),
            ("LARDER_PROXY_SHARED_TENANCY", "maybe"),
            ("LARDER_HASH_SECRET", "not base64!"),
        ] {
            let e = ProxySettings::from_lookup(vars(&[(name, bad)])).unwrap_err();
            assert!(e.to_string().contains(name), "{name}: {e}");
        }
    }
}
