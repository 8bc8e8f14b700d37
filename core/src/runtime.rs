//! Injected background work: [`Runtime`] runs a future after the call that started it has
//! returned.
//!
//! Core has no executor and cannot spawn (there is no tokio here, and `wasm32` has no
//! threads). Features that outlive a call — a fail-safe refresh that continues after a stale
//! value was served, releasing a lease whose holder was dropped, re-subscribing a backplane —
//! take a [`Runtime`] from the adapter: `larder_native::TokioRuntime` (`tokio::spawn`), on
//! Workers one built over `ctx.wait_until`. Without one, those features degrade as each
//! documents (work is cancelled instead of finished, a lease expires instead of being
//! released).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::transport::{MaybeSend, MaybeSync};

/// A boxed future: `Send` on native targets, not on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed future: `Send` on native targets, not on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs futures in the background.
///
/// # Examples
///
/// A runtime that drives tasks on a thread pool would call its `spawn`; here, one that
/// drops them (what core does when no runtime is configured):
///
/// ```
/// use larder_core::runtime::{BoxFuture, Runtime};
///
/// #[derive(Debug)]
/// struct Discard;
///
/// impl Runtime for Discard {
///     fn spawn(&self, task: BoxFuture<'static, ()>) {
///         drop(task);
///     }
/// }
/// Discard.spawn(Box::pin(async {}));
/// ```
pub trait Runtime: MaybeSend + MaybeSync + Debug {
    /// Starts `task` and returns at once; the task runs to completion in the background.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// A runtime shared by many caches.
pub type SharedRuntime = Arc<dyn Runtime>;

impl<R: Runtime + ?Sized> Runtime for Arc<R> {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        (**self).spawn(task)
    }
}

/// A waker that wakes every task registered with it: poll a stream shared by several
/// readers with it (`Waker::from(Arc<FanOutWaker>)`), so that whichever reader polled it last
/// need not be the one that is still listening. Used for a stream in flight read by several
/// callers, and for one subscription stream read by several subscribers.
#[derive(Default)]
pub struct FanOutWaker {
    waiting: std::sync::Mutex<Vec<(u64, std::task::Waker)>>,
}

impl Debug for FanOutWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOutWaker")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

impl FanOutWaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, std::task::Waker)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or replaces) the waker of reader `id`.
    pub fn register(&self, id: u64, waker: &std::task::Waker) {
        let mut w = self.lock();
        match w.iter_mut().find(|(i, _)| *i == id) {
            Some((_, old)) => old.clone_from(waker),
            None => w.push((id, waker.clone())),
        }
    }

    /// Forgets reader `id`.
    pub fn unregister(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    /// Wakes (and forgets) every reader registered.
    pub fn wake_all(&self) {
        let waiting = std::mem::take(&mut *self.lock());
        for (_, w) in waiting {
            w.wake();
        }
    }
}

impl std::task::Wake for FanOutWaker {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}
