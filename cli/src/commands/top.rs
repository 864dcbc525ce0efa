//! `tug top node [NAME]` and `tug top pod [NAME] [-A] [--containers]`: resource usage from
//! the API server's `metrics.k8s.io`, in kubectl's tables.

use crate::client::Client;
use crate::printers::table;
use serde_json::Value;
use std::process::ExitCode;
use tug_api::quantity::Quantity;

#[derive(clap::Subcommand)]
pub enum TopCmd {
    /// CPU and memory of nodes.
    #[command(alias = "nodes", alias = "no")]
    Node { name: Option<String> },
    /// CPU and memory of pods.
    #[command(alias = "pods", alias = "po")]
    Pod {
        name: Option<String>,
        /// Pods of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// A line per container.
        #[arg(long)]
        containers: bool,
    },
}

fn millicores(q: &Value) -> u128 {
    q.as_str().and_then(|s| Quantity::parse(s).ok()).map_or(0, |q| q.millis())
}

fn bytes(q: &Value) -> u128 {
    q.as_str().and_then(|s| Quantity::parse(s).ok()).map_or(0, |q| q.value())
}

fn cpu(q: &Value) -> String {
    format!("{}m", millicores(q))
}

fn mem(q: &Value) -> String {
    format!("{}Mi", bytes(q) >> 20)
}

fn percent(used: u128, of: u128) -> String {
    (used * 100).checked_div(of).map_or_else(|| "<unknown>".into(), |p| format!("{p}%"))
}

async fn get(client: &Client, path: &str) -> Result<Value, String> {
    client.get(path).await.map_err(|e| e.to_string())
}

pub async fn run(client: &Client, cmd: TopCmd, ns: Option<&str>) -> Result<ExitCode, String> {
    let base = "/apis/metrics.k8s.io/v1beta1";
    match cmd {
        TopCmd::Node { name } => {
            let items = match &name {
                Some(n) => vec![get(client, &format!("{base}/nodes/{n}")).await?],
                None => get(client, &format!("{base}/nodes")).await?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            if items.is_empty() {
                return Err("error: metrics not available yet".into());
            }
            let nodes = get(client, "/api/v1/nodes").await?;
            let alloc = |n: &str| -> Value {
                nodes["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["metadata"]["name"] == n)
                    .map(|x| x["status"]["allocatable"].clone())
                    .unwrap_or_default()
            };
            let header: Vec<String> =
                ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"].map(String::from).to_vec();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|m| {
                    let n = m["metadata"]["name"].as_str().unwrap_or_default();
                    let a = alloc(n);
                    vec![
                        n.to_string(),
                        cpu(&m["usage"]["cpu"]),
                        percent(millicores(&m["usage"]["cpu"]), millicores(&a["cpu"])),
                        mem(&m["usage"]["memory"]),
                        percent(bytes(&m["usage"]["memory"]), bytes(&a["memory"])),
                    ]
                })
                .collect();
            print!("{}", table(&header, &rows));
        }
        TopCmd::Pod { name, all_namespaces, containers } => {
            let ns = ns.unwrap_or("default");
            let items = match (&name, all_namespaces) {
                (Some(n), _) => vec![get(client, &format!("{base}/namespaces/{ns}/pods/{n}")).await?],
                (None, true) => get(client, &format!("{base}/pods")).await?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                (None, false) => get(client, &format!("{base}/namespaces/{ns}/pods")).await?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            if items.is_empty() {
                return Err(format!("No resources found in {ns} namespace."));
            }
            let mut header: Vec<String> = Vec::new();
            if all_namespaces {
                header.push("NAMESPACE".into());
            }
            header.extend(if containers {
                ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"].map(String::from).to_vec()
            } else {
                ["NAME", "CPU(cores)", "MEMORY(bytes)"].map(String::from).to_vec()
            });
            let mut rows = Vec::new();
            for m in &items {
                let prefix: Vec<String> = if all_namespaces {
                    vec![m["metadata"]["namespace"].as_str().unwrap_or_default().to_string()]
                } else {
                    vec![]
                };
                let pod = m["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let cs = m["containers"].as_array().cloned().unwrap_or_default();
                if containers {
                    for c in &cs {
                        let mut r = prefix.clone();
                        r.extend([
                            pod.clone(),
                            c["name"].as_str().unwrap_or_default().to_string(),
                            cpu(&c["usage"]["cpu"]),
                            mem(&c["usage"]["memory"]),
                        ]);
                        rows.push(r);
                    }
                } else {
                    let c: u128 = cs.iter().map(|c| millicores(&c["usage"]["cpu"])).sum();
                    let b: u128 = cs.iter().map(|c| bytes(&c["usage"]["memory"])).sum();
                    let mut r = prefix;
                    r.extend([pod, format!("{c}m"), format!("{}Mi", b >> 20)]);
                    rows.push(r);
                }
            }
            print!("{}", table(&header, &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}
