//! The decisions of a caching proxy for OpenAI- and Anthropic-compatible APIs, without I/O:
//! which routes are cached, what goes into the key, which per-request controls the headers
//! ask for, who the tenant is, what the response headers say, and what to do with the
//! upstream's status. `larder proxy` (native) and the proxy Worker only move bytes and call
//! these.
//!
//! # Keys
//!
//! A request's key is the request hash ([`LlmRequest`], docs/KEY_FORMAT.md) of its JSON body
//! with [the documented exclusions](crate::response::EXCLUDED_FIELDS) and
//! [`PROXY_EXCLUDED_FIELDS`], plus a member `$larder` holding what else changes the answer:
//! the route, whether the answer is streamed (and with the usage chunk), and the
//! `anthropic-version` / `anthropic-beta` headers. It lives in the caller's tenant's
//! namespace ([`Tenancy`]).
//!
//! # Headers
//!
//! | request header | effect |
//! | --- | --- |
//! | `x-larder-cache: no-cache` / `Cache-Control: no-cache` | ask the model, store the answer (refresh) |
//! | `x-larder-cache: no-store` / `Cache-Control: no-store` | do not store the answer |
//! | `x-larder-cache: bypass`, `cf-aig-skip-cache: true`, `Helicone-Cache-Enabled: false` | neither read nor store |
//! | `x-larder-cache: only-if-cached` / `Cache-Control: only-if-cached` | answer from the cache or 504, never ask the model |
//! | `x-larder-ttl: S`, `Cache-Control: max-age=S`, `cf-aig-cache-ttl: S` | store for S seconds |
//! | `x-larder-namespace: N`, `Helicone-Cache-Seed: N` | a separate key space inside the tenant |
//! | `x-larder-tags: a,b` | tags for invalidation |
//!
//! Every answer carries `x-larder-cache` (`HIT`, `MISS`, `STALE`, `COALESCED`, `BYPASS`),
//! `x-larder-key` (the first 16 hex digits of the request hash) and, when read from the
//! cache, `Age`; a request that used Cloudflare's or Helicone's headers also gets
//! `cf-aig-cache-status` or `helicone-cache` (`HIT`/`MISS`).

use std::time::Duration;

mod engine;
mod settings;

pub use engine::{
    DEFAULT_BODY_LIMIT, EventBody, ProxyBody, ProxyEngine, ProxyEngineBuilder, ProxyIo,
    ProxyRequest, ProxyResponse, Route, SendError, UpstreamRequest, UpstreamResponse,
};
pub use settings::{
    DEFAULT_ANTHROPIC_UPSTREAM, DEFAULT_MEMORY_ENTRIES, DEFAULT_PREFIX, DEFAULT_READ_TIMEOUT_MS,
    DEFAULT_STALE_SECS, DEFAULT_TTL_SECS, DEFAULT_UPSTREAM, ProxySettings,
};

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::compute::Status;
use crate::error::{Error, Result};
use crate::response::{CacheControl, LlmRequest, LlmResponse, Usage, meta};
use crate::stream::Format;

/// Body fields a proxy also leaves out of the key: they steer the provider's own caching
/// and abuse detection, never the answer.
pub const PROXY_EXCLUDED_FIELDS: &[&str] = &[
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
];

/// The metadata member in which a stored answer keeps the upstream's response body.
pub const BODY_META: &str = "http_body";

/// A cached API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Api {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Api {
    /// The cached API a request goes to, or `None` when it is passed through untouched.
    pub fn from_route(method: &str, path: &str) -> Option<Api> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        Some(match path {
            "/v1/chat/completions" => Api::ChatCompletions,
            "/v1/completions" => Api::Completions,
            "/v1/responses" => Api::Responses,
            "/v1/embeddings" => Api::Embeddings,
            "/v1/messages" => Api::Messages,
            _ => return None,
        })
    }

    /// The route.
    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Responses => "/v1/responses",
            Api::Embeddings => "/v1/embeddings",
            Api::Messages => "/v1/messages",
        }
    }

    /// Whether the Anthropic upstream serves it.
    pub fn is_anthropic(self) -> bool {
        self == Api::Messages
    }

    /// The stream format of its streamed answers.
    pub fn stream_format(self) -> Option<Format> {
        match self {
            Api::ChatCompletions | Api::Completions => Some(Format::OpenAiChat),
            Api::Responses => Some(Format::OpenAiResponses),
            Api::Messages => Some(Format::AnthropicMessages),
            Api::Embeddings => None,
        }
    }

    /// A short lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Embeddings => "embeddings",
            Api::Messages => "messages",
        }
    }
}

/// How callers are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Tenancy {
    /// Each credential (`Authorization`, `x-api-key`, `api-key`, with `OpenAI-Organization`
    /// and `OpenAI-Project`) is a tenant: its SHA-256, never the credential, names its
    /// namespace, so two API keys never share an answer.
    #[default]
    PerCredential,
    /// Every caller shares one cache (the operator trusts them all alike).
    Shared,
}

/// How a request uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheUse {
    /// Read, and store misses (as [`CacheControl`] says).
    Normal,
    /// Neither read nor store: the upstream's answer as is, marked BYPASS.
    Bypass,
    /// Answer from the cache or not at all (504).
    OnlyIfCached,
}

/// Which alias headers a request used, so the answer can speak the same dialect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dialects {
    /// Cloudflare AI Gateway headers (`cf-aig-*`, `cf-*-cache*`).
    pub cloudflare: bool,
    /// Helicone headers (`Helicone-Cache-*`).
    pub helicone: bool,
}

/// What the proxy does with one request to a cached route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// The API.
    pub api: Api,
    /// The request, as keyed.
    pub request: LlmRequest,
    /// Per-request cache settings (the tenant's namespace, TTL, tags, refresh, no-store).
    pub control: CacheControl,
    /// How the cache is used.
    pub cache_use: CacheUse,
    /// Whether the caller asked for a streamed answer.
    pub stream: bool,
    /// The tenant (hashed), if tenancy is per credential.
    pub tenant: Option<String>,
    /// Alias dialects the request used.
    pub dialects: Dialects,
}

/// Plans a request to a cached route from its body and headers (names in any case).
///
/// # Errors
///
/// [`Error::InvalidInput`] with a message for the caller (HTTP 400): a body that is not a
/// JSON object with a `model`, or a malformed control header.
pub fn plan<'h>(
    api: Api,
    body: &[u8],
    headers: impl IntoIterator<Item = (&'h str, &'h str)> + Clone,
    tenancy: Tenancy,
    secret: Option<&crate::seal::HashKey>,
) -> Result<Plan> {
    let json: Json = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidInput(format!("the request body is not JSON: {e}")))?;
    let Json::Object(mut fields) = json else {
        return Err(Error::InvalidInput(
            "the request body is not a JSON object".into(),
        ));
    };
    let stream = fields
        .get("stream")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let include_usage = fields
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Json::as_bool)
        .unwrap_or(false);
    for f in PROXY_EXCLUDED_FIELDS {
        fields.remove(*f);
    }
    let header = |name: &str| {
        headers
            .clone()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let mut context = Map::new();
    context.insert("route".into(), api.path().into());
    if stream {
        context.insert("stream".into(), true.into());
        if include_usage {
            context.insert("include_usage".into(), true.into());
        }
    }
    for h in ["anthropic-version", "anthropic-beta"] {
        if let Some(v) = header(h) {
            context.insert(h.into(), v.into());
        }
    }
    fields.insert("$larder".into(), Json::Object(context));
    let request = LlmRequest::from_json(Json::Object(fields))?;

    let mut control = CacheControl::default();
    let mut cache_use = CacheUse::Normal;
    let mut dialects = Dialects::default();
    let mut directives = |list: &str, cache_use: &mut CacheUse| -> Result<()> {
        for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let lower = d.to_ascii_lowercase();
            match lower.as_str() {
                "no-cache" => control.no_cache = true,
                "no-store" => control.no_store = true,
                "bypass" => *cache_use = CacheUse::Bypass,
                "only-if-cached" => *cache_use = CacheUse::OnlyIfCached,
                // Other Cache-Control directives mean nothing to an answer cache.
                _ => {
                    if let Some(s) = lower.strip_prefix("max-age=") {
                        control.ttl = Some(seconds("Cache-Control max-age", s)?);
                    }
                }
            }
        }
        Ok(())
    };
    if let Some(v) = header("cache-control") {
        directives(v, &mut cache_use)?;
    }
    if let Some(v) = header("x-larder-cache") {
        directives(v, &mut cache_use)?;
    }
    for (name, dialect) in [
        ("cf-aig-cache-ttl", 0),
        ("cf-cache-ttl", 0),
        ("x-larder-ttl", 2),
    ] {
        if let Some(v) = header(name) {
            control.ttl = Some(seconds(name, v)?);
            dialects.cloudflare |= dialect == 0;
        }
    }
    for name in ["cf-aig-skip-cache", "cf-skip-cache"] {
        if let Some(v) = header(name) {
            dialects.cloudflare = true;
            if truthy(name, v)? {
                cache_use = CacheUse::Bypass;
            }
        }
    }
    if let Some(v) = header("helicone-cache-enabled") {
        dialects.helicone = true;
        if !truthy("Helicone-Cache-Enabled", v)? {
            cache_use = CacheUse::Bypass;
        }
    }
    let namespace = header("x-larder-namespace")
        .or_else(|| header("helicone-cache-seed").inspect(|_| dialects.helicone = true));
    if let Some(tags) = header("x-larder-tags") {
        control.tags = tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
    }
    let tenant = match tenancy {
        Tenancy::Shared => None,
        Tenancy::PerCredential => Some(tenant_of(headers.clone(), secret)),
    };
    let ns = match (&tenant, namespace) {
        (Some(t), Some(n)) => Some(format!("{t}:{n}")),
        (Some(t), None) => Some(t.clone()),
        (None, n) => n.map(str::to_owned),
    };
    if let Some(ns) = ns {
        control.namespace = Some(ns);
    }
    control.validate()?;
    Ok(Plan {
        api,
        request,
        control,
        cache_use,
        stream,
        tenant,
        dialects,
    })
}

fn seconds(name: &str, v: &str) -> Result<Duration> {
    match v.parse::<u64>() {
        Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
        _ => Err(Error::InvalidInput(format!(
            "{name} must be a whole number of seconds greater than zero, got {v:?}"
        ))),
    }
}

fn truthy(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::InvalidInput(format!(
            "{name} must be true or false, got {v:?}"
        ))),
    }
}

/// The tenant of a request: `t-` and 16 hex digits of the SHA-256 (with a `secret`, the
/// HMAC-SHA-256) of its credential headers, every value of each in order (so a request
/// repeating a header is a tenant of its own), or `anonymous` without one.
fn tenant_of<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h str)> + Clone,
    secret: Option<&crate::seal::HashKey>,
) -> String {
    let mut h = Vec::new();
    h.extend_from_slice(b"larder-tenant-v1\0");
    let mut any = false;
    for name in [
        "authorization",
        "x-api-key",
        "api-key",
        "openai-organization",
        "openai-project",
    ] {
        for (_, v) in headers
            .clone()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            any = true;
            h.extend_from_slice(name.as_bytes());
            h.push(0);
            h.extend_from_slice(v.trim().as_bytes());
            h.push(0);
        }
    }
    if !any {
        return "anonymous".into();
    }
    let digest = match secret {
        Some(k) => k.hash_hex(&h),
        None => crate::transport::hex(&Sha256::digest(&h)),
    };
    format!("t-{}", &digest[..16])
}

/// What to do with the upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamVerdict {
    /// 2xx: pass it on and store it.
    Store,
    /// A 4xx other than 408 and 429: the request itself is wrong; pass it on, never store it
    /// and never answer it from the cache instead.
    Reject,
    /// 5xx, 408, 429 (and a connection error or timeout): serve a stale answer if there is
    /// one, else pass the upstream's error on.
    Retryable,
}

/// Classifies the upstream's status.
pub fn upstream_verdict(status: u16) -> UpstreamVerdict {
    match status {
        200..=299 => UpstreamVerdict::Store,
        408 | 429 => UpstreamVerdict::Retryable,
        400..=499 => UpstreamVerdict::Reject,
        _ => UpstreamVerdict::Retryable,
    }
}

/// The answer to store for a non-streamed upstream response: its text (for readers of
/// the envelope), model and usage as the API reports them, and the body itself
/// ([`BODY_META`]) to answer hits with.
pub fn response_of(api: Api, body: &[u8]) -> LlmResponse {
    let text = String::from_utf8_lossy(body).into_owned();
    let json: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
    let mut r = LlmResponse::new(extract_text(api, &json));
    if let Some(m) = json.get("model").and_then(Json::as_str) {
        r = r.with_model(m);
    }
    let u = &json["usage"];
    let n = |v: &Json| v.as_u64();
    let (input, output) = match api {
        Api::Messages | Api::Responses => (n(&u["input_tokens"]), n(&u["output_tokens"])),
        _ => (n(&u["prompt_tokens"]), n(&u["completion_tokens"])),
    };
    if input.is_some() || output.is_some() {
        r = r.with_usage(Usage::new(input.unwrap_or(0), output.unwrap_or(0)));
    }
    let cache_read = n(&u["prompt_tokens_details"]["cached_tokens"])
        .or_else(|| n(&u["input_tokens_details"]["cached_tokens"]))
        .or_else(|| n(&u["cache_read_input_tokens"]));
    if let Some(c) = cache_read.filter(|c| *c > 0) {
        r = r.with_metadata(meta::CACHE_READ_TOKENS, c);
    }
    if let Some(c) = n(&u["cache_creation_input_tokens"]).filter(|c| *c > 0) {
        r = r.with_metadata(meta::CACHE_WRITE_TOKENS, c);
    }
    r.with_metadata(BODY_META, text)
}

fn extract_text(api: Api, v: &Json) -> String {
    match api {
        Api::ChatCompletions => v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Api::Completions => v["choices"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Api::Responses => v["output"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|item| item["content"].as_array().into_iter().flatten())
            .filter(|c| c["type"] == "output_text")
            .filter_map(|c| c["text"].as_str())
            .collect(),
        Api::Messages => v["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["type"] == "text")
            .filter_map(|c| c["text"].as_str())
            .collect(),
        Api::Embeddings => String::new(),
    }
}

/// The stored body of a non-streamed answer, if it has one.
pub fn stored_body(r: &LlmResponse) -> Option<&str> {
    r.metadata.get(BODY_META).and_then(Json::as_str)
}

/// The cache-status word of an answer (`BYPASS` when the cache was not used).
fn status_word(status: Option<Status>) -> &'static str {
    match status {
        None => "BYPASS",
        Some(s) => s.as_str(),
    }
}

/// The response headers that say what happened, for an answer with `status` (`None`:
/// bypassed), the request hash `key_hash`, and, for an answer read from the cache, when it
/// was written.
pub fn response_headers(
    plan: &Plan,
    status: Option<Status>,
    key_hash: &str,
    stored_at_ms: Option<u64>,
    now_ms: u64,
) -> Vec<(&'static str, String)> {
    let word = status_word(status);
    let mut out = vec![
        ("x-larder-cache", word.to_owned()),
        (
            "x-larder-key",
            key_hash[..key_hash.len().min(16)].to_owned(),
        ),
    ];
    if let (Some(Status::Hit | Status::Stale), Some(at)) = (status, stored_at_ms) {
        out.push(("age", (now_ms.saturating_sub(at) / 1000).to_string()));
    }
    let hit_or_miss = if matches!(status, Some(Status::Hit | Status::Stale)) {
        "HIT"
    } else {
        "MISS"
    };
    if plan.dialects.cloudflare {
        out.push(("cf-aig-cache-status", hit_or_miss.to_owned()));
    }
    if plan.dialects.helicone {
        out.push(("helicone-cache", hit_or_miss.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
        pairs.iter().copied()
    }

    const BODY: &[u8] =
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"temperature":0}"#;

    fn key(p: &Plan) -> String {
        p.request.hash().unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(
            Api::from_route("POST", "/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(Api::from_route("post", "/v1/messages"), Some(Api::Messages));
        assert_eq!(Api::from_route("GET", "/v1/chat/completions"), None);
        assert_eq!(Api::from_route("POST", "/v1/models"), None);
        assert_eq!(Api::from_route("POST", "/v1/chat/completions/"), None);
    }

    #[test]
    fn the_key_covers_route_stream_and_answer_changing_headers_only() {
        let base = plan(Api::ChatCompletions, BODY, h(&[]), Tenancy::Shared, None).unwrap();
        let other_route = plan(Api::Completions, BODY, h(&[]), Tenancy::Shared, None).unwrap();
        assert_ne!(key(&base), key(&other_route));
        let streamed = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"temperature":0,"stream":true}"#;
        let s = plan(
            Api::ChatCompletions,
            streamed,
            h(&[]),
            Tenancy::Shared,
            None,
        )
        .unwrap();
        assert!(s.stream);
        assert_ne!(
            key(&base),
            key(&s),
            "a streamed answer is a different answer"
        );
        // Fields that never change the answer, and SDK headers, are not keyed.
        let noisy = br#"{"temperature":0,"user":"u1","metadata":{"a":1},"safety_identifier":"x","prompt_cache_key":"k","messages":[{"role":"user","content":"Hi"}],"model":"gpt-4o-mini"}"#;
        let n = plan(
            Api::ChatCompletions,
            noisy,
            h(&[("X-Stainless-Retry-Count", "2"), ("User-Agent", "x")]),
            Tenancy::Shared,
            None,
        )
        .unwrap();
        assert_eq!(key(&base), key(&n));
        let a = plan(
            Api::Messages,
            BODY,
            h(&[("anthropic-version", "2023-06-01")]),
            Tenancy::Shared,
            None,
        )
        .unwrap();
        let b = plan(
            Api::Messages,
            BODY,
            h(&[
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "tools-1"),
            ]),
            Tenancy::Shared,
            None,
        )
        .unwrap();
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn tenants_come_from_credentials_hashed() {
        let p = |auth: &str| {
            plan(
                Api::ChatCompletions,
                BODY,
                h(&[("Authorization", auth)]),
                Tenancy::PerCredential,
                None,
            )
            .unwrap()
        };
        let (a, a2, b) = (p("Bearer sk-a"), p("Bearer sk-a"), p("Bearer sk-b"));
        assert_eq!(a.tenant, a2.tenant);
        assert_ne!(a.tenant, b.tenant);
        let t = a.tenant.clone().unwrap();
        assert!(
            t.starts_with("t-") && t.len() == 18 && !t.contains("sk-a"),
            "{t}"
        );
        assert_eq!(a.control.namespace.as_deref(), Some(t.as_str()));
        let both = plan(
            Api::ChatCompletions,
            BODY,
            h(&[
                ("authorization", "Bearer sk-a"),
                ("Authorization", "Bearer sk-b"),
            ]),
            Tenancy::PerCredential,
            None,
        )
        .unwrap();
        assert_ne!(
            both.tenant, a.tenant,
            "a repeated credential header is a tenant of its own"
        );
        assert_ne!(both.tenant, b.tenant);
        let secret = crate::seal::HashKey::new(vec![5; 32]).unwrap();
        let keyed = plan(
            Api::ChatCompletions,
            BODY,
            h(&[("Authorization", "Bearer sk-a")]),
            Tenancy::PerCredential,
            Some(&secret),
        )
        .unwrap();
        assert_ne!(
            keyed.tenant, a.tenant,
            "with a secret the tenant is an HMAC"
        );
        let anon = plan(
            Api::ChatCompletions,
            BODY,
            h(&[]),
            Tenancy::PerCredential,
            None,
        )
        .unwrap();
        assert_eq!(anon.tenant.as_deref(), Some("anonymous"));
        let ns = plan(
            Api::ChatCompletions,
            BODY,
            h(&[("x-api-key", "k"), ("x-larder-namespace", "exp-1")]),
            Tenancy::PerCredential,
            None,
        )
        .unwrap();
        assert!(ns.control.namespace.unwrap().ends_with(":exp-1"));
    }

    #[test]
    fn controls_and_their_aliases() {
        let p =
            |hs: &[(&str, &str)]| plan(Api::ChatCompletions, BODY, h(hs), Tenancy::Shared, None);
        let c = p(&[("Cache-Control", "no-cache, max-age=60")]).unwrap();
        assert!(c.control.no_cache);
        assert_eq!(c.control.ttl, Some(Duration::from_secs(60)));
        assert!(
            p(&[("cache-control", "no-store")])
                .unwrap()
                .control
                .no_store
        );
        assert_eq!(
            p(&[("x-larder-cache", "only-if-cached")])
                .unwrap()
                .cache_use,
            CacheUse::OnlyIfCached
        );
        let cf = p(&[("cf-aig-skip-cache", "true")]).unwrap();
        assert_eq!(cf.cache_use, CacheUse::Bypass);
        assert!(cf.dialects.cloudflare);
        let cf = p(&[("cf-aig-cache-ttl", "3600")]).unwrap();
        assert_eq!(cf.control.ttl, Some(Duration::from_secs(3600)));
        let he = p(&[("Helicone-Cache-Enabled", "false")]).unwrap();
        assert_eq!(he.cache_use, CacheUse::Bypass);
        let he = p(&[
            ("Helicone-Cache-Enabled", "true"),
            ("Helicone-Cache-Seed", "s1"),
        ])
        .unwrap();
        assert_eq!(
            (he.cache_use, he.control.namespace.as_deref()),
            (CacheUse::Normal, Some("s1"))
        );
        let tags = p(&[("x-larder-tags", "a, b")]).unwrap();
        assert_eq!(tags.control.tags, ["a", "b"]);
        for bad in [
            &[("x-larder-ttl", "0")][..],
            &[("cf-aig-cache-ttl", "soon")],
            &[("cf-aig-skip-cache", "maybe")],
            &[("x-larder-namespace", "has space")],
        ] {
            let e = p(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{bad:?}: {e}");
        }
        assert!(plan(Api::ChatCompletions, b"[1]", h(&[]), Tenancy::Shared, None).is_err());
        assert!(plan(Api::ChatCompletions, b"{", h(&[]), Tenancy::Shared, None).is_err());
    }

    #[test]
    fn upstream_statuses() {
        assert_eq!(upstream_verdict(200), UpstreamVerdict::Store);
        assert_eq!(upstream_verdict(400), UpstreamVerdict::Reject);
        assert_eq!(upstream_verdict(401), UpstreamVerdict::Reject);
        assert_eq!(upstream_verdict(429), UpstreamVerdict::Retryable);
        assert_eq!(upstream_verdict(500), UpstreamVerdict::Retryable);
        assert_eq!(upstream_verdict(503), UpstreamVerdict::Retryable);
    }

    #[test]
    fn stored_answers_keep_the_body_text_and_usage() {
        let body = br#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"}}],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let r = response_of(Api::ChatCompletions, body);
        assert_eq!(r.text, "Hello!");
        assert_eq!(r.usage, Some(Usage::new(9, 2)));
        assert_eq!(stored_body(&r).unwrap().as_bytes(), body);
        assert_eq!(r.metadata[meta::CACHE_READ_TOKENS], 4);
        let m = br#"{"model":"claude","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t"}],"usage":{"input_tokens":5,"output_tokens":1,"cache_read_input_tokens":3}}"#;
        let r = response_of(Api::Messages, m);
        assert_eq!((r.text.as_str(), r.usage), ("Hi", Some(Usage::new(5, 1))));
    }

    #[test]
    fn headers_say_what_happened() {
        let p = plan(
            Api::ChatCompletions,
            BODY,
            h(&[("cf-aig-cache-ttl", "60")]),
            Tenancy::Shared,
            None,
        )
        .unwrap();
        let hs = response_headers(
            &p,
            Some(Status::Hit),
            "abcdef0123456789ffff",
            Some(1_000),
            61_000,
        );
        assert!(hs.contains(&("x-larder-cache", "HIT".into())));
        assert!(hs.contains(&("x-larder-key", "abcdef0123456789".into())));
        assert!(hs.contains(&("age", "60".into())));
        assert!(hs.contains(&("cf-aig-cache-status", "HIT".into())));
        let hs = response_headers(&p, None, "abc", None, 0);
        assert!(hs.contains(&("x-larder-cache", "BYPASS".into())));
    }
}
