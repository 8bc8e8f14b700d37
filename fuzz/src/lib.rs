//! The checks behind larder's fuzz targets, one module per target.
//!
//! Each module has `check(data: &[u8])`: the fuzz target in `fuzz_targets/` calls it with
//! libFuzzer's input, and `tests/regressions.rs` replays every saved input under
//! `regressions/<target>/` through it in plain `cargo test`. A check panics (and so reports a
//! finding) on a panic inside larder or on a broken invariant, which the module names.

pub mod envelope_decode;
pub mod gateway_policy;
pub mod gateway_request;
pub mod keys_canonical;
pub mod resp_values;
pub mod rest_codec;
pub mod sealed_open;

/// The tokio runtime the async targets run on (one per process: building one per input
/// would dominate the time).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}
