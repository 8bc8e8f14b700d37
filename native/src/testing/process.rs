//! One Redis process the harness started: free-port picking, spawning (from a long-lived
//! spawner thread, with `PR_SET_PDEATHSIG` on Linux), readiness, kill/restart and reaping.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::resp::{RespConnection, RespValue, info_field};

/// The binary every node runs (`redis-server`, or `redis-server <conf> --sentinel`).
pub(crate) const REDIS_SERVER: &str = "redis-server";

/// How many times a node is given a new port when its own was taken before it could bind.
const PORT_ATTEMPTS: usize = 5;

/// Cluster bus ports are `port + 10000`; node ports stay below this so the bus port is valid.
const CLUSTER_PORT_LIMIT: u16 = 55_000;

/// Ports handed out by this process and not yet released (a node's port, and its bus port
/// for cluster nodes), so that concurrent tests never pick the same one.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind_free(port: u16) -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, port))?
        .local_addr()?
        .port())
}

/// Picks a port that is free on 127.0.0.1 right now (and, for cluster nodes, whose bus port
/// `port + 10000` is free too) and reserves it in this process until [`release_port`].
pub(crate) fn pick_port(cluster_bus: bool) -> io::Result<u16> {
    for _ in 0..500 {
        let port = bind_free(0)?;
        let mut reserved = reserved();
        if reserved.contains(&port) {
            continue;
        }
        if cluster_bus {
            if port >= CLUSTER_PORT_LIMIT || reserved.contains(&(port + 10_000)) {
                continue;
            }
            if bind_free(port + 10_000).is_err() {
                continue;
            }
            reserved.insert(port + 10_000);
        }
        reserved.insert(port);
        return Ok(port);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no free 127.0.0.1 port found after 500 tries",
    ))
}

fn release_port(port: u16, cluster_bus: bool) {
    let mut reserved = reserved();
    reserved.remove(&port);
    if cluster_bus {
        reserved.remove(&(port + 10_000));
    }
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process:
/// spawning from a test thread, or from a tokio `spawn_blocking` thread (those exit after
/// 10 s idle), would kill servers whose handles are still alive. The spawner thread never
/// exits, so the signal fires only when the whole test process dies.
fn spawn_detached(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("larder-redis-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the redis spawner thread");
        tx
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the redis spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the redis spawner thread is gone"))?
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Builds a node's arguments for a given port and directory (called on every (re)spawn).
pub(crate) type ArgsFn = Box<dyn Fn(u16, &Path) -> io::Result<Vec<OsString>> + Send + Sync>;

/// The arguments every data node gets: loopback only, no persistence, foreground, files in
/// `dir` named after the port.
pub(crate) fn base_args(port: u16, dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dbfilename",
        &format!("dump-{port}.rdb"),
        "--dir",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(dir.as_os_str().to_owned());
    args.push("--logfile".into());
    args.push(log_path(dir, port).into_os_string());
    args
}

/// Arguments for nodes with replicas: replication starts at once (no 5 s diskless-sync
/// delay), and masters ping replicas every second instead of 10 s — the ping moves the
/// replication offset off 0, and Redis Cluster leaves a replica whose offset is 0 out of
/// `CLUSTER SLOTS`.
pub(crate) fn replication_args() -> Vec<OsString> {
    [
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--repl-ping-replica-period",
        "1",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// The server log of the node on `port`.
pub(crate) fn log_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("redis-{port}.log"))
}

fn output_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("redis-{port}.out"))
}

fn tail(path: &Path, lines: usize) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))
        .ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Why a node did not become ready.
enum NotReady {
    /// The process exited (status, and whether its log says its port was taken).
    Exited(ExitStatus, bool),
    /// It is running but did not answer in time.
    Timeout(String),
    /// It could not be spawned.
    Spawn(io::Error),
}

/// One Redis process owned by a harness handle. Dropping it SIGKILLs and reaps the child.
pub(crate) struct Process {
    port: u16,
    dir: PathBuf,
    cluster_bus: bool,
    args: ArgsFn,
    extra: Vec<OsString>,
    password: Option<String>,
    child: Option<Child>,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// A not-yet-started node on a freshly picked port.
    pub(crate) fn new(
        dir: &Path,
        cluster_bus: bool,
        args: ArgsFn,
        extra: Vec<OsString>,
        password: Option<String>,
    ) -> io::Result<Process> {
        Ok(Process {
            port: pick_port(cluster_bus)?,
            dir: dir.to_owned(),
            cluster_bus,
            args,
            extra,
            password,
            child: None,
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Replaces the arguments appended after the node's own (e.g. `--replicaof`); used by
    /// the next (re)start.
    pub(crate) fn set_extra(&mut self, extra: Vec<OsString>) {
        self.extra = extra;
    }

    /// Whether the child is still running (reaps it if it exited on its own).
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            Some(Err(_)) => true,
            None => false,
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut args = (self.args)(self.port, &self.dir)?;
        args.extend(self.extra.iter().cloned());
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(output_path(&self.dir, self.port))?;
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        die_with_parent(&mut cmd);
        let child = spawn_detached(cmd).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    e.kind(),
                    format!("{REDIS_SERVER} not found on PATH (install redis-server): {e}"),
                )
            } else {
                e
            }
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Sends one command on a fresh connection, authenticating first when a password is set.
    pub(crate) fn cmd<S: AsRef<[u8]>>(&self, args: &[S]) -> io::Result<RespValue> {
        cmd_at(&self.addr(), self.password.as_deref(), args)
    }

    fn answers_ping(&self) -> Result<(), String> {
        let timeout = Duration::from_millis(500);
        let mut conn = RespConnection::connect(&self.addr(), timeout).map_err(|e| e.to_string())?;
        if let Some(password) = &self.password {
            conn.auth(password).map_err(|e| e.to_string())?;
        }
        match conn.command(&["PING"]).map_err(|e| e.to_string())? {
            RespValue::Simple(s) if s == "PONG" => {}
            other => return Err(format!("PING answered {other:?}")),
        }
        // Make sure it is *our* process answering, not another server that won the port.
        let info = conn
            .command(&["INFO", "server"])
            .and_then(RespValue::into_text)
            .map_err(|e| e.to_string())?;
        let pid = info_field(&info, "process_id");
        match (pid.as_deref(), self.pid()) {
            (Some(got), Some(want)) if got == want.to_string() => Ok(()),
            (got, want) => Err(format!(
                "port {} is answered by process {got:?}, not ours ({want:?})",
                self.port
            )),
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), NotReady> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let taken = [
                    log_path(&self.dir, self.port),
                    output_path(&self.dir, self.port),
                ]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .any(|s| s.contains("Address already in use"));
                return Err(NotReady::Exited(status, taken));
            }
            match self.answers_ping() {
                Ok(()) => return Ok(()),
                Err(last) if Instant::now() >= deadline => return Err(NotReady::Timeout(last)),
                Err(_) => {}
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn not_ready_error(&self, why: NotReady, timeout: Duration) -> io::Error {
        let (kind, what) = match why {
            NotReady::Exited(status, _) => (io::ErrorKind::Other, format!("exited ({status})")),
            NotReady::Timeout(last) => (
                io::ErrorKind::TimedOut,
                format!("did not answer PING within {timeout:?} (last: {last})"),
            ),
            NotReady::Spawn(e) => return e,
        };
        io::Error::new(
            kind,
            format!("redis on port {} {what}\n{}", self.port, self.log_tail(20)),
        )
    }

    /// Starts the node for the first time, moving to a new port if another process took the
    /// picked one before the server could bind it.
    pub(crate) fn start(&mut self, timeout: Duration) -> io::Result<()> {
        self.spawn()?;
        self.finish_start(timeout)
    }

    /// Waits for a spawned node (see [`Process::spawn_only`]), re-picking the port on a bind race.
    pub(crate) fn finish_start(&mut self, timeout: Duration) -> io::Result<()> {
        let mut attempt = 1;
        loop {
            match self.wait_ready(timeout) {
                Ok(()) => return Ok(()),
                Err(NotReady::Exited(_, true)) if attempt < PORT_ATTEMPTS => {
                    attempt += 1;
                    let old = self.port;
                    self.port = pick_port(self.cluster_bus)?;
                    release_port(old, self.cluster_bus);
                    if let Err(e) = self.spawn() {
                        return Err(self.not_ready_error(NotReady::Spawn(e), timeout));
                    }
                }
                Err(why) => {
                    let err = self.not_ready_error(why, timeout);
                    self.kill();
                    return Err(err);
                }
            }
        }
    }

    /// Spawns the process without waiting (start many, then [`Process::finish_start`] each).
    pub(crate) fn spawn_only(&mut self) -> io::Result<()> {
        self.spawn()
    }

    /// Starts a stopped node again on the same port and waits for readiness.
    pub(crate) fn restart(&mut self, timeout: Duration) -> io::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready(timeout).map_err(|why| {
            let err = self.not_ready_error(why, timeout);
            self.kill();
            err
        })
    }

    /// SIGKILLs the child if it runs and reaps it. Port and directory are kept.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the child (Redis shuts down cleanly), waits up to `grace`, then SIGKILLs.
    pub(crate) fn terminate(&mut self, grace: Duration) {
        #[cfg(unix)]
        if let Some(child) = self.child.as_mut() {
            // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    /// The last `lines` lines of the server log and of its stdout/stderr.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [
            log_path(&self.dir, self.port),
            output_path(&self.dir, self.port),
        ] {
            if let Some(t) = tail(&path, lines).filter(|t| !t.trim().is_empty()) {
                out.push_str(&format!("--- tail of {} ---\n{t}\n", path.display()));
            }
        }
        if out.is_empty() {
            out.push_str("(no server output)");
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        release_port(self.port, self.cluster_bus);
    }
}

/// Sends one command to `addr`, authenticating first when `password` is set.
pub(crate) fn cmd_at<S: AsRef<[u8]>>(
    addr: &str,
    password: Option<&str>,
    args: &[S],
) -> io::Result<RespValue> {
    let mut conn = RespConnection::connect(addr, Duration::from_secs(1))?;
    if let Some(password) = password {
        conn.auth(password)?;
    }
    conn.command(args)
}

/// The role a node reports through `ROLE` (`Down` when it does not answer).
pub(crate) fn role_of(addr: &str) -> super::NodeRole {
    use super::NodeRole;
    let reply = cmd_at(addr, None, &["ROLE"]);
    match reply
        .ok()
        .as_ref()
        .and_then(RespValue::as_array)
        .and_then(|a| a.first()?.as_text())
    {
        Some(r) if r == "master" => NodeRole::Master,
        Some(r) if r == "slave" => NodeRole::Replica,
        Some(r) if r == "sentinel" => NodeRole::Sentinel,
        _ => NodeRole::Down,
    }
}

/// Polls `check` every 50 ms until it returns `Ok` or `timeout` passes; the error then
/// carries `what` and the last reason `check` gave.
pub(crate) fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> io::Result<T> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(reason) if start.elapsed() >= timeout => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: not reached within {timeout:?}; last: {reason}"),
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Runs a short-lived helper (e.g. `redis-cli --cluster create`), killing it after `timeout`.
pub(crate) fn run_with_timeout(mut cmd: Command, timeout: Duration) -> io::Result<String> {
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("out");
    let out = File::create(&out_path)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(&out_path).unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}:\n{output}"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    if status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({status}):\n{output}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_node(dir: &Path, cluster_bus: bool) -> Process {
        Process::new(
            dir,
            cluster_bus,
            Box::new(|port, dir| Ok(base_args(port, dir))),
            Vec::new(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn picked_ports_are_unique_and_cluster_ports_leave_room_for_the_bus() {
        let ports: Vec<u16> = (0..50).map(|i| pick_port(i % 2 == 0).unwrap()).collect();
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for (i, p) in ports.iter().enumerate() {
            if i % 2 == 0 {
                assert!(*p < CLUSTER_PORT_LIMIT);
                assert!(!unique.contains(&(p + 10_000)));
            }
        }
        for (i, p) in ports.into_iter().enumerate() {
            release_port(p, i % 2 == 0);
        }
    }

    /// Needs `redis-server` on PATH: a port taken between picking and binding is replaced.
    #[test]
    fn a_port_taken_before_the_server_binds_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = plain_node(dir.path(), false);
        let taken = node.port();
        let _squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, taken)).unwrap();
        node.start(Duration::from_secs(10)).unwrap();
        assert_ne!(node.port(), taken);
        assert_eq!(
            node.cmd(&["PING"]).unwrap(),
            RespValue::Simple("PONG".into())
        );
        let log = std::fs::read_to_string(log_path(dir.path(), taken)).unwrap();
        assert!(log.contains("Address already in use"), "{log}");
    }

    /// Needs `redis-server` on PATH: a bad argument fails fast with the log in the error.
    #[test]
    fn a_server_that_exits_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = plain_node(dir.path(), false);
        node.set_extra(vec!["--no-such-option".into(), "1".into()]);
        let err = node.start(Duration::from_secs(10)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exited"), "{msg}");
        assert!(msg.contains("no-such-option"), "{msg}");
        assert_eq!(node.pid(), None);
    }
}
