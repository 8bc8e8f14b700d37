//! A tiny blocking RESP2 client over `std::net::TcpStream`, enough for the harness to probe
//! servers (PING, INFO, CLUSTER INFO, SENTINEL …) without redis-rs.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The default connect, read and write timeout of [`command`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// A simple string (`+OK`).
    Simple(String),
    /// A server error (`-ERR …`); [`command`] returns it as a value, not as an `Err`.
    Error(String),
    /// An integer (`:1`).
    Integer(i64),
    /// A bulk string (`$3\r\nfoo`).
    Bulk(Vec<u8>),
    /// A null bulk string or null array (`$-1`, `*-1`).
    Nil,
    /// An array (`*2 …`).
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The text of a simple or bulk string (bulk decoded lossily as UTF-8), else `None`.
    pub fn as_text(&self) -> Option<String> {
        match self {
            RespValue::Simple(s) => Some(s.clone()),
            RespValue::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The integer of an integer reply, or of a string reply that parses as one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(i) => Some(*i),
            other => other.as_text()?.trim().parse().ok(),
        }
    }

    /// The elements of an array reply, else `None`.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// `Err` (kind `Other`, the server's message) for an error reply, else the value itself.
    pub fn into_result(self) -> io::Result<RespValue> {
        match self {
            RespValue::Error(e) => Err(io::Error::other(format!("server error: {e}"))),
            other => Ok(other),
        }
    }

    /// A text reply as a string, or `Err` for an error reply or a non-text reply.
    pub fn into_text(self) -> io::Result<String> {
        let value = self.into_result()?;
        value
            .as_text()
            .ok_or_else(|| io::Error::other(format!("expected a text reply, got {value:?}")))
    }
}

/// A blocking connection to one Redis server (RESP2, no pipelining).
#[derive(Debug)]
pub struct RespConnection {
    reader: BufReader<TcpStream>,
}

impl RespConnection {
    /// Connects to `addr` (`"127.0.0.1:6379"`); `timeout` bounds the connect and every
    /// read and write.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Self> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("no address in {addr}"));
        for sock in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sock, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    stream.set_nodelay(true)?;
                    return Ok(RespConnection {
                        reader: BufReader::new(stream),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends `AUTH password` and fails unless the server answers `OK`.
    pub fn auth(&mut self, password: &str) -> io::Result<()> {
        self.command(&["AUTH", password])?.into_result().map(drop)
    }

    /// Sends one command and reads its reply. A server error is `Ok(RespValue::Error)`;
    /// `Err` means an I/O or protocol failure.
    pub fn command<S: AsRef<[u8]>>(&mut self, args: &[S]) -> io::Result<RespValue> {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            let arg = arg.as_ref();
            buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            buf.extend_from_slice(arg);
            buf.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&buf)?;
        read_value(&mut self.reader)
    }
}

/// Connects to `addr`, sends one command, returns its reply and closes the connection
/// (timeouts: [`DEFAULT_TIMEOUT`]).
///
/// ```no_run
/// use larder_native::testing::{command, RespValue};
///
/// let pong = command("127.0.0.1:6379", &["PING"]).unwrap();
/// assert_eq!(pong, RespValue::Simple("PONG".into()));
/// ```
pub fn command<S: AsRef<[u8]>>(addr: &str, args: &[S]) -> io::Result<RespValue> {
    RespConnection::connect(addr, DEFAULT_TIMEOUT)?.command(args)
}

fn protocol_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by server",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error(format!(
            "unterminated RESP line {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| protocol_error(format!("non-UTF-8 RESP line: {e}")))
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse()
        .map_err(|_| protocol_error(format!("bad RESP length {s:?}")))
}

fn read_value(reader: &mut impl BufRead) -> io::Result<RespValue> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(RespValue::Simple(rest.to_owned())),
        "-" => Ok(RespValue::Error(rest.to_owned())),
        ":" => Ok(RespValue::Integer(parse_len(rest)?)),
        "$" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(RespValue::Nil);
            }
            let mut data = vec![0; len as usize + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(protocol_error("bulk string not followed by CRLF".into()));
            }
            data.truncate(len as usize);
            Ok(RespValue::Bulk(data))
        }
        "*" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(RespValue::Nil);
            }
            (0..len)
                .map(|_| read_value(reader))
                .collect::<io::Result<Vec<_>>>()
                .map(RespValue::Array)
        }
        _ => Err(protocol_error(format!("unexpected RESP line {line:?}"))),
    }
}

/// The value of `field` in an `INFO`-style reply (`field:value` lines).
pub(crate) fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == field).then(|| v.trim().to_owned())
    })
}

/// A flat `[k1, v1, k2, v2, …]` array (SENTINEL replies) as pairs of texts.
pub(crate) fn flat_map(value: &RespValue) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap_or_default()
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.as_text()?, v.as_text()?)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<RespValue> {
        read_value(&mut io::Cursor::new(bytes))
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(
            parse(b"+PONG\r\n").unwrap(),
            RespValue::Simple("PONG".into())
        );
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            RespValue::Error("ERR no".into())
        );
        assert_eq!(parse(b":-7\r\n").unwrap(), RespValue::Integer(-7));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").unwrap(),
            RespValue::Bulk(b"a\r\n".to_vec())
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), RespValue::Nil);
        assert_eq!(
            parse(b"*2\r\n$1\r\nx\r\n*1\r\n:1\r\n").unwrap(),
            RespValue::Array(vec![
                RespValue::Bulk(b"x".to_vec()),
                RespValue::Array(vec![RespValue::Integer(1)])
            ])
        );
        assert!(parse(b"").is_err());
        assert!(parse(b"?x\r\n").is_err());
    }

    #[test]
    fn reads_info_fields_and_flat_maps() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role").as_deref(), Some("slave"));
        assert_eq!(
            info_field(info, "master_link_status").as_deref(),
            Some("up")
        );
        assert_eq!(info_field(info, "nope"), None);
        let map = RespValue::Array(vec![
            RespValue::Bulk(b"ip".to_vec()),
            RespValue::Bulk(b"127.0.0.1".to_vec()),
        ]);
        assert_eq!(flat_map(&map), vec![("ip".into(), "127.0.0.1".into())]);
    }
}
