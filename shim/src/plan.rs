//! The pure half of `create`: an OCI spec and its bundle path in, the exact steps the
//! container's init will take out — or an error naming the spec field at fault. Nothing here
//! touches the host, so every translation is unit-tested without root.

use crate::mounts::{DeviceNode, MountStep, default_devices, parse_options, propagation_flags};
use crate::terminal::WinSize;
use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::SFlag;
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, LinuxResources, PosixRlimitType, Spec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A spec that cannot be run, with the field that says so.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), reason: reason.into() }
}

/// Everything the init does, in data.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub root_propagation: MsFlags,
    pub mounts: Vec<PlannedMount>,
    /// Device nodes to create, when `/dev` is a fresh tmpfs.
    pub devices: Vec<DeviceNode>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub namespaces: Namespaces,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctls: Vec<(String, String)>,
    pub process: ProcessPlan,
    pub cgroups_path: Option<PathBuf>,
    pub resources: LinuxResources,
    pub annotations: HashMap<String, String>,
    pub seccomp: Option<crate::seccomp::SeccompPlan>,
    /// The id maps of a new user namespace, written by the parent after the clone.
    pub user_ns: Option<IdMaps>,
    pub hooks: crate::hooks::Hooks,
    /// `--no-pivot`: enter the rootfs by moving it over `/` and `chroot`, not `pivot_root`.
    pub no_pivot: bool,
    /// No mount namespace of its own: nothing is mounted and the rootfs is entered by chroot.
    pub inherit_mounts: bool,
    /// `linux.timeOffsets` as `/proc/self/timens_offsets` lines (`monotonic 86400 0`), written
    /// into the new time namespace before its first process.
    pub time_offsets: Vec<String>,
}

/// `linux.uidMappings` and `linux.gidMappings` as `/proc/<pid>/{uid,gid}_map` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uid_map: String,
    pub gid_map: String,
}

impl IdMaps {
    /// The host id that `id` in the container maps to, if any.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        host_id(&self.uid_map, id)
    }

    pub fn host_gid(&self, id: u32) -> Option<u32> {
        host_id(&self.gid_map, id)
    }
}

fn host_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let v: Vec<u32> = l.split(' ').filter_map(|x| x.parse().ok()).collect();
        let (inside, outside, size) = (*v.first()?, *v.get(1)?, *v.get(2)?);
        (id >= inside && id - inside < size).then(|| outside + (id - inside))
    })
}

fn user_namespace(linux: &oci_spec::runtime::Linux, ns: &Namespaces) -> Result<Option<IdMaps>, SpecError> {
    let new_user = ns.clone.contains(CloneFlags::CLONE_NEWUSER);
    let uids = linux.uid_mappings().clone().unwrap_or_default();
    let gids = linux.gid_mappings().clone().unwrap_or_default();
    if !new_user {
        if !uids.is_empty() {
            return Err(bad("linux.uidMappings", "needs a new user namespace in linux.namespaces"));
        }
        if !gids.is_empty() {
            return Err(bad("linux.gidMappings", "needs a new user namespace in linux.namespaces"));
        }
        return Ok(None);
    }
    if let Some((flag, _)) = ns.join.first() {
        return Err(bad(
            "linux.namespaces",
            format!(
                "joining a {flag:?} namespace by path together with a new user namespace is not supported"
            ),
        ));
    }
    let lines = |field: &str, maps: &[oci_spec::runtime::LinuxIdMapping]| -> Result<String, SpecError> {
        if maps.is_empty() {
            return Err(bad(field, "required with a new user namespace"));
        }
        if maps.len() > 340 {
            return Err(bad(field, "the kernel takes at most 340 ranges"));
        }
        let mut out = String::new();
        for (i, m) in maps.iter().enumerate() {
            if m.size() == 0 {
                return Err(bad(format!("{field}[{i}].size"), "must be above 0"));
            }
            out += &format!("{} {} {}\n", m.container_id(), m.host_id(), m.size());
        }
        Ok(out)
    };
    Ok(Some(IdMaps {
        uid_map: lines("linux.uidMappings", &uids)?,
        gid_map: lines("linux.gidMappings", &gids)?,
    }))
}

/// A spec mount: an ordinary one, or a `cgroup` mount that shows the container's own cgroup
/// directories (filled in once the cgroup is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedMount {
    Plain(MountStep),
    Cgroup { destination: PathBuf, readonly: bool },
}

/// Which namespaces are new and which are joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    /// New namespaces made by the clone of the init.
    pub clone: CloneFlags,
    /// A new cgroup namespace, unshared by the init once it is in its cgroup.
    pub new_cgroup: bool,
    /// A new time namespace (unshared by the parent before the clone).
    pub new_time: bool,
    /// Existing namespaces to join, by path.
    pub join: Vec<(CloneFlags, PathBuf)>,
}

/// The container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub rlimits: Vec<(Resource, u64, u64)>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
    /// `None` keeps the runtime's own capabilities (the spec has no `capabilities`).
    pub caps: Option<CapsPlan>,
    /// A pseudo-terminal for stdio (`process.terminal`), its master sent to the console socket.
    pub terminal: bool,
    /// `process.consoleSize`.
    pub console_size: Option<WinSize>,
    /// Descriptors 3 .. 3+N the caller passed that the program keeps (`--preserve-fds N`).
    pub preserve_fds: u32,
    /// `linux.personality`'s domain (`personality(2)`'s persona), set just before the exec.
    pub personality: Option<u64>,
}

/// The five capability sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapsPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

impl CapsPlan {
    /// The set for one of `caps`' kinds.
    pub fn set(&self, which: CapSet) -> &CapsHashSet {
        match which {
            CapSet::Bounding => &self.bounding,
            CapSet::Effective => &self.effective,
            CapSet::Permitted => &self.permitted,
            CapSet::Inheritable => &self.inheritable,
            CapSet::Ambient => &self.ambient,
        }
    }
}

/// Whether a spec (as JSON) would be accepted by `create` for the bundle `bundle`: the same
/// translation, for a caller (the agent) that wants a spec's refusal before it starts
/// anything, with the runtime's own message.
pub fn check(spec: &serde_json::Value, bundle: &Path) -> Result<(), String> {
    let spec: Spec = tug_api::from_value_ref(spec).map_err(|e| format!("the OCI spec: {e}"))?;
    plan(&spec, bundle).map(drop).map_err(|e| e.to_string())
}

/// Reads a bundle's `config.json`. A field the spec does not allow is refused with its path
/// and the decoder's reason (`process.capabilities.bounding[0]: unknown variant
/// `CAP_BOGUS`…`), not a bare "serde failed".
pub fn load_spec(path: &Path) -> Result<Spec, crate::runtime::RuntimeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::runtime::RuntimeError::Usage(format!("{}: {e}", path.display())))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        crate::runtime::RuntimeError::Usage(format!("{}: {at}: {}", path.display(), e.inner()))
    })
}

/// Fields this runtime cannot honour are refused by name, never ignored.
fn unsupported(linux: &oci_spec::runtime::Linux) -> Result<(), SpecError> {
    if linux.intel_rdt().is_some() {
        return Err(bad("linux.intelRdt", "Intel RDT is not supported by this runtime"));
    }
    if linux.memory_policy().is_some() {
        return Err(bad("linux.memoryPolicy", "NUMA memory policies are not supported by this runtime"));
    }
    if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(bad("linux.netDevices", "moving network devices is not supported by this runtime"));
    }
    Ok(())
}

/// `linux.personality`: the domain (LINUX, LINUX32); no flags are supported.
fn personality(linux: &oci_spec::runtime::Linux) -> Result<Option<u64>, SpecError> {
    let Some(p) = linux.personality() else { return Ok(None) };
    if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(bad("linux.personality.flags", "no personality flags are supported"));
    }
    Ok(Some(match p.domain() {
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0x0000,
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
    }))
}

/// `linux.timeOffsets`: offsets of the `monotonic` and `boottime` clocks, which need a new
/// time namespace.
fn time_offsets(linux: &oci_spec::runtime::Linux, ns: &Namespaces) -> Result<Vec<String>, SpecError> {
    let Some(map) = linux.time_offsets().as_ref().filter(|m| !m.is_empty()) else { return Ok(Vec::new()) };
    if !ns.new_time {
        return Err(bad(
            "linux.timeOffsets",
            "needs a new time namespace (a \"time\" entry in linux.namespaces)",
        ));
    }
    let mut out = Vec::new();
    for (clock, off) in map {
        if !["monotonic", "boottime"].contains(&clock.as_str()) {
            return Err(bad(format!("linux.timeOffsets.{clock}"), "unknown clock (monotonic or boottime)"));
        }
        let nanos = off.nanosecs().unwrap_or(0);
        if nanos >= 1_000_000_000 {
            return Err(bad(
                format!("linux.timeOffsets.{clock}.nanosecs"),
                format!("{nanos} is not below 1e9"),
            ));
        }
        out.push(format!("{clock} {} {nanos}", off.secs().unwrap_or(0)));
    }
    out.sort();
    Ok(out)
}

/// Translates a loaded spec. `bundle` is the absolute bundle directory.
pub fn plan(spec: &Spec, bundle: &Path) -> Result<Plan, SpecError> {
    let root = spec.root().as_ref().ok_or_else(|| bad("root", "required"))?;
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    let linux = spec.linux().clone().unwrap_or_default();
    let seccomp = linux.seccomp().as_ref().map(crate::seccomp::plan).transpose()?;
    let hooks = crate::hooks::plan(spec.hooks().as_ref())?;
    let namespaces = namespaces(&linux)?;
    let user_ns = user_namespace(&linux, &namespaces)?;
    // A mount namespace joined by path is the container's own, as a new one is: the init
    // enters it before its mounts and builds the rootfs there (runc does the same). Without
    // either the container lives in the caller's: nothing may be mounted there (it would be
    // the caller's mount), and the rootfs is entered by chroot.
    let inherit_mounts = !namespaces.clone.contains(CloneFlags::CLONE_NEWNS)
        && !namespaces.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNS);
    if inherit_mounts {
        let linux_has = |field: &str, set: bool| {
            if set {
                Err(bad(
                    field,
                    "needs a mount namespace of the container's own: without one it would change the caller's mounts",
                ))
            } else {
                Ok(())
            }
        };
        linux_has("mounts", spec.mounts().as_ref().is_some_and(|m| !m.is_empty()))?;
        linux_has("linux.maskedPaths", linux.masked_paths().as_ref().is_some_and(|m| !m.is_empty()))?;
        linux_has("linux.readonlyPaths", linux.readonly_paths().as_ref().is_some_and(|m| !m.is_empty()))?;
        linux_has("linux.devices", linux.devices().as_ref().is_some_and(|m| !m.is_empty()))?;
        linux_has(
            "linux.rootfsPropagation",
            linux.rootfs_propagation().as_ref().is_some_and(|p| !p.is_empty()),
        )?;
        linux_has("linux.sysctl", linux.sysctl().as_ref().is_some_and(|m| !m.is_empty()))?;
        linux_has("root.readonly", spec.root().as_ref().is_some_and(|r| r.readonly() == Some(true)))?;
    }
    let mut process = process(spec.process().as_ref().ok_or_else(|| bad("process", "required"))?)?;
    confinement(spec, &linux, &Lsms::host())?;
    unsupported(&linux)?;
    process.personality = personality(&linux)?;
    let time_offsets = time_offsets(&linux, &namespaces)?;
    let root_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => propagation_flags(p)
            .ok_or_else(|| bad("linux.rootfsPropagation", format!("unknown value {p:?}")))?,
    };
    let mounts = mounts(spec, bundle)?;
    let dev_is_tmpfs = mounts.iter().any(|m| {
        matches!(m, PlannedMount::Plain(s) if s.destination == Path::new("/dev") && s.fstype.as_deref() == Some("tmpfs"))
    });
    let mut devices = if dev_is_tmpfs { default_devices() } else { Vec::new() };
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(bad(format!("linux.devices[{i}].type"), "must be c, b, u or p"));
            }
        };
        let (major, minor) = (non_negative(d.major(), i, "major")?, non_negative(d.minor(), i, "minor")?);
        devices.retain(|old| old.path != *d.path());
        devices.push(DeviceNode {
            path: d.path().clone(),
            kind,
            major,
            minor,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let mut sysctls: Vec<(String, String)> = linux.sysctl().clone().unwrap_or_default().into_iter().collect();
    sysctls.sort();
    for (k, _) in &sysctls {
        check_sysctl(k, &namespaces)?;
    }
    // A UTS namespace of its own, made or joined (the runtime's own is refused at create).
    let own_uts = namespaces.clone.contains(CloneFlags::CLONE_NEWUTS)
        || namespaces.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUTS);
    for (field, set) in [("hostname", spec.hostname().is_some()), ("domainname", spec.domainname().is_some())]
    {
        if set && !own_uts {
            return Err(bad(field, "needs a uts namespace of the container's own (new, or joined by path)"));
        }
    }
    Ok(Plan {
        rootfs,
        readonly_root: root.readonly().unwrap_or(false),
        root_propagation,
        mounts,
        devices,
        masked_paths: linux
            .masked_paths()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .readonly_paths()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        namespaces,
        hostname: spec.hostname().clone(),
        domainname: spec.domainname().clone(),
        sysctls,
        process,
        cgroups_path: linux.cgroups_path().clone(),
        resources: linux.resources().clone().unwrap_or_default(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        seccomp,
        user_ns,
        hooks,
        no_pivot: false,
        inherit_mounts,
        time_offsets,
    })
}

/// The Linux security modules the host has enabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lsms {
    pub apparmor: bool,
    pub selinux: bool,
}

impl Lsms {
    /// Read off the host: AppArmor's module parameter, SELinux's filesystem.
    pub fn host() -> Lsms {
        let apparmor =
            std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y");
        let selinux = Path::new("/sys/fs/selinux/enforce").exists();
        Lsms { apparmor, selinux }
    }
}

/// An AppArmor profile or SELinux label the spec asks for is refused, never run unconfined:
/// this runtime applies neither (`tug-shim features` says so), and the message says whether
/// the host has the module at all.
fn confinement(spec: &Spec, linux: &oci_spec::runtime::Linux, host: &Lsms) -> Result<(), SpecError> {
    let process = spec.process().as_ref();
    let asked = [
        (
            "process.apparmorProfile",
            process.and_then(|p| p.apparmor_profile().clone()),
            "AppArmor",
            host.apparmor,
        ),
        ("process.selinuxLabel", process.and_then(|p| p.selinux_label().clone()), "SELinux", host.selinux),
        ("linux.mountLabel", linux.mount_label().clone(), "SELinux", host.selinux),
    ];
    for (field, value, lsm, enabled) in asked {
        let Some(value) = value.filter(|v| !v.is_empty()) else { continue };
        let why = if enabled {
            format!(
                "{value:?}: tug-shim does not apply {lsm} labels (see tug-shim features); refused rather than run unconfined"
            )
        } else {
            format!("{value:?}: this host has no {lsm} enabled; refused rather than run unconfined")
        };
        return Err(bad(field, why));
    }
    Ok(())
}

fn non_negative(v: i64, i: usize, what: &str) -> Result<u64, SpecError> {
    u64::try_from(v).map_err(|_| bad(format!("linux.devices[{i}].{what}"), format!("{v} is negative")))
}

fn namespaces(linux: &oci_spec::runtime::Linux) -> Result<Namespaces, SpecError> {
    let mut ns =
        Namespaces { clone: CloneFlags::empty(), new_cgroup: false, new_time: false, join: Vec::new() };
    for (i, n) in linux.namespaces().iter().flatten().enumerate() {
        let flag = match n.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
            LinuxNamespaceType::User if n.path().as_ref().is_some_and(|p| !p.as_os_str().is_empty()) => {
                return Err(bad(
                    format!("linux.namespaces[{i}].path"),
                    "joining an existing user namespace is not supported; ask for a new one with uidMappings",
                ));
            }
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        };
        if ns.clone.contains(flag)
            || ns.join.iter().any(|(f, _)| *f == flag)
            || (flag == CloneFlags::CLONE_NEWCGROUP && ns.new_cgroup)
        {
            let name = serde_json::to_value(n.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(bad(format!("linux.namespaces[{i}]"), format!("{name} namespace listed twice")));
        }
        match n.path() {
            Some(p) if !p.as_os_str().is_empty() => ns.join.push((flag, p.clone())),
            _ if flag == CloneFlags::CLONE_NEWCGROUP => ns.new_cgroup = true,
            _ if flag.bits() == libc::CLONE_NEWTIME => ns.new_time = true,
            _ => ns.clone |= flag,
        }
    }
    Ok(ns)
}

/// Translates a process (the spec's, or one given to `exec`).
pub fn process(p: &oci_spec::runtime::Process) -> Result<ProcessPlan, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(bad("process.args", "must name the program to run"));
    }
    if !p.cwd().is_absolute() {
        return Err(bad("process.cwd", format!("{:?} must be an absolute path", p.cwd())));
    }
    let mut rlimits = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if r.soft() > r.hard() {
            return Err(bad(
                format!("process.rlimits[{i}]"),
                format!("soft {} is above hard {}", r.soft(), r.hard()),
            ));
        }
        rlimits.push((rlimit_resource(r.typ()), r.soft(), r.hard()));
    }
    let caps = match p.capabilities() {
        None => None,
        Some(c) => {
            let conv = |field: &str,
                        set: &Option<oci_spec::runtime::Capabilities>|
             -> Result<CapsHashSet, SpecError> {
                set.iter()
                    .flatten()
                    .map(|c| {
                        let name = format!("CAP_{c}");
                        Capability::from_str(&name).map_err(|_| {
                            bad(format!("process.capabilities.{field}"), format!("unknown capability {name}"))
                        })
                    })
                    .collect()
            };
            Some(CapsPlan {
                bounding: conv("bounding", c.bounding())?,
                effective: conv("effective", c.effective())?,
                permitted: conv("permitted", c.permitted())?,
                inheritable: conv("inheritable", c.inheritable())?,
                ambient: conv("ambient", c.ambient())?,
            })
        }
    };
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(bad("process.oomScoreAdj", format!("{adj} is outside -1000..1000")));
        }
    }
    Ok(ProcessPlan {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        umask: p.user().umask(),
        rlimits,
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        caps,
        terminal: p.terminal().unwrap_or(false),
        console_size: p.console_size().as_ref().map(|b| WinSize {
            rows: u16::try_from(b.height()).unwrap_or(u16::MAX),
            cols: u16::try_from(b.width()).unwrap_or(u16::MAX),
        }),
        preserve_fds: 0,
        personality: None,
    })
}

fn rlimit_resource(t: PosixRlimitType) -> Resource {
    match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

fn mounts(spec: &Spec, bundle: &Path) -> Result<Vec<PlannedMount>, SpecError> {
    let mut out = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(bad(
                format!("mounts[{i}].destination"),
                format!("{:?} must be absolute", m.destination()),
            ));
        }
        for (field, set) in [("uidMappings", m.uid_mappings()), ("gidMappings", m.gid_mappings())] {
            if set.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(bad(
                    format!("mounts[{i}].{field}"),
                    "idmapped mounts are not supported by this runtime (features: mountExtensions.idmap)",
                ));
            }
        }
        let (flags, propagation, data, attrs) = parse_options(m.options().as_deref().unwrap_or_default());
        let fstype = m.typ().clone().filter(|t| !t.is_empty());
        if fstype.as_deref() == Some("cgroup") || fstype.as_deref() == Some("cgroup2") {
            out.push(PlannedMount::Cgroup {
                destination: m.destination().clone(),
                readonly: flags.contains(MsFlags::MS_RDONLY),
            });
            continue;
        }
        let is_bind = flags.contains(MsFlags::MS_BIND) || fstype.as_deref() == Some("bind");
        let source = m.source().clone().map(|s| if is_bind && s.is_relative() { bundle.join(s) } else { s });
        if is_bind && source.is_none() {
            return Err(bad(format!("mounts[{i}].source"), "a bind mount needs a source"));
        }
        let flags = if is_bind { flags | MsFlags::MS_BIND } else { flags };
        // A bind mount takes no filesystem data: an option left over is one this runtime does
        // not know, and passing it on (the kernel ignores it) or dropping it would be silent.
        if is_bind && !data.is_empty() {
            return Err(bad(
                format!("mounts[{i}].options"),
                format!(
                    "unknown mount option {:?} for the bind mount on {}",
                    data.split(',').next().unwrap_or_default(),
                    m.destination().display()
                ),
            ));
        }
        out.push(PlannedMount::Plain(MountStep {
            destination: m.destination().clone(),
            source,
            fstype: if is_bind { None } else { fstype },
            flags,
            propagation,
            data,
            attrs,
        }));
    }
    Ok(out)
}

/// A sysctl is allowed only when it belongs to a namespace the container has of its own.
fn check_sysctl(key: &str, ns: &Namespaces) -> Result<(), SpecError> {
    let own = |f: CloneFlags| ns.clone.contains(f) || ns.join.iter().any(|(j, _)| *j == f);
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let field = format!("linux.sysctl.{key}");
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        return if own(CloneFlags::CLONE_NEWIPC) {
            Ok(())
        } else {
            Err(bad(field, "needs a new ipc namespace"))
        };
    }
    if key.starts_with("net.") {
        return if own(CloneFlags::CLONE_NEWNET) {
            Ok(())
        } else {
            Err(bad(field, "needs a new network namespace"))
        };
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        return if own(CloneFlags::CLONE_NEWUTS) {
            Ok(())
        } else {
            Err(bad(field, "needs a new uts namespace"))
        };
    }
    Err(bad(field, "not namespaced: it would change the host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        let mut base: serde_json::Value = serde_json::from_str(BASE).unwrap();
        let patch: serde_json::Value = serde_json::from_str(json).unwrap();
        merge(&mut base, patch);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    const BASE: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/run/netns/x"}, {"type": "cgroup"}]}
    }"#;

    /// Data-driven: a patch over the base spec → the error it must give.
    #[test]
    fn confinement_the_runtime_cannot_give_is_refused() {
        let cases = [
            (r#"{"process": {"apparmorProfile": "tug-test"}}"#, "process.apparmorProfile"),
            (r#"{"process": {"selinuxLabel": "system_u:system_r:container_t:s0"}}"#, "process.selinuxLabel"),
            (r#"{"linux": {"mountLabel": "system_u:object_r:container_file_t:s0"}}"#, "linux.mountLabel"),
        ];
        for (patch, field) in cases {
            let s = spec(patch);
            let linux = s.linux().clone().unwrap_or_default();
            let none = confinement(&s, &linux, &Lsms::default()).unwrap_err().to_string();
            assert!(none.starts_with(field) && none.contains("this host has no"), "{none}");
            let both = Lsms { apparmor: true, selinux: true };
            let all = confinement(&s, &linux, &both).unwrap_err().to_string();
            assert!(all.starts_with(field) && all.contains("does not apply"), "{all}");
            assert!(plan(&s, Path::new("/b")).is_err(), "{field}: plan refuses it on this host too");
        }
        let empty = spec(r#"{"process": {"apparmorProfile": ""}}"#);
        assert!(confinement(&empty, &empty.linux().clone().unwrap_or_default(), &Lsms::default()).is_ok());
    }

    fn check_err(patch: &str, expect: &str) {
        let err = plan(&spec(patch), Path::new("/b")).unwrap_err();
        assert_eq!(err.to_string(), expect);
    }

    #[test]
    fn a_plain_spec_translates() {
        let p = plan(&spec("{}"), Path::new("/b")).unwrap();
        assert_eq!(p.rootfs, Path::new("/b/rootfs"));
        assert_eq!(
            p.namespaces.clone,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS
        );
        assert!(p.namespaces.new_cgroup);
        assert_eq!(p.namespaces.join, vec![(CloneFlags::CLONE_NEWNET, PathBuf::from("/run/netns/x"))]);
        assert_eq!(p.root_propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(p.devices.len(), 6, "the default devices come with a tmpfs /dev");
        assert!(matches!(&p.mounts[2], PlannedMount::Cgroup { readonly: true, .. }));
        let PlannedMount::Plain(bind) = &p.mounts[3] else { panic!("bind") };
        assert_eq!(
            bind.source.as_deref(),
            Some(Path::new("/b/data")),
            "relative bind sources are under the bundle"
        );
        assert_eq!(bind.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(p.process.caps, None);
    }

    #[test]
    fn capabilities_and_rlimits() {
        let p = plan(
            &spec(r#"{"process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"]},
                        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]}}"#),
            Path::new("/b"),
        )
        .unwrap();
        let caps = p.process.caps.unwrap();
        assert_eq!(caps.bounding, [Capability::CAP_CHOWN, Capability::CAP_KILL].into_iter().collect());
        assert_eq!(caps.effective, [Capability::CAP_KILL].into_iter().collect());
        assert!(caps.ambient.is_empty());
        assert_eq!(p.process.rlimits, vec![(Resource::RLIMIT_NOFILE, 100, 200)]);
    }

    #[test]
    fn errors_name_the_field() {
        check_err(r#"{"process": {"args": []}}"#, "process.args: must name the program to run");
        check_err(r#"{"process": {"cwd": "tmp"}}"#, "process.cwd: \"tmp\" must be an absolute path");
        check_err(
            r#"{"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 200}]}}"#,
            "process.rlimits[0]: soft 300 is above hard 200",
        );
        check_err(
            r#"{"linux": {"sysctl": {"kernel.panic": "1"}}}"#,
            "linux.sysctl.kernel.panic: not namespaced: it would change the host",
        );
        check_err(
            r#"{"linux": {"sysctl": {"kernel.shmmax": "1"}}}"#,
            "linux.sysctl.kernel.shmmax: needs a new ipc namespace",
        );
        check_err(
            r#"{"linux": {"namespaces": [{"type": "mount"}, {"type": "mount"}]}}"#,
            "linux.namespaces[1]: mount namespace listed twice",
        );
        check_err(
            r#"{"process": {"oomScoreAdj": 5000}}"#,
            "process.oomScoreAdj: 5000 is outside -1000..1000",
        );
        check_err(
            r#"{"mounts": [{"destination": "/m", "type": "bind", "source": "/x", "options": ["rbind"],
                            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]}"#,
            "mounts[0].uidMappings: idmapped mounts are not supported by this runtime (features: mountExtensions.idmap)",
        );
        check_err(
            r#"{"mounts": [{"destination": "rel", "type": "tmpfs"}]}"#,
            "mounts[0].destination: \"rel\" must be absolute",
        );
    }

    #[test]
    fn a_joined_mount_namespace_is_the_containers_own() {
        let p = plan(
            &spec(r#"{"linux": {"namespaces": [{"type": "pid"}, {"type": "mount", "path": "/proc/7/ns/mnt"}]}}"#),
            Path::new("/b"),
        )
        .unwrap();
        assert!(!p.inherit_mounts, "the rootfs is built in the joined namespace");
        assert!(!p.namespaces.clone.contains(CloneFlags::CLONE_NEWNS));
        assert_eq!(p.namespaces.join, vec![(CloneFlags::CLONE_NEWNS, PathBuf::from("/proc/7/ns/mnt"))]);
        let p = plan(&spec(r#"{"mounts": [], "linux": {"namespaces": [{"type": "pid"}]}}"#), Path::new("/b"))
            .unwrap();
        assert!(p.inherit_mounts);
    }

    #[test]
    fn sysctls_in_own_namespaces_are_fine() {
        let p =
            plan(&spec(r#"{"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}}"#), Path::new("/b")).unwrap();
        assert_eq!(p.sysctls, vec![("net.ipv4.ip_forward".to_string(), "1".to_string())]);
    }
}
