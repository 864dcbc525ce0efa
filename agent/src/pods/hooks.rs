//! Lifecycle hooks, as kubelet runs them: `postStart` right after a container starts (a
//! failure kills the container, which then restarts under the pod's policy), `preStop` before
//! its stop signal, within the termination grace period. A hook is a command in the
//! container (`exec`), an HTTP GET to it (`httpGet`, success 200–399) or a pause (`sleep`).

use super::probe::{self, Check};
use std::path::Path;
use std::time::Duration;
use tug_api::kinds::pod::{Container, LifecycleHandler, Probe};

/// A hook ready to run.
#[derive(Debug, Clone)]
pub enum Hook {
    Check(Check),
    Sleep(Duration),
}

/// What `h` of container `c` runs, for a pod at `ip` in `netns`, with the container's
/// supervisor `socket` and `bundle`.
pub fn hook(
    c: &Container,
    h: &LifecycleHandler,
    ip: std::net::Ipv4Addr,
    netns: &Path,
    socket: &Path,
    bundle: &Path,
) -> Hook {
    if let Some(s) = &h.sleep {
        return Hook::Sleep(Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0)));
    }
    let as_probe = Probe { exec: h.exec.clone(), http_get: h.http_get.clone(), ..Default::default() };
    Hook::Check(probe::check(c, &as_probe, ip, netns, socket, bundle))
}

/// Runs a hook for at most `limit`: Ok(()) or why it failed.
pub async fn run(hook: Hook, limit: Duration) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep(d.min(limit)).await;
            Ok(())
        }
        Hook::Check(c) => {
            let task = tokio::task::spawn_blocking(move || probe::run(&c, limit));
            match tokio::time::timeout(limit + Duration::from_secs(1), task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("did not finish within {}s", limit.as_secs())),
            }
        }
    }
}

/// kubelet's words for a failed hook: `Exec lifecycle hook ([cmd]) for Container "c" in Pod
/// "p_ns(uid)" failed - error: …` (or `HTTP lifecycle hook (path)`).
pub fn failure_message(
    h: &LifecycleHandler,
    container: &str,
    (ns, pod, uid): (&str, &str, &str),
    err: &str,
) -> String {
    let what = match (&h.exec, &h.http_get) {
        (Some(e), _) => format!("Exec lifecycle hook ({:?})", e.command),
        (_, Some(g)) => format!("HTTP lifecycle hook ({})", g.path.as_deref().unwrap_or("/")),
        _ => "Sleep lifecycle hook".to_string(),
    };
    format!("{what} for Container {container:?} in Pod \"{pod}_{ns}({uid})\" failed - error: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_hook_sleeps_at_most_its_limit_and_messages_name_the_hook() {
        let h: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"sleep": {"seconds": 30}})).unwrap();
        let c = Container::default();
        let hook =
            hook(&c, &h, std::net::Ipv4Addr::LOCALHOST, Path::new("/"), Path::new("/"), Path::new("/"));
        let t = std::time::Instant::now();
        assert!(run(hook, Duration::from_millis(50)).await.is_ok());
        assert!(t.elapsed() < Duration::from_secs(5));
        let e: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["sh", "-c", "exit 1"]}})).unwrap();
        assert_eq!(
            failure_message(&e, "c", ("ns", "p", "u"), "exit code 1"),
            "Exec lifecycle hook ([\"sh\", \"-c\", \"exit 1\"]) for Container \"c\" in Pod \"p_ns(u)\" failed - error: exit code 1"
        );
    }
}
