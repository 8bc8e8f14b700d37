//! Unit tests of streamed answers: record, replay, share, and what is never stored.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;
use futures_util::future::join_all;
use futures_util::{Stream, StreamExt};

use super::*;
use crate::stream::{Event, StreamError, Streamed};
use crate::testing::MemTransport;
use crate::{Clock, ManualClock, MemoryCache};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/streams/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn redis_cache(t: &MemTransport) -> ResponseCacheBuilder {
    ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
        .clock(t.shared_clock())
}

fn question() -> LlmRequest {
    LlmRequest::chat("gpt-4o-mini")
        .user("What is the weather in Paris?")
        .temperature(0.0)
}

fn none() -> CacheControl {
    CacheControl::default()
}

#[derive(Debug, Clone)]
struct UpErr(&'static str);

impl fmt::Display for UpErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UpErr {}

/// An upstream body: its chunks, one per poll after a pending poll (so concurrent callers
/// interleave), and whether it was dropped before its end.
struct Body {
    chunks: VecDeque<Result<Bytes, UpErr>>,
    ready: bool,
    dropped: Arc<AtomicBool>,
}

impl Stream for Body {
    type Item = Result<Bytes, UpErr>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.chunks.pop_front())
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if !self.chunks.is_empty() {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// A model provider that counts the streams it opened.
#[derive(Clone, Default)]
struct Provider {
    opens: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

type Opened = std::future::Ready<std::result::Result<Body, UpErr>>;

impl Provider {
    /// Streams `bytes` in chunks of `split` bytes, then ends with `tail` (an error) if any.
    fn stream(
        &self,
        bytes: &[u8],
        split: usize,
        tail: Option<UpErr>,
    ) -> impl FnOnce() -> Opened + use<> {
        let mut chunks: VecDeque<_> = bytes
            .chunks(split)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if let Some(e) = tail {
            chunks.push_back(Err(e));
        }
        let opens = self.opens.clone();
        let dropped = self.dropped.clone();
        move || {
            opens.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(Body {
                chunks,
                ready: false,
                dropped,
            }))
        }
    }

    fn refuse(&self) -> impl FnOnce() -> Opened + use<> {
        let opens = self.opens.clone();
        move || {
            opens.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err(UpErr("503 from the provider")))
        }
    }

    fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

/// Reads a whole answer: its events, and the error it ended with.
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

fn stream(
    cache: &ResponseCache,
    control: &CacheControl,
    open: impl FnOnce() -> Opened,
) -> Streamed {
    block_on(cache.stream_with(&question(), control, open)).expect("the stream opens")
}

const FORMATS: [&str; 7] = [
    "openai_chat_text",
    "openai_chat_tools",
    "openai_responses_text",
    "openai_responses_tools",
    "openai_responses_reasoning",
    "anthropic_text",
    "anthropic_tools",
];

#[test]
fn every_format_is_passed_through_recorded_and_replayed_byte_for_byte() {
    for name in FORMATS.iter().copied().chain(["anthropic_thinking"]) {
        let t = MemTransport::new();
        let cache = redis_cache(&t).build().unwrap();
        let p = Provider::default();
        let bytes = fixture(name);
        for split in [1, 7, 4096] {
            let control = none().namespace(format!("s{split}"));
            let first = stream(&cache, &control, p.stream(&bytes, split, None));
            assert_eq!(first.status(), Status::Miss, "{name}");
            let (events, err) = block_on(drain(first));
            assert!(err.is_none(), "{name}: {err:?}");
            assert_eq!(wire(&events), bytes, "{name}: passed through as sent");

            let second = stream(&cache, &control, p.stream(&bytes, split, None));
            assert_eq!(second.status(), Status::Hit, "{name}");
            assert!(second.stored_at_ms().is_some());
            let (replayed, err) = block_on(drain(second));
            assert!(err.is_none());
            assert_eq!(
                replayed, events,
                "{name}: the same events, names, ids and data"
            );
            assert_eq!(wire(&replayed), bytes, "{name}: byte for byte");
        }
        assert_eq!(p.opens(), 3, "{name}: one upstream call per namespace");
    }
}

#[test]
fn a_recorded_stream_answers_a_caller_that_does_not_stream() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let p = Provider::default();
    let s = stream(
        &cache,
        &none(),
        p.stream(&fixture("openai_chat_tools"), 64, None),
    );
    block_on(drain(s));
    let got = block_on(cache.get(&question(), &none()))
        .unwrap()
        .expect("a hit");
    assert_eq!(got.status, Status::Hit);
    let calls = got
        .value
        .metadata
        .get("tool_calls")
        .expect("tool calls kept");
    assert!(calls.as_array().is_some_and(|a| !a.is_empty()), "{calls}");
    assert!(got.value.metadata.contains_key("finish_reason"));
    assert!(got.value.usage.is_some(), "usage kept for tokens saved");
}

#[test]
fn an_answer_stored_without_a_stream_is_a_miss_for_a_streaming_caller() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    block_on(cache.put(&question(), &none(), &LlmResponse::new("Sunny."))).unwrap();
    let p = Provider::default();
    let bytes = fixture("openai_chat_text");
    let s = stream(&cache, &none(), p.stream(&bytes, 16, None));
    assert_eq!(s.status(), Status::Miss, "no events to replay faithfully");
    block_on(drain(s));
    let again = stream(&cache, &none(), p.stream(&bytes, 16, None));
    assert_eq!(again.status(), Status::Hit, "the recording replaced it");
    assert_eq!(p.opens(), 1);
}

#[test]
fn errors_and_cut_streams_are_never_stored_or_presented_as_complete() {
    let chat = fixture("openai_chat_text");
    let cut_at = chat.len() / 2;
    let done = chat
        .windows(6)
        .position(|w| w == b"[DONE]")
        .expect("the fixture ends with [DONE]");
    let cases: Vec<(&str, Vec<u8>, Option<UpErr>)> = vec![
        (
            "body error",
            chat[..cut_at].to_vec(),
            Some(UpErr("connection reset")),
        ),
        ("cut inside an event", chat[..cut_at].to_vec(), None),
        // Cut at an event boundary, before the terminal [DONE] event.
        (
            "cut between events",
            chat[..done - "data: ".len()].to_vec(),
            None,
        ),
    ];
    for (what, bytes, tail) in cases {
        let t = MemTransport::new();
        let cache = redis_cache(&t).build().unwrap();
        let p = Provider::default();
        let s = stream(&cache, &none(), p.stream(&bytes, 9, tail.clone()));
        let (events, err) = block_on(drain(s));
        match (&tail, err) {
            (Some(_), Some(StreamError::Upstream(e))) => {
                assert_eq!(e.to_string(), "connection reset", "{what}")
            }
            (None, Some(StreamError::Cut)) => {}
            (_, other) => panic!("{what}: the stream must end in an error, got {other:?}"),
        }
        assert!(
            !events.is_empty(),
            "{what}: events before the failure were passed on"
        );
        let again = stream(&cache, &none(), p.stream(&chat, 9, None));
        assert_eq!(again.status(), Status::Miss, "{what}: nothing was stored");
    }
}

#[test]
fn a_provider_error_event_is_passed_on_and_not_stored() {
    for name in [
        "anthropic_error",
        "openai_chat_error",
        "openai_responses_failed",
    ] {
        let t = MemTransport::new();
        let cache = redis_cache(&t).build().unwrap();
        let p = Provider::default();
        let bytes = fixture(name);
        let (events, _) = block_on(drain(stream(&cache, &none(), p.stream(&bytes, 5, None))));
        assert_eq!(
            wire(&events),
            bytes,
            "{name}: the error reached the caller as sent"
        );
        let again = stream(&cache, &none(), p.stream(&bytes, 5, None));
        assert_eq!(again.status(), Status::Miss, "{name}: not stored");
    }
}

#[test]
fn a_stream_over_the_size_limit_is_passed_through_but_not_stored() {
    let t = MemTransport::new();
    let bytes = fixture("anthropic_text");
    let cache = redis_cache(&t)
        .max_stream_bytes(bytes.len() / 2)
        .build()
        .unwrap();
    let p = Provider::default();
    let (events, err) = block_on(drain(stream(&cache, &none(), p.stream(&bytes, 11, None))));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(wire(&events), bytes, "the caller got all of it");
    let again = stream(&cache, &none(), p.stream(&bytes, 11, None));
    assert_eq!(again.status(), Status::Miss);
    assert!(
        redis_cache(&t).max_stream_bytes(0).build().is_err(),
        "a zero limit is refused"
    );
}

#[test]
fn concurrent_identical_requests_share_one_upstream_stream() {
    for backend in ["redis", "local"] {
        let t = MemTransport::new();
        let cache = match backend {
            "redis" => redis_cache(&t).build().unwrap(),
            _ => ResponseCache::local(MemoryCache::builder().build().unwrap())
                .build()
                .unwrap(),
        };
        let p = Provider::default();
        let bytes = fixture("openai_chat_tools");
        let callers = (0..100).map(|_| {
            let cache = cache.clone();
            let open = p.stream(&bytes, 13, None);
            async move {
                let s = cache.stream_with(&question(), &none(), open).await.unwrap();
                let status = s.status();
                (status, drain(s).await)
            }
        });
        let results = block_on(join_all(callers));
        assert_eq!(p.opens(), 1, "{backend}: exactly one upstream call");
        let misses = results.iter().filter(|r| r.0 == Status::Miss).count();
        let joined = results.iter().filter(|r| r.0 == Status::Coalesced).count();
        assert_eq!((misses, joined), (1, 99), "{backend}");
        for (_, (events, err)) in &results {
            assert!(err.is_none());
            assert_eq!(
                wire(events),
                bytes,
                "{backend}: every caller got every event"
            );
        }
        let after = stream(&cache, &none(), p.stream(&bytes, 13, None));
        assert_eq!(
            after.status(),
            Status::Hit,
            "{backend}: stored once it ended"
        );
    }
}

#[test]
fn a_caller_that_goes_away_does_not_cut_the_others() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let p = Provider::default();
    let bytes = fixture("anthropic_tools");
    let mut leader = stream(&cache, &none(), p.stream(&bytes, 8, None));
    let follower = stream(&cache, &none(), p.stream(&bytes, 8, None));
    assert_eq!(follower.status(), Status::Coalesced);
    // The leader reads one event and disconnects.
    assert!(block_on(leader.next()).is_some_and(|e| e.is_ok()));
    drop(leader);
    let (events, err) = block_on(drain(follower));
    assert!(err.is_none());
    assert_eq!(wire(&events), bytes);
    assert_eq!(p.opens(), 1);
    assert!(!p.dropped.load(Ordering::SeqCst));
    let after = stream(&cache, &none(), p.stream(&bytes, 8, None));
    assert_eq!(after.status(), Status::Hit, "the recording was stored");
}

#[test]
fn when_every_caller_goes_away_the_upstream_is_cancelled_and_nothing_stored() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let p = Provider::default();
    let bytes = fixture("openai_responses_text");
    let mut s = stream(&cache, &none(), p.stream(&bytes, 8, None));
    assert!(block_on(s.next()).is_some());
    drop(s);
    assert!(
        p.dropped.load(Ordering::SeqCst),
        "the upstream body was dropped"
    );
    let again = stream(&cache, &none(), p.stream(&bytes, 8, None));
    assert_eq!(
        again.status(),
        Status::Miss,
        "a new caller makes its own call"
    );
}

#[test]
fn a_failed_open_replays_the_stale_recording() {
    let t = MemTransport::new();
    let cache = redis_cache(&t)
        .default_ttl(Duration::from_secs(60))
        .stale_window(Duration::from_secs(600))
        .build()
        .unwrap();
    let p = Provider::default();
    let bytes = fixture("anthropic_text");
    block_on(drain(stream(&cache, &none(), p.stream(&bytes, 8, None))));
    t.clock().advance(Duration::from_secs(120));
    let s = stream(&cache, &none(), p.refuse());
    assert_eq!(s.status(), Status::Stale);
    assert_eq!(wire(&block_on(drain(s)).0), bytes);
    t.clock().advance(Duration::from_secs(1000));
    let err = block_on(cache.stream_with(&question(), &none(), p.refuse())).unwrap_err();
    assert!(
        matches!(&err, ComputeError::Compute(e) if e.0 == "503 from the provider"),
        "{err:?}"
    );
}

#[test]
fn paced_replay_keeps_the_recorded_gaps_up_to_the_cap() {
    let clock = ManualClock::new(1_000_000);
    let cache = ResponseCache::local(MemoryCache::builder().clock(clock.clone()).build().unwrap())
        .build()
        .unwrap();
    let bytes = fixture("openai_chat_text");
    let events = {
        let mut parser = crate::stream::SseParser::new();
        let mut out = Vec::new();
        parser.push(&bytes, &mut out).unwrap();
        out
    };
    // Record with 50 ms between events: the body advances the clock as it is read.
    let gaps = events.len() as u64 - 1;
    let body = futures_util::stream::iter(events.clone()).then({
        let clock = clock.clone();
        move |e| {
            let clock = clock.clone();
            async move {
                clock.advance(Duration::from_millis(50));
                Ok::<_, UpErr>(e.encode())
            }
        }
    });
    let s = block_on(cache.stream_with(&question(), &none(), || async { Ok(body) })).unwrap();
    block_on(drain(s));
    let replay = |control: &CacheControl| {
        let before = clock.now_ms();
        let s = block_on(cache.stream_with(&question(), control, || async {
            Err::<futures_util::stream::Empty<Result<Bytes, UpErr>>, _>(UpErr("unused"))
        }))
        .unwrap();
        assert_eq!(s.status(), Status::Hit);
        block_on(drain(s));
        clock.now_ms() - before
    };
    assert_eq!(replay(&none()), 0, "as fast as the caller reads by default");
    assert_eq!(
        replay(&none().pace(Duration::from_secs(1))),
        50 * gaps,
        "the recorded gaps"
    );
    assert_eq!(
        replay(&none().pace(Duration::from_millis(20))),
        20 * gaps,
        "each gap capped"
    );
}

/// Runs on tokio (paused time) with spawned tasks: the futures and streams are `Send`, and
/// the lease's waits take (virtual) time.
mod across_tasks {
    use super::*;
    use crate::compute::tests::support::TokioClock;

    type SlowBody = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, UpErr>> + Send>>;

    /// An upstream that sends one chunk every 20 ms.
    fn slow(
        opens: &Arc<AtomicUsize>,
        bytes: &[u8],
    ) -> impl FnOnce() -> std::future::Ready<std::result::Result<SlowBody, UpErr>> + Send + use<>
    {
        let opens = opens.clone();
        let chunks: Vec<Bytes> = bytes.chunks(40).map(Bytes::copy_from_slice).collect();
        move || {
            opens.fetch_add(1, Ordering::SeqCst);
            let body = futures_util::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(c)
            });
            std::future::ready(Ok(Box::pin(body) as SlowBody))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn callers_in_two_processes_make_one_upstream_call() {
        let clock = TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        let instance = || {
            ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
                .clock(clock.clone())
                .build()
                .unwrap()
        };
        let (a, b) = (instance(), instance());
        let opens = Arc::new(AtomicUsize::new(0));
        let bytes = fixture("openai_responses_tools");
        let mut tasks = Vec::new();
        for i in 0..40 {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let open = slow(&opens, &bytes);
            tasks.push(tokio::spawn(async move {
                let s = cache.stream_with(&question(), &none(), open).await.unwrap();
                let status = s.status();
                (status, drain(s).await)
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut statuses = Vec::new();
        for task in tasks {
            let (status, (events, err)) = task.await.unwrap();
            assert!(err.is_none(), "{err:?}");
            assert_eq!(wire(&events), bytes, "every caller got every event");
            statuses.push(status);
        }
        assert_eq!(
            opens.load(Ordering::SeqCst),
            1,
            "one upstream call for 40 callers"
        );
        let count = |s| statuses.iter().filter(|&&x| x == s).count();
        assert_eq!((count(Status::Miss), count(Status::Coalesced)), (1, 39));
        assert!(
            !t.keys().iter().any(|k| k.starts_with(b"p:lock:")),
            "the lease was released"
        );
    }

    /// A transport without pub/sub, as over HTTP: followers poll.
    #[derive(Debug, Clone)]
    struct Polling(MemTransport);

    #[async_trait::async_trait]
    impl Transport for Polling {
        async fn exec(&self, cmd: Cmd) -> std::result::Result<Value, crate::TransportError> {
            self.0.exec(cmd).await
        }
        async fn pipeline(
            &self,
            cmds: Vec<Cmd>,
        ) -> std::result::Result<Vec<Value>, crate::TransportError> {
            self.0.pipeline(cmds).await
        }
        async fn scan_page(
            &self,
            cursor: crate::transport::ScanCursor,
            pattern: &[u8],
            count: usize,
        ) -> std::result::Result<(crate::transport::ScanCursor, Vec<Bytes>), crate::TransportError>
        {
            self.0.scan_page(cursor, pattern, count).await
        }
    }

    fn process<T: Transport + Clone + 'static>(
        t: &T,
        clock: &Arc<TokioClock>,
    ) -> ResponseCacheBuilder {
        ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
            .clock(clock.clone())
    }

    /// Reads a stream, noting when (virtual ms) its first event and its end arrived.
    async fn timed(mut s: Streamed) -> (Vec<Event>, Option<StreamError>, u64, u64) {
        let start = tokio::time::Instant::now();
        let mut first = None;
        let mut events = Vec::new();
        let mut err = None;
        while let Some(item) = s.next().await {
            first.get_or_insert_with(|| start.elapsed().as_millis() as u64);
            match item {
                Ok(e) => events.push(e),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let end = start.elapsed().as_millis() as u64;
        (events, err, first.unwrap_or(end), end)
    }

    async fn leader_and_follower<T: Transport + Clone + 'static>(t: T, poll_ms: u64) {
        let clock = TokioClock::shared();
        let (a, b) = (
            process(&t, &clock)
                .stream_poll_interval(Duration::from_millis(poll_ms))
                .build()
                .unwrap(),
            process(&t, &clock)
                .stream_poll_interval(Duration::from_millis(poll_ms))
                .build()
                .unwrap(),
        );
        let opens = Arc::new(AtomicUsize::new(0));
        let bytes = fixture("anthropic_tools");
        let chunks = bytes.chunks(40).count() as u64;
        let lead = a
            .stream_with(&question(), &none(), slow(&opens, &bytes))
            .await
            .unwrap();
        let leader = tokio::spawn(timed(lead));
        // The follower arrives 30 ms in, while the leader is still streaming.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let follower = b
            .stream_with(&question(), &none(), slow(&opens, &bytes))
            .await
            .unwrap();
        assert_eq!(follower.status(), Status::Coalesced);
        let (events, err, first, end) = timed(follower).await;
        let (lead_events, lead_err, _, lead_end) = leader.await.unwrap();
        assert!(err.is_none() && lead_err.is_none(), "{err:?} {lead_err:?}");
        assert_eq!(opens.load(Ordering::SeqCst), 1, "one upstream call");
        assert_eq!(events, lead_events, "the same events, from the first");
        assert_eq!(wire(&events), bytes);
        assert!(
            first + 30 < lead_end,
            "the follower's first event ({first} ms after it asked) came before the leader's \
             stream ended ({lead_end} ms)"
        );
        assert!(
            end <= lead_end + poll_ms,
            "the follower ended {end} ms after it asked, the leader's stream at {lead_end} ms \
             of {} ms",
            chunks * 20
        );
    }

    #[tokio::test(start_paused = true)]
    async fn another_process_follows_the_stream_in_flight_woken_by_pubsub() {
        let clock = TokioClock::shared();
        leader_and_follower(MemTransport::with_clock(clock), 1_000).await;
    }

    #[tokio::test(start_paused = true)]
    async fn another_process_follows_the_stream_in_flight_by_polling() {
        let clock = TokioClock::shared();
        leader_and_follower(Polling(MemTransport::with_clock(clock)), 50).await;
    }

    /// A transport whose writes of cache entries wait until the gate opens: a store still
    /// in flight.
    #[derive(Debug, Clone)]
    struct GatedStore(MemTransport, Arc<tokio::sync::Semaphore>);

    impl GatedStore {
        async fn gate(&self, cmds: &[Cmd]) {
            let stores = cmds.iter().any(|c| {
                c.name() == "SET" && c.args().get(1).is_some_and(|k| k.starts_with(b"p:cache:"))
            });
            if stores {
                let _ = self.1.acquire().await;
            }
        }
    }

    #[async_trait::async_trait]
    impl Transport for GatedStore {
        async fn exec(&self, cmd: Cmd) -> std::result::Result<Value, crate::TransportError> {
            self.gate(std::slice::from_ref(&cmd)).await;
            self.0.exec(cmd).await
        }
        async fn pipeline(
            &self,
            cmds: Vec<Cmd>,
        ) -> std::result::Result<Vec<Value>, crate::TransportError> {
            self.gate(&cmds).await;
            self.0.pipeline(cmds).await
        }
        async fn scan_page(
            &self,
            cursor: crate::transport::ScanCursor,
            pattern: &[u8],
            count: usize,
        ) -> std::result::Result<(crate::transport::ScanCursor, Vec<Bytes>), crate::TransportError>
        {
            self.0.scan_page(cursor, pattern, count).await
        }
    }

    /// A caller that arrives after another process's stream ended, while that process is
    /// still storing it (its lease still held), replays the finished recording as a HIT,
    /// not as a stream it joined; the upstream is called once.
    #[tokio::test(start_paused = true)]
    async fn a_finished_stream_whose_store_is_in_flight_is_a_hit() {
        let clock = TokioClock::shared();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let t = GatedStore(MemTransport::with_clock(clock.clone()), gate.clone());
        let (a, b) = (
            process(&t, &clock).build().unwrap(),
            process(&t, &clock).build().unwrap(),
        );
        let opens = Arc::new(AtomicUsize::new(0));
        let bytes = fixture("openai_chat_text");
        let lead = a
            .stream_with(&question(), &none(), slow(&opens, &bytes))
            .await
            .unwrap();
        let leader = tokio::spawn(timed(lead));
        // Long enough for every chunk and the end's publication; the store waits.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !leader.is_finished(),
            "the leader's store is held at the gate"
        );
        let late = b
            .stream_with(&question(), &none(), slow(&opens, &bytes))
            .await
            .unwrap();
        assert_eq!(late.status(), Status::Hit);
        let (events, err, _, _) = timed(late).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(wire(&events), bytes, "the whole recording");
        gate.add_permits(1_000);
        let (lead_events, lead_err, _, _) = leader.await.unwrap();
        assert!(lead_err.is_none(), "{lead_err:?}");
        assert_eq!(events, lead_events);
        assert_eq!(opens.load(Ordering::SeqCst), 1, "one upstream call");
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_leading_process_dies_followers_get_an_error_not_a_short_answer() {
        let clock = TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        let lease = Duration::from_secs(3);
        let a = process(&t, &clock).lease_ttl(lease).build().unwrap();
        let b = process(&t, &clock).lease_ttl(lease).build().unwrap();
        let opens = Arc::new(AtomicUsize::new(0));
        let bytes = fixture("openai_chat_text");
        let mut lead = a
            .stream_with(&question(), &none(), slow(&opens, &bytes))
            .await
            .unwrap();
        for _ in 0..3 {
            assert!(lead.next().await.is_some_and(|e| e.is_ok()));
        }
        let follower = tokio::spawn({
            let b = b.clone();
            let open = slow(&opens, &bytes);
            async move {
                let s = b.stream_with(&question(), &none(), open).await.unwrap();
                let status = s.status();
                (status, timed(s).await)
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The leading process dies: its stream and lease are dropped, nothing released.
        drop(lead);
        drop(a);
        let (status, (events, err, _, end)) = follower.await.unwrap();
        assert_eq!(status, Status::Coalesced);
        assert!(!events.is_empty(), "it had the events published before");
        assert!(matches!(err, Some(StreamError::LeaderGone)), "{err:?}");
        assert!(
            end <= (lease + Duration::from_secs(2)).as_millis() as u64,
            "gave up {end} ms in, about when the lease lapsed"
        );
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        let after = b
            .stream_with(&question(), &none(), slow(&opens, &bytes))
            .await
            .unwrap();
        assert_eq!(after.status(), Status::Miss, "nothing was stored");
    }
}

/// The stored envelope of a recorded stream, byte for byte (docs/KEY_FORMAT.md §9): every
/// runtime that reads or writes larder entries checks the same file.
#[test]
fn the_stored_envelope_matches_the_golden_vector() {
    let golden_path = format!(
        "{}/tests/data/stream_envelope.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let t = MemTransport::new();
    t.clock().set(1_764_090_000_000);
    // Without the lease: its keep-alive would move the manual clock while the stream runs.
    let cache = redis_cache(&t).lease(false).build().unwrap();
    let p = Provider::default();
    let bytes = fixture("openai_chat_tools");
    block_on(drain(stream(&cache, &none(), p.stream(&bytes, 4096, None))));
    let key = cache.key(&question(), &none()).unwrap();
    let stored = block_on(crate::transport::Commands::get(&t, key.as_bytes()))
        .unwrap()
        .expect("stored");
    let doc = serde_json::json!({
        "description": "The envelope stored for tests/fixtures/streams/openai_chat_tools.sse, \
                        recorded at unix ms 1764090000000 with no gaps, for the request \
                        `question()` of core/src/response/stream_tests.rs.",
        "key": key,
        "envelope": String::from_utf8(stored.to_vec()).unwrap(),
    });
    if std::env::var_os("LARDER_BLESS").is_some() {
        std::fs::write(
            &golden_path,
            serde_json::to_string_pretty(&doc).unwrap() + "\n",
        )
        .unwrap();
    }
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    assert_eq!(golden["key"], doc["key"]);
    assert_eq!(golden["envelope"], doc["envelope"], "byte for byte");
    // Readers that do not know `stream` see the aggregated answer.
    let e: serde_json::Value = serde_json::from_str(golden["envelope"].as_str().unwrap()).unwrap();
    assert_eq!(e["v"], 1);
    assert_eq!(e["stream"]["format"], "openai.chat");
}

#[test]
fn analytics_count_the_providers_own_prompt_cache_apart_from_larders_hits() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let p = Provider::default();
    // What the fixtures report: Anthropic cache_read_input_tokens, OpenAI cached_tokens.
    let cached = |bytes: &[u8]| {
        let mut events = Vec::new();
        crate::stream::SseParser::new()
            .push(bytes, &mut events)
            .unwrap();
        let mut r = crate::stream::Recorder::new(crate::stream::Format::detect(&events[0]));
        events.iter().for_each(|e| r.push(e));
        r.summary().usage.clone().expect("usage").cache_read_tokens
    };
    let mut expected = 0;
    for name in ["anthropic_text", "openai_chat_text"] {
        let bytes = fixture(name);
        expected += cached(&bytes);
        let control = none().namespace(name.replace('_', "-"));
        block_on(drain(stream(&cache, &control, p.stream(&bytes, 64, None))));
    }
    assert!(expected > 0, "the fixtures carry provider-cached tokens");
    let total = cache.local_analytics().total();
    assert_eq!((total.writes, total.hits), (2, 0));
    assert_eq!(total.provider_cache_read_tokens, expected);
    // A larder hit counts as tokens saved, not as the provider's cache.
    let control = none().namespace("anthropic-text");
    let hit = stream(
        &cache,
        &control,
        p.stream(&fixture("anthropic_text"), 64, None),
    );
    assert_eq!(hit.status(), Status::Hit);
    let total = cache.local_analytics().total();
    assert_eq!(total.hits, 1);
    assert!(total.prompt_tokens_saved > 0);
    assert_eq!(total.provider_cache_read_tokens, expected);
    // And they reach Redis with the other counters.
    block_on(cache.flush()).unwrap();
    let shared = block_on(cache.analytics()).unwrap().total();
    assert_eq!(shared.provider_cache_read_tokens, expected);
}
