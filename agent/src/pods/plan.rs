//! The pod worker's decisions, purely: `(pod spec, what runs, now) → actions`, and the pod's
//! status from the same inputs. The worker applies the actions and asks again; nothing here
//! touches the host.

use super::record::{ContainerRecord, PodRecord, State, Terminated};
use serde_json::{Value, json};
use tug_api::kinds::pod::PodSpec;

/// What the worker should do next for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make the pod's network namespace and files.
    Sandbox,
    /// Start (or start again) this container.
    Start(String),
    /// Stop this container (a sidecar, once the app containers are done for good).
    Stop(String),
    /// Stop everything and remove the pod from the node.
    TearDown,
    /// Nothing to do before this time (unix ms): a back-off ends.
    WakeAt(u64),
}

/// Kubernetes' container restart back-off: the first restart at once, then 10 s doubling to
/// 5 minutes; a container that ran 10 minutes starts over.
pub fn backoff_ms(step: u32) -> u64 {
    if step == 0 {
        return 0;
    }
    (10_000u64 << (step - 1).min(5)).min(300_000)
}

pub const BACKOFF_RESET_MS: u64 = 600_000;

fn policy(spec: &PodSpec) -> &str {
    spec.restart_policy.as_deref().unwrap_or("Always")
}

/// What part a container plays in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An init container that runs to completion.
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    App,
}

/// The role of the container named `name`.
pub fn role(spec: &PodSpec, name: &str) -> Role {
    match spec.init_containers.iter().find(|c| c.name == name) {
        Some(c) if c.is_sidecar() => Role::Sidecar,
        Some(_) => Role::Init,
        None => Role::App,
    }
}

/// Whether a container that ended like this starts again under the pod's policy (init
/// containers restart on failure unless the policy is Never; sidecars always do).
pub fn restarts(spec: &PodSpec, role: Role, t: &Terminated) -> bool {
    match (role, policy(spec)) {
        (Role::Sidecar, _) => true,
        (_, "Never") => false,
        (_, "OnFailure") | (Role::Init, _) => t.exit_code != 0,
        _ => true,
    }
}

/// Whether a running container has started: its startup probe (if any) succeeded.
fn started(c: &tug_api::kinds::pod::Container, r: Option<&ContainerRecord>) -> bool {
    r.is_some_and(|r| {
        matches!(r.state, State::Running { .. }) && r.probed.map_or(c.startup_probe.is_none(), |p| p.0)
    })
}

/// Whether a sidecar has done its part of the pod's start: it started once.
fn sidecar_up(r: Option<&ContainerRecord>) -> bool {
    r.is_some_and(|r| {
        r.restart_count > 0
            || r.last.is_some()
            || matches!(r.state, State::Running { .. } | State::Terminated(_))
    })
}

/// Whether every app container has ended for good (they will not start again).
pub fn apps_done(spec: &PodSpec, rec: &PodRecord) -> bool {
    spec.containers.iter().all(|c| {
        matches!(rec.containers.get(&c.name).map(|r| &r.state),
            Some(State::Terminated(t)) if !restarts(spec, Role::App, t))
    })
}

/// One container's next step: start now, wait until, or nothing.
fn next(spec: &PodSpec, c: Option<&ContainerRecord>, role: Role, now: u64) -> Option<Action> {
    let due = |c: &ContainerRecord| c.backoff_until.is_none_or(|t| now >= t);
    match c.map(|c| (&c.state, c)) {
        None | Some((State::New, _)) => Some(Action::Start(String::new())),
        Some((State::Starting | State::Running { .. }, _)) => None,
        Some((State::Waiting { .. }, c)) => {
            if due(c) {
                Some(Action::Start(String::new()))
            } else {
                c.backoff_until.map(Action::WakeAt)
            }
        }
        Some((State::Terminated(t), c)) => {
            if !restarts(spec, role, t) {
                None
            } else if due(c) {
                Some(Action::Start(String::new()))
            } else {
                c.backoff_until.map(Action::WakeAt)
            }
        }
    }
}

/// The actions for a pod: `deleted` when its object is gone from the API (or being deleted).
pub fn plan(spec: &PodSpec, rec: &PodRecord, deleted: bool, now: u64) -> Vec<Action> {
    if deleted {
        return vec![Action::TearDown];
    }
    if rec.evicted.is_some() {
        return Vec::new();
    }
    if rec.ip.is_none() {
        return vec![Action::Sandbox];
    }
    // Init containers one at a time, in order — a sidecar counts once it has started — and
    // the app containers only after all of them. Once an app container has been started the
    // pod is past this, for good.
    let initialized = spec.containers.iter().any(|c| rec.containers.contains_key(&c.name));
    for c in spec.init_containers.iter().filter(|_| !initialized) {
        let r = rec.containers.get(&c.name);
        let role = if c.is_sidecar() { Role::Sidecar } else { Role::Init };
        match (role, r) {
            (Role::Sidecar, r) if started(c, r) => continue,
            (Role::Init, Some(ContainerRecord { state: State::Terminated(t), .. })) if t.exit_code == 0 => {
                continue;
            }
            _ => {}
        }
        return match next(spec, r, role, now) {
            Some(Action::Start(_)) => vec![Action::Start(c.name.clone())],
            Some(a) => vec![a],
            None => vec![],
        };
    }
    let mut out = Vec::new();
    let mut wake: Option<u64> = None;
    // Sidecars keep running beside the app containers and stop, last first, after them.
    let done = apps_done(spec, rec);
    for c in spec.init_containers.iter().rev().filter(|c| c.is_sidecar()) {
        let r = rec.containers.get(&c.name);
        if done {
            if r.is_some_and(|r| matches!(r.state, State::Running { .. } | State::Starting)) {
                out.push(Action::Stop(c.name.clone()));
            }
            continue;
        }
        match next(spec, r, Role::Sidecar, now) {
            Some(Action::Start(_)) => out.push(Action::Start(c.name.clone())),
            Some(Action::WakeAt(t)) => wake = Some(wake.map_or(t, |w| w.min(t))),
            _ => {}
        }
    }
    for c in &spec.containers {
        match next(spec, rec.containers.get(&c.name), Role::App, now) {
            Some(Action::Start(_)) => out.push(Action::Start(c.name.clone())),
            Some(Action::WakeAt(t)) => wake = Some(wake.map_or(t, |w| w.min(t))),
            _ => {}
        }
    }
    out.extend(wake.map(Action::WakeAt));
    out
}

/// Records that a container ended: its state, the back-off before it may start again, and
/// the restart it will count.
pub fn ended(c: &mut ContainerRecord, t: Terminated, ran_ms: u64, finished_ms: u64) {
    if ran_ms >= BACKOFF_RESET_MS {
        c.backoff_step = 0;
    }
    c.backoff_until = Some(finished_ms + backoff_ms(c.backoff_step));
    c.backoff_step = (c.backoff_step + 1).min(10);
    c.state = State::Terminated(t);
}

/// A start that failed before the container ran (image pull, bad spec): `Waiting` with the
/// reason, retried after the back-off.
pub fn failed_start(c: &mut ContainerRecord, reason: &str, message: &str, now: u64) {
    c.backoff_step = c.backoff_step.max(1);
    c.backoff_until = Some(now + backoff_ms(c.backoff_step));
    c.backoff_step = (c.backoff_step + 1).min(10);
    // A pull that failed before says ImagePullBackOff from the second time on, as kubelet does.
    let reason = match (&c.state, reason) {
        (State::Waiting { reason: r, .. }, "ErrImagePull")
            if r == "ErrImagePull" || r == "ImagePullBackOff" =>
        {
            "ImagePullBackOff"
        }
        _ => reason,
    };
    c.state = State::Waiting { reason: reason.to_string(), message: message.to_string() };
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
    });
    if let Some(s) = t.signal {
        v["signal"] = s.into();
    }
    v
}

/// A container's status in Kubernetes' shape.
/// `restarting`: the pod's policy starts this container again once it has ended.
pub fn container_status(
    name: &str,
    image: &str,
    c: Option<&ContainerRecord>,
    restarting: bool,
    now: u64,
) -> Value {
    let Some(c) = c else {
        return json!({"name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "started": false, "state": {"waiting": {"reason": "ContainerCreating"}}});
    };
    let in_backoff = c.backoff_until.is_some_and(|t| now < t);
    let state = match &c.state {
        State::New | State::Starting => json!({"waiting": {"reason": "ContainerCreating"}}),
        State::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(_) if restarting && in_backoff => {
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {name}")}})
        }
        State::Terminated(t) => json!({"terminated": terminated_json(t)}),
    };
    let last = match (&c.state, &c.last) {
        (State::Terminated(t), _) if state.get("waiting").is_some() => {
            json!({"terminated": terminated_json(t)})
        }
        (_, Some(t)) => json!({"terminated": terminated_json(t)}),
        _ => json!({}),
    };
    let running = matches!(c.state, State::Running { .. });
    let (started, ready) = c.probed.unwrap_or((true, true));
    let mut v = json!({
        "name": name,
        "image": image,
        "imageID": c.image_id,
        "ready": running && started && ready,
        "restartCount": c.restart_count,
        "started": running && started,
        "state": state,
        "lastState": last,
    });
    if let Some(id) = &c.id {
        v["containerID"] = format!("tug://{id}").into();
    }
    // What the container runs with (an in-place resize changes it without a restart).
    if let Some(r) = &c.applied {
        v["resources"] = serde_json::to_value(r).unwrap_or_default();
        if !r.requests.is_empty() {
            v["allocatedResources"] = serde_json::to_value(&r.requests).unwrap_or_default();
        }
    }
    v
}

/// A pod condition. Its `lastTransitionTime` is when its status last changed: kept from the
/// `old` status while the status is the same, `now` when it changes (or first appears).
fn cond(t: &str, ok: bool, reason: Option<&str>, old: &Value, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let previous = old["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == t);
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].as_str().unwrap_or(now).to_string(),
        _ => now.to_string(),
    };
    let mut v = json!({"type": t, "status": status, "lastTransitionTime": since});
    if let Some(r) = reason.filter(|_| !ok) {
        v["reason"] = r.into();
    }
    v
}

/// Whether the pod's init containers have done their part: each ran to success, each
/// sidecar started.
fn inits_done(spec: &PodSpec, rec: &PodRecord) -> bool {
    spec.init_containers.iter().all(|c| {
        let r = rec.containers.get(&c.name);
        if c.is_sidecar() {
            sidecar_up(r)
        } else {
            matches!(r.map(|r| &r.state), Some(State::Terminated(t)) if t.exit_code == 0)
        }
    })
}

/// The pod's phase: Pending until every init container succeeded (every sidecar started)
/// and the app containers started; Succeeded or Failed once every app container ended for
/// good (sidecars do not count); Running otherwise.
pub fn phase(spec: &PodSpec, rec: &PodRecord) -> &'static str {
    let get = |n: &str| rec.containers.get(n);
    for c in spec.init_containers.iter().filter(|c| !c.is_sidecar()) {
        match get(&c.name).map(|r| &r.state) {
            Some(State::Terminated(t)) if t.exit_code == 0 => {}
            Some(State::Terminated(t)) if !restarts(spec, Role::Init, t) => return "Failed",
            _ => return "Pending",
        }
    }
    if !inits_done(spec, rec) {
        return "Pending";
    }
    let states: Vec<Option<&State>> =
        spec.containers.iter().map(|c| get(&c.name).map(|r| &r.state)).collect();
    if states.iter().all(|s| matches!(s, None | Some(State::New | State::Starting | State::Waiting { .. }))) {
        return "Pending";
    }
    let finished: Vec<&Terminated> = states
        .iter()
        .filter_map(|s| match s {
            Some(State::Terminated(t)) if !restarts(spec, Role::App, t) => Some(t),
            _ => None,
        })
        .collect();
    if finished.len() == spec.containers.len() {
        return if finished.iter().all(|t| t.exit_code == 0) { "Succeeded" } else { "Failed" };
    }
    "Running"
}

/// The pod's status (the scheduler's PodScheduled condition is kept from `old`).
pub fn pod_status(spec: &PodSpec, rec: &PodRecord, host_ip: &str, old: &Value, now: u64) -> Value {
    let stamp = super::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now));
    let initialized = inits_done(spec, rec);
    let status = |c: &tug_api::kinds::pod::Container, role: Role| {
        let mut r = rec.containers.get(&c.name).cloned();
        // Until its prober reports, a container with a startup or readiness probe is neither
        // started nor ready (one with only a liveness probe is both).
        if let Some(r) = r.as_mut()
            && r.probed.is_none()
        {
            r.probed =
                Some((c.startup_probe.is_none(), c.startup_probe.is_none() && c.readiness_probe.is_none()));
        }
        let restarting = rec.evicted.is_none()
            && !(role == Role::Sidecar && apps_done(spec, rec))
            && matches!(r.as_ref().map(|r| &r.state), Some(State::Terminated(t)) if restarts(spec, role, t));
        container_status(&c.name, &c.image, r.as_ref(), restarting, now)
    };
    let statuses: Vec<Value> = spec.containers.iter().map(|c| status(c, Role::App)).collect();
    let init_statuses: Vec<Value> = spec
        .init_containers
        .iter()
        .map(|c| status(c, if c.is_sidecar() { Role::Sidecar } else { Role::Init }))
        .collect();
    // Sidecars' readiness counts towards the pod's, as Kubernetes has it.
    let sidecars_ready =
        spec.init_containers.iter().zip(&init_statuses).all(|(c, s)| !c.is_sidecar() || s["ready"] == true);
    let ready =
        initialized && rec.evicted.is_none() && sidecars_ready && statuses.iter().all(|s| s["ready"] == true);
    // Conditions others own (the scheduler's PodScheduled and DisruptionTarget) are kept.
    let mut conditions: Vec<Value> = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            !matches!(
                c["type"].as_str(),
                Some(
                    "Initialized" | "ContainersReady" | "Ready" | "PodResizePending" | "PodResizeInProgress"
                )
            )
        })
        .cloned()
        .collect();
    // A resize accepted but not yet in force (a container restarting for it).
    let resizing = rec.resize_pending.is_none()
        && spec.containers.iter().any(|c| {
            rec.containers
                .get(&c.name)
                .and_then(|r| r.applied.as_ref())
                .is_some_and(|a| Some(a) != c.resources.as_ref())
        });
    if resizing {
        let was =
            old["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "PodResizeInProgress");
        let since = was.and_then(|c| c["lastTransitionTime"].as_str()).unwrap_or(&stamp).to_string();
        conditions
            .push(json!({"type": "PodResizeInProgress", "status": "True", "lastTransitionTime": since}));
    }
    if let Some((reason, message)) = &rec.resize_pending {
        let was =
            old["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "PodResizePending");
        let since = was.and_then(|c| c["lastTransitionTime"].as_str()).unwrap_or(&stamp).to_string();
        conditions.push(json!({"type": "PodResizePending", "status": "True", "reason": reason,
            "message": message, "lastTransitionTime": since}));
    }
    conditions.push(cond("Initialized", initialized, Some("ContainersNotInitialized"), old, &stamp));
    conditions.push(cond("ContainersReady", ready, Some("ContainersNotReady"), old, &stamp));
    conditions.push(cond("Ready", ready, Some("ContainersNotReady"), old, &stamp));
    let mut v = json!({
        "phase": phase(spec, rec),
        "conditions": conditions,
        "hostIP": host_ip,
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        v["initContainerStatuses"] = init_statuses.into();
    }
    if let Some(m) = &rec.evicted {
        v["phase"] = "Failed".into();
        v["reason"] = "Evicted".into();
        v["message"] = m.clone().into();
        // The containers were killed for the eviction: their end says so (and `get pods`,
        // which prefers a container's reason to the pod's, shows Evicted, not Error).
        for s in v["containerStatuses"].as_array_mut().into_iter().flatten() {
            if s["state"]["terminated"].is_object() {
                s["state"]["terminated"]["reason"] = "Evicted".into();
            }
        }
        // Kubernetes' condition for a pod its node ended.
        if let Some(cs) = v["conditions"].as_array_mut()
            && !cs.iter().any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "TerminationByKubelet")
        {
            cs.retain(|c| c["type"] != "DisruptionTarget");
            cs.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                "message": m, "lastTransitionTime": stamp}));
        }
    }
    v["hostIPs"] = json!([{"ip": host_ip}]);
    if let Some(ip) = &rec.ip {
        v["podIP"] = ip.clone().into();
        v["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(t) = &rec.start_time {
        v["startTime"] = t.clone().into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::pod::Container;

    fn spec(policy: &str, init: &[&str], main: &[&str]) -> PodSpec {
        let c = |n: &&str| Container { name: n.to_string(), image: "img".into(), ..Default::default() };
        PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: init.iter().map(c).collect(),
            containers: main.iter().map(c).collect(),
            ..Default::default()
        }
    }

    fn rec(containers: &[(&str, State)]) -> PodRecord {
        PodRecord {
            ip: Some("10.244.0.2".into()),
            containers: containers
                .iter()
                .map(|(n, s)| (n.to_string(), ContainerRecord { state: s.clone(), ..Default::default() }))
                .collect(),
            ..Default::default()
        }
    }

    fn exited(code: i32) -> State {
        State::Terminated(Terminated { exit_code: code, reason: "x".into(), ..Default::default() })
    }

    fn running() -> State {
        State::Running { started_at: "t".into() }
    }

    #[test]
    fn a_resize_not_yet_in_force_is_in_progress_and_one_that_cannot_be_is_pending() {
        let mut s = spec("Always", &[], &["a"]);
        let want: tug_api::kinds::pod::ResourceRequirements =
            serde_json::from_value(json!({"limits": {"memory": "128Mi"}})).unwrap();
        s.containers[0].resources = Some(want.clone());
        let mut r = rec(&[("a", running())]);
        r.containers.get_mut("a").unwrap().applied =
            Some(serde_json::from_value(json!({"limits": {"memory": "64Mi"}})).unwrap());
        let types = |st: &Value| -> Vec<String> {
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["type"].as_str().unwrap().to_string())
                .collect()
        };
        let st = pod_status(&s, &r, "10.0.0.1", &json!({}), 0);
        assert!(types(&st).contains(&"PodResizeInProgress".to_string()), "{st}");
        assert_eq!(st["containerStatuses"][0]["resources"]["limits"]["memory"], "64Mi");
        r.resize_pending = Some(("Deferred".into(), "later".into()));
        let st = pod_status(&s, &r, "10.0.0.1", &json!({}), 0);
        assert!(
            types(&st).contains(&"PodResizePending".to_string())
                && !types(&st).contains(&"PodResizeInProgress".to_string())
        );
        r.resize_pending = None;
        r.containers.get_mut("a").unwrap().applied = Some(want);
        let st = pod_status(&s, &r, "10.0.0.1", &json!({}), 0);
        assert!(!types(&st).iter().any(|t| t.starts_with("PodResize")), "{st}");
    }

    #[test]
    fn an_evicted_pod_starts_nothing_and_is_failed_evicted() {
        let s = spec("Always", &[], &["a"]);
        let mut r = rec(&[("a", exited(137))]);
        r.evicted = Some("The node was low on resource: memory. ".into());
        assert_eq!(plan(&s, &r, false, 0), []);
        assert_eq!(plan(&s, &r, true, 0), [Action::TearDown]);
        let st = pod_status(&s, &r, "10.0.0.1", &json!({}), 0);
        assert_eq!((st["phase"].as_str(), st["reason"].as_str()), (Some("Failed"), Some("Evicted")));
        assert_eq!(st["message"], "The node was low on resource: memory. ");
        assert_eq!(st["containerStatuses"][0]["state"]["terminated"]["reason"], "Evicted", "{st}");
        assert_eq!(st["conditions"][3]["reason"], "TerminationByKubelet", "{st}");
    }

    #[test]
    fn sandbox_first_then_inits_in_order_then_apps() {
        let s = spec("Always", &["i1", "i2"], &["a", "b"]);
        assert_eq!(plan(&s, &PodRecord::default(), false, 0), [Action::Sandbox]);
        assert_eq!(plan(&s, &rec(&[]), false, 0), [Action::Start("i1".into())]);
        assert_eq!(plan(&s, &rec(&[("i1", running())]), false, 0), []);
        assert_eq!(plan(&s, &rec(&[("i1", exited(0))]), false, 0), [Action::Start("i2".into())]);
        assert_eq!(
            plan(&s, &rec(&[("i1", exited(0)), ("i2", exited(0))]), false, 0),
            [Action::Start("a".into()), Action::Start("b".into())]
        );
        assert_eq!(plan(&s, &rec(&[]), true, 0), [Action::TearDown]);
    }

    /// Native sidecars: started in order and counted once started, kept running (restarted)
    /// beside the app containers, stopped after them; they do not hold the phase.
    #[test]
    fn sidecars_start_in_order_keep_running_and_stop_after_the_app_containers() {
        let mut s = spec("Never", &["side", "init"], &["a"]);
        s.init_containers[0].restart_policy = Some("Always".into());
        assert_eq!(plan(&s, &rec(&[]), false, 0), [Action::Start("side".into())]);
        let up = rec(&[("side", running())]);
        assert_eq!(plan(&s, &up, false, 0), [Action::Start("init".into())], "started: the next init goes");
        assert_eq!(phase(&s, &up), "Pending");
        let apps = rec(&[("side", running()), ("init", exited(0))]);
        assert_eq!(plan(&s, &apps, false, 0), [Action::Start("a".into())]);
        // A sidecar that ends while the app runs starts again, even under Never.
        let crashed = rec(&[("side", exited(1)), ("init", exited(0)), ("a", running())]);
        assert_eq!(plan(&s, &crashed, false, 0), [Action::Start("side".into())]);
        assert_eq!(phase(&s, &crashed), "Running");
        // The app is done: the sidecar is stopped, the pod Succeeded without waiting for it.
        let done = rec(&[("side", running()), ("init", exited(0)), ("a", exited(0))]);
        assert_eq!(plan(&s, &done, false, 0), [Action::Stop("side".into())]);
        assert_eq!(phase(&s, &done), "Succeeded");
        let stopped = rec(&[("side", exited(143)), ("init", exited(0)), ("a", exited(0))]);
        assert_eq!(plan(&s, &stopped, false, 0), []);
        // A sidecar with a startup probe holds the next init until the probe passes.
        s.init_containers[0].startup_probe = Some(Default::default());
        let mut probing = rec(&[("side", running())]);
        assert_eq!(plan(&s, &probing, false, 0), []);
        probing.containers.get_mut("side").unwrap().probed = Some((true, false));
        assert_eq!(plan(&s, &probing, false, 0), [Action::Start("init".into())]);
        // Its readiness counts for the pod's.
        let st = pod_status(
            &s,
            &rec(&[("side", running()), ("init", exited(0)), ("a", running())]),
            "h",
            &json!({}),
            0,
        );
        let ready =
            st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "False", "the sidecar's startup probe has not passed: {st}");
    }

    #[test]
    fn restart_policies() {
        for (policy, code, restart) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 1, true),
            ("Never", 1, false),
        ] {
            let s = spec(policy, &[], &["a"]);
            let got = plan(&s, &rec(&[("a", exited(code))]), false, 0);
            assert_eq!(got == [Action::Start("a".into())], restart, "{policy} exit {code}");
        }
        // A failed init container with Never fails the pod.
        let s = spec("Never", &["i"], &["a"]);
        let r = rec(&[("i", exited(3))]);
        assert_eq!(plan(&s, &r, false, 0), []);
        assert_eq!(phase(&s, &r), "Failed");
    }

    #[test]
    fn backoff_doubles_to_five_minutes_and_resets() {
        assert_eq!([0, 1, 2, 3, 6, 9].map(backoff_ms), [0, 10_000, 20_000, 40_000, 300_000, 300_000]);
        let mut c = ContainerRecord::default();
        let t = Terminated { exit_code: 1, ..Default::default() };
        ended(&mut c, t.clone(), 1_000, 100_000);
        assert_eq!(c.backoff_until, Some(100_000), "the first restart is immediate");
        ended(&mut c, t.clone(), 1_000, 200_000);
        assert_eq!(c.backoff_until, Some(210_000));
        ended(&mut c, t.clone(), 1_000, 300_000);
        assert_eq!(c.backoff_until, Some(320_000));
        ended(&mut c, t, BACKOFF_RESET_MS, 400_000);
        assert_eq!(c.backoff_until, Some(400_000), "ten minutes of running resets the back-off");
        let s = spec("Always", &[], &["a"]);
        let mut r = rec(&[]);
        let mut c = ContainerRecord::default();
        ended(&mut c, Terminated { exit_code: 1, ..Default::default() }, 0, 0);
        ended(&mut c, Terminated { exit_code: 1, ..Default::default() }, 0, 5_000);
        c.restart_count = 2;
        r.containers.insert("a".into(), c.clone());
        assert_eq!(plan(&s, &r, false, 6_000), [Action::WakeAt(15_000)]);
        assert_eq!(plan(&s, &r, false, 15_000), [Action::Start("a".into())]);
        let st = container_status("a", "img", Some(&c), true, 6_000);
        assert_eq!(st["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(st["lastState"]["terminated"]["exitCode"], 1);
    }

    #[test]
    fn image_pull_errors_back_off() {
        let mut c = ContainerRecord::default();
        failed_start(&mut c, "ErrImagePull", "not found", 0);
        assert_eq!(c.state, State::Waiting { reason: "ErrImagePull".into(), message: "not found".into() });
        assert_eq!(c.backoff_until, Some(10_000));
        failed_start(&mut c, "ErrImagePull", "not found", 10_000);
        assert!(matches!(&c.state, State::Waiting { reason, .. } if reason == "ImagePullBackOff"));
        assert_eq!(c.backoff_until, Some(30_000));
    }

    #[test]
    fn phases() {
        let s = spec("OnFailure", &[], &["a", "b"]);
        assert_eq!(phase(&s, &rec(&[])), "Pending");
        assert_eq!(phase(&s, &rec(&[("a", running())])), "Running");
        assert_eq!(phase(&s, &rec(&[("a", exited(0)), ("b", exited(0))])), "Succeeded");
        assert_eq!(phase(&s, &rec(&[("a", exited(0)), ("b", exited(1))])), "Running", "b restarts");
        let never = spec("Never", &[], &["a", "b"]);
        assert_eq!(phase(&never, &rec(&[("a", exited(0)), ("b", exited(1))])), "Failed");
        let st = pod_status(&never, &rec(&[("a", running()), ("b", running())]), "10.0.0.1", &json!({}), 0);
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["podIP"], "10.244.0.2");
        assert_eq!(
            st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["status"],
            "True"
        );
    }

    /// A condition's lastTransitionTime moves when its status changes, and only then.
    #[test]
    fn conditions_keep_their_transition_time_until_they_change() {
        let s = spec("Always", &[], &["a"]);
        let ready_at = |st: &Value| {
            let c =
                st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
            (c["status"].as_str().unwrap().to_string(), c["lastTransitionTime"].as_str().unwrap().to_string())
        };
        let (t1, t2, t3) = (1_700_000_000_000, 1_700_000_060_000, 1_700_000_120_000);
        let waiting = pod_status(&s, &rec(&[]), "10.0.0.1", &json!({}), t1);
        assert_eq!(ready_at(&waiting), ("False".into(), "2023-11-14T22:13:20Z".into()));
        let still = pod_status(&s, &rec(&[]), "10.0.0.1", &waiting, t2);
        assert_eq!(ready_at(&still), ready_at(&waiting), "unchanged status, unchanged time");
        let mut up = rec(&[("a", running())]);
        up.containers.get_mut("a").unwrap().probed = Some((true, true));
        let ready = pod_status(&s, &up, "10.0.0.1", &still, t3);
        assert_eq!(ready_at(&ready), ("True".into(), "2023-11-14T22:15:20Z".into()));
    }
}
