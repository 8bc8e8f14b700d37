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

#[tokio::test]
async fn the_sync_token_is_echoed_or_handed_out() {
    let s = Setup::start().await;
    let resp = s
        .http
        .post(format!("{}/", s.gateway.url()))
        .bearer_auth(crate::support::FULL)
        .header("upstash-sync-token", "client-token-17")
        .body(r#"["PING"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["upstash-sync-token"], "client-token-17");
    let (_, sync, _) = s.post("/pipeline", r#"[["PING"]]"#, false).await;
    assert!(sync.is_some_and(|t| !t.is_empty()));
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
