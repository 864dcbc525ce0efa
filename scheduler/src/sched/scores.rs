//! Scores: among the nodes that fit, which is best? Each gives 0 to 100; the engine adds them
//! up by weight.

use super::snapshot::{NodeInfo, PodInfo, Snapshot};

/// One score stage.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, pod: &PodInfo, node: &NodeInfo, snap: &Snapshot) -> i64;
}

/// The fraction (0..=100) of cpu and memory a node would have in use with the pod.
fn used_after(pod: &PodInfo, node: &NodeInfo) -> (i64, i64) {
    let frac = |req: i64, used: i64, alloc: i64| {
        if alloc <= 0 { 100 } else { ((used + req) * 100 / alloc).clamp(0, 100) }
    };
    (
        frac(pod.requests.cpu_milli, node.requested.cpu_milli, node.allocatable.cpu_milli),
        frac(pod.requests.memory, node.requested.memory, node.allocatable.memory),
    )
}

/// Spreads load: the emptier node wins (kube-scheduler's default, LeastAllocated).
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "LeastAllocated"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let (c, m) = used_after(pod, node);
        100 - (c + m) / 2
    }
}

/// Bin packing: the fuller node wins, leaving whole nodes free (MostAllocated).
pub struct MostAllocated;

impl Score for MostAllocated {
    fn name(&self) -> &'static str {
        "MostAllocated"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let (c, m) = used_after(pod, node);
        (c + m) / 2
    }
}

/// Nodes whose cpu and memory would be used in equal proportion win: no node ends with all
/// its cpu taken and its memory idle.
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "BalancedAllocation"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let (c, m) = used_after(pod, node);
        100 - (c - m).abs()
    }
}

/// Replicas of one owner spread over nodes and zones: a node (and a zone) holding fewer of
/// them wins, so one node's or one zone's loss does not take a whole service down. Zones
/// count for two thirds when nodes carry the zone label, as in kube-scheduler.
pub struct SpreadReplicas;

impl Score for SpreadReplicas {
    fn name(&self) -> &'static str {
        "SpreadReplicas"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo, snap: &Snapshot) -> i64 {
        let Some(owner) = &pod.owner else { return 100 };
        let here = i64::from(node.owners.get(owner).copied().unwrap_or(0));
        let node_score = 100 / (1 + here);
        match &node.zone {
            Some(z) => {
                let in_zone =
                    i64::from(snap.zone_owners.get(owner).and_then(|zs| zs.get(z)).copied().unwrap_or(0));
                let zone_score = 100 / (1 + in_zone);
                (node_score + 2 * zone_score) / 3
            }
            None => node_score,
        }
    }
}

/// Fewer `PreferNoSchedule` taints the pod does not tolerate is better.
pub struct PreferNoScheduleTaints;

impl Score for PreferNoScheduleTaints {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let n = node
            .taints
            .iter()
            .filter(|t| {
                t.effect == "PreferNoSchedule"
                    && !pod.tolerations.iter().any(|x| super::filters::tolerates(x, t))
            })
            .count();
        100 / (1 + i64::try_from(n).unwrap_or(100))
    }
}
