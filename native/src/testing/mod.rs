//! A harness that starts real Redis processes for tests: a standalone server
//! ([`RedisServer`]), a Redis Cluster ([`RedisCluster`]) and a Sentinel setup
//! ([`SentinelSetup`]). Enabled by the `test-util` feature (and in this crate's unit tests).
//!
//! Needs `redis-server` and `redis-cli` on `PATH` (Debian: `apt-get install redis-server`;
//! sentinels run as `redis-server <conf> --sentinel`).
//!
//! # What it guarantees
//!
//! - **Free ports, never assumed**: each node binds `127.0.0.1:0` to learn a free port,
//!   releases it and starts the server on it; if another process grabs the port first the
//!   server fails to bind and is restarted on a new one. Cluster nodes get ports below 55000
//!   whose bus port (port + 10000) is free too. Ports handed out are reserved within the test
//!   process, so tests running in parallel never collide with each other.
//! - **Private files**: every setup has its own temp dir (removed when the handle drops)
//!   holding `redis-PORT.log`, `redis-PORT.out` (stdout/stderr), cluster `nodes-PORT.conf`
//!   and sentinel configs. Servers run with `--save "" --appendonly no`.
//! - **Ready means ready**: a node counts as started once it answers `PING` with `PONG`
//!   (and `INFO` shows our pid, not another server's); a setup returns once its topology is
//!   usable (see each type). Errors carry the tail of the server logs.
//! - **Only our processes die**: handles SIGKILL and reap exactly the pids they spawned, in
//!   `Drop` too (so also while a failing test unwinds). On Linux every server also gets
//!   `PR_SET_PDEATHSIG(SIGKILL)`, so servers die with a test process that is killed. Nothing
//!   is ever killed by name.
//!
//! # Sync and async use
//!
//! The API is blocking (std::process and std::net). From async tests you may call it
//! directly — the waits are short polls (a standalone starts in ~0.1 s, a cluster or a
//! sentinel setup in a few seconds) — but a call that blocks a tokio worker also stalls
//! tasks on that worker, so on a current-thread runtime start the servers *before* the
//! async work that talks to them, or use `tokio::task::spawn_blocking`:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use larder_native::testing::RedisCluster;
//!
//! let cluster = tokio::task::spawn_blocking(RedisCluster::start_default)
//!     .await
//!     .expect("harness thread")?;
//! let seeds = cluster.seed_urls();
//! # drop(seeds); Ok(()) }
//! ```
//!
//! Processes are spawned from one long-lived helper thread, because `PR_SET_PDEATHSIG` fires
//! when the *thread* that spawned a child exits: tokio's blocking threads exit when idle and
//! would otherwise take the servers with them.
//!
//! # Example
//!
//! ```no_run
//! use larder_native::testing::{RedisServer, RespValue};
//!
//! let server = RedisServer::start().unwrap();
//! assert_eq!(server.cmd(&["PING"]).unwrap(), RespValue::Simple("PONG".into()));
//! // hand server.url() to the client under test
//! ```

mod cluster;
#[cfg(feature = "gateway")]
mod fake_llm;
mod process;
mod resp;
mod sentinel;
mod server;
mod workerd;

use std::io;
use std::time::Duration;

pub use cluster::{CLUSTER_NODE_TIMEOUT_MS, RedisCluster};
#[cfg(feature = "gateway")]
pub use fake_llm::FakeLlm;
pub use resp::{DEFAULT_TIMEOUT, RespConnection, RespValue, command};
pub use sentinel::{
    MASTER_NAME, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS, SentinelSetup,
};
pub use server::{RedisServer, RedisServerBuilder};
pub use workerd::{Workerd, edge_dir, workerd_bin};

/// How long a standalone server may take to answer `PING` (generous for loaded CI).
const STANDALONE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to become healthy after start or a restart.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sentinel setup may take to become healthy.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(60);

/// The role a node reports through `ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// `ROLE` says `master`.
    Master,
    /// `ROLE` says `slave`.
    Replica,
    /// `ROLE` says `sentinel`.
    Sentinel,
    /// Killed by the harness, or not answering.
    Down,
}

/// One process of a cluster or sentinel setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its pid, `None` once the harness killed it.
    pub pid: Option<u32>,
    /// Its role right now.
    pub role: NodeRole,
}

impl NodeInfo {
    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT/"`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// The prefix of every harness temp dir.
const DIR_PREFIX: &str = "larder-redis-";
/// The file in a harness dir naming the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// A new private temp dir, marked with our pid. The first call in a process also removes
/// harness dirs left by test processes that are gone (a handle kept in a `static`, or a
/// killed test binary, never runs `Drop`; its servers died with it through
/// `PR_SET_PDEATHSIG`, but its dir stayed).
fn new_dir() -> io::Result<tempfile::TempDir> {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_stale_dirs);
    let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
    Ok(dir)
}

fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let owner = std::fs::read_to_string(path.join(OWNER_FILE));
        let Some(pid) = owner.ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
            continue; // not ours to judge
        };
        if pid != std::process::id() && !process_exists(pid) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}
