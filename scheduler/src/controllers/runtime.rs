//! The reconciler runtime: a work queue of object keys fed by store watches, and workers that
//! run one reconcile at a time per key.
//!
//! ```text
//!  watch(primary) ──key──┐                       ┌─> worker ─ reconcile(key) ─┐
//!  watch(secondary) ─keys_for─> Queue (dedup) ───┤                            │
//!  resync tick ─every key─┘      ▲               └─> worker ─ ...             │
//!                                └── retry after back-off / requeue_after ────┘
//! ```
//!
//! - A key waiting in the queue is there once, however many events named it.
//! - A key being reconciled is never handed to a second worker; events for it meanwhile mark
//!   it dirty and it goes round again when the first reconcile ends.
//! - A reconcile that fails is retried after 5 ms doubling to 30 s; one that succeeds forgets
//!   its failures. A reconcile may ask to be called again after a delay (a deadline to check).
//! - Every `resync` all primary objects are queued, and a watch cut off (too slow, compacted)
//!   relists: a missed event never leaves an object unreconciled for long.

use crate::store::{Event, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Next {
    #[default]
    Done,
    /// Look again after this long (a deadline or `minReadySeconds` to check).
    After(Duration),
}

impl Next {
    /// The sooner of two requests.
    pub fn min(self, other: Next) -> Next {
        match (self, other) {
            (Next::Done, o) | (o, Next::Done) => o,
            (Next::After(a), Next::After(b)) => Next::After(a.min(b)),
        }
    }
}

/// One reconciler, as the runtime drives it. Reconciles are blocking (store calls) and run on
/// tokio's blocking threads.
pub trait Controller: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The store prefix of the objects reconciled; queue keys are their store keys.
    fn primary(&self) -> &'static str;
    /// Prefixes of other objects whose changes concern primary objects.
    fn secondary(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Whether events of primary objects go through [`Controller::keys_for`] too (instead of
    /// queueing the object's own key).
    fn expands_primary(&self) -> bool {
        false
    }
    /// The primary keys an event under a secondary prefix concerns.
    fn keys_for(&self, _store: &dyn Store, _event: &Event) -> Vec<String> {
        Vec::new()
    }
    /// The primary keys a list queues (at the start, at every resync, after a watch is cut
    /// off) and the revision to watch from: every key under [`Controller::primary`], unless
    /// the controller looks at few of them (as [`Controller::keys_for`] picks from events).
    fn list(&self, store: &dyn Store) -> Result<(Vec<String>, u64), StoreError> {
        store.keys(self.primary())
    }
    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError>;
    /// How often every primary object is queued again, given the `--resync-period`.
    fn resync(&self, period: Duration) -> Duration {
        period
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    /// Keys in `ready`.
    queued: HashSet<String>,
    /// Keys a worker holds.
    active: HashSet<String>,
    /// Keys named again while held: queued once released.
    dirty: HashSet<String>,
    delayed: BTreeMap<Instant, Vec<String>>,
    failures: HashMap<String, u32>,
}

/// The deduplicating work queue.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: &str) {
        let mut s = self.lock();
        if s.active.contains(key) {
            s.dirty.insert(key.to_string());
            return;
        }
        if s.queued.insert(key.to_string()) {
            s.ready.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn add_after(&self, key: &str, delay: Duration) {
        let mut s = self.lock();
        s.delayed.entry(Instant::now() + delay).or_default().push(key.to_string());
        drop(s);
        // A worker waiting may need to wake sooner than it planned.
        self.notify.notify_waiters();
    }

    /// Moves delayed keys that are due; returns when the next one is due.
    fn promote(&self) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut s = self.lock();
            let later = s.delayed.split_off(&now);
            let due = std::mem::replace(&mut s.delayed, later);
            due.into_values().flatten().collect()
        };
        for k in due {
            self.add(&k);
        }
        self.lock().delayed.keys().next().copied()
    }

    /// Takes the next key, waiting for one; the caller must call [`Queue::done`] with it.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake = self.promote();
            {
                let mut s = self.lock();
                if let Some(k) = s.ready.pop_front() {
                    s.queued.remove(&k);
                    s.active.insert(k.clone());
                    return k;
                }
            }
            match wake {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Releases a key after its reconcile.
    pub fn done(&self, key: &str, result: &Result<Next, StoreError>) {
        let (dirty, retry) = {
            let mut s = self.lock();
            s.active.remove(key);
            let dirty = s.dirty.remove(key);
            let retry = match result {
                Ok(_) => {
                    s.failures.remove(key);
                    None
                }
                Err(_) => {
                    let n = s.failures.entry(key.to_string()).or_insert(0);
                    *n += 1;
                    Some(backoff(*n))
                }
            };
            (dirty, retry)
        };
        match (result, retry) {
            (_, Some(d)) => self.add_after(key, d),
            (Ok(Next::After(d)), None) => self.add_after(key, *d),
            _ => {}
        }
        if dirty {
            self.add(key);
        }
    }

    /// Keys waiting now (for tests).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 5 ms doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    let ms = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    Duration::from_millis(ms).min(Duration::from_secs(30))
}

/// Runs a controller forever with `workers` workers. The workers and watches are this
/// future's own: when it is dropped (its task aborted, as when the replica stops leading) they
/// end with it. (They were detached tasks once, and a replica that lost its lease went on
/// reconciling with them — every write refused by the fence, retried without end, and every
/// new term started a set more.)
pub async fn run(store: Arc<dyn Store>, controller: Arc<dyn Controller>, workers: usize, resync: Duration) {
    let mut own = tokio::task::JoinSet::new();
    let queue = Arc::new(Queue::default());
    let m = crate::metrics::get();
    let name = tug_metrics::labels([("name", controller.name())]);
    let (depth, work, retries) = (
        m.queue_depth.get_or_create(&name).clone(),
        m.work_duration.get_or_create(&name).clone(),
        m.queue_retries.get_or_create(&name).clone(),
    );
    for _ in 0..workers.max(1) {
        let (q, s, c) = (queue.clone(), store.clone(), controller.clone());
        let (depth, work, retries) = (depth.clone(), work.clone(), retries.clone());
        own.spawn(async move {
            loop {
                let key = q.next().await;
                depth.set(i64::try_from(q.len()).unwrap_or(i64::MAX));
                let (s2, c2, k2) = (s.clone(), c.clone(), key.clone());
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || c2.reconcile(s2.as_ref(), &k2))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Backend(format!("reconcile panicked: {e}"))));
                work.observe(started.elapsed().as_secs_f64());
                if result.is_err() {
                    retries.inc();
                }
                if let Err(e) = &result {
                    if !matches!(e, StoreError::Conflict { .. }) {
                        tracing::warn!("tug-scheduler: {} {key}: {e}", c.name());
                    }
                }
                q.done(&key, &result);
            }
        });
    }
    loop {
        // List (every primary key queued), then watch from the list's revision until the
        // watch is cut off; a resync tick lists again.
        let (s, c, q) = (store.clone(), controller.clone(), queue.clone());
        let listed = tokio::task::spawn_blocking(move || list_into(s.as_ref(), c.as_ref(), &q))
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(format!("listing panicked: {e}"))));
        let rev = match listed {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("tug-scheduler: {}: listing: {e}", controller.name());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        watch(store.clone(), controller.clone(), queue.clone(), rev, controller.resync(resync)).await;
    }
}

/// Queues the primary keys the controller lists (by default a scan of keys, no object
/// decoded: the garbage collector's primary is the whole store).
fn list_into(store: &dyn Store, c: &dyn Controller, queue: &Queue) -> Result<u64, StoreError> {
    let (keys, revision) = c.list(store)?;
    for k in keys {
        queue.add(&k);
    }
    Ok(revision)
}

/// The most events mapped to keys in one blocking task.
const BATCH: usize = 256;

/// Feeds the queue from the watches until one fails or `resync` passes.
async fn watch(store: Arc<dyn Store>, c: Arc<dyn Controller>, queue: Arc<Queue>, rev: u64, resync: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Arc<Event>>>(1024);
    // Aborted when this returns or is dropped.
    let mut tasks = tokio::task::JoinSet::new();
    let prefixes: Vec<&'static str> = std::iter::once(c.primary()).chain(c.secondary()).collect();
    for prefix in prefixes {
        let mut w = match store.watch(prefix, rev) {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
        };
        let tx = tx.clone();
        tasks.spawn(async move {
            loop {
                match w.next_shared().await {
                    Some(Ok(e)) => {
                        if tx.send(Some(e)).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = tx.send(None).await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let deadline = tokio::time::sleep(resync);
    tokio::pin!(deadline);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            // The events already waiting come together: a burst of them is mapped to keys in
            // one blocking task, not one task (and thread wake-up) each.
            n = rx.recv_many(&mut batch, BATCH) => {
                // None: a watch was cut off (what came before it is still queued).
                let cut = n == 0 || batch.iter().any(Option::is_none);
                let mut expand = Vec::new();
                for e in batch.drain(..).map_while(|e| e) {
                    if e.key.starts_with(c.primary()) && !c.expands_primary() {
                        queue.add(&e.key);
                    } else {
                        expand.push(e);
                    }
                }
                if !expand.is_empty() {
                    let (s, c2) = (store.clone(), c.clone());
                    let keys = tokio::task::spawn_blocking(move || {
                        expand.iter().flat_map(|e| c2.keys_for(s.as_ref(), e)).collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                    for k in keys {
                        queue.add(&k);
                    }
                }
                if cut {
                    break;
                }
            }
        }
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_held_twice() {
        let q = Queue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, "a");
        // Named again while held: not handed out again until released.
        q.add("a");
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done("a", &Ok(Next::Done));
        assert_eq!(q.next().await, "a");
        q.done("a", &Ok(Next::Done));
        q.done("b", &Ok(Next::Done));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn failures_retry_with_backoff_and_requeue_after_waits() {
        let q = Queue::default();
        q.add("a");
        let k = q.next().await;
        q.done(&k, &Err(StoreError::Backend("x".into())));
        let t = Instant::now();
        assert_eq!(q.next().await, "a");
        assert!(t.elapsed() >= Duration::from_millis(5));
        q.done("a", &Ok(Next::After(Duration::from_millis(50))));
        let t = Instant::now();
        assert_eq!(q.next().await, "a");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(3), Duration::from_millis(20));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }

    /// A controller whose every reconcile fails (as a fenced store's writes do), counting them.
    struct Failing(Arc<std::sync::atomic::AtomicUsize>);
    impl Controller for Failing {
        fn name(&self) -> &'static str {
            "tug-test-failing"
        }
        fn primary(&self) -> &'static str {
            "/configmaps/"
        }
        fn reconcile(&self, _: &dyn Store, _: &str) -> Result<Next, StoreError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(StoreError::Fenced("another replica leads now".into()))
        }
    }

    /// Aborting a controller's task (the replica stopped leading) stops its workers: they
    /// were detached once and went on retrying refused writes for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_controller_reconciles_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 16).unwrap());
        for n in ["a", "b"] {
            store
                .create(&format!("/configmaps/default/{n}"), serde_json::json!({"metadata": {"name": n}}))
                .unwrap();
        }
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(run(store, Arc::new(Failing(count.clone())), 2, Duration::from_secs(3600)));
        let read = || count.load(std::sync::atomic::Ordering::SeqCst);
        let t = Instant::now();
        while read() < 6 {
            assert!(t.elapsed() < Duration::from_secs(10), "the workers never retried");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        let _ = task.await;
        // A reconcile already on a blocking thread may finish; none starts after it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped = read();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(read(), stopped, "reconciles went on after the controller was stopped");
    }
}
