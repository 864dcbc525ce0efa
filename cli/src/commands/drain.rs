//! `tug drain NODE`, as `kubectl drain`: the node is cordoned, then every pod on it is
//! evicted through the eviction API (so PodDisruptionBudgets hold: a refused eviction is
//! retried every 5 s) and waited for until it is gone. Pods that a drain would lose for good
//! are refused unless a flag says so: pods no controller recreates (`--force`), pods with
//! emptyDir data (`--delete-emptydir-data`), DaemonSet pods (`--ignore-daemonsets` leaves them).

use crate::client::Client;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tug_client::{CallError, Method};

#[derive(clap::Args)]
pub struct DrainArgs {
    pub node: String,
    /// Also delete pods that no controller manages (they are not recreated).
    #[arg(long)]
    pub force: bool,
    /// Leave DaemonSet-managed pods (their controller would put them back at once).
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Also delete pods with emptyDir volumes (their data is lost).
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Seconds each pod gets to end; -1: the pod's own terminationGracePeriodSeconds.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub grace_period: i64,
    /// How long to wait before giving up; 0s: forever.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Only pods matching this label selector.
    #[arg(long)]
    pub pod_selector: Option<String>,
    /// Delete instead of evicting: PodDisruptionBudgets are not consulted.
    #[arg(long)]
    pub disable_eviction: bool,
    /// `client` or `server`: print what would be evicted, change nothing.
    #[arg(long, default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
}

/// Why a pod may not be drained, or is left alone; kubectl's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Delete,
    Skip,
    DaemonSet,
    LocalStorage,
    Unmanaged,
}

fn filter(pod: &Value) -> Filter {
    let meta = &pod["metadata"];
    if meta["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Filter::Skip;
    }
    let finished = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let controller =
        meta["ownerReferences"].as_array().and_then(|o| o.iter().find(|o| o["controller"] == true).cloned());
    if controller.as_ref().is_some_and(|c| c["kind"] == "DaemonSet") {
        return Filter::DaemonSet;
    }
    if finished {
        return Filter::Delete;
    }
    let empty_dir =
        pod["spec"]["volumes"].as_array().is_some_and(|v| v.iter().any(|v| v["emptyDir"].is_object()));
    if empty_dir {
        return Filter::LocalStorage;
    }
    if controller.is_none() {
        return Filter::Unmanaged;
    }
    Filter::Delete
}

fn id(pod: &Value) -> (String, String, String) {
    let m = &pod["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&m["namespace"]), s(&m["name"]), s(&m["uid"]))
}

pub async fn run(client: &Client, a: &DrainArgs) -> Result<ExitCode, String> {
    let node = a.node.strip_prefix("node/").or_else(|| a.node.strip_prefix("nodes/")).unwrap_or(&a.node);
    let dry = match a.dry_run.as_str() {
        "none" | "false" => false,
        "client" | "server" | "true" => true,
        other => {
            return Err(format!(
                "error: Invalid dry-run value ({other}). Must be \"none\", \"server\", or \"client\"."
            ));
        }
    };
    if dry {
        println!("node/{node} cordoned (dry run)");
    } else {
        super::modify::cordon(client, node, true).await?;
    }
    let mut q = format!("fieldSelector={}", super::get::encode(&format!("spec.nodeName={node}")));
    if let Some(sel) = &a.pod_selector {
        q.push_str(&format!("&labelSelector={}", super::get::encode(sel)));
    }
    let list = client.get(&format!("/api/v1/pods?{q}")).await.map_err(server)?;
    let pods = list["items"].as_array().cloned().unwrap_or_default();

    let mut refused: Vec<(&str, String)> = Vec::new();
    let mut warned: Vec<(&str, String)> = Vec::new();
    let mut doomed = Vec::new();
    for p in &pods {
        let (ns, name, _) = id(p);
        let who = format!("{ns}/{name}");
        match filter(p) {
            Filter::Skip => {}
            Filter::Delete => doomed.push(p.clone()),
            Filter::DaemonSet if a.ignore_daemonsets => warned.push(("ignoring DaemonSet-managed Pods", who)),
            Filter::DaemonSet => refused
                .push(("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)", who)),
            Filter::LocalStorage if a.delete_emptydir_data => {
                warned.push(("deleting Pods with local storage", who));
                doomed.push(p.clone());
            }
            Filter::LocalStorage => refused.push((
                "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
                who,
            )),
            Filter::Unmanaged if a.force => {
                warned.push(("deleting Pods that declare no controller", who));
                doomed.push(p.clone());
            }
            Filter::Unmanaged => {
                refused.push(("cannot delete Pods that declare no controller (use --force to override)", who))
            }
        }
    }
    if !refused.is_empty() {
        let errors = grouped(&refused);
        eprintln!(
            "error: unable to drain node {node:?} due to error: {errors}, continuing command...\nThere are pending nodes to be drained:\n {node}\n{errors}"
        );
        return Ok(ExitCode::FAILURE);
    }
    if !warned.is_empty() {
        eprintln!("Warning: {}", grouped(&warned));
    }

    let deadline = (!a.timeout.is_zero()).then(|| Instant::now() + a.timeout);
    let jobs = doomed.iter().map(|p| drain_pod(client, a, p, deadline, dry));
    let results = futures_util::future::join_all(jobs).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !failed.is_empty() {
        eprintln!(
            "error: unable to drain node {node:?} due to error: [{}], continuing command...\nThere are pending nodes to be drained:\n {node}",
            failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("node/{node} drained{}", if dry { " (dry run)" } else { "" });
    Ok(ExitCode::SUCCESS)
}

/// kubectl's `reason: ns/a, ns/b; other reason: …`.
fn grouped(items: &[(&str, String)]) -> String {
    let mut reasons: Vec<&str> = items.iter().map(|(r, _)| *r).collect();
    reasons.dedup();
    reasons
        .iter()
        .map(|r| {
            let who: Vec<&str> = items.iter().filter(|(x, _)| x == r).map(|(_, w)| w.as_str()).collect();
            format!("{r}: {}", who.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn server(e: CallError) -> String {
    match e {
        CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => format!("error: {e}"),
    }
}

const RETRY: Duration = Duration::from_secs(5);

/// Evicts (or deletes) one pod, retrying while its budget refuses, then waits for it to go.
async fn drain_pod(
    client: &Client,
    a: &DrainArgs,
    pod: &Value,
    deadline: Option<Instant>,
    dry: bool,
) -> Result<(), String> {
    let (ns, name, uid) = id(pod);
    let pod_path = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let timed_out = || deadline.is_some_and(|d| Instant::now() >= d);
    let global = |what: &str| {
        format!(
            "error when {what} pods/{name:?} -n {ns:?}: global timeout reached: {}",
            humantime::format_duration(a.timeout)
        )
    };
    let mut options = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
    if a.grace_period >= 0 {
        options["gracePeriodSeconds"] = a.grace_period.into();
    }
    if dry {
        options["dryRun"] = json!(["All"]);
    }
    let verb = if a.disable_eviction { "deleting" } else { "evicting" };
    println!("{verb} pod {ns}/{name}");
    loop {
        let sent = if a.disable_eviction {
            client
                .call(
                    Method::DELETE,
                    &pod_path,
                    "application/json",
                    serde_json::to_vec(&options).unwrap_or_default(),
                )
                .await
        } else {
            let body = json!({
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
                "deleteOptions": options,
            });
            client
                .call(
                    Method::POST,
                    &format!("{pod_path}/eviction"),
                    "application/json",
                    serde_json::to_vec(&body).unwrap_or_default(),
                )
                .await
        };
        match sent {
            Ok(_) => break,
            Err(CallError::Server(s)) if s.code == 404 => break,
            Err(CallError::Server(s)) if s.code == 429 => {
                if timed_out() {
                    return Err(global(verb));
                }
                eprintln!("error when {verb} pods/{name:?} -n {ns:?} (will retry after 5s): {}", s.message);
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(format!("error when {verb} pods/{name:?} -n {ns:?}: {}", server(e))),
        }
    }
    if dry {
        println!("pod/{name} {} (dry run)", if a.disable_eviction { "deleted" } else { "evicted" });
        return Ok(());
    }
    // Gone, or replaced by a pod of the same name (another uid).
    loop {
        match client.get(&pod_path).await {
            Err(CallError::Server(s)) if s.code == 404 => break,
            Ok(p) if p["metadata"]["uid"].as_str() != Some(uid.as_str()) => break,
            Ok(_) | Err(_) if timed_out() => return Err(global("waiting for")),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    println!("pod/{name} {}", if a.disable_eviction { "deleted" } else { "evicted" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_sorted_as_kubectl_sorts_them() {
        let owned =
            |kind: &str| json!({"metadata": {"ownerReferences": [{"kind": kind, "controller": true}]}});
        assert_eq!(filter(&owned("ReplicaSet")), Filter::Delete);
        assert_eq!(filter(&owned("DaemonSet")), Filter::DaemonSet);
        assert_eq!(filter(&json!({"metadata": {}})), Filter::Unmanaged);
        assert_eq!(filter(&json!({"metadata": {}, "status": {"phase": "Succeeded"}})), Filter::Delete);
        let mut scratch = owned("ReplicaSet");
        scratch["spec"] = json!({"volumes": [{"name": "s", "emptyDir": {}}]});
        assert_eq!(filter(&scratch), Filter::LocalStorage);
        let mirror = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}});
        assert_eq!(filter(&mirror), Filter::Skip);
        assert_eq!(
            grouped(&[("a", "ns/x".into()), ("a", "ns/y".into()), ("b", "ns/z".into())]),
            "a: ns/x, ns/y; b: ns/z"
        );
    }
}
