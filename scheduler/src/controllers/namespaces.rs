//! Namespaces being deleted: the API marks one `Terminating` (and refuses new objects in it);
//! here everything in it is deleted — owners first, so no controller recreates what was just
//! removed; pods with their grace periods, objects with finalizers once those have run —
//! and the namespace goes when nothing is left.

use super::runtime::{Controller, Next};
use crate::deletion::{self, Outcome, Preconditions, Refused};
use crate::store::{Event, Store, StoreError};
use std::time::Duration;
use tug_api::object::KINDS;

pub const PREFIX: &str = "/namespaces/";

/// The reconciler.
pub struct Namespaces;

impl Controller for Namespaces {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    /// A pod's end may be the last thing a terminating namespace waits for.
    fn secondary(&self) -> Vec<&'static str> {
        vec!["/pods/"]
    }

    fn keys_for(&self, _store: &dyn Store, e: &Event) -> Vec<String> {
        let terminated = matches!(e.type_, crate::store::EventType::Deleted);
        match e.object["metadata"]["namespace"].as_str() {
            Some(ns) if terminated => vec![format!("{PREFIX}{ns}")],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(ns) = store.get(key)? else { return Ok(Next::Done) };
        if !deletion::terminating(&ns.object) {
            return Ok(Next::Done);
        }
        let name = ns.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut left = 0usize;
        // The table lists owned kinds before their owners: reversed, owners go first.
        for k in KINDS.iter().rev().filter(|k| k.namespaced) {
            let (items, _) = store.list(&crate::api::path::prefix(k, Some(&name)))?;
            for item in items {
                match deletion::delete(store, &item.key, None, &Preconditions::default()) {
                    Ok(Outcome::Removed(_)) | Err(Refused::Store(StoreError::NotFound(_))) => {}
                    Ok(Outcome::Marked(_)) => left += 1,
                    Err(Refused::Store(StoreError::Conflict { .. }) | Refused::Precondition(_)) => left += 1,
                    Err(Refused::Store(e)) => return Err(e),
                }
            }
        }
        if left > 0 {
            // Pods' ends bring this back (see `keys_for`); finalizers are looked at again.
            return Ok(Next::After(Duration::from_secs(2)));
        }
        match store.delete(key, Some(ns.revision)) {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(Next::Done),
            // Changed meanwhile: look again.
            Err(StoreError::Conflict { .. }) => Ok(Next::After(Duration::from_millis(50))),
            Err(e) => Err(e),
        }
    }
}
