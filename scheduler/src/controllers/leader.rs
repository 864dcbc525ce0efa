//! Leader election among control-plane replicas, and the fence on the leader's writes.
//!
//! Every replica serves the API; one at a time runs the controllers and the scheduler. The lead
//! is a Lease (`tug-system/tug-controllers`) held by renewing it every `retry` period:
//!
//! - **Expiry by observation.** A follower never compares the holder's `renewTime` with its
//!   own clock (clocks drift between hosts). It notes when it first saw the Lease at its
//!   current revision and takes over once that revision has stood unchanged for the Lease's
//!   `leaseDurationSeconds` — client-go's rule.
//! - **Stepping down.** A leader that has not renewed for `renew_deadline` (shorter than the
//!   lease) stops its controllers, before any follower may take over. Each renewal is bounded
//!   by what is left of that deadline, so a replica cut off from etcd stops in time even
//!   while its request hangs.
//! - **The fence.** A new leader first rewrites a second Lease, `tug-controllers-epoch` (its
//!   `leaseTransitions` counts the leaders), and its controllers write through a store fenced
//!   by that write's revision ([`crate::store::Fence`]): etcd refuses, in the same
//!   transaction, any write of a replaced leader — one paused (SIGSTOP, a stall, a frozen VM)
//!   and resumed after the takeover still believes it leads for a moment, and its writes go
//!   nowhere.
//!
//! The embedded store is opened by one process, so there is nothing to fence and its lead is
//! never given up; the Lease is still kept, for `kubectl get lease`.
//!
//! The decision is [`decide`], pure; [`spawn`] carries it out.

use crate::store::{Fence, Store, StoreError, Stored};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The Lease that elects which control-plane replica runs the controllers.
pub const LEADER_LEASE: &str = "coordination.k8s.io/leases/tug-system/tug-controllers";
/// The Lease a new leader rewrites before it acts: the fence on its writes.
pub const EPOCH_LEASE: &str = "coordination.k8s.io/leases/tug-system/tug-controllers-epoch";

/// `--leader-elect-lease-duration`, `--leader-elect-renew-deadline`,
/// `--leader-elect-retry-period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a follower waits, from when it saw the Lease's last change, to take over.
    pub lease: Duration,
    /// How long a leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and followers look.
    pub retry: Duration,
}

impl Default for Timing {
    /// Chosen for a takeover within 5 s of a leader's death: at most `lease` + `retry` after
    /// its last renewal (Kubernetes' 15 s / 10 s / 2 s take up to 17 s).
    fn default() -> Timing {
        Timing {
            lease: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry: Duration::from_millis(500),
        }
    }
}

impl Timing {
    /// Refuses timings that could let two leaders act at once, as kube-controller-manager does.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease {
            return Err(format!(
                "--leader-elect-renew-deadline ({:?}) must be shorter than --leader-elect-lease-duration ({:?})",
                self.renew_deadline, self.lease
            ));
        }
        if self.retry.is_zero() || self.retry >= self.renew_deadline {
            return Err(format!(
                "--leader-elect-retry-period ({:?}) must be above 0 and shorter than --leader-elect-renew-deadline ({:?})",
                self.retry, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What a replica saw of the Lease: its revision, and when (on its own clock) it first saw
/// that revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    pub revision: u64,
    pub since: Option<Instant>,
}

/// What to do about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it.
    Create,
    /// It is ours: renew it (compare-and-swap on this revision).
    Renew(u64),
    /// Its holder has not renewed for a whole lease: take it (compare-and-swap).
    TakeOver(u64),
    /// Another holds it and is alive, as far as we can tell.
    Wait,
}

/// The pure decision, given the Lease as read now.
pub fn decide(lease: Option<&Stored>, me: &str, observed: &mut Observed, now: Instant) -> Decision {
    let Some(cur) = lease else { return Decision::Create };
    if cur.object["spec"]["holderIdentity"].as_str() == Some(me) {
        return Decision::Renew(cur.revision);
    }
    if observed.revision != cur.revision || observed.since.is_none() {
        *observed = Observed { revision: cur.revision, since: Some(now) };
        return Decision::Wait;
    }
    let secs = cur.object["spec"]["leaseDurationSeconds"].as_u64().unwrap_or(15);
    let stood = observed.since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
    // A Lease without a holder was given up: free to take.
    let holder = cur.object["spec"]["holderIdentity"].as_str().unwrap_or_default();
    if holder.is_empty() || stood >= Duration::from_secs(secs) {
        Decision::TakeOver(cur.revision)
    } else {
        Decision::Wait
    }
}

/// The Lease as `me` writes it, over the current one (if any).
fn lease_object(cur: Option<&Value>, me: &str, timing: &Timing) -> Value {
    let now = micro_time(SystemTime::now());
    // Whole seconds, rounded up: followers may wait a little longer, never shorter.
    let secs = (timing.lease.as_millis().div_ceil(1000)).max(1);
    let mut v = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "tug-controllers", "namespace": "tug-system"},
        "spec": {"holderIdentity": me, "leaseDurationSeconds": secs, "renewTime": now}
    });
    match cur {
        Some(cur) => {
            v["metadata"] = cur["metadata"].clone();
            let same = cur["spec"]["holderIdentity"].as_str() == Some(me);
            v["spec"]["acquireTime"] = if same { cur["spec"]["acquireTime"].clone() } else { now.into() };
            let t = cur["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
            v["spec"]["leaseTransitions"] = (if same { t } else { t + 1 }).into();
        }
        None => {
            v["spec"]["acquireTime"] = now.into();
            v["spec"]["leaseTransitions"] = 0.into();
            crate::api::objects::on_create(&mut v, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
        }
    }
    v
}

/// A Lease's MicroTime: RFC 3339 with microseconds.
fn micro_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// One look at the Lease: Some(true) when `me` holds it now (taken or renewed), Some(false)
/// when another does, None when the store could not say (unreachable, a lost race).
pub fn try_lead(store: &dyn Store, me: &str, observed: &mut Observed, timing: &Timing) -> Option<bool> {
    let cur = store.get(LEADER_LEASE).ok()?;
    let written = match decide(cur.as_ref(), me, observed, Instant::now()) {
        Decision::Wait => return Some(false),
        Decision::Create => store.create(LEADER_LEASE, lease_object(None, me, timing)),
        Decision::Renew(rev) | Decision::TakeOver(rev) => {
            let cur = cur.as_ref().map(|c| &c.object);
            store.update(LEADER_LEASE, lease_object(cur, me, timing), Some(rev))
        }
    };
    match written {
        Ok(_) => Some(true),
        Err(StoreError::AlreadyExists(_) | StoreError::Conflict { .. }) => Some(false),
        Err(_) => None,
    }
}

/// Rewrites the epoch Lease for a new term of `me`: the fence its writes go under.
pub fn new_epoch(store: &dyn Store, me: &str) -> Result<Fence, StoreError> {
    let cur = store.get(EPOCH_LEASE)?;
    let epoch = cur.as_ref().and_then(|c| c.object["spec"]["leaseTransitions"].as_i64()).unwrap_or(-1) + 1;
    let now = micro_time(SystemTime::now());
    let mut v = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "tug-controllers-epoch", "namespace": "tug-system"},
        "spec": {"holderIdentity": me, "acquireTime": now, "renewTime": now, "leaseTransitions": epoch}
    });
    let written = match cur {
        Some(c) => {
            v["metadata"] = c.object["metadata"].clone();
            store.update(EPOCH_LEASE, v, None)?
        }
        None => {
            crate::api::objects::on_create(&mut v, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
            store.create(EPOCH_LEASE, v)?
        }
    };
    Ok(Fence { key: EPOCH_LEASE.to_string(), revision: written.revision })
}

/// `leader_election_master_status{name="tug-controllers"}`: 1 while this replica leads.
fn leading(on: bool) {
    let l = tug_metrics::labels([("name", "tug-controllers")]);
    crate::metrics::get().leader.get_or_create(&l).set(i64::from(on));
}

/// Runs `start(store)` — the controllers, over a store fenced by this replica's term — while
/// this replica leads; stops them when it does not. `identity` names the replica.
pub fn spawn<F>(
    store: Arc<dyn Store>,
    timing: Timing,
    identity: String,
    start: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<dyn Store>) -> Vec<tokio::task::JoinHandle<()>> + Send + 'static,
{
    tokio::spawn(async move {
        leading(false);
        let mut observed = Observed::default();
        loop {
            // Follow until the Lease is ours.
            loop {
                let (s, i, mut o) = (store.clone(), identity.clone(), observed);
                let looked = tokio::time::timeout(
                    timing.renew_deadline,
                    tokio::task::spawn_blocking(move || (try_lead(s.as_ref(), &i, &mut o, &timing), o)),
                )
                .await;
                if let Ok(Ok((led, o))) = looked {
                    observed = o;
                    if led == Some(true) {
                        break;
                    }
                }
                tokio::time::sleep(timing.retry).await;
            }
            let mut renewed = Instant::now();
            let (s, i) = (store.clone(), identity.clone());
            let fence = tokio::time::timeout(
                timing.renew_deadline,
                tokio::task::spawn_blocking(move || new_epoch(s.as_ref(), &i)),
            )
            .await;
            let fence = match fence {
                Ok(Ok(Ok(f))) => f,
                other => {
                    let why = match other {
                        Ok(Ok(Err(e))) => e.to_string(),
                        _ => "the store did not answer in time".into(),
                    };
                    tracing::warn!("tug-scheduler: controllers: could not begin a term: {why}");
                    tokio::time::sleep(timing.retry).await;
                    continue;
                }
            };
            // One process on the embedded store: its lead cannot move, and nothing to fence.
            let (fenced, single) = match store.fenced(&fence) {
                Some(f) => (f, false),
                None => (store.clone(), true),
            };
            let epoch = fence.revision;
            tracing::info!("tug-scheduler: controllers: leading as {identity} (term at revision {epoch})");
            leading(true);
            let handles = start(fenced);
            loop {
                tokio::time::sleep(timing.retry).await;
                let left = timing.renew_deadline.saturating_sub(renewed.elapsed());
                let (s, i, mut o) = (store.clone(), identity.clone(), observed);
                let looked = tokio::time::timeout(
                    if single { timing.renew_deadline } else { left },
                    tokio::task::spawn_blocking(move || try_lead(s.as_ref(), &i, &mut o, &timing)),
                )
                .await;
                match looked {
                    Ok(Ok(Some(true))) => renewed = Instant::now(),
                    // Another holds it: someone took over (we stalled past the lease).
                    Ok(Ok(Some(false))) if !single => break,
                    _ => {}
                }
                if !single && renewed.elapsed() >= timing.renew_deadline {
                    break;
                }
            }
            leading(false);
            for h in handles {
                h.abort();
            }
            tracing::info!("tug-scheduler: controllers: no longer leading; stopped");
            observed = Observed::default();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, rev: u64) -> Stored {
        Stored {
            key: LEADER_LEASE.into(),
            revision: rev,
            object: json!({"spec": {"holderIdentity": holder, "leaseDurationSeconds": 3}}),
        }
    }

    #[test]
    fn a_follower_takes_over_only_after_the_lease_stood_still_for_its_duration() {
        let t0 = Instant::now();
        let mut seen = Observed::default();
        assert_eq!(decide(None, "b", &mut seen, t0), Decision::Create);
        assert_eq!(decide(Some(&lease("b", 7)), "b", &mut seen, t0), Decision::Renew(7));
        // a holds it: b starts its own clock at the first sight of each revision.
        assert_eq!(decide(Some(&lease("a", 7)), "b", &mut seen, t0), Decision::Wait);
        assert_eq!(decide(Some(&lease("a", 7)), "b", &mut seen, t0 + Duration::from_secs(2)), Decision::Wait);
        // a renewed (a new revision): the clock starts again, whatever renewTime says.
        assert_eq!(
            decide(Some(&lease("a", 9)), "b", &mut seen, t0 + Duration::from_millis(2900)),
            Decision::Wait
        );
        assert_eq!(decide(Some(&lease("a", 9)), "b", &mut seen, t0 + Duration::from_secs(5)), Decision::Wait);
        assert_eq!(
            decide(Some(&lease("a", 9)), "b", &mut seen, t0 + Duration::from_millis(5900)),
            Decision::TakeOver(9)
        );
        // A given-up Lease (no holder) is free at once after it is seen.
        let mut fresh = Observed::default();
        assert_eq!(decide(Some(&lease("", 11)), "c", &mut fresh, t0), Decision::Wait);
        assert_eq!(decide(Some(&lease("", 11)), "c", &mut fresh, t0), Decision::TakeOver(11));
    }

    #[test]
    fn timings_that_could_overlap_two_leaders_are_refused() {
        assert!(Timing::default().check().is_ok());
        let t = Timing { lease: Duration::from_secs(2), ..Timing::default() };
        assert!(t.check().unwrap_err().contains("--leader-elect-renew-deadline"));
        let t = Timing { retry: Duration::from_secs(2), ..Timing::default() };
        assert!(t.check().unwrap_err().contains("--leader-elect-retry-period"));
    }

    #[test]
    fn one_leader_at_a_time_and_each_term_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 64).unwrap();
        let timing = Timing::default();
        let (mut a, mut b) = (Observed::default(), Observed::default());
        assert_eq!(try_lead(&store, "a", &mut a, &timing), Some(true));
        assert_eq!(try_lead(&store, "b", &mut b, &timing), Some(false), "a holds it");
        assert_eq!(try_lead(&store, "a", &mut a, &timing), Some(true), "a renews");
        let first = new_epoch(&store, "a").unwrap();
        // b saw the Lease at its current revision long enough ago: it takes over.
        b.revision = store.get(LEADER_LEASE).unwrap().unwrap().revision;
        b.since = Some(Instant::now() - Duration::from_secs(10));
        assert_eq!(try_lead(&store, "b", &mut b, &timing), Some(true));
        assert_eq!(try_lead(&store, "a", &mut a, &timing), Some(false));
        let second = new_epoch(&store, "b").unwrap();
        assert!(second.revision > first.revision);
        let l = store.get(LEADER_LEASE).unwrap().unwrap().object;
        assert_eq!(
            (l["spec"]["holderIdentity"].as_str(), l["spec"]["leaseTransitions"].as_i64()),
            (Some("b"), Some(1))
        );
        assert!(l["spec"]["renewTime"].as_str().unwrap().contains('.'), "MicroTime: {l}");
        let e = store.get(EPOCH_LEASE).unwrap().unwrap().object;
        assert_eq!(
            (e["spec"]["holderIdentity"].as_str(), e["spec"]["leaseTransitions"].as_i64()),
            (Some("b"), Some(1))
        );
    }
}
