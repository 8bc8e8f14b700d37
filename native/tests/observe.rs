//! What the redis-rs transport reports to `tracing` and `metrics` on every call. A binary of
//! its own: tracing caches each callsite's interest process-wide, so a span first reached by
//! a test running in parallel without a subscriber could go unseen by this test's scoped one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use larder_core::{Cmd, Transport};
use larder_native::testing::RedisServer;
use larder_native::{RedisOptions, RedisTransport};

/// Counts what the transport reports through `metrics`.
#[derive(Default)]
struct Recorder {
    calls: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    durations: Arc<Durations>,
}

#[derive(Default)]
struct Durations(AtomicU64);

impl metrics::HistogramFn for Durations {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        match key.name() {
            "larder_redis_calls_total" => metrics::Counter::from_arc(self.calls.clone()),
            "larder_redis_errors_total" => metrics::Counter::from_arc(self.errors.clone()),
            _ => metrics::Counter::noop(),
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        if key.name() == "larder_redis_call_duration_seconds" {
            metrics::Histogram::from_arc(self.durations.clone())
        } else {
            metrics::Histogram::noop()
        }
    }
}

/// Counts `larder.redis` spans and warnings.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    redis_spans: AtomicU64,
    warnings: AtomicU64,
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        if attrs.metadata().name() == "larder.redis" {
            self.redis_spans.fetch_add(1, Ordering::Relaxed);
        }
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.warnings.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn every_redis_call_records_a_span_and_metrics() {
    let server = RedisServer::start().expect("start redis");
    let recorder = Recorder::default();
    let spans = Arc::new(Spans::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = |opts: RedisOptions| {
        metrics::with_local_recorder(&recorder, || {
            tracing::subscriber::with_default(spans.clone(), || {
                rt.block_on(async {
                    let t = RedisTransport::from_options(&opts).await.expect("connect");
                    t.exec(Cmd::new("SET").arg("k").arg("v")).await.unwrap();
                    t.pipeline(vec![Cmd::new("GET").arg("k"), Cmd::new("PING")])
                        .await
                        .unwrap();
                    t.close().await.unwrap();
                    assert!(t.exec(Cmd::new("PING")).await.is_err());
                })
            })
        })
    };
    // Always on: the installed subscriber and recorder decide what is kept.
    run(RedisOptions::standalone(server.addr()));
    // SET, the pipeline, and the call refused after close (which never reached Redis).
    assert_eq!(recorder.calls.load(Ordering::Relaxed), 2);
    assert_eq!(recorder.durations.0.load(Ordering::Relaxed), 2);
    assert_eq!(recorder.errors.load(Ordering::Relaxed), 0);
    assert_eq!(spans.redis_spans.load(Ordering::Relaxed), 2);
    assert_eq!(spans.warnings.load(Ordering::Relaxed), 0);
}
