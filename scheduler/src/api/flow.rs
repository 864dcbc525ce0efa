//! API priority and fairness, as Kubernetes' apiserver has it (its default priority levels
//! and their nominal shares): each request is put in a priority level by who makes it and what
//! it touches, and each level runs at most its seats' worth of requests at once; the rest wait
//! their turn in arrival order, holding no thread, and give up with 429 after
//! [`QUEUE_TIMEOUT`].
//!
//! A seat is a blocking thread here: a write holds one until its group commit is durable. With
//! every request on one pool, 5,000 nodes' heartbeats and pods' status updates took every
//! thread in a burst and an operator's create waited 1.5–3 s behind them. Now nodes have
//! their levels (`node-high`: their Leases and Node objects; `system`: the rest of what they
//! do), and the seats of all levels together stay below the pool's threads, so an
//! operator's request (`system:masters`: exempt) and the controllers always find one.
//!
//! Watches take no seat (they are long-running; their start is cheap).

use crate::auth::{self, User};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a request waits for a seat before it is refused with 429 (Kubernetes' request
/// timeout in a queue).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// The priority levels, with Kubernetes' names and nominal concurrency shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `system:masters`: never queued.
    Exempt,
    /// Nodes' Leases and Node objects: heartbeats, which a node must not miss.
    NodeHigh,
    /// Everything else nodes do (their pods' status, their watches' lists).
    System,
    /// Service accounts of the system namespaces (`kube-system`, `tug-system`).
    WorkloadHigh,
    /// Other service accounts: workloads' own clients.
    WorkloadLow,
    /// Every other authenticated user.
    GlobalDefault,
    /// Unauthenticated requests.
    CatchAll,
}

impl Level {
    pub const QUEUED: [Level; 6] = [
        Level::NodeHigh,
        Level::System,
        Level::WorkloadHigh,
        Level::WorkloadLow,
        Level::GlobalDefault,
        Level::CatchAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Exempt => "exempt",
            Level::NodeHigh => "node-high",
            Level::System => "system",
            Level::WorkloadHigh => "workload-high",
            Level::WorkloadLow => "workload-low",
            Level::GlobalDefault => "global-default",
            Level::CatchAll => "catch-all",
        }
    }

    /// Kubernetes' nominal concurrency shares of the level.
    fn shares(self) -> usize {
        match self {
            Level::Exempt => 0,
            Level::NodeHigh => 40,
            Level::System => 30,
            Level::WorkloadHigh => 40,
            Level::WorkloadLow => 100,
            Level::GlobalDefault => 20,
            Level::CatchAll => 5,
        }
    }

    /// The level of a request by `user` on resource `plural` of API group `group`.
    pub fn of(user: &User, group: &str, plural: &str) -> Level {
        if user.in_group(auth::MASTERS) {
            Level::Exempt
        } else if user.in_group(auth::NODES) {
            if (group == "coordination.k8s.io" && plural == "leases")
                || (group.is_empty() && plural == "nodes")
            {
                Level::NodeHigh
            } else {
                Level::System
            }
        } else if ["system:serviceaccount:kube-system:", "system:serviceaccount:tug-system:"]
            .iter()
            .any(|p| user.name.starts_with(p))
        {
            Level::WorkloadHigh
        } else if user.in_group("system:serviceaccounts") {
            Level::WorkloadLow
        } else if user.in_group(auth::UNAUTHENTICATED) {
            Level::CatchAll
        } else {
            Level::GlobalDefault
        }
    }
}

/// Each queued level's seats: `total` shared in proportion to the levels' shares, at least
/// one each (Kubernetes' nominal concurrency limits, rounded up).
pub fn seats(total: usize) -> Vec<(Level, usize)> {
    let sum: usize = Level::QUEUED.iter().map(|l| l.shares()).sum();
    Level::QUEUED.iter().map(|&l| (l, (total * l.shares()).div_ceil(sum).max(1))).collect()
}

/// The levels' seats and queues.
pub struct Flow {
    levels: Vec<Queue>,
}

/// One queued level: its seats and its metrics' series, looked up once.
struct Queue {
    level: Level,
    seats: Arc<Semaphore>,
    executing: tug_metrics::Gauge,
    inqueue: tug_metrics::Gauge,
    wait: tug_metrics::Histogram,
    rejected: tug_metrics::Counter,
}

/// A request's seat: given back when dropped.
pub struct Seat {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its level's executing requests (none for an exempt request).
    executing: Option<tug_metrics::Gauge>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(g) = &self.executing {
            g.dec();
        }
    }
}

impl Flow {
    /// Levels sharing `total` seats (`--max-requests-inflight`).
    pub fn new(total: usize) -> Flow {
        let m = crate::metrics::get();
        let levels = seats(total)
            .into_iter()
            .map(|(level, n)| {
                let labels = tug_metrics::labels([("priority_level", level.name())]);
                m.flow_limit.get_or_create(&labels).set(n as i64);
                Queue {
                    level,
                    seats: Arc::new(Semaphore::new(n)),
                    executing: m.flow_executing.get_or_create(&labels).clone(),
                    inqueue: m.flow_inqueue.get_or_create(&labels).clone(),
                    wait: m.flow_wait.get_or_create(&labels).clone(),
                    rejected: m
                        .flow_rejected
                        .get_or_create(&tug_metrics::labels([
                            ("priority_level", level.name()),
                            ("reason", "time-out"),
                        ]))
                        .clone(),
                }
            })
            .collect();
        Flow { levels }
    }

    /// Waits for a seat of `level`'s; a 429 Status once it has waited [`QUEUE_TIMEOUT`].
    pub async fn seat(&self, level: Level) -> Result<Seat, tug_api::status::Status> {
        let Some(q) = self.levels.iter().find(|q| q.level == level) else {
            return Ok(Seat { _permit: None, executing: None });
        };
        let started = Instant::now();
        let permit = match Arc::clone(&q.seats).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                q.inqueue.inc();
                let p = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&q.seats).acquire_owned()).await;
                q.inqueue.dec();
                p.ok().and_then(Result::ok)
            }
        };
        let Some(p) = permit else {
            q.rejected.inc();
            return Err(tug_api::status::Status::new(
                429,
                "TooManyRequests",
                format!(
                    "the server has received too many requests of priority level {:?} and its queue timed out after {}s; try again later",
                    level.name(),
                    QUEUE_TIMEOUT.as_secs()
                ),
            ));
        };
        q.wait.observe(started.elapsed().as_secs_f64());
        q.executing.inc();
        Ok(Seat { _permit: Some(p), executing: Some(q.executing.clone()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_kubernetes_default_levels() {
        let node = User::new("system:node:n1", [auth::NODES.to_string()]);
        assert_eq!(Level::of(&User::admin(), "", "pods"), Level::Exempt);
        assert_eq!(Level::of(&node, "coordination.k8s.io", "leases"), Level::NodeHigh);
        assert_eq!(Level::of(&node, "", "nodes"), Level::NodeHigh);
        assert_eq!(Level::of(&node, "", "pods"), Level::System);
        let sa = |ns: &str| {
            User::new(format!("system:serviceaccount:{ns}:x"), ["system:serviceaccounts".to_string()])
        };
        assert_eq!(Level::of(&sa("kube-system"), "", "pods"), Level::WorkloadHigh);
        assert_eq!(Level::of(&sa("default"), "", "pods"), Level::WorkloadLow);
        assert_eq!(Level::of(&User::new("alice", ["dev".to_string()]), "", "pods"), Level::GlobalDefault);
        assert_eq!(Level::of(&User::anonymous(), "", "pods"), Level::CatchAll);
    }

    #[test]
    fn seats_follow_the_shares_and_every_level_has_one() {
        let s = seats(96);
        let of = |l| s.iter().find(|(x, _)| *x == l).unwrap().1;
        assert_eq!((of(Level::NodeHigh), of(Level::System), of(Level::WorkloadLow)), (17, 13, 41));
        assert!(s.iter().map(|(_, n)| n).sum::<usize>() <= 96 + Level::QUEUED.len());
        assert!(seats(1).iter().all(|(_, n)| *n == 1));
    }

    /// A level's seats taken: its next request waits (counted in its queue) until one is
    /// given back, while another level's request and an exempt one go at once.
    #[tokio::test]
    async fn a_full_level_queues_its_own_requests_only() {
        let flow = Arc::new(Flow::new(1));
        let held = flow.seat(Level::NodeHigh).await.unwrap();
        let waiting = {
            let flow = Arc::clone(&flow);
            tokio::spawn(async move { flow.seat(Level::NodeHigh).await.map(|_| ()) })
        };
        let mut waiting = waiting;
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "the level's one seat is taken");
        let other = tokio::time::timeout(Duration::from_millis(200), flow.seat(Level::GlobalDefault)).await;
        assert!(other.is_ok(), "another level has its own seats");
        let exempt = tokio::time::timeout(Duration::from_millis(200), flow.seat(Level::Exempt)).await;
        assert!(exempt.is_ok(), "exempt requests never wait");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    }
}
