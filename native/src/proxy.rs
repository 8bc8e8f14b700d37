//! `larder proxy`: a caching proxy for OpenAI- and Anthropic-compatible APIs.
//!
//! Point an SDK's base URL at it (`OPENAI_BASE_URL=http://127.0.0.1:8080/v1`,
//! `ANTHROPIC_BASE_URL=http://127.0.0.1:8080`): `POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/responses`, `/v1/embeddings` and `/v1/messages` are answered
//! through a [`ResponseCache`] (streamed or not); every other route and method is passed
//! through untouched, bodies streamed both ways. What is keyed, which headers control the
//! cache, who the tenant is and what each upstream status means are decided in
//! [`larder_core::proxy`]; this module moves the bytes.
//!
//! - Concurrent identical requests make one upstream call (in this process, and through
//!   the lease in every proxy sharing the Redis); streamed ones share the stream in flight.
//! - Only 2xx answers are stored. A 4xx is passed on as is. On a 5xx, 408, 429, a
//!   connection error or a timeout, a stale answer is served (`x-larder-cache: STALE`) when
//!   the cache has one; otherwise the upstream's error reaches the caller unchanged (502
//!   or 504 when there was no answer at all).
//! - Logs never hold credentials or prompt text: a request is named by its API, the first
//!   digits of its key and its tenant's hash.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use larder_core::Status;
use larder_core::compute::ComputeError;
use larder_core::proxy::{self as decide, Api, CacheUse, Plan, Tenancy, UpstreamVerdict};
use larder_core::response::ResponseCache;
use parking_lot::Mutex;

pub use crate::server::Spawned as SpawnedProxy;

/// The default cap on a cached request's body: 32 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// The default time to connect to the upstream: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default longest silence of the upstream (before its headers, or between two chunks
/// of a body): 300 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A proxy could not be built (a bad upstream URL, a TLS setup failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProxyError(String);

/// Credentials the proxy holds for the upstream (the caller's are used otherwise).
#[derive(Clone, Default)]
struct UpstreamKeys {
    openai: Option<HeaderValue>,
    anthropic: Option<HeaderValue>,
}

/// Builds a [`Proxy`]. Start with [`Proxy::builder`].
#[must_use]
pub struct ProxyBuilder {
    cache: ResponseCache,
    openai: String,
    anthropic: Option<String>,
    keys: UpstreamKeys,
    key_error: Option<String>,
    tenancy: Tenancy,
    tenant_key: Option<larder_core::seal::HashKey>,
    body_limit: usize,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_connections: usize,
    header_read_timeout: Duration,
    name: String,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("openai", &self.openai)
            .field("anthropic", &self.anthropic)
            .field("tenancy", &self.tenancy)
            .finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// The Anthropic upstream (`/v1/messages` and requests carrying `x-api-key` or
    /// `anthropic-version`). Default: the OpenAI upstream.
    pub fn anthropic_upstream(mut self, url: impl Into<String>) -> Self {
        self.anthropic = Some(url.into());
        self
    }

    /// A key the proxy sends to the OpenAI upstream (`Authorization: Bearer …`) instead of
    /// the caller's. The caller's credential still names its tenant.
    pub fn openai_key(mut self, key: &str) -> Self {
        match HeaderValue::from_str(&format!("Bearer {key}")) {
            Ok(mut v) => {
                v.set_sensitive(true);
                self.keys.openai = Some(v);
            }
            Err(_) => self.key_error = Some("the OpenAI key is not a valid header value".into()),
        }
        self
    }

    /// A key the proxy sends to the Anthropic upstream (`x-api-key`) instead of the
    /// caller's.
    pub fn anthropic_key(mut self, key: &str) -> Self {
        match HeaderValue::from_str(key) {
            Ok(mut v) => {
                v.set_sensitive(true);
                self.keys.anthropic = Some(v);
            }
            Err(_) => {
                self.key_error = Some("the Anthropic key is not a valid header value".into());
            }
        }
        self
    }

    /// How callers are kept apart (default: per credential).
    pub fn tenancy(mut self, tenancy: Tenancy) -> Self {
        self.tenancy = tenancy;
        self
    }

    /// Names tenants by an HMAC of their credential under this secret instead of its
    /// SHA-256 (give the response cache the same key with
    /// [`hash_key`](larder_core::response::ResponseCacheBuilder::hash_key)).
    pub fn tenant_key(mut self, key: larder_core::seal::HashKey) -> Self {
        self.tenant_key = Some(key);
        self
    }

    /// The largest body of a cached request (larger: 413). Default [`DEFAULT_BODY_LIMIT`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long connecting to the upstream may take. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest the upstream may stay silent. Default [`DEFAULT_READ_TIMEOUT`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The most connections open at once (more wait in the backlog). Default 4096.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long a client has to send a request's headers. Default 10 s.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The `proxy` label of this proxy's metrics. Default `proxy`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Serves `/metrics` from this Prometheus recorder's handle (404 without one).
    pub fn prometheus(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Builds the proxy.
    ///
    /// # Errors
    ///
    /// [`ProxyError`] for an upstream URL that is not `http(s)://host[:port][/path]`, a key
    /// that is not a valid header value, or an HTTP client that cannot be set up.
    pub fn build(self) -> Result<Proxy, ProxyError> {
        if let Some(e) = self.key_error {
            return Err(ProxyError(e));
        }
        let openai = upstream_url("--upstream", &self.openai)?;
        let anthropic = match &self.anthropic {
            Some(u) => upstream_url("--anthropic-upstream", u)?,
            None => openai.clone(),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProxyError(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Proxy {
            shared: Arc::new(Shared {
                cache: self.cache,
                client,
                openai,
                anthropic,
                keys: self.keys,
                tenancy: self.tenancy,
                tenant_key: self.tenant_key,
                body_limit: self.body_limit,
                limits: crate::server::Limits {
                    max_connections: self.max_connections,
                    header_read_timeout: self.header_read_timeout,
                },
                name: self.name,
                prometheus: self.prometheus,
                rejections: Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }
}

fn upstream_url(flag: &str, url: &str) -> Result<String, ProxyError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ProxyError(format!("{flag} {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ProxyError(format!(
            "{flag} {url:?} must be an http:// or https:// URL with a host"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ProxyError(format!(
            "{flag} {url:?} must not have a query or fragment"
        )));
    }
    // Requests keep their own path (`/v1/...`): the base is joined without a trailing `/`
    // and without a trailing `/v1` (so both `https://api.openai.com` and
    // `https://api.openai.com/v1` work).
    let mut base = url.trim_end_matches('/').to_owned();
    if base.ends_with("/v1") {
        base.truncate(base.len() - 3);
    }
    Ok(base)
}

/// The caching proxy. Build with [`Proxy::builder`], run with [`Proxy::serve`] or
/// [`Proxy::spawn`].
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    cache: ResponseCache,
    client: reqwest::Client,
    openai: String,
    anthropic: String,
    keys: UpstreamKeys,
    tenancy: Tenancy,
    tenant_key: Option<larder_core::seal::HashKey>,
    body_limit: usize,
    limits: crate::server::Limits,
    name: String,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Recent 4xx answers by request (namespace and key): a caller that joined the call
    /// that got one must not be served a stale answer instead.
    rejections: Mutex<std::collections::HashMap<String, (Instant, Reply)>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("openai", &self.shared.openai)
            .field("anthropic", &self.shared.anthropic)
            .field("tenancy", &self.shared.tenancy)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy answering through `cache`, forwarding to the OpenAI-compatible `upstream`
    /// (`https://api.openai.com/v1`, or any compatible server).
    pub fn builder(cache: ResponseCache, upstream: impl Into<String>) -> ProxyBuilder {
        ProxyBuilder {
            cache,
            openai: upstream.into(),
            anthropic: None,
            keys: UpstreamKeys::default(),
            key_error: None,
            tenancy: Tenancy::default(),
            tenant_key: None,
            body_limit: DEFAULT_BODY_LIMIT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: crate::gateway::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: crate::gateway::DEFAULT_HEADER_READ_TIMEOUT,
            name: "proxy".to_owned(),
            prometheus: None,
        }
    }

    /// The axum router: `/healthz`, `/metrics`, the cached routes, and pass-through for
    /// everything else.
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(handle)
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting connections
    /// and lets the requests in flight (streams included) finish.
    ///
    /// # Errors
    ///
    /// None at present (failures to accept are logged and retried).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let name = self.shared.name.clone();
        crate::server::serve(
            self.router(),
            listener,
            self.shared.limits,
            move || {
                metrics::counter!("larder_proxy_connections_total", "proxy" => name.clone())
                    .increment(1);
            },
            shutdown,
        )
        .await;
        let _ = self.shared.cache.flush().await;
        Ok(())
    }

    /// Serves on `listener` in a task and returns at once; dropping the handle stops it.
    ///
    /// # Errors
    ///
    /// When the listener's address cannot be read.
    pub fn spawn(self, listener: tokio::net::TcpListener) -> std::io::Result<SpawnedProxy> {
        crate::server::Spawned::spawn(listener, |listener, stop| self.serve(listener, stop))
    }
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return (StatusCode::OK, "ok\n").into_response(),
        (&Method::GET, "/metrics") => {
            return match &s.prometheus {
                Some(h) => (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    h.render(),
                )
                    .into_response(),
                None => error(StatusCode::NOT_FOUND, "no metrics recorder"),
            };
        }
        _ => {}
    }
    match Api::from_route(req.method().as_str(), &path) {
        Some(api) => cached(&s, api, req).await,
        None => pass_through(&s, req).await,
    }
}

/// An error answer in the shape both SDKs parse: `{"error": {"message", "type"}}`.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": "larder_proxy_error"}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Request headers that are not forwarded: hop-by-hop ones, and those the client sets.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
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

fn is_anthropic(api: Option<Api>, headers: &HeaderMap) -> bool {
    api.is_some_and(Api::is_anthropic)
        || headers.contains_key("x-api-key")
        || headers.contains_key("anthropic-version")
}

/// The upstream request: the caller's method, path, query and headers, with the proxy's
/// key when it holds one.
fn upstream_request(
    s: &Shared,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    anthropic: bool,
    body: reqwest::Body,
) -> reqwest::RequestBuilder {
    let base = if anthropic { &s.anthropic } else { &s.openai };
    let mut out = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        if forwardable(name) {
            out.append(name.clone(), value.clone());
        }
    }
    match (anthropic, &s.keys.anthropic, &s.keys.openai) {
        (true, Some(k), _) => {
            out.insert("x-api-key", k.clone());
        }
        (false, _, Some(k)) => {
            out.insert(header::AUTHORIZATION, k.clone());
        }
        _ => {}
    }
    s.client
        .request(method.clone(), format!("{base}{path_and_query}"))
        .headers(out)
        .body(body)
}

fn upstream_failure(e: &reqwest::Error) -> Response {
    let (status, what) = if e.is_timeout() {
        (StatusCode::GATEWAY_TIMEOUT, "the upstream timed out")
    } else {
        (StatusCode::BAD_GATEWAY, "the upstream could not be reached")
    };
    tracing::warn!(error = %e, "{what}");
    error(status, what)
}

/// Copies the upstream's response (status, headers, streamed body) to the caller.
fn relay(resp: reqwest::Response) -> Response {
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if forwardable(name) {
            out = out.header(name, value);
        }
    }
    let body = Body::from_stream(resp.bytes_stream());
    out.body(body)
        .unwrap_or_else(|_| error(StatusCode::BAD_GATEWAY, "bad upstream response"))
}

async fn pass_through(s: &Shared, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let anthropic = is_anthropic(None, &parts.headers);
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    metrics::counter!("larder_proxy_requests_total", "proxy" => s.name.clone(),
        "api" => "pass_through", "cache" => "NONE")
    .increment(1);
    match upstream_request(s, &parts.method, &pq, &parts.headers, anthropic, body)
        .send()
        .await
    {
        Ok(resp) => relay(resp),
        Err(e) => upstream_failure(&e),
    }
}

/// An upstream answer that is not stored: its status, content type and body, passed on
/// as they came.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl Reply {
    fn into_response(self) -> Response {
        let mut r = Response::builder().status(self.status);
        if let Some(ct) = self.content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        r.body(Body::from(self.body))
            .unwrap_or_else(|_| error(StatusCode::BAD_GATEWAY, "bad upstream response"))
    }
}

/// Why the upstream gave no answer to store.
#[derive(Debug)]
enum Failure {
    /// Connecting, sending or reading failed.
    Transport(reqwest::Error),
    /// A status that is not stored (see [`UpstreamVerdict`]).
    Status(Reply),
    /// `only-if-cached` and nothing cached.
    NotCached,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transport(e) => write!(f, "the upstream failed: {e}"),
            Failure::Status(r) => write!(f, "the upstream answered {}", r.status),
            Failure::NotCached => f.write_str("not cached"),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Transport(e) => upstream_failure(&e),
            Failure::Status(r) => r.into_response(),
            Failure::NotCached => error(
                StatusCode::GATEWAY_TIMEOUT,
                "only-if-cached: this request's answer is not cached",
            ),
        }
    }
}

/// How long a rejection is remembered for the callers that joined its upstream call.
const REJECTION_MEMORY: Duration = Duration::from_secs(10);

/// The 4xx a request's upstream call got (its own, or that of the call it joined): such an
/// answer must reach the caller even where a stale answer exists (a revoked key must not
/// read the cache).
struct Rejected<'a> {
    shared: &'a Shared,
    request: String,
    mine: Mutex<Option<Reply>>,
    /// When this caller started: only a rejection recorded since can be of a call it
    /// joined.
    since: Instant,
}

impl<'a> Rejected<'a> {
    fn new(shared: &'a Shared, plan: &Plan, key: &str) -> Self {
        let ns = plan.control.namespace.as_deref().unwrap_or("");
        Rejected {
            shared,
            request: format!("{ns}\0{key}"),
            mine: Mutex::new(None),
            since: Instant::now(),
        }
    }

    fn record(&self, reply: &Reply) {
        *self.mine.lock() = Some(reply.clone());
        let mut all = self.shared.rejections.lock();
        all.retain(|_, (at, _)| at.elapsed() < REJECTION_MEMORY);
        all.insert(self.request.clone(), (Instant::now(), reply.clone()));
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
        let all = self.shared.rejections.lock();
        all.get(&self.request)
            .filter(|(at, _)| *at >= self.since)
            .map(|(_, r)| r.clone())
    }
}

/// Reads a non-2xx answer whole, and notes a rejection (4xx).
async fn failed_reply(resp: reqwest::Response, rejected: &Rejected<'_>) -> Failure {
    let status = resp.status().as_u16();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Failure::Transport(e),
    };
    let reply = Reply {
        status,
        content_type,
        body,
    };
    if decide::upstream_verdict(status) == UpstreamVerdict::Reject {
        rejected.record(&reply);
    }
    Failure::Status(reply)
}

fn with_headers(
    mut resp: Response,
    plan: &Plan,
    status: Option<Status>,
    key: &str,
    stored_at: Option<u64>,
) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for (name, value) in decide::response_headers(plan, status, key, stored_at, now) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

async fn cached(s: &Shared, api: Api, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, s.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {} bytes", s.body_limit),
            );
        }
    };
    let header_pairs: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
        .collect();
    let plan = match decide::plan(
        api,
        &bytes,
        header_pairs.iter().copied(),
        s.tenancy,
        s.tenant_key.as_ref(),
    ) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // The hash the entry is stored under (keyed, with a hash secret): what `x-larder-key`
    // shows and logs name, never the plain SHA-256 of the request.
    let key = match s.cache.key(&plan.request, &plan.control) {
        Ok(k) => k.rsplit(':').next().unwrap_or_default().to_owned(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let anthropic = is_anthropic(Some(api), &parts.headers);
    let pq = parts
        .uri
        .path_and_query()
        .map_or(api.path(), |p| p.as_str())
        .to_owned();
    let send = || {
        upstream_request(
            s,
            &parts.method,
            &pq,
            &parts.headers,
            anthropic,
            reqwest::Body::from(bytes.clone()),
        )
        .send()
    };
    let rejected = Rejected::new(s, &plan, &key);
    let response = if plan.cache_use == CacheUse::Bypass {
        match send().await {
            Ok(resp) => with_headers(relay(resp), &plan, None, &key, None),
            Err(e) => upstream_failure(&e),
        }
    } else if plan.stream {
        streamed(s, &plan, &key, send, &rejected).await
    } else {
        whole(s, api, &plan, &key, send, &rejected).await
    };
    let word = response
        .headers()
        .get("x-larder-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("NONE")
        .to_owned();
    metrics::counter!("larder_proxy_requests_total", "proxy" => s.name.clone(),
        "api" => api.as_str(), "cache" => word.clone())
    .increment(1);
    tracing::info!(
        api = api.as_str(),
        key = &key[..12],
        tenant = plan.tenant.as_deref().unwrap_or("-"),
        cache = %word,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "proxied"
    );
    response
}

async fn whole<F, Fut>(
    s: &Shared,
    api: Api,
    plan: &Plan,
    key: &str,
    send: F,
    rejected: &Rejected<'_>,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<reqwest::Response, reqwest::Error>>,
{
    let fetched = if plan.cache_use == CacheUse::OnlyIfCached {
        match s.cache.get(&plan.request, &plan.control).await {
            Ok(Some(f)) => Ok(f),
            Ok(None) | Err(_) => Err(ComputeError::Compute(Arc::new(Failure::NotCached))),
        }
    } else {
        let name = s.name.clone();
        s.cache
            .try_get_with(&plan.request, &plan.control, || async move {
                let started = Instant::now();
                let resp = send().await.map_err(Failure::Transport)?;
                metrics::histogram!("larder_proxy_upstream_seconds", "proxy" => name,
                    "api" => api.as_str())
                .record(started.elapsed().as_secs_f64());
                if decide::upstream_verdict(resp.status().as_u16()) != UpstreamVerdict::Store {
                    return Err(failed_reply(resp, rejected).await);
                }
                let body = resp.bytes().await.map_err(Failure::Transport)?;
                Ok(decide::response_of(api, &body))
            })
            .await
    };
    if let Some(reply) = rejected.instead_of(fetched.as_ref().ok().map(|f| f.status)) {
        return reply.into_response();
    }
    match fetched {
        Ok(f) => {
            let body = decide::stored_body(&f.value).unwrap_or_default().to_owned();
            let resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            with_headers(resp, plan, Some(f.status), key, f.stored_at_ms)
        }
        Err(ComputeError::Compute(failure)) => match Arc::try_unwrap(failure) {
            Ok(f) => with_headers(f.into_response(), plan, Some(Status::Miss), key, None),
            Err(shared) => with_headers(
                shared_failure(&shared),
                plan,
                Some(Status::Coalesced),
                key,
                None,
            ),
        },
        Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

/// A failure shared with other callers that joined the same upstream call.
fn shared_failure(f: &Failure) -> Response {
    match f {
        Failure::Status(r) => r.clone().into_response(),
        Failure::Transport(e) => upstream_failure(e),
        Failure::NotCached => Failure::NotCached.into_response(),
    }
}

async fn streamed<F, Fut>(
    s: &Shared,
    plan: &Plan,
    key: &str,
    send: F,
    rejected: &Rejected<'_>,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<reqwest::Response, reqwest::Error>>,
{
    let only_cached = plan.cache_use == CacheUse::OnlyIfCached;
    let mut control = plan.control.clone();
    if only_cached {
        // Never leads a stream of its own, so it takes no lease.
        control.no_store = true;
    }
    let opened = s
        .cache
        .stream_with(&plan.request, &control, || async move {
            if only_cached {
                return Err(Failure::NotCached);
            }
            let resp = send().await.map_err(Failure::Transport)?;
            if decide::upstream_verdict(resp.status().as_u16()) != UpstreamVerdict::Store {
                return Err(failed_reply(resp, rejected).await);
            }
            Ok(resp.bytes_stream().map_err(Failure::Transport))
        })
        .await;
    if let Some(reply) = rejected.instead_of(opened.as_ref().ok().map(|s| s.status())) {
        return reply.into_response();
    }
    match opened {
        Ok(events) => {
            let status = events.status();
            let stored_at = events.stored_at_ms();
            // An error ends the body without its last chunk: the client sees a broken
            // response, never a short answer presented as whole.
            let body = Body::from_stream(events.map(|e| e.map(|e| e.encode())));
            let resp = Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(body)
                .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "bad response"));
            with_headers(resp, plan, Some(status), key, stored_at)
        }
        Err(ComputeError::Compute(failure)) => with_headers(
            shared_failure(&failure),
            plan,
            Some(Status::Miss),
            key,
            None,
        ),
        Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}
