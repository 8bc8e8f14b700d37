//! [`CacheControl`]: per-request cache settings.

use std::time::Duration;

use crate::error::{Error, Result};

/// Per-request cache settings. The default reads the cache, writes misses with the cache's
/// default TTL, in the default namespace, with no tags.
///
/// | setting | effect |
/// | --- | --- |
/// | [`ttl`](CacheControl::ttl) | how long the stored answer stays fresh (instead of the cache's default) |
/// | [`no_cache`](CacheControl::no_cache) | never answer from the cache: compute, then store the result (unless `no_store`); not counted as a hit or a miss |
/// | [`no_store`](CacheControl::no_store) | do not store the computed answer |
/// | [`force_refresh`](CacheControl::force_refresh) | compute and replace the entry even when it is fresh; if computing fails, the current entry is served as STALE |
/// | [`namespace`](CacheControl::namespace) | a separate key space (a tenant, an experiment) that can be invalidated in O(1) |
/// | [`tag`](CacheControl::tag) | tags stored with the answer and checked on every read, for [tag invalidation](super::ResponseCache::invalidate_tag) |
///
/// None of these are part of the request hash (the namespace is a separate part of the key).
///
/// # Examples
///
/// ```
/// use larder_core::response::CacheControl;
/// use std::time::Duration;
///
/// let control = CacheControl::default()
///     .ttl(Duration::from_secs(600))
///     .namespace("tenant-7")
///     .tag("docs-v3");
/// assert_eq!(control.namespace_name(), "tenant-7");
/// assert!(CacheControl::default().no_store().skips_write());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheControl {
    /// Freshness of a stored answer; `None` uses the cache's default TTL.
    pub ttl: Option<Duration>,
    /// Skip the read.
    pub no_cache: bool,
    /// Skip the write.
    pub no_store: bool,
    /// Recompute and replace, serving the current entry only if computing fails.
    pub force_refresh: bool,
    /// The namespace (`None`: [`DEFAULT_NAMESPACE`]).
    pub namespace: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Replaying a recorded stream: space the events as they arrived, each gap capped at
    /// this (`None`: as fast as the caller reads).
    pub pace: Option<Duration>,
}

/// The namespace of requests that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

impl CacheControl {
    /// The default settings (same as `CacheControl::default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the answer for `ttl` (a zero TTL is rejected when the request runs).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Never answers from the cache (the result is still stored unless `no_store`).
    #[must_use]
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Replays a recorded stream at the pace it was recorded, no gap longer than
    /// `max_gap` (by default a replay is as fast as the caller reads).
    #[must_use]
    pub fn pace(mut self, max_gap: Duration) -> Self {
        self.pace = Some(max_gap);
        self
    }

    /// Does not store the computed answer.
    #[must_use]
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// Recomputes and replaces the entry even when it is fresh.
    #[must_use]
    pub fn force_refresh(mut self) -> Self {
        self.force_refresh = true;
        self
    }

    /// Uses `namespace` (letters, digits and `-_.:/@`, at most 128 bytes).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Adds a tag (any text without `{`, `}` or control characters, at most 256 bytes).
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// The namespace in effect ([`DEFAULT_NAMESPACE`] when none was set).
    pub fn namespace_name(&self) -> &str {
        match self.namespace.as_deref() {
            None | Some("") => DEFAULT_NAMESPACE,
            Some(ns) => ns,
        }
    }

    /// True when the cached answer must not be served (`no_cache` or `force_refresh`).
    pub fn skips_read(&self) -> bool {
        self.no_cache || self.force_refresh
    }

    /// True when the computed answer is not stored.
    pub fn skips_write(&self) -> bool {
        self.no_store
    }

    /// Checks the settings before any I/O.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.ttl.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidInput(
                "a TTL of zero would expire the answer at once; leave it unset for the \
                 default TTL or use no_store()"
                    .into(),
            ));
        }
        validate_namespace(self.namespace_name())?;
        for tag in &self.tags {
            validate_tag(tag)?;
        }
        Ok(())
    }
}

/// Checks a namespace name.
pub(crate) fn validate_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 128
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "namespace {ns:?} is not allowed: use 1 to 128 letters, digits or -_.:/@ \
             (no spaces, braces or glob characters)"
        )))
    }
}

/// Checks a tag.
pub(crate) fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 256
        && !tag.contains(['{', '}'])
        && !tag.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "tag {tag:?} is not allowed: use 1 to 256 bytes of text without '{{', '}}' or \
             control characters"
        )))
    }
}
