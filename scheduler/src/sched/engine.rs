//! The scheduling decision: filter, then score, over a snapshot. Pure: it returns the chosen
//! node or why none fits; binding is the caller's business.

use super::context::PodContext;
use super::filters::{self, Filter, Reason};
use super::scores::{self, Score};
use super::snapshot::{NodeInfo, PodInfo, Snapshot};
use std::collections::BTreeMap;

/// How nodes are filled: spread (the default) or packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    LeastAllocated,
    MostAllocated,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "least-allocated" | "spread" => Ok(Strategy::LeastAllocated),
            "most-allocated" | "bin-packing" => Ok(Strategy::MostAllocated),
            other => Err(format!("unknown scoring strategy {other:?} (least-allocated or most-allocated)")),
        }
    }
}

/// No node fits: how many nodes there were, and how many gave each reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub nodes: usize,
    pub reasons: BTreeMap<Reason, usize>,
}

impl std::fmt::Display for Unschedulable {
    /// `0/5 nodes are available: 3 Insufficient memory, 2 node(s) had untolerated taint
    /// {dedicated: gpu}.` — most frequent first, as kubectl shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rs: Vec<(&Reason, &usize)> = self.reasons.iter().collect();
        rs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.to_string().cmp(&b.0.to_string())));
        let parts: Vec<String> = rs.iter().map(|(r, n)| format!("{n} {r}")).collect();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available.", self.nodes)
        } else {
            write!(f, "0/{} nodes are available: {}.", self.nodes, parts.join(", "))
        }
    }
}

/// A preemption: the node, and the lower-priority pods to remove so the pod fits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<String>,
}

/// The chain of filters and weighted scores.
pub struct Engine {
    filters: Vec<Box<dyn Filter>>,
    scores: Vec<(Box<dyn Score>, i64)>,
    /// Where the next search starts, so that sampling does not always favour the first nodes.
    next_start: usize,
}

impl Engine {
    pub fn new(strategy: Strategy) -> Engine {
        // Filters run cheapest and most decisive first: a cordoned or unready node is out
        // whatever the pod is; the selector and taints are label lookups; the resource sums
        // come next; host ports (a scan of the node's ports) last.
        let filters: Vec<Box<dyn Filter>> = vec![
            Box::new(filters::NodeUnschedulable),
            Box::new(filters::NodeReady),
            Box::new(filters::NodeSelector),
            Box::new(filters::TaintToleration),
            Box::new(filters::Fit),
            Box::new(filters::HostPorts),
            // Last: they read the per-pod domain counts, the most work per node.
            Box::new(filters::InterPodAffinity),
            Box::new(filters::TopologySpread),
        ];
        // Weights as kube-scheduler's defaults: spreading replicas (2) and avoiding
        // PreferNoSchedule taints (3) outweigh the resource scores (1 each).
        let fill: Box<dyn Score> = match strategy {
            Strategy::LeastAllocated => Box::new(scores::LeastAllocated),
            Strategy::MostAllocated => Box::new(scores::MostAllocated),
        };
        let scores: Vec<(Box<dyn Score>, i64)> = vec![
            (fill, 1),
            (Box::new(scores::BalancedAllocation), 1),
            (Box::new(scores::SpreadReplicas), 2),
            (Box::new(scores::PreferNoScheduleTaints), 3),
            (Box::new(scores::PreferredNodeAffinity), 2),
            (Box::new(scores::PreferredPodAffinity), 2),
            (Box::new(scores::SoftTopologySpread), 2),
        ];
        Engine { filters, scores, next_start: 0 }
    }

    /// How many feasible nodes to find before scoring (kube-scheduler's adaptive
    /// percentageOfNodesToScore: all of a small cluster, 10% of 5,000 nodes, at least 100).
    pub fn feasible_to_find(nodes: usize) -> usize {
        if nodes < 100 {
            return nodes;
        }
        let percent = 50usize.saturating_sub(nodes / 125).max(5);
        (nodes * percent / 100).max(100)
    }

    /// Runs the filters on one node into `why` (cleared first): all of them, or up to the
    /// first that refuses. True when the node fits.
    fn filter(
        &self,
        pod: &PodInfo,
        ctx: &PodContext,
        node: &NodeInfo,
        why: &mut Vec<Reason>,
        all: bool,
    ) -> bool {
        Self::filter_with(self.filters.iter().map(|f| &**f), pod, ctx, node, why, all)
    }

    /// [`Engine::filter`] with the given filters.
    fn filter_with<'f>(
        filters: impl Iterator<Item = &'f dyn Filter>,
        pod: &PodInfo,
        ctx: &PodContext,
        node: &NodeInfo,
        why: &mut Vec<Reason>,
        all: bool,
    ) -> bool {
        why.clear();
        for f in filters {
            f.check(pod, ctx, node, why);
            if !all && !why.is_empty() {
                return false;
            }
        }
        why.is_empty()
    }

    /// When the pod fits nowhere: the node where removing the fewest, least important
    /// lower-priority pods makes it fit (victims chosen lowest priority first, then the most
    /// recently placed; nodes compared by their most important victim, then by how many).
    /// Nodes that fail for reasons eviction cannot fix (selector, taints, affinity) are skipped.
    pub fn preempt(&self, pod: &PodInfo, snap: &Snapshot) -> Option<Preemption> {
        let ctx = PodContext::new(pod, snap);
        let fixable = |r: &Reason| matches!(r, Reason::Insufficient(_) | Reason::TooManyPods | Reason::Ports);
        let mut best: Option<((i32, usize), Preemption)> = None;
        for node in &snap.nodes {
            let mut why = Vec::new();
            self.filter(pod, &ctx, node, &mut why, true);
            if why.is_empty() || !why.iter().all(fixable) {
                continue;
            }
            // Pods already on their way out free the node without anyone else going: when
            // that is enough, the pod waits for them (Kubernetes' preemptor does too).
            let mut sim = node.clone();
            for t in node.placed.iter().filter(|p| p.terminating) {
                sim.evict(&t.key);
            }
            if self.filter(pod, &ctx, &sim, &mut why, false) {
                let p = Preemption { node: node.name.clone(), victims: Vec::new() };
                if best.as_ref().is_none_or(|(b, _)| (i32::MIN, 0) < *b) {
                    best = Some(((i32::MIN, 0), p));
                }
                continue;
            }
            let mut candidates: Vec<&super::snapshot::Placed> =
                node.placed.iter().filter(|p| p.priority < pod.priority && !p.terminating).collect();
            // Least important first; among equals the most recently placed.
            candidates.reverse();
            candidates.sort_by_key(|p| p.priority);
            let mut victims = Vec::new();
            for c in candidates {
                sim.evict(&c.key);
                victims.push((c.priority, c.key.clone()));
                if self.filter(pod, &ctx, &sim, &mut why, false) {
                    break;
                }
            }
            if !why.is_empty() {
                continue;
            }
            let cost = (victims.iter().map(|v| v.0).max().unwrap_or(i32::MIN), victims.len());
            if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                let victims = victims.into_iter().map(|v| v.1).collect();
                best = Some((cost, Preemption { node: node.name.clone(), victims }));
            }
        }
        best.map(|(_, p)| p)
    }

    /// Picks a node for the pod.
    pub fn schedule(&mut self, pod: &PodInfo, snap: &Snapshot) -> Result<String, Unschedulable> {
        let n = snap.nodes.len();
        let want = Self::feasible_to_find(n);
        let mut feasible: Vec<usize> = Vec::with_capacity(want.min(n));
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut why = Vec::new();
        let start = if n == 0 { 0 } else { self.next_start % n };
        let ctx = PodContext::new(pod, snap);
        // Only the stages that can tell nodes apart for this pod.
        let filters: Vec<&dyn Filter> =
            self.filters.iter().map(|f| &**f).filter(|f| f.needed(pod, &ctx)).collect();
        let scores: Vec<(&dyn Score, i64)> =
            self.scores.iter().filter(|(s, _)| s.varies(pod, &ctx, snap)).map(|(s, w)| (&**s, *w)).collect();
        let mut checked = 0;
        for k in 0..n {
            let i = (start + k) % n;
            checked = k + 1;
            if Self::filter_with(filters.iter().copied(), pod, &ctx, &snap.nodes[i], &mut why, false) {
                feasible.push(i);
                if feasible.len() >= want {
                    break;
                }
            } else {
                for r in why.drain(..) {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
        self.next_start = start + checked;
        if feasible.is_empty() {
            return Err(Unschedulable { nodes: n, reasons });
        }
        let best = feasible
            .iter()
            .map(|&i| {
                let node = &snap.nodes[i];
                let total: i64 = scores.iter().map(|(s, w)| w * s.score(pod, &ctx, node, snap)).sum();
                (total, i)
            })
            .fold(None, |acc: Option<(i64, usize)>, (s, i)| match acc {
                Some((bs, _)) if bs >= s => acc,
                _ => Some((s, i)),
            });
        Ok(best.map(|(_, i)| snap.nodes[i].name.clone()).unwrap_or_default())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sched::snapshot::{NodeInfo, PodInfo, Snapshot};
    use serde_json::{Value, json};
    use tug_api::kinds::cluster::Node;
    use tug_api::kinds::pod::Pod;

    pub(crate) fn node(name: &str, cpu: &str, mem: &str, extra: Value) -> Node {
        let mut v = json!({
            "metadata": {"name": name, "labels": {}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    pub(crate) fn pod(name: &str, cpu: &str, mem: &str, extra: Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn reasons_for(p: &Pod, n: &Node) -> Vec<String> {
        let (pi, ni) = (PodInfo::new(p), NodeInfo::new(n));
        let mut out = Vec::new();
        let ctx = PodContext::new(&pi, &Snapshot::new(vec![ni.clone()]));
        for f in Engine::new(Strategy::LeastAllocated).filters {
            f.check(&pi, &ctx, &ni, &mut out);
        }
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn each_filter_gives_its_reason() {
        let plain = pod("p", "100m", "64Mi", json!({}));
        let cases: Vec<(&str, Node, Pod, Vec<&str>)> = vec![
            ("fits", node("n", "2", "4Gi", json!({})), plain.clone(), vec![]),
            (
                "cordoned",
                node("n", "2", "4Gi", json!({"spec": {"unschedulable": true}})),
                plain.clone(),
                vec!["node(s) were unschedulable"],
            ),
            (
                "cordoned, tolerated",
                node("n", "2", "4Gi", json!({"spec": {"unschedulable": true}})),
                pod(
                    "p",
                    "1",
                    "1",
                    json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}}),
                ),
                vec![],
            ),
            (
                "not ready",
                node(
                    "n",
                    "2",
                    "4Gi",
                    json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
                ),
                plain.clone(),
                vec!["node(s) were not ready"],
            ),
            (
                "selector",
                node("n", "2", "4Gi", json!({"metadata": {"labels": {"disk": "hdd"}}})),
                pod("p", "1", "1", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                vec!["node(s) didn't match Pod's node affinity/selector"],
            ),
            (
                "taint",
                node(
                    "n",
                    "2",
                    "4Gi",
                    json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
                ),
                plain.clone(),
                vec!["node(s) had untolerated taint {dedicated: gpu}"],
            ),
            (
                "taint tolerated",
                node(
                    "n",
                    "2",
                    "4Gi",
                    json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
                ),
                pod(
                    "p",
                    "1",
                    "1",
                    json!({"spec": {"tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
                ),
                vec![],
            ),
            (
                "prefer-no-schedule does not filter",
                node(
                    "n",
                    "2",
                    "4Gi",
                    json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
                ),
                plain.clone(),
                vec![],
            ),
            (
                "cpu and memory",
                node("n", "1", "1Gi", json!({})),
                pod("p", "2", "2Gi", json!({})),
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            (
                "gpu",
                node("n", "2", "4Gi", json!({"status": {"allocatable": {"tug.io/gpu": "1"}}})),
                pod(
                    "p",
                    "1",
                    "1",
                    json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"tug.io/gpu": "2"}}}]}}),
                ),
                vec!["Insufficient tug.io/gpu"],
            ),
            (
                "pods",
                node("n", "2", "4Gi", json!({"status": {"allocatable": {"pods": "0"}}})),
                plain.clone(),
                vec!["Too many pods"],
            ),
        ];
        for (name, n, p, want) in cases {
            assert_eq!(reasons_for(&p, &n), want, "{name}");
        }
    }

    #[test]
    fn host_ports_and_the_summary_line() {
        let with_port = |name: &str| {
            pod(
                name,
                "1m",
                "1",
                json!({"spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
            )
        };
        let nodes = vec![
            node("a", "1", "1Gi", json!({})),
            node("b", "1", "1Gi", json!({})),
            node(
                "c",
                "4",
                "8Gi",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            ),
        ];
        let mut snap = Snapshot::from_objects(&nodes, &[]);
        let mut e = Engine::new(Strategy::LeastAllocated);
        let first = e.schedule(&PodInfo::new(&with_port("w1")), &snap).unwrap();
        snap.assume(&first, &PodInfo::new(&with_port("w1")));
        let second = e.schedule(&PodInfo::new(&with_port("w2")), &snap).unwrap();
        assert_ne!(first, second, "the host port is taken on {first}");
        let big = pod("big", "2", "2Gi", json!({}));
        let err = e.schedule(&PodInfo::new(&big), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 2 Insufficient cpu, 2 Insufficient memory, 1 node(s) had untolerated taint {dedicated: gpu}."
        );
    }

    #[test]
    fn strategies_spread_or_pack_and_replicas_spread() {
        let nodes = vec![node("a", "4", "8Gi", json!({})), node("b", "4", "8Gi", json!({}))];
        let snap =
            Snapshot::from_objects(&nodes, &[pod("x", "2", "4Gi", json!({"spec": {"nodeName": "a"}}))]);
        let p = PodInfo::new(&pod("p", "1", "1Gi", json!({})));
        assert_eq!(Engine::new(Strategy::LeastAllocated).schedule(&p, &snap).unwrap(), "b");
        assert_eq!(Engine::new(Strategy::MostAllocated).schedule(&p, &snap).unwrap(), "a");
        // Replicas of one owner alternate between equal nodes even when packing would stack
        // them.
        let owned = |n: &str| {
            PodInfo::new(&pod(
                n,
                "10m",
                "10Mi",
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u1", "controller": true}]}}),
            ))
        };
        let mut snap = Snapshot::from_objects(&nodes, &[]);
        let mut e = Engine::new(Strategy::MostAllocated);
        let mut placed = Vec::new();
        for i in 0..4 {
            let r = owned(&format!("r{i}"));
            let n = e.schedule(&r, &snap).unwrap();
            snap.assume(&n, &r);
            placed.push(n);
        }
        assert_eq!(placed.iter().filter(|n| *n == "a").count(), 2, "{placed:?}");
    }

    #[test]
    fn sampling_finds_a_tenth_of_five_thousand_nodes() {
        assert_eq!(Engine::feasible_to_find(50), 50);
        assert_eq!(Engine::feasible_to_find(5000), 500);
        assert_eq!(Engine::feasible_to_find(15000), 750);
        assert_eq!(Engine::feasible_to_find(200), 100);
    }

    fn place_all(e: &mut Engine, snap: &mut Snapshot, pods: &[Pod]) -> Vec<Result<String, String>> {
        pods.iter()
            .map(|p| {
                let info = PodInfo::new(p);
                let r = e.schedule(&info, snap).map_err(|u| u.to_string());
                if let Ok(n) = &r {
                    snap.assume(n, &info);
                }
                r
            })
            .collect()
    }

    #[test]
    fn node_affinity_required_and_preferred() {
        let nodes = vec![
            node("a", "4", "8Gi", json!({"metadata": {"labels": {"disk": "hdd", "gen": "3"}}})),
            node("b", "4", "8Gi", json!({"metadata": {"labels": {"disk": "ssd", "gen": "5"}}})),
            node("c", "4", "8Gi", json!({"metadata": {"labels": {"disk": "ssd", "gen": "4"}}})),
        ];
        let mut snap = Snapshot::from_objects(&nodes, &[]);
        let mut e = Engine::new(Strategy::LeastAllocated);
        let required = pod(
            "r",
            "1m",
            "1",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}, {"key": "gen", "operator": "Gt", "values": ["4"]}]}
            ]}}}}}),
        );
        let preferred = pod(
            "p",
            "1m",
            "1",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}}
            ]}}}}),
        );
        let nowhere = pod(
            "n",
            "1m",
            "1",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]}
            ]}}}}}),
        );
        let got = place_all(&mut e, &mut snap, &[required, preferred, nowhere]);
        assert_eq!(got[0], Ok("b".to_string()));
        assert_eq!(got[1], Ok("c".to_string()));
        assert_eq!(
            got[2],
            Err("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.".into())
        );
    }

    #[test]
    fn pod_anti_affinity_affinity_and_topology_spread() {
        let zone = |z: &str| json!({"metadata": {"labels": {"topology.kubernetes.io/zone": z}}});
        let nodes = vec![
            node("a1", "8", "16Gi", zone("a")),
            node("a2", "8", "16Gi", zone("a")),
            node("b1", "8", "16Gi", zone("b")),
        ];
        let mut snap = Snapshot::from_objects(&nodes, &[]);
        let mut e = Engine::new(Strategy::MostAllocated);
        // One replica per host, however packing would like them.
        let anti = |n: &str| {
            pod(
                n,
                "1m",
                "1",
                json!({"metadata": {"labels": {"app": "db"}}, "spec": {"affinity": {"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]
                }}}}),
            )
        };
        let got = place_all(&mut e, &mut snap, &[anti("d0"), anti("d1"), anti("d2"), anti("d3")]);
        let mut hosts: Vec<String> = got[..3].iter().map(|r| r.clone().unwrap()).collect();
        hosts.sort();
        assert_eq!(hosts, ["a1", "a2", "b1"]);
        assert_eq!(
            got[3],
            Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
        );
        // minDomains: three domains exist but five are wanted, so the minimum counts as 0 and
        // each zone takes at most maxSkew (1) of the pods.
        let spread5 = |n: &str| {
            pod(
                n,
                "1m",
                "1",
                json!({"metadata": {"labels": {"app": "sharded"}}, "spec": {"topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                     "minDomains": 5, "labelSelector": {"matchLabels": {"app": "sharded"}}}]}}),
            )
        };
        let three_zones = [
            node("z1", "8", "16Gi", zone("a")),
            node("z2", "8", "16Gi", zone("b")),
            node("z3", "8", "16Gi", zone("c")),
        ];
        let mut snap = Snapshot::from_objects(&three_zones, &[]);
        let got = place_all(&mut e, &mut snap, &[spread5("s0"), spread5("s1"), spread5("s2"), spread5("s3")]);
        assert!(got[..3].iter().all(Result::is_ok), "{got:?}");
        assert_eq!(
            got[3],
            Err("0/3 nodes are available: 3 node(s) didn't match pod topology spread constraints.".into())
        );
        // Symmetry: a pod with no affinity of its own stays out of the hosts whose placed pods'
        // anti-affinity matches it.
        let loner = pod(
            "loner",
            "1m",
            "1",
            json!({"metadata": {"labels": {"app": "noisy"}}, "spec": {"nodeName": "a1", "affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"}]
            }}}}),
        );
        let mut snap = Snapshot::from_objects(&nodes, &[loner]);
        let web = |n: &str| pod(n, "1m", "1", json!({"metadata": {"labels": {"app": "web"}}}));
        assert_eq!(
            place_all(&mut e, &mut snap, &[web("w0"), web("w1")]),
            [Ok("b1".to_string()), Ok("b1".to_string())]
        );
        let only_a = [node("a1", "8", "16Gi", zone("a"))];
        let mut snap = Snapshot::from_objects(
            &only_a,
            &[pod(
                "loner",
                "1m",
                "1",
                json!({"metadata": {"labels": {"app": "noisy"}}, "spec": {"nodeName": "a1", "affinity": {"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]
                }}}}),
            )],
        );
        assert_eq!(
            place_all(&mut e, &mut snap, &[web("w2")]),
            [Err("0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
                .to_string())]
        );
        // Affinity: next to the cache, in its zone.
        let cache = pod(
            "cache",
            "1m",
            "1",
            json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"nodeName": "b1"}}),
        );
        let mut snap = Snapshot::from_objects(&nodes, &[cache]);
        let near = pod(
            "web",
            "1m",
            "1",
            json!({"spec": {"affinity": {"podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]
            }}}}),
        );
        assert_eq!(place_all(&mut e, &mut snap, &[near]), [Ok("b1".to_string())]);
        // Spread over zones with maxSkew 1: a, b, then a or b, never three in one zone.
        let mut snap = Snapshot::from_objects(&nodes, &[]);
        let spread = |n: &str| {
            pod(
                n,
                "1m",
                "1",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}
                ]}}),
            )
        };
        let got = place_all(&mut e, &mut snap, &(0..6).map(|i| spread(&format!("w{i}"))).collect::<Vec<_>>());
        let in_zone = |z: char| got.iter().filter(|r| r.as_ref().unwrap().starts_with(z)).count();
        assert_eq!((in_zone('a'), in_zone('b')), (3, 3), "{got:?}");
    }

    #[test]
    fn preemption_removes_the_cheapest_lower_priority_pods() {
        let nodes = vec![node("a", "1", "8Gi", json!({})), node("b", "1", "8Gi", json!({}))];
        let prio = |n: &str, cpu: &str, p: i32, on: &str| {
            pod(n, cpu, "1", json!({"spec": {"priority": p, "nodeName": on}}))
        };
        let placed = [
            prio("a-low", "500m", 10, "a"),
            prio("a-mid", "500m", 100, "a"),
            prio("b-low1", "500m", 10, "b"),
            prio("b-low2", "500m", 10, "b"),
        ];
        let snap = Snapshot::from_objects(&nodes, &placed);
        let e = Engine::new(Strategy::LeastAllocated);
        let urgent = PodInfo::new(&pod("urgent", "1", "1", json!({"spec": {"priority": 1000}})));
        // a would need its priority-100 pod gone; b only priority-10 ones.
        let p = e.preempt(&urgent, &snap).unwrap();
        assert_eq!(p.node, "b");
        assert_eq!(p.victims.len(), 2);
        let small = PodInfo::new(&pod("small", "400m", "1", json!({"spec": {"priority": 1000}})));
        let p = e.preempt(&small, &snap).unwrap();
        assert_eq!(p.victims.len(), 1, "one victim is enough: {p:?}");
        // Nobody lower: no preemption.
        let low = PodInfo::new(&pod("low", "1", "1", json!({"spec": {"priority": 5}})));
        assert_eq!(e.preempt(&low, &snap), None);
        // A system-critical class outranks everything.
        let critical = PodInfo::new(&pod(
            "dns",
            "1",
            "1",
            json!({"spec": {"priorityClassName": "system-cluster-critical"}}),
        ));
        assert!(e.preempt(&critical, &snap).is_some());
    }

    proptest::proptest! {
        /// Whatever the nodes and pods, a pod is only ever placed where it fits, counting what
        /// was placed before it.
        #[test]
        fn a_bound_pod_always_fits_its_node(
            nodes in proptest::collection::vec((1u32..8, 1u32..16), 1..12),
            pods in proptest::collection::vec((1u32..3000, 1u32..4096), 1..60),
        ) {
            let ns: Vec<Node> = nodes.iter().enumerate()
                .map(|(i, (c, m))| node(&format!("n{i}"), &c.to_string(), &format!("{m}Gi"), json!({})))
                .collect();
            let mut snap = Snapshot::from_objects(&ns, &[]);
            let mut e = Engine::new(Strategy::MostAllocated);
            for (i, (c, m)) in pods.iter().enumerate() {
                let p = PodInfo::new(&pod(&format!("p{i}"), &format!("{c}m"), &format!("{m}Mi"), json!({})));
                if let Ok(name) = e.schedule(&p, &snap) {
                    snap.assume(&name, &p);
                    let n = snap.node(&name).unwrap();
                    proptest::prop_assert!(n.requested.cpu_milli <= n.allocatable.cpu_milli);
                    proptest::prop_assert!(n.requested.memory <= n.allocatable.memory);
                }
            }
        }
    }
}
