//! [`LlmRequest`]: the whole LLM request a response is cached under.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};
use crate::keys::{go_deep_agent_key, request_hash};

/// Top-level request fields that never change the response, so they are left out of the
/// cache key: two requests that differ only in these fields share one entry.
///
/// | field | why it is excluded |
/// | --- | --- |
/// | `stream`, `stream_options` | how the answer is delivered, not what it says |
/// | `user`, `metadata`, `store`, `service_tier` | accounting, abuse monitoring and storage on the provider's side |
/// | `timeout`, `request_timeout`, `extra_headers`, `extra_query` | client transport settings |
/// | `api_key`, `api_base`, `base_url` | credentials and endpoints (never hashed, never stored) |
/// | `larder` | reserved for larder's own per-request settings in JSON bodies |
///
/// Everything else is part of the key: `model`, `messages`, `prompt`, `system`,
/// `temperature`, `top_p`, `max_tokens`, `stop`, `seed`, `tools`, `response_format`, `n`, …
/// Only top-level fields are excluded; nested values are hashed as they are.
pub const EXCLUDED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "timeout",
    "request_timeout",
    "extra_headers",
    "extra_query",
    "api_key",
    "api_base",
    "base_url",
    "larder",
];

/// An LLM request: a JSON object in the shape of an OpenAI-compatible chat completion (or
/// completion) body, with a `model`.
///
/// Build one with [`LlmRequest::chat`] or [`LlmRequest::prompt`] and the setters, or take a
/// body you already have with [`LlmRequest::from_json`]. The cache key is the
/// [`request_hash`] of the body without the [`EXCLUDED_FIELDS`] — object key order and
/// whitespace never matter (see docs/KEY_FORMAT.md).
///
/// # Examples
///
/// ```
/// use larder_core::response::LlmRequest;
///
/// let a = LlmRequest::chat("gpt-4o-mini")
///     .system("You are terse.")
///     .user("What is the capital of France?")
///     .temperature(0.2)
///     .param("max_tokens", 64);
/// let b = LlmRequest::from_json(serde_json::json!({
///     "temperature": 0.2,
///     "max_tokens": 64,
///     "model": "gpt-4o-mini",
///     "stream": true,              // excluded from the key
///     "messages": [
///         {"role": "system", "content": "You are terse."},
///         {"role": "user", "content": "What is the capital of France?"},
///     ],
/// }))?;
/// assert_eq!(a.hash()?, b.hash()?);
/// assert_eq!(a.model(), "gpt-4o-mini");
/// assert_eq!(a.prompt_text(), Some("What is the capital of France?"));
/// # Ok::<(), larder_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Json", into = "Json")]
pub struct LlmRequest {
    body: Map<String, Json>,
}

impl LlmRequest {
    /// A chat request for `model` with no messages yet.
    pub fn chat(model: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("model".into(), Json::String(model.into()));
        body.insert("messages".into(), Json::Array(Vec::new()));
        LlmRequest { body }
    }

    /// A single-prompt request (`{"model": …, "prompt": …}`), the shape go-deep-agent's
    /// `Ask(message)` has.
    pub fn prompt(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("model".into(), Json::String(model.into()));
        body.insert("prompt".into(), Json::String(prompt.into()));
        LlmRequest { body }
    }

    /// Takes a JSON request body.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `body` is not an object or has no string `model`.
    pub fn from_json(body: Json) -> Result<Self> {
        match body {
            Json::Object(body) => match body.get("model") {
                Some(Json::String(m)) if !m.is_empty() => Ok(LlmRequest { body }),
                _ => Err(Error::InvalidInput(
                    "an LLM request needs a non-empty string \"model\" field".into(),
                )),
            },
            other => Err(Error::InvalidInput(format!(
                "an LLM request must be a JSON object with a \"model\", got {}",
                kind_of(&other)
            ))),
        }
    }

    /// Parses a JSON request body from text (one line of a JSONL warm-up file, a CLI flag).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the text is not JSON, or as [`LlmRequest::from_json`].
    pub fn from_json_str(text: &str) -> Result<Self> {
        let body: Json = serde_json::from_str(text)
            .map_err(|e| Error::InvalidInput(format!("request is not valid JSON: {e}")))?;
        Self::from_json(body)
    }

    /// Sets the system prompt: the leading `system` message of a chat request (replacing
    /// one that is there), or the `system` field of a prompt request.
    #[must_use]
    pub fn system(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        if let Some(Json::Array(messages)) = self.body.get_mut("messages") {
            let msg = message("system", text);
            match messages.first() {
                Some(first) if role_of(first) == Some("system") => messages[0] = msg,
                _ => messages.insert(0, msg),
            }
        } else {
            self.body.insert("system".into(), Json::String(text));
        }
        self
    }

    /// Appends a `user` message (a chat request) or sets the `prompt` (a prompt request).
    #[must_use]
    pub fn user(self, text: impl Into<String>) -> Self {
        if self.body.contains_key("messages") {
            self.message("user", text)
        } else {
            self.param("prompt", text.into())
        }
    }

    /// Appends an `assistant` message (conversation history).
    #[must_use]
    pub fn assistant(self, text: impl Into<String>) -> Self {
        self.message("assistant", text)
    }

    /// Appends a message with any role (turns a prompt request into a chat request).
    #[must_use]
    pub fn message(mut self, role: &str, content: impl Into<String>) -> Self {
        let messages = self
            .body
            .entry("messages")
            .or_insert_with(|| Json::Array(Vec::new()));
        if !messages.is_array() {
            *messages = Json::Array(Vec::new());
        }
        if let Json::Array(list) = messages {
            list.push(message(role, content.into()));
        }
        self
    }

    /// Sets the sampling temperature. A NaN or infinite temperature is stored as JSON
    /// `null` (JSON has no such numbers).
    #[must_use]
    pub fn temperature(self, temperature: f64) -> Self {
        self.param("temperature", temperature)
    }

    /// Sets any other field (`max_tokens`, `top_p`, `seed`, `tools`, …).
    #[must_use]
    pub fn param(mut self, name: impl Into<String>, value: impl Into<Json>) -> Self {
        self.body.insert(name.into(), value.into());
        self
    }

    /// The model.
    pub fn model(&self) -> &str {
        self.body
            .get("model")
            .and_then(Json::as_str)
            .unwrap_or_default()
    }

    /// The temperature, when set to a number.
    pub fn temperature_value(&self) -> Option<f64> {
        self.body.get("temperature").and_then(Json::as_f64)
    }

    /// The system prompt: the `system` field, or the content of the first `system` message.
    pub fn system_prompt(&self) -> Option<&str> {
        if let Some(s) = self.body.get("system").and_then(Json::as_str) {
            return Some(s);
        }
        self.messages()
            .iter()
            .find(|m| role_of(m) == Some("system"))
            .and_then(|m| m.get("content"))
            .and_then(Json::as_str)
    }

    /// The prompt: the `prompt` field, or the content of the last `user` message.
    pub fn prompt_text(&self) -> Option<&str> {
        if let Some(s) = self.body.get("prompt").and_then(Json::as_str) {
            return Some(s);
        }
        self.messages()
            .iter()
            .rev()
            .find(|m| role_of(m) == Some("user"))
            .and_then(|m| m.get("content"))
            .and_then(Json::as_str)
    }

    fn messages(&self) -> &[Json] {
        self.body
            .get("messages")
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The whole body, as given (excluded fields included).
    pub fn body(&self) -> &Map<String, Json> {
        &self.body
    }

    /// The body as a JSON value.
    pub fn to_json(&self) -> Json {
        Json::Object(self.body.clone())
    }

    /// The fields the key is computed from: the body without [`EXCLUDED_FIELDS`].
    pub fn key_fields(&self) -> Map<String, Json> {
        self.body
            .iter()
            .filter(|(k, _)| !EXCLUDED_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The request hash (64 lowercase hex digits): [`request_hash`] of
    /// [`key_fields`](LlmRequest::key_fields).
    ///
    /// # Errors
    ///
    /// As [`request_hash`] (it does not fail for JSON bodies).
    pub fn hash(&self) -> Result<String> {
        request_hash(&self.key_fields())
    }

    /// The keyed request hash (64 lowercase hex digits): HMAC-SHA-256 under `key` of the
    /// canonical JSON of [`key_fields`](LlmRequest::key_fields), which reveals nothing
    /// about the request without the secret (docs/KEY_FORMAT.md §10).
    ///
    /// # Errors
    ///
    /// As [`hash`](LlmRequest::hash).
    pub fn keyed_hash(&self, key: &crate::seal::HashKey) -> Result<String> {
        let json = crate::keys::canonical_json(&self.key_fields())?;
        Ok(key.hash_hex(json.as_bytes()))
    }

    /// go-deep-agent's `GenerateCacheKey(model, prompt, temperature, system)` for this
    /// request: the [`prompt_text`](LlmRequest::prompt_text) (empty when none), the
    /// temperature (0 when unset, as the Go agent does) and the
    /// [`system_prompt`](LlmRequest::system_prompt) (empty when none). Every other field
    /// (history, `max_tokens`, tools…) is ignored, exactly as in go-deep-agent.
    pub fn go_deep_agent_key(&self) -> String {
        go_deep_agent_key(
            self.model(),
            self.prompt_text().unwrap_or_default(),
            self.temperature_value().unwrap_or(0.0),
            self.system_prompt().unwrap_or_default(),
        )
    }
}

impl TryFrom<Json> for LlmRequest {
    type Error = Error;
    fn try_from(value: Json) -> Result<Self> {
        LlmRequest::from_json(value)
    }
}

impl From<LlmRequest> for Json {
    fn from(r: LlmRequest) -> Json {
        Json::Object(r.body)
    }
}

fn message(role: &str, content: String) -> Json {
    let mut m = Map::new();
    m.insert("role".into(), Json::String(role.into()));
    m.insert("content".into(), Json::String(content));
    Json::Object(m)
}

fn role_of(m: &Json) -> Option<&str> {
    m.get("role").and_then(Json::as_str)
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}
