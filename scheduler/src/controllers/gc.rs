//! Garbage collection by `ownerReferences`, as Kubernetes' garbage collector does it.
//!
//! - **Background** (the default): the owner is deleted at once; each dependent whose owners
//!   are all gone is then deleted here, and its own dependents after it.
//! - **Foreground**: the API server only marks the owner (`deletionTimestamp`, finalizer
//!   `foregroundDeletion`); here its dependents are deleted first (those that own things in
//!   turn, in foreground too) and the owner goes when none is left.
//! - **Orphan**: the owner is marked with the finalizer `orphan`; here the dependents lose
//!   their reference to it, then it is deleted.
//!
//! [`decide`] is the pure part: given an object and what exists, what to do with it.

use super::runtime::{Controller, Next};
use crate::store::{Event, EventType, Store, StoreError, Stored};
use serde_json::Value;
use std::time::Duration;
use tug_api::meta::ObjectMeta;
use tug_api::object::{KINDS, KindInfo};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// What to do with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Every owner is gone: delete it.
    Delete,
    /// Foreground deletion: these dependents first (delete, or mark if they own things).
    DeleteDependents(Vec<String>),
    /// Orphaning: drop the references of these dependents.
    Orphan(Vec<String>),
    /// Nothing holds it any more: remove `finalizer` (then it is deleted if none remain).
    Finalize(&'static str),
}

/// The pure decision. `owners_alive[i]` tells whether `meta.ownerReferences[i]` still
/// exists (same uid); `dependents` are the keys of objects that name this one as an owner.
pub fn decide(meta: &ObjectMeta, owners_alive: &[bool], dependents: &[String]) -> Decision {
    if meta.deletion_timestamp.is_some() {
        if meta.finalizers.iter().any(|f| f == ORPHAN) {
            return if dependents.is_empty() {
                Decision::Finalize(ORPHAN)
            } else {
                Decision::Orphan(dependents.to_vec())
            };
        }
        if meta.finalizers.iter().any(|f| f == FOREGROUND) {
            return if dependents.is_empty() {
                Decision::Finalize(FOREGROUND)
            } else {
                Decision::DeleteDependents(dependents.to_vec())
            };
        }
        return Decision::Keep;
    }
    if !meta.owner_references.is_empty() && owners_alive.iter().all(|a| !a) {
        return Decision::Delete;
    }
    Decision::Keep
}

/// Kinds that may own objects: a dependent of one is deleted in foreground when its owner
/// is, so that its own dependents go first.
const OWNER_KINDS: [&str; 8] =
    ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob", "Rollout", "AnalysisRun"];

/// Kinds scanned for dependents.
fn dependent_kinds() -> impl Iterator<Item = &'static KindInfo> {
    KINDS.iter().filter(|k| k.namespaced && k.kind != "Event" && k.kind != "Lease")
}

/// An owner's key: namespaced kinds in the dependent's namespace.
fn store_key(info: &KindInfo, ns: Option<&str>, name: &str) -> String {
    crate::api::path::key(info, info.namespaced.then(|| ns.unwrap_or("default")), name)
}

/// Keys of the objects in `ns` that name `uid` as an owner.
fn dependents(store: &dyn Store, ns: &str, uid: &str) -> Result<Vec<Stored>, StoreError> {
    dependents_of_kinds(store, ns, uid, dependent_kinds())
}

/// [`dependents`] among the objects of `kinds`.
fn dependents_of_kinds<'a>(
    store: &dyn Store,
    ns: &str,
    uid: &str,
    kinds: impl Iterator<Item = &'a KindInfo>,
) -> Result<Vec<Stored>, StoreError> {
    let mut out = Vec::new();
    for k in kinds {
        out.extend(crate::store::cache::owned_by(store, &crate::api::path::prefix(k, Some(ns)), uid)?);
    }
    Ok(out)
}

fn meta_of(v: &Value) -> Option<ObjectMeta> {
    tug_api::from_value_ref(&v["metadata"]).ok()
}

/// An object's metadata alone (the rest of it skipped, not parsed).
#[derive(serde::Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: ObjectMeta,
}

/// An object's uid alone (read of an owner, whatever else its metadata holds).
#[derive(serde::Deserialize)]
struct UidOnly {
    #[serde(default)]
    metadata: UidMeta,
}

#[derive(serde::Deserialize, Default)]
struct UidMeta {
    #[serde(default)]
    uid: String,
}

/// The uid of the object at `key` (None: there is none), read without parsing the rest.
fn uid_of(store: &dyn Store, key: &str) -> Result<Option<String>, StoreError> {
    let read = crate::store::cache::read_as::<UidOnly>(store, key)?;
    Ok(read.map(|(_, u)| u.map(|u| u.metadata.uid).unwrap_or_default()))
}

/// The revision and metadata of the object at `key`, read from the store's copy without
/// parsing the rest; None when there is no such object or its metadata does not decode (no
/// object is stored so; nothing could be decided for one).
fn metadata(store: &dyn Store, key: &str) -> Result<Option<(u64, ObjectMeta)>, StoreError> {
    let read = crate::store::cache::read_as::<MetadataOnly>(store, key)?;
    Ok(read.and_then(|(r, m)| Some((r, m.ok()?.metadata))))
}

/// Marks an object deleted in foreground, or with `finalizer`; an object already marked is
/// left as it is.
pub fn mark(obj: &mut Value, finalizer: &str, now: &str) {
    if obj["metadata"]["deletionTimestamp"].is_null() {
        obj["metadata"]["deletionTimestamp"] = now.into();
    }
    let fs = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if !fs.iter().any(|f| f == finalizer) {
        let mut fs = fs;
        fs.push(finalizer.into());
        obj["metadata"]["finalizers"] = Value::Array(fs);
    }
}

/// The collector.
#[derive(Default)]
pub struct Collector {
    /// Each object's owner references as last queued (a hash): an update that leaves them
    /// alone — a pod's status, a node's lease — is not looked at again.
    owners: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Collector {
    /// Whether an object's owner references differ from those last seen (and notes them).
    fn owners_changed(&self, key: &str, refs: &Value) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        refs.to_string().hash(&mut h);
        let h = h.finish();
        let mut seen = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(key.to_string(), h) != Some(h)
    }

    fn forget(&self, key: &str) {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

impl Controller for Collector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    /// Every object; only those with owners or a deletion mark are looked at.
    fn primary(&self) -> &'static str {
        ""
    }

    fn expands_primary(&self) -> bool {
        true
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        let refs = &e.object["metadata"]["ownerReferences"];
        let marked = !e.object["metadata"]["deletionTimestamp"].is_null();
        match e.type_ {
            EventType::Deleted => self.forget(&e.key),
            // Nothing to collect: no owners and no deletion mark (most objects, read without
            // decoding), or an update with the same owners as before.
            _ if !marked && (refs.is_null() || !self.owners_changed(&e.key, refs)) => return Vec::new(),
            _ => {}
        }
        let Some(meta) = meta_of(&e.object) else { return Vec::new() };
        let mut keys = Vec::new();
        let ns = meta.namespace.clone().unwrap_or_default();
        match e.type_ {
            EventType::Deleted => {
                // Its dependents may be orphans now; a foreground owner may be done.
                let kind = e.object["kind"].as_str().unwrap_or_default();
                if let Some(uid) = meta.uid.as_deref() {
                    if OWNER_KINDS.contains(&kind) {
                        keys.extend(dependents(store, &ns, uid).into_iter().flatten().map(|s| s.key));
                    } else if kind == "Pod" {
                        // A pod owns only claims (a StatefulSet's scaled away, ephemeral ones):
                        // only they are looked at, as pods are deleted all the time.
                        let claims = KINDS.iter().filter(|k| k.kind == "PersistentVolumeClaim");
                        keys.extend(
                            dependents_of_kinds(store, &ns, uid, claims).into_iter().flatten().map(|s| s.key),
                        );
                    }
                }
                for o in &meta.owner_references {
                    if let Some(info) = tug_api::object::lookup_exact(&o.kind, &o.api_version) {
                        keys.push(store_key(info, Some(&ns), &o.name));
                    }
                }
            }
            _ => keys.push(e.key.clone()),
        }
        keys
    }

    /// Every object in the store, queued again: ten times as seldom as the others (owner
    /// changes and deletions are events, so this only catches what a cut-off watch missed).
    fn resync(&self, period: Duration) -> Duration {
        period * 10
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        // Only the metadata is read (of the object and of its owners), not the whole object
        // parsed: most objects looked at are pods, whose owners are there.
        let Some((revision, meta)) = metadata(store, key)? else { return Ok(Next::Done) };
        if meta.owner_references.is_empty() && meta.deletion_timestamp.is_none() {
            return Ok(Next::Done);
        }
        let ns = meta.namespace.clone();
        let mut alive = Vec::new();
        for o in &meta.owner_references {
            let found = match tug_api::object::lookup_exact(&o.kind, &o.api_version) {
                Some(info) => uid_of(store, &store_key(info, ns.as_deref(), &o.name))?,
                // A kind this server does not serve cannot be checked: assume it lives.
                None => {
                    alive.push(true);
                    continue;
                }
            };
            alive.push(found.is_some_and(|uid| uid == o.uid));
        }
        // Dependents matter only to a deletion in foreground or orphaning ones: a pod in its
        // grace period looked for them among every object of its namespace, once per pod.
        let waits = meta.finalizers.iter().any(|f| f == FOREGROUND || f == ORPHAN);
        let deps = match (&meta.uid, meta.deletion_timestamp.is_some() && waits) {
            (Some(uid), true) => dependents(store, ns.as_deref().unwrap_or("default"), uid)?,
            _ => Vec::new(),
        };
        let dep_keys: Vec<String> = deps.iter().map(|d| d.key.clone()).collect();
        let now = crate::api::now();
        match decide(&meta, &alive, &dep_keys) {
            Decision::Keep => Ok(Next::Done),
            Decision::Delete => {
                // Pods get their grace period; an object re-created meanwhile is not this one.
                let pre = crate::deletion::Preconditions { uid: meta.uid.clone(), resource_version: None };
                crate::deletion::delete_if_there(store, key, None, &pre)?;
                Ok(Next::Done)
            }
            Decision::DeleteDependents(_) => {
                for d in deps {
                    let kind = d.object["kind"].as_str().unwrap_or_default();
                    if OWNER_KINDS.contains(&kind) {
                        let mut obj = d.object.clone();
                        mark(&mut obj, FOREGROUND, &now);
                        if obj != d.object {
                            store.update(&d.key, obj, Some(d.revision))?;
                        }
                    } else {
                        crate::deletion::delete_quietly(store, &d.key)?;
                    }
                }
                // Dependents' deletions bring this back; a slow one is looked at again.
                Ok(Next::After(Duration::from_secs(2)))
            }
            Decision::Orphan(_) => {
                let uid = meta.uid.clone().unwrap_or_default();
                for d in deps {
                    let mut obj = d.object.clone();
                    if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                        if refs.is_empty() {
                            if let Some(m) = obj["metadata"].as_object_mut() {
                                m.remove("ownerReferences");
                            }
                        }
                    }
                    store.update(&d.key, obj, Some(d.revision))?;
                }
                Ok(Next::After(Duration::from_millis(10)))
            }
            Decision::Finalize(f) => {
                let Some(s) = store.get(key)? else { return Ok(Next::Done) };
                if s.revision != revision {
                    // Changed since its metadata was read: decided again.
                    return Err(StoreError::Conflict {
                        key: key.to_string(),
                        expected: revision,
                        current: s.revision,
                    });
                }
                let mut obj = s.object.clone();
                let mut left = meta.finalizers.clone();
                left.retain(|x| x != f);
                if left.is_empty() {
                    match store.delete(key, Some(s.revision)) {
                        Ok(_) | Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                } else {
                    obj["metadata"]["finalizers"] = serde_json::to_value(left).unwrap_or(Value::Null);
                    store.update(key, obj, Some(s.revision))?;
                }
                Ok(Next::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tug_api::meta::OwnerReference;

    fn meta(owners: usize, deleting: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: "x".into(),
            uid: Some("u".into()),
            owner_references: (0..owners)
                .map(|i| OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("o{i}"),
                    uid: format!("uo{i}"),
                    controller: Some(i == 0),
                    block_owner_deletion: None,
                })
                .collect(),
            deletion_timestamp: deleting.map(|_| "t".into()),
            finalizers: deleting.into_iter().map(str::to_string).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&meta(0, None), &[], &[]), Decision::Keep);
        assert_eq!(decide(&meta(1, None), &[true], &[]), Decision::Keep);
        assert_eq!(decide(&meta(1, None), &[false], &[]), Decision::Delete);
        // One owner of two left: kept.
        assert_eq!(decide(&meta(2, None), &[false, true], &[]), Decision::Keep);
        let deps = vec!["/pods/default/a".to_string()];
        assert_eq!(decide(&meta(0, Some(FOREGROUND)), &[], &deps), Decision::DeleteDependents(deps.clone()));
        assert_eq!(decide(&meta(0, Some(FOREGROUND)), &[], &[]), Decision::Finalize(FOREGROUND));
        assert_eq!(decide(&meta(0, Some(ORPHAN)), &[], &deps), Decision::Orphan(deps.clone()));
        assert_eq!(decide(&meta(0, Some(ORPHAN)), &[], &[]), Decision::Finalize(ORPHAN));
    }

    /// A store that counts its lists.
    struct Lists(crate::store::redb_store::RedbStore, std::sync::atomic::AtomicUsize);
    impl Store for Lists {
        fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
            self.0.get(key)
        }
        fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64), StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.list(prefix)
        }
        fn create(&self, key: &str, object: Value) -> Result<Stored, StoreError> {
            self.0.create(key, object)
        }
        fn update(&self, key: &str, object: Value, expected: Option<u64>) -> Result<Stored, StoreError> {
            self.0.update(key, object, expected)
        }
        fn delete(&self, key: &str, expected: Option<u64>) -> Result<Stored, StoreError> {
            self.0.delete(key, expected)
        }
        fn watch(&self, prefix: &str, after: u64) -> Result<crate::store::Watch, StoreError> {
            self.0.watch(prefix, after)
        }
        fn watch_node(
            &self,
            prefix: &str,
            after: u64,
            node: &str,
        ) -> Result<crate::store::Watch, StoreError> {
            self.0.watch_node(prefix, after, node)
        }
        fn compact(&self, revision: u64) -> Result<(), StoreError> {
            self.0.compact(revision)
        }
        fn revision(&self) -> Result<u64, StoreError> {
            self.0.revision()
        }
    }

    /// A pod in its grace period (deleted without a finalizer) is reconciled without a look
    /// for its dependents — that read every object of the namespace, once per pod, so a node
    /// lost with its 10 pods per node across 1,000 nodes read 10,000 pods 10,000 times — while
    /// an owner deleted in foreground still finds and deletes its own.
    #[test]
    fn only_a_deletion_that_waits_for_dependents_looks_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Lists(
            crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 64).unwrap(),
            std::sync::atomic::AtomicUsize::new(0),
        );
        let lists = || store.1.load(std::sync::atomic::Ordering::Relaxed);
        let owner =
            |uid: &str| json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid}]);
        store
            .create(
                "/replicasets/default/rs",
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                       "metadata": {"name": "rs", "namespace": "default", "uid": "u-rs",
                                    "deletionTimestamp": "2026-12-07T00:00:00Z", "finalizers": [FOREGROUND]}}),
            )
            .unwrap();
        for name in ["p1", "p2"] {
            store
                .create(
                    &format!("/pods/default/{name}"),
                    json!({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                                        "ownerReferences": owner("u-rs")},
                           "spec": {"containers": [{"name": "c", "image": "i"}]}}),
                )
                .unwrap();
        }
        let mut grace = store.get("/pods/default/p1").unwrap().unwrap().object;
        grace["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z".into();
        store.update("/pods/default/p1", grace, None).unwrap();
        let gc = Collector::default();
        assert!(matches!(gc.reconcile(&store, "/pods/default/p1"), Ok(Next::Done)));
        assert_eq!(lists(), 0, "a pod in its grace period looked for dependents");
        // The owner in foreground: its pods are deleted first.
        assert!(matches!(gc.reconcile(&store, "/replicasets/default/rs"), Ok(Next::After(_))));
        assert!(lists() > 0);
        for name in ["p1", "p2"] {
            let gone = store.get(&format!("/pods/default/{name}")).unwrap();
            let marked = gone.is_none_or(|p| !p.object["metadata"]["deletionTimestamp"].is_null());
            assert!(marked, "{name} was not deleted");
        }
    }
}
