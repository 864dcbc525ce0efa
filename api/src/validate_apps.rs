//! Validation of StatefulSets, LimitRanges and ResourceQuotas, with Kubernetes' rules and
//! field paths.

use crate::kinds::apps::StatefulSet;
use crate::meta::IntOrString;
use crate::validate::{access_modes, non_negative, replicas, template, volume_mode};
use crate::validation::Errors;

/// `value` must be one of `allowed`, else Kubernetes' "Unsupported value".
fn one_of(value: Option<&str>, allowed: &[&str], path: &str, e: &mut Errors) {
    if let Some(v) = value.filter(|v| !allowed.contains(v)) {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        e.add(path, format!("Unsupported value: {v:?}: supported values: {}", list.join(", ")));
    }
}

pub(crate) fn stateful_set(d: &StatefulSet, e: &mut Errors) {
    let s = &d.spec;
    replicas(s.replicas, "spec.replicas", e);
    // The pods mount their claims by the templates' names: the template is checked with them.
    let mut spec = s.template.spec.clone();
    for c in &s.volume_claim_templates {
        if !spec.volumes.iter().any(|v| v.name == c.metadata.name) {
            spec.volumes.push(crate::kinds::pod::Volume {
                name: c.metadata.name.clone(),
                persistent_volume_claim: Some(crate::kinds::storage::ClaimVolumeSource {
                    claim_name: format!("{}-{}-0", c.metadata.name, d.metadata.name),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    template(&s.selector, &s.template.metadata, &spec, e);
    if let Some(name) = s.service_name.as_deref().filter(|n| !n.is_empty()) {
        if let Err(msg) = crate::validation::dns1123_label(name) {
            e.add("spec.serviceName", format!("Invalid value: {name:?}: {msg}"));
        }
    }
    one_of(s.pod_management_policy.as_deref(), &["OrderedReady", "Parallel"], "spec.podManagementPolicy", e);
    if let Some(u) = &s.update_strategy {
        one_of(u.type_.as_deref(), &["OnDelete", "RollingUpdate"], "spec.updateStrategy.type", e);
        match (u.type_.as_deref(), &u.rolling_update) {
            (Some("OnDelete"), Some(_)) => e.add(
                "spec.updateStrategy.rollingUpdate",
                "Invalid value: only allowed for updateStrategy 'RollingUpdate'",
            ),
            (_, Some(ru)) => {
                let at = "spec.updateStrategy.rollingUpdate";
                non_negative(ru.partition.map(i64::from), &format!("{at}.partition"), e);
                let field = format!("{at}.maxUnavailable");
                match ru.max_unavailable.as_ref().map(|m| (m, m.scaled(100, true))) {
                    Some((_, Err(msg))) => e.add(field, format!("Invalid value: {msg}")),
                    Some((m, Ok(n))) if n < 1 => {
                        let shown = match m {
                            IntOrString::Int(i) => i.to_string(),
                            IntOrString::String(s) => format!("{s:?}"),
                        };
                        e.add(field, format!("Invalid value: {shown}: must be greater than 0"));
                    }
                    Some((IntOrString::String(p), Ok(n))) if n > 100 => {
                        e.add(field, format!("Invalid value: {p:?}: must not be greater than 100%"));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if let Some(r) = &s.persistent_volume_claim_retention_policy {
        let at = "spec.persistentVolumeClaimRetentionPolicy";
        one_of(r.when_deleted.as_deref(), &["Retain", "Delete"], &format!("{at}.whenDeleted"), e);
        one_of(r.when_scaled.as_deref(), &["Retain", "Delete"], &format!("{at}.whenScaled"), e);
    }
    if let Some(o) = &s.ordinals {
        non_negative(Some(i64::from(o.start)), "spec.ordinals.start", e);
    }
    non_negative(s.min_ready_seconds.map(i64::from), "spec.minReadySeconds", e);
    non_negative(s.revision_history_limit.map(i64::from), "spec.revisionHistoryLimit", e);
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in s.volume_claim_templates.iter().enumerate() {
        let at = format!("spec.volumeClaimTemplates[{i}]");
        let name = c.metadata.name.as_str();
        if name.is_empty() {
            e.add(format!("{at}.metadata.name"), "Required value: name or generateName is required");
        } else if let Err(msg) = crate::validation::dns1123_label(name) {
            e.add(format!("{at}.metadata.name"), format!("Invalid value: {name:?}: {msg}"));
        } else if !names.insert(name) {
            e.add(format!("{at}.metadata.name"), format!("Duplicate value: {name:?}"));
        }
        access_modes(&c.spec.access_modes, &format!("{at}.spec.accessModes"), e);
        volume_mode(c.spec.volume_mode.as_deref(), &format!("{at}.spec.volumeMode"), e);
        if !c.spec.resources.as_ref().is_some_and(|r| r.requests.contains_key("storage")) {
            e.add(format!("{at}.spec.resources.requests.storage"), "Required value");
        }
    }
}

/// The resource names a quota or limit may name: Kubernetes' standard ones.
fn standard_resource(name: &str, quota: bool) -> bool {
    const COMPUTE: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];
    const QUOTA: [&str; 17] = [
        "pods",
        "services",
        "replicationcontrollers",
        "resourcequotas",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "services.nodeports",
        "services.loadbalancers",
        "requests.cpu",
        "requests.memory",
        "requests.storage",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "storage",
    ];
    COMPUTE.contains(&name)
        || name.starts_with("hugepages-")
        || (quota
            && (QUOTA.contains(&name)
                || name.starts_with("count/")
                || name.starts_with("requests.hugepages-")
                || name.contains(".storageclass.storage.k8s.io/")))
        || (!quota && name == "storage")
}

pub(crate) fn limit_range(l: &crate::kinds::quota::LimitRange, e: &mut Errors) {
    for (i, item) in l.spec.limits.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        one_of(
            Some(item.type_.as_str()),
            &["Container", "Pod", "PersistentVolumeClaim"],
            &format!("{at}.type"),
            e,
        );
        if item.type_ != "Container" {
            for (field, set) in [("default", &item.default), ("defaultRequest", &item.default_request)] {
                if !set.is_empty() {
                    e.add(
                        format!("{at}.{field}"),
                        format!("Forbidden: may not be specified when `type` is '{}'", item.type_),
                    );
                }
            }
        }
        let lists = [
            ("max", &item.max),
            ("min", &item.min),
            ("default", &item.default),
            ("defaultRequest", &item.default_request),
            ("maxLimitRequestRatio", &item.max_limit_request_ratio),
        ];
        for (field, list) in lists {
            for k in list.keys().filter(|k| !standard_resource(k, false)) {
                e.add(
                    format!("{at}.{field}[{k}]"),
                    format!("Invalid value: {k:?}: must be a standard limit type or fully qualified"),
                );
            }
        }
        for (k, min) in &item.min {
            if let Some(max) = item.max.get(k).filter(|max| min.millis() > max.millis()) {
                e.add(
                    format!("{at}.min[{k}]"),
                    format!(
                        "Invalid value: {:?}: min value {} is greater than max value {}",
                        min.as_str(),
                        min.as_str(),
                        max.as_str()
                    ),
                );
            }
        }
        for (k, d) in &item.default_request {
            if let Some(lim) = item.default.get(k).filter(|lim| d.millis() > lim.millis()) {
                e.add(
                    format!("{at}.defaultRequest[{k}]"),
                    format!(
                        "Invalid value: {:?}: default request value {} is greater than default limit value {}",
                        d.as_str(),
                        d.as_str(),
                        lim.as_str()
                    ),
                );
            }
            if let Some(max) = item.max.get(k).filter(|max| d.millis() > max.millis()) {
                e.add(
                    format!("{at}.defaultRequest[{k}]"),
                    format!(
                        "Invalid value: {:?}: default request value {} is greater than max value {}",
                        d.as_str(),
                        d.as_str(),
                        max.as_str()
                    ),
                );
            }
        }
        for (k, r) in &item.max_limit_request_ratio {
            if r.millis() < 1000 {
                e.add(
                    format!("{at}.maxLimitRequestRatio[{k}]"),
                    format!("Invalid value: {:?}: ratio {} is less than 1", r.as_str(), r.as_str()),
                );
            }
        }
    }
}

pub(crate) fn resource_quota(q: &crate::kinds::quota::ResourceQuota, e: &mut Errors) {
    for k in q.spec.hard.keys().filter(|k| !standard_resource(k, true)) {
        e.add(
            format!("spec.hard[{k}]"),
            format!("Invalid value: {k:?}: must be a standard resource for quota"),
        );
    }
    const SCOPES: [&str; 6] = [
        "Terminating",
        "NotTerminating",
        "BestEffort",
        "NotBestEffort",
        "PriorityClass",
        "CrossNamespacePodAffinity",
    ];
    for (i, s) in q.spec.scopes.iter().enumerate() {
        one_of(Some(s.as_str()), &SCOPES, &format!("spec.scopes[{i}]"), e);
    }
    if q.spec.scopes.iter().any(|s| s == "BestEffort") && q.spec.scopes.iter().any(|s| s == "NotBestEffort") {
        e.add("spec.scopes", "Invalid value: conflicting scopes BestEffort and NotBestEffort");
    }
    for (i, m) in q.spec.scope_selector.iter().flat_map(|s| s.match_expressions.iter()).enumerate() {
        let at = format!("spec.scopeSelector.matchExpressions[{i}]");
        one_of(Some(m.scope_name.as_str()), &SCOPES, &format!("{at}.scopeName"), e);
        one_of(
            Some(m.operator.as_str()),
            &["In", "NotIn", "Exists", "DoesNotExist"],
            &format!("{at}.operator"),
            e,
        );
        match m.operator.as_str() {
            "In" | "NotIn" if m.values.is_empty() => e.add(
                format!("{at}.values"),
                "Required value: must be at least one value when `operator` is 'In' or 'NotIn'",
            ),
            "Exists" | "DoesNotExist" if !m.values.is_empty() => e.add(
                format!("{at}.values"),
                "Invalid value: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            _ => {}
        }
    }
}
