//! `make bench AREA=services`, NetworkPolicy: what a node's policy table costs at 1,000
//! policies, applied over netlink in a node namespace of its own.
//!
//! The cluster: 2,000 pods on 20 nodes (100 on this one) in 10 namespaces; 1,000 policies,
//! each selecting one of 100 apps and allowing one client label on a numeric and a named
//! port; every policy's ingress is a set of peer addresses.
//!
//! - `full_ms`: the whole table from nothing (plan + commit).
//! - `pod_added_ms`: a new client pod that 10 policies' rules pick: the plan (the whole
//!   desired table again, as the agent does on each burst of changes), the diff, the commit.
//! - `policy_changed_ms`: one policy's port changes: the chains of the pods it selects.
//!
//! The plan is the whole desired table each time (O(policies × this node's pods), peers
//! once per rule); the diff and the commit are O(changed).
//!
//! Anchor: Calico's and Cilium's policy programming are not installable here; kube-router
//! (iptables + ipsets) rewrites its chains with `iptables-restore` on each change.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tug_agent::network::netns::run_in;
use tug_agent::policy::{self, PodInfo};
use tug_agent::proxy::nft;
use tug_api::kinds::networking::NetworkPolicy;
use tug_integration::cluster::Cluster;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pod(i: u32, role: &str) -> PodInfo {
    PodInfo {
        namespace: format!("ns{}", i % 10),
        name: format!("pod{i}"),
        labels: [("app".to_string(), format!("app{}", i % 100)), ("role".to_string(), role.to_string())]
            .into(),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i + 2),
        node: format!("node{}", i % 20),
        ports: vec![("http".into(), 6, 8080)],
    }
}

fn policy(i: u32, port: u32) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 10)},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", i % 100)}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client{}", i % 50)}}}],
                              "ports": [{"port": port}, {"port": "http"}]}]}
    }))
    .expect("policy")
}

fn main() {
    let cluster = Cluster::new(1).expect("cluster");
    let node_ns = std::path::PathBuf::from("/run/netns").join(&cluster.nodes[0].netns);
    let conn = run_in(Some(&node_ns), nft::Conn::open).expect("netns").expect("nf_tables");
    let mut pods: Vec<PodInfo> = (0..2000).map(|i| pod(i, &format!("client{}", i % 50))).collect();
    let mut policies: Vec<NetworkPolicy> = (0..1000).map(|i| policy(i, 80)).collect();
    let namespaces = BTreeMap::new();

    let t = Instant::now();
    let rs = policy::build("node0", &pods, &namespaces, &policies);
    let planned = t.elapsed();
    let cmds = policy::full(&rs);
    let bytes = nft::encode(policy::TABLE, &cmds).0.len();
    conn.apply(policy::TABLE, &cmds).expect("full");
    let full = t.elapsed();
    println!(
        "BENCH services policy-full policies=1000 pods=2000 local=100 chains={} full_ms={:.1} (plan {:.1}, batch {} KiB, {} commands)",
        rs.chains.len(),
        ms(full),
        ms(planned),
        bytes / 1024,
        cmds.len()
    );

    let one = |what: &str, before: &policy::Ruleset, pods: &[PodInfo], policies: &[NetworkPolicy]| {
        let t = Instant::now();
        let after = policy::build("node0", pods, &namespaces, policies);
        let planned = t.elapsed();
        let cmds = policy::diff(before, &after);
        let diffed = t.elapsed();
        conn.apply(policy::TABLE, &cmds).expect(what);
        let all = t.elapsed();
        println!(
            "BENCH services policy-{what} policies=1000 {what}_ms={:.2} (plan {:.2}, diff {:.2}, commit {:.2}; {} commands)",
            ms(all),
            ms(planned),
            ms(diffed - planned),
            ms(all - diffed),
            cmds.len()
        );
        after
    };
    pods.push(pod(2000, "client7"));
    let rs = one("pod-added", &rs, &pods, &policies);
    policies[100] = policy(100, 81); // app0 in ns0: five of this node's pods
    let _ = one("policy-changed", &rs, &pods, &policies);
    println!(
        "BENCH services policy anchor calico/cilium not-installable; kube-router rewrites its iptables chains (iptables-restore) per change"
    );
    let _ =
        run_in(Some(&node_ns), || conn.apply(policy::TABLE, &[nft::Cmd::AddTable, nft::Cmd::DeleteTable]));
}
