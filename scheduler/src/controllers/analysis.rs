//! AnalysisRuns: each metric measured on its schedule, each measurement judged by the
//! metric's success and failure conditions, the run's phase from its metrics' — Argo
//! Rollouts' rules (`count`, `interval`, `initialDelay`, `failureLimit`, `inconclusiveLimit`,
//! `consecutiveErrorLimit`).
//!
//! Providers:
//! - `web`: an HTTP or HTTPS request; the answer's JSON (or `jsonPath` of it) is `result`. A
//!   URL whose host is a Service (`name`, `name.ns`, `name.ns.svc[.cluster.local]`), a
//!   ClusterIP or a pod IP is reached through a ready pod's node tunnel, so in-cluster URLs
//!   work from the control plane; other hosts are connected to directly. HTTPS verifies the
//!   server against the system's CAs by the URL's host (`insecure: true`: any certificate).
//!   A non-2xx answer is an error.
//! - `job`: a Job made from the metric's template; its success is the measurement's.
//! - `pods` (Tug's own): the health of a ReplicaSet's pods — `result.ready`, `total`,
//!   `notReady`, `restarts`, `oomKilled`, `crashLooping`; without conditions, any restart,
//!   OOM kill or crash loop fails it. For a run of a canary Rollout whose stable Service
//!   splits traffic by weight, also what the nodes' proxies counted of the connections they
//!   sent to this ReplicaSet's set since the metric's previous measurement (the first: since
//!   the split began): `result.connections.{accepted, refused, reset, attempts, failures}`
//!   and `result.connectionFailureRate` (failures / attempts, 0 without attempts), where
//!   attempts are the accepted and refused connections and failures the refused and reset.
//!
//! [`step`] is pure: it returns the run's next status and the measurements to start; web
//! measurements run as tasks that write their result into the run when it comes.

use super::runtime::{Controller, Next};
use super::{controller_ref, decode, parse_time, timestamp};
use crate::store::{Event, Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tug_api::kinds::rollouts::{
    AnalysisRun, AnalysisRunStatus, HASH_LABEL, Measurement, Metric, MetricResult,
};
use tug_api::validate_rollouts::{go_duration, int_value};

pub const PREFIX: &str = "argoproj.io/analysisruns/";
const JOBS: &str = "batch/jobs/";
const PODS: &str = "/pods/";
const ROLLOUTS: &str = "argoproj.io/rollouts/";
/// A measurement's metadata: the connection counts it was computed from (running totals).
const CONN_KEYS: [&str; 3] = ["connections-accepted", "connections-refused", "connections-reset"];
/// Measurements kept per metric (Argo keeps ten).
const KEEP: usize = 10;

/// A byte stream to a pod.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects to `port` of a pod (node, (namespace, name, uid)) through its node's tunnel.
pub type Dialer = Arc<
    dyn Fn(
            String,
            (String, String, String),
            u16,
        ) -> Pin<Box<dyn Future<Output = Result<Box<dyn Io>, String>> + Send>>
        + Send
        + Sync,
>;

fn terminal(phase: &str) -> bool {
    matches!(phase, "Successful" | "Failed" | "Error" | "Inconclusive")
}

/// The metrics with `{{args.NAME}}` replaced by the run's arguments.
pub fn resolve(run: &AnalysisRun) -> Result<Vec<Metric>, String> {
    let mut text = serde_json::to_string(&run.spec.metrics).map_err(|e| e.to_string())?;
    for a in &run.spec.args {
        let v = a.value.clone().unwrap_or_default();
        let escaped = serde_json::to_string(&v).unwrap_or_default();
        let escaped = &escaped[1..escaped.len() - 1];
        text = text
            .replace(&format!("{{{{args.{}}}}}", a.name), escaped)
            .replace(&format!("{{{{ args.{} }}}}", a.name), escaped);
    }
    if let Some(at) = text.find("{{") {
        let rest = &text[at..];
        let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
        return Err(format!("{} was not resolved: no such argument", &rest[..end]));
    }
    serde_json::from_str(&text).map_err(|e| format!("the metrics after substitution: {e}"))
}

/// A measurement's phase from its result and the metric's conditions.
pub fn judge(m: &Metric, result: &Value, default_failure: Option<&str>) -> (String, Option<String>) {
    let eval = |c: &str| tug_api::expr::condition(c, result);
    let failure =
        m.failure_condition.as_deref().or(if m.success_condition.is_none() { default_failure } else { None });
    if let Some(f) = failure {
        match eval(f) {
            Ok(true) => return ("Failed".into(), None),
            Ok(false) => {}
            Err(e) => return ("Error".into(), Some(format!("failureCondition {f:?}: {e}"))),
        }
    }
    match m.success_condition.as_deref() {
        Some(s) => match eval(s) {
            Ok(true) => ("Successful".into(), None),
            Ok(false) if failure.is_some() => ("Inconclusive".into(), None),
            Ok(false) => ("Failed".into(), None),
            Err(e) => ("Error".into(), Some(format!("successCondition {s:?}: {e}"))),
        },
        None => ("Successful".into(), None),
    }
}

/// Counts a finished measurement into its metric's result.
fn count(r: &mut MetricResult, phase: &str) {
    match phase {
        "Successful" => {
            r.successful += 1;
            r.count += 1;
            r.consecutive_error = 0;
        }
        "Failed" => {
            r.failed += 1;
            r.count += 1;
            r.consecutive_error = 0;
        }
        "Inconclusive" => {
            r.inconclusive += 1;
            r.count += 1;
            r.consecutive_error = 0;
        }
        _ => {
            r.error += 1;
            r.consecutive_error += 1;
        }
    }
}

fn limit(v: Option<&tug_api::meta::IntOrString>, default: i64) -> i64 {
    v.and_then(int_value).unwrap_or(default)
}

/// The metric's phase from its counts, once decided.
fn assess(m: &Metric, r: &MetricResult, terminating: bool) -> Option<(String, String)> {
    let failure_limit = limit(m.failure_limit.as_ref(), 0);
    let inconclusive_limit = limit(m.inconclusive_limit.as_ref(), 0);
    let error_limit = limit(m.consecutive_error_limit.as_ref(), 4);
    if i64::from(r.failed) > failure_limit {
        return Some((
            "Failed".into(),
            format!(
                "Metric {:?} assessed Failed due to failed ({}) > failureLimit ({failure_limit})",
                m.name, r.failed
            ),
        ));
    }
    if i64::from(r.inconclusive) > inconclusive_limit {
        return Some((
            "Inconclusive".into(),
            format!(
                "Metric {:?} assessed Inconclusive due to inconclusive ({}) > inconclusiveLimit ({inconclusive_limit})",
                m.name, r.inconclusive
            ),
        ));
    }
    if i64::from(r.consecutive_error) > error_limit {
        let last = r.measurements.last().and_then(|x| x.message.clone()).unwrap_or_default();
        return Some((
            "Error".into(),
            format!(
                "Metric {:?} assessed Error due to consecutiveErrors ({}) > consecutiveErrorLimit ({error_limit}): {last:?}",
                m.name, r.consecutive_error
            ),
        ));
    }
    let want = m.count.as_ref().and_then(int_value).unwrap_or(if m.interval.is_some() { 0 } else { 1 });
    if (want > 0 && i64::from(r.count) >= want) || terminating {
        return Some(("Successful".into(), String::new()));
    }
    None
}

/// A measurement to start.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// An HTTP request for metric `metric` (index), whose Running measurement started at `at`.
    Web { metric: usize, at: String },
    /// A Job to create.
    Job { name: String, job: Box<Value> },
}

/// What the planner needs from the cluster.
pub trait Env {
    /// The `pods` provider's result for pods labelled with this hash.
    fn pods(&self, hash: &str) -> Value;
    /// A Job's state: Running, Successful or Failed (None: gone).
    fn job(&self, name: &str) -> Option<&'static str>;
    /// The proxies' running totals of (accepted, refused, reset) connections to the pods
    /// labelled with this hash, when traffic is split by weight between them and others.
    fn connections(&self, hash: &str) -> Option<[u64; 3]>;
}

/// Adds the connection figures to a `pods` result: the counts since `before` (the previous
/// measurement's totals; all of `now` without them, or when they are larger — the split
/// began again) and the failure rate.
pub fn connection_figures(result: &mut Value, now: [u64; 3], before: Option<[u64; 3]>) {
    let since = match before {
        Some(b) if b.iter().zip(&now).all(|(b, n)| b <= n) => b,
        _ => [0; 3],
    };
    let [accepted, refused, reset] = [now[0] - since[0], now[1] - since[1], now[2] - since[2]];
    let (attempts, failures) = (accepted + refused, refused + reset);
    #[allow(clippy::cast_precision_loss)]
    let rate = if attempts == 0 { 0.0 } else { (failures as f64 / attempts as f64).min(1.0) };
    result["connections"] = json!({"accepted": accepted, "refused": refused, "reset": reset,
        "attempts": attempts, "failures": failures});
    result["connectionFailureRate"] = json!((rate * 10_000.0).round() / 10_000.0);
}

/// The connection totals a measurement recorded.
fn recorded(m: &Measurement) -> Option<[u64; 3]> {
    let md = m.metadata.as_ref()?;
    let get = |k: &str| md.get(k).and_then(|v| v.parse().ok());
    Some([get(CONN_KEYS[0])?, get(CONN_KEYS[1])?, get(CONN_KEYS[2])?])
}

/// The run's next status, what to start, and when to look again.
pub fn step(run: &AnalysisRun, now: u64, env: &dyn Env) -> (AnalysisRunStatus, Vec<Start>, Next) {
    let stamp = timestamp(now);
    let mut s = run.status.clone().unwrap_or_default();
    let mut starts = Vec::new();
    let mut next = Next::Done;
    if terminal(&s.phase) {
        return (s, starts, next);
    }
    if s.phase.is_empty() || s.phase == "Pending" {
        s.phase = "Running".into();
    }
    s.started_at.get_or_insert_with(|| stamp.clone());
    let run_start = s.started_at.as_deref().and_then(parse_time).unwrap_or(now);
    let metrics = match resolve(run) {
        Ok(m) => m,
        Err(e) => {
            s.phase = "Error".into();
            s.message = Some(e);
            return (s, starts, next);
        }
    };
    let terminating = run.spec.terminate == Some(true);
    for (i, m) in metrics.iter().enumerate() {
        let at = match s.metric_results.iter().position(|r| r.name == m.name) {
            Some(p) => p,
            None => {
                s.metric_results.push(MetricResult {
                    name: m.name.clone(),
                    phase: "Running".into(),
                    ..Default::default()
                });
                s.metric_results.len() - 1
            }
        };
        let r = &mut s.metric_results[at];
        if terminal(&r.phase) {
            continue;
        }
        // A measurement in flight.
        if let Some(last) = r.measurements.last_mut().filter(|x| x.phase == "Running") {
            if let Some(job) = last.metadata.as_ref().and_then(|md| md.get("job-name")).cloned() {
                match env.job(&job) {
                    Some("Running") => {}
                    state => {
                        let (phase, msg) = match state {
                            Some("Successful") => ("Successful", None),
                            Some(_) => ("Failed", Some(format!("job {job} failed"))),
                            None => ("Error", Some(format!("job {job} is gone"))),
                        };
                        last.phase = phase.into();
                        last.message = msg;
                        last.finished_at = Some(stamp.clone());
                        count(r, phase);
                    }
                }
            } else {
                // A web request: its task writes the result; one the scheduler lost (a
                // restart) is an error after its timeout.
                let timeout = m.provider.web.as_ref().and_then(|w| w.timeout_seconds).unwrap_or(10).max(1);
                let since = last.started_at.as_deref().and_then(parse_time).unwrap_or(now);
                let lost = since + u64::try_from(timeout).unwrap_or(10) + 30;
                if lost <= now {
                    last.phase = "Error".into();
                    last.message = Some("the measurement was lost (the controller restarted)".into());
                    last.finished_at = Some(stamp.clone());
                    count(r, "Error");
                } else {
                    next = next.min(Next::After(Duration::from_secs(lost - now)));
                }
            }
            if r.measurements.last().is_some_and(|x| x.phase == "Running") {
                continue;
            }
        }
        if let Some((phase, message)) = assess(m, r, terminating) {
            r.phase = phase;
            r.message = (!message.is_empty()).then_some(message);
            continue;
        }
        // When the next measurement is due.
        let interval = m.interval.as_deref().and_then(|d| go_duration(d).ok()).map_or(0, |d| d.as_secs());
        let due = match r.measurements.last() {
            None => {
                run_start
                    + m.initial_delay.as_deref().and_then(|d| go_duration(d).ok()).map_or(0, |d| d.as_secs())
            }
            Some(last) => last.finished_at.as_deref().and_then(parse_time).unwrap_or(now) + interval,
        };
        if due > now {
            next = next.min(Next::After(Duration::from_secs(due - now)));
            continue;
        }
        let mut measurement =
            Measurement { phase: "Running".into(), started_at: Some(stamp.clone()), ..Default::default() };
        if let Some(p) = &m.provider.pods {
            let hash = p
                .pod_template_hash
                .clone()
                .or_else(|| run.metadata.labels.get(HASH_LABEL).cloned())
                .unwrap_or_default();
            let mut result = env.pods(&hash);
            if let Some(now) = env.connections(&hash) {
                let before = r.measurements.iter().rev().find_map(recorded);
                connection_figures(&mut result, now, before);
                measurement.metadata =
                    Some(CONN_KEYS.iter().zip(now).map(|(k, v)| (k.to_string(), v.to_string())).collect());
            }
            let (phase, msg) = judge(
                m,
                &result,
                Some("result.restarts > 0 || result.oomKilled > 0 || result.crashLooping > 0"),
            );
            measurement.phase = phase.clone();
            measurement.message = msg;
            measurement.value = Some(result.to_string());
            measurement.finished_at = Some(stamp.clone());
            count(r, &phase);
            next = next.min(Next::After(Duration::from_secs(interval.max(1))));
        } else if let Some(j) = &m.provider.job {
            let n = r.count + r.error + 1;
            let name = job_name(&run.metadata.name, &m.name, n);
            let mut job = json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": run.metadata.namespace,
                    "labels": {"analysisrun": run.metadata.name},
                    "ownerReferences": [controller_ref("argoproj.io/v1alpha1", "AnalysisRun", &run.metadata)]},
                "spec": j.spec,
            });
            if let Some(md) = &j.metadata {
                for (k, v) in &md.labels {
                    job["metadata"]["labels"][k] = v.clone().into();
                }
                if !md.annotations.is_empty() {
                    job["metadata"]["annotations"] = json!(md.annotations);
                }
            }
            measurement.metadata = Some([("job-name".to_string(), name.clone())].into());
            starts.push(Start::Job { name, job: Box::new(job) });
        } else {
            starts.push(Start::Web { metric: i, at: stamp.clone() });
        }
        r.measurements.push(measurement);
        let extra = r.measurements.len().saturating_sub(KEEP);
        r.measurements.drain(..extra);
        if let Some((phase, message)) =
            assess(m, r, false).filter(|_| r.measurements.last().is_some_and(|x| x.phase != "Running"))
        {
            r.phase = phase;
            r.message = (!message.is_empty()).then_some(message);
        }
    }
    // The run's phase: the worst of its metrics', once any is decided badly or all are.
    let phases: Vec<&str> = s.metric_results.iter().map(|r| r.phase.as_str()).collect();
    let worst = ["Failed", "Error", "Inconclusive"].into_iter().find(|p| phases.contains(p));
    if let Some(p) = worst {
        s.phase = p.into();
        s.message = s.metric_results.iter().find(|r| r.phase == p).and_then(|r| r.message.clone());
    } else if !phases.is_empty() && phases.iter().all(|p| *p == "Successful") {
        s.phase = "Successful".into();
        s.message = None;
    }
    if terminal(&s.phase) {
        starts.clear();
        next = Next::Done;
    }
    (s, starts, next)
}

/// A Job's name for a measurement: `RUN-METRIC-N`, shortened (with a hash) to 63.
fn job_name(run: &str, metric: &str, n: i32) -> String {
    let full = format!("{run}-{metric}-{n}")
        .to_ascii_lowercase()
        .replace(|c: char| !(c.is_ascii_alphanumeric() || c == '-'), "-");
    if full.len() <= 63 {
        return full;
    }
    let h = super::safe_encode(&format!(
        "{:x}",
        full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    ));
    format!("{}-{}", &full[..50].trim_end_matches('-'), &h[..h.len().min(10)])
}

/// The cluster as [`Env`] sees it, read from the store for one reconcile.
struct StoreEnv {
    pods: Vec<Value>,
    jobs: BTreeMap<String, &'static str>,
    /// The Rollout the run belongs to, and the nodes' latest counts.
    rollout: Option<Value>,
    usage: Arc<super::hpa::UsageIndex>,
}

impl Env for StoreEnv {
    fn pods(&self, hash: &str) -> Value {
        let mine: Vec<&Value> = self
            .pods
            .iter()
            .filter(|p| p["metadata"]["labels"][HASH_LABEL].as_str() == Some(hash))
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let (mut ready, mut restarts, mut oom, mut crash) = (0, 0, 0, 0);
        for p in &mine {
            let conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if conds.iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
                ready += 1;
            }
            for c in p["status"]["containerStatuses"].as_array().into_iter().flatten() {
                restarts += c["restartCount"].as_i64().unwrap_or(0);
                if c["lastState"]["terminated"]["reason"] == "OOMKilled"
                    || c["state"]["terminated"]["reason"] == "OOMKilled"
                {
                    oom += 1;
                }
                if c["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
                    crash += 1;
                }
            }
        }
        json!({"ready": ready, "total": mine.len(), "notReady": mine.len() - ready, "restarts": restarts,
               "oomKilled": oom, "crashLooping": crash})
    }

    fn job(&self, name: &str) -> Option<&'static str> {
        self.jobs.get(name).copied()
    }

    fn connections(&self, hash: &str) -> Option<[u64; 3]> {
        let ro = self.rollout.as_ref()?;
        let ns = ro["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let svc = ro["spec"]["strategy"]["canary"]["stableService"].as_str()?.to_string();
        let set = if ro["status"]["stableRS"].as_str() == Some(hash) { "stable" } else { "canary" };
        let sets = self.usage.connections.get(&(ns, svc))?;
        let mine: Vec<_> = sets.iter().filter(|c| c.set == set).collect();
        (!mine.is_empty())
            .then(|| mine.iter().fold([0; 3], |a, c| [a[0] + c.accepted, a[1] + c.refused, a[2] + c.reset]))
    }
}

/// The reconciler.
pub struct Analysis {
    store: Arc<dyn Store>,
    dialer: Option<Dialer>,
    usage: super::hpa::UsageCache,
}

impl Analysis {
    pub fn new(store: Arc<dyn Store>, dialer: Option<Dialer>, usage: super::hpa::UsageCache) -> Analysis {
        Analysis { store, dialer, usage }
    }
}

impl Controller for Analysis {
    fn name(&self) -> &'static str {
        "analysisrun"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![JOBS]
    }

    fn keys_for(&self, _store: &dyn Store, e: &Event) -> Vec<String> {
        super::controller_key(e, "AnalysisRun", PREFIX)
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let run: AnalysisRun = decode(&stored)?;
        if run.status.as_ref().is_some_and(|s| terminal(&s.phase))
            || run.metadata.deletion_timestamp.is_some()
        {
            return Ok(Next::Done);
        }
        let ns = run.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = run.metadata.uid.clone().unwrap_or_default();
        let metrics = resolve(&run).unwrap_or_default();
        let pods = if metrics.iter().any(|m| m.provider.pods.is_some()) {
            store.list(&format!("{PODS}{ns}/"))?.0.into_iter().map(|s| s.object).collect()
        } else {
            Vec::new()
        };
        let mut jobs = BTreeMap::new();
        if metrics.iter().any(|m| m.provider.job.is_some()) {
            for j in store.list(&format!("{JOBS}{ns}/"))?.0 {
                let owned = j.object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o["uid"].as_str() == Some(uid.as_str())));
                if !owned {
                    continue;
                }
                let conds = j.object["status"]["conditions"].as_array().cloned().unwrap_or_default();
                let is = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
                let state = if is("Complete") {
                    "Successful"
                } else if is("Failed") {
                    "Failed"
                } else {
                    "Running"
                };
                jobs.insert(j.object["metadata"]["name"].as_str().unwrap_or_default().to_string(), state);
            }
        }
        // The Rollout this run measures, for the connection counts of its split.
        let rollout = if metrics.iter().any(|m| m.provider.pods.is_some()) {
            match run.metadata.owner_references.iter().find(|o| o.kind == "Rollout") {
                Some(o) => store.get(&format!("{ROLLOUTS}{ns}/{}", o.name))?.map(|s| s.object),
                None => None,
            }
        } else {
            None
        };
        let usage = Arc::clone(&self.usage.lock().unwrap_or_else(|e| e.into_inner()));
        let env = StoreEnv { pods, jobs, rollout, usage };
        let now = super::unix_now();
        let (status, starts, next) = step(&run, now, &env);
        let mut obj = stored.object.clone();
        obj["status"] = serde_json::to_value(&status).unwrap_or(Value::Null);
        if obj != stored.object {
            store.update(&stored.key, obj, Some(stored.revision))?;
        }
        for s in starts {
            match s {
                Start::Job { name, mut job } => {
                    crate::api::objects::on_create(
                        &mut job,
                        &uuid::Uuid::new_v4().to_string(),
                        &crate::api::now(),
                    );
                    match store.create(&format!("{JOBS}{ns}/{name}"), *job) {
                        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Start::Web { metric, at } => {
                    let Some(m) = metrics.get(metric).cloned() else { continue };
                    let (store, dialer, key, ns) =
                        (self.store.clone(), self.dialer.clone(), key.to_string(), ns.clone());
                    let Ok(handle) = tokio::runtime::Handle::try_current() else { continue };
                    handle.spawn(async move {
                        let (phase, message, value) =
                            measure_web(store.as_ref(), &ns, &m, dialer.as_ref()).await;
                        record(store.as_ref(), &key, &m, &at, phase, message, value);
                    });
                }
            }
        }
        Ok(next)
    }
}

/// Writes a finished web measurement into the run (again on a conflict).
fn record(
    store: &dyn Store,
    key: &str,
    m: &Metric,
    at: &str,
    phase: String,
    message: Option<String>,
    value: Option<String>,
) {
    for _ in 0..10 {
        let Ok(Some(s)) = store.get(key) else { return };
        let Ok(mut run) = decode::<AnalysisRun>(&s) else { return };
        let Some(st) = run.status.as_mut() else { return };
        let Some(r) = st.metric_results.iter_mut().find(|r| r.name == m.name) else { return };
        let Some(x) =
            r.measurements.iter_mut().find(|x| x.phase == "Running" && x.started_at.as_deref() == Some(at))
        else {
            return;
        };
        x.phase = phase.clone();
        x.message = message.clone();
        x.value = value.clone();
        x.finished_at = Some(timestamp(super::unix_now()));
        count(r, &phase);
        let mut obj = s.object.clone();
        obj["status"] = serde_json::to_value(&run.status).unwrap_or(Value::Null);
        match store.update(&s.key, obj, Some(s.revision)) {
            Err(StoreError::Conflict { .. }) => continue,
            _ => return,
        }
    }
}

/// A pod to dial: its node, (namespace, name, uid), and the port.
type Target = (String, (String, String, String), u16);

/// Where an in-cluster host leads: a pod to dial and the port on it.
fn in_cluster(store: &dyn Store, ns: &str, host: &str, port: u16) -> Result<Option<Target>, String> {
    let pod_of = |p: &Value| {
        let md = &p["metadata"];
        Some((
            p["spec"]["nodeName"].as_str()?.to_string(),
            (
                md["namespace"].as_str().unwrap_or("default").to_string(),
                md["name"].as_str()?.to_string(),
                md["uid"].as_str().unwrap_or_default().to_string(),
            ),
        ))
    };
    let list = |prefix: &str| store.list(prefix).map(|(items, _)| items).map_err(|e| e.to_string());
    // A Service: by name (`svc`, `svc.ns`, `svc.ns.svc…`) or by ClusterIP.
    let parts: Vec<&str> = host.split('.').collect();
    let by_name = match parts.as_slice() {
        [svc] => Some((ns.to_string(), svc.to_string())),
        [svc, n] | [svc, n, "svc", ..] if host.parse::<std::net::Ipv4Addr>().is_err() => {
            Some((n.to_string(), svc.to_string()))
        }
        _ => None,
    };
    let svc = match by_name {
        Some((n, s)) => {
            store.get(&format!("/services/{n}/{s}")).map_err(|e| e.to_string())?.map(|x| x.object)
        }
        None => list("/services/")?
            .into_iter()
            .map(|x| x.object)
            .find(|s| s["spec"]["clusterIP"].as_str() == Some(host)),
    };
    if let Some(svc) = svc {
        let sns = svc["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let sname = svc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let sp = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)))
            .cloned()
            .ok_or_else(|| format!("service {sns}/{sname} has no port {port}"))?;
        let pname = sp["name"].as_str().unwrap_or_default();
        let ep = store
            .get(&format!("/endpoints/{sns}/{sname}"))
            .map_err(|e| e.to_string())?
            .map(|x| x.object)
            .unwrap_or_default();
        let mut choices = Vec::new();
        for sub in ep["subsets"].as_array().into_iter().flatten() {
            let Some(tp) = sub["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str().unwrap_or_default() == pname)
                .and_then(|p| p["port"].as_u64())
            else {
                continue;
            };
            for a in sub["addresses"].as_array().into_iter().flatten() {
                let t = &a["targetRef"];
                if let (Some(node), Some(name)) = (a["nodeName"].as_str(), t["name"].as_str()) {
                    choices.push((
                        node.to_string(),
                        (sns.clone(), name.to_string(), t["uid"].as_str().unwrap_or_default().to_string()),
                        u16::try_from(tp).unwrap_or(port),
                    ));
                }
            }
        }
        if choices.is_empty() {
            return Err(format!("service {sns}/{sname} has no ready endpoints"));
        }
        let i = usize::try_from(super::unix_now()).unwrap_or(0) % choices.len();
        return Ok(Some(choices.swap_remove(i)));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        if let Some(p) =
            list(PODS)?.into_iter().map(|x| x.object).find(|p| p["status"]["podIP"].as_str() == Some(host))
        {
            return Ok(pod_of(&p).map(|(node, who)| (node, who, port)));
        }
    }
    Ok(None)
}

/// The TLS client for HTTPS metrics: the system's CAs (loaded once), or with `insecure`
/// any certificate (its handshake signatures still checked).
fn tls_config(insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    static VERIFIED: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    static INSECURE: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if insecure {
        return Ok(Arc::clone(INSECURE.get_or_init(|| Arc::new(tug_client::tls::insecure_config()))));
    }
    VERIFIED
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!("no CA certificates found on this host to verify HTTPS with{why}"));
            }
            let provider = rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// One web measurement: (phase, message, value).
async fn measure_web(
    store: &dyn Store,
    ns: &str,
    m: &Metric,
    dialer: Option<&Dialer>,
) -> (String, Option<String>, Option<String>) {
    let Some(w) = &m.provider.web else { return ("Error".into(), Some("no web provider".into()), None) };
    let timeout = Duration::from_secs(u64::try_from(w.timeout_seconds.unwrap_or(10).max(1)).unwrap_or(10));
    let err = |e: String| ("Error".to_string(), Some(e), None);
    let Ok(uri) = w.url.parse::<hyper::Uri>() else { return err(format!("invalid url {:?}", w.url)) };
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => match tls_config(w.insecure == Some(true)) {
            Ok(c) => Some(c),
            Err(e) => return err(e),
        },
        _ => return err(format!("{:?}: the url must be http:// or https://", w.url)),
    };
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let target = match in_cluster(store, ns, &host, port) {
        Ok(t) => t,
        Err(e) => return err(e),
    };
    let request = async {
        let io: Box<dyn Io> = match (target, dialer) {
            (Some((node, who, p)), Some(d)) => d(node, who, p).await?,
            _ => Box::new(
                tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| format!("connect {host}:{port}: {e}"))?,
            ),
        };
        let io: Box<dyn Io> = match tls {
            None => io,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("{host:?} cannot name a TLS server: {e}"))?;
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, io)
                    .await
                    .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
                Box::new(s)
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let method = w.method.clone().unwrap_or_else(|| "GET".into());
        let mut req = hyper::Request::builder()
            .method(method.as_str())
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", uri.authority().map_or(host.clone(), |a| a.to_string()));
        for h in &w.headers {
            req = req.header(h.key.as_str(), h.value.as_str());
        }
        let body = w.body.clone().unwrap_or_default();
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status();
        let bytes =
            http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((code, bytes))
    };
    let (code, bytes) = match tokio::time::timeout(timeout, request).await {
        Err(_) => return err(format!("timed out after {}s", timeout.as_secs())),
        Ok(Err(e)) => return err(e),
        Ok(Ok(x)) => x,
    };
    if !code.is_success() {
        return err(format!("received non 2xx response code: {}", code.as_u16()));
    }
    let text = String::from_utf8_lossy(&bytes).to_string();
    // JSON, or the text itself (without its final newline) for a plain answer.
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.trim().to_string()));
    let result = match w.json_path.as_deref() {
        Some(p) => match tug_api::jsonpath::value(p, &body) {
            Ok(v) => v,
            Err(e) => return err(format!("jsonPath {p:?}: {e}")),
        },
        None => body,
    };
    let (phase, msg) = judge(m, &result, None);
    let value = match &result {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    (phase, msg, Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::rollouts::{Argument, MetricProvider, PodsMetric, WebMetric};

    struct Fake(Value, Option<[u64; 3]>);
    impl Env for Fake {
        fn pods(&self, _: &str) -> Value {
            self.0.clone()
        }
        fn job(&self, _: &str) -> Option<&'static str> {
            Some("Running")
        }
        fn connections(&self, _: &str) -> Option<[u64; 3]> {
            self.1
        }
    }

    fn run(metrics: Vec<Metric>) -> AnalysisRun {
        let mut r = AnalysisRun::default();
        r.metadata.name = "web-abc-1".into();
        r.spec.metrics = metrics;
        r
    }

    #[test]
    fn arguments_are_substituted_and_missing_ones_named() {
        let mut r = run(vec![Metric {
            name: "m".into(),
            provider: MetricProvider {
                web: Some(WebMetric { url: "http://{{args.svc}}/x".into(), ..Default::default() }),
                ..Default::default()
            },
            ..Default::default()
        }]);
        assert!(resolve(&r).unwrap_err().contains("{{args.svc}}"));
        r.spec.args.push(Argument { name: "svc".into(), value: Some("canary\"q".into()) });
        assert_eq!(resolve(&r).unwrap()[0].provider.web.as_ref().unwrap().url, "http://canary\"q/x");
    }

    #[test]
    fn conditions_judge_measurements() {
        let m = |s: Option<&str>, f: Option<&str>| Metric {
            name: "m".into(),
            success_condition: s.map(str::to_string),
            failure_condition: f.map(str::to_string),
            ..Default::default()
        };
        let v = json!({"rate": 0.02});
        assert_eq!(judge(&m(Some("result.rate < 0.05"), None), &v, None).0, "Successful");
        assert_eq!(judge(&m(Some("result.rate < 0.01"), None), &v, None).0, "Failed");
        assert_eq!(
            judge(&m(Some("result.rate < 0.01"), Some("result.rate > 0.1")), &v, None).0,
            "Inconclusive"
        );
        assert_eq!(judge(&m(None, Some("result.rate > 0.01")), &v, None).0, "Failed");
        assert_eq!(judge(&m(Some("result.nope.x"), None), &v, None).0, "Error");
    }

    #[test]
    fn pods_metrics_measure_on_their_interval_until_a_failure_passes_the_limit() {
        let metric = Metric {
            name: "health".into(),
            interval: Some("10s".into()),
            count: Some(tug_api::meta::IntOrString::Int(3)),
            failure_limit: Some(tug_api::meta::IntOrString::Int(1)),
            provider: MetricProvider { pods: Some(PodsMetric::default()), ..Default::default() },
            ..Default::default()
        };
        let mut r = run(vec![metric]);
        let healthy = Fake(
            json!({"ready": 2, "total": 2, "notReady": 0, "restarts": 0, "oomKilled": 0, "crashLooping": 0}),
            None,
        );
        let (s, starts, next) = step(&r, 1000, &healthy);
        assert!(starts.is_empty());
        assert_eq!((s.phase.as_str(), s.metric_results[0].successful), ("Running", 1));
        assert_eq!(next, Next::After(Duration::from_secs(10)));
        r.status = Some(s);
        // Not due yet: nothing measured.
        let (s, _, _) = step(&r, 1005, &healthy);
        assert_eq!(s.metric_results[0].count, 1);
        let crashing = Fake(
            json!({"ready": 1, "total": 2, "notReady": 1, "restarts": 3, "oomKilled": 0, "crashLooping": 1}),
            None,
        );
        let (s, _, _) = step(&r, 1010, &crashing);
        assert_eq!(
            (s.phase.as_str(), s.metric_results[0].failed),
            ("Running", 1),
            "one failure is within the limit"
        );
        r.status = Some(s);
        let (s, _, _) = step(&r, 1020, &crashing);
        assert_eq!(s.phase, "Failed");
        assert_eq!(
            s.message.as_deref(),
            Some("Metric \"health\" assessed Failed due to failed (2) > failureLimit (1)")
        );
    }

    #[test]
    fn connection_failure_rates_are_over_the_time_since_the_last_measurement() {
        let metric = Metric {
            name: "conns".into(),
            interval: Some("5s".into()),
            success_condition: Some("result.connectionFailureRate < 0.2".into()),
            provider: MetricProvider { pods: Some(PodsMetric::default()), ..Default::default() },
            ..Default::default()
        };
        let mut r = run(vec![metric]);
        let pods =
            json!({"ready": 1, "total": 1, "notReady": 0, "restarts": 0, "oomKilled": 0, "crashLooping": 0});
        // 100 accepted so far, 5 refused: 5 failures in 105 attempts.
        let (s, _, _) = step(&r, 1000, &Fake(pods.clone(), Some([100, 5, 0])));
        let m = &s.metric_results[0].measurements[0];
        assert_eq!(m.phase, "Successful", "{m:?}");
        let v: Value = serde_json::from_str(m.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            v["connections"],
            json!({"accepted": 100, "refused": 5, "reset": 0, "attempts": 105, "failures": 5})
        );
        assert_eq!(v["connectionFailureRate"], json!(0.0476));
        r.status = Some(s);
        // Then 10 accepted, 10 refused and 2 of those reset: 12 failures in 20.
        let (s, _, _) = step(&r, 1005, &Fake(pods.clone(), Some([110, 15, 2])));
        let m = &s.metric_results[0].measurements[1];
        assert_eq!(m.phase, "Failed", "{m:?}");
        let v: Value = serde_json::from_str(m.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["connectionFailureRate"], json!(0.6));
        // Counts that went down (the split began again) are taken whole; none is a rate of 0.
        let mut fresh = json!({});
        connection_figures(&mut fresh, [3, 1, 0], Some([110, 15, 2]));
        assert_eq!(fresh["connections"]["attempts"], 4);
        connection_figures(&mut fresh, [3, 1, 0], Some([3, 1, 0]));
        assert_eq!(
            (fresh["connections"]["attempts"].clone(), fresh["connectionFailureRate"].clone()),
            (json!(0), json!(0.0))
        );
        // Without a split there are no figures, and a condition on them is an error.
        r.status = None;
        let (s, _, _) = step(&r, 1000, &Fake(pods, None));
        assert_eq!(s.metric_results[0].measurements[0].phase, "Error");
    }

    #[test]
    fn web_measurements_start_once_and_errors_count_to_their_limit() {
        let metric = Metric {
            name: "errors".into(),
            interval: Some("5s".into()),
            consecutive_error_limit: Some(tug_api::meta::IntOrString::Int(0)),
            provider: MetricProvider {
                web: Some(WebMetric { url: "http://x/".into(), ..Default::default() }),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut r = run(vec![metric]);
        let env = Fake(Value::Null, None);
        let (s, starts, _) = step(&r, 1000, &env);
        assert_eq!(starts, vec![Start::Web { metric: 0, at: timestamp(1000) }]);
        r.status = Some(s);
        // In flight: no second request.
        let (mut s, starts, _) = step(&r, 1001, &env);
        assert!(starts.is_empty());
        // The task's result: an error, beyond a limit of 0.
        let x = s.metric_results[0].measurements.last_mut().unwrap();
        x.phase = "Error".into();
        x.message = Some("received non 2xx response code: 500".into());
        x.finished_at = Some(timestamp(1001));
        count(&mut s.metric_results[0], "Error");
        r.status = Some(s);
        let (s, starts, _) = step(&r, 1002, &env);
        assert!(starts.is_empty());
        assert_eq!(s.phase, "Error");
        assert!(s.message.unwrap().contains("consecutiveErrors (1) > consecutiveErrorLimit (0)"));
    }

    #[tokio::test]
    async fn https_metrics_verify_the_server_unless_insecure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else { return };
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let body = r#"{"data": {"ok": true}}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 64).unwrap();
        let metric = |insecure| Metric {
            name: "m".into(),
            success_condition: Some("result == true".into()),
            provider: MetricProvider {
                web: Some(WebMetric {
                    url: format!("https://127.0.0.1:{port}/q"),
                    json_path: Some("{$.data.ok}".into()),
                    insecure,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let (phase, msg, value) = measure_web(&store, "default", &metric(Some(true)), None).await;
        assert_eq!((phase.as_str(), value.as_deref()), ("Successful", Some("true")), "{msg:?}");
        // A self-signed certificate no CA of this host vouches for.
        let (phase, msg, _) = measure_web(&store, "default", &metric(None), None).await;
        let msg = msg.unwrap_or_default();
        assert_eq!(phase, "Error", "{msg}");
        assert!(msg.contains("TLS with 127.0.0.1") || msg.contains("no CA certificates"), "{msg}");
        let ftp = Metric {
            provider: MetricProvider {
                web: Some(WebMetric { url: "ftp://x/y".into(), ..Default::default() }),
                ..Default::default()
            },
            ..metric(None)
        };
        let (_, msg, _) = measure_web(&store, "default", &ftp, None).await;
        assert_eq!(msg.as_deref(), Some("\"ftp://x/y\": the url must be http:// or https://"));
    }

    #[test]
    fn long_job_names_are_shortened() {
        assert_eq!(job_name("r", "m", 1), "r-m-1");
        let long = job_name(&"a".repeat(60), "metric", 12);
        assert!(long.len() <= 63, "{long}");
    }
}
