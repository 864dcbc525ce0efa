//! The scheduler's view of the cluster: nodes with what they offer and what is assigned to
//! them, and the pod being placed, precomputed once so that filters and scores are plain
//! arithmetic. Built from API objects; pure.

use std::collections::{BTreeMap, HashMap};
use tug_api::kinds::cluster::{Node, Taint};
use tug_api::kinds::pod::{Pod, PodSpec, Toleration};
use tug_api::quantity::Quantity;

/// Amounts of the resources a node offers and pods request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral: i64,
    pub pods: i64,
    /// Extended resources (`tug.io/gpu`, …), sorted by name.
    pub extended: Vec<(String, i64)>,
}

fn amount(q: &Quantity, milli: bool) -> i64 {
    let v = if milli { q.millis() } else { q.value() };
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Resources {
    /// From a `resources` map (a node's allocatable, a container's requests).
    pub fn from_map(m: &BTreeMap<String, Quantity>) -> Resources {
        let mut r = Resources::default();
        for (k, q) in m {
            match k.as_str() {
                "cpu" => r.cpu_milli = amount(q, true),
                "memory" => r.memory = amount(q, false),
                "ephemeral-storage" => r.ephemeral = amount(q, false),
                "pods" => r.pods = amount(q, false),
                "hugepages-2Mi" | "hugepages-1Gi" => {}
                name if name.contains('/') => r.extended.push((name.to_string(), amount(q, false))),
                _ => {}
            }
        }
        r.extended.sort();
        r
    }

    pub fn extended(&self, name: &str) -> i64 {
        self.extended.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    pub fn add(&mut self, o: &Resources) {
        self.cpu_milli += o.cpu_milli;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
        for (n, v) in &o.extended {
            match self.extended.iter_mut().find(|(m, _)| m == n) {
                Some((_, have)) => *have += v,
                None => {
                    self.extended.push((n.clone(), *v));
                    self.extended.sort();
                }
            }
        }
    }

    /// Component-wise maximum (the init containers' peak against the app containers' sum).
    fn max(&mut self, o: &Resources) {
        self.cpu_milli = self.cpu_milli.max(o.cpu_milli);
        self.memory = self.memory.max(o.memory);
        self.ephemeral = self.ephemeral.max(o.ephemeral);
        for (n, v) in &o.extended {
            let have = self.extended(n);
            if *v > have {
                self.extended.retain(|(m, _)| m != n);
                self.extended.push((n.clone(), *v));
                self.extended.sort();
            }
        }
    }
}

/// What a pod asks of a node, as Kubernetes computes it: the app containers' requests with
/// every sidecar's, or — if more — an init container's with the sidecars started before it;
/// plus the pod's `overhead`; one pod slot.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let requests = |c: &tug_api::kinds::pod::Container| {
        Resources::from_map(&c.resources.as_ref().map(|r| r.requests.clone()).unwrap_or_default())
    };
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in &spec.init_containers {
        if c.is_sidecar() {
            sidecars.add(&requests(c));
        } else {
            let mut at = sidecars.clone();
            at.add(&requests(c));
            init_peak.max(&at);
        }
    }
    let mut sum = sidecars;
    for c in &spec.containers {
        sum.add(&requests(c));
    }
    sum.max(&init_peak);
    sum.add(&Resources::from_map(&spec.overhead));
    sum.pods = 1;
    sum
}

/// The priority of a built-in priority class, for a pod whose `spec.priority` nobody filled
/// in (the API's admission and the scheduler's round fill it from PriorityClass objects).
pub fn class_priority(class: Option<&str>) -> i32 {
    match class {
        Some("system-node-critical") => 2_000_001_000,
        Some("system-cluster-critical") => 2_000_000_000,
        _ => 0,
    }
}

/// A pod placed on a node, as preemption weighs it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub key: String,
    pub priority: i32,
    pub requests: Resources,
    pub host_ports: Vec<(String, i64)>,
    /// Being deleted: it holds its resources until it is gone, and is never a victim.
    pub terminating: bool,
}

/// The pod being placed, precomputed.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// `(protocol, host port)`.
    pub host_ports: Vec<(String, i64)>,
    /// The controller's uid, for spreading replicas.
    pub owner: Option<String>,
    pub priority: i32,
    pub affinity: tug_api::kinds::pod::Affinity,
    pub spread: Vec<tug_api::kinds::pod::TopologySpreadConstraint>,
    pub terminating: bool,
}

impl PodInfo {
    pub fn new(pod: &Pod) -> PodInfo {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let spec = &pod.spec;
        PodInfo {
            key: format!("{ns}/{}", pod.metadata.name),
            namespace: ns,
            labels: pod.metadata.labels.clone(),
            requests: pod_requests(spec),
            // `os` asks for nodes of that OS (a Windows pod never fits a Tug node).
            node_selector: {
                let mut s = spec.node_selector.clone();
                if let Some(os) = &spec.os {
                    s.insert("kubernetes.io/os".into(), os.name.clone());
                }
                s
            },
            tolerations: spec.tolerations.clone(),
            host_ports: spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter())
                .filter_map(|p| {
                    Some((
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.host_port.filter(|h| *h > 0)?,
                    ))
                })
                .collect(),
            owner: pod
                .metadata
                .owner_references
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            priority: spec.priority.unwrap_or_else(|| class_priority(spec.priority_class_name.as_deref())),
            affinity: spec.affinity.clone().unwrap_or_default(),
            spread: spec.topology_spread_constraints.clone(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub used_ports: Vec<(String, i64)>,
    /// Pods per owner uid, for spreading.
    /// Pods per owner: `(owner id, count)`, a short list scanned without hashing.
    pub owners: Vec<(u32, u32)>,
    /// The zone label's value, if any, and its id in the snapshot.
    pub zone: Option<String>,
    pub zone_id: Option<usize>,
    /// The pods placed here: `(namespace, labels)`, for pod affinity and topology spread.
    pub pods: Vec<(String, BTreeMap<String, String>)>,
    /// The same pods with what preemption needs, in placement order.
    pub placed: Vec<Placed>,
}

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

impl NodeInfo {
    pub fn new(node: &Node) -> NodeInfo {
        let status = node.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        let labels = node.metadata.labels.clone();
        NodeInfo {
            name: node.metadata.name.clone(),
            zone: labels.get(ZONE_LABEL).cloned(),
            labels,
            allocatable: Resources::from_map(&status.allocatable),
            requested: Resources::default(),
            taints: node.spec.taints.clone(),
            unschedulable: node.spec.unschedulable.unwrap_or(false),
            ready,
            used_ports: Vec::new(),
            owners: Vec::new(),
            zone_id: None,
            pods: Vec::new(),
            placed: Vec::new(),
        }
    }

    /// Counts a pod as placed here (`owner`: its owner's id in the snapshot).
    pub fn assume(&mut self, pod: &PodInfo, owner: Option<u32>) {
        self.requested.add(&pod.requests);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if let Some(o) = owner {
            match self.owners.iter_mut().find(|(id, _)| *id == o) {
                Some((_, n)) => *n += 1,
                None => self.owners.push((o, 1)),
            }
        }
        self.pods.push((pod.namespace.clone(), pod.labels.clone()));
        self.placed.push(Placed {
            key: pod.key.clone(),
            priority: pod.priority,
            requests: pod.requests.clone(),
            host_ports: pod.host_ports.clone(),
            terminating: pod.terminating,
        });
    }

    /// Takes a placed pod off (a preemption victim, in a simulation).
    pub fn evict(&mut self, key: &str) {
        let Some(i) = self.placed.iter().position(|p| p.key == key) else { return };
        let p = self.placed.remove(i);
        let r = &mut self.requested;
        r.cpu_milli -= p.requests.cpu_milli;
        r.memory -= p.requests.memory;
        r.ephemeral -= p.requests.ephemeral;
        r.pods -= p.requests.pods;
        for (n, v) in &p.requests.extended {
            if let Some((_, have)) = r.extended.iter_mut().find(|(m, _)| m == n) {
                *have -= v;
            }
        }
        for port in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == port) {
                self.used_ports.remove(j);
            }
        }
    }

    /// The node's value of a topology key (`kubernetes.io/hostname` falls back to its name).
    pub fn topology(&self, key: &str) -> Option<&str> {
        match self.labels.get(key) {
            Some(v) => Some(v),
            None if key == "kubernetes.io/hostname" => Some(&self.name),
            None => None,
        }
    }
}

/// A placed pod's required anti-affinity term: it keeps the pods it matches out of its
/// topology domain (the symmetric half of anti-affinity).
#[derive(Debug, Clone)]
pub struct ExistingAnti {
    pub node: usize,
    /// The placed pod's namespace (the term's default namespace).
    pub namespace: String,
    pub topology_key: String,
    pub selector: tug_api::labels::Selector,
    pub namespaces: Vec<String>,
}

/// Every node, and the pods assigned to each already counted in.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Placed pods' required anti-affinity terms, and an index of them by a label an incoming
    /// pod must carry to match (terms without such a label are in `anti_unanchored`).
    pub existing_anti: Vec<ExistingAnti>,
    pub anti_by_label: HashMap<(String, String), Vec<usize>>,
    pub anti_unanchored: Vec<usize>,
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Owner uids → small ids.
    pub owner_ids: HashMap<String, u32>,
    /// The zones' names by id.
    pub zones: Vec<String>,
    /// Pods per zone per owner id: `zone_owners[owner][zone id]`.
    pub zone_owners: HashMap<u32, Vec<u32>>,
    /// Placed pods by label: `(key, value)` → `(node index, pod index on the node)`, so that
    /// counting the pods a selector matches visits only candidates.
    pub by_label: HashMap<(String, String), Vec<(usize, usize)>>,
    /// The domains of a topology key, computed on first use.
    domains: std::sync::Mutex<HashMap<String, std::sync::Arc<Vec<String>>>>,
    /// Whether any node has a `PreferNoSchedule` taint (else that score is the same everywhere).
    pub prefer_no_schedule: bool,
}

impl Clone for Snapshot {
    fn clone(&self) -> Snapshot {
        Snapshot {
            existing_anti: self.existing_anti.clone(),
            anti_by_label: self.anti_by_label.clone(),
            anti_unanchored: self.anti_unanchored.clone(),
            nodes: self.nodes.clone(),
            index: self.index.clone(),
            owner_ids: self.owner_ids.clone(),
            zones: self.zones.clone(),
            zone_owners: self.zone_owners.clone(),
            by_label: self.by_label.clone(),
            domains: std::sync::Mutex::new(HashMap::new()),
            prefer_no_schedule: self.prefer_no_schedule,
        }
    }
}

impl Snapshot {
    pub fn new(nodes: Vec<NodeInfo>) -> Snapshot {
        let index = nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut nodes = nodes;
        let mut zones: Vec<String> = nodes.iter().filter_map(|n| n.zone.clone()).collect();
        zones.sort();
        zones.dedup();
        for n in &mut nodes {
            n.zone_id = n.zone.as_ref().and_then(|z| zones.binary_search(z).ok());
        }
        let prefer_no_schedule =
            nodes.iter().any(|n| n.taints.iter().any(|t| t.effect == "PreferNoSchedule"));
        Snapshot {
            prefer_no_schedule,
            existing_anti: Vec::new(),
            anti_by_label: HashMap::new(),
            anti_unanchored: Vec::new(),
            nodes,
            index,
            owner_ids: HashMap::new(),
            zones,
            zone_owners: HashMap::new(),
            by_label: HashMap::new(),
            domains: Default::default(),
        }
    }

    /// The owner's id, if any pod of it was placed.
    pub fn owner_id(&self, owner: &str) -> Option<u32> {
        self.owner_ids.get(owner).copied()
    }

    /// Every value the nodes carry for a topology key.
    pub fn domains(&self, key: &str) -> std::sync::Arc<Vec<String>> {
        let mut cache = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key.to_string())
            .or_insert_with(|| {
                let mut d: Vec<String> =
                    self.nodes.iter().filter_map(|n| n.topology(key)).map(str::to_string).collect();
                d.sort();
                d.dedup();
                std::sync::Arc::new(d)
            })
            .clone()
    }

    /// Builds it from the API's nodes and pods (pods with a node are counted on it; finished
    /// pods free what they held).
    pub fn from_objects(nodes: &[Node], pods: &[Pod]) -> Snapshot {
        Snapshot::from_pods(nodes, pods)
    }

    /// [`Snapshot::from_objects`] from nodes and pods held elsewhere (the store's copy).
    pub fn from_pods<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Snapshot {
        let mut s = Snapshot::new(nodes.into_iter().map(NodeInfo::new).collect());
        for p in pods {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            if let Some(node) = p.spec.node_name.as_deref() {
                s.assume(node, &PodInfo::new(p));
            }
        }
        s
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Counts a pod on a node (after binding it, or when it was already bound).
    pub fn assume(&mut self, node: &str, pod: &PodInfo) {
        let Some(i) = self.index.get(node).copied() else { return };
        let slot = self.nodes[i].pods.len();
        for (k, v) in &pod.labels {
            self.by_label.entry((k.clone(), v.clone())).or_default().push((i, slot));
        }
        let owner = pod.owner.as_ref().map(|o| {
            let next = u32::try_from(self.owner_ids.len()).unwrap_or(u32::MAX);
            *self.owner_ids.entry(o.clone()).or_insert(next)
        });
        self.nodes[i].assume(pod, owner);
        for t in pod.affinity.pod_anti_affinity.iter().flat_map(|a| &a.required) {
            let Some(sel) = t.label_selector.as_ref().and_then(|s| s.to_selector("labelSelector").ok())
            else {
                continue;
            };
            let id = self.existing_anti.len();
            match super::context::anchor(&sel) {
                Some(pairs) => {
                    for pair in pairs {
                        self.anti_by_label.entry(pair).or_default().push(id);
                    }
                }
                None => self.anti_unanchored.push(id),
            }
            self.existing_anti.push(ExistingAnti {
                node: i,
                namespace: pod.namespace.clone(),
                topology_key: t.topology_key.clone(),
                selector: sel,
                namespaces: t.namespaces.clone(),
            });
        }
        if let (Some(o), Some(z)) = (owner, self.nodes[i].zone_id) {
            let zones = self.zones.len();
            let counts = self.zone_owners.entry(o).or_insert_with(|| vec![0; zones]);
            if let Some(c) = counts.get_mut(z) {
                *c += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sidecars add to the app containers and to every init container after them; overhead
    /// adds to the whole; `os` asks for nodes of that OS.
    #[test]
    fn a_pods_requests_count_sidecars_init_peaks_and_overhead() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "os": {"name": "linux"},
                "overhead": {"cpu": "50m"},
                "initContainers": [
                    {"name": "side", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                    {"name": "big", "image": "i", "resources": {"requests": {"cpu": "1"}}}
                ],
                "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "200m"}}}]
            }
        }))
        .unwrap();
        // max(200m + 100m, 1 + 100m) + 50m
        assert_eq!(pod_requests(&pod.spec).cpu_milli, 1150);
        assert_eq!(
            PodInfo::new(&pod).node_selector.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
    }
}
