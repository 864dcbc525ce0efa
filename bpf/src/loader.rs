//! The thin loader: `bpf(BPF_PROG_LOAD)` a device filter and `bpf(BPF_PROG_ATTACH)` it to a
//! cgroup v2 directory. The attachment keeps the program alive as long as the cgroup exists.

use crate::Insn;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// Why a program could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bpf(BPF_PROG_LOAD) of the device filter: {source}{log}")]
    Load { source: std::io::Error, log: String },
    #[error("opening cgroup {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("bpf(BPF_PROG_ATTACH) to {path}: {source}")]
    Attach { path: String, source: std::io::Error },
}

/// `union bpf_attr` for BPF_PROG_LOAD, as far as the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    _pad: [u64; 14],
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    _pad: [u64; 14],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a properly sized, initialised `bpf_attr` prefix for `cmd`, padded with
    // zeros, and lives for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// Loads a device filter. The verifier's log is asked for only when a load fails (a log
/// buffer that overflows fails the load itself), and its tail comes with the error.
pub fn load_device_filter(prog: &[Insn]) -> Result<OwnedFd, LoadError> {
    let code: Vec<u8> = prog.iter().flat_map(Insn::encode).collect();
    let license = b"Apache-2.0\0";
    let attempt = |log: &mut Vec<u8>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: u32::try_from(log.len()).unwrap_or(0),
            log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
            ..Default::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let result = attempt(&mut Vec::new()).or_else(|first| {
        let mut log = vec![0u8; 1 << 20];
        attempt(&mut log).map_err(|_| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
            LoadError::Load {
                source: first,
                log: if tail.is_empty() { String::new() } else { format!(": {tail}") },
            }
        })
    })?;
    let fd = i32::try_from(result).unwrap_or(-1);
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a loaded program to the cgroup v2 directory `cgroup`.
pub fn attach_device_filter(prog: &OwnedFd, cgroup: &Path) -> Result<(), LoadError> {
    let path = cgroup.display().to_string();
    let dir = std::fs::File::open(cgroup).map_err(|source| LoadError::Open { path: path.clone(), source })?;
    let mut attr = ProgAttachAttr {
        target_fd: u32::try_from(dir.as_raw_fd()).unwrap_or(0),
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(0),
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop).map_err(|source| LoadError::Attach { path, source })
}
