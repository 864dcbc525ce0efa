//! Field sets for server-side apply: which fields of an object a manager owns, in Kubernetes'
//! `FieldsV1` form (`{"f:spec":{"f:replicas":{}}}`; list elements by merge key,
//! `"k:{\"name\":\"web\"}"`, with `"."` for the element itself; set items `"v:\"a\""`; an
//! atomic list is one field). Lists are keyed as [`crate::patch::list_strategy`] says, the same
//! table strategic merge patch and the OpenAPI documents use. Pure.

use crate::patch::{ListStrategy, list_strategy};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A tree of owned fields; a node without children is an owned leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeMap<String, FieldSet>);

/// The element itself (of a keyed list), as Kubernetes marks it.
pub const SELF: &str = ".";

/// Metadata the server sets or that names the object: never owned.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields an object (or an apply configuration) sets. `status` is left out: it is
    /// the status subresource's.
    pub fn of(kind: &str, obj: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        let Some(m) = obj.as_object() else { return set };
        for (k, v) in m {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    let mut meta = FieldSet::default();
                    for (mk, mv) in v.as_object().into_iter().flatten() {
                        if SERVER_METADATA.contains(&mk.as_str()) {
                            continue;
                        }
                        let sub = walk(kind, &format!("metadata.{mk}"), mv);
                        meta.0.insert(format!("f:{mk}"), sub);
                    }
                    if !meta.is_empty() {
                        set.0.insert("f:metadata".into(), meta);
                    }
                }
                _ => {
                    set.0.insert(format!("f:{k}"), walk(kind, k, v));
                }
            }
        }
        set
    }

    /// Kubernetes' `fieldsV1` JSON.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
    }

    pub fn from_json(v: &Value) -> FieldSet {
        FieldSet(
            v.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), FieldSet::from_json(v))).collect(),
        )
    }

    /// Every owned leaf, as its path of keys.
    pub fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (k, v) in &self.0 {
            prefix.push(k.clone());
            if v.is_empty() {
                out.push(prefix.clone());
            } else {
                v.collect(prefix, out);
            }
            prefix.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => true,
            Some((k, rest)) => self.0.get(k).is_some_and(|s| s.contains(rest)),
        }
    }

    /// Whether `path` is an owned leaf (not only a branch others' fields hang from).
    pub fn owns(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.is_empty(),
            Some((k, rest)) => self.0.get(k).is_some_and(|s| s.owns(rest)),
        }
    }

    /// Whether anything at or under `path` is owned.
    pub fn touches(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => true,
            Some((k, rest)) => self.0.get(k).is_some_and(|s| s.touches(rest)),
        }
    }

    pub fn insert(&mut self, path: &[String]) {
        if let Some((k, rest)) = path.split_first() {
            self.0.entry(k.clone()).or_default().insert(rest);
        }
    }

    /// Takes a leaf out, and the branches it leaves empty.
    pub fn remove(&mut self, path: &[String]) {
        let Some((k, rest)) = path.split_first() else { return };
        if rest.is_empty() {
            self.0.remove(k);
            return;
        }
        if let Some(sub) = self.0.get_mut(k) {
            sub.remove(rest);
            if sub.is_empty() {
                self.0.remove(k);
            }
        }
    }
}

fn walk(kind: &str, path: &str, v: &Value) -> FieldSet {
    match v {
        Value::Object(m) => FieldSet(
            m.iter().map(|(k, v)| (format!("f:{k}"), walk(kind, &format!("{path}.{k}"), v))).collect(),
        ),
        Value::Array(items) => match list_strategy(kind, path) {
            ListStrategy::MergeKey(key) => {
                let mut set = FieldSet::default();
                for item in items {
                    let Some(id) = item.get(key) else { continue };
                    let mut sub = walk(kind, path, item);
                    sub.0.insert(SELF.into(), FieldSet::default());
                    set.0.insert(element_key(key, id), sub);
                }
                set
            }
            ListStrategy::MergePrimitives => {
                FieldSet(items.iter().map(|i| (format!("v:{i}"), FieldSet::default())).collect())
            }
            ListStrategy::Replace => FieldSet::default(),
        },
        _ => FieldSet::default(),
    }
}

fn element_key(key: &str, id: &Value) -> String {
    let mut m = Map::new();
    m.insert(key.into(), id.clone());
    format!("k:{}", Value::Object(m))
}

/// The value at a field path in an object: `None` when it is not there. A keyed element's
/// `"."` is the element; a set item is itself.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        if step == SELF {
            continue;
        }
        cur = if let Some(f) = step.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(k) = step.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?.iter().find(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))?
        } else if let Some(v) = step.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur.as_array()?.iter().find(|e| **e == want)?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes the field at `path` from an object (a key, a keyed element, a set item).
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let path: Vec<&String> = path.iter().filter(|s| s.as_str() != SELF).collect();
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = obj;
    for step in parents {
        let next = if let Some(f) = step.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = step.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else { return };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv))))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Map<String, Value>>(k), cur.as_array_mut()) {
            a.retain(|e| !want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
            a.retain(|e| *e != want);
        }
    }
}

/// A leaf path as Kubernetes prints it in a conflict: `.spec.replicas`,
/// `.spec.template.spec.containers[name="web"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(f) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = step.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = step.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_deployment_s_fields_in_kubernetes_form() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["x"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "a", "args": ["1"]}]}}},
            "status": {"replicas": 2}});
        let set = FieldSet::of("Deployment", &d);
        assert_eq!(
            set.to_json(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"x\"": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}}}}}})
        );
        assert_eq!(FieldSet::from_json(&set.to_json()), set);
        let image =
            path(&["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"]);
        assert!(set.contains(&image));
        assert_eq!(value_at(&d, &image), Some(&json!("a")));
        assert_eq!(display(&image), ".spec.template.spec.containers[name=\"web\"].image");
        let mut d2 = d.clone();
        remove_at(&mut d2, &image);
        assert!(d2["spec"]["template"]["spec"]["containers"][0].get("image").is_none());
        remove_at(
            &mut d2,
            &path(&["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"web\"}", "."]),
        );
        assert_eq!(d2["spec"]["template"]["spec"]["containers"], json!([]));
        let mut s = set.clone();
        s.remove(&image);
        assert!(!s.contains(&image));
        assert!(s.touches(&path(&["f:spec", "f:template"])));
    }
}
