//! The HTTP seam: [`HttpClient`] sends one `POST`; the transport decides everything else.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use larder_core::{ErrorKind, MaybeSend, MaybeSync, TransportError};

/// One `POST` the transport wants sent.
///
/// `Debug` never shows header values (one of them is the bearer token) nor the body.
#[derive(Clone)]
#[non_exhaustive]
pub struct HttpRequest {
    /// The absolute URL.
    pub url: String,
    /// Request headers (names in lowercase).
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The whole exchange (connect, send, read the body) must finish within this.
    pub timeout: Duration,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| *n).collect();
        f.debug_struct("HttpRequest")
            .field("url", &self.url)
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What came back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The `upstash-sync-token` response header, if any.
    pub sync_token: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// A response (for [`HttpClient`] implementations outside this crate).
    pub fn new(status: u16, sync_token: Option<String>, body: Bytes) -> Self {
        HttpResponse {
            status,
            sync_token,
            body,
        }
    }
}

/// A response body read as it arrives (see [`HttpClient::open`]): chunks, or the error that
/// ended it.
pub trait ByteStream:
    futures_util::Stream<Item = Result<Bytes, TransportError>> + MaybeSend
{
}

impl<S: futures_util::Stream<Item = Result<Bytes, TransportError>> + MaybeSend> ByteStream for S {}

/// A response whose body is still arriving (see [`HttpClient::open`]).
#[non_exhaustive]
pub struct HttpStream {
    /// The HTTP status code.
    pub status: u16,
    /// The `upstash-sync-token` response header, if any.
    pub sync_token: Option<String>,
    /// The body, as it arrives.
    pub body: std::pin::Pin<Box<dyn ByteStream>>,
}

impl HttpStream {
    /// A streamed response (for [`HttpClient`] implementations outside this crate).
    pub fn new(
        status: u16,
        sync_token: Option<String>,
        body: std::pin::Pin<Box<dyn ByteStream>>,
    ) -> Self {
        HttpStream {
            status,
            sync_token,
            body,
        }
    }
}

impl fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStream")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Sends HTTP requests for a [`RestTransport`](crate::RestTransport).
///
/// Built in: `FetchClient` on Cloudflare Workers (wasm32, feature `worker`) and
/// `ReqwestClient` natively (feature `native-client`). Implement it to use another client.
///
/// # Errors
///
/// A request that got no HTTP response at all: [`ErrorKind::Timeout`] when `timeout`
/// passed, [`ErrorKind::Io`] for connection failures. Any HTTP status, including 4xx and
/// 5xx, is a response, not an error.
///
/// [`ErrorKind::Timeout`]: larder_core::ErrorKind::Timeout
/// [`ErrorKind::Io`]: larder_core::ErrorKind::Io
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait HttpClient: MaybeSend + MaybeSync + fmt::Debug {
    /// Sends `request` and reads the whole response.
    async fn post(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;

    /// Whether [`open`](Self::open) streams responses (no I/O). The default is false; the
    /// transport then polls instead of subscribing.
    fn streams(&self) -> bool {
        false
    }

    /// Sends `request` and returns as soon as the response's headers are in (within
    /// `request.timeout`), its body to be read as it arrives, for as long as it lasts. Used
    /// for subscriptions (`/subscribe/…`: server-sent events).
    ///
    /// The default refuses (kind [`ErrorKind::Refused`]); so does `FetchClient`: the Workers
    /// runtime ties a response body to the request that fetched it, and a subscription is
    /// shared by every request of an isolate.
    async fn open(&self, request: HttpRequest) -> Result<HttpStream, TransportError> {
        Err(TransportError::new(
            ErrorKind::Refused,
            format!(
                "this HTTP client does not stream responses, cannot open {}",
                request.url
            ),
        ))
    }
}
