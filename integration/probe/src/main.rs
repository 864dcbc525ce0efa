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
//! ```

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
        Some(other) => {
            eprintln!("tug-probe: unknown command {other:?} (report, exit, sleep, hog, fork)");
            ExitCode::from(2)
        }
    }
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
