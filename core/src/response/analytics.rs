//! Analytics: hits, misses, tokens and cost saved per model, and the hit-rate alert.
//!
//! Every instance counts locally and adds its counts to Redis (a hash per model, `HINCRBY`)
//! in the same pipeline as its next write, in a lookup's pipeline once `flush_every` events
//! are pending, or when [`flush`](super::ResponseCache::flush) is called, so analytics never cost the caller a round trip and every instance
//! contributes to the same totals.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::keys::Stat;
use crate::transport::{MaybeSend, MaybeSync};
use crate::value::{Cmd, Value};

use super::answer::Usage;
use super::keys::ResponseKeys;

/// Nano-dollars per dollar: costs are stored as integer nano-USD so that `HINCRBY` adds
/// them exactly.
const NANOS_PER_USD: f64 = 1e9;

/// A model's price in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ModelPrice {
    /// USD per million input (prompt) tokens.
    pub input_per_million: f64,
    /// USD per million output (completion) tokens.
    pub output_per_million: f64,
}

impl ModelPrice {
    /// A price in USD per million input and output tokens.
    pub fn per_million(input: f64, output: f64) -> Self {
        ModelPrice {
            input_per_million: input,
            output_per_million: output,
        }
    }

    /// What `usage` costs at this price, in USD.
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_million
            + usage.completion_tokens as f64 * self.output_per_million)
            / 1e6
    }
}

/// The prices used to estimate the cost saved by hits. Empty by default (prices change:
/// configure the ones you pay); a model without a price saves tokens but no dollars unless
/// a [fallback](Prices::fallback) is set.
///
/// # Examples
///
/// ```
/// use larder_core::response::{ModelPrice, Prices, Usage};
///
/// let prices = Prices::new()
///     .price("gpt-4o-mini", ModelPrice::per_million(0.15, 0.60))
///     .fallback(ModelPrice::per_million(1.0, 3.0));
/// let saved = prices.cost("gpt-4o-mini", Usage::new(1_000_000, 0));
/// assert!((saved - 0.15).abs() < 1e-12);
/// assert!((prices.cost("other", Usage::new(0, 1_000_000)) - 3.0).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    models: HashMap<String, ModelPrice>,
    fallback: Option<ModelPrice>,
}

impl Prices {
    /// No prices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the price of a model.
    #[must_use]
    pub fn price(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.models.insert(model.into(), price);
        self
    }

    /// The price of models that have none of their own.
    #[must_use]
    pub fn fallback(mut self, price: ModelPrice) -> Self {
        self.fallback = Some(price);
        self
    }

    /// The price of `model`, if known.
    pub fn get(&self, model: &str) -> Option<ModelPrice> {
        self.models.get(model).copied().or(self.fallback)
    }

    /// What `usage` of `model` costs (0 without a price), in USD.
    pub fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.get(model).map_or(0.0, |p| p.cost(usage))
    }
}

/// Counts for one model (or the total over all models).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ModelAnalytics {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Answers stored.
    pub writes: u64,
    /// Input tokens not sent to the model thanks to hits.
    pub prompt_tokens_saved: u64,
    /// Output tokens not generated thanks to hits.
    pub completion_tokens_saved: u64,
    /// Estimated USD saved (at the prices configured where each hit happened).
    pub cost_saved_usd: f64,
    /// The provider's own prompt cache, on the answers stored (the misses that reached the
    /// model): input tokens it served from its cache (OpenAI
    /// `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`).
    pub provider_cache_read_tokens: u64,
    /// Input tokens the provider wrote to its own prompt cache on those calls (Anthropic
    /// `cache_creation_input_tokens`, OpenAI `cache_write_tokens`).
    pub provider_cache_write_tokens: u64,
}

impl ModelAnalytics {
    /// `hits / (hits + misses)`, 0 without lookups.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// Input plus output tokens saved.
    pub fn tokens_saved(&self) -> u64 {
        self.prompt_tokens_saved + self.completion_tokens_saved
    }

    fn add(&mut self, other: &ModelAnalytics) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.writes += other.writes;
        self.prompt_tokens_saved += other.prompt_tokens_saved;
        self.completion_tokens_saved += other.completion_tokens_saved;
        self.cost_saved_usd += other.cost_saved_usd;
        self.provider_cache_read_tokens += other.provider_cache_read_tokens;
        self.provider_cache_write_tokens += other.provider_cache_write_tokens;
    }
}

/// Analytics per model, with totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AnalyticsReport {
    /// Counts per model (sorted by name).
    pub models: BTreeMap<String, ModelAnalytics>,
    /// `{prefix}:stats:hits|misses|writes`: every reader of the prefix counts there,
    /// go-deep-agent included (for a local backend: this instance's counts).
    pub stats: StatsTotals,
}

/// The prefix-wide counters shared with go-deep-agent and `RedisCache`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatsTotals {
    /// `{prefix}:stats:hits`.
    pub hits: u64,
    /// `{prefix}:stats:misses`.
    pub misses: u64,
    /// `{prefix}:stats:writes`.
    pub writes: u64,
}

impl AnalyticsReport {
    /// The sum over every model.
    pub fn total(&self) -> ModelAnalytics {
        let mut t = ModelAnalytics::default();
        for m in self.models.values() {
            t.add(m);
        }
        t
    }
}

/// What the hit-rate alert hook receives.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HitRateAlert {
    /// The hit rate over the last window.
    pub hit_rate: f64,
    /// The configured threshold it fell below.
    pub threshold: f64,
    /// Hits in the window.
    pub hits: u64,
    /// Misses in the window.
    pub misses: u64,
}

/// A hit-rate alert hook: `Send + Sync` natively.
pub trait AlertHook: Fn(&HitRateAlert) + MaybeSend + MaybeSync {}
impl<F: Fn(&HitRateAlert) + MaybeSend + MaybeSync> AlertHook for F {}

/// The hit-rate alert: evaluated every `window` lookups of this instance; the hook fires
/// once when the window's hit rate is below `threshold`, and again only after a window at
/// or above it.
pub(crate) struct Alert {
    pub(crate) threshold: f64,
    pub(crate) window: u64,
    pub(crate) hook: Arc<dyn AlertHook>,
    state: Mutex<AlertState>,
}

#[derive(Default)]
struct AlertState {
    hits: u64,
    misses: u64,
    firing: bool,
}

impl fmt::Debug for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alert")
            .field("threshold", &self.threshold)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Alert {
    pub(crate) fn new(threshold: f64, window: u64, hook: Arc<dyn AlertHook>) -> Self {
        Alert {
            threshold,
            window: window.max(1),
            hook,
            state: Mutex::new(AlertState::default()),
        }
    }

    /// Records one lookup; calls the hook (outside the lock) when the window closes below
    /// the threshold.
    pub(crate) fn record(&self, hit: bool) {
        let fire = {
            let mut s = self.state.lock();
            if hit {
                s.hits += 1;
            } else {
                s.misses += 1;
            }
            if s.hits + s.misses < self.window {
                return;
            }
            let alert = HitRateAlert {
                hit_rate: s.hits as f64 / (s.hits + s.misses) as f64,
                threshold: self.threshold,
                hits: s.hits,
                misses: s.misses,
            };
            s.hits = 0;
            s.misses = 0;
            let below = alert.hit_rate < self.threshold;
            let fire = below && !s.firing;
            s.firing = below;
            fire.then_some(alert)
        };
        if let Some(alert) = fire {
            (self.hook)(&alert);
        }
    }
}

/// Integer counts not yet added to Redis (or, for a local backend, the running totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    hits: i64,
    misses: i64,
    writes: i64,
    prompt_tokens_saved: i64,
    completion_tokens_saved: i64,
    cost_saved_nanos: i64,
    provider_cache_read_tokens: i64,
    provider_cache_write_tokens: i64,
}

impl Counts {
    const FIELDS: [&'static str; 8] = [
        "hits",
        "misses",
        "writes",
        "prompt_tokens_saved",
        "completion_tokens_saved",
        "cost_saved_nanos",
        "provider_cache_read_tokens",
        "provider_cache_write_tokens",
    ];

    fn values(&self) -> [i64; 8] {
        [
            self.hits,
            self.misses,
            self.writes,
            self.prompt_tokens_saved,
            self.completion_tokens_saved,
            self.cost_saved_nanos,
            self.provider_cache_read_tokens,
            self.provider_cache_write_tokens,
        ]
    }

    fn merge(&mut self, o: &Counts) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.writes += o.writes;
        self.prompt_tokens_saved += o.prompt_tokens_saved;
        self.completion_tokens_saved += o.completion_tokens_saved;
        self.cost_saved_nanos += o.cost_saved_nanos;
        self.provider_cache_read_tokens += o.provider_cache_read_tokens;
        self.provider_cache_write_tokens += o.provider_cache_write_tokens;
    }

    fn events(&self) -> u64 {
        (self.hits + self.misses + self.writes).unsigned_abs()
    }

    pub(crate) fn to_analytics(self) -> ModelAnalytics {
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        ModelAnalytics {
            hits: u(self.hits),
            misses: u(self.misses),
            writes: u(self.writes),
            prompt_tokens_saved: u(self.prompt_tokens_saved),
            completion_tokens_saved: u(self.completion_tokens_saved),
            cost_saved_usd: self.cost_saved_nanos as f64 / NANOS_PER_USD,
            provider_cache_read_tokens: u(self.provider_cache_read_tokens),
            provider_cache_write_tokens: u(self.provider_cache_write_tokens),
        }
    }

    /// Reads a `HGETALL` reply of a model's hash.
    pub(crate) fn from_hash(v: &Value) -> Counts {
        let mut c = Counts::default();
        if let Value::Array(items) = v {
            for pair in items.chunks(2) {
                let [field, value] = pair else { continue };
                let n = value.as_int().unwrap_or(0);
                match field.as_bytes() {
                    Some(b"hits") => c.hits = n,
                    Some(b"misses") => c.misses = n,
                    Some(b"writes") => c.writes = n,
                    Some(b"prompt_tokens_saved") => c.prompt_tokens_saved = n,
                    Some(b"completion_tokens_saved") => c.completion_tokens_saved = n,
                    Some(b"cost_saved_nanos") => c.cost_saved_nanos = n,
                    Some(b"provider_cache_read_tokens") => c.provider_cache_read_tokens = n,
                    Some(b"provider_cache_write_tokens") => c.provider_cache_write_tokens = n,
                    _ => {}
                }
            }
        }
        c
    }
}

/// One batch of counts taken for a flush.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    models: HashMap<String, Counts>,
    stats: [i64; 3],
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.models.is_empty() && self.stats == [0; 3]
    }

    /// The commands that add this batch to Redis: `HINCRBY` per non-zero field of each
    /// model's hash, `SADD` of the models, `INCRBY` of the prefix-wide stats.
    pub(crate) fn commands(&self, keys: &ResponseKeys, analytics: bool) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        if analytics {
            let mut names: Vec<&String> = self.models.keys().collect();
            names.sort();
            for model in &names {
                let counts = &self.models[*model];
                let key = keys.analytics_key(model);
                for (field, n) in Counts::FIELDS.iter().zip(counts.values()) {
                    if n != 0 {
                        cmds.push(Cmd::new("HINCRBY").arg(&key).arg(*field).arg(n));
                    }
                }
            }
            if !names.is_empty() {
                cmds.push(
                    Cmd::new("SADD")
                        .arg(keys.analytics_models_key())
                        .args_from(names.iter().map(|s| s.as_str())),
                );
            }
        }
        for (stat, n) in Stat::ALL.iter().zip(self.stats) {
            if n != 0 {
                cmds.push(
                    Cmd::new("INCRBY")
                        .arg(keys.scheme().stats_key(*stat))
                        .arg(n),
                );
            }
        }
        cmds
    }
}

/// This instance's counters: pending (not yet in Redis) and running totals.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    inner: Mutex<RecorderState>,
}

#[derive(Debug, Default)]
struct RecorderState {
    pending: Batch,
    pending_events: u64,
    totals: HashMap<String, Counts>,
    stats_totals: [i64; 3],
}

impl Recorder {
    fn add(&self, model: &str, delta: Counts, stats: [i64; 3]) {
        let mut s = self.inner.lock();
        s.pending_events += delta.events();
        s.pending
            .models
            .entry(model.to_owned())
            .or_default()
            .merge(&delta);
        s.totals.entry(model.to_owned()).or_default().merge(&delta);
        for (i, n) in stats.into_iter().enumerate() {
            s.pending.stats[i] += n;
            s.stats_totals[i] += n;
        }
    }

    /// A hit that saved `usage` worth `cost_usd`.
    pub(crate) fn hit(&self, model: &str, usage: Option<Usage>, cost_usd: f64) {
        let usage = usage.unwrap_or_default();
        let delta = Counts {
            hits: 1,
            prompt_tokens_saved: clamp(usage.prompt_tokens),
            completion_tokens_saved: clamp(usage.completion_tokens),
            cost_saved_nanos: (cost_usd * NANOS_PER_USD).round() as i64,
            ..Counts::default()
        };
        self.add(model, delta, [1, 0, 0]);
    }

    /// A lookup that found nothing usable.
    pub(crate) fn miss(&self, model: &str) {
        self.add(
            model,
            Counts {
                misses: 1,
                ..Counts::default()
            },
            [0, 1, 0],
        );
    }

    /// An answer stored, with the provider's own prompt-cache reads and writes on the call
    /// that produced it.
    pub(crate) fn write(&self, model: &str, cache_read: u64, cache_write: u64) {
        self.add(
            model,
            Counts {
                writes: 1,
                provider_cache_read_tokens: clamp(cache_read),
                provider_cache_write_tokens: clamp(cache_write),
                ..Counts::default()
            },
            [0, 0, 1],
        );
    }

    /// Pending events (hits + misses + writes) not yet flushed.
    pub(crate) fn pending_events(&self) -> u64 {
        self.inner.lock().pending_events
    }

    /// Takes every pending count (leaving none).
    pub(crate) fn take(&self) -> Batch {
        let mut s = self.inner.lock();
        s.pending_events = 0;
        std::mem::take(&mut s.pending)
    }

    /// Puts a batch back after a failed flush.
    pub(crate) fn restore(&self, batch: Batch) {
        let mut s = self.inner.lock();
        for (model, counts) in batch.models {
            s.pending_events += counts.events();
            s.pending.models.entry(model).or_default().merge(&counts);
        }
        for (pending, n) in s.pending.stats.iter_mut().zip(batch.stats) {
            *pending += n;
        }
    }

    /// This instance's totals since it was built.
    pub(crate) fn local_report(&self) -> AnalyticsReport {
        let s = self.inner.lock();
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        AnalyticsReport {
            models: s
                .totals
                .iter()
                .map(|(m, c)| (m.clone(), c.to_analytics()))
                .collect(),
            stats: StatsTotals {
                hits: u(s.stats_totals[0]),
                misses: u(s.stats_totals[1]),
                writes: u(s.stats_totals[2]),
            },
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
