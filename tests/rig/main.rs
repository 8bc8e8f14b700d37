//! The rig adapter (`larder::rig`) against a provider that counts its requests (no
//! network): cached models (unary and streamed calls, tool calls replayed, what is never
//! stored, a cache that fails) and cached tools, on the in-memory transport and on a real
//! standalone `redis-server`.

mod fake;
mod models;
mod tools;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::response::ResponseCache;
use larder::testing::MemTransport;
use larder::tools::{ToolCache, ToolCacheBuilder};
use larder::{ComputeCache, RedisCache, RedisLock, SharedTransport};
use larder_native::RedisTransport;
use larder_native::testing::RedisServer;

/// Where a case's caches live.
pub(crate) trait Backend: Send + Sync {
    fn transport(&self) -> SharedTransport;
}

/// A prefix no other case (or process) uses.
pub(crate) fn unique_prefix(case: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "rig-{case}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn redis_cache(be: &impl Backend, prefix: &str) -> RedisCache<SharedTransport> {
    RedisCache::builder(be.transport())
        .prefix(prefix)
        .build()
        .unwrap()
}

/// A response cache on the backend (as one process would have it).
pub(crate) fn answers(be: &impl Backend, prefix: &str) -> ResponseCache {
    ResponseCache::redis(redis_cache(be, prefix))
        .default_ttl(Duration::from_secs(600))
        .lease_ttl(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A tool cache on the backend, with the engine's lease in Redis.
pub(crate) fn tool_cache(
    be: &impl Backend,
    configure: impl FnOnce(
        ToolCacheBuilder<RedisCache<SharedTransport>>,
    ) -> ToolCacheBuilder<RedisCache<SharedTransport>>,
) -> Arc<ToolCache<RedisCache<SharedTransport>>> {
    let cache = redis_cache(be, &unique_prefix("tools"));
    let engine = ComputeCache::builder(cache.clone())
        .lock(RedisLock::for_cache(&cache))
        .build()
        .unwrap();
    Arc::new(configure(ToolCache::builder(engine)).build().unwrap())
}

struct Mem(MemTransport);

impl Backend for Mem {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.0.clone())
    }
}

struct Standalone(RedisTransport);

impl Backend for Standalone {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.0.clone())
    }
}

/// One server for every case of this binary; the harness kills it when the process exits.
fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("start redis-server"))
}

async fn standalone() -> Standalone {
    let url = tokio::task::spawn_blocking(|| server().url())
        .await
        .expect("harness thread");
    Standalone(RedisTransport::connect(&url).await.expect("connect"))
}

/// One `#[tokio::test]` per case and backend: `mem::<case>` and `redis::<case>`.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod mem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::$case(&$crate::Mem(larder::testing::MemTransport::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::$case(&$crate::standalone().await).await;
                }
            )*
        }
    };
}

use models::*;
use tools::*;

cases!(
    unary_miss_then_hit_with_tool_calls_intact,
    streams_miss_then_hit_with_identical_items_per_format,
    unary_and_streamed_calls_are_cached_apart,
    incomplete_and_failed_streams_are_not_stored,
    failed_and_error_replies_are_not_stored,
    concurrent_identical_calls_reach_the_provider_once,
    two_instances_share_answers,
    tool_results_hit_on_the_same_arguments_only,
    never_cached_and_unlisted_tools_run_every_time,
    scoped_tools_read_their_tenant_from_the_context,
    tool_failures_are_not_stored_and_keep_their_error,
);
