//! `tug describe KIND [NAME...]`, `tug describe KIND/NAME`: kubectl's layout for pods and
//! deployments (the fields an operator reads first, then the containers, conditions and
//! volumes), the spec and status of other kinds, and for every object its `Events:` (newest
//! last; a repeated event as `3m (x5 over 10m)`). Without a name: every object of the kind.

use super::kind;
use crate::client::Client;
use serde_json::Value;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;
use tug_api::columns::human_duration;
use tug_api::object::KindInfo;

pub async fn run(client: &Client, targets: &[String], ns: Option<&str>) -> Result<ExitCode, String> {
    let Some(first) = targets.first() else {
        return Err("error: you must specify the type of resource to describe".into());
    };
    let mut wanted: Vec<(&'static KindInfo, Option<String>)> = Vec::new();
    if first.contains('/') {
        for t in targets {
            let (k, n) = t.split_once('/').unwrap_or((t, ""));
            wanted.push((kind(k)?, Some(n.to_string())));
        }
    } else {
        let info = kind(first)?;
        if targets.len() == 1 {
            wanted.push((info, None));
        }
        wanted.extend(targets[1..].iter().map(|n| (info, Some(n.clone()))));
    }
    let mut objects = Vec::new();
    for (info, name) in wanted {
        let n = info.namespaced.then(|| ns.unwrap_or("default"));
        match name {
            Some(name) => {
                objects.push((info, client.get(&info.path(n, Some(&name))).await.map_err(server_error)?))
            }
            None => {
                let list = client.get(&info.path(n, None)).await.map_err(server_error)?;
                for o in list["items"].as_array().cloned().unwrap_or_default() {
                    objects.push((info, o));
                }
            }
        }
    }
    if objects.is_empty() {
        eprintln!("No resources found in {} namespace.", ns.unwrap_or("default"));
    }
    let now = SystemTime::now();
    for (i, (info, obj)) in objects.iter().enumerate() {
        if i > 0 {
            println!("\n");
        }
        let mut out = match info.kind {
            "Pod" => pod(obj, now),
            "Deployment" => deployment(client, obj).await,
            _ => generic(info, obj),
        };
        out += &events(client, obj, now).await;
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

fn server_error(e: tug_client::http::CallError) -> String {
    match e {
        tug_client::http::CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => e.to_string(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

/// `key=value` lines, the first after the label, the rest under it.
fn map_lines(v: &Value, indent: usize) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect::<Vec<_>>()
            .join(&format!("\n{}", " ".repeat(indent))),
        _ => "<none>".into(),
    }
}

thread_local! {
    /// The column values start at (kubectl's tabwriter aligns each kind's labels: 18 for pods,
    /// 24 for deployments).
    static WIDTH: std::cell::Cell<usize> = const { std::cell::Cell::new(16) };
}

fn field(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let width = WIDTH.with(std::cell::Cell::get);
    let value = value.to_string();
    let _ = writeln!(out, "{:<width$}{}", format!("{label}:"), value.trim_end());
}

fn meta_lines(out: &mut String, obj: &Value, width: usize) {
    WIDTH.with(|w| w.set(width));
    let meta = &obj["metadata"];
    field(out, "Name", s(&meta["name"]));
    if let Some(n) = meta["namespace"].as_str() {
        field(out, "Namespace", n);
    }
}

fn pod(obj: &Value, now: SystemTime) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 18);
    field(&mut out, "Priority", spec["priority"].as_i64().unwrap_or(0));
    if let Some(pc) = spec["priorityClassName"].as_str() {
        field(&mut out, "Priority Class Name", pc);
    }
    field(&mut out, "Service Account", or_none(s(&spec["serviceAccountName"])));
    let node = match (spec["nodeName"].as_str(), st["hostIP"].as_str()) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.to_string(),
        _ => "<none>".into(),
    };
    field(&mut out, "Node", node);
    if let Some(t) = st["startTime"].as_str() {
        field(&mut out, "Start Time", t);
    }
    field(&mut out, "Labels", map_lines(&meta["labels"], 18));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 18));
    let status = tug_api::columns::pod_status(obj, now).status;
    field(&mut out, "Status", status);
    if let Some(r) = st["reason"].as_str() {
        field(&mut out, "Reason", r);
    }
    if let Some(m) = st["message"].as_str() {
        field(&mut out, "Message", m);
    }
    field(&mut out, "IP", or_none(s(&st["podIP"])));
    if let Some(owner) =
        meta["ownerReferences"].as_array().and_then(|o| o.iter().find(|o| o["controller"] == true))
    {
        field(&mut out, "Controlled By", format!("{}/{}", s(&owner["kind"]), s(&owner["name"])));
    }
    for (title, list, statuses) in [
        ("Init Containers", &spec["initContainers"], &st["initContainerStatuses"]),
        ("Containers", &spec["containers"], &st["containerStatuses"]),
    ] {
        let Some(cs) = list.as_array().filter(|c| !c.is_empty()) else { continue };
        let _ = writeln!(out, "{title}:");
        for c in cs {
            let name = s(&c["name"]);
            let cst = statuses
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == name.as_str()))
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(out, "  {name}:");
            let f = |out: &mut String, label: &str, v: String| {
                let _ = writeln!(out, "    {:<18}{v}", format!("{label}:"));
            };
            if let Some(id) = cst["containerID"].as_str() {
                f(&mut out, "Container ID", id.into());
            }
            f(&mut out, "Image", s(&c["image"]));
            if let Some(id) = cst["imageID"].as_str().filter(|i| !i.is_empty()) {
                f(&mut out, "Image ID", id.into());
            }
            let ports: Vec<String> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", s(&p["containerPort"]), p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            f(&mut out, "Port", or_none(ports.join(", ")));
            for (label, key) in [("Command", "command"), ("Args", "args")] {
                if let Some(a) = c[key].as_array() {
                    let _ = writeln!(out, "    {label}:");
                    for x in a {
                        let _ = writeln!(out, "      {}", s(x));
                    }
                }
            }
            state(&mut out, "State", &cst["state"]);
            if cst["lastState"].as_object().is_some_and(|m| !m.is_empty()) {
                state(&mut out, "Last State", &cst["lastState"]);
            }
            f(
                &mut out,
                "Ready",
                (cst["ready"] == true).to_string().replace("true", "True").replace("false", "False"),
            );
            f(&mut out, "Restart Count", cst["restartCount"].as_i64().unwrap_or(0).to_string());
            for (label, key) in [("Limits", "limits"), ("Requests", "requests")] {
                if let Some(m) = c["resources"][key].as_object().filter(|m| !m.is_empty()) {
                    let _ = writeln!(out, "    {label}:");
                    for (k, v) in m {
                        let _ = writeln!(out, "      {k}:  {}", s(v));
                    }
                }
            }
            let env: Vec<String> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| match e.get("value") {
                    Some(v) => format!("{}:  {}", s(&e["name"]), s(v)),
                    None => format!("{}:  <set from a source>", s(&e["name"])),
                })
                .collect();
            container_list(&mut out, "Environment", &env);
            let mounts: Vec<String> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{} from {} ({})",
                        s(&m["mountPath"]),
                        s(&m["name"]),
                        if m["readOnly"] == true { "ro" } else { "rw" }
                    )
                })
                .collect();
            container_list(&mut out, "Mounts", &mounts);
        }
    }
    conditions(&mut out, &st["conditions"], false);
    let volumes: Vec<String> =
        spec["volumes"].as_array().into_iter().flatten().map(|v| s(&v["name"])).collect();
    field(&mut out, "Volumes", if volumes.is_empty() { "<none>".into() } else { String::new() });
    for v in volumes {
        let _ = writeln!(out, "  {v}");
    }
    field(&mut out, "QoS Class", or_none(s(&st["qosClass"])));
    field(&mut out, "Node-Selectors", map_lines(&spec["nodeSelector"], 18));
    let tolerations: Vec<String> = spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut x = s(&t["key"]);
            if let Some(v) = t["value"].as_str() {
                x += &format!("={v}");
            }
            if let Some(e) = t["effect"].as_str() {
                x += &format!(":{e}");
            }
            if t["operator"] == "Exists" && t["key"].is_null() {
                x = "op=Exists".into();
            }
            if let Some(secs) = t["tolerationSeconds"].as_i64() {
                x += &format!(" for {secs}s");
            }
            x
        })
        .collect();
    field(&mut out, "Tolerations", or_none(tolerations.join(&format!("\n{}", " ".repeat(18)))));
    out
}

/// A container's list field: `<none>` on its line, or one item per line under it.
fn container_list(out: &mut String, label: &str, items: &[String]) {
    if items.is_empty() {
        let _ = writeln!(out, "    {:<18}<none>", format!("{label}:"));
        return;
    }
    let _ = writeln!(out, "    {label}:");
    for i in items {
        let _ = writeln!(out, "      {i}");
    }
}

/// `State:  Running` and its details, as kubectl prints a container state.
fn state(out: &mut String, label: &str, st: &Value) {
    let (name, detail) = match st.as_object().and_then(|m| m.iter().next()) {
        Some((k, v)) => (k.as_str(), v.clone()),
        None => ("waiting", Value::Null),
    };
    let title = match name {
        "running" => "Running",
        "terminated" => "Terminated",
        _ => "Waiting",
    };
    let _ = writeln!(out, "    {:<18}{title}", format!("{label}:"));
    let line = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "      {:<16}{v}", format!("{k}:"));
    };
    match name {
        "running" => line(out, "Started", s(&detail["startedAt"])),
        "terminated" => {
            line(out, "Reason", s(&detail["reason"]));
            line(out, "Exit Code", s(&detail["exitCode"]));
            line(out, "Started", s(&detail["startedAt"]));
            line(out, "Finished", s(&detail["finishedAt"]));
        }
        _ => {
            if let Some(r) = detail["reason"].as_str() {
                line(out, "Reason", r.into());
            }
        }
    }
}

fn conditions(out: &mut String, conds: &Value, with_reason: bool) {
    let Some(cs) = conds.as_array().filter(|c| !c.is_empty()) else { return };
    let _ = writeln!(out, "Conditions:");
    if with_reason {
        let _ = writeln!(out, "  {:<16}{:<8}Reason", "Type", "Status");
        let _ = writeln!(out, "  {:<16}{:<8}------", "----", "------");
    } else {
        let _ = writeln!(out, "  {:<28}Status", "Type");
    }
    for c in cs {
        if with_reason {
            let _ = writeln!(out, "  {:<16}{:<8}{}", s(&c["type"]), s(&c["status"]), s(&c["reason"]));
        } else {
            let _ = writeln!(out, "  {:<28}{}", s(&c["type"]), s(&c["status"]));
        }
    }
}

async fn deployment(client: &Client, obj: &Value) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 24);
    field(&mut out, "CreationTimestamp", s(&meta["creationTimestamp"]));
    field(&mut out, "Labels", map_lines(&meta["labels"], 24));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 24));
    let sel: Vec<String> = spec["selector"]["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    field(&mut out, "Selector", sel.join(","));
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let total = n(&st["replicas"]);
    field(
        &mut out,
        "Replicas",
        format!(
            "{} desired | {} updated | {total} total | {} available | {} unavailable",
            spec["replicas"].as_i64().unwrap_or(1),
            n(&st["updatedReplicas"]),
            n(&st["availableReplicas"]),
            n(&st["unavailableReplicas"])
        ),
    );
    let strategy = spec["strategy"]["type"].as_str().unwrap_or("RollingUpdate");
    field(&mut out, "StrategyType", strategy);
    field(&mut out, "MinReadySeconds", n(&spec["minReadySeconds"]));
    if strategy == "RollingUpdate" {
        let ru = &spec["strategy"]["rollingUpdate"];
        let pick = |v: &Value, d: &str| if v.is_null() { d.to_string() } else { s(v) };
        field(
            &mut out,
            "RollingUpdateStrategy",
            format!(
                "{} max unavailable, {} max surge",
                pick(&ru["maxUnavailable"], "25%"),
                pick(&ru["maxSurge"], "25%")
            ),
        );
    }
    let tpl = &spec["template"];
    let _ = writeln!(out, "Pod Template:");
    let _ = writeln!(out, "  Labels:  {}", map_lines(&tpl["metadata"]["labels"], 11));
    let _ = writeln!(out, "  Containers:");
    for c in tpl["spec"]["containers"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "   {}:", s(&c["name"]));
        let _ = writeln!(out, "    Image:        {}", s(&c["image"]));
        let ports: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}/{}", s(&p["containerPort"]), p["protocol"].as_str().unwrap_or("TCP")))
            .collect();
        let _ = writeln!(out, "    Port:         {}", or_none(ports.join(", ")));
    }
    conditions(&mut out, &st["conditions"], true);
    // The ReplicaSets it owns: the one with the current template, and the others.
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let uid = meta["uid"].as_str().unwrap_or_default();
    let rs = client.get(&format!("/apis/apps/v1/namespaces/{ns}/replicasets")).await.unwrap_or_default();
    let owned: Vec<&Value> = rs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|o| o["uid"] == uid))
        })
        .collect();
    let revision = meta["annotations"]["deployment.kubernetes.io/revision"].as_str().unwrap_or("");
    let describe_rs = |r: &&Value| {
        format!(
            "{} ({}/{} replicas created)",
            s(&r["metadata"]["name"]),
            n(&r["status"]["replicas"]),
            n(&r["spec"]["replicas"])
        )
    };
    let (new, old): (Vec<&Value>, Vec<&Value>) = owned.into_iter().partition(|r| {
        r["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str() == Some(revision)
    });
    let old: Vec<String> = old.iter().filter(|r| n(&r["spec"]["replicas"]) > 0).map(describe_rs).collect();
    field(&mut out, "OldReplicaSets", or_none(old.join(", ")));
    field(&mut out, "NewReplicaSet", or_none(new.first().map(describe_rs).unwrap_or_default()));
    out
}

fn generic(info: &KindInfo, obj: &Value) -> String {
    let meta = &obj["metadata"];
    let mut out = String::new();
    meta_lines(&mut out, obj, 14);
    field(&mut out, "Labels", map_lines(&meta["labels"], 14));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 14));
    field(&mut out, "Created", s(&meta["creationTimestamp"]));
    for section in ["spec", "data", "rules", "subjects", "roleRef", "status"] {
        let Some(v) =
            obj.get(section).filter(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
        else {
            continue;
        };
        let v = if section == "data" && info.kind == "Secret" {
            let sizes: serde_json::Map<String, Value> = v
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, d)| (k, format!("{} bytes", s(&d).len() * 3 / 4).into()))
                .collect();
            Value::Object(sizes)
        } else {
            v.clone()
        };
        let text = serde_yaml_ng::to_string(&v).unwrap_or_default();
        let mut title = section.to_string();
        if let Some(f) = title.get_mut(0..1) {
            f.make_ascii_uppercase();
        }
        let _ = writeln!(out, "{title}:");
        for line in text.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The object's events, oldest first, as kubectl's `Events:` section.
async fn events(client: &Client, obj: &Value, now: SystemTime) -> String {
    let meta = &obj["metadata"];
    let uid = meta["uid"].as_str().unwrap_or_default();
    let path = match meta["namespace"].as_str() {
        Some(ns) => format!("/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.uid%3D{uid}"),
        None => format!("/api/v1/events?fieldSelector=involvedObject.uid%3D{uid}"),
    };
    let list = client.get(&path).await.unwrap_or_default();
    let mut items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "Events:  <none>\n".into();
    }
    let at = |e: &Value, k: &str| e[k].as_str().and_then(|t| humantime::parse_rfc3339(t).ok());
    items.sort_by_key(|e| at(e, "lastTimestamp").or_else(|| at(e, "firstTimestamp")));
    let ago = |t: Option<SystemTime>| {
        t.and_then(|t| now.duration_since(t).ok()).map_or_else(|| "<unknown>".into(), human_duration)
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let count = e["count"].as_i64().unwrap_or(1);
            let age = if count > 1 {
                format!("{} (x{count} over {})", ago(at(e, "lastTimestamp")), ago(at(e, "firstTimestamp")))
            } else {
                ago(at(e, "lastTimestamp").or_else(|| at(e, "firstTimestamp")))
            };
            vec![
                s(&e["type"]),
                s(&e["reason"]),
                age,
                e["source"]["component"]
                    .as_str()
                    .or(e["reportingComponent"].as_str())
                    .unwrap_or("")
                    .to_string(),
                s(&e["message"]),
            ]
        })
        .collect();
    let header: Vec<String> =
        ["Type", "Reason", "Age", "From", "Message"].iter().map(|x| x.to_string()).collect();
    let dashes: Vec<String> =
        ["----", "------", "----", "----", "-------"].iter().map(|x| x.to_string()).collect();
    let mut all = vec![dashes];
    all.extend(rows);
    let table = crate::printers::table(&header, &all);
    let mut out = "Events:\n".to_string();
    for line in table.lines() {
        out += &format!("  {line}\n");
    }
    out
}
