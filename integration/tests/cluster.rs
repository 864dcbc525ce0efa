//! The cluster-in-namespaces harness: nodes reach each other, and nothing is left behind —
//! also when the test that made them panics.

use tug_integration::cluster::Cluster;
use tug_integration::leaks::{Debris, process_alive};

#[test]
fn three_nodes_reach_each_other_and_leave_nothing() {
    let cluster = Cluster::new(3).expect("cluster");
    let marker = cluster.name.clone();
    for a in &cluster.nodes {
        // Each node has its own nftables: a table made in one is not seen in another.
        a.run(&["nft", "add", "table", "inet", "tug_harness"]).expect("nft in node");
        for b in &cluster.nodes {
            a.run(&["busybox", "ping", "-c", "1", "-W", "5", &b.ip.to_string()])
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", a.ip, b.ip));
        }
    }
    let listed = cluster.nodes[0].run(&["nft", "list", "tables"]).expect("nft list");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).matches("tug_harness").count(), 1);
    let pid = cluster.nodes[1].spawn(&["busybox", "sleep", "600"]).expect("spawn");
    assert!(!Debris::containing(&marker).is_empty(), "the cluster's namespaces should be visible");
    drop(cluster);
    assert!(!process_alive(pid), "process {pid} outlived its cluster");
    let left = Debris::containing(&marker);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_panicking_test_still_tears_down() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let cluster = Cluster::new(2).expect("cluster");
        let pid = cluster.nodes[0].spawn(&["busybox", "sleep", "600"]).expect("spawn");
        *seen.lock().unwrap() = Some((cluster.name.clone(), pid));
        panic!("the test fails half-way");
    });
    assert!(result.is_err());
    let (marker, pid) = seen.lock().unwrap().clone().expect("the cluster was made");
    assert!(!process_alive(pid), "process {pid} outlived its cluster");
    let left = Debris::containing(&marker);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn nodes_are_isolated_from_the_host_namespace() {
    let cluster = Cluster::new(1).expect("cluster");
    let links = cluster.nodes[0].run(&["ip", "-o", "link", "show"]).expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names.len(), 2, "a node has lo and eth0 only: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("eth0")));
}

#[test]
fn zero_nodes_is_an_error() {
    let err = Cluster::new(0).err().expect("zero nodes refused");
    assert_eq!(err.to_string(), "a cluster has 1 to 200 nodes, not 0");
}
