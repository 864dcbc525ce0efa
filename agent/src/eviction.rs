//! Node-pressure eviction, as kubelet's eviction manager does it: when the memory or the
//! node filesystem falls under its `--eviction-hard` threshold, one running pod is evicted
//! per pass — its containers killed, the pod `Failed` with reason `Evicted` and kubelet's
//! message, and a `Warning Evicted` Event — so its controller replaces it elsewhere (the
//! node's pressure taint keeps the replacement away).
//!
//! [`signal`] and [`choose`] are pure: which threshold is crossed, and which pod goes. Memory
//! ranks kubelet's way: pods using more than they requested first, then lower priority, then
//! the larger use over the request. The filesystem ranks by priority alone (pods' own disk use
//! is not measured here).

use crate::config::{Eviction, Threshold};
use crate::node::Facts;

/// Pods at or above this priority (system-cluster-critical and up) are never evicted.
pub const CRITICAL_PRIORITY: i64 = 2_000_000_000;

/// A crossed threshold: the resource kubelet names, the threshold as given, what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub resource: &'static str,
    pub threshold: String,
    pub available: u64,
}

fn threshold_text(t: Threshold) -> String {
    match t {
        Threshold::Amount(a) if a % (1 << 20) == 0 => format!("{}Mi", a >> 20),
        Threshold::Amount(a) => a.to_string(),
        Threshold::Percent(p) => format!("{p}%"),
    }
}

/// The first crossed hard threshold (memory before the filesystem), if any.
pub fn signal(f: &Facts, e: &Eviction) -> Option<Signal> {
    if let Some(t) = e.memory_available.filter(|t| t.crossed(f.memory_available_bytes, f.memory_bytes)) {
        return Some(Signal {
            resource: "memory",
            threshold: threshold_text(t),
            available: f.memory_available_bytes,
        });
    }
    if let Some(t) =
        e.nodefs_available.filter(|t| f.disk_bytes > 0 && t.crossed(f.disk_available_bytes, f.disk_bytes))
    {
        return Some(Signal {
            resource: "ephemeral-storage",
            threshold: threshold_text(t),
            available: f.disk_available_bytes,
        });
    }
    None
}

/// A running pod on the node, as the ranking sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    pub uid: String,
    pub priority: i64,
    /// Per container: name, memory in use, memory requested (bytes).
    pub containers: Vec<(String, u64, u64)>,
}

impl Candidate {
    fn usage(&self) -> u64 {
        self.containers.iter().map(|c| c.1).sum()
    }
    fn request(&self) -> u64 {
        self.containers.iter().map(|c| c.2).sum()
    }
}

/// The pod to evict under `s`, with kubelet's message for it.
pub fn choose(s: &Signal, pods: &[Candidate]) -> Option<(String, String)> {
    let mut ranked: Vec<&Candidate> = pods.iter().filter(|p| p.priority < CRITICAL_PRIORITY).collect();
    if s.resource == "memory" {
        ranked.sort_by(|a, b| {
            let over = |p: &Candidate| p.usage() > p.request();
            over(b)
                .cmp(&over(a))
                .then(a.priority.cmp(&b.priority))
                .then(b.usage().saturating_sub(b.request()).cmp(&a.usage().saturating_sub(a.request())))
        });
    } else {
        ranked.sort_by_key(|p| p.priority);
    }
    let victim = ranked.first()?;
    let mut message = format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}Ki. ",
        s.resource,
        s.threshold,
        s.available / 1024
    );
    if s.resource == "memory" {
        for (name, used, requested) in &victim.containers {
            if used > requested {
                message += &format!(
                    "Container {name} was using {}Ki, request is {}, has larger consumption of memory. ",
                    used / 1024,
                    if *requested == 0 { "0".to_string() } else { format!("{}Ki", requested / 1024) }
                );
            }
        }
    }
    Some((victim.uid.clone(), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, priority: i64, used: u64, requested: u64) -> Candidate {
        Candidate { uid: uid.into(), priority, containers: vec![("c".into(), used << 20, requested << 20)] }
    }

    #[test]
    fn memory_pressure_takes_the_pod_over_its_request_then_the_least_important() {
        let s = Signal { resource: "memory", threshold: "100Mi".into(), available: 50 << 20 };
        // Within its request, however large, a pod goes after one over its request.
        let pods = [
            pod("within", 0, 500, 600),
            pod("over", 10, 200, 100),
            pod("critical", CRITICAL_PRIORITY, 900, 0),
        ];
        let (uid, msg) = choose(&s, &pods).unwrap();
        assert_eq!(uid, "over");
        assert_eq!(
            msg,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. Container c was using 204800Ki, request is 102400Ki, has larger consumption of memory. "
        );
        // Both over: the lower priority first, then the larger excess.
        let pods = [pod("a", 5, 300, 100), pod("b", 1, 150, 100), pod("c", 1, 400, 100)];
        assert_eq!(choose(&s, &pods).unwrap().0, "c");
        assert_eq!(choose(&s, &[pod("critical", CRITICAL_PRIORITY, 1, 0)]), None);
        let disk = Signal { resource: "ephemeral-storage", threshold: "10%".into(), available: 1 << 20 };
        assert_eq!(choose(&disk, &[pod("a", 5, 0, 0), pod("b", 1, 0, 0)]).unwrap().0, "b");
    }
}
