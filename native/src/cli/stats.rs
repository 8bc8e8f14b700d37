//! `larder stats`: hit rate, per-model hits and misses, tokens and cost saved.

use std::process::ExitCode;

use clap::Args;
use larder_core::response::{AnalyticsReport, ModelAnalytics};
use serde_json::json;

use super::{ConnectArgs, percent, print_json};

/// Arguments of `larder stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Where the cache is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub(super) async fn run(args: StatsArgs) -> Result<ExitCode, String> {
    let c = args.connect.connect().await?;
    let report = c
        .cache
        .analytics()
        .await
        .map_err(|e| format!("cannot read the analytics: {e}"))?;
    let prefix = c.cache.key_scheme().prefix().to_owned();
    if args.connect.json {
        print_json(&report_json(&prefix, &args.connect, &report));
    } else {
        print_text(&prefix, &args.connect, &report);
    }
    Ok(ExitCode::SUCCESS)
}

fn model_json(m: &ModelAnalytics) -> serde_json::Value {
    json!({
        "hits": m.hits,
        "misses": m.misses,
        "writes": m.writes,
        "hit_rate": m.hit_rate(),
        "prompt_tokens_saved": m.prompt_tokens_saved,
        "completion_tokens_saved": m.completion_tokens_saved,
        "tokens_saved": m.tokens_saved(),
        "cost_saved_usd": m.cost_saved_usd,
        "provider_cache_read_tokens": m.provider_cache_read_tokens,
        "provider_cache_write_tokens": m.provider_cache_write_tokens,
    })
}

fn report_json(prefix: &str, args: &ConnectArgs, r: &AnalyticsReport) -> serde_json::Value {
    let lookups = r.stats.hits + r.stats.misses;
    let mut total = model_json(&r.total());
    total["prefix"] = json!(prefix);
    total["mode"] = json!(if args.go_compat {
        "go-deep-agent"
    } else {
        "larder"
    });
    total["models"] = r
        .models
        .iter()
        .map(|(name, m)| (name.clone(), model_json(m)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    total["stats"] = json!({
        "hits": r.stats.hits,
        "misses": r.stats.misses,
        "writes": r.stats.writes,
        "hit_rate": if lookups == 0 { 0.0 } else { r.stats.hits as f64 / lookups as f64 },
    });
    total
}

fn print_text(prefix: &str, args: &ConnectArgs, r: &AnalyticsReport) {
    let t = r.total();
    let mode = if args.go_compat {
        " (go-deep-agent format)"
    } else {
        ""
    };
    println!("prefix {prefix}{mode}: every instance sharing it");
    println!(
        "lookups {}  hits {}  misses {}  hit rate {}  writes {}",
        t.hits + t.misses,
        t.hits,
        t.misses,
        percent(t.hit_rate()),
        t.writes
    );
    println!(
        "tokens saved {} (prompt {}, completion {})  estimated cost saved ${:.4}",
        t.tokens_saved(),
        t.prompt_tokens_saved,
        t.completion_tokens_saved,
        t.cost_saved_usd
    );
    let s = &r.stats;
    let lookups = s.hits + s.misses;
    println!(
        "{prefix}:stats counters (all readers, go-deep-agent included): hits {}  misses {}  \
         writes {}  hit rate {}",
        s.hits,
        s.misses,
        s.writes,
        percent(if lookups == 0 {
            0.0
        } else {
            s.hits as f64 / lookups as f64
        })
    );
    if r.models.is_empty() {
        println!("no per-model analytics yet");
        return;
    }
    let width = r.models.keys().map(String::len).max().unwrap_or(5).max(5);
    println!();
    println!(
        "{:<width$}  {:>10}  {:>10}  {:>8}  {:>14}  {:>12}",
        "model", "hits", "misses", "hit rate", "tokens saved", "cost saved"
    );
    for (name, m) in &r.models {
        println!(
            "{:<width$}  {:>10}  {:>10}  {:>8}  {:>14}  {:>12}",
            name,
            m.hits,
            m.misses,
            percent(m.hit_rate()),
            m.tokens_saved(),
            format!("${:.4}", m.cost_saved_usd)
        );
    }
}
