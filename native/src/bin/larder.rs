//! The `larder` command line. `larder gateway` serves Redis over HTTP in the Upstash REST
//! dialect, for Cloudflare Workers (larder-edge) and the official `@upstash/redis` clients;
//! `larder proxy` is a caching proxy for OpenAI- and Anthropic-compatible APIs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use larder_native::gateway::{Gateway, Policy, Token, shutdown_signal};

/// larder: a cache for LLM and agent responses, natively and on Cloudflare Workers.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Redis over HTTP (the Upstash REST dialect) for Workers and Upstash clients.
    ///
    /// Tokens come from the environment (LARDER_GATEWAY_TOKEN, LARDER_GATEWAY_READONLY_TOKEN)
    /// or from files (--token-file, --read-only-token-file), never from the command line.
    Gateway(GatewayArgs),
    /// A caching proxy for OpenAI- and Anthropic-compatible APIs: point an SDK's base URL
    /// at it and identical requests are answered from the cache (docs/PROXY.md).
    ///
    /// Upstream keys the proxy holds come from the environment (LARDER_UPSTREAM_KEY,
    /// LARDER_ANTHROPIC_KEY), never from the command line; without them each caller's own
    /// credential is forwarded.
    Proxy(ProxyArgs),
    // The cache commands (stats, get, purge, warm, bench) live in `larder_native::cli`.
    #[command(flatten)]
    Cache(larder_native::cli::CacheCommand),
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "LARDER_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The Redis to serve (the same flags and variables as every larder command).
    #[command(flatten)]
    redis: larder_native::cli::RedisArgs,

    /// A file holding a full-access token (Docker/Kubernetes secret); adds to
    /// LARDER_GATEWAY_TOKEN.
    #[arg(long, env = "LARDER_GATEWAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// A file holding a read-only token; adds to LARDER_GATEWAY_READONLY_TOKEN.
    #[arg(long, env = "LARDER_GATEWAY_READONLY_TOKEN_FILE")]
    read_only_token_file: Option<PathBuf>,

    /// Largest request body accepted, in bytes; larger ones get HTTP 413.
    #[arg(long, env = "LARDER_GATEWAY_BODY_LIMIT", default_value_t = larder_native::gateway::DEFAULT_BODY_LIMIT)]
    body_limit: usize,

    /// Most connections open at once; past it the gateway stops accepting until one closes.
    #[arg(long, env = "LARDER_GATEWAY_MAX_CONNECTIONS", default_value_t = larder_native::gateway::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Most subscription streams (/subscribe, /psubscribe) open at once; past it 503.
    #[arg(long, env = "LARDER_GATEWAY_MAX_SUBSCRIPTIONS", default_value_t = larder_native::gateway::DEFAULT_MAX_SUBSCRIPTIONS)]
    max_subscriptions: usize,

    /// Milliseconds a client has to send a request's headers (also bounds idle kept-alive
    /// connections); then the connection is closed.
    #[arg(long, env = "LARDER_GATEWAY_HEADER_TIMEOUT_MS", default_value_t = larder_native::gateway::DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64)]
    header_timeout_ms: u64,

    /// Milliseconds a client has to send a request's body once its headers are in; then
    /// the answer is 408 and the connection is closed.
    #[arg(long, env = "LARDER_GATEWAY_BODY_TIMEOUT_MS", default_value_t = larder_native::gateway::DEFAULT_BODY_READ_TIMEOUT.as_millis() as u64)]
    body_timeout_ms: u64,

    /// Also accept the token as `?_token=` in the URL (as Upstash does) when a request has
    /// no Authorization header. Off by default: URLs end up in logs.
    #[arg(long, env = "LARDER_GATEWAY_ALLOW_QUERY_TOKEN")]
    allow_query_token: bool,

    /// Longest answer body, in bytes; a longer reply fails its request with HTTP 400.
    #[arg(long, env = "LARDER_GATEWAY_MAX_REPLY_BYTES", default_value_t = larder_native::gateway::DEFAULT_MAX_REPLY_BYTES)]
    max_reply_bytes: usize,

    /// Let read-only tokens run EVALSHA_RO and FCALL_RO (scripts and functions a full token
    /// loaded). Off by default; EVAL_RO is never available to read-only tokens.
    #[arg(long, env = "LARDER_GATEWAY_READ_ONLY_SCRIPTS")]
    read_only_scripts: bool,

    /// Also deny this command (`CMD` or `"CMD SUBCOMMAND"`); repeatable.
    #[arg(long = "deny", value_name = "COMMAND")]
    deny: Vec<String>,

    /// Allow a command that is denied by default (for example FLUSHDB on a test gateway);
    /// repeatable.
    #[arg(long = "allow", value_name = "COMMAND")]
    allow: Vec<String>,

    /// Serve without any token (every request gets full access). Development only.
    #[arg(long)]
    insecure_no_auth: bool,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "LARDER_LOG", default_value = "info")]
    log_level: tracing::Level,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "LARDER_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The OpenAI-compatible upstream.
    #[arg(
        long,
        env = "LARDER_UPSTREAM",
        default_value = larder_core::proxy::DEFAULT_UPSTREAM
    )]
    upstream: String,

    /// The Anthropic upstream (for /v1/messages and requests with x-api-key or
    /// anthropic-version).
    #[arg(
        long,
        env = "LARDER_ANTHROPIC_UPSTREAM",
        default_value = larder_core::proxy::DEFAULT_ANTHROPIC_UPSTREAM
    )]
    anthropic_upstream: String,

    /// Redis to share the cache through: `redis://…` (several comma-separated URLs mean a
    /// Cluster). Without it (and without --sentinel) answers are cached in this process's
    /// memory.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    redis_urls: Vec<String>,

    /// Use Redis Sentinel: the sentinels' addresses (the master's password comes from
    /// LARDER_REDIS_PASSWORD).
    #[arg(long = "sentinel", env = "LARDER_SENTINELS", value_delimiter = ',')]
    sentinels: Vec<String>,

    /// The master's name in the sentinels' configuration (with --sentinel).
    #[arg(long, env = "LARDER_SENTINEL_MASTER", default_value = "mymaster")]
    sentinel_master: String,

    /// The longest a Redis call may take, in milliseconds; past it the request goes on
    /// without the cache.
    #[arg(long, env = "LARDER_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    redis_timeout_ms: u64,

    /// Key prefix in Redis.
    #[arg(long, env = "LARDER_PREFIX", default_value = larder_core::proxy::DEFAULT_PREFIX)]
    prefix: String,

    /// Seconds an answer stays fresh, unless a request says otherwise (x-larder-ttl,
    /// Cache-Control: max-age, cf-aig-cache-ttl).
    #[arg(long, env = "LARDER_PROXY_TTL_SECS", default_value_t = larder_core::proxy::DEFAULT_TTL_SECS)]
    ttl_secs: u64,

    /// Seconds past freshness during which an answer is still served when the upstream
    /// fails (5xx, 429, timeouts); 0 turns it off.
    #[arg(long, env = "LARDER_PROXY_STALE_SECS", default_value_t = larder_core::proxy::DEFAULT_STALE_SECS)]
    stale_secs: u64,

    /// Entries the in-memory cache holds (without Redis).
    #[arg(long, env = "LARDER_PROXY_MEMORY_ENTRIES", default_value_t = larder_core::proxy::DEFAULT_MEMORY_ENTRIES)]
    memory_entries: usize,

    /// Let every caller share one cache instead of one per credential.
    #[arg(long, env = "LARDER_PROXY_SHARED_TENANCY")]
    shared_tenancy: bool,

    /// Largest cached request body, in bytes; larger ones get HTTP 413.
    #[arg(long, env = "LARDER_PROXY_BODY_LIMIT", default_value_t = larder_native::proxy::DEFAULT_BODY_LIMIT)]
    body_limit: usize,

    /// Most connections open at once.
    #[arg(long, env = "LARDER_PROXY_MAX_CONNECTIONS", default_value_t = larder_native::gateway::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Milliseconds the upstream may stay silent (before its headers, or between chunks).
    #[arg(long, env = "LARDER_PROXY_READ_TIMEOUT_MS", default_value_t = larder_core::proxy::DEFAULT_READ_TIMEOUT_MS)]
    read_timeout_ms: u64,

    /// Milliseconds connecting to the upstream may take.
    #[arg(long, env = "LARDER_PROXY_CONNECT_TIMEOUT_MS", default_value_t = larder_native::proxy::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64)]
    connect_timeout_ms: u64,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "LARDER_LOG", default_value = "info")]
    log_level: tracing::Level,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cache(command) => larder_native::cli::run(command),
        Command::Gateway(args) => serve("gateway", args.log_level, gateway(args)),
        Command::Proxy(args) => serve("proxy", args.log_level, proxy(args)),
    }
}

/// Runs a server command on a multi-threaded runtime with logs on stderr.
fn serve(
    name: &str,
    level: tracing::Level,
    run: impl std::future::Future<Output = Result<(), String>>,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("larder {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Listens on `addr` (port 0: a free one) and returns the address bound.
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    Ok((listener, bound))
}

async fn proxy(args: ProxyArgs) -> Result<(), String> {
    use larder_core::response::ResponseCache;
    use larder_core::{MemoryCache, RedisCache};

    // The flags (and their environment variables) through the same reader as the proxy
    // Worker's bindings: one set of rules and defaults.
    let settings = larder_core::proxy::ProxySettings::from_lookup(|name| match name {
        "LARDER_UPSTREAM" => Some(args.upstream.clone()),
        "LARDER_ANTHROPIC_UPSTREAM" => Some(args.anthropic_upstream.clone()),
        "LARDER_PROXY_TTL_SECS" => Some(args.ttl_secs.to_string()),
        "LARDER_PROXY_STALE_SECS" => Some(args.stale_secs.to_string()),
        "LARDER_PROXY_SHARED_TENANCY" => Some(args.shared_tenancy.to_string()),
        "LARDER_PROXY_BODY_LIMIT" => Some(args.body_limit.to_string()),
        "LARDER_PROXY_MEMORY_ENTRIES" => Some(args.memory_entries.to_string()),
        "LARDER_PREFIX" => Some(args.prefix.clone()),
        "LARDER_PROXY_READ_TIMEOUT_MS" => Some(args.read_timeout_ms.to_string()),
        other => std::env::var(other).ok(),
    })
    .map_err(|e| e.to_string().replace("invalid argument: ", ""))?;
    let redis = !args.redis_urls.iter().all(|u| u.trim().is_empty()) || !args.sentinels.is_empty();
    let cache = if redis {
        let connect = larder_native::cli::RedisArgs {
            redis_urls: args.redis_urls.clone(),
            sentinels: args.sentinels.clone(),
            sentinel_master: args.sentinel_master.clone(),
            redis_timeout_ms: args.redis_timeout_ms,
        };
        let transport = connect.connect().await?;
        tracing::info!(
            topology = transport.topology().as_str(),
            "connected to Redis"
        );
        // No caller waits on a hung Redis longer than the timeout: the breaker cuts calls.
        let transport = larder_core::breaker::CircuitBreakerLayer::new()
            .call_timeout(Some(connect.timeout()))
            .layer(transport);
        let redis = RedisCache::builder(transport)
            .prefix(&args.prefix)
            .build()
            .map_err(|e| format!("--prefix: {e}"))?;
        ResponseCache::redis(redis)
    } else {
        tracing::info!(
            entries = args.memory_entries,
            "no Redis configured: caching in memory"
        );
        let memory = MemoryCache::builder()
            .max_entries(args.memory_entries)
            .build()
            .map_err(|e| e.to_string())?;
        ResponseCache::local(memory)
    };
    let encrypted = settings.keyring.is_some();
    let cache = settings.response_cache(cache).map_err(|e| e.to_string())?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let mut builder = larder_native::proxy::Proxy::builder(cache, settings.upstream.clone())
        .anthropic_upstream(settings.anthropic_upstream.clone())
        .prometheus(prometheus)
        .tenancy(settings.tenancy)
        .body_limit(settings.body_limit)
        .max_connections(args.max_connections)
        .read_timeout(settings.read_timeout)
        .connect_timeout(Duration::from_millis(args.connect_timeout_ms.max(1)));
    if let Some(h) = settings.hash_key.clone() {
        builder = builder.tenant_key(h);
    }
    if let Some(k) = &settings.upstream_key {
        builder = builder.openai_key(k);
    }
    if let Some(k) = &settings.anthropic_key {
        builder = builder.anthropic_key(k);
    }
    let proxy = builder.build().map_err(|e| e.to_string())?;
    let (listener, addr) = bind(args.listen).await?;
    tracing::info!(
        %addr,
        upstream = %args.upstream,
        anthropic_upstream = %args.anthropic_upstream,
        storage = if redis { "redis" } else { "memory" },
        shared_tenancy = args.shared_tenancy,
        encrypted,
        keyed_hashes = settings.hash_key.is_some(),
        "larder proxy listening"
    );
    println!("listening on {addr}");
    proxy
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

fn env_token(name: &str) -> Result<Option<Token>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            Token::new(v).map(Some).map_err(|e| format!("{name}: {e}"))
        }
        _ => Ok(None),
    }
}

async fn gateway(args: GatewayArgs) -> Result<(), String> {
    let transport = args.redis.connect().await?;
    // Every call is cut at --redis-timeout-ms, and while Redis is known to be down (5
    // failures in a row) calls fail at once until a probe gets through: no caller waits on a
    // hung Redis more than the flag says, and only a few wait at all.
    let timeout = args.redis.timeout();
    let transport = larder_core::breaker::CircuitBreakerLayer::new()
        .call_timeout(Some(timeout))
        .layer(transport);
    tracing::info!(
        topology = transport.get_ref().topology().as_str(),
        "connected to Redis"
    );

    let mut policy = Policy::default();
    for d in &args.deny {
        policy.deny(d);
    }
    for a in &args.allow {
        policy.allow(a);
    }
    policy.allow_read_only_scripts(args.read_only_scripts);
    // One Prometheus recorder for the process: `/metrics` shows the gateway's metrics and
    // everything the library emits (the transport, the breaker).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let mut builder = Gateway::builder(Arc::new(transport))
        .prometheus(prometheus)
        .health_timeout(timeout)
        .policy(policy)
        .body_limit(args.body_limit)
        .max_connections(args.max_connections)
        .max_subscriptions(args.max_subscriptions)
        .header_read_timeout(Duration::from_millis(args.header_timeout_ms))
        .body_read_timeout(Duration::from_millis(args.body_timeout_ms))
        .max_reply_bytes(args.max_reply_bytes)
        .allow_query_token(args.allow_query_token);
    let mut tokens = 0;
    for token in [
        env_token("LARDER_GATEWAY_TOKEN")?,
        args.token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?,
    ]
    .into_iter()
    .flatten()
    {
        builder = builder.token(token);
        tokens += 1;
    }
    let mut read_only = 0;
    for token in [
        env_token("LARDER_GATEWAY_READONLY_TOKEN")?,
        args.read_only_token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?,
    ]
    .into_iter()
    .flatten()
    {
        builder = builder.read_only_token(token);
        read_only += 1;
    }
    if args.insecure_no_auth {
        tracing::warn!("--insecure-no-auth: every request gets full access");
        builder = builder.insecure_no_auth();
    }
    let gateway = builder.build().map_err(|e| e.to_string())?;

    let (listener, addr) = bind(args.listen).await?;
    tracing::info!(
        %addr,
        full_tokens = tokens,
        read_only_tokens = read_only,
        body_limit = args.body_limit,
        max_connections = args.max_connections,
        max_subscriptions = args.max_subscriptions,
        header_timeout_ms = args.header_timeout_ms,
        body_timeout_ms = args.body_timeout_ms,
        allow_query_token = args.allow_query_token,
        max_reply_bytes = args.max_reply_bytes,
        read_only_scripts = args.read_only_scripts,
        "larder gateway listening"
    );
    // One line on stdout for scripts that started us on port 0.
    println!("listening on {addr}");
    gateway
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}
