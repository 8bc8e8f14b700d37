//! Redis Cluster slot planning: which slot each command touches, how multi-key commands are
//! split per slot, and how the replies are put back together in the caller's order.
//!
//! redis-rs rejects a pipeline whose commands cross slots, so the cluster transport runs one
//! pipeline per slot (concurrently) and reassembles. Multi-key commands (`MGET`, `MSET`,
//! `DEL`, `UNLINK`, `EXISTS`, `TOUCH`) are split into one command per slot; commands of one
//! slot keep their relative order, so `SET k` followed by `GET k` still reads the write.

use std::collections::BTreeMap;

use larder_core::{Cmd, ErrorKind, TransportError, Value};

/// Number of hash slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with (the `crc16` crate redis-rs
/// uses too).
fn crc16(data: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(data)
}

/// The hash slot of a key, honouring `{hash tags}` exactly as Redis does.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

/// How the keys of a command are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// No key: the cluster client routes it (random node, or every master).
    Keyless,
    /// One key at this argument index (the name is index 0).
    KeyAt(usize),
    /// `EVAL`-like: the number of keys at index 2, keys from index 3.
    Script,
    /// Every argument is a key; replies are gathered in key order (`MGET`).
    GatherKeys,
    /// Every argument is a key; integer replies are added up (`DEL`, `UNLINK`, `EXISTS`,
    /// `TOUCH`).
    SumKeys,
    /// Key/value pairs; every part must answer `OK` (`MSET`).
    Pairs,
}

fn layout(name: &str) -> Layout {
    match name {
        "MGET" => Layout::GatherKeys,
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => Layout::SumKeys,
        "MSET" => Layout::Pairs,
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => Layout::Script,
        "OBJECT" | "MEMORY" | "BITOP" => Layout::KeyAt(2),
        "PING" | "ECHO" | "INFO" | "DBSIZE" | "SCAN" | "KEYS" | "RANDOMKEY" | "PUBLISH"
        | "SCRIPT" | "FUNCTION" | "FLUSHDB" | "FLUSHALL" | "CLUSTER" | "CONFIG" | "TIME"
        | "ROLE" | "CLIENT" | "COMMAND" | "MULTI" | "EXEC" | "DISCARD" | "WAIT" | "HELLO"
        | "AUTH" | "SELECT" | "SWAPDB" | "LASTSAVE" | "SAVE" | "BGSAVE" | "BGREWRITEAOF"
        | "DEBUG" | "SLOWLOG" | "LATENCY" | "MONITOR" | "READONLY" | "READWRITE" | "ACL"
        | "MODULE" | "SHUTDOWN" | "QUIT" | "RESET" | "FAILOVER" | "REPLICAOF" | "SLAVEOF"
        | "LOLWUT" | "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PUBSUB" => {
            Layout::Keyless
        }
        _ => Layout::KeyAt(1),
    }
}

/// Whether `cmd` runs a script or function (`EVAL`, `EVALSHA`, `FCALL` and their `_RO`
/// forms), whose error replies are the script's to choose.
pub(crate) fn is_script(cmd: &Cmd) -> bool {
    layout(&cmd.name()) == Layout::Script
}

/// The slot a (non-split) command must run on, or `None` when it names no key.
pub(crate) fn command_slot(cmd: &Cmd) -> Option<u16> {
    let args = cmd.args();
    match layout(&cmd.name()) {
        Layout::Keyless => None,
        Layout::KeyAt(i) => args.get(i).map(|k| key_slot(k)),
        Layout::Script => {
            let numkeys = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            if numkeys == 0 {
                None
            } else {
                args.get(3).map(|k| key_slot(k))
            }
        }
        Layout::GatherKeys | Layout::SumKeys | Layout::Pairs => args.get(1).map(|k| key_slot(k)),
    }
}

/// One command to run on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sub {
    /// The slot it runs on; `None` lets the cluster client route it.
    pub(crate) slot: Option<u16>,
    /// The command.
    pub(crate) cmd: Cmd,
}

/// How one reply to the caller is made from the replies to the sub-commands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    /// The reply of one sub-command as is.
    One(usize),
    /// `MGET` split per slot: each part's array goes back to these positions.
    Gather {
        parts: Vec<(usize, Vec<usize>)>,
        len: usize,
    },
    /// Integer replies added up.
    Sum(Vec<usize>),
    /// Every part must answer `OK`.
    AllOk(Vec<usize>),
}

/// Commands split per slot, and how to put their replies back in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    subs: Vec<Sub>,
    outs: Vec<Out>,
}

impl Plan {
    /// Plans `cmds`.
    pub(crate) fn new(cmds: Vec<Cmd>) -> Plan {
        let mut plan = Plan {
            subs: Vec::with_capacity(cmds.len()),
            outs: Vec::with_capacity(cmds.len()),
        };
        for cmd in cmds {
            plan.add(cmd);
        }
        plan
    }

    fn push(&mut self, slot: Option<u16>, cmd: Cmd) -> usize {
        self.subs.push(Sub { slot, cmd });
        self.subs.len() - 1
    }

    fn add(&mut self, cmd: Cmd) {
        let kind = layout(&cmd.name());
        let split = matches!(kind, Layout::GatherKeys | Layout::SumKeys | Layout::Pairs);
        let stride = if kind == Layout::Pairs { 2 } else { 1 };
        if !split || cmd.args().len() <= 1 + stride {
            let slot = command_slot(&cmd);
            let i = self.push(slot, cmd);
            self.outs.push(Out::One(i));
            return;
        }
        // Group the keys (or pairs) by slot, keeping their order inside each slot.
        let mut parts = cmd.into_args();
        let name = parts.remove(0);
        let mut by_slot: BTreeMap<u16, (Vec<usize>, Vec<bytes::Bytes>)> = BTreeMap::new();
        for (pos, chunk) in parts.chunks(stride).enumerate() {
            let entry = by_slot.entry(key_slot(&chunk[0])).or_default();
            entry.0.push(pos);
            entry.1.extend(chunk.iter().cloned());
        }
        let len = parts.len() / stride;
        if by_slot.len() == 1 {
            let slot = *by_slot.keys().next().expect("one slot");
            let mut all = vec![name];
            all.extend(parts);
            let cmd = Cmd::from_parts(all).expect("has a name");
            let i = self.push(Some(slot), cmd);
            self.outs.push(Out::One(i));
            return;
        }
        let mut gathered = Vec::with_capacity(by_slot.len());
        for (slot, (positions, args)) in by_slot {
            let mut all = Vec::with_capacity(args.len() + 1);
            all.push(name.clone());
            all.extend(args);
            let i = self.push(Some(slot), Cmd::from_parts(all).expect("has a name"));
            gathered.push((i, positions));
        }
        self.outs.push(match kind {
            Layout::GatherKeys => Out::Gather {
                parts: gathered,
                len,
            },
            Layout::SumKeys => Out::Sum(gathered.into_iter().map(|(i, _)| i).collect()),
            _ => Out::AllOk(gathered.into_iter().map(|(i, _)| i).collect()),
        });
    }

    /// The commands to run.
    #[cfg(test)]
    pub(crate) fn subs(&self) -> &[Sub] {
        &self.subs
    }

    /// Takes the commands to run, leaving the plan able to [`assemble`](Plan::assemble).
    pub(crate) fn take_subs(&mut self) -> Vec<Sub> {
        std::mem::take(&mut self.subs)
    }

    /// Sub-command indexes grouped by slot (each group in order), and the keyless ones.
    pub(crate) fn groups(subs: &[Sub]) -> (BTreeMap<u16, Vec<usize>>, Vec<usize>) {
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        let mut keyless = Vec::new();
        for (i, sub) in subs.iter().enumerate() {
            match sub.slot {
                Some(slot) => by_slot.entry(slot).or_default().push(i),
                None => keyless.push(i),
            }
        }
        (by_slot, keyless)
    }

    /// Builds the caller's replies (one per planned command, in order) from the replies to
    /// the sub-commands (indexed like [`subs`](Plan::subs)).
    pub(crate) fn assemble(&self, mut replies: Vec<Value>) -> Result<Vec<Value>, TransportError> {
        let mut take = |i: usize| std::mem::replace(&mut replies[i], Value::Nil);
        let bad = |what: String| {
            TransportError::new(
                ErrorKind::Protocol,
                format!("cluster reply could not be reassembled: {what}"),
            )
        };
        let mut out = Vec::with_capacity(self.outs.len());
        for o in &self.outs {
            out.push(match o {
                Out::One(i) => take(*i),
                Out::Gather { parts, len } => {
                    let mut slots = vec![Value::Nil; *len];
                    let mut error = None;
                    for (i, positions) in parts {
                        match take(*i) {
                            Value::Array(items) if items.len() == positions.len() => {
                                for (pos, item) in positions.iter().zip(items) {
                                    slots[*pos] = item;
                                }
                            }
                            Value::Error(e) => {
                                error.get_or_insert(e);
                            }
                            other => return Err(bad(format!("MGET part answered {other:?}"))),
                        }
                    }
                    match error {
                        Some(e) => Value::Error(e),
                        None => Value::Array(slots),
                    }
                }
                Out::Sum(parts) => {
                    let mut total = 0i64;
                    let mut error = None;
                    for i in parts {
                        match take(*i) {
                            Value::Int(n) => total += n,
                            Value::Error(e) => {
                                error.get_or_insert(e);
                            }
                            other => return Err(bad(format!("counting part answered {other:?}"))),
                        }
                    }
                    match error {
                        Some(e) => Value::Error(e),
                        None => Value::Int(total),
                    }
                }
                Out::AllOk(parts) => {
                    let mut result = Value::Status("OK".into());
                    for i in parts {
                        match take(*i) {
                            v if v.is_ok() => {}
                            Value::Error(e) => {
                                if !matches!(result, Value::Error(_)) {
                                    result = Value::Error(e);
                                }
                            }
                            other => return Err(bad(format!("MSET part answered {other:?}"))),
                        }
                    }
                    result
                }
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn slots_match_redis() {
        // `redis-cli CLUSTER KEYSLOT …` answers these.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(
            key_slot(b"foo{}{bar}"),
            key_slot(b"bar"),
            "empty tag hashes the whole key"
        );
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn command_slots() {
        assert_eq!(command_slot(&Cmd::new("GET").arg("foo")), Some(12182));
        assert_eq!(command_slot(&Cmd::new("ping")), None);
        assert_eq!(command_slot(&Cmd::new("INFO").arg("replication")), None);
        assert_eq!(
            command_slot(&Cmd::new("EVALSHA").arg("abc").arg(1).arg("foo").arg("x")),
            Some(12182)
        );
        assert_eq!(command_slot(&Cmd::new("EVAL").arg("return 1").arg(0)), None);
        assert_eq!(
            command_slot(&Cmd::new("OBJECT").arg("ENCODING").arg("bar")),
            Some(5061)
        );
    }

    #[test]
    fn single_slot_commands_are_not_split() {
        let plan = Plan::new(vec![
            Cmd::new("MGET").arg("{a}1").arg("{a}2"),
            Cmd::new("SET").arg("foo").arg("v"),
            Cmd::new("MGET").arg("foo"),
        ]);
        assert_eq!(plan.subs().len(), 3);
        assert!(plan.subs().iter().all(|s| s.slot.is_some()));
    }

    #[test]
    fn mget_split_and_gathered_in_key_order() {
        let mut plan = Plan::new(vec![
            Cmd::new("MGET")
                .arg("foo")
                .arg("bar")
                .arg("{foo}x")
                .arg("missing"),
        ]);
        let subs = plan.take_subs();
        // foo and {foo}x share a slot; bar and missing are elsewhere.
        assert_eq!(subs.len(), 3);
        let replies: Vec<Value> = subs
            .iter()
            .map(|s| {
                let keys = &s.cmd.args()[1..];
                Value::Array(
                    keys.iter()
                        .map(|k| {
                            if &k[..] == b"missing" {
                                Value::Nil
                            } else {
                                Value::Bulk(k.clone())
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        let out = plan.assemble(replies).unwrap();
        assert_eq!(
            out,
            vec![Value::Array(vec![
                bulk("foo"),
                bulk("bar"),
                bulk("{foo}x"),
                Value::Nil
            ])]
        );
    }

    #[test]
    fn del_split_adds_counts_and_mset_needs_every_ok() {
        let mut plan = Plan::new(vec![
            Cmd::new("DEL").arg("foo").arg("bar"),
            Cmd::new("MSET").arg("foo").arg("1").arg("bar").arg("2"),
        ]);
        let subs = plan.take_subs();
        assert_eq!(subs.len(), 4);
        for s in &subs {
            let n = s.cmd.args().len();
            assert!(n == 2 || n == 3, "one key (or pair) per slot here");
        }
        let replies = subs
            .iter()
            .map(|s| {
                if s.cmd.name() == "DEL" {
                    Value::Int(1)
                } else {
                    Value::Status("OK".into())
                }
            })
            .collect();
        assert_eq!(
            plan.assemble(replies).unwrap(),
            vec![Value::Int(2), Value::Status("OK".into())]
        );
    }

    #[test]
    fn a_failing_part_fails_the_command() {
        let mut plan = Plan::new(vec![Cmd::new("MGET").arg("foo").arg("bar")]);
        let subs = plan.take_subs();
        let replies = vec![
            Value::Error("CLUSTERDOWN The cluster is down".into()),
            Value::Array(vec![Value::Nil]),
        ];
        assert_eq!(subs.len(), 2);
        assert_eq!(
            plan.assemble(replies).unwrap(),
            vec![Value::Error("CLUSTERDOWN The cluster is down".into())]
        );
    }

    #[test]
    fn groups_keep_order_within_a_slot() {
        let plan = Plan::new(vec![
            Cmd::new("SET").arg("foo").arg("1"),
            Cmd::new("PING"),
            Cmd::new("SET").arg("bar").arg("1"),
            Cmd::new("GET").arg("foo"),
        ]);
        let (groups, keyless) = Plan::groups(plan.subs());
        assert_eq!(keyless, vec![1]);
        assert_eq!(groups[&12182], vec![0, 3]);
        assert_eq!(groups[&5061], vec![2]);
    }
}
