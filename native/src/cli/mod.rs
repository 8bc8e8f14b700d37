//! The cache commands of the `larder` binary: `stats`, `get`, `purge`, `warm` and `bench`.
//!
//! Every command, `larder gateway` included, connects the same way ([`RedisArgs`]):
//! `--redis-url` / `REDIS_URL` (several comma-separated URLs mean a Redis Cluster), or
//! `--sentinel` / `LARDER_SENTINELS` with `--sentinel-master`; a password that is not in the
//! URL (the Sentinel master's) comes from `LARDER_REDIS_PASSWORD`, never from the command
//! line. The cache commands print a human-readable report, or one JSON document with
//! `--json` for scripts.
//!
//! Exit codes: `0` success; `1` the command ran but found nothing (`get`) or some requests
//! failed (`warm`); `2` bad input or an unreachable Redis (the message says which).
//!
//! The binary wires [`CacheCommand`] into its subcommands and calls [`run`].

mod bench;
mod get;
mod purge;
mod stats;
mod warm;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use larder_core::response::{Mode, ResponseCache};
use larder_core::{KeyScheme, RedisCache};

use crate::{RedisOptions, RedisTransport};

pub use bench::BenchArgs;
pub use get::GetArgs;
pub use purge::PurgeArgs;
pub use stats::StatsArgs;
pub use warm::WarmArgs;

/// The cache subcommands of `larder`.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum CacheCommand {
    /// Hit rate, hits and misses per model, tokens and estimated cost saved (every instance
    /// sharing the prefix).
    Stats(StatsArgs),
    /// Show a cached answer, by key or by request.
    Get(GetArgs),
    /// Invalidate answers: by key pattern (SCAN on every master), namespace, tag or model.
    Purge(PurgeArgs),
    /// Compute and cache the requests of a JSONL file through an OpenAI-compatible endpoint.
    Warm(WarmArgs),
    /// Measure SET, GET and response-cache hit throughput and latency against this Redis.
    Bench(BenchArgs),
}

impl CacheCommand {
    fn name(&self) -> &'static str {
        match self {
            CacheCommand::Stats(_) => "stats",
            CacheCommand::Get(_) => "get",
            CacheCommand::Purge(_) => "purge",
            CacheCommand::Warm(_) => "warm",
            CacheCommand::Bench(_) => "bench",
        }
    }
}

/// Which Redis to use: shared by every command of the `larder` binary, the gateway included,
/// so each setting has one flag and one environment variable everywhere.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis to use: `redis://[user:password@]host:port[/db]` (`rediss://` for TLS); several
    /// comma-separated URLs (or the flag repeated) mean a Redis Cluster.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_urls: Vec<String>,

    /// Use Redis Sentinel: the sentinels' addresses (`host:port`, comma-separated or
    /// repeated). The master's password comes from LARDER_REDIS_PASSWORD.
    #[arg(long = "sentinel", env = "LARDER_SENTINELS", value_delimiter = ',')]
    pub sentinels: Vec<String>,

    /// The master's name in the sentinels' configuration (with --sentinel).
    #[arg(long, env = "LARDER_SENTINEL_MASTER", default_value = "mymaster")]
    pub sentinel_master: String,

    /// The longest a Redis call may take, in milliseconds (connecting, sending the command
    /// and reading its reply).
    #[arg(long, env = "LARDER_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
}

impl RedisArgs {
    /// `--redis-timeout-ms` as a duration (at least 1 ms).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }
}

impl RedisArgs {
    /// Connects: a Cluster for several URLs, Sentinel with `--sentinel`, else standalone.
    /// `LARDER_REDIS_PASSWORD`, when set, is the Sentinel master's password, or the
    /// password of every URL (over one the URL carries), so it can stay out of `ps`.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong (never a password): no URL, a malformed address, or
    /// Redis unreachable.
    pub async fn connect(&self) -> Result<RedisTransport, String> {
        // Connecting, sending and reading get 45 % of the timeout each: a reply that does not
        // come fails at 90 % of it (so the transport replaces a dead connection itself), and
        // the gateway's breaker cuts any call at 100 %.
        let part = (self.timeout() * 45 / 100).max(Duration::from_millis(1));
        let password = std::env::var("LARDER_REDIS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty());
        let opts = if self.sentinels.is_empty() {
            let urls: Vec<String> = self
                .redis_urls
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            match urls.len() {
                0 => return Err("no Redis URL: pass --redis-url or set REDIS_URL".into()),
                1 => RedisOptions::standalone(urls[0].clone()),
                _ => RedisOptions::cluster(urls),
            }
        } else {
            RedisOptions::sentinel(self.sentinel_master.clone(), self.sentinels.clone())
        };
        let mut opts = opts
            .dial_timeout(part)
            .read_timeout(part)
            .write_timeout(part);
        if let Some(password) = password {
            opts = opts.password(password);
        }
        RedisTransport::from_options(&opts)
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))
    }
}

/// Encryption at rest and keyed hashes, from the environment only (never flags, so secrets
/// stay out of `ps` and shell history): `LARDER_ENCRYPTION_KEYS` (`id:base64key,…`, the
/// current key first) and `LARDER_HASH_SECRET` (base64, at least 16 bytes). Every process
/// sharing a cache needs the same values.
///
/// # Errors
///
/// A message naming the variable and what is wrong with it (never its value).
pub fn secrets_from_env() -> Result<
    (
        Option<larder_core::seal::Keyring>,
        Option<larder_core::seal::HashKey>,
    ),
    String,
> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let keys = var("LARDER_ENCRYPTION_KEYS")
        .map(|v| larder_core::seal::Keyring::parse(&v))
        .transpose()
        .map_err(|e| format!("LARDER_ENCRYPTION_KEYS: {e}"))?;
    let hash = var("LARDER_HASH_SECRET")
        .map(|v| larder_core::seal::HashKey::parse(&v))
        .transpose()
        .map_err(|e| format!("LARDER_HASH_SECRET: {e}"))?;
    Ok((keys, hash))
}

/// Where the cache is and how it is laid out: shared by every cache command.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Which Redis.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Key prefix [default: larder, or go-deep-agent with --go-compat].
    #[arg(long, env = "LARDER_PREFIX")]
    pub prefix: Option<String>,

    /// Use go-deep-agent's key and value format (its GenerateCacheKey, raw text values).
    #[arg(long, env = "LARDER_GO_COMPAT")]
    pub go_compat: bool,

    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A connected cache: the transport (for raw reads) and the response cache over it.
struct Connected {
    transport: Arc<RedisTransport>,
    cache: ResponseCache,
}

impl ConnectArgs {
    fn mode(&self) -> Mode {
        if self.go_compat {
            Mode::GoDeepAgent
        } else {
            Mode::Larder
        }
    }

    fn scheme(&self) -> Result<KeyScheme, String> {
        let prefix = match (&self.prefix, self.go_compat) {
            (Some(p), _) => p.as_str(),
            (None, true) => larder_core::keys::GO_DEEP_AGENT_PREFIX,
            (None, false) => larder_core::keys::DEFAULT_PREFIX,
        };
        KeyScheme::new(prefix).map_err(|e| format!("--prefix: {e}"))
    }

    async fn connect(&self) -> Result<Connected, String> {
        let scheme = self.scheme()?;
        let transport = Arc::new(self.redis.connect().await?);
        let redis = RedisCache::builder(transport.clone())
            .key_scheme(scheme.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut cache = ResponseCache::redis(redis)
            .mode(self.mode())
            .prefix(scheme.prefix());
        let (keys, hash) = secrets_from_env()?;
        if let Some(k) = keys {
            cache = cache.encryption(k);
        }
        if let Some(h) = hash {
            cache = cache.hash_key(h);
        }
        let cache = cache.build().map_err(|e| e.to_string())?;
        Ok(Connected { transport, cache })
    }
}

/// Runs a cache command to completion on its own tokio runtime and returns the exit code.
/// Errors are printed to stderr as `larder COMMAND: message`.
pub fn run(command: CacheCommand) -> ExitCode {
    let level = std::env::var("LARDER_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let name = command.name();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("larder {name}: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            CacheCommand::Stats(args) => stats::run(args).await,
            CacheCommand::Get(args) => get::run(args).await,
            CacheCommand::Purge(args) => purge::run(args).await,
            CacheCommand::Warm(args) => warm::run(args).await,
            CacheCommand::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("larder {name}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints a JSON document on stdout.
fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values always serialize")
    );
}

/// A percentage with one decimal.
fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}
