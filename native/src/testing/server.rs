//! A standalone Redis server.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{self, Process};
use super::resp::RespValue;
use super::{STANDALONE_TIMEOUT, new_dir};

/// A standalone `redis-server` on a free 127.0.0.1 port, in its own temp dir.
///
/// Dropping the handle SIGKILLs and reaps the process (also during panic unwinding), then
/// deletes the directory.
///
/// ```no_run
/// use larder_native::testing::RedisServer;
///
/// let mut server = RedisServer::start().unwrap();
/// let url = server.url(); // "redis://127.0.0.1:PORT/"
/// server.kill();
/// server.restart().unwrap(); // same port, same dir
/// # drop(url);
/// ```
#[derive(Debug)]
pub struct RedisServer {
    // Declared before `dir`: the process dies before its directory is removed.
    process: Process,
    dir: TempDir,
    startup_timeout: Duration,
}

/// Options for [`RedisServer`]; from [`RedisServer::builder`].
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    password: Option<String>,
    args: Vec<OsString>,
    startup_timeout: Duration,
}

impl RedisServerBuilder {
    /// Requires clients to `AUTH` with this password (`--requirepass`). The harness's own
    /// probes authenticate, and [`RedisServer::url`] carries it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Appends one raw `redis-server` argument (`.arg("--maxmemory").arg("1mb")`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several raw `redis-server` arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long to wait for `PING` to be answered (default 10 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server and waits until it answers `PING`. On a readiness failure the error
    /// carries the tail of the server log.
    pub fn start(self) -> io::Result<RedisServer> {
        let dir = new_dir()?;
        let mut extra = Vec::new();
        if let Some(password) = &self.password {
            extra.push("--requirepass".into());
            extra.push(password.into());
        }
        extra.extend(self.args);
        let mut process = Process::new(
            dir.path(),
            false,
            Box::new(|port, dir| Ok(process::base_args(port, dir))),
            extra,
            self.password,
        )?;
        process.start(self.startup_timeout)?;
        Ok(RedisServer {
            process,
            dir,
            startup_timeout: self.startup_timeout,
        })
    }
}

impl RedisServer {
    /// Starts a server with default options (no password).
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::builder().start()
    }

    /// Options: password, extra arguments, startup timeout.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder {
            password: None,
            args: Vec::new(),
            startup_timeout: STANDALONE_TIMEOUT,
        }
    }

    /// The TCP port (kept across [`kill`](Self::kill) and [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        self.process.addr()
    }

    /// `"redis://127.0.0.1:PORT/"`, or `"redis://:PASSWORD@127.0.0.1:PORT/"` with a password
    /// (percent-encoded).
    pub fn url(&self) -> String {
        match self.process.password() {
            Some(password) => format!("redis://:{}@{}/", percent_encode(password), self.addr()),
            None => format!("redis://{}/", self.addr()),
        }
    }

    /// The password set with [`RedisServerBuilder::password`].
    pub fn password(&self) -> Option<&str> {
        self.process.password()
    }

    /// The pid of the running process; `None` after [`kill`](Self::kill) or
    /// [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILLs the process and reaps it (a crash: clients see resets). Port and directory
    /// are kept, so [`restart`](Self::restart) comes back on the same address.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the process cleanly (SIGTERM, up to 5 s, then SIGKILL). Port and directory are
    /// kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(5));
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it answers `PING`. The data is gone (no persistence).
    pub fn restart(&mut self) -> io::Result<()> {
        self.process.restart(self.startup_timeout)
    }

    /// Sends one command with the harness's mini client (authenticating if needed).
    pub fn cmd<S: AsRef<[u8]>>(&self, args: &[S]) -> io::Result<RespValue> {
        self.process.cmd(args)
    }

    /// The server's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        process::log_path(self.process.dir(), self.port())
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encodes_reserved_bytes() {
        assert_eq!(super::percent_encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
        assert_eq!(super::percent_encode("Az09-._~"), "Az09-._~");
    }
}
