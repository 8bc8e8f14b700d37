//! A provider that counts its requests: an `HttpClientExt` (what rig's providers send
//! through) answering with canned bodies and event streams, as OpenAI and Anthropic do.

// `http_client::Error` is rig's (large) error type, which `HttpClientExt` returns.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use larder::Bytes;
use rig_core::http_client::{
    self, BoxedStream, HttpClientExt, LazyBody, MultipartForm, Request, Response, StatusCode,
    StreamingResponse,
};

/// What the provider answers.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// `200 application/json` with this body.
    Json(String),
    /// This status and body (an error reply).
    Status(u16, String),
    /// `200 text/event-stream`: these bytes in small chunks, `gap` apart, then (with
    /// `fail`) a transport error instead of the end.
    Sse {
        bytes: Vec<u8>,
        gap: Duration,
        fail: bool,
    },
}

impl Reply {
    pub(crate) fn sse(bytes: Vec<u8>) -> Self {
        Reply::Sse {
            bytes,
            gap: Duration::ZERO,
            fail: false,
        }
    }
}

#[derive(Debug)]
struct State {
    unary: AtomicUsize,
    streams: AtomicUsize,
    reply: Mutex<Reply>,
}

/// The fake provider; clones share the counters and the reply.
#[derive(Clone, Debug)]
pub(crate) struct Fake(Arc<State>);

impl Fake {
    pub(crate) fn new(reply: Reply) -> Self {
        Fake(Arc::new(State {
            unary: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            reply: Mutex::new(reply),
        }))
    }

    pub(crate) fn answer(&self, reply: Reply) {
        *self.0.reply.lock().unwrap() = reply;
    }

    /// Unary requests received.
    pub(crate) fn unary(&self) -> usize {
        self.0.unary.load(Ordering::SeqCst)
    }

    /// Streaming requests received.
    pub(crate) fn streams(&self) -> usize {
        self.0.streams.load(Ordering::SeqCst)
    }

    fn reply(&self) -> Reply {
        self.0.reply.lock().unwrap().clone()
    }
}

fn response<B>(status: u16, content_type: &str, body: B) -> http_client::Result<Response<B>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", content_type)
        .header("x-request-id", "req_fake")
        .body(body)
        .map_err(http_client::Error::Protocol)
}

impl HttpClientExt for Fake {
    fn send<T, U>(
        &self,
        _req: Request<T>,
    ) -> impl Future<Output = http_client::Result<Response<LazyBody<U>>>> + Send + 'static
    where
        T: Into<Bytes> + Send,
        U: From<Bytes> + Send + 'static,
    {
        self.0.unary.fetch_add(1, Ordering::SeqCst);
        let reply = self.reply();
        async move {
            let (status, body) = match reply {
                Reply::Json(body) => (200, body),
                Reply::Status(status, body) => (status, body),
                Reply::Sse { .. } => (500, "this fake streams only when asked to".into()),
            };
            let lazy: LazyBody<U> = Box::pin(async move { Ok(U::from(Bytes::from(body))) });
            response(status, "application/json", lazy)
        }
    }

    // `'static`: an `async fn` would borrow `self`.
    #[allow(clippy::manual_async_fn)]
    fn send_multipart<U>(
        &self,
        _req: Request<MultipartForm>,
    ) -> impl Future<Output = http_client::Result<Response<LazyBody<U>>>> + Send + 'static
    where
        U: From<Bytes> + Send + 'static,
    {
        async move {
            let lazy: LazyBody<U> = Box::pin(async move { Ok(U::from(Bytes::new())) });
            response(501, "text/plain", lazy)
        }
    }

    fn send_streaming<T>(
        &self,
        _req: Request<T>,
    ) -> impl Future<Output = http_client::Result<StreamingResponse>> + Send
    where
        T: Into<Bytes> + Send,
    {
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        let reply = self.reply();
        async move {
            let (status, content_type, chunks, gap) = match reply {
                Reply::Sse { bytes, gap, fail } => {
                    // Chunks that split events and lines anywhere.
                    let mut chunks: Vec<http_client::Result<Bytes>> = bytes
                        .chunks(37)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    if fail {
                        chunks.push(Err(http_client::Error::StreamEnded));
                    }
                    (200, "text/event-stream", chunks, gap)
                }
                Reply::Status(status, body) => (
                    status,
                    "application/json",
                    vec![Ok(Bytes::from(body))],
                    Duration::ZERO,
                ),
                Reply::Json(body) => (
                    200,
                    "application/json",
                    vec![Ok(Bytes::from(body))],
                    Duration::ZERO,
                ),
            };
            let body = futures_util::stream::iter(chunks).then(move |c| async move {
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                c
            });
            response(status, content_type, Box::pin(body) as BoxedStream)
        }
    }
}
