//! Hostile clients, request by request: tokens in URLs, read-only tokens trying every kind of
//! write, denied commands in disguise, absurd JSON, non-UTF-8 bytes, oversized bodies on
//! every endpoint. (`security.rs` has the basic cases; these go further.)

use std::time::Duration;

use larder_core::Commands;
use larder_native::gateway::policy::DEFAULT_DENIED;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{FULL, READ_ONLY, Setup};

/// Sends `request` as is on a fresh connection and reads until the server closes it (or 5 s
/// pass). Returns the status code (0 if none) and everything received.
pub(crate) async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// The body of a raw HTTP/1.1 answer (after the blank line), as JSON.
fn json_body(answer: &[u8]) -> serde_json::Value {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    serde_json::from_slice(&answer[at..]).unwrap_or_else(|_| {
        panic!(
            "a JSON body, got {:?}",
            String::from_utf8_lossy(&answer[at..])
        )
    })
}

fn post_raw(path: &str, headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for h in headers {
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

async fn healthy(s: &Setup) -> bool {
    s.http
        .get(format!("{}/healthz", s.gateway.url()))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn query_string_tokens_are_refused_by_default_even_beside_a_valid_header() {
    let s = Setup::start().await;
    for path in ["/", "/pipeline", "/multi-exec"] {
        let url = format!("{}{path}?_token={FULL}", s.gateway.url());
        let body = if path == "/" {
            r#"["SET","q","1"]"#
        } else {
            r#"[["SET","q","1"]]"#
        };
        for with_header in [false, true] {
            let mut req = s.http.post(&url).body(body);
            if with_header {
                req = req.bearer_auth(FULL);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{path} header={with_header}");
            let reply: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            let error = reply["error"].as_str().unwrap();
            assert!(error.contains("query string"), "{error}");
            assert!(!error.contains(FULL), "the token is not echoed: {error}");
        }
    }
    assert_eq!(
        s.native.get(b"q").await.unwrap(),
        None,
        "nothing was written"
    );
}

#[tokio::test]
async fn query_string_tokens_work_when_allowed_with_their_own_access() {
    let s = Setup::start_with(|b| b.allow_query_token(true)).await;
    let url = |path: &str, token: &str| format!("{}{path}?_token={token}", s.gateway.url());
    let resp = s
        .http
        .post(url("/", FULL))
        .body(r#"["SET","q","1"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        s.native.get(b"q").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );

    // Percent-encoded is decoded; the read-only token stays read-only.
    let encoded = READ_ONLY.replace('-', "%2D");
    let resp = s
        .http
        .post(url("/pipeline", &encoded))
        .body(r#"[["GET","q"],["SET","q","2"]]"#)
        .send()
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(reply[0], json!({"result": "1"}));
    assert!(reply[1]["error"].as_str().unwrap().contains("read-only"));

    for bad in ["wrong-token-0123456789abcdef", "", "%ZZ"] {
        let resp = s
            .http
            .post(url("/", bad))
            .body(r#"["SET","q","3"]"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{bad:?}");
    }
    // A header, when present, is what counts: a wrong header is not rescued by the query.
    let resp = s
        .http
        .post(url("/", FULL))
        .bearer_auth("wrong-token-0123456789abcdef")
        .body(r#"["SET","q","4"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        s.native.get(b"q").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

/// One write of every class, each of which a read-only token must be refused.
const WRITES: &[&[&str]] = &[
    // strings
    &["SET", "s", "x"],
    &["sEt", "s", "x"],
    &["SETEX", "s", "10", "x"],
    &["SETNX", "new", "x"],
    &["MSET", "s", "x"],
    &["APPEND", "s", "x"],
    &["SETRANGE", "s", "0", "x"],
    &["INCR", "n"],
    &["incrbyfloat", "n", "1.5"],
    &["DECRBY", "n", "1"],
    &["GETDEL", "s"],
    &["GETEX", "s", "PX", "10"],
    &["GETSET", "s", "x"],
    &["SETBIT", "s", "0", "1"],
    &["BITOP", "OR", "dst", "s"],
    &["BITFIELD", "s", "SET", "u8", "0", "1"],
    &["PFADD", "hll", "a"],
    // hashes
    &["HSET", "h", "f", "x"],
    &["HSETNX", "h", "g", "x"],
    &["HDEL", "h", "f"],
    &["HINCRBY", "h", "n", "1"],
    // lists
    &["LPUSH", "l", "x"],
    &["RPOP", "l"],
    &["LSET", "l", "0", "x"],
    &["LTRIM", "l", "1", "0"],
    &["LMOVE", "l", "l2", "LEFT", "RIGHT"],
    // sets
    &["SADD", "st", "x"],
    &["SREM", "st", "a"],
    &["SPOP", "st"],
    &["SINTERSTORE", "dst", "st"],
    // sorted sets
    &["ZADD", "z", "1", "x"],
    &["ZINCRBY", "z", "1", "a"],
    &["ZPOPMIN", "z"],
    &["ZREMRANGEBYSCORE", "z", "-inf", "+inf"],
    &["ZUNIONSTORE", "dst", "1", "z"],
    &["GEOADD", "geo", "0", "0", "p"],
    // streams
    &["XADD", "x", "*", "f", "v"],
    &["XDEL", "x", "0-1"],
    &["XTRIM", "x", "MAXLEN", "0"],
    &["XGROUP", "CREATE", "x", "g", "$"],
    // the key space
    &["DEL", "s"],
    &["UNLINK", "s"],
    &["RENAME", "s", "s2"],
    &["RENAMENX", "s", "s2"],
    &["COPY", "s", "s2"],
    &["MOVE", "s", "1"],
    &["EXPIRE", "s", "1"],
    &["PEXPIRE", "s", "1"],
    &["EXPIREAT", "s", "1"],
    &["PERSIST", "s"],
    &["RESTORE", "s2", "0", "x"],
    &["SORT", "l", "STORE", "dst"],
    // scripts and functions
    &["EVAL", "return redis.call('DEL','s')", "0"],
    &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
    &["FCALL", "f", "0"],
    &["SCRIPT", "LOAD", "return 1"],
    &[
        "FUNCTION",
        "LOAD",
        "#!lua name=x\nredis.register_function('f', function() end)",
    ],
    &["PUBLISH", "c", "m"],
    // walking the key space
    &["SCAN", "0"],
    &["keys", "*"],
];

async fn seed(s: &Setup) {
    let (status, _, _) = s
        .post(
            "/pipeline",
            r#"[["SET","s","v"],["HSET","h","f","v"],["RPUSH","l","a"],["SADD","st","a"],
               ["ZADD","z","1","a"],["XADD","x","1-1","f","v"]]"#,
            false,
        )
        .await;
    assert_eq!(status, 200);
}

async fn assert_seed_intact(s: &Setup) {
    let (_, _, reply) = s
        .post(
            "/pipeline",
            r#"[["GET","s"],["HGETALL","h"],["LRANGE","l","0","-1"],["SMEMBERS","st"],
               ["ZRANGE","z","0","-1"],["XLEN","x"],["DBSIZE"],["PTTL","s"]]"#,
            false,
        )
        .await;
    assert_eq!(
        reply,
        json!([
            {"result": "v"}, {"result": ["f", "v"]}, {"result": ["a"]}, {"result": ["a"]},
            {"result": ["a"]}, {"result": 1}, {"result": 6}, {"result": -1}
        ]),
        "the data a read-only token saw is unchanged"
    );
}

#[tokio::test]
async fn read_only_tokens_are_refused_every_class_of_write_alone_in_pipelines_and_in_transactions()
{
    let s = Setup::start().await;
    seed(&s).await;
    let ro = |path: &'static str, body: String| {
        s.post_as(Some(READ_ONLY), path, body.into_bytes(), false)
    };
    for cmd in WRITES {
        let (status, _, reply) = ro("/", serde_json::to_string(cmd).unwrap()).await;
        assert_eq!(status, 400, "{cmd:?}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.starts_with("NOPERM") && error.contains("read-only"),
            "{cmd:?}: {error}"
        );
    }

    // The same writes inside one pipeline, between reads: each refused in band.
    let mut items: Vec<&[&str]> = Vec::new();
    for cmd in WRITES {
        items.push(&["GET", "s"]);
        items.push(cmd);
    }
    let (status, _, reply) = ro("/pipeline", serde_json::to_string(&items).unwrap()).await;
    assert_eq!(status, 200);
    for (i, item) in reply.as_array().unwrap().iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(item, &json!({"result": "v"}), "{:?}", items[i]);
        } else {
            assert!(
                item["error"].as_str().unwrap().contains("read-only"),
                "{:?}: {item}",
                items[i]
            );
        }
    }

    // Transactions are refused whole, with a write in them or not: Redis would run one
    // whole, however long (attacks.rs).
    for body in [
        r#"[["GET","s"],["HSET","h","f","w"]]"#,
        r#"[["GET","s"],["HLEN","h"]]"#,
    ] {
        let (status, _, reply) = ro("/multi-exec", body.to_owned()).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with("NOPERM read-only tokens cannot run transactions"),
            "{reply}"
        );
    }

    // Scripts are off for read-only tokens (attacks.rs has why).
    let (status, _, reply) = ro(
        "/",
        r#"["EVAL_RO","return redis.call('SET','s','w')","0"]"#.to_owned(),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("NOPERM this token is read-only"),
        "{reply}"
    );

    assert_seed_intact(&s).await;
}

/// `fLuShAlL` for `FLUSHALL`: Redis ignores case, so the policy must too.
fn odd_case(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

#[tokio::test]
async fn every_denied_command_is_refused_in_any_case_on_every_endpoint() {
    let s = Setup::start().await;
    seed(&s).await;
    let denied: Vec<Vec<String>> = DEFAULT_DENIED
        .iter()
        .flat_map(|entry| {
            let mut words: Vec<String> = entry.split(' ').map(str::to_owned).collect();
            // Harmless arguments, should the command ever get through.
            words.extend(["x".to_owned(), "0".to_owned()]);
            let odd: Vec<String> = words.iter().map(|w| odd_case(w)).collect();
            let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
            [words, odd, lower]
        })
        .collect();
    for token in [FULL, READ_ONLY] {
        for cmd in &denied {
            let (status, _, reply) = s
                .post_as(Some(token), "/", serde_json::to_vec(cmd).unwrap(), false)
                .await;
            assert_eq!(status, 400, "{cmd:?}");
            assert!(
                reply["error"].as_str().unwrap().starts_with("NOPERM"),
                "{cmd:?}: {reply}"
            );
        }
    }
    // All of them in one pipeline, with a read after each: refused in band, reads served.
    let mut items: Vec<serde_json::Value> = Vec::new();
    for cmd in &denied {
        items.push(json!(cmd));
        items.push(json!(["GET", "s"]));
    }
    let (status, _, reply) = s.post("/pipeline", &json!(items).to_string(), false).await;
    assert_eq!(status, 200);
    for (i, item) in reply.as_array().unwrap().iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                item["error"].as_str().unwrap().starts_with("NOPERM"),
                "{}: {item}",
                items[i]
            );
        } else {
            assert_eq!(item, &json!({"result": "v"}));
        }
    }
    // Inside a transaction, any one of them aborts it whole.
    for cmd in denied.iter().step_by(3) {
        let body = json!([["SET", "s", "changed"], cmd]).to_string();
        let (status, _, reply) = s.post("/multi-exec", &body, false).await;
        assert_eq!(status, 400, "{cmd:?}");
        assert!(
            reply["error"].as_str().unwrap().starts_with("EXECABORT"),
            "{reply}"
        );
    }
    assert_seed_intact(&s).await;
    let expected = 2 * denied.len() + denied.len() + denied.len().div_ceil(3);
    assert_eq!(
        s.metric("larder_gateway_denied_commands_total", &[]).await,
        expected as f64,
        "every refusal is counted"
    );
}

#[tokio::test]
async fn json_nested_100k_deep_is_a_400_not_a_stack_overflow() {
    let s = Setup::start().await;
    let n = 100_000;
    let bodies = [
        "[".repeat(n),
        format!("{}{}", "[".repeat(n), "]".repeat(n)),
        format!("[\"SET\",\"k\",{}1{}]", "[".repeat(n), "]".repeat(n)),
        "{\"a\":".repeat(n),
        format!("[[\"GET\",{}]]", "{\"a\":".repeat(n)),
    ];
    for path in ["/", "/pipeline", "/multi-exec"] {
        for body in &bodies {
            let (status, _, reply) = s
                .post_as(Some(FULL), path, body.clone().into_bytes(), false)
                .await;
            assert_eq!(status, 400, "{path} {}…", &body[..20]);
            assert!(reply["error"].is_string(), "{reply}");
        }
    }
    assert!(healthy(&s).await, "still serving");
}

#[tokio::test]
async fn non_utf8_bytes_in_headers_and_bodies_are_answered_in_json_and_change_nothing() {
    let s = Setup::start().await;
    let addr = s.gateway.addr();
    let set = br#"["SET","u","1"]"#;

    // A token that is not UTF-8: 401 in JSON.
    let (status, answer) = raw(
        addr,
        &post_raw(
            "/",
            &[b"Authorization: Bearer \xff\xfe\x80token-0123456789"],
            set,
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        json_body(&answer)["error"]
            .as_str()
            .unwrap()
            .starts_with("Unauthorized")
    );

    // Dialect headers that are not UTF-8 are ignored: the command runs, replies plain, and
    // a fresh sync token is handed out instead of echoing the bytes.
    let auth = format!("Authorization: Bearer {FULL}");
    let (status, answer) = raw(
        addr,
        &post_raw(
            "/",
            &[
                auth.as_bytes(),
                b"Upstash-Encoding: \xffbase64",
                b"Larder-Arg-Encoding: \xfe",
                b"upstash-sync-token: \xff\xff",
            ],
            br#"["ECHO","hi"]"#,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_body(&answer), json!({"result": "hi"}));
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let sync = head
        .lines()
        .find_map(|l| l.strip_prefix("upstash-sync-token: "))
        .expect("a sync token");
    assert!(sync.trim().chars().all(|c| c.is_ascii_digit()), "{sync:?}");

    // A header *name* that is not a token is refused by the HTTP layer itself.
    let (status, _) = raw(addr, &post_raw("/", &[auth.as_bytes(), b"X-\xff: 1"], set)).await;
    assert_eq!(status, 400);

    // Bodies: raw invalid UTF-8 inside a JSON string, a UTF-16 BOM, lone continuation bytes.
    for body in [
        &b"[\"SET\",\"u\",\"\xff\xfe\"]"[..],
        b"\xfe\xff\x00[\x00\"",
        b"[\"SET\",\"u\xc3\",\"1\"]",
        b"[\"\x80\x80\x80\"]",
    ] {
        for path in ["/", "/pipeline"] {
            let (status, answer) = raw(addr, &post_raw(path, &[auth.as_bytes()], body)).await;
            assert_eq!(status, 400, "{path} {body:?}");
            assert!(json_body(&answer)["error"].is_string());
        }
    }
    // Binary values are fine through the base64 argument encoding, and round-trip exactly.
    let (status, answer) = raw(
        addr,
        &post_raw(
            "/",
            &[auth.as_bytes(), b"Larder-Arg-Encoding: base64"],
            br#"["SET","dQ==","//7/AA=="]"#,
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        s.native.get(b"u").await.unwrap().as_deref(),
        Some(&b"\xff\xfe\xff\x00"[..]),
        "only the well-formed binary write landed"
    );
    assert!(healthy(&s).await);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_json_on_every_endpoint_and_for_every_token() {
    let s = Setup::start_with(|b| b.body_limit(1000)).await;
    let addr = s.gateway.addr();
    let big_single = format!(r#"["SET","k","{}"]"#, "x".repeat(2000));
    let big_list = format!(r#"[["SET","k","{}"]]"#, "x".repeat(2000));
    for (path, body) in [
        ("/", &big_single),
        ("/pipeline", &big_list),
        ("/multi-exec", &big_list),
    ] {
        for token in [FULL, READ_ONLY] {
            let (status, _, reply) = s
                .post_as(Some(token), path, body.clone().into_bytes(), false)
                .await;
            assert_eq!(status, 413, "{path}");
            assert!(
                reply["error"].as_str().unwrap().contains("1000 bytes"),
                "{reply}"
            );
        }
        // Without a token the answer is 401: the body is never read.
        let (status, _, _) = s
            .post_as(None, path, body.clone().into_bytes(), false)
            .await;
        assert_eq!(status, 401);
    }
    // A huge declared length is refused from the headers alone, without waiting for a body.
    let started = std::time::Instant::now();
    let (status, answer) = raw(
        addr,
        format!(
            "POST /pipeline HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL}\r\n\
             Content-Length: 99999999999\r\n\r\n[["
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 413);
    assert!(json_body(&answer)["error"].is_string());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.native.get(b"k").await.unwrap(), None);
}

#[tokio::test]
async fn debug_output_of_the_gateway_never_shows_a_token() {
    let s = Setup::start().await;
    let builder = larder_native::gateway::Gateway::builder(std::sync::Arc::new(s.native.clone()))
        .token(larder_native::gateway::Token::new(FULL).unwrap())
        .read_only_token(larder_native::gateway::Token::new(READ_ONLY).unwrap());
    let shown = format!("{builder:?}");
    let gateway = builder.build().unwrap();
    let shown = format!("{shown} {gateway:?} {:?}", s.gateway);
    assert!(
        shown.contains("full: 1") && shown.contains("read_only: 1"),
        "{shown}"
    );
    assert!(
        !shown.contains(FULL) && !shown.contains(READ_ONLY),
        "{shown}"
    );
}

/// The ACL line docs/SECURITY.md recommends, read from the document itself.
fn documented_acl_line(password: &str) -> Vec<String> {
    let doc = include_str!("../../../docs/SECURITY.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER larder-gateway "))
        .expect("docs/SECURITY.md has the ACL line");
    line.split_whitespace()
        .map(|w| w.replace("LONG-RANDOM-PASSWORD", password))
        .collect()
}

/// The deny list filters commands, not what a script does: with a full token, `EVAL` can
/// call any command Redis lets scripts call, `FLUSHALL` included. The Redis ACL user that
/// docs/SECURITY.md recommends closes that gap (scripts run with the caller's permissions)
/// and is a second layer under the gateway's policy: with the policy switched off, Redis
/// itself refuses every dangerous command, directly and from scripts, while larder's cache,
/// leases and stats work through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_acl_user_stops_dangerous_commands_even_without_the_policy() {
    use larder_core::{Cache, ComputeCache, RedisCache, RedisLock, Transport};
    use larder_native::TokioRuntime;

    let redis = tokio::task::spawn_blocking(larder_native::testing::RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let admin = larder_native::RedisTransport::connect(&redis.url())
        .await
        .unwrap();
    let line = documented_acl_line("gateway-password-0123456789");
    assert_eq!(
        admin
            .exec(larder_core::Cmd::from_parts(line.into_iter().map(Into::into).collect()).unwrap())
            .await
            .unwrap(),
        larder_core::Value::Status("OK".into())
    );
    admin
        .exec(larder_core::Cmd::new("SET").arg("larder:keep").arg("me"))
        .await
        .unwrap();
    admin
        .exec(
            larder_core::Cmd::new("SET")
                .arg("other-app:secret")
                .arg("s"),
        )
        .await
        .unwrap();
    let url = format!(
        "redis://larder-gateway:gateway-password-0123456789@{}",
        redis.addr()
    );
    let transport = larder_native::RedisTransport::connect(&url).await.unwrap();
    let gateway = larder_native::gateway::Gateway::builder(std::sync::Arc::new(transport))
        .token(larder_native::gateway::Token::new(FULL).unwrap())
        .policy(larder_native::gateway::Policy::allow_all())
        .build()
        .unwrap()
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let http = reqwest::Client::new();
    let run = |command: serde_json::Value| {
        let http = http.clone();
        let url = gateway.url();
        async move {
            let resp = http
                .post(url)
                .bearer_auth(FULL)
                .body(command.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let reply: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            (status, reply)
        }
    };
    let dangerous: &[&[&str]] = &[
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["SWAPDB", "0", "1"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["ACL", "SETUSER", "evil", "on", ">pw", "+@all", "~*"],
        &["SHUTDOWN", "NOSAVE"],
        &["DEBUG", "SLEEP", "0"],
        &["KEYS", "*"],
        &["MEMORY", "PURGE"],
        &["SLOWLOG", "RESET"],
        &["SCRIPT", "FLUSH"],
        &["SCRIPT", "KILL"],
        &["FUNCTION", "FLUSH"],
        &["CLIENT", "KILL", "TYPE", "normal"],
        &["MIGRATE", "127.0.0.1", "1", "larder:keep", "0", "100"],
        &["GET", "other-app:secret"],
    ];
    for command in dangerous {
        let (status, reply) = run(json!(command)).await;
        assert_eq!(status, 400, "{command:?}: {reply}");
        let error = reply["error"].as_str().unwrap();
        // DEBUG is also off in Redis's own configuration (enable-debug-command).
        assert!(
            error.starts_with("NOPERM") || error.contains("DEBUG command not allowed"),
            "{command:?}: {error}"
        );
        let args: Vec<String> = command.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("return redis.call({})", args.join(","));
        let (status, reply) = run(json!(["EVAL", script, "0"])).await;
        assert_eq!(status, 400, "{script}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains("NOPERM")
                || error.contains("can't run this command")
                || error.contains("not allowed from script")
                || error.contains("can't access at least one of the keys"),
            "{script}: {error}"
        );
    }
    assert_eq!(
        admin
            .exec(larder_core::Cmd::new("GET").arg("larder:keep"))
            .await
            .unwrap(),
        larder_core::Value::Bulk("me".into())
    );

    // What larder needs works under the same user: the cache, its stats and the lease.
    let edge = larder_edge::RestTransport::builder(gateway.url(), FULL)
        .build()
        .unwrap();
    let cache = RedisCache::builder(edge).prefix("larder").build().unwrap();
    cache.set("a", "1".into(), None).await.unwrap();
    assert_eq!(cache.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
    let compute = ComputeCache::builder(cache.clone())
        .lock(RedisLock::for_cache(&cache))
        .runtime(TokioRuntime::shared())
        .build()
        .unwrap();
    let got = compute
        .get_with("computed", None, async { bytes::Bytes::from_static(b"v") })
        .await
        .unwrap();
    assert_eq!(&got[..], b"v");
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 2);
    assert!(cache.stats().await.unwrap().shared.is_some());
}

/// Secrets stay out of the logs: the `larder gateway` binary at `trace`, with a Redis
/// password in its URL, answering good, bad and query-string tokens, then stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_never_logs_tokens_or_the_redis_password_even_at_trace() {
    use std::io::Read;
    use std::process::{Command, Stdio};

    let Some(bin) = option_env!("CARGO_BIN_EXE_larder") else {
        eprintln!("skipped: build with --features cli to test the binary");
        return;
    };
    const PASSWORD: &str = "redis-password-never-logged-42";
    let redis = tokio::task::spawn_blocking(larder_native::testing::RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let admin = larder_native::RedisTransport::connect(&redis.url())
        .await
        .unwrap();
    use larder_core::Transport;
    admin
        .exec(larder_core::Cmd::new("ACL").args_from([
            "SETUSER",
            "gw",
            "on",
            &format!(">{PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ]))
        .await
        .unwrap();
    let mut child = Command::new(bin)
        .args(["gateway", "--listen", "127.0.0.1:0", "--redis-url"])
        .arg(format!("redis://gw:{PASSWORD}@{}", redis.addr()))
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env("LARDER_GATEWAY_READONLY_TOKEN", READ_ONLY)
        .env("LARDER_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = crate::support::listening_addr(&mut child);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let wrong = "wrong-token-that-is-long-enough-0123";
    for (token, query) in [
        (Some(FULL), ""),
        (Some(READ_ONLY), ""),
        (Some(wrong), ""),
        (None, "?_token=query-token-never-logged-0123"),
    ] {
        let mut req = http
            .post(format!("{base}/pipeline{query}"))
            .body(r#"[["SET","k","v"],["FLUSHALL"],["GET","k"]]"#);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert!(req.send().await.is_ok());
    }
    // SAFETY: signalling the child we spawned, by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let _ = child.wait();
    assert!(logs.contains("larder gateway listening"), "{logs}");
    for secret in [FULL, READ_ONLY, wrong, PASSWORD, "query-token-never-logged"] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}

/// `--allow-query-token` on the binary: off by default, on when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_query_tokens_unless_started_with_allow_query_token() {
    use std::process::{Command, Stdio};

    let Some(bin) = option_env!("CARGO_BIN_EXE_larder") else {
        eprintln!("skipped: build with --features cli to test the binary");
        return;
    };
    let redis = tokio::task::spawn_blocking(larder_native::testing::RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    for (flag, expected) in [(None, 401), (Some("--allow-query-token"), 200)] {
        let mut cmd = Command::new(bin);
        cmd.args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .env("LARDER_GATEWAY_TOKEN", FULL)
        .env_remove("LARDER_GATEWAY_ALLOW_QUERY_TOKEN")
        .env("LARDER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(f) = flag {
            cmd.arg(f);
        }
        let mut child = cmd.spawn().unwrap();
        let addr = crate::support::listening_addr(&mut child);
        let status = reqwest::Client::new()
            .post(format!("http://{addr}/?_token={FULL}"))
            .body(r#"["PING"]"#)
            .send()
            .await
            .unwrap()
            .status();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status, expected, "{flag:?}");
    }
}
