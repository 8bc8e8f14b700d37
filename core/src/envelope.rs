//! The value envelope: how a cached response is stored.
//!
//! An envelope is versioned JSON:
//!
//! ```json
//! {"v":1,"response":"Paris.","model":"gpt-4o-mini","timestamp":1764090000,
//!  "metadata":{"temperature":0.7},"fresh_until":1764093600000,"stale_until":1764097200000,
//!  "tags":["geo"]}
//! ```
//!
//! `response`, `model`, `timestamp` (unix seconds) and `metadata` are the fields of the
//! go-deep-agent seed; `fresh_until` / `stale_until` (unix ms) drive fail-safe serving of
//! stale values; `tags` drive tag invalidation. docs/KEY_FORMAT.md is the full spec.
//!
//! Decoding never fails: see [`Envelope::decode`] and [`Decoded`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// The current envelope version, written in the `v` field.
pub const ENVELOPE_VERSION: u32 = 1;

/// A cached response and what larder needs to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// Format version ([`ENVELOPE_VERSION`] when written by this crate).
    pub v: u32,
    /// The response text.
    pub response: String,
    /// The model that produced it (empty when unknown).
    #[serde(default)]
    pub model: String,
    /// When it was produced, unix seconds (0 when unknown).
    #[serde(default)]
    pub timestamp: i64,
    /// Free-form metadata (temperature, token counts, …).
    #[serde(
        default,
        skip_serializing_if = "Map::is_empty",
        serialize_with = "sorted::map"
    )]
    pub metadata: Map<String, Json>,
    /// Unix ms until which the value is fresh; absent means fresh until the key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh_until: Option<u64>,
    /// Unix ms until which a stale value may still be served when recomputing fails;
    /// absent means no stale window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_until: Option<u64>,
    /// Tags for invalidation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The events of a streamed answer, for replay (absent for an answer that was not
    /// streamed). `response` holds their aggregated text, so readers that do not know
    /// this field still see the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<crate::stream::Recording>,
}

/// What a stored value turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A larder envelope.
    Envelope(Envelope),
    /// Raw UTF-8 text written by another program (go-deep-agent stores responses this
    /// way), wrapped as an envelope with only `response` set and `v` = 0.
    Legacy(Envelope),
    /// Bytes that are neither: treat as a miss and count it as corrupt. The string says why.
    Corrupt(String),
}

impl Decoded {
    /// The envelope, if the value was usable.
    pub fn into_envelope(self) -> Option<Envelope> {
        match self {
            Decoded::Envelope(e) | Decoded::Legacy(e) => Some(e),
            Decoded::Corrupt(_) => None,
        }
    }
}

/// The metadata field in which the response cache records when an entry was written (unix ms).
pub(crate) const CREATED_MS: &str = "created_ms";

impl Envelope {
    /// When the entry was written, unix ms: the `created_ms` metadata the response cache
    /// stamps, else the envelope's `timestamp` (seconds), else `None`.
    pub(crate) fn stored_at_ms(&self) -> Option<u64> {
        self.metadata
            .get(CREATED_MS)
            .and_then(serde_json::Value::as_u64)
            .or_else(|| (self.timestamp > 0).then(|| self.timestamp as u64 * 1000))
    }

    /// A version-1 envelope for a response.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder_core::{Envelope, Decoded};
    ///
    /// let e = Envelope::new("Paris.", "gpt-4o-mini", 1_764_090_000)
    ///     .with_metadata("temperature", 0.7)
    ///     .with_tags(["geo"]);
    /// let bytes = e.encode();
    /// assert_eq!(Envelope::decode(&bytes), Decoded::Envelope(e));
    /// ```
    pub fn new(response: impl Into<String>, model: impl Into<String>, timestamp: i64) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            response: response.into(),
            model: model.into(),
            timestamp,
            metadata: Map::new(),
            fresh_until: None,
            stale_until: None,
            tags: Vec::new(),
            stream: None,
        }
    }

    /// Adds one metadata field.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the tags.
    #[must_use]
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the fresh and stale deadlines (unix ms).
    #[must_use]
    pub fn with_windows(mut self, fresh_until: Option<u64>, stale_until: Option<u64>) -> Self {
        self.fresh_until = fresh_until;
        self.stale_until = stale_until;
        self
    }

    /// True when the value may be served as fresh at `now_ms`.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        self.fresh_until.is_none_or(|t| now_ms < t)
    }

    /// True when the value is past fresh but inside its stale window at `now_ms`.
    pub fn is_stale_servable(&self, now_ms: u64) -> bool {
        !self.is_fresh(now_ms) && self.stale_until.is_some_and(|t| now_ms < t)
    }

    /// The stored bytes: compact JSON, fields in the order of the spec.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("an envelope always serializes"))
    }

    /// Decodes stored bytes. Never fails and never panics:
    ///
    /// - a JSON object with a `v` field is an envelope; if its fields do not fit the spec
    ///   (for example `response` is not a string) it is [`Decoded::Corrupt`];
    /// - bytes that begin like an envelope (`{"v":`) but do not parse (a truncated write)
    ///   are [`Decoded::Corrupt`];
    /// - any other valid UTF-8 text is [`Decoded::Legacy`] (raw response text);
    /// - anything else (invalid UTF-8) is [`Decoded::Corrupt`].
    ///
    /// Unknown fields are ignored, so newer writers with extra fields stay readable.
    pub fn decode(bytes: &[u8]) -> Decoded {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Decoded::Corrupt("value is not valid UTF-8".into());
        };
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            match serde_json::from_str::<Json>(trimmed) {
                Ok(Json::Object(obj)) if obj.contains_key("v") => {
                    return match serde_json::from_value::<Envelope>(Json::Object(obj)) {
                        Ok(e) => Decoded::Envelope(e),
                        Err(err) => Decoded::Corrupt(format!("malformed envelope: {err}")),
                    };
                }
                Ok(_) => {}
                Err(err) => {
                    if looks_like_envelope(trimmed) {
                        return Decoded::Corrupt(format!("truncated or invalid envelope: {err}"));
                    }
                }
            }
        }
        Decoded::Legacy(Envelope {
            v: 0,
            response: text.to_owned(),
            model: String::new(),
            timestamp: 0,
            metadata: Map::new(),
            fresh_until: None,
            stale_until: None,
            tags: Vec::new(),
            stream: None,
        })
    }
}

fn looks_like_envelope(s: &str) -> bool {
    let rest = s[1..].trim_start();
    rest.starts_with("\"v\"")
}

/// Writes JSON objects with their members in key order, at every depth, whatever order the
/// map holds them in: serde_json keeps insertion order instead when any crate in the build
/// turns on its `preserve_order` feature (rig-core does), and the bytes an envelope is
/// stored as must not depend on the build (docs/KEY_FORMAT.md has them byte for byte).
mod sorted {
    use serde::ser::{SerializeMap, SerializeSeq};
    use serde::{Serialize, Serializer};
    use serde_json::{Map, Value as Json};

    pub(super) fn map<S: Serializer>(map: &Map<String, Json>, s: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(&String, &Json)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = s.serialize_map(Some(entries.len()))?;
        for (k, v) in entries {
            out.serialize_entry(k, &Sorted(v))?;
        }
        out.end()
    }

    struct Sorted<'a>(&'a Json);

    impl Serialize for Sorted<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                Json::Object(m) => map(m, s),
                Json::Array(items) => {
                    let mut out = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        out.serialize_element(&Sorted(item))?;
                    }
                    out.end()
                }
                other => other.serialize(s),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field() {
        let e = Envelope::new("answer ☃", "m", 42)
            .with_metadata("prompt_tokens", 12)
            .with_windows(Some(1000), Some(2000))
            .with_tags(["a", "b"]);
        assert_eq!(Envelope::decode(&e.encode()), Decoded::Envelope(e));
    }

    #[test]
    fn encoding_is_compact_and_omits_empty_optionals() {
        let e = Envelope::new("hi", "gpt", 7);
        assert_eq!(
            &e.encode()[..],
            br#"{"v":1,"response":"hi","model":"gpt","timestamp":7}"#
        );
    }

    #[test]
    fn metadata_is_written_in_key_order_at_every_depth() {
        // Inserted out of order: with serde_json's `preserve_order` on (rig-core turns it
        // on), a map keeps insertion order, and the stored bytes must not.
        let e = Envelope::new("hi", "gpt", 7)
            .with_metadata("zeta", 1)
            .with_metadata(
                "alpha",
                serde_json::json!([{"name": "n", "id": "i", "arguments": {"b": 1, "a": 2}}]),
            );
        assert_eq!(
            &e.encode()[..],
            br#"{"v":1,"response":"hi","model":"gpt","timestamp":7,"metadata":{"alpha":[{"arguments":{"a":2,"b":1},"id":"i","name":"n"}],"zeta":1}}"#
        );
    }

    #[test]
    fn legacy_raw_text_is_a_response() {
        match Envelope::decode(b"The capital of France is Paris.") {
            Decoded::Legacy(e) => {
                assert_eq!(e.response, "The capital of France is Paris.");
                assert_eq!(e.v, 0);
            }
            other => panic!("{other:?}"),
        }
        // Raw text that happens to be JSON without "v" is still legacy text.
        match Envelope::decode(br#"{"answer":42}"#) {
            Decoded::Legacy(e) => assert_eq!(e.response, r#"{"answer":42}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(Envelope::decode(b""), Decoded::Legacy(e) if e.response.is_empty()));
    }

    #[test]
    fn corrupt_values_are_reported_not_panicked() {
        for bad in [
            &b"\xff\xfe\x00garbage"[..],
            br#"{"v":1,"response":"trunc"#,
            br#"{"v":1,"response":42}"#,
            br#"{"v":"one","response":"x"}"#,
            br#"{ "v" : 1, "#,
        ] {
            assert!(
                matches!(Envelope::decode(bad), Decoded::Corrupt(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn newer_versions_with_unknown_fields_decode() {
        let d = Envelope::decode(br#"{"v":2,"response":"x","future":true}"#);
        assert!(matches!(d, Decoded::Envelope(e) if e.v == 2 && e.response == "x"));
    }

    #[test]
    fn fresh_and_stale_windows() {
        let e = Envelope::new("x", "m", 0).with_windows(Some(100), Some(200));
        assert!(e.is_fresh(99));
        assert!(!e.is_fresh(100));
        assert!(e.is_stale_servable(150));
        assert!(!e.is_stale_servable(200));
        let forever = Envelope::new("x", "m", 0);
        assert!(forever.is_fresh(u64::MAX));
        assert!(!forever.is_stale_servable(u64::MAX));
    }
}
