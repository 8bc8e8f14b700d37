//! Translation between larder's data ([`Cmd`], [`Value`], [`TransportError`]) and redis-rs's.
//!
//! Nothing here decides anything: it maps one representation onto the other, keeping server
//! error text byte for byte as Redis printed it.

use std::time::Duration;

use bytes::Bytes;
use larder_core::{Cmd, ErrorKind, TransportError, Value};
use redis::{RedisError, ServerError, ServerErrorKind};

/// Builds the redis-rs command for a larder command (binary-safe, name first).
pub(crate) fn to_redis_cmd(cmd: &Cmd) -> redis::Cmd {
    let args = cmd.args();
    let bytes = args.iter().map(|a| a.len()).sum();
    let mut out = redis::Cmd::with_capacity(args.len(), bytes);
    for part in cmd.args() {
        out.arg(&part[..]);
    }
    out
}

/// Builds a redis-rs (non-transactional) pipeline.
pub(crate) fn to_redis_pipeline<'a>(cmds: impl IntoIterator<Item = &'a Cmd>) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::new();
    for cmd in cmds {
        pipe.add_command(to_redis_cmd(cmd));
    }
    pipe
}

/// The text of a server error exactly as Redis sent it: `CODE detail`.
pub(crate) fn server_error_text(err: &ServerError) -> String {
    match err.details() {
        Some(detail) => format!("{} {}", err.code(), detail),
        None => err.code().to_owned(),
    }
}

/// Converts a redis-rs reply to larder's RESP-like value.
///
/// RESP3-only shapes are lowered to what the same command answers in RESP2: maps and sets
/// become flat arrays, booleans become 1/0, doubles, big numbers and verbatim strings become
/// bulk strings.
pub(crate) fn from_redis_value(v: redis::Value) -> Value {
    match v {
        redis::Value::Nil => Value::Nil,
        redis::Value::Int(i) => Value::Int(i),
        redis::Value::BulkString(b) => Value::Bulk(Bytes::from(b)),
        redis::Value::SimpleString(s) => Value::Status(s),
        redis::Value::Okay => Value::Status("OK".to_owned()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            Value::Array(items.into_iter().map(from_redis_value).collect())
        }
        redis::Value::Map(pairs) => Value::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [from_redis_value(k), from_redis_value(v)])
                .collect(),
        ),
        redis::Value::Attribute { data, .. } => from_redis_value(*data),
        redis::Value::Double(d) => Value::Bulk(Bytes::from(format_double(d))),
        redis::Value::Boolean(b) => Value::Int(i64::from(b)),
        redis::Value::VerbatimString { text, .. } => Value::Bulk(Bytes::from(text)),
        redis::Value::BigNumber(digits) => Value::Bulk(Bytes::from(digits)),
        redis::Value::Push { data, .. } => {
            Value::Array(data.into_iter().map(from_redis_value).collect())
        }
        redis::Value::ServerError(e) => Value::Error(server_error_text(&e)),
        // `redis::Value` is non-exhaustive: anything newer is reported, not guessed at.
        #[allow(unreachable_patterns)]
        other => Value::Error(format!("ERR larder: unsupported reply type {other:?}")),
    }
}

/// Formats a RESP3 double the way Redis prints one in RESP2 (`inf`, `-inf`, `nan`, shortest
/// round-trip decimal otherwise).
fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        d.to_string()
    }
}

/// Server error codes that mean "not now" rather than "this command is wrong".
pub(crate) fn unavailable_code(code: &str) -> bool {
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

/// Server error codes that mean our credentials were refused.
fn auth_code(code: &str) -> bool {
    matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM")
}

/// What a failed redis-rs call means for the caller.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered the command with an error: an in-band reply, not a failure of the
    /// transport (`Ok(Value::Error(text))`).
    Reply(String),
    /// The transport failed.
    Transport(TransportError),
}

/// Classifies a redis-rs error. `context` names what was being done (for the message).
pub(crate) fn classify(err: &RedisError, context: &str) -> Failure {
    use redis::ErrorKind as K;
    if let Some(code) = err.code() {
        // A server error reply that redis-rs turned into an `Err`.
        let text = match err.detail() {
            Some(detail) => format!("{code} {detail}"),
            None => code.to_owned(),
        };
        if auth_code(code) {
            return Failure::Transport(
                TransportError::new(
                    ErrorKind::Auth,
                    format!(
                        "{context}: Redis refused the credentials ({text}); check the username and password"
                    ),
                )
                .with_source(err.clone()),
            );
        }
        if unavailable_code(code) {
            return Failure::Transport(
                TransportError::new(
                    ErrorKind::Unavailable,
                    format!("{context}: Redis is not ready ({text}); retry later"),
                )
                .with_source(err.clone()),
            );
        }
        if !matches!(err.kind(), K::Server(ServerErrorKind::ExecAbort)) {
            return Failure::Reply(text);
        }
    }
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else {
        match err.kind() {
            K::Io => ErrorKind::Io,
            K::AuthenticationFailed => ErrorKind::Auth,
            K::Parse | K::UnexpectedReturnType | K::RESP3NotSupported => ErrorKind::Protocol,
            K::ClusterConnectionNotFound
            | K::MasterNameNotFoundBySentinel
            | K::NoValidReplicasFoundBySentinel => ErrorKind::Unavailable,
            K::InvalidClientConfig | K::EmptySentinelList => ErrorKind::Refused,
            _ => ErrorKind::Other,
        }
    };
    let text = err.to_string();
    let tls_failure = kind == ErrorKind::Io
        && [
            "certificate",
            "Certificate",
            "fatal alert",
            "HandshakeFailure",
        ]
        .iter()
        .any(|w| text.contains(w));
    let hint = match kind {
        ErrorKind::Io if tls_failure => {
            "; the TLS handshake failed: check the server's certificate and TlsOptions (root_certs_pem for a private CA, client_identity_pem when the server wants a client certificate)"
        }
        ErrorKind::Io => "; check that Redis is running and reachable",
        ErrorKind::Timeout => {
            "; Redis did not answer in time (raise read_timeout if it is just slow)"
        }
        ErrorKind::Auth => "; check the username and password",
        ErrorKind::Unavailable => "; retry later",
        _ => "",
    };
    Failure::Transport(
        TransportError::new(kind, format!("{context}: {text}{hint}")).with_source(err.clone()),
    )
}

/// Maps a redis-rs error to a transport error, also for server replies (used where no
/// in-band reply is possible, for example while connecting).
pub(crate) fn transport_error(err: &RedisError, context: &str) -> TransportError {
    match classify(err, context) {
        Failure::Transport(e) => e,
        Failure::Reply(text) => TransportError::new(
            ErrorKind::Other,
            format!("{context}: Redis answered {text}"),
        ),
    }
}

/// A reply to `cmd` that says the server cannot serve anyone right now (`LOADING`, `BUSY`,
/// `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`…), as the transport error it is.
/// Command errors (`WRONGTYPE`, `NOSCRIPT`…) stay in band, and so does every error a script
/// or function returns: its text is the script's to choose (`redis.error_reply('BUSY x')`),
/// and taking it for an outage would let a client open circuit breakers at will.
pub(crate) fn unavailable_reply(cmd: &Cmd, v: &Value) -> Option<TransportError> {
    match v {
        Value::Error(text)
            if unavailable_code(text.split(' ').next().unwrap_or(""))
                && !super::slots::is_script(cmd) =>
        {
            Some(TransportError::new(
                ErrorKind::Unavailable,
                format!("Redis cannot serve the command now ({text}); retry later"),
            ))
        }
        _ => None,
    }
}

/// The error of a call that ran out of its time budget.
pub(crate) fn deadline_error(what: &str, budget: Duration) -> TransportError {
    TransportError::new(
        ErrorKind::Timeout,
        format!(
            "{what}: no answer from Redis within {} ms (dial_timeout + write_timeout + read_timeout); \
             check that the server is up, or raise the timeouts",
            budget.as_millis()
        ),
    )
}

/// Converts the result of one command: server errors stay in band. `context` (what was
/// being done, for an error message) is only built on failure.
pub(crate) fn reply(
    result: Result<redis::Value, RedisError>,
    context: impl FnOnce() -> String,
) -> Result<Value, TransportError> {
    match result {
        Ok(v) => Ok(from_redis_value(v)),
        Err(e) => match classify(&e, &context()) {
            Failure::Reply(text) => Ok(Value::Error(text)),
            Failure::Transport(t) => Err(t),
        },
    }
}

/// Converts the result of a pipeline of `n` commands.
pub(crate) fn replies(
    result: Result<Vec<redis::Value>, RedisError>,
    n: usize,
    context: impl FnOnce() -> String,
) -> Result<Vec<Value>, TransportError> {
    match result {
        Ok(values) if values.len() == n => Ok(values.into_iter().map(from_redis_value).collect()),
        Ok(values) => Err(TransportError::new(
            ErrorKind::Protocol,
            format!(
                "{}: expected {n} replies to the pipeline, got {}",
                context(),
                values.len()
            ),
        )),
        Err(e) => match classify(&e, &context()) {
            // A single error for the whole pipeline: every command gets it.
            Failure::Reply(text) => Ok(vec![Value::Error(text); n]),
            Failure::Transport(t) => Err(t),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(resp: &str) -> redis::Value {
        redis::parse_redis_value(resp.as_bytes()).expect("valid RESP")
    }

    #[test]
    fn server_error_text_is_exact() {
        let v = parse("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert_eq!(
            from_redis_value(v),
            Value::Error(
                "WRONGTYPE Operation against a key holding the wrong kind of value".into()
            )
        );
        assert_eq!(
            from_redis_value(parse(
                "-ERR unknown command 'NOPE', with args beginning with: \r\n"
            )),
            Value::Error("ERR unknown command 'NOPE', with args beginning with: ".into())
        );
        assert_eq!(
            from_redis_value(parse("-NOSCRIPT No matching script. Please use EVAL.\r\n")),
            Value::Error("NOSCRIPT No matching script. Please use EVAL.".into())
        );
        assert_eq!(
            from_redis_value(parse("-ERR\r\n")),
            Value::Error("ERR".into())
        );
    }

    #[test]
    fn resp2_shapes() {
        assert_eq!(
            from_redis_value(parse("+OK\r\n")),
            Value::Status("OK".into())
        );
        assert_eq!(
            from_redis_value(parse("+PONG\r\n")),
            Value::Status("PONG".into())
        );
        assert_eq!(from_redis_value(parse(":-7\r\n")), Value::Int(-7));
        assert_eq!(from_redis_value(parse("$-1\r\n")), Value::Nil);
        assert_eq!(
            from_redis_value(parse("$3\r\na\x00b\r\n")),
            Value::Bulk(Bytes::from_static(b"a\x00b"))
        );
        assert_eq!(
            from_redis_value(parse("*3\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n")),
            Value::Array(vec![
                Value::Bulk(Bytes::from_static(b"a")),
                Value::Nil,
                Value::Bulk(Bytes::new())
            ])
        );
    }

    #[test]
    fn resp3_shapes_are_lowered() {
        assert_eq!(
            from_redis_value(parse("%1\r\n+k\r\n:1\r\n")),
            Value::Array(vec![Value::Status("k".into()), Value::Int(1)])
        );
        assert_eq!(from_redis_value(parse("#t\r\n")), Value::Int(1));
        assert_eq!(from_redis_value(parse("#f\r\n")), Value::Int(0));
        assert_eq!(
            from_redis_value(parse(",1.5\r\n")),
            Value::Bulk(Bytes::from_static(b"1.5"))
        );
        assert_eq!(
            from_redis_value(parse(",inf\r\n")),
            Value::Bulk(Bytes::from_static(b"inf"))
        );
        assert_eq!(
            from_redis_value(parse("(3492890328409238509324850943850943825024385\r\n")),
            Value::Bulk(Bytes::from_static(
                b"3492890328409238509324850943850943825024385"
            ))
        );
        assert_eq!(
            from_redis_value(parse("=15\r\ntxt:Some string\r\n")),
            Value::Bulk(Bytes::from_static(b"Some string"))
        );
        assert_eq!(
            from_redis_value(parse("~2\r\n:1\r\n:2\r\n")),
            Value::Array(vec![Value::Int(1), Value::Int(2)])
        );
    }

    #[test]
    fn commands_are_binary_safe() {
        let cmd = Cmd::new("SET").arg(&b"k\x00\xff"[..]).arg("v");
        let packed = to_redis_cmd(&cmd).get_packed_command();
        assert_eq!(packed, b"*3\r\n$3\r\nSET\r\n$3\r\nk\x00\xff\r\n$1\r\nv\r\n");
    }

    /// The cause survives: `Error` → `TransportError` → redis-rs's error → the io error.
    #[test]
    fn transport_errors_keep_their_cause_as_source() {
        use std::error::Error as _;
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let Failure::Transport(t) = classify(&io, "GET") else {
            panic!("an io error is a transport failure");
        };
        let redis = t
            .source()
            .and_then(|s| s.downcast_ref::<RedisError>())
            .expect("the redis-rs error is the source");
        assert_eq!(redis.kind(), io.kind());
        let cache_error = larder_core::Error::from(t);
        let mut chain = vec![cache_error.to_string()];
        let mut next = cache_error.source();
        while let Some(e) = next {
            chain.push(e.to_string());
            next = e.source();
        }
        assert!(chain.len() >= 3, "{chain:?}");
    }

    #[test]
    fn errors_are_classified() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        match classify(&io, "GET") {
            Failure::Transport(t) => {
                assert_eq!(t.kind(), ErrorKind::Io);
                assert!(t.message().contains("reachable"), "{t}");
            }
            other => panic!("{other:?}"),
        }
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(
            matches!(classify(&timeout, "GET"), Failure::Transport(t) if t.kind() == ErrorKind::Timeout)
        );

        let server = |resp: &str| parse(resp).extract_error().unwrap_err();
        assert!(matches!(
            classify(&server("-LOADING Redis is loading the dataset in memory\r\n"), "GET"),
            Failure::Transport(t) if t.kind() == ErrorKind::Unavailable
        ));
        assert!(matches!(
            classify(&server("-CLUSTERDOWN The cluster is down\r\n"), "GET"),
            Failure::Transport(t) if t.kind() == ErrorKind::Unavailable
        ));
        assert!(matches!(
            classify(&server("-MASTERDOWN Link with MASTER is down\r\n"), "GET"),
            Failure::Transport(t) if t.kind() == ErrorKind::Unavailable
        ));
        assert!(matches!(
            classify(&server("-WRONGPASS invalid username-password pair or user is disabled.\r\n"), "AUTH"),
            Failure::Transport(t) if t.kind() == ErrorKind::Auth
        ));
        match classify(
            &server("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
            "GET",
        ) {
            Failure::Reply(text) => assert_eq!(
                text,
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn availability_replies_are_transport_errors() {
        for text in [
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
            "CLUSTERDOWN The cluster is down",
            "BUSY Redis is busy running a script.",
        ] {
            let get = Cmd::new("GET").arg("k");
            let e = unavailable_reply(&get, &Value::Error(text.into())).expect(text);
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(e.message().contains(text));
        }
        for text in [
            "NOSCRIPT No matching script.",
            "BUSYGROUP Consumer Group name already exists",
            "ERR x",
        ] {
            assert!(
                unavailable_reply(&Cmd::new("GET").arg("k"), &Value::Error(text.into())).is_none(),
                "{text}"
            );
        }
        assert!(unavailable_reply(&Cmd::new("GET").arg("k"), &Value::Nil).is_none());
        // A script's error is the script's: never taken for an outage.
        for script in ["EVAL", "evalsha", "EVAL_RO", "FCALL"] {
            let busy = Value::Error("BUSY Redis is busy running a script.".into());
            assert!(unavailable_reply(&Cmd::named(script).arg("x"), &busy).is_none());
        }
    }

    #[test]
    fn pipeline_reply_count_is_checked() {
        assert!(replies(Ok(vec![redis::Value::Okay]), 2, || "pipeline".into()).is_err());
        assert_eq!(
            replies(Ok(vec![redis::Value::Okay, redis::Value::Nil]), 2, || {
                "pipeline".into()
            })
            .unwrap(),
            vec![Value::Status("OK".into()), Value::Nil]
        );
    }
}
