//! `make bench AREA=network`: pod network set-up and tear-down on one simulated node (a
//! network namespace of the harness): median and p99 over `TUG_BENCH_PODS` (default 200) pods
//! made and removed one by one, then the set-up time of one more pod while 500 exist.

use std::time::{Duration, Instant};
use tug_agent::network::node::{NodeConfig, NodeNetwork};
use tug_agent::network::routes::Backend;
use tug_integration::cluster::Cluster;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| ms(*d))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("TUG_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let cluster = Cluster::new(1).expect("cluster");
    let dir = tempfile::Builder::new().prefix("tug-netns-").tempdir().expect("dir");
    let node = &cluster.nodes[0];
    let mut cfg = NodeConfig::new("bench", node.ip, "10.244.0.0/22".parse().expect("cidr"), dir.path());
    cfg.node_netns = Some(std::path::PathBuf::from("/run/netns").join(&node.netns));
    cfg.netns_dir = dir.path().join("pods");
    cfg.backend = Backend::HostGw;
    let net = NodeNetwork::setup(cfg).await.expect("node setup");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..n {
        let key = format!("bench/p{i}");
        let t = Instant::now();
        net.add_pod(&key).await.expect("add");
        up.push(t.elapsed());
        let t = Instant::now();
        net.remove_pod(&key).await.expect("remove");
        down.push(t.elapsed());
    }
    up.sort();
    down.sort();
    println!(
        "BENCH network pod-setup n={n} median_ms={:.2} p99_ms={:.2} teardown_median_ms={:.2} teardown_p99_ms={:.2}",
        pct(&up, 0.5),
        pct(&up, 0.99),
        pct(&down, 0.5),
        pct(&down, 0.99)
    );
    for i in 0..500 {
        net.add_pod(&format!("bench/full{i}")).await.expect("add");
    }
    let mut at500 = Vec::new();
    for i in 0..20 {
        let key = format!("bench/extra{i}");
        let t = Instant::now();
        net.add_pod(&key).await.expect("add");
        at500.push(t.elapsed());
        net.remove_pod(&key).await.expect("remove");
    }
    at500.sort();
    println!(
        "BENCH network pod-setup-at-500 pods=500 median_ms={:.2} p99_ms={:.2}",
        pct(&at500, 0.5),
        pct(&at500, 0.99)
    );
    for i in 0..500 {
        let _ = net.remove_pod(&format!("bench/full{i}")).await;
    }
    for e in std::fs::read_dir(dir.path().join("pods")).into_iter().flatten().flatten() {
        let _ = tug_agent::network::netns::remove_pinned(&e.path());
    }
}
