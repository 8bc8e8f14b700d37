//! A Redis Cluster: masters + replicas, created with `redis-cli --cluster create`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{self, Process, cmd_at, poll, role_of};
use super::resp::{RespValue, info_field};
use super::{CLUSTER_TIMEOUT, NodeInfo, NodeRole, new_dir};

/// The number of hash slots in a Redis Cluster.
const SLOTS: u32 = 16_384;

/// `--cluster-node-timeout` of every node, in milliseconds.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2_000;

/// A slot range and the nodes serving it, as `CLUSTER SLOTS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    master: u16,
    replicas: Vec<u16>,
}

/// A Redis Cluster of `masters` masters with `replicas_per_master` replicas each, every node
/// a `redis-server --cluster-enabled yes` on free 127.0.0.1 ports (bus port = port + 10000,
/// also free) in one temp dir.
///
/// Nodes run with `--cluster-node-timeout 2000` (the default is 15 s): a killed master is
/// marked failed after ~2 s and a replica takes over about 1–2 s later, so failover tests
/// take seconds, not tens of seconds. [`start`](Self::start) returns only once every node
/// reports `cluster_state:ok`, all nodes agree on a `CLUSTER SLOTS` map covering 0..=16383
/// with the expected masters, and every replica is linked (`master_link_status:up`) and
/// listed by every node.
///
/// Dropping the handle SIGKILLs and reaps every node it started.
///
/// ```no_run
/// use std::time::Duration;
/// use larder_native::testing::RedisCluster;
///
/// let mut cluster = RedisCluster::start_default().unwrap(); // 3 masters + 3 replicas
/// let seeds = cluster.seed_urls(); // give these to the cluster client
/// let old = cluster.kill_master(0).unwrap();
/// let new = cluster.wait_for_failover(old, Duration::from_secs(30)).unwrap();
/// assert_ne!(old, new);
/// # drop(seeds);
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    // Declared before `dir`: the processes die before their directory is removed.
    nodes: Vec<Process>,
    dir: TempDir,
    masters: usize,
    last_slots: Vec<SlotRange>,
}

fn cluster_args(port: u16, dir: &Path) -> io::Result<Vec<OsString>> {
    let mut args = process::base_args(port, dir);
    args.extend(process::replication_args());
    args.extend(
        [
            "--cluster-enabled".to_owned(),
            "yes".to_owned(),
            "--cluster-config-file".to_owned(),
            format!("nodes-{port}.conf"),
            "--cluster-node-timeout".to_owned(),
            CLUSTER_NODE_TIMEOUT_MS.to_string(),
        ]
        .map(OsString::from),
    );
    Ok(args)
}

fn slots_of(addr: &str) -> Result<Vec<SlotRange>, String> {
    let reply = cmd_at(addr, None, &["CLUSTER", "SLOTS"])
        .and_then(RespValue::into_result)
        .map_err(|e| format!("{addr}: CLUSTER SLOTS: {e}"))?;
    let bad = || format!("{addr}: unexpected CLUSTER SLOTS reply {reply:?}");
    let node_port = |node: &RespValue| node.as_array()?.get(1)?.as_int();
    let mut ranges = Vec::new();
    for entry in reply.as_array().ok_or_else(bad)? {
        let items = entry.as_array().ok_or_else(bad)?;
        let int = |i: usize| items.get(i).and_then(RespValue::as_int).ok_or_else(bad);
        let ports = items
            .get(2..)
            .unwrap_or_default()
            .iter()
            .map(|n| node_port(n).map(|p| p as u16).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let (master, replicas) = ports.split_first().ok_or_else(bad)?;
        ranges.push(SlotRange {
            start: int(0)? as u16,
            end: int(1)? as u16,
            master: *master,
            replicas: replicas.to_vec(),
        });
    }
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

fn check_coverage(addr: &str, ranges: &[SlotRange]) -> Result<(), String> {
    let mut next = 0u32;
    for r in ranges {
        if u32::from(r.start) != next || r.end < r.start {
            return Err(format!(
                "{addr}: slots not covered contiguously (gap or overlap at {next})"
            ));
        }
        next = u32::from(r.end) + 1;
    }
    if next != SLOTS {
        return Err(format!("{addr}: slots covered only up to {next}"));
    }
    Ok(())
}

impl RedisCluster {
    /// Starts `masters` masters (at least 3) with `replicas_per_master` replicas each and
    /// waits until the cluster is fully up (see the type docs). Allow a few seconds.
    pub fn start(masters: usize, replicas_per_master: usize) -> io::Result<RedisCluster> {
        if masters < 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Redis Cluster needs at least 3 masters",
            ));
        }
        let dir = new_dir()?;
        let total = masters * (1 + replicas_per_master);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(Process::new(
                dir.path(),
                true,
                Box::new(cluster_args),
                Vec::new(),
                None,
            )?);
        }
        // Spawn all, then wait for each: the nodes boot in parallel.
        for node in &mut nodes {
            node.spawn_only()?;
        }
        for node in &mut nodes {
            node.finish_start(CLUSTER_TIMEOUT)?;
        }
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        cmd.args(nodes.iter().map(Process::addr));
        cmd.args([
            "--cluster-replicas",
            &replicas_per_master.to_string(),
            "--cluster-yes",
        ]);
        process::run_with_timeout(cmd, CLUSTER_TIMEOUT).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(e.kind(), format!("redis-cli not found on PATH: {e}"))
            } else {
                e
            }
        })?;
        let mut cluster = RedisCluster {
            nodes,
            dir,
            masters,
            last_slots: Vec::new(),
        };
        cluster.wait_ok(CLUSTER_TIMEOUT)?;
        Ok(cluster)
    }

    /// [`start`](Self::start)`(3, 1)`: 3 masters and 3 replicas.
    pub fn start_default() -> io::Result<RedisCluster> {
        RedisCluster::start(3, 1)
    }

    /// Every node the harness started, with its live role (`ROLE`; `Down` if it does not
    /// answer) and pid (`None` once killed).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
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

    /// The ports of all nodes, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Process::port).collect()
    }

    /// The masters' `"127.0.0.1:PORT"` as a live node's `CLUSTER SLOTS` reports them,
    /// ordered by their first slot (empty if no node answers).
    pub fn master_addrs(&self) -> Vec<String> {
        self.current_slots()
            .map(|slots| {
                let mut seen = BTreeSet::new();
                slots
                    .iter()
                    .filter(|r| seen.insert(r.master))
                    .map(|r| format!("127.0.0.1:{}", r.master))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `"redis://127.0.0.1:PORT/"` of every node, in start order (killed ones included).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://{}/", n.addr()))
            .collect()
    }

    /// The URLs of the nodes the harness has not killed: the seed list for a cluster client.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| format!("redis://{}/", n.addr()))
            .collect()
    }

    /// The nodes' shared directory (logs `redis-PORT.log`, `nodes-PORT.conf`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one command to the node on `port` with the harness's mini client (no
    /// redirections are followed).
    pub fn cmd<S: AsRef<[u8]>>(&self, port: u16, args: &[S]) -> io::Result<RespValue> {
        cmd_at(&format!("127.0.0.1:{port}"), None, args)
    }

    fn node_mut(&mut self, port: u16) -> io::Result<&mut Process> {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no cluster node on port {port}"),
                )
            })
    }

    fn current_slots(&self) -> Option<Vec<SlotRange>> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .find_map(|n| slots_of(&n.addr()).ok())
    }

    /// SIGKILLs the node on `port` and reaps it (its port and `nodes-PORT.conf` are kept for
    /// [`restart_node`](Self::restart_node)).
    pub fn kill_node(&mut self, port: u16) -> io::Result<()> {
        if let Some(slots) = self.current_slots() {
            self.last_slots = slots;
        }
        self.node_mut(port)?.kill();
        Ok(())
    }

    /// Starts a killed node again on its port with its `nodes-PORT.conf`, and waits until it
    /// answers `PING`. It rejoins the cluster by itself (a former master comes back as a
    /// replica of the node that replaced it); call [`wait_ok`](Self::wait_ok) to wait for
    /// that.
    pub fn restart_node(&mut self, port: u16) -> io::Result<()> {
        self.node_mut(port)?.restart(CLUSTER_TIMEOUT)
    }

    /// SIGKILLs the `i`-th master of [`master_addrs`](Self::master_addrs) and returns its
    /// port.
    pub fn kill_master(&mut self, i: usize) -> io::Result<u16> {
        let slots = self
            .current_slots()
            .ok_or_else(|| io::Error::other("no cluster node answers CLUSTER SLOTS"))?;
        let mut seen = BTreeSet::new();
        let masters: Vec<u16> = slots
            .iter()
            .filter(|r| seen.insert(r.master))
            .map(|r| r.master)
            .collect();
        let port = *masters.get(i).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("master index {i} out of range ({} masters)", masters.len()),
            )
        })?;
        self.kill_node(port)?;
        Ok(port)
    }

    /// Waits until a replica has replaced `old_master_port`: on every running node
    /// `cluster_state:ok`, and `CLUSTER SLOTS` covers all slots with the expected number of
    /// masters, none of them `old_master_port`, and agrees between nodes. Returns the port of
    /// the node now serving the old master's first slot range.
    pub fn wait_for_failover(
        &mut self,
        old_master_port: u16,
        timeout: Duration,
    ) -> io::Result<u16> {
        let old_ranges: Vec<u16> = self
            .last_slots
            .iter()
            .filter(|r| r.master == old_master_port)
            .map(|r| r.start)
            .collect();
        let slots = poll(
            &format!("failover of master {old_master_port}"),
            timeout,
            || self.check(false, Some(old_master_port)),
        )
        .map_err(|e| self.with_logs(e))?;
        let first = old_ranges.first().copied().unwrap_or(0);
        let new = slots
            .iter()
            .find(|r| r.start <= first && first <= r.end)
            .map(|r| r.master)
            .ok_or_else(|| io::Error::other("slot map has no owner for the old master's slots"))?;
        self.last_slots = slots;
        Ok(new)
    }

    /// Waits until the running nodes form a healthy cluster: `cluster_state:ok` everywhere,
    /// one agreed `CLUSTER SLOTS` map covering all slots with the expected number of masters
    /// (all running), and every other running node a linked replica listed by every node.
    pub fn wait_ok(&mut self, timeout: Duration) -> io::Result<()> {
        let slots = poll("cluster ok", timeout, || self.check(true, None))
            .map_err(|e| self.with_logs(e))?;
        self.last_slots = slots;
        Ok(())
    }

    fn with_logs(&self, e: io::Error) -> io::Error {
        let logs: Vec<String> = self.nodes.iter().map(|n| n.log_tail(5)).collect();
        io::Error::new(e.kind(), format!("{e}\n{}", logs.join("")))
    }

    fn check(&self, replicas: bool, not_master: Option<u16>) -> Result<Vec<SlotRange>, String> {
        let running: Vec<&Process> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        let running_ports: BTreeSet<u16> = running.iter().map(|n| n.port()).collect();
        let mut reference: Option<Vec<SlotRange>> = None;
        let mut listed: Vec<BTreeSet<u16>> = Vec::new();
        for node in &running {
            let addr = node.addr();
            let info = cmd_at(&addr, None, &["CLUSTER", "INFO"])
                .and_then(RespValue::into_text)
                .map_err(|e| format!("{addr}: CLUSTER INFO: {e}"))?;
            let state = info_field(&info, "cluster_state").unwrap_or_default();
            if state != "ok" {
                return Err(format!("{addr}: cluster_state:{state}"));
            }
            let slots = slots_of(&addr)?;
            check_coverage(&addr, &slots)?;
            let masters: BTreeSet<u16> = slots.iter().map(|r| r.master).collect();
            if masters.len() != self.masters {
                return Err(format!(
                    "{addr}: {} masters in CLUSTER SLOTS, expected {}",
                    masters.len(),
                    self.masters
                ));
            }
            if let Some(down) = masters.iter().find(|m| !running_ports.contains(m)) {
                return Err(format!(
                    "{addr}: routes slots to master {down}, which is down"
                ));
            }
            if let Some(old) = not_master
                && masters.contains(&old)
            {
                return Err(format!("{addr}: {old} is still a master"));
            }
            let owners = |s: &[SlotRange]| -> Vec<(u16, u16, u16)> {
                s.iter().map(|r| (r.start, r.end, r.master)).collect()
            };
            match &reference {
                Some(r) if owners(r) != owners(&slots) => {
                    return Err(format!("{addr}: CLUSTER SLOTS differs from other nodes"));
                }
                Some(_) => {}
                None => reference = Some(slots.clone()),
            }
            listed.push(
                slots
                    .iter()
                    .flat_map(|r| r.replicas.iter().copied())
                    .collect(),
            );
        }
        let reference = reference.ok_or("no node is running")?;
        if replicas {
            let masters: BTreeSet<u16> = reference.iter().map(|r| r.master).collect();
            for node in &running {
                let port = node.port();
                if masters.contains(&port) {
                    continue;
                }
                let info = cmd_at(&node.addr(), None, &["INFO", "replication"])
                    .and_then(RespValue::into_text)
                    .map_err(|e| format!("{port}: INFO replication: {e}"))?;
                match info_field(&info, "role").as_deref() {
                    Some("slave") => {}
                    role => return Err(format!("{port}: role {role:?} but owns no slots")),
                }
                let link = info_field(&info, "master_link_status").unwrap_or_default();
                if link != "up" {
                    return Err(format!("{port}: master_link_status:{link}"));
                }
                if listed.iter().any(|l| !l.contains(&port)) {
                    return Err(format!("{port}: replica not yet listed by every node"));
                }
            }
        }
        Ok(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_detects_gaps_and_overlaps() {
        let r = |start, end| SlotRange {
            start,
            end,
            master: 1,
            replicas: vec![],
        };
        assert!(check_coverage("x", &[r(0, 8000), r(8001, 16383)]).is_ok());
        assert!(check_coverage("x", &[r(0, 8000), r(8002, 16383)]).is_err());
        assert!(check_coverage("x", &[r(0, 8000), r(8000, 16383)]).is_err());
        assert!(check_coverage("x", &[r(0, 8000)]).is_err());
        assert!(check_coverage("x", &[]).is_err());
    }
}
