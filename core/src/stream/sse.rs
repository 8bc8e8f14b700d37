//! Server-sent events: the [`Event`] record, its canonical wire encoding and an incremental
//! [`SseParser`] that follows the WHATWG `EventSource` parsing rules.

use std::mem;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The UTF-8 byte order mark, stripped from the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The default limit on the length of one line (8 MiB).
const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;

/// The largest line buffer kept between lines; a bigger one is freed after its line.
const KEEP_LINE_CAPACITY: usize = 64 * 1024;

/// One server-sent event as recorded and replayed.
///
/// Only the fields that matter for replay are kept: the event name, the `id` and the data.
/// `retry`, comments and unknown fields are dropped by the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The `event:` field (the event name); `None` when the event had none (or an empty one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The `id:` field of this event; `None` when the event had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event's data lines, joined with `'\n'` (per the SSE spec).
    pub data: String,
    /// Milliseconds since the stream's first event when this one arrived (for paced
    /// replay); 0 if unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub t: u64,
}

/// `skip_serializing_if` helper for [`Event::t`].
fn is_zero(t: &u64) -> bool {
    *t == 0
}

impl Event {
    /// A data-only event (no name, no id, `t` = 0), as OpenAI Chat Completions sends them.
    pub fn data(data: impl Into<String>) -> Self {
        Event {
            event: None,
            id: None,
            data: data.into(),
            t: 0,
        }
    }

    /// An event with a name (`event:` field) and data, as the Responses and Anthropic
    /// Messages streams send them.
    pub fn named(event: impl Into<String>, data: impl Into<String>) -> Self {
        Event {
            event: Some(event.into()),
            id: None,
            data: data.into(),
            t: 0,
        }
    }

    /// Appends the event's wire bytes to `out`.
    ///
    /// The encoding is canonical: `event: <name>\n` if there is a name, `id: <id>\n` if
    /// there is an id, then one `data: <line>\n` per line of [`data`](Event::data) (an empty
    /// `data` still gives one `data: \n` line), then a blank line. Every encoded event thus
    /// ends with `"\n\n"`, and parsing the bytes gives the event back (with `t` = 0).
    ///
    /// Data is split at every SSE line end (`"\n"`, `"\r\n"` or `"\r"`), so a `'\r'` in data
    /// (which a parsed event never holds) cannot break the framing. Line-end characters in
    /// `event` or `id` are left out for the same reason.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        if let Some(event) = &self.event {
            write_field(out, b"event: ", event);
        }
        if let Some(id) = &self.id {
            write_field(out, b"id: ", id);
        }
        for line in sse_lines(&self.data) {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    /// The event's wire bytes (see [`encode_into`](Event::encode_into)).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    /// The length of [`encode`](Event::encode)'s output, computed without allocating.
    pub fn encoded_len(&self) -> usize {
        let field_len = |prefix: &str, value: &str| {
            let breaks = value.bytes().filter(|&b| b == b'\r' || b == b'\n').count();
            prefix.len() + value.len() - breaks + 1
        };
        let mut len = 1; // the blank line
        if let Some(event) = &self.event {
            len += field_len("event: ", event);
        }
        if let Some(id) = &self.id {
            len += field_len("id: ", id);
        }
        for line in sse_lines(&self.data) {
            len += "data: ".len() + line.len() + 1;
        }
        len
    }
}

/// Writes `<prefix><value>\n`, leaving out any `'\r'` or `'\n'` in `value`.
fn write_field(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    out.extend_from_slice(prefix);
    for piece in value.split(['\r', '\n']) {
        out.extend_from_slice(piece.as_bytes());
    }
    out.push(b'\n');
}

/// Splits `s` at SSE line ends (`"\r\n"`, `"\n"`, `"\r"`); always yields at least one piece.
fn sse_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(i) => {
                let (line, tail) = current.split_at(i);
                let tail = tail
                    .strip_prefix("\r\n")
                    .or_else(|| tail.get(1..))
                    .unwrap_or("");
                rest = Some(tail);
                Some(line)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Why a byte stream is not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line of the stream is not valid UTF-8 (`text/event-stream` is always UTF-8).
    #[error("invalid event stream: a line is not valid UTF-8")]
    InvalidUtf8,
    /// A line is longer than the parser's limit.
    #[error("invalid event stream: a line is longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The limit in bytes ([`SseParser::with_max_line`]).
        limit: usize,
    },
}

/// An incremental server-sent events parser.
///
/// Bytes may arrive split at any point: [`push`](SseParser::push) buffers a partial line
/// until its line end arrives and returns every event completed so far. Parsing follows the
/// WHATWG `EventSource` rules:
///
/// - a line ends at `"\r\n"`, `"\n"` or `"\r"` (a `"\r"` ending one chunk and a `"\n"`
///   starting the next make one line end);
/// - a UTF-8 byte order mark at the very start of the stream is skipped;
/// - lines starting with `':'` are comments and are ignored;
/// - a line `name: value` sets field `name` (one space after the colon is removed); a line
///   without a colon is a field with an empty value;
/// - `data` lines are joined with `'\n'`, `event` sets the name (an empty one clears it),
///   `id` sets the id unless it contains NUL; `retry` and unknown fields are ignored;
/// - a blank line dispatches the event if it has at least one `data` line or an event name
///   (like the official OpenAI SDK, an event with only a name is dispatched too); the
///   fields are then reset, so [`Event::id`] is the id given in that event only.
///
/// Every line must be valid UTF-8, and no line may be longer than the limit
/// ([`with_max_line`](SseParser::with_max_line)); the error does not depend on where the
/// input was split. Timestamps are not the parser's business: events come out with `t` = 0.
///
/// ```
/// use larder_core::stream::{Event, SseParser};
///
/// let mut parser = SseParser::new();
/// let mut events = Vec::new();
/// parser.push(b"event: ping\ndata: {\"type\"", &mut events)?;
/// assert!(events.is_empty());
/// parser.push(b":\"ping\"}\r\n\r\n", &mut events)?;
/// assert_eq!(events, [Event::named("ping", r#"{"type":"ping"}"#)]);
/// assert!(parser.at_boundary());
/// # Ok::<(), larder_core::stream::SseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SseParser {
    /// The pending partial line (bytes after the last line end).
    line: Vec<u8>,
    /// The previous chunk ended with `'\r'`: a `'\n'` starting the next chunk is skipped.
    skip_lf: bool,
    /// No line has been completed yet (a leading BOM is still to be stripped).
    at_start: bool,
    /// The longest allowed line, in bytes.
    max_line: usize,
    /// The data lines of the event being built, joined with `'\n'`.
    data: String,
    /// At least one `data` line was seen for the event being built.
    has_data: bool,
    /// The event name of the event being built.
    event: Option<String>,
    /// The id of the event being built.
    id: Option<String>,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with the default line limit of 8 MiB.
    pub fn new() -> Self {
        SseParser::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A parser that rejects any line (complete or still partial) longer than `limit`
    /// bytes with [`SseError::LineTooLong`]. Line ends do not count towards the length.
    pub fn with_max_line(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            skip_lf: false,
            at_start: true,
            max_line: limit,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
        }
    }

    /// Feeds bytes, appending every event completed by them to `out`.
    ///
    /// On error, `out` keeps the events dispatched before the offending line, and the rest
    /// of the chunk is not parsed: the stream is malformed and the parser should not be fed
    /// further.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        let mut rest = chunk;
        if self.skip_lf {
            let Some(&first) = rest.first() else {
                return Ok(());
            };
            self.skip_lf = false;
            if first == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (line, tail) = rest.split_at(end);
            if self.line.is_empty() {
                self.check_len(line.len())?;
                self.process_line(line, out)?;
            } else {
                self.check_len(self.line.len() + line.len())?;
                let mut buf = mem::take(&mut self.line);
                buf.extend_from_slice(line);
                let processed = self.process_line(&buf, out);
                // Keep the buffer for the next partial line unless one huge line grew it.
                if buf.capacity() <= KEEP_LINE_CAPACITY {
                    buf.clear();
                    self.line = buf;
                }
                processed?;
            }
            // `tail` starts with the line end found above.
            rest = match tail {
                [b'\r', b'\n', after @ ..] => after,
                [b'\r'] => {
                    self.skip_lf = true;
                    &[]
                }
                [_, after @ ..] => after,
                [] => &[],
            };
        }
        if !rest.is_empty() {
            self.check_len(self.line.len() + rest.len())?;
            self.line.extend_from_slice(rest);
        }
        Ok(())
    }

    /// True when no partial line or undispatched field is pending: the bytes so far end at
    /// an event boundary (or are empty), so a stream that stops here lost nothing.
    pub fn at_boundary(&self) -> bool {
        // A stream start holding nothing but (part of) a BOM has nothing pending.
        let nothing_pending =
            self.line.is_empty() || (self.at_start && BOM.starts_with(&self.line));
        nothing_pending && !self.has_data && self.event.is_none() && self.id.is_none()
    }

    /// Fails when a line of `len` bytes is over the limit.
    fn check_len(&self, len: usize) -> Result<(), SseError> {
        if len > self.max_line {
            return Err(SseError::LineTooLong {
                limit: self.max_line,
            });
        }
        Ok(())
    }

    /// Interprets one complete line (without its line end).
    fn process_line(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        let mut line = line;
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = (!value.is_empty()).then(|| value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }

    /// Ends the event being built at a blank line.
    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let id = self.id.take();
        if self.has_data || self.event.is_some() {
            out.push(Event {
                event: self.event.take(),
                id,
                data: mem::take(&mut self.data),
                t: 0,
            });
        }
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    macro_rules! fixtures {
        ($($name:literal),* $(,)?) => {
            [$(($name, include_bytes!(concat!("../../tests/fixtures/streams/", $name, ".sse")) as &[u8])),*]
        };
    }

    const FIXTURES: [(&str, &[u8]); 11] = fixtures![
        "openai_chat_text",
        "openai_chat_tools",
        "openai_chat_error",
        "openai_responses_text",
        "openai_responses_tools",
        "openai_responses_reasoning",
        "openai_responses_failed",
        "anthropic_text",
        "anthropic_tools",
        "anthropic_thinking",
        "anthropic_error",
    ];

    /// Everything a parse produces: the events, the first error, and `at_boundary` at the
    /// end (stopping at the first error).
    #[derive(Debug, PartialEq)]
    struct Outcome {
        events: Vec<Event>,
        error: Option<SseError>,
        boundary: bool,
    }

    fn parse_chunks<'a>(
        mut parser: SseParser,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Outcome {
        let mut events = Vec::new();
        for chunk in chunks {
            if let Err(e) = parser.push(chunk, &mut events) {
                return Outcome {
                    events,
                    error: Some(e),
                    boundary: false,
                };
            }
        }
        Outcome {
            events,
            error: None,
            boundary: parser.at_boundary(),
        }
    }

    fn parse(bytes: &[u8]) -> Outcome {
        parse_chunks(SseParser::new(), [bytes])
    }

    fn events(bytes: &[u8]) -> Vec<Event> {
        let outcome = parse(bytes);
        assert_eq!(outcome.error, None);
        outcome.events
    }

    fn replace_line_ends(bytes: &[u8], with: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() * 2);
        for &b in bytes {
            if b == b'\n' {
                out.extend_from_slice(with);
            } else {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn fixtures_parse_into_the_expected_number_of_events() {
        let counts = [8, 10, 4, 12, 8, 18, 6, 9, 14, 12, 4];
        for ((name, bytes), count) in FIXTURES.iter().zip(counts) {
            let outcome = parse(bytes);
            assert_eq!(outcome.error, None, "{name}");
            assert!(outcome.boundary, "{name}");
            assert_eq!(outcome.events.len(), count, "{name}");
            for event in &outcome.events {
                assert_eq!(event.t, 0);
                assert_eq!(event.id, None);
                assert!(!event.data.is_empty(), "{name}");
                let named = name.starts_with("openai_responses") || name.starts_with("anthropic");
                assert_eq!(event.event.is_some(), named, "{name}");
            }
        }
    }

    #[test]
    fn encoding_parsed_fixture_events_reproduces_the_fixture_bytes() {
        for (name, bytes) in FIXTURES {
            let parsed = events(bytes);
            let mut out = Vec::new();
            for event in &parsed {
                let before = out.len();
                event.encode_into(&mut out);
                assert_eq!(out.len() - before, event.encoded_len(), "{name}");
                assert_eq!(event.encode(), out[before..], "{name}");
            }
            assert_eq!(out, bytes, "{name}");
        }
    }

    #[test]
    fn every_two_piece_split_of_every_fixture_gives_the_same_events() {
        for (name, bytes) in FIXTURES {
            let whole = parse(bytes);
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(
                    parse_chunks(SseParser::new(), [a, b]),
                    whole,
                    "{name} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn one_byte_pieces_give_the_same_events() {
        for (name, bytes) in FIXTURES {
            let whole = parse(bytes);
            assert_eq!(
                parse_chunks(SseParser::new(), bytes.chunks(1)),
                whole,
                "{name}"
            );
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_give_the_same_events_at_every_split() {
        for (name, bytes) in FIXTURES {
            let whole = parse(bytes);
            for ending in [&b"\r\n"[..], b"\r"] {
                let variant = replace_line_ends(bytes, ending);
                assert_eq!(parse(&variant), whole, "{name}");
                assert_eq!(
                    parse_chunks(SseParser::new(), variant.chunks(1)),
                    whole,
                    "{name}"
                );
                for cut in 0..=variant.len() {
                    let (a, b) = variant.split_at(cut);
                    let split = parse_chunks(SseParser::new(), [a, b]);
                    assert_eq!(split.events, whole.events, "{name} cut at {cut}");
                    assert_eq!(split.error, None);
                }
            }
        }
    }

    #[test]
    fn cr_at_chunk_end_and_lf_at_next_chunk_start_are_one_line_end() {
        let chunks: [&[u8]; 4] = [b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"];
        let outcome = parse_chunks(SseParser::new(), chunks);
        assert_eq!(outcome.events, [Event::data("a\nb")]);
        assert!(outcome.boundary);
        // An empty chunk in between does not forget the pending CR.
        let chunks: [&[u8]; 4] = [b"data: a\r", b"", b"\n", b"\n"];
        assert_eq!(
            parse_chunks(SseParser::new(), chunks).events,
            [Event::data("a")]
        );
        // CR CR is two line ends: a blank line.
        assert_eq!(
            events(b"data: a\r\rdata: b\r\r"),
            [Event::data("a"), Event::data("b")]
        );
        // LF CR is two line ends as well.
        assert_eq!(events(b"data: a\n\r"), [Event::data("a")]);
    }

    #[test]
    fn a_leading_bom_is_stripped_wherever_it_is_split() {
        let stream = b"\xEF\xBB\xBFdata: hi\n\n";
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let outcome = parse_chunks(SseParser::new(), [a, b]);
            assert_eq!(outcome.events, [Event::data("hi")], "cut at {cut}");
        }
        assert_eq!(
            parse_chunks(SseParser::new(), stream.chunks(1)).events,
            [Event::data("hi")]
        );
        // A BOM alone is not a pending line.
        let mut parser = SseParser::new();
        parser.push(b"\xEF\xBB", &mut Vec::new()).unwrap();
        assert!(parser.at_boundary());
    }

    #[test]
    fn only_the_first_bom_is_stripped() {
        // The second BOM makes the field name "\u{feff}data": an unknown field.
        assert_eq!(
            events(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"),
            [Event::data("a")]
        );
        // A BOM after the first line is not stripped either.
        assert_eq!(events(b"\n\xEF\xBB\xBFdata: b\n\n"), []);
    }

    #[test]
    fn comments_are_ignored() {
        let stream = b": keep-alive\n\ndata: a\n: inside an event\ndata: b\n\n:\n\n";
        let outcome = parse(stream);
        assert_eq!(outcome.events, [Event::data("a\nb")]);
        assert!(outcome.boundary);
        // A stream of comments only is always at a boundary.
        let mut parser = SseParser::new();
        parser.push(b": ping\n", &mut Vec::new()).unwrap();
        assert!(parser.at_boundary());
    }

    #[test]
    fn field_value_rules() {
        // No space after the colon.
        assert_eq!(events(b"data:x\n\n"), [Event::data("x")]);
        // Only one leading space is removed.
        assert_eq!(events(b"data:  x \n\n"), [Event::data(" x ")]);
        // A field with no colon has an empty value.
        assert_eq!(events(b"data\n\n"), [Event::data("")]);
        assert_eq!(events(b"data\ndata\n\n"), [Event::data("\n")]);
        // Colons after the first belong to the value.
        assert_eq!(events(b"data: a:b: c\n\n"), [Event::data("a:b: c")]);
        // Field names are case-sensitive.
        assert_eq!(events(b"Data: x\n\n"), []);
    }

    #[test]
    fn multi_line_data_is_joined_with_lf() {
        let parsed = events(b"data: {\ndata: \"a\": 1\ndata: }\n\n");
        assert_eq!(parsed, [Event::data("{\n\"a\": 1\n}")]);
        // And encodes back to one data line per line.
        assert_eq!(
            &parsed[0].encode()[..],
            b"data: {\ndata: \"a\": 1\ndata: }\n\n"
        );
    }

    #[test]
    fn event_names_and_dispatch_rules() {
        // An event with only a name is dispatched, with empty data.
        assert_eq!(events(b"event: ping\n\n"), [Event::named("ping", "")]);
        // The last event field wins; an empty one clears the name.
        assert_eq!(
            events(b"event: a\nevent: b\ndata: x\n\n"),
            [Event::named("b", "x")]
        );
        assert_eq!(events(b"event: a\nevent:\ndata: x\n\n"), [Event::data("x")]);
        // Blank lines without fields dispatch nothing.
        assert_eq!(events(b"\n\n\r\n\r"), []);
        // Fields do not leak into the next event.
        assert_eq!(
            events(b"event: a\nid: 7\ndata: x\n\ndata: y\n\n"),
            [
                Event {
                    event: Some("a".into()),
                    id: Some("7".into()),
                    data: "x".into(),
                    t: 0
                },
                Event::data("y")
            ]
        );
    }

    #[test]
    fn ids_retry_and_unknown_fields() {
        let parsed = events(b"id: 42\nretry: 1000\nfoo: bar\ndata: x\n\n");
        assert_eq!(parsed[0].id.as_deref(), Some("42"));
        assert_eq!(parsed[0].data, "x");
        assert_eq!(parsed[0].event, None);
        // An id containing NUL is ignored (an earlier id in the same event stays).
        let parsed = events(b"id: 1\nid: a\0b\ndata: x\n\n");
        assert_eq!(parsed[0].id.as_deref(), Some("1"));
        // An empty id is kept.
        assert_eq!(events(b"id\ndata: x\n\n")[0].id.as_deref(), Some(""));
        // An id alone dispatches nothing but is pending until the blank line.
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.push(b"id: 3\n", &mut out).unwrap();
        assert!(!parser.at_boundary());
        parser.push(b"\n", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(parser.at_boundary());
        // retry-only and unknown-only blocks dispatch nothing.
        assert_eq!(events(b"retry: 10\n\nfoo\n\n"), []);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let outcome = parse(b"data: ok\n\ndata: \xFF\n\ndata: later\n\n");
        assert_eq!(outcome.events, [Event::data("ok")]);
        assert_eq!(outcome.error, Some(SseError::InvalidUtf8));
        // Also in event names, comments and when the bad byte arrives in a later chunk.
        assert_eq!(parse(b"event: \xC3\n").error, Some(SseError::InvalidUtf8));
        assert_eq!(parse(b":\xFF\n").error, Some(SseError::InvalidUtf8));
        let chunks: [&[u8]; 2] = [b"data: a", b"\xC3\x28\n"];
        assert_eq!(
            parse_chunks(SseParser::new(), chunks).error,
            Some(SseError::InvalidUtf8)
        );
        // A partial invalid line is only reported when the line ends.
        let mut parser = SseParser::new();
        assert_eq!(parser.push(b"data: \xFF", &mut Vec::new()), Ok(()));
        assert!(!parser.at_boundary());
    }

    #[test]
    fn multibyte_characters_split_across_chunks_are_fine() {
        let stream = "data: 27 × 453 = 12,231 ✓ 🦀\n\n".as_bytes();
        let whole = parse(stream);
        assert_eq!(whole.events, [Event::data("27 × 453 = 12,231 ✓ 🦀")]);
        assert_eq!(parse_chunks(SseParser::new(), stream.chunks(1)), whole);
    }

    #[test]
    fn lines_over_the_limit_are_errors_however_split() {
        let limit = 10;
        let too_long = SseError::LineTooLong { limit };
        // "data: 1234" is exactly 10 bytes: fine.
        let ok = parse_chunks(SseParser::with_max_line(limit), [&b"data: 1234\n\n"[..]]);
        assert_eq!(ok.events, [Event::data("1234")]);
        assert_eq!(ok.error, None);
        // One more byte, complete or partial, is too long.
        let stream = b"data: a\n\ndata: 12345\n\n";
        let whole = parse_chunks(SseParser::with_max_line(limit), [&stream[..]]);
        assert_eq!(whole.error, Some(too_long.clone()));
        assert_eq!(whole.events, [Event::data("a")]);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                parse_chunks(SseParser::with_max_line(limit), [a, b]),
                whole,
                "cut at {cut}"
            );
        }
        let mut parser = SseParser::with_max_line(limit);
        assert_eq!(
            parser.push(b"data: 12345", &mut Vec::new()),
            Err(too_long.clone())
        );
        // Growing a partial line past the limit over several chunks.
        let mut parser = SseParser::with_max_line(limit);
        assert_eq!(parser.push(b"data: ", &mut Vec::new()), Ok(()));
        assert_eq!(parser.push(b"1234", &mut Vec::new()), Ok(()));
        assert_eq!(parser.push(b"5", &mut Vec::new()), Err(too_long));
        // The default limit is 8 MiB.
        let big = format!("data: {}\n\n", "x".repeat(DEFAULT_MAX_LINE - 6));
        assert_eq!(parse(big.as_bytes()).error, None);
        let bigger = format!("data: {}\n\n", "x".repeat(DEFAULT_MAX_LINE - 5));
        assert_eq!(
            parse(bigger.as_bytes()).error,
            Some(SseError::LineTooLong {
                limit: DEFAULT_MAX_LINE
            })
        );
    }

    #[test]
    fn at_boundary_is_true_exactly_at_event_boundaries() {
        for (name, bytes) in FIXTURES {
            for cut in 0..=bytes.len() {
                let prefix = &bytes[..cut];
                let expected = prefix.is_empty() || prefix.ends_with(b"\n\n");
                let outcome = parse(prefix);
                assert_eq!(outcome.error, None);
                assert_eq!(outcome.boundary, expected, "{name} cut at {cut}");
            }
        }
        assert!(SseParser::new().at_boundary());
        assert!(SseParser::default().at_boundary());
    }

    #[test]
    fn encoding_rules() {
        let event = Event {
            event: Some("update".into()),
            id: Some("17".into()),
            data: "a\nb".into(),
            t: 250,
        };
        assert_eq!(
            &event.encode()[..],
            b"event: update\nid: 17\ndata: a\ndata: b\n\n"
        );
        assert_eq!(&Event::data("").encode()[..], b"data: \n\n");
        assert_eq!(&Event::data("x\n").encode()[..], b"data: x\ndata: \n\n");
        assert_eq!(
            &Event::named("ping", "").encode()[..],
            b"event: ping\ndata: \n\n"
        );
        // encode_into appends.
        let mut out = b"prefix".to_vec();
        Event::data("x").encode_into(&mut out);
        assert_eq!(out, b"prefixdata: x\n\n");
    }

    #[test]
    fn encoding_never_breaks_the_framing() {
        let hostile = Event {
            event: Some("a\r\nevent: b".into()),
            id: Some("1\n\n2".into()),
            data: "x\r\ny\rz\n\r".into(),
            t: 0,
        };
        let bytes = hostile.encode();
        assert_eq!(bytes.len(), hostile.encoded_len());
        assert_eq!(
            &bytes[..],
            b"event: aevent: b\nid: 12\ndata: x\ndata: y\ndata: z\ndata: \ndata: \n\n"
        );
        let parsed = events(&bytes);
        assert_eq!(
            parsed,
            [Event {
                event: Some("aevent: b".into()),
                id: Some("12".into()),
                data: "x\ny\nz\n\n".into(),
                t: 0
            }]
        );
    }

    #[test]
    fn serde_form_is_compact() {
        let event = Event::named("message_stop", r#"{"type":"message_stop"}"#);
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"event":"message_stop","data":"{\"type\":\"message_stop\"}"}"#
        );
        let timed = Event {
            t: 120,
            ..Event::data("x")
        };
        assert_eq!(
            serde_json::to_string(&timed).unwrap(),
            r#"{"data":"x","t":120}"#
        );
        let back: Event = serde_json::from_str(r#"{"data":"x"}"#).unwrap();
        assert_eq!(back, Event::data("x"));
        let back: Event = serde_json::from_str(r#"{"data":"x","t":120,"id":"9"}"#).unwrap();
        assert_eq!(back.t, 120);
        assert_eq!(back.id.as_deref(), Some("9"));
    }

    #[test]
    fn errors_display_clearly() {
        assert_eq!(
            SseError::InvalidUtf8.to_string(),
            "invalid event stream: a line is not valid UTF-8"
        );
        assert_eq!(
            SseError::LineTooLong { limit: 1024 }.to_string(),
            "invalid event stream: a line is longer than the limit of 1024 bytes"
        );
        let _: &dyn std::error::Error = &SseError::InvalidUtf8;
    }

    /// Bytes that exercise every parser rule.
    fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
        let tokens: &[&[u8]] = &[
            b"data",
            b"event",
            b"id",
            b"retry",
            b":",
            b": ",
            b" ",
            b"\n",
            b"\n",
            b"\r",
            b"\r\n",
            b"x",
            b"\xEF\xBB\xBF",
            b"\xC3\xA9",
            b"\xC3",
            b"\xFF",
            b"\0",
            b"{\"type\":\"ping\"}",
        ];
        prop::collection::vec(prop::sample::select(tokens), 0..40).prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_outcome(
            bytes in sse_bytes(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            limit in prop::sample::select(vec![4usize, 16, 1024]),
        ) {
            let whole = parse_chunks(SseParser::with_max_line(limit), [&bytes[..]]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&bytes[start..p]);
                start = p;
            }
            chunks.push(&bytes[start..]);
            let split = parse_chunks(SseParser::with_max_line(limit), chunks);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn parsed_events_survive_an_encode_and_parse_round_trip(bytes in sse_bytes()) {
            let outcome = parse(&bytes);
            let mut encoded = Vec::new();
            for event in &outcome.events {
                event.encode_into(&mut encoded);
            }
            let again = parse(&encoded);
            prop_assert_eq!(again.error, None);
            prop_assert!(again.boundary);
            prop_assert_eq!(again.events, outcome.events);
        }

        #[test]
        fn encoded_len_matches_for_any_event(
            event in proptest::option::of(".{0,8}"),
            id in proptest::option::of(".{0,8}"),
            data in "(.|\r|\n){0,24}",
        ) {
            let event = Event { event, id, data, t: 0 };
            prop_assert_eq!(event.encode().len(), event.encoded_len());
            let parsed = events(&event.encode());
            prop_assert_eq!(parsed.len(), 1);
        }
    }
}
