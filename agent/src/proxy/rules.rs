//! The service proxy's nftables rules, as a pure function of the Services and their
//! endpoints, in the structure of kube-proxy's nftables mode:
//!
//! ```text
//! table ip tug_proxy
//!   nat-prerouting / nat-output ─ jump services
//!   services:  ip daddr . meta l4proto . th dport vmap @service-ips          (O(1) dispatch)
//!              fib daddr type local  meta l4proto . th dport vmap @service-nodeports
//!   service-<h>-ns/name/tcp/http:   ip saddr != CLUSTER jump mark-for-masquerade
//!                                   [ip saddr @affinity-<ep> goto endpoint-…]   (ClientIP)
//!                                   numgen random mod N vmap { 0 : goto endpoint-…, … }
//!   external-<h>-…:                 jump mark-for-masquerade; goto service-…   (NodePort)
//!   endpoint-<h>-…__IP/PORT:        ip saddr IP jump mark-for-masquerade       (hairpin)
//!                                   [ip saddr LOCAL-PODS jump mark-for-masquerade]
//!                                   [update @affinity-… { ip saddr }]
//!                                   meta l4proto tcp dnat to IP:PORT
//!   filter-forward/-output/-input:  … vmap @no-endpoint-services / @no-endpoint-nodeports → reject
//!   nat-postrouting:                marked → masquerade
//! ```
//!
//! The second masquerade rule of an endpoint on this node is what kube-proxy gets from
//! br_netfilter: a client pod on the same bridge would otherwise get the endpoint's reply
//! straight over the bridge, past the connection tracking that undoes the DNAT.
//!
//! [`Ruleset`] is the desired state; [`full`] is the batch that replaces the table whole and
//! [`diff`] the batch that turns one ruleset into another touching only what changed. Both
//! are one `nft -j -f -` transaction.

use std::collections::{BTreeMap, BTreeSet};
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
}

/// One port of a Service with its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
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
}

/// Where the node is.
#[derive(Debug, Clone, Copy)]
pub struct NodeInfo {
    pub cluster_cidr: Cidr4,
    /// This node's pod block (its pods share the bridge).
    pub pod_cidr: Cidr4,
}

/// The desired state of the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ruleset {
    /// Service, external and endpoint chains with their rules (expression lists).
    pub chains: BTreeMap<String, Vec<String>>,
    /// ClientIP affinity sets with their timeouts.
    pub sets: BTreeMap<String, u32>,
    pub service_ips: BTreeMap<(Ipv4Addr, Proto, u16), String>,
    pub node_ports: BTreeMap<(Proto, u16), String>,
    pub no_endpoints: BTreeSet<(Ipv4Addr, Proto, u16)>,
    pub no_endpoint_node_ports: BTreeSet<(Proto, u16)>,
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

// The JSON is written as text, not built as `serde_json::Value` trees: at 10,000 Services
// there are over 100,000 chains and the trees cost seconds. Names are DNS labels, numbers
// and addresses; `js` quotes them properly all the same.

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

const SADDR: &str = r#"{"payload":{"protocol":"ip","field":"saddr"}}"#;
const L4PROTO: &str = r#"{"meta":{"key":"l4proto"}}"#;
const MARK: &str = r#"{"meta":{"key":"mark"}}"#;

fn matches(op: &str, left: &str, right: &str) -> String {
    format!(r#"{{"match":{{"op":"{op}","left":{left},"right":{right}}}}}"#)
}

fn prefix(c: Cidr4) -> String {
    format!(r#"{{"prefix":{{"addr":"{}","len":{}}}}}"#, c.network, c.prefix)
}

fn jump(t: &str) -> String {
    format!(r#"{{"jump":{{"target":{}}}}}"#, js(t))
}

fn goto(t: &str) -> String {
    format!(r#"{{"goto":{{"target":{}}}}}"#, js(t))
}

/// A rule: its expressions as a JSON array.
fn exprs(e: &[String]) -> String {
    format!("[{}]", e.join(","))
}

/// The ruleset for these Services on this node.
pub fn build(services: &[ServiceInfo], node: &NodeInfo) -> Ruleset {
    let mut r = Ruleset::default();
    let not_cluster = exprs(&[matches("!=", SADDR, &prefix(node.cluster_cidr)), jump("mark-for-masquerade")]);
    let same_bridge = exprs(&[matches("==", SADDR, &prefix(node.pod_cidr)), jump("mark-for-masquerade")]);
    for s in services {
        let Some(ip) = s.cluster_ip else { continue };
        for p in &s.ports {
            let base = format!("{}/{}/{}/{}", s.namespace, s.name, p.proto.as_str(), p.name);
            if p.endpoints.is_empty() {
                r.no_endpoints.insert((ip, p.proto, p.port));
                if let Some(n) = p.node_port {
                    r.no_endpoint_node_ports.insert((p.proto, n));
                }
                continue;
            }
            let svc_chain = format!("service-{}-{base}", hash(&base));
            let mut eps: Vec<(Ipv4Addr, u16)> = p.endpoints.clone();
            eps.sort();
            eps.dedup();
            let ep_chains: Vec<String> = eps
                .iter()
                .map(|(a, port)| {
                    let n = format!("{base}__{a}/{port}");
                    format!("endpoint-{}-{n}", hash(&n))
                })
                .collect();
            let mut rules = vec![not_cluster.clone()];
            if s.affinity.is_some() {
                for c in &ep_chains {
                    let set = format!("affinity-{}", hash(c));
                    rules.push(exprs(&[matches("==", SADDR, &js(&format!("@{set}"))), goto(c)]));
                }
            }
            let vmap: Vec<String> =
                ep_chains.iter().enumerate().map(|(i, c)| format!("[{i},{}]", goto(c))).collect();
            rules.push(format!(
                r#"[{{"vmap":{{"key":{{"numgen":{{"mode":"random","mod":{},"offset":0}}}},"data":{{"set":[{}]}}}}}}]"#,
                ep_chains.len(),
                vmap.join(",")
            ));
            r.chains.insert(svc_chain.clone(), rules);
            for ((addr, port), c) in eps.iter().zip(&ep_chains) {
                let mut rules =
                    vec![exprs(&[matches("==", SADDR, &js(&addr.to_string())), jump("mark-for-masquerade")])];
                if node.pod_cidr.contains(*addr) {
                    rules.push(same_bridge.clone());
                }
                if let Some(t) = s.affinity {
                    let set = format!("affinity-{}", hash(c));
                    r.sets.insert(set.clone(), t);
                    rules.push(format!(
                        r#"[{{"set":{{"op":"update","elem":{SADDR},"set":{}}}}}]"#,
                        js(&format!("@{set}"))
                    ));
                }
                rules.push(exprs(&[
                    matches("==", L4PROTO, &js(p.proto.as_str())),
                    format!(r#"{{"dnat":{{"addr":"{addr}","port":{port}}}}}"#),
                ]));
                r.chains.insert(c.clone(), rules);
            }
            r.service_ips.insert((ip, p.proto, p.port), svc_chain.clone());
            if let Some(np) = p.node_port {
                let ext = format!("external-{}-{base}", hash(&base));
                r.chains.insert(
                    ext.clone(),
                    vec![exprs(&[jump("mark-for-masquerade")]), exprs(&[goto(&svc_chain)])],
                );
                r.node_ports.insert((p.proto, np), ext);
            }
        }
    }
    r
}

/// `{"KIND":{"family":"ip","table":"tug_proxy",BODY}}` — BODY without braces.
fn obj(kind: &str, body: &str) -> String {
    format!(r#"{{"{kind}":{{"family":"ip","table":"{TABLE}",{body}}}}}"#)
}

fn chain(name: &str) -> String {
    obj("chain", &format!(r#""name":{}"#, js(name)))
}

fn verb(v: &str, o: &str) -> String {
    format!(r#"{{"{v}":{o}}}"#)
}

fn rule(chain: &str, expr: &str) -> String {
    verb("add", &obj("rule", &format!(r#""chain":{},"expr":{expr}"#, js(chain))))
}

fn element(map: &str, key: &str, verdict: Option<&str>) -> String {
    let elem = match verdict {
        Some(v) => format!("[[{key},{}]]", goto(v)),
        None => format!("[{key}]"),
    };
    obj("element", &format!(r#""name":"{map}","elem":{elem}"#))
}

fn ip_key(k: &(Ipv4Addr, Proto, u16)) -> String {
    format!(r#"{{"concat":["{}","{}",{}]}}"#, k.0, k.1.as_str(), k.2)
}

fn port_key(k: &(Proto, u16)) -> String {
    format!(r#"{{"concat":["{}",{}]}}"#, k.0.as_str(), k.1)
}

/// Chains in the order they may be created: endpoints, then services, then external chains
/// (each refers only to chains before it).
fn rank(name: &str) -> u8 {
    if name.starts_with("endpoint-") {
        0
    } else if name.starts_with("service-") {
        1
    } else {
        2
    }
}

/// The batch that (re)creates the whole table.
pub fn full(r: &Ruleset) -> Vec<String> {
    let table = format!(r#"{{"table":{{"family":"ip","name":"{TABLE}"}}}}"#);
    let mut out = vec![verb("add", &table), verb("delete", &table), verb("add", &table)];
    for (name, type_, hook, prio) in [
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("filter-input", "filter", "input", -110),
    ] {
        out.push(verb(
            "add",
            &obj(
                "chain",
                &format!(
                    r#""name":"{name}","type":"{type_}","hook":"{hook}","prio":{prio},"policy":"accept""#
                ),
            ),
        ));
    }
    for c in ["services", "mark-for-masquerade", "reject-chain"] {
        out.push(verb("add", &chain(c)));
    }
    let ip_port = r#"["ipv4_addr","inet_proto","inet_service"]"#;
    let port = r#"["inet_proto","inet_service"]"#;
    for (name, ty) in [
        ("service-ips", ip_port),
        ("service-nodeports", port),
        ("no-endpoint-services", ip_port),
        ("no-endpoint-nodeports", port),
    ] {
        out.push(verb("add", &obj("map", &format!(r#""name":"{name}","type":{ty},"map":"verdict""#))));
    }
    out.push(rule("nat-prerouting", &exprs(&[jump("services")])));
    out.push(rule("nat-output", &exprs(&[jump("services")])));
    out.push(rule(
        "nat-postrouting",
        &exprs(&[
            matches("!=", &format!(r#"{{"&":[{MARK},{MASQ_BIT}]}}"#), "0"),
            format!(r#"{{"mangle":{{"key":{MARK},"value":{{"^":[{MARK},{MASQ_BIT}]}}}}}}"#),
            r#"{"masquerade":null}"#.to_string(),
        ]),
    ));
    out.push(rule(
        "mark-for-masquerade",
        &exprs(&[format!(r#"{{"mangle":{{"key":{MARK},"value":{{"|":[{MARK},{MASQ_BIT}]}}}}}}"#)]),
    ));
    out.push(rule("reject-chain", r#"[{"reject":null}]"#));
    let ip_proto_port = format!(
        r#"{{"concat":[{{"payload":{{"protocol":"ip","field":"daddr"}}}},{L4PROTO},{{"payload":{{"protocol":"th","field":"dport"}}}}]}}"#
    );
    let proto_port = format!(r#"{{"concat":[{L4PROTO},{{"payload":{{"protocol":"th","field":"dport"}}}}]}}"#);
    let local = matches("==", r#"{"fib":{"result":"type","flags":["daddr"]}}"#, r#""local""#);
    let vmap = |key: &str, map: &str| format!(r#"{{"vmap":{{"key":{key},"data":"@{map}"}}}}"#);
    out.push(rule("services", &exprs(&[vmap(&ip_proto_port, "service-ips")])));
    out.push(rule("services", &exprs(&[local.clone(), vmap(&proto_port, "service-nodeports")])));
    for c in ["filter-forward", "filter-output"] {
        out.push(rule(c, &exprs(&[vmap(&ip_proto_port, "no-endpoint-services")])));
    }
    out.push(rule("filter-input", &exprs(&[local, vmap(&proto_port, "no-endpoint-nodeports")])));
    out.extend(diff(&Ruleset::default(), r));
    out
}

/// The batch that turns `old` into `new`, touching only what changed.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<String> {
    let mut out = Vec::new();
    // 1. New affinity sets, then new or changed chains (in dependency order).
    for (name, timeout) in &new.sets {
        if old.sets.get(name) != Some(timeout) {
            if old.sets.contains_key(name) {
                out.push(verb("delete", &obj("set", &format!(r#""name":{}"#, js(name)))));
            }
            out.push(verb(
                "add",
                &obj(
                    "set",
                    &format!(
                        r#""name":{},"type":"ipv4_addr","flags":["timeout"],"timeout":{timeout}"#,
                        js(name)
                    ),
                ),
            ));
        }
    }
    let mut changed: Vec<(&String, &Vec<String>)> =
        new.chains.iter().filter(|(n, rules)| old.chains.get(*n) != Some(*rules)).collect();
    changed.sort_by_key(|(n, _)| rank(n));
    for (name, rules) in changed {
        out.push(verb(if old.chains.contains_key(name) { "flush" } else { "add" }, &chain(name)));
        for r in rules {
            out.push(rule(name, r));
        }
    }
    // 2. Map elements.
    fn elems<K: Ord, V: PartialEq>(
        out: &mut Vec<String>,
        map: &str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
        key: impl Fn(&K) -> String,
        verdict: impl Fn(&V) -> Option<String>,
    ) {
        for (k, v) in old {
            if new.get(k) != Some(v) {
                out.push(verb("delete", &element(map, &key(k), None)));
            }
        }
        for (k, v) in new {
            if old.get(k) != Some(v) {
                out.push(verb("add", &element(map, &key(k), verdict(v).as_deref())));
            }
        }
    }
    elems(&mut out, "service-ips", &old.service_ips, &new.service_ips, ip_key, |c| Some(c.clone()));
    elems(&mut out, "service-nodeports", &old.node_ports, &new.node_ports, port_key, |c| Some(c.clone()));
    let as_map =
        |s: &BTreeSet<(Ipv4Addr, Proto, u16)>| s.iter().map(|k| (*k, ())).collect::<BTreeMap<_, _>>();
    let as_port_map = |s: &BTreeSet<(Proto, u16)>| s.iter().map(|k| (*k, ())).collect::<BTreeMap<_, _>>();
    elems(
        &mut out,
        "no-endpoint-services",
        &as_map(&old.no_endpoints),
        &as_map(&new.no_endpoints),
        ip_key,
        |_| Some("reject-chain".into()),
    );
    elems(
        &mut out,
        "no-endpoint-nodeports",
        &as_port_map(&old.no_endpoint_node_ports),
        &as_port_map(&new.no_endpoint_node_ports),
        port_key,
        |_| Some("reject-chain".into()),
    );
    // 3. Chains and sets no longer used, once nothing refers to them (reverse order).
    let mut gone: Vec<&String> = old.chains.keys().filter(|n| !new.chains.contains_key(*n)).collect();
    gone.sort_by_key(|n| std::cmp::Reverse(rank(n)));
    for name in &gone {
        out.push(verb("flush", &chain(name)));
    }
    for name in &gone {
        out.push(verb("delete", &chain(name)));
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        out.push(verb("delete", &obj("set", &format!(r#""name":{}"#, js(name)))));
    }
    out
}

/// A batch as `nft -j` reads it.
pub fn batch(cmds: Vec<String>) -> String {
    let mut s = String::with_capacity(cmds.iter().map(|c| c.len() + 1).sum::<usize>() + 16);
    s.push_str(r#"{"nftables":["#);
    for (i, c) in cmds.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(c);
    }
    s.push_str("]}");
    s
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
            }],
            affinity,
        }
    }

    /// The rules as nft would print them, one line each: the snapshot.
    fn render(r: &Ruleset) -> String {
        let mut s = String::new();
        for (k, v) in &r.service_ips {
            s += &format!("service-ips {} . {} . {} : goto {v}\n", k.0, k.1.as_str(), k.2);
        }
        for (k, v) in &r.node_ports {
            s += &format!("service-nodeports {} . {} : goto {v}\n", k.0.as_str(), k.1);
        }
        for k in &r.no_endpoints {
            s += &format!("no-endpoint-services {} . {} . {}\n", k.0, k.1.as_str(), k.2);
        }
        for (c, rules) in &r.chains {
            s += &format!("chain {c}\n");
            for rule in rules {
                s += &format!("  {rule}\n");
            }
        }
        s
    }

    #[test]
    fn snapshot_of_a_service_with_two_endpoints_and_a_node_port() {
        let r = build(
            &[svc("web", "10.96.0.10", &[("10.244.1.5", 8080), ("10.244.2.7", 8080)], Some(30080), None)],
            &node(),
        );
        let text = render(&r);
        let expected = r#"service-ips 10.96.0.10 . tcp . 80 : goto service-UARQTUAX-default/web/tcp/http
service-nodeports tcp . 30080 : goto external-UARQTUAX-default/web/tcp/http
chain endpoint-5ML4MARR-default/web/tcp/http__10.244.2.7/8080
  [{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"10.244.2.7"}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"dnat":{"addr":"10.244.2.7","port":8080}}]
chain endpoint-YX4ZGP7G-default/web/tcp/http__10.244.1.5/8080
  [{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"10.244.1.5"}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.244.1.0","len":24}}}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"dnat":{"addr":"10.244.1.5","port":8080}}]
chain external-UARQTUAX-default/web/tcp/http
  [{"jump":{"target":"mark-for-masquerade"}}]
  [{"goto":{"target":"service-UARQTUAX-default/web/tcp/http"}}]
chain service-UARQTUAX-default/web/tcp/http
  [{"match":{"op":"!=","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.244.0.0","len":16}}}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"vmap":{"key":{"numgen":{"mode":"random","mod":2,"offset":0}},"data":{"set":[[0,{"goto":{"target":"endpoint-YX4ZGP7G-default/web/tcp/http__10.244.1.5/8080"}}],[1,{"goto":{"target":"endpoint-5ML4MARR-default/web/tcp/http__10.244.2.7/8080"}}]]}}}]
"#;
        assert_eq!(text, expected, "actual:\n{text}");
    }

    #[test]
    fn no_endpoints_reject_and_affinity_sets() {
        let r = build(&[svc("empty", "10.96.0.11", &[], Some(30081), None)], &node());
        assert!(r.chains.is_empty());
        assert!(r.no_endpoints.contains(&("10.96.0.11".parse().unwrap(), Proto::Tcp, 80)));
        assert!(r.no_endpoint_node_ports.contains(&(Proto::Tcp, 30081)));
        let r = build(&[svc("sticky", "10.96.0.12", &[("10.244.2.7", 80)], None, Some(10800))], &node());
        assert_eq!(r.sets.values().collect::<Vec<_>>(), vec![&10800]);
        let text = render(&r);
        assert!(text.contains("\"op\":\"update\""), "{text}");
        assert!(text.contains("\"right\":\"@affinity-"), "{text}");
    }

    #[test]
    fn one_endpoint_changing_touches_only_its_service() {
        let n = node();
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
        let before = build(&many, &n);
        many[42].ports[0].endpoints[1] = ("10.244.2.9".parse().unwrap(), 80);
        let after = build(&many, &n);
        let d = diff(&before, &after);
        let text = batch(d.clone());
        // The new endpoint chain added, the service chain flushed and refilled, the old
        // endpoint chain flushed and deleted; nothing else.
        assert!(text.contains("default/s42/"), "{text}");
        assert!(!text.contains("default/s41/"), "{text}");
        assert!(d.len() < 12, "{} commands: {text}", d.len());
        assert!(diff(&after, &after).is_empty());
        // Removing every Service leaves no chain.
        let d = diff(&after, &Ruleset::default());
        assert_eq!(d.iter().filter(|c| c.starts_with(r#"{"delete":{"chain""#)).count(), after.chains.len());
        // Every command is JSON nft can read.
        for c in full(&after).iter().chain(&d) {
            serde_json::from_str::<serde_json::Value>(c).unwrap_or_else(|e| panic!("{e}: {c}"));
        }
    }
}
