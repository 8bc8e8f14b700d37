//! A circuit breaker around a [`Transport`] that is itself a [`Transport`]: when Redis keeps
//! failing, stop calling it for a while and fail at once instead.
//!
//! Wrap the transport of the L2 of a [`TieredCache`](crate::TieredCache): while the breaker
//! is open, L2 calls fail in microseconds, so reads go L1 → compute and writes go to L1
//! without any call waiting on Redis; after the cool-down one probe goes through, and its
//! success switches everything back to Redis.
//!
//! ```text
//!   closed ──(N consecutive failures)──▶ open ──(cool-down)──▶ half-open
//!     ▲                                   ▲                      │
//!     └──────────(probe succeeds)─────────┼──────────────────────┤
//!                                         └───(probe fails)──────┘
//! ```
//!
//! Failures are transport errors that may pass ([`TransportError::is_retryable`]: I/O,
//! timeouts, a busy or failing-over server). Error replies from Redis (`WRONGTYPE`…),
//! refused requests and authentication errors are answers, not outages: they do not count.

mod layer;
mod state;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::clock::{SharedClock, duration_ms};
use crate::compute::until;
use crate::error::{ErrorKind, TransportError};
use crate::transport::{BoxSubscription, ScanCursor, Transport};
use crate::value::{Cmd, Value};

pub use layer::CircuitBreakerLayer;
pub use state::BreakerState;
use state::{Admit, Machine};

/// A [`Transport`] that stops calling its inner transport while it keeps failing.
///
/// Cloning is cheap; clones share the state, so keep one to read [`stats`](Self::stats)
/// (for example from `RedisCache::transport()`).
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_core::breaker::{BreakerState, CircuitBreakerLayer};
/// use larder_core::{Cache, ErrorKind, RedisCache, testing::MemTransport};
///
/// let redis = MemTransport::new();
/// let clock = redis.clock();
/// let cache = RedisCache::new(
///     CircuitBreakerLayer::new().clock(clock.clone()).failure_threshold(2).layer(redis.clone()),
/// );
/// redis.set_down(true);
/// for _ in 0..2 {
///     assert!(cache.get("k").await.is_err());
/// }
/// assert_eq!(cache.transport().state(), BreakerState::Open);
/// redis.reset_counters();
/// let err = cache.get("k").await.unwrap_err();
/// assert_eq!(err.transport_kind(), Some(ErrorKind::Unavailable));
/// assert_eq!(redis.calls(), 0, "Redis was not called");
///
/// redis.set_down(false);
/// clock.advance(Duration::from_secs(1)); // the cool-down passes
/// assert_eq!(cache.get("k").await?, None); // the probe succeeds…
/// assert_eq!(cache.transport().state(), BreakerState::Closed); // …and closes the breaker
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
pub struct CircuitBreaker<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for CircuitBreaker<T> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    transport: T,
    clock: SharedClock,
    call_timeout: Option<Duration>,
    machine: Mutex<Machine>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    successes: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    timeouts: AtomicU64,
}

/// A breaker's state and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The state now.
    pub state: BreakerState,
    /// Failures in a row (while closed).
    pub consecutive_failures: u32,
    /// How many times the breaker opened.
    pub times_opened: u64,
    /// Calls that reached the backend and succeeded.
    pub successes: u64,
    /// Calls that reached the backend and failed.
    pub failures: u64,
    /// Calls rejected without reaching the backend.
    pub rejected: u64,
    /// Calls cut off by the breaker's own call timeout.
    pub timeouts: u64,
    /// When an open breaker lets a probe through (unix ms), while open.
    pub retry_at_ms: Option<u64>,
}

impl<T: fmt::Debug> fmt::Debug for CircuitBreaker<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("transport", &self.inner.transport)
            .field(
                "state",
                &self.inner.machine.lock().state(self.inner.clock.now_ms()),
            )
            .field("call_timeout", &self.inner.call_timeout)
            .finish()
    }
}

/// Reports a probe's cancellation if its call is dropped before it finishes.
struct Ticket<'a, T> {
    breaker: &'a CircuitBreaker<T>,
    probe: bool,
    done: bool,
}

impl<T> Drop for Ticket<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.inner.machine.lock().on_cancel(self.probe);
        }
    }
}

impl<T: Transport> CircuitBreaker<T> {
    /// Wraps `transport` with the [`CircuitBreakerLayer`] defaults.
    pub fn new(transport: T) -> Self {
        CircuitBreakerLayer::new().layer(transport)
    }

    pub(crate) fn from_layer(transport: T, layer: &CircuitBreakerLayer) -> Self {
        CircuitBreaker {
            inner: Arc::new(Inner {
                transport,
                clock: layer.clock.clone(),
                call_timeout: layer.call_timeout,
                machine: Mutex::new(Machine::new(layer.thresholds)),
                counters: Counters::default(),
            }),
        }
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &T {
        &self.inner.transport
    }

    /// The state now (an open breaker whose cool-down has passed reads half-open).
    pub fn state(&self) -> BreakerState {
        self.inner.machine.lock().state(self.inner.clock.now_ms())
    }

    /// State and counters.
    pub fn stats(&self) -> BreakerStats {
        let now = self.inner.clock.now_ms();
        let m = self.inner.machine.lock();
        let state = m.state(now);
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BreakerStats {
            state,
            consecutive_failures: m.consecutive_failures(),
            times_opened: m.times_opened,
            successes: l(&c.successes),
            failures: l(&c.failures),
            rejected: l(&c.rejected),
            timeouts: l(&c.timeouts),
            retry_at_ms: (state == BreakerState::Open).then(|| m.retry_at_ms()),
        }
    }

    /// Opens the breaker now (for maintenance, or tests).
    pub fn trip(&self) {
        let now = self.inner.clock.now_ms();
        self.inner.machine.lock().open(now);
    }

    /// Closes the breaker now.
    pub fn reset(&self) {
        self.inner.machine.lock().close();
    }

    /// Runs `call` through the breaker.
    async fn call<R, F>(&self, call: F) -> Result<R, TransportError>
    where
        F: std::future::Future<Output = Result<R, TransportError>>,
    {
        let inner = &*self.inner;
        let admit = inner.machine.lock().admit(inner.clock.now_ms());
        let probe = match admit {
            Admit::Call => false,
            Admit::Probe => true,
            Admit::Reject { retry_in_ms } => {
                inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(rejected(retry_in_ms));
            }
        };
        let mut ticket = Ticket {
            breaker: self,
            probe,
            done: false,
        };
        let result = match inner.call_timeout {
            None => call.await,
            Some(limit) => {
                let deadline = inner.clock.now_ms().saturating_add(duration_ms(limit));
                match until(&*inner.clock, Some(deadline), call).await {
                    Some(r) => r,
                    None => {
                        inner.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        Err(TransportError::new(
                            ErrorKind::Timeout,
                            format!(
                                "no reply within the circuit breaker's call timeout of \
                                 {limit:?}; check Redis latency or raise call_timeout"
                            ),
                        ))
                    }
                }
            }
        };
        ticket.done = true;
        let now = inner.clock.now_ms();
        let mut m = inner.machine.lock();
        match &result {
            Err(e) if e.is_retryable() => {
                inner.counters.failures.fetch_add(1, Ordering::Relaxed);
                m.on_failure(probe, now);
            }
            _ => {
                inner.counters.successes.fetch_add(1, Ordering::Relaxed);
                m.on_success(probe);
            }
        }
        drop(m);
        result
    }
}

fn rejected(retry_in_ms: u64) -> TransportError {
    TransportError::new(
        ErrorKind::Unavailable,
        format!(
            "circuit breaker open: Redis failed repeatedly, not calling it for another \
             {retry_in_ms} ms (served from memory where possible)"
        ),
    )
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<T: Transport> Transport for CircuitBreaker<T> {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.call(self.inner.transport.exec(cmd)).await
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.call(self.inner.transport.pipeline(cmds)).await
    }

    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        self.call(self.inner.transport.scan_page(cursor, pattern, count))
            .await
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.transport.close().await
    }

    fn supports_pubsub(&self) -> bool {
        self.inner.transport.supports_pubsub()
    }

    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.call(self.inner.transport.subscribe(channel)).await
    }

    async fn psubscribe(&self, pattern: &[u8]) -> Result<BoxSubscription, TransportError> {
        self.call(self.inner.transport.psubscribe(pattern)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemTransport;
    use crate::{Cache, Clock, ManualClock, RedisCache};
    use futures_executor::block_on;

    fn breaker(t: &MemTransport, clock: &ManualClock) -> CircuitBreaker<MemTransport> {
        CircuitBreakerLayer::new()
            .clock(clock.clone())
            .failure_threshold(3)
            .cooldown(Duration::from_secs(5))
            .layer(t.clone())
    }

    #[test]
    fn open_breaker_rejects_without_calling_redis() {
        block_on(async {
            let t = MemTransport::new();
            let clock = t.clock();
            let b = breaker(&t, &clock);
            t.set_down(true);
            for _ in 0..3 {
                assert_eq!(
                    b.exec(Cmd::new("PING")).await.unwrap_err().kind(),
                    ErrorKind::Io
                );
            }
            assert_eq!(b.state(), BreakerState::Open);
            t.reset_counters();
            for _ in 0..100 {
                let e = b.exec(Cmd::new("PING")).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unavailable);
                assert!(e.is_retryable());
            }
            assert_eq!(t.calls(), 0);
            let s = b.stats();
            assert_eq!((s.failures, s.rejected, s.times_opened), (3, 100, 1));
            assert_eq!(s.retry_at_ms, Some(clock.now_ms() + 5000));
        });
    }

    #[test]
    fn half_open_probe_closes_on_success_and_reopens_on_failure() {
        block_on(async {
            let t = MemTransport::new();
            let clock = t.clock();
            let b = breaker(&t, &clock);
            b.trip();
            clock.advance(Duration::from_secs(5));
            assert_eq!(b.state(), BreakerState::HalfOpen);
            t.set_down(true);
            assert_eq!(
                b.exec(Cmd::new("PING")).await.unwrap_err().kind(),
                ErrorKind::Io
            );
            assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
            clock.advance(Duration::from_secs(5));
            t.set_down(false);
            assert!(b.exec(Cmd::new("PING")).await.is_ok());
            assert_eq!(b.state(), BreakerState::Closed);
        });
    }

    #[test]
    fn server_error_replies_do_not_count_as_failures() {
        block_on(async {
            let t = MemTransport::new();
            let clock = t.clock();
            let b = breaker(&t, &clock);
            for _ in 0..10 {
                let v = b.exec(Cmd::new("NOSUCHCOMMAND")).await.unwrap();
                assert!(matches!(v, Value::Error(_)));
            }
            t.fail_next(5, ErrorKind::Auth);
            for _ in 0..5 {
                assert!(b.exec(Cmd::new("PING")).await.is_err());
            }
            assert_eq!(b.state(), BreakerState::Closed);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn call_timeout_cuts_slow_calls_and_counts_them() {
        let clock = crate::compute::tests::support::TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        t.set_latency(Duration::from_secs(10));
        let b = CircuitBreakerLayer::new()
            .clock(clock.clone())
            .failure_threshold(2)
            .call_timeout(Some(Duration::from_millis(100)))
            .layer(t.clone());
        let started = tokio::time::Instant::now();
        let e = b.exec(Cmd::new("PING")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        let _ = b.exec(Cmd::new("PING")).await;
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.stats().timeouts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_frees_the_half_open_slot() {
        let clock = crate::compute::tests::support::TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        let b = CircuitBreakerLayer::new()
            .clock(clock.clone())
            .cooldown(Duration::from_millis(10))
            .layer(t.clone());
        b.trip();
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.set_latency(Duration::from_secs(10));
        let slow = b.exec(Cmd::new("PING"));
        let _ = tokio::time::timeout(Duration::from_millis(5), slow).await;
        t.set_latency(Duration::ZERO);
        assert!(
            b.exec(Cmd::new("PING")).await.is_ok(),
            "a new probe was admitted"
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn redis_cache_over_a_breaker_reports_state_through_transport() {
        block_on(async {
            let t = MemTransport::new();
            let clock = t.clock();
            let cache = RedisCache::new(breaker(&t, &clock));
            t.set_down(true);
            for _ in 0..3 {
                assert!(cache.get("k").await.is_err());
            }
            assert_eq!(cache.transport().stats().state, BreakerState::Open);
        });
    }
}
