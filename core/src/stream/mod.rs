//! Streamed answers: server-sent events parsed, recorded, replayed and shared.
//!
//! [`ResponseCache::stream_with`](crate::ResponseCache::stream_with) answers a streamed
//! request: on a miss it passes the upstream's events to the caller as they arrive and
//! records them; on a hit it replays the recorded events; concurrent identical requests
//! share one upstream stream. This module holds the pieces it is made of, usable on their
//! own:
//!
//! - [`SseParser`] and [`Event`]: server-sent events parsed incrementally and written back
//!   byte for byte;
//! - [`Recorder`]: what a stream says in one of the [`Format`]s agents use (text, tool
//!   calls, reasoning, usage, how it ended);
//! - [`Recording`]: the events a cache entry keeps, and [`Streamed`]: what a caller reads.

mod format;
pub(crate) mod remote;
mod sse;
pub(crate) mod tee;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

pub use format::{Format, Recorder, StreamUsage, Summary, ToolCall};
pub use sse::{Event, SseError, SseParser};

use crate::clock::SharedClock;
use crate::compute::Status;
use crate::runtime::BoxFuture;

/// The default size limit of a recorded stream: a longer stream is passed through but not
/// stored (and no longer joinable).
pub const DEFAULT_MAX_STREAM_BYTES: usize = 4 * 1024 * 1024;

/// A recorded stream, as a cache entry keeps it: the format and every event in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Recording {
    /// The wire format the events are in.
    pub format: Format,
    /// The events, in the order they arrived.
    pub events: Vec<Event>,
}

impl Recording {
    /// A recording of `events` in `format`.
    pub fn new(format: Format, events: Vec<Event>) -> Self {
        Recording { format, events }
    }
}

/// An upstream body's error, shared by every reader of the stream (`Send + Sync` on native
/// targets; JS errors on `wasm32` are neither).
#[cfg(not(target_arch = "wasm32"))]
pub type UpstreamError = Arc<dyn std::error::Error + Send + Sync>;
/// An upstream body's error, shared by every reader of the stream.
#[cfg(target_arch = "wasm32")]
pub type UpstreamError = Arc<dyn std::error::Error>;

/// Why a stream did not end the way its upstream should have.
///
/// Every error is final: a [`Streamed`] ends after yielding one. A caller that forwards
/// the stream (a proxy) should cut its own response rather than end it cleanly, so its
/// client never takes a truncated answer for a complete one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StreamError {
    /// The upstream's body failed; the source is its error.
    Upstream(UpstreamError),
    /// The upstream ended before the format's terminal event (or inside an event): the
    /// answer is incomplete.
    Cut,
    /// The upstream sent bytes that are not server-sent events.
    Malformed(SseError),
    /// This caller read so slowly that the shared stream, past its size limit, dropped
    /// events it had not read yet (or, following a stream in another process, that stream
    /// passed the size limit and was no longer published).
    Lagged,
    /// The stream was being read from another process, which stopped (died, or every one of
    /// its readers went away) before the stream ended: its lease lapsed without an end.
    LeaderGone,
    /// Following a stream in another process, the cache failed.
    Cache(Arc<crate::Error>),
}

/// A boxed stream of events (`Send` on native targets).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<Event, StreamError>> + Send>>;
/// A boxed stream of events.
#[cfg(target_arch = "wasm32")]
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<Event, StreamError>>>>;

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Upstream(e) => write!(f, "the upstream stream failed: {e}"),
            StreamError::Cut => f.write_str(
                "the upstream stream ended before its final event; the answer is incomplete",
            ),
            StreamError::Malformed(e) => write!(f, "the upstream sent malformed events: {e}"),
            StreamError::Lagged => {
                f.write_str("this reader fell too far behind a shared stream past its size limit")
            }
            StreamError::LeaderGone => {
                f.write_str("the process streaming this answer stopped before the stream ended")
            }
            StreamError::Cache(e) => write!(f, "following a shared stream failed: {e}"),
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Upstream(e) => Some(&**e),
            StreamError::Malformed(e) => Some(e),
            StreamError::Cache(e) => Some(&**e),
            StreamError::Cut | StreamError::Lagged | StreamError::LeaderGone => None,
        }
    }
}

/// A streamed answer: its [`Status`] and its events, read as a [`Stream`].
///
/// - [MISS](Status::Miss): this caller's upstream stream, passed on as it arrives;
/// - [COALESCED](Status::Coalesced): another caller's stream still in flight, in this
///   process or another, from its first event (or its stored recording, when it ended
///   while this caller waited);
/// - [HIT](Status::Hit) and [STALE](Status::Stale): a recording replayed.
///
/// Each event is what the upstream sent (event name, id and data byte for byte);
/// [`Event::encode`] gives its wire form. The stream ends cleanly only when the upstream
/// did; otherwise its last item is a [`StreamError`].
pub struct Streamed {
    status: Status,
    stored_at_ms: Option<u64>,
    source: Source,
}

enum Source {
    Live(tee::Consumer),
    Remote(EventStream),
    Replay(Replay),
}

struct Replay {
    events: std::vec::IntoIter<Event>,
    pace: Option<(Duration, SharedClock)>,
    last_t: u64,
    pending: Option<Event>,
    sleep: Option<BoxFuture<'static, ()>>,
}

impl fmt::Debug for Streamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streamed")
            .field("status", &self.status)
            .field("stored_at_ms", &self.stored_at_ms)
            .finish_non_exhaustive()
    }
}

impl Streamed {
    pub(crate) fn live(consumer: tee::Consumer, status: Status) -> Self {
        Streamed {
            status,
            stored_at_ms: None,
            source: Source::Live(consumer),
        }
    }

    pub(crate) fn remote(events: EventStream, status: Status) -> Self {
        Streamed {
            status,
            stored_at_ms: None,
            source: Source::Remote(events),
        }
    }

    /// A replay of `recording`; with `pace`, events are spaced as they arrived, each gap
    /// capped at `pace.0`.
    pub(crate) fn replay(
        recording: Recording,
        status: Status,
        stored_at_ms: Option<u64>,
        pace: Option<(Duration, SharedClock)>,
    ) -> Self {
        Streamed {
            status,
            stored_at_ms,
            source: Source::Replay(Replay {
                events: recording.events.into_iter(),
                pace,
                last_t: 0,
                pending: None,
                sleep: None,
            }),
        }
    }

    /// How the answer was obtained.
    pub fn status(&self) -> Status {
        self.status
    }

    /// When the replayed entry was written (unix ms), for an `Age` header; `None` for a
    /// stream in flight.
    pub fn stored_at_ms(&self) -> Option<u64> {
        self.stored_at_ms
    }
}

impl Stream for Streamed {
    type Item = Result<Event, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().source {
            Source::Live(c) => c.poll_next(cx),
            Source::Remote(s) => s.as_mut().poll_next(cx),
            Source::Replay(r) => r.poll_next(cx),
        }
    }
}

impl Replay {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, StreamError>>> {
        let Some((cap, clock)) = &self.pace else {
            return Poll::Ready(self.events.next().map(Ok));
        };
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
                return Poll::Ready(self.pending.take().map(Ok));
            }
            let Some(ev) = self.events.next() else {
                return Poll::Ready(None);
            };
            let gap = Duration::from_millis(ev.t.saturating_sub(self.last_t)).min(*cap);
            self.last_t = ev.t;
            if gap.is_zero() {
                return Poll::Ready(Some(Ok(ev)));
            }
            let clock = clock.clone();
            self.pending = Some(ev);
            self.sleep = Some(Box::pin(async move { clock.sleep(gap).await }));
        }
    }
}
