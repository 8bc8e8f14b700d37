//! Small runtime-free future helpers and randomness (no tokio, works on `wasm32`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::Clock;

pub(crate) use futures_util::future::{Either, select};

/// Sleeps on `clock` until `deadline_ms` (at once if it has passed).
pub(crate) async fn sleep_until(clock: &dyn Clock, deadline_ms: u64) {
    let now = clock.now_ms();
    if deadline_ms > now {
        clock.sleep(Duration::from_millis(deadline_ms - now)).await;
    }
}

/// Runs `fut` until `deadline_ms` (never when `None`); `None` when the deadline came first.
pub(crate) async fn until<F: Future>(
    clock: &dyn Clock,
    deadline_ms: Option<u64>,
    fut: F,
) -> Option<F::Output> {
    let Some(deadline) = deadline_ms else {
        return Some(fut.await);
    };
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(v) = futures_poll_once(fut.as_mut()).await {
        return Some(v);
    }
    if clock.now_ms() >= deadline {
        return None;
    }
    let mut timer = Box::pin(sleep_until(clock, deadline));
    match select(&mut fut, &mut timer).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(((), _)) => None,
    }
}

/// Polls a future once, reporting whether it finished.
async fn futures_poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Lets other tasks run once (futures-util has no runtime-free `yield_now`).
pub(crate) async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Sixteen random bytes from the operating system (`getrandom`; Web Crypto on `wasm32`),
/// or, if that fails, a SHA-256 of the time, a process-wide counter and address entropy:
/// unique enough for lease tokens, which only need to differ between holders.
pub(crate) fn random_bytes(clock: &dyn Clock) -> [u8; 16] {
    let mut out = [0u8; 16];
    if getrandom::fill(&mut out).is_ok() {
        return out;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let local = 0u8;
    let mut h = Sha256::new();
    h.update(clock.now_ms().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update((&local as *const u8 as usize).to_le_bytes());
    h.update((random_bytes as fn(&dyn Clock) -> [u8; 16] as usize).to_le_bytes());
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// A random lowercase-hex token of 32 digits.
pub(crate) fn random_token(clock: &dyn Clock) -> String {
    crate::transport::hex(&random_bytes(clock))
}

/// A small, lock-free pseudo-random source for jitter (SplitMix64), seeded once.
#[derive(Debug)]
pub(crate) struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    pub(crate) fn new(clock: &dyn Clock) -> Self {
        let seed = random_bytes(clock);
        Jitter {
            state: AtomicU64::new(u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"))),
        }
    }

    fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `d` scaled by a random factor in `[1 - spread, 1 + spread]` (spread in 0..=1).
    pub(crate) fn jitter(&self, d: Duration, spread: f64) -> Duration {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let factor = 1.0 - spread + 2.0 * spread * unit;
        d.mul_f64(factor.max(0.0))
    }
}

/// How a lease waiter paces its looks: until `deadline_ms` or `max_polls` looks, napping a
/// jittered (±50 %) exponential backoff from `backoff_min` to `backoff_max` between them.
/// The one wait loop of [`ComputeCache`](super::ComputeCache) and the response cache:
///
/// ```ignore
/// let mut pacer = Pacer::new(pacing);
/// while pacer.nap(&mut listener).await {
///     // look: the value, then the lease
/// }
/// ```
pub(crate) struct Pacing<'a> {
    pub(crate) clock: &'a dyn Clock,
    pub(crate) jitter: &'a Jitter,
    pub(crate) deadline_ms: u64,
    pub(crate) max_polls: u32,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// A [`Pacing`] under way.
pub(crate) struct Pacer<'a> {
    pacing: Pacing<'a>,
    backoff: Duration,
    polls: u32,
}

impl<'a> Pacer<'a> {
    pub(crate) fn new(pacing: Pacing<'a>) -> Self {
        let backoff = pacing.backoff_min;
        Pacer {
            pacing,
            backoff,
            polls: 0,
        }
    }

    /// Naps until the next look (cut short when `listener` hears the release); false, at
    /// once, when the deadline or the poll budget has run out.
    pub(crate) async fn nap(&mut self, listener: &mut super::Listener) -> bool {
        let p = &self.pacing;
        let now = p.clock.now_ms();
        if now >= p.deadline_ms || self.polls >= p.max_polls {
            return false;
        }
        let nap = p
            .jitter
            .jitter(self.backoff, 0.5)
            .min(Duration::from_millis(p.deadline_ms - now));
        listener.wait(p.clock, nap).await;
        self.polls += 1;
        self.backoff = (self.backoff * 2).min(p.backoff_max);
        true
    }

    /// Looks so far.
    pub(crate) fn polls(&self) -> u32 {
        self.polls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn tokens_are_unique_hex() {
        let clock = ManualClock::new(0);
        let a = random_token(&clock);
        let b = random_token(&clock);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let j = Jitter::new(&ManualClock::new(0));
        let base = Duration::from_millis(100);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = j.jitter(base, 0.5);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 20, "jitter varies: {}", seen.len());
    }

    #[test]
    fn until_returns_none_when_the_deadline_passes_first() {
        let clock = ManualClock::new(1_000);
        let never = std::future::pending::<()>();
        let r = futures_executor::block_on(until(&clock, Some(1_500), never));
        assert!(r.is_none());
        assert_eq!(clock.now_ms(), 1_500);
        let ready = futures_executor::block_on(until(&clock, Some(1_000), async { 7 }));
        assert_eq!(ready, Some(7), "a ready future wins even at the deadline");
    }
}
