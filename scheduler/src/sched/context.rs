//! What filters and scores need to know about the rest of the cluster for one pod, computed
//! once per pod before the nodes are visited: for each pod (anti-)affinity term and each
//! topology spread constraint, how many matching pods each topology domain holds. The node
//! loop then answers in O(1) per node.

use super::snapshot::{PodInfo, Snapshot};
use std::collections::HashMap;
use tug_api::kinds::pod::{NodeSelectorTerm, PodAffinityTerm};
use tug_api::labels::Selector;

/// One term, compiled: its topology key, the matching pods per domain, and the total.
#[derive(Debug, Clone)]
pub struct DomainCounts {
    pub topology_key: String,
    pub counts: HashMap<String, u32>,
    pub total: u32,
    /// The pod being placed matches the term itself (a first replica may then go anywhere).
    pub matches_self: bool,
}

/// A topology spread constraint, compiled.
#[derive(Debug, Clone)]
pub struct Spread {
    pub counts: DomainCounts,
    pub max_skew: u32,
    pub hard: bool,
    /// The smallest count over the domains that exist (nodes carrying the key).
    pub min: u32,
}

/// The per-pod context.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub affinity: Vec<DomainCounts>,
    pub anti_affinity: Vec<DomainCounts>,
    pub preferred_affinity: Vec<(i32, DomainCounts)>,
    pub preferred_anti_affinity: Vec<(i32, DomainCounts)>,
    pub spread: Vec<Spread>,
    /// A term or constraint whose selector does not compile: nothing can match it.
    pub invalid: Option<String>,
    /// The pod's owner's id in the snapshot (none: no replica placed yet, or no owner).
    pub owner: Option<u32>,
    /// The owner's replicas per zone id.
    pub owner_zones: Vec<u32>,
    /// Domains placed pods' required anti-affinity keeps this pod out of: topology key →
    /// domain values.
    pub forbidden: HashMap<String, std::collections::HashSet<String>>,
}

/// The domains whose placed pods' required anti-affinity terms match `pod`.
fn forbidden(pod: &PodInfo, snap: &Snapshot) -> HashMap<String, std::collections::HashSet<String>> {
    let mut out: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    if snap.existing_anti.is_empty() {
        return out;
    }
    let mut seen = std::collections::HashSet::new();
    let candidates = pod
        .labels
        .iter()
        .filter_map(|(k, v)| snap.anti_by_label.get(&(k.clone(), v.clone())))
        .flatten()
        .chain(&snap.anti_unanchored);
    for &id in candidates {
        if !seen.insert(id) {
            continue;
        }
        let t = &snap.existing_anti[id];
        let ns_ok = if t.namespaces.is_empty() {
            t.namespace == pod.namespace
        } else {
            t.namespaces.contains(&pod.namespace)
        };
        if ns_ok && t.selector.matches(&pod.labels) {
            if let Some(d) = snap.nodes[t.node].topology(&t.topology_key) {
                out.entry(t.topology_key.clone()).or_default().insert(d.to_string());
            }
        }
    }
    out
}

fn selector(term_selector: Option<&tug_api::labels::LabelSelector>) -> Result<Selector, String> {
    match term_selector {
        None => {
            Ok(Selector { requirements: vec![tug_api::labels::Requirement::Exists("\u{0}never".into())] })
        }
        Some(s) => s.to_selector("labelSelector").map_err(|e| e.to_string()),
    }
}

/// The `(key, value)` labels of which an object must carry one to match `sel` (its first
/// `=` or `in` requirement), or None when no such requirement narrows it down.
pub fn anchor(sel: &Selector) -> Option<Vec<(String, String)>> {
    use tug_api::labels::Requirement;
    sel.requirements.iter().find_map(|r| match r {
        Requirement::Equals(k, v) => Some(vec![(k.clone(), v.clone())]),
        Requirement::In(k, vs) => Some(vs.iter().map(|v| (k.clone(), v.clone())).collect()),
        _ => None,
    })
}

fn count(snap: &Snapshot, pod: &PodInfo, key: &str, sel: &Selector, namespaces: &[String]) -> DomainCounts {
    let ns_ok = |ns: &str| {
        if namespaces.is_empty() { ns == pod.namespace } else { namespaces.iter().any(|n| n == ns) }
    };
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut total = 0;
    let mut tally = |node: usize, slot: usize, counts: &mut HashMap<String, u32>| {
        let n = &snap.nodes[node];
        let Some((ns, labels)) = n.pods.get(slot) else { return };
        if !(ns_ok(ns) && sel.matches(labels)) {
            return;
        }
        if let Some(domain) = n.topology(key) {
            *counts.entry(domain.to_string()).or_default() += 1;
            total += 1;
        }
    };
    // A selector with an `key = value` requirement only needs the pods carrying that label.
    match anchor(sel) {
        Some(pairs) => {
            for pair in pairs {
                for &(node, slot) in snap.by_label.get(&pair).map(Vec::as_slice).unwrap_or(&[]) {
                    tally(node, slot, &mut counts);
                }
            }
        }
        None => {
            for (i, n) in snap.nodes.iter().enumerate() {
                for slot in 0..n.pods.len() {
                    tally(i, slot, &mut counts);
                }
            }
        }
    }
    DomainCounts {
        topology_key: key.to_string(),
        counts,
        total,
        matches_self: ns_ok(&pod.namespace) && sel.matches(&pod.labels),
    }
}

impl PodContext {
    pub fn new(pod: &PodInfo, snap: &Snapshot) -> PodContext {
        let mut ctx = PodContext {
            owner: pod.owner.as_deref().and_then(|o| snap.owner_id(o)),
            ..PodContext::default()
        };
        ctx.owner_zones = ctx.owner.and_then(|o| snap.zone_owners.get(&o).cloned()).unwrap_or_default();
        ctx.forbidden = forbidden(pod, snap);
        let mut term = |t: &PodAffinityTerm| -> Option<DomainCounts> {
            match selector(t.label_selector.as_ref()) {
                Ok(sel) => Some(count(snap, pod, &t.topology_key, &sel, &t.namespaces)),
                Err(e) => {
                    ctx.invalid = Some(e);
                    None
                }
            }
        };
        let (mut aff, mut anti, mut paff, mut panti) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if let Some(a) = &pod.affinity.pod_affinity {
            aff = a.required.iter().filter_map(&mut term).collect();
            paff = a.preferred.iter().filter_map(|w| Some((w.weight, term(&w.pod_affinity_term)?))).collect();
        }
        if let Some(a) = &pod.affinity.pod_anti_affinity {
            anti = a.required.iter().filter_map(&mut term).collect();
            panti =
                a.preferred.iter().filter_map(|w| Some((w.weight, term(&w.pod_affinity_term)?))).collect();
        }
        let mut spread = Vec::new();
        for c in &pod.spread {
            match selector(c.label_selector.as_ref()) {
                Ok(sel) => {
                    let counts = count(snap, pod, &c.topology_key, &sel, &[]);
                    // Domains without a matching pod count as 0.
                    let domains = snap.domains(&c.topology_key);
                    let mut min =
                        domains.iter().map(|d| counts.counts.get(d).copied().unwrap_or(0)).min().unwrap_or(0);
                    // `minDomains`: fewer domains than that, and the global minimum is 0 — so
                    // pods stay off full domains until new ones (nodes in other zones) come.
                    let hard = c.when_unsatisfiable != "ScheduleAnyway";
                    if hard && c.min_domains.is_some_and(|m| usize::try_from(m).unwrap_or(0) > domains.len())
                    {
                        min = 0;
                    }
                    spread.push(Spread {
                        counts,
                        max_skew: u32::try_from(c.max_skew.max(1)).unwrap_or(1),
                        hard,
                        min,
                    });
                }
                Err(e) => ctx.invalid = Some(e),
            }
        }
        ctx.affinity = aff;
        ctx.anti_affinity = anti;
        ctx.preferred_affinity = paff;
        ctx.preferred_anti_affinity = panti;
        ctx.spread = spread;
        ctx
    }
}

/// Whether a node matches a node selector term (requirements ANDed; `matchFields` knows
/// `metadata.name`).
pub fn term_matches(
    term: &NodeSelectorTerm,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let check = |key: &str, op: &str, values: &[String], have: Option<&str>| -> bool {
        match op {
            "In" => have.is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => have.is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            "Gt" | "Lt" => {
                let (Some(h), Some(w)) = (
                    have.and_then(|v| v.parse::<i64>().ok()),
                    values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if op == "Gt" { h > w } else { h < w }
            }
            _ => {
                let _ = key;
                false
            }
        }
    };
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        return false;
    }
    term.match_expressions
        .iter()
        .all(|r| check(&r.key, &r.operator, &r.values, labels.get(&r.key).map(String::as_str)))
        && term
            .match_fields
            .iter()
            .all(|r| check(&r.key, &r.operator, &r.values, (r.key == "metadata.name").then_some(name)))
}
