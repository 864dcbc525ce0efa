//! `tug join https://HOST:PORT --token TOKEN [--name NAME]`: get a client certificate from a
//! control plane, pinning its CA by the hash in the token, and write the credentials that
//! `tug --server https://HOST:PORT` then uses.

use crate::client::{CallError, Client};
use hyper::Method;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

pub async fn run(url: &str, token: &str, name: Option<&str>, dir: &Path) -> Result<ExitCode, String> {
    let parts: Vec<&str> = token.split("::").collect();
    let [prefix, hash, _secret] = parts.as_slice() else {
        return Err(
            "error: --token: expected the join token tug-scheduler prints (tug::<ca hash>::<secret>)".into(),
        );
    };
    if *prefix != "tug" || hash.len() != 64 {
        return Err(
            "error: --token: expected the join token tug-scheduler prints (tug::<ca hash>::<secret>)".into(),
        );
    }
    let host = nix_hostname();
    let name = name.unwrap_or(&host);
    let client = Client::tls(url, crate::tls::pinned_config(hash)).map_err(|e| format!("error: {e:#}"))?;
    let body = serde_json::json!({"name": name}).to_string().into_bytes();
    let answer = match client.call_authorized(Method::POST, "/join", body, &format!("Bearer {token}")).await {
        Ok(v) => v,
        Err(CallError::Server(s)) => return Err(format!("Error from server ({}): {}", s.reason, s.message)),
        Err(e) => return Err(e.to_string()),
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("error: {}: {e}", dir.display()))?;
    for (file, field, mode) in
        [("ca.crt", "ca", 0o644), ("client.crt", "cert", 0o644), ("client.key", "key", 0o600)]
    {
        let text =
            answer[field].as_str().ok_or_else(|| format!("error: the server's answer has no {field}"))?;
        let path = dir.join(file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("error: {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .map_err(|e| format!("error: {}: {e}", path.display()))?;
    }
    println!("joined {url} as {name}: credentials in {}", dir.display());
    println!("use them with: tug --server {url} get nodes");
    Ok(ExitCode::SUCCESS)
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
