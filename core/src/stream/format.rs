//! The streaming formats agents use, and a [`Recorder`] that reads a stream in one of them:
//! what it says (text, reasoning, tool calls, usage) and whether it ended well.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sse::Event;

/// The event name of every part of a [`Format::AiSdk`] stream.
pub(crate) const AI_SDK_EVENT: &str = "ai-sdk";

/// `Value::Null`, for events whose data is not JSON.
static NULL: Value = Value::Null;

/// The wire format of a stream of server-sent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Format {
    /// OpenAI Chat Completions (`stream: true`): data-only `chat.completion.chunk` events
    /// ending with `data: [DONE]`.
    #[serde(rename = "openai.chat")]
    OpenAiChat,
    /// OpenAI Responses (`stream: true`): named `response.*` events ending with
    /// `response.completed`, `response.incomplete` or `response.failed`.
    #[serde(rename = "openai.responses")]
    OpenAiResponses,
    /// Anthropic Messages (`stream: true`): named events from `message_start` to
    /// `message_stop`.
    #[serde(rename = "anthropic.messages")]
    AnthropicMessages,
    /// The Vercel AI SDK's language-model stream parts (`LanguageModelV4StreamPart`, and
    /// V3's, which have the same shape), one part per event: event name `ai-sdk`, data the
    /// part as JSON (`{"type":"text-delta","id":…,"delta":…}`), ending with the `finish`
    /// part. The `larder` npm package's middleware writes them.
    #[serde(rename = "ai-sdk")]
    AiSdk,
    /// Any other event stream: recorded and replayed, never interpreted.
    #[serde(rename = "sse")]
    Unknown,
}

impl Format {
    /// Guesses the format from a stream's first event:
    ///
    /// - event name `message_start` (or data `"type":"message_start"`) → Anthropic Messages;
    /// - event name or data `type` starting with `response.` → OpenAI Responses;
    /// - data JSON with `"object":"chat.completion.chunk"` → OpenAI Chat Completions (also
    ///   `"text_completion"`: legacy completions, framed the same way);
    /// - event name `ai-sdk` → the AI SDK's stream parts;
    /// - anything else → [`Format::Unknown`].
    pub fn detect(first: &Event) -> Format {
        let name = first.event.as_deref().unwrap_or("");
        if name == "message_start" {
            return Format::AnthropicMessages;
        }
        if name == AI_SDK_EVENT {
            return Format::AiSdk;
        }
        if name.starts_with("response.") {
            return Format::OpenAiResponses;
        }
        let Ok(data) = serde_json::from_str::<Value>(&first.data) else {
            return Format::Unknown;
        };
        match data["type"].as_str() {
            Some("message_start") => Format::AnthropicMessages,
            Some(t) if t.starts_with("response.") => Format::OpenAiResponses,
            // Legacy completions stream the same way: data-only chunks, then `[DONE]`.
            _ if data["object"] == "chat.completion.chunk"
                || data["object"] == "text_completion" =>
            {
                Format::OpenAiChat
            }
            _ => Format::Unknown,
        }
    }

    /// The format's name, as serialized: `"openai.chat"`, `"openai.responses"`,
    /// `"anthropic.messages"`, `"ai-sdk"` or `"sse"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::OpenAiChat => "openai.chat",
            Format::OpenAiResponses => "openai.responses",
            Format::AnthropicMessages => "anthropic.messages",
            Format::AiSdk => "ai-sdk",
            Format::Unknown => "sse",
        }
    }
}

impl fmt::Display for Format {
    /// Writes [`Format::as_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts reported by a stream (0 where the provider reported none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamUsage {
    /// Prompt tokens: chat `prompt_tokens`, Responses and Anthropic `input_tokens`
    /// (Anthropic's excludes cached tokens; OpenAI's includes them).
    pub input_tokens: u64,
    /// Generated tokens: chat `completion_tokens`, Responses and Anthropic `output_tokens`.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache: OpenAI `cached_tokens`,
    /// Anthropic `cache_read_input_tokens`.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache: OpenAI `cache_write_tokens`,
    /// Anthropic `cache_creation_input_tokens`.
    pub cache_write_tokens: u64,
    /// Reasoning tokens (OpenAI `reasoning_tokens`; Anthropic reports none).
    pub reasoning_tokens: u64,
}

/// A tool call a stream asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, used to answer it (chat `tool_calls[].id`, Responses `call_id`,
    /// Anthropic `tool_use` block `id`).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them: a JSON text, not checked.
    pub arguments: String,
}

/// What a stream said, aggregated from its events by a [`Recorder`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Summary {
    /// The visible text, concatenated: chat `delta.content` of choice 0, Responses
    /// `output_text` deltas, Anthropic `text_delta`s.
    pub text: String,
    /// The reasoning text, concatenated: chat `delta.reasoning_content` (or
    /// `delta.reasoning`) of choice 0, Responses `reasoning_text` and
    /// `reasoning_summary_text` deltas, Anthropic `thinking_delta`s.
    pub reasoning: String,
    /// The tool calls in order of first appearance, with their argument fragments joined.
    pub tool_calls: Vec<ToolCall>,
    /// The token counts, when the stream reported them.
    pub usage: Option<StreamUsage>,
    /// Why generation stopped: chat `finish_reason` of choice 0 (`"stop"`, `"tool_calls"`,
    /// …); Responses `"completed"`, `"incomplete"` or `"incomplete: <reason>"` (e.g.
    /// `"incomplete: max_output_tokens"`); Anthropic `stop_reason` (`"end_turn"`, …).
    pub finish_reason: Option<String>,
    /// The model that answered, as the provider names it.
    pub model: Option<String>,
    /// The provider's id for the response (`chatcmpl-…`, `resp_…`, `msg_…`).
    pub id: Option<String>,
}

/// Where a tool call's fragments go: chat `tool_calls[].index`, Responses `output_index`
/// or Anthropic block index, or a Responses `item_id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ToolKey {
    Index(u64),
    Item(String),
}

/// Accumulates a stream's events per [`Format`] and decides whether it ended well.
///
/// Feed every event in order with [`push`](Recorder::push). Malformed data (not JSON, or
/// JSON of an unexpected shape) is skipped and unknown event types pass untouched, so
/// `push` never fails or panics; events after the terminal one are still read.
///
/// A stream may be stored for replay only when it [`is_complete`](Recorder::is_complete)
/// and has no [`error`](Recorder::error).
///
/// ```
/// use larder_core::stream::{Event, Format, Recorder};
///
/// let mut recorder = Recorder::new(Format::AnthropicMessages);
/// recorder.push(&Event::named(
///     "content_block_delta",
///     r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
/// ));
/// assert!(!recorder.is_complete());
/// recorder.push(&Event::named("message_stop", r#"{"type":"message_stop"}"#));
/// assert!(recorder.is_complete());
/// assert_eq!(recorder.summary().text, "Hi");
/// ```
#[derive(Debug, Clone)]
pub struct Recorder {
    format: Format,
    summary: Summary,
    events: u64,
    complete: bool,
    error: Option<String>,
    /// Tool call slots in `summary.tool_calls`, by the keys their fragments carry.
    tools: BTreeMap<ToolKey, usize>,
    /// Anthropic: a `tool_use` block's initial `input` (JSON text) by slot, used as the
    /// arguments when no `input_json_delta` arrives for it.
    start_input: BTreeMap<usize, String>,
}

impl Recorder {
    /// A recorder for a stream in `format`. With [`Format::Unknown`] it records nothing
    /// but counts events, and the stream is never complete.
    pub fn new(format: Format) -> Self {
        Recorder {
            format,
            summary: Summary::default(),
            events: 0,
            complete: false,
            error: None,
            tools: BTreeMap::new(),
            start_input: BTreeMap::new(),
        }
    }

    /// The format the recorder reads.
    pub fn format(&self) -> Format {
        self.format
    }

    /// How many events were pushed (in any format).
    pub fn event_count(&self) -> u64 {
        self.events
    }

    /// Reads one event. The data is parsed as JSON once (for the known formats); what does
    /// not fit the format is ignored.
    pub fn push(&mut self, event: &Event) {
        self.events = self.events.saturating_add(1);
        match self.format {
            Format::OpenAiChat => self.push_chat(event),
            Format::OpenAiResponses => self.push_responses(event),
            Format::AnthropicMessages => self.push_anthropic(event),
            Format::AiSdk => self.push_ai_sdk(event),
            Format::Unknown => {}
        }
    }

    /// True once the format's terminal event was seen: chat `data: [DONE]`; Responses
    /// `response.completed` or `response.incomplete`; Anthropic `message_stop`; the AI
    /// SDK's `finish` part. Never for
    /// [`Format::Unknown`]. Completion says nothing about failure: check
    /// [`error`](Recorder::error) as well.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The first provider error seen in the stream, if any: chat — an event named `error`
    /// or data with a top-level `error`; Responses — an `error` or `response.failed` event;
    /// Anthropic — an `error` event; the AI SDK — an `error` part, or a `finish` part whose
    /// reason is `error`. The message is `"<type or code>: <message>"` when the
    /// provider gave both. A failed stream must never be stored.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// What the stream said so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// What the stream said, taking it out of the recorder.
    pub fn into_summary(self) -> Summary {
        self.summary
    }

    fn set_error(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    /// The slot of the tool call with `key`, created (empty) on first sight.
    fn tool_slot(&mut self, key: ToolKey) -> usize {
        if let Some(&slot) = self.tools.get(&key) {
            return slot;
        }
        let slot = self.new_tool();
        self.tools.insert(key, slot);
        slot
    }

    fn new_tool(&mut self) -> usize {
        self.summary.tool_calls.push(ToolCall::default());
        self.summary.tool_calls.len() - 1
    }

    fn push_chat(&mut self, event: &Event) {
        if event.data.trim() == "[DONE]" {
            self.complete = true;
            return;
        }
        let chunk = serde_json::from_str::<Value>(&event.data).ok();
        if event.event.as_deref() == Some("error") {
            let message = chunk
                .as_ref()
                .and_then(|v| error_text(error_object(v)))
                .unwrap_or_else(|| raw_error(&event.data, "error"));
            self.set_error(message);
            return;
        }
        let Some(chunk) = chunk else { return };
        let err = &chunk["error"];
        if err.is_object() || err.as_str().is_some_and(|s| !s.trim().is_empty()) {
            let message = error_text(err).unwrap_or_else(|| raw_error(&event.data, "error"));
            self.set_error(message);
            return;
        }
        set_str(&mut self.summary.id, &chunk["id"]);
        set_str(&mut self.summary.model, &chunk["model"]);
        let choices = chunk["choices"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for choice in choices
            .iter()
            .filter(|c| c.get("index").map_or(Some(0), Value::as_u64) == Some(0))
        {
            self.chat_choice(choice);
        }
        let usage = &chunk["usage"];
        if usage.is_object() {
            let prompt = &usage["prompt_tokens_details"];
            self.summary.usage = Some(StreamUsage {
                input_tokens: count(&usage["prompt_tokens"]),
                output_tokens: count(&usage["completion_tokens"]),
                cache_read_tokens: count(&prompt["cached_tokens"]),
                cache_write_tokens: count(&prompt["cache_write_tokens"]),
                reasoning_tokens: count(&usage["completion_tokens_details"]["reasoning_tokens"]),
            });
        }
    }

    /// One `choices[]` entry of index 0.
    fn chat_choice(&mut self, choice: &Value) {
        let delta = &choice["delta"];
        if let Some(text) = delta["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
        {
            self.summary.text.push_str(text);
        }
        let reasoning = delta["reasoning_content"]
            .as_str()
            .or_else(|| delta["reasoning"].as_str());
        if let Some(reasoning) = reasoning {
            self.summary.reasoning.push_str(reasoning);
        }
        let calls = delta["tool_calls"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (position, call) in calls.iter().enumerate() {
            let index = call["index"].as_u64().unwrap_or(position as u64);
            let slot = self.tool_slot(ToolKey::Index(index));
            let tool = &mut self.summary.tool_calls[slot];
            fill(&mut tool.id, &call["id"]);
            let function = &call["function"];
            fill(&mut tool.name, &function["name"]);
            if let Some(arguments) = function["arguments"].as_str() {
                tool.arguments.push_str(arguments);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.summary.finish_reason = Some(reason.to_owned());
        }
    }

    fn push_responses(&mut self, event: &Event) {
        let json = serde_json::from_str::<Value>(&event.data).ok();
        let v = json.as_ref().unwrap_or(&NULL);
        let kind = v["type"]
            .as_str()
            .or(event.event.as_deref())
            .unwrap_or_default();
        match kind {
            "response.created" | "response.queued" | "response.in_progress" => {
                self.response_meta(&v["response"]);
            }
            "response.output_text.delta" => {
                if let Some(delta) = v["delta"].as_str() {
                    self.summary.text.push_str(delta);
                }
            }
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                if let Some(delta) = v["delta"].as_str() {
                    self.summary.reasoning.push_str(delta);
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let item = &v["item"];
                if item["type"] != "function_call" {
                    return;
                }
                let Some(slot) = self.responses_slot(item["id"].as_str(), &v["output_index"])
                else {
                    return;
                };
                let tool = &mut self.summary.tool_calls[slot];
                if !fill(&mut tool.id, &item["call_id"]) {
                    fill(&mut tool.id, &item["id"]);
                }
                fill(&mut tool.name, &item["name"]);
                if let Some(arguments) = item["arguments"].as_str() {
                    // The item's final arguments win; the first sight only fills a blank.
                    if kind == "response.output_item.done" || tool.arguments.is_empty() {
                        arguments.clone_into(&mut tool.arguments);
                    }
                }
            }
            "response.function_call_arguments.delta" => {
                if let (Some(slot), Some(delta)) = (
                    self.responses_slot(v["item_id"].as_str(), &v["output_index"]),
                    v["delta"].as_str(),
                ) {
                    self.summary.tool_calls[slot].arguments.push_str(delta);
                }
            }
            "response.function_call_arguments.done" => {
                if let (Some(slot), Some(arguments)) = (
                    self.responses_slot(v["item_id"].as_str(), &v["output_index"]),
                    v["arguments"].as_str(),
                ) {
                    arguments.clone_into(&mut self.summary.tool_calls[slot].arguments);
                }
            }
            "response.completed" => {
                self.complete = true;
                self.summary.finish_reason = Some("completed".to_owned());
                self.response_end(&v["response"]);
            }
            "response.incomplete" => {
                self.complete = true;
                let response = &v["response"];
                let reason = match response["incomplete_details"]["reason"].as_str() {
                    Some(reason) if !reason.is_empty() => format!("incomplete: {reason}"),
                    _ => "incomplete".to_owned(),
                };
                self.summary.finish_reason = Some(reason);
                self.response_end(response);
            }
            "response.failed" => {
                let response = &v["response"];
                let message =
                    error_text(&response["error"]).unwrap_or_else(|| "response.failed".to_owned());
                self.set_error(message);
                self.response_end(response);
            }
            "error" => {
                let message = json
                    .as_ref()
                    .and_then(|v| error_text(error_object(v)))
                    .unwrap_or_else(|| raw_error(&event.data, "error"));
                self.set_error(message);
            }
            _ => {}
        }
    }

    /// The tool call slot of a Responses function call, found by `item_id` or else
    /// `output_index` (both are remembered); `None` when the event carries neither.
    fn responses_slot(&mut self, item_id: Option<&str>, output_index: &Value) -> Option<usize> {
        let by_item = item_id.map(|id| ToolKey::Item(id.to_owned()));
        let by_index = output_index.as_u64().map(ToolKey::Index);
        if by_item.is_none() && by_index.is_none() {
            return None;
        }
        let known = [&by_item, &by_index]
            .into_iter()
            .flatten()
            .find_map(|key| self.tools.get(key).copied());
        let slot = match known {
            Some(slot) => slot,
            None => self.new_tool(),
        };
        for key in [by_item, by_index].into_iter().flatten() {
            self.tools.entry(key).or_insert(slot);
        }
        Some(slot)
    }

    /// The id and model of a Responses `response` object.
    fn response_meta(&mut self, response: &Value) {
        set_str(&mut self.summary.id, &response["id"]);
        set_str(&mut self.summary.model, &response["model"]);
    }

    /// A terminal Responses event's `response`: id, model and usage.
    fn response_end(&mut self, response: &Value) {
        self.response_meta(response);
        let usage = &response["usage"];
        if usage.is_object() {
            let input = &usage["input_tokens_details"];
            self.summary.usage = Some(StreamUsage {
                input_tokens: count(&usage["input_tokens"]),
                output_tokens: count(&usage["output_tokens"]),
                cache_read_tokens: count(&input["cached_tokens"]),
                cache_write_tokens: count(&input["cache_write_tokens"]),
                reasoning_tokens: count(&usage["output_tokens_details"]["reasoning_tokens"]),
            });
        }
    }

    /// One AI SDK stream part (V3 and V4 share these shapes).
    fn push_ai_sdk(&mut self, event: &Event) {
        let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        match v["type"].as_str().unwrap_or_default() {
            "text-delta" => push_str(&mut self.summary.text, &v["delta"]),
            "reasoning-delta" => push_str(&mut self.summary.reasoning, &v["delta"]),
            "tool-call" => {
                let slot = self.new_tool();
                let tool = &mut self.summary.tool_calls[slot];
                fill(&mut tool.id, &v["toolCallId"]);
                fill(&mut tool.name, &v["toolName"]);
                match &v["input"] {
                    Value::String(s) => tool.arguments.clone_from(s),
                    Value::Null => {}
                    other => tool.arguments = other.to_string(),
                }
            }
            "response-metadata" => {
                set_str(&mut self.summary.id, &v["id"]);
                set_str(&mut self.summary.model, &v["modelId"]);
            }
            "error" => {
                let message =
                    error_text(&v["error"]).unwrap_or_else(|| raw_error(&event.data, "error"));
                self.set_error(message);
            }
            "finish" => {
                // V4: `{unified, raw}`; V3 and earlier: a string.
                let reason = &v["finishReason"];
                let reason = reason["unified"].as_str().or(reason.as_str());
                if let Some(r) = reason {
                    self.summary.finish_reason = Some(r.to_owned());
                    if r == "error" {
                        self.set_error("finish: error".to_owned());
                    }
                }
                let usage = &v["usage"];
                if usage.is_object() {
                    // V4 nests the counts (`inputTokens.total`); V3 had plain numbers.
                    let n = |v: &Value, inner: &str| match v {
                        Value::Object(_) => count(&v[inner]),
                        other => count(other),
                    };
                    self.summary.usage = Some(StreamUsage {
                        input_tokens: n(&usage["inputTokens"], "total"),
                        output_tokens: n(&usage["outputTokens"], "total"),
                        cache_read_tokens: count(&usage["inputTokens"]["cacheRead"])
                            .max(count(&usage["cachedInputTokens"])),
                        cache_write_tokens: count(&usage["inputTokens"]["cacheWrite"]),
                        reasoning_tokens: count(&usage["outputTokens"]["reasoning"])
                            .max(count(&usage["reasoningTokens"])),
                    });
                }
                self.complete = true;
            }
            _ => {}
        }
    }

    fn push_anthropic(&mut self, event: &Event) {
        let json = serde_json::from_str::<Value>(&event.data).ok();
        let v = json.as_ref().unwrap_or(&NULL);
        let kind = v["type"]
            .as_str()
            .or(event.event.as_deref())
            .unwrap_or_default();
        if kind == "error" || event.event.as_deref() == Some("error") {
            let message = json
                .as_ref()
                .and_then(|v| error_text(error_object(v)))
                .unwrap_or_else(|| raw_error(&event.data, "error"));
            self.set_error(message);
            return;
        }
        match kind {
            "message_start" => {
                let message = &v["message"];
                set_str(&mut self.summary.id, &message["id"]);
                set_str(&mut self.summary.model, &message["model"]);
                let usage = &message["usage"];
                if usage.is_object() {
                    self.summary.usage = Some(StreamUsage {
                        input_tokens: count(&usage["input_tokens"]),
                        output_tokens: count(&usage["output_tokens"]),
                        cache_read_tokens: count(&usage["cache_read_input_tokens"]),
                        cache_write_tokens: count(&usage["cache_creation_input_tokens"]),
                        reasoning_tokens: 0,
                    });
                }
            }
            "content_block_start" => {
                let block = &v["content_block"];
                match block["type"].as_str() {
                    Some("text") => push_str(&mut self.summary.text, &block["text"]),
                    Some("thinking") => push_str(&mut self.summary.reasoning, &block["thinking"]),
                    Some("tool_use") => {
                        let Some(index) = v["index"].as_u64() else {
                            return;
                        };
                        let slot = self.tool_slot(ToolKey::Index(index));
                        let tool = &mut self.summary.tool_calls[slot];
                        fill(&mut tool.id, &block["id"]);
                        fill(&mut tool.name, &block["name"]);
                        if block["input"].is_object() {
                            self.start_input.insert(slot, block["input"].to_string());
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &v["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => push_str(&mut self.summary.text, &delta["text"]),
                    Some("thinking_delta") => {
                        push_str(&mut self.summary.reasoning, &delta["thinking"]);
                    }
                    Some("input_json_delta") => {
                        // Only blocks opened as `tool_use` (not `server_tool_use`) are calls.
                        let slot = v["index"]
                            .as_u64()
                            .and_then(|index| self.tools.get(&ToolKey::Index(index)).copied());
                        if let Some(slot) = slot {
                            push_str(
                                &mut self.summary.tool_calls[slot].arguments,
                                &delta["partial_json"],
                            );
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let slot = v["index"]
                    .as_u64()
                    .and_then(|index| self.tools.get(&ToolKey::Index(index)).copied());
                if let Some(slot) = slot
                    && let Some(input) = self.start_input.remove(&slot)
                {
                    let tool = &mut self.summary.tool_calls[slot];
                    if tool.arguments.is_empty() {
                        tool.arguments = input;
                    }
                }
            }
            "message_delta" => {
                if let Some(reason) = v["delta"]["stop_reason"].as_str() {
                    self.summary.finish_reason = Some(reason.to_owned());
                }
                let usage = &v["usage"];
                if usage.is_object() {
                    // Cumulative: every count given replaces the one before.
                    let total = self.summary.usage.get_or_insert_default();
                    for (field, key) in [
                        (&mut total.input_tokens, "input_tokens"),
                        (&mut total.output_tokens, "output_tokens"),
                        (&mut total.cache_read_tokens, "cache_read_input_tokens"),
                        (&mut total.cache_write_tokens, "cache_creation_input_tokens"),
                    ] {
                        if let Some(n) = usage[key].as_u64() {
                            *field = n;
                        }
                    }
                }
            }
            "message_stop" => self.complete = true,
            _ => {}
        }
    }
}

/// A count, 0 when absent or not a non-negative integer.
fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Sets `slot` to `v` when `v` is a non-empty string.
fn set_str(slot: &mut Option<String>, v: &Value) {
    if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
        *slot = Some(s.to_owned());
    }
}

/// Fills an empty `slot` from `v` when `v` is a non-empty string; true when `slot` is
/// (now or already) non-empty.
fn fill(slot: &mut String, v: &Value) -> bool {
    if slot.is_empty()
        && let Some(s) = v.as_str()
    {
        slot.push_str(s);
    }
    !slot.is_empty()
}

/// Appends `v` to `out` when it is a string.
fn push_str(out: &mut String, v: &Value) {
    if let Some(s) = v.as_str() {
        out.push_str(s);
    }
}

/// The error object of an error event's data: its `error` member when that is an object,
/// else the data itself (Responses `error` events carry `code` and `message` at the top).
fn error_object(v: &Value) -> &Value {
    if v["error"].is_object() {
        &v["error"]
    } else {
        v
    }
}

/// `"<type or code>: <message>"` (or whichever of the two is there) from an error object
/// or a bare error string; `None` when it has neither.
fn error_text(err: &Value) -> Option<String> {
    if let Some(message) = err.as_str().filter(|s| !s.trim().is_empty()) {
        return Some(message.to_owned());
    }
    fn non_empty(v: &Value) -> Option<&str> {
        v.as_str().filter(|s| !s.is_empty())
    }
    let kind = non_empty(&err["type"])
        .filter(|t| *t != "error")
        .or_else(|| non_empty(&err["code"]));
    match (kind, non_empty(&err["message"])) {
        (Some(kind), Some(message)) => Some(format!("{kind}: {message}")),
        (Some(kind), None) => Some(kind.to_owned()),
        (None, Some(message)) => Some(message.to_owned()),
        (None, None) => None,
    }
}

/// An error message from data that is not a recognisable error object: the data itself,
/// or `fallback` when it is blank.
fn raw_error(data: &str, fallback: &str) -> String {
    let data = data.trim();
    if data.is_empty() {
        fallback.to_owned()
    } else {
        data.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::sse::SseParser;
    use proptest::prelude::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/fixtures/streams/", $name, ".sse")) as &[u8]
        };
    }

    fn events(bytes: &[u8]) -> Vec<Event> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.push(bytes, &mut out).unwrap();
        assert!(parser.at_boundary());
        out
    }

    /// Detects the format from the first event and records every event.
    fn record(bytes: &[u8]) -> Recorder {
        let events = events(bytes);
        let mut recorder = Recorder::new(Format::detect(&events[0]));
        for event in &events {
            recorder.push(event);
        }
        assert_eq!(recorder.event_count(), events.len() as u64);
        recorder
    }

    fn usage(input: u64, output: u64, read: u64, write: u64, reasoning: u64) -> StreamUsage {
        StreamUsage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
        }
    }

    fn tool(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn summary(
        text: &str,
        reasoning: &str,
        tool_calls: Vec<ToolCall>,
        usage: Option<StreamUsage>,
        finish_reason: Option<&str>,
        model: &str,
        id: &str,
    ) -> Summary {
        Summary {
            text: text.into(),
            reasoning: reasoning.into(),
            tool_calls,
            usage,
            finish_reason: finish_reason.map(Into::into),
            model: Some(model.into()),
            id: Some(id.into()),
        }
    }

    fn chunk(body: &str) -> Event {
        Event::data(format!(
            r#"{{"id":"c1","object":"chat.completion.chunk","model":"m",{body}}}"#
        ))
    }

    #[test]
    fn openai_chat_text() {
        let r = record(fixture!("openai_chat_text"));
        assert_eq!(r.format(), Format::OpenAiChat);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "The capital of France is Paris.",
                "",
                vec![],
                Some(usage(1234, 8, 1024, 0, 0)),
                Some("stop"),
                "gpt-4o-mini-2024-07-18",
                "chatcmpl-AZq7Kf2x",
            )
        );
    }

    #[test]
    fn openai_chat_tools() {
        let r = record(fixture!("openai_chat_tools"));
        assert_eq!(r.format(), Format::OpenAiChat);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            r.into_summary(),
            summary(
                "",
                "",
                vec![
                    tool("call_hT2bQ9rWd1", "get_weather", r#"{"city": "Paris"}"#),
                    tool(
                        "call_Vx81mZp0Qe",
                        "get_time",
                        r#"{"timezone": "Europe/Paris"}"#
                    ),
                ],
                Some(usage(112, 48, 0, 0, 0)),
                Some("tool_calls"),
                "gpt-4o-mini-2024-07-18",
                "chatcmpl-AZq9Tt01",
            )
        );
    }

    #[test]
    fn openai_chat_error() {
        let r = record(fixture!("openai_chat_error"));
        assert_eq!(r.format(), Format::OpenAiChat);
        assert!(!r.is_complete());
        assert_eq!(
            r.error(),
            Some(
                "server_error: The server had an error while processing your request. Sorry about that!"
            )
        );
        assert_eq!(
            *r.summary(),
            summary(
                "Once upon a time",
                "",
                vec![],
                None,
                None,
                "gpt-4o-mini-2024-07-18",
                "chatcmpl-AZqB0err",
            )
        );
    }

    #[test]
    fn openai_responses_text() {
        let r = record(fixture!("openai_responses_text"));
        assert_eq!(r.format(), Format::OpenAiResponses);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "Bonjour means \"good day\" in French.",
                "",
                vec![],
                Some(usage(2086, 11, 1920, 0, 0)),
                Some("completed"),
                "gpt-4.1-mini-2025-04-14",
                "resp_68a1c0ffee01",
            )
        );
    }

    #[test]
    fn openai_responses_tools() {
        let r = record(fixture!("openai_responses_tools"));
        assert_eq!(r.format(), Format::OpenAiResponses);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "",
                "",
                vec![tool(
                    "call_Qm3kVd8sPz",
                    "get_weather",
                    r#"{"city":"Paris"}"#
                )],
                Some(usage(60, 17, 0, 0, 0)),
                Some("completed"),
                "gpt-4.1-mini-2025-04-14",
                "resp_68a1f00d0001",
            )
        );
    }

    #[test]
    fn openai_responses_reasoning() {
        let r = record(fixture!("openai_responses_reasoning"));
        assert_eq!(r.format(), Format::OpenAiResponses);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "17 + 25 = 42",
                "**Adding numbers**\n\nThe user asks for 17 + 25; that is 42.",
                vec![],
                Some(usage(14, 210, 0, 0, 192)),
                Some("completed"),
                "o4-mini-2025-04-16",
                "resp_68a2beef0001",
            )
        );
    }

    #[test]
    fn openai_responses_failed() {
        let r = record(fixture!("openai_responses_failed"));
        assert_eq!(r.format(), Format::OpenAiResponses);
        assert!(!r.is_complete());
        assert_eq!(
            r.error(),
            Some("server_error: The model failed to generate a response.")
        );
        assert_eq!(
            *r.summary(),
            summary(
                "Here is",
                "",
                vec![],
                None,
                None,
                "gpt-4.1-mini-2025-04-14",
                "resp_68a3dead0001",
            )
        );
    }

    #[test]
    fn anthropic_text() {
        let r = record(fixture!("anthropic_text"));
        assert_eq!(r.format(), Format::AnthropicMessages);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "Hello! How can I help you today?",
                "",
                vec![],
                Some(usage(25, 12, 2048, 0, 0)),
                Some("end_turn"),
                "claude-sonnet-4-5-20250929",
                "msg_01XFDUDYJgAACzvnptvVoYEL",
            )
        );
    }

    #[test]
    fn anthropic_tools() {
        let r = record(fixture!("anthropic_tools"));
        assert_eq!(r.format(), Format::AnthropicMessages);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "I'll check the weather in Paris.",
                "",
                vec![tool(
                    "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "get_weather",
                    r#"{"city": "Paris", "unit": "celsius"}"#
                )],
                Some(usage(472, 89, 0, 1536, 0)),
                Some("tool_use"),
                "claude-sonnet-4-5-20250929",
                "msg_014p7gG3wDgGV9EUtLvnow3U",
            )
        );
    }

    #[test]
    fn anthropic_thinking() {
        let r = record(fixture!("anthropic_thinking"));
        assert_eq!(r.format(), Format::AnthropicMessages);
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            *r.summary(),
            summary(
                "27 × 453 = 12,231",
                "27 * 453 = 27 * 400 + 27 * 53 = 10800 + 1431 = 12231.",
                vec![],
                Some(usage(85, 131, 0, 0, 0)),
                Some("end_turn"),
                "claude-sonnet-4-5-20250929",
                "msg_01BRnzBzYVpTQ2nUhDPqLkq8",
            )
        );
    }

    #[test]
    fn anthropic_error() {
        let r = record(fixture!("anthropic_error"));
        assert_eq!(r.format(), Format::AnthropicMessages);
        assert!(!r.is_complete());
        assert_eq!(r.error(), Some("overloaded_error: Overloaded"));
        assert_eq!(
            *r.summary(),
            summary(
                "Sure, here",
                "",
                vec![],
                Some(usage(31, 1, 0, 0, 0)),
                None,
                "claude-sonnet-4-5-20250929",
                "msg_01Pq8dK2nR3sT4uV5wX6yZ7a",
            )
        );
    }

    /// AI SDK stream parts (V4): text, reasoning, a tool call, usage and the reason; a
    /// stream is complete at `finish`, failed at an `error` part or a finish for `error`.
    #[test]
    fn ai_sdk_parts() {
        let part = |json: &str| Event::named(AI_SDK_EVENT, json);
        let parts = [
            part(r#"{"type":"stream-start","warnings":[]}"#),
            part(
                r#"{"type":"response-metadata","id":"r-1","modelId":"m-1","timestamp":"2026-12-03T10:00:00.000Z"}"#,
            ),
            part(r#"{"type":"reasoning-delta","id":"0","delta":"hm"}"#),
            part(r#"{"type":"text-start","id":"1"}"#),
            part(r#"{"type":"text-delta","id":"1","delta":"Hello, "}"#),
            part(r#"{"type":"text-delta","id":"1","delta":"world"}"#),
            part(
                r#"{"type":"tool-call","toolCallId":"c1","toolName":"weather","input":"{\"city\":\"Paris\"}"}"#,
            ),
        ];
        assert_eq!(Format::detect(&parts[0]), Format::AiSdk);
        assert_eq!(Format::AiSdk.as_str(), "ai-sdk");
        let mut r = Recorder::new(Format::AiSdk);
        for p in &parts {
            r.push(p);
        }
        assert!(!r.is_complete());
        r.push(&part(
            r#"{"type":"finish","finishReason":{"unified":"tool-calls","raw":"tool_calls"},"usage":{"inputTokens":{"total":12,"noCache":10,"cacheRead":2,"cacheWrite":0},"outputTokens":{"total":7,"text":5,"reasoning":2}}}"#,
        ));
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        let s = r.summary();
        assert_eq!(s.text, "Hello, world");
        assert_eq!(s.reasoning, "hm");
        assert_eq!(
            (s.id.as_deref(), s.model.as_deref()),
            (Some("r-1"), Some("m-1"))
        );
        assert_eq!(s.finish_reason.as_deref(), Some("tool-calls"));
        assert_eq!(
            s.tool_calls,
            vec![ToolCall {
                id: "c1".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
        let u = s.usage.clone().unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.reasoning_tokens
            ),
            (12, 7, 2, 2)
        );

        let mut failed = Recorder::new(Format::AiSdk);
        failed.push(&part(
            r#"{"type":"error","error":{"message":"overloaded"}}"#,
        ));
        assert_eq!(failed.error(), Some("overloaded"));
        let mut failed = Recorder::new(Format::AiSdk);
        failed.push(&part(r#"{"type":"finish","finishReason":"error","usage":{"inputTokens":3,"outputTokens":0}}"#));
        assert!(failed.is_complete());
        assert!(
            failed.error().is_some(),
            "a finish for an error is a failed stream"
        );
        assert_eq!(failed.summary().usage.as_ref().unwrap().input_tokens, 3);
        // Not JSON: skipped, never a panic.
        failed.push(&part("{not json"));
    }

    #[test]
    fn detect_and_names() {
        assert_eq!(
            Format::detect(&Event::data(r#"{"type":"message_start","message":{}}"#)),
            Format::AnthropicMessages
        );
        assert_eq!(
            Format::detect(&Event::named("message_start", "not json")),
            Format::AnthropicMessages
        );
        assert_eq!(
            Format::detect(&Event::named("response.queued", "")),
            Format::OpenAiResponses
        );
        assert_eq!(
            Format::detect(&Event::data(r#"{"type":"response.created"}"#)),
            Format::OpenAiResponses
        );
        assert_eq!(
            Format::detect(&chunk(r#""choices":[]"#)),
            Format::OpenAiChat
        );
        for unknown in [
            Event::data("hello"),
            Event::data("[DONE]"),
            Event::data(r#"{"object":"chat.completion"}"#),
            Event::data("[1,2]"),
            Event::named("ping", r#"{"type":"ping"}"#),
            Event::named("error", r#"{"type":"response.failed"}"#),
        ] {
            let expected = if unknown.data.contains("response.") {
                Format::OpenAiResponses
            } else {
                Format::Unknown
            };
            assert_eq!(Format::detect(&unknown), expected, "{unknown:?}");
        }
        for (format, name) in [
            (Format::OpenAiChat, "openai.chat"),
            (Format::OpenAiResponses, "openai.responses"),
            (Format::AnthropicMessages, "anthropic.messages"),
            (Format::Unknown, "sse"),
        ] {
            assert_eq!(format.as_str(), name);
            assert_eq!(format.to_string(), name);
            assert_eq!(
                serde_json::to_string(&format).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(
                serde_json::from_str::<Format>(&format!("\"{name}\"")).unwrap(),
                format
            );
        }
    }

    #[test]
    fn unknown_format_counts_only() {
        let mut r = Recorder::new(Format::Unknown);
        for event in events(fixture!("openai_chat_text")) {
            r.push(&event);
        }
        assert_eq!(r.event_count(), 8);
        assert!(!r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(*r.summary(), Summary::default());
    }

    #[test]
    fn chat_aggregates_choice_zero_only() {
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&chunk(
            r#""choices":[{"index":1,"delta":{"content":"B"},"finish_reason":null},{"index":0,"delta":{"content":"A","tool_calls":[{"index":0,"id":"x","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]"#,
        ));
        r.push(&chunk(
            r#""choices":[{"index":1,"delta":{"content":"B"},"finish_reason":"length"},{"index":0,"delta":{"content":"A"},"finish_reason":"stop"}]"#,
        ));
        r.push(&chunk(
            r#""choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"y","function":{"name":"g","arguments":"[]"}}]},"finish_reason":"stop"}]"#,
        ));
        assert_eq!(r.summary().text, "AA");
        assert_eq!(r.summary().tool_calls, [tool("x", "f", "{}")]);
        assert_eq!(r.summary().finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn chat_reasoning_fields() {
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&chunk(
            r#""choices":[{"index":0,"delta":{"reasoning_content":"think "}}]"#,
        ));
        r.push(&chunk(
            r#""choices":[{"index":0,"delta":{"reasoning":"more"}}]"#,
        ));
        r.push(&chunk(
            r#""choices":[{"index":0,"delta":{"reasoning":{"not":"a string"}}}]"#,
        ));
        r.push(&chunk(
            r#""choices":[{"index":0,"delta":{"content":"done"}}]"#,
        ));
        assert_eq!(r.summary().reasoning, "think more");
        assert_eq!(r.summary().text, "done");
    }

    #[test]
    fn chat_usage_with_cache_write_and_reasoning() {
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&chunk(
            r#""choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":3,"cache_write_tokens":4},"completion_tokens_details":{"reasoning_tokens":5}}"#,
        ));
        assert_eq!(r.summary().usage, Some(usage(10, 20, 3, 4, 5)));
    }

    #[test]
    fn chat_errors() {
        // An event named `error`.
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&Event::named(
            "error",
            r#"{"error":{"message":"Rate limited","type":"requests","code":"rate_limit_exceeded"}}"#,
        ));
        assert_eq!(r.error(), Some("requests: Rate limited"));
        // Named `error` with data that is not JSON.
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&Event::named("error", "upstream exploded"));
        assert_eq!(r.error(), Some("upstream exploded"));
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&Event::named("error", ""));
        assert_eq!(r.error(), Some("error"));
        // A top-level error with only a code, or only a message; the first error stays.
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&Event::data(r#"{"error":{"code":"overloaded"}}"#));
        r.push(&Event::data(r#"{"error":{"message":"second"}}"#));
        assert_eq!(r.error(), Some("overloaded"));
        // `"error": null` is no error.
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&chunk(r#""choices":[],"error":null"#));
        assert_eq!(r.error(), None);
    }

    #[test]
    fn chat_done_is_not_json_and_events_after_it_are_read() {
        let mut r = Recorder::new(Format::OpenAiChat);
        r.push(&Event::data("[DONE]"));
        assert!(r.is_complete());
        r.push(&chunk(
            r#""choices":[{"index":0,"delta":{"content":"late"}}]"#,
        ));
        assert_eq!(r.summary().text, "late");
        assert!(r.is_complete());
    }

    #[test]
    fn responses_incomplete_with_reason() {
        let mut r = Recorder::new(Format::OpenAiResponses);
        r.push(&Event::named(
            "response.incomplete",
            r#"{"type":"response.incomplete","response":{"id":"resp_9","model":"gpt-4.1","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":5,"output_tokens":16,"input_tokens_details":{"cached_tokens":0,"cache_write_tokens":2},"output_tokens_details":{"reasoning_tokens":0}}}}"#,
        ));
        assert!(r.is_complete());
        assert_eq!(r.error(), None);
        assert_eq!(
            r.summary().finish_reason.as_deref(),
            Some("incomplete: max_output_tokens")
        );
        assert_eq!(r.summary().usage, Some(usage(5, 16, 0, 2, 0)));
        assert_eq!(r.summary().id.as_deref(), Some("resp_9"));
        let mut r = Recorder::new(Format::OpenAiResponses);
        r.push(&Event::named(
            "response.incomplete",
            r#"{"type":"response.incomplete","response":{"incomplete_details":null}}"#,
        ));
        assert_eq!(r.summary().finish_reason.as_deref(), Some("incomplete"));
    }

    #[test]
    fn responses_error_event() {
        let mut r = Recorder::new(Format::OpenAiResponses);
        r.push(&Event::named(
            "error",
            r#"{"type":"error","sequence_number":3,"code":"rate_limit_exceeded","message":"Slow down","param":null}"#,
        ));
        assert_eq!(r.error(), Some("rate_limit_exceeded: Slow down"));
        assert!(!r.is_complete());
        // A failed response without an error object still fails.
        let mut r = Recorder::new(Format::OpenAiResponses);
        r.push(&Event::named(
            "response.failed",
            r#"{"type":"response.failed","response":{"error":null}}"#,
        ));
        assert_eq!(r.error(), Some("response.failed"));
    }

    #[test]
    fn responses_tool_calls_by_output_index_and_parallel_items() {
        let mut r = Recorder::new(Format::OpenAiResponses);
        let added = |index: u64, id: &str, call: &str, name: &str| {
            Event::named(
                "response.output_item.added",
                format!(
                    r#"{{"type":"response.output_item.added","output_index":{index},"item":{{"id":"{id}","type":"function_call","call_id":"{call}","name":"{name}","arguments":""}}}}"#
                ),
            )
        };
        let delta = |body: &str| {
            Event::named(
                "response.function_call_arguments.delta",
                format!(r#"{{"type":"response.function_call_arguments.delta",{body}}}"#),
            )
        };
        r.push(&added(0, "fc_a", "call_a", "f"));
        r.push(&added(1, "fc_b", "call_b", "g"));
        r.push(&delta(r#""item_id":"fc_b","output_index":1,"delta":"[1""#));
        r.push(&delta(r#""output_index":0,"delta":"{""#));
        r.push(&delta(r#""item_id":"fc_a","delta":"}""#));
        r.push(&delta(r#""item_id":"fc_b","delta":"]""#));
        r.push(&delta(r#""delta":"dropped: no item_id or output_index""#));
        assert_eq!(
            r.summary().tool_calls,
            [tool("call_a", "f", "{}"), tool("call_b", "g", "[1]")]
        );
        // `.done` arguments win over the fragments.
        r.push(&Event::named(
            "response.function_call_arguments.done",
            r#"{"type":"response.function_call_arguments.done","item_id":"fc_a","output_index":0,"arguments":"{\"x\":1}"}"#,
        ));
        assert_eq!(r.summary().tool_calls[0].arguments, r#"{"x":1}"#);
        // A delta before any item is announced opens a call of its own.
        let mut r = Recorder::new(Format::OpenAiResponses);
        r.push(&delta(r#""item_id":"fc_z","output_index":4,"delta":"{}""#));
        r.push(&added(4, "fc_z", "call_z", "h"));
        assert_eq!(r.summary().tool_calls, [tool("call_z", "h", "{}")]);
    }

    #[test]
    fn anthropic_usage_is_cumulative() {
        let mut r = Recorder::new(Format::AnthropicMessages);
        r.push(&Event::named(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":40,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":1}}}"#,
        ));
        r.push(&Event::named(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10,"input_tokens":null,"cache_read_input_tokens":null}}"#,
        ));
        assert_eq!(r.summary().usage, Some(usage(40, 10, 2048, 0, 0)));
        assert_eq!(r.summary().finish_reason, None);
        r.push(&Event::named(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":31,"input_tokens":41,"cache_creation_input_tokens":7}}"#,
        ));
        assert_eq!(r.summary().usage, Some(usage(41, 31, 2048, 7, 0)));
        assert_eq!(r.summary().finish_reason.as_deref(), Some("max_tokens"));
        // A message_delta without a message_start still reports usage.
        let mut r = Recorder::new(Format::AnthropicMessages);
        r.push(&Event::named(
            "message_delta",
            r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":3}}"#,
        ));
        assert_eq!(r.summary().usage, Some(usage(0, 3, 0, 0, 0)));
    }

    #[test]
    fn anthropic_tool_without_input_deltas_gets_its_start_input() {
        let mut r = Recorder::new(Format::AnthropicMessages);
        r.push(&Event::named(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"now","input":{}}}"#,
        ));
        r.push(&Event::named(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ));
        assert_eq!(r.summary().tool_calls, [tool("toolu_1", "now", "{}")]);
    }

    #[test]
    fn anthropic_server_tool_input_is_not_a_tool_call() {
        let mut r = Recorder::new(Format::AnthropicMessages);
        r.push(&Event::named(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}"#,
        ));
        r.push(&Event::named(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"x\"}"}}"#,
        ));
        r.push(&Event::named(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ));
        assert!(r.summary().tool_calls.is_empty());
    }

    #[test]
    fn anthropic_error_without_json() {
        let mut r = Recorder::new(Format::AnthropicMessages);
        r.push(&Event::named("error", "Internal server error"));
        assert_eq!(r.error(), Some("Internal server error"));
        // An error detected from the data type alone.
        let mut r = Recorder::new(Format::AnthropicMessages);
        r.push(&Event::data(
            r#"{"type":"error","error":{"type":"api_error","message":"Internal"}}"#,
        ));
        assert_eq!(r.error(), Some("api_error: Internal"));
    }

    #[test]
    fn malformed_data_and_unknown_events_are_ignored() {
        for format in [
            Format::OpenAiChat,
            Format::OpenAiResponses,
            Format::AnthropicMessages,
        ] {
            let mut r = Recorder::new(format);
            for event in [
                Event::data(""),
                Event::data("{"),
                Event::data("null"),
                Event::data("[1,2,3]"),
                Event::data(r#"{"choices":"nope","usage":[],"type":7}"#),
                Event::named("something_new", r#"{"type":"something_new"}"#),
                Event::named("content_block_delta", r#"{"index":-1,"delta":5}"#),
                Event::named("response.output_text.delta", r#"{"delta":null}"#),
            ] {
                r.push(&event);
            }
            assert_eq!(*r.summary(), Summary::default(), "{format}");
            assert_eq!(r.error(), None, "{format}");
            assert!(!r.is_complete(), "{format}");
        }
    }

    #[test]
    fn fixtures_cut_short_are_not_complete() {
        for bytes in [
            fixture!("openai_chat_text"),
            fixture!("openai_responses_text"),
            fixture!("anthropic_text"),
        ] {
            let events = events(bytes);
            let mut r = Recorder::new(Format::detect(&events[0]));
            for event in &events[..events.len() - 1] {
                r.push(event);
            }
            assert!(!r.is_complete());
        }
    }

    /// JSON shaped like the providers' events, with the values scrambled.
    fn json_value() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "type",
            "index",
            "delta",
            "content",
            "text",
            "choices",
            "usage",
            "error",
            "message",
            "item",
            "item_id",
            "output_index",
            "arguments",
            "function",
            "tool_calls",
            "content_block",
            "partial_json",
            "response",
            "stop_reason",
            "input_tokens",
            "finish_reason",
            "id",
            "name",
            "reasoning",
            "code",
            "incomplete_details",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "tool_use",
                "input_json_delta",
                "text_delta",
                "thinking_delta",
                "message_delta",
                "message_stop",
                "error",
                "response.completed",
                "response.failed",
                "response.incomplete",
                "response.output_item.added",
                "function_call",
                "response.function_call_arguments.delta",
                "response.output_text.delta",
                "[DONE]",
                "",
                "x",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn push_never_panics(
            format in prop::sample::select(vec![
                Format::OpenAiChat, Format::OpenAiResponses, Format::AnthropicMessages, Format::Unknown,
            ]),
            events in prop::collection::vec(
                (
                    proptest::option::of(prop::sample::select(vec![
                        "error", "message_start", "content_block_delta", "response.completed", "ping",
                    ])),
                    prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,12}"],
                ),
                0..24,
            ),
        ) {
            let mut r = Recorder::new(format);
            for (name, data) in events {
                let event = Event { event: name.map(str::to_owned), id: None, data, t: 0 };
                if r.event_count() == 0 {
                    let _ = Format::detect(&event);
                }
                r.push(&event);
            }
            let _ = (r.is_complete(), r.error(), r.clone().into_summary());
        }

        #[test]
        fn truncated_fixture_data_never_panics(cut in any::<prop::sample::Index>()) {
            for bytes in [
                fixture!("openai_chat_tools"),
                fixture!("openai_responses_reasoning"),
                fixture!("anthropic_tools"),
            ] {
                let events = events(bytes);
                let mut r = Recorder::new(Format::detect(&events[0]));
                for event in &events {
                    let end = cut.index(event.data.len() + 1);
                    let data = event.data.get(..end).unwrap_or_default();
                    r.push(&Event { data: data.to_owned(), ..event.clone() });
                }
            }
        }
    }
}
