//! Paths beneath a root that someone else writes: a container's rootfs, a pod's volume, an
//! image layer. Every lookup goes through the kernel — `openat2(2)` with `RESOLVE_IN_ROOT` or
//! `RESOLVE_BENEATH`, always with `RESOLVE_NO_MAGICLINKS` — and every change is made relative
//! to a directory descriptor, so a symlink, a `..` or a rename racing with us never leads
//! outside the root. Nothing here resolves a path by its text.
//!
//! - [`Root`]: a trusted directory opened once; [`Root::open`], [`Root::mkdir_all`],
//!   [`Root::create_file`] and [`Root::read_regular`] beneath it.
//! - [`remove_all_at`]: fd-relative recursive removal that never follows a symlink and never
//!   descends into another filesystem.
//! - [`fd_path`]: `/proc/self/fd/N`, the way to hand a resolved path to `mount(2)`.
//!
//! ```no_run
//! use tug_beneath::{Root, Scope};
//! let volume = Root::open_dir("/var/lib/tug-agent/pods/p/volumes/data", Scope::Beneath)?;
//! // A symlink on the way that points outside the volume is an error, not a way out.
//! let sub = volume.mkdir_all("logs/app".as_ref(), 0o755)?;
//! println!("bind {} into the container", tug_beneath::fd_path(&sub).display());
//! # Ok::<(), tug_beneath::Error>(())
//! ```

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

/// How a path beneath the root is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// As if the root were `/`: absolute symlinks and `..` stay inside it (a container's
    /// view of its rootfs).
    InRoot,
    /// Any step that would leave the root is an error (a volume: Kubernetes refuses a
    /// subPath that leads outside it).
    Beneath,
    /// No symlink is followed at all, and nothing leaves the root (an archive's entries:
    /// a blob that is a link is refused, whatever it points at).
    NoLinks,
}

impl Scope {
    fn flags(self) -> ResolveFlag {
        let scope = match self {
            Scope::InRoot => ResolveFlag::RESOLVE_IN_ROOT,
            Scope::Beneath => ResolveFlag::RESOLVE_BENEATH,
            Scope::NoLinks => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
        };
        scope | ResolveFlag::RESOLVE_NO_MAGICLINKS
    }
}

/// What went wrong beneath a root; each names the path and the root.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening {root}: {source}")]
    Root { root: PathBuf, source: Errno },
    #[error("{path:?} leads outside {root}")]
    Escape { root: PathBuf, path: PathBuf },
    #[error("{path:?} beneath {root}: {source}")]
    Io { root: PathBuf, path: PathBuf, source: Errno },
    #[error("{path:?} beneath {root} is a symbolic link to nothing")]
    Dangling { root: PathBuf, path: PathBuf },
    #[error("{path:?} beneath {root} is not a regular file")]
    NotRegular { root: PathBuf, path: PathBuf },
    #[error("{path:?} beneath {root} is larger than {max} bytes")]
    TooLarge { root: PathBuf, path: PathBuf, max: u64 },
    #[error("{path:?} beneath {root} is or passes through a symbolic link")]
    Link { root: PathBuf, path: PathBuf },
}

/// A directory whose own path is trusted (the agent made it, or was given it), and beneath
/// which nothing is.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    scope: Scope,
}

impl Root {
    /// Opens the trusted directory `path` (its own path may have symlinks: it is ours).
    pub fn open_dir(path: impl AsRef<Path>, scope: Scope) -> Result<Root, Error> {
        let path = path.as_ref().to_path_buf();
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(&path, flags, Mode::empty())
            .map_err(|source| Error::Root { root: path.clone(), source })?;
        Ok(Root { fd, path, scope })
    }

    /// The directory `rel` beneath this root, as a root of its own with the same scope.
    pub fn subdir(&self, rel: &Path) -> Result<Root, Error> {
        let fd = self.open(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok(Root { fd, path: self.path.join(rel), scope: self.scope })
    }

    /// The names in the directory `rel` beneath the root (without `.` and `..`), each with
    /// whether it is a directory (a symlink is not).
    pub fn list(&self, rel: &Path) -> Result<Vec<(std::ffi::OsString, bool)>, Error> {
        let fd = self.open(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| self.err(rel, e))?;
        Ok(dir
            .iter()
            .filter_map(Result::ok)
            .map(|e| {
                let name = std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
                (name, e.file_type() == Some(nix::dir::Type::Directory))
            })
            .filter(|(n, _)| n != "." && n != "..")
            .collect())
    }

    /// The root's own path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor (`O_PATH`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn err(&self, rel: &Path, source: Errno) -> Error {
        let (root, path) = (self.path.clone(), rel.to_path_buf());
        match source {
            Errno::EXDEV => Error::Escape { root, path },
            Errno::ELOOP if self.scope == Scope::NoLinks => Error::Link { root, path },
            _ => Error::Io { root, path, source },
        }
    }

    fn open_raw(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).mode(mode).resolve(self.scope.flags());
        loop {
            match nix::fcntl::openat2(self.fd.as_fd(), rel, how) {
                // openat2 asks for a retry when a rename raced with the lookup.
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                other => return other,
            }
        }
    }

    /// Opens `rel` beneath the root with `flags` (`O_CLOEXEC` is added).
    pub fn open(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd, Error> {
        self.open_raw(rel, flags, Mode::empty()).map_err(|e| self.err(rel, e))
    }

    /// An `O_PATH` descriptor of the directory `rel`, made (with its missing parents, mode
    /// `mode` before the umask) where it does not exist. A symlink on the way is followed
    /// within the scope; one that points at nothing has its target made instead (an image's
    /// `/var/run -> /run` without `/run`), as runc does.
    pub fn mkdir_all(&self, rel: &Path, mode: u32) -> Result<OwnedFd, Error> {
        self.mkdir_all_following(rel, mode, 0)
    }

    fn mkdir_all_following(&self, rel: &Path, mode: u32, links: u32) -> Result<OwnedFd, Error> {
        if self.scope == Scope::Beneath && rel.has_root() {
            return Err(Error::Escape { root: self.path.clone(), path: rel.to_path_buf() });
        }
        let dir = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let comps: Vec<&std::ffi::OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                Component::ParentDir => Some(std::ffi::OsStr::new("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
            })
            .collect();
        // Most targets exist (an image's /proc, /dev, /etc/hosts): one lookup, not one from
        // the root for each component on the way. Anything else is found by the walk below.
        let whole: PathBuf = comps.iter().collect();
        if let Ok(fd) = self.open_raw(&whole, dir, Mode::empty()) {
            return Ok(fd);
        }
        let mut done = PathBuf::new();
        let mut fd = self.open_raw(&done, dir, Mode::empty()).map_err(|e| self.err(rel, e))?;
        for (i, name) in comps.iter().enumerate() {
            let parent = fd;
            done.push(name);
            fd = match self.open_raw(&done, dir, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(parent.as_fd(), *name, Mode::from_bits_truncate(mode)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.err(&done, e)),
                    }
                    match self.open_raw(&done, dir, Mode::empty()) {
                        Ok(fd) => fd,
                        // A symlink to nothing: make what it names, from where it stands.
                        Err(Errno::ENOENT) => {
                            let dangling = || Error::Dangling { root: self.path.clone(), path: done.clone() };
                            let target =
                                nix::fcntl::readlinkat(parent.as_fd(), *name).map_err(|_| dangling())?;
                            if links >= 40 {
                                return Err(self.err(&done, Errno::ELOOP));
                            }
                            let mut next = done.parent().unwrap_or(Path::new("")).join(&target);
                            next.extend(&comps[i + 1..]);
                            if self.scope == Scope::InRoot && next.has_root() {
                                next = next.strip_prefix("/").unwrap_or(&next).to_path_buf();
                            }
                            return self.mkdir_all_following(&next, mode, links + 1);
                        }
                        Err(e) => return Err(self.err(&done, e)),
                    }
                }
                Err(e) => return Err(self.err(&done, e)),
            };
        }
        Ok(fd)
    }

    /// An `O_PATH` descriptor of the file `rel` (anything but a directory), made empty with
    /// `mode` (and its parents) where nothing is: a mount target for a file bind mount.
    pub fn create_file(&self, rel: &Path, mode: u32) -> Result<OwnedFd, Error> {
        let fd = match self.open_raw(rel, OFlag::O_PATH, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let name = rel.file_name().ok_or_else(|| self.err(rel, Errno::EINVAL))?;
                let parent = self.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755)?;
                let flags =
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                match nix::fcntl::openat(parent.as_fd(), name, flags, Mode::from_bits_truncate(mode)) {
                    Ok(_) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(self.err(rel, e)),
                }
                self.open_raw(rel, OFlag::O_PATH, Mode::empty()).map_err(|e| match e {
                    Errno::ENOENT => Error::Dangling { root: self.path.clone(), path: rel.to_path_buf() },
                    e => self.err(rel, e),
                })?
            }
            Err(e) => return Err(self.err(rel, e)),
        };
        if file_type(&fd).is_ok_and(|t| t == SFlag::S_IFDIR) {
            return Err(self.err(rel, Errno::EISDIR));
        }
        Ok(fd)
    }

    /// The content of the regular file `rel`, at most `max` bytes. A FIFO, a device, a
    /// socket or a directory is refused before anything is read from it (a FIFO would
    /// block, `/dev/zero` would never end).
    pub fn read_regular(&self, rel: &Path, max: u64) -> Result<Vec<u8>, Error> {
        let file = self.open_regular(rel)?;
        let mut out = Vec::new();
        file.take(max.saturating_add(1)).read_to_end(&mut out).map_err(|e| self.err(rel, io_errno(e)))?;
        if out.len() as u64 > max {
            return Err(Error::TooLarge { root: self.path.clone(), path: rel.to_path_buf(), max });
        }
        Ok(out)
    }
}

impl Root {
    /// The regular file `rel`, open for reading; a FIFO, a device, a socket or a directory is
    /// refused before it is opened for reading.
    pub fn open_regular(&self, rel: &Path) -> Result<std::fs::File, Error> {
        let fd = self.open(rel, OFlag::O_PATH)?;
        if file_type(&fd).map_err(|e| self.err(rel, e))? != SFlag::S_IFREG {
            return Err(Error::NotRegular { root: self.path.clone(), path: rel.to_path_buf() });
        }
        // The inode is pinned by the O_PATH descriptor: reopening it reads that file.
        std::fs::File::open(fd_path(&fd)).map_err(|e| self.err(rel, io_errno(e)))
    }
}

/// The type bits of what `fd` refers to.
pub fn file_type(fd: &impl AsFd) -> Result<SFlag, Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

/// `/proc/self/fd/N`: a path the kernel resolves to exactly what `fd` refers to, for calls
/// that take only paths (`mount(2)`'s source and target).
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Removes `name` in the directory `dir`, and everything beneath it when it is a directory:
/// a symlink is removed, never followed, and a directory on another filesystem (a mount) is
/// refused rather than entered. A missing `name` is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &Path) -> Result<(), Errno> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let sub = nix::fcntl::openat(dir, name, flags, Mode::empty())?;
    if mount_id(&sub)? != mount_id(&dir)? {
        return Err(Errno::EXDEV);
    }
    let mut entries = nix::dir::Dir::from_fd(sub.try_clone().map_err(io_errno)?)?;
    let names: Vec<std::ffi::OsString> = entries
        .iter()
        .filter_map(Result::ok)
        .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    for n in names {
        remove_all_at(sub.as_fd(), Path::new(&n))?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}

/// The id of the mount `fd` is on (a bind mount of the same filesystem has its own).
pub fn mount_id(fd: &impl AsFd) -> Result<u64, Errno> {
    Ok(statx_at(fd.as_fd().as_raw_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_MNT_ID)?.stx_mnt_id)
}

/// Whether `path` itself (a link there is not followed) is the root of a mount: one `statx`,
/// not a read of the mount table, whose cost grows with every mount on the host.
pub fn is_mount_root(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    #[allow(clippy::cast_sign_loss)]
    let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    statx_at(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT, 0)
        .is_ok_and(|st| st.stx_attributes_mask & root != 0 && st.stx_attributes & root != 0)
}

fn statx_at(dirfd: RawFd, path: &std::ffi::CStr, flags: i32, mask: u32) -> Result<libc::statx, Errno> {
    // SAFETY: an all-zero statx is a valid buffer for the kernel to fill in.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated (with AT_EMPTY_PATH an empty one asks about `dirfd`
    // itself) and the buffer is a valid, writable statx that outlives the call.
    let rc = unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, &raw mut stx) };
    Errno::result(rc)?;
    Ok(stx)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

use std::os::unix::ffi::OsStrExt;

#[cfg(test)]
mod tests;
