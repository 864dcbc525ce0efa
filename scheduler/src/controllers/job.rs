//! Jobs: pods that run to completion.
//!
//! [`plan`] is pure: `parallelism` pods at a time until `completions` succeed (with no
//! `completions`, until one succeeds and the rest finish; `Indexed` mode gives each pod an
//! index 0..completions and runs each index once to success); failed pods are replaced after
//! Kubernetes' back-off (10 s doubling, at most 6 min) until more than `backoffLimit` have
//! failed (with `restartPolicy: OnFailure`, container restarts count too);
//! `podFailurePolicy` rules decide by exit code whether a failure fails the Job at once
//! (`FailJob`), is not counted (`Ignore`) or counts (`Count`); `activeDeadlineSeconds` bounds
//! the whole run; `suspend` stops the pods; `ttlSecondsAfterFinished` deletes a finished Job
//! (and, through the garbage collector, its pods).

use super::runtime::{Controller, Next};
use super::{condition, controller_ref, decode, parse_time, set_condition, timestamp};
use crate::store::{Event, Store, StoreError};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use tug_api::kinds::batch::{Job, JobStatus, PodFailurePolicyRule};
use tug_api::kinds::pod::Pod;

pub const PREFIX: &str = "batch/jobs/";
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const PODS: &str = "/pods/";

/// What one reconcile of a Job does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create: one entry per pod, with its completion index in Indexed mode.
    pub create: Vec<Option<i32>>,
    pub delete: Vec<String>,
    pub status: JobStatus,
    /// The Job finished now: (condition type, reason, message).
    pub finished: Option<(&'static str, &'static str, String)>,
    /// Its time to live is over.
    pub delete_job: bool,
    pub next: Next,
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn index_of(p: &Pod) -> Option<i32> {
    p.metadata.annotations.get(INDEX).and_then(|i| i.parse().ok())
}

/// The exit codes of a failed pod's containers, by container name.
fn exit_codes(p: &Pod) -> Vec<(String, i64)> {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter())
        .filter_map(|c| {
            let terminated = |s: &Option<tug_api::kinds::pod::ContainerState>| {
                s.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| i64::from(t.exit_code))
            };
            let code = terminated(&c.state).or(terminated(&c.last_state))?;
            Some((c.name.clone(), code))
        })
        .collect()
}

/// The first `podFailurePolicy` rule that matches a failed pod.
fn rule_for<'a>(rules: &'a [PodFailurePolicyRule], p: &Pod) -> Option<&'a PodFailurePolicyRule> {
    let codes = exit_codes(p);
    rules.iter().find(|r| {
        let Some(on) = &r.on_exit_codes else { return false };
        codes.iter().any(|(name, code)| {
            let named = on.container_name.as_deref().is_none_or(|n| n == name);
            let listed = on.values.iter().any(|v| i64::from(*v) == *code);
            // NotIn ignores exit code 0 (a container that succeeded), as Kubernetes does.
            named && if on.operator == "In" { listed } else { !listed && *code != 0 }
        })
    })
}

fn finished_at(p: &Pod) -> Option<u64> {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_deref().and_then(parse_time))
        .max()
}

fn finished(status: &JobStatus) -> Option<&tug_api::meta::Condition> {
    status.conditions.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// `0,2-4` from a set of indexes.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let v: Vec<i32> = set.iter().copied().collect();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// The pure decision. `pods` are the Job's own pods.
pub fn plan(job: &Job, pods: &[Pod], now: u64) -> Plan {
    let mut out = Plan::default();
    let spec = &job.spec;
    let mut status = job.status.clone().unwrap_or_default();
    let stamp = timestamp(now);
    let active: Vec<&Pod> = pods.iter().filter(|p| super::pod_active(p)).collect();
    let succeeded: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Succeeded").collect();
    let rules = spec.pod_failure_policy.as_ref().map(|p| p.rules.as_slice()).unwrap_or(&[]);
    let mut fail_job: Option<String> = None;
    let mut failures = 0i64;
    let mut last_failure = 0u64;
    for p in pods.iter().filter(|p| phase(p) == "Failed") {
        match rule_for(rules, p).map(|r| r.action.as_str()) {
            Some("Ignore") => continue,
            Some("FailJob") => {
                let codes: Vec<String> =
                    exit_codes(p).iter().map(|(n, c)| format!("{n} exited with {c}")).collect();
                fail_job.get_or_insert(format!(
                    "Pod {} has condition matching a FailJob rule of the pod failure policy: {}",
                    p.metadata.name,
                    codes.join(", ")
                ));
            }
            _ => {}
        }
        failures += 1;
        last_failure = last_failure.max(finished_at(p).unwrap_or(0));
    }
    if spec.template.spec.restart_policy.as_deref() == Some("OnFailure") {
        failures += active
            .iter()
            .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter()))
            .map(|c| i64::from(c.restart_count))
            .sum::<i64>();
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    status.active = Some(count(active.len()));
    status.succeeded = Some(count(succeeded.len()));
    status.failed = Some(i32::try_from(failures).unwrap_or(i32::MAX));
    status.ready = Some(count(active.iter().filter(|p| super::ready_since(p).is_some()).count()));
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let done_indexes: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();
    if indexed {
        status.completed_indexes = Some(format_indexes(&done_indexes));
    }

    // Finished already: only the time to live and stragglers.
    if let Some(c) = finished(&status) {
        out.delete = active.iter().map(|p| p.metadata.name.clone()).collect();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let at = c.last_transition_time.as_deref().and_then(parse_time).unwrap_or(now)
                + u64::try_from(ttl.max(0)).unwrap_or(0);
            if at <= now {
                out.delete_job = true;
            } else {
                out.next = Next::After(Duration::from_secs(at - now));
            }
        }
        out.status = status;
        return out;
    }
    if spec.suspend == Some(true) {
        out.delete = active.iter().map(|p| p.metadata.name.clone()).collect();
        set_condition(
            &mut status.conditions,
            condition("Suspended", "True", "JobSuspended", "Job suspended"),
            &stamp,
        );
        out.status = status;
        return out;
    }
    if status.conditions.iter().any(|c| c.type_ == "Suspended" && c.status == "True") {
        set_condition(
            &mut status.conditions,
            condition("Suspended", "False", "JobResumed", "Job resumed"),
            &stamp,
        );
        status.start_time = None;
    }
    let start = status.start_time.get_or_insert_with(|| stamp.clone()).clone();
    let start = parse_time(&start).unwrap_or(now);
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6));
    let fail = if let Some(msg) = fail_job {
        Some(("PodFailurePolicy", msg))
    } else if spec
        .active_deadline_seconds
        .is_some_and(|d| start + u64::try_from(d.max(0)).unwrap_or(0) <= now)
    {
        Some(("DeadlineExceeded", "Job was active longer than specified deadline".to_string()))
    } else if failures > backoff_limit {
        Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".to_string()))
    } else {
        None
    };
    if let Some((reason, msg)) = fail {
        out.delete = active.iter().map(|p| p.metadata.name.clone()).collect();
        set_condition(&mut status.conditions, condition("Failed", "True", reason, &msg), &stamp);
        out.finished = Some(("Failed", reason, msg));
        status.active = Some(0);
        out.status = status;
        return out;
    }
    if let Some(d) = spec.active_deadline_seconds {
        let end = start + u64::try_from(d.max(0)).unwrap_or(0);
        out.next = Next::After(Duration::from_secs(end.saturating_sub(now).max(1)));
    }

    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
    let complete = match spec.completions {
        Some(c) if indexed => (0..c).all(|i| done_indexes.contains(&i)),
        Some(c) => succeeded.len() >= usize::try_from(c.max(0)).unwrap_or(0),
        None => !succeeded.is_empty() && active.is_empty(),
    };
    if complete {
        out.delete = active.iter().map(|p| p.metadata.name.clone()).collect();
        set_condition(
            &mut status.conditions,
            condition("Complete", "True", "Completed", "Job completed"),
            &stamp,
        );
        status.completion_time = Some(stamp.clone());
        status.active = Some(0);
        out.finished = Some(("Complete", "Completed", "Job completed".into()));
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            out.next = Next::After(Duration::from_secs(u64::try_from(ttl.max(0)).unwrap_or(0)));
        }
        out.status = status;
        return out;
    }
    let want = match spec.completions {
        Some(c) if indexed => {
            let c = usize::try_from(c.max(0)).unwrap_or(0);
            parallelism.min(c - done_indexes.len())
        }
        Some(c) => parallelism.min(usize::try_from(c.max(0)).unwrap_or(0).saturating_sub(succeeded.len())),
        None if !succeeded.is_empty() => active.len(),
        None => parallelism,
    };
    if active.len() > want {
        let mut extra: Vec<&&Pod> = active.iter().collect();
        extra.sort_by(|a, b| super::replicaset::rank(a, b));
        out.delete = extra[..active.len() - want].iter().map(|p| p.metadata.name.clone()).collect();
    } else if active.len() < want {
        // Back-off after failures: 10 s, 20 s, 40 s … at most 6 minutes.
        if failures > 0 {
            let delay = 10u64.saturating_mul(1 << (failures - 1).clamp(0, 6)).min(360);
            let at = last_failure + delay;
            if at > now && last_failure > 0 {
                out.next = out.next.min(Next::After(Duration::from_secs(at - now)));
                out.status = status;
                return out;
            }
        }
        if indexed {
            let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
            let c = spec.completions.unwrap_or(1);
            out.create = (0..c)
                .filter(|i| !done_indexes.contains(i) && !busy.contains(i))
                .take(want - active.len())
                .map(Some)
                .collect();
        } else {
            out.create = vec![None; want - active.len()];
        }
    }
    out.status = status;
    out
}

/// A pod for the Job, with its index in Indexed mode.
pub fn pod_for(job: &Job, index: Option<i32>) -> Value {
    let t = &job.spec.template;
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mut labels = t.metadata.labels.clone();
    for (k, v) in [
        ("batch.kubernetes.io/job-name", job.metadata.name.as_str()),
        ("job-name", job.metadata.name.as_str()),
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
    ] {
        labels.insert(k.into(), v.into());
    }
    let mut annotations = t.metadata.annotations.clone();
    let mut spec = t.spec.clone();
    let generate = match index {
        Some(i) => {
            annotations.insert(INDEX.into(), i.to_string());
            labels.insert(INDEX.into(), i.to_string());
            for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut()) {
                c.env.push(tug_api::kinds::pod::EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
            format!("{}-{i}-", job.metadata.name)
        }
        None => format!("{}-", job.metadata.name),
    };
    super::new_pod(
        generate,
        job.metadata.namespace.clone(),
        labels,
        annotations,
        controller_ref("batch/v1", "Job", &job.metadata),
        spec,
    )
}

/// The reconciler.
pub struct Jobs;

impl Controller for Jobs {
    fn name(&self) -> &'static str {
        "job"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![PODS]
    }

    fn keys_for(&self, _store: &dyn Store, e: &Event) -> Vec<String> {
        super::controller_key(e, "Job", PREFIX)
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let job: Job = decode(&stored)?;
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let ns = job.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = job.metadata.uid.clone().unwrap_or_default();
        // Its own pods, from the store copy's index by controller (not every pod of the
        // namespace decoded at each reconcile).
        let owners: &[&str] = if uid.is_empty() { &[] } else { &[uid.as_str()] };
        let pods: Vec<Pod> =
            super::pods_of(store, &ns, owners, |_| true)?.iter().map(|p| (**p).clone()).collect();
        let p = plan(&job, &pods, super::unix_now());
        let involved = ("Job", "batch/v1", &job.metadata);
        for index in &p.create {
            let created = super::create_generated(store, "/pods", pod_for(&job, *index))?;
            let name = created.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            super::event(
                store,
                involved,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {name}"),
                "job-controller",
            )?;
        }
        for name in &p.delete {
            crate::deletion::delete_quietly(store, &format!("{PODS}{ns}/{name}"))?;
            super::event(
                store,
                involved,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
                "job-controller",
            )?;
        }
        if p.delete_job {
            match store.delete(key, Some(stored.revision)) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            return Ok(Next::Done);
        }
        if job.status.as_ref() != Some(&p.status) {
            let mut obj = stored.object.clone();
            obj["status"] = serde_json::to_value(&p.status).unwrap_or(Value::Null);
            store.update(key, obj, Some(stored.revision))?;
        }
        if let Some((type_, reason, msg)) = &p.finished {
            let t = if *type_ == "Failed" { "Warning" } else { "Normal" };
            super::event(store, involved, t, reason, msg, "job-controller")?;
        }
        Ok(p.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::batch::{PodFailurePolicy, PodFailurePolicyOnExitCodes};

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        let mut j = Job::default();
        j.metadata.name = "pi".into();
        j.metadata.namespace = Some("default".into());
        j.metadata.uid = Some("uid-pi".into());
        j.spec.completions = completions;
        j.spec.parallelism = Some(parallelism);
        j.spec.backoff_limit = Some(2);
        j.spec.template.spec.restart_policy = Some("Never".into());
        j
    }

    fn pod(name: &str, phase: &str, exit: Option<i64>, index: Option<i32>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        if let Some(i) = index {
            p.metadata.annotations.insert(INDEX.into(), i.to_string());
        }
        let mut st = tug_api::kinds::pod::PodStatus { phase: Some(phase.into()), ..Default::default() };
        if let Some(code) = exit {
            st.container_statuses.push(
                serde_json::from_value(serde_json::json!({"name": "main", "state": {"terminated": {"exitCode": code, "finishedAt": timestamp(900)}}}))
                    .unwrap(),
            );
        }
        p.status = Some(st);
        p
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(Some(3), 2);
        let p = plan(&j, &[], 1000);
        assert_eq!(p.create.len(), 2);
        let p = plan(&j, &[pod("a", "Succeeded", Some(0), None), pod("b", "Running", None, None)], 1000);
        assert_eq!(p.create.len(), 1);
        let done = [
            pod("a", "Succeeded", Some(0), None),
            pod("b", "Succeeded", Some(0), None),
            pod("c", "Succeeded", Some(0), None),
        ];
        let p = plan(&j, &done, 1000);
        assert_eq!(p.finished.as_ref().map(|f| f.0), Some("Complete"));
        assert_eq!(p.status.succeeded, Some(3));
        assert!(p.status.completion_time.is_some());
    }

    #[test]
    fn failures_back_off_then_exhaust_the_limit() {
        let j = job(Some(1), 1);
        let p = plan(&j, &[pod("a", "Failed", Some(1), None)], 905);
        assert!(p.create.is_empty());
        assert_eq!(p.next, Next::After(Duration::from_secs(5)));
        let p = plan(&j, &[pod("a", "Failed", Some(1), None)], 911);
        assert_eq!(p.create.len(), 1);
        let three = [
            pod("a", "Failed", Some(1), None),
            pod("b", "Failed", Some(1), None),
            pod("c", "Failed", Some(1), None),
        ];
        let p = plan(&j, &three, 2000);
        assert_eq!(p.finished.as_ref().map(|f| (f.0, f.1)), Some(("Failed", "BackoffLimitExceeded")));
    }

    #[test]
    fn pod_failure_policy_by_exit_code() {
        let mut j = job(Some(1), 1);
        let rule = |action: &str, codes: Vec<i32>| PodFailurePolicyRule {
            action: action.into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodes {
                container_name: None,
                operator: "In".into(),
                values: codes,
            }),
        };
        j.spec.pod_failure_policy =
            Some(PodFailurePolicy { rules: vec![rule("FailJob", vec![42]), rule("Ignore", vec![137])] });
        let p = plan(&j, &[pod("a", "Failed", Some(42), None)], 2000);
        let (t, reason, msg) = p.finished.unwrap();
        assert_eq!((t, reason), ("Failed", "PodFailurePolicy"));
        assert!(msg.contains("main exited with 42"), "{msg}");
        let p = plan(&j, &[pod("a", "Failed", Some(137), None)], 2000);
        assert_eq!(p.status.failed, Some(0));
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let mut j = job(Some(4), 2);
        j.spec.completion_mode = Some("Indexed".into());
        let p =
            plan(&j, &[pod("a", "Succeeded", Some(0), Some(0)), pod("b", "Running", None, Some(1))], 1000);
        assert_eq!(p.create, vec![Some(2)]);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        let v = pod_for(&j, Some(2));
        assert_eq!(v["metadata"]["annotations"][INDEX], "2");
        assert_eq!(v["metadata"]["generateName"], "pi-2-");
        assert_eq!(format_indexes(&[0, 1, 2, 5, 7, 8].into_iter().collect()), "0-2,5,7-8");
    }

    #[test]
    fn deadline_and_ttl() {
        let mut j = job(Some(1), 1);
        j.spec.active_deadline_seconds = Some(10);
        j.status = Some(JobStatus { start_time: Some(timestamp(1000)), ..Default::default() });
        let p = plan(&j, &[pod("a", "Running", None, None)], 1005);
        assert_eq!(p.next, Next::After(Duration::from_secs(5)));
        let p = plan(&j, &[pod("a", "Running", None, None)], 1010);
        assert_eq!(p.finished.as_ref().map(|f| f.1), Some("DeadlineExceeded"));
        assert_eq!(p.delete, vec!["a"]);
        let mut done = job(Some(1), 1);
        done.spec.ttl_seconds_after_finished = Some(60);
        let mut c = condition("Complete", "True", "Completed", "");
        c.last_transition_time = Some(timestamp(1000));
        done.status = Some(JobStatus { conditions: vec![c], ..Default::default() });
        assert_eq!(plan(&done, &[], 1030).next, Next::After(Duration::from_secs(30)));
        assert!(plan(&done, &[], 1060).delete_job);
    }
}
