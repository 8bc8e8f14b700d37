use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;

use super::commands::parse_i64;
use super::*;
use crate::clock::Clock;
use crate::{Commands, Error, ScanCursor, Script, SetOptions, Transport};

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";

fn cmd(parts: &[&str]) -> Cmd {
    Cmd::from_parts(
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect(),
    )
    .expect("a name")
}

/// Runs one command given as strings.
fn r(t: &MemTransport, parts: &[&str]) -> Value {
    block_on(t.exec(cmd(parts))).expect("transport up")
}

/// Runs one command given as strings, inside an async block.
async fn ra(t: &MemTransport, parts: &[&str]) -> Value {
    t.exec(cmd(parts)).await.expect("transport up")
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn ok() -> Value {
    Value::Status("OK".into())
}

fn e(text: &str) -> Value {
    Value::Error(text.into())
}

fn arr(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| bulk(s)).collect())
}

#[test]
fn strings_are_binary_safe_and_commands_case_insensitive() {
    let t = MemTransport::new();
    let key = &b"k\x00\xff\r\n"[..];
    let val = Bytes::from_static(b"\x00\x01binary\xfe");
    block_on(async {
        assert!(t.set(key, &val, SetOptions::default()).await.unwrap());
        assert_eq!(t.get(key).await.unwrap(), Some(val.clone()));
        assert_eq!(t.get(b"k").await.unwrap(), None);
        t.ping().await.unwrap();
    });
    assert_eq!(r(&t, &["ping"]), Value::Status("PONG".into()));
    assert_eq!(r(&t, &["PiNg", "hello"]), bulk("hello"));
    assert_eq!(r(&t, &["echo", "x"]), bulk("x"));
    assert_eq!(r(&t, &["sEt", "a", "1"]), ok());
    assert_eq!(r(&t, &["GET", "a"]), bulk("1"));
    assert_eq!(r(&t, &["SET", "empty", ""]), ok());
    assert_eq!(r(&t, &["GET", "empty"]), bulk(""));
    assert_eq!(r(&t, &["STRLEN", "empty"]), Value::Int(0));
}

#[test]
fn keys_expire_as_the_injected_clock_advances() {
    let t = MemTransport::new();
    let clock = t.clock();
    assert_eq!(clock.now_ms(), DEFAULT_START_MS);
    block_on(async {
        let ttl = SetOptions::ttl(Some(Duration::from_millis(1500)));
        t.set(b"k", &"v".into(), ttl).await.unwrap();
        assert_eq!(t.pttl(b"k").await.unwrap(), 1500);
        assert_eq!(
            ra(&t, &["TTL", "k"]).await,
            Value::Int(2),
            "TTL rounds like Redis"
        );
        clock.advance(Duration::from_millis(1000));
        assert_eq!(t.pttl(b"k").await.unwrap(), 500);
        assert_eq!(ra(&t, &["TTL", "k"]).await, Value::Int(1));
        assert_eq!(t.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            t.get(b"k").await.unwrap(),
            None,
            "expired at its expiry time"
        );
        assert_eq!(t.pttl(b"k").await.unwrap(), -2);
        assert_eq!(t.exists(&[b"k"]).await.unwrap(), 0);

        t.set(b"forever", &"v".into(), SetOptions::default())
            .await
            .unwrap();
        assert_eq!(t.pttl(b"forever").await.unwrap(), -1);
        assert_eq!(ra(&t, &["TTL", "forever"]).await, Value::Int(-1));
        assert!(t.pexpire(b"forever", Duration::from_secs(3)).await.unwrap());
        assert!(!t.pexpire(b"nope", Duration::from_secs(3)).await.unwrap());
        assert_eq!(
            ra(&t, &["PEXPIRETIME", "forever"]).await,
            Value::Int(DEFAULT_START_MS as i64 + 4500)
        );
        assert_eq!(ra(&t, &["PERSIST", "forever"]).await, Value::Int(1));
        assert_eq!(ra(&t, &["PERSIST", "forever"]).await, Value::Int(0));
        assert_eq!(t.pttl(b"forever").await.unwrap(), -1);
        clock.advance(Duration::from_secs(3600));
        assert!(t.get(b"forever").await.unwrap().is_some());
    });
}

#[test]
fn set_nx_xx_get_keepttl() {
    let t = MemTransport::new();
    block_on(async {
        let nx = SetOptions::default().nx();
        assert!(t.set(b"k", &"1".into(), nx).await.unwrap());
        assert!(
            !t.set(b"k", &"2".into(), nx).await.unwrap(),
            "NX on existing"
        );
        assert_eq!(t.get(b"k").await.unwrap().as_deref(), Some(&b"1"[..]));
    });
    assert_eq!(r(&t, &["SET", "missing", "v", "XX"]), Value::Nil);
    assert_eq!(r(&t, &["GET", "missing"]), Value::Nil);
    assert_eq!(r(&t, &["SET", "k", "3", "xx"]), ok());
    // GET returns the old value, also when NX prevents the write (Redis 7).
    assert_eq!(r(&t, &["SET", "k", "4", "GET"]), bulk("3"));
    assert_eq!(r(&t, &["SET", "k", "5", "NX", "GET"]), bulk("4"));
    assert_eq!(r(&t, &["GET", "k"]), bulk("4"));
    assert_eq!(r(&t, &["SET", "new", "v", "GET"]), Value::Nil);
    assert_eq!(r(&t, &["GET", "new"]), bulk("v"));
    // Plain SET clears the TTL; KEEPTTL keeps it.
    assert_eq!(r(&t, &["SET", "k", "a", "EX", "100"]), ok());
    assert_eq!(r(&t, &["SET", "k", "b", "KEEPTTL"]), ok());
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(100_000));
    assert_eq!(r(&t, &["SET", "k", "c"]), ok());
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(-1));
    // Absolute times; one in the past deletes the key.
    let at = (DEFAULT_START_MS / 1000 + 60).to_string();
    assert_eq!(r(&t, &["SET", "k", "d", "EXAT", &at]), ok());
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(60_000));
    let at = (DEFAULT_START_MS + 250).to_string();
    assert_eq!(r(&t, &["SET", "k", "d", "PXAT", &at]), ok());
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(250));
    assert_eq!(r(&t, &["SET", "k", "e", "PXAT", "1"]), ok());
    assert_eq!(r(&t, &["EXISTS", "k"]), Value::Int(0));
    // SET overwrites a key of another type (without GET).
    assert_eq!(r(&t, &["HSET", "h", "f", "v"]), Value::Int(1));
    assert_eq!(r(&t, &["SET", "h", "s", "GET"]), e(WRONGTYPE));
    assert_eq!(r(&t, &["HGET", "h", "f"]), bulk("v"), "not written");
    assert_eq!(r(&t, &["SET", "h", "s"]), ok());
    assert_eq!(r(&t, &["TYPE", "h"]), Value::Status("string".into()));
}

#[test]
fn set_errors_match_redis() {
    let t = MemTransport::new();
    let syntax = e("ERR syntax error");
    let invalid = e("ERR invalid expire time in 'set' command");
    assert_eq!(r(&t, &["SET", "k", "v", "NX", "XX"]), syntax);
    assert_eq!(r(&t, &["SET", "k", "v", "EX", "1", "PX", "1"]), syntax);
    assert_eq!(r(&t, &["SET", "k", "v", "EX", "1", "KEEPTTL"]), syntax);
    assert_eq!(r(&t, &["SET", "k", "v", "EX"]), syntax);
    assert_eq!(r(&t, &["SET", "k", "v", "BOGUS"]), syntax);
    assert_eq!(r(&t, &["SET", "k", "v", "EX", "0"]), invalid);
    assert_eq!(r(&t, &["SET", "k", "v", "PX", "-5"]), invalid);
    assert_eq!(
        r(&t, &["SET", "k", "v", "EX", "9223372036854775807"]),
        invalid
    );
    assert_eq!(
        r(&t, &["SET", "k", "v", "PX", "9223372036854775807"]),
        invalid
    );
    assert_eq!(r(&t, &["SET", "k", "v", "EX", "ten"]), e(NOT_INT));
    assert_eq!(r(&t, &["SET", "k", "v", "EX", "1.5"]), e(NOT_INT));
    assert_eq!(
        r(&t, &["SETEX", "k", "0", "v"]),
        e("ERR invalid expire time in 'setex' command")
    );
    assert_eq!(
        r(&t, &["PSETEX", "k", "-1", "v"]),
        e("ERR invalid expire time in 'psetex' command")
    );
    assert_eq!(
        r(&t, &["GETEX", "k", "EX", "0"]),
        e("ERR invalid expire time in 'getex' command")
    );
    assert_eq!(r(&t, &["DBSIZE"]), Value::Int(0), "no error wrote anything");
    block_on(async {
        let err = t
            .set(
                b"k",
                &"v".into(),
                SetOptions {
                    nx: true,
                    xx: true,
                    ttl: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err, Error::Server("ERR syntax error".into()));
    });
}

#[test]
fn mget_returns_nil_for_missing_expired_and_non_strings() {
    let t = MemTransport::new();
    assert_eq!(r(&t, &["MSET", "a", "1", "b", "2"]), ok());
    assert_eq!(r(&t, &["SET", "short", "x", "PX", "10"]), ok());
    assert_eq!(r(&t, &["SADD", "set", "m"]), Value::Int(1));
    t.clock().advance(Duration::from_millis(10));
    block_on(async {
        let got = t
            .mget(&[b"a", b"missing", b"short", b"set", b"b", b"a"])
            .await
            .unwrap();
        let want: Vec<Option<Bytes>> = vec![
            Some("1".into()),
            None,
            None,
            None,
            Some("2".into()),
            Some("1".into()),
        ];
        assert_eq!(got, want);
        assert_eq!(t.mget(&[]).await.unwrap(), Vec::<Option<Bytes>>::new());
    });
    assert_eq!(
        r(&t, &["MSET", "a"]),
        e("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(
        r(&t, &["MSET", "a", "1", "b"]),
        e("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(r(&t, &["MSETNX", "a", "9", "c", "3"]), Value::Int(0));
    assert_eq!(r(&t, &["GET", "c"]), Value::Nil);
    assert_eq!(r(&t, &["MSETNX", "c", "3", "d", "4"]), Value::Int(1));
    assert_eq!(r(&t, &["MGET", "c", "d"]), arr(&["3", "4"]));
}

#[test]
fn exists_counts_duplicates_and_deletes_count_existing_keys() {
    let t = MemTransport::new();
    r(&t, &["MSET", "a", "1", "b", "2", "c", "3"]);
    block_on(async {
        assert_eq!(t.exists(&[b"a", b"a", b"a", b"zz"]).await.unwrap(), 3);
        assert_eq!(t.del(&[b"a", b"a", b"zz"]).await.unwrap(), 1);
        assert_eq!(t.unlink(&[b"b", b"c", b"b"]).await.unwrap(), 2);
        assert_eq!(t.exists(&[b"a", b"b", b"c"]).await.unwrap(), 0);
    });
    r(&t, &["SET", "gone", "x", "PX", "5"]);
    t.clock().advance(Duration::from_millis(5));
    assert_eq!(
        r(&t, &["DEL", "gone"]),
        Value::Int(0),
        "an expired key is not deleted"
    );
    assert_eq!(t.command_log().iter().filter(|c| *c == "UNLINK").count(), 1);
}

#[test]
fn integer_commands_follow_redis() {
    let t = MemTransport::new();
    block_on(async {
        assert_eq!(t.incrby(b"n", 5).await.unwrap(), 5);
        assert_eq!(t.incrby(b"n", -7).await.unwrap(), -2);
    });
    assert_eq!(r(&t, &["INCR", "n"]), Value::Int(-1));
    assert_eq!(r(&t, &["DECR", "n"]), Value::Int(-2));
    assert_eq!(r(&t, &["DECRBY", "n", "10"]), Value::Int(-12));
    assert_eq!(r(&t, &["GET", "n"]), bulk("-12"));
    // Keeps the TTL.
    r(&t, &["PEXPIRE", "n", "5000"]);
    assert_eq!(r(&t, &["INCR", "n"]), Value::Int(-11));
    assert_eq!(r(&t, &["PTTL", "n"]), Value::Int(5000));
    // Strict integers, like string2ll.
    for bad in [
        "abc",
        " 1",
        "1 ",
        "+1",
        "01",
        "-0",
        "1.0",
        "",
        "99999999999999999999",
    ] {
        r(&t, &["SET", "s", bad]);
        assert_eq!(r(&t, &["INCR", "s"]), e(NOT_INT), "{bad:?}");
    }
    assert_eq!(r(&t, &["INCRBY", "n", "x"]), e(NOT_INT));
    r(&t, &["SET", "big", &i64::MAX.to_string()]);
    assert_eq!(
        r(&t, &["INCR", "big"]),
        e("ERR increment or decrement would overflow")
    );
    assert_eq!(
        r(&t, &["DECRBY", "n", &i64::MIN.to_string()]),
        e("ERR decrement would overflow")
    );
    r(&t, &["SET", "min", &i64::MIN.to_string()]);
    assert_eq!(
        r(&t, &["DECR", "min"]),
        e("ERR increment or decrement would overflow")
    );
    assert_eq!(r(&t, &["INCRBY", "min", "1"]), Value::Int(i64::MIN + 1));

    assert_eq!(r(&t, &["INCRBYFLOAT", "f", "10.5"]), bulk("10.5"));
    assert_eq!(r(&t, &["INCRBYFLOAT", "f", "0.1"]), bulk("10.6"));
    assert_eq!(r(&t, &["INCRBYFLOAT", "f", "-5.6"]), bulk("5"));
    assert_eq!(
        r(&t, &["INCRBYFLOAT", "f", "x"]),
        e("ERR value is not a valid float")
    );
    assert_eq!(
        r(&t, &["INCRBYFLOAT", "f", "inf"]),
        e("ERR increment would produce NaN or Infinity")
    );
    assert_eq!(r(&t, &["INCRBYFLOAT", "n", "1.5"]), bulk("-9.5"));

    assert_eq!(r(&t, &["APPEND", "s2", "ab"]), Value::Int(2));
    assert_eq!(r(&t, &["APPEND", "s2", "cd"]), Value::Int(4));
    assert_eq!(r(&t, &["GET", "s2"]), bulk("abcd"));
    assert_eq!(r(&t, &["STRLEN", "s2"]), Value::Int(4));
    assert_eq!(r(&t, &["STRLEN", "nope"]), Value::Int(0));
}

#[test]
fn parse_i64_is_as_strict_as_string2ll() {
    assert_eq!(parse_i64(b"0"), Some(0));
    assert_eq!(parse_i64(b"-1"), Some(-1));
    assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [
        &b"9223372036854775808"[..],
        b"-",
        b"-0",
        b"00",
        b"+5",
        b"5x",
        b"",
    ] {
        assert_eq!(parse_i64(bad), None, "{bad:?}");
    }
}

#[test]
fn wrong_type_operations_are_refused() {
    let t = MemTransport::new();
    r(&t, &["HSET", "h", "f", "1"]);
    r(&t, &["SET", "s", "x"]);
    r(&t, &["SADD", "set", "m"]);
    for c in [
        &["GET", "h"][..],
        &["INCR", "h"],
        &["INCRBYFLOAT", "h", "1"],
        &["APPEND", "h", "x"],
        &["STRLEN", "h"],
        &["GETDEL", "h"],
        &["GETEX", "h"],
        &["GETSET", "h", "v"],
        &["HGET", "s", "f"],
        &["HSET", "s", "f", "v"],
        &["HINCRBY", "s", "f", "1"],
        &["HGETALL", "set"],
        &["HDEL", "s", "f"],
        &["SADD", "h", "m"],
        &["SMEMBERS", "s"],
        &["SREM", "h", "m"],
    ] {
        assert_eq!(r(&t, c), e(WRONGTYPE), "{c:?}");
    }
    block_on(async {
        assert_eq!(
            t.get(b"h").await.unwrap_err(),
            Error::Server(WRONGTYPE.into())
        );
    });
    assert_eq!(r(&t, &["TYPE", "h"]), Value::Status("hash".into()));
    assert_eq!(r(&t, &["TYPE", "set"]), Value::Status("set".into()));
    assert_eq!(r(&t, &["TYPE", "none"]), Value::Status("none".into()));
    // Commands that work on any type.
    assert_eq!(r(&t, &["EXISTS", "h", "s", "set"]), Value::Int(3));
    assert_eq!(r(&t, &["EXPIRE", "h", "10"]), Value::Int(1));
    assert_eq!(r(&t, &["TTL", "h"]), Value::Int(10));
    assert_eq!(r(&t, &["DEL", "h", "set"]), Value::Int(2));
}

#[test]
fn unknown_commands_and_arity_errors_read_like_redis_7() {
    let t = MemTransport::new();
    assert_eq!(
        r(&t, &["FOO", "a", "b"]),
        e("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(
        r(&t, &["nope"]),
        e("ERR unknown command 'nope', with args beginning with: ")
    );
    assert_eq!(
        r(&t, &["GET"]),
        e("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        r(&t, &["get", "a", "b"]),
        e("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        r(&t, &["SET", "k"]),
        e("ERR wrong number of arguments for 'set' command")
    );
    assert_eq!(
        r(&t, &["PING", "a", "b"]),
        e("ERR wrong number of arguments for 'ping' command")
    );
    assert_eq!(
        r(&t, &["HSET", "h", "f"]),
        e("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        r(&t, &["HSET", "h", "f", "v", "g"]),
        e("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        r(&t, &["SCRIPT", "LOAD"]),
        e("ERR wrong number of arguments for 'script|load' command")
    );
    assert_eq!(
        r(&t, &["SCRIPT", "KILLALL"]),
        e("ERR unknown subcommand 'KILLALL'. Try SCRIPT HELP.")
    );
    assert_eq!(
        r(&t, &["EXPIRE", "k", "10", "FOO"]),
        e("ERR Unsupported option FOO")
    );
    assert_eq!(r(&t, &["FLUSHDB", "NOW"]), e("ERR syntax error"));
}

#[test]
fn scan_returns_every_stable_key_despite_inserts_and_deletes_between_pages() {
    let t = MemTransport::new();
    let stable: Vec<String> = (0..200).map(|i| format!("stable:{i:03}")).collect();
    for k in &stable {
        r(&t, &["SET", k, "v"]);
    }
    for i in 0..100 {
        r(&t, &["SET", &format!("stable:{i:03}:tmp"), "v"]);
    }
    let mut seen: Vec<Bytes> = Vec::new();
    let mut cursor = ScanCursor::START;
    let mut pages = 0;
    loop {
        let (next, keys) = block_on(t.scan(cursor, b"*", 9)).unwrap();
        assert!(keys.len() <= 9, "COUNT bounds a page here");
        seen.extend(keys);
        pages += 1;
        // Churn: delete transient keys around (before and after) the cursor, add keys that
        // sort before, after and between the stable ones.
        for i in 0..3 {
            let n = (pages * 7 + i * 31) % 100;
            r(&t, &["DEL", &format!("stable:{n:03}:tmp")]);
            r(&t, &["SET", &format!("stable:{n:03}:new{pages}"), "v"]);
            r(&t, &["SET", &format!("a:{pages}:{i}"), "v"]);
            r(&t, &["SET", &format!("z:{pages}:{i}"), "v"]);
        }
        if next.is_done() {
            break;
        }
        assert!(pages < 1000, "the scan terminates");
        cursor = next;
    }
    let seen: HashSet<Bytes> = seen.into_iter().collect();
    for k in &stable {
        assert!(
            seen.contains(k.as_bytes()),
            "{k} was present throughout but not returned"
        );
    }
    // Keys added behind the cursor are not seen; keys added ahead are.
    assert!(!seen.contains(&b"a:1:0"[..]));
    assert!(seen.contains(&b"z:1:0"[..]));
}

#[test]
fn scan_is_complete_while_another_thread_writes() {
    let t = MemTransport::new();
    for i in 0..500 {
        r(&t, &["SET", &format!("k:{i:04}"), "v"]);
    }
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                r(&t, &["SET", &format!("k:{:04}:x", i % 700), "v"]);
                r(&t, &["DEL", &format!("k:{:04}:x", (i * 7) % 700)]);
            }
        })
    };
    let mut seen = HashSet::new();
    let mut cursor = ScanCursor::START;
    loop {
        let (next, keys) = block_on(t.scan_page(cursor, b"k:????", 5)).unwrap();
        seen.extend(keys);
        if next.is_done() {
            break;
        }
        cursor = next;
    }
    writer.join().unwrap();
    assert_eq!(
        seen.len(),
        500,
        "MATCH k:???? keeps only the stable keys, all of them"
    );
}

#[test]
fn scan_keys_and_cursor_details() {
    let t = MemTransport::new();
    r(&t, &["MSET", "user:1", "a", "user:2", "b", "other", "c"]);
    r(&t, &["HSET", "user:h", "f", "v"]);
    r(&t, &["SET", "user:short", "x", "PX", "1"]);
    t.clock().advance(Duration::from_millis(1));
    assert_eq!(
        r(&t, &["KEYS", "user:*"]),
        arr(&["user:1", "user:2", "user:h"])
    );
    assert_eq!(r(&t, &["KEYS", "user:[12]"]), arr(&["user:1", "user:2"]));
    assert_eq!(
        r(&t, &["KEYS", "*"]).clone(),
        arr(&["other", "user:1", "user:2", "user:h"])
    );
    // One page covering everything ends with cursor "0".
    assert_eq!(
        r(&t, &["SCAN", "0", "MATCH", "user:*", "COUNT", "100"]),
        Value::Array(vec![bulk("0"), arr(&["user:1", "user:2", "user:h"])])
    );
    assert_eq!(
        r(&t, &["scan", "0", "type", "hash"]),
        Value::Array(vec![bulk("0"), arr(&["user:h"])])
    );
    // COUNT counts examined keys, matching or not: a page may be empty mid-scan.
    let Value::Array(page) = r(&t, &["SCAN", "0", "MATCH", "user:*", "COUNT", "1"]) else {
        panic!("array")
    };
    assert_eq!(page[1], Value::Array(vec![]), "first key is `other`");
    assert_ne!(page[0], bulk("0"));
    assert_eq!(r(&t, &["SCAN", "abc"]), e("ERR invalid cursor"));
    assert_eq!(r(&t, &["SCAN", "-1"]), e("ERR invalid cursor"));
    assert_eq!(r(&t, &["SCAN", "0", "COUNT", "0"]), e("ERR syntax error"));
    assert_eq!(r(&t, &["SCAN", "0", "COUNT", "x"]), e(NOT_INT));
    assert_eq!(r(&t, &["SCAN", "0", "MATCH"]), e("ERR syntax error"));
    assert_eq!(r(&t, &["DBSIZE"]), Value::Int(4));
    // A full scan through the helper.
    let mut all = Vec::new();
    let mut cursor = ScanCursor::START;
    while !cursor.is_done() {
        let (next, keys) = block_on(t.scan(cursor, b"*", 1)).unwrap();
        all.extend(keys);
        cursor = next;
    }
    assert_eq!(all.len(), 4);
}

const DEL_IF_EQ: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                         return redis.call('del', KEYS[1]) else return 0 end";
const PEXPIRE_IF_EQ: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                             return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

fn register_lock_scripts(t: &MemTransport) {
    t.register_script(DEL_IF_EQ, |ctx, keys, args| {
        if ctx.get(&keys[0]).as_ref() == Some(&args[0]) {
            Value::Int(i64::from(ctx.del(&keys[0])))
        } else {
            Value::Int(0)
        }
    });
    t.register_script(PEXPIRE_IF_EQ, |ctx, keys, args| {
        let Some(ms) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|s| s.parse().ok())
        else {
            return Value::Error("ERR value is not an integer or out of range".into());
        };
        if ctx.get(&keys[0]).as_ref() == Some(&args[0]) {
            Value::Int(i64::from(ctx.pexpire(&keys[0], ms)))
        } else {
            Value::Int(0)
        }
    });
}

#[test]
fn run_script_falls_back_from_noscript_to_eval_then_uses_evalsha() {
    let t = MemTransport::new();
    register_lock_scripts(&t);
    let script = Script::new(DEL_IF_EQ);
    let sha = script.sha1().to_string();
    assert_eq!(
        r(&t, &["EVALSHA", &sha, "1", "lock", "tok"]),
        e("NOSCRIPT No matching script. Please use EVAL.")
    );
    assert_eq!(
        r(&t, &["SCRIPT", "EXISTS", &sha]),
        Value::Array(vec![Value::Int(0)])
    );
    t.reset_counters();
    block_on(async {
        t.set(b"lock", &"tok".into(), SetOptions::default())
            .await
            .unwrap();
        let v = t
            .run_script(&script, &[b"lock"], &[b"other"])
            .await
            .unwrap();
        assert_eq!(v, Value::Int(0));
        assert_eq!(t.command_log(), ["SET", "EVALSHA", "EVAL"]);
        let v = t.run_script(&script, &[b"lock"], &[b"tok"]).await.unwrap();
        assert_eq!(v, Value::Int(1));
        assert_eq!(
            t.command_log(),
            ["SET", "EVALSHA", "EVAL", "EVALSHA"],
            "cached now"
        );
        assert_eq!(t.get(b"lock").await.unwrap(), None);
    });
    assert_eq!(
        r(&t, &["SCRIPT", "EXISTS", &sha, "0000"]),
        Value::Array(vec![Value::Int(1), Value::Int(0)])
    );
    assert_eq!(
        r(&t, &["SCRIPT", "EXISTS", &sha.to_uppercase()]),
        Value::Array(vec![Value::Int(1)]),
        "SHAs are case-insensitive"
    );
    // SCRIPT FLUSH empties the cache, as after a restart: the fallback works again.
    assert_eq!(r(&t, &["SCRIPT", "FLUSH"]), ok());
    t.reset_counters();
    let v = block_on(t.run_script(&script, &[b"lock"], &[b"tok"])).unwrap();
    assert_eq!(v, Value::Int(0));
    assert_eq!(t.command_log(), ["EVALSHA", "EVAL"]);
    // SCRIPT LOAD returns the SHA and makes EVALSHA work directly.
    let pexpire = Script::new(PEXPIRE_IF_EQ);
    assert_eq!(
        r(&t, &["SCRIPT", "LOAD", PEXPIRE_IF_EQ]),
        bulk(pexpire.sha1())
    );
    r(&t, &["SET", "lock", "me", "PX", "1000"]);
    assert_eq!(
        r(&t, &["EVALSHA", pexpire.sha1(), "1", "lock", "you", "5000"]),
        Value::Int(0)
    );
    assert_eq!(r(&t, &["PTTL", "lock"]), Value::Int(1000));
    assert_eq!(
        r(&t, &["EVALSHA", pexpire.sha1(), "1", "lock", "me", "5000"]),
        Value::Int(1)
    );
    assert_eq!(r(&t, &["PTTL", "lock"]), Value::Int(5000));
}

#[test]
fn eval_errors() {
    let t = MemTransport::new();
    register_lock_scripts(&t);
    assert_eq!(
        r(&t, &["EVAL", "return 1", "0"]),
        e(
            "ERR larder MemTransport: script not emulated; register it with MemTransport::register_script"
        )
    );
    block_on(async {
        let err = t.eval("return 1", &[], &[]).await.unwrap_err();
        assert!(matches!(err, Error::Server(s) if s.contains("not emulated")));
    });
    assert_eq!(r(&t, &["EVAL", DEL_IF_EQ, "x"]), e(NOT_INT));
    assert_eq!(
        r(&t, &["EVAL", DEL_IF_EQ, "-1"]),
        e("ERR Number of keys can't be negative")
    );
    assert_eq!(
        r(&t, &["EVAL", DEL_IF_EQ, "2", "k"]),
        e("ERR Number of keys can't be greater than number of args")
    );
    assert_eq!(
        r(&t, &["EVAL", "x"]),
        e("ERR wrong number of arguments for 'eval' command")
    );
    assert_eq!(
        r(
            &t,
            &["EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0"]
        ),
        e("NOSCRIPT No matching script. Please use EVAL.")
    );
}

#[test]
fn script_ctx_gives_handlers_atomic_data_access() {
    let t = MemTransport::new();
    t.register_script("ctx test", |ctx, keys, _args| {
        let now = ctx.now_ms();
        assert_eq!(ctx.pttl(&keys[0]), -2);
        assert!(!ctx.exists(&keys[0]));
        ctx.set(&keys[0], "v", Some(2000));
        assert_eq!(ctx.pttl(&keys[0]), 2000);
        assert!(ctx.pexpire(&keys[0], 3000));
        assert_eq!(ctx.call(Cmd::new("PTTL").arg(&keys[0])), Value::Int(3000));
        assert_eq!(ctx.call(Cmd::new("INCR").arg(&keys[1])), Value::Int(1));
        assert_eq!(
            ctx.call(Cmd::new("EVAL").arg("x").arg(0u8)),
            Value::Error("ERR This Redis command is not allowed from script".into())
        );
        assert_eq!(ctx.get(&keys[1]), Some(Bytes::from_static(b"1")));
        assert!(ctx.del(&keys[1]));
        assert!(!ctx.del(&keys[1]));
        ctx.set(&keys[1], "plain", None);
        assert!(!format!("{ctx:?}").is_empty());
        Value::Int(i64::try_from(now % 1000).unwrap())
    });
    let reply = r(&t, &["EVAL", "ctx test", "2", "a", "b"]);
    assert_eq!(reply, Value::Int((DEFAULT_START_MS % 1000) as i64));
    assert_eq!(r(&t, &["PTTL", "a"]), Value::Int(3000));
    assert_eq!(r(&t, &["PTTL", "b"]), Value::Int(-1));
    assert_eq!(t.commands(), 3, "commands run by a script are not counted");
}

#[test]
fn pipeline_runs_in_order_with_in_band_errors_in_one_round_trip() {
    let t = MemTransport::new();
    r(&t, &["HSET", "h", "f", "v"]);
    t.reset_counters();
    let replies = block_on(t.pipeline(vec![
        cmd(&["SET", "a", "1"]),
        cmd(&["INCR", "a"]),
        cmd(&["GET", "h"]),
        cmd(&["BOGUS"]),
        cmd(&["INCRBY", "a", "x"]),
        cmd(&["GET", "a"]),
        cmd(&["MGET", "a", "h", "zz"]),
    ]))
    .unwrap();
    assert_eq!(
        replies,
        vec![
            ok(),
            Value::Int(2),
            e(WRONGTYPE),
            e("ERR unknown command 'BOGUS', with args beginning with: "),
            e(NOT_INT),
            bulk("2"),
            Value::Array(vec![bulk("2"), Value::Nil, Value::Nil]),
        ]
    );
    assert_eq!(t.calls(), 1);
    assert_eq!(t.commands(), 7);
    assert_eq!(
        t.command_log(),
        ["SET", "INCR", "GET", "BOGUS", "INCRBY", "GET", "MGET"]
    );
    assert_eq!(block_on(t.pipeline(vec![])).unwrap(), vec![]);
}

#[test]
fn pipelines_are_atomic_against_other_callers() {
    let t = MemTransport::new();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let out = block_on(t.pipeline(vec![
                        cmd(&["SET", "x", "0"]),
                        cmd(&["INCR", "x"]),
                        cmd(&["INCR", "x"]),
                    ]))
                    .unwrap();
                    assert_eq!(out[2], Value::Int(2), "no other pipeline interleaved");
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(t.calls(), 800);
    assert_eq!(t.commands(), 2400);
}

#[test]
fn fault_injection_fails_calls_without_running_them() {
    let t = MemTransport::new();
    r(&t, &["SET", "k", "v"]);
    t.reset_counters();
    t.fail_next(2, ErrorKind::Timeout);
    block_on(async {
        for _ in 0..2 {
            let err = t.get(b"k").await.unwrap_err();
            assert_eq!(err.transport_kind(), Some(ErrorKind::Timeout));
            assert!(err.is_retryable());
        }
        assert_eq!(t.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    });
    assert_eq!((t.calls(), t.commands()), (3, 1));
    assert_eq!(t.command_log(), ["GET"]);

    t.set_down(true);
    let err = block_on(t.pipeline(vec![cmd(&["SET", "k", "w"])])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.is_retryable());
    assert!(block_on(t.exec(cmd(&["PING"]))).is_err());
    t.set_down(false);
    assert_eq!(
        r(&t, &["GET", "k"]),
        bulk("v"),
        "data survives, the failed SET never ran"
    );

    t.fail_next(1, ErrorKind::Auth);
    let err = block_on(t.exec(cmd(&["PING"]))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(!err.is_retryable());
    assert_eq!(r(&t, &["PING"]), Value::Status("PONG".into()));
    assert_eq!(t.calls(), 8);
    assert!(format!("{t:?}").contains("MemTransport"));
}

#[test]
fn close_makes_later_calls_fail_closed() {
    let t = MemTransport::new();
    let other = t.clone();
    block_on(async {
        t.ping().await.unwrap();
        t.close().await.unwrap();
        assert!(other.is_closed(), "clones share the connection state");
        let err = other.exec(cmd(&["PING"])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        let err = t.pipeline(vec![cmd(&["PING"])]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        t.close().await.unwrap();
    });
    assert_eq!((t.calls(), t.commands()), (3, 1));
}

#[test]
fn latency_sleeps_on_the_injected_clock() {
    let t = MemTransport::new();
    let clock = t.clock();
    r(&t, &["SET", "k", "v", "PX", "80"]);
    t.set_latency(Duration::from_millis(50));
    let start = clock.now_ms();
    assert_eq!(r(&t, &["GET", "k"]), bulk("v"));
    assert_eq!(clock.now_ms() - start, 50);
    block_on(t.pipeline(vec![cmd(&["PING"]), cmd(&["PING"])])).unwrap();
    assert_eq!(clock.now_ms() - start, 100, "once per round trip");
    t.set_latency(Duration::ZERO);
    assert_eq!(
        r(&t, &["GET", "k"]),
        Value::Nil,
        "expired during the simulated latency"
    );
    assert_eq!(clock.now_ms() - start, 100);
}

#[test]
fn hashes() {
    let t = MemTransport::new();
    assert_eq!(r(&t, &["HSET", "h", "b", "2", "a", "1"]), Value::Int(2));
    assert_eq!(r(&t, &["HSET", "h", "a", "10", "c", "3"]), Value::Int(1));
    assert_eq!(r(&t, &["HGET", "h", "a"]), bulk("10"));
    assert_eq!(r(&t, &["HGET", "h", "zz"]), Value::Nil);
    assert_eq!(r(&t, &["HGET", "nokey", "a"]), Value::Nil);
    assert_eq!(
        r(&t, &["HGETALL", "h"]),
        arr(&["a", "10", "b", "2", "c", "3"])
    );
    assert_eq!(r(&t, &["HGETALL", "nokey"]), arr(&[]));
    assert_eq!(
        r(&t, &["HMGET", "h", "a", "zz"]),
        Value::Array(vec![bulk("10"), Value::Nil])
    );
    assert_eq!(r(&t, &["HKEYS", "h"]), arr(&["a", "b", "c"]));
    assert_eq!(r(&t, &["HVALS", "h"]), arr(&["10", "2", "3"]));
    assert_eq!(r(&t, &["HLEN", "h"]), Value::Int(3));
    assert_eq!(r(&t, &["HEXISTS", "h", "b"]), Value::Int(1));
    assert_eq!(r(&t, &["HINCRBY", "h", "a", "5"]), Value::Int(15));
    assert_eq!(r(&t, &["HINCRBY", "h", "new", "-2"]), Value::Int(-2));
    assert_eq!(r(&t, &["HINCRBY", "h", "a", "x"]), e(NOT_INT));
    r(&t, &["HSET", "h", "s", "text"]);
    assert_eq!(
        r(&t, &["HINCRBY", "h", "s", "1"]),
        e("ERR hash value is not an integer")
    );
    assert_eq!(r(&t, &["HINCRBY", "fresh", "n", "7"]), Value::Int(7));
    assert_eq!(r(&t, &["HMSET", "fresh", "m", "1"]), ok());
    assert_eq!(r(&t, &["HDEL", "h", "a", "b", "zz"]), Value::Int(2));
    assert_eq!(r(&t, &["HDEL", "h", "c", "new", "s"]), Value::Int(3));
    assert_eq!(
        r(&t, &["EXISTS", "h"]),
        Value::Int(0),
        "an emptied hash is deleted"
    );
    assert_eq!(r(&t, &["HDEL", "h", "a"]), Value::Int(0));
}

#[test]
fn sets() {
    let t = MemTransport::new();
    assert_eq!(r(&t, &["SADD", "s", "b", "a", "b"]), Value::Int(2));
    assert_eq!(r(&t, &["SADD", "s", "a", "c"]), Value::Int(1));
    assert_eq!(r(&t, &["SMEMBERS", "s"]), arr(&["a", "b", "c"]));
    assert_eq!(r(&t, &["SISMEMBER", "s", "a"]), Value::Int(1));
    assert_eq!(r(&t, &["SISMEMBER", "s", "z"]), Value::Int(0));
    assert_eq!(r(&t, &["SCARD", "s"]), Value::Int(3));
    assert_eq!(r(&t, &["SREM", "s", "a", "z"]), Value::Int(1));
    assert_eq!(r(&t, &["SREM", "s", "b", "c"]), Value::Int(2));
    assert_eq!(r(&t, &["TYPE", "s"]), Value::Status("none".into()));
    assert_eq!(r(&t, &["SMEMBERS", "s"]), arr(&[]));
}

#[test]
fn publish_reaches_live_subscriptions() {
    let t = MemTransport::new();
    assert_eq!(r(&t, &["PUBLISH", "ch", "early"]), Value::Int(0));
    let sub = t.subscribe(b"ch");
    let other = t.subscribe(b"other");
    assert_eq!(r(&t, &["PUBLISH", "ch", "m1"]), Value::Int(1));
    assert_eq!(r(&t, &["PUBLISH", "ch", "m2"]), Value::Int(1));
    assert_eq!(sub.try_recv(), Some(Bytes::from_static(b"m1")));
    assert_eq!(block_on(sub.recv()), Bytes::from_static(b"m2"));
    assert_eq!(sub.try_recv(), None);
    assert_eq!(other.try_recv(), None);
    assert_eq!(&sub.channel()[..], b"ch");
    // recv wakes when another thread publishes.
    let publisher = {
        let t = t.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            r(&t, &["PUBLISH", "ch", "late"]);
        })
    };
    assert_eq!(block_on(sub.recv()), Bytes::from_static(b"late"));
    publisher.join().unwrap();
    drop(sub);
    assert_eq!(
        r(&t, &["PUBLISH", "ch", "m3"]),
        Value::Int(0),
        "dropped = unsubscribed"
    );
    assert_eq!(t.published().len(), 5);
    assert_eq!(
        t.published()[1],
        (Bytes::from_static(b"ch"), Bytes::from_static(b"m1"))
    );
}

#[test]
fn clones_share_data_and_with_clock_uses_the_given_clock() {
    let t = MemTransport::new();
    let c = t.clone();
    r(&t, &["SET", "k", "v"]);
    assert_eq!(r(&c, &["GET", "k"]), bulk("v"));
    assert_eq!(c.calls(), 2);
    assert_eq!(t.keys(), vec![Bytes::from_static(b"k")]);

    let clock = ManualClock::new(5_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let w = MemTransport::with_clock(shared);
    r(&w, &["SET", "k", "v", "PX", "100"]);
    assert_eq!(r(&w, &["PEXPIRETIME", "k"]), Value::Int(5_100));
    assert_eq!(r(&w, &["EXPIRETIME", "k"]), Value::Int(5));
    assert_eq!(r(&w, &["TIME"]), arr(&["5", "0"]));
    clock.advance(Duration::from_millis(100));
    assert_eq!(r(&w, &["GET", "k"]), Value::Nil);
    assert_eq!(w.shared_clock().now_ms(), 5_100);
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.clock())).is_err(),
        "no ManualClock to hand out"
    );

    let m = MemTransport::with_manual_clock(clock.clone());
    m.clock().advance(Duration::from_millis(1));
    assert_eq!(clock.now_ms(), 5_101);
}

#[test]
fn expire_family_options_and_past_times() {
    let t = MemTransport::new();
    r(&t, &["SET", "k", "v"]);
    assert_eq!(
        r(&t, &["EXPIRE", "k", "100", "XX"]),
        Value::Int(0),
        "no TTL yet"
    );
    assert_eq!(r(&t, &["EXPIRE", "k", "100", "NX"]), Value::Int(1));
    assert_eq!(r(&t, &["EXPIRE", "k", "200", "NX"]), Value::Int(0));
    assert_eq!(r(&t, &["EXPIRE", "k", "50", "GT"]), Value::Int(0));
    assert_eq!(r(&t, &["EXPIRE", "k", "200", "GT"]), Value::Int(1));
    assert_eq!(r(&t, &["EXPIRE", "k", "300", "LT"]), Value::Int(0));
    assert_eq!(r(&t, &["EXPIRE", "k", "30", "lt"]), Value::Int(1));
    assert_eq!(r(&t, &["TTL", "k"]), Value::Int(30));
    assert_eq!(r(&t, &["PERSIST", "k"]), Value::Int(1));
    assert_eq!(
        r(&t, &["EXPIRE", "k", "10", "GT"]),
        Value::Int(0),
        "no TTL = infinite"
    );
    assert_eq!(r(&t, &["EXPIRE", "k", "10", "LT"]), Value::Int(1));
    assert_eq!(
        r(&t, &["EXPIRE", "k", "10", "NX", "XX"]),
        e("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        r(&t, &["EXPIRE", "k", "10", "GT", "LT"]),
        e("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(r(&t, &["EXPIRE", "k", "x"]), e(NOT_INT));
    assert_eq!(
        r(&t, &["EXPIRE", "k", "9223372036854775807"]),
        e("ERR invalid expire time in 'expire' command")
    );
    assert_eq!(
        r(&t, &["PEXPIRE", "k", "9223372036854775807"]),
        e("ERR invalid expire time in 'pexpire' command")
    );
    let at = (DEFAULT_START_MS + 1234).to_string();
    assert_eq!(r(&t, &["PEXPIREAT", "k", &at]), Value::Int(1));
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(1234));
    let at = (DEFAULT_START_MS / 1000 + 9).to_string();
    assert_eq!(r(&t, &["EXPIREAT", "k", &at]), Value::Int(1));
    assert_eq!(r(&t, &["TTL", "k"]), Value::Int(9));
    // Zero, negative and past times delete the key and answer 1.
    assert_eq!(r(&t, &["EXPIRE", "k", "0"]), Value::Int(1));
    assert_eq!(r(&t, &["EXISTS", "k"]), Value::Int(0));
    r(&t, &["SET", "k", "v"]);
    assert_eq!(r(&t, &["PEXPIRE", "k", "-10"]), Value::Int(1));
    assert_eq!(r(&t, &["EXISTS", "k"]), Value::Int(0));
    r(&t, &["SET", "k", "v"]);
    assert_eq!(r(&t, &["PEXPIREAT", "k", "1"]), Value::Int(1));
    assert_eq!(r(&t, &["GET", "k"]), Value::Nil);
    assert_eq!(r(&t, &["EXPIRE", "missing", "10"]), Value::Int(0));
}

#[test]
fn getex_getdel_setex_setnx_getset() {
    let t = MemTransport::new();
    assert_eq!(r(&t, &["SETEX", "k", "10", "v"]), ok());
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(10_000));
    assert_eq!(r(&t, &["PSETEX", "k", "1500", "w"]), ok());
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(1500));
    assert_eq!(r(&t, &["GETEX", "k"]), bulk("w"));
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(1500));
    assert_eq!(r(&t, &["GETEX", "k", "PX", "99"]), bulk("w"));
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(99));
    assert_eq!(r(&t, &["GETEX", "k", "PERSIST"]), bulk("w"));
    assert_eq!(r(&t, &["PTTL", "k"]), Value::Int(-1));
    assert_eq!(
        r(&t, &["GETEX", "k", "PERSIST", "EX", "1"]),
        e("ERR syntax error")
    );
    assert_eq!(r(&t, &["GETEX", "k", "PXAT", "1"]), bulk("w"));
    assert_eq!(r(&t, &["EXISTS", "k"]), Value::Int(0));
    assert_eq!(r(&t, &["GETEX", "k"]), Value::Nil);
    assert_eq!(r(&t, &["SETNX", "k", "1"]), Value::Int(1));
    assert_eq!(r(&t, &["SETNX", "k", "2"]), Value::Int(0));
    assert_eq!(r(&t, &["GETSET", "k", "3"]), bulk("1"));
    assert_eq!(r(&t, &["GETDEL", "k"]), bulk("3"));
    assert_eq!(r(&t, &["GETDEL", "k"]), Value::Nil);
    assert_eq!(r(&t, &["SELECT", "0"]), ok());
    assert_eq!(r(&t, &["SELECT", "1"]), e("ERR DB index is out of range"));
}

#[test]
fn dbsize_and_flush_ignore_expired_keys_and_keep_scripts() {
    let t = MemTransport::new();
    register_lock_scripts(&t);
    r(&t, &["MSET", "a", "1", "b", "2"]);
    r(&t, &["SET", "c", "3", "PX", "10"]);
    assert_eq!(r(&t, &["DBSIZE"]), Value::Int(3));
    t.clock().advance(Duration::from_millis(10));
    assert_eq!(r(&t, &["DBSIZE"]), Value::Int(2));
    assert_eq!(t.keys().len(), 2);
    r(&t, &["SCRIPT", "LOAD", DEL_IF_EQ]);
    assert_eq!(r(&t, &["FLUSHDB"]), ok());
    assert_eq!(r(&t, &["DBSIZE"]), Value::Int(0));
    r(&t, &["SET", "a", "1"]);
    assert_eq!(r(&t, &["FLUSHALL", "ASYNC"]), ok());
    assert_eq!(r(&t, &["KEYS", "*"]), arr(&[]));
    let sha = Script::new(DEL_IF_EQ).sha1().to_string();
    assert_eq!(
        r(&t, &["EVALSHA", &sha, "1", "a", "x"]),
        Value::Int(0),
        "scripts survive FLUSHALL"
    );
}

#[test]
fn mem_transport_is_send_sync_with_send_futures() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let t = MemTransport::new();
    assert_send_sync(&t);
    assert_send_sync(&t.subscribe(b"x"));
    let fut = t.exec(cmd(&["PING"]));
    assert_send(&fut);
    let shared: Arc<dyn Transport> = Arc::new(t.clone());
    assert_eq!(
        block_on(shared.exec(cmd(&["PING"]))).unwrap(),
        Value::Status("PONG".into())
    );
}
