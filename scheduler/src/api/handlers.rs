//! Request handlers: parse the path, decode and check the body, call the store, shape the
//! answer (or a `Status`).

use super::objects::{self, Applied};
use super::path::{self, Target};
use super::{AppState, now};
use crate::store::{StoreError, Stored};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tug_api::kinds::cluster::PriorityClass;
use tug_api::labels::Selector;
use tug_api::object::KindInfo;
use tug_api::status::Status;

type Reply = Result<Response, Status>;

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// A `Status` as a response with its code.
pub fn status_response(s: &Status) -> Response {
    let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, &serde_json::to_value(s).unwrap_or_default());
    // The store unreachable: try again shortly (Kubernetes answers etcd outages alike).
    if code == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

pub async fn not_found(uri: Uri) -> Response {
    status_response(&Status::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({})", uri.path()),
    ))
}

/// Maps a store error onto the Status a client expects.
pub(super) fn store_status(e: StoreError, info: &KindInfo, name: &str) -> Status {
    let resource = resource_name(info);
    match e {
        StoreError::NotFound(_) => Status::not_found(&resource, name),
        StoreError::AlreadyExists(_) => Status::already_exists(&resource, name),
        StoreError::Conflict { .. } => Status::conflict(&resource, name),
        StoreError::Compacted { .. } | StoreError::TooSlow(_) => Status::gone(e.to_string()),
        StoreError::Backend(m) => Status::internal(m),
        StoreError::Unavailable(m) => Status::new(503, "ServiceUnavailable", m),
        // Only the controllers write fenced; the API never does. Retrying is right either way.
        StoreError::Fenced(_) => Status::new(503, "ServiceUnavailable", e.to_string()),
    }
}

/// `deployments.apps`, `pods`.
fn resource_name(info: &KindInfo) -> String {
    if info.group.is_empty() { info.plural.to_string() } else { format!("{}.{}", info.plural, info.group) }
}

pub async fn dispatch(
    State(st): State<Arc<AppState>>,
    user: Option<axum::Extension<Arc<crate::auth::User>>>,
    method: Method,
    uri: Uri,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET
        && let Some(doc) = super::discovery::document(&uri)
    {
        return doc;
    }
    let query = parse_query(q.as_deref().unwrap_or(""));
    let user = user.map_or_else(|| Arc::new(crate::auth::User::admin()), |u| u.0);
    let result = match path::parse(uri.path()) {
        Err(s) => Err(s),
        Ok(target) => {
            let rbac = target.info().group == tug_api::kinds::rbac::GROUP && method != Method::GET;
            let r = route(&st, &method, target, query, headers, body, &user).await;
            if let (true, Some(a)) = (rbac, &st.auth) {
                // This server's own RBAC writes count at once (the store watch follows).
                a.rbac.invalidate();
            }
            r
        }
    };
    result.unwrap_or_else(|s| status_response(&s))
}

pub(crate) fn parse_query(q: &str) -> HashMap<String, String> {
    query_pairs(q).into_iter().collect()
}

/// Every `key=value` of a query in order, repeated keys kept (`command=sh&command=-c`).
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Bytes, not a str slice: `%` before a multi-byte character is no escape.
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn route(
    st: &Arc<AppState>,
    method: &Method,
    target: Target,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    user: &Arc<crate::auth::User>,
) -> Reply {
    let watch = q.get("watch").is_some_and(|v| tug_api::query_bool(v));
    let table = super::table::wanted(&headers, &q)?;
    // A seat of the request's priority level while it runs (a watch takes none).
    let _seat = match watch {
        true => None,
        false => {
            Some(st.flow.seat(super::flow::Level::of(user, target.info().group, target.info().plural)).await?)
        }
    };
    if matches!(target, Target::Collection { .. }) && method == Method::GET {
        return if watch {
            super::watch::serve(st, &target, &q, table).await
        } else {
            super::list::serve(st, &target, &q, table).await
        };
    }
    if let (Some(include), &Method::GET, Target::Object { status: false, .. }) = (table, method, &target) {
        let stored = read(st, &target)?;
        return Ok(json_response(
            StatusCode::OK,
            &super::table::single(target.info(), &stored.object, include),
        ));
    }
    // Decoding, validating and the store's calls are blocking work, done on the blocking
    // threads — not in `block_in_place` on an async thread: with every blocking thread taken
    // (a burst of writes each waiting for its group commit), the async threads that moved
    // into them waited for one to hand their work to, and no connection was accepted or read
    // meanwhile (at 5,000 nodes a create took 7 ms in its handler and 3.4 s at its client).
    let (st, method, user) = (Arc::clone(st), method.clone(), Arc::clone(user));
    tokio::task::spawn_blocking(move || sync_route(&st, &method, &target, &q, &headers, &body, &user))
        .await
        .unwrap_or_else(|e| Err(Status::internal(format!("the request's handler failed: {e}"))))
}

fn sync_route(
    st: &AppState,
    method: &Method,
    target: &Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    user: &crate::auth::User,
) -> Reply {
    let dry = dry_run(q)?;
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let manager = &super::managed::manager(q, ua);
    match (method.as_str(), target) {
        ("POST", Target::Collection { .. }) => create(st, target, body, user, dry, manager),
        ("DELETE", Target::Collection { .. }) => delete_collection(st, target, q, body, dry),
        ("GET", Target::Object { .. }) => get(st, target),
        ("PUT", Target::Object { status: false, .. }) => {
            replace(st, target, decode_body(target, body)?, user, dry, manager)
        }
        ("PUT", Target::Object { status: true, .. }) => {
            put_status(st, target, decode_body(target, body)?, dry)
        }
        ("DELETE", Target::Object { status: false, .. }) => delete(st, target, q, body, dry),
        ("PATCH", Target::Object { status, .. }) => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let media = ct.split(';').next().unwrap_or("").trim();
            match (media, status) {
                ("application/apply-patch+yaml" | "application/apply-patch+json", false) => {
                    let force = q.get("force").is_some_and(|v| tug_api::query_bool(v));
                    apply(st, target, body, user, dry, manager, force)
                }
                (
                    "application/merge-patch+json"
                    | "application/json-patch+json"
                    | "application/strategic-merge-patch+json",
                    _,
                ) => patch(st, target, media, body, user, dry, manager),
                _ => Err(Status::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
                    ),
                )),
            }
        }
        (m, _) => Err(Status::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({m})"),
        )),
    }
}

/// `/scale` of a Deployment, ReplicaSet, StatefulSet or Rollout (`autoscaling/v1` Scale): get, replace, patch. A
/// write changes `spec.replicas` of the object through the replace path (checked, optimistic).
pub async fn scale(
    State(st): State<Arc<AppState>>,
    user: Option<axum::Extension<Arc<crate::auth::User>>>,
    axum::extract::Path((ns, plural, name)): axum::extract::Path<(String, String, String)>,
    method: Method,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = user.map_or_else(|| Arc::new(crate::auth::User::admin()), |u| u.0);
    let q = parse_query(q.as_deref().unwrap_or(""));
    let Some(info) = tug_api::object::KINDS.iter().find(|k| {
        k.plural == plural
            && ((k.group == "apps" && ["deployments", "replicasets", "statefulsets"].contains(&k.plural))
                || (k.group == "argoproj.io" && k.plural == "rollouts"))
    }) else {
        return not_found(Uri::from_static("/scale")).await;
    };
    let target = Target::Object { info, namespace: Some(ns), name, status: false };
    blocking(|| scale_sync(&st, &target, &method, &q, &headers, &body, &user))
        .unwrap_or_else(|s| status_response(&s))
}

fn scale_view(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|l| l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")}})
}

fn scale_sync(
    st: &AppState,
    target: &Target,
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    user: &crate::auth::User,
) -> Reply {
    let dry = dry_run(q)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = read(st, target)?;
        let view = scale_view(&current.object);
        let wanted = match method.as_str() {
            "GET" => return Ok(json_response(StatusCode::OK, &view)),
            "PUT" => serde_json::from_slice::<Value>(body)
                .map_err(|e| Status::bad_request(format!("the Scale body is not valid JSON: {e}")))?,
            "PATCH" => {
                let patch: Value = serde_json::from_slice(body)
                    .map_err(|e| Status::bad_request(format!("the patch is not valid JSON: {e}")))?;
                let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                let mut doc = view.clone();
                apply_patch("Scale", ct.split(';').next().unwrap_or("").trim(), &mut doc, &patch)?;
                doc
            }
            m => {
                return Err(Status::new(
                    405,
                    "MethodNotAllowed",
                    format!("the server does not allow this method on the requested resource ({m})"),
                ));
            }
        };
        let replicas = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0).ok_or_else(|| {
            Status::invalid(
                "Scale.autoscaling",
                "",
                &[tug_api::validation::FieldError {
                    field: "spec.replicas".into(),
                    message: "Invalid value: must be greater than or equal to 0".into(),
                }],
            )
        })?;
        let pinned =
            wanted["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty()).map(str::to_string);
        let mut doc = current.object.clone();
        doc["spec"]["replicas"] = replicas.into();
        doc["metadata"]["resourceVersion"] =
            pinned.clone().unwrap_or_else(|| current.revision.to_string()).into();
        let doc = decode_doc(target, doc)?;
        let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
        // The scale subresource's writes are recorded as its own.
        let manager = super::managed::manager(q, ua);
        match replace_object(st, target, doc, user, dry, (&manager, "scale")) {
            Ok((obj, warnings)) => {
                return Ok(with_warnings(json_response(StatusCode::OK, &scale_view(&obj)), &warnings));
            }
            Err(s) if s.code == 409 && s.reason == "Conflict" && pinned.is_none() && attempt < 5 => continue,
            Err(s) => return Err(s),
        }
    }
}

/// `POST pods/NAME/eviction` (`policy/v1` Eviction, what `kubectl drain` sends): the pod is
/// deleted with the eviction's grace period once its PodDisruptionBudget allows it (see
/// `eviction`).
pub async fn eviction(
    State(st): State<Arc<AppState>>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = parse_query(q.as_deref().unwrap_or(""));
    let Some(info) = tug_api::object::lookup("pods") else {
        return status_response(&Status::internal("no Pod kind"));
    };
    let result = (|| {
        let eviction: Value = serde_json::from_slice(&body)
            .map_err(|e| Status::bad_request(format!("the Eviction body is not valid JSON: {e}")))?;
        if eviction["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(Status::bad_request(format!(
                "name in URL does not match name in Eviction object ({name} vs {})",
                eviction["metadata"]["name"]
            )));
        }
        let options = Bytes::from(eviction["deleteOptions"].to_string().replace("null", "{}"));
        let target = Target::Object { info, namespace: Some(ns), name, status: false };
        let dry =
            dry_run(&q)? || eviction["deleteOptions"]["dryRun"].as_array().is_some_and(|d| !d.is_empty());
        let Target::Object { name, namespace, .. } = &target else {
            return Err(Status::internal("not an object"));
        };
        let ns = namespace.as_deref().unwrap_or("default");
        blocking(|| super::eviction::evict(st.store.as_ref(), ns, name, dry))?;
        blocking(|| delete(&st, &target, &HashMap::new(), &options, dry))?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    })();
    result.unwrap_or_else(|s| status_response(&s))
}

/// `pods/NAME/resize` (in-place pod resize): a GET reads the pod; a PATCH or PUT may change only
/// the containers' cpu and memory requests and limits, keeping the pod's QoS class. The
/// pod's node applies the change in place (or restarts the container where its
/// `resizePolicy` says so) and reports it in the container statuses.
pub async fn resize(
    State(st): State<Arc<AppState>>,
    user: Option<axum::Extension<Arc<crate::auth::User>>>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    method: Method,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = user.map_or_else(|| Arc::new(crate::auth::User::admin()), |u| u.0);
    let q = parse_query(q.as_deref().unwrap_or(""));
    let Some(info) = tug_api::object::lookup("pods") else {
        return status_response(&Status::internal("no Pod kind"));
    };
    let target = Target::Object { info, namespace: Some(ns), name, status: false };
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let result = blocking(|| -> Reply {
        let dry = dry_run(&q)?;
        for _ in 0..5 {
            let current = read(&st, &target)?;
            let mut doc = match method.as_str() {
                "GET" => return Ok(json_response(StatusCode::OK, &current.object)),
                "PUT" => serde_json::from_slice::<Value>(&body)
                    .map_err(|e| Status::bad_request(format!("the body is not valid JSON: {e}")))?,
                "PATCH" => {
                    let patch: Value = serde_json::from_slice(&body)
                        .map_err(|e| Status::bad_request(format!("the patch is not valid JSON: {e}")))?;
                    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                    let mut doc = current.object.clone();
                    apply_patch("Pod", ct.split(';').next().unwrap_or("").trim(), &mut doc, &patch)?;
                    doc
                }
                m => {
                    return Err(Status::new(
                        405,
                        "MethodNotAllowed",
                        format!("the server does not allow this method on the requested resource ({m})"),
                    ));
                }
            };
            let name = current.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            resize_allowed(&current.object, &doc).map_err(|m| {
                Status::invalid(
                    "Pod",
                    &name,
                    &[tug_api::validation::FieldError { field: "spec".into(), message: m }],
                )
            })?;
            let pinned =
                doc["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty()).map(str::to_string);
            doc["metadata"]["resourceVersion"] =
                pinned.clone().unwrap_or_else(|| current.revision.to_string()).into();
            let doc = decode_doc(&target, doc)?;
            let manager = super::managed::manager(&q, ua.as_deref());
            match replace_object(&st, &target, doc, &user, dry, (&manager, "resize")) {
                Ok((obj, warnings)) => {
                    return Ok(with_warnings(json_response(StatusCode::OK, &obj), &warnings));
                }
                Err(s) if s.code == 409 && s.reason == "Conflict" && pinned.is_none() => continue,
                Err(s) => return Err(s),
            }
        }
        Err(Status::conflict("pods", target_name(&target)))
    });
    result.unwrap_or_else(|s| status_response(&s))
}

fn target_name(t: &Target) -> &str {
    match t {
        Target::Object { name, .. } => name,
        Target::Collection { .. } => "",
    }
}

/// Kubernetes' resize rules: only `spec.containers[*].resources` cpu and memory may differ,
/// and the QoS class stays.
fn resize_allowed(old: &Value, new: &Value) -> Result<(), String> {
    let masked = |v: &Value| {
        let mut s = v["spec"].clone();
        for c in s["containers"].as_array_mut().into_iter().flatten() {
            for kind in ["requests", "limits"] {
                if let Some(m) = c["resources"][kind].as_object_mut() {
                    m.remove("cpu");
                    m.remove("memory");
                    if m.is_empty() {
                        c["resources"].as_object_mut().map(|r| r.remove(kind));
                    }
                }
            }
            if c["resources"].as_object().is_some_and(serde_json::Map::is_empty) {
                c.as_object_mut().map(|c| c.remove("resources"));
            }
        }
        s
    };
    if masked(old) != masked(new) {
        return Err("Forbidden: only cpu and memory resources of containers are mutable".into());
    }
    let (was, is) = (qos_class(&old["spec"]), qos_class(&new["spec"]));
    if was != is {
        return Err(format!("Invalid value: {is:?}: Pod QoS is immutable (it is {was:?})"));
    }
    Ok(())
}

/// Kubernetes' QoS class of a pod spec: Guaranteed (every container's cpu and memory limited,
/// requests equal to limits), BestEffort (no requests or limits), else Burstable.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let none = containers.iter().all(|c| {
        ["requests", "limits"].iter().all(|k| {
            c["resources"][*k].as_object().is_none_or(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
        })
    });
    if none {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][*r];
            let request = &c["resources"]["requests"][*r];
            !limit.is_null() && (request.is_null() || request == limit)
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// `dryRun=All`: the write is checked and answered as if made, and not stored.
fn dry_run(q: &HashMap<String, String>) -> Result<bool, Status> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(Status::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

/// A PATCH: the patch applied to the current object, then written as a replace would be
/// (checked, admitted, optimistic on the revision read). A write between the read and the
/// write is retried, unless the patch itself names a resourceVersion.
#[allow(clippy::too_many_arguments)]
fn patch(
    st: &AppState,
    target: &Target,
    media: &str,
    body: &Bytes,
    user: &crate::auth::User,
    dry: bool,
    manager: &str,
) -> Reply {
    let info = target.info();
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| Status::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = read(st, target)?;
        let mut doc = current.object.clone();
        apply_patch(info.kind, media, &mut doc, &patch)?;
        let rv = current.revision.to_string();
        let pinned = doc["metadata"]["resourceVersion"].as_str().is_some_and(|v| v != rv);
        if !pinned {
            doc["metadata"]["resourceVersion"] = rv.into();
        }
        let doc = decode_doc(target, doc)?;
        let result = match target {
            Target::Object { status: true, .. } => put_status(st, target, doc, dry),
            _ => replace(st, target, doc, user, dry, manager),
        };
        match result {
            Err(s) if s.code == 409 && s.reason == "Conflict" && !pinned && attempt < 5 => continue,
            other => return other,
        }
    }
}

/// A patch of one of the three types applied to `doc` (an object of `kind`); a patch that
/// cannot apply is a 422, as Kubernetes answers it.
fn apply_patch(kind: &str, media: &str, doc: &mut Value, patch: &Value) -> Result<(), Status> {
    let applied = match media {
        "application/merge-patch+json" => {
            if !patch.is_object() {
                return Err(Status::bad_request("a merge patch must be a JSON object"));
            }
            tug_api::patch::merge_patch(doc, patch);
            Ok(())
        }
        "application/json-patch+json" => tug_api::patch::json_patch(doc, patch),
        _ => tug_api::patch::strategic(kind, doc, patch),
    };
    applied.map_err(|e| Status::new(422, "Invalid", format!("the patch could not be applied: {e}")))
}

/// DELETE on a collection: every object the selectors match, each as its own DELETE would be;
/// the answer is the list of what was deleted (or marked).
fn delete_collection(
    st: &AppState,
    target: &Target,
    q: &HashMap<String, String>,
    body: &Bytes,
    dry: bool,
) -> Reply {
    let info = target.info();
    let filter = Filter::from_query(q)?;
    let prefix = path::prefix(info, target.namespace());
    let (items, revision) = blocking(|| st.store.list(&prefix)).map_err(|e| store_status(e, info, ""))?;
    let mut deleted = Vec::new();
    for item in items.iter().filter(|s| filter.matches(&s.object)) {
        let name = item.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let one = Target::Object {
            info,
            namespace: item.object["metadata"]["namespace"].as_str().map(str::to_string),
            name,
            status: false,
        };
        match delete(st, &one, q, body, dry) {
            Ok(_) => deleted.push(item.object.clone()),
            Err(s) if s.code == 404 => {}
            Err(s) => return Err(s),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": info.api_version(), "kind": format!("{}List", info.kind),
            "metadata": {"resourceVersion": revision.to_string()}, "items": deleted}),
    ))
}

/// Decodes, defaults and validates a request body for `target` (one document, its kind).
fn decode_body(target: &Target, body: &Bytes) -> Result<Value, Status> {
    decode_doc(target, single_doc(body)?)
}

/// Checks, defaults and validates one document for `target`.
fn decode_doc(target: &Target, doc: Value) -> Result<Value, Status> {
    let info = target.info();
    let doc = check_doc(target, doc)?;
    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut obj = tug_api::manifest::decode(&doc)
        .map_err(|errs| Status::invalid(&qualified_kind(info), &name, &errs))?;
    tug_api::defaults::apply(&mut obj);
    tug_api::validate::object(&obj).map_err(|errs| Status::invalid(&qualified_kind(info), &name, &errs))?;
    Ok(obj.to_value())
}

/// The one document of a request body, as sent.
fn single_doc(body: &Bytes) -> Result<Value, Status> {
    let text = std::str::from_utf8(body).map_err(|_| Status::bad_request("the request body is not UTF-8"))?;
    let mut docs = tug_api::manifest::documents(text).map_err(|e| Status::bad_request(e.to_string()))?;
    if docs.len() != 1 {
        return Err(Status::bad_request(format!(
            "expected one object in the request body, got {}",
            docs.len()
        )));
    }
    Ok(docs.remove(0))
}

/// A document checked against its request path (an object; kind, apiVersion, namespace and
/// name agree with the path, filled in when missing), neither defaulted nor validated.
fn check_doc(target: &Target, mut doc: Value) -> Result<Value, Status> {
    let info = target.info();
    // Indexing below writes into the document: it must be an object with an object metadata.
    if !doc.is_object() {
        return Err(Status::bad_request("the request body must be one object (a JSON or YAML mapping)"));
    }
    match doc.get("metadata") {
        None | Some(Value::Null) => doc["metadata"] = json!({}),
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(Status::invalid(
                &qualified_kind(info),
                "",
                &[tug_api::validation::FieldError {
                    field: "metadata".into(),
                    message: "Invalid value: must be an object".into(),
                }],
            ));
        }
    }
    if doc.get("kind").is_none() {
        doc["kind"] = info.kind.into();
        doc["apiVersion"] = info.api_version().into();
    }
    if doc["kind"] != info.kind || doc["apiVersion"] != info.api_version().as_str() {
        return Err(Status::bad_request(format!(
            "the object's kind and apiVersion ({} {}) do not match the request path ({} {})",
            doc["kind"].as_str().unwrap_or("?"),
            doc["apiVersion"].as_str().unwrap_or("?"),
            info.kind,
            info.api_version()
        )));
    }
    if info.namespaced {
        let ns = target.namespace().unwrap_or("default");
        match doc["metadata"]["namespace"].as_str() {
            Some(given) if given != ns => {
                return Err(Status::bad_request(format!(
                    "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => doc["metadata"]["namespace"] = ns.into(),
        }
    }
    if let Target::Object { name, .. } = target {
        match doc["metadata"]["name"].as_str() {
            Some(n) if n != name => {
                return Err(Status::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => doc["metadata"]["name"] = name.as_str().into(),
        }
    }
    Ok(doc)
}

/// `Deployment.apps`, `Pod` — how Kubernetes names a kind in Invalid messages.
fn qualified_kind(info: &KindInfo) -> String {
    if info.group.is_empty() { info.kind.to_string() } else { format!("{}.{}", info.kind, info.group) }
}

fn object_key(target: &Target) -> (String, String) {
    match target {
        Target::Object { info, namespace, name, .. } => {
            (path::key(info, namespace.as_deref(), name), name.clone())
        }
        Target::Collection { .. } => (String::new(), String::new()),
    }
}

/// A store call from a handler: the store blocks (etcd's waits on its own runtime).
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn ensure_namespace(st: &AppState, info: &KindInfo, ns: Option<&str>) -> Result<(), Status> {
    let (true, Some(ns)) = (info.namespaced, ns) else { return Ok(()) };
    let nsinfo =
        tug_api::object::lookup("namespaces").ok_or_else(|| Status::internal("no Namespace kind"))?;
    let found =
        blocking(|| st.store.get(&path::key(nsinfo, None, ns))).map_err(|e| store_status(e, nsinfo, ns))?;
    match found {
        Some(n) if crate::deletion::terminating(&n.object) => Err(Status::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ))),
        Some(_) => Ok(()),
        None => Err(Status::not_found("namespaces", ns)),
    }
}

fn stored_reply(code: StatusCode, s: &Stored) -> Response {
    json_response(code, &s.object)
}

fn create(
    st: &AppState,
    target: &Target,
    body: &Bytes,
    user: &crate::auth::User,
    dry: bool,
    manager: &str,
) -> Reply {
    let info = target.info();
    let mut obj = decode_body(target, body)?;
    admit(st, user, info, &obj)?;
    let warnings = pod_security(st, info, &obj, None)?;
    if obj["metadata"]["name"].as_str().unwrap_or_default().is_empty() {
        let base = obj["metadata"]["generateName"].as_str().unwrap_or_default().to_string();
        let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
        obj["metadata"]["name"] = format!("{base}{suffix}").into();
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    ensure_namespace(st, info, ns.as_deref())?;
    objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now());
    if info.kind == "Namespace" {
        obj["status"] = json!({"phase": "Active"});
    }
    let key = path::key(info, ns.as_deref(), &name);
    let _cidrs = node_cidr_lock(st, info);
    assign_pod_cidr(st, info, &mut obj)?;
    let _services = service_lock(st, info);
    assign_service_addresses(st, info, &mut obj, None)?;
    admit_pod_priority(st, info, &mut obj)?;
    admit_service_account(st, info, &mut obj)?;
    if info.kind == "Pod" {
        blocking(|| crate::controllers::vpa::admit_pod(st.store.as_ref(), &mut obj))
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    // Until the object is stored (the guard lives to the end of the function).
    let _quota = blocking(|| crate::quota::admission_lock_in(st.store.as_ref(), ns.as_deref()));
    admit_limits_and_quota(st, info, &mut obj, dry)?;
    super::managed::track_update(info.kind, None, &mut obj, (manager, ""), &info.api_version(), &now());
    if dry {
        if blocking(|| st.store.get(&key)).map_err(|e| store_status(e, info, &name))?.is_some() {
            return Err(Status::already_exists(&resource_name(info), &name));
        }
        return Ok(with_warnings(json_response(StatusCode::CREATED, &obj), &warnings));
    }
    let stored = blocking(|| st.store.create(&key, obj)).map_err(|e| store_status(e, info, &name))?;
    namespace_defaults(st, info, &name);
    Ok(with_warnings(stored_reply(StatusCode::CREATED, &stored), &warnings))
}

/// LimitRanger and ResourceQuota admission of a new object (`crate::quota`): a pod's
/// defaults set and bounds checked, then the namespace's quotas charged (not on a dry run).
fn admit_limits_and_quota(st: &AppState, info: &KindInfo, obj: &mut Value, dry: bool) -> Result<(), Status> {
    let Some(ns) = obj["metadata"]["namespace"].as_str().map(str::to_string) else { return Ok(()) };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    blocking(|| crate::quota::admit(st.store.as_ref(), info, &ns, obj, dry))
        .map_err(|m| Status::forbidden(format!("{} {name:?} is forbidden: {m}", resource_name(info))))
}

/// ServiceAccount admission for a new Pod (`crate::auth::serviceaccounts`).
fn admit_service_account(st: &AppState, info: &KindInfo, obj: &mut Value) -> Result<(), Status> {
    if info.kind != "Pod" {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    blocking(|| crate::auth::serviceaccounts::admit_pod(st.store.as_ref(), obj))
        .map_err(|m| Status::forbidden(format!("pods {name:?} is forbidden: {m}")))
}

/// A new namespace's `default` service account and `kube-root-ca.crt` (best effort: a pod's
/// admission makes them too when they are missing).
fn namespace_defaults(st: &AppState, info: &KindInfo, name: &str) {
    if info.kind == "Namespace" {
        if let Err(e) = blocking(|| crate::auth::serviceaccounts::ensure_defaults(st.store.as_ref(), name)) {
            tracing::warn!("tug-scheduler: namespace {name}: its default service account: {e}");
        }
    }
}

/// Pod Security admission (`crate::auth::podsecurity`): a Pod that breaks its namespace's
/// `enforce` level is refused; the `warn` level's findings, for pods and workloads' templates,
/// come back as warnings. A namespace's labels are checked, and a stricter `enforce` warns of
/// the pods already there that break it. An update that leaves a pod's spec as it was is not
/// judged again.
fn pod_security(
    st: &AppState,
    info: &KindInfo,
    obj: &Value,
    current: Option<&Value>,
) -> Result<Admission, Status> {
    use crate::auth::podsecurity;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if info.kind == "Namespace" {
        let errs = podsecurity::validate_labels(&obj["metadata"]["labels"]);
        if !errs.is_empty() {
            let errs: Vec<_> = errs
                .into_iter()
                .map(|(field, message)| tug_api::validation::FieldError { field, message })
                .collect();
            return Err(Status::invalid("Namespace", name, &errs));
        }
        let before = current.map(|c| podsecurity::policy(name, &c["metadata"]["labels"]).enforce);
        let after = podsecurity::policy(name, &obj["metadata"]["labels"]).enforce;
        if before.is_none_or(|b| b >= after) {
            return Ok(Admission::default());
        }
        let pods = tug_api::object::lookup("pods").ok_or_else(|| Status::internal("no Pod kind"))?;
        let (items, _) = blocking(|| st.store.list(&path::prefix(pods, Some(name))))
            .map_err(|e| store_status(e, pods, ""))?;
        let mut found = Vec::new();
        for p in &items {
            let v = podsecurity::violations(after, &p.object["spec"]);
            if !v.is_empty() {
                found.push(format!(
                    "{}: {}",
                    p.object["metadata"]["name"].as_str().unwrap_or_default(),
                    v.join(", ")
                ));
            }
        }
        if found.is_empty() {
            return Ok(Admission::default());
        }
        let mut w = vec![format!(
            "existing pods in namespace {name:?} violate the new PodSecurity enforce level \"{}:latest\"",
            after.name()
        )];
        w.extend(found);
        return Ok(Admission { warnings: w, audit: None });
    }
    if podsecurity::pod_spec(info.kind, obj).is_none() {
        return Ok(Admission::default());
    }
    if info.kind == "Pod" && current.is_some_and(|c| c["spec"] == obj["spec"]) {
        return Ok(Admission::default());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let nsinfo =
        tug_api::object::lookup("namespaces").ok_or_else(|| Status::internal("no Namespace kind"))?;
    let Some(found) =
        blocking(|| st.store.get(&path::key(nsinfo, None, ns))).map_err(|e| store_status(e, nsinfo, ns))?
    else {
        return Ok(Admission::default());
    };
    let policy = podsecurity::policy(ns, &found.object["metadata"]["labels"]);
    let warnings = podsecurity::admit(info.kind, obj, policy)
        .map_err(|m| Status::forbidden(format!("{} {name:?} is forbidden: {m}", resource_name(info))))?;
    Ok(Admission { warnings, audit: podsecurity::audit(info.kind, obj, policy) })
}

/// What admission says of an admitted write: warnings for the client, an annotation for the
/// audit log (Pod Security's `audit` level).
#[derive(Default)]
struct Admission {
    warnings: Vec<String>,
    audit: Option<String>,
}

/// Annotations a handler leaves for the request's audit event.
#[derive(Clone, Default)]
pub struct AuditAnnotations(pub Vec<(String, String)>);

/// Adds one `Warning: 299 - "…"` header per warning (what kubectl and tug print).
fn with_warnings(mut resp: Response, admission: &Admission) -> Response {
    if let Some(a) = &admission.audit {
        resp.extensions_mut().insert(AuditAnnotations(vec![(
            "pod-security.kubernetes.io/audit-violations".into(),
            a.clone(),
        )]));
    }
    for w in &admission.warnings {
        let text = format!("299 - {w:?}");
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Admission by who writes: a node creates only its own Node and Lease (NodeRestriction);
/// nobody grants through a Role or binding what they do not hold themselves, unless they may
/// `escalate` (roles) or `bind` (bindings) — Kubernetes' RBAC escalation prevention.
fn admit(st: &AppState, user: &crate::auth::User, info: &KindInfo, obj: &Value) -> Result<(), Status> {
    use crate::auth::{Attributes, Decision, rbac};
    let Some(authz) = &st.auth else { return Ok(()) };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    if let Some(node) = user.node_name() {
        if ["Node", "Lease"].contains(&info.kind) && name != node {
            let a = Attributes::resource("create", info.group, info.plural, ns, name);
            return Err(crate::auth::forbidden(
                user,
                &a,
                &format!("node '{node}' may only create its own {} object", info.kind),
            ));
        }
    }
    if info.group != tug_api::kinds::rbac::GROUP || user.in_group(crate::auth::MASTERS) {
        return Ok(());
    }
    let may = |verb: &str, resource: &str, name: &str, ns: &str| {
        authz.decide(user, &Attributes::resource(verb, tug_api::kinds::rbac::GROUP, resource, ns, name))
            == Decision::Allow
    };
    let index = authz.rbac.index().map_err(|e| store_status(e, info, name))?;
    let wanted: Vec<tug_api::kinds::rbac::PolicyRule> = match info.kind {
        "Role" | "ClusterRole" => {
            if may("escalate", info.plural, name, ns) {
                return Ok(());
            }
            tug_api::from_value_ref(&obj["rules"]).unwrap_or_default()
        }
        _ => {
            let role = &obj["roleRef"];
            let (kind, role_name) =
                (role["kind"].as_str().unwrap_or_default(), role["name"].as_str().unwrap_or_default());
            let (plural, role_ns) = if kind == "Role" { ("roles", ns) } else { ("clusterroles", "") };
            if may("bind", plural, role_name, role_ns) {
                return Ok(());
            }
            index.referenced(kind, role_name, ns).ok_or_else(|| {
                Status::not_found(&format!("{plural}.{}", tug_api::kinds::rbac::GROUP), role_name)
            })?
        }
    };
    let missing = rbac::uncovered(&index.rules_for(user, ns), &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let list: Vec<String> = missing.iter().map(rbac::describe).collect();
    let a = Attributes::resource("create", info.group, info.plural, ns, name);
    Err(crate::auth::forbidden_because(
        &a,
        &format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            groups.join(" "),
            list.join("\n")
        ),
    ))
}

/// Kubernetes' Priority admission for a new Pod: `priorityClassName` must name a
/// PriorityClass, whose value becomes `spec.priority` (with its `preemptionPolicy`); a pod
/// naming none gets the `globalDefault` class, if there is one, else priority 0.
fn admit_pod_priority(st: &AppState, info: &KindInfo, obj: &mut Value) -> Result<(), Status> {
    if info.kind != "Pod" {
        return Ok(());
    }
    let Some(pcs) = tug_api::object::lookup("priorityclasses") else { return Ok(()) };
    let (classes, _) =
        blocking(|| st.store.list(&path::prefix(pcs, None))).map_err(|e| store_status(e, pcs, ""))?;
    let classes: Vec<PriorityClass> =
        classes.iter().filter_map(|s| tug_api::from_value_ref(&s.object).ok()).collect();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let wanted = obj["spec"]["priorityClassName"].as_str().filter(|c| !c.is_empty());
    let class = PriorityClass::for_pod(&classes, wanted);
    if let (Some(c), None) = (wanted, class) {
        return Err(Status::new(
            403,
            "Forbidden",
            format!("pods {name:?} is forbidden: no PriorityClass with name {c} was found"),
        ));
    }
    let (value, policy) = match class {
        Some(c) => (
            i64::from(c.value),
            c.preemption_policy.clone().unwrap_or_else(|| "PreemptLowerPriority".to_string()),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = obj["spec"]["priority"].as_i64() {
        if given != value {
            return Err(Status::new(
                403,
                "Forbidden",
                format!(
                    "pods {name:?} is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                ),
            ));
        }
    }
    if let Some(c) = class {
        obj["spec"]["priorityClassName"] = c.metadata.name.clone().into();
    }
    obj["spec"]["priority"] = value.into();
    obj["spec"]["preemptionPolicy"] = policy.into();
    Ok(())
}

/// What the server and its controllers set in a spec (a pod's admitted priority and its
/// binding, a claim's or volume's binding, a node's pod CIDR) stays when an update leaves it
/// out: a replace carries no such field unless the writer read it first.
fn keep_server_set(info: &KindInfo, obj: &mut Value, current: &Value) {
    if info.kind == "Pod" {
        keep_token_volume(obj, current);
    }
    let fields: &[&str] = match info.kind {
        "Pod" => &["priority", "preemptionPolicy", "priorityClassName", "nodeName", "serviceAccountName"],
        "PersistentVolumeClaim" => &["volumeName"],
        "PersistentVolume" => &["claimRef"],
        "Node" => &["podCIDR", "podCIDRs"],
        _ => return,
    };
    for f in fields {
        if obj["spec"][f].is_null() && !current["spec"][f].is_null() {
            obj["spec"][f] = current["spec"][f].clone();
        }
    }
}

/// The service account token volume (and its mounts) admission added stays when an update
/// or apply leaves it out, as it stays with Kubernetes' field managers.
fn keep_token_volume(obj: &mut Value, current: &Value) {
    let mount = crate::auth::serviceaccounts::MOUNT;
    let added: Vec<Value> = current["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-")))
        .cloned()
        .collect();
    for v in added {
        let has = obj["spec"]["volumes"].as_array().is_some_and(|l| l.iter().any(|x| x["name"] == v["name"]));
        if has {
            continue;
        }
        if !obj["spec"]["volumes"].is_array() {
            obj["spec"]["volumes"] = json!([]);
        }
        if let Some(l) = obj["spec"]["volumes"].as_array_mut() {
            l.push(v.clone());
        }
        for f in ["initContainers", "containers"] {
            let Some(new) = obj["spec"].get_mut(f).and_then(Value::as_array_mut) else { continue };
            for c in new {
                let was = current["spec"][f]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["name"] == c["name"])
                    .and_then(|x| {
                        x["volumeMounts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|m| m["name"] == v["name"])
                            .cloned()
                    });
                let mounted =
                    c["volumeMounts"].as_array().is_some_and(|l| l.iter().any(|m| m["mountPath"] == mount));
                if let (Some(m), false) = (was, mounted) {
                    if !c["volumeMounts"].is_array() {
                        c["volumeMounts"] = json!([]);
                    }
                    if let Some(l) = c["volumeMounts"].as_array_mut() {
                        l.push(m);
                    }
                }
            }
        }
    }
}

/// Kubernetes' update rules (immutable fields), as a 422 naming each field.
fn check_update(info: &KindInfo, name: &str, current: &Value, obj: &Value) -> Result<(), Status> {
    tug_api::validate_update::update(info.kind, current, obj)
        .map_err(|errs| Status::invalid(&qualified_kind(info), name, &errs))
}

/// Held while a Service is written: its addresses are chosen by looking at the others.
fn service_lock<'a>(st: &'a AppState, info: &KindInfo) -> Option<std::sync::MutexGuard<'a, ()>> {
    (info.kind == "Service").then(|| st.services.lock.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A Service's ClusterIP and NodePorts (see `services.rs`); other kinds pass.
fn assign_service_addresses(
    st: &AppState,
    info: &KindInfo,
    obj: &mut Value,
    current: Option<&Value>,
) -> Result<(), Status> {
    if info.kind != "Service" {
        return Ok(());
    }
    let (all, _) =
        blocking(|| st.store.list(&path::prefix(info, None))).map_err(|e| store_status(e, info, ""))?;
    let me = format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    );
    let taken = super::services::Taken::from_services(all.iter().map(|s| &s.object), &me);
    super::services::allocate(obj, current, &taken, &st.services)
}

/// Held while a Node is created: pod CIDRs are chosen by looking at the other nodes.
fn node_cidr_lock<'a>(st: &'a AppState, info: &KindInfo) -> Option<std::sync::MutexGuard<'a, ()>> {
    (info.kind == "Node").then(|| st.node_cidrs.lock.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A new Node without `spec.podCIDR` gets the lowest free block of the cluster CIDR; one that
/// names its own must name a valid, unclaimed block.
fn assign_pod_cidr(st: &AppState, info: &KindInfo, obj: &mut Value) -> Result<(), Status> {
    use tug_api::cidr::{Cidr4, next_free_subnet};
    if info.kind != "Node" {
        return Ok(());
    }
    /// A stored node's pod CIDR, read without building the rest of the node.
    #[derive(serde::Deserialize)]
    struct Held {
        #[serde(default)]
        spec: HeldSpec,
    }
    #[derive(serde::Deserialize, Default)]
    struct HeldSpec {
        #[serde(rename = "podCIDR")]
        pod_cidr: Option<String>,
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut used: Vec<Cidr4> = Vec::new();
    blocking(|| {
        st.store.scan(&path::prefix(info, None), None, &mut |_, bytes| {
            if let Some(c) =
                serde_json::from_slice::<Held>(bytes).ok().and_then(|h| h.spec.pod_cidr?.parse().ok())
            {
                used.push(c);
            }
            true
        })
    })
    .map_err(|e| store_status(e, info, &name))?;
    let cidr = match obj["spec"]["podCIDR"].as_str().filter(|c| !c.is_empty()) {
        Some(own) => {
            let c: Cidr4 = own.parse().map_err(|e| Status::bad_request(format!("spec.podCIDR: {e}")))?;
            if let Some(u) = used.iter().find(|u| u.overlaps(&c)) {
                return Err(Status::bad_request(format!(
                    "spec.podCIDR: {c} overlaps {u}, which another node holds"
                )));
            }
            c
        }
        None => next_free_subnet(st.node_cidrs.cluster, st.node_cidrs.mask, &used).map_err(|e| {
            Status::new(503, "ServiceUnavailable", format!("no pod CIDR for node {name}: {e}"))
        })?,
    };
    obj["spec"]["podCIDR"] = cidr.to_string().into();
    obj["spec"]["podCIDRs"] = json!([cidr.to_string()]);
    Ok(())
}

fn get(st: &AppState, target: &Target) -> Reply {
    read(st, target).map(|s| stored_reply(StatusCode::OK, &s))
}

fn read(st: &AppState, target: &Target) -> Result<Stored, Status> {
    let info = target.info();
    let (key, name) = object_key(target);
    blocking(|| st.store.get(&key))
        .map_err(|e| store_status(e, info, &name))?
        .ok_or_else(|| Status::not_found(&resource_name(info), &name))
}

fn expected_revision(obj: &Value) -> Result<Option<u64>, Status> {
    match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| Status::bad_request(format!("metadata.resourceVersion: invalid value {rv:?}"))),
    }
}

fn replace(
    st: &AppState,
    target: &Target,
    obj: Value,
    user: &crate::auth::User,
    dry: bool,
    manager: &str,
) -> Reply {
    let (obj, warnings) = replace_object(st, target, obj, user, dry, (manager, ""))?;
    Ok(with_warnings(json_response(StatusCode::OK, &obj), &warnings))
}

/// A replace: the object as stored (or as it would be, on a dry run) and admission's warnings.
fn replace_object(
    st: &AppState,
    target: &Target,
    mut obj: Value,
    user: &crate::auth::User,
    dry: bool,
    (manager, subresource): (&str, &str),
) -> Result<(Value, Admission), Status> {
    let info = target.info();
    let (key, name) = object_key(target);
    admit(st, user, info, &obj)?;
    let expected = expected_revision(&obj)?;
    let current = blocking(|| st.store.get(&key)).map_err(|e| store_status(e, info, &name))?;
    let current = current.ok_or_else(|| Status::not_found(&resource_name(info), &name))?;
    keep_server_set(info, &mut obj, &current.object);
    objects::on_update(&mut obj, &current.object)?;
    let _services = service_lock(st, info);
    assign_service_addresses(st, info, &mut obj, Some(&current.object))?;
    // A resize has its own rule (`resize_allowed`): only the containers' cpu and memory change.
    if subresource != "resize" {
        check_update(info, &name, &current.object, &obj)?;
    }
    super::managed::track_update(
        info.kind,
        Some(&current.object),
        &mut obj,
        (manager, subresource),
        &info.api_version(),
        &now(),
    );
    let warnings = pod_security(st, info, &obj, Some(&current.object))?;
    if dry {
        if expected.is_some_and(|e| e != current.revision) {
            return Err(Status::conflict(&resource_name(info), &name));
        }
        obj["metadata"]["resourceVersion"] = current.revision.to_string().into();
        return Ok((obj, warnings));
    }
    let stored = write_update(st, &key, obj, expected.unwrap_or(current.revision))
        .map_err(|e| store_status(e, info, &name))?;
    Ok((stored.object, warnings))
}

/// An update's write: the object, or its removal when the update took the last finalizer
/// off an object marked deleted.
fn write_update(st: &AppState, key: &str, obj: Value, revision: u64) -> Result<Stored, StoreError> {
    if crate::deletion::after_update(&obj) {
        return blocking(|| st.store.delete(key, Some(revision)));
    }
    blocking(|| st.store.update(key, obj, Some(revision)))
}

fn put_status(st: &AppState, target: &Target, obj: Value, dry: bool) -> Reply {
    let info = target.info();
    let (key, name) = object_key(target);
    let expected = expected_revision(&obj)?;
    let current = blocking(|| st.store.get(&key)).map_err(|e| store_status(e, info, &name))?;
    let current = current.ok_or_else(|| Status::not_found(&resource_name(info), &name))?;
    let merged = objects::on_status(&obj, &current.object);
    if dry {
        return Ok(json_response(StatusCode::OK, &merged));
    }
    let stored = blocking(|| st.store.update(&key, merged, Some(expected.unwrap_or(current.revision))))
        .map_err(|e| store_status(e, info, &name))?;
    Ok(stored_reply(StatusCode::OK, &stored))
}

/// A DELETE's options, from its query and its `DeleteOptions` body (the query wins, as in
/// Kubernetes): `propagationPolicy` (Background, the default; Foreground; Orphan),
/// `gracePeriodSeconds`, and `preconditions` on the object's uid and resourceVersion.
struct DeleteOptions {
    propagation: String,
    grace: Option<i64>,
    pre: crate::deletion::Preconditions,
}

fn delete_options(q: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, Status> {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("the DeleteOptions body is not valid JSON: {e}")))?
    };
    let p = q
        .get("propagationPolicy")
        .cloned()
        .or_else(|| body["propagationPolicy"].as_str().map(str::to_string))
        .unwrap_or_else(|| "Background".into());
    if !["Background", "Foreground", "Orphan"].contains(&p.as_str()) {
        return Err(Status::bad_request(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
        )));
    }
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(g.parse::<i64>().map_err(|_| {
            Status::bad_request(format!("gracePeriodSeconds: Invalid value: {g:?}: must be an integer"))
        })?),
        None => match &body["gracePeriodSeconds"] {
            Value::Null => None,
            v => Some(v.as_i64().ok_or_else(|| {
                Status::bad_request(format!("gracePeriodSeconds: Invalid value: {v}: must be an integer"))
            })?),
        },
    };
    let pre = &body["preconditions"];
    Ok(DeleteOptions {
        propagation: p,
        grace,
        pre: crate::deletion::Preconditions {
            uid: pre["uid"].as_str().map(str::to_string),
            resource_version: pre["resourceVersion"].as_str().map(str::to_string),
        },
    })
}

fn delete(st: &AppState, target: &Target, q: &HashMap<String, String>, body: &Bytes, dry: bool) -> Reply {
    let info = target.info();
    let (key, name) = object_key(target);
    if info.kind == "Namespace" && ["default", "tug-system"].contains(&name.as_str()) {
        return Err(Status::forbidden(format!(
            "namespaces {name:?} is forbidden: this namespace may not be deleted"
        )));
    }
    let opts = delete_options(q, body)?;
    let current = blocking(|| st.store.get(&key)).map_err(|e| store_status(e, info, &name))?;
    let current = current.ok_or_else(|| Status::not_found(&resource_name(info), &name))?;
    opts.pre.check(&current).map_err(|m| Status::new(409, "Conflict", m))?;
    if dry {
        return Ok(stored_reply(StatusCode::OK, &current));
    }
    if info.kind == "Namespace" {
        // Marked Terminating: the namespace controller removes what is in it (pods with their
        // grace periods), then the namespace.
        if crate::deletion::terminating(&current.object) {
            return Ok(stored_reply(StatusCode::OK, &current));
        }
        let mut obj = current.object.clone();
        obj["metadata"]["deletionTimestamp"] = now().into();
        obj["metadata"]["deletionGracePeriodSeconds"] = 0.into();
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
        obj["status"]["phase"] = "Terminating".into();
        let stored = blocking(|| st.store.update(&key, obj, Some(current.revision)))
            .map_err(|e| store_status(e, info, &name))?;
        return Ok(stored_reply(StatusCode::OK, &stored));
    }
    if opts.propagation != "Background" {
        // Marked, not removed: the garbage collector deletes (or orphans) the dependents
        // first, then the object.
        let finalizer = if opts.propagation == "Foreground" {
            crate::controllers::gc::FOREGROUND
        } else {
            crate::controllers::gc::ORPHAN
        };
        let mut obj = current.object.clone();
        crate::controllers::gc::mark(&mut obj, finalizer, &now());
        let stored = blocking(|| st.store.update(&key, obj, Some(current.revision)))
            .map_err(|e| store_status(e, info, &name))?;
        return Ok(stored_reply(StatusCode::OK, &stored));
    }
    match blocking(|| crate::deletion::delete(st.store.as_ref(), &key, opts.grace, &opts.pre)) {
        Ok(outcome) => Ok(stored_reply(StatusCode::OK, outcome.stored())),
        Err(crate::deletion::Refused::Precondition(m)) => Err(Status::new(409, "Conflict", m)),
        Err(crate::deletion::Refused::Store(e)) => Err(store_status(e, info, &name)),
    }
}

/// Server-side apply: the configuration merged over the live object as its manager's fields
/// (`super::managed`), then defaulted, validated, admitted and written like any update.
#[allow(clippy::too_many_arguments)]
fn apply(
    st: &AppState,
    target: &Target,
    body: &Bytes,
    user: &crate::auth::User,
    dry: bool,
    manager: &str,
    force: bool,
) -> Reply {
    let info = target.info();
    let (key, name) = object_key(target);
    let config = check_doc(target, single_doc(body)?)?;
    let _services = service_lock(st, info);
    // Without a resourceVersion in the request an apply is not optimistic: a controller
    // writing the object (a Deployment's status) between our read and write is retried.
    let pinned = expected_revision(&config)?.is_some();
    let mut attempt = 0;
    let mut warnings: Admission;
    let (stored, applied) = loop {
        attempt += 1;
        let current = blocking(|| st.store.get(&key)).map_err(|e| store_status(e, info, &name))?;
        let live = current.as_ref().map_or_else(|| json!({"metadata": {}}), |c| c.object.clone());
        let merged =
            super::managed::apply(info.kind, &live, &config, manager, force, &info.api_version(), &now())
                .map_err(|c| super::managed::conflict_status(&qualified_kind(info), &name, &c))?;
        let mut merged = merged;
        if let Some(rv) = config["metadata"].get("resourceVersion") {
            merged["metadata"]["resourceVersion"] = rv.clone();
        }
        let mut obj = decode_doc(target, merged)?;
        admit(st, user, info, &obj)?;
        if let Some(c) = &current {
            keep_server_set(info, &mut obj, &c.object);
        }
        assign_service_addresses(st, info, &mut obj, current.as_ref().map(|c| &c.object))?;
        warnings = pod_security(st, info, &obj, current.as_ref().map(|c| &c.object))?;
        let result = match current {
            None => {
                ensure_namespace(st, info, target.namespace())?;
                objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now());
                if info.kind == "Namespace" {
                    obj["status"] = json!({"phase": "Active"});
                }
                let _cidrs = node_cidr_lock(st, info);
                assign_pod_cidr(st, info, &mut obj)?;
                admit_pod_priority(st, info, &mut obj)?;
                admit_service_account(st, info, &mut obj)?;
                let _quota =
                    blocking(|| crate::quota::admission_lock_in(st.store.as_ref(), target.namespace()));
                admit_limits_and_quota(st, info, &mut obj, dry)?;
                if dry {
                    break (Stored { key: key.clone(), object: obj, revision: 0 }, Applied::Created);
                }
                let created = blocking(|| st.store.create(&key, obj)).map(|s| (s, Applied::Created));
                if created.is_ok() {
                    namespace_defaults(st, info, &name);
                }
                created
            }
            Some(cur)
                if !objects::apply_changes(&obj, &cur.object) && managers(&obj) == managers(&cur.object) =>
            {
                Ok((cur, Applied::Unchanged))
            }
            Some(cur) => {
                objects::on_update(&mut obj, &cur.object)?;
                check_update(info, &name, &cur.object, &obj)?;
                if dry {
                    obj["metadata"]["resourceVersion"] = cur.revision.to_string().into();
                    break (
                        Stored { key: key.clone(), object: obj, revision: cur.revision },
                        Applied::Configured,
                    );
                }
                write_update(st, &key, obj, cur.revision).map(|s| (s, Applied::Configured))
            }
        };
        match result {
            Ok(r) => break r,
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) if !pinned && attempt < 5 => {
                continue;
            }
            Err(e) => return Err(store_status(e, info, &name)),
        }
    };
    let code = if applied == Applied::Created { StatusCode::CREATED } else { StatusCode::OK };
    let mut resp = with_warnings(stored_reply(code, &stored), &warnings);
    resp.headers_mut().insert("x-tug-apply", header::HeaderValue::from_static(applied.as_str()));
    Ok(resp)
}

/// Who owns which fields, without the times of their writes.
fn managers(obj: &Value) -> Value {
    let mut m = obj["metadata"]["managedFields"].clone();
    for e in m.as_array_mut().into_iter().flatten() {
        if let Some(e) = e.as_object_mut() {
            e.remove("time");
        }
    }
    m
}

/// `labelSelector` and `fieldSelector` (`metadata.name`, `spec.nodeName`, … with `=`, `==`,
/// `!=`) from a query.
pub struct Filter {
    labels: Selector,
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Filter, Status> {
        let labels = Selector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| Status::bad_request(format!("unable to parse requirement: {e}")))?;
        let mut fields = Vec::new();
        for part in
            q.get("fieldSelector").map(String::as_str).unwrap_or("").split(',').filter(|p| !p.is_empty())
        {
            let (k, v, neg) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, v, false)
            } else {
                return Err(Status::bad_request(format!(
                    "invalid field selector {part:?}: use field=value or field!=value"
                )));
            };
            fields.push((k.trim().to_string(), v.trim().to_string(), neg));
        }
        Ok(Filter { labels, fields })
    }

    /// Whether it lets everything through (no selector at all).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        (self.labels.is_empty() || {
            use serde::Deserialize;
            let labels = tug_api::labels::Labels::deserialize(&obj["metadata"]["labels"]).unwrap_or_default();
            self.labels.matches(&labels)
        }) && self
            .fields
            .iter()
            .all(|(path, want, neg)| (crate::store::field_text(obj, path) == *want) != *neg)
    }

    /// The node a `spec.nodeName=NAME` field selector asks for (a kubelet's watch of its own
    /// pods), which the store's live events are indexed by.
    pub fn node_name(&self) -> Option<&str> {
        self.fields
            .iter()
            .find(|(path, _, neg)| path == "spec.nodeName" && !neg)
            .map(|(_, want, _)| want.as_str())
    }
}

/// Kubernetes' protobuf request bodies (client-go's typed clients send them) become JSON before
/// any handler reads them: one decoder, every route. What it cannot read is a 415 naming the
/// message or field, so the client knows to send JSON.
pub async fn protobuf_bodies(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with(tug_api::protobuf::MEDIA_TYPE) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, super::MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return status_response(&Status::new(413, "RequestEntityTooLarge", e.to_string())),
    };
    let json = match tug_api::protobuf::decode(&bytes) {
        Ok(v) => v.to_string(),
        Err(e) => return status_response(&Status::new(415, "UnsupportedMediaType", e)),
    };
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(json))).await
}

/// TLS connections without a client certificate may only join and read the version.
pub async fn authorize(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let received = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    // Worked out once, by the metrics layer outside this one.
    let attrs = match req.extensions().get::<crate::auth::Attributes>() {
        Some(a) => a.clone(),
        None => {
            let query = parse_query(req.uri().query().unwrap_or(""));
            crate::auth::attributes(req.method().as_str(), req.uri().path(), &query)
        }
    };
    let (real, decided) = authenticate_and_authorize(&st, &req, &attrs);
    let Some(audit) = st.audit.clone() else {
        return match decided {
            Ok(user) => run_as(req, next, user).await,
            Err((_, refusal)) => refusal,
        };
    };
    let uri = req.uri().to_string();
    let source = req.extensions().get::<crate::conn::SourceAddr>().map(|s| s.0.clone());
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let record = |user: &crate::auth::User,
                  allowed: bool,
                  reason: &str,
                  code: u16,
                  long: bool,
                  body: Option<&[u8]>,
                  annotations: &[(String, String)]| {
        let impersonator = (real.name != user.name).then_some(real.as_ref());
        audit.record(&crate::auth::audit::Record {
            user,
            impersonator,
            attrs: &attrs,
            uri: &uri,
            source: source.as_deref(),
            user_agent: user_agent.as_deref(),
            allowed,
            reason,
            code,
            received: received.clone(),
            long_running: long,
            body,
            annotations,
        });
    };
    match decided {
        Err((user, refusal)) => {
            record(&user, false, "", refusal.status().as_u16(), false, None, &[]);
            refusal
        }
        Ok(user) => {
            // A body is kept only where the policy records requests in full.
            let level = audit.policy.level(&user, &attrs);
            let (req, body) = if level >= crate::auth::audit::Level::Request
                && ["POST", "PUT", "PATCH", "DELETE"].contains(&req.method().as_str())
                && !req.headers().contains_key(header::UPGRADE)
            {
                let (parts, body) = req.into_parts();
                match axum::body::to_bytes(body, super::MAX_BODY).await {
                    Ok(b) => (
                        axum::extract::Request::from_parts(parts, axum::body::Body::from(b.clone())),
                        Some(b),
                    ),
                    Err(_) => {
                        let s = Status::new(413, "RequestEntityTooLarge", "the request body is too large");
                        record(&user, true, "", 413, false, None, &[]);
                        return status_response(&s);
                    }
                }
            } else {
                (req, None)
            };
            let long = attrs.verb == "watch"
                || ["log", "exec", "attach", "tunnel"].contains(&attrs.subresource.as_str());
            let resp = run_as(req, next, user.clone()).await;
            let annotations = resp.extensions().get::<AuditAnnotations>().cloned().unwrap_or_default();
            record(&user, true, "", resp.status().as_u16(), long, body.as_deref(), &annotations.0);
            resp
        }
    }
}

async fn run_as(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
    user: Arc<crate::auth::User>,
) -> Response {
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// Who asks (the real user), and either who the request runs as or the refusal with the user
/// it was refused to.
#[allow(clippy::type_complexity)]
fn authenticate_and_authorize(
    st: &AppState,
    req: &axum::extract::Request,
    attrs: &crate::auth::Attributes,
) -> (Arc<crate::auth::User>, Result<Arc<crate::auth::User>, (Arc<crate::auth::User>, Response)>) {
    use crate::auth::{self, User};
    // Requests that did not come through a listener (in-process callers) are the server's own.
    let peer = req.extensions().get::<crate::tls::Peer>().cloned();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|_| req.uri().path() != "/join");
    let user: Arc<User> = match (bearer, &st.tokens, peer) {
        // A service account's token, whoever presents it (a pod, through the TLS listener).
        (Some(token), Some(signer), _) => {
            let now = crate::controllers::unix_now();
            match blocking(|| {
                auth::tokens::authenticate(st.store.as_ref(), signer, token, &st.audiences, now)
            }) {
                Ok(u) => Arc::new(u),
                Err(_) => {
                    let anonymous = Arc::new(User::anonymous());
                    let refusal = status_response(&Status::new(401, "Unauthorized", "Unauthorized"));
                    return (anonymous.clone(), Err((anonymous, refusal)));
                }
            }
        }
        (_, _, None) => Arc::new(User::admin()),
        (_, _, Some(crate::tls::Peer::User(u))) => u,
        (_, _, Some(crate::tls::Peer::Anonymous)) => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if req.uri().path() == "/join" {
                if !token.is_some_and(|t| st.pki.as_ref().is_some_and(|p| p.check_token(t))) {
                    let anonymous = Arc::new(User::anonymous());
                    let refusal = status_response(&Status::new(
                        401,
                        "Unauthorized",
                        "Unauthorized: the join token is not valid for this cluster",
                    ));
                    return (anonymous.clone(), Err((anonymous, refusal)));
                }
                Arc::new(auth::authn::bootstrapper())
            } else {
                Arc::new(User::anonymous())
            }
        }
    };
    let Some(authz) = st.auth.clone() else { return (user.clone(), Ok(user)) };
    let acting = match auth::authn::impersonation(req.headers()) {
        Err(m) => return (user.clone(), Err((user, status_response(&Status::bad_request(m))))),
        Ok(None) => user.clone(),
        Ok(Some((as_user, checks))) => {
            for c in &checks {
                let checked =
                    authz.check_cached(&user, c).unwrap_or_else(|| blocking(|| authz.check(&user, c)));
                if let Err(s) = checked {
                    return (user.clone(), Err((user, status_response(&s))));
                }
            }
            Arc::new(as_user)
        }
    };
    let checked =
        authz.check_cached(&acting, attrs).unwrap_or_else(|| blocking(|| authz.check(&acting, attrs)));
    if let Err(s) = checked {
        let refusal = if acting.in_group(auth::UNAUTHENTICATED) {
            status_response(&Status::new(
                401,
                "Unauthorized",
                "Unauthorized: present a client certificate signed by the cluster CA (`tug join` gets a node's, `tug create user` a user's)",
            ))
        } else {
            status_response(&s)
        };
        return (user, Err((acting, refusal)));
    }
    (user, Ok(acting))
}

/// `POST /join` with `Authorization: Bearer TOKEN` and `{"name": "..."}`: a client
/// certificate for that name, its key, and the CA.
pub async fn join(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(pki) = &st.pki else {
        return status_response(&Status::new(404, "NotFound", "this control plane has no cluster CA"));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !pki.check_token(token) {
        return status_response(&Status::new(
            401,
            "Unauthorized",
            "Unauthorized: the join token is not valid for this cluster",
        ));
    }
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_default();
    if let Err(msg) = tug_api::validation::dns1123_subdomain(&name) {
        return status_response(&Status::invalid(
            "Join",
            &name,
            &[tug_api::validation::FieldError {
                field: "name".into(),
                message: format!("Invalid value: {name:?}: {msg}"),
            }],
        ));
    }
    match pki.client_cert(&name) {
        Ok((cert, key)) => {
            json_response(StatusCode::OK, &json!({"ca": pki.ca_pem, "cert": cert, "key": key}))
        }
        Err(e) => status_response(&Status::internal(e.to_string())),
    }
}
