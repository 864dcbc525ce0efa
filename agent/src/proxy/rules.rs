//! The service proxy's nftables rules, as a pure function of the Services and their
//! endpoints. kube-proxy's nftables mode in outline — O(1) dispatch through verdict maps, a
//! chain per service port, `numgen random` spreading, NodePorts behind `fib daddr type local`,
//! rejects for services without endpoints, masquerade by mark — with one change:
//!
//! ```text
//! table ip tug_proxy
//!   nat-prerouting / nat-output ─ jump services
//!   services:  ip daddr . meta l4proto . th dport @service-ips, ip saddr != CLUSTER → meta mark |= MASQ
//!              ip daddr . meta l4proto . th dport vmap @service-ips       → goto spread-N
//!              fib daddr type local  meta l4proto . th dport vmap @service-nodeports
//!                                                                          → goto nodeport-spread-N
//!   spread-N:           dnat to ip daddr . meta l4proto . th dport . numgen random mod N map @endpoints
//!   nodeport-spread-N:  meta mark |= MASQ
//!                       dnat to meta l4proto . th dport . numgen random mod N map @nodeport-endpoints
//!   service-<h>-ns/name/tcp/http  (sessionAffinity: ClientIP only):
//!                       ID . EP_i . ip saddr in @affinity → refresh it, dnat to EP_i     (each i)
//!                       numgen random mod N-i == 0 → add ID . EP_i . ip saddr, dnat to EP_i
//!   external-<h>-…:     meta mark |= MASQ; goto service-…                    (NodePort, ClientIP)
//!   weighted-<h>-…:     numgen random mod 100 < W → dnat to the canary set's endpoints
//!                       else → dnat to the stable set's endpoints     (a Rollout's canary)
//!   filter-forward/-output/-input:  … vmap @no-endpoint-services / @no-endpoint-nodeports → reject
//!                       tcp flags syn,rst ct direction reply
//!                       ct original ip daddr . ct original proto-dst . ip saddr vmap @connection-sets
//!   conns-{canary,stable}-<h>-…:  SYN-ACK counter; RST, not assured counter; RST, assured counter
//!   nat-postrouting:    marked → masquerade
//!                       ct status dnat, ip saddr and ip daddr in PODS → masquerade
//! ```
//!
//! The change: kube-proxy gives every endpoint a chain and every service port an anonymous
//! `numgen … vmap`. This kernel checks each jump for loops by walking every set of the table,
//! names each anonymous set by scanning them all, checks each map element against every
//! lookup of its map, walks a map's elements for each new chain that looks it up, and
//! revalidates the whole table after any change to a rule — so per-service sets, per-service
//! lookups of a shared map and per-endpoint rules all cost O(services) or worse per change
//! (measured here: kube-proxy's layout, 2,000 services: 2.6 s of kernel time; 10,000: over
//! a minute). Here a Service's endpoints are elements of one map keyed by what the packet
//! carries (ClusterIP, protocol, port — or protocol, NodePort — and a random index), looked
//! up from one shared chain per endpoint count: an endpoint changing is two element
//! operations, no rule changes, no revalidation. ClientIP affinity, which needs rules per
//! endpoint, keeps a chain per service port (a cascade like kube-proxy's iptables mode,
//! each endpoint taken with probability 1/(endpoints left)).
//!
//! The second masquerade rule is what kube-proxy gets from br_netfilter and its hairpin
//! rules: a client pod on this node's bridge DNATed to an endpoint on the same bridge
//! (itself included) would otherwise get the reply straight over the bridge, past the
//! connection tracking that undoes the DNAT.
//!
//! [`build`] makes the desired state ([`Ruleset`]), [`full`] the batch that replaces the table
//! whole, [`diff`] the batch that turns one ruleset into another touching only the ports
//! that changed, and [`update`] does the same from the Services that changed (what the proxy
//! does on each event): each is one transaction ([`super::nft`]).

use super::nft::{self, Cmd, Data, Expr, SetSpec, r};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use tug_api::cidr::Cidr4;

pub const TABLE: &str = "tug_proxy";
const MASQ_BIT: u32 = 0x4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// One port of a Service with its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// A canary's share of the connections in percent, and its endpoints (a Rollout's
    /// stable Service: `rollouts.tug.io/canary-weight`).
    pub canary: Option<Canary>,
    /// `externalTrafficPolicy: Local`: the endpoints on this node, which alone take the
    /// traffic of the NodePort and the external addresses (client source kept). None:
    /// `Cluster`, the same endpoints as the ClusterIP.
    pub external: Option<Vec<Endpoint>>,
}

/// An endpoint: address and port.
pub type Endpoint = (Ipv4Addr, u16);
/// A canary's share of connections in percent, and its endpoints.
pub type Canary = (u32, Vec<Endpoint>);

/// Endpoints sorted, without duplicates.
fn sorted(eps: &[(Ipv4Addr, u16)]) -> Vec<(Ipv4Addr, u16)> {
    let mut e = eps.to_vec();
    e.sort_unstable();
    e.dedup();
    e
}

impl PortInfo {
    /// The endpoints to spread connections over (sorted), and the canary's share with its
    /// endpoints when there is a split: a weight of 100, or no stable endpoints, sends
    /// everything to the canary; a weight of 0, or no canary endpoints, nothing — never a
    /// share of the connections refused.
    pub fn split(&self) -> (Vec<Endpoint>, Option<Canary>) {
        let endpoints = sorted(&self.endpoints);
        match &self.canary {
            Some((w, eps)) if *w > 0 && !eps.is_empty() => {
                let c = sorted(eps);
                if *w >= 100 || endpoints.is_empty() { (c, None) } else { (endpoints, Some((*w, c))) }
            }
            _ => (endpoints, None),
        }
    }
}

/// A Service as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// None for headless Services (nothing to program).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<PortInfo>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity: Option<u32>,
    /// Addresses from outside that reach the same ports: `externalIPs` and a LoadBalancer's
    /// ingress addresses.
    pub external_ips: Vec<Ipv4Addr>,
    /// `loadBalancerSourceRanges`: who may reach the load balancer's addresses (those of
    /// `lb_ips`); empty: anyone.
    pub source_ranges: Vec<Cidr4>,
    pub lb_ips: Vec<Ipv4Addr>,
}

/// Where the node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub cluster_cidr: Cidr4,
    /// This node's pod block (its pods share the bridge).
    pub pod_cidr: Cidr4,
}

/// One programmed Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Its number in the endpoint maps' keys, kept while the port lives.
    pub id: u32,
    pub ip: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Sorted, without duplicates; empty means "reject".
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    pub affinity: Option<u32>,
    /// 1–99 percent of the connections to these (sorted) endpoints instead; both sets are
    /// non-empty.
    pub canary: Option<Canary>,
    /// Only these sources may connect (a load balancer address's `loadBalancerSourceRanges`);
    /// empty: any.
    pub source_ranges: Vec<Cidr4>,
    /// Traffic from outside keeps its source (`externalTrafficPolicy: Local`): no
    /// masquerade on this entry's way.
    pub keep_source: bool,
    /// The entry only carries a NodePort (`ns/name/proto/port#nodeport`, under Local): no
    /// ClusterIP element of its own.
    pub nodeport_only: bool,
}

/// The desired state of the table: the Service ports by `namespace/name/proto/port-name`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ruleset {
    pub ports: BTreeMap<String, Port>,
    /// The next unused port number.
    pub next_id: u32,
}

/// A short stable name part, kube-proxy style: the first `len` (at most 12) base32 digits of
/// a 64-bit FNV-1a.
pub(crate) fn hash_n(s: &str, len: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..len.min(12)).map(|i| A[usize::try_from((h >> (i * 5)) & 31).unwrap_or(0)] as char).collect()
}

/// Eight digits: the readable name beside it keeps nft chain names unique.
fn hash(s: &str) -> String {
    hash_n(s, 8)
}

fn service_chain(base: &str) -> String {
    format!("service-{}-{base}", hash(base))
}

fn weighted_chain(base: &str) -> String {
    format!("weighted-{}-{base}", hash(base))
}

/// The endpoint-map key of a weighted port's stable or canary set: an address in 0.0.0.0/8,
/// which no ClusterIP is, made of the port's number and the set.
fn weighted_key(id: u32, canary: bool, proto: Proto, port: u16) -> Vec<u8> {
    let a = Ipv4Addr::from(((id & 0x007f_ffff) << 1) | u32::from(canary));
    ip_key(a, proto, port)
}

/// The chain counting a weighted port's connections to one of its sets.
pub fn conns_chain(base: &str, canary: bool) -> String {
    format!("conns-{}-{}-{base}", if canary { "canary" } else { "stable" }, hash(base))
}

/// Whether a port splits its connections by weight (and counts them, when TCP).
fn weighted(p: &Port) -> bool {
    p.canary.is_some() && p.affinity.is_none() && !p.endpoints.is_empty()
}

/// The ports whose connections are counted per set: weighted TCP ports, by base
/// (`namespace/name/tcp/port-name`).
pub fn counted(r: &Ruleset) -> Vec<String> {
    // An external address's entry is not counted: a Rollout's analysis reads the
    // ClusterIP's.
    r.ports
        .iter()
        .filter(|(b, p)| weighted(p) && p.proto == Proto::Tcp && !b.contains('@') && !b.contains('#'))
        .map(|(b, _)| b.clone())
        .collect()
}

/// TCP flags.
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// `ct status` bits.
const IPS_ASSURED: u32 = 0x4;

fn tcp_flags(mask: u8, op: u32, value: u8) -> Vec<Expr> {
    vec![
        Expr::Payload { base: nft::BASE_TRANSPORT, offset: 13, len: 1, dreg: r(0) },
        Expr::Bitwise { sreg: r(0), dreg: r(0), mask: vec![mask], xor: vec![0] },
        Expr::Cmp { sreg: r(0), op, data: vec![value] },
    ]
}

/// The rules of a set's counting chain, in the order [`super::ConnCounts`] reads them: the
/// endpoint's SYN-ACKs (accepted), its resets of connections never established (refused),
/// its resets of established ones (reset).
fn conns_rules() -> Vec<Vec<Expr>> {
    let assured = |op| {
        vec![
            Expr::CtStatus { dreg: r(1) },
            Expr::Bitwise {
                sreg: r(1),
                dreg: r(1),
                mask: IPS_ASSURED.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp { sreg: r(1), op, data: vec![0; 4] },
        ]
    };
    let mut accepted = tcp_flags(SYN | ACK | RST, nft::CMP_EQ, SYN | ACK);
    accepted.push(Expr::Counter);
    let mut refused = tcp_flags(RST, nft::CMP_NEQ, 0);
    refused.extend(assured(nft::CMP_EQ));
    refused.push(Expr::Counter);
    let mut reset = tcp_flags(RST, nft::CMP_NEQ, 0);
    reset.extend(assured(nft::CMP_NEQ));
    reset.push(Expr::Counter);
    vec![accepted, refused, reset]
}

/// The filter chains' last rule: a SYN-ACK or reset that an endpoint sends back on a
/// connection DNATed here goes to its set's counting chain — looked up by (ClusterIP, port)
/// from conntrack and the endpoint's address — before the reply is un-DNATed. A reply from
/// a pod passes forward (to a pod) or input (to the node); one from the node's own stack (a
/// host-network endpoint) passes output, and is un-DNATed in postrouting before it loops
/// back to input. Priority -110 comes before NAT's 100 on each.
fn count_replies() -> Vec<Expr> {
    let mut out = vec![
        Expr::Meta { key: nft::META_L4PROTO, dreg: r(0) },
        Expr::Cmp { sreg: r(0), op: nft::CMP_EQ, data: vec![Proto::Tcp.number()] },
    ];
    out.extend(tcp_flags(SYN | RST, nft::CMP_NEQ, 0));
    out.extend([
        Expr::Ct { key: nft::CT_DIRECTION, dir: None, dreg: r(0) },
        Expr::Cmp { sreg: r(0), op: nft::CMP_EQ, data: vec![nft::CT_REPLY] },
        Expr::Ct { key: nft::CT_DST_IP, dir: Some(nft::CT_ORIGINAL), dreg: r(0) },
        Expr::Ct { key: nft::CT_PROTO_DST, dir: Some(nft::CT_ORIGINAL), dreg: r(1) },
        payload_saddr(r(2)),
        Expr::Lookup { set: "connection-sets".into(), sreg: r(0), dreg: Some(nft::VERDICT) },
    ]);
    out
}

fn external_chain(base: &str) -> String {
    format!("external-{}-{base}", hash(base))
}

fn base(s: &ServiceInfo, p: &PortInfo) -> String {
    format!("{}/{}/{}/{}", s.namespace, s.name, p.proto.as_str(), p.name)
}

/// The base of a port's entry for an external address: `namespace/name/proto/port@IP`.
fn external_base(base: &str, ip: Ipv4Addr) -> String {
    format!("{base}@{ip}")
}

/// The base of a port's NodePort entry under `externalTrafficPolicy: Local`.
fn nodeport_base(base: &str) -> String {
    format!("{base}#nodeport")
}

/// Adds the ports of `s` to `r`, keeping the numbers `old` gave them. An external address
/// is an entry of its own, keyed by its address like the ClusterIP's: the same endpoints,
/// no NodePort, masqueraded from outside the cluster as kube-proxy does with
/// `externalTrafficPolicy: Cluster`.
fn add_ports(r: &mut Ruleset, s: &ServiceInfo, old: &Ruleset) {
    let Some(cluster_ip) = s.cluster_ip else { return };
    for p in &s.ports {
        let main = base(s, p);
        let (endpoints, canary) = p.split();
        // (base, address, NodePort, endpoints, canary, keep source, NodePort only).
        let mut entries = Vec::with_capacity(2 + s.external_ips.len());
        let outside = s.external_ips.iter().filter(|ip| **ip != cluster_ip);
        match &p.external {
            None => {
                entries.push((
                    main.clone(),
                    cluster_ip,
                    p.node_port,
                    endpoints.clone(),
                    canary.clone(),
                    false,
                    false,
                ));
                for ip in outside {
                    entries.push((
                        external_base(&main, *ip),
                        *ip,
                        None,
                        endpoints.clone(),
                        canary.clone(),
                        false,
                        false,
                    ));
                }
            }
            // Local: the NodePort and the external addresses keep to this node's endpoints
            // (no canary split) and keep the client's address.
            Some(local) => {
                let local = sorted(local);
                entries.push((
                    main.clone(),
                    cluster_ip,
                    None,
                    endpoints.clone(),
                    canary.clone(),
                    false,
                    false,
                ));
                if p.node_port.is_some() {
                    entries.push((
                        nodeport_base(&main),
                        cluster_ip,
                        p.node_port,
                        local.clone(),
                        None,
                        true,
                        true,
                    ));
                }
                for ip in outside {
                    entries.push((external_base(&main, *ip), *ip, None, local.clone(), None, true, false));
                }
            }
        }
        for (base, ip, node_port, endpoints, canary, keep_source, nodeport_only) in entries {
            let id = match old.ports.get(&base) {
                Some(o) => o.id,
                None => {
                    r.next_id += 1;
                    r.next_id - 1
                }
            };
            let port = Port {
                id,
                ip,
                proto: p.proto,
                port: p.port,
                node_port,
                endpoints,
                affinity: s.affinity,
                canary,
                source_ranges: if s.lb_ips.contains(&ip) { s.source_ranges.clone() } else { Vec::new() },
                keep_source,
                nodeport_only,
            };
            r.ports.insert(base, port);
        }
    }
}

/// The ruleset for these Services, keeping the numbers `old` gave the ports it has.
pub fn build(services: &[ServiceInfo], old: &Ruleset) -> Ruleset {
    let mut r = Ruleset { ports: BTreeMap::new(), next_id: old.next_id.max(1) };
    for s in services {
        add_ports(&mut r, s, old);
    }
    r
}

fn key(s: &ServiceInfo) -> (&str, &str) {
    (&s.namespace, &s.name)
}

/// Brings `r` (built from `before`) to `after` and returns the batch, looking only at the
/// Services that changed: what the proxy does on each event, in O(changed) but for one
/// comparison of the two lists.
pub fn update(r: &mut Ruleset, before: &[ServiceInfo], after: &[ServiceInfo]) -> Vec<Cmd> {
    let (mut gone, mut changed): (Vec<&ServiceInfo>, Vec<&ServiceInfo>) = (Vec::new(), Vec::new());
    // Usually the same Services in the same order (an endpoint changed): compared pairwise,
    // no hashing.
    if before.len() == after.len() && before.iter().zip(after).all(|(b, a)| key(b) == key(a)) {
        for (b, a) in before.iter().zip(after) {
            if b != a {
                gone.push(b);
                changed.push(a);
            }
        }
    } else {
        let old: std::collections::HashMap<_, &ServiceInfo> = before.iter().map(|s| (key(s), s)).collect();
        let new: std::collections::HashMap<_, &ServiceInfo> = after.iter().map(|s| (key(s), s)).collect();
        gone.extend(before.iter().filter(|b| new.get(&key(b)) != Some(b)));
        changed.extend(after.iter().filter(|a| old.get(&key(a)) != Some(a)));
    }
    if gone.is_empty() && changed.is_empty() {
        return Vec::new();
    }
    let was = spreads(r);
    let mut old_part = Ruleset::default();
    for s in gone {
        for p in &s.ports {
            let main = base(s, p);
            let bases = [main.clone(), nodeport_base(&main)]
                .into_iter()
                .chain(s.external_ips.iter().map(|ip| external_base(&main, *ip)));
            for b in bases {
                if let Some(port) = r.ports.remove(&b) {
                    old_part.ports.insert(b, port);
                }
            }
        }
    }
    let mut new_part = Ruleset { ports: BTreeMap::new(), next_id: r.next_id.max(1) };
    for s in changed {
        add_ports(&mut new_part, s, &old_part);
    }
    r.next_id = new_part.next_id;
    r.ports.extend(new_part.ports.iter().map(|(k, v)| (k.clone(), v.clone())));
    diff_in(&old_part, &new_part, &was, &spreads(r))
}

fn payload_saddr(dreg: u32) -> Expr {
    Expr::Payload { base: nft::BASE_NETWORK, offset: 12, len: 4, dreg }
}

fn imm_id(dreg: u32, id: u32) -> Expr {
    Expr::Immediate { dreg, data: id.to_be_bytes().to_vec() }
}

/// `meta mark |= MASQ`, through register `reg`.
fn mark_masquerade(reg: u32) -> Vec<Expr> {
    vec![
        Expr::Meta { key: nft::META_MARK, dreg: reg },
        Expr::Bitwise {
            sreg: reg,
            dreg: reg,
            mask: (!MASQ_BIT).to_ne_bytes().to_vec(),
            xor: MASQ_BIT.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet { key: nft::META_MARK, sreg: reg },
    ]
}

/// `reg & mask(cidr) OP network(cidr)`, in place.
pub(crate) fn in_cidr(reg: u32, c: Cidr4, op: u32) -> Vec<Expr> {
    let mask = if c.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(c.prefix)) };
    vec![
        Expr::Bitwise { sreg: reg, dreg: reg, mask: mask.to_be_bytes().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { sreg: reg, op, data: c.network.octets().to_vec() },
    ]
}

/// The rules of a ClientIP-affinity port's service chain: first the endpoint this client
/// was sent to before, if it is still one (the timeout restarts), else endpoint i with
/// probability 1/(N-i) among those left — uniform over all N, as kube-proxy's iptables mode
/// picks with `statistic` — remembered as (port, endpoint, client) in `@affinity`. Every
/// rule is whole by itself: this kernel refuses a rule that reads a register it did not write.
fn service_rules(p: &Port) -> Vec<Vec<Expr>> {
    let timeout_ms = p.affinity.map(|t| u64::from(t) * 1000);
    let remember = |op: u32| Expr::Dynset { set: "affinity".into(), op, key: r(0), data: None, timeout_ms };
    let key = |a: Ipv4Addr, port: u16| {
        vec![
            imm_id(r(0), p.id),
            Expr::Immediate { dreg: r(1), data: nft::key_ip(a).to_vec() },
            // Two bytes; the register's other two are zeroed, as the key's padding wants.
            Expr::Immediate { dreg: r(2), data: port.to_be_bytes().to_vec() },
            payload_saddr(r(3)),
        ]
    };
    let dnat = |a: Ipv4Addr, port: u16| {
        vec![
            Expr::Immediate { dreg: r(4), data: nft::key_ip(a).to_vec() },
            Expr::Immediate { dreg: r(5), data: port.to_be_bytes().to_vec() },
            Expr::Dnat { addr: r(4), port: r(5) },
        ]
    };
    let mut out = Vec::with_capacity(p.endpoints.len() * 2 + 1);
    if !p.keep_source {
        out.push(vec![Expr::Jump("mark-outside".into())]);
    }
    for &(a, port) in &p.endpoints {
        let mut rule = key(a, port);
        rule.push(Expr::Lookup { set: "affinity".into(), sreg: r(0), dreg: None });
        rule.push(remember(nft::DYNSET_UPDATE));
        rule.extend(dnat(a, port));
        out.push(rule);
    }
    let n = p.endpoints.len();
    for (i, &(a, port)) in p.endpoints.iter().enumerate() {
        let mut rule = Vec::with_capacity(12);
        if i + 1 < n {
            let left = u32::try_from(n - i).unwrap_or(u32::MAX);
            rule.push(Expr::Numgen { dreg: r(0), modulus: left });
            rule.push(Expr::Cmp { sreg: r(0), op: nft::CMP_EQ, data: vec![0; 4] });
        }
        rule.extend(key(a, port));
        rule.push(remember(nft::DYNSET_ADD));
        rule.extend(dnat(a, port));
        out.push(rule);
    }
    out
}

fn ip_key(ip: Ipv4Addr, proto: Proto, port: u16) -> Vec<u8> {
    [nft::key_ip(ip), nft::key_proto(proto.number()), nft::key_port(port)].concat()
}

fn port_key(proto: Proto, port: u16) -> Vec<u8> {
    [nft::key_proto(proto.number()), nft::key_port(port)].concat()
}

/// A shared spread chain: (NodePort?, keeps the source?, endpoint count).
type Spread = (bool, bool, usize);

fn spread_chain(nodeport: bool, keep_source: bool, n: usize) -> String {
    match (nodeport, keep_source) {
        (true, false) => format!("nodeport-spread-{n}"),
        (false, false) => format!("spread-{n}"),
        (true, true) => format!("nodeport-local-spread-{n}"),
        (false, true) => format!("local-spread-{n}"),
    }
}

/// A port's set elements: `(set, key, data)`.
fn elements(base: &str, p: &Port) -> Vec<(&'static str, Vec<u8>, Option<Data>)> {
    let mut out = Vec::with_capacity(p.endpoints.len() * 2 + 2);
    let key = ip_key(p.ip, p.proto, p.port);
    if p.endpoints.is_empty() {
        if !p.nodeport_only {
            out.push(("no-endpoint-services", key, Some(Data::Goto("reject-chain".into()))));
        }
        if let Some(np) = p.node_port {
            out.push((
                "no-endpoint-nodeports",
                port_key(p.proto, np),
                Some(Data::Goto("reject-chain".into())),
            ));
        }
        return out;
    }
    let n = p.endpoints.len();
    if let (Some((_, canary)), None) = (&p.canary, p.affinity) {
        // Both sets in the endpoint map under keys no packet carries; the port's chain
        // picks the set, then an endpoint in it.
        for (set_key, eps) in [
            (weighted_key(p.id, false, p.proto, p.port), &p.endpoints),
            (weighted_key(p.id, true, p.proto, p.port), canary),
        ] {
            for (i, (a, port)) in (0u32..).zip(eps) {
                let value = [nft::key_ip(*a), nft::key_port(*port)].concat();
                out.push((
                    "endpoints",
                    [set_key.as_slice(), &nft::key_u32(i)].concat(),
                    Some(Data::Value(value)),
                ));
            }
        }
        if p.proto == Proto::Tcp {
            // Each endpoint address to its set's counting chain (an address in both sets is
            // counted as the canary's).
            let mut sets: BTreeMap<Ipv4Addr, bool> = p.endpoints.iter().map(|(a, _)| (*a, false)).collect();
            sets.extend(canary.iter().map(|(a, _)| (*a, true)));
            for (a, is_canary) in sets {
                out.push((
                    "connection-sets",
                    [nft::key_ip(p.ip), nft::key_port(p.port), nft::key_ip(a)].concat(),
                    Some(Data::Goto(conns_chain(base, is_canary))),
                ));
            }
        }
        out.push(("service-ips", key, Some(Data::Goto(guarded(base, p, weighted_chain(base))))));
        if let Some(np) = p.node_port {
            out.push(("service-nodeports", port_key(p.proto, np), Some(Data::Goto(external_chain(base)))));
        }
        return out;
    }
    if p.affinity.is_some() {
        if !p.nodeport_only {
            out.push(("service-ips", key, Some(Data::Goto(guarded(base, p, service_chain(base))))));
        }
        if let Some(np) = p.node_port {
            out.push(("service-nodeports", port_key(p.proto, np), Some(Data::Goto(external_chain(base)))));
        }
        return out;
    }
    for (i, (a, port)) in (0u32..).zip(&p.endpoints) {
        let value = [nft::key_ip(*a), nft::key_port(*port)].concat();
        if !p.nodeport_only {
            out.push((
                "endpoints",
                [key.as_slice(), &nft::key_u32(i)].concat(),
                Some(Data::Value(value.clone())),
            ));
        }
        if let Some(np) = p.node_port {
            let k = [port_key(p.proto, np).as_slice(), &nft::key_u32(i)].concat();
            out.push(("nodeport-endpoints", k, Some(Data::Value(value))));
        }
    }
    if !p.nodeport_only {
        let to = guarded(base, p, spread_chain(false, p.keep_source, n));
        out.push(("service-ips", key, Some(Data::Goto(to))));
    }
    if let Some(np) = p.node_port {
        let to = spread_chain(true, p.keep_source, n);
        out.push(("service-nodeports", port_key(p.proto, np), Some(Data::Goto(to))));
    }
    out
}

fn firewall_chain(base: &str) -> String {
    format!("firewall-{}-{base}", hash(base))
}

/// Where a port's address goes: `to`, or first its firewall chain when only some sources
/// may connect.
fn guarded(base: &str, p: &Port, to: String) -> String {
    if p.source_ranges.is_empty() { to } else { firewall_chain(base) }
}

/// Where a port's address leads past its firewall (what [`elements`] names without one).
fn target(base: &str, p: &Port) -> String {
    match (&p.canary, p.affinity) {
        (Some(_), None) => weighted_chain(base),
        (_, Some(_)) => service_chain(base),
        _ => spread_chain(false, p.keep_source, p.endpoints.len()),
    }
}

/// A port's chains with their rules, in the order they may be made: a firewall chain
/// (`loadBalancerSourceRanges`: each range goes on, the rest is dropped) after what it
/// leads to.
fn chains(base: &str, p: &Port) -> Vec<(String, Vec<Vec<Expr>>)> {
    let mut out = own_chains(base, p);
    if !p.source_ranges.is_empty() && !p.endpoints.is_empty() {
        let to = target(base, p);
        let mut rules: Vec<Vec<Expr>> = p
            .source_ranges
            .iter()
            .map(|c| {
                let mut e = vec![payload_saddr(r(0))];
                e.extend(in_cidr(r(0), *c, nft::CMP_EQ));
                e.push(Expr::Goto(to.clone()));
                e
            })
            .collect();
        rules.push(vec![Expr::Counter, Expr::Verdict(nft::DROP)]);
        out.push((firewall_chain(base), rules));
    }
    out
}

/// A ClientIP-affinity port's chains with their rules, in the order they may be made (the
/// external chain goes to the service chain). Other ports need none of their own.
fn own_chains(base: &str, p: &Port) -> Vec<(String, Vec<Vec<Expr>>)> {
    if let (Some((w, canary)), None, false) = (&p.canary, p.affinity, p.endpoints.is_empty()) {
        let chain = weighted_chain(base);
        let pick = |canary_set: bool, n: usize| {
            vec![
                Expr::Immediate {
                    dreg: r(0),
                    data: weighted_key(p.id, canary_set, p.proto, p.port)[..4].to_vec(),
                },
                Expr::Immediate { dreg: r(1), data: nft::key_proto(p.proto.number()).to_vec() },
                Expr::Immediate { dreg: r(2), data: nft::key_port(p.port).to_vec() },
                Expr::Numgen { dreg: r(3), modulus: u32::try_from(n).unwrap_or(u32::MAX) },
                Expr::Lookup { set: "endpoints".into(), sreg: r(0), dreg: Some(r(4)) },
                Expr::Dnat { addr: r(4), port: r(5) },
            ]
        };
        // `numgen random mod 100 < w` takes the canary: exactly w% of new connections.
        let mut to_canary = vec![
            Expr::Numgen { dreg: r(0), modulus: 100 },
            Expr::Hton { sreg: r(0), dreg: r(0) },
            Expr::Cmp { sreg: r(0), op: nft::CMP_LT, data: w.to_be_bytes().to_vec() },
        ];
        to_canary.extend(pick(true, canary.len()));
        let rules = vec![vec![Expr::Jump("mark-outside".into())], to_canary, pick(false, p.endpoints.len())];
        let mut out = Vec::with_capacity(4);
        if p.proto == Proto::Tcp {
            out.push((conns_chain(base, true), conns_rules()));
            out.push((conns_chain(base, false), conns_rules()));
        }
        out.push((chain.clone(), rules));
        if p.node_port.is_some() {
            out.push((external_chain(base), vec![mark_masquerade(r(0)), vec![Expr::Goto(chain)]]));
        }
        // The external chain goes to the weighted one: made after it, removed before.
        return out;
    }
    if p.endpoints.is_empty() || p.affinity.is_none() {
        return Vec::new();
    }
    let svc = service_chain(base);
    let mut out = vec![(svc.clone(), service_rules(p))];
    if p.node_port.is_some() {
        let mut rules = if p.keep_source { Vec::new() } else { vec![mark_masquerade(r(0))] };
        rules.push(vec![Expr::Goto(svc)]);
        out.push((external_chain(base), rules));
    }
    out
}

/// The shared chains that pick one of `n` endpoints from the endpoint maps: `(nodeport, n)`
/// for every size in use.
fn spreads(r: &Ruleset) -> std::collections::BTreeSet<Spread> {
    let mut out = std::collections::BTreeSet::new();
    for p in
        r.ports.values().filter(|p| p.affinity.is_none() && p.canary.is_none() && !p.endpoints.is_empty())
    {
        if !p.nodeport_only {
            out.insert((false, p.keep_source, p.endpoints.len()));
        }
        if p.node_port.is_some() {
            out.insert((true, p.keep_source, p.endpoints.len()));
        }
    }
    out
}

/// `dnat to KEY . numgen random mod n map @endpoints` — KEY is the packet's (ClusterIP,
/// protocol, port), or (protocol, NodePort) with the mark for masquerade first.
/// With `keep_source` (`externalTrafficPolicy: Local`) nothing is marked for masquerade.
fn spread_rules(nodeport: bool, keep_source: bool, n: usize) -> Vec<Vec<Expr>> {
    let modulus = u32::try_from(n).unwrap_or(u32::MAX);
    let dport = |dreg| Expr::Payload { base: nft::BASE_TRANSPORT, offset: 2, len: 2, dreg };
    let (mark, pick) = if nodeport {
        (
            mark_masquerade(r(0)),
            vec![
                Expr::Meta { key: nft::META_L4PROTO, dreg: r(0) },
                dport(r(1)),
                Expr::Numgen { dreg: r(2), modulus },
                Expr::Lookup { set: "nodeport-endpoints".into(), sreg: r(0), dreg: Some(r(3)) },
                Expr::Dnat { addr: r(3), port: r(4) },
            ],
        )
    } else {
        (
            vec![Expr::Jump("mark-outside".into())],
            vec![
                Expr::Payload { base: nft::BASE_NETWORK, offset: 16, len: 4, dreg: r(0) },
                Expr::Meta { key: nft::META_L4PROTO, dreg: r(1) },
                dport(r(2)),
                Expr::Numgen { dreg: r(3), modulus },
                Expr::Lookup { set: "endpoints".into(), sreg: r(0), dreg: Some(r(4)) },
                Expr::Dnat { addr: r(4), port: r(5) },
            ],
        )
    };
    if keep_source { vec![pick] } else { vec![mark, pick] }
}

/// The sets of the table.
fn sets() -> Vec<SetSpec> {
    use nft::ty::{IPV4, MARK, PROTO, SERVICE, concat};
    let verdict = Some((nft::DATA_VERDICT, 0));
    let endpoint = Some((concat(&[IPV4, SERVICE]), 8));
    vec![
        SetSpec {
            name: "service-ips".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[IPV4, PROTO, SERVICE]),
            key_len: 12,
            data: verdict,
        },
        SetSpec {
            name: "service-nodeports".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[PROTO, SERVICE]),
            key_len: 8,
            data: verdict,
        },
        SetSpec {
            name: "no-endpoint-services".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[IPV4, PROTO, SERVICE]),
            key_len: 12,
            data: verdict,
        },
        SetSpec {
            name: "no-endpoint-nodeports".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[PROTO, SERVICE]),
            key_len: 8,
            data: verdict,
        },
        SetSpec {
            name: "endpoints".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[IPV4, PROTO, SERVICE, MARK]),
            key_len: 16,
            data: endpoint,
        },
        SetSpec {
            name: "nodeport-endpoints".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[PROTO, SERVICE, MARK]),
            key_len: 12,
            data: endpoint,
        },
        SetSpec {
            name: "connection-sets".into(),
            flags: nft::SET_MAP,
            key_type: concat(&[IPV4, SERVICE, IPV4]),
            key_len: 12,
            data: verdict,
        },
        SetSpec {
            name: "affinity".into(),
            flags: nft::SET_TIMEOUT | nft::SET_EVAL,
            key_type: concat(&[MARK, IPV4, SERVICE, IPV4]),
            key_len: 16,
            data: None,
        },
    ]
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Cmd {
    Cmd::AddRule { chain: chain.to_string(), exprs }
}

/// The batch that (re)creates the whole table.
pub fn full(rules: &Ruleset, node: &NodeInfo) -> Vec<Cmd> {
    let mut out = vec![Cmd::AddTable, Cmd::DeleteTable, Cmd::AddTable];
    for (name, kind, hook, prio) in [
        ("nat-prerouting", "nat", 0, -100),
        ("nat-output", "nat", 3, -100),
        ("nat-postrouting", "nat", 4, 100),
        ("filter-forward", "filter", 2, -110),
        ("filter-output", "filter", 3, -110),
        ("filter-input", "filter", 1, -110),
    ] {
        out.push(Cmd::AddBaseChain { name, kind, hook, prio });
    }
    for c in ["services", "reject-chain", "mark-outside"] {
        out.push(Cmd::AddChain(c.into()));
    }
    out.extend(sets().into_iter().map(Cmd::AddSet));
    out.push(rule("nat-prerouting", vec![Expr::Jump("services".into())]));
    out.push(rule("nat-output", vec![Expr::Jump("services".into())]));
    let mut post = vec![
        Expr::Meta { key: nft::META_MARK, dreg: r(0) },
        Expr::Bitwise { sreg: r(0), dreg: r(0), mask: MASQ_BIT.to_ne_bytes().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { sreg: r(0), op: nft::CMP_NEQ, data: vec![0; 4] },
        Expr::Meta { key: nft::META_MARK, dreg: r(0) },
        Expr::Bitwise { sreg: r(0), dreg: r(0), mask: vec![0xff; 4], xor: MASQ_BIT.to_ne_bytes().to_vec() },
        Expr::MetaSet { key: nft::META_MARK, sreg: r(0) },
    ];
    post.push(Expr::Masquerade);
    out.push(rule("nat-postrouting", post));
    // A pod of this node's bridge DNATed to another (or itself): the reply must come back
    // through this host, not straight over the bridge.
    let mut same_bridge = vec![
        Expr::CtStatus { dreg: r(0) },
        Expr::Bitwise { sreg: r(0), dreg: r(0), mask: 0x20u32.to_ne_bytes().to_vec(), xor: vec![0; 4] }, // IPS_DST_NAT
        Expr::Cmp { sreg: r(0), op: nft::CMP_NEQ, data: vec![0; 4] },
        payload_saddr(r(0)),
    ];
    same_bridge.extend(in_cidr(r(0), node.pod_cidr, nft::CMP_EQ));
    same_bridge.push(Expr::Payload { base: nft::BASE_NETWORK, offset: 16, len: 4, dreg: r(0) });
    same_bridge.extend(in_cidr(r(0), node.pod_cidr, nft::CMP_EQ));
    same_bridge.push(Expr::Masquerade);
    out.push(rule("nat-postrouting", same_bridge));
    let dispatch = |set: &str| {
        vec![
            Expr::Payload { base: nft::BASE_NETWORK, offset: 16, len: 4, dreg: r(0) },
            Expr::Meta { key: nft::META_L4PROTO, dreg: r(1) },
            Expr::Payload { base: nft::BASE_TRANSPORT, offset: 2, len: 2, dreg: r(2) },
            Expr::Lookup { set: set.into(), sreg: r(0), dreg: Some(nft::VERDICT) },
        ]
    };
    let local = |set: &str| {
        vec![
            Expr::FibDaddrType { dreg: r(0) },
            Expr::Cmp { sreg: r(0), op: nft::CMP_EQ, data: 2u32.to_ne_bytes().to_vec() }, // RTN_LOCAL
            Expr::Meta { key: nft::META_L4PROTO, dreg: r(0) },
            Expr::Payload { base: nft::BASE_TRANSPORT, offset: 2, len: 2, dreg: r(1) },
            Expr::Lookup { set: set.into(), sreg: r(0), dreg: Some(nft::VERDICT) },
        ]
    };
    // Traffic to a Service from outside the cluster's pods is masqueraded (the reply must
    // come back through this node): the first thing every service's path does.
    let mut outside = vec![payload_saddr(r(0))];
    outside.extend(in_cidr(r(0), node.cluster_cidr, nft::CMP_NEQ));
    outside.extend(mark_masquerade(r(0)));
    out.push(rule("mark-outside", outside));
    out.push(rule("services", dispatch("service-ips")));
    out.push(rule("services", local("service-nodeports")));
    out.push(rule("filter-forward", dispatch("no-endpoint-services")));
    out.push(rule("filter-output", dispatch("no-endpoint-services")));
    out.push(rule("filter-input", local("no-endpoint-nodeports")));
    for chain in ["filter-forward", "filter-input", "filter-output"] {
        out.push(rule(chain, count_replies()));
    }
    out.push(rule("reject-chain", vec![Expr::Reject]));
    out.extend(diff(&Ruleset::default(), rules));
    out
}

/// The batch that turns `old` into `new`, touching only the ports that changed: element
/// removals first, then new and changed chains, then new elements, then chains no longer
/// used (nothing refers to them by then).
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Cmd> {
    diff_in(old, new, &spreads(old), &spreads(new))
}

/// [`diff`] for parts of rulesets, with the spread chains the whole ones use.
fn diff_in(
    old: &Ruleset,
    new: &Ruleset,
    was: &std::collections::BTreeSet<Spread>,
    now: &std::collections::BTreeSet<Spread>,
) -> Vec<Cmd> {
    let (mut dels, mut chain_cmds, mut adds, mut gone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut visit = |base: &str, o: Option<&Port>, n: Option<&Port>| {
        if o == n {
            return;
        }
        let oe = o.map(|p| elements(base, p)).unwrap_or_default();
        let ne = n.map(|p| elements(base, p)).unwrap_or_default();
        for e in &oe {
            if !ne.contains(e) {
                dels.push(Cmd::DeleteElem { set: e.0.into(), key: e.1.clone() });
            }
        }
        for e in ne.iter().filter(|e| !oe.contains(e)) {
            adds.push(Cmd::AddElem { set: e.0.into(), key: e.1.clone(), data: e.2.clone() });
        }
        let oc = o.map(|p| chains(base, p)).unwrap_or_default();
        let nc = n.map(|p| chains(base, p)).unwrap_or_default();
        for (name, rules) in &nc {
            match oc.iter().find(|(c, _)| c == name) {
                Some((_, old_rules)) if old_rules == rules => continue,
                Some(_) => chain_cmds.push(Cmd::FlushChain(name.clone())),
                None => chain_cmds.push(Cmd::AddChain(name.clone())),
            }
            for rl in rules {
                chain_cmds.push(rule(name, rl.clone()));
            }
        }
        // External chains go before the service chains they lead to.
        for (name, _) in oc.iter().rev() {
            if !nc.iter().any(|(c, _)| c == name) {
                gone.push(name.clone());
            }
        }
    };
    let (mut a, mut b) = (old.ports.iter().peekable(), new.ports.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some((ka, pa)), Some((kb, pb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Equal => {
                    visit(ka, Some(pa), Some(pb));
                    a.next();
                    b.next();
                }
                std::cmp::Ordering::Less => {
                    visit(ka, Some(pa), None);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    visit(kb, None, Some(pb));
                    b.next();
                }
            },
            (Some((ka, pa)), None) => {
                visit(ka, Some(pa), None);
                a.next();
            }
            (None, Some((kb, pb))) => {
                visit(kb, None, Some(pb));
                b.next();
            }
            (None, None) => break,
        }
    }
    // The shared spread chains: made before anything goes to them, removed after.
    let mut out = dels;
    for &(nodeport, keep, n) in now.difference(was) {
        let name = spread_chain(nodeport, keep, n);
        out.push(Cmd::AddChain(name.clone()));
        out.extend(spread_rules(nodeport, keep, n).into_iter().map(|e| rule(&name, e)));
    }
    out.extend(chain_cmds);
    out.extend(adds);
    gone.extend(was.difference(now).map(|&(nodeport, keep, n)| spread_chain(nodeport, keep, n)));
    for c in &gone {
        out.push(Cmd::FlushChain(c.clone()));
    }
    out.extend(gone.into_iter().map(Cmd::DeleteChain));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn node() -> NodeInfo {
        NodeInfo {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        }
    }

    pub fn svc(
        name: &str,
        ip: &str,
        eps: &[(&str, u16)],
        node_port: Option<u16>,
        affinity: Option<u32>,
    ) -> ServiceInfo {
        ServiceInfo {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: Some(ip.parse().unwrap()),
            ports: vec![PortInfo {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 80,
                node_port,
                endpoints: eps.iter().map(|(a, p)| (a.parse().unwrap(), *p)).collect(),
                canary: None,
                external: None,
            }],
            affinity,
            external_ips: Vec::new(),
            source_ranges: Vec::new(),
            lb_ips: Vec::new(),
        }
    }

    fn text(cmds: &[Cmd]) -> String {
        cmds.iter().map(|c| format!("{c}\n")).collect()
    }

    fn hex_ne(v: u32) -> String {
        v.to_ne_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// externalTrafficPolicy Local: the NodePort and the external address take this node's
    /// endpoints only, through spread chains that mark nothing for masquerade; the ClusterIP
    /// keeps them all.
    #[test]
    fn local_external_traffic_keeps_to_this_node_and_its_source() {
        let mut s =
            svc("web", "10.96.0.10", &[("10.244.1.5", 8080), ("10.244.2.7", 8080)], Some(30080), None);
        s.ports[0].external = Some(vec![("10.244.1.5".parse().unwrap(), 8080)]);
        s.external_ips = vec!["192.0.2.10".parse().unwrap()];
        let r = build(&[s.clone()], &Ruleset::default());
        let main = &r.ports["default/web/tcp/http"];
        assert_eq!((main.endpoints.len(), main.node_port, main.keep_source), (2, None, false));
        let np = &r.ports["default/web/tcp/http#nodeport"];
        assert_eq!(
            (np.endpoints.len(), np.node_port, np.keep_source, np.nodeport_only),
            (1, Some(30080), true, true)
        );
        let ext = &r.ports["default/web/tcp/http@192.0.2.10"];
        assert_eq!((ext.endpoints.len(), ext.keep_source), (1, true));
        let all = text(&full(&r, &node()));
        assert!(
            all.contains("add chain nodeport-local-spread-1") && all.contains("add chain local-spread-1"),
            "{all}"
        );
        let local: Vec<&str> = all.lines().filter(|l| l.starts_with("add rule local-spread-1")).collect();
        assert_eq!(local.len(), 1, "no jump to mark-outside: {local:?}");
        assert!(
            !all.lines()
                .any(|l| l.starts_with("add rule nodeport-local-spread-1") && l.contains("meta mark set"))
        );
        // Its NodePort entry has no ClusterIP element of its own: the ClusterIP's is the main one's.
        let cluster_key = ip_key("10.96.0.10".parse().unwrap(), Proto::Tcp, 80);
        assert!(elements("default/web/tcp/http#nodeport", np).iter().all(|e| e.1 != cluster_key));
        // Back to Cluster: the extra entries and chains go.
        let mut back = s.clone();
        back.ports[0].external = None;
        let mut r2 = r.clone();
        let cmds = text(&update(&mut r2, &[s], &[back]));
        assert!(cmds.contains("delete chain nodeport-local-spread-1"), "{cmds}");
        assert!(!r2.ports.contains_key("default/web/tcp/http#nodeport"));
    }

    #[test]
    fn a_weighted_tcp_port_counts_each_sets_replies_and_a_reweight_keeps_the_counters() {
        let weighted = |w: u32, proto: Proto| {
            let mut s = svc("web", "10.96.0.10", &[("10.244.1.5", 8080), ("10.244.1.6", 8080)], None, None);
            s.ports[0].proto = proto;
            s.ports[0].canary = Some((w, vec![("10.244.1.7".parse().unwrap(), 8080)]));
            s
        };
        let r = build(&[weighted(10, Proto::Tcp)], &Ruleset::default());
        assert_eq!(counted(&r), vec!["default/web/tcp/http".to_string()]);
        let got = text(&diff(&Ruleset::default(), &r));
        let canary = conns_chain("default/web/tcp/http", true);
        assert!(got.starts_with(&format!("add chain {canary}\nadd rule {canary} r0=tcp flags;")), "{got}");
        // (ClusterIP, port, endpoint) → the endpoint's set.
        assert!(
            got.contains(&format!(
                "add element connection-sets {{ 0a60000a005000000af40107 : goto {canary} }}"
            )),
            "{got}"
        );
        assert_eq!(got.matches("add element connection-sets").count(), 3, "{got}");
        let all = text(&full(&r, &node()));
        for chain in ["filter-forward", "filter-input", "filter-output"] {
            assert!(
                all.contains(&format!("add rule {chain} r0=meta l4proto; r0 == 06; r0=tcp flags;")),
                "{all}"
            );
        }
        // A new weight rewrites the weighted chain only: the counting chains keep counting.
        let mut r2 = r.clone();
        let cmds = text(&update(&mut r2, &[weighted(10, Proto::Tcp)], &[weighted(50, Proto::Tcp)]));
        assert!(cmds.starts_with("flush chain weighted-") && !cmds.contains("conns-"), "{cmds}");
        // UDP has no resets to count.
        let u = build(&[weighted(10, Proto::Udp)], &Ruleset::default());
        assert!(counted(&u).is_empty());
        assert!(!text(&diff(&Ruleset::default(), &u)).contains("conns-"));
    }

    /// A LoadBalancer's address (or an external IP) is an entry of its own beside the
    /// ClusterIP's, with the same endpoints and no NodePort; it goes when the address does.
    #[test]
    fn external_addresses_reach_the_same_endpoints() {
        let mut s = svc("web", "10.96.0.10", &[("10.244.1.5", 8080)], Some(30080), None);
        s.external_ips = vec!["192.0.2.241".parse().unwrap()];
        let mut r = build(std::slice::from_ref(&s), &Ruleset::default());
        let ext = &r.ports["default/web/tcp/http@192.0.2.241"];
        assert_eq!(
            (ext.ip.to_string(), ext.node_port, ext.endpoints.clone()),
            ("192.0.2.241".into(), None, r.ports["default/web/tcp/http"].endpoints.clone())
        );
        assert_eq!(r.ports["default/web/tcp/http"].node_port, Some(30080));
        let added = elements("default/web/tcp/http@192.0.2.241", ext);
        assert!(
            added.iter().any(|(set, key, _)| *set == "service-ips" && key[..4] == [192, 0, 2, 241]),
            "{added:?}"
        );
        let mut without = s.clone();
        without.external_ips.clear();
        let batch = update(&mut r, std::slice::from_ref(&s), std::slice::from_ref(&without));
        assert!(!batch.is_empty());
        assert_eq!(r.ports.keys().collect::<Vec<_>>(), ["default/web/tcp/http"]);
    }

    #[test]
    fn snapshot_of_a_service_with_two_endpoints_and_a_node_port() {
        let r = build(
            &[svc("web", "10.96.0.10", &[("10.244.2.7", 8080), ("10.244.1.5", 8080)], Some(30080), None)],
            &Ruleset::default(),
        );
        let got = text(&diff(&Ruleset::default(), &r));
        // Keys in the registers' layout: address, protocol and port each padded to 4 bytes,
        // the random index in host order.
        let (not, bit) = (hex_ne(!MASQ_BIT), hex_ne(MASQ_BIT));
        let (i0, i1) = (hex_ne(0), hex_ne(1));
        let expected = format!(
            "add chain spread-2
add rule spread-2 jump mark-outside;
add rule spread-2 r0=ip daddr; r1=meta l4proto; r2=th dport; r3=numgen random mod 2; r4=r0 map @endpoints; dnat to r4:r5;
add chain nodeport-spread-2
add rule nodeport-spread-2 r0=meta mark; r0=(r0 & {not}) ^ {bit}; meta mark set r0;
add rule nodeport-spread-2 r0=meta l4proto; r1=th dport; r2=numgen random mod 2; r3=r0 map @nodeport-endpoints; dnat to r3:r4;
add element endpoints {{ 0a60000a0600000000500000{i0} : 0af401051f900000 }}
add element nodeport-endpoints {{ 0600000075800000{i0} : 0af401051f900000 }}
add element endpoints {{ 0a60000a0600000000500000{i1} : 0af402071f900000 }}
add element nodeport-endpoints {{ 0600000075800000{i1} : 0af402071f900000 }}
add element service-ips {{ 0a60000a0600000000500000 : goto spread-2 }}
add element service-nodeports {{ 0600000075800000 : goto nodeport-spread-2 }}
"
        );
        assert_eq!(got, expected, "actual:\n{got}");
        // The fixed part: every chain and set, then this port.
        let all = text(&full(&r, &node()));
        assert!(all.starts_with("add table\ndelete table\nadd table\n"), "{all}");
        if cfg!(target_endian = "little") {
            assert!(all.contains("add rule nat-postrouting r0=ct status; r0=(r0 & 20000000) ^ 00000000; r0 != 00000000; r0=ip saddr; r0=(r0 & ffffff00) ^ 00000000; r0 == 0af40100; r0=ip daddr;"), "{all}");
        }
        assert!(all.contains("add rule mark-outside r0=ip saddr; r0=(r0 & ffff0000) ^ 00000000; r0 != 0af40000; r0=meta mark;"), "{all}");
        assert!(all.ends_with(&got), "{all}");
    }

    #[test]
    fn endpoints_are_picked_uniformly_by_the_affinity_cascade() {
        // Endpoint i is taken when the draws before it missed and its own hit.
        let n = 5u32;
        let mut p_left = 1.0f64;
        for i in 0..n {
            let take = if i + 1 < n { 1.0 / f64::from(n - i) } else { 1.0 };
            assert!((p_left * take - 1.0 / f64::from(n)).abs() < 1e-12);
            p_left *= 1.0 - take;
        }
        let eps = [
            ("10.244.2.1", 80),
            ("10.244.2.2", 80),
            ("10.244.2.3", 80),
            ("10.244.2.4", 80),
            ("10.244.2.5", 80),
        ];
        let r = build(&[svc("five", "10.96.0.9", &eps, None, Some(60))], &Ruleset::default());
        let t = text(&diff(&Ruleset::default(), &r));
        for m in ["mod 5", "mod 4", "mod 3", "mod 2"] {
            assert!(t.contains(m), "{t}");
        }
        assert!(!t.contains("mod 1;"), "{t}");
    }

    #[test]
    fn no_endpoints_reject_and_affinity_remembers() {
        let r = build(&[svc("empty", "10.96.0.11", &[], Some(30081), None)], &Ruleset::default());
        let t = text(&diff(&Ruleset::default(), &r));
        assert_eq!(
            t,
            "add element no-endpoint-services { 0a60000b0600000000500000 : goto reject-chain }\n\
             add element no-endpoint-nodeports { 0600000075810000 : goto reject-chain }\n"
        );
        let r = build(
            &[svc("sticky", "10.96.0.12", &[("10.244.2.7", 80), ("10.244.2.8", 80)], None, Some(10800))],
            &Ruleset::default(),
        );
        let t = text(&diff(&Ruleset::default(), &r));
        let key = |ep: &str| format!("r0=00000001; r1={ep}; r2=0050; r3=ip saddr;");
        assert!(
            t.contains(&format!("{} r0 @affinity; update @affinity {{ r0 timeout 10800s }}; r4=0af40207; r5=0050; dnat to r4:r5;", key("0af40207"))),
            "{t}"
        );
        assert!(t.contains(&format!("r0=numgen random mod 2; r0 == 00000000; {} add @affinity {{ r0 timeout 10800s }}; r4=0af40207;", key("0af40207"))), "{t}");
        assert!(
            t.contains(&format!(
                "rule service-RKI6U6GK-default/sticky/tcp/http {} add @affinity",
                key("0af40208")
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "add element service-ips {{ 0a60000c0600000000500000 : goto {} }}",
                service_chain("default/sticky/tcp/http")
            )),
            "{t}"
        );
        assert!(!t.contains("spread"), "{t}");
    }

    #[test]
    fn one_endpoint_changing_touches_only_its_elements() {
        let mut many: Vec<ServiceInfo> = (0..100)
            .map(|i| {
                svc(
                    &format!("s{i}"),
                    &format!("10.96.1.{i}"),
                    &[("10.244.2.7", 80), ("10.244.2.8", 80)],
                    None,
                    None,
                )
            })
            .collect();
        let before = build(&many, &Ruleset::default());
        let old = many.clone();
        many[42].ports[0].endpoints[1] = ("10.244.2.9".parse().unwrap(), 80);
        let after = build(&many, &before);
        assert_eq!(before.next_id, after.next_id, "no port was renumbered");
        let d = diff(&before, &after);
        // One endpoint element replaced; no chain, no rule.
        let t = text(&d);
        assert_eq!(d.len(), 2, "{t}");
        assert!(
            t.starts_with("delete element endpoints { 0a60012a")
                && t.contains("add element endpoints { 0a60012a"),
            "{t}"
        );
        assert!(t.contains(": 0af4020900500000"), "{t}");
        assert!(diff(&after, &after).is_empty());
        // The incremental path gives the same batch and the same ruleset.
        let mut inc = before.clone();
        assert_eq!(update(&mut inc, &old, &many), d);
        assert_eq!(inc, after);
        // A third endpoint: the port goes to spread-3 (made once), one element more.
        let before3 = many.clone();
        many[7].ports[0].endpoints.push(("10.244.3.1".parse().unwrap(), 80));
        let third = build(&many, &after);
        let t = text(&diff(&after, &third));
        assert!(t.starts_with("delete element service-ips { 0a600107"), "{t}");
        assert!(t.contains("add chain spread-3\n") && t.contains("goto spread-3 }"), "{t}");
        let mut inc = after.clone();
        assert_eq!(text(&update(&mut inc, &before3, &many)), t);
        // Services come and go: new numbers for new ports, the others keep theirs.
        let mut fewer = many.clone();
        fewer.remove(3);
        fewer.push(svc("new", "10.96.2.1", &[("10.244.2.7", 80)], None, None));
        let mut inc = third.clone();
        let t = text(&update(&mut inc, &many, &fewer));
        assert_eq!(inc, build(&fewer, &third));
        assert_eq!(inc.ports["default/new/tcp/http"].id, third.next_id);
        assert_eq!(inc.ports["default/s7/tcp/http"].id, third.ports["default/s7/tcp/http"].id);
        assert!(
            t.contains("delete element service-ips { 0a600103") && t.contains("add chain spread-1"),
            "{t}"
        );
        // Removing every Service leaves no chain and no element.
        let d = diff(&third, &Ruleset::default());
        assert_eq!(d.iter().filter(|c| matches!(c, Cmd::DeleteChain(_))).count(), 2, "{}", text(&d));
        assert_eq!(d.iter().filter(|c| matches!(c, Cmd::DeleteElem { .. })).count(), 100 + 201);
        // A Service losing its endpoints: a reject instead.
        let mut emptied = many.clone();
        emptied[3].ports[0].endpoints.clear();
        let t = text(&diff(&third, &build(&emptied, &third)));
        assert!(t.starts_with("delete element endpoints"), "{t}");
        assert!(
            t.ends_with(
                "add element no-endpoint-services { 0a6001030600000000500000 : goto reject-chain }\n"
            ),
            "{t}"
        );
        // The batch encodes.
        let (buf, _) = nft::encode(TABLE, &full(&third, &node()));
        assert!(buf.len() > 100 * 100, "{}", buf.len());
    }
}
