//! Changing objects in place, as kubectl's verbs do: `label`, `annotate`, `patch`, `cordon`,
//! `uncordon`, `taint`, `set image`, `edit`. Each is a PATCH (or, for `edit`, a PUT of what
//! the editor saved), and prints kubectl's line (`deployment.apps/web labeled`).

use super::kind;
use crate::client::Client;
use serde_json::{Map, Value, json};
use std::process::ExitCode;
use tug_api::object::KindInfo;
use tug_client::{CallError, Method};

#[derive(clap::Args)]
pub struct MetaArgs {
    /// `KIND NAME` or `KIND/NAME`, then `key=value` to set and `key-` to remove.
    #[arg(required = true)]
    args: Vec<String>,
    /// Replace a key's existing value (without it, kubectl refuses).
    #[arg(long)]
    overwrite: bool,
}

#[derive(clap::Args)]
pub struct PatchArgs {
    /// `KIND NAME` or `KIND/NAME`.
    #[arg(required = true)]
    target: Vec<String>,
    /// The patch, JSON or YAML.
    #[arg(short = 'p', long)]
    patch: String,
    /// strategic (the default), merge or json.
    #[arg(long = "type", default_value = "strategic")]
    kind: String,
}

#[derive(clap::Args)]
pub struct TaintArgs {
    /// `nodes NAME` (or `node/NAME`), then `key=value:Effect` to add, `key:Effect-` or `key-` to remove.
    #[arg(required = true)]
    args: Vec<String>,
    /// Replace a taint of the same key and effect.
    #[arg(long)]
    overwrite: bool,
}

#[derive(clap::Subcommand)]
pub enum SetCmd {
    /// Set containers' images: `set image deploy/web web=nginx:1.27 [side=…]`.
    Image {
        #[arg(required = true)]
        args: Vec<String>,
    },
    /// Set or remove containers' environment variables: `set env deploy/web KEY=VALUE OLD-`.
    Env {
        /// `KIND/NAME` (or `KIND NAME`), then `KEY=VALUE` to set and `KEY-` to remove.
        #[arg(required = true)]
        args: Vec<String>,
        /// The containers to change (a name or `*`).
        #[arg(short = 'c', long, default_value = "*")]
        containers: String,
        /// Print the variables instead of changing them.
        #[arg(long)]
        list: bool,
        /// Every key of `configmap/NAME` or `secret/NAME`, each a reference to it.
        #[arg(long)]
        from: Option<String>,
        /// Put this before each key taken with --from.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Set containers' requests and limits: `set resources deploy/web --limits=cpu=200m,memory=512Mi`.
    Resources {
        /// `KIND/NAME` (or `KIND NAME`).
        #[arg(required = true)]
        args: Vec<String>,
        /// The containers to change (a name or `*`).
        #[arg(short = 'c', long, default_value = "*")]
        containers: String,
        /// `cpu=…,memory=…` limits.
        #[arg(long)]
        limits: Option<String>,
        /// `cpu=…,memory=…` requests.
        #[arg(long)]
        requests: Option<String>,
    },
}

fn server(e: CallError) -> String {
    match e {
        CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => format!("error: {e}"),
    }
}

/// `KIND NAME rest...` or `KIND/NAME rest...`: the kind, the name, and what follows.
fn target(args: &[String]) -> Result<(&'static KindInfo, String, Vec<String>), String> {
    let first = args.first().ok_or("error: you must specify the type of resource and its name")?;
    if let Some((k, n)) = first.split_once('/') {
        return Ok((kind(k)?, n.to_string(), args[1..].to_vec()));
    }
    let name = args.get(1).ok_or_else(|| format!("error: you must specify the name of the {first}"))?;
    Ok((kind(first)?, name.clone(), args[2..].to_vec()))
}

fn path(info: &KindInfo, name: &str, ns: Option<&str>) -> String {
    info.path(info.namespaced.then(|| ns.unwrap_or("default")), Some(name))
}

async fn patch_object(
    client: &Client,
    info: &KindInfo,
    name: &str,
    ns: Option<&str>,
    content_type: &str,
    patch: &Value,
) -> Result<Value, String> {
    let p = format!("{}?fieldManager=tug", path(info, name, ns));
    client
        .call(Method::PATCH, &p, content_type, patch.to_string().into_bytes())
        .await
        .map(|r| r.0)
        .map_err(server)
}

/// `label` and `annotate`.
pub async fn meta(client: &Client, a: &MetaArgs, ns: Option<&str>, field: &str) -> Result<ExitCode, String> {
    let (info, name, pairs) = target(&a.args)?;
    if pairs.is_empty() {
        return Err(format!("error: at least one {} update is required", &field[..field.len() - 1]));
    }
    let current = client.get(&path(info, &name, ns)).await.map_err(server)?;
    let mut changes = Map::new();
    for p in &pairs {
        if let Some(k) = p.strip_suffix('-') {
            changes.insert(k.to_string(), Value::Null);
            continue;
        }
        let (k, v) = p.split_once('=').ok_or_else(|| format!("error: invalid {field} spec: {p}"))?;
        if let Some(old) = current["metadata"][field][k].as_str()
            && old != v
            && !a.overwrite
        {
            return Err(format!("error: '{k}' already has a value ({old}), and --overwrite is false"));
        }
        changes.insert(k.to_string(), v.into());
    }
    let patch = json!({"metadata": {field: changes}});
    patch_object(client, info, &name, ns, "application/merge-patch+json", &patch).await?;
    let verb = if field == "labels" { "labeled" } else { "annotated" };
    println!("{}/{name} {verb}", info.qualified_singular());
    Ok(ExitCode::SUCCESS)
}

pub async fn patch(client: &Client, a: &PatchArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let (info, name, rest) = target(&a.target)?;
    if !rest.is_empty() {
        return Err(format!("error: unexpected arguments: {}", rest.join(" ")));
    }
    let content_type = match a.kind.as_str() {
        "strategic" => "application/strategic-merge-patch+json",
        "merge" => "application/merge-patch+json",
        "json" => "application/json-patch+json",
        other => return Err(format!("error: --type must be one of [json merge strategic], not {other:?}")),
    };
    let body: Value = serde_yaml_ng::from_str(&a.patch)
        .map_err(|e| format!("error: unable to parse {:?}: {e}", a.patch))?;
    let before = client.get(&path(info, &name, ns)).await.map_err(server)?;
    let after = patch_object(client, info, &name, ns, content_type, &body).await?;
    let changed = before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"];
    println!(
        "{}/{name} {}",
        info.qualified_singular(),
        if changed { "patched" } else { "patched (no change)" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `cordon` and `uncordon`.
pub async fn cordon(client: &Client, node: &str, unschedulable: bool) -> Result<ExitCode, String> {
    let node = node.strip_prefix("node/").or_else(|| node.strip_prefix("nodes/")).unwrap_or(node);
    let info = kind("nodes")?;
    let current = client.get(&path(info, node, None)).await.map_err(server)?;
    let verb = if unschedulable { "cordoned" } else { "uncordoned" };
    if (current["spec"]["unschedulable"] == true) == unschedulable {
        println!("node/{node} already {verb}");
        return Ok(ExitCode::SUCCESS);
    }
    let value = if unschedulable { Value::Bool(true) } else { Value::Null };
    patch_object(
        client,
        info,
        node,
        None,
        "application/merge-patch+json",
        &json!({"spec": {"unschedulable": value}}),
    )
    .await?;
    println!("node/{node} {verb}");
    Ok(ExitCode::SUCCESS)
}

/// One taint argument: `key=value:Effect`, `key:Effect` to add; `key:Effect-`, `key-` to remove.
fn parse_taint(spec: &str) -> Result<(bool, Value), String> {
    let bad = || format!("error: invalid taint spec: {spec}");
    let (remove, spec) = match spec.strip_suffix('-') {
        Some(s) => (true, s),
        None => (false, spec),
    };
    let (kv, effect) = match spec.rsplit_once(':') {
        Some((kv, e)) => (kv, Some(e)),
        None if remove => (spec, None),
        None => return Err(bad()),
    };
    if let Some(e) = effect
        && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e)
    {
        return Err(format!(
            "error: invalid taint effect: {e}, unsupported taint effect (must be NoSchedule, PreferNoSchedule or NoExecute)"
        ));
    }
    let (key, value) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v)));
    if key.is_empty() {
        return Err(bad());
    }
    let mut t = json!({"key": key});
    if let Some(v) = value {
        t["value"] = v.into();
    }
    if let Some(e) = effect {
        t["effect"] = e.into();
    }
    Ok((remove, t))
}

pub async fn taint(client: &Client, a: &TaintArgs) -> Result<ExitCode, String> {
    let (info, node, specs) = target(&a.args)?;
    if info.kind != "Node" {
        return Err(format!("error: taints apply to nodes, not {}", info.plural));
    }
    let current = client.get(&path(info, &node, None)).await.map_err(server)?;
    let mut taints: Vec<Value> = current["spec"]["taints"].as_array().cloned().unwrap_or_default();
    let (mut added, mut removed) = (false, false);
    for spec in &specs {
        let (remove, t) = parse_taint(spec)?;
        let same =
            |x: &Value| x["key"] == t["key"] && (t.get("effect").is_none() || x["effect"] == t["effect"]);
        if remove {
            let before = taints.len();
            taints.retain(|x| !same(x));
            if taints.len() == before {
                return Err(format!("error: taint {spec:?} not found"));
            }
            removed = true;
        } else {
            if let Some(i) = taints.iter().position(same) {
                if !a.overwrite {
                    return Err(format!(
                        "error: node {node} already has {} taint(s) with same effect(s) and --overwrite is false",
                        t["key"].as_str().unwrap_or_default()
                    ));
                }
                taints.remove(i);
            }
            taints.push(t);
            added = true;
        }
    }
    let patch =
        json!({"spec": {"taints": if taints.is_empty() { Value::Null } else { Value::Array(taints) }}});
    patch_object(client, info, &node, None, "application/merge-patch+json", &patch).await?;
    let verb = match (added, removed) {
        (true, true) => "modified",
        (false, true) => "untainted",
        _ => "tainted",
    };
    println!("node/{node} {verb}");
    Ok(ExitCode::SUCCESS)
}

/// Where a kind keeps its pod spec.
fn pod_spec_path(info: &KindInfo) -> Result<Vec<&'static str>, String> {
    match info.kind {
        "Pod" => Ok(vec!["spec"]),
        "CronJob" => Ok(vec!["spec", "jobTemplate", "spec", "template", "spec"]),
        "Deployment" | "ReplicaSet" | "Job" => Ok(vec!["spec", "template", "spec"]),
        other => Err(format!("error: {other} has no pod template")),
    }
}

pub async fn set(client: &Client, cmd: &SetCmd, ns: Option<&str>) -> Result<ExitCode, String> {
    let args = match cmd {
        SetCmd::Image { args } => args,
        SetCmd::Env { args, .. } | SetCmd::Resources { args, .. } => {
            return set_containers(client, cmd, args, ns).await;
        }
    };
    let (info, name, pairs) = target(args)?;
    let current = client.get(&path(info, &name, ns)).await.map_err(server)?;
    let spec_path = pod_spec_path(info)?;
    let containers = spec_path.iter().fold(&current, |v, k| &v[*k]).get("containers").unwrap_or(&Value::Null);
    let names: Vec<String> = containers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let mut list = Vec::new();
    for p in &pairs {
        let (c, image) =
            p.split_once('=').ok_or_else(|| format!("error: invalid image spec {p:?}: use NAME=IMAGE"))?;
        let targets: Vec<&String> =
            if c == "*" { names.iter().collect() } else { names.iter().filter(|n| *n == c).collect() };
        if targets.is_empty() {
            return Err(format!("error: unable to find container named \"{c}\""));
        }
        list.extend(targets.into_iter().map(|n| json!({"name": n, "image": image})));
    }
    let mut patch = json!({"containers": list});
    for k in spec_path.iter().rev() {
        patch = json!({ *k: patch });
    }
    patch_object(client, info, &name, ns, "application/strategic-merge-patch+json", &patch).await?;
    println!("{}/{name} image updated", info.qualified_singular());
    Ok(ExitCode::SUCCESS)
}

/// `set env` and `set resources`: each chosen container's `env` or `resources` rewritten,
/// sent as a JSON patch that holds only if the object is still the one read (read again and
/// retried when a controller wrote it meanwhile).
async fn set_containers(
    client: &Client,
    cmd: &SetCmd,
    args: &[String],
    ns: Option<&str>,
) -> Result<ExitCode, String> {
    let (info, name, _) = target(args)?;
    for _ in 0..5 {
        let Some((ops, verb)) = container_patch(client, cmd, args, ns).await? else {
            return Ok(ExitCode::SUCCESS);
        };
        match patch_object(client, info, &name, ns, "application/json-patch+json", &ops).await {
            Ok(_) => {
                println!("{}/{name} {verb}", info.qualified_singular());
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if e.contains("test /metadata/resourceVersion") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(format!("error: {}/{name} kept changing while being updated; try again", info.qualified_singular()))
}

/// The JSON patch (and kubectl's past tense for it) of a `set env|resources`; None when the
/// command only printed (`set env --list`).
async fn container_patch(
    client: &Client,
    cmd: &SetCmd,
    args: &[String],
    ns: Option<&str>,
) -> Result<Option<(Value, &'static str)>, String> {
    let (info, name, rest) = target(args)?;
    let p = path(info, &name, ns);
    let current = client.get(&p).await.map_err(server)?;
    let spec_path = pod_spec_path(info)?;
    let spec = spec_path.iter().fold(&current, |v, k| &v[*k]);
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let chosen = |c: &Value, which: &str| which == "*" || c["name"].as_str() == Some(which);
    let which = match cmd {
        SetCmd::Env { containers, .. } | SetCmd::Resources { containers, .. } => containers.as_str(),
        SetCmd::Image { .. } => "*",
    };
    if !containers.iter().any(|c| chosen(c, which)) {
        return Err(format!("error: unable to find container named {which:?}"));
    }
    let base = format!("/{}/containers", spec_path.join("/"));
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": current["metadata"]["resourceVersion"]}),
    ];
    let verb;
    match cmd {
        SetCmd::Env { list: true, .. } => {
            for c in containers.iter().filter(|c| chosen(c, which)) {
                println!("# {} {name}, container {}", info.plural, c["name"].as_str().unwrap_or_default());
                for e in c["env"].as_array().into_iter().flatten() {
                    let n = e["name"].as_str().unwrap_or_default();
                    match &e["value"] {
                        Value::String(v) => println!("{n}={v}"),
                        _ if e["valueFrom"].is_object() => {
                            let from = &e["valueFrom"];
                            let (kind, r) = if from["configMapKeyRef"].is_object() {
                                ("configmap", &from["configMapKeyRef"])
                            } else if from["secretKeyRef"].is_object() {
                                ("secret", &from["secretKeyRef"])
                            } else if from["fieldRef"].is_object() {
                                println!(
                                    "# {n} from field path {}",
                                    from["fieldRef"]["fieldPath"].as_str().unwrap_or_default()
                                );
                                continue;
                            } else {
                                println!(
                                    "# {n} from resource {}",
                                    from["resourceFieldRef"]["resource"].as_str().unwrap_or_default()
                                );
                                continue;
                            };
                            println!(
                                "# {n} from {kind} {}, key {}",
                                r["name"].as_str().unwrap_or_default(),
                                r["key"].as_str().unwrap_or_default()
                            );
                        }
                        _ => println!("{n}="),
                    }
                }
            }
            return Ok(None);
        }
        SetCmd::Env { from, prefix, .. } => {
            let mut set: Vec<Value> = Vec::new();
            let mut remove: Vec<&str> = Vec::new();
            for a in &rest {
                if let Some((k, v)) = a.split_once('=') {
                    if k.is_empty() {
                        return Err(format!("error: invalid env: {a}"));
                    }
                    set.push(json!({"name": k, "value": v}));
                } else if let Some(k) = a.strip_suffix('-') {
                    remove.push(k);
                } else {
                    return Err(format!(
                        "error: unknown environment variable spec {a:?}: use KEY=VALUE or KEY-"
                    ));
                }
            }
            if let Some(f) = from {
                let (kind_name, src) = f
                    .split_once('/')
                    .ok_or_else(|| format!("error: --from {f:?}: use configmap/NAME or secret/NAME"))?;
                let src_info = kind(kind_name)?;
                let ref_kind = match src_info.kind {
                    "ConfigMap" => "configMapKeyRef",
                    "Secret" => "secretKeyRef",
                    other => {
                        return Err(format!(
                            "error: --from: unsupported kind {other}: use configmap/NAME or secret/NAME"
                        ));
                    }
                };
                let obj = client.get(&path(src_info, src, ns)).await.map_err(server)?;
                let mut keys: Vec<&String> =
                    obj["data"].as_object().into_iter().flat_map(|m| m.keys()).collect();
                keys.extend(obj["binaryData"].as_object().into_iter().flat_map(|m| m.keys()));
                for k in keys {
                    let env_name = format!("{prefix}{}", k.to_ascii_uppercase().replace(['-', '.'], "_"));
                    set.push(json!({"name": env_name, "valueFrom": {ref_kind: {"name": src, "key": k}}}));
                }
            }
            if set.is_empty() && remove.is_empty() {
                return Err("error: at least one environment variable must be provided".into());
            }
            for (i, c) in containers.iter().enumerate().filter(|(_, c)| chosen(c, which)) {
                let mut env: Vec<Value> = c["env"].as_array().cloned().unwrap_or_default();
                env.retain(|e| !remove.contains(&e["name"].as_str().unwrap_or_default()));
                for s in &set {
                    match env.iter_mut().find(|e| e["name"] == s["name"]) {
                        Some(e) => *e = s.clone(),
                        None => env.push(s.clone()),
                    }
                }
                let op = if c["env"].is_null() { "add" } else { "replace" };
                ops.push(json!({"op": op, "path": format!("{base}/{i}/env"), "value": env}));
            }
            verb = "env updated";
        }
        SetCmd::Resources { limits, requests, .. } => {
            if limits.is_none() && requests.is_none() {
                return Err("error: you must specify an update to requests or limits (in the form of --requests/--limits)".into());
            }
            let (limits, requests) =
                (resource_pairs(limits.as_deref())?, resource_pairs(requests.as_deref())?);
            for (i, c) in containers.iter().enumerate().filter(|(_, c)| chosen(c, which)) {
                let mut r = c["resources"].clone();
                if !r.is_object() {
                    r = json!({});
                }
                for (field, values) in [("limits", &limits), ("requests", &requests)] {
                    for (k, v) in values {
                        if !r[field].is_object() {
                            r[field] = json!({});
                        }
                        r[field][k] = v.clone().into();
                    }
                }
                let op = if c["resources"].is_null() { "add" } else { "replace" };
                ops.push(json!({"op": op, "path": format!("{base}/{i}/resources"), "value": r}));
            }
            verb = "resource requirements updated";
        }
        SetCmd::Image { .. } => return Err("error: not a container field".into()),
    }
    Ok(Some((Value::Array(ops), verb)))
}

/// `cpu=200m,memory=512Mi` → pairs, each quantity checked.
fn resource_pairs(s: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(s) = s else { return Ok(Vec::new()) };
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("error: invalid resource spec {p:?}: use NAME=QUANTITY"))?;
            tug_api::quantity::Quantity::parse(v).map_err(|e| format!("error: {k}={v}: {e}"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

#[derive(clap::Args)]
pub struct ResizeArgs {
    /// `pod/NAME` or `pod NAME`.
    #[arg(required = true)]
    pub target: Vec<String>,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// `cpu=…,memory=…` limits.
    #[arg(long)]
    pub limits: Option<String>,
    /// `cpu=…,memory=…` requests.
    #[arg(long)]
    pub requests: Option<String>,
}

/// `resize pod/NAME --limits memory=256Mi`: an in-place resize through the pod's `resize`
/// subresource; the container keeps running where its resizePolicy allows.
pub async fn resize(client: &Client, a: &ResizeArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let (info, name, rest) = target(&a.target)?;
    if info.kind != "Pod" || !rest.is_empty() {
        return Err(
            "error: resize takes pod/NAME (a Deployment's pods change with `tug set resources`)".into()
        );
    }
    let (limits, requests) = (resource_pairs(a.limits.as_deref())?, resource_pairs(a.requests.as_deref())?);
    if limits.is_empty() && requests.is_empty() {
        return Err("error: you must specify an update to requests or limits (--requests/--limits)".into());
    }
    let p = path(info, &name, ns);
    let pod = client.get(&p).await.map_err(server)?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let container = match (&a.container, containers.as_slice()) {
        (Some(c), _) if containers.contains(c) => c.clone(),
        (Some(c), _) => return Err(format!("error: unable to find container named {c:?}")),
        (None, [one]) => one.clone(),
        (None, _) => {
            return Err(format!(
                "error: pod {name} has several containers: name one with -c ({})",
                containers.join(", ")
            ));
        }
    };
    let mut resources = json!({});
    for (field, values) in [("limits", &limits), ("requests", &requests)] {
        for (k, v) in values {
            resources[field][k] = v.clone().into();
        }
    }
    let patch = json!({"spec": {"containers": [{"name": container, "resources": resources}]}});
    client
        .call(
            Method::PATCH,
            &format!("{p}/resize?fieldManager=tug"),
            "application/strategic-merge-patch+json",
            patch.to_string().into_bytes(),
        )
        .await
        .map_err(server)?;
    println!("pod/{name} resized");
    Ok(ExitCode::SUCCESS)
}

/// `edit`: the object in `$EDITOR` (or `vi`) as YAML; saved, it replaces the object. A save
/// the server refuses opens the editor again with the error at the top, as kubectl does; an
/// unchanged file or an empty one cancels.
pub async fn edit(client: &Client, args: &[String], ns: Option<&str>) -> Result<ExitCode, String> {
    let (info, name, rest) = target(args)?;
    if !rest.is_empty() {
        return Err(format!("error: unexpected arguments: {}", rest.join(" ")));
    }
    let p = path(info, &name, ns);
    let current = client.get(&p).await.map_err(server)?;
    let original = serde_yaml_ng::to_string(&current).map_err(|e| format!("error: {e}"))?;
    let dir = std::env::temp_dir().join(format!("tug-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("error: {}: {e}", dir.display()))?;
    let file = dir.join(format!("{}-{name}.yaml", info.plural));
    let mut text = format!(
        "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit.\n#\n{original}"
    );
    let mut rejected: Option<String> = None;
    let result = loop {
        std::fs::write(&file, &text).map_err(|e| format!("error: {}: {e}", file.display()))?;
        let editor =
            std::env::var("KUBE_EDITOR").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&file)
            .status()
            .map_err(|e| format!("error: running {editor}: {e}"))?;
        if !status.success() {
            break Err(format!("error: {editor} exited with {status}"));
        }
        let saved = std::fs::read_to_string(&file).map_err(|e| format!("error: {e}"))?;
        let body: String =
            saved.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        if body.trim().is_empty() {
            break Err("Edit cancelled, saved file was empty.".into());
        }
        if body.trim() == original.trim() {
            println!("Edit cancelled, no changes made.");
            break Ok(ExitCode::SUCCESS);
        }
        if rejected.as_deref().is_some_and(|r| r.trim() == body.trim()) {
            break Err("error: Edit cancelled, no valid changes were saved.".into());
        }
        let doc: Value = match serde_yaml_ng::from_str(&body) {
            Ok(d) => d,
            Err(e) => {
                text = format!("# The edited file could not be read: {e}\n#\n{body}\n");
                continue;
            }
        };
        // What changed, as a JSON merge patch from what was read: a controller's write in the
        // meantime is no conflict unless it touched the same fields.
        let before: Value = serde_yaml_ng::from_str(&original).unwrap_or_default();
        let diff = merge_diff(&before, &doc);
        match client
            .call(
                Method::PATCH,
                &format!("{p}?fieldManager=tug-edit"),
                "application/merge-patch+json",
                diff.to_string().into_bytes(),
            )
            .await
        {
            Ok(_) => {
                println!("{}/{name} edited", info.qualified_singular());
                break Ok(ExitCode::SUCCESS);
            }
            Err(CallError::Server(s)) if s.code != 409 => {
                rejected = Some(body.clone());
                let reason = s.message.lines().map(|l| format!("# {l}")).collect::<Vec<_>>().join("\n");
                text = format!(
                    "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit.\n#\n# {} \"{name}\" was not valid:\n{reason}\n#\n{body}\n",
                    info.qualified_singular()
                );
            }
            Err(e) => break Err(server(e)),
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The JSON merge patch (RFC 7386) that turns `a` into `b`.
fn merge_diff(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut out = Map::new();
            for (k, v) in y {
                match x.get(k) {
                    Some(old) if old == v => {}
                    Some(old) if old.is_object() && v.is_object() => {
                        out.insert(k.clone(), merge_diff(old, v));
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in x.keys().filter(|k| !y.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => b.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_is_the_merge_patch_of_what_changed() {
        let a =
            json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"n": 1, "list": [1]}});
        let b = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"n": 2, "list": [1, 2]}});
        let d = merge_diff(&a, &b);
        assert_eq!(d, json!({"metadata": {"labels": {"b": null}}, "spec": {"n": 2, "list": [1, 2]}}));
        let mut patched = a.clone();
        tug_api::patch::merge_patch(&mut patched, &d);
        assert_eq!(patched, b);
    }

    #[test]
    fn taints_as_kubectl_writes_them() {
        assert_eq!(
            parse_taint("k=v:NoSchedule").unwrap(),
            (false, json!({"key": "k", "value": "v", "effect": "NoSchedule"}))
        );
        assert_eq!(parse_taint("k:NoExecute-").unwrap(), (true, json!({"key": "k", "effect": "NoExecute"})));
        assert_eq!(parse_taint("k-").unwrap(), (true, json!({"key": "k"})));
        assert!(parse_taint("k=v").is_err());
        assert!(parse_taint("k=v:Sometimes").unwrap_err().contains("unsupported taint effect"));
    }
}
