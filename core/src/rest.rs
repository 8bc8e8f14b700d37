//! The Upstash REST dialect (Redis over HTTP) as data: JSON bodies ⇄ [`Cmd`] and [`Value`].
//!
//! Written once and used by both ends: the `larder-edge` client (on Workers and natively) and
//! the `larder gateway` server. Neither end decides anything about the wire format itself.
//!
//! # The dialect
//!
//! - `POST {base}` with body `["SET","k","v","PX",1000]` runs one command and answers
//!   `{"result":"OK"}`, or `{"error":"ERR …"}` (HTTP 400) with Redis's text unchanged.
//! - `POST {base}/pipeline` with body `[["GET","a"],["INCR","b"]]` answers one item per
//!   command, `[{"result":…},{"error":…}]`; `/multi-exec` has the same shape and runs the
//!   commands as one transaction.
//! - A request header `Upstash-Encoding: base64` makes every string of the result base64 (at
//!   every depth; integers and `null` unchanged; error texts never encoded), which makes
//!   replies binary-safe.
//! - larder extension: JSON strings carry only text, so a command with an argument that is
//!   not UTF-8 cannot be written in the plain dialect. With the request header
//!   `Larder-Arg-Encoding: base64` every string argument of the body is base64. The larder
//!   gateway understands it; Upstash does not (clients only send it when told the server is
//!   a larder gateway).
//!
//! - `POST {base}/subscribe/{channel}` and `POST {base}/psubscribe/{pattern}` (body `[]`)
//!   answer a server-sent event stream that lasts while the client keeps it open: first
//!   `data: subscribe,{channel},1` (or `psubscribe,…`), then `data: message,{channel},{payload}`
//!   (or `pmessage,{pattern},{channel},{payload}`) for each message published. The name is the
//!   last path segment(s), percent-encoded as any URL path. [`PubSubFrame`] writes and reads
//!   these lines. larder extension: with the request header `Larder-PubSub-Encoding: base64`
//!   every name and payload in the frames is base64 (the plain frames cannot carry a line end
//!   and are ambiguous when a channel name holds a comma).
//!
//! # Examples
//!
//! ```
//! use larder_core::rest::{self, Encoding};
//! use larder_core::{Cmd, Value};
//!
//! // Client: the body of `POST /`.
//! let body = rest::encode_command(&Cmd::new("SET").arg("k").arg("v"), Encoding::Text)?;
//! assert_eq!(body, br#"["SET","k","v"]"#);
//!
//! // Server: parse it back, and answer in base64 mode.
//! let cmd = rest::parse_command(&body, Encoding::Text)?;
//! assert_eq!(cmd.args()[1], "k");
//! let reply = rest::encode_reply(&Value::Status("OK".into()), Encoding::Base64);
//! assert_eq!(reply, br#"{"result":"T0s="}"#);
//!
//! // Client: decode the reply.
//! assert!(rest::decode_reply(&reply, Encoding::Base64)?.is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value as Json;

use crate::error::{ErrorKind, TransportError};
use crate::value::{Cmd, Value};

/// Request header that asks for base64-encoded result strings (value [`BASE64`]).
pub const RESPONSE_ENCODING_HEADER: &str = "upstash-encoding";
/// Request header (larder extension) saying every string argument is base64 (value
/// [`BASE64`]).
pub const ARG_ENCODING_HEADER: &str = "larder-arg-encoding";
/// Header carrying the read-your-writes token of the official clients, echoed by servers.
pub const SYNC_TOKEN_HEADER: &str = "upstash-sync-token";
/// The value of the encoding headers that selects base64.
pub const BASE64: &str = "base64";
/// Request header (larder extension) asking for base64 names and payloads in subscription
/// frames (value [`BASE64`]).
pub const PUBSUB_ENCODING_HEADER: &str = "larder-pubsub-encoding";

/// One line of a subscription's event stream (`POST /subscribe/…`, `/psubscribe/…`): the
/// `data:` field of one server-sent event.
///
/// ```
/// use larder_core::rest::{Encoding, PubSubFrame};
///
/// let frame = PubSubFrame::Message { channel: "chat".into(), payload: "a,b".into() };
/// assert_eq!(frame.encode(Encoding::Text), "message,chat,a,b");
/// assert_eq!(PubSubFrame::parse("message,chat,a,b", Encoding::Text), Some(frame.clone()));
/// let b64 = frame.encode(Encoding::Base64);
/// assert_eq!(b64, "message,Y2hhdA==,YSxi");
/// assert_eq!(PubSubFrame::parse(&b64, Encoding::Base64), Some(frame));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PubSubFrame {
    /// The subscription is in place (`subscribe,{name},{count}` or `psubscribe,…`).
    Subscribed {
        /// Whether `name` is a pattern (`PSUBSCRIBE`).
        pattern: bool,
        /// The channel or pattern.
        name: Bytes,
        /// How many subscriptions this stream holds (1: one per stream).
        count: i64,
    },
    /// A message published to a subscribed channel (`message,{channel},{payload}`).
    Message {
        /// The channel.
        channel: Bytes,
        /// The payload.
        payload: Bytes,
    },
    /// A message published to a channel matching a subscribed pattern
    /// (`pmessage,{pattern},{channel},{payload}`).
    PMessage {
        /// The pattern subscribed to.
        pattern: Bytes,
        /// The channel the message was published to.
        channel: Bytes,
        /// The payload.
        payload: Bytes,
    },
}

impl PubSubFrame {
    /// The frame as the `data:` text of one event. In [`Encoding::Text`] names and payloads
    /// are written as they are (bytes that are not UTF-8 become U+FFFD, as in the
    /// Upstash dialect); in [`Encoding::Base64`] each is base64.
    pub fn encode(&self, encoding: Encoding) -> String {
        let field = |b: &[u8]| match encoding {
            Encoding::Text => String::from_utf8_lossy(b).into_owned(),
            Encoding::Base64 => base64_encode(b),
        };
        match self {
            PubSubFrame::Subscribed {
                pattern,
                name,
                count,
            } => {
                let kind = if *pattern { "psubscribe" } else { "subscribe" };
                format!("{kind},{},{count}", field(name))
            }
            PubSubFrame::Message { channel, payload } => {
                format!("message,{},{}", field(channel), field(payload))
            }
            PubSubFrame::PMessage {
                pattern,
                channel,
                payload,
            } => format!(
                "pmessage,{},{},{}",
                field(pattern),
                field(channel),
                field(payload)
            ),
        }
    }

    /// Reads the `data:` text of one event; `None` for anything else (an unknown kind, a
    /// missing field, bad base64). In [`Encoding::Text`] a payload is everything after the
    /// channel (commas included), as the official client reads it.
    pub fn parse(data: &str, encoding: Encoding) -> Option<PubSubFrame> {
        let field = |s: &str| -> Option<Bytes> {
            match encoding {
                Encoding::Text => Some(Bytes::copy_from_slice(s.as_bytes())),
                Encoding::Base64 => base64_decode(s.as_bytes()).map(Bytes::from),
            }
        };
        let (kind, rest) = data.split_once(',')?;
        match kind {
            "subscribe" | "psubscribe" => {
                let (name, count) = rest.rsplit_once(',')?;
                Some(PubSubFrame::Subscribed {
                    pattern: kind == "psubscribe",
                    name: field(name)?,
                    count: count.parse().ok()?,
                })
            }
            "message" => {
                let (channel, payload) = rest.split_once(',')?;
                Some(PubSubFrame::Message {
                    channel: field(channel)?,
                    payload: field(payload)?,
                })
            }
            "pmessage" => {
                let (pattern, rest) = rest.split_once(',')?;
                let (channel, payload) = rest.split_once(',')?;
                Some(PubSubFrame::PMessage {
                    pattern: field(pattern)?,
                    channel: field(channel)?,
                    payload: field(payload)?,
                })
            }
            _ => None,
        }
    }
}

/// Bytes a subscription path keeps as they are; every other byte is percent-encoded.
const PATH_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':');

/// The path of a subscription, relative to the base URL: `subscribe/{channel}` or
/// `psubscribe/{pattern}`, the name percent-encoded (any bytes, `/` included).
///
/// ```
/// assert_eq!(larder_core::rest::subscribe_path(false, b"p:events:{a}/b"), "subscribe/p:events:%7Ba%7D%2Fb");
/// ```
pub fn subscribe_path(pattern: bool, name: &[u8]) -> String {
    let kind = if pattern { "psubscribe" } else { "subscribe" };
    format!(
        "{kind}/{}",
        percent_encoding::percent_encode(name, PATH_KEEP)
    )
}

/// Reads a request path of the subscribe endpoints (`/subscribe/…`, `/psubscribe/…`; the
/// leading `/` optional): whether it is a pattern, and the decoded name. Everything after
/// the endpoint's segment is the name, so a name may hold `/`. `None` for any other path
/// and for an empty name.
///
/// ```
/// use larder_core::rest::parse_subscribe_path;
/// assert_eq!(parse_subscribe_path("/psubscribe/user:*"), Some((true, b"user:*".to_vec())));
/// assert_eq!(parse_subscribe_path("/subscribe/a%2Fb/c"), Some((false, b"a/b/c".to_vec())));
/// assert_eq!(parse_subscribe_path("/subscribe/"), None);
/// ```
pub fn parse_subscribe_path(path: &str) -> Option<(bool, Vec<u8>)> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (pattern, raw) = if let Some(raw) = path.strip_prefix("subscribe/") {
        (false, raw)
    } else if let Some(raw) = path.strip_prefix("psubscribe/") {
        (true, raw)
    } else {
        return None;
    };
    let name: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    (!name.is_empty()).then_some((pattern, name))
}

/// How strings are written in a body: as JSON text or as base64 of their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// Plain JSON strings (bytes that are not UTF-8 are replaced by U+FFFD when encoding a
    /// reply; arguments that are not UTF-8 cannot be encoded).
    #[default]
    Text,
    /// Every string is the standard base64 (with padding) of its bytes.
    Base64,
}

impl Encoding {
    /// Reads an encoding header value: `base64` (any case) selects [`Encoding::Base64`].
    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.trim().eq_ignore_ascii_case(BASE64) => Encoding::Base64,
            _ => Encoding::Text,
        }
    }
}

/// A request body that is not a valid command or pipeline (the server answers HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(String);

impl RequestError {
    fn new(message: impl Into<String>) -> Self {
        RequestError(message.into())
    }

    /// The message, in Redis's `ERR …` style, ready for an `{"error":…}` body.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RequestError {}

// ---------------------------------------------------------------------------------------
// Client side: commands → bodies, bodies → replies.
// ---------------------------------------------------------------------------------------

/// True when some argument of these commands is not UTF-8 (so the plain dialect cannot
/// carry it and [`Encoding::Base64`] arguments are needed).
pub fn needs_base64_args<'a>(cmds: impl IntoIterator<Item = &'a Cmd>) -> bool {
    cmds.into_iter()
        .any(|c| c.args().iter().any(|a| std::str::from_utf8(a).is_err()))
}

/// The body of `POST /` for one command.
///
/// # Errors
///
/// With [`Encoding::Text`], an argument that is not UTF-8 (see [`needs_base64_args`]).
pub fn encode_command(cmd: &Cmd, args: Encoding) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::with_capacity(body_size_hint(std::slice::from_ref(cmd)));
    write_command(&mut out, cmd, args)?;
    Ok(out)
}

/// The body of `POST /pipeline` (or `/multi-exec`) for several commands.
///
/// # Errors
///
/// As [`encode_command`].
pub fn encode_pipeline(cmds: &[Cmd], args: Encoding) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::with_capacity(body_size_hint(cmds) + 2);
    out.push(b'[');
    for (i, cmd) in cmds.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_command(&mut out, cmd, args)?;
    }
    out.push(b']');
    Ok(out)
}

fn body_size_hint(cmds: &[Cmd]) -> usize {
    cmds.iter()
        .map(|c| c.args().iter().map(|a| a.len() * 4 / 3 + 4).sum::<usize>() + 2)
        .sum()
}

fn write_command(out: &mut Vec<u8>, cmd: &Cmd, args: Encoding) -> Result<(), TransportError> {
    out.push(b'[');
    for (i, arg) in cmd.args().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // The command name stays readable even in base64 mode: servers route on it.
        let text = if i == 0 || args == Encoding::Text {
            std::str::from_utf8(arg).map_err(|_| {
                TransportError::new(
                    ErrorKind::Refused,
                    format!(
                        "argument {i} of {} is not UTF-8: the Upstash REST dialect carries only \
                         text arguments; store binary values through a larder gateway with \
                         base64 arguments enabled, or encode them as text",
                        cmd.name()
                    ),
                )
            })?
        } else {
            out.push(b'"');
            base64_encode_into(arg, out);
            out.push(b'"');
            continue;
        };
        serde_json::to_writer(&mut *out, text).expect("writing JSON to a Vec cannot fail");
    }
    out.push(b']');
    Ok(())
}

/// Decodes the body of a `POST /` reply (`{"result":…}` or `{"error":…}`), whatever the
/// HTTP status.
///
/// # Errors
///
/// [`ErrorKind::Protocol`] when the body is not that shape.
pub fn decode_reply(body: &[u8], encoding: Encoding) -> Result<Value, TransportError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| protocol(format!("{e}")))?;
    item_to_value(json, encoding)
}

/// Decodes the body of a `/pipeline` or `/multi-exec` reply: one value per command, exactly
/// `expected` of them.
///
/// # Errors
///
/// [`ErrorKind::Protocol`] when the body is not an array of `expected` reply items.
pub fn decode_pipeline_reply(
    body: &[u8],
    encoding: Encoding,
    expected: usize,
) -> Result<Vec<Value>, TransportError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| protocol(format!("{e}")))?;
    let Json::Array(items) = json else {
        return Err(protocol("a pipeline reply must be a JSON array"));
    };
    if items.len() != expected {
        return Err(protocol(format!(
            "the pipeline reply has {} items for {expected} commands",
            items.len()
        )));
    }
    items
        .into_iter()
        .map(|item| item_to_value(item, encoding))
        .collect()
}

/// The `error` text of an error body (`{"error":"…"}`), if the body is one.
pub fn error_text(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Json>(body).ok()? {
        Json::Object(mut map) => match map.remove("error")? {
            Json::String(s) => Some(s),
            other => Some(other.to_string()),
        },
        _ => None,
    }
}

fn protocol(detail: impl fmt::Display) -> TransportError {
    TransportError::new(
        ErrorKind::Protocol,
        format!(
            "the server's reply is not in the Upstash REST dialect ({detail}); check that the \
             URL points at an Upstash database or a larder gateway"
        ),
    )
}

fn item_to_value(item: Json, encoding: Encoding) -> Result<Value, TransportError> {
    let Json::Object(mut map) = item else {
        return Err(protocol("a reply item must be an object"));
    };
    if let Some(err) = map.remove("error") {
        return Ok(Value::Error(match err {
            Json::String(s) => s,
            other => other.to_string(),
        }));
    }
    match map.remove("result") {
        Some(result) => json_to_value(result, encoding, 0),
        None => Err(protocol("a reply item has neither `result` nor `error`")),
    }
}

/// Nesting deeper than this is refused (a RESP reply is never this deep; a hostile body
/// must not overflow the stack).
const MAX_DEPTH: usize = 64;

fn json_to_value(json: Json, encoding: Encoding, depth: usize) -> Result<Value, TransportError> {
    if depth > MAX_DEPTH {
        return Err(protocol("the reply is nested too deeply"));
    }
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Int(i64::from(b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Bulk(Bytes::from(n.to_string())),
        },
        Json::String(s) => match encoding {
            Encoding::Text => Value::Bulk(Bytes::from(s)),
            // Servers may leave the status `OK` unencoded (the official client accepts
            // both); "OK" is not valid base64, so there is no ambiguity.
            Encoding::Base64 => match base64_decode(s.as_bytes()) {
                Some(bytes) => Value::Bulk(Bytes::from(bytes)),
                None => Value::Bulk(Bytes::from(s)),
            },
        },
        Json::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| json_to_value(v, encoding, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(_) => return Err(protocol("unexpected object inside a result")),
    })
}

// ---------------------------------------------------------------------------------------
// Server side: bodies → commands, replies → bodies.
// ---------------------------------------------------------------------------------------

/// Parses the body of `POST /`: one command as a JSON array of strings and numbers.
///
/// # Errors
///
/// [`RequestError`] for a body that is not JSON, not an array, empty, or holds something
/// other than strings and numbers (or, with [`Encoding::Base64`], invalid base64).
pub fn parse_command(body: &[u8], args: Encoding) -> Result<Cmd, RequestError> {
    let json = parse_json(body)?;
    json_to_cmd(json, args)
}

/// Parses the body of `POST /pipeline` or `/multi-exec`: a JSON array of commands.
///
/// # Errors
///
/// As [`parse_command`], for the array or any command in it.
pub fn parse_pipeline(body: &[u8], args: Encoding) -> Result<Vec<Cmd>, RequestError> {
    let Json::Array(items) = parse_json(body)? else {
        return Err(RequestError::new(
            "ERR a pipeline body must be a JSON array of commands, like [[\"GET\",\"k\"]]",
        ));
    };
    if items.is_empty() {
        return Err(RequestError::new("ERR empty pipeline"));
    }
    items.into_iter().map(|c| json_to_cmd(c, args)).collect()
}

fn parse_json(body: &[u8]) -> Result<Json, RequestError> {
    serde_json::from_slice(body)
        .map_err(|e| RequestError::new(format!("ERR the request body is not valid JSON: {e}")))
}

fn json_to_cmd(json: Json, args: Encoding) -> Result<Cmd, RequestError> {
    let Json::Array(items) = json else {
        return Err(RequestError::new(
            "ERR a command must be a JSON array of strings, like [\"GET\",\"k\"]",
        ));
    };
    if items.is_empty() {
        return Err(RequestError::new("ERR empty command"));
    }
    let mut parts = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let part = match item {
            Json::String(s) if i > 0 && args == Encoding::Base64 => {
                Bytes::from(base64_decode(s.as_bytes()).ok_or_else(|| {
                    RequestError::new(format!("ERR argument {i} is not valid base64"))
                })?)
            }
            Json::String(s) => Bytes::from(s),
            Json::Number(n) => Bytes::from(n.to_string()),
            Json::Bool(b) => Bytes::from(if b { "true" } else { "false" }),
            other => {
                return Err(RequestError::new(format!(
                    "ERR argument {i} must be a string or a number, not {}",
                    json_kind(&other)
                )));
            }
        };
        parts.push(part);
    }
    if is_blank(&parts[0]) {
        return Err(RequestError::new("ERR the command name is empty"));
    }
    Ok(Cmd::from_parts(parts).expect("non-empty"))
}

fn is_blank(name: &[u8]) -> bool {
    name.iter().all(u8::is_ascii_whitespace)
}

fn json_kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The body answering one command: `{"result":…}` or `{"error":…}`.
pub fn encode_reply(value: &Value, encoding: Encoding) -> Vec<u8> {
    serde_json::to_vec(&Item(value, encoding)).expect("a reply always serializes")
}

/// The body answering a pipeline: `[{"result":…},{"error":…},…]`.
pub fn encode_pipeline_reply(values: &[Value], encoding: Encoding) -> Vec<u8> {
    serde_json::to_vec(&Items(values, encoding)).expect("a reply always serializes")
}

/// A reply body would be longer than the limit it was encoded within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reply is longer than {limit} bytes")]
pub struct ReplyTooLarge {
    /// The limit, in bytes of the encoded body.
    pub limit: usize,
}

/// [`encode_reply`], refusing to build a body longer than `limit` bytes. A reply that is
/// certainly too long is refused before anything is encoded; otherwise encoding stops at
/// the limit.
///
/// # Errors
///
/// [`ReplyTooLarge`] when the body would be longer than `limit`.
pub fn encode_reply_within(
    value: &Value,
    encoding: Encoding,
    limit: usize,
) -> Result<Vec<u8>, ReplyTooLarge> {
    let floor = reply_len_floor(std::slice::from_ref(value), encoding, limit);
    write_within(&Item(value, encoding), floor, limit)
}

/// [`encode_pipeline_reply`], refusing to build a body longer than `limit` bytes.
///
/// # Errors
///
/// [`ReplyTooLarge`] when the body would be longer than `limit`.
pub fn encode_pipeline_reply_within(
    values: &[Value],
    encoding: Encoding,
    limit: usize,
) -> Result<Vec<u8>, ReplyTooLarge> {
    let floor = reply_len_floor(values, encoding, limit);
    write_within(&Items(values, encoding), floor, limit)
}

fn write_within(
    body: &impl Serialize,
    floor: usize,
    limit: usize,
) -> Result<Vec<u8>, ReplyTooLarge> {
    /// A writer that fails instead of growing past `limit`.
    struct Capped {
        out: Vec<u8>,
        limit: usize,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.out.len().saturating_add(buf.len()) > self.limit {
                return Err(std::io::Error::other("reply limit"));
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if floor > limit {
        return Err(ReplyTooLarge { limit });
    }
    let mut w = Capped {
        out: Vec::with_capacity(floor.saturating_add(16)),
        limit,
    };
    // The writer is the only thing that can fail.
    serde_json::to_writer(&mut w, body).map_err(|_| ReplyTooLarge { limit })?;
    Ok(w.out)
}

/// A lower bound of the length `values` take in a pipeline answer (escaping and U+FFFD
/// replacement only lengthen a string), counted without allocating and only up to just past
/// `limit`: a server that runs a long pipeline in parts can stop once the parts so far are
/// already over its reply limit.
pub fn reply_len_floor(values: &[Value], encoding: Encoding, limit: usize) -> usize {
    fn string(n: usize, encoding: Encoding) -> usize {
        2 + match encoding {
            Encoding::Base64 => n.div_ceil(3).saturating_mul(4),
            Encoding::Text => n,
        }
    }
    fn walk(v: &Value, encoding: Encoding, total: &mut usize, limit: usize) {
        if *total > limit {
            return;
        }
        let n = match v {
            Value::Nil => 4,
            Value::Int(_) => 1,
            Value::Bulk(b) => string(b.len(), encoding),
            Value::Status(t) => string(t.len(), encoding),
            Value::Error(e) => e.len() + 2,
            Value::Array(items) => {
                *total = total.saturating_add(items.len().max(1) + 1);
                for item in items {
                    walk(item, encoding, total, limit);
                }
                0
            }
        };
        *total = total.saturating_add(n);
    }
    let mut total = 0;
    for v in values {
        walk(v, encoding, &mut total, limit);
    }
    total
}

/// An error body: `{"error":"…"}`.
pub fn encode_error(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).expect("serializes")
}

/// A reply item: `{"result":…}`, or `{"error":…}` for [`Value::Error`].
struct Item<'a>(&'a Value, Encoding);

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match self.0 {
            Value::Error(e) => map.serialize_entry("error", e)?,
            v => map.serialize_entry("result", &ResultValue(v, self.1))?,
        }
        map.end()
    }
}

struct Items<'a>(&'a [Value], Encoding);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            seq.serialize_element(&Item(v, self.1))?;
        }
        seq.end()
    }
}

/// A result value: strings (bulk and status) encoded as asked, at every depth. An error
/// nested in an array (the reply of `EXEC`, or a script's) is written as its text.
struct ResultValue<'a>(&'a Value, Encoding);

impl Serialize for ResultValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let string = |s: S, bytes: &[u8]| match self.1 {
            Encoding::Base64 => s.serialize_str(&base64_encode(bytes)),
            Encoding::Text => s.serialize_str(&String::from_utf8_lossy(bytes)),
        };
        match self.0 {
            Value::Nil => s.serialize_unit(),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Bulk(b) => string(s, b),
            Value::Status(t) => string(s, t.as_bytes()),
            Value::Error(e) => s.serialize_str(e),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&ResultValue(v, self.1))?;
                }
                seq.end()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Base64 (standard alphabet), through the `base64` crate.
// ---------------------------------------------------------------------------------------

/// Standard base64, padded on encode; padding optional on decode, trailing bits canonical.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    base64::Engine::encode(&B64, bytes)
}

fn base64_encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let written = base64::Engine::encode_slice(&B64, bytes, &mut out[start..])
        .expect("the buffer is sized for the encoding");
    out.truncate(start + written);
}

/// Decodes standard base64. Padding is optional; anything else that is not the alphabet
/// (including whitespace), misplaced padding or non-canonical trailing bits make it `None`.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    base64::Engine::decode(&B64, text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn pubsub_frames_round_trip_and_refuse_garbage() {
        let b = |s: &[u8]| Bytes::copy_from_slice(s);
        let frames = [
            PubSubFrame::Subscribed {
                pattern: false,
                name: b(b"a,b"),
                count: 1,
            },
            PubSubFrame::Subscribed {
                pattern: true,
                name: b(b"user:*"),
                count: 1,
            },
            PubSubFrame::Message {
                channel: b(b"c"),
                payload: b(b"x,y,z"),
            },
            PubSubFrame::PMessage {
                pattern: b(b"u:*"),
                channel: b(b"u:1"),
                payload: b(b"{\"id\":1}"),
            },
        ];
        for f in &frames {
            assert_eq!(
                PubSubFrame::parse(&f.encode(Encoding::Text), Encoding::Text).as_ref(),
                Some(f)
            );
            assert_eq!(
                PubSubFrame::parse(&f.encode(Encoding::Base64), Encoding::Base64).as_ref(),
                Some(f)
            );
        }
        // Base64 carries what text cannot: commas in names, line ends and any byte.
        let odd = PubSubFrame::PMessage {
            pattern: b(b"*,*"),
            channel: b(b"a,b"),
            payload: b(b"\r\n\xff\x00"),
        };
        let line = odd.encode(Encoding::Base64);
        assert!(!line.contains(['\r', '\n']));
        assert_eq!(PubSubFrame::parse(&line, Encoding::Base64), Some(odd));
        for bad in [
            "",
            "message",
            "message,c",
            "hello,c,p",
            "subscribe,c,x",
            "message,!!,Zg==",
        ] {
            let enc = if bad.contains('!') {
                Encoding::Base64
            } else {
                Encoding::Text
            };
            assert_eq!(PubSubFrame::parse(bad, enc), None, "{bad:?}");
        }
        // Names of any bytes survive the path.
        let name = b"p:{x}/y z\xff%".to_vec();
        let path = format!("/{}", subscribe_path(true, &name));
        assert!(path.is_ascii() && !path[1..].contains("//"));
        assert_eq!(parse_subscribe_path(&path), Some((true, name)));
        assert_eq!(parse_subscribe_path("/pipeline"), None);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode(b"Zg").unwrap(), b"f", "padding is optional");
        for bad in ["OK", "Zh==", "Z", "Zm9v\n", "Zm=v", "a==="] {
            assert_eq!(base64_decode(bad.as_bytes()), None, "{bad:?}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(base64_encode(&all).as_bytes()).unwrap(), all);
    }

    #[test]
    fn command_bodies_are_json_arrays() {
        let cmd = Cmd::new("SET")
            .arg("k \"q\"")
            .arg("ключ")
            .arg("PX")
            .arg(1000u64);
        assert_eq!(
            encode_command(&cmd, Encoding::Text).unwrap(),
            r#"["SET","k \"q\"","ключ","PX","1000"]"#.as_bytes()
        );
        let p = encode_pipeline(
            &[Cmd::new("GET").arg("a"), Cmd::new("PING")],
            Encoding::Text,
        );
        assert_eq!(p.unwrap(), br#"[["GET","a"],["PING"]]"#);
    }

    #[test]
    fn binary_args_need_base64_and_round_trip() {
        let cmd = Cmd::new("SET").arg("k").arg(&[0u8, 0xff, 0xfe][..]);
        assert!(needs_base64_args([&cmd]));
        let err = encode_command(&cmd, Encoding::Text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.message().contains("not UTF-8"), "{err}");
        let body = encode_command(&cmd, Encoding::Base64).unwrap();
        assert_eq!(body, br#"["SET","aw==","AP/+"]"#, "the name stays plain");
        assert_eq!(parse_command(&body, Encoding::Base64).unwrap(), cmd);
    }

    #[test]
    fn server_parses_numbers_and_rejects_bad_bodies() {
        let cmd = parse_command(br#"["set","k","v","PX",1500,"x",1.5]"#, Encoding::Text).unwrap();
        let args: Vec<&[u8]> = cmd.args().iter().map(|a| &a[..]).collect();
        assert_eq!(
            args,
            [&b"set"[..], b"k", b"v", b"PX", b"1500", b"x", b"1.5"]
        );
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[]",
            b"[[\"GET\"]]",
            b"[\"GET\",null]",
            b"[\"GET\",{\"a\":1}]",
            b"[\"\"]",
            b"",
        ] {
            let e = parse_command(bad, Encoding::Text).unwrap_err();
            assert!(e.message().starts_with("ERR "), "{e}");
        }
        assert!(parse_pipeline(b"[]", Encoding::Text).is_err());
        assert!(parse_pipeline(b"[\"GET\"]", Encoding::Text).is_err());
        assert!(parse_command(br#"["GET","***"]"#, Encoding::Base64).is_err());
        assert_eq!(
            parse_pipeline(br#"[["GET","a"],["DEL","a","b"]]"#, Encoding::Text)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn replies_encode_every_string_at_every_depth_in_base64() {
        let v = Value::Array(vec![
            bulk("a"),
            Value::Int(7),
            Value::Nil,
            Value::Array(vec![Value::Status("OK".into()), bulk("")]),
        ]);
        assert_eq!(
            encode_reply(&v, Encoding::Base64),
            br#"{"result":["YQ==",7,null,["T0s=",""]]}"#
        );
        assert_eq!(
            encode_reply(&v, Encoding::Text),
            br#"{"result":["a",7,null,["OK",""]]}"#
        );
        assert_eq!(
            encode_reply(&Value::Error("ERR bad".into()), Encoding::Base64),
            br#"{"error":"ERR bad"}"#,
            "errors are never encoded"
        );
        assert_eq!(
            encode_pipeline_reply(&[Value::Int(1), Value::Error("E".into())], Encoding::Text),
            br#"[{"result":1},{"error":"E"}]"#
        );
    }

    #[test]
    fn client_decodes_what_the_server_encodes() {
        let bin = Value::Bulk(Bytes::from((0..=255u8).collect::<Vec<_>>()));
        let v = Value::Array(vec![bin.clone(), Value::Int(-3), Value::Nil]);
        let body = encode_reply(&v, Encoding::Base64);
        assert_eq!(decode_reply(&body, Encoding::Base64).unwrap(), v);
        let values = vec![bulk("x"), Value::Error("WRONGTYPE no".into()), Value::Nil];
        let body = encode_pipeline_reply(&values, Encoding::Text);
        assert_eq!(
            decode_pipeline_reply(&body, Encoding::Text, 3).unwrap(),
            values
        );
        assert_eq!(
            decode_pipeline_reply(&body, Encoding::Text, 2)
                .unwrap_err()
                .kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn client_accepts_plain_ok_in_base64_mode_and_rejects_garbage() {
        assert!(
            decode_reply(br#"{"result":"OK"}"#, Encoding::Base64)
                .unwrap()
                .is_ok()
        );
        for bad in [&b"<html>"[..], b"[]", b"{}", b"{\"result\":{\"a\":1}}"] {
            assert_eq!(
                decode_reply(bad, Encoding::Text).unwrap_err().kind(),
                ErrorKind::Protocol
            );
        }
        assert_eq!(
            error_text(br#"{"error":"Unauthorized"}"#).unwrap(),
            "Unauthorized"
        );
        assert_eq!(error_text(b"nope"), None);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"result\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(decode_reply(deep.as_bytes(), Encoding::Text).is_err());
    }
}
