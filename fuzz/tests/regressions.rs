//! Replays every saved fuzz input through its target's check under plain `cargo test`:
//! `fuzz/regressions/<target>/*` (inputs that found bugs, so that they stay fixed) and
//! `fuzz/seeds/<target>/*` (the starting corpus, so that the checks themselves keep passing
//! on known-good input as the code changes).

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["regressions", "seeds"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.map(|e| e.expect("dir entry").path()));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no seeds for {target}");
    for path in files {
        let data = std::fs::read(&path).expect("readable input");
        eprintln!("replaying {}", path.display());
        check(&data);
    }
}

#[test]
fn envelope_decode() {
    replay("envelope_decode", larder_fuzz::envelope_decode::check);
}

#[test]
fn sealed_open() {
    replay("sealed_open", larder_fuzz::sealed_open::check);
}

#[test]
fn rest_codec() {
    replay("rest_codec", larder_fuzz::rest_codec::check);
}

#[test]
fn gateway_request() {
    replay("gateway_request", larder_fuzz::gateway_request::check);
}

#[test]
fn keys_canonical() {
    replay("keys_canonical", larder_fuzz::keys_canonical::check);
}

#[test]
fn resp_values() {
    replay("resp_values", larder_fuzz::resp_values::check);
}

#[test]
fn gateway_policy() {
    replay("gateway_policy", larder_fuzz::gateway_policy::check);
}
