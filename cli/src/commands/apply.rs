//! `tug apply -f`: validate everything, then server-side apply each object in order
//! (Namespaces first, so a file may create the namespace its objects live in).

use super::{load_all, namespace_for};
use crate::client::{CallError, Client};
use hyper::Method;
use std::process::ExitCode;

pub async fn run(client: &Client, files: &[String], ns: Option<&str>) -> Result<ExitCode, String> {
    let mut objects = load_all(files)?;
    objects.sort_by_key(|o| o.info().kind != "Namespace");
    let mut failed = false;
    for obj in objects {
        let info = obj.info();
        let name = obj.metadata().name.clone();
        let target_ns = namespace_for(info, obj.metadata().namespace.as_deref(), ns);
        let mut value = obj.to_value();
        if let Some(n) = target_ns {
            value["metadata"]["namespace"] = n.into();
        }
        let path = format!("{}?fieldManager=tug", info.path(target_ns, Some(&name)));
        let body = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        match client.call(Method::PATCH, &path, "application/apply-patch+yaml", body).await {
            Ok((_, headers)) => {
                let result = headers.get("x-tug-apply").and_then(|v| v.to_str().ok()).unwrap_or("configured");
                println!("{} {result}", obj.display_name());
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
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
