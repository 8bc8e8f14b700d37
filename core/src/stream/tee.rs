//! One upstream stream shared by every caller that asked for it: the leader's upstream is
//! parsed into events as it arrives, buffered from the first event, recorded for the
//! cache, and handed to each attached consumer at its own pace.
//!
//! Core cannot spawn, so nothing runs in the background: whichever consumer polls drives
//! the upstream (and the lease's keep-alive, and the final store). The upstream is polled
//! with a waker that wakes every waiting consumer, so a consumer that stops reading (a slow
//! client) never holds the others back, and a consumer that goes away does not cancel the
//! stream while others are attached. When the last consumer is dropped before the end, the
//! upstream is dropped with it (the model call is cancelled) and nothing is stored.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

use crate::clock::SharedClock;
use crate::runtime::{BoxFuture, FanOutWaker};

use super::remote::EndMark;
use super::{Event, Format, Recorder, SseParser, StreamError, Summary, UpstreamError};

/// The upstream's body: SSE bytes, failing with the upstream's own error.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;
/// The upstream's body: SSE bytes, failing with the upstream's own error.
#[cfg(target_arch = "wasm32")]
pub(crate) type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>>>>;

/// What the stream ended as, for the cache.
pub(crate) enum Outcome {
    /// The format's terminal event arrived, nothing failed and the stream stayed within the
    /// size limit: store it.
    Complete {
        events: Vec<Event>,
        format: Format,
        summary: Box<Summary>,
    },
    /// Anything else; the reason is logged.
    NotStored(&'static str),
}

/// Runs once when the stream ends (store, release the lease, forget the flight).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type OnEnd = Box<dyn FnOnce(Outcome) -> BoxFuture<'static, ()> + Send>;
/// Runs once when the stream ends (store, release the lease, forget the flight).
#[cfg(target_arch = "wasm32")]
pub(crate) type OnEnd = Box<dyn FnOnce(Outcome) -> BoxFuture<'static, ()>>;

/// Publishes events (and, at the end, how the stream ended) for followers in other
/// processes; one call's future finishes before the next call.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Publish =
    Box<dyn FnMut(Vec<Event>, Option<EndMark>) -> BoxFuture<'static, ()> + Send>;
/// Publishes events (and, at the end, how the stream ended) for followers in other
/// processes; one call's future finishes before the next call.
#[cfg(target_arch = "wasm32")]
pub(crate) type Publish = Box<dyn FnMut(Vec<Event>, Option<EndMark>) -> BoxFuture<'static, ()>>;

/// The shared stream.
pub(crate) struct Tee {
    state: Mutex<State>,
    wakers: Arc<FanOutWaker>,
}

impl fmt::Debug for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Tee")
            .field("events", &(st.base + st.events.len()))
            .field("bytes", &st.total)
            .field("ended", &st.end.is_some())
            .finish_non_exhaustive()
    }
}

enum End {
    /// Ended as the upstream ended it (stored or not, a clean end for consumers).
    Done,
    /// Consumers get this error after the events they have not read yet.
    Failed(StreamError),
}

struct State {
    upstream: Option<Upstream>,
    keep_alive: Option<BoxFuture<'static, ()>>,
    on_end: Option<OnEnd>,
    finishing: Option<BoxFuture<'static, ()>>,
    publish: Option<Publish>,
    /// Events not yet handed to `publish`.
    unpublished: Vec<Event>,
    publishing: Option<BoxFuture<'static, ()>>,
    parser: SseParser,
    recorder: Option<Recorder>,
    parsed: Vec<Event>,
    /// Buffered events; `events[0]` is event number `base`.
    events: VecDeque<Event>,
    base: usize,
    /// Encoded bytes of `events`.
    retained: usize,
    /// Bytes received from the upstream.
    total: usize,
    limit: usize,
    /// False once the stream passed the size limit: it will not be stored, joined or kept
    /// whole any more.
    within_limit: bool,
    end: Option<End>,
    /// Each consumer's next event number (`None`: gone).
    cursors: Vec<Option<usize>>,
    started_ms: Option<u64>,
    clock: SharedClock,
}

/// Settings of one shared stream.
pub(crate) struct TeeOptions {
    /// The format when the caller knows it; else detected from the first event.
    pub(crate) format: Option<Format>,
    /// Bytes after which the stream is no longer recorded.
    pub(crate) limit: usize,
    pub(crate) clock: SharedClock,
    /// Polled while the upstream is live (extends the lease); never completes.
    pub(crate) keep_alive: Option<BoxFuture<'static, ()>>,
    pub(crate) on_end: OnEnd,
    /// Where events go for followers in other processes, if anywhere.
    pub(crate) publish: Option<Publish>,
}

impl Tee {
    pub(crate) fn new(upstream: Upstream, options: TeeOptions) -> Arc<Self> {
        Arc::new(Tee {
            state: Mutex::new(State {
                upstream: Some(upstream),
                keep_alive: options.keep_alive,
                on_end: Some(options.on_end),
                finishing: None,
                publish: options.publish,
                unpublished: Vec::new(),
                publishing: None,
                parser: SseParser::new(),
                recorder: options.format.map(Recorder::new),
                parsed: Vec::new(),
                events: VecDeque::new(),
                base: 0,
                retained: 0,
                total: 0,
                limit: options.limit,
                within_limit: true,
                end: None,
                cursors: Vec::new(),
                started_ms: None,
                clock: options.clock,
            }),
            wakers: Arc::new(FanOutWaker::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is a single
        // push or assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new consumer reading from the first event, or `None` when the stream can no longer
    /// be joined whole (it failed, or it passed the size limit and dropped events).
    pub(crate) fn attach(self: &Arc<Self>) -> Option<Consumer> {
        let mut st = self.lock();
        if matches!(st.end, Some(End::Failed(_))) || st.base > 0 || !st.within_limit {
            return None;
        }
        let id = match st.cursors.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                st.cursors.push(None);
                st.cursors.len() - 1
            }
        };
        st.cursors[id] = Some(0);
        Some(Consumer {
            tee: self.clone(),
            id,
            pos: 0,
            done: false,
        })
    }

    /// Whether a new caller may attach.
    pub(crate) fn joinable(&self) -> bool {
        let st = self.lock();
        !matches!(st.end, Some(End::Failed(_))) && st.base == 0 && st.within_limit
    }

    fn poll_event(
        &self,
        id: usize,
        pos: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Event, StreamError>>> {
        let mut st = self.lock();
        loop {
            if *pos < st.base {
                // Fell behind a stream that passed the size limit.
                return Poll::Ready(Some(Err(StreamError::Lagged)));
            }
            if let Some(ev) = st.events.get(*pos - st.base).cloned() {
                *pos += 1;
                st.cursors[id] = Some(*pos);
                st.trim();
                return Poll::Ready(Some(Ok(ev)));
            }
            self.wakers.register(id as u64, cx.waker());
            let waker = Waker::from(self.wakers.clone());
            let mut shared_cx = Context::from_waker(&waker);
            if st.end.is_some() {
                // The end is given out only once the store, the lease's release and the
                // last publication are done, so a caller that saw the end and asks again
                // finds the entry (or a free lease).
                if let Some(f) = st.finishing.as_mut() {
                    if f.as_mut().poll(&mut shared_cx).is_pending() {
                        return Poll::Pending;
                    }
                    st.finishing = None;
                    self.wakers.wake_all();
                }
                let item = match &st.end {
                    Some(End::Failed(e)) => Some(Err(e.clone())),
                    _ => None,
                };
                drop(st);
                self.wakers.unregister(id as u64);
                return Poll::Ready(item);
            }
            if let Some(k) = st.keep_alive.as_mut() {
                let _ = k.as_mut().poll(&mut shared_cx);
            }
            st.pump_publish(&mut shared_cx);
            let Some(upstream) = st.upstream.as_mut() else {
                unreachable!("the upstream is only taken when the stream ends");
            };
            match upstream.as_mut().poll_next(&mut shared_cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    let before = st.base + st.events.len();
                    st.ingest(&bytes);
                    if st.base + st.events.len() > before || st.end.is_some() {
                        self.wakers.wake_all();
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    st.fail(StreamError::Upstream(e), "the upstream failed");
                    self.wakers.wake_all();
                }
                Poll::Ready(None) => {
                    st.upstream_ended();
                    self.wakers.wake_all();
                }
            }
        }
    }

    fn detach(&self, id: usize) {
        self.wakers.unregister(id as u64);
        let mut st = self.lock();
        if let Some(c) = st.cursors.get_mut(id) {
            *c = None;
        }
        st.trim();
    }
}

impl State {
    fn ingest(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len());
        let mut parsed = std::mem::take(&mut self.parsed);
        let pushed = self.parser.push(bytes, &mut parsed);
        for mut ev in parsed.drain(..) {
            let now = self.clock.now_ms();
            ev.t = now.saturating_sub(*self.started_ms.get_or_insert(now));
            let recorder = self
                .recorder
                .get_or_insert_with(|| Recorder::new(Format::detect(&ev)));
            recorder.push(&ev);
            if self.publish.is_some() {
                self.unpublished.push(ev.clone());
            }
            self.retained += ev.encoded_len();
            self.events.push_back(ev);
        }
        self.parsed = parsed;
        if let Err(e) = pushed {
            self.fail(
                StreamError::Malformed(e),
                "the upstream sent malformed events",
            );
            return;
        }
        if self.within_limit && self.total > self.limit {
            self.within_limit = false;
            // Followers elsewhere cannot be given the rest; tell them, then stop.
            self.unpublished.clear();
            if let Some(mut publish) = self.publish.take() {
                let before = self.publishing.take();
                let mark = publish(Vec::new(), Some(EndMark::TooLarge));
                self.publishing = Some(Box::pin(async move {
                    if let Some(f) = before {
                        f.await;
                    }
                    mark.await;
                }));
            }
            tracing::info!(
                limit = self.limit,
                "a streamed answer passed the size limit; it is passed through, not stored"
            );
        }
        self.trim();
    }

    /// Drops what no consumer needs once the stream can no longer be joined whole; a
    /// consumer that falls more than the size limit behind loses its place.
    fn trim(&mut self) {
        if self.within_limit {
            return;
        }
        let min = self.cursors.iter().flatten().copied().min();
        let keep_from = min.unwrap_or(self.base + self.events.len());
        while self.base < keep_from
            && let Some(ev) = self.events.pop_front()
        {
            self.retained -= ev.encoded_len();
            self.base += 1;
        }
        while self.retained > self.limit
            && let Some(ev) = self.events.pop_front()
        {
            self.retained -= ev.encoded_len();
            self.base += 1;
        }
    }

    fn fail(&mut self, error: StreamError, why: &'static str) {
        if self.end.is_some() {
            return;
        }
        tracing::warn!(%error, "{why}; nothing is stored");
        self.upstream = None;
        self.keep_alive = None;
        self.end = Some(End::Failed(error));
        self.finish(Outcome::NotStored(why));
    }

    fn upstream_ended(&mut self) {
        self.upstream = None;
        self.keep_alive = None;
        if !self.parser.at_boundary() {
            self.fail(StreamError::Cut, "the upstream ended inside an event");
            return;
        }
        let format = self.recorder.as_ref().map(Recorder::format);
        let complete = self.recorder.as_ref().is_some_and(Recorder::is_complete);
        let provider_error = self.recorder.as_ref().and_then(|r| r.error()).is_some();
        let outcome = if provider_error {
            // The provider's error event was passed on as it came; the stream ends as the
            // provider ended it.
            Outcome::NotStored("the provider reported an error in the stream")
        } else if complete && self.within_limit {
            let recorder = self.recorder.take().expect("complete implies a recorder");
            Outcome::Complete {
                events: self.events.iter().cloned().collect(),
                format: recorder.format(),
                summary: Box::new(recorder.into_summary()),
            }
        } else if complete {
            Outcome::NotStored("the stream passed the size limit")
        } else if matches!(format, None | Some(Format::Unknown)) {
            // Without a known format a clean end at an event boundary is all there is to
            // see; pass it on as an end, but never store what cannot be checked.
            Outcome::NotStored("the stream's format is unknown")
        } else {
            self.fail(
                StreamError::Cut,
                "the upstream ended before the format's terminal event",
            );
            return;
        };
        if let Outcome::NotStored(why) = &outcome {
            tracing::debug!("{why}; nothing is stored");
        }
        self.end = Some(End::Done);
        self.finish(outcome);
    }

    /// Hands new events to `publish`, one batch in flight at a time.
    fn pump_publish(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some(f) = self.publishing.as_mut() {
                if f.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.publishing = None;
            }
            match self.publish.as_mut() {
                Some(publish) if !self.unpublished.is_empty() => {
                    self.publishing = Some(publish(std::mem::take(&mut self.unpublished), None));
                }
                _ => return,
            }
        }
    }

    /// Runs, in order: what is still being published, the rest of the events and how the
    /// stream ended, then `on_end` (store, release the lease).
    fn finish(&mut self, outcome: Outcome) {
        let Some(on_end) = self.on_end.take() else {
            return;
        };
        let before = self.publishing.take();
        let mark = match (&self.end, &outcome) {
            (Some(End::Done), _) => EndMark::Done,
            _ => EndMark::Failed,
        };
        let last = self
            .publish
            .take()
            .map(|mut p| p(std::mem::take(&mut self.unpublished), Some(mark)));
        let end = on_end(outcome);
        self.finishing = Some(Box::pin(async move {
            if let Some(f) = before {
                f.await;
            }
            if let Some(f) = last {
                f.await;
            }
            end.await;
        }));
    }
}

/// One caller's view of a [`Tee`]: every event from the first, then the end.
pub(crate) struct Consumer {
    tee: Arc<Tee>,
    id: usize,
    pos: usize,
    done: bool,
}

impl Consumer {
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Event, StreamError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.tee.poll_event(self.id, &mut self.pos, cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.done = true;
        }
        polled
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.tee.detach(self.id);
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("pos", &self.pos)
            .field("done", &self.done)
            .finish()
    }
}
