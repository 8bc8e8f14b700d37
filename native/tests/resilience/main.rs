//! Stampede protection, tiering and resilience against real Redis servers and real
//! processes: N processes × M tasks computing once, a holder killed with SIGKILL, the
//! backplane across two processes, Redis killed under load in tiered mode, corrupt bytes.
//!
//! Pub/sub is `RedisTransport`'s own (standalone, Cluster, Sentinel): round trips,
//! reconnects, reference counting, and lease waiters woken by it.
//!
//! Multi-process tests re-run this test binary as children (`child_entry` with
//! `LARDER_RESILIENCE_ROLE` set); children report on stdout lines starting with `RESULT `.

mod pubsub;
mod stampede;
mod tiered;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder_core::breaker::{CircuitBreaker, CircuitBreakerLayer};
use larder_core::compute::{ComputeCache, ComputeCacheBuilder, RedisLock};
use larder_core::tiered::{Backplane, TieredCache};
use larder_core::{MemoryCache, RedisCache, SharedClock};
use larder_native::{RedisOptions, RedisTransport, TokioRuntime};

/// The environment variable naming a child's role.
const ROLE: &str = "LARDER_RESILIENCE_ROLE";
/// The prefix every test uses.
const PREFIX: &str = "rs";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

pub(crate) fn clock() -> SharedClock {
    std::sync::Arc::new(larder_core::SystemClock)
}

/// Short timeouts, so an outage fails fast.
pub(crate) fn options(url: &str) -> RedisOptions {
    RedisOptions::standalone(url)
        .dial_timeout(Duration::from_millis(250))
        .read_timeout(Duration::from_millis(250))
        .write_timeout(Duration::from_millis(250))
}

/// The redis-rs transport (with its own pub/sub) and short timeouts.
pub(crate) async fn transport(url: &str) -> RedisTransport {
    RedisTransport::from_options(&options(url))
        .await
        .expect("connect to the test Redis")
}

pub(crate) type Guarded = CircuitBreaker<RedisTransport>;
pub(crate) type Tiered = TieredCache<RedisCache<Guarded>>;

/// The production shape: breaker → RedisCache (L2) → TieredCache (with backplane) →
/// ComputeCache (with the lease), all background work on tokio.
pub(crate) async fn tiered_stack(url: &str) -> (ComputeCacheBuilder<Tiered>, Guarded) {
    let guarded = CircuitBreakerLayer::new()
        .clock(clock())
        .failure_threshold(3)
        .cooldown(Duration::from_millis(100))
        .layer(transport(url).await);
    let l2 = RedisCache::builder(guarded.clone())
        .prefix(PREFIX)
        .build()
        .unwrap();
    let tiered = TieredCache::builder(
        MemoryCache::builder()
            .clock(clock())
            .max_entries(100_000)
            .build()
            .unwrap(),
        l2.clone(),
    )
    .l1_max_ttl(Duration::from_secs(600))
    .backplane(Backplane::new(guarded.clone(), l2.key_scheme()).clock(clock()))
    .runtime(TokioRuntime::shared())
    .build()
    .unwrap();
    let compute = ComputeCache::builder(tiered)
        .clock(clock())
        .lock(RedisLock::for_cache(&l2).clock(clock()))
        .runtime(TokioRuntime::shared());
    (compute, guarded)
}

/// A cache of the Redis-only shape (no L1): what stampede tests across processes use.
pub(crate) async fn redis_stack(url: &str) -> ComputeCacheBuilder<RedisCache<RedisTransport>> {
    let t = transport(url).await;
    let cache = RedisCache::builder(t).prefix(PREFIX).build().unwrap();
    ComputeCache::builder(cache.clone())
        .clock(clock())
        .lock(RedisLock::for_cache(&cache).clock(clock()))
        .runtime(TokioRuntime::shared())
}

/// Starts this test binary as a child playing `role`.
pub(crate) fn spawn_child(role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn a child test process")
}

/// Waits for a child and returns the JSON of its `RESULT ` line.
pub(crate) fn child_result(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.find("RESULT ").map(|i| &l[i + "RESULT ".len()..]))
        .unwrap_or_else(|| panic!("no RESULT line in: {stdout}"));
    serde_json::from_str(line).expect("RESULT is JSON")
}

pub(crate) fn report(value: serde_json::Value) {
    println!("\nRESULT {value}");
}

pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        match role.as_str() {
            "stampede" => stampede::child_stampede().await,
            "holder" => stampede::child_holder().await,
            "backplane" => tiered::child_backplane().await,
            other => panic!("unknown role {other}"),
        }
    });
}
