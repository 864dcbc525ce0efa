//! `tug describe KIND NAME`: the object's identity, then its spec and status as YAML.

use super::kind;
use crate::client::Client;
use std::process::ExitCode;

pub async fn run(client: &Client, k: &str, name: &str, ns: Option<&str>) -> Result<ExitCode, String> {
    let info = kind(k)?;
    let n = info.namespaced.then(|| ns.unwrap_or("default"));
    let obj = client.get(&info.path(n, Some(name))).await.map_err(|e| e.to_string())?;
    let meta = &obj["metadata"];
    let map = |v: &serde_json::Value| -> String {
        match v.as_object() {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("\n              "),
            _ => "<none>".into(),
        }
    };
    println!("Name:         {}", meta["name"].as_str().unwrap_or_default());
    if let Some(n) = meta["namespace"].as_str() {
        println!("Namespace:    {n}");
    }
    println!("Labels:       {}", map(&meta["labels"]));
    println!("Annotations:  {}", map(&meta["annotations"]));
    println!("Created:      {}", meta["creationTimestamp"].as_str().unwrap_or_default());
    for section in ["spec", "data", "status"] {
        if let Some(v) = obj.get(section).filter(|v| !v.is_null()) {
            let v = if section == "data" && info.kind == "Secret" {
                let keys: serde_json::Map<String, serde_json::Value> = v
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, d)| {
                        (k, format!("{} bytes", d.as_str().unwrap_or_default().len() * 3 / 4).into())
                    })
                    .collect();
                serde_json::Value::Object(keys)
            } else {
                v.clone()
            };
            let text = serde_yaml_ng::to_string(&v).unwrap_or_default();
            println!("{}:", capitalize(section));
            for line in text.lines() {
                println!("  {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}
