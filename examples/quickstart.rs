//! Quickstart: a slow model call wrapped in get-or-compute, on the embedded memory cache.
//!
//! Run with `cargo run --example quickstart` (no server needed).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use larder::MemoryCache;
use larder::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache};

/// A stand-in for a real model call: slow and deterministic.
async fn slow_model(request: &LlmRequest) -> Result<LlmResponse, Infallible> {
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(LlmResponse::new("The capital of France is Paris.").with_model(request.model()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = MemoryCache::builder()
        .max_entries(10_000)
        .default_ttl(Duration::from_secs(3600))
        .build()?;
    let cache = ResponseCache::local(memory).build()?;
    let request = LlmRequest::prompt("gpt-4o-mini", "What is the capital of France?");

    for call in 1..=2 {
        let started = Instant::now();
        let answer = cache
            .try_get_with(&request, &CacheControl::default(), || slow_model(&request))
            .await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "call {call}: {} {:?} in {ms:.1} ms",
            answer.status,
            answer.text()
        );
    }
    Ok(())
}
