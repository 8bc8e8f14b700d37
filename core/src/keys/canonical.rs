//! Canonical JSON: a `serde::Serializer` that builds a small tree, then a writer that prints
//! it with sorted keys, no whitespace, RFC 8785 string escaping and ECMAScript numbers.
//!
//! The rules are specified in `docs/KEY_FORMAT.md`; this file implements them.

use std::cmp::Ordering;
use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

use super::number::write_es_number;
use crate::error::Error;

/// Struct name serde_json uses for `Number` under its `arbitrary_precision` feature.
const SERDE_JSON_NUMBER_TOKEN: &str = "$serde_json::private::Number";
/// Struct name serde_json uses for `RawValue` under its `raw_value` feature.
const SERDE_JSON_RAW_TOKEN: &str = "$serde_json::private::RawValue";

/// Serializes `value` to canonical JSON.
pub(super) fn to_canonical_string<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    let node = value
        .serialize(NodeSerializer)
        .map_err(|e| Error::Serialize(e.0))?;
    let mut out = String::new();
    write_node(&mut out, &node);
    Ok(out)
}

/// The error of the tree builder; converted to [`Error::Serialize`] at the boundary.
#[derive(Debug)]
struct CanonError(String);

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonError {}

impl ser::Error for CanonError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        CanonError(msg.to_string())
    }
}

type Res<T> = Result<T, CanonError>;

/// A JSON value as canonical JSON sees it. Integers keep their exact value; objects keep
/// their entries in insertion order until written.
#[derive(Debug, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    UInt(u128),
    /// An integer literal too large for `i128`/`u128` (only from serde_json's
    /// `arbitrary_precision` numbers), already validated and normalized.
    BigInt(String),
    /// Always finite.
    Float(f64),
    Str(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

fn float_node(v: f64) -> Res<Node> {
    if v.is_finite() {
        Ok(Node::Float(v))
    } else {
        Err(CanonError(format!(
            "the float {v} has no JSON representation (NaN and infinities are rejected)"
        )))
    }
}

/// Parses a JSON number literal (serde_json `arbitrary_precision` text) into a node.
fn number_literal_node(text: &str) -> Res<Node> {
    if !is_json_number(text) {
        return Err(CanonError(format!("invalid JSON number literal {text:?}")));
    }
    let is_integer = !text.contains(['.', 'e', 'E']);
    if is_integer {
        if let Ok(u) = text.parse::<u128>() {
            return Ok(Node::UInt(u));
        }
        if let Ok(i) = text.parse::<i128>() {
            return Ok(Node::Int(i));
        }
        // Grammar-checked: optional '-', then no leading zeros; "-0" fits in i128 above.
        return Ok(Node::BigInt(text.to_owned()));
    }
    let v: f64 = text
        .parse()
        .map_err(|_| CanonError(format!("invalid JSON number literal {text:?}")))?;
    float_node(v)
}

/// RFC 8259 number grammar: `-? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Builds a [`Node`] from any `Serialize` value.
struct NodeSerializer;

impl ser::Serializer for NodeSerializer {
    type Ok = Node;
    type Error = CanonError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = TupleVariantBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructVariantBuilder;

    fn serialize_bool(self, v: bool) -> Res<Node> {
        Ok(Node::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Res<Node> {
        Ok(Node::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Res<Node> {
        Ok(Node::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Res<Node> {
        Ok(Node::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Res<Node> {
        Ok(Node::Int(v.into()))
    }
    fn serialize_i128(self, v: i128) -> Res<Node> {
        Ok(Node::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Res<Node> {
        Ok(Node::UInt(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Res<Node> {
        Ok(Node::UInt(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Res<Node> {
        Ok(Node::UInt(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Res<Node> {
        Ok(Node::UInt(v.into()))
    }
    fn serialize_u128(self, v: u128) -> Res<Node> {
        Ok(Node::UInt(v))
    }
    fn serialize_f32(self, v: f32) -> Res<Node> {
        // Widened exactly; see KEY_FORMAT.md "Numbers".
        float_node(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Res<Node> {
        float_node(v)
    }
    fn serialize_char(self, v: char) -> Res<Node> {
        Ok(Node::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Res<Node> {
        Ok(Node::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Res<Node> {
        Ok(Node::Array(
            v.iter().map(|b| Node::UInt(u128::from(*b))).collect(),
        ))
    }
    fn serialize_none(self) -> Res<Node> {
        Ok(Node::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Res<Node> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Res<Node> {
        Ok(Node::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Res<Node> {
        Ok(Node::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Res<Node> {
        Ok(Node::Str(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Res<Node> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Res<Node> {
        Ok(Node::Object(vec![(
            variant.to_owned(),
            value.serialize(NodeSerializer)?,
        )]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Res<SeqBuilder> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(len.unwrap_or(0)),
        })
    }
    fn serialize_tuple(self, len: usize) -> Res<SeqBuilder> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Res<SeqBuilder> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Res<TupleVariantBuilder> {
        Ok(TupleVariantBuilder {
            variant,
            items: Vec::with_capacity(len),
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Res<MapBuilder> {
        Ok(MapBuilder {
            entries: Vec::with_capacity(len.unwrap_or(0)),
            pending_key: None,
        })
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Res<StructBuilder> {
        let kind = match name {
            SERDE_JSON_NUMBER_TOKEN => StructKind::SerdeJsonNumber,
            SERDE_JSON_RAW_TOKEN => StructKind::SerdeJsonRaw,
            _ => StructKind::Plain,
        };
        Ok(StructBuilder {
            kind,
            entries: Vec::with_capacity(len),
        })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Res<StructVariantBuilder> {
        Ok(StructVariantBuilder {
            variant,
            entries: Vec::with_capacity(len),
        })
    }
}

struct SeqBuilder {
    items: Vec<Node>,
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Res<()> {
        self.items.push(value.serialize(NodeSerializer)?);
        Ok(())
    }
    fn end(self) -> Res<Node> {
        Ok(Node::Array(self.items))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Res<()> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Res<Node> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Res<()> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Res<Node> {
        ser::SerializeSeq::end(self)
    }
}

struct TupleVariantBuilder {
    variant: &'static str,
    items: Vec<Node>,
}

impl ser::SerializeTupleVariant for TupleVariantBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Res<()> {
        self.items.push(value.serialize(NodeSerializer)?);
        Ok(())
    }
    fn end(self) -> Res<Node> {
        Ok(Node::Object(vec![(
            self.variant.to_owned(),
            Node::Array(self.items),
        )]))
    }
}

struct MapBuilder {
    entries: Vec<(String, Node)>,
    pending_key: Option<String>,
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Res<()> {
        self.pending_key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Res<()> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| CanonError("map value serialized before its key".to_owned()))?;
        self.entries.push((key, value.serialize(NodeSerializer)?));
        Ok(())
    }
    fn end(self) -> Res<Node> {
        if self.pending_key.is_some() {
            return Err(CanonError("map key serialized without a value".to_owned()));
        }
        Ok(Node::Object(self.entries))
    }
}

enum StructKind {
    Plain,
    SerdeJsonNumber,
    SerdeJsonRaw,
}

struct StructBuilder {
    kind: StructKind,
    entries: Vec<(String, Node)>,
}

impl StructBuilder {
    /// The single string field of serde_json's private number / raw value structs.
    fn private_token(self) -> Res<String> {
        match <[_; 1]>::try_from(self.entries) {
            Ok([(_, Node::Str(text))]) => Ok(text),
            _ => Err(CanonError(
                "malformed serde_json private number or raw value".to_owned(),
            )),
        }
    }
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Res<()> {
        self.entries
            .push((key.to_owned(), value.serialize(NodeSerializer)?));
        Ok(())
    }
    fn end(self) -> Res<Node> {
        match self.kind {
            StructKind::Plain => Ok(Node::Object(self.entries)),
            StructKind::SerdeJsonNumber => number_literal_node(&self.private_token()?),
            StructKind::SerdeJsonRaw => {
                let text = self.private_token()?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| CanonError(format!("invalid raw JSON value: {e}")))?;
                value.serialize(NodeSerializer)
            }
        }
    }
}

struct StructVariantBuilder {
    variant: &'static str,
    entries: Vec<(String, Node)>,
}

impl ser::SerializeStructVariant for StructVariantBuilder {
    type Ok = Node;
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Res<()> {
        self.entries
            .push((key.to_owned(), value.serialize(NodeSerializer)?));
        Ok(())
    }
    fn end(self) -> Res<Node> {
        Ok(Node::Object(vec![(
            self.variant.to_owned(),
            Node::Object(self.entries),
        )]))
    }
}

/// Turns a map key into its object member name: strings and chars as they are; integers
/// and booleans as their canonical JSON text; unit variants as the variant name; newtype
/// structs transparently. Everything else is rejected.
struct KeySerializer;

fn key_error(what: &str) -> CanonError {
    CanonError(format!(
        "map keys must be strings, chars, integers, booleans or unit enum variants, not {what}"
    ))
}

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = CanonError;
    type SerializeSeq = Impossible<String, CanonError>;
    type SerializeTuple = Impossible<String, CanonError>;
    type SerializeTupleStruct = Impossible<String, CanonError>;
    type SerializeTupleVariant = Impossible<String, CanonError>;
    type SerializeMap = Impossible<String, CanonError>;
    type SerializeStruct = Impossible<String, CanonError>;
    type SerializeStructVariant = Impossible<String, CanonError>;

    fn serialize_bool(self, v: bool) -> Res<String> {
        Ok(if v { "true" } else { "false" }.to_owned())
    }
    fn serialize_i8(self, v: i8) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_i128(self, v: i128) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_u128(self, v: u128) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _v: f32) -> Res<String> {
        Err(key_error("floats"))
    }
    fn serialize_f64(self, _v: f64) -> Res<String> {
        Err(key_error("floats"))
    }
    fn serialize_char(self, v: char) -> Res<String> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Res<String> {
        Ok(v.to_owned())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Res<String> {
        Err(key_error("bytes"))
    }
    fn serialize_none(self) -> Res<String> {
        Err(key_error("None"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Res<String> {
        Err(key_error("Option values"))
    }
    fn serialize_unit(self) -> Res<String> {
        Err(key_error("()"))
    }
    fn serialize_unit_struct(self, name: &'static str) -> Res<String> {
        Err(key_error(&format!("the unit struct {name}")))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Res<String> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Res<String> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Res<String> {
        Err(key_error(&format!("the newtype variant {name}::{variant}")))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Res<Self::SerializeSeq> {
        Err(key_error("sequences"))
    }
    fn serialize_tuple(self, _len: usize) -> Res<Self::SerializeTuple> {
        Err(key_error("tuples"))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Res<Self::SerializeTupleStruct> {
        Err(key_error(&format!("the tuple struct {name}")))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Res<Self::SerializeTupleVariant> {
        Err(key_error(&format!("the tuple variant {name}::{variant}")))
    }
    fn serialize_map(self, _len: Option<usize>) -> Res<Self::SerializeMap> {
        Err(key_error("maps"))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Res<Self::SerializeStruct> {
        Err(key_error(&format!("the struct {name}")))
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Res<Self::SerializeStructVariant> {
        Err(key_error(&format!("the struct variant {name}::{variant}")))
    }
}

/// Orders strings by their UTF-16 code units, as RFC 8785 (and JavaScript's default sort)
/// does. It differs from UTF-8 byte order only between U+E000..=U+FFFF and astral
/// characters (surrogate pairs sort below U+E000).
fn cmp_utf16(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_node(out: &mut String, node: &Node) {
    match node {
        Node::Null => out.push_str("null"),
        Node::Bool(true) => out.push_str("true"),
        Node::Bool(false) => out.push_str("false"),
        Node::Int(i) => out.push_str(&i.to_string()),
        Node::UInt(u) => out.push_str(&u.to_string()),
        Node::BigInt(text) => out.push_str(text),
        Node::Float(f) => write_es_number(out, *f),
        Node::Str(s) => write_string(out, s),
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_node(out, item);
            }
            out.push(']');
        }
        Node::Object(entries) => {
            let mut sorted: Vec<&(String, Node)> = entries.iter().collect();
            // Stable: among equal keys, insertion order is kept, so the last one written
            // below is the last one inserted.
            sorted.sort_by(|a, b| cmp_utf16(&a.0, &b.0));
            out.push('{');
            let mut first = true;
            let mut iter = sorted.into_iter().peekable();
            while let Some((key, value)) = iter.next() {
                if iter.peek().is_some_and(|(next, _)| next == key) {
                    continue; // duplicate key: the last one wins
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_string(out, key);
                out.push(':');
                write_node(out, value);
            }
            out.push('}');
        }
    }
}

/// Writes `s` as a JSON string with RFC 8785 escaping: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`,
/// `\t`, other C0 controls as `\u00xx` (lowercase hex), everything else literally.
pub(super) fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so `i` and `i + 1` are char boundaries.
        out.push_str(&s[start..i]);
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "1", "-12", "1.5", "1e5", "1E+5", "1.0e-5", "0.0"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1x", "NaN", "- 1",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    fn literal(text: &str) -> String {
        let mut out = String::new();
        write_node(&mut out, &number_literal_node(text).unwrap());
        out
    }

    #[test]
    fn number_literals_normalize() {
        assert_eq!(literal("-0"), "0");
        assert_eq!(literal("-0.0"), "0");
        assert_eq!(literal("1.0"), "1");
        assert_eq!(literal("-12"), "-12");
        assert_eq!(literal("2.5E-7"), "2.5e-7");
        let big = "-340282366920938463463374607431768211456";
        assert_eq!(
            number_literal_node(big).unwrap(),
            Node::BigInt(big.to_owned())
        );
        assert_eq!(literal(big), big);
        assert!(number_literal_node("1e400").is_err());
        assert!(number_literal_node("01").is_err());
    }

    #[test]
    fn utf16_order_differs_from_utf8_order() {
        let bmp_private = "\u{e000}";
        let emoji = "\u{1f600}";
        assert_eq!(bmp_private.cmp(emoji), Ordering::Less); // UTF-8 / code points
        assert_eq!(cmp_utf16(bmp_private, emoji), Ordering::Greater); // UTF-16
    }
}
