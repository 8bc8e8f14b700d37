//! Cache keys: canonical JSON, request hashes, the Redis key layout and go-deep-agent's keys.
//!
//! Every larder implementation (native, wasm, the Worker, and anyone reimplementing it in
//! another language) must produce byte-identical keys. The format is specified in
//! `docs/KEY_FORMAT.md`, with golden vectors in `core/tests/data/key_vectors.json` and
//! `core/tests/data/go_key_vectors.json`.
//!
//! - [`canonical_json`] turns any `Serialize` value into one canonical JSON text (sorted
//!   keys, no whitespace, RFC 8785 string escaping, ECMAScript number format);
//! - [`request_hash`] is the lowercase hex SHA-256 of that text: the user key of a request;
//! - [`KeyScheme`] places user keys in Redis: `{prefix}:cache:{key}`,
//!   `{prefix}:stats:{hits|misses|writes}`, `{prefix}:lock:{key}`;
//! - [`go_deep_agent_key`] computes go-deep-agent's `GenerateCacheKey`, byte for byte.
//!
//! # Examples
//!
//! ```
//! use larder_core::keys::{KeyScheme, canonical_json, request_hash};
//! use serde_json::json;
//!
//! let request = json!({
//!     "model": "gpt-4o-mini",
//!     "temperature": 0.7,
//!     "messages": [{"role": "user", "content": "Hi"}],
//! });
//! assert_eq!(
//!     canonical_json(&request)?,
//!     r#"{"messages":[{"content":"Hi","role":"user"}],"model":"gpt-4o-mini","temperature":0.7}"#
//! );
//! let hash = request_hash(&request)?;
//! assert_eq!(hash.len(), 64);
//! assert_eq!(KeyScheme::default().value_key(&hash), format!("larder:cache:{hash}"));
//! # Ok::<(), larder_core::Error>(())
//! ```

mod canonical;
mod gojson;
mod number;
mod scheme;
pub(crate) use scheme::concat;

#[cfg(test)]
mod tests;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Error;

pub use gojson::{go_deep_agent_json, go_deep_agent_key, go_json_float, go_json_string};
pub use scheme::{DEFAULT_PREFIX, GO_DEEP_AGENT_PREFIX, KeyScheme, Stat};

/// The canonical JSON text of `value`: the input of [`request_hash`].
///
/// The rules (see `docs/KEY_FORMAT.md` for the full specification):
///
/// - no whitespace; object members sorted by their names' UTF-16 code units (as RFC 8785),
///   and if a map yields the same name twice, the last value wins;
/// - strings escaped as RFC 8785: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, the other
///   characters below U+0020 as `\u00xx`, everything else (U+2028, DEL, non-ASCII) literal;
/// - integers of every Rust type (including `u128`/`i128`) as exact decimals;
/// - floats as ECMAScript's `Number.prototype.toString` (`0.7`, `1e+21`, `1e-7`, `-0` as
///   `0`); `f32` is first widened exactly to `f64` (so `0.1f32` is `0.10000000149011612`);
/// - `None`, `()` and unit structs as `null`; unit variants as their name; newtype,
///   tuple and struct variants as `{"Variant": …}`; bytes as an array of numbers; newtype
///   structs as their content; `char` as a string; a struct exactly like a map with the
///   same entries;
/// - map keys may be strings, chars, integers and booleans (as their JSON text, e.g.
///   `"1"`, `"true"`) or unit variants (their name).
///
/// # Errors
///
/// [`Error::Serialize`] for a NaN or infinite float, a map key of another type (float,
/// sequence, struct, `Option`…), or an error raised by the value's `Serialize` impl.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use larder_core::keys::canonical_json;
///
/// #[derive(serde::Serialize)]
/// struct Request<'a> {
///     model: &'a str,
///     max_tokens: u32,
/// }
///
/// let as_struct = canonical_json(&Request { model: "m", max_tokens: 5 })?;
/// let as_map = canonical_json(&HashMap::from([
///     ("model", serde_json::json!("m")),
///     ("max_tokens", serde_json::json!(5)),
/// ]))?;
/// assert_eq!(as_struct, r#"{"max_tokens":5,"model":"m"}"#);
/// assert_eq!(as_struct, as_map); // a struct is written like a map with the same entries
/// assert!(canonical_json(&f64::NAN).is_err());
/// # Ok::<(), larder_core::Error>(())
/// ```
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    canonical::to_canonical_string(value)
}

/// The hash of a request: lowercase hex SHA-256 of its [`canonical_json`] (UTF-8), 64
/// characters. This is the user key that [`KeyScheme::value_key`] places in Redis.
///
/// # Errors
///
/// As [`canonical_json`].
///
/// # Examples
///
/// ```
/// use larder_core::request_hash;
///
/// // SHA-256 of the 2-byte text `{}`.
/// assert_eq!(
///     request_hash(&serde_json::json!({}))?,
///     "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
/// );
/// # Ok::<(), larder_core::Error>(())
/// ```
pub fn request_hash<T: Serialize + ?Sized>(request: &T) -> Result<String, Error> {
    let json = canonical_json(request)?;
    Ok(hex_lower(&Sha256::digest(json.as_bytes())))
}

/// Lowercase hexadecimal of `bytes`.
fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}
