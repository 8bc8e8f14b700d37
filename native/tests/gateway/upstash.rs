//! The official Upstash clients against the gateway: `@upstash/redis` from npm
//! (`tests/edge/upstash-compat.test.mjs`, run with `node --test`) and `upstash-redis` from
//! PyPI (`tests/edge/upstash_compat_test.py`, run with `unittest`).
//!
//! Needs Node.js, `tests/edge/node_modules` and `tests/edge/.venv`
//! (`bash scripts/install-edge-tools.sh npm`).
//! Without them the test is skipped, unless `LARDER_EDGE_TESTS=require`, which makes that a
//! failure (the edge scripts and CI set it).

use std::path::PathBuf;
use std::process::Command;

use crate::support::{FULL, READ_ONLY, Setup};

pub(crate) fn edge_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/edge"))
}

/// Whether a missing tool fails the test (true) or skips it.
pub(crate) fn required() -> bool {
    std::env::var("LARDER_EDGE_TESTS").is_ok_and(|v| v == "require")
}

pub(crate) fn skip_or_fail(why: &str) {
    assert!(!required(), "LARDER_EDGE_TESTS=require but {why}");
    eprintln!("skipped: {why}");
}

/// Runs an official client's test script (`program args` in tests/edge) against a fresh
/// gateway; its output, or `None` when the client cannot run here and that is allowed.
async fn run_client(
    program: PathBuf,
    args: &'static [&'static str],
) -> Option<std::process::Output> {
    let dir = edge_dir();
    let s = Setup::start().await;
    let url = s.gateway.url();
    let name = s.name.clone();
    let shown = program.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(args)
            .current_dir(&dir)
            .env("UPSTASH_REDIS_REST_URL", &url)
            .env("UPSTASH_REDIS_REST_TOKEN", FULL)
            .env("LARDER_READONLY_TOKEN", READ_ONLY)
            .env("LARDER_GATEWAY_NAME", &name)
            .output()
    })
    .await
    .unwrap();
    match output {
        Ok(o) => Some(o),
        Err(e) => {
            skip_or_fail(&format!("cannot run {shown}: {e}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_upstash_client_passes_against_the_gateway() {
    if !edge_dir().join("node_modules/@upstash/redis").exists() {
        return skip_or_fail(
            "tests/edge/node_modules is missing (bash scripts/install-edge-tools.sh npm)",
        );
    }
    let args = &["--test", "--test-reporter=spec", "upstash-compat.test.mjs"];
    let Some(output) = run_client(PathBuf::from("node"), args).await else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "node --test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("fail 0"), "{stdout}");
}

/// The official `upstash-redis` Python client (PyPI) against the gateway
/// (`tests/edge/upstash_compat_test.py`, run with `unittest` in `tests/edge/.venv`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_upstash_python_client_passes_against_the_gateway() {
    let python = edge_dir().join(".venv/bin/python");
    if !python.exists() {
        return skip_or_fail(
            "tests/edge/.venv is missing (bash scripts/install-edge-tools.sh npm)",
        );
    }
    let args = &["-m", "unittest", "-v", "upstash_compat_test"];
    let Some(output) = run_client(python, args).await else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(output.status.success(), "unittest failed:\n{stderr}");
    assert!(stderr.contains("OK"), "{stderr}");
    assert!(stderr.contains("Ran 8 tests"), "{stderr}");
}
