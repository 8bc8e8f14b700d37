//! Redis commands and replies as plain data: [`Cmd`] and [`Value`].
//!
//! Core speaks Redis as data so that every backend (redis-rs, Upstash REST over HTTP, the
//! in-memory test transport) only has to translate, never decide.

use bytes::Bytes;
use std::fmt;

/// One Redis command: a name and binary-safe arguments.
///
/// The name is stored as the first argument, so `args()` is exactly what goes on the wire.
///
/// # Examples
///
/// ```
/// use larder_core::Cmd;
///
/// let cmd = Cmd::new("SET").arg("greeting").arg(b"hi\x00there".as_slice()).arg("PX").arg(1500u64);
/// assert_eq!(cmd.name(), "SET");
/// assert_eq!(cmd.args().len(), 5);
/// assert_eq!(&cmd.args()[4][..], b"1500");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cmd {
    parts: Vec<Bytes>,
}

/// Parts a new command has room for before its list grows: every command larder sends on a
/// hot path (`GET`, `SET key value PX ms NX`, `EVALSHA sha 1 key arg`) fits.
const INITIAL_PARTS: usize = 6;

impl Cmd {
    /// Starts a command with its name (for example `"GET"`). The name is not copied; use
    /// [`Cmd::named`] for a name known only at run time.
    pub fn new(name: &'static str) -> Self {
        Cmd::with_name(Bytes::from_static(name.as_bytes()))
    }

    /// Starts a command whose name is known only at run time (read from a request, say).
    pub fn named(name: impl IntoArg) -> Self {
        Cmd::with_name(name.into_arg())
    }

    fn with_name(name: Bytes) -> Self {
        let mut parts = Vec::with_capacity(INITIAL_PARTS);
        parts.push(name);
        Cmd { parts }
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl IntoArg) -> Self {
        self.parts.push(arg.into_arg());
        self
    }

    /// Appends one argument in place.
    pub fn push_arg(&mut self, arg: impl IntoArg) -> &mut Self {
        self.parts.push(arg.into_arg());
        self
    }

    /// Appends every argument from an iterator.
    #[must_use]
    pub fn args_from<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: IntoArg,
    {
        self.parts.extend(args.into_iter().map(IntoArg::into_arg));
        self
    }

    /// The command name, upper-cased as given (lossy if it is not UTF-8).
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.parts[0]).to_ascii_uppercase()
    }

    /// Every part of the command, the name first.
    pub fn args(&self) -> &[Bytes] {
        &self.parts
    }

    /// Consumes the command, returning its parts, the name first.
    pub fn into_args(self) -> Vec<Bytes> {
        self.parts
    }

    /// Builds a command from raw parts (the name first). Returns `None` when `parts` is empty.
    pub fn from_parts(parts: Vec<Bytes>) -> Option<Self> {
        if parts.is_empty() {
            None
        } else {
            Some(Cmd { parts })
        }
    }
}

impl fmt::Debug for Cmd {
    /// Shows the command name and argument count only: arguments may hold secrets
    /// (`AUTH`) or large values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("name", &self.name())
            .field("args", &(self.parts.len() - 1))
            .finish()
    }
}

/// A value that can be a command argument.
///
/// Owned bytes ([`Bytes`], `Vec<u8>`, `String`) move into the command without a copy;
/// borrowed ones are copied; integers are written in decimal.
pub trait IntoArg {
    /// The argument's wire bytes.
    fn into_arg(self) -> Bytes;
}

impl IntoArg for Bytes {
    fn into_arg(self) -> Bytes {
        self
    }
}
impl IntoArg for &Bytes {
    fn into_arg(self) -> Bytes {
        self.clone()
    }
}
impl IntoArg for &[u8] {
    fn into_arg(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}
impl<const N: usize> IntoArg for &[u8; N] {
    fn into_arg(self) -> Bytes {
        Bytes::copy_from_slice(&self[..])
    }
}
impl IntoArg for Vec<u8> {
    fn into_arg(self) -> Bytes {
        Bytes::from(self)
    }
}
impl IntoArg for &Vec<u8> {
    fn into_arg(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}
impl IntoArg for &str {
    fn into_arg(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}
impl IntoArg for String {
    fn into_arg(self) -> Bytes {
        Bytes::from(self)
    }
}
impl IntoArg for &String {
    fn into_arg(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}
macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl IntoArg for $t {
            fn into_arg(self) -> Bytes {
                Bytes::from(self.to_string())
            }
        }
    )*};
}
int_arg!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// A Redis reply, RESP-like, with per-command errors in band.
///
/// A command that fails inside a pipeline is `Value::Error`, not an `Err` of the pipeline:
/// `Err` is kept for the transport itself (see [`TransportError`](crate::TransportError)).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// The null reply (a missing key).
    Nil,
    /// An integer reply.
    Int(i64),
    /// A bulk string: binary-safe bytes.
    Bulk(Bytes),
    /// A simple status string such as `OK` or `PONG`.
    Status(String),
    /// An array reply (also used for RESP3 sets and maps, flattened key, value, …).
    Array(Vec<Value>),
    /// A per-command error reply, exactly as the server sent it (for example
    /// `"WRONGTYPE Operation against a key holding the wrong kind of value"`).
    Error(String),
}

impl Value {
    /// True for [`Value::Nil`].
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// The error text when this is [`Value::Error`].
    pub fn as_error(&self) -> Option<&str> {
        match self {
            Value::Error(e) => Some(e),
            _ => None,
        }
    }

    /// The bytes of a bulk or status reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The integer value of an integer reply, or of a bulk/status reply that holds a decimal
    /// integer (the Upstash REST dialect and some proxies send numbers as strings).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Value::Status(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// True when the reply is the status `OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Value::Status(s) if s == "OK")
            || matches!(self, Value::Bulk(b) if &b[..] == b"OK")
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("Nil"),
            Value::Int(i) => write!(f, "Int({i})"),
            Value::Bulk(b) => match std::str::from_utf8(b) {
                Ok(s) if s.len() <= 64 => write!(f, "Bulk({s:?})"),
                Ok(s) => {
                    let mut end = 64;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    write!(f, "Bulk({:?}… {} bytes)", &s[..end], b.len())
                }
                Err(_) => write!(f, "Bulk(<{} binary bytes>)", b.len()),
            },
            Value::Status(s) => write!(f, "Status({s:?})"),
            Value::Array(a) => f.debug_tuple("Array").field(a).finish(),
            Value::Error(e) => write!(f, "Error({e:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_and_owned_arguments_are_not_copied() {
        let name = "GET";
        let key = String::from("user:1");
        let key_at = key.as_ptr();
        let value = vec![7u8; 1024];
        let value_at = value.as_ptr();
        let cmd = Cmd::new(name)
            .arg(key)
            .arg(value)
            .arg(Bytes::from_static(b"PX"));
        assert_eq!(
            cmd.args()[0].as_ptr(),
            name.as_ptr(),
            "name is the static str"
        );
        assert_eq!(cmd.args()[1].as_ptr(), key_at, "the String moved in");
        assert_eq!(cmd.args()[2].as_ptr(), value_at, "the Vec moved in");
        // Borrowed arguments are copied: the command owns its bytes.
        let borrowed = String::from("k");
        let cmd = Cmd::new("GET").arg(&borrowed);
        assert_ne!(cmd.args()[1].as_ptr(), borrowed.as_ptr());
        assert_eq!(&cmd.args()[1][..], b"k");
    }

    #[test]
    fn a_name_known_only_at_run_time_builds_the_same_command() {
        let name = String::from("get");
        let dynamic = Cmd::named(name.as_str()).arg("k");
        assert_eq!(dynamic.name(), "GET");
        assert_eq!(dynamic.args(), Cmd::new("get").arg("k").args());
    }

    #[test]
    fn cmd_args_are_binary_safe_and_name_first() {
        let c = Cmd::new("set").arg("k").arg(&[0u8, 255, 10][..]).arg(-5i64);
        assert_eq!(c.name(), "SET");
        assert_eq!(&c.args()[2][..], &[0u8, 255, 10]);
        assert_eq!(&c.args()[3][..], b"-5");
        assert!(Cmd::from_parts(vec![]).is_none());
    }

    #[test]
    fn cmd_debug_hides_arguments() {
        let c = Cmd::new("AUTH").arg("user").arg("s3cret");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("AUTH"));
    }

    #[test]
    fn value_accessors() {
        assert!(Value::Nil.is_nil());
        assert_eq!(Value::Bulk(Bytes::from_static(b"42")).as_int(), Some(42));
        assert_eq!(Value::Int(-3).as_int(), Some(-3));
        assert_eq!(Value::Error("ERR x".into()).as_error(), Some("ERR x"));
        assert!(Value::Status("OK".into()).is_ok());
        assert!(!Value::Status("QUEUED".into()).is_ok());
        assert_eq!(Value::Bulk(Bytes::from_static(b"x")).as_int(), None);
    }
}
