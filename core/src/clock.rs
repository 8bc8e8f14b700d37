//! Time: [`Clock`] gives "now" in unix milliseconds and a way to sleep.
//!
//! Everything in larder that reads time uses the runtime's clock, [`SystemClock`], unless a
//! builder is given another with `.clock(...)` — in tests, a [`ManualClock`].

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::transport::{MaybeSend, MaybeSync};

/// A source of wall-clock time and a way to wait.
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait Clock: MaybeSend + MaybeSync + Debug {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;

    /// A reading in microseconds for measuring how long something took: only differences
    /// between two readings mean anything. The default is [`now_ms`](Clock::now_ms) × 1000;
    /// clocks with a finer source (the native `SystemClock`: a monotonic `Instant`)
    /// override it.
    fn now_us(&self) -> u64 {
        self.now_ms().saturating_mul(1000)
    }

    /// Waits for `duration`.
    async fn sleep(&self, duration: Duration);
}

/// A clock shared by many caches.
pub type SharedClock = Arc<dyn Clock>;

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
    fn now_us(&self) -> u64 {
        (**self).now_us()
    }
    async fn sleep(&self, duration: Duration) {
        (**self).sleep(duration).await
    }
}

/// The runtime's clock, the default of every builder: the system wall clock natively, the
/// JavaScript host's (`Date.now()`, `setTimeout`) on `wasm32`. Sleeping needs no async
/// runtime: it works under tokio, any other executor and on Workers.
///
/// # Examples
///
/// ```
/// use larder_core::{Clock, SystemClock};
///
/// assert!(SystemClock.now_ms() > 1_600_000_000_000, "after 2020");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

// `web_time` is `std::time` natively and the JavaScript clock on wasm32, where `std::time`
// panics; `futures_timer` sleeps without tokio (a timer thread natively, `setTimeout` on wasm32).
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        web_time::SystemTime::now()
            .duration_since(web_time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn now_us(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn sleep(&self, duration: Duration) {
        futures_timer::Delay::new(duration).await;
    }
}

/// The default clock of every builder.
pub(crate) fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to: for deterministic tests.
///
/// [`Clock::sleep`] on a manual clock advances the clock by the duration and returns at once,
/// so code that sleeps runs instantly and sees time pass.
///
/// # Examples
///
/// ```
/// use larder_core::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_millis(250));
/// assert_eq!(clock.now_ms(), 1_250);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that reads `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_ms(by), Ordering::SeqCst);
    }

    /// Sets the clock to an absolute time.
    pub fn set(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    async fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

/// Whole milliseconds of a duration, saturating, rounding a non-zero sub-millisecond duration
/// up to 1 ms (Redis has no finer resolution and a TTL of 0 would mean "expire now").
pub fn duration_ms(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_sleeps_without_a_runtime_and_time_moves() {
        let c = SystemClock;
        let (ms, us) = (c.now_ms(), c.now_us());
        futures_executor::block_on(c.sleep(Duration::from_millis(20)));
        assert!(c.now_ms() >= ms + 19, "wall clock moved");
        assert!(c.now_us() >= us + 19_000, "monotonic reading moved");
    }

    #[test]
    fn manual_clock_sleep_advances() {
        let c = ManualClock::new(10);
        futures_executor::block_on(c.sleep(Duration::from_secs(2)));
        assert_eq!(c.now_ms(), 2_010);
        let c2 = c.clone();
        c2.set(5);
        assert_eq!(c.now_ms(), 5, "clones share one time");
    }

    #[test]
    fn duration_ms_rounds_sub_ms_up() {
        assert_eq!(duration_ms(Duration::from_micros(10)), 1);
        assert_eq!(duration_ms(Duration::ZERO), 0);
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }
}
