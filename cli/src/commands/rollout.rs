//! `tug rollout status|history|undo|pause|resume|restart deployment/NAME` and
//! `tug scale KIND/NAME --replicas N`, in kubectl's words; status, history, undo and restart
//! on `daemonset/NAME` and `statefulset/NAME` (revisions are their ControllerRevisions); the
//! same verbs on
//! `rollout/NAME` (Argo Rollouts' kind) with `promote`, `abort` and `retry`, in Argo's.

use crate::client::{CallError, Client};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";
const ROLLOUT_HASH_LABEL: &str = tug_api::kinds::rollouts::HASH_LABEL;
const ROLLOUT_REVISION: &str = "rollout.argoproj.io/revision";
/// The kinds the rollout verbs work on.
const WORKLOADS: [&str; 4] = ["Deployment", "DaemonSet", "StatefulSet", "Rollout"];
/// The kinds whose revisions are ControllerRevisions.
const REVISIONED: [&str; 2] = ["DaemonSet", "StatefulSet"];
/// The kinds that pause.
const PAUSABLE: [&str; 2] = ["Deployment", "Rollout"];

/// The revision annotation and hash label of a kind's ReplicaSets.
fn revision_keys(info: &tug_api::object::KindInfo) -> (&'static str, &'static str) {
    if info.kind == "Rollout" { (ROLLOUT_REVISION, ROLLOUT_HASH_LABEL) } else { (REVISION, HASH_LABEL) }
}

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Follow a rollout until it completes (exit 0) or fails or is rolled back (exit 1).
    Status {
        /// deployment/NAME, or deployment NAME.
        target: Vec<String>,
        /// Give up after this long (0: wait for ever), e.g. 5m.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Keep following until done (--watch=false prints the state once).
        #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// The revisions of a Deployment.
    History {
        target: Vec<String>,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Go back to the previous revision (or --to-revision).
    Undo {
        target: Vec<String>,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Stop rolling out template changes (scaling still happens).
    Pause { target: Vec<String> },
    /// Roll out again after a pause.
    Resume { target: Vec<String> },
    /// Replace every pod through a new rollout (a Rollout's goes through its strategy).
    Restart { target: Vec<String> },
    /// A Rollout: go past the current pause or step (--full: skip every remaining step).
    Promote {
        /// NAME or rollout/NAME.
        target: Vec<String>,
        #[arg(long)]
        full: bool,
    },
    /// A Rollout: stop the update; traffic goes back to the stable ReplicaSet at once.
    Abort { target: Vec<String> },
    /// A Rollout: start an aborted update again from its first step.
    Retry { target: Vec<String> },
}

#[derive(Args)]
pub struct ScaleArgs {
    /// deployment/NAME, replicaset/NAME (or KIND NAME).
    target: Vec<String>,
    /// The new number of replicas.
    #[arg(long, required = true)]
    replicas: i32,
}

/// `rollout/web`, `rollout web` or `web` → the Rollout's name (Argo's CLI takes the bare name).
fn rollout_target(args: &[String]) -> Result<(&'static tug_api::object::KindInfo, String), String> {
    match args {
        [one] if !one.contains('/') => Ok((super::kind("rollouts")?, one.clone())),
        _ => target(args, &["Rollout"]),
    }
}

/// `deployment/web` or `deployment web` → the kind and name.
fn target(args: &[String], allowed: &[&str]) -> Result<(&'static tug_api::object::KindInfo, String), String> {
    let (kind, name) = match args {
        [one] => match one.split_once('/') {
            Some((k, n)) => (k.to_string(), n.to_string()),
            None => {
                return Err(format!(
                    "error: you must specify the resource as TYPE/NAME or TYPE NAME, got {one:?}"
                ));
            }
        },
        [k, n] => (k.clone(), n.clone()),
        [] => return Err("error: required resource not specified".into()),
        _ => return Err("error: one resource at a time: TYPE/NAME".into()),
    };
    let info = super::kind(&kind)?;
    if !allowed.contains(&info.kind) {
        return Err(format!(
            "error: no {} for {}s (supported: {})",
            "such operation",
            info.kind,
            allowed.join(", ")
        ));
    }
    Ok((info, name))
}

fn server_err(e: CallError) -> String {
    match e {
        CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => format!("error: {e}"),
    }
}

async fn put(client: &Client, path: &str, obj: &Value) -> Result<Value, CallError> {
    let body = serde_json::to_vec(obj).unwrap_or_default();
    client.call(Method::PUT, path, "application/json", body).await.map(|r| r.0)
}

/// Reads, changes and writes an object, again on a conflict. `change` returns false to
/// leave it as it is.
async fn update(
    client: &Client,
    path: &str,
    mut change: impl FnMut(&mut Value) -> Result<bool, String>,
) -> Result<bool, String> {
    for _ in 0..5 {
        let mut obj = client.get(path).await.map_err(server_err)?;
        if !change(&mut obj)? {
            return Ok(false);
        }
        match put(client, path, &obj).await {
            Ok(_) => return Ok(true),
            Err(CallError::Server(s)) if s.code == 409 => continue,
            Err(e) => return Err(server_err(e)),
        }
    }
    Err("error: the object kept changing; try again".into())
}

pub async fn scale(client: &Client, args: &ScaleArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let (info, name) = target(&args.target, &["Deployment", "ReplicaSet", "StatefulSet", "Rollout"])?;
    if args.replicas < 0 {
        return Err(
            "error: The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0"
                .into(),
        );
    }
    let path = info.path(Some(ns.unwrap_or("default")), Some(&name));
    update(client, &path, |o| {
        o["spec"]["replicas"] = args.replicas.into();
        Ok(true)
    })
    .await?;
    println!("{}/{name} scaled", info.qualified_singular());
    Ok(ExitCode::SUCCESS)
}

pub async fn run(client: &Client, cmd: RolloutCmd, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    match cmd {
        RolloutCmd::Status { target: t, timeout, watch } => {
            let (info, name) = target(&t, &WORKLOADS)?;
            if info.kind == "Rollout" {
                return rollout_status(client, &info.path(Some(ns), Some(&name)), &name, timeout, watch)
                    .await;
            }
            let line: StatusLine = match info.kind {
                "DaemonSet" => daemonset_status_line,
                "StatefulSet" => statefulset_status_line,
                _ => status_line,
            };
            status(client, &info.path(Some(ns), Some(&name)), &name, timeout, watch, line).await
        }
        RolloutCmd::History { target: t, revision } => {
            let (info, name) = target(&t, &WORKLOADS)?;
            history(client, info, ns, &name, revision).await
        }
        RolloutCmd::Undo { target: t, to_revision } => {
            let (info, name) = target(&t, &WORKLOADS)?;
            undo(client, info, ns, &name, to_revision).await
        }
        RolloutCmd::Promote { target: t, full } => {
            let (info, name) = rollout_target(&t)?;
            let path = info.path(Some(ns), Some(&name));
            let r = client.get(&path).await.map_err(server_err)?;
            let mut s = r["status"].clone();
            if !s.is_object() {
                s = serde_json::json!({});
            }
            let steps = r["spec"]["strategy"]["canary"]["steps"].as_array().map_or(0, Vec::len) as i64;
            let idx = s["currentStepIndex"].as_i64().unwrap_or(0);
            if full {
                s["promoteFull"] = true.into();
            } else if r["spec"]["strategy"]["canary"].is_object() && idx < steps {
                s["currentStepIndex"] = (idx + 1).into();
            }
            s["pauseConditions"] = Value::Null;
            if r["spec"]["strategy"]["canary"].is_object() {
                s["controllerPause"] = Value::Null;
            }
            set_status(client, &path, s).await?;
            if r["spec"]["paused"] == true {
                update(client, &path, |o| {
                    o["spec"]["paused"] = false.into();
                    Ok(true)
                })
                .await?;
            }
            println!("rollout '{name}' {}", if full { "fully promoted" } else { "promoted" });
            Ok(ExitCode::SUCCESS)
        }
        RolloutCmd::Abort { target: t } => {
            let (info, name) = rollout_target(&t)?;
            let path = info.path(Some(ns), Some(&name));
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            set_status(client, &path, serde_json::json!({"abort": true, "abortedAt": now})).await?;
            println!("rollout '{name}' aborted");
            Ok(ExitCode::SUCCESS)
        }
        RolloutCmd::Retry { target: t } => {
            let (info, name) = rollout_target(&t)?;
            let path = info.path(Some(ns), Some(&name));
            set_status(
                client,
                &path,
                serde_json::json!({"abort": null, "abortedAt": null, "currentStepIndex": 0, "pauseConditions": null, "controllerPause": null, "message": null}),
            )
            .await?;
            println!("rollout '{name}' restarted");
            Ok(ExitCode::SUCCESS)
        }
        RolloutCmd::Pause { target: t } | RolloutCmd::Resume { target: t } if t.is_empty() => {
            Err("error: required resource not specified".into())
        }
        RolloutCmd::Pause { target: t } => pause(client, &t, ns, true).await,
        RolloutCmd::Resume { target: t } => pause(client, &t, ns, false).await,
        RolloutCmd::Restart { target: t } => {
            let (info, name) = target(&t, &WORKLOADS)?;
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            update(client, &info.path(Some(ns), Some(&name)), |o| {
                if !o["spec"]["template"]["metadata"]["annotations"].is_object() {
                    o["spec"]["template"]["metadata"]["annotations"] = serde_json::json!({});
                }
                o["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
                    now.clone().into();
                Ok(true)
            })
            .await?;
            println!("{}/{name} restarted", info.qualified_singular());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn pause(client: &Client, t: &[String], ns: &str, pause: bool) -> Result<ExitCode, String> {
    let (info, name) = target(t, &WORKLOADS)?;
    if !PAUSABLE.contains(&info.kind) {
        let what = if pause { "pausing" } else { "resuming" };
        return Err(format!("error: {}.{} {name:?} {what} is not supported", info.plural, info.group));
    }
    let changed = update(client, &info.path(Some(ns), Some(&name)), |o| {
        if o["spec"]["paused"].as_bool().unwrap_or(false) == pause {
            return Ok(false);
        }
        o["spec"]["paused"] = pause.into();
        Ok(true)
    })
    .await?;
    let q = info.qualified_singular();
    match (changed, pause) {
        (true, true) => println!("{q}/{name} paused"),
        (true, false) => println!("{q}/{name} resumed"),
        (false, true) => {
            return Err(format!("error: {}.{} {name:?} is already paused", info.plural, info.group));
        }
        (false, false) => {
            return Err(format!("error: {}.{} {name:?} is not paused", info.plural, info.group));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// kubectl's status line for a Deployment; `Ok(true)` when done, `Err` when it failed.
pub fn status_line(d: &Value, name: &str, since_generation: i64) -> Result<(String, bool), String> {
    let conds = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
    if let Some(c) = conds.iter().find(|c| {
        c["type"] == "RolledBack"
            && c["status"] == "True"
            && c["observedGeneration"].as_i64().unwrap_or(0) > since_generation
    }) {
        return Err(format!(
            "error: deployment {name:?} was rolled back: {}",
            c["message"].as_str().unwrap_or("")
        ));
    }
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = d["status"]["observedGeneration"].as_i64().unwrap_or(0);
    if generation > observed {
        return Ok(("Waiting for deployment spec update to be observed...".into(), false));
    }
    if conds.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded") {
        return Err(format!("error: deployment {name:?} exceeded its progress deadline"));
    }
    let n = |f: &str| d["status"][f].as_i64().unwrap_or(0);
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let (updated, replicas, available) = (n("updatedReplicas"), n("replicas"), n("availableReplicas"));
    let prefix = format!("Waiting for deployment {name:?} rollout to finish");
    Ok(if updated < want {
        (format!("{prefix}: {updated} out of {want} new replicas have been updated..."), false)
    } else if replicas > updated {
        (format!("{prefix}: {} old replicas are pending termination...", replicas - updated), false)
    } else if available < updated {
        (format!("{prefix}: {available} of {updated} updated replicas are available..."), false)
    } else {
        (format!("deployment {name:?} successfully rolled out"), true)
    })
}

/// kubectl's status line for a DaemonSet (`RollingUpdate` only); `Ok(true)` when done.
pub fn daemonset_status_line(d: &Value, name: &str, _: i64) -> Result<(String, bool), String> {
    if d["spec"]["updateStrategy"]["type"].as_str().is_some_and(|t| t != "RollingUpdate") {
        return Err("error: rollout status is only available for RollingUpdate strategy type".into());
    }
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = d["status"]["observedGeneration"].as_i64().unwrap_or(0);
    if generation > observed {
        return Ok(("Waiting for daemon set spec update to be observed...".into(), false));
    }
    let n = |f: &str| d["status"][f].as_i64().unwrap_or(0);
    let (want, updated, available) =
        (n("desiredNumberScheduled"), n("updatedNumberScheduled"), n("numberAvailable"));
    let prefix = format!("Waiting for daemon set {name:?} rollout to finish");
    Ok(if updated < want {
        (format!("{prefix}: {updated} out of {want} new pods have been updated..."), false)
    } else if available < want {
        (format!("{prefix}: {available} of {want} updated pods are available..."), false)
    } else {
        (format!("daemon set {name:?} successfully rolled out"), true)
    })
}

/// kubectl's status line for a StatefulSet (`RollingUpdate` only); `Ok(true)` when done.
pub fn statefulset_status_line(s: &Value, _: &str, _: i64) -> Result<(String, bool), String> {
    let strategy = &s["spec"]["updateStrategy"];
    if strategy["type"].as_str().is_some_and(|t| t != "RollingUpdate") {
        return Err("error: rollout status is only available for RollingUpdate strategy type".into());
    }
    let generation = s["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = s["status"]["observedGeneration"].as_i64().unwrap_or(0);
    if observed == 0 || generation > observed {
        return Ok(("Waiting for statefulset spec update to be observed...".into(), false));
    }
    let n = |f: &str| s["status"][f].as_i64().unwrap_or(0);
    let replicas = s["spec"]["replicas"].as_i64().unwrap_or(1);
    if n("readyReplicas") < replicas {
        return Ok((format!("Waiting for {} pods to be ready...", replicas - n("readyReplicas")), false));
    }
    if let Some(partition) = strategy["rollingUpdate"]["partition"].as_i64() {
        let want = replicas - partition;
        if n("updatedReplicas") < want {
            return Ok((
                format!(
                    "Waiting for partitioned roll out to finish: {} out of {want} new pods have been updated...",
                    n("updatedReplicas")
                ),
                false,
            ));
        }
        return Ok((
            format!("partitioned roll out complete: {} new pods have been updated...", n("updatedReplicas")),
            true,
        ));
    }
    let (current, update) = (s["status"]["currentRevision"].as_str(), s["status"]["updateRevision"].as_str());
    if current != update {
        return Ok((
            format!(
                "waiting for statefulset rolling update to complete {} pods at revision {}...",
                n("updatedReplicas"),
                update.unwrap_or_default()
            ),
            false,
        ));
    }
    Ok((
        format!(
            "statefulset rolling update complete {} pods at revision {}...",
            n("currentReplicas"),
            current.unwrap_or_default()
        ),
        true,
    ))
}

/// A status line: `(line, done)` or the failure.
type StatusLine = fn(&Value, &str, i64) -> Result<(String, bool), String>;

async fn status(
    client: &Client,
    path: &str,
    name: &str,
    timeout: Duration,
    watch: bool,
    status_line: StatusLine,
) -> Result<ExitCode, String> {
    let start = Instant::now();
    let first = client.get(path).await.map_err(server_err)?;
    // A rollback counts against this rollout only if it happens after we started watching.
    let since = first["metadata"]["generation"].as_i64().unwrap_or(0);
    let mut last = String::new();
    let mut d = first;
    loop {
        let (line, done) = status_line(&d, name, since)?;
        if line != last {
            println!("{line}");
            last = line;
        }
        if done {
            return Ok(ExitCode::SUCCESS);
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        if !timeout.is_zero() && start.elapsed() >= timeout {
            return Err("error: timed out waiting for the condition".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        d = client.get(path).await.map_err(server_err)?;
    }
}

/// Merge-patches a Rollout's status (the status subresource), as Argo's CLI does.
async fn set_status(client: &Client, path: &str, status: Value) -> Result<(), String> {
    let body = serde_json::to_vec(&serde_json::json!({ "status": status })).unwrap_or_default();
    client
        .call(Method::PATCH, &format!("{path}/status"), "application/merge-patch+json", body)
        .await
        .map(|_| ())
        .map_err(server_err)
}

/// Argo's status line for a Rollout (`Paused - CanaryPauseStep`), with the current step;
/// `Ok(true)` when Healthy, `Err` when Degraded.
pub fn rollout_status_line(r: &Value, name: &str) -> Result<(String, bool), String> {
    let generation = r["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = r["status"]["observedGeneration"].as_str().and_then(|g| g.parse().ok()).unwrap_or(0i64);
    if generation > observed {
        return Ok(("Waiting for rollout spec update to be observed...".into(), false));
    }
    let s = &r["status"];
    let phase = s["phase"].as_str().unwrap_or("Progressing");
    let message = s["message"].as_str().unwrap_or_default();
    let steps = r["spec"]["strategy"]["canary"]["steps"].as_array().cloned().unwrap_or_default();
    let step = match s["currentStepIndex"].as_u64().and_then(|i| usize::try_from(i).ok()) {
        Some(i) if !steps.is_empty() && i < steps.len() => {
            let st = &steps[i];
            let what = if let Some(w) = st["setWeight"].as_i64() {
                format!("setWeight {w}")
            } else if st["pause"].is_object() {
                match &st["pause"]["duration"] {
                    Value::Null => "pause".to_string(),
                    Value::String(d) => format!("pause {d}"),
                    d => format!("pause {d}s"),
                }
            } else if st["analysis"].is_object() {
                "analysis".into()
            } else {
                "setCanaryScale".into()
            };
            format!(" (step {}/{}: {what})", i + 1, steps.len())
        }
        _ => String::new(),
    };
    let line =
        if message.is_empty() { format!("{phase}{step}") } else { format!("{phase} - {message}{step}") };
    match phase {
        "Healthy" => Ok((line, true)),
        "Degraded" => Err(format!("{line}\nerror: rollout {name:?} is Degraded: {message}")),
        _ => Ok((line, false)),
    }
}

async fn rollout_status(
    client: &Client,
    path: &str,
    name: &str,
    timeout: Duration,
    watch: bool,
) -> Result<ExitCode, String> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let r = client.get(path).await.map_err(server_err)?;
        let (line, done) = rollout_status_line(&r, name)?;
        if line != last {
            println!("{line}");
            last = line;
        }
        if done || !watch {
            return Ok(ExitCode::SUCCESS);
        }
        if !timeout.is_zero() && start.elapsed() >= timeout {
            return Err("error: timed out waiting for the condition".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The items of a list whose controller has this uid.
fn controlled_by<'a>(list: &'a Value, uid: &'a str) -> impl Iterator<Item = &'a Value> {
    list["items"].as_array().into_iter().flatten().filter(move |x| {
        x["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["uid"].as_str() == Some(uid) && o["controller"] == true))
    })
}

/// A DaemonSet's or StatefulSet's ControllerRevisions by revision, each shaped as a ReplicaSet is
/// (`spec.template`) for history and undo.
async fn controller_revisions(client: &Client, ns: &str, uid: &str) -> Result<Vec<(i64, Value)>, String> {
    let info = super::kind("controllerrevisions")?;
    let list = client.get(&info.path(Some(ns), None)).await.map_err(server_err)?;
    let mut out: Vec<(i64, Value)> = controlled_by(&list, uid)
        .map(|cr| {
            let shaped = serde_json::json!({"metadata": cr["metadata"], "spec": {"template": cr["data"]["spec"]["template"]}});
            (cr["revision"].as_i64().unwrap_or(0), shaped)
        })
        .collect();
    out.sort_by_key(|(r, _)| *r);
    Ok(out)
}

/// The Deployment's ReplicaSets (a DaemonSet's or StatefulSet's ControllerRevisions) by
/// revision.
async fn revisions(
    client: &Client,
    info: &tug_api::object::KindInfo,
    ns: &str,
    name: &str,
) -> Result<(Value, Vec<(i64, Value)>), String> {
    let d = client.get(&info.path(Some(ns), Some(name))).await.map_err(server_err)?;
    let uid = d["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    if REVISIONED.contains(&info.kind) {
        return Ok((d, controller_revisions(client, ns, &uid).await?));
    }
    let rs_info = super::kind("replicasets")?;
    let list = client.get(&rs_info.path(Some(ns), None)).await.map_err(server_err)?;
    let mut out: Vec<(i64, Value)> = controlled_by(&list, &uid)
        .filter_map(|rs| {
            let r = rs["metadata"]["annotations"][revision_keys(info).0].as_str()?.parse().ok()?;
            Some((r, rs.clone()))
        })
        .collect();
    out.sort_by_key(|(r, _)| *r);
    Ok((d, out))
}

async fn history(
    client: &Client,
    info: &tug_api::object::KindInfo,
    ns: &str,
    name: &str,
    revision: Option<i64>,
) -> Result<ExitCode, String> {
    let (_, revs) = revisions(client, info, ns, name).await?;
    let q = info.qualified_singular();
    if let Some(r) = revision {
        let (_, rs) = revs
            .iter()
            .find(|(x, _)| *x == r)
            .ok_or_else(|| format!("error: unable to find the specified revision {r}"))?;
        println!("{q}/{name} with revision #{r}");
        println!("Pod Template:");
        let yaml = serde_yaml_ng::to_string(&rs["spec"]["template"]).unwrap_or_default();
        for line in yaml.lines() {
            println!("  {line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("{q}/{name} ");
    println!("REVISION  CHANGE-CAUSE");
    for (r, rs) in &revs {
        let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str().unwrap_or("<none>");
        println!("{r:<10}{cause}");
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

async fn undo(
    client: &Client,
    info: &tug_api::object::KindInfo,
    ns: &str,
    name: &str,
    to: i64,
) -> Result<ExitCode, String> {
    let (d, revs) = revisions(client, info, ns, name).await?;
    let (revision_key, hash_label) = revision_keys(info);
    let current: i64 = if REVISIONED.contains(&info.kind) {
        // The controller gives the current template the newest revision.
        revs.last().map_or(0, |(r, _)| *r)
    } else if info.kind == "Rollout" {
        // The revision of the ReplicaSet of the current template.
        let hash = d["status"]["currentPodHash"].as_str().unwrap_or_default();
        revs.iter().find(|(_, rs)| rs["metadata"]["labels"][hash_label] == hash).map_or(0, |(r, _)| *r)
    } else {
        d["metadata"]["annotations"][revision_key].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
    };
    let target = if to == 0 {
        revs.iter()
            .rev()
            .find(|(r, _)| *r != current)
            .ok_or("error: no rollout history found for the previous revision")?
    } else {
        revs.iter()
            .find(|(r, _)| *r == to)
            .ok_or_else(|| format!("error: unable to find specified revision {to} in history"))?
    };
    let (rev, rs) = target;
    let mut template = rs["spec"]["template"].clone();
    if let Some(l) = template["metadata"]["labels"].as_object_mut() {
        l.remove(hash_label);
    }
    let q = info.qualified_singular();
    let changed = update(client, &info.path(Some(ns), Some(name)), |o| {
        if o["spec"]["template"] == template {
            return Ok(false);
        }
        o["spec"]["template"] = template.clone();
        Ok(true)
    })
    .await?;
    if changed {
        println!("{q}/{name} rolled back");
    } else {
        println!("{q}/{name} skipped rollback (current template already matches revision {rev})");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statefulset_status_lines_are_kubectls() {
        let s = |partition: Value, ready: i64, updated: i64, cur: &str, upd: &str| {
            json!({"metadata": {"generation": 2}, "spec": {"replicas": 3,
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}}},
                   "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": updated,
                              "currentReplicas": 3 - updated, "currentRevision": cur, "updateRevision": upd}})
        };
        let line = |v: Value| statefulset_status_line(&v, "web", 0).unwrap();
        assert_eq!(line(s(json!(0), 2, 0, "a", "b")), ("Waiting for 1 pods to be ready...".into(), false));
        assert_eq!(
            line(s(json!(1), 3, 1, "a", "b")),
            (
                "Waiting for partitioned roll out to finish: 1 out of 2 new pods have been updated...".into(),
                false
            )
        );
        assert_eq!(
            line(s(json!(1), 3, 2, "a", "b")),
            ("partitioned roll out complete: 2 new pods have been updated...".into(), true)
        );
        assert_eq!(
            line(s(Value::Null, 3, 1, "a", "b")),
            ("waiting for statefulset rolling update to complete 1 pods at revision b...".into(), false)
        );
        let mut od = s(json!(0), 3, 3, "b", "b");
        od["spec"]["updateStrategy"]["type"] = "OnDelete".into();
        assert!(
            statefulset_status_line(&od, "web", 0).unwrap_err().contains("only available for RollingUpdate")
        );
    }

    #[test]
    fn status_lines_are_kubectls() {
        let d = |generation: i64, obs: i64, up: i64, rep: i64, av: i64| {
            json!({"metadata": {"generation": generation}, "spec": {"replicas": 3},
                   "status": {"observedGeneration": obs, "updatedReplicas": up, "replicas": rep, "availableReplicas": av}})
        };
        assert_eq!(
            status_line(&d(2, 1, 0, 3, 3), "web", 2).unwrap().0,
            "Waiting for deployment spec update to be observed..."
        );
        assert_eq!(
            status_line(&d(2, 2, 1, 4, 3), "web", 2).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        assert_eq!(
            status_line(&d(2, 2, 3, 4, 3), "web", 2).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
        );
        assert_eq!(
            status_line(&d(2, 2, 3, 3, 2), "web", 2).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."
        );
        assert_eq!(
            status_line(&d(2, 2, 3, 3, 3), "web", 2).unwrap(),
            ("deployment \"web\" successfully rolled out".into(), true)
        );
        let mut rb = d(3, 3, 3, 3, 3);
        rb["status"]["conditions"] = json!([{"type": "RolledBack", "status": "True", "observedGeneration": 3, "message": "Rolled back from revision 2 to revision 1: x"}]);
        assert!(status_line(&rb, "web", 2).unwrap_err().contains("rolled back: Rolled back from revision 2"));
        // An old rollback does not fail a later rollout.
        assert!(status_line(&rb, "web", 3).is_ok());
    }
}
