//! The controllers' and the scheduler's reads served from memory, as client-go's informers
//! and listers (kube-rs' reflector) serve Kubernetes' controllers: one watch of the whole
//! store keeps a copy of the objects they read, and hands its events on to their queues.
//!
//! ```text
//!  store ── one watch ──> Copy (objects by key, applied revision) ──> events to watchers
//!    ▲                      ▲ reads wait until it holds the reader's own writes
//!    └── writes ────────────┘ (their revisions raise `written`)
//! ```
//!
//! - **One revision**: the copy applies a single watch in revision order, so it is the store
//!   as of one revision, never one kind newer than another.
//! - **Its own writes**: each write through a [`Cached`] store raises `written` to the
//!   revision it made; a read first waits until the copy has applied that far. A controller
//!   that has just created pods sees them at its next read and never creates them twice
//!   (what Kubernetes' controllers need "expectations" for).
//! - **Events after the copy**: watches through it are fed from the events it applied, so a
//!   reconcile woken by an event reads a copy that already holds that event.
//! - Events, Leases, Secrets and ConfigMaps are not copied (they churn, or hold plaintext
//!   secrets); they and anything read while the copy is being (re)built come from the store.
//! - Decoding: [`Cached::typed`] keeps one decoded value per object and kind, made at the
//!   first read after a change, so a scheduling round of 50,000 pods decodes only the pods
//!   that changed since the last one.

use super::{Event, EventType, Store, StoreError, Stored, Watch};
use serde_json::Value;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Prefixes read from the store, not copied.
const NOT_COPIED: [&str; 5] =
    ["/events/", "events.k8s.io/", "coordination.k8s.io/leases/", "/secrets/", "/configmaps/"];

/// How many recent events the copy keeps: a new watcher may start that far behind it, and a
/// watcher that falls behind the broadcast catches up from them. (Events hold objects: the
/// broadcast's slots and these are most of the copy's memory beyond the objects.)
const RECENT: usize = 2048;

/// The live broadcast's slots, per resource (a watcher of pods wakes for pods' events only).
const LIVE: usize = 512;

/// How long a read waits for the copy to catch up before it reads the store instead.
const CATCH_UP: Duration = Duration::from_secs(2);

fn copied(key: &str) -> bool {
    !NOT_COPIED.iter().any(|p| key.starts_with(p))
}

/// Whether everything under `prefix` is copied (not a parent of what is not, as `/` is).
fn whole(prefix: &str) -> bool {
    copied(prefix) && !NOT_COPIED.iter().any(|p| p.starts_with(prefix))
}

/// One copied object: its JSON as stored, with its decoded forms. Not a `Value`: a pod of
/// 2.5 KB of JSON is 23 KB as one (a map node for every object in it), and 50,000 pods held
/// that way took 1.1 GB. A read of the object parses it (about what a clone of the `Value`
/// cost); readers that want it often read it typed, decoded once per change.
struct Entry {
    key: String,
    revision: u64,
    json: Box<[u8]>,
    /// A pod's `spec.nodeName` ("" when not bound; the index by node is kept by it).
    node: Box<str>,
    /// The uids of its `metadata.ownerReferences` (the index by owner is kept by them).
    owners: Box<[Box<str>]>,
    /// A pod's controller's uid (the owner reference with `controller: true`; "" for none):
    /// the index of pods by controller is kept by it.
    controller: Box<str>,
    /// Decoded values by type (filled on first use; dropped when the object changes).
    typed: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl Entry {
    /// The entry of `object`, serialized here.
    fn of(key: &str, revision: u64, object: &Value) -> Entry {
        let json = serde_json::to_vec(object).unwrap_or_default().into_boxed_slice();
        Entry::new(key, revision, json, object)
    }

    /// The entry of `object` whose stored JSON is `json`.
    fn new(key: &str, revision: u64, json: Box<[u8]>, object: &Value) -> Entry {
        let node = if key.starts_with(super::BY_NODE) {
            super::field_text(object, "spec.nodeName").into()
        } else {
            Box::default()
        };
        let refs = object["metadata"]["ownerReferences"].as_array();
        let owners = refs
            .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str()).map(Box::from).collect())
            .unwrap_or_default();
        let controller = refs
            .filter(|_| key.starts_with(super::BY_NODE))
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
            .and_then(|r| r["uid"].as_str())
            .unwrap_or_default()
            .into();
        Entry {
            key: key.to_string(),
            revision,
            json,
            node,
            owners,
            controller,
            typed: Mutex::new(Vec::new()),
        }
    }

    /// The object, parsed (it was serialized from a `Value`, so it parses).
    fn object(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    fn stored(&self) -> Stored {
        Stored { key: self.key.clone(), revision: self.revision, object: self.object() }
    }
}

#[derive(Default)]
struct Copy {
    objects: BTreeMap<String, Arc<Entry>>,
    /// The revision the copy is at.
    applied: u64,
    /// Whether it holds the whole store (false while it is listed again).
    synced: bool,
    recent: VecDeque<Arc<Event>>,
    /// The revision the store was last compacted at through the copy: no watch starts before
    /// it, even from recent events the copy applied after the compaction.
    compacted: u64,
    /// The objects' keys by what readers look them up by.
    ix: Indexes,
    /// The applied events, live, by resource; replaced when the copy is rebuilt, which ends
    /// every watch fed from it (they may have missed events while the store's watch was down).
    events: Option<super::Hub>,
}

/// Keys of the copy's objects by what readers look them up by, kept by [`Indexes::add`] and
/// [`Indexes::remove`] from what each [`Entry`] read when it was made.
#[derive(Default)]
struct Indexes {
    /// Pods' keys by `spec.nodeName` ("" for pods not bound): a node's list of its own pods
    /// reads its few, not every pod in the cluster.
    pods_by_node: HashMap<String, BTreeSet<String>>,
    /// Objects' keys by the uids of their owners: the garbage collector's look for an owner's
    /// dependents reads them, not every object of every kind in the namespace (a pod deleted
    /// in foreground, or a ReplicaSet, did that).
    by_owner: HashMap<String, BTreeSet<String>>,
    /// Pods' keys by their controller's uid ("" for pods no one controls): a ReplicaSet's
    /// reconcile reads its own pods and the orphans it may adopt, not every pod of its
    /// namespace (500 ReplicaSets of 100 pods each went through 50,000 pods per reconcile).
    pods_by_controller: HashMap<String, BTreeSet<String>>,
}

impl Indexes {
    fn add(&mut self, e: &Entry) {
        self.each(e, index);
    }

    fn remove(&mut self, e: &Entry) {
        self.each(e, unindex);
    }

    /// `f` on each index an entry is in, with what it is indexed by there.
    fn each(&mut self, e: &Entry, f: fn(&mut HashMap<String, BTreeSet<String>>, &str, &str)) {
        if e.key.starts_with(super::BY_NODE) {
            f(&mut self.pods_by_node, &e.key, &e.node);
            f(&mut self.pods_by_controller, &e.key, &e.controller);
        }
        for uid in &e.owners {
            f(&mut self.by_owner, &e.key, uid);
        }
    }
}

struct Shared {
    copy: Mutex<Copy>,
    changed: Condvar,
    /// The highest revision written through any [`Cached`] over this copy.
    written: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Copy> {
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The copy once it holds every write made through it, or None after [`CATCH_UP`] (or
    /// while it is rebuilt): then the caller reads the store.
    fn caught_up(&self) -> Option<MutexGuard<'_, Copy>> {
        self.caught_up_to(self.written.load(Ordering::Acquire))
    }

    /// The copy once it has applied `target`, or None after [`CATCH_UP`].
    fn caught_up_to(&self, target: u64) -> Option<MutexGuard<'_, Copy>> {
        let guard = self.lock();
        let (guard, timeout) = self
            .changed
            .wait_timeout_while(guard, CATCH_UP, |c| !c.synced || c.applied < target)
            .unwrap_or_else(|e| e.into_inner());
        (!timeout.timed_out()).then_some(guard)
    }

    /// Applies the store's event (shared with the store's own watchers: the copy's history
    /// and broadcast hold that one, not a copy).
    fn apply(&self, e: Arc<Event>) {
        // Serialized before the lock is taken: readers wait for none of it.
        let entry = (copied(&e.key) && e.type_ != EventType::Deleted)
            .then(|| Arc::new(Entry::of(&e.key, e.revision, &e.object)));
        let mut c = self.lock();
        if e.revision <= c.applied {
            return;
        }
        if copied(&e.key) {
            let old = match &entry {
                None => c.objects.remove(&e.key),
                Some(entry) => c.objects.insert(e.key.clone(), Arc::clone(entry)),
            };
            if let Some(old) = old {
                c.ix.remove(&old);
            }
            if let Some(new) = entry {
                c.ix.add(&new);
            }
        }
        c.applied = e.revision;
        if c.recent.len() == RECENT {
            c.recent.pop_front();
        }
        c.recent.push_back(Arc::clone(&e));
        // Sent under the lock: a watcher subscribing under it misses nothing and sees nothing
        // twice.
        if let Some(hub) = &c.events {
            hub.send(e);
        }
        drop(c);
        self.changed.notify_all();
    }
}

/// A store whose reads come from the shared copy and whose writes go to `writer`.
#[derive(Clone)]
pub struct Cached {
    shared: Arc<Shared>,
    /// Where reads of what is not copied go (and every read while the copy is rebuilt).
    reader: Arc<dyn Store>,
    writer: Arc<dyn Store>,
    /// Whether a watcher further behind than the live events and the recent ones goes on with
    /// a watch of its own from the store (the API's watchers), or ends (the controllers',
    /// which then list again: an event from the store may come before the copy holds it, and
    /// a reconcile it wakes must read a copy that does).
    fall_back: bool,
}

impl Cached {
    /// Starts the copy of `store` on the current tokio runtime.
    pub fn start(store: Arc<dyn Store>) -> Cached {
        let shared = Arc::new(Shared {
            copy: Mutex::new(Copy::default()),
            changed: Condvar::new(),
            written: AtomicU64::new(0),
        });
        tokio::spawn(feed(Arc::clone(&store), Arc::downgrade(&shared)));
        Cached { shared, reader: Arc::clone(&store), writer: store, fall_back: false }
    }

    /// A watch, on `node`'s channel of the live events when given (see [`Store::watch_node`]).
    fn watch_from(&self, prefix: &str, after: u64, node: Option<&str>) -> Result<Watch, StoreError> {
        let from_store = |store: &dyn Store, prefix: &str, after| match node {
            Some(n) => store.watch_node(prefix, after, n),
            None => store.watch(prefix, after),
        };
        // Subscribed and the backlog read under one lock: nothing missed, nothing twice.
        let c = self.shared.lock();
        let (Some(hub), Ok(backlog)) = (c.events.as_ref(), recent_after(&c, prefix, after)) else {
            drop(c);
            return from_store(self.reader.as_ref(), prefix, after);
        };
        let live = match node {
            Some(n) => hub.subscribe_node(prefix, n),
            None => hub.subscribe(prefix),
        };
        drop(c);
        let fallback = self.fall_back.then(|| {
            let reader = Arc::clone(&self.reader);
            let node = node.map(str::to_string);
            Arc::new(move |prefix: &str, after| match &node {
                Some(n) => reader.watch_node(prefix, after, n),
                None => reader.watch(prefix, after),
            }) as super::Fallback
        });
        let shared = Arc::downgrade(&self.shared);
        let history: super::History = Arc::new(move |prefix, after| {
            let s = shared.upgrade().ok_or_else(|| StoreError::Unavailable("the copy is closed".into()))?;
            let c = s.lock();
            recent_after(&c, prefix, after).map(super::Page::from)
        });
        Ok(Watch::new(prefix, after, backlog, live).with_history(history).with_fallback(fallback))
    }

    /// The copied objects under `prefix` with keys after `after`, in key order, to `each`
    /// until it returns false — with `node`, only pods bound to that node ("": not bound) —
    /// as of a revision at least the store's when called, so a list sees every write
    /// acknowledged before it, whoever made it (Kubernetes' consistent reads from its watch
    /// cache). Returns that revision, or None when the prefix is not copied or the copy does
    /// not reach the store within [`CATCH_UP`]: then the caller reads the store.
    ///
    /// For the API's lists that pick objects by a selector: the copy holds them decoded, where
    /// the store's scan would decode every object under the prefix to judge it (5,000 nodes
    /// each listing their own pods decoded every pod 5,000 times).
    pub fn scan_fresh(
        &self,
        prefix: &str,
        after: Option<&str>,
        node: Option<&str>,
        each: &mut dyn FnMut(&str, &Value, &[u8]) -> bool,
    ) -> Option<u64> {
        if !whole(prefix) {
            return None;
        }
        let c = self.shared.caught_up_to(self.reader.revision().ok()?)?;
        let past = |k: &String| after.is_none_or(|a| k.as_str() > a);
        // Only the entries are taken under the lock; they are judged after it.
        let entries: Vec<Arc<Entry>> = match node.filter(|_| prefix.starts_with(super::BY_NODE)) {
            Some(n) => on_node(&c, n).filter(|e| e.key.starts_with(prefix) && past(&e.key)).collect(),
            None => range(&c.objects, prefix).filter(|(k, _)| past(k)).map(|(_, e)| Arc::clone(e)).collect(),
        };
        let revision = c.applied;
        drop(c);
        for e in entries {
            if !each(&e.key, &e.object(), &e.json) {
                break;
            }
        }
        Some(revision)
    }

    /// The pods bound to `node`, from the copy's index by node, once it holds this store's
    /// writes; None while the copy is not available.
    fn pods_on(&self, node: &str) -> Option<Vec<Stored>> {
        let c = self.shared.caught_up()?;
        let entries: Vec<Arc<Entry>> = on_node(&c, node).collect();
        drop(c);
        Some(entries.iter().map(|e| e.stored()).collect())
    }

    /// The objects under `prefix` that name `uid` among their owners, from the copy's index
    /// by owner, once it holds this store's writes; None when the prefix is not copied or the
    /// copy is not available.
    fn owned(&self, prefix: &str, uid: &str) -> Option<Vec<Stored>> {
        if !whole(prefix) {
            return None;
        }
        let c = self.shared.caught_up()?;
        let entries: Vec<Arc<Entry>> =
            c.ix.by_owner
                .get(uid)
                .into_iter()
                .flatten()
                .filter(|k| k.starts_with(prefix))
                .filter_map(|k| c.objects.get(k).cloned())
                .collect();
        drop(c);
        Some(entries.iter().map(|e| e.stored()).collect())
    }

    /// The pods in namespace `ns` controlled by one of `controllers` ("" for pods no one
    /// controls), decoded, from the copy's index by controller, once it holds this store's
    /// writes; None while the copy is not available.
    fn pods_controlled(
        &self,
        ns: &str,
        controllers: &[&str],
    ) -> Option<Vec<Typed<tug_api::kinds::pod::Pod>>> {
        let prefix = format!("{}{ns}/", super::BY_NODE);
        let c = self.shared.caught_up()?;
        let entries: Vec<Arc<Entry>> = controllers
            .iter()
            .flat_map(|uid| c.ix.pods_by_controller.get(*uid).into_iter().flatten())
            .filter(|k| k.starts_with(&prefix))
            .filter_map(|k| c.objects.get(k).cloned())
            .collect();
        drop(c);
        Some(
            entries
                .into_iter()
                .filter_map(|entry| Some(Typed { value: decoded(&entry).ok()?, entry }))
                .collect(),
        )
    }

    /// The copy's entry at `key` (None inside: there is no such object), once the copy holds
    /// this store's writes; None when the key is not copied or the copy is not available.
    fn entry(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        if !copied(key) {
            return None;
        }
        let c = self.shared.caught_up()?;
        Some(c.objects.get(key).cloned())
    }

    /// The same copy, with writes going to `writer` (a leader's fenced store).
    pub fn writing_to(&self, writer: Arc<dyn Store>) -> Cached {
        Cached { writer, ..self.clone() }
    }

    /// The same copy, for serving the API's watches: a watcher that falls too far behind goes
    /// on with a watch of its own from the store instead of ending (a 410 its client would
    /// answer with a full list).
    pub fn serving_watches(&self) -> Cached {
        Cached { fall_back: true, ..self.clone() }
    }

    /// The objects under `prefix` decoded as `T`, each decoded once per change of the
    /// object (and shared by every reader); objects that do not decode are left out. Returns
    /// the revision of the read. Read from the store while the copy is not available.
    pub fn typed<T>(&self, prefix: &str) -> Result<(Vec<Typed<T>>, u64), StoreError>
    where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let Some((entries, revision)) = self.entries(prefix) else {
            let (items, rev) = self.reader.list(prefix)?;
            return Ok((items.into_iter().filter_map(|s| Typed::decode(s).ok()).collect(), rev));
        };
        let out = entries
            .into_iter()
            .filter_map(|entry| Some(Typed { value: decoded::<T>(&entry).ok()?, entry }))
            .collect();
        Ok((out, revision))
    }

    /// The copy's entries under `prefix` and its revision, once it holds this store's
    /// writes; None when the prefix is not copied or the copy is not available.
    fn entries(&self, prefix: &str) -> Option<(Vec<Arc<Entry>>, u64)> {
        if !whole(prefix) {
            return None;
        }
        let c = self.shared.caught_up()?;
        // Only the entries are taken under the lock; their objects are cloned after it.
        Some((range(&c.objects, prefix).map(|(_, e)| Arc::clone(e)).collect(), c.applied))
    }

    fn note(&self, revision: u64) {
        self.shared.written.fetch_max(revision, Ordering::AcqRel);
    }

    fn noted(&self, r: Result<Stored, StoreError>) -> Result<Stored, StoreError> {
        if let Ok(s) = &r {
            self.note(s.revision);
        }
        r
    }
}

/// An object decoded as `T`, with the object as stored.
pub struct Typed<T> {
    pub value: Arc<T>,
    entry: Arc<Entry>,
}

impl<T: serde::de::DeserializeOwned + Send + Sync + 'static> Typed<T> {
    pub fn key(&self) -> &str {
        &self.entry.key
    }

    pub fn revision(&self) -> u64 {
        self.entry.revision
    }

    /// The object as stored, parsed for this call (read it typed where that serves).
    pub fn stored(&self) -> Stored {
        self.entry.stored()
    }

    fn decode(stored: Stored) -> serde_json::Result<Typed<T>> {
        let value = Arc::new(tug_api::from_value_ref::<T>(&stored.object)?);
        Ok(Typed { value, entry: Arc::new(Entry::of(&stored.key, stored.revision, &stored.object)) })
    }
}

/// [`Cached::typed`] when `store` is a copy; otherwise a list decoded here.
pub fn list_typed<T>(store: &dyn Store, prefix: &str) -> Result<(Vec<Typed<T>>, u64), StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    match store.cached() {
        Some(c) => c.typed(prefix),
        None => {
            let (items, rev) = store.list(prefix)?;
            Ok((items.into_iter().filter_map(|s| Typed::decode(s).ok()).collect(), rev))
        }
    }
}

/// The pods bound to `node` (`spec.nodeName`): from the copy's index when `store` is one (a
/// node's few, not every pod of the cluster parsed), else a list of every pod, filtered.
pub fn pods_on_node(store: &dyn Store, node: &str) -> Result<Vec<Stored>, StoreError> {
    if let Some(pods) = store.cached().and_then(|c| c.pods_on(node)) {
        return Ok(pods);
    }
    let (items, _) = store.list(super::BY_NODE)?;
    Ok(items.into_iter().filter(|s| s.object["spec"]["nodeName"].as_str() == Some(node)).collect())
}

/// The objects under `prefix` that name `uid` among their `ownerReferences`: from the copy's
/// index by owner when `store` is one, else a list of every object under `prefix`, filtered.
pub fn owned_by(store: &dyn Store, prefix: &str, uid: &str) -> Result<Vec<Stored>, StoreError> {
    if let Some(found) = store.cached().and_then(|c| c.owned(prefix, uid)) {
        return Ok(found);
    }
    let (items, _) = store.list(prefix)?;
    Ok(items
        .into_iter()
        .filter(|s| {
            s.object["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
        })
        .collect())
}

/// The pods in namespace `ns` whose controller (the owner reference with `controller: true`)
/// has one of the uids `controllers` — "" for pods no one controls — decoded: from the copy's
/// index by controller when `store` is one, else every pod of the namespace, filtered.
pub fn pods_controlled_by(
    store: &dyn Store,
    ns: &str,
    controllers: &[&str],
) -> Result<Vec<Typed<tug_api::kinds::pod::Pod>>, StoreError> {
    if let Some(found) = store.cached().and_then(|c| c.pods_controlled(ns, controllers)) {
        return Ok(found);
    }
    let (items, _) = list_typed::<tug_api::kinds::pod::Pod>(store, &format!("{}{ns}/", super::BY_NODE))?;
    Ok(items
        .into_iter()
        .filter(|p| {
            let uid = p.value.metadata.owner_references.iter().find(|o| o.controller == Some(true));
            controllers.contains(&uid.map_or("", |o| o.uid.as_str()))
        })
        .collect())
}

/// The object at `key` decoded as `T`: from the copy when `store` is one (decoded once per
/// change and shared by every reader), else read and decoded here. An object that does not
/// decode as `T` is an error naming its key.
pub fn get_typed<T>(store: &dyn Store, key: &str) -> Result<Option<Typed<T>>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let undecodable = |e: String| StoreError::Backend(format!("{key}: {e}"));
    if let Some(found) = store.cached().and_then(|c| c.entry(key)) {
        let Some(entry) = found else { return Ok(None) };
        let value = decoded::<T>(&entry).map_err(undecodable)?;
        return Ok(Some(Typed { value, entry }));
    }
    let Some(stored) = store.get(key)? else { return Ok(None) };
    Typed::decode(stored).map(Some).map_err(|e| undecodable(e.to_string()))
}

/// The object at `key` read as `T` and its revision, not kept: for a view of part of an
/// object (its metadata, say), decoded from the copy's JSON with the rest skipped, where a
/// read of the object would parse all of it. The store's answer is the outer result; whether
/// the object decodes as `T`, the inner one.
pub fn read_as<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<(u64, serde_json::Result<T>)>, StoreError> {
    if let Some(found) = store.cached().and_then(|c| c.entry(key)) {
        return Ok(found.map(|entry| (entry.revision, serde_json::from_slice(&entry.json))));
    }
    Ok(store.get(key)?.map(|s| (s.revision, tug_api::from_value_ref(&s.object))))
}

/// The decoded `T` of an entry, decoding it on first use.
fn decoded<T>(e: &Entry) -> Result<Arc<T>, String>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let mut typed = e.typed.lock().unwrap_or_else(|p| p.into_inner());
    for t in typed.iter() {
        if let Ok(t) = Arc::clone(t).downcast::<T>() {
            return Ok(t);
        }
    }
    let mut t = serde_json::from_slice::<T>(&e.json).map_err(|e| e.to_string())?;
    // Pods are most of what is kept decoded: kept without their lists' spare room.
    if let Some(pod) = (&mut t as &mut dyn Any).downcast_mut::<tug_api::kinds::pod::Pod>() {
        pod.shrink_to_fit();
    }
    let t = Arc::new(t);
    typed.push(Arc::clone(&t) as Arc<dyn Any + Send + Sync>);
    Ok(t)
}

fn range<'a>(
    objects: &'a BTreeMap<String, Arc<Entry>>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Arc<Entry>)> + 'a {
    objects
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// The entries of the pods bound to `node` ("": not bound), from the index by node.
fn on_node<'a>(c: &'a Copy, node: &str) -> impl Iterator<Item = Arc<Entry>> + 'a {
    c.ix.pods_by_node.get(node).into_iter().flatten().filter_map(|k| c.objects.get(k).cloned())
}

/// Files `key` under `by` (a pod under its node, "" when not bound; an object under an
/// owner's uid).
fn index(map: &mut HashMap<String, BTreeSet<String>>, key: &str, by: &str) {
    match map.get_mut(by) {
        Some(keys) => {
            keys.insert(key.to_string());
        }
        None => {
            map.insert(by.to_string(), BTreeSet::from([key.to_string()]));
        }
    }
}

fn unindex(map: &mut HashMap<String, BTreeSet<String>>, key: &str, by: &str) {
    if let Some(keys) = map.get_mut(by) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(by);
        }
    }
}

/// The copy's recent events under `prefix` after `after`, or Compacted when they no longer
/// reach back that far (or the copy is being rebuilt).
fn recent_after(c: &Copy, prefix: &str, after: u64) -> Result<Vec<Arc<Event>>, StoreError> {
    let oldest = c.recent.front().map_or(c.applied, |e| e.revision.saturating_sub(1)).max(c.compacted);
    if !c.synced || after < oldest {
        return Err(StoreError::Compacted { requested: after, oldest });
    }
    Ok(c.recent.iter().filter(|e| e.revision > after && e.key.starts_with(prefix)).map(Arc::clone).collect())
}

/// Keeps the copy: lists the store, then applies its watch; lists again when the watch is
/// cut off. Ends when the last [`Cached`] is dropped.
async fn feed(store: Arc<dyn Store>, shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let st = Arc::clone(&store);
        let listed = tokio::task::spawn_blocking(move || {
            let mut objects = BTreeMap::new();
            let rev = st.scan("", None, &mut |key, bytes| {
                if copied(key) {
                    // (Parsed for its revision and node, then let go: the bytes are kept.)
                    if let Ok(object) = serde_json::from_slice::<Value>(bytes) {
                        let revision = object["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0);
                        let entry = Entry::new(key, revision, bytes.into(), &object);
                        objects.insert(key.to_string(), Arc::new(entry));
                    }
                }
                true
            })?;
            Ok::<_, StoreError>((objects, rev))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend(format!("listing panicked: {e}"))));
        let rev = match listed {
            Ok((objects, rev)) => {
                let mut ix = Indexes::default();
                for e in objects.values() {
                    ix.add(e);
                }
                let mut c = s.lock();
                c.objects = objects;
                c.ix = ix;
                c.applied = rev;
                c.synced = true;
                // Watchers started before this list may have missed events: they start over.
                c.recent.clear();
                c.events = Some(super::Hub::new(LIVE));
                drop(c);
                s.changed.notify_all();
                rev
            }
            Err(e) => {
                tracing::warn!("tug-scheduler: cache: listing the store: {e}");
                drop(s);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut w = match store.watch("", rev) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("tug-scheduler: cache: watching the store: {e}");
                s.lock().synced = false;
                drop(s);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(s);
        // A watch can also die without a word (a connection to etcd lost in a partition):
        // every few seconds the store's revision is read, and a copy that has not reached a
        // revision read a while ago, and has heard nothing from its watch meanwhile, is
        // rebuilt. A watch still delivering is behind, not dead: listing again under a load
        // that put it behind would only put it further behind (at 5,000 nodes a list of every
        // node and pod takes seconds of a core).
        // The store's revision is read by a task of its own: the feed never waits for a
        // blocking thread (with thousands of requests in flight the pool may be busy for
        // seconds) while events queue up behind it.
        let (probed, mut probes_rx) = tokio::sync::mpsc::channel::<(std::time::Instant, u64)>(4);
        let _prober = Prober(tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                let mut tick = tokio::time::interval(LIVENESS);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let st = Arc::clone(&store);
                    if let Ok(Ok(r)) = tokio::task::spawn_blocking(move || st.revision()).await {
                        // (Timed when read: a read that waited for a thread is no older.)
                        if probed.send((std::time::Instant::now(), r)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        let mut probes: VecDeque<(std::time::Instant, u64)> = VecDeque::new();
        let mut heard = std::time::Instant::now();
        loop {
            let next = tokio::select! {
                next = w.next_shared() => next,
                Some(probe) = probes_rx.recv() => {
                    probes.push_back(probe);
                    let Some(s) = shared.upgrade() else { return };
                    let applied = s.lock().applied;
                    while probes.front().is_some_and(|(_, r)| *r <= applied) {
                        probes.pop_front();
                    }
                    if stalled(&probes, heard) {
                        tracing::warn!("tug-scheduler: cache: the store's watch stalled at revision {applied}; listing again");
                        s.lock().synced = false;
                        break;
                    }
                    continue;
                }
            };
            let Some(s) = shared.upgrade() else { return };
            heard = std::time::Instant::now();
            match next {
                Some(Ok(e)) => s.apply(e),
                Some(Err(e)) => {
                    tracing::warn!("tug-scheduler: cache: watch cut off ({e}); listing again");
                    s.lock().synced = false;
                    break;
                }
                None => return,
            }
        }
    }
}

/// The task reading the store's revision for a feed; ended with it.
struct Prober(tokio::task::JoinHandle<()>);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the copy checks that its watch still follows the store.
const LIVENESS: Duration = Duration::from_secs(2);

/// Whether the copy's watch is dead: a revision the store was at (`probes`, oldest first, the
/// ones the copy has reached dropped) has gone unreached for two checks, and the watch has
/// delivered nothing for as long.
fn stalled(probes: &VecDeque<(std::time::Instant, u64)>, heard: std::time::Instant) -> bool {
    probes.front().is_some_and(|(at, _)| at.elapsed() >= 2 * LIVENESS) && heard.elapsed() >= 2 * LIVENESS
}

impl Store for Cached {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        match self.entry(key) {
            // The entry is taken under the lock, parsed after it.
            Some(entry) => Ok(entry.map(|e| e.stored())),
            None => self.reader.get(key),
        }
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64), StoreError> {
        match self.entries(prefix) {
            Some((entries, revision)) => Ok((entries.iter().map(|e| e.stored()).collect(), revision)),
            None => self.reader.list(prefix),
        }
    }

    fn cached(&self) -> Option<&Cached> {
        Some(self)
    }

    fn keys(&self, prefix: &str) -> Result<(Vec<String>, u64), StoreError> {
        if prefix.is_empty() {
            // The whole store: what is not copied is listed from the store.
            if let Some(c) = self.shared.caught_up() {
                let mut keys: Vec<String> = c.objects.keys().cloned().collect();
                let applied = c.applied;
                drop(c);
                for p in NOT_COPIED {
                    keys.extend(self.reader.keys(p)?.0);
                }
                return Ok((keys, applied));
            }
        } else if whole(prefix) {
            if let Some(c) = self.shared.caught_up() {
                return Ok((range(&c.objects, prefix).map(|(k, _)| k.clone()).collect(), c.applied));
            }
        }
        self.reader.keys(prefix)
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        self.reader.scan(prefix, after, each)
    }

    fn create(&self, key: &str, object: Value) -> Result<Stored, StoreError> {
        self.noted(self.writer.create(key, object))
    }

    fn update(&self, key: &str, object: Value, expected: Option<u64>) -> Result<Stored, StoreError> {
        self.noted(self.writer.update(key, object, expected))
    }

    fn update_each(&self, updates: Vec<(String, Value, Option<u64>)>) -> Vec<Result<Stored, StoreError>> {
        let out = self.writer.update_each(updates);
        if let Some(r) = out.iter().filter_map(|r| r.as_ref().ok()).map(|s| s.revision).max() {
            self.note(r);
        }
        out
    }

    fn create_each(&self, objects: Vec<(String, Value)>) -> Vec<Result<Stored, StoreError>> {
        let out = self.writer.create_each(objects);
        if let Some(r) = out.iter().filter_map(|r| r.as_ref().ok()).map(|s| s.revision).max() {
            self.note(r);
        }
        out
    }

    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Stored, StoreError> {
        self.noted(self.writer.delete(key, expected))
    }

    /// Events the copy applied after `after` (from the store itself when `after` is older
    /// than the copy's recent events).
    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.watch_from(prefix, after, None)
    }

    fn watch_node(&self, prefix: &str, after: u64, node: &str) -> Result<Watch, StoreError> {
        self.watch_from(prefix, after, Some(node))
    }
    /// Compacts the store, and the copy's recent events with it: a watch from a compacted
    /// revision is refused through the copy as it is by the store.
    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.writer.compact(revision)?;
        let mut c = self.shared.lock();
        c.compacted = c.compacted.max(revision);
        while c.recent.front().is_some_and(|e| e.revision <= revision) {
            c.recent.pop_front();
        }
        Ok(())
    }

    /// The copy's revision, or that of the last write through it when the copy has not
    /// applied it yet (a read after this waits for it), without waiting: callers on async
    /// threads use it.
    fn revision(&self) -> Result<u64, StoreError> {
        let c = self.shared.lock();
        if c.synced {
            return Ok(c.applied.max(self.shared.written.load(Ordering::Acquire)));
        }
        drop(c);
        self.reader.revision()
    }

    fn fenced(&self, fence: &super::Fence) -> Option<Arc<dyn Store>> {
        let writer = self.writer.fenced(fence)?;
        Some(Arc::new(self.writing_to(writer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;
    use serde_json::json;
    use tug_api::kinds::pod::Pod;

    fn redb(dir: &std::path::Path, name: &str) -> Arc<dyn Store> {
        Arc::new(RedbStore::open(&dir.join(name), 64).unwrap())
    }

    fn pod(name: &str, x: usize) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": {"x": x.to_string()}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        })
    }

    /// The store's own contract holds through the copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicU32::new(0);
        let fresh = || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            Cached::start(redb(dir.path(), &format!("s{i}.redb")))
        };
        crate::store::conformance::run_all(fresh).await;
    }

    /// A fresh scan holds every write the store acknowledged before it, also writes made
    /// straight to the store, and picks a node's pods by the index as binds, moves and
    /// deletes change it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_scan_sees_the_stores_writes_and_a_nodes_pods() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(dir.path(), "s.redb");
        let copy = Cached::start(Arc::clone(&store));
        tokio::task::spawn_blocking(move || {
            let on = |name: &str, node: Option<&str>| {
                let mut p = pod(name, 0);
                if let Some(n) = node {
                    p["spec"]["nodeName"] = n.into();
                }
                p
            };
            let scan = |node: Option<&str>, after: Option<&str>| {
                let mut keys = Vec::new();
                let rev = copy
                    .scan_fresh("/pods/", after, node, &mut |k, v, json| {
                        // The object and its stored JSON are the store's.
                        assert_eq!(serde_json::from_slice::<Value>(json).unwrap(), *v);
                        assert_eq!(store.get(k).unwrap().unwrap().object, *v);
                        keys.push(k.trim_start_matches("/pods/default/").to_string());
                        true
                    })
                    .expect("the copy is at the store's revision");
                assert!(rev >= store.revision().unwrap());
                keys
            };
            for round in 0..20 {
                let (a, b, c) = (format!("a{round}"), format!("b{round}"), format!("c{round}"));
                store.create(&format!("/pods/default/{a}"), on(&a, Some("n1"))).unwrap();
                store.create(&format!("/pods/default/{b}"), on(&b, Some("n2"))).unwrap();
                store.create(&format!("/pods/default/{c}"), on(&c, None)).unwrap();
                assert_eq!(scan(Some(""), None), [c.as_str()], "round {round}");
                store.update(&format!("/pods/default/{c}"), on(&c, Some("n1")), None).unwrap();
                store.delete(&format!("/pods/default/{a}"), None).unwrap();
                assert_eq!(scan(Some("n1"), None), [c.as_str()], "round {round}");
                assert_eq!(scan(Some("n2"), None), [b.as_str()], "round {round}");
                assert_eq!(scan(Some(""), None), Vec::<String>::new(), "round {round}");
                assert_eq!(scan(None, None), [b.as_str(), c.as_str()], "round {round}");
                assert_eq!(scan(None, Some(&format!("/pods/default/{b}"))), [c.as_str()]);
                // The controllers' read of a node's pods, from the same index (the copy is at
                // the store's revision after the scans).
                let on = |n: &str| -> Vec<String> {
                    let pods = pods_on_node(&copy, n).unwrap();
                    pods.iter().map(|s| s.key.trim_start_matches("/pods/default/").to_string()).collect()
                };
                assert_eq!((on("n1"), on("n2")), (vec![c.clone()], vec![b.clone()]), "round {round}");
                for k in [b, c] {
                    store.delete(&format!("/pods/default/{k}"), None).unwrap();
                }
            }
            assert!(copy.scan_fresh("/secrets/", None, None, &mut |_, _, _| true).is_none(), "not copied");
        })
        .await
        .unwrap();
    }

    /// An owner's dependents come from the copy's index as owners are named, changed and
    /// deleted, the same as a list of the store finds them (also for kinds not copied).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_owners_dependents_are_found_by_the_index_as_a_list_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(dir.path(), "s.redb");
        let copy = Cached::start(Arc::clone(&store));
        tokio::task::spawn_blocking(move || {
            let owned = |kind: &str, name: &str, ns: &str, owners: &[&str]| {
                let refs: Vec<Value> = owners
                    .iter()
                    .map(|u| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": u}))
                    .collect();
                json!({"apiVersion": "v1", "kind": kind,
                       "metadata": {"name": name, "namespace": ns, "ownerReferences": refs}})
            };
            let names = |found: Vec<Stored>| {
                let mut keys: Vec<String> = found.into_iter().map(|s| s.key).collect();
                keys.sort();
                keys
            };
            let check = |prefix: &str, uid: &str, want: &[&str]| {
                let through_copy = names(owned_by(&copy, prefix, uid).unwrap());
                assert_eq!(through_copy, want, "{prefix} owned by {uid}, through the copy");
                assert_eq!(names(owned_by(store.as_ref(), prefix, uid).unwrap()), want, "listed");
            };
            copy.create("/pods/a/p1", owned("Pod", "p1", "a", &["u1"])).unwrap();
            copy.create("/pods/a/p2", owned("Pod", "p2", "a", &["u1", "u2"])).unwrap();
            copy.create("/pods/b/p3", owned("Pod", "p3", "b", &["u1"])).unwrap();
            copy.create("/configmaps/a/c1", owned("ConfigMap", "c1", "a", &["u1"])).unwrap();
            check("/pods/a/", "u1", &["/pods/a/p1", "/pods/a/p2"]);
            check("/pods/", "u1", &["/pods/a/p1", "/pods/a/p2", "/pods/b/p3"]);
            check("/pods/a/", "u2", &["/pods/a/p2"]);
            check("/configmaps/a/", "u1", &["/configmaps/a/c1"]);
            // An owner dropped, another named; then a dependent deleted.
            copy.update("/pods/a/p2", owned("Pod", "p2", "a", &["u2"]), None).unwrap();
            copy.update("/pods/a/p1", owned("Pod", "p1", "a", &["u3"]), None).unwrap();
            check("/pods/a/", "u1", &[]);
            check("/pods/a/", "u3", &["/pods/a/p1"]);
            copy.delete("/pods/a/p2", None).unwrap();
            check("/pods/a/", "u2", &[]);
            check("/pods/", "u1", &["/pods/b/p3"]);
            let c = copy.shared.lock();
            assert_eq!(c.ix.by_owner.len(), 2, "uids without dependents are dropped: {:?}", c.ix.by_owner);
        })
        .await
        .unwrap();
    }

    /// An object read typed from the copy is decoded once per change and shared with a typed
    /// list; one that does not decode is an error naming it; a partial view reads the part
    /// alone, from the copy and from a key not copied alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_is_read_typed_once_per_change_and_in_part() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Named {
            metadata: Meta,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Meta {
            name: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let store = redb(dir.path(), "s.redb");
        let copy = Cached::start(Arc::clone(&store));
        tokio::task::spawn_blocking(move || {
            let pod = |name: &str| {
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "a"},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}})
            };
            copy.create("/pods/a/p1", pod("p1")).unwrap();
            let one = get_typed::<Pod>(&copy, "/pods/a/p1").unwrap().unwrap();
            let again = get_typed::<Pod>(&copy, "/pods/a/p1").unwrap().unwrap();
            assert!(Arc::ptr_eq(&one.value, &again.value), "decoded again without a change");
            let (listed, _) = list_typed::<Pod>(&copy, "/pods/a/").unwrap();
            assert!(Arc::ptr_eq(&one.value, &listed[0].value), "the list decoded it again");
            let mut changed = pod("p1");
            changed["metadata"]["labels"] = json!({"x": "y"});
            copy.update("/pods/a/p1", changed, None).unwrap();
            let after = get_typed::<Pod>(&copy, "/pods/a/p1").unwrap().unwrap();
            assert_eq!(after.value.metadata.labels.get("x").map(String::as_str), Some("y"));
            assert!(after.revision() > one.revision());
            assert!(get_typed::<Pod>(&copy, "/pods/a/none").unwrap().is_none());
            // Read as a kind it is not: refused, naming the object.
            copy.create("/nodes/n1", json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                                            "spec": {"containers": "none"}}))
                .unwrap();
            let err = get_typed::<Pod>(&copy, "/nodes/n1").map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("/nodes/n1"), "{err}");
            // In part: from the copy, and from a key it does not hold (a ConfigMap).
            copy.create("/configmaps/a/c1", json!({"apiVersion": "v1", "kind": "ConfigMap",
                                                   "metadata": {"name": "c1", "namespace": "a"}, "data": {"k": "v"}}))
                .unwrap();
            for (key, name) in [("/pods/a/p1", "p1"), ("/configmaps/a/c1", "c1")] {
                for store in [&copy as &dyn Store, store.as_ref()] {
                    let (rev, named) = read_as::<Named>(store, key).unwrap().unwrap();
                    assert_eq!(named.unwrap().metadata.name, name);
                    assert_eq!(rev, store.get(key).unwrap().unwrap().revision);
                }
            }
            let (_, bad) = read_as::<Pod>(&copy, "/nodes/n1").unwrap().unwrap();
            assert!(bad.is_err(), "a Node read as a Pod");
            assert!(read_as::<Named>(&copy, "/pods/a/none").unwrap().is_none());
        })
        .await
        .unwrap();
    }

    /// A controller's pods, and the pods no one controls, come from the copy's index as pods
    /// are adopted, released and deleted — the same as a list of the store finds them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_controllers_pods_are_found_by_the_index_as_a_list_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(dir.path(), "s.redb");
        let copy = Cached::start(Arc::clone(&store));
        tokio::task::spawn_blocking(move || {
            // (uid, controller) pairs.
            let pod = |name: &str, ns: &str, refs: &[(&str, bool)]| {
                let refs: Vec<Value> = refs
                    .iter()
                    .map(|(u, c)| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": u, "controller": c}))
                    .collect();
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": ns, "ownerReferences": refs},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}})
            };
            let check = |ns: &str, uids: &[&str], want: &[&str]| {
                for (how, found) in [
                    ("through the copy", pods_controlled_by(&copy, ns, uids).unwrap()),
                    ("listed", pods_controlled_by(store.as_ref(), ns, uids).unwrap()),
                ] {
                    let mut keys: Vec<&str> = found.iter().map(|p| p.key()).collect();
                    keys.sort_unstable();
                    assert_eq!(keys, want, "{ns} {uids:?}, {how}");
                }
            };
            copy.create("/pods/a/p1", pod("p1", "a", &[("u1", true)])).unwrap();
            copy.create("/pods/a/p2", pod("p2", "a", &[("u2", true), ("u1", false)])).unwrap();
            copy.create("/pods/a/p3", pod("p3", "a", &[])).unwrap();
            copy.create("/pods/a/p4", pod("p4", "a", &[("u1", false)])).unwrap();
            copy.create("/pods/b/p5", pod("p5", "b", &[("u1", true)])).unwrap();
            check("a", &["u1"], &["/pods/a/p1"]);
            check("a", &["u1", ""], &["/pods/a/p1", "/pods/a/p3", "/pods/a/p4"]);
            check("a", &["u2", "u1"], &["/pods/a/p1", "/pods/a/p2"]);
            check("b", &["u1"], &["/pods/b/p5"]);
            // Released, adopted, deleted.
            copy.update("/pods/a/p1", pod("p1", "a", &[]), None).unwrap();
            copy.update("/pods/a/p3", pod("p3", "a", &[("u2", true)]), None).unwrap();
            copy.delete("/pods/a/p2", None).unwrap();
            check("a", &["u1"], &[]);
            check("a", &[""], &["/pods/a/p1", "/pods/a/p4"]);
            check("a", &["u2"], &["/pods/a/p3"]);
        })
        .await
        .unwrap();
    }

    /// The copy is listed again only when its watch has gone quiet while the store moved
    /// on, not while the watch still delivers events behind the store.
    #[test]
    fn a_watch_behind_but_delivering_is_not_stalled() {
        let now = std::time::Instant::now();
        let ago = |d: Duration| now.checked_sub(d).unwrap();
        let old_probe: VecDeque<_> = [(ago(3 * LIVENESS), 100)].into();
        let new_probe: VecDeque<_> = [(ago(LIVENESS / 2), 100)].into();
        assert!(stalled(&old_probe, ago(3 * LIVENESS)), "quiet and behind a revision read long ago");
        assert!(!stalled(&old_probe, now), "behind, but the watch delivered just now");
        assert!(!stalled(&new_probe, ago(3 * LIVENESS)), "quiet, but the probe is recent");
        assert!(!stalled(&VecDeque::new(), ago(3 * LIVENESS)), "quiet with nothing to reach");
    }

    /// A compaction through the copy holds even for events the copy applies after it (its
    /// feed may be behind the store when the compaction is made): a watch from before the
    /// compacted revision is refused, one from it starts after it.
    #[test]
    fn events_applied_after_a_compaction_do_not_reopen_it() {
        let event = |revision| {
            Arc::new(Event {
                revision,
                type_: EventType::Added,
                key: format!("/configmaps/default/c{revision}"),
                object: json!({}),
            })
        };
        let mut c = Copy { synced: true, applied: 10, compacted: 13, ..Copy::default() };
        c.recent.extend((11..=15).map(event));
        c.applied = 15;
        assert!(matches!(
            recent_after(&c, "/configmaps/", 11),
            Err(StoreError::Compacted { requested: 11, oldest: 13 })
        ));
        let after: Vec<u64> =
            recent_after(&c, "/configmaps/", 13).unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(after, [14, 15]);
    }

    /// A read right after a write through the copy sees it; one made behind the copy's back
    /// (the API server's) shows once its event is applied, and the watch through the copy
    /// hands that event on only after the copy holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_their_own_writes_and_events_follow_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(dir.path(), "s.redb");
        let c = Cached::start(Arc::clone(&store));
        let blocking = c.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..200usize {
                let name = format!("p{i}");
                blocking.create(&format!("/pods/default/{name}"), pod(&name, i)).unwrap();
                // Read back at once: from the copy, never missing the pod just made.
                assert_eq!(blocking.list("/pods/default/").unwrap().0.len(), i + 1);
            }
            let s = blocking.update("/pods/default/p7", pod("p7", 700), None).unwrap();
            assert_eq!(blocking.get("/pods/default/p7").unwrap().unwrap().revision, s.revision);
            blocking.delete("/pods/default/p8", None).unwrap();
            assert!(blocking.get("/pods/default/p8").unwrap().is_none());
        })
        .await
        .unwrap();
        let rev = c.revision().unwrap();
        let mut w = c.watch("/pods/", rev).unwrap();
        let made = store.create("/pods/default/behind", pod("behind", 1)).unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!((e.key.as_str(), e.revision), ("/pods/default/behind", made.revision));
        let c2 = c.clone();
        let seen =
            tokio::task::spawn_blocking(move || c2.get("/pods/default/behind").unwrap()).await.unwrap();
        assert_eq!(seen.map(|s| s.revision), Some(made.revision));
        // Events and Leases are read from the store, not copied.
        store.create("coordination.k8s.io/leases/default/l", json!({"metadata": {"name": "l"}})).unwrap();
        let c3 = c.clone();
        tokio::task::spawn_blocking(move || {
            assert!(c3.get("coordination.k8s.io/leases/default/l").unwrap().is_some());
            assert!(!c3.shared.lock().objects.contains_key("coordination.k8s.io/leases/default/l"));
            let (keys, _) = c3.keys("").unwrap();
            assert!(keys.iter().any(|k| k == "coordination.k8s.io/leases/default/l"));
            assert!(keys.iter().any(|k| k == "/pods/default/behind"));
        })
        .await
        .unwrap();
    }

    /// An API watcher that falls behind the live events and the copy's recent ones by far
    /// goes on with a watch of its own from the store: every event, in order, none twice. A
    /// controller's ends instead (it lists again). Watchers of another resource are not woken
    /// by pods' events at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_far_behind_goes_on_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb(dir.path(), "s.redb");
        let controllers = Cached::start(Arc::clone(&store));
        let c = controllers.serving_watches();
        let start = tokio::task::spawn_blocking({
            let c = c.clone();
            move || {
                c.create("/pods/default/first", pod("first", 0)).unwrap();
                c.revision().unwrap()
            }
        })
        .await
        .unwrap();
        let mut pods = c.watch("/pods/", start).unwrap();
        let mut nodes = c.watch("/nodes/", start).unwrap();
        let mut ends = controllers.watch("/pods/", start).unwrap();
        let n = LIVE + RECENT + 500;
        let last = tokio::task::spawn_blocking({
            let c = c.clone();
            move || {
                let mut last = 0;
                for batch in 0..n.div_ceil(500) {
                    let made = c.create_each(
                        (batch * 500..((batch + 1) * 500).min(n))
                            .map(|i| (format!("/pods/default/p{i}"), pod(&format!("p{i}"), i)))
                            .collect(),
                    );
                    last = made.last().unwrap().as_ref().unwrap().revision;
                }
                // Read through the copy: it has applied every write.
                assert_eq!(c.list("/pods/default/").unwrap().0.len(), n + 1);
                last
            }
        })
        .await
        .unwrap();
        let mut prev = start;
        for _ in 0..n {
            let e =
                tokio::time::timeout(Duration::from_secs(10), pods.next()).await.unwrap().unwrap().unwrap();
            assert!(e.revision > prev && e.key.starts_with("/pods/"), "{} after {prev}", e.revision);
            prev = e.revision;
        }
        assert_eq!(prev, last);
        assert!(tokio::time::timeout(Duration::from_millis(200), nodes.next()).await.is_err());
        let mut ended = false;
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(10), ends.next()).await.unwrap() {
                Some(Ok(_)) => continue,
                Some(Err(StoreError::TooSlow(_))) => {
                    ended = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(ended, "a controller's watch far behind must end");
    }

    /// Typed reads decode each object once per change, shared between reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn typed_reads_decode_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cached::start(redb(dir.path(), "s.redb"));
        let c2 = c.clone();
        tokio::task::spawn_blocking(move || {
            c2.create("/pods/default/a", pod("a", 1)).unwrap();
            c2.create("/pods/default/b", pod("b", 1)).unwrap();
            let (first, _) = list_typed::<tug_api::kinds::pod::Pod>(&c2, "/pods/default/").unwrap();
            let (again, _) = list_typed::<tug_api::kinds::pod::Pod>(&c2, "/pods/default/").unwrap();
            assert_eq!(first.len(), 2);
            assert!(Arc::ptr_eq(&first[0].value, &again[0].value), "decoded again without a change");
            c2.update("/pods/default/a", pod("a", 2), None).unwrap();
            let (after, _) = list_typed::<tug_api::kinds::pod::Pod>(&c2, "/pods/default/").unwrap();
            assert!(!Arc::ptr_eq(&first[0].value, &after[0].value), "a changed object is decoded again");
            assert!(Arc::ptr_eq(&first[1].value, &after[1].value));
            assert_eq!(after[0].stored().object["metadata"]["annotations"]["x"], "2");
        })
        .await
        .unwrap();
    }
}
