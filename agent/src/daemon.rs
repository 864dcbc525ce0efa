//! The agent's main loop: register the node, keep its lease and status fresh, watch the pods
//! bound to it and hand each to its worker, keep routes to the other nodes, collect images.

use crate::api;
use crate::config::Config;
use crate::network::cidr::Cidr4;
use crate::network::node::{NodeConfig, NodeNetwork};
use crate::network::routes::Peer;
use crate::node;
use crate::pods::{self, Ctx, Msg, record::PodRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tug_client::Client;

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "tug-node-lease";

/// Registers (or re-registers) the node; returns its pod CIDR.
pub async fn register(api: &Client, cfg: &Config) -> Result<Cidr4, String> {
    let facts = node::facts(&cfg.state_dir);
    let now = pods::rfc3339(SystemTime::now());
    let obj = node::node_object(cfg, &facts, &now);
    let created = match api::create(api, "/api/v1/nodes", &obj).await {
        Ok(v) => v,
        Err(e) if api::is_conflict(&e) => {
            // Registered before: the lease first, so the node controller never sees a fresh
            // Ready beside a stale lease (a spurious NodeNotReady and unreachable taints).
            renew_lease(api, &cfg.node_name, cfg.status_frequency * 4).await?;
            // Keep its spec (pod CIDR, cordon), refresh labels, and replace only the taints
            // the agent set itself.
            let path = format!("/api/v1/nodes/{}", cfg.node_name);
            let mut cur = api::get(api, &path).await?.ok_or("the node vanished while registering")?;
            for (k, v) in obj["metadata"]["labels"].as_object().into_iter().flatten() {
                cur["metadata"]["labels"][k] = v.clone();
            }
            let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
            let previous: Vec<Value> = cur["metadata"]["annotations"][node::AGENT_TAINTS]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let taints =
                node::merge_taints(&list(&cur["spec"]["taints"]), &previous, &list(&obj["spec"]["taints"]));
            cur["spec"]["taints"] = taints.into();
            cur["metadata"]["annotations"][node::AGENT_TAINTS] =
                obj["metadata"]["annotations"][node::AGENT_TAINTS].clone();
            api::put(api, &path, &cur).await.map_err(|e| format!("updating node {}: {e}", cfg.node_name))?
        }
        Err(e) => return Err(format!("registering node {}: {e}", cfg.node_name)),
    };
    put_node_status(api, cfg).await?;
    let cidr = created["spec"]["podCIDR"]
        .as_str()
        .ok_or_else(|| format!("node {} has no spec.podCIDR from the control plane", cfg.node_name))?;
    cidr.parse().map_err(|e| format!("node {}: spec.podCIDR {cidr:?}: {e}", cfg.node_name))
}

/// Writes the node's status (capacity, conditions, addresses, info).
pub async fn put_node_status(api: &Client, cfg: &Config) -> Result<(), String> {
    let path = format!("/api/v1/nodes/{}", cfg.node_name);
    for _ in 0..3 {
        let mut cur =
            api::get(api, &path).await?.ok_or_else(|| format!("node {} is not registered", cfg.node_name))?;
        let facts = node::facts(&cfg.state_dir);
        let now = pods::rfc3339(SystemTime::now());
        let mut status = node::node_status(cfg, &facts, &now);
        // A condition keeps its transition time while its status stays the same.
        for c in status["conditions"].as_array_mut().into_iter().flatten() {
            let prev = cur["status"]["conditions"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["type"] == c["type"]).cloned());
            if let Some(p) = prev
                && p["status"] == c["status"]
                && let Some(t) = p.get("lastTransitionTime")
            {
                c["lastTransitionTime"] = t.clone();
            }
        }
        cur["status"] = status;
        match api::put(api, &format!("{path}/status"), &cur).await {
            Ok(_) => return Ok(()),
            Err(e) if api::is_conflict(&e) => continue,
            Err(e) => return Err(format!("node {} status: {e}", cfg.node_name)),
        }
    }
    Err(format!("node {} status: kept conflicting", cfg.node_name))
}

/// Renews node `node`'s Lease (creating it, and its namespace, the first time).
pub async fn renew_lease(api: &Client, node: &str, duration: Duration) -> Result<(), String> {
    let path =
        api::core_path(LEASE_NAMESPACE, "leases", node).replace("/api/v1/", "/apis/coordination.k8s.io/v1/");
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let spec = json!({
        "holderIdentity": node,
        "leaseDurationSeconds": duration.as_secs(),
        "renewTime": now,
    });
    // The Lease as last written (kubelet's habit): one PUT per renewal; a conflict or a Lease
    // gone reads it again.
    static LAST: std::sync::Mutex<Option<std::collections::HashMap<String, Value>>> =
        std::sync::Mutex::new(None);
    let remember = |lease: Option<Value>| {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let map = last.get_or_insert_with(Default::default);
        match lease {
            Some(l) => map.insert(node.to_string(), l),
            None => map.remove(node),
        };
    };
    let cached = LAST.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(node).cloned());
    if let Some(mut lease) = cached {
        lease["spec"] = spec.clone();
        match api::put(api, &path, &lease).await {
            Ok(written) => {
                remember(Some(written));
                return Ok(());
            }
            Err(e) if api::is_conflict(&e) || api::is_not_found(&e) => remember(None),
            Err(e) => return Err(format!("renewing lease: {e}")),
        }
    }
    match api::get(api, &path).await? {
        Some(mut lease) => {
            lease["spec"] = spec;
            let written = api::put(api, &path, &lease).await.map_err(|e| format!("renewing lease: {e}"))?;
            remember(Some(written));
            Ok(())
        }
        None => {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE}});
            // The control plane makes it; a node may not create namespaces (403) — only an
            // older control plane lacks it.
            match api::create(api, "/api/v1/namespaces", &ns).await {
                Ok(_) => {}
                Err(e) if api::is_conflict(&e) => {}
                Err(tug_client::CallError::Server(s)) if s.code == 403 => {}
                Err(e) => return Err(format!("creating namespace {LEASE_NAMESPACE}: {e}")),
            }
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
                "spec": spec,
            });
            let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases");
            match api::create(api, &collection, &lease).await {
                Ok(_) => Ok(()),
                Err(e) if api::is_conflict(&e) => Ok(()),
                Err(e) => Err(format!("creating lease: {e}")),
            }
        }
    }
}

/// Routes to every other node's pods.
async fn sync_peers(api: &Client, cfg: &Config, net: &NodeNetwork) -> Result<(), String> {
    let list = api.get("/api/v1/nodes").await.map_err(|e| e.to_string())?;
    let mut peers = Vec::new();
    for n in list["items"].as_array().into_iter().flatten() {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        if name == cfg.node_name {
            continue;
        }
        let cidr = n["spec"]["podCIDR"].as_str().and_then(|c| c.parse::<Cidr4>().ok());
        let ip = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str()?.parse().ok());
        if let (Some(pod_cidr), Some(address)) = (cidr, ip) {
            peers.push(Peer { name: name.to_string(), address, pod_cidr });
        }
    }
    net.sync_routes(&peers).await.map(drop)
}

type Workers = HashMap<String, mpsc::UnboundedSender<Msg>>;

/// What the pod watch reports to the main loop.
enum Event {
    /// A message for the worker of this pod uid.
    Pod(String, Msg),
    /// A fresh list: every pod uid bound to this node right now.
    Listed(Vec<String>),
}

/// One look at the node's pressure: the pod to evict and why, when a hard threshold is
/// crossed (see [`crate::eviction`]).
async fn eviction_pass(api: &Client, cfg: &Config, ctx: &Ctx) -> Option<(String, String)> {
    let dir = cfg.state_dir.clone();
    let facts = tokio::task::spawn_blocking(move || node::facts(&dir)).await.ok()?;
    let signal = crate::eviction::signal(&facts, &cfg.eviction)?;
    let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", cfg.node_name);
    let list = api.get(&path).await.ok()?;
    let usage = ctx.stats.summary().map(|s| s.pods).unwrap_or_default();
    let candidates: Vec<crate::eviction::Candidate> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let (ns, name) = (
                p["metadata"]["namespace"].as_str().unwrap_or("default"),
                p["metadata"]["name"].as_str().unwrap_or(""),
            );
            let used = usage.iter().find(|u| u.namespace == ns && u.name == name);
            let containers = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let cname = c["name"].as_str().unwrap_or_default().to_string();
                    let in_use = used
                        .and_then(|u| u.containers.iter().find(|x| x.name == cname))
                        .map_or(0, |x| x.usage.memory_working_set_bytes);
                    let requested = c["resources"]["requests"]["memory"]
                        .as_str()
                        .and_then(|q| tug_api::quantity::Quantity::parse(q).ok())
                        .and_then(|q| u64::try_from(q.value()).ok())
                        .unwrap_or(0);
                    (cname, in_use, requested)
                })
                .collect();
            crate::eviction::Candidate {
                uid: p["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                priority: p["spec"]["priority"].as_i64().unwrap_or(0),
                containers,
            }
        })
        .collect();
    let chosen = crate::eviction::choose(&signal, &candidates)?;
    tracing::warn!("tug-agent: evicting pod {}: {}", chosen.0, chosen.1);
    // Kubernetes' signal names: memory.available, nodefs.available.
    let name = if signal.resource == "memory" { "memory.available" } else { "nodefs.available" };
    crate::metrics::get().evictions.get_or_create(&tug_metrics::labels([("eviction_signal", name)])).inc();
    Some(chosen)
}

fn send(ctx: &Arc<Ctx>, workers: &mut Workers, uid: &str, msg: Msg) {
    if let Some(tx) = workers.get(uid) {
        match tx.send(msg) {
            Ok(()) => return,
            Err(mpsc::error::SendError(m)) => {
                workers.remove(uid);
                // The worker ended (its pod was torn down); only a live pod starts a new one.
                if !matches!(m, Msg::Update(Some(_))) {
                    return;
                }
                spawn_worker(ctx, workers, uid, m);
            }
        }
        return;
    }
    if matches!(msg, Msg::Update(None)) && !ctx.cfg.pods_dir().join(uid).exists() {
        return;
    }
    spawn_worker(ctx, workers, uid, msg);
}

fn spawn_worker(ctx: &Arc<Ctx>, workers: &mut Workers, uid: &str, first: Msg) {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(first);
    workers.insert(uid.to_string(), tx.clone());
    tokio::spawn(pods::worker(Arc::clone(ctx), uid.to_string(), rx, tx));
}

fn parse_pod(v: &Value) -> Option<Box<tug_api::kinds::pod::Pod>> {
    match tug_api::from_value_ref(v) {
        Ok(p) => Some(Box::new(p)),
        Err(e) => {
            tracing::warn!("tug-agent: skipping pod {}: {e}", v["metadata"]["name"]);
            None
        }
    }
}

/// Every few seconds, gives the allocator's free pages back to the kernel. glibc returns
/// freed memory only from the top of the main heap: what a burst of pod starts allocated on
/// the worker threads' arena stays resident after it, as much as the agent's steady needs.
async fn trim_heap() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases free memory; any thread may call it.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Moves a file an older agent kept in its state directory to where this one keeps it, unless
/// it is there already. A copy, not a rename: the run directory is another filesystem. (An
/// old file left behind is harmless: the new one wins from then on.)
fn move_old(old: &Path, new: &Path) -> Result<(), String> {
    if !old.exists() || new.exists() {
        return Ok(());
    }
    new.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::copy(old, new))
        .map_err(|e| format!("moving {} to {}: {e}", old.display(), new.display()))?;
    let _ = std::fs::remove_file(old);
    Ok(())
}

/// An agent that kept the pods' records in its state directory left them there: they move to
/// the run directory (the pods' `/etc` files stay where their containers mount them from, and
/// go with the pod).
fn move_old_records(cfg: &Config) {
    for e in std::fs::read_dir(cfg.volumes_dir()).into_iter().flatten().flatten() {
        let new = cfg.pods_dir().join(e.file_name()).join("record.json");
        if let Err(err) = move_old(&e.path().join("record.json"), &new) {
            tracing::warn!("tug-agent: {err}");
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT; the containers stay up.
pub async fn run(cfg: Config, api: Client) -> Result<(), String> {
    // Root-only: pods' volumes (secrets among them), logs, bundles whose environment carries
    // Secret values, image layers with setuid files. Mended on every start, and said.
    for d in [&cfg.state_dir, &cfg.run_dir, &cfg.image_root] {
        if let Some(said) = tug_config::private::dir(d, 0o700)? {
            tracing::info!("tug-agent: {said}");
        }
    }
    for d in [cfg.pods_dir(), cfg.volumes_dir(), cfg.logs_dir(), cfg.supervisors(), cfg.bundles()] {
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    // A directory per pod comes and goes in each: spread over the disk (see the function).
    tug_images::store::spread_subdirs(&cfg.logs_dir());
    tug_images::store::spread_subdirs(&cfg.volumes_dir());
    move_old_records(&cfg);
    let pods_cgroup = crate::cgroup::place_self(&cfg.cgroup_parent)?;
    let pod_cidr = register(&api, &cfg).await?;
    tracing::info!("tug-agent: node {} registered, pod CIDR {pod_cidr}", cfg.node_name);
    // The address allocations live as long as the pods' namespaces (pinned under /run): in
    // the run directory. An agent that kept them in its state directory left them there.
    move_old(&cfg.state_dir.join("ipam.json"), &cfg.run_dir.join("ipam.json"))?;
    let mut ncfg = NodeConfig::new(&cfg.node_name, cfg.node_ip, pod_cidr, &cfg.run_dir);
    ncfg.node_netns = cfg.node_netns.clone();
    ncfg.netns_dir = cfg.netns_dir.clone();
    ncfg.backend = cfg.backend;
    ncfg.cluster_cidr = cfg.cluster_cidr;
    let net = NodeNetwork::setup(ncfg).await?;
    let catalog = crate::catalog::Catalog::start(api.clone());
    {
        let (catalog, domain, netns) =
            (Arc::clone(&catalog), cfg.cluster_domain.clone(), cfg.node_netns.clone());
        let addr = pod_cidr.gateway();
        tokio::spawn(async move {
            if let Err(e) = crate::dns::serve(catalog, domain, addr, netns.as_deref()).await {
                tracing::warn!("tug-agent: {e}");
            }
        });
    }
    // Ingresses of class tug, on this node's ports.
    if let Some(addr) = cfg.metrics_addr {
        // In the node's namespace: its loopback is the node's own.
        crate::network::netns::spawn_runtime("tug-metrics", cfg.node_netns.as_deref(), move || {
            crate::metrics::serve(addr)
        })?;
    }
    let (http, https) = cfg.ingress_ports;
    crate::ingress::start(Arc::clone(&catalog), api.clone(), cfg.node_netns.clone(), http, https)?;
    // NetworkPolicy for this node's pods.
    tokio::spawn(crate::policy::run(
        Arc::clone(&catalog),
        cfg.node_name.clone(),
        cfg.node_netns.clone(),
        Duration::from_secs(300),
    ));
    let stats = crate::stats::Cache::default();
    if cfg.proxy_enabled {
        net.route_services(cfg.service_cidr).await?;
        let node = crate::proxy::rules::NodeInfo { cluster_cidr: cfg.cluster_cidr, pod_cidr };
        tokio::spawn(crate::proxy::run(
            Arc::clone(&catalog),
            cfg.node_name.clone(),
            cfg.proxy_mode,
            cfg.node_netns.clone(),
            node,
            Duration::from_secs(300),
            Arc::clone(&stats.counted),
        ));
        // healthCheckNodePorts of LoadBalancers with externalTrafficPolicy Local.
        crate::proxy::health::start(Arc::clone(&catalog), cfg.node_name.clone(), cfg.node_netns.clone())?;
        // LoadBalancer addresses this node is elected to answer for.
        tokio::spawn(crate::announce::run(
            Arc::clone(&catalog),
            cfg.node_name.clone(),
            cfg.node_ip,
            cfg.node_netns.clone(),
        ));
    }
    let store = Arc::new(tug_images::Store::open(&cfg.image_root)?);
    let puller = tug_images::Puller::new(Arc::clone(&store), cfg.insecure_registries.clone());
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        api: api.clone(),
        net,
        store,
        puller,
        pods_cgroup,
        probes: Default::default(),
        stats,
        supervisor_cgroup: crate::cgroup::supervisors(),
        run_dir_in_memory: crate::pods::volumes::in_memory(&cfg.run_dir),
    });
    // The control plane's way in for `tug logs`, `tug exec` and `tug top`.
    crate::tunnel::start(Arc::clone(&ctx));
    tokio::spawn(crate::stats::run(Arc::clone(&ctx), cfg.housekeeping_interval));
    tokio::spawn(trim_heap());

    // What a previous run left: workers for every recorded pod, nothing for the rest.
    let records = PodRecord::load_all(&cfg.pods_dir());
    let live: Vec<String> = records
        .iter()
        .map(|r| r.uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect())
        .collect();
    match ctx.net.reclaim(&|k: &str| live.iter().any(|l| l == k)).await {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!("tug-agent: removed the network of {} pods no longer here", gone.len())
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("tug-agent: reclaiming pod networks: {e}"),
    }
    let known: Vec<String> =
        records.iter().flat_map(|r| r.containers.values().filter_map(|c| c.id.clone())).collect();
    for (id, _) in tug_shim::supervisor::list(&cfg.supervisors()) {
        if !known.contains(&id) {
            tracing::info!("tug-agent: removing container {id}, which no pod claims");
            pods::discard(&ctx, &id).await;
        }
    }
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
    let mut workers: Workers = HashMap::new();
    for r in &records {
        spawn_worker(&ctx, &mut workers, &r.uid, Msg::Tick);
    }

    // The heartbeat, the node status, routes and image GC, each on its own clock.
    {
        let (api, cfg) = (api.clone(), cfg.clone());
        tokio::spawn(async move {
            let duration = cfg.status_frequency * 4;
            loop {
                if let Err(e) = renew_lease(&api, &cfg.node_name, duration).await {
                    tracing::warn!("tug-agent: {e}");
                }
                tokio::time::sleep(cfg.status_frequency / 2).await;
            }
        });
    }
    {
        let (api, cfg, ctx) = (api.clone(), cfg.clone(), Arc::clone(&ctx));
        tokio::spawn(async move {
            let mut gc_at = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(cfg.status_frequency).await;
                if let Err(e) = put_node_status(&api, &cfg).await {
                    tracing::warn!("tug-agent: {e}");
                }
                if let Err(e) = sync_peers(&api, &cfg, &ctx.net).await {
                    tracing::warn!("tug-agent: routes: {e}");
                }
                if tokio::time::Instant::now() >= gc_at {
                    gc_at = tokio::time::Instant::now() + Duration::from_secs(300);
                    let store = Arc::clone(&ctx.store);
                    let (high, low, age) = (cfg.image_gc_high, cfg.image_gc_low, cfg.image_gc_min_age);
                    match tokio::task::spawn_blocking(move || store.gc(high, low, age)).await {
                        Ok(Ok(r)) if !r.images.is_empty() => {
                            tracing::info!(
                                "tug-agent: image GC removed {} ({} bytes)",
                                r.images.join(", "),
                                r.bytes
                            )
                        }
                        Ok(Err(e)) => tracing::warn!("tug-agent: image GC: {e}"),
                        _ => {}
                    }
                }
            }
        });
    }
    if let Err(e) = sync_peers(&api, &cfg, &ctx.net).await {
        tracing::warn!("tug-agent: routes: {e}");
    }

    // Node-pressure eviction: one pod per pass while a hard threshold is crossed.
    {
        let (api, cfg, ctx, tx) = (api.clone(), cfg.clone(), Arc::clone(&ctx), events_tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(cfg.housekeeping_interval.max(Duration::from_secs(1))).await;
                if let Some((uid, message)) = eviction_pass(&api, &cfg, &ctx).await {
                    let _ = tx.send(Event::Pod(uid, Msg::Evict(message)));
                    // Give the evicted pod's memory or disk time to come back before judging again.
                    tokio::time::sleep(cfg.status_frequency.max(Duration::from_secs(2))).await;
                }
            }
        });
    }

    // The pod watch: list, then watch from the list's revision on (resumed across cut streams).
    {
        let api = api.clone();
        let node = cfg.node_name.clone();
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let base = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}");
            loop {
                let list = match api.get(&base).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("tug-agent: listing pods: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let mut present = Vec::new();
                for p in list["items"].as_array().into_iter().flatten() {
                    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                    present.push(uid.clone());
                    if let Some(pod) = parse_pod(p) {
                        let _ = tx.send(Event::Pod(uid, Msg::Update(Some(pod))));
                    }
                }
                let _ = tx.send(Event::Listed(present));
                let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
                let tx2 = tx.clone();
                // Resumed from its last revision (on another replica, when this one goes);
                // listed again only when that revision is gone or the daemon stops.
                let end = api
                    .watch_resuming(
                        &base,
                        rv,
                        |ev| {
                            let obj = &ev["object"];
                            let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                            let msg = match ev["type"].as_str() {
                                Some("DELETED") => Msg::Update(None),
                                Some("ADDED" | "MODIFIED") => match parse_pod(obj) {
                                    Some(p) => Msg::Update(Some(p)),
                                    None => return true,
                                },
                                _ => return true,
                            };
                            tx2.send(Event::Pod(uid, msg)).is_ok()
                        },
                        |e| tracing::warn!("tug-agent: watching pods: {e}"),
                    )
                    .await;
                if end == tug_client::WatchEnd::Stopped {
                    return;
                }
            }
        });
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(ev) = events_rx.recv() => match ev {
                Event::Pod(uid, msg) => send(&ctx, &mut workers, &uid, msg),
                // Pods this node runs that a fresh list does not have were deleted while
                // nobody watched.
                Event::Listed(present) => {
                    let gone: Vec<String> = workers.keys().filter(|u| !present.contains(u)).cloned().collect();
                    for uid in gone {
                        send(&ctx, &mut workers, &uid, Msg::Update(None));
                    }
                }
            },
        }
    }
    tracing::info!("tug-agent: stopping; containers keep running");
    Ok(())
}
