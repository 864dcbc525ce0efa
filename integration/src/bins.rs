//! The workspace's binaries for tests: built once per test process with `cargo build` (a
//! no-op when `cargo nextest run --workspace` just built them), or taken from `TUG_BIN_DIR`
//! where there is no cargo (the VM suite's guest).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The path of binary `name` (of workspace package `package`, named for the reader).
///
/// # Panics
/// When the build fails: every test that needs the binary would fail anyway, and the message
/// says why.
pub fn path(package: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TUG_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::probe::workspace_root())
        // The whole workspace, as `make` builds it: a `-p` build unifies dependency features
        // differently and would rebuild (and overwrite) the binaries every time.
        .args(["build", "--quiet", "--workspace", "--bins"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {name} ({package}) failed");
    let p = crate::probe::target_dir().join("debug").join(name);
    map.insert(name.to_string(), p.clone());
    p
}
