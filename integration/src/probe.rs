//! The static `tug-probe` binary, for running inside containers.
//!
//! `make` builds it with `target-feature=+crt-static` for the host triple, so it runs in a
//! busybox rootfs with no libc. Tests call [`path`]; when the binary is missing (a test run
//! straight from `cargo`) or older than its sources, it is built once on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target triple the probe is built for; naming it keeps the static build's flags out of
/// the host build's cache.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The workspace's target directory (honouring `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// The workspace root, one level above this crate.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The path of the static probe, built on first use if it is not there yet.
///
/// # Panics
/// When the probe cannot be built: every test that needs it would fail anyway, and the
/// message says why.
pub fn path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = target_dir().join(TRIPLE).join("release").join("tug-probe");
        // In the VM suite's guest there is no cargo: the host built the probe beforehand.
        if std::env::var_os("TUG_IN_VM").is_none() && is_stale(&path) {
            build().unwrap_or_else(|e| panic!("building the static tug-probe: {e}"));
        }
        path
    })
}

/// Whether the binary is missing or older than any of the probe's sources.
fn is_stale(binary: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(binary) else { return true };
    let src = workspace_root().join("integration/probe/src");
    let sources = std::fs::read_dir(src).into_iter().flatten().flatten().map(|e| e.path());
    sources.chain([workspace_root().join("integration/probe/Cargo.toml")]).any(|p| modified(&p) > Some(built))
}

fn build() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "tug-probe", "--target", TRIPLE])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() { Ok(()) } else { Err(format!("cargo exited with {status}")) }
}
