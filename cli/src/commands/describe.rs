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
            "ReplicaSet" => replicaset(client, obj).await,
            "Service" => service(client, obj).await,
            "Node" => node(client, obj, now).await,
            "Job" => job(obj),
            "PersistentVolumeClaim" => claim(client, obj).await,
            "PodDisruptionBudget" => budget(obj),
            "HorizontalPodAutoscaler" => autoscaler(obj),
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
    pod_template(&mut out, &spec["template"]);
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

/// A template's labels and containers, as kubectl prints them under `Pod Template:`.
fn pod_template(out: &mut String, tpl: &Value) {
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
        if let Some(cmd) = c["command"].as_array().filter(|c| !c.is_empty()) {
            let _ = writeln!(out, "    Command:");
            for part in cmd {
                let _ = writeln!(out, "      {}", s(part));
            }
        }
        for (label, key) in [("Limits", "limits"), ("Requests", "requests")] {
            if let Some(m) = c["resources"][key].as_object().filter(|m| !m.is_empty()) {
                let _ = writeln!(out, "    {label}:");
                for (k, v) in m {
                    let _ = writeln!(out, "      {k}:  {}", s(v));
                }
            }
        }
        let env = c["env"].as_array().cloned().unwrap_or_default();
        if env.is_empty() {
            let _ = writeln!(out, "    Environment:  <none>");
        } else {
            let _ = writeln!(out, "    Environment:");
            for e in env {
                let value = match &e["value"] {
                    Value::String(v) => v.clone(),
                    _ => "<set from a reference>".into(),
                };
                let _ = writeln!(out, "      {}:  {value}", s(&e["name"]));
            }
        }
    }
}

/// `Selector:` — matchLabels then matchExpressions, comma-separated.
fn selector_text(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<String> = e["values"].as_array().into_iter().flatten().map(s).collect();
        parts.push(match s(&e["operator"]).as_str() {
            "Exists" => s(&e["key"]),
            "DoesNotExist" => format!("!{}", s(&e["key"])),
            op => format!("{} {} ({})", s(&e["key"]), op.to_ascii_lowercase(), values.join(",")),
        });
    }
    parts.join(",")
}

/// The pods a controller owns (by uid), listed in its namespace.
async fn owned_pods(client: &Client, obj: &Value) -> Vec<Value> {
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let uid = meta["uid"].as_str().unwrap_or_default();
    let list = client.get(&format!("/api/v1/namespaces/{ns}/pods")).await.unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|o| o["uid"] == uid))
        })
        .cloned()
        .collect()
}

fn phase_count(pods: &[Value], phase: &str) -> usize {
    pods.iter().filter(|p| p["status"]["phase"].as_str().unwrap_or("Pending") == phase).count()
}

fn controlled_by(out: &mut String, meta: &Value) {
    let owner = meta["ownerReferences"].as_array().and_then(|o| o.iter().find(|o| o["controller"] == true));
    if let Some(owner) = owner {
        field(out, "Controlled By", format!("{}/{}", s(&owner["kind"]), s(&owner["name"])));
    }
}

async fn replicaset(client: &Client, obj: &Value) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 16);
    field(&mut out, "Selector", selector_text(&spec["selector"]));
    field(&mut out, "Labels", map_lines(&meta["labels"], 16));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 16));
    controlled_by(&mut out, meta);
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    field(
        &mut out,
        "Replicas",
        format!("{} current / {} desired", n(&st["replicas"]), spec["replicas"].as_i64().unwrap_or(1)),
    );
    let pods = owned_pods(client, obj).await;
    field(
        &mut out,
        "Pods Status",
        format!(
            "{} Running / {} Waiting / {} Succeeded / {} Failed",
            phase_count(&pods, "Running"),
            phase_count(&pods, "Pending"),
            phase_count(&pods, "Succeeded"),
            phase_count(&pods, "Failed")
        ),
    );
    pod_template(&mut out, &spec["template"]);
    conditions(&mut out, &st["conditions"], true);
    out
}

async fn service(client: &Client, obj: &Value) -> String {
    let (meta, spec) = (&obj["metadata"], &obj["spec"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 26);
    field(&mut out, "Labels", map_lines(&meta["labels"], 26));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 26));
    let selector: Vec<String> =
        spec["selector"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
    field(&mut out, "Selector", or_none(selector.join(",")));
    let type_ = spec["type"].as_str().unwrap_or("ClusterIP");
    field(&mut out, "Type", type_);
    field(&mut out, "IP Family Policy", spec["ipFamilyPolicy"].as_str().unwrap_or("SingleStack"));
    let families: Vec<String> = spec["ipFamilies"].as_array().into_iter().flatten().map(s).collect();
    field(&mut out, "IP Families", if families.is_empty() { "IPv4".into() } else { families.join(",") });
    field(&mut out, "IP", or_none(s(&spec["clusterIP"])));
    let ips: Vec<String> = spec["clusterIPs"].as_array().into_iter().flatten().map(s).collect();
    field(&mut out, "IPs", or_none(if ips.is_empty() { s(&spec["clusterIP"]) } else { ips.join(",") }));
    if let Some(ips) = obj["status"]["loadBalancer"]["ingress"].as_array().filter(|i| !i.is_empty()) {
        let ips: Vec<String> = ips.iter().map(|i| s(&i["ip"])).collect();
        field(&mut out, "LoadBalancer Ingress", ips.join(", "));
    }
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or_default();
    let ep = client.get(&format!("/api/v1/namespaces/{ns}/endpoints/{name}")).await.unwrap_or_default();
    for p in spec["ports"].as_array().into_iter().flatten() {
        let pname = p["name"].as_str().filter(|n| !n.is_empty()).unwrap_or("<unset>");
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        field(&mut out, "Port", format!("{pname}  {}/{proto}", s(&p["port"])));
        let target = if p["targetPort"].is_null() { s(&p["port"]) } else { s(&p["targetPort"]) };
        field(&mut out, "TargetPort", format!("{target}/{proto}"));
        if let Some(np) = p["nodePort"].as_i64() {
            field(&mut out, "NodePort", format!("{pname}  {np}/{proto}"));
        }
        // The endpoints behind this port, by its name.
        let mut eps = Vec::new();
        for sub in ep["subsets"].as_array().into_iter().flatten() {
            let port = sub["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|ep| ep["name"].as_str().unwrap_or("") == p["name"].as_str().unwrap_or(""));
            if let Some(port) = port {
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    eps.push(format!("{}:{}", s(&a["ip"]), s(&port["port"])));
                }
            }
        }
        field(&mut out, "Endpoints", eps.join(","));
    }
    field(&mut out, "Session Affinity", spec["sessionAffinity"].as_str().unwrap_or("None"));
    if type_ == "NodePort" || type_ == "LoadBalancer" {
        field(
            &mut out,
            "External Traffic Policy",
            spec["externalTrafficPolicy"].as_str().unwrap_or("Cluster"),
        );
    }
    field(&mut out, "Internal Traffic Policy", spec["internalTrafficPolicy"].as_str().unwrap_or("Cluster"));
    out
}

/// Millicores or bytes of a quantity (0 when unreadable).
fn amount(v: &Value, cpu: bool) -> u128 {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.as_i64().map(|n| n.to_string()))
        .and_then(|q| tug_api::quantity::Quantity::parse(&q).ok())
        .map_or(0, |q| if cpu { q.millis() } else { q.value() })
}

/// A sum as kubectl shows it beside its share of allocatable: `350m (17%)`, `70Mi (1%)`.
fn with_share(total: u128, allocatable: u128, cpu: bool) -> String {
    let pct = (total * 100).checked_div(allocatable).unwrap_or(0);
    let text = if total == 0 {
        "0".to_string()
    } else if cpu {
        if total % 1000 == 0 { (total / 1000).to_string() } else { format!("{total}m") }
    } else if total % (1 << 20) == 0 {
        format!("{}Mi", total >> 20)
    } else if total % 1024 == 0 {
        format!("{}Ki", total >> 10)
    } else {
        total.to_string()
    };
    format!("{text} ({pct}%)")
}

async fn node(client: &Client, obj: &Value, now: SystemTime) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 20);
    let roles: Vec<String> = meta["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_string))
        .collect();
    field(&mut out, "Roles", or_none(roles.join(",")));
    field(&mut out, "Labels", map_lines(&meta["labels"], 20));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 20));
    field(&mut out, "CreationTimestamp", s(&meta["creationTimestamp"]));
    let taints: Vec<String> = spec["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let v = t["value"].as_str().map(|v| format!("={v}")).unwrap_or_default();
            format!("{}{v}:{}", s(&t["key"]), s(&t["effect"]))
        })
        .collect();
    field(&mut out, "Taints", or_none(taints.join("\n                    ")));
    field(&mut out, "Unschedulable", spec["unschedulable"] == true);
    let conds: Vec<Vec<String>> = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            ["type", "status", "lastHeartbeatTime", "lastTransitionTime", "reason", "message"]
                .iter()
                .map(|k| s(&c[*k]))
                .collect()
        })
        .collect();
    if !conds.is_empty() {
        let header: Vec<String> =
            ["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        let mut rows = vec![header.iter().map(|h| "-".repeat(h.len())).collect::<Vec<_>>()];
        rows.extend(conds);
        let _ = writeln!(out, "Conditions:");
        for line in crate::printers::table(&header, &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "Addresses:");
    for a in st["addresses"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}:  {}", s(&a["type"]), s(&a["address"]));
    }
    for (label, key) in [("Capacity", "capacity"), ("Allocatable", "allocatable")] {
        let _ = writeln!(out, "{label}:");
        for (k, v) in st[key].as_object().into_iter().flatten() {
            let _ = writeln!(out, "  {k}:  {}", s(v));
        }
    }
    let info = &st["nodeInfo"];
    let _ = writeln!(out, "System Info:");
    for (label, key) in [
        ("Machine ID", "machineID"),
        ("Boot ID", "bootID"),
        ("Kernel Version", "kernelVersion"),
        ("OS Image", "osImage"),
        ("Operating System", "operatingSystem"),
        ("Architecture", "architecture"),
        ("Container Runtime Version", "containerRuntimeVersion"),
        ("Kubelet Version", "kubeletVersion"),
    ] {
        let _ = writeln!(out, "  {:<27}{}", format!("{label}:"), s(&info[key]));
    }
    if let Some(cidr) = spec["podCIDR"].as_str() {
        field(&mut out, "PodCIDR", cidr);
        let cidrs: Vec<String> = spec["podCIDRs"].as_array().into_iter().flatten().map(s).collect();
        field(&mut out, "PodCIDRs", if cidrs.is_empty() { cidr.to_string() } else { cidrs.join(",") });
    }
    // The pods on it that still hold resources, and their sums against allocatable.
    let name = meta["name"].as_str().unwrap_or_default();
    let list = client
        .get(&format!("/api/v1/pods?fieldSelector={}", super::get::encode(&format!("spec.nodeName={name}"))))
        .await
        .unwrap_or_default();
    let pods: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    let alloc = &st["allocatable"];
    let (acpu, amem, adisk) = (
        amount(&alloc["cpu"], true),
        amount(&alloc["memory"], false),
        amount(&alloc["ephemeral-storage"], false),
    );
    let sum = |p: &Value, kind: &str, res: &str, cpu: bool| -> u128 {
        p["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| amount(&c["resources"][kind][res], cpu))
            .sum()
    };
    let _ = writeln!(out, "Non-terminated Pods:          ({} in total)", pods.len());
    let header: Vec<String> =
        ["Namespace", "Name", "CPU Requests", "CPU Limits", "Memory Requests", "Memory Limits", "Age"]
            .iter()
            .map(|x| x.to_string())
            .collect();
    let mut rows = vec![header.iter().map(|h| "-".repeat(h.len())).collect::<Vec<_>>()];
    let mut totals = [0u128; 6];
    for p in &pods {
        let v = [
            sum(p, "requests", "cpu", true),
            sum(p, "limits", "cpu", true),
            sum(p, "requests", "memory", false),
            sum(p, "limits", "memory", false),
            sum(p, "requests", "ephemeral-storage", false),
            sum(p, "limits", "ephemeral-storage", false),
        ];
        for (t, x) in totals.iter_mut().zip(v) {
            *t += x;
        }
        rows.push(vec![
            s(&p["metadata"]["namespace"]),
            s(&p["metadata"]["name"]),
            with_share(v[0], acpu, true),
            with_share(v[1], acpu, true),
            with_share(v[2], amem, false),
            with_share(v[3], amem, false),
            tug_api::columns::age(p, now),
        ]);
    }
    for line in crate::printers::table(&header, &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "Allocated resources:");
    let _ = writeln!(out, "  (Total limits may be over 100 percent, i.e., overcommitted.)");
    let header: Vec<String> = ["Resource", "Requests", "Limits"].iter().map(|x| x.to_string()).collect();
    let rows = vec![
        vec!["--------".into(), "--------".into(), "------".into()],
        vec!["cpu".into(), with_share(totals[0], acpu, true), with_share(totals[1], acpu, true)],
        vec!["memory".into(), with_share(totals[2], amem, false), with_share(totals[3], amem, false)],
        vec![
            "ephemeral-storage".into(),
            with_share(totals[4], adisk, false),
            with_share(totals[5], adisk, false),
        ],
    ];
    for line in crate::printers::table(&header, &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn job(obj: &Value) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 18);
    field(&mut out, "Selector", or_none(selector_text(&spec["selector"])));
    field(&mut out, "Labels", map_lines(&meta["labels"], 18));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 18));
    controlled_by(&mut out, meta);
    let n = |v: &Value, d: i64| v.as_i64().unwrap_or(d);
    field(&mut out, "Parallelism", n(&spec["parallelism"], 1));
    field(
        &mut out,
        "Completions",
        if spec["completions"].is_null() { "<unset>".into() } else { s(&spec["completions"]) },
    );
    field(&mut out, "Completion Mode", spec["completionMode"].as_str().unwrap_or("NonIndexed"));
    field(&mut out, "Suspend", spec["suspend"] == true);
    field(&mut out, "Backoff Limit", n(&spec["backoffLimit"], 6));
    if let Some(t) = st["startTime"].as_str() {
        field(&mut out, "Start Time", t);
    }
    if let Some(t) = st["completionTime"].as_str() {
        field(&mut out, "Completed At", t);
        let parse = |t: &str| humantime::parse_rfc3339(t).ok();
        if let (Some(a), Some(b)) = (st["startTime"].as_str().and_then(parse), parse(t)) {
            if let Ok(d) = b.duration_since(a) {
                field(&mut out, "Duration", human_duration(d));
            }
        }
    }
    field(
        &mut out,
        "Pods Statuses",
        format!(
            "{} Active ({} Ready) / {} Succeeded / {} Failed",
            n(&st["active"], 0),
            n(&st["ready"], 0),
            n(&st["succeeded"], 0),
            n(&st["failed"], 0)
        ),
    );
    pod_template(&mut out, &spec["template"]);
    conditions(&mut out, &st["conditions"], true);
    out
}

async fn claim(client: &Client, obj: &Value) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 15);
    field(&mut out, "StorageClass", s(&spec["storageClassName"]));
    field(&mut out, "Status", st["phase"].as_str().unwrap_or("Pending"));
    field(&mut out, "Volume", s(&spec["volumeName"]));
    field(&mut out, "Labels", map_lines(&meta["labels"], 15));
    field(&mut out, "Annotations", map_lines(&meta["annotations"], 15));
    let finalizers: Vec<String> = meta["finalizers"].as_array().into_iter().flatten().map(s).collect();
    field(&mut out, "Finalizers", format!("[{}]", finalizers.join(" ")));
    field(&mut out, "Capacity", s(&st["capacity"]["storage"]));
    let modes: Vec<String> = st["accessModes"]
        .as_array()
        .or(spec["accessModes"].as_array())
        .into_iter()
        .flatten()
        .map(|m| match m.as_str().unwrap_or_default() {
            "ReadWriteOnce" => "RWO".to_string(),
            "ReadOnlyMany" => "ROX".to_string(),
            "ReadWriteMany" => "RWX".to_string(),
            "ReadWriteOncePod" => "RWOP".to_string(),
            other => other.to_string(),
        })
        .collect();
    field(&mut out, "Access Modes", modes.join(","));
    field(&mut out, "VolumeMode", spec["volumeMode"].as_str().unwrap_or("Filesystem"));
    // The pods that mount it.
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or_default();
    let list = client.get(&format!("/api/v1/namespaces/{ns}/pods")).await.unwrap_or_default();
    let users: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["spec"]["volumes"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["persistentVolumeClaim"]["claimName"] == name))
        })
        .map(|p| s(&p["metadata"]["name"]))
        .collect();
    field(&mut out, "Used By", or_none(users.join("\n               ")));
    out
}

/// kubectl's HPA layout: one column for every label, the metrics as `current / target`.
fn autoscaler(obj: &Value) -> String {
    let (meta, spec, st) = (&obj["metadata"], &obj["spec"], &obj["status"]);
    let mut rows: Vec<(String, String)> = vec![("Name".into(), s(&meta["name"]))];
    if let Some(n) = meta["namespace"].as_str() {
        rows.push(("Namespace".into(), n.into()));
    }
    rows.push(("Labels".into(), map_lines(&meta["labels"], 0)));
    rows.push(("Annotations".into(), map_lines(&meta["annotations"], 0)));
    rows.push(("CreationTimestamp".into(), s(&meta["creationTimestamp"])));
    let r = &spec["scaleTargetRef"];
    rows.push(("Reference".into(), format!("{}/{}", s(&r["kind"]), s(&r["name"]))));
    rows.push(("Metrics".into(), "( current / target )".into()));
    let current = st["currentMetrics"].as_array().cloned().unwrap_or_default();
    for m in spec["metrics"].as_array().into_iter().flatten() {
        let key = if m["type"] == "ContainerResource" { "containerResource" } else { "resource" };
        let (name, target) = (&m[key]["name"], &m[key]["target"]);
        let now = current
            .iter()
            .find(|c| c["type"] == m["type"] && c[key]["name"] == *name)
            .map(|c| c[key]["current"].clone());
        let on = match m[key]["container"].as_str() {
            Some(c) => format!("resource {} of container \"{c}\" on pods", s(name)),
            None if m["type"] == "Resource" => format!("resource {} on pods", s(name)),
            None => format!(
                "\"{}\" on {} metric",
                s(&m[&s(&m["type"]).to_ascii_lowercase()]["metric"]["name"]),
                s(&m["type"])
            ),
        };
        if target["type"] == "Utilization" {
            let cur = now.as_ref().map_or_else(
                || "<unknown>".to_string(),
                |c| format!("{}% ({})", s(&c["averageUtilization"]), s(&c["averageValue"])),
            );
            rows.push((
                format!("  {on}  (as a percentage of request)"),
                format!("{cur} / {}%", s(&target["averageUtilization"])),
            ));
        } else {
            let cur = now.map_or_else(|| "<unknown>".to_string(), |c| s(&c["averageValue"]));
            rows.push((format!("  {on}"), format!("{cur} / {}", s(&target["averageValue"]))));
        }
    }
    rows.push(("Min replicas".into(), spec["minReplicas"].as_i64().unwrap_or(1).to_string()));
    rows.push(("Max replicas".into(), s(&spec["maxReplicas"])));
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    rows.push((
        format!("{} pods", s(&r["kind"])),
        format!("{} current / {} desired", n(&st["currentReplicas"]), n(&st["desiredReplicas"])),
    ));
    let width = rows.iter().map(|(l, _)| l.len() + 3).max().unwrap_or(16);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(
            out,
            "{:<width$}{}",
            format!("{label}:"),
            value.replace('\n', &format!("\n{}", " ".repeat(width)))
        );
    }
    if let Some(cs) = st["conditions"].as_array().filter(|c| !c.is_empty()) {
        let _ = writeln!(out, "Conditions:");
        let header: Vec<String> =
            ["Type", "Status", "Reason", "Message"].iter().map(|x| x.to_string()).collect();
        let mut table = vec![header.iter().map(|h| "-".repeat(h.len())).collect::<Vec<_>>()];
        for c in cs {
            table.push(vec![s(&c["type"]), s(&c["status"]), s(&c["reason"]), s(&c["message"])]);
        }
        for line in crate::printers::table(&header, &table).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn budget(obj: &Value) -> String {
    let (spec, st) = (&obj["spec"], &obj["status"]);
    let mut out = String::new();
    meta_lines(&mut out, obj, 16);
    if !spec["minAvailable"].is_null() {
        field(&mut out, "Min available", s(&spec["minAvailable"]));
    }
    if !spec["maxUnavailable"].is_null() {
        field(&mut out, "Max unavailable", s(&spec["maxUnavailable"]));
    }
    field(&mut out, "Selector", or_none(selector_text(&spec["selector"])));
    let _ = writeln!(out, "Status:");
    let n = |k: &str| st[k].as_i64().unwrap_or(0);
    let _ = writeln!(out, "    Allowed disruptions:  {}", n("disruptionsAllowed"));
    let _ = writeln!(out, "    Current:              {}", n("currentHealthy"));
    let _ = writeln!(out, "    Desired:              {}", n("desiredHealthy"));
    let _ = writeln!(out, "    Total:                {}", n("expectedPods"));
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
