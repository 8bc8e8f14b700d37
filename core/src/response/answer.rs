//! What a [`ResponseCache`](super::ResponseCache) returns: [`Answer`], [`CacheStatus`],
//! [`LlmResponse`], [`Usage`] and [`ResponseError`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::envelope::Envelope;
use crate::error::Error;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum CacheStatus {
    /// A fresh cached answer.
    Hit,
    /// Computed now (nothing usable was cached, or the request skipped the read).
    Miss,
    /// A cached answer past its freshness, served because computing a new one failed.
    Stale,
}

impl CacheStatus {
    /// `"HIT"`, `"MISS"` or `"STALE"` (for headers such as `x-cache` and for logs).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
}

impl Usage {
    /// Token counts.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
        }
    }

    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// A model's response: what a compute function returns and what the cache stores.
///
/// # Examples
///
/// ```
/// use larder_core::response::{LlmResponse, Usage};
///
/// let r = LlmResponse::new("Paris.").with_model("gpt-4o-mini").with_usage(Usage::new(14, 3));
/// assert_eq!(r.usage.unwrap().total(), 17);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LlmResponse {
    /// The response text.
    pub text: String,
    /// The model that produced it (empty: the request's model is recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Token counts, when the provider reported them (needed for tokens/cost saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Any other metadata to keep with the answer (finish reason, provider ids…).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Json>,
}

impl LlmResponse {
    /// A response with only its text.
    pub fn new(text: impl Into<String>) -> Self {
        LlmResponse {
            text: text.into(),
            ..Default::default()
        }
    }

    /// Sets the model that produced it.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the token counts.
    #[must_use]
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Adds a metadata field.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Metadata members the response cache writes into the [`Envelope`] itself (see
/// docs/KEY_FORMAT.md §8). They are removed again when an envelope becomes an
/// [`LlmResponse`].
pub(crate) mod meta {
    /// Input tokens.
    pub(crate) const PROMPT_TOKENS: &str = "prompt_tokens";
    /// Output tokens.
    pub(crate) const COMPLETION_TOKENS: &str = "completion_tokens";
    /// The request's temperature (the seed's field; kept in the response metadata).
    pub(crate) const TEMPERATURE: &str = "temperature";
    /// The namespace generation the entry was written under.
    pub(crate) const GENERATION: &str = "ns_generation";
    /// When the entry was written, unix ms (tag invalidation compares with it).
    pub(crate) const CREATED_MS: &str = "created_ms";
}

impl LlmResponse {
    /// The response stored in an envelope (token counts from its metadata).
    pub(crate) fn from_envelope(mut e: Envelope) -> Self {
        let take = |m: &mut Map<String, Json>, k: &str| m.remove(k).and_then(|v| v.as_u64());
        let prompt = take(&mut e.metadata, meta::PROMPT_TOKENS);
        let completion = take(&mut e.metadata, meta::COMPLETION_TOKENS);
        e.metadata.remove(meta::GENERATION);
        e.metadata.remove(meta::CREATED_MS);
        let usage = (prompt.is_some() || completion.is_some())
            .then(|| Usage::new(prompt.unwrap_or(0), completion.unwrap_or(0)));
        LlmResponse {
            text: e.response,
            model: e.model,
            usage,
            metadata: e.metadata,
        }
    }
}

/// An answer to a request, with where it came from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Answer {
    /// The response.
    pub response: LlmResponse,
    /// HIT, MISS or STALE.
    pub status: CacheStatus,
    /// The key the answer is cached under (the full Redis key for a Redis cache).
    pub key: String,
    /// When the served entry was written (unix ms), for hits and stale answers whose
    /// envelope records it.
    pub stored_at_ms: Option<u64>,
}

impl Answer {
    /// The response text.
    pub fn text(&self) -> &str {
        &self.response.text
    }

    /// True for [`CacheStatus::Hit`].
    pub fn is_hit(&self) -> bool {
        self.status == CacheStatus::Hit
    }
}

/// The error of [`ResponseCache::get_or_compute`](super::ResponseCache::get_or_compute):
/// the cache failed (only when it is not fail-open, or the request was invalid), or the
/// compute function failed and there was no stale answer to fall back to.
///
/// The compute error is behind an [`Arc`] so that callers coalesced onto one computation can
/// all receive it (as in moka's `try_get_with`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError<E> {
    /// The request or its controls were invalid, or the cache failed and the cache is not
    /// [fail-open](super::ResponseCacheBuilder::fail_open).
    #[error(transparent)]
    Cache(Error),
    /// The compute function failed.
    #[error("computing the response failed: {0}")]
    Compute(Arc<E>),
}

impl<E> ResponseError<E> {
    /// The cache error, if that is what this is.
    pub fn as_cache(&self) -> Option<&Error> {
        match self {
            ResponseError::Cache(e) => Some(e),
            ResponseError::Compute(_) => None,
        }
    }

    /// The compute function's error, if that is what this is.
    pub fn compute_error(&self) -> Option<&E> {
        match self {
            ResponseError::Compute(e) => Some(e),
            ResponseError::Cache(_) => None,
        }
    }
}

impl<E> Clone for ResponseError<E> {
    fn clone(&self) -> Self {
        match self {
            ResponseError::Cache(e) => ResponseError::Cache(e.clone()),
            ResponseError::Compute(e) => ResponseError::Compute(e.clone()),
        }
    }
}

impl<E> From<Error> for ResponseError<E> {
    fn from(e: Error) -> Self {
        ResponseError::Cache(e)
    }
}
