//! Scores: among the nodes that fit, which is best? Each gives 0 to 100; the engine adds them
//! up by weight.

use super::context::{PodContext, term_matches};
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

/// One score stage.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, pod: &PodInfo, ctx: &PodContext, node: &NodeInfo, snap: &Snapshot) -> i64;
    /// False when the score is the same on every node for this pod: it cannot change the
    /// choice, and the engine skips it.
    fn varies(&self, _pod: &PodInfo, _ctx: &PodContext, _snap: &Snapshot) -> bool {
        true
    }
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
    fn score(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
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
    fn score(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
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
    fn score(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
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
    fn varies(&self, _: &PodInfo, ctx: &PodContext, _: &Snapshot) -> bool {
        ctx.owner.is_some()
    }
    fn score(&self, _: &PodInfo, ctx: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
        // No owner, or no replica of it placed anywhere yet: every node is as good.
        let Some(owner) = ctx.owner else { return 100 };
        let here = i64::from(node.owners.iter().find(|(o, _)| *o == owner).map_or(0, |(_, n)| *n));
        let node_score = 100 / (1 + here);
        match node.zone_id {
            Some(z) => {
                let in_zone = i64::from(ctx.owner_zones.get(z).copied().unwrap_or(0));
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
    fn varies(&self, _: &PodInfo, _: &PodContext, snap: &Snapshot) -> bool {
        snap.prefer_no_schedule
    }
    fn score(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
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

/// Preferred node affinity: the share of the preferences' weight the node matches.
pub struct PreferredNodeAffinity;

impl Score for PreferredNodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn varies(&self, pod: &PodInfo, _: &PodContext, _: &Snapshot) -> bool {
        pod.affinity.node_affinity.as_ref().is_some_and(|a| !a.preferred.is_empty())
    }
    fn score(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
        let Some(a) = &pod.affinity.node_affinity else { return 0 };
        let total: i64 = a.preferred.iter().map(|p| i64::from(p.weight.max(0))).sum();
        if total == 0 {
            return 0;
        }
        let hit: i64 = a
            .preferred
            .iter()
            .filter(|p| term_matches(&p.preference, &node.name, &node.labels))
            .map(|p| i64::from(p.weight.max(0)))
            .sum();
        hit * 100 / total
    }
}

/// Preferred pod affinity and anti-affinity: 50 is neutral; domains holding matching pods
/// move it up (affinity) or down (anti-affinity) by the terms' weights.
pub struct PreferredPodAffinity;

impl Score for PreferredPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn varies(&self, _: &PodInfo, ctx: &PodContext, _: &Snapshot) -> bool {
        !ctx.preferred_affinity.is_empty() || !ctx.preferred_anti_affinity.is_empty()
    }
    fn score(&self, _: &PodInfo, ctx: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
        let weight = |terms: &[(i32, super::context::DomainCounts)]| -> (i64, i64) {
            let total: i64 = terms.iter().map(|(w, _)| i64::from(*w)).sum();
            let hit: i64 = terms
                .iter()
                .filter(|(_, t)| {
                    node.topology(&t.topology_key).is_some_and(|d| t.counts.get(d).copied().unwrap_or(0) > 0)
                })
                .map(|(w, _)| i64::from(*w))
                .sum();
            (hit, total)
        };
        let (plus, pt) = weight(&ctx.preferred_affinity);
        let (minus, mt) = weight(&ctx.preferred_anti_affinity);
        let total = pt + mt;
        if total == 0 {
            return 50;
        }
        50 + 50 * (plus - minus) / total
    }
}

/// `ScheduleAnyway` spread constraints: the emptier domain wins.
pub struct SoftTopologySpread;

impl Score for SoftTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn varies(&self, _: &PodInfo, ctx: &PodContext, _: &Snapshot) -> bool {
        ctx.spread.iter().any(|c| !c.hard)
    }
    fn score(&self, _: &PodInfo, ctx: &PodContext, node: &NodeInfo, _: &Snapshot) -> i64 {
        let soft: Vec<_> = ctx.spread.iter().filter(|c| !c.hard).collect();
        if soft.is_empty() {
            return 100;
        }
        let sum: i64 = soft
            .iter()
            .map(|c| match node.topology(&c.counts.topology_key) {
                None => 0,
                Some(d) => {
                    100 / (1 + i64::from(c.counts.counts.get(d).copied().unwrap_or(0).saturating_sub(c.min)))
                }
            })
            .sum();
        sum / i64::try_from(soft.len()).unwrap_or(1)
    }
}
