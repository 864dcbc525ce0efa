//! The store: objects by key with a global revision, optimistic concurrency, and a watch from
//! any revision that has not been compacted. [`Store`] is the seam; [`redb_store::RedbStore`]
//! is the embedded backend, and the conformance suite in `tests` runs against any backend.

/// The controllers' and the scheduler's reads served from an in-memory copy.
pub mod cache;
/// Secrets (and what else `--encryption-config` names) encrypted at rest.
pub mod encrypted;
pub mod etcd_store;
pub mod redb_store;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What went wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{key}: resourceVersion {expected} is not the current {current}")]
    Conflict { key: String, expected: u64, current: u64 },
    #[error("too old resource version: {requested} (the oldest kept is {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    #[error("the watcher fell behind by {0} events and was cut off; list and watch again")]
    TooSlow(u64),
    #[error("store: {0}")]
    Backend(String),
    /// The store cannot be reached now (etcd down or not answering): a client may retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A write under a [`Fence`] another leader has taken over since: refused, not applied.
    #[error("{0}: fenced off (another replica leads now); the write was not applied")]
    Fenced(String),
}

/// A leader's claim on its writes: they apply only while the key `key` still has revision
/// `revision`. A replica that takes the lead rewrites that key before it acts, so writes of
/// the one it replaced — paused, partitioned, resumed after a long stall — are refused at the
/// store rather than done twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: u64,
}

/// ADDED, MODIFIED or DELETED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, at the revision that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub key: String,
    pub object: Value,
}

/// An object as stored, with the revision that last changed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub key: String,
    pub revision: u64,
    pub object: Value,
}

/// The operations every backend provides. Keys are `group/plural/namespace/name` (group and
/// namespace may be empty); a prefix such as `apps/deployments/default/` lists or watches a
/// collection. Every write bumps the store's one revision and stamps
/// `metadata.resourceVersion` with it.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError>;
    /// Every object under `prefix`, with the store's revision at the time of the read.
    fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64), StoreError>;
    /// The objects under `prefix` with keys after `after` (all, without), in key order, one
    /// at a time as their stored JSON, from one consistent read; `each` returns false to
    /// stop. Returns the revision of the read. A list served this way holds one object at a
    /// time, not the collection.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let (items, revision) = self.list(prefix)?;
        for s in items.iter().filter(|s| after.is_none_or(|a| s.key.as_str() > a)) {
            let bytes = serde_json::to_vec(&s.object).map_err(|e| StoreError::Backend(e.to_string()))?;
            if !each(&s.key, &bytes) {
                break;
            }
        }
        Ok(revision)
    }
    /// The keys under `prefix`, with the revision of the read: no object decoded.
    fn keys(&self, prefix: &str) -> Result<(Vec<String>, u64), StoreError> {
        let mut keys = Vec::new();
        let revision = self.scan(prefix, None, &mut |key, _| {
            keys.push(key.to_string());
            true
        })?;
        Ok((keys, revision))
    }
    /// The in-memory copy this store reads from, when it is one ([`cache::Cached`]).
    fn cached(&self) -> Option<&cache::Cached> {
        None
    }
    fn create(&self, key: &str, object: Value) -> Result<Stored, StoreError>;
    /// Replaces the object; with `expected`, only if its revision still is that one.
    fn update(&self, key: &str, object: Value, expected: Option<u64>) -> Result<Stored, StoreError>;
    /// Several updates, each applied or refused on its own as [`Store::update`] would, with
    /// the results in the order given. A backend may write them together: the embedded store
    /// makes them one transaction and one fsync (a scheduling round's bindings).
    fn update_each(&self, updates: Vec<(String, Value, Option<u64>)>) -> Vec<Result<Stored, StoreError>> {
        updates.into_iter().map(|(key, object, expected)| self.update(&key, object, expected)).collect()
    }
    /// Several creates, each applied or refused on its own as [`Store::create`] would; the
    /// embedded store writes them in one transaction (a batch of Events).
    fn create_each(&self, objects: Vec<(String, Value)>) -> Vec<Result<Stored, StoreError>> {
        objects.into_iter().map(|(key, object)| self.create(&key, object)).collect()
    }
    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Stored, StoreError>;
    /// Changes under `prefix` after revision `after`, in order, without gaps.
    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError>;
    /// [`Store::watch`] for a watcher that only wants the objects whose `spec.nodeName` is
    /// `node` (a node's watch of its own pods). A backend that fans its live events out by
    /// node wakes it for that node's events alone, not for every pod of the cluster; the
    /// watch may still hand out others (etcd's is the plain watch): the caller filters.
    /// (No default: a store wrapping another passes it on, or every node's watch wakes for
    /// every pod of the cluster — the metrics and encryption wrappers once took the default.)
    fn watch_node(&self, prefix: &str, after: u64, node: &str) -> Result<Watch, StoreError>;
    /// Forgets events at or below `revision`.
    fn compact(&self, revision: u64) -> Result<(), StoreError>;
    fn revision(&self) -> Result<u64, StoreError>;
    /// This store with every write fenced by `fence` (each one refused with
    /// [`StoreError::Fenced`] once the fence key has moved), or None when the backend needs
    /// no fence: the embedded store is opened by one process, so its lead never moves.
    fn fenced(&self, fence: &Fence) -> Option<Arc<dyn Store>> {
        let _ = fence;
        None
    }
}

/// What a [`Watch`] applies to each event's object (given its key): decryption.
pub type EventMap = Arc<dyn Fn(&str, &mut Value) + Send + Sync>;

/// Which events a [`Watch`] hands out (a watch request's label and field selectors).
pub type EventFilter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// A stream of events in revision order.
pub struct Watch {
    source: Source,
    /// Applied to each event's object before it is handed out (decryption).
    map: Option<EventMap>,
    /// Events it lets through; the others are skipped before they are copied out of the
    /// broadcast (a thousand nodes each watching their own pods copy only their own).
    filter: Option<EventFilter>,
    /// The revision of the last event it received, handed out or filtered away (a backend
    /// of its own: see [`Watch::revision`]).
    seen: u64,
}

/// Reads the events under a prefix after a revision from the store's history, up to what is
/// durable: how a watcher that fell behind the live broadcast catches up.
pub(crate) type History = Arc<dyn Fn(&str, u64) -> Result<Page, StoreError> + Send + Sync>;

/// How many events one read of a store's history hands a watcher at most. Each watcher
/// decodes its own: a controller 48,000 pod events behind in a burst of 50,000 pods once held
/// all of them decoded at once, and ten such watchers took the control plane to 6 GiB.
pub(crate) const HISTORY_PAGE: usize = 256;

/// Events read from a store's history, in revision order: at most [`HISTORY_PAGE`] of them
/// from a store's own history, and, when it held more, the revision this page read up to
/// (the next page is read after it once these are handed out).
pub(crate) struct Page {
    pub(crate) events: Vec<Arc<Event>>,
    pub(crate) more: Option<u64>,
}

impl From<Vec<Arc<Event>>> for Page {
    fn from(events: Vec<Arc<Event>>) -> Page {
        Page { events, more: None }
    }
}

/// A watch of its own from the store, under a prefix after a revision: where a watcher goes
/// on when it has fallen behind both the live broadcast and the history beside it (the copy
/// of the store in `cache`, whose history is short).
pub(crate) type Fallback = Arc<dyn Fn(&str, u64) -> Result<Watch, StoreError> + Send + Sync>;

enum Source {
    /// The embedded store: first the backlog read from the store, then live broadcasts; a
    /// watcher that falls behind those reads the history again from where it was.
    Local {
        prefix: String,
        last: u64,
        backlog: VecDeque<Arc<Event>>,
        /// Where the history read into the backlog stopped short of its end: the next page is
        /// read from there once the backlog is handed out.
        more: Option<u64>,
        live: broadcast::Receiver<Arc<Event>>,
        history: Option<History>,
        fallback: Option<Fallback>,
    },
    /// A backend that feeds events from a task of its own (etcd).
    Channel(tokio::sync::mpsc::Receiver<Result<Event, StoreError>>),
    /// The store's own watch, taken over from a [`Fallback`].
    Inner(Box<Watch>),
}

impl Watch {
    pub(crate) fn new(
        prefix: &str,
        after: u64,
        backlog: impl Into<Page>,
        live: broadcast::Receiver<Arc<Event>>,
    ) -> Watch {
        let Page { events, more } = backlog.into();
        Watch {
            source: Source::Local {
                prefix: prefix.to_string(),
                last: after,
                backlog: events.into(),
                more,
                live,
                history: None,
                fallback: None,
            },
            map: None,
            filter: None,
            seen: after,
        }
    }

    /// With `history`, falling behind the live events is caught up from the store's history
    /// (while it still holds them) instead of ending the watch.
    pub(crate) fn with_history(mut self, h: History) -> Watch {
        if let Source::Local { history, .. } = &mut self.source {
            *history = Some(h);
        }
        self
    }

    /// With `f`, a watcher that fell behind the live events further than the history
    /// reaches goes on with a watch of its own from the store instead of ending.
    pub(crate) fn with_fallback(mut self, f: Option<Fallback>) -> Watch {
        if let Source::Local { fallback, .. } = &mut self.source {
            *fallback = f;
        }
        self
    }

    /// The same stream with `f` applied to each event's object (given its key).
    pub fn mapped(mut self, f: EventMap) -> Watch {
        self.map = Some(f);
        self
    }

    /// The same stream with only the events `f` accepts (judged after [`Watch::mapped`]'s
    /// map, when there is one).
    pub fn filtered(mut self, f: EventFilter) -> Watch {
        self.filter = Some(f);
        self
    }

    pub(crate) fn from_channel(rx: tokio::sync::mpsc::Receiver<Result<Event, StoreError>>) -> Watch {
        Watch { source: Source::Channel(rx), map: None, filter: None, seen: 0 }
    }

    /// The next event; `None` once the store is closed.
    pub async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        Some(self.next_shared().await?.map(Arc::unwrap_or_clone))
    }

    /// The next event as the broadcast holds it, shared with every other watcher: for
    /// watchers that only read it (a watch request writing it out, a controller taking its
    /// key), which would otherwise each copy every object.
    pub async fn next_shared(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            // Without a map the filter sees the event as stored; a map copies an event other
            // watchers still hold before changing it.
            let early = if self.map.is_none() { self.filter.clone() } else { None };
            let mut e = self.next_raw(early.as_ref()).await;
            if let (Some(Ok(e)), Some(f)) = (e.as_mut(), &self.map) {
                let e = Arc::make_mut(e);
                f(&e.key, &mut e.object);
                if self.filter.as_ref().is_some_and(|keep| !keep(e)) {
                    continue;
                }
            }
            return e;
        }
    }

    /// The revision this watch has passed: every change under its prefix up to it has been
    /// handed out or filtered away (what a BOOKMARK tells a client to resume from).
    pub fn revision(&self) -> u64 {
        match &self.source {
            Source::Local { last, .. } => *last,
            Source::Channel(_) => self.seen,
            Source::Inner(w) => self.seen.max(w.revision()),
        }
    }

    async fn next_raw(&mut self, keep: Option<&EventFilter>) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            let after = match self.next_local(keep).await {
                Ok(next) => return next,
                Err(after) => after,
            };
            let Source::Local { prefix, fallback: Some(f), .. } = &self.source else {
                return Some(Err(StoreError::TooSlow(0)));
            };
            // The store may block (etcd waits on a runtime of its own): off the async
            // threads where the runtime allows it.
            let multi = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let taken =
                if multi { tokio::task::block_in_place(|| f(prefix, after)) } else { f(prefix, after) };
            match taken {
                Ok(w) => {
                    self.seen = after;
                    self.source = Source::Inner(Box::new(w));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next event, or Err(revision) when the watcher fell behind and takes its fallback
    /// from that revision.
    async fn next_local(
        &mut self,
        keep: Option<&EventFilter>,
    ) -> Result<Option<Result<Arc<Event>, StoreError>>, u64> {
        // A stream of the store's own (etcd's, or the one taken over from a fallback).
        loop {
            let next = match &mut self.source {
                Source::Channel(rx) => rx.recv().await.map(|r| r.map(Arc::new)),
                Source::Inner(w) => Box::pin(w.next_shared()).await,
                Source::Local { .. } => break,
            };
            match next {
                Some(Ok(e)) => {
                    self.seen = self.seen.max(e.revision);
                    if keep.is_some_and(|k| !k(&e)) {
                        continue;
                    }
                    return Ok(Some(Ok(e)));
                }
                other => return Ok(other),
            }
        }
        // (Only Local is left after the loop above.)
        let Source::Local { prefix, last, backlog, more, live, history, fallback } = &mut self.source else {
            return Ok(None);
        };
        loop {
            if let Some(e) = backlog.pop_front() {
                *last = e.revision;
                if keep.is_some_and(|k| !k(&e)) {
                    continue;
                }
                return Ok(Some(Ok(e)));
            }
            // What the history read last stopped short of: the next page, from where it stopped
            // (a burst may overrun the live place meanwhile; that is caught up the same way).
            let missed = if let Some(upto) = more.take() {
                *last = (*last).max(upto);
                0
            } else {
                match live.recv().await {
                    Ok(e) if e.revision > *last && e.key.starts_with(prefix.as_str()) => {
                        *last = e.revision;
                        if keep.is_some_and(|k| !k(&e)) {
                            continue;
                        }
                        return Ok(Some(Ok(e)));
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // A burst overran this watcher's place in the broadcast: take a new
                        // place at its end first, then read what was missed from the history
                        // (the live events it already holds are skipped by revision), as a new
                        // watch does.
                        *live = live.resubscribe();
                        n
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                }
            };
            // Past what the history holds, go on with the fallback, or end.
            let page = history.as_ref().map(|h| h(prefix, *last));
            match page {
                Some(Ok(page)) => {
                    backlog.extend(page.events);
                    *more = page.more;
                }
                _ => {
                    return match fallback {
                        Some(_) => Err(*last),
                        None => Ok(Some(Err(StoreError::TooSlow(missed)))),
                    };
                }
            }
        }
    }
}

/// The resource part of a key or prefix (`group/plural/`: `/pods/`, `apps/deployments/`), or
/// None for a prefix shorter than that (`""`: the whole store).
fn resource_of(key: &str) -> Option<&str> {
    key.match_indices('/').nth(1).map(|(i, _)| &key[..=i])
}

/// The text a field selector compares for the dotted `path` of `object`: a string as it is,
/// null or missing as "", anything else as its JSON.
pub fn field_text<'a>(object: &'a Value, path: &str) -> std::borrow::Cow<'a, str> {
    match path.split('.').fold(object, |v, k| &v[k]) {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        Value::Null => std::borrow::Cow::Borrowed(""),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

/// The resource whose live events are also fanned out by node (`spec.nodeName`).
const BY_NODE: &str = "/pods/";

/// The events a node's channel holds: a node's own pods change seldom beside the cluster's,
/// and there may be thousands of nodes (a watcher that falls behind reads the history).
pub(crate) const NODE_CAPACITY: usize = 64;

type Channels = std::sync::RwLock<std::collections::HashMap<String, broadcast::Sender<Arc<Event>>>>;

/// Live events fanned out by resource: a watcher of pods wakes for pods' events only, not for
/// every Lease a thousand nodes renew. Watchers of a shorter prefix (the whole store) get
/// every event. Pods' events go out by node too: with 5,000 nodes each watching its own
/// pods, every pod event woke 5,000 watchers to be filtered 4,999 times, and that fan-out
/// alone took the control plane's two cores.
pub(crate) struct Hub {
    capacity: usize,
    all: broadcast::Sender<Arc<Event>>,
    by_resource: Channels,
    by_node: Channels,
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Hub {
        Hub {
            capacity,
            all: broadcast::channel(capacity).0,
            by_resource: Channels::default(),
            by_node: Channels::default(),
        }
    }

    /// Hands an event to its resource's watchers and to the whole store's (a channel without
    /// watchers keeps nothing).
    pub(crate) fn send(&self, e: Arc<Event>) {
        let to = |channels: &Channels, key: &str| {
            let map = channels.read().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = map.get(key).filter(|tx| tx.receiver_count() > 0) {
                let _ = tx.send(Arc::clone(&e));
            }
        };
        if let Some(r) = resource_of(&e.key) {
            to(&self.by_resource, r);
            if r == BY_NODE {
                to(&self.by_node, &field_text(&e.object, "spec.nodeName"));
            }
        }
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(e);
        }
    }

    /// A receiver of the events a watch of `prefix` may want.
    pub(crate) fn subscribe(&self, prefix: &str) -> broadcast::Receiver<Arc<Event>> {
        let Some(r) = resource_of(prefix) else { return self.all.subscribe() };
        if let Some(tx) = self.by_resource.read().unwrap_or_else(|p| p.into_inner()).get(r) {
            return tx.subscribe();
        }
        let mut map = self.by_resource.write().unwrap_or_else(|p| p.into_inner());
        map.entry(r.to_string()).or_insert_with(|| broadcast::channel(self.capacity).0).subscribe()
    }

    /// A receiver of the events a watch of `prefix` wanting only `node`'s objects may want:
    /// that node's pods' events (any other resource's watch gets [`Hub::subscribe`]'s).
    pub(crate) fn subscribe_node(&self, prefix: &str, node: &str) -> broadcast::Receiver<Arc<Event>> {
        if resource_of(prefix) != Some(BY_NODE) {
            return self.subscribe(prefix);
        }
        if let Some(tx) = self.by_node.read().unwrap_or_else(|p| p.into_inner()).get(node) {
            return tx.subscribe();
        }
        let mut map = self.by_node.write().unwrap_or_else(|p| p.into_inner());
        // Nodes come and go: channels nobody listens to are dropped as the map doubles.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, tx| tx.receiver_count() > 0);
        }
        let capacity = NODE_CAPACITY.min(self.capacity);
        map.entry(node.to_string()).or_insert_with(|| broadcast::channel(capacity).0).subscribe()
    }
}

/// Sets `metadata.resourceVersion` to the revision, as a string like Kubernetes'.
pub(crate) fn stamp(object: &mut Value, revision: u64) {
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::from(revision.to_string()));
    }
}

#[cfg(test)]
pub(crate) mod conformance;

/// A node's watch through `store` hears that node's pods, not another node's made first (a
/// store wrapping another passes [`Store::watch_node`] on).
#[cfg(test)]
pub(crate) async fn a_nodes_watch_hears_its_node_only(store: &dyn Store) {
    let pod = |name: &str, node: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node}})
    };
    let r0 = store.revision().unwrap();
    let mut n1 = store.watch_node("/pods/", r0, "n1").unwrap();
    // Live: after the watch began.
    store.create("/pods/default/other", pod("other", "n2")).unwrap();
    store.create("/pods/default/mine", pod("mine", "n1")).unwrap();
    let e =
        tokio::time::timeout(std::time::Duration::from_secs(5), n1.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(e.key, "/pods/default/mine", "n1's watch heard another node's pod");
    // From the history: a watch starting before both.
    let mut again = store.watch_node("/pods/", r0, "n1").unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(5), again.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.key, "/pods/default/mine");
}
