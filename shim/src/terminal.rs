//! Pseudo-terminals for containers: made inside the container (so the slave lives on its own
//! devpts), the master handed out over a Unix socket with `SCM_RIGHTS` — runc's
//! `--console-socket` protocol: one message whose payload is the slave's path and whose
//! control data carries the master descriptor.

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// A new pseudo-terminal pair from this process's `/dev/ptmx`: `(master, slave, slave path)`.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd, String), String> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("/dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let path = nix::pty::ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave = nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: the PtyMaster owns a valid descriptor; into_raw_fd hands its ownership over.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok((master, slave, path))
}

/// Sets a terminal's window size (on the master or the slave).
pub fn set_size(fd: BorrowedFd, size: WinSize) -> Result<(), nix::Error> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize struct from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::Error::result(rc).map(drop)
}

/// Makes `slave` this process's controlling terminal and its stdin, stdout and stderr. The
/// process must not be a process-group leader (a fresh child is not).
pub fn become_session_leader_on(slave: &OwnedFd) -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: TIOCSCTTY takes an int argument; 0 means do not steal from another session.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    nix::Error::result(rc).map_err(|e| format!("TIOCSCTTY: {e}"))?;
    for target in 0..3 {
        // SAFETY: dup2 onto a standard descriptor number this process owns.
        let rc = unsafe { libc::dup2(slave.as_raw_fd(), target) };
        nix::Error::result(rc).map_err(|e| format!("dup2 onto {target}: {e}"))?;
    }
    Ok(())
}

/// Sends `fd` over the connected Unix socket `sock`, with `name` as the payload.
pub fn send_fd(sock: RawFd, fd: RawFd, name: &str) -> Result<(), nix::Error> {
    let fds = [fd];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(sock, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None).map(drop)
}

/// Receives one descriptor sent by [`send_fd`] (or by runc): `(fd, name)`.
pub fn recv_fd(sock: RawFd) -> Result<(OwnedFd, String), String> {
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("console socket: {e}"))?;
    let mut received = None;
    for c in msg.cmsgs().map_err(|e| format!("console socket: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in our table for us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    let n = msg.bytes;
    let name = String::from_utf8_lossy(&buf[..n]).into_owned();
    received.map(|fd| (fd, name)).ok_or_else(|| "console socket: no descriptor in the message".to_string())
}

/// Connects this process's stdin and stdout to a terminal master until the terminal's last
/// slave closes: what `tug-shim exec -t` does in the foreground. When stdin is a terminal it
/// is put in raw mode (restored afterwards) and its size is copied to the container's.
pub fn proxy_stdio(master: OwnedFd) {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    use std::io::{Read, Write};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
        if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0 {
            let _ = set_size(std::os::fd::AsFd::as_fd(&master), WinSize { rows: ws.ws_row, cols: ws.ws_col });
        }
    }
    let mut input = std::fs::File::from(master.try_clone().unwrap_or_else(|_| std::process::exit(1)));
    // The input side ends with the process; a detached thread is enough.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || input.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut output = std::fs::File::from(master);
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    // EIO when the last slave closes.
    while let Ok(n) = output.read(&mut buf) {
        if n == 0 || stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pty_round_trip_through_a_socket_pair() {
        let (master, slave, path) = open_pty().expect("pty");
        assert!(path.starts_with("/dev/pts/"), "{path}");
        set_size(slave.as_fd(), WinSize { rows: 33, cols: 101 }).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), master.as_raw_fd(), &path).unwrap();
        drop(master);
        let (got, name) = recv_fd(b.as_raw_fd()).unwrap();
        assert_eq!(name, path);
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
        unsafe { libc::ioctl(got.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
    }
}
