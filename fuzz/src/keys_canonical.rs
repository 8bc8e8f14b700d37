//! Canonical JSON and request hashing (`larder_core::keys`), and the key scheme.
//!
//! The first byte is a seed; the rest is JSON text (and, as UTF-8, a prefix and Go-compat
//! fields). Invariants: nothing panics; every `serde_json::Value` has a canonical form; the
//! same request with its object keys in another order (or with an earlier duplicate key that
//! the later one overrides, as JSON parsers do) has the same canonical JSON and hash; the
//! canonical form is JSON that reads back as the same request and is a fixed point; any
//! prefix without braces gives keys without braces that map back to their user key.

use larder_core::keys::{KeyScheme, go_deep_agent_key};
use larder_core::{canonical_json, request_hash};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value as Json;

/// Runs the checks on one input.
pub fn check(data: &[u8]) {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        scheme(text);
        let temperature = f64::from_bits(u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let key = go_deep_agent_key(text, text, temperature, text);
        assert_eq!(key.len(), 64, "a SHA-256 hex key");
    }
    let Ok(json) = serde_json::from_slice::<Json>(rest) else {
        return;
    };
    let canon = canonical_json(&json).expect("every serde_json value has a canonical form");
    let hash = request_hash(&json).expect("every serde_json value hashes");
    assert_eq!(hash.len(), 64);

    let permuted = Permuted { json: &json, seed };
    assert_eq!(
        canonical_json(&permuted).expect("permuted"),
        canon,
        "object key order must not matter"
    );
    assert_eq!(request_hash(&permuted).expect("permuted"), hash);

    let pretty = serde_json::to_string_pretty(&json).expect("serializes");
    let reparsed: Json = serde_json::from_str(&pretty).expect("pretty JSON parses");
    assert_eq!(
        request_hash(&reparsed).expect("hashes"),
        hash,
        "whitespace must not matter"
    );

    let back: Json = serde_json::from_str(&canon).expect("canonical JSON is JSON");
    assert!(
        same(&back, &json),
        "canonical JSON must read back as the same request: {canon}"
    );
    assert_eq!(
        canonical_json(&back).expect("hashes"),
        canon,
        "canonical JSON is a fixed point"
    );
}

fn scheme(prefix: &str) {
    match KeyScheme::new(prefix) {
        Ok(s) => {
            let user = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
            let key = s.value_key(user);
            assert!(!key.contains(['{', '}']), "no hash tags in {key:?}");
            assert_eq!(s.user_key_of(key.as_bytes()).as_deref(), Some(user));
            assert!(!s.prefix().ends_with(':') || prefix.ends_with("::"));
            let _ = s.value_pattern("*");
        }
        Err(_) => assert!(prefix.contains(['{', '}']), "only braces are refused"),
    }
}

/// Two JSON values are the same request: equal structure, strings and numbers (by value).
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Serializes a JSON value with every object's entries in a seed-chosen order, sometimes
/// preceded by a throw-away entry under the same key (which the real one overrides).
struct Permuted<'a> {
    json: &'a Json,
    seed: u8,
}

impl Serialize for Permuted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let child = |json| Permuted {
            json,
            seed: self.seed.rotate_left(3) ^ 0x5a,
        };
        match self.json {
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&child(item))?;
                }
                seq.end()
            }
            Json::Object(map) => {
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                if !entries.is_empty() {
                    let n = entries.len();
                    entries.rotate_left(usize::from(self.seed) % n);
                }
                if self.seed & 1 == 1 {
                    entries.reverse();
                }
                let dup = self.seed & 2 == 2;
                let mut m = s.serialize_map(None)?;
                for (k, v) in entries {
                    if dup {
                        m.serialize_entry(k, &Json::Null)?;
                    }
                    m.serialize_entry(k, &child(v))?;
                }
                m.end()
            }
            other => other.serialize(s),
        }
    }
}
