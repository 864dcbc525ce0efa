//! Filters: can this pod run on this node at all? Each returns the reason it cannot, worded as
//! kube-scheduler words it, so the summary reads like kubectl's.

use super::context::{PodContext, term_matches};
use super::snapshot::{NodeInfo, PodInfo};
use tug_api::kinds::cluster::Taint;
use tug_api::kinds::pod::Toleration;

/// Why a node was passed over.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    NotReady,
    Selector,
    Taint { key: String, value: String },
    Insufficient(String),
    TooManyPods,
    Ports,
    Affinity,
    AntiAffinity,
    ExistingAntiAffinity,
    SpreadMissingLabel,
    Spread,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Selector => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::Taint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Ports => f.write_str("node(s) didn't have free ports for the requested pod ports"),
            Reason::Affinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::SpreadMissingLabel => {
                f.write_str("node(s) didn't match pod topology spread constraints (missing required label)")
            }
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
        }
    }
}

/// One filter stage.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    /// `Ok` when the pod may go there; otherwise every reason it may not (a node short of both
    /// cpu and memory says both).
    fn check(&self, pod: &PodInfo, ctx: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>);
    /// False when the filter cannot refuse any node for this pod (it has nothing the filter
    /// looks at): the engine then skips it for every node.
    fn needed(&self, _pod: &PodInfo, _ctx: &PodContext) -> bool {
        true
    }
}

/// Cordoned nodes (`spec.unschedulable`) take no new pods, unless the pod tolerates the
/// `node.kubernetes.io/unschedulable` taint (as DaemonSet pods do).
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn check(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        if !node.unschedulable {
            return;
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !pod.tolerations.iter().any(|t| tolerates(t, &taint)) {
            reasons.push(Reason::Unschedulable);
        }
    }
}

/// Nodes whose Ready condition is not True take no new pods.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }
    fn check(&self, _: &PodInfo, _: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        if !node.ready {
            reasons.push(Reason::NotReady);
        }
    }
}

/// `spec.nodeSelector` (every label on the node with that value) and the required node
/// affinity (any of its terms matches).
pub struct NodeSelector;

impl Filter for NodeSelector {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn needed(&self, pod: &PodInfo, _: &PodContext) -> bool {
        !pod.node_selector.is_empty()
            || pod.affinity.node_affinity.as_ref().is_some_and(|a| a.required.is_some())
    }
    fn check(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        let selector = pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
        let required = pod.affinity.node_affinity.as_ref().and_then(|a| a.required.as_ref());
        let affinity = required
            .is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, &node.name, &node.labels)));
        if !selector || !affinity {
            reasons.push(Reason::Selector);
        }
    }
}

/// Required pod affinity (the node's topology domain must hold a matching pod — unless none
/// exists anywhere and the pod matches its own term, so a first replica can start) and
/// required anti-affinity (the domain must hold none).
pub struct InterPodAffinity;

impl Filter for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn needed(&self, _: &PodInfo, ctx: &PodContext) -> bool {
        !ctx.affinity.is_empty() || !ctx.anti_affinity.is_empty() || !ctx.forbidden.is_empty()
    }
    fn check(&self, _: &PodInfo, ctx: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        let in_domain = |t: &super::context::DomainCounts| {
            node.topology(&t.topology_key).map(|d| t.counts.get(d).copied().unwrap_or(0))
        };
        let affinity_ok = ctx.affinity.iter().all(|t| match in_domain(t) {
            None => false,
            Some(n) => n > 0 || (t.total == 0 && t.matches_self),
        });
        if !affinity_ok {
            reasons.push(Reason::Affinity);
        }
        // One anti-affinity reason per node, the pod's own first (as kube-scheduler says it).
        if ctx.anti_affinity.iter().any(|t| in_domain(t).is_some_and(|n| n > 0)) {
            reasons.push(Reason::AntiAffinity);
        } else if ctx
            .forbidden
            .iter()
            .any(|(key, domains)| node.topology(key).is_some_and(|d| domains.contains(d)))
        {
            reasons.push(Reason::ExistingAntiAffinity);
        }
    }
}

/// `topologySpreadConstraints` with `DoNotSchedule`: placing the pod must keep the domain
/// within `maxSkew` of the emptiest domain.
pub struct TopologySpread;

impl Filter for TopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn needed(&self, _: &PodInfo, ctx: &PodContext) -> bool {
        ctx.spread.iter().any(|c| c.hard)
    }
    fn check(&self, _: &PodInfo, ctx: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        for c in ctx.spread.iter().filter(|c| c.hard) {
            let Some(domain) = node.topology(&c.counts.topology_key) else {
                reasons.push(Reason::SpreadMissingLabel);
                return;
            };
            let here = c.counts.counts.get(domain).copied().unwrap_or(0) + u32::from(c.counts.matches_self);
            if here.saturating_sub(c.min) > c.max_skew {
                reasons.push(Reason::Spread);
                return;
            }
        }
    }
}

/// Whether a toleration tolerates a taint (Kubernetes' rules: an empty key with `Exists`
/// tolerates everything; an empty effect matches every effect).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => key == taint.key && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// Taints with `NoSchedule` or `NoExecute` the pod does not tolerate keep it off.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn check(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        let blocking = node.taints.iter().find(|taint| {
            matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !pod.tolerations.iter().any(|t| tolerates(t, taint))
        });
        if let Some(t) = blocking {
            reasons.push(Reason::Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default() });
        }
    }
}

/// Requests against allocatable minus what is assigned: cpu, memory, ephemeral storage,
/// extended resources (`tug.io/gpu`), and the pod count.
pub struct Fit;

impl Filter for Fit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn check(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        let (a, u, r) = (&node.allocatable, &node.requested, &pod.requests);
        if u.pods + 1 > a.pods {
            reasons.push(Reason::TooManyPods);
        }
        for (name, want, free) in [
            ("cpu", r.cpu_milli, a.cpu_milli - u.cpu_milli),
            ("memory", r.memory, a.memory - u.memory),
            ("ephemeral-storage", r.ephemeral, a.ephemeral - u.ephemeral),
        ] {
            if want > 0 && want > free {
                reasons.push(Reason::Insufficient(name.into()));
            }
        }
        for (name, want) in &r.extended {
            if *want > 0 && *want > a.extended(name) - u.extended(name) {
                reasons.push(Reason::Insufficient(name.clone()));
            }
        }
    }
}

/// Host ports already taken on the node.
pub struct HostPorts;

impl Filter for HostPorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn needed(&self, pod: &PodInfo, _: &PodContext) -> bool {
        !pod.host_ports.is_empty()
    }
    fn check(&self, pod: &PodInfo, _: &PodContext, node: &NodeInfo, reasons: &mut Vec<Reason>) {
        if pod.host_ports.iter().any(|p| node.used_ports.contains(p)) {
            reasons.push(Reason::Ports);
        }
    }
}
