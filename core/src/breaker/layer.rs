//! [`CircuitBreakerLayer`]: the breaker's configuration, which wraps transports.

use std::time::Duration;

use super::CircuitBreaker;
use super::state::Thresholds;
use crate::clock::SharedClock;
use crate::transport::Transport;

/// Configures circuit breakers and wraps transports in them (tower's `Layer` shape).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_core::breaker::CircuitBreakerLayer;
/// use larder_core::{RedisCache, testing::MemTransport};
///
/// let redis = MemTransport::new();
/// let layer = CircuitBreakerLayer::new().clock(redis.clock())
///     .failure_threshold(5)
///     .cooldown(Duration::from_millis(500))
///     .call_timeout(Some(Duration::from_millis(200)));
/// let cache = RedisCache::new(layer.layer(redis));
/// assert_eq!(cache.transport().stats().state.as_str(), "closed");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CircuitBreakerLayer {
    pub(crate) clock: SharedClock,
    pub(crate) thresholds: Thresholds,
    pub(crate) call_timeout: Option<Duration>,
}

/// Defaults of [`CircuitBreakerLayer`].
const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_COOLDOWN: Duration = Duration::from_millis(250);

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerLayer {
    /// The defaults: open after 5 consecutive failures, probe again after 250 ms with one
    /// call, close on its success; no call timeout of its own.
    pub fn new() -> Self {
        CircuitBreakerLayer {
            clock: crate::clock::system(),
            thresholds: Thresholds {
                failures_to_open: DEFAULT_FAILURES,
                cooldown: DEFAULT_COOLDOWN,
                probes: 1,
                successes_to_close: 1,
            },
            call_timeout: None,
        }
    }

    /// The clock cool-downs and call timeouts are measured with (default:
    /// [`SystemClock`](crate::SystemClock)).
    pub fn clock(mut self, clock: impl crate::Clock + 'static) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// Consecutive failures that open the breaker (at least 1).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.thresholds.failures_to_open = failures.max(1);
        self
    }

    /// How long an open breaker rejects calls before probing (default 250 ms). It bounds how
    /// soon Redis is used again after it recovers: a transport with a pool of `n`
    /// connections may need up to `n` probes, one per cool-down, before one reconnected
    /// connection answers.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.thresholds.cooldown = cooldown;
        self
    }

    /// Probe calls let through at once while half-open (at least 1).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.thresholds.probes = probes.max(1);
        self
    }

    /// Successful probes that close the breaker (at least 1).
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.thresholds.successes_to_close = successes.max(1);
        self
    }

    /// Cuts off any call that takes longer (on the injected clock) with an error of kind
    /// `Timeout`, which counts as a failure. Use it over transports without their own
    /// timeouts; the redis-rs transport already bounds every call.
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Wraps `transport`.
    pub fn layer<T: Transport>(&self, transport: T) -> CircuitBreaker<T> {
        CircuitBreaker::from_layer(transport, self)
    }
}
