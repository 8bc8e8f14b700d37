//! [`RestTransport`]: a [`Transport`] that speaks the Upstash REST dialect over HTTP.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;

use bytes::Bytes;
use larder_core::rest::{self, Encoding};
use larder_core::transport::{BoxSubscription, pubsub_unsupported};
use larder_core::{Cmd, ErrorKind, Transport, TransportError, Value};
use parking_lot::Mutex;

use crate::http::{ByteStream, HttpClient, HttpRequest, HttpResponse};
use crate::subscriptions::Subscriptions;

/// The environment variable holding the REST URL (as the official SDKs).
pub const URL_ENV: &str = "UPSTASH_REDIS_REST_URL";
/// The environment variable holding the bearer token (as the official SDKs).
pub const TOKEN_ENV: &str = "UPSTASH_REDIS_REST_TOKEN";
/// The environment variable that, set to `1`/`true`, enables base64 arguments (only for a
/// larder gateway; see [`RestTransportBuilder::base64_args`]).
pub const BASE64_ARGS_ENV: &str = "LARDER_REST_BASE64_ARGS";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Redis over HTTP, in the Upstash REST dialect: to Upstash itself or to a `larder gateway`
/// in front of any Redis.
///
/// - one command is one `POST {url}/`, a pipeline one `POST {url}/pipeline`: exactly one
///   HTTP request per [`Transport`] call, so a `RedisCache` operation is one Worker
///   subrequest;
/// - replies are asked for in base64 (`Upstash-Encoding: base64`), so values are
///   binary-safe on the way back; per-command errors come back in band as
///   [`Value::Error`] with Redis's text unchanged;
/// - HTTP and network failures are [`TransportError`]s: 401/403 → [`ErrorKind::Auth`], 413 →
///   [`ErrorKind::Refused`], 408/504 and timeouts → [`ErrorKind::Timeout`], 429/5xx →
///   [`ErrorKind::Unavailable`], connection failures → [`ErrorKind::Io`];
/// - the `upstash-sync-token` a server returns is sent with the next request
///   (read-your-writes across replicas, as the official clients do).
///
/// Cloning is cheap and shares the client and counters.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "native-client")]
/// # async fn demo() -> larder_core::Result<()> {
/// use larder_core::{Cache, RedisCache};
/// use larder_edge::RestTransport;
///
/// // UPSTASH_REDIS_REST_URL / UPSTASH_REDIS_REST_TOKEN, like the official SDK.
/// let transport = RestTransport::from_env().expect("REST URL and token in the environment");
/// let cache = RedisCache::builder(transport).prefix("myapp").build().unwrap();
/// cache.set("k", "v".into(), None).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RestTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: Arc<dyn HttpClient>,
    /// Without a trailing slash.
    base: String,
    token: String,
    timeout: Duration,
    base64_args: bool,
    sync_token: Mutex<Option<String>>,
    requests: AtomicU64,
    closed: AtomicBool,
    /// Subscriptions are off ([`RestTransportBuilder::subscriptions`]), or the server refused
    /// one (400, 404, 405: Upstash, an older gateway, a policy): waiters poll.
    no_pubsub: AtomicBool,
    /// One event stream per channel or pattern, shared by its subscribers.
    subscriptions: Subscriptions,
}

impl fmt::Debug for RestTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestTransport")
            .field("url", &self.inner.base)
            .field("timeout", &self.inner.timeout)
            .field("base64_args", &self.inner.base64_args)
            .field("client", &self.inner.client)
            .finish_non_exhaustive()
    }
}

/// A [`RestTransport`] could not be configured (missing or malformed URL or token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Builds a [`RestTransport`]. Start with [`RestTransport::builder`].
#[must_use]
pub struct RestTransportBuilder {
    url: String,
    token: String,
    timeout: Duration,
    base64_args: bool,
    subscriptions: bool,
    client: Option<Arc<dyn HttpClient>>,
}

impl fmt::Debug for RestTransportBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestTransportBuilder")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("base64_args", &self.base64_args)
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

impl RestTransportBuilder {
    /// A builder from any name → value lookup: [`URL_ENV`], [`TOKEN_ENV`] and, optionally,
    /// [`BASE64_ARGS_ENV`] (`1`, `true` or `yes`, in any case). For a transport with its own
    /// HTTP client ([`client`](Self::client)); [`RestTransport::from_lookup`] builds it
    /// at once.
    ///
    /// # Errors
    ///
    /// When the URL or the token is missing or blank.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<RestTransportBuilder, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(format!(
                        "{name} is not set; set {URL_ENV} and {TOKEN_ENV} (from the Upstash \
                     console, or a larder gateway's URL and token)"
                    ))
                })
        };
        let base64_args = lookup(BASE64_ARGS_ENV).is_some_and(|v| {
            matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
        });
        Ok(RestTransport::builder(get(URL_ENV)?, get(TOKEN_ENV)?).base64_args(base64_args))
    }

    /// How long one request may take in all (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends commands whose arguments are not UTF-8 with every argument in base64 and the
    /// header `Larder-Arg-Encoding: base64` (default off).
    ///
    /// Only a larder gateway understands this: turn it on for one, and leave it off for
    /// Upstash, which would store the base64 text. With it off, such a command fails with
    /// [`ErrorKind::Refused`] before anything is sent. Text arguments are always sent as
    /// plain JSON strings.
    pub fn base64_args(mut self, on: bool) -> Self {
        self.base64_args = on;
        self
    }

    /// Whether waiters may subscribe through the server's event stream (`POST /subscribe/…`)
    /// when the HTTP client streams responses (default on). Turn it off behind a proxy that
    /// buffers responses: waiters then poll.
    pub fn subscriptions(mut self, on: bool) -> Self {
        self.subscriptions = on;
        self
    }

    /// Uses this HTTP client instead of the built-in one.
    pub fn client(mut self, client: impl HttpClient + 'static) -> Self {
        self.client = Some(Arc::new(client));
        self
    }

    /// Builds the transport.
    ///
    /// # Errors
    ///
    /// When the URL is not `http://` or `https://`, the token is empty, or no HTTP client is
    /// available (no [`client`](Self::client) given and neither the `worker` feature on
    /// wasm32 nor the `native-client` feature elsewhere).
    pub fn build(self) -> Result<RestTransport, ConfigError> {
        let url = self.url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::new(format!(
                "the REST URL must start with https:// or http:// (got {url:?}); use the \
                 database's REST URL (UPSTASH_REDIS_REST_URL), not its redis:// URL"
            )));
        }
        let token = self.token.trim();
        if token.is_empty() {
            return Err(ConfigError::new(format!(
                "the REST token is empty; set {TOKEN_ENV} or pass the token to \
                 RestTransport::builder"
            )));
        }
        let client = match self.client {
            Some(c) => c,
            None => default_client()?,
        };
        Ok(RestTransport {
            inner: Arc::new(Inner {
                client,
                base: url.trim_end_matches('/').to_owned(),
                token: token.to_owned(),
                timeout: self.timeout,
                base64_args: self.base64_args,
                sync_token: Mutex::new(None),
                requests: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                no_pubsub: AtomicBool::new(!self.subscriptions),
                subscriptions: Subscriptions::default(),
            }),
        })
    }
}

#[allow(unreachable_code)]
fn default_client() -> Result<Arc<dyn HttpClient>, ConfigError> {
    #[cfg(all(target_arch = "wasm32", feature = "worker"))]
    return Ok(Arc::new(crate::FetchClient::new()));
    #[cfg(all(not(target_arch = "wasm32"), feature = "native-client"))]
    return Ok(Arc::new(
        crate::ReqwestClient::new().map_err(|e| ConfigError::new(e.to_string()))?,
    ));
    Err(ConfigError::new(
        "no HTTP client: enable larder-edge's `worker` feature (wasm32) or `native-client` \
         feature, or pass one with RestTransportBuilder::client",
    ))
}

impl RestTransport {
    /// Starts building a transport for a REST URL (with or without a trailing slash) and a
    /// bearer token.
    pub fn builder(url: impl Into<String>, token: impl Into<String>) -> RestTransportBuilder {
        RestTransportBuilder {
            url: url.into(),
            token: token.into(),
            timeout: DEFAULT_TIMEOUT,
            base64_args: false,
            subscriptions: true,
            client: None,
        }
    }

    /// A transport from the process environment: [`URL_ENV`], [`TOKEN_ENV`] and, optionally,
    /// [`BASE64_ARGS_ENV`].
    ///
    /// On Cloudflare Workers, secrets are not in the process environment: use
    /// `RestTransport::from_worker_env(&env)`.
    ///
    /// # Errors
    ///
    /// When a variable is missing, or as [`RestTransportBuilder::build`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// A transport from a Worker's bindings (secrets first, then plain vars) named as in
    /// [`from_env`](Self::from_env).
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    #[cfg(all(target_arch = "wasm32", feature = "worker"))]
    pub fn from_worker_env(env: &worker::Env) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| {
            env.secret(name)
                .map(|s| s.to_string())
                .or_else(|_| env.var(name).map(|v| v.to_string()))
                .ok()
        })
    }

    /// A transport from any name → value lookup (the variables of [`from_env`]).
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    ///
    /// [`from_env`]: Self::from_env
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        RestTransportBuilder::from_lookup(lookup)?.build()
    }

    /// The REST URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// HTTP requests sent so far (one per `exec`, one per `pipeline`).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    fn arg_encoding(&self, cmds: &[Cmd]) -> Encoding {
        if self.inner.base64_args && rest::needs_base64_args(cmds) {
            Encoding::Base64
        } else {
            Encoding::Text
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::new(
                ErrorKind::Closed,
                "the REST transport was closed; build a new one",
            ));
        }
        Ok(())
    }

    fn headers(&self, args: Encoding) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("authorization", format!("Bearer {}", self.inner.token)),
            ("content-type", "application/json".to_owned()),
            (rest::RESPONSE_ENCODING_HEADER, rest::BASE64.to_owned()),
        ];
        if args == Encoding::Base64 {
            headers.push((rest::ARG_ENCODING_HEADER, rest::BASE64.to_owned()));
        }
        if let Some(t) = self.inner.sync_token.lock().clone() {
            headers.push((rest::SYNC_TOKEN_HEADER, t));
        }
        headers
    }

    fn keep_sync_token(&self, token: Option<&String>) {
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            *self.inner.sync_token.lock() = Some(t.clone());
        }
    }

    async fn send(
        &self,
        path: &str,
        body: Vec<u8>,
        args: Encoding,
    ) -> Result<HttpResponse, TransportError> {
        self.check_open()?;
        let request = HttpRequest {
            url: format!("{}/{path}", self.inner.base),
            headers: self.headers(args),
            body,
            timeout: self.inner.timeout,
        };
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let response = self.inner.client.post(request).await?;
        self.keep_sync_token(response.sync_token.as_ref());
        Ok(response)
    }

    /// A subscription to `name`: on this transport's open stream of it, or on a new one
    /// (`POST /subscribe/{name}`, `/psubscribe/…`), in place once its response's headers
    /// are in (the server subscribes before it answers).
    async fn open_subscription(
        &self,
        pattern: bool,
        name: &[u8],
    ) -> Result<BoxSubscription, TransportError> {
        self.check_open()?;
        if !self.supports_pubsub() {
            return Err(pubsub_unsupported(name));
        }
        let topic = (pattern, Bytes::copy_from_slice(name));
        self.inner
            .subscriptions
            .subscribe(topic, || self.open_stream(pattern, name))
            .await
    }

    async fn open_stream(
        &self,
        pattern: bool,
        name: &[u8],
    ) -> Result<Pin<Box<dyn ByteStream>>, TransportError> {
        let mut headers = self.headers(Encoding::Text);
        headers.push(("accept", "text/event-stream".to_owned()));
        headers.push((rest::PUBSUB_ENCODING_HEADER, rest::BASE64.to_owned()));
        let request = HttpRequest {
            url: format!(
                "{}/{}",
                self.inner.base,
                rest::subscribe_path(pattern, name)
            ),
            headers,
            body: b"[]".to_vec(),
            timeout: self.inner.timeout,
        };
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let response = self.inner.client.open(request).await?;
        self.keep_sync_token(response.sync_token.as_ref());
        match response.status {
            200..=299 => Ok(response.body),
            // No such endpoint (Upstash, an older gateway), or refused by the server's
            // policy: no later subscription would do better.
            400 | 404 | 405 => {
                self.inner.no_pubsub.store(true, Ordering::Release);
                Err(pubsub_unsupported(name))
            }
            status => Err(status_error(status, b"")),
        }
    }
}

/// The transport error for a response whose status says the request as a whole failed.
pub(crate) fn status_error(status: u16, body: &[u8]) -> TransportError {
    let detail = rest::error_text(body).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        text.trim().to_owned()
    });
    let (kind, hint) = match status {
        401 | 403 => (
            ErrorKind::Auth,
            "check the token (UPSTASH_REDIS_REST_TOKEN, or the gateway's token)",
        ),
        413 => (
            ErrorKind::Refused,
            "the request body is larger than the server accepts; store smaller values or raise \
             the gateway's body limit",
        ),
        408 | 504 => (
            ErrorKind::Timeout,
            "the server or its Redis did not answer in time",
        ),
        429 => (ErrorKind::Unavailable, "rate limited; retry later"),
        500..=599 => (
            ErrorKind::Unavailable,
            "the server or its Redis is unavailable; retry later",
        ),
        400..=499 => (
            ErrorKind::Refused,
            "the server refused the request; check the REST URL",
        ),
        _ => (
            ErrorKind::Protocol,
            "unexpected HTTP status; check the REST URL",
        ),
    };
    TransportError::new(kind, format!("HTTP {status}: {detail} ({hint})"))
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl Transport for RestTransport {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        let args = self.arg_encoding(std::slice::from_ref(&cmd));
        let body = rest::encode_command(&cmd, args)?;
        let response = self.send("", body, args).await?;
        match response.status {
            // A command Redis rejected is HTTP 400 with {"error": "<Redis's text>"}: in band.
            200..=299 | 400 => match rest::decode_reply(&response.body, Encoding::Base64) {
                Ok(value) => Ok(value),
                Err(_) if response.status == 400 => {
                    Err(status_error(response.status, &response.body))
                }
                Err(e) => Err(e),
            },
            status => Err(status_error(status, &response.body)),
        }
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let args = self.arg_encoding(&cmds);
        let body = rest::encode_pipeline(&cmds, args)?;
        let response = self.send("pipeline", body, args).await?;
        match response.status {
            200..=299 => rest::decode_pipeline_reply(&response.body, Encoding::Base64, cmds.len()),
            status => Err(status_error(status, &response.body)),
        }
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }

    /// True when the HTTP client streams responses ([`HttpClient::streams`]: `ReqwestClient`
    /// does, `FetchClient` does not) and the server has not refused a subscription.
    fn supports_pubsub(&self) -> bool {
        self.inner.client.streams() && !self.inner.no_pubsub.load(Ordering::Acquire)
    }

    /// `POST {url}/subscribe/{channel}`: the server's event stream of the channel's
    /// messages (`larder gateway` serves it; a server that answers 400, 404 or 405 makes this and
    /// every later subscription fail at once with kind
    /// [`Refused`](ErrorKind::Refused), and waiters poll). Each subscription is one HTTP
    /// request held open; it ends (`None`) when the stream does.
    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.open_subscription(false, channel).await
    }

    /// `POST {url}/psubscribe/{pattern}`, as [`subscribe`](Transport::subscribe).
    async fn psubscribe(&self, pattern: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.open_subscription(true, pattern).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_core::{Commands, SetOptions};
    use std::collections::VecDeque;
    use std::task::{Context, Poll};

    /// Answers every request from a closure and records what was sent.
    #[derive(Debug, Default)]
    struct Fake {
        sent: Mutex<Vec<HttpRequest>>,
        replies: Mutex<Vec<HttpResponse>>,
    }

    impl Fake {
        fn with(replies: Vec<HttpResponse>) -> Arc<Self> {
            Arc::new(Fake {
                sent: Mutex::new(Vec::new()),
                replies: Mutex::new(replies.into_iter().rev().collect()),
            })
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for Arc<Fake> {
        async fn post(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
            self.sent.lock().push(request);
            self.replies.lock().pop().ok_or_else(|| {
                TransportError::new(ErrorKind::Io, "connection refused (no more fake replies)")
            })
        }
    }

    fn ok(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status, None, Bytes::copy_from_slice(body.as_bytes()))
    }

    fn transport(fake: &Arc<Fake>) -> RestTransport {
        RestTransport::builder("https://example.test/redis/", "s3cret")
            .client(fake.clone())
            .build()
            .unwrap()
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures_executor::block_on(f)
    }

    /// Opens every stream with `status` and a body of `chunks`, then its end.
    #[derive(Debug)]
    struct StreamFake {
        status: u16,
        chunks: Vec<&'static [u8]>,
        sent: Mutex<Vec<HttpRequest>>,
    }

    struct Chunks(VecDeque<Bytes>);

    impl futures_util::Stream for Chunks {
        type Item = Result<Bytes, TransportError>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for Arc<StreamFake> {
        async fn post(&self, _: HttpRequest) -> Result<HttpResponse, TransportError> {
            unreachable!("subscriptions only")
        }
        fn streams(&self) -> bool {
            true
        }
        async fn open(&self, request: HttpRequest) -> Result<crate::HttpStream, TransportError> {
            self.sent.lock().push(request);
            let body = Chunks(self.chunks.iter().map(|c| Bytes::from_static(c)).collect());
            Ok(crate::HttpStream::new(
                self.status,
                Some("7".into()),
                Box::pin(body),
            ))
        }
    }

    fn streaming(status: u16, chunks: Vec<&'static [u8]>) -> (Arc<StreamFake>, RestTransport) {
        let fake = Arc::new(StreamFake {
            status,
            chunks,
            sent: Mutex::new(Vec::new()),
        });
        let t = RestTransport::builder("https://gw.test/", "s3cret")
            .client(fake.clone())
            .build()
            .unwrap();
        (fake, t)
    }

    #[test]
    fn a_subscription_reads_frames_split_anywhere_and_ends_with_the_stream() {
        use larder_core::transport::next_message;
        // "message,<b64 a/b>,<b64 \n\x00>" cut mid-frame, a keep-alive, a pmessage, garbage.
        let (fake, t) = streaming(
            200,
            vec![
                b"data: subscribe,YS9i,1\n\ndata: mess",
                b"age,YS9i,CgA=\n",
                b"\n: keepalive\n\ndata: nonsense\n\n",
                b"data: pmessage,YSo=,YS9j,eA==\n\n",
            ],
        );
        assert!(t.supports_pubsub());
        let mut sub = block(t.subscribe(b"a/b")).unwrap();
        let m = block(next_message(&mut sub)).unwrap();
        assert_eq!(
            (&m.channel[..], &m.payload[..]),
            (&b"a/b"[..], &b"\n\x00"[..])
        );
        let m = block(next_message(&mut sub)).unwrap();
        assert_eq!((&m.channel[..], &m.payload[..]), (&b"a/c"[..], &b"x"[..]));
        assert!(
            block(next_message(&mut sub)).is_none(),
            "ends with the stream"
        );
        let sent = fake.sent.lock();
        assert_eq!(sent[0].url, "https://gw.test/subscribe/a%2Fb");
        assert_eq!(sent[0].body, b"[]");
        let header = |n: &str| {
            sent[0]
                .headers
                .iter()
                .find(|(h, _)| *h == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("authorization").as_deref(), Some("Bearer s3cret"));
        assert_eq!(
            header(rest::PUBSUB_ENCODING_HEADER).as_deref(),
            Some("base64")
        );
        assert_eq!(
            t.inner.sync_token.lock().as_deref(),
            Some("7"),
            "the token moves"
        );
    }

    #[test]
    fn subscribers_of_one_channel_share_one_stream_until_the_last_leaves() {
        use larder_core::transport::next_message;
        let (fake, t) = streaming(
            200,
            vec![
                b"data: subscribe,Yw==,1\n\n",
                b"data: message,Yw==,eA==\n\n",
            ],
        );
        let mut subs: Vec<_> = (0..100)
            .map(|_| block(t.subscribe(b"c")).unwrap())
            .collect();
        assert_eq!(fake.sent.lock().len(), 1, "one request for 100 subscribers");
        // Every subscriber gets the message, whichever polled the stream.
        for sub in subs.iter_mut().rev() {
            let m = block(next_message(sub)).unwrap();
            assert_eq!(&m.payload[..], b"x");
        }
        // Another topic is another stream.
        let _other = block(t.psubscribe(b"c*")).unwrap();
        assert_eq!(fake.sent.lock().len(), 2);
        // The stream ended (the fake's body is over): every subscriber sees the end, and the
        // next subscription opens a new stream.
        for sub in &mut subs {
            assert!(block(next_message(sub)).is_none());
        }
        let _again = block(t.subscribe(b"c")).unwrap();
        assert_eq!(fake.sent.lock().len(), 3);
    }

    #[test]
    fn a_server_without_subscriptions_is_asked_once_then_waiters_poll() {
        let (fake, t) = streaming(404, vec![]);
        let err = block(t.psubscribe(b"p:*")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert!(!t.supports_pubsub());
        assert_eq!(
            block(t.subscribe(b"c")).unwrap_err().kind(),
            ErrorKind::Refused
        );
        assert_eq!(fake.sent.lock().len(), 1, "no second request");
        assert_eq!(fake.sent.lock()[0].url, "https://gw.test/psubscribe/p:%2A");
        // A transient refusal (the server's cap) is an error, and the next one asks again.
        let (fake, t) = streaming(503, vec![]);
        assert_eq!(
            block(t.subscribe(b"c")).unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        assert!(t.supports_pubsub());
        let _ = block(t.subscribe(b"c"));
        assert_eq!(fake.sent.lock().len(), 2);
        // Turned off: never asked.
        let fake = Arc::new(StreamFake {
            status: 200,
            chunks: vec![],
            sent: Mutex::new(Vec::new()),
        });
        let t = RestTransport::builder("https://gw.test/", "s3cret")
            .client(fake.clone())
            .subscriptions(false)
            .build()
            .unwrap();
        assert!(!t.supports_pubsub());
        assert_eq!(
            block(t.subscribe(b"c")).unwrap_err().kind(),
            ErrorKind::Refused
        );
        assert!(fake.sent.lock().is_empty());
    }

    #[test]
    fn one_command_is_one_post_to_the_base_url() {
        let fake = Fake::with(vec![ok(200, r#"{"result":"dg=="}"#)]);
        let t = transport(&fake);
        assert_eq!(block(t.get(b"k")).unwrap().as_deref(), Some(&b"v"[..]));
        let sent = fake.sent.lock();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].url, "https://example.test/redis/");
        assert_eq!(sent[0].body, br#"["GET","k"]"#);
        let header = |n: &str| {
            sent[0]
                .headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("authorization"), Some("Bearer s3cret"));
        assert_eq!(header("upstash-encoding"), Some("base64"));
        assert_eq!(header("larder-arg-encoding"), None);
        assert_eq!(t.requests(), 1);
    }

    #[test]
    fn trailing_slash_or_not_gives_the_same_urls() {
        for base in ["http://h:1", "http://h:1/", "http://h:1//"] {
            let fake = Fake::with(vec![ok(200, r#"[{"result":1}]"#)]);
            let t = RestTransport::builder(base, "t")
                .client(fake.clone())
                .build()
                .unwrap();
            block(t.pipeline(vec![Cmd::new("INCR").arg("x")])).unwrap();
            assert_eq!(fake.sent.lock()[0].url, "http://h:1/pipeline");
        }
    }

    #[test]
    fn pipeline_errors_stay_in_band() {
        let fake = Fake::with(vec![ok(
            200,
            r#"[{"result":"T0s="},{"error":"WRONGTYPE Operation against a key holding the wrong kind of value"},{"result":null}]"#,
        )]);
        let t = transport(&fake);
        let replies = block(t.pipeline(vec![
            Cmd::new("SET").arg("a").arg("1"),
            Cmd::new("INCR").arg("h"),
            Cmd::new("GET").arg("z"),
        ]))
        .unwrap();
        assert!(replies[0].is_ok());
        assert_eq!(
            replies[1].as_error(),
            Some("WRONGTYPE Operation against a key holding the wrong kind of value")
        );
        assert!(replies[2].is_nil());
    }

    #[test]
    fn a_rejected_single_command_is_an_in_band_error() {
        let fake = Fake::with(vec![ok(
            400,
            r#"{"error":"ERR value is not an integer or out of range"}"#,
        )]);
        let t = transport(&fake);
        let v = block(t.exec(Cmd::new("INCR").arg("s"))).unwrap();
        assert_eq!(
            v.as_error(),
            Some("ERR value is not an integer or out of range")
        );
    }

    #[test]
    fn http_failures_map_to_kinds() {
        for (status, kind) in [
            (401, ErrorKind::Auth),
            (403, ErrorKind::Auth),
            (413, ErrorKind::Refused),
            (404, ErrorKind::Refused),
            (429, ErrorKind::Unavailable),
            (502, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
            (504, ErrorKind::Timeout),
        ] {
            let fake = Fake::with(vec![ok(status, r#"{"error":"nope"}"#)]);
            let err = block(transport(&fake).exec(Cmd::new("PING"))).unwrap_err();
            assert_eq!(err.kind(), kind, "HTTP {status}");
            assert!(err.message().contains("nope"), "{err}");
            assert!(!err.message().contains("s3cret"));
        }
        // 400 that is not the dialect (a proxy's HTML page) is not a Redis error.
        let fake = Fake::with(vec![ok(400, "<html>bad request</html>")]);
        let err = block(transport(&fake).exec(Cmd::new("PING"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        // 200 with something else is a protocol error.
        let fake = Fake::with(vec![ok(200, "<html>")]);
        let err = block(transport(&fake).exec(Cmd::new("PING"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        // No response at all: the client's error as is.
        let fake = Fake::with(vec![]);
        let err = block(transport(&fake).exec(Cmd::new("PING"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.is_retryable());
    }

    #[test]
    fn binary_arguments_need_opt_in() {
        let value = Bytes::from_static(&[0, 159, 146, 150]);
        let fake = Fake::with(vec![]);
        let err = block(transport(&fake).set(b"k", &value, SetOptions::default())).unwrap_err();
        assert_eq!(err.transport_kind(), Some(ErrorKind::Refused));
        assert!(fake.sent.lock().is_empty(), "nothing was sent");

        let fake = Fake::with(vec![ok(200, r#"{"result":"T0s="}"#)]);
        let t = RestTransport::builder("http://gw", "t")
            .base64_args(true)
            .client(fake.clone())
            .build()
            .unwrap();
        assert!(block(t.set(b"k", &value, SetOptions::default())).unwrap());
        let sent = fake.sent.lock();
        assert_eq!(sent[0].body, br#"["SET","aw==","AJ+Slg=="]"#);
        assert!(
            sent[0]
                .headers
                .contains(&("larder-arg-encoding", "base64".into()))
        );
    }

    #[test]
    fn sync_token_is_sent_back() {
        let mut first = ok(200, r#"{"result":1}"#);
        first.sync_token = Some("42".into());
        let fake = Fake::with(vec![first, ok(200, r#"{"result":1}"#)]);
        let t = transport(&fake);
        block(t.exec(Cmd::new("INCR").arg("a"))).unwrap();
        block(t.exec(Cmd::new("INCR").arg("a"))).unwrap();
        let sent = fake.sent.lock();
        assert!(
            !sent[0]
                .headers
                .iter()
                .any(|(n, _)| *n == "upstash-sync-token")
        );
        assert!(
            sent[1]
                .headers
                .contains(&("upstash-sync-token", "42".into()))
        );
    }

    #[test]
    fn config_errors_say_what_to_set() {
        let err = RestTransport::from_lookup(|_| None).unwrap_err();
        assert!(err.to_string().contains(URL_ENV), "{err}");
        let err = RestTransport::builder("redis://h:6379", "t")
            .client(Fake::with(vec![]))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        let err = RestTransport::builder("https://h", " ")
            .client(Fake::with(vec![]))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(TOKEN_ENV), "{err}");
        let t = RestTransport::from_lookup(|n| match n {
            URL_ENV => Some("https://h/".into()),
            TOKEN_ENV => Some("tok".into()),
            BASE64_ARGS_ENV => Some("1".into()),
            _ => None,
        });
        // Without a client feature the default client may be missing; the values parse.
        if let Ok(t) = t {
            assert_eq!(t.url(), "https://h");
            assert!(t.inner.base64_args);
            assert!(
                !format!("{t:?}").contains("tok"),
                "the token never shows in Debug"
            );
        }
        // The builder reads the same variables without needing a client; the flag in any
        // case.
        for (flag, on) in [("TRUE", true), (" yes ", true), ("0", false), ("no", false)] {
            let b = RestTransportBuilder::from_lookup(|n| match n {
                URL_ENV => Some("https://h/".into()),
                TOKEN_ENV => Some("tok".into()),
                BASE64_ARGS_ENV => Some(flag.into()),
                _ => None,
            })
            .unwrap();
            assert_eq!(b.base64_args, on, "{flag:?}");
        }
        let missing =
            RestTransportBuilder::from_lookup(|n| (n == URL_ENV).then(|| "https://h".into()));
        assert!(missing.unwrap_err().to_string().contains(TOKEN_ENV));
    }

    #[test]
    fn closed_transport_refuses_calls() {
        let fake = Fake::with(vec![]);
        let t = transport(&fake);
        block(t.close()).unwrap();
        let err = block(t.exec(Cmd::new("PING"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
    }
}
