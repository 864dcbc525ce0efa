//! `tug-scheduler`: the control plane daemon.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tug_scheduler::api::{self, AppState};
use tug_scheduler::pki::Pki;
use tug_scheduler::store::etcd_store::EtcdStore;
use tug_scheduler::store::redb_store::RedbStore;
use tug_scheduler::store::{Store, StoreError};
use tug_scheduler::tls;

/// jemalloc, not glibc's malloc: under a burst of pods glibc's allocator took a third of the
/// control plane's CPU (its arena locks included). (mimalloc was as fast but kept several
/// times the memory: the runtime's short-lived blocking threads each left their heap behind.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read by it at its start: a thread of its own hands back what bursts
/// freed, within a second (`make bench AREA=scale` measures the resident memory after one).
#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_CONF: AllocatorConf =
    AllocatorConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string for jemalloc to read (`const char *malloc_conf`).
#[repr(transparent)]
struct AllocatorConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static C string, never written: any thread may read it.
unsafe impl Sync for AllocatorConf {}

/// Tug's control plane: the API server and its store.
#[derive(Parser, Debug)]
#[command(name = "tug-scheduler", version = tug_api::VERSION, about, args_override_self = true)]
struct Flags {
    /// A TOML file of settings: the keys are these flags' long names; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration (flags, file and defaults) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// The Unix socket users and local agents connect to.
    #[arg(long, default_value = "/run/tug/tug.sock")]
    socket: PathBuf,
    /// Group that may use the socket (mode 0660); default: root's.
    #[arg(long)]
    socket_group: Option<String>,
    /// Where the embedded store keeps its data.
    #[arg(long, default_value = "/var/lib/tug")]
    data_dir: PathBuf,
    /// The store backend.
    #[arg(long, value_enum, default_value_t = Backend::Redb)]
    store: Backend,
    /// etcd endpoints (with --store etcd), comma-separated: http://10.0.0.1:2379,...
    #[arg(long)]
    etcd_endpoints: Option<String>,
    /// The key prefix Tug's objects live under in etcd.
    #[arg(long, default_value = "/tug/")]
    etcd_prefix: String,
    /// A file (mode 0600) holding a secret every replica has: the cluster CA's key and the
    /// join token are sealed with it in the store. Required with --store etcd, which every
    /// replica and every etcd backup can read. Make one with: head -c 32 /dev/urandom | base64
    #[arg(long)]
    pki_secret_file: Option<PathBuf>,
    /// TCP address for agents on other hosts and remote users (TLS), e.g. 0.0.0.0:6443.
    #[arg(long)]
    listen: Option<String>,
    /// The address pods reach the API at (the `kubernetes` Service's endpoint); default:
    /// the --listen address when it is a routable one.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Events kept for watches from a past revision before compaction.
    #[arg(long, default_value_t = 10_000)]
    history: u64,
    /// The pods' address range; each node that registers gets a block of it.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: tug_api::cidr::Cidr4,
    /// The prefix length of each node's block of --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How pods fill nodes: least-allocated (spread) or most-allocated (bin packing).
    #[arg(long, default_value = "least-allocated")]
    scoring_strategy: tug_scheduler::sched::engine::Strategy,
    /// How long a node's lease may go unrenewed before the node is NotReady and tainted.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// tolerationSeconds for the node.kubernetes.io/unreachable NoExecute taint, for pods
    /// that name none: how long they stay on a silent node before they are evicted.
    #[arg(long, default_value_t = 30)]
    default_unreachable_toleration_seconds: u64,
    /// The same for node.kubernetes.io/not-ready (the agent reports the node not ready).
    #[arg(long, default_value_t = 30)]
    default_not_ready_toleration_seconds: u64,
    /// The Services' virtual addresses (ClusterIPs).
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cluster_ip_range: tug_api::cidr::Cidr4,
    /// The ports NodePort Services are given, as FIRST-LAST.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),
    /// Addresses LoadBalancer Services are given (a CIDR or FIRST-LAST; repeatable), before
    /// those of the `tug.io/v1` AddressPools. With none at all, a LoadBalancer Service's
    /// addresses are the Ready nodes' own.
    #[arg(long, value_parser = parse_pool_range)]
    load_balancer_pool: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    /// How often the reconcilers look at every object even without changes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    resync_period: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is evaluated (and the nodes' usage gathered).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// Who may do what: `Node,RBAC` (the node authorizer, then Roles and bindings;
    /// `system:masters` may do anything) or `AlwaysAllow` (every authenticated request).
    #[arg(long, default_value = "Node,RBAC", value_parser = ["Node,RBAC", "RBAC,Node", "AlwaysAllow"])]
    authorization_mode: String,
    /// Where the audit log goes: JSON lines, `audit.k8s.io/v1` Events (off without it).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// The audit policy (`audit.k8s.io/v1` Policy): the level of each request, the first
    /// matching rule's (None, Metadata, Request). Default: Metadata for every request.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// The audit log's size, in MiB, at which it is rotated.
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept (PATH.1 is the newest).
    #[arg(long, default_value_t = 10)]
    audit_log_maxbackup: u32,
    /// Encryption at rest: an `EncryptionConfiguration` (apiserver.config.k8s.io/v1; aesgcm,
    /// aescbc, secretbox, identity providers, the first writes). `make run` makes one.
    #[arg(long)]
    encryption_config: Option<PathBuf>,
    /// The Pod Security level (privileged, baseline, restricted) enforced, warned of and
    /// audited in namespaces without `pod-security.kubernetes.io/*` labels (kube-system and
    /// tug-system excepted).
    #[arg(long, default_value = "baseline", value_parser = ["privileged", "baseline", "restricted"])]
    pod_security_default: String,
    /// The audiences service account tokens are accepted for (repeatable; the first is what
    /// a token asked without one gets).
    #[arg(long = "api-audiences", default_value = "https://kubernetes.default.svc.cluster.local")]
    api_audiences: Vec<String>,
    /// The seats all priority levels share (Kubernetes' API priority and fairness): how
    /// many requests run at once, `system:masters`' excepted, each level a share of them
    /// (`node-high` 40, `system` 30, `workload-high` 40, `workload-low` 100,
    /// `global-default` 20, `catch-all` 5); the rest wait their turn, up to 60 s, then 429.
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_requests_inflight: u16,
    /// The embedded store's page cache, in MiB (memory the control plane keeps for reads).
    #[arg(long = "store-cache-mib", default_value_t = 16)]
    store_cache_mib: usize,
    /// A request's head must be complete this long after its first byte, or the connection
    /// is closed (slow clients hold nothing for long).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_header_timeout: std::time::Duration,
    /// With several replicas: how long a follower waits, from the leader Lease's last
    /// change it saw, before it takes over the controllers.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// How long a leader keeps running the controllers without renewing its Lease (shorter
    /// than the lease duration, so it stops before another may start).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    leader_elect_renew_deadline: std::time::Duration,
    /// How often the leader renews and followers look.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    leader_elect_retry_period: std::time::Duration,
    /// A connection waiting this long for its next request is closed.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    idle_timeout: std::time::Duration,
}

fn parse_cidr(s: &str) -> Result<tug_api::cidr::Cidr4, String> {
    s.parse()
}

fn parse_pool_range(s: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr), String> {
    tug_api::kinds::lb::parse_range(s)
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 30000-32767"))?;
    let a: u16 = a.trim().parse().map_err(|_| format!("{s:?}: {a:?} is not a port"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("{s:?}: {b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: FIRST must be between 1 and LAST"));
    }
    Ok((a, b))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Redb,
    Etcd,
}

/// The flags, with the `--config` file's settings under them.
fn flags() -> Result<Flags, std::process::ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Flags::command();
    let argv = match tug_config::expand(&cmd, std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return Err(std::process::ExitCode::from(2));
        }
    };
    let m = cmd.clone().try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
    let flags = Flags::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    if flags.print_config {
        print!("{}", tug_config::print(&cmd, &m));
        return Err(std::process::ExitCode::SUCCESS);
    }
    Ok(flags)
}

fn main() -> std::process::ExitCode {
    // One log format for the daemons: RFC 3339 time, level, message, on stderr.
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(false).init();
    let flags = match flags() {
        Ok(f) => f,
        Err(code) => return code,
    };
    match run(flags) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The threads the runtime runs blocking sections on (requests' store calls, reconciles)
/// beside the seats of `--max-requests-inflight`: an exempt request and the controllers
/// always find one, however busy the queued levels are.
const SPARE_BLOCKING_THREADS: usize = 32;

fn run(flags: Flags) -> anyhow::Result<()> {
    election(&flags).check().map_err(|e| anyhow::anyhow!(e))?;
    // Every agent holds watches and a tunnel open: thousands of nodes need more descriptors
    // than the usual soft limit of 1024 (the hard limit is the service manager's to set).
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let mut store = open_store(&flags)?;
    let encryption = match &flags.encryption_config {
        Some(path) => Some(Arc::new(
            tug_scheduler::store::encrypted::Config::load(path)
                .map_err(|e| anyhow::anyhow!("--encryption-config {e}"))?,
        )),
        None => None,
    };
    if let Some(config) = &encryption {
        let raw = store.clone();
        store = Arc::new(tug_scheduler::store::encrypted::EncryptedStore::shared(store, config.clone()));
        // The cluster CA's record, written in clear before encryption was configured, is
        // sealed now (the PKI dir keeps its own 0600 copy).
        let key = tug_scheduler::pki::STORE_KEY;
        if config.covers(key) {
            if let Some(r) = raw.get(key)?.filter(|r| r.object.get("encrypted").is_none()) {
                store.update(key, r.object, Some(r.revision))?;
            }
        }
    }
    ENCRYPTION.set(encryption).ok();
    let store: Arc<dyn Store> = Arc::new(tug_scheduler::metrics::Measured(store));
    api::bootstrap(store.as_ref()).context("creating the default namespaces")?;
    // Requests run their store calls on the blocking threads: with tokio's default of 512,
    // 500 nodes registering at once left 512 threads alive, each with its stack and allocator
    // cache resident. The priority levels' seats bound what requests take of them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(usize::from(flags.max_requests_inflight) + SPARE_BLOCKING_THREADS)
        .enable_all()
        .build()?;
    let served = runtime.block_on(serve(flags, store));
    // Connection tasks still running are dropped with the runtime, and the store with them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

fn election(flags: &Flags) -> tug_scheduler::controllers::Timing {
    tug_scheduler::controllers::Timing {
        lease: flags.leader_elect_lease_duration,
        renew_deadline: flags.leader_elect_renew_deadline,
        retry: flags.leader_elect_retry_period,
    }
}

/// What `--encryption-config` loaded, for the API's re-encryption.
static ENCRYPTION: std::sync::OnceLock<Option<Arc<tug_scheduler::store::encrypted::Config>>> =
    std::sync::OnceLock::new();

fn open_store(flags: &Flags) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match flags.store {
        Backend::Redb => {
            if flags.etcd_endpoints.is_some() {
                bail!("--etcd-endpoints needs --store etcd");
            }
            // The store holds every Secret: root alone reads it. Mended on start, and said.
            let said = tug_config::private::dir(&flags.data_dir, 0o700)
                .map_err(|e| anyhow::anyhow!("--data-dir: {e}"))?;
            let db = flags.data_dir.join("store.redb");
            let fresh = !db.exists();
            // 1,024 live events per resource: a watcher that falls further behind catches up
            // from the store's history (each slot holds an event's object until overwritten).
            let store = RedbStore::open_with_cache(&db, 1024, flags.store_cache_mib << 20)
                .context("opening the store")?;
            let said_db = tug_config::private::file(&db, 0o600).map_err(|e| anyhow::anyhow!(e))?;
            // A store made just now got the umask's mode: set, not worth saying.
            for s in said.iter().chain(said_db.iter().filter(|_| !fresh)) {
                tracing::info!("tug-scheduler: {s}");
            }
            Arc::new(store)
        }
        Backend::Etcd => {
            let eps = flags
                .etcd_endpoints
                .as_deref()
                .context("--store etcd needs --etcd-endpoints URL[,URL...]")?;
            let eps: Vec<String> =
                eps.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
            Arc::new(EtcdStore::connect(&eps, &flags.etcd_prefix, 4096).context("connecting to etcd")?)
        }
    })
}

async fn serve(flags: Flags, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let sealer = match (&flags.pki_secret_file, &flags.store) {
        (Some(f), _) => Some(
            tug_scheduler::seal::Sealer::from_file(f)
                .map_err(|e| anyhow::anyhow!("--pki-secret-file {e}"))?,
        ),
        (None, Backend::Etcd) => anyhow::bail!(
            "--store etcd needs --pki-secret-file FILE: the cluster CA's key is sealed with it in etcd, which every replica and every etcd backup can read (make one with: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE; the same file on every replica)"
        ),
        (None, Backend::Redb) => None,
    };
    let listener = bind(&flags.socket, flags.socket_group.as_deref())?;
    let backend = match flags.store {
        Backend::Redb => flags.data_dir.join("store.redb").display().to_string(),
        Backend::Etcd => format!(
            "etcd {} under {}",
            flags.etcd_endpoints.as_deref().unwrap_or_default(),
            flags.etcd_prefix
        ),
    };
    tracing::info!("tug-scheduler: serving on {} (store {backend})", flags.socket.display());
    let compactor = tokio::spawn(compact_forever(store.clone(), flags.history));
    let pki = Arc::new(
        Pki::load_shared(store.as_ref(), &flags.data_dir.join("pki"), sealer.as_ref())
            .context("loading the cluster CA")?,
    );
    // Every namespace's default service account and kube-root-ca.crt (older stores had none).
    tug_scheduler::auth::serviceaccounts::set_ca(&pki.ca_pem);
    {
        let (namespaces, _) = store.list("/namespaces/").context("listing namespaces")?;
        for n in namespaces {
            let name = n.object["metadata"]["name"].as_str().unwrap_or_default();
            tug_scheduler::auth::serviceaccounts::ensure_defaults(store.as_ref(), name)
                .with_context(|| format!("namespace {name}: its default service account"))?;
        }
    }
    if flags.node_cidr_mask_size < flags.cluster_cidr.prefix || flags.node_cidr_mask_size > 30 {
        anyhow::bail!(
            "--node-cidr-mask-size {}: must be between the cluster CIDR's /{} and /30",
            flags.node_cidr_mask_size,
            flags.cluster_cidr.prefix
        );
    }
    let node_cidrs = api::NodeCidrs::new(flags.cluster_cidr, flags.node_cidr_mask_size);
    // The scheduler and the controllers read from one in-memory copy of the store, fed by a
    // watch. The API reads the store itself; on etcd its watches come from the copy.
    let cached = tug_scheduler::store::cache::Cached::start(store.clone());
    let watches =
        matches!(flags.store, Backend::Etcd).then(|| Arc::new(cached.serving_watches()) as Arc<dyn Store>);
    let for_lists = cached.clone();
    let copy: Arc<dyn Store> = Arc::new(cached);
    let store_for_kubernetes = store.clone();
    let store_for_controllers = copy;
    let services =
        api::services::ServiceRanges::new(flags.service_cluster_ip_range, flags.service_node_port_range);
    if let Some(level) = tug_scheduler::auth::podsecurity::Level::parse(&flags.pod_security_default) {
        tug_scheduler::auth::podsecurity::set_default(level);
    }
    let audit = match &flags.audit_log {
        None => None,
        Some(path) => {
            let policy = match &flags.audit_policy_file {
                None => tug_scheduler::auth::audit::Policy::default(),
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("--audit-policy-file {}", f.display()))?;
                    tug_scheduler::auth::audit::Policy::parse(&text)
                        .map_err(|e| anyhow::anyhow!("--audit-policy-file {}: {e}", f.display()))?
                }
            };
            Some(Arc::new(
                tug_scheduler::auth::audit::Log::open(
                    path.clone(),
                    flags.audit_log_maxsize,
                    flags.audit_log_maxbackup,
                    policy,
                )
                .map_err(|e| anyhow::anyhow!("--audit-log {e}"))?,
            ))
        }
    };
    let auth = (flags.authorization_mode != "AlwaysAllow")
        .then(|| Arc::new(tug_scheduler::auth::Authorizer::new(store.clone())));
    let rbac_follower = auth.as_ref().map(|a| tokio::spawn(a.rbac.clone().follow()));
    let state = Arc::new(AppState {
        store,
        watches,
        // On the embedded store only, for now: on etcd a consistent read from the copy costs
        // a round trip to etcd for its revision and may wait for a copy whose etcd watch lags
        // (etcd under TCG answers in seconds); the store's range read is kept there.
        copy: matches!(flags.store, Backend::Redb).then_some(for_lists),
        pki: Some(pki.clone()),
        node_cidrs,
        services,
        tunnels: Default::default(),
        auth,
        encryption: ENCRYPTION.get().cloned().flatten(),
        audit,
        tokens: Some(Arc::new(tug_scheduler::auth::tokens::Signer::new(&pki.token_key()))),
        audiences: flags.api_audiences.clone(),
        flow: api::flow::Flow::new(usize::from(flags.max_requests_inflight)),
    });
    let app = api::router(state.clone());
    let usage = tug_scheduler::controllers::hpa::UsageCache::default();
    let hpa_sync = flags.horizontal_pod_autoscaler_sync_period.max(std::time::Duration::from_secs(1));
    let dial_state = state.clone();
    let dialer: tug_scheduler::controllers::analysis::Dialer = Arc::new(move |node, pod, port| {
        let st = dial_state.clone();
        Box::pin(async move {
            let (ns, name, uid) = pod;
            let c = tug_scheduler::api::tunnel::dial_pod(&st, &node, (&ns, &name, &uid), port).await?;
            Ok(Box::new(c) as Box<dyn tug_scheduler::controllers::analysis::Io>)
        })
    });
    let usage_refresher = tokio::spawn(tug_scheduler::api::metrics::refresh_usage(
        state,
        usage.clone(),
        hpa_sync.min(std::time::Duration::from_secs(5)),
    ));
    let election = election(&flags);
    let controllers = tug_scheduler::controllers::spawn(
        store_for_controllers,
        &tug_scheduler::controllers::Settings {
            resync: flags.resync_period,
            node_monitor_grace: flags.node_monitor_grace_period,
            default_unreachable_toleration: std::time::Duration::from_secs(
                flags.default_unreachable_toleration_seconds,
            ),
            default_not_ready_toleration: std::time::Duration::from_secs(
                flags.default_not_ready_toleration_seconds,
            ),
            hpa_sync,
            usage,
            dialer: Some(tug_scheduler::controllers::DebugDialer(dialer)),
            lb_pool: (!flags.load_balancer_pool.is_empty()).then(|| {
                tug_scheduler::controllers::loadbalancer::Pool {
                    name: "--load-balancer-pool".into(),
                    ranges: flags.load_balancer_pool.clone(),
                    auto: true,
                }
            }),
            scoring_strategy: flags.scoring_strategy,
        },
        &flags.socket.display().to_string(),
        election,
    );
    let timeouts =
        tug_scheduler::conn::Timeouts { header: flags.request_header_timeout, idle: flags.idle_timeout };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The `kubernetes` Service in `default`: how pods reach the API (with their tokens).
    let mut sans = flags.tls_sans.clone();
    if let Some(addr) = &flags.listen {
        let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(6443);
        let listen_ip = addr.rsplit_once(':').and_then(|(h, _)| h.parse::<std::net::IpAddr>().ok());
        let advertise =
            flags.advertise_address.or(listen_ip.filter(|ip| !ip.is_unspecified() && !ip.is_loopback()));
        match advertise {
            Some(ip) => {
                let first = flags.service_cluster_ip_range.network.to_bits() + 1;
                let wanted = std::net::Ipv4Addr::from_bits(first);
                match kubernetes_service(&app, store_for_kubernetes.as_ref(), wanted, ip, port).await {
                    Ok(cluster_ip) => {
                        sans.push(cluster_ip);
                        sans.push(ip.to_string());
                        for n in [
                            "kubernetes",
                            "kubernetes.default",
                            "kubernetes.default.svc",
                            "kubernetes.default.svc.cluster.local",
                        ] {
                            sans.push(n.to_string());
                        }
                    }
                    Err(e) => tracing::warn!("tug-scheduler: the kubernetes Service: {e}"),
                }
            }
            None => tracing::warn!(
                "tug-scheduler: no kubernetes Service for pods: --listen {addr} is not an address pods reach; pass --advertise-address IP"
            ),
        }
    }
    let tls = match &flags.listen {
        Some(addr) => Some(tokio::spawn(
            serve_tls(addr.clone(), sans, pki.clone(), app.clone(), timeouts, stop_rx.clone()).await?,
        )),
        None => None,
    };
    // On SIGTERM the server stops accepting and lets requests finish, but watches and the
    // agents' tunnels never end by themselves: after the grace they are closed, so the
    // process exits (and releases the store) in time for its service manager.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = {
        let (stopping, signal) = (stopping.clone(), shutdown());
        async move {
            signal.await;
            stopping.notify_one();
        }
    };
    let server = serve_socket(listener, app, timeouts, stop_tx, signalled);
    tokio::select! {
        () = server => {}
        () = async { stopping.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::info!("tug-scheduler: connections still open {} s after the signal: closing them", SHUTDOWN_GRACE.as_secs());
        }
    }
    compactor.abort();
    usage_refresher.abort();
    if let Some(f) = rbac_follower {
        f.abort();
    }
    controllers.abort();
    if let Some(t) = tls {
        t.abort();
    }
    let _ = std::fs::remove_file(&flags.socket);
    tracing::info!("tug-scheduler: stopped");
    Ok(())
}

/// Serves the Unix socket until `signalled`; then stops accepting, lets each connection
/// finish the request it serves, and returns when all have closed.
async fn serve_socket(
    listener: tokio::net::UnixListener,
    app: axum::Router,
    timeouts: tug_scheduler::conn::Timeouts,
    stop: tokio::sync::watch::Sender<bool>,
    signalled: impl std::future::Future<Output = ()>,
) {
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(signalled);
    loop {
        tokio::select! {
            () = &mut signalled => break,
            accepted = listener.accept() => {
                let Ok((io, _)) = accepted else { continue };
                // The peer's credentials decide who it is (root: system:admin).
                let Ok(cred) = io.peer_cred() else { continue };
                let (app, rx) = (app.clone(), stop.subscribe());
                conns.spawn(async move {
                    let user = tug_scheduler::auth::authn::from_unix(cred.uid(), cred.gid());
                    let peer = tug_scheduler::tls::Peer::User(std::sync::Arc::new(user));
                    tug_scheduler::conn::serve(io, app, peer, None, timeouts, rx).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while conns.join_next().await.is_some() {}
}

/// Binds the socket: a stale socket file (nobody answers) is replaced; a live one is an error.
fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{}: another tug-scheduler is already serving on this socket", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)?
            .with_context(|| format!("--socket-group {g}: no such group"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// Binds the TLS listener and returns its accept loop, after printing the join token.
/// Makes the `kubernetes` Service (ClusterIP `wanted` when free, port 443 → `port`, no
/// selector) through the API, and points its Endpoints at `ip:port`. Its ClusterIP.
async fn kubernetes_service(
    app: &axum::Router,
    store: &dyn Store,
    wanted: std::net::Ipv4Addr,
    ip: std::net::IpAddr,
    port: u16,
) -> anyhow::Result<String> {
    use tower::ServiceExt;
    let service = |cluster_ip: Option<String>| {
        let mut spec = serde_json::json!({"type": "ClusterIP", "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]});
        if let Some(c) = cluster_ip {
            spec["clusterIP"] = c.into();
        }
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": spec})
    };
    let path = "/api/v1/namespaces/default/services";
    for body in [service(Some(wanted.to_string())), service(None)] {
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))?;
        let resp = app.clone().oneshot(req).await?;
        // Made, or there already: either way the Service is read below.
        if resp.status().is_success() || resp.status() == axum::http::StatusCode::CONFLICT {
            break;
        }
    }
    let svc = store.get("/services/default/kubernetes")?.context("the kubernetes Service was not made")?;
    let cluster_ip = svc.object["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
    let mut endpoints = serde_json::json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    let key = "/endpoints/default/kubernetes";
    // Every replica adds its own address beside the others' (they may start together).
    for _ in 0..10 {
        let written = match store.get(key)? {
            Some(cur) => {
                let mut next = cur.object.clone();
                let ours = endpoints["subsets"][0]["addresses"][0].clone();
                let same_port = next["subsets"][0]["ports"] == endpoints["subsets"][0]["ports"];
                match next["subsets"][0]["addresses"].as_array_mut() {
                    Some(addrs) if same_port => {
                        if addrs.contains(&ours) {
                            break;
                        }
                        addrs.push(ours);
                    }
                    _ => next["subsets"] = endpoints["subsets"].clone(),
                }
                store.update(key, next, Some(cur.revision))
            }
            None => {
                tug_scheduler::api::objects::on_create(
                    &mut endpoints,
                    &uuid::Uuid::new_v4().to_string(),
                    &api::now(),
                );
                store.create(key, endpoints.clone())
            }
        };
        match written {
            Ok(_) => break,
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!("tug-scheduler: kubernetes Service {cluster_ip}:443 -> {ip}:{port}");
    Ok(cluster_ip)
}

async fn serve_tls(
    addr: String,
    sans: Vec<String>,
    pki: Arc<Pki>,
    app: axum::Router,
    timeouts: tug_scheduler::conn::Timeouts,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("--listen {addr}"))?;
    let local = listener.local_addr()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = nix::unistd::gethostname() {
        names.push(h.to_string_lossy().into_owned());
    }
    if !local.ip().is_unspecified() {
        names.push(local.ip().to_string());
    }
    names.extend(sans);
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let config = tls::server_config(&pki, &names).context("making the serving certificate")?;
    tracing::info!("tug-scheduler: serving TLS on {local} for {}", names.join(", "));
    tracing::info!("tug-scheduler: join token: {}", pki.join_token());
    Ok(tls::serve(listener, config, app, timeouts, stop))
}

async fn compact_forever(store: Arc<dyn Store>, history: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Ok(rev) = store.revision() {
            if rev > history {
                let _ = store.compact(rev - history);
            }
        }
    }
}

/// How long open connections (watches, agents' tunnels) may stay after SIGTERM: with the
/// runtime's own second, the process is gone within 10 s.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future
/// is first polled: a signal that arrives before then must not kill the process outright.
fn shutdown() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
