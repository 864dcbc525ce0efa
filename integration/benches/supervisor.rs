//! `make bench AREA=supervisor`: the footprint of supervisors. Starts `TUG_BENCH_SUPERVISORS`
//! (default 100) idle containers (`sleep`) under release `tug-shim supervise`, reads each
//! supervisor's resident set from `/proc/PID/status`, and prints the mean and the largest.
//! Goal: under 1.5 MiB each (conmon, Podman's equivalent, is about that).

use std::process::Command;
use tug_integration::bundle::Bundle;
use tug_shim::supervisor::protocol::{Client, Request};

/// (RSS, PSS, private anonymous) in KiB from `/proc/PID/smaps_rollup`. RSS counts the
/// binary's and libc's pages every supervisor shares; PSS divides them among their users.
fn memory_kib(pid: u32) -> [u64; 3] {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    [field("Rss:"), field("Pss:"), field("Anonymous:")]
}

fn main() {
    let n: usize = std::env::var("TUG_BENCH_SUPERVISORS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let shim = std::env::var_os("TUG_SHIM_BINARY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tug_integration::probe::target_dir().join("release").join("tug-shim"));
    println!("supervisors of {}", shim.display());
    let mut bundle = Bundle::new(&["/bin/sleep", "3600"]);
    let state = bundle.path().join("sup");
    let mut pids = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..n {
        let id = format!("idle{i}");
        bundle.write(&id);
        let out = Command::new(&shim)
            .arg("--root")
            .arg(bundle.root())
            .args(["supervise", "--bundle"])
            .arg(bundle.path())
            .arg("--state")
            .arg(&state)
            .arg("--log-path")
            .arg(bundle.path().join(format!("logs/{id}.log")))
            .arg(&id)
            .output()
            .expect("run tug-shim supervise");
        match String::from_utf8_lossy(&out.stdout).trim().parse::<u32>() {
            Ok(pid) => pids.push((id, pid)),
            Err(_) => eprintln!("supervise {id}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        }
    }
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mem: Vec<[u64; 3]> = pids.iter().map(|(_, p)| memory_kib(*p)).collect();
    let count = u64::try_from(mem.len().max(1)).unwrap_or(1);
    let mean = |i: usize| mem.iter().map(|m| m[i]).sum::<u64>() / count;
    #[allow(clippy::cast_precision_loss)] // small counts
    let per_start = start_ms / n.max(1) as f64;
    println!(
        "BENCH supervisor idle-memory supervisors={} rss_kib={} pss_kib={} private_anon_kib={} max_rss_kib={} goal_kib=1536 start_ms_each={per_start:.1}",
        mem.len(),
        mean(0),
        mean(1),
        mean(2),
        mem.iter().map(|m| m[0]).max().unwrap_or(0)
    );
    for (id, _) in &pids {
        if let Ok(mut c) = Client::connect(&state.join(id).join("control.sock")) {
            let _ = c.call(&Request::Kill { signal: 9, all: true });
            let _ = c.call(&Request::Wait);
            let _ = c.call(&Request::Shutdown);
        }
    }
}
