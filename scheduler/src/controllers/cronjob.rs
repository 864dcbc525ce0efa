//! CronJobs: a Job at every time the schedule names, in `spec.timeZone` (an IANA name; the
//! scheduler host's zone when unset, as kube-controller-manager does).
//!
//! [`plan`] is pure. Of the times missed since `lastScheduleTime` only the latest runs (more
//! than 100 missed is reported, as Kubernetes does); one older than
//! `startingDeadlineSeconds` is skipped. `concurrencyPolicy`: `Allow` runs Jobs side by side,
//! `Forbid` skips a time while one is active, `Replace` deletes the active ones first. Finished
//! Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are deleted, oldest
//! first. A Job is named `<cronjob>-<minutes since the epoch>` of its scheduled time, so a
//! restarted controller never runs one time twice.

use super::runtime::{Controller, Next};
use super::{controller_of, controller_ref, decode, parse_time, timestamp};
use crate::store::{Event, Store, StoreError};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use std::time::Duration;
use tug_api::cron::Schedule;
use tug_api::kinds::batch::{CronJob, CronJobStatus, Job};
use tug_api::kinds::cluster::ObjectReference;

pub const PREFIX: &str = "batch/cronjobs/";
pub const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// The first time after `after` (seconds since the epoch) that the schedule fires in `tz`.
pub fn next_after(s: &Schedule, tz: &TimeZone, after: i64) -> Option<i64> {
    let start = Timestamp::from_second(after - after.rem_euclid(60) + 60).ok()?;
    let mut dt = start.to_zoned(tz.clone()).datetime();
    let add = |dt: jiff::civil::DateTime, span: Span| dt.checked_add(span).ok();
    // Enough steps for any schedule within about five years (a month, day or hour that does
    // not match is skipped whole).
    for _ in 0..200_000 {
        let month = u32::try_from(dt.month()).unwrap_or(0);
        if !s.month(month) {
            dt = dt.date().last_of_month().tomorrow().ok()?.at(0, 0, 0, 0);
            continue;
        }
        let dom = u32::try_from(dt.day()).unwrap_or(0);
        let dow = u32::try_from(dt.weekday().to_sunday_zero_offset()).unwrap_or(0);
        if !s.day(dom, dow) {
            dt = dt.date().tomorrow().ok()?.at(0, 0, 0, 0);
            continue;
        }
        if !s.hour(u32::try_from(dt.hour()).unwrap_or(0)) {
            dt = add(dt.date().at(dt.hour(), 0, 0, 0), Span::new().hours(1))?;
            continue;
        }
        if !s.minute(u32::try_from(dt.minute()).unwrap_or(0)) {
            dt = add(dt, Span::new().minutes(1))?;
            continue;
        }
        let ts = tz.to_zoned(dt).ok()?.timestamp().as_second();
        if ts > after {
            return Some(ts);
        }
        dt = add(dt, Span::new().minutes(1))?;
    }
    None
}

/// What one reconcile of a CronJob does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// A Job to create for this scheduled time (seconds), with its name.
    pub create: Option<(i64, String)>,
    /// Jobs to delete: replaced by `Replace`, or beyond the history limits.
    pub delete: Vec<String>,
    pub status: CronJobStatus,
    pub events: Vec<(&'static str, &'static str, String)>,
    pub next: Next,
}

fn job_finished(j: &Job) -> Option<(&str, Option<u64>)> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| (c.type_.as_str(), c.last_transition_time.as_deref().and_then(parse_time)))
}

/// The zone of a CronJob: its `timeZone`, else the host's.
pub fn zone(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.time_zone.as_deref() {
        Some(name) => TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}")),
        None => Ok(TimeZone::system()),
    }
}

/// The pure decision. `jobs` are the CronJob's own Jobs.
pub fn plan(cj: &CronJob, jobs: &[Job], now: i64, tz: &TimeZone) -> Plan {
    let mut out = Plan::default();
    let mut status = cj.status.clone().unwrap_or_default();
    let active: Vec<&Job> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
    status.active = active
        .iter()
        .map(|j| ObjectReference {
            kind: Some("Job".into()),
            namespace: j.metadata.namespace.clone(),
            name: Some(j.metadata.name.clone()),
            uid: j.metadata.uid.clone(),
            api_version: Some("batch/v1".into()),
            ..Default::default()
        })
        .collect();
    let last_success = jobs
        .iter()
        .filter_map(|j| match job_finished(j) {
            Some(("Complete", t)) => t,
            _ => None,
        })
        .max();
    if let Some(t) = last_success {
        status.last_successful_time = Some(timestamp(t));
    }
    // History: oldest finished Jobs beyond the limits.
    for (kind, limit) in [
        ("Complete", cj.spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", cj.spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<(u64, &str)> = jobs
            .iter()
            .filter_map(|j| match job_finished(j) {
                Some((k, t)) if k == kind => Some((t.unwrap_or(0), j.metadata.name.as_str())),
                _ => None,
            })
            .collect();
        done.sort();
        let limit = usize::try_from(limit.max(0)).unwrap_or(0);
        out.delete.extend(done.iter().take(done.len().saturating_sub(limit)).map(|(_, n)| n.to_string()));
    }
    let schedule = match Schedule::parse(&cj.spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            out.events.push((
                "Warning",
                "UnparseableSchedule",
                format!("unparseable schedule {:?}: {e}", cj.spec.schedule),
            ));
            out.status = status;
            return out;
        }
    };
    if cj.spec.suspend == Some(true) {
        out.status = status;
        return out;
    }
    let created = cj.metadata.creation_timestamp.as_deref().and_then(parse_time).unwrap_or(0);
    let mut earliest = status
        .last_schedule_time
        .as_deref()
        .and_then(parse_time)
        .unwrap_or(created)
        .try_into()
        .unwrap_or(now);
    if let Some(d) = cj.spec.starting_deadline_seconds {
        earliest = earliest.max(now - d);
    }
    // The latest missed time, counting how many were missed.
    let mut latest = None;
    let mut missed = 0;
    let mut t = earliest;
    while let Some(n) = next_after(&schedule, tz, t).filter(|n| *n <= now) {
        latest = Some(n);
        missed += 1;
        t = n;
        if missed > 100 {
            out.events.push((
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times (> 100); only the latest runs; set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            ));
            // Jump close to now and find the latest from there.
            t = t.max(now - 7 * 24 * 3600);
            while let Some(n) = next_after(&schedule, tz, t).filter(|n| *n <= now) {
                latest = Some(n);
                t = n;
            }
            break;
        }
    }
    if let Some(next) = next_after(&schedule, tz, now) {
        out.next = Next::After(Duration::from_secs(u64::try_from(next - now).unwrap_or(1).max(1)));
    }
    let Some(when) = latest else {
        out.status = status;
        return out;
    };
    let policy = cj.spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        // Kubernetes retries this time until it is too late; so do we, at the next event.
        out.status = status;
        out.next = out.next.min(Next::After(Duration::from_secs(5)));
        return out;
    }
    if policy == "Replace" {
        out.delete.extend(active.iter().map(|j| j.metadata.name.clone()));
    }
    let name = format!("{}-{}", cj.metadata.name, when / 60);
    status.last_schedule_time = Some(timestamp(u64::try_from(when).unwrap_or(0)));
    out.create = Some((when, name));
    out.status = status;
    out
}

/// The Job a CronJob makes for one scheduled time.
pub fn job_for(cj: &CronJob, name: &str, when: i64) -> serde_json::Value {
    let t = &cj.spec.job_template;
    let mut meta = t.metadata.clone();
    meta.name = name.into();
    meta.namespace = cj.metadata.namespace.clone();
    meta.annotations.insert(SCHEDULED.into(), timestamp(u64::try_from(when).unwrap_or(0)));
    meta.owner_references = vec![controller_ref("batch/v1", "CronJob", &cj.metadata)];
    let job = Job {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        metadata: meta,
        spec: t.spec.clone(),
        status: None,
    };
    serde_json::to_value(job).unwrap_or_default()
}

/// The reconciler.
pub struct CronJobs;

impl Controller for CronJobs {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![super::job::PREFIX]
    }

    fn keys_for(&self, _store: &dyn Store, e: &Event) -> Vec<String> {
        super::controller_key(e, "CronJob", PREFIX)
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let cj: CronJob = decode(&stored)?;
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let involved = ("CronJob", "batch/v1", &cj.metadata);
        let tz = match zone(&cj) {
            Ok(z) => z,
            Err(e) => {
                super::event(store, involved, "Warning", "UnknownTimeZone", &e, "cronjob-controller")?;
                return Ok(Next::Done);
            }
        };
        let ns = cj.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let (items, _) = store.list(&format!("{}{ns}/", super::job::PREFIX))?;
        let jobs: Vec<Job> = items
            .iter()
            .filter_map(|s| decode::<Job>(s).ok())
            .filter(|j| controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
            .collect();
        let now = i64::try_from(super::unix_now()).unwrap_or(0);
        let p = plan(&cj, &jobs, now, &tz);
        for name in &p.delete {
            let k = format!("{}{ns}/{name}", super::job::PREFIX);
            match store.delete(&k, None) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            super::event(
                store,
                involved,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted job {name}"),
                "cronjob-controller",
            )?;
        }
        for (t, reason, msg) in &p.events {
            super::event(store, involved, t, reason, msg, "cronjob-controller")?;
        }
        if let Some((when, name)) = &p.create {
            let mut v = job_for(&cj, name, *when);
            crate::api::objects::on_create(&mut v, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
            match store.create(&format!("{}{ns}/{name}", super::job::PREFIX), v) {
                Ok(_) => super::event(
                    store,
                    involved,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created job {name}"),
                    "cronjob-controller",
                )?,
                // Made before a restart: the time is done.
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut status = p.status.clone();
        if let Some((_, name)) = &p.create {
            if !status.active.iter().any(|a| a.name.as_deref() == Some(name)) {
                status.active.push(ObjectReference {
                    kind: Some("Job".into()),
                    namespace: Some(ns.clone()),
                    name: Some(name.clone()),
                    api_version: Some("batch/v1".into()),
                    ..Default::default()
                });
            }
        }
        if cj.status.as_ref() != Some(&status) {
            let mut obj = stored.object.clone();
            obj["status"] = serde_json::to_value(&status).unwrap_or_default();
            store.update(key, obj, Some(stored.revision))?;
        }
        Ok(p.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn next_times_in_zones() {
        let utc = TimeZone::UTC;
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // Friday 17:50 → Monday 09:00.
        assert_eq!(next_after(&s, &utc, at("2026-11-27T17:50:00Z")), Some(at("2026-11-30T09:00:00Z")));
        let daily = Schedule::parse("@daily").unwrap();
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(next_after(&daily, &berlin, at("2026-11-26T12:00:00Z")), Some(at("2026-11-26T23:00:00Z")));
        // Feb 30 never comes; Feb 29 does in 2028.
        assert_eq!(
            next_after(&Schedule::parse("0 0 30 2 *").unwrap(), &utc, at("2026-01-01T00:00:00Z")),
            None
        );
        assert_eq!(
            next_after(&Schedule::parse("0 0 29 2 *").unwrap(), &utc, at("2026-01-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        // Across the spring-forward gap: 02:30 does not exist in Berlin on 2026-03-29.
        let s = Schedule::parse("30 2 * * *").unwrap();
        let t = next_after(&s, &berlin, at("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(t, at("2026-03-29T01:30:00Z"));
    }

    fn cj(schedule: &str, policy: &str) -> CronJob {
        let mut c = CronJob::default();
        c.metadata.name = "tick".into();
        c.metadata.namespace = Some("default".into());
        c.metadata.uid = Some("uid-tick".into());
        c.metadata.creation_timestamp = Some("2026-11-26T10:00:30Z".into());
        c.spec.schedule = schedule.into();
        c.spec.concurrency_policy = Some(policy.into());
        c
    }

    fn job(name: &str, finished: Option<(&str, &str)>) -> Job {
        let mut j = Job::default();
        j.metadata.name = name.into();
        if let Some((t, when)) = finished {
            let mut c = super::super::condition(t, "True", "", "");
            c.last_transition_time = Some(when.into());
            j.status = Some(tug_api::kinds::batch::JobStatus { conditions: vec![c], ..Default::default() });
        }
        j
    }

    #[test]
    fn fires_the_latest_missed_time_once() {
        let c = cj("* * * * *", "Allow");
        let p = plan(&c, &[], at("2026-11-26T10:03:10Z"), &TimeZone::UTC);
        let (when, name) = p.create.unwrap();
        assert_eq!(when, at("2026-11-26T10:03:00Z"));
        assert_eq!(name, format!("tick-{}", when / 60));
        assert_eq!(p.next, Next::After(Duration::from_secs(50)));
        let mut c2 = c.clone();
        c2.status = Some(p.status);
        assert_eq!(plan(&c2, &[], at("2026-11-26T10:03:40Z"), &TimeZone::UTC).create, None);
    }

    #[test]
    fn concurrency_policies_deadline_and_history() {
        let running = [job("tick-1", None)];
        assert_eq!(
            plan(&cj("* * * * *", "Forbid"), &running, at("2026-11-26T10:03:10Z"), &TimeZone::UTC).create,
            None
        );
        let p = plan(&cj("* * * * *", "Replace"), &running, at("2026-11-26T10:03:10Z"), &TimeZone::UTC);
        assert!(p.create.is_some());
        assert_eq!(p.delete, vec!["tick-1"]);
        let mut late = cj("0 10 * * *", "Allow");
        late.spec.starting_deadline_seconds = Some(60);
        late.metadata.creation_timestamp = Some("2026-11-25T00:00:00Z".into());
        assert_eq!(plan(&late, &[], at("2026-11-26T10:05:00Z"), &TimeZone::UTC).create, None);
        let done = [
            job("a", Some(("Complete", "2026-11-26T10:01:00Z"))),
            job("b", Some(("Complete", "2026-11-26T10:02:00Z"))),
            job("c", Some(("Complete", "2026-11-26T10:03:00Z"))),
            job("d", Some(("Complete", "2026-11-26T10:04:00Z"))),
            job("e", Some(("Failed", "2026-11-26T10:00:00Z"))),
            job("f", Some(("Failed", "2026-11-26T10:05:00Z"))),
        ];
        let mut c = cj("0 0 1 1 *", "Allow");
        c.spec.successful_jobs_history_limit = Some(3);
        c.spec.failed_jobs_history_limit = Some(1);
        let p = plan(&c, &done, at("2026-11-26T10:06:00Z"), &TimeZone::UTC);
        assert_eq!(p.delete, vec!["a", "e"]);
        assert_eq!(p.status.last_successful_time.as_deref(), Some("2026-11-26T10:04:00Z"));
    }
}
