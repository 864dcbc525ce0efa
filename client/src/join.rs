//! Joining a control plane over TLS with its join token (`tug::<CA hash>::<secret>`): the CA is
//! pinned by the hash in the token, the answer is a client certificate, written with the CA
//! as `ca.crt`, `client.crt`, `client.key` into a credentials directory.

use crate::http::{CallError, Client};
use hyper::Method;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const TOKEN_SHAPE: &str = "expected the join token tug-scheduler prints (tug::<ca hash>::<secret>)";

/// The CA hash in a join token, or what is wrong with it.
pub fn token_ca_hash(token: &str) -> Result<&str, String> {
    let parts: Vec<&str> = token.split("::").collect();
    match parts.as_slice() {
        ["tug", hash, secret] if hash.len() == 64 && !secret.is_empty() => Ok(hash),
        _ => Err(TOKEN_SHAPE.to_string()),
    }
}

/// Asks the control plane at `url` for a certificate named `name` and writes the credentials
/// into `dir`.
pub async fn join(url: &str, token: &str, name: &str, dir: &Path) -> Result<(), String> {
    let hash = token_ca_hash(token).map_err(|e| format!("--token: {e}"))?;
    let client = Client::tls(url, crate::tls::pinned_config(hash)).map_err(|e| format!("{e:#}"))?;
    let body = serde_json::json!({"name": name}).to_string().into_bytes();
    let answer = match client.call_authorized(Method::POST, "/join", body, &format!("Bearer {token}")).await {
        Ok(v) => v,
        Err(CallError::Server(s)) => return Err(format!("Error from server ({}): {}", s.reason, s.message)),
        Err(e) => return Err(e.to_string()),
    };
    let field = |f: &str| answer[f].as_str().ok_or_else(|| format!("the server's answer has no {f}"));
    write_credentials(dir, field("ca")?, field("cert")?, field("key")?)
}

/// Writes `ca.crt`, `client.crt` and `client.key` into `dir`. The credentials are the user's
/// alone: the directory 0700, the key 0600 (also when an earlier run left other modes).
pub fn write_credentials(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for (file, text, mode) in [("ca.crt", ca, 0o644), ("client.crt", cert, 0o644), ("client.key", key, 0o600)]
    {
        let path = dir.join(file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// This host's name, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        let h = "a".repeat(64);
        assert_eq!(token_ca_hash(&format!("tug::{h}::s")), Ok(h.as_str()));
        assert!(token_ca_hash("tug::short::s").is_err());
        assert!(token_ca_hash(&format!("k3s::{h}::s")).is_err());
        assert!(token_ca_hash(&format!("tug::{h}::")).is_err());
    }
}
