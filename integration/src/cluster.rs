//! The cluster in namespaces: several simulated hosts on one machine.
//!
//! ```text
//!   netns tug-<pid>-<n>-hub          netns tug-<pid>-<n>-node0   (10.250.0.10/24)
//!   ┌────────────────────────┐       ┌────────────────┐
//!   │ bridge tugbr           │──v0───│ eth0, lo       │
//!   │   v0 v1 v2 ...         │──v1───│ ...node1 (.11) │
//!   └────────────────────────┘       └────────────────┘
//! ```
//!
//! Every node is a network namespace with its own loopback, its own `eth0` (one end of a veth
//! pair whose other end is a port of the bridge in the hub namespace) and so its own routes
//! and nftables. Nothing is made in the machine's own namespace: removing the namespaces
//! removes every link and table with them. [`Cluster`] is a guard — dropping it (also while a
//! test unwinds from a panic) kills the processes it started and removes the namespaces.
//! Names carry the creating process's pid, so [`Cluster::new`] also sweeps namespaces whose
//! creator died without unwinding (a SIGKILLed test).

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every namespace the harness makes.
pub const PREFIX: &str = "tug-";

/// What went wrong while building or driving the simulated cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("running {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed with {status}: {stderr}")]
    Failed { command: String, status: std::process::ExitStatus, stderr: String },
    #[error("a cluster has 1 to 200 nodes, not {0}")]
    Size(usize),
}

/// A set of simulated nodes on one bridge, removed when dropped.
pub struct Cluster {
    /// The common prefix of this cluster's namespaces, `tug-<pid>-<n>`.
    pub name: String,
    /// The namespace that holds the bridge.
    pub hub: String,
    /// The nodes, in order; node `i` has address `10.250.0.(10 + i)`.
    pub nodes: Vec<Node>,
}

/// One simulated host: a network namespace with `lo` and `eth0` up.
pub struct Node {
    /// The network namespace's name (under `/run/netns`).
    pub netns: String,
    /// The node's address on the cluster bridge.
    pub ip: Ipv4Addr,
    children: Mutex<Vec<Child>>,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Makes `n` nodes wired to one bridge. On any failure, whatever was made is removed.
    pub fn new(n: usize) -> Result<Cluster, ClusterError> {
        if n == 0 || n > 200 {
            return Err(ClusterError::Size(n));
        }
        sweep_stale();
        let name = format!("{PREFIX}{}-{}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let hub = format!("{name}-hub");
        // The guard exists before the first namespace, so a failure half-way tears down.
        let mut cluster = Cluster { name, hub, nodes: Vec::new() };
        ip(&["netns", "add", &cluster.hub])?;
        ip(&["-n", &cluster.hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &cluster.hub, "link", "add", "tugbr", "type", "bridge"])?;
        ip(&["-n", &cluster.hub, "link", "set", "tugbr", "up"])?;
        for i in 0..n {
            let node = cluster.add_node(i)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn add_node(&self, i: usize) -> Result<Node, ClusterError> {
        let netns = format!("{}-node{i}", self.name);
        let port = format!("v{i}");
        let ip_addr = Ipv4Addr::new(10, 250, 0, u8::try_from(10 + i).map_err(|_| ClusterError::Size(i))?);
        ip(&["netns", "add", &netns])?;
        let node = Node { netns, ip: ip_addr, children: Mutex::new(Vec::new()) };
        let hub = self.hub.as_str();
        ip(&["-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node.netns])?;
        ip(&["-n", hub, "link", "set", &port, "master", "tugbr", "up"])?;
        ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &node.netns, "addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"])?;
        ip(&["-n", &node.netns, "link", "set", "eth0", "up"])?;
        Ok(node)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill_all();
            let _ = ip(&["netns", "del", &node.netns]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}

impl Node {
    /// Runs a command inside the node and waits for it; a nonzero exit is an error.
    pub fn run(&self, argv: &[&str]) -> Result<Output, ClusterError> {
        run_checked(self.command(argv))
    }

    /// Starts a command inside the node in the background; it is killed when the cluster
    /// drops. Returns its pid.
    pub fn spawn(&self, argv: &[&str]) -> Result<u32, ClusterError> {
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn { command: argv.join(" "), source })?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|e| e.into_inner()).push(child);
        Ok(pid)
    }

    /// A command that runs `argv` inside this node's network namespace. `ip netns exec`
    /// execs the program in place, so the child's pid is the program's.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).args(argv);
        cmd
    }

    fn kill_all(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
}

/// Runs `ip` with the given arguments; a nonzero exit is an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<Output, ClusterError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_checked(cmd)
}

fn run_checked(mut cmd: Command) -> Result<Output, ClusterError> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ClusterError::Failed { command, status: out.status, stderr });
    }
    Ok(out)
}

/// Removes harness namespaces whose creating process no longer exists.
fn sweep_stale() {
    for netns in crate::leaks::netns_with_prefix(PREFIX) {
        let creator = netns[PREFIX.len()..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = creator {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", &netns]);
            }
        }
    }
}
