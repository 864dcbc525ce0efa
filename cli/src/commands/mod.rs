//! One module per verb.

pub mod apply;
pub mod auth;
pub mod copy;
pub mod create;
pub mod delete;
pub mod describe;
pub mod drain;
pub mod forward;
pub mod get;
pub mod image;
pub mod join;
pub mod logs;
pub mod modify;
pub mod rollout;
pub mod top;
pub mod workloads;

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

/// A manifest's object placed for sending: its kind, name, namespace (the manifest's, else
/// `-n`, else `default`, for namespaced kinds) and JSON with that namespace in it.
pub fn placed<'a>(
    obj: &'a tug_api::object::Object,
    flag: Option<&'a str>,
) -> (&'static KindInfo, String, Option<&'a str>, serde_json::Value) {
    let info = obj.info();
    let ns = namespace_for(info, obj.metadata().namespace.as_deref(), flag);
    let mut value = obj.to_value();
    if let Some(n) = ns {
        value["metadata"]["namespace"] = n.into();
    }
    (info, obj.metadata().name.clone(), ns, value)
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
        if f.starts_with("http://") || f.starts_with("https://") {
            out.push((f.clone(), fetch(f)?));
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

/// The largest manifest `-f URL` reads.
const URL_LIMIT: usize = 64 << 20;

/// `-f URL`: the manifest at an http(s) URL, read on a thread of its own (the CLI's runtime
/// is single-threaded and busy waiting for it), with kubectl's error for a non-200 answer.
fn fetch(url: &str) -> Result<String, String> {
    let u = url.to_string();
    let job = std::thread::spawn(move || -> Result<String, String> {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .user_agent(concat!("tug/", env!("CARGO_PKG_VERSION")))
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| e.to_string())?;
            let mut resp = client.get(&u).send().await.map_err(|e| {
                // reqwest's own words name the request; its sources say what went wrong.
                let mut why = Vec::new();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    why.push(c.to_string());
                    cause = c.source();
                }
                format!("error: unable to read URL {u:?}: {}", why.join(": "))
            })?;
            let status = resp.status();
            if status != reqwest::StatusCode::OK {
                return Err(format!(
                    "error: unable to read URL {u:?}, server reported {status}, status code={}",
                    status.as_u16()
                ));
            }
            let mut body = Vec::new();
            while let Some(chunk) =
                resp.chunk().await.map_err(|e| format!("error: reading URL {u:?}: {e}"))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > URL_LIMIT {
                    return Err(format!("error: URL {u:?}: the manifest is over {} MiB", URL_LIMIT >> 20));
                }
            }
            String::from_utf8(body).map_err(|_| format!("error: URL {u:?}: the manifest is not UTF-8 text"))
        })
    });
    job.join().map_err(|_| format!("error: reading URL {url:?} failed"))?
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

pub async fn version(client: &Client, output: Option<&str>) -> Result<ExitCode, String> {
    let server = client.get("/version").await;
    match output {
        Some("json") | Some("yaml") => {
            let mut v = serde_json::json!({"clientVersion": {"gitVersion": format!("v{}", tug_api::VERSION), "platform": "linux/amd64"}});
            if let Ok(s) = &server {
                v["serverVersion"] = s.clone();
            }
            if output == Some("json") {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", serde_yaml_ng::to_string(&v).unwrap_or_default());
            }
        }
        Some(o) => return Err(format!("error: --output must be 'yaml' or 'json', not {o:?}")),
        None => println!("Client Version: v{}", tug_api::VERSION),
    }
    match server {
        Ok(v) => {
            if output.is_none() {
                println!("Server Version: {}", v["gitVersion"].as_str().unwrap_or("unknown"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `tug api-resources`: what the server serves, from its discovery documents, in kubectl's
/// columns (`-o name` for names only, `--namespaced=true|false` to filter).
pub async fn api_resources(
    client: &Client,
    output: Option<&str>,
    namespaced: Option<bool>,
) -> Result<ExitCode, String> {
    let mut rows = Vec::new();
    let mut lists = vec![client.get("/api/v1").await.map_err(|e| e.to_string())?];
    let groups = client.get("/apis").await.map_err(|e| e.to_string())?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        if let Some(gv) = g["preferredVersion"]["groupVersion"].as_str() {
            lists.push(client.get(&format!("/apis/{gv}")).await.map_err(|e| e.to_string())?);
        }
    }
    for list in &lists {
        let gv = list["groupVersion"].as_str().unwrap_or_default();
        for r in list["resources"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or_default();
            if name.contains('/') || namespaced.is_some_and(|n| r["namespaced"] != n) {
                continue;
            }
            let short: Vec<&str> =
                r["shortNames"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
            rows.push(vec![
                name.to_string(),
                short.join(","),
                gv.to_string(),
                r["namespaced"].as_bool().unwrap_or(false).to_string(),
                r["kind"].as_str().unwrap_or_default().to_string(),
            ]);
        }
    }
    rows.sort();
    if output == Some("name") {
        for r in rows {
            let group = r[2].rsplit_once('/').map_or("", |(g, _)| g);
            println!("{}", if group.is_empty() { r[0].clone() } else { format!("{}.{group}", r[0]) });
        }
        return Ok(ExitCode::SUCCESS);
    }
    let header: Vec<String> =
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"].iter().map(|s| s.to_string()).collect();
    print!("{}", crate::printers::table(&header, &rows));
    Ok(ExitCode::SUCCESS)
}

/// `tug explain KIND[.field.path]`: the field's type and description, and its fields, from the
/// server's OpenAPI v3 document (made from the same types the server decodes with).
pub async fn explain(client: &Client, what: &str) -> Result<ExitCode, String> {
    let mut parts = what.split('.');
    let info = kind(parts.next().unwrap_or_default())?;
    let gv = info.api_prefix().trim_start_matches('/').to_string();
    let doc = client.get(&format!("/openapi/v3/{gv}")).await.map_err(|e| e.to_string())?;
    let schemas = &doc["components"]["schemas"];
    let root = schemas
        .as_object()
        .and_then(|m| {
            m.values().find(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g["kind"] == info.kind))
            })
        })
        .cloned()
        .ok_or_else(|| format!("error: no schema for {}", info.kind))?;
    let resolve = |s: &serde_json::Value| -> serde_json::Value {
        let mut s = s.clone();
        // `Option<T>` is `anyOf: [T, null]`: T it is.
        if let Some(first) =
            s["anyOf"].as_array().and_then(|a| a.iter().find(|x| x["enum"] != serde_json::json!([null])))
        {
            let description = s["description"].clone();
            s = first.clone();
            if s["description"].is_null() {
                s["description"] = description;
            }
        }
        for _ in 0..4 {
            let target = s["$ref"].as_str().or_else(|| s["allOf"][0]["$ref"].as_str()).map(str::to_string);
            match target.and_then(|r| r.rsplit('/').next().map(str::to_string)) {
                Some(name) => {
                    let description = s["description"].clone();
                    s = schemas[&name].clone();
                    if s["description"].is_null() {
                        s["description"] = description;
                    }
                }
                None => break,
            }
        }
        if s["type"] == "array" {
            let items = s["items"].clone();
            if items.get("$ref").is_some() {
                let name =
                    items["$ref"].as_str().and_then(|r| r.rsplit('/').next()).unwrap_or_default().to_string();
                let mut inner = schemas[&name].clone();
                inner["x-tug-list"] = true.into();
                if inner["description"].is_null() {
                    inner["description"] = s["description"].clone();
                }
                return inner;
            }
        }
        s
    };
    let mut current = root;
    let mut field_name = String::new();
    for p in parts {
        let next = current["properties"]
            .get(p)
            .cloned()
            .ok_or_else(|| format!("error: field \"{p}\" does not exist"))?;
        current = resolve(&next);
        field_name = p.to_string();
    }
    let type_of = |s: &serde_json::Value| -> String {
        let base = s["type"].as_str().map(str::to_string).unwrap_or_else(|| {
            if s.get("properties").is_some() || s.get("$ref").is_some() {
                "Object".into()
            } else {
                "<unknown>".into()
            }
        });
        let base = match base.as_str() {
            "object" => "Object".to_string(),
            other => other.to_string(),
        };
        if s["x-tug-list"] == true { format!("[]{base}") } else { base }
    };
    println!("GROUP:      {}", info.group);
    println!("KIND:       {}", info.kind);
    println!(
        "VERSION:    {}
",
        info.version
    );
    if !field_name.is_empty() {
        println!(
            "FIELD: {field_name} <{}>
",
            type_of(&current)
        );
    }
    println!("DESCRIPTION:");
    println!(
        "    {}
",
        current["description"].as_str().unwrap_or("<empty>").replace('\n', "\n    ")
    );
    if let Some(props) = current["properties"].as_object() {
        println!("FIELDS:");
        for (k, v) in props {
            let v = resolve(v);
            println!("  {k}\t<{}>", type_of(&v));
            let d = v["description"].as_str().unwrap_or("<no description>");
            println!("    {}\n", d.lines().next().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}
