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

use serde_json::{Value, json};
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
    pub chains: BTreeMap<String, Vec<Value>>,
    /// ClientIP affinity sets with their timeouts.
    pub sets: BTreeMap<String, u32>,
    pub service_ips: BTreeMap<(Ipv4Addr, Proto, u16), String>,
    pub node_ports: BTreeMap<(Proto, u16), String>,
    pub no_endpoints: BTreeSet<(Ipv4Addr, Proto, u16)>,
    pub no_endpoint_node_ports: BTreeSet<(Proto, u16)>,
}

/// A short stable hash, kube-proxy style (base32 of a 64-bit FNV-1a).
fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..8).map(|i| A[usize::try_from((h >> (i * 5)) & 31).unwrap_or(0)] as char).collect()
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn prefix(c: Cidr4) -> Value {
    json!({"prefix": {"addr": c.network.to_string(), "len": c.prefix}})
}

fn jump(t: &str) -> Value {
    json!({"jump": {"target": t}})
}

fn goto(t: &str) -> Value {
    json!({"goto": {"target": t}})
}

/// The ruleset for these Services on this node.
pub fn build(services: &[ServiceInfo], node: &NodeInfo) -> Ruleset {
    let mut r = Ruleset::default();
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
            let mut rules = vec![vec![
                matches("!=", payload("ip", "saddr"), prefix(node.cluster_cidr)),
                jump("mark-for-masquerade"),
            ]];
            if s.affinity.is_some() {
                for c in &ep_chains {
                    let set = format!("affinity-{}", hash(c));
                    rules
                        .push(vec![matches("==", payload("ip", "saddr"), json!(format!("@{set}"))), goto(c)]);
                }
            }
            let n = ep_chains.len();
            let vmap: Vec<Value> = ep_chains.iter().enumerate().map(|(i, c)| json!([i, goto(c)])).collect();
            rules.push(vec![json!({"vmap": {"key": {"numgen": {"mode": "random", "mod": n, "offset": 0}}, "data": {"set": vmap}}})]);
            r.chains.insert(svc_chain.clone(), rules.into_iter().map(Value::Array).collect());
            for ((addr, port), c) in eps.iter().zip(&ep_chains) {
                let mut rules = vec![vec![
                    matches("==", payload("ip", "saddr"), json!(addr.to_string())),
                    jump("mark-for-masquerade"),
                ]];
                if node.pod_cidr.contains(*addr) {
                    rules.push(vec![
                        matches("==", payload("ip", "saddr"), prefix(node.pod_cidr)),
                        jump("mark-for-masquerade"),
                    ]);
                }
                if let Some(t) = s.affinity {
                    let set = format!("affinity-{}", hash(c));
                    r.sets.insert(set.clone(), t);
                    rules.push(vec![json!({"set": {"op": "update", "elem": payload("ip", "saddr"), "set": format!("@{set}")}})]);
                }
                rules.push(vec![
                    matches("==", meta("l4proto"), json!(p.proto.as_str())),
                    json!({"dnat": {"addr": addr.to_string(), "port": port}}),
                ]);
                r.chains.insert(c.clone(), rules.into_iter().map(Value::Array).collect());
            }
            r.service_ips.insert((ip, p.proto, p.port), svc_chain.clone());
            if let Some(np) = p.node_port {
                let ext = format!("external-{}-{base}", hash(&base));
                r.chains.insert(
                    ext.clone(),
                    vec![
                        Value::Array(vec![jump("mark-for-masquerade")]),
                        Value::Array(vec![goto(&svc_chain)]),
                    ],
                );
                r.node_ports.insert((p.proto, np), ext);
            }
        }
    }
    r
}

fn obj(kind: &str, mut body: Value) -> Value {
    body["family"] = "ip".into();
    body["table"] = TABLE.into();
    json!({ kind: body })
}

fn chain(name: &str) -> Value {
    obj("chain", json!({"name": name}))
}

fn base_chain(name: &str, type_: &str, hook: &str, prio: i32) -> Value {
    obj("chain", json!({"name": name, "type": type_, "hook": hook, "prio": prio, "policy": "accept"}))
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": obj("rule", json!({"chain": chain, "expr": expr}))})
}

fn element(map: &str, key: Value, verdict: Option<&str>) -> Value {
    let elem = match verdict {
        Some(v) => json!([[key, goto(v)]]),
        None => json!([key]),
    };
    obj("element", json!({"name": map, "elem": elem}))
}

fn ip_key(k: &(Ipv4Addr, Proto, u16)) -> Value {
    json!({"concat": [k.0.to_string(), k.1.as_str(), k.2]})
}

fn port_key(k: &(Proto, u16)) -> Value {
    json!({"concat": [k.0.as_str(), k.1]})
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

fn add_chain_with_rules(out: &mut Vec<Value>, name: &str, rules: &[Value]) {
    out.push(json!({"add": chain(name)}));
    for r in rules {
        out.push(rule(name, r.as_array().cloned().unwrap_or_default()));
    }
}

/// The batch that (re)creates the whole table.
pub fn full(r: &Ruleset) -> Vec<Value> {
    let table = json!({"table": {"family": "ip", "name": TABLE}});
    let mut out =
        vec![json!({"add": table.clone()}), json!({"delete": table.clone()}), json!({"add": table})];
    for (name, type_, hook, prio) in [
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("filter-input", "filter", "input", -110),
    ] {
        out.push(json!({"add": base_chain(name, type_, hook, prio)}));
    }
    for c in ["services", "mark-for-masquerade", "reject-chain"] {
        out.push(json!({"add": chain(c)}));
    }
    let ip_port = json!(["ipv4_addr", "inet_proto", "inet_service"]);
    let port = json!(["inet_proto", "inet_service"]);
    for (name, ty) in [
        ("service-ips", &ip_port),
        ("service-nodeports", &port),
        ("no-endpoint-services", &ip_port),
        ("no-endpoint-nodeports", &port),
    ] {
        out.push(json!({"add": obj("map", json!({"name": name, "type": ty, "map": "verdict"}))}));
    }
    let mark = meta("mark");
    out.push(rule("nat-prerouting", vec![jump("services")]));
    out.push(rule("nat-output", vec![jump("services")]));
    out.push(rule(
        "nat-postrouting",
        vec![
            matches("!=", json!({"&": [mark.clone(), MASQ_BIT]}), json!(0)),
            json!({"mangle": {"key": mark.clone(), "value": {"^": [mark.clone(), MASQ_BIT]}}}),
            json!({"masquerade": null}),
        ],
    ));
    out.push(rule(
        "mark-for-masquerade",
        vec![json!({"mangle": {"key": mark.clone(), "value": {"|": [mark, MASQ_BIT]}}})],
    ));
    out.push(rule("reject-chain", vec![json!({"reject": null})]));
    let ip_proto_port = json!({"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]});
    let proto_port = json!({"concat": [meta("l4proto"), payload("th", "dport")]});
    let local = matches("==", json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!("local"));
    out.push(rule("services", vec![json!({"vmap": {"key": ip_proto_port.clone(), "data": "@service-ips"}})]));
    out.push(rule(
        "services",
        vec![local.clone(), json!({"vmap": {"key": proto_port.clone(), "data": "@service-nodeports"}})],
    ));
    for c in ["filter-forward", "filter-output"] {
        out.push(rule(
            c,
            vec![json!({"vmap": {"key": ip_proto_port.clone(), "data": "@no-endpoint-services"}})],
        ));
    }
    out.push(rule(
        "filter-input",
        vec![local, json!({"vmap": {"key": proto_port, "data": "@no-endpoint-nodeports"}})],
    ));
    out.extend(diff(&Ruleset::default(), r));
    out
}

/// The batch that turns `old` into `new`, touching only what changed.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Value> {
    let mut out = Vec::new();
    // 1. New affinity sets, then new or changed chains (in dependency order).
    for (name, timeout) in &new.sets {
        if old.sets.get(name) != Some(timeout) {
            if old.sets.contains_key(name) {
                out.push(json!({"delete": obj("set", json!({"name": name}))}));
            }
            out.push(json!({"add": obj("set", json!({"name": name, "type": "ipv4_addr", "flags": ["timeout"], "timeout": timeout}))}));
        }
    }
    let mut changed: Vec<(&String, &Vec<Value>)> =
        new.chains.iter().filter(|(n, rules)| old.chains.get(*n) != Some(*rules)).collect();
    changed.sort_by_key(|(n, _)| rank(n));
    for (name, rules) in changed {
        if old.chains.contains_key(name) {
            out.push(json!({"flush": chain(name)}));
            for r in rules {
                out.push(rule(name, r.as_array().cloned().unwrap_or_default()));
            }
        } else {
            add_chain_with_rules(&mut out, name, rules);
        }
    }
    // 2. Map elements.
    fn elems<K: Ord, V: PartialEq>(
        out: &mut Vec<Value>,
        map: &str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
        key: impl Fn(&K) -> Value,
        verdict: impl Fn(&V) -> Option<String>,
    ) {
        for (k, v) in old {
            if new.get(k) != Some(v) {
                out.push(json!({"delete": element(map, key(k), None)}));
            }
        }
        for (k, v) in new {
            if old.get(k) != Some(v) {
                out.push(json!({"add": element(map, key(k), verdict(v).as_deref())}));
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
    for name in gone {
        out.push(json!({"flush": chain(name)}));
    }
    let mut gone: Vec<&String> = old.chains.keys().filter(|n| !new.chains.contains_key(*n)).collect();
    gone.sort_by_key(|n| std::cmp::Reverse(rank(n)));
    for name in gone {
        out.push(json!({"delete": chain(name)}));
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        out.push(json!({"delete": obj("set", json!({"name": name}))}));
    }
    out
}

/// A batch as `nft -j` reads it.
pub fn batch(cmds: Vec<Value>) -> String {
    json!({"nftables": cmds}).to_string()
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
  [{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":"10.244.2.7"}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"dnat":{"addr":"10.244.2.7","port":8080}}]
chain endpoint-YX4ZGP7G-default/web/tcp/http__10.244.1.5/8080
  [{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":"10.244.1.5"}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"10.244.1.0","len":24}}}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"dnat":{"addr":"10.244.1.5","port":8080}}]
chain external-UARQTUAX-default/web/tcp/http
  [{"jump":{"target":"mark-for-masquerade"}}]
  [{"goto":{"target":"service-UARQTUAX-default/web/tcp/http"}}]
chain service-UARQTUAX-default/web/tcp/http
  [{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"!=","right":{"prefix":{"addr":"10.244.0.0","len":16}}}},{"jump":{"target":"mark-for-masquerade"}}]
  [{"vmap":{"data":{"set":[[0,{"goto":{"target":"endpoint-YX4ZGP7G-default/web/tcp/http__10.244.1.5/8080"}}],[1,{"goto":{"target":"endpoint-5ML4MARR-default/web/tcp/http__10.244.2.7/8080"}}]]},"key":{"numgen":{"mod":2,"mode":"random","offset":0}}}}]
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
        assert_eq!(
            d.iter().filter(|c| c.get("delete").is_some_and(|x| x.get("chain").is_some())).count(),
            after.chains.len()
        );
    }
}
