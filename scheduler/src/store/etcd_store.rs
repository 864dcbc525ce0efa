//! The etcd backend, for several control-plane replicas sharing one replicated etcd.
//!
//! Same semantics as the embedded store: a key's revision is etcd's `mod_revision`, stamped
//! into `metadata.resourceVersion` on every read (as Kubernetes' API server does, so the value
//! stored in etcd carries none); create, update and delete are single transactions comparing
//! `create_revision` / `mod_revision`; a watch maps etcd's PUT and DELETE events onto ADDED,
//! MODIFIED and DELETED. Keys live under a prefix (`/tug/` by default).
//!
//! The client is async and the [`Store`] trait is not: calls run on a small runtime owned by
//! the store, and the caller blocks on the answer (the API server calls the store inside
//! `block_in_place`).

use super::{Event, EventType, Store, StoreError, Stored, Watch, stamp};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde_json::Value;
use std::future::Future;

/// A store in etcd.
pub struct EtcdStore {
    runtime: std::sync::Arc<OwnedRuntime>,
    client: Client,
    prefix: String,
    buffer: usize,
    /// With a fence, every write's transaction also compares the fence key's revision.
    fence: Option<super::Fence>,
}

/// The store's runtime, shared by its fenced handles; shut down in the background when the
/// last goes.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside async code: let it wind down in
        // the background instead.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// How long one etcd request may take before the store counts as unavailable.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An etcd client error: not reaching etcd (transport, I/O, gRPC Unavailable, a deadline)
/// is `Unavailable`, which the API answers with 503 and Retry-After; anything else is a
/// backend error.
fn etcd(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let unreachable = match &e {
        E::TransportError(_) | E::IoError(_) => true,
        // gRPC's codes Cancelled (1), Unknown (2), DeadlineExceeded (4), Unavailable (14): the
        // client crate does not re-export tonic's enum, and the numbers are gRPC's own.
        E::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 14),
        _ => false,
    };
    if unreachable { StoreError::Unavailable(format!("etcd: {e}")) } else { backend(e) }
}

/// Keys asked for per range request.
const PAGE: i64 = 500;

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn irev(r: u64) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// Connects to the endpoints (`http://127.0.0.1:2379,...`); keys go under `prefix`.
    pub fn connect(endpoints: &[String], prefix: &str, buffer: usize) -> Result<EtcdStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tug-etcd")
            .enable_all()
            .build()
            .map_err(backend)?;
        let eps = endpoints.to_vec();
        let client = on(&runtime, async move {
            let options =
                etcd_client::ConnectOptions::new().with_connect_timeout(std::time::Duration::from_secs(5));
            let mut c = Client::connect(eps, Some(options)).await?;
            c.status().await?;
            Ok::<_, etcd_client::Error>(c)
        })
        .map_err(|e| StoreError::Backend(format!("etcd at {}: {e}", endpoints.join(","))))?;
        Ok(EtcdStore {
            runtime: std::sync::Arc::new(OwnedRuntime(Some(runtime))),
            client,
            prefix: prefix.to_string(),
            buffer: buffer.max(16),
            fence: None,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Set in `connect`, taken only in `drop`.
        self.runtime.0.as_ref().unwrap_or_else(|| unreachable!("the etcd runtime is gone"))
    }

    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        on(self.rt(), f)
    }

    /// One etcd request, bounded by [`CALL_TIMEOUT`], its error classified by [`etcd`].
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match self.run(async move { tokio::time::timeout(CALL_TIMEOUT, f).await }) {
            Ok(r) => r.map_err(etcd),
            Err(_) => {
                Err(StoreError::Unavailable(format!("etcd did not answer in {} s", CALL_TIMEOUT.as_secs())))
            }
        }
    }

    /// The objects under `prefix` (after the key `after`, without it) in key order, read
    /// [`PAGE`] keys per request — one answer for a whole collection would pass gRPC's 4 MiB
    /// message limit at a few thousand pods — every page at the first one's revision, so
    /// together they are one consistent read. `each` returns false to stop. Returns that
    /// revision.
    fn pages(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<u64, StoreError> {
        let end = prefix_end(&self.full(prefix));
        let mut start: Vec<u8> = match after {
            Some(a) => [self.full(a).into_bytes(), vec![0]].concat(),
            None => self.full(prefix).into_bytes(),
        };
        let mut at = 0i64;
        loop {
            let mut client = self.client.clone();
            let opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE).with_revision(at);
            let from = start.clone();
            let resp = self.call(async move { client.get(from, Some(opts)).await })?;
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                if !each(self.decode(kv)?) {
                    return Ok(rev(at));
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => start = [last.key().to_vec(), vec![0]].concat(),
                _ => return Ok(rev(at)),
            }
        }
    }

    fn decode(&self, kv: &etcd_client::KeyValue) -> Result<Stored, StoreError> {
        let key = kv.key_str().map_err(backend)?.strip_prefix(&self.prefix).unwrap_or_default().to_string();
        let mut object: Value = serde_json::from_slice(kv.value())
            .map_err(|e| StoreError::Backend(format!("{key}: corrupt object: {e}")))?;
        let revision = rev(kv.mod_revision());
        stamp(&mut object, revision);
        Ok(Stored { key, revision, object })
    }

    /// A conditional write: `cmp` (and the fence, when this handle has one) must hold, then
    /// `op` runs; otherwise the key is read to say why (missing or modified), and a fence
    /// that moved is [`StoreError::Fenced`].
    fn txn(
        &self,
        key: &str,
        cmp: Compare,
        op: TxnOp,
    ) -> Result<(bool, etcd_client::TxnResponse), StoreError> {
        let mut client = self.client.clone();
        let full = self.full(key);
        let mut when = vec![cmp];
        let mut otherwise = vec![TxnOp::get(full.clone(), None)];
        if let Some(f) = &self.fence {
            when.push(Compare::mod_revision(self.full(&f.key), CompareOp::Equal, irev(f.revision)));
            otherwise.push(TxnOp::get(self.full(&f.key), None));
        }
        let txn = Txn::new().when(when).and_then([op]).or_else(otherwise);
        let resp = self.call(async move { client.txn(txn).await })?;
        if !resp.succeeded() {
            if let Some(f) = &self.fence {
                let now = self.current_of(&resp, &f.key).map_or(0, |kv| rev(kv.mod_revision()));
                if now != f.revision {
                    return Err(StoreError::Fenced(key.to_string()));
                }
            }
        }
        Ok((resp.succeeded(), resp))
    }

    /// The key's value as a failed transaction read it.
    fn current_of(&self, resp: &etcd_client::TxnResponse, key: &str) -> Option<etcd_client::KeyValue> {
        let full = self.full(key);
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().filter(|kv| kv.key() == full.as_bytes()).cloned(),
            _ => None,
        })
    }

    fn header_revision(resp: &etcd_client::TxnResponse) -> u64 {
        resp.header().map_or(0, |h| rev(h.revision()))
    }

    fn put(
        &self,
        key: &str,
        object: &Value,
        cmp: Compare,
        expected: Option<u64>,
        creating: bool,
    ) -> Result<Stored, StoreError> {
        let mut clean = object.clone();
        if let Some(m) = clean.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&clean).map_err(backend)?;
        let (ok, resp) = self.txn(key, cmp, TxnOp::put(self.full(key), bytes, None))?;
        if ok {
            let revision = Self::header_revision(&resp);
            stamp(&mut clean, revision);
            return Ok(Stored { key: key.to_string(), revision, object: clean });
        }
        match (self.current_of(&resp, key), creating) {
            (Some(_), true) => Err(StoreError::AlreadyExists(key.to_string())),
            (None, _) => Err(StoreError::NotFound(key.to_string())),
            (Some(kv), false) => Err(StoreError::Conflict {
                key: key.into(),
                expected: expected.unwrap_or(0),
                current: rev(kv.mod_revision()),
            }),
        }
    }
}

/// Runs a future on the store's runtime and waits for it from any thread.
fn on<T: Send + 'static>(rt: &tokio::runtime::Runtime, f: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    // The spawned task always sends unless the runtime shuts down, which only happens when
    // the store is dropped (and then nobody waits here).
    rx.recv().unwrap_or_else(|_| panic!("the etcd runtime stopped"))
}

impl Store for EtcdStore {
    fn fenced(&self, fence: &super::Fence) -> Option<std::sync::Arc<dyn Store>> {
        Some(std::sync::Arc::new(EtcdStore {
            runtime: self.runtime.clone(),
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            buffer: self.buffer,
            fence: Some(fence.clone()),
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let mut client = self.client.clone();
        let full = self.full(key);
        let resp = self.call(async move { client.get(full, None).await })?;
        resp.kvs().first().map(|kv| self.decode(kv)).transpose()
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64), StoreError> {
        let mut items = Vec::new();
        let revision = self.pages(prefix, None, &mut |s| {
            items.push(s);
            true
        })?;
        Ok((items, revision))
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let mut failed = None;
        let revision = self.pages(prefix, after, &mut |s| match serde_json::to_vec(&s.object) {
            Ok(bytes) => each(&s.key, &bytes),
            Err(e) => {
                failed = Some(StoreError::Backend(e.to_string()));
                false
            }
        })?;
        failed.map_or(Ok(revision), Err)
    }

    fn create(&self, key: &str, object: Value) -> Result<Stored, StoreError> {
        self.put(key, &object, Compare::create_revision(self.full(key), CompareOp::Equal, 0), None, true)
    }

    fn update(&self, key: &str, object: Value, expected: Option<u64>) -> Result<Stored, StoreError> {
        let cmp = match expected {
            Some(e) => Compare::mod_revision(self.full(key), CompareOp::Equal, irev(e)),
            None => Compare::create_revision(self.full(key), CompareOp::Greater, 0),
        };
        self.put(key, &object, cmp, expected, false)
    }

    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Stored, StoreError> {
        let cmp = match expected {
            Some(e) => Compare::mod_revision(self.full(key), CompareOp::Equal, irev(e)),
            None => Compare::create_revision(self.full(key), CompareOp::Greater, 0),
        };
        let (ok, resp) =
            self.txn(key, cmp, TxnOp::delete(self.full(key), Some(DeleteOptions::new().with_prev_key())))?;
        if !ok {
            return match self.current_of(&resp, key) {
                None => Err(StoreError::NotFound(key.to_string())),
                Some(kv) => Err(StoreError::Conflict {
                    key: key.into(),
                    expected: expected.unwrap_or(0),
                    current: rev(kv.mod_revision()),
                }),
            };
        }
        let revision = Self::header_revision(&resp);
        let prev = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
            _ => None,
        });
        let mut object = match prev {
            Some(kv) => self.decode(&kv)?.object,
            None => Value::Null,
        };
        stamp(&mut object, revision);
        Ok(Stored { key: key.to_string(), revision, object })
    }

    /// etcd's watch is of a key range: a node's watch is the plain one, filtered by the caller
    /// (the API serves watches on etcd from the copy, which fans out by node).
    fn watch_node(&self, prefix: &str, after: u64, _node: &str) -> Result<Watch, StoreError> {
        self.watch(prefix, after)
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let mut client = self.client.clone();
        let full = self.full(prefix);
        let strip = self.prefix.clone();
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(irev(after + 1));
        let mut stream = self.call(async move { client.watch(full, Some(options)).await })?;
        let (tx, rx) = tokio::sync::mpsc::channel(self.buffer);
        self.rt().spawn(async move {
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(backend(e))).await;
                        return;
                    }
                };
                if msg.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: after,
                            oldest: rev(msg.compact_revision()),
                        }))
                        .await;
                    return;
                }
                if msg.canceled() {
                    let _ = tx.send(Err(backend(format!("watch canceled: {}", msg.cancel_reason())))).await;
                    return;
                }
                for e in msg.events() {
                    let Some(event) = convert(e, &strip) else { continue };
                    match tx.try_send(Ok(event)) {
                        Ok(()) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            let _ = tx.send(Err(StoreError::TooSlow(1))).await;
                            return;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(Watch::from_channel(rx))
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let r = irev(revision);
        match self.run(async move { client.compact(r, None).await }) {
            Ok(_) => Ok(()),
            // Compacting to a revision already compacted is not an error for us.
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let mut client = self.client.clone();
        let key = self.prefix.clone();
        let resp =
            self.call(async move { client.get(key, Some(GetOptions::new().with_count_only())).await })?;
        Ok(resp.header().map_or(0, |h| rev(h.revision())))
    }
}

fn convert(e: &etcd_client::Event, strip: &str) -> Option<Event> {
    let kv = e.kv()?;
    let key = kv.key_str().ok()?.strip_prefix(strip)?.to_string();
    let revision = rev(kv.mod_revision());
    let (type_, source) = match e.event_type() {
        etcd_client::EventType::Put if kv.create_revision() == kv.mod_revision() => {
            (EventType::Added, kv.value())
        }
        etcd_client::EventType::Put => (EventType::Modified, kv.value()),
        etcd_client::EventType::Delete => {
            (EventType::Deleted, e.prev_kv().map(|p| p.value()).unwrap_or_default())
        }
    };
    let mut object: Value = serde_json::from_slice(source).unwrap_or(Value::Null);
    stamp(&mut object, revision);
    Some(Event { revision, type_, key, object })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tug_integration::etcd::{EtcdProcess, free_port};

    #[test]
    fn conformance() {
        let etcd = EtcdProcess::start();
        let n = std::sync::atomic::AtomicU32::new(0);
        let fresh = || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), &format!("/tug-test-{i}/"), 64).unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(crate::store::conformance::run_all(fresh));
    }

    /// A fenced handle writes while its fence key stands; once another leader rewrites the
    /// key, every kind of write through it is refused and nothing is applied.
    #[test]
    fn writes_under_a_moved_fence_are_refused_and_not_applied() {
        use crate::store::{Fence, Store};
        let etcd = EtcdProcess::start();
        let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/tug-fence/", 64).unwrap();
        let cm = |v: &str| json_cm(v);
        let epoch = store.create("coordination.k8s.io/leases/tug-system/epoch", cm("1")).unwrap();
        let fence =
            Fence { key: "coordination.k8s.io/leases/tug-system/epoch".into(), revision: epoch.revision };
        let mine = store.fenced(&fence).expect("etcd fences");
        let a = mine.create("/configmaps/default/a", cm("a")).unwrap();
        let a = mine.update("/configmaps/default/a", cm("a2"), Some(a.revision)).unwrap();
        // Ordinary refusals still read as before under a standing fence.
        assert!(matches!(mine.create("/configmaps/default/a", cm("x")), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(
            mine.update("/configmaps/default/a", cm("x"), Some(1)),
            Err(StoreError::Conflict { .. })
        ));
        // Another replica takes over: it rewrites the fence key.
        store.update("coordination.k8s.io/leases/tug-system/epoch", cm("2"), None).unwrap();
        let fenced = |r: Result<Stored, StoreError>| matches!(r, Err(StoreError::Fenced(_)));
        assert!(fenced(mine.create("/configmaps/default/b", cm("b"))));
        assert!(fenced(mine.update("/configmaps/default/a", cm("late"), Some(a.revision))));
        assert!(fenced(mine.update("/configmaps/default/a", cm("late"), None)));
        assert!(fenced(mine.delete("/configmaps/default/a", None)));
        let results = mine.update_each(vec![("/configmaps/default/a".into(), cm("late"), None)]);
        assert!(fenced(results.into_iter().next().unwrap()));
        assert!(store.get("/configmaps/default/b").unwrap().is_none(), "nothing applied");
        assert_eq!(store.get("/configmaps/default/a").unwrap().unwrap().object["data"]["v"], "a2");
        assert!(mine.get("/configmaps/default/a").unwrap().is_some(), "reads are not fenced");
        // The unfenced store (the API's) writes on.
        store.delete("/configmaps/default/a", None).unwrap();
        let msg = mine.create("/configmaps/default/c", cm("c")).unwrap_err().to_string();
        assert!(msg.contains("fenced off (another replica leads now)"), "{msg}");
    }

    fn json_cm(v: &str) -> Value {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}, "data": {"v": v}})
    }

    #[test]
    fn an_unreachable_etcd_is_a_clear_error() {
        let port = free_port();
        let err = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], "/tug/", 16).err().unwrap();
        assert!(err.to_string().starts_with(&format!("store: etcd at http://127.0.0.1:{port}:")), "{err}");
    }
}
