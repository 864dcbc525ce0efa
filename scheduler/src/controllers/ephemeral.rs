//! Generic ephemeral volumes, as Kubernetes' ephemeral volume controller: a pod with an
//! `ephemeral` volume gets the claim `<pod>-<volume>` made from its `volumeClaimTemplate`,
//! owned by the pod (so the garbage collector deletes it with the pod). The binder binds it
//! like any claim; the scheduler waits for it and refuses a same-named claim the pod does
//! not own.

use super::controller_ref;
use super::runtime::{Controller, Next};
use crate::store::{Event, Store, StoreError};
use serde_json::json;
use tug_api::kinds::pod::Pod;

const PODS: &str = "/pods/";

/// The claims a pod still needs made: `(name, object)`.
pub fn wanted(pod: &Pod) -> Vec<(String, serde_json::Value)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    pod.spec
        .volumes
        .iter()
        .filter_map(|v| {
            let t = v.ephemeral.as_ref()?.volume_claim_template.as_ref()?;
            let name = format!("{}-{}", pod.metadata.name, v.name);
            let owner = controller_ref("v1", "Pod", &pod.metadata);
            Some((
                name.clone(),
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": pod.metadata.namespace, "labels": t.metadata.labels,
                        "annotations": t.metadata.annotations, "ownerReferences": [owner]},
                    "spec": t.spec}),
            ))
        })
        .collect()
}

pub struct Ephemeral;

impl Controller for Ephemeral {
    fn name(&self) -> &'static str {
        "ephemeral-volume"
    }

    fn primary(&self) -> &'static str {
        PODS
    }

    /// Only pods with an ephemeral volume are looked at (pods change all the time).
    fn expands_primary(&self) -> bool {
        true
    }

    fn keys_for(&self, _store: &dyn Store, e: &Event) -> Vec<String> {
        let has = e.object["spec"]["volumes"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|v| v["ephemeral"].is_object()));
        if has && e.type_ != crate::store::EventType::Deleted { vec![e.key.clone()] } else { Vec::new() }
    }

    /// The pods with an ephemeral volume, from the pods decoded in the store's copy: every
    /// pod read at each resync (50,000 of them every 30 s) kept a core busy.
    fn list(&self, store: &dyn Store) -> Result<(Vec<String>, u64), StoreError> {
        let (pods, revision) = crate::store::cache::list_typed::<Pod>(store, PODS)?;
        let with = |p: &Pod| p.spec.volumes.iter().any(|v| v.ephemeral.is_some());
        Ok((pods.iter().filter(|p| with(&p.value)).map(|p| p.key().to_string()).collect(), revision))
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(pod) = crate::store::cache::get_typed::<Pod>(store, key)? else { return Ok(Next::Done) };
        let pod = &*pod.value;
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        for (name, claim) in wanted(pod) {
            if store.get(&format!("/persistentvolumeclaims/{ns}/{name}"))?.is_some() {
                continue;
            }
            match super::create_generated(store, "/persistentvolumeclaims", claim) {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(StoreError::Backend(why)) => {
                    // A quota or limit refused it: the pod says so and stays pending.
                    let involved = ("Pod", "v1", &pod.metadata);
                    super::event(
                        store,
                        involved,
                        "Warning",
                        "FailedCreate",
                        &why,
                        "ephemeral-volume-controller",
                    )?;
                    return Ok(Next::After(std::time::Duration::from_secs(10)));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gets_one_claim_per_ephemeral_volume_owned_by_it() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": [
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}},
                {"name": "tmp", "emptyDir": {}}]}
        }))
        .unwrap();
        let w = wanted(&pod);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "p-scratch");
        assert_eq!(w[0].1["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(w[0].1["metadata"]["labels"]["a"], "b");
        assert_eq!(pod.spec.volumes[0].claim("p"), Some(("p-scratch".to_string(), false)));
    }

    /// A list (each resync) queues the pods with an ephemeral volume, not every pod.
    #[test]
    fn a_list_queues_only_pods_with_an_ephemeral_volume() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 64).unwrap();
        let pod = |name: &str, volumes: serde_json::Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"},
                   "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes}})
        };
        let template = json!({"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}});
        store.create("/pods/ns/plain", pod("plain", json!([{"name": "t", "emptyDir": {}}]))).unwrap();
        store.create("/pods/ns/with", pod("with", json!([{"name": "s", "ephemeral": template}]))).unwrap();
        store.create("/pods/ns/none", pod("none", json!([]))).unwrap();
        let (keys, revision) = Ephemeral.list(&store).unwrap();
        assert_eq!(keys, ["/pods/ns/with"]);
        assert_eq!(revision, store.revision().unwrap());
    }
}
