//! Mounts: the spec's option strings translated into flags (pure), and the mount calls that
//! build the container's filesystem before `pivot_root` (effects, in the container's own
//! mount namespace).

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknodat};
use std::path::{Path, PathBuf};

/// What went wrong while building the container's filesystem.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {what} on {dest}: {errno}")]
    Mount { what: String, dest: PathBuf, errno: nix::Error },
    #[error("preparing {path}: {source}")]
    Prepare { path: PathBuf, source: std::io::Error },
    #[error("pivot_root into {root}: {errno}")]
    Pivot { root: PathBuf, errno: nix::Error },
    #[error("pivot_root into {root}: {errno}; then moving it over / to chroot: {fallback}")]
    PivotFallback { root: PathBuf, errno: nix::Error, fallback: String },
    #[error("mknod {path}: {errno}")]
    Mknod { path: PathBuf, errno: nix::Error },
    #[error("inside the rootfs: {0}")]
    Beneath(#[from] tug_beneath::Error),
    #[error("mount {fstype} on {dest}: {reason}")]
    Refused { fstype: String, dest: PathBuf, reason: String },
}

/// One spec mount, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStep {
    pub destination: PathBuf,
    pub source: Option<PathBuf>,
    pub fstype: Option<String>,
    /// Flags for the mount call itself (MS_BIND, MS_REC, MS_RDONLY, MS_NOSUID, …).
    pub flags: MsFlags,
    /// Propagation to set afterwards (MS_PRIVATE, MS_SLAVE, … with MS_REC).
    pub propagation: MsFlags,
    /// Options the kernel's filesystem takes as data (`mode=755`, `size=65536k`, …).
    pub data: String,
    /// Attributes set and cleared on the whole mounted tree (`rro`, `rnosuid`, …, runtime-spec
    /// 1.1), and `nosymfollow` on the mount itself: `mount_setattr` after the mount.
    pub attrs: Attrs,
}

/// `MOUNT_ATTR_*` bits for `mount_setattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    pub recursive_set: u64,
    pub recursive_clear: u64,
    /// `nosymfollow` (or `symfollow`) on the mount alone: Some(set).
    pub symfollow: Option<bool>,
}

impl Attrs {
    pub fn is_empty(&self) -> bool {
        self.recursive_set == 0 && self.recursive_clear == 0 && self.symfollow.is_none()
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR__ATIME: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x0;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// The recursive options of runtime-spec 1.1 and `[no]symfollow`: (set, clear) bits, or None
/// for any other option. An atime mode clears the whole atime field first, as the kernel asks.
pub fn recursive_option(name: &str) -> Option<(u64, u64)> {
    Some(match name {
        "rro" => (MOUNT_ATTR_RDONLY, 0),
        "rrw" => (0, MOUNT_ATTR_RDONLY),
        "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
        "rsuid" => (0, MOUNT_ATTR_NOSUID),
        "rnodev" => (MOUNT_ATTR_NODEV, 0),
        "rdev" => (0, MOUNT_ATTR_NODEV),
        "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
        "rexec" => (0, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
        "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (MOUNT_ATTR_RELATIME, MOUNT_ATTR__ATIME),
        "rnorelatime" => (0, MOUNT_ATTR__ATIME),
        "rnoatime" => (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME),
        "ratime" => (0, MOUNT_ATTR__ATIME),
        "rstrictatime" => (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME),
        "rnosymfollow" => (MOUNT_ATTR_NOSYMFOLLOW, 0),
        "rsymfollow" => (0, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Every option name `parse_options` knows (for `features`).
pub const KNOWN_OPTIONS: [&str; 51] = [
    "async",
    "atime",
    "bind",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

impl MountStep {
    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Splits spec mount options into mount flags, propagation flags and data, as runc does.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String, Attrs) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    let mut attrs = Attrs::default();
    for opt in options {
        if let Some((set, clear)) = recursive_option(opt) {
            attrs.recursive_set = (attrs.recursive_set & !clear) | set;
            attrs.recursive_clear = (attrs.recursive_clear & !set) | clear;
            continue;
        }
        match opt.as_str() {
            "nosymfollow" => {
                attrs.symfollow = Some(true);
                continue;
            }
            "symfollow" => {
                attrs.symfollow = Some(false);
                continue;
            }
            _ => {}
        }
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            other => {
                if let Some(p) = propagation_flags(other) {
                    propagation = p;
                } else {
                    data.push(other);
                }
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, propagation, data.join(","), attrs)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets and clears mount attributes on the mount at `fd` (its whole tree with `recursive`).
fn mount_setattr(fd: &std::os::fd::OwnedFd, set: u64, clear: u64, recursive: bool) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the path is an empty C string, the attr a valid struct of the size given; the
    // kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 { Err(nix::errno::Errno::last()) } else { Ok(()) }
}

/// `private`, `rslave`, … as flags; `None` for anything else.
pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// `path` (a spec destination) relative to the rootfs.
fn in_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// Mounts onto the descriptor's path, naming the spec destination in an error.
fn mount_at(
    source: Option<&Path>,
    target: &impl std::os::fd::AsRawFd,
    dest: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    do_mount(source, &tug_beneath::fd_path(target), fstype, flags, data).map_err(|e| named(e, dest))
}

/// A bind remount. In a user namespace the flags a mount had when the namespace was made
/// (nosuid, nodev, noexec, atime) are locked, and a remount that would clear one fails with
/// EPERM: then it is tried again keeping the mount's current flags, as runc does.
fn remount(dest: &Path, flags: MsFlags) -> Result<(), MountError> {
    match do_mount(None, dest, None, flags, None) {
        Err(MountError::Mount { errno: nix::Error::EPERM, .. }) => {
            do_mount(None, dest, None, flags | current_flags(dest), None)
        }
        other => other,
    }
}

/// The mount flags in effect at `path`.
fn current_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else { return MsFlags::empty() };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

fn do_mount(
    source: Option<&Path>,
    dest: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(source, dest, fstype, flags, data).map_err(|errno| MountError::Mount {
        what: fstype
            .map(str::to_string)
            .or_else(|| source.map(|s| s.display().to_string()))
            .unwrap_or_default(),
        dest: dest.to_path_buf(),
        errno,
    })
}

/// Sets the propagation of the whole tree, then bind-mounts the rootfs onto itself so that
/// it is a mount point `pivot_root` accepts.
pub fn prepare_root(rootfs: &Path, propagation: MsFlags) -> Result<(), MountError> {
    // A shared root is made shared only after pivot_root (`share_root`): pivot_root refuses a
    // new root under a shared parent, and until then the container's mounts must not
    // propagate to the caller's namespace (a failed create would leave them there).
    let before = if propagation.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        propagation
    };
    do_mount(None, Path::new("/"), None, before, None)?;
    do_mount(Some(rootfs), rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
}

/// The container's rootfs as the root every destination is resolved beneath (as if it
/// were `/`).
pub fn open_root(rootfs: &Path) -> Result<tug_beneath::Root, MountError> {
    Ok(tug_beneath::Root::open_dir(rootfs, tug_beneath::Scope::InRoot)?)
}

/// Performs one spec mount inside the rootfs `root`. The destination is resolved by the kernel
/// beneath the rootfs (`RESOLVE_IN_ROOT`: a symlink the image or an earlier run planted
/// resolves inside it, never to the host) and made there from descriptors; the mount calls
/// then name it by `/proc/self/fd/N`, so nothing is looked up by path text twice.
pub fn mount_step(root: &tug_beneath::Root, step: &MountStep) -> Result<(), MountError> {
    use nix::fcntl::OFlag;
    let rel = in_root(&step.destination);
    let dest = &step.destination;
    let data = (!step.data.is_empty()).then_some(step.data.as_str());
    if step.is_bind() {
        let source = step.source.as_deref().unwrap_or(Path::new(""));
        let target =
            if source.is_dir() { root.mkdir_all(rel, 0o755)? } else { root.create_file(rel, 0o644)? };
        let bind = step.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        mount_at(Some(source), &target, dest, None, bind, None)?;
        // A bind mount ignores every other flag until it is remounted: the new mount's root,
        // looked up again.
        let rest = step.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            let mounted = root.open(rel, OFlag::O_PATH)?;
            let path = tug_beneath::fd_path(&mounted);
            remount(&path, rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT).map_err(|e| named(e, dest))?;
        }
    } else {
        let fstype = step.fstype.as_deref().unwrap_or("none");
        if matches!(fstype, "proc" | "sysfs") {
            ordinary_directory(root, rel, fstype, dest)?;
        }
        let target = root.mkdir_all(rel, 0o755)?;
        let source = step.source.as_deref().unwrap_or(Path::new(fstype));
        mount_at(Some(source), &target, dest, Some(fstype), step.flags, data)?;
    }
    if !step.propagation.is_empty() {
        let mounted = root.open(rel, OFlag::O_PATH)?;
        mount_at(None, &mounted, dest, None, step.propagation, None)?;
    }
    if !step.attrs.is_empty() {
        let mounted = root.open(rel, OFlag::O_PATH)?;
        let what =
            |errno| MountError::Mount { what: "mount_setattr".into(), dest: dest.to_path_buf(), errno };
        if step.attrs.recursive_set != 0 || step.attrs.recursive_clear != 0 {
            mount_setattr(&mounted, step.attrs.recursive_set, step.attrs.recursive_clear, true)
                .map_err(what)?;
        }
        match step.attrs.symfollow {
            Some(true) => mount_setattr(&mounted, MOUNT_ATTR_NOSYMFOLLOW, 0, false).map_err(what)?,
            Some(false) => mount_setattr(&mounted, 0, MOUNT_ATTR_NOSYMFOLLOW, false).map_err(what)?,
            None => {}
        }
    }
    Ok(())
}

/// `proc` and `sysfs` go only on a real directory of the rootfs (or where nothing is yet): an
/// image whose `/proc` is a symlink could steer them over another path (the CVE-2019-19921
/// family), so it is refused, as runc, crun and youki refuse it.
fn ordinary_directory(
    root: &tug_beneath::Root,
    rel: &Path,
    fstype: &str,
    dest: &Path,
) -> Result<(), MountError> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::{SFlag, fstat};
    let fd = match root.open(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
        Ok(fd) => fd,
        Err(tug_beneath::Error::Io { source: nix::errno::Errno::ENOENT, .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let st =
        fstat(&fd).map_err(|errno| MountError::Mount { what: fstype.into(), dest: dest.into(), errno })?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFDIR {
        let what = if kind == SFlag::S_IFLNK { "a symlink" } else { "not a directory" };
        return Err(MountError::Refused {
            fstype: fstype.into(),
            dest: dest.into(),
            reason: format!("{what} in the rootfs: {fstype} must be mounted on ordinary directory"),
        });
    }
    Ok(())
}

/// A mount error naming the spec destination rather than a descriptor's path.
fn named(e: MountError, dest: &Path) -> MountError {
    match e {
        MountError::Mount { what, errno, .. } => MountError::Mount { what, dest: dest.to_path_buf(), errno },
        e => e,
    }
}

/// A device node to create under the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices every container gets when `/dev` is a fresh tmpfs.
pub fn default_devices() -> Vec<DeviceNode> {
    let c = |name: &str, major, minor| DeviceNode {
        path: PathBuf::from("/dev").join(name),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        c("null", 1, 3),
        c("zero", 1, 5),
        c("full", 1, 7),
        c("random", 1, 8),
        c("urandom", 1, 9),
        c("tty", 5, 0),
    ]
}

/// Creates the device nodes and the standard `/dev` symlinks inside `rootfs`. In a user
/// namespace, where mknod is not allowed, each device is the host's node bind-mounted onto an
/// empty file (runc does the same).
pub fn populate_dev(
    root: &tug_beneath::Root,
    devices: &[DeviceNode],
    user_ns: bool,
) -> Result<(), MountError> {
    use nix::fcntl::{AtFlags, OFlag};
    use nix::unistd::{UnlinkatFlags, unlinkat};
    let mknod_err = |path: &Path| {
        let path = path.to_path_buf();
        move |errno| MountError::Mknod { path: path.clone(), errno }
    };
    for d in devices {
        let rel = in_root(&d.path);
        let name = rel.file_name().unwrap_or_default();
        let parent = root.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755)?;
        let _ = unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir);
        if user_ns {
            let target = root.create_file(rel, 0o644)?;
            mount_at(Some(&d.path), &target, &d.path, None, MsFlags::MS_BIND, None)?;
            continue;
        }
        let mode = Mode::from_bits_truncate(d.mode & 0o7777);
        mknodat(&parent, name, d.kind, mode, makedev(d.major, d.minor)).map_err(mknod_err(&d.path))?;
        // mknod is subject to the umask; set the mode the spec asked for exactly, on the node
        // just made (never through a link).
        let node = nix::fcntl::openat(
            &parent,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(mknod_err(&d.path))?;
        std::fs::set_permissions(
            tug_beneath::fd_path(&node),
            std::os::unix::fs::PermissionsExt::from_mode(mode.bits()),
        )
        .map_err(|source| MountError::Prepare { path: d.path.clone(), source })?;
        nix::unistd::fchownat(&node, "", Some(d.uid.into()), Some(d.gid.into()), AtFlags::AT_EMPTY_PATH)
            .map_err(mknod_err(&d.path))?;
    }
    let links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    let dev = root.mkdir_all(Path::new("dev"), 0o755)?;
    for (target, name) in links {
        let _ = unlinkat(&dev, name, UnlinkatFlags::NoRemoveDir);
        nix::unistd::symlinkat(target, &dev, name).map_err(|errno| MountError::Prepare {
            path: Path::new("/dev").join(name),
            source: std::io::Error::from(errno),
        })?;
    }
    Ok(())
}

/// Makes `rootfs` the root: `pivot_root` with the old root stacked on the new one and then
/// detached (no temporary directory needed). Where the current root cannot be pivoted away
/// from (an initramfs), falls back to moving the rootfs over `/` and `chroot`.
pub fn pivot(rootfs: &Path) -> Result<(), MountError> {
    let err = |errno| MountError::Pivot { root: rootfs.to_path_buf(), errno };
    nix::unistd::chdir(rootfs).map_err(err)?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is now mounted on top of the new one: make sure unmounting it
            // does not propagate to the host, then detach it.
            do_mount(None, Path::new("."), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)?;
            umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
        }
        Err(nix::Error::EINVAL) => {
            // Both errors are said: the fallback's alone would hide why pivot_root failed.
            let fallback = do_mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)
                .and_then(|()| nix::unistd::chroot(".").map_err(err));
            fallback.map_err(|f| MountError::PivotFallback {
                root: rootfs.to_path_buf(),
                errno: nix::Error::EINVAL,
                fallback: f.to_string(),
            })?;
        }
        Err(e) => return Err(err(e)),
    }
    nix::unistd::chdir("/").map_err(err)
}

/// `linux.rootfsPropagation: shared|rshared`, applied to the container's `/` once it is the
/// root (as runc does).
pub fn share_root(propagation: MsFlags) -> Result<(), MountError> {
    if propagation.contains(MsFlags::MS_SHARED) {
        do_mount(None, Path::new("/"), None, propagation, None)?;
    }
    Ok(())
}

/// Enters the rootfs of a container that has no mount namespace of its own: `chroot`, and
/// nothing mounted.
pub fn chroot_into(rootfs: &Path) -> Result<(), MountError> {
    let err = |errno| MountError::Pivot { root: rootfs.to_path_buf(), errno };
    nix::unistd::chdir(rootfs).map_err(err)?;
    nix::unistd::chroot(".").map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

/// Enters the rootfs without `pivot_root` (`--no-pivot`, as runc): moves it over `/` and
/// `chroot`s into it.
pub fn move_root(rootfs: &Path) -> Result<(), MountError> {
    let err = |errno| MountError::Pivot { root: rootfs.to_path_buf(), errno };
    nix::unistd::chdir(rootfs).map_err(err)?;
    do_mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
    nix::unistd::chroot(".").map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

/// Hides a path: `/dev/null` over a file, an empty read-only tmpfs over a directory.
pub fn mask(path: &Path) -> Result<(), MountError> {
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            do_mount(Some(Path::new("tmpfs")), path, Some("tmpfs"), MsFlags::MS_RDONLY, None)
        }
        Ok(_) => do_mount(Some(Path::new("/dev/null")), path, None, MsFlags::MS_BIND, None),
    }
}

/// Makes a path read-only with a bind mount onto itself.
pub fn make_readonly(path: &Path) -> Result<(), MountError> {
    if !path.exists() {
        return Ok(());
    }
    do_mount(Some(path), path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    remount(path, flags)
}

/// Remounts `/` read-only (`root.readonly`).
pub fn readonly_root() -> Result<(), MountError> {
    remount(Path::new("/"), MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> (MsFlags, MsFlags, String) {
        let (f, p, d, _) = parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        (f, p, d)
    }

    #[test]
    fn recursive_options_become_mount_attributes() {
        let (f, _, data, a) =
            parse_options(&["rbind".into(), "rro".into(), "rnosuid".into(), "nosymfollow".into()]);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(data.is_empty(), "{data}");
        assert_eq!(a.recursive_set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID);
        assert_eq!(a.symfollow, Some(true));
        // The last word wins, as for the plain options.
        let (_, _, _, a) = parse_options(&["rro".into(), "rrw".into()]);
        assert_eq!((a.recursive_set, a.recursive_clear), (0, MOUNT_ATTR_RDONLY));
        let (_, _, _, a) = parse_options(&["rnoatime".into()]);
        assert_eq!((a.recursive_set, a.recursive_clear), (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME));
        for o in KNOWN_OPTIONS {
            let (_, _, data, _) = parse_options(&[o.to_string()]);
            assert!(data.is_empty(), "{o} is known but passed on as data");
        }
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let (f, p, d) = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(f, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert!(p.is_empty());
        assert_eq!(d, "mode=755,size=65536k");
        let (f, p, d) = opts(&["rbind", "ro", "rslave"]);
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(p, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(d, "");
        let (f, _, _) = opts(&["ro", "rw"]);
        assert!(f.is_empty(), "a later rw clears an earlier ro");
    }
}
