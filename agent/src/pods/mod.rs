//! Pods on this node: one worker task per pod, level-triggered.
//!
//! A worker holds the pod's latest object and its [`record::PodRecord`]; on every event (the
//! object changed or went away, a container exited, a back-off ended, the periodic resync) it
//! refreshes what runs from the supervisors, asks [`plan::plan`] what to do, does it, and
//! writes the status [`plan::pod_status`] computes if it changed. A missed event costs at
//! most one resync period, never a wrong pod.

pub mod env;
pub mod grpc;
pub mod hooks;
pub mod plan;
pub mod probe;
pub mod record;
pub mod spec;
pub mod volumes;

use crate::api;
use crate::config::Config;
use crate::network::node::NodeNetwork;
use plan::Action;
use record::{ContainerRecord, PodRecord, State, Terminated};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tug_api::kinds::pod::{Container, Pod};
use tug_images::{PullPolicy, Puller, Store};
use tug_shim::supervisor::protocol::{self as sup, Reply, Request};

/// What the agent's pod side shares between workers.
pub struct Ctx {
    pub cfg: Config,
    pub api: tug_client::Client,
    pub net: NodeNetwork,
    pub store: Arc<Store>,
    pub puller: Arc<Puller>,
    /// Where pods' cgroups go: `cfg.cgroup_parent` relative to the agent's cgroup, or an
    /// absolute path on a pure v2 host (see [`crate::cgroup`]).
    pub pods_cgroup: String,
    /// The probe results of every container with probes, by container id.
    pub probes: std::sync::Mutex<std::collections::HashMap<String, Arc<probe::ProbeState>>>,
    /// Resource usage, sampled every `--housekeeping-interval`.
    pub stats: crate::stats::Cache,
    /// `cgroup.procs` of the supervisors' cgroup on a pure v2 host ([`crate::cgroup::supervisors`]).
    pub supervisor_cgroup: Option<std::path::PathBuf>,
    /// Whether the run directory is a tmpfs (looked at once, at start): secret and projected
    /// volumes then go under the pods' directories there (see `volumes`).
    pub run_dir_in_memory: bool,
}

/// The grace period of a pod that left the API without this node's confirmation (seconds).
const FORCED_GRACE: i64 = 2;
/// The least time a `postStart` hook gets before it counts as failed (kubelet waits for ever).
const POST_START_LIMIT_SECS: u64 = 120;

/// A message to a pod worker.
#[derive(Debug)]
pub enum Msg {
    /// The pod's object as the API has it now; None once it is deleted.
    Update(Option<Box<Pod>>),
    /// Something changed on the node (a container exited): look again.
    Tick,
    /// An event about the pod from one of its helpers (a probe failed): type, reason, message.
    Event(&'static str, &'static str, String),
    /// The node is under pressure and this pod goes: kubelet's message.
    Evict(String),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time_ms(s: &str) -> u64 {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// The pod's key for the network (its uid) and directories.
fn short(uid: &str) -> String {
    uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect()
}

impl Ctx {
    pub(crate) fn supervisor_socket(&self, id: &str) -> PathBuf {
        tug_shim::supervisor::socket_path(&self.cfg.supervisors(), id)
    }

    pub(crate) fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.bundles().join(id)
    }

    /// `<logs>/<ns>_<pod>_<uid>/<container>/<attempt>.log`, kubelet's layout.
    pub fn log_path(&self, rec: &PodRecord, container: &str, attempt: u32) -> PathBuf {
        self.cfg
            .logs_dir()
            .join(format!("{}_{}_{}", rec.namespace, rec.name, rec.uid))
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// The pod's volumes, on disk.
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.volumes_dir().join(uid)
    }

    /// The pod's record and `/etc` files, in the run directory.
    fn sandbox_dir(&self, uid: &str) -> PathBuf {
        self.cfg.pods_dir().join(uid)
    }

    /// Where the pod's volumes go: its volume directory, and its directory in the run
    /// directory when that is a tmpfs (for secret and projected volumes: see `volumes`).
    fn volume_dirs(&self, uid: &str) -> (PathBuf, Option<PathBuf>) {
        (self.pod_dir(uid), self.run_dir_in_memory.then(|| self.sandbox_dir(uid)))
    }

    fn cgroup(&self, uid: &str) -> String {
        format!("{}/pod{}", self.pods_cgroup, short(uid))
    }

    fn shim(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.cfg.shim);
        cmd.arg("--root").arg(self.cfg.runtime_root());
        cmd
    }
}

/// Asks a container's supervisor for its state: Some(exit) when it ended, None while it
/// runs; Err when there is no supervisor to ask.
pub(crate) fn supervisor_state(socket: &std::path::Path) -> Result<Option<sup::ExitStatus>, String> {
    let mut c = sup::Client::connect(socket).map_err(|e| e.to_string())?;
    c.set_timeout(Some(Duration::from_secs(5)));
    match c.call(&Request::State).map_err(|e| e.to_string())? {
        Reply::State { exit, .. } => Ok(exit),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

pub(crate) fn supervisor_call(socket: &std::path::Path, req: &Request) -> Result<Reply, String> {
    let mut c = sup::Client::connect(socket).map_err(|e| e.to_string())?;
    c.set_timeout(Some(Duration::from_secs(5)));
    c.call(req).map_err(|e| e.to_string())
}

fn terminated(exit: &sup::ExitStatus) -> Terminated {
    let reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Terminated {
        exit_code: exit.code,
        signal: exit.signal,
        reason: reason.into(),
        started_at: exit.started_at.clone(),
        finished_at: exit.finished_at.clone(),
    }
}

/// A pod worker: runs until the pod is gone from the node.
pub async fn worker(
    ctx: Arc<Ctx>,
    uid: String,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let mut rec = PodRecord::load(&ctx.cfg.pods_dir(), &uid).unwrap_or_default();
    // A pod an earlier run of the agent recorded: said once its first sync is done.
    let mut inherited = !rec.uid.is_empty();
    let mut pod: Option<Box<Pod>> = None;
    let mut deleted = false;
    let mut last_status = Value::Null;
    let mut adopted = false;
    let mut wake: Option<u64> = None;
    // For kubelet_pod_start_duration_seconds: when this agent first saw a pod it starts
    // (not one an earlier run started), until every container of it runs.
    let mut first_seen = (!inherited).then(std::time::Instant::now);
    // When the running pod's ConfigMap, Secret, downward API and projected volumes were last
    // written again: once per sync period, as kubelet does, not on every event (a starting
    // pod's own status writes come back as several; each asked the API for the volumes'
    // objects and a token again). A pod this run starts had them written by its start.
    let mut volumes_synced = first_seen;
    loop {
        let timeout = match wake {
            Some(t) => Duration::from_millis(t.saturating_sub(now_ms())).min(ctx.cfg.sync_frequency),
            None => ctx.cfg.sync_frequency,
        };
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(Msg::Update(Some(p)))) => pod = Some(p),
            Ok(Some(Msg::Update(None))) => deleted = true,
            Ok(Some(Msg::Event(t, r, m))) => {
                if !rec.uid.is_empty() {
                    record_event(&ctx, &rec, t, r, m);
                }
                continue;
            }
            Ok(Some(Msg::Evict(m))) => evict(&ctx, &mut rec, m).await,
            Ok(Some(Msg::Tick)) | Err(_) => {}
            Ok(None) => return,
        }
        // Take everything queued: one sync covers them all.
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Update(Some(p)) => pod = Some(p),
                Msg::Update(None) => deleted = true,
                Msg::Event(t, r, m) => {
                    if !rec.uid.is_empty() {
                        record_event(&ctx, &rec, t, r, m);
                    }
                }
                Msg::Evict(m) => evict(&ctx, &mut rec, m).await,
                Msg::Tick => {}
            }
        }
        if rec.uid.is_empty() {
            let Some(p) = &pod else {
                if deleted {
                    return;
                }
                continue;
            };
            rec.uid = uid.clone();
            rec.namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            rec.name = p.metadata.name.clone();
        }
        // A pod marked deleted (Terminating) stops with the grace period its delete gave,
        // then this node confirms with a final delete.
        let terminating = pod.as_ref().is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        if let Some(p) = &pod {
            rec.grace_seconds =
                p.metadata.deletion_grace_period_seconds.or(p.spec.termination_grace_period_seconds);
        }
        if !adopted {
            adopt(&ctx, &rec, &tx);
            adopted = true;
        }
        refresh(&ctx, &mut rec);
        if let Some(p) = &pod
            && rec.ip.is_some()
            && p.spec.volumes.iter().any(|v| {
                v.config_map.is_some()
                    || v.secret.is_some()
                    || v.downward_api.is_some()
                    || v.projected.is_some()
            })
            && rec.containers.values().any(|c| matches!(c.state, State::Running { .. }))
            && volumes_synced.is_none_or(|t| t.elapsed() >= ctx.cfg.sync_frequency)
        {
            // ConfigMaps and Secrets that changed reach running containers' files.
            volumes_synced = Some(std::time::Instant::now());
            let host_ip = ctx.cfg.node_ip.to_string();
            let ip = rec.ip.clone().unwrap_or_default();
            let (disk, memory) = ctx.volume_dirs(&rec.uid);
            let places = volumes::Places { disk: &disk, memory: memory.as_deref() };
            if let Err(e) = volumes::prepare(&ctx.api, p, places, &ip, &host_ip).await {
                tracing::warn!("tug-agent: pod {}/{}: {e}", rec.namespace, rec.name);
                record_event(&ctx, &rec, "Warning", "FailedMount", format!("MountVolume.SetUp failed: {e}"));
            }
        }
        if let Some(p) = &pod
            && !terminating
            && rec.evicted.is_none()
        {
            resize(&ctx, p, &mut rec).await;
        }
        if let Some(p) = &pod {
            probes(&ctx, p, &mut rec, &tx);
            if restart_unhealthy(&ctx, p, &mut rec).await {
                refresh(&ctx, &mut rec);
            }
        }
        if pod.is_none() && !deleted {
            // A pod recorded by an earlier run, not yet seen in the API's list: wait for the
            // list to say whether it still exists.
            continue;
        }
        let spec = pod.as_ref().map(|p| p.spec.clone()).unwrap_or_default();
        let actions = plan::plan(&spec, &rec, deleted || terminating, now_ms());
        // A container waiting out its restart back-off: kubelet's BackOff, counted up while
        // the crash loop lasts.
        if !(deleted || terminating) {
            let now = now_ms();
            for (cname, c) in &rec.containers {
                if let State::Terminated(t) = &c.state
                    && c.backoff_until.is_some_and(|u| now < u)
                    && plan::restarts(&spec, plan::role(&spec, cname), t)
                    && !(plan::role(&spec, cname) == plan::Role::Sidecar && plan::apps_done(&spec, &rec))
                {
                    let message = format!(
                        "Back-off restarting failed container {cname} in pod {}_{}({})",
                        rec.name, rec.namespace, rec.uid
                    );
                    record_event(&ctx, &rec, "Warning", "BackOff", message);
                }
            }
        }
        wake = None;
        // The sandbox is made and the containers start right after, in the next sync: their
        // status then says more than a Pending one written in between would.
        let mut starts_next = false;
        for a in actions {
            match a {
                Action::TearDown => {
                    let preempted = pod.as_ref().and_then(|p| p.status.as_ref()).and_then(|s| {
                        s.conditions.iter().find(|c| {
                            c.type_ == "DisruptionTarget"
                                && c.reason.as_deref() == Some("PreemptionByScheduler")
                        })
                    });
                    if let Some(c) = preempted {
                        let why = c.message.clone().unwrap_or_else(|| "preempted".into());
                        record_event(&ctx, &rec, "Warning", "Preempting", format!("Preempting: {why}"));
                    }
                    if deleted {
                        // Gone from the API without this node's confirmation: forced (or its
                        // node lost it past its grace period). Its time is up: 2 s to stop,
                        // kubelet's minimum.
                        rec.grace_seconds = Some(rec.grace_seconds.unwrap_or(FORCED_GRACE).min(FORCED_GRACE));
                    }
                    tear_down(&ctx, pod.as_deref(), &rec).await;
                    if !deleted {
                        confirm_deleted(&ctx, &rec).await;
                    }
                    return;
                }
                Action::Sandbox => {
                    let made = std::time::Instant::now();
                    let r = sandbox(&ctx, &mut rec, &spec).await;
                    if r.is_ok() {
                        crate::metrics::get().sandbox.observe(made.elapsed().as_secs_f64());
                    }
                    if let Err(e) = r {
                        tracing::warn!("tug-agent: pod {}/{}: network: {e}", rec.namespace, rec.name);
                        record_event(
                            &ctx,
                            &rec,
                            "Warning",
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {e}"),
                        );
                        wake = Some(now_ms() + 2_000);
                    } else {
                        let _ = tx.send(Msg::Tick);
                        starts_next = true;
                    }
                }
                Action::Start(name) => {
                    let Some(p) = &pod else { continue };
                    start(&ctx, p, &mut rec, &name, &tx).await;
                    if rec.containers.get(&name).is_some_and(|c| matches!(c.state, State::Running { .. })) {
                        // An init container's end moves the pod on; an app container's start
                        // may unblock nothing, but a re-plan is cheap.
                        let _ = tx.send(Msg::Tick);
                    } else if let Some(t) = rec.containers.get(&name).and_then(|c| c.backoff_until) {
                        wake = Some(wake.map_or(t, |w: u64| w.min(t)));
                    }
                }
                Action::Stop(name) => {
                    // A sidecar whose app containers are done: stopped (preStop, signal,
                    // grace) and not started again.
                    let grace =
                        Duration::from_secs(u64::try_from(rec.grace_seconds.unwrap_or(30)).unwrap_or(30));
                    record_event(&ctx, &rec, "Normal", "Killing", format!("Stopping container {name}"));
                    kill(&ctx, pod.as_deref(), &rec, &name, grace).await;
                    refresh(&ctx, &mut rec);
                }
                Action::WakeAt(t) => wake = Some(wake.map_or(t, |w: u64| w.min(t))),
            }
        }
        if let Err(e) = crate::blocking(|| rec.save(&ctx.cfg.pods_dir())) {
            tracing::warn!("tug-agent: pod {}/{}: {e}", rec.namespace, rec.name);
        }
        if let (Some(seen), Some(p)) = (first_seen, &pod)
            && !p.spec.containers.is_empty()
            && p.spec.containers.iter().all(|c| {
                rec.containers.get(&c.name).is_some_and(|r| matches!(r.state, State::Running { .. }))
            })
        {
            crate::metrics::get().pod_start.observe(seen.elapsed().as_secs_f64());
            first_seen = None;
        }
        // Unless an image must be pulled first: the pod then shows its containers waiting
        // (ContainerCreating) during the pull.
        let quick = starts_next && pod.as_ref().is_some_and(|p| images_present(&ctx, p));
        if !quick
            && let Some(p) = &mut pod
            && let Some(updated) = write_status(&ctx, p, &rec, &mut last_status).await
        {
            *p = updated;
        }
        if inherited && pod.is_some() {
            inherited = false;
            let running =
                rec.containers.values().filter(|c| matches!(c.state, State::Running { .. })).count();
            tracing::info!(
                "tug-agent: adopted pod {}/{} ({running} running containers)",
                rec.namespace,
                rec.name
            );
        }
    }
}

/// The container's `imagePullPolicy`, or Kubernetes' default for its image.
fn pull_policy(c: &Container) -> PullPolicy {
    match c.image_pull_policy.as_deref() {
        Some(p) => PullPolicy::parse(p).unwrap_or(PullPolicy::IfNotPresent),
        None => PullPolicy::default_for(&c.image),
    }
}

/// Whether the container's image is in the store and may be used as it is (blocking IO).
fn image_present(ctx: &Ctx, c: &Container) -> bool {
    pull_policy(c) != PullPolicy::Always && ctx.store.find(&c.image).ok().flatten().is_some()
}

/// Whether every image of the pod's containers is in the store and may be used as it is.
fn images_present(ctx: &Ctx, pod: &Pod) -> bool {
    crate::blocking(|| {
        pod.spec.init_containers.iter().chain(&pod.spec.containers).all(|c| image_present(ctx, c))
    })
}

/// After an agent restart: a waiter for every container that still runs.
fn adopt(ctx: &Arc<Ctx>, rec: &PodRecord, tx: &mpsc::UnboundedSender<Msg>) {
    for c in rec.containers.values() {
        if let (Some(id), State::Running { .. } | State::Starting) = (&c.id, &c.state) {
            spawn_waiter(ctx, id, tx);
        }
    }
}

/// Brings the record up to date with the supervisors: containers that ended since.
fn refresh(ctx: &Ctx, rec: &mut PodRecord) {
    for c in rec.containers.values_mut() {
        let Some(id) = c.id.clone() else { continue };
        match &c.state {
            State::Running { .. } | State::Starting => {}
            _ => continue,
        }
        match supervisor_state(&ctx.supervisor_socket(&id)) {
            Ok(None) => {
                if matches!(c.state, State::Starting) {
                    c.state = State::Running { started_at: rfc3339(SystemTime::now()) };
                }
            }
            Ok(Some(exit)) => {
                let t = terminated(&exit);
                let ran = parse_time_ms(&t.finished_at).saturating_sub(parse_time_ms(&t.started_at));
                let finished = parse_time_ms(&t.finished_at).max(1);
                plan::ended(c, t, ran, finished);
            }
            Err(_) if matches!(c.state, State::Starting) => {
                plan::failed_start(
                    c,
                    "RunContainerError",
                    "the agent stopped while starting the container",
                    now_ms(),
                );
            }
            Err(_) => {
                let t = Terminated {
                    exit_code: 137,
                    signal: None,
                    reason: "ContainerStatusUnknown".into(),
                    started_at: String::new(),
                    finished_at: rfc3339(SystemTime::now()),
                };
                plan::ended(c, t, 0, now_ms());
            }
        }
    }
}

/// Starts the probers of running containers that have probes (new ones, and adopted ones
/// after an agent restart), stops those of containers that ended, and copies the probes'
/// findings into the record.
fn probes(ctx: &Arc<Ctx>, pod: &Pod, rec: &mut PodRecord, tx: &mpsc::UnboundedSender<Msg>) {
    let mut table = ctx.probes.lock().unwrap_or_else(|e| e.into_inner());
    let ip = rec.ip.as_deref().and_then(|i| i.parse().ok()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let netns = rec.netns.clone().unwrap_or_default();
    for (name, c) in rec.containers.iter_mut() {
        let Some(id) = c.id.clone() else { continue };
        if !matches!(c.state, State::Running { .. }) {
            if let Some(st) = table.remove(&id) {
                st.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            c.probed = None;
            continue;
        }
        if let Some(st) = table.get(&id) {
            use std::sync::atomic::Ordering::Relaxed;
            c.probed = Some((st.started.load(Relaxed), st.ready.load(Relaxed)));
            continue;
        }
        let Some((spec, _)) = find_container(pod, name) else { continue };
        let socket = ctx.supervisor_socket(&id);
        let bundle = ctx.bundle_dir(&id);
        let mk = |p: &Option<Box<tug_api::kinds::pod::Probe>>| {
            p.as_ref().map(|p| (probe::check(spec, p, ip, &netns, &socket, &bundle), probe::settings(p)))
        };
        let set = probe::Probes {
            startup: mk(&spec.startup_probe),
            liveness: mk(&spec.liveness_probe),
            readiness: mk(&spec.readiness_probe),
        };
        if !set.any() {
            c.probed = None;
            continue;
        }
        let st = Arc::new(probe::ProbeState::default());
        table.insert(id.clone(), Arc::clone(&st));
        c.probed = Some((false, false));
        tokio::spawn(probe::prober(format!("{}/{}/{name}", rec.namespace, rec.name), set, st, tx.clone()));
    }
}

/// Records a pod event in the background (`api::pod_event`; repeats are counted, not added).
fn record_event(ctx: &Ctx, rec: &PodRecord, type_: &'static str, reason: &'static str, message: String) {
    let (api, node) = (ctx.api.clone(), ctx.cfg.node_name.clone());
    let (ns, name, uid) = (rec.namespace.clone(), rec.name.clone(), rec.uid.clone());
    tokio::spawn(
        async move { api::pod_event(&api, &node, (&ns, &name, &uid), type_, reason, &message).await },
    );
}

/// Stops the containers whose liveness or startup probe failed; their exit then restarts
/// them under the pod's policy. Whether any was stopped.
async fn restart_unhealthy(ctx: &Ctx, pod: &Pod, rec: &mut PodRecord) -> bool {
    let pod_grace = rec.grace_seconds.unwrap_or(30);
    let failed: Vec<(String, String, i64)> = {
        let table = ctx.probes.lock().unwrap_or_else(|e| e.into_inner());
        rec.containers
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Running { .. }))
            .filter_map(|(name, c)| {
                let id = c.id.clone()?;
                let st = table.get(&id)?;
                // The probe's own grace period when it has one.
                let g = st.grace_seconds.load(std::sync::atomic::Ordering::Relaxed);
                let grace = if g > 0 { g } else { pod_grace };
                st.failed.load(std::sync::atomic::Ordering::Relaxed).then(|| (name.clone(), id, grace))
            })
            .collect()
    };
    for (name, _, grace) in &failed {
        let grace = Duration::from_secs(u64::try_from(*grace).unwrap_or(30));
        kill(ctx, Some(pod), rec, name, grace).await;
    }
    !failed.is_empty()
}

/// Stops a container as kubelet kills one: its `preStop` hook first (within `grace`; a
/// failure is a `FailedPreStopHook` event), then its stop signal with what is left of `grace`
/// (at least 2 s, kubelet's minimum), then SIGKILL.
async fn kill(ctx: &Ctx, pod: Option<&Pod>, rec: &PodRecord, name: &str, grace: Duration) {
    let Some(c) = rec.containers.get(name) else { return };
    let Some(id) = c.id.clone() else { return };
    if !matches!(c.state, State::Running { .. } | State::Starting) {
        return;
    }
    let began = std::time::Instant::now();
    let pre_stop = pod
        .and_then(|p| find_container(p, name))
        .and_then(|(spec, _)| Some((spec, spec.lifecycle.as_ref()?.pre_stop.as_ref()?)));
    if let Some((spec, h)) = pre_stop {
        let (ip, netns) = pod_net(rec);
        let hook = hooks::hook(spec, h, ip, &netns, &ctx.supervisor_socket(&id), &ctx.bundle_dir(&id));
        if let Err(e) = hooks::run(hook, grace).await {
            let msg = hooks::failure_message(h, name, (&rec.namespace, &rec.name, &rec.uid), &e);
            record_event(ctx, rec, "Warning", "FailedPreStopHook", msg);
        }
    }
    let left = grace.saturating_sub(began.elapsed()).max(Duration::from_secs(2));
    stop(ctx, &id, c.stop_signal.as_deref(), left).await;
}

/// The pod's address and network namespace (what probes and hooks reach it by).
fn pod_net(rec: &PodRecord) -> (std::net::Ipv4Addr, std::path::PathBuf) {
    let ip = rec.ip.as_deref().and_then(|i| i.parse().ok()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    (ip, rec.netns.clone().unwrap_or_default())
}

/// Runs a started container's `postStart` hook, as kubelet does before it counts the
/// container started; on failure (a `FailedPostStartHook` event) the container is killed and
/// restarts under the pod's policy. Whether the hook succeeded (or there was none).
async fn post_start(ctx: &Ctx, pod: &Pod, rec: &PodRecord, c: &Container, id: &str) -> bool {
    let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else { return true };
    let (ip, netns) = pod_net(rec);
    let hook = hooks::hook(c, h, ip, &netns, &ctx.supervisor_socket(id), &ctx.bundle_dir(id));
    // kubelet waits for ever; a hung hook must not hold the pod's worker past its grace period.
    let grace = u64::try_from(pod.spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30);
    let limit = Duration::from_secs(grace.max(POST_START_LIMIT_SECS));
    match hooks::run(hook, limit).await {
        Ok(()) => true,
        Err(e) => {
            let msg = hooks::failure_message(h, &c.name, (&rec.namespace, &rec.name, &rec.uid), &e);
            record_event(ctx, rec, "Warning", "FailedPostStartHook", msg);
            record_event(
                ctx,
                rec,
                "Normal",
                "Killing",
                format!("FailedPostStartHook: stopping container {}", c.name),
            );
            let stop_signal = rec.containers.get(&c.name).and_then(|r| r.stop_signal.clone());
            stop(ctx, id, stop_signal.as_deref(), Duration::from_secs(grace)).await;
            false
        }
    }
}

/// The pod's kernel hostname: its `hostname` (else its name), fully qualified with
/// `setHostnameAsFQDN` and a `subdomain`.
fn kernel_hostname(ctx: &Ctx, rec: &PodRecord, spec: &tug_api::kinds::pod::PodSpec) -> String {
    if spec.host_network == Some(true) {
        // The node's own (the pod shares its UTS namespace).
        return nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    }
    let (host, domain) =
        tug_api::kinds::pod::hostname_and_domain(&rec.name, &rec.namespace, spec, &ctx.cfg.cluster_domain);
    match domain {
        Some(d) if spec.set_hostname_as_fqdn == Some(true) => format!("{host}.{d}"),
        _ => host,
    }
}

/// The pod's `/etc/hosts`, as kubelet writes it: localhost, the pod's own names, then its
/// `hostAliases`.
fn hosts_file(
    ip: &str,
    rec: &PodRecord,
    spec: &tug_api::kinds::pod::PodSpec,
    cluster_domain: &str,
) -> String {
    let (host, domain) =
        tug_api::kinds::pod::hostname_and_domain(&rec.name, &rec.namespace, spec, cluster_domain);
    let own = match domain {
        Some(d) => format!("{ip}\t{host}.{d}\t{host}"),
        None => format!("{ip}\t{host}"),
    };
    format!(
        "# Kubernetes-managed hosts file (tug-agent).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\n{}",
        aliases(spec)
    )
}

/// The `hostAliases` part of a pod's `/etc/hosts`.
fn aliases(spec: &tug_api::kinds::pod::PodSpec) -> String {
    if spec.host_aliases.is_empty() {
        return String::new();
    }
    let mut out = "\n# Entries added by HostAliases.\n".to_string();
    for a in &spec.host_aliases {
        out.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
    }
    out
}

/// The pod's network namespace and its `/etc` files.
async fn sandbox(ctx: &Ctx, rec: &mut PodRecord, spec: &tug_api::kinds::pod::PodSpec) -> Result<(), String> {
    let host_network = spec.host_network == Some(true);
    // A host-network pod has no namespace of its own: the node's address is its address.
    let (ip, netns) = if host_network {
        (ctx.cfg.node_ip.to_string(), ctx.cfg.node_netns.clone().unwrap_or_default())
    } else {
        let net = ctx.net.add_pod(&short(&rec.uid)).await?;
        (net.ip.to_string(), net.netns)
    };
    let dir = ctx.sandbox_dir(&rec.uid);
    crate::blocking(|| std::fs::create_dir_all(&dir)).map_err(|e| format!("{}: {e}", dir.display()))?;
    let hostname = kernel_hostname(ctx, rec, spec);
    let hosts = if host_network {
        // kubelet's way: the node's own hosts file, with the pod's aliases after it.
        let mut h = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !h.is_empty() && !h.ends_with('\n') {
            h.push('\n');
        }
        h + &aliases(spec)
    } else {
        hosts_file(&ip, rec, spec, &ctx.cfg.cluster_domain)
    };
    let resolv = crate::dns::resolv_conf(
        spec.dns_policy.as_deref(),
        spec.host_network == Some(true),
        spec.dns_config.as_ref(),
        &rec.namespace,
        &ctx.cfg.cluster_domain,
        ctx.net.cfg.pod_cidr.gateway(),
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    rec.ip = Some(ip);
    rec.netns = Some(netns);
    rec.start_time.get_or_insert_with(|| rfc3339(SystemTime::now()));
    crate::blocking(|| {
        for (file, text) in [("hosts", hosts), ("hostname", format!("{hostname}\n")), ("resolv.conf", resolv)]
        {
            std::fs::write(dir.join(file), text).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
        }
        rec.save(&ctx.cfg.pods_dir())
    })
}

/// A pod sharing its process namespace has a pause process holding it: started before the
/// first container, and again if it died (which ended every process in the namespace).
async fn ensure_pause(ctx: &Ctx, pod: &Pod, rec: &mut PodRecord) -> Result<(), String> {
    if pod.spec.share_process_namespace != Some(true) || pod.spec.host_pid == Some(true) {
        return Ok(());
    }
    if rec.pause.as_ref().is_some_and(tug_shim::supervisor::pause::Pause::alive) {
        return Ok(());
    }
    let (shim, label, cgroup) = (
        ctx.cfg.shim.clone(),
        ctx.sandbox_dir(&rec.uid).to_string_lossy().into_owned(),
        ctx.supervisor_cgroup.clone(),
    );
    let pause = crate::blocking(|| tug_shim::supervisor::pause::start(&shim, &label, cgroup.as_deref()))?;
    rec.pause = Some(pause);
    crate::blocking(|| rec.save(&ctx.cfg.pods_dir()))
}

/// Removes an ended container: its supervisor, snapshot and bundle (its log stays).
fn remove_container(ctx: &Ctx, id: &str) {
    let socket = ctx.supervisor_socket(id);
    let shut = supervisor_call(&socket, &Request::Shutdown).is_ok();
    let _ = ctx.shim().args(["delete", "--force", id]).stderr(std::process::Stdio::null()).status();
    let dir = ctx.cfg.supervisors().join(id);
    if !shut {
        // A supervisor that did not answer would be left without its socket once the
        // directory goes: ended here, if the pid in its file is still this container's.
        end_supervisor(&dir, id);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = ctx.store.remove_snapshot(id) {
        tracing::warn!("tug-agent: container {id}: {e}");
    }
    let _ = std::fs::remove_dir_all(ctx.bundle_dir(id));
}

/// SIGKILL to the supervisor named in `dir/supervisor.pid` when that process is still the
/// supervisor of container `id` (its command line names the id): never another process that
/// took the pid.
fn end_supervisor(dir: &std::path::Path, id: &str) {
    let Some(pid) =
        std::fs::read_to_string(dir.join("supervisor.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    tug_shim::supervisor::pause::kill_checked(pid, || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("\"id\":\"{id}\"")))
    });
}

/// Kills a container no pod claims (left by a crash between its start and its record) and
/// removes it.
pub async fn discard(ctx: &Ctx, id: &str) {
    let socket = ctx.supervisor_socket(id);
    if supervisor_call(&socket, &Request::Kill { signal: libc::SIGKILL, all: true }).is_ok() {
        wait_exit(&socket, Duration::from_secs(5)).await;
    }
    remove_container(ctx, id);
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<(&'a Container, bool)> {
    pod.spec
        .init_containers
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c, true))
        .or_else(|| pod.spec.containers.iter().find(|c| c.name == name).map(|c| (c, false)))
}

/// Starts (or starts again) one container; a failure is recorded as the container's Waiting
/// state with the reason kubelet gives, and retried after the back-off.
async fn start(ctx: &Arc<Ctx>, pod: &Pod, rec: &mut PodRecord, name: &str, tx: &mpsc::UnboundedSender<Msg>) {
    let Some((c, init)) = find_container(pod, name) else { return };
    let entry = rec.containers.entry(name.to_string()).or_insert_with(|| ContainerRecord {
        init,
        image: c.image.clone(),
        ..Default::default()
    });
    // The container before this one goes (its log stays for `logs --previous`).
    if let Some(old) = entry.id.clone()
        && !matches!(entry.state, State::Running { .. } | State::Starting)
    {
        remove_container(ctx, &old);
    }
    let previous = match &entry.state {
        State::Terminated(t) => Some(t.clone()),
        _ => None,
    };
    entry.image = c.image.clone();
    let policy = pull_policy(c);
    let creds = match env::pull_credentials(&ctx.api, pod, &c.image).await {
        Ok(c) => c,
        Err(e) => {
            plan::failed_start(entry, "ErrImagePull", &e, now_ms());
            return;
        }
    };
    let present = crate::blocking(|| image_present(ctx, c));
    let event = |type_: &'static str, reason: &'static str, message: String| {
        let (api, node) = (ctx.api.clone(), ctx.cfg.node_name.clone());
        let (ns, name, uid) = (rec.namespace.clone(), rec.name.clone(), rec.uid.clone());
        tokio::spawn(async move {
            api::pod_event(&api, &node, (&ns, &name, &uid), type_, reason, &message).await
        });
    };
    let pulls = !(present && policy == PullPolicy::IfNotPresent) && policy != PullPolicy::Never;
    if pulls {
        event("Normal", "Pulling", format!("Pulling image \"{}\"", c.image));
    } else if present {
        event("Normal", "Pulled", format!("Container image \"{}\" already present on machine", c.image));
    }
    let pull_started = std::time::Instant::now();
    let pulled = ctx.puller.ensure(&c.image, policy, creds).await;
    if pulls {
        let result = if pulled.is_ok() { "pulled" } else { "failed" };
        let l = tug_metrics::labels([("result", result)]);
        crate::metrics::get().image_pull.get_or_create(&l).observe(pull_started.elapsed().as_secs_f64());
    }
    let image = match pulled {
        Ok(i) => i,
        Err(e) => {
            event("Warning", "Failed", format!("Failed to pull image \"{}\": {}", c.image, e.message));
            let entry = rec.containers.get_mut(name).expect("entry");
            plan::failed_start(entry, e.reason, &e.message, now_ms());
            return;
        }
    };
    if pulls {
        // kubelet's wording: the pull's own time, then with the wait for other pulls.
        let total = pull_started.elapsed();
        let own = ctx.puller.pull_duration(&c.image).filter(|d| *d <= total).unwrap_or(total);
        event(
            "Normal",
            "Pulled",
            format!(
                "Successfully pulled image \"{}\" in {} ({} including waiting). Image size: {} bytes.",
                c.image,
                go_duration(own),
                go_duration(total),
                image.size
            ),
        );
    }
    let entry = rec.containers.get_mut(name).expect("entry");
    entry.image_id = image.digest.clone();
    let config = match crate::blocking(|| ctx.store.config(&image)) {
        Ok(c) => c,
        Err(e) => {
            plan::failed_start(entry, "CreateContainerError", &e, now_ms());
            return;
        }
    };
    entry.stop_signal = config.config.stop_signal.clone();
    entry.applied = c.resources.clone();
    let host_ip = ctx.cfg.node_ip.to_string();
    let resolved = match env::resolve(&ctx.api, pod, c, rec.ip.as_deref().unwrap_or(""), &host_ip).await {
        Ok(e) => e,
        Err(e) => {
            let entry = rec.containers.get_mut(name).expect("entry");
            plan::failed_start(entry, "CreateContainerConfigError", &e, now_ms());
            return;
        }
    };
    if let Err(e) = ensure_pause(ctx, pod, rec).await {
        let entry = rec.containers.get_mut(name).expect("entry");
        plan::failed_start(entry, "CreateContainerError", &e, now_ms());
        return;
    }
    let entry = rec.containers.get_mut(name).expect("entry");
    entry.attempt += 1;
    let id = format!("{}-{}-{}", short(&rec.uid), name, entry.attempt);
    entry.id = Some(id.clone());
    entry.state = State::Starting;
    let attempt = entry.attempt;
    let _ = crate::blocking(|| rec.save(&ctx.cfg.pods_dir()));
    let launched = std::time::Instant::now();
    let result = launch(ctx, pod, rec, c, &image, &config, &id, attempt, &resolved).await;
    if result.is_ok() {
        crate::metrics::get().container_start.observe(launched.elapsed().as_secs_f64());
    }
    let entry = rec.containers.get_mut(name).expect("entry");
    match result {
        Ok(()) => {
            record_event(ctx, rec, "Normal", "Created", format!("Created container: {name}"));
            record_event(ctx, rec, "Normal", "Started", format!("Started container {name}"));
            let entry = rec.containers.get_mut(name).expect("entry");
            if let Some(t) = previous {
                entry.restart_count += 1;
                entry.last = Some(t);
                let l = tug_metrics::labels([
                    ("namespace", &rec.namespace),
                    ("pod", &rec.name),
                    ("container", name),
                ]);
                crate::metrics::get().restarts.get_or_create(&l).inc();
            }
            entry.state = State::Running { started_at: rfc3339(SystemTime::now()) };
            spawn_waiter(ctx, &id, tx);
            if !post_start(ctx, pod, rec, c, &id).await {
                refresh(ctx, rec);
            }
        }
        Err((reason, message)) => {
            remove_container(ctx, &id);
            plan::failed_start(entry, reason, &message, now_ms());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn launch(
    ctx: &Ctx,
    pod: &Pod,
    rec: &PodRecord,
    c: &Container,
    image: &tug_images::ImageRecord,
    config: &tug_images::manifest::ImageConfig,
    id: &str,
    attempt: u32,
    resolved: &[(String, String)],
) -> Result<(), (&'static str, String)> {
    let sandbox = spec::Sandbox {
        netns: rec.netns.clone().unwrap_or_default(),
        host_network: pod.spec.host_network == Some(true),
        hostname: kernel_hostname(ctx, rec, &pod.spec),
        pod_dir: ctx.sandbox_dir(&rec.uid),
        cgroup: ctx.cgroup(&rec.uid),
        pid_ns: rec.pause.as_ref().map(tug_shim::supervisor::pause::Pause::ns_path),
    };
    let host_ip = ctx.cfg.node_ip.to_string();
    let (disk, memory) = ctx.volume_dirs(&rec.uid);
    let places = volumes::Places { disk: &disk, memory: memory.as_deref() };
    let vols = match volumes::prepare(&ctx.api, pod, places, rec.ip.as_deref().unwrap_or(""), &host_ip).await
    {
        Ok(v) => v,
        Err(e) => {
            record_event(ctx, rec, "Warning", "FailedMount", format!("MountVolume.SetUp failed: {e}"));
            return Err(("CreateContainerConfigError", e));
        }
    };
    crate::blocking(|| prepare(ctx, pod, rec, c, (image, config), id, attempt, resolved, (&sandbox, &vols)))?;
    let (bundle, log) = (ctx.bundle_dir(id), ctx.log_path(rec, &c.name, attempt));
    let opts = tug_shim::supervisor::Options {
        id: id.to_string(),
        bundle,
        runtime_root: ctx.cfg.runtime_root(),
        state_root: ctx.cfg.supervisors(),
        log_path: log,
        log_max_size: tug_shim::supervisor::logs::DEFAULT_MAX_SIZE,
        log_keep: tug_shim::supervisor::logs::DEFAULT_KEEP,
        line_max: tug_shim::supervisor::logs::DEFAULT_LINE_MAX,
        // `stdin: true` (what `kubectl run -i` asks): the container reads what attached
        // clients send.
        stdin: c.stdin.unwrap_or(false),
        shim: ctx.cfg.shim.clone(),
        join_cgroup: ctx.supervisor_cgroup.clone(),
    };
    tokio::task::spawn_blocking(move || tug_shim::supervisor::launch(&opts))
        .await
        .map_err(|e| ("RunContainerError", e.to_string()))?
        .map_err(|e| ("RunContainerError", e))?;
    Ok(())
}

/// The blocking part of a start: the container's snapshot, its OCI spec in a bundle, its
/// log directory.
#[allow(clippy::too_many_arguments)]
fn prepare(
    ctx: &Ctx,
    pod: &Pod,
    rec: &PodRecord,
    c: &Container,
    (image, config): (&tug_images::ImageRecord, &tug_images::manifest::ImageConfig),
    id: &str,
    attempt: u32,
    resolved: &[(String, String)],
    (sandbox, vols): (&spec::Sandbox, &std::collections::BTreeMap<String, PathBuf>),
) -> Result<(), (&'static str, String)> {
    let _ = ctx.store.remove_snapshot(id);
    let rootfs = ctx.store.prepare(id, image).map_err(|e| ("CreateContainerError", e))?;
    // A claim mounted `readOnly` in the pod's volume is read-only in every container, and so
    // are the volumes the agent writes (as in Kubernetes): nothing a container does there can
    // steer the agent's next update of them.
    let names = |f: fn(&tug_api::kinds::pod::Volume) -> bool| -> Vec<String> {
        pod.spec.volumes.iter().filter(|v| f(v)).map(|v| v.name.clone()).collect()
    };
    let read_only = names(|v| {
        v.claim("").is_some_and(|(_, read_only)| read_only)
            || v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some()
    });
    let agent_made = names(|v| v.host_path.is_none() && v.claim("").is_none());
    let vmounts = volumes::mounts(c, vols, (&read_only, &agent_made), &ctx.pod_dir(&rec.uid), resolved)
        .map_err(|e| ("CreateContainerConfigError", e))?;
    let seccomp = |caps: &[String], localhost: Option<&str>| match localhost {
        None => Ok(tug_shim::seccomp::profile::default_profile(caps)),
        // Kubelet's habit: `<root>/seccomp/<localhostProfile>`, a path the API checked is
        // relative and without `..`, in a directory only root writes.
        Some(file) => {
            let path = ctx.cfg.state_dir.join("seccomp").join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("seccomp profile {file:?} ({}): {e}", path.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("seccomp profile {file:?} ({}): {e}", path.display()))
        }
    };
    let oci = spec::oci_spec(pod, c, config, &rootfs, sandbox, id, resolved, vmounts, seccomp)
        .map_err(|e| ("CreateContainerConfigError", e))?;
    let bundle = ctx.bundle_dir(id);
    // What the runtime would refuse (confinement it cannot give, say) is refused here, with
    // its message, before anything starts.
    tug_shim::plan::check(&oci, &bundle).map_err(|e| ("CreateContainerError", e))?;
    std::fs::create_dir_all(&bundle)
        .map_err(|e| ("CreateContainerError", format!("{}: {e}", bundle.display())))?;
    // The spec's environment carries Secret values: readable by root alone.
    tug_config::private::write(&bundle.join("config.json"), oci.to_string().as_bytes())
        .map_err(|e| ("CreateContainerError", format!("{}: {e}", bundle.display())))?;
    let log = ctx.log_path(rec, &c.name, attempt);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).map_err(|e| ("CreateContainerError", format!("{}: {e}", d.display())))?;
        // A crash-looping container keeps its current and its previous run's logs, as
        // kubelet does (`logs --previous`); older runs' files go.
        let names = std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.file_name());
        for name in stale_logs(names.filter_map(|n| n.into_string().ok()), attempt) {
            let _ = std::fs::remove_file(d.join(name));
        }
    }
    Ok(())
}

/// The log files (`<attempt>.log`, rotated `<attempt>.log.<n>`) of runs before the previous
/// one, when run `attempt` starts.
/// A duration as kubelet prints it: Go's `Duration.String()` of the value truncated to
/// milliseconds (`512ms`, `1.234s`, `2m3.5s`).
pub fn go_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut seconds = s.to_string();
    if frac > 0 {
        seconds += format!(".{frac:03}").trim_end_matches('0');
    }
    match (h, m) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

fn stale_logs(names: impl Iterator<Item = String>, attempt: u32) -> Vec<String> {
    names
        .filter(|n| {
            let run = n.split_once(".log").and_then(|(run, rest)| {
                (rest.is_empty() || rest.strip_prefix('.').is_some_and(|r| r.parse::<u32>().is_ok()))
                    .then(|| run.parse::<u32>().ok())
                    .flatten()
            });
            run.is_some_and(|r| r + 1 < attempt)
        })
        .collect()
}

/// Waits (on a blocking thread) for a container to end, then wakes its worker.
fn spawn_waiter(ctx: &Arc<Ctx>, id: &str, tx: &mpsc::UnboundedSender<Msg>) {
    let socket = ctx.supervisor_socket(id);
    let tx = tx.clone();
    tokio::spawn(async move {
        let _ = wait_exit_async(&socket).await;
        let _ = tx.send(Msg::Tick);
    });
}

/// Asks a supervisor to answer when its container ends, and waits for the answer (or the
/// supervisor's end) without holding a thread: a node's hundred containers are a hundred
/// sockets, not a hundred blocked threads and their stacks.
async fn wait_exit_async(socket: &std::path::Path) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut line = String::new();
    for req in [Request::Hello { version: sup::VERSION }, Request::Wait] {
        let mut bytes = Vec::new();
        sup::send(&mut bytes, &req)?;
        w.write_all(&bytes).await?;
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            break;
        }
    }
    Ok(())
}

/// Stops one running container: its stop signal, `grace` to exit, then SIGKILL to all of it.
async fn stop(ctx: &Ctx, id: &str, signal: Option<&str>, grace: Duration) {
    let socket = ctx.supervisor_socket(id);
    let sig = signal
        .and_then(|s| {
            let s = s.trim_start_matches("SIG");
            nix::sys::signal::Signal::iterator().find(|x| x.as_str().trim_start_matches("SIG") == s)
        })
        .unwrap_or(nix::sys::signal::Signal::SIGTERM);
    if supervisor_call(&socket, &Request::Kill { signal: sig as i32, all: false }).is_err() {
        return;
    }
    if wait_exit(&socket, grace).await {
        return;
    }
    let _ = supervisor_call(&socket, &Request::Kill { signal: libc::SIGKILL, all: true });
    wait_exit(&socket, Duration::from_secs(5)).await;
}

/// Waits for the container's exit (the supervisor's `Wait` answers when it happens) for at
/// most `limit`; whether it ended (or there is nothing left to wait for). The wait is a
/// socket on the runtime, not a blocked thread: a hundred pods stopping at once each wait
/// their whole grace period together.
async fn wait_exit(socket: &std::path::Path, limit: Duration) -> bool {
    tokio::time::timeout(limit.max(Duration::from_millis(1)), wait_exit_async(socket)).await.is_ok()
}

/// In-place resize: a running container whose spec's cpu or memory differs from what it runs
/// with gets the new cgroup limits through its supervisor, without a restart — or is
/// restarted where its `resizePolicy` says `RestartContainer` for a resource that changed. A
/// request beyond the node is `Infeasible`; a memory limit below what the container uses now
/// is `Deferred` (not applied, rather than OOM-killed), retried each sync.
async fn resize(ctx: &Ctx, pod: &Pod, rec: &mut PodRecord) {
    use tug_api::kinds::pod::ResourceRequirements;
    let mut pending: Option<(String, String)> = None;
    // Read only when a container's resources changed: a pod's every sync comes here, and the
    // node's facts (a walk of /proc among them) and every pod's usage cost more than the
    // comparison.
    let facts = std::cell::OnceCell::new();
    let usage = std::cell::OnceCell::new();
    for c in &pod.spec.containers {
        let Some(r) = rec.containers.get_mut(&c.name) else { continue };
        if !matches!(r.state, State::Running { .. }) {
            continue;
        }
        let want = c.resources.clone().unwrap_or_default();
        let have = r.applied.clone().unwrap_or_else(|| want.clone());
        if r.applied.is_none() {
            r.applied = Some(want.clone());
            continue;
        }
        if have == want {
            continue;
        }
        let get = |rr: &ResourceRequirements, kind: &str, res: &str| {
            let m = if kind == "requests" { &rr.requests } else { &rr.limits };
            m.get(res).map(|q| if res == "cpu" { q.millis() } else { q.value() })
        };
        let changed = |res: &str| {
            get(&have, "requests", res) != get(&want, "requests", res)
                || get(&have, "limits", res) != get(&want, "limits", res)
        };
        let cpu_request = get(&want, "requests", "cpu").unwrap_or(0);
        let mem_request = get(&want, "requests", "memory").unwrap_or(0);
        let facts = facts.get_or_init(|| crate::blocking(|| crate::node::facts(&ctx.cfg.state_dir)));
        if cpu_request > u128::from(facts.cpus) * 1000 || mem_request > u128::from(facts.memory_bytes) {
            pending = Some((
                "Infeasible".into(),
                format!(
                    "Node didn't have enough capacity: container {} asks for more than the node has",
                    c.name
                ),
            ));
            continue;
        }
        // What the node has left beside its other pods (the scheduler's accounting).
        let grows =
            |res: &str| get(&want, "requests", res).unwrap_or(0) > get(&have, "requests", res).unwrap_or(0);
        if (grows("cpu") || grows("memory")) && !fits_beside_others(ctx, pod).await {
            pending = Some((
                "Deferred".into(),
                format!(
                    "Node didn't have enough resources now: the node's other pods hold them (container {})",
                    c.name
                ),
            ));
            continue;
        }
        if let Some(limit) = get(&want, "limits", "memory").filter(|_| changed("memory")) {
            let used = usage.get_or_init(|| ctx.stats.summary()).as_ref().and_then(|s| {
                s.pods
                    .iter()
                    .find(|p| p.namespace == rec.namespace && p.name == rec.name)
                    .and_then(|p| p.containers.iter().find(|x| x.name == c.name))
                    .map(|x| u128::from(x.usage.memory_working_set_bytes))
            });
            if used.is_some_and(|u| limit < u) {
                pending = Some((
                    "Deferred".into(),
                    format!("container {} uses more memory than the new limit: the decrease waits", c.name),
                ));
                continue;
            }
        }
        let Some(id) = r.id.clone() else { continue };
        let restart = ["cpu", "memory"].iter().any(|res| changed(res) && c.resize_restarts(res));
        if restart {
            // Stopped here; the restart that follows starts it with the new resources.
            record_event(
                ctx,
                rec,
                "Normal",
                "Killing",
                format!("Container {} resized: restarting it (resizePolicy RestartContainer)", c.name),
            );
            let r = rec.containers.get_mut(&c.name).expect("entry");
            stop(ctx, &id, r.stop_signal.clone().as_deref(), Duration::from_secs(2)).await;
            continue;
        }
        let resources = spec::resources(c);
        let socket = ctx.supervisor_socket(&id);
        let applied = crate::blocking(move || -> Result<(), String> {
            let mut client = sup::Client::connect(&socket).map_err(|e| e.to_string())?;
            match client.call(&sup::Request::Update { resources }).map_err(|e| e.to_string())? {
                sup::Reply::Ok => Ok(()),
                other => Err(format!("unexpected reply {other:?}")),
            }
        });
        match applied {
            Ok(()) => {
                tracing::info!(
                    "tug-agent: pod {}/{}: container {} resized in place",
                    rec.namespace,
                    rec.name,
                    c.name
                );
                if let Some(r) = rec.containers.get_mut(&c.name) {
                    r.applied = Some(want);
                }
            }
            Err(e) => pending = Some(("Deferred".into(), format!("resizing container {}: {e}", c.name))),
        }
    }
    rec.resize_pending = pending;
}

/// Whether `pod`'s requests, as its spec says now, fit in its node's allocatable beside the
/// requests of the node's other running pods. Asked of the API (an agent's own records do
/// not hold other pods' specs); when it cannot answer, the resize goes ahead.
async fn fits_beside_others(ctx: &Ctx, pod: &Pod) -> bool {
    let node = match ctx.api.get(&format!("/api/v1/nodes/{}", ctx.cfg.node_name)).await {
        Ok(n) => n,
        Err(_) => return true,
    };
    let pods =
        match ctx.api.get(&format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", ctx.cfg.node_name)).await
        {
            Ok(p) => p,
            Err(_) => return true,
        };
    let amount = |v: &serde_json::Value, cpu: bool| {
        v.as_str()
            .and_then(|q| tug_api::quantity::Quantity::parse(q).ok())
            .map_or(0, |q| if cpu { q.millis() } else { q.value() })
    };
    let sum = |p: &serde_json::Value, cpu: bool| -> u128 {
        let res = if cpu { "cpu" } else { "memory" };
        p["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| amount(&c["resources"]["requests"][res], cpu))
            .sum()
    };
    let me = serde_json::to_value(pod).unwrap_or_default();
    let others = pods["items"].as_array().cloned().unwrap_or_default();
    let others = others.iter().filter(|p| {
        p["metadata"]["uid"] != me["metadata"]["uid"]
            && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let (mut cpu, mut mem) = (sum(&me, true), sum(&me, false));
    for p in others {
        cpu += sum(p, true);
        mem += sum(p, false);
    }
    let alloc = &node["status"]["allocatable"];
    cpu <= amount(&alloc["cpu"], true) && mem <= amount(&alloc["memory"], false)
}

/// Node-pressure eviction of this pod: recorded (so no container starts again and the status
/// says `Failed`/`Evicted`), told as kubelet's `Evicted` event, its containers killed at once.
async fn evict(ctx: &Ctx, rec: &mut PodRecord, message: String) {
    if rec.uid.is_empty() || rec.evicted.is_some() {
        return;
    }
    record_event(ctx, rec, "Warning", "Evicted", message.clone());
    rec.evicted = Some(message);
    let stops = rec.containers.values().filter_map(|c| {
        let id = c.id.clone()?;
        matches!(c.state, State::Running { .. } | State::Starting).then_some((id, c.stop_signal.clone()))
    });
    futures::future::join_all(
        stops.map(|(id, sig)| async move { stop(ctx, &id, sig.as_deref(), Duration::ZERO).await }),
    )
    .await;
}

/// Everything of the pod goes: containers (gracefully — the app containers all at once,
/// then the sidecars last first, within one grace period), network, files.
async fn tear_down(ctx: &Ctx, pod: Option<&Pod>, rec: &PodRecord) {
    let grace = Duration::from_secs(u64::try_from(rec.grace_seconds.unwrap_or(30)).unwrap_or(30));
    let deadline = std::time::Instant::now() + grace;
    let running: Vec<&String> = rec
        .containers
        .iter()
        .filter(|(_, c)| matches!(c.state, State::Running { .. } | State::Starting))
        .map(|(n, _)| n)
        .collect();
    for name in &running {
        record_event(ctx, rec, "Normal", "Killing", format!("Stopping container {name}"));
    }
    let sidecars: Vec<&String> = pod
        .map(|p| p.spec.init_containers.iter().rev().filter(|c| c.is_sidecar()).map(|c| &c.name).collect())
        .unwrap_or_default();
    let sidecars: Vec<&String> = sidecars.into_iter().filter(|n| running.contains(n)).collect();
    let others = running.iter().filter(|n| !sidecars.contains(n));
    futures::future::join_all(others.map(|name| kill(ctx, pod, rec, name, grace))).await;
    for name in sidecars {
        kill(ctx, pod, rec, name, deadline.saturating_duration_since(std::time::Instant::now())).await;
    }
    for c in rec.containers.values() {
        if let Some(id) = &c.id {
            remove_container(ctx, id);
        }
    }
    if let Some(p) = &rec.pause {
        p.kill();
    }
    let host_network = rec.ip.as_deref() == Some(ctx.cfg.node_ip.to_string().as_str());
    if host_network {
        // Nothing of the node's network was the pod's.
    } else if let Err(e) = ctx.net.remove_pod(&short(&rec.uid)).await {
        tracing::warn!("tug-agent: pod {}/{}: removing its network: {e}", rec.namespace, rec.name);
    }
    // The pod's own cgroup (its containers' went with them), in every hierarchy.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for h in tug_shim::cgroups::layout::Layout::parse(&mountinfo, &own).hierarchies {
        let cg = ctx.cgroup(&rec.uid);
        let _ = match cg.strip_prefix('/') {
            // An absolute path is under the hierarchy's mount, not the agent's own cgroup.
            Some(abs) => std::fs::remove_dir(h.mount_point.join(abs)),
            None => std::fs::remove_dir(h.own_dir().join(&cg)),
        };
    }
    volumes::unmount_all(&ctx.pod_dir(&rec.uid));
    volumes::tokens::forget(&rec.uid);
    if let Err(e) = volumes::remove_pod_dir(&ctx.pod_dir(&rec.uid)) {
        tracing::warn!("tug-agent: pod {}/{}: {e}", rec.namespace, rec.name);
    }
    // The record last: a tear-down cut short is finished by the next agent.
    let _ = std::fs::remove_dir_all(ctx.sandbox_dir(&rec.uid));
    let _ = std::fs::remove_dir_all(
        ctx.cfg.logs_dir().join(format!("{}_{}_{}", rec.namespace, rec.name, rec.uid)),
    );
}

/// The node's final delete of a Terminating pod whose containers are gone (grace 0, this uid
/// only): the pod leaves the API. Retried while the API cannot be reached; a pod deleted or
/// replaced meanwhile needs nothing more.
async fn confirm_deleted(ctx: &Ctx, rec: &PodRecord) {
    let path = format!("{}?gracePeriodSeconds=0", api::core_path(&rec.namespace, "pods", &rec.name));
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
        "preconditions": {"uid": rec.uid},
    });
    for attempt in 0..30u32 {
        match api::delete(&ctx.api, &path, &body).await {
            Ok(()) => return,
            Err(tug_client::CallError::Server(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                tracing::warn!("tug-agent: pod {}/{}: confirming its deletion: {e}", rec.namespace, rec.name);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1).min(10))).await;
            }
        }
    }
}

/// Writes the pod's status if it changed; returns the object the server now has.
async fn write_status(ctx: &Ctx, pod: &Pod, rec: &PodRecord, last: &mut Value) -> Option<Box<Pod>> {
    let old = pod.status.as_ref().map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or_default();
    let status = plan::pod_status(&pod.spec, rec, &ctx.cfg.node_ip.to_string(), &old, now_ms());
    if &status == last {
        return None;
    }
    let ns = rec.namespace.clone();
    let path = format!("{}/status", api::core_path(&ns, "pods", &rec.name));
    // The object the worker holds (from the watch or the last write) carries the revision;
    // only a conflict costs a read of the current one.
    let mut held = serde_json::to_value(pod).ok();
    for _ in 0..3 {
        let mut obj = match held.take() {
            Some(o) => o,
            None => match api::get(&ctx.api, &api::core_path(&ns, "pods", &rec.name)).await {
                Ok(Some(o)) => o,
                _ => return None,
            },
        };
        if obj["metadata"]["uid"].as_str() != Some(rec.uid.as_str()) {
            return None;
        }
        obj["status"] = status.clone();
        match api::put(&ctx.api, &path, &obj).await {
            Ok(v) => {
                *last = status;
                return serde_json::from_value(v).ok().map(Box::new);
            }
            Err(e) if api::is_conflict(&e) => continue,
            Err(e) => {
                tracing::warn!("tug-agent: pod {ns}/{}: writing status: {e}", rec.name);
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{go_duration, stale_logs};
    use std::time::Duration;

    #[test]
    fn durations_print_as_go_prints_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0s");
        assert_eq!(go_duration(Duration::from_micros(1_512_900)), "1.512s");
        assert_eq!(go_duration(ms(512)), "512ms");
        assert_eq!(go_duration(ms(2000)), "2s");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(123_450)), "2m3.45s");
        assert_eq!(go_duration(ms(3_723_000)), "1h2m3s");
    }

    #[test]
    fn only_the_current_and_previous_runs_logs_stay() {
        let names = ["1.log", "1.log.1", "2.log", "2.log.3", "3.log", "4.log", "notes", "x.log", "2.log.bak"];
        let mut stale = stale_logs(names.iter().map(|s| s.to_string()), 4);
        stale.sort();
        assert_eq!(stale, ["1.log", "1.log.1", "2.log", "2.log.3"]);
        assert!(stale_logs(names.iter().map(|s| s.to_string()), 1).is_empty());
    }
}
