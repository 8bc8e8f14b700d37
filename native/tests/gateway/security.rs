//! Tokens, read-only access, the deny list, the body limit and hostile input.

use larder_native::gateway::{Gateway, Policy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{FULL, READ_ONLY, Setup};

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() {
    let s = Setup::start().await;
    for token in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
        let (status, _, body) = s
            .post_as(token, "/", br#"["SET","k","v"]"#.to_vec(), false)
            .await;
        assert_eq!(status, 401, "{token:?}");
        assert!(body["error"].as_str().unwrap().starts_with("Unauthorized"));
    }
    let resp = s
        .http
        .post(s.gateway.url())
        .header("Authorization", format!("Basic {FULL}"))
        .body(r#"["PING"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(s.native_get("k").await, None, "nothing was written");
}

impl Setup {
    async fn native_get(&self, key: &str) -> Option<bytes::Bytes> {
        use larder_core::Commands;
        self.native.get(key.as_bytes()).await.unwrap()
    }
}

#[tokio::test]
async fn read_only_tokens_read_but_never_write_or_scan() {
    let s = Setup::start().await;
    s.post("/", r#"["SET","k","v"]"#, false).await;
    let ro = |path: &'static str, body: &'static str| {
        s.post_as(Some(READ_ONLY), path, body.as_bytes().to_vec(), false)
    };
    assert_eq!(ro("/", r#"["GET","k"]"#).await.2, json!({"result": "v"}));
    for body in [
        r#"["SET","k","w"]"#,
        r#"["DEL","k"]"#,
        r#"["SCAN","0"]"#,
        r#"["KEYS","*"]"#,
        r#"["EVAL","return redis.call('DEL','k')","0"]"#,
    ] {
        let (status, _, reply) = ro("/", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            reply["error"].as_str().unwrap().starts_with("NOPERM"),
            "{reply}"
        );
    }
    let (status, _, reply) = ro("/pipeline", r#"[["GET","k"],["SET","k","w"],["PTTL","k"]]"#).await;
    assert_eq!(status, 200);
    assert_eq!(reply[0], json!({"result": "v"}));
    assert!(reply[1]["error"].as_str().unwrap().contains("read-only"));
    assert_eq!(reply[2], json!({"result": -1}));
    assert_eq!(s.native_get("k").await.as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn dangerous_commands_are_denied_by_default() {
    let s = Setup::start().await;
    s.post("/", r#"["SET","keep","me"]"#, false).await;
    for body in [
        r#"["FLUSHALL"]"#,
        r#"["flushdb","ASYNC"]"#,
        r#"["CONFIG","SET","maxmemory","1"]"#,
        r#"["SHUTDOWN","NOSAVE"]"#,
        r#"["DEBUG","SLEEP","0"]"#,
        r#"["SCRIPT","KILL"]"#,
        r#"["CLIENT","KILL","TYPE","normal"]"#,
        r#"["MONITOR"]"#,
        r#"["SELECT","1"]"#,
        r#"["MULTI"]"#,
    ] {
        let (status, _, reply) = s.post("/", body, false).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            reply["error"].as_str().unwrap().starts_with("NOPERM"),
            "{body}: {reply}"
        );
    }
    assert_eq!(s.native_get("keep").await.as_deref(), Some(&b"me"[..]));
    let (_, _, reply) = s
        .post("/pipeline", r#"[["FLUSHALL"],["GET","keep"]]"#, false)
        .await;
    assert!(reply[0]["error"].as_str().unwrap().starts_with("NOPERM"));
    assert_eq!(reply[1], json!({"result": "me"}));
}

#[tokio::test]
async fn the_deny_list_is_configurable() {
    let mut policy = Policy::default();
    policy.allow("FLUSHDB").deny("KEYS");
    let s = Setup::start_with(|b| b.policy(policy)).await;
    s.post("/", r#"["SET","a","1"]"#, false).await;
    let (status, _, reply) = s.post("/", r#"["KEYS","*"]"#, false).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().starts_with("NOPERM"));
    assert_eq!(
        s.post("/", r#"["FLUSHDB"]"#, false).await.2,
        json!({"result": "OK"})
    );
    assert_eq!(s.native_get("a").await, None);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_json() {
    let s = Setup::start_with(|b| b.body_limit(1000)).await;
    let big = format!(r#"["SET","k","{}"]"#, "x".repeat(2000));
    let (status, _, body) = s.post("/", &big, false).await;
    assert_eq!(status, 413);
    assert!(body["error"].as_str().unwrap().contains("limit"));
    // Chunked (no Content-Length): refused once the limit is crossed.
    let mut tcp = tokio::net::TcpStream::connect(s.gateway.addr())
        .await
        .unwrap();
    let mut req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        req.extend_from_slice(format!("{:x}\r\n{}\r\n", 500, "y".repeat(500)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    tcp.write_all(&req).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tcp.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#"{"error":"#), "{answer}");
    // Just under the limit is fine.
    let ok = format!(r#"["SET","k","{}"]"#, "x".repeat(900));
    assert_eq!(s.post("/", &ok, false).await.0, 200);
}

#[tokio::test]
async fn malformed_and_hostile_bodies_get_json_errors_and_never_break_the_server() {
    let s = Setup::start().await;
    let deep = format!("{}\"PING\"{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{\"a\":1}".to_vec(),
        b"[]".to_vec(),
        b"[[]]".to_vec(),
        b"[null]".to_vec(),
        b"[\"GET\",[\"nested\"]]".to_vec(),
        b"[\"\"]".to_vec(),
        b"[\"GET\",1e400]".to_vec(),
        b"[\"GET\",\"\\ud800\"]".to_vec(),
        vec![0xff, 0xfe, 0x00, b'['],
        b"[\"GET\"".to_vec(),
        deep.into_bytes(),
        b"[\"NOSUCHCOMMAND\",\"x\"]".to_vec(),
        b"[\"SET\"]".to_vec(),
    ];
    for path in ["/", "/pipeline", "/multi-exec"] {
        for body in &bodies {
            let (status, _, reply) = s.post_as(Some(FULL), path, body.clone(), false).await;
            assert!(
                status == 400 || status == 200,
                "{path} {:?} → {status} {reply}",
                String::from_utf8_lossy(body)
            );
            assert!(reply.is_object() || reply.is_array(), "{reply}");
        }
    }
    let health = s
        .http
        .get(format!("{}/healthz", s.gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the gateway is still serving");
}

#[tokio::test]
async fn a_gateway_without_tokens_must_be_asked_for_explicitly() {
    let s = Setup::start().await;
    let redis = s.native.clone();
    let err = Gateway::builder(std::sync::Arc::new(redis.clone()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("LARDER_GATEWAY_TOKEN"), "{err}");
    assert!(
        Gateway::builder(std::sync::Arc::new(redis))
            .insecure_no_auth()
            .build()
            .is_ok()
    );
}
