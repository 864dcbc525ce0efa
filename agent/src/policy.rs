//! NetworkPolicy enforcement: the policies that select this node's pods → an nftables table
//! in the node's namespace, changed by difference as the service proxy's is.
//!
//! ```text
//! table ip tug_policy
//!   forward (filter hook forward, priority 0, policy accept):
//!     ct state established,related accept            ← connections already let through stay
//!     ip saddr vmap @egress-pods                      ← this node's pods isolated for egress
//!     ip daddr vmap @ingress-pods                     ← … and for ingress
//!   out-<pod> / in-<pod>:  one rule per (policy rule, peer, port) that lets the packet
//!     through: `return` (on to the other direction's check, then accept); then `drop`
//!   peers-<policy>-<in|out>-<i>:  the addresses of the pods a rule's selectors pick
//!   port-<tcp|udp|sctp>-<name>:   address . protocol . port of every pod's named port
//!                                 (an egress rule's named port is the destination's)
//! ```
//!
//! The forward hook sees traffic between two pods of this node's bridge (the bridge has
//! `nf_call_iptables` on, see `network::node`), traffic routed to and from other nodes, and
//! Service traffic after the proxy's DNAT (so a policy names the pods behind a Service, as
//! in Kubernetes). Each node checks only its own pods: egress as the packet leaves a pod
//! here, ingress as it reaches one. The node's own traffic to its pods (probes) does not
//! pass forward, and hostNetwork pods are neither selected nor peers.
//!
//! A pod's membership of a peer set is one element; a pod appearing, going or changing its
//! labels is element operations plus the chains of the pods whose rules it changes; a
//! policy changing rewrites the chains of the pods it selects. [`build`] is the desired
//! state, [`full`] the batch that makes it from nothing, [`diff`] the batch between two.

use crate::proxy::nft::{self, Cmd, Data, Expr, SetSpec, r};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use tug_api::cidr::Cidr4;
use tug_api::kinds::networking::{NetworkPolicy, Peer, PolicyPort};
use tug_api::labels::{Labels, Selector};
use tug_api::meta::IntOrString;

pub const TABLE: &str = "tug_policy";
const INGRESS_MAP: &str = "ingress-pods";
const EGRESS_MAP: &str = "egress-pods";
const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod as policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    pub node: String,
    /// Named container ports: `(name, protocol number, port)`.
    pub ports: Vec<(String, u8, u16)>,
}

impl PodInfo {
    /// A running pod with an address of its own (not hostNetwork, not finished).
    pub fn from_value(p: &Value) -> Option<PodInfo> {
        if p["spec"]["hostNetwork"] == true
            || ["Succeeded", "Failed"].contains(&p["status"]["phase"].as_str().unwrap_or(""))
        {
            return None;
        }
        let ip = p["status"]["podIP"].as_str()?.parse().ok()?;
        let labels = labels_of(p);
        let ports = p["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|cp| {
                let name = cp["name"].as_str()?.to_string();
                let port = u16::try_from(cp["containerPort"].as_u64()?).ok()?;
                Some((name, proto_number(cp["protocol"].as_str())?, port))
            })
            .collect();
        Some(PodInfo {
            namespace: p["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            name: p["metadata"]["name"].as_str()?.to_string(),
            labels,
            ip,
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
            ports,
        })
    }
}

/// `TCP` (the default), `UDP`, `SCTP` → the IP protocol number.
fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "sctp",
    }
}

/// The desired table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// This node's pods isolated for ingress / egress: address → their chain.
    pub ingress: BTreeMap<Ipv4Addr, String>,
    pub egress: BTreeMap<Ipv4Addr, String>,
    pub chains: BTreeMap<String, Vec<Vec<Expr>>>,
    /// Set name → (key length, elements).
    pub sets: BTreeMap<String, (u32, BTreeSet<Vec<u8>>)>,
}

fn short_hash(s: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A policy compiled: its selectors, and its rules per direction.
struct Compiled<'a> {
    policy: &'a NetworkPolicy,
    namespace: String,
    id: String,
    selector: Selector,
    ingress: bool,
    egress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn word(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }

    /// The peer's address: the source of traffic coming in, the destination going out.
    fn peer_offset(self) -> u32 {
        match self {
            Dir::In => 12,
            Dir::Out => 16,
        }
    }
}

/// Which pods a peer picks, as a predicate over pods and their namespaces' labels.
fn peer_pods<'p>(
    peer: &Peer,
    policy_ns: &str,
    pods: &'p [PodInfo],
    namespaces: &BTreeMap<String, Labels>,
) -> Vec<&'p PodInfo> {
    if peer.ip_block.is_some() {
        return Vec::new();
    }
    let pod_sel = peer.pod_selector.as_ref().and_then(|s| s.to_selector("").ok());
    let ns_sel = peer.namespace_selector.as_ref().and_then(|s| s.to_selector("").ok());
    if (peer.pod_selector.is_some() && pod_sel.is_none())
        || (peer.namespace_selector.is_some() && ns_sel.is_none())
    {
        return Vec::new(); // an invalid selector (refused by the API) picks nobody
    }
    pods.iter()
        .filter(|p| match &ns_sel {
            None => p.namespace == policy_ns,
            Some(s) => {
                let mut labels = namespaces.get(&p.namespace).cloned().unwrap_or_default();
                labels.insert(NS_NAME_LABEL.into(), p.namespace.clone());
                s.matches(&labels)
            }
        })
        .filter(|p| pod_sel.as_ref().is_none_or(|s| s.matches(&p.labels)))
        .collect()
}

/// What a rule's ports allow, resolved for `pod` (ingress: the pod's own named ports).
enum PortMatch {
    Any,
    Proto(u8),
    Range(u8, u16, u16),
    /// Egress to a named port: the destination's address, protocol and port in this set.
    Named(String),
}

fn port_matches(
    ports: &[PolicyPort],
    dir: Dir,
    pod: &PodInfo,
    named_sets: &mut BTreeSet<(u8, String)>,
) -> Vec<PortMatch> {
    if ports.is_empty() {
        return vec![PortMatch::Any];
    }
    let mut out = Vec::new();
    for p in ports {
        let Some(proto) = proto_number(p.protocol.as_deref()) else { continue };
        match &p.port {
            None => out.push(PortMatch::Proto(proto)),
            Some(IntOrString::Int(n)) => {
                let Ok(lo) = u16::try_from(*n) else { continue };
                let hi = p.end_port.and_then(|e| u16::try_from(e).ok()).unwrap_or(lo).max(lo);
                out.push(PortMatch::Range(proto, lo, hi));
            }
            Some(IntOrString::String(name)) => match dir {
                Dir::In => {
                    for (_, pr, port) in pod.ports.iter().filter(|(n, pr, _)| n == name && *pr == proto) {
                        out.push(PortMatch::Range(*pr, *port, *port));
                    }
                }
                Dir::Out => {
                    named_sets.insert((proto, name.clone()));
                    out.push(PortMatch::Named(named_set(proto, name)));
                }
            },
        }
    }
    out
}

fn named_set(proto: u8, name: &str) -> String {
    format!("port-{}-{name}", proto_name(proto))
}

fn payload(offset: u32, dreg: u32) -> Expr {
    Expr::Payload { base: nft::BASE_NETWORK, offset, len: 4, dreg }
}

/// `ip saddr|daddr in CIDR` (and, for each except, not in it).
fn block_exprs(offset: u32, cidr: Cidr4, except: &[Cidr4]) -> Vec<Expr> {
    let mut e = Vec::new();
    for (c, op) in std::iter::once((cidr, nft::CMP_EQ)).chain(except.iter().map(|x| (*x, nft::CMP_NEQ))) {
        e.push(payload(offset, r(0)));
        e.extend(crate::proxy::rules::in_cidr(r(0), c, op));
    }
    e
}

fn port_exprs(m: &PortMatch) -> Vec<Expr> {
    let proto = |p: u8| {
        vec![
            Expr::Meta { key: nft::META_L4PROTO, dreg: r(1) },
            Expr::Cmp { sreg: r(1), op: nft::CMP_EQ, data: vec![p] },
        ]
    };
    let dport = Expr::Payload { base: nft::BASE_TRANSPORT, offset: 2, len: 2, dreg: r(2) };
    match m {
        PortMatch::Any => Vec::new(),
        PortMatch::Proto(p) => proto(*p),
        PortMatch::Range(p, lo, hi) => {
            let mut e = proto(*p);
            e.push(dport);
            if lo == hi {
                e.push(Expr::Cmp { sreg: r(2), op: nft::CMP_EQ, data: lo.to_be_bytes().to_vec() });
            } else {
                e.push(Expr::Cmp { sreg: r(2), op: nft::CMP_GTE, data: lo.to_be_bytes().to_vec() });
                e.push(Expr::Cmp { sreg: r(2), op: nft::CMP_LTE, data: hi.to_be_bytes().to_vec() });
            }
            e
        }
        PortMatch::Named(set) => vec![
            payload(16, r(0)),
            Expr::Meta { key: nft::META_L4PROTO, dreg: r(1) },
            dport,
            Expr::Lookup { set: set.clone(), sreg: r(0), dreg: None },
        ],
    }
}

/// The desired table for the pods on node `me`.
pub fn build(
    me: &str,
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, Labels>,
    policies: &[NetworkPolicy],
) -> Ruleset {
    let compiled: Vec<Compiled> = policies
        .iter()
        .filter_map(|p| {
            let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let selector = p.spec.pod_selector.to_selector("").ok()?;
            let types = if p.spec.policy_types.is_empty() {
                p.spec.default_types()
            } else {
                p.spec.policy_types.clone()
            };
            let id = short_hash(&format!("{namespace}/{}", p.metadata.name));
            Some(Compiled {
                policy: p,
                namespace,
                id,
                selector,
                ingress: types.iter().any(|t| t == "Ingress"),
                egress: types.iter().any(|t| t == "Egress"),
            })
        })
        .collect();
    let mut rs = Ruleset::default();
    let mut named: BTreeSet<(u8, String)> = BTreeSet::new();
    for pod in pods.iter().filter(|p| p.node == me) {
        let mine: Vec<&Compiled> = compiled
            .iter()
            .filter(|c| c.namespace == pod.namespace && c.selector.matches(&pod.labels))
            .collect();
        for dir in [Dir::In, Dir::Out] {
            let applying: Vec<&&Compiled> =
                mine.iter().filter(|c| if dir == Dir::In { c.ingress } else { c.egress }).collect();
            if applying.is_empty() {
                continue;
            }
            let chain = format!("{}-{}", dir.word(), short_hash(&format!("{}/{}", pod.namespace, pod.name)));
            let mut rules = Vec::new();
            for c in applying {
                let list: Vec<(&[Peer], &[PolicyPort])> = match dir {
                    Dir::In => {
                        c.policy.spec.ingress.iter().flatten().map(|r| (&r.from[..], &r.ports[..])).collect()
                    }
                    Dir::Out => {
                        c.policy.spec.egress.iter().flatten().map(|r| (&r.to[..], &r.ports[..])).collect()
                    }
                };
                for (i, (peers, ports)) in list.into_iter().enumerate() {
                    // Who: anyone, the rule's pods (one set), each of its address blocks.
                    let mut who: Vec<Vec<Expr>> = Vec::new();
                    if peers.is_empty() {
                        who.push(Vec::new());
                    }
                    if peers.iter().any(|p| p.ip_block.is_none()) {
                        let set = format!("peers-{}-{}-{i}", c.id, dir.word());
                        // Once per rule, however many of this node's pods it selects.
                        if !rs.sets.contains_key(&set) {
                            let members = peers
                                .iter()
                                .flat_map(|p| peer_pods(p, &c.namespace, pods, namespaces))
                                .map(|q| q.ip.octets().to_vec())
                                .collect();
                            rs.sets.insert(set.clone(), (4, members));
                        }
                        who.push(vec![
                            payload(dir.peer_offset(), r(0)),
                            Expr::Lookup { set, sreg: r(0), dreg: None },
                        ]);
                    }
                    for b in peers.iter().filter_map(|p| p.ip_block.as_ref()) {
                        let Ok(cidr) = b.cidr.parse::<Cidr4>() else { continue };
                        let except: Vec<Cidr4> = b.except.iter().filter_map(|x| x.parse().ok()).collect();
                        who.push(block_exprs(dir.peer_offset(), cidr, &except));
                    }
                    let what = port_matches(ports, dir, pod, &mut named);
                    for w in &who {
                        for p in &what {
                            let mut e = w.clone();
                            e.extend(port_exprs(p));
                            e.push(Expr::Verdict(nft::RETURN));
                            rules.push(e);
                        }
                    }
                }
            }
            rules.push(vec![Expr::Counter, Expr::Verdict(nft::DROP)]);
            rs.chains.insert(chain.clone(), rules);
            match dir {
                Dir::In => rs.ingress.insert(pod.ip, chain),
                Dir::Out => rs.egress.insert(pod.ip, chain),
            };
        }
    }
    for (proto, name) in named {
        let mut els = BTreeSet::new();
        for p in pods {
            for (_, _, port) in p.ports.iter().filter(|(n, pr, _)| *n == name && *pr == proto) {
                els.insert(named_key(p.ip, proto, *port));
            }
        }
        rs.sets.insert(named_set(proto, &name), (12, els));
    }
    rs
}

fn named_key(ip: Ipv4Addr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = nft::key_ip(ip).to_vec();
    k.extend_from_slice(&nft::key_proto(proto));
    k.extend_from_slice(&nft::key_port(port));
    k
}

fn set_spec(name: &str, key_len: u32) -> SetSpec {
    let key_type = if key_len == 4 {
        nft::ty::IPV4
    } else {
        nft::ty::concat(&[nft::ty::IPV4, nft::ty::PROTO, nft::ty::SERVICE])
    };
    SetSpec { name: name.into(), flags: 0, key_type, key_len, data: None }
}

fn vmap_spec(name: &str) -> SetSpec {
    SetSpec {
        name: name.into(),
        flags: nft::SET_MAP,
        key_type: nft::ty::IPV4,
        key_len: 4,
        data: Some((nft::DATA_VERDICT, 0)),
    }
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Cmd {
    Cmd::AddRule { chain: chain.into(), exprs }
}

/// The batch that replaces the table with `rs`.
pub fn full(rs: &Ruleset) -> Vec<Cmd> {
    let mut out = vec![
        Cmd::AddTable,
        Cmd::DeleteTable,
        Cmd::AddTable,
        Cmd::AddBaseChain { name: "forward", kind: "filter", hook: 2, prio: 0 },
        Cmd::AddSet(vmap_spec(INGRESS_MAP)),
        Cmd::AddSet(vmap_spec(EGRESS_MAP)),
    ];
    // Established and related: the conntrack state bits 2 and 4 (host order).
    out.push(rule(
        "forward",
        vec![
            Expr::Ct { key: nft::CT_STATE, dir: None, dreg: r(0) },
            Expr::Bitwise { sreg: r(0), dreg: r(0), mask: 6u32.to_ne_bytes().to_vec(), xor: vec![0; 4] },
            Expr::Cmp { sreg: r(0), op: nft::CMP_NEQ, data: vec![0; 4] },
            Expr::Verdict(nft::ACCEPT),
        ],
    ));
    for (offset, map) in [(12, EGRESS_MAP), (16, INGRESS_MAP)] {
        out.push(rule(
            "forward",
            vec![
                payload(offset, r(0)),
                Expr::Lookup { set: map.into(), sreg: r(0), dreg: Some(nft::VERDICT) },
            ],
        ));
    }
    out.extend(diff(&Ruleset::default(), rs));
    out
}

/// The batch that turns table `old` into `new`, touching only what differs.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Cmd> {
    let mut out = Vec::new();
    let empty = (0, BTreeSet::new());
    // New sets and chains first: rules and map elements name them.
    for (name, (len, _)) in &new.sets {
        if !old.sets.contains_key(name) {
            out.push(Cmd::AddSet(set_spec(name, *len)));
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            out.push(Cmd::AddChain(name.clone()));
        }
    }
    for (name, (_, els)) in &new.sets {
        let before = &old.sets.get(name).unwrap_or(&empty).1;
        for k in before.difference(els) {
            out.push(Cmd::DeleteElem { set: name.clone(), key: k.clone() });
        }
        for k in els.difference(before) {
            out.push(Cmd::AddElem { set: name.clone(), key: k.clone(), data: None });
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(r) if r == rules => continue,
            Some(_) => out.push(Cmd::FlushChain(name.clone())),
            None => {}
        }
        out.extend(rules.iter().map(|e| rule(name, e.clone())));
    }
    for (map, o, n) in [(INGRESS_MAP, &old.ingress, &new.ingress), (EGRESS_MAP, &old.egress, &new.egress)] {
        for (ip, chain) in o {
            if n.get(ip) != Some(chain) {
                out.push(Cmd::DeleteElem { set: map.into(), key: ip.octets().to_vec() });
            }
        }
        for (ip, chain) in n {
            if o.get(ip) != Some(chain) {
                out.push(Cmd::AddElem {
                    set: map.into(),
                    key: ip.octets().to_vec(),
                    data: Some(Data::Jump(chain.clone())),
                });
            }
        }
    }
    // Then what nothing refers to any more.
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        out.push(Cmd::FlushChain(name.clone()));
        out.push(Cmd::DeleteChain(name.clone()));
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        out.push(Cmd::DeleteSet(name.clone()));
    }
    out
}

/// The catalog's pods, namespaces and policies, as [`build`] takes them.
/// Policies parsed before, by `namespace/name`, with the resourceVersion they were parsed
/// at: a burst of pod changes does not parse every policy again.
pub type Parsed = std::collections::HashMap<String, (String, NetworkPolicy)>;

pub fn inputs(
    o: &crate::catalog::Objects,
    parsed: &mut Parsed,
) -> (Vec<PodInfo>, BTreeMap<String, Labels>, Vec<NetworkPolicy>) {
    let pods = o.pods.values().filter_map(PodInfo::from_value).collect();
    let namespaces = o
        .namespaces
        .values()
        .filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_string(), labels_of(n))))
        .collect();
    parsed.retain(|k, _| o.network_policies.contains_key(k));
    let mut policies = Vec::with_capacity(o.network_policies.len());
    for (key, p) in &o.network_policies {
        let rv = p["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if parsed.get(key).is_none_or(|(at, _)| at != rv) {
            // The API validated it; what it serves beside the spec (an empty `status`) is
            // not ours.
            let (meta, spec) = (p["metadata"].clone(), p["spec"].clone());
            match serde_json::from_value(serde_json::json!({"metadata": meta, "spec": spec})) {
                Ok(np) => parsed.insert(key.clone(), (rv.to_string(), np)),
                Err(_) => parsed.remove(key),
            };
        }
        if let Some((_, np)) = parsed.get(key) {
            policies.push(np.clone());
        }
    }
    (pods, namespaces, policies)
}

/// An object's labels (string values only).
fn labels_of(v: &Value) -> Labels {
    v["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// Enforces the policies for ever: after each burst of changes the difference to what was
/// applied, as one transaction; the whole table on start, after a failure and every `resync`.
pub async fn run(
    catalog: std::sync::Arc<crate::catalog::Catalog>,
    me: String,
    netns: Option<std::path::PathBuf>,
    resync: std::time::Duration,
) {
    use std::time::{Duration, Instant};
    let changed = catalog.subscribe_to(&["pods", "namespaces", "networkpolicies"]);
    let mut applied: Option<Ruleset> = None;
    let mut parsed = Parsed::new();
    let mut conn: Option<nft::Conn> = None;
    let mut full_at = Instant::now() + resync;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(full_at.into()) => applied = None,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let desired = {
            let o = catalog.read();
            let (pods, namespaces, policies) = inputs(&o, &mut parsed);
            build(&me, &pods, &namespaces, &policies)
        };
        if applied.as_ref() == Some(&desired) {
            continue;
        }
        let cmds = match &applied {
            Some(old) => diff(old, &desired),
            None => full(&desired),
        };
        let whole = applied.is_none();
        let ns = netns.clone();
        let mut c = conn.take();
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            if c.is_none() {
                c = Some(crate::network::netns::run_in(ns.as_deref(), nft::Conn::open)??);
            }
            let conn = c.as_ref().ok_or("no nf_tables connection")?;
            conn.apply(TABLE, &cmds).map(|()| c)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match r {
            Ok(c) => {
                conn = c;
                if whole {
                    full_at = Instant::now() + resync;
                    tracing::info!(
                        "tug-agent: network policy: {} isolated pod directions programmed in {:?}",
                        desired.chains.len(),
                        started.elapsed()
                    );
                }
                applied = Some(desired);
            }
            Err(e) => {
                tracing::warn!("tug-agent: network policy: {e}");
                applied = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                changed.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ip: ip.parse().unwrap(),
            node: node.into(),
            ports: vec![("http".into(), 6, 8080)],
        }
    }

    fn policy(v: Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    fn text(rs: &Ruleset) -> String {
        full(rs).iter().map(|c| format!("{c}\n")).collect()
    }

    #[test]
    fn a_policy_isolates_only_the_pods_it_selects_on_this_node() {
        let pods = [
            pod("a", "web", "10.244.1.2", "n1", &[("app", "web")]),
            pod("a", "db", "10.244.1.3", "n1", &[("app", "db")]),
            pod("a", "web2", "10.244.2.2", "n2", &[("app", "web")]),
            pod("b", "client", "10.244.2.3", "n2", &[("role", "client")]),
        ];
        let ns: BTreeMap<String, Labels> =
            [("b".to_string(), [("team".to_string(), "x".to_string())].into())].into();
        let deny = policy(json!({"metadata": {"name": "deny", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}}));
        let rs = build("n1", &pods, &ns, std::slice::from_ref(&deny));
        assert_eq!(rs.ingress.keys().map(|i| i.to_string()).collect::<Vec<_>>(), ["10.244.1.2"]);
        assert!(rs.egress.is_empty(), "Ingress only by default");
        let chain = &rs.chains[&rs.ingress[&"10.244.1.2".parse().unwrap()]];
        assert_eq!(chain.len(), 1, "no rule: only the drop");
        // An allow from namespace b's clients, on the named port.
        let allow = policy(json!({"metadata": {"name": "allow", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}},
                                            "podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"port": "http"}, {"protocol": "UDP", "port": 5000, "endPort": 5010}]}]}}));
        let rs2 = build("n1", &pods, &ns, &[deny.clone(), allow.clone()]);
        let t = text(&rs2);
        assert!(t.contains(&format!("add element {}", "peers-")), "{t}");
        let peers: Vec<_> = rs2.sets.values().flat_map(|(_, e)| e.iter()).collect();
        assert_eq!(peers, [&vec![10, 244, 2, 3]]);
        let chain = &rs2.chains[&rs2.ingress[&"10.244.1.2".parse().unwrap()]];
        assert_eq!(chain.len(), 3, "two ports of one peer set, then the drop");
        let c =
            chain.iter().map(|r| r.iter().map(|e| format!("{e}; ")).collect::<String>()).collect::<Vec<_>>();
        assert!(c[0].contains("r2=th dport; r2 == 1f90"), "{c:?}");
        assert!(c[1].contains(">= 1388") && c[1].contains("<= 1392"), "{c:?}");
        // Only what changed: the diff adds the set, rewrites the one chain.
        let d = diff(&rs, &rs2);
        assert!(d.iter().any(|c| matches!(c, Cmd::FlushChain(_))));
        assert!(!d.iter().any(|c| matches!(c, Cmd::AddElem { set, .. } if set == INGRESS_MAP)));
        // A client leaving is one element.
        let d = diff(&rs2, &build("n1", &pods[..3], &ns, &[deny, allow]));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(matches!(&d[0], Cmd::DeleteElem { key, .. } if key == &vec![10, 244, 2, 3]));
        // Nothing selected any more: the chain and set go, after the map element.
        let d = diff(&rs2, &Ruleset::default());
        let pos = |f: &dyn Fn(&Cmd) -> bool| d.iter().position(f).unwrap();
        assert!(
            pos(&|c| matches!(c, Cmd::DeleteElem { set, .. } if set == INGRESS_MAP))
                < pos(&|c| matches!(c, Cmd::DeleteChain(_)))
        );
        assert!(pos(&|c| matches!(c, Cmd::DeleteChain(_))) < pos(&|c| matches!(c, Cmd::DeleteSet(_))));
    }

    #[test]
    fn egress_blocks_named_ports_and_the_namespace_name_label() {
        let pods = [
            pod("a", "web", "10.244.1.2", "n1", &[("app", "web")]),
            pod("kube-system", "dns", "10.244.2.9", "n2", &[("k8s-app", "dns")]),
        ];
        let p = policy(json!({"metadata": {"name": "out", "namespace": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                 "ports": [{"port": "http"}]},
                {"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]}}));
        let rs = build("n1", &pods, &BTreeMap::new(), &[p]);
        assert!(rs.ingress.is_empty());
        let chain = &rs.chains[&rs.egress[&"10.244.1.2".parse().unwrap()]];
        let c: Vec<String> = chain.iter().map(|r| r.iter().map(|e| format!("{e}; ")).collect()).collect();
        assert!(c[0].contains("@peers-") && c[0].contains("@port-tcp-http"), "{c:?}");
        assert!(c[1].contains("r0 == c0000200") && c[1].contains("r0 != c0000280"), "{c:?}");
        assert_eq!(rs.sets["port-tcp-http"].1.len(), 2, "every pod's named port");
        let peers = rs.sets.iter().find(|(n, _)| n.starts_with("peers-")).unwrap();
        assert_eq!(peers.1.1.iter().collect::<Vec<_>>(), [&vec![10, 244, 2, 9]]);
    }

    #[test]
    fn pods_without_an_address_or_on_the_host_network_are_left_out() {
        let p = json!({"metadata": {"name": "x", "namespace": "a", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.2"}});
        let info = PodInfo::from_value(&p).unwrap();
        assert_eq!(info.ports, [("http".to_string(), 6, 80)]);
        let mut host = p.clone();
        host["spec"]["hostNetwork"] = json!(true);
        assert!(PodInfo::from_value(&host).is_none());
        let mut done = p.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert!(PodInfo::from_value(&done).is_none());
        let mut pending = p;
        pending["status"]["podIP"] = Value::Null;
        assert!(PodInfo::from_value(&pending).is_none());
    }
}
