//! `tug apply -f`: validate everything, then server-side apply each object: Namespaces first,
//! one after another, so a file may create the namespace its objects live in; then the rest
//! with up to [`IN_FLIGHT`] requests at once (the API server makes concurrent writes durable
//! together), reported in the file's order.

use super::load_all;
use crate::client::{CallError, Client};
use futures_util::StreamExt;
use hyper::Method;
use std::process::ExitCode;
use tug_api::object::Object;

/// Requests in flight after the Namespaces.
const IN_FLIGHT: usize = 16;

pub async fn run(
    client: &Client,
    files: &[String],
    ns: Option<&str>,
    dry: Option<&str>,
) -> Result<ExitCode, String> {
    let objects = load_all(files)?;
    let suffix = match dry {
        None => "",
        Some("server") => " (server dry run)",
        Some("client") => {
            // Checked here (the manifests decoded and validated above), not sent.
            for o in &objects {
                println!("{} configured (dry run)", o.display_name());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(other) => return Err(format!("error: --dry-run must be server or client, not {other:?}")),
    };
    let dry_q = if dry.is_some() { "&dryRun=All" } else { "" };
    let (namespaces, rest): (Vec<Object>, Vec<Object>) =
        objects.into_iter().partition(|o| o.info().kind == "Namespace");
    let apply = |obj: Object| async move {
        let (info, name, target_ns, value) = super::placed(&obj, ns);
        let path = format!("{}?fieldManager=tug{dry_q}", info.path(target_ns, Some(&name)));
        let body = serde_json::to_vec(&value).unwrap_or_default();
        let result = client.call(Method::PATCH, &path, "application/apply-patch+yaml", body).await;
        (obj, result)
    };
    let mut failed = false;
    let mut report = |obj: &Object,
                      r: Result<(serde_json::Value, hyper::HeaderMap), CallError>|
     -> Result<(), String> {
        match r {
            Ok((_, headers)) => {
                let result = headers.get("x-tug-apply").and_then(|v| v.to_str().ok()).unwrap_or("configured");
                println!("{} {result}{suffix}", obj.display_name());
            }
            Err(CallError::Server(s)) => {
                eprintln!(
                    "Error from server ({}): error when applying {}: {}",
                    s.reason,
                    obj.display_name(),
                    s.message
                );
                failed = true;
            }
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    };
    for obj in namespaces {
        let (obj, r) = apply(obj).await;
        report(&obj, r)?;
    }
    let mut results = futures_util::stream::iter(rest).map(apply).buffered(IN_FLIGHT);
    while let Some((obj, r)) = results.next().await {
        report(&obj, r)?;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
