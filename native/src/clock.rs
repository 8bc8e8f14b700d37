//! The native clock: `SystemTime` for "now", tokio for sleeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder_core::{Clock, SharedClock};

/// The system wall clock, sleeping on the tokio timer.
///
/// # Examples
///
/// ```
/// use larder_core::Clock;
/// use larder_native::SystemClock;
///
/// let now = SystemClock.now_ms();
/// assert!(now > 1_600_000_000_000, "after 2020");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The clock behind an `Arc`, as caches take it.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn now_us(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_waits_and_time_moves() {
        let c = SystemClock;
        let before = c.now_ms();
        c.sleep(Duration::from_millis(20)).await;
        assert!(c.now_ms() >= before + 19);
    }
}
