//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds the union of the
//! rules of the ClusterRoles its selectors match (Kubernetes' clusterrole-aggregation
//! controller). Any ClusterRole's change requeues every aggregated one, so chains (`view` into
//! `edit` into `admin`) settle.

use super::runtime::{Controller, Next};
use crate::auth::policy::aggregate;
use crate::store::{Event, Store, StoreError};
use tug_api::kinds::rbac::ClusterRole;

pub const PREFIX: &str = "rbac.authorization.k8s.io/clusterroles/";

pub struct Aggregation;

fn all(store: &dyn Store) -> Result<Vec<(String, u64, ClusterRole)>, StoreError> {
    let (items, _) = store.list(PREFIX)?;
    Ok(items
        .into_iter()
        .filter_map(|s| serde_json::from_value(s.object).ok().map(|r| (s.key, s.revision, r)))
        .collect())
}

/// Writes one aggregated role's rules if they differ; whether it wrote.
fn reconcile_one(store: &dyn Store, key: &str) -> Result<bool, StoreError> {
    let roles = all(store)?;
    let Some((_, revision, role)) = roles.iter().find(|(k, _, _)| k == key) else { return Ok(false) };
    let plain: Vec<ClusterRole> = roles.iter().map(|(_, _, r)| r.clone()).collect();
    match aggregate(role, &plain) {
        Some(rules) if rules != role.rules => {
            let Some(cur) = store.get(key)? else { return Ok(false) };
            let mut obj = cur.object;
            obj["rules"] = serde_json::to_value(&rules).unwrap_or_default();
            store.update(key, obj, Some(*revision))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Aggregates every aggregated role until nothing changes (a chain settles in as many passes
/// as it is long).
pub fn aggregate_all(store: &dyn Store) -> Result<(), StoreError> {
    for _ in 0..8 {
        let keys: Vec<String> = all(store)?
            .into_iter()
            .filter(|(_, _, r)| r.aggregation_rule.is_some())
            .map(|(k, _, _)| k)
            .collect();
        let mut changed = false;
        for k in keys {
            match reconcile_one(store, &k) {
                Ok(c) => changed |= c,
                Err(StoreError::Conflict { .. }) => changed = true,
                Err(e) => return Err(e),
            }
        }
        if !changed {
            break;
        }
    }
    Ok(())
}

impl Controller for Aggregation {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn expands_primary(&self) -> bool {
        true
    }

    fn keys_for(&self, store: &dyn Store, _e: &Event) -> Vec<String> {
        all(store)
            .map(|rs| {
                rs.into_iter().filter(|(_, _, r)| r.aggregation_rule.is_some()).map(|(k, _, _)| k).collect()
            })
            .unwrap_or_default()
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        reconcile_one(store, key).map(|_| Next::Done)
    }
}
