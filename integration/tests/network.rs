//! Node networking on the cluster in namespaces: pods on one node and across nodes (host-gw
//! and VXLAN), masquerade to the outside, an agent restart, and no leaks over many pods.
//! Root tests: every node is a network namespace the harness made; pod namespaces are pinned
//! in a temporary directory and unpinned by a guard.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tug_agent::network::cidr::Cidr4;
use tug_agent::network::netns;
use tug_agent::network::node::{NodeConfig, NodeNetwork};
use tug_agent::network::routes::{Backend, Peer};
use tug_integration::cluster::{Cluster, Node};

/// A directory of pinned pod namespaces, unpinned when dropped (also on a failed test).
struct Pins(tempfile::TempDir);

impl Pins {
    fn new() -> Pins {
        Pins(tempfile::Builder::new().prefix("tug-netns-").tempdir().unwrap())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        // Pins sit one level down (`pods<i>/<pod>`).
        for dir in std::fs::read_dir(self.0.path()).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                let _ = netns::remove_pinned(&e.path());
            }
        }
    }
}

fn node_ns(n: &Node) -> PathBuf {
    PathBuf::from("/run/netns").join(&n.netns)
}

fn config(n: &Node, i: u8, pins: &Pins, backend: Backend) -> NodeConfig {
    let pod_cidr: Cidr4 = format!("10.244.{i}.0/24").parse().unwrap();
    let mut cfg =
        NodeConfig::new(&format!("node{i}"), n.ip, pod_cidr, &pins.0.path().join(format!("state{i}")));
    cfg.node_netns = Some(node_ns(n));
    cfg.netns_dir = pins.0.path().join(format!("pods{i}"));
    cfg.backend = backend;
    cfg
}

/// Listens in `ns` on `addr`; the returned thread accepts one connection, answers `hi` and
/// returns the address the connection came from.
fn serve_once(ns: &Path, addr: SocketAddr) -> std::thread::JoinHandle<String> {
    let listener = netns::run_in(Some(ns), move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(b"hi").unwrap();
        peer.ip().to_string()
    })
}

/// Connects from `ns` to `addr` and reads the greeting.
fn greet(ns: &Path, addr: SocketAddr) -> Result<String, String> {
    netns::run_in(Some(ns), move || -> Result<String, String> {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text)
    })?
}

/// A TCP exchange from `from` to `to`'s address; returns the source address `to` saw.
fn exchange(from: &Path, to: &Path, to_ip: Ipv4Addr, port: u16) -> String {
    let addr = SocketAddr::from((to_ip, port));
    let server = serve_once(to, addr);
    assert_eq!(greet(from, addr).unwrap(), "hi");
    server.join().unwrap()
}

fn ping(ns: &Path, ip: Ipv4Addr) -> bool {
    use std::os::unix::process::CommandExt;
    let fd = netns::open(ns).unwrap();
    // busybox-static's ping (`make deps` installs it; the host may have no other).
    let mut cmd = std::process::Command::new("busybox");
    cmd.args(["ping", "-c", "1", "-W", "3", &ip.to_string()]).stdout(std::process::Stdio::null());
    // SAFETY: only setns, async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    cmd.status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_node_talk_both_ways_and_keep_their_addresses_across_a_restart() {
    let cluster = Cluster::new(1).unwrap();
    let pins = Pins::new();
    let net = NodeNetwork::setup(config(&cluster.nodes[0], 0, &pins, Backend::HostGw)).await.unwrap();
    let a = net.add_pod("default/a").await.unwrap();
    let b = net.add_pod("default/b").await.unwrap();
    assert_eq!((a.ip, b.ip), (Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)));
    assert!(ping(&a.netns, b.ip) && ping(&b.netns, a.ip), "ping both ways");
    // IPv4 pods: no IPv6 link-local address on either end of the pair (no DAD, no MLD), and
    // the pod's loopback keeps ::1.
    let if_inet6 = |ns: &Path| {
        netns::run_in(Some(ns), || {
            std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap_or_default()
        })
        .unwrap()
    };
    let pod_v6 = if_inet6(&a.netns);
    assert!(!pod_v6.contains("eth0"), "pod eth0 has an IPv6 address:\n{pod_v6}");
    assert!(
        pod_v6.lines().any(|l| l.starts_with("00000000000000000000000000000001") && l.ends_with("lo")),
        "{pod_v6}"
    );
    let host_v6 = if_inet6(&node_ns(&cluster.nodes[0]));
    let veth = tug_agent::network::node::veth_name("default/a");
    assert!(!host_v6.contains(&veth), "{veth} has an IPv6 address:\n{host_v6}");
    assert_eq!(exchange(&a.netns, &b.netns, b.ip, 8080), a.ip.to_string());
    assert_eq!(exchange(&b.netns, &a.netns, a.ip, 8081), b.ip.to_string());
    // The same pod again is the same network.
    assert_eq!(net.add_pod("default/a").await.unwrap(), a);
    // An agent restart: setup again over what exists; pods keep addresses and connectivity;
    // a pod that is gone (b) is reclaimed.
    drop(net);
    let net = NodeNetwork::setup(config(&cluster.nodes[0], 0, &pins, Backend::HostGw)).await.unwrap();
    let gone = net.reclaim(&|p| p == "default/a").await.unwrap();
    assert_eq!(gone, ["default/b"]);
    assert_eq!(net.pod_ip("default/a"), Some(a.ip.into()));
    assert!(!b.netns.exists(), "b's namespace is unpinned");
    let c = net.add_pod("default/c").await.unwrap();
    assert_eq!(c.ip, b.ip, "b's address is free again");
    assert_eq!(exchange(&c.netns, &a.netns, a.ip, 8082), c.ip.to_string());
}

async fn across_nodes(backend: Backend) {
    let cluster = Cluster::new(3).unwrap();
    let pins = Pins::new();
    let mut nets = Vec::new();
    let mut pods = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let i = u8::try_from(i).unwrap();
        let net = NodeNetwork::setup(config(n, i, &pins, backend)).await.unwrap();
        pods.push(net.add_pod(&format!("default/p{i}")).await.unwrap());
        nets.push(net);
    }
    let peers: Vec<Peer> = nets
        .iter()
        .map(|n| Peer { name: n.cfg.node_name.clone(), address: n.cfg.node_ip, pod_cidr: n.cfg.pod_cidr })
        .collect();
    for net in &nets {
        let routes = net.sync_routes(&peers).await.unwrap();
        assert_eq!(routes.len(), 2);
    }
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                let port = 9000 + u16::try_from(i * 3 + j).unwrap();
                let seen = exchange(&from.netns, &to.netns, to.ip, port);
                assert_eq!(
                    seen,
                    from.ip.to_string(),
                    "{backend:?}: p{i} → p{j} keeps its own source address"
                );
            }
        }
    }
    // A node leaves: the others drop their route to it.
    let remaining = &peers[..2];
    let routes = nets[0].sync_routes(remaining).await.unwrap();
    assert_eq!(routes.len(), 1);
    let table = cluster.nodes[0].run(&["ip", "route"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains("10.244.2.0/24") && table.contains("10.244.1.0/24"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_three_nodes_reach_each_other_with_host_gw() {
    across_nodes(Backend::HostGw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_three_nodes_reach_each_other_over_vxlan() {
    across_nodes(Backend::Vxlan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_leaving_the_cluster_is_masqueraded() {
    // node1 stands in for "outside": it has no route to node0's pods, so only a masqueraded
    // connection (source: node0's address) can be answered.
    let cluster = Cluster::new(2).unwrap();
    let pins = Pins::new();
    let net = NodeNetwork::setup(config(&cluster.nodes[0], 0, &pins, Backend::HostGw)).await.unwrap();
    let pod = net.add_pod("default/out").await.unwrap();
    let outside = &cluster.nodes[1];
    let seen = exchange(&pod.netns, &node_ns(outside), outside.ip, 7070);
    assert_eq!(seen, cluster.nodes[0].ip.to_string());
    let rules = cluster.nodes[0].run(&["nft", "list", "table", "ip", "tug_node"]).unwrap();
    assert!(
        String::from_utf8_lossy(&rules.stdout)
            .contains("ip saddr 10.244.0.0/24 ip daddr != 10.244.0.0/16 masquerade")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pods_come_and_go_without_leaking() {
    let cluster = Cluster::new(1).unwrap();
    let pins = Pins::new();
    let net = NodeNetwork::setup(config(&cluster.nodes[0], 0, &pins, Backend::HostGw)).await.unwrap();
    let links = || cluster.nodes[0].run(&["ip", "-o", "link"]).unwrap().stdout.split(|b| *b == b'\n').count();
    // Only this test's pins: other tests mount in the same mount namespace meanwhile.
    let mine = pins.0.path().display().to_string();
    let mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&mine)).count()
    };
    let pinned = || std::fs::read_dir(pins.0.path().join("pods0")).map(|d| d.count()).unwrap_or(0);
    let (links0, mounts0, pinned0) = (links(), mounts(), pinned());
    for i in 0..1000 {
        let key = format!("default/churn{i}");
        net.add_pod(&key).await.unwrap();
        net.remove_pod(&key).await.unwrap();
    }
    // The kernel removes a namespace's links in its own clean-up work, shortly after.
    tug_integration::wait_for(Duration::from_secs(30), || links() == links0);
    assert_eq!((links(), mounts(), pinned()), (links0, mounts0, pinned0), "links, mounts, pinned namespaces");
    assert_eq!(net.pod_ip("default/churn999"), None);
    let ipam: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pins.0.path().join("state0/ipam.json")).unwrap()).unwrap();
    assert_eq!(ipam["addresses"], serde_json::json!({}), "no allocation left");
}

/// The proxy's nf_tables connection applies a batch atomically, and a refused command comes
/// back named, with the kernel's reason, leaving the table as it was.
#[test]
fn nf_tables_batches_apply_whole_or_not_at_all() {
    use tug_agent::proxy::nft::{Cmd, Conn, Expr};
    let cluster = Cluster::new(1).expect("cluster");
    let ns = node_ns(&cluster.nodes[0]);
    let (ok, refused, listed) = netns::run_in(Some(&ns), || {
        let conn = Conn::open().expect("nf_tables");
        let ok = conn.apply("tug_nlcheck", &[Cmd::AddTable, Cmd::AddChain("a".into())]);
        let refused = conn.apply(
            "tug_nlcheck",
            &[
                Cmd::AddChain("b".into()),
                Cmd::AddRule { chain: "missing".into(), exprs: vec![Expr::Jump("a".into())] },
            ],
        );
        let out = std::process::Command::new("nft").args(["list", "table", "ip", "tug_nlcheck"]).output();
        (ok, refused, out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default())
    })
    .expect("netns");
    assert_eq!(ok, Ok(()));
    let err = refused.expect_err("a rule in a chain that does not exist");
    assert!(err.contains("add rule missing") && err.contains("No such file or directory"), "{err}");
    assert!(
        listed.contains("chain a") && !listed.contains("chain b"),
        "chain b went with the failed batch:\n{listed}"
    );
}

/// A Rollout's stable Service with a canary weight: the kernel takes the weighted chain
/// (numgen, byteorder, a less-than compare), a weight change rewrites only that chain, and
/// the replies of each set's endpoints are counted — the canary refuses every connection
/// (nothing listens), the stable endpoints accept theirs.
#[test]
fn a_weighted_service_port_is_accepted_reweighted_in_place_and_counted() {
    use tug_agent::proxy::nft::{Cmd, Conn};
    use tug_agent::proxy::rules::{self, NodeInfo, PortInfo, Proto, Ruleset, ServiceInfo};
    let cluster = Cluster::new(1).expect("cluster");
    let ns = node_ns(&cluster.nodes[0]);
    // The endpoints and the client are addresses of the node's loopback, outside its pod
    // block (nothing to masquerade); the ClusterIP needs a route to be connected to.
    let node = NodeInfo {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
    };
    for a in ["10.244.0.5/32", "10.244.0.6/32", "10.244.0.7/32", "10.244.0.9/32"] {
        cluster.nodes[0].run(&["ip", "addr", "add", a, "dev", "lo"]).unwrap();
    }
    cluster.nodes[0]
        .run(&["ip", "route", "add", "10.96.0.0/24", "dev", "eth0", "src", "10.244.0.9"])
        .unwrap();
    let listeners: Vec<TcpListener> = ["10.244.0.5:8080", "10.244.0.6:8080"]
        .iter()
        .map(|a| netns::run_in(Some(&ns), || TcpListener::bind(a)).unwrap().unwrap())
        .collect();
    for l in listeners {
        std::thread::spawn(move || for _ in l.incoming() {});
    }
    let svc = |w: u32| ServiceInfo {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: Some("10.96.0.20".parse().unwrap()),
        ports: vec![PortInfo {
            name: "http".into(),
            proto: Proto::Tcp,
            port: 80,
            node_port: Some(30080),
            endpoints: vec![("10.244.0.5".parse().unwrap(), 8080), ("10.244.0.6".parse().unwrap(), 8080)],
            canary: Some((w, vec![("10.244.0.7".parse().unwrap(), 8080)])),
            external: None,
        }],
        affinity: None,
        external_ips: Vec::new(),
        source_ranges: Vec::new(),
        lb_ips: Vec::new(),
    };
    let (first, second, listed, tries, counts) = netns::run_in(Some(&ns), || {
        let conn = Conn::open().expect("nf_tables");
        let r = rules::build(&[svc(10)], &Ruleset::default());
        let first = conn.apply(rules::TABLE, &rules::full(&r, &node));
        let mut r2 = r.clone();
        let cmds = rules::update(&mut r2, &[svc(10)], &[svc(50)]);
        let only_chain = cmds.iter().all(|c| matches!(c, Cmd::FlushChain(_) | Cmd::AddRule { .. }));
        let second = conn.apply(rules::TABLE, &cmds).map(|()| only_chain);
        // 40 connections (from 10.244.0.9, the route's source): (accepted, refused).
        let mut tries = (0, 0);
        for _ in 0..40 {
            match TcpStream::connect_timeout(&SocketAddr::from(([10, 96, 0, 20], 80)), Duration::from_secs(2))
            {
                Ok(_) => tries.0 += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => tries.1 += 1,
                Err(e) => panic!("connecting to the ClusterIP: {e}"),
            }
        }
        let counts = tug_agent::proxy::read_counts(&conn, &rules::counted(&r2));
        let out = std::process::Command::new("nft").args(["list", "table", "ip", rules::TABLE]).output();
        let _ = conn.apply(rules::TABLE, &[Cmd::DeleteTable]);
        let listed = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        (first, second, listed, tries, counts)
    })
    .expect("netns");
    assert_eq!(first, Ok(()), "{listed}");
    assert_eq!(second, Ok(true), "a weight change touches only the port's chain");
    assert!(listed.contains("numgen random mod 100 < 50"), "{listed}");
    // Half and half, give or take: both sets had some (the odds of not: 2 in a million).
    assert!(tries.0 > 0 && tries.1 > 0, "{tries:?}");
    let set = |canary: bool| {
        counts.iter().find(|(_, c, _)| *c == canary).map(|(_, _, n)| (n.accepted, n.refused, n.reset))
    };
    assert_eq!(set(true), Some((0, tries.1, 0)), "the canary refused every one sent to it:\n{listed}");
    assert_eq!(set(false), Some((tries.0, 0, 0)), "the stable set accepted its share:\n{listed}");
}
