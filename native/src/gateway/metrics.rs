//! The gateway's counters, served as Prometheus text on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request outcomes counted by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    RedisError,
    BadRequest,
    Unauthorized,
    TooLarge,
    NotFound,
    Unavailable,
    Timeout,
    ReplyTooLarge,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::RedisError,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::TooLarge,
        Outcome::NotFound,
        Outcome::Unavailable,
        Outcome::Timeout,
        Outcome::ReplyTooLarge,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RedisError => "redis_error",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::TooLarge => "too_large",
            Outcome::NotFound => "not_found",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
            Outcome::ReplyTooLarge => "reply_too_large",
        }
    }
}

/// Which endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Single,
    Pipeline,
    MultiExec,
    Other,
}

impl Route {
    const ALL: [Route; 4] = [
        Route::Single,
        Route::Pipeline,
        Route::MultiExec,
        Route::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Single => "command",
            Route::Pipeline => "pipeline",
            Route::MultiExec => "multi_exec",
            Route::Other => "other",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: [[AtomicU64; 9]; 4],
    commands: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicU64,
    denied: AtomicU64,
    request_micros: AtomicU64,
}

impl Metrics {
    pub(crate) fn request(&self, route: Route, outcome: Outcome, micros: u64) {
        let r = Route::ALL.iter().position(|x| *x == route).unwrap_or(3);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        self.requests[r][o].fetch_add(1, Ordering::Relaxed);
        self.request_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn commands(&self, n: usize) {
        self.commands.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn denied(&self, n: usize) {
        self.denied.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A connection was accepted; the returned guard counts it open until dropped.
    pub(crate) fn connection(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str(
            "# HELP larder_gateway_requests_total HTTP requests by endpoint and outcome.\n",
        );
        out.push_str("# TYPE larder_gateway_requests_total counter\n");
        for (r, route) in Route::ALL.iter().enumerate() {
            for (o, outcome) in Outcome::ALL.iter().enumerate() {
                let n = self.requests[r][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "larder_gateway_requests_total{{endpoint=\"{}\",outcome=\"{}\"}} {n}",
                    route.label(),
                    outcome.label()
                );
            }
        }
        let simple = [
            (
                "larder_gateway_commands_total",
                "Redis commands run for clients.",
                &self.commands,
            ),
            (
                "larder_gateway_denied_commands_total",
                "Commands refused: malformed names, the policy (rules, deny list, read-only \
                 tokens) and counts whose reply would pass the reply limit.",
                &self.denied,
            ),
            (
                "larder_gateway_connections_total",
                "TCP connections accepted.",
                &self.connections,
            ),
            (
                "larder_gateway_request_duration_microseconds_total",
                "Time spent answering requests, in microseconds.",
                &self.request_micros,
            ),
        ];
        for (name, help, counter) in simple {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP larder_gateway_open_connections TCP connections open now (at most the \
             connection limit).\n# TYPE larder_gateway_open_connections gauge\n\
             larder_gateway_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        out
    }
}

/// Counts one connection as open while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(std::sync::Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
