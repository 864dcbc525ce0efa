//! Versions served by conversion: `autoscaling/v1` HorizontalPodAutoscalers. A request under
//! `/apis/autoscaling/v1/` is answered by the v2 handlers — its body converted to v2 on the
//! way in, and every HPA in the answer (one object, a list, each watch event) converted to v1
//! on the way out (`tug_api::hpa_v1`). Tables and Status objects pass unchanged.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;
use tug_api::hpa_v1;

const V1: &str = "/apis/autoscaling/v1/";
const V2: &str = "/apis/autoscaling/v2/";

fn convert_out(v: &mut Value) {
    match v["kind"].as_str() {
        Some("HorizontalPodAutoscaler") => hpa_v1::to_v1(v),
        Some("HorizontalPodAutoscalerList") => {
            v["apiVersion"] = hpa_v1::API_VERSION.into();
            for item in v["items"].as_array_mut().into_iter().flatten() {
                // Items carry no kind in lists; give them theirs to convert, as v1 shows it.
                item["apiVersion"] = "autoscaling/v2".into();
                hpa_v1::to_v1(item);
            }
        }
        _ => {}
    }
}

pub async fn autoscaling_v1(req: Request, next: Next) -> Response {
    let Some(rest) = req.uri().path().strip_prefix(V1).map(str::to_string) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let uri = match parts.uri.query() {
        Some(q) => format!("{V2}{rest}?{q}"),
        None => format!("{V2}{rest}"),
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
                hpa_v1::to_v2(&mut v);
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
                        convert_out(&mut ev["object"]);
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
            convert_out(&mut v);
            Response::from_parts(parts, Body::from(v.to_string()))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}
