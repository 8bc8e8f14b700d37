//! `larder bench`: SET, GET and response-cache hit throughput and latency.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache, Usage};
use larder_core::transport::{bulk_opt, int, set_reply};
use larder_core::{Cmd, KeyScheme, RedisCache, ScanCursor, SetOptions, Transport};
use serde_json::json;

use super::{ConnectArgs, print_json};

/// Arguments of `larder bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Operations per phase.
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Operations in flight at once (over the one multiplexed connection).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Distinct keys (operations cycle over them).
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Where the cache is. Benchmark keys live under `{prefix}:bench:` and are deleted
    /// at the end.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The measurements of one phase.
struct Phase {
    name: &'static str,
    ops: usize,
    errors: usize,
    wall: Duration,
    /// Latencies in microseconds.
    latencies: hdrhistogram::Histogram<u64>,
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        Duration::from_micros(if p >= 1.0 {
            self.latencies.max()
        } else {
            self.latencies.value_at_quantile(p)
        })
    }

    fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "phase": self.name,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": self.wall.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec(),
            "p50_ms": ms(self.percentile(0.5)),
            "p99_ms": ms(self.percentile(0.99)),
            "max_ms": ms(self.percentile(1.0)),
        })
    }
}

/// Runs `n` operations, `concurrency` at a time, timing each.
async fn measure<F, Fut>(name: &'static str, n: usize, concurrency: usize, op: F) -> Phase
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let op = &op;
    let results: Vec<(bool, Duration)> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let t = Instant::now();
            let ok = op(i).await;
            (ok, t.elapsed())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    let errors = results.iter().filter(|(ok, _)| !ok).count();
    // Three significant digits, resized as needed: exact to 0.1 % at any latency.
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("3 digits is valid");
    for (_, d) in results {
        latencies.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    Phase {
        name,
        ops: n,
        errors,
        wall,
        latencies,
    }
}

pub(super) async fn run(args: BenchArgs) -> Result<ExitCode, String> {
    if args.requests == 0 || args.keys == 0 || args.concurrency == 0 {
        return Err("--requests, --keys and --concurrency must be at least 1".into());
    }
    let c = args.connect.connect().await?;
    let t = c.transport.clone();
    let scheme = args.connect.scheme()?;
    let bench_scheme =
        KeyScheme::new(&format!("{}:bench", scheme.prefix())).map_err(|e| e.to_string())?;
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let key = |i: usize| format!("{}:raw:{}", bench_scheme.prefix(), i % args.keys);
    let opts = SetOptions::ttl(Some(Duration::from_secs(600)));

    let set = measure("SET", args.requests, args.concurrency, |i| {
        let cmd = opts.command(key(i).as_bytes(), &value);
        let t = t.clone();
        async move { t.exec(cmd).await.ok().is_some_and(|v| set_reply(v).is_ok()) }
    })
    .await;
    if set.errors == set.ops {
        return Err("every SET failed: is Redis reachable and writable?".into());
    }
    let get = measure("GET", args.requests, args.concurrency, |i| {
        let cmd = Cmd::new("GET").arg(key(i));
        let t = t.clone();
        async move {
            t.exec(cmd)
                .await
                .ok()
                .is_some_and(|v| bulk_opt("GET", v).is_ok_and(|v| v.is_some()))
        }
    })
    .await;

    // Response-cache hits: warm `keys` requests, then ask for them.
    let responses = ResponseCache::redis(
        RedisCache::builder(t.clone())
            .key_scheme(bench_scheme.clone())
            .build()
            .map_err(|e| e.to_string())?,
    )
    .default_ttl(Duration::from_secs(600))
    .build()
    .map_err(|e| e.to_string())?;
    let text = "x".repeat(args.value_size);
    let request =
        |i: usize| LlmRequest::prompt("bench-model", format!("question {}", i % args.keys));
    let control = CacheControl::default();
    for i in 0..args.keys.min(args.requests) {
        let response = LlmResponse::new(text.clone()).with_usage(Usage::new(10, 10));
        responses
            .put(&request(i), &control, &response)
            .await
            .map_err(|e| format!("cannot warm the response cache: {e}"))?;
    }
    let hits = measure("ResponseCache hit", args.requests, args.concurrency, |i| {
        let responses = responses.clone();
        let r = request(i % args.keys.min(args.requests));
        let control = control.clone();
        async move {
            responses
                .try_get_with(&r, &control, || async {
                    Ok::<_, std::convert::Infallible>(LlmResponse::new("computed"))
                })
                .await
                .is_ok_and(|a| a.is_hit())
        }
    })
    .await;

    // Clean up everything under {prefix}:bench:.
    let pattern = bench_pattern(bench_scheme.prefix());
    let mut cursor = ScanCursor::START;
    let mut deleted = 0u64;
    loop {
        let (next, keys) = t
            .scan_page(cursor, pattern.as_bytes(), 1000)
            .await
            .map_err(|e| format!("cleanup: {e}"))?;
        if !keys.is_empty() {
            let reply = t
                .exec(Cmd::new("UNLINK").args_from(keys.iter().map(|k| &k[..])))
                .await
                .map_err(|e| format!("cleanup: {e}"))?;
            deleted += int("UNLINK", reply).unwrap_or(0).max(0) as u64;
        }
        if next.is_done() {
            break;
        }
        cursor = next;
    }

    let phases = [set, get, hits];
    if args.connect.json {
        print_json(&json!({
            "requests": args.requests,
            "concurrency": args.concurrency,
            "value_size": args.value_size,
            "keys": args.keys,
            "phases": phases.iter().map(Phase::json).collect::<Vec<_>>(),
            "cleaned_up_keys": deleted,
        }));
    } else {
        println!(
            "{} ops per phase, {} in flight, {}-byte values, {} keys",
            args.requests, args.concurrency, args.value_size, args.keys
        );
        println!(
            "{:<18}  {:>12}  {:>9}  {:>9}  {:>9}  {:>7}",
            "phase", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        for p in &phases {
            let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
            println!(
                "{:<18}  {:>12.0}  {:>9}  {:>9}  {:>9}  {:>7}",
                p.name,
                p.ops_per_sec(),
                ms(p.percentile(0.5)),
                ms(p.percentile(0.99)),
                ms(p.percentile(1.0)),
                p.errors
            );
        }
    }
    let errors: usize = phases.iter().map(|p| p.errors).sum();
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `SCAN MATCH` pattern for every key under `{prefix}:`, glob characters escaped.
fn bench_pattern(prefix: &str) -> String {
    let mut out = String::new();
    for ch in prefix.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push_str(":*");
    out
}
