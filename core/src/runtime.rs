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
