//! Observability for any [`Cache`]: [`Instrumented`] wraps a cache and gives every
//! operation a `tracing` span and `metrics` counters and a latency histogram.
//!
//! | signal | name | labels / fields |
//! | --- | --- | --- |
//! | span (level DEBUG) | `larder.cache` | `cache`, `op`, `key` (12 hex digits identifying the key, never the key itself), `hit` (reads), `hits`/`misses` (mget), `error`, `duration_us` |
//! | counter | `larder_cache_operations_total` | `cache`, `op`, `outcome` = `hit` \| `miss` \| `ok` \| `error` |
//! | counter | `larder_cache_hits_total`, `larder_cache_misses_total` | `cache` (mget counts each key) |
//! | histogram | `larder_cache_operation_duration_seconds` | `cache`, `op` |
//!
//! Spans work with any subscriber, including `tracing-opentelemetry` (each operation becomes
//! an OpenTelemetry span). Metrics go to whatever recorder the application installed (for
//! example `metrics-exporter-prometheus`); with none installed they cost an atomic load.
//! The redis-rs transport adds its own per-call span and metrics (`larder.redis`,
//! `larder_redis_*`) on every call; the circuit breaker
//! reports its state as the gauge `larder_breaker_state` (0 closed, 1 half-open, 2 open).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use metrics::SharedString;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use tracing::field::Empty;

use crate::cache::{Cache, CacheStats, KeyTtl};
use crate::clock::SharedClock;
use crate::error::Result;

/// A [`Cache`] whose operations emit a `tracing` span and `metrics` (see the
/// [module docs](self)). Everything else is the wrapped cache's behaviour.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// use std::sync::Arc;
/// use larder_core::observe::Instrumented;
/// use larder_core::{Cache, ManualClock, MemoryCache};
///
/// let clock = Arc::new(ManualClock::new(0));
/// let cache = Instrumented::new(MemoryCache::builder().clock(clock.clone()).max_entries(1000).build().unwrap()).clock(clock).name("l1");
/// cache.set("k", "v".into(), None).await?;
/// assert_eq!(cache.get("k").await?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), larder_core::Error>(())
/// # }).unwrap();
/// ```
pub struct Instrumented<C> {
    inner: C,
    clock: SharedClock,
    name: SharedString,
}

impl<C: fmt::Debug> fmt::Debug for Instrumented<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("name", &&*self.name)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<C> Instrumented<C> {
    /// Wraps `inner`. Named `"cache"` until [`name`](Instrumented::name) says otherwise;
    /// tracing and metrics both on; operations timed with the runtime's clock.
    pub fn new(inner: C) -> Self {
        Instrumented {
            inner,
            clock: crate::clock::system(),
            name: SharedString::const_str("cache"),
        }
    }

    /// The clock that times operations (its [`Clock::now_us`](crate::Clock::now_us)).
    #[must_use]
    pub fn clock(mut self, clock: impl crate::Clock + 'static) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// The `cache` label and span field (for example `"l1"`, `"redis"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = SharedString::from_owned(name.into());
        self
    }

    /// The wrapped cache.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// Unwraps the cache.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

/// What an operation found, for the span and the outcome label.
enum Found {
    Hit(bool),
    Counts { hits: u64, misses: u64 },
    Done,
}

trait Outcome {
    fn found(&self) -> Found;
}

impl Outcome for Option<Bytes> {
    fn found(&self) -> Found {
        Found::Hit(self.is_some())
    }
}
impl Outcome for Option<(Bytes, Option<Duration>)> {
    fn found(&self) -> Found {
        Found::Hit(self.is_some())
    }
}
impl Outcome for Vec<Option<Bytes>> {
    fn found(&self) -> Found {
        let hits = self.iter().filter(|v| v.is_some()).count() as u64;
        Found::Counts {
            hits,
            misses: self.len() as u64 - hits,
        }
    }
}
macro_rules! done {
    ($($t:ty),*) => { $(impl Outcome for $t { fn found(&self) -> Found { Found::Done } })* };
}
done!((), bool, u64, KeyTtl, CacheStats);

/// Twelve hex digits naming a key without revealing it: the key itself when it already is a
/// hex digest (larder's request hashes), else the start of its SHA-256.
pub fn key_label(key: &str) -> String {
    let hexish = key.len() >= 32 && key.bytes().all(|b| b.is_ascii_hexdigit());
    if hexish {
        key[..12].to_owned()
    } else {
        let digest = Sha256::digest(key.as_bytes());
        crate::transport::hex(&digest[..6])
    }
}

impl<C: Cache> Instrumented<C> {
    async fn observe<T: Outcome>(
        &self,
        op: &'static str,
        key: Option<&str>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = tracing::debug_span!(
            "larder.cache",
            cache = &*self.name,
            op,
            key = Empty,
            hit = Empty,
            hits = Empty,
            misses = Empty,
            error = Empty,
            duration_us = Empty,
        );
        if let Some(k) = key
            && !span.is_disabled()
        {
            span.record("key", key_label(k).as_str());
        }
        let start = self.clock.now_us();
        let result = work.instrument(span.clone()).await;
        let took = self.clock.now_us().saturating_sub(start);
        let outcome = match &result {
            Ok(v) => match v.found() {
                Found::Hit(true) => {
                    span.record("hit", true);
                    "hit"
                }
                Found::Hit(false) => {
                    span.record("hit", false);
                    "miss"
                }
                Found::Counts { hits, misses } => {
                    span.record("hits", hits);
                    span.record("misses", misses);
                    metrics::counter!("larder_cache_hits_total", "cache" => self.name.clone())
                        .increment(hits);
                    metrics::counter!("larder_cache_misses_total", "cache" => self.name.clone())
                        .increment(misses);
                    "ok"
                }
                Found::Done => "ok",
            },
            Err(e) => {
                span.record("error", tracing::field::display(e));
                "error"
            }
        };
        span.record("duration_us", took);
        metrics::counter!(
            "larder_cache_operations_total",
            "cache" => self.name.clone(),
            "op" => op,
            "outcome" => outcome
        )
        .increment(1);
        match outcome {
            "hit" => metrics::counter!("larder_cache_hits_total", "cache" => self.name.clone())
                .increment(1),
            "miss" => metrics::counter!("larder_cache_misses_total", "cache" => self.name.clone())
                .increment(1),
            _ => {}
        }
        metrics::histogram!(
            "larder_cache_operation_duration_seconds",
            "cache" => self.name.clone(),
            "op" => op
        )
        .record(took as f64 / 1e6);
        result
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl<C: Cache> Cache for Instrumented<C> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.observe("get", Some(key), self.inner.get(key)).await
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>> {
        self.observe("get_with_ttl", Some(key), self.inner.get_with_ttl(key))
            .await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.observe("set", Some(key), self.inner.set(key, value, ttl))
            .await
    }
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        self.observe("set_nx", Some(key), self.inner.set_nx(key, value, ttl))
            .await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.observe("delete", Some(key), self.inner.delete(key))
            .await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.observe("exists", Some(key), self.inner.exists(key))
            .await
    }
    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        self.observe("ttl", Some(key), self.inner.ttl(key)).await
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.observe("expire", Some(key), self.inner.expire(key, ttl))
            .await
    }
    async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.observe("mget", None, self.inner.mget(keys)).await
    }
    async fn mset(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<()> {
        self.observe("mset", None, self.inner.mset(entries, ttl))
            .await
    }
    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.observe("delete_pattern", None, self.inner.delete_pattern(pattern))
            .await
    }
    async fn clear(&self) -> Result<u64> {
        self.observe("clear", None, self.inner.clear()).await
    }
    async fn stats(&self) -> Result<CacheStats> {
        self.inner.stats().await
    }
    async fn ping(&self) -> Result<()> {
        self.observe("ping", None, self.inner.ping()).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn record_corrupt(&self) {
        metrics::counter!("larder_cache_corrupt_total", "cache" => self.name.clone()).increment(1);
        self.inner.record_corrupt();
    }
    fn clock(&self) -> Option<crate::SharedClock> {
        self.inner.clock()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures_executor::block_on;
    use parking_lot::Mutex;

    use super::*;
    use crate::testing::MemTransport;
    use crate::{ManualClock, MemoryCache, RedisCache};

    type FieldMap = BTreeMap<String, String>;

    /// Every span's name and recorded fields, as text.
    #[derive(Default)]
    struct Spans {
        next: AtomicU64,
        spans: Mutex<BTreeMap<u64, (String, FieldMap)>>,
    }

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.insert(
                field.name().to_owned(),
                format!("{value:?}").replace('"', ""),
            );
        }
    }

    impl tracing::Subscriber for Spans {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.spans
                .lock()
                .insert(id, (attrs.metadata().name().to_owned(), fields));
            tracing::span::Id::from_u64(id)
        }
        fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            if let Some((_, fields)) = self.spans.lock().get_mut(&id.into_u64()) {
                values.record(&mut Fields(fields));
            }
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Counter totals and histogram sample counts by `name{label=value,…}`.
    #[derive(Default)]
    struct Recorder {
        values: Arc<Mutex<BTreeMap<String, u64>>>,
    }

    struct Cell(Arc<Mutex<BTreeMap<String, u64>>>, String);

    impl metrics::CounterFn for Cell {
        fn increment(&self, value: u64) {
            *self.0.lock().entry(self.1.clone()).or_default() += value;
        }
        fn absolute(&self, value: u64) {
            self.0.lock().insert(self.1.clone(), value);
        }
    }
    impl metrics::HistogramFn for Cell {
        fn record(&self, _: f64) {
            *self.0.lock().entry(self.1.clone()).or_default() += 1;
        }
    }

    fn name(key: &metrics::Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl metrics::Recorder for Recorder {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {
        }
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::from_arc(Arc::new(Cell(self.values.clone(), name(key))))
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::from_arc(Arc::new(Cell(self.values.clone(), name(key))))
        }
    }

    #[test]
    fn every_operation_gets_a_span_with_op_key_label_hit_and_duration() {
        let spans = Arc::new(Spans::default());
        let clock = Arc::new(ManualClock::new(0));
        let cache = Instrumented::new(
            MemoryCache::builder()
                .clock(clock.clone())
                .max_entries(100)
                .build()
                .unwrap(),
        )
        .clock(clock)
        .name("l1");
        let secret_key = "user:alice@example.com";
        tracing::subscriber::with_default(spans.clone(), || {
            block_on(async {
                cache.set(secret_key, "v".into(), None).await.unwrap();
                cache.get(secret_key).await.unwrap();
                cache.get("absent").await.unwrap();
                cache.mget(&[secret_key, "absent"]).await.unwrap();
            })
        });
        let spans = spans.spans.lock();
        let all: Vec<_> = spans.values().collect();
        assert_eq!(all.len(), 4, "{all:?}");
        for (name, fields) in &all {
            assert_eq!(name, "larder.cache");
            assert_eq!(fields["cache"], "l1");
            assert!(fields.contains_key("duration_us"), "{fields:?}");
            assert!(
                fields.values().all(|v| !v.contains("alice")),
                "the key itself never appears: {fields:?}"
            );
        }
        let (_, set) = all[0];
        assert_eq!(set["op"], "set");
        assert_eq!(set["key"], key_label(secret_key));
        assert_eq!(set["key"].len(), 12);
        assert_eq!(
            (all[1].1["op"].as_str(), all[1].1["hit"].as_str()),
            ("get", "true")
        );
        assert_eq!(all[2].1["hit"], "false");
        assert_eq!(
            (all[3].1["hits"].as_str(), all[3].1["misses"].as_str()),
            ("1", "1")
        );
    }

    #[test]
    fn request_hashes_label_themselves_and_other_keys_are_hashed() {
        let hash = "c7c487e83861ce49a4fe92bc5731f02fa960ca0c76306c8b4f0df16b43b84a04";
        assert_eq!(key_label(hash), "c7c487e83861");
        assert_ne!(key_label("a"), key_label("b"));
        assert!(key_label("a").bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn metrics_count_outcomes_hits_misses_errors_and_latency() {
        let recorder = Recorder::default();
        let t = MemTransport::new();
        let clock = t.shared_clock();
        let cache = Instrumented::new(RedisCache::new(t.clone()))
            .clock(clock)
            .name("redis");
        metrics::with_local_recorder(&recorder, || {
            block_on(async {
                cache.set("k", "v".into(), None).await.unwrap();
                cache.get("k").await.unwrap();
                cache.get("nope").await.unwrap();
                cache.mget(&["k", "nope", "nope2"]).await.unwrap();
                t.fail_next(1, crate::ErrorKind::Io);
                cache.get("k").await.unwrap_err();
            })
        });
        let v = recorder.values.lock();
        let get = |k: &str| v.get(k).copied().unwrap_or(0);
        assert_eq!(
            get("larder_cache_operations_total{cache=redis,op=set,outcome=ok}"),
            1
        );
        assert_eq!(
            get("larder_cache_operations_total{cache=redis,op=get,outcome=hit}"),
            1
        );
        assert_eq!(
            get("larder_cache_operations_total{cache=redis,op=get,outcome=miss}"),
            1
        );
        assert_eq!(
            get("larder_cache_operations_total{cache=redis,op=get,outcome=error}"),
            1
        );
        assert_eq!(
            get("larder_cache_hits_total{cache=redis}"),
            2,
            "get hit + 1 of mget"
        );
        assert_eq!(
            get("larder_cache_misses_total{cache=redis}"),
            3,
            "get miss + 2 of mget"
        );
        assert_eq!(
            get("larder_cache_operation_duration_seconds{cache=redis,op=get}"),
            3,
            "one latency sample per get, errors included"
        );
    }
}
