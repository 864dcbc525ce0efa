//! `make bench AREA=proxy`: the service proxy on one simulated node (a network namespace of
//! the harness with the agent's pod network and one real pod serving TCP).
//!
//! - Rule sync time with 1,000 and 10,000 Services of 10 endpoints each: the full sync
//!   (build, encode, one netlink transaction), and one endpoint of one Service changing (build, diff,
//!   apply) — what the agent does on each Endpoints event. The iptables mode's full sync at
//!   1,000 beside it.
//! - First-packet latency: the median and p99 time to `connect` through a ClusterIP (DNAT to
//!   the pod) with 10 and with 10,000 Services programmed, and straight to the pod's address
//!   (the best case).
//!
//! Anchor: kube-proxy's nftables mode is not installable here; its published behaviour is
//! O(changed objects) updates and first-packet latency at 30,000 Services within
//! microseconds of the best case. Goals: one change under 10 ms at 10,000 Services, a full
//! sync under 1 s, latency at 10,000 within 10% of that at 10.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tug_agent::network::netns::run_in;
use tug_agent::network::node::{NodeConfig, NodeNetwork, run_nft, run_tool};
use tug_agent::network::routes::Backend;
use tug_agent::proxy::nft;
use tug_agent::proxy::rules::{self, NodeInfo, PortInfo, Proto, Ruleset, ServiceInfo};
use tug_integration::cluster::Cluster;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// `n` Services of 10 endpoints; Service 0's endpoints all lead to the real pod.
fn services(n: usize, pod: Ipv4Addr) -> Vec<ServiceInfo> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + u32::try_from(i).unwrap_or(0));
            let endpoints = (0..10u32)
                .map(|e| {
                    if i == 0 {
                        (pod, 8080)
                    } else {
                        let a = Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 245, 0, 0)) + u32::try_from(i).unwrap_or(0) * 16 + e,
                        );
                        (a, 8080)
                    }
                })
                .collect();
            ServiceInfo {
                namespace: "bench".into(),
                name: format!("s{i}"),
                cluster_ip: Some(ip),
                ports: vec![PortInfo {
                    name: "http".into(),
                    proto: Proto::Tcp,
                    port: 80,
                    node_port: None,
                    endpoints,
                    canary: None,
                    external: None,
                }],
                affinity: None,
                external_ips: Vec::new(),
                source_ranges: Vec::new(),
                lb_ips: Vec::new(),
            }
        })
        .collect()
}

/// A TCP server in the pod's namespace (the socket is made there) that accepts and closes.
fn serve_in(netns: &Path, addr: SocketAddr) {
    let l = run_in(Some(netns), || std::net::TcpListener::bind(addr)).expect("netns").expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
}

/// Connect times from the node's namespace to `to`.
fn connects(node_ns: &Path, to: SocketAddr, n: usize) -> Vec<Duration> {
    let mut out = run_in(Some(node_ns), || {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
                let d = t.elapsed();
                drop(s);
                d
            })
            .collect::<Vec<_>>()
    })
    .expect("netns");
    out.sort();
    out
}

/// Unpins the pod's namespace when the bench ends, also on a panic (the cluster guard
/// removes the node's).
struct PodNetns(std::path::PathBuf);

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = tug_agent::network::netns::remove_pinned(&self.0);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = Cluster::new(1).expect("cluster");
    let dir = tempfile::Builder::new().prefix("tug-proxy-bench-").tempdir().expect("dir");
    let node = &cluster.nodes[0];
    let node_ns = std::path::PathBuf::from("/run/netns").join(&node.netns);
    let pod_cidr = "10.244.0.0/24".parse().expect("cidr");
    let mut cfg = NodeConfig::new("bench", node.ip, pod_cidr, dir.path());
    cfg.node_netns = Some(node_ns.clone());
    cfg.netns_dir = dir.path().join("pods");
    cfg.backend = Backend::HostGw;
    let net = NodeNetwork::setup(cfg).await.expect("node setup");
    net.route_services("10.96.0.0/12".parse().expect("cidr")).await.expect("route");
    let pod = net.add_pod("bench/server").await.expect("pod");
    let _pod_netns = PodNetns(pod.netns.clone());
    let pod_ip: Ipv4Addr = pod.ip.to_string().parse().expect("ip");
    serve_in(&pod.netns, SocketAddr::from((pod_ip, 8080)));
    let info = NodeInfo { cluster_cidr: "10.244.0.0/16".parse().expect("cidr"), pod_cidr };
    let ns = Some(node_ns.as_path());

    let conn = run_in(ns, nft::Conn::open).expect("netns").expect("nf_tables");
    let mut latency = Vec::new();
    // TUG_BENCH_SERVICES=10,1000 for a shorter run.
    let sizes: Vec<usize> = std::env::var("TUG_BENCH_SERVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 1_000, 10_000]);
    for &n in &sizes {
        let mut svcs = services(n, pod_ip);
        // Full sync.
        let t = Instant::now();
        let ruleset = rules::build(&svcs, &Ruleset::default());
        let cmds = rules::full(&ruleset, &info);
        let generated = t.elapsed();
        let bytes = nft::encode(rules::TABLE, &cmds).0.len();
        let t = Instant::now();
        conn.apply(rules::TABLE, &cmds).expect("full sync");
        let full = generated + t.elapsed();
        // One endpoint of the last Service changes: what the agent does on the event.
        let before = svcs.clone();
        svcs[n - 1].ports[0].endpoints[3].0 = Ipv4Addr::new(10, 246, 0, 1);
        let mut ruleset = ruleset;
        let t = Instant::now();
        let cmds = rules::update(&mut ruleset, &before, &svcs);
        let planned = t.elapsed();
        let count = cmds.len();
        conn.apply(rules::TABLE, &cmds).expect("one change");
        let one = t.elapsed();
        println!(
            "BENCH proxy nft-sync services={n} endpoints_each=10 full_ms={:.1} (generate {:.1}, batch {} KiB) one_endpoint_change_ms={:.2} (plan {:.2}, {count} commands)",
            ms(full),
            ms(generated),
            bytes / 1024,
            ms(one),
            ms(planned)
        );
        if n == sizes[0] || n == sizes[sizes.len() - 1] {
            let through = connects(&node_ns, SocketAddr::from((Ipv4Addr::new(10, 96, 0, 1), 80)), 2000);
            latency.push((n, through));
        }
    }
    let direct = connects(&node_ns, SocketAddr::from((pod_ip, 8080)), 2000);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "BENCH proxy first-packet direct p50_us={:.0} p99_us={:.0}",
        us(pct(&direct, 0.5)),
        us(pct(&direct, 0.99))
    );
    let fewest = latency.first().map(|(_, l)| us(pct(l, 0.5))).unwrap_or(1.0).max(1.0);
    for (n, l) in &latency {
        println!(
            "BENCH proxy first-packet services={n} p50_us={:.0} p99_us={:.0} (vs direct p50 {:+.0}%, vs {} services {:+.0}%)",
            us(pct(l, 0.5)),
            us(pct(l, 0.99)),
            (us(pct(l, 0.5)) / us(pct(&direct, 0.5)).max(1.0) - 1.0) * 100.0,
            sizes[0],
            (us(pct(l, 0.5)) / fewest - 1.0) * 100.0
        );
    }
    // A Rollout's stable Service, 10% to a canary (both sets on the real pod), beside a plain
    // one with the same endpoints: the cost of the weighted chain per new connection.
    let mut svcs = services(10, pod_ip);
    let mut weighted = svcs[0].clone();
    weighted.name = "weighted".into();
    weighted.cluster_ip = Some(Ipv4Addr::new(10, 96, 200, 1));
    weighted.ports[0].canary = Some((10, vec![(pod_ip, 8080)]));
    svcs.push(weighted);
    let cmds = rules::full(&rules::build(&svcs, &Ruleset::default()), &info);
    conn.apply(rules::TABLE, &cmds).expect("weighted sync");
    let plain = connects(&node_ns, SocketAddr::from((Ipv4Addr::new(10, 96, 0, 1), 80)), 2000);
    let split = connects(&node_ns, SocketAddr::from((Ipv4Addr::new(10, 96, 200, 1), 80)), 2000);
    println!(
        "BENCH proxy first-packet weighted-10pct p50_us={:.0} p99_us={:.0} plain p50_us={:.0} p99_us={:.0} (weighted vs plain p50 {:+.0}%)",
        us(pct(&split, 0.5)),
        us(pct(&split, 0.99)),
        us(pct(&plain, 0.5)),
        us(pct(&plain, 0.99)),
        (us(pct(&split, 0.5)) / us(pct(&plain, 0.5)).max(1.0) - 1.0) * 100.0
    );
    // The iptables mode at 1,000 Services, full sync, beside it.
    let _ = run_nft(ns, &["delete", "table", "ip", rules::TABLE], "");
    let svcs = services(1_000, pod_ip);
    let t = Instant::now();
    let (text, _) = tug_agent::proxy::iptables::restore(&svcs, &info, &Default::default());
    run_tool(ns, "iptables-restore", &["-w", "--noflush"], &text).expect("iptables-restore");
    println!("BENCH proxy iptables-sync services=1000 endpoints_each=10 full_ms={:.1}", ms(t.elapsed()));
    println!(
        "BENCH proxy anchor kube-proxy-nftables not-installable (published: O(changed) updates, latency at 30k services within microseconds of best case)"
    );
    drop(net);
}
