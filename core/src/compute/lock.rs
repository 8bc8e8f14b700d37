//! The distributed lease: [`LockBackend`] and [`RedisLock`], its Redis implementation
//! (`SET lock token NX PX ttl`, compare-and-delete and compare-and-pexpire Lua scripts,
//! release notifications on pub/sub).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::util::{Either, select, yield_now};
use crate::clock::{Clock, SharedClock, duration_ms};
use crate::error::{Error, Result};
use crate::keys::KeyScheme;
use crate::redis::RedisCache;
use crate::runtime::{BoxFuture, SharedRuntime};
use crate::transport::{
    BoxSubscription, Commands, MaybeSend, MaybeSync, Script, SetOptions, SharedTransport, Transport,
};
#[cfg(any(test, feature = "test-util"))]
use crate::value::Cmd;
use crate::value::Value;

/// Deletes the lock only if it still holds our token, then publishes the key on the release
/// channel (`ARGV[2]`, skipped when empty). Never a plain `DEL`: a holder whose lease
/// expired must not delete the next holder's lock.
pub(crate) const RELEASE_SRC: &str = "\
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if ARGV[2] ~= '' then redis.call('publish', ARGV[2], ARGV[3]) end
  return 1
end
return 0";

/// Extends the lock's expiry only if it still holds our token.
pub(crate) const EXTEND_SRC: &str = "\
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0";

static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_SRC));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_SRC));

/// A distributed lock with expiry (a lease), keyed like the cache.
///
/// [`ComputeCache`](super::ComputeCache) takes one to make a computation run once across
/// processes. [`RedisLock`] is the implementation over any [`Transport`]; implement this
/// trait to lease elsewhere.
///
/// Tokens are random strings chosen by the caller; `extend` and `release` must act only
/// when the lock still holds the caller's token.
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait LockBackend: MaybeSend + MaybeSync + fmt::Debug {
    /// Takes the lock for `key` with `token` for `ttl` if nobody holds it. Returns whether
    /// it was taken.
    async fn try_acquire(&self, key: &str, token: &str, ttl: Duration) -> Result<bool>;

    /// Pushes the expiry to `ttl` from now if the lock still holds `token`. Returns whether
    /// it did (false: the lease was lost).
    async fn extend(&self, key: &str, token: &str, ttl: Duration) -> Result<bool>;

    /// Deletes the lock if it still holds `token`, and tells waiters. Returns whether it
    /// did.
    async fn release(&self, key: &str, token: &str) -> Result<bool>;

    /// Registers interest in the release of `key`'s lock. Register before checking the
    /// lock, then [`Listener::wait`]: a release in between is not missed. The default
    /// only sleeps (polling).
    fn listen(&self, key: &str) -> Listener {
        let _ = key;
        Listener::polling()
    }
}

/// Waits for a lock release notification, or for a timeout (see [`LockBackend::listen`]).
pub struct Listener {
    reg: Option<(Arc<Notifier>, u64)>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("notified_by_pubsub", &self.reg.is_some())
            .finish()
    }
}

impl Listener {
    /// A listener that is never notified: [`wait`](Listener::wait) just sleeps.
    pub fn polling() -> Self {
        Listener { reg: None }
    }

    /// Whether a release can wake this listener before its timeout.
    pub fn is_notified(&self) -> bool {
        self.reg.is_some()
    }

    /// Whether the subscription that wakes this listener is in place now (a release will
    /// wake it, short of a lost message).
    pub(crate) fn is_subscribed(&self) -> bool {
        self.reg
            .as_ref()
            .is_some_and(|(notifier, _)| notifier.state.lock().sub.is_some())
    }

    /// Waits until the lock is released (if this listener can know) or `timeout` passes on
    /// `clock`.
    pub async fn wait(&mut self, clock: &dyn Clock, timeout: Duration) {
        let Some((notifier, id)) = &self.reg else {
            clock.sleep(timeout).await;
            return;
        };
        // Subscribing is part of the shared state, polled by whichever waiter drives it: a
        // slow subscription (a thousand waiters subscribing over HTTP at once) never makes a
        // waiter look later than its nap, and outlives the nap of the waiter that started it.
        notifier.start_subscribing();
        let mut released = std::future::poll_fn(|cx| notifier.poll_reg(*id, cx));
        let mut timer = Box::pin(clock.sleep(timeout));
        let _ = select(&mut released, &mut timer).await;
        notifier.resign_driver(*id);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((notifier, id)) = self.reg.take() {
            notifier.unregister(id);
        }
    }
}

/// One shared subscription to a release channel, driven by whichever waiter polls it (no
/// background task needed), dispatching released keys to registered listeners. It lives
/// while someone waits: the last listener to leave unsubscribes.
pub(crate) struct Notifier {
    transport: SharedTransport,
    channel: Bytes,
    clock: SharedClock,
    state: Mutex<NState>,
}

#[derive(Default)]
struct NState {
    sub: Option<BoxSubscription>,
    /// [`Subscription::gaps`](crate::transport::Subscription::gaps) of `sub` when last seen.
    gaps: u64,
    /// The subscription being made, polled by the driving waiter.
    subscribing: Option<BoxFuture<'static, Result<BoxSubscription, crate::TransportError>>>,
    retry_at_ms: u64,
    regs: HashMap<u64, Reg>,
    /// The registration whose task the subscription will wake.
    driver: Option<u64>,
    next_id: u64,
}

struct Reg {
    key: Bytes,
    notified: bool,
    waker: Option<Waker>,
}

/// How long to wait before subscribing again after a failure.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

impl Notifier {
    pub(crate) fn new(transport: SharedTransport, channel: String, clock: SharedClock) -> Self {
        Notifier {
            transport,
            channel: Bytes::from(channel),
            clock,
            state: Mutex::new(NState::default()),
        }
    }

    fn register(self: &Arc<Self>, key: &str) -> Listener {
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.regs.insert(
            id,
            Reg {
                key: Bytes::copy_from_slice(key.as_bytes()),
                notified: false,
                waker: None,
            },
        );
        Listener {
            reg: Some((self.clone(), id)),
        }
    }

    fn unregister(&self, id: u64) {
        let (wake, idle_sub) = {
            let mut st = self.state.lock();
            st.regs.remove(&id);
            let wake = Self::hand_over(&mut st, id);
            // Nobody waits: unsubscribe, so that releases published meanwhile do not pile
            // up undrained. The next wait subscribes again.
            let idle_sub = if st.regs.is_empty() {
                st.driver = None;
                (st.sub.take(), st.subscribing.take())
            } else {
                (None, None)
            };
            (wake, idle_sub)
        };
        drop(idle_sub);
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// After `id` stops waiting: if it drove the subscription, wake another waiter to drive.
    fn resign_driver(&self, id: u64) {
        let wake = {
            let mut st = self.state.lock();
            if let Some(reg) = st.regs.get_mut(&id) {
                reg.waker = None;
            }
            Self::hand_over(&mut st, id)
        };
        if let Some(w) = wake {
            w.wake();
        }
    }

    fn hand_over(st: &mut NState, id: u64) -> Option<Waker> {
        if st.driver != Some(id) {
            return None;
        }
        st.driver = None;
        st.regs.values_mut().find_map(|r| r.waker.take())
    }

    /// Starts subscribing unless subscribed, subscribing, or waiting to retry a failure.
    fn start_subscribing(&self) {
        let mut st = self.state.lock();
        if st.sub.is_some() || st.subscribing.is_some() || self.clock.now_ms() < st.retry_at_ms {
            return;
        }
        let (transport, channel) = (self.transport.clone(), self.channel.clone());
        st.subscribing = Some(Box::pin(async move { transport.subscribe(&channel).await }));
    }

    fn poll_reg(&self, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut wake = Vec::new();
        let ready = self.poll_reg_locked(id, cx, &mut wake);
        for w in wake {
            w.wake();
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn poll_reg_locked(&self, id: u64, cx: &mut Context<'_>, wake: &mut Vec<Waker>) -> bool {
        let mut st = self.state.lock();
        let st = &mut *st;
        if let Some(pending) = st.subscribing.as_mut() {
            match pending.as_mut().poll(cx) {
                Poll::Ready(Ok(sub)) => {
                    st.subscribing = None;
                    st.gaps = sub.gaps();
                    st.sub = Some(sub);
                }
                Poll::Ready(Err(_)) => {
                    st.subscribing = None;
                    st.retry_at_ms = self.clock.now_ms() + duration_ms(RESUBSCRIBE_AFTER);
                }
                Poll::Pending => st.driver = Some(id),
            }
        }
        if let Some(sub) = st.sub.as_mut() {
            loop {
                match sub.poll_message(cx) {
                    Poll::Ready(Some(msg)) => {
                        for reg in st.regs.values_mut() {
                            if reg.key == msg.payload {
                                reg.notified = true;
                                wake.extend(reg.waker.take());
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        st.sub = None;
                        st.driver = None;
                        break;
                    }
                    Poll::Pending => {
                        st.driver = Some(id);
                        // The subscription resumed after a gap: a release may have been
                        // missed, so every waiter looks at the lock now rather than at the
                        // end of its nap.
                        let gaps = sub.gaps();
                        if gaps != st.gaps {
                            st.gaps = gaps;
                            for reg in st.regs.values_mut() {
                                reg.notified = true;
                                wake.extend(reg.waker.take());
                            }
                        }
                        break;
                    }
                }
            }
        }
        match st.regs.get_mut(&id) {
            Some(reg) if reg.notified => {
                reg.notified = false;
                true
            }
            Some(reg) => {
                reg.waker = Some(cx.waker().clone());
                false
            }
            None => true,
        }
    }
}

/// The lease over Redis (any [`Transport`]): `SET {prefix}:lock:{key} token NX PX ttl` to
/// take it, compare-and-pexpire and compare-and-delete Lua scripts (`EVALSHA`, falling back to
/// `EVAL`) to extend and release it, and a `PUBLISH` of the key on `{prefix}:events:lock`
/// when it is released, which wakes waiters on transports with pub/sub.
///
/// Cheap to clone.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use std::time::Duration;
/// use larder_core::compute::{LockBackend, RedisLock};
/// use larder_core::{RedisCache, testing::MemTransport};
///
/// let redis = MemTransport::new();
/// let cache = RedisCache::builder(redis.clone()).prefix("app").build().unwrap();
/// let lock = RedisLock::for_cache(&cache).clock(redis.clock());
/// let ttl = Duration::from_secs(10);
/// assert!(lock.try_acquire("k", "token-a", ttl).await?);
/// assert!(!lock.try_acquire("k", "token-b", ttl).await?);
/// assert!(!lock.release("k", "token-b").await?, "only the holder releases");
/// assert!(lock.release("k", "token-a").await?);
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
pub struct RedisLock<T> {
    inner: Arc<LockInner<T>>,
}

struct LockInner<T> {
    transport: T,
    keys: KeyScheme,
    channel: String,
    publish: bool,
    notifier: Option<Arc<Notifier>>,
}

impl<T> Clone for RedisLock<T> {
    fn clone(&self) -> Self {
        RedisLock {
            inner: self.inner.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for RedisLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("transport", &self.inner.transport)
            .field("prefix", &self.inner.keys.prefix())
            .field("channel", &self.inner.channel)
            .field("pubsub", &self.inner.notifier.is_some())
            .finish()
    }
}

/// The pub/sub channel `name` under `keys`' prefix: `{prefix}:events:{name}`.
pub(crate) fn event_channel(keys: &KeyScheme, name: &str) -> String {
    if keys.prefix().is_empty() {
        format!("events:{name}")
    } else {
        format!("{}:events:{name}", keys.prefix())
    }
}

impl<T: Transport + Clone + 'static> RedisLock<T> {
    /// A lease under `keys` over `transport`. Waiters are woken by pub/sub when the
    /// transport [supports it](Transport::supports_pubsub).
    pub fn new(transport: T, keys: KeyScheme) -> Self {
        Self::with_clock(transport, keys, crate::clock::system())
    }

    /// The clock that paces re-subscribing after a lost subscription (default:
    /// [`SystemClock`](crate::SystemClock)).
    #[must_use]
    pub fn clock(self, clock: impl crate::Clock + 'static) -> Self {
        let mut lock = Self::with_clock(
            self.inner.transport.clone(),
            self.inner.keys.clone(),
            Arc::new(clock),
        );
        lock = lock.publish_releases(self.inner.publish);
        lock
    }

    fn with_clock(transport: T, keys: KeyScheme, clock: SharedClock) -> Self {
        let channel = event_channel(&keys, "lock");
        let notifier = transport.supports_pubsub().then(|| {
            Arc::new(Notifier::new(
                Arc::new(transport.clone()),
                channel.clone(),
                clock,
            ))
        });
        RedisLock {
            inner: Arc::new(LockInner {
                transport,
                keys,
                channel,
                publish: true,
                notifier,
            }),
        }
    }

    /// The lease of a [`RedisCache`]: its transport and key prefix.
    pub fn for_cache(cache: &RedisCache<T>) -> Self {
        RedisLock::new(cache.transport().clone(), cache.key_scheme().clone())
    }

    /// Whether releases `PUBLISH` the key (default true; waiters in other processes are
    /// woken by it). Turning it off saves nothing on a transport without subscribers but the
    /// publish itself, which runs inside the release script.
    #[must_use]
    pub fn publish_releases(mut self, publish: bool) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.publish = publish;
        }
        self
    }

    /// The channel releases are published on: `{prefix}:events:lock`.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The lock key of `key`: `{prefix}:lock:{key}`.
    pub fn lock_key(&self, key: &str) -> String {
        self.inner.keys.lock_key(key)
    }
}

fn script_int(v: Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => other.as_int().ok_or_else(|| Error::UnexpectedReply {
            command: "EVALSHA",
            detail: format!("{other:?}"),
        }),
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<T: Transport + Clone + 'static> LockBackend for RedisLock<T> {
    async fn try_acquire(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let lock = self.inner.keys.lock_key(key);
        self.inner
            .transport
            .set(
                lock.as_bytes(),
                &Bytes::copy_from_slice(token.as_bytes()),
                SetOptions::ttl(Some(ttl)).nx(),
            )
            .await
    }

    async fn extend(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let lock = self.inner.keys.lock_key(key);
        let ms = duration_ms(ttl).max(1).to_string();
        let v = self
            .inner
            .transport
            .run_script(
                &EXTEND,
                &[lock.as_bytes()],
                &[token.as_bytes(), ms.as_bytes()],
            )
            .await?;
        Ok(script_int(v)? == 1)
    }

    async fn release(&self, key: &str, token: &str) -> Result<bool> {
        let lock = self.inner.keys.lock_key(key);
        let channel = if self.inner.publish {
            self.inner.channel.as_str()
        } else {
            ""
        };
        let v = self
            .inner
            .transport
            .run_script(
                &RELEASE,
                &[lock.as_bytes()],
                &[token.as_bytes(), channel.as_bytes(), key.as_bytes()],
            )
            .await?;
        Ok(script_int(v)? == 1)
    }

    fn listen(&self, key: &str) -> Listener {
        match &self.inner.notifier {
            Some(n) => n.register(key),
            None => Listener::polling(),
        }
    }
}

/// A lease this process holds: released explicitly, or — when dropped unreleased (its
/// holder was cancelled and nobody took it over) — released in the background if there is a
/// runtime, else left to expire.
pub(crate) struct HeldLease {
    lock: Arc<dyn LockBackend>,
    key: String,
    token: String,
    runtime: Option<SharedRuntime>,
    released: AtomicBool,
    lost: AtomicBool,
}

impl fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLease")
            .field("key", &self.key)
            .field("released", &self.released.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl HeldLease {
    pub(crate) fn new(
        lock: Arc<dyn LockBackend>,
        key: &str,
        token: String,
        runtime: Option<SharedRuntime>,
    ) -> Self {
        HeldLease {
            lock,
            key: key.to_owned(),
            token,
            runtime,
            released: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        }
    }

    /// Releases the lease (once) and notifies waiters.
    /// The lease's token (the lock key's value while it is held).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) async fn release(&self) -> Result<bool> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        self.lock.release(&self.key, &self.token).await
    }

    /// Extends the lease every `ttl / 3` until dropped; stops if the lease is lost.
    pub(crate) async fn keep_alive(&self, clock: &dyn Clock, ttl: Duration) {
        let every = (ttl / 3).max(Duration::from_millis(1));
        loop {
            clock.sleep(every).await;
            match self.lock.extend(&self.key, &self.token, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    self.lost.store(true, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                }
                Err(_) => {} // transient: try again next period
            }
            yield_now().await;
        }
    }

    /// True once an extension found the lease gone (expired and maybe taken by another).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if self.released.load(Ordering::Acquire) {
            return;
        }
        if let Some(rt) = &self.runtime {
            let lock = self.lock.clone();
            let key = std::mem::take(&mut self.key);
            let token = std::mem::take(&mut self.token);
            rt.spawn(Box::pin(async move {
                let _ = lock.release(&key, &token).await;
            }));
        }
    }
}

/// Runs `work` while keeping `lease` alive; returns `work`'s output.
pub(crate) async fn with_keep_alive<F: std::future::Future>(
    work: F,
    lease: Option<&HeldLease>,
    clock: &dyn Clock,
    ttl: Duration,
) -> F::Output {
    let Some(lease) = lease else {
        return work.await;
    };
    let mut work = std::pin::pin!(work);
    let mut alive = Box::pin(lease.keep_alive(clock, ttl));
    match select(&mut work, &mut alive).await {
        Either::Left((v, _)) => v,
        Either::Right(((), _)) => unreachable!("keep_alive never finishes"),
    }
}

/// Registers the lease scripts' emulations on a test transport.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn emulate_scripts(t: &crate::testing::MemTransport) {
    t.register_script(RELEASE_SRC, |ctx, keys, args| {
        if ctx.get(&keys[0]).as_ref() == Some(&args[0]) {
            ctx.del(&keys[0]);
            if !args[1].is_empty() {
                ctx.call(Cmd::new("PUBLISH").arg(&args[1]).arg(&args[2]));
            }
            Value::Int(1)
        } else {
            Value::Int(0)
        }
    });
    t.register_script(EXTEND_SRC, |ctx, keys, args| {
        if ctx.get(&keys[0]).as_ref() == Some(&args[0]) {
            let ms = std::str::from_utf8(&args[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            match ms {
                Some(ms) if ms > 0 => Value::Int(i64::from(ctx.pexpire(&keys[0], ms))),
                _ => Value::Error("ERR invalid expire time in 'pexpire' command".into()),
            }
        } else {
            Value::Int(0)
        }
    });
}
