//! The Upstash REST dialect codec (`larder_core::rest`), both directions.
//!
//! The first input byte picks what the rest is:
//! - 0: a reply body from a server (`decode_reply`, `decode_pipeline_reply`, `error_text`);
//!   whatever decodes must re-encode and decode to the same value;
//! - 1: a request body to the gateway (`parse_command`, `parse_pipeline`); whatever parses
//!   must encode (base64 arguments always, text arguments when they are UTF-8) and parse back
//!   to the same commands;
//! - 2: bytes for base64: `decode(encode(x)) == x`, and whatever decodes re-encodes to the
//!   same text up to padding;
//! - 3: a structured `Value` (via `arbitrary`); encoding it as a reply and decoding it gives
//!   the value the dialect can carry (statuses become bulk strings, nested errors text).

use bytes::Bytes;
use larder_core::Value;
use larder_core::rest::{self, Encoding};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};

const ENCODINGS: [Encoding; 2] = [Encoding::Text, Encoding::Base64];

/// Runs the check the first byte selects on the rest.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => replies(rest),
        1 => requests(rest),
        2 => base64(rest),
        _ => values(rest),
    }
}

fn replies(body: &[u8]) {
    let _ = rest::error_text(body);
    for enc in ENCODINGS {
        if let Ok(v) = rest::decode_reply(body, enc) {
            let again = rest::decode_reply(&rest::encode_reply(&v, enc), enc)
                .expect("a re-encoded reply decodes");
            assert_eq!(again, v, "reply round trip ({enc:?})");
        }
        let n = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(items)) => items.len(),
            _ => 1,
        };
        if let Ok(vs) = rest::decode_pipeline_reply(body, enc, n) {
            let again = rest::decode_pipeline_reply(&rest::encode_pipeline_reply(&vs, enc), enc, n)
                .expect("a re-encoded pipeline reply decodes");
            assert_eq!(again, vs, "pipeline reply round trip ({enc:?})");
        }
    }
}

fn requests(body: &[u8]) {
    for enc in ENCODINGS {
        if let Ok(cmd) = rest::parse_command(body, enc) {
            for out in ENCODINGS {
                match rest::encode_command(&cmd, out) {
                    Ok(b) => assert_eq!(
                        rest::parse_command(&b, out).expect("an encoded command parses"),
                        cmd,
                        "command round trip ({enc:?} → {out:?})"
                    ),
                    Err(_) => assert!(
                        out == Encoding::Text && rest::needs_base64_args([&cmd]),
                        "only non-UTF-8 arguments may fail to encode"
                    ),
                }
            }
        }
        if let Ok(cmds) = rest::parse_pipeline(body, enc) {
            assert!(!cmds.is_empty(), "an empty pipeline is refused");
            let b = rest::encode_pipeline(&cmds, Encoding::Base64).expect("base64 encodes all");
            assert_eq!(
                rest::parse_pipeline(&b, Encoding::Base64).expect("an encoded pipeline parses"),
                cmds,
                "pipeline round trip"
            );
        }
    }
}

fn base64(bytes: &[u8]) {
    let encoded = rest::base64_encode(bytes);
    assert_eq!(
        rest::base64_decode(encoded.as_bytes()).as_deref(),
        Some(bytes),
        "decode(encode(x)) == x"
    );
    if let Some(decoded) = rest::base64_decode(bytes) {
        let text = std::str::from_utf8(bytes).expect("valid base64 is ASCII");
        assert_eq!(
            rest::base64_encode(&decoded).trim_end_matches('='),
            text.trim_end_matches('='),
            "base64 that decodes is canonical up to padding"
        );
    }
}

/// A reply as a transport may hand it to the gateway.
#[derive(Debug, Arbitrary)]
enum FuzzValue {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Status(String),
    Error(String),
    Array(Vec<FuzzValue>),
}

/// Nesting kept below the codec's own depth limit (64), which is tested separately.
const MAX_DEPTH: usize = 32;

fn to_value(v: FuzzValue, depth: usize) -> Value {
    match v {
        FuzzValue::Nil => Value::Nil,
        FuzzValue::Int(i) => Value::Int(i),
        FuzzValue::Bulk(b) => Value::Bulk(Bytes::from(b)),
        FuzzValue::Status(s) => Value::Status(s),
        FuzzValue::Error(e) => Value::Error(e),
        FuzzValue::Array(_) if depth >= MAX_DEPTH => Value::Nil,
        FuzzValue::Array(items) => {
            Value::Array(items.into_iter().map(|v| to_value(v, depth + 1)).collect())
        }
    }
}

/// What a client decodes from a reply carrying `v`.
fn carried(v: &Value, enc: Encoding, top: bool) -> Value {
    let text = |bytes: &[u8]| match enc {
        Encoding::Base64 => Value::Bulk(Bytes::copy_from_slice(bytes)),
        Encoding::Text => Value::Bulk(Bytes::from(String::from_utf8_lossy(bytes).into_owned())),
    };
    match v {
        Value::Error(e) if top => Value::Error(e.clone()),
        // Nested errors are written as plain text, even in base64 mode.
        Value::Error(e) => match enc {
            Encoding::Base64 => Value::Bulk(Bytes::from(
                rest::base64_decode(e.as_bytes()).unwrap_or_else(|| e.clone().into_bytes()),
            )),
            Encoding::Text => Value::Bulk(Bytes::from(e.clone())),
        },
        Value::Bulk(b) => text(b),
        Value::Status(s) => text(s.as_bytes()),
        Value::Array(items) => Value::Array(items.iter().map(|i| carried(i, enc, false)).collect()),
        other => other.clone(),
    }
}

fn values(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(vs) = Vec::<FuzzValue>::arbitrary(&mut u) else {
        return;
    };
    let vs: Vec<Value> = vs.into_iter().map(|v| to_value(v, 0)).collect();
    for enc in ENCODINGS {
        for v in &vs {
            let decoded = rest::decode_reply(&rest::encode_reply(v, enc), enc)
                .expect("an encoded reply decodes");
            assert_eq!(decoded, carried(v, enc, true), "reply of {v:?} ({enc:?})");
        }
        let decoded =
            rest::decode_pipeline_reply(&rest::encode_pipeline_reply(&vs, enc), enc, vs.len())
                .expect("an encoded pipeline reply decodes");
        let expected: Vec<Value> = vs.iter().map(|v| carried(v, enc, true)).collect();
        assert_eq!(decoded, expected, "pipeline reply ({enc:?})");
    }
}
