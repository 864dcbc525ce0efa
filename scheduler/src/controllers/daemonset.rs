//! DaemonSets: one pod on every node that should run it, as Kubernetes' DaemonSet
//! controller does it.
//!
//! A node should run the pod when it is not being deleted, its labels match the template's
//! `nodeSelector` and required node affinity, and the template tolerates its `NoSchedule` and
//! `NoExecute` taints — with the tolerations every daemon pod gets
//! ([`default_tolerations`]: not-ready, unreachable, the pressure taints, unschedulable).
//! Pods are made for a node, not placed on one: each carries a required node affinity on
//! `metadata.name`, so the scheduler still checks its resources and ports.
//!
//! [`plan`] is pure: it adopts and releases like a ReplicaSet, creates the pod of every node
//! without one, deletes pods on nodes that should not run them (or are gone), failed pods
//! and duplicates, and rolls a new template out by `updateStrategy`:
//! - `RollingUpdate` with `maxSurge: 0`: old pods that are not available go at once; old
//!   available ones go while fewer than `maxUnavailable` nodes lack an available pod.
//! - `RollingUpdate` with `maxSurge`: a new pod beside the old one on up to `maxSurge` nodes
//!   at a time; the old one goes when the new one is available (at once if the old one is
//!   not).
//! - `OnDelete`: nothing; a pod deleted by hand comes back from the current template.
//!
//! Revisions are ControllerRevisions named `<daemonset>-<hash>` holding the template; pods
//! carry the hash as `controller-revision-hash` (what `rollout history` and `undo` use).

use super::history;
use super::runtime::{Controller, Next};
use super::{controller_ref, decode, pod_active, pod_available, ready_since};
use crate::store::{Event, Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tug_api::kinds::apps::{DaemonSet, DaemonSetStatus};
use tug_api::kinds::cluster::Node;
use tug_api::kinds::pod::{
    Affinity, NodeAffinity, NodeSelectorRequirement, NodeSelectorSpec, NodeSelectorTerm,
};
use tug_api::kinds::pod::{Pod, PodSpec, Toleration};

pub const PREFIX: &str = "apps/daemonsets/";
const PODS: &str = "/pods/";
const NODES: &str = "/nodes/";
use super::history::HASH_LABEL;
/// The pod label with the DaemonSet's generation it was made at (Kubernetes still sets it).
const GENERATION_LABEL: &str = "pod-template-generation";
/// At most this many pods created per reconcile.
const BURST: usize = 500;

/// The tolerations every daemon pod gets (Kubernetes' `AddOrUpdateDaemonPodTolerations`):
/// a daemon keeps running on a node that is not ready, unreachable, under pressure or
/// cordoned; a host-network one also where the network is not up yet.
pub fn default_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut out = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        out.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// The template's tolerations with the defaults added (an existing one for the same key and
/// effect is kept as written).
fn with_default_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut all = spec.tolerations.clone();
    for d in default_tolerations(spec) {
        if !all.iter().any(|t| t.key == d.key && t.effect == d.effect) {
            all.push(d);
        }
    }
    all
}

/// Whether `node` should run a pod of this template.
pub fn should_run(spec: &PodSpec, node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let labels = &node.metadata.labels;
    if !spec.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let required =
        spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required.as_ref());
    if let Some(r) = required {
        if !r
            .node_selector_terms
            .iter()
            .any(|t| crate::sched::context::term_matches(t, &node.metadata.name, labels))
        {
            return false;
        }
    }
    let tolerations = with_default_tolerations(spec);
    node.spec
        .taints
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .all(|taint| tolerations.iter().any(|t| crate::sched::filters::tolerates(t, taint)))
}

/// The node a daemon pod is for: where it is bound, else its `metadata.name` affinity.
pub fn target_node(p: &Pod) -> Option<String> {
    if let Some(n) = p.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = &p.spec.affinity.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| &t.match_fields).find_map(|r| {
        (r.key == "metadata.name" && r.operator == "In" && r.values.len() == 1).then(|| r.values[0].clone())
    })
}

/// The pod spec for `node`: the template's, with the default tolerations and every required
/// affinity term narrowed to the node (Kubernetes' `ReplaceDaemonSetPodNodeNameNodeAffinity`).
pub fn spec_for(template: &PodSpec, node: &str) -> PodSpec {
    let mut spec = template.clone();
    spec.tolerations = with_default_tolerations(template);
    let field = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: vec![node.to_string()],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    let required = na.required.get_or_insert_with(NodeSelectorSpec::default);
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for t in &mut required.node_selector_terms {
        t.match_fields = vec![field.clone()];
    }
    spec
}

/// What one reconcile of a DaemonSet does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to make a pod for.
    pub create: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    pub adopt: Vec<String>,
    pub release: Vec<String>,
    pub status: DaemonSetStatus,
    pub next: Next,
}

fn min_ready(ds: &DaemonSet) -> u64 {
    u64::try_from(ds.spec.min_ready_seconds.unwrap_or(0).max(0)).unwrap_or(0)
}

/// `(maxSurge, maxUnavailable)` as counts of `desired` nodes; None for `OnDelete`.
fn budgets(ds: &DaemonSet, desired: usize) -> Option<(usize, usize)> {
    let s = ds.spec.update_strategy.as_ref();
    if s.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return None;
    }
    let ru = s.and_then(|s| s.rolling_update.as_ref());
    let total = i64::try_from(desired).unwrap_or(i64::MAX);
    let count = |v: Option<&tug_api::meta::IntOrString>, default: i64| {
        let n = v.map_or(Ok(default), |v| v.scaled(total, true)).unwrap_or(default);
        usize::try_from(n.max(0)).unwrap_or(0)
    };
    let surge = count(ru.and_then(|r| r.max_surge.as_ref()), 0);
    let unavailable = count(ru.and_then(|r| r.max_unavailable.as_ref()), 1);
    // Both 0 is refused by validation; a percentage of few nodes rounds up to at least one.
    Some((surge, if surge == 0 { unavailable.max(1) } else { unavailable }))
}

/// An eligible node with its pod of the current template and its old one.
type Placed<'a> = (&'a str, Option<&'a Pod>, Option<&'a Pod>);

/// The pure decision: `nodes` are every node, `pods` the DaemonSet's namespace's pods,
/// `hash` the current template's revision hash.
pub fn plan<P: std::borrow::Borrow<Pod>>(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[P],
    hash: &str,
    now: u64,
) -> Plan {
    let mut out = Plan::default();
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let Some((mine, adopt, release)) = super::replicaset::claim_pods(&ds.metadata, &ds.spec.selector, pods)
    else {
        return out;
    };
    (out.adopt, out.release) = (adopt, release);
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in mine {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
            // A failed daemon pod is replaced (Kubernetes deletes it and makes another).
            out.delete.push(p.metadata.name.clone());
            continue;
        }
        if !pod_active(p) {
            continue;
        }
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => out.delete.push(p.metadata.name.clone()),
        }
    }
    let m = min_ready(ds);
    let is_new = |p: &Pod| p.metadata.labels.get(HASH_LABEL).map(String::as_str) == Some(hash);
    let available = |p: &Pod| pod_available(p, m, now);
    let known: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
    // Pods for nodes that are gone.
    for (node, ps) in &by_node {
        if !known.contains(node.as_str()) {
            out.delete.extend(ps.iter().map(|p| p.metadata.name.clone()));
        }
    }
    let eligible: Vec<&Node> = nodes.iter().filter(|n| should_run(&ds.spec.template.spec, n)).collect();
    let budget = budgets(ds, eligible.len());
    let (mut status, mut misscheduled) = (DaemonSetStatus::default(), 0);
    // Per eligible node: (node, its new pod, its old pod) after duplicates are dropped.
    let mut placed: Vec<Placed> = Vec::new();
    for n in nodes {
        let name = n.metadata.name.as_str();
        let here = by_node.get(name).cloned().unwrap_or_default();
        if !eligible.iter().any(|e| e.metadata.name == name) {
            if !here.is_empty() {
                misscheduled += 1;
                out.delete.extend(here.iter().map(|p| p.metadata.name.clone()));
            }
            continue;
        }
        // The newest-made new pod and the oldest old one stay; others are duplicates.
        let created = |p: &&Pod| p.metadata.creation_timestamp.clone().unwrap_or_default();
        let mut news: Vec<&Pod> = here.iter().copied().filter(|p| is_new(p)).collect();
        let mut olds: Vec<&Pod> = here.iter().copied().filter(|p| !is_new(p)).collect();
        news.sort_by_key(|p| std::cmp::Reverse(created(p)));
        olds.sort_by_key(created);
        let new = news.first().copied();
        // Without a rolling update in progress only one pod per node is kept.
        let old = if new.is_some() && budget.is_none_or(|(surge, _)| surge == 0) {
            None
        } else {
            olds.first().copied()
        };
        let extra_olds = olds.iter().filter(|p| old.is_none_or(|o| o.metadata.name != p.metadata.name));
        out.delete.extend(news.iter().skip(1).chain(extra_olds).map(|p| p.metadata.name.clone()));
        if new.is_none() && old.is_none() && !deleting {
            out.create.push(name.to_string());
        }
        placed.push((name, new, old));
    }
    if let (Some((surge, max_unavailable)), false) = (budget, deleting) {
        let unavailable_nodes = placed
            .iter()
            .filter(|(_, new, old)| !new.is_some_and(available) && !old.is_some_and(available))
            .count();
        if surge == 0 {
            let mut allowed = max_unavailable.saturating_sub(unavailable_nodes);
            for (_, new, old) in &placed {
                let (None, Some(o)) = (new, old) else { continue };
                if !available(o) {
                    out.delete.push(o.metadata.name.clone());
                } else if allowed > 0 {
                    allowed -= 1;
                    out.delete.push(o.metadata.name.clone());
                }
            }
        } else {
            // Nodes running both while the new pod is not available yet (once it is, the
            // old one goes now).
            let surging = placed
                .iter()
                .filter(|(_, new, old)| new.is_some_and(|n| !available(n)) && old.is_some())
                .count();
            let mut allowed = surge.saturating_sub(surging);
            for (node, new, old) in &placed {
                let Some(o) = old else { continue };
                match new {
                    Some(n) if available(n) => out.delete.push(o.metadata.name.clone()),
                    Some(_) => {}
                    None if !available(o) => {
                        out.delete.push(o.metadata.name.clone());
                        out.create.push((*node).to_string());
                    }
                    None if allowed > 0 => {
                        allowed -= 1;
                        out.create.push((*node).to_string());
                    }
                    None => {}
                }
            }
        }
    }
    out.create.truncate(BURST);
    out.delete.sort();
    out.delete.dedup();
    let count = |f: &dyn Fn(&Placed) -> bool| {
        i32::try_from(placed.iter().filter(|x| f(x)).count()).unwrap_or(i32::MAX)
    };
    let any = |x: &Placed, f: &dyn Fn(&Pod) -> bool| x.1.is_some_and(f) || x.2.is_some_and(f);
    status.desired_number_scheduled = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    status.current_number_scheduled = count(&|x| x.1.is_some() || x.2.is_some());
    status.number_misscheduled = misscheduled;
    status.number_ready = count(&|x| any(x, &|p| ready_since(p).is_some()));
    status.updated_number_scheduled = Some(count(&|x| x.1.is_some()));
    let avail = count(&|x| any(x, &available));
    status.number_available = Some(avail);
    status.number_unavailable = Some(status.desired_number_scheduled - avail);
    status.observed_generation = ds.metadata.generation;
    status.collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    out.status = status;
    out.next = placed
        .iter()
        .flat_map(|(_, n, o)| [n, o])
        .filter_map(|p| p.and_then(ready_since))
        .filter(|t| t + m > now)
        .map(|t| Next::After(Duration::from_secs(t + m - now)))
        .fold(Next::Done, Next::min);
    out
}

/// The hash naming a template's revision.
pub fn template_hash(ds: &DaemonSet) -> String {
    super::deployment::template_hash(&ds.spec.template)
}

/// A new pod of the DaemonSet for `node`.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Value {
    let t = &ds.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(HASH_LABEL.into(), hash.into());
    if let Some(g) = ds.metadata.generation {
        labels.insert(GENERATION_LABEL.into(), g.to_string());
    }
    super::new_pod(
        format!("{}-", ds.metadata.name),
        ds.metadata.namespace.clone(),
        labels,
        t.metadata.annotations.clone(),
        controller_ref("apps/v1", "DaemonSet", &ds.metadata),
        spec_for(&t.spec, node),
    )
}

/// What of a node decides which daemons it runs: its labels, taints and whether it is
/// being deleted. Its status (written by every heartbeat) does not.
fn placement_facts(node: &Value) -> String {
    let m = &node["metadata"];
    json!([m["labels"], m["deletionTimestamp"], node["spec"]["taints"]]).to_string()
}

/// The reconciler, with the placement facts of the nodes it has seen.
#[derive(Default)]
pub struct DaemonSets {
    nodes: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl DaemonSets {
    /// Whether a node event can change where daemons run (a new or gone node, or one whose
    /// placement facts changed): status heartbeats wake no DaemonSet.
    fn placement_changed(&self, e: &Event) -> bool {
        let mut seen = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if e.type_ == crate::store::EventType::Deleted {
            seen.remove(&e.key);
            return true;
        }
        let facts = placement_facts(&e.object);
        seen.insert(e.key.clone(), facts.clone()).as_ref() != Some(&facts)
    }
}

impl Controller for DaemonSets {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![PODS, NODES]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        if e.key.starts_with(NODES) {
            if !self.placement_changed(e) {
                return Vec::new();
            }
            // A node came, went or changed its labels or taints: every DaemonSet looks again.
            return store
                .list(PREFIX)
                .map(|(items, _)| items.into_iter().map(|s| s.key).collect())
                .unwrap_or_default();
        }
        super::replicaset::owner_keys(store, e, "DaemonSet", PREFIX, |o: &DaemonSet| &o.spec.selector)
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let ds: DaemonSet = decode(&stored)?;
        let ns = ds.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        // Its own pods and the orphans it may adopt (all the plan claims from), from the store
        // copy's index by controller, not every pod of the namespace.
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        let pods = super::pods_of(store, &ns, &[uid, ""], |_| true)?;
        let (node_items, _) = store.list(NODES)?;
        let nodes: Vec<Node> = node_items.iter().filter_map(|s| decode(s).ok()).collect();
        let hash = template_hash(&ds);
        if ds.metadata.deletion_timestamp.is_none() {
            let owner = history::Owner {
                kind: "DaemonSet",
                meta: &ds.metadata,
                template: &ds.spec.template,
                history_limit: ds.spec.revision_history_limit,
            };
            history::sync(store, &owner, &hash, &hash, &pods)?;
        }
        let p = plan(&ds, &nodes, &pods, &hash, super::unix_now());
        let involved = ("DaemonSet", "apps/v1", &ds.metadata);
        let owner = controller_ref("apps/v1", "DaemonSet", &ds.metadata);
        for name in &p.adopt {
            super::replicaset::set_owner(store, &format!("{PODS}{ns}/{name}"), Some(owner.clone()))?;
        }
        for name in &p.release {
            super::replicaset::set_owner(store, &format!("{PODS}{ns}/{name}"), None)?;
        }
        for name in &p.delete {
            crate::deletion::delete_quietly(store, &format!("{PODS}{ns}/{name}"))?;
            let msg = format!("Deleted pod: {name}");
            super::event(store, involved, "Normal", "SuccessfulDelete", &msg, "daemonset-controller")?;
        }
        // Slow start, as for ReplicaSets: a template that cannot be made fails once.
        let mut batch = 1;
        let mut left: &[String] = &p.create;
        while !left.is_empty() {
            let (now, rest) = left.split_at(batch.min(left.len()));
            for node in now {
                let created = super::create_generated(store, "/pods", pod_for(&ds, node, &hash))?;
                let name = created.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let msg = format!("Created pod: {name}");
                super::event(store, involved, "Normal", "SuccessfulCreate", &msg, "daemonset-controller")?;
            }
            left = rest;
            batch *= 2;
        }
        if ds.status.as_ref() != Some(&p.status) {
            let mut obj = stored.object.clone();
            obj["status"] = serde_json::to_value(&p.status).unwrap_or(Value::Null);
            store.update(key, obj, Some(stored.revision))?;
        }
        Ok(p.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::cluster::Taint;
    use tug_api::meta::Condition;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n.spec.taints = taints
            .iter()
            .map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Default::default() })
            .collect();
        n
    }

    fn ds(strategy: Value) -> DaemonSet {
        let mut d: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}},
                     "updateStrategy": strategy}
        }))
        .unwrap();
        d.metadata.generation = Some(2);
        d
    }

    /// A pod of the DaemonSet for `node` at `hash`, ready when `ready`.
    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Pod {
        let d = ds(json!({}));
        let mut p: Pod = serde_json::from_value(pod_for(&d, node, hash)).unwrap();
        p.metadata.name = name.into();
        p.metadata.creation_timestamp = Some("2026-01-01T00:00:00Z".into());
        p.spec.node_name = Some(node.into());
        let mut st = tug_api::kinds::pod::PodStatus { phase: Some("Running".into()), ..Default::default() };
        if ready {
            st.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            });
        }
        p.status = Some(st);
        p
    }

    #[test]
    fn eligible_nodes_follow_selector_affinity_and_taints_with_the_daemon_tolerations() {
        let mut d = ds(json!({}));
        let plain = node("a", &[("disk", "ssd")], &[]);
        let cordoned = node("b", &[], &[("node.kubernetes.io/unschedulable", "NoSchedule")]);
        let not_ready = node("c", &[], &[("node.kubernetes.io/not-ready", "NoExecute")]);
        let gpu = node("d", &[], &[("dedicated", "NoSchedule")]);
        let prefer = node("e", &[], &[("soft", "PreferNoSchedule")]);
        let spec = &d.spec.template.spec;
        assert!(should_run(spec, &plain) && should_run(spec, &cordoned) && should_run(spec, &not_ready));
        assert!(!should_run(spec, &gpu), "an untolerated NoSchedule taint keeps it off");
        assert!(should_run(spec, &prefer));
        d.spec.template.spec.node_selector.insert("disk".into(), "ssd".into());
        assert!(should_run(&d.spec.template.spec, &plain) && !should_run(&d.spec.template.spec, &cordoned));
        // The pod's spec: the defaults added, the node named by affinity.
        let s = spec_for(&ds(json!({})).spec.template.spec, "a");
        assert_eq!(s.tolerations.len(), 6);
        let p = Pod { spec: s, ..Default::default() };
        assert_eq!(target_node(&p).as_deref(), Some("a"));
    }

    #[test]
    fn every_eligible_node_gets_one_pod_and_others_lose_theirs() {
        let d = ds(json!({}));
        let nodes =
            [node("a", &[], &[]), node("b", &[], &[]), node("t", &[], &[("dedicated", "NoSchedule")])];
        let pods =
            [pod("p-a", "a", "h1", true), pod("p-t", "t", "h1", true), pod("p-gone", "zz", "h1", true)];
        let p = plan(&d, &nodes, &pods, "h1", 10);
        assert_eq!(p.create, vec!["b".to_string()]);
        assert_eq!(p.delete, vec!["p-gone".to_string(), "p-t".to_string()]);
        assert_eq!(
            (
                p.status.desired_number_scheduled,
                p.status.current_number_scheduled,
                p.status.number_misscheduled
            ),
            (2, 1, 1)
        );
        assert_eq!(
            (p.status.number_ready, p.status.number_available, p.status.number_unavailable),
            (1, Some(1), Some(1))
        );
    }

    #[test]
    fn a_rolling_update_replaces_max_unavailable_nodes_at_a_time() {
        let d = ds(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}));
        let nodes = [node("a", &[], &[]), node("b", &[], &[]), node("c", &[], &[])];
        let old = [pod("p-a", "a", "h1", true), pod("p-b", "b", "h1", true), pod("p-c", "c", "h1", true)];
        let p = plan(&d, &nodes, &old, "h2", 10);
        assert_eq!((p.delete.len(), p.create.len()), (1, 0), "{p:?}");
        assert_eq!(p.status.updated_number_scheduled, Some(0));
        // One node's old pod gone, its new one not ready yet: nothing more goes.
        let mid = [pod("n-a", "a", "h2", false), pod("p-b", "b", "h1", true), pod("p-c", "c", "h1", true)];
        let p = plan(&d, &nodes, &mid, "h2", 10);
        assert!(p.delete.is_empty() && p.create.is_empty(), "{p:?}");
        // Ready: the next one goes; an old pod that is not available goes at once.
        let next = [pod("n-a", "a", "h2", true), pod("p-b", "b", "h1", true), pod("p-c", "c", "h1", false)];
        let p = plan(&d, &nodes, &next, "h2", 10);
        assert_eq!(p.delete, vec!["p-c".to_string()], "the unavailable one first, and it uses the budget");
        // OnDelete: nothing.
        let p = plan(&ds(json!({"type": "OnDelete"})), &nodes, &old, "h2", 10);
        assert!(p.delete.is_empty() && p.create.is_empty());
    }

    #[test]
    fn a_surging_update_starts_the_new_pod_before_the_old_one_goes() {
        let d = ds(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}));
        let nodes = [node("a", &[], &[]), node("b", &[], &[])];
        let old = [pod("p-a", "a", "h1", true), pod("p-b", "b", "h1", true)];
        let p = plan(&d, &nodes, &old, "h2", 10);
        assert_eq!((p.create.len(), p.delete.len()), (1, 0), "{p:?}");
        let both = [pod("p-a", "a", "h1", true), pod("n-a", "a", "h2", false), pod("p-b", "b", "h1", true)];
        let p = plan(&d, &nodes, &both, "h2", 10);
        assert!(p.create.is_empty() && p.delete.is_empty(), "one surge at a time: {p:?}");
        let ready = [pod("p-a", "a", "h1", true), pod("n-a", "a", "h2", true), pod("p-b", "b", "h1", true)];
        let p = plan(&d, &nodes, &ready, "h2", 10);
        assert_eq!(p.delete, vec!["p-a".to_string()]);
        assert_eq!(p.create, vec!["b".to_string()], "the old one going frees the surge for the next node");
    }

    #[test]
    fn only_node_changes_that_move_daemons_wake_daemonsets() {
        let c = DaemonSets::default();
        let ev = |type_, object: Value| Event { revision: 1, type_, key: "/nodes//a".into(), object };
        let node = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "status": {"conditions": []}});
        assert!(c.placement_changed(&ev(crate::store::EventType::Added, node.clone())));
        let mut beat = node.clone();
        beat["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        assert!(!c.placement_changed(&ev(crate::store::EventType::Modified, beat.clone())), "a heartbeat");
        beat["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}]);
        assert!(c.placement_changed(&ev(crate::store::EventType::Modified, beat.clone())), "a taint");
        assert!(c.placement_changed(&ev(crate::store::EventType::Deleted, beat)));
    }

    #[test]
    fn orphans_are_adopted_and_strays_released() {
        let d = ds(json!({}));
        let mut orphan = pod("o", "a", "h1", true);
        orphan.metadata.owner_references.clear();
        let mut stray = pod("s", "a", "h1", true);
        stray.metadata.labels.insert("app".into(), "other".into());
        let p = plan(&d, &[node("a", &[], &[])], &[orphan, stray], "h1", 10);
        assert_eq!((p.adopt, p.release), (vec!["o".to_string()], vec!["s".to_string()]));
    }
}
