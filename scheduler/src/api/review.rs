//! Who am I and may I: `SelfSubjectAccessReview` (`authorization.k8s.io/v1`, what
//! `kubectl auth can-i` and `tug auth can-i` ask), `SelfSubjectReview`
//! (`authentication.k8s.io/v1`, `whoami`); and `usercredentials` (`tug.io/v1`): a client
//! certificate for a user, signed by the cluster CA (`tug create user`; whoever may `create`
//! it — cluster-admin — can mint any identity, so grant it to no one else); `reencryptions`
//! (`tug.io/v1`): every object `--encryption-config` covers rewritten with its first
//! provider's first key (`tug admin reencrypt`, after a key rotation).

use super::AppState;
use super::handlers::{blocking, json_response, status_response};
use crate::auth::{Attributes, Decision, User};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use tug_api::status::Status;

fn body_json(body: &Bytes) -> Result<Value, Status> {
    let text = std::str::from_utf8(body).map_err(|_| Status::bad_request("the request body is not UTF-8"))?;
    let v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| Status::bad_request(format!("the request body: {e}")))?;
    if !v.is_object() {
        return Err(Status::bad_request("the request body must be one object"));
    }
    Ok(v)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub async fn access(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<Arc<User>>,
    body: Bytes,
) -> Response {
    let mut review = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return status_response(&e),
    };
    let spec = &review["spec"];
    let attrs = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let mut a = Attributes::resource(
            &s(&r["verb"]),
            &s(&r["group"]),
            &s(&r["resource"]),
            &s(&r["namespace"]),
            &s(&r["name"]),
        );
        a.subresource = s(&r["subresource"]);
        a
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        Attributes { verb: s(&n["verb"]), path: s(&n["path"]), ..Attributes::default() }
    } else {
        return status_response(&Status::invalid(
            "SelfSubjectAccessReview.authorization.k8s.io",
            "",
            &[tug_api::validation::FieldError {
                field: "spec.resourceAttributes".into(),
                message: "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            }],
        ));
    };
    let decision = match &st.auth {
        None => Decision::Allow,
        Some(a) => blocking(|| a.decide(&user, &attrs)),
    };
    review["apiVersion"] = "authorization.k8s.io/v1".into();
    review["kind"] = "SelfSubjectAccessReview".into();
    review["metadata"] = json!({"creationTimestamp": null});
    review["status"] = match decision {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(r) => json!({"allowed": false, "denied": true, "reason": r}),
        Decision::NoOpinion(r) if r.is_empty() => json!({"allowed": false}),
        Decision::NoOpinion(r) => json!({"allowed": false, "reason": r}),
        Decision::Unavailable(e) => json!({"allowed": false, "evaluationError": e}),
    };
    json_response(StatusCode::CREATED, &review)
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`.
pub async fn whoami(Extension(user): Extension<Arc<User>>) -> Response {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = user.uid.clone().into();
    }
    json_response(
        StatusCode::CREATED,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
            "metadata": {"creationTimestamp": null}, "status": {"userInfo": info}}),
    )
}

/// `POST /apis/tug.io/v1/usercredentials` with `{"name", "groups": [...], "ttlSeconds"}`:
/// `{"ca", "cert", "key", "expirationTimestamp"}`.
pub async fn user_credentials(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let reply = || -> Result<Value, Status> {
        let v = body_json(&body)?;
        let name = s(&v["name"]);
        let field = |f: &str, m: String| {
            Status::invalid(
                "UserCredentials.tug.io",
                &name,
                &[tug_api::validation::FieldError { field: f.into(), message: m }],
            )
        };
        if name.is_empty() {
            return Err(field("name", "Required value".into()));
        }
        let groups: Vec<String> = v["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect();
        if let Some(g) = groups.iter().find(|g| g.is_empty()) {
            return Err(field("groups", format!("Invalid value: {g:?}: must not be empty")));
        }
        let ttl = match &v["ttlSeconds"] {
            Value::Null => 365 * 86400,
            t => t.as_u64().filter(|t| *t >= 60).ok_or_else(|| {
                field("ttlSeconds", format!("Invalid value: {t}: must be at least 60 seconds"))
            })?,
        };
        let pki = st
            .pki
            .as_ref()
            .ok_or_else(|| Status::new(404, "NotFound", "this control plane has no cluster CA"))?;
        let (cert, key) = pki.user_cert(&name, &groups, ttl).map_err(|e| field("groups", e.to_string()))?;
        let expires = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(ttl),
        );
        Ok(json!({"ca": pki.ca_pem, "cert": cert, "key": key, "expirationTimestamp": expires.to_string()}))
    };
    match reply() {
        Ok(v) => json_response(StatusCode::CREATED, &v),
        Err(e) => status_response(&e),
    }
}

/// `POST /apis/tug.io/v1/reencryptions`: `{"rewritten": N, "resources": [...]}`.
pub async fn reencrypt(State(st): State<Arc<AppState>>) -> Response {
    let Some(config) = &st.encryption else {
        return status_response(&Status::bad_request(
            "this control plane encrypts nothing at rest: start tug-scheduler with --encryption-config FILE",
        ));
    };
    let prefixes = config.prefixes();
    let result = blocking(|| -> Result<u64, crate::store::StoreError> {
        let mut n = 0;
        for p in &prefixes {
            let (items, _) = st.store.list(p)?;
            for item in items {
                // Read and written through the encrypting store: opened with whichever key,
                // sealed with the first. A concurrent writer sealed it already.
                match st.store.update(&item.key, item.object, Some(item.revision)) {
                    Ok(_) => n += 1,
                    Err(
                        crate::store::StoreError::Conflict { .. } | crate::store::StoreError::NotFound(_),
                    ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    });
    match result {
        Ok(n) => {
            // Store prefixes as resources: `/secrets/` → secrets, `apps/deployments/` →
            // deployments.apps.
            let names: Vec<String> = prefixes
                .iter()
                .map(|p| match p.trim_matches('/').split_once('/') {
                    Some(("_tug", "pki")) => "the cluster CA".to_string(),
                    Some((group, plural)) => format!("{plural}.{group}"),
                    None => p.trim_matches('/').to_string(),
                })
                .collect();
            json_response(StatusCode::CREATED, &json!({"rewritten": n, "resources": names}))
        }
        Err(e) => status_response(&Status::new(503, "ServiceUnavailable", e.to_string())),
    }
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: a `TokenRequest`
/// (`authentication.k8s.io/v1`): `spec.audiences` (default: the API's first),
/// `spec.expirationSeconds` (default 3600, at least 600), `spec.boundObjectRef` (a Pod: the
/// token dies with it). A node may ask only for a pod bound to it that runs as that account
/// (Kubernetes' NodeRestriction).
pub async fn token_request(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<Arc<User>>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    body: Bytes,
) -> Response {
    let reply = || -> Result<Value, Status> {
        let mut v = if body.is_empty() { json!({}) } else { body_json(&body)? };
        let signer = st.tokens.as_ref().ok_or_else(|| {
            Status::new(404, "NotFound", "this control plane has no cluster CA to sign tokens")
        })?;
        let invalid = |field: &str, m: String| {
            Status::invalid(
                "TokenRequest.authentication.k8s.io",
                &name,
                &[tug_api::validation::FieldError { field: field.into(), message: m }],
            )
        };
        let account = blocking(|| st.store.get(&format!("/serviceaccounts/{ns}/{name}")))
            .map_err(|e| Status::new(503, "ServiceUnavailable", e.to_string()))?
            .ok_or_else(|| Status::not_found("serviceaccounts", &name))?;
        let spec = &v["spec"];
        let seconds = match &spec["expirationSeconds"] {
            Value::Null => 3600,
            x => x.as_u64().filter(|x| *x >= 600).ok_or_else(|| {
                invalid(
                    "spec.expirationSeconds",
                    format!("Invalid value: {x}: may not specify a duration less than 10 minutes"),
                )
            })?,
        };
        let mut audiences: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        if audiences.is_empty() {
            audiences = st.audiences.iter().take(1).cloned().collect();
        }
        let bound = &spec["boundObjectRef"];
        let pod = if bound.is_null() {
            None
        } else {
            if bound["kind"] != "Pod" {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    format!("Unsupported value: {}: supported values: \"Pod\"", bound["kind"]),
                ));
            }
            let pod_name = s(&bound["name"]);
            let p = blocking(|| st.store.get(&format!("/pods/{ns}/{pod_name}")))
                .map_err(|e| Status::new(503, "ServiceUnavailable", e.to_string()))?
                .ok_or_else(|| Status::not_found("pods", &pod_name))?;
            let uid = s(&p.object["metadata"]["uid"]);
            if bound["uid"].as_str().is_some_and(|u| u != uid) {
                return Err(Status::new(
                    409,
                    "Conflict",
                    format!(
                        "the UID in the bound object reference ({}) does not match the UID in record ({uid}); the object might have been deleted and then recreated",
                        bound["uid"].as_str().unwrap_or_default()
                    ),
                ));
            }
            if let Some(node) = user.node_name() {
                let runs_as = p.object["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                if p.object["spec"]["nodeName"] != node || runs_as != name {
                    return Err(Status::forbidden(format!(
                        "serviceaccounts {name:?} is forbidden: node '{node}' may only request tokens for service accounts of pods bound to it"
                    )));
                }
            }
            Some((pod_name, uid))
        };
        if user.node_name().is_some() && pod.is_none() {
            return Err(Status::forbidden(format!(
                "serviceaccounts {name:?} is forbidden: node requested token not bound to a pod"
            )));
        }
        let now = crate::controllers::unix_now();
        let sa_uid = s(&account.object["metadata"]["uid"]);
        let claims = crate::auth::tokens::claims(&crate::auth::tokens::Request {
            namespace: &ns,
            service_account: &name,
            service_account_uid: &sa_uid,
            pod: pod.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
            audiences: audiences.clone(),
            expiration_seconds: seconds,
            now,
        });
        let expires = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(now + seconds),
        );
        v["apiVersion"] = "authentication.k8s.io/v1".into();
        v["kind"] = "TokenRequest".into();
        v["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
        v["spec"]["audiences"] = json!(audiences);
        v["spec"]["expirationSeconds"] = seconds.into();
        v["status"] = json!({"token": signer.sign(&claims), "expirationTimestamp": expires.to_string()});
        Ok(v)
    };
    match reply() {
        Ok(v) => json_response(StatusCode::CREATED, &v),
        Err(e) => status_response(&e),
    }
}
