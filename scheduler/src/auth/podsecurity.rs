//! Pod Security admission: Kubernetes' Pod Security Standards (`privileged`, `baseline`,
//! `restricted`, "latest" version), chosen per namespace by the labels
//! `pod-security.kubernetes.io/enforce|warn|audit`, with a cluster default for namespaces that
//! set none (`--pod-security-default`, baseline unless set; `kube-system` and `tug-system` are
//! exempt). The checks and their messages are Kubernetes' (`pod-security-admission`), run in
//! their IDs' order. Pure: a pod spec and metadata as JSON in, violations out.

use serde_json::Value;
use std::sync::OnceLock;

/// A Pod Security Standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The level of each mode for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enforce: Level,
    pub warn: Level,
    pub audit: Level,
}

/// Namespaces the cluster default never applies to (their own labels still do).
pub const EXEMPT: [&str; 2] = ["kube-system", "tug-system"];

static DEFAULT: OnceLock<Level> = OnceLock::new();

/// Sets the cluster default (once, at start).
pub fn set_default(level: Level) {
    let _ = DEFAULT.set(level);
}

/// The cluster default: what namespaces without labels get.
pub fn default_level() -> Level {
    *DEFAULT.get().unwrap_or(&Level::Baseline)
}

pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// A namespace's policy from its labels, the default filling in what they leave out.
pub fn policy(namespace: &str, labels: &Value) -> Policy {
    let fallback = if EXEMPT.contains(&namespace) { Level::Privileged } else { default_level() };
    let mode =
        |m: &str| labels[format!("{LABEL_PREFIX}{m}")].as_str().and_then(Level::parse).unwrap_or(fallback);
    Policy { enforce: mode("enforce"), warn: mode("warn"), audit: mode("audit") }
}

/// The errors of a namespace's Pod Security labels (a level must be one of the three, a
/// version `latest` or `v1.N`).
pub fn validate_labels(labels: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for mode in ["enforce", "warn", "audit"] {
        let key = format!("{LABEL_PREFIX}{mode}");
        if let Some(v) = labels[&key].as_str().filter(|v| Level::parse(v).is_none()) {
            out.push((
                format!("metadata.labels[{key}]"),
                format!("Invalid value: {v:?}: must be one of privileged, baseline, restricted"),
            ));
        }
        let key = format!("{LABEL_PREFIX}{mode}-version");
        if let Some(v) = labels[&key].as_str() {
            let ok = v == "latest"
                || v.strip_prefix("v1.")
                    .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                out.push((
                    format!("metadata.labels[{key}]"),
                    format!("Invalid value: {v:?}: must be \"latest\" or \"v1.x\""),
                ));
            }
        }
    }
    out
}

fn quoted(items: &[String]) -> String {
    items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

fn plural(one: &str, many: &str, n: usize) -> String {
    if n == 1 { one.into() } else { many.into() }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!("{} {}", plural("container", "containers", names.len()), quoted(names))
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Every container of a pod spec: init, regular, ephemeral.
fn all_containers(spec: &Value) -> Vec<&Value> {
    items(&spec["initContainers"])
        .chain(items(&spec["containers"]))
        .chain(items(&spec["ephemeralContainers"]))
        .collect()
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

const BASELINE_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The violations of `level` by a pod spec, each `reason (detail)`, in Kubernetes' order.
pub fn violations(level: Level, spec: &Value) -> Vec<String> {
    violations_with(level, spec, &Value::Null)
}

/// The same, with the pod's (or template's) annotations, which older AppArmor settings use.
pub fn violations_with(level: Level, spec: &Value, annotations: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let restricted = level == Level::Restricted;
    let cs = all_containers(spec);
    let psc = &spec["securityContext"];
    let mut out: Vec<String> = Vec::new();
    let mut add = |reason: &str, details: Vec<String>| {
        if !details.is_empty() {
            out.push(format!("{reason} ({})", details.join("; ")));
        }
    };

    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false)
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            add(
                "allowPrivilegeEscalation != false",
                vec![format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    containers_phrase(&bad)
                )],
            );
        }
    }
    // appArmorProfile: never Unconfined (the field, or the older per-container annotation).
    let mut armor = Vec::new();
    if psc["appArmorProfile"]["type"] == "Unconfined" {
        armor.push("pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".to_string());
    }
    let unconfined: Vec<String> = cs
        .iter()
        .filter(|c| {
            c["securityContext"]["appArmorProfile"]["type"] == "Unconfined"
                || annotations[format!("container.apparmor.security.beta.kubernetes.io/{}", name(c))]
                    == "unconfined"
        })
        .map(|c| name(c))
        .collect();
    if !unconfined.is_empty() {
        armor.push(format!(
            "{} must not set securityContext.appArmorProfile.type to \"Unconfined\"",
            containers_phrase(&unconfined)
        ));
    }
    add("forbidden AppArmor profile", armor);
    // capabilities: baseline's default set, or restricted's drop ALL / add NET_BIND_SERVICE only.
    let cap_list = |c: &Value, f: &str| -> Vec<String> {
        items(&c["securityContext"]["capabilities"][f])
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    if restricted {
        let mut details = Vec::new();
        let no_drop: Vec<String> =
            cs.iter().filter(|c| !cap_list(c, "drop").iter().any(|d| d == "ALL")).map(|c| name(c)).collect();
        if !no_drop.is_empty() {
            details.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers_phrase(&no_drop)
            ));
        }
        for c in &cs {
            let extra: Vec<String> =
                cap_list(c, "add").into_iter().filter(|a| a != "NET_BIND_SERVICE").collect();
            if !extra.is_empty() {
                details.push(format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    name(c),
                    quoted(&extra)
                ));
            }
        }
        add("unrestricted capabilities", details);
    } else {
        let mut details = Vec::new();
        for c in &cs {
            let extra: Vec<String> =
                cap_list(c, "add").into_iter().filter(|a| !BASELINE_CAPS.contains(&a.as_str())).collect();
            if !extra.is_empty() {
                details.push(format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    name(c),
                    quoted(&extra)
                ));
            }
        }
        add("non-default capabilities", details);
    }
    // hostNamespaces
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec[**f] == true)
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        add("host namespaces", vec![host.join(", ")]);
    }
    // hostPathVolumes
    let host_paths: Vec<String> =
        items(&spec["volumes"]).filter(|v| !v["hostPath"].is_null()).map(name).collect();
    if !host_paths.is_empty() {
        add(
            "hostPath volumes",
            vec![format!("{} {}", plural("volume", "volumes", host_paths.len()), quoted(&host_paths))],
        );
    }
    // hostPorts
    let (mut with_ports, mut ports) = (Vec::new(), Vec::new());
    for c in &cs {
        let mine: Vec<String> = items(&c["ports"])
            .filter_map(|p| p["hostPort"].as_i64().filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !mine.is_empty() {
            with_ports.push(name(c));
            ports.extend(mine);
        }
    }
    if !with_ports.is_empty() {
        let verb = if with_ports.len() == 1 { "uses" } else { "use" };
        add(
            "hostPort",
            vec![format!(
                "{} {verb} {} {}",
                containers_phrase(&with_ports),
                plural("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            )],
        );
    }
    // privileged
    let privileged: Vec<String> =
        cs.iter().filter(|c| c["securityContext"]["privileged"] == true).map(|c| name(c)).collect();
    if !privileged.is_empty() {
        add(
            "privileged",
            vec![format!("{} must not set securityContext.privileged=true", containers_phrase(&privileged))],
        );
    }
    // procMount
    let unmasked: Vec<String> = cs
        .iter()
        .filter(|c| c["securityContext"]["procMount"].as_str().is_some_and(|m| m != "Default"))
        .map(|c| name(c))
        .collect();
    if !unmasked.is_empty() {
        add(
            "procMount",
            vec![format!(
                "{} must not set securityContext.procMount to \"Unmasked\"",
                containers_phrase(&unmasked)
            )],
        );
    }
    // restrictedVolumes
    if restricted {
        let (mut vols, mut types) = (Vec::new(), Vec::new());
        for v in items(&spec["volumes"]) {
            let kind = v.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).find(|k| *k != "name");
            if let Some(k) = kind.filter(|k| !RESTRICTED_VOLUMES.contains(k)) {
                vols.push(name(v));
                if !types.contains(&k.to_string()) {
                    types.push(k.to_string());
                }
            }
        }
        if !vols.is_empty() {
            let verb = if vols.len() == 1 { "uses" } else { "use" };
            add(
                "restricted volume types",
                vec![format!(
                    "{} {} {verb} restricted volume {} {}",
                    plural("volume", "volumes", vols.len()),
                    quoted(&vols),
                    plural("type", "types", types.len()),
                    quoted(&types)
                )],
            );
        }
    }
    // runAsNonRoot (restricted)
    if restricted {
        let mut details = Vec::new();
        if psc["runAsNonRoot"] == false {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let explicit_false: Vec<String> =
            cs.iter().filter(|c| c["securityContext"]["runAsNonRoot"] == false).map(|c| name(c)).collect();
        if !explicit_false.is_empty() {
            details.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                containers_phrase(&explicit_false)
            ));
        }
        if psc["runAsNonRoot"] != true {
            let unset: Vec<String> = cs
                .iter()
                .filter(|c| c["securityContext"]["runAsNonRoot"].is_null())
                .map(|c| name(c))
                .collect();
            if !unset.is_empty() {
                details.push(format!(
                    "pod or {} must set securityContext.runAsNonRoot=true",
                    containers_phrase(&unset)
                ));
            }
        }
        add("runAsNonRoot != true", details);
    }
    // runAsUser (restricted)
    if restricted {
        let mut details = Vec::new();
        if psc["runAsUser"] == 0 {
            details.push("pod must not set runAsUser=0".to_string());
        }
        let root: Vec<String> =
            cs.iter().filter(|c| c["securityContext"]["runAsUser"] == 0).map(|c| name(c)).collect();
        if !root.is_empty() {
            details.push(format!("{} must not set runAsUser=0", containers_phrase(&root)));
        }
        add("runAsUser=0", details);
    }
    // seLinuxOptions: no user or role; type only container_t, container_init_t, container_kvm_t.
    let selinux_bad = |o: &Value| {
        !o["user"].is_null()
            || !o["role"].is_null()
            || o["type"]
                .as_str()
                .is_some_and(|t| !["", "container_t", "container_init_t", "container_kvm_t"].contains(&t))
    };
    let mut selinux = Vec::new();
    if selinux_bad(&psc["seLinuxOptions"]) {
        selinux.push("pod".to_string());
    }
    let bad_c: Vec<String> =
        cs.iter().filter(|c| selinux_bad(&c["securityContext"]["seLinuxOptions"])).map(|c| name(c)).collect();
    if !bad_c.is_empty() {
        selinux.push(containers_phrase(&bad_c));
    }
    if !selinux.is_empty() {
        add(
            "seLinuxOptions",
            vec![format!("{} set forbidden securityContext.seLinuxOptions", selinux.join(" and "))],
        );
    }
    // seccompProfile: baseline forbids Unconfined; restricted requires RuntimeDefault or Localhost.
    let seccomp = |v: &Value| v["seccompProfile"]["type"].as_str().map(str::to_string);
    let pod_type = seccomp(psc);
    let mut details = Vec::new();
    if pod_type.as_deref() == Some("Unconfined") {
        details.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
    }
    let unconfined: Vec<String> = cs
        .iter()
        .filter(|c| seccomp(&c["securityContext"]).as_deref() == Some("Unconfined"))
        .map(|c| name(c))
        .collect();
    if !unconfined.is_empty() {
        details.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&unconfined)
        ));
    }
    if restricted && pod_type.is_none() {
        let unset: Vec<String> =
            cs.iter().filter(|c| seccomp(&c["securityContext"]).is_none()).map(|c| name(c)).collect();
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&unset)
            ));
        }
    }
    add("seccompProfile", details);
    // sysctls
    let forbidden: Vec<String> = items(&psc["sysctls"])
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_string)
        .collect();
    if !forbidden.is_empty() {
        add("forbidden sysctls", vec![forbidden.join(", ")]);
    }
    out
}

/// `violates PodSecurity "baseline:latest": …`.
pub fn message(level: Level, found: &[String]) -> String {
    format!("violates PodSecurity \"{}:latest\": {}", level.name(), found.join(", "))
}

/// The pod spec inside an object of `kind`: a Pod's own, a workload's template's.
pub fn pod_spec<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match kind {
        "Pod" => Some(&obj["spec"]),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            Some(&obj["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// The annotations of the pod inside an object of `kind`.
fn pod_annotations<'a>(kind: &str, obj: &'a Value) -> &'a Value {
    match kind {
        "Pod" => &obj["metadata"]["annotations"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"],
        _ => &obj["spec"]["template"]["metadata"]["annotations"],
    }
}

/// What admission says of an object in a namespace with `policy`: the refusal (pods only,
/// by `enforce`) or the warnings (`warn`, for pods and workloads' templates).
pub fn admit(kind: &str, obj: &Value, policy: Policy) -> Result<Vec<String>, String> {
    let Some(spec) = pod_spec(kind, obj) else { return Ok(Vec::new()) };
    let annotations = pod_annotations(kind, obj);
    let violations = |level| violations_with(level, spec, annotations);
    if kind == "Pod" {
        let v = violations(policy.enforce);
        if !v.is_empty() {
            return Err(message(policy.enforce, &v));
        }
    }
    let v = violations(policy.warn);
    Ok(if v.is_empty() {
        Vec::new()
    } else {
        vec![format!("would violate PodSecurity \"{}:latest\": {}", policy.warn.name(), v.join(", "))]
    })
}

/// The `audit` level's findings for an admitted object, as the audit annotation
/// `pod-security.kubernetes.io/audit-violations` words them.
pub fn audit(kind: &str, obj: &Value, policy: Policy) -> Option<String> {
    let spec = pod_spec(kind, obj)?;
    let v = violations_with(policy.audit, spec, pod_annotations(kind, obj));
    (!v.is_empty())
        .then(|| format!("would violate PodSecurity \"{}:latest\": {}", policy.audit.name(), v.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn baseline_refuses_host_access_with_kubernetes_words() {
        let spec = json!({"hostNetwork": true, "hostPID": true,
            "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}});
        let v = violations(Level::Baseline, &spec);
        assert_eq!(
            message(Level::Baseline, &v),
            "violates PodSecurity \"baseline:latest\": non-default capabilities (container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume \"root\"), hostPort (container \"c\" uses hostPort 8080), privileged (container \"c\" must not set securityContext.privileged=true), forbidden sysctls (net.core.somaxconn)"
        );
        assert!(violations(Level::Privileged, &spec).is_empty());
        let plain = json!({"containers": [{"name": "c", "image": "x"}]});
        assert!(violations(Level::Baseline, &plain).is_empty());
        let armor = json!({"containers": [{"name": "c", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}, {"name": "d"}]});
        assert_eq!(
            violations_with(Level::Baseline, &armor, &json!({"container.apparmor.security.beta.kubernetes.io/d": "unconfined"})),
            vec!["forbidden AppArmor profile (containers \"c\", \"d\" must not set securityContext.appArmorProfile.type to \"Unconfined\")".to_string()]
        );
    }

    #[test]
    fn restricted_wants_non_root_no_escalation_dropped_caps_and_a_seccomp_profile() {
        let root =
            json!({"containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "d", "emptyDir": {}}]});
        assert_eq!(
            message(Level::Restricted, &violations(Level::Restricted, &root)),
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let good = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "s", "secret": {"secretName": "x"}}]});
        assert_eq!(violations(Level::Restricted, &good), Vec::<String>::new());
        let mut bad = good.clone();
        bad["volumes"] = json!([{"name": "h", "hostPath": {"path": "/"}}]);
        bad["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        let v = violations(Level::Restricted, &bad).join(", ");
        assert!(
            v.contains("restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"),
            "{v}"
        );
        assert!(v.contains("runAsUser=0 (container \"c\" must not set runAsUser=0)"), "{v}");
    }

    #[test]
    fn namespaces_choose_their_levels() {
        let p = policy("dev", &json!({"pod-security.kubernetes.io/enforce": "restricted"}));
        assert_eq!((p.enforce, p.warn), (Level::Restricted, Level::Baseline));
        assert_eq!(policy("tug-system", &json!({})).enforce, Level::Privileged);
        assert_eq!(policy("default", &json!(null)).enforce, Level::Baseline);
        let errs = validate_labels(
            &json!({"pod-security.kubernetes.io/enforce": "strict", "pod-security.kubernetes.io/warn-version": "v2"}),
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        let warned = admit(
            "Deployment",
            &json!({"spec": {"template": {"spec": {"hostNetwork": true, "containers": []}}}}),
            Policy { enforce: Level::Restricted, warn: Level::Baseline, audit: Level::Baseline },
        )
        .unwrap();
        assert_eq!(
            warned,
            vec![
                "would violate PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"
                    .to_string()
            ]
        );
    }
}
