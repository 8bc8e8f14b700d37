//! The gateway's request handling: the axum `Router` driven in-process over an in-memory
//! Redis (`MemTransport`), with hostile methods, paths, headers and bodies.
//!
//! Input layout: one byte `n`, then `n` bytes of a structured head (method, path, headers,
//! which credentials; read with `arbitrary`, all zeros meaning `POST /` with the full token),
//! then the body as the raw remaining bytes (so that JSON seeds mutate well). Invariants: the gateway never panics and never answers 5xx other than 503/504
//! (Redis unreachable; the in-memory Redis never is, so never); every answer but `/metrics`
//! and `HEAD` is JSON, errors as `{"error":"…"}`; an answer to a read-only token leaves the data as it
//! was.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use larder_core::testing::MemTransport;
use larder_core::{Cmd, Transport};
use larder_native::gateway::{Gateway, Token};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use tower::ServiceExt;

const FULL: &str = "full-token-for-fuzzing-0123456789";
const READ_ONLY: &str = "read-only-token-for-fuzzing-0123456789";

/// Paths the gateway knows, and some near misses; or the fuzzer's own.
const PATHS: [&str; 10] = [
    "/",
    "/pipeline",
    "/multi-exec",
    "//pipeline",
    "/pipeline/",
    "/healthz",
    "/metrics",
    "/multi-exec/x",
    "/%70ipeline",
    "/?a=b",
];

const METHODS: [Method; 5] = [
    Method::POST,
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
];

/// Headers the gateway reads, or the fuzzer's own name.
const HEADERS: [&str; 6] = [
    "upstash-encoding",
    "larder-arg-encoding",
    "upstash-sync-token",
    "content-length",
    "content-type",
    "authorization",
];

#[derive(Debug, Arbitrary)]
enum Credentials {
    Full,
    None,
    ReadOnly,
    Bearer(String),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum PathChoice {
    Known(u8),
    Own(String),
}

#[derive(Debug, Arbitrary)]
enum HeaderChoice {
    Known(u8, Vec<u8>),
    Base64Replies,
    Base64Args,
    Own(String, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Head {
    method: u8,
    path: PathChoice,
    credentials: Credentials,
    headers: Vec<HeaderChoice>,
    body_limit: Option<u16>,
}

/// Sends one request built from `data` and checks the answer.
pub fn check(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (head, body) = rest.split_at(usize::from(n).min(rest.len()));
    let Ok(head) = Head::arbitrary(&mut Unstructured::new(head)) else {
        return;
    };
    let body = body.to_vec();
    let Some(request) = build_request(&head, body) else {
        return;
    };
    let read_only = matches!(head.credentials, Credentials::ReadOnly);
    crate::runtime().block_on(async move {
        let mem = MemTransport::new();
        for (k, v) in [
            ("k", "v"),
            ("larder:cache:a", "{\"v\":1,\"response\":\"x\"}"),
        ] {
            mem.exec(Cmd::new("SET").arg(k).arg(v))
                .await
                .expect("seeded");
        }
        mem.exec(Cmd::new("RPUSH").arg("list").arg("a").arg("b"))
            .await
            .expect("seeded");
        let before = snapshot(&mem).await;
        let mut builder = Gateway::builder(Arc::new(mem.clone()))
            .token(Token::new(FULL).expect("token"))
            .read_only_token(Token::new(READ_ONLY).expect("token"));
        if let Some(limit) = head.body_limit {
            builder = builder.body_limit(usize::from(limit));
        }
        let gateway = builder.build().expect("gateway builds");
        let path = request.uri().path().to_owned();
        let head_request = request.method() == Method::HEAD;
        let response = gateway
            .router()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        assert!(
            !status.is_server_error()
                || status == StatusCode::SERVICE_UNAVAILABLE && path.contains("healthz"),
            "server error {status} for {head:?}"
        );
        let is_metrics = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body reads");
        if head_request {
            assert!(bytes.is_empty(), "an answer to HEAD has no body");
        } else if !is_metrics {
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "non-JSON answer ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            if !status.is_success() {
                assert!(
                    json.get("error").is_some_and(|e| e.is_string()),
                    "an error answer is {{\"error\":…}}: {json}"
                );
            }
        }
        if read_only {
            assert_eq!(
                snapshot(&mem).await,
                before,
                "a read-only token changed data"
            );
        }
    });
}

fn build_request(head: &Head, body: Vec<u8>) -> Option<Request<Body>> {
    let method = METHODS[usize::from(head.method) % METHODS.len()].clone();
    let path = match &head.path {
        PathChoice::Known(i) => PATHS[usize::from(*i) % PATHS.len()].to_owned(),
        PathChoice::Own(p) => p.clone(),
    };
    let mut builder = Request::builder().method(method).uri(path);
    let auth = match &head.credentials {
        Credentials::None => None,
        Credentials::Full => Some(format!("Bearer {FULL}").into_bytes()),
        Credentials::ReadOnly => Some(format!("Bearer {READ_ONLY}").into_bytes()),
        Credentials::Bearer(t) => Some(format!("Bearer {t}").into_bytes()),
        Credentials::Raw(raw) => Some(raw.clone()),
    };
    if let Some(auth) = auth {
        builder = builder.header("authorization", HeaderValue::from_bytes(&auth).ok()?);
    }
    for h in &head.headers {
        let (name, value) = match h {
            HeaderChoice::Known(i, v) => (
                HeaderName::from_static(HEADERS[usize::from(*i) % HEADERS.len()]),
                v.clone(),
            ),
            HeaderChoice::Base64Replies => (
                HeaderName::from_static("upstash-encoding"),
                b"base64".to_vec(),
            ),
            HeaderChoice::Base64Args => (
                HeaderName::from_static("larder-arg-encoding"),
                b"base64".to_vec(),
            ),
            HeaderChoice::Own(n, v) => (HeaderName::from_bytes(n.as_bytes()).ok()?, v.clone()),
        };
        // A read-only token must stay read-only: no other credentials added later.
        if name == "authorization" {
            continue;
        }
        builder = builder.header(name, HeaderValue::from_bytes(&value).ok()?);
    }
    builder.body(Body::from(body)).ok()
}

/// Every key with its type and a dump of its value, sorted.
async fn snapshot(mem: &MemTransport) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    for key in mem.keys() {
        let kind = mem.exec(Cmd::new("TYPE").arg(&key)).await.expect("TYPE");
        let value = match kind.as_bytes() {
            Some(b"string") => mem.exec(Cmd::new("GET").arg(&key)).await,
            Some(b"list") => mem.exec(Cmd::new("LRANGE").arg(&key).arg(0).arg(-1)).await,
            _ => Ok(kind.clone()),
        }
        .expect("read");
        let ttl = mem.exec(Cmd::new("PTTL").arg(&key)).await.expect("PTTL");
        out.push((key.to_vec(), format!("{kind:?} {value:?} {ttl:?}")));
    }
    out.sort();
    out
}
