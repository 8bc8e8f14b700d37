//! Bearer tokens: full and read-only, compared in constant time, never shown.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::policy::Access;

/// A secret token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text (surrounding whitespace is trimmed).
    ///
    /// # Errors
    ///
    /// When the token is shorter than 16 characters: such a token is guessable.
    pub fn new(text: impl Into<String>) -> Result<Self, String> {
        let text = text.into();
        let t = text.trim();
        if t.chars().count() < 16 {
            return Err(
                "a gateway token must be at least 16 characters (try `openssl rand -hex 32`)"
                    .to_owned(),
            );
        }
        Ok(Token(t.to_owned()))
    }

    /// Reads a token from a file (the whole file, trimmed), for Docker/Kubernetes secrets.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or holds a token that [`Token::new`] refuses.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        Token::new(text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The token's text, to hand to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The tokens a gateway accepts, each stored as its SHA-256 (so every comparison has the
/// same length and takes the same time).
#[derive(Clone, Default)]
pub(crate) struct Tokens {
    entries: Vec<([u8; 32], Access)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.count(Access::Full);
        let read_only = self.count(Access::ReadOnly);
        f.debug_struct("Tokens")
            .field("full", &full)
            .field("read_only", &read_only)
            .finish()
    }
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

impl Tokens {
    pub(crate) fn add(&mut self, token: &Token, access: Access) {
        self.entries.push((digest(token.0.as_bytes()), access));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn count(&self, access: Access) -> usize {
        self.entries.iter().filter(|(_, a)| *a == access).count()
    }

    /// The access an `Authorization` header value grants, if any. Every stored token is
    /// compared (no early exit); a full token wins over a read-only one.
    pub(crate) fn check(&self, authorization: Option<&[u8]>) -> Option<Access> {
        self.check_secret(authorization.and_then(bearer)?)
    }

    /// The access a bare token (for example from `?_token=`) grants, if any.
    pub(crate) fn check_secret(&self, presented: &[u8]) -> Option<Access> {
        let presented = presented.trim_ascii();
        if presented.is_empty() {
            return None;
        }
        let d = digest(presented);
        let mut granted = None;
        for (stored, access) in &self.entries {
            if ct_eq(stored, &d) && granted != Some(Access::Full) {
                granted = Some(*access);
            }
        }
        granted
    }
}

/// The value of the query parameter `name` (percent-decoded), if present. Only `%XX`
/// escapes are decoded; a malformed escape is kept as it is (and will not match a token).
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<Vec<u8>> {
    let pair = query?
        .split('&')
        .find(|p| p.split('=').next() == Some(name))?;
    let raw = pair.split_once('=').map_or("", |(_, v)| v).as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    if header.len() > 7 && header[..7].eq_ignore_ascii_case(b"bearer ") {
        Some(header[7..].trim_ascii())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_their_access_and_nothing_else() {
        let full = Token::new("full-token-0123456789").unwrap();
        let ro = Token::new("read-only-token-0123456789").unwrap();
        let mut t = Tokens::default();
        t.add(&full, Access::Full);
        t.add(&ro, Access::ReadOnly);
        assert_eq!(
            t.check(Some(b"Bearer full-token-0123456789")),
            Some(Access::Full)
        );
        assert_eq!(
            t.check(Some(b"bearer  read-only-token-0123456789 ")),
            Some(Access::ReadOnly)
        );
        assert_eq!(t.check(Some(b"Bearer full-token-012345678")), None);
        assert_eq!(
            t.check(Some(b"full-token-0123456789")),
            None,
            "scheme required"
        );
        assert_eq!(t.check(Some(b"Basic Zm9vOmJhcg==")), None);
        assert_eq!(t.check(Some(b"Bearer ")), None);
        assert_eq!(t.check(None), None);
    }

    #[test]
    fn query_tokens_are_found_and_percent_decoded() {
        assert_eq!(
            query_param(Some("_token=abc%2Fd"), "_token"),
            Some(b"abc/d".to_vec())
        );
        assert_eq!(
            query_param(Some("a=1&_token=x%zz"), "_token"),
            Some(b"x%zz".to_vec())
        );
        assert_eq!(query_param(Some("_token"), "_token"), Some(Vec::new()));
        assert_eq!(query_param(Some("_tokenx=1"), "_token"), None);
        assert_eq!(query_param(None, "_token"), None);
        let mut t = Tokens::default();
        t.add(&Token::new("full-token-0123456789").unwrap(), Access::Full);
        assert_eq!(t.check_secret(b"full-token-0123456789"), Some(Access::Full));
        assert_eq!(t.check_secret(b""), None);
    }

    #[test]
    fn tokens_never_show_and_short_ones_are_refused() {
        let tok = Token::new("super-secret-value-42").unwrap();
        assert!(!format!("{tok:?}").contains("secret"));
        let mut t = Tokens::default();
        t.add(&tok, Access::Full);
        assert!(!format!("{t:?}").contains("secret"));
        assert!(Token::new("short").is_err());
    }
}
