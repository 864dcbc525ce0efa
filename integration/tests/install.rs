//! `make install` into a staging root (DESTDIR), the units through `systemd-analyze verify`,
//! and the installed configuration files read by the daemons.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn build_dir() -> PathBuf {
    tug_integration::bins::path("tug-agent", "tug-agent").parent().unwrap().to_path_buf()
}

fn install(env: &[(&str, &Path)], uninstall: bool) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(tug_integration::probe::workspace_root().join("scripts/install.sh"));
    if uninstall {
        cmd.arg("--uninstall");
    }
    cmd.env("BUILD", build_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn make_install_lays_out_a_staging_root_and_is_idempotent() {
    let dir = tempfile::Builder::new().prefix("tug-install").tempdir().unwrap();
    let stage = dir.path().join("stage");
    let out = install(&[("DESTDIR", &stage)], false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for b in ["tug", "tug-scheduler", "tug-agent", "tug-shim", "tug-supervisor"] {
        assert_eq!(mode(&stage.join("usr/local/bin").join(b)), 0o755, "{b}");
    }
    let unit = std::fs::read_to_string(stage.join("etc/systemd/system/tug-agent.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/tug-agent --config /etc/tug/agent.toml",
        "Delegate=yes",
        "KillMode=process",
        "Restart=on-failure",
        "After=network-online.target tug-scheduler.service",
    ] {
        assert!(unit.lines().any(|l| l == line), "tug-agent.service lacks {line:?}:\n{unit}");
    }
    let sched = std::fs::read_to_string(stage.join("etc/systemd/system/tug-scheduler.service")).unwrap();
    assert!(sched.contains("ExecStart=/usr/local/bin/tug-scheduler --config /etc/tug/scheduler.toml"));
    // The etcd member of a highly available server (provision.sh server --ha) reads what
    // provision.sh writes.
    let etcd = std::fs::read_to_string(stage.join("etc/systemd/system/tug-etcd.service")).unwrap();
    assert!(etcd.lines().any(|l| l == "EnvironmentFile=/etc/tug/etcd.env"), "{etcd}");
    assert_eq!(mode(&stage.join("etc/tug/agent.toml")), 0o600, "the agent's file may hold a token");
    assert_eq!(mode(&stage.join("etc/tug/scheduler.toml")), 0o644);
    assert_eq!(mode(&stage.join("var/lib/tug")), 0o700);
    assert_eq!(mode(&stage.join("var/lib/tug-agent")), 0o700);
    // Again: nothing breaks, and the operator's configuration is kept.
    std::fs::write(stage.join("etc/tug/agent.toml"), "node-name = \"edited\"\n").unwrap();
    let out = install(&[("DESTDIR", &stage)], false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(stage.join("etc/tug/agent.toml")).unwrap(),
        "node-name = \"edited\"\n"
    );
    // PREFIX moves the binaries and what the units run.
    let other = dir.path().join("other");
    let out = install(&[("DESTDIR", &other), ("PREFIX", Path::new("/opt/tug"))], false);
    assert!(out.status.success());
    assert!(other.join("opt/tug/bin/tug-agent").exists());
    assert!(
        std::fs::read_to_string(other.join("etc/systemd/system/tug-agent.service"))
            .unwrap()
            .contains("ExecStart=/opt/tug/bin/tug-agent")
    );
    // Uninstall takes binaries and units, leaves configuration and state.
    let out = install(&[("DESTDIR", &stage)], true);
    assert!(out.status.success());
    assert!(!stage.join("usr/local/bin/tug-agent").exists());
    assert!(!stage.join("etc/systemd/system/tug-agent.service").exists());
    assert!(!stage.join("etc/systemd/system/tug-etcd.service").exists());
    assert!(stage.join("etc/tug/agent.toml").exists() && stage.join("var/lib/tug").exists());
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::Builder::new().prefix("tug-install").tempdir().unwrap();
    let (p, u, c, s) =
        (dir.path().join("p"), dir.path().join("u"), dir.path().join("c"), dir.path().join("s"));
    let out = install(&[("PREFIX", &p), ("UNITDIR", &u), ("CONFDIR", &c), ("STATEDIR", &s)], false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(u.join("tug-scheduler.service"))
        .arg(u.join("tug-agent.service"))
        .arg(u.join("tug-etcd.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
    // The installed configuration files are what the daemons read.
    let agent = Command::new(p.join("bin/tug-agent"))
        .arg("--config")
        .arg(c.join("agent.toml"))
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(agent.status.success(), "{}", String::from_utf8_lossy(&agent.stderr));
    assert!(String::from_utf8_lossy(&agent.stdout).lines().any(|l| l == "socket = \"/run/tug/tug.sock\""));
    let sched = Command::new(p.join("bin/tug-scheduler"))
        .arg("--config")
        .arg(c.join("scheduler.toml"))
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(sched.status.success(), "{}", String::from_utf8_lossy(&sched.stderr));
    assert!(String::from_utf8_lossy(&sched.stdout).contains("data-dir = \"/var/lib/tug\""));
}

#[test]
fn configuration_files_reject_unknown_keys_and_flags_override_them() {
    let dir = tempfile::Builder::new().prefix("tug-config").tempdir().unwrap();
    let f = dir.path().join("agent.toml");
    std::fs::write(&f, "node-name = \"from-file\"\nmax-podz = 10\n").unwrap();
    let agent = tug_integration::bins::path("tug-agent", "tug-agent");
    let out = Command::new(&agent).arg("--config").arg(&f).arg("--print-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key \"max-podz\"") && err.contains(f.to_str().unwrap()), "{err}");
    std::fs::write(&f, "node-name = \"from-file\"\nmax-pods = \"lots\"\n").unwrap();
    let out = Command::new(&agent).arg("--config").arg(&f).arg("--print-config").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-pods"), "a bad value names its key");
    std::fs::write(&f, "node-name = \"from-file\"\nmax-pods = 20\n").unwrap();
    let out = Command::new(&agent)
        .arg("--config")
        .arg(&f)
        .args(["--node-name", "from-flag", "--print-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node-name = \"from-flag\"") && text.contains("max-pods = \"20\""), "{text}");
    let sched = tug_integration::bins::path("tug-scheduler", "tug-scheduler");
    std::fs::write(&f, "socket = \"/x.sock\"\nlisten-adress = \"0.0.0.0:6443\"\n").unwrap();
    let out = Command::new(&sched).arg("--config").arg(&f).arg("--print-config").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key \"listen-adress\""));
}

/// `provision.sh`'s settings are checked before it installs or writes anything: a bad one
/// ends it with a message naming it.
#[test]
fn provision_refuses_bad_settings_by_name_before_touching_the_host() {
    let script = tug_integration::probe::workspace_root().join("scripts/vm/provision.sh");
    let run = |args: &[&str]| {
        let out = Command::new("bash").arg(&script).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let agent = ["agent", "--server", "https://10.0.0.1:6443", "--token", "t"];
    for (extra, says) in [
        (["--scheduler-setting", "leader-elect-lease-duration"], "is not KEY=VALUE"),
        (["--scheduler-setting", "listen=\"x"], "is not KEY=VALUE"),
        (["--scheduler-setting", "Listen=x"], "is not KEY=VALUE"),
        (["--etcd-setting", "HEARTBEAT=5"], "is not ETCD_NAME=VALUE"),
        (["--etcd-setting", "ETCD_HEARTBEAT_INTERVAL=5"], "--etcd-setting is for a server with --ha"),
        (["--scheduler-setting", "listen=x"], "--scheduler-setting is for a server"),
    ] {
        let args: Vec<&str> = agent.iter().chain(extra.iter()).copied().collect();
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
