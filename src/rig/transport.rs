//! [`CachedTransport`]: a rig `Transport` that answers from a [`ResponseCache`].

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt, stream};
use larder_core::Bytes;
use larder_core::compute::{ComputeError, Status};
use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache, Usage};
use larder_core::stream::{Event, Format, Recorder, StreamError, Streamed};
use rig_core::ProviderError;
use rig_core::driver::{Exchange, Model, Opened, Opening, Transport};
use rig_core::wasm_compat::WasmBoxedStream;
use rig_core::wire::{Body, Encoded, Framing, Mode, Wire, WireFrame};
use serde_json::{Map, Value as Json};

/// The member of the hashed request body that names the endpoint and the kind of reply
/// (never sent anywhere: it only separates keys).
const ROUTE_FIELD: &str = "larder_rig";

/// The metadata member of a stored unary reply that holds its frames, when it has other
/// than exactly one (with one, the response text is the frame).
const FRAMES: &str = "rig_frames";

/// A rig `Transport` that answers requests from a [`ResponseCache`] and sends the others
/// through the transport it wraps, recording their replies.
///
/// It serves every wire whose payload is an HTTP request (`Encoded`) and whose reply comes
/// as `WireFrame`s: every HTTP provider of rig-core. Put it under a model with [`cached`],
/// or build it around a transport shared by several models with [`new`](Self::new).
///
/// # Keys
///
/// A request is keyed by larder's request hash ([`LlmRequest::hash`]): the canonical JSON
/// of its body (without the fields that never change an answer, such as `stream` and
/// `user`; see [`EXCLUDED_FIELDS`](larder_core::response::EXCLUDED_FIELDS)), together
/// with the host and path it is sent to and whether the reply is streamed. A body without
/// a `model` (Gemini names the model in its path) is keyed under its path as the model.
/// Headers and the query string are not part of the key (credentials never are): requests
/// of two API keys share answers unless each has its own namespace
/// ([`with_control`](Self::with_control)). Requests that are not a JSON object body
/// (uploads, listings) are sent through uncached.
///
/// # Unary replies
///
/// A reply read whole (`Model::call`) is stored when its frames all arrived and it is not
/// a provider's error (an `error` member in a 2xx body); a hit hands rig the same frames.
///
/// # Streamed replies
///
/// A streamed reply (`Model::stream`) goes through [`ResponseCache::stream_with`]: it is
/// passed to rig as it arrives and stored once it ended with its format's terminal event
/// (OpenAI Chat Completions `[DONE]`, OpenAI Responses `response.completed`, Anthropic
/// `message_stop`) without an error; a hit replays the same frames. Concurrent identical
/// streams share one upstream request, in this process and, over Redis, across processes.
/// Streams in other formats (Gemini, Ollama's NDJSON, …) are passed through and never
/// stored: larder cannot tell a complete one from a cut one.
///
/// rig stops reading a stream at the provider's end, which can come before the stream
/// closes; the recording is stored (and the stream's lease released) when it closes. So
/// the frames from the one that says the provider is done (a finish reason, the terminal
/// event, an error event) are handed to rig once the upstream has closed, and the frames
/// the upstream has ready are always read ahead. A stream that rig stops reading before it
/// closes all the same (the caller dropped it, rig rejected a frame, or rig's end of a
/// stream in another format came before the close) is not stored, and its lease is left to
/// expire: identical streamed requests meanwhile wait for it, as with any reader of
/// [`ResponseCache::stream_with`] that goes away.
///
/// # Errors
///
/// The cache never fails a request: when it cannot be read or written the request goes to
/// the inner transport (and the failure is logged and counted in
/// [`ResponseCache::errors`]). The inner transport's failures reach rig unchanged; callers
/// that joined another's request (`COALESCED`) receive a clone of its failure.
///
/// A hit carries no provider request id (no request was made) and no HTTP status or
/// headers.
#[derive(Clone)]
pub struct CachedTransport<T> {
    inner: T,
    cache: ResponseCache,
    control: CacheControl,
}

impl<T> fmt::Debug for CachedTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedTransport")
            .field("cache", &self.cache)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// Puts `model`'s transport under a [`CachedTransport`] on `cache`: the same wire, its
/// requests answered from the cache.
pub fn cached<W, T>(model: Model<W, T>, cache: &ResponseCache) -> Model<W, CachedTransport<T>> {
    Model::new(
        model.wire,
        CachedTransport::new(model.transport, cache.clone()),
    )
}

impl<T> CachedTransport<T> {
    /// Wraps `inner`, answering from `cache` with the default [`CacheControl`].
    pub fn new(inner: T, cache: ResponseCache) -> Self {
        CachedTransport {
            inner,
            cache,
            control: CacheControl::default(),
        }
    }

    /// The controls every request through this transport is cached with (TTL, namespace,
    /// tags, no-store, …; see [`CacheControl`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for controls the cache would
    /// refuse (a zero TTL, a namespace with spaces, namespaces or tags in go-deep-agent
    /// mode).
    pub fn with_control(mut self, control: CacheControl) -> crate::Result<Self> {
        self.cache.key(&LlmRequest::chat("probe"), &control)?;
        self.control = control;
        Ok(self)
    }

    /// The transport requests go to when the cache cannot answer them.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The cache.
    pub fn cache(&self) -> &ResponseCache {
        &self.cache
    }
}

impl<W, T> Transport<W> for CachedTransport<T>
where
    W: Wire<Payload = Encoded, Frame = WireFrame>,
    T: Transport<W>,
{
    fn send(&self, payload: Encoded, exchange: Exchange) -> Opening<WireFrame> {
        // As rig's HTTP transport decides: a whole reply is read as a unary one is.
        let streamed = exchange.mode == Mode::Streaming && payload.framing != Framing::Whole;
        let Some(request) = cache_request(&payload, streamed) else {
            count(streamed, "bypass");
            return self.inner.send(payload, exchange);
        };
        let this = self.clone();
        if streamed {
            Opening::new(async move { this.stream::<W>(request, payload, exchange).await })
        } else {
            Opening::new(async move { this.unary::<W>(request, payload, exchange).await })
        }
    }
}

/// The payload and exchange of a request until someone sends them: the computation the
/// cache runs on a miss, or this caller when the cache could not be used.
struct Pending(Mutex<Option<(Encoded, Exchange)>>);

impl Pending {
    fn new(payload: Encoded, exchange: Exchange) -> Self {
        Pending(Mutex::new(Some((payload, exchange))))
    }

    fn take(&self) -> Option<(Encoded, Exchange)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A slot the computation leaves this caller's own reply in.
struct Slot<V>(Mutex<Option<V>>);

impl<V> Slot<V> {
    fn new() -> Self {
        Slot(Mutex::new(None))
    }

    fn put(&self, value: V) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
    }

    fn take(&self) -> Option<V> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Why a unary reply was handed on but not stored.
#[derive(Debug, Clone)]
enum NotStored {
    /// The inner transport failed to open the reply.
    Failed(Box<ProviderError>),
    /// The reply failed, is the provider's error or is not text.
    Unstorable(&'static str),
}

impl fmt::Display for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotStored::Failed(e) => write!(f, "the request failed: {e}"),
            NotStored::Unstorable(why) => write!(f, "the reply is not stored: {why}"),
        }
    }
}

impl std::error::Error for NotStored {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NotStored::Failed(e) => Some(&**e),
            NotStored::Unstorable(_) => None,
        }
    }
}

impl<T> CachedTransport<T> {
    async fn unary<W>(
        self,
        request: LlmRequest,
        payload: Encoded,
        exchange: Exchange,
    ) -> Result<Opened<WireFrame>, ProviderError>
    where
        W: Wire<Payload = Encoded, Frame = WireFrame>,
        T: Transport<W>,
    {
        let framing = payload.framing;
        let pending = Pending::new(payload, exchange);
        let own = Slot::new();
        let fetched = self
            .cache
            .try_get_with(&request, &self.control, || async {
                let Some((payload, exchange)) = pending.take() else {
                    return Err(NotStored::Unstorable("the request was already sent"));
                };
                let opened = Transport::<W>::send(&self.inner, payload, exchange)
                    .await
                    .map_err(|e| NotStored::Failed(Box::new(e)))?;
                // A unary reply's body is already in memory: read its frames now, and hand
                // rig the same frames, keeping everything else the transport reported.
                let (opened, frames) = drain(opened).await;
                let recorded = record_unary(&frames);
                own.put(opened.map_frames(move |_| stream::iter(frames)));
                recorded
            })
            .await;
        let reply = match fetched {
            Ok(f) => {
                count(false, f.status.as_str());
                match own.take() {
                    Some(opened) if f.status == Status::Miss => opened,
                    _ => replay_unary(&f.value, framing),
                }
            }
            Err(e) => {
                // This caller's own reply, which was not stored (a failure, an error
                // envelope): rig reads it as the provider sent it.
                if let Some(opened) = own.take() {
                    count(false, "miss");
                    return Ok(opened);
                }
                match e {
                    ComputeError::Compute(e) => match &*e {
                        NotStored::Failed(error) => {
                            count(false, "miss");
                            return Err((**error).clone());
                        }
                        // Joined another caller whose reply could not be stored: ask
                        // ourselves.
                        NotStored::Unstorable(_) => return self.bypass::<W>(&pending).await,
                    },
                    e => {
                        tracing::warn!(error = %e, "larder: the cache could not answer a rig request; sending it");
                        return self.bypass::<W>(&pending).await;
                    }
                }
            }
        };
        Ok(reply)
    }

    // The upstream's error is rig's `ProviderError`, large by rig's choice (rig allows
    // `result_large_err` for it too).
    #[allow(clippy::result_large_err)]
    async fn stream<W>(
        self,
        request: LlmRequest,
        payload: Encoded,
        exchange: Exchange,
    ) -> Result<Opened<WireFrame>, ProviderError>
    where
        W: Wire<Payload = Encoded, Frame = WireFrame>,
        T: Transport<W>,
    {
        let pending = Pending::new(payload, exchange);
        let own = Slot::new();
        let streamed = self
            .cache
            .stream_with(&request, &self.control, || async {
                let Some((payload, exchange)) = pending.take() else {
                    return Err(ProviderError::request("the request was already sent"));
                };
                let opened = Transport::<W>::send(&self.inner, payload, exchange).await?;
                // Keep what the transport reported about the reply (request id, status,
                // observation); its frames go through the cache as server-sent events.
                let mut frames = None;
                let shell = opened.map_frames(|s| {
                    frames = Some(s);
                    stream::empty()
                });
                own.put(shell);
                let frames: WasmBoxedStream<'static, Result<WireFrame, ProviderError>> =
                    frames.unwrap_or_else(|| Box::pin(stream::empty()));
                Ok(frames.map(|frame| frame.map(sse)))
            })
            .await;
        match streamed {
            Ok(s) => {
                let status = s.status();
                count(true, status.as_str());
                let frames = Frames::new(s);
                Ok(match own.take() {
                    Some(shell) if status == Status::Miss => shell.map_frames(|_| frames),
                    _ => Opened::new(frames),
                })
            }
            Err(ComputeError::Compute(e)) => {
                count(true, "miss");
                Err((*e).clone())
            }
            Err(e) => {
                tracing::warn!(error = %e, "larder: the cache could not answer a rig stream; sending it");
                self.bypass::<W>(&pending).await
            }
        }
    }

    /// Sends the request through the inner transport, uncached.
    async fn bypass<W>(&self, pending: &Pending) -> Result<Opened<WireFrame>, ProviderError>
    where
        W: Wire<Payload = Encoded, Frame = WireFrame>,
        T: Transport<W>,
    {
        match pending.take() {
            Some((payload, exchange)) => {
                count(exchange.mode == Mode::Streaming, "bypass");
                Transport::<W>::send(&self.inner, payload, exchange).await
            }
            None => Err(ProviderError::request(
                "larder: the request was sent, but its reply was lost by the cache",
            )),
        }
    }
}

/// The request a payload is cached under, or `None` when it is not cached: a body that is
/// not one JSON object.
fn cache_request(payload: &Encoded, streamed: bool) -> Option<LlmRequest> {
    let Body::Bytes(bytes) = payload.request.body() else {
        return None;
    };
    let Ok(Json::Object(mut body)) = serde_json::from_slice::<Json>(bytes) else {
        return None;
    };
    let uri = payload.request.uri();
    // Host and path, never the query (it may carry a key) or the user info.
    let mut route = String::from(uri.host().unwrap_or_default());
    if let Some(port) = uri.port_u16() {
        route.push_str(&format!(":{port}"));
    }
    route.push_str(uri.path());
    if !matches!(body.get("model"), Some(Json::String(m)) if !m.is_empty()) {
        body.insert("model".into(), Json::String(uri.path().to_owned()));
    }
    let mut member = Map::new();
    member.insert("method".into(), payload.request.method().as_str().into());
    member.insert("route".into(), route.into());
    member.insert(
        "reply".into(),
        if streamed { "stream" } else { "unary" }.into(),
    );
    body.insert(ROUTE_FIELD.into(), Json::Object(member));
    LlmRequest::from_json(Json::Object(body)).ok()
}

/// Reads every frame of a reply; returns the reply (its frames taken out) and the frames.
async fn drain(
    opened: Opened<WireFrame>,
) -> (Opened<WireFrame>, Vec<Result<WireFrame, ProviderError>>) {
    let mut taken = None;
    let opened = opened.map_frames(|s| {
        taken = Some(s);
        stream::empty()
    });
    let frames = match taken {
        Some(s) => s.collect().await,
        None => Vec::new(),
    };
    (opened, frames)
}

/// What a unary reply is stored as: its one frame as the text, or its frames in the
/// metadata; the token counts and the model when the body reports them.
fn record_unary(frames: &[Result<WireFrame, ProviderError>]) -> Result<LlmResponse, NotStored> {
    let mut texts = Vec::with_capacity(frames.len());
    for frame in frames {
        match frame {
            Ok(WireFrame::Text(text)) => texts.push(text.as_str()),
            Ok(WireFrame::Bytes(_)) => return Err(NotStored::Unstorable("a frame is not text")),
            Err(_) => return Err(NotStored::Unstorable("the reply failed")),
        }
    }
    let [text] = texts[..] else {
        let list = texts
            .iter()
            .map(|t| Json::String((*t).to_owned()))
            .collect();
        return Ok(LlmResponse::new("").with_metadata(FRAMES, Json::Array(list)));
    };
    let mut response = LlmResponse::new(text);
    if let Ok(Json::Object(doc)) = serde_json::from_str::<Json>(text) {
        if doc.get("error").is_some_and(|e| !e.is_null()) {
            return Err(NotStored::Unstorable("the body is the provider's error"));
        }
        if let Some(usage) = usage_of(&doc) {
            response = response.with_usage(usage);
        }
        if let Some(model) = ["model", "modelVersion"]
            .iter()
            .find_map(|k| doc.get(*k).and_then(Json::as_str))
        {
            response = response.with_model(model);
        }
    }
    Ok(response)
}

/// Token counts in the shapes the main providers report them.
fn usage_of(doc: &Map<String, Json>) -> Option<Usage> {
    let pair = |obj: &Json, input: &str, output: &str| {
        let i = obj.get(input).and_then(Json::as_u64);
        let o = obj.get(output).and_then(Json::as_u64);
        (i.is_some() || o.is_some()).then(|| Usage::new(i.unwrap_or(0), o.unwrap_or(0)))
    };
    if let Some(u) = doc.get("usage") {
        pair(u, "prompt_tokens", "completion_tokens")
            .or_else(|| pair(u, "input_tokens", "output_tokens"))
    } else {
        doc.get("usageMetadata")
            .and_then(|u| pair(u, "promptTokenCount", "candidatesTokenCount"))
    }
}

/// A stored unary reply, as rig's HTTP transport hands it on: the same frames and, for a
/// body that is one JSON document, that document.
fn replay_unary(response: &LlmResponse, framing: Framing) -> Opened<WireFrame> {
    let frames: Vec<WireFrame> = match response.metadata.get(FRAMES) {
        Some(Json::Array(list)) => list
            .iter()
            .filter_map(Json::as_str)
            .map(|t| WireFrame::Text(t.to_owned()))
            .collect(),
        _ => vec![WireFrame::Text(response.text.clone())],
    };
    let document = match &frames[..] {
        [WireFrame::Text(text)] if framing != Framing::Sse => serde_json::from_str(text).ok(),
        _ => None,
    };
    let opened = Opened::new(stream::iter(frames.into_iter().map(Ok)));
    match document {
        Some(d) => opened.with_document(d),
        None => opened,
    }
}

/// A frame as the server-sent event the cache records: its text is the event's data (rig's
/// SSE framing keeps only the data).
fn sse(frame: WireFrame) -> Bytes {
    Event::data(frame.as_str()).encode()
}

/// The cache's events handed to rig as frames.
///
/// rig stops reading a stream at the provider's end, which may come before the format's
/// terminal event (Anthropic's end is the `message_delta` with a stop reason, before
/// `message_stop`), and a shared stream is stored, and its lease released, only when its
/// upstream closes. So this reads ahead whatever the upstream has ready, and from the event
/// that says the provider is done (a finish reason, the terminal event, an error event) it
/// holds the events back until the upstream has closed: rig then gets them as it would have,
/// after the recording is stored.
struct Frames {
    events: Streamed,
    /// Watches a stream in flight for its end (a replay needs no watching).
    recorder: Option<Recorder>,
    live: bool,
    ahead: VecDeque<Result<WireFrame, ProviderError>>,
    /// How many of the last items of `ahead` wait for the upstream to close.
    held: usize,
    draining: bool,
    done: bool,
}

impl Frames {
    fn new(events: Streamed) -> Self {
        let live = matches!(events.status(), Status::Miss | Status::Coalesced);
        Frames {
            events,
            recorder: None,
            live,
            ahead: VecDeque::new(),
            held: 0,
            draining: false,
            done: false,
        }
    }

    /// Whether `event` says the provider is done: the stream closes soon after it.
    fn ends(&mut self, event: &Event) -> bool {
        if !self.live {
            return false;
        }
        let recorder = self
            .recorder
            .get_or_insert_with(|| Recorder::new(Format::detect(event)));
        recorder.push(event);
        recorder.is_complete()
            || recorder.error().is_some()
            || recorder.summary().finish_reason.is_some()
    }

    fn push(&mut self, item: Result<WireFrame, ProviderError>) {
        self.ahead.push_back(item);
        if self.draining {
            self.held += 1;
        }
    }
}

impl Stream for Frames {
    type Item = Result<WireFrame, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Everything the upstream has ready (to its end, once draining).
        while !this.done {
            match this.events.poll_next_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(event))) => {
                    if !this.draining && this.ends(&event) {
                        this.draining = true;
                    }
                    this.push(Ok(WireFrame::Text(event.data)));
                }
                // The upstream closed without the format's terminal event: nothing was
                // stored, and rig judges the end as its transport would have.
                Poll::Ready(None | Some(Err(StreamError::Cut))) => this.done = true,
                Poll::Ready(Some(Err(e))) => {
                    this.push(Err(provider_error(e)));
                    this.done = true;
                }
            }
        }
        if this.done {
            this.held = 0;
        }
        if this.ahead.len() > this.held
            && let Some(item) = this.ahead.pop_front()
        {
            return Poll::Ready(Some(item));
        }
        if this.done {
            Poll::Ready(None)
        } else {
            // The events stream returned `Pending` and will wake this task.
            Poll::Pending
        }
    }
}

/// The stream's error as rig's: the upstream's own error when it was one, else a
/// transport failure whose source is the cache's.
fn provider_error(error: StreamError) -> ProviderError {
    if let StreamError::Upstream(inner) = &error
        && let Some(e) = inner.downcast_ref::<ProviderError>()
    {
        return e.clone();
    }
    ProviderError::from_transport_error(rig_core::http_client::Error::instance(error))
}

fn count(streamed: bool, status: &'static str) {
    let reply = if streamed { "stream" } else { "unary" };
    metrics::counter!("larder_rig_requests_total", "reply" => reply, "status" => status)
        .increment(1);
    tracing::debug!(reply, status, "larder: rig request");
}
