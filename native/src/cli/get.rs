//! `larder get`: show a cached answer, by key or by request.

use std::io::Read;
use std::process::ExitCode;

use clap::Args;
use larder_core::response::{CacheControl, LlmRequest};
use larder_core::transport::{bulk_opt, int};
use larder_core::{Cmd, Decoded, Envelope, Transport, Value};
use serde_json::json;

use super::{ConnectArgs, print_json};

/// Arguments of `larder get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key: a full Redis key (`larder:cache:9f86…`) or a request hash (`9f86…`, placed
    /// under the prefix and --namespace).
    #[arg(required_unless_present = "request", conflicts_with = "request")]
    pub key: Option<String>,
    /// The request as JSON (an OpenAI-compatible body with a "model"); `-` reads it from
    /// stdin. The answer is checked like a lookup: namespace generation, tags, freshness.
    #[arg(long)]
    pub request: Option<String>,
    /// The namespace of the request (or of a bare hash).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print only the response text.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Where the cache is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub(super) async fn run(args: GetArgs) -> Result<ExitCode, String> {
    let c = args.connect.connect().await?;
    let mut control = CacheControl::default();
    if let Some(ns) = &args.namespace {
        control = control.namespace(ns.clone());
    }
    if let Some(text) = &args.request {
        let text = if text == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
            s
        } else {
            text.clone()
        };
        let request = LlmRequest::from_json_str(&text).map_err(|e| format!("--request: {e}"))?;
        let key = c
            .cache
            .key(&request, &control)
            .map_err(|e| format!("--request: {e}"))?;
        let answer = c
            .cache
            .peek(&request, &control)
            .await
            .map_err(|e| format!("cannot read {key}: {e}"))?;
        let Some(a) = answer else {
            return Ok(not_found(&args, &key));
        };
        if args.raw {
            println!("{}", a.text());
        } else if args.connect.json {
            print_json(&json!({
                "key": key,
                "found": true,
                "status": a.status.as_str(),
                "response": a.value.text,
                "model": a.value.model,
                "usage": a.value.usage,
                "metadata": a.value.metadata,
                "stored_at_ms": a.stored_at_ms,
            }));
        } else {
            println!("key      {key}");
            println!("status   {}", a.status);
            println!("model    {}", a.value.model);
            if let Some(u) = a.value.usage {
                println!(
                    "tokens   {} prompt + {} completion",
                    u.prompt_tokens, u.completion_tokens
                );
            }
            if let Some(at) = a.stored_at_ms {
                println!("stored   {at} (unix ms)");
            }
            println!();
            println!("{}", a.text());
        }
        return Ok(ExitCode::SUCCESS);
    }

    let given = args.key.clone().unwrap_or_default();
    if given.is_empty() {
        return Err("give a KEY or --request JSON".into());
    }
    let scheme = c.cache.key_scheme();
    let key = if given.contains(':') {
        given
    } else {
        match control.namespace.as_deref() {
            Some(ns) if ns != "default" => scheme.value_key(&format!("{ns}:{given}")),
            _ => scheme.value_key(&given),
        }
    };
    let replies = c
        .transport
        .pipeline(vec![Cmd::new("GET").arg(&key), Cmd::new("PTTL").arg(&key)])
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?;
    let mut replies = replies.into_iter();
    let value = bulk_opt("GET", replies.next().unwrap_or(Value::Nil))
        .map_err(|e| format!("cannot read {key}: {e}"))?;
    let pttl = replies
        .next()
        .and_then(|v| int("PTTL", v).ok())
        .filter(|ms| *ms >= 0);
    let Some(value) = value else {
        return Ok(not_found(&args, &key));
    };
    let (kind, envelope) = match Envelope::decode(&value) {
        Decoded::Envelope(e) => ("envelope", Some(e)),
        Decoded::Legacy(e) => ("raw text", Some(e)),
        Decoded::Corrupt(why) => {
            return Err(format!(
                "{key} holds {} bytes that are neither an envelope nor text ({why})",
                value.len()
            ));
        }
    };
    let e = envelope.expect("decoded");
    if args.raw {
        println!("{}", e.response);
    } else if args.connect.json {
        print_json(&json!({
            "key": key,
            "found": true,
            "format": kind,
            "ttl_ms": pttl,
            "envelope": e,
        }));
    } else {
        println!("key      {key}");
        println!("format   {kind}");
        if let Some(ms) = pttl {
            println!("ttl      {:.1} s", ms as f64 / 1000.0);
        }
        if !e.model.is_empty() {
            println!("model    {}", e.model);
        }
        if e.timestamp > 0 {
            println!("written  {} (unix s)", e.timestamp);
        }
        if !e.metadata.is_empty() {
            println!(
                "metadata {}",
                serde_json::to_string(&e.metadata).unwrap_or_default()
            );
        }
        if !e.tags.is_empty() {
            println!("tags     {}", e.tags.join(", "));
        }
        println!();
        println!("{}", e.response);
    }
    Ok(ExitCode::SUCCESS)
}

fn not_found(args: &GetArgs, key: &str) -> ExitCode {
    if args.connect.json {
        print_json(&json!({"key": key, "found": false}));
    } else {
        eprintln!("larder get: no usable answer at {key}");
    }
    ExitCode::from(1)
}
