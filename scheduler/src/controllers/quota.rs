//! The ResourceQuota controller: each quota's `status.used` recounted from what its
//! namespace holds ([`crate::quota::recount`]), and `status.hard` copied from its spec. A
//! change to pods, Services, ConfigMaps, Secrets, claims or quotas in a namespace recounts
//! its quotas at once; other `count/…` kinds are recounted at each resync.

use super::runtime::{Controller, Next};
use crate::store::{Event, Store, StoreError};
use tug_api::kinds::quota::ResourceQuota;

const PREFIX: &str = crate::quota::QUOTAS;

pub struct Quotas;

impl Controller for Quotas {
    fn name(&self) -> &'static str {
        "resourcequota"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec!["/pods/", "/services/", "/configmaps/", "/secrets/", "/persistentvolumeclaims/"]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        let Some(ns) = e.object["metadata"]["namespace"].as_str() else { return Vec::new() };
        store
            .list(&format!("{PREFIX}{ns}/"))
            .map(|(items, _)| items.into_iter().map(|s| s.key).collect())
            .unwrap_or_default()
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let q: ResourceQuota = super::decode(&stored)?;
        let ns = q.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let used = crate::quota::recount(store, &ns, &q)?;
        let status = crate::quota::status_json(&stored.object["spec"]["hard"], &used);
        if stored.object["status"] != status {
            let mut obj = stored.object.clone();
            obj["status"] = status;
            store.update(key, obj, Some(stored.revision))?;
        }
        Ok(Next::Done)
    }
}
