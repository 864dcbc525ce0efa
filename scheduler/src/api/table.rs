//! Server-side printing: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` turns a get,
//! a list or a watch's objects into `meta.k8s.io/v1` `Table`s with kubectl's columns for
//! each kind (`tug_api::columns`, the same code `tug get` prints with). Wide columns have
//! priority 1 (kubectl shows them with `-o wide`); each row carries the object's metadata
//! (`includeObject=Metadata`, the default), the whole object (`Object`) or nothing (`None`).

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::SystemTime;
use tug_api::object::KindInfo;
use tug_api::status::Status;

/// What a Table's rows carry of their objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// The Table the client asked for, if it asked for one (a media range with `as=Table`; the
/// `meta.k8s.io` `v1` and `v1beta1` both get v1's shape, which is the same).
pub fn wanted(headers: &HeaderMap, q: &HashMap<String, String>) -> Result<Option<Include>, Status> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let table = accept.split(',').any(|m| {
        let params: Vec<&str> = m.split(';').map(str::trim).collect();
        params[0] == "application/json" && params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    });
    if !table {
        return Ok(None);
    }
    Ok(Some(match q.get("includeObject").map(String::as_str) {
        None | Some("") | Some("Metadata") => Include::Metadata,
        Some("Object") => Include::Object,
        Some("None") => Include::None,
        Some(other) => {
            return Err(Status::bad_request(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            )));
        }
    }))
}

/// The column definitions of a kind: the normal columns, then the wide ones at priority 1.
pub fn columns(info: &KindInfo) -> Value {
    let normal = tug_api::columns::headers(info.kind, false);
    let wide = tug_api::columns::headers(info.kind, true);
    let defs: Vec<Value> = wide
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let format = if *name == "NAME" { "name" } else { "" };
            json!({"name": name, "type": "string", "format": format, "description": "",
                "priority": if i < normal.len() { 0 } else { 1 }})
        })
        .collect();
    Value::Array(defs)
}

/// One row of an object.
pub fn row(obj: &Value, include: Include, now: SystemTime) -> Value {
    let cells = tug_api::columns::row(obj, true, now);
    let mut r = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Object => r["object"] = obj.clone(),
        Include::Metadata => {
            r["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"].clone()});
        }
    }
    r
}

/// A Table of one object (a get, or a watch event).
pub fn single(info: &KindInfo, obj: &Value, include: Include) -> Value {
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"].clone()},
        "columnDefinitions": columns(info), "rows": [row(obj, include, SystemTime::now())]})
}

/// The start of a list's Table, up to its first row.
pub fn head(info: &KindInfo) -> String {
    format!(
        "{{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/v1\",\"columnDefinitions\":{},\"rows\":[",
        columns(info)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_asked_for_with_accept() {
        let mut h = HeaderMap::new();
        let q = HashMap::new();
        assert_eq!(wanted(&h, &q).unwrap(), None);
        h.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(wanted(&h, &q).unwrap(), Some(Include::Metadata));
        let q: HashMap<String, String> = [("includeObject".to_string(), "Bogus".to_string())].into();
        assert_eq!(wanted(&h, &q).unwrap_err().code, 400);
    }

    #[test]
    fn pod_rows_have_kubectls_columns_with_wide_ones_at_priority_one() {
        let info = tug_api::object::lookup("pods").unwrap();
        let cols = columns(info);
        let names: Vec<&str> = cols.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names[..5], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[5]["priority"], 1);
        let pod = json!({"kind": "Pod", "metadata": {"name": "web", "namespace": "a"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}, "status": {"phase": "Running", "podIP": "10.0.0.2"}});
        let t = single(info, &pod, Include::Metadata);
        assert_eq!(t["rows"][0]["cells"][0], "web");
        assert_eq!(t["rows"][0]["cells"].as_array().unwrap().len(), names.len());
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "a");
    }
}
