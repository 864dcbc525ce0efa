//! Watch: a streaming response of JSON lines, `{"type":"ADDED","object":{...}}`. Without a
//! `resourceVersion`, the current objects come first as ADDED (as Kubernetes does), then the
//! changes after that list's revision. A watcher that falls behind gets an ERROR event with a
//! 410 Status and the stream ends.

use super::AppState;
use super::handlers::{Filter, status_response};
use super::path::{self, Target};
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tug_api::status::Status;

pub async fn serve(
    st: &AppState,
    target: &Target,
    q: &HashMap<String, String>,
    table: Option<super::table::Include>,
) -> Result<Response, Status> {
    let info = target.info();
    let filter = Filter::from_query(q)?;
    let prefix = path::prefix(info, target.namespace());
    let (initial, after) = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            // Picked by a selector from the decoded copy when it is at the store's revision
            // (as a list is), or else from the store.
            let mut lines = Vec::new();
            let mut add = |v: &Value| {
                if filter.matches(v) {
                    lines.push(match table {
                        None => line("ADDED", v),
                        Some(_) => line("ADDED", &shown(info, table, v)),
                    });
                }
                true
            };
            let copied = st.copy.as_ref().filter(|_| !filter.is_empty()).and_then(|c| {
                tokio::task::block_in_place(|| {
                    c.scan_fresh(&prefix, None, filter.node_name(), &mut |_, v, _| add(v))
                })
            });
            let rev = match copied {
                Some(rev) => rev,
                None => {
                    let (items, rev) = tokio::task::block_in_place(|| st.store.list(&prefix))
                        .map_err(|e| Status::internal(e.to_string()))?;
                    items.iter().for_each(|s| {
                        add(&s.object);
                    });
                    rev
                }
            };
            (lines, rev)
        }
        Some(rv) => {
            let asked: u64 =
                rv.parse().map_err(|_| Status::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            caught_up(st, asked).await?;
            (Vec::new(), asked)
        }
    };
    let source = st.watches.as_ref().unwrap_or(&st.store);
    let mut watch = tokio::task::block_in_place(|| match filter.node_name() {
        Some(node) => source.watch_node(&prefix, after, node),
        None => source.watch(&prefix, after),
    })
    .map_err(|e| Status::gone(e.to_string()))?;
    if !filter.is_empty() {
        // Judged before the event is copied for this watcher.
        watch = watch.filtered(std::sync::Arc::new(move |e: &crate::store::Event| filter.matches(&e.object)));
    }
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    // Bookmarks (`allowWatchBookmarks=true`): while nothing it wants happens, the watcher is
    // told every BOOKMARK_EVERY how far the watch has got, so it resumes from there and not
    // from its last event — which the history may no longer hold.
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (kind, api_version) = (info.kind, info.api_version());
    let start = (watch, after, tokio::time::Instant::now() + BOOKMARK_EVERY);
    let live = futures_util::stream::unfold(Some(start), move |state| {
        let api_version = api_version.clone();
        async move {
            let (mut w, mut marked, mut mark_at) = state?;
            let next = loop {
                let wake = match deadline {
                    Some(d) if !bookmarks || d < mark_at => d,
                    _ if bookmarks => mark_at,
                    _ => {
                        break w.next_shared().await;
                    }
                };
                match tokio::time::timeout_at(wake, w.next_shared()).await {
                    Ok(next) => break next,
                    Err(_) if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) => return None,
                    Err(_) => {
                        mark_at = tokio::time::Instant::now() + BOOKMARK_EVERY;
                        if w.revision() > marked {
                            marked = w.revision();
                            let object = serde_json::json!({
                                "kind": kind,
                                "apiVersion": api_version,
                                "metadata": {"resourceVersion": marked.to_string()},
                            });
                            return Some((Ok(line("BOOKMARK", &object)), Some((w, marked, mark_at))));
                        }
                    }
                }
            };
            match next? {
                Ok(e) => {
                    let t = match e.type_ {
                        crate::store::EventType::Added => "ADDED",
                        crate::store::EventType::Modified => "MODIFIED",
                        crate::store::EventType::Deleted => "DELETED",
                    };
                    let bytes = match table {
                        None => line(t, &e.object),
                        Some(_) => line(t, &shown(info, table, &e.object)),
                    };
                    Some((Ok::<_, std::convert::Infallible>(bytes), Some((w, e.revision, mark_at))))
                }
                Err(err) => {
                    let status = serde_json::to_value(Status::gone(err.to_string())).unwrap_or_default();
                    Some((Ok(line("ERROR", &status)), None))
                }
            }
        }
    });
    let stream =
        futures_util::StreamExt::chain(futures_util::stream::iter(initial.into_iter().map(Ok)), live);
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_response(&Status::internal("building the watch response")));
    Ok(resp)
}

/// How often an idle watch that asked for bookmarks gets one (Kubernetes: about a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// A watch from a revision the store has not reached waits up to 3 s for it (another replica
/// may have written it a moment ago) — for the store's own event at that revision, not by
/// polling — then is refused as Kubernetes refuses it, never a stream that silently shows
/// nothing.
async fn caught_up(st: &AppState, asked: u64) -> Result<(), Status> {
    let revision =
        || tokio::task::block_in_place(|| st.store.revision()).map_err(|e| Status::internal(e.to_string()));
    let current = revision()?;
    if asked <= current {
        return Ok(());
    }
    let mut changes = tokio::task::block_in_place(|| st.store.watch("", current))
        .map_err(|e| Status::internal(e.to_string()))?;
    let reached = async {
        while let Some(Ok(e)) = changes.next().await {
            if e.revision >= asked {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(Duration::from_secs(3), reached).await {
        Ok(true) => Ok(()),
        _ => Err(Status::too_large_resource_version(asked, revision()?)),
    }
}

/// An event's object as the client asked for it: itself, or a one-row Table.
fn shown(info: &tug_api::object::KindInfo, table: Option<super::table::Include>, obj: &Value) -> Value {
    match table {
        Some(include) => super::table::single(info, obj, include),
        None => obj.clone(),
    }
}

/// One line of the stream, `{"type":…,"object":…}`, written without copying the object.
fn line(type_: &str, object: &Value) -> Bytes {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"type\":");
    let _ = serde_json::to_writer(&mut out, type_);
    out.extend_from_slice(b",\"object\":");
    let _ = serde_json::to_writer(&mut out, object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}
