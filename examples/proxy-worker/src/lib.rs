//! larder's caching proxy for OpenAI- and Anthropic-compatible APIs as a Cloudflare Worker.
//!
//! The request flow is [`larder_core::proxy::ProxyEngine`], the same as `larder proxy`'s:
//! the same routes, headers, statuses, tenancy and stale-on-error rules, and the same keys
//! and stored values, so an answer cached by the Worker is a hit for the native proxy on
//! the same Redis and the other way round. This file only converts the Workers runtime's
//! requests and responses and sends the upstream calls with its `fetch`.
//!
//! # Configuration (bindings: `[vars]` and secrets)
//!
//! The variables of [`ProxySettings`] (`LARDER_UPSTREAM`, `LARDER_UPSTREAM_KEY`, TTLs,
//! tenancy, encryption, …), and the cache:
//!
//! - `UPSTASH_REDIS_REST_URL` and `UPSTASH_REDIS_REST_TOKEN` (Upstash, or a larder gateway
//!   with `LARDER_REST_BASE64_ARGS=1`): the cache shared with every other Worker isolate
//!   and with native larder processes. Concurrent identical requests in different
//!   isolates make one upstream call (the lease), and the others read the stream in
//!   flight from Redis.
//! - Without them, answers are cached in the isolate's memory (see [`memory`]).
//!
//! # Subrequests
//!
//! Every answer carries `x-larder-redis-requests`: the HTTP requests to Redis made before
//! the response started (a hit: 1). Work after the response (storing a miss, flushing
//! statistics) runs under `waitUntil` and is not in it.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{Either, select};
use futures_util::{Stream, StreamExt};
use larder_core::proxy::{
    ProxyBody, ProxyEngine, ProxyIo, ProxyRequest, ProxyResponse, ProxySettings, Route, SendError,
    UpstreamRequest, UpstreamResponse,
};
use larder_core::response::ResponseCache;
use larder_core::runtime::SharedRuntime;
use larder_core::stream::UpstreamError;
use larder_core::{MemoryCache, RedisCache};
use larder_edge::{RestTransport, WaitUntil};
use worker::wasm_bindgen::JsValue;
use worker::{Context, Env, Request, Response, Result, event};

/// The upstream's body in the Workers runtime.
type Body = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, UpstreamError>>>>;

thread_local! {
    static MEMORY: RefCell<Option<MemoryCache>> = const { RefCell::new(None) };
}

/// The isolate's in-memory cache, used when no Redis is configured.
///
/// Why isolate memory and not the Workers Cache API: the Cache API costs a subrequest per
/// lookup, lives per data center, and has no atomic operation to hold a lease on, so
/// concurrent misses could not share one upstream call; isolate memory costs nothing per
/// lookup and needs no setup. It lasts as long as the isolate: for a cache shared by every
/// isolate (and with native processes), configure Redis.
fn memory(entries: usize) -> std::result::Result<MemoryCache, larder_core::Error> {
    MEMORY.with(|m| {
        if let Some(c) = m.borrow().as_ref() {
            return Ok(c.clone());
        }
        let c = MemoryCache::builder().max_entries(entries).build()?;
        *m.borrow_mut() = Some(c.clone());
        Ok(c)
    })
}

/// The proxy's I/O in the Workers runtime: `fetch` to the upstream, `waitUntil` for work
/// after the response.
struct WorkerIo {
    runtime: SharedRuntime,
    /// The longest wait for the upstream's response headers.
    timeout: std::time::Duration,
}

fn js_error(e: worker::Error) -> UpstreamError {
    Arc::new(e)
}

/// No response headers within the timeout.
#[derive(Debug)]
struct TimedOut(std::time::Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no response within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

impl WorkerIo {
    async fn fetch(
        &self,
        request: UpstreamRequest,
        body: Option<JsValue>,
    ) -> std::result::Result<UpstreamResponse<Body>, SendError> {
        let headers = worker::Headers::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value)
                .map_err(|e| SendError::unreachable(js_error(e)))?;
        }
        let mut init = worker::RequestInit::new();
        init.with_method(worker::Method::from(request.method.clone()))
            .with_headers(headers)
            .with_body(body);
        let req = worker::Request::new_with_init(&request.url, &init)
            .map_err(|e| SendError::unreachable(js_error(e)))?;
        let controller = worker::AbortController::default();
        let signal = controller.signal();
        let fetch = worker::Fetch::Request(req);
        let sending = fetch.send_with_signal(&signal);
        let timer = worker::Delay::from(self.timeout);
        let mut resp = match select(Box::pin(sending), timer).await {
            Either::Left((r, _)) => r.map_err(|e| SendError::unreachable(js_error(e)))?,
            Either::Right(_) => {
                controller.abort();
                return Err(SendError::timed_out(Arc::new(TimedOut(self.timeout))));
            }
        };
        let status = resp.status_code();
        let headers = resp.headers().entries().collect();
        let body: Body = match resp.stream() {
            Ok(s) => Box::pin(s.map(|chunk| chunk.map(Bytes::from).map_err(js_error))),
            Err(_) => Box::pin(futures_util::stream::empty()),
        };
        Ok(UpstreamResponse::new(status, headers, body))
    }
}

impl ProxyIo for WorkerIo {
    type Body = Body;

    async fn send(
        &self,
        request: UpstreamRequest,
    ) -> std::result::Result<UpstreamResponse<Body>, SendError> {
        let body = (!request.body.is_empty())
            .then(|| JsValue::from(worker::js_sys::Uint8Array::from(&request.body[..])));
        self.fetch(request, body).await
    }

    fn runtime(&self) -> SharedRuntime {
        self.runtime.clone()
    }
}

fn into_worker(r: ProxyResponse<Body>, redis_requests: Option<u64>) -> Result<Response> {
    let headers = worker::Headers::new();
    for (name, value) in &r.headers {
        headers.append(name, value)?;
    }
    if let Some(n) = redis_requests {
        headers.set("x-larder-redis-requests", &n.to_string())?;
    }
    let builder = Response::builder()
        .with_status(r.status)
        .with_headers(headers);
    match r.body {
        ProxyBody::Full(b) => Ok(builder.fixed(b.to_vec())),
        ProxyBody::Upstream(s) => builder.from_stream(s.map(|c| {
            c.map(|b| b.to_vec())
                .map_err(|e| worker::Error::RustError(e.to_string()))
        })),
        // An error errors the body: the client sees a broken response, never a short
        // answer presented as whole.
        ProxyBody::Events(events) => builder.from_stream(events.map(|c| {
            c.map(|b| b.to_vec())
                .map_err(|e| worker::Error::RustError(e.to_string()))
        })),
    }
}

fn config_error(message: impl std::fmt::Display) -> Result<Response> {
    let message = format!("the proxy is misconfigured: {message}");
    into_worker(ProxyResponse::error(500, &message), None)
}

/// The engine for one request, and the Redis transport when there is one.
fn engine(
    env: &Env,
) -> std::result::Result<(ProxyEngine, Option<RestTransport>, std::time::Duration), String> {
    let lookup = |name: &str| {
        env.secret(name)
            .map(|s| s.to_string())
            .or_else(|_| env.var(name).map(|v| v.to_string()))
            .ok()
    };
    let settings = ProxySettings::from_lookup(lookup).map_err(|e| e.to_string())?;
    let redis = lookup("UPSTASH_REDIS_REST_URL").is_some_and(|u| !u.trim().is_empty());
    let (backend, transport) = if redis {
        let transport = RestTransport::from_lookup(lookup).map_err(|e| e.to_string())?;
        let cache = RedisCache::builder(transport.clone())
            .prefix(&settings.prefix)
            .build()
            .map_err(|e| format!("LARDER_PREFIX: {e}"))?;
        (ResponseCache::redis(cache), Some(transport))
    } else {
        let cache = memory(settings.memory_entries).map_err(|e| e.to_string())?;
        (ResponseCache::local(cache), None)
    };
    let cache = settings
        .response_cache(backend)
        .map_err(|e| e.to_string())?;
    let engine = settings.engine(cache).map_err(|e| e.to_string())?;
    Ok((engine, transport, settings.read_timeout))
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, ctx: Context) -> Result<Response> {
    let runtime = WaitUntil::shared(Arc::new(ctx));
    let (engine, transport, timeout) = match engine(&env) {
        Ok(e) => e,
        Err(e) => return config_error(e),
    };
    let io = WorkerIo {
        runtime: runtime.clone(),
        timeout,
    };
    let url = req.url()?;
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let method = req.method().to_string();
    let headers: Vec<(String, String)> = req.headers().entries().collect();
    let request = ProxyRequest::new(method.clone(), path_and_query, headers);
    let before = transport.as_ref().map(RestTransport::requests);
    let response = match engine.route(&method, url.path()) {
        Route::Health => engine.health(),
        Route::Cached(api) => {
            let body = req.bytes().await?;
            if body.len() > engine.body_limit() {
                engine.too_large()
            } else {
                engine
                    .handle(&io, api, request.with_body(Bytes::from(body)))
                    .await
            }
        }
        _ => {
            let upstream = engine.pass_through(&request);
            // The caller's body is streamed to the upstream as it arrives.
            let body = req.inner().body().map(JsValue::from);
            engine.relay(io.fetch(upstream, body).await)
        }
    };
    let redis_requests = match (&transport, before) {
        (Some(t), Some(b)) => Some(t.requests().saturating_sub(b)),
        _ => None,
    };
    // Statistics and analytics reach Redis after the response.
    let cache = engine.cache().clone();
    runtime.spawn(Box::pin(async move {
        let _ = cache.flush().await;
    }));
    into_worker(response, redis_requests)
}
