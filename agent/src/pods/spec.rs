//! A container of a pod → an OCI runtime spec (`config.json`), purely.
//!
//! Kubernetes' rules: the command is `command` + `args`, else the image's Entrypoint with
//! `args` or its Cmd; env is the image's, then `envFrom`, then `env` (resolved by the caller);
//! the user is the securityContext's (container over pod), else the image's; capabilities are
//! containerd's default set with `add`/`drop` applied (`ALL` works in both); `privileged`
//! gives every capability, every device and no seccomp filter; otherwise the default seccomp
//! profile applies. Limits become cgroup limits under the pod's cgroup.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tug_api::kinds::pod::{Container, Pod};
use tug_images::manifest::ImageConfig;

/// containerd's (and Docker's) default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux 6.x knows, for privileged containers.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Everything about the pod's sandbox a container spec needs.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The pod's network namespace (for a host-network pod the node's; empty: the agent's
    /// own).
    pub netns: PathBuf,
    /// A host-network pod shares the node's network and UTS namespaces (so its hostname).
    pub host_network: bool,
    pub hostname: String,
    /// The pod's directory on the node (`etc-hosts`, `hostname`, `resolv.conf` live there).
    pub pod_dir: PathBuf,
    /// `<cgroup parent>/pod<uid>` (relative to the agent's cgroup).
    pub cgroup: String,
    /// The PID namespace the pod's containers share (`shareProcessNamespace`), its pause's.
    pub pid_ns: Option<PathBuf>,
}

/// The process a container runs: argv from the pod spec and the image config.
pub fn argv(c: &Container, image: &ImageConfig) -> Result<Vec<String>, String> {
    let entry = image.config.entrypoint.clone().unwrap_or_default();
    let cmd = image.config.cmd.clone().unwrap_or_default();
    let argv = if !c.command.is_empty() {
        c.command.iter().chain(&c.args).cloned().collect()
    } else if !c.args.is_empty() {
        entry.into_iter().chain(c.args.iter().cloned()).collect()
    } else {
        entry.into_iter().chain(cmd).collect::<Vec<_>>()
    };
    if argv.is_empty() {
        return Err(format!("container {}: no command given and the image has no Entrypoint or Cmd", c.name));
    }
    Ok(argv)
}

/// The environment: the image's, then `resolved` (envFrom and env, in that order), later
/// names replacing earlier ones in place.
pub fn environment(image: &ImageConfig, hostname: &str, resolved: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for e in image.config.env.iter().flatten() {
        match e.split_once('=') {
            Some((k, v)) => set(k, v),
            None => set(e, ""),
        }
    }
    set("HOSTNAME", hostname);
    for (k, v) in resolved {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The user: `(uid, gid, extra gids)` from the securityContexts, else the image's `User`
/// (`name`, `uid`, `uid:gid`, `name:group`, looked up in the rootfs' passwd and group).
pub fn user(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    rootfs: &Path,
) -> Result<(u32, u32, Vec<u32>), String> {
    let psc = pod.spec.security_context.as_ref();
    let csc = c.security_context.as_ref();
    let run_as = csc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user));
    let run_as_group = csc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group));
    let (mut uid, mut gid) = image_user(image.config.user.as_deref().unwrap_or(""), rootfs)?;
    if let Some(u) = run_as {
        uid = u32::try_from(u).map_err(|_| format!("container {}: runAsUser {u} out of range", c.name))?;
        if run_as_group.is_none() && image.config.user.as_deref().is_none_or(|u| !u.contains(':')) {
            gid = passwd_gid(rootfs, uid).unwrap_or(0);
        }
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).map_err(|_| format!("container {}: runAsGroup {g} out of range", c.name))?;
    }
    let non_root =
        csc.and_then(|s| s.run_as_non_root).or(psc.and_then(|s| s.run_as_non_root)).unwrap_or(false);
    if non_root && uid == 0 {
        return Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{}_{}\", container: {})",
            pod.metadata.name,
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            c.name
        ));
    }
    let mut extra: Vec<u32> = psc
        .map(|s| s.supplemental_groups.iter().filter_map(|g| u32::try_from(*g).ok()).collect())
        .unwrap_or_default();
    if let Some(fs) = psc.and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok()) {
        extra.push(fs);
    }
    Ok((uid, gid, extra))
}

/// The image's `/etc/passwd` or `/etc/group` at most this large.
const ACCOUNTS_MAX: u64 = 4 << 20;

/// A file of the image read beneath its rootfs (`RESOLVE_IN_ROOT`: a symlink to a node file
/// is looked up in the image), regular files only (a FIFO would block the agent, `/dev/zero`
/// never end), at most [`ACCOUNTS_MAX`] bytes. Anything else reads as absent.
fn image_file(rootfs: &Path, rel: &str) -> Option<String> {
    let root = tug_beneath::Root::open_dir(rootfs, tug_beneath::Scope::InRoot).ok()?;
    let bytes = root.read_regular(Path::new(rel), ACCOUNTS_MAX).ok()?;
    String::from_utf8(bytes).ok()
}

fn lookup(rootfs: &Path, file: &str, name: &str, field: usize) -> Option<u32> {
    let text = image_file(rootfs, file)?;
    text.lines().find_map(|l| {
        let parts: Vec<&str> = l.split(':').collect();
        (parts.first() == Some(&name)).then(|| parts.get(field)?.parse().ok()).flatten()
    })
}

fn passwd_gid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = image_file(rootfs, "etc/passwd")?;
    text.lines().find_map(|l| {
        let p: Vec<&str> = l.split(':').collect();
        (p.get(2)?.parse::<u32>().ok()? == uid).then(|| p.get(3)?.parse().ok()).flatten()
    })
}

fn image_user(spec: &str, rootfs: &Path) -> Result<(u32, u32), String> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => lookup(rootfs, "etc/passwd", u, 2)
            .ok_or_else(|| format!("the image's user {u:?} is not in its /etc/passwd"))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(rootfs, "etc/group", g, 2)
                .ok_or_else(|| format!("the image's group {g:?} is not in its /etc/group"))?,
        },
        None => passwd_gid(rootfs, uid).unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The capabilities of a bounding set (`CapBnd`'s bits), in `ALL_CAPS`' (bit) order.
pub fn caps_in(bounding: u64) -> Vec<String> {
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// What "every capability" is on this node: those the agent itself holds in its bounding set
/// (as containerd and CRI-O do), so a privileged container starts where the host withholds
/// some (a capset of one the runtime does not hold fails).
fn held() -> &'static [String] {
    static HELD: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let bounding = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(u64::MAX);
        caps_in(bounding)
    })
}

/// The capability set after the securityContext's `add` and `drop`.
pub fn capabilities(c: &Container) -> Vec<String> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged).unwrap_or(false) {
        return held().to_vec();
    }
    let norm = |s: &str| {
        let s = s.to_ascii_uppercase();
        if s.starts_with("CAP_") { s } else { format!("CAP_{s}") }
    };
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let drop: Vec<String> = caps.map(|c| c.drop.iter().map(|d| norm(d)).collect()).unwrap_or_default();
    let add: Vec<String> = caps.map(|c| c.add.iter().map(|d| norm(d)).collect()).unwrap_or_default();
    let mut out: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).filter(|c| !drop.contains(c)).collect()
    };
    if add.iter().any(|a| a == "CAP_ALL") {
        return held().to_vec();
    }
    for a in add {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// `linux.resources` from requests and limits.
pub fn resources(c: &Container) -> Value {
    let mut r = json!({});
    let Some(res) = &c.resources else { return r };
    if let Some(cpu) = res.limits.get("cpu") {
        let millis = cpu.millis();
        let quota = (millis * 100).max(1000);
        r["cpu"]["quota"] = json!(u64::try_from(quota).unwrap_or(u64::MAX));
        r["cpu"]["period"] = json!(100_000);
    }
    if let Some(cpu) = res.requests.get("cpu").or_else(|| res.limits.get("cpu")) {
        let shares = (cpu.millis() * 1024 / 1000).max(2);
        r["cpu"]["shares"] = json!(u64::try_from(shares).unwrap_or(u64::MAX));
    }
    if let Some(mem) = res.limits.get("memory") {
        r["memory"]["limit"] = json!(i64::try_from(mem.value()).unwrap_or(i64::MAX));
    }
    r
}

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The whole `config.json`.
#[allow(clippy::too_many_arguments)]
pub fn oci_spec(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    rootfs: &Path,
    sandbox: &Sandbox,
    container_id: &str,
    resolved_env: &[(String, String)],
    volume_mounts: Vec<Value>,
    seccomp: impl Fn(&[String], Option<&str>) -> Result<Value, String>,
) -> Result<Value, String> {
    let args = argv(c, image)?;
    let (uid, gid, extra) = user(pod, c, image, rootfs)?;
    let caps = capabilities(c);
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let no_new_privs = sc.and_then(|s| s.allow_privilege_escalation).is_some_and(|a| !a) && !privileged;
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| image.config.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or("/".into());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        // The container's own cgroup, as containerd gives it: runtimes (the JVM, Go's, .NET's)
        // read their limits there, and an in-place resize is visible from inside.
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    for (file, dest) in
        [("hosts", "/etc/hosts"), ("hostname", "/etc/hostname"), ("resolv.conf", "/etc/resolv.conf")]
    {
        let src = sandbox.pod_dir.join(file);
        if src.exists() {
            mounts.push(
                json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"]}),
            );
        }
    }
    mounts.extend(volume_mounts);
    let caps_json = json!(caps);
    // hostPID and hostIPC: the node's namespaces (the runtime's own), so none is made.
    let mut namespaces = vec![json!({"type": "mount"}), json!({"type": "cgroup"})];
    match &sandbox.pid_ns {
        _ if pod.spec.host_pid == Some(true) => {}
        Some(path) => namespaces.push(json!({"type": "pid", "path": path})),
        None => namespaces.push(json!({"type": "pid"})),
    }
    if pod.spec.host_ipc != Some(true) {
        namespaces.push(json!({"type": "ipc"}));
    }
    if !sandbox.host_network {
        namespaces.push(json!({"type": "uts"}));
    }
    if !sandbox.netns.as_os_str().is_empty() {
        namespaces.push(json!({"type": "network", "path": sandbox.netns}));
    }
    let mut linux = json!({
        "cgroupsPath": format!("{}/{container_id}", sandbox.cgroup),
        "namespaces": namespaces,
        "resources": resources(c),
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED);
        linux["readonlyPaths"] = json!(READONLY);
        // A container's profile over the pod's: RuntimeDefault (or none) is the default filter
        // for these capabilities, Localhost the node's file, Unconfined no filter.
        let profile = sc.and_then(|s| s.seccomp_profile.as_ref()).or(pod
            .spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref()));
        match profile.map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())) {
            Some(("Unconfined", _)) => {}
            Some(("Localhost", Some(file))) => linux["seccomp"] = seccomp(&caps, Some(file))?,
            _ => linux["seccomp"] = seccomp(&caps, None)?,
        }
        linux["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    } else {
        linux["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    }
    let (apparmor, selinux) = confinement(pod, c);
    if let Some((_, mount_label)) = selinux.as_ref() {
        linux["mountLabel"] = json!(mount_label);
    }
    let sysctls: serde_json::Map<String, Value> = pod
        .spec
        .security_context
        .iter()
        .flat_map(|s| &s.sysctls)
        .map(|s| (s.name.clone(), Value::String(s.value.clone())))
        .collect();
    if !sysctls.is_empty() {
        linux["sysctl"] = Value::Object(sysctls);
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty.unwrap_or(false),
            "user": {"uid": uid, "gid": gid, "additionalGids": extra},
            "args": args,
            "env": environment(image, &sandbox.hostname, resolved_env),
            "cwd": cwd,
            "capabilities": {"bounding": caps_json, "effective": caps_json, "permitted": caps_json},
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": rootfs, "readonly": sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false)},
        "mounts": mounts,
        "linux": linux,
        "annotations": {
            "io.kubernetes.pod.name": pod.metadata.name,
            "io.kubernetes.pod.namespace": pod.metadata.namespace.clone().unwrap_or_default(),
            "io.kubernetes.container.name": c.name,
        },
    });
    if !sandbox.host_network {
        spec["hostname"] = sandbox.hostname.clone().into();
    }
    if let Some(profile) = apparmor {
        spec["process"]["apparmorProfile"] = json!(profile);
    }
    if let Some((label, _)) = selinux {
        spec["process"]["selinuxLabel"] = json!(label);
    }
    Ok(spec)
}

/// The AppArmor profile and SELinux labels (process, mount) the pod asks for, a container's
/// own settings over the pod's. `RuntimeDefault` and `Unconfined` ask for no profile (the
/// runtime has no default profile to give, as containerd gives none where AppArmor is off);
/// a `Localhost` profile or any SELinux option is passed on, and the runtime refuses what it
/// cannot apply rather than run the container unconfined.
fn confinement(pod: &Pod, c: &Container) -> (Option<String>, Option<(String, String)>) {
    let psc = pod.spec.security_context.as_ref();
    let csc = c.security_context.as_ref();
    let armor =
        csc.and_then(|s| s.app_armor_profile.as_ref()).or(psc.and_then(|s| s.app_armor_profile.as_ref()));
    let apparmor = armor.filter(|a| a.type_ == "Localhost").and_then(|a| a.localhost_profile.clone());
    let se = csc.and_then(|s| s.se_linux_options.as_ref()).or(psc.and_then(|s| s.se_linux_options.as_ref()));
    let selinux = se
        .filter(|o| o.user.is_some() || o.role.is_some() || o.type_.is_some() || o.level.is_some())
        .map(|o| {
            let part = |v: &Option<String>, default: &str| {
                v.clone().filter(|v| !v.is_empty()).unwrap_or(default.into())
            };
            let (user, level) = (part(&o.user, "system_u"), part(&o.level, "s0"));
            let process =
                format!("{user}:{}:{}:{level}", part(&o.role, "system_r"), part(&o.type_, "container_t"));
            (process, format!("{user}:object_r:container_file_t:{level}"))
        });
    (apparmor, selinux)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::pod::{Capabilities, SecurityContext};

    fn image(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let mut i = ImageConfig::default();
        i.config.entrypoint = entry.map(|e| e.iter().map(|s| s.to_string()).collect());
        i.config.cmd = cmd.map(|e| e.iter().map(|s| s.to_string()).collect());
        i
    }

    fn container(command: &[&str], args: &[&str]) -> Container {
        Container {
            name: "c".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = image(Some(&["/entry"]), Some(&["cmd"]));
        assert_eq!(argv(&container(&[], &[]), &img).unwrap(), ["/entry", "cmd"]);
        assert_eq!(argv(&container(&[], &["a"]), &img).unwrap(), ["/entry", "a"]);
        assert_eq!(argv(&container(&["/bin/sh"], &[]), &img).unwrap(), ["/bin/sh"]);
        assert_eq!(argv(&container(&["/bin/sh"], &["-c", "x"]), &img).unwrap(), ["/bin/sh", "-c", "x"]);
        assert!(argv(&container(&[], &[]), &image(None, None)).unwrap_err().contains("no command"));
    }

    #[test]
    fn env_layers_replace_in_place() {
        let mut img = image(None, None);
        img.config.env = Some(vec!["PATH=/img".into(), "A=1".into()]);
        let env = environment(&img, "web-1", &[("A".into(), "2".into()), ("B".into(), "3".into())]);
        assert_eq!(env, ["PATH=/img", "A=2", "HOSTNAME=web-1", "B=3"]);
    }

    #[test]
    fn capabilities_add_drop_all_privileged() {
        let mut c = container(&["x"], &[]);
        assert_eq!(capabilities(&c).len(), DEFAULT_CAPS.len());
        c.security_context = Some(Box::new(SecurityContext {
            capabilities: Some(Capabilities { add: vec!["NET_ADMIN".into()], drop: vec!["ALL".into()] }),
            ..Default::default()
        }));
        assert_eq!(capabilities(&c), ["CAP_NET_ADMIN"]);
        c.security_context = Some(Box::new(SecurityContext { privileged: Some(true), ..Default::default() }));
        assert!(capabilities(&c).contains(&"CAP_SYS_ADMIN".to_string()));
        // Privileged is what the agent holds: a host whose bounding set lacks
        // CAP_SYS_RESOURCE (bit 24, as these machines') gives every other one.
        let without = caps_in(0x1ff_feff_ffff);
        assert_eq!(without.len(), ALL_CAPS.len() - 1);
        assert!(
            !without.contains(&"CAP_SYS_RESOURCE".to_string()) && without.contains(&"CAP_BPF".to_string())
        );
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let bnd = own.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim().to_string();
        assert_eq!(capabilities(&c), caps_in(u64::from_str_radix(&bnd, 16).unwrap()));
    }

    /// A container's seccomp profile over the pod's: the default filter, none, or the node's file.
    #[test]
    fn seccomp_profiles_default_unconfined_and_localhost() {
        use tug_api::kinds::pod::{PodSecurityContext, SeccompProfile};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
        let sandbox = Sandbox {
            netns: "/run/tug/netns/x".into(),
            host_network: false,
            hostname: "p".into(),
            pod_dir: dir.path().join("pod"),
            cgroup: "pods/podx".into(),
            pid_ns: None,
        };
        let profile = |t: &str, l: Option<&str>| SeccompProfile {
            type_: t.into(),
            localhost_profile: l.map(Into::into),
        };
        let filter = |caps: &[String], local: Option<&str>| -> Result<Value, String> {
            Ok(json!({"from": local.unwrap_or("default"), "caps": caps.len()}))
        };
        let mut pod = Pod::default();
        let mut c = container(&["x"], &[]);
        let spec = |pod: &Pod, c: &Container| {
            oci_spec(pod, c, &image(None, None), dir.path(), &sandbox, "id", &[], Vec::new(), filter).unwrap()
        };
        assert_eq!(spec(&pod, &c)["linux"]["seccomp"]["from"], "default");
        pod.spec.security_context = Some(Box::new(PodSecurityContext {
            seccomp_profile: Some(profile("Unconfined", None)),
            ..Default::default()
        }));
        assert!(spec(&pod, &c)["linux"]["seccomp"].is_null(), "the pod's Unconfined");
        c.security_context = Some(Box::new(SecurityContext {
            seccomp_profile: Some(profile("Localhost", Some("p/audit.json"))),
            ..Default::default()
        }));
        assert_eq!(
            spec(&pod, &c)["linux"]["seccomp"]["from"],
            "p/audit.json",
            "the container's over the pod's"
        );
        c.security_context = Some(Box::new(SecurityContext {
            seccomp_profile: Some(profile("RuntimeDefault", None)),
            ..Default::default()
        }));
        assert_eq!(spec(&pod, &c)["linux"]["seccomp"]["from"], "default");
        // shareProcessNamespace: the pause's PID namespace is joined, not a new one made.
        let pid_ns = |s: &Value| {
            s["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "pid").cloned()
        };
        assert_eq!(pid_ns(&spec(&pod, &c)), Some(json!({"type": "pid"})));
        let shared = Sandbox { pid_ns: Some("/proc/7/ns/pid".into()), ..sandbox.clone() };
        let s = oci_spec(&pod, &c, &image(None, None), dir.path(), &shared, "id", &[], Vec::new(), filter)
            .unwrap();
        assert_eq!(pid_ns(&s), Some(json!({"type": "pid", "path": "/proc/7/ns/pid"})));
    }

    /// An image whose `/etc/passwd` links to the node's, and whose `/etc/group` is a FIFO:
    /// the node's users do not leak into the lookup and the agent does not block.
    #[test]
    fn image_accounts_are_read_beneath_the_rootfs_only() {
        let dir = tempfile::Builder::new().prefix("tug-rootfs").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("etc/group"), nix::sys::stat::Mode::from_bits_truncate(0o644))
            .unwrap();
        let node_user = std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_string();
        let pod = Pod::default();
        let c = container(&["x"], &[]);
        let mut img = image(None, None);
        img.config.user = Some(node_user.clone());
        let e = user(&pod, &c, &img, dir.path()).unwrap_err();
        assert!(e.contains(&node_user) && e.contains("not in its /etc/passwd"), "{e}");
        img.config.user = Some("0:wheel".into());
        assert!(user(&pod, &c, &img, dir.path()).unwrap_err().contains("not in its /etc/group"));
        std::fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("etc/passwd")).unwrap();
        img.config.user = Some("web".into());
        assert!(user(&pod, &c, &img, dir.path()).is_err());
    }

    #[test]
    fn users_from_context_and_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nweb:x:100:101::/:/bin/sh\n")
            .unwrap();
        std::fs::write(dir.path().join("etc/group"), "web:x:101:\nstaff:x:50:\n").unwrap();
        let pod = Pod::default();
        let mut img = image(None, None);
        let c = container(&["x"], &[]);
        assert_eq!(user(&pod, &c, &img, dir.path()).unwrap(), (0, 0, vec![]));
        img.config.user = Some("web".into());
        assert_eq!(user(&pod, &c, &img, dir.path()).unwrap(), (100, 101, vec![]));
        img.config.user = Some("web:staff".into());
        assert_eq!(user(&pod, &c, &img, dir.path()).unwrap(), (100, 50, vec![]));
        img.config.user = Some("nobody".into());
        assert!(user(&pod, &c, &img, dir.path()).unwrap_err().contains("nobody"));
        img.config.user = None;
        let mut c2 = c.clone();
        c2.security_context =
            Some(Box::new(SecurityContext { run_as_non_root: Some(true), ..Default::default() }));
        assert!(user(&pod, &c2, &img, dir.path()).unwrap_err().contains("runAsNonRoot"));
        c2.security_context = Some(Box::new(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(100),
            ..Default::default()
        }));
        assert_eq!(user(&pod, &c2, &img, dir.path()).unwrap(), (100, 101, vec![]));
    }

    #[test]
    fn limits_become_cgroup_limits() {
        let c: Container = serde_json::from_value(json!({"name": "c", "image": "x",
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}}))
        .unwrap();
        let r = resources(&c);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["shares"], 256);
        assert_eq!(r["memory"]["limit"], 64 << 20);
    }
}
