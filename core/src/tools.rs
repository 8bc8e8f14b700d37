//! Tool results: a cache for the tool calls of agents (the same search, the same lookup),
//! over the same get-or-compute engine as model answers.
//!
//! A [`ToolCache`] wraps a [`ComputeCache`]: a call is keyed by the tool's name and its
//! canonical arguments (key order and number spelling do not matter), computed once however
//! many callers ask at once (and, with the engine's lease, however many processes), and
//! stored as an [`Envelope`] every larder reader understands. Each tool has a
//! [`ToolPolicy`]: how long its results live, whom they are shared with ([`ToolScope`]), or
//! never to cache them. **A tool without a policy is not cached** unless a default policy is
//! given: a tool that reads one user's data must never answer another user from the cache
//! by accident.
//!
//! # Keys
//!
//! `tool:{name}:{scope}:{hash}` under the cache's prefix, where `scope` is `g` (global),
//! `t.{h}` (tenant) or `s.{h}` (session), `h` the first 32 hex digits of the SHA-256 of the
//! tenant or session id, and `hash` the SHA-256 (or, with a [`HashKey`], the HMAC under the
//! tool's HKDF key) of the arguments' canonical JSON. [`ToolCache::invalidate_tool`] deletes
//! `tool:{name}:*`. See docs/KEY_FORMAT.md §11.
//!
//! # Examples
//!
//! ```
//! # futures_executor::block_on(async {
//! use std::time::Duration;
//! use larder_core::compute::{ComputeCache, Status};
//! use larder_core::tools::{ToolCache, ToolCall, ToolPolicy, ToolScope};
//! use larder_core::MemoryCache;
//! use serde_json::json;
//!
//! let engine = ComputeCache::builder(MemoryCache::builder().build()?).build()?;
//! let tools = ToolCache::builder(engine)
//!     .policy("web_search", ToolPolicy::cache_for(Duration::from_secs(3600)))
//!     .policy("read_inbox", ToolPolicy::cache_for(Duration::from_secs(60)).scope(ToolScope::Tenant))
//!     .policy("send_email", ToolPolicy::never())
//!     .build()?;
//!
//! let call = ToolCall::new("web_search", json!({"q": "capital of France", "n": 3}));
//! let first = tools.call(&call, || async { Ok::<_, std::io::Error>(json!(["Paris"])) }).await?;
//! // The same arguments in another order: the same call.
//! let again = ToolCall::new("web_search", json!({"n": 3, "q": "capital of France"}));
//! let second = tools.call(&again, || async { Ok::<_, std::io::Error>(json!(["?"])) }).await?;
//! assert_eq!((first.status, second.status), (Status::Miss, Status::Hit));
//! assert_eq!(second.value, json!(["Paris"]));
//! assert_eq!(tools.stats()["web_search"].hits, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use bytes::Bytes;

use crate::compute::{CacheValue, ComputeCache, ComputeError, Fetched, Status};
use crate::envelope::{Decoded, Envelope};
use crate::error::{Error, Result};
use crate::keys::canonical_json;
use crate::seal::HashKey;
use crate::transport::{MaybeSend, MaybeSync};

/// Whom a tool's cached results are shared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ToolScope {
    /// Every caller (a public web search, a weather lookup).
    #[default]
    Global,
    /// Callers of the same tenant ([`ToolCall::tenant`]); a call without a tenant is an
    /// error.
    Tenant,
    /// Callers of the same session ([`ToolCall::session`]); a call without a session is an
    /// error.
    Session,
}

/// How one tool's results are cached.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPolicy {
    /// `None`: never cached.
    ttl: Option<Duration>,
    scope: ToolScope,
    /// What one call costs (for the cost saved by hits), in billionths of a dollar.
    cost_nanousd: u64,
}

impl ToolPolicy {
    /// Results are kept for `ttl`, shared globally (change it with [`scope`](Self::scope)).
    pub fn cache_for(ttl: Duration) -> Self {
        ToolPolicy {
            ttl: Some(ttl),
            scope: ToolScope::Global,
            cost_nanousd: 0,
        }
    }

    /// Results are never cached: every call runs the tool (writes, actions, anything whose
    /// answer must be current).
    pub fn never() -> Self {
        ToolPolicy {
            ttl: None,
            scope: ToolScope::Global,
            cost_nanousd: 0,
        }
    }

    /// Whom results are shared with (default [`ToolScope::Global`]).
    pub fn scope(mut self, scope: ToolScope) -> Self {
        self.scope = scope;
        self
    }

    /// What one call of the tool costs in US dollars (a paid API), counted as saved on
    /// every call served from the cache. Negative or non-finite amounts count as 0.
    pub fn cost_per_call(mut self, usd: f64) -> Self {
        self.cost_nanousd = if usd.is_finite() && usd > 0.0 {
            (usd * 1e9).round() as u64
        } else {
            0
        };
        self
    }

    /// Whether results are cached.
    pub fn is_cached(&self) -> bool {
        self.ttl.is_some()
    }
}

/// One call of a tool: its name, its arguments, and who makes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    name: String,
    args: Json,
    tenant: Option<String>,
    session: Option<String>,
}

impl ToolCall {
    /// A call of tool `name` with `args` (any JSON; objects are compared whatever their key
    /// order).
    pub fn new(name: impl Into<String>, args: Json) -> Self {
        ToolCall {
            name: name.into(),
            args,
            tenant: None,
            session: None,
        }
    }

    /// The tenant making the call (for [`ToolScope::Tenant`]).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The session making the call (for [`ToolScope::Session`]).
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments.
    pub fn args(&self) -> &Json {
        &self.args
    }
}

/// One tool's counters since its [`ToolCache`] was built (this process only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolStats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that ran the tool and stored its result.
    pub misses: u64,
    /// Calls that waited for another caller's run of the same call.
    pub coalesced: u64,
    /// Calls answered with a stale result (the tool failed or was slow).
    pub stale: u64,
    /// Calls of a tool whose policy does not cache (run every time).
    pub uncached: u64,
    /// Calls that failed (the tool's error, or the cache's).
    pub errors: u64,
    /// Tool time saved: the recorded duration of each result served from the cache
    /// (hits, coalesced and stale calls), in milliseconds.
    pub time_saved_ms: u64,
    /// Cost saved ([`ToolPolicy::cost_per_call`] per call served from the cache), in
    /// billionths of a dollar.
    pub cost_saved_nanousd: u64,
}

impl ToolStats {
    /// The share of cached-policy calls answered without running the tool (hits, coalesced
    /// and stale over every such call); 0 before any.
    pub fn hit_rate(&self) -> f64 {
        let served = self.hits + self.coalesced + self.stale;
        let total = served + self.misses;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

/// Builds a [`ToolCache`]; start with [`ToolCache::builder`].
#[must_use]
pub struct ToolCacheBuilder<C> {
    engine: ComputeCache<C>,
    policies: HashMap<String, ToolPolicy>,
    default: ToolPolicy,
    hash_key: Option<HashKey>,
    invalid: Vec<String>,
}

impl<C> fmt::Debug for ToolCacheBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCacheBuilder")
            .field("policies", &self.policies)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl<C: Cache + 'static> ToolCacheBuilder<C> {
    /// The policy of tool `name` (replacing an earlier one).
    pub fn policy(mut self, name: impl Into<String>, policy: ToolPolicy) -> Self {
        let name = name.into();
        if check_name(&name).is_err() {
            self.invalid.push(name);
            return self;
        }
        self.policies.insert(name, policy);
        self
    }

    /// The policy of tools without one (default [`ToolPolicy::never`]: only tools named in
    /// a [`policy`](Self::policy) are cached).
    pub fn default_policy(mut self, policy: ToolPolicy) -> Self {
        self.default = policy;
        self
    }

    /// Hashes arguments with HMAC-SHA-256 under a per-tool key derived from `key` (HKDF),
    /// so the keys in Redis say nothing about the arguments without the secret (see
    /// docs/SECURITY.md).
    pub fn hash_key(mut self, key: HashKey) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// Builds the tool cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a policy given to a name that is not a tool name (see
    /// [`ToolCache::call`]).
    pub fn build(self) -> Result<ToolCache<C>> {
        if let Some(name) = self.invalid.first() {
            check_name(name)?;
        }
        Ok(ToolCache {
            engine: self.engine,
            policies: self.policies,
            default: self.default,
            hash_key: self.hash_key,
            stats: Mutex::new(BTreeMap::new()),
        })
    }
}

/// A cache of tool results over a [`ComputeCache`] (see the [module docs](self)).
pub struct ToolCache<C> {
    engine: ComputeCache<C>,
    policies: HashMap<String, ToolPolicy>,
    default: ToolPolicy,
    hash_key: Option<HashKey>,
    stats: Mutex<BTreeMap<String, ToolStats>>,
}

impl<C> fmt::Debug for ToolCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCache")
            .field("policies", &self.policies)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// The most tools [`ToolCache::stats`] counts.
const MAX_COUNTED: usize = 1024;

/// The longest tool name.
const MAX_NAME: usize = 128;

/// Tool names are ASCII letters, digits, `_`, `-` and `.` (what OpenAI, Anthropic and rig
/// allow), so a name never reads as a glob or another key's segment.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{name:?} is not a tool name: use 1 to {MAX_NAME} ASCII letters, digits, '_', '-' \
             or '.'"
        )))
    }
}

fn short_hash(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    crate::transport::hex(&digest[..16])
}

/// The tool's time, as recorded in its stored result.
const ELAPSED_MS: &str = "tool_elapsed_ms";

/// What a tool call stores: the envelope, and its result read once. An entry that is not a
/// tool result (another program's value at the key, bytes that are no envelope or whose
/// `response` is not JSON) does not decode, which the engine counts as a corrupt miss and
/// recomputes — a cache problem never fails the call.
#[derive(Debug, Clone)]
struct Stored {
    envelope: Envelope,
    value: Json,
}

impl CacheValue for Stored {
    fn encode(&self) -> Result<Bytes> {
        Ok(self.envelope.encode())
    }

    fn decode(bytes: &Bytes) -> Option<Self> {
        let Decoded::Envelope(envelope) = Envelope::decode(bytes) else {
            return None;
        };
        let value = serde_json::from_str(&envelope.response).ok()?;
        Some(Stored { envelope, value })
    }

    fn windows(&self) -> Option<(Option<u64>, Option<u64>)> {
        self.envelope.windows()
    }

    fn set_windows(&mut self, fresh_until: Option<u64>, stale_until: Option<u64>) {
        self.envelope.set_windows(fresh_until, stale_until);
    }

    fn stored_at_ms(&self) -> Option<u64> {
        CacheValue::stored_at_ms(&self.envelope)
    }
}

impl<C: Cache + 'static> ToolCache<C> {
    /// Starts building a tool cache over `engine` (its lease, timeouts, fail-safe window and
    /// clock apply to tool calls).
    pub fn builder(engine: ComputeCache<C>) -> ToolCacheBuilder<C> {
        ToolCacheBuilder {
            engine,
            policies: HashMap::new(),
            default: ToolPolicy::never(),
            hash_key: None,
            invalid: Vec::new(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &ComputeCache<C> {
        &self.engine
    }

    /// The policy that applies to tool `name`.
    pub fn policy(&self, name: &str) -> &ToolPolicy {
        self.policies.get(name).unwrap_or(&self.default)
    }

    /// The key `call` is stored under (before the cache's prefix).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a name that is not a tool name, or a tenant- or
    /// session-scoped tool called without its tenant or session; [`Error::Serialize`] for
    /// arguments that are not JSON-representable.
    pub fn key(&self, call: &ToolCall) -> Result<String> {
        check_name(&call.name)?;
        let scope = match self.policy(&call.name).scope {
            ToolScope::Global => "g".to_owned(),
            ToolScope::Tenant => match &call.tenant {
                Some(t) => format!("t.{}", short_hash(t)),
                None => {
                    return Err(Error::InvalidInput(format!(
                        "tool {:?} is cached per tenant: give the call its tenant \
                         (ToolCall::tenant)",
                        call.name
                    )));
                }
            },
            ToolScope::Session => match &call.session {
                Some(s) => format!("s.{}", short_hash(s)),
                None => {
                    return Err(Error::InvalidInput(format!(
                        "tool {:?} is cached per session: give the call its session \
                         (ToolCall::session)",
                        call.name
                    )));
                }
            },
        };
        let args = canonical_json(&call.args)?;
        let hash = match &self.hash_key {
            Some(k) => k
                .for_tenant(&format!("tool:{}", call.name))
                .hash_hex(args.as_bytes()),
            None => crate::transport::hex(&Sha256::digest(args.as_bytes())),
        };
        Ok(format!("tool:{}:{scope}:{hash}", call.name))
    }

    /// Runs `call` through the cache: its stored result when there is one, else `run()`
    /// (once for every caller asking at the same time), stored under the tool's policy. A
    /// tool whose policy does not cache runs every time (status `MISS`).
    ///
    /// # Errors
    ///
    /// [`ComputeError::Compute`] with the tool's error (nothing is stored);
    /// [`ComputeError::Cache`] with [`Error::InvalidInput`] for a bad call (see
    /// [`key`](Self::key)), before the tool runs; otherwise as
    /// [`ComputeCache::try_fetch`]. A cache that cannot be reached does not fail the call:
    /// the tool runs.
    pub async fn call<F, Fut, E>(
        &self,
        call: &ToolCall,
        run: F,
    ) -> std::result::Result<Fetched<Json>, ComputeError<E>>
    where
        F: FnOnce() -> Fut + MaybeSend,
        Fut: Future<Output = std::result::Result<Json, E>> + MaybeSend,
        E: MaybeSend + MaybeSync + 'static,
    {
        let policy = self.policy(&call.name).clone();
        let Some(ttl) = policy.ttl else {
            check_name(&call.name).map_err(ComputeError::Cache)?;
            self.count(&call.name, |s| s.uncached += 1);
            let out = run().await;
            if out.is_err() {
                self.count(&call.name, |s| s.errors += 1);
            }
            return out
                .map(|v| Fetched::new(v, Status::Miss))
                .map_err(|e| ComputeError::Compute(std::sync::Arc::new(e)));
        };
        let key = match self.key(call) {
            Ok(k) => k,
            Err(e) => {
                self.count(&call.name, |s| s.errors += 1);
                return Err(ComputeError::Cache(e));
            }
        };
        let clock = self.engine.clock().clone();
        let name = call.name.clone();
        let compute = async move {
            let started = clock.now_ms();
            let value = run().await?;
            let elapsed = clock.now_ms().saturating_sub(started);
            let now_s = i64::try_from(clock.now_ms() / 1000).unwrap_or(i64::MAX);
            let envelope = Envelope::new(value.to_string(), format!("tool:{name}"), now_s)
                .with_metadata(ELAPSED_MS, elapsed)
                .with_tags([format!("tool:{name}")]);
            Ok(Stored { envelope, value })
        };
        let fetched = self
            .engine
            .try_fetch::<Stored, _, E>(&key, Some(ttl), compute)
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                self.count(&call.name, |s| s.errors += 1);
                return Err(e);
            }
        };
        let saved_ms = fetched
            .value
            .envelope
            .metadata
            .get(ELAPSED_MS)
            .and_then(Json::as_u64)
            .unwrap_or(0);
        let status = fetched.status;
        self.count(&call.name, |s| {
            match status {
                Status::Hit => s.hits += 1,
                Status::Coalesced => s.coalesced += 1,
                Status::Stale => s.stale += 1,
                _ => s.misses += 1,
            }
            if status != Status::Miss {
                s.time_saved_ms += saved_ms;
                s.cost_saved_nanousd += policy.cost_nanousd;
            }
        });
        metrics::counter!(
            "larder_tool_calls_total",
            "tool" => call.name.clone(),
            "status" => status.as_str()
        )
        .increment(1);
        if status != Status::Miss {
            metrics::counter!("larder_tool_time_saved_ms_total", "tool" => call.name.clone())
                .increment(saved_ms);
            metrics::counter!("larder_tool_cost_saved_nanousd_total", "tool" => call.name.clone())
                .increment(policy.cost_nanousd);
        }
        tracing::debug!(tool = %call.name, status = status.as_str(), "larder: tool call");
        Ok(Fetched {
            value: fetched.value.value,
            status,
            stored_at_ms: fetched.stored_at_ms,
        })
    }

    /// Deletes every stored result of tool `name` (every scope, every arguments). Returns
    /// how many entries were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a name that is not a tool name; the cache's error.
    pub async fn invalidate_tool(&self, name: &str) -> Result<u64> {
        check_name(name)?;
        self.engine
            .cache()
            .delete_pattern(&format!("tool:{name}:*"))
            .await
    }

    /// Every tool's counters so far, by name.
    pub fn stats(&self) -> BTreeMap<String, ToolStats> {
        self.stats.lock().clone()
    }

    /// Counts for tool `name` (valid names only, and at most [`MAX_COUNTED`] tools: names
    /// come from a model's output).
    fn count(&self, name: &str, f: impl FnOnce(&mut ToolStats)) {
        let mut stats = self.stats.lock();
        if let Some(s) = stats.get_mut(name) {
            f(s);
        } else if stats.len() < MAX_COUNTED && check_name(name).is_ok() {
            f(stats.entry(name.to_owned()).or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_executor::block_on;
    use serde_json::json;

    use super::*;
    use crate::compute::RedisLock;
    use crate::testing::MemTransport;
    use crate::{ManualClock, MemoryCache, RedisCache};

    type Io = std::io::Error;

    fn tools(
        configure: impl FnOnce(ToolCacheBuilder<MemoryCache>) -> ToolCacheBuilder<MemoryCache>,
    ) -> ToolCache<MemoryCache> {
        let engine = ComputeCache::builder(MemoryCache::builder().build().unwrap())
            .build()
            .unwrap();
        configure(ToolCache::builder(engine)).build().unwrap()
    }

    /// A tool that counts its runs and answers its run number.
    fn counted(
        runs: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> futures_util::future::Ready<std::result::Result<Json, Io>> + Send {
        let runs = runs.clone();
        move || futures_util::future::ready(Ok(json!(runs.fetch_add(1, Ordering::SeqCst) + 1)))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn scopes_share_results_only_within_their_tenant_or_session() {
        block_on(async {
            let t = tools(|b| {
                b.policy(
                    "inbox",
                    ToolPolicy::cache_for(HOUR).scope(ToolScope::Tenant),
                )
                .policy(
                    "scratch",
                    ToolPolicy::cache_for(HOUR).scope(ToolScope::Session),
                )
            });
            let runs = Arc::new(AtomicUsize::new(0));
            let args = json!({"folder": "INBOX"});
            let a = ToolCall::new("inbox", args.clone()).tenant("acme");
            let b = ToolCall::new("inbox", args.clone()).tenant("globex");
            assert_eq!(t.call(&a, counted(&runs)).await.unwrap().value, json!(1));
            assert_eq!(t.call(&b, counted(&runs)).await.unwrap().value, json!(2));
            let again = t.call(&a, counted(&runs)).await.unwrap();
            assert_eq!((again.status, again.value), (Status::Hit, json!(1)));
            // A tenant-scoped tool without a tenant is refused before it runs.
            let err = t
                .call(&ToolCall::new("inbox", args.clone()), counted(&runs))
                .await;
            assert!(
                matches!(err, Err(ComputeError::Cache(Error::InvalidInput(ref m))) if m.contains("tenant")),
                "{err:?}"
            );
            let s1 = ToolCall::new("scratch", json!(1)).session("s1");
            let s2 = ToolCall::new("scratch", json!(1)).session("s2");
            assert_eq!(t.call(&s1, counted(&runs)).await.unwrap().value, json!(3));
            assert_eq!(t.call(&s2, counted(&runs)).await.unwrap().value, json!(4));
            assert!(
                t.call(&ToolCall::new("scratch", json!(1)), counted(&runs))
                    .await
                    .is_err()
            );
            assert_eq!(runs.load(Ordering::SeqCst), 4);
            assert!(t.key(&a).unwrap().starts_with("tool:inbox:t."));
            assert_ne!(t.key(&a).unwrap(), t.key(&b).unwrap());
        });
    }

    #[test]
    fn only_tools_with_a_caching_policy_are_cached() {
        block_on(async {
            let t = tools(|b| b.policy("send_email", ToolPolicy::never()));
            let runs = Arc::new(AtomicUsize::new(0));
            for name in ["send_email", "unknown_tool"] {
                let call = ToolCall::new(name, json!({"to": "a@b.c"}));
                for _ in 0..2 {
                    let got = t.call(&call, counted(&runs)).await.unwrap();
                    assert_eq!(got.status, Status::Miss);
                }
                assert_eq!(t.stats()[name].uncached, 2);
            }
            assert_eq!(runs.load(Ordering::SeqCst), 4, "every call ran");
            // A default policy caches every tool.
            let t = tools(|b| b.default_policy(ToolPolicy::cache_for(HOUR)));
            let call = ToolCall::new("anything", json!(null));
            t.call(&call, counted(&runs)).await.unwrap();
            assert_eq!(
                t.call(&call, counted(&runs)).await.unwrap().status,
                Status::Hit
            );
        });
    }

    #[test]
    fn names_are_checked_and_arguments_compared_canonically() {
        block_on(async {
            let t = tools(|b| b.default_policy(ToolPolicy::cache_for(HOUR)));
            let runs = Arc::new(AtomicUsize::new(0));
            for bad in ["", "a*", "a:b", "with space", &"x".repeat(129)] {
                let got = t.call(&ToolCall::new(bad, json!({})), counted(&runs)).await;
                assert!(
                    matches!(got, Err(ComputeError::Cache(Error::InvalidInput(_)))),
                    "{bad:?}"
                );
                assert!(t.invalidate_tool(bad).await.is_err());
            }
            assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
            assert!(t.stats().is_empty(), "bad names are not counted");
            let err = ToolCache::builder(
                ComputeCache::builder(MemoryCache::builder().build().unwrap())
                    .build()
                    .unwrap(),
            )
            .policy("no good", ToolPolicy::never())
            .build()
            .unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)));
            let a = ToolCall::new(
                "search",
                json!({"q": "x", "opts": {"n": 1.0, "lang": "en"}}),
            );
            let b = ToolCall::new("search", json!({"opts": {"lang": "en", "n": 1}, "q": "x"}));
            assert_eq!(t.key(&a).unwrap(), t.key(&b).unwrap());
            t.call(&a, counted(&runs)).await.unwrap();
            assert_eq!(
                t.call(&b, counted(&runs)).await.unwrap().status,
                Status::Hit
            );
        });
    }

    #[test]
    fn a_failing_tool_stores_nothing_and_is_counted() {
        block_on(async {
            let t = tools(|b| b.default_policy(ToolPolicy::cache_for(HOUR)));
            let call = ToolCall::new("flaky", json!({}));
            let err = t
                .call(&call, || async {
                    Err::<Json, _>(Io::other("rate limited"))
                })
                .await;
            assert!(matches!(err, Err(ComputeError::Compute(_))));
            let runs = Arc::new(AtomicUsize::new(0));
            assert_eq!(
                t.call(&call, counted(&runs)).await.unwrap().status,
                Status::Miss
            );
            let s = t.stats()["flaky"];
            assert_eq!((s.errors, s.misses), (1, 1));
        });
    }

    #[test]
    fn an_entry_that_is_no_tool_result_is_a_counted_miss_not_an_error() {
        block_on(async {
            let memory = MemoryCache::builder().build().unwrap();
            let engine = ComputeCache::builder(memory.clone()).build().unwrap();
            let t = ToolCache::builder(engine)
                .default_policy(ToolPolicy::cache_for(HOUR))
                .build()
                .unwrap();
            let call = ToolCall::new("search", json!({"q": "x"}));
            let key = t.key(&call).unwrap();
            let not_json = Envelope::new("not json {", "m", 0).encode();
            for garbage in [Bytes::from_static(b"\xff\x00raw"), not_json] {
                memory.set(&key, garbage, None).await.unwrap();
                let runs = Arc::new(AtomicUsize::new(0));
                let got = t.call(&call, counted(&runs)).await.unwrap();
                assert_eq!((got.status, got.value), (Status::Miss, json!(1)));
                assert_eq!(
                    t.call(&call, counted(&runs)).await.unwrap().status,
                    Status::Hit
                );
            }
            assert_eq!(t.engine().compute_stats().corrupt, 2);
        });
    }

    #[test]
    fn stats_count_hits_time_and_cost_saved() {
        block_on(async {
            let clock = ManualClock::new(1_000_000);
            let engine = ComputeCache::builder(MemoryCache::builder().build().unwrap())
                .clock(clock.clone())
                .build()
                .unwrap();
            let t = ToolCache::builder(engine)
                .policy("search", ToolPolicy::cache_for(HOUR).cost_per_call(0.005))
                .build()
                .unwrap();
            let call = ToolCall::new("search", json!({"q": "x"}));
            let slow = clock.clone();
            t.call(&call, move || async move {
                slow.advance(Duration::from_millis(1500));
                Ok::<_, Io>(json!("result"))
            })
            .await
            .unwrap();
            for _ in 0..3 {
                let hit = t
                    .call(&call, || async { Ok::<_, Io>(json!("?")) })
                    .await
                    .unwrap();
                assert_eq!(hit.value, json!("result"));
            }
            let s = t.stats()["search"];
            assert_eq!((s.hits, s.misses), (3, 1));
            assert_eq!(s.time_saved_ms, 4500);
            assert_eq!(s.cost_saved_nanousd, 15_000_000);
            assert!((s.hit_rate() - 0.75).abs() < 1e-9);
        });
    }

    #[test]
    fn invalidating_a_tool_deletes_its_results_only_and_keys_can_be_keyed_hashes() {
        block_on(async {
            let redis = MemTransport::new();
            let cache = RedisCache::builder(redis.clone())
                .prefix("app")
                .build()
                .unwrap();
            let engine = ComputeCache::builder(cache.clone())
                .lock(RedisLock::for_cache(&cache).clock(redis.clock()))
                .build()
                .unwrap();
            let t = ToolCache::builder(engine)
                .default_policy(ToolPolicy::cache_for(HOUR))
                .hash_key(HashKey::new(*b"a secret of 16+ bytes").unwrap())
                .build()
                .unwrap();
            let runs = Arc::new(AtomicUsize::new(0));
            for (tool, q) in [("search", "a"), ("search", "b"), ("weather", "a")] {
                t.call(&ToolCall::new(tool, json!({"q": q})), counted(&runs))
                    .await
                    .unwrap();
            }
            let plain = crate::transport::hex(&Sha256::digest(br#"{"q":"a"}"#));
            let key = t.key(&ToolCall::new("search", json!({"q": "a"}))).unwrap();
            assert!(
                key.starts_with("tool:search:g:") && !key.ends_with(&plain),
                "{key}"
            );
            assert_eq!(t.invalidate_tool("search").await.unwrap(), 2);
            let again = t
                .call(&ToolCall::new("weather", json!({"q": "a"})), counted(&runs))
                .await
                .unwrap();
            assert_eq!(again.status, Status::Hit, "other tools keep theirs");
            let redo = t
                .call(&ToolCall::new("search", json!({"q": "a"})), counted(&runs))
                .await
                .unwrap();
            assert_eq!(redo.status, Status::Miss);
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_calls_run_the_tool_once() {
        let t = Arc::new(tools(|b| b.default_policy(ToolPolicy::cache_for(HOUR))));
        let runs = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let (t, runs) = (t.clone(), runs.clone());
                tokio::spawn(async move {
                    let call = ToolCall::new("lookup", json!({"id": 7}));
                    t.call(&call, move || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Io>(json!({"name": "seven"}))
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap().value, json!({"name": "seven"}));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let s = t.stats()["lookup"];
        assert_eq!((s.misses, s.coalesced + s.hits), (1, 49));
    }
}
