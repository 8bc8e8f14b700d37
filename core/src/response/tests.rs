//! Unit tests of the response cache, on the in-memory Redis and a manual clock.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;
use parking_lot::Mutex;

use super::*;
use crate::testing::MemTransport;
use crate::transport::Commands;
use crate::{Clock, ErrorKind, ManualClock, MemoryCache};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn redis_cache(t: &MemTransport) -> ResponseCacheBuilder {
    ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
        .clock(t.shared_clock())
}

fn question() -> LlmRequest {
    LlmRequest::chat("gpt-4o-mini")
        .system("You are terse.")
        .user("What is the capital of France?")
        .temperature(0.0)
}

type TestResult = std::result::Result<LlmResponse, String>;

/// A compute function that counts its calls.
#[derive(Clone, Default)]
struct Model {
    calls: Arc<AtomicUsize>,
}

impl Model {
    fn answer(&self, text: &str) -> impl FnOnce() -> std::future::Ready<TestResult> + use<> {
        let calls = self.calls.clone();
        let text = text.to_owned();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(LlmResponse::new(text).with_usage(Usage::new(100, 20))))
        }
    }

    fn fail(&self) -> impl FnOnce() -> std::future::Ready<TestResult> + use<> {
        let calls = self.calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err("model unavailable".to_owned()))
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn ask(
    cache: &ResponseCache,
    control: &CacheControl,
    f: impl FnOnce() -> std::future::Ready<TestResult>,
) -> std::result::Result<Fetched<LlmResponse>, ComputeError<String>> {
    block_on(cache.try_get_with(&question(), control, f))
}

fn none() -> CacheControl {
    CacheControl::default()
}

#[test]
fn miss_then_hit_reports_status_and_computes_once() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    let first = ask(&cache, &none(), model.answer("Paris.")).unwrap();
    assert_eq!(first.status, Status::Miss);
    assert_eq!(first.text(), "Paris.");
    assert_eq!(first.value.model, "gpt-4o-mini");
    let second = ask(&cache, &none(), model.answer("other")).unwrap();
    assert_eq!(second.status, Status::Hit);
    assert_eq!(second.text(), "Paris.");
    assert_eq!(second.value.usage, Some(Usage::new(100, 20)));
    assert_eq!(second.stored_at_ms, Some(t.clock().now_ms()));
    assert_eq!(model.calls(), 1);
    assert_eq!(
        cache.key(&question(), &none()).unwrap(),
        format!("p:cache:{}", question().hash().unwrap())
    );
}

#[test]
fn stored_value_is_an_envelope_with_response_model_time_and_metadata() {
    let t = MemTransport::new();
    let cache = redis_cache(&t)
        .default_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let a = ask(&cache, &none(), Model::default().answer("Paris.")).unwrap();
    assert_eq!(a.status, Status::Miss);
    let raw = block_on(t.get(cache.key(&question(), &none()).unwrap().as_bytes()))
        .unwrap()
        .unwrap();
    let Decoded::Envelope(e) = Envelope::decode(&raw) else {
        panic!("not an envelope: {raw:?}")
    };
    assert_eq!(e.response, "Paris.");
    assert_eq!(e.model, "gpt-4o-mini");
    assert_eq!(e.timestamp, (t.clock().now_ms() / 1000) as i64);
    assert_eq!(e.metadata["temperature"], serde_json::json!(0.0));
    assert_eq!(e.metadata["prompt_tokens"], serde_json::json!(100));
    assert_eq!(e.metadata["completion_tokens"], serde_json::json!(20));
    assert_eq!(e.fresh_until, Some(t.clock().now_ms() + 60_000));
}

#[test]
fn ttl_control_sets_px_and_expires_the_answer() {
    let t = MemTransport::new();
    let cache = redis_cache(&t)
        .default_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let model = Model::default();
    let ctl = none().ttl(Duration::from_secs(10));
    let a = ask(&cache, &ctl, model.answer("Paris.")).unwrap();
    assert_eq!(a.status, Status::Miss);
    assert_eq!(
        block_on(t.pttl(cache.key(&question(), &ctl).unwrap().as_bytes())).unwrap(),
        10_000
    );
    t.clock().advance(Duration::from_secs(9));
    assert_eq!(
        ask(&cache, &ctl, model.answer("x")).unwrap().status,
        Status::Hit
    );
    t.clock().advance(Duration::from_secs(1));
    assert_eq!(
        ask(&cache, &ctl, model.answer("x")).unwrap().status,
        Status::Miss
    );
    // Without a per-request TTL the builder's default applies.
    let a = block_on(cache.try_get_with(&LlmRequest::prompt("m", "q"), &none(), model.answer("y")))
        .unwrap();
    assert_eq!(a.status, Status::Miss);
    assert_eq!(
        block_on(
            t.pttl(
                cache
                    .key(&LlmRequest::prompt("m", "q"), &none())
                    .unwrap()
                    .as_bytes()
            )
        )
        .unwrap(),
        3_600_000
    );
}

#[test]
fn no_cache_skips_the_read_but_stores_and_is_not_counted() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    ask(&cache, &none(), model.answer("old")).unwrap();
    let a = ask(&cache, &none().no_cache(), model.answer("new")).unwrap();
    assert_eq!((a.status, a.text()), (Status::Miss, "new"));
    assert_eq!(model.calls(), 2);
    let hit = ask(&cache, &none(), model.answer("x")).unwrap();
    assert_eq!(
        (hit.status, hit.text()),
        (Status::Hit, "new"),
        "the result was stored"
    );
    let local = cache.local_analytics().total();
    assert_eq!(
        (local.hits, local.misses, local.writes),
        (1, 1, 2),
        "no-cache is neither"
    );
}

#[test]
fn no_store_does_not_write() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    let a = ask(&cache, &none().no_store(), model.answer("Paris.")).unwrap();
    assert_eq!(a.status, Status::Miss);
    assert_eq!(
        block_on(t.get(cache.key(&question(), &none()).unwrap().as_bytes())).unwrap(),
        None
    );
    assert_eq!(
        ask(&cache, &none(), model.answer("Paris.")).unwrap().status,
        Status::Miss
    );
    assert_eq!(model.calls(), 2);
}

#[test]
fn force_refresh_replaces_a_fresh_entry_and_falls_back_to_it_on_failure() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    ask(&cache, &none(), model.answer("v1")).unwrap();
    let a = ask(&cache, &none().force_refresh(), model.answer("v2")).unwrap();
    assert_eq!((a.status, a.text()), (Status::Miss, "v2"));
    assert_eq!(
        ask(&cache, &none(), model.answer("x")).unwrap().text(),
        "v2"
    );
    let a = ask(&cache, &none().force_refresh(), model.fail()).unwrap();
    assert_eq!((a.status, a.text()), (Status::Stale, "v2"));
    // Without an entry, the failure is the caller's.
    let err = block_on(cache.try_get_with(
        &LlmRequest::prompt("m", "new"),
        &none().force_refresh(),
        model.fail(),
    ))
    .unwrap_err();
    assert_eq!(
        err.compute_error().map(String::as_str),
        Some("model unavailable")
    );
}

#[test]
fn stale_answer_is_served_only_when_computing_fails_inside_the_window() {
    let t = MemTransport::new();
    let cache = redis_cache(&t)
        .default_ttl(Duration::from_secs(60))
        .stale_window(Duration::from_secs(600))
        .build()
        .unwrap();
    let model = Model::default();
    let a = ask(&cache, &none(), model.answer("v1")).unwrap();
    assert_eq!(a.status, Status::Miss);
    assert_eq!(
        block_on(t.pttl(cache.key(&question(), &none()).unwrap().as_bytes())).unwrap(),
        660_000,
        "kept for ttl + window"
    );
    t.clock().advance(Duration::from_secs(61));
    let stale = ask(&cache, &none(), model.fail()).unwrap();
    assert_eq!((stale.status, stale.text()), (Status::Stale, "v1"));
    let fresh = ask(&cache, &none(), model.answer("v2")).unwrap();
    assert_eq!(
        (fresh.status, fresh.text()),
        (Status::Miss, "v2"),
        "a stale entry is recomputed"
    );
    t.clock().advance(Duration::from_secs(61 + 600));
    let err = ask(&cache, &none(), model.fail()).unwrap_err();
    assert!(matches!(err, ComputeError::Compute(_)), "{err:?}");
    // A plain get never returns stale answers; peek shows them.
    ask(&cache, &none(), model.answer("v3")).unwrap();
    t.clock().advance(Duration::from_secs(61));
    assert_eq!(block_on(cache.get(&question(), &none())).unwrap(), None);
    let peeked = block_on(cache.peek(&question(), &none())).unwrap().unwrap();
    assert_eq!(peeked.status, Status::Stale);
}

#[test]
fn namespaces_are_separate() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    let a = ask(&cache, &none().namespace("tenant-a"), model.answer("A")).unwrap();
    let b2 = ask(&cache, &none().namespace("tenant-b"), model.answer("B")).unwrap();
    let key_a = cache
        .key(&question(), &none().namespace("tenant-a"))
        .unwrap();
    let key_b = cache
        .key(&question(), &none().namespace("tenant-b"))
        .unwrap();
    assert_eq!(
        key_a,
        format!("p:cache:tenant-a:{}", question().hash().unwrap())
    );
    assert_ne!(key_a, key_b);
    assert_eq!((a.text(), b2.text()), ("A", "B"));
    assert_eq!(
        ask(&cache, &none().namespace("tenant-a"), model.answer("x"))
            .unwrap()
            .text(),
        "A"
    );
    assert_eq!(
        ask(&cache, &none().namespace("tenant-b"), model.answer("x"))
            .unwrap()
            .text(),
        "B"
    );
    // "default" is the namespace of requests that name none.
    let d = ask(&cache, &none(), model.answer("D")).unwrap();
    assert_eq!(
        cache
            .key(&question(), &none().namespace("default"))
            .unwrap(),
        cache.key(&question(), &none()).unwrap()
    );
    assert_eq!(
        ask(&cache, &none().namespace("default"), model.answer("x"))
            .unwrap()
            .text(),
        d.text()
    );
}

#[test]
fn namespace_invalidation_is_one_incr_and_every_get_stays_one_round_trip() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    let ns = none().namespace("tenant-a");
    for i in 0..50 {
        let r = LlmRequest::prompt("m", format!("q{i}"));
        block_on(cache.try_get_with(&r, &ns, model.answer("a"))).unwrap();
    }
    ask(&cache, &none().namespace("tenant-b"), model.answer("b")).unwrap();
    t.reset_counters();
    let r0 = LlmRequest::prompt("m", "q0");
    let hit = block_on(cache.get(&r0, &ns)).unwrap();
    assert!(hit.is_some_and(|a| a.is_hit()));
    assert_eq!(t.calls(), 1, "a lookup is one round trip");

    t.reset_counters();
    assert_eq!(block_on(cache.invalidate_namespace("tenant-a")).unwrap(), 1);
    assert_eq!(
        t.command_log(),
        ["INCR"],
        "O(1): one command, whatever the entry count"
    );

    for i in 0..50 {
        t.reset_counters();
        let r = LlmRequest::prompt("m", format!("q{i}"));
        assert_eq!(block_on(cache.get(&r, &ns)).unwrap(), None, "q{i}");
        assert_eq!(t.calls(), 1, "generation and value read in one pipeline");
    }
    // Other namespaces are untouched; new answers in the namespace are served again.
    assert!(
        ask(&cache, &none().namespace("tenant-b"), model.answer("x"))
            .unwrap()
            .is_hit()
    );
    block_on(cache.try_get_with(&r0, &ns, model.answer("a2"))).unwrap();
    assert_eq!(block_on(cache.get(&r0, &ns)).unwrap().unwrap().text(), "a2");
    // Another instance sharing the Redis sees the invalidation too.
    let other = redis_cache(&t).build().unwrap();
    let r1 = LlmRequest::prompt("m", "q1");
    assert_eq!(block_on(other.get(&r1, &ns)).unwrap(), None);
}

#[test]
fn tag_invalidation_is_lazy_and_checked_in_the_lookup_pipeline() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    let docs = none().tag("docs-v3");
    ask(&cache, &docs, model.answer("old")).unwrap();
    let untagged = LlmRequest::prompt("gpt-4o-mini", "unrelated");
    block_on(cache.try_get_with(&untagged, &none(), model.answer("u"))).unwrap();

    t.clock().advance(Duration::from_millis(5));
    t.reset_counters();
    block_on(cache.invalidate_tag("docs-v3")).unwrap();
    assert_eq!(
        t.command_log(),
        ["SET"],
        "lazy: only the tag's time is written"
    );

    t.clock().advance(Duration::from_millis(5));
    t.reset_counters();
    assert_eq!(block_on(cache.get(&question(), &docs)).unwrap(), None);
    assert_eq!(t.calls(), 1, "tag times travel with the value");
    assert!(block_on(cache.get(&untagged, &none())).unwrap().is_some());
    // Written after the invalidation: valid.
    ask(&cache, &docs, model.answer("new")).unwrap();
    assert_eq!(
        block_on(cache.get(&question(), &docs))
            .unwrap()
            .unwrap()
            .text(),
        "new"
    );
}

#[test]
fn tags_stored_with_an_entry_are_checked_even_when_the_request_names_none() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    ask(&cache, &none().tag("pricing"), Model::default().answer("v")).unwrap();
    t.clock().advance(Duration::from_millis(1));
    t.reset_counters();
    assert!(block_on(cache.get(&question(), &none())).unwrap().is_some());
    assert_eq!(t.calls(), 2, "one extra MGET for the entry's own tags");
    block_on(cache.invalidate_tag("pricing")).unwrap();
    t.clock().advance(Duration::from_millis(1));
    assert_eq!(block_on(cache.get(&question(), &none())).unwrap(), None);
}

#[test]
fn model_invalidation_drops_that_models_answers_only() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    let other = LlmRequest::prompt("claude-haiku", "q");
    ask(&cache, &none(), model.answer("a")).unwrap();
    block_on(cache.try_get_with(&other, &none(), model.answer("b"))).unwrap();
    t.clock().advance(Duration::from_millis(1));
    block_on(cache.invalidate_model("gpt-4o-mini")).unwrap();
    assert!(
        block_on(t.get(b"p:tag:model:gpt-4o-mini"))
            .unwrap()
            .is_some()
    );
    t.clock().advance(Duration::from_millis(1));
    assert_eq!(block_on(cache.get(&question(), &none())).unwrap(), None);
    assert!(block_on(cache.get(&other, &none())).unwrap().is_some());
}

#[test]
fn excluded_fields_do_not_change_the_key_and_generation_parameters_do() {
    let base = question();
    let base_key = base.hash().unwrap();
    for (field, value) in [
        ("stream", serde_json::json!(true)),
        ("user", serde_json::json!("end-user-42")),
        ("metadata", serde_json::json!({"trace": "x"})),
        ("stream_options", serde_json::json!({"include_usage": true})),
        ("api_key", serde_json::json!("sk-secret")),
    ] {
        assert_eq!(
            base.clone().param(field, value).hash().unwrap(),
            base_key,
            "{field}"
        );
    }
    for (field, value) in [
        ("temperature", serde_json::json!(0.7)),
        ("max_tokens", serde_json::json!(10)),
        ("top_p", serde_json::json!(0.9)),
        ("seed", serde_json::json!(7)),
        ("model", serde_json::json!("gpt-4o")),
    ] {
        assert_ne!(
            base.clone().param(field, value).hash().unwrap(),
            base_key,
            "{field}"
        );
    }
    assert_ne!(
        base.clone()
            .assistant("Paris.")
            .user("And Italy?")
            .hash()
            .unwrap(),
        base_key
    );
    assert_ne!(
        LlmRequest::chat("gpt-4o-mini")
            .system("You are verbose.")
            .user("What is the capital of France?")
            .temperature(0.0)
            .hash()
            .unwrap(),
        base_key
    );
    // Same JSON, different key order and whitespace: same key.
    let text = r#"{ "temperature": 0.0, "messages": [{"content": "You are terse.", "role": "system"},
        {"role": "user", "content": "What is the capital of France?"}], "model": "gpt-4o-mini" }"#;
    assert_eq!(
        LlmRequest::from_json_str(text).unwrap().hash().unwrap(),
        base_key
    );
}

#[test]
fn requests_without_a_model_are_rejected() {
    assert!(LlmRequest::from_json(serde_json::json!({"prompt": "x"})).is_err());
    assert!(LlmRequest::from_json(serde_json::json!([1])).is_err());
    assert!(LlmRequest::from_json_str("not json").is_err());
}

#[test]
fn invalid_controls_are_rejected_before_any_io() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    for ctl in [
        none().ttl(Duration::ZERO),
        none().namespace("has space"),
        none().namespace("{tenant}"),
        none().namespace("glob*"),
        none().tag("{x}"),
        none().tag(""),
    ] {
        let err = ask(&cache, &ctl, Model::default().answer("x")).unwrap_err();
        assert!(
            matches!(err.as_cache(), Some(Error::InvalidInput(_))),
            "{ctl:?}: {err:?}"
        );
    }
    assert_eq!(t.calls(), 0);
}

#[test]
fn go_compat_uses_the_agents_key_raw_text_and_five_minute_ttl() {
    let t = MemTransport::new();
    let go = ResponseCache::redis(RedisCache::new(t.clone()))
        .clock(t.shared_clock())
        .go_deep_agent_compat()
        .build()
        .unwrap();
    let request = LlmRequest::prompt("gpt-4o-mini", "What is the capital of France?")
        .system("You are a helpful assistant.")
        .temperature(0.7);
    let key =
        "go-deep-agent:cache:98cfa39c5e32d1ac9ff4031d1fc08077d154354b852aac1ecd42a83baa24ed71";
    // The same question as a chat body keys the same in compat mode.
    let chat = LlmRequest::chat("gpt-4o-mini")
        .system("You are a helpful assistant.")
        .user("What is the capital of France?")
        .temperature(0.7);
    assert_eq!(go.key(&chat, &none()).unwrap(), key);

    let a =
        block_on(go.try_get_with(&request, &none(), Model::default().answer("Paris."))).unwrap();
    assert_eq!(a.status, Status::Miss);
    assert_eq!(go.key(&request, &none()).unwrap(), key);
    assert_eq!(
        block_on(t.get(key.as_bytes())).unwrap(),
        Some(b("Paris.")),
        "raw text, no envelope"
    );
    assert_eq!(block_on(t.pttl(key.as_bytes())).unwrap(), 300_000);
    let hit = block_on(go.try_get_with(&request, &none(), Model::default().fail())).unwrap();
    assert_eq!((hit.status, hit.text()), (Status::Hit, "Paris."));
}

#[test]
fn go_compat_reads_what_the_go_agent_wrote_and_counts_into_its_stats_keys() {
    let t = MemTransport::new();
    // What go-deep-agent left in Redis: a raw value and its INCR'd counters.
    let go_key = crate::go_deep_agent_key("gpt-4o-mini", "Hi", 0.0, "");
    let value_key = format!("go-deep-agent:cache:{go_key}");
    block_on(t.set(
        value_key.as_bytes(),
        &b("Hello from Go"),
        SetOptions::default(),
    ))
    .unwrap();
    for (stat, n) in [("hits", 5), ("misses", 3), ("writes", 3)] {
        for _ in 0..n {
            block_on(t.exec(Cmd::new("INCR").arg(format!("go-deep-agent:stats:{stat}")))).unwrap();
        }
    }
    let rust = ResponseCache::redis(RedisCache::new(t.clone()))
        .clock(t.shared_clock())
        .go_deep_agent_compat()
        .build()
        .unwrap();
    // temperature unset = 0, as the Go agent keys it.
    let hi = LlmRequest::prompt("gpt-4o-mini", "Hi");
    let a = block_on(rust.try_get_with(&hi, &none(), Model::default().fail())).unwrap();
    assert_eq!((a.status, a.text()), (Status::Hit, "Hello from Go"));
    let miss = LlmRequest::prompt("gpt-4o-mini", "Bye");
    block_on(rust.try_get_with(&miss, &none(), Model::default().answer("Bye!"))).unwrap();
    block_on(rust.flush()).unwrap();
    let stat = |s: &str| {
        block_on(t.get(format!("go-deep-agent:stats:{s}").as_bytes()))
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert_eq!(stat("hits").as_deref(), Some("6"));
    assert_eq!(stat("misses").as_deref(), Some("4"));
    assert_eq!(stat("writes").as_deref(), Some("4"));
    let report = block_on(rust.analytics()).unwrap();
    assert_eq!(
        (report.stats.hits, report.stats.misses, report.stats.writes),
        (6, 4, 4)
    );
}

#[test]
fn go_compat_rejects_namespaces_and_tags() {
    let t = MemTransport::new();
    let go = redis_cache(&t).go_deep_agent_compat().build().unwrap();
    assert_eq!(go.key_scheme().prefix(), "go-deep-agent");
    assert!(go.key(&question(), &none().namespace("x")).is_err());
    assert!(go.key(&question(), &none().tag("x")).is_err());
    assert!(block_on(go.invalidate_namespace("x")).is_err());
    assert!(block_on(go.invalidate_tag("x")).is_err());
    // An explicit prefix wins over the compat default.
    let go = redis_cache(&t)
        .go_deep_agent_compat()
        .prefix("agents")
        .build()
        .unwrap();
    assert!(
        go.key(&question(), &none())
            .unwrap()
            .starts_with("agents:cache:")
    );
}

#[test]
fn analytics_accumulate_across_instances_sharing_one_redis() {
    let t = MemTransport::new();
    let prices = Prices::new().price("gpt-4o-mini", ModelPrice::per_million(0.15, 0.60));
    let a = redis_cache(&t).prices(prices.clone()).build().unwrap();
    let b2 = redis_cache(&t).prices(prices).build().unwrap();
    let model = Model::default();
    ask(&a, &none(), model.answer("Paris.")).unwrap(); // miss + write on a
    ask(&b2, &none(), model.answer("x")).unwrap(); // hit on b
    ask(&a, &none(), model.answer("x")).unwrap(); // hit on a
    let other = LlmRequest::prompt("claude-haiku", "q");
    block_on(b2.try_get_with(&other, &none(), model.answer("y"))).unwrap(); // miss + write on b
    block_on(a.flush()).unwrap();
    block_on(b2.flush()).unwrap();

    for cache in [&a, &b2] {
        let report = block_on(cache.analytics()).unwrap();
        let gpt = report.models["gpt-4o-mini"];
        assert_eq!((gpt.hits, gpt.misses, gpt.writes), (2, 1, 1));
        assert_eq!(
            (gpt.prompt_tokens_saved, gpt.completion_tokens_saved),
            (200, 40)
        );
        assert_eq!(gpt.tokens_saved(), 240);
        // 2 hits × (100 × 0.15 + 20 × 0.60) / 1e6 USD
        assert!(
            (gpt.cost_saved_usd - 2.0 * 27.0 / 1e6).abs() < 1e-12,
            "{}",
            gpt.cost_saved_usd
        );
        assert!((gpt.hit_rate() - 2.0 / 3.0).abs() < 1e-12);
        let claude = report.models["claude-haiku"];
        assert_eq!((claude.hits, claude.misses, claude.writes), (0, 1, 1));
        assert_eq!(claude.cost_saved_usd, 0.0, "no price configured");
        let total = report.total();
        assert_eq!((total.hits, total.misses, total.writes), (2, 2, 2));
        assert_eq!(
            (report.stats.hits, report.stats.misses, report.stats.writes),
            (2, 2, 2)
        );
    }
    let local = a.local_analytics();
    assert_eq!(local.models["gpt-4o-mini"].hits, 1);
}

#[test]
fn a_miss_with_the_lease_costs_three_more_round_trips() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    for (i, expected) in [(0, 6), (1, 5)] {
        t.reset_counters();
        let r = LlmRequest::prompt("gpt-4o-mini", format!("q{i}"));
        block_on(cache.try_get_with(&r, &none(), Model::default().answer("a"))).unwrap();
        // Lookup, SET NX, the re-read under the lease, write, release (the first release
        // loads the script: EVALSHA answers NOSCRIPT, then EVAL).
        assert_eq!(t.calls(), expected, "{:?}", t.command_log());
    }
    t.reset_counters();
    block_on(cache.try_get_with(
        &LlmRequest::prompt("gpt-4o-mini", "q0"),
        &none(),
        Model::default().answer("a"),
    ))
    .unwrap();
    assert_eq!(t.calls(), 1, "a hit is one round trip, lease or not");
}

#[test]
fn analytics_ride_with_the_write_and_cost_no_extra_round_trip() {
    let t = MemTransport::new();
    // Without the lease a miss is two round trips; the lease adds its SET NX and release.
    let cache = redis_cache(&t).lease(false).build().unwrap();
    ask(&cache, &none(), Model::default().answer("x")).unwrap(); // warm the entry
    block_on(cache.flush()).unwrap();
    for _ in 0..3 {
        ask(&cache, &none(), Model::default().answer("x")).unwrap(); // hits, pending
    }
    t.reset_counters();
    let r = LlmRequest::prompt("gpt-4o-mini", "new");
    block_on(cache.try_get_with(&r, &none(), Model::default().answer("y"))).unwrap();
    assert_eq!(t.calls(), 2, "lookup + write, nothing else");
    let log = t.command_log();
    assert!(
        log.contains(&"HINCRBY".to_owned()) && log.contains(&"INCRBY".to_owned()),
        "{log:?}"
    );
    assert_eq!(
        block_on(
            t.exec(
                Cmd::new("HGET")
                    .arg("p:analytics:model:gpt-4o-mini")
                    .arg("hits")
            )
        )
        .unwrap(),
        Value::Bulk(b("3"))
    );
}

#[test]
fn reads_carry_analytics_once_enough_are_pending() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).flush_every(3).build().unwrap();
    for i in 0..3 {
        block_on(cache.get(&LlmRequest::prompt("m", format!("{i}")), &none())).unwrap();
    }
    assert_eq!(block_on(t.get(b"p:stats:misses")).unwrap(), None);
    t.reset_counters();
    block_on(cache.get(&question(), &none())).unwrap();
    assert_eq!(t.calls(), 1, "still one round trip");
    assert_eq!(block_on(t.get(b"p:stats:misses")).unwrap(), Some(b("3")));
}

#[test]
fn failed_flush_keeps_counts_pending() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    block_on(cache.get(&question(), &none())).unwrap();
    t.fail_next(1, ErrorKind::Io);
    assert!(block_on(cache.flush()).is_err());
    block_on(cache.flush()).unwrap();
    assert_eq!(block_on(t.get(b"p:stats:misses")).unwrap(), Some(b("1")));
}

#[test]
fn hit_rate_alert_fires_once_per_drop_below_the_threshold() {
    let t = MemTransport::new();
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let sink = alerts.clone();
    let cache = redis_cache(&t)
        .on_low_hit_rate(0.5, 4, move |a: &HitRateAlert| sink.lock().push(*a))
        .build()
        .unwrap();
    let model = Model::default();
    let miss = |i: usize| {
        let r = LlmRequest::prompt("m", format!("q{i}"));
        block_on(cache.try_get_with(&r, &none(), model.answer("a"))).unwrap();
    };
    for i in 0..4 {
        miss(i); // window 1: 0 of 4
    }
    assert_eq!(alerts.lock().len(), 1);
    let a = alerts.lock()[0];
    assert_eq!(
        (a.hits, a.misses, a.hit_rate, a.threshold),
        (0, 4, 0.0, 0.5)
    );
    for i in 4..8 {
        miss(i); // window 2: still low, no repeat
    }
    assert_eq!(alerts.lock().len(), 1);
    for i in 0..4 {
        miss(i); // window 3: 4 hits, recovers
    }
    for i in 100..104 {
        miss(i); // window 4: low again, fires again
    }
    assert_eq!(alerts.lock().len(), 2);
}

#[test]
fn corrupt_values_are_misses_not_errors() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let key = cache.key(&question(), &none()).unwrap();
    block_on(t.set(
        key.as_bytes(),
        &Bytes::from_static(b"\xff\x00"),
        SetOptions::default(),
    ))
    .unwrap();
    let a = ask(&cache, &none(), Model::default().answer("fresh")).unwrap();
    assert_eq!(a.status, Status::Miss);
    assert_eq!(cache.corrupt(), 1);
    assert!(
        ask(&cache, &none(), Model::default().fail())
            .unwrap()
            .is_hit()
    );
}

#[test]
fn fail_open_computes_while_redis_is_down_and_fail_closed_reports_it() {
    let t = MemTransport::new();
    let open = redis_cache(&t).build().unwrap();
    let closed = redis_cache(&t).fail_open(false).build().unwrap();
    t.set_down(true);
    let a = ask(&open, &none(), Model::default().answer("computed")).unwrap();
    assert_eq!((a.status, a.text()), (Status::Miss, "computed"));
    assert_eq!(open.errors(), 1, "the failed lookup; no write attempted");
    let err = ask(&closed, &none(), Model::default().answer("x")).unwrap_err();
    assert!(err.as_cache().is_some_and(Error::is_retryable), "{err:?}");
    assert!(block_on(open.get(&question(), &none())).is_err());
    t.set_down(false);
    assert_eq!(
        ask(&open, &none(), Model::default().answer("y"))
            .unwrap()
            .status,
        Status::Miss
    );
}

#[test]
fn put_then_get_and_delete() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let ctl = none().namespace("n1");
    block_on(cache.invalidate_namespace("n1")).unwrap();
    let key = block_on(cache.put(&question(), &ctl, &LlmResponse::new("stored"))).unwrap();
    assert_eq!(key, cache.key(&question(), &ctl).unwrap());
    assert_eq!(
        block_on(cache.get(&question(), &ctl))
            .unwrap()
            .unwrap()
            .text(),
        "stored"
    );
    assert!(block_on(cache.delete(&question(), &ctl)).unwrap());
    assert_eq!(block_on(cache.get(&question(), &ctl)).unwrap(), None);
}

#[test]
fn peek_does_not_count() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    ask(&cache, &none(), Model::default().answer("x")).unwrap();
    let before = cache.local_analytics().total();
    assert!(
        block_on(cache.peek(&question(), &none()))
            .unwrap()
            .is_some()
    );
    assert_eq!(cache.local_analytics().total(), before);
}

#[test]
fn purge_pattern_deletes_matching_keys_only() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let model = Model::default();
    for i in 0..5 {
        let r = LlmRequest::prompt("m", format!("q{i}"));
        block_on(cache.try_get_with(&r, &none().namespace("old"), model.answer("a"))).unwrap();
    }
    ask(&cache, &none(), model.answer("keep")).unwrap();
    assert_eq!(block_on(cache.purge_pattern("old:*")).unwrap(), 5);
    assert!(ask(&cache, &none(), model.fail()).unwrap().is_hit());
    assert!(block_on(cache.purge_pattern("")).is_err());
}

#[test]
fn local_backend_keeps_generations_and_tags_in_memory() {
    let clock = ManualClock::new(1_000);
    let shared: crate::SharedClock = Arc::new(clock.clone());
    let memory = MemoryCache::builder()
        .clock(shared.clone())
        .max_entries(100)
        .build()
        .unwrap();
    let cache = ResponseCache::local(memory).clock(shared).build().unwrap();
    let model = Model::default();
    let ns = none().namespace("t").tag("x");
    ask(&cache, &ns, model.answer("v")).unwrap();
    assert!(ask(&cache, &ns, model.fail()).unwrap().is_hit());
    assert_eq!(block_on(cache.invalidate_namespace("t")).unwrap(), 1);
    assert_eq!(
        ask(&cache, &ns, model.answer("v2")).unwrap().status,
        Status::Miss
    );
    assert!(ask(&cache, &ns, model.fail()).unwrap().is_hit());
    clock.advance(Duration::from_millis(1));
    block_on(cache.invalidate_tag("x")).unwrap();
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        ask(&cache, &ns, model.answer("v3")).unwrap().status,
        Status::Miss
    );
    let report = block_on(cache.analytics()).unwrap();
    assert_eq!(report.models["gpt-4o-mini"].hits, 2);
    assert_eq!(report.stats.writes, 3);
}

/// Returns `Pending` once (waking itself), so that other futures get polled.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[test]
fn warm_runs_with_bounded_concurrency_reports_progress_and_skips_cached() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    // One already cached.
    block_on(cache.try_get_with(
        &LlmRequest::prompt("m", "q0"),
        &none(),
        Model::default().answer("cached"),
    ))
    .unwrap();
    let requests: Vec<LlmRequest> = (0..20)
        .map(|i| LlmRequest::prompt("m", format!("q{i}")))
        .collect();
    let in_flight = Cell::new(0usize);
    let max_in_flight = Cell::new(0usize);
    let mut seen = Vec::new();
    let report = block_on(
        cache.warm(
            requests.clone(),
            |r: LlmRequest| {
                let q = r.prompt_text().unwrap().to_owned();
                let (in_flight, max_in_flight) = (&in_flight, &max_in_flight);
                async move {
                    in_flight.set(in_flight.get() + 1);
                    max_in_flight.set(max_in_flight.get().max(in_flight.get()));
                    for _ in 0..3 {
                        YieldNow(false).await;
                    }
                    in_flight.set(in_flight.get() - 1);
                    if q == "q7" {
                        Err("rate limited".to_owned())
                    } else {
                        Ok(LlmResponse::new(format!("A {q}")))
                    }
                }
            },
            WarmOptions::new()
                .concurrency(3)
                .on_progress(|p: &WarmProgress| seen.push(*p)),
        ),
    );
    assert_eq!(
        max_in_flight.get(),
        3,
        "bounded by the concurrency, and reaching it"
    );
    assert_eq!(report.progress.total, 20);
    assert_eq!(
        (
            report.progress.computed,
            report.progress.skipped,
            report.progress.failed
        ),
        (18, 1, 1)
    );
    assert_eq!(report.failures, vec![(7, "rate limited".to_owned())]);
    assert_eq!(seen.len(), 20);
    assert!(seen.windows(2).all(|w| w[1].done == w[0].done + 1));
    assert_eq!(seen.last().unwrap().done, 20);
    // Warmed answers are hits; warming itself counted no lookups.
    let local = cache.local_analytics().total();
    assert_eq!((local.hits, local.misses), (0, 1));
    let a = block_on(cache.get(&requests[5], &none())).unwrap().unwrap();
    assert_eq!(a.text(), "A q5");
    assert_eq!(
        block_on(cache.get(&requests[0], &none()))
            .unwrap()
            .unwrap()
            .text(),
        "cached"
    );
}

#[test]
fn warm_in_a_namespace_after_invalidation_recomputes() {
    let t = MemTransport::new();
    let cache = redis_cache(&t).build().unwrap();
    let ctl = none().namespace("faq");
    let reqs = || (0..3).map(|i| LlmRequest::prompt("m", format!("q{i}")));
    let compute = |_: LlmRequest| async { Ok::<_, String>(LlmResponse::new("a")) };
    let r = block_on(cache.warm(reqs(), compute, WarmOptions::new().control(ctl.clone())));
    assert_eq!(r.progress.computed, 3);
    let r = block_on(cache.warm(reqs(), compute, WarmOptions::new().control(ctl.clone())));
    assert_eq!(r.progress.skipped, 3);
    block_on(cache.invalidate_namespace("faq")).unwrap();
    let r = block_on(cache.warm(reqs(), compute, WarmOptions::new().control(ctl.clone())));
    assert_eq!(r.progress.computed, 3);
    assert!(
        block_on(cache.get(&LlmRequest::prompt("m", "q1"), &ctl))
            .unwrap()
            .is_some()
    );
}

#[test]
fn debug_names_the_backend_and_prefix() {
    let t = MemTransport::new();
    let s = format!("{:?}", redis_cache(&t).build().unwrap());
    assert!(s.contains("ResponseCache") && s.contains("\"p\""), "{s}");
}

// ---- one computation per miss: in-process single-flight and the lease ----

mod stampede {
    use super::*;
    use crate::compute::tests::support::TokioClock;

    /// A Redis-backed response cache on a fresh in-memory Redis whose time is tokio's.
    fn setup() -> (MemTransport, Arc<TokioClock>, ResponseCacheBuilder) {
        let clock = TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        let builder = redis_cache_on(&t, &clock);
        (t, clock, builder)
    }

    fn redis_cache_on(t: &MemTransport, clock: &Arc<TokioClock>) -> ResponseCacheBuilder {
        ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
            .clock(clock.clone())
    }

    /// Takes the lease of `question()` as another process would, for `ttl`.
    async fn foreign_lease(t: &MemTransport, cache: &ResponseCache, token: &str, ttl: Duration) {
        let key = cache.key(&question(), &none()).unwrap();
        let hash = key.rsplit(':').next().unwrap().to_owned();
        t.set(
            format!("p:lock:{hash}").as_bytes(),
            &b(token),
            SetOptions::ttl(Some(ttl)).nx(),
        )
        .await
        .unwrap();
    }

    fn slow_model(
        calls: &Arc<AtomicUsize>,
        text: &'static str,
        delay_ms: u64,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = TestResult> + Send>> + Send + use<> {
        let calls = calls.clone();
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(LlmResponse::new(text).with_usage(Usage::new(10, 5)))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_in_one_process_compute_once() {
        let (t, _clock, builder) = setup();
        let cache = builder.build().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let cache = cache.clone();
            let f = slow_model(&calls, "Paris.", 200);
            tasks.push(tokio::spawn(async move {
                cache.try_get_with(&question(), &none(), f).await
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            let answer = task.await.unwrap().unwrap();
            assert_eq!(answer.text(), "Paris.");
            statuses.push(answer.status);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one model call for 50 misses"
        );
        let count = |s| statuses.iter().filter(|&&x| x == s).count();
        assert_eq!(
            (count(Status::Miss), count(Status::Coalesced)),
            (1, 49),
            "the caller that computed is the MISS; the 49 that joined it are COALESCED"
        );
        assert!(
            !t.keys().iter().any(|k| k.starts_with(b"p:lock:")),
            "the lease was released"
        );
        let again = cache
            .try_get_with(&question(), &none(), slow_model(&calls, "x", 0))
            .await
            .unwrap();
        assert_eq!((again.status, again.text()), (Status::Hit, "Paris."));
    }

    #[tokio::test(start_paused = true)]
    async fn two_instances_share_one_computation_through_the_lease() {
        let (t, clock, _) = setup();
        let instance = || redis_cache_on(&t, &clock).build().unwrap();
        let (a, b_) = (instance(), instance());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let cache = if i % 2 == 0 { a.clone() } else { b_.clone() };
            let f = slow_model(&calls, "Paris.", 300);
            tasks.push(tokio::spawn(async move {
                cache.try_get_with(&question(), &none(), f).await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().text(), "Paris.");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one call across both");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_holders_lease_expires_and_the_waiter_computes() {
        let (t, _clock, builder) = setup();
        let cache = builder.lease_ttl(Duration::from_secs(2)).build().unwrap();
        // Another process took the lease and died.
        foreign_lease(&t, &cache, "someone-else", Duration::from_secs(2)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let answer = cache
            .try_get_with(&question(), &none(), slow_model(&calls, "Paris.", 0))
            .await
            .unwrap();
        assert_eq!(answer.text(), "Paris.");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
            "computed once the foreign lease expired, after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_max_wait_computes_anyway() {
        let (t, _clock, builder) = setup();
        let cache = builder
            .max_wait(Duration::from_millis(500))
            .build()
            .unwrap();
        foreign_lease(&t, &cache, "held-for-long", Duration::from_secs(3600)).await;
        let key = cache.key(&question(), &none()).unwrap();
        let hash = key.rsplit(':').next().unwrap().to_owned();
        let calls = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let answer = cache
            .try_get_with(&question(), &none(), slow_model(&calls, "Paris.", 0))
            .await
            .unwrap();
        assert_eq!(answer.text(), "Paris.");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(1),
            "{waited:?}"
        );
        assert_eq!(
            t.get(format!("p:lock:{hash}").as_bytes()).await.unwrap(),
            Some(b("held-for-long")),
            "someone else's lease is left alone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_hands_the_miss_to_a_waiter() {
        let (_t, _clock, builder) = setup();
        let cache = builder.build().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let leader = {
            let cache = cache.clone();
            let f = slow_model(&calls, "never", 10_000);
            tokio::spawn(async move { cache.try_get_with(&question(), &none(), f).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let cache = cache.clone();
            let f = slow_model(&calls, "Paris.", 100);
            tokio::spawn(async move { cache.try_get_with(&question(), &none(), f).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let answer = waiter.await.unwrap().unwrap();
        assert_eq!(
            answer.text(),
            "Paris.",
            "the waiter computed with its own closure"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_leaders_error_reaches_its_waiters_and_poisons_nothing() {
        let (_t, _clock, builder) = setup();
        let cache = builder.build().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .try_get_with(&question(), &none(), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<LlmResponse, _>("model down".to_owned())
                    })
                    .await
            }));
        }
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert_eq!(err.compute_error().map(String::as_str), Some("model down"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let ok = cache
            .try_get_with(&question(), &none(), slow_model(&calls, "Paris.", 0))
            .await
            .unwrap();
        assert_eq!((ok.status, ok.text()), (Status::Miss, "Paris."));
    }
}
