//! Field managers (`metadata.managedFields`) and server-side apply, as Kubernetes keeps them:
//! every write through the API records which fields its manager (`fieldManager`, else the
//! client's User-Agent) set; an apply (`application/apply-patch+yaml`) owns exactly the fields
//! of its configuration, is refused with a 409 naming the other managers when it would change a
//! value they own (unless `force=true`, which takes the fields over), and removes the fields it
//! owned before, no longer applies, and nobody else owns. Pure over JSON values.

use serde_json::{Value, json};
use tug_api::fieldset::{self, FieldSet, SELF};
use tug_api::status::{Status, StatusCause, StatusDetails};

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub set: FieldSet,
    /// The subresource written through (`scale`), or empty.
    pub subresource: String,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
            "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": self.set.to_json()});
        if !self.subresource.is_empty() {
            v["subresource"] = self.subresource.clone().into();
        }
        v
    }

    /// Whether this is `manager`'s entry for this kind of write.
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// How a conflict names it: `"kubectl"`, `"kubectl" with subresource "scale"`.
    fn describe(&self) -> String {
        if self.subresource.is_empty() {
            format!("{:?}", self.manager)
        } else {
            format!("{:?} with subresource {:?}", self.manager, self.subresource)
        }
    }
}

/// The entries an object carries.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            set: FieldSet::from_json(&e["fieldsV1"]),
        })
        .collect()
}

fn store(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries.iter().filter(|e| !e.set.is_empty()).map(Entry::to_json).collect();
    if list.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(list);
    }
}

/// What field ownership looks at: the object without the annotations the controllers keep
/// (they write the store directly and are nobody's fields here).
fn tracked(kind: &str, obj: &Value) -> FieldSet {
    let mut v = obj.clone();
    if let Some(a) = v["metadata"]["annotations"].as_object_mut() {
        a.retain(|k, _| !super::objects::controller_owned(k));
    }
    FieldSet::of(kind, &v)
}

/// The manager of a write: `fieldManager`, else the client program's name from its
/// User-Agent (`kubectl/v1.32.4 …` → `kubectl`).
pub fn manager(q: &std::collections::HashMap<String, String>, user_agent: Option<&str>) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    user_agent
        .and_then(|ua| ua.split(['/', ' ']).next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// A create or an update by `manager` (`old` is `None` for a create): the fields it set or
/// changed become its own and leave their other owners; fields no longer in the object leave
/// every owner. `new`'s managedFields are rewritten from `old`'s (what a client sent is not
/// taken: the server keeps the record).
pub fn track_update(
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    (manager, subresource): (&str, &str),
    api_version: &str,
    now: &str,
) {
    let mut es = old.map(entries).unwrap_or_default();
    let now_set = tracked(kind, new);
    let mut changed = Vec::new();
    for leaf in now_set.leaves() {
        let differs = match old {
            None => true,
            Some(o) if leaf.last().map(String::as_str) == Some(SELF) => {
                fieldset::value_at(o, &leaf[..leaf.len() - 1]).is_none()
            }
            Some(o) => fieldset::value_at(o, &leaf) != fieldset::value_at(new, &leaf),
        };
        if differs {
            changed.push(leaf);
        }
    }
    for e in &mut es {
        for leaf in e.set.leaves() {
            if !now_set.contains(&leaf) {
                e.set.remove(&leaf);
            }
        }
        if !e.is(manager, "Update", subresource) {
            for leaf in &changed {
                e.set.remove(leaf);
            }
        }
    }
    if !changed.is_empty() {
        let at = match es.iter().position(|e| e.is(manager, "Update", subresource)) {
            Some(i) => i,
            None => {
                es.push(Entry {
                    manager: manager.into(),
                    operation: "Update".into(),
                    api_version: api_version.into(),
                    time: String::new(),
                    set: FieldSet::default(),
                    subresource: subresource.into(),
                });
                es.len() - 1
            }
        };
        for leaf in &changed {
            es[at].set.insert(leaf);
        }
        es[at].time = now.into();
        es[at].api_version = api_version.into();
    }
    store(new, &es);
}

/// A conflict: the other manager (as a conflict names it), its API version, and the field.
pub type Conflict = (String, String, Vec<String>);

/// Server-side apply of `config` (the request's object as sent, before defaults) over `live`
/// by `manager`: the merged object (to be defaulted, validated and written) with its
/// managedFields, or the conflicts.
pub fn apply(
    kind: &str,
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let mut es = entries(live);
    let mine = tracked(kind, config);
    let mut conflicts: Vec<Conflict> = Vec::new();
    // Every other entry may conflict, the same manager's updates included (Kubernetes keys
    // managers by name, operation and subresource).
    for e in es.iter().filter(|e| !e.is(manager, "Apply", "")) {
        for leaf in mine.leaves() {
            let last = leaf.last().map(String::as_str).unwrap_or("");
            if last == SELF || last.starts_with("v:") || !e.set.owns(&leaf) {
                continue;
            }
            if fieldset::value_at(config, &leaf) != fieldset::value_at(live, &leaf) {
                conflicts.push((e.describe(), e.api_version.clone(), leaf));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for (m, _, leaf) in &conflicts {
            for e in es.iter_mut().filter(|e| &e.describe() == m) {
                e.set.remove(leaf);
            }
        }
    }
    let mut merged = live.clone();
    let before = es.iter().position(|e| e.is(manager, "Apply", ""));
    if let Some(i) = before {
        let others: Vec<&FieldSet> =
            es.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, e)| &e.set).collect();
        for leaf in es[i].set.leaves() {
            if mine.contains(&leaf) {
                continue;
            }
            let owner_path: &[String] =
                if leaf.last().map(String::as_str) == Some(SELF) { &leaf[..leaf.len() - 1] } else { &leaf };
            let kept = others.iter().any(|s| {
                if owner_path.len() < leaf.len() { s.touches(owner_path) } else { s.contains(&leaf) }
            });
            if !kept {
                fieldset::remove_at(&mut merged, &leaf);
            }
        }
    }
    let mut patch = config.clone();
    if let Some(m) = patch["metadata"].as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    if let Err(e) = tug_api::patch::strategic(kind, &mut merged, &patch) {
        return Err(vec![(String::new(), e, vec![])]);
    }
    let entry = Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        set: mine,
        subresource: String::new(),
    };
    match before {
        Some(i) => es[i] = entry,
        None => es.push(entry),
    }
    store(&mut merged, &es);
    Ok(merged)
}

/// Kubernetes' 409 for an apply's conflicts.
pub fn conflict_status(kind_qualified: &str, name: &str, conflicts: &[Conflict]) -> Status {
    if let [(m, e, p)] = conflicts
        && m.is_empty()
        && p.is_empty()
    {
        return Status::bad_request(format!("the apply configuration could not be merged: {e}"));
    }
    let n = conflicts.len();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, v, p)| format!("conflict with {m} using {v}: {}", fieldset::display(p)))
        .collect();
    let message = if n == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let mut s = Status::new(409, "Conflict", message);
    s.details = Some(StatusDetails {
        name: Some(name.into()),
        kind: Some(kind_qualified.into()),
        causes: conflicts
            .iter()
            .map(|(m, v, p)| StatusCause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with {m} using {v}"),
                field: fieldset::display(p),
            })
            .collect(),
        ..Default::default()
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    #[test]
    fn updates_record_their_manager_and_take_over_changed_fields() {
        let mut obj = json!({"metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1"}});
        track_update("ConfigMap", None, &mut obj, ("creator", ""), "v1", NOW);
        let es = entries(&obj);
        assert_eq!(es.len(), 1);
        assert!(es[0].set.contains(&["f:data".into(), "f:x".into()]));
        let old = obj.clone();
        obj["data"]["x"] = "2".into();
        obj["data"]["y"] = "3".into();
        track_update("ConfigMap", Some(&old), &mut obj, ("editor", ""), "v1", NOW);
        let es = entries(&obj);
        let creator = es.iter().find(|e| e.manager == "creator").unwrap();
        let editor = es.iter().find(|e| e.manager == "editor").unwrap();
        assert!(!creator.set.contains(&["f:data".into(), "f:x".into()]));
        assert!(creator.set.contains(&["f:metadata".into(), "f:labels".into(), "f:a".into()]));
        assert!(editor.set.contains(&["f:data".into(), "f:x".into()]));
        assert!(editor.set.contains(&["f:data".into(), "f:y".into()]));
    }

    #[test]
    fn apply_conflicts_forces_and_removes_what_it_no_longer_applies() {
        let cfg1 = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 2, "paused": false}});
        let live =
            apply("Deployment", &json!({"metadata": {"name": "d"}}), &cfg1, "alice", false, "apps/v1", NOW)
                .unwrap();
        assert_eq!(live["spec"]["replicas"], 2);
        // Someone else scales it.
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = 5.into();
        track_update("Deployment", Some(&live), &mut scaled, ("kubectl", "scale"), "apps/v1", NOW);
        // alice applies her 2 again: a conflict naming the other manager.
        let err = apply("Deployment", &scaled, &cfg1, "alice", false, "apps/v1", NOW).unwrap_err();
        assert_eq!(err[0].0, r#""kubectl" with subresource "scale""#);
        let s = conflict_status("Deployment.apps", "d", &err);
        assert_eq!(s.code, 409);
        assert!(
            s.message.contains(
                r#"conflict with "kubectl" with subresource "scale" using apps/v1: .spec.replicas"#
            ),
            "{}",
            s.message
        );
        // Without replicas in her configuration she does not conflict, and no longer owns it;
        // `paused`, hers alone and left out, goes.
        let cfg2 =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
        let after = apply("Deployment", &scaled, &cfg2, "alice", false, "apps/v1", NOW).unwrap();
        assert_eq!(after["spec"]["replicas"], 5, "the scaler's field stays");
        assert!(after["spec"].get("paused").is_none(), "{after:#}");
        // Forced, she takes replicas back.
        let forced = apply("Deployment", &scaled, &cfg1, "alice", true, "apps/v1", NOW).unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let es = entries(&forced);
        assert!(
            !es.iter()
                .any(|e| e.subresource == "scale" && e.set.contains(&["f:spec".into(), "f:replicas".into()]))
        );
    }
}
