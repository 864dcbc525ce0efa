//! Every active namespace has its `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap (Kubernetes' service account and root CA publisher controllers): made with the
//! namespace, and made again when deleted.

use super::runtime::{Controller, Next};
use crate::store::{Event, EventType, Store, StoreError};

pub struct Defaults;

impl Controller for Defaults {
    fn name(&self) -> &'static str {
        "serviceaccount-defaults"
    }

    fn primary(&self) -> &'static str {
        "/namespaces/"
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec!["/serviceaccounts/", "/configmaps/"]
    }

    fn keys_for(&self, _store: &dyn Store, e: &Event) -> Vec<String> {
        let name = e.object["metadata"]["name"].as_str().unwrap_or_default();
        let ours = (e.key.starts_with("/serviceaccounts/") && name == "default")
            || (e.key.starts_with("/configmaps/") && name == crate::auth::serviceaccounts::ROOT_CA);
        match e.object["metadata"]["namespace"].as_str() {
            Some(ns) if ours && e.type_ == EventType::Deleted => vec![format!("/namespaces//{ns}")],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(ns) = store.get(key)? else { return Ok(Next::Done) };
        if crate::deletion::terminating(&ns.object) {
            return Ok(Next::Done);
        }
        let name = ns.object["metadata"]["name"].as_str().unwrap_or_default();
        crate::auth::serviceaccounts::ensure_defaults(store, name)?;
        Ok(Next::Done)
    }
}
