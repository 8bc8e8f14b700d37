//! The attacks found when the gateway was probed from outside, sent as the attacker sent
//! them, against a real Redis with `requirepass`: each must fail, be counted, and leave
//! other clients' data and the shared connections as they were (docs/SECURITY.md).

use std::time::Duration;

use larder_native::RedisOptions;
use larder_native::gateway::policy::{BLOCKING, CONTAINERS};
use larder_native::testing::{RedisServer, RespValue};
use serde_json::{Value as Json, json};

use crate::support::{FULL, READ_ONLY, Setup};

const PASSWORD: &str = "requirepass-for-the-attack-tests-0123";

async fn start(
    args: &[&str],
    configure: impl FnOnce(
        larder_native::gateway::GatewayBuilder,
    ) -> larder_native::gateway::GatewayBuilder,
) -> Setup {
    let server = RedisServer::builder().password(PASSWORD).args(args.iter());
    Setup::start_on(server, configure).await
}

/// A command straight to Redis (not through the gateway).
fn admin(s: &Setup, args: &[&str]) -> RespValue {
    s.redis.cmd(args).expect("redis answers the admin")
}

fn text(v: &RespValue) -> String {
    match v {
        RespValue::Simple(t) => t.clone(),
        RespValue::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        RespValue::Integer(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// One `field:value` of `INFO section`.
fn info(s: &Setup, section: &str, field: &str) -> Option<String> {
    let all = text(&admin(s, &["INFO", section]));
    all.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// A counter of this gateway from its `/metrics`.
async fn metric(s: &Setup, name: &str, labels: &[(&str, &str)]) -> u64 {
    s.metric(name, labels).await as u64
}

async fn post(s: &Setup, token: &str, path: &str, body: &Json) -> (u16, Json) {
    let (status, _, reply) = s
        .post_as(Some(token), path, body.to_string().into_bytes(), false)
        .await;
    (status, reply)
}

/// Other clients still read what they wrote, through the gateway, many at once: the shared
/// connection was not switched to another database, left in `MULTI`, told to skip replies
/// or blocked.
async fn other_clients_read_their_own_data(s: &Setup) {
    let reads = (0..50).map(|i| async move {
        let key = format!("victim:{}", i % 5);
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            post(s, FULL, "/", &json!(["GET", key])),
        )
        .await
        .expect("the gateway answers other clients (not stalled)");
        (key, answer)
    });
    for (key, (status, reply)) in futures_util::future::join_all(reads).await {
        assert_eq!(status, 200, "{key}: {reply}");
        assert_eq!(reply, json!({"result": format!("value of {key}")}), "{key}");
    }
}

/// `XREADGROUP` waiting forever for a stream entry.
fn xreadgroup_block() -> Json {
    let parts = "XREADGROUP GROUP g c BLOCK 0 STREAMS s >";
    Json::from(parts.split(' ').collect::<Vec<_>>())
}

fn seed_victims(s: &Setup) {
    for i in 0..5 {
        let key = format!("victim:{i}");
        admin(s, &["SET", &key, &format!("value of {key}")]);
    }
}

#[tokio::test]
async fn nul_bytes_in_command_names_never_reach_redis_on_any_endpoint() {
    let s = start(&[], |b| b).await;
    seed_victims(&s);
    let loaded = text(&admin(&s, &["SCRIPT", "LOAD", "return 'still cached'"]));
    let maxmemory = text(&admin(&s, &["CONFIG", "GET", "maxmemory"]));
    let denied_before = metric(&s, "larder_gateway_denied_commands_total", &[]).await;

    // Redis's command table hashes the whole name but compares it only up to the NUL: one
    // suffix in ~190 reaches the command. 300 suffixes per form reached every one of these
    // before names were validated.
    let forms: Vec<Box<dyn Fn(usize) -> Json>> = vec![
        Box::new(|n| json!([format!("CONFIG\u{0}{n}"), "SET", "maxmemory", "12345"])),
        Box::new(|n| {
            json!([
                format!("ACL\u{0}{n}"),
                "SETUSER",
                format!("evil{n}"),
                "on",
                ">pw",
                "+@all",
                "~*"
            ])
        }),
        Box::new(|n| json!([format!("SELECT\u{0}{n}"), "5"])),
        Box::new(|n| json!([format!("MULTI\u{0}{n}")])),
        Box::new(|n| json!(["CLIENT", format!("REPLY\u{0}{n}"), "SKIP"])),
        Box::new(|n| json!(["SCRIPT", format!("FLUSH\u{0}{n}")])),
        Box::new(|n| json!(["CLIENT", format!("KILL\u{0}{n}"), "TYPE", "normal"])),
        Box::new(|n| json!([format!("flushall\u{0}{n}")])),
    ];
    let mut attempts = 0u64;
    for form in &forms {
        for n in 0..300 {
            let (status, reply) = post(&s, FULL, "/", &form(n)).await;
            attempts += 1;
            assert_eq!(status, 400, "{reply}");
            let error = reply["error"].as_str().unwrap();
            assert!(error.starts_with("ERR invalid"), "{error}");
            assert!(error.contains("name"), "names the rule: {error}");
        }
        for n in 300..340 {
            for path in ["/pipeline", "/multi-exec"] {
                let body = json!([["GET", "victim:0"], form(n), ["SET", "victim:0", "changed"]]);
                let (status, reply) = post(&s, FULL, path, &body).await;
                attempts += 1;
                assert_eq!(status, 400, "{path}: {reply}");
                let error = reply["error"].as_str().unwrap();
                assert!(error.contains("command 1 of the request"), "{error}");
            }
        }
    }

    assert_eq!(
        text(&admin(&s, &["CONFIG", "GET", "maxmemory"])),
        maxmemory,
        "CONFIG never ran"
    );
    let users = admin(&s, &["ACL", "USERS"]);
    assert_eq!(
        users,
        RespValue::Array(vec![RespValue::Bulk(b"default".to_vec())]),
        "ACL SETUSER never ran"
    );
    assert_eq!(
        admin(&s, &["SCRIPT", "EXISTS", &loaded]),
        RespValue::Array(vec![RespValue::Integer(1)]),
        "SCRIPT FLUSH never ran"
    );
    other_clients_read_their_own_data(&s).await;
    assert_eq!(
        metric(&s, "larder_gateway_denied_commands_total", &[]).await - denied_before,
        attempts,
        "every refusal is counted"
    );
}

#[tokio::test]
async fn read_only_tokens_cannot_stall_fill_or_walk_redis_with_scripts() {
    let s = start(
        &["--maxmemory", "24mb", "--maxmemory-policy", "allkeys-lru"],
        |b| b,
    )
    .await;
    seed_victims(&s);
    let filler = "x".repeat(10 * 1024);
    for i in 0..100 {
        admin(&s, &["SET", &format!("data:{i}"), &filler]);
    }
    let looping = text(&admin(&s, &["SCRIPT", "LOAD", "while true do end"]));
    let scripts_before = info(&s, "memory", "number_of_cached_scripts").unwrap();

    let mut attacks = vec![
        json!(["EVAL_RO", "while true do end", "0"]),
        json!(["eval_ro", "return redis.call('KEYS','*')", "0"]),
        json!(["EVAL_RO", "return redis.call('SCAN','0')", "0"]),
        json!(["EVAL_RO", "return redis.call('SLOWLOG','RESET')", "0"]),
        json!(["EVAL_RO", "return redis.call('MEMORY','PURGE')", "0"]),
        json!([
            "EVAL_RO",
            "redis.call('SELECT','1') return redis.call('GET','k')",
            "0"
        ]),
        json!(["EVALSHA_RO", looping, "0"]),
        json!(["FCALL_RO", "anything", "0"]),
    ];
    // 20 distinct scripts of 900 KB each: every one would stay in the script cache.
    for n in 0..20 {
        attacks.push(json!([
            "EVAL_RO",
            format!("return {n} --{}", "y".repeat(900 * 1024)),
            "0"
        ]));
    }
    for attack in &attacks {
        let (status, reply) = post(&s, READ_ONLY, "/", attack).await;
        assert_eq!(status, 400);
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.starts_with("NOPERM this token is read-only"),
            "{error}"
        );
        let (status, reply) = post(&s, READ_ONLY, "/pipeline", &json!([attack])).await;
        assert_eq!(status, 200);
        assert!(reply[0]["error"].as_str().unwrap().starts_with("NOPERM"));
    }

    assert_eq!(
        info(&s, "memory", "number_of_cached_scripts").unwrap(),
        scripts_before
    );
    assert_eq!(text(&admin(&s, &["DBSIZE"])), "105", "nothing was evicted");
    assert_eq!(info(&s, "stats", "evicted_keys").as_deref(), Some("0"));
    other_clients_read_their_own_data(&s).await;
}

#[tokio::test]
async fn read_only_scripts_when_allowed_run_only_what_a_full_token_loaded() {
    let s = start(&[], |b| {
        let mut policy = larder_native::gateway::Policy::default();
        policy.allow_read_only_scripts(true);
        b.policy(policy)
    })
    .await;
    admin(&s, &["SET", "k", "v"]);
    let sha = text(&admin(
        &s,
        &["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"],
    ));
    let (status, reply) = post(&s, READ_ONLY, "/", &json!(["EVALSHA_RO", sha, "1", "k"])).await;
    assert_eq!((status, reply), (200, json!({"result": "v"})));
    let (status, reply) = post(&s, READ_ONLY, "/", &json!(["EVAL_RO", "return 1", "0"])).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().starts_with("NOPERM"));
}

#[tokio::test]
async fn script_debug_and_blocking_forms_are_refused_and_leave_the_connection_clean() {
    let s = start(&[], |b| b).await;
    seed_victims(&s);
    admin(&s, &["XADD", "s", "1-1", "f", "v"]);
    admin(&s, &["XGROUP", "CREATE", "s", "g", "$"]);
    let attacks = [
        json!(["SCRIPT", "DEBUG", "YES"]),
        json!(["script", "debug", "sync"]),
        json!(["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
        json!(["xread", "COUNT", "1", "block", "0", "STREAMS", "s", "$"]),
        xreadgroup_block(),
        json!(["BLPOP", "q", "0"]),
        json!(["BZPOPMIN", "z", "0"]),
        json!(["BLMPOP", "0", "1", "q", "LEFT"]),
        json!(["WAIT", "1", "0"]),
        json!(["CLIENT", "PAUSE", "10000"]),
        json!(["MONITOR"]),
        // Redis reads options in any order and only up to a NUL byte.
        json!(["XREAD", "BLOCK\u{0}", "0", "STREAMS", "s", "$"]),
        json!(["xread", "bLoCk\u{0}junk", "0", "STREAMS", "s", "$"]),
        json!([
            "XREADGROUP",
            "BLOCK",
            "0",
            "GROUP",
            "g",
            "c",
            "STREAMS",
            "s",
            ">"
        ]),
        json!([
            "XREADGROUP",
            "NOACK",
            "BLOCK",
            "0",
            "GROUP",
            "g",
            "c",
            "STREAMS",
            "s",
            ">"
        ]),
    ];
    for attack in &attacks {
        let (status, reply) = post(&s, FULL, "/", attack).await;
        assert_eq!(status, 400, "{attack}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().starts_with("NOPERM"),
            "{attack}: {reply}"
        );
        let (status, reply) =
            post(&s, FULL, "/pipeline", &json!([attack, ["GET", "victim:1"]])).await;
        assert_eq!(status, 200);
        assert!(reply[0]["error"].as_str().unwrap().starts_with("NOPERM"));
        assert_eq!(reply[1], json!({"result": "value of victim:1"}));
        let (status, reply) = post(&s, FULL, "/multi-exec", &json!([attack])).await;
        assert_eq!(status, 400);
        assert!(reply["error"].as_str().unwrap().starts_with("EXECABORT"));
    }
    // XREAD without BLOCK is an ordinary read.
    let (status, _) = post(&s, READ_ONLY, "/", &json!(["XREAD", "STREAMS", "s", "0"])).await;
    assert_eq!(status, 200);
    other_clients_read_their_own_data(&s).await;
    assert_eq!(info(&s, "clients", "blocked_clients").as_deref(), Some("0"));
}

#[tokio::test]
async fn replies_over_the_limit_fail_only_their_own_request() {
    const LIMIT: usize = 1024 * 1024;
    let s = start(&[], |b| b.max_reply_bytes(LIMIT)).await;
    seed_victims(&s);
    admin(&s, &["SET", "big", &"b".repeat(3 * LIMIT)]);
    admin(&s, &["SET", "fits", &"f".repeat(LIMIT / 2)]);
    admin(&s, &["SADD", "set", "a", "b", "c"]);

    let too_large = |reply: &Json| {
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("limit of {LIMIT} bytes")),
            "{error}"
        );
    };
    for token in [FULL, READ_ONLY] {
        for base64 in [false, true] {
            let (status, _, reply) = s
                .post_as(Some(token), "/", br#"["GET","big"]"#.to_vec(), base64)
                .await;
            assert_eq!(status, 400);
            too_large(&reply);
        }
        let (status, reply) = post(
            &s,
            token,
            "/pipeline",
            &json!([["GET", "victim:0"], ["GET", "big"]]),
        )
        .await;
        assert_eq!(status, 400);
        too_large(&reply);
        let (status, reply) = post(&s, token, "/", &json!(["GET", "fits"])).await;
        assert_eq!(status, 200);
        assert_eq!(reply["result"].as_str().unwrap().len(), LIMIT / 2);
    }
    let (status, reply) = post(&s, FULL, "/multi-exec", &json!([["GET", "big"]])).await;
    assert_eq!(status, 400);
    too_large(&reply);

    // A count alone that sets the size is refused before Redis runs it.
    let (status, reply) = post(
        &s,
        READ_ONLY,
        "/",
        &json!(["SRANDMEMBER", "set", "-1000000"]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("at most 10000"),
        "{reply}"
    );
    assert_eq!(
        info(&s, "commandstats", "cmdstat_srandmember"),
        None,
        "SRANDMEMBER never ran"
    );
    let (status, reply) = post(&s, FULL, "/", &json!(["SRANDMEMBER", "set", "-4"])).await;
    assert_eq!(status, 200);
    assert_eq!(reply["result"].as_array().unwrap().len(), 4);
    // A read-only token asks for no repeats at all: each repeat adds the whole member.
    let (status, reply) = post(&s, READ_ONLY, "/", &json!(["SRANDMEMBER", "set", "-4"])).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("repeated members"),
        "{reply}"
    );

    other_clients_read_their_own_data(&s).await;
    let refused = metric(
        &s,
        "larder_gateway_requests_total",
        &[("endpoint", "command"), ("outcome", "reply_too_large")],
    )
    .await;
    assert_eq!(refused, 4, "every refused reply is counted");
}

/// The policy is checked against the Redis it runs in front of: every command Redis itself
/// flags `blocking`, and every command with subcommands, is known to the policy.
#[tokio::test]
async fn the_policy_knows_every_blocking_and_container_command_of_this_redis() {
    let s = start(&[], |b| b).await;
    let RespValue::Array(commands) = admin(&s, &["COMMAND"]) else {
        panic!("COMMAND answers an array");
    };
    let (mut blocking, mut containers) = (Vec::new(), Vec::new());
    for c in &commands {
        let RespValue::Array(fields) = c else {
            continue;
        };
        let name = text(&fields[0]).to_ascii_uppercase();
        if let RespValue::Array(flags) = &fields[2]
            && flags.iter().any(|f| text(f) == "blocking")
        {
            blocking.push(name.clone());
        }
        if let Some(RespValue::Array(subs)) = fields.get(9)
            && !subs.is_empty()
        {
            containers.push(name);
        }
    }
    assert!(
        blocking.len() >= 10 && containers.len() >= 15,
        "{blocking:?} {containers:?}"
    );
    for name in &containers {
        assert!(
            CONTAINERS.contains(&name.as_str()),
            "{name} has subcommands"
        );
    }
    for name in &blocking {
        let refused = BLOCKING.contains(&name.as_str()) || name == "XREAD" || name == "XREADGROUP";
        assert!(refused, "{name} blocks");
        let attack = match name.as_str() {
            "XREAD" => json!(["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
            "XREADGROUP" => xreadgroup_block(),
            other => json!([other, "k", "0"]),
        };
        let (status, reply) = post(&s, FULL, "/", &attack).await;
        assert_eq!(status, 400, "{name}: {reply}");
    }
}

/// A read-only request is bounded as a whole: counts add up across a pipeline, a pipeline
/// stops running once its replies pass the limit, error replies are capped like any other,
/// and the commands that cost Redis far more than the request (set algebra over one key
/// repeated, `COMMAND`, `PFCOUNT`'s write-back) are off for read-only tokens.
#[tokio::test]
async fn one_request_cannot_make_redis_or_the_gateway_hold_more_than_the_reply_limit() {
    const LIMIT: usize = 1024 * 1024;
    // Up to 1 MiB of one-byte members is ~340 000 values for redis-rs to parse, which takes
    // about the default 1 s response timeout in a debug build: give it room, since this test
    // is about what runs, not about time.
    let server = RedisServer::builder().password(PASSWORD);
    let slow_ok = |o: RedisOptions| o.read_timeout(Duration::from_secs(5));
    let s = Setup::start_on_with(server, slow_ok, |b| b.max_reply_bytes(LIMIT)).await;
    seed_victims(&s);
    admin(&s, &["SET", "big", &"b".repeat(100 * 1024)]);
    admin(&s, &["SADD", "set", "a"]);
    let calls = |s: &Setup, cmd: &str| -> u64 {
        info(s, "commandstats", &format!("cmdstat_{cmd}"))
            .and_then(|v| v.split(',').next()?.strip_prefix("calls=")?.parse().ok())
            .unwrap_or(0)
    };

    // One count past 10 000 repeats is refused before Redis builds it (one 1 KB value asked
    // for 5 000 000 times cost Redis 5 GB).
    let (status, reply) = post(
        &s,
        READ_ONLY,
        "/",
        &json!(["HRANDFIELD", "h", "-5000000", "WITHVALUES"]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("at most 10000"),
        "{reply}"
    );
    assert_eq!(calls(&s, "hrandfield"), 0);
    // 200 counts of 9 000 (27 KB each at least) in one (full-token) pipeline: at most the 38
    // that fit the 1 MiB limit together may run.
    let counts: Vec<Json> = (0..200)
        .map(|_| json!(["SRANDMEMBER", "set", "-9000"]))
        .collect();
    let (status, reply) = post(&s, FULL, "/pipeline", &Json::from(counts)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        calls(&s, "srandmember") <= 38,
        "at most the counts that fit ran: {}",
        calls(&s, "srandmember")
    );

    // 2000 reads of a 100 KB value: the pipeline goes in parts sized by the replies seen,
    // and Redis stops being asked a few replies past the limit (10 of 100 KB fill 1 MiB).
    let gets: Vec<Json> = (0..2000).map(|_| json!(["GET", "big"])).collect();
    let before = calls(&s, "get");
    let (status, reply) = post(&s, READ_ONLY, "/pipeline", &Json::from(gets)).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("limit of"),
        "{reply}"
    );
    let ran = calls(&s, "get") - before;
    assert!(ran <= 11, "{ran} of 2000 GETs ran");
    // Small replies first do not buy a larger part: every GET of a read-only pipeline goes
    // in a part of its own, so Redis still stops one reply past the limit.
    let mut sneaky: Vec<Json> = (0..8).map(|_| json!(["PING"])).collect();
    sneaky.extend((0..256).map(|_| json!(["GET", "big"])));
    let before = calls(&s, "get");
    let (status, _) = post(&s, READ_ONLY, "/pipeline", &Json::from(sneaky)).await;
    assert_eq!(status, 400);
    let ran = calls(&s, "get") - before;
    assert!(ran <= 11, "{ran} of 256 GETs ran after 8 PINGs");

    // SCAN pages count too (a full token; each page is its own call).
    admin(
        &s,
        &[
            "EVAL",
            "for i = 1, 20000 do redis.call('SET', string.rep('k', 60) .. i, 'v') end",
            "0",
        ],
    );
    let before = calls(&s, "scan");
    let scans: Vec<Json> = (0..200)
        .map(|_| json!(["SCAN", "0", "COUNT", "1000"]))
        .collect();
    let (status, reply) = post(&s, FULL, "/pipeline", &Json::from(scans)).await;
    assert_eq!(status, 400, "{reply}");
    let ran = calls(&s, "scan") - before;
    assert!(ran <= 40, "{ran} of 200 SCAN pages ran");

    // A script's error is the script's, in band: never taken for an outage (a circuit
    // breaker in front would otherwise open on it).
    let (status, reply) = post(
        &s,
        FULL,
        "/",
        &json!(["EVAL", "return redis.error_reply('BUSY x')", "0"]),
    )
    .await;
    assert_eq!((status, reply), (400, json!({"error": "BUSY x"})));

    // A Redis error longer than the limit is refused like any reply.
    let script = format!("return redis.error_reply(string.rep('x', {}))", 2 * LIMIT);
    let resp = s
        .http
        .post(s.gateway.url())
        .bearer_auth(FULL)
        .body(json!(["EVAL", script, "0"]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.bytes().await.unwrap();
    assert!(body.len() < 1024, "{} bytes", body.len());
    assert!(String::from_utf8_lossy(&body).contains("limit of"));

    for expensive in [
        json!(["BITCOUNT", "big"]),
        json!([
            "GEOSEARCH",
            "g",
            "FROMLONLAT",
            "0",
            "0",
            "BYRADIUS",
            "20000",
            "km",
            "COUNT",
            "1"
        ]),
        json!(["DUMP", "big"]),
        json!(["BITPOS", "big", "1"]),
        json!(["LPOS", "list", "x", "MAXLEN", "0"]),
        json!(["SUNION", "set", "set", "set"]),
        json!(["SINTERCARD", "2", "set", "set"]),
        json!(["ZUNION", "2", "z", "z"]),
        json!(["PFCOUNT", "hll"]),
        json!(["COMMAND", "DOCS"]),
    ] {
        let (status, reply) = post(&s, READ_ONLY, "/", &expensive).await;
        assert_eq!(status, 400, "{expensive}");
        assert!(
            reply["error"].as_str().unwrap().contains("read-only"),
            "{reply}"
        );
    }
    // Arguments whose cost to Redis grows with them, not with the reply, are capped.
    for (token, capped) in [
        (READ_ONLY, json!(["SRANDMEMBER", "set", "400000"])),
        (
            READ_ONLY,
            json!([
                "SSCAN",
                "set",
                "0",
                "MATCH",
                "nomatch",
                "COUNT",
                "100000000"
            ]),
        ),
        (
            READ_ONLY,
            json!(["ZRANGEBYLEX", "z", "-", "+", "LIMIT", "999999", "1"]),
        ),
        (
            FULL,
            json!(["SCAN", "0", "COUNT", "100000000", "TYPE", "string"]),
        ),
        (FULL, json!(["hscan", "h", "0", "count\u{0}", "5000"])),
    ] {
        let (status, reply) = post(&s, token, "/", &capped).await;
        assert_eq!(status, 400, "{capped}");
        assert!(
            reply["error"].as_str().unwrap().contains("at most"),
            "{capped}: {reply}"
        );
    }

    // MATCH globs are bounded: a 1 MB `*[aaa…]` kept Redis busy 12.6 s on one page.
    let glob = format!("*[{}]", "a".repeat(1000));
    for (token, costly) in [
        (
            READ_ONLY,
            json!(["SSCAN", "set", "0", "MATCH", glob, "COUNT", "1000"]),
        ),
        (READ_ONLY, json!(["HSCAN", "h", "0", "match", "*a*b*c*d*e"])),
        (FULL, json!(["SCAN", "0", "MATCH", glob])),
        (FULL, json!(["KEYS", glob])),
    ] {
        let (status, reply) = post(&s, token, "/", &costly).await;
        assert_eq!(status, 400);
        assert!(
            reply["error"].as_str().unwrap().contains("MATCH pattern"),
            "{reply}"
        );
    }
    let (status, _) = post(&s, FULL, "/", &json!(["SSCAN", "set", "0", "MATCH", "a*"])).await;
    assert_eq!(status, 200);
    // A read-only token filters pages itself: its MATCH would be matched against every byte
    // of every member walked (64 members of 100 KB and `*???…x`: 1.5 s).
    let (status, reply) = post(
        &s,
        READ_ONLY,
        "/",
        &json!(["SSCAN", "set", "0", "MATCH", "a*"]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("MATCH"),
        "{reply}"
    );
    let (status, _) = post(
        &s,
        READ_ONLY,
        "/",
        &json!(["SSCAN", "set", "0", "COUNT", "100"]),
    )
    .await;
    assert_eq!(status, 200);

    // A read-only command may not name one key twice: each mention adds the whole value
    // (20 000 mentions of one stream in one XREAD had Redis OOM-killed at 24 GB).
    admin(&s, &["XADD", "st", "*", "f", "v"]);
    for repeated in [
        json!(["MGET", "big", "victim:0", "big"]),
        json!(["HMGET", "h", "f", "f"]),
        json!(["XREAD", "COUNT", "10", "STREAMS", "st", "st", "0", "0"]),
    ] {
        let (status, reply) = post(&s, READ_ONLY, "/", &repeated).await;
        assert_eq!(status, 400, "{repeated}");
        assert!(
            reply["error"].as_str().unwrap().contains("twice"),
            "{reply}"
        );
    }
    let (status, _) = post(&s, READ_ONLY, "/", &json!(["XREAD", "STREAMS", "st", "0"])).await;
    assert_eq!(status, 200);
    let (status, _) = post(&s, READ_ONLY, "/", &json!(["MGET", "victim:0", "victim:1"])).await;
    assert_eq!(status, 200);
    let (status, _) = post(&s, FULL, "/", &json!(["MGET", "victim:0", "victim:0"])).await;
    assert_eq!(status, 200, "full tokens may repeat keys");

    // Read-only transactions: Redis would run 40 000 queued reads whole.
    let infos: Vec<Json> = (0..40_000).map(|_| json!(["INFO"])).collect();
    let before = calls(&s, "info");
    let (status, reply) = post(&s, READ_ONLY, "/multi-exec", &Json::from(infos)).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("cannot run transactions"),
        "{reply}"
    );
    assert_eq!(
        calls(&s, "info"),
        before + 1,
        "only this test's own INFO ran"
    );
    other_clients_read_their_own_data(&s).await;
}
