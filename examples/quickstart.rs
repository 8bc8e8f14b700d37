//! Quickstart: cache a slow "LLM" call in the embedded memory cache (no server needed).
//!
//! Run with `cargo run --example quickstart`.

use std::time::{Duration, Instant};

use larder::{Cache, MemoryCache, SystemClock, request_hash};
use serde::Serialize;

/// The request we send to the model. Any `Serialize` type works as a cache key: larder
/// hashes its canonical JSON (see docs/KEY_FORMAT.md).
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    temperature: f64,
}

/// A stand-in for a real model call: slow and deterministic.
async fn slow_llm(request: &ChatRequest<'_>) -> String {
    tokio::time::sleep(Duration::from_millis(400)).await;
    format!("[{}] The capital of France is Paris.", request.model)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = MemoryCache::builder(SystemClock::shared())
        .max_entries(10_000)
        .default_ttl(Some(Duration::from_secs(3600)))
        .build();

    let request = ChatRequest {
        model: "gpt-4o-mini",
        prompt: "What is the capital of France?",
        temperature: 0.0,
    };
    let key = request_hash(&request)?;
    println!("cache key: {key}");

    for attempt in 1..=2 {
        let started = Instant::now();
        let (answer, source) = match cache.get(&key).await? {
            Some(hit) => (String::from_utf8(hit.to_vec())?, "cache"),
            None => {
                let fresh = slow_llm(&request).await;
                cache.set(&key, fresh.clone().into(), None).await?;
                (fresh, "model")
            }
        };
        println!(
            "call {attempt}: {answer:?} from {source} in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }

    let stats = cache.stats().await?;
    println!(
        "stats: hits={} misses={} writes={} entries={} hit rate={:.0}%",
        stats.hits,
        stats.misses,
        stats.writes,
        stats.entries.unwrap_or(0),
        stats.hit_rate() * 100.0
    );
    Ok(())
}
