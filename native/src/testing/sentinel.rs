//! Redis Sentinel: a master, one replica and three sentinels.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{self, Process, cmd_at, poll, role_of};
use super::resp::{RespValue, flat_map, info_field};
use super::{NodeInfo, NodeRole, SENTINEL_TIMEOUT, new_dir};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";

/// `sentinel down-after-milliseconds` of the setup.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1_000;

/// `sentinel failover-timeout` of the setup (no second failover of the same master can start
/// within twice this after the previous one).
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5_000;

/// A master, one replica (`--replicaof`) and three sentinels (quorum 2) on free 127.0.0.1
/// ports in one temp dir, all `redis-server` processes the harness started.
///
/// The sentinels use `down-after-milliseconds 1000`, `failover-timeout 5000` and
/// `parallel-syncs 1`. [`start`](Self::start) returns once the replica is linked and every
/// sentinel agrees on the master, sees the two other sentinels and lists the replica as
/// healthy — before that a failover cannot happen.
///
/// Dropping the handle SIGKILLs and reaps every process it started.
///
/// ```no_run
/// use std::time::Duration;
/// use larder_native::testing::SentinelSetup;
///
/// let setup = SentinelSetup::start().unwrap();
/// let old = setup.master_addr().unwrap();
/// setup.failover().unwrap();
/// let new = setup.wait_for_new_master(&old, Duration::from_secs(30)).unwrap();
/// assert_ne!(old, new);
/// ```
#[derive(Debug)]
pub struct SentinelSetup {
    // Declared before `dir`: the processes die before their directory is removed.
    data: Vec<Process>,
    sentinels: Vec<Process>,
    dir: TempDir,
}

fn data_args(port: u16, dir: &Path) -> io::Result<Vec<OsString>> {
    let mut args = process::base_args(port, dir);
    args.extend(process::replication_args());
    Ok(args)
}

fn replicaof(master_port: u16) -> Vec<OsString> {
    [
        "--replicaof".to_owned(),
        "127.0.0.1".to_owned(),
        master_port.to_string(),
    ]
    .map(OsString::from)
    .to_vec()
}

/// Arguments of a sentinel: its config file (written on first start only — the sentinel
/// rewrites it with what it learns, and a restart must keep that) and `--sentinel`.
fn sentinel_args(master_port: u16) -> process::ArgsFn {
    Box::new(move |port, dir| {
        let conf = dir.join(format!("sentinel-{port}.conf"));
        if !conf.exists() {
            let log = process::log_path(dir, port);
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir \"{dir}\"\n\
                 logfile \"{log}\"\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display(),
                log = log.display(),
            );
            std::fs::write(&conf, text)?;
        }
        Ok(vec![conf.into_os_string(), "--sentinel".into()])
    })
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

fn get_master(sentinel: &str) -> Result<String, String> {
    let reply = cmd_at(
        sentinel,
        None,
        &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
    )
    .and_then(RespValue::into_result)
    .map_err(|e| format!("{sentinel}: get-master-addr-by-name: {e}"))?;
    match reply.as_array() {
        Some([ip, port]) => match (ip.as_text(), port.as_text()) {
            (Some(ip), Some(port)) => Ok(format!("{ip}:{port}")),
            _ => Err(format!("{sentinel}: bad master address {reply:?}")),
        },
        _ => Err(format!("{sentinel}: no master address ({reply:?})")),
    }
}

/// `SENTINEL <sub> mymaster` as a list of `field → value` maps.
fn sentinel_list(sentinel: &str, sub: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let reply = cmd_at(sentinel, None, &["SENTINEL", sub, MASTER_NAME])
        .and_then(RespValue::into_result)
        .map_err(|e| format!("{sentinel}: SENTINEL {sub}: {e}"))?;
    Ok(reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(flat_map)
        .collect())
}

fn field<'a>(map: &'a [(String, String)], key: &str) -> &'a str {
    map.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn healthy(map: &[(String, String)]) -> bool {
    let flags = field(map, "flags");
    !flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
}

impl SentinelSetup {
    /// Starts master, replica and three sentinels and waits until a failover is possible
    /// (see the type docs). Allow a few seconds (sentinels discover each other through
    /// hello messages sent every 2 s).
    pub fn start() -> io::Result<SentinelSetup> {
        let dir = new_dir()?;
        let mut master = Process::new(dir.path(), false, Box::new(data_args), Vec::new(), None)?;
        master.start(SENTINEL_TIMEOUT)?;
        let mut replica = Process::new(
            dir.path(),
            false,
            Box::new(data_args),
            replicaof(master.port()),
            None,
        )?;
        replica.start(SENTINEL_TIMEOUT)?;
        // Sentinels learn replicas from the master's INFO, asked on connect and then only
        // every 10 s: link the replica first.
        poll("replica linked", SENTINEL_TIMEOUT, || {
            replica_linked(&replica.addr(), master.port())
        })?;
        let mut sentinels = Vec::with_capacity(3);
        for _ in 0..3 {
            sentinels.push(Process::new(
                dir.path(),
                false,
                sentinel_args(master.port()),
                Vec::new(),
                None,
            )?);
        }
        for sentinel in &mut sentinels {
            sentinel.spawn_only()?;
        }
        for sentinel in &mut sentinels {
            sentinel.finish_start(SENTINEL_TIMEOUT)?;
        }
        let setup = SentinelSetup {
            data: vec![master, replica],
            sentinels,
            dir,
        };
        setup.wait_ok(SENTINEL_TIMEOUT)?;
        Ok(setup)
    }

    /// The monitored master's name, `"mymaster"`.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `"127.0.0.1:PORT"` of every sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Process::addr).collect()
    }

    /// `"redis://127.0.0.1:PORT/"` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://{}/", s.addr()))
            .collect()
    }

    /// The master's `"127.0.0.1:PORT"` as the first answering sentinel reports it.
    pub fn master_addr(&self) -> io::Result<String> {
        let mut last = String::from("no sentinel is running");
        for s in self.sentinels.iter().filter(|s| s.pid().is_some()) {
            match get_master(&s.addr()) {
                Ok(addr) => return Ok(addr),
                Err(e) => last = e,
            }
        }
        Err(io::Error::other(last))
    }

    /// The master and the replica (start order), with live roles and pids.
    pub fn data_nodes(&self) -> Vec<NodeInfo> {
        Self::infos(&self.data)
    }

    /// The three sentinels, with pids (`role` is `Sentinel`, or `Down`).
    pub fn sentinel_nodes(&self) -> Vec<NodeInfo> {
        Self::infos(&self.sentinels)
    }

    fn infos(nodes: &[Process]) -> Vec<NodeInfo> {
        nodes
            .iter()
            .map(|n| NodeInfo {
                port: n.port(),
                pid: n.pid(),
                role: if n.pid().is_some() {
                    role_of(&n.addr())
                } else {
                    NodeRole::Down
                },
            })
            .collect()
    }

    /// The processes' shared directory (logs, sentinel configs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one command to the node (data node or sentinel) on `port` with the harness's
    /// mini client.
    pub fn cmd<S: AsRef<[u8]>>(&self, port: u16, args: &[S]) -> io::Result<RespValue> {
        cmd_at(&format!("127.0.0.1:{port}"), None, args)
    }

    /// Asks one sentinel for `SENTINEL FAILOVER mymaster` (retrying for up to 10 s while it
    /// answers `-NOGOODSLAVE`). Returns once the sentinel accepted; follow with
    /// [`wait_for_new_master`](Self::wait_for_new_master).
    pub fn failover(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sentinel = self
                .sentinels
                .iter()
                .find(|s| s.pid().is_some())
                .ok_or_else(|| io::Error::other("no sentinel is running"))?;
            match sentinel.cmd(&["SENTINEL", "FAILOVER", MASTER_NAME])? {
                RespValue::Simple(_) => return Ok(()),
                RespValue::Error(e)
                    if e.starts_with("NOGOODSLAVE") && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(100));
                }
                other => {
                    return Err(io::Error::other(format!(
                        "SENTINEL FAILOVER on {}: {other:?}",
                        sentinel.addr()
                    )));
                }
            }
        }
    }

    /// SIGKILLs the current master (as the sentinels report it) and returns its port. The
    /// sentinels promote the replica after ~1 s (down-after) plus an election.
    pub fn kill_master(&mut self) -> io::Result<u16> {
        let addr = self.master_addr()?;
        let port =
            port_of(&addr).ok_or_else(|| io::Error::other(format!("bad master address {addr}")))?;
        self.kill_node(port)?;
        Ok(port)
    }

    fn node_mut(&mut self, port: u16) -> io::Result<&mut Process> {
        self.data
            .iter_mut()
            .chain(self.sentinels.iter_mut())
            .find(|n| n.port() == port)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no node on port {port}"))
            })
    }

    /// SIGKILLs the data node or sentinel on `port` and reaps it (the port is kept).
    pub fn kill_node(&mut self, port: u16) -> io::Result<()> {
        self.node_mut(port)?.kill();
        Ok(())
    }

    /// Starts a killed node again on its port and waits until it answers `PING`. A data node
    /// comes back as a replica of the master the sentinels report now (or as a master if
    /// they still report it as the master); a sentinel keeps the config it had rewritten.
    /// Call [`wait_ok`](Self::wait_ok) to wait until the sentinels see it healthy.
    pub fn restart_node(&mut self, port: u16) -> io::Result<()> {
        let is_data = self.data.iter().any(|n| n.port() == port);
        if is_data {
            let master = self.master_addr().ok().and_then(|a| port_of(&a));
            let extra = match master {
                Some(m) if m != port => replicaof(m),
                _ => Vec::new(),
            };
            self.node_mut(port)?.set_extra(extra);
        }
        self.node_mut(port)?.restart(SENTINEL_TIMEOUT)
    }

    /// Polls the running sentinels until all agree on a master other than `old`
    /// (`"127.0.0.1:PORT"`) and that node answers `ROLE` as a master; returns its address.
    pub fn wait_for_new_master(&self, old: &str, timeout: Duration) -> io::Result<String> {
        poll(&format!("new master (old {old})"), timeout, || {
            let addr = self.agreed_master()?;
            if addr == old {
                return Err(format!("sentinels still report {old}"));
            }
            match role_of(&addr) {
                NodeRole::Master => Ok(addr),
                role => Err(format!("{addr} answers ROLE {role:?}")),
            }
        })
        .map_err(|e| self.with_logs(e))
    }

    /// Waits until the setup is healthy: the running sentinels agree on a master that
    /// answers `ROLE` master and is not flagged down, each sees the other running sentinels,
    /// and every other running data node is a linked replica of it, listed by every sentinel
    /// as healthy with `master-link-status ok`.
    ///
    /// After [`failover`](Self::failover) the old master keeps running *as a master* until
    /// the sentinels notice and send it `REPLICAOF` — they refresh a replica's `INFO` every
    /// 10 s and then wait 8 s more, so this takes ~20 s here (writes to the old master in that
    /// window are lost). A node restarted with [`restart_node`](Self::restart_node) comes back
    /// as a replica at once and settles in ~1 s.
    pub fn wait_ok(&self, timeout: Duration) -> io::Result<()> {
        poll("sentinel setup ok", timeout, || self.check())
            .map(drop)
            .map_err(|e| self.with_logs(e))
    }

    fn with_logs(&self, e: io::Error) -> io::Error {
        let logs: Vec<String> = self
            .data
            .iter()
            .chain(&self.sentinels)
            .map(|n| n.log_tail(5))
            .collect();
        io::Error::new(e.kind(), format!("{e}\n{}", logs.join("")))
    }

    fn running_sentinels(&self) -> Vec<&Process> {
        self.sentinels
            .iter()
            .filter(|s| s.pid().is_some())
            .collect()
    }

    fn agreed_master(&self) -> Result<String, String> {
        let mut agreed: Option<String> = None;
        for s in self.running_sentinels() {
            let addr = get_master(&s.addr())?;
            match &agreed {
                Some(a) if *a != addr => {
                    return Err(format!("sentinels disagree: {a} vs {addr}"));
                }
                Some(_) => {}
                None => agreed = Some(addr),
            }
        }
        agreed.ok_or_else(|| "no sentinel is running".to_owned())
    }

    fn check(&self) -> Result<String, String> {
        let master = self.agreed_master()?;
        let master_port = port_of(&master).ok_or_else(|| format!("bad address {master}"))?;
        match role_of(&master) {
            NodeRole::Master => {}
            role => return Err(format!("{master} answers ROLE {role:?}")),
        }
        let sentinels = self.running_sentinels();
        let replicas: Vec<&Process> = self
            .data
            .iter()
            .filter(|n| n.pid().is_some() && n.port() != master_port)
            .collect();
        for s in &sentinels {
            let addr = s.addr();
            let master_info = cmd_at(&addr, None, &["SENTINEL", "master", MASTER_NAME])
                .and_then(RespValue::into_result)
                .map_err(|e| format!("{addr}: SENTINEL master: {e}"))?;
            let master_info = flat_map(&master_info);
            let flags = field(&master_info, "flags");
            if flags != "master" {
                return Err(format!("{addr}: master flags {flags:?}"));
            }
            let others = sentinel_list(&addr, "sentinels")?;
            let known: BTreeSet<&str> = others
                .iter()
                .filter(|m| healthy(m))
                .map(|m| field(m, "port"))
                .collect();
            for other in sentinels.iter().filter(|o| o.port() != s.port()) {
                if !known.contains(other.port().to_string().as_str()) {
                    return Err(format!("{addr}: does not see sentinel {}", other.port()));
                }
            }
            let listed = sentinel_list(&addr, "replicas")?;
            for r in &replicas {
                let port = r.port().to_string();
                let entry = listed
                    .iter()
                    .find(|m| field(m, "port") == port)
                    .ok_or_else(|| format!("{addr}: does not list replica {port}"))?;
                if !healthy(entry)
                    || field(entry, "role-reported") != "slave"
                    || field(entry, "master-link-status") != "ok"
                    || field(entry, "master-port") != master_port.to_string()
                {
                    return Err(format!("{addr}: replica {port} not ready: {entry:?}"));
                }
            }
        }
        for r in &replicas {
            replica_linked(&r.addr(), master_port)?;
        }
        Ok(master)
    }
}

/// `Ok` once the node at `addr` is a replica of `master_port` with its link up.
fn replica_linked(addr: &str, master_port: u16) -> Result<(), String> {
    let info = cmd_at(addr, None, &["INFO", "replication"])
        .and_then(RespValue::into_text)
        .map_err(|e| format!("{addr}: INFO replication: {e}"))?;
    let role = info_field(&info, "role").unwrap_or_default();
    let port = info_field(&info, "master_port").unwrap_or_default();
    let link = info_field(&info, "master_link_status").unwrap_or_default();
    if role == "slave" && port == master_port.to_string() && link == "up" {
        Ok(())
    } else {
        Err(format!(
            "{addr}: role:{role} master_port:{port} master_link_status:{link} (want replica of {master_port}, up)"
        ))
    }
}
