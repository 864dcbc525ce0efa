//! `tug delete KIND NAME...` or `tug delete -f FILE`.

use super::{kind, load_all, namespace_for};
use crate::client::{CallError, Client};
use hyper::Method;
use std::process::ExitCode;

pub async fn run(
    client: &Client,
    files: &[String],
    args: &[String],
    ns: Option<&str>,
    cascade: &str,
) -> Result<ExitCode, String> {
    let policy = match cascade {
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        _ => "Background",
    };
    let mut targets: Vec<(&'static tug_api::object::KindInfo, Option<String>, String)> = Vec::new();
    if !files.is_empty() {
        for o in load_all(files)? {
            let info = o.info();
            let n = namespace_for(info, o.metadata().namespace.as_deref(), ns).map(str::to_string);
            targets.push((info, n, o.metadata().name.clone()));
        }
    } else {
        let (k, names) = args
            .split_first()
            .ok_or("error: you must provide one or more resources by argument or filename")?;
        if names.is_empty() {
            return Err("error: resource(s) were provided, but no name was specified".into());
        }
        let info = kind(k)?;
        for name in names {
            targets.push((info, namespace_for(info, None, ns).map(str::to_string), name.clone()));
        }
    }
    let mut failed = false;
    for (info, n, name) in targets {
        let resource =
            if info.group.is_empty() { info.kind.to_ascii_lowercase() } else { info.qualified_singular() };
        match client
            .call(
                Method::DELETE,
                &format!("{}?propagationPolicy={policy}", info.path(n.as_deref(), Some(&name))),
                "application/json",
                Vec::new(),
            )
            .await
        {
            Ok(_) => println!("{resource} \"{name}\" deleted"),
            Err(CallError::Server(s)) => {
                eprintln!("Error from server ({}): {}", s.reason, s.message);
                failed = true;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
