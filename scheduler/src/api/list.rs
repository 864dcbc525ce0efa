//! List: a streamed response, built from the store's scan one object at a time (the stored
//! JSON copied as it is unless a selector must look inside), so a list of 10,000 pods holds
//! one chunk of them in memory, not the collection three times over. `limit` and
//! `continue` page it as Kubernetes does: a page of `limit` objects, and in its
//! `metadata.continue` an opaque token for the next (the key to go on after, and the list's
//! revision, which every page reports). The response's `metadata` comes after `items` (JSON
//! objects are unordered): the revision and the token are known only at the end.

use super::AppState;
use super::handlers::{Filter, status_response, store_status};
use super::path::{self, Target};
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use tug_api::status::Status;

/// The bytes sent at a time.
const CHUNK: usize = 64 * 1024;

/// Where a page goes on from: the last key sent and the revision of the first page.
#[derive(Debug, PartialEq)]
pub struct Continue {
    pub revision: u64,
    pub after: String,
}

impl Continue {
    pub fn encode(&self) -> String {
        let v = json!({"v": 1, "rv": self.revision, "start": self.after});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// The token of a list under `prefix`; a 400 as Kubernetes words it otherwise.
    pub fn decode(token: &str, prefix: &str) -> Result<Continue, Status> {
        let bad = || Status::bad_request("continue key is not valid: the token was not made for this list");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let (Some(1), Some(revision), Some(after)) = (v["v"].as_u64(), v["rv"].as_u64(), v["start"].as_str())
        else {
            return Err(bad());
        };
        if !after.starts_with(prefix) {
            return Err(bad());
        }
        Ok(Continue { revision, after: after.to_string() })
    }
}

/// One message from the scanning thread.
type Piece = Result<Bytes, Status>;

pub async fn serve(
    st: &AppState,
    target: &Target,
    q: &HashMap<String, String>,
    table: Option<super::table::Include>,
) -> Result<Response, Status> {
    let info = target.info();
    let filter = Filter::from_query(q)?;
    let prefix = path::prefix(info, target.namespace());
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l.parse::<usize>().map_err(|_| {
            Status::bad_request(format!("limit: Invalid value: {l:?}: must be a non-negative integer"))
        })?,
    };
    let from = match q.get("continue").map(String::as_str) {
        None | Some("") => None,
        Some(t) => Some(Continue::decode(t, &prefix)?),
    };
    let head = match table {
        Some(_) => super::table::head(info),
        None => format!(
            "{{\"apiVersion\":{},\"kind\":\"{}List\",\"items\":[",
            json!(info.api_version()),
            info.kind
        ),
    };
    let now = std::time::SystemTime::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(4);
    let store = st.store.clone();
    // A list that judges or reshapes each object reads the decoded copy, when it is at the
    // store's revision; a plain list sends the stored bytes as they are.
    let copy = st.copy.clone().filter(|_| !filter.is_empty() || table.is_some());
    tokio::task::spawn_blocking(move || {
        let mut buf: Vec<u8> = head.into_bytes();
        let (mut sent, mut last, mut more, mut gone) = (0usize, String::new(), false, false);
        // One object to the answer: false once the answer is full or its reader gone.
        let mut add = |key: &str, v: Option<&Value>, bytes: Option<&[u8]>| {
            if limit > 0 && sent == limit {
                more = true;
                return false;
            }
            if v.is_some_and(|v| !filter.matches(v)) {
                return true;
            }
            if sent > 0 {
                buf.push(b',');
            }
            // A table row is made from the object; otherwise the stored bytes go as they are,
            // or the copy's object is written out.
            match (table, v, bytes) {
                (Some(include), Some(v), _) => {
                    buf.extend_from_slice(super::table::row(v, include, now).to_string().as_bytes())
                }
                (_, _, Some(bytes)) => buf.extend_from_slice(bytes),
                (_, v, None) => {
                    let _ = serde_json::to_writer(&mut buf, v.unwrap_or(&Value::Null));
                }
            }
            sent += 1;
            last.clear();
            last.push_str(key);
            if buf.len() >= CHUNK && tx.blocking_send(Ok(Bytes::from(std::mem::take(&mut buf)))).is_err() {
                gone = true;
                return false;
            }
            true
        };
        let after = from.as_ref().map(|c| c.after.as_str());
        let from_copy = copy.and_then(|c| {
            c.scan_fresh(&prefix, after, filter.node_name(), &mut |k, v, bytes| add(k, Some(v), Some(bytes)))
        });
        let result = match from_copy {
            Some(revision) => Ok(revision),
            None => store.scan(&prefix, after, &mut |key, bytes| {
                if filter.is_empty() && table.is_none() {
                    return add(key, None, Some(bytes));
                }
                match serde_json::from_slice::<Value>(bytes) {
                    Ok(v) => add(key, Some(&v), Some(bytes)),
                    Err(_) => true,
                }
            }),
        };
        if gone {
            return;
        }
        let revision = match result {
            Ok(r) => from.as_ref().map_or(r, |c| c.revision),
            Err(e) => {
                let _ = tx.blocking_send(Err(store_status(e, info, "")));
                return;
            }
        };
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if more {
            meta["continue"] = Continue { revision, after: last }.encode().into();
        }
        buf.extend_from_slice(format!("],\"metadata\":{meta}}}").as_bytes());
        let _ = tx.blocking_send(Ok(Bytes::from(buf)));
    });
    // The first piece decides the answer: an error before anything was sent is a Status.
    let first = match rx.recv().await {
        Some(Ok(b)) => b,
        Some(Err(s)) => return Err(s),
        None => return Err(Status::internal("the list ended before it began")),
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await? {
            Ok(b) => Some((Ok::<_, std::io::Error>(b), rx)),
            // Cut mid-way: the client sees a truncated body, never a list that looks whole.
            Err(s) => Some((Err(std::io::Error::other(s.message)), rx)),
        }
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(first)]), rest);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_response(&Status::internal("building the list response"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_belong_to_their_list() {
        let c = Continue { revision: 42, after: "/pods/default/web-7".into() };
        let t = c.encode();
        assert_eq!(Continue::decode(&t, "/pods/").unwrap(), c);
        assert_eq!(Continue::decode(&t, "/pods/default/").unwrap(), c);
        assert_eq!(Continue::decode(&t, "/configmaps/").unwrap_err().code, 400);
        assert_eq!(Continue::decode("not-a-token", "/pods/").unwrap_err().code, 400);
    }
}
