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

// Revisions are checked relative to the store's revision at the start (`r0`): an etcd
// cluster starts at 1, and its revision counts every key, not only Tug's.
fn crud_and_revisions(s: &impl Store) {
    let r0 = s.revision().unwrap();
    let a = s.create("/configmaps/default/a", obj("a", 1)).unwrap();
    assert_eq!(a.revision, r0 + 1);
    assert_eq!(a.object["metadata"]["resourceVersion"], (r0 + 1).to_string());
    assert_eq!(
        s.create("/configmaps/default/a", obj("a", 2)).unwrap_err(),
        StoreError::AlreadyExists("/configmaps/default/a".into())
    );
    let got = s.get("/configmaps/default/a").unwrap().unwrap();
    assert_eq!(got.object["data"]["v"], "1");
    let b = s.update("/configmaps/default/a", obj("a", 2), None).unwrap();
    assert_eq!(b.revision, r0 + 2, "failed writes do not use up revisions");
    let d = s.delete("/configmaps/default/a", None).unwrap();
    assert_eq!(d.object["data"]["v"], "2");
    assert!(s.get("/configmaps/default/a").unwrap().is_none());
    assert!(matches!(s.delete("/configmaps/default/a", None), Err(StoreError::NotFound(_))));
    assert!(matches!(s.update("/configmaps/default/zz", obj("zz", 1), None), Err(StoreError::NotFound(_))));
    assert_eq!(s.revision().unwrap(), r0 + 3);
}

fn optimistic_concurrency(s: &impl Store) {
    let a = s.create("/configmaps/default/a", obj("a", 1)).unwrap();
    let b = s.update("/configmaps/default/a", obj("a", 2), Some(a.revision)).unwrap();
    let err = s.update("/configmaps/default/a", obj("a", 3), Some(a.revision)).unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            key: "/configmaps/default/a".into(),
            expected: a.revision,
            current: b.revision
        }
    );
    assert!(matches!(s.delete("/configmaps/default/a", Some(a.revision)), Err(StoreError::Conflict { .. })));
}

fn list_by_prefix(s: &impl Store) {
    let r0 = s.revision().unwrap();
    for (ns, n) in [("default", "a"), ("default", "b"), ("other", "c")] {
        s.create(&format!("/configmaps/{ns}/{n}"), obj(n, 1)).unwrap();
    }
    s.create("apps/deployments/default/d", obj("d", 1)).unwrap();
    let (all, rev) = s.list("/configmaps/").unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(rev, r0 + 4);
    let (def, _) = s.list("/configmaps/default/").unwrap();
    let names: Vec<&str> = def.iter().map(|o| o.object["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    // A scan: the same objects as stored JSON, in key order, from a key on, stoppable.
    let mut seen = Vec::new();
    let rev = s
        .scan("/configmaps/", None, &mut |k, bytes| {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            seen.push((k.to_string(), v["metadata"]["resourceVersion"].is_string()));
            true
        })
        .unwrap();
    assert_eq!(rev, r0 + 4);
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["/configmaps/default/a", "/configmaps/default/b", "/configmaps/other/c"]);
    assert!(seen.iter().all(|(_, stamped)| *stamped));
    let mut after = Vec::new();
    s.scan("/configmaps/", Some("/configmaps/default/a"), &mut |k, _| {
        after.push(k.to_string());
        after.is_empty()
    })
    .unwrap();
    assert_eq!(after, ["/configmaps/default/b"]);
}

async fn watch_from_a_revision(s: &impl Store) {
    let r0 = s.revision().unwrap();
    s.create("/configmaps/default/a", obj("a", 1)).unwrap();
    s.create("/configmaps/other/x", obj("x", 1)).unwrap();
    let mut w = s.watch("/configmaps/default/", r0).unwrap();
    s.update("/configmaps/default/a", obj("a", 2), None).unwrap();
    s.delete("/configmaps/default/a", None).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = w.next().await.unwrap().unwrap();
        seen.push((e.revision, e.type_));
    }
    assert_eq!(
        seen,
        [(r0 + 1, EventType::Added), (r0 + 3, EventType::Modified), (r0 + 4, EventType::Deleted)]
    );
    let mut from2 = s.watch("/configmaps/", r0 + 2).unwrap();
    assert_eq!(
        from2.next().await.unwrap().unwrap().revision,
        r0 + 3,
        "a watch starts after the given revision"
    );
}

async fn compaction(s: &impl Store) {
    let r0 = s.revision().unwrap();
    for i in 0..5 {
        s.create(&format!("/configmaps/default/c{i}"), obj("c", i)).unwrap();
    }
    s.compact(r0 + 3).unwrap();
    match s.watch("/configmaps/", r0 + 1) {
        Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, r0 + 1),
        Ok(mut w) => assert!(
            matches!(w.next().await, Some(Err(StoreError::Compacted { .. }))),
            "a compacted revision is refused"
        ),
        Err(e) => panic!("{e}"),
    }
    let mut w = s.watch("/configmaps/", r0 + 3).unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, r0 + 4);
}
