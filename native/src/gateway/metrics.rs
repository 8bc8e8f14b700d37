//! The gateway's metrics, and `/metrics`: the Prometheus text of everything the process
//! emits, rendered by `metrics-exporter-prometheus`.

use metrics::SharedString;
use metrics_exporter_prometheus::PrometheusHandle;

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
    Subscribe,
    Other,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Single => "command",
            Route::Pipeline => "pipeline",
            Route::MultiExec => "multi_exec",
            Route::Subscribe => "subscribe",
            Route::Other => "other",
        }
    }
}

/// The gateway's counters, emitted through the `metrics` facade with a `gateway` label (the
/// gateway's [name](super::GatewayBuilder::name)), next to everything else the process
/// emits (the transport, the breaker, caches). `/metrics` renders them all from the
/// Prometheus recorder the gateway was given.
#[derive(Debug)]
pub(crate) struct Metrics {
    name: SharedString,
    prometheus: Option<PrometheusHandle>,
}

impl Metrics {
    pub(crate) fn new(name: SharedString, prometheus: Option<PrometheusHandle>) -> Self {
        Metrics { name, prometheus }
    }

    pub(crate) fn request(&self, route: Route, outcome: Outcome, micros: u64) {
        metrics::counter!(
            "larder_gateway_requests_total",
            "gateway" => self.name.clone(),
            "endpoint" => route.label(),
            "outcome" => outcome.label()
        )
        .increment(1);
        metrics::histogram!(
            "larder_gateway_request_duration_seconds",
            "gateway" => self.name.clone(),
            "endpoint" => route.label()
        )
        .record(micros as f64 / 1e6);
    }

    pub(crate) fn commands(&self, n: usize) {
        metrics::counter!("larder_gateway_commands_total", "gateway" => self.name.clone())
            .increment(n as u64);
    }

    pub(crate) fn denied(&self, n: usize) {
        metrics::counter!("larder_gateway_denied_commands_total", "gateway" => self.name.clone())
            .increment(n as u64);
    }

    /// Subscription streams opened (+1) or ended (-1).
    pub(crate) fn subscriptions(&self, delta: f64) {
        metrics::gauge!("larder_gateway_open_subscriptions", "gateway" => self.name.clone())
            .increment(delta);
    }

    /// A connection was accepted; the returned guard counts it open until dropped.
    pub(crate) fn connection(self: &std::sync::Arc<Self>) -> OpenConnection {
        metrics::counter!("larder_gateway_connections_total", "gateway" => self.name.clone())
            .increment(1);
        self.open_connections().increment(1.0);
        OpenConnection(self.clone())
    }

    fn open_connections(&self) -> metrics::Gauge {
        metrics::gauge!("larder_gateway_open_connections", "gateway" => self.name.clone())
    }

    /// The Prometheus text of every metric in the recorder, or `None` without one.
    pub(crate) fn render(&self) -> Option<String> {
        let handle = self.prometheus.as_ref()?;
        handle.run_upkeep();
        Some(handle.render())
    }
}

/// Describes the gateway's metrics to the installed recorder (their `# HELP` lines).
pub(crate) fn describe() {
    metrics::describe_counter!(
        "larder_gateway_requests_total",
        "HTTP requests by endpoint and outcome."
    );
    metrics::describe_histogram!(
        "larder_gateway_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time spent answering requests."
    );
    metrics::describe_counter!(
        "larder_gateway_commands_total",
        "Redis commands run for clients."
    );
    metrics::describe_counter!(
        "larder_gateway_denied_commands_total",
        "Commands refused: malformed names, the policy (rules, deny list, read-only tokens) and \
         counts whose reply would pass the reply limit."
    );
    metrics::describe_counter!(
        "larder_gateway_connections_total",
        "TCP connections accepted."
    );
    metrics::describe_gauge!(
        "larder_gateway_open_connections",
        "TCP connections open now (at most the connection limit)."
    );
    metrics::describe_gauge!(
        "larder_gateway_open_subscriptions",
        "Subscription streams (/subscribe, /psubscribe) open now (at most the subscription limit)."
    );
}

/// Counts one connection as open while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(std::sync::Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections().decrement(1.0);
    }
}
