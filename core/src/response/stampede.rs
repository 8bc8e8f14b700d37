//! One computation per missing answer: the in-process single-flight and the distributed
//! lease of [`ComputeCache`](crate::compute::ComputeCache), applied to the response cache's
//! own lookups and writes.
//!
//! - Callers in one process that miss the same key (same namespace, same write policy) join
//!   one flight: the leader computes and stores, the others receive its result. Dropping the
//!   leader's future promotes a waiter, which computes with its own closure.
//! - Over Redis, the leader first takes the lease `{prefix}:lock:{ns:}{hash}`
//!   (`SET … NX PX`). When another process holds it, the leader waits — woken by the
//!   release's pub/sub message where the transport has pub/sub, else polling with jittered
//!   backoff — re-reading the entry after each wake-up, and computes anyway once
//!   [`max_wait`](super::ResponseCacheBuilder::max_wait) or
//!   [`max_polls`](super::ResponseCacheBuilder::max_polls) pass (availability first, like
//!   [`WaitPolicy::Compute`](crate::compute::WaitPolicy::Compute)). A holder that dies
//!   releases nothing: its lease expires after the lease TTL, which long computations
//!   extend every third of it.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{SharedClock, duration_ms};
use crate::compute::{
    Flights, HeldLease, Join, LockBackend, Pacer, Pacing, Waited, random_token, with_keep_alive,
};
use crate::envelope::Envelope;
use crate::transport::{MaybeSend, MaybeSync};

use super::answer::LlmResponse;
use crate::compute::ComputeError;

pub(crate) use crate::compute::{
    DEFAULT_BACKOFF_MAX as BACKOFF_MAX, DEFAULT_BACKOFF_MIN as BACKOFF_MIN, DEFAULT_LEASE_TTL,
    DEFAULT_MAX_POLLS, DEFAULT_MAX_WAIT,
};

/// What a miss ended with.
#[derive(Debug, Clone)]
pub(crate) enum Got {
    /// Computed (by this caller or the flight's leader in this process).
    Computed(LlmResponse),
    /// Computed by the flight's leader in this process while this caller waited.
    Joined(LlmResponse),
    /// Written by another process while this one waited for its lease.
    Found(Envelope),
    /// A stream in flight (`true`: started by another caller in this process).
    Live(Arc<crate::stream::tee::Tee>, bool),
    /// A stream in flight in another process, published under its lease token.
    Remote(String),
}

impl Got {
    /// The leader's result as a caller that waited for it sees it.
    fn joined(self) -> Self {
        match self {
            Got::Computed(r) => Got::Joined(r),
            Got::Live(tee, _) => Got::Live(tee, true),
            other => other,
        }
    }
}

/// The leader's result, shared with the flight's waiters.
pub(crate) type Shared<E> = std::result::Result<Got, ComputeError<E>>;

/// The stampede settings and state of one response cache.
pub(crate) struct Stampede {
    flights: Arc<Flights<()>>,
    lease: Option<Lease>,
}

impl fmt::Debug for Stampede {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stampede")
            .field("in_flight", &self.flights.len())
            .field("lease", &self.lease)
            .finish()
    }
}

/// The distributed lease.
pub(crate) struct Lease {
    pub(crate) lock: Arc<dyn LockBackend>,
    pub(crate) ttl: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) max_polls: u32,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("lock", &self.lock)
            .field("ttl", &self.ttl)
            .field("max_wait", &self.max_wait)
            .field("max_polls", &self.max_polls)
            .finish()
    }
}

/// How a lease waiter paces its looks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Nap {
    /// Jittered backoff, at most `max_polls` looks (an answer: nothing to see until it is
    /// stored).
    Backoff,
    /// At most this long between looks, for up to `max_wait` (a stream: its first event
    /// should be seen within one interval of being published).
    Every(Duration),
}

/// How many looks `every` apart fit in `wait`.
fn polls_within(wait: Duration, every: Duration) -> u32 {
    let n = wait.as_millis() / every.as_millis().max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the lease phase decided; `F` is what a wait can find.
pub(crate) enum Leased<F = Envelope> {
    /// This process holds the lease: compute, store, then release it.
    Held(HeldLease),
    /// Compute without the lease (no lease configured, Redis failing, or the wait bound
    /// passed).
    Unleased,
    /// Another process stored the answer (or started streaming it) while we waited.
    Found(F),
}

impl Stampede {
    pub(crate) fn new(lease: Option<Lease>) -> Self {
        Stampede {
            flights: Arc::new(Flights::default()),
            lease,
        }
    }

    /// The lease's TTL (the default when none is configured).
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.lease.as_ref().map_or(DEFAULT_LEASE_TTL, |l| l.ttl)
    }

    /// The lease's lock (for listening to its channel).
    pub(crate) fn lock(&self) -> Option<&Arc<dyn LockBackend>> {
        self.lease.as_ref().map(|l| &l.lock)
    }

    /// Whether a distributed lease is configured.
    pub(crate) fn has_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// Runs `lead` once per `flight` key among concurrent callers in this process; the
    /// others get a clone of its result. `lead` receives the caller's own `compute`.
    pub(crate) async fn coalesce<C, E, L, Fut>(
        &self,
        flight: &str,
        compute: C,
        lead: L,
    ) -> Shared<E>
    where
        E: MaybeSend + MaybeSync + 'static,
        L: Fn(C) -> Fut,
        Fut: Future<Output = Shared<E>>,
    {
        let mut joined = self.flights.join(flight, TypeId::of::<Shared<E>>());
        loop {
            match joined {
                Join::Leader(leader) => {
                    let outcome = lead(compute).await;
                    leader.complete(Arc::new(outcome.clone()));
                    return outcome;
                }
                Join::Waiter(waiter) => match waiter.await {
                    Waited::Outcome(shared) => {
                        return shared
                            .downcast_ref::<Shared<E>>()
                            .expect("flights are keyed by outcome type")
                            .clone()
                            .map(Got::joined);
                    }
                    Waited::Promoted(leader) => joined = Join::Leader(leader),
                },
            }
        }
    }

    /// Takes the lease of `id`, or waits for its holder: `recheck` re-reads the entry after
    /// each wake-up and ends the wait when it finds a fresh one.
    pub(crate) async fn acquire<F, R, RFut>(
        &self,
        clock: &SharedClock,
        id: &str,
        nap: Nap,
        recheck: R,
    ) -> Leased<F>
    where
        R: Fn() -> RFut,
        RFut: Future<Output = Option<F>>,
    {
        let Some(lease) = &self.lease else {
            return Leased::Unleased;
        };
        let token = random_token(&**clock);
        // Taking the lease proves nobody is computing now, not that nobody just finished:
        // a holder may have stored the answer and released between our lookup and our
        // `SET NX`. So every acquisition re-reads the entry before computing.
        let taken = async || -> Option<Leased<F>> {
            match lease.lock.try_acquire(id, &token, lease.ttl).await {
                Ok(true) => {
                    let held = HeldLease::new(lease.lock.clone(), id, token.clone(), None);
                    Some(match recheck().await {
                        Some(found) => {
                            let _ = held.release().await;
                            Leased::Found(found)
                        }
                        None => Leased::Held(held),
                    })
                }
                Ok(false) => None,
                Err(_) => Some(Leased::Unleased),
            }
        };
        // Listen before the first attempt, so a release right after it is not missed.
        let mut listener = lease.lock.listen(id);
        if let Some(done) = taken().await {
            return done;
        }
        let mut pacer = Pacer::new(Pacing {
            clock: &**clock,
            deadline_ms: clock.now_ms().saturating_add(duration_ms(lease.max_wait)),
            max_polls: match nap {
                Nap::Backoff => lease.max_polls,
                Nap::Every(every) => lease.max_polls.max(polls_within(lease.max_wait, every)),
            },
            backoff_min: match nap {
                Nap::Backoff => BACKOFF_MIN,
                Nap::Every(every) => BACKOFF_MIN.min(every),
            },
            backoff_max: match nap {
                Nap::Backoff => BACKOFF_MAX,
                Nap::Every(every) => BACKOFF_MAX.min(every),
            },
        });
        while pacer.nap(&mut listener).await {
            if let Some(found) = recheck().await {
                return Leased::Found(found);
            }
            if let Some(done) = taken().await {
                return done;
            }
        }
        Leased::Unleased
    }

    /// Runs `work` while keeping `held` alive.
    pub(crate) async fn keep_alive<F: Future>(
        &self,
        clock: &SharedClock,
        held: Option<&HeldLease>,
        work: F,
    ) -> F::Output {
        let ttl = self.lease.as_ref().map_or(DEFAULT_LEASE_TTL, |l| l.ttl);
        with_keep_alive(work, held, &**clock, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::RedisLock;
    use crate::keys::KeyScheme;
    use crate::testing::MemTransport;
    use crate::transport::Commands;
    use futures_executor::block_on;

    fn stampede(t: &MemTransport) -> Stampede {
        let clock = t.shared_clock();
        Stampede::new(Some(Lease {
            lock: Arc::new(
                RedisLock::new(t.clone(), KeyScheme::new("p").unwrap()).clock(clock.clone()),
            ),
            ttl: DEFAULT_LEASE_TTL,
            max_wait: DEFAULT_MAX_WAIT,
            max_polls: DEFAULT_MAX_POLLS,
        }))
    }

    #[test]
    fn an_answer_stored_just_before_we_took_the_lease_is_served_not_recomputed() {
        // The race: our lookup missed, then another process stored the answer and released
        // its lease, then our SET NX succeeded. The re-read after acquiring finds it.
        let t = MemTransport::new();
        let s = stampede(&t);
        let clock = t.shared_clock();
        let stored = Envelope::new("Paris.", "m", 0);
        let got = block_on(s.acquire(&clock, "h1", Nap::Backoff, || async {
            Some(stored.clone())
        }));
        match got {
            Leased::Found(e) => assert_eq!(e.response, "Paris."),
            _ => panic!("expected the stored answer"),
        }
        assert_eq!(
            block_on(t.get(b"p:lock:h1")).unwrap(),
            None,
            "the lease taken for nothing was released"
        );
    }

    #[test]
    fn a_free_lease_with_nothing_stored_is_held() {
        let t = MemTransport::new();
        let s = stampede(&t);
        let clock = t.shared_clock();
        let got: Leased = block_on(s.acquire(&clock, "h2", Nap::Backoff, || async { None }));
        assert!(matches!(got, Leased::Held(_)));
        assert!(block_on(t.get(b"p:lock:h2")).unwrap().is_some());
    }
}
