//! The [`Transport`] trait: how core reaches a Redis, whatever the wire.
//!
//! A transport runs one command or a pipeline and returns [`Value`]s. Everything else —
//! typed helpers for GET, SET PX NX, MGET, SCAN, EVAL… — is written once here, in
//! [`Commands`], over those two calls.

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::duration_ms;
use crate::error::{Error, Result, TransportError};
use crate::value::{Cmd, IntoArg, Value};

/// `Send` on native targets, nothing on `wasm32` (JavaScript futures are `!Send`).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on `wasm32` (JavaScript futures are `!Send`).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` on native targets, nothing on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` on native targets, nothing on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}

/// Where a key scan stands: which node (for transports that scan several, like a cluster)
/// and the Redis cursor on it. Start with [`ScanCursor::START`]; a scan is finished when
/// [`ScanCursor::is_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanCursor {
    /// The index of the node being scanned (0 for single-node transports).
    pub node: usize,
    /// The Redis `SCAN` cursor on that node.
    pub cursor: u64,
    done: bool,
}

impl ScanCursor {
    /// The cursor that starts a scan.
    pub const START: ScanCursor = ScanCursor {
        node: 0,
        cursor: 0,
        done: false,
    };

    /// A cursor that continues at `cursor` on `node`.
    pub fn at(node: usize, cursor: u64) -> Self {
        ScanCursor {
            node,
            cursor,
            done: false,
        }
    }

    /// The cursor that says the scan is over.
    pub fn done() -> Self {
        ScanCursor {
            node: 0,
            cursor: 0,
            done: true,
        }
    }

    /// True when the scan has visited everything.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// A connection to Redis (or something that speaks its commands).
///
/// Implementations translate: redis-rs for standalone, Cluster and Sentinel
/// (`larder-native`), the Upstash REST dialect over HTTP (`larder-edge`), and an in-memory
/// emulation for tests (`testing::MemTransport`, with the `test-util` feature).
///
/// # Contract
///
/// - A command that the server rejects is `Ok(Value::Error(text))` with the server's text
///   unchanged; `Err` means the transport itself failed (see [`TransportError::kind`]).
/// - [`pipeline`](Transport::pipeline) returns exactly one value per command, in order, and
///   sends them in one round trip where the backend allows.
/// - Multi-key commands (`MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`) may name keys in
///   different cluster slots; a cluster transport splits them and reassembles the reply in
///   key order.
/// - Every call is bounded by the transport's configured timeouts: a down Redis yields an
///   `Err` of kind `Io` or `Timeout`, never an unbounded wait.
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait Transport: MaybeSend + MaybeSync + Debug {
    /// Runs one command.
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError>;

    /// Runs several commands in order, returning one value per command.
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError>;

    /// Returns one page of keys matching `pattern` and the cursor to continue from.
    ///
    /// The default runs `SCAN cursor MATCH pattern COUNT count` on the single node behind
    /// [`exec`](Transport::exec). Transports fronting several masters (Redis Cluster)
    /// override it to walk every master in turn, so a scan sees every key.
    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        if cursor.is_done() {
            return Ok((cursor, Vec::new()));
        }
        let reply = self
            .exec(
                Cmd::new("SCAN")
                    .arg(cursor.cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        let (next, keys) = parse_scan_reply(reply)?;
        let next = if next == 0 {
            ScanCursor::done()
        } else {
            ScanCursor::at(cursor.node, next)
        };
        Ok((next, keys))
    }

    /// Releases connections. Later calls may fail with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    async fn close(&self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Whether [`subscribe`](Transport::subscribe) can work on this transport (no I/O).
    ///
    /// Pub/sub is optional: a transport over a persistent connection (redis-rs) can
    /// subscribe; one over HTTP can where its server streams subscriptions (`larder
    /// gateway`'s `/subscribe`) and its HTTP client streams responses, and not otherwise
    /// (Upstash's REST API, Workers' `fetch`). Callers that only want a faster wake-up
    /// (stampede waiters) fall back to polling when this is false; the tiered cache's
    /// backplane is off.
    fn supports_pubsub(&self) -> bool {
        false
    }

    /// Subscribes to one pub/sub `channel` (`SUBSCRIBE channel`): messages `PUBLISH`ed to
    /// it after this call returns arrive on the [`Subscription`], at most once (see its
    /// "Delivery" section for what a lost connection means). Dropping the subscription
    /// unsubscribes.
    ///
    /// The default answers `Err` of kind [`ErrorKind::Refused`](crate::ErrorKind::Refused):
    /// the transport has no pub/sub.
    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        Err(pubsub_unsupported(channel))
    }

    /// Subscribes to every channel whose name matches the glob `pattern`
    /// (`PSUBSCRIBE pattern`): like [`subscribe`](Transport::subscribe), each [`Message`]
    /// naming the channel it was published to.
    ///
    /// The default answers `Err` of kind [`ErrorKind::Refused`](crate::ErrorKind::Refused).
    async fn psubscribe(&self, pattern: &[u8]) -> Result<BoxSubscription, TransportError> {
        Err(pubsub_unsupported(pattern))
    }
}

/// The error of [`Transport::subscribe`] on a transport without pub/sub.
pub fn pubsub_unsupported(channel: &[u8]) -> TransportError {
    TransportError::new(
        crate::ErrorKind::Refused,
        format!(
            "this transport has no pub/sub, cannot SUBSCRIBE to {:?}; larder falls back to \
             polling (a redis-rs transport, or larder-edge's native client against `larder \
             gateway`, gets push notifications)",
            String::from_utf8_lossy(channel)
        ),
    )
}

/// One pub/sub message: the channel it was published to and its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel.
    pub channel: Bytes,
    /// The payload.
    pub payload: Bytes,
}

impl Message {
    /// A message on `channel` carrying `payload`.
    pub fn new(channel: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Message {
            channel: channel.into(),
            payload: payload.into(),
        }
    }
}

impl Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("channel", &String::from_utf8_lossy(&self.channel))
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// The messages of a [`Transport::subscribe`]: a small stream trait (poll-based, like
/// `futures_core::Stream`, so it works without an async runtime and on `wasm32`).
///
/// # Delivery
///
/// Redis pub/sub is at-most-once: a message published while the subscriber's connection is
/// down is gone. A subscription tells its reader in one of two ways:
///
/// - it **ends** (`Ready(None)` from [`poll_message`](Subscription::poll_message)): the
///   reader subscribes again and treats everything in between as possibly missed; or
/// - it **resumes** by itself (larder-native's transport reconnects and re-subscribes) and
///   counts the gap in [`gaps`](Subscription::gaps), waking the task that last polled it.
///
/// Readers that must not miss an invalidation (the tiered cache's backplane) react to both.
pub trait Subscription: MaybeSend + Debug {
    /// Polls for the next message. `Ready(None)` means the subscription ended (the
    /// connection was lost): messages published since may be lost, subscribe again.
    fn poll_message(&mut self, cx: &mut std::task::Context<'_>)
    -> std::task::Poll<Option<Message>>;

    /// How many times messages may have been lost on this subscription while it stayed
    /// open: its connection was lost and re-established (messages published in between are
    /// gone), or the reader fell so far behind that messages were dropped.
    ///
    /// The count only grows. When it grows, the task that last polled
    /// [`poll_message`](Subscription::poll_message) is woken, so a reader notices by checking
    /// it after each poll. The default is 0: a subscription that ends instead of resuming.
    fn gaps(&self) -> u64 {
        0
    }
}

/// A boxed [`Subscription`], as [`Transport::subscribe`] returns it.
pub type BoxSubscription = Box<dyn Subscription>;

impl<S: Subscription + ?Sized> Subscription for Box<S> {
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        (**self).poll_message(cx)
    }

    fn gaps(&self) -> u64 {
        (**self).gaps()
    }
}

/// Waits for the next message of a subscription (`None`: it ended).
pub async fn next_message<S: Subscription + ?Sized>(sub: &mut S) -> Option<Message> {
    std::future::poll_fn(|cx| sub.poll_message(cx)).await
}

/// A transport shared behind an `Arc`, usable wherever a [`Transport`] is expected.
pub type SharedTransport = std::sync::Arc<dyn Transport>;

/// Parses a `SCAN` reply (`[cursor, [key, …]]`).
pub fn parse_scan_reply(reply: Value) -> Result<(u64, Vec<Bytes>), TransportError> {
    let bad = |what: &str| {
        TransportError::new(
            crate::ErrorKind::Protocol,
            format!("unexpected SCAN reply: {what}"),
        )
    };
    match reply {
        Value::Array(mut parts) if parts.len() == 2 => {
            let keys = parts.pop().expect("len 2");
            let cursor = parts.pop().expect("len 2");
            let cursor = match &cursor {
                Value::Bulk(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok()),
                Value::Status(s) => s.parse().ok(),
                Value::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            }
            .ok_or_else(|| bad("cursor is not a number"))?;
            let keys = match keys {
                Value::Array(items) => items
                    .into_iter()
                    .map(|k| match k {
                        Value::Bulk(b) => Ok(b),
                        Value::Status(s) => Ok(Bytes::from(s)),
                        _ => Err(bad("key is not a string")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Value::Error(e) => return Err(bad(&e)),
                _ => return Err(bad("keys are not an array")),
            };
            Ok((cursor, keys))
        }
        Value::Error(e) => Err(bad(&e)),
        other => Err(bad(&format!("{other:?}"))),
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        (**self).exec(cmd).await
    }
    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        (**self).pipeline(cmds).await
    }
    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        (**self).scan_page(cursor, pattern, count).await
    }
    async fn close(&self) -> Result<(), TransportError> {
        (**self).close().await
    }
    fn supports_pubsub(&self) -> bool {
        (**self).supports_pubsub()
    }
    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        (**self).subscribe(channel).await
    }
    async fn psubscribe(&self, pattern: &[u8]) -> Result<BoxSubscription, TransportError> {
        (**self).psubscribe(pattern).await
    }
}

/// Options of `SET`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Expire after this long (`PX`).
    pub ttl: Option<Duration>,
    /// Only set when the key does not exist (`NX`).
    pub nx: bool,
    /// Only set when the key exists (`XX`).
    pub xx: bool,
}

impl SetOptions {
    /// `SET … PX ttl` when `ttl` is given.
    pub fn ttl(ttl: Option<Duration>) -> Self {
        SetOptions {
            ttl,
            ..Default::default()
        }
    }

    /// Adds `NX`.
    #[must_use]
    pub fn nx(mut self) -> Self {
        self.nx = true;
        self
    }

    /// Builds the `SET` command.
    pub fn command(&self, key: impl IntoArg, value: &Bytes) -> Cmd {
        let mut cmd = Cmd::new("SET").arg(key).arg(value);
        if let Some(ttl) = self.ttl {
            cmd.push_arg(Bytes::from_static(b"PX"))
                .push_arg(duration_ms(ttl).max(1));
        }
        if self.nx {
            cmd.push_arg(Bytes::from_static(b"NX"));
        }
        if self.xx {
            cmd.push_arg(Bytes::from_static(b"XX"));
        }
        cmd
    }
}

/// A Lua script run with `EVALSHA`, falling back to `EVAL` when the server answers
/// `NOSCRIPT` (after a restart or failover the script cache is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    source: &'static str,
    sha1: String,
}

impl Script {
    /// A script and its SHA-1 (computed once).
    pub fn new(source: &'static str) -> Self {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(source.as_bytes());
        Script {
            source,
            sha1: hex(&digest),
        }
    }

    /// The Lua source.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The lowercase hex SHA-1 that `EVALSHA` takes.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }

    /// The `EVALSHA` command for these keys and arguments.
    pub fn evalsha_cmd(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        eval_cmd("EVALSHA", self.sha1.as_bytes(), keys, args)
    }

    /// The `EVAL` command for these keys and arguments.
    pub fn eval_cmd(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        eval_cmd("EVAL", self.source.as_bytes(), keys, args)
    }
}

/// `EVAL`/`EVALSHA` `script numkeys key… arg…`.
fn eval_cmd(name: &'static str, script: &[u8], keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
    Cmd::new(name)
        .arg(script)
        .arg(keys.len())
        .args_from(keys.iter().copied())
        .args_from(args.iter().copied())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Typed Redis commands over any [`Transport`], written once for every backend.
///
/// Server error replies become [`Error::Server`] with the text unchanged.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use larder_core::{Commands, SetOptions, testing::MemTransport};
/// use std::time::Duration;
///
/// let redis = MemTransport::new();
/// redis.set(b"k", &"v".into(), SetOptions::ttl(Some(Duration::from_secs(5)))).await?;
/// assert_eq!(redis.get(b"k").await?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait Commands: Transport {
    /// `PING`.
    async fn ping(&self) -> Result<()> {
        match self.exec(Cmd::new("PING")).await? {
            Value::Error(e) => Err(Error::Server(e)),
            _ => Ok(()),
        }
    }

    /// `GET key`.
    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        bulk_opt("GET", self.exec(Cmd::new("GET").arg(key)).await?)
    }

    /// `SET key value [PX ms] [NX|XX]`. Returns whether the value was written (false when
    /// `NX`/`XX` prevented it).
    async fn set(&self, key: &[u8], value: &Bytes, opts: SetOptions) -> Result<bool> {
        set_reply(self.exec(opts.command(key, value)).await?)
    }

    /// `MGET key…`: one slot per key, `None` for a miss.
    async fn mget(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self
            .exec(Cmd::new("MGET").args_from(keys.iter().copied()))
            .await?;
        mget_reply(reply, keys.len())
    }

    /// `DEL key…`: how many existed.
    async fn del(&self, keys: &[&[u8]]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let reply = self
            .exec(Cmd::new("DEL").args_from(keys.iter().copied()))
            .await?;
        uint("DEL", reply)
    }

    /// `UNLINK key…` (non-blocking delete): how many existed.
    async fn unlink(&self, keys: &[&[u8]]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let reply = self
            .exec(Cmd::new("UNLINK").args_from(keys.iter().copied()))
            .await?;
        uint("UNLINK", reply)
    }

    /// `INCRBY key by`: the new value.
    async fn incrby(&self, key: &[u8], by: i64) -> Result<i64> {
        int(
            "INCRBY",
            self.exec(Cmd::new("INCRBY").arg(key).arg(by)).await?,
        )
    }

    /// `PTTL key`: `-2` missing, `-1` no expiry, else milliseconds left.
    async fn pttl(&self, key: &[u8]) -> Result<i64> {
        int("PTTL", self.exec(Cmd::new("PTTL").arg(key)).await?)
    }

    /// `PEXPIRE key ms`: whether the key existed.
    async fn pexpire(&self, key: &[u8], ttl: Duration) -> Result<bool> {
        let reply = self
            .exec(Cmd::new("PEXPIRE").arg(key).arg(duration_ms(ttl).max(1)))
            .await?;
        Ok(int("PEXPIRE", reply)? == 1)
    }

    /// `EXISTS key…`: how many exist.
    async fn exists(&self, keys: &[&[u8]]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let reply = self
            .exec(Cmd::new("EXISTS").args_from(keys.iter().copied()))
            .await?;
        uint("EXISTS", reply)
    }

    /// One page of `SCAN` (every master on a cluster; see [`Transport::scan_page`]).
    async fn scan(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>)> {
        Ok(self.scan_page(cursor, pattern, count).await?)
    }

    /// `EVAL script numkeys key… arg…`.
    async fn eval(&self, script: &str, keys: &[&[u8]], args: &[&[u8]]) -> Result<Value> {
        server(
            self.exec(eval_cmd("EVAL", script.as_bytes(), keys, args))
                .await?,
        )
    }

    /// `EVALSHA sha numkeys key… arg…`.
    async fn evalsha(&self, sha1: &str, keys: &[&[u8]], args: &[&[u8]]) -> Result<Value> {
        server(
            self.exec(eval_cmd("EVALSHA", sha1.as_bytes(), keys, args))
                .await?,
        )
    }

    /// Runs a [`Script`]: `EVALSHA`, then `EVAL` if the server does not know the script.
    async fn run_script(&self, script: &Script, keys: &[&[u8]], args: &[&[u8]]) -> Result<Value> {
        match self.exec(script.evalsha_cmd(keys, args)).await? {
            Value::Error(e) if e.starts_with("NOSCRIPT") => {
                server(self.exec(script.eval_cmd(keys, args)).await?)
            }
            other => server(other),
        }
    }
}

impl<T: Transport + ?Sized> Commands for T {}

/// Turns an in-band error reply into `Err(Error::Server)`.
pub fn server(v: Value) -> Result<Value> {
    match v {
        Value::Error(e) => Err(Error::Server(e)),
        other => Ok(other),
    }
}

fn unexpected(command: &'static str, v: &Value) -> Error {
    Error::UnexpectedReply {
        command,
        detail: format!("{v:?}"),
    }
}

/// Reads a bulk-or-nil reply.
pub fn bulk_opt(command: &'static str, v: Value) -> Result<Option<Bytes>> {
    match server(v)? {
        Value::Nil => Ok(None),
        Value::Bulk(b) => Ok(Some(b)),
        Value::Status(s) => Ok(Some(Bytes::from(s))),
        other => Err(unexpected(command, &other)),
    }
}

/// Reads an integer reply.
pub fn int(command: &'static str, v: Value) -> Result<i64> {
    let v = server(v)?;
    v.as_int().ok_or_else(|| unexpected(command, &v))
}

fn uint(command: &'static str, v: Value) -> Result<u64> {
    let i = int(command, v)?;
    u64::try_from(i).map_err(|_| Error::UnexpectedReply {
        command,
        detail: format!("negative count {i}"),
    })
}

/// Reads the reply of `SET`: `OK` when written, nil when `NX`/`XX` prevented it.
pub fn set_reply(v: Value) -> Result<bool> {
    match server(v)? {
        Value::Nil => Ok(false),
        v if v.is_ok() => Ok(true),
        other => Err(unexpected("SET", &other)),
    }
}

/// Reads the reply of `MGET` for `n` keys.
pub fn mget_reply(v: Value, n: usize) -> Result<Vec<Option<Bytes>>> {
    match server(v)? {
        Value::Array(items) if items.len() == n => items
            .into_iter()
            .map(|item| bulk_opt("MGET", item))
            .collect(),
        other => Err(unexpected("MGET", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_options_build_px_nx() {
        let cmd = SetOptions::ttl(Some(Duration::from_millis(1500)))
            .nx()
            .command(b"k", &Bytes::from_static(b"v"));
        let args: Vec<&[u8]> = cmd.args().iter().map(|b| &b[..]).collect();
        assert_eq!(args, vec![&b"SET"[..], b"k", b"v", b"PX", b"1500", b"NX"]);
    }

    #[test]
    fn script_sha1_matches_redis() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this digest.
        assert_eq!(
            Script::new("return 1").sha1(),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn parse_scan_reply_reads_cursor_and_keys() {
        let reply = Value::Array(vec![
            Value::Bulk(Bytes::from_static(b"17")),
            Value::Array(vec![Value::Bulk(Bytes::from_static(b"a"))]),
        ]);
        let (c, keys) = parse_scan_reply(reply).unwrap();
        assert_eq!(c, 17);
        assert_eq!(keys, vec![Bytes::from_static(b"a")]);
        assert!(parse_scan_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn typed_reply_errors() {
        assert_eq!(
            set_reply(Value::Error("WRONGTYPE x".into())),
            Err(Error::Server("WRONGTYPE x".into()))
        );
        assert!(mget_reply(Value::Array(vec![Value::Nil]), 2).is_err());
        assert_eq!(
            mget_reply(Value::Array(vec![Value::Nil, Value::Bulk(Bytes::new())]), 2).unwrap(),
            vec![None, Some(Bytes::new())]
        );
    }
}
