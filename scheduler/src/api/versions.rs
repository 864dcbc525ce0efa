//! Versions served by conversion: `autoscaling/v1` HorizontalPodAutoscalers,
//! `events.k8s.io/v1` Events and `autoscaling.k8s.io/v1beta2` VerticalPodAutoscalers. A request under the served version's prefix is answered by the
//! stored version's handlers — its body (and field selector) converted on the way in, and
//! every object of the kind in the answer (one object, a list, each watch event) converted
//! back on the way out (`tug_api::hpa_v1`, `tug_api::event_v1`). Tables and Status objects
//! pass unchanged.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;
use tug_api::validation::FieldError;
use tug_api::{event_v1, hpa_v1};

/// One version served by converting to the one stored.
struct Served {
    prefix: &'static str,
    stored_prefix: &'static str,
    kind: &'static str,
    /// The kind with its group, as an Invalid status names it.
    qualified: &'static str,
    api_version: &'static str,
    stored_api_version: &'static str,
    to_served: fn(&mut Value),
    to_stored: fn(&mut Value),
    /// The rules a create under the served version answers to besides the stored kind's.
    create_rules: Option<fn(&Value) -> Vec<FieldError>>,
    /// The field selector in the stored version's names.
    field_selector: Option<fn(&str) -> String>,
}

const SERVED: &[Served] = &[
    Served {
        prefix: "/apis/autoscaling/v1/",
        stored_prefix: "/apis/autoscaling/v2/",
        kind: "HorizontalPodAutoscaler",
        qualified: "HorizontalPodAutoscaler.autoscaling",
        api_version: hpa_v1::API_VERSION,
        stored_api_version: "autoscaling/v2",
        to_served: hpa_v1::to_v1,
        to_stored: hpa_v1::to_v2,
        create_rules: None,
        field_selector: None,
    },
    Served {
        prefix: "/apis/events.k8s.io/v1/",
        stored_prefix: "/api/v1/",
        kind: "Event",
        qualified: "Event.events.k8s.io",
        api_version: event_v1::API_VERSION,
        stored_api_version: "v1",
        to_served: event_v1::to_v1,
        to_stored: event_v1::to_core,
        create_rules: Some(event_v1::validate_create),
        field_selector: Some(event_v1::selector_to_core),
    },
    Served {
        prefix: "/apis/autoscaling.k8s.io/v1beta2/",
        stored_prefix: "/apis/autoscaling.k8s.io/v1/",
        kind: "VerticalPodAutoscaler",
        qualified: "VerticalPodAutoscaler.autoscaling.k8s.io",
        api_version: tug_api::manifest::VPA_V1BETA2,
        stored_api_version: "autoscaling.k8s.io/v1",
        to_served: |v| {
            if v.get("apiVersion").is_some() {
                v["apiVersion"] = tug_api::manifest::VPA_V1BETA2.into();
            }
        },
        to_stored: |v| {
            if v.get("apiVersion").and_then(Value::as_str) == Some(tug_api::manifest::VPA_V1BETA2) {
                v["apiVersion"] = "autoscaling.k8s.io/v1".into();
            }
        },
        create_rules: None,
        field_selector: None,
    },
];

fn convert_out(s: &Served, v: &mut Value) {
    let kind = v["kind"].as_str().unwrap_or_default();
    if kind == s.kind {
        (s.to_served)(v);
    } else if kind.strip_suffix("List") == Some(s.kind) {
        v["apiVersion"] = s.api_version.into();
        for item in v["items"].as_array_mut().into_iter().flatten() {
            // Items carry no kind in lists; give them theirs to convert, as the version shows it.
            item["apiVersion"] = s.stored_api_version.into();
            (s.to_served)(item);
        }
    }
}

/// The query with its field selector in the stored version's names.
fn query(s: &Served, q: &str) -> String {
    let Some(convert) = s.field_selector else { return q.to_string() };
    super::handlers::query_pairs(q)
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "fieldSelector" { convert(&v) } else { v };
            format!("{}={}", encode(&k), encode(&v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

pub async fn converted(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let Some((s, rest)) = SERVED.iter().find_map(|s| Some((s, path.strip_prefix(s.prefix)?.to_string())))
    else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let uri = match parts.uri.query() {
        Some(q) => format!("{}{rest}?{}", s.stored_prefix, query(s, q)),
        None => format!("{}{rest}", s.stored_prefix),
    };
    if let Ok(u) = uri.parse::<Uri>() {
        parts.uri = u;
    }
    let watch = parts.uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let bytes = match axum::body::to_bytes(body, super::MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return super::handlers::status_response(&tug_api::status::Status::new(
                413,
                "RequestEntityTooLarge",
                e.to_string(),
            ));
        }
    };
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = if bytes.is_empty() {
        Body::empty()
    } else {
        let parsed: Option<Value> = if ct.contains("yaml") {
            serde_yaml_ng::from_slice(&bytes).ok()
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        match parsed {
            Some(mut v) => {
                if parts.method == Method::POST
                    && let Some(rules) = s.create_rules
                {
                    let errors = rules(&v);
                    if !errors.is_empty() {
                        let name = v["metadata"]["name"].as_str().unwrap_or_default();
                        return super::handlers::status_response(&tug_api::status::Status::invalid(
                            s.qualified,
                            name,
                            &errors,
                        ));
                    }
                }
                (s.to_stored)(&mut v);
                parts.headers.remove(header::CONTENT_LENGTH);
                Body::from(v.to_string())
            }
            // Not JSON: the handler says what is wrong with it.
            None => Body::from(bytes),
        }
    };
    let resp = next.run(Request::from_parts(parts, body)).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json") && !c.contains("as=Table"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let s: &'static Served = s;
    if watch {
        // Each line an event: its object converted as it passes.
        let mut pending = Vec::new();
        let stream = body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            pending.extend_from_slice(&chunk);
            let mut out = Vec::new();
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(mut ev) => {
                        convert_out(s, &mut ev["object"]);
                        out.extend_from_slice(ev.to_string().as_bytes());
                        out.push(b'\n');
                    }
                    Err(_) => out.extend_from_slice(&line),
                }
            }
            Ok::<Bytes, std::io::Error>(Bytes::from(out))
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            convert_out(s, &mut v);
            Response::from_parts(parts, Body::from(v.to_string()))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_selector_is_renamed_and_the_rest_kept() {
        let events = &SERVED[1];
        assert_eq!(
            query(events, "fieldSelector=regarding.name%3Dweb&limit=5"),
            "fieldSelector=involvedObject.name%3Dweb&limit=5"
        );
        // A `%` before a multi-byte character is no escape, and no panic.
        assert_eq!(query(events, "fieldSelector=%a\u{e9}"), "fieldSelector=%25a%C3%A9");
        assert_eq!(query(&SERVED[0], "fieldSelector=a%3Db"), "fieldSelector=a%3Db");
    }
}
