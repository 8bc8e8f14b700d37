//! The keyspace and the command implementations of [`MemTransport`](super::MemTransport).
//!
//! Reply shapes and error texts follow Redis 7 over RESP2 (`t_string.c`, `expire.c`,
//! `db.c`, `t_hash.c`, `t_set.c`, `server.c`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;

use super::State;
use super::script;
use crate::cache::glob_match;
use crate::value::Value;

pub(super) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(super) const NOT_INT: &str = "ERR value is not an integer or out of range";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";
const OVERFLOW: &str = "ERR increment or decrement would overflow";

/// How many `SCAN` cursors are remembered; an older (forgotten) cursor restarts the scan,
/// which still returns every key present throughout at least once.
const MAX_CURSORS: usize = 4096;

/// What a key holds.
pub(super) enum Data {
    Str(Bytes),
    Hash(BTreeMap<Bytes, Bytes>),
    Set(BTreeSet<Bytes>),
    /// A stream: entries in id order, each its id and field/value list.
    Stream(Vec<(StreamId, Vec<Bytes>)>),
}

/// A stream entry id: milliseconds and sequence number.
pub(super) type StreamId = (u64, u64);

impl Data {
    fn type_name(&self) -> &'static str {
        match self {
            Data::Str(_) => "string",
            Data::Hash(_) => "hash",
            Data::Set(_) => "set",
            Data::Stream(_) => "stream",
        }
    }
}

/// A key's value and absolute expiry (unix ms).
pub(super) struct Entry {
    pub(super) data: Data,
    pub(super) expire_at: Option<u64>,
}

impl Entry {
    fn expired(&self, now: u64) -> bool {
        self.expire_at.is_some_and(|at| at <= now)
    }
}

/// The keyspace, in key order (for stable `SCAN` cursors), and the live `SCAN` cursors.
#[derive(Default)]
pub(super) struct Db {
    map: BTreeMap<Bytes, Entry>,
    cursors: Cursors,
}

#[derive(Default)]
struct Cursors {
    next: u64,
    last_key: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl Cursors {
    fn alloc(&mut self, last_key: Bytes) -> u64 {
        self.next = self.next.wrapping_add(1).max(1);
        let id = self.next;
        self.last_key.insert(id, last_key);
        self.order.push_back(id);
        while self.order.len() > MAX_CURSORS {
            if let Some(old) = self.order.pop_front() {
                self.last_key.remove(&old);
            }
        }
        id
    }
}

impl Db {
    /// Drops `key` if it has expired.
    fn purge(&mut self, key: &[u8], now: u64) {
        if self.map.get(key).is_some_and(|e| e.expired(now)) {
            self.map.remove(key);
        }
    }

    pub(super) fn lookup(&mut self, key: &[u8], now: u64) -> Option<&Entry> {
        self.purge(key, now);
        self.map.get(key)
    }

    pub(super) fn lookup_mut(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        self.purge(key, now);
        self.map.get_mut(key)
    }

    pub(super) fn insert(&mut self, key: Bytes, data: Data, expire_at: Option<u64>) {
        self.map.insert(key, Entry { data, expire_at });
    }

    /// Removes `key`; true when it existed (and had not expired).
    pub(super) fn remove(&mut self, key: &[u8], now: u64) -> bool {
        self.map.remove(key).is_some_and(|e| !e.expired(now))
    }

    /// Stored keys, including expired ones not yet reclaimed.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    fn purge_all(&mut self, now: u64) {
        self.map.retain(|_, e| !e.expired(now));
    }

    pub(super) fn live_keys(&mut self, now: u64) -> Vec<Bytes> {
        self.purge_all(now);
        self.map.keys().cloned().collect()
    }

    /// The string at `key`: `Ok(None)` when missing, `Err(WRONGTYPE)` when not a string.
    fn get_str(&mut self, key: &[u8], now: u64) -> Result<Option<(Bytes, Option<u64>)>, Value> {
        match self.lookup(key, now) {
            None => Ok(None),
            Some(Entry {
                data: Data::Str(b),
                expire_at,
            }) => Ok(Some((b.clone(), *expire_at))),
            Some(_) => Err(err(WRONGTYPE)),
        }
    }

    fn hash(&mut self, key: &[u8], now: u64) -> Result<Option<&mut BTreeMap<Bytes, Bytes>>, Value> {
        match self.lookup_mut(key, now) {
            None => Ok(None),
            Some(Entry {
                data: Data::Hash(h),
                ..
            }) => Ok(Some(h)),
            Some(_) => Err(err(WRONGTYPE)),
        }
    }

    fn hash_or_create(
        &mut self,
        key: &Bytes,
        now: u64,
    ) -> Result<&mut BTreeMap<Bytes, Bytes>, Value> {
        if self.hash(key, now)?.is_none() {
            self.insert(key.clone(), Data::Hash(BTreeMap::new()), None);
        }
        match self.map.get_mut(&key[..]).map(|e| &mut e.data) {
            Some(Data::Hash(h)) => Ok(h),
            _ => unreachable!("just created"),
        }
    }

    fn set(&mut self, key: &[u8], now: u64) -> Result<Option<&mut BTreeSet<Bytes>>, Value> {
        match self.lookup_mut(key, now) {
            None => Ok(None),
            Some(Entry {
                data: Data::Set(s), ..
            }) => Ok(Some(s)),
            Some(_) => Err(err(WRONGTYPE)),
        }
    }

    /// Deletes `key` when it holds an empty hash or set (Redis never keeps empty ones).
    fn drop_if_empty(&mut self, key: &[u8]) {
        let empty = match self.map.get(key).map(|e| &e.data) {
            Some(Data::Hash(h)) => h.is_empty(),
            Some(Data::Set(s)) => s.is_empty(),
            _ => false,
        };
        if empty {
            self.map.remove(key);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Replies and parsing

pub(super) fn err(text: &str) -> Value {
    Value::Error(text.to_string())
}

pub(super) fn ok() -> Value {
    Value::Status("OK".to_string())
}

fn bulk_or_nil(b: Option<Bytes>) -> Value {
    b.map_or(Value::Nil, Value::Bulk)
}

fn int(n: usize) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

pub(super) fn wrong_args(fullname: &str) -> Value {
    Value::Error(format!(
        "ERR wrong number of arguments for '{fullname}' command"
    ))
}

fn invalid_expire(cmd: &str) -> Value {
    Value::Error(format!("ERR invalid expire time in '{cmd}' command"))
}

/// Case-insensitive comparison of an argument with an ASCII keyword.
pub(super) fn eq(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses a decimal `i64` exactly like Redis' `string2ll`: optional `-`, no `+`, no
/// spaces, no leading zeros, no `-0`.
pub(super) fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    if b == b"0" {
        return Some(0);
    }
    let (neg, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || !(b'1'..=b'9').contains(&digits[0]) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        if v == 1u64 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(v).ok().map(|v| -v)
        }
    } else {
        i64::try_from(v).ok()
    }
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses a float like Redis' `string2ld`: no spaces, no NaN.
fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// Formats a float like `INCRBYFLOAT` (human form: no exponent, no trailing zeros).
fn format_f64(v: f64) -> String {
    let s = format!("{v}");
    if s == "-0" { "0".to_string() } else { s }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ExpireArg {
    Ex,
    Px,
    ExAt,
    PxAt,
}

impl ExpireArg {
    fn parse(opt: &[u8]) -> Option<Self> {
        [
            ("ex", ExpireArg::Ex),
            ("px", ExpireArg::Px),
            ("exat", ExpireArg::ExAt),
            ("pxat", ExpireArg::PxAt),
        ]
        .into_iter()
        .find_map(|(w, e)| eq(opt, w).then_some(e))
    }
}

/// Turns an `EX|PX|EXAT|PXAT n` argument into an absolute unix-ms time (possibly already
/// past), with Redis' errors.
fn expire_at(kind: ExpireArg, raw: &[u8], now: u64, cmd: &str) -> Result<i64, Value> {
    let n = parse_i64(raw).ok_or_else(|| err(NOT_INT))?;
    let seconds = matches!(kind, ExpireArg::Ex | ExpireArg::ExAt);
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(invalid_expire(cmd));
    }
    let ms = if seconds { n * 1000 } else { n };
    if matches!(kind, ExpireArg::Ex | ExpireArg::Px) {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        if ms > i64::MAX - now {
            return Err(invalid_expire(cmd));
        }
        Ok(ms + now)
    } else {
        Ok(ms)
    }
}

fn is_past(at: i64, now: u64) -> bool {
    u64::try_from(at).map_or(true, |at| at <= now)
}

// ---------------------------------------------------------------------------------------
// Dispatch

/// Redis' arity: positive = exactly that many parts (name included), negative = at least.
fn arity(name: &str) -> Option<i32> {
    Some(match name {
        "ping" | "flushdb" | "flushall" => -1,
        "echo" | "get" | "getdel" | "incr" | "decr" | "strlen" | "ttl" | "pttl" | "persist"
        | "type" | "keys" | "expiretime" | "pexpiretime" | "hgetall" | "hkeys" | "hvals"
        | "hlen" | "smembers" | "scard" | "select" => 2,
        "dbsize" | "time" => 1,
        "set" | "expire" | "pexpire" | "expireat" | "pexpireat" | "hdel" | "hmget" | "sadd"
        | "srem" | "eval" | "evalsha" | "mset" | "msetnx" => -3,
        "setnx" | "getset" | "incrby" | "decrby" | "incrbyfloat" | "append" | "publish"
        | "hget" | "hexists" | "sismember" => 3,
        "setex" | "psetex" | "hincrby" => 4,
        "getex" | "mget" | "del" | "unlink" | "exists" | "scan" | "script" | "xlen" => -2,
        "xadd" => -5,
        "xrange" => -4,
        "hset" | "hmset" => -4,
        _ => return None,
    })
}

/// Redis 7's reply to an unknown command.
fn unknown_command(name: &[u8], args: &[Bytes]) -> Value {
    let mut listed = String::new();
    for a in args {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push('\'');
        listed.push_str(&lossy(&a[..a.len().min(room)]));
        listed.push_str("' ");
    }
    let name = lossy(&name[..name.len().min(128)]);
    let text = format!("ERR unknown command '{name}', with args beginning with: {listed}");
    Value::Error(text.replace(['\r', '\n'], " "))
}

/// Runs one command (`args[0]` is the name) against the state.
pub(super) fn run(st: &mut State, now: u64, args: &[Bytes], in_script: bool) -> Value {
    let name = lossy(&args[0]).to_ascii_lowercase();
    let Some(arity) = arity(&name) else {
        return unknown_command(&args[0], &args[1..]);
    };
    let argc = i32::try_from(args.len()).unwrap_or(i32::MAX);
    if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
        return wrong_args(&name);
    }
    let a = &args[1..];
    match name.as_str() {
        "eval" | "evalsha" | "script" if in_script => {
            err("ERR This Redis command is not allowed from script")
        }
        "eval" => script::eval(st, now, a, false),
        "evalsha" => script::eval(st, now, a, true),
        "script" => script::script(st, a),
        "publish" => Value::Int(st.publish(&a[0], &a[1])),
        _ => run_db(&mut st.db, now, &name, a),
    }
}

fn run_db(db: &mut Db, now: u64, name: &str, a: &[Bytes]) -> Value {
    match name {
        "ping" => match a {
            [] => Value::Status("PONG".to_string()),
            [msg] => Value::Bulk(msg.clone()),
            _ => wrong_args("ping"),
        },
        "echo" => Value::Bulk(a[0].clone()),
        "xadd" => cmd_xadd(db, now, a),
        "xrange" => cmd_xrange(db, now, a),
        "xlen" => match db.lookup(&a[0], now).map(|e| &e.data) {
            None => Value::Int(0),
            Some(Data::Stream(entries)) => int(entries.len()),
            Some(_) => err(WRONGTYPE),
        },
        "select" => match parse_i64(&a[0]) {
            Some(0) => ok(),
            Some(_) => err("ERR DB index is out of range"),
            None => err(NOT_INT),
        },
        "time" => {
            let (secs, micros) = (now / 1000, (now % 1000) * 1000);
            Value::Array(vec![
                Value::Bulk(Bytes::from(secs.to_string())),
                Value::Bulk(Bytes::from(micros.to_string())),
            ])
        }
        "get" => match db.get_str(&a[0], now) {
            Ok(v) => bulk_or_nil(v.map(|(b, _)| b)),
            Err(e) => e,
        },
        "set" => cmd_set(db, now, a),
        "setnx" => {
            if db.lookup(&a[0], now).is_some() {
                Value::Int(0)
            } else {
                db.insert(a[0].clone(), Data::Str(a[1].clone()), None);
                Value::Int(1)
            }
        }
        "setex" | "psetex" => {
            let kind = if name == "setex" {
                ExpireArg::Ex
            } else {
                ExpireArg::Px
            };
            match expire_at(kind, &a[1], now, name) {
                Ok(at) => {
                    let at = u64::try_from(at).unwrap_or(u64::MAX);
                    db.insert(a[0].clone(), Data::Str(a[2].clone()), Some(at));
                    ok()
                }
                Err(e) => e,
            }
        }
        "getset" => match db.get_str(&a[0], now) {
            Ok(old) => {
                db.insert(a[0].clone(), Data::Str(a[1].clone()), None);
                bulk_or_nil(old.map(|(b, _)| b))
            }
            Err(e) => e,
        },
        "getdel" => match db.get_str(&a[0], now) {
            Ok(Some((b, _))) => {
                db.map.remove(&a[0][..]);
                Value::Bulk(b)
            }
            Ok(None) => Value::Nil,
            Err(e) => e,
        },
        "getex" => cmd_getex(db, now, a),
        "mget" => Value::Array(
            a.iter()
                .map(|k| match db.get_str(k, now) {
                    Ok(Some((b, _))) => Value::Bulk(b),
                    _ => Value::Nil,
                })
                .collect(),
        ),
        "mset" | "msetnx" => {
            if !a.len().is_multiple_of(2) {
                return wrong_args(name);
            }
            let nx = name == "msetnx";
            if nx && a.chunks(2).any(|kv| db.lookup(&kv[0], now).is_some()) {
                return Value::Int(0);
            }
            for kv in a.chunks(2) {
                db.insert(kv[0].clone(), Data::Str(kv[1].clone()), None);
            }
            if nx { Value::Int(1) } else { ok() }
        }
        "del" | "unlink" => int(a.iter().filter(|k| db.remove(k, now)).count()),
        "exists" => int(a.iter().filter(|k| db.lookup(k, now).is_some()).count()),
        "incr" => incr_by(db, now, &a[0], 1),
        "decr" => incr_by(db, now, &a[0], -1),
        "incrby" => match parse_i64(&a[1]) {
            Some(by) => incr_by(db, now, &a[0], by),
            None => err(NOT_INT),
        },
        "decrby" => match parse_i64(&a[1]) {
            Some(i64::MIN) => err("ERR decrement would overflow"),
            Some(by) => incr_by(db, now, &a[0], -by),
            None => err(NOT_INT),
        },
        "incrbyfloat" => cmd_incrbyfloat(db, now, a),
        "append" => match db.get_str(&a[0], now) {
            Ok(old) => {
                let (mut buf, exp) = match old {
                    Some((b, exp)) => (b.to_vec(), exp),
                    None => (Vec::new(), None),
                };
                buf.extend_from_slice(&a[1]);
                let len = buf.len();
                db.insert(a[0].clone(), Data::Str(Bytes::from(buf)), exp);
                int(len)
            }
            Err(e) => e,
        },
        "strlen" => match db.get_str(&a[0], now) {
            Ok(v) => int(v.map_or(0, |(b, _)| b.len())),
            Err(e) => e,
        },
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => match db.lookup(&a[0], now) {
            None => Value::Int(-2),
            Some(Entry {
                expire_at: None, ..
            }) => Value::Int(-1),
            Some(Entry {
                expire_at: Some(at),
                ..
            }) => {
                let at = *at;
                let left = i64::try_from(at - now).unwrap_or(i64::MAX);
                let at = i64::try_from(at).unwrap_or(i64::MAX);
                Value::Int(match name {
                    "ttl" => (left + 500) / 1000,
                    "pttl" => left,
                    "expiretime" => at / 1000,
                    _ => at,
                })
            }
        },
        "expire" => cmd_expire(db, now, a, name, true, true),
        "pexpire" => cmd_expire(db, now, a, name, false, true),
        "expireat" => cmd_expire(db, now, a, name, true, false),
        "pexpireat" => cmd_expire(db, now, a, name, false, false),
        "persist" => match db.lookup_mut(&a[0], now) {
            Some(e) if e.expire_at.is_some() => {
                e.expire_at = None;
                Value::Int(1)
            }
            _ => Value::Int(0),
        },
        "type" => Value::Status(
            db.lookup(&a[0], now)
                .map_or("none", |e| e.data.type_name())
                .to_string(),
        ),
        "keys" => {
            db.purge_all(now);
            Value::Array(
                db.map
                    .keys()
                    .filter(|k| glob_match(&a[0], k))
                    .map(|k| Value::Bulk(k.clone()))
                    .collect(),
            )
        }
        "scan" => cmd_scan(db, now, a),
        "dbsize" => {
            db.purge_all(now);
            int(db.map.len())
        }
        "flushdb" | "flushall" => match a {
            [] => {
                db.map.clear();
                ok()
            }
            [opt] if eq(opt, "async") || eq(opt, "sync") => {
                db.map.clear();
                ok()
            }
            _ => err(SYNTAX),
        },
        "hset" | "hmset" => {
            if a.len().is_multiple_of(2) {
                return wrong_args(name);
            }
            let h = match db.hash_or_create(&a[0], now) {
                Ok(h) => h,
                Err(e) => return e,
            };
            let mut added = 0;
            for fv in a[1..].chunks(2) {
                if h.insert(fv[0].clone(), fv[1].clone()).is_none() {
                    added += 1;
                }
            }
            if name == "hset" { int(added) } else { ok() }
        }
        "hget" => match db.hash(&a[0], now) {
            Ok(h) => bulk_or_nil(h.and_then(|h| h.get(&a[1]).cloned())),
            Err(e) => e,
        },
        "hmget" => match db.hash(&a[0], now) {
            Ok(h) => Value::Array(
                a[1..]
                    .iter()
                    .map(|f| bulk_or_nil(h.as_ref().and_then(|h| h.get(f).cloned())))
                    .collect(),
            ),
            Err(e) => e,
        },
        "hexists" => match db.hash(&a[0], now) {
            Ok(h) => Value::Int(i64::from(h.is_some_and(|h| h.contains_key(&a[1])))),
            Err(e) => e,
        },
        "hlen" => match db.hash(&a[0], now) {
            Ok(h) => int(h.map_or(0, |h| h.len())),
            Err(e) => e,
        },
        "hdel" => {
            let removed = match db.hash(&a[0], now) {
                Ok(Some(h)) => a[1..].iter().filter(|f| h.remove(*f).is_some()).count(),
                Ok(None) => 0,
                Err(e) => return e,
            };
            db.drop_if_empty(&a[0]);
            int(removed)
        }
        "hgetall" | "hkeys" | "hvals" => match db.hash(&a[0], now) {
            Ok(h) => {
                let mut out = Vec::new();
                for (f, v) in h.into_iter().flat_map(|h| h.iter()) {
                    if name != "hvals" {
                        out.push(Value::Bulk(f.clone()));
                    }
                    if name != "hkeys" {
                        out.push(Value::Bulk(v.clone()));
                    }
                }
                Value::Array(out)
            }
            Err(e) => e,
        },
        "hincrby" => {
            let Some(by) = parse_i64(&a[2]) else {
                return err(NOT_INT);
            };
            let h = match db.hash_or_create(&a[0], now) {
                Ok(h) => h,
                Err(e) => return e,
            };
            let cur = match h.get(&a[1]) {
                None => 0,
                Some(v) => match parse_i64(v) {
                    Some(v) => v,
                    None => return err("ERR hash value is not an integer"),
                },
            };
            match cur.checked_add(by) {
                Some(n) => {
                    h.insert(a[1].clone(), Bytes::from(n.to_string()));
                    Value::Int(n)
                }
                None => {
                    db.drop_if_empty(&a[0]);
                    err(OVERFLOW)
                }
            }
        }
        "sadd" => {
            if let Err(e) = db.set(&a[0], now) {
                return e;
            }
            let entry = db.map.entry(a[0].clone()).or_insert_with(|| Entry {
                data: Data::Set(BTreeSet::new()),
                expire_at: None,
            });
            let Data::Set(s) = &mut entry.data else {
                unreachable!("checked above")
            };
            int(a[1..].iter().filter(|m| s.insert((*m).clone())).count())
        }
        "srem" => {
            let removed = match db.set(&a[0], now) {
                Ok(Some(s)) => a[1..].iter().filter(|m| s.remove(*m)).count(),
                Ok(None) => 0,
                Err(e) => return e,
            };
            db.drop_if_empty(&a[0]);
            int(removed)
        }
        "smembers" => match db.set(&a[0], now) {
            Ok(s) => Value::Array(
                s.into_iter()
                    .flat_map(|s| s.iter())
                    .map(|m| Value::Bulk(m.clone()))
                    .collect(),
            ),
            Err(e) => e,
        },
        "sismember" => match db.set(&a[0], now) {
            Ok(s) => Value::Int(i64::from(s.is_some_and(|s| s.contains(&a[1])))),
            Err(e) => e,
        },
        "scard" => match db.set(&a[0], now) {
            Ok(s) => int(s.map_or(0, |s| s.len())),
            Err(e) => e,
        },
        _ => unknown_command(name.as_bytes(), a),
    }
}

// ---------------------------------------------------------------------------------------
// Commands with options

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn cmd_set(db: &mut Db, now: u64, a: &[Bytes]) -> Value {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expire: Option<(ExpireArg, &Bytes)> = None;
    let mut j = 2;
    while j < a.len() {
        let opt = &a[j];
        let next = a.get(j + 1);
        if eq(opt, "nx") && !xx {
            nx = true;
        } else if eq(opt, "xx") && !nx {
            xx = true;
        } else if eq(opt, "get") {
            get = true;
        } else if eq(opt, "keepttl") && expire.is_none() {
            keepttl = true;
        } else if let (Some(kind), Some(n)) = (ExpireArg::parse(opt), next)
            && !keepttl
            && expire.is_none()
        {
            expire = Some((kind, n));
            j += 1;
        } else {
            return err(SYNTAX);
        }
        j += 1;
    }
    let at = match expire {
        Some((kind, raw)) => match expire_at(kind, raw, now, "set") {
            Ok(at) => Some(at),
            Err(e) => return e,
        },
        None => None,
    };
    let (key, value) = (&a[0], &a[1]);
    let (exists, old, old_expire) = match db.lookup(key, now) {
        None => (false, None, None),
        Some(Entry {
            data: Data::Str(b),
            expire_at,
        }) => (true, Some(b.clone()), *expire_at),
        Some(e) => {
            if get {
                return err(WRONGTYPE);
            }
            (true, None, e.expire_at)
        }
    };
    let reply = |written: bool| {
        if get {
            bulk_or_nil(old.clone())
        } else if written {
            ok()
        } else {
            Value::Nil
        }
    };
    if (nx && exists) || (xx && !exists) {
        return reply(false);
    }
    match at {
        Some(at) if is_past(at, now) => {
            db.map.remove(&key[..]);
        }
        Some(at) => db.insert(
            key.clone(),
            Data::Str(value.clone()),
            Some(u64::try_from(at).unwrap_or(u64::MAX)),
        ),
        None => db.insert(
            key.clone(),
            Data::Str(value.clone()),
            if keepttl { old_expire } else { None },
        ),
    }
    reply(true)
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
fn cmd_getex(db: &mut Db, now: u64, a: &[Bytes]) -> Value {
    let mut persist = false;
    let mut expire: Option<(ExpireArg, &Bytes)> = None;
    let mut j = 1;
    while j < a.len() {
        let opt = &a[j];
        if eq(opt, "persist") && expire.is_none() {
            persist = true;
        } else if let (Some(kind), Some(n)) = (ExpireArg::parse(opt), a.get(j + 1))
            && !persist
            && expire.is_none()
        {
            expire = Some((kind, n));
            j += 1;
        } else {
            return err(SYNTAX);
        }
        j += 1;
    }
    let at = match expire {
        Some((kind, raw)) => match expire_at(kind, raw, now, "getex") {
            Ok(at) => Some(at),
            Err(e) => return e,
        },
        None => None,
    };
    let value = match db.get_str(&a[0], now) {
        Ok(Some((b, _))) => b,
        Ok(None) => return Value::Nil,
        Err(e) => return e,
    };
    match at {
        Some(at) if is_past(at, now) => {
            db.map.remove(&a[0][..]);
        }
        Some(at) => {
            if let Some(e) = db.map.get_mut(&a[0][..]) {
                e.expire_at = Some(u64::try_from(at).unwrap_or(u64::MAX));
            }
        }
        None if persist => {
            if let Some(e) = db.map.get_mut(&a[0][..]) {
                e.expire_at = None;
            }
        }
        None => {}
    }
    Value::Bulk(value)
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: keeps the key's expiry.
fn incr_by(db: &mut Db, now: u64, key: &Bytes, by: i64) -> Value {
    let (cur, exp) = match db.get_str(key, now) {
        Ok(None) => (0, None),
        Ok(Some((b, exp))) => match parse_i64(&b) {
            Some(v) => (v, exp),
            None => return err(NOT_INT),
        },
        Err(e) => return e,
    };
    match cur.checked_add(by) {
        Some(n) => {
            db.insert(key.clone(), Data::Str(Bytes::from(n.to_string())), exp);
            Value::Int(n)
        }
        None => err(OVERFLOW),
    }
}

/// `INCRBYFLOAT key by`: keeps the key's expiry, answers the new value as a bulk string.
fn cmd_incrbyfloat(db: &mut Db, now: u64, a: &[Bytes]) -> Value {
    let Some(by) = parse_f64(&a[1]) else {
        return err(NOT_FLOAT);
    };
    let (cur, exp) = match db.get_str(&a[0], now) {
        Ok(None) => (0.0, None),
        Ok(Some((b, exp))) => match parse_f64(&b) {
            Some(v) => (v, exp),
            None => return err(NOT_FLOAT),
        },
        Err(e) => return e,
    };
    let n = cur + by;
    if !n.is_finite() {
        return err("ERR increment would produce NaN or Infinity");
    }
    let s = Bytes::from(format_f64(n));
    db.insert(a[0].clone(), Data::Str(s.clone()), exp);
    Value::Bulk(s)
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT key n [NX|XX|GT|LT]`.
fn cmd_expire(
    db: &mut Db,
    now: u64,
    a: &[Bytes],
    name: &str,
    seconds: bool,
    relative: bool,
) -> Value {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a[2..] {
        if eq(opt, "nx") {
            nx = true;
        } else if eq(opt, "xx") {
            xx = true;
        } else if eq(opt, "gt") {
            gt = true;
        } else if eq(opt, "lt") {
            lt = true;
        } else {
            return Value::Error(format!("ERR Unsupported option {}", lossy(opt)));
        }
    }
    if nx && (xx || gt || lt) {
        return err("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return err("ERR GT and LT options at the same time are not compatible");
    }
    let Some(mut when) = parse_i64(&a[1]) else {
        return err(NOT_INT);
    };
    if seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return invalid_expire(name);
        }
        when *= 1000;
    }
    if relative {
        let base = i64::try_from(now).unwrap_or(i64::MAX);
        if when > i64::MAX - base {
            return invalid_expire(name);
        }
        when += base;
    }
    let Some(entry) = db.lookup_mut(&a[0], now) else {
        return Value::Int(0);
    };
    let current = entry
        .expire_at
        .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| when <= c))
        || (lt && current.is_some_and(|c| when >= c));
    if refused {
        return Value::Int(0);
    }
    if is_past(when, now) {
        db.map.remove(&a[0][..]);
    } else {
        entry.expire_at = Some(u64::try_from(when).unwrap_or(u64::MAX));
    }
    Value::Int(1)
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
///
/// Cursor `0` starts at the smallest key; any other cursor names the last key examined by
/// the page that returned it, and the next page continues strictly after that key. Each
/// page examines up to `COUNT` keys (default 10) and returns those matching.
fn cmd_scan(db: &mut Db, now: u64, a: &[Bytes]) -> Value {
    let Some(cursor) = parse_u64(&a[0]) else {
        return err("ERR invalid cursor");
    };
    let (mut count, mut pattern, mut type_name): (usize, Option<&Bytes>, Option<String>) =
        (10, None, None);
    let mut j = 1;
    while j < a.len() {
        let (opt, val) = (&a[j], a.get(j + 1));
        match val {
            Some(v) if eq(opt, "count") => match parse_i64(v) {
                Some(n) if n >= 1 => count = usize::try_from(n).unwrap_or(usize::MAX),
                Some(_) => return err(SYNTAX),
                None => return err(NOT_INT),
            },
            Some(v) if eq(opt, "match") => pattern = Some(v),
            Some(v) if eq(opt, "type") => type_name = Some(lossy(v).to_ascii_lowercase()),
            _ => return err(SYNTAX),
        }
        j += 2;
    }
    let start = match cursor {
        0 => Bound::Unbounded,
        c => db
            .cursors
            .last_key
            .get(&c)
            .map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone())),
    };
    let (mut keys, mut expired) = (Vec::new(), Vec::new());
    let mut last: Option<Bytes> = None;
    let (mut examined, mut more) = (0usize, false);
    for (k, e) in db.map.range::<Bytes, _>((start, Bound::Unbounded)) {
        if examined >= count {
            more = true;
            break;
        }
        examined += 1;
        last = Some(k.clone());
        if e.expired(now) {
            expired.push(k.clone());
        } else if pattern.is_none_or(|p| glob_match(p, k))
            && type_name.as_deref().is_none_or(|t| t == e.data.type_name())
        {
            keys.push(Value::Bulk(k.clone()));
        }
    }
    for k in &expired {
        db.map.remove(&k[..]);
    }
    let next = match last {
        Some(last) if more => db.cursors.alloc(last),
        _ => 0,
    };
    Value::Array(vec![
        Value::Bulk(Bytes::from(next.to_string())),
        Value::Array(keys),
    ])
}

// ---------------------------------------------------------------------------------------
// Streams (the subset larder uses: `XADD key * field value …`, `XRANGE` with exclusive
// starts and `COUNT`, `XLEN`)

fn stream_id_text(id: StreamId) -> Bytes {
    Bytes::from(format!("{}-{}", id.0, id.1))
}

fn parse_stream_id(b: &[u8], default_seq: u64) -> Option<StreamId> {
    let s = std::str::from_utf8(b).ok()?;
    match s.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((s.parse().ok()?, default_seq)),
    }
}

fn cmd_xadd(db: &mut Db, now: u64, a: &[Bytes]) -> Value {
    if &a[1][..] != b"*" {
        return err("ERR only auto-generated ids (*) are emulated");
    }
    let fields = &a[2..];
    if !fields.len().is_multiple_of(2) {
        return wrong_args("xadd");
    }
    let last = match db.lookup(&a[0], now).map(|e| &e.data) {
        None => None,
        Some(Data::Stream(entries)) => entries.last().map(|(id, _)| *id),
        Some(_) => return err(WRONGTYPE),
    };
    let id = match last {
        Some((ms, seq)) if ms >= now => (ms, seq + 1),
        _ => (now, 0),
    };
    match db.lookup_mut(&a[0], now) {
        Some(Entry {
            data: Data::Stream(entries),
            ..
        }) => entries.push((id, fields.to_vec())),
        _ => db.insert(
            a[0].clone(),
            Data::Stream(vec![(id, fields.to_vec())]),
            None,
        ),
    }
    Value::Bulk(stream_id_text(id))
}

fn cmd_xrange(db: &mut Db, now: u64, a: &[Bytes]) -> Value {
    let start = match &a[1][..] {
        b"-" => Bound::Unbounded,
        s if s.starts_with(b"(") => match parse_stream_id(&s[1..], 0) {
            Some(id) => Bound::Excluded(id),
            None => return err("ERR Invalid stream ID specified as stream command argument"),
        },
        s => match parse_stream_id(s, 0) {
            Some(id) => Bound::Included(id),
            None => return err("ERR Invalid stream ID specified as stream command argument"),
        },
    };
    let end = match &a[2][..] {
        b"+" => Bound::Unbounded,
        s => match parse_stream_id(s, u64::MAX) {
            Some(id) => Bound::Included(id),
            None => return err("ERR Invalid stream ID specified as stream command argument"),
        },
    };
    let count = match &a[3..] {
        [] => usize::MAX,
        [c, n] if c.eq_ignore_ascii_case(b"count") => match parse_i64(n) {
            Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => return err(NOT_INT),
        },
        _ => return err(SYNTAX),
    };
    let entries = match db.lookup(&a[0], now).map(|e| &e.data) {
        None => return Value::Array(Vec::new()),
        Some(Data::Stream(entries)) => entries,
        Some(_) => return err(WRONGTYPE),
    };
    let in_range = |id: &StreamId| {
        (match start {
            Bound::Unbounded => true,
            Bound::Included(s) => *id >= s,
            Bound::Excluded(s) => *id > s,
        }) && (match end {
            Bound::Unbounded => true,
            Bound::Included(e) => *id <= e,
            Bound::Excluded(e) => *id < e,
        })
    };
    Value::Array(
        entries
            .iter()
            .filter(|(id, _)| in_range(id))
            .take(count)
            .map(|(id, fields)| {
                Value::Array(vec![
                    Value::Bulk(stream_id_text(*id)),
                    Value::Array(fields.iter().cloned().map(Value::Bulk).collect()),
                ])
            })
            .collect(),
    )
}
