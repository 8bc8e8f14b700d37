//! Which commands the gateway runs: name validation, the rules that always apply, the deny
//! list, and what a read-only token may do.
//!
//! Every command passes these checks in order; the first that fails refuses it:
//!
//! 1. **Names.** The command name — and the subcommand of a container command (`CLIENT`,
//!    `CONFIG`, `SCRIPT`, …, [`CONTAINERS`]) — must be 1 to [`MAX_NAME_LEN`] ASCII letters,
//!    digits, `_`, `-` or `.`. Redis compares command names only up to a NUL byte, so
//!    `"CONFIG\0x"` would reach `CONFIG` while matching no rule here; anything outside the
//!    alphabet is a [`Refusal::Malformed`] and the whole request is an HTTP 400.
//! 2. **Never run** ([`NEVER_RUN`]): commands that change the state of the connection they
//!    run on, or take it over (`MULTI`, `SELECT`, `CLIENT REPLY`, `SCRIPT DEBUG`,
//!    `MONITOR`, …). Connections are shared by every request.
//! 3. **Never run, blocking** ([`BLOCKING`], and `XREAD`/`XREADGROUP` with `BLOCK`): they
//!    hold a shared connection while they wait.
//! 4. **The deny list**, configurable, by default [`DEFAULT_DENIED`].
//! 5. **Read-only tokens** run only [`READ_ONLY`]; with
//!    [`Policy::allow_read_only_scripts`] also [`READ_ONLY_SCRIPTS`]. They never run
//!    `EVAL_RO`: arbitrary Lua could loop (stalling Redis for every client: `SCRIPT KILL`
//!    is denied), fill the script cache, or call commands they may not run directly.
//! 6. **Argument caps**, for every token: random counts ([`MAX_RANDOM_COUNT`]), `SCAN`
//!    counts ([`MAX_SCAN_COUNT`]), `LIMIT` offsets ([`MAX_LIMIT_OFFSET`]) and globs
//!    ([`MAX_MATCH_LEN`]); for read-only tokens, nothing that multiplies a reply past the
//!    data it names (a key named twice, a negative random count, a `MATCH` on a
//!    collection scan).
//!
//! [`reference_table`] renders these lists as the Markdown table in docs/SECURITY.md; a test
//! keeps the two identical.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use larder_core::Cmd;

/// The longest command or subcommand name accepted (Redis's longest is under 40 bytes).
pub const MAX_NAME_LEN: usize = 64;

/// Commands whose second argument is a subcommand that Redis looks up by name (Redis 7.0 and
/// 7.2). Their subcommand is validated like a command name.
pub const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Commands never run, whatever the configuration: they change the state of the connection
/// they run on, or turn it into something else, and every request shares the gateway's
/// connections (`/multi-exec` is the way to run a transaction).
pub const NEVER_RUN: &[&str] = &[
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
    "MONITOR",
    "SYNC",
    "PSYNC",
    "REPLCONF",
    "READONLY",
    "READWRITE",
    "ASKING",
    "CLIENT REPLY",
    "CLIENT SETNAME",
    "CLIENT SETINFO",
    "CLIENT TRACKING",
    "CLIENT CACHING",
    "CLIENT NO-EVICT",
    "CLIENT NO-TOUCH",
    "SCRIPT DEBUG",
];

/// Commands never run because they block: they hold a shared connection while they wait.
/// `XREAD` and `XREADGROUP` are refused when they carry a `BLOCK` option.
pub const BLOCKING: &[&str] = &[
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
    "CLIENT PAUSE",
];

/// Commands denied by default: they destroy data wholesale, reconfigure or stop the server,
/// or cost Redis far more than the request does. Entries are `COMMAND` or
/// `COMMAND SUBCOMMAND`; [`Policy::allow`] removes one.
pub const DEFAULT_DENIED: &[&str] = &[
    "FLUSHALL",
    "FLUSHDB",
    "SWAPDB",
    "CONFIG",
    "SHUTDOWN",
    "DEBUG",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "REPLICAOF",
    "SLAVEOF",
    "FAILOVER",
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
    "CLIENT UNPAUSE",
    "CLIENT UNBLOCK",
    // Other applications' connections and the commands they run.
    "CLIENT LIST",
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
    "CLUSTER BUMPEPOCH",
    "CLUSTER SET-CONFIG-EPOCH",
    "CLUSTER SAVECONFIG",
    "LATENCY RESET",
    "SLOWLOG RESET",
    "MEMORY PURGE",
    // Debugging aids that cost Redis CPU (PFSELFTEST: about 0.4 s a call).
    "PFSELFTEST",
    "PFDEBUG",
    // Quadratic: Redis allocates (len(a)+1)·(len(b)+1) cells, 10 GB for two 50 KB values.
    "LCS",
];

/// Commands a read-only token may run. Excluded on purpose: `SCAN` and `KEYS` (they walk the
/// whole keyspace), `LCS` (quadratic), the set algebra (`SUNION`, `SINTER`, `SDIFF`,
/// `ZUNION`, …: one key repeated 20 000 times costs Redis seconds), `BITCOUNT`, `BITPOS` and
/// `LPOS` (a scan of the whole value: 46 ms for 64 MB, and a request can repeat it), the
/// geo searches (a radius of 20 000 km walks the whole set for a reply of one), `DUMP`
/// (serialising 64 MB takes Redis 24–45 ms),
/// `PFCOUNT` (it writes its cached cardinality back) and `COMMAND` (hundreds of KB per call).
pub const READ_ONLY: &[&str] = &[
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
    "EXISTS",
    "TYPE",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "TOUCH",
    "OBJECT",
    "RANDOMKEY",
    "GETBIT",
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
    "SCARD",
    "SMEMBERS",
    "SISMEMBER",
    "SMISMEMBER",
    "SRANDMEMBER",
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
    "ZSCAN",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "XREAD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "INFO",
];

/// What [`Policy::allow_read_only_scripts`] adds for read-only tokens: scripts and functions
/// that a full token (the operator's code) loaded or ran (`EVAL` caches its script too).
/// `EVAL_RO` (code sent by the token holder) is never among them.
pub const READ_ONLY_SCRIPTS: &[&str] = &["EVALSHA_RO", "FCALL_RO"];

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every command not denied.
    Full,
    /// Only reads (no writes, no scripts of its own, no `SCAN`/`KEYS`).
    ReadOnly,
}

/// Why the policy refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The command or subcommand name has bytes no Redis command name has (a NUL byte, a
    /// space, non-ASCII, …) or is too long. The gateway refuses the whole request with
    /// HTTP 400: Redis could read such a name as another command.
    Malformed(String),
    /// The policy does not let this token run this command (`NOPERM …`, in band: in a
    /// pipeline the other commands still run).
    Denied(String),
}

impl Refusal {
    /// The error text, in Redis's style (`ERR …` or `NOPERM …`).
    pub fn message(&self) -> &str {
        match self {
            Refusal::Malformed(m) | Refusal::Denied(m) => m,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// The command policy: a deny list (by default [`DEFAULT_DENIED`]) on top of the rules that
/// always apply (valid names; no connection-state or blocking commands; read-only tokens
/// only read). See the [module documentation](self) for the order of the checks.
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    denied: BTreeSet<String>,
    read_only_scripts: bool,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("denied", &self.denied)
            .field("read_only_scripts", &self.read_only_scripts)
            .finish()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            denied: DEFAULT_DENIED.iter().map(|s| (*s).to_owned()).collect(),
            read_only_scripts: false,
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

/// Whether `name` is spelled like a Redis command or subcommand name.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `name` as it can be shown in an error: escaped, at most 80 characters.
fn shown(name: &[u8]) -> String {
    let mut s: String = name.escape_ascii().to_string();
    if s.len() > 80 {
        let mut end = 77;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn malformed(what: &str, name: &[u8]) -> Refusal {
    Refusal::Malformed(format!(
        "ERR invalid {what} name '{}': names are 1 to {MAX_NAME_LEN} ASCII letters, digits, \
         '_', '-' or '.' (Redis reads a name only up to a NUL byte, so anything else could run \
         another command)",
        shown(name)
    ))
}

/// Whether `cmd` is on the read-only allow list (so cannot write). Everything else may.
pub fn is_read_only_command(cmd: &Cmd) -> bool {
    let name = &cmd.args()[0];
    READ_ONLY
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r.as_bytes()))
}

/// Whether `arg` is the keyword `kw` as Redis reads options: without case, and only up to
/// a NUL byte (`strcasecmp`), so `"BLOCK\0x"` is `BLOCK`.
pub(crate) fn is_keyword(arg: &[u8], kw: &[u8]) -> bool {
    // Only the keyword's length is looked at: arguments can be megabytes of value.
    arg.len() >= kw.len()
        && arg[..kw.len()].eq_ignore_ascii_case(kw)
        && arg.get(kw.len()).is_none_or(|&b| b == 0)
}

/// Whether `XREAD`/`XREADGROUP` carry a `BLOCK` option, read the way Redis reads their
/// options (in any order before `STREAMS`: `BLOCK ms`, `COUNT n`, `GROUP g c`, `NOACK`).
fn stream_read_blocks(name: &str, args: &[bytes::Bytes]) -> bool {
    if name != "XREAD" && name != "XREADGROUP" {
        return false;
    }
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let more = args.len() - i - 1;
        if is_keyword(arg, b"BLOCK") {
            return true;
        } else if is_keyword(arg, b"COUNT") && more >= 1 {
            i += 2;
        } else if is_keyword(arg, b"GROUP") && more >= 2 {
            i += 3;
        } else if is_keyword(arg, b"NOACK") {
            i += 1;
        } else {
            // STREAMS ends the options; anything else is a syntax error to Redis.
            return false;
        }
    }
    false
}

/// The largest count `SRANDMEMBER`/`HRANDFIELD`/`ZRANDMEMBER` may ask for, either sign:
/// Redis builds the whole reply before sending any of it, so one 1 KB member asked for
/// 5 000 000 times costs Redis 5 GB, and 400 000 distinct members of a large set seconds.
pub const MAX_RANDOM_COUNT: u64 = 10_000;

/// The largest `COUNT` hint of `SCAN`/`SSCAN`/`HSCAN`/`ZSCAN`: with a `MATCH` that matches
/// nothing, Redis walks that many entries for a reply of two elements (4.5 s for 10⁸).
pub const MAX_SCAN_COUNT: u64 = 1000;

/// The largest `LIMIT offset`: Redis walks the skipped entries (67 ms for 10⁶ in a sorted
/// set) for a reply of one.
pub const MAX_LIMIT_OFFSET: u64 = 10_000;

/// The longest glob a `MATCH` (or `KEYS`) may give, and the most of `*`, `?` and `[` in it:
/// Redis matches the glob against every element it walks, re-reading a `[…]` class at every
/// position a `*` lets it try (one 1 MB `*[aaa…]` kept Redis busy 12.6 s on one page).
pub const MAX_MATCH_LEN: usize = 64;
/// See [`MAX_MATCH_LEN`].
pub const MAX_MATCH_WILDCARDS: usize = 4;

/// Read-only commands whose reply is small whatever the data (a number, a type, a flag, or
/// as long as the request itself). In a read-only pipeline every other command — one whose
/// reply grows with the data (`GET`, `HGETALL`, `LRANGE`, …) — goes to Redis in a part of its
/// own, so Redis builds at most one such reply past the reply limit, however the request
/// orders its commands.
pub const SMALL_REPLY: &[&str] = &[
    "PING",
    "ECHO",
    "TIME",
    "DBSIZE",
    "LASTSAVE",
    "EXISTS",
    "TYPE",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "TOUCH",
    "STRLEN",
    "GETBIT",
    "HEXISTS",
    "HLEN",
    "HSTRLEN",
    "LLEN",
    "SCARD",
    "SISMEMBER",
    "SMISMEMBER",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZSCORE",
    "ZMSCORE",
    "ZRANK",
    "ZREVRANK",
    "XLEN",
    "GEODIST",
];

/// Whether `cmd`'s reply may grow with the data it reads (see [`SMALL_REPLY`]).
pub(crate) fn reply_grows_with_data(cmd: &Cmd) -> bool {
    !named(cmd, SMALL_REPLY)
}

fn named(cmd: &Cmd, list: &[&str]) -> bool {
    let name = &cmd.args()[0];
    list.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The count of `SRANDMEMBER`/`HRANDFIELD`/`ZRANDMEMBER key count`, when there is one that
/// Redis would read as a number (a negative count asks for repeats).
pub(crate) fn random_count(cmd: &Cmd) -> Option<i64> {
    if !named(cmd, &["SRANDMEMBER", "HRANDFIELD", "ZRANDMEMBER"]) {
        return None;
    }
    number(cmd.args().get(2)?)
}

fn number(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn glob_too_costly(pattern: &[u8]) -> bool {
    let wildcards = pattern
        .iter()
        .filter(|&&c| matches!(c, b'*' | b'?' | b'['))
        .count();
    pattern.len() > MAX_MATCH_LEN || wildcards > MAX_MATCH_WILDCARDS
}

/// The refusal for an argument whose cost to Redis grows with it rather than with the reply,
/// past its cap (the same caps for every token). Keywords are read as Redis reads them.
fn argument_over_cap(cmd: &Cmd) -> Option<String> {
    let args = cmd.args();
    if random_count(cmd).is_some_and(|n| n.unsigned_abs() > MAX_RANDOM_COUNT) {
        return Some(format!(
            "ERR a count may ask for at most {MAX_RANDOM_COUNT} members through this gateway \
             (Redis builds the whole reply at once)"
        ));
    }
    let scan = named(cmd, &["SCAN", "SSCAN", "HSCAN", "ZSCAN"]);
    let keys = named(cmd, &["KEYS"]);
    for (i, arg) in args.iter().enumerate().skip(1) {
        let next = args.get(i + 1);
        let pattern = if keys {
            (i == 1).then_some(arg)
        } else if scan && is_keyword(arg, b"MATCH") {
            next
        } else {
            None
        };
        if pattern.is_some_and(|p| glob_too_costly(p)) {
            return Some(format!(
                "ERR a MATCH pattern may be at most {MAX_MATCH_LEN} bytes with at most \
                 {MAX_MATCH_WILDCARDS} of '*', '?' and '[' through this gateway (Redis \
                 matches it against every element it walks)"
            ));
        }
        let value = next.and_then(|n| number(n)).map(i64::unsigned_abs);
        if scan && is_keyword(arg, b"COUNT") && value.is_some_and(|n| n > MAX_SCAN_COUNT) {
            return Some(format!(
                "ERR a SCAN COUNT may be at most {MAX_SCAN_COUNT} through this gateway: page \
                 with the cursor instead"
            ));
        }
        if is_keyword(arg, b"LIMIT") && value.is_some_and(|n| n > MAX_LIMIT_OFFSET) {
            return Some(format!(
                "ERR a LIMIT offset may be at most {MAX_LIMIT_OFFSET} through this gateway \
                 (Redis walks every skipped entry)"
            ));
        }
    }
    None
}

/// For a read-only token, the refusal for what multiplies a reply or the work behind it past
/// the data named: a key (or field) named twice where every mention adds its value (`MGET k
/// k`, `HMGET h f f`, `XREAD … STREAMS s s`: 20 000 mentions of one stream had Redis
/// OOM-killed at 24 GB), repeated members (a negative random count: a 1 MB field asked for
/// 3 000 times cost 3.35 GB), and a `MATCH` glob on `SSCAN`/`HSCAN`/`ZSCAN` (matched against
/// every byte of every member walked: 1.5 s a page of 100 KB members).
fn read_only_multiplier(cmd: &Cmd) -> Option<&'static str> {
    let args = cmd.args();
    if random_count(cmd).is_some_and(|n| n < 0) {
        return Some(
            "NOPERM this token is read-only and cannot ask for repeated members (a negative \
             count): each repeat adds the whole member to the reply",
        );
    }
    if named(cmd, &["SSCAN", "HSCAN", "ZSCAN"]) && args.iter().any(|a| is_keyword(a, b"MATCH")) {
        return Some(
            "NOPERM this token is read-only and cannot give SSCAN/HSCAN/ZSCAN a MATCH \
             pattern: Redis matches it against every byte it walks; filter the page instead",
        );
    }
    let names: &[bytes::Bytes] = if named(cmd, &["MGET"]) {
        &args[1..]
    } else if named(cmd, &["HMGET"]) {
        args.get(2..).unwrap_or(&[])
    } else if named(cmd, &["XREAD"]) {
        match args.iter().position(|a| is_keyword(a, b"STREAMS")) {
            Some(at) => {
                let rest = &args[at + 1..];
                &rest[..rest.len() / 2]
            }
            None => &[],
        }
    } else {
        return None;
    };
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    if names.iter().all(|n| seen.insert(n)) {
        return None;
    }
    Some(
        "NOPERM this token is read-only and cannot name the same key or field twice in one \
         command (each mention would add the whole value to the reply)",
    )
}

impl Policy {
    /// A policy that denies nothing beyond the rules that always apply.
    pub fn allow_all() -> Self {
        Policy {
            denied: BTreeSet::new(),
            read_only_scripts: false,
        }
    }

    /// Also denies `entry` (`"COMMAND"`, or `"COMMAND SUBCOMMAND"` for a command of
    /// [`CONTAINERS`]; any case).
    pub fn deny(&mut self, entry: &str) -> &mut Self {
        let e = normalize(entry);
        if !e.is_empty() {
            self.denied.insert(e);
        }
        self
    }

    /// Removes `entry` from the deny list (for example `"FLUSHDB"` for a test gateway).
    /// The rules that always apply ([`NEVER_RUN`], [`BLOCKING`], names) stay.
    pub fn allow(&mut self, entry: &str) -> &mut Self {
        self.denied.remove(&normalize(entry));
        self
    }

    /// Lets read-only tokens run [`READ_ONLY_SCRIPTS`] (`EVALSHA_RO`, `FCALL_RO`: scripts
    /// and functions a full token loaded). Off by default. Only turn it on when every
    /// loaded script and function is safe for read-only callers to run with any
    /// arguments: Redis cannot stop a read-only script that loops until its
    /// `busy-reply-threshold`, and then only `SCRIPT KILL`, which the gateway denies.
    pub fn allow_read_only_scripts(&mut self, allow: bool) -> &mut Self {
        self.read_only_scripts = allow;
        self
    }

    /// The deny list, normalized (upper case).
    pub fn denied(&self) -> impl Iterator<Item = &str> {
        self.denied.iter().map(String::as_str)
    }

    /// `Ok` when `access` may run `cmd`; otherwise why not, with the error text to answer.
    ///
    /// # Errors
    ///
    /// [`Refusal::Malformed`] for a name that is not a Redis command name;
    /// [`Refusal::Denied`] for everything the policy does not allow.
    pub fn check(&self, cmd: &Cmd, access: Access) -> Result<(), Refusal> {
        let args = cmd.args();
        if !is_valid_name(&args[0]) {
            return Err(malformed("command", &args[0]));
        }
        // Valid names are ASCII.
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let container = CONTAINERS.contains(&name.as_str());
        if container
            && let Some(sub) = args.get(1)
            && !is_valid_name(sub)
        {
            return Err(malformed("subcommand", sub));
        }
        // `COMMAND SUBCOMMAND` entries name container commands only (the second argument of
        // any other command is data, possibly megabytes of it).
        let full = match args.get(1) {
            Some(s) if container => {
                format!("{name} {}", String::from_utf8_lossy(s).to_ascii_uppercase())
            }
            _ => name.clone(),
        };
        let listed = |list: &[&str]| list.iter().any(|e| *e == name || *e == full);
        let lower = |s: &str| s.to_ascii_lowercase();
        let shown_name = |list: &[&str]| {
            if container && list.contains(&full.as_str()) {
                lower(&full)
            } else {
                lower(&name)
            }
        };
        if listed(NEVER_RUN) {
            return Err(Refusal::Denied(format!(
                "NOPERM '{}' is not available over HTTP: the gateway shares its Redis \
                 connections (use /multi-exec for transactions)",
                shown_name(NEVER_RUN)
            )));
        }
        if listed(BLOCKING) || stream_read_blocks(&name, args) {
            return Err(Refusal::Denied(format!(
                "NOPERM '{}' blocks, and the gateway shares its Redis connections: blocking \
                 commands and BLOCK options are never run over HTTP",
                shown_name(BLOCKING)
            )));
        }
        if self.denied.contains(&name) || self.denied.contains(&full) {
            return Err(Refusal::Denied(format!(
                "NOPERM '{}' is denied by this gateway's policy",
                if self.denied.contains(&full) {
                    lower(&full)
                } else {
                    lower(&name)
                }
            )));
        }
        if access == Access::ReadOnly
            && !listed(READ_ONLY)
            && !(self.read_only_scripts && listed(READ_ONLY_SCRIPTS))
        {
            let why = if name.starts_with("EVAL") || name.starts_with("FCALL") {
                " (scripts are off for read-only tokens; the operator can allow EVALSHA_RO and \
                 FCALL_RO with --read-only-scripts)"
            } else {
                ""
            };
            return Err(Refusal::Denied(format!(
                "NOPERM this token is read-only and cannot run '{}'{why}",
                lower(&name)
            )));
        }
        if let Some(refusal) = argument_over_cap(cmd) {
            return Err(Refusal::Denied(refusal));
        }
        if access == Access::ReadOnly
            && let Some(refusal) = read_only_multiplier(cmd)
        {
            return Err(Refusal::Denied(refusal.to_owned()));
        }
        Ok(())
    }
}

impl Policy {
    /// `Ok` when any token may open a subscription stream to `name` (a channel, or a glob
    /// pattern when `pattern`): `SUBSCRIBE`/`PSUBSCRIBE` not on the deny list, and a pattern
    /// within the caps of `MATCH` globs (Redis matches every pattern subscribed against the
    /// channel of every `PUBLISH`). Read-only tokens may subscribe.
    ///
    /// # Errors
    ///
    /// [`Refusal::Denied`] with the error text to answer.
    pub fn check_subscribe(&self, pattern: bool, name: &[u8]) -> Result<(), Refusal> {
        let command = if pattern { "PSUBSCRIBE" } else { "SUBSCRIBE" };
        if self.denied.contains(command) {
            return Err(Refusal::Denied(format!(
                "NOPERM '{}' is denied by this gateway's policy",
                command.to_ascii_lowercase()
            )));
        }
        if pattern && glob_too_costly(name) {
            return Err(Refusal::Denied(format!(
                "ERR a pattern may be at most {MAX_MATCH_LEN} bytes with at most \
                 {MAX_MATCH_WILDCARDS} wildcards through this gateway (Redis matches it \
                 against every message published)"
            )));
        }
        Ok(())
    }
}

/// The policy's rules as the Markdown table in docs/SECURITY.md, generated from the lists
/// above so the documentation cannot drift from the code.
pub fn reference_table() -> String {
    fn row(out: &mut String, rule: &str, applies: &str, list: &[&str]) {
        let mut items: Vec<&str> = list.to_vec();
        items.sort_unstable();
        let items: Vec<String> = items.iter().map(|c| format!("`{c}`")).collect();
        let _ = writeln!(out, "| {rule} | {applies} | {} |", items.join(", "));
    }
    let mut out = String::new();
    out.push_str("| rule | applies to | commands |\n| --- | --- | --- |\n");
    let _ = writeln!(
        out,
        "| names | every token, every endpoint | a command name, and the subcommand of {}, \
         must be 1–{MAX_NAME_LEN} bytes of `A–Z a–z 0–9 _ - .`; otherwise the whole request \
         is **400** |",
        CONTAINERS
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    row(
        &mut out,
        "never run: connection state",
        "every token, whatever the configuration",
        NEVER_RUN,
    );
    let mut blocking: Vec<&str> = BLOCKING.to_vec();
    blocking.extend(["XREAD … BLOCK", "XREADGROUP … BLOCK"]);
    row(
        &mut out,
        "never run: blocking",
        "every token, whatever the configuration",
        &blocking,
    );
    row(
        &mut out,
        "denied by default",
        "every token; `--allow CMD` / `Policy::allow` removes one, `--deny CMD` adds",
        DEFAULT_DENIED,
    );
    row(
        &mut out,
        "read-only allow list",
        "read-only tokens run these and nothing else",
        READ_ONLY,
    );
    let _ = writeln!(
        out,
        "| read-only transactions | read-only tokens | `/multi-exec` is refused whole: Redis runs \
         a transaction to its end, however long |"
    );
    let _ = writeln!(
        out,
        "| argument caps | every token | `SRANDMEMBER`/`HRANDFIELD`/`ZRANDMEMBER` count ≤ \
         {MAX_RANDOM_COUNT} either sign; `SCAN`/`SSCAN`/`HSCAN`/`ZSCAN` `COUNT` ≤ \
         {MAX_SCAN_COUNT}; `LIMIT` offset ≤ {MAX_LIMIT_OFFSET}; `MATCH`/`KEYS` glob ≤ \
         {MAX_MATCH_LEN} bytes with ≤ {MAX_MATCH_WILDCARDS} of `*` `?` `[` |"
    );
    let _ = writeln!(
        out,
        "| read-only multipliers | read-only tokens | no key or field named twice in `MGET`, \
         `HMGET`, `XREAD`; no negative random count; no `MATCH` on `SSCAN`/`HSCAN`/`ZSCAN` |"
    );
    row(
        &mut out,
        "read-only scripts (off by default)",
        "read-only tokens, with `--read-only-scripts` / `Policy::allow_read_only_scripts`; \
         `EVAL_RO` never",
        READ_ONLY_SCRIPTS,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Cmd {
        Cmd::named(parts[0]).args_from(parts[1..].iter().copied())
    }

    fn raw(parts: &[&[u8]]) -> Cmd {
        Cmd::from_parts(
            parts
                .iter()
                .map(|p| bytes::Bytes::copy_from_slice(p))
                .collect(),
        )
        .unwrap()
    }

    fn denied(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Denied(m)) => m,
            other => panic!("expected a NOPERM refusal, got {other:?}"),
        }
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
            &["LCS", "a", "b"],
        ] {
            let err = denied(p.check(&cmd(c), Access::Full));
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
    fn connection_state_and_blocking_commands_are_never_allowed() {
        let mut p = Policy::allow_all();
        for entry in NEVER_RUN.iter().chain(BLOCKING) {
            p.allow(entry);
        }
        for c in [
            &["MULTI"][..],
            &["select", "2"],
            &["AUTH", "x"],
            &["subscribe", "c"],
            &["script", "debug", "yes"],
            &["client", "reply", "skip"],
            &["monitor"],
            &["blpop", "q", "0"],
            &["wait", "1", "0"],
            &["client", "pause", "100"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
            &["xread", "count", "1", "block", "10", "streams", "s", "0"],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">",
            ],
        ] {
            let err = denied(p.check(&cmd(c), Access::Full));
            assert!(err.starts_with("NOPERM"), "{c:?}: {err}");
        }
        // Redis reads options in any order and only up to a NUL byte.
        let blocking_reads: [&[&[u8]]; 5] = [
            &[b"XREAD", b"BLOCK\0", b"0", b"STREAMS", b"s", b"$"],
            &[b"xread", b"bLoCk\0junk", b"0", b"STREAMS", b"s", b"$"],
            &[
                b"XREADGROUP",
                b"BLOCK",
                b"0",
                b"GROUP",
                b"g",
                b"c",
                b"STREAMS",
                b"s",
                b">",
            ],
            &[
                b"XREADGROUP",
                b"NOACK",
                b"BLOCK",
                b"0",
                b"GROUP",
                b"g",
                b"c",
                b"STREAMS",
                b"s",
            ],
            &[
                b"XREADGROUP",
                b"GROUP",
                b"g",
                b"c",
                b"COUNT",
                b"1",
                b"BLOCK\0",
                b"0",
                b"STREAMS",
            ],
        ];
        for c in blocking_reads {
            let err = denied(p.check(&raw(c), Access::Full));
            assert!(err.contains("blocks"), "{c:?}: {err}");
        }
        // BLOCK as a value (a count, a stream, a group or consumer name) is not the option.
        for c in [
            &["XREAD", "STREAMS", "BLOCK", "0"][..],
            &["XREAD", "COUNT", "BLOCK", "STREAMS", "s", "0"],
            &["XREADGROUP", "GROUP", "BLOCK", "BLOCK", "STREAMS", "s", ">"],
        ] {
            assert!(p.check(&cmd(c), Access::Full).is_ok(), "{c:?}");
        }
    }

    #[test]
    fn names_with_bytes_redis_names_never_have_are_malformed() {
        let p = Policy::allow_all();
        for c in [
            &[&b"CONFIG\0x"[..], b"SET", b"maxmemory", b"1"][..],
            &[b"FLUSHALL\0"],
            &[b"\0"],
            &[b"GET ", b"k"],
            &[b"G\xc3\x89T", b"k"],
            &[b"CLIENT", b"REPLY\0x", b"SKIP"],
            &[b"SCRIPT", b"FLUSH\0"],
            &[b"client", b"kill\x00", b"ID", b"1"],
            &[b"CLIENT", b""],
            &[&[b'A'; MAX_NAME_LEN + 1][..]],
        ] {
            match p.check(&raw(c), Access::Full) {
                Err(Refusal::Malformed(m)) => {
                    assert!(m.starts_with("ERR invalid"), "{m}");
                    assert!(!m.contains('\0'), "the NUL is shown escaped: {m}");
                }
                other => panic!("{c:?}: {other:?}"),
            }
        }
        // A key or value argument may hold any byte; only names are checked.
        assert!(
            p.check(&raw(&[b"SET", b"k\0\xff", b"v\0"]), Access::Full)
                .is_ok()
        );
        assert!(
            p.check(&raw(&[b"OBJECT", b"ENCODING", b"k\0"]), Access::Full)
                .is_ok()
        );
        assert!(p.check(&cmd(&["JSON.GET", "k"]), Access::Full).is_ok());
    }

    #[test]
    fn read_only_tokens_only_read_never_scan_and_run_no_script_of_their_own() {
        let mut p = Policy::default();
        for c in [
            &["GET", "k"][..],
            &["mget", "a", "b"],
            &["PTTL", "k"],
            &["XREAD", "STREAMS", "s", "0"],
        ] {
            assert!(p.check(&cmd(c), Access::ReadOnly).is_ok(), "{c:?}");
        }
        for c in [
            &["SET", "k", "v"][..],
            &["DEL", "k"],
            &["INCRBY", "k", "1"],
            &["EVAL", "return 1", "0"],
            &["EVAL_RO", "while true do end", "0"],
            &["EVALSHA_RO", "x", "0"],
            &["FCALL_RO", "f", "0"],
            &["SCAN", "0"],
            &["KEYS", "*"],
            &["UNLINK", "k"],
        ] {
            let err = denied(p.check(&cmd(c), Access::ReadOnly));
            assert!(err.contains("read-only"), "{err}");
        }
        p.allow_read_only_scripts(true);
        assert!(
            p.check(&cmd(&["EVALSHA_RO", "x", "0"]), Access::ReadOnly)
                .is_ok()
        );
        assert!(
            p.check(&cmd(&["FCALL_RO", "f", "0"]), Access::ReadOnly)
                .is_ok()
        );
        assert!(
            p.check(&cmd(&["EVAL_RO", "return 1", "0"]), Access::ReadOnly)
                .is_err(),
            "EVAL_RO stays off for read-only tokens"
        );
        assert!(
            p.check(&cmd(&["EVAL_RO", "return 1", "0"]), Access::Full)
                .is_ok()
        );
    }

    /// docs/SECURITY.md holds exactly `reference_table()` between its markers. Run with
    /// `LARDER_BLESS=1` to rewrite the document after changing a list.
    #[test]
    fn docs_security_md_holds_the_generated_policy_table() {
        const BEGIN: &str = "<!-- policy-table:begin -->\n";
        const END: &str = "<!-- policy-table:end -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SECURITY.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let start = doc.find(BEGIN).expect("the begin marker") + BEGIN.len();
        let end = doc.find(END).expect("the end marker");
        let table = reference_table();
        if std::env::var_os("LARDER_BLESS").is_some() {
            let updated = format!("{}{table}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert_eq!(
            &doc[start..end],
            table,
            "docs/SECURITY.md's policy table is out of date: run \
             LARDER_BLESS=1 cargo test -p larder-native --lib docs_security_md"
        );
    }

    #[test]
    fn small_replies_are_read_only_commands_and_keywords_stop_at_a_nul() {
        for name in SMALL_REPLY {
            assert!(READ_ONLY.contains(name), "{name}");
        }
        assert!(is_keyword(b"count", b"COUNT"));
        assert!(is_keyword(b"COUNT\0anything", b"COUNT"));
        assert!(!is_keyword(b"COUNTS", b"COUNT"));
        assert!(!is_keyword(b"COUN", b"COUNT"));
    }

    #[test]
    fn the_reference_table_lists_every_rule() {
        let table = reference_table();
        for entry in NEVER_RUN
            .iter()
            .chain(BLOCKING)
            .chain(DEFAULT_DENIED)
            .chain(READ_ONLY)
            .chain(READ_ONLY_SCRIPTS)
            .chain(CONTAINERS)
        {
            assert!(table.contains(&format!("`{entry}`")), "{entry}");
        }
    }
}
