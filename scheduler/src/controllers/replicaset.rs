//! ReplicaSets: exactly `replicas` active pods matching the selector.
//!
//! [`plan`] is pure: it adopts matching orphans, releases owned pods that no longer match,
//! creates what is missing and deletes the least valuable surplus (unscheduled before
//! scheduled, pending before running, not ready before ready, recently ready before long
//! ready, more restarts first, newest first — Kubernetes' ranking), and computes the status
//! (`availableReplicas` honours `minReadySeconds`).

use super::runtime::{Controller, Next};
use super::{controller_of, controller_ref, decode, pod_active, pod_available, ready_since};
use crate::store::{Event, Store, StoreError};
use serde_json::Value;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::time::Duration;
use tug_api::kinds::apps::{ReplicaSet, ReplicaSetStatus};
use tug_api::kinds::pod::Pod;

pub const PREFIX: &str = "apps/replicasets/";
pub const PODS: &str = "/pods/";
/// At most this many pods created per reconcile (the rest next time round).
const BURST: usize = 500;

/// What one reconcile of a ReplicaSet does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create from the template.
    pub create: usize,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Orphans to take (set our controller reference).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match: drop our reference.
    pub release: Vec<String>,
    pub status: ReplicaSetStatus,
    pub next: Next,
}

/// The pure decision. `pods` are the pods of the ReplicaSet's namespace.
pub fn plan<P: Borrow<Pod>>(rs: &ReplicaSet, pods: &[P], now: u64) -> Plan {
    let mut out = Plan::default();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let Some((mine, adopt, release)) = claim_pods(&rs.metadata, &rs.spec.selector, pods) else {
        return out;
    };
    (out.adopt, out.release) = (adopt, release);
    let mut active: Vec<&Pod> = mine.into_iter().filter(|p| pod_active(p)).collect();
    let want = usize::try_from(rs.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    if active.len() < want && !deleting {
        out.create = (want - active.len()).min(BURST);
    } else if active.len() > want {
        active.sort_by(|a, b| rank(a, b));
        out.delete = active[..active.len() - want].iter().map(|p| p.metadata.name.clone()).collect();
    }
    out.status = status(rs, &active_after(&active, &out.delete), now);
    out.next = next_available(rs, &active, now);
    out
}

fn active_after<'a>(active: &[&'a Pod], deleted: &[String]) -> Vec<&'a Pod> {
    active.iter().copied().filter(|p| !deleted.contains(&p.metadata.name)).collect()
}

fn min_ready(rs: &ReplicaSet) -> u64 {
    u64::try_from(rs.spec.min_ready_seconds.unwrap_or(0).max(0)).unwrap_or(0)
}

fn status(rs: &ReplicaSet, active: &[&Pod], now: u64) -> ReplicaSetStatus {
    let template = &rs.spec.template.metadata.labels;
    let count =
        |f: &dyn Fn(&Pod) -> bool| i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            template.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| ready_since(p).is_some())),
        available_replicas: Some(count(&|p| pod_available(p, min_ready(rs), now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    }
}

/// When a ready pod will have been ready for `minReadySeconds`.
fn next_available(rs: &ReplicaSet, active: &[&Pod], now: u64) -> Next {
    let m = min_ready(rs);
    active
        .iter()
        .filter_map(|p| ready_since(p))
        .filter(|t| t + m > now)
        .map(|t| Next::After(Duration::from_secs(t + m - now)))
        .fold(Next::Done, Next::min)
}

/// Kubernetes' `ActivePods` order: the pod to delete first sorts first.
pub fn rank(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let restarts = |p: &Pod| -> i64 {
        p.status.iter().flat_map(|s| s.container_statuses.iter()).map(|c| i64::from(c.restart_count)).sum()
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_deref().and_then(super::parse_time).unwrap_or(0);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase(a).cmp(&phase(b)))
        .then(ready_since(a).is_some().cmp(&ready_since(b).is_some()))
        // Both ready: the more recently ready goes first.
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
        .then(b.metadata.name.cmp(&a.metadata.name))
}

/// A new pod from the ReplicaSet's template.
pub fn pod_from_template(rs: &ReplicaSet) -> Value {
    let t = &rs.spec.template;
    super::new_pod(
        format!("{}-", rs.metadata.name),
        rs.metadata.namespace.clone(),
        t.metadata.labels.clone(),
        t.metadata.annotations.clone(),
        controller_ref("apps/v1", "ReplicaSet", &rs.metadata),
        t.spec.clone(),
    )
}

/// The reconciler.
pub struct ReplicaSets;

impl Controller for ReplicaSets {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![PODS]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        owner_keys(store, e, "ReplicaSet", PREFIX, |o: &ReplicaSet| &o.spec.selector)
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let rs: ReplicaSet = decode(&stored)?;
        let ns = rs.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        // Its own pods, and those no one controls (it may adopt them).
        let pods = super::pods_of(store, &ns, &[uid.as_str(), ""], |p| super::claimable_by(p, &uid))?;
        let p = plan(&rs, &pods, super::unix_now());
        let involved = ("ReplicaSet", "apps/v1", &rs.metadata);
        for name in &p.adopt {
            set_owner(
                store,
                &format!("{PODS}{ns}/{name}"),
                Some(controller_ref("apps/v1", "ReplicaSet", &rs.metadata)),
            )?;
        }
        for name in &p.release {
            set_owner(store, &format!("{PODS}{ns}/{name}"), None)?;
        }
        // Kubernetes' slow start: batches of 1, 2, 4, … so a template that cannot be created
        // fails once, not five hundred times.
        let mut left = p.create;
        let mut batch = 1;
        // Each batch is one store transaction, and its events another.
        while left > 0 {
            let n = batch.min(left);
            let made = super::create_generated_each(
                store,
                "/pods",
                (0..n).map(|_| pod_from_template(&rs)).collect(),
            );
            let mut events = Vec::new();
            let mut failed = None;
            for r in made {
                match r {
                    Ok(created) => {
                        let name = created.object["metadata"]["name"].as_str().unwrap_or_default();
                        events.push(super::event_object(
                            involved,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                            "replicaset-controller",
                        ));
                    }
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            super::events_each(store, events)?;
            if let Some(e) = failed {
                return Err(e);
            }
            left -= n;
            batch *= 2;
        }
        for name in &p.delete {
            crate::deletion::delete_quietly(store, &format!("{PODS}{ns}/{name}"))?;
            super::event(
                store,
                involved,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
                "replicaset-controller",
            )?;
        }
        if rs.status.as_ref() != Some(&p.status) {
            let mut obj = stored.object.clone();
            obj["status"] = serde_json::to_value(&p.status).unwrap_or(Value::Null);
            store.update(key, obj, Some(stored.revision))?;
        }
        Ok(p.next)
    }
}

/// The pods a workload controls, Kubernetes' ControllerRefManager: its own that its
/// selector still matches, and orphans it matches (adopted, unless it or they are being
/// deleted). Pods it owns but no longer matches are released. `None` when the selector does
/// not parse. Returns `(mine, adopt, release)`.
pub fn claim_pods<'a, P: Borrow<Pod>>(
    owner: &tug_api::meta::ObjectMeta,
    selector: &tug_api::labels::LabelSelector,
    pods: &'a [P],
) -> Option<(Vec<&'a Pod>, Vec<String>, Vec<String>)> {
    let uid = owner.uid.as_deref().unwrap_or_default();
    let deleting = owner.deletion_timestamp.is_some();
    let parsed = selector.to_selector("spec.selector").ok()?;
    let (mut mine, mut adopt, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for p in pods.iter().map(Borrow::borrow) {
        let matches = !selector.is_empty() && parsed.matches(&p.metadata.labels);
        match controller_of(&p.metadata) {
            Some(o) if o.uid == uid => {
                if matches {
                    mine.push(p);
                } else {
                    release.push(p.metadata.name.clone());
                }
            }
            None if matches && !deleting && p.metadata.deletion_timestamp.is_none() => {
                adopt.push(p.metadata.name.clone());
                mine.push(p);
            }
            _ => {}
        }
    }
    Some((mine, adopt, release))
}

/// Sets (or with `None`, removes) the controller reference of a pod.
pub fn set_owner(
    store: &dyn Store,
    key: &str,
    owner: Option<tug_api::meta::OwnerReference>,
) -> Result<(), StoreError> {
    let Some(s) = store.get(key)? else { return Ok(()) };
    let mut meta: tug_api::meta::ObjectMeta =
        tug_api::from_value_ref(&s.object["metadata"]).map_err(|e| StoreError::Backend(e.to_string()))?;
    meta.owner_references.retain(|o| o.controller != Some(true));
    meta.owner_references.extend(owner);
    let mut obj = s.object.clone();
    obj["metadata"]["ownerReferences"] = serde_json::to_value(&meta.owner_references).unwrap_or(Value::Null);
    if meta.owner_references.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("ownerReferences");
        }
    }
    store.update(key, obj, Some(s.revision))?;
    Ok(())
}

/// The owners a dependent's event concerns: its controller of `kind`, or, for an orphan,
/// every object of that kind in its namespace whose selector matches it (it may be adopted).
pub fn owner_keys<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    e: &Event,
    kind: &str,
    prefix: &str,
    selector: impl Fn(&T) -> &tug_api::labels::LabelSelector,
) -> Vec<String> {
    let meta: tug_api::meta::ObjectMeta = match tug_api::from_value_ref(&e.object["metadata"]) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    match controller_of(&meta) {
        Some(o) if o.kind == kind => vec![format!("{prefix}{ns}/{}", o.name)],
        Some(_) => Vec::new(),
        None => {
            let Ok((owners, _)) = store.list(&format!("{prefix}{ns}/")) else { return Vec::new() };
            owners
                .into_iter()
                .filter(|s| {
                    decode::<T>(s).is_ok_and(|o| {
                        let sel = selector(&o);
                        !sel.is_empty() && sel.to_selector("").is_ok_and(|x| x.matches(&meta.labels))
                    })
                })
                .map(|s| s.key)
                .collect()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tug_api::meta::{Condition, ObjectMeta};

    pub fn rs(name: &str, replicas: i32) -> ReplicaSet {
        let mut r = ReplicaSet {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                generation: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        r.spec.replicas = Some(replicas);
        r.spec.selector.match_labels.insert("app".into(), "web".into());
        r.spec.template.metadata.labels.insert("app".into(), "web".into());
        r
    }

    /// A pod owned by `owner` (or an orphan), created at `created`, on a node or not, ready
    /// since `ready` or not.
    pub fn pod(name: &str, owner: Option<&ReplicaSet>, created: u64, node: bool, ready: Option<u64>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.namespace = Some("default".into());
        p.metadata.labels.insert("app".into(), "web".into());
        p.metadata.creation_timestamp = Some(super::super::timestamp(created));
        if let Some(o) = owner {
            p.metadata.owner_references.push(controller_ref("apps/v1", "ReplicaSet", &o.metadata));
        }
        if node {
            p.spec.node_name = Some("n1".into());
        }
        let mut st = tug_api::kinds::pod::PodStatus {
            phase: Some(if node { "Running" } else { "Pending" }.into()),
            ..Default::default()
        };
        if let Some(t) = ready {
            st.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(super::super::timestamp(t)),
                ..Default::default()
            });
        }
        p.status = Some(st);
        p
    }

    #[test]
    fn creates_what_is_missing_and_adopts_orphans() {
        let r = rs("web-1", 3);
        let pods = vec![pod("a", Some(&r), 10, true, Some(20)), pod("orphan", None, 10, true, None)];
        let p = plan(&r, &pods, 100);
        assert_eq!(p.create, 1);
        assert_eq!(p.adopt, vec!["orphan"]);
        assert_eq!(p.status.replicas, 2);
        assert_eq!(p.status.ready_replicas, Some(1));
        // Another controller's pods are not touched.
        let other = rs("other", 1);
        let p = plan(&r, &[pod("b", Some(&other), 10, true, None)], 100);
        assert_eq!((p.create, p.adopt.len()), (3, 0));
    }

    #[test]
    fn deletes_the_least_valuable_first() {
        let r = rs("web-1", 2);
        let pods = vec![
            pod("old-ready", Some(&r), 10, true, Some(20)),
            pod("new-ready", Some(&r), 50, true, Some(60)),
            pod("unscheduled", Some(&r), 5, false, None),
            pod("not-ready", Some(&r), 5, true, None),
        ];
        let p = plan(&r, &pods, 100);
        assert_eq!(p.delete, vec!["unscheduled", "not-ready"]);
        let p = plan(&rs("web-1", 1), &pods, 100);
        assert_eq!(p.delete, vec!["unscheduled", "not-ready", "new-ready"]);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn finished_pods_do_not_count_and_min_ready_delays_availability() {
        let mut r = rs("web-1", 1);
        r.spec.min_ready_seconds = Some(30);
        let mut done = pod("done", Some(&r), 1, true, None);
        done.status.as_mut().unwrap().phase = Some("Failed".into());
        let p = plan(&r, &[done.clone(), pod("up", Some(&r), 1, true, Some(90))], 100);
        assert_eq!(p.create, 0);
        assert_eq!(p.status.available_replicas, Some(0));
        assert_eq!(p.next, Next::After(Duration::from_secs(20)));
        let p = plan(&r, &[done, pod("up", Some(&r), 1, true, Some(60))], 100);
        assert_eq!(p.status.available_replicas, Some(1));
    }

    #[test]
    fn releases_pods_that_stop_matching() {
        let r = rs("web-1", 1);
        let mut p0 = pod("relabelled", Some(&r), 1, true, None);
        p0.metadata.labels.insert("app".into(), "debug".into());
        let p = plan(&r, &[p0], 100);
        assert_eq!(p.release, vec!["relabelled"]);
        assert_eq!(p.create, 1);
    }

    proptest::proptest! {
        /// Whatever the pods, the plan reaches exactly `replicas` active pods.
        #[test]
        fn converges_to_replicas(want in 0i32..8, have in proptest::collection::vec((0u64..100, proptest::bool::ANY, proptest::option::of(0u64..100)), 0..12)) {
            let r = rs("web-1", want);
            let pods: Vec<Pod> = have.iter().enumerate().map(|(i, (c, n, rd))| pod(&format!("p{i}"), Some(&r), *c, *n, *rd)).collect();
            let p = plan(&r, &pods, 200);
            let after = pods.len() + p.create - p.delete.len();
            proptest::prop_assert_eq!(after, usize::try_from(want).unwrap());
            proptest::prop_assert!(p.create == 0 || p.delete.is_empty());
        }
    }
}
