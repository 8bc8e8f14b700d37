//! Cloudflare Workers (wasm32, feature `worker`): [`FetchClient`] and
//! [`WaitUntil`].

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{Either, select};
use larder_core::rest::SYNC_TOKEN_HEADER;
use larder_core::{ErrorKind, TransportError};
use worker::wasm_bindgen::JsValue;

use crate::http::{HttpClient, HttpRequest, HttpResponse};

/// Sends requests with the Workers runtime's `fetch` (each is one subrequest), aborting
/// it when the timeout passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchClient;

impl FetchClient {
    /// The client.
    pub fn new() -> Self {
        FetchClient
    }
}

fn io(e: worker::Error) -> TransportError {
    TransportError::new(ErrorKind::Io, format!("fetch failed: {e}")).with_source(e)
}

#[async_trait(?Send)]
impl HttpClient for FetchClient {
    async fn post(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let headers = worker::Headers::new();
        for (name, value) in &request.headers {
            headers.set(name, value).map_err(io)?;
        }
        let body = worker::js_sys::Uint8Array::from(&request.body[..]);
        let mut init = worker::RequestInit::new();
        init.with_method(worker::Method::Post)
            .with_headers(headers)
            .with_body(Some(JsValue::from(body)));
        let req = worker::Request::new_with_init(&request.url, &init).map_err(|e| {
            TransportError::new(
                ErrorKind::Other,
                format!("bad request for {}: {e}", request.url),
            )
        })?;
        let controller = worker::AbortController::default();
        let signal = controller.signal();
        let fetch = worker::Fetch::Request(req);
        let sending = fetch.send_with_signal(&signal);
        let timer = worker::Delay::from(request.timeout);
        let mut response = match select(Box::pin(sending), timer).await {
            Either::Left((result, _)) => result.map_err(io)?,
            Either::Right(_) => {
                controller.abort();
                return Err(TransportError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no response from {} within {:?}",
                        request.url, request.timeout
                    ),
                ));
            }
        };
        let status = response.status_code();
        let sync_token = response.headers().get(SYNC_TOKEN_HEADER).ok().flatten();
        let body = response.bytes().await.map_err(io)?;
        Ok(HttpResponse::new(status, sync_token, Bytes::from(body)))
    }
}

/// A larder [`Runtime`](larder_core::runtime::Runtime) for one Worker request: background
/// work (a fail-safe refresh that outlives its caller, the release of a lease whose caller
/// went away, a deferred statistics flush) runs under the request's
/// [`Context::wait_until`](worker::Context::wait_until), so the Workers runtime keeps the
/// request alive until it finishes without delaying the response.
///
/// Build one per request from the handler's `Context`:
///
/// ```ignore
/// #[event(fetch)]
/// async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
///     let runtime = WaitUntil::shared(std::sync::Arc::new(ctx));
///     let cache = ComputeCache::builder(redis_cache)
///         .runtime(runtime)
///         .build()?;
///     // …
/// }
/// ```
#[derive(Debug, Clone)]
pub struct WaitUntil {
    ctx: std::sync::Arc<worker::Context>,
}

impl WaitUntil {
    /// The runtime of the request `ctx` belongs to.
    pub fn new(ctx: std::sync::Arc<worker::Context>) -> Self {
        WaitUntil { ctx }
    }

    /// The runtime behind an `Arc`, as [`SharedRuntime`](larder_core::runtime::SharedRuntime).
    pub fn shared(ctx: std::sync::Arc<worker::Context>) -> larder_core::runtime::SharedRuntime {
        std::sync::Arc::new(WaitUntil::new(ctx))
    }
}

impl larder_core::runtime::Runtime for WaitUntil {
    fn spawn(&self, task: larder_core::runtime::BoxFuture<'static, ()>) {
        self.ctx.wait_until(task);
    }
}
