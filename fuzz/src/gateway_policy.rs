//! The gateway's command policy against a model of how Redis reads a command.
//!
//! Input layout: one flags byte (bit 0: a read-only token; bit 1: read-only scripts allowed),
//! then the command's parts separated by `0xFF` (a byte no UTF-8 text has, so every other
//! byte, NUL included, can appear inside a part). Invariants: `Policy::check` never panics;
//! a command it accepts is read by Redis as exactly the command the policy judged — its
//! name, and a container's subcommand, hold no NUL (Redis compares names only up to one) and
//! only the bytes of command names — and what Redis would run is in no never-run, blocking or
//! denied list, and on the read-only allow list for a read-only token.

use bytes::Bytes;
use larder_core::Cmd;
use larder_native::gateway::policy::{
    self, Access, BLOCKING, CONTAINERS, DEFAULT_DENIED, NEVER_RUN, Policy, READ_ONLY,
    READ_ONLY_SCRIPTS,
};

/// The name Redis looks up: the bytes before the first NUL, compared without case.
fn redis_reads(part: &[u8]) -> String {
    let end = part.iter().position(|&b| b == 0).unwrap_or(part.len());
    String::from_utf8_lossy(&part[..end]).to_ascii_uppercase()
}

/// Runs one input.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<Bytes> = rest
        .split(|&b| b == 0xFF)
        .map(Bytes::copy_from_slice)
        .collect();
    let Some(cmd) = Cmd::from_parts(parts) else {
        return;
    };
    let access = if flags & 1 == 1 {
        Access::ReadOnly
    } else {
        Access::Full
    };
    let scripts = flags & 2 == 2;
    let mut p = Policy::default();
    p.allow_read_only_scripts(scripts);
    let verdict = p.check(&cmd, access);
    if let Err(refusal) = &verdict {
        assert!(!refusal.message().is_empty());
        assert!(
            !refusal.message().contains('\0'),
            "an error never echoes a NUL: {refusal:?}"
        );
        return;
    }

    let args = cmd.args();
    assert!(
        policy::is_valid_name(&args[0]),
        "accepted an invalid name {:?}",
        args[0]
    );
    let name = redis_reads(&args[0]);
    assert_eq!(
        name.len(),
        args[0].len(),
        "Redis would read a different name"
    );
    let container = CONTAINERS.contains(&name.as_str());
    let sub = match args.get(1) {
        Some(s) if container => {
            assert!(policy::is_valid_name(s), "accepted an invalid subcommand {s:?}");
            let read = redis_reads(s);
            assert_eq!(read.len(), s.len(), "Redis would read another subcommand");
            Some(read)
        }
        _ => None,
    };
    let full = match &sub {
        Some(s) => format!("{name} {s}"),
        None => name.clone(),
    };
    let listed = |list: &[&str]| list.iter().any(|e| *e == name || *e == full);
    assert!(!listed(NEVER_RUN), "accepted a never-run command: {full}");
    assert!(!listed(BLOCKING), "accepted a blocking command: {full}");
    assert!(!listed(DEFAULT_DENIED), "accepted a denied command: {full}");
    if access == Access::ReadOnly {
        assert!(
            listed(READ_ONLY) || (scripts && listed(READ_ONLY_SCRIPTS)),
            "a read-only token ran {full}"
        );
        assert_ne!(name, "EVAL_RO", "a read-only token ran its own script");
    }
    if name == "XREAD" || name == "XREADGROUP" {
        // Redis's own option loop (t_stream.c, xreadCommand): options in any order before
        // STREAMS, compared with strcasecmp (up to a NUL). No BLOCK may be among them.
        let kw = |a: &[u8], k: &str| redis_reads(a) == k;
        let mut i = 1;
        while let Some(a) = args.get(i) {
            let more = args.len() - i - 1;
            assert!(!kw(a, "BLOCK"), "accepted a blocking {name}");
            if kw(a, "COUNT") && more >= 1 {
                i += 2;
            } else if kw(a, "GROUP") && more >= 2 {
                i += 3;
            } else if kw(a, "NOACK") {
                i += 1;
            } else {
                break;
            }
        }
    }
}
