//! The Upstash REST dialect as the official clients expect it.

use larder_core::{Cmd, Commands, SetOptions, Transport};
use serde_json::json;

use crate::support::Setup;

#[tokio::test]
async fn single_commands_answer_result_and_redis_errors_pass_through_unchanged() {
    let s = Setup::start().await;
    assert_eq!(
        s.post("/", r#"["SET","s","text"]"#, false).await.2,
        json!({"result": "OK"})
    );
    assert_eq!(
        s.post("/", r#"["GET","s"]"#, false).await.2,
        json!({"result": "text"})
    );
    assert_eq!(
        s.post("/", r#"["GET","missing"]"#, false).await.2,
        json!({"result": null})
    );
    let (status, _, body) = s.post("/", r#"["INCR","s"]"#, false).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": "ERR value is not an integer or out of range"})
    );
    let (status, _, body) = s.post("/", r#"["LPUSH","s","x"]"#, false).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": "WRONGTYPE Operation against a key holding the wrong kind of value"})
    );
    let (_, _, body) = s
        .post(
            "/",
            r#"["EVALSHA","ffffffffffffffffffffffffffffffffffffffff","0"]"#,
            false,
        )
        .await;
    assert_eq!(
        body,
        json!({"error": "NOSCRIPT No matching script. Please use EVAL."})
    );
}

#[tokio::test]
async fn numbers_in_bodies_are_arguments() {
    let s = Setup::start().await;
    s.post("/", r#"["SET","n",5,"PX",60000]"#, false).await;
    assert_eq!(
        s.post("/", r#"["INCRBY","n",2]"#, false).await.2,
        json!({"result": 7})
    );
    assert_eq!(
        s.post("/", r#"["INCRBYFLOAT","n",0.5]"#, false).await.2,
        json!({"result": "7.5"})
    );
}

#[tokio::test]
async fn base64_encodes_every_string_at_every_depth_and_never_errors() {
    let s = Setup::start().await;
    let (_, _, body) = s
        .post(
            "/",
            r#"["EVAL","return {'a', {'b', 7, {'c'}}, 3}","0"]"#,
            true,
        )
        .await;
    assert_eq!(body, json!({"result": ["YQ==", ["Yg==", 7, ["Yw=="]], 3]}));
    assert_eq!(
        s.post("/", r#"["SET","k","v"]"#, true).await.2,
        json!({"result": "T0s="})
    );
    assert_eq!(
        s.post("/", r#"["PING"]"#, true).await.2,
        json!({"result": "UE9ORw=="})
    );
    assert_eq!(
        s.post("/", r#"["GET","nope"]"#, true).await.2,
        json!({"result": null})
    );
    let (_, _, body) = s.post("/", r#"["INCR","k"]"#, true).await;
    assert_eq!(
        body,
        json!({"error": "ERR value is not an integer or out of range"})
    );
}

#[tokio::test]
async fn pipelines_answer_one_item_per_command_in_order() {
    let s = Setup::start().await;
    let (status, _, body) = s
        .post(
            "/pipeline",
            r#"[["SET","a","1"],["INCR","a"],["HSET","a","f","v"],["GET","a"],["MGET","a","zz"]]"#,
            false,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!([
            {"result": "OK"},
            {"result": 2},
            {"error": "WRONGTYPE Operation against a key holding the wrong kind of value"},
            {"result": "2"},
            {"result": ["2", null]},
        ])
    );
}

#[tokio::test]
async fn multi_exec_is_a_transaction_that_fails_as_a_whole() {
    let s = Setup::start().await;
    let (status, _, body) = s
        .post(
            "/multi-exec",
            r#"[["SET","t","1"],["INCR","t"],["GET","t"]]"#,
            false,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!([{"result": "OK"}, {"result": 2}, {"result": "2"}])
    );
    // A runtime error stays in its item; the rest of the transaction ran.
    let (_, _, body) = s
        .post("/multi-exec", r#"[["LPUSH","t","x"],["INCR","t"]]"#, false)
        .await;
    assert_eq!(body[1], json!({"result": 3}));
    assert!(body[0]["error"].as_str().unwrap().starts_with("WRONGTYPE"));
    // A command Redis refuses to queue aborts everything.
    let (status, _, body) = s
        .post("/multi-exec", r#"[["INCR","t"],["SET","only-key"]]"#, false)
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("EXECABORT"),
        "{body}"
    );
    assert_eq!(
        s.post("/", r#"["GET","t"]"#, false).await.2,
        json!({"result": "3"})
    );
    // So does a command the policy refuses.
    let (status, _, body) = s
        .post("/multi-exec", r#"[["INCR","t"],["FLUSHALL"]]"#, false)
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("NOPERM"), "{body}");
    assert_eq!(
        s.post("/", r#"["GET","t"]"#, false).await.2,
        json!({"result": "3"})
    );
}

#[tokio::test]
async fn double_and_trailing_slashes_are_tolerated() {
    let s = Setup::start().await;
    for path in ["//pipeline", "/pipeline/", "//pipeline//"] {
        let (status, _, body) = s.post(path, r#"[["PING"]]"#, false).await;
        assert_eq!((status, body), (200, json!([{"result": "PONG"}])), "{path}");
    }
    for path in ["", "/", "//"] {
        let (status, _, body) = s.post(path, r#"["PING"]"#, false).await;
        assert_eq!((status, body), (200, json!({"result": "PONG"})), "{path:?}");
    }
    let (status, _, body) = s.post("/nope", r#"["PING"]"#, false).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

/// The read-your-writes token the Upstash clients keep: on every answer (a client resets its
/// token when one is missing), fresh after every request that may write — single commands,
/// pipelines, transactions and scripts — and unchanged by reads.
#[tokio::test]
async fn the_sync_token_moves_after_every_write_and_only_then() {
    let s = Setup::start().await;
    let token = |body: &'static str, path: &'static str, sent: Option<String>| {
        let req = s
            .http
            .post(format!("{}{path}", s.gateway.url()))
            .bearer_auth(crate::support::FULL)
            .header("upstash-sync-token", sent.unwrap_or_default())
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            assert!(resp.status().is_success() || resp.status() == 400);
            resp.headers()["upstash-sync-token"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let t0 = token(r#"["GET","k"]"#, "/", None).await;
    assert!(!t0.is_empty());
    let t1 = token(r#"["SET","k","v"]"#, "/", Some(t0.clone())).await;
    assert_ne!(t1, t0, "a write moves the token");
    let t2 = token(r#"["GET","k"]"#, "/", Some(t1.clone())).await;
    assert_eq!(t2, t1, "a read does not");
    let t3 = token(
        r#"[["GET","k"],["INCR","n"]]"#,
        "/pipeline",
        Some(t2.clone()),
    )
    .await;
    assert_ne!(t3, t2, "a pipeline with a write moves it");
    let t4 = token(
        r#"[["GET","k"],["PTTL","k"]]"#,
        "/pipeline",
        Some(t3.clone()),
    )
    .await;
    assert_eq!(t4, t3);
    let t5 = token(r#"[["SET","k","w"]]"#, "/multi-exec", Some(t4.clone())).await;
    assert_ne!(t5, t4, "a transaction moves it");
    let t6 = token(r#"["EVAL","return 1","0"]"#, "/", Some(t5.clone())).await;
    assert_ne!(t6, t5, "a script may write: it moves it");
    // The client's token is never echoed: the answer carries the gateway's own.
    let t7 = token(r#"["GET","k"]"#, "/", Some("client-token-17".into())).await;
    assert_eq!(t7, t6);
}

#[tokio::test]
async fn binary_values_round_trip_through_the_edge_transport() {
    let s = Setup::start().await;
    let edge = s.edge();
    let all: Vec<u8> = (0..=255u8).collect();
    let value = bytes::Bytes::from(all.clone());
    assert!(
        edge.set(b"bin\xff", &value, SetOptions::default())
            .await
            .unwrap()
    );
    assert_eq!(
        edge.get(b"bin\xff").await.unwrap().as_deref(),
        Some(&all[..])
    );
    // What the gateway stored is what native Redis clients read.
    assert_eq!(
        s.native.get(b"bin\xff").await.unwrap().as_deref(),
        Some(&all[..])
    );
    let replies = edge
        .pipeline(vec![
            Cmd::new("GET").arg(&b"bin\xff"[..]),
            Cmd::new("STRLEN").arg(&b"bin\xff"[..]),
            Cmd::new("HGET").arg(&b"bin\xff"[..]).arg("f"),
        ])
        .await
        .unwrap();
    assert_eq!(replies[0].as_bytes(), Some(&all[..]));
    assert_eq!(replies[1].as_int(), Some(256));
    assert!(replies[2].as_error().unwrap().starts_with("WRONGTYPE"));
}
