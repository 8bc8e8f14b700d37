//! `larder proxy`: a caching proxy for OpenAI- and Anthropic-compatible APIs.
//!
//! Point an SDK's base URL at it (`OPENAI_BASE_URL=http://127.0.0.1:8080/v1`,
//! `ANTHROPIC_BASE_URL=http://127.0.0.1:8080`): `POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/responses`, `/v1/embeddings` and `/v1/messages` are answered
//! through a [`ResponseCache`] (streamed or not); every other route and method is passed
//! through untouched, bodies streamed both ways. What is keyed, which headers control the
//! cache, who the tenant is, what each upstream status means and the whole request flow
//! are in [`larder_core::proxy::ProxyEngine`], shared with the proxy Worker; this module
//! converts axum's and reqwest's types and moves the bytes.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use larder_core::proxy::{
    ProxyBody, ProxyEngine, ProxyEngineBuilder, ProxyIo, ProxyRequest, ProxyResponse, Route,
    SendError, Tenancy, UpstreamRequest, UpstreamResponse,
};
use larder_core::response::ResponseCache;
use larder_core::runtime::SharedRuntime;
use larder_core::stream::UpstreamError;

pub use crate::server::Spawned as SpawnedProxy;
pub use larder_core::proxy::DEFAULT_BODY_LIMIT;

/// The default time to connect to the upstream: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default longest silence of the upstream (before its headers, or between two chunks
/// of a body): 300 s.
pub const DEFAULT_READ_TIMEOUT: Duration =
    Duration::from_millis(larder_core::proxy::DEFAULT_READ_TIMEOUT_MS);

/// A proxy could not be built (a bad upstream URL, a TLS setup failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProxyError(String);

/// Builds a [`Proxy`]. Start with [`Proxy::builder`].
#[must_use]
pub struct ProxyBuilder {
    engine: ProxyEngineBuilder,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_connections: usize,
    header_read_timeout: Duration,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// The Anthropic upstream (`/v1/messages` and requests carrying `x-api-key` or
    /// `anthropic-version`). Default: the OpenAI upstream.
    pub fn anthropic_upstream(mut self, url: impl Into<String>) -> Self {
        self.engine = self.engine.anthropic_upstream(url);
        self
    }

    /// A key the proxy sends to the OpenAI upstream (`Authorization: Bearer …`) instead of
    /// the caller's. The caller's credential still names its tenant.
    pub fn openai_key(mut self, key: &str) -> Self {
        self.engine = self.engine.openai_key(key);
        self
    }

    /// A key the proxy sends to the Anthropic upstream (`x-api-key`) instead of the
    /// caller's.
    pub fn anthropic_key(mut self, key: &str) -> Self {
        self.engine = self.engine.anthropic_key(key);
        self
    }

    /// How callers are kept apart (default: per credential).
    pub fn tenancy(mut self, tenancy: Tenancy) -> Self {
        self.engine = self.engine.tenancy(tenancy);
        self
    }

    /// Names tenants by an HMAC of their credential under this secret instead of its
    /// SHA-256 (give the response cache the same key with
    /// [`hash_key`](larder_core::response::ResponseCacheBuilder::hash_key)).
    pub fn tenant_key(mut self, key: larder_core::seal::HashKey) -> Self {
        self.engine = self.engine.tenant_key(key);
        self
    }

    /// The largest body of a cached request (larger: 413). Default [`DEFAULT_BODY_LIMIT`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.engine = self.engine.body_limit(bytes);
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
        self.engine = self.engine.name(name);
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
        let engine = self
            .engine
            .build()
            .map_err(|e| ProxyError(e.to_string().replace("invalid argument: ", "")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProxyError(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Proxy {
            shared: Arc::new(Shared {
                engine,
                io: Reqwest {
                    client,
                    runtime: Arc::new(crate::TokioRuntime::current()),
                },
                limits: crate::server::Limits {
                    max_connections: self.max_connections,
                    header_read_timeout: self.header_read_timeout,
                },
                prometheus: self.prometheus,
            }),
        })
    }
}

/// The caching proxy. Build with [`Proxy::builder`], run with [`Proxy::serve`] or
/// [`Proxy::spawn`].
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    engine: ProxyEngine,
    io: Reqwest,
    limits: crate::server::Limits,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("engine", &self.shared.engine)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy answering through `cache`, forwarding to the OpenAI-compatible `upstream`
    /// (`https://api.openai.com/v1`, or any compatible server).
    pub fn builder(cache: ResponseCache, upstream: impl Into<String>) -> ProxyBuilder {
        ProxyBuilder {
            engine: ProxyEngine::builder(cache, upstream),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: crate::gateway::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: crate::gateway::DEFAULT_HEADER_READ_TIMEOUT,
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
        let name = self.shared.engine.name().to_owned();
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
        let _ = self.shared.engine.cache().flush().await;
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

/// An upstream body as reqwest delivers it.
type ReqwestBody = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// The proxy's I/O: reqwest to the upstream, tokio for work after the response.
struct Reqwest {
    client: reqwest::Client,
    runtime: SharedRuntime,
}

fn send_error(e: reqwest::Error) -> SendError {
    if e.is_timeout() {
        SendError::timed_out(Arc::new(e))
    } else {
        SendError::unreachable(Arc::new(e))
    }
}

impl Reqwest {
    async fn send_with(
        &self,
        request: UpstreamRequest,
        body: reqwest::Body,
    ) -> Result<UpstreamResponse<ReqwestBody>, SendError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| SendError::unreachable(Arc::new(e)))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &request.headers {
            if let (Ok(n), Ok(mut v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                if n == header::AUTHORIZATION || n.as_str() == "x-api-key" {
                    v.set_sensitive(true);
                }
                headers.append(n, v);
            }
        }
        let resp = self
            .client
            .request(method, &request.url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(send_error)?;
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let status = resp.status().as_u16();
        let body: ReqwestBody = Box::pin(
            resp.bytes_stream()
                .map_err(|e| -> UpstreamError { Arc::new(e) }),
        );
        Ok(UpstreamResponse::new(status, headers, body))
    }
}

impl ProxyIo for Reqwest {
    type Body = ReqwestBody;

    async fn send(
        &self,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse<ReqwestBody>, SendError> {
        let body = reqwest::Body::from(request.body.clone());
        self.send_with(request, body).await
    }

    fn runtime(&self) -> SharedRuntime {
        self.runtime.clone()
    }
}

fn proxy_request(parts: &axum::http::request::Parts) -> ProxyRequest {
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let headers = parts
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    ProxyRequest::new(parts.method.as_str(), pq, headers)
}

/// Converts the engine's response into axum's.
fn into_axum(r: ProxyResponse<ReqwestBody>) -> Response {
    let mut out = Response::builder().status(r.status);
    for (name, value) in &r.headers {
        out = out.header(name.as_str(), value.as_str());
    }
    let body = match r.body {
        ProxyBody::Full(b) => Body::from(b),
        ProxyBody::Upstream(s) => Body::from_stream(s),
        // An error ends the body without its last chunk: the client sees a broken
        // response, never a short answer presented as whole.
        ProxyBody::Events(events) => Body::from_stream(events),
    };
    out.body(body)
        .unwrap_or_else(|_| (StatusCode::BAD_GATEWAY, "bad upstream response").into_response())
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if parts.method == axum::http::Method::GET && parts.uri.path() == "/metrics" {
        return match &s.prometheus {
            Some(h) => (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                h.render(),
            )
                .into_response(),
            None => into_axum(ProxyResponse::error(404, "no metrics recorder")),
        };
    }
    let request = proxy_request(&parts);
    match s.engine.route(parts.method.as_str(), parts.uri.path()) {
        Route::Health => into_axum(s.engine.health()),
        Route::Cached(api) => {
            let bytes = match axum::body::to_bytes(body, s.engine.body_limit()).await {
                Ok(b) => b,
                Err(_) => return into_axum(s.engine.too_large()),
            };
            into_axum(s.engine.handle(&s.io, api, request.with_body(bytes)).await)
        }
        _ => {
            let upstream = s.engine.pass_through(&request);
            let body = reqwest::Body::wrap_stream(body.into_data_stream());
            into_axum(s.engine.relay(s.io.send_with(upstream, body).await))
        }
    }
}
