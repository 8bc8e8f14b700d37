//! Cached rig models: the provider is asked once per answer, and what rig reads from the
//! cache is what it read from the provider.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use larder::response::{CacheControl, ResponseCache};
use larder::rig::{CachedTransport, cached};
use larder::testing::MemTransport;
use larder::{RedisCache, SharedTransport};
use rig_core::ProviderError;
use rig_core::completion::{AssistantContent, CompletionRequest, CompletionResponse};
use rig_core::driver::Model;
use rig_core::http_client::DynHttpClient;
use rig_core::providers::anthropic::AnthropicConfig;
use rig_core::providers::openai::OpenAIConfig;
use rig_core::providers::openai::wire::Chat;
use rig_core::streaming::{CompletionStream, Item, StreamEvent};
use serde_json::{Value as Json, json};

use crate::fake::{Fake, Reply};
use crate::{Backend, answers, unique_prefix};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../core/tests/fixtures/streams"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}.sse")).expect("fixture")
}

/// An OpenAI Chat Completions reply asking for a tool call.
const TOOL_CALL_BODY: &str = r#"{"id":"chatcmpl-rig1","object":"chat.completion","created":1730000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_w1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"call_t2","type":"function","function":{"name":"get_time","arguments":"{\"timezone\":\"Europe/Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":50,"completion_tokens":12,"total_tokens":62}}"#;

/// An OpenAI Chat Completions text reply.
const TEXT_BODY: &str = r#"{"id":"chatcmpl-rig2","object":"chat.completion","created":1730000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Sunny, 21 °C."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}"#;

type Cached<W> = Model<W, CachedTransport<DynHttpClient>>;

fn openai_chat(fake: &Fake, cache: &ResponseCache) -> Cached<Chat> {
    cached(
        OpenAIConfig::new("sk-test")
            .connect(fake.clone())
            .chat("gpt-4o-mini"),
        cache,
    )
}

/// Every item of a streamed call, then its response (or the error that ended it).
async fn read(
    mut stream: CompletionStream,
) -> (
    Vec<Item<StreamEvent>>,
    Result<CompletionResponse, ProviderError>,
) {
    let mut items = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the stream stalled")
    {
        match item {
            Ok(item) => items.push(item),
            Err(e) => return (items, Err(e)),
        }
    }
    (items, stream.finish().await)
}

/// A request for `prompt` (with `max_tokens`, which Anthropic requires).
fn ask(prompt: &str) -> CompletionRequest {
    let mut request = CompletionRequest::new(prompt.to_owned());
    request.max_tokens = Some(256);
    request
}

/// The tool calls of a response, as (id, name, arguments).
fn tool_calls(response: &CompletionResponse) -> Vec<(Json, Json, Json)> {
    response
        .choice
        .iter()
        .filter_map(|c| match c {
            AssistantContent::ToolCall(call) => {
                let v = serde_json::to_value(call).unwrap();
                Some((
                    v["id"].clone(),
                    v["function"]["name"].clone(),
                    v["function"]["arguments"].clone(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn json_of(value: &impl serde::Serialize) -> Json {
    serde_json::to_value(value).unwrap()
}

pub(crate) async fn unary_miss_then_hit_with_tool_calls_intact(be: &impl Backend) {
    let cache = answers(be, &unique_prefix("unary"));
    let fake = Fake::new(Reply::Json(TOOL_CALL_BODY.into()));
    let model = openai_chat(&fake, &cache);
    let first = model.call("What's the weather in Paris?").await.unwrap();
    let second = model.call("What's the weather in Paris?").await.unwrap();
    assert_eq!(fake.unary(), 1, "the second call is a hit");
    assert_eq!(
        tool_calls(&second),
        vec![
            (
                json!({"provider": "call_w1"}),
                json!("get_weather"),
                json!({"city": "Paris"})
            ),
            (
                json!({"provider": "call_t2"}),
                json!("get_time"),
                json!({"timezone": "Europe/Paris"})
            ),
        ]
    );
    assert_eq!(first.choice, second.choice);
    assert_eq!(json_of(&first.usage), json_of(&second.usage));
    assert_eq!(first.raw, second.raw, "the same provider document");
    assert_eq!(first.finish_reason(), second.finish_reason());
    assert_eq!(first.provider_request_id.as_deref(), Some("req_fake"));
    assert_eq!(second.provider_request_id, None, "a hit made no request");
    // Another prompt is another request.
    model.call("And in Rome?").await.unwrap();
    assert_eq!(fake.unary(), 2);
    // The stored answer counts its tokens as saved.
    cache.flush().await.unwrap();
    let report = cache.analytics().await.unwrap();
    assert_eq!(report.models["gpt-4o-mini"].tokens_saved(), 62);
}

pub(crate) async fn streams_miss_then_hit_with_identical_items_per_format(be: &impl Backend) {
    let cache = answers(be, &unique_prefix("streams"));
    let openai = OpenAIConfig::new("sk-test");
    let anthropic = AnthropicConfig::new("sk-ant-test");
    for (name, fixture_name, calls) in [
        ("openai chat", "openai_chat_tools", 2),
        ("openai responses", "openai_responses_tools", 1),
        ("anthropic messages", "anthropic_tools", 1),
    ] {
        let fake = Fake::new(Reply::sse(fixture(fixture_name)));
        let prompt = format!("Weather and time in Paris? ({name})");
        let stream = || match name {
            "openai chat" => cached(
                openai.clone().connect(fake.clone()).chat("gpt-4o-mini"),
                &cache,
            )
            .stream(ask(&prompt))
            .unwrap(),
            "openai responses" => cached(
                openai
                    .clone()
                    .connect(fake.clone())
                    .responses("gpt-4o-mini"),
                &cache,
            )
            .stream(ask(&prompt))
            .unwrap(),
            _ => cached(
                anthropic
                    .clone()
                    .connect(fake.clone())
                    .completion("claude-sonnet-4-5"),
                &cache,
            )
            .stream(ask(&prompt))
            .unwrap(),
        };
        let (items, first) = read(stream()).await;
        let first = first.unwrap_or_else(|e| panic!("{name}: {e}"));
        let (again, second) = read(stream()).await;
        let second = second.unwrap();
        assert_eq!(fake.streams(), 1, "{name}: the second stream is a hit");
        assert_eq!(items, again, "{name}: the same items, in order");
        assert!(!items.is_empty());
        assert_eq!(first.choice, second.choice, "{name}");
        assert_eq!(json_of(&first.usage), json_of(&second.usage), "{name}");
        let calls_seen = tool_calls(&second);
        assert_eq!(calls_seen.len(), calls, "{name}: {calls_seen:?}");
        assert_eq!(calls_seen[0].1, json!("get_weather"), "{name}");
        assert_eq!(calls_seen[0].2["city"], json!("Paris"), "{name}");
        assert_eq!(
            tool_calls(&first),
            calls_seen,
            "{name}: ids and arguments intact"
        );
    }
}

pub(crate) async fn unary_and_streamed_calls_are_cached_apart(be: &impl Backend) {
    let cache = answers(be, &unique_prefix("modes"));
    let fake = Fake::new(Reply::sse(fixture("openai_chat_text")));
    let model = openai_chat(&fake, &cache);
    let (_, streamed) = read(model.stream("Hello?").unwrap()).await;
    streamed.unwrap();
    fake.answer(Reply::Json(TEXT_BODY.into()));
    let unary = model.call("Hello?").await.unwrap();
    assert_eq!(
        (fake.streams(), fake.unary()),
        (1, 1),
        "a stream is no unary answer"
    );
    assert_eq!(json_of(&unary.choice)[0]["text"], json!("Sunny, 21 °C."));
    model.call("Hello?").await.unwrap();
    read(model.stream("Hello?").unwrap()).await.1.unwrap();
    assert_eq!(
        (fake.streams(), fake.unary()),
        (1, 1),
        "each is a hit of its own"
    );
}

pub(crate) async fn incomplete_and_failed_streams_are_not_stored(be: &impl Backend) {
    let cache = answers(be, &unique_prefix("cut"));
    let whole = String::from_utf8(fixture("openai_chat_tools")).unwrap();
    // Cut before the finish reason: rig reports the truncation, nothing is stored.
    let cut: String = whole.split_inclusive("\n\n").take(5).collect();
    let fake = Fake::new(Reply::sse(cut.into_bytes()));
    let model = openai_chat(&fake, &cache);
    for n in 1..=2 {
        let (items, end) = read(model.stream("cut").unwrap()).await;
        assert!(!items.is_empty());
        assert!(matches!(end, Err(ProviderError::Truncated)), "{end:?}");
        assert_eq!(fake.streams(), n, "never stored");
    }
    // A finish reason but no `[DONE]` (as some OpenAI-compatible servers end): rig takes the
    // end as it would from the provider; larder cannot tell it complete and stores nothing.
    let no_done = whole.replace("data: [DONE]\n\n", "");
    let fake = Fake::new(Reply::sse(no_done.into_bytes()));
    let model = openai_chat(&fake, &cache);
    for n in 1..=2 {
        let (_, end) = read(model.stream("no done").unwrap()).await;
        assert_eq!(tool_calls(&end.unwrap()).len(), 2);
        assert_eq!(fake.streams(), n);
    }
    // The transport fails mid-stream: rig gets the transport's own error.
    let fake = Fake::new(Reply::Sse {
        bytes: whole
            .split_inclusive("\n\n")
            .take(6)
            .collect::<String>()
            .into_bytes(),
        gap: Duration::ZERO,
        fail: true,
    });
    let model = openai_chat(&fake, &cache);
    for n in 1..=2 {
        let (_, end) = read(model.stream("fails").unwrap()).await;
        let e = end.unwrap_err();
        assert!(e.to_string().contains("Stream ended"), "{e}");
        assert_eq!(fake.streams(), n);
    }
    // The provider's error event in a 200 stream.
    let fake = Fake::new(Reply::sse(fixture("openai_chat_error")));
    let model = openai_chat(&fake, &cache);
    for n in 1..=2 {
        let (_, end) = read(model.stream("error event").unwrap()).await;
        assert!(end.is_err());
        assert_eq!(fake.streams(), n);
    }
    // An error status.
    let fake = Fake::new(Reply::Status(
        429,
        r#"{"error":{"message":"slow down"}}"#.into(),
    ));
    let model = openai_chat(&fake, &cache);
    for n in 1..=2 {
        let Err(e) = model.stream("429").unwrap().finish().await else {
            panic!("a 429 is an error");
        };
        assert_eq!(e.provider_response_status().map(|s| s.as_u16()), Some(429));
        assert_eq!(fake.streams(), n);
    }
}

pub(crate) async fn failed_and_error_replies_are_not_stored(be: &impl Backend) {
    let cache = answers(be, &unique_prefix("failed"));
    let fake = Fake::new(Reply::Status(
        500,
        r#"{"error":{"message":"overloaded"}}"#.into(),
    ));
    let model = openai_chat(&fake, &cache);
    for n in 1..=2 {
        let e = model.call("Hi").await.unwrap_err();
        assert_eq!(e.provider_response_status().map(|s| s.as_u16()), Some(500));
        assert_eq!(fake.unary(), n, "a failed reply is never stored");
    }
    // A 200 reply whose body is the provider's error.
    fake.answer(Reply::Json(
        r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#.into(),
    ));
    for n in 3..=4 {
        assert!(model.call("Hi").await.is_err());
        assert_eq!(fake.unary(), n);
    }
    // Then a good answer is stored as usual.
    fake.answer(Reply::Json(TEXT_BODY.into()));
    model.call("Hi").await.unwrap();
    model.call("Hi").await.unwrap();
    assert_eq!(fake.unary(), 5);
}

pub(crate) async fn concurrent_identical_calls_reach_the_provider_once(be: &impl Backend) {
    let cache = answers(be, &unique_prefix("stampede"));
    let fake = Fake::new(Reply::Sse {
        bytes: fixture("openai_chat_tools"),
        gap: Duration::from_millis(5),
        fail: false,
    });
    let model = openai_chat(&fake, &cache);
    let streams: Vec<_> = (0..8)
        .map(|_| {
            let model = model.clone();
            tokio::spawn(async move { read(model.stream("together").unwrap()).await })
        })
        .collect();
    let mut seen = Vec::new();
    for s in streams {
        let (items, end) = s.await.unwrap();
        assert_eq!(tool_calls(&end.unwrap()).len(), 2);
        seen.push(items);
    }
    assert_eq!(fake.streams(), 1, "one upstream stream for every caller");
    assert!(seen.windows(2).all(|w| w[0] == w[1]));

    fake.answer(Reply::Json(TOOL_CALL_BODY.into()));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let model = model.clone();
            tokio::spawn(async move { model.call("together, unary").await })
        })
        .collect();
    for c in calls {
        assert_eq!(tool_calls(&c.await.unwrap().unwrap()).len(), 2);
    }
    assert_eq!(fake.unary(), 1, "coalesced onto one request");
}

pub(crate) async fn two_instances_share_answers(be: &impl Backend) {
    let prefix = unique_prefix("shared");
    let (a, b) = (answers(be, &prefix), answers(be, &prefix));
    let fake = Fake::new(Reply::Json(TOOL_CALL_BODY.into()));
    let first = openai_chat(&fake, &a).call("shared?").await.unwrap();
    let second = openai_chat(&fake, &b).call("shared?").await.unwrap();
    assert_eq!(fake.unary(), 1, "the other instance's answer is a hit");
    assert_eq!(tool_calls(&first), tool_calls(&second));
    fake.answer(Reply::sse(fixture("anthropic_tools")));
    let anthropic = AnthropicConfig::new("sk-ant-test");
    let stream = |cache: &ResponseCache| {
        cached(
            anthropic
                .clone()
                .connect(fake.clone())
                .completion("claude-sonnet-4-5"),
            cache,
        )
        .stream(ask("shared stream?"))
        .unwrap()
    };
    let (items, _) = read(stream(&a)).await;
    let (again, end) = read(stream(&b)).await;
    assert_eq!(fake.streams(), 1);
    assert_eq!(items, again);
    assert_eq!(tool_calls(&end.unwrap()).len(), 1);
}

/// Not per backend: a cache that cannot be reached, or refuses, never fails a request.
#[tokio::test]
async fn a_failing_cache_falls_through_to_the_provider() {
    let redis = MemTransport::new();
    let open = ResponseCache::redis(RedisCache::new(Arc::new(redis.clone()) as SharedTransport))
        .build()
        .unwrap();
    let closed = ResponseCache::redis(RedisCache::new(Arc::new(redis.clone()) as SharedTransport))
        .fail_open(false)
        .build()
        .unwrap();
    redis.set_down(true);
    for cache in [&open, &closed] {
        let fake = Fake::new(Reply::Json(TOOL_CALL_BODY.into()));
        let model = openai_chat(&fake, cache);
        for n in 1..=2 {
            let r = model.call("down").await.unwrap();
            assert_eq!(tool_calls(&r).len(), 2);
            assert_eq!(fake.unary(), n);
        }
        fake.answer(Reply::sse(fixture("openai_chat_tools")));
        for n in 1..=2 {
            let (_, end) = read(model.stream("down").unwrap()).await;
            assert_eq!(tool_calls(&end.unwrap()).len(), 2);
            assert_eq!(fake.streams(), n);
        }
        assert!(cache.errors() > 0, "the failures are counted");
    }
    // Back up: cached again.
    redis.set_down(false);
    let fake = Fake::new(Reply::Json(TEXT_BODY.into()));
    let model = openai_chat(&fake, &open);
    model.call("up").await.unwrap();
    model.call("up").await.unwrap();
    assert_eq!(fake.unary(), 1);
}

/// Not per backend: the transport's controls apply to every request, and are checked when
/// set.
#[tokio::test]
async fn controls_apply_to_every_request_and_are_checked() {
    let redis = MemTransport::new();
    let cache = ResponseCache::redis(RedisCache::new(Arc::new(redis.clone()) as SharedTransport))
        .build()
        .unwrap();
    let fake = Fake::new(Reply::Json(TEXT_BODY.into()));
    let plain = OpenAIConfig::new("sk-test")
        .connect(fake.clone())
        .chat("gpt-4o-mini");
    let refused = CachedTransport::new(plain.transport.clone(), cache.clone())
        .with_control(CacheControl::new().ttl(Duration::ZERO));
    assert!(matches!(refused, Err(larder::Error::InvalidInput(_))));
    let no_store = CachedTransport::new(plain.transport.clone(), cache.clone())
        .with_control(CacheControl::new().no_store())
        .unwrap();
    let model = Model::new(plain.wire.clone(), no_store);
    model.call("not kept").await.unwrap();
    model.call("not kept").await.unwrap();
    assert_eq!(fake.unary(), 2, "no-store: every call reaches the provider");
    let tagged = CachedTransport::new(plain.transport.clone(), cache.clone())
        .with_control(CacheControl::new().namespace("agents").tag("rig"))
        .unwrap();
    let model = Model::new(plain.wire.clone(), tagged);
    model.call("kept").await.unwrap();
    model.call("kept").await.unwrap();
    assert_eq!(fake.unary(), 3);
    assert!(
        redis
            .keys()
            .iter()
            .any(|k| k.starts_with(b"larder:cache:agents:")),
        "stored in the namespace: {:?}",
        redis.keys()
    );
    cache.invalidate_tag("rig").await.unwrap();
    model.call("kept").await.unwrap();
    assert_eq!(fake.unary(), 4, "invalidated with its tag");
}
