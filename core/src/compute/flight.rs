//! In-process single-flight: one leader per key computes, concurrent callers wait for its
//! outcome, and a leader that is dropped hands the work (and its lease) to a waiter.
//!
//! Runtime-free (a waker list behind `parking_lot` mutexes), so it works on `wasm32`.
//!
//! Lock order: the map, then a flight's state. Wakers are woken after both are released,
//! and hand-offs are dropped after both are released (dropping one may start I/O).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// A type-erased, shareable outcome (`Send + Sync` on native targets).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type AnyArc = Arc<dyn Any + Send + Sync>;
/// A type-erased, shareable outcome (`Send + Sync` on native targets).
#[cfg(target_arch = "wasm32")]
pub(crate) type AnyArc = Arc<dyn Any>;

type FlightKey = (String, TypeId);

/// Every flight of one cache, by key and outcome type (callers of one key that expect
/// different value or error types never share an outcome).
pub(crate) struct Flights<H> {
    map: Mutex<HashMap<FlightKey, Arc<Flight<H>>>>,
}

impl<H> Default for Flights<H> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<H> std::fmt::Debug for Flights<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.map.lock().len())
            .finish()
    }
}

struct Flight<H> {
    key: FlightKey,
    state: Mutex<State<H>>,
}

struct State<H> {
    phase: Phase,
    /// What a dropped leader leaves for the next one (its lease).
    handoff: Option<H>,
    /// Registered waiters; `None` once woken (the entry stays until the waiter leaves).
    waiters: HashMap<u64, Option<Waker>>,
    next_id: u64,
}

enum Phase {
    /// A leader is working.
    Running,
    /// The leader was dropped: the first waiter to look takes over.
    Vacant,
    /// The leader shared an interim outcome (a stale value) and keeps working in the
    /// background: waiters and newcomers take this outcome at once.
    Shared(AnyArc),
    /// Finished (the flight has left the map).
    Done(AnyArc),
}

/// What [`Flights::join`] made of the caller.
pub(crate) enum Join<H> {
    /// Compute, then [`Leader::complete`].
    Leader(Leader<H>),
    /// Wait for the leader's outcome.
    Waiter(Waiter<H>),
}

/// What a waiter ends with.
pub(crate) enum Waited<H> {
    /// The leader's outcome (downcast it with the type the flight was keyed by).
    Outcome(AnyArc),
    /// The leader was dropped and this waiter now leads.
    Promoted(Leader<H>),
}

impl<H> Flights<H> {
    /// Joins the flight for `key` (and outcome type `ty`), starting one if there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str, ty: TypeId) -> Join<H> {
        let fkey = (key.to_owned(), ty);
        let mut map = self.map.lock();
        if let Some(flight) = map.get(&fkey).cloned() {
            // The map stays locked: a leader that is being dropped must not remove this
            // flight between our look-up and our registration.
            let mut st = flight.state.lock();
            if let Phase::Vacant = st.phase {
                st.phase = Phase::Running;
                let handoff = st.handoff.take();
                drop(st);
                drop(map);
                return Join::Leader(Leader {
                    flights: self.clone(),
                    flight,
                    handoff,
                    done: false,
                });
            }
            let id = st.next_id;
            st.next_id += 1;
            st.waiters.insert(id, None);
            drop(st);
            drop(map);
            return Join::Waiter(Waiter {
                flights: self.clone(),
                flight,
                id,
                done: false,
            });
        }
        let flight = Arc::new(Flight {
            key: fkey.clone(),
            state: Mutex::new(State {
                phase: Phase::Running,
                handoff: None,
                waiters: HashMap::new(),
                next_id: 0,
            }),
        });
        map.insert(fkey, flight.clone());
        drop(map);
        Join::Leader(Leader {
            flights: self.clone(),
            flight,
            handoff: None,
            done: false,
        })
    }

    /// Flights in progress (tests and stats).
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }

    fn remove_if_current(map: &mut HashMap<FlightKey, Arc<Flight<H>>>, flight: &Arc<Flight<H>>) {
        if map
            .get(&flight.key)
            .is_some_and(|current| Arc::ptr_eq(current, flight))
        {
            map.remove(&flight.key);
        }
    }
}

fn take_wakers(waiters: &mut HashMap<u64, Option<Waker>>) -> Vec<Waker> {
    waiters.values_mut().filter_map(Option::take).collect()
}

/// The caller that computes. Dropping it without [`complete`](Leader::complete) hands the
/// flight to a waiter (with the hand-off), or ends it when nobody waits.
pub(crate) struct Leader<H> {
    flights: Arc<Flights<H>>,
    flight: Arc<Flight<H>>,
    handoff: Option<H>,
    done: bool,
}

impl<H> Leader<H> {
    /// What a dropped predecessor left (its lease), taken once.
    #[cfg(test)]
    pub(crate) fn take_handoff(&mut self) -> Option<H> {
        self.handoff.take()
    }

    /// What this leader holds to hand over (its lease), if anything.
    pub(crate) fn handoff(&self) -> Option<&H> {
        self.handoff.as_ref()
    }

    /// A handle that can [`share`](Sharer::share) interim outcomes after this leader has
    /// moved into a background task.
    pub(crate) fn sharer(&self) -> Sharer<H> {
        Sharer {
            flight: self.flight.clone(),
        }
    }

    /// Keeps `h` to hand over if this leader is dropped before completing.
    pub(crate) fn set_handoff(&mut self, h: Option<H>) {
        self.handoff = h;
    }

    /// Publishes an interim outcome: waiters and newcomers take it at once while this leader
    /// keeps working.
    #[cfg(test)]
    pub(crate) fn share(&self, outcome: AnyArc) {
        self.sharer().share(outcome);
    }

    /// Finishes the flight with `outcome`, wakes every waiter, and leaves the map (the next
    /// caller starts afresh: an error is never cached).
    pub(crate) fn complete(mut self, outcome: AnyArc) {
        self.done = true;
        let handoff = self.handoff.take();
        let wakers = {
            let mut map = self.flights.map.lock();
            Flights::remove_if_current(&mut map, &self.flight);
            let mut st = self.flight.state.lock();
            st.phase = Phase::Done(outcome);
            take_wakers(&mut st.waiters)
        };
        wakers.into_iter().for_each(Waker::wake);
        drop(handoff);
    }
}

impl<H> Drop for Leader<H> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut leftover = self.handoff.take();
        let wakers = {
            let mut map = self.flights.map.lock();
            let mut st = self.flight.state.lock();
            if st.waiters.is_empty() {
                Flights::remove_if_current(&mut map, &self.flight);
                if !matches!(st.phase, Phase::Shared(_)) {
                    st.phase = Phase::Vacant;
                }
                Vec::new()
            } else if let Phase::Shared(_) = st.phase {
                // Waiters take the shared outcome; nobody needs to take over.
                Flights::remove_if_current(&mut map, &self.flight);
                take_wakers(&mut st.waiters)
            } else {
                st.phase = Phase::Vacant;
                st.handoff = leftover.take();
                take_wakers(&mut st.waiters)
            }
        };
        wakers.into_iter().for_each(Waker::wake);
        drop(leftover);
    }
}

/// Shares interim outcomes of a flight whose leader works in the background.
pub(crate) struct Sharer<H> {
    flight: Arc<Flight<H>>,
}

impl<H> Sharer<H> {
    /// Publishes an interim outcome: waiters and newcomers take it at once while the leader
    /// keeps working. Ignored once the flight is done.
    pub(crate) fn share(&self, outcome: AnyArc) {
        let wakers = {
            let mut st = self.flight.state.lock();
            if matches!(st.phase, Phase::Done(_)) {
                return;
            }
            st.phase = Phase::Shared(outcome);
            take_wakers(&mut st.waiters)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A caller waiting for a leader: a future of [`Waited`].
pub(crate) struct Waiter<H> {
    flights: Arc<Flights<H>>,
    flight: Arc<Flight<H>>,
    id: u64,
    done: bool,
}

impl<H> Future for Waiter<H> {
    type Output = Waited<H>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(!this.done, "Waiter polled after completion");
        let mut st = this.flight.state.lock();
        match &st.phase {
            Phase::Done(o) | Phase::Shared(o) => {
                let o = o.clone();
                st.waiters.remove(&this.id);
                drop(st);
                this.done = true;
                Poll::Ready(Waited::Outcome(o))
            }
            Phase::Vacant => {
                st.phase = Phase::Running;
                let handoff = st.handoff.take();
                st.waiters.remove(&this.id);
                drop(st);
                this.done = true;
                Poll::Ready(Waited::Promoted(Leader {
                    flights: this.flights.clone(),
                    flight: this.flight.clone(),
                    handoff,
                    done: false,
                }))
            }
            Phase::Running => {
                st.waiters.insert(this.id, Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

impl<H> Drop for Waiter<H> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let leftover = {
            let mut map = self.flights.map.lock();
            let mut st = self.flight.state.lock();
            st.waiters.remove(&self.id);
            if matches!(st.phase, Phase::Vacant) && st.waiters.is_empty() {
                // The leader is gone and so is every waiter: end the flight.
                Flights::remove_if_current(&mut map, &self.flight);
                st.handoff.take()
            } else {
                None
            }
        };
        drop(leftover);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ty() -> TypeId {
        TypeId::of::<u32>()
    }

    fn leader(j: Join<u8>) -> Leader<u8> {
        match j {
            Join::Leader(l) => l,
            Join::Waiter(_) => panic!("expected to lead"),
        }
    }

    fn waiter(j: Join<u8>) -> Waiter<u8> {
        match j {
            Join::Waiter(w) => w,
            Join::Leader(_) => panic!("expected to wait"),
        }
    }

    #[test]
    fn waiters_receive_the_leaders_outcome_and_the_flight_ends() {
        let flights = Arc::new(Flights::<u8>::default());
        let l = leader(flights.join("k", ty()));
        let w1 = waiter(flights.join("k", ty()));
        let w2 = waiter(flights.join("k", ty()));
        assert!(matches!(flights.join("other", ty()), Join::Leader(_)));
        l.complete(Arc::new(7u32));
        assert_eq!(flights.len(), 0, "a finished flight leaves the map");
        for w in [w1, w2] {
            match block_on(w) {
                Waited::Outcome(o) => assert_eq!(o.downcast_ref::<u32>(), Some(&7)),
                Waited::Promoted(_) => panic!("should not lead"),
            }
        }
        assert!(
            matches!(flights.join("k", ty()), Join::Leader(_)),
            "no poisoned entry"
        );
    }

    #[test]
    fn different_outcome_types_never_share() {
        let flights = Arc::new(Flights::<u8>::default());
        let _a = leader(flights.join("k", TypeId::of::<u32>()));
        let _b = leader(flights.join("k", TypeId::of::<String>()));
    }

    #[test]
    fn dropped_leader_hands_over_to_a_waiter_with_its_handoff() {
        let flights = Arc::new(Flights::<u8>::default());
        let mut l = leader(flights.join("k", ty()));
        l.set_handoff(Some(42));
        let w = waiter(flights.join("k", ty()));
        let w2 = waiter(flights.join("k", ty()));
        drop(l);
        let mut promoted = match block_on(w) {
            Waited::Promoted(l) => l,
            Waited::Outcome(_) => panic!("nobody computed"),
        };
        assert_eq!(promoted.take_handoff(), Some(42));
        // The second waiter keeps waiting for the new leader.
        promoted.complete(Arc::new(1u32));
        assert!(matches!(block_on(w2), Waited::Outcome(_)));
    }

    #[test]
    fn newcomer_takes_over_a_vacant_flight() {
        let flights = Arc::new(Flights::<u8>::default());
        let l = leader(flights.join("k", ty()));
        let w = waiter(flights.join("k", ty()));
        drop(l);
        // The woken waiter has not run yet; a newcomer may take over first.
        let mut newcomer = leader(flights.join("k", ty()));
        assert_eq!(newcomer.take_handoff(), None);
        newcomer.complete(Arc::new(3u32));
        assert!(matches!(block_on(w), Waited::Outcome(_)));
    }

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn handoff_is_dropped_when_nobody_is_left() {
        let drops = Arc::new(AtomicUsize::new(0));
        let flights = Arc::new(Flights::<Counted>::default());
        let mut l = match flights.join("k", ty()) {
            Join::Leader(l) => l,
            Join::Waiter(_) => unreachable!(),
        };
        l.set_handoff(Some(Counted(drops.clone())));
        let w = match flights.join("k", ty()) {
            Join::Waiter(w) => w,
            Join::Leader(_) => unreachable!(),
        };
        drop(l);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "kept for the waiter");
        drop(w);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "released with the last waiter"
        );
        assert_eq!(flights.len(), 0);

        let mut alone = match flights.join("k", ty()) {
            Join::Leader(l) => l,
            Join::Waiter(_) => unreachable!(),
        };
        alone.set_handoff(Some(Counted(drops.clone())));
        drop(alone);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn shared_outcome_reaches_waiters_and_newcomers_while_the_leader_works() {
        let flights = Arc::new(Flights::<u8>::default());
        let l = leader(flights.join("k", ty()));
        let w = waiter(flights.join("k", ty()));
        l.share(Arc::new(5u32));
        match block_on(w) {
            Waited::Outcome(o) => assert_eq!(o.downcast_ref::<u32>(), Some(&5)),
            Waited::Promoted(_) => panic!(),
        }
        let late = waiter(flights.join("k", ty()));
        assert!(matches!(block_on(late), Waited::Outcome(_)));
        l.complete(Arc::new(6u32));
        assert_eq!(flights.len(), 0);
    }
}
