//! The `larder` cache commands (`stats`, `get`, `purge`, `warm`, `bench`) against a real
//! redis-server started by `larder_native::testing`, through the built binary.
//!
//! Every test starts its own server, so tests run in parallel without sharing state.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use larder_core::response::{
    CacheControl, LlmRequest, LlmResponse, ModelPrice, Prices, ResponseCache, Usage,
};
use larder_core::{RedisCache, SharedClock};
use larder_native::RedisTransport;
use larder_native::testing::{RedisServer, RespValue};
use serde_json::{Value as Json, json};

fn larder(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env_remove("LARDER_PREFIX")
        .env_remove("LARDER_SENTINELS")
        .env_remove("LARDER_LLM_ENDPOINT")
        .env_remove("OPENAI_API_KEY")
        .env_remove("LARDER_LLM_API_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the larder binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> Json {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

async fn response_cache(url: &str, prices: Prices) -> ResponseCache {
    let transport = RedisTransport::connect(url).await.expect("connect");
    ResponseCache::redis(RedisCache::new(transport))
        .prices(prices)
        .build()
        .unwrap()
}

fn question() -> LlmRequest {
    LlmRequest::chat("gpt-4o-mini")
        .user("What is the capital of France?")
        .temperature(0.0)
}

async fn answer(cache: &ResponseCache, r: &LlmRequest, control: &CacheControl, text: &str) {
    let text = text.to_owned();
    cache
        .try_get_with(r, control, || async move {
            Ok::<_, String>(LlmResponse::new(text).with_usage(Usage::new(1000, 500)))
        })
        .await
        .expect("answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_reports_hits_tokens_and_cost_per_model() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let prices = Prices::new().price("gpt-4o-mini", ModelPrice::per_million(0.15, 0.60));
    let cache = response_cache(&url, prices).await;
    for _ in 0..3 {
        answer(&cache, &question(), &CacheControl::default(), "Paris.").await; // 1 miss, 2 hits
    }
    cache.flush().await.unwrap();

    let out = larder(&["stats", "--json"], &[("REDIS_URL", &url)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json_of(&out);
    let m = &doc["models"]["gpt-4o-mini"];
    assert_eq!(
        (m["hits"].as_u64(), m["misses"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(m["tokens_saved"].as_u64(), Some(3000));
    let cost = m["cost_saved_usd"].as_f64().unwrap();
    assert!(
        (cost - 2.0 * (1000.0 * 0.15 + 500.0 * 0.60) / 1e6).abs() < 1e-9,
        "{cost}"
    );
    assert!((doc["hit_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(doc["stats"]["writes"].as_u64(), Some(1));
    assert_eq!(doc["prefix"], "larder");

    let text = larder(&["stats", "--redis-url", &url], &[]);
    assert!(text.status.success(), "{}", stderr(&text));
    let s = stdout(&text);
    assert!(
        s.contains("hit rate 66.7%") && s.contains("gpt-4o-mini"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_finds_an_answer_by_request_and_by_key() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let cache = response_cache(&url, Prices::new()).await;
    let ns = CacheControl::default().namespace("tenant-7");
    answer(&cache, &question(), &ns, "Paris.").await;
    let request = question().to_json().to_string();

    let out = larder(
        &[
            "get",
            "--request",
            &request,
            "--namespace",
            "tenant-7",
            "--json",
        ],
        &[("REDIS_URL", &url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json_of(&out);
    assert_eq!(doc["found"], true);
    assert_eq!(doc["status"], "HIT");
    assert_eq!(doc["response"], "Paris.");
    assert_eq!(
        doc["usage"],
        json!({"prompt_tokens": 1000, "completion_tokens": 500})
    );

    // By key: the full key, or the hash with its namespace.
    let key = cache.key(&question(), &ns).unwrap();
    let out = larder(&["get", &key, "--raw", "--redis-url", &url], &[]);
    assert_eq!(stdout(&out).trim(), "Paris.", "{}", stderr(&out));
    let hash = question().hash().unwrap();
    let out = larder(
        &[
            "get",
            &hash,
            "--namespace",
            "tenant-7",
            "--json",
            "--redis-url",
            &url,
        ],
        &[],
    );
    let doc = json_of(&out);
    assert_eq!(doc["format"], "envelope");
    assert_eq!(doc["envelope"]["model"], "gpt-4o-mini");
    assert!(doc["ttl_ms"].is_null(), "no TTL configured");

    // Not there: exit 1, and `found: false` for scripts.
    let out = larder(&["get", &hash, "--json", "--redis-url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["found"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_clear_error_with_exit_code_2() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let out = larder(&["get", "--request", "{not json", "--redis-url", &url], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--request: invalid argument: request is not valid JSON"),
        "{}",
        stderr(&out)
    );
    let out = larder(
        &["get", "--request", r#"{"prompt":"x"}"#, "--redis-url", &url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"model\""), "{}", stderr(&out));
    let out = larder(
        &["purge", "--namespace", "has space", "--redis-url", &url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("namespace \"has space\" is not allowed"),
        "{}",
        stderr(&out)
    );
    let out = larder(
        &["purge", "--tag", "a", "--model", "b", "--redis-url", &url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "clap rejects two targets");
    let out = larder(&["stats", "--redis-url", "redis://127.0.0.1:1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot connect to Redis"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_by_namespace_tag_model_and_pattern() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let cache = response_cache(&url, Prices::new()).await;
    let clock: SharedClock = std::sync::Arc::new(larder_core::SystemClock);
    let a = CacheControl::default().namespace("a");
    let tagged = CacheControl::default().tag("docs-v3");
    let claude = LlmRequest::prompt("claude-haiku", "hi");
    let pattern_ns = CacheControl::default().namespace("old");
    answer(&cache, &question(), &a, "A").await;
    answer(&cache, &question(), &tagged, "T").await;
    answer(&cache, &claude, &CacheControl::default(), "C").await;
    for i in 0..3 {
        answer(
            &cache,
            &LlmRequest::prompt("m", format!("{i}")),
            &pattern_ns,
            "P",
        )
        .await;
    }
    let found = |r: LlmRequest, c: CacheControl| {
        let cache = cache.clone();
        async move { cache.peek(&r, &c).await.unwrap().is_some() }
    };
    assert!(found(question(), a.clone()).await);
    // Tag times have millisecond resolution: make the purges strictly later.
    let wait_a_ms = || {
        let t = clock.now_ms();
        while clock.now_ms() <= t + 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    wait_a_ms();

    let out = larder(
        &["purge", "--namespace", "a", "--json", "--redis-url", &url],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["generation"], 1);
    assert!(!found(question(), a.clone()).await);

    let out = larder(&["purge", "--tag", "docs-v3", "--redis-url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_a_ms();
    assert!(!found(question(), tagged.clone()).await);

    assert!(found(claude.clone(), CacheControl::default()).await);
    let out = larder(
        &["purge", "--model", "claude-haiku", "--redis-url", &url],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_a_ms();
    assert!(!found(claude.clone(), CacheControl::default()).await);

    let out = larder(
        &["purge", "--pattern", "old:*", "--json", "--redis-url", &url],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["deleted"], 3);
}

/// A fake OpenAI-compatible endpoint: answers `echo: {last user message}`, fails with 500
/// for the message "fail", and counts calls.
async fn fake_llm() -> (SocketAddr, Arc<AtomicUsize>) {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let req: Json = serde_json::from_str(&body).unwrap();
                assert_eq!(req["stream"], false);
                let msg = req["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                if msg == "fail" {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"error":{"message":"overloaded"}}"#.to_owned(),
                    );
                }
                let reply = json!({
                    "model": req["model"],
                    "choices": [{"message": {"role": "assistant", "content": format!("echo: {msg}")}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3},
                });
                (axum::http::StatusCode::OK, reply.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_computes_a_jsonl_file_through_an_openai_compatible_endpoint() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let (addr, calls) = fake_llm().await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "# FAQ warm-up").unwrap();
    writeln!(
        file,
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hours?"}}]}}"#
    )
    .unwrap();
    writeln!(file).unwrap();
    writeln!(
        file,
        r#"{{"model":"gpt-4o-mini","prompt":"where?","system":"Be brief."}}"#
    )
    .unwrap();
    writeln!(file, r#"{{"model":"gpt-4o-mini","prompt":"fail"}}"#).unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let endpoint = format!("http://{addr}/v1");

    let out = larder(
        &[
            "warm",
            &path,
            "--concurrency",
            "2",
            "--namespace",
            "faq",
            "--json",
        ],
        &[("REDIS_URL", &url), ("LARDER_LLM_ENDPOINT", &endpoint)],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "one request failed: {}",
        stderr(&out)
    );
    let doc = json_of(&out);
    assert_eq!(
        (doc["computed"].as_u64(), doc["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(doc["failures"][0]["index"], 2);
    assert!(
        doc["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{doc}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let cache = response_cache(&url, Prices::new()).await;
    let faq = CacheControl::default().namespace("faq");
    let hours = LlmRequest::chat("gpt-4o-mini").user("hours?");
    let a = cache.get(&hours, &faq).await.unwrap().expect("warmed");
    assert_eq!(a.text(), "echo: hours?");
    assert_eq!(a.value.usage, Some(Usage::new(12, 3)));
    let where_ = LlmRequest::prompt("gpt-4o-mini", "where?").system("Be brief.");
    assert!(cache.get(&where_, &faq).await.unwrap().is_some());

    // Again: the two cached ones are skipped, only the failing one is tried.
    let out = larder(
        &[
            "warm",
            &path,
            "--namespace",
            "faq",
            "--json",
            "--endpoint",
            &endpoint,
            "--redis-url",
            &url,
        ],
        &[],
    );
    let doc = json_of(&out);
    assert_eq!(
        (doc["skipped"].as_u64(), doc["computed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_rejects_a_file_with_bad_lines_before_computing() {
    let server = RedisServer::start().expect("redis-server");
    let (addr, calls) = fake_llm().await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"model":"m","prompt":"ok"}}"#).unwrap();
    writeln!(file, "{{oops").unwrap();
    writeln!(file, r#"{{"prompt":"no model"}}"#).unwrap();
    let out = larder(
        &[
            "warm",
            file.path().to_str().unwrap(),
            "--endpoint",
            &format!("http://{addr}/v1"),
            "--redis-url",
            &server.url(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(":2:") && err.contains(":3:") && err.contains("nothing was computed"),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_measures_three_phases_and_cleans_up() {
    let server = RedisServer::start().expect("redis-server");
    let out = larder(
        &[
            "bench",
            "--requests",
            "300",
            "--keys",
            "30",
            "--concurrency",
            "8",
            "--value-size",
            "64",
            "--json",
            "--redis-url",
            &server.url(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json_of(&out);
    let phases = doc["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SET", "GET", "ResponseCache hit"]);
    for p in phases {
        assert_eq!(p["errors"], 0, "{p}");
        assert!(p["ops_per_sec"].as_f64().unwrap() > 0.0);
        assert!(p["p99_ms"].as_f64().unwrap() >= p["p50_ms"].as_f64().unwrap());
    }
    assert_eq!(
        server.cmd(&["DBSIZE"]).unwrap(),
        RespValue::Integer(0),
        "bench keys removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn go_compat_get_reads_the_go_agents_raw_text() {
    let server = RedisServer::start().expect("redis-server");
    let key = larder_core::go_deep_agent_key("gpt-4o-mini", "Hi", 0.0, "");
    server
        .cmd(&[
            "SET",
            &format!("go-deep-agent:cache:{key}"),
            "Hello from Go",
        ])
        .unwrap();
    let out = larder(
        &[
            "get",
            "--go-compat",
            "--request",
            r#"{"model":"gpt-4o-mini","prompt":"Hi"}"#,
            "--raw",
        ],
        &[("REDIS_URL", &server.url())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "Hello from Go");
    let out = larder(
        &[
            "get",
            "--go-compat",
            &key,
            "--json",
            "--redis-url",
            &server.url(),
        ],
        &[],
    );
    assert_eq!(json_of(&out)["format"], "raw text");
}

/// The `larder` lines of the README's command-line section, run as written against a real
/// Redis (`REDIS_URL` as the README exports it), each one succeeding; `warm` against the fake
/// model endpoint and `gateway` until it listens. The environment the README sets on a
/// line is replaced where it points outside (the endpoint, the listen address).
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_cli_lines_run_as_written() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("### The `larder` command line")
        .nth(1)
        .expect("the README has a command-line section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let (addr, _) = fake_llm().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("faq.jsonl"),
        "{\"model\":\"gpt-4o-mini\",\"prompt\":\"Hi\"}\n",
    )
    .unwrap();
    let endpoint = format!("http://{addr}/v1");
    // The README's `get` reads an answer that is there: warm it first.
    let seed = larder(
        &["warm", dir.path().join("faq.jsonl").to_str().unwrap()],
        &[("REDIS_URL", &url), ("LARDER_LLM_ENDPOINT", &endpoint)],
    );
    assert!(seed.status.success(), "{}", stderr(&seed));
    let mut ran = Vec::new();
    for line in block.lines() {
        // Shell words, without the trailing comment; `'…'` quotes kept together.
        let code = line.split(" #").next().unwrap().trim();
        let mut words = Vec::new();
        let mut rest = code;
        while !rest.is_empty() {
            rest = rest.trim_start();
            if let Some(quoted) = rest.strip_prefix('\'') {
                let end = quoted.find('\'').expect("closed quote");
                words.push(quoted[..end].to_owned());
                rest = &quoted[end + 1..];
            } else {
                let end = rest.find(' ').unwrap_or(rest.len());
                words.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
        let words: Vec<String> = words.into_iter().filter(|w| !w.is_empty()).collect();
        let Some(at) = words.iter().position(|w| w == "larder") else {
            continue; // cargo install, export
        };
        let args = &words[at + 1..];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
        cmd.args(args)
            .current_dir(dir.path())
            .env("REDIS_URL", &url)
            .env("LARDER_LLM_ENDPOINT", &endpoint)
            .env("OPENAI_API_KEY", "test-key")
            .stdin(Stdio::null());
        if args[0] == "gateway" || args[0] == "proxy" {
            let mut child = cmd
                .env("LARDER_GATEWAY_TOKEN", "a-token-for-the-readme-test-0123")
                .env("LARDER_GATEWAY_LISTEN", "127.0.0.1:0")
                .env("LARDER_PROXY_LISTEN", "127.0.0.1:0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut first = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut first,
            )
            .unwrap();
            let _ = child.kill();
            let _ = child.wait();
            assert!(first.starts_with("listening on "), "{line}: {first:?}");
        } else {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{line}: {:?}\n{}{}",
                out.status,
                stdout(&out),
                stderr(&out)
            );
        }
        ran.push(args[0].clone());
    }
    assert_eq!(
        ran,
        ["stats", "get", "purge", "warm", "bench", "gateway", "proxy"],
        "every README line ran"
    );
}

/// `larder proxy` as users run it: the binary in front of a fake provider, on the in-memory
/// default and on Redis; MISS then HIT, a bad upstream URL refused with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn larder_proxy_serves_misses_then_hits() {
    let fake = larder_native::testing::FakeLlm::start().await.unwrap();
    let server = RedisServer::start().expect("redis-server");
    for redis in [None, Some(server.url())] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
        cmd.args([
            "proxy",
            "--upstream",
            &fake.url(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(url) = &redis {
            cmd.env("REDIS_URL", url);
        }
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{first:?}"))
            .to_owned();
        let client = reqwest::Client::new();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let resp = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", "Bearer sk-cli")
                .header("content-type", "application/json")
                .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"cli"}]}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            seen.push(
                resp.headers()["x-larder-cache"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(seen, ["MISS", "HIT"], "redis: {redis:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "proxy",
            "--upstream",
            "ftp://nowhere",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--upstream"), "{}", stderr(&out));
}

/// `larder proxy` with encryption at rest and keyed hashes from the environment: answers
/// still hit, Redis holds only sealed values, and a malformed key is a clear error that
/// never shows the key.
#[tokio::test(flavor = "multi_thread")]
async fn larder_proxy_encrypts_at_rest_from_the_environment() {
    let fake = larder_native::testing::FakeLlm::start().await.unwrap();
    let server = RedisServer::start().expect("redis-server");
    let keys = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "proxy",
            "--upstream",
            &fake.url(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("REDIS_URL", server.url())
        .env("LARDER_ENCRYPTION_KEYS", keys)
        .env("LARDER_HASH_SECRET", "bGFyZGVyLWNsaS10ZXN0LWhhc2gtc2VjcmV0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let resp = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("authorization", "Bearer sk-cli")
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"secret question"}]}"#)
            .send()
            .await
            .unwrap();
        seen.push(
            resp.headers()["x-larder-cache"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, ["MISS", "HIT"]);
    let keys_in_redis = match server.cmd(&["KEYS", "larder:cache:*"]).unwrap() {
        larder_native::testing::RespValue::Array(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(keys_in_redis.len(), 1);
    let larder_native::testing::RespValue::Bulk(key) = &keys_in_redis[0] else {
        panic!("a key")
    };
    let key = String::from_utf8(key.clone()).unwrap();
    let value = match server.cmd(&["GET", &key]).unwrap() {
        larder_native::testing::RespValue::Bulk(v) => v,
        other => panic!("{other:?}"),
    };
    assert!(value.starts_with(b"\0LXE1"), "sealed at rest");
    assert!(!value.windows(15).any(|w| w == b"secret question"));
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "proxy",
            "--upstream",
            &fake.url(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("REDIS_URL")
        .env("LARDER_ENCRYPTION_KEYS", "k1:c2hvcnQ=")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("LARDER_ENCRYPTION_KEYS") && err.contains("32 bytes"),
        "{err}"
    );
    assert!(!err.contains("c2hvcnQ"), "the key is never printed: {err}");
}
