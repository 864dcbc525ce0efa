//! The behaviour every backend must have, written once against the trait. Each backend's
//! tests call [`run_all`] with a factory for fresh, empty stores.

use super::{EventType, Store, StoreError};
use serde_json::json;

fn obj(name: &str, v: i64) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"v": v.to_string()}})
}

/// Every conformance check, each on a fresh store.
pub async fn run_all<S: Store>(fresh: impl Fn() -> S) {
    crud_and_revisions(&fresh());
    optimistic_concurrency(&fresh());
    list_by_prefix(&fresh());
    watch_from_a_revision(&fresh()).await;
    compaction(&fresh()).await;
}

fn crud_and_revisions(s: &impl Store) {
    assert_eq!(s.revision().unwrap(), 0);
    let a = s.create("/configmaps/default/a", obj("a", 1)).unwrap();
    assert_eq!(a.revision, 1);
    assert_eq!(a.object["metadata"]["resourceVersion"], "1");
    assert_eq!(
        s.create("/configmaps/default/a", obj("a", 2)).unwrap_err(),
        StoreError::AlreadyExists("/configmaps/default/a".into())
    );
    let got = s.get("/configmaps/default/a").unwrap().unwrap();
    assert_eq!(got.object["data"]["v"], "1");
    let b = s.update("/configmaps/default/a", obj("a", 2), None).unwrap();
    assert_eq!(b.revision, 2, "failed writes do not use up revisions");
    let d = s.delete("/configmaps/default/a", None).unwrap();
    assert_eq!(d.object["data"]["v"], "2");
    assert!(s.get("/configmaps/default/a").unwrap().is_none());
    assert!(matches!(s.delete("/configmaps/default/a", None), Err(StoreError::NotFound(_))));
    assert!(matches!(s.update("/configmaps/default/zz", obj("zz", 1), None), Err(StoreError::NotFound(_))));
    assert_eq!(s.revision().unwrap(), 3);
}

fn optimistic_concurrency(s: &impl Store) {
    let a = s.create("/configmaps/default/a", obj("a", 1)).unwrap();
    s.update("/configmaps/default/a", obj("a", 2), Some(a.revision)).unwrap();
    let err = s.update("/configmaps/default/a", obj("a", 3), Some(a.revision)).unwrap_err();
    assert_eq!(err, StoreError::Conflict { key: "/configmaps/default/a".into(), expected: 1, current: 2 });
    assert!(matches!(s.delete("/configmaps/default/a", Some(1)), Err(StoreError::Conflict { .. })));
}

fn list_by_prefix(s: &impl Store) {
    for (ns, n) in [("default", "a"), ("default", "b"), ("other", "c")] {
        s.create(&format!("/configmaps/{ns}/{n}"), obj(n, 1)).unwrap();
    }
    s.create("apps/deployments/default/d", obj("d", 1)).unwrap();
    let (all, rev) = s.list("/configmaps/").unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(rev, 4);
    let (def, _) = s.list("/configmaps/default/").unwrap();
    let names: Vec<&str> = def.iter().map(|o| o.object["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
}

async fn watch_from_a_revision(s: &impl Store) {
    s.create("/configmaps/default/a", obj("a", 1)).unwrap();
    s.create("/configmaps/other/x", obj("x", 1)).unwrap();
    let mut w = s.watch("/configmaps/default/", 0).unwrap();
    s.update("/configmaps/default/a", obj("a", 2), None).unwrap();
    s.delete("/configmaps/default/a", None).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = w.next().await.unwrap().unwrap();
        seen.push((e.revision, e.type_));
    }
    assert_eq!(seen, [(1, EventType::Added), (3, EventType::Modified), (4, EventType::Deleted)]);
    let mut from2 = s.watch("/configmaps/", 2).unwrap();
    assert_eq!(from2.next().await.unwrap().unwrap().revision, 3, "a watch starts after the given revision");
}

async fn compaction(s: &impl Store) {
    for i in 0..5 {
        s.create(&format!("/configmaps/default/c{i}"), obj("c", i)).unwrap();
    }
    s.compact(3).unwrap();
    assert_eq!(s.watch("/configmaps/", 1).err().unwrap(), StoreError::Compacted { requested: 1, oldest: 3 });
    let mut w = s.watch("/configmaps/", 3).unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, 4);
}
