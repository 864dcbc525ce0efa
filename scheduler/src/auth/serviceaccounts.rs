//! Service accounts, as Kubernetes' ServiceAccount admission and its controllers keep them:
//! every namespace has a `default` account and the `kube-root-ca.crt` ConfigMap (the cluster
//! CA); a pod runs as `spec.serviceAccountName` (`default` when unset), which must exist; and
//! unless the pod or its account sets `automountServiceAccountToken: false`, it gets the
//! projected volume `kube-api-access-…` — a token bound to the pod (refreshed by the agent),
//! `ca.crt` and `namespace` — at `/var/run/secrets/kubernetes.io/serviceaccount` in every
//! container.

use crate::store::{Store, StoreError};
use serde_json::{Value, json};
use std::sync::OnceLock;

pub const ROOT_CA: &str = "kube-root-ca.crt";
pub const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// What kubelet asks for (an hour and 7 s: the 7 s tell the server it is a kubelet's).
pub const TOKEN_SECONDS: i64 = 3607;

static CA: OnceLock<String> = OnceLock::new();

/// The cluster CA every namespace's `kube-root-ca.crt` holds (set once at start).
pub fn set_ca(pem: &str) {
    let _ = CA.set(pem.to_string());
}

fn now() -> String {
    crate::api::now()
}

fn create_missing(store: &dyn Store, key: &str, mut obj: Value) -> Result<(), StoreError> {
    if store.get(key)?.is_some() {
        return Ok(());
    }
    crate::api::objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now());
    match store.create(key, obj) {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes a namespace's `default` service account and `kube-root-ca.crt`, if missing.
pub fn ensure_defaults(store: &dyn Store, ns: &str) -> Result<(), StoreError> {
    create_missing(
        store,
        &format!("/serviceaccounts/{ns}/default"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}),
    )?;
    if let Some(ca) = CA.get() {
        create_missing(
            store,
            &format!("/configmaps/{ns}/{ROOT_CA}"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CA, "namespace": ns,
                "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": {"ca.crt": ca}}),
        )?;
    }
    Ok(())
}

/// The projected volume of a pod's service account token.
pub fn token_volume(name: &str) -> Value {
    json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
        {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
}

/// ServiceAccount admission for a new pod (JSON): the account defaulted and checked, the
/// token volume and mounts added. The error is Kubernetes' wording.
pub fn admit_pod(store: &dyn Store, pod: &mut Value) -> Result<(), String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let name = match pod["spec"]["serviceAccountName"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => {
            pod["spec"]["serviceAccountName"] = "default".into();
            "default".into()
        }
    };
    let mut account = store.get(&format!("/serviceaccounts/{ns}/{name}")).map_err(|e| e.to_string())?;
    if account.is_none() && name == "default" {
        // A namespace from before service accounts, or one its defaults are being made for.
        ensure_defaults(store, &ns).map_err(|e| e.to_string())?;
        account = store.get(&format!("/serviceaccounts/{ns}/{name}")).map_err(|e| e.to_string())?;
    }
    let Some(account) = account else {
        return Err(format!(
            "error looking up service account {ns}/{name}: serviceaccount {name:?} not found"
        ));
    };
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| account.object["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let mounted = |c: &Value| {
        c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"].as_str() == Some(MOUNT))
    };
    let all_mounted = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten())
        .all(mounted);
    if all_mounted {
        return Ok(());
    }
    let volume = format!("kube-api-access-{}", crate::controllers::random_suffix(5));
    let vols = &mut pod["spec"]["volumes"];
    if !vols.is_array() {
        *vols = json!([]);
    }
    if let Some(v) = vols.as_array_mut() {
        v.push(token_volume(&volume));
    }
    for f in ["initContainers", "containers"] {
        // `get_mut`, not indexing: an absent list must stay absent (not become null).
        for c in pod["spec"].get_mut(f).and_then(Value::as_array_mut).into_iter().flatten() {
            if mounted(c) {
                continue;
            }
            let mounts = &mut c["volumeMounts"];
            if !mounts.is_array() {
                *mounts = json!([]);
            }
            if let Some(m) = mounts.as_array_mut() {
                m.push(json!({"name": volume, "mountPath": MOUNT, "readOnly": true}));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;

    #[test]
    fn pods_get_the_default_account_and_its_token_volume() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        set_ca("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n");
        let mut pod = json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"containers": [{"name": "c", "image": "x"}], "initContainers": [{"name": "i", "image": "x"}]}});
        admit_pod(&store, &mut pod).unwrap();
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert!(store.get("/serviceaccounts/a/default").unwrap().is_some(), "made on demand");
        assert!(store.get("/configmaps/a/kube-root-ca.crt").unwrap().is_some());
        let vol = pod["spec"]["volumes"][0]["name"].as_str().unwrap().to_string();
        assert!(vol.starts_with("kube-api-access-"));
        for c in ["containers", "initContainers"] {
            assert_eq!(
                pod["spec"][c][0]["volumeMounts"][0],
                json!({"name": vol, "mountPath": MOUNT, "readOnly": true})
            );
        }
        // Admitted twice (an update), the volume is not added again.
        admit_pod(&store, &mut pod).unwrap();
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
        // An account that does not exist is refused; automount false adds nothing.
        let mut other =
            json!({"metadata": {"namespace": "a"}, "spec": {"serviceAccountName": "bot", "containers": []}});
        assert_eq!(
            admit_pod(&store, &mut other).unwrap_err(),
            "error looking up service account a/bot: serviceaccount \"bot\" not found"
        );
        let mut quiet = json!({"metadata": {"namespace": "a"}, "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c"}]}});
        admit_pod(&store, &mut quiet).unwrap();
        assert!(quiet["spec"]["volumes"].is_null());
        let mut plain = json!({"metadata": {"namespace": "a"}, "spec": {"containers": [{"name": "c"}]}});
        admit_pod(&store, &mut plain).unwrap();
        assert!(plain["spec"].get("initContainers").is_none(), "no null list added: {plain}");
    }
}
