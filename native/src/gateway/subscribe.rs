//! `POST /subscribe/{channel}` and `POST /psubscribe/{pattern}`: Redis pub/sub as a stream of
//! server-sent events, in the Upstash dialect (frames in [`larder_core::rest::PubSubFrame`]).
//!
//! - Every stream is a subscription on the transport's one pub/sub connection (a
//!   [`RedisTransport`](crate::RedisTransport) opens it on first use, apart from the command
//!   connections, and subscribes each channel once however many streams want it), so a
//!   thousand subscribers cost Redis one connection, not a thousand.
//! - The stream lasts until the client goes away (noticed at the latest at the next
//!   keep-alive comment, every [`KEEPALIVE`]), the subscription ends (the transport was
//!   closed), or the gateway shuts down. Messages are at most once, as in Redis: a message
//!   published while the pub/sub connection is being re-established is lost.
//! - Admission: the same tokens as the other endpoints (read-only tokens may subscribe:
//!   subscribing writes nothing), the policy's deny list (`SUBSCRIBE`, `PSUBSCRIBE`), pattern
//!   globs capped like `MATCH` (Redis matches every pattern against every `PUBLISH`), and at
//!   most [`max_subscriptions`](super::GatewayBuilder::max_subscriptions) streams at once
//!   (past it 503: poll instead).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use larder_core::rest::{self, Encoding, PubSubFrame};
use larder_core::stream::Event;
use larder_core::transport::{BoxSubscription, next_message};

use super::metrics::{Outcome, Route};
use super::{Answer, Shared, authenticate, header_str, timed};

/// How often an idle stream gets a comment line (`: keepalive`): it keeps proxies from
/// closing the connection, and lets the gateway notice a client that went away.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);

pub(crate) async fn post_subscribe(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let Some((pattern, name)) = rest::parse_subscribe_path(parts.uri.path()) else {
        let answer = Answer::error(
            StatusCode::NOT_FOUND,
            "ERR name a channel: POST /subscribe/{channel} or /psubscribe/{pattern}",
            Outcome::NotFound,
        );
        return timed(&shared, Route::Other, std::future::ready(answer)).await;
    };
    let started = std::time::Instant::now();
    let opened = open(&shared, &parts, pattern, &name).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match opened {
        Ok(feed) => {
            shared
                .metrics
                .request(Route::Subscribe, Outcome::Ok, micros);
            let mut response =
                (StatusCode::OK, Body::from_stream(feed.into_stream())).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // nginx and similar proxies buffer responses unless told not to.
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            let token = shared.sync.load(Ordering::Acquire).to_string();
            if let Ok(v) = HeaderValue::try_from(token) {
                headers.insert(rest::SYNC_TOKEN_HEADER, v);
            }
            response
        }
        Err(mut answer) => {
            shared
                .metrics
                .request(Route::Subscribe, answer.outcome, micros);
            answer.sync_token = Some(shared.sync.load(Ordering::Acquire).to_string());
            answer.into_response()
        }
    }
}

/// Admits the request and subscribes.
async fn open(
    shared: &Arc<Shared>,
    parts: &axum::http::request::Parts,
    pattern: bool,
    name: &[u8],
) -> Result<Feed, Answer> {
    authenticate(shared, parts)?;
    if let Err(refusal) = shared.policy.check_subscribe(pattern, name) {
        shared.metrics.denied(1);
        return Err(Answer::error(
            StatusCode::BAD_REQUEST,
            refusal.message(),
            Outcome::RedisError,
        ));
    }
    let slot = Slot::take(shared).ok_or_else(|| {
        Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "ERR this gateway serves at most {} subscriptions at once \
                 (--max-subscriptions); poll instead, or retry later",
                shared.max_subscriptions
            ),
            Outcome::Unavailable,
        )
    })?;
    let subscribed = if pattern {
        shared.transport.psubscribe(name).await
    } else {
        shared.transport.subscribe(name).await
    };
    let sub = subscribed.map_err(|e| Answer::unavailable(&e))?;
    let encoding = Encoding::from_header(header_str(&parts.headers, rest::PUBSUB_ENCODING_HEADER));
    let first = PubSubFrame::Subscribed {
        pattern,
        name: Bytes::copy_from_slice(name),
        count: 1,
    };
    Ok(Feed {
        first: Some(frame(&first, encoding)),
        sub,
        pattern: pattern.then(|| Bytes::copy_from_slice(name)),
        encoding,
        closing: shared.closing.subscribe(),
        _slot: slot,
    })
}

/// One subscriber's place under the cap, given back when the stream ends.
struct Slot(Arc<Shared>);

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let max = shared.max_subscriptions;
        shared
            .subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        shared.metrics.subscriptions(1.0);
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.subscriptions(-1.0);
    }
}

/// What one stream sends.
struct Feed {
    first: Option<Bytes>,
    sub: BoxSubscription,
    /// The pattern, for a `PSUBSCRIBE` stream.
    pattern: Option<Bytes>,
    encoding: Encoding,
    closing: tokio::sync::watch::Receiver<bool>,
    _slot: Slot,
}

fn frame(frame: &PubSubFrame, encoding: Encoding) -> Bytes {
    Event::data(frame.encode(encoding)).encode()
}

impl Feed {
    fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static
    {
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        futures_util::stream::unfold((self, keepalive), |(mut feed, mut keepalive)| async move {
            if let Some(first) = feed.first.take() {
                return Some((Ok(first), (feed, keepalive)));
            }
            let bytes = tokio::select! {
                msg = next_message(&mut feed.sub) => {
                    let msg = msg?;
                    let f = match &feed.pattern {
                        Some(p) => PubSubFrame::PMessage {
                            pattern: p.clone(),
                            channel: msg.channel,
                            payload: msg.payload,
                        },
                        None => PubSubFrame::Message { channel: msg.channel, payload: msg.payload },
                    };
                    frame(&f, feed.encoding)
                }
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                _ = feed.closing.wait_for(|closing| *closing) => return None,
            };
            Some((Ok(bytes), (feed, keepalive)))
        })
    }
}
