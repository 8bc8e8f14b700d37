//! Test helpers: [`MemTransport`], an in-memory Redis for fast, deterministic unit tests.
//!
//! Compiled for this crate's own tests and, for other crates, behind the `test-util` feature:
//!
//! ```toml
//! [dev-dependencies]
//! larder-core = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! [`MemTransport`] is the miniredis of larder: it implements [`Transport`] by emulating the
//! Redis 7 commands larder and its tests use (strings with expiry, small hashes and sets,
//! `SCAN`, `EVAL`/`EVALSHA` through registered script emulations, `PUBLISH`) with the exact
//! RESP2 reply shapes and error texts of Redis. Time comes from an injected [`Clock`](crate::Clock), so
//! expiry is tested by advancing a [`ManualClock`] instead of sleeping. Failure paths are
//! tested with fault injection ([`MemTransport::fail_next`], [`MemTransport::set_down`],
//! [`MemTransport::set_latency`]) and round trips counted with [`MemTransport::calls`],
//! [`MemTransport::commands`] and [`MemTransport::command_log`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::clock::{ManualClock, SharedClock};
use crate::error::{ErrorKind, TransportError};
use crate::transport::Transport;
use crate::value::{Cmd, Value};

mod commands;
mod pubsub;
mod script;

pub use script::ScriptCtx;

#[cfg(test)]
mod tests;

/// The time a [`MemTransport::new`] clock starts at: 2023-11-14T22:13:20Z, in unix ms.
pub const DEFAULT_START_MS: u64 = 1_700_000_000_000;

/// An emulated Lua script: called with the script context, `KEYS` and `ARGV`; returns the
/// script's reply (return [`Value::Error`] to raise an error, like `redis.error_reply`).
pub type ScriptHandler = Arc<dyn Fn(&mut ScriptCtx<'_>, &[Bytes], &[Bytes]) -> Value + Send + Sync>;

/// An in-memory Redis emulation implementing [`Transport`] with Redis 7 semantics.
///
/// - Keys and values are binary-safe [`Bytes`]; a key holds a string, a hash or a set.
/// - Expiry is absolute unix ms against the injected clock, checked lazily on access: a key
///   whose expiry time is at or before "now" is gone.
/// - Commands are case-insensitive and answer exactly like Redis 7 over RESP2: replies,
///   `WRONGTYPE`, arity, syntax, integer and expire-time errors, unknown commands.
///   Supported: `PING ECHO TIME SELECT GET SET SETNX SETEX PSETEX GETDEL GETEX GETSET MGET
///   MSET MSETNX DEL UNLINK EXISTS INCR DECR INCRBY DECRBY INCRBYFLOAT APPEND STRLEN TTL PTTL
///   EXPIRE PEXPIRE EXPIREAT PEXPIREAT EXPIRETIME PEXPIRETIME PERSIST TYPE KEYS SCAN DBSIZE
///   FLUSHDB FLUSHALL PUBLISH HSET HMSET HGET HMGET HDEL HGETALL HKEYS HVALS HLEN HEXISTS
///   HINCRBY SADD SREM SMEMBERS SISMEMBER SCARD EVAL EVALSHA SCRIPT LOAD|EXISTS|FLUSH`.
/// - `SCAN` cursors walk the keys in sorted order and remember the last key returned, so a
///   key present for a whole scan is returned at least once whatever is added or removed
///   between pages. `COUNT` bounds the keys examined per page (matching or not), like Redis.
/// - There is no Lua: `EVAL`/`EVALSHA` run handlers registered with
///   [`register_script`](MemTransport::register_script) for a script's source. The script
///   cache behaves like Redis's: it starts empty, so the first `EVALSHA` answers `NOSCRIPT`
///   until an `EVAL` or `SCRIPT LOAD` of the source.
/// - [`pipeline`](Transport::pipeline) runs its commands in order under one lock (atomic with
///   respect to other callers), errors in band per command.
/// - `Clone` shares the data, the clock, the counters and the faults.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use larder_core::{Commands, SetOptions, testing::MemTransport};
/// use std::time::Duration;
///
/// let redis = MemTransport::new();
/// let ttl = SetOptions::ttl(Some(Duration::from_secs(10)));
/// redis.set(b"k", &"v".into(), ttl).await?;
/// redis.clock().advance(Duration::from_secs(10));
/// assert_eq!(redis.get(b"k").await?, None);
/// assert_eq!(redis.calls(), 2);
/// assert_eq!(redis.command_log(), ["SET", "GET"]);
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemTransport {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    manual: Option<ManualClock>,
    state: Mutex<State>,
    faults: Mutex<Faults>,
    calls: AtomicU64,
    closed: AtomicBool,
}

/// Everything the commands see; one lock so pipelines and scripts are atomic.
#[derive(Default)]
struct State {
    db: commands::Db,
    /// SHA-1s Redis would have in its script cache (after `EVAL` / `SCRIPT LOAD`).
    script_cache: HashSet<String>,
    /// Emulations by SHA-1 of the source.
    handlers: HashMap<String, ScriptHandler>,
    subscribers: Vec<Weak<SubShared>>,
    published: Vec<(Bytes, Bytes)>,
    commands: u64,
    log: Vec<String>,
}

#[derive(Debug)]
struct Faults {
    down: bool,
    fail_next: usize,
    fail_kind: ErrorKind,
    latency: Duration,
}

impl Default for MemTransport {
    fn default() -> Self {
        MemTransport::new()
    }
}

impl MemTransport {
    /// An empty Redis with its own [`ManualClock`] starting at [`DEFAULT_START_MS`]; get it
    /// with [`clock`](MemTransport::clock) to move time.
    pub fn new() -> Self {
        MemTransport::with_manual_clock(ManualClock::new(DEFAULT_START_MS))
    }

    /// An empty Redis on a manual clock the caller also holds (clones share one time).
    pub fn with_manual_clock(clock: ManualClock) -> Self {
        MemTransport::build(Arc::new(clock.clone()), Some(clock))
    }

    /// An empty Redis on any clock (for example the one a cache under test uses).
    ///
    /// [`clock`](MemTransport::clock) is not available on such a transport: keep your own
    /// handle to move time.
    pub fn with_clock(clock: SharedClock) -> Self {
        MemTransport::build(clock, None)
    }

    fn build(clock: SharedClock, manual: Option<ManualClock>) -> Self {
        let t = MemTransport {
            inner: Arc::new(Inner {
                clock,
                manual,
                state: Mutex::new(State::default()),
                faults: Mutex::new(Faults {
                    down: false,
                    fail_next: 0,
                    fail_kind: ErrorKind::Io,
                    latency: Duration::ZERO,
                }),
                calls: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
        };
        // larder's own Lua scripts (the stampede lease) are emulated out of the box.
        crate::compute::emulate_scripts(&t);
        t
    }

    /// The manual clock this transport reads (shared: advancing it expires keys).
    ///
    /// # Panics
    ///
    /// When the transport was built with [`with_clock`](MemTransport::with_clock), whose
    /// clock is not a [`ManualClock`] this transport knows of.
    pub fn clock(&self) -> ManualClock {
        self.inner.manual.clone().expect(
            "MemTransport::clock: this transport was built with_clock(..); \
             advance the clock you passed in (or use MemTransport::with_manual_clock)",
        )
    }

    /// The clock this transport reads, whatever it is.
    pub fn shared_clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// Registers an emulation of the Lua script `source`, keyed by its SHA-1 (the digest
    /// [`Script::sha1`](crate::Script::sha1) computes), and returns that SHA-1.
    ///
    /// Registering does not load the script into the emulated script cache, just as
    /// compiling a script in a client does not: the first `EVALSHA` answers `NOSCRIPT`, the
    /// `EVAL` fallback of [`Commands::run_script`](crate::Commands::run_script) loads it.
    /// An `EVAL` of a source with no registered emulation answers
    /// `ERR larder MemTransport: script not emulated; …`.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use larder_core::{Commands, Script, Value, testing::MemTransport};
    ///
    /// const DEL_IF_EQ: &str =
    ///     "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
    /// let redis = MemTransport::new();
    /// redis.register_script(DEL_IF_EQ, |ctx, keys, args| {
    ///     if ctx.get(&keys[0]).as_ref() == Some(&args[0]) {
    ///         Value::Int(i64::from(ctx.del(&keys[0])))
    ///     } else {
    ///         Value::Int(0)
    ///     }
    /// });
    /// redis.set(b"lock", &"token".into(), Default::default()).await?;
    /// let script = Script::new(DEL_IF_EQ);
    /// assert_eq!(redis.run_script(&script, &[b"lock"], &[b"other"]).await?, Value::Int(0));
    /// assert_eq!(redis.run_script(&script, &[b"lock"], &[b"token"]).await?, Value::Int(1));
    /// # Ok::<(), larder_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn register_script<F>(&self, source: &str, handler: F) -> String
    where
        F: Fn(&mut ScriptCtx<'_>, &[Bytes], &[Bytes]) -> Value + Send + Sync + 'static,
    {
        let sha = script::sha1_hex(source.as_bytes());
        self.inner
            .state
            .lock()
            .handlers
            .insert(sha.clone(), Arc::new(handler));
        sha
    }

    /// Makes the next `n` calls ([`exec`](Transport::exec) or
    /// [`pipeline`](Transport::pipeline)) fail with `Err` of `kind`, without running
    /// anything. Replaces any previous `fail_next`.
    pub fn fail_next(&self, n: usize, kind: ErrorKind) {
        let mut f = self.inner.faults.lock();
        f.fail_next = n;
        f.fail_kind = kind;
    }

    /// While down, every call fails with `Err` of kind [`ErrorKind::Io`] (connection
    /// refused) and runs nothing; the data is kept for when it comes back up.
    pub fn set_down(&self, down: bool) {
        self.inner.faults.lock().down = down;
    }

    /// Makes every call first sleep `latency` on the injected clock (a [`ManualClock`]
    /// advances by it). `Duration::ZERO` turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.faults.lock().latency = latency;
    }

    /// How many times [`exec`](Transport::exec) or [`pipeline`](Transport::pipeline) were
    /// called (round trips), including calls that failed by fault injection or after close.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// How many commands ran (a pipeline of three counts three; commands a script runs
    /// through [`ScriptCtx::call`] do not count).
    pub fn commands(&self) -> u64 {
        self.inner.state.lock().commands
    }

    /// The upper-cased names of the commands run, in order (for example
    /// `["EVALSHA", "EVAL"]`).
    pub fn command_log(&self) -> Vec<String> {
        self.inner.state.lock().log.clone()
    }

    /// Resets [`calls`](MemTransport::calls), [`commands`](MemTransport::commands),
    /// [`command_log`](MemTransport::command_log) and [`published`](MemTransport::published).
    pub fn reset_counters(&self) {
        self.inner.calls.store(0, Ordering::SeqCst);
        let mut st = self.inner.state.lock();
        st.commands = 0;
        st.log.clear();
        st.published.clear();
    }

    /// Every `PUBLISH` so far, as `(channel, message)`.
    pub fn published(&self) -> Vec<(Bytes, Bytes)> {
        self.inner.state.lock().published.clone()
    }

    /// Subscribes to `channel`: later `PUBLISH`es to it are queued on the subscription and
    /// counted in `PUBLISH`'s reply while the subscription lives.
    pub fn subscribe(&self, channel: &[u8]) -> MemSubscription {
        self.subscribe_as(channel, false)
    }

    /// Subscribes to every channel matching the glob `pattern` (as `PSUBSCRIBE`).
    pub fn psubscribe(&self, pattern: &[u8]) -> MemSubscription {
        self.subscribe_as(pattern, true)
    }

    fn subscribe_as(&self, name: &[u8], pattern: bool) -> MemSubscription {
        let shared = Arc::new(SubShared {
            channel: Bytes::copy_from_slice(name),
            pattern,
            queue: Mutex::new(SubQueue::default()),
        });
        self.inner
            .state
            .lock()
            .subscribers
            .push(Arc::downgrade(&shared));
        MemSubscription { shared }
    }

    /// True after [`close`](Transport::close).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The live keys, sorted (expired keys are dropped first). A direct look, not a
    /// command: it is not counted.
    pub fn keys(&self) -> Vec<Bytes> {
        let now = self.inner.clock.now_ms();
        self.inner.state.lock().db.live_keys(now)
    }

    /// Counts the call, then applies close, latency and injected faults.
    async fn before_call(&self) -> Result<(), TransportError> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        if self.is_closed() {
            return Err(closed());
        }
        let latency = self.inner.faults.lock().latency;
        if !latency.is_zero() {
            self.inner.clock.sleep(latency).await;
        }
        let mut f = self.inner.faults.lock();
        if f.down {
            return Err(TransportError::new(
                ErrorKind::Io,
                "connection refused: MemTransport is down (set_down(true))",
            ));
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return Err(TransportError::new(
                f.fail_kind,
                format!("injected {} failure (MemTransport::fail_next)", f.fail_kind),
            ));
        }
        drop(f);
        // Closed while sleeping.
        if self.is_closed() {
            return Err(closed());
        }
        Ok(())
    }

    fn run_locked(&self, cmds: &[Cmd]) -> Vec<Value> {
        let now = self.inner.clock.now_ms();
        let mut st = self.inner.state.lock();
        cmds.iter()
            .map(|cmd| {
                st.commands += 1;
                st.log.push(cmd.name());
                commands::run(&mut st, now, cmd.args(), false)
            })
            .collect()
    }
}

fn closed() -> TransportError {
    TransportError::new(ErrorKind::Closed, "MemTransport was closed")
}

impl fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemTransport");
        // try_lock: Debug may be called while a script handler holds the lock.
        match self.inner.state.try_lock() {
            Some(st) => d
                .field("keys", &st.db.len())
                .field("commands", &st.commands),
            None => d.field("keys", &"<locked>"),
        };
        d.field("calls", &self.calls())
            .field("closed", &self.is_closed())
            .field("faults", &*self.inner.faults.lock())
            .field("clock", &self.inner.clock)
            .finish()
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl Transport for MemTransport {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.before_call().await?;
        let mut out = self.run_locked(std::slice::from_ref(&cmd));
        Ok(out.pop().expect("one reply per command"))
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.before_call().await?;
        Ok(self.run_locked(&cmds))
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn supports_pubsub(&self) -> bool {
        true
    }

    /// Subscribes like [`MemTransport::subscribe`], as one call (counted, subject to faults).
    async fn subscribe(
        &self,
        channel: &[u8],
    ) -> Result<crate::transport::BoxSubscription, TransportError> {
        self.before_call().await?;
        Ok(Box::new(MemTransport::subscribe(self, channel)))
    }

    /// Subscribes like [`MemTransport::psubscribe`], as one call (counted, subject to faults).
    async fn psubscribe(
        &self,
        pattern: &[u8],
    ) -> Result<crate::transport::BoxSubscription, TransportError> {
        self.before_call().await?;
        Ok(Box::new(MemTransport::psubscribe(self, pattern)))
    }
}

impl State {
    /// `PUBLISH`: queues on live subscriptions of the channel, returns how many.
    fn publish(&mut self, channel: &Bytes, message: &Bytes) -> i64 {
        self.published.push((channel.clone(), message.clone()));
        let mut receivers = 0;
        self.subscribers.retain(|weak| {
            let Some(sub) = weak.upgrade() else {
                return false;
            };
            let hit = if sub.pattern {
                crate::cache::glob_match(&sub.channel, channel)
            } else {
                sub.channel == *channel
            };
            if hit {
                let mut q = sub.queue.lock();
                q.messages.push_back((channel.clone(), message.clone()));
                if let Some(w) = q.waker.take() {
                    w.wake();
                }
                receivers += 1;
            }
            true
        });
        receivers
    }
}

struct SubShared {
    /// The channel, or the pattern when `pattern`.
    channel: Bytes,
    pattern: bool,
    queue: Mutex<SubQueue>,
}

#[derive(Default)]
struct SubQueue {
    /// `(channel, payload)`, oldest first.
    messages: VecDeque<(Bytes, Bytes)>,
    waker: Option<Waker>,
}

/// A subscription to one channel of a [`MemTransport`] (see
/// [`MemTransport::subscribe`]). Dropping it unsubscribes.
pub struct MemSubscription {
    shared: Arc<SubShared>,
}

impl MemSubscription {
    /// The channel (or pattern) subscribed to.
    pub fn channel(&self) -> &Bytes {
        &self.shared.channel
    }

    /// The oldest message not yet received, if any.
    pub fn try_recv(&self) -> Option<Bytes> {
        self.shared
            .queue
            .lock()
            .messages
            .pop_front()
            .map(|(_, m)| m)
    }

    /// Waits for the next message. Never completes if nothing is published.
    pub async fn recv(&self) -> Bytes {
        std::future::poll_fn(|cx| {
            let mut q = self.shared.queue.lock();
            match q.messages.pop_front() {
                Some((_, m)) => Poll::Ready(m),
                None => {
                    q.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl fmt::Debug for MemSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSubscription")
            .field("channel", &String::from_utf8_lossy(&self.shared.channel))
            .field("pending", &self.shared.queue.lock().messages.len())
            .finish()
    }
}
