//! `make bench AREA=runtime`: tug-shim beside runc on the same busybox bundle, alternating in
//! one invocation (these machines are shared and noisy: only ratios from one run mean
//! anything).
//!
//! Measures, each over `TUG_BENCH_N` runs (default 100) of a container running `/bin/true`:
//! - `run-true`: one `run` command (create + start + wait + delete in one process);
//! - `lifecycle-true`: the four commands `create`, `start`, `state` until stopped, `delete`;
//! - `peak-rss`: the largest resident set of the runtime's own process over those runs;
//! - `fork-exec`: a bare fork + exec of busybox `true`, the floor any runtime sits on.
//!
//! Both container measures run twice: `profile=plain` (runc's default spec) and
//! `profile=hardened` (the same with Tug's default seccomp profile and a device allow-list,
//! what the agent gives every pod); `hardening-overhead` is tug's hardened median over its
//! plain one (the runtime-hardening goal: at most 1.10).
//!
//! Anchors: runc and crun from Debian, each when installed and able to run a container here
//! (crun 1.8 refuses hybrid hosts; `make bench` runs this benchmark again inside the VM
//! suite's pure cgroup v2 guest, where it can). Prints `BENCH runtime <measure> cgroup=<kind>
//! key=value ...` lines, with `ratio_<anchor>` = tug's median over the anchor's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tug_integration::bundle::Bundle;

struct Runtime {
    name: &'static str,
    binary: PathBuf,
    root: PathBuf,
}

/// Wall time, peak RSS (KiB) and success of one command or sequence.
type Sample = (Duration, i64, bool);
type Measure = fn(&Runtime, &Path, &str) -> Sample;

/// Times one command; reaps it with `wait4`, which also gives its peak RSS.
#[allow(clippy::zombie_processes)] // reaped by wait4 below
fn timed(cmd: &mut Command) -> Sample {
    let start = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers to locals.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    (start.elapsed(), usage.ru_maxrss, libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    // The index is a rank within a small vector; truncation towards zero is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((last as f64) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

struct Stats {
    median: f64,
    p95: f64,
    failures: usize,
}

fn stats(mut samples: Vec<Duration>, failures: usize) -> Stats {
    samples.sort();
    Stats { median: percentile(&samples, 0.5), p95: percentile(&samples, 0.95), failures }
}

fn run_once(rt: &Runtime, bundle: &Path, id: &str) -> Sample {
    let mut cmd = Command::new(&rt.binary);
    cmd.arg("--root").arg(&rt.root).args(["run", "--bundle"]).arg(bundle).arg(id);
    timed(&mut cmd)
}

fn lifecycle_once(rt: &Runtime, bundle: &Path, id: &str) -> Sample {
    let start = Instant::now();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&rt.binary);
        c.arg("--root").arg(&rt.root).args(args);
        c
    };
    let b = bundle.to_str().expect("utf-8 bundle path");
    let (_, rss1, ok1) = timed(&mut cmd(&["create", "--bundle", b, id]));
    let (_, rss2, ok2) = timed(&mut cmd(&["start", id]));
    let mut stopped = false;
    for _ in 0..2000 {
        let out = cmd(&["state", id]).stderr(Stdio::null()).output().expect("state");
        if String::from_utf8_lossy(&out.stdout).contains("\"stopped\"") {
            stopped = true;
            break;
        }
    }
    let (_, rss3, ok3) = timed(&mut cmd(&["delete", id]));
    (start.elapsed(), rss1.max(rss2).max(rss3), ok1 && ok2 && ok3 && stopped)
}

fn main() {
    let n: usize = std::env::var("TUG_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut bundle = Bundle::new(&["/bin/true"]);
    let parent = bundle.cgroup_parent.clone();
    bundle.spec["linux"]["cgroupsPath"] = serde_json::json!(format!("{parent}/bench"));
    std::fs::write(bundle.path().join("config.json"), serde_json::to_string(&bundle.spec).expect("spec"))
        .expect("write");
    // The hardened bundle: the same rootfs (by absolute path), with seccomp and device rules.
    let hardened = bundle.path().join("hardened");
    std::fs::create_dir_all(&hardened).expect("hardened bundle");
    let mut spec = bundle.spec.clone();
    spec["root"]["path"] = serde_json::json!(bundle.path().join("rootfs"));
    let caps: Vec<String> =
        serde_json::from_value(spec["process"]["capabilities"]["bounding"].clone()).unwrap_or_default();
    spec["linux"]["seccomp"] = tug_shim::seccomp::profile::default_profile(&caps);
    spec["linux"]["resources"]["devices"] = serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
        {"allow": true, "type": "c", "major": 136, "access": "rwm"}
    ]);
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("{parent}/bench-hardened"));
    std::fs::write(hardened.join("config.json"), serde_json::to_string(&spec).expect("spec")).expect("write");
    let release = tug_integration::probe::target_dir().join("release").join("tug-shim");
    let mut runtimes = vec![Runtime { name: "tug", binary: release, root: bundle.path().join("tug-root") }];
    for anchor in ["runc", "crun"] {
        let Some(binary) = which(anchor) else {
            println!("{anchor} is not installed: no comparison with it (make deps installs it)");
            continue;
        };
        let rt = Runtime { name: anchor, binary, root: bundle.path().join(format!("{anchor}-root")) };
        // A trial run: crun 1.8 refuses hybrid cgroup hosts, and then only the VM compares it.
        let out = Command::new(&rt.binary)
            .arg("--root")
            .arg(&rt.root)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg("trial")
            .stdin(Stdio::null())
            .output()
            .expect("trial run");
        if out.status.success() {
            runtimes.push(rt);
        } else {
            let why = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string();
            println!("{anchor} cannot run containers here: {why}");
        }
    }
    let layout = tug_shim::cgroups::layout::Layout::detect().map(|l| l.kind()).unwrap_or("unknown");
    let measures: [(&str, Measure); 2] = [("run-true", run_once), ("lifecycle-true", lifecycle_once)];
    let mut peak = vec![0i64; runtimes.len()];
    let mut tug_medians = Vec::new();
    let profiles = [("plain", bundle.path().to_path_buf()), ("hardened", hardened.clone())];
    for (measure, f) in &measures {
        // Interleaved run by run, so drift on a shared machine hits both profiles alike.
        let mut samples: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); runtimes.len()]; profiles.len()];
        let mut failures = vec![vec![0usize; runtimes.len()]; profiles.len()];
        for i in 0..n {
            // Progress on stderr: a slow guest's console is never silent for long.
            if i % 10 == 0 {
                eprintln!("runtime: {measure} {i}/{n}");
            }
            for (p, (_, dir)) in profiles.iter().enumerate() {
                for (k, rt) in runtimes.iter().enumerate() {
                    let (d, rss, ok) = f(rt, dir, &format!("b{i}"));
                    samples[p][k].push(d);
                    peak[k] = peak[k].max(rss);
                    failures[p][k] += usize::from(!ok);
                }
            }
        }
        for (p, (profile, _)) in profiles.iter().enumerate() {
            let s: Vec<Stats> = samples[p].drain(..).zip(&failures[p]).map(|(v, f)| stats(v, *f)).collect();
            tug_medians.push((*measure, *profile, s.iter().map(|x| x.median).collect::<Vec<f64>>()));
            let mut line = format!("BENCH runtime {measure} cgroup={layout} profile={profile} n={n}");
            for (rt, st) in runtimes.iter().zip(&s) {
                line += &format!(
                    " {0}_ms={1:.2} {0}_p95_ms={2:.2} {0}_failures={3}",
                    rt.name, st.median, st.p95, st.failures
                );
            }
            for (rt, st) in runtimes.iter().zip(&s).skip(1) {
                line += &format!(" ratio_{}={:.2}", rt.name, s[0].median / st.median);
            }
            println!("{line}");
        }
    }
    let mut line = format!("BENCH runtime peak-rss cgroup={layout}");
    for (rt, kib) in runtimes.iter().zip(&peak) {
        line += &format!(" {}_kib={kib}", rt.name);
    }
    for (rt, kib) in runtimes.iter().zip(&peak).skip(1) {
        #[allow(clippy::cast_precision_loss)] // KiB counts far below 2^52
        let ratio = peak[0] as f64 / (*kib).max(1) as f64;
        line += &format!(" ratio_{}={ratio:.2}", rt.name);
    }
    println!("{line}");
    for pair in tug_medians.chunks(2) {
        if let [(measure, _, plain), (_, _, hard)] = pair {
            let mut line = format!("BENCH runtime hardening-overhead cgroup={layout} measure={measure}");
            for (k, rt) in runtimes.iter().enumerate() {
                line += &format!(" {}_ratio={:.2}", rt.name, hard[k] / plain[k]);
            }
            println!("{line} goal_max=1.10");
        }
    }
    fork_exec_floor(n);
    drop(bundle);
}

/// A bare fork + exec of a static binary: the floor under any runtime's time.
fn fork_exec_floor(n: usize) {
    let mut samples: Vec<Duration> =
        (0..n).map(|_| timed(Command::new("/bin/busybox").arg("true")).0).collect();
    samples.sort();
    println!("BENCH runtime fork-exec n={n} median_ms={:.2}", percentile(&samples, 0.5));
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}
