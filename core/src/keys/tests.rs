//! Golden vectors and properties of the key format.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeStruct};
use serde_json::Value;

use super::*;

const KEY_VECTORS: &str = include_str!("../../tests/data/key_vectors.json");
const GO_KEY_VECTORS: &str = include_str!("../../tests/data/go_key_vectors.json");

fn vectors(file: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(file).expect("vector file is JSON");
    doc["vectors"].as_array().expect("a vectors array").clone()
}

fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("vector {} has no string {field}", v["name"]))
}

/// The canonical JSON of a vector's request, built as the vector says.
fn canonical_of_vector(v: &Value) -> String {
    match v.get("request_typed").and_then(Value::as_str) {
        None => canonical_json(&v["request"]).expect("vector request serializes"),
        Some(spec) => {
            let (ty, text) = spec.split_once(':').expect("type:value");
            match ty {
                "u128" => canonical_json(&text.parse::<u128>().unwrap()),
                "i128" => canonical_json(&text.parse::<i128>().unwrap()),
                "f32" => canonical_json(&text.parse::<f32>().unwrap()),
                "f64" => canonical_json(&text.parse::<f64>().unwrap()),
                other => panic!("unknown request_typed type {other}"),
            }
            .unwrap()
        }
    }
}

#[test]
fn key_vectors_match() {
    let vectors = vectors(KEY_VECTORS);
    assert!(vectors.len() >= 25, "only {} vectors", vectors.len());
    for v in &vectors {
        let name = str_field(v, "name");
        let canonical = canonical_of_vector(v);
        assert_eq!(
            canonical,
            str_field(v, "canonical"),
            "canonical JSON of {name}"
        );
        let hash = hex_lower(&Sha256::digest(canonical.as_bytes()));
        assert_eq!(hash, str_field(v, "sha256"), "sha256 of {name}");
        if v.get("request_typed").is_none() {
            assert_eq!(
                request_hash(&v["request"]).unwrap(),
                str_field(v, "sha256"),
                "request_hash of {name}"
            );
        }
    }
}

#[test]
fn key_vector_names_are_unique() {
    let vectors = vectors(KEY_VECTORS);
    let mut names: Vec<&str> = vectors.iter().map(|v| str_field(v, "name")).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}

/// A go vector's temperature: a decimal string (or `NaN`, `Infinity`, `-Infinity`), read
/// with Rust's correctly rounding parser.
fn go_temperature(v: &Value) -> f64 {
    let text = str_field(v, "temperature");
    text.parse()
        .unwrap_or_else(|e| panic!("temperature {text:?} of {}: {e}", v["name"]))
}

#[test]
fn go_key_vectors_match() {
    let vectors = vectors(GO_KEY_VECTORS);
    assert!(vectors.len() >= 10, "only {} vectors", vectors.len());
    for v in &vectors {
        let name = str_field(v, "name");
        let (model, prompt, system) = (
            str_field(v, "model"),
            str_field(v, "prompt"),
            str_field(v, "system"),
        );
        let temperature = go_temperature(v);
        let json = go_deep_agent_json(model, prompt, temperature, system);
        assert_eq!(json.as_deref(), v["json"].as_str(), "Go JSON of {name}");
        assert_eq!(
            go_deep_agent_key(model, prompt, temperature, system),
            str_field(v, "sha256"),
            "key of {name}"
        );
    }
}

#[test]
fn go_float_matches_go_vectors_text() {
    // The Temperature member of every go vector is go_json_float of its temperature.
    for v in vectors(GO_KEY_VECTORS) {
        let Some(json) = v["json"].as_str() else {
            continue;
        };
        let t = go_temperature(&v);
        let member = format!("\"Temperature\":{},", go_json_float(t).unwrap());
        assert!(json.contains(&member), "{json} lacks {member}");
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    temperature: f64,
}

#[test]
fn struct_map_and_value_give_the_same_key() {
    let typed = ChatRequest {
        model: "gpt-4o-mini",
        messages: vec![Message {
            role: "user",
            content: "Hi",
        }],
        temperature: 0.7,
    };
    let value = serde_json::json!({
        "temperature": 0.7,
        "messages": [{"content": "Hi", "role": "user"}],
        "model": "gpt-4o-mini",
    });
    let mut message = BTreeMap::new();
    message.insert("role", "user");
    message.insert("content", "Hi");
    let mut map: HashMap<&str, Value> = HashMap::new();
    map.insert("messages", serde_json::to_value(vec![message]).unwrap());
    map.insert("model", "gpt-4o-mini".into());
    map.insert("temperature", 0.7.into());

    let want =
        r#"{"messages":[{"content":"Hi","role":"user"}],"model":"gpt-4o-mini","temperature":0.7}"#;
    assert_eq!(canonical_json(&typed).unwrap(), want);
    assert_eq!(canonical_json(&value).unwrap(), want);
    assert_eq!(canonical_json(&map).unwrap(), want);
    assert_eq!(request_hash(&typed).unwrap(), request_hash(&map).unwrap());
}

#[derive(Serialize)]
struct Unit;

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Newtype(u8);

#[derive(Serialize)]
struct Tuple(u8, &'static str);

#[derive(Serialize)]
#[allow(dead_code)] // only serialized
enum Shape {
    Empty,
    Circle(f64),
    Point(i32, i32),
    Rect { w: u32, h: u32 },
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    User,
    #[serde(rename = "assistant")]
    Assistant,
}

#[test]
fn serde_data_model_mapping() {
    let c = |v: &dyn erased::Erased| v.canonical();
    assert_eq!(c(&Option::<u8>::None), "null");
    assert_eq!(c(&Some(3u8)), "3");
    assert_eq!(c(&()), "null");
    assert_eq!(c(&Unit), "null");
    assert_eq!(c(&Newtype(7)), "7");
    assert_eq!(c(&Tuple(1, "a")), r#"[1,"a"]"#);
    assert_eq!(c(&(1u8, 'x', true)), r#"[1,"x",true]"#);
    assert_eq!(c(&'é'), r#""é""#);
    assert_eq!(c(&Shape::Empty), r#""Empty""#);
    assert_eq!(c(&Shape::Circle(0.5)), r#"{"Circle":0.5}"#);
    assert_eq!(c(&Shape::Point(-1, 2)), r#"{"Point":[-1,2]}"#);
    assert_eq!(c(&Shape::Rect { w: 3, h: 4 }), r#"{"Rect":{"h":4,"w":3}}"#);
    assert_eq!(c(&serde_bytes_like(&[0, 255])), "[0,255]");
    assert_eq!(c(&vec![1u8, 2]), "[1,2]");
    assert_eq!(c(&u128::MAX), "340282366920938463463374607431768211455");
    assert_eq!(c(&i128::MIN), "-170141183460469231731687303715884105728");
    assert_eq!(c(&i64::MIN), "-9223372036854775808");
    assert_eq!(c(&0.1f32), "0.10000000149011612");
    assert_eq!(c(&-0.0f64), "0");
    assert_eq!(c(&1.0f64), "1");
}

#[test]
fn map_keys_accept_scalars_and_unit_variants() {
    let c = |v: &dyn erased::Erased| v.canonical();
    assert_eq!(
        c(&BTreeMap::from([(10u32, 1), (9, 2)])),
        r#"{"10":1,"9":2}"#
    );
    assert_eq!(c(&BTreeMap::from([(-1i128, 1)])), r#"{"-1":1}"#);
    assert_eq!(
        c(&BTreeMap::from([(true, 1), (false, 2)])),
        r#"{"false":2,"true":1}"#
    );
    assert_eq!(c(&BTreeMap::from([('b', 1), ('a', 2)])), r#"{"a":2,"b":1}"#);
    assert_eq!(
        c(&BTreeMap::from([(Role::User, 1), (Role::Assistant, 2)])),
        r#"{"User":1,"assistant":2}"#
    );
    assert_eq!(c(&BTreeMap::from([(Newtype(5), "n")])), r#"{"5":"n"}"#);
}

#[test]
fn map_keys_reject_other_types() {
    let err = |r: Result<String, Error>| match r {
        Err(Error::Serialize(msg)) => msg,
        other => panic!("expected a Serialize error, got {other:?}"),
    };
    let msg = err(canonical_json(&HashMap::from([(Some(1u8), 1)])));
    assert!(msg.contains("map keys must be"), "{msg}");
    err(canonical_json(&BTreeMap::from([((1u8, 2u8), 1)])));
    err(canonical_json(&BTreeMap::from([(vec![1u8], 1)])));
    err(canonical_json(&BTreeMap::from([((), 1)])));
    struct FloatKey;
    impl Serialize for FloatKey {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(&1.5f64, &1)?;
            m.end()
        }
    }
    err(canonical_json(&FloatKey));
}

#[test]
fn non_finite_floats_are_errors() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(matches!(canonical_json(&f), Err(Error::Serialize(_))));
        assert!(matches!(
            request_hash(&BTreeMap::from([("t", vec![1.0, f])])),
            Err(Error::Serialize(_))
        ));
    }
    assert!(matches!(
        canonical_json(&f32::NAN),
        Err(Error::Serialize(_))
    ));
}

#[test]
fn duplicate_keys_last_one_wins() {
    struct Dupes;
    impl Serialize for Dupes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("b", &1)?;
            m.serialize_entry("a", &1)?;
            m.serialize_entry("b", &2)?;
            m.serialize_entry("a", &2)?;
            m.serialize_entry("b", &3)?;
            m.end()
        }
    }
    assert_eq!(canonical_json(&Dupes).unwrap(), r#"{"a":2,"b":3}"#);
}

#[test]
fn flatten_and_internally_tagged_enums_work() {
    #[derive(Serialize)]
    struct Inner {
        z: u8,
        a: u8,
    }
    #[derive(Serialize)]
    struct Outer {
        m: u8,
        #[serde(flatten)]
        inner: Inner,
    }
    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Tagged {
        Text { text: String },
    }
    assert_eq!(
        canonical_json(&Outer {
            m: 1,
            inner: Inner { z: 2, a: 3 }
        })
        .unwrap(),
        r#"{"a":3,"m":1,"z":2}"#
    );
    assert_eq!(
        canonical_json(&Tagged::Text { text: "hi".into() }).unwrap(),
        r#"{"text":"hi","type":"Text"}"#
    );
}

/// What serde_json's `arbitrary_precision` and `raw_value` features serialize, built by
/// hand so the test does not depend on those features.
struct PrivateToken(&'static str, &'static str);

impl Serialize for PrivateToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct(self.0, 1)?;
        st.serialize_field(self.0, self.1)?;
        st.end()
    }
}

#[test]
fn serde_json_private_numbers_and_raw_values_are_understood() {
    const NUMBER: &str = "$serde_json::private::Number";
    const RAW: &str = "$serde_json::private::RawValue";
    let c = |t: PrivateToken| canonical_json(&t);
    assert_eq!(c(PrivateToken(NUMBER, "1.0")).unwrap(), "1");
    assert_eq!(c(PrivateToken(NUMBER, "-0")).unwrap(), "0");
    assert_eq!(c(PrivateToken(NUMBER, "1E21")).unwrap(), "1e+21");
    assert_eq!(
        c(PrivateToken(
            NUMBER,
            "123456789012345678901234567890123456789012"
        ))
        .unwrap(),
        "123456789012345678901234567890123456789012"
    );
    assert!(c(PrivateToken(NUMBER, "1e999")).is_err());
    assert!(c(PrivateToken(NUMBER, "abc")).is_err());
    assert_eq!(
        c(PrivateToken(RAW, r#" { "b" : [1.50, "x"], "a" : null } "#)).unwrap(),
        r#"{"a":null,"b":[1.5,"x"]}"#
    );
    assert!(c(PrivateToken(RAW, "{")).is_err());
}

#[test]
fn custom_serialize_errors_are_serialize_errors() {
    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("nope"))
        }
    }
    assert_eq!(canonical_json(&Fails), Err(Error::Serialize("nope".into())));
}

fn serde_bytes_like(bytes: &'static [u8]) -> impl Serialize {
    struct Bytes(&'static [u8]);
    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    Bytes(bytes)
}

/// Object-safe wrapper so tests can pass differently typed values to one closure.
mod erased {
    use super::*;

    pub(super) trait Erased {
        fn canonical(&self) -> String;
    }

    impl<T: Serialize> Erased for T {
        fn canonical(&self) -> String {
            canonical_json(self).unwrap()
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // serde_json (without `float_roundtrip`) may misread long float literals, so the
        // floats here are ones it reads exactly; `floats_round_trip` covers every f64.
        (any::<i32>(), -12..=8i32)
            .prop_map(|(m, e)| Value::from(format!("{m}e{e}").parse::<f64>().unwrap())),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `-0.0` canonicalizes to `0`; everything else must read back unchanged.
fn normalize_negative_zero(v: Value) -> Value {
    match v {
        Value::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => Value::from(0.0),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(normalize_negative_zero).collect())
        }
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, normalize_negative_zero(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Equality where a float and an integer of the same value are equal (canonical JSON
/// prints the float `2.0` as `2`, which reads back as an integer).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || (x.as_f64().is_some() && x.as_f64() == y.as_f64() && (x.is_f64() || y.is_f64()))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn map_key_order_does_not_depend_on_insertion(
        entries in prop::collection::vec((any::<String>(), any::<i32>()), 0..12),
        seed in any::<u64>(),
    ) {
        // Unique keys, so that every container holds the same data.
        let unique: BTreeMap<String, i32> = entries.into_iter().collect();
        let mut pairs: Vec<(String, i32)> = unique.clone().into_iter().collect();
        // A deterministic shuffle from the seed.
        let mut state = seed | 1;
        for i in (1..pairs.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            pairs.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let hash: HashMap<String, i32> = pairs.iter().cloned().collect();
        let value: Value = Value::Object(
            pairs.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect(),
        );
        let from_btree = canonical_json(&unique).unwrap();
        prop_assert_eq!(&from_btree, &canonical_json(&hash).unwrap());
        prop_assert_eq!(&from_btree, &canonical_json(&value).unwrap());
        prop_assert_eq!(request_hash(&unique).unwrap(), request_hash(&hash).unwrap());
    }

    #[test]
    fn canonical_output_parses_back_to_the_same_value(v in arb_json()) {
        let text = canonical_json(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert!(same_json(&back, &normalize_negative_zero(v.clone())), "{} -> {}", v, text);
        // Canonical JSON is a fixed point.
        prop_assert_eq!(canonical_json(&back).unwrap(), text);
    }

    #[test]
    fn floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = canonical_json(&f).unwrap();
        let back: f64 = text.parse().unwrap();
        prop_assert_eq!(back, if f == 0.0 { 0.0 } else { f });
        prop_assert_eq!(back.to_bits(), if f == 0.0 { 0 } else { f.to_bits() });
        prop_assert!(!text.contains(['E', ' ']));
    }

    #[test]
    fn go_float_is_es_format_except_negative_zero(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let go = go_json_float(f).unwrap();
        let es = canonical_json(&f).unwrap();
        if f == 0.0 && f.is_sign_negative() {
            prop_assert_eq!(go, "-0");
        } else {
            prop_assert_eq!(go, es);
        }
    }

    #[test]
    fn strings_round_trip(s in any::<String>()) {
        let canonical = canonical_json(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<String>(&canonical).unwrap(), s.clone());
        let go = go_json_string(&s);
        prop_assert_eq!(serde_json::from_str::<String>(&go).unwrap(), s.clone());
        let escaped = !go.contains(['<', '>', '&', '\u{2028}', '\u{2029}']);
        prop_assert!(escaped, "unescaped HTML or separator in {:?}", go);
    }

    #[test]
    fn user_key_of_inverts_value_key(prefix in "[a-z:*?\\[\\]\\\\-]{0,8}", key in any::<String>()) {
        let scheme = KeyScheme::new(&prefix).unwrap();
        prop_assert_eq!(scheme.user_key_of(scheme.value_key(&key).as_bytes()), Some(key));
    }
}
