//! [`ReqwestClient`]: the native HTTP client (reqwest with rustls), feature `native-client`.

use async_trait::async_trait;
use larder_core::rest::SYNC_TOKEN_HEADER;
use larder_core::{ErrorKind, TransportError};

use crate::http::{HttpClient, HttpRequest, HttpResponse};

/// Sends requests with a pooled `reqwest::Client` (keep-alive, HTTP/1.1 or HTTP/2 over
/// rustls).
#[derive(Debug, Clone)]
pub struct ReqwestClient {
    client: reqwest::Client,
}

impl ReqwestClient {
    /// A client with connection pooling and `TCP_NODELAY`.
    ///
    /// # Errors
    ///
    /// When the TLS backend cannot be initialized (no usable root certificates).
    pub fn new() -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| {
                TransportError::new(
                    ErrorKind::Other,
                    format!("cannot build the HTTP client: {e}"),
                )
                .with_source(e)
            })?;
        Ok(ReqwestClient { client })
    }

    /// Uses a `reqwest::Client` configured by the caller (proxies, certificates, …).
    pub fn from_client(client: reqwest::Client) -> Self {
        ReqwestClient { client }
    }
}

fn map_err(e: reqwest::Error) -> TransportError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ErrorKind::Io
    } else {
        ErrorKind::Other
    };
    // reqwest's Display names the URL, never headers: the token does not leak.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    TransportError::new(kind, format!("HTTP request failed: {message}")).with_source(e)
}

#[async_trait]
impl HttpClient for ReqwestClient {
    async fn post(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut builder = self
            .client
            .post(&request.url)
            .timeout(request.timeout)
            .body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.map_err(map_err)?;
        let status = response.status().as_u16();
        let sync_token = response
            .headers()
            .get(SYNC_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(map_err)?;
        Ok(HttpResponse::new(status, sync_token, body))
    }
}
