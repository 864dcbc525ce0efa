//! `tug join https://HOST:PORT --token TOKEN [--name NAME]`: get a client certificate from a
//! control plane, pinning its CA by the hash in the token, and write the credentials that
//! `tug --server https://HOST:PORT` then uses.

use std::path::Path;
use std::process::ExitCode;

pub async fn run(url: &str, token: &str, name: Option<&str>, dir: &Path) -> Result<ExitCode, String> {
    let host = tug_client::join::hostname();
    let name = name.unwrap_or(&host);
    tug_client::join::join(url, token, name, dir).await.map_err(|e| {
        // The server's refusals read as kubectl prints them; everything else is ours.
        if e.starts_with("Error from server") { e } else { format!("error: {e}") }
    })?;
    println!("joined {url} as {name}: credentials in {}", dir.display());
    println!("use them with: tug --server {url} get nodes");
    Ok(ExitCode::SUCCESS)
}
