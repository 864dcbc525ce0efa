//! The node authorizer and Kubernetes' NodeRestriction, for users `system:node:NAME` in
//! `system:nodes` (what `tug join` issues): a node reads what every node needs (pods,
//! services, endpoints, nodes, namespaces, NetworkPolicies, Ingresses and their classes),
//! but only the Secrets, ConfigMaps, claims and volumes of pods bound to it (and the TLS
//! Secrets of Ingresses, which every node serves); it writes only its own Node, its own
//! Lease, its pods' status and their final delete, Events; and it opens the tunnel only under
//! its own name. Everything else is RBAC's to decide.

use super::{Attributes, Decision};
use crate::store::{Store, StoreError};
use serde_json::Value;

/// Where nodes' Leases live.
pub const LEASE_NAMESPACE: &str = "tug-node-lease";

fn allow_if(ok: bool, why: impl FnOnce() -> String) -> Decision {
    if ok { Decision::Allow } else { Decision::Deny(why()) }
}

/// `allow_if` for an answer that needed a store read: a read that failed decides nothing
/// (the client retries on the 503), where a refusal would be final to it.
fn allow_if_read(ok: Result<bool, StoreError>, why: impl FnOnce() -> String) -> Decision {
    match ok {
        Ok(ok) => allow_if(ok, why),
        Err(e) => Decision::Unavailable(format!("the node authorizer could not read the store: {e}")),
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];

/// The node authorizer's decision for `node`.
pub fn authorize(store: &dyn Store, node: &str, a: &Attributes) -> Decision {
    if !a.resource_request {
        return Decision::NoOpinion(String::new());
    }
    let verb = a.verb.as_str();
    let unrelated = || format!("no relationship found between node '{node}' and this object");
    match (a.api_group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims" | "persistentvolumes", "") => {
            if verb != "get" || a.name.is_empty() {
                return Decision::Deny("can only get individual resources of this type".into());
            }
            // The TLS Secrets of Ingresses: every node serves them (the Ingress controller).
            let ingress_tls = if a.resource == "secrets" {
                ingress_secret(store, &a.namespace, &a.name)
            } else {
                Ok(false)
            };
            allow_if_read(ingress_tls.and_then(|tls| Ok(tls || related(store, node, a)?)), unrelated)
        }
        ("", "nodes", "" | "status") if READ.contains(&verb) => Decision::Allow,
        // A create names the node in its body: the API checks it (`admit_create`).
        ("", "nodes", "") if verb == "create" => Decision::Allow,
        ("", "nodes", "" | "status") if ["update", "patch", "delete"].contains(&verb) => {
            allow_if(a.name == node, || format!("node '{node}' cannot modify node '{}'", a.name))
        }
        ("", "nodes", "tunnel") if verb == "get" => {
            allow_if(a.name == node, || format!("node '{node}' cannot open the tunnel of node '{}'", a.name))
        }
        ("", "pods", "") if READ.contains(&verb) => Decision::Allow,
        ("", "pods", "") if verb == "delete" => {
            allow_if_read(bound_here(store, node, &a.namespace, &a.name), || {
                format!("node '{node}' can only delete pods with spec.nodeName set to itself")
            })
        }
        ("", "pods", "status") if ["get", "update", "patch"].contains(&verb) => {
            allow_if_read(bound_here(store, node, &a.namespace, &a.name), || {
                format!("node '{node}' can only update pod status for pods with spec.nodeName set to itself")
            })
        }
        // Tokens for the accounts its pods run as; the API checks the pod it binds to.
        ("", "serviceaccounts", "token") if verb == "create" => {
            let runs_as = |p: &crate::store::Stored| {
                p.object["spec"]["nodeName"] == node
                    && p.object["spec"]["serviceAccountName"].as_str().unwrap_or("default") == a.name
            };
            let used =
                store.list(&format!("/pods/{}/", a.namespace)).map(|(pods, _)| pods.iter().any(runs_as));
            allow_if_read(used, unrelated)
        }
        ("", "services" | "endpoints" | "namespaces", "") if READ.contains(&verb) => Decision::Allow,
        // What enforcing NetworkPolicies needs (with the pods above).
        ("networking.k8s.io", "networkpolicies" | "ingresses" | "ingressclasses", "")
            if READ.contains(&verb) =>
        {
            Decision::Allow
        }
        ("", "events", "") if ["create", "update", "patch"].contains(&verb) => Decision::Allow,
        ("coordination.k8s.io", "leases", "") if a.namespace == LEASE_NAMESPACE => {
            let ok = ["get", "create", "update", "patch", "delete"].contains(&verb)
                && (a.name == node || (verb == "create" && a.name.is_empty()));
            allow_if(ok, || "can only access node lease with the same name as the requesting node".into())
        }
        _ => Decision::NoOpinion(String::new()),
    }
}

/// Whether an Ingress of namespace `ns` names Secret `name` for TLS.
fn ingress_secret(store: &dyn Store, ns: &str, name: &str) -> Result<bool, StoreError> {
    store.list(&format!("networking.k8s.io/ingresses/{ns}/")).map(|(list, _)| {
        list.iter().any(|i| {
            i.object["spec"]["tls"].as_array().into_iter().flatten().any(|t| t["secretName"] == name)
        })
    })
}

/// Whether the pod `ns/name` is bound to `node`.
/// (Read from the pod decoded in the store's copy: every status update a node makes is
/// checked here, and parsing the pod for it took more than the update's own decode.)
fn bound_here(store: &dyn Store, node: &str, ns: &str, name: &str) -> Result<bool, StoreError> {
    let pod =
        crate::store::cache::get_typed::<tug_api::kinds::pod::Pod>(store, &format!("/pods/{ns}/{name}"))?;
    Ok(pod.is_some_and(|p| p.value.spec.node_name.as_deref() == Some(node)))
}

/// Whether a pod bound to `node` uses the object `a` names.
fn related(store: &dyn Store, node: &str, a: &Attributes) -> Result<bool, StoreError> {
    let (ns, claim) = if a.resource == "persistentvolumes" {
        // A volume is the node's when a claim its pods use is bound to it.
        let Some(pv) = store.get(&format!("/persistentvolumes//{}", a.name))? else { return Ok(false) };
        let r = &pv.object["spec"]["claimRef"];
        match (r["namespace"].as_str(), r["name"].as_str()) {
            (Some(ns), Some(n)) => (ns.to_string(), n.to_string()),
            _ => return Ok(false),
        }
    } else {
        (a.namespace.clone(), a.name.clone())
    };
    let kind = if a.resource == "persistentvolumes" { "persistentvolumeclaims" } else { a.resource.as_str() };
    let (pods, _) = store.list(&format!("/pods/{ns}/"))?;
    Ok(pods
        .iter()
        .filter(|p| p.object["spec"]["nodeName"] == node)
        .any(|p| references(&p.object["spec"], kind).iter().any(|n| *n == claim)))
}

/// The names of the `kind` objects (secrets, configmaps, persistentvolumeclaims) a pod spec
/// refers to: volumes (projected sources too), env and envFrom, image pull secrets.
pub fn references<'a>(spec: &'a Value, kind: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let items = |v: &'a Value| v.as_array().into_iter().flatten();
    for vol in items(&spec["volumes"]) {
        match kind {
            "secrets" => out.extend(vol["secret"]["secretName"].as_str()),
            "configmaps" => out.extend(vol["configMap"]["name"].as_str()),
            _ => out.extend(vol["persistentVolumeClaim"]["claimName"].as_str()),
        }
        for src in items(&vol["projected"]["sources"]) {
            match kind {
                "secrets" => out.extend(src["secret"]["name"].as_str()),
                "configmaps" => out.extend(src["configMap"]["name"].as_str()),
                _ => {}
            }
        }
    }
    let (key_ref, from_ref) = match kind {
        "secrets" => ("secretKeyRef", "secretRef"),
        "configmaps" => ("configMapKeyRef", "configMapRef"),
        _ => return out,
    };
    for c in items(&spec["containers"]).chain(items(&spec["initContainers"])) {
        for e in items(&c["env"]) {
            out.extend(e["valueFrom"][key_ref]["name"].as_str());
        }
        for e in items(&c["envFrom"]) {
            out.extend(e[from_ref]["name"].as_str());
        }
    }
    if kind == "secrets" {
        out.extend(items(&spec["imagePullSecrets"]).filter_map(|s| s["name"].as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;
    use serde_json::json;

    fn pod(store: &dyn Store, name: &str, node: &str, secret: &str) {
        store
            .create(
                &format!("/pods/default/{name}"),
                json!({"kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                        "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}],
                        "volumes": [{"name": "v", "configMap": {"name": format!("{secret}-cm")}}]}}),
            )
            .unwrap();
    }

    #[test]
    fn a_node_reads_only_what_its_pods_use_and_writes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        pod(&store, "a", "n1", "s1");
        pod(&store, "b", "n2", "s2");
        let r = |verb: &str, res: &str, ns: &str, name: &str| {
            authorize(&store, "n1", &Attributes::resource(verb, "", res, ns, name))
        };
        assert_eq!(r("get", "secrets", "default", "s1"), Decision::Allow);
        assert_eq!(r("get", "configmaps", "default", "s1-cm"), Decision::Allow);
        assert!(
            matches!(r("get", "secrets", "default", "s2"), Decision::Deny(m) if m.contains("no relationship"))
        );
        assert!(matches!(r("list", "secrets", "default", ""), Decision::Deny(_)));
        assert_eq!(r("update", "pods/status", "default", "a"), Decision::Allow);
        assert!(matches!(r("update", "pods/status", "default", "b"), Decision::Deny(_)));
        assert_eq!(r("delete", "pods", "default", "a"), Decision::Allow);
        assert!(matches!(r("delete", "pods", "default", "b"), Decision::Deny(_)));
        assert!(matches!(r("create", "pods", "default", ""), Decision::NoOpinion(_)));
        assert_eq!(r("update", "nodes", "", "n1"), Decision::Allow);
        assert!(matches!(r("update", "nodes", "", "n2"), Decision::Deny(_)));
        assert_eq!(r("get", "nodes/tunnel", "", "n1"), Decision::Allow);
        assert!(matches!(r("get", "nodes/tunnel", "", "n2"), Decision::Deny(m) if m.contains("tunnel")));
        assert!(matches!(r("create", "pods/exec", "default", "a"), Decision::NoOpinion(_)));
        let lease = |name: &str| {
            authorize(
                &store,
                "n1",
                &Attributes::resource("update", "coordination.k8s.io", "leases", LEASE_NAMESPACE, name),
            )
        };
        assert_eq!(lease("n1"), Decision::Allow);
        assert!(matches!(lease("n2"), Decision::Deny(_)));
    }

    /// A store that answers every call with Unavailable (etcd without quorum).
    struct Down;
    fn no_quorum<T>() -> Result<T, StoreError> {
        Err(StoreError::Unavailable("no quorum".into()))
    }
    impl Store for Down {
        fn get(&self, _: &str) -> Result<Option<crate::store::Stored>, StoreError> {
            no_quorum()
        }
        fn list(&self, _: &str) -> Result<(Vec<crate::store::Stored>, u64), StoreError> {
            no_quorum()
        }
        fn create(&self, _: &str, _: Value) -> Result<crate::store::Stored, StoreError> {
            no_quorum()
        }
        fn update(&self, _: &str, _: Value, _: Option<u64>) -> Result<crate::store::Stored, StoreError> {
            no_quorum()
        }
        fn delete(&self, _: &str, _: Option<u64>) -> Result<crate::store::Stored, StoreError> {
            no_quorum()
        }
        fn watch(&self, _: &str, _: u64) -> Result<crate::store::Watch, StoreError> {
            no_quorum()
        }
        fn watch_node(&self, _: &str, _: u64, _: &str) -> Result<crate::store::Watch, StoreError> {
            no_quorum()
        }
        fn compact(&self, _: u64) -> Result<(), StoreError> {
            no_quorum()
        }
        fn revision(&self) -> Result<u64, StoreError> {
            no_quorum()
        }
    }

    /// A read that fails decides nothing: an agent told Forbidden for its pod's final delete
    /// or status while etcd had no quorum took it as final and never got its answer.
    #[test]
    fn a_failed_read_is_unavailable_not_a_refusal() {
        let r = |verb: &str, res: &str, name: &str| {
            authorize(&Down, "n1", &Attributes::resource(verb, "", res, "default", name))
        };
        for (verb, res, name) in [
            ("delete", "pods", "a"),
            ("update", "pods/status", "a"),
            ("get", "secrets", "s1"),
            ("get", "configmaps", "c1"),
            ("get", "persistentvolumes", "v1"),
            ("create", "serviceaccounts/token", "default"),
        ] {
            let d = r(verb, res, name);
            assert!(matches!(&d, Decision::Unavailable(m) if m.contains("no quorum")), "{verb} {res}: {d:?}");
        }
        // What needs no read is still decided.
        assert_eq!(r("get", "pods", "a"), Decision::Allow);
    }
}
