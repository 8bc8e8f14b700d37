//! [`Workerd`]: Cloudflare's Workers runtime (workerd, from npm) serving a built Worker, for
//! end-to-end tests.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/edge` of this repository, where `npm ci` installs workerd.
pub fn edge_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/edge"))
}

/// The workerd binary: `WORKERD_BIN`, else the platform binary from npm under
/// [`edge_dir`] (not the `.bin/workerd` wrapper script: killing the wrapper would leave
/// workerd running).
pub fn workerd_bin() -> PathBuf {
    std::env::var_os("WORKERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let platform = if cfg!(target_arch = "aarch64") {
                "workerd-linux-arm64"
            } else {
                "workerd-linux-64"
            };
            edge_dir().join(format!("node_modules/@cloudflare/{platform}/bin/workerd"))
        })
}

/// workerd serving one Worker (built by worker-build: `index.js` and `index_bg.wasm`) on a
/// socket bound here and passed by file descriptor, so there is no port race. The process
/// is killed when the handle drops.
#[derive(Debug)]
pub struct Workerd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Workerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Workerd {
    /// Starts workerd serving the Worker in `build` with text `bindings` (name, value),
    /// outbound network open to loopback. Returns once the process runs; the socket already
    /// accepts connections, which workerd answers once it has loaded the Worker.
    ///
    /// # Errors
    ///
    /// When the Worker's files or workerd are missing, or the process cannot start.
    pub fn start(build: &Path, bindings: &[(&str, &str)]) -> io::Result<Workerd> {
        let bin = workerd_bin();
        for need in [
            build.join("index.js"),
            build.join("index_bg.wasm"),
            bin.clone(),
        ] {
            if !need.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is missing", need.display()),
                ));
            }
        }
        let dir = tempfile::tempdir()?;
        for f in ["index.js", "index_bg.wasm"] {
            std::fs::copy(build.join(f), dir.path().join(f))?;
        }
        let bindings: String = bindings
            .iter()
            .map(|(name, value)| format!("    (name = {name:?}, text = {value:?}),\n"))
            .collect();
        let config = format!(
            r#"using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", http = (), service = "main") ],
);
const worker :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
{bindings}  ],
  globalOutbound = "internet",
);
"#
        );
        std::fs::write(dir.path().join("config.capnp"), config)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("config.capnp")
            .arg(format!("--socket-fd=http={fd}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls (fcntl, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(listener);
        Ok(Workerd {
            child,
            url,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Waits until `GET path` answers 200 (the Worker is loaded), for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when it did not.
    pub fn wait_until_serving(&self, path: &str, timeout: Duration) -> io::Result<()> {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ok = (|| -> io::Result<bool> {
                let mut s = TcpStream::connect(&addr)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )?;
                let mut head = [0u8; 12];
                s.read_exact(&mut head)?;
                Ok(&head[9..12] == b"200")
            })();
            if ok.unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("workerd did not answer GET {path} with 200 within {timeout:?}"),
        ))
    }
}
