//! Load generation and measurement shared by the fault tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use larder_core::{Cache, ErrorKind};

/// One cache call made by the load generator.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When the call started, since the load started.
    pub(crate) at: Duration,
    /// How long it took.
    pub(crate) took: Duration,
    /// `None` on success, else the transport error kind (or `"other"`).
    pub(crate) error: Option<String>,
}

impl Sample {
    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// A running load: `tasks` tasks each doing SET then GET of their own keys, with a short
/// pause between calls, until stopped.
pub(crate) struct Load {
    pub(crate) origin: Instant,
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub(crate) fn start(cache: Arc<dyn Cache>, tasks: usize, pause: Duration) -> Load {
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..tasks)
            .map(|t| {
                let cache = cache.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("load-{t}-{i}");
                        let start = Instant::now();
                        let r = cache
                            .set(&key, "v".into(), Some(Duration::from_secs(60)))
                            .await;
                        samples.push(sample(origin, start, r.err()));
                        let start = Instant::now();
                        let r = cache.get(&key).await;
                        samples.push(sample(origin, start, r.err()));
                        tokio::time::sleep(pause).await;
                    }
                    samples
                })
            })
            .collect();
        Load {
            origin,
            stop,
            handles,
        }
    }

    /// Stops the load and returns every sample, ordered by start time.
    pub(crate) async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in self.handles {
            all.extend(h.await.expect("load task"));
        }
        all.sort_by_key(|s| s.at);
        all
    }

    /// Time since the load started.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

fn sample(origin: Instant, start: Instant, err: Option<larder_core::Error>) -> Sample {
    Sample {
        at: start - origin,
        took: start.elapsed(),
        error: err.map(|e| {
            e.transport_kind()
                .map(ErrorKind::as_str)
                .unwrap_or("other")
                .to_owned()
        }),
    }
}

/// A summary of samples.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) calls: usize,
    pub(crate) errors: usize,
    pub(crate) max_took: Duration,
    pub(crate) first_error: Option<Duration>,
    pub(crate) last_error: Option<Duration>,
    pub(crate) kinds: Vec<(String, usize)>,
}

pub(crate) fn summarize(samples: &[Sample]) -> Summary {
    let errors: Vec<&Sample> = samples.iter().filter(|s| !s.ok()).collect();
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for e in &errors {
        let k = e.error.clone().unwrap_or_default();
        match kinds.iter_mut().find(|(n, _)| *n == k) {
            Some((_, c)) => *c += 1,
            None => kinds.push((k, 1)),
        }
    }
    Summary {
        calls: samples.len(),
        errors: errors.len(),
        max_took: samples.iter().map(|s| s.took).max().unwrap_or_default(),
        first_error: errors.first().map(|s| s.at),
        last_error: errors.iter().map(|s| s.at + s.took).max(),
        kinds,
    }
}

/// The first successful call that started at or after `t`.
pub(crate) fn first_success_after(samples: &[Sample], t: Duration) -> Option<&Sample> {
    samples
        .iter()
        .filter(|s| s.at >= t && s.ok())
        .min_by_key(|s| s.at)
}

/// Runs blocking harness work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("harness thread")
}

/// A Redis cache under `prefix` over a transport built from `opts`: the one way to build one.
pub(crate) async fn cache_with(
    opts: &larder_native::RedisOptions,
    prefix: &str,
) -> larder_core::Result<larder_core::RedisCache<larder_native::RedisTransport>> {
    let transport = larder_native::RedisTransport::from_options(opts).await?;
    larder_core::RedisCache::builder(transport)
        .prefix(prefix)
        .build()
}
