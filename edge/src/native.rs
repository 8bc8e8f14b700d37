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
    stream_idle: std::time::Duration,
}

/// The longest a streamed response ([`HttpClient::open`]) may stay silent before it ends
/// with a timeout: a subscription's server sends a keep-alive comment at least every 15 s
/// (`larder gateway` does), so a silence this long is a dead or half-open connection, and
/// the subscriber reconnects or polls instead of waiting deaf.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

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
        Ok(ReqwestClient::from_client(client))
    }

    /// Uses a `reqwest::Client` configured by the caller (proxies, certificates, …).
    pub fn from_client(client: reqwest::Client) -> Self {
        ReqwestClient {
            client,
            stream_idle: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }

    /// The longest a streamed response may stay silent (default
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`]); past it the stream ends with a timeout error.
    #[must_use]
    pub fn stream_idle_timeout(mut self, idle: std::time::Duration) -> Self {
        self.stream_idle = idle;
        self
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
        let idle = self.stream_idle;
        let body = futures_util::stream::unfold(Some(response), move |response| async move {
            let mut response = response?;
            match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(response))),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(map_err(e)), None)),
                Err(_) => Some((
                    Err(TransportError::new(
                        ErrorKind::Timeout,
                        format!("the stream was silent for {idle:?}: the connection is dead"),
                    )),
                    None,
                )),
            }
        });
        Ok(HttpStream::new(status, sync_token, Box::pin(body)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers with one event, then keeps the connection open and says
    /// nothing (a half-open connection looks the same to the client).
    #[tokio::test]
    async fn a_silent_stream_ends_with_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/subscribe/c", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let event = "data: subscribe,c,1\n\n";
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let chunk = format!("{head}{:x}\r\n{event}\r\n", event.len());
            s.write_all(chunk.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let client = ReqwestClient::new()
            .unwrap()
            .stream_idle_timeout(Duration::from_millis(300));
        let request = HttpRequest {
            url,
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(5),
        };
        let mut stream = client.open(request).await.unwrap();
        assert_eq!(stream.status, 200);
        let first = stream.body.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: subscribe"));
        let started = Instant::now();
        let err = stream.body.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(stream.body.next().await.is_none(), "the stream ended");
    }
}
