//! Which commands the gateway runs: the deny list and what a read-only token may do.

use std::collections::BTreeSet;
use std::fmt;

use larder_core::Cmd;

/// Commands denied by default: they destroy data wholesale, reconfigure or stop the server,
/// or block a shared connection. Entries are `COMMAND` or `COMMAND SUBCOMMAND`.
pub const DEFAULT_DENIED: &[&str] = &[
    "FLUSHALL",
    "FLUSHDB",
    "SWAPDB",
    "CONFIG",
    "SHUTDOWN",
    "DEBUG",
    "MONITOR",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "REPLICAOF",
    "SLAVEOF",
    "FAILOVER",
    "SYNC",
    "PSYNC",
    "MIGRATE",
    "MODULE",
    "ACL",
    "SENTINEL",
    "SCRIPT KILL",
    "SCRIPT FLUSH",
    "FUNCTION KILL",
    "FUNCTION FLUSH",
    "FUNCTION DELETE",
    "FUNCTION RESTORE",
    "CLIENT KILL",
    "CLIENT PAUSE",
    "CLIENT UNPAUSE",
    "CLIENT NO-EVICT",
    "CLUSTER RESET",
    "CLUSTER FAILOVER",
    "CLUSTER FORGET",
    "CLUSTER MEET",
    "CLUSTER ADDSLOTS",
    "CLUSTER ADDSLOTSRANGE",
    "CLUSTER DELSLOTS",
    "CLUSTER DELSLOTSRANGE",
    "CLUSTER FLUSHSLOTS",
    "CLUSTER SETSLOT",
    "CLUSTER REPLICATE",
    "LATENCY RESET",
    "SLOWLOG RESET",
    "MEMORY PURGE",
    // Blocking commands hold a connection that every other request shares.
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
];

/// Commands that change the state of the connection they run on. Connections are shared
/// by every request, so these are never run, whatever the configuration (`/multi-exec`
/// is the way to run a transaction).
const CONNECTION_STATE: &[&str] = &[
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "SELECT",
    "AUTH",
    "HELLO",
    "RESET",
    "QUIT",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "READONLY",
    "READWRITE",
    "ASKING",
    "CLIENT REPLY",
    "CLIENT SETNAME",
    "CLIENT TRACKING",
    "CLIENT CACHING",
    "CLIENT NO-TOUCH",
];

/// Commands a read-only token may run (`SCAN` and `KEYS` excluded on purpose: they walk the
/// whole keyspace).
const READ_ONLY: &[&str] = &[
    "PING",
    "ECHO",
    "TIME",
    "DBSIZE",
    "LASTSAVE",
    "GET",
    "MGET",
    "GETRANGE",
    "SUBSTR",
    "STRLEN",
    "LCS",
    "EXISTS",
    "TYPE",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "TOUCH",
    "OBJECT",
    "DUMP",
    "RANDOMKEY",
    "GETBIT",
    "BITCOUNT",
    "BITPOS",
    "BITFIELD_RO",
    "HGET",
    "HMGET",
    "HGETALL",
    "HKEYS",
    "HVALS",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "HRANDFIELD",
    "HSCAN",
    "LLEN",
    "LRANGE",
    "LINDEX",
    "LPOS",
    "SCARD",
    "SMEMBERS",
    "SISMEMBER",
    "SMISMEMBER",
    "SRANDMEMBER",
    "SINTER",
    "SINTERCARD",
    "SUNION",
    "SDIFF",
    "SSCAN",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZSCORE",
    "ZMSCORE",
    "ZRANK",
    "ZREVRANK",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZRANGEBYLEX",
    "ZREVRANGE",
    "ZREVRANGEBYSCORE",
    "ZREVRANGEBYLEX",
    "ZRANDMEMBER",
    "ZDIFF",
    "ZINTER",
    "ZINTERCARD",
    "ZUNION",
    "ZSCAN",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "PFCOUNT",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEOSEARCH",
    "GEORADIUS_RO",
    "GEORADIUSBYMEMBER_RO",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL_RO",
    "COMMAND",
    "INFO",
];

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every command not denied.
    Full,
    /// Only reads (no writes, no scripts that may write, no `SCAN`/`KEYS`).
    ReadOnly,
}

/// The command policy: a deny list (by default [`DEFAULT_DENIED`]) on top of the rules that
/// always apply (no connection-state commands; read-only tokens only read).
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    denied: BTreeSet<String>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("denied", &self.denied)
            .finish()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            denied: DEFAULT_DENIED.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

fn normalize(entry: &str) -> String {
    entry
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Policy {
    /// A policy that denies nothing beyond the rules that always apply.
    pub fn allow_all() -> Self {
        Policy {
            denied: BTreeSet::new(),
        }
    }

    /// Also denies `entry` (`"COMMAND"` or `"COMMAND SUBCOMMAND"`, any case).
    pub fn deny(&mut self, entry: &str) -> &mut Self {
        let e = normalize(entry);
        if !e.is_empty() {
            self.denied.insert(e);
        }
        self
    }

    /// Removes `entry` from the deny list (for example `"FLUSHDB"` for a test gateway).
    pub fn allow(&mut self, entry: &str) -> &mut Self {
        self.denied.remove(&normalize(entry));
        self
    }

    /// The deny list, normalized (upper case).
    pub fn denied(&self) -> impl Iterator<Item = &str> {
        self.denied.iter().map(String::as_str)
    }

    /// `Ok` when `access` may run `cmd`; otherwise the error reply to send instead, in
    /// Redis's style (`NOPERM …`).
    pub fn check(&self, cmd: &Cmd, access: Access) -> Result<(), String> {
        let name = cmd.name();
        let sub = cmd
            .args()
            .get(1)
            .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
        let full = match &sub {
            Some(s) => format!("{name} {s}"),
            None => name.clone(),
        };
        let listed = |list: &[&str]| list.iter().any(|e| *e == name || *e == full);
        if listed(CONNECTION_STATE) {
            return Err(format!(
                "NOPERM '{}' is not available over HTTP: the gateway shares its Redis \
                 connections (use /multi-exec for transactions)",
                name.to_ascii_lowercase()
            ));
        }
        if self.denied.contains(&name) || self.denied.contains(&full) {
            return Err(format!(
                "NOPERM '{}' is denied by this gateway's policy",
                if self.denied.contains(&full) {
                    full.to_ascii_lowercase()
                } else {
                    name.to_ascii_lowercase()
                }
            ));
        }
        if access == Access::ReadOnly && !listed(READ_ONLY) {
            return Err(format!(
                "NOPERM this token is read-only and cannot run '{}'",
                name.to_ascii_lowercase()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Cmd {
        Cmd::named(parts[0]).args_from(parts[1..].iter().copied())
    }

    #[test]
    fn dangerous_commands_are_denied_by_default_in_any_case() {
        let p = Policy::default();
        for c in [
            &["flushall"][..],
            &["FlushDB", "ASYNC"],
            &["config", "set", "x", "y"],
            &["script", "kill"],
            &["CLIENT", "kill", "ID", "1"],
            &["shutdown"],
            &["blpop", "q", "0"],
        ] {
            let err = p.check(&cmd(c), Access::Full).unwrap_err();
            assert!(err.starts_with("NOPERM"), "{err}");
        }
        assert!(
            p.check(&cmd(&["SCRIPT", "LOAD", "return 1"]), Access::Full)
                .is_ok()
        );
        assert!(p.check(&cmd(&["CLIENT", "ID"]), Access::Full).is_ok());
    }

    #[test]
    fn the_deny_list_is_configurable() {
        let mut p = Policy::default();
        p.allow("flushdb").deny("keys").deny("  object   freq ");
        assert!(p.check(&cmd(&["FLUSHDB"]), Access::Full).is_ok());
        assert!(p.check(&cmd(&["KEYS", "*"]), Access::Full).is_err());
        assert!(
            p.check(&cmd(&["OBJECT", "FREQ", "k"]), Access::Full)
                .is_err()
        );
        assert!(
            p.check(&cmd(&["OBJECT", "ENCODING", "k"]), Access::Full)
                .is_ok()
        );
        assert!(p.denied().any(|d| d == "OBJECT FREQ"));
    }

    #[test]
    fn connection_state_commands_are_never_allowed() {
        let p = Policy::allow_all();
        for c in [
            &["MULTI"][..],
            &["select", "2"],
            &["AUTH", "x"],
            &["subscribe", "c"],
        ] {
            assert!(p.check(&cmd(c), Access::Full).is_err(), "{c:?}");
        }
    }

    #[test]
    fn read_only_tokens_only_read_and_never_scan() {
        let p = Policy::default();
        for c in [
            &["GET", "k"][..],
            &["mget", "a", "b"],
            &["PTTL", "k"],
            &["EVALSHA_RO", "x", "0"],
        ] {
            assert!(p.check(&cmd(c), Access::ReadOnly).is_ok(), "{c:?}");
        }
        for c in [
            &["SET", "k", "v"][..],
            &["DEL", "k"],
            &["INCRBY", "k", "1"],
            &["EVAL", "return 1", "0"],
            &["SCAN", "0"],
            &["KEYS", "*"],
            &["UNLINK", "k"],
        ] {
            let err = p.check(&cmd(c), Access::ReadOnly).unwrap_err();
            assert!(err.contains("read-only"), "{err}");
        }
    }
}
