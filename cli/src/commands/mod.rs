//! One module per verb.

pub mod apply;
pub mod auth;
pub mod create;
pub mod delete;
pub mod describe;
pub mod get;
pub mod image;
pub mod join;
pub mod logs;
pub mod modify;
pub mod rollout;
pub mod top;

use crate::client::Client;
use std::process::ExitCode;
use tug_api::object::{KindInfo, lookup};

/// A kind from the command line, or kubectl's error.
pub fn kind(name: &str) -> Result<&'static KindInfo, String> {
    lookup(name).ok_or_else(|| format!("error: the server doesn't have a resource type \"{name}\""))
}

/// The namespace a namespaced object goes to: the manifest's, else `-n`, else `default`.
pub fn namespace_for<'a>(
    info: &KindInfo,
    manifest: Option<&'a str>,
    flag: Option<&'a str>,
) -> Option<&'a str> {
    info.namespaced.then(|| manifest.or(flag).unwrap_or("default"))
}

/// Reads manifests from files, directories (`*.yaml`, `*.yml`, `*.json`, sorted) and `-`.
pub fn read_sources(files: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| format!("error: reading stdin: {e}"))?;
            out.push(("-".to_string(), text));
            continue;
        }
        let path = std::path::Path::new(f);
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| format!("error: {f}: {e}"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            for p in entries {
                let text = std::fs::read_to_string(&p).map_err(|e| format!("error: {}: {e}", p.display()))?;
                out.push((p.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("error: the path \"{f}\" does not exist ({e})"))?;
            out.push((f.clone(), text));
        }
    }
    Ok(out)
}

/// Loads and validates every source before anything is sent: one invalid document means
/// nothing is applied.
pub fn load_all(files: &[String]) -> Result<Vec<tug_api::object::Object>, String> {
    let mut objects = Vec::new();
    for (name, text) in read_sources(files)? {
        let objs = tug_api::manifest::load(&text).map_err(|e| format!("error: {name}: {e}"))?;
        objects.extend(objs);
    }
    Ok(objects)
}

pub async fn version(client: &Client) -> Result<ExitCode, String> {
    println!("Client Version: v{}", tug_api::VERSION);
    match client.get("/version").await {
        Ok(v) => {
            println!("Server Version: {}", v["gitVersion"].as_str().unwrap_or("unknown"));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.to_string()),
    }
}
