//! [`ResponseCache::stream_with`]: streamed answers recorded, replayed and shared.

use std::future::Future;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value as Json, json};

use super::stampede::{Got, Leased, Nap};
use super::{Backend, CacheControl, Entry, LlmRequest, LlmResponse, Miss, Mode, ResponseCache};
use super::{Target, Usage, meta, short};
use crate::clock::duration_ms;
use crate::compute::{ComputeError, Listener, Status, event_channel};
use crate::envelope::Envelope;
use crate::stream::Event;
use crate::stream::EventStream;
use crate::stream::UpstreamError;
use crate::stream::remote::{EndMark, Follow, Publisher, follow};
use crate::stream::tee::Publish;
use crate::stream::tee::{Outcome, Tee, TeeOptions, Upstream};
use crate::stream::{Recording, Streamed, Summary};
use crate::transport::SharedTransport;
use crate::transport::{MaybeSend, MaybeSync};
use crate::value::{Cmd, Value};

impl ResponseCache {
    /// Answers a streamed request from the cache, or streams it from the upstream while
    /// recording it.
    ///
    /// `open` starts the upstream call and returns its body: the server-sent events of an
    /// OpenAI Chat Completions, OpenAI Responses or Anthropic Messages stream (detected
    /// from the first event), as byte chunks split anywhere.
    ///
    /// - A fresh entry recorded from a stream is a [HIT](Status::Hit): its events are
    ///   replayed (as fast as the caller reads, or paced with [`CacheControl::pace`]).
    ///   An entry stored from a call that did not stream is a miss for a streaming caller
    ///   (its events cannot be rebuilt byte for byte) and is replaced by the recording.
    /// - Otherwise `open` runs and its events are passed on as they arrive
    ///   ([MISS](Status::Miss)). The recording is stored when the stream ends with the
    ///   format's terminal event (`[DONE]`, `response.completed`/`.incomplete`,
    ///   `message_stop`), within [`max_stream_bytes`](super::ResponseCacheBuilder::max_stream_bytes),
    ///   without an error event; an upstream error, a cut stream, or a stream whose last
    ///   reader went away stores nothing.
    /// - Concurrent identical requests in this process share one upstream stream: they
    ///   attach to it from its first event and read at their own pace
    ///   ([COALESCED](Status::Coalesced)). A reader that goes away does not end the stream
    ///   for the others. Over Redis, identical requests in other processes follow it from
    ///   its first event through a Redis Stream the lease holder publishes (see
    ///   [`publish_streams`](super::ResponseCacheBuilder::publish_streams)); a follower
    ///   whose leader dies ends with [`StreamError::LeaderGone`](crate::stream::StreamError).
    /// - If `open` fails while a recorded entry is inside its stale window (or fresh, with
    ///   [`force_refresh`](CacheControl::force_refresh)), that entry is replayed as
    ///   [STALE](Status::Stale).
    ///
    /// The store (and the lease's release) runs when a reader reaches the end, before that
    /// reader's stream returns `None`.
    ///
    /// # Errors
    ///
    /// [`ComputeError::Compute`] when `open` failed with nothing to fall back to;
    /// [`ComputeError::Cache`] for invalid controls, and for cache failures when the cache
    /// is not [fail-open](super::ResponseCacheBuilder::fail_open). Errors of the stream
    /// itself arrive as its last item ([`StreamError`](crate::stream::StreamError)).
    pub async fn stream_with<F, Fut, S, E>(
        &self,
        request: &LlmRequest,
        control: &CacheControl,
        open: F,
    ) -> Result<Streamed, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<S, E>>,
        S: Stream<Item = Result<Bytes, E>> + MaybeSend + 'static,
        E: std::error::Error + MaybeSend + MaybeSync + 'static,
    {
        let t = self.target(request, control)?;
        let started = self.inner.clock.now_ms();
        let (lookup, lookup_ok) = self.lookup_fail_open(&t, control).await?;
        let generation = lookup.generation;
        let mut fallback = None;
        match lookup.entry {
            Some(Entry::Fresh(e)) if e.stream.is_some() && !control.skips_read() => {
                self.record_hit(&t, &e);
                self.observe("stream_with", &t, Some(Status::Hit), started);
                return Ok(self.replay(e, Status::Hit, control));
            }
            Some(Entry::Fresh(e)) if e.stream.is_some() && control.force_refresh => {
                fallback = Some(e);
            }
            Some(Entry::Stale(e)) if e.stream.is_some() => {
                if !control.skips_read() {
                    self.record_miss(&t);
                }
                if !control.no_cache {
                    fallback = Some(e);
                }
            }
            _ => {
                if !control.skips_read() && lookup_ok {
                    self.record_miss(&t);
                }
            }
        }
        let miss = Miss {
            generation,
            store: !control.skips_write() && lookup_ok && self.inner.mode == Mode::Larder,
            fail_open: self.inner.fail_open,
        };
        let status = |s| {
            self.observe("stream_with", &t, Some(s), started);
            s
        };
        let mut open = Some(open);
        let opened = loop {
            match self
                .share_stream(&t, request, control, miss, &mut open)
                .await
            {
                Ok(Got::Live(tee, joined)) => match tee.attach() {
                    Some(c) => {
                        let s = status(if joined {
                            Status::Coalesced
                        } else {
                            Status::Miss
                        });
                        return Ok(Streamed::live(c, s));
                    }
                    // The shared stream passed its size limit between this caller finding
                    // it and attaching: it cannot be read whole; lead a stream of its own.
                    None if open.is_some() => continue,
                    None => {
                        return Err(ComputeError::Cache(crate::Error::Transport(
                            crate::TransportError::new(
                                crate::ErrorKind::Unavailable,
                                "a new shared stream could not be attached to",
                            ),
                        )));
                    }
                },
                other => break other,
            }
        };
        match opened {
            Ok(Got::Live(..)) => unreachable!("handled above"),
            Ok(Got::Found(e)) => {
                status(Status::Coalesced);
                Ok(self.replay(e, Status::Coalesced, control))
            }
            Ok(Got::Remote(token)) => {
                // A recording another process already finished (its store may still be
                // in flight) is replayed as a HIT; one still streaming is joined.
                let (events, complete) = self.follow(&t, &token).await;
                let s = status(if complete {
                    Status::Hit
                } else {
                    Status::Coalesced
                });
                Ok(Streamed::remote(events, s))
            }
            Ok(Got::Computed(_) | Got::Joined(_)) => {
                unreachable!("stream flights produce streams")
            }
            Err(ComputeError::Compute(err)) => match fallback {
                Some(e) => {
                    tracing::warn!(
                        key = %short(&t.key),
                        "opening the upstream stream failed; replaying the stale answer"
                    );
                    status(Status::Stale);
                    Ok(self.replay(e, Status::Stale, control))
                }
                None => Err(ComputeError::Compute(err)),
            },
            Err(e) => Err(e),
        }
    }

    fn replay(&self, mut e: Envelope, status: Status, control: &CacheControl) -> Streamed {
        let stored_at = e.stored_at_ms();
        let recording = e.stream.take().expect("only recorded entries are replayed");
        let pace = control.pace.map(|cap| (cap, self.inner.clock.clone()));
        Streamed::replay(recording, status, stored_at, pace)
    }

    /// One upstream stream per key among concurrent callers: joins a live one, or leads
    /// (lease, open, share).
    async fn share_stream<F, Fut, S, E>(
        &self,
        t: &Target,
        request: &LlmRequest,
        control: &CacheControl,
        miss: Miss,
        open: &mut Option<F>,
    ) -> Result<Got, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<S, E>>,
        S: Stream<Item = Result<Bytes, E>> + MaybeSend + 'static,
        E: std::error::Error + MaybeSend + MaybeSync + 'static,
    {
        let flight = format!(
            "stream\u{0}{}\u{0}{}{}",
            t.key,
            u8::from(miss.store),
            u8::from(miss.fail_open)
        );
        if let Some(tee) = self.live_stream(&flight) {
            return Ok(Got::Live(tee, true));
        }
        let stampede = &self.inner.stampede;
        stampede
            .coalesce(&flight, open, |open: &mut Option<F>| {
                let flight = flight.clone();
                async move {
                    // A stream that started after this caller looked is joined, not repeated.
                    if let Some(tee) = self.live_stream(&flight) {
                        return Ok(Got::Live(tee, true));
                    }
                    let accepts_cached = !control.skips_read();
                    let recheck = || async move { self.recheck_stream(t, accepts_cached).await };
                    let leased = if miss.store && stampede.has_lease() {
                        stampede
                            .acquire(
                                &self.inner.clock,
                                &t.user,
                                Nap::Every(self.inner.stream_poll),
                                recheck,
                            )
                            .await
                    } else {
                        Leased::Unleased
                    };
                    let held = match leased {
                        Leased::Found(Found::Stored(e)) => return Ok(Got::Found(e)),
                        Leased::Found(Found::Live(token)) => return Ok(Got::Remote(token)),
                        Leased::Held(h) => Some(Arc::new(h)),
                        Leased::Unleased => None,
                    };
                    let open = open.take().expect("a caller leads its flight at most once");
                    let body = match stampede
                        .keep_alive(&self.inner.clock, held.as_deref(), open())
                        .await
                    {
                        Ok(body) => body,
                        Err(e) => {
                            if let Some(h) = held
                                && let Err(e) = h.release().await
                            {
                                self.failed("release lease", &e);
                            }
                            return Err(ComputeError::Compute(Arc::new(e)));
                        }
                    };
                    let upstream: Upstream =
                        Box::pin(body.map(|r| r.map_err(|e| Arc::new(e) as UpstreamError)));
                    let keep_alive = held.clone().map(|h| {
                        let clock = self.inner.clock.clone();
                        let ttl = stampede.lease_ttl();
                        Box::pin(async move { h.keep_alive(&*clock, ttl).await }) as _
                    });
                    let publish = held
                        .as_ref()
                        .and_then(|h| self.publisher(&t.user, h.token()));
                    let this = self.clone();
                    let (t, request, control) = (t.clone(), request.clone(), control.clone());
                    let forget = flight.clone();
                    let on_end = Box::new(move |outcome: Outcome| {
                        Box::pin(async move {
                            if let Outcome::Complete {
                                events,
                                format,
                                summary,
                            } = outcome
                                && miss.store
                            {
                                let recording = Recording::new(format, events);
                                let response = response_of(*summary);
                                if let Err(e) = this
                                    .store_recorded(
                                        &t,
                                        &request,
                                        &control,
                                        &response,
                                        miss.generation,
                                        Some(recording),
                                    )
                                    .await
                                {
                                    this.failed("store", &e);
                                }
                            }
                            if let Some(h) = held
                                && let Err(e) = h.release().await
                            {
                                this.failed("release lease", &e);
                            }
                            this.forget_stream(&forget);
                        }) as _
                    });
                    let tee = Tee::new(
                        upstream,
                        TeeOptions {
                            format: None,
                            limit: self.inner.max_stream_bytes,
                            clock: self.inner.clock.clone(),
                            keep_alive,
                            on_end,
                            publish,
                        },
                    );
                    self.inner
                        .streams
                        .lock()
                        .insert(flight.clone(), Arc::downgrade(&tee));
                    Ok(Got::Live(tee, false))
                }
            })
            .await
    }

    /// Whether streams in flight are published for other processes (Redis, with the lease).
    fn publishes_streams(&self) -> Option<&SharedTransport> {
        match &self.inner.backend {
            Backend::Redis { transport }
                if self.inner.publish_streams && self.inner.stampede.has_lease() =>
            {
                Some(transport)
            }
            _ => None,
        }
    }

    /// While waiting for another process's lease: the answer it stored, or the stream it is
    /// publishing.
    async fn recheck_stream(&self, t: &Target, accepts_cached: bool) -> Option<Found> {
        // The entry and the lease's holder in one round trip (a look costs subrequests on
        // Workers).
        let transport = self.publishes_streams();
        let lock_key = self.inner.keys.scheme().lock_key(&t.user);
        let mut holder = None;
        let extra = transport.map(|_| (Cmd::new("GET").arg(lock_key.as_str()), &mut holder));
        if let Ok(super::Lookup {
            entry: Some(Entry::Fresh(e)),
            ..
        }) = self.lookup_with(t, true, false, extra).await
            && accepts_cached
            && e.stream.is_some()
        {
            return Some(Found::Stored(e));
        }
        let transport = transport?;
        let token = match holder {
            Some(Value::Bulk(b)) => String::from_utf8(b.to_vec()).ok()?,
            _ => return None,
        };
        let live = self.inner.keys.live_key(&t.user, &token);
        let first = Cmd::new("XRANGE")
            .arg(live.as_str())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg("1");
        match transport.exec(first).await {
            Ok(Value::Array(entries)) if !entries.is_empty() => Some(Found::Live(token)),
            _ => None,
        }
    }

    /// Publishes this process's stream under its lease `token`.
    fn publisher(&self, user: &str, token: &str) -> Option<Publish> {
        let transport = self.publishes_streams()?.clone();
        let live = self.inner.keys.live_key(user, token);
        let channel = event_channel(self.inner.keys.scheme(), "lock");
        let user = user.to_owned();
        let lease_ms = duration_ms(self.inner.stampede.lease_ttl())
            .max(1)
            .to_string();
        let mut entries = Publisher {
            live_key: live.clone(),
            keyring: self.inner.keyring.clone(),
            seq: 0,
        };
        Some(Box::new(move |events: Vec<Event>, end: Option<EndMark>| {
            let built: Result<Vec<Cmd>, crate::Error> = (|| {
                let mut cmds = Vec::with_capacity(events.len() + 3);
                for e in &events {
                    cmds.push(entries.event(e)?);
                }
                if let Some(mark) = end {
                    cmds.push(entries.end(mark)?);
                }
                Ok(cmds)
            })();
            let mut cmds = match built {
                Ok(cmds) => cmds,
                Err(e) => {
                    // Followers see the lease lapse without an end: an error, never a
                    // short answer.
                    tracing::warn!(error = %e, "cannot publish a stream for other processes");
                    return Box::pin(async {}) as _;
                }
            };
            // While it runs the stream lives as long as the lease; once ended, long enough
            // for slow followers to finish reading.
            let keep = if end.is_some() {
                ENDED_STREAM_KEEP_MS.to_string()
            } else {
                lease_ms.clone()
            };
            cmds.push(Cmd::new("PEXPIRE").arg(live.as_str()).arg(keep));
            cmds.push(Cmd::new("PUBLISH").arg(channel.as_str()).arg(user.as_str()));
            let transport = transport.clone();
            Box::pin(async move {
                if let Err(e) = transport.pipeline(cmds).await {
                    tracing::warn!(error = %e, "publishing a stream for other processes failed");
                }
            }) as _
        }))
    }

    /// Follows the stream another process publishes under its lease `token`; true when
    /// the first read found it complete.
    async fn follow(&self, t: &Target, token: &str) -> (EventStream, bool) {
        let transport = self
            .publishes_streams()
            .expect("only found where streams are published")
            .clone();
        let listener = match self.inner.stampede.lock() {
            Some(lock) => lock.listen(&t.user),
            None => Listener::polling(),
        };
        follow(Follow {
            transport,
            live_key: self.inner.keys.live_key(&t.user, token),
            lock_key: self.inner.keys.scheme().lock_key(&t.user),
            lock_token: Bytes::from(token.to_owned()),
            listener,
            clock: self.inner.clock.clone(),
            poll: self.inner.stream_poll,
            keyring: self.inner.keyring.clone(),
        })
        .await
    }

    /// A live stream of `flight` that a new caller may join.
    fn live_stream(&self, flight: &str) -> Option<Arc<Tee>> {
        let mut streams = self.inner.streams.lock();
        match streams.get(flight).map(Weak::upgrade) {
            Some(Some(tee)) if tee.joinable() => Some(tee),
            Some(_) => {
                streams.remove(flight);
                None
            }
            None => None,
        }
    }

    fn forget_stream(&self, flight: &str) {
        let mut streams = self.inner.streams.lock();
        streams.remove(flight);
        streams.retain(|_, w| w.strong_count() > 0);
    }
}

/// What a wait for another process's lease found.
enum Found {
    Stored(Envelope),
    /// A stream it publishes under this lease token.
    Live(String),
}

/// How long a finished stream stays readable for followers still reading it.
const ENDED_STREAM_KEEP_MS: u64 = 60_000;

/// The answer a stream amounted to, as the non-streaming API returns it.
fn response_of(s: Summary) -> LlmResponse {
    let mut r = LlmResponse::new(s.text);
    if let Some(model) = s.model {
        r = r.with_model(model);
    }
    if let Some(u) = &s.usage {
        r = r.with_usage(Usage::new(u.input_tokens, u.output_tokens));
        if u.cache_read_tokens > 0 {
            r = r.with_metadata(meta::CACHE_READ_TOKENS, u.cache_read_tokens);
        }
        if u.cache_write_tokens > 0 {
            r = r.with_metadata(meta::CACHE_WRITE_TOKENS, u.cache_write_tokens);
        }
    }
    if let Some(f) = s.finish_reason {
        r = r.with_metadata(meta::FINISH_REASON, f);
    }
    if !s.tool_calls.is_empty() {
        let calls: Vec<Json> = s
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
            .collect();
        r = r.with_metadata(meta::TOOL_CALLS, calls);
    }
    if !s.reasoning.is_empty() {
        r = r.with_metadata(meta::REASONING, s.reasoning);
    }
    r
}
