//! `tug get KIND [NAME] [-A] [-l SEL] [-o wide|yaml|json|name] [-w]`.

use super::kind;
use crate::client::Client;
use crate::printers;
use serde_json::Value;
use std::process::ExitCode;
use std::time::SystemTime;

#[derive(clap::Args)]
pub struct GetArgs {
    /// Kind: pods, deployments (deploy), services (svc), configmaps (cm), secrets, namespaces (ns), replicasets (rs).
    kind: String,
    /// One object's name.
    name: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Output format: wide, yaml, json or name.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Objects asked for per request (kubectl's pages); 0: all at once.
    #[arg(long = "chunk-size", default_value_t = 500)]
    chunk_size: usize,
}

pub async fn run(client: &Client, a: &GetArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let info = kind(&a.kind)?;
    let output = a.output.as_deref().unwrap_or("");
    if !["", "wide", "yaml", "json", "name"].contains(&output) {
        return Err(format!(
            "error: unable to match a printer suitable for the output format \"{output}\", allowed formats are: json,name,wide,yaml"
        ));
    }
    let namespace = if a.all_namespaces || !info.namespaced { None } else { Some(ns.unwrap_or("default")) };
    let mut query = Vec::new();
    if let Some(s) = &a.selector {
        tug_api::labels::Selector::parse(s).map_err(|e| format!("error: {e}"))?;
        query.push(format!("labelSelector={}", encode(s)));
    }
    if let Some(name) = &a.name {
        query.push(format!("fieldSelector=metadata.name={}", encode(name)));
    }
    let path = info.path(namespace, None);
    if let (Some(name), false) = (&a.name, a.watch) {
        // One object: read it by name, as kubectl does (a list would need `list` rights).
        let obj = match client.get(&info.path(namespace, Some(name))).await {
            Ok(o) => o,
            Err(tug_client::http::CallError::Server(s)) => {
                return Err(format!("Error from server ({}): {}", s.reason, s.message));
            }
            Err(e) => return Err(e.to_string()),
        };
        print_objects(std::slice::from_ref(&obj), info.kind, output, false, true);
        return Ok(ExitCode::SUCCESS);
    }
    let q = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    // Page by page, as kubectl does (`--chunk-size`): no request asks for everything.
    let mut items = Vec::new();
    let mut next = String::new();
    let list = loop {
        let mut page_q = query.clone();
        if a.chunk_size > 0 {
            page_q.push(format!("limit={}", a.chunk_size));
        }
        if !next.is_empty() {
            page_q.push(format!("continue={}", encode(&next)));
        }
        let page_q = if page_q.is_empty() { String::new() } else { format!("?{}", page_q.join("&")) };
        let mut page = client.get(&format!("{path}{page_q}")).await.map_err(|e| e.to_string())?;
        if let Some(Value::Array(more)) = page.get_mut("items").map(Value::take) {
            items.extend(more);
        }
        next = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if next.is_empty() {
            break page;
        }
    };
    if let (Some(name), true) = (&a.name, items.is_empty()) {
        let resource = if info.group.is_empty() {
            info.plural.to_string()
        } else {
            format!("{}.{}", info.plural, info.group)
        };
        return Err(format!("Error from server (NotFound): {resource} \"{name}\" not found"));
    }
    let with_ns = a.all_namespaces && info.namespaced;
    print_objects(&items, info.kind, output, with_ns, a.name.is_some());
    if items.is_empty() && output.is_empty() {
        match namespace {
            Some(n) => eprintln!("No resources found in {n} namespace."),
            None => eprintln!("No resources found"),
        }
    }
    if a.watch {
        let mut rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let sep = if q.is_empty() { "?" } else { "&" };
        // A stream the server ends (a restart, a replica going away) is taken up again from
        // the last revision seen, as kubectl's retrying watcher does; an ERROR event ends it.
        let mut pause = std::time::Duration::from_millis(250);
        loop {
            let wpath = format!("{path}{q}{sep}watch=true&resourceVersion={rv}");
            let mut failed = None;
            let result = client
                .watch(&wpath, |event| {
                    let obj = &event["object"];
                    if event["type"] == "ERROR" {
                        failed = Some(obj["message"].as_str().unwrap_or("watch failed").to_string());
                        return false;
                    }
                    if let Some(r) = obj["metadata"]["resourceVersion"].as_str() {
                        rv = r.to_string();
                    }
                    print_rows(std::slice::from_ref(obj), output == "wide", with_ns);
                    true
                })
                .await;
            if let Some(message) = failed {
                return Err(format!("error: {message}"));
            }
            match result {
                Ok(()) => pause = std::time::Duration::from_millis(250),
                Err(e @ tug_client::http::CallError::Server(_)) => return Err(e.to_string()),
                Err(_) => pause = (pause * 2).min(std::time::Duration::from_secs(5)),
            }
            tokio::time::sleep(pause).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_objects(items: &[Value], kind: &str, output: &str, with_ns: bool, single: bool) {
    let whole = || {
        if single {
            items[0].clone()
        } else {
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
        }
    };
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&whole()).unwrap_or_default()),
        "yaml" => print!("{}", serde_yaml_ng::to_string(&whole()).unwrap_or_default()),
        "name" => {
            for i in items {
                let info = tug_api::object::lookup(kind).map(|k| k.qualified_singular()).unwrap_or_default();
                println!("{info}/{}", i["metadata"]["name"].as_str().unwrap_or_default());
            }
        }
        _ if items.is_empty() => {}
        _ => {
            let wide = output == "wide";
            let mut header: Vec<String> =
                printers::headers(kind, wide).into_iter().map(String::from).collect();
            if with_ns {
                header.insert(0, "NAMESPACE".into());
            }
            let rows = rows(items, wide, with_ns);
            print!("{}", printers::table(&header, &rows));
        }
    }
}

fn rows(items: &[Value], wide: bool, with_ns: bool) -> Vec<Vec<String>> {
    let now = SystemTime::now();
    items
        .iter()
        .map(|i| {
            let mut r = printers::row(i, wide, now);
            if with_ns {
                r.insert(0, i["metadata"]["namespace"].as_str().unwrap_or_default().to_string());
            }
            r
        })
        .collect()
}

fn print_rows(items: &[Value], wide: bool, with_ns: bool) {
    let rows = rows(items, wide, with_ns);
    print!("{}", printers::table(&[], &rows));
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
