//! `tug port-forward POD|KIND/NAME [LOCAL:]REMOTE...`: listens on loopback and, for each
//! connection, asks the API server for one to the pod's port (`pods/NAME/portforward` with
//! the `tug-portforward` upgrade, relayed by the node's agent), then copies bytes both ways.

use crate::client::Client;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// The pod (or pod/NAME, or deploy|rs|job|svc/NAME for one of their pods).
    pub pod: String,
    /// `LOCAL:REMOTE`, `:REMOTE` (any free local port) or `PORT` (the same on both sides).
    #[arg(required = true)]
    pub ports: Vec<String>,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

/// The upgrade protocol of a raw port forward.
pub const PROTOCOL: &str = "tug-portforward";

fn parse(spec: &str) -> Result<(u16, u16), String> {
    let bad = || format!("error: invalid port spec {spec:?}: use LOCAL:REMOTE, :REMOTE or PORT");
    match spec.split_once(':') {
        Some((l, r)) => {
            let r: u16 = r.parse().map_err(|_| bad())?;
            let l: u16 = if l.is_empty() { 0 } else { l.parse().map_err(|_| bad())? };
            Ok((l, r))
        }
        None => {
            let p: u16 = spec.parse().map_err(|_| bad())?;
            Ok((p, p))
        }
    }
}

pub async fn run(client: &Client, a: &ForwardArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default").to_string();
    let pod = super::logs::resolve_pod(client, &ns, &a.pod).await?;
    let mut tasks = Vec::new();
    for spec in &a.ports {
        let (local, remote) = parse(spec)?;
        let listener = tokio::net::TcpListener::bind((a.address.as_str(), local))
            .await
            .map_err(|e| format!("error: unable to listen on {}:{local}: {e}", a.address))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        println!("Forwarding from {bound} -> {remote}");
        let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/portforward?ports={remote}");
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                println!("Handling connection for {}", bound.port());
                let (client, path) = (client.clone(), path.clone());
                tokio::spawn(async move {
                    match client.upgrade(hyper::Method::POST, &path, PROTOCOL).await {
                        Ok(mut remote) => {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut remote).await;
                        }
                        Err(e) => {
                            eprintln!("error: an error occurred forwarding {} -> {remote}: {e}", bound.port())
                        }
                    }
                });
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse(":80").unwrap(), (0, 80));
        assert_eq!(parse("5000").unwrap(), (5000, 5000));
        assert!(parse("x:1").is_err());
    }
}
