//! The `larder` command line. `larder gateway` serves Redis over HTTP in the Upstash REST
//! dialect, for Cloudflare Workers (larder-edge) and the official `@upstash/redis` clients.

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cache(command) => larder_native::cli::run(command),
        Command::Gateway(args) => {
            tracing_subscriber::fmt()
                .with_max_level(args.log_level)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("larder gateway: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(gateway(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("larder gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tracing::info!(
        %addr,
        full_tokens = tokens,
        read_only_tokens = read_only,
        body_limit = args.body_limit,
        max_connections = args.max_connections,
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
