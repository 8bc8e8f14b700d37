//! The proxy's request flow, for any HTTP stack: [`ProxyEngine`] takes a request that a
//! server received, asks the cache, calls the upstream through the server's [`ProxyIo`]
//! when it must, and returns the response to send. `larder proxy` (axum and reqwest) and
//! the proxy Worker (the Workers runtime's `fetch`) only convert their request and
//! response types and move bytes; every rule lives here.
//!
//! - Concurrent identical requests make one upstream call (in this process, and through
//!   the lease in every proxy sharing the Redis); streamed ones share the stream in flight.
//! - Only 2xx answers are stored. A 4xx is passed on as is, and a caller whose own call or
//!   joined call got one is never served a stale answer instead. On a 5xx, 408, 429, a
//!   connection error or a timeout, a stale answer is served (`x-larder-cache: STALE`) when
//!   the cache has one; otherwise the upstream's error reaches the caller unchanged (502 or
//!   504 when there was no answer at all).
//! - A streamed answer's body ends right after the format's terminal event: what is left
//!   (storing the recording, releasing the lease, publishing the end for followers in other
//!   processes) runs in the background on [`ProxyIo::runtime`], so the client never
//!   waits for the cache. Follow-up requests still find the entry: the store is sent before
//!   the client can have read the end.
//! - Logs never hold credentials or prompt text: a request is named by its API, the first
//!   digits of its key and its tenant's hash.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;

use super::{Api, CacheUse, Plan, Tenancy, UpstreamVerdict};
use crate::clock::SharedClock;
use crate::compute::{ComputeError, Status};
use crate::error::{Error, Result};
use crate::response::ResponseCache;
use crate::runtime::SharedRuntime;
use crate::stream::{Event, Format, StreamError, Streamed, UpstreamError};
use crate::transport::{MaybeSend, MaybeSync};

/// The default cap on a cached request's body: 32 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// How long a rejection (4xx) is remembered for the callers that joined its upstream call.
const REJECTION_MEMORY: Duration = Duration::from_secs(10);

/// A request as the proxy's server received it. Header names may be in any case.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyRequest {
    /// The method (`POST`).
    pub method: String,
    /// The path and query (`/v1/chat/completions?x=1`).
    pub path_and_query: String,
    /// Every header, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body (empty for a pass-through request whose body the server streams).
    pub body: Bytes,
}

impl ProxyRequest {
    /// A request with an empty body.
    pub fn new(
        method: impl Into<String>,
        path_and_query: impl Into<String>,
        headers: Vec<(String, String)>,
    ) -> Self {
        ProxyRequest {
            method: method.into(),
            path_and_query: path_and_query.into(),
            headers,
            body: Bytes::new(),
        }
    }

    /// The request with `body`.
    pub fn with_body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

/// What the proxy's server does with a request (see [`ProxyEngine::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// `GET /healthz`: answer [`ProxyEngine::health`].
    Health,
    /// A cached API: read the whole body (at most [`ProxyEngine::body_limit`] bytes, else
    /// answer [`ProxyEngine::too_large`]) and call [`ProxyEngine::handle`].
    Cached(Api),
    /// Anything else: send [`ProxyEngine::pass_through`]'s request upstream with the
    /// caller's body streamed, and answer [`ProxyEngine::relay`] of the response.
    PassThrough,
}

/// A request to the upstream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamRequest {
    /// The method.
    pub method: String,
    /// The whole URL.
    pub url: String,
    /// The headers to send (hop-by-hop ones removed, the proxy's credential put in).
    pub headers: Vec<(String, String)>,
    /// The body (empty for pass-through requests, whose body the server streams).
    pub body: Bytes,
}

/// The upstream's response, with its body still to be read.
#[derive(Debug)]
#[non_exhaustive]
pub struct UpstreamResponse<B> {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The body, as it arrives.
    pub body: B,
}

impl<B> UpstreamResponse<B> {
    /// A response.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: B) -> Self {
        UpstreamResponse {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The upstream gave no response: it could not be reached (answered 502) or did not
/// answer in time (504).
#[derive(Debug, Clone)]
pub struct SendError {
    timed_out: bool,
    source: UpstreamError,
}

impl SendError {
    /// The upstream could not be reached (connecting or sending failed).
    pub fn unreachable(source: UpstreamError) -> Self {
        SendError {
            timed_out: false,
            source,
        }
    }

    /// The upstream did not answer in time.
    pub fn timed_out(source: UpstreamError) -> Self {
        SendError {
            timed_out: true,
            source,
        }
    }

    /// True when the upstream did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.timed_out
    }

    fn what(&self) -> &'static str {
        if self.timed_out {
            "the upstream timed out"
        } else {
            "the upstream could not be reached"
        }
    }

    fn status(&self) -> u16 {
        if self.timed_out { 504 } else { 502 }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what(), self.source)
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// What a proxy's server provides for one request: sending to the upstream, and running
/// work after the response is complete.
pub trait ProxyIo: MaybeSend + MaybeSync {
    /// The upstream response's body: its bytes as they arrive.
    type Body: Stream<Item = std::result::Result<Bytes, UpstreamError>>
        + MaybeSend
        + Unpin
        + 'static;

    /// Sends `request` and returns the response once its headers are in.
    fn send(
        &self,
        request: UpstreamRequest,
    ) -> impl Future<Output = std::result::Result<UpstreamResponse<Self::Body>, SendError>> + MaybeSend;

    /// Where work that outlives the response runs (on Workers, under the request's
    /// `waitUntil`).
    fn runtime(&self) -> SharedRuntime;
}

/// The body of a [`ProxyResponse`].
pub enum ProxyBody<B> {
    /// These bytes.
    Full(Bytes),
    /// The upstream's body, passed on as it arrives.
    Upstream(B),
    /// A streamed answer's server-sent events. An error ends it: the server must then cut
    /// its response (never end it cleanly), so the client never takes a truncated answer
    /// for a complete one.
    Events(EventBody),
}

impl<B> fmt::Debug for ProxyBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyBody::Full(b) => f.debug_tuple("Full").field(&b.len()).finish(),
            ProxyBody::Upstream(_) => f.write_str("Upstream(..)"),
            ProxyBody::Events(_) => f.write_str("Events(..)"),
        }
    }
}

/// The response to send.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProxyResponse<B> {
    /// The status.
    pub status: u16,
    /// The headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: ProxyBody<B>,
}

impl<B> ProxyResponse<B> {
    /// The value of header `name`, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An error answer in the shape both SDKs parse (`{"error": {"message", "type"}}`), for
    /// the proxy's own failures (a missing route, a misconfigured server).
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({"error": {"message": message, "type": "larder_proxy_error"}});
        ProxyResponse::json(status, body.to_string())
    }

    fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value));
    }

    fn json(status: u16, body: String) -> Self {
        ProxyResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ProxyBody::Full(Bytes::from(body)),
        }
    }
}

/// The events of a streamed answer, encoded as server-sent events.
///
/// Every event is passed on as it arrives, except the format's terminal one (`[DONE]`,
/// `message_stop`, `response.completed`): when it arrives, the rest of the stream (storing
/// the recording, publishing its end for followers in other processes, releasing the
/// lease) runs on the [`ProxyIo::runtime`], and the terminal event follows once that is
/// done. So a client that asks again after seeing the end gets a HIT (SDKs that stop
/// reading at the terminal event included), and one that goes away at the end does not
/// cancel the store.
pub struct EventBody {
    state: BodyState,
    format: Option<Format>,
    runtime: SharedRuntime,
}

enum BodyState {
    Streaming(Streamed),
    /// The terminal event, held until the rest of the stream is done.
    Finishing(Arc<Finished>, Bytes),
    Ended,
}

/// Set once the rest of a stream was driven to its end (or the task doing it was dropped).
#[derive(Default)]
struct Finished {
    state: Mutex<(bool, Option<Waker>)>,
}

struct FinishGuard(Arc<Finished>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.0 = true;
        if let Some(w) = st.1.take() {
            w.wake();
        }
    }
}

impl fmt::Debug for EventBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBody")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Stream for EventBody {
    type Item = std::result::Result<Bytes, StreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match &mut this.state {
            BodyState::Ended => Poll::Ready(None),
            BodyState::Finishing(done, _) => {
                let mut st = done.state.lock();
                if !st.0 {
                    st.1 = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                drop(st);
                match std::mem::replace(&mut this.state, BodyState::Ended) {
                    BodyState::Finishing(_, last) => Poll::Ready(Some(Ok(last))),
                    _ => Poll::Ready(None),
                }
            }
            BodyState::Streaming(events) => match events.poll_next_unpin(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(event))) => {
                    if !this.format.is_some_and(|f| is_terminal(f, &event)) {
                        return Poll::Ready(Some(Ok(event.encode())));
                    }
                    let done = Arc::new(Finished::default());
                    let guard = FinishGuard(done.clone());
                    let finishing = BodyState::Finishing(done, event.encode());
                    if let BodyState::Streaming(rest) =
                        std::mem::replace(&mut this.state, finishing)
                    {
                        this.runtime.spawn(Box::pin(async move {
                            let _guard = guard;
                            rest.for_each(|_| async {}).await;
                        }));
                    }
                    self.poll_next(cx)
                }
                Poll::Ready(Some(Err(e))) => {
                    this.state = BodyState::Ended;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    this.state = BodyState::Ended;
                    Poll::Ready(None)
                }
            },
        }
    }
}

/// The format's terminal event (after which a well-formed stream has nothing left).
fn is_terminal(format: Format, e: &Event) -> bool {
    match format {
        Format::OpenAiChat => e.data.trim() == "[DONE]",
        Format::OpenAiResponses => matches!(
            e.event.as_deref(),
            Some("response.completed" | "response.incomplete")
        ),
        Format::AnthropicMessages => e.event.as_deref() == Some("message_stop"),
        _ => false,
    }
}

/// An upstream answer that is not stored: its status, content type and body, passed on as
/// they came.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    content_type: Option<String>,
    body: Bytes,
}

impl Reply {
    fn into_response<B>(self) -> ProxyResponse<B> {
        ProxyResponse {
            status: self.status,
            headers: self
                .content_type
                .map(|ct| ("content-type".to_owned(), ct))
                .into_iter()
                .collect(),
            body: ProxyBody::Full(self.body),
        }
    }
}

/// Why the upstream gave no answer to store.
#[derive(Debug)]
enum Failure {
    /// Connecting or sending failed, or no answer in time.
    Send(SendError),
    /// Reading the body failed.
    Body(UpstreamError),
    /// A status that is not stored (see [`UpstreamVerdict`]).
    Status(Reply),
    /// `only-if-cached` and nothing cached.
    NotCached,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Send(e) => write!(f, "{e}"),
            Failure::Body(e) => write!(f, "reading the upstream's answer failed: {e}"),
            Failure::Status(r) => write!(f, "the upstream answered {}", r.status),
            Failure::NotCached => f.write_str("not cached"),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Send(e) => Some(e),
            Failure::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

impl Failure {
    fn to_response<B>(&self) -> ProxyResponse<B> {
        match self {
            Failure::Send(e) => {
                tracing::warn!(error = %e, "{}", e.what());
                error_response(e.status(), e.what())
            }
            Failure::Body(e) => {
                tracing::warn!(error = %e, "reading the upstream's answer failed");
                error_response(502, "reading the upstream's answer failed")
            }
            Failure::Status(r) => r.clone().into_response(),
            Failure::NotCached => {
                error_response(504, "only-if-cached: this request's answer is not cached")
            }
        }
    }
}

fn error_response<B>(status: u16, message: &str) -> ProxyResponse<B> {
    ProxyResponse::error(status, message)
}

/// Request headers that are not forwarded: hop-by-hop ones, and those the client sets.
fn forwardable(name: &str) -> bool {
    !matches!(
        name.to_ascii_lowercase().as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "accept-encoding"
    )
}

/// Builds a [`ProxyEngine`]. Start with [`ProxyEngine::builder`].
#[must_use]
pub struct ProxyEngineBuilder {
    cache: ResponseCache,
    openai: String,
    anthropic: Option<String>,
    openai_key: Option<String>,
    anthropic_key: Option<String>,
    tenancy: Tenancy,
    tenant_key: Option<crate::seal::HashKey>,
    body_limit: usize,
    name: String,
}

impl fmt::Debug for ProxyEngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyEngineBuilder")
            .field("openai", &self.openai)
            .field("anthropic", &self.anthropic)
            .field("tenancy", &self.tenancy)
            .finish_non_exhaustive()
    }
}

impl ProxyEngineBuilder {
    /// The Anthropic upstream (`/v1/messages` and requests carrying `x-api-key` or
    /// `anthropic-version`). Default: the OpenAI upstream.
    pub fn anthropic_upstream(mut self, url: impl Into<String>) -> Self {
        self.anthropic = Some(url.into());
        self
    }

    /// A key the proxy sends to the OpenAI upstream (`Authorization: Bearer …`) instead of
    /// the caller's. The caller's credential still names its tenant.
    pub fn openai_key(mut self, key: impl Into<String>) -> Self {
        self.openai_key = Some(key.into());
        self
    }

    /// A key the proxy sends to the Anthropic upstream (`x-api-key`) instead of the
    /// caller's.
    pub fn anthropic_key(mut self, key: impl Into<String>) -> Self {
        self.anthropic_key = Some(key.into());
        self
    }

    /// How callers are kept apart (default: per credential).
    pub fn tenancy(mut self, tenancy: Tenancy) -> Self {
        self.tenancy = tenancy;
        self
    }

    /// Names tenants by an HMAC of their credential under this secret instead of its
    /// SHA-256 (give the response cache the same key with
    /// [`hash_key`](crate::response::ResponseCacheBuilder::hash_key)).
    pub fn tenant_key(mut self, key: crate::seal::HashKey) -> Self {
        self.tenant_key = Some(key);
        self
    }

    /// The largest body of a cached request (larger: 413). Default [`DEFAULT_BODY_LIMIT`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The `proxy` label of this proxy's metrics. Default `proxy`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an upstream URL that is not `http(s)://host[:port][/path]`
    /// or a key that is not a valid header value.
    pub fn build(self) -> Result<ProxyEngine> {
        let openai = upstream_base("the upstream (LARDER_UPSTREAM, --upstream)", &self.openai)?;
        let anthropic = match &self.anthropic {
            Some(u) => upstream_base(
                "the Anthropic upstream (LARDER_ANTHROPIC_UPSTREAM, --anthropic-upstream)",
                u,
            )?,
            None => openai.clone(),
        };
        let openai_key = match self.openai_key {
            Some(k) => Some(header_value(
                "the upstream key (LARDER_UPSTREAM_KEY)",
                format!("Bearer {k}"),
            )?),
            None => None,
        };
        let anthropic_key = match self.anthropic_key {
            Some(k) => Some(header_value("the Anthropic key (LARDER_ANTHROPIC_KEY)", k)?),
            None => None,
        };
        let clock = self.cache.shared_clock().clone();
        Ok(ProxyEngine {
            inner: Arc::new(EngineInner {
                cache: self.cache,
                clock,
                openai,
                anthropic,
                openai_key,
                anthropic_key,
                tenancy: self.tenancy,
                tenant_key: self.tenant_key,
                body_limit: self.body_limit,
                name: self.name,
                rejections: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A header value: visible ASCII, spaces and tabs only.
fn header_value(what: &str, v: String) -> Result<String> {
    if v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        Ok(v)
    } else {
        Err(Error::InvalidInput(format!(
            "{what} is not a valid header value"
        )))
    }
}

/// The base an upstream's requests are joined to: the URL without a trailing `/` and
/// without a trailing `/v1` (requests keep their own `/v1/...` path, so both
/// `https://api.openai.com` and `https://api.openai.com/v1` work).
fn upstream_base(what: &str, url: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidInput(format!("{what} {url:?} {why}"));
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must be an http:// or https:// URL with a host"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let host_name = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host_name.is_empty() || host_name.starts_with(':') {
        return Err(bad("must be an http:// or https:// URL with a host"));
    }
    if url.contains('?') || url.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("is not a URL"));
    }
    let mut base = url.trim_end_matches('/').to_owned();
    if base.ends_with("/v1") {
        base.truncate(base.len() - 3);
    }
    Ok(base)
}

/// The caching proxy's request flow, shared by every server that runs it. Cloning is
/// cheap; clones share the cache and the memory of recent rejections.
#[derive(Clone)]
pub struct ProxyEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    cache: ResponseCache,
    clock: SharedClock,
    openai: String,
    anthropic: String,
    openai_key: Option<String>,
    anthropic_key: Option<String>,
    tenancy: Tenancy,
    tenant_key: Option<crate::seal::HashKey>,
    body_limit: usize,
    name: String,
    /// Recent 4xx answers by request (namespace and key), with when they came: a caller
    /// that joined the call that got one must not be served a stale answer instead.
    rejections: Mutex<HashMap<String, (u64, Reply)>>,
}

impl fmt::Debug for ProxyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyEngine")
            .field("openai", &self.inner.openai)
            .field("anthropic", &self.inner.anthropic)
            .field("tenancy", &self.inner.tenancy)
            .finish_non_exhaustive()
    }
}

impl ProxyEngine {
    /// An engine answering through `cache`, forwarding to the OpenAI-compatible `upstream`
    /// (`https://api.openai.com/v1`, or any compatible server).
    pub fn builder(cache: ResponseCache, upstream: impl Into<String>) -> ProxyEngineBuilder {
        ProxyEngineBuilder {
            cache,
            openai: upstream.into(),
            anthropic: None,
            openai_key: None,
            anthropic_key: None,
            tenancy: Tenancy::default(),
            tenant_key: None,
            body_limit: DEFAULT_BODY_LIMIT,
            name: "proxy".to_owned(),
        }
    }

    /// The response cache.
    pub fn cache(&self) -> &ResponseCache {
        &self.inner.cache
    }

    /// The `proxy` label of the metrics.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The largest body of a cached request.
    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    /// What to do with a request to `path` (no query) with `method`.
    pub fn route(&self, method: &str, path: &str) -> Route {
        if path == "/healthz" && method.eq_ignore_ascii_case("GET") {
            return Route::Health;
        }
        match Api::from_route(method, path) {
            Some(api) => Route::Cached(api),
            None => Route::PassThrough,
        }
    }

    /// The answer to `GET /healthz`.
    pub fn health<B>(&self) -> ProxyResponse<B> {
        ProxyResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: ProxyBody::Full(Bytes::from_static(b"ok\n")),
        }
    }

    /// The answer to a cached request whose body is over [`body_limit`](Self::body_limit).
    pub fn too_large<B>(&self) -> ProxyResponse<B> {
        error_response(
            413,
            &format!("the request body is over {} bytes", self.inner.body_limit),
        )
    }

    /// The upstream request for a pass-through request (its body, which the server streams,
    /// is not part of it). Counts the request.
    pub fn pass_through(&self, request: &ProxyRequest) -> UpstreamRequest {
        metrics::counter!("larder_proxy_requests_total", "proxy" => self.inner.name.clone(),
            "api" => "pass_through", "cache" => "NONE")
        .increment(1);
        self.upstream_request(request, None)
    }

    /// The response that relays a pass-through request's upstream response (or its
    /// failure) to the caller.
    pub fn relay<B>(
        &self,
        response: std::result::Result<UpstreamResponse<B>, SendError>,
    ) -> ProxyResponse<B> {
        match response {
            Ok(r) => relay(r),
            Err(e) => Failure::Send(e).to_response(),
        }
    }

    /// The upstream request: the caller's method, path, query and headers, with the
    /// proxy's key when it holds one.
    fn upstream_request(&self, request: &ProxyRequest, api: Option<Api>) -> UpstreamRequest {
        let has = |name: &str| {
            request
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let anthropic =
            api.is_some_and(Api::is_anthropic) || has("x-api-key") || has("anthropic-version");
        let base = if anthropic {
            &self.inner.anthropic
        } else {
            &self.inner.openai
        };
        let mut headers: Vec<(String, String)> = request
            .headers
            .iter()
            .filter(|(n, _)| forwardable(n))
            .cloned()
            .collect();
        let own = match (anthropic, &self.inner.anthropic_key, &self.inner.openai_key) {
            (true, Some(k), _) => Some(("x-api-key", k)),
            (false, _, Some(k)) => Some(("authorization", k)),
            _ => None,
        };
        if let Some((name, value)) = own {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.to_owned(), value.clone()));
        }
        UpstreamRequest {
            method: request.method.clone(),
            url: format!("{base}{}", request.path_and_query),
            headers,
            body: request.body.clone(),
        }
    }

    /// Answers a request to a cached API (see [`route`](Self::route)) whose whole body is
    /// in `request`: from the cache, or from the upstream through `io`.
    pub async fn handle<I: ProxyIo>(
        &self,
        io: &I,
        api: Api,
        request: ProxyRequest,
    ) -> ProxyResponse<I::Body> {
        let started = self.inner.clock.now_ms();
        let plan = match super::plan(
            api,
            &request.body,
            request
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
            self.inner.tenancy,
            self.inner.tenant_key.as_ref(),
        ) {
            Ok(p) => p,
            Err(e) => return error_response(400, &e.to_string()),
        };
        // The hash the entry is stored under (keyed, with a hash secret): what `x-larder-key`
        // shows and logs name, never the plain SHA-256 of the request.
        let key = match self.inner.cache.key(&plan.request, &plan.control) {
            Ok(k) => k.rsplit(':').next().unwrap_or_default().to_owned(),
            Err(e) => return error_response(400, &e.to_string()),
        };
        let rejected = Rejected::new(self, &plan, &key);
        // Built only when the upstream is called (never for a hit).
        let upstream = || self.upstream_request(&request, Some(api));
        let response = if plan.cache_use == CacheUse::Bypass {
            match io.send(upstream()).await {
                Ok(r) => self.with_headers(relay(r), &plan, None, &key, None),
                Err(e) => Failure::Send(e).to_response(),
            }
        } else if plan.stream {
            self.streamed(io, api, &plan, &key, upstream, &rejected)
                .await
        } else {
            self.whole(io, api, &plan, &key, upstream, &rejected).await
        };
        let word = response
            .header("x-larder-cache")
            .unwrap_or("NONE")
            .to_owned();
        metrics::counter!("larder_proxy_requests_total", "proxy" => self.inner.name.clone(),
            "api" => api.as_str(), "cache" => word.clone())
        .increment(1);
        tracing::info!(
            api = api.as_str(),
            key = &key[..key.len().min(12)],
            tenant = plan.tenant.as_deref().unwrap_or("-"),
            cache = %word,
            status = response.status,
            ms = self.inner.clock.now_ms().saturating_sub(started),
            "proxied"
        );
        response
    }

    fn with_headers<B>(
        &self,
        mut response: ProxyResponse<B>,
        plan: &Plan,
        status: Option<Status>,
        key: &str,
        stored_at: Option<u64>,
    ) -> ProxyResponse<B> {
        let now = self.inner.clock.now_ms();
        for (name, value) in super::response_headers(plan, status, key, stored_at, now) {
            response.set_header(name, value);
        }
        response
    }

    async fn whole<I: ProxyIo>(
        &self,
        io: &I,
        api: Api,
        plan: &Plan,
        key: &str,
        upstream: impl FnOnce() -> UpstreamRequest,
        rejected: &Rejected<'_>,
    ) -> ProxyResponse<I::Body> {
        let cache = &self.inner.cache;
        let fetched = if plan.cache_use == CacheUse::OnlyIfCached {
            match cache.get(&plan.request, &plan.control).await {
                Ok(Some(f)) => Ok(f),
                Ok(None) | Err(_) => Err(ComputeError::Compute(Arc::new(Failure::NotCached))),
            }
        } else {
            let name = self.inner.name.clone();
            let clock = self.inner.clock.clone();
            cache
                .try_get_with(&plan.request, &plan.control, || async move {
                    let started = clock.now_ms();
                    let resp = io.send(upstream()).await.map_err(Failure::Send)?;
                    metrics::histogram!("larder_proxy_upstream_seconds", "proxy" => name,
                        "api" => api.as_str())
                    .record(clock.now_ms().saturating_sub(started) as f64 / 1000.0);
                    if super::upstream_verdict(resp.status) != UpstreamVerdict::Store {
                        return Err(failed_reply(resp, rejected).await);
                    }
                    let body = read_all(resp.body).await.map_err(Failure::Body)?;
                    Ok(super::response_of(api, &body))
                })
                .await
        };
        if let Some(reply) = rejected.instead_of(fetched.as_ref().ok().map(|f| f.status)) {
            return reply.into_response();
        }
        match fetched {
            Ok(f) => {
                let body = super::stored_body(&f.value).unwrap_or_default().to_owned();
                let resp = ProxyResponse::json(200, body);
                self.with_headers(resp, plan, Some(f.status), key, f.stored_at_ms)
            }
            Err(ComputeError::Compute(failure)) => {
                // The caller that made the call sees MISS; those that joined it COALESCED.
                let status = if Arc::strong_count(&failure) == 1 {
                    Status::Miss
                } else {
                    Status::Coalesced
                };
                self.with_headers(failure.to_response(), plan, Some(status), key, None)
            }
            Err(e) => error_response(502, &e.to_string()),
        }
    }

    async fn streamed<I: ProxyIo>(
        &self,
        io: &I,
        api: Api,
        plan: &Plan,
        key: &str,
        upstream: impl FnOnce() -> UpstreamRequest,
        rejected: &Rejected<'_>,
    ) -> ProxyResponse<I::Body> {
        let only_cached = plan.cache_use == CacheUse::OnlyIfCached;
        let mut control = plan.control.clone();
        if only_cached {
            // Never leads a stream of its own, so it takes no lease.
            control.no_store = true;
        }
        let opened = self
            .inner
            .cache
            .stream_with(&plan.request, &control, || async move {
                if only_cached {
                    return Err(Failure::NotCached);
                }
                let resp = io.send(upstream()).await.map_err(Failure::Send)?;
                if super::upstream_verdict(resp.status) != UpstreamVerdict::Store {
                    return Err(failed_reply(resp, rejected).await);
                }
                Ok(resp.body.map(|chunk| chunk.map_err(Failure::Body)))
            })
            .await;
        if let Some(reply) = rejected.instead_of(opened.as_ref().ok().map(Streamed::status)) {
            return reply.into_response();
        }
        match opened {
            Ok(events) => {
                let status = events.status();
                let stored_at = events.stored_at_ms();
                let resp = ProxyResponse {
                    status: 200,
                    headers: vec![
                        ("content-type".into(), "text/event-stream".into()),
                        ("cache-control".into(), "no-cache".into()),
                    ],
                    body: ProxyBody::Events(EventBody {
                        state: BodyState::Streaming(events),
                        format: api.stream_format(),
                        runtime: io.runtime(),
                    }),
                };
                self.with_headers(resp, plan, Some(status), key, stored_at)
            }
            Err(ComputeError::Compute(failure)) => {
                self.with_headers(failure.to_response(), plan, Some(Status::Miss), key, None)
            }
            Err(e) => error_response(502, &e.to_string()),
        }
    }
}

/// Copies an upstream response (status, headers, body as it arrives) to the caller.
fn relay<B>(r: UpstreamResponse<B>) -> ProxyResponse<B> {
    ProxyResponse {
        status: r.status,
        headers: r
            .headers
            .into_iter()
            .filter(|(n, _)| forwardable(n))
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect(),
        body: ProxyBody::Upstream(r.body),
    }
}

/// Reads a body whole.
async fn read_all<B>(mut body: B) -> std::result::Result<Bytes, UpstreamError>
where
    B: Stream<Item = std::result::Result<Bytes, UpstreamError>> + Unpin,
{
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.freeze())
}

/// Reads a non-2xx answer whole, and notes a rejection (4xx).
async fn failed_reply<B>(resp: UpstreamResponse<B>, rejected: &Rejected<'_>) -> Failure
where
    B: Stream<Item = std::result::Result<Bytes, UpstreamError>> + Unpin,
{
    let status = resp.status;
    let content_type = resp.header("content-type").map(str::to_owned);
    let body = match read_all(resp.body).await {
        Ok(b) => b,
        Err(e) => return Failure::Body(e),
    };
    let reply = Reply {
        status,
        content_type,
        body,
    };
    if super::upstream_verdict(status) == UpstreamVerdict::Reject {
        rejected.record(&reply);
    }
    Failure::Status(reply)
}

/// The 4xx a request's upstream call got (its own, or that of the call it joined): such an
/// answer must reach the caller even where a stale answer exists (a revoked key must not
/// read the cache).
struct Rejected<'a> {
    engine: &'a ProxyEngine,
    request: String,
    mine: Mutex<Option<Reply>>,
    /// When this caller started: only a rejection recorded since can be of a call it
    /// joined.
    since: u64,
}

impl<'a> Rejected<'a> {
    fn new(engine: &'a ProxyEngine, plan: &Plan, key: &str) -> Self {
        let ns = plan.control.namespace.as_deref().unwrap_or("");
        Rejected {
            engine,
            request: format!("{ns}\0{key}"),
            mine: Mutex::new(None),
            since: engine.inner.clock.now_ms(),
        }
    }

    fn record(&self, reply: &Reply) {
        *self.mine.lock() = Some(reply.clone());
        let now = self.engine.inner.clock.now_ms();
        let memory = REJECTION_MEMORY.as_millis() as u64;
        let mut all = self.engine.inner.rejections.lock();
        all.retain(|_, (at, _)| now.saturating_sub(*at) < memory);
        all.insert(self.request.clone(), (now, reply.clone()));
    }

    /// The rejection to answer with instead of `status`: this call's own, or, when the
    /// answer is a stale one, one recorded for the same request since this caller started
    /// (the call it joined).
    fn instead_of(&self, status: Option<Status>) -> Option<Reply> {
        if let Some(r) = self.mine.lock().take() {
            return Some(r);
        }
        if status != Some(Status::Stale) {
            return None;
        }
        let all = self.engine.inner.rejections.lock();
        all.get(&self.request)
            .filter(|(at, _)| *at >= self.since)
            .map(|(_, r)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::stream;

    use super::*;
    use crate::MemoryCache;
    use crate::runtime::{BoxFuture, Runtime};

    #[derive(Debug)]
    struct Tokio;

    impl Runtime for Tokio {
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            tokio::spawn(task);
        }
    }

    type Body = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, UpstreamError>> + Send>>;

    /// An upstream answering every call with `status` and `chunks`, counting calls.
    struct Fake {
        status: u16,
        chunks: Vec<&'static str>,
        calls: AtomicUsize,
    }

    impl Fake {
        fn new(status: u16, chunks: Vec<&'static str>) -> Self {
            Fake {
                status,
                chunks,
                calls: AtomicUsize::new(0),
            }
        }
    }

    impl ProxyIo for Fake {
        type Body = Body;

        async fn send(
            &self,
            _request: UpstreamRequest,
        ) -> std::result::Result<UpstreamResponse<Body>, SendError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let chunks: Vec<_> = self
                .chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect();
            Ok(UpstreamResponse::new(
                self.status,
                vec![("content-type".into(), "application/json".into())],
                Box::pin(stream::iter(chunks)),
            ))
        }

        fn runtime(&self) -> SharedRuntime {
            Arc::new(Tokio)
        }
    }

    fn engine() -> ProxyEngine {
        let cache = ResponseCache::local(MemoryCache::builder().build().unwrap())
            .build()
            .unwrap();
        ProxyEngine::builder(cache, "http://upstream.invalid/v1")
            .build()
            .unwrap()
    }

    fn request(body: &str) -> ProxyRequest {
        ProxyRequest::new(
            "POST",
            "/v1/chat/completions",
            vec![("authorization".into(), "Bearer sk-a".into())],
        )
        .with_body(Bytes::copy_from_slice(body.as_bytes()))
    }

    const STREAMED: &str =
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    const CHUNKS: &[&str] = &[include_str!(
        "../../tests/fixtures/streams/openai_chat_text.sse"
    )];

    async fn body_of(r: ProxyResponse<Body>) -> Vec<u8> {
        match r.body {
            ProxyBody::Full(b) => b.to_vec(),
            ProxyBody::Events(mut e) => {
                let mut out = Vec::new();
                while let Some(c) = e.next().await {
                    out.extend_from_slice(&c.unwrap());
                }
                out
            }
            ProxyBody::Upstream(_) => panic!("a cached route relayed the upstream"),
        }
    }

    /// The terminal event comes once the answer is stored: a client that stops reading
    /// there (as the Python SDK does) and asks again at once gets a HIT with the same
    /// events.
    #[tokio::test]
    async fn after_the_terminal_event_the_answer_is_stored() {
        let e = engine();
        let up = Fake::new(200, CHUNKS.to_vec());
        let first = e.handle(&up, Api::ChatCompletions, request(STREAMED)).await;
        assert_eq!(first.header("x-larder-cache"), Some("MISS"));
        let ProxyBody::Events(mut events) = first.body else {
            panic!("a streamed answer")
        };
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("[DONE]") {
            got.extend_from_slice(&events.next().await.unwrap().unwrap());
        }
        drop(events);
        let second = e.handle(&up, Api::ChatCompletions, request(STREAMED)).await;
        assert_eq!(second.header("x-larder-cache"), Some("HIT"));
        assert_eq!(body_of(second).await, got, "the same events");
        assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    }

    /// A client that goes away while the terminal event waits for the store does not
    /// cancel the store.
    #[tokio::test]
    async fn leaving_at_the_end_does_not_cancel_the_store() {
        use futures_util::FutureExt;

        let e = engine();
        let up = Fake::new(200, CHUNKS.to_vec());
        let first = e.handle(&up, Api::ChatCompletions, request(STREAMED)).await;
        let ProxyBody::Events(mut events) = first.body else {
            panic!("a streamed answer")
        };
        let mut got = Vec::new();
        // Every event the body gives without waiting: all but the held terminal one.
        while let Some(Some(chunk)) = events.next().now_or_never() {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert!(!got.is_empty() && !String::from_utf8_lossy(&got).contains("[DONE]"));
        drop(events);
        let mut hit = false;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if e.cache()
                .peek(&plan_of(STREAMED).request, &plan_of(STREAMED).control)
                .await
                .unwrap()
                .is_some()
            {
                hit = true;
                break;
            }
        }
        assert!(hit, "the stream was stored after its client left");
        let second = e.handle(&up, Api::ChatCompletions, request(STREAMED)).await;
        assert_eq!(second.header("x-larder-cache"), Some("HIT"));
        assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    }

    fn plan_of(body: &str) -> Plan {
        super::super::plan(
            Api::ChatCompletions,
            body.as_bytes(),
            [("authorization", "Bearer sk-a")],
            Tenancy::PerCredential,
            None,
        )
        .unwrap()
    }

    /// The body ends only once the store is done: a client that reads to the end and asks
    /// again gets a HIT at once.
    #[tokio::test]
    async fn the_body_ends_after_the_store() {
        let e = engine();
        let up = Fake::new(200, CHUNKS.to_vec());
        let a = body_of(e.handle(&up, Api::ChatCompletions, request(STREAMED)).await).await;
        let r = e.handle(&up, Api::ChatCompletions, request(STREAMED)).await;
        assert_eq!(r.header("x-larder-cache"), Some("HIT"));
        assert_eq!(body_of(r).await, a);
    }

    /// A 4xx is passed on and not stored; a 2xx is stored and answered as a HIT.
    #[tokio::test]
    async fn rejections_pass_and_answers_are_stored() {
        let e = engine();
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let bad = Fake::new(400, vec![r#"{"error":{"message":"no"}}"#]);
        let r = e.handle(&bad, Api::ChatCompletions, request(body)).await;
        assert_eq!(r.status, 400);
        assert_eq!(body_of(r).await, br#"{"error":{"message":"no"}}"#);
        let ok = Fake::new(
            200,
            vec![r#"{"id":"x","choices":[{"message":{"content":"yes"}}]}"#],
        );
        let miss = e.handle(&ok, Api::ChatCompletions, request(body)).await;
        assert_eq!(miss.header("x-larder-cache"), Some("MISS"));
        let hit = e.handle(&ok, Api::ChatCompletions, request(body)).await;
        assert_eq!(hit.header("x-larder-cache"), Some("HIT"));
        assert_eq!(body_of(miss).await, body_of(hit).await);
        assert_eq!(ok.calls.load(Ordering::SeqCst), 1);
        let r = e
            .handle(&ok, Api::ChatCompletions, request("not json"))
            .await;
        assert_eq!(r.status, 400);
    }

    #[test]
    fn upstream_urls_are_checked() {
        for bad in [
            "not a url",
            "ftp://x",
            "http://",
            "http://h/v1?x=1",
            "http://h /v1",
        ] {
            let cache = ResponseCache::local(MemoryCache::builder().build().unwrap())
                .build()
                .unwrap();
            assert!(ProxyEngine::builder(cache, bad).build().is_err(), "{bad}");
        }
        let cache = ResponseCache::local(MemoryCache::builder().build().unwrap())
            .build()
            .unwrap();
        let e = ProxyEngine::builder(cache, "https://api.openai.com/v1/")
            .openai_key("sk-x")
            .build()
            .unwrap();
        let up = e.pass_through(&ProxyRequest::new(
            "GET",
            "/v1/models",
            vec![
                ("Host".into(), "proxy".into()),
                ("Authorization".into(), "Bearer caller".into()),
            ],
        ));
        assert_eq!(up.url, "https://api.openai.com/v1/models");
        assert_eq!(
            up.headers,
            vec![("authorization".to_owned(), "Bearer sk-x".to_owned())]
        );
    }
}
