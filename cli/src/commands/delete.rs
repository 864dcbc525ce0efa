//! `tug delete KIND NAME...` or `tug delete -f FILE`, with kubectl's flags: `--cascade`,
//! `--grace-period`, `--force`, `--now`, `--wait`, `--timeout`.

use super::{kind, load_all, namespace_for};
use crate::client::{CallError, Client};
use hyper::Method;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DeleteArgs {
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// What happens to dependents (a Deployment's ReplicaSets, their pods):
    /// background (deleted after the owner), foreground (deleted before it) or orphan
    /// (kept, without the owner).
    #[arg(long, default_value = "background", value_parser = ["background", "foreground", "orphan", "true", "false"])]
    pub cascade: String,
    /// Seconds a pod is given to stop (its containers get their stop signal, then SIGKILL).
    /// -1: the pod's own terminationGracePeriodSeconds. 0 needs --force.
    #[arg(long = "grace-period", default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Remove the objects from the API at once, without waiting for their node to confirm
    /// that the containers stopped (with --grace-period 0, the default with --force).
    #[arg(long)]
    pub force: bool,
    /// Give pods a grace period of 1 second (stop them now).
    #[arg(long)]
    pub now: bool,
    /// Wait until the objects are gone (a pod: until its node stopped it) before returning.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wait: bool,
    /// How long to wait for the objects to go (0s: as long as it takes).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// KIND NAME... (without -f)
    pub args: Vec<String>,
}

/// kubectl's rules for the grace period: `--now` is 1 s; 0 without `--force` becomes 1;
/// `--force` alone is 0. None: the object's own.
pub fn grace(a: &DeleteArgs) -> Result<Option<i64>, String> {
    let mut g = a.grace_period;
    if a.now {
        if g != -1 {
            return Err("error: --now and --grace-period cannot be specified together".into());
        }
        g = 1;
    }
    if g == 0 && !a.force {
        g = 1;
    }
    if a.force && g < 0 {
        g = 0;
    }
    Ok((g >= 0).then_some(g))
}

pub async fn run(client: &Client, a: &DeleteArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let policy = match a.cascade.as_str() {
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        _ => "Background",
    };
    let grace = grace(a)?;
    let mut targets: Vec<(&'static tug_api::object::KindInfo, Option<String>, String)> = Vec::new();
    if !a.files.is_empty() {
        for o in load_all(&a.files)? {
            let info = o.info();
            let n = namespace_for(info, o.metadata().namespace.as_deref(), ns).map(str::to_string);
            targets.push((info, n, o.metadata().name.clone()));
        }
    } else {
        let (k, names) = a
            .args
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
    if grace == Some(0) {
        eprintln!(
            "Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely."
        );
    }
    let mut failed = false;
    let mut pending = Vec::new();
    for (info, n, name) in targets {
        let resource =
            if info.group.is_empty() { info.kind.to_ascii_lowercase() } else { info.qualified_singular() };
        let mut query = format!("propagationPolicy={policy}");
        if let Some(g) = grace {
            query.push_str(&format!("&gracePeriodSeconds={g}"));
        }
        let path = info.path(n.as_deref(), Some(&name));
        match client.call(Method::DELETE, &format!("{path}?{query}"), "application/json", Vec::new()).await {
            Ok((obj, _)) => {
                let how = if grace == Some(0) { "force deleted" } else { "deleted" };
                println!("{resource} \"{name}\" {how}");
                let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                pending.push((resource, name, path, uid));
            }
            Err(CallError::Server(s)) => {
                eprintln!("Error from server ({}): {}", s.reason, s.message);
                failed = true;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if a.wait && grace != Some(0) {
        let start = Instant::now();
        for (resource, name, path, uid) in pending {
            loop {
                match client.get(&path).await {
                    Err(CallError::Server(s)) if s.code == 404 => break,
                    // The same name again, another object: the one deleted is gone.
                    Ok(o) if o["metadata"]["uid"].as_str() != Some(uid.as_str()) => break,
                    Ok(_) => {}
                    Err(CallError::Server(s)) => {
                        eprintln!("Error from server ({}): {}", s.reason, s.message);
                        failed = true;
                        break;
                    }
                    Err(e) => return Err(e.to_string()),
                }
                if !a.timeout.is_zero() && start.elapsed() >= a.timeout {
                    eprintln!("error: timed out waiting for the condition on {resource}/{name}");
                    return Ok(ExitCode::FAILURE);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DeleteArgs,
    }

    fn g(args: &[&str]) -> Result<Option<i64>, String> {
        let t = T::try_parse_from(std::iter::once("delete").chain(args.iter().copied())).unwrap();
        grace(&t.a)
    }

    #[test]
    fn kubectls_grace_period_rules() {
        assert_eq!(g(&["pod", "x"]), Ok(None));
        assert_eq!(g(&["--grace-period", "5", "pod", "x"]), Ok(Some(5)));
        assert_eq!(g(&["--grace-period", "0", "pod", "x"]), Ok(Some(1)), "0 without --force");
        assert_eq!(g(&["--force", "pod", "x"]), Ok(Some(0)));
        assert_eq!(g(&["--grace-period", "0", "--force", "pod", "x"]), Ok(Some(0)));
        assert_eq!(g(&["--now", "pod", "x"]), Ok(Some(1)));
        assert!(g(&["--now", "--grace-period", "3", "pod", "x"]).is_err());
        let t = T::try_parse_from(["delete", "--wait=false", "pod", "x"]).unwrap();
        assert!(!t.a.wait);
        let t = T::try_parse_from(["delete", "pod", "x"]).unwrap();
        assert!(t.a.wait);
    }
}
