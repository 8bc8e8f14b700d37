//! `larder warm FILE`: compute and cache the requests of a JSONL file through an
//! OpenAI-compatible endpoint.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use larder_core::response::{
    CacheControl, LlmRequest, LlmResponse, Usage, WarmOptions, WarmProgress,
};
use serde_json::{Value as Json, json};

use super::{ConnectArgs, print_json};

/// Arguments of `larder warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// A JSONL file (`-` for stdin): one request per line, an OpenAI-compatible chat
    /// completion body with a "model" (or {"model", "prompt", "system"}). Blank lines and
    /// lines starting with `#` are skipped.
    pub file: PathBuf,

    /// The OpenAI-compatible API base URL; requests go to `{endpoint}/chat/completions`.
    /// The API key, if one is needed, comes from LARDER_LLM_API_KEY or OPENAI_API_KEY.
    #[arg(
        long,
        env = "LARDER_LLM_ENDPOINT",
        default_value = "https://api.openai.com/v1"
    )]
    pub endpoint: String,

    /// Requests computed at once (size it to the provider's rate limit).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// How long the answers stay fresh, in seconds [default: the cache's default TTL].
    #[arg(long)]
    pub ttl_secs: Option<u64>,

    /// Store the answers in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,

    /// Tag the answers (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,

    /// Compute every request, even those already cached.
    #[arg(long)]
    pub recompute: bool,

    /// Time allowed for one model call, in seconds.
    #[arg(long, default_value_t = 120)]
    pub llm_timeout_secs: u64,

    /// No progress bar (it is also hidden when stderr is not a terminal and with --json).
    #[arg(long)]
    pub no_progress: bool,

    /// Where the cache is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Reads the requests of a JSONL text; every bad line is reported with its number.
fn parse_requests(name: &str, text: &str) -> Result<Vec<LlmRequest>, String> {
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match LlmRequest::from_json_str(line) {
            Ok(r) => requests.push(r),
            Err(e) => errors.push(format!("{name}:{}: {e}", i + 1)),
        }
    }
    if !errors.is_empty() {
        let shown = errors.len().min(10);
        let mut msg = format!(
            "{} invalid line(s), nothing was computed:\n  {}",
            errors.len(),
            errors[..shown].join("\n  ")
        );
        if errors.len() > shown {
            msg.push_str(&format!("\n  … and {} more", errors.len() - shown));
        }
        return Err(msg);
    }
    if requests.is_empty() {
        return Err(format!("{name} holds no requests"));
    }
    Ok(requests)
}

/// The chat completion body sent for a request: `prompt`/`system` requests become
/// messages, and streaming is turned off.
fn chat_body(request: &LlmRequest) -> Json {
    let mut body = request.body().clone();
    if !body.contains_key("messages") {
        let mut messages = Vec::new();
        if let Some(system) = body.remove("system") {
            messages.push(json!({"role": "system", "content": system}));
        }
        if let Some(prompt) = body.remove("prompt") {
            messages.push(json!({"role": "user", "content": prompt}));
        }
        body.insert("messages".into(), Json::Array(messages));
    }
    body.insert("stream".into(), Json::Bool(false));
    body.remove("stream_options");
    Json::Object(body)
}

/// Calls `{endpoint}/chat/completions` and reads the first choice and the usage.
async fn complete(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    request: &LlmRequest,
) -> Result<LlmResponse, String> {
    let mut call = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&chat_body(request)).expect("JSON values always serialize"));
    if let Some(key) = api_key {
        call = call.bearer_auth(key);
    }
    let reply = call.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = reply.status();
    let bytes = reply
        .bytes()
        .await
        .map_err(|e| format!("{url}: reading the reply: {e}"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        let text: String = text.chars().take(300).collect();
        return Err(format!("{url} answered {status}: {text}"));
    }
    let doc: Json = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{url} answered something that is not JSON: {e}"))?;
    let text = doc
        .pointer("/choices/0/message/content")
        .and_then(Json::as_str)
        .or_else(|| doc.pointer("/choices/0/text").and_then(Json::as_str))
        .ok_or_else(|| format!("{url} answered without choices[0].message.content"))?;
    let mut response = LlmResponse::new(text);
    if let Some(model) = doc.get("model").and_then(Json::as_str) {
        response = response.with_model(model);
    }
    if let Some(usage) = doc.get("usage") {
        let n = |k: &str| usage.get(k).and_then(Json::as_u64).unwrap_or(0);
        response = response.with_usage(Usage::new(n("prompt_tokens"), n("completion_tokens")));
    }
    if let Some(reason) = doc
        .pointer("/choices/0/finish_reason")
        .and_then(Json::as_str)
    {
        response = response.with_metadata("finish_reason", reason);
    }
    Ok(response)
}

pub(super) async fn run(args: WarmArgs) -> Result<ExitCode, String> {
    let name = args.file.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("cannot read {name}: {e}"))?
    };
    let requests = parse_requests(&name, &text)?;
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let mut control = CacheControl::default();
    if let Some(s) = args.ttl_secs {
        if s == 0 {
            return Err("--ttl-secs must be at least 1".into());
        }
        control = control.ttl(Duration::from_secs(s));
    }
    if let Some(ns) = &args.namespace {
        control = control.namespace(ns.clone());
    }
    for tag in &args.tags {
        control = control.tag(tag.clone());
    }
    let c = args.connect.connect().await?;
    // Check the controls (namespace, tags, TTL, format) before computing anything.
    c.cache
        .key(&requests[0], &control)
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.llm_timeout_secs.max(1)))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let url = format!("{}/chat/completions", args.endpoint.trim_end_matches('/'));
    let api_key = ["LARDER_LLM_API_KEY", "OPENAI_API_KEY"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));

    let show = !args.no_progress && !args.connect.json && std::io::stderr().is_terminal();
    let bar = if show {
        ProgressBar::new(requests.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (eta {eta})",
        )
        .expect("a valid template"),
    );
    let progress_bar = bar.clone();
    let options = WarmOptions::new()
        .concurrency(args.concurrency)
        .control(control)
        .recompute(args.recompute)
        .on_progress(move |p: &WarmProgress| {
            progress_bar.set_position(p.done as u64);
            progress_bar.set_message(format!(
                "computed {} · cached {} · failed {}",
                p.computed, p.skipped, p.failed
            ));
        });
    let total = requests.len();
    let report = c
        .cache
        .warm(
            requests,
            |r: LlmRequest| {
                let (client, url, api_key) = (&client, &url, api_key.as_deref());
                async move { complete(client, url, api_key, &r).await }
            },
            options,
        )
        .await;
    bar.finish_and_clear();
    if let Err(e) = c.cache.flush().await {
        eprintln!("larder warm: analytics not flushed: {e}");
    }
    let p = report.progress;
    if args.connect.json {
        print_json(&json!({
            "total": total,
            "computed": p.computed,
            "skipped": p.skipped,
            "failed": p.failed,
            "failures": report.failures.iter().map(|(i, e)| json!({"index": i, "error": e})).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "warmed {total} requests: {} computed, {} already cached, {} failed",
            p.computed, p.skipped, p.failed
        );
        for (i, e) in report.failures.iter().take(20) {
            println!("  request #{} failed: {e}", i + 1);
        }
    }
    Ok(if p.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let err = parse_requests(
            "f.jsonl",
            "{\"model\":\"m\",\"prompt\":\"a\"}\n\nnot json\n{\"prompt\":\"x\"}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("f.jsonl:3:") && err.contains("f.jsonl:4:"),
            "{err}"
        );
        assert!(parse_requests("f", "# only a comment\n").is_err());
        assert_eq!(
            parse_requests("f", "# c\n{\"model\":\"m\"}\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn prompt_requests_become_chat_messages_without_streaming() {
        let r = LlmRequest::prompt("m", "Hi")
            .system("Be brief.")
            .param("stream", true);
        assert_eq!(
            chat_body(&r),
            json!({"model": "m", "stream": false, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]})
        );
    }
}
