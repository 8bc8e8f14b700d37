//! Streamed answers on every transport: replay equality per format, what is never stored,
//! and a stream shared between two instances (as two processes would) through Redis.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use larder::response::{CacheControl, LlmRequest, ResponseCache};
use larder::stream::{Event, StreamError, Streamed};
use larder::{Bytes, RedisCache, Status};

use crate::suite::{Backend, unique_prefix};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../core/tests/fixtures/streams"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}.sse")).expect("fixture")
}

#[derive(Debug)]
struct UpErr(&'static str);

impl std::fmt::Display for UpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UpErr {}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, UpErr>> + Send>>;

/// An upstream that counts its calls and sends `bytes` in 40-byte chunks, `gap` apart,
/// then `tail` (an error) if any.
fn upstream(
    opens: &Arc<AtomicUsize>,
    bytes: &[u8],
    gap: Duration,
    tail: Option<&'static str>,
) -> impl FnOnce() -> std::future::Ready<Result<Body, UpErr>> + Send + use<> {
    let opens = opens.clone();
    let mut chunks: Vec<Result<Bytes, UpErr>> = bytes
        .chunks(40)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if let Some(t) = tail {
        chunks.push(Err(UpErr(t)));
    }
    move || {
        opens.fetch_add(1, Ordering::SeqCst);
        let body = futures_util::stream::iter(chunks).then(move |c| async move {
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            c
        });
        std::future::ready(Ok(Box::pin(body) as Body))
    }
}

fn responses(be: &impl Backend, prefix: &str) -> ResponseCache {
    let redis = RedisCache::builder(be.transport())
        .prefix(prefix)
        .build()
        .unwrap();
    ResponseCache::redis(redis)
        .lease_ttl(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn question(case: &str) -> LlmRequest {
    LlmRequest::chat("gpt-4o-mini").user(format!("stream conformance: {case}"))
}

fn none() -> CacheControl {
    CacheControl::default()
}

async fn drain(mut s: Streamed) -> (Vec<Event>, Option<StreamError>) {
    let mut events = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn wire(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        e.encode_into(&mut out);
    }
    out
}

pub(crate) async fn stream_replay_per_format(be: &impl Backend) {
    let cache = responses(be, &unique_prefix("stream-replay"));
    let opens = Arc::new(AtomicUsize::new(0));
    for name in [
        "openai_chat_text",
        "openai_chat_tools",
        "openai_responses_text",
        "openai_responses_tools",
        "openai_responses_reasoning",
        "anthropic_text",
        "anthropic_tools",
        "anthropic_thinking",
    ] {
        let bytes = fixture(name);
        let q = question(name);
        let first = cache
            .stream_with(&q, &none(), upstream(&opens, &bytes, Duration::ZERO, None))
            .await
            .unwrap();
        assert_eq!(first.status(), Status::Miss, "{name}");
        let (events, err) = drain(first).await;
        assert!(err.is_none(), "{name}: {err:?}");
        assert_eq!(wire(&events), bytes, "{name}: passed through as sent");
        let hit = cache
            .stream_with(&q, &none(), upstream(&opens, &bytes, Duration::ZERO, None))
            .await
            .unwrap();
        assert_eq!(hit.status(), Status::Hit, "{name}");
        let (replayed, err) = drain(hit).await;
        assert!(err.is_none());
        assert_eq!(replayed, events, "{name}: event by event");
        let unary = cache.get(&q, &none()).await.unwrap().expect("a hit");
        assert_eq!(
            unary.status,
            Status::Hit,
            "{name}: served to a caller that does not stream"
        );
    }
    assert_eq!(opens.load(Ordering::SeqCst), 8);
}

pub(crate) async fn stream_failures_store_nothing(be: &impl Backend) {
    let cache = responses(be, &unique_prefix("stream-fail"));
    let opens = Arc::new(AtomicUsize::new(0));
    let chat = fixture("openai_chat_text");
    let cases: [(&str, Vec<u8>, Option<&'static str>); 3] = [
        ("body error", chat[..chat.len() / 2].to_vec(), Some("reset")),
        ("cut", chat[..chat.len() / 2].to_vec(), None),
        ("provider error", fixture("anthropic_error"), None),
    ];
    for (what, bytes, tail) in cases {
        let q = question(what);
        let s = cache
            .stream_with(&q, &none(), upstream(&opens, &bytes, Duration::ZERO, tail))
            .await
            .unwrap();
        let (_, err) = drain(s).await;
        if what != "provider error" {
            assert!(err.is_some(), "{what}: never presented as complete");
        }
        let again = cache
            .stream_with(&q, &none(), upstream(&opens, &chat, Duration::ZERO, None))
            .await
            .unwrap();
        assert_eq!(again.status(), Status::Miss, "{what}: nothing stored");
        drain(again).await;
    }
}

pub(crate) async fn stream_over_the_limit_is_not_stored(be: &impl Backend) {
    let bytes = fixture("anthropic_tools");
    let redis = RedisCache::builder(be.transport())
        .prefix(&unique_prefix("stream-limit"))
        .build()
        .unwrap();
    let cache = ResponseCache::redis(redis)
        .max_stream_bytes(bytes.len() / 3)
        .build()
        .unwrap();
    let opens = Arc::new(AtomicUsize::new(0));
    let q = question("limit");
    let (events, err) = drain(
        cache
            .stream_with(&q, &none(), upstream(&opens, &bytes, Duration::ZERO, None))
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none());
    assert_eq!(wire(&events), bytes, "passed through whole");
    let again = cache
        .stream_with(&q, &none(), upstream(&opens, &bytes, Duration::ZERO, None))
        .await
        .unwrap();
    assert_eq!(again.status(), Status::Miss);
}

/// Two instances on one Redis behave as two processes: the second follows the first's
/// stream in flight, from its first event, and nobody calls the model twice.
pub(crate) async fn stream_shared_between_instances(be: &impl Backend) {
    let prefix = unique_prefix("stream-share");
    let (a, b) = (responses(be, &prefix), responses(be, &prefix));
    let opens = Arc::new(AtomicUsize::new(0));
    let bytes = fixture("openai_responses_text");
    let q = question("share");
    let gap = Duration::from_millis(30);
    let lead = a
        .stream_with(&q, &none(), upstream(&opens, &bytes, gap, None))
        .await
        .unwrap();
    assert_eq!(lead.status(), Status::Miss);
    let started = std::time::Instant::now();
    let leader = tokio::spawn(async move {
        let r = drain(lead).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follow = b
        .stream_with(&q, &none(), upstream(&opens, &bytes, gap, None))
        .await
        .unwrap();
    assert_eq!(follow.status(), Status::Coalesced);
    let mut follow = follow;
    let first = follow
        .next()
        .await
        .expect("an event")
        .expect("not an error");
    let first_at = started.elapsed();
    let (mut events, err) = drain(follow).await;
    events.insert(0, first);
    let ((lead_events, lead_err), lead_took) = leader.await.unwrap();
    assert!(err.is_none() && lead_err.is_none(), "{err:?} {lead_err:?}");
    assert_eq!(opens.load(Ordering::SeqCst), 1, "one upstream call");
    assert_eq!(events, lead_events, "every event, from the first");
    assert!(
        first_at < lead_took,
        "the follower's first event ({first_at:?}) came before the leader's end ({lead_took:?})"
    );
}

/// An instance that stops mid-stream (its stream dropped, its lease never released):
/// the follower gets an error once the lease lapses, never a short answer, and nothing is
/// stored.
pub(crate) async fn stream_leader_death_is_an_error(be: &impl Backend) {
    let prefix = unique_prefix("stream-death");
    let (a, b) = (responses(be, &prefix), responses(be, &prefix));
    let opens = Arc::new(AtomicUsize::new(0));
    let bytes = fixture("anthropic_text");
    let q = question("death");
    let gap = Duration::from_millis(50);
    let mut lead = a
        .stream_with(&q, &none(), upstream(&opens, &bytes, gap, None))
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(lead.next().await.is_some_and(|e| e.is_ok()));
    }
    let follower = tokio::spawn({
        let (b, q) = (b.clone(), q.clone());
        let open = upstream(&opens, &bytes, gap, None);
        async move {
            let s = b.stream_with(&q, &none(), open).await.unwrap();
            (s.status(), drain(s).await)
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(lead);
    drop(a);
    // Let the lease lapse (on the in-memory backend, time moves only when told).
    be.sleep(Duration::from_secs(2)).await;
    let (status, (events, err)) = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower gives up within the lease")
        .unwrap();
    assert_eq!(status, Status::Coalesced);
    assert!(!events.is_empty());
    assert!(matches!(err, Some(StreamError::LeaderGone)), "{err:?}");
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    let after = b
        .stream_with(&q, &none(), upstream(&opens, &bytes, Duration::ZERO, None))
        .await
        .unwrap();
    assert_eq!(after.status(), Status::Miss, "nothing stored");
}
