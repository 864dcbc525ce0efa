//! The default ClusterRoles and bindings every cluster has (Kubernetes' bootstrap policy):
//! `cluster-admin` for `system:masters`; the user-facing `admin`, `edit` and `view`, each the
//! aggregate of the `system:aggregate-to-*` roles (and `view` of `edit`, `edit` of `admin`);
//! discovery, public info and self-review for everyone; `/join` for join-token holders.
//! Made at start when missing, and kept current while annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "true"`. Also the aggregation itself, pure.

use crate::store::{Store, StoreError};
use serde_json::{Value, json};
use tug_api::kinds::rbac::{ClusterRole, PolicyRule};
use tug_api::labels::LabelSelector;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": [group], "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn labels(pairs: &[(&str, &str)]) -> Value {
    pairs.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect::<serde_json::Map<_, _>>().into()
}

fn aggregate_label(to: &str) -> String {
    format!("rbac.authorization.k8s.io/aggregate-to-{to}")
}

fn cluster_role(name: &str, rules: Vec<Value>, extra_labels: &[(&str, &str)]) -> Value {
    let mut l = vec![("kubernetes.io/bootstrapping", "rbac-defaults")];
    l.extend_from_slice(extra_labels);
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels(&l), "annotations": {AUTOUPDATE: "true"}},
        "rules": rules})
}

fn aggregated(name: &str, to: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut r = cluster_role(name, Vec::new(), extra_labels);
    r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {aggregate_label(to): "true"}}]});
    r
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects})
}

/// The default ClusterRoles, as stored.
pub fn cluster_roles() -> Vec<Value> {
    let edit_verbs: Vec<&str> = WRITE.to_vec();
    let all = |v: &[&'static str]| -> Vec<&'static str> { [v, READ].concat() };
    vec![
        cluster_role("cluster-admin", vec![rule(&["*"], "*", &["*"]), urls(&["*"], &["*"])], &[]),
        aggregated("admin", "admin", &[]),
        aggregated("edit", "edit", &[(&aggregate_label("admin"), "true")]),
        aggregated("view", "view", &[(&aggregate_label("edit"), "true")]),
        cluster_role(
            "system:aggregate-to-view",
            vec![
                rule(
                    READ,
                    "",
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "events",
                        "limitranges",
                        "namespaces",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(
                    READ,
                    "apps",
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(READ, "autoscaling", &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
                rule(READ, "batch", &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
                rule(READ, "metrics.k8s.io", &["pods"]),
                rule(READ, "policy", &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
                rule(READ, "networking.k8s.io", &["ingresses", "ingresses/status", "networkpolicies"]),
                rule(
                    READ,
                    "autoscaling.k8s.io",
                    &["verticalpodautoscalers", "verticalpodautoscalers/status"],
                ),
                rule(
                    READ,
                    "argoproj.io",
                    &[
                        "rollouts",
                        "rollouts/scale",
                        "rollouts/status",
                        "analysisruns",
                        "analysistemplates",
                        "clusteranalysistemplates",
                    ],
                ),
            ],
            &[(&aggregate_label("view"), "true")],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            vec![
                rule(
                    READ,
                    "",
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], "", &["serviceaccounts"]),
                rule(
                    &edit_verbs,
                    "",
                    &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/resize"],
                ),
                rule(
                    &edit_verbs,
                    "",
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], "", &["serviceaccounts/token", "pods/eviction"]),
                rule(
                    &edit_verbs,
                    "apps",
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(&edit_verbs, "autoscaling", &["horizontalpodautoscalers"]),
                rule(&edit_verbs, "batch", &["cronjobs", "jobs"]),
                rule(&edit_verbs, "policy", &["poddisruptionbudgets"]),
                rule(&edit_verbs, "networking.k8s.io", &["ingresses", "networkpolicies"]),
                rule(&edit_verbs, "autoscaling.k8s.io", &["verticalpodautoscalers"]),
                rule(
                    &edit_verbs,
                    "argoproj.io",
                    &["rollouts", "rollouts/scale", "analysisruns", "analysistemplates"],
                ),
            ],
            &[(&aggregate_label("edit"), "true")],
        ),
        cluster_role(
            "system:aggregate-to-admin",
            vec![
                rule(&["create"], "authorization.k8s.io", &["localsubjectaccessreviews"]),
                rule(&all(WRITE), "rbac.authorization.k8s.io", &["rolebindings", "roles"]),
            ],
            &[(&aggregate_label("admin"), "true")],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], "authentication.k8s.io", &["selfsubjectreviews"]),
            ],
            &[],
        ),
        cluster_role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
            &[],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
            &[],
        ),
        cluster_role("system:node-bootstrapper", vec![urls(&["post"], &["/join"])], &[]),
        // Prometheus' scrape identity: put its user in the system:monitoring group.
        cluster_role(
            "system:monitoring",
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
            &[],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &[super::MASTERS]),
        binding("system:basic-user", "system:basic-user", &[super::AUTHENTICATED]),
        binding("system:discovery", "system:discovery", &[super::AUTHENTICATED]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[super::AUTHENTICATED, super::UNAUTHENTICATED],
        ),
        binding("system:node-bootstrapper", "system:node-bootstrapper", &[super::BOOTSTRAPPERS]),
        binding("system:monitoring", "system:monitoring", &["system:monitoring"]),
    ]
}

/// An aggregated ClusterRole's rules: those of every other ClusterRole its selectors match, in
/// name order, each rule once. `None` for a role without an aggregation rule.
pub fn aggregate(role: &ClusterRole, all: &[ClusterRole]) -> Option<Vec<PolicyRule>> {
    let rule = role.aggregation_rule.as_ref()?;
    let selectors: Vec<_> =
        rule.cluster_role_selectors.iter().filter_map(|s: &LabelSelector| s.to_selector("").ok()).collect();
    let mut sources: Vec<&ClusterRole> = all
        .iter()
        .filter(|r| r.metadata.name != role.metadata.name)
        .filter(|r| selectors.iter().any(|s| s.matches(&r.metadata.labels)))
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out: Vec<PolicyRule> = Vec::new();
    for r in sources.iter().flat_map(|r| &r.rules) {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    Some(out)
}

/// Writes the default policy: what is missing is created, what is marked autoupdate has its
/// rules (or subjects and role) restored. Then the aggregated roles are filled in, so access
/// works before the controllers start.
pub fn bootstrap(store: &dyn Store) -> Result<(), StoreError> {
    let now = crate::api::now();
    for (plural, objects) in
        [("clusterroles", cluster_roles()), ("clusterrolebindings", cluster_role_bindings())]
    {
        for mut obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = format!("{}{plural}//{name}", super::rbac::PREFIX);
            match store.get(&key)? {
                None => {
                    crate::api::objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now);
                    match store.create(&key, obj) {
                        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(cur) if cur.object["metadata"]["annotations"][AUTOUPDATE] == "true" => {
                    let mut next = cur.object.clone();
                    let fields: &[&str] = if plural == "clusterroles" {
                        if obj.get("aggregationRule").is_some() { &["aggregationRule"] } else { &["rules"] }
                    } else {
                        &["roleRef", "subjects"]
                    };
                    for f in fields {
                        next[*f] = obj[*f].clone();
                    }
                    if next != cur.object {
                        match store.update(&key, next, Some(cur.revision)) {
                            Ok(_) | Err(StoreError::Conflict { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }
    crate::controllers::clusterroles::aggregate_all(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_edit_holds_view() {
        let roles: Vec<ClusterRole> =
            cluster_roles().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
        let find = |n: &str| roles.iter().find(|r| r.metadata.name == n).unwrap().clone();
        // Aggregation runs to a fixpoint: view, then edit (which includes view), then admin.
        let mut all = roles.clone();
        for _ in 0..3 {
            let snapshot = all.clone();
            for r in &mut all {
                if let Some(rules) = aggregate(r, &snapshot) {
                    r.rules = rules;
                }
            }
        }
        let get = |n: &str| all.iter().find(|r| r.metadata.name == n).unwrap().rules.clone();
        let (view, edit, admin) = (get("view"), get("edit"), get("admin"));
        assert!(view.iter().all(|r| edit.contains(r)) && edit.iter().all(|r| admin.contains(r)));
        assert!(edit.len() > view.len() && admin.len() > edit.len());
        assert!(!view.iter().any(|r| r.resources.iter().any(|x| x == "secrets")), "view never reads secrets");
        assert!(find("view").aggregation_rule.is_some());
    }
}
