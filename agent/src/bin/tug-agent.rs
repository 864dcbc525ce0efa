//! `tug-agent`: the node agent. See the crate documentation and `tug-agent --help`.

use clap::Parser;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tug_agent::config::{Config, parse_eviction, parse_labels, parse_taints};

/// The node agent: registers this host as a node and runs the pods bound to it.
#[derive(Parser)]
#[command(name = "tug-agent", version, about, args_override_self = true)]
struct Args {
    /// A TOML file of settings: the keys are these flags' long names; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration (flags, file and defaults) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// The control plane's Unix socket, on this host.
    #[arg(long, conflicts_with = "server")]
    socket: Option<PathBuf>,
    /// The control plane on another host: https://HOST:PORT (with --token); several,
    /// comma-separated, are its replicas — the agent uses the one that answers, and moves to
    /// the next when it stops answering, its watches resuming from their last revision.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// The join token tug-scheduler prints (tug::<CA hash>::<secret>).
    #[arg(long)]
    token: Option<String>,
    /// The node's name (default: this host's name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where the agent keeps its state.
    #[arg(long, default_value = "/var/lib/tug-agent")]
    state_dir: PathBuf,
    /// Where the agent keeps what lives only as long as its containers (the runtime's state,
    /// the supervisors' sockets, the bundles): a tmpfs, gone with a reboot as they are.
    #[arg(long, default_value = "/run/tug-agent")]
    run_dir: PathBuf,
    /// Node labels: KEY=VALUE,...
    #[arg(long, default_value = "")]
    labels: String,
    /// Node taints: KEY[=VALUE]:EFFECT,...
    #[arg(long, default_value = "")]
    taints: String,
    /// The node's address on the cluster network (default: the source address of the
    /// default route).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// The network namespace holding the node's interfaces, for several agents on one host
    /// (default: the agent's own).
    #[arg(long)]
    node_netns: Option<PathBuf>,
    /// Where pods' network namespaces are pinned.
    #[arg(long, default_value = "/run/tug/netns")]
    netns_dir: PathBuf,
    /// How pod traffic crosses nodes: auto (host-gw on a shared link, else vxlan), host-gw, vxlan.
    #[arg(long, default_value = "auto")]
    network_backend: String,
    /// The image store.
    #[arg(long, default_value = tug_images::DEFAULT_ROOT)]
    image_root: PathBuf,
    /// A registry (HOST[:PORT]) reached over plain HTTP. Repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Pods' cgroups go here, under the agent's own cgroup.
    #[arg(long, default_value = "tug-pods")]
    cgroup_parent: String,
    /// How often the node's status is written; the lease is renewed twice as often.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    node_status_update_frequency: Duration,
    /// How often every pod is checked without an event.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sync_frequency: Duration,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Remove unused images when the image filesystem is fuller than this (percent; 100:
    /// never)...
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// ...until it is below this.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// Images used (or imported) more recently than this are never collected.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    image_minimum_gc_age: Duration,
    /// Hard eviction thresholds, as kubelet's: below them the node reports MemoryPressure,
    /// DiskPressure or PIDPressure (and takes no new pods); memory's is kept out of
    /// allocatable. Signals: memory.available, nodefs.available (imagefs.available is the
    /// same filesystem here), pid.available; amounts or percentages. A signal left out has
    /// no threshold.
    #[arg(long, default_value = tug_agent::config::DEFAULT_EVICTION_HARD)]
    eviction_hard: String,
    /// How often the node's and containers' resource usage is sampled (for `tug top` and
    /// autoscaling; CPU is the average over this window).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    housekeeping_interval: Duration,
    /// Where `/metrics` (Prometheus) is served, in the node's network namespace: loopback by
    /// default, as kube-proxy's; an empty value turns it off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
    /// The tug-shim binary (default: beside tug-agent).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// How Services are programmed: nftables, iptables (through iptables-restore, for hosts
    /// without nftables), or none (no service proxy on this node).
    #[arg(long, default_value = "nftables", value_parser = ["nftables", "iptables", "none"])]
    proxy_mode: String,
    /// The cluster's pod range (tug-scheduler's --cluster-cidr): traffic to Services from
    /// outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = |s: &str| s.parse::<tug_api::cidr::Cidr4>())]
    cluster_cidr: tug_api::cidr::Cidr4,
    /// The Services' range (tug-scheduler's --service-cluster-ip-range), routed onto the
    /// pod bridge so the node's own clients reach ClusterIPs.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = |s: &str| s.parse::<tug_api::cidr::Cidr4>())]
    service_cluster_ip_range: tug_api::cidr::Cidr4,
    /// The cluster's DNS domain, answered by the DNS server every agent runs on its pod
    /// bridge's address.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The port the built-in Ingress controller (IngressClass tug) serves HTTP on, in the
    /// node's network namespace; 0: none.
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// The port it serves HTTPS on (certificates from the Ingresses' TLS Secrets); 0: none.
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
}

/// The source address of the default route: what the node is reached at.
fn default_ip() -> Result<Ipv4Addr, String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "route", "get", "1.1.1.1"])
        .output()
        .map_err(|e| format!("ip route get: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next().and_then(|a| a.parse().ok()).ok_or_else(|| "ip route get: no src".into());
        }
    }
    // No default route: the first global address of any interface.
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .map_err(|e| format!("ip addr: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .ok_or_else(|| {
            "no default route or global address to take the node's address from: give --node-ip".into()
        })
}

/// How to reach the control plane: its local socket, or a remote URL with a join token.
enum Connection {
    Socket(Option<PathBuf>),
    Remote { url: String, token: String },
}

fn config(a: Args) -> Result<(Config, Connection), String> {
    if a.image_gc_low_threshold > a.image_gc_high_threshold || a.image_gc_high_threshold > 100 {
        return Err("--image-gc-low-threshold must not exceed --image-gc-high-threshold (at most 100)".into());
    }
    let shim = match a.shim {
        Some(s) => s,
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("tug-shim"),
    };
    let node_ip = match a.node_ip {
        Some(ip) => ip,
        None => default_ip()?,
    };
    let cfg = Config {
        node_name: a.node_name.unwrap_or_else(tug_client::join::hostname),
        state_dir: a.state_dir,
        run_dir: a.run_dir,
        labels: parse_labels(&a.labels)?,
        taints: parse_taints(&a.taints)?,
        node_ip,
        node_netns: a.node_netns,
        netns_dir: a.netns_dir,
        backend: a.network_backend.parse().map_err(|e| format!("--network-backend: {e}"))?,
        image_root: a.image_root,
        insecure_registries: a.insecure_registries,
        cgroup_parent: a.cgroup_parent,
        status_frequency: a.node_status_update_frequency,
        sync_frequency: a.sync_frequency,
        max_pods: a.max_pods,
        shim,
        image_gc_high: a.image_gc_high_threshold,
        image_gc_low: a.image_gc_low_threshold,
        image_gc_min_age: a.image_minimum_gc_age,
        proxy_enabled: a.proxy_mode != "none",
        proxy_mode: if a.proxy_mode == "iptables" {
            tug_agent::proxy::Mode::Iptables
        } else {
            tug_agent::proxy::Mode::Nftables
        },
        cluster_cidr: a.cluster_cidr,
        service_cidr: a.service_cluster_ip_range,
        cluster_domain: a.cluster_domain.trim_matches('.').to_ascii_lowercase(),
        eviction: parse_eviction(&a.eviction_hard)?,
        housekeeping_interval: a.housekeeping_interval.max(Duration::from_millis(100)),
        ingress_ports: (a.ingress_http_port, a.ingress_https_port),
        metrics_addr: match a.metrics_bind_address.trim() {
            "" => None,
            addr => Some(
                addr.parse().map_err(|e| format!("--metrics-bind-address {addr:?}: {e} (want IP:PORT)"))?,
            ),
        },
    };
    tug_api::validation::dns1123_subdomain(&cfg.node_name)
        .map_err(|e| format!("--node-name {:?}: {e}", cfg.node_name))?;
    let conn = match a.server {
        Some(url) => Connection::Remote { url, token: a.token.unwrap_or_default() },
        None => Connection::Socket(a.socket),
    };
    Ok((cfg, conn))
}

fn main() -> ExitCode {
    // One log format for the daemons: RFC 3339 time, level, message, on stderr.
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(false).init();
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Args::command();
    let argv = match tug_config::expand(&cmd, std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("tug-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let m = cmd.clone().try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
    let args = Args::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    if args.print_config {
        print!("{}", tug_config::print(&cmd, &m));
        return ExitCode::SUCCESS;
    }
    let (cfg, conn) = match config(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("tug-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // glibc gives every thread that allocates its own arena (up to 8 per core), each keeping
    // freed memory of its own; the agent's threads share two, whose free pages `malloc_trim`
    // returns (the daemon trims every few seconds). With one arena, a burst of 100 starts
    // waited 0.5 s in all on its lock (futex waits in `__lll_lock_wait_private`, perf
    // sched); with two, RSS at 100 pods is the same 28 MiB (`make bench AREA=agent`).
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // Blocking work (container starts, file writes, mounts) runs on at most 64 threads, which
    // do not outlive a burst of starts by long: every thread's stack pages stay resident, also
    // in glibc's cache of freed stacks.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_keep_alive(Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("tug-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let api = match conn {
            Connection::Remote { url, token } => {
                let creds = cfg.state_dir.join("credentials");
                if !creds.join("client.crt").exists() {
                    tug_client::join::join(&url, &token, &cfg.node_name, &creds).await?;
                    tracing::info!("tug-agent: joined {url} as {}", cfg.node_name);
                }
                let tls = tug_client::tls::client_config(&creds).map_err(|e| format!("{e:#}"))?;
                tug_client::Client::tls(&url, tls).map_err(|e| format!("{e:#}"))?
            }
            Connection::Socket(socket) => {
                tug_client::Client::unix(socket.unwrap_or_else(|| PathBuf::from("/run/tug/tug.sock")))
            }
        };
        tug_agent::daemon::run(cfg, api).await
    });
    // Blocking work still running (a DNS socket's read, a start in progress) is abandoned
    // rather than waited for: the containers and their supervisors outlive the agent anyway,
    // and the next agent picks up from what is on disk.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::warn!("tug-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
