//! Root-only state: the daemons' directories are 0700 (0711 where a path below must stay
//! reachable) and files holding secrets 0600, whoever made them. Each daemon applies these on
//! every start, so a directory that `make run`, a package or an older version made with
//! another mode is mended — and the daemon says so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes the directory `path` (and missing parents) and gives it exactly `mode`. Returns a
/// line saying what was mended when it had another mode.
pub fn dir(path: &Path, mode: u32) -> Result<Option<String>, String> {
    let existed = path.exists();
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let said = set(path, mode)?;
    Ok(said.filter(|_| existed))
}

/// Gives the existing file `path` exactly `mode` (a missing file is left alone). Returns a
/// line saying what was mended when it had another mode.
pub fn file(path: &Path, mode: u32) -> Result<Option<String>, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => set(path, mode),
        Ok(_) => Err(format!("{}: not a regular file", path.display())),
        Err(_) => Ok(None),
    }
}

/// Writes `bytes` to `path`, readable by root alone (0600), also when the file existed
/// with another mode.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::io::Write::write_all(&mut f, bytes)
}

fn set(path: &Path, mode: u32) -> Result<Option<String>, String> {
    let had = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode()
        & 0o7777;
    if had == mode {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: setting mode {mode:04o}: {e}", path.display()))?;
    Ok(Some(format!("{} had mode {had:04o}, now {mode:04o}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_modes_are_mended_and_said() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state/deeper");
        assert_eq!(dir(&state, 0o700).unwrap(), None, "a fresh directory is made with the mode, silently");
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let said = dir(&state, 0o700).unwrap().unwrap();
        assert!(said.contains("had mode 0755, now 0700"), "{said}");
        let f = state.join("store");
        assert_eq!(file(&f, 0o600).unwrap(), None, "a missing file is left alone");
        std::fs::write(&f, "secret").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(file(&f, 0o600).unwrap().is_some());
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
