//! Validation of typed objects with Kubernetes' rules and messages. Runs after defaulting.

use crate::kinds::pod::{Container, PodSpec};
use crate::labels::LabelSelector;
use crate::meta::{IntOrString, ObjectMeta};
use crate::object::Object;
use crate::validation::{
    Errors, FieldError, dns1123_label, dns1123_subdomain, label_value, port_name, port_number, qualified_name,
};
use base64::Engine;

/// Validates one object; every problem found is returned, not only the first.
pub fn object(obj: &Object) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    let names = match obj {
        Object::Namespace(_) | Object::Service(_) => NameRule::Label,
        Object::Role(_) | Object::ClusterRole(_) | Object::RoleBinding(_) | Object::ClusterRoleBinding(_) => {
            NameRule::PathSegment
        }
        _ => NameRule::Subdomain,
    };
    metadata(obj.metadata(), names, obj.info().namespaced, &mut e);
    match obj {
        Object::Pod(p) => pod_spec(&p.spec, "spec", &mut e),
        Object::Deployment(d) => {
            replicas(d.spec.replicas, "spec.replicas", &mut e);
            template(&d.spec.selector, &d.spec.template.metadata, &d.spec.template.spec, &mut e);
            if let Some(s) = &d.spec.strategy {
                match s.type_.as_deref() {
                    Some("RollingUpdate") => {
                        if let Some(ru) = &s.rolling_update {
                            rolling_update(
                                "spec.strategy.rollingUpdate",
                                (ru.max_surge.as_ref(), ru.max_unavailable.as_ref()),
                                (1, 1),
                                &mut e,
                            );
                        }
                    }
                    Some("Recreate") if s.rolling_update.is_some() => e.add(
                        "spec.strategy.rollingUpdate",
                        "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                    ),
                    Some("Recreate") | None => {}
                    Some(other) => e.add(
                        "spec.strategy.type",
                        format!(
                            "Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
                        ),
                    ),
                }
            }
            non_negative(d.spec.min_ready_seconds.map(i64::from), "spec.minReadySeconds", &mut e);
            non_negative(d.spec.revision_history_limit.map(i64::from), "spec.revisionHistoryLimit", &mut e);
            if let (Some(p), Some(m)) = (d.spec.progress_deadline_seconds, d.spec.min_ready_seconds) {
                if p <= m {
                    e.add(
                        "spec.progressDeadlineSeconds",
                        format!("Invalid value: {p}: must be greater than minReadySeconds"),
                    );
                }
            }
        }
        Object::ReplicaSet(r) => {
            replicas(r.spec.replicas, "spec.replicas", &mut e);
            template(&r.spec.selector, &r.spec.template.metadata, &r.spec.template.spec, &mut e);
        }
        Object::DaemonSet(d) => {
            template(&d.spec.selector, &d.spec.template.metadata, &d.spec.template.spec, &mut e);
            if let Some(s) = &d.spec.update_strategy {
                match s.type_.as_deref() {
                    Some("RollingUpdate") | None => {
                        if let Some(ru) = &s.rolling_update {
                            rolling_update(
                                "spec.updateStrategy.rollingUpdate",
                                (ru.max_surge.as_ref(), ru.max_unavailable.as_ref()),
                                (0, 1),
                                &mut e,
                            );
                        }
                    }
                    Some("OnDelete") if s.rolling_update.is_some() => e.add(
                        "spec.updateStrategy.rollingUpdate",
                        "Forbidden: may not be specified when strategy `type` is 'OnDelete'",
                    ),
                    Some("OnDelete") => {}
                    Some(other) => e.add(
                        "spec.updateStrategy.type",
                        format!(
                            "Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""
                        ),
                    ),
                }
            }
            non_negative(d.spec.min_ready_seconds.map(i64::from), "spec.minReadySeconds", &mut e);
            non_negative(d.spec.revision_history_limit.map(i64::from), "spec.revisionHistoryLimit", &mut e);
        }
        Object::StatefulSet(d) => crate::validate_apps::stateful_set(d, &mut e),
        Object::LimitRange(l) => crate::validate_apps::limit_range(l, &mut e),
        Object::ResourceQuota(q) => crate::validate_apps::resource_quota(q, &mut e),
        Object::ControllerRevision(c) => non_negative(Some(c.revision), "revision", &mut e),
        Object::Service(s) => service(s, &mut e),
        Object::ConfigMap(c) => {
            for k in c.data.keys().chain(c.binary_data.keys()) {
                config_key(k, &format!("data[{k}]"), &mut e);
                if c.data.contains_key(k) && c.binary_data.contains_key(k) {
                    e.add(format!("data[{k}]"), "Invalid value: duplicate of key present in binaryData");
                }
            }
        }
        Object::Secret(s) => {
            for (k, v) in &s.data {
                config_key(k, &format!("data[{k}]"), &mut e);
                if base64::engine::general_purpose::STANDARD.decode(v).is_err() {
                    e.add(
                        format!("data[{k}]"),
                        "Invalid value: <secret contents redacted>: illegal base64 data",
                    );
                }
            }
            if s.type_.as_deref() == Some("kubernetes.io/dockerconfigjson")
                && !s.data.contains_key(".dockerconfigjson")
            {
                e.add("data[.dockerconfigjson]", "Required value");
            }
        }
        Object::Job(j) => job_spec(&j.spec, "spec", &mut e),
        Object::CronJob(c) => {
            if let Err(msg) = cron_schedule(&c.spec.schedule) {
                e.add("spec.schedule", format!("Invalid value: {:?}: {msg}", c.spec.schedule));
            }
            if let Some(p) =
                c.spec.concurrency_policy.as_deref().filter(|p| !["Allow", "Forbid", "Replace"].contains(p))
            {
                e.add(
                    "spec.concurrencyPolicy",
                    format!("Unsupported value: {p:?}: supported values: \"Allow\", \"Forbid\", \"Replace\""),
                );
            }
            non_negative(c.spec.starting_deadline_seconds, "spec.startingDeadlineSeconds", &mut e);
            job_spec(&c.spec.job_template.spec, "spec.jobTemplate.spec", &mut e);
        }
        Object::HorizontalPodAutoscaler(h) => hpa(&h.spec, &mut e),
        Object::PodDisruptionBudget(p) => pdb(&p.spec, &mut e),
        Object::VerticalPodAutoscaler(v) => vpa(&v.spec, &mut e),
        Object::Rollout(r) => crate::validate_rollouts::rollout(r, &mut e),
        Object::AnalysisTemplate(t) => crate::validate_rollouts::template(&t.spec, &mut e),
        Object::ClusterAnalysisTemplate(t) => crate::validate_rollouts::template(&t.spec, &mut e),
        Object::AnalysisRun(r) => crate::validate_rollouts::metrics(&r.spec.metrics, "spec.metrics", &mut e),
        Object::Node(n) => {
            for (i, t) in n.spec.taints.iter().enumerate() {
                if let Err(msg) = qualified_name(&t.key) {
                    e.add(format!("spec.taints[{i}].key"), format!("Invalid value: {:?}: {msg}", t.key));
                }
                if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
                    e.add(format!("spec.taints[{i}].effect"), format!("Unsupported value: {:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"", t.effect));
                }
            }
        }
        Object::Endpoints(ep) => {
            for (i, s) in ep.subsets.iter().enumerate() {
                for (j, a) in s.addresses.iter().chain(&s.not_ready_addresses).enumerate() {
                    if a.ip.parse::<std::net::IpAddr>().is_err() {
                        e.add(
                            format!("subsets[{i}].addresses[{j}].ip"),
                            format!("Invalid value: {:?}: must be a valid IP address", a.ip),
                        );
                    }
                }
                for (j, p) in s.ports.iter().enumerate() {
                    if let Err(msg) = port_number(p.port) {
                        e.add(
                            format!("subsets[{i}].ports[{j}].port"),
                            format!("Invalid value: {}: {msg}", p.port),
                        );
                    }
                    protocol(p.protocol.as_deref(), &format!("subsets[{i}].ports[{j}].protocol"), &mut e);
                }
            }
        }
        Object::PersistentVolume(pv) => persistent_volume(&pv.spec, &mut e),
        Object::PriorityClass(pc) => {
            let system =
                crate::kinds::cluster::SYSTEM_PRIORITY_CLASSES.iter().any(|(n, _)| *n == pc.metadata.name);
            if pc.metadata.name.starts_with("system-") && !system {
                e.add(
                    "metadata.name",
                    format!(
                        "Invalid value: {:?}: priority class names with 'system-' prefix are reserved",
                        pc.metadata.name
                    ),
                );
            }
            if !system && pc.value > 1_000_000_000 {
                e.add(
                    "value",
                    format!(
                        "Invalid value: {}: maximum allowed value of a user defined priority is 1000000000",
                        pc.value
                    ),
                );
            }
            if let Some(p) = pc.preemption_policy.as_deref() {
                if !["PreemptLowerPriority", "Never"].contains(&p) {
                    e.add(
                        "preemptionPolicy",
                        format!(
                            "Unsupported value: {p:?}: supported values: \"Never\", \"PreemptLowerPriority\""
                        ),
                    );
                }
            }
        }
        Object::PersistentVolumeClaim(c) => {
            access_modes(&c.spec.access_modes, "spec.accessModes", &mut e);
            volume_mode(c.spec.volume_mode.as_deref(), "spec.volumeMode", &mut e);
            if !c.spec.resources.as_ref().is_some_and(|r| r.requests.contains_key("storage")) {
                e.add("spec.resources.requests.storage", "Required value");
            }
        }
        Object::Lease(l) => {
            if l.spec.lease_duration_seconds.is_some_and(|d| d <= 0) {
                e.add("spec.leaseDurationSeconds", "Invalid value: must be greater than 0");
            }
        }
        Object::Event(ev) => {
            if let Some(t) = ev.type_.as_deref().filter(|t| !["Normal", "Warning"].contains(t)) {
                e.add("type", format!("Unsupported value: {t:?}: supported values: \"Normal\", \"Warning\""));
            }
        }
        Object::Namespace(_) | Object::ServiceAccount(_) => {}
        Object::EndpointSlice(s) => {
            if !["IPv4", "IPv6", "FQDN"].contains(&s.address_type.as_str()) {
                e.add(
                    "addressType",
                    format!(
                        "Unsupported value: {:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                        s.address_type
                    ),
                );
            }
            if s.endpoints.len() > 1000 {
                e.add("endpoints", format!("Too many: {}: must have at most 1000 items", s.endpoints.len()));
            }
            if s.ports.len() > 100 {
                e.add("ports", format!("Too many: {}: must have at most 100 items", s.ports.len()));
            }
            for (i, ep) in s.endpoints.iter().enumerate() {
                if ep.addresses.is_empty() || ep.addresses.len() > 100 {
                    e.add(
                        format!("endpoints[{i}].addresses"),
                        "Invalid value: must contain 1 to 100 addresses",
                    );
                }
                for (j, a) in ep.addresses.iter().enumerate() {
                    if s.address_type == "IPv4" && a.parse::<std::net::Ipv4Addr>().is_err() {
                        e.add(
                            format!("endpoints[{i}].addresses[{j}]"),
                            format!("Invalid value: {a:?}: must be a valid IPv4 address"),
                        );
                    }
                }
            }
            for (i, p) in s.ports.iter().enumerate() {
                if let Some(n) = p.port.filter(|n| port_number(*n).is_err()) {
                    e.add(
                        format!("ports[{i}].port"),
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    );
                }
                protocol(p.protocol.as_deref(), &format!("ports[{i}].protocol"), &mut e);
            }
        }
        Object::Ingress(i) => {
            for (field, message) in crate::kinds::networking::validate_ingress(&i.spec) {
                e.add(field, message);
            }
        }
        Object::IngressClass(c) => {
            if c.spec.controller.is_empty() {
                e.add("spec.controller", "Required value");
            }
        }
        Object::NetworkPolicy(p) => {
            for (field, message) in crate::kinds::networking::validate(&p.spec) {
                e.add(field, message);
            }
        }
        Object::AddressPool(p) => {
            if p.spec.addresses.is_empty() {
                e.add("spec.addresses", "Required value");
            }
            for (i, a) in p.spec.addresses.iter().enumerate() {
                if let Err(msg) = crate::kinds::lb::parse_range(a) {
                    e.add(format!("spec.addresses[{i}]"), format!("Invalid value: {a:?}: {msg}"));
                }
            }
        }
        Object::Role(r) => policy_rules(&r.rules, true, &mut e),
        Object::ClusterRole(r) => {
            policy_rules(&r.rules, false, &mut e);
            for (i, s) in r.aggregation_rule.iter().flat_map(|a| a.cluster_role_selectors.iter()).enumerate()
            {
                if let Err(fe) = s.to_selector(&format!("aggregationRule.clusterRoleSelectors[{i}]")) {
                    e.list.push(fe);
                }
            }
        }
        Object::RoleBinding(b) => binding(&b.role_ref, &b.subjects, &["ClusterRole", "Role"], &mut e),
        Object::ClusterRoleBinding(b) => {
            binding(&b.role_ref, &b.subjects, &["ClusterRole"], &mut e);
            // A RoleBinding's service accounts default to its namespace; a cluster binding's
            // must name theirs.
            for (i, s) in b.subjects.iter().enumerate() {
                if s.kind == "ServiceAccount" && s.namespace.as_deref().unwrap_or_default().is_empty() {
                    e.add(format!("subjects[{i}].namespace"), "Required value");
                }
            }
        }
    }
    e.into_result()
}

/// Kubernetes' `ValidatePolicyRule`.
fn policy_rules(rules: &[crate::kinds::rbac::PolicyRule], namespaced: bool, e: &mut Errors) {
    for (i, r) in rules.iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if r.verbs.is_empty() {
            e.add(at("verbs"), "Required value: verbs must contain at least one value");
        }
        if !r.non_resource_urls.is_empty() {
            if namespaced {
                e.add(
                    at("nonResourceURLs"),
                    format!(
                        "Invalid value: {:?}: namespaced rules cannot apply to non-resource URLs",
                        r.non_resource_urls
                    ),
                );
            }
            if !r.api_groups.is_empty() || !r.resources.is_empty() || !r.resource_names.is_empty() {
                e.add(
                    at("nonResourceURLs"),
                    format!(
                        "Invalid value: {:?}: rules cannot apply to both regular resources and non-resource URLs",
                        r.non_resource_urls
                    ),
                );
            }
            continue;
        }
        if r.api_groups.is_empty() {
            e.add(at("apiGroups"), "Required value: resource rules must supply at least one api group");
        }
        if r.resources.is_empty() {
            e.add(at("resources"), "Required value: resource rules must supply at least one resource");
        }
    }
}

/// Kubernetes' `ValidateRoleBinding`: the role it grants and whom to.
fn binding(
    role: &crate::kinds::rbac::RoleRef,
    subjects: &[crate::kinds::rbac::Subject],
    kinds: &[&str],
    e: &mut Errors,
) {
    if role.api_group != crate::kinds::rbac::GROUP {
        e.add(
            "roleRef.apiGroup",
            format!(
                "Unsupported value: {:?}: supported values: \"{}\"",
                role.api_group,
                crate::kinds::rbac::GROUP
            ),
        );
    }
    if !kinds.contains(&role.kind.as_str()) {
        e.add(
            "roleRef.kind",
            format!("Unsupported value: {:?}: supported values: {}", role.kind, quoted(kinds)),
        );
    }
    if role.name.is_empty() {
        e.add("roleRef.name", "Required value");
    } else if let Err(msg) = path_segment(&role.name) {
        e.add("roleRef.name", format!("Invalid value: {:?}: {msg}", role.name));
    }
    for (i, s) in subjects.iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        if s.name.is_empty() {
            e.add(at("name"), "Required value");
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if let Some(msg) = (!s.name.is_empty()).then(|| dns1123_subdomain(&s.name).err()).flatten() {
                    e.add(at("name"), format!("Invalid value: {:?}: {msg}", s.name));
                }
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    e.add(
                        at("apiGroup"),
                        format!(
                            "Unsupported value: {:?}: supported values: \"\"",
                            s.api_group.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
            "User" | "Group" => {
                if s.api_group.as_deref() != Some(crate::kinds::rbac::GROUP) {
                    e.add(
                        at("apiGroup"),
                        format!(
                            "Unsupported value: {:?}: supported values: \"{}\"",
                            s.api_group.as_deref().unwrap_or_default(),
                            crate::kinds::rbac::GROUP
                        ),
                    );
                }
            }
            other => e.add(
                at("kind"),
                format!(
                    "Unsupported value: {other:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""
                ),
            ),
        }
    }
}

/// Kubernetes' `IsValidPathSegmentName`: what RBAC objects' names must be (`system:node` is one).
pub fn path_segment(name: &str) -> Result<(), String> {
    match name {
        "." => Err("may not be '.'".into()),
        ".." => Err("may not be '..'".into()),
        _ if name.contains('/') => Err("may not contain '/'".into()),
        _ if name.contains('%') => Err("may not contain '%'".into()),
        _ => Ok(()),
    }
}

/// How an object's name is checked.
#[derive(Clone, Copy)]
enum NameRule {
    Label,
    Subdomain,
    PathSegment,
}

const HOST_PATH_TYPES: [&str; 8] =
    ["", "BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File", "FileOrCreate", "Socket"];

fn host_path_type(t: Option<&str>, path: &str, e: &mut Errors) {
    if let Some(t) = t.filter(|t| !HOST_PATH_TYPES.contains(t)) {
        e.add(path, format!("Unsupported value: {t:?}: supported values: {}", quoted(&HOST_PATH_TYPES)));
    }
}

pub(crate) fn volume_mode(m: Option<&str>, path: &str, e: &mut Errors) {
    if let Some(m) = m.filter(|m| !["Block", "Filesystem"].contains(m)) {
        e.add(path, format!("Unsupported value: {m:?}: supported values: \"Block\", \"Filesystem\""));
    }
}

const ACCESS_MODES: [&str; 4] = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];

pub(crate) fn access_modes(modes: &[String], path: &str, e: &mut Errors) {
    if modes.is_empty() {
        e.add(path, "Required value: at least 1 access mode is required");
    }
    for (i, m) in modes.iter().enumerate() {
        if !ACCESS_MODES.contains(&m.as_str()) {
            e.add(
                format!("{path}[{i}]"),
                format!("Unsupported value: {m:?}: supported values: {}", quoted(&ACCESS_MODES)),
            );
        }
    }
}

fn quoted(values: &[&str]) -> String {
    values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
}

fn persistent_volume(s: &crate::kinds::storage::PersistentVolumeSpec, e: &mut Errors) {
    access_modes(&s.access_modes, "spec.accessModes", e);
    volume_mode(s.volume_mode.as_deref(), "spec.volumeMode", e);
    if let Some(h) = &s.host_path {
        host_path_type(h.type_.as_deref(), "spec.hostPath.type", e);
    }
    if !s.capacity.contains_key("storage") {
        e.add("spec.capacity.storage", "Required value");
    }
    match (&s.local, &s.host_path) {
        (None, None) => e.add("spec", "Required value: must specify a volume type (local or hostPath)"),
        (Some(_), Some(_)) => e.add("spec", "Forbidden: may not specify more than 1 volume type"),
        (Some(l), None) => {
            if !l.path.starts_with('/') {
                e.add("spec.local.path", format!("Invalid value: {:?}: must be an absolute path", l.path));
            }
            if s.node_affinity.as_ref().is_none_or(|a| a.required.is_none()) {
                e.add("spec.nodeAffinity", "Required value: Local volume requires node affinity");
            }
        }
        (None, Some(h)) => {
            if !h.path.starts_with('/') {
                e.add("spec.hostPath.path", format!("Invalid value: {:?}: must be an absolute path", h.path));
            }
        }
    }
    if let Some(p) = s.persistent_volume_reclaim_policy.as_deref() {
        if !["Retain", "Delete"].contains(&p) {
            e.add(
                "spec.persistentVolumeReclaimPolicy",
                format!("Unsupported value: {p:?}: supported values: \"Delete\", \"Retain\""),
            );
        }
    }
}

fn job_spec(s: &crate::kinds::batch::JobSpec, path: &str, e: &mut Errors) {
    non_negative(s.parallelism.map(i64::from), &format!("{path}.parallelism"), e);
    non_negative(s.completions.map(i64::from), &format!("{path}.completions"), e);
    non_negative(s.backoff_limit.map(i64::from), &format!("{path}.backoffLimit"), e);
    if let Some(m) = s.completion_mode.as_deref().filter(|m| !["NonIndexed", "Indexed"].contains(m)) {
        e.add(
            format!("{path}.completionMode"),
            format!("Unsupported value: {m:?}: supported values: \"NonIndexed\", \"Indexed\""),
        );
    }
    if s.completion_mode.as_deref() == Some("Indexed") && s.completions.is_none() {
        e.add(format!("{path}.completions"), "Required value: when completion mode is Indexed");
    }
    for (i, r) in s.pod_failure_policy.iter().flat_map(|p| p.rules.iter()).enumerate() {
        let rule = format!("{path}.podFailurePolicy.rules[{i}]");
        if !["FailJob", "Ignore", "Count"].contains(&r.action.as_str()) {
            e.add(
                format!("{rule}.action"),
                format!(
                    "Unsupported value: {:?}: supported values: \"Count\", \"FailJob\", \"Ignore\"",
                    r.action
                ),
            );
        }
        match &r.on_exit_codes {
            None => e.add(format!("{rule}.onExitCodes"), "Required value"),
            Some(c) => {
                if !["In", "NotIn"].contains(&c.operator.as_str()) {
                    e.add(
                        format!("{rule}.onExitCodes.operator"),
                        format!("Unsupported value: {:?}: supported values: \"In\", \"NotIn\"", c.operator),
                    );
                }
                if c.values.is_empty() {
                    e.add(
                        format!("{rule}.onExitCodes.values"),
                        "Required value: at least one value is required",
                    );
                }
            }
        }
    }
    let rp = format!("{path}.template.spec.restartPolicy");
    match s.template.spec.restart_policy.as_deref() {
        None => e.add(rp, "Required value: valid values: \"OnFailure\", \"Never\""),
        Some("OnFailure" | "Never") => {}
        Some(p) => e.add(rp, format!("Unsupported value: {p:?}: supported values: \"OnFailure\", \"Never\"")),
    }
    labels(&s.template.metadata.labels, &format!("{path}.template.metadata.labels"), e);
    pod_spec(&s.template.spec, &format!("{path}.template.spec"), e);
}

/// Kubernetes' PodDisruptionBudget rules: one of minAvailable and maxUnavailable, each a
/// non-negative number or a percentage of at most 100%, and a selector that compiles.
fn pdb(s: &crate::kinds::policy::PdbSpec, e: &mut Errors) {
    use crate::kinds::policy::{ALWAYS_ALLOW, IF_HEALTHY_BUDGET};
    if s.min_available.is_some() && s.max_unavailable.is_some() {
        e.add("spec", "Invalid value: minAvailable and maxUnavailable cannot be both set");
    }
    for (v, field) in [(&s.min_available, "spec.minAvailable"), (&s.max_unavailable, "spec.maxUnavailable")] {
        let Some(v) = v else { continue };
        match (v, v.scaled(100, true)) {
            (_, Err(msg)) => e.add(field, format!("Invalid value: {msg}")),
            (_, Ok(n)) if n < 0 => {
                e.add(field, format!("Invalid value: {n}: must be greater than or equal to 0"))
            }
            (IntOrString::String(p), Ok(n)) if n > 100 => {
                e.add(field, format!("Invalid value: {p:?}: must be no more than 100%"))
            }
            _ => {}
        }
    }
    if let Some(sel) = &s.selector {
        if let Err(fe) = sel.to_selector("spec.selector") {
            e.add(fe.field, fe.message);
        }
    }
    if let Some(p) =
        s.unhealthy_pod_eviction_policy.as_deref().filter(|p| ![IF_HEALTHY_BUDGET, ALWAYS_ALLOW].contains(p))
    {
        e.add(
            "spec.unhealthyPodEvictionPolicy",
            format!(
                "Unsupported value: {p:?}: supported values: \"{IF_HEALTHY_BUDGET}\", \"{ALWAYS_ALLOW}\""
            ),
        );
    }
}

fn vpa(s: &crate::kinds::vpa::VpaSpec, e: &mut Errors) {
    if s.target_ref.kind.is_empty() {
        e.add("spec.targetRef.kind", "Required value");
    }
    if s.target_ref.name.is_empty() {
        e.add("spec.targetRef.name", "Required value");
    }
    let modes = ["Off", "Initial", "Recreate", "InPlaceOrRecreate", "Auto"];
    if let Some(m) =
        s.update_policy.as_ref().and_then(|u| u.update_mode.as_deref()).filter(|m| !modes.contains(m))
    {
        e.add(
            "spec.updatePolicy.updateMode",
            format!("Unsupported value: {m:?}: supported values: \"Auto\", \"InPlaceOrRecreate\", \"Initial\", \"Off\", \"Recreate\""),
        );
    }
    for (i, p) in s.resource_policy.iter().flat_map(|r| r.container_policies.iter()).enumerate() {
        let at = format!("spec.resourcePolicy.containerPolicies[{i}]");
        if p.container_name.is_empty() {
            e.add(format!("{at}.containerName"), "Required value");
        }
        for r in &p.controlled_resources {
            if !["cpu", "memory"].contains(&r.as_str()) {
                e.add(
                    format!("{at}.controlledResources"),
                    format!("Unsupported value: {r:?}: supported values: \"cpu\", \"memory\""),
                );
            }
        }
        if let Some(m) = p.mode.as_deref().filter(|m| !["Auto", "Off"].contains(m)) {
            e.add(
                format!("{at}.mode"),
                format!("Unsupported value: {m:?}: supported values: \"Auto\", \"Off\""),
            );
        }
        for (r, min) in &p.min_allowed {
            if p.max_allowed.get(r).is_some_and(|max| max.millis() < min.millis()) {
                e.add(
                    format!("{at}.maxAllowed.{r}"),
                    "Invalid value: must be greater than or equal to minAllowed",
                );
            }
        }
    }
}

fn hpa(s: &crate::kinds::batch::HpaSpec, e: &mut Errors) {
    if s.scale_target_ref.kind.is_empty() {
        e.add("spec.scaleTargetRef.kind", "Required value");
    }
    if s.scale_target_ref.name.is_empty() {
        e.add("spec.scaleTargetRef.name", "Required value");
    }
    let min = s.min_replicas.unwrap_or(1);
    if min < 1 {
        e.add("spec.minReplicas", format!("Invalid value: {min}: must be greater than or equal to 1"));
    }
    if s.max_replicas < min.max(1) {
        e.add(
            "spec.maxReplicas",
            format!("Invalid value: {}: must be greater than or equal to `minReplicas`", s.max_replicas),
        );
    }
    for (i, m) in s.metrics.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        let required = |field: &str, e: &mut Errors| {
            e.add(
                format!("{path}.{field}"),
                "Required value: must populate information for the given metric source",
            )
        };
        let (field, name, target) = match m.type_.as_str() {
            "Resource" => match &m.resource {
                Some(r) => ("resource", &r.name, &r.target),
                None => {
                    required("resource", e);
                    continue;
                }
            },
            "ContainerResource" => match &m.container_resource {
                Some(r) => {
                    if r.container.is_empty() {
                        e.add(format!("{path}.containerResource.container"), "Required value");
                    }
                    ("containerResource", &r.name, &r.target)
                }
                None => {
                    required("containerResource", e);
                    continue;
                }
            },
            "Pods" | "Object" | "External" => {
                let source = match m.type_.as_str() {
                    "Pods" => &m.pods,
                    "Object" => &m.object,
                    _ => &m.external,
                };
                if source.is_none() {
                    required(&m.type_.to_ascii_lowercase(), e);
                }
                continue;
            }
            other => {
                e.add(
                    format!("{path}.type"),
                    format!("Unsupported value: {other:?}: supported values: \"ContainerResource\", \"External\", \"Object\", \"Pods\", \"Resource\""),
                );
                continue;
            }
        };
        if !["cpu", "memory"].contains(&name.as_str()) {
            e.add(
                format!("{path}.{field}.name"),
                format!("Unsupported value: {name:?}: supported values: \"cpu\", \"memory\""),
            );
        }
        match target.type_.as_str() {
            "Utilization" if target.average_utilization.is_some_and(|u| u > 0) => {}
            "Utilization" => e.add(
                format!("{path}.{field}.target.averageUtilization"),
                "Required value: must be greater than 0",
            ),
            "AverageValue" if target.average_value.is_some() => {}
            "AverageValue" => e.add(format!("{path}.{field}.target.averageValue"), "Required value"),
            other => e.add(
                format!("{path}.{field}.target.type"),
                format!("Unsupported value: {other:?}: supported values: \"Utilization\", \"AverageValue\""),
            ),
        }
    }
    let behavior = s.behavior.iter().flat_map(|b| [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)]);
    for (dir, rules) in behavior {
        let Some(r) = rules else { continue };
        let path = format!("spec.behavior.{dir}");
        if let Some(w) = r.stabilization_window_seconds.filter(|w| !(0..=3600).contains(w)) {
            e.add(
                format!("{path}.stabilizationWindowSeconds"),
                format!("Invalid value: {w}: must be between 0 and 3600"),
            );
        }
        if let Some(p) = r.select_policy.as_deref().filter(|p| !["Max", "Min", "Disabled"].contains(p)) {
            e.add(
                format!("{path}.selectPolicy"),
                format!("Unsupported value: {p:?}: supported values: \"Disabled\", \"Max\", \"Min\""),
            );
        }
        for (i, p) in r.policies.iter().enumerate() {
            let at = format!("{path}.policies[{i}]");
            if !["Pods", "Percent"].contains(&p.type_.as_str()) {
                e.add(
                    format!("{at}.type"),
                    format!("Unsupported value: {:?}: supported values: \"Percent\", \"Pods\"", p.type_),
                );
            }
            if p.value <= 0 {
                e.add(
                    format!("{at}.value"),
                    format!("Invalid value: {}: must be greater than zero", p.value),
                );
            }
            if !(1..=1800).contains(&p.period_seconds) {
                e.add(
                    format!("{at}.periodSeconds"),
                    format!("Invalid value: {}: must be between 1 and 1800", p.period_seconds),
                );
            }
        }
    }
}

/// A cron schedule (see [`crate::cron`]).
pub fn cron_schedule(s: &str) -> Result<(), String> {
    crate::cron::Schedule::parse(s).map(|_| ())
}

fn metadata(m: &ObjectMeta, names: NameRule, namespaced: bool, e: &mut Errors) {
    if m.name.is_empty() {
        if m.generate_name.is_none() {
            e.add("metadata.name", "Required value: name or generateName is required");
        }
    } else {
        let check = match names {
            NameRule::Label => dns1123_label(&m.name),
            NameRule::Subdomain => dns1123_subdomain(&m.name),
            NameRule::PathSegment => path_segment(&m.name),
        };
        if let Err(msg) = check {
            e.add("metadata.name", format!("Invalid value: {:?}: {msg}", m.name));
        }
    }
    if let Some(ns) = &m.namespace {
        if !namespaced {
            e.add("metadata.namespace", "Forbidden: not allowed on this type");
        } else if let Err(msg) = dns1123_label(ns) {
            e.add("metadata.namespace", format!("Invalid value: {ns:?}: {msg}"));
        }
    }
    labels(&m.labels, "metadata.labels", e);
    for k in m.annotations.keys() {
        if let Err(msg) = qualified_name(k) {
            e.add("metadata.annotations", format!("Invalid value: {k:?}: {msg}"));
        }
    }
}

fn labels(l: &crate::labels::Labels, path: &str, e: &mut Errors) {
    for (k, v) in l {
        if let Err(msg) = qualified_name(k) {
            e.add(path, format!("Invalid value: {k:?}: {msg}"));
        }
        if let Err(msg) = label_value(v) {
            e.add(path, format!("Invalid value: {v:?}: {msg}"));
        }
    }
}

pub(crate) fn replicas(r: Option<i32>, path: &str, e: &mut Errors) {
    non_negative(r.map(i64::from), path, e);
}

pub(crate) fn non_negative(v: Option<i64>, path: &str, e: &mut Errors) {
    if let Some(v) = v.filter(|v| *v < 0) {
        e.add(path, format!("Invalid value: {v}: must be greater than or equal to 0"));
    }
}

/// A workload's selector must select its own template's labels, and its pods restart always.
pub(crate) fn template(selector: &LabelSelector, meta: &ObjectMeta, spec: &PodSpec, e: &mut Errors) {
    if selector.is_empty() {
        e.add("spec.selector", "Required value");
    } else {
        match selector.to_selector("spec.selector") {
            Err(fe) => e.list.push(fe),
            Ok(sel) if !sel.matches(&meta.labels) => e.add(
                "spec.template.metadata.labels",
                format!("Invalid value: {:?}: `selector` does not match template `labels`", meta.labels),
            ),
            Ok(_) => {}
        }
    }
    labels(&meta.labels, "spec.template.metadata.labels", e);
    if let Some(p) = spec.restart_policy.as_deref().filter(|p| *p != "Always") {
        e.add(
            "spec.template.spec.restartPolicy",
            format!("Unsupported value: {p:?}: supported values: \"Always\""),
        );
    }
    pod_spec(spec, "spec.template.spec", e);
}

/// `maxSurge` and `maxUnavailable` under `at`; `defaults` are what unset ones count as.
pub(crate) fn rolling_update(
    at: &str,
    (surge, unavailable): (Option<&IntOrString>, Option<&IntOrString>),
    defaults: (i64, i64),
    e: &mut Errors,
) {
    let value = |v: Option<&IntOrString>, field: &str, default: i64, e: &mut Errors| -> i64 {
        match v.map(|v| v.scaled(100, true)) {
            Some(Ok(n)) if n < 0 => {
                e.add(field, format!("Invalid value: {n}: must be greater than or equal to 0"));
                0
            }
            Some(Ok(n)) => n,
            Some(Err(msg)) => {
                e.add(field, format!("Invalid value: {msg}"));
                1
            }
            None => default,
        }
    };
    let s = value(surge, &format!("{at}.maxSurge"), defaults.0, e);
    let u = value(unavailable, &format!("{at}.maxUnavailable"), defaults.1, e);
    if s == 0 && u == 0 {
        e.add(format!("{at}.maxUnavailable"), "Invalid value: 0: may not be 0 when `maxSurge` is 0");
    }
}

/// The pod spec rules shared by Pods and templates.
pub fn pod_spec(s: &PodSpec, path: &str, e: &mut Errors) {
    if s.containers.is_empty() {
        e.add(format!("{path}.containers"), "Required value");
    }
    let psc = s.security_context.as_ref();
    app_armor(
        psc.and_then(|p| p.app_armor_profile.as_ref()),
        &format!("{path}.securityContext.appArmorProfile"),
        e,
    );
    seccomp(
        psc.and_then(|p| p.seccomp_profile.as_ref()),
        &format!("{path}.securityContext.seccompProfile"),
        e,
    );
    if s.share_process_namespace == Some(true) && s.host_pid == Some(true) {
        e.add(
            format!("{path}.securityContext.shareProcessNamespace"),
            "Invalid value: true: ShareProcessNamespace and HostPID cannot both be enabled",
        );
    }
    tolerations(&s.tolerations, &format!("{path}.tolerations"), e);
    scheduling(s, path, e);
    for (field, v) in [("hostname", &s.hostname), ("subdomain", &s.subdomain)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            if let Err(msg) = dns1123_label(v) {
                e.add(format!("{path}.{field}"), format!("Invalid value: {v:?}: {msg}"));
            }
        }
    }
    let mut gates = std::collections::BTreeSet::new();
    for (i, g) in s.scheduling_gates.iter().enumerate() {
        let at = format!("{path}.schedulingGates[{i}].name");
        if let Err(msg) = qualified_name(&g.name) {
            e.add(at, format!("Invalid value: {:?}: {msg}", g.name));
        } else if !gates.insert(g.name.as_str()) {
            e.add(at, format!("Duplicate value: {:?}", g.name));
        }
    }
    if !s.scheduling_gates.is_empty() && s.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        e.add(
            format!("{path}.nodeName"),
            "Forbidden: cannot be set until all schedulingGates have been cleared",
        );
    }
    if let Some(os) = &s.os {
        if !["linux", "windows"].contains(&os.name.as_str()) {
            e.add(
                format!("{path}.os.name"),
                format!("Unsupported value: {:?}: supported values: \"linux\", \"windows\"", os.name),
            );
        }
    }
    if s.host_network == Some(true) {
        for (field, list) in [("containers", &s.containers), ("initContainers", &s.init_containers)] {
            for (i, c) in list.iter().enumerate() {
                for (j, p) in c.ports.iter().enumerate() {
                    if p.host_port.is_some_and(|h| h != p.container_port) {
                        e.add(
                            format!("{path}.{field}[{i}].ports[{j}].containerPort"),
                            format!(
                                "Invalid value: {}: must match `hostPort` when `hostNetwork` is true",
                                p.container_port
                            ),
                        );
                    }
                }
            }
        }
    }
    for (i, a) in s.host_aliases.iter().enumerate() {
        let at = format!("{path}.hostAliases[{i}]");
        if a.ip.parse::<std::net::IpAddr>().is_err() {
            e.add(format!("{at}.ip"), format!("Invalid value: {:?}: must be a valid IP address", a.ip));
        }
        for (j, h) in a.hostnames.iter().enumerate() {
            if let Err(msg) = dns1123_subdomain(h) {
                e.add(format!("{at}.hostnames[{j}]"), format!("Invalid value: {h:?}: {msg}"));
            }
        }
    }
    match s.dns_policy.as_deref() {
        None | Some("ClusterFirst" | "ClusterFirstWithHostNet" | "Default") => {}
        Some("None") => {
            if s.dns_config.as_ref().is_none_or(|c| c.nameservers.is_empty()) {
                e.add(
                    format!("{path}.dnsConfig.nameservers"),
                    "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None",
                );
            }
        }
        Some(p) => e.add(
            format!("{path}.dnsPolicy"),
            format!("Unsupported value: {p:?}: supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""),
        ),
    }
    let mut names = std::collections::BTreeSet::new();
    for (list, field) in [(&s.init_containers, "initContainers"), (&s.containers, "containers")] {
        for (i, c) in list.iter().enumerate() {
            let cpath = format!("{path}.{field}[{i}]");
            if !c.name.is_empty() && !names.insert(c.name.clone()) {
                e.add(format!("{cpath}.name"), format!("Duplicate value: {:?}", c.name));
            }
            container(c, &cpath, s, e);
            lifecycle(c, &cpath, field == "initContainers", s, e);
        }
    }
    if let Some(p) = s.restart_policy.as_deref().filter(|p| !["Always", "OnFailure", "Never"].contains(p)) {
        e.add(
            format!("{path}.restartPolicy"),
            format!("Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
        );
    }
    non_negative(s.termination_grace_period_seconds, &format!("{path}.terminationGracePeriodSeconds"), e);
    let mut vnames = std::collections::BTreeSet::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        if let Err(msg) = dns1123_label(&v.name) {
            e.add(format!("{vpath}.name"), format!("Invalid value: {:?}: {msg}", v.name));
        } else if !vnames.insert(v.name.clone()) {
            e.add(format!("{vpath}.name"), format!("Duplicate value: {:?}", v.name));
        }
        let sources = [
            v.empty_dir.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.host_path.is_some(),
            v.downward_api.is_some(),
            v.persistent_volume_claim.is_some(),
            v.projected.is_some(),
            v.ephemeral.is_some(),
        ];
        if let Some(eph) = &v.ephemeral {
            match &eph.volume_claim_template {
                None => e.add(format!("{vpath}.ephemeral.volumeClaimTemplate"), "Required value"),
                Some(t) => {
                    let at = format!("{vpath}.ephemeral.volumeClaimTemplate.spec");
                    access_modes(&t.spec.access_modes, &format!("{at}.accessModes"), e);
                    if !t.spec.resources.as_ref().is_some_and(|r| r.requests.contains_key("storage")) {
                        e.add(format!("{at}.resources.requests.storage"), "Required value");
                    }
                }
            }
        }
        for (j, src) in v.projected.iter().flat_map(|p| p.sources.iter()).enumerate() {
            let at = format!("{vpath}.projected.sources[{j}]");
            let n = [
                src.secret.is_some(),
                src.config_map.is_some(),
                src.downward_api.is_some(),
                src.service_account_token.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if n != 1 {
                e.add(at.clone(), "Forbidden: may not specify more than 1 volume type per source");
            }
            if let Some(t) = &src.service_account_token {
                if t.path.is_empty() {
                    e.add(format!("{at}.serviceAccountToken.path"), "Required value");
                }
                if let Some(x) = t.expiration_seconds.filter(|x| *x < 600) {
                    e.add(
                        format!("{at}.serviceAccountToken.expirationSeconds"),
                        format!("Invalid value: {x}: may not specify a duration less than 10 minutes"),
                    );
                }
                if let Some(x) = t.expiration_seconds.filter(|x| *x > 1 << 32) {
                    e.add(
                        format!("{at}.serviceAccountToken.expirationSeconds"),
                        format!("Invalid value: {x}: may not specify a duration larger than 2^32 seconds"),
                    );
                }
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            if c.claim_name.is_empty() {
                e.add(format!("{vpath}.persistentVolumeClaim.claimName"), "Required value");
            }
        }
        if let Some(h) = &v.host_path {
            host_path_type(h.type_.as_deref(), &format!("{vpath}.hostPath.type"), e);
        }
        if let Some(m) = v.empty_dir.as_ref().and_then(|d| d.medium.as_deref()) {
            // "", Memory, HugePages, HugePages-<size>.
            if !(m.is_empty() || m == "Memory" || m == "HugePages" || m.starts_with("HugePages-")) {
                e.add(
                    format!("{vpath}.emptyDir.medium"),
                    format!("Unsupported value: {m:?}: supported values: \"\", \"HugePages\", \"Memory\""),
                );
            }
        }
        match sources.iter().filter(|s| **s).count() {
            0 => e.add(vpath, "Required value: must specify a volume type"),
            1 => {}
            _ => e.add(vpath, "Forbidden: may not specify more than 1 volume type"),
        }
    }
    for (field, list) in [("initContainers", &s.init_containers), ("containers", &s.containers)] {
        for (i, c) in list.iter().enumerate() {
            let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
            for (j, m) in c.volume_mounts.iter().enumerate() {
                let at = format!("{path}.{field}[{i}].volumeMounts[{j}]");
                if !vnames.contains(&m.name) {
                    e.add(format!("{at}.name"), format!("Not found: {:?}", m.name));
                }
                if let (Some(_), Some(x)) = (&m.sub_path, &m.sub_path_expr) {
                    e.add(
                        format!("{at}.subPathExpr"),
                        format!("Invalid value: {x:?}: subPathExpr and subPath are mutually exclusive"),
                    );
                }
                for (f, v) in [("subPath", &m.sub_path), ("subPathExpr", &m.sub_path_expr)] {
                    if let Some(v) =
                        v.as_deref().filter(|v| v.starts_with('/') || v.split('/').any(|c| c == ".."))
                    {
                        e.add(
                            format!("{at}.{f}"),
                            format!("Invalid value: {v:?}: must be a relative path without '..'"),
                        );
                    }
                }
                match m.mount_propagation.as_deref() {
                    None | Some("None" | "HostToContainer") => {}
                    Some("Bidirectional") if privileged => {}
                    Some("Bidirectional") => e.add(
                        format!("{at}.mountPropagation"),
                        "Forbidden: Bidirectional mount propagation is available only to privileged containers",
                    ),
                    Some(p) => e.add(
                        format!("{at}.mountPropagation"),
                        format!(
                            "Unsupported value: {p:?}: supported values: \"Bidirectional\", \"HostToContainer\", \"None\""
                        ),
                    ),
                }
            }
        }
    }
}

/// A node selector term's requirements: the operator among Kubernetes' six, values as it
/// requires (some for In/NotIn, none for Exists/DoesNotExist, one integer for Gt/Lt).
fn node_selector_term(t: &crate::kinds::pod::NodeSelectorTerm, path: &str, e: &mut Errors) {
    for (list, reqs) in [("matchExpressions", &t.match_expressions), ("matchFields", &t.match_fields)] {
        for (i, r) in reqs.iter().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    e.add(format!("{p}.values"), "Required value: must be specified when `operator` is 'In' or 'NotIn'");
                }
                "Exists" | "DoesNotExist" if !r.values.is_empty() => e.add(
                    format!("{p}.values"),
                    "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ),
                "Gt" | "Lt" if r.values.len() != 1 || r.values[0].parse::<i64>().is_err() => e.add(
                    format!("{p}.values"),
                    "Required value: must be specified single value when `operator` is 'Lt' or 'Gt'",
                ),
                "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
                other => e.add(
                    format!("{p}.operator"),
                    format!("Unsupported value: {other:?}: supported values: \"DoesNotExist\", \"Exists\", \"Gt\", \"In\", \"Lt\", \"NotIn\""),
                ),
            }
        }
    }
}

/// The pod's scheduling constraints: node affinity terms and topology spread.
fn scheduling(s: &PodSpec, path: &str, e: &mut Errors) {
    if let Some(na) = s.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()) {
        let base = format!("{path}.affinity.nodeAffinity");
        for (i, t) in na.required.iter().flat_map(|r| &r.node_selector_terms).enumerate() {
            node_selector_term(
                t,
                &format!("{base}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]"),
                e,
            );
        }
        for (i, t) in na.preferred.iter().enumerate() {
            node_selector_term(
                &t.preference,
                &format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference"),
                e,
            );
        }
    }
    for (i, c) in s.topology_spread_constraints.iter().enumerate() {
        if !["DoNotSchedule", "ScheduleAnyway"].contains(&c.when_unsatisfiable.as_str()) {
            e.add(
                format!("{path}.topologySpreadConstraints[{i}].whenUnsatisfiable"),
                format!(
                    "Unsupported value: {:?}: supported values: \"DoNotSchedule\", \"ScheduleAnyway\"",
                    c.when_unsatisfiable
                ),
            );
        }
    }
}

/// A container's enums: its termination message policy and its probes' HTTP scheme.
fn container_enums(c: &Container, path: &str, e: &mut Errors) {
    if let Some(p) =
        c.termination_message_policy.as_deref().filter(|p| !["File", "FallbackToLogsOnError"].contains(p))
    {
        e.add(
            format!("{path}.terminationMessagePolicy"),
            format!("Unsupported value: {p:?}: supported values: \"File\", \"FallbackToLogsOnError\""),
        );
    }
    for (name, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            let at = format!("{path}.{name}");
            let kinds = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()];
            match kinds.iter().filter(|k| **k).count() {
                0 => e.add(at.clone(), "Required value: must specify a handler type"),
                1 => {}
                _ => e.add(at.clone(), "Forbidden: may not specify more than 1 handler type"),
            }
            if let Some(g) = p.grpc.as_ref().filter(|g| !(1..=65535).contains(&g.port)) {
                e.add(
                    format!("{at}.grpc.port"),
                    format!("Invalid value: {}: must be between 1 and 65535, inclusive", g.port),
                );
            }
        }
        let scheme = probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.scheme.as_deref());
        if let Some(sc) = scheme.filter(|sc| !["HTTP", "HTTPS"].contains(sc)) {
            e.add(
                format!("{path}.{name}.httpGet.scheme"),
                format!("Unsupported value: {sc:?}: supported values: \"HTTP\", \"HTTPS\""),
            );
        }
        let headers = probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.http_headers.as_slice());
        for (i, h) in headers.unwrap_or_default().iter().enumerate() {
            if h.name.is_empty() || !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                e.add(
                    format!("{path}.{name}.httpGet.httpHeaders[{i}].name"),
                    format!("Invalid value: {:?}: a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')", h.name),
                );
            }
        }
        if let Some(g) = probe.as_ref().and_then(|p| p.termination_grace_period_seconds) {
            let at = format!("{path}.{name}.terminationGracePeriodSeconds");
            if name == "readinessProbe" {
                e.add(at, format!("Invalid value: {g}: must not be set for readinessProbes"));
            } else if g <= 0 {
                e.add(at, format!("Invalid value: {g}: must be greater than 0"));
            }
        }
    }
}

/// Tolerations as Kubernetes' `ValidateTolerations` checks them.
fn tolerations(ts: &[crate::kinds::pod::Toleration], path: &str, e: &mut Errors) {
    for (i, t) in ts.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = t.key.as_deref().unwrap_or("");
        if !key.is_empty() {
            if let Err(msg) = qualified_name(key) {
                e.add(format!("{p}.key"), format!("Invalid value: {key:?}: {msg}"));
            }
        }
        let op = t.operator.as_deref().unwrap_or("");
        match op {
            "" | "Equal" if key.is_empty() => e.add(
                format!("{p}.operator"),
                format!("Invalid value: {op:?}: operator must be Exists when `key` is empty, which means \"match all values and all keys\""),
            ),
            "" | "Equal" => {}
            "Exists" if t.value.as_deref().is_some_and(|v| !v.is_empty()) => e.add(
                format!("{p}.operator"),
                format!("Invalid value: {:?}: value must be empty when `operator` is 'Exists'", t.value.as_deref().unwrap_or("")),
            ),
            "Exists" => {}
            other => e.add(
                format!("{p}.operator"),
                format!("Unsupported value: {other:?}: supported values: \"Equal\", \"Exists\""),
            ),
        }
        let effect = t.effect.as_deref().unwrap_or("");
        if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            e.add(
                format!("{p}.effect"),
                format!("Unsupported value: {effect:?}: supported values: \"NoExecute\", \"NoSchedule\", \"PreferNoSchedule\""),
            );
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            e.add(
                format!("{p}.effect"),
                format!(
                    "Invalid value: {effect:?}: effect must be 'NoExecute' when `tolerationSeconds` is set"
                ),
            );
        }
    }
}

/// `appArmorProfile` as Kubernetes validates it.
fn app_armor(p: Option<&crate::kinds::pod::AppArmorProfile>, path: &str, e: &mut Errors) {
    let Some(p) = p else { return };
    let localhost = p.localhost_profile.as_deref().filter(|l| !l.is_empty());
    match (p.type_.as_str(), localhost) {
        ("Localhost", None) => e.add(format!("{path}.localhostProfile"), "Required value: must be set when AppArmor type is Localhost"),
        ("RuntimeDefault" | "Unconfined", Some(_)) => e.add(
            format!("{path}.localhostProfile"),
            "Invalid value: may only be set when AppArmor type is Localhost",
        ),
        ("Localhost" | "RuntimeDefault" | "Unconfined", _) => {}
        (t, _) => e.add(
            format!("{path}.type"),
            format!("Unsupported value: {t:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""),
        ),
    }
}

/// `seccompProfile` as Kubernetes validates it; a Localhost profile is a relative path
/// below the agent's profile directory.
fn seccomp(p: Option<&crate::kinds::pod::SeccompProfile>, path: &str, e: &mut Errors) {
    let Some(p) = p else { return };
    let localhost = p.localhost_profile.as_deref().filter(|l| !l.is_empty());
    match (p.type_.as_str(), localhost) {
        ("Localhost", None) => e.add(format!("{path}.localhostProfile"), "Required value: must be set when seccomp type is Localhost"),
        ("Localhost", Some(l)) if l.starts_with('/') || l.split('/').any(|c| c == ".." || c.is_empty()) => e.add(
            format!("{path}.localhostProfile"),
            format!("Invalid value: {l:?}: must be a relative path without '..'"),
        ),
        ("RuntimeDefault" | "Unconfined", Some(_)) => e.add(
            format!("{path}.localhostProfile"),
            "Invalid value: can only be set if seccomp type is Localhost",
        ),
        ("Localhost" | "RuntimeDefault" | "Unconfined", _) => {}
        (t, _) => e.add(
            format!("{path}.type"),
            format!("Unsupported value: {t:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""),
        ),
    }
}

/// A container's `restartPolicy` (only `Always`, only on init containers: a sidecar) and
/// its hooks and probes (not on an init container that is not a sidecar).
fn lifecycle(c: &Container, path: &str, init: bool, spec: &PodSpec, e: &mut Errors) {
    match (c.restart_policy.as_deref(), init) {
        (None, _) | (Some("Always"), true) => {}
        (Some(p), true) => e.add(
            format!("{path}.restartPolicy"),
            format!("Unsupported value: {p:?}: supported values: \"Always\""),
        ),
        (Some(_), false) => {
            e.add(format!("{path}.restartPolicy"), "Forbidden: may not be set for non-init containers")
        }
    }
    if init && !c.is_sidecar() {
        let set = [
            ("lifecycle", c.lifecycle.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
        ];
        for (field, _) in set.iter().filter(|(_, on)| *on) {
            e.add(
                format!("{path}.{field}"),
                "Forbidden: may not be set for init containers without restartPolicy=Always",
            );
        }
        return;
    }
    let Some(l) = &c.lifecycle else { return };
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    for (name, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
        let Some(h) = h else { continue };
        let at = format!("{path}.lifecycle.{name}");
        let kinds = [h.exec.is_some(), h.http_get.is_some(), h.tcp_socket.is_some(), h.sleep.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            0 => e.add(at.clone(), "Required value: must specify a handler type"),
            1 => {}
            _ => e.add(at.clone(), "Forbidden: may not specify more than 1 handler type"),
        }
        if h.tcp_socket.is_some() {
            e.add(
                format!("{at}.tcpSocket"),
                "Forbidden: a tcpSocket hook is never run (kubelet does not either); use exec, httpGet or sleep",
            );
        }
        if let Some(s) = &h.sleep {
            if s.seconds <= 0 || s.seconds > grace {
                e.add(
                    format!("{at}.sleep.seconds"),
                    format!(
                        "Invalid value: {}: must be greater than 0 and less than terminationGracePeriodSeconds ({grace})",
                        s.seconds
                    ),
                );
            }
        }
        if let Some(x) = &h.exec {
            if x.command.is_empty() {
                e.add(format!("{at}.exec.command"), "Required value");
            }
        }
        if let Some(g) = &h.http_get {
            match g.scheme.as_deref() {
                None | Some("HTTP" | "HTTPS") => {}
                Some(s) => e.add(
                    format!("{at}.httpGet.scheme"),
                    format!("Unsupported value: {s:?}: supported values: \"HTTP\", \"HTTPS\""),
                ),
            }
        }
    }
}

fn container(c: &Container, path: &str, _spec: &PodSpec, e: &mut Errors) {
    let sc = c.security_context.as_ref();
    seccomp(
        sc.and_then(|s| s.seccomp_profile.as_ref()),
        &format!("{path}.securityContext.seccompProfile"),
        e,
    );
    match sc.and_then(|s| s.proc_mount.as_deref()) {
        None | Some("Default") => {}
        Some("Unmasked") => e.add(
            format!("{path}.securityContext.procMount"),
            "Forbidden: Unmasked proc mount requires a user namespace (hostUsers: false), which Tug does not support yet",
        ),
        Some(m) => e.add(
            format!("{path}.securityContext.procMount"),
            format!("Unsupported value: {m:?}: supported values: \"Default\", \"Unmasked\""),
        ),
    }
    app_armor(
        sc.and_then(|s| s.app_armor_profile.as_ref()),
        &format!("{path}.securityContext.appArmorProfile"),
        e,
    );
    container_enums(c, path, e);
    if c.name.is_empty() {
        e.add(format!("{path}.name"), "Required value");
    } else if let Err(msg) = dns1123_label(&c.name) {
        e.add(format!("{path}.name"), format!("Invalid value: {:?}: {msg}", c.name));
    }
    if c.image.trim().is_empty() {
        e.add(format!("{path}.image"), "Required value");
    }
    if let Some(p) =
        c.image_pull_policy.as_deref().filter(|p| !["Always", "IfNotPresent", "Never"].contains(p))
    {
        e.add(
            format!("{path}.imagePullPolicy"),
            format!("Unsupported value: {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
        );
    }
    let mut port_names = std::collections::BTreeSet::new();
    for (i, p) in c.ports.iter().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        if let Err(msg) = port_number(p.container_port) {
            e.add(format!("{ppath}.containerPort"), format!("Invalid value: {}: {msg}", p.container_port));
        }
        if let Some(hp) = p.host_port {
            if let Err(msg) = port_number(hp) {
                e.add(format!("{ppath}.hostPort"), format!("Invalid value: {hp}: {msg}"));
            }
        }
        if let Some(n) = &p.name {
            if let Err(msg) = port_name(n) {
                e.add(format!("{ppath}.name"), format!("Invalid value: {n:?}: {msg}"));
            } else if !port_names.insert(n.clone()) {
                e.add(format!("{ppath}.name"), format!("Duplicate value: {n:?}"));
            }
        }
        protocol(p.protocol.as_deref(), &format!("{ppath}.protocol"), e);
    }
    if let Some(r) = &c.resources {
        for (name, req) in &r.requests {
            if let Some(lim) = r.limits.get(name) {
                if req.millis() > lim.millis() {
                    e.add(
                        format!("{path}.resources.requests"),
                        format!(
                            "Invalid value: {:?}: must be less than or equal to {name} limit of {}",
                            req.as_str(),
                            lim.as_str()
                        ),
                    );
                }
            }
        }
    }
    for (j, p) in c.resize_policy.iter().enumerate() {
        let at = format!("{path}.resizePolicy[{j}]");
        if !["cpu", "memory"].contains(&p.resource_name.as_str()) {
            e.add(
                format!("{at}.resourceName"),
                format!("Unsupported value: {:?}: supported values: \"cpu\", \"memory\"", p.resource_name),
            );
        }
        if !["NotRequired", "RestartContainer"].contains(&p.restart_policy.as_str()) {
            e.add(
                format!("{at}.restartPolicy"),
                format!(
                    "Unsupported value: {:?}: supported values: \"NotRequired\", \"RestartContainer\"",
                    p.restart_policy
                ),
            );
        }
        if c.resize_policy[..j].iter().any(|q| q.resource_name == p.resource_name) {
            e.add(format!("{at}.resourceName"), format!("Duplicate value: {:?}", p.resource_name));
        }
    }
    for (j, env) in c.env.iter().enumerate() {
        if env.name.is_empty() {
            e.add(format!("{path}.env[{j}].name"), "Required value");
        }
        if env.value.is_some() && env.value_from.is_some() {
            e.add(
                format!("{path}.env[{j}].valueFrom"),
                "Invalid value: may not be specified when `value` is not empty",
            );
        }
    }
}

fn protocol(p: Option<&str>, path: &str, e: &mut Errors) {
    if let Some(p) = p.filter(|p| !["TCP", "UDP", "SCTP"].contains(p)) {
        e.add(path, format!("Unsupported value: {p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""));
    }
}

fn service(s: &crate::kinds::core::Service, e: &mut Errors) {
    let spec = &s.spec;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind) {
        e.add(
            "spec.type",
            format!(
                "Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"LoadBalancer\", \"NodePort\""
            ),
        );
    }
    service_addresses(spec, kind, e);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if spec.ports.is_empty() && !headless {
        e.add("spec.ports", "Required value");
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let ppath = format!("spec.ports[{i}]");
        match &p.name {
            None if spec.ports.len() > 1 => e.add(format!("{ppath}.name"), "Required value"),
            Some(n) if !names.insert(n.clone()) => {
                e.add(format!("{ppath}.name"), format!("Duplicate value: {n:?}"))
            }
            Some(n) if dns1123_label(n).is_err() => {
                e.add(format!("{ppath}.name"), format!("Invalid value: {n:?}: must be a DNS label"))
            }
            _ => {}
        }
        if let Err(msg) = port_number(p.port) {
            e.add(format!("{ppath}.port"), format!("Invalid value: {}: {msg}", p.port));
        }
        protocol(p.protocol.as_deref(), &format!("{ppath}.protocol"), e);
        match &p.target_port {
            Some(IntOrString::Int(t)) => {
                if let Err(msg) = port_number(*t) {
                    e.add(format!("{ppath}.targetPort"), format!("Invalid value: {t}: {msg}"));
                }
            }
            Some(IntOrString::String(n)) => {
                if let Err(msg) = port_name(n) {
                    e.add(format!("{ppath}.targetPort"), format!("Invalid value: {n:?}: {msg}"));
                }
            }
            None => {}
        }
        if let Some(np) = p.node_port {
            if kind != "NodePort" && kind != "LoadBalancer" {
                e.add(
                    format!("{ppath}.nodePort"),
                    format!("Forbidden: may not be used when `type` is '{kind}'"),
                );
            } else if !(30000..=32767).contains(&np) {
                e.add(format!("{ppath}.nodePort"), format!("Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767"));
            }
        }
    }
    if let Some(a) = spec.session_affinity.as_deref().filter(|a| !["None", "ClientIP"].contains(a)) {
        e.add(
            "spec.sessionAffinity",
            format!("Unsupported value: {a:?}: supported values: \"ClientIP\", \"None\""),
        );
    }
    labels(&spec.selector, "spec.selector", e);
}

/// A Service's external addresses, traffic policies and IP families, in Kubernetes' words.
fn service_addresses(spec: &crate::kinds::core::ServiceSpec, kind: &str, e: &mut Errors) {
    let ip = |v: &str| v.parse::<std::net::Ipv4Addr>().is_ok();
    for (i, a) in spec.external_ips.iter().enumerate() {
        if !ip(a) {
            e.add(
                format!("spec.externalIPs[{i}]"),
                format!(
                    "Invalid value: {a:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                ),
            );
        }
    }
    if let Some(a) = spec.load_balancer_ip.as_deref().filter(|a| !a.is_empty()) {
        if kind != "LoadBalancer" {
            e.add("spec.loadBalancerIP", "Forbidden: may only be used when `type` is 'LoadBalancer'");
        } else if !ip(a) {
            e.add(
                "spec.loadBalancerIP",
                format!(
                    "Invalid value: {a:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                ),
            );
        }
    }
    for (i, r) in spec.load_balancer_source_ranges.iter().enumerate() {
        if let Err(m) = r.parse::<crate::cidr::Cidr4>() {
            e.add(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("Invalid value: {m} (must be an IPv4 CIDR such as 192.0.2.0/24)"),
            );
        }
    }
    for (field, set) in [
        ("loadBalancerSourceRanges", !spec.load_balancer_source_ranges.is_empty()),
        ("allocateLoadBalancerNodePorts", spec.allocate_load_balancer_node_ports.is_some()),
        ("loadBalancerClass", spec.load_balancer_class.is_some()),
    ] {
        if set && kind != "LoadBalancer" {
            e.add(format!("spec.{field}"), "Forbidden: may only be used when `type` is 'LoadBalancer'");
        }
    }
    match spec.external_traffic_policy.as_deref() {
        None => {}
        Some(_) if kind == "ClusterIP" => e.add(
            "spec.externalTrafficPolicy",
            "Invalid value: may only be set for externally-accessible services",
        ),
        Some("Cluster" | "Local") => {}
        Some(p) => e.add(
            "spec.externalTrafficPolicy",
            format!("Unsupported value: {p:?}: supported values: \"Cluster\", \"Local\""),
        ),
    }
    match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster" | "Local") => {}
        Some(p) => e.add(
            "spec.internalTrafficPolicy",
            format!("Unsupported value: {p:?}: supported values: \"Cluster\", \"Local\""),
        ),
    }
    for (i, f) in spec.ip_families.iter().enumerate() {
        match f.as_str() {
            "IPv4" => {}
            "IPv6" => e.add(
                format!("spec.ipFamilies[{i}]"),
                "Invalid value: \"IPv6\": not configured on this cluster (Tug's clusters are single-stack IPv4)",
            ),
            other => e.add(
                format!("spec.ipFamilies[{i}]"),
                format!("Unsupported value: {other:?}: supported values: \"IPv4\", \"IPv6\""),
            ),
        }
    }
    if spec.ip_families.len() > 1 {
        e.add(
            "spec.ipFamilies",
            "Invalid value: may not have more than one family on a single-stack cluster",
        );
    }
    if let Some(t) = spec.traffic_distribution.as_deref().filter(|t| *t != "PreferClose") {
        e.add(
            "spec.trafficDistribution",
            format!("Unsupported value: {t:?}: supported values: \"PreferClose\""),
        );
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack" | "PreferDualStack") => {}
        Some("RequireDualStack") => e.add(
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ),
        Some(p) => e.add(
            "spec.ipFamilyPolicy",
            format!(
                "Unsupported value: {p:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
            ),
        ),
    }
}

fn config_key(k: &str, path: &str, e: &mut Errors) {
    let ok = !k.is_empty()
        && k.len() <= 253
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && k != "."
        && k != "..";
    if !ok {
        e.add(path, format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::load;

    /// Data-driven: a manifest → its first error line.
    fn check(text: &str, expect: &str) {
        let err = load(text).unwrap_err().to_string();
        assert!(err.starts_with(expect), "got: {err}\nwant: {expect}");
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn volume_mount_subpaths_and_propagation() {
        let with = |m: &str| {
            POD.replace("  containers:", "  volumes: [{name: v, emptyDir: {}}]\n  containers:")
                + &format!("    volumeMounts: [{{name: v, mountPath: /v, {m}}}]\n")
        };
        assert!(load(&with("subPathExpr: $(POD_NAME), mountPropagation: HostToContainer")).is_ok());
        check(
            &with("subPath: a, subPathExpr: b"),
            "spec.containers[0].volumeMounts[0].subPathExpr: Invalid value: \"b\": subPathExpr and subPath are mutually exclusive",
        );
        check(
            &with("subPath: ../x"),
            "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../x\": must be a relative path without '..'",
        );
        check(
            &with("mountPropagation: Bidirectional"),
            "spec.containers[0].volumeMounts[0].mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers",
        );
        check(
            &with("mountPropagation: Sideways"),
            "spec.containers[0].volumeMounts[0].mountPropagation: Unsupported value: \"Sideways\"",
        );
    }

    #[test]
    fn volumes_and_claims() {
        let pv = "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: v}\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce]\n  local: {path: /d}\n  nodeAffinity: {required: {nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In, values: [n]}]}]}}\n";
        assert!(load(pv).is_ok());
        check(&pv.replace("  nodeAffinity", "  x-nodeAffinity").replace("x-nodeAffinity: {required: {nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In, values: [n]}]}]}}\n", ""),
            "spec.nodeAffinity: Required value: Local volume requires node affinity");
        check(
            &pv.replace("ReadWriteOnce", "ReadWriteSometimes"),
            "spec.accessModes[0]: Unsupported value: \"ReadWriteSometimes\"",
        );
        check(
            &pv.replace("capacity: {storage: 1Gi}", "capacity: {}"),
            "spec.capacity.storage: Required value",
        );
        check(
            &pv.replace("path: /d", "path: d"),
            "spec.local.path: Invalid value: \"d\": must be an absolute path",
        );
        let pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
        assert!(load(pvc).is_ok());
        check(
            &pvc.replace("requests: {storage: 1Gi}", "requests: {}"),
            "spec.resources.requests.storage: Required value",
        );
        check(
            &POD.replace(
                "image: busybox",
                "image: busybox\n  volumes: [{name: d, persistentVolumeClaim: {claimName: ''}}]",
            ),
            "spec.volumes[0].persistentVolumeClaim.claimName: Required value",
        );
        // The enums of volumes: hostPath type, emptyDir medium, volumeMode.
        check(
            &POD.replace(
                "image: busybox",
                "image: busybox\n  volumes: [{name: d, hostPath: {path: /x, type: Folder}}]",
            ),
            "spec.volumes[0].hostPath.type: Unsupported value: \"Folder\"",
        );
        let ok = POD.replace(
            "image: busybox",
            "image: busybox\n  volumes: [{name: d, hostPath: {path: /x, type: DirectoryOrCreate}}, {name: m, emptyDir: {medium: Memory}}]",
        );
        assert!(load(&ok).is_ok());
        check(
            &POD.replace(
                "image: busybox",
                "image: busybox\n  volumes: [{name: m, emptyDir: {medium: Disk}}]",
            ),
            "spec.volumes[0].emptyDir.medium: Unsupported value: \"Disk\"",
        );
        check(
            &pvc.replace("accessModes: [ReadWriteOnce]", "accessModes: [ReadWriteOnce], volumeMode: Raw"),
            "spec.volumeMode: Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"",
        );
        assert!(
            load(
                &pvc.replace(
                    "accessModes: [ReadWriteOnce]",
                    "accessModes: [ReadWriteOnce], volumeMode: Block"
                )
            )
            .is_ok()
        );
        check(
            "apiVersion: v1\nkind: Event\nmetadata: {name: e}\ninvolvedObject: {kind: Pod, name: p}\ntype: Info\n",
            "type: Unsupported value: \"Info\"",
        );
    }

    /// Tolerations and the confinement fields, as Kubernetes validates them.
    #[test]
    fn tolerations_and_confinement() {
        let with = |t: &str| POD.replace("image: busybox", &format!("image: busybox\n  tolerations: [{t}]"));
        for ok in [
            "{key: k, operator: Exists}",
            "{operator: Exists}",
            "{key: k, value: v}",
            "{key: k, operator: Equal, value: v, effect: NoExecute, tolerationSeconds: 0}",
        ] {
            assert!(load(&with(ok)).is_ok(), "{ok}");
        }
        let cases = [
            (
                "{key: k, operator: Gt, value: '1'}",
                "spec.tolerations[0].operator: Unsupported value: \"Gt\": supported values: \"Equal\", \"Exists\"",
            ),
            ("{key: k, operator: Bogus}", "spec.tolerations[0].operator: Unsupported value: \"Bogus\""),
            (
                "{value: v}",
                "spec.tolerations[0].operator: Invalid value: \"\": operator must be Exists when `key` is empty",
            ),
            (
                "{key: k, operator: Exists, value: v}",
                "spec.tolerations[0].operator: Invalid value: \"v\": value must be empty when `operator` is 'Exists'",
            ),
            ("{key: k, effect: Sometimes}", "spec.tolerations[0].effect: Unsupported value: \"Sometimes\""),
            (
                "{key: k, effect: NoSchedule, tolerationSeconds: 5}",
                "spec.tolerations[0].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set",
            ),
            ("{key: 'bad key!', operator: Exists}", "spec.tolerations[0].key: Invalid value: \"bad key!\""),
        ];
        for (t, want) in cases {
            check(&with(t), want);
        }
        let armor = |p: &str| {
            POD.replace(
                "image: busybox",
                &format!("image: busybox\n    securityContext: {{appArmorProfile: {p}}}"),
            )
        };
        assert!(load(&armor("{type: Localhost, localhostProfile: p}")).is_ok());
        check(
            &armor("{type: Localhost}"),
            "spec.containers[0].securityContext.appArmorProfile.localhostProfile: Required value",
        );
        check(
            &armor("{type: Strict}"),
            "spec.containers[0].securityContext.appArmorProfile.type: Unsupported value: \"Strict\"",
        );
        check(
            &armor("{type: RuntimeDefault, localhostProfile: p}"),
            "spec.containers[0].securityContext.appArmorProfile.localhostProfile: Invalid value",
        );
    }

    /// The enums of scheduling constraints and containers refuse what Kubernetes refuses.
    #[test]
    fn scheduling_and_container_enums() {
        let spec = |extra: &str| POD.replace("  containers:", &format!("{extra}\n  containers:"));
        let term = |op: &str, values: &str| {
            spec(&format!(
                "  affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: zone, operator: {op}, values: {values}}}]}}]}}}}}}"
            ))
        };
        assert!(load(&term("In", "[a]")).is_ok());
        assert!(load(&term("Gt", "['3']")).is_ok());
        let at = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0]";
        check(&term("Bogus", "[a]"), &format!("{at}.operator: Unsupported value: \"Bogus\""));
        check(&term("In", "[]"), &format!("{at}.values: Required value"));
        check(&term("Exists", "[a]"), &format!("{at}.values: Forbidden"));
        check(&term("Lt", "[a]"), &format!("{at}.values: Required value: must be specified single value"));
        check(
            &spec(
                "  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Sometimes, labelSelector: {matchLabels: {a: b}}}]",
            ),
            "spec.topologySpreadConstraints[0].whenUnsatisfiable: Unsupported value: \"Sometimes\"",
        );
        let container = |extra: &str| POD.replace("image: busybox", &format!("image: busybox\n    {extra}"));
        check(
            &container("terminationMessagePolicy: Bogus"),
            "spec.containers[0].terminationMessagePolicy: Unsupported value: \"Bogus\"",
        );
        check(
            &container("readinessProbe: {httpGet: {port: 80, scheme: FTP}}"),
            "spec.containers[0].readinessProbe.httpGet.scheme: Unsupported value: \"FTP\"",
        );
        assert!(load(&container("livenessProbe: {httpGet: {port: 80, scheme: HTTPS}}")).is_ok());
        assert!(load(&container("readinessProbe: {grpc: {port: 9090, service: db}}")).is_ok());
        check(
            &container("readinessProbe: {grpc: {port: 0}}"),
            "spec.containers[0].readinessProbe.grpc.port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        check(
            &container("livenessProbe: {grpc: {port: 9090}, tcpSocket: {port: 80}}"),
            "spec.containers[0].livenessProbe: Forbidden: may not specify more than 1 handler type",
        );
        check(
            &container("startupProbe: {periodSeconds: 3}"),
            "spec.containers[0].startupProbe: Required value: must specify a handler type",
        );
        assert!(load(&container("livenessProbe: {httpGet: {port: 80, httpHeaders: [{name: X-Probe, value: a}]}, terminationGracePeriodSeconds: 3}")).is_ok());
        check(
            &container("readinessProbe: {httpGet: {port: 80, httpHeaders: [{name: 'a b', value: x}]}}"),
            "spec.containers[0].readinessProbe.httpGet.httpHeaders[0].name: Invalid value: \"a b\": a valid HTTP header must consist of alphanumeric characters or '-'",
        );
        check(
            &container("readinessProbe: {tcpSocket: {port: 80}, terminationGracePeriodSeconds: 3}"),
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 3: must not be set for readinessProbes",
        );
    }

    #[test]
    fn pods() {
        assert!(load(POD).is_ok());
        check(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            "spec.containers: Required value",
        );
        check(&POD.replace("image: busybox", "image: ''"), "spec.containers[0].image: Required value");
        check(&POD.replace("name: c", "name: C"), "spec.containers[0].name: Invalid value: \"C\"");
        check(
            &POD.replace("image: busybox", "image: busybox\n    ports: [{containerPort: 70000}]"),
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        check(
            &POD.replace(
                "image: busybox",
                "image: busybox\n    resources: {requests: {cpu: '2'}, limits: {cpu: '1'}}",
            ),
            "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
        );
        check(
            &POD.replace("image: busybox", "image: busybox\n    resources: {limits: {memory: 12Q}}"),
            "spec.containers[0].resources.limits.memory: quantities must match",
        );
        check(&POD.replace("metadata: {name: p}", "metadata: {}"), "metadata.name: Required value");
    }

    #[test]
    fn deployments() {
        let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: i}]}\n";
        check(
            d,
            "spec.template.metadata.labels: Invalid value: {\"app\": \"b\"}: `selector` does not match template `labels`",
        );
        check(
            &d.replace("app: b", "app: a").replace("  selector:", "  replicas: -1\n  selector:"),
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        );
        check(
            &d.replace("app: b", "app: a").replace("    spec: {", "    spec: {restartPolicy: Never, "),
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        );
        check(
            &d.replace("app: b", "app: a").replace(
                "  selector:",
                "  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}\n  selector:",
            ),
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
        );
    }

    #[test]
    fn daemonsets() {
        let d = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: i}]}\n";
        let with =
            |strategy: &str| d.replace("  selector:", &format!("  updateStrategy: {strategy}\n  selector:"));
        check(
            &with("{rollingUpdate: {maxUnavailable: 0}}"),
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
        );
        check(
            &with("{type: OnDelete, rollingUpdate: {maxUnavailable: 1}}"),
            "spec.updateStrategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'OnDelete'",
        );
        check(
            &with("{type: Recreate}"),
            "spec.updateStrategy.type: Unsupported value: \"Recreate\": supported values: \"OnDelete\", \"RollingUpdate\"",
        );
        check(
            &d.replace("    spec: {", "    spec: {restartPolicy: OnFailure, "),
            "spec.template.spec.restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
        );
    }

    #[test]
    fn sidecars_and_lifecycle_hooks() {
        let init = |extra: &str| {
            POD.replace(
                "  containers:",
                &format!("  initContainers:\n  - name: i\n    image: busybox\n{extra}  containers:"),
            )
        };
        assert!(
            load(&init("    restartPolicy: Always\n    readinessProbe: {exec: {command: [\"true\"]}}\n"))
                .is_ok()
        );
        check(
            &init("    restartPolicy: Never\n"),
            "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        );
        check(
            &init("    livenessProbe: {exec: {command: [\"true\"]}}\n"),
            "spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
        );
        check(
            &format!("{POD}    restartPolicy: Always\n"),
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
        );
        let hook = |h: &str| format!("{POD}    lifecycle: {{{h}}}\n");
        assert!(load(&hook("preStop: {sleep: {seconds: 5}}, postStart: {httpGet: {port: 80}}")).is_ok());
        check(
            &hook("preStop: {}"),
            "spec.containers[0].lifecycle.preStop: Required value: must specify a handler type",
        );
        check(
            &hook("preStop: {sleep: {seconds: 5}, exec: {command: [x]}}"),
            "spec.containers[0].lifecycle.preStop: Forbidden: may not specify more than 1 handler type",
        );
        check(
            &hook("preStop: {sleep: {seconds: 31}}"),
            "spec.containers[0].lifecycle.preStop.sleep.seconds: Invalid value: 31: must be greater than 0 and less than terminationGracePeriodSeconds (30)",
        );
        check(
            &hook("postStart: {tcpSocket: {port: 80}}"),
            "spec.containers[0].lifecycle.postStart.tcpSocket: Forbidden: a tcpSocket hook is never run",
        );
        // hostname and subdomain are DNS labels.
        check(
            &POD.replace("  containers:", "  hostname: Web_0\n  containers:"),
            "spec.hostname: Invalid value: \"Web_0\"",
        );
    }

    #[test]
    fn statefulsets() {
        let s = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\nspec:\n  serviceName: nginx\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: i}]}\n  volumeClaimTemplates:\n  - metadata: {name: www}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
        assert!(load(s).is_ok(), "{:?}", load(s).err());
        let with =
            |field: &str| s.replace("  serviceName: nginx\n", &format!("  serviceName: nginx\n  {field}\n"));
        check(
            &with("podManagementPolicy: Sometimes"),
            "spec.podManagementPolicy: Unsupported value: \"Sometimes\": supported values: \"OrderedReady\", \"Parallel\"",
        );
        check(
            &with("updateStrategy: {type: OnDelete, rollingUpdate: {partition: 1}}"),
            "spec.updateStrategy.rollingUpdate: Invalid value: only allowed for updateStrategy 'RollingUpdate'",
        );
        check(
            &with("updateStrategy: {rollingUpdate: {partition: -1}}"),
            "spec.updateStrategy.rollingUpdate.partition: Invalid value: -1: must be greater than or equal to 0",
        );
        check(
            &with("updateStrategy: {rollingUpdate: {maxUnavailable: 0}}"),
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: must be greater than 0",
        );
        check(
            &with("persistentVolumeClaimRetentionPolicy: {whenScaled: Keep}"),
            "spec.persistentVolumeClaimRetentionPolicy.whenScaled: Unsupported value: \"Keep\": supported values: \"Retain\", \"Delete\"",
        );
        check(
            &s.replace("requests: {storage: 1Gi}", "requests: {}"),
            "spec.volumeClaimTemplates[0].spec.resources.requests.storage: Required value",
        );
        check(
            &with("ordinals: {start: -2}"),
            "spec.ordinals.start: Invalid value: -2: must be greater than or equal to 0",
        );
        check(
            &s.replace("spec: {containers:", "spec: {hostAliases: [{ip: nope, hostnames: [a]}], containers:"),
            "spec.template.spec.hostAliases[0].ip: Invalid value: \"nope\": must be a valid IP address",
        );
        // Only some of the spec may change.
        let old = load(s).unwrap()[0].to_value();
        let mut new = old.clone();
        new["spec"]["replicas"] = 5.into();
        assert!(crate::validate_update::update("StatefulSet", &old, &new).is_ok());
        new["spec"]["serviceName"] = "other".into();
        let e = crate::validate_update::update("StatefulSet", &old, &new).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("spec: Forbidden: updates to statefulset spec for fields other than"),
            "{e:?}"
        );
    }

    #[test]
    fn rollouts_and_analysis_templates() {
        let r = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: i}]}\n  strategy:\n    canary:\n      steps: [{setWeight: 20}, {pause: {duration: 1m}}]\n";
        assert!(load(r).is_ok());
        check(
            &r.replace("      steps:", "      trafficRouting: {nginx: {}}\n      steps:"),
            "spec.strategy.canary.trafficRouting: field not supported",
        );
        check(
            &r.replace("setWeight: 20", "setWeight: 120"),
            "spec.strategy.canary.steps[0].setWeight: Invalid value: 120: must be between 0 and 100",
        );
        check(
            &r.replace("duration: 1m", "duration: 1d"),
            "spec.strategy.canary.steps[1].pause.duration: Invalid value: unknown unit \"d\"",
        );
        check(
            &r.replace("{setWeight: 20}", "{setWeight: 20, pause: {}}"),
            "spec.strategy.canary.steps[0]: Invalid value: Step must have one of the following set",
        );
        check(
            &r.replace("    canary:\n      steps: [{setWeight: 20}, {pause: {duration: 1m}}]\n", "    {}\n"),
            "spec.strategy: Required value: Rollout has missing field",
        );
        check(
            &r.replace("    canary:", "    blueGreen: {activeService: a, previewService: a}\n    canary:"),
            "spec.strategy: Invalid value: Multiple Strategies can not be listed",
        );
        let t = "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n  - name: m\n    successCondition: result[0] >= 0.95\n    provider: {web: {url: 'http://x/{{args.a}}', jsonPath: '{$.data}'}}\n";
        assert!(load(t).is_ok());
        check(
            &t.replace(">= 0.95", "= 0.95"),
            "spec.metrics[0].successCondition: Invalid value: \"result[0] = 0.95\": unexpected \"=\"",
        );
        check(
            &t.replace("{web: {url: 'http://x/{{args.a}}', jsonPath: '{$.data}'}}", "{}"),
            "spec.metrics[0].provider: Invalid value: exactly one provider is required",
        );
    }

    #[test]
    fn jobs_cronjobs_and_autoscalers() {
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec: {restartPolicy: Never, containers: [{name: c, image: i}]}\n";
        assert!(load(job).is_ok(), "{:?}", load(job).err());
        check(
            &job.replace("restartPolicy: Never, ", ""),
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
        );
        let cj = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '*/5 * * * mon-fri'\n  jobTemplate:\n    spec:\n      template:\n        spec: {restartPolicy: OnFailure, containers: [{name: c, image: i}]}\n";
        assert!(load(cj).is_ok(), "{:?}", load(cj).err());
        check(
            &cj.replace("*/5 * * * mon-fri", "61 * * * *"),
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59)",
        );
        check(
            &cj.replace("*/5 * * * mon-fri", "* * *"),
            "spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields",
        );
        let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 2\n  maxReplicas: 5\n";
        assert!(load(hpa).is_ok());
        check(
            &hpa.replace("maxReplicas: 5", "maxReplicas: 1"),
            "spec.maxReplicas: Invalid value: 1: must be greater than or equal to `minReplicas`",
        );
    }

    #[test]
    fn services_and_config() {
        let s = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";
        assert!(load(s).is_ok());
        check(
            &s.replace("port: 80,", "port: 80, nodePort: 31000,"),
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        );
        check(
            &s.replace("metadata: {name: web}", "metadata: {name: web.x}"),
            "metadata.name: Invalid value: \"web.x\"",
        );
        let lb = s.replace("spec:\n", "spec:\n  type: LoadBalancer\n");
        assert!(load(&lb).is_ok());
        assert!(
            load(&lb.replace("spec:\n", "spec:\n  loadBalancerIP: 192.0.2.7\n  externalIPs: [192.0.2.8]\n"))
                .is_ok()
        );
        for (extra, want) in [
            (
                "  externalIPs: [nope]\n",
                "spec.externalIPs[0]: Invalid value: \"nope\": must be a valid IP address",
            ),
            (
                "  ipFamilies: [IPv6]\n",
                "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster",
            ),
            (
                "  ipFamilyPolicy: RequireDualStack\n",
                "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
            ),
            (
                "  externalTrafficPolicy: Nearby\n",
                "spec.externalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"",
            ),
            (
                "  internalTrafficPolicy: Nearby\n",
                "spec.internalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"",
            ),
        ] {
            check(&lb.replace("spec:\n", &format!("spec:\n{extra}")), want);
        }
        check(
            &s.replace("spec:\n", "spec:\n  allocateLoadBalancerNodePorts: false\n"),
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
        );
        check(
            &s.replace("spec:\n", "spec:\n  externalTrafficPolicy: Cluster\n"),
            "spec.externalTrafficPolicy: Invalid value: may only be set for externally-accessible services",
        );
        check(
            "apiVersion: tug.io/v1\nkind: AddressPool\nmetadata: {name: p}\nspec: {addresses: [10.0.0.9-10.0.0.1]}\n",
            "spec.addresses[0]: Invalid value: \"10.0.0.9-10.0.0.1\": the range \"10.0.0.9-10.0.0.1\" ends before it starts",
        );
        check(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: '***'}\n",
            "data[k]: Invalid value: <secret contents redacted>: illegal base64 data",
        );
        check(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {'a b': x}\n",
            "data[a b]: Invalid value: \"a b\"",
        );
    }
}
