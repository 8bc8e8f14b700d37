//! Emulated scripts: the context a [`ScriptHandler`](super::ScriptHandler) runs in.

use std::fmt;

use bytes::Bytes;

use super::State;
use super::commands::{self, Data};
use crate::value::{Cmd, Value};

/// What an emulated script sees: the data, at one instant, with the lock held (so a script
/// is atomic, like a Lua script in Redis).
///
/// The typed helpers cover what compare-and-act scripts need; [`call`](ScriptCtx::call)
/// runs any supported command, like `redis.call` (errors come back in band as
/// [`Value::Error`] rather than raising).
pub struct ScriptCtx<'a> {
    pub(super) state: &'a mut State,
    pub(super) now: u64,
}

impl ScriptCtx<'_> {
    /// The time the script runs at, in unix ms (constant during the script, as in Redis).
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// Runs a command like `redis.call`. `EVAL`, `EVALSHA` and `SCRIPT` are refused.
    pub fn call(&mut self, cmd: Cmd) -> Value {
        commands::run(self.state, self.now, cmd.args(), true)
    }

    /// The string at `key`; `None` when missing, expired or not a string.
    pub fn get(&mut self, key: &[u8]) -> Option<Bytes> {
        match self.state.db.lookup(key, self.now) {
            Some(e) => match &e.data {
                Data::Str(b) => Some(b.clone()),
                _ => None,
            },
            None => None,
        }
    }

    /// Sets `key` to a string, replacing whatever was there, expiring after `px_ms`
    /// milliseconds when given (no expiry otherwise).
    pub fn set(&mut self, key: &[u8], value: impl Into<Bytes>, px_ms: Option<u64>) {
        let expire_at = px_ms.map(|ms| self.now.saturating_add(ms));
        self.state.db.insert(
            Bytes::copy_from_slice(key),
            Data::Str(value.into()),
            expire_at,
        );
    }

    /// Deletes `key`; true when it existed.
    pub fn del(&mut self, key: &[u8]) -> bool {
        self.state.db.remove(key, self.now)
    }

    /// True when `key` exists.
    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.state.db.lookup(key, self.now).is_some()
    }

    /// Sets `key` to expire in `ms` milliseconds (`0` deletes it); true when it existed.
    pub fn pexpire(&mut self, key: &[u8], ms: u64) -> bool {
        let now = self.now;
        let Some(entry) = self.state.db.lookup_mut(key, now) else {
            return false;
        };
        if ms == 0 {
            self.state.db.remove(key, now);
        } else {
            entry.expire_at = Some(now.saturating_add(ms));
        }
        true
    }

    /// Milliseconds until `key` expires: `-2` missing, `-1` no expiry (like `PTTL`).
    pub fn pttl(&mut self, key: &[u8]) -> i64 {
        match self.state.db.lookup(key, self.now) {
            None => -2,
            Some(e) => match e.expire_at {
                None => -1,
                Some(at) => i64::try_from(at - self.now).unwrap_or(i64::MAX),
            },
        }
    }
}

impl fmt::Debug for ScriptCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptCtx")
            .field("now_ms", &self.now)
            .field("keys", &self.state.db.len())
            .finish()
    }
}

/// Lowercase hex SHA-1, the digest `EVALSHA` names scripts by.
pub(super) fn sha1_hex(source: &[u8]) -> String {
    use sha1::Digest;
    crate::transport::hex(&sha1::Sha1::digest(source))
}

/// `EVAL script numkeys key… arg…` / `EVALSHA sha numkeys key… arg…` (`a` is after the name).
pub(super) fn eval(st: &mut State, now: u64, a: &[Bytes], by_sha: bool) -> Value {
    let Some(numkeys) = commands::parse_i64(&a[1]) else {
        return commands::err(commands::NOT_INT);
    };
    if numkeys < 0 {
        return commands::err("ERR Number of keys can't be negative");
    }
    let numkeys = usize::try_from(numkeys).unwrap_or(usize::MAX);
    if numkeys > a.len() - 2 {
        return commands::err("ERR Number of keys can't be greater than number of args");
    }
    let keys = &a[2..2 + numkeys];
    let argv = &a[2 + numkeys..];
    let sha = if by_sha {
        String::from_utf8_lossy(&a[0]).to_ascii_lowercase()
    } else {
        let sha = sha1_hex(&a[0]);
        st.script_cache.insert(sha.clone());
        sha
    };
    if by_sha && !st.script_cache.contains(&sha) {
        return commands::err("NOSCRIPT No matching script. Please use EVAL.");
    }
    let Some(handler) = st.handlers.get(&sha).cloned() else {
        return commands::err(
            "ERR larder MemTransport: script not emulated; register it with \
             MemTransport::register_script",
        );
    };
    let mut ctx = ScriptCtx { state: st, now };
    handler(&mut ctx, keys, argv)
}

/// `SCRIPT LOAD|EXISTS|FLUSH …` (`a` is after the name).
pub(super) fn script(st: &mut State, a: &[Bytes]) -> Value {
    let sub = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
    let argc = a.len() + 1;
    match sub.as_str() {
        "load" => {
            if argc != 3 {
                return commands::wrong_args("script|load");
            }
            let sha = sha1_hex(&a[1]);
            st.script_cache.insert(sha.clone());
            Value::Bulk(Bytes::from(sha))
        }
        "exists" => {
            if argc < 3 {
                return commands::wrong_args("script|exists");
            }
            Value::Array(
                a[1..]
                    .iter()
                    .map(|sha| {
                        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
                        Value::Int(i64::from(st.script_cache.contains(&sha)))
                    })
                    .collect(),
            )
        }
        "flush" => {
            if argc > 3 {
                return commands::wrong_args("script|flush");
            }
            if argc == 3 && !commands::eq(&a[1], "async") && !commands::eq(&a[1], "sync") {
                return commands::err("ERR SCRIPT FLUSH only support SYNC|ASYNC option");
            }
            st.script_cache.clear();
            commands::ok()
        }
        _ => commands::err(&format!(
            "ERR unknown subcommand '{}'. Try SCRIPT HELP.",
            String::from_utf8_lossy(&a[0])
        )),
    }
}
