//! The addresses of the Ingresses Tug's own controller serves: every node serves them on
//! its ports 80 and 443, so `status.loadBalancer.ingress` is the Ready nodes' addresses
//! (what `kubectl get ingress` shows as ADDRESS). Other controllers' Ingresses are left
//! alone.

use super::loadbalancer::{NODES, node_addresses};
use super::runtime::{Controller, Next};
use crate::store::{Event, Store, StoreError};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use tug_api::kinds::networking::served_by_tug;

const PREFIX: &str = "networking.k8s.io/ingresses/";
const CLASSES: &str = "networking.k8s.io/ingressclasses/";

pub struct IngressStatus;

/// The status addresses for `want` (sorted).
pub fn status_ingress(want: &[Ipv4Addr]) -> Value {
    Value::Array(want.iter().map(|ip| json!({"ip": ip.to_string()})).collect())
}

impl Controller for IngressStatus {
    fn name(&self) -> &'static str {
        "ingress"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![NODES, CLASSES]
    }

    fn keys_for(&self, store: &dyn Store, _e: &Event) -> Vec<String> {
        store.list(PREFIX).map(|(items, _)| items.into_iter().map(|i| i.key).collect()).unwrap_or_default()
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let (classes, _) = store.list(CLASSES)?;
        if !served_by_tug(&stored.object, classes.iter().map(|c| &c.object)) {
            return Ok(Next::Done);
        }
        let mut want = node_addresses(store)?;
        want.sort_unstable();
        let want = status_ingress(&want);
        let had = &stored.object["status"]["loadBalancer"]["ingress"];
        if *had == want || (had.is_null() && want.as_array().is_some_and(Vec::is_empty)) {
            return Ok(Next::Done);
        }
        let mut v = stored.object.clone();
        v["status"]["loadBalancer"] = json!({"ingress": want});
        store.update(key, v, Some(stored.revision))?;
        Ok(Next::Done)
    }
}
