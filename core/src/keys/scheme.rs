//! The Redis key layout: `{prefix}:cache:{key}`, `{prefix}:stats:{stat}`,
//! `{prefix}:lock:{key}`.

use std::fmt;

use crate::error::Error;

/// The prefix [`KeyScheme::default`] uses.
pub const DEFAULT_PREFIX: &str = "larder";

/// The prefix go-deep-agent's `RedisCache` uses when none is configured.
pub const GO_DEEP_AGENT_PREFIX: &str = "go-deep-agent";

/// A statistics counter stored in Redis at [`KeyScheme::stats_key`].
///
/// The names are go-deep-agent's, so both libraries count into the same keys when they
/// share a prefix; the values are plain integers (`INCR` / `INCRBY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stat {
    /// Lookups that found a value (`hits`).
    Hits,
    /// Lookups that found nothing (`misses`).
    Misses,
    /// Values written (`writes`).
    Writes,
}

impl Stat {
    /// Every counter, in a stable order (for example to delete them all).
    pub const ALL: &'static [Stat] = &[Stat::Hits, Stat::Misses, Stat::Writes];

    /// The name used in the key: `hits`, `misses` or `writes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::Hits => "hits",
            Stat::Misses => "misses",
            Stat::Writes => "writes",
        }
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where larder keeps things in Redis, under one prefix.
///
/// | what | key |
/// | --- | --- |
/// | a cached value | `{prefix}:cache:{key}` |
/// | a statistics counter | `{prefix}:stats:hits`, `:misses`, `:writes` |
/// | a stampede lock | `{prefix}:lock:{key}` |
///
/// `key` is normally a [`request_hash`](super::request_hash) (64 lowercase hex digits).
///
/// **Prefix rules.** One trailing `:` is dropped, so `"app:"` and `"app"` give the same
/// keys (and `"app::"` gives `app::cache:…`). An empty prefix (or `":"`) means no prefix at
/// all: `cache:{key}`, `stats:hits`, `lock:{key}`. A prefix may not contain `{` or `}`,
/// which would make Redis Cluster hash only part of the key (a hash tag) and pile every key
/// onto one slot.
///
/// # Examples
///
/// ```
/// use larder_core::keys::{KeyScheme, Stat};
///
/// let keys = KeyScheme::new("app:").unwrap();
/// assert_eq!(keys.prefix(), "app");
/// assert_eq!(keys.value_key("9f86d0"), "app:cache:9f86d0");
/// assert_eq!(keys.stats_key(Stat::Hits), "app:stats:hits");
/// assert_eq!(keys.lock_key("9f86d0"), "app:lock:9f86d0");
/// assert_eq!(keys.user_key_of(b"app:cache:9f86d0").as_deref(), Some("9f86d0"));
/// assert_eq!(KeyScheme::default().value_key("k"), "larder:cache:k");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyScheme {
    /// The prefix without its trailing colon.
    prefix: String,
    /// `{prefix}:`, or empty for the empty prefix: what every key starts with.
    head: String,
}

impl KeyScheme {
    /// A key scheme under `prefix` (see the prefix rules on [`KeyScheme`]), or
    /// [`Error::InvalidInput`] if `prefix` contains `{` or `}` (Redis Cluster hash-tag
    /// characters).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::keys::KeyScheme;
    ///
    /// assert!(KeyScheme::new("tenant-7").is_ok());
    /// assert!(KeyScheme::new("{tenant-7}").is_err());
    /// ```
    pub fn new(prefix: &str) -> Result<KeyScheme, Error> {
        if prefix.contains(['{', '}']) {
            return Err(Error::InvalidInput(format!(
                "key prefix {prefix:?} contains '{{' or '}}', which Redis Cluster reads as a \
                 hash tag; choose a prefix without braces"
            )));
        }
        let prefix = prefix.strip_suffix(':').unwrap_or(prefix).to_owned();
        let head = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        Ok(KeyScheme { prefix, head })
    }

    /// The prefix, without a trailing colon (empty for no prefix).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of a cached value: `{prefix}:cache:{key}`.
    ///
    /// `key` is used as given; it should be a hash (as from
    /// [`request_hash`](super::request_hash)) so that it holds no `{`/`}`.
    pub fn value_key(&self, key: &str) -> String {
        concat(&[&self.head, "cache:", key])
    }

    /// The Redis key of a statistics counter: `{prefix}:stats:{hits|misses|writes}`.
    pub fn stats_key(&self, stat: Stat) -> String {
        concat(&[&self.head, "stats:", stat.as_str()])
    }

    /// The Redis key of the stampede lock for `key`: `{prefix}:lock:{key}`.
    pub fn lock_key(&self, key: &str) -> String {
        concat(&[&self.head, "lock:", key])
    }

    /// A `SCAN … MATCH` pattern for the value keys whose user key matches `user_glob`.
    ///
    /// The prefix part is escaped (`*`, `?`, `[`, `]` and `\` get a backslash) so that it
    /// matches only itself; `user_glob` is appended unchanged, so `"*"` matches every value
    /// key of this scheme and nothing else.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::keys::KeyScheme;
    ///
    /// assert_eq!(KeyScheme::new("app").unwrap().value_pattern("*"), "app:cache:*");
    /// assert_eq!(KeyScheme::new("a*b").unwrap().value_pattern("ab*"), r"a\*b:cache:ab*");
    /// ```
    pub fn value_pattern(&self, user_glob: &str) -> String {
        let mut out = String::with_capacity(self.head.len() + 6 + user_glob.len());
        for c in self.head.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("cache:");
        out.push_str(user_glob);
        out
    }

    /// The user key of a Redis value key (the inverse of [`KeyScheme::value_key`]), or
    /// `None` if `redis_key` is not a value key of this scheme or its user key is not UTF-8.
    pub fn user_key_of(&self, redis_key: &[u8]) -> Option<String> {
        let rest = redis_key.strip_prefix(self.head.as_bytes())?;
        let user = rest.strip_prefix(b"cache:".as_slice())?;
        String::from_utf8(user.to_vec()).ok()
    }
}

impl Default for KeyScheme {
    /// The scheme under [`DEFAULT_PREFIX`] (`larder`).
    fn default() -> Self {
        KeyScheme::new(DEFAULT_PREFIX).expect("the default prefix is valid")
    }
}

/// The parts joined in one allocation of the exact size (`format!` grows its buffer as it
/// goes, and key building is on every cache call's path).
pub(crate) fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_colon_is_not_doubled() {
        assert_eq!(
            KeyScheme::new("app:").unwrap(),
            KeyScheme::new("app").unwrap()
        );
        assert_eq!(
            KeyScheme::new("app:").unwrap().value_key("h"),
            "app:cache:h"
        );
        assert_eq!(
            KeyScheme::new("app::").unwrap().value_key("h"),
            "app::cache:h"
        );
        assert_eq!(KeyScheme::new("app::").unwrap().prefix(), "app:");
    }

    #[test]
    fn empty_prefix_means_no_prefix() {
        for p in ["", ":"] {
            let k = KeyScheme::new(p).unwrap();
            assert_eq!(k.prefix(), "");
            assert_eq!(k.value_key("h"), "cache:h");
            assert_eq!(k.stats_key(Stat::Misses), "stats:misses");
            assert_eq!(k.lock_key("h"), "lock:h");
            assert_eq!(k.value_pattern("*"), "cache:*");
            assert_eq!(k.user_key_of(b"cache:h").as_deref(), Some("h"));
            assert_eq!(k.user_key_of(b"larder:cache:h"), None);
        }
    }

    #[test]
    fn every_stat_has_its_key() {
        let k = KeyScheme::default();
        let keys: Vec<String> = Stat::ALL.iter().map(|s| k.stats_key(*s)).collect();
        assert_eq!(
            keys,
            [
                "larder:stats:hits",
                "larder:stats:misses",
                "larder:stats:writes"
            ]
        );
    }

    #[test]
    fn braces_are_rejected() {
        for p in ["{a}", "a{", "}"] {
            assert!(matches!(KeyScheme::new(p), Err(Error::InvalidInput(_))));
        }
    }

    #[test]
    #[should_panic(expected = "hash tag")]
    fn new_panics_on_braces() {
        let _ = KeyScheme::new("{tenant}").unwrap();
    }

    #[test]
    fn pattern_escapes_prefix_glob_characters() {
        let k = KeyScheme::new(r"a*b?c[d]e\f").unwrap();
        assert_eq!(k.value_pattern("*"), r"a\*b\?c\[d\]e\\f:cache:*");
    }

    #[test]
    fn user_key_of_inverts_value_key() {
        let k = KeyScheme::new("go-deep-agent").unwrap();
        for user in ["", "abc", "with:colons", "ünï"] {
            assert_eq!(
                k.user_key_of(k.value_key(user).as_bytes()).as_deref(),
                Some(user)
            );
        }
        assert_eq!(k.user_key_of(b"go-deep-agent:stats:hits"), None);
        assert_eq!(k.user_key_of(b"go-deep-agent:lock:abc"), None);
        assert_eq!(k.user_key_of(b"other:cache:abc"), None);
        assert_eq!(k.user_key_of(b"go-deep-agent:cache:\xff"), None);
    }
}
