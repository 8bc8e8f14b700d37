//! A fake model provider speaking the OpenAI (chat completions, completions, responses,
//! embeddings) and Anthropic (messages) APIs, streamed and not, for tests and benchmarks of
//! the proxy. It stands in for the provider only.
//!
//! - Answers are built from the request (`You said: <last user text>`), with tool calls
//!   when the request has `tools`, usage (and the usage chunk when
//!   `stream_options.include_usage`), and ids numbered per call (`chatcmpl-fake-7`), so an
//!   answer served from a cache is told apart from a new one by its id.
//! - `x-fake-status: N` on a request makes it fail with status N (an error body in the
//!   API's shape); [`FakeLlm::fail_next`] does the same for the next calls;
//!   `x-fake-latency-ms` / [`FakeLlm::set_latency`] delay the answer (and each streamed
//!   chunk by [`FakeLlm::set_chunk_gap`]).
//! - `GET /v1/models` answers a model list (for pass-through tests).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Default)]
struct Behaviour {
    fail_next: Vec<u16>,
    latency: Duration,
    chunk_gap: Duration,
}

struct Inner {
    calls: AtomicU64,
    behaviour: Mutex<Behaviour>,
    /// The credential headers of the last model call (`authorization`, `x-api-key`).
    last_credentials: Mutex<(Option<String>, Option<String>)>,
}

/// A fake provider listening on 127.0.0.1 (a free port). Stops when dropped.
pub struct FakeLlm {
    inner: Arc<Inner>,
    server: crate::server::Spawned,
}

impl std::fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlm")
            .field("url", &self.url())
            .field("calls", &self.calls())
            .finish()
    }
}

impl FakeLlm {
    /// Starts one on a free port of 127.0.0.1, in the current tokio runtime.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start() -> io::Result<FakeLlm> {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts one on `addr`.
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound.
    pub async fn start_on(addr: &str) -> io::Result<FakeLlm> {
        let inner = Arc::new(Inner {
            calls: AtomicU64::new(0),
            behaviour: Mutex::new(Behaviour::default()),
            last_credentials: Mutex::new((None, None)),
        });
        let router = Router::new().fallback(answer).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let server = crate::server::Spawned::spawn(listener, |listener, stop| async move {
            crate::server::serve(
                router,
                listener,
                crate::server::Limits {
                    max_connections: 100_000,
                    header_read_timeout: Duration::from_secs(30),
                },
                || (),
                stop,
            )
            .await;
            Ok(())
        })?;
        Ok(FakeLlm { inner, server })
    }

    /// Its base URL, `http://127.0.0.1:PORT` (the API paths start with `/v1`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Requests answered on the model routes (errors included).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// The `Authorization` and `x-api-key` headers of the last model call (to check which
    /// credential reached the provider).
    pub fn last_credentials(&self) -> (Option<String>, Option<String>) {
        self.inner.last_credentials.lock().clone()
    }

    /// The next `n` model calls fail with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.inner
            .behaviour
            .lock()
            .fail_next
            .extend(std::iter::repeat_n(status, n));
    }

    /// Every answer waits this long before its headers.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.behaviour.lock().latency = latency;
    }

    /// Each streamed chunk after the first waits this long.
    pub fn set_chunk_gap(&self, gap: Duration) {
        self.inner.behaviour.lock().chunk_gap = gap;
    }
}

async fn answer(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let headers = req.headers().clone();
    if method == axum::http::Method::GET && path == "/v1/models" {
        return json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "larder"}]}),
        );
    }
    let api = match path.as_str() {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "completions",
        "/v1/responses" => "responses",
        "/v1/embeddings" => "embeddings",
        "/v1/messages" => "messages",
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"message": format!("no route {path}"), "type": "not_found"}}),
            );
        }
    };
    let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let credential = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    *inner.last_credentials.lock() = (credential("authorization"), credential("x-api-key"));
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (fail, latency, gap) = {
        let mut b = inner.behaviour.lock();
        let fail = (!b.fail_next.is_empty()).then(|| b.fail_next.remove(0));
        (fail, b.latency, b.chunk_gap)
    };
    let header_ms = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let latency = header_ms("x-fake-latency-ms").map_or(latency, Duration::from_millis);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let status = header_ms("x-fake-status")
        .and_then(|s| u16::try_from(s).ok())
        .or(fail);
    if let Some(status) = status.filter(|s| *s >= 300) {
        return failure(api, status);
    }
    let said = last_user_text(&request);
    let text = format!("You said: {said}");
    let model = request["model"].as_str().unwrap_or("fake-model").to_owned();
    let tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    let stream = request["stream"].as_bool().unwrap_or(false);
    let usage_chunk = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let a = Answer {
        n,
        text,
        model,
        tools,
    };
    if !stream || api == "embeddings" {
        let v = match api {
            "chat" => a.chat(),
            "completions" => a.completion(),
            "responses" => a.response(),
            "embeddings" => a.embeddings(&request),
            _ => a.message(),
        };
        return json_response(StatusCode::OK, &v);
    }
    let events = match api {
        "chat" => a.chat_events(usage_chunk),
        "completions" => a.completion_events(),
        "responses" => a.response_events(),
        _ => a.message_events(),
    };
    let body =
        futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(e))
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn failure(api: &str, status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let v = if api == "messages" {
        json!({"type": "error", "error": {"type": "api_error", "message": format!("fake failure {}", status.as_u16())}})
    } else {
        json!({"error": {"message": format!("fake failure {}", status.as_u16()), "type": "server_error", "param": null, "code": null}})
    };
    let mut r = json_response(status, &v);
    let _ = r
        .headers_mut()
        .insert("x-fake-failure", "1".parse().expect("valid"));
    r
}

fn last_user_text(request: &Value) -> String {
    let from_content = |c: &Value| -> String {
        match c {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    };
    if let Some(msgs) = request["messages"].as_array()
        && let Some(m) = msgs.iter().rev().find(|m| m["role"] == "user")
    {
        return from_content(&m["content"]);
    }
    match &request["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| from_content(&m["content"]))
            .unwrap_or_default(),
        _ => request["prompt"].as_str().unwrap_or_default().to_owned(),
    }
}

struct Answer {
    n: u64,
    text: String,
    model: String,
    tools: bool,
}

fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn named(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

impl Answer {
    fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, w) in self.text.split(' ').enumerate() {
            out.push(if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            });
        }
        out
    }

    fn chat(&self) -> Value {
        let (message, finish) = if self.tools {
            (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": format!("call_fake_{}", self.n), "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
                "tool_calls",
            )
        } else {
            (
                json!({"role": "assistant", "content": self.text, "refusal": null}),
                "stop",
            )
        };
        json!({
            "id": format!("chatcmpl-fake-{}", self.n), "object": "chat.completion",
            "created": 1_730_000_000, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                      "prompt_tokens_details": {"cached_tokens": 0}}
        })
    }

    fn chat_events(&self, usage: bool) -> Vec<String> {
        let id = format!("chatcmpl-fake-{}", self.n);
        let chunk = |delta: Value, finish: Value| {
            sse(
                &json!({"id": id, "object": "chat.completion.chunk", "created": 1_730_000_000,
                "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": null,
                "finish_reason": finish}]}),
            )
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        if self.tools {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": format!("call_fake_{}", self.n), "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ));
            for frag in ["{\"city\"", ":\"Paris\"}"] {
                out.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
                    Value::Null,
                ));
            }
            out.push(chunk(json!({}), json!("tool_calls")));
        } else {
            for w in self.words() {
                out.push(chunk(json!({"content": w}), Value::Null));
            }
            out.push(chunk(json!({}), json!("stop")));
        }
        if usage {
            out.push(sse(&json!({"id": id, "object": "chat.completion.chunk",
                "created": 1_730_000_000, "model": self.model, "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                          "prompt_tokens_details": {"cached_tokens": 0}}})));
        }
        out.push("data: [DONE]\n\n".to_owned());
        out
    }

    fn completion(&self) -> Value {
        json!({"id": format!("cmpl-fake-{}", self.n), "object": "text_completion",
            "created": 1_730_000_000, "model": self.model,
            "choices": [{"index": 0, "text": self.text, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
    }

    fn completion_events(&self) -> Vec<String> {
        let id = format!("cmpl-fake-{}", self.n);
        let mut out: Vec<String> = self
            .words()
            .into_iter()
            .map(|w| {
                sse(
                    &json!({"id": id, "object": "text_completion", "created": 1_730_000_000,
                    "model": self.model, "choices": [{"index": 0, "text": w, "logprobs": null,
                    "finish_reason": null}]}),
                )
            })
            .collect();
        out.push(sse(
            &json!({"id": id, "object": "text_completion", "created": 1_730_000_000,
            "model": self.model, "choices": [{"index": 0, "text": "", "logprobs": null,
            "finish_reason": "stop"}]}),
        ));
        out.push("data: [DONE]\n\n".to_owned());
        out
    }

    fn response_usage() -> Value {
        json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": 19})
    }

    fn response_object(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({"id": format!("resp_fake_{}", self.n), "object": "response",
            "created_at": 1_730_000_000, "status": status, "model": self.model,
            "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "temperature": 1.0, "top_p": 1.0, "error": null, "incomplete_details": null,
            "instructions": null, "metadata": {}, "usage": usage})
    }

    fn message_item(&self, status: &str, text: &str) -> Value {
        json!({"id": format!("msg_fake_{}", self.n), "type": "message", "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    }

    fn response(&self) -> Value {
        self.response_object(
            "completed",
            json!([self.message_item("completed", &self.text)]),
            Self::response_usage(),
        )
    }

    fn response_events(&self) -> Vec<String> {
        let mut seq = 0u64;
        let mut ev = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(seq);
            seq += 1;
            named(kind, &data)
        };
        let item_id = format!("msg_fake_{}", self.n);
        let mut out = vec![
            ev(
                "response.created",
                json!({"response": self.response_object("in_progress", json!([]), Value::Null)}),
            ),
            ev(
                "response.in_progress",
                json!({"response": self.response_object("in_progress", json!([]), Value::Null)}),
            ),
            ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
            ),
            ev(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
        ];
        for w in self.words() {
            out.push(ev("response.output_text.delta", json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": w, "logprobs": []})));
        }
        out.push(ev("response.output_text.done", json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": self.text, "logprobs": []})));
        out.push(ev("response.content_part.done", json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": self.text, "annotations": []}})));
        out.push(ev(
            "response.output_item.done",
            json!({"output_index": 0, "item": self.message_item("completed", &self.text)}),
        ));
        out.push(ev(
            "response.completed",
            json!({"response": self.response()}),
        ));
        out
    }

    fn embeddings(&self, request: &Value) -> Value {
        let inputs = match &request["input"] {
            Value::Array(a) => a.len().max(1),
            _ => 1,
        };
        let data: Vec<Value> = (0..inputs)
            .map(|i| {
                let v: Vec<f64> = (0..8)
                    .map(|j| ((i * 8 + j) as f64 + self.n as f64) / 100.0)
                    .collect();
                json!({"object": "embedding", "index": i, "embedding": v})
            })
            .collect();
        json!({"object": "list", "data": data, "model": self.model,
               "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    }

    fn message(&self) -> Value {
        let content = if self.tools {
            json!([{"type": "tool_use", "id": format!("toolu_fake_{}", self.n), "name": "get_weather", "input": {"city": "Paris"}}])
        } else {
            json!([{"type": "text", "text": self.text}])
        };
        json!({"id": format!("msg_fake_{}", self.n), "type": "message", "role": "assistant",
            "model": self.model, "content": content,
            "stop_reason": if self.tools { "tool_use" } else { "end_turn" },
            "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}})
    }

    fn message_events(&self) -> Vec<String> {
        let id = format!("msg_fake_{}", self.n);
        let mut out = vec![named(
            "message_start",
            &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        )];
        if self.tools {
            out.push(named("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": format!("toolu_fake_{}", self.n), "name": "get_weather", "input": {}}})));
            for frag in ["{\"city\"", ":\"Paris\"}"] {
                out.push(named("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": frag}})));
            }
        } else {
            out.push(named("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            out.push(named("ping", &json!({"type": "ping"})));
            for w in self.words() {
                out.push(named("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
            }
        }
        out.push(named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        out.push(named("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": if self.tools { "tool_use" } else { "end_turn" }, "stop_sequence": null}, "usage": {"output_tokens": 7}})));
        out.push(named("message_stop", &json!({"type": "message_stop"})));
        out
    }
}
