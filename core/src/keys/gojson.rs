//! go-deep-agent compatibility: Go `encoding/json` string and float encoding, and
//! `GenerateCacheKey`.

use sha2::{Digest, Sha256};

use super::hex_lower;
use super::number::write_es_number;

/// Encodes `s` as a JSON string exactly like Go's `encoding/json` (`json.Marshal`, with its
/// default HTML escaping), Go 1.22 or later, quotes included.
///
/// - `"` and `\` as `\"` and `\\`;
/// - U+0008, U+000C, U+000A, U+000D, U+0009 as `\b`, `\f`, `\n`, `\r`, `\t`;
/// - the other characters below U+0020 as `\u00xx` (lowercase hex);
/// - `<`, `>`, `&` as `\u003c`, `\u003e`, `\u0026`;
/// - U+2028 and U+2029 as `\u2028` and `\u2029`;
/// - everything else (DEL, non-ASCII, emoji) as literal UTF-8.
///
/// Go replaces invalid UTF-8 with `\ufffd`; a Rust `&str` is always valid UTF-8, so that
/// case cannot arise here. Go before 1.22 wrote U+0008 and U+000C as `\u0008` and `\u000c`.
///
/// # Examples
///
/// ```
/// use larder_core::keys::go_json_string;
///
/// assert_eq!(go_json_string("a<b> & \"c\"\n"), r#""a\u003cb\u003e \u0026 \"c\"\n""#);
/// ```
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_go_string(&mut out, s);
    out
}

fn write_go_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped: &str = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '<' => "\\u003c",
            '>' => "\\u003e",
            '&' => "\\u0026",
            '\u{2028}' => "\\u2028",
            '\u{2029}' => "\\u2029",
            '\u{0}'..='\u{1f}' => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let b = c as u8; // below U+0020
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escaped);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Formats `f` exactly like Go's `encoding/json` formats a `float64`, or `None` for NaN and
/// infinities (which `json.Marshal` refuses).
///
/// Go prints the shortest digits that round-trip, in plain decimal when
/// `1e-6 <= |f| < 1e21` (or `f` is zero) and in exponent form otherwise (`1e-7`, `1e+21`).
/// This is the ECMAScript number format except that negative zero prints as `-0`.
///
/// # Examples
///
/// ```
/// use larder_core::keys::go_json_float;
///
/// assert_eq!(go_json_float(0.7).as_deref(), Some("0.7"));
/// assert_eq!(go_json_float(1.0).as_deref(), Some("1"));
/// assert_eq!(go_json_float(1e21).as_deref(), Some("1e+21"));
/// assert_eq!(go_json_float(-0.0).as_deref(), Some("-0"));
/// assert_eq!(go_json_float(f64::NAN), None);
/// ```
pub fn go_json_float(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    if f == 0.0 {
        return Some(if f.is_sign_negative() { "-0" } else { "0" }.to_owned());
    }
    let mut out = String::new();
    write_es_number(&mut out, f);
    Some(out)
}

/// The exact bytes go-deep-agent's `GenerateCacheKey` hashes: Go's
/// `json.Marshal(struct{Model, Prompt string; Temperature float64; System string})`, or
/// `None` when `temperature` is NaN or infinite (Go's `json.Marshal` then fails).
///
/// # Examples
///
/// ```
/// use larder_core::keys::go_deep_agent_json;
///
/// assert_eq!(
///     go_deep_agent_json("gpt-4o-mini", "Hi", 0.0, "").as_deref(),
///     Some(r#"{"Model":"gpt-4o-mini","Prompt":"Hi","Temperature":0,"System":""}"#)
/// );
/// ```
pub fn go_deep_agent_json(
    model: &str,
    prompt: &str,
    temperature: f64,
    system: &str,
) -> Option<String> {
    let temperature = go_json_float(temperature)?;
    let mut out = String::with_capacity(64 + model.len() + prompt.len() + system.len());
    out.push_str("{\"Model\":");
    write_go_string(&mut out, model);
    out.push_str(",\"Prompt\":");
    write_go_string(&mut out, prompt);
    out.push_str(",\"Temperature\":");
    out.push_str(&temperature);
    out.push_str(",\"System\":");
    write_go_string(&mut out, system);
    out.push('}');
    Some(out)
}

/// The cache key go-deep-agent's `GenerateCacheKey(model, prompt, temperature, system)`
/// returns: lowercase hex SHA-256 of [`go_deep_agent_json`].
///
/// When `temperature` is NaN or infinite, Go's `json.Marshal` fails, go-deep-agent ignores
/// the error and hashes the empty byte slice, so every such request gets the same key,
/// `e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`. This function does
/// the same, for byte-identical keys.
///
/// The result is the *user key*; go-deep-agent's Redis cache stores it at
/// `{prefix}:cache:{key}` with the prefix `go-deep-agent` by default (see
/// [`KeyScheme`](super::KeyScheme) and `docs/KEY_FORMAT.md`).
///
/// # Examples
///
/// ```
/// use larder_core::go_deep_agent_key;
///
/// assert_eq!(
///     go_deep_agent_key("gpt-4o-mini", "What is the capital of France?", 0.0, ""),
///     "c7c487e83861ce49a4fe92bc5731f02fa960ca0c76306c8b4f0df16b43b84a04"
/// );
/// ```
pub fn go_deep_agent_key(model: &str, prompt: &str, temperature: f64, system: &str) -> String {
    let json = go_deep_agent_json(model, prompt, temperature, system).unwrap_or_default();
    hex_lower(&Sha256::digest(json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_vectors_from_go() {
        assert_eq!(
            go_deep_agent_key("gpt-4o-mini", "What is the capital of France?", 0.0, ""),
            "c7c487e83861ce49a4fe92bc5731f02fa960ca0c76306c8b4f0df16b43b84a04"
        );
        assert_eq!(
            go_deep_agent_key(
                "gpt-4o-mini",
                "What is the capital of France?",
                0.7,
                "You are a helpful assistant."
            ),
            "98cfa39c5e32d1ac9ff4031d1fc08077d154354b852aac1ecd42a83baa24ed71"
        );
        assert_eq!(
            go_deep_agent_key(
                "gpt-4o",
                "Compare <b>bold</b> & 'quotes' \"double\"",
                1.0,
                "sys"
            ),
            "e7f41c277fef839797d94670af4cb95b3e97d92f05209487a8f9be9440575abc"
        );
    }

    #[test]
    fn non_finite_temperature_hashes_empty_input() {
        const EMPTY_SHA256: &str =
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for t in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(go_deep_agent_json("m", "p", t, "s"), None);
            assert_eq!(go_deep_agent_key("m", "p", t, "s"), EMPTY_SHA256);
        }
    }

    #[test]
    fn go_string_escapes_every_class() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        assert_eq!(
            go_json_string(&all_controls),
            concat!(
                "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007",
                "\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f",
                "\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017",
                "\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\""
            )
        );
        assert_eq!(
            go_json_string("\u{7f}\u{2028}\u{2029}\u{2027}é😀"),
            "\"\u{7f}\\u2028\\u2029\u{2027}é😀\""
        );
        assert_eq!(go_json_string("<>&'"), "\"\\u003c\\u003e\\u0026'\"");
    }
}
