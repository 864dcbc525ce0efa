//! What an update may change: Kubernetes' `ValidateUpdate` rules for the served kinds, with
//! its messages (`field is immutable`). Pure: the stored object and the one that would
//! replace it (both defaulted), after the server has carried over what it set itself.

use crate::validation::{Errors, FieldError};
use serde_json::Value;

/// The errors of replacing `old` by `new`, an object of `kind`; none when it may be.
pub fn update(kind: &str, old: &Value, new: &Value) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" => immutable(old, new, &["spec", "selector"], &mut e),
        "StatefulSet" => stateful_set(old, new, &mut e),
        "Job" => job(old, new, &mut e),
        "Pod" => pod(old, new, &mut e),
        "ConfigMap" | "Secret" => locked_data(old, new, &mut e),
        "Service" => {
            immutable(old, new, &["spec", "clusterIP"], &mut e);
            immutable(old, new, &["spec", "clusterIPs"], &mut e);
        }
        "PersistentVolumeClaim" => claim(old, new, &mut e),
        "RoleBinding" | "ClusterRoleBinding" if at(old, &["roleRef"]) != at(new, &["roleRef"]) => {
            e.add(
                "roleRef",
                format!("Invalid value: {}: cannot change roleRef", shown(at(new, &["roleRef"]))),
            );
        }
        "PersistentVolume" => {
            for source in ["local", "hostPath"] {
                immutable(old, new, &["spec", source], &mut e);
            }
        }
        "Node" if !at(old, &["spec", "podCIDR"]).is_null() => {
            immutable(old, new, &["spec", "podCIDR"], &mut e);
        }
        _ => {}
    }
    if e.list.is_empty() { Ok(()) } else { Err(e.list) }
}

/// A StatefulSet's spec may change only in these fields (its selector, service, claim
/// templates and pod management policy are fixed).
fn stateful_set(old: &Value, new: &Value, e: &mut Errors) {
    const MUTABLE: [&str; 7] = [
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "revisionHistoryLimit",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
    ];
    let fixed = |v: &Value| {
        let mut s = v["spec"].as_object().cloned().unwrap_or_default();
        s.retain(|k, _| !MUTABLE.contains(&k.as_str()));
        s
    };
    if fixed(old) != fixed(new) {
        e.add(
            "spec",
            "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        );
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// `path` must be what it was.
fn immutable(old: &Value, new: &Value, path: &[&str], e: &mut Errors) {
    let (was, is) = (at(old, path), at(new, path));
    if was != is {
        e.add(path.join("."), format!("Invalid value: {}: field is immutable", shown(is)));
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// A Job's selector never changes; its template only while it is suspended and has never
/// started, and then only in what decides where its pods run (Kubernetes 1.27's mutable
/// scheduling directives).
fn job(old: &Value, new: &Value, e: &mut Errors) {
    immutable(old, new, &["spec", "selector"], e);
    let unstarted = old["spec"]["suspend"] == true && old["status"]["startTime"].is_null();
    if !unstarted {
        immutable(old, new, &["spec", "template"], e);
        return;
    }
    let scheduling = |t: &Value| {
        let mut t = t.clone();
        if let Some(m) = t["metadata"].as_object_mut() {
            m.remove("labels");
            m.remove("annotations");
        }
        if let Some(s) = t["spec"].as_object_mut() {
            for f in ["nodeSelector", "tolerations", "affinity", "schedulingGates"] {
                s.remove(f);
            }
        }
        t
    };
    if scheduling(&old["spec"]["template"]) != scheduling(&new["spec"]["template"]) {
        e.add(
            "spec.template",
            "Invalid value: field is immutable (a suspended Job that never started may change only its pods' labels, annotations, nodeSelector, tolerations, affinity and schedulingGates)",
        );
    }
}

/// A pod's spec is fixed but for its containers' images, `activeDeadlineSeconds` and added
/// tolerations.
fn pod(old: &Value, new: &Value, e: &mut Errors) {
    let mut tolerations_ok = true;
    if let (Some(was), Some(is)) =
        (old["spec"]["tolerations"].as_array(), new["spec"]["tolerations"].as_array())
    {
        tolerations_ok = was.iter().all(|t| is.contains(t));
    } else if old["spec"]["tolerations"].as_array().is_some_and(|a| !a.is_empty()) {
        tolerations_ok = false;
    }
    let masked = |v: &Value| {
        let mut s = v["spec"].clone();
        for list in ["containers", "initContainers"] {
            for c in s[list].as_array_mut().into_iter().flatten() {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            m.remove("schedulingGates");
        }
        s
    };
    // Scheduling gates may only be taken away.
    let gates = |v: &Value| v["spec"]["schedulingGates"].as_array().cloned().unwrap_or_default();
    if let Some(added) = gates(new).iter().find(|g| !gates(old).contains(g)) {
        e.add(
            "spec.schedulingGates",
            format!(
                "Forbidden: only deletion is allowed, but found new scheduling gate '{}'",
                added["name"].as_str().unwrap_or_default()
            ),
        );
    }
    if masked(old) != masked(new) || !tolerations_ok {
        e.add(
            "spec",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)",
        );
    }
}

/// A ConfigMap or Secret marked `immutable: true` keeps its data, and the mark.
fn locked_data(old: &Value, new: &Value, e: &mut Errors) {
    if old["immutable"] != true {
        return;
    }
    if new["immutable"] != true {
        e.add("immutable", "Forbidden: field is immutable when `immutable` is set");
    }
    for field in ["data", "binaryData", "stringData"] {
        if old[field] != new[field] && !(field == "stringData" && new[field].is_null()) {
            e.add(field, "Forbidden: field is immutable when `immutable` is set");
        }
    }
}

/// A claim's spec is fixed but for its storage request, which may only grow.
fn claim(old: &Value, new: &Value, e: &mut Errors) {
    let storage = |v: &Value| v["spec"]["resources"]["requests"]["storage"].clone();
    let without = |v: &Value| {
        let mut s = v["spec"].clone();
        if let Some(r) = s["resources"]["requests"].as_object_mut() {
            r.remove("storage");
        }
        s
    };
    if without(old) != without(new) {
        e.add(
            "spec",
            "Forbidden: spec is immutable after creation except resources.requests for bound claims",
        );
    }
    let bytes =
        |v: &Value| v.as_str().and_then(|q| crate::quantity::Quantity::parse(q).ok()).map(|q| q.value());
    if let (Some(was), Some(is)) = (bytes(&storage(old)), bytes(&storage(new)))
        && is < was
    {
        e.add("spec.resources.requests.storage", "Forbidden: field can not be less than previous value");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Data-driven: (kind, old, new) → the first error's field and the start of its message,
    /// or None where the change is allowed.
    fn check(kind: &str, old: Value, new: Value, want: Option<(&str, &str)>) {
        let got = update(kind, &old, &new);
        match (got, want) {
            (Ok(()), None) => {}
            (Err(errs), Some((field, message))) => {
                assert_eq!(errs[0].field, field, "{kind}: {errs:?}");
                assert!(errs[0].message.starts_with(message), "{kind}: {}", errs[0].message);
            }
            (got, want) => panic!("{kind}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn immutable_fields_are_refused_with_their_path_and_allowed_changes_pass() {
        let deploy = |sel: &str, replicas: i64| json!({"spec": {"selector": {"matchLabels": {"app": sel}}, "replicas": replicas}});
        check("Deployment", deploy("a", 1), deploy("a", 3), None);
        check(
            "Deployment",
            deploy("a", 1),
            deploy("b", 1),
            Some(("spec.selector", "Invalid value: {\"matchLabels\":{\"app\":\"b\"}}: field is immutable")),
        );
        check("ReplicaSet", deploy("a", 1), deploy("b", 1), Some(("spec.selector", "Invalid value")));

        let job = |suspend: bool, image: &str, node: &str| json!({"spec": {"suspend": suspend, "template": {"spec": {"nodeSelector": {"zone": node}, "containers": [{"name": "c", "image": image}]}}}});
        check("Job", job(false, "a", "x"), job(false, "b", "x"), Some(("spec.template", "Invalid value")));
        check("Job", job(true, "a", "x"), job(true, "a", "y"), None);
        check(
            "Job",
            job(true, "a", "x"),
            job(true, "b", "x"),
            Some(("spec.template", "Invalid value: field is immutable (a suspended Job")),
        );
        let mut started = job(true, "a", "x");
        started["status"]["startTime"] = "2026-01-01T00:00:00Z".into();
        check("Job", started, job(true, "a", "y"), Some(("spec.template", "Invalid value")));

        let pod = |image: &str, tolerations: Value, restart: &str| json!({"spec": {"restartPolicy": restart, "tolerations": tolerations, "containers": [{"name": "c", "image": image}]}});
        let t1 = json!({"key": "a", "operator": "Exists"});
        let t2 = json!({"key": "b", "operator": "Exists"});
        check("Pod", pod("a", json!([t1]), "Always"), pod("b", json!([t1, t2]), "Always"), None);
        check(
            "Pod",
            pod("a", json!([t1]), "Always"),
            pod("a", json!([t1]), "Never"),
            Some(("spec", "Forbidden: pod updates may not change fields")),
        );
        check(
            "Pod",
            pod("a", json!([t1, t2]), "Always"),
            pod("a", json!([t2]), "Always"),
            Some(("spec", "Forbidden")),
        );

        let cm = |locked: bool, v: &str| json!({"immutable": locked, "data": {"k": v}});
        check("ConfigMap", cm(false, "a"), cm(false, "b"), None);
        check(
            "ConfigMap",
            cm(true, "a"),
            cm(true, "b"),
            Some(("data", "Forbidden: field is immutable when `immutable` is set")),
        );
        check("Secret", cm(true, "a"), cm(false, "a"), Some(("immutable", "Forbidden")));

        let svc = |ip: &str, port: i64| json!({"spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": port}]}});
        check("Service", svc("10.96.0.5", 80), svc("10.96.0.5", 8080), None);
        check(
            "Service",
            svc("10.96.0.5", 80),
            svc("10.96.0.6", 80),
            Some(("spec.clusterIP", "Invalid value: \"10.96.0.6\": field is immutable")),
        );

        let pvc = |size: &str, mode: &str| json!({"spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}}});
        check("PersistentVolumeClaim", pvc("1Gi", "ReadWriteOnce"), pvc("2Gi", "ReadWriteOnce"), None);
        check(
            "PersistentVolumeClaim",
            pvc("2Gi", "ReadWriteOnce"),
            pvc("1Gi", "ReadWriteOnce"),
            Some(("spec.resources.requests.storage", "Forbidden: field can not be less")),
        );
        check(
            "PersistentVolumeClaim",
            pvc("1Gi", "ReadWriteOnce"),
            pvc("1Gi", "ReadOnlyMany"),
            Some(("spec", "Forbidden: spec is immutable")),
        );

        let pv = |path: &str| json!({"spec": {"local": {"path": path}, "capacity": {"storage": "1Gi"}}});
        check("PersistentVolume", pv("/a"), pv("/b"), Some(("spec.local", "Invalid value")));

        let node = |cidr: Value, unschedulable: bool| json!({"spec": {"podCIDR": cidr, "unschedulable": unschedulable}});
        check("Node", node(json!(null), false), node(json!("10.244.1.0/24"), false), None);
        check("Node", node(json!("10.244.1.0/24"), false), node(json!("10.244.1.0/24"), true), None);
        check(
            "Node",
            node(json!("10.244.1.0/24"), false),
            node(json!("10.244.2.0/24"), false),
            Some(("spec.podCIDR", "Invalid value")),
        );
    }
}
