//! The proxy's iptables mode (`--proxy-mode iptables`), for hosts without nftables: the
//! same Services as [`super::rules`] programmed in kube-proxy's iptables layout, as one
//! `iptables-restore --noflush` transaction that rewrites Tug's chains whole:
//!
//! ```text
//! nat    PREROUTING, OUTPUT → TUG-SERVICES:  -d CLUSTERIP -p P --dport N → TUG-SVC-<h>
//!                                            addrtype LOCAL → TUG-NODEPORTS: --dport NP → TUG-EXT-<h>
//!        TUG-SVC-<h>:  ! -s CLUSTER → TUG-MARK-MASQ; [recent --rcheck → TUG-SEP-<h>];
//!                      statistic random 1/N, 1/(N-1), … → TUG-SEP-<h>
//!        TUG-SEP-<h>:  -s IP → TUG-MARK-MASQ; [-s LOCAL-PODS → TUG-MARK-MASQ]; [recent --set];
//!                      DNAT --to-destination IP:PORT
//!        POSTROUTING → TUG-POSTROUTING: marked → MASQUERADE
//!        TUG-XLB-<h>:  (externalTrafficPolicy: Local, for NodePorts and external addresses) this
//!                      node's endpoints as above, unmasqueraded; none → TUG-MARK-DROP
//!        TUG-FW-<h>:   (a load balancer address with loadBalancerSourceRanges) -s RANGE → TUG-SVC-<h>;
//!                      → TUG-MARK-DROP
//! filter FORWARD, OUTPUT → TUG-SERVICES: marked to drop → DROP; no endpoints → REJECT
//!        INPUT → TUG-EXTERNAL: marked to drop → DROP; NodePorts without endpoints → REJECT
//! ```
//!
//! [`restore`] is pure; chains Tug made before and no longer needs are flushed and deleted
//! in the same transaction.

use super::rules::{NodeInfo, ServiceInfo};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Chains the jump rules from the built-in chains lead to: (table, built-in chain, ours).
pub const JUMPS: [(&str, &str, &str); 6] = [
    ("nat", "PREROUTING", "TUG-SERVICES"),
    ("nat", "OUTPUT", "TUG-SERVICES"),
    ("nat", "POSTROUTING", "TUG-POSTROUTING"),
    ("filter", "FORWARD", "TUG-SERVICES"),
    ("filter", "OUTPUT", "TUG-SERVICES"),
    ("filter", "INPUT", "TUG-EXTERNAL"),
];

/// Twelve digits: iptables chain names are only the hash (at most 28 characters).
fn hash(s: &str) -> String {
    super::rules::hash_n(s, 12)
}

/// The `iptables-restore` input for these Services, and the per-service chains it defines
/// (pass them back as `previous` next time so stale ones are removed).
pub fn restore(
    services: &[ServiceInfo],
    node: &NodeInfo,
    previous: &BTreeSet<String>,
) -> (String, BTreeSet<String>) {
    let mut nat_chains: BTreeSet<String> = BTreeSet::new();
    let mut nat = String::new();
    let mut filter = String::new();
    let cluster = format!("{}/{}", node.cluster_cidr.network, node.cluster_cidr.prefix);
    let pods = format!("{}/{}", node.pod_cidr.network, node.pod_cidr.prefix);
    for s in services {
        let Some(ip) = s.cluster_ip else { continue };
        for p in &s.ports {
            let proto = p.proto.as_str();
            let base = format!("{}/{}/{}/{}", s.namespace, s.name, proto, p.name);
            let comment = format!("-m comment --comment \"{base}\"");
            let (eps, canary) = p.split();
            if eps.is_empty() {
                let _ = writeln!(
                    filter,
                    "-A TUG-SERVICES -d {ip}/32 -p {proto} -m {proto} --dport {} {comment} -j REJECT",
                    p.port
                );
                if let Some(np) = p.node_port {
                    let _ = writeln!(
                        filter,
                        "-A TUG-EXTERNAL -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {np} {comment} -j REJECT"
                    );
                }
                for ext in s.external_ips.iter().filter(|e| **e != ip) {
                    let _ = writeln!(
                        filter,
                        "-A TUG-SERVICES -d {ext}/32 -p {proto} -m {proto} --dport {} {comment} -j REJECT",
                        p.port
                    );
                }
                continue;
            }
            let svc = format!("TUG-SVC-{}", hash(&base));
            nat_chains.insert(svc.clone());
            let _ = writeln!(
                nat,
                "-A TUG-SERVICES -d {ip}/32 -p {proto} -m {proto} --dport {} {comment} -j {svc}",
                p.port
            );
            // External addresses go the same way (masqueraded from outside, as below); a load
            // balancer address with loadBalancerSourceRanges through a firewall chain first,
            // which marks the rest to be dropped in filter (kube-proxy's KUBE-FW).
            // externalTrafficPolicy: Local — outside traffic to this node's endpoints only,
            // unmasqueraded, dropped when it has none (kube-proxy's KUBE-XLB).
            let xlb = p.external.as_ref().map(|_| format!("TUG-XLB-{}", hash(&base)));
            let outside = xlb.clone().unwrap_or_else(|| svc.clone());
            for ext in s.external_ips.iter().filter(|e| **e != ip) {
                let mut to = outside.clone();
                if !s.source_ranges.is_empty() && s.lb_ips.contains(ext) {
                    to = format!("TUG-FW-{}", hash(&format!("{base}@{ext}")));
                    nat_chains.insert(to.clone());
                    for r in &s.source_ranges {
                        let _ = writeln!(nat, "-A {to} -s {}/{} -j {outside}", r.network, r.prefix);
                    }
                    let _ = writeln!(nat, "-A {to} -j TUG-MARK-DROP");
                }
                let _ = writeln!(
                    nat,
                    "-A TUG-SERVICES -d {ext}/32 -p {proto} -m {proto} --dport {} {comment} -j {to}",
                    p.port
                );
            }
            let _ = writeln!(nat, "-A {svc} ! -s {cluster} -j TUG-MARK-MASQ");
            // ClientIP affinity keeps one endpoint set (the canary's weight does not apply).
            let canary = canary.filter(|_| s.affinity.is_none());
            let mut all = eps.clone();
            all.extend(canary.iter().flat_map(|(_, c)| c.iter().copied()));
            let sep_of = |(a, port): &(std::net::Ipv4Addr, u16)| {
                format!("TUG-SEP-{}", hash(&format!("{base}__{a}/{port}")))
            };
            let seps: Vec<String> = all.iter().map(sep_of).collect();
            if let Some(t) = s.affinity {
                for sep in &seps {
                    let _ = writeln!(
                        nat,
                        "-A {svc} -m recent --name {sep} --rcheck --seconds {t} --reap --rsource -j {sep}"
                    );
                }
            }
            // Each endpoint with probability 1/(endpoints left): uniform over the set.
            let mut cascade = |chain: &str, set: &[(std::net::Ipv4Addr, u16)]| {
                let n = set.len();
                for (i, ep) in set.iter().enumerate() {
                    let sep = sep_of(ep);
                    if i + 1 < n {
                        let _ = writeln!(
                            nat,
                            "-A {chain} -m statistic --mode random --probability {:.10} -j {sep}",
                            1.0 / (n - i) as f64
                        );
                    } else {
                        let _ = writeln!(nat, "-A {chain} -j {sep}");
                    }
                }
            };
            if let (Some(xlb), Some(local)) = (&xlb, &p.external) {
                nat_chains.insert(xlb.clone());
                let mut local = local.clone();
                local.sort_unstable();
                local.dedup();
                if !local.is_empty() {
                    cascade(xlb, &local);
                }
            }
            match &canary {
                Some((w, c)) => {
                    // The canary's exact share first, then the stable set.
                    let (cny, stb) = (format!("TUG-CNY-{}", hash(&base)), format!("TUG-STB-{}", hash(&base)));
                    cascade(&cny, c);
                    cascade(&stb, &eps);
                    let _ = writeln!(
                        nat,
                        "-A {svc} -m statistic --mode random --probability {:.10} -j {cny}",
                        f64::from(*w) / 100.0
                    );
                    let _ = writeln!(nat, "-A {svc} -j {stb}");
                    nat_chains.insert(cny);
                    nat_chains.insert(stb);
                }
                None => cascade(&svc, &eps),
            }
            if let (Some(xlb), Some(local)) = (&xlb, &p.external)
                && local.is_empty()
            {
                let _ = writeln!(nat, "-A {xlb} -j TUG-MARK-DROP");
            }
            for ((addr, port), sep) in all.iter().zip(&seps) {
                nat_chains.insert(sep.clone());
                let _ = writeln!(nat, "-A {sep} -s {addr}/32 -j TUG-MARK-MASQ");
                if node.pod_cidr.contains(*addr) {
                    let _ = writeln!(nat, "-A {sep} -s {pods} -j TUG-MARK-MASQ");
                }
                if s.affinity.is_some() {
                    let _ = writeln!(nat, "-A {sep} -p {proto} -m recent --name {sep} --set --rsource");
                }
                let _ =
                    writeln!(nat, "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {addr}:{port}");
            }
            if let Some(np) = p.node_port {
                let ext = format!("TUG-EXT-{}", hash(&base));
                nat_chains.insert(ext.clone());
                let _ =
                    writeln!(nat, "-A TUG-NODEPORTS -p {proto} -m {proto} --dport {np} {comment} -j {ext}");
                if let Some(xlb) = &xlb {
                    let _ = writeln!(nat, "-A {ext} -j {xlb}");
                } else {
                    let _ = writeln!(nat, "-A {ext} -j TUG-MARK-MASQ");
                    let _ = writeln!(nat, "-A {ext} -j {svc}");
                }
            }
        }
    }
    let mut out = String::from("*nat\n");
    for c in ["TUG-SERVICES", "TUG-NODEPORTS", "TUG-POSTROUTING", "TUG-MARK-MASQ", "TUG-MARK-DROP"] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let stale: Vec<&String> = previous.iter().filter(|c| !nat_chains.contains(*c)).collect();
    for c in nat_chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out += &nat;
    // NodePorts last: a ClusterIP match wins for traffic to a ClusterIP.
    out += "-A TUG-SERVICES -m addrtype --dst-type LOCAL -j TUG-NODEPORTS\n";
    out += "-A TUG-MARK-MASQ -j MARK --or-mark 0x4000\n";
    out += "-A TUG-MARK-DROP -j MARK --or-mark 0x8000\n";
    out += "-A TUG-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    out += "-A TUG-POSTROUTING -j MARK --xor-mark 0x4000\n";
    out += "-A TUG-POSTROUTING -j MASQUERADE\n";
    for c in stale {
        let _ = writeln!(out, "-X {c}");
    }
    out += "COMMIT\n*filter\n:TUG-SERVICES - [0:0]\n:TUG-EXTERNAL - [0:0]\n";
    out += "-A TUG-SERVICES -m mark --mark 0x8000/0x8000 -j DROP\n";
    out += "-A TUG-EXTERNAL -m mark --mark 0x8000/0x8000 -j DROP\n";
    out += &filter;
    out += "COMMIT\n";
    (out, nat_chains)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::rules::tests::{node, svc};

    #[test]
    fn chains_spread_and_stale_ones_go() {
        let s = [svc(
            "web",
            "10.96.0.10",
            &[("10.244.1.5", 8080), ("10.244.2.7", 8080), ("10.244.2.8", 8080)],
            Some(30080),
            Some(60),
        )];
        let (text, chains) = restore(&s, &node(), &BTreeSet::new());
        assert!(text.contains("-A TUG-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80"), "{text}");
        assert!(text.contains("--probability 0.3333333333"), "{text}");
        assert!(text.contains("--probability 0.5000000000"), "{text}");
        assert!(text.contains("-m recent --name TUG-SEP-"), "{text}");
        assert!(text.contains("-j DNAT --to-destination 10.244.2.8:8080"), "{text}");
        assert!(text.contains("-A TUG-NODEPORTS -p tcp -m tcp --dport 30080"), "{text}");
        assert!(text.contains("-s 10.244.1.0/24 -j TUG-MARK-MASQ"), "same-bridge masquerade: {text}");
        assert_eq!(chains.len(), 5, "one SVC, three SEP and one EXT chain: {chains:?}");
        let (text, after) = restore(&[svc("web", "10.96.0.10", &[], Some(30080), None)], &node(), &chains);
        assert!(after.is_empty());
        assert_eq!(text.matches("\n-X TUG-").count(), 5, "{text}");
        assert!(text.contains("-A TUG-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"default/web/tcp/http\" -j REJECT"), "{text}");
        assert!(
            text.contains("-A TUG-EXTERNAL -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080"),
            "{text}"
        );
        // A load balancer address with source ranges goes through a firewall chain.
        let mut lb = svc("web", "10.96.0.10", &[("10.244.1.5", 8080)], None, None);
        lb.external_ips = vec!["192.0.2.10".parse().unwrap()];
        lb.lb_ips = lb.external_ips.clone();
        lb.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        let (text, chains) = restore(&[lb], &node(), &BTreeSet::new());
        let fw = chains.iter().find(|c| c.starts_with("TUG-FW-")).expect("a firewall chain");
        assert!(text.contains(&format!("-d 192.0.2.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"default/web/tcp/http\" -j {fw}")), "{text}");
        assert!(text.contains(&format!("-A {fw} -s 198.51.100.0/24 -j TUG-SVC-")), "{text}");
        assert!(text.contains(&format!("-A {fw} -j TUG-MARK-DROP")), "{text}");
    }
}
