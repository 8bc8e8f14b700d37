//! Warming: computing many answers ahead of traffic, with bounded concurrency.

use std::fmt;
use std::future::Future;

use futures_util::StreamExt;

use super::{
    CacheControl, ComputeError, Entry, LlmRequest, LlmResponse, Miss, Mode, ResponseCache,
};
use crate::transport::MaybeSend;

/// A progress callback for [`ResponseCache::warm`]: `Send` natively.
pub trait ProgressHook: FnMut(&WarmProgress) + MaybeSend {}
impl<F: FnMut(&WarmProgress) + MaybeSend> ProgressHook for F {}

/// How [`ResponseCache::warm`] runs.
///
/// # Examples
///
/// ```
/// use larder_core::response::{CacheControl, WarmOptions};
///
/// let options = WarmOptions::new()
///     .concurrency(8)
///     .control(CacheControl::default().namespace("faq"))
///     .on_progress(|p| eprintln!("{}/{} ({} failed)", p.done, p.total, p.failed));
/// # drop(options);
/// ```
pub struct WarmOptions<'a> {
    concurrency: usize,
    control: CacheControl,
    recompute: bool,
    progress: Option<Box<dyn ProgressHook + 'a>>,
}

impl fmt::Debug for WarmOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmOptions")
            .field("concurrency", &self.concurrency)
            .field("control", &self.control)
            .field("recompute", &self.recompute)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for WarmOptions<'_> {
    fn default() -> Self {
        WarmOptions {
            concurrency: 4,
            control: CacheControl::default(),
            recompute: false,
            progress: None,
        }
    }
}

impl<'a> WarmOptions<'a> {
    /// Four at a time, default controls, requests already cached are skipped, no progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` computations at once (at least 1; default 4). Size it to the model
    /// provider's rate limit.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The controls every request is stored with (TTL, namespace, tags).
    #[must_use]
    pub fn control(mut self, control: CacheControl) -> Self {
        self.control = control;
        self
    }

    /// Computes every request even when a fresh answer is cached (default: skip those).
    #[must_use]
    pub fn recompute(mut self, on: bool) -> Self {
        self.recompute = on;
        self
    }

    /// Called after each request finishes, in completion order.
    #[must_use]
    pub fn on_progress(mut self, hook: impl ProgressHook + 'a) -> Self {
        self.progress = Some(Box::new(hook));
        self
    }
}

/// Where a warm-up stands (passed to the progress callback after each request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Requests finished (computed, skipped or failed).
    pub done: usize,
    /// Requests in the warm-up.
    pub total: usize,
    /// Answers computed and stored.
    pub computed: usize,
    /// Requests already cached (fresh), not computed.
    pub skipped: usize,
    /// Requests whose computation or write failed.
    pub failed: usize,
}

/// The outcome of [`ResponseCache::warm`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// The final counts.
    pub progress: WarmProgress,
    /// `(index in the input, error text)` of each failed request, in input order.
    pub failures: Vec<(usize, String)>,
}

enum Outcome {
    Computed,
    Skipped,
    Failed(String),
}

impl ResponseCache {
    /// Computes and stores answers for `requests` with `compute` (which gets its own copy
    /// of each request, so its future may hold it), at most
    /// [`concurrency`](WarmOptions::concurrency) at a time, skipping those already cached.
    ///
    /// Warm-up lookups and writes are not counted as hits or misses in the analytics. A
    /// failing request does not stop the others: it is counted and reported in
    /// [`WarmReport::failures`].
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use larder_core::response::{LlmRequest, LlmResponse, ResponseCache, WarmOptions};
    /// use larder_core::{ManualClock, MemoryCache};
    /// use std::sync::Arc;
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let cache = ResponseCache::local(MemoryCache::builder().clock(clock.clone()).max_entries(1000).build().unwrap()).build().unwrap();
    /// let faq = ["What are your hours?", "Where are you?"]
    ///     .map(|q| LlmRequest::chat("gpt-4o-mini").user(q));
    /// let report = cache
    ///     .warm(
    ///         faq,
    ///         |r: LlmRequest| async move {
    ///             let q = r.prompt_text().unwrap_or_default();
    ///             Ok::<_, std::io::Error>(LlmResponse::new(format!("A: {q}")))
    ///         },
    ///         WarmOptions::new().concurrency(2),
    ///     )
    ///     .await;
    /// assert_eq!(report.progress.computed, 2);
    /// # });
    /// ```
    pub async fn warm<I, F, Fut, E>(
        &self,
        requests: I,
        compute: F,
        options: WarmOptions<'_>,
    ) -> WarmReport
    where
        I: IntoIterator<Item = LlmRequest>,
        F: Fn(LlmRequest) -> Fut,
        Fut: Future<Output = Result<LlmResponse, E>>,
        E: fmt::Display,
    {
        let requests: Vec<LlmRequest> = requests.into_iter().collect();
        let WarmOptions {
            concurrency,
            control,
            recompute,
            mut progress,
        } = options;
        let mut report = WarmReport {
            progress: WarmProgress {
                total: requests.len(),
                ..WarmProgress::default()
            },
            failures: Vec::new(),
        };
        let compute = &compute;
        let control = &control;
        let mut outcomes = futures_util::stream::iter(requests.iter().enumerate())
            .map(|(i, request)| async move {
                (i, self.warm_one(request, control, recompute, compute).await)
            })
            .buffer_unordered(concurrency);
        while let Some((i, outcome)) = outcomes.next().await {
            let p = &mut report.progress;
            p.done += 1;
            match outcome {
                Outcome::Computed => p.computed += 1,
                Outcome::Skipped => p.skipped += 1,
                Outcome::Failed(why) => {
                    p.failed += 1;
                    report.failures.push((i, why));
                }
            }
            if let Some(hook) = progress.as_mut() {
                hook(&report.progress);
            }
        }
        report.failures.sort_by_key(|(i, _)| *i);
        tracing::info!(
            total = report.progress.total,
            computed = report.progress.computed,
            skipped = report.progress.skipped,
            failed = report.progress.failed,
            "warm-up finished"
        );
        report
    }

    async fn warm_one<F, Fut, E>(
        &self,
        request: &LlmRequest,
        control: &CacheControl,
        recompute: bool,
        compute: &F,
    ) -> Outcome
    where
        F: Fn(LlmRequest) -> Fut,
        Fut: Future<Output = Result<LlmResponse, E>>,
        E: fmt::Display,
    {
        let t = match self.target(request, control) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let skip_read = recompute && self.inner.mode == Mode::GoDeepAgent;
        let lookup = if skip_read {
            Default::default()
        } else {
            match self.lookup(&t, !recompute).await {
                Ok(l) => l,
                Err(e) => return Outcome::Failed(format!("cache lookup failed: {e}")),
            }
        };
        if matches!(lookup.entry, Some(Entry::Fresh(_))) {
            return Outcome::Skipped;
        }
        // Errors become text so that they can be shared with coalesced callers.
        let compute = || async { compute(request.clone()).await.map_err(|e| e.to_string()) };
        match self
            .compute_path(
                &t,
                request,
                control,
                Miss {
                    generation: lookup.generation,
                    store: true,
                    fail_open: false,
                },
                compute,
            )
            .await
        {
            Ok(_) => Outcome::Computed,
            Err(ComputeError::Compute(e)) => Outcome::Failed(e.to_string()),
            Err(ComputeError::Cache(e)) => Outcome::Failed(format!("cache write failed: {e}")),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}
