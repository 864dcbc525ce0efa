//! The embedded backend: one redb file; every acknowledged write is fsync'd, so it survives
//! `kill -9`.
//!
//! Tables: `objects` (key → JSON), `events` (revision → event JSON, for watches from a past
//! revision), `meta` (`revision`, `compacted`).
//!
//! Group write: a writer queues its changes and waits. Whichever waiting writer finds no
//! write in progress leads: it takes every change queued so far — its own and those that
//! arrived while the last batch was being written — and makes them one transaction, committed
//! durably (one fsync), then hands each writer its results and broadcasts the events in
//! revision order. Writers arriving together (a `tug apply` of many objects, a scheduling
//! round, thousands of nodes' heartbeats and pods' status updates) share one transaction
//! instead of queueing for one each. A batch takes about 256 changes at most, and a write
//! of many changes (a controller's pods) goes 64 at a time, so no batch keeps the writes
//! behind it waiting long. Nothing is acknowledged or broadcast before it is durable.

use super::{Event, EventType, Store, StoreError, Stored, Watch, stamp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The embedded store.
pub struct RedbStore {
    /// The open database; None after a disk error (redb refuses everything after one) until
    /// it is reopened, from what was durable.
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: std::path::PathBuf,
    cache: usize,
    /// Held by the write transaction in progress (a batch's or a compaction's).
    writer: Mutex<()>,
    /// Durable commits made (each carries a batch).
    commits: AtomicU64,
    /// Writes waiting for a batch, and the leader's results for them.
    group: Group,
    /// The last revision known durable: history is read up to it.
    durable: Arc<AtomicU64>,
    live: super::Hub,
}

/// The most changes a write puts in one batch: larger writes go in several.
const CHUNK: usize = 64;

/// About the most changes a batch takes (a write is never split between batches).
const BATCH: usize = 256;

/// The writes waiting to be made one transaction.
#[derive(Default)]
struct Group {
    state: Mutex<Queue>,
    /// Notified when a batch is done (its writers' results are in, and no one leads).
    done: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Each waiting write's number and changes, in arrival order.
    waiting: Vec<(u64, Vec<(String, Change)>)>,
    /// Whether a writer is making a batch now.
    leading: bool,
    next: u64,
    /// Results of batches made, by write number, until their writer takes them.
    finished: HashMap<u64, Outcome>,
}

/// A write's results: one event (or refusal) per change, or the store's own error for all
/// of them. Each writer makes its own `Stored` copies of its events, not the leader.
type Outcome = Result<Vec<Result<Arc<Event>, StoreError>>, StoreError>;

/// The leader's claim on a batch: if it unwinds before handing out results (a change that
/// panics), its writers get an error and another writer may lead, instead of waiting forever.
struct Lead<'a> {
    group: &'a Group,
    writes: Vec<u64>,
    done: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut q = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
        q.leading = false;
        if !self.done {
            for w in self.writes.drain(..) {
                q.finished.insert(w, Err(StoreError::Backend("a write in the same batch failed".into())));
            }
        }
        self.group.done.notify_all();
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A redb error: a disk error (ENOSPC, EIO — and every call after one, which redb refuses
/// until the database is reopened) makes the store unavailable (503) until it is reopened.
fn storage(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => StoreError::Unavailable(format!(
            "the store's disk failed ({e}); it is reopened from what was durable"
        )),
        e => StoreError::Backend(e.to_string()),
    }
}

/// The events under `prefix` after `after`, up to what is durable (later ones come live once
/// their commit is synced: a write a disk error loses is never seen by a watch), a page of
/// them at most ([`super::HISTORY_PAGE`]); Compacted when the history no longer reaches back
/// to `after`. With `node`, pods' events are only that node's (as
/// [`super::Hub::subscribe_node`] hands them out live).
///
/// Each event is first read for its key (and a pod's node) alone, skipping the object; only
/// the events wanted are decoded whole. A watch of one node's pods from a minute ago passes
/// over every change in the cluster since (at 5,000 nodes, thousands a second): decoding each
/// whole took most of a core for every node whose watch was cut.
fn history(
    db: &Database,
    durable: &AtomicU64,
    prefix: &str,
    after: u64,
    node: Option<&str>,
) -> Result<super::Page, StoreError> {
    let durable = durable.load(Ordering::Acquire);
    let tx = db.begin_read().map_err(storage)?;
    let meta = tx.open_table(META).map_err(backend)?;
    let compacted = meta.get("compacted").map_err(backend)?.map(|g| g.value()).unwrap_or(0);
    if after < compacted {
        return Err(StoreError::Compacted { requested: after, oldest: compacted });
    }
    let node = node.filter(|_| super::resource_of(prefix) == Some(super::BY_NODE));
    let events = tx.open_table(EVENTS).map_err(backend)?;
    let mut page = super::Page { events: Vec::new(), more: None };
    for item in events.range(after + 1..=durable.max(after)).map_err(backend)? {
        let (revision, v) = item.map_err(backend)?;
        if page.events.len() == super::HISTORY_PAGE {
            // (Read up to the event before this one.)
            page.more = Some(revision.value() - 1);
            break;
        }
        if !wanted(v.value(), prefix, node) {
            continue;
        }
        let e: Event = serde_json::from_slice(v.value()).map_err(backend)?;
        // (What the quick read could not judge is judged on the whole event.)
        if e.key.starts_with(prefix)
            && node.is_none_or(|n| super::field_text(&e.object, "spec.nodeName") == n)
        {
            page.events.push(Arc::new(e));
        }
    }
    Ok(page)
}

/// Whether a stored event may be under `prefix` (and `node`'s), read without decoding its
/// object; true when it cannot tell.
fn wanted(bytes: &[u8], prefix: &str, node: Option<&str>) -> bool {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        key: Cow<'a, str>,
    }
    #[derive(serde::Deserialize)]
    struct WithNode<'a> {
        #[serde(borrow)]
        key: Cow<'a, str>,
        #[serde(borrow)]
        object: Object<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Object<'a> {
        #[serde(borrow, default)]
        spec: Option<Spec<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Spec<'a> {
        #[serde(borrow, default, rename = "nodeName")]
        node_name: Option<Cow<'a, str>>,
    }
    match node {
        // (Unreadable this way: left to the whole decode, which reports it.)
        None => !matches!(serde_json::from_slice::<Head>(bytes), Ok(h) if !h.key.starts_with(prefix)),
        Some(n) => match serde_json::from_slice::<WithNode>(bytes) {
            Ok(h) => {
                h.key.starts_with(prefix)
                    && h.object.spec.and_then(|s| s.node_name).as_deref().unwrap_or("") == n
            }
            Err(_) => true,
        },
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`. `buffer` is how many events a live watcher may
    /// fall behind the broadcast before it catches up from the history (and is cut off only
    /// once the history no longer holds where it was).
    pub fn open(path: &Path, buffer: usize) -> Result<RedbStore, StoreError> {
        RedbStore::open_with_cache(path, buffer, DEFAULT_CACHE)
    }

    /// [`RedbStore::open`] with a page cache of `cache` bytes (redb's own default is 1 GiB,
    /// which a store of 10,000 pods fills to a few hundred MiB of resident memory).
    pub fn open_with_cache(path: &Path, buffer: usize, cache: usize) -> Result<RedbStore, StoreError> {
        let db = open_db(path, cache)?;
        let live = super::Hub::new(buffer.max(16));
        let store = RedbStore {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path: path.to_path_buf(),
            cache,
            writer: Mutex::new(()),
            commits: AtomicU64::new(0),
            group: Group::default(),
            durable: Arc::new(AtomicU64::new(0)),
            live,
        };
        store.durable.store(store.meta("revision")?, Ordering::Release);
        Ok(store)
    }

    /// The database, reopened first when a disk error closed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db =
            Arc::new(open_db(&self.path, self.cache).map_err(|e| {
                StoreError::Unavailable(format!("reopening the store after a disk error: {e}"))
            })?);
        let durable = {
            let tx = db.begin_read().map_err(storage)?;
            let meta = tx.open_table(META).map_err(storage)?;
            meta.get("revision").map_err(storage)?.map(|g| g.value()).unwrap_or(0)
        };
        self.durable.store(durable, Ordering::Release);
        tracing::warn!("tug-scheduler: store reopened after a disk error, at revision {durable}");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// After a disk error: the database is closed (its writes not yet durable are gone with
    /// it, and never broadcast) and reopened by the next call.
    fn failed(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Unavailable(_)) {
            let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
            if slot.take().is_some() {
                tracing::warn!("tug-scheduler: {e}");
            }
        }
        e
    }

    /// One change: `f` gets the current object (if any) and the next revision, and returns
    /// the event to record (or an error, which leaves the key as it is). Returns once it is
    /// durable.
    fn write(&self, key: &str, f: Change) -> Result<Stored, StoreError> {
        let mut results = self.write_all(vec![(key.to_string(), f)]);
        results.pop().unwrap_or_else(|| Err(StoreError::Backend("a write without a result".into())))
    }

    /// Several changes, each as [`RedbStore::write`] makes one: a change whose `f` refuses is
    /// left out and its error returned in its place; the others are committed with whatever
    /// other writers queued meanwhile, and are durable when this returns. They go [`CHUNK`]
    /// at a time, each chunk in the next batch (an error of the store itself fails a chunk):
    /// a controller's 500 pods in one batch made every heartbeat and operator's write behind
    /// it wait for all of them.
    fn write_all(&self, changes: Vec<(String, Change)>) -> Vec<Result<Stored, StoreError>> {
        let mut out = Vec::with_capacity(changes.len());
        let mut changes = changes.into_iter().peekable();
        while changes.peek().is_some() {
            let chunk: Vec<(String, Change)> = changes.by_ref().take(CHUNK).collect();
            let n = chunk.len();
            match self.write_batched(chunk) {
                Ok(events) => out.extend(events.into_iter().map(|r| r.map(|e| stored(&e)))),
                Err(e) => out.extend((0..n).map(|_| Err(e.clone()))),
            }
        }
        out
    }

    /// [`RedbStore::write_all`]'s events, from the batch the changes joined.
    fn write_batched(&self, changes: Vec<(String, Change)>) -> Outcome {
        let group = &self.group;
        let mut q = group.state.lock().unwrap_or_else(|e| e.into_inner());
        let me = q.next;
        q.next += 1;
        q.waiting.push((me, changes));
        loop {
            if let Some(outcome) = q.finished.remove(&me) {
                return outcome;
            }
            if !q.leading {
                q.leading = true;
                // The writes waiting, in arrival order, up to about BATCH changes (the rest
                // are the next batch's).
                let (mut take, mut changes) = (0, 0);
                for (_, c) in &q.waiting {
                    if take > 0 && changes + c.len() > BATCH {
                        break;
                    }
                    take += 1;
                    changes += c.len();
                }
                let batch: Vec<_> = q.waiting.drain(..take).collect();
                drop(q);
                let mut lead = Lead { group, writes: batch.iter().map(|(w, _)| *w).collect(), done: false };
                let outcomes = self.commit(batch);
                let mut q2 = group.state.lock().unwrap_or_else(|e| e.into_inner());
                q2.finished.extend(outcomes);
                lead.done = true;
                drop(q2);
                // (Dropping the lead lets the next writer lead and wakes the waiting ones.)
                drop(lead);
                q = group.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            q = group.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Makes a batch of writes one durable transaction and broadcasts its events; each write's
    /// outcome by its number.
    fn commit(&self, batch: Vec<(u64, Vec<(String, Change)>)>) -> Vec<(u64, Outcome)> {
        let writes: Vec<u64> = batch.iter().map(|(w, _)| *w).collect();
        match self.commit_once(batch) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let e = self.failed(e);
                writes.into_iter().map(|w| (w, Err(e.clone()))).collect()
            }
        }
    }

    fn commit_once(
        &self,
        batch: Vec<(u64, Vec<(String, Change)>)>,
    ) -> Result<Vec<(u64, Outcome)>, StoreError> {
        let db = self.db()?;
        // Each write's number and its changes' events (or refusals).
        type Made = Vec<Result<Arc<Event>, StoreError>>;
        let mut outcomes: Vec<(u64, Made)> = Vec::with_capacity(batch.len());
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = db.begin_write().map_err(storage)?;
        let mut made = 0;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(storage)?;
            let mut events = tx.open_table(EVENTS).map_err(storage)?;
            let mut meta = tx.open_table(META).map_err(storage)?;
            let mut revision = meta.get("revision").map_err(storage)?.map(|g| g.value()).unwrap_or(0);
            for (write, changes) in batch {
                let mut results = Vec::with_capacity(changes.len());
                for (key, f) in changes {
                    let found = objects.get(key.as_str()).map_err(storage)?;
                    let current = found.as_ref().map(|b| Current { key: &key, bytes: b.value() });
                    // (Another writer's change: one that panics fails alone, not its leader.)
                    let change =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(current, revision + 1)));
                    drop(found);
                    let (type_, mut object) = match change {
                        Ok(Ok(change)) => change,
                        Ok(Err(e)) => {
                            results.push(Err(e));
                            continue;
                        }
                        Err(_) => {
                            results.push(Err(StoreError::Backend(format!("{key}: the change panicked"))));
                            continue;
                        }
                    };
                    revision += 1;
                    stamp(&mut object, revision);
                    let bytes = serde_json::to_vec(&object).map_err(backend)?;
                    if type_ == EventType::Deleted {
                        objects.remove(key.as_str()).map_err(storage)?;
                    } else {
                        objects.insert(key.as_str(), bytes.as_slice()).map_err(storage)?;
                    }
                    let event = Event { revision, type_, key, object };
                    events.insert(revision, event_bytes(&event, &bytes).as_slice()).map_err(storage)?;
                    results.push(Ok(Arc::new(event)));
                    made += 1;
                }
                outcomes.push((write, results));
            }
            if made > 0 {
                meta.insert("revision", revision).map_err(storage)?;
            }
        }
        let last =
            outcomes.iter().flat_map(|(_, r)| r).filter_map(|r| r.as_ref().ok()).map(|e| e.revision).max();
        if let Some(last) = last {
            let metrics = crate::metrics::get();
            let synced = std::time::Instant::now();
            tx.commit().map_err(storage)?;
            metrics.fsync.observe(synced.elapsed().as_secs_f64());
            metrics.commit_writes.observe(made as f64);
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.durable.store(last, Ordering::Release);
            for e in outcomes.iter().flat_map(|(_, r)| r).filter_map(|r| r.as_ref().ok()) {
                self.live.send(Arc::clone(e));
            }
        }
        // (Nothing to write: the transaction is dropped, which aborts it.)
        Ok(outcomes.into_iter().map(|(w, results)| (w, Ok(results))).collect())
    }

    fn meta(&self, name: &str) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        let meta = tx.open_table(META).map_err(storage)?;
        Ok(meta.get(name).map_err(storage)?.map(|g| g.value()).unwrap_or(0))
    }

    /// A watch, on `node`'s channel of the live events when given (see [`Store::watch_node`]).
    fn watch_from(&self, prefix: &str, after: u64, node: Option<&str>) -> Result<Watch, StoreError> {
        // Subscribe before reading the backlog, so nothing committed in between is missed;
        // the watch skips live events it already delivered from the backlog.
        let live = match node {
            Some(n) => self.live.subscribe_node(prefix, n),
            None => self.live.subscribe(prefix),
        };
        let db = self.db()?;
        let backlog = history(&db, &self.durable, prefix, after, node).map_err(|e| self.failed(e))?;
        // A watcher that falls behind the broadcast reads what it missed the same way, from the
        // database open then (none while a disk error has it closed: that watcher is cut off).
        // It holds the slot, not the database, which a reopen must be able to close.
        let (slot, durable) = (Arc::clone(&self.db), Arc::clone(&self.durable));
        let node = node.map(str::to_string);
        let again: super::History = Arc::new(move |prefix, after| {
            let db = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
            let db = db.ok_or_else(|| StoreError::Unavailable("the store is being reopened".into()))?;
            history(&db, &durable, prefix, after, node.as_deref())
        });
        Ok(Watch::new(prefix, after, backlog, live).with_history(again))
    }
}

/// A change to one key: given the current object (if any) and the revision it would get, the
/// event to record, or the error that leaves the key as it is.
/// It runs on whichever writer leads the batch it joins, inside the batch's transaction: it
/// reads of the current object only what it needs ([`Current`]).
type Change = Box<dyn FnOnce(Option<Current<'_>>, u64) -> Result<(EventType, Value), StoreError> + Send>;

/// The object a change finds at its key, as stored: most changes need its revision alone,
/// read without decoding the rest.
pub(crate) struct Current<'a> {
    key: &'a str,
    bytes: &'a [u8],
}

impl Current<'_> {
    /// Its revision (`metadata.resourceVersion`).
    fn revision(&self) -> Result<u64, StoreError> {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(borrow, default)]
            metadata: Option<Meta<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct Meta<'a> {
            #[serde(borrow, default, rename = "resourceVersion")]
            resource_version: Option<std::borrow::Cow<'a, str>>,
        }
        let head: Head = serde_json::from_slice(self.bytes)
            .map_err(|e| StoreError::Backend(format!("{}: corrupt object: {e}", self.key)))?;
        Ok(head.metadata.and_then(|m| m.resource_version).and_then(|r| r.parse().ok()).unwrap_or(0))
    }

    /// The whole object.
    fn stored(&self) -> Result<Stored, StoreError> {
        decode(self.key, self.bytes)
    }
}

/// An event as the history table keeps it, around its object's bytes as already written (the
/// object is not serialized twice).
fn event_bytes(e: &Event, object: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(object.len() + e.key.len() + 64);
    out.extend_from_slice(format!("{{\"revision\":{},\"type\":", e.revision).as_bytes());
    // (A String and an enum into a Vec: neither can fail.)
    let _ = serde_json::to_writer(&mut out, &e.type_);
    out.extend_from_slice(b",\"key\":");
    let _ = serde_json::to_writer(&mut out, &e.key);
    out.extend_from_slice(b",\"object\":");
    out.extend_from_slice(object);
    out.push(b'}');
    out
}

/// An update: the object replaces the current one, which must exist and, with `expected`,
/// still have that revision.
fn replace(key: String, object: Value, expected: Option<u64>) -> Change {
    Box::new(move |current: Option<Current<'_>>, _| {
        let current = current.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        // (Even unchecked, an object that no longer decodes is not written over.)
        let revision = current.revision()?;
        match expected {
            Some(e) if e != revision => Err(StoreError::Conflict { key, expected: e, current: revision }),
            _ => Ok((EventType::Modified, object)),
        }
    })
}

fn stored(e: &Event) -> Stored {
    Stored { key: e.key.clone(), revision: e.revision, object: e.object.clone() }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Stored, StoreError> {
    let object: Value = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("{key}: corrupt object: {e}")))?;
    let revision = object["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0);
    Ok(Stored { key: key.to_string(), revision, object })
}

/// Opens (or creates) the database file with its tables.
fn open_db(path: &Path, cache: usize) -> Result<Database, StoreError> {
    let db = redb::Builder::new()
        .set_cache_size(cache)
        .create(path)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    let tx = db.begin_write().map_err(storage)?;
    {
        tx.open_table(OBJECTS).map_err(storage)?;
        tx.open_table(EVENTS).map_err(storage)?;
        tx.open_table(META).map_err(storage)?;
    }
    tx.commit().map_err(storage)?;
    Ok(db)
}

/// The page cache unless told otherwise: the working set of a busy cluster's objects.
pub const DEFAULT_CACHE: usize = 32 << 20;

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.failed(storage(e)))?;
        let objects = tx.open_table(OBJECTS).map_err(backend)?;
        match objects.get(key).map_err(backend)? {
            Some(b) => Ok(Some(decode(key, b.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64), StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.failed(storage(e)))?;
        let objects = tx.open_table(OBJECTS).map_err(backend)?;
        let meta = tx.open_table(META).map_err(backend)?;
        let revision = meta.get("revision").map_err(backend)?.map(|g| g.value()).unwrap_or(0);
        let mut out = Vec::new();
        for item in objects.range(prefix..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok((out, revision))
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.failed(storage(e)))?;
        let objects = tx.open_table(OBJECTS).map_err(backend)?;
        let meta = tx.open_table(META).map_err(backend)?;
        let revision = meta.get("revision").map_err(backend)?.map(|g| g.value()).unwrap_or(0);
        let range = match after {
            Some(a) => objects.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => objects.range(prefix..),
        };
        for item in range.map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            if !each(k.value(), v.value()) {
                break;
            }
        }
        Ok(revision)
    }

    fn create(&self, key: &str, object: Value) -> Result<Stored, StoreError> {
        let k = key.to_string();
        self.write(
            key,
            Box::new(move |current: Option<Current<'_>>, _| match current {
                Some(_) => Err(StoreError::AlreadyExists(k)),
                None => Ok((EventType::Added, object)),
            }),
        )
    }

    fn create_each(&self, objects: Vec<(String, Value)>) -> Vec<Result<Stored, StoreError>> {
        let changes: Vec<(String, Change)> = objects
            .into_iter()
            .map(|(key, object)| {
                let k = key.clone();
                let change: Change = Box::new(move |current: Option<Current<'_>>, _| match current {
                    Some(_) => Err(StoreError::AlreadyExists(k)),
                    None => Ok((EventType::Added, object)),
                });
                (key, change)
            })
            .collect();
        self.write_all(changes)
    }

    fn update(&self, key: &str, object: Value, expected: Option<u64>) -> Result<Stored, StoreError> {
        self.write(key, replace(key.to_string(), object, expected))
    }

    fn update_each(&self, updates: Vec<(String, Value, Option<u64>)>) -> Vec<Result<Stored, StoreError>> {
        let changes: Vec<(String, Change)> = updates
            .into_iter()
            .map(|(key, object, expected)| (key.clone(), replace(key, object, expected)))
            .collect();
        self.write_all(changes)
    }

    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Stored, StoreError> {
        let k = key.to_string();
        self.write(
            key,
            Box::new(move |current: Option<Current<'_>>, _| {
                let current = current.ok_or_else(|| StoreError::NotFound(k.clone()))?.stored()?;
                match expected {
                    Some(e) if e != current.revision => {
                        Err(StoreError::Conflict { key: k, expected: e, current: current.revision })
                    }
                    _ => Ok((EventType::Deleted, current.object)),
                }
            }),
        )
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.watch_from(prefix, after, None)
    }

    fn watch_node(&self, prefix: &str, after: u64, node: &str) -> Result<Watch, StoreError> {
        self.watch_from(prefix, after, Some(node))
    }
    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = self.db()?.begin_write().map_err(|e| self.failed(storage(e)))?;
        {
            let mut events = tx.open_table(EVENTS).map_err(backend)?;
            events.retain_in(..=revision, |_, _| false).map_err(backend)?;
            let mut meta = tx.open_table(META).map_err(backend)?;
            let old = meta.get("compacted").map_err(backend)?.map(|g| g.value()).unwrap_or(0);
            meta.insert("compacted", revision.max(old)).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.meta("revision")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of updates: each is applied or refused on its own, the results in order, the
    /// applied ones with consecutive revisions and their events watched in that order.
    #[tokio::test]
    async fn update_each_applies_each_update_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb"), 64).unwrap();
        let a = store.create("/pods/default/a", serde_json::json!({"metadata": {"name": "a"}})).unwrap();
        let b = store.create("/pods/default/b", serde_json::json!({"metadata": {"name": "b"}})).unwrap();
        let mut watch = store.watch("/pods/", b.revision).unwrap();
        let results = store.update_each(vec![
            (
                "/pods/default/a".into(),
                serde_json::json!({"metadata": {"name": "a"}, "x": 1}),
                Some(a.revision),
            ),
            (
                "/pods/default/b".into(),
                serde_json::json!({"metadata": {"name": "b"}, "x": 1}),
                Some(a.revision),
            ),
            ("/pods/default/c".into(), serde_json::json!({"metadata": {"name": "c"}}), None),
            (
                "/pods/default/b".into(),
                serde_json::json!({"metadata": {"name": "b"}, "x": 2}),
                Some(b.revision),
            ),
        ]);
        assert_eq!(results[0].as_ref().unwrap().revision, b.revision + 1);
        assert!(matches!(results[1], Err(StoreError::Conflict { .. })));
        assert!(matches!(results[2], Err(StoreError::NotFound(_))));
        assert_eq!(results[3].as_ref().unwrap().revision, b.revision + 2);
        assert_eq!(store.get("/pods/default/b").unwrap().unwrap().object["x"], 2);
        for (key, rev) in [("/pods/default/a", b.revision + 1), ("/pods/default/b", b.revision + 2)] {
            let e = watch.next().await.unwrap().unwrap();
            assert_eq!((e.key.as_str(), e.revision), (key, rev));
        }
        assert!(store.update_each(Vec::new()).is_empty());
        assert_eq!(store.revision().unwrap(), b.revision + 2);
    }

    /// Live events go to their resource's watchers and to the whole store's; a watcher of
    /// pods is not handed the Leases (its channel never carries them).
    #[tokio::test]
    async fn live_events_reach_their_resources_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb"), 64).unwrap();
        let r0 = store.revision().unwrap();
        let mut pods = store.watch("/pods/default/", r0).unwrap();
        let mut all = store.watch("", r0).unwrap();
        let pods_channel = store.live.subscribe("/pods/");
        let lease = serde_json::json!({"metadata": {"name": "n"}});
        store.create("coordination.k8s.io/leases/tug-node-lease/n", lease).unwrap();
        store.create("/pods/other/a", serde_json::json!({"metadata": {"name": "a"}})).unwrap();
        store.create("/pods/default/b", serde_json::json!({"metadata": {"name": "b"}})).unwrap();
        assert_eq!(pods.next().await.unwrap().unwrap().key, "/pods/default/b");
        let keys: Vec<String> = [all.next().await, all.next().await, all.next().await]
            .into_iter()
            .map(|e| e.unwrap().unwrap().key)
            .collect();
        assert_eq!(keys[0], "coordination.k8s.io/leases/tug-node-lease/n");
        assert_eq!(pods_channel.len(), 2, "the pods' channel carries the two pods only");
    }

    /// A node's watch of its own pods is woken by that node's pods' events alone: another
    /// node's pods never reach its channel, an unbound pod reaches the channel of "" (the
    /// scheduler's kind of watch), and a pod bound later reaches its node from the binding on.
    /// Past its channel's few places it catches up from the history like any watch, which
    /// may then hand out other nodes' pods too (the API filters them).
    #[tokio::test]
    async fn a_nodes_pod_watch_hears_its_own_pods_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb"), 512).unwrap();
        let r0 = store.revision().unwrap();
        let pod = |name: &str, node: Option<&str>| {
            let mut p = serde_json::json!({"metadata": {"name": name}, "spec": {}});
            if let Some(n) = node {
                p["spec"]["nodeName"] = n.into();
            }
            p
        };
        let mut n1 = store.watch_node("/pods/", r0, "n1").unwrap();
        let n1_channel = store.live.subscribe_node("/pods/", "n1");
        let unbound = store.live.subscribe_node("/pods/default/", "");
        let leases = store.live.subscribe_node("coordination.k8s.io/leases/", "n1");
        store.create("/pods/default/a", pod("a", Some("n2"))).unwrap();
        store.create("/pods/default/b", pod("b", None)).unwrap();
        store.update("/pods/default/b", pod("b", Some("n1")), None).unwrap();
        store.create("/pods/default/c", pod("c", Some("n1"))).unwrap();
        store.create("coordination.k8s.io/leases/default/n1", serde_json::json!({})).unwrap();
        let e = n1.next().await.unwrap().unwrap();
        assert_eq!((e.key.as_str(), e.type_), ("/pods/default/b", EventType::Modified));
        assert_eq!(n1.next().await.unwrap().unwrap().key, "/pods/default/c");
        assert_eq!(n1_channel.len(), 2, "n1's channel carries its two pods' events only");
        assert_eq!(unbound.len(), 1, "the unbound pod's creation");
        assert_eq!(leases.len(), 1, "another resource's watch has its resource's channel");
        // From the history: a node's watch from before gets its pods' events only; a watch of
        // pods every pod's, not the Lease's.
        let keys = |node: Option<&str>| -> Vec<(String, EventType)> {
            let db = store.db().unwrap();
            let h = history(&db, &store.durable, "/pods/", r0, node).unwrap();
            h.events.iter().map(|e| (e.key.clone(), e.type_)).collect()
        };
        let k = |key: &str, t| (key.to_string(), t);
        assert_eq!(
            keys(Some("n1")),
            [k("/pods/default/b", EventType::Modified), k("/pods/default/c", EventType::Added)]
        );
        assert_eq!(keys(Some("")), [k("/pods/default/b", EventType::Added)]);
        assert_eq!(keys(None).len(), 4);
        // A key the quick read must unescape is judged the same.
        store.create("/pods/default/q\"uote", pod("q", Some("n1"))).unwrap();
        assert_eq!(keys(Some("n1")).last().unwrap().0, "/pods/default/q\"uote");
        let mut n1 = store.watch_node("/pods/", r0, "n1").unwrap();
        assert_eq!(n1.next().await.unwrap().unwrap().key, "/pods/default/b");
        // A burst on the node past its channel: the watch reads the history from where it was.
        let mut slow = store.watch_node("/pods/", store.revision().unwrap(), "n1").unwrap();
        for i in 0..3 * crate::store::NODE_CAPACITY {
            store.create(&format!("/pods/default/p{i}"), pod("p", Some("n1"))).unwrap();
        }
        for i in 0..3 * crate::store::NODE_CAPACITY {
            assert_eq!(slow.next().await.unwrap().unwrap().key, format!("/pods/default/p{i}"));
        }
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicU32::new(0);
        let fresh = || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            RedbStore::open(&dir.path().join(format!("s{i}.redb")), 64).unwrap()
        };
        crate::store::conformance::run_all(fresh).await;
    }

    /// A burst far past a watcher's place in the broadcast: it catches up from the history,
    /// every event once and in order; only once the history is compacted past where it was
    /// is it cut off.
    #[tokio::test]
    async fn a_slow_watcher_catches_up_from_the_history_until_it_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        let mut w = s.watch("/configmaps/", 0).unwrap();
        for i in 0..300 {
            s.create(&format!("/configmaps/default/c{i}"), serde_json::json!({"metadata": {}})).unwrap();
            if i % 3 == 0 {
                s.create(&format!("/secrets/default/s{i}"), serde_json::json!({"metadata": {}})).unwrap();
            }
        }
        let mut seen = Vec::new();
        while seen.len() < 300 {
            let e = w.next().await.unwrap().unwrap();
            seen.push(e.key);
        }
        let want: Vec<String> = (0..300).map(|i| format!("/configmaps/default/c{i}")).collect();
        assert_eq!(seen, want);
        // Behind again, and the history compacted past it: cut off.
        let mut late = s.watch("", s.revision().unwrap()).unwrap();
        for i in 0..40 {
            s.create(&format!("/configmaps/default/d{i}"), serde_json::json!({"metadata": {}})).unwrap();
        }
        s.compact(s.revision().unwrap()).unwrap();
        assert!(matches!(late.next().await, Some(Err(StoreError::TooSlow(_)))));
    }

    /// A watch from far back reads the history a page at a time: never more than a page of
    /// events decoded and waiting in it, every event handed out once and in order.
    #[tokio::test]
    async fn a_watch_from_far_back_reads_the_history_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        for i in 0..1000 {
            s.create(&format!("/configmaps/default/c{i:04}"), serde_json::json!({"metadata": {}})).unwrap();
            if i % 2 == 0 {
                s.create(&format!("/secrets/default/s{i}"), serde_json::json!({"metadata": {}})).unwrap();
            }
        }
        let mut w = s.watch("/configmaps/", 0).unwrap();
        let waiting = |w: &Watch| match &w.source {
            crate::store::Source::Local { backlog, .. } => backlog.len(),
            _ => panic!("a watch of the embedded store reads it itself"),
        };
        assert_eq!(waiting(&w), crate::store::HISTORY_PAGE);
        for i in 0..1000 {
            assert!(waiting(&w) <= crate::store::HISTORY_PAGE);
            let e = w.next().await.unwrap().unwrap();
            assert_eq!(e.key, format!("/configmaps/default/c{i:04}"));
            assert_eq!(w.revision(), e.revision);
        }
        s.create("/configmaps/default/last", serde_json::json!({"metadata": {}})).unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().key, "/configmaps/default/last");
    }

    /// A large write goes a chunk at a time, each its own batch (others' writes may go
    /// between), each change's result in its place.
    #[test]
    fn a_large_write_goes_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        s.create("/configmaps/d/c7", serde_json::json!({"metadata": {}})).unwrap();
        let before = s.commits.load(Ordering::Relaxed);
        let objects: Vec<(String, Value)> =
            (0..200).map(|i| (format!("/configmaps/d/c{i}"), serde_json::json!({"metadata": {}}))).collect();
        let results = s.create_each(objects);
        assert_eq!(results.len(), 200);
        assert_eq!(s.commits.load(Ordering::Relaxed) - before, 200usize.div_ceil(CHUNK) as u64);
        for (i, r) in results.iter().enumerate() {
            match i {
                7 => assert!(matches!(r, Err(StoreError::AlreadyExists(k)) if k == "/configmaps/d/c7")),
                _ => assert_eq!(r.as_ref().unwrap().key, format!("/configmaps/d/c{i}")),
            }
        }
        assert_eq!(s.revision().unwrap(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_commits_and_watchers_see_revisions_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Arc::new(RedbStore::open(&path, 1024).unwrap());
        let mut w = s.watch("", 0).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            s.create(
                                &format!("/configmaps/default/c{t}-{i}"),
                                serde_json::json!({"metadata": {}}),
                            )
                            .unwrap()
                            .revision
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut acked: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        acked.sort_unstable();
        assert_eq!(acked, (1..=400).collect::<Vec<u64>>());
        let commits = s.commits.load(Ordering::Relaxed);
        assert!(commits < 400, "writers waiting together share a transaction: {commits} commits");
        let mut last = 0;
        for _ in 0..400 {
            let e = w.next().await.unwrap().unwrap();
            assert_eq!(e.revision, last + 1, "in order, none missing");
            last = e.revision;
        }
        // Every acknowledged write is on disk: reopen without a clean shutdown of the writers.
        drop(w);
        drop(s);
        let s = RedbStore::open(&path, 16).unwrap();
        assert_eq!(s.revision().unwrap(), 400);
        assert_eq!(s.list("/configmaps/").unwrap().0.len(), 400);
    }

    /// A change that panics (run on whichever writer leads its batch) fails alone: the
    /// changes beside it commit, and the next writer leads a batch of its own.
    #[test]
    fn a_change_that_panics_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        let ok: Change = Box::new(|_, _| Ok((EventType::Added, serde_json::json!({"metadata": {}}))));
        let boom: Change = Box::new(|_, _| panic!("a change that panics"));
        let results = s.write_all(vec![("/configmaps/d/a".into(), ok), ("/configmaps/d/b".into(), boom)]);
        assert_eq!(results[0].as_ref().unwrap().revision, 1);
        assert!(
            matches!(&results[1], Err(StoreError::Backend(m)) if m.contains("/configmaps/d/b")),
            "{:?}",
            results[1]
        );
        s.create("/configmaps/d/c", serde_json::json!({"metadata": {}})).unwrap();
        assert_eq!(s.revision().unwrap(), 2);
    }

    /// The history's events, written around the object's bytes, read back as serde writes
    /// them; a change reads the current revision without decoding the object.
    #[test]
    fn events_are_written_around_their_objects_bytes() {
        let object = serde_json::json!({"metadata": {"name": "q\"uote", "resourceVersion": "7"}, "data": {"k": "v\n"}});
        let bytes = serde_json::to_vec(&object).unwrap();
        for type_ in [EventType::Added, EventType::Modified, EventType::Deleted] {
            let e =
                Event { revision: 7, type_, key: "/configmaps/d/q\"uote\\".into(), object: object.clone() };
            let written = event_bytes(&e, &bytes);
            assert_eq!(serde_json::from_slice::<Event>(&written).unwrap(), e);
            assert_eq!(written, serde_json::to_vec(&e).unwrap());
        }
        let current = Current { key: "/configmaps/d/q", bytes: &bytes };
        assert_eq!(current.revision().unwrap(), 7);
        assert_eq!(current.stored().unwrap().object, object);
        let corrupt = Current { key: "/configmaps/d/c", bytes: b"{\"metadata\": " };
        assert!(matches!(corrupt.revision(), Err(StoreError::Backend(m)) if m.contains("/configmaps/d/c")));
    }

    #[test]
    fn reopening_keeps_objects_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path, 16).unwrap();
            s.create("/namespaces//a", serde_json::json!({"metadata": {"name": "a"}})).unwrap();
        }
        let s = RedbStore::open(&path, 16).unwrap();
        assert_eq!(s.revision().unwrap(), 1);
        assert!(s.get("/namespaces//a").unwrap().is_some());
    }
}
