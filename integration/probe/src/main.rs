//! `tug-probe`: a small static binary that runs inside a container and reports, as JSON on
//! stdout, what the process sees: pid, hostname, ids, capabilities, mounts, cgroup limits,
//! seccomp mode, no_new_privs, rlimits, namespaces, open file descriptors and network
//! interfaces. Tests run it in containers to check isolation from the inside.
//!
//! ```text
//! tug-probe                 # same as `tug-probe report`
//! tug-probe report          # print the JSON report
//! tug-probe exit CODE       # exit with CODE
//! tug-probe sleep SECONDS   # sleep, then exit 0
//! tug-probe hog MIB         # allocate and touch MIB mebibytes, 1 MiB at a time
//! tug-probe fork N          # fork up to N sleeping children; print how many succeeded
//! tug-probe spin MS         # burn CPU for MS milliseconds of wall time; print cpu.stat
//! tug-probe syscalls        # try calls a seccomp profile should stop; print each result
//! tug-probe serve-udp PORT  # answer every datagram with this host's name
//! tug-probe udp IP:PORT     # send one datagram, print the answer (exit 1 after 2 s)
//! tug-probe get IP:PORT     # HTTP GET / over TCP, print the body (exit 1 on failure)
//! tug-probe serve-grpc-health PORT DIR  # a gRPC health server; DIR/SERVICE holds the status
//! ```

mod grpc;
mod report;

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    match args.first().map(String::as_str) {
        None | Some("report") => {
            println!("{}", report::collect());
            ExitCode::SUCCESS
        }
        Some("exit") => ExitCode::from(u8::try_from(arg(1).unwrap_or(0)).unwrap_or(255)),
        Some("sleep") => {
            std::thread::sleep(Duration::from_secs(arg(1).unwrap_or(3600)));
            ExitCode::SUCCESS
        }
        Some("hog") => hog(arg(1).unwrap_or(u64::MAX)),
        Some("fork") => fork(arg(1).unwrap_or(1000)),
        Some("spin") => spin(arg(1).unwrap_or(1000)),
        Some("syscalls") => {
            println!("{}", syscalls());
            ExitCode::SUCCESS
        }
        Some("serve-udp") => serve_udp(arg(1).unwrap_or(9999)),
        Some("udp") => udp(args.get(1).map(String::as_str).unwrap_or("")),
        Some("get") if args.len() > 2 => {
            get_many(args.get(1).map(String::as_str).unwrap_or(""), arg(2).unwrap_or(1), arg(3).unwrap_or(0))
        }
        Some("get") => get(args.get(1).map(String::as_str).unwrap_or("")),
        Some("serve-grpc-health") => grpc::serve(
            u16::try_from(arg(1).unwrap_or(9090)).unwrap_or(9090),
            args.get(2).map_or_else(|| "/tmp/grpc".into(), Into::into),
        ),
        Some(other) => {
            eprintln!(
                "tug-probe: unknown command {other:?} (report, exit, sleep, hog, fork, spin, syscalls, serve-udp, udp, get, serve-grpc-health)"
            );
            ExitCode::from(2)
        }
    }
}

/// One `GET /` from `target` over plain HTTP/1.0: the body, or why not.
fn fetch(target: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = target.parse().map_err(|e| format!("{target:?}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut text = String::new();
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() || s.read_to_string(&mut text).is_err() {
        return Err(format!("no answer from {target}"));
    }
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => Ok(body.to_string()),
        _ => Err(format!("{target} answered: {}", text.lines().next().unwrap_or(""))),
    }
}

/// `GET /` from `target`; prints the body.
fn get(target: &str) -> ExitCode {
    match fetch(target) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tug-probe: {e}");
            if e.starts_with('"') { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// `count` GETs, `pause_ms` apart, each a new connection: one line per answer (its body's
/// first line), `ERROR why` for a failed one — what a test counts traffic splits with.
fn get_many(target: &str, count: u64, pause_ms: u64) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let line = match fetch(target) {
            Ok(body) => body.lines().next().unwrap_or_default().to_string(),
            Err(e) => format!("ERROR {e}"),
        };
        let _ = writeln!(out, "{line}");
        if pause_ms > 0 && i + 1 < count {
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
    }
    ExitCode::SUCCESS
}

/// Answers every datagram on `port` with the hostname.
fn serve_udp(port: u64) -> ExitCode {
    let Ok(sock) = std::net::UdpSocket::bind(("0.0.0.0", u16::try_from(port).unwrap_or(9999))) else {
        eprintln!("tug-probe: cannot bind udp port {port}");
        return ExitCode::FAILURE;
    };
    let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let mut buf = [0u8; 1500];
    loop {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    }
}

/// Sends one datagram to `target` and prints the answer.
fn udp(target: &str) -> ExitCode {
    let sock = match std::net::UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tug-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    if let Err(e) = sock.send_to(b"ping", target) {
        eprintln!("tug-probe: sending to {target:?}: {e}");
        return ExitCode::FAILURE;
    }
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        Ok(n) => {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tug-probe: no answer from {target}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Spins on the CPU for `ms` milliseconds of wall time, then prints the cgroup's `cpu.stat`
/// (v2 at the root of `/sys/fs/cgroup`, v1 under `cpu/`) as a JSON object of numbers.
fn spin(ms: u64) -> ExitCode {
    let until = std::time::Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while std::time::Instant::now() < until {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let text = ["/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let stat: serde_json::Map<String, serde_json::Value> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), serde_json::Value::from(v.trim().parse::<u64>().ok()?))))
        .collect();
    println!("{}", serde_json::Value::Object(stat));
    ExitCode::SUCCESS
}

/// Allocates memory 1 MiB at a time and touches every page so it is really charged.
fn hog(mib: u64) -> ExitCode {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        held.push(vec![1u8; 1 << 20]);
        if i % 16 == 0 {
            eprintln!("tug-probe: holding {} MiB", i + 1);
        }
    }
    println!("{{\"hog_mib\":{}}}", held.len());
    ExitCode::SUCCESS
}

/// Forks up to `n` children that die with the parent; prints how many forks succeeded.
fn fork(n: u64) -> ExitCode {
    use nix::unistd::{ForkResult, fork};
    let mut made = 0u64;
    let mut error = String::new();
    let parent = nix::unistd::getpid();
    for _ in 0..n {
        // SAFETY: the child only sleeps and exits; it touches no locks held by other threads
        // (this process is single-threaded).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // Let go of the parent's stdout and stderr, so a reader sees them close when
                // the parent exits.
                // SAFETY: closing the standard descriptors, which nothing in this child uses, and
                // asking to die with the parent so no child outlives the probe.
                unsafe {
                    libc::close(1);
                    libc::close(2);
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                // The parent may have exited before the death signal was asked for.
                if nix::unistd::getppid() != parent {
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_secs(30));
                std::process::exit(0);
            }
            Ok(ForkResult::Parent { .. }) => made += 1,
            Err(e) => {
                error = e.desc().to_string();
                break;
            }
        }
    }
    println!("{}", serde_json::json!({"forked": made, "error": error}));
    ExitCode::SUCCESS
}

/// Tries calls that the default seccomp profile refuses, with arguments that make each one
/// fail harmlessly (or do nothing) when it does reach the kernel, and a few it allows. Prints
/// `{"name": "ok" | "EPERM" | …}`: the errno name, so a test tells a filter's EPERM from the
/// kernel's own answer.
fn syscalls() -> serde_json::Value {
    fn sys(nr: libc::c_long, a: [u64; 5]) -> String {
        // SAFETY: raw syscalls with null or invalid pointers and flags the kernel rejects
        // before touching memory; none changes this process's state except the final unshare,
        // which only affects this short-lived probe. String arguments point at static data.
        let rc = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
        if rc >= 0 { "ok".to_string() } else { format!("{:?}", nix::errno::Errno::last()) }
    }
    let ptr = |c: &'static std::ffi::CStr| c.as_ptr() as u64;
    let calls: [(&str, libc::c_long, [u64; 5]); 10] = [
        ("getpid", libc::SYS_getpid, [0; 5]),
        ("personality_query", libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0]),
        ("personality_other", libc::SYS_personality, [0x0400_0000, 0, 0, 0, 0]),
        ("getppid", libc::SYS_getppid, [0; 5]),
        // Bad flags: EINVAL once past the capability check.
        ("kexec_load", libc::SYS_kexec_load, [0, 0, 0, 0xdead_0000, 0]),
        ("open_by_handle_at", libc::SYS_open_by_handle_at, [u64::MAX, 0, 0, 0, 0]),
        ("mount", libc::SYS_mount, [ptr(c"tug-none"), ptr(c"/nonexistent-tug"), ptr(c"tmpfs"), 0, 0]),
        // KEYCTL_GET_KEYRING_ID of the session keyring (-3), without creating it.
        ("keyctl", libc::SYS_keyctl, [0, u64::MAX - 2, 0, 0, 0]),
        ("bpf", libc::SYS_bpf, [5, 0, 0, 0, 0]),
        ("unshare_user", libc::SYS_unshare, [0x1000_0000, 0, 0, 0, 0]),
    ];
    let out: serde_json::Map<String, serde_json::Value> =
        calls.iter().map(|(name, nr, args)| (name.to_string(), sys(*nr, *args).into())).collect();
    serde_json::Value::Object(out)
}
