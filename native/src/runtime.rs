//! [`TokioRuntime`]: core's [`Runtime`](larder_core::runtime::Runtime) on tokio, for work that
//! outlives a call (fail-safe refreshes, lease releases, backplane subscriptions).

use std::sync::Arc;

use larder_core::runtime::{BoxFuture, Runtime, SharedRuntime};
use tokio::runtime::Handle;

/// Spawns larder's background work on a tokio runtime.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use larder_core::runtime::Runtime;
/// use larder_native::TokioRuntime;
///
/// let (tx, rx) = tokio::sync::oneshot::channel();
/// TokioRuntime::current().spawn(Box::pin(async move {
///     let _ = tx.send(42);
/// }));
/// assert_eq!(rx.await.unwrap(), 42);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// The runtime this code runs in.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; use [`TokioRuntime::from_handle`] there.
    pub fn current() -> Self {
        TokioRuntime {
            handle: Handle::current(),
        }
    }

    /// A specific runtime.
    pub fn from_handle(handle: Handle) -> Self {
        TokioRuntime { handle }
    }

    /// [`TokioRuntime::current`] behind an `Arc`, as caches take it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn shared() -> SharedRuntime {
        Arc::new(TokioRuntime::current())
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.handle.spawn(task);
    }
}
