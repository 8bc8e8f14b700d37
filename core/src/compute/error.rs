//! [`ComputeError`]: why a `get_with` call returned no value.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// Why a [`ComputeCache`](super::ComputeCache) call returned no value.
///
/// Cache failures (Redis down, the circuit breaker open, a lease that cannot be taken) are
/// not among them: the value is computed and returned anyway, and the failure is counted in
/// [`ComputeStats`](super::ComputeStats). Only a closed cache or a rejected argument
/// surfaces as [`ComputeError::Cache`].
///
/// Coalesced callers receive clones of the leader's outcome, so the compute error is shared
/// behind an [`Arc`] (as in moka's `try_get_with`).
#[non_exhaustive]
pub enum ComputeError<E = Infallible> {
    /// The computation failed; every caller coalesced onto it receives the same error.
    Compute(Arc<E>),
    /// The call's hard timeout passed before a value was available (and there was no stale
    /// value to serve). Raise `hard_timeout`, or enable fail-safe with a stale window.
    Timeout {
        /// The hard timeout that passed.
        after: Duration,
    },
    /// Another process held the key's lease for longer than the wait bound, and the wait
    /// policy is [`WaitPolicy::Error`](super::WaitPolicy::Error). Raise `max_wait` or the
    /// poll budget, or choose another [`WaitPolicy`](super::WaitPolicy).
    LockWait {
        /// How long this call waited.
        waited: Duration,
        /// How many times it polled the cache and the lease.
        polls: u32,
    },
    /// The cache refused the call: it is closed, or an argument (a zero TTL, a value that
    /// does not serialize) was rejected.
    Cache(Error),
}

impl<E> ComputeError<E> {
    /// The computation's error, when that is what failed.
    pub fn compute_error(&self) -> Option<&E> {
        match self {
            ComputeError::Compute(e) => Some(e),
            _ => None,
        }
    }

    /// The cache's error, when the cache refused the call.
    pub fn as_cache(&self) -> Option<&Error> {
        match self {
            ComputeError::Cache(e) => Some(e),
            _ => None,
        }
    }

    /// True for [`ComputeError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ComputeError::Timeout { .. })
    }

    /// True for [`ComputeError::LockWait`].
    pub fn is_lock_wait(&self) -> bool {
        matches!(self, ComputeError::LockWait { .. })
    }
}

impl ComputeError<Infallible> {
    /// Widens an error of an infallible computation to any error type.
    pub fn widen<E>(self) -> ComputeError<E> {
        match self {
            ComputeError::Compute(e) => match *e {},
            ComputeError::Timeout { after } => ComputeError::Timeout { after },
            ComputeError::LockWait { waited, polls } => ComputeError::LockWait { waited, polls },
            ComputeError::Cache(e) => ComputeError::Cache(e),
        }
    }
}

impl<E> Clone for ComputeError<E> {
    fn clone(&self) -> Self {
        match self {
            ComputeError::Compute(e) => ComputeError::Compute(e.clone()),
            ComputeError::Timeout { after } => ComputeError::Timeout { after: *after },
            ComputeError::LockWait { waited, polls } => ComputeError::LockWait {
                waited: *waited,
                polls: *polls,
            },
            ComputeError::Cache(e) => ComputeError::Cache(e.clone()),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for ComputeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeError::Compute(e) => f.debug_tuple("Compute").field(e).finish(),
            ComputeError::Timeout { after } => {
                f.debug_struct("Timeout").field("after", after).finish()
            }
            ComputeError::LockWait { waited, polls } => f
                .debug_struct("LockWait")
                .field("waited", waited)
                .field("polls", polls)
                .finish(),
            ComputeError::Cache(e) => f.debug_tuple("Cache").field(e).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for ComputeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeError::Compute(e) => write!(f, "computing the value failed: {e}"),
            ComputeError::Timeout { after } => write!(
                f,
                "no value within the hard timeout of {after:?}; raise hard_timeout or enable \
                 fail-safe stale serving"
            ),
            ComputeError::LockWait { waited, polls } => write!(
                f,
                "another process held the lease for {waited:?} ({polls} polls), past the wait \
                 bound; raise max_wait / max_polls or choose another WaitPolicy"
            ),
            ComputeError::Cache(e) => write!(f, "cache refused the call: {e}"),
        }
    }
}

impl<E> std::error::Error for ComputeError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ComputeError::Compute(e) => Some(&**e),
            ComputeError::Cache(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<Error> for ComputeError<E> {
    fn from(e: Error) -> Self {
        ComputeError::Cache(e)
    }
}
