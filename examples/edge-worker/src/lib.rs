//! A Cloudflare Worker (Rust, wasm32) caching through larder-edge.
//!
//! Configuration comes from the Worker's bindings, as for the official SDK:
//! `UPSTASH_REDIS_REST_URL`, `UPSTASH_REDIS_REST_TOKEN` and, for a larder gateway,
//! `LARDER_REST_BASE64_ARGS=1` (binary-safe arguments). `LARDER_PREFIX` sets the key prefix.
//!
//! Routes (every answer is JSON; `requests` is how many HTTP subrequests the cache operation
//! made on the caller's path — statistics are flushed after the response with `wait_until`):
//!
//! | route | does |
//! | --- | --- |
//! | `GET /get?key=K` | `cache.get(K)` → `{"value": …, "hit": bool}` |
//! | `POST /set?key=K[&ttl_ms=N]` (body = value) | `cache.set(K, body, ttl)` |
//! | `GET /mget?key=A&key=B…` | `cache.mget([A, B, …])` → `{"values": […]}` |
//! | `POST /compute?key=K` (body = the request JSON) | get-or-compute: a hit returns the cached envelope; a miss "computes" a response, stores it as an envelope and returns it |
//! | `POST /hash` (body = request JSON) | `{"hash": request_hash, "key": value_key}` |
//! | `GET /stats` | `cache.stats()` (local counts and the shared totals in Redis) |
//! | `GET /vectors` | checks the golden key vectors inside the Worker |

use std::sync::Arc;
use std::time::Duration;

use larder_core::compute::{ComputeCache, Status};
use larder_core::keys::{go_deep_agent_json, go_deep_agent_key};
use larder_core::{Cache, Clock, Envelope, KeyScheme, RedisCache, canonical_json, request_hash};
use larder_edge::{RestTransport, WaitUntil};
use serde_json::{Value as Json, json};
use worker::{Context, Env, Method, Request, Response, Result, event};

const KEY_VECTORS: &str = include_str!("../../../core/tests/data/key_vectors.json");
const GO_KEY_VECTORS: &str = include_str!("../../../core/tests/data/go_key_vectors.json");

fn fail(status: u16, message: impl std::fmt::Display) -> Result<Response> {
    Ok(Response::from_json(&json!({ "error": message.to_string() }))?.with_status(status))
}

fn query(req: &Request, name: &str) -> Vec<String> {
    req.url()
        .map(|u| {
            u.query_pairs()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn text(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(s) => Json::String(s.to_owned()),
        Err(_) => json!({ "binary_len": bytes.len() }),
    }
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, ctx: Context) -> Result<Response> {
    let ctx = Arc::new(ctx);
    let path = req.path();
    if path == "/vectors" {
        return Response::from_json(&check_vectors());
    }
    if path == "/hash" {
        let request: Json = match req.json().await {
            Ok(j) => j,
            Err(e) => return fail(400, e),
        };
        return match request_hash(&request) {
            Ok(hash) => Response::from_json(&json!({
                "hash": hash,
                "canonical": canonical_json(&request).unwrap_or_default(),
                "key": KeyScheme::default().value_key(&hash),
            })),
            Err(e) => fail(400, e),
        };
    }

    let transport = match RestTransport::from_worker_env(&env) {
        Ok(t) => t,
        Err(e) => return fail(500, e),
    };
    let prefix = env
        .var("LARDER_PREFIX")
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "larder".into());
    let cache = match RedisCache::builder(transport.clone())
        .prefix(&prefix)
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(500, e),
    };
    let before = transport.requests();
    let key = query(&req, "key").into_iter().next().unwrap_or_default();

    let mut body = match (req.method(), path.as_str()) {
        (Method::Get, "/get") => match cache.get(&key).await {
            Ok(v) => json!({ "hit": v.is_some(), "value": v.as_deref().map(text) }),
            Err(e) => return fail(502, e),
        },
        (Method::Post, "/set") => {
            let value = req.bytes().await?;
            let ttl = query(&req, "ttl_ms")
                .first()
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_millis);
            match cache.set(&key, value.into(), ttl).await {
                Ok(()) => json!({ "ok": true }),
                Err(e) => return fail(502, e),
            }
        }
        (Method::Get, "/mget") => {
            let keys = query(&req, "key");
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            match cache.mget(&refs).await {
                Ok(values) => json!({
                    "values": values.iter().map(|v| v.as_deref().map(text)).collect::<Vec<_>>()
                }),
                Err(e) => return fail(502, e),
            }
        }
        (Method::Post, "/compute") => {
            let request: Json = match req.json().await {
                Ok(j) => j,
                Err(e) => return fail(400, e),
            };
            let hash = match request_hash(&request) {
                Ok(h) => h,
                Err(e) => return fail(400, e),
            };
            match compute(&cache, &ctx, &hash, &request).await {
                Ok((computed, envelope)) => json!({
                    "hash": hash,
                    "computed": computed,
                    "response": envelope.response,
                    "model": envelope.model,
                }),
                Err(e) => return fail(502, e),
            }
        }
        (Method::Get, "/stats") => match cache.stats().await {
            Ok(s) => json!({
                "hits": s.hits, "misses": s.misses, "writes": s.writes,
                "shared": s.shared.map(|t| json!({"hits": t.hits, "misses": t.misses, "writes": t.writes})),
            }),
            Err(e) => return fail(502, e),
        },
        _ => return fail(404, "unknown route"),
    };
    body["requests"] = json!(transport.requests() - before);
    // Counters reach Redis after the response, never on the caller's path.
    let flush = cache.clone();
    ctx.wait_until(async move {
        let _ = flush.flush_stats().await;
    });
    Response::from_json(&body)
}

/// Get-or-compute through larder's `ComputeCache` (concurrent misses in this isolate share
/// one computation; work that outlives the request runs under `wait_until`): a hit costs
/// one subrequest, a miss two (read, then write).
async fn compute(
    cache: &RedisCache<RestTransport>,
    ctx: &Arc<Context>,
    hash: &str,
    request: &Json,
) -> std::result::Result<(bool, Envelope), String> {
    let computer = ComputeCache::builder(cache.clone())
        .runtime(WaitUntil::shared(ctx.clone()))
        .build()
        .map_err(|e| e.to_string())?;
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let prompt = request["prompt"].as_str().unwrap_or_default().to_owned();
    let fetched = computer
        .fetch(hash, None, async move {
            let now_s = (larder_core::SystemClock.now_ms() / 1000) as i64;
            Ok::<_, std::convert::Infallible>(Envelope::new(
                format!("echo: {prompt}"),
                model,
                now_s,
            ))
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((fetched.status == Status::Miss, fetched.value))
}

/// Checks every golden key vector (canonical JSON, request hash, go-deep-agent keys) with
/// the code compiled into this Worker.
fn check_vectors() -> Json {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let doc: Json = serde_json::from_str(KEY_VECTORS).unwrap_or_default();
    for v in doc["vectors"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        let typed = v
            .get("request_typed")
            .or_else(|| v.get("request_rust"))
            .and_then(Json::as_str);
        let canonical = match typed.and_then(|s| s.split_once(':')) {
            None => canonical_json(&v["request"]),
            Some(("u128", t)) => t
                .parse::<u128>()
                .map_or(Ok(String::new()), |n| canonical_json(&n)),
            Some(("i128", t)) => t
                .parse::<i128>()
                .map_or(Ok(String::new()), |n| canonical_json(&n)),
            Some(("f32", t)) => t
                .parse::<f32>()
                .map_or(Ok(String::new()), |n| canonical_json(&n)),
            Some(("f64", t)) => t
                .parse::<f64>()
                .map_or(Ok(String::new()), |n| canonical_json(&n)),
            Some(_) => Ok(String::new()),
        }
        .unwrap_or_default();
        let hash = sha256_hex(canonical.as_bytes());
        checked += 1;
        if Some(canonical.as_str()) != v["canonical"].as_str()
            || Some(hash.as_str()) != v["sha256"].as_str()
        {
            mismatches.push(name.to_owned());
        } else if typed.is_none()
            && request_hash(&v["request"]).ok().as_deref() != v["sha256"].as_str()
        {
            mismatches.push(format!("{name} (request_hash)"));
        }
    }
    let go: Json = serde_json::from_str(GO_KEY_VECTORS).unwrap_or_default();
    for v in go["vectors"].as_array().into_iter().flatten() {
        let s = |f: &str| v[f].as_str().unwrap_or_default().to_owned();
        let Ok(t) = s("temperature").parse::<f64>() else {
            mismatches.push(format!("{} (temperature)", s("name")));
            continue;
        };
        checked += 1;
        let json_ok = go_deep_agent_json(&s("model"), &s("prompt"), t, &s("system")).as_deref()
            == v["json"].as_str();
        let key_ok = go_deep_agent_key(&s("model"), &s("prompt"), t, &s("system")) == s("sha256");
        if !(json_ok && key_ok) {
            mismatches.push(format!("go:{}", s("name")));
        }
    }
    json!({ "checked": checked, "mismatches": mismatches })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
