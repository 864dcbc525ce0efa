//! OCI hooks: programs the runtime runs at fixed points of a container's life, each with the
//! container's state as JSON on its stdin and an optional timeout.
//!
//! | hook              | run by                        | where it runs / resolves          | `status` | failure |
//! |-------------------|-------------------------------|-----------------------------------|----------|---------|
//! | `prestart`        | `create`, after the mounts    | the runtime's namespaces          | creating | create fails |
//! | `createRuntime`   | `create`, after `prestart`    | the runtime's namespaces          | creating | create fails |
//! | `createContainer` | the init, before `pivot_root` | the container's namespaces, the host's paths | creating | create fails |
//! | `startContainer`  | the init, after `start`       | the container, its own paths      | created  | the init exits 1 |
//! | `poststart`       | `start`, once the program runs| the runtime's namespaces          | running  | a warning |
//! | `poststop`        | `delete`, once all is gone    | the runtime's namespaces          | stopped  | a warning |
//!
//! Every stage gets the same `id`, `bundle` and `annotations`, and the init's host `pid` (0 once
//! stopped, as runc).

use crate::plan::SpecError;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    pub path: PathBuf,
    /// `args[0]` is the program's argv[0], as in the spec.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<Duration>,
}

/// Every hook of a spec, by the point it runs at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl Hooks {
    /// Whether `create` must stop the init after its mounts for the runtime's hooks.
    pub fn at_create(&self) -> bool {
        !self.prestart.is_empty() || !self.create_runtime.is_empty() || !self.create_container.is_empty()
    }
}

/// Translates `hooks`; every refusal names the hook.
pub fn plan(spec: Option<&oci_spec::runtime::Hooks>) -> Result<Hooks, SpecError> {
    let Some(h) = spec else { return Ok(Hooks::default()) };
    let list = |name: &str, hooks: &Option<Vec<oci_spec::runtime::Hook>>| -> Result<Vec<Hook>, SpecError> {
        let mut out = Vec::new();
        for (i, hook) in hooks.iter().flatten().enumerate() {
            let field = format!("hooks.{name}[{i}]");
            if !hook.path().is_absolute() {
                return Err(SpecError {
                    field: format!("{field}.path"),
                    reason: format!("{:?} must be an absolute path", hook.path()),
                });
            }
            let timeout = match hook.timeout() {
                None => None,
                Some(t) if t > 0 => Some(Duration::from_secs(t.unsigned_abs())),
                Some(t) => {
                    return Err(SpecError {
                        field: format!("{field}.timeout"),
                        reason: format!("{t} must be above 0"),
                    });
                }
            };
            out.push(Hook {
                path: hook.path().clone(),
                args: hook.args().clone().unwrap_or_default(),
                env: hook.env().clone().unwrap_or_default(),
                timeout,
            });
        }
        Ok(out)
    };
    #[allow(deprecated)] // prestart is deprecated in the spec, and still used
    let prestart = list("prestart", h.prestart())?;
    Ok(Hooks {
        prestart,
        create_runtime: list("createRuntime", h.create_runtime())?,
        create_container: list("createContainer", h.create_container())?,
        start_container: list("startContainer", h.start_container())?,
        poststart: list("poststart", h.poststart())?,
        poststop: list("poststop", h.poststop())?,
    })
}

/// The OCI state document `state` with its `status` replaced (the stage a hook runs at).
pub fn with_status(state: &str, status: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(state) {
        Ok(mut doc) => {
            doc["status"] = status.into();
            doc.to_string()
        }
        Err(_) => state.to_string(),
    }
}

/// Runs hooks in order with `state` on their stdin; the first failure stops the rest.
/// `which` names them in the error (`createRuntime`, …).
pub fn run_all(which: &str, hooks: &[Hook], state: &str) -> Result<(), String> {
    for (i, h) in hooks.iter().enumerate() {
        run(h, state).map_err(|e| format!("{which} hook {i} ({}): {e}", h.path.display()))?;
    }
    Ok(())
}

/// Runs every hook of a stage whose failures are warnings (`poststart`, `poststop`): one that
/// fails is said on stderr and the ones after it still run, as the spec words it.
pub fn run_each_warning(which: &str, hooks: &[Hook], state: &str) {
    for (i, h) in hooks.iter().enumerate() {
        if let Err(e) = run(h, state) {
            let msg = format!("{which} hook {i} ({}): {e}", h.path.display());
            eprintln!("{}", crate::runtime::logrus_line("warning", &msg));
        }
    }
}

/// Runs one hook: its stdout is dropped, its stderr quoted in the error when it fails.
pub fn run(h: &Hook, state: &str) -> Result<(), String> {
    let mut cmd = Command::new(&h.path);
    if let Some(arg0) = h.args.first() {
        cmd.arg0(arg0);
    }
    cmd.args(h.args.iter().skip(1)).env_clear();
    for e in &h.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that exits without reading its stdin is fine.
        let _ = stdin.write_all(state.as_bytes());
    }
    let mut stderr = child.stderr.take();
    // The reader ends when the hook (and whatever it left holding stderr) is gone; it is not
    // waited for after a timeout.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(4096).read_to_string(&mut text);
        }
        text
    });
    // The hook's exit arrives from a waiting thread, so a timeout is a bounded receive
    // rather than a poll.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match h.timeout {
        Some(t) => match rx.recv_timeout(t) {
            Ok(s) => s,
            Err(_) => {
                // The waiter still owns the child and reaps it once it is killed.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = rx.recv();
                return Err(format!("timed out after {}s", t.as_secs()));
            }
        },
        None => rx.recv().map_err(|e| e.to_string())?,
    }
    .map_err(|e| e.to_string())?;
    if status.success() {
        return Ok(());
    }
    let text = reader.join().unwrap_or_default();
    let text = text.trim();
    Err(if text.is_empty() { status.to_string() } else { format!("{status}: {text}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(script: &str, timeout: Option<u64>) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["MARK=hook".into()],
            timeout: timeout.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_hook_reads_the_state_and_sees_only_its_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(&format!("cat > {0}; echo \" $MARK ${{HOME:-nohome}}\" >> {0}", out.display()), Some(5));
        run(&h, "{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "{\"id\":\"x\"} hook nohome\n");
    }

    #[test]
    fn failures_and_timeouts_are_errors() {
        assert_eq!(run(&hook("echo broken >&2; exit 3", None), "{}").unwrap_err(), "exit status: 3: broken");
        assert_eq!(run(&hook("sleep 5", Some(1)), "{}").unwrap_err(), "timed out after 1s");
        let err = run_all("poststop", &[hook("exit 0", None), hook("exit 4", None)], "{}").unwrap_err();
        assert_eq!(err, "poststop hook 1 (/bin/sh): exit status: 4");
    }

    #[test]
    fn bad_hooks_are_named() {
        let spec: oci_spec::runtime::Hooks = serde_json::from_value(serde_json::json!({
            "createRuntime": [{"path": "/bin/true"}, {"path": "relative"}]
        }))
        .unwrap();
        assert_eq!(
            plan(Some(&spec)).unwrap_err().to_string(),
            "hooks.createRuntime[1].path: \"relative\" must be an absolute path"
        );
        let spec: oci_spec::runtime::Hooks =
            serde_json::from_value(serde_json::json!({"poststop": [{"path": "/bin/true", "timeout": 0}]}))
                .unwrap();
        assert_eq!(
            plan(Some(&spec)).unwrap_err().to_string(),
            "hooks.poststop[0].timeout: 0 must be above 0"
        );
    }
}
