//! `tug create namespace|configmap|secret generic`.

use crate::client::{CallError, Client};
use base64::Engine;
use hyper::Method;
use serde_json::{Map, json};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum CreateCmd {
    /// Create a namespace.
    #[command(alias = "ns")]
    Namespace { name: String },
    /// Create a configmap from literals and files.
    #[command(alias = "cm")]
    Configmap {
        name: String,
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
    /// Create a secret.
    #[command(subcommand)]
    Secret(SecretCmd),
}

#[derive(clap::Subcommand)]
pub enum SecretCmd {
    /// An Opaque secret from literals and files.
    Generic {
        name: String,
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
}

/// `key=value` literals and `[key=]path` files into a map.
fn entries(literals: &[String], files: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for l in literals {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("error: invalid literal source {l}, expected key=value"))?;
        out.push((k.to_string(), v.as_bytes().to_vec()));
    }
    for f in files {
        let (k, p) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), p.to_string()),
            None => (
                std::path::Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                f.clone(),
            ),
        };
        let bytes = std::fs::read(&p).map_err(|e| format!("error: {p}: {e}"))?;
        out.push((k, bytes));
    }
    Ok(out)
}

pub async fn run(client: &Client, cmd: CreateCmd, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let (kind, obj) = match cmd {
        CreateCmd::Namespace { name } => {
            ("namespace", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        }
        CreateCmd::Configmap { name, literals, files } => {
            let mut data = Map::new();
            for (k, v) in entries(&literals, &files)? {
                let text = String::from_utf8(v).map_err(|_| {
                    format!("error: {k}: not UTF-8 text (binaryData is not supported by create configmap)")
                })?;
                data.insert(k, text.into());
            }
            (
                "configmap",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}),
            )
        }
        CreateCmd::Secret(SecretCmd::Generic { name, literals, files }) => {
            let mut data = Map::new();
            for (k, v) in entries(&literals, &files)? {
                data.insert(k, base64::engine::general_purpose::STANDARD.encode(v).into());
            }
            (
                "secret",
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": ns}, "data": data}),
            )
        }
    };
    let text = obj.to_string();
    let objects = tug_api::manifest::load(&text).map_err(|e| format!("error: {e}"))?;
    let o = &objects[0];
    let info = o.info();
    let path = info.path(o.metadata().namespace.as_deref(), None);
    match client
        .call(Method::POST, &path, "application/json", serde_json::to_vec(&o.to_value()).unwrap_or_default())
        .await
    {
        Ok((v, _)) => {
            println!("{kind}/{} created", v["metadata"]["name"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(CallError::Server(s)) => Err(format!("Error from server ({}): {}", s.reason, s.message)),
        Err(e) => Err(e.to_string()),
    }
}
