//! larder for JavaScript: `larder-core` compiled to wasm32 with wasm-bindgen.
//!
//! This file only converts between JavaScript and core: every decision (keys, envelope,
//! lease, stream recording, encryption) is core's. Values cross as JSON text (one
//! `JSON.stringify`/`serde_json` pair per call, no reflection glue), bytes as `Uint8Array`.
//! The I/O is JavaScript's: the REST calls go through a `post` function the wrapper
//! (`larder.js`) builds on the platform `fetch`.
//!
//! Errors are JavaScript `Error`s whose `name` says what failed (`ConfigError`,
//! `InvalidInputError`, `CacheError`, `StreamError`); `larder.js` turns them into its
//! `Error` subclasses. A computation's or an upstream stream's own error is rethrown as
//! it was thrown. Nothing here panics on input (a panic would be a wasm trap).

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use js_sys::{Function, Promise, Reflect, Uint8Array};
use larder_core::compute::ComputeError;
use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache};
use larder_core::seal::{HashKey, Keyring as CoreKeyring};
use larder_core::stream::{StreamError, Streamed};
use larder_core::{CacheExt, Envelope, ErrorKind, MemoryCache, RedisCache, TransportError};
use larder_edge::{HttpClient, HttpRequest, HttpResponse, RestTransport, RestTransportBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

// ---------------------------------------------------------------------------------------
// Errors

/// A JavaScript `Error` named `name`.
fn error(name: &str, message: impl fmt::Display) -> JsValue {
    let e = js_sys::Error::new(&message.to_string());
    e.set_name(name);
    // What the wrapper recognises (a caller's own error never has it).
    let _ = Reflect::set(
        &e,
        &JsValue::from_str("larderKind"),
        &JsValue::from_str(name),
    );
    e.into()
}

fn core_error(e: larder_core::Error) -> JsValue {
    match &e {
        larder_core::Error::InvalidInput(_) | larder_core::Error::Serialize(_) => {
            error("InvalidInputError", e)
        }
        _ => error("CacheError", e),
    }
}

fn invalid(message: impl fmt::Display) -> JsValue {
    error("InvalidInputError", message)
}

/// A JavaScript value thrown by the caller's code (a computation, an upstream stream),
/// carried through core unchanged and rethrown as it was.
struct Thrown(JsValue);

impl fmt::Debug for Thrown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thrown({self})")
    }
}

impl fmt::Display for Thrown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.dyn_ref::<js_sys::Error>() {
            Some(e) => write!(f, "{}", String::from(e.message())),
            None => write!(
                f,
                "{}",
                self.0
                    .as_string()
                    .unwrap_or_else(|| "a thrown value".into())
            ),
        }
    }
}

impl std::error::Error for Thrown {}

fn compute_error(e: ComputeError<Thrown>) -> JsValue {
    match e {
        ComputeError::Compute(t) => t.0.clone(),
        ComputeError::Cache(c) => core_error(c),
        other => error("CacheError", other),
    }
}

// ---------------------------------------------------------------------------------------
// Keys, envelopes, encryption

fn parse_json(text: &str, what: &str) -> Result<Json, JsValue> {
    serde_json::from_str(text).map_err(|e| invalid(format!("{what} is not JSON: {e}")))
}

/// The canonical JSON of a JSON text (docs/KEY_FORMAT.md §3).
#[wasm_bindgen(js_name = canonicalJson)]
pub fn canonical_json(json: &str) -> Result<String, JsValue> {
    let value = parse_json(json, "the value")?;
    larder_core::canonical_json(&value).map_err(core_error)
}

/// The request hash of a JSON text: SHA-256 of its canonical JSON, or HMAC-SHA-256 with
/// `secret` (base64) — docs/KEY_FORMAT.md §2 and §10.
#[wasm_bindgen(js_name = requestHash)]
pub fn request_hash(json: &str, secret: Option<String>) -> Result<String, JsValue> {
    let value = parse_json(json, "the request")?;
    match secret {
        None => larder_core::request_hash(&value).map_err(core_error),
        Some(s) => {
            let key = HashKey::parse(&s)
                .map_err(|e| error("ConfigError", format!("the hash secret: {e}")))?;
            let canonical = larder_core::canonical_json(&value).map_err(core_error)?;
            Ok(key.hash_hex(canonical.as_bytes()))
        }
    }
}

/// The bytes of an envelope given as JSON (docs/KEY_FORMAT.md §7: `{v?, response, model?,
/// timestamp?, metadata?, …}`).
#[wasm_bindgen(js_name = encodeEnvelope)]
pub fn encode_envelope(json: &str) -> Result<Vec<u8>, JsValue> {
    Ok(envelope_of(json)?.encode().to_vec())
}

fn envelope_of(json: &str) -> Result<Envelope, JsValue> {
    let mut value = parse_json(json, "the envelope")?;
    // `v` may be left out: this version's.
    if let Some(o) = value.as_object_mut() {
        o.entry("v")
            .or_insert(json!(larder_core::envelope::ENVELOPE_VERSION));
    }
    serde_json::from_value(value)
        .map_err(|e| invalid(format!("an envelope needs a string `response`: {e}")))
}

/// The envelope stored in `bytes`, as JSON `{v, response, model, timestamp, metadata}`
/// (raw text written by other programs reads as `v` 0); `undefined` for corrupt bytes.
#[wasm_bindgen(js_name = decodeEnvelope)]
pub fn decode_envelope(bytes: &[u8]) -> Option<String> {
    Envelope::decode(bytes)
        .into_envelope()
        .and_then(|e| serde_json::to_string(&e).ok())
}

/// An encryption keyring (`id:base64key,…`, the current key first): AES-256-GCM with the
/// Redis key as associated data (docs/KEY_FORMAT.md §10).
#[wasm_bindgen]
pub struct Keyring(CoreKeyring);

#[wasm_bindgen]
impl Keyring {
    /// Parses a keyring.
    #[wasm_bindgen(constructor)]
    pub fn new(spec: &str) -> Result<Keyring, JsValue> {
        CoreKeyring::parse(spec)
            .map(Keyring)
            .map_err(|e| error("ConfigError", format!("the encryption keys: {e}")))
    }

    /// Seals `plaintext` for `redisKey` with the current key.
    pub fn seal(&self, redis_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, JsValue> {
        self.0
            .seal(redis_key.as_bytes(), plaintext)
            .map_err(core_error)
    }

    /// Opens a sealed value stored under `redisKey`; `undefined` when it does not open
    /// (another key, tampered, not sealed).
    pub fn open(&self, redis_key: &str, value: &[u8]) -> Option<Vec<u8>> {
        self.0.open(redis_key.as_bytes(), value)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP through JavaScript

/// Sends the REST calls through a JavaScript function
/// `post(url, headers: [name, value][], body: Uint8Array, timeoutMs) →
/// Promise<{status, syncToken, body: Uint8Array}>` (the wrapper's, over `fetch`).
struct JsClient {
    post: Function,
}

impl fmt::Debug for JsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsClient")
    }
}

fn io(what: &str, e: &JsValue) -> TransportError {
    let kind = match e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.name())) {
        Some(n) if n == "TimeoutError" || n == "AbortError" => ErrorKind::Timeout,
        _ => ErrorKind::Io,
    };
    TransportError::new(kind, format!("{what}: {}", Thrown(e.clone())))
}

#[async_trait(?Send)]
impl HttpClient for JsClient {
    async fn post(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let headers = js_sys::Array::new();
        for (name, value) in &request.headers {
            headers.push(&js_sys::Array::of2(
                &JsValue::from_str(name),
                &JsValue::from_str(value),
            ));
        }
        let body = Uint8Array::from(&request.body[..]);
        let timeout = request.timeout.as_millis() as f64;
        let promise = self
            .post
            .call4(
                &JsValue::NULL,
                &JsValue::from_str(&request.url),
                &headers,
                &body,
                &JsValue::from_f64(timeout),
            )
            .map_err(|e| io("fetch failed", &e))?;
        let response = JsFuture::from(Promise::resolve(&promise))
            .await
            .map_err(|e| io(&format!("fetch {} failed", request.url), &e))?;
        let get = |name: &str| {
            Reflect::get(&response, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
        };
        let status = get("status").as_f64().unwrap_or(0.0) as u16;
        let sync_token = get("syncToken").as_string();
        let body = get("body")
            .dyn_into::<Uint8Array>()
            .map(|b| Bytes::from(b.to_vec()))
            .unwrap_or_default();
        Ok(HttpResponse::new(status, sync_token, body))
    }
}

// ---------------------------------------------------------------------------------------
// The cache

/// What `new Cache(options)` reads (camelCase, as the JavaScript wrapper passes them).
#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    url: Option<String>,
    token: Option<String>,
    base64_args: Option<bool>,
    prefix: Option<String>,
    default_ttl_ms: Option<u64>,
    stale_window_ms: Option<u64>,
    timeout_ms: Option<u64>,
    lease_ttl_ms: Option<u64>,
    max_wait_ms: Option<u64>,
    stream_poll_ms: Option<u64>,
    max_stream_bytes: Option<usize>,
    encryption_keys: Option<String>,
    hash_secret: Option<String>,
    memory_entries: Option<usize>,
    fail_open: Option<bool>,
}

/// Per-call controls (camelCase).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Control {
    ttl_ms: Option<u64>,
    namespace: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    no_cache: bool,
    #[serde(default)]
    no_store: bool,
    #[serde(default)]
    force_refresh: bool,
}

fn control_of(json: &str) -> Result<CacheControl, JsValue> {
    let c: Control = if json.is_empty() {
        Control::default()
    } else {
        serde_json::from_str(json).map_err(|e| invalid(format!("the options: {e}")))?
    };
    let mut control = CacheControl::new();
    if let Some(ms) = c.ttl_ms {
        control = control.ttl(Duration::from_millis(ms));
    }
    if let Some(ns) = c.namespace {
        control = control.namespace(ns);
    }
    for tag in c.tags {
        control = control.tag(tag);
    }
    if c.no_cache {
        control = control.no_cache();
    }
    if c.no_store {
        control = control.no_store();
    }
    if c.force_refresh {
        control = control.force_refresh();
    }
    Ok(control)
}

fn request_of(json: &str) -> Result<LlmRequest, JsValue> {
    LlmRequest::from_json_str(json).map_err(core_error)
}

thread_local! {
    /// The instance's in-memory cache, shared by every `Cache` built without a URL.
    static MEMORY: RefCell<Option<MemoryCache>> = const { RefCell::new(None) };
    /// The response caches over it, by their options: handles built alike share one, so
    /// their concurrent identical calls share one computation (over Redis the lease does
    /// that).
    static LOCAL: RefCell<Vec<(String, ResponseCache)>> = const { RefCell::new(Vec::new()) };
}

fn memory(entries: Option<usize>) -> Result<MemoryCache, JsValue> {
    MEMORY.with(|m| {
        if let Some(c) = m.borrow().as_ref() {
            return Ok(c.clone());
        }
        let mut b = MemoryCache::builder();
        if let Some(n) = entries {
            b = b.max_entries(n);
        }
        let c = b
            .build()
            .map_err(|e| error("ConfigError", format!("memoryEntries: {e}")))?;
        *m.borrow_mut() = Some(c.clone());
        Ok(c)
    })
}

#[derive(Clone)]
enum Raw {
    Redis(RedisCache<RestTransport>),
    Memory(MemoryCache),
}

/// larder's response cache over Redis (the Upstash REST dialect) or the instance's memory.
#[wasm_bindgen]
pub struct Cache {
    responses: ResponseCache,
    raw: Raw,
    transport: Option<RestTransport>,
}

fn config(message: impl fmt::Display) -> JsValue {
    error("ConfigError", message)
}

fn ms(v: Option<u64>) -> Option<Duration> {
    v.map(Duration::from_millis)
}

#[wasm_bindgen]
impl Cache {
    /// A cache from options (JSON, see `Options`) and the `post` function for HTTP.
    #[wasm_bindgen(constructor)]
    pub fn new(options: &str, post: Function) -> Result<Cache, JsValue> {
        let o: Options =
            serde_json::from_str(options).map_err(|e| config(format!("the options: {e}")))?;
        let rest = match o.url.clone().filter(|u| !u.trim().is_empty()) {
            Some(url) => Some(
                RestTransport::builder(url, o.token.clone().unwrap_or_default())
                    .base64_args(o.base64_args.unwrap_or(false)),
            ),
            None => None,
        };
        Cache::build(o, rest, options, post)
    }

    /// A cache configured from `env` (a Worker's bindings, `process.env`): the variables of
    /// `RestTransportBuilder::from_lookup` (Redis; without `UPSTASH_REDIS_REST_URL`, memory),
    /// `LARDER_PREFIX`, `LARDER_ENCRYPTION_KEYS` and `LARDER_HASH_SECRET`; `options` (JSON)
    /// win over them.
    #[wasm_bindgen(js_name = fromEnv)]
    pub fn from_env(env: JsValue, options: &str, post: Function) -> Result<Cache, JsValue> {
        let lookup = |name: &str| {
            Reflect::get(&env, &JsValue::from_str(name))
                .ok()
                .and_then(|v| v.as_string())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut o: Options =
            serde_json::from_str(options).map_err(|e| config(format!("the options: {e}")))?;
        o.prefix = o.prefix.or_else(|| lookup("LARDER_PREFIX"));
        o.encryption_keys = o
            .encryption_keys
            .or_else(|| lookup("LARDER_ENCRYPTION_KEYS"));
        o.hash_secret = o.hash_secret.or_else(|| lookup("LARDER_HASH_SECRET"));
        let rest = match lookup(larder_edge::URL_ENV) {
            Some(_) => Some(RestTransportBuilder::from_lookup(lookup).map_err(config)?),
            None => None,
        };
        let key = serde_json::to_string(&o).unwrap_or_default();
        Cache::build(o, rest, &key, post)
    }
}

impl Cache {
    /// The cache over Redis through `rest`, or over the instance's memory (shared by every
    /// cache built with the same `options_key`).
    fn build(
        o: Options,
        rest: Option<RestTransportBuilder>,
        options_key: &str,
        post: Function,
    ) -> Result<Cache, JsValue> {
        if rest.is_none() {
            let shared = LOCAL.with(|l| {
                l.borrow()
                    .iter()
                    .find(|(k, _)| k == options_key)
                    .map(|(_, c)| c.clone())
            });
            if let Some(responses) = shared {
                return Ok(Cache {
                    responses,
                    raw: Raw::Memory(memory(None)?),
                    transport: None,
                });
            }
        }
        let (mut builder, raw, transport) = match rest {
            Some(t) => {
                let mut t = t.client(JsClient { post });
                if let Some(timeout) = ms(o.timeout_ms) {
                    t = t.timeout(timeout);
                }
                let transport = t.build().map_err(config)?;
                let mut redis = RedisCache::builder(transport.clone());
                if let Some(p) = &o.prefix {
                    redis = redis.prefix(p);
                }
                let redis = redis.build().map_err(|e| config(format!("prefix: {e}")))?;
                (
                    ResponseCache::redis(redis.clone()),
                    Raw::Redis(redis),
                    Some(transport),
                )
            }
            None => {
                let m = memory(o.memory_entries)?;
                let mut b = ResponseCache::local(m.clone());
                if let Some(p) = &o.prefix {
                    b = b.prefix(p);
                }
                (b, Raw::Memory(m), None)
            }
        };
        if let Some(d) = ms(o.default_ttl_ms) {
            builder = builder.default_ttl(d);
        }
        if let Some(d) = ms(o.stale_window_ms) {
            builder = builder.stale_window(d);
        }
        if let Some(d) = ms(o.lease_ttl_ms) {
            builder = builder.lease_ttl(d);
        }
        if let Some(d) = ms(o.max_wait_ms) {
            builder = builder.max_wait(d);
        }
        if let Some(d) = ms(o.stream_poll_ms) {
            builder = builder.stream_poll_interval(d);
        }
        if let Some(n) = o.max_stream_bytes {
            builder = builder.max_stream_bytes(n);
        }
        if let Some(on) = o.fail_open {
            builder = builder.fail_open(on);
        }
        if let Some(keys) = o.encryption_keys.filter(|k| !k.trim().is_empty()) {
            let ring = CoreKeyring::parse(&keys)
                .map_err(|e| config(format!("LARDER_ENCRYPTION_KEYS: {e}")))?;
            builder = builder.encryption(ring);
        }
        if let Some(secret) = o.hash_secret.filter(|k| !k.trim().is_empty()) {
            let key =
                HashKey::parse(&secret).map_err(|e| config(format!("LARDER_HASH_SECRET: {e}")))?;
            builder = builder.hash_key(key);
        }
        let responses = builder.build().map_err(config)?;
        if transport.is_none() {
            LOCAL.with(|l| {
                l.borrow_mut()
                    .push((options_key.to_owned(), responses.clone()));
            });
        }
        Ok(Cache {
            responses,
            raw,
            transport,
        })
    }
}

#[wasm_bindgen]
impl Cache {
    /// Whether answers live in Redis (`false`: this instance's memory).
    #[wasm_bindgen(getter, js_name = isRedis)]
    pub fn is_redis(&self) -> bool {
        self.transport.is_some()
    }

    /// HTTP requests to Redis made so far (0 in memory).
    #[wasm_bindgen(js_name = redisRequests)]
    pub fn redis_requests(&self) -> f64 {
        self.transport.as_ref().map_or(0.0, |t| t.requests() as f64)
    }

    /// The Redis key of a request's answer.
    pub fn key(&self, request: &str, control: &str) -> Result<String, JsValue> {
        self.responses
            .key(&request_of(request)?, &control_of(control)?)
            .map_err(core_error)
    }

    /// A fresh answer (JSON) or `undefined`.
    pub fn get(&self, request: &str, control: &str) -> Promise {
        let args = (request_of(request), control_of(control));
        let cache = self.responses.clone();
        future_to_promise(async move {
            let (request, control) = (args.0?, args.1?);
            match cache.get(&request, &control).await {
                Ok(Some(a)) => Ok(JsValue::from_str(&answer_json(
                    &a.value,
                    a.status.as_str(),
                    a.stored_at_ms,
                ))),
                Ok(None) => Ok(JsValue::UNDEFINED),
                Err(e) => Err(core_error(e)),
            }
        })
    }

    /// Stores an answer (JSON `{text, model?, usage?, metadata?}`); resolves to its key.
    pub fn put(&self, request: &str, control: &str, response: &str) -> Promise {
        let args = (
            request_of(request),
            control_of(control),
            response_of(response),
        );
        let cache = self.responses.clone();
        future_to_promise(async move {
            let (request, control, response) = (args.0?, args.1?, args.2?);
            cache
                .put(&request, &control, &response)
                .await
                .map(|k| JsValue::from_str(&k))
                .map_err(core_error)
        })
    }

    /// Deletes a request's answer; resolves to whether it existed.
    pub fn delete(&self, request: &str, control: &str) -> Promise {
        let args = (request_of(request), control_of(control));
        let cache = self.responses.clone();
        future_to_promise(async move {
            let (request, control) = (args.0?, args.1?);
            cache
                .delete(&request, &control)
                .await
                .map(JsValue::from_bool)
                .map_err(core_error)
        })
    }

    /// The answer from the cache, or from `compute()` (a Promise of the response as JSON
    /// text), stored; concurrent identical calls share one computation (across isolates
    /// and processes through the lease). Resolves to the answer as JSON.
    #[wasm_bindgen(js_name = getOrCompute)]
    pub fn get_or_compute(&self, request: &str, control: &str, compute: Function) -> Promise {
        let args = (request_of(request), control_of(control));
        let cache = self.responses.clone();
        future_to_promise(async move {
            let (request, control) = (args.0?, args.1?);
            let fetched = cache
                .try_get_with(&request, &control, || async move {
                    let value = compute.call0(&JsValue::NULL).map_err(Thrown)?;
                    let value = JsFuture::from(Promise::resolve(&value))
                        .await
                        .map_err(Thrown)?;
                    let text = value
                        .as_string()
                        .ok_or_else(|| Thrown(invalid("compute must resolve to a response")))?;
                    response_of(&text).map_err(Thrown)
                })
                .await
                .map_err(compute_error)?;
            Ok(JsValue::from_str(&answer_json(
                &fetched.value,
                fetched.status.as_str(),
                fetched.stored_at_ms,
            )))
        })
    }

    /// A streamed answer: replayed from the cache, or `open()`'s stream (a Promise of an
    /// object with `next(): Promise<Uint8Array | string | undefined>` — server-sent events)
    /// passed on as it arrives and recorded. Resolves to an [`EventStream`].
    pub fn stream(&self, request: &str, control: &str, open: Function) -> Promise {
        let args = (request_of(request), control_of(control));
        let cache = self.responses.clone();
        future_to_promise(async move {
            let (request, control) = (args.0?, args.1?);
            let streamed = cache
                .stream_with(&request, &control, || async move {
                    let reader = open.call0(&JsValue::NULL).map_err(Thrown)?;
                    let reader = JsFuture::from(Promise::resolve(&reader)).await.map_err(Thrown)?;
                    let next: Function = Reflect::get(&reader, &JsValue::from_str("next"))
                        .ok()
                        .and_then(|f| f.dyn_into().ok())
                        .ok_or_else(|| Thrown(invalid("open must resolve to a reader with next()")))?;
                    Ok(futures_util::stream::unfold(Some((reader, next)), |state| async move {
                        let (reader, next) = state?;
                        let chunk = match next.call0(&reader) {
                            Ok(p) => JsFuture::from(Promise::resolve(&p)).await,
                            Err(e) => Err(e),
                        };
                        match chunk {
                            Ok(v) if v.is_undefined() || v.is_null() => None,
                            Ok(v) => {
                                let bytes = match v.as_string() {
                                    Some(s) => Ok(Bytes::from(s)),
                                    None => v
                                        .dyn_into::<Uint8Array>()
                                        .map(|b| Bytes::from(b.to_vec()))
                                        .map_err(|_| Thrown(invalid("a stream chunk must be a Uint8Array or a string"))),
                                };
                                let failed = bytes.is_err();
                                Some((bytes, (!failed).then_some((reader, next))))
                            }
                            Err(e) => Some((Err(Thrown(e)), None)),
                        }
                    }))
                })
                .await
                .map_err(compute_error)?;
            Ok(JsValue::from(EventStream {
                status: streamed.status().as_str(),
                stored_at_ms: streamed.stored_at_ms(),
                inner: Rc::new(RefCell::new(Some(streamed))),
            }))
        })
    }

    /// Makes every answer of a namespace unreachable at once; resolves to its new
    /// generation.
    #[wasm_bindgen(js_name = invalidateNamespace)]
    pub fn invalidate_namespace(&self, namespace: String) -> Promise {
        let cache = self.responses.clone();
        future_to_promise(async move {
            cache
                .invalidate_namespace(&namespace)
                .await
                .map(|g| JsValue::from_f64(g as f64))
                .map_err(core_error)
        })
    }

    /// Makes every answer stored with a tag (before now) unreachable.
    #[wasm_bindgen(js_name = invalidateTag)]
    pub fn invalidate_tag(&self, tag: String) -> Promise {
        let cache = self.responses.clone();
        future_to_promise(async move {
            cache
                .invalidate_tag(&tag)
                .await
                .map(|()| JsValue::UNDEFINED)
                .map_err(core_error)
        })
    }

    /// Hits, misses, tokens and cost saved, per model and in total, from every instance
    /// sharing the prefix (JSON).
    pub fn stats(&self) -> Promise {
        let cache = self.responses.clone();
        future_to_promise(async move {
            let report = cache.analytics().await.map_err(core_error)?;
            let mut json = serde_json::to_value(&report).unwrap_or_default();
            json["total"] = serde_json::to_value(report.total()).unwrap_or_default();
            Ok(JsValue::from_str(&json.to_string()))
        })
    }

    /// Sends the counters still pending to Redis.
    pub fn flush(&self) -> Promise {
        let cache = self.responses.clone();
        let raw = self.raw.clone();
        future_to_promise(async move {
            cache.flush().await.map_err(core_error)?;
            if let Raw::Redis(r) = raw {
                r.flush_stats().await.map_err(core_error)?;
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The envelope under a user key (`{prefix}:cache:{key}`), as JSON, or `undefined`.
    #[wasm_bindgen(js_name = getEnvelope)]
    pub fn get_envelope(&self, key: String) -> Promise {
        let raw = self.raw.clone();
        future_to_promise(async move {
            let got = match &raw {
                Raw::Redis(r) => r.get_envelope(&key).await,
                Raw::Memory(m) => m.get_envelope(&key).await,
            }
            .map_err(core_error)?;
            Ok(match got {
                Some(e) => JsValue::from_str(&serde_json::to_string(&e).unwrap_or_default()),
                None => JsValue::UNDEFINED,
            })
        })
    }

    /// Stores an envelope (JSON, as [`encodeEnvelope`](encode_envelope)) under a user key.
    #[wasm_bindgen(js_name = setEnvelope)]
    pub fn set_envelope(&self, key: String, envelope: &str, ttl_ms: Option<f64>) -> Promise {
        let envelope = envelope_of(envelope);
        let raw = self.raw.clone();
        let ttl = ttl_ms
            .filter(|t| t.is_finite() && *t >= 1.0)
            .map(|t| Duration::from_millis(t as u64));
        future_to_promise(async move {
            let envelope = envelope?;
            match &raw {
                Raw::Redis(r) => r.set_envelope(&key, &envelope, ttl).await,
                Raw::Memory(m) => m.set_envelope(&key, &envelope, ttl).await,
            }
            .map(|()| JsValue::UNDEFINED)
            .map_err(core_error)
        })
    }
}

fn response_of(json: &str) -> Result<LlmResponse, JsValue> {
    serde_json::from_str(json).map_err(|e| {
        invalid(format!(
            "a response is {{text: string, model?: string, usage?: {{prompt_tokens, completion_tokens}}, metadata?: object}}: {e}"
        ))
    })
}

fn answer_json(r: &LlmResponse, status: &str, stored_at_ms: Option<u64>) -> String {
    json!({
        "status": status,
        "text": r.text,
        "model": r.model,
        "usage": r.usage,
        "metadata": r.metadata,
        "storedAtMs": stored_at_ms,
    })
    .to_string()
}

/// A streamed answer's events, read one at a time with `next()`.
#[wasm_bindgen]
pub struct EventStream {
    status: &'static str,
    stored_at_ms: Option<u64>,
    inner: Rc<RefCell<Option<Streamed>>>,
}

#[wasm_bindgen]
impl EventStream {
    /// `HIT`, `MISS`, `COALESCED` or `STALE`.
    #[wasm_bindgen(getter)]
    pub fn status(&self) -> String {
        self.status.to_owned()
    }

    /// When the replayed entry was written (unix ms); `undefined` for a stream in flight.
    #[wasm_bindgen(getter, js_name = storedAtMs)]
    pub fn stored_at_ms(&self) -> Option<f64> {
        self.stored_at_ms.map(|t| t as f64)
    }

    /// The next event as JSON `{event?, id?, data, sse}` (`sse`: its wire form), or `undefined` at a clean end. A
    /// failed stream rejects with its error (the upstream's own error as it was thrown).
    pub fn next(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let Some(mut s) = inner.borrow_mut().take() else {
                return Err(error(
                    "StreamError",
                    "the stream is closed, or next() was called before the previous one settled",
                ));
            };
            let item = s.next().await;
            match item {
                Some(Ok(e)) => {
                    *inner.borrow_mut() = Some(s);
                    let sse = String::from_utf8_lossy(&e.encode()).into_owned();
                    let mut event = json!({ "data": e.data, "sse": sse });
                    if let Some(name) = &e.event {
                        event["event"] = json!(name);
                    }
                    if let Some(id) = &e.id {
                        event["id"] = json!(id);
                    }
                    Ok(JsValue::from_str(&event.to_string()))
                }
                Some(Err(StreamError::Upstream(e))) => match e.downcast_ref::<Thrown>() {
                    Some(t) => Err(t.0.clone()),
                    None => Err(error("StreamError", e)),
                },
                Some(Err(e)) => Err(error("StreamError", e)),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Stops reading: the upstream stream goes on for other readers, and is not stored if
    /// this was its last reader.
    pub fn close(&self) {
        self.inner.borrow_mut().take();
    }
}
