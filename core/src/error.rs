//! Errors: [`TransportError`] for a backend that could not run a command, and [`Error`] for
//! everything a cache operation can report.

use std::fmt;

/// What went wrong in a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection failed or broke (refused, reset, DNS, TLS handshake).
    Io,
    /// The operation did not finish within its configured timeout.
    Timeout,
    /// The server refused our credentials (`NOAUTH`, `WRONGPASS`, HTTP 401/403).
    Auth,
    /// The server's reply could not be understood.
    Protocol,
    /// The server is busy or not ready (`LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`,
    /// `MASTERDOWN`, HTTP 429/5xx): retrying later may succeed.
    Unavailable,
    /// The request was refused as invalid before reaching Redis (HTTP 400/413, a denied
    /// command).
    Refused,
    /// The transport was closed by [`Transport::close`](crate::Transport::close).
    Closed,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short lowercase name, stable for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "auth",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Refused => "refused",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport could not run a command or pipeline at all.
///
/// A command that ran and failed on the server is not a `TransportError`: it comes back
/// in band as [`Value::Error`](crate::Value::Error).
#[derive(Debug, Clone)]
pub struct TransportError {
    kind: ErrorKind,
    message: String,
    source: Option<ErrorSource>,
}

/// The underlying error of a [`TransportError`] (`Send + Sync` on native targets; JS errors
/// on `wasm32` are neither).
#[cfg(not(target_arch = "wasm32"))]
type ErrorSource = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;
#[cfg(target_arch = "wasm32")]
type ErrorSource = std::sync::Arc<dyn std::error::Error + 'static>;

/// Two transport errors are equal when their kind and message are; the sources are not
/// compared.
impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for TransportError {}

impl TransportError {
    /// A new error of `kind` with a human-readable message that says what to check.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TransportError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source` (the client library's or the operating system's
    /// error), which [`std::error::Error::source`] then returns: a caller can log the whole
    /// chain or downcast it (to `redis::RedisError`, `std::io::Error`, …).
    #[cfg(not(target_arch = "wasm32"))]
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// The same error, caused by `source`, which [`std::error::Error::source`] then returns.
    #[cfg(target_arch = "wasm32")]
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when trying the same operation again later may succeed (I/O, timeouts, busy or
    /// failing-over servers). Auth, protocol and refused requests are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Unavailable
        )
    }

    /// True for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Classifies a Redis error reply: which replies mean "the server is temporarily
/// unavailable" rather than "this command is wrong".
pub fn server_error_is_retryable(reply: &str) -> bool {
    let code = reply.split_whitespace().next().unwrap_or("");
    matches!(
        code,
        "LOADING"
            | "BUSY"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "MASTERDOWN"
            | "READONLY"
            | "MOVED"
            | "ASK"
    )
}

/// The error type of every cache operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend could not be reached or did not answer in time.
    #[error("cache backend unavailable: {0}")]
    Transport(#[from] TransportError),
    /// Redis ran the command and answered with an error reply (text unchanged).
    #[error("redis error reply: {0}")]
    Server(String),
    /// Redis answered with a reply of a shape the command never produces.
    #[error("unexpected reply to {command}: {detail}")]
    UnexpectedReply {
        /// The command that got the reply.
        command: &'static str,
        /// What was received instead.
        detail: String,
    },
    /// A value or request could not be serialized (for example a float that is NaN, which
    /// JSON cannot represent).
    #[error("cannot serialize: {0}")]
    Serialize(String),
    /// An argument was rejected before any I/O (for example an empty key pattern).
    #[error("invalid argument: {0}")]
    InvalidInput(String),
    /// The cache was closed with [`Cache::close`](crate::Cache::close).
    #[error("cache is closed")]
    Closed,
}

impl Error {
    /// True when the same call may succeed later (see [`TransportError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(t) => t.is_retryable(),
            Error::Server(s) => server_error_is_retryable(s),
            _ => false,
        }
    }

    /// True for Redis's `WRONGTYPE` reply: the key holds a value of another type (a hash
    /// where a string was expected, say), written by some other program. Caches treat such
    /// a key as a corrupt entry (a counted miss), not as an outage.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self, Error::Server(s) if s.starts_with("WRONGTYPE"))
    }

    /// The transport error kind, when this is a transport error.
    pub fn transport_kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Transport(t) => Some(t.kind()),
            _ => None,
        }
    }
}

/// The result type of cache operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(TransportError::new(ErrorKind::Io, "refused").is_retryable());
        assert!(TransportError::new(ErrorKind::Timeout, "slow").is_retryable());
        assert!(!TransportError::new(ErrorKind::Auth, "WRONGPASS").is_retryable());
        assert!(!TransportError::new(ErrorKind::Protocol, "bad").is_retryable());
        assert!(Error::Server("LOADING Redis is loading".into()).is_retryable());
        assert!(!Error::Server("WRONGTYPE Operation".into()).is_retryable());
        assert!(Error::Server("WRONGTYPE Operation".into()).is_wrong_type());
        assert!(!Error::Server("ERR wrong number of arguments".into()).is_wrong_type());
    }

    #[test]
    fn display_says_kind_and_message() {
        let e = Error::from(TransportError::new(
            ErrorKind::Timeout,
            "no reply in 500 ms",
        ));
        assert_eq!(
            e.to_string(),
            "cache backend unavailable: timeout error: no reply in 500 ms"
        );
        assert_eq!(e.transport_kind(), Some(ErrorKind::Timeout));
    }
}
