//! Encrypted, unlinkable cache entries: values sealed with AES-256-GCM under the Redis key
//! they are stored at, and request hashes keyed with HMAC-SHA-256, so that someone who can
//! read Redis (an operator, a stolen dump, a network observer of an unencrypted link) learns
//! neither the answers nor which requests were made. docs/SECURITY.md says what is and is
//! not protected; docs/KEY_FORMAT.md §10 specifies the formats, with golden vectors.
//!
//! - [`Keyring`]: the value keys. The first is the current one (it seals); every key opens
//!   what it sealed (rotation: add the new key first, keep the old ones until their entries
//!   expired). A sealed value names its key id, and binds the Redis key as associated data:
//!   moved to another key, it no longer opens.
//! - [`HashKey`]: the secret of keyed request hashes, and of per-tenant hashes derived from
//!   it with HKDF.
//!
//! Opening never panics and never errors to a caller: a value that does not open is a
//! counted corrupt miss.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The first bytes of a sealed value. The leading NUL keeps it from ever reading as text:
/// a reader without the keys sees a corrupt value, never ciphertext as an answer.
pub const SEALED_MAGIC: &[u8; 5] = b"\0LXE1";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MAX_KEY_ID: usize = 32;

/// One value key.
#[derive(Clone)]
struct ValueKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The keys that seal and open cached values (AES-256-GCM). The first is current.
///
/// # Examples
///
/// ```
/// use larder_core::seal::Keyring;
///
/// // `kid:base64(32 bytes)`, comma-separated, the current key first.
/// let ring = Keyring::parse(
///     "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=,k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
/// )?;
/// let sealed = ring.seal(b"larder:cache:abc", b"{\"v\":1,\"response\":\"Paris.\"}")?;
/// assert_eq!(ring.open(b"larder:cache:abc", &sealed).unwrap(), b"{\"v\":1,\"response\":\"Paris.\"}");
/// assert!(ring.open(b"larder:cache:other", &sealed).is_none(), "bound to its key");
/// # Ok::<(), larder_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<ValueKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only: never key material.
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

impl Keyring {
    /// A keyring of `(id, 32-byte key)` pairs, the current key first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for no key, a key that is not 32 bytes, an id that is empty,
    /// longer than 32 bytes or not `[A-Za-z0-9_.-]`, or an id used twice.
    pub fn new<I, S>(keys: I) -> Result<Self>
    where
        I: IntoIterator<Item = (S, Vec<u8>)>,
        S: Into<String>,
    {
        let mut out: Vec<ValueKey> = Vec::new();
        for (id, key) in keys {
            let id = id.into();
            check_id(&id)?;
            if out.iter().any(|k| k.id == id) {
                return Err(Error::InvalidInput(format!(
                    "encryption key id {id:?} is used twice"
                )));
            }
            if key.len() != 32 {
                return Err(Error::InvalidInput(format!(
                    "encryption key {id:?} must be 32 bytes (AES-256), got {}",
                    key.len()
                )));
            }
            let cipher = Aes256Gcm::new_from_slice(&key).expect("a 32-byte key");
            out.push(ValueKey { id, cipher });
        }
        if out.is_empty() {
            return Err(Error::InvalidInput("no encryption key".into()));
        }
        Ok(Keyring { keys: out })
    }

    /// Parses `id:base64key[,id:base64key…]` (standard base64 of 32 bytes; the first is
    /// current), the form of `LARDER_ENCRYPTION_KEYS`. Error messages name the key id,
    /// never the key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a malformed list (see [`Keyring::new`]).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (i, part) in spec.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                continue;
            }
            let Some((id, b64)) = part.split_once(':') else {
                return Err(Error::InvalidInput(format!(
                    "encryption key #{} is not `id:base64`",
                    i + 1
                )));
            };
            let key = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| {
                    Error::InvalidInput(format!("encryption key {id:?} is not valid base64"))
                })?;
            keys.push((id.trim().to_owned(), key));
        }
        Keyring::new(keys)
    }

    /// The key ids, the current one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Seals `plaintext` for storage at `redis_key` with the current key and a random
    /// nonce (from the system's random source: Web Crypto on wasm32).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when the system's random source fails: a nonce is never made
    /// up from anything weaker (a repeated nonce would break AES-GCM), so the value is not
    /// stored.
    pub fn seal(&self, redis_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| {
            Error::Serialize(format!("cannot seal: the system random source failed: {e}"))
        })?;
        Ok(self.seal_with_nonce(redis_key, plaintext, nonce))
    }

    /// [`seal`](Self::seal) with a given nonce: for test vectors only (a nonce must never
    /// be used twice with one key).
    pub(crate) fn seal_with_nonce(
        &self,
        redis_key: &[u8],
        plaintext: &[u8],
        nonce: [u8; 12],
    ) -> Vec<u8> {
        let key = &self.keys[0];
        let header = header(&key.id, &nonce);
        let aad = aad(&header, redis_key);
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any message under 64 GiB");
        let mut out = header;
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `redis_key`: `None` when it is not a sealed value, names a
    /// key this ring does not have, was sealed for another key, or was altered.
    pub fn open(&self, redis_key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        let rest = value.strip_prefix(SEALED_MAGIC.as_slice())?;
        let (&id_len, rest) = rest.split_first()?;
        let id_len = usize::from(id_len);
        if id_len == 0 || id_len > MAX_KEY_ID || rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return None;
        }
        let id = std::str::from_utf8(&rest[..id_len]).ok()?;
        let nonce = &rest[id_len..id_len + NONCE_LEN];
        let sealed = &rest[id_len + NONCE_LEN..];
        let key = self.keys.iter().find(|k| k.id == id)?;
        let header_len = SEALED_MAGIC.len() + 1 + id_len + NONCE_LEN;
        let aad = aad(&value[..header_len], redis_key);
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .ok()
    }
}

/// Whether `value` is a sealed value (by its first bytes).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(SEALED_MAGIC)
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "encryption key id {id:?} must be 1-32 characters of [A-Za-z0-9_.-]"
        )))
    }
}

/// `magic | id length | id | nonce`.
fn header(id: &str, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut h = Vec::with_capacity(SEALED_MAGIC.len() + 1 + id.len() + NONCE_LEN + 64);
    h.extend_from_slice(SEALED_MAGIC);
    h.push(u8::try_from(id.len()).expect("ids are at most 32 bytes"));
    h.extend_from_slice(id.as_bytes());
    h.extend_from_slice(nonce);
    h
}

/// The associated data: the header, then the Redis key.
fn aad(header: &[u8], redis_key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + redis_key.len());
    a.extend_from_slice(header);
    a.extend_from_slice(redis_key);
    a
}

/// The secret of keyed request hashes: with it, a key reveals nothing about its request
/// without the secret (a plain SHA-256 lets anyone confirm a guessed prompt).
#[derive(Clone)]
pub struct HashKey {
    secret: Vec<u8>,
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    /// A hash key from at least 16 bytes of secret.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a shorter secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self> {
        let secret = secret.into();
        if secret.len() < 16 {
            return Err(Error::InvalidInput(format!(
                "the hash secret must be at least 16 bytes, got {}",
                secret.len()
            )));
        }
        Ok(HashKey { secret })
    }

    /// Parses standard base64, the form of `LARDER_HASH_SECRET`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for invalid base64 or a secret under 16 bytes.
    pub fn parse(b64: &str) -> Result<Self> {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| Error::InvalidInput("the hash secret is not valid base64".into()))?;
        HashKey::new(secret)
    }

    /// HMAC-SHA-256 of `data`, lowercase hex.
    pub fn hash_hex(&self, data: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(data);
        crate::transport::hex(&mac.finalize().into_bytes())
    }

    /// The hash key of one tenant: HKDF-SHA-256 of this secret with the info
    /// `larder-tenant:{tenant}`, so one tenant's keys say nothing about another's.
    pub fn for_tenant(&self, tenant: &str) -> HashKey {
        let hk = hkdf::Hkdf::<Sha256>::new(None, &self.secret);
        let mut okm = vec![0u8; 32];
        hk.expand(format!("larder-tenant:{tenant}").as_bytes(), &mut okm)
            .expect("32 bytes is a valid HKDF-SHA-256 length");
        HashKey { secret: okm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(spec).unwrap()
    }

    const K1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn seals_opens_and_binds_the_redis_key() {
        let r = ring(K1);
        let s = r.seal(b"p:cache:a", b"hello").unwrap();
        assert!(is_sealed(&s));
        assert_eq!(r.open(b"p:cache:a", &s).as_deref(), Some(&b"hello"[..]));
        assert_eq!(r.open(b"p:cache:b", &s), None, "moved to another key");
        assert_ne!(
            r.seal(b"p:cache:a", b"hello").unwrap(),
            s,
            "a fresh nonce each time"
        );
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(r.open(b"p:cache:a", &t), None, "a flipped bit at {i}");
        }
        for n in 0..s.len() {
            assert_eq!(r.open(b"p:cache:a", &s[..n]), None, "truncated to {n}");
        }
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_the_current_one() {
        let old = ring(K1);
        let sealed_old = old.seal(b"k", b"v1").unwrap();
        let rotated = ring(&format!("{K2},{K1}"));
        assert_eq!(rotated.ids(), ["k2", "k1"]);
        assert_eq!(rotated.open(b"k", &sealed_old).as_deref(), Some(&b"v1"[..]));
        let sealed_new = rotated.seal(b"k", b"v2").unwrap();
        assert_eq!(old.open(b"k", &sealed_new), None, "the old ring lacks k2");
        assert_eq!(ring(K2).open(b"k", &sealed_old), None, "k1 retired");
    }

    #[test]
    fn malformed_keys_are_clear_errors_that_never_show_the_key() {
        for (spec, needle) in [
            ("", "no encryption key"),
            ("k1", "not `id:base64`"),
            ("k1:!!!", "not valid base64"),
            ("k1:AQID", "must be 32 bytes"),
            (
                "bad id:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                "[A-Za-z0-9_.-]",
            ),
            (&format!("{K1},{K1}"), "used twice"),
        ] {
            let e = Keyring::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec:?}: {e}");
            assert!(!e.contains("AQEB"), "no key material in {e}");
        }
        assert!(!format!("{:?}", ring(K1)).contains("AQEB"));
        assert!(HashKey::parse("c2hvcnQ=").is_err(), "under 16 bytes");
        assert_eq!(
            format!("{:?}", HashKey::new(vec![7; 32]).unwrap()),
            "HashKey(..)"
        );
    }

    #[test]
    fn keyed_hashes_depend_on_the_secret_and_the_tenant() {
        let a = HashKey::new(vec![1; 32]).unwrap();
        let b = HashKey::new(vec![2; 32]).unwrap();
        assert_ne!(a.hash_hex(b"x"), b.hash_hex(b"x"));
        assert_eq!(a.hash_hex(b"x").len(), 64);
        assert_ne!(
            a.for_tenant("t1").hash_hex(b"x"),
            a.for_tenant("t2").hash_hex(b"x")
        );
        assert_eq!(
            a.for_tenant("t1").hash_hex(b"x"),
            a.for_tenant("t1").hash_hex(b"x")
        );
    }

    /// The golden vectors of docs/KEY_FORMAT.md §10 (core/tests/data/seal_vectors.json):
    /// fixed keys and nonces, so every runtime checks the same bytes.
    #[test]
    fn golden_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/seal_vectors.json");
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let r = ring(&format!("{K2},{K1}"));
        let sealed = r.seal_with_nonce(
            b"larder:cache:0123abcd",
            br#"{"v":1,"response":"Paris."}"#,
            [9; 12],
        );
        let hk = HashKey::new(b"larder-test-hash-secret-32-bytes".to_vec()).unwrap();
        let canonical = br#"{"messages":[{"content":"Hi","role":"user"}],"model":"gpt-4o-mini"}"#;
        let doc = serde_json::json!({
            "description": "Fixed keys and nonces: never use a nonce twice in production.",
            "keys": format!("{K2},{K1}"),
            "seal": {
                "redis_key": "larder:cache:0123abcd",
                "plaintext": r#"{"v":1,"response":"Paris."}"#,
                "nonce_b64": b64(&[9; 12]),
                "sealed_b64": b64(&sealed),
            },
            "hash": {
                "secret": "larder-test-hash-secret-32-bytes",
                "canonical": std::str::from_utf8(canonical).unwrap(),
                "hmac_sha256_hex": hk.hash_hex(canonical),
                "tenant": "t-0123456789abcdef",
                "tenant_hmac_sha256_hex": hk.for_tenant("t-0123456789abcdef").hash_hex(canonical),
            },
        });
        if std::env::var_os("LARDER_BLESS").is_some() {
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        }
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(golden, doc);
        // And the stored vector opens.
        let stored = base64::engine::general_purpose::STANDARD
            .decode(golden["seal"]["sealed_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            r.open(b"larder:cache:0123abcd", &stored).as_deref(),
            Some(&br#"{"v":1,"response":"Paris."}"#[..])
        );
    }
}
