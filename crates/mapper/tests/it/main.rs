//! Integration tests of the mapper crate.

mod c4bb;
mod formulary;
mod partd;

/// This package's directory, as `cargo test` gives it when the tests run. (The path baked in
/// at build time can name another clone when clones share a target directory and a stale
/// test binary is taken as fresh.)
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
