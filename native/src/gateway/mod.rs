//! The gateway: Redis over HTTP, in the Upstash REST dialect, in front of any `Transport`.
//!
//! Cloudflare Workers cannot speak RESP to a self-hosted Redis; `larder gateway` lets them
//! (and the official `@upstash/redis` clients) use one, standalone, Cluster or Sentinel,
//! through `larder-edge`'s `RestTransport`.
//!
//! # Endpoints
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /` body `["SET","k","v"]` | `{"result":"OK"}`; a Redis error is HTTP 400 `{"error":"…"}` with Redis's text unchanged |
//! | `POST /pipeline` body `[["GET","k"],["INCR","n"]]` | `[{"result":…},{"error":…}]`, one item per command, in order |
//! | `POST /multi-exec` (same body) | the same shape, run as one `MULTI`/`EXEC` transaction; a transaction that fails as a whole is HTTP 400 `{"error":…}` |
//! | `POST /subscribe/{channel}`, `/psubscribe/{pattern}` | a server-sent event stream of the messages published (see [`subscribe`](self#subscriptions)) |
//! | `GET /healthz` | 200 `{"status":"ok"}` when Redis answers `PING`, else 503 (no token needed) |
//! | `GET /metrics` | Prometheus text counters (no token needed) |
//!
//! The dialect itself (`Upstash-Encoding: base64` for binary-safe replies at every depth,
//! `upstash-sync-token` on every answer, fresh after any request that may write, larder's `Larder-Arg-Encoding: base64` for binary
//! arguments) is `larder_core::rest`, shared with the client. Repeated slashes in the path
//! (`//pipeline`) and a trailing slash are tolerated.
//!
//! # Subscriptions
//!
//! `POST /subscribe/{channel}` and `/psubscribe/{pattern}` (as `@upstash/redis`'s
//! `subscribe`/`psubscribe` send them) answer `text/event-stream`: `data: subscribe,{channel},1`,
//! then `data: message,{channel},{payload}` per message (`pmessage,{pattern},{channel},{payload}`
//! for patterns), and a `: keepalive` comment every 15 s. Every stream shares the transport's
//! one pub/sub connection; at most [`GatewayBuilder::max_subscriptions`] are open at once.
//! Read-only tokens may subscribe; patterns are capped like `MATCH` globs.
//!
//! # Security
//!
//! - `Authorization: Bearer <token>` on every command request. Full tokens run every
//!   allowed command; read-only tokens only reads (no writes, no `EVAL`, no `SCAN`/`KEYS`).
//!   Tokens are kept as SHA-256 digests, compared in constant time, and never logged.
//! - Every command passes the [`policy`] first: a command or container subcommand name with
//!   bytes no Redis name has (a NUL byte, which Redis stops reading at, a space, non-ASCII)
//!   makes the whole request a 400; connection-state commands (`MULTI`, `SELECT`,
//!   `CLIENT REPLY`, `SCRIPT DEBUG`, …) and blocking forms (`BLPOP`, `WAIT`,
//!   `XREAD … BLOCK`, …) never run, connections being shared; dangerous commands are denied
//!   by default ([`policy::DEFAULT_DENIED`]: `FLUSHALL`, `CONFIG`, `ACL`, `SCRIPT KILL`, …),
//!   configurable with [`GatewayBuilder::policy`]. A refused command answers `NOPERM …`, in
//!   band like any Redis error, and is counted in `larder_gateway_denied_commands_total`.
//! - Read-only tokens run only reads whose cost follows their reply: no script of their own
//!   (`EVAL_RO` never; `EVALSHA_RO`/`FCALL_RO` with [`Policy::allow_read_only_scripts`]), no
//!   transaction, no key named twice in one command (`MGET k k`), no repeated members
//!   (negative random counts), no `MATCH` glob.
//! - For every token, arguments whose cost to Redis grows with them are capped (random
//!   counts, `SCAN` `COUNT`s, `LIMIT` offsets, globs).
//! - An answer is never built past [`GatewayBuilder::max_reply_bytes`]; a longer reply fails
//!   its request with a 400, and a pipeline stops once its replies pass the limit.
//! - Tokens in the query string (`?_token=…`, which Upstash accepts) are refused with 401 by
//!   default — URLs end up in proxy and access logs — unless
//!   [`GatewayBuilder::allow_query_token`] opts in.
//! - Bodies over the limit (1 MiB by default) are refused with 413 before they are read
//!   whole; malformed JSON (including JSON nested too deep) is a 400 with a JSON error; no
//!   input makes the server panic.
//! - [`Gateway::serve`] accepts at most [`DEFAULT_MAX_CONNECTIONS`] connections at a time
//!   ([`GatewayBuilder::max_connections`]): past the cap it stops accepting, so further
//!   clients wait in the kernel's backlog instead of costing file descriptors. A client
//!   must send a request's headers within [`DEFAULT_HEADER_READ_TIMEOUT`] of connecting (or
//!   of its previous response, on a kept-alive connection) and its body within
//!   [`DEFAULT_BODY_READ_TIMEOUT`]; otherwise the connection is closed (slowloris).
//!   [`Gateway::router`] alone has the body timeout but not the connection cap nor the
//!   header timeout: those belong to the server that accepts the connections.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo(transport: larder_core::SharedTransport) -> std::io::Result<()> {
//! use larder_native::gateway::{Gateway, Token, shutdown_signal};
//!
//! let gateway = Gateway::builder(transport)
//!     .token(Token::new(std::env::var("LARDER_GATEWAY_TOKEN").unwrap()).unwrap())
//!     .build()
//!     .expect("a token is configured");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! gateway.serve(listener, shutdown_signal()).await
//! # }
//! ```

mod auth;
mod metrics;
pub mod policy;
mod subscribe;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use larder_core::rest::{self, Encoding};
use larder_core::{Cmd, Commands, ErrorKind, SharedTransport, TransportError, Value};
use tower::Layer;
use tower::util::MapRequestLayer;

pub use auth::Token;
use auth::Tokens;
use metrics::{Metrics, Outcome, Route};
pub use policy::{Access, Policy, Refusal};

/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default cap on connections open at once: 4096.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default time a client has to send a request's headers: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time a client has to send a request's body once its headers are in: 15 s.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// The default cap on subscription streams open at once: 2048.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 2048;

/// The default cap on one answer's body: 16 MiB.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// A gateway could not be built (for example: no token and no explicit opt-out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GatewayError(String);

/// Builds a [`Gateway`]. Start with [`Gateway::builder`].
#[must_use]
pub struct GatewayBuilder {
    transport: SharedTransport,
    tokens: Tokens,
    policy: Policy,
    body_limit: usize,
    health_timeout: Duration,
    insecure_no_auth: bool,
    allow_query_token: bool,
    max_connections: usize,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    max_reply_bytes: usize,
    max_subscriptions: usize,
    name: String,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("tokens", &self.tokens)
            .field("policy", &self.policy)
            .field("body_limit", &self.body_limit)
            .field("allow_query_token", &self.allow_query_token)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Accepts `token` with full access. May be called several times (token rotation).
    pub fn token(mut self, token: Token) -> Self {
        self.tokens.add(&token, Access::Full);
        self
    }

    /// Accepts `token` with read-only access. May be called several times.
    pub fn read_only_token(mut self, token: Token) -> Self {
        self.tokens.add(&token, Access::ReadOnly);
        self
    }

    /// The command policy (default: [`Policy::default`], which denies
    /// [`policy::DEFAULT_DENIED`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The largest request body accepted, in bytes (default [`DEFAULT_BODY_LIMIT`]); larger
    /// ones get HTTP 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long `/healthz` waits for `PING` (default 2 s).
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Also accepts the token as the query parameter `?_token=…` (as Upstash does) when a
    /// request has no `Authorization` header. Off by default: with it off, a request that
    /// carries `_token` is refused with 401 even if its header is valid, because a token in a
    /// URL has likely been written to some log already.
    pub fn allow_query_token(mut self, allow: bool) -> Self {
        self.allow_query_token = allow;
        self
    }

    /// The most connections [`Gateway::serve`] keeps open at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`], at least 1). Past it the gateway stops accepting until a
    /// connection closes; keep it under the process's file-descriptor limit.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, u32::MAX as usize);
        self
    }

    /// How long a client may take to send a request's headers, counted from the moment the
    /// connection is ready for a request (default [`DEFAULT_HEADER_READ_TIMEOUT`]); then
    /// [`Gateway::serve`] closes the connection. This also bounds idle kept-alive
    /// connections.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a client may take to send a request's body once its headers are in (default
    /// [`DEFAULT_BODY_READ_TIMEOUT`]); then the answer is 408 and the connection is closed.
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The longest answer body the gateway builds, in bytes (default
    /// [`DEFAULT_MAX_REPLY_BYTES`], at least 1 KiB). A reply that would be longer fails its
    /// request with HTTP 400 `ERR … reply …limit` (the commands of a transaction, and of a
    /// pipeline up to the part that passed the limit, have run; only their answer is
    /// refused). The body is never built past the limit; a pipeline goes to Redis in parts
    /// and stops once its replies pass it (for a read-only token, each command whose reply
    /// grows with the data in a part of its own); negative random counts that together pass
    /// it are refused before they run. One command's reply as Redis sent it is still read
    /// whole by the transport.
    pub fn max_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_reply_bytes = bytes.max(1024);
        self
    }

    /// The most subscription streams (`/subscribe`, `/psubscribe`) open at once (default
    /// [`DEFAULT_MAX_SUBSCRIPTIONS`]); past it a subscription is refused with 503 and the
    /// client polls instead. Each stream holds a connection: keep it under
    /// [`max_connections`](Self::max_connections) so commands still get through.
    pub fn max_subscriptions(mut self, max: usize) -> Self {
        self.max_subscriptions = max;
        self
    }

    /// Serves without any token: every request gets full access. Only for a gateway bound to
    /// a private interface in development.
    pub fn insecure_no_auth(mut self) -> Self {
        self.insecure_no_auth = true;
        self
    }

    /// The `gateway` label of this gateway's metrics (default `"gateway"`), to tell several
    /// gateways in one process apart.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Serves `GET /metrics` from this Prometheus recorder: the gateway's own metrics and
    /// everything else the process emits through the `metrics` facade (the transport, the
    /// circuit breaker, caches), when the recorder is the installed one
    /// (`PrometheusBuilder::install_recorder`, as `larder gateway` does). Without it
    /// `/metrics` answers 404.
    pub fn prometheus(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Builds the gateway.
    ///
    /// # Errors
    ///
    /// When no token is configured and [`insecure_no_auth`](Self::insecure_no_auth) was not
    /// asked for.
    pub fn build(self) -> Result<Gateway, GatewayError> {
        metrics::describe();
        if self.tokens.is_empty() && !self.insecure_no_auth {
            return Err(GatewayError(
                "no token configured: set LARDER_GATEWAY_TOKEN (or --token-file), or pass \
                 --insecure-no-auth for a private development gateway"
                    .into(),
            ));
        }
        Ok(Gateway {
            shared: Arc::new(Shared {
                transport: self.transport,
                tokens: self.tokens,
                policy: self.policy,
                body_limit: self.body_limit,
                health_timeout: self.health_timeout,
                allow_query_token: self.allow_query_token,
                max_connections: self.max_connections,
                header_read_timeout: self.header_read_timeout,
                body_read_timeout: self.body_read_timeout,
                max_reply_bytes: self.max_reply_bytes,
                metrics: Arc::new(Metrics::new(self.name.into(), self.prometheus)),
                sync: AtomicU64::new(0),
                max_subscriptions: self.max_subscriptions,
                subscriptions: AtomicUsize::new(0),
                closing: tokio::sync::watch::Sender::new(false),
            }),
        })
    }
}

/// An HTTP server speaking the Upstash REST dialect in front of a [`Transport`].
///
/// See the [module documentation](self) for the endpoints and the security model.
///
/// [`Transport`]: larder_core::Transport
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("transport", &self.shared.transport)
            .field("tokens", &self.shared.tokens)
            .field("body_limit", &self.shared.body_limit)
            .finish_non_exhaustive()
    }
}

struct Shared {
    transport: SharedTransport,
    tokens: Tokens,
    policy: Policy,
    body_limit: usize,
    health_timeout: Duration,
    allow_query_token: bool,
    max_connections: usize,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    max_reply_bytes: usize,
    metrics: Arc<Metrics>,
    sync: AtomicU64,
    max_subscriptions: usize,
    /// Subscription streams open now.
    subscriptions: AtomicUsize,
    /// Becomes true when the gateway shuts down: subscription streams end.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Starts building a gateway in front of `transport`.
    pub fn builder(transport: SharedTransport) -> GatewayBuilder {
        GatewayBuilder {
            transport,
            tokens: Tokens::default(),
            policy: Policy::default(),
            body_limit: DEFAULT_BODY_LIMIT,
            health_timeout: Duration::from_secs(2),
            insecure_no_auth: false,
            allow_query_token: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            name: "gateway".to_owned(),
            prometheus: None,
        }
    }

    /// The axum router (to mount in a larger server, or to serve yourself). Paths are
    /// normalised before routing (`//pipeline` and `/pipeline/` are `/pipeline`), since clients
    /// join base URLs and paths loosely.
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/", post(post_command).fallback(post_only))
            .route("/pipeline", post(post_pipeline).fallback(post_only))
            .route("/multi-exec", post(post_multi_exec).fallback(post_only))
            .route(
                "/subscribe/{*name}",
                post(subscribe::post_subscribe).fallback(post_only),
            )
            .route(
                "/psubscribe/{*name}",
                post(subscribe::post_subscribe).fallback(post_only),
            )
            .route("/healthz", get(healthz).fallback(unknown))
            .route("/metrics", get(metrics_text).fallback(unknown))
            .fallback(unknown)
            .with_state(self.shared.clone());
        Router::new().fallback_service(MapRequestLayer::new(normalize_path).layer(routes))
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting connections,
    /// ends subscription streams, lets requests in flight finish, and closes the transport.
    ///
    /// At most [`max_connections`](GatewayBuilder::max_connections) connections are open at
    /// once, and each must send its headers within the
    /// [header read timeout](GatewayBuilder::header_read_timeout).
    ///
    /// # Errors
    ///
    /// None at present: failures to accept (such as running out of file descriptors) are
    /// logged and retried after a pause. The `Result` leaves room for future ones.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let metrics = self.shared.metrics.clone();
        let shared = self.shared.clone();
        let shutdown = async move {
            shutdown.await;
            shared.closing.send_replace(true);
        };
        crate::server::serve(
            router,
            listener,
            crate::server::Limits {
                max_connections: self.shared.max_connections,
                header_read_timeout: self.shared.header_read_timeout,
            },
            move || metrics.connection(),
            shutdown,
        )
        .await;
        let _ = self.shared.transport.close().await;
        Ok(())
    }
}

impl Gateway {
    /// Serves on `listener` in a task on the current tokio runtime and returns at once.
    /// The gateway stops gracefully when the returned handle is dropped or
    /// [`shutdown`](SpawnedGateway::shutdown). For embedding and for tests.
    ///
    /// # Errors
    ///
    /// When the listener's address cannot be read.
    pub fn spawn(self, listener: tokio::net::TcpListener) -> std::io::Result<SpawnedGateway> {
        crate::server::Spawned::spawn(listener, |listener, stop| self.serve(listener, stop))
    }
}

/// A gateway serving in the background (see [`Gateway::spawn`]). Dropping it stops the
/// gateway.
pub use crate::server::Spawned as SpawnedGateway;

/// Completes on Ctrl-C or, on Unix, SIGTERM: the usual signal for [`Gateway::serve`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
}

/// What the gateway answers, before it becomes an HTTP response.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    outcome: Outcome,
    content_type: &'static str,
    sync_token: Option<String>,
    /// The request held a command that may write: its answer carries a fresh sync token.
    may_have_written: bool,
    /// Ask the client to close the connection (after a timeout: the rest of the body is
    /// not worth waiting for).
    close: bool,
}

impl Answer {
    fn json(status: StatusCode, body: Vec<u8>, outcome: Outcome) -> Self {
        Answer {
            status,
            body,
            outcome,
            content_type: "application/json",
            sync_token: None,
            may_have_written: false,
            close: false,
        }
    }

    fn error(status: StatusCode, message: &str, outcome: Outcome) -> Self {
        Answer::json(status, rest::encode_error(message), outcome)
    }

    fn unavailable(e: &TransportError) -> Self {
        let status = if e.kind() == ErrorKind::Timeout {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Answer::error(
            status,
            &format!("ERR the gateway cannot reach Redis: {e}"),
            Outcome::Unavailable,
        )
    }

    fn reply_too_large(limit: usize) -> Self {
        Answer::error(
            StatusCode::BAD_REQUEST,
            &format!(
                "ERR the reply is larger than this gateway's limit of {limit} bytes \
                 (--max-reply-bytes): read less at once (GETRANGE, SSCAN, LRANGE or ZRANGE \
                 with bounds)"
            ),
            Outcome::ReplyTooLarge,
        )
    }

    /// A Redis error for the whole request, within the reply limit like any answer.
    fn redis_error(message: &str, limit: usize) -> Self {
        if message.len().saturating_add(16) > limit {
            return Answer::reply_too_large(limit);
        }
        Answer::error(StatusCode::BAD_REQUEST, message, Outcome::RedisError)
    }

    /// The whole request is malformed: one of its commands has an impossible name.
    fn malformed(refusal: &str, index: Option<usize>) -> Self {
        let message = match index {
            Some(i) => format!("{refusal} (command {i} of the request; nothing was run)"),
            None => refusal.to_owned(),
        };
        Answer::error(StatusCode::BAD_REQUEST, &message, Outcome::BadRequest)
    }
}

/// The policy's verdict on `cmd`, then the reply bound: commands whose replies are certain
/// to be over the limit together are refused before they run. `spent` carries what the
/// request's earlier commands are certain to return.
fn admit(shared: &Shared, cmd: &Cmd, access: Access, spent: &mut u64) -> Result<(), Refusal> {
    shared.policy.check(cmd, access)?;
    // SRANDMEMBER/HRANDFIELD/ZRANDMEMBER key -N return N members, repeats allowed, so N alone
    // sets a least size: every member costs at least 3 bytes (`"",`) in the answer.
    let certain = match policy::random_count(cmd) {
        Some(n) if n < 0 => n.unsigned_abs().saturating_mul(3),
        _ => 0,
    };
    if certain > 0 {
        let total = spent.saturating_add(certain);
        if total > shared.max_reply_bytes as u64 {
            return Err(Refusal::Denied(format!(
                "ERR the replies to this request's counts would be larger than this gateway's \
                 limit of {} bytes (--max-reply-bytes)",
                shared.max_reply_bytes
            )));
        }
        *spent = total;
    }
    Ok(())
}

/// The most commands of a pipeline sent to Redis at once. After each part the gateway
/// checks the replies so far against the reply limit and runs no more once they pass it.
const PIPELINE_MAX_PART: usize = 256;

/// `//a//b/` → `/a/b`: empty path segments dropped (the query kept).
fn normalize_path(mut request: Request) -> Request {
    let uri = request.uri();
    let path = uri.path();
    if !path.contains("//") && (path == "/" || !path.ends_with('/')) {
        return request;
    }
    let mut normal = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if let Some(query) = uri.query() {
        normal.push('?');
        normal.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = normal.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(normalised) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = normalised;
        }
    }
    request
}

/// Answers, timing and counting the request under `route`.
async fn timed(shared: &Shared, route: Route, answer: impl Future<Output = Answer>) -> Response {
    let started = Instant::now();
    let answer = answer.await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared.metrics.request(route, answer.outcome, micros);
    answer.into_response()
}

async fn post_command(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let answer = command(&shared, request, Route::Single);
    timed(&shared, Route::Single, answer).await
}

async fn post_pipeline(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let answer = command(&shared, request, Route::Pipeline);
    timed(&shared, Route::Pipeline, answer).await
}

async fn post_multi_exec(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let answer = command(&shared, request, Route::MultiExec);
    timed(&shared, Route::MultiExec, answer).await
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    timed(&shared, Route::Other, health(&shared)).await
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let answer = async {
        match shared.metrics.render() {
            Some(text) => Answer {
                status: StatusCode::OK,
                body: text.into_bytes(),
                outcome: Outcome::Ok,
                content_type: "text/plain; version=0.0.4",
                sync_token: None,
                may_have_written: false,
                close: false,
            },
            None => Answer::error(
                StatusCode::NOT_FOUND,
                "ERR no metrics recorder: give the gateway one with GatewayBuilder::prometheus",
                Outcome::NotFound,
            ),
        }
    };
    timed(&shared, Route::Other, answer).await
}

async fn post_only(State(shared): State<Arc<Shared>>) -> Response {
    refuse(
        &shared,
        StatusCode::METHOD_NOT_ALLOWED,
        "ERR use POST with a JSON body",
    )
    .await
}

async fn unknown(State(shared): State<Arc<Shared>>) -> Response {
    let message = "ERR unknown endpoint: POST /, /pipeline, /multi-exec, /subscribe/{channel} or \
         /psubscribe/{pattern}; GET /healthz or /metrics";
    refuse(&shared, StatusCode::NOT_FOUND, message).await
}

/// A request no route serves, counted like any other.
async fn refuse(shared: &Shared, status: StatusCode, message: &str) -> Response {
    let answer = Answer::error(status, message, Outcome::NotFound);
    timed(shared, Route::Other, std::future::ready(answer)).await
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, Body::from(self.body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(token) = self.sync_token.and_then(|t| HeaderValue::try_from(t).ok()) {
            headers.insert(rest::SYNC_TOKEN_HEADER, token);
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /`, `/pipeline`, `/multi-exec`: authenticate, read, parse, check, run, answer.
async fn command(shared: &Shared, request: Request, route: Route) -> Answer {
    let (parts, body) = request.into_parts();
    let mut answer = command_inner(shared, &parts, body, route).await;
    // Read-your-writes token (the Upstash clients keep the last one and send it back): a
    // fresh one after every request that may write, the current one otherwise, on every
    // answer (a client resets its token when an answer has none). A read carrying any token
    // already sees every write acknowledged before it: the gateway reads from the masters it
    // wrote to, and a write is acknowledged only once Redis has applied it.
    let sync = if answer.may_have_written {
        shared.sync.fetch_add(1, Ordering::AcqRel) + 1
    } else {
        shared.sync.load(Ordering::Acquire)
    };
    answer.sync_token = Some(sync.to_string());
    answer
}

/// Who is asking: the access of the request's token, or the 401 to answer.
fn authenticate(shared: &Shared, parts: &axum::http::request::Parts) -> Result<Access, Answer> {
    if shared.tokens.is_empty() {
        return Ok(Access::Full);
    }
    let header = parts.headers.get(header::AUTHORIZATION);
    let query = auth::query_param(parts.uri.query(), "_token");
    let granted = match (header, query) {
        (_, Some(_)) if !shared.allow_query_token => {
            return Err(Answer::error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: this gateway refuses tokens in the query string (?_token=); \
                 send Authorization: Bearer <token> instead, and rotate a token that has \
                 been sent in a URL",
                Outcome::Unauthorized,
            ));
        }
        (Some(h), _) => shared.tokens.check(Some(h.as_bytes())),
        (None, Some(q)) => shared.tokens.check_secret(&q),
        (None, None) => None,
    };
    granted.ok_or_else(|| {
        Answer::error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: send Authorization: Bearer <token>",
            Outcome::Unauthorized,
        )
    })
}

async fn command_inner(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    body: Body,
    route: Route,
) -> Answer {
    // 1. Who is asking.
    let access = match authenticate(shared, parts) {
        Ok(a) => a,
        Err(answer) => return answer,
    };

    // 2. The body, within the limit.
    let too_large = || {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "ERR the request body is larger than this gateway's limit of {} bytes",
                shared.body_limit
            ),
            Outcome::TooLarge,
        )
    };
    let declared = header_str(&parts.headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shared.body_limit as u64) {
        return too_large();
    }
    let read = tokio::time::timeout(
        shared.body_read_timeout,
        axum::body::to_bytes(body, shared.body_limit),
    );
    let bytes: Bytes = match read.await {
        Err(_elapsed) => {
            let mut answer = Answer::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "ERR the request body did not arrive within {} ms",
                    shared.body_read_timeout.as_millis()
                ),
                Outcome::Timeout,
            );
            answer.close = true;
            return answer;
        }
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            // axum wraps http-body-util's `LengthLimitError` ("length limit exceeded").
            let mut limit_hit = false;
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                limit_hit |= s.to_string().contains("length limit");
                source = s.source();
            }
            return if limit_hit {
                too_large()
            } else {
                Answer::error(
                    StatusCode::BAD_REQUEST,
                    &format!("ERR cannot read the request body: {e}"),
                    Outcome::BadRequest,
                )
            };
        }
    };

    // 3. Parse.
    let reply_enc =
        Encoding::from_header(header_str(&parts.headers, rest::RESPONSE_ENCODING_HEADER));
    let arg_enc = Encoding::from_header(header_str(&parts.headers, rest::ARG_ENCODING_HEADER));
    let bad = |e: rest::RequestError| {
        Answer::error(StatusCode::BAD_REQUEST, e.message(), Outcome::BadRequest)
    };
    if route == Route::Single {
        let cmd = match rest::parse_command(&bytes, arg_enc) {
            Ok(c) => c,
            Err(e) => return bad(e),
        };
        let writes = !policy::is_read_only_command(&cmd);
        let mut answer = single(shared, cmd, access, reply_enc).await;
        answer.may_have_written = writes;
        return answer;
    }
    let cmds = match rest::parse_pipeline(&bytes, arg_enc) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    let writes = cmds.iter().any(|c| !policy::is_read_only_command(c));
    let mut answer = if route == Route::MultiExec {
        multi_exec(shared, cmds, access, reply_enc).await
    } else {
        pipeline(shared, cmds, access, reply_enc).await
    };
    answer.may_have_written = writes;
    answer
}

async fn single(shared: &Shared, cmd: Cmd, access: Access, enc: Encoding) -> Answer {
    match admit(shared, &cmd, access, &mut 0) {
        Ok(()) => {}
        Err(Refusal::Malformed(m)) => {
            shared.metrics.denied(1);
            return Answer::malformed(&m, None);
        }
        Err(refusal) => {
            shared.metrics.denied(1);
            return Answer::error(
                StatusCode::BAD_REQUEST,
                refusal.message(),
                Outcome::RedisError,
            );
        }
    }
    shared.metrics.commands(1);
    let result = match scan_args(&cmd) {
        Some(scan) => run_scan(shared, scan).await,
        None => shared.transport.exec(cmd).await,
    };
    match result {
        Ok(Value::Error(e)) => Answer::redis_error(&e, shared.max_reply_bytes),
        Ok(v) => match rest::encode_reply_within(&v, enc, shared.max_reply_bytes) {
            Ok(body) => Answer::json(StatusCode::OK, body, Outcome::Ok),
            Err(_) => Answer::reply_too_large(shared.max_reply_bytes),
        },
        Err(e) => Answer::unavailable(&e),
    }
}

/// The verdict on every command of a pipeline or transaction; a malformed name anywhere
/// refuses the whole request (counted once per bad command).
fn admit_all(shared: &Shared, cmds: &[Cmd], access: Access) -> Result<Vec<Option<String>>, Answer> {
    let mut spent = 0;
    let verdicts: Vec<Result<(), Refusal>> = cmds
        .iter()
        .map(|c| admit(shared, c, access, &mut spent))
        .collect();
    let refused = verdicts.iter().filter(|v| v.is_err()).count();
    if let Some((i, Err(Refusal::Malformed(m)))) = verdicts
        .iter()
        .enumerate()
        .find(|(_, v)| matches!(v, Err(Refusal::Malformed(_))))
    {
        shared.metrics.denied(refused);
        return Err(Answer::malformed(m, Some(i)));
    }
    shared.metrics.denied(refused);
    Ok(verdicts
        .into_iter()
        .map(|v| v.err().map(|r| r.message().to_owned()))
        .collect())
}

async fn pipeline(shared: &Shared, cmds: Vec<Cmd>, access: Access, enc: Encoding) -> Answer {
    let n = cmds.len();
    let verdicts = match admit_all(shared, &cmds, access) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let mut results: Vec<Option<Value>> = vec![None; n];
    let mut run = Vec::with_capacity(n);
    let mut slots = Vec::with_capacity(n);
    for (i, (cmd, verdict)) in cmds.into_iter().zip(verdicts).enumerate() {
        match verdict {
            None => {
                run.push(cmd);
                slots.push(i);
            }
            Some(refusal) => results[i] = Some(Value::Error(refusal)),
        }
    }
    shared.metrics.commands(run.len());
    // SCAN goes through the transport's key scan (every master of a Cluster); the commands
    // between SCANs go in parts of at most PIPELINE_MAX_PART (for a read-only token, at most
    // one command whose reply grows with the data per part), in order. Once the replies so
    // far pass the reply limit, nothing more runs.
    let limit = shared.max_reply_bytes;
    let mut replied = 0usize;
    // A full token's parts are as large as they come (its batches are the common case, and
    // full tokens are trusted with Redis's resources: they can run scripts).
    let one_large_reply_per_part = access == Access::ReadOnly;
    let mut large_in_batch = false;
    let mut batch: Vec<(usize, Cmd)> = Vec::new();
    let mut pending = run.into_iter().zip(slots).peekable();
    while let Some((cmd, slot)) = pending.next() {
        let scan = scan_args(&cmd);
        if scan.is_none() {
            large_in_batch |= one_large_reply_per_part && policy::reply_grows_with_data(&cmd);
            batch.push((slot, cmd));
        }
        let next_is_large = pending.peek().is_some_and(|(next, _)| {
            one_large_reply_per_part && policy::reply_grows_with_data(next)
        });
        let flush = scan.is_some()
            || batch.len() >= PIPELINE_MAX_PART
            || pending.peek().is_none()
            || (large_in_batch && next_is_large);
        if flush && !batch.is_empty() {
            let (batch_slots, cmds): (Vec<usize>, Vec<Cmd>) =
                std::mem::take(&mut batch).into_iter().unzip();
            let replies = match shared.transport.pipeline(cmds).await {
                Ok(r) if r.len() == batch_slots.len() => r,
                Ok(_) => {
                    return Answer::error(
                        StatusCode::BAD_GATEWAY,
                        "ERR the Redis transport returned the wrong number of replies",
                        Outcome::Unavailable,
                    );
                }
                Err(e) => return Answer::unavailable(&e),
            };
            large_in_batch = false;
            replied = replied.saturating_add(rest::reply_len_floor(&replies, enc, limit));
            if replied > limit {
                return Answer::reply_too_large(limit);
            }
            for (slot, reply) in batch_slots.into_iter().zip(replies) {
                results[slot] = Some(reply);
            }
        }
        if let Some(scan) = scan {
            match run_scan(shared, scan).await {
                Ok(v) => {
                    replied = replied.saturating_add(rest::reply_len_floor(
                        std::slice::from_ref(&v),
                        enc,
                        limit,
                    ));
                    if replied > limit {
                        return Answer::reply_too_large(limit);
                    }
                    results[slot] = Some(v);
                }
                Err(e) => return Answer::unavailable(&e),
            }
        }
    }
    let values: Vec<Value> = results
        .into_iter()
        .map(|v| v.unwrap_or(Value::Nil))
        .collect();
    match rest::encode_pipeline_reply_within(&values, enc, shared.max_reply_bytes) {
        Ok(body) => Answer::json(StatusCode::OK, body, Outcome::Ok),
        Err(_) => Answer::reply_too_large(shared.max_reply_bytes),
    }
}

/// A `SCAN cursor [MATCH pattern] [COUNT n]` the gateway runs through
/// [`Transport::scan_page`](larder_core::Transport::scan_page).
struct ScanArgs {
    cursor: u64,
    pattern: Bytes,
    count: usize,
}

/// Bits of the gateway's SCAN cursor that hold the node index (the top 8); the other 56 are
/// that node's own cursor. On a single node the cursor is exactly Redis's.
const NODE_SHIFT: u32 = 56;

fn scan_args(cmd: &Cmd) -> Option<ScanArgs> {
    if !cmd.args()[0].eq_ignore_ascii_case(b"SCAN") {
        return None;
    }
    let args = &cmd.args()[1..];
    let cursor = std::str::from_utf8(args.first()?)
        .ok()?
        .parse::<u64>()
        .ok()?;
    let mut scan = ScanArgs {
        cursor,
        pattern: Bytes::from_static(b"*"),
        count: 10,
    };
    let mut rest = args[1..].chunks(2);
    for pair in &mut rest {
        match pair {
            [opt, v] if opt.eq_ignore_ascii_case(b"MATCH") => scan.pattern = v.clone(),
            [opt, v] if opt.eq_ignore_ascii_case(b"COUNT") => {
                // Over the policy's cap it was refused before it got here.
                scan.count = std::str::from_utf8(v).ok()?.parse::<usize>().ok()?.max(1);
            }
            // TYPE, or anything malformed: let Redis run (and judge) the command as sent.
            _ => return None,
        }
    }
    Some(scan)
}

async fn run_scan(shared: &Shared, scan: ScanArgs) -> Result<Value, TransportError> {
    let node = usize::try_from(scan.cursor >> NODE_SHIFT).unwrap_or(0);
    let cursor = scan.cursor & ((1 << NODE_SHIFT) - 1);
    let start = if scan.cursor == 0 {
        larder_core::ScanCursor::START
    } else {
        larder_core::ScanCursor::at(node, cursor)
    };
    let (next, keys) = shared
        .transport
        .scan_page(start, &scan.pattern, scan.count)
        .await?;
    let next = if next.is_done() {
        0
    } else {
        ((next.node as u64) << NODE_SHIFT) | (next.cursor & ((1 << NODE_SHIFT) - 1))
    };
    Ok(Value::Array(vec![
        Value::Bulk(Bytes::from(next.to_string())),
        Value::Array(keys.into_iter().map(Value::Bulk).collect()),
    ]))
}

async fn multi_exec(shared: &Shared, cmds: Vec<Cmd>, access: Access, enc: Encoding) -> Answer {
    if access == Access::ReadOnly {
        // Redis runs a transaction whole, however long, and holds its replies until EXEC:
        // nothing the gateway does can stop 40 000 reads once they are queued.
        shared.metrics.denied(cmds.len());
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "NOPERM read-only tokens cannot run transactions (Redis runs one whole, however \
             long): use /pipeline",
            Outcome::RedisError,
        );
    }
    let verdicts = match admit_all(shared, &cmds, access) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    if let Some(refusal) = verdicts.into_iter().flatten().next() {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            &format!("EXECABORT Transaction discarded because of previous errors: {refusal}"),
            Outcome::RedisError,
        );
    }
    let n = cmds.len();
    shared.metrics.commands(n);
    let mut tx = Vec::with_capacity(n + 2);
    tx.push(Cmd::new("MULTI"));
    tx.extend(cmds);
    tx.push(Cmd::new("EXEC"));
    let mut replies = match shared.transport.pipeline(tx).await {
        Ok(r) if r.len() == n + 2 => r,
        Ok(_) => {
            return Answer::error(
                StatusCode::BAD_GATEWAY,
                "ERR the Redis transport returned the wrong number of replies",
                Outcome::Unavailable,
            );
        }
        Err(e) => return Answer::unavailable(&e),
    };
    if let Some(e) = replies[0].as_error() {
        return Answer::redis_error(e, shared.max_reply_bytes);
    }
    match replies.pop().expect("n + 2 replies") {
        Value::Array(items) => {
            match rest::encode_pipeline_reply_within(&items, enc, shared.max_reply_bytes) {
                Ok(body) => Answer::json(StatusCode::OK, body, Outcome::Ok),
                Err(_) => Answer::reply_too_large(shared.max_reply_bytes),
            }
        }
        Value::Error(e) => Answer::redis_error(&e, shared.max_reply_bytes),
        other => Answer::error(
            StatusCode::BAD_REQUEST,
            &format!("EXECABORT the transaction was aborted ({other:?})"),
            Outcome::RedisError,
        ),
    }
}

async fn health(shared: &Shared) -> Answer {
    match tokio::time::timeout(shared.health_timeout, shared.transport.ping()).await {
        Ok(Ok(())) => Answer::json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec(), Outcome::Ok),
        Ok(Err(e)) => Answer::json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::to_vec(
                &serde_json::json!({"status": "unavailable", "error": e.to_string()}),
            )
            .unwrap_or_default(),
            Outcome::Unavailable,
        ),
        Err(_) => Answer::json(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"unavailable","error":"Redis did not answer PING in time"}"#.to_vec(),
            Outcome::Unavailable,
        ),
    }
}
