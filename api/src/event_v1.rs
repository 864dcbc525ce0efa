//! `events.k8s.io/v1` Events, converted to and from the core `v1` Events Tug stores, as
//! Kubernetes converts them: `note` is `message`, `regarding` is `involvedObject`,
//! `reportingController` is `reportingComponent`, and the legacy fields are `deprecated*`.
//! A create under the new version is held to its stricter rules (`validate_create`). Pure.

use serde_json::{Map, Value};

use crate::validation::FieldError;

pub const API_VERSION: &str = "events.k8s.io/v1";

/// (core name, events.k8s.io/v1 name).
const RENAMES: &[(&str, &str)] = &[
    ("message", "note"),
    ("involvedObject", "regarding"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Renames the fields core → v1 (`to_v1`) or back.
fn rename(obj: &mut Value, to_v1: bool) {
    let Some(m) = obj.as_object_mut() else { return };
    let mut moved: Map<String, Value> = Map::new();
    for &(core, v1) in RENAMES {
        let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
        if let Some(v) = m.remove(from) {
            moved.insert(to.to_string(), v);
        }
    }
    m.extend(moved);
}

/// The core Event's OpenAPI schema with the new version's field names.
pub fn schema(core: &Value) -> Value {
    let mut s = core.clone();
    if let Some(props) = s.get_mut("properties") {
        rename(props, true);
    }
    if let Some(req) = s.get_mut("required").and_then(Value::as_array_mut) {
        for r in req.iter_mut() {
            if let Some(&(_, v1)) = RENAMES.iter().find(|(c, _)| r.as_str() == Some(c)) {
                *r = v1.into();
            }
        }
    }
    s["x-kubernetes-group-version-kind"] =
        serde_json::json!([{"group": "events.k8s.io", "version": "v1", "kind": "Event"}]);
    s
}

/// A core Event (or a fragment of one: a patch) as `events.k8s.io/v1` shows it.
pub fn to_v1(obj: &mut Value) {
    if obj.get("apiVersion").is_some() {
        obj["apiVersion"] = API_VERSION.into();
    }
    rename(obj, true);
}

/// An `events.k8s.io/v1` Event (or a patch of one) as the core Event stored.
pub fn to_core(obj: &mut Value) {
    if obj.get("apiVersion").and_then(Value::as_str) == Some(API_VERSION) {
        obj["apiVersion"] = "v1".into();
    }
    rename(obj, false);
}

/// A field selector's labels as the core Event names them (`regarding.name` is
/// `involvedObject.name`), as Kubernetes converts the new version's field labels.
pub fn selector_to_core(selector: &str) -> String {
    selector
        .split(',')
        .map(|term| {
            if let Some(rest) = term.strip_prefix("regarding.") {
                format!("involvedObject.{rest}")
            } else if let Some(rest) = term.strip_prefix("reportingController") {
                format!("reportingComponent{rest}")
            } else {
                term.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn absent(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("") || v.as_i64() == Some(0)
}

/// Kubernetes' `ValidateEventCreate` for a create under `events.k8s.io/v1` (the object in
/// that version's names): the fields the new API requires, and the deprecated ones unset.
pub fn validate_create(ev: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut add = |field: &str, message: String| out.push(FieldError { field: field.into(), message });
    if absent(&ev["eventTime"]) {
        add("eventTime", "Required value".into());
    }
    for (f, max) in
        [("reportingController", 316), ("reportingInstance", 128), ("action", 128), ("reason", 128)]
    {
        match ev[f].as_str() {
            None | Some("") => add(f, "Required value".into()),
            Some(s) if s.len() > max => add(f, format!("Too long: may not be more than {max} bytes")),
            Some(_) => {}
        }
    }
    if ev["note"].as_str().is_some_and(|n| n.len() > 1024) {
        add("note", "Too long: may not be more than 1024 bytes".into());
    }
    match ev["type"].as_str() {
        Some("Normal" | "Warning") => {}
        other => add(
            "type",
            format!("Invalid value: {:?}: has invalid value: {}", other.unwrap_or(""), other.unwrap_or("")),
        ),
    }
    for f in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount"] {
        if !absent(&ev[f]) {
            add(f, "Invalid value: \"\": needs to be unset".into());
        }
    }
    let src = &ev["deprecatedSource"];
    if !absent(&src["component"]) || !absent(&src["host"]) {
        add("deprecatedSource", "Invalid value: \"\": needs to be unset".into());
    }
    if let Some(s) = ev.get("series").filter(|s| !s.is_null()) {
        if s["count"].as_i64().unwrap_or(0) < 2 {
            add("series.count", "Invalid value: should be at least 2".into());
        }
        if absent(&s["lastObservedTime"]) {
            add("series.lastObservedTime", "Required value".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_every_field() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "d"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Started", "message": "hi",
            "reportingComponent": "tug-agent", "reportingInstance": "n1", "count": 3,
            "firstTimestamp": "2026-01-01T00:00:00Z", "source": {"component": "tug-agent"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "action": "Start", "type": "Normal"});
        let mut v = core.clone();
        to_v1(&mut v);
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["note"], "hi");
        assert_eq!(v["regarding"]["name"], "p");
        assert_eq!(v["reportingController"], "tug-agent");
        assert_eq!(v["deprecatedCount"], 3);
        assert!(v.get("message").is_none() && v.get("count").is_none());
        to_core(&mut v);
        assert_eq!(v, core);
    }

    #[test]
    fn selectors_use_the_core_names() {
        assert_eq!(
            selector_to_core("regarding.name=p,reportingController!=x,type=Normal"),
            "involvedObject.name=p,reportingComponent!=x,type=Normal"
        );
    }

    #[test]
    fn a_create_needs_the_new_fields_and_not_the_old() {
        let good = json!({"eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "me/x",
            "reportingInstance": "i", "action": "Do", "reason": "Done", "type": "Normal", "note": "n"});
        assert!(validate_create(&good).is_empty());
        let errs = validate_create(&json!({"type": "Info", "deprecatedCount": 2, "series": {"count": 1}}));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
                "type",
                "deprecatedCount",
                "series.count",
                "series.lastObservedTime"
            ]
        );
    }
}
