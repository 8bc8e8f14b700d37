//! What a [`ResponseCache`](super::ResponseCache) returns: [`Fetched`]`<`[`LlmResponse`]`>` and
//! [`Usage`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::compute::Fetched;
use crate::envelope::Envelope;

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
    pub(crate) use crate::envelope::CREATED_MS;
    /// Why the model stopped (`stop`, `tool_calls`, `end_turn`, …), from a stream.
    pub(crate) const FINISH_REASON: &str = "finish_reason";
    /// Tool calls of a streamed answer, `[{"id","name","arguments"}]`.
    pub(crate) const TOOL_CALLS: &str = "tool_calls";
    /// Reasoning text a stream carried.
    pub(crate) const REASONING: &str = "reasoning";
    /// Input tokens the provider served from its own prompt cache (counted apart in the
    /// analytics).
    pub(crate) const CACHE_READ_TOKENS: &str = "cache_read_tokens";
    /// Input tokens the provider wrote to its own prompt cache.
    pub(crate) const CACHE_WRITE_TOKENS: &str = "cache_write_tokens";
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

/// The response cache's answers are `Fetched<LlmResponse>`: the response, its status and,
/// for answers read from the cache, when they were written ([`Status`](crate::Status)).
impl Fetched<LlmResponse> {
    /// The response text.
    pub fn text(&self) -> &str {
        &self.value.text
    }
}
