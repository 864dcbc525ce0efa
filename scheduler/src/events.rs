//! An Event writer off the hot path: events are queued and written in batches (one store
//! transaction per batch) by a task of their own, so a scheduling round that binds thousands
//! of pods does not wait for thousands of event writes. As Kubernetes' event broadcaster
//! does, a full queue drops events (counted and logged) rather than slow down the producer:
//! events are informative, never state.

use crate::store::Store;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Events waiting at most; past it new ones are dropped.
const QUEUE: usize = 20_000;
/// Events written per store transaction at most.
const BATCH: usize = 1_000;

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<(String, Value)>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts the writer on the current tokio runtime.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Value)>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let seen_drops = Arc::clone(&dropped);
        tokio::spawn(async move {
            let mut reported = 0;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let s = Arc::clone(&store);
                let n = batch.len();
                let failed = tokio::task::spawn_blocking(move || {
                    s.create_each(batch).into_iter().filter(|r| r.is_err()).count()
                })
                .await
                .unwrap_or(n);
                if failed > 0 {
                    tracing::warn!("tug-scheduler: {failed} of {n} events could not be written");
                }
                let d = seen_drops.load(Ordering::Relaxed);
                if d > reported {
                    tracing::warn!(
                        "tug-scheduler: {} events dropped: the event queue was full",
                        d - reported
                    );
                    reported = d;
                }
            }
        });
        Recorder { tx, dropped }
    }

    /// Queues an event (from [`crate::controllers::event_object`]).
    pub fn record(&self, event: (String, Value)) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_events_are_written_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 64).unwrap());
        let r = Recorder::start(store.clone());
        let mut meta = tug_api::meta::ObjectMeta { name: "web".into(), ..Default::default() };
        meta.namespace = Some("default".into());
        for i in 0..50 {
            let m = format!("Successfully assigned default/web to n{i}");
            r.record(crate::controllers::event_object(
                ("Pod", "v1", &meta),
                "Normal",
                "Scheduled",
                &m,
                "default-scheduler",
            ));
        }
        let mut n = 0;
        for _ in 0..200 {
            n = store.list("/events/default/").unwrap().0.len();
            if n == 50 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(n, 50);
        let (items, _) = store.list("/events/default/").unwrap();
        assert!(items.iter().all(|e| e.object["source"]["component"] == "default-scheduler"));
    }
}
