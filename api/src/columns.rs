//! kubectl's columns for each kind: the headers and one row's cells, shared by `tug get`
//! and the API server's `Table` answers (`Accept: application/json;as=Table`). Pure.

use serde_json::Value;
use std::time::{Duration, SystemTime};

/// kubectl's short human durations: `45s`, `3m20s`, `12m`, `5h3m`, `2d4h`, `90d`, `2y`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, day) = (s / 60, s / 3600, s / 86_400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => {
            if s % 60 == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{}s", s % 60)
            }
        }
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => {
            if m % 60 == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{}m", m % 60)
            }
        }
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => {
            if h % 24 == 0 {
                format!("{day}d")
            } else {
                format!("{day}d{}h", h % 24)
            }
        }
        _ if day < 365 * 2 => format!("{day}d"),
        _ => format!("{}y", day / 365),
    }
}

/// The AGE of an object from its `creationTimestamp`.
pub fn age(obj: &Value, now: SystemTime) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| now.duration_since(t).ok())
        .map_or_else(|| "<unknown>".into(), human_duration)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// kubectl's TARGETS of an HPA: `cpu: 73%/60%`, `memory: 120Mi/200Mi`, `<unknown>` until
/// measured; more than three metrics end in `+ N more...`.
fn hpa_targets(spec: &Value, st: &Value) -> String {
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    if metrics.is_empty() {
        return "<none>".into();
    }
    let current = st["currentMetrics"].as_array().cloned().unwrap_or_default();
    let mut list: Vec<String> = Vec::new();
    for m in &metrics {
        let key = match m["type"].as_str() {
            Some("Resource") => "resource",
            Some("ContainerResource") => "containerResource",
            Some(other) => {
                let source = &m[other.to_ascii_lowercase().as_str()];
                let name = source["metric"]["name"].as_str().unwrap_or(other);
                list.push(format!(
                    "{name}: <unknown>/{}",
                    [s(&source["target"]["averageValue"]), s(&source["target"]["value"])].concat()
                ));
                continue;
            }
            None => continue,
        };
        let (name, target) = (&m[key]["name"], &m[key]["target"]);
        let now = current
            .iter()
            .find(|c| {
                c["type"] == m["type"]
                    && c[key]["name"] == *name
                    && c[key]["container"] == m[key]["container"]
            })
            .map(|c| c[key]["current"].clone());
        if target["type"] == "AverageValue" {
            let cur = now
                .and_then(|c| c["averageValue"].as_str().map(str::to_string))
                .unwrap_or_else(|| "<unknown>".into());
            list.push(format!("{}: {cur}/{}", s(name), s(&target["averageValue"])));
        } else {
            let cur = now
                .and_then(|c| c["averageUtilization"].as_i64())
                .map_or_else(|| "<unknown>".into(), |u| format!("{u}%"));
            let want =
                target["averageUtilization"].as_i64().map_or_else(|| "<auto>".into(), |u| format!("{u}%"));
            list.push(format!("{}: {cur}/{want}", s(name)));
        }
    }
    if list.len() > 3 {
        let more = list.len() - 3;
        list.truncate(3);
        return format!("{} + {more} more...", list.join(", "));
    }
    list.join(", ")
}

/// Column headers for a kind (`wide` adds kubectl's wide columns).
pub fn headers(kind: &str, wide: bool) -> Vec<&'static str> {
    let mut h = match kind {
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet" => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "DaemonSet" => {
            vec!["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"]
        }
        "StatefulSet" => vec!["NAME", "READY", "AGE"],
        "LimitRange" => vec!["NAME", "CREATED AT"],
        "ResourceQuota" => vec!["NAME", "AGE", "REQUEST", "LIMIT"],
        "ControllerRevision" => vec!["NAME", "CONTROLLER", "REVISION", "AGE"],
        "Service" => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        "ConfigMap" => vec!["NAME", "DATA", "AGE"],
        "Secret" => vec!["NAME", "TYPE", "DATA", "AGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "Node" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "Endpoints" => vec!["NAME", "ENDPOINTS", "AGE"],
        "EndpointSlice" => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "Job" => vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "CronJob" => vec!["NAME", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
        "HorizontalPodAutoscaler" => {
            vec!["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"]
        }
        "PersistentVolume" => {
            vec![
                "NAME",
                "CAPACITY",
                "ACCESS MODES",
                "RECLAIM POLICY",
                "STATUS",
                "CLAIM",
                "STORAGECLASS",
                "AGE",
            ]
        }
        "PersistentVolumeClaim" => {
            vec!["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE"]
        }
        "ServiceAccount" => vec!["NAME", "SECRETS", "AGE"],
        "Role" | "ClusterRole" => vec!["NAME", "CREATED AT"],
        "RoleBinding" | "ClusterRoleBinding" => vec!["NAME", "ROLE", "AGE"],
        "Lease" => vec!["NAME", "HOLDER", "AGE"],
        "PodDisruptionBudget" => {
            vec!["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"]
        }
        "VerticalPodAutoscaler" => vec!["NAME", "MODE", "CPU", "MEM", "PROVIDED", "AGE"],
        // Argo's printer columns.
        "Rollout" => vec!["NAME", "DESIRED", "CURRENT", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "AnalysisRun" => vec!["NAME", "STATUS", "AGE"],
        "PriorityClass" => vec!["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"],
        "AddressPool" => vec!["NAME", "AUTO ASSIGN", "ADDRESSES", "AGE"],
        "NetworkPolicy" => vec!["NAME", "POD-SELECTOR", "AGE"],
        "Ingress" => vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
        "IngressClass" => vec!["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match kind {
            "Pod" => h.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]),
            "Node" => {
                h.extend(["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"])
            }
            "Job" | "CronJob" => h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]),
            "RoleBinding" | "ClusterRoleBinding" => h.extend(["USERS", "GROUPS", "SERVICEACCOUNTS"]),
            "Deployment" | "ReplicaSet" | "DaemonSet" => h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]),
            "StatefulSet" => h.extend(["CONTAINERS", "IMAGES"]),
            "Service" => h.push("SELECTOR"),
            _ => {}
        }
    }
    h
}

/// The READY, STATUS and RESTARTS of a pod, as kubectl computes them (`printPod`).
pub struct PodColumns {
    pub ready: String,
    pub status: String,
    pub restarts: String,
}

/// kubectl's pod status: the phase, or the pod's reason (`Evicted`, `NodeLost`); then the
/// first unfinished init container's state (`Init:0/2`, `Init:CrashLoopBackOff`,
/// `Init:Error`); then, once initialized, the containers' own — a waiting reason
/// (`ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, `ImagePullBackOff`), a terminated
/// reason (`Completed`, `Error`, `OOMKilled`) or `ExitCode:N`/`Signal:N` — and `Terminating`
/// for a pod marked deleted (`Unknown` when its node was lost). Restarts show how long ago
/// the last one ended.
pub fn pod_status(pod: &Value, now: SystemTime) -> PodColumns {
    let spec = &pod["spec"];
    let st = &pod["status"];
    let phase = st["phase"].as_str().unwrap_or("Pending").to_string();
    let mut reason = match st["reason"].as_str() {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => phase.clone(),
    };
    let gated = st["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated"));
    if gated && phase == "Pending" {
        reason = "SchedulingGated".into();
    }
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (init_specs, init_statuses, statuses) =
        (list(&spec["initContainers"]), list(&st["initContainerStatuses"]), list(&st["containerStatuses"]));
    let restartable =
        |name: &str| init_specs.iter().any(|c| c["name"] == name && c["restartPolicy"] == "Always");
    let mut total = spec["containers"].as_array().map_or(0, Vec::len);
    total += init_specs.iter().filter(|c| c["restartPolicy"] == "Always").count();
    let finished = |c: &Value| -> Option<SystemTime> {
        c["lastState"]["terminated"]["finishedAt"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let later = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let (mut restarts, mut last_restart) = (0i64, None);
    let (mut sidecar_restarts, mut sidecar_last) = (0i64, None);
    let mut ready = 0usize;
    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        restarts += n(&c["restartCount"]);
        last_restart = later(last_restart, finished(c));
        if restartable(name) {
            sidecar_restarts += n(&c["restartCount"]);
            sidecar_last = later(sidecar_last, finished(c));
        }
        let terminated = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        if terminated.is_object() && n(&terminated["exitCode"]) == 0 {
            continue;
        }
        if restartable(name) && c["started"] == true {
            ready += usize::from(c["ready"] == true);
            continue;
        }
        initializing = true;
        reason = if terminated.is_object() {
            match terminated["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ if n(&terminated["signal"]) != 0 => format!("Init:Signal:{}", n(&terminated["signal"])),
                _ => format!("Init:ExitCode:{}", n(&terminated["exitCode"])),
            }
        } else {
            match waiting["reason"].as_str() {
                Some(r) if !r.is_empty() && r != "PodInitializing" => format!("Init:{r}"),
                _ => format!("Init:{i}/{}", init_specs.len()),
            }
        };
        break;
    }
    let initialized = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last;
        let mut running = false;
        for c in statuses.iter().rev() {
            restarts += n(&c["restartCount"]);
            last_restart = later(last_restart, finished(c));
            let (waiting, terminated) = (&c["state"]["waiting"], &c["state"]["terminated"]);
            if let Some(r) = waiting["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(r) = terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if terminated.is_object() {
                reason = if n(&terminated["signal"]) != 0 {
                    format!("Signal:{}", n(&terminated["signal"]))
                } else {
                    format!("ExitCode:{}", n(&terminated["exitCode"]))
                };
            } else if c["ready"] == true && c["state"]["running"].is_object() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready { "Running".into() } else { "NotReady".into() };
        }
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        if st["reason"] == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Failed" && phase != "Succeeded" {
            reason = "Terminating".into();
        }
    }
    let restarts = match last_restart.and_then(|t| now.duration_since(t).ok()) {
        Some(ago) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(ago)),
        _ => restarts.to_string(),
    };
    PodColumns { ready: format!("{ready}/{total}"), status: reason, restarts }
}

/// One table row for an object.
pub fn row(obj: &Value, wide: bool, now: SystemTime) -> Vec<String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = s(&obj["metadata"]["name"]);
    let st = &obj["status"];
    let spec = &obj["spec"];
    // kubectl's short access modes: RWO, ROX, RWX, RWOP.
    let modes = |v: &Value| -> String {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str())
            .map(|m| match m {
                "ReadWriteOnce" => "RWO",
                "ReadOnlyMany" => "ROX",
                "ReadWriteMany" => "RWX",
                "ReadWriteOncePod" => "RWOP",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut r = match kind {
        "PersistentVolume" => {
            let claim = match (spec["claimRef"]["namespace"].as_str(), spec["claimRef"]["name"].as_str()) {
                (Some(ns), Some(c)) => format!("{ns}/{c}"),
                _ => String::new(),
            };
            vec![
                name,
                s(&spec["capacity"]["storage"]),
                modes(&spec["accessModes"]),
                s(&spec["persistentVolumeReclaimPolicy"]),
                st["phase"].as_str().unwrap_or("Pending").to_string(),
                claim,
                s(&spec["storageClassName"]),
                age(obj, now),
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            st["phase"].as_str().unwrap_or("Pending").to_string(),
            s(&spec["volumeName"]),
            s(&st["capacity"]["storage"]),
            modes(&st["accessModes"]),
            s(&spec["storageClassName"]),
            age(obj, now),
        ],
        "Pod" => {
            let p = pod_status(obj, now);
            vec![name, p.ready, p.status, p.restarts, age(obj, now)]
        }
        "Deployment" => {
            let want = n(&spec["replicas"]);
            vec![
                name,
                format!("{}/{want}", n(&st["readyReplicas"])),
                n(&st["updatedReplicas"]).to_string(),
                n(&st["availableReplicas"]).to_string(),
                age(obj, now),
            ]
        }
        "ReplicaSet" => vec![
            name,
            n(&spec["replicas"]).to_string(),
            n(&st["replicas"]).to_string(),
            n(&st["readyReplicas"]).to_string(),
            age(obj, now),
        ],
        "DaemonSet" => {
            let sel: Vec<String> = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
                .unwrap_or_default();
            vec![
                name,
                n(&st["desiredNumberScheduled"]).to_string(),
                n(&st["currentNumberScheduled"]).to_string(),
                n(&st["numberReady"]).to_string(),
                n(&st["updatedNumberScheduled"]).to_string(),
                n(&st["numberAvailable"]).to_string(),
                if sel.is_empty() { "<none>".into() } else { sel.join(",") },
                age(obj, now),
            ]
        }
        "LimitRange" => vec![name, s(&obj["metadata"]["creationTimestamp"])],
        "ResourceQuota" => {
            // `pods: 1/2, requests.cpu: 500m/1` and the limits apart, as kubectl shows them.
            let hard = if st["hard"].is_object() { &st["hard"] } else { &spec["hard"] };
            let (mut req, mut lim) = (Vec::new(), Vec::new());
            for (k, h) in hard.as_object().into_iter().flatten() {
                let used = st["used"][k].as_str().map_or_else(|| "0".to_string(), str::to_string);
                let entry = format!("{k}: {used}/{}", s(h));
                if k.starts_with("limits.") { lim.push(entry) } else { req.push(entry) }
            }
            vec![name, age(obj, now), req.join(", "), lim.join(", ")]
        }
        "StatefulSet" => vec![
            name,
            format!("{}/{}", n(&st["readyReplicas"]), spec["replicas"].as_i64().unwrap_or(1)),
            age(obj, now),
        ],
        "ControllerRevision" => {
            let owner = obj["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["controller"] == true)
                .map_or_else(String::new, |o| {
                    let group =
                        s(&o["apiVersion"]).split_once('/').map(|(g, _)| g.to_string()).unwrap_or_default();
                    let kind = s(&o["kind"]).to_ascii_lowercase();
                    let kind = if group.is_empty() { kind } else { format!("{kind}.{group}") };
                    format!("{kind}/{}", s(&o["name"]))
                });
            vec![name, owner, n(&obj["revision"]).to_string(), age(obj, now)]
        }
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| match p.get("nodePort") {
                    Some(np) => format!("{}:{}/{}", n(&p["port"]), n(np), s(&p["protocol"])),
                    None => format!("{}/{}", n(&p["port"]), s(&p["protocol"])),
                })
                .collect();
            let ip = spec["clusterIP"].as_str().unwrap_or("<pending>").to_string();
            vec![
                name,
                s(&spec["type"]),
                ip,
                service_external_ip(obj, wide),
                if ports.is_empty() { "<none>".into() } else { ports.join(",") },
                age(obj, now),
            ]
        }
        "ConfigMap" => {
            let count = obj["data"].as_object().map_or(0, |m| m.len())
                + obj["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, count.to_string(), age(obj, now)]
        }
        "Secret" => vec![
            name,
            s(&obj["type"]),
            obj["data"].as_object().map_or(0, |m| m.len()).to_string(),
            age(obj, now),
        ],
        "Namespace" => vec![name, st["phase"].as_str().unwrap_or("Active").to_string(), age(obj, now)],
        "Node" => {
            let ready = st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                _ => "NotReady".to_string(),
            };
            if spec["unschedulable"] == true {
                status += ",SchedulingDisabled";
            }
            let version = s(&st["nodeInfo"]["kubeletVersion"]);
            vec![
                name,
                status,
                "<none>".into(),
                age(obj, now),
                if version.is_empty() { "<none>".into() } else { version },
            ]
        }
        "ServiceAccount" => {
            vec![name, obj["secrets"].as_array().map_or(0, Vec::len).to_string(), age(obj, now)]
        }
        "Role" | "ClusterRole" => vec![name, s(&obj["metadata"]["creationTimestamp"])],
        "RoleBinding" | "ClusterRoleBinding" => {
            vec![
                name,
                format!("{}/{}", s(&obj["roleRef"]["kind"]), s(&obj["roleRef"]["name"])),
                age(obj, now),
            ]
        }
        "Lease" => {
            let holder = s(&spec["holderIdentity"]);
            vec![name, if holder.is_empty() { "<none>".into() } else { holder }, age(obj, now)]
        }
        "Rollout" => vec![
            name,
            n(&spec["replicas"]).to_string(),
            n(&st["replicas"]).to_string(),
            n(&st["updatedReplicas"]).to_string(),
            n(&st["availableReplicas"]).to_string(),
            age(obj, now),
        ],
        "AnalysisRun" => vec![name, s(&st["phase"]), age(obj, now)],
        "VerticalPodAutoscaler" => {
            let target = &st["recommendation"]["containerRecommendations"][0]["target"];
            let provided = st["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "RecommendationProvided"))
                .map_or_else(String::new, |c| s(&c["status"]));
            vec![
                name,
                spec["updatePolicy"]["updateMode"].as_str().unwrap_or("Auto").to_string(),
                s(&target["cpu"]),
                s(&target["memory"]),
                provided,
                age(obj, now),
            ]
        }
        "PodDisruptionBudget" => {
            let or_na = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                name,
                or_na(&spec["minAvailable"]),
                or_na(&spec["maxUnavailable"]),
                n(&st["disruptionsAllowed"]).to_string(),
                age(obj, now),
            ]
        }
        "Ingress" => {
            // kubectl's: `*` for a rule without a host, `80` or `80, 443` with TLS.
            let spec = &obj["spec"];
            let hosts: Vec<&str> = spec["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["host"].as_str().unwrap_or("*"))
                .collect();
            let addrs: Vec<&str> = obj["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                .collect();
            let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
            vec![
                name,
                spec["ingressClassName"].as_str().unwrap_or("<none>").to_string(),
                if hosts.is_empty() { "*".into() } else { hosts.join(",") },
                addrs.join(","),
                if tls { "80, 443".into() } else { "80".into() },
                age(obj, now),
            ]
        }
        "IngressClass" => {
            let p = &obj["spec"]["parameters"];
            let params =
                if p.is_object() { format!("{}/{}", s(&p["kind"]), s(&p["name"])) } else { "<none>".into() };
            vec![name, s(&obj["spec"]["controller"]), params, age(obj, now)]
        }
        "NetworkPolicy" => {
            // kubectl's: the selector as `k=v,k2 in (a,b)`, `<none>` when it selects all.
            let sel = &obj["spec"]["podSelector"];
            let mut parts: Vec<String> = sel["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            for e in sel["matchExpressions"].as_array().into_iter().flatten() {
                let (k, op) = (s(&e["key"]), s(&e["operator"]));
                let vals: Vec<&str> =
                    e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                parts.push(match op.as_str() {
                    "In" => format!("{k} in ({})", vals.join(",")),
                    "NotIn" => format!("{k} notin ({})", vals.join(",")),
                    "Exists" => k,
                    _ => format!("!{k}"),
                });
            }
            let sel = if parts.is_empty() { "<none>".to_string() } else { parts.join(",") };
            vec![name, sel, age(obj, now)]
        }
        "AddressPool" => vec![
            name,
            obj["spec"]["autoAssign"].as_bool().unwrap_or(true).to_string(),
            obj["spec"]["addresses"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            age(obj, now),
        ],
        "PriorityClass" => vec![
            name,
            n(&obj["value"]).to_string(),
            (obj["globalDefault"] == true).to_string(),
            age(obj, now),
            s(&obj["preemptionPolicy"]),
        ],
        "EndpointSlice" => {
            // kubectl's: the port numbers, the first three addresses and how many more.
            let ports: Vec<String> = obj["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["port"].as_i64().map_or_else(|| "<unset>".to_string(), |n| n.to_string()))
                .collect();
            let addrs: Vec<&str> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str))
                .collect();
            let shown = match addrs.len() {
                0 => "<unset>".to_string(),
                n if n > 3 => format!("{} + {} more...", addrs[..3].join(","), n - 3),
                _ => addrs.join(","),
            };
            vec![
                name,
                s(&obj["addressType"]),
                if ports.is_empty() { "<unset>".into() } else { ports.join(",") },
                shown,
                age(obj, now),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in obj["subsets"].as_array().cloned().unwrap_or_default() {
                for a in sub["addresses"].as_array().cloned().unwrap_or_default() {
                    for p in sub["ports"].as_array().cloned().unwrap_or_default() {
                        eps.push(format!("{}:{}", s(&a["ip"]), n(&p["port"])));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, if shown.is_empty() { "<none>".into() } else { shown }, age(obj, now)]
        }
        "Event" => {
            let last = obj["lastTimestamp"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .map_or_else(|| "<unknown>".into(), human_duration);
            let io = &obj["involvedObject"];
            vec![
                last,
                s(&obj["type"]),
                s(&obj["reason"]),
                format!("{}/{}", s(&io["kind"]).to_ascii_lowercase(), s(&io["name"])),
                s(&obj["message"]),
            ]
        }
        "Job" => {
            let done = n(&st["succeeded"]);
            let want = spec["completions"].as_i64().unwrap_or(1);
            let status = if st["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Failed" && c["status"] == "True"))
            {
                "Failed"
            } else if done >= want {
                "Complete"
            } else {
                "Running"
            };
            let duration = match (st["startTime"].as_str(), st["completionTime"].as_str()) {
                (Some(a), b) => {
                    let start = humantime::parse_rfc3339(a).ok();
                    let end = b.and_then(|b| humantime::parse_rfc3339(b).ok()).unwrap_or(now);
                    start.and_then(|s| end.duration_since(s).ok()).map_or_else(String::new, human_duration)
                }
                _ => String::new(),
            };
            vec![name, status.into(), format!("{done}/{want}"), duration, age(obj, now)]
        }
        "CronJob" => {
            let last = st["lastScheduleTime"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .map_or_else(|| "<none>".into(), human_duration);
            vec![
                name,
                s(&spec["schedule"]),
                s(&spec["suspend"]),
                st["active"].as_array().map_or(0, Vec::len).to_string(),
                last,
                age(obj, now),
            ]
        }
        "HorizontalPodAutoscaler" => {
            let r = &spec["scaleTargetRef"];
            let targets = hpa_targets(spec, st);
            vec![
                name,
                format!("{}/{}", s(&r["kind"]), s(&r["name"])),
                targets,
                n(&spec["minReplicas"]).to_string(),
                n(&spec["maxReplicas"]).to_string(),
                n(&st["currentReplicas"]).to_string(),
                age(obj, now),
            ]
        }
        _ => vec![name, age(obj, now)],
    };
    if wide {
        match kind {
            "Pod" => r.extend([
                st["podIP"].as_str().unwrap_or("<none>").into(),
                spec["nodeName"].as_str().unwrap_or("<none>").into(),
                st["nominatedNodeName"].as_str().unwrap_or("<none>").into(),
                "<none>".into(),
            ]),
            "Node" => {
                let address = |t: &str| {
                    st["addresses"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["type"] == t))
                        .map_or_else(|| "<none>".to_string(), |x| s(&x["address"]))
                };
                let info = &st["nodeInfo"];
                let or_none = |v: String| if v.is_empty() { "<none>".to_string() } else { v };
                r.extend([
                    address("InternalIP"),
                    address("ExternalIP"),
                    or_none(s(&info["osImage"])),
                    or_none(s(&info["kernelVersion"])),
                    or_none(s(&info["containerRuntimeVersion"])),
                ]);
            }
            "Job" | "CronJob" => {
                let tpl =
                    if kind == "Job" { &spec["template"] } else { &spec["jobTemplate"]["spec"]["template"] };
                let cs = tpl["spec"]["containers"].as_array().cloned().unwrap_or_default();
                let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
                let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
                let sel: Vec<String> = spec["selector"]["matchLabels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
                    .unwrap_or_default();
                r.extend([
                    names.join(","),
                    images.join(","),
                    if sel.is_empty() { "<none>".into() } else { sel.join(",") },
                ]);
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let of = |k: &str| {
                    let v: Vec<String> = obj["subjects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|x| x["kind"] == k)
                        .map(|x| {
                            if k == "ServiceAccount" {
                                format!("{}/{}", s(&x["namespace"]), s(&x["name"]))
                            } else {
                                s(&x["name"])
                            }
                        })
                        .collect();
                    v.join(", ")
                };
                r.extend([of("User"), of("Group"), of("ServiceAccount")]);
            }
            "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => {
                let cs = spec["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
                let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
                let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
                if kind == "StatefulSet" {
                    r.extend([names.join(","), images.join(",")]);
                    return r;
                }
                let sel: Vec<String> = spec["selector"]["matchLabels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
                    .unwrap_or_default();
                r.extend([names.join(","), images.join(","), sel.join(",")]);
            }
            "Service" => {
                let sel: Vec<String> = spec["selector"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
                    .unwrap_or_default();
                r.push(if sel.is_empty() { "<none>".into() } else { sel.join(",") });
            }
            _ => {}
        }
    }
    r
}

/// kubectl's EXTERNAL-IP of a Service (`getServiceExternalIP`): a LoadBalancer's ingress
/// addresses (cut to 13 characters and `...` past 16 unless wide) and its external IPs, or
/// `<pending>`; other types their external IPs or `<none>`.
fn service_external_ip(obj: &Value, wide: bool) -> String {
    let external: Vec<&str> =
        obj["spec"]["externalIPs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if obj["spec"]["type"] == "LoadBalancer" {
        let mut lb = obj["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
            .collect::<Vec<_>>()
            .join(",");
        if !wide && lb.len() > 16 {
            lb = format!("{}...", &lb[..13]);
        }
        let mut all: Vec<&str> = lb.split(',').filter(|s| !s.is_empty()).collect();
        all.extend(&external);
        return if all.is_empty() { "<pending>".into() } else { all.join(",") };
    }
    if external.is_empty() { "<none>".into() } else { external.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (50 * 3600, "2d2h"),
            (30 * 86400, "30d"),
            (800 * 86400, "2y"),
        ] {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}");
        }
    }

    #[test]
    fn every_kind_has_as_many_cells_as_headers() {
        for k in crate::object::KINDS {
            let obj = serde_json::json!({"kind": k.kind, "metadata": {"name": "x"}});
            for wide in [false, true] {
                assert_eq!(
                    row(&obj, wide, SystemTime::now()).len(),
                    headers(k.kind, wide).len(),
                    "{} wide={wide}",
                    k.kind
                );
            }
        }
    }

    fn status(pod: serde_json::Value) -> String {
        pod_status(&pod, SystemTime::now()).status
    }

    #[test]
    fn pod_status_reads_like_kubectls() {
        use serde_json::json;
        let c = |state: serde_json::Value| json!({"name": "c", "state": state, "restartCount": 0});
        let pod = |phase: &str, statuses: Vec<serde_json::Value>| {
            json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": phase, "containerStatuses": statuses}})
        };
        assert_eq!(status(pod("Pending", vec![])), "Pending");
        assert_eq!(
            status(pod("Pending", vec![c(json!({"waiting": {"reason": "ContainerCreating"}}))])),
            "ContainerCreating"
        );
        assert_eq!(
            status(pod("Running", vec![c(json!({"waiting": {"reason": "CrashLoopBackOff"}}))])),
            "CrashLoopBackOff"
        );
        assert_eq!(
            status(pod("Pending", vec![c(json!({"waiting": {"reason": "ImagePullBackOff"}}))])),
            "ImagePullBackOff"
        );
        assert_eq!(
            status(pod("Succeeded", vec![c(json!({"terminated": {"reason": "Completed", "exitCode": 0}}))])),
            "Completed"
        );
        assert_eq!(
            status(pod("Failed", vec![c(json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}))])),
            "OOMKilled"
        );
        assert_eq!(status(pod("Failed", vec![c(json!({"terminated": {"exitCode": 3}}))])), "ExitCode:3");
        let mut running = pod(
            "Running",
            vec![json!({"name": "c", "ready": true, "state": {"running": {}}, "restartCount": 2,
            "lastState": {"terminated": {"finishedAt": "2020-01-01T00:00:00Z"}}})],
        );
        let cols = pod_status(&running, SystemTime::now());
        assert_eq!((cols.ready.as_str(), cols.status.as_str()), ("1/1", "Running"));
        assert!(cols.restarts.starts_with("2 (") && cols.restarts.ends_with(" ago)"), "{}", cols.restarts);
        running["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert_eq!(status(running.clone()), "Terminating");
        running["status"]["reason"] = "NodeLost".into();
        assert_eq!(status(running), "Unknown");
        let evicted = json!({"metadata": {}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Failed", "reason": "Evicted"}});
        assert_eq!(status(evicted), "Evicted");
        // Init containers: the first unfinished one speaks for the pod.
        let init = |statuses: Vec<serde_json::Value>| {
            json!({"metadata": {}, "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "c"}]},
                "status": {"phase": "Pending", "initContainerStatuses": statuses,
                    "containerStatuses": [c(json!({"waiting": {"reason": "PodInitializing"}}))]}})
        };
        let i =
            |name: &str, state: serde_json::Value| json!({"name": name, "state": state, "restartCount": 0});
        assert_eq!(
            status(init(vec![i("i1", json!({"running": {}})), i("i2", json!({"waiting": {}}))])),
            "Init:0/2"
        );
        assert_eq!(
            status(init(vec![
                i("i1", json!({"terminated": {"exitCode": 0}})),
                i("i2", json!({"waiting": {"reason": "CrashLoopBackOff"}}))
            ])),
            "Init:CrashLoopBackOff"
        );
        assert_eq!(
            status(init(vec![i("i1", json!({"terminated": {"exitCode": 1, "reason": "Error"}}))])),
            "Init:Error"
        );
        assert_eq!(
            status(init(vec![
                i("i1", json!({"terminated": {"exitCode": 0}})),
                i("i2", json!({"terminated": {"exitCode": 0}}))
            ])),
            "PodInitializing"
        );
    }

    #[test]
    fn deployment_rows() {
        let d = serde_json::json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(row(&d, false, SystemTime::now())[..4], ["web", "2/3", "3", "2"]);
    }
}
