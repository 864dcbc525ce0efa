//! `tug cp SRC DEST`, one side `POD:PATH` (`NAMESPACE/POD:PATH`): files and directories
//! through `tar` run in the container, as kubectl does it. Into the pod, a tar stream made
//! here goes to `tar -xmf - -C DIR`; out of it, `tar cf - -C DIR NAME` is unpacked here, every
//! entry checked to stay under the destination (no absolute paths, no `..`, no links out).

use crate::client::Client;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use tug_api::frame;

#[derive(clap::Args)]
pub struct CopyArgs {
    pub src: String,
    pub dest: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
}

/// `[NS/]POD:PATH` → (namespace, pod, path); a local path otherwise.
fn remote(spec: &str) -> Option<(Option<String>, String, String)> {
    let (pod, path) = spec.split_once(':')?;
    if pod.is_empty() || pod.contains('/') && pod.matches('/').count() > 1 {
        return None;
    }
    let (ns, pod) = match pod.split_once('/') {
        Some((ns, p)) => (Some(ns.to_string()), p.to_string()),
        None => (None, pod.to_string()),
    };
    Some((ns, pod, path.to_string()))
}

/// Runs `command` in the pod with `input` as its stdin: (stdout, stderr, exit code).
async fn exec_bytes(
    client: &Client,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
    input: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>, i64), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let enc = super::get::encode;
    let mut q: Vec<String> = command.iter().map(|c| format!("command={}", enc(c))).collect();
    q.push("stdin=true".into());
    if let Some(c) = container {
        q.push(format!("container={}", enc(c)));
    }
    let path = format!("/api/v1/namespaces/{ns}/pods/{}/exec?{}", enc(pod), q.join("&"));
    let io = client
        .upgrade(hyper::Method::POST, &path, tug_api::tunnel::EXEC_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        for chunk in input.chunks(32 << 10) {
            if wr.write_all(&frame::encode(frame::STDIN, chunk)).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(&frame::encode(frame::CLOSE_STDIN, &[])).await;
        std::future::pending::<()>().await;
    });
    let (mut out, mut err, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 64 << 10];
    let code = 'read: loop {
        while let Some((kind, payload)) = frame::decode(&mut pending) {
            match kind {
                frame::STDOUT => out.extend_from_slice(&payload),
                frame::STDERR => err.extend_from_slice(&payload),
                frame::EXIT => {
                    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
                    break 'read v["code"].as_i64().unwrap_or(1);
                }
                _ => {}
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break 'read -1,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    };
    writer.abort();
    Ok((out, err, code))
}

/// Why the container's tar failed: its own words, else its exit code, or the stream's early end.
fn failure(code: i64, stderr: &[u8]) -> String {
    let said = String::from_utf8_lossy(stderr).trim().to_string();
    match code {
        _ if !said.is_empty() => said,
        -1 => "the connection to the container ended before tar's exit status arrived".into(),
        c => format!("tar exited with code {c}"),
    }
}

/// A tar of `local` with its top entry named `name`.
fn pack(local: &Path, name: &str) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let meta = std::fs::symlink_metadata(local).map_err(|e| format!("error: {}: {e}", local.display()))?;
    let r = if meta.is_dir() { b.append_dir_all(name, local) } else { b.append_path_with_name(local, name) };
    r.map_err(|e| format!("error: {}: {e}", local.display()))?;
    b.into_inner().map_err(|e| e.to_string())
}

/// Unpacks `tar` under `dest`, the archive's top entry `top` renamed to `dest`'s own name;
/// an entry that would land outside `dest` is refused.
fn unpack(tar_bytes: &[u8], top: &str, dest: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(format!(
                "error: refusing the archive entry {}: it leaves the destination",
                path.display()
            ));
        }
        let rest = path.strip_prefix(top).map(Path::to_path_buf).unwrap_or_else(|_| path.clone());
        let target: PathBuf = if rest.as_os_str().is_empty() { dest.to_path_buf() } else { dest.join(rest) };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // A link could point anywhere on this machine: not followed, not made.
            eprintln!("tug cp: skipping the link {}", path.display());
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("error: {}: {e}", target.display()))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("error: {}: {e}", parent.display()))?;
        }
        let mut f =
            std::fs::File::create(&target).map_err(|e| format!("error: {}: {e}", target.display()))?;
        std::io::copy(&mut entry, &mut f).map_err(|e| format!("error: {}: {e}", target.display()))?;
    }
    Ok(())
}

pub async fn run(client: &Client, a: &CopyArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let default_ns = ns.unwrap_or("default").to_string();
    let split = |p: &str| -> (String, String) {
        let p = p.trim_end_matches('/');
        match p.rsplit_once('/') {
            Some((d, n)) => (if d.is_empty() { "/".into() } else { d.into() }, n.into()),
            None => (".".into(), p.into()),
        }
    };
    match (remote(&a.src), remote(&a.dest)) {
        (None, Some((pns, pod, path))) => {
            let ns = pns.unwrap_or(default_ns);
            let (dir, name) = split(&path);
            let bytes = pack(Path::new(&a.src), &name)?;
            let (_, err, code) = exec_bytes(
                client,
                &ns,
                &pod,
                a.container.as_deref(),
                &["tar", "-xmf", "-", "-C", &dir],
                bytes,
            )
            .await?;
            if code != 0 {
                return Err(format!("error: copying into {pod}:{path}: {}", failure(code, &err)));
            }
            Ok(ExitCode::SUCCESS)
        }
        (Some((pns, pod, path)), None) => {
            let ns = pns.unwrap_or(default_ns);
            let (dir, name) = split(&path);
            let (out, err, code) = exec_bytes(
                client,
                &ns,
                &pod,
                a.container.as_deref(),
                &["tar", "cf", "-", "-C", &dir, &name],
                Vec::new(),
            )
            .await?;
            if code != 0 {
                return Err(format!("error: copying {pod}:{path}: {}", failure(code, &err)));
            }
            let dest = Path::new(&a.dest);
            let dest = if dest.is_dir() { dest.join(&name) } else { dest.to_path_buf() };
            unpack(&out, &name, &dest)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => Err("error: one of src or dest must be a remote file specification (POD:PATH)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_a_round_trip_that_stays_in_its_destination() {
        assert_eq!(remote("web:/tmp/x"), Some((None, "web".into(), "/tmp/x".into())));
        assert_eq!(remote("ns/web:/tmp/x"), Some((Some("ns".into()), "web".into(), "/tmp/x".into())));
        assert_eq!(remote("./local/file"), None);
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a.txt"), "a").unwrap();
        let t = pack(&src, "copied").unwrap();
        let dest = dir.path().join("out");
        unpack(&t, "copied", &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("sub/a.txt")).unwrap(), "a");
        // An entry naming `..` is refused.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "x", &b"x"[..]).unwrap();
        let mut bytes = b.into_inner().unwrap();
        bytes[..100].fill(0);
        bytes[..4].copy_from_slice(b"../x");
        let mut h2 = tar::Header::from_byte_slice(&bytes[..512]).clone();
        h2.set_cksum();
        bytes[..512].copy_from_slice(h2.as_bytes());
        assert!(unpack(&bytes, "x", &dir.path().join("o2")).unwrap_err().contains("leaves the destination"));
    }
}
