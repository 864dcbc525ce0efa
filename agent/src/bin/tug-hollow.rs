//! `tug-hollow`: many hollow nodes in one process (see `tug_agent::hollow`), for scale
//! benchmarks: `tug-hollow --socket /run/tug/tug.sock --nodes 5000`.

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tug_agent::hollow::{Shape, Tally};

/// Simulated nodes that register, heartbeat and run their pods without a kernel in sight.
#[derive(Parser, Debug)]
#[command(name = "tug-hollow", version = tug_api::VERSION, about)]
struct Args {
    /// The control plane's Unix socket.
    #[arg(long, default_value = "/run/tug/tug.sock")]
    socket: String,
    /// How many nodes.
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Their names: PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "hollow")]
    name_prefix: String,
    /// Each node's CPUs and memory, as a Node's capacity.
    #[arg(long, default_value = "16")]
    cpu: String,
    #[arg(long, default_value = "64Gi")]
    memory: String,
    /// Pods per node.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// How often each node renews its Lease.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_renew: Duration,
    /// Whether each node acts as itself (`system:node:NAME` in `system:nodes`, impersonated
    /// by the socket's user), as a real agent with its certificate does: the node authorizer
    /// and the nodes' priority levels apply. `--as-nodes=false` acts as the socket's user.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    as_nodes: bool,
    /// How often the totals are printed (registered, heartbeats, started, deleted, errors).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    report: Duration,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(false).init();
    let a = Args::parse();
    // A watch and a connection or two per node: more descriptors than the usual 1024.
    let _ =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).and_then(|(_, hard)| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        });
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tug-hollow: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let tally = Arc::new(Tally::default());
    rt.block_on(async {
        let api = tug_client::Client::unix(&a.socket);
        let shape = Shape {
            cpu: a.cpu.clone(),
            memory: a.memory.clone(),
            max_pods: a.max_pods,
            lease_renew: a.lease_renew,
        };
        for i in 0..a.nodes {
            let name = format!("{}-{i}", a.name_prefix);
            let api = match a.as_nodes {
                true => api.impersonating(&format!("system:node:{name}"), &["system:nodes"]),
                false => api.clone(),
            };
            // Addresses of a range no host uses: nothing is ever sent to them.
            let ip = format!("198.18.{}.{}", (i / 250) % 256, 1 + i % 250);
            tokio::spawn(tug_agent::hollow::run_node(api, name, ip, shape.clone(), Arc::clone(&tally)));
        }
        loop {
            tokio::time::sleep(a.report).await;
            let t = &tally;
            println!(
                "HOLLOW registered={} heartbeats={} started={} deleted={} errors={}",
                t.registered.load(Ordering::Relaxed),
                t.heartbeats.load(Ordering::Relaxed),
                t.started.load(Ordering::Relaxed),
                t.deleted.load(Ordering::Relaxed),
                t.errors.load(Ordering::Relaxed)
            );
        }
    })
}
