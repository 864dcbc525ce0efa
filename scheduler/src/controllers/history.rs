//! ControllerRevisions: the template history of DaemonSets and StatefulSets, what
//! `rollout history` lists and `rollout undo` goes back to.
//!
//! Each revision is named `<owner>-<hash>`, holds `{"spec": {"template": …}}`, and carries
//! the label its pods carry for it (`controller-revision-hash`: the hash for a DaemonSet's,
//! the revision's name for a StatefulSet's), so history is trimmed only of revisions no pod
//! runs.

use super::{controller_of, controller_ref, decode};
use crate::store::{Store, StoreError, Stored};
use serde_json::json;
use tug_api::kinds::apps::ControllerRevision;
use tug_api::kinds::pod::{Pod, PodTemplateSpec};
use tug_api::meta::ObjectMeta;

pub const REVISIONS: &str = "apps/controllerrevisions/";
/// The pod label naming its template's revision.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The workload whose history is kept.
pub struct Owner<'a> {
    pub kind: &'static str,
    pub meta: &'a ObjectMeta,
    pub template: &'a PodTemplateSpec,
    pub history_limit: Option<i32>,
}

/// The owner's revisions, oldest first.
pub fn revisions(
    store: &dyn Store,
    meta: &ObjectMeta,
) -> Result<Vec<(Stored, ControllerRevision)>, StoreError> {
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let uid = meta.uid.as_deref().unwrap_or_default();
    let (items, _) = store.list(&format!("{REVISIONS}{ns}/"))?;
    let mut out: Vec<_> = items
        .into_iter()
        .filter_map(|s| decode::<ControllerRevision>(&s).ok().map(|r| (s, r)))
        .filter(|(_, r)| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    out.sort_by_key(|(_, r)| r.revision);
    Ok(out)
}

/// The template a revision holds.
pub fn template_of(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    tug_api::from_value_ref(&r.data["spec"]["template"]).ok()
}

/// Makes sure the current template (`hash`) has the newest revision (a ControllerRevision
/// made, or an old one renumbered when the template goes back to it) and trims history to
/// the owner's limit among revisions no pod runs (`pod_label`: what this revision's pods
/// carry as [`HASH_LABEL`]). Returns the revisions there were before, less those trimmed
/// (what a caller needs of older revisions, without listing them again).
pub fn sync<P: std::borrow::Borrow<Pod>>(
    store: &dyn Store,
    owner: &Owner,
    hash: &str,
    pod_label: &str,
    pods: &[P],
) -> Result<Vec<ControllerRevision>, StoreError> {
    let meta = owner.meta;
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let revs = revisions(store, meta)?;
    let max = revs.iter().map(|(_, r)| r.revision).max().unwrap_or(0);
    let name = format!("{}-{hash}", meta.name);
    match revs.iter().find(|(_, r)| r.metadata.name == name) {
        Some((s, r)) if r.revision < max => {
            let mut obj = s.object.clone();
            obj["revision"] = json!(max + 1);
            store.update(&s.key, obj, Some(s.revision))?;
        }
        Some(_) => {}
        None => {
            let mut annotations = serde_json::Map::new();
            if let Some(c) = meta.annotations.get("kubernetes.io/change-cause") {
                annotations.insert("kubernetes.io/change-cause".into(), c.clone().into());
            }
            let mut labels = owner.template.metadata.labels.clone();
            labels.insert(HASH_LABEL.into(), pod_label.into());
            let mut obj = json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations,
                    "ownerReferences": [controller_ref("apps/v1", owner.kind, meta)]},
                "data": {"spec": {"template": owner.template}},
                "revision": max + 1,
            });
            crate::api::objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
            match store.create(&format!("{REVISIONS}{ns}/{name}"), obj) {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let limit = usize::try_from(owner.history_limit.unwrap_or(10).max(0)).unwrap_or(10);
    let running: std::collections::BTreeSet<&str> =
        pods.iter().filter_map(|p| p.borrow().metadata.labels.get(HASH_LABEL).map(String::as_str)).collect();
    let old: Vec<_> = revs
        .iter()
        .filter(|(_, r)| r.metadata.name != name)
        .filter(|(_, r)| !r.metadata.labels.get(HASH_LABEL).is_some_and(|h| running.contains(h.as_str())))
        .collect();
    let trimmed: Vec<String> =
        old.iter().take(old.len().saturating_sub(limit)).map(|(s, _)| s.key.clone()).collect();
    for key in &trimmed {
        crate::deletion::delete_quietly(store, key)?;
    }
    Ok(revs.into_iter().filter(|(s, _)| !trimmed.contains(&s.key)).map(|(_, r)| r).collect())
}
