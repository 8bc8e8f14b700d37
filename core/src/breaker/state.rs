//! The breaker's state machine: pure, driven by the caller's `now` (no clock inside).

use std::time::Duration;

use crate::clock::duration_ms;

/// Where a [`CircuitBreaker`](super::CircuitBreaker) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls fail at once, without reaching the backend, until the cool-down has passed.
    Open,
    /// The cool-down has passed: a few probe calls go through; their success closes the
    /// breaker, a failure opens it again.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open` (stable, for logs and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub(crate) failures_to_open: u32,
    pub(crate) cooldown: Duration,
    pub(crate) probes: u32,
    pub(crate) successes_to_close: u32,
}

/// Whether a call may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A normal call (closed).
    Call,
    /// A probe (half-open): report its result or its cancellation.
    Probe,
    /// Rejected: open (or half-open with every probe slot taken) for this much longer.
    Reject { retry_in_ms: u64 },
}

#[derive(Debug, Clone)]
pub(crate) struct Machine {
    t: Thresholds,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at_ms: u64,
    probes_in_flight: u32,
    probe_successes: u32,
    pub(crate) times_opened: u64,
}

impl Machine {
    pub(crate) fn new(t: Thresholds) -> Self {
        Machine {
            t,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at_ms: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            times_opened: 0,
        }
    }

    pub(crate) fn state(&self, now_ms: u64) -> BreakerState {
        match self.state {
            BreakerState::Open if now_ms >= self.retry_at_ms() => BreakerState::HalfOpen,
            s => s,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn retry_at_ms(&self) -> u64 {
        self.opened_at_ms
            .saturating_add(duration_ms(self.t.cooldown))
    }

    pub(crate) fn admit(&mut self, now_ms: u64) -> Admit {
        if self.state == BreakerState::Open {
            if now_ms < self.retry_at_ms() {
                return Admit::Reject {
                    retry_in_ms: self.retry_at_ms() - now_ms,
                };
            }
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
            report(BreakerState::HalfOpen);
        }
        match self.state {
            BreakerState::Closed => Admit::Call,
            _ if self.probes_in_flight < self.t.probes => {
                self.probes_in_flight += 1;
                Admit::Probe
            }
            _ => Admit::Reject { retry_in_ms: 0 },
        }
    }

    pub(crate) fn on_success(&mut self, probe: bool) {
        if probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            if self.state == BreakerState::HalfOpen {
                self.probe_successes += 1;
                if self.probe_successes >= self.t.successes_to_close {
                    self.close();
                }
            }
        } else if self.state == BreakerState::Closed {
            self.consecutive_failures = 0;
        }
    }

    pub(crate) fn on_failure(&mut self, probe: bool, now_ms: u64) {
        if probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            if self.state == BreakerState::HalfOpen {
                self.open(now_ms);
            }
        } else if self.state == BreakerState::Closed {
            self.consecutive_failures += 1;
            if self.consecutive_failures >= self.t.failures_to_open {
                self.open(now_ms);
            }
        }
    }

    /// A probe whose caller went away before it finished.
    pub(crate) fn on_cancel(&mut self, probe: bool) {
        if probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    pub(crate) fn open(&mut self, now_ms: u64) {
        self.state = BreakerState::Open;
        self.opened_at_ms = now_ms;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.times_opened += 1;
        report(BreakerState::Open);
    }

    pub(crate) fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        report(BreakerState::Closed);
    }
}

/// Reports a transition: the gauge `larder_breaker_state` (0 closed, 1 half-open, 2 open),
/// the counter `larder_breaker_transitions_total{to}`, and a log line.
fn report(to: BreakerState) {
    let level = match to {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    metrics::gauge!("larder_breaker_state").set(level);
    metrics::counter!("larder_breaker_transitions_total", "to" => to.as_str()).increment(1);
    match to {
        BreakerState::Open => tracing::warn!(state = to.as_str(), "larder: circuit breaker opened"),
        _ => tracing::info!(
            state = to.as_str(),
            "larder: circuit breaker {}",
            to.as_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Machine {
        Machine::new(Thresholds {
            failures_to_open: 3,
            cooldown: Duration::from_millis(1000),
            probes: 1,
            successes_to_close: 2,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = m();
        for _ in 0..2 {
            assert_eq!(b.admit(0), Admit::Call);
            b.on_failure(false, 0);
        }
        b.on_success(false); // a success resets the streak
        for _ in 0..2 {
            b.on_failure(false, 0);
        }
        assert_eq!(b.state(0), BreakerState::Closed);
        b.on_failure(false, 10);
        assert_eq!(b.state(10), BreakerState::Open);
        assert_eq!(b.admit(500), Admit::Reject { retry_in_ms: 510 });
    }

    #[test]
    fn half_open_admits_limited_probes_and_closes_after_successes() {
        let mut b = m();
        b.open(0);
        assert_eq!(b.state(1000), BreakerState::HalfOpen);
        assert_eq!(b.admit(1000), Admit::Probe);
        assert_eq!(
            b.admit(1000),
            Admit::Reject { retry_in_ms: 0 },
            "one probe at a time"
        );
        b.on_success(true);
        assert_eq!(b.state(1000), BreakerState::HalfOpen, "needs two successes");
        assert_eq!(b.admit(1001), Admit::Probe);
        b.on_success(true);
        assert_eq!(b.state(1001), BreakerState::Closed);
        assert_eq!(b.admit(1001), Admit::Call);
    }

    #[test]
    fn failed_probe_reopens_and_restarts_the_cooldown() {
        let mut b = m();
        b.open(0);
        assert_eq!(b.admit(1000), Admit::Probe);
        b.on_failure(true, 1000);
        assert_eq!(b.state(1500), BreakerState::Open);
        assert_eq!(b.admit(1999), Admit::Reject { retry_in_ms: 1 });
        assert_eq!(b.times_opened, 2);
    }

    #[test]
    fn cancelled_probe_frees_its_slot() {
        let mut b = m();
        b.open(0);
        assert_eq!(b.admit(1000), Admit::Probe);
        b.on_cancel(true);
        assert_eq!(b.admit(1000), Admit::Probe);
    }
}
