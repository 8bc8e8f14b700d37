//! An agent's tool calls through the tool-result cache: two users ask overlapping questions;
//! the public search is shared, each user's inbox stays theirs, and the email is always sent.
//!
//! Run with `cargo run --example agent_tools` (no server needed).

use std::time::{Duration, Instant};

use larder::MemoryCache;
use larder::compute::ComputeCache;
use larder::tools::{ToolCache, ToolCall, ToolPolicy, ToolScope};
use serde_json::{Value, json};

/// The tools themselves: slow, as real ones are.
async fn run_tool(call: &ToolCall) -> Result<Value, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(150)).await;
    Ok(match call.name() {
        "web_search" => json!([{"title": "Paris - Wikipedia", "query": call.args()["q"]}]),
        "read_inbox" => json!([format!(
            "mail for {}",
            call.args()["user"].as_str().unwrap_or("?")
        )]),
        _ => json!({"sent": true}),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = ComputeCache::builder(MemoryCache::builder().build()?).build()?;
    let tools = ToolCache::builder(engine)
        .policy(
            "web_search",
            ToolPolicy::cache_for(Duration::from_secs(3600)).cost_per_call(0.005),
        )
        .policy(
            "read_inbox",
            ToolPolicy::cache_for(Duration::from_secs(60)).scope(ToolScope::Tenant),
        )
        .policy("send_email", ToolPolicy::never())
        .build()?;

    // What the model asked for, turn by turn, for two users.
    let turns = [
        (
            "alice",
            "web_search",
            json!({"q": "capital of France", "n": 3}),
        ),
        ("alice", "read_inbox", json!({"user": "alice"})),
        (
            "bob",
            "web_search",
            json!({"n": 3, "q": "capital of France"}),
        ),
        ("bob", "read_inbox", json!({"user": "alice"})),
        ("alice", "read_inbox", json!({"user": "alice"})),
        ("alice", "send_email", json!({"to": "bob", "body": "Paris"})),
        ("alice", "send_email", json!({"to": "bob", "body": "Paris"})),
    ];
    for (user, tool, args) in turns {
        let call = ToolCall::new(tool, args).tenant(user);
        let started = Instant::now();
        let result = tools.call(&call, || run_tool(&call)).await?;
        println!(
            "{user:5} {tool:10} {:9} {:6.1} ms  {}",
            result.status.as_str(),
            started.elapsed().as_secs_f64() * 1000.0,
            result.value
        );
    }
    for (tool, s) in tools.stats() {
        println!(
            "{tool:10} hits {} misses {} uncached {}, hit rate {:.2}, {} ms and ${:.3} saved",
            s.hits,
            s.misses,
            s.uncached,
            s.hit_rate(),
            s.time_saved_ms,
            s.cost_saved_nanousd as f64 / 1e9
        );
    }
    Ok(())
}
