//! Verbs that make or compare objects: `run`, `expose`, `create deployment|job|cronjob|service`,
//! `replace -f`, `diff -f`, and `wait`. Each prints kubectl's line.

use super::{kind, load_all};
use crate::client::Client;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tug_client::{CallError, Method};

fn server(e: CallError) -> String {
    match e {
        CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => format!("error: {e}"),
    }
}

async fn post(client: &Client, path: &str, obj: &Value, dry: Option<&str>) -> Result<Value, String> {
    let q = match dry {
        Some("server") => "?dryRun=All&fieldManager=tug",
        _ => "?fieldManager=tug",
    };
    if dry == Some("client") {
        return Ok(obj.clone());
    }
    client
        .call(Method::POST, &format!("{path}{q}"), "application/json", obj.to_string().into_bytes())
        .await
        .map(|r| r.0)
        .map_err(server)
}

fn dry_suffix(dry: Option<&str>) -> &'static str {
    match dry {
        Some("server") => " (server dry run)",
        Some("client") => " (dry run)",
        _ => "",
    }
}

#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    pub name: String,
    #[arg(long)]
    pub image: String,
    /// Never (the default: a pod that runs once), OnFailure or Always.
    #[arg(long, default_value = "Never")]
    pub restart: String,
    /// The container's port.
    #[arg(long)]
    pub port: Option<u16>,
    /// `KEY=VALUE` (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// Labels, `k=v,k=v` (default: run=NAME).
    #[arg(short = 'l', long)]
    pub labels: Option<String>,
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// server or client.
    #[arg(long)]
    pub dry_run: Option<String>,
    /// The command and its arguments, after `--`.
    pub command: Vec<String>,
}

fn labels_of(spec: Option<&str>, default: (&str, &str)) -> Result<Value, String> {
    let mut m = serde_json::Map::new();
    match spec {
        Some(s) => {
            for kv in s.split(',').filter(|k| !k.is_empty()) {
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("error: invalid label {kv:?}"))?;
                m.insert(k.into(), v.into());
            }
        }
        None => {
            m.insert(default.0.into(), default.1.into());
        }
    }
    Ok(Value::Object(m))
}

pub async fn run(client: &Client, a: &RunArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let mut c = json!({"name": a.name, "image": a.image, "imagePullPolicy": a.image_pull_policy});
    if !a.command.is_empty() {
        c["command"] = json!(a.command);
    }
    if let Some(p) = a.port {
        c["ports"] = json!([{"containerPort": p}]);
    }
    if !a.env.is_empty() {
        let env: Result<Vec<Value>, String> = a
            .env
            .iter()
            .map(|e| {
                e.split_once('=')
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .ok_or_else(|| format!("error: invalid env {e:?}"))
            })
            .collect();
        c["env"] = Value::Array(env?);
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": a.name, "namespace": ns, "labels": labels_of(a.labels.as_deref(), ("run", &a.name))?},
        "spec": {"restartPolicy": a.restart, "containers": [c]}});
    if a.dry_run.as_deref() == Some("client") {
        print!("{}", serde_yaml_ng::to_string(&pod).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    post(client, &format!("/api/v1/namespaces/{ns}/pods"), &pod, a.dry_run.as_deref()).await?;
    println!("pod/{} created{}", a.name, dry_suffix(a.dry_run.as_deref()));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ExposeArgs {
    /// `KIND NAME` or `KIND/NAME`: a Deployment, ReplicaSet, Pod or Service.
    #[arg(required = true)]
    pub target: Vec<String>,
    /// The Service's port.
    #[arg(long)]
    pub port: u16,
    /// The pods' port (default: --port).
    #[arg(long)]
    pub target_port: Option<String>,
    /// The Service's name (default: the object's).
    #[arg(long)]
    pub name: Option<String>,
    /// ClusterIP (the default) or NodePort.
    #[arg(long = "type", default_value = "ClusterIP")]
    pub kind: String,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
}

pub async fn expose(client: &Client, a: &ExposeArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let (k, name) = match a.target.as_slice() {
        [one] => one
            .split_once('/')
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .ok_or("error: expose takes KIND NAME or KIND/NAME")?,
        [k, n, ..] => (k.clone(), n.clone()),
        [] => return Err("error: expose takes KIND NAME or KIND/NAME".into()),
    };
    let info = kind(&k)?;
    let obj = client.get(&info.path(Some(ns), Some(&name))).await.map_err(server)?;
    let selector = match info.kind {
        "Deployment" | "ReplicaSet" => obj["spec"]["selector"]["matchLabels"].clone(),
        "Pod" => obj["metadata"]["labels"].clone(),
        "Service" => obj["spec"]["selector"].clone(),
        other => return Err(format!("error: cannot expose a {other}")),
    };
    if selector.as_object().is_none_or(serde_json::Map::is_empty) {
        return Err(format!(
            "error: couldn't retrieve selectors via --selector flag or introspection: the {} has no labels",
            info.kind
        ));
    }
    let svc_name = a.name.clone().unwrap_or(name);
    let target: Value = match &a.target_port {
        Some(t) => t.parse::<u16>().map(Value::from).unwrap_or_else(|_| t.clone().into()),
        None => a.port.into(),
    };
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc_name, "namespace": ns, "labels": obj["metadata"]["labels"].as_object().cloned().unwrap_or_default()},
        "spec": {"type": a.kind, "selector": selector,
            "ports": [{"port": a.port, "targetPort": target, "protocol": a.protocol}]}});
    post(client, &format!("/api/v1/namespaces/{ns}/services"), &svc, None).await?;
    println!("service/{svc_name} exposed");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct AutoscaleArgs {
    /// `KIND/NAME` or `KIND NAME` of a Deployment or ReplicaSet.
    #[arg(required = true)]
    pub target: Vec<String>,
    /// The fewest replicas (default 1).
    #[arg(long)]
    pub min: Option<i32>,
    /// The most replicas.
    #[arg(long)]
    pub max: i32,
    /// The average CPU use to keep, in percent of the pods' requests (default 80).
    #[arg(long)]
    pub cpu_percent: Option<i32>,
    /// The HPA's name (default: the target's).
    #[arg(long)]
    pub name: Option<String>,
}

/// `autoscale`: an autoscaling/v2 HorizontalPodAutoscaler for a Deployment or ReplicaSet.
pub async fn autoscale(client: &Client, a: &AutoscaleArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let (k, name) = match a.target.as_slice() {
        [one] => one
            .split_once('/')
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .ok_or("error: autoscale takes KIND NAME or KIND/NAME")?,
        [k, n, ..] => (k.clone(), n.clone()),
        [] => return Err("error: autoscale takes KIND NAME or KIND/NAME".into()),
    };
    let info = kind(&k)?;
    if !["Deployment", "ReplicaSet"].contains(&info.kind) {
        return Err(format!(
            "error: cannot autoscale a {}: only Deployments and ReplicaSets have a scale",
            info.kind
        ));
    }
    // The target must exist, as kubectl checks.
    client.get(&info.path(Some(ns), Some(&name))).await.map_err(server)?;
    let hpa_name = a.name.clone().unwrap_or_else(|| name.clone());
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": info.api_version(), "kind": info.kind, "name": name},
        "maxReplicas": a.max,
    });
    if let Some(m) = a.min {
        spec["minReplicas"] = m.into();
    }
    if let Some(p) = a.cpu_percent {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": p}}}]);
    }
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": hpa_name, "namespace": ns}, "spec": spec});
    let hpa_info = kind("hpa")?;
    post(client, &hpa_info.path(Some(ns), None), &hpa, None).await?;
    println!("horizontalpodautoscaler.autoscaling/{hpa_name} autoscaled");
    Ok(ExitCode::SUCCESS)
}

/// `create deployment|job|cronjob|service`, as kubectl's generators make them.
pub async fn create_workload(
    client: &Client,
    kind_name: &str,
    obj: Value,
    dry: Option<&str>,
) -> Result<ExitCode, String> {
    let info = kind(kind_name)?;
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    if dry == Some("client") {
        print!("{}", serde_yaml_ng::to_string(&obj).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    post(client, &info.path(ns.as_deref(), None), &obj, dry).await?;
    println!(
        "{}/{} created{}",
        info.qualified_singular(),
        obj["metadata"]["name"].as_str().unwrap_or_default(),
        dry_suffix(dry)
    );
    Ok(ExitCode::SUCCESS)
}

/// The pod template kubectl's generators write: one container named after the image.
pub fn template(
    labels: &Value,
    image: &str,
    name: &str,
    command: &[String],
    port: Option<u16>,
    restart: Option<&str>,
) -> Value {
    let mut c = json!({"name": name, "image": image});
    if !command.is_empty() {
        c["command"] = json!(command);
    }
    if let Some(p) = port {
        c["ports"] = json!([{"containerPort": p}]);
    }
    let mut spec = json!({"containers": [c]});
    if let Some(r) = restart {
        spec["restartPolicy"] = r.into();
    }
    json!({"metadata": {"labels": labels}, "spec": spec})
}

/// `replace -f`: each object PUT over the one there.
pub async fn replace(client: &Client, files: &[String], ns: Option<&str>) -> Result<ExitCode, String> {
    let mut failed = false;
    for obj in load_all(files)? {
        let (info, name, target_ns, value) = super::placed(&obj, ns);
        let path = format!("{}?fieldManager=tug-replace", info.path(target_ns, Some(&name)));
        match client.call(Method::PUT, &path, "application/json", value.to_string().into_bytes()).await {
            Ok(_) => println!("{} replaced", obj.display_name()),
            Err(e) => {
                eprintln!("{}", server(e));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `diff -f`: what applying would change, as a unified diff of the objects' YAML (live
/// against the server's dry run of the apply); exit 1 when anything differs, as kubectl.
pub async fn diff(client: &Client, files: &[String], ns: Option<&str>) -> Result<ExitCode, String> {
    let mut differs = false;
    for obj in load_all(files)? {
        let (info, name, target_ns, value) = super::placed(&obj, ns);
        let path = info.path(target_ns, Some(&name));
        let live = match client.get(&path).await {
            Ok(v) => v,
            Err(CallError::Server(s)) if s.code == 404 => Value::Null,
            Err(e) => return Err(server(e)),
        };
        let merged = client
            .call(
                Method::PATCH,
                &format!("{path}?fieldManager=tug&dryRun=All"),
                "application/apply-patch+yaml",
                value.to_string().into_bytes(),
            )
            .await
            .map(|r| r.0)
            .map_err(server)?;
        let show = |v: &Value| -> String {
            if v.is_null() {
                return String::new();
            }
            let mut v = v.clone();
            if let Some(m) = v["metadata"].as_object_mut() {
                for f in ["managedFields", "resourceVersion", "generation", "uid", "creationTimestamp"] {
                    m.remove(f);
                }
            }
            serde_yaml_ng::to_string(&v).unwrap_or_default()
        };
        let (a, b) = (show(&live), show(&merged));
        if a != b {
            differs = true;
            let label = format!("{}.{}.{}", info.api_version().replace('/', "."), info.kind, name);
            print!("{}", unified(&a, &b, &label));
        }
    }
    Ok(if differs { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// A unified diff (three lines of context) of two texts, by their longest common subsequence.
pub fn unified(a: &str, b: &str, label: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let (n, m) = (x.len(), y.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if x[i] == y[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // The edit script: (' '|'-'|'+', line).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && x[i] == y[j] {
            ops.push((' ', x[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', x[i]));
            i += 1;
        } else {
            ops.push(('+', y[j]));
            j += 1;
        }
    }
    let mut out = format!("--- /live/{label}\n+++ /merged/{label}\n");
    let changed: Vec<usize> =
        ops.iter().enumerate().filter(|(_, (c, _))| *c != ' ').map(|(k, _)| k).collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(3);
        let mut end = (changed[k] + 4).min(ops.len());
        while k + 1 < changed.len() && changed[k + 1] <= end + 3 {
            k += 1;
            end = (changed[k] + 4).min(ops.len());
        }
        let before_a = ops[..start].iter().filter(|(c, _)| *c != '+').count();
        let before_b = ops[..start].iter().filter(|(c, _)| *c != '-').count();
        let len_a = ops[start..end].iter().filter(|(c, _)| *c != '+').count();
        let len_b = ops[start..end].iter().filter(|(c, _)| *c != '-').count();
        out += &format!("@@ -{},{len_a} +{},{len_b} @@\n", before_a + 1, before_b + 1);
        for (c, l) in &ops[start..end] {
            out += &format!("{c}{l}\n");
        }
        k += 1;
    }
    out
}

#[derive(clap::Args)]
pub struct WaitArgs {
    /// `KIND/NAME...` or `KIND NAME...` (or `KIND -l SELECTOR`).
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// `condition=Available` (`=false` for the opposite), `delete`, or `jsonpath={.path}=value`.
    #[arg(long = "for")]
    pub condition: String,
    /// How long to wait (`30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// `wait`: polls each object until the condition holds, then says `condition met` (or
/// `deleted`); a timeout is kubectl's error and exit 1.
pub async fn wait(client: &Client, a: &WaitArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let mut objects: Vec<(&'static tug_api::object::KindInfo, String)> = Vec::new();
    if a.targets[0].contains('/') {
        for t in &a.targets {
            let (k, n) = t.split_once('/').unwrap_or((t, ""));
            objects.push((kind(k)?, n.to_string()));
        }
    } else {
        let info = kind(&a.targets[0])?;
        for n in &a.targets[1..] {
            objects.push((info, n.clone()));
        }
        if let Some(sel) = &a.selector {
            let list = client
                .get(&format!("{}?labelSelector={}", info.path(Some(ns), None), super::get::encode(sel)))
                .await
                .map_err(server)?;
            for o in list["items"].as_array().into_iter().flatten() {
                objects.push((info, o["metadata"]["name"].as_str().unwrap_or_default().to_string()));
            }
        }
    }
    if objects.is_empty() {
        return Err("error: no matching resources found".into());
    }
    let deadline = Instant::now() + a.timeout;
    let check = |obj: &Value| -> Result<bool, String> {
        if let Some(c) = a.condition.strip_prefix("condition=") {
            let (name, want) = c.split_once('=').unwrap_or((c, "true"));
            let want = if want.eq_ignore_ascii_case("true") {
                "True"
            } else if want.eq_ignore_ascii_case("false") {
                "False"
            } else {
                want
            };
            return Ok(obj["status"]["conditions"].as_array().into_iter().flatten().any(|x| {
                x["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(name)) && x["status"] == want
            }));
        }
        if let Some(j) = a.condition.strip_prefix("jsonpath=") {
            let (path, want) = j.rsplit_once('=').ok_or("error: jsonpath wait needs {.path}=value")?;
            let nodes = crate::jsonpath::parse(path)?;
            return Ok(crate::jsonpath::render(&nodes, obj)? == want);
        }
        Err(format!("error: unrecognized condition: {:?}", a.condition))
    };
    for (info, name) in objects {
        let path = info.path(info.namespaced.then_some(ns), Some(&name));
        let shown = format!("{}/{name}", info.qualified_singular());
        loop {
            let got = client.get(&path).await;
            let done = match (&got, a.condition.as_str()) {
                (Err(CallError::Server(s)), "delete") if s.code == 404 => true,
                (Ok(_), "delete") => false,
                (Ok(obj), _) => check(obj)?,
                (Err(CallError::Server(s)), _) if s.code == 404 => {
                    return Err(format!(
                        "Error from server (NotFound): {} \"{name}\" not found",
                        info.plural
                    ));
                }
                (Err(e), _) => return Err(format!("error: {e}")),
            };
            if done {
                println!("{shown} {}", if a.condition == "delete" { "deleted" } else { "condition met" });
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("error: timed out waiting for the condition on {}/{name}", info.plural));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_read_like_diff_u() {
        let d = unified("a\nb\nc\n", "a\nB\nc\nd\n", "x");
        assert_eq!(d, "--- /live/x\n+++ /merged/x\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d\n");
        assert_eq!(unified("same\n", "same\n", "x"), "--- /live/x\n+++ /merged/x\n");
    }
}
