//! [`CachedTool`]: a rig `Tool` whose results come from a [`ToolCache`].

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use larder_core::Cache;
use larder_core::compute::ComputeError;
use larder_core::tools::{ToolCache, ToolCall};
use rig_core::tool::{ContextValue, Tool, ToolContext, ToolExecutionError};
use rig_core::wasm_compat::WasmCompatSend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The tenant a tool call is made for, read from the call's `ToolContext` by
/// [`CachedTool`] (for tools cached per [`ToolScope::Tenant`](crate::tools::ToolScope)).
///
/// ```
/// use larder::rig::Tenant;
/// use rig_core::tool::ToolContext;
///
/// let mut context = ToolContext::default();
/// context.insert(Tenant("acme".into()))?;
/// # Ok::<(), rig_core::tool::ToolContextError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tenant(pub String);

impl ContextValue for Tenant {
    const KEY: &'static str = "larder.tenant";
}

/// The session a tool call is made in, read from the call's `ToolContext` by
/// [`CachedTool`] (for tools cached per [`ToolScope::Session`](crate::tools::ToolScope)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session(pub String);

impl ContextValue for Session {
    const KEY: &'static str = "larder.session";
}

/// A rig `Tool` that answers calls from a [`ToolCache`] and runs the tool it wraps on a
/// miss.
///
/// A call is the tool's `NAME` and its arguments serialized to JSON (compared
/// canonically: key order and number spelling do not matter), made for the [`Tenant`] and
/// in the [`Session`] found in its `ToolContext`. The cache's [`ToolPolicy`] for the name
/// decides: cached for a TTL (per tenant or session when scoped), or never cached — and a
/// tool without a policy is not cached unless the cache has a default policy. Concurrent
/// identical calls run the tool once. The name, description and parameters are the
/// wrapped tool's.
///
/// The wrapped tool's arguments must be `Serialize` and its output `Serialize` and
/// `Deserialize` (a hit is the stored JSON read back into the output type).
///
/// A hit does not run the tool, so it writes nothing into the `ToolContext` (result
/// metadata included). A tool whose answer depends on what its context carries (a user's
/// credentials) must be scoped per tenant or session, or never cached.
///
/// # Errors
///
/// The wrapped tool's error ([`CachedToolError::tool_error`]), shared by the calls
/// coalesced onto one run; `map_error` is the wrapped tool's when the error is not
/// shared. The cache never fails a call: when it cannot be used (unreachable, a
/// scoped tool called without its tenant or session, a stored result that no longer
/// reads as the output type) the tool runs, uncached, and the cause is logged.
///
/// [`ToolPolicy`]: crate::tools::ToolPolicy
pub struct CachedTool<T, C> {
    tool: T,
    cache: Arc<ToolCache<C>>,
}

impl<T, C> fmt::Debug for CachedTool<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedTool")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<T: Clone, C> Clone for CachedTool<T, C> {
    fn clone(&self) -> Self {
        CachedTool {
            tool: self.tool.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<T, C> CachedTool<T, C> {
    /// Wraps `tool`, answering from `cache` (one cache for every tool of an agent: it keeps
    /// the per-tool statistics).
    pub fn new(tool: T, cache: Arc<ToolCache<C>>) -> Self {
        CachedTool { tool, cache }
    }

    /// The wrapped tool.
    pub fn tool(&self) -> &T {
        &self.tool
    }

    /// The tool cache.
    pub fn cache(&self) -> &Arc<ToolCache<C>> {
        &self.cache
    }
}

/// A failed call of a [`CachedTool`]: the wrapped tool's error, or (after the tool ran) its
/// output that could not be stored.
pub struct CachedToolError<E> {
    repr: Repr<E>,
}

enum Repr<E> {
    /// Shared by the calls coalesced onto one run of the tool.
    Failed(Arc<Failure<E>>),
    Cache(String),
}

/// Why a run of the tool gave no result to cache.
enum Failure<E> {
    Tool(E),
    Output(serde_json::Error),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Tool(e) => e.fmt(f),
            Failure::Output(e) => write!(
                f,
                "the tool's output is not JSON, so it cannot be cached: {e}; give the tool a \
                 never-cache policy or an output that serializes"
            ),
        }
    }
}

impl<E> CachedToolError<E> {
    /// The wrapped tool's error, when the tool failed (in this call or in the call it was
    /// coalesced onto).
    pub fn tool_error(&self) -> Option<&E> {
        match &self.repr {
            Repr::Failed(f) => match &**f {
                Failure::Tool(e) => Some(e),
                Failure::Output(_) => None,
            },
            Repr::Cache(_) => None,
        }
    }

    fn tool(e: E) -> Self {
        CachedToolError {
            repr: Repr::Failed(Arc::new(Failure::Tool(e))),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for CachedToolError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Failed(failure) => match &**failure {
                Failure::Tool(e) => f.debug_tuple("Tool").field(e).finish(),
                Failure::Output(e) => f.debug_tuple("Output").field(e).finish(),
            },
            Repr::Cache(e) => f.debug_tuple("Cache").field(e).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CachedToolError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Failed(failure) => failure.fmt(f),
            Repr::Cache(e) => write!(f, "the tool's result was lost by the cache: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CachedToolError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.repr {
            Repr::Failed(failure) => match &**failure {
                Failure::Tool(e) => e.source(),
                Failure::Output(e) => Some(e),
            },
            Repr::Cache(_) => None,
        }
    }
}

/// The arguments and context of a call until the tool runs with them: on a miss, inside
/// the cache's computation; otherwise in the caller, uncached.
struct Pending<'a, A>(Mutex<Option<(&'a mut ToolContext, A)>>);

impl<'a, A> Pending<'a, A> {
    fn take(&self) -> Option<(&'a mut ToolContext, A)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl<T, C> Tool for CachedTool<T, C>
where
    T: Tool,
    T::Args: Serialize,
    T::Output: Serialize + DeserializeOwned + WasmCompatSend + 'static,
    C: Cache + 'static,
{
    const NAME: &'static str = T::NAME;
    type Args = T::Args;
    type Output = T::Output;
    type Error = CachedToolError<T::Error>;

    fn description(&self) -> String {
        self.tool.description()
    }

    fn parameters(&self) -> Json {
        self.tool.parameters()
    }

    fn map_error(&self, error: Self::Error) -> ToolExecutionError {
        match error.repr {
            Repr::Failed(failure) => match Arc::try_unwrap(failure) {
                Ok(Failure::Tool(e)) => self.tool.map_error(e),
                Ok(failure) => ToolExecutionError::from_error(CachedToolError::<T::Error> {
                    repr: Repr::Failed(Arc::new(failure)),
                }),
                Err(shared) => ToolExecutionError::from_error(CachedToolError::<T::Error> {
                    repr: Repr::Failed(shared),
                }),
            },
            repr => ToolExecutionError::from_error(CachedToolError::<T::Error> { repr }),
        }
    }

    async fn call(
        &self,
        context: &mut ToolContext,
        args: Self::Args,
    ) -> Result<Self::Output, Self::Error> {
        let Some(call) = self.call_of(context, &args) else {
            return self
                .tool
                .call(context, args)
                .await
                .map_err(CachedToolError::tool);
        };
        let pending = Pending(Mutex::new(Some((context, args))));
        let own: Mutex<Option<T::Output>> = Mutex::new(None);
        let fetched = self
            .cache
            .call(&call, || async {
                let Some((context, args)) = pending.take() else {
                    return already_run();
                };
                let output = self.tool.call(context, args).await.map_err(Failure::Tool)?;
                let json = serde_json::to_value(&output).map_err(Failure::Output)?;
                *own.lock().unwrap_or_else(PoisonError::into_inner) = Some(output);
                Ok(json)
            })
            .await;
        if let Some(output) = own.lock().unwrap_or_else(PoisonError::into_inner).take() {
            // This call ran the tool: its own output, whatever the cache did with it.
            return Ok(output);
        }
        let cause = match fetched {
            Ok(fetched) => match serde_json::from_value::<T::Output>(fetched.value) {
                Ok(output) => return Ok(output),
                Err(e) => format!("the stored result does not read as the tool's output: {e}"),
            },
            Err(ComputeError::Compute(failure)) => {
                return Err(CachedToolError {
                    repr: Repr::Failed(failure),
                });
            }
            Err(e) => e.to_string(),
        };
        match pending.take() {
            Some((context, args)) => {
                tracing::warn!(tool = T::NAME, %cause, "larder: running the tool uncached");
                self.tool
                    .call(context, args)
                    .await
                    .map_err(CachedToolError::tool)
            }
            None => Err(CachedToolError {
                repr: Repr::Cache(cause),
            }),
        }
    }
}

impl<T: Tool, C: Cache + 'static> CachedTool<T, C>
where
    T::Args: Serialize,
{
    /// The call to look up, or `None` to run the tool uncached: the call cannot be keyed
    /// (the cause is logged).
    fn call_of(&self, context: &ToolContext, args: &T::Args) -> Option<ToolCall> {
        let json = match serde_json::to_value(args) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(tool = T::NAME, error = %e, "larder: arguments are not JSON; running the tool uncached");
                return None;
            }
        };
        let mut call = ToolCall::new(T::NAME, json);
        if let Ok(Some(Tenant(tenant))) = context.get::<Tenant>() {
            call = call.tenant(tenant);
        }
        if let Ok(Some(Session(session))) = context.get::<Session>() {
            call = call.session(session);
        }
        // A tool its policy does not cache is run (and counted) by the cache as it is.
        if self.cache.policy(T::NAME).is_cached()
            && let Err(e) = self.cache.key(&call)
        {
            tracing::warn!(tool = T::NAME, error = %e, "larder: running the tool uncached");
            return None;
        }
        Some(call)
    }
}

/// The cache runs a computation at most once per call, with the arguments still pending.
fn already_run<V, E>() -> Result<V, Failure<E>> {
    Err(Failure::Output(
        <serde_json::Error as serde::de::Error>::custom("the tool was already run for this call"),
    ))
}
