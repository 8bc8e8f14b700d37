//! rig integration: any [rig](https://docs.rs/rig-core/0.44.0) model answered from a
//! [`ResponseCache`](crate::ResponseCache), and rig tools answered from a
//! [`ToolCache`](crate::tools::ToolCache) (feature `rig`, rig-core 0.44).
//!
//! Both follow rig's own extension points and fork none of its types:
//!
//! - **Models.** A rig model is a `Model<W, T>`: a wire `W` (what to send, how to read the
//!   reply) and a transport `T` (how the payload travels). [`CachedTransport`] is a rig
//!   `Transport` that wraps another: a request it has an answer for is answered from the
//!   cache (`Opening::ready`), any other goes to the inner transport and its reply is
//!   recorded as rig reads it. [`cached`] puts one under a model. Unary calls
//!   (`Model::call`) and streamed calls (`Model::stream`) are both cached; tool calls in a
//!   reply come back exactly as the provider sent them, because what is stored is the
//!   provider's reply itself (its frames), decoded again by rig's own wire on every hit.
//! - **Tools.** [`CachedTool`] is a rig `Tool` that wraps another: a call is answered from
//!   the tool cache when the tool's [`ToolPolicy`](crate::tools::ToolPolicy) caches it, and
//!   runs the tool otherwise. [`Tenant`] and [`Session`] in the call's `ToolContext` name
//!   whom a tenant- or session-scoped result belongs to.
//!
//! Neither ever fails a call because of the cache: a cache that cannot be reached, or an
//! entry that cannot be used, means the model or the tool is called.
//!
//! # Examples
//!
//! ```
//! use larder::rig::{CachedTool, cached};
//! use larder::tools::{ToolCache, ToolPolicy};
//! use larder::{ComputeCache, MemoryCache, ResponseCache};
//! use rig_core::http_client::DynHttpClient;
//! use rig_core::providers::openai::OpenAIConfig;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! # fn build(http: DynHttpClient) -> Result<(), Box<dyn std::error::Error>> {
//! // Model answers: one ResponseCache for every model (Redis, memory or tiered).
//! let answers = ResponseCache::local(MemoryCache::builder().build()?)
//!     .default_ttl(Duration::from_secs(3600))
//!     .build()?;
//! let openai = OpenAIConfig::new("sk-…").connect(http);
//! let model = cached(openai.chat("gpt-4o-mini"), &answers);
//! // `model.call(…)` and `model.stream(…)` now read through the cache.
//! # let _ = model;
//!
//! // Tool results: one ToolCache, a policy per tool.
//! let engine = ComputeCache::builder(MemoryCache::builder().build()?).build()?;
//! let tools = Arc::new(
//!     ToolCache::builder(engine)
//!         .policy("web_search", ToolPolicy::cache_for(Duration::from_secs(600)))
//!         .build()?,
//! );
//! # struct WebSearch;
//! # impl rig_core::tool::PortableTool for WebSearch {
//! #     const NAME: &'static str = "web_search";
//! #     type Args = serde_json::Value;
//! #     type Output = Vec<String>;
//! #     type Error = std::io::Error;
//! #     fn description(&self) -> String { "Searches the web.".into() }
//! #     fn parameters(&self) -> serde_json::Value { serde_json::json!({"type": "object"}) }
//! #     async fn call(&self, _: serde_json::Value) -> Result<Vec<String>, std::io::Error> { Ok(vec![]) }
//! # }
//! let search = CachedTool::new(WebSearch, tools.clone());
//! // Register `search` with an agent or a tool server like any rig tool.
//! # let _ = search;
//! # Ok(())
//! # }
//! ```

mod tool;
mod transport;

pub use tool::{CachedTool, CachedToolError, Session, Tenant};
pub use transport::{CachedTransport, cached};
