//! The volume binder (Kubernetes' PersistentVolume controller, for pre-made volumes): a
//! Pending claim is bound to the smallest Available volume that satisfies it — same storage
//! class, every access mode it asks for, at least its size, its selector, or the volume it
//! names — by writing the volume's `claimRef` first (the reservation) and then the claim's
//! `volumeName` and status. A volume whose claim is deleted is `Released` (reclaim policy
//! Retain: its data stays for an operator to look at) or deleted (Delete: the object goes; a
//! local directory's data is still kept, as Tug runs no deleter). [`choose`] is pure.

use super::decode;
use super::runtime::{Controller, Next};
use crate::store::{Event, Store, StoreError};
use serde_json::{Value, json};
use tug_api::kinds::storage::{PersistentVolume, PersistentVolumeClaim};

pub const CLAIMS: &str = "/persistentvolumeclaims/";
pub const VOLUMES: &str = "/persistentvolumes/";

fn storage(q: &std::collections::BTreeMap<String, tug_api::quantity::Quantity>) -> u128 {
    q.get("storage").map_or(0, tug_api::quantity::Quantity::value)
}

fn class(c: Option<&String>) -> &str {
    c.map_or("", String::as_str)
}

/// Whether `pv` can serve `pvc` (ignoring who holds it).
pub fn satisfies(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let want = pvc.spec.resources.as_ref().map_or(0, |r| storage(&r.requests));
    class(pv.spec.storage_class_name.as_ref()) == class(pvc.spec.storage_class_name.as_ref())
        && pvc.spec.access_modes.iter().all(|m| pv.spec.access_modes.contains(m))
        && storage(&pv.spec.capacity) >= want
        && pvc
            .spec
            .selector
            .as_ref()
            .is_none_or(|s| s.to_selector("spec.selector").is_ok_and(|sel| sel.matches(&pv.metadata.labels)))
        && pvc.spec.volume_name.as_deref().is_none_or(|n| n == pv.metadata.name)
}

/// Whether `pv` is held for `pvc` (by name and, once known, uid).
pub fn held_for(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    pv.spec.claim_ref.as_ref().is_some_and(|r| {
        r.name == pvc.metadata.name
            && r.namespace.as_deref() == pvc.metadata.namespace.as_deref()
            && r.uid.as_deref().is_none_or(|u| Some(u) == pvc.metadata.uid.as_deref())
    })
}

/// The volume for a pending claim: one already held for it, else the smallest free one that
/// satisfies it (ties by name).
pub fn choose<'a>(pvc: &PersistentVolumeClaim, pvs: &'a [PersistentVolume]) -> Option<&'a PersistentVolume> {
    choose_index(pvc, pvs).map(|i| &pvs[i])
}

/// [`choose`], as the volume's place in `pvs`.
fn choose_index(pvc: &PersistentVolumeClaim, pvs: &[PersistentVolume]) -> Option<usize> {
    if let Some(i) = pvs.iter().position(|pv| held_for(pv, pvc) && satisfies(pv, pvc)) {
        return Some(i);
    }
    pvs.iter()
        .enumerate()
        .filter(|(_, pv)| {
            pv.spec.claim_ref.is_none() && pv.metadata.deletion_timestamp.is_none() && satisfies(pv, pvc)
        })
        .min_by(|(_, a), (_, b)| {
            storage(&a.spec.capacity)
                .cmp(&storage(&b.spec.capacity))
                .then(a.metadata.name.cmp(&b.metadata.name))
        })
        .map(|(i, _)| i)
}

pub struct VolumeBinder;

fn phase(obj: &Value) -> &str {
    obj["status"]["phase"].as_str().unwrap_or("")
}

impl VolumeBinder {
    fn volumes(store: &dyn Store) -> Result<Vec<(crate::store::Stored, PersistentVolume)>, StoreError> {
        let (items, _) = store.list(VOLUMES)?;
        Ok(items.into_iter().filter_map(|s| decode::<PersistentVolume>(&s).ok().map(|pv| (s, pv))).collect())
    }

    fn set_volume_phase(
        store: &dyn Store,
        s: &crate::store::Stored,
        phase_now: &str,
    ) -> Result<(), StoreError> {
        if phase(&s.object) == phase_now {
            return Ok(());
        }
        let mut obj = s.object.clone();
        obj["status"]["phase"] = phase_now.into();
        store.update(&s.key, obj, Some(s.revision)).map(drop)
    }

    /// A volume on its own: Available when free, Released (or gone, with Delete) once the
    /// claim it was bound to no longer exists.
    fn reconcile_volume(store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(s) = store.get(key)? else { return Ok(Next::Done) };
        let pv: PersistentVolume = decode(&s)?;
        let Some(r) = &pv.spec.claim_ref else {
            Self::set_volume_phase(store, &s, "Available")?;
            return Ok(Next::Done);
        };
        let claim_key = format!("{CLAIMS}{}/{}", r.namespace.as_deref().unwrap_or("default"), r.name);
        let claim = store.get(&claim_key)?;
        let same = claim.as_ref().is_some_and(|c| {
            r.uid.as_deref().is_none_or(|u| c.object["metadata"]["uid"].as_str() == Some(u))
        });
        if same {
            return Ok(Next::Done);
        }
        if pv.spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete") {
            return match store.delete(key, Some(s.revision)) {
                Ok(_) | Err(StoreError::NotFound(_)) => Ok(Next::Done),
                Err(e) => Err(e),
            };
        }
        Self::set_volume_phase(store, &s, "Released")?;
        Ok(Next::Done)
    }

    fn reconcile_claim(store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(cs) = store.get(key)? else {
            // Deleted: its volumes are released.
            for (s, pv) in Self::volumes(store)? {
                if pv.spec.claim_ref.as_ref().is_some_and(|r| {
                    key == format!("{CLAIMS}{}/{}", r.namespace.as_deref().unwrap_or("default"), r.name)
                }) {
                    Self::reconcile_volume(store, &s.key)?;
                }
            }
            return Ok(Next::Done);
        };
        let pvc: PersistentVolumeClaim = decode(&cs)?;
        let (stored, typed): (Vec<crate::store::Stored>, Vec<PersistentVolume>) =
            Self::volumes(store)?.into_iter().unzip();
        let Some(i) = choose_index(&pvc, &typed) else {
            if phase(&cs.object) != "Pending" {
                let mut obj = cs.object.clone();
                obj["status"] = json!({"phase": "Pending"});
                store.update(key, obj, Some(cs.revision))?;
                super::event(
                    store,
                    ("PersistentVolumeClaim", "v1", &pvc.metadata),
                    "Normal",
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                    "persistentvolume-controller",
                )?;
            }
            return Ok(Next::Done);
        };
        let (pv_stored, pv) = (&stored[i], &typed[i]);
        // The volume first: whoever writes its claimRef holds it.
        if !held_for(pv, &pvc) || phase(&pv_stored.object) != "Bound" {
            let mut obj = pv_stored.object.clone();
            obj["spec"]["claimRef"] = json!({
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": pvc.metadata.namespace.as_deref().unwrap_or("default"),
                "name": pvc.metadata.name, "uid": pvc.metadata.uid,
            });
            obj["status"]["phase"] = "Bound".into();
            store.update(&pv_stored.key, obj, Some(pv_stored.revision))?;
        }
        let mut obj = cs.object.clone();
        obj["spec"]["volumeName"] = pv.metadata.name.clone().into();
        let status = json!({
            "phase": "Bound",
            "accessModes": pv.spec.access_modes,
            "capacity": pv.spec.capacity,
        });
        if obj["status"] != status || cs.object["spec"]["volumeName"] != obj["spec"]["volumeName"] {
            obj["status"] = status;
            store.update(key, obj, Some(cs.revision))?;
        }
        Ok(Next::Done)
    }
}

impl Controller for VolumeBinder {
    fn name(&self) -> &'static str {
        "persistentvolume-binder"
    }

    fn primary(&self) -> &'static str {
        CLAIMS
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![VOLUMES]
    }

    /// A volume's change concerns the volume itself and every claim still waiting.
    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        let mut keys = vec![e.key.clone()];
        if let Ok((claims, _)) = store.list(CLAIMS) {
            keys.extend(claims.into_iter().filter(|c| phase(&c.object) != "Bound").map(|c| c.key));
        }
        keys
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        if key.starts_with(VOLUMES) {
            Self::reconcile_volume(store, key)
        } else {
            Self::reconcile_claim(store, key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str, modes: &[&str], class: Option<&str>) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                     "local": {"path": "/x"}}
        }))
        .unwrap()
    }

    fn pvc(size: &str, modes: &[&str], class: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}, "storageClassName": class}
        }))
        .unwrap()
    }

    #[test]
    fn the_smallest_fitting_free_volume_is_chosen() {
        let pvs = vec![
            pv("big", "10Gi", &["ReadWriteOnce"], None),
            pv("small", "1Gi", &["ReadWriteOnce"], None),
            pv("tiny", "100Mi", &["ReadWriteOnce"], None),
            pv("ro", "2Gi", &["ReadOnlyMany"], None),
            pv("fast", "2Gi", &["ReadWriteOnce"], Some("ssd")),
        ];
        let c = pvc("500Mi", &["ReadWriteOnce"], None);
        assert_eq!(choose(&c, &pvs).unwrap().metadata.name, "small");
        assert_eq!(choose(&pvc("1Gi", &["ReadWriteOnce"], Some("ssd")), &pvs).unwrap().metadata.name, "fast");
        assert!(choose(&pvc("20Gi", &["ReadWriteOnce"], None), &pvs).is_none(), "too big for all");
        // Held for someone else: not free.
        let mut taken = pvs.clone();
        taken[1].spec.claim_ref = Some(tug_api::kinds::storage::ClaimRef {
            name: "other".into(),
            namespace: Some("default".into()),
            ..Default::default()
        });
        assert_eq!(choose(&c, &taken).unwrap().metadata.name, "big");
        // Held for this claim: that one, even if a smaller one is free.
        taken[0].spec.claim_ref = Some(tug_api::kinds::storage::ClaimRef {
            name: "data".into(),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        });
        assert_eq!(choose(&c, &taken).unwrap().metadata.name, "big");
        // A claim naming its volume gets only that one.
        let mut named = c.clone();
        named.spec.volume_name = Some("tiny".into());
        assert!(choose(&named, &pvs).is_none(), "tiny is too small");
    }
}
