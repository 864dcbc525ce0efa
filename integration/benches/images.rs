//! `make bench AREA=images`: pulling and unpacking a 50 MB image (five 10 MB layers) from a
//! registry on loopback — cold (empty store) and warm (an image sharing four of its five
//! layers is already there) — beside the anchor, `skopeo copy` to an OCI layout followed by
//! `umoci unpack`, run on the same registry in the same invocation. Medians of
//! `TUG_BENCH_RUNS` (default 5) runs.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tug_images::{PullPolicy, Puller, Store};
use tug_integration::images::{Compress, Layer, Layout, Registry, push};

/// 10 MB that compress about as well as real binaries do (a little).
fn layer(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = vec![0u8; 10 << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = x.to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    // Every other 4 KiB page zero-filled, like the sparse parts of binaries.
    for page in data.chunks_mut(8192) {
        let half = page.len().min(4096);
        page[..half].fill(0);
    }
    Layer::new().file(&format!("data/layer-{seed}.bin"), &data).tar()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    let runs: usize = std::env::var("TUG_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let reg = Registry::start(None);
    let work = tempfile::Builder::new().prefix("tug-bench-images").tempdir().expect("dir");
    let l = work.path().join("layout");
    let mut layout = Layout::new(&l);
    let shared: Vec<(Vec<u8>, Compress)> = (1..=4).map(|i| (layer(i), Compress::Gzip)).collect();
    let mut a = shared.clone();
    a.push((layer(5), Compress::Gzip));
    let mut b = shared;
    b.push((layer(6), Compress::Gzip));
    let ma = layout.image(&a, &["/bin/sh"], "amd64");
    let mb = layout.image(&b, &["/bin/sh"], "amd64");
    let size: i64 = a.iter().map(|(t, _)| i64::try_from(t.len()).unwrap()).sum();
    layout.tag(ma, "a").tag(mb, "b");
    push(&l, "a", &format!("{}/bench/img:a", reg.addr), None, false);
    push(&l, "b", &format!("{}/bench/img:b", reg.addr), None, false);
    let image_a = format!("{}/bench/img:a", reg.addr);
    let image_b = format!("{}/bench/img:b", reg.addr);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let (mut anchor_cold, mut anchor_warm) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Tug.
        let root = work.path().join(format!("store-{i}"));
        let store = Arc::new(Store::open(&root).expect("store"));
        let puller = Puller::new(Arc::clone(&store), vec![reg.addr.clone()]);
        let t = Instant::now();
        rt.block_on(puller.ensure(&image_a, PullPolicy::Always, None)).expect("pull a");
        cold.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(puller.ensure(&image_b, PullPolicy::Always, None)).expect("pull b");
        warm.push(t.elapsed());
        std::fs::remove_dir_all(&root).expect("clean store");

        // skopeo copy + umoci unpack.
        let oci = work.path().join(format!("oci-{i}"));
        let t = Instant::now();
        sh(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{image_a}"))
            .arg(format!("oci:{}:a", oci.display())));
        sh(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:a", oci.display()))
            .arg(work.path().join(format!("bundle-a-{i}"))));
        anchor_cold.push(t.elapsed());
        let t = Instant::now();
        sh(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{image_b}"))
            .arg(format!("oci:{}:b", oci.display())));
        sh(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:b", oci.display()))
            .arg(work.path().join(format!("bundle-b-{i}"))));
        anchor_warm.push(t.elapsed());
        for d in [oci, work.path().join(format!("bundle-a-{i}")), work.path().join(format!("bundle-b-{i}"))] {
            std::fs::remove_dir_all(d).expect("clean anchor");
        }
    }
    let mb = size >> 20;
    println!(
        "BENCH images pull-cold size_mb={mb} runs={runs} tug_ms={:.0} skopeo_umoci_ms={:.0}",
        median(cold),
        median(anchor_cold)
    );
    println!(
        "BENCH images pull-warm-shared-layers size_mb={mb} new_mb=10 runs={runs} tug_ms={:.0} skopeo_umoci_ms={:.0}",
        median(warm),
        median(anchor_warm)
    );
}
