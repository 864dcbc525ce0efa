//! `tug auth can-i VERB RESOURCE [-n NS] [--as USER]` and `tug auth whoami`, as kubectl's:
//! a `SelfSubjectAccessReview` / `SelfSubjectReview` asked of the API.

use crate::client::{CallError, Client};
use hyper::Method;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum AuthCmd {
    /// Whether an action is allowed: prints yes or no (exit 0 or 1).
    CanI(CanIArgs),
    /// Who the server takes you for.
    Whoami {
        /// json or yaml (default: a table).
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct CanIArgs {
    /// get, list, watch, create, update, patch, delete, exec's `create`, … or `*`.
    verb: String,
    /// A resource (`pods`, `deployments.apps`, `pods/web` for one name) or a non-resource
    /// URL starting with `/`.
    resource: String,
    /// A subresource: `log`, `exec`, `status`, `scale`.
    #[arg(long)]
    subresource: Option<String>,
    /// In every namespace (cluster-wide).
    #[arg(short = 'A', long = "all-namespaces")]
    all_namespaces: bool,
    /// Ask as this user (impersonation: you need `impersonate` on them).
    #[arg(long = "as")]
    as_user: Option<String>,
    /// Ask as a member of this group too (repeatable; with --as).
    #[arg(long = "as-group")]
    as_groups: Vec<String>,
    /// Print nothing; only the exit status says.
    #[arg(short = 'q', long)]
    quiet: bool,
}

fn server_error(e: CallError) -> String {
    match e {
        CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => e.to_string(),
    }
}

/// The attributes kubectl asks about for `VERB RESOURCE`.
fn resource_attributes(a: &CanIArgs, ns: Option<&str>) -> Value {
    if a.resource.starts_with('/') {
        return json!({"nonResourceAttributes": {"verb": a.verb, "path": a.resource}});
    }
    let (what, name) = a.resource.split_once('/').unwrap_or((a.resource.as_str(), ""));
    let (resource, group, namespaced) = match tug_api::object::lookup(what) {
        Some(info) => (info.plural.to_string(), info.group.to_string(), info.namespaced),
        None => {
            let (r, g) = what.split_once('.').unwrap_or((what, ""));
            (r.to_string(), g.to_string(), true)
        }
    };
    let namespace = if a.all_namespaces || !namespaced { "" } else { ns.unwrap_or("default") };
    json!({"resourceAttributes": {
        "namespace": namespace, "verb": a.verb, "group": group, "resource": resource,
        "subresource": a.subresource.clone().unwrap_or_default(), "name": name,
    }})
}

pub async fn run(client: &Client, cmd: AuthCmd, ns: Option<&str>) -> Result<ExitCode, String> {
    match cmd {
        AuthCmd::CanI(a) => {
            let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": resource_attributes(&a, ns)});
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(u) = &a.as_user {
                headers.push(("impersonate-user", u));
            }
            for g in &a.as_groups {
                headers.push(("impersonate-group", g));
            }
            let (v, _) = client
                .call_with(
                    Method::POST,
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    review.to_string().into_bytes(),
                    &headers,
                )
                .await
                .map_err(server_error)?;
            let allowed = v["status"]["allowed"] == true;
            if !a.quiet {
                match v["status"]["reason"].as_str().filter(|r| !r.is_empty() && !allowed) {
                    Some(r) => println!("no - {r}"),
                    None => println!("{}", if allowed { "yes" } else { "no" }),
                }
            }
            Ok(if allowed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuthCmd::Whoami { output } => {
            let v = whoami(client).await?;
            match output.as_deref() {
                Some("json") => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                Some("yaml") => print!("{}", serde_yaml_ng::to_string(&v).unwrap_or_default()),
                Some(o) => {
                    return Err(format!(
                        "error: unable to match a printer suitable for the output format {o:?}, allowed formats are: json,yaml"
                    ));
                }
                None => {
                    let info = &v["status"]["userInfo"];
                    let groups: Vec<&str> =
                        info["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    let mut rows = vec![("ATTRIBUTE", String::from("VALUE"))];
                    rows.push(("Username", info["username"].as_str().unwrap_or_default().to_string()));
                    if let Some(uid) = info["uid"].as_str() {
                        rows.push(("UID", uid.to_string()));
                    }
                    rows.push(("Groups", format!("[{}]", groups.join(" "))));
                    for (k, val) in rows {
                        println!("{k:<12}{val}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The caller's SelfSubjectReview: who the server takes them for.
pub async fn whoami(client: &Client) -> Result<serde_json::Value, String> {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    client
        .call(
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "application/json",
            review.to_string().into_bytes(),
        )
        .await
        .map(|r| r.0)
        .map_err(server_error)
}
