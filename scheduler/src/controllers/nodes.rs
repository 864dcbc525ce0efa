//! Node lifecycle: a node whose lease is not renewed for `--node-monitor-grace-period`
//! (default 20 s; the agent renews every 5 s, so one missed heartbeat never counts) gets
//! `Ready=Unknown` and the taints `node.kubernetes.io/unreachable` NoSchedule and NoExecute;
//! a node whose agent reports `Ready=False` gets `node.kubernetes.io/not-ready`. Pods on a
//! node with a NoExecute taint they do not tolerate are evicted — at once, or after their
//! toleration's `tolerationSeconds` (pods that name no toleration for these two taints get
//! `--default-unreachable-toleration-seconds` / `--default-not-ready-toleration-seconds`,
//! default 30 s, as Kubernetes' DefaultTolerationSeconds admission gives them 300 s). Their
//! ReplicaSets then recreate them elsewhere: under a minute from the last heartbeat with
//! the defaults, against Kubernetes' ~6 minutes. When the lease is renewed again the taints
//! go. A node reporting MemoryPressure, DiskPressure or PIDPressure is tainted
//! `node.kubernetes.io/{memory,disk,pid}-pressure:NoSchedule` (Kubernetes'
//! TaintNodesByCondition): it keeps its pods and takes no new ones.
//!
//! [`plan`] is pure.

use super::runtime::{Controller, Next};
use super::{Settings, decode, parse_time, timestamp};
use crate::store::{Event, Store, StoreError};
use std::time::Duration;
use tug_api::kinds::cluster::{Lease, Node, Taint};
use tug_api::kinds::pod::{Pod, Toleration};

pub const PREFIX: &str = "/nodes/";
pub const LEASES: &str = "coordination.k8s.io/leases/tug-node-lease/";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Kubernetes' TaintNodesByCondition: a node reporting pressure takes no new pods.
pub const PRESSURE: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

/// What to do with one node.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The node's new taints, when they change.
    pub taints: Option<Vec<Taint>>,
    /// Set `Ready=Unknown` (the agent stopped reporting).
    pub mark_unknown: bool,
    /// Pods to evict now, by name and namespace, with the taint that evicts them.
    pub evict: Vec<(String, String, String)>,
    /// Pods (namespace, name) of an unreachable node still reporting Ready: they are marked
    /// not ready at once (Kubernetes' `MarkPodsNotReady`), so endpoints drop them long before
    /// the toleration evicts them.
    pub not_ready: Vec<(String, String)>,
    /// Pods (namespace, name) being deleted on an unreachable node, past their grace period:
    /// no agent will confirm their end, so they are removed (Kubernetes' pod GC).
    pub force: Vec<(String, String)>,
    pub next: Next,
}

fn condition_status<'a>(node: &'a Node, type_: &str) -> Option<&'a str> {
    node.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

fn ready_status(node: &Node) -> Option<&str> {
    condition_status(node, "Ready")
}

/// Whether this controller has marked the node unreachable (its Ready Unknown, or the taint).
fn marked_unreachable(node: &Node) -> bool {
    ready_status(node) == Some("Unknown") || node.spec.taints.iter().any(|t| t.key == UNREACHABLE)
}

fn owned_key(key: &str) -> bool {
    key == UNREACHABLE || key == NOT_READY || PRESSURE.iter().any(|(_, k)| *k == key)
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let key_ok = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    key_ok && value_ok && effect_ok
}

fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pure decision: the node, its lease's last renewal, its pods, the time and settings.
pub fn plan(node: &Node, renewed: Option<u64>, pods: &[Pod], now: u64, s: &Settings) -> Plan {
    let mut out = Plan::default();
    let grace = s.node_monitor_grace.as_secs();
    let created = node.metadata.creation_timestamp.as_deref().and_then(parse_time).unwrap_or(now);
    let last = renewed.unwrap_or(created);
    let unreachable = last + grace < now;
    if !unreachable {
        out.next = Next::After(Duration::from_secs(last + grace + 1 - now.min(last + grace)));
    }
    let not_ready = !unreachable && ready_status(node) == Some("False");
    out.mark_unknown = unreachable && ready_status(node) != Some("Unknown");
    // The taints this controller owns, kept with their time when already there.
    let mut taints: Vec<Taint> = node.spec.taints.iter().filter(|t| !owned_key(&t.key)).cloned().collect();
    let owned = |key: &str, effect: &str| Taint {
        key: key.into(),
        value: None,
        effect: effect.into(),
        time_added: node
            .spec
            .taints
            .iter()
            .find(|t| t.key == key && t.effect == effect)
            .and_then(|t| t.time_added.clone())
            .or_else(|| Some(timestamp(now))),
    };
    for (cond, key) in [(unreachable, UNREACHABLE), (not_ready, NOT_READY)] {
        if cond {
            taints.push(owned(key, "NoSchedule"));
            taints.push(owned(key, "NoExecute"));
        }
    }
    // Pressure as the agent last reported it; an unreachable node's report is stale.
    for (cond, key) in PRESSURE {
        if !unreachable && condition_status(node, cond) == Some("True") {
            taints.push(owned(key, "NoSchedule"));
        }
    }
    if taints != node.spec.taints {
        out.taints = Some(taints.clone());
    }
    if unreachable {
        out.not_ready = pods
            .iter()
            .filter(|p| super::pod_active(p) && pod_ready(p))
            .map(|p| {
                (p.metadata.namespace.clone().unwrap_or_else(|| "default".into()), p.metadata.name.clone())
            })
            .collect();
    }
    if unreachable {
        for p in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()) {
            let deadline = p.metadata.deletion_timestamp.as_deref().and_then(parse_time).unwrap_or(now);
            if deadline <= now {
                out.force.push((
                    p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                    p.metadata.name.clone(),
                ));
            } else {
                out.next = out.next.min(Next::After(Duration::from_secs(deadline - now)));
            }
        }
    }
    // Evictions for every NoExecute taint.
    for p in pods.iter().filter(|p| super::pod_active(p)) {
        let mut evict_at: Option<(u64, String)> = None;
        for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
            let added = taint.time_added.as_deref().and_then(parse_time).unwrap_or(now);
            let matching: Vec<&Toleration> =
                p.spec.tolerations.iter().filter(|t| tolerates(t, taint)).collect();
            let at = if matching.is_empty() {
                match taint.key.as_str() {
                    UNREACHABLE => Some(added + s.default_unreachable_toleration.as_secs()),
                    NOT_READY => Some(added + s.default_not_ready_toleration.as_secs()),
                    _ => Some(added),
                }
            } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
                None
            } else {
                let secs = matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0);
                Some(added + u64::try_from(secs).unwrap_or(0))
            };
            if let Some(at) = at {
                if evict_at.as_ref().is_none_or(|(e, _)| at < *e) {
                    evict_at = Some((at, taint.key.clone()));
                }
            }
        }
        match evict_at {
            Some((at, key)) if at <= now => out.evict.push((
                p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                p.metadata.name.clone(),
                key,
            )),
            Some((at, _)) => out.next = out.next.min(Next::After(Duration::from_secs(at - now))),
            None => {}
        }
    }
    out
}

/// Sets the pod's Ready condition False (with the time of the change); a pod changed or
/// gone meanwhile is left to the next reconcile.
fn mark_not_ready(store: &dyn Store, ns: &str, name: &str, now: u64) -> Result<(), StoreError> {
    let key = format!("/pods/{ns}/{name}");
    let Some(stored) = store.get(&key)? else { return Ok(()) };
    let mut obj = stored.object.clone();
    let Some(conditions) = obj["status"]["conditions"].as_array_mut() else { return Ok(()) };
    let mut changed = false;
    for c in conditions.iter_mut().filter(|c| c["type"] == "Ready" && c["status"] == "True") {
        c["status"] = "False".into();
        c["lastTransitionTime"] = timestamp(now).into();
        changed = true;
    }
    if !changed {
        return Ok(());
    }
    match store.update(&key, obj, Some(stored.revision)) {
        Ok(_) => {
            let pod: Pod = decode(&stored)?;
            super::event(
                store,
                ("Pod", "v1", &pod.metadata),
                "Warning",
                "NodeNotReady",
                "Node is not ready",
                "node-controller",
            )
        }
        Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The reconciler.
pub struct NodeLifecycle {
    settings: Settings,
}

impl NodeLifecycle {
    pub fn new(settings: &Settings) -> NodeLifecycle {
        NodeLifecycle { settings: settings.clone() }
    }
}

impl Controller for NodeLifecycle {
    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![LEASES]
    }

    /// Every node queued again ten times as seldom as the others: each node's reconcile
    /// already says when to look again (when its grace would run out), so this only catches
    /// what a cut-off watch missed — at 5,000 nodes a resync every 30 s was 167 reconciles a
    /// second on its own.
    fn resync(&self, period: Duration) -> Duration {
        period * 10
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        // A node's store key (cluster-scoped: no namespace between the slashes).
        let Some(name) = e.object["metadata"]["name"].as_str() else { return Vec::new() };
        let key = format!("{PREFIX}/{name}");
        // A renewal matters at once only to a node marked unreachable (it is back). A healthy
        // node is looked at again when its grace would run out, as its last reconcile's Next
        // says, and its Lease read then — not at every heartbeat (5,000 nodes renew 500 Leases
        // a second).
        if e.key.starts_with(LEASES)
            && e.type_ == crate::store::EventType::Modified
            && let Ok(Some(node)) = crate::store::cache::get_typed::<Node>(store, &key)
            && !marked_unreachable(&node.value)
        {
            return Vec::new();
        }
        vec![key]
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        // Read decoded from the store's copy (the scheduler reads nodes so too: one decode
        // per heartbeat, not a parse here as well).
        let Some(typed) = crate::store::cache::get_typed::<Node>(store, key)? else {
            // The node is gone: no agent will confirm the end of the pods being deleted there.
            let Some(name) = key.strip_prefix(PREFIX).and_then(|k| k.strip_prefix('/')) else {
                return Ok(Next::Done);
            };
            let items = crate::store::cache::pods_on_node(store, name)?;
            for s in items.iter().filter(|s| crate::deletion::terminating(&s.object)) {
                match store.delete(&s.key, Some(s.revision)) {
                    Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(Next::Done);
        };
        let node = &*typed.value;
        let lease = crate::store::cache::read_as::<Lease>(store, &format!("{LEASES}{}", node.metadata.name))?;
        let renewed =
            lease.and_then(|(_, l)| l.ok()).and_then(|l| l.spec.renew_time.as_deref().and_then(parse_time));
        let tainted = node.spec.taints.iter().any(|t| t.effect == "NoExecute");
        let now = super::unix_now();
        // Pods are read only when they might be evicted.
        let pods: Vec<Pod> =
            if tainted || renewed.is_none_or(|r| r + self.settings.node_monitor_grace.as_secs() < now) {
                let items = crate::store::cache::pods_on_node(store, &node.metadata.name)?;
                items.iter().filter_map(|s| decode(s).ok()).collect()
            } else {
                Vec::new()
            };
        let p = plan(node, renewed, &pods, now, &self.settings);
        let involved = ("Node", "v1", &node.metadata);
        if p.taints.is_some() || p.mark_unknown {
            let stored = typed.stored();
            let mut obj = stored.object;
            if let Some(t) = &p.taints {
                obj["spec"]["taints"] = serde_json::to_value(t).unwrap_or_default();
            }
            if p.mark_unknown {
                let mut n = node.clone();
                let st = n.status.get_or_insert_with(Default::default);
                for c in st.conditions.iter_mut().filter(|c| c.type_ != "NetworkUnavailable") {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(timestamp(now));
                }
                if !st.conditions.iter().any(|c| c.type_ == "Ready") {
                    st.conditions.push(super::condition(
                        "Ready",
                        "Unknown",
                        "NodeStatusUnknown",
                        "Kubelet never posted node status.",
                    ));
                }
                obj["status"] = serde_json::to_value(&n.status).unwrap_or_default();
            }
            store.update(key, obj, Some(stored.revision))?;
            if p.mark_unknown {
                super::event(
                    store,
                    involved,
                    "Normal",
                    "NodeNotReady",
                    &format!("Node {} status is now: NodeNotReady", node.metadata.name),
                    "node-controller",
                )?;
            }
        }
        for (ns, name) in &p.not_ready {
            mark_not_ready(store, ns, name, now)?;
        }
        for (ns, name) in &p.force {
            let pod_key = format!("/pods/{ns}/{name}");
            crate::deletion::delete_if_there(store, &pod_key, Some(0), &Default::default())?;
        }
        for (ns, name, taint) in &p.evict {
            let pod_key = format!("/pods/{ns}/{name}");
            let Some(ps) = store.get(&pod_key)? else { continue };
            let pod: Pod = decode(&ps)?;
            // Marked with its grace period: a node that comes back stops it; one that does
            // not has it removed once the grace period is over (`force` above).
            crate::deletion::delete_quietly(store, &pod_key)?;
            super::event(
                store,
                ("Pod", "v1", &pod.metadata),
                "Normal",
                "TaintManagerEviction",
                &format!(
                    "Marking for deletion Pod {ns}/{name} (node {} has taint {taint})",
                    node.metadata.name
                ),
                "taint-eviction-controller",
            )?;
        }
        Ok(p.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Lease renewal wakes the node's reconcile only when the node is marked unreachable;
    /// a new or deleted Lease, and any change of the node itself, always do.
    #[test]
    fn a_renewal_wakes_only_a_node_marked_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        let c = NodeLifecycle::new(&Settings::default());
        let lease = |type_| Event {
            revision: 9,
            type_,
            key: format!("{LEASES}n1"),
            object: serde_json::json!({"metadata": {"name": "n1", "namespace": "tug-node-lease"}}),
        };
        let node_key = format!("{PREFIX}/n1");
        store.create(&node_key, serde_json::to_value(node("True")).unwrap()).unwrap();
        assert!(c.keys_for(&store, &lease(crate::store::EventType::Modified)).is_empty());
        for t in [crate::store::EventType::Added, crate::store::EventType::Deleted] {
            assert_eq!(c.keys_for(&store, &lease(t)), std::slice::from_ref(&node_key));
        }
        store.update(&node_key, serde_json::to_value(node("Unknown")).unwrap(), None).unwrap();
        assert_eq!(
            c.keys_for(&store, &lease(crate::store::EventType::Modified)),
            std::slice::from_ref(&node_key)
        );
        // A node not there (yet): looked at.
        let other = Event {
            key: format!("{LEASES}n2"),
            object: serde_json::json!({"metadata": {"name": "n2"}}),
            ..lease(crate::store::EventType::Modified)
        };
        assert_eq!(c.keys_for(&store, &other), [format!("{PREFIX}/n2")]);
        let n = Event { key: node_key.clone(), ..lease(crate::store::EventType::Modified) };
        assert_eq!(c.keys_for(&store, &n), [node_key]);
    }

    fn node(ready: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = "n1".into();
        n.metadata.creation_timestamp = Some(timestamp(0));
        let mut st = tug_api::kinds::cluster::NodeStatus::default();
        st.conditions.push(super::super::condition("Ready", ready, "KubeletReady", ""));
        n.status = Some(st);
        n
    }

    fn pod(name: &str, tolerations: Vec<Toleration>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.namespace = Some("default".into());
        p.spec.node_name = Some("n1".into());
        p.spec.tolerations = tolerations;
        p
    }

    #[test]
    fn one_missed_heartbeat_is_not_a_dead_node() {
        let s = Settings::default();
        let p = plan(&node("True"), Some(1000), &[], 1010, &s);
        assert_eq!(p, Plan { next: Next::After(Duration::from_secs(11)), ..Default::default() });
    }

    #[test]
    fn a_silent_node_is_tainted_and_its_pods_evicted_after_the_default_toleration() {
        let s = Settings::default();
        let pods = vec![
            pod("plain", vec![]),
            pod(
                "patient",
                vec![Toleration {
                    key: Some(UNREACHABLE.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(100),
                    ..Default::default()
                }],
            ),
            pod("forever", vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
        ];
        let p = plan(&node("True"), Some(1000), &pods, 1021, &s);
        assert!(p.mark_unknown);
        let taints = p.taints.clone().unwrap();
        assert_eq!(taints.len(), 2);
        assert!(p.evict.is_empty());
        assert_eq!(p.next, Next::After(Duration::from_secs(30)));
        let mut n = node("Unknown");
        n.spec.taints = taints;
        let p = plan(&n, Some(1000), &pods, 1051, &s);
        assert_eq!(p.evict, vec![("default".into(), "plain".into(), UNREACHABLE.into())]);
        assert!(!p.mark_unknown && p.taints.is_none());
        assert_eq!(p.next, Next::After(Duration::from_secs(70)));
        // Renewed again: the taints go.
        let p = plan(&n, Some(1060), &pods, 1061, &s);
        assert_eq!(p.taints, Some(vec![]));
        assert!(p.evict.is_empty());
    }

    /// Kubernetes' MarkPodsNotReady: the moment a node is unreachable, its Ready pods are
    /// marked not ready (for the endpoints), long before any is evicted; a reachable node's
    /// pods are left alone.
    #[test]
    fn an_unreachable_nodes_ready_pods_are_marked_not_ready_at_once() {
        let s = Settings::default();
        let ready = |name: &str, status: &str| {
            let mut p = pod(name, vec![]);
            let c = tug_api::meta::Condition {
                type_: "Ready".into(),
                status: status.into(),
                ..Default::default()
            };
            p.status = Some(tug_api::kinds::pod::PodStatus { conditions: vec![c], ..Default::default() });
            p
        };
        let pods = vec![ready("up", "True"), ready("down", "False"), pod("new", vec![])];
        let p = plan(&node("True"), Some(1000), &pods, 1021, &s);
        assert_eq!(p.not_ready, vec![("default".to_string(), "up".to_string())]);
        assert!(p.evict.is_empty(), "marked, not evicted");
        assert!(plan(&node("True"), Some(1000), &pods, 1010, &s).not_ready.is_empty(), "reachable");
    }

    #[test]
    fn a_node_reporting_not_ready_is_tainted_not_ready() {
        let p = plan(&node("False"), Some(1000), &[], 1001, &Settings::default());
        let keys: Vec<String> = p.taints.unwrap().iter().map(|t| format!("{}:{}", t.key, t.effect)).collect();
        assert_eq!(keys, vec![format!("{NOT_READY}:NoSchedule"), format!("{NOT_READY}:NoExecute")]);
    }

    #[test]
    fn pressure_taints_the_node_no_schedule_and_evicts_nobody() {
        let mut n = node("True");
        let st = n.status.as_mut().unwrap();
        st.conditions.push(super::super::condition("DiskPressure", "True", "KubeletHasDiskPressure", ""));
        st.conditions.push(super::super::condition("MemoryPressure", "False", "", ""));
        let pods = vec![pod("plain", vec![])];
        let p = plan(&n, Some(1000), &pods, 1001, &Settings::default());
        let taints = p.taints.unwrap();
        let keys: Vec<String> = taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect();
        assert_eq!(keys, vec!["node.kubernetes.io/disk-pressure:NoSchedule".to_string()]);
        assert!(p.evict.is_empty());
        // Relieved: the taint goes; a user's own taint stays.
        n.spec.taints = taints;
        n.spec.taints.push(Taint {
            key: "dedicated".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        });
        n.status.as_mut().unwrap().conditions[1].status = "False".into();
        let p = plan(&n, Some(1000), &pods, 1002, &Settings::default());
        let keys: Vec<String> = p.taints.unwrap().iter().map(|t| t.key.clone()).collect();
        assert_eq!(keys, vec!["dedicated".to_string()]);
    }
}
