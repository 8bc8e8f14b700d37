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

/// How a lease waiter paces its looks: until `deadline_ms` or `max_polls` looks, napping an
/// exponential backoff from `backoff_min` to `backoff_max` between them, each pause cut by
/// up to half at random so that waiters spread out.
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
    pub(crate) deadline_ms: u64,
    pub(crate) max_polls: u32,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// A [`Pacing`] under way.
pub(crate) struct Pacer<'a> {
    pacing: Pacing<'a>,
    pauses: backon::ExponentialBackoff,
    polls: u32,
}

/// The pauses of one wait: `min` doubling up to `max`, each in `[d / 2, d)`. backon's jitter
/// adds up to +100 %, so it is given half the bounds; its seed comes from `getrandom` (Web
/// Crypto on wasm32), where backon's own default would be one fixed seed for every isolate.
fn pauses(min: Duration, max: Duration, seed: u64) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(min / 2)
        .with_max_delay(max / 2)
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(seed)
        .without_max_times()
        .build()
}

impl<'a> Pacer<'a> {
    pub(crate) fn new(pacing: Pacing<'a>) -> Self {
        let seed = random_bytes(pacing.clock);
        let seed = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
        let pauses = pauses(pacing.backoff_min, pacing.backoff_max, seed);
        Pacer {
            pacing,
            pauses,
            polls: 0,
        }
    }

    /// Naps until the next look (cut short when `listener` hears the release); false, at
    /// once, when the deadline or the poll budget has run out. While the listener's
    /// subscription is in place the naps are at least half the longest pause.
    pub(crate) async fn nap(&mut self, listener: &mut super::Listener) -> bool {
        let p = &self.pacing;
        let now = p.clock.now_ms();
        if now >= p.deadline_ms || self.polls >= p.max_polls {
            return false;
        }
        let mut nap = self.pauses.next().unwrap_or(p.backoff_max);
        if listener.is_subscribed() {
            // The release wakes the waiter: the nap only covers a lost message, so no need
            // to look often (a thousand waiters looking every 20 ms load the server for
            // nothing).
            nap = nap.max(p.backoff_max / 2);
        }
        let nap = nap.min(Duration::from_millis(p.deadline_ms - now));
        listener.wait(p.clock, nap).await;
        self.polls += 1;
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
    fn pauses_double_up_to_the_cap_each_between_half_and_all_of_it() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(1000));
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut backoff = min;
            for pause in pauses(min, max, seed).take(10) {
                assert!(
                    pause >= backoff / 2 && pause < backoff,
                    "{pause:?} outside [{:?}, {backoff:?})",
                    backoff / 2
                );
                seen.insert(pause.as_micros());
                backoff = (backoff * 2).min(max);
            }
        }
        assert!(seen.len() > 500, "pauses vary: {}", seen.len());
        let a: Vec<_> = pauses(min, max, 1).take(5).collect();
        let b: Vec<_> = pauses(min, max, 2).take(5).collect();
        assert_ne!(a, b, "different seeds, different pauses");
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
