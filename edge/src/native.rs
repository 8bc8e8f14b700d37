//! [`ReqwestClient`]: the native HTTP client (reqwest with rustls), feature `native-client`.

use async_trait::async_trait;
use larder_core::rest::SYNC_TOKEN_HEADER;
use larder_core::{ErrorKind, TransportError};

use crate::http::{HttpClient, HttpRequest, HttpResponse, HttpStream};

/// Sends requests with a pooled `reqwest::Client` (keep-alive, HTTP/1.1 or HTTP/2 over
/// rustls).
#[derive(Debug, Clone)]
pub struct ReqwestClient {
    client: reqwest::Client,
}

impl ReqwestClient {
    /// A client with connection pooling (up to 1024 idle connections per host, so a burst of
    /// concurrent requests — a stampede's waiters all looking at once — reuses the
    /// connections of the last one) and `TCP_NODELAY`.
    ///
    /// # Errors
    ///
    /// When the TLS backend cannot be initialized (no usable root certificates).
    pub fn new() -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
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

impl ReqwestClient {
    fn builder(&self, request: HttpRequest) -> reqwest::RequestBuilder {
        let mut builder = self.client.post(&request.url).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        builder
    }
}

fn sync_token(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(SYNC_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[async_trait]
impl HttpClient for ReqwestClient {
    async fn post(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let timeout = request.timeout;
        let response = self
            .builder(request)
            .timeout(timeout)
            .send()
            .await
            .map_err(map_err)?;
        let status = response.status().as_u16();
        let sync_token = sync_token(&response);
        let body = response.bytes().await.map_err(map_err)?;
        Ok(HttpResponse::new(status, sync_token, body))
    }

    fn streams(&self) -> bool {
        true
    }

    async fn open(&self, request: HttpRequest) -> Result<HttpStream, TransportError> {
        let (timeout, url) = (request.timeout, request.url.clone());
        // The timeout bounds the headers only: the body lasts as long as the subscription.
        let response = tokio::time::timeout(timeout, self.builder(request).send())
            .await
            .map_err(|_| {
                TransportError::new(
                    ErrorKind::Timeout,
                    format!("HTTP request failed: no response from {url} within {timeout:?}"),
                )
            })?
            .map_err(map_err)?;
        let status = response.status().as_u16();
        let sync_token = sync_token(&response);
        // `chunk()` rather than reqwest's `stream` feature, which would add a second
        // `wasm-streams` to the lock file.
        let body = futures_util::stream::unfold(Some(response), |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                Err(e) => Some((Err(map_err(e)), None)),
            }
        });
        Ok(HttpStream::new(status, sync_token, Box::pin(body)))
    }
}
