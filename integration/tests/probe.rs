//! The probe binary reports what it sees; run here on the host and inside a simulated node.

use serde_json::Value;
use std::process::Command;
use tug_integration::{cluster::Cluster, probe};

fn report(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("probe output is not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn probe_is_static() {
    let elf = std::fs::read(probe::path()).expect("read probe");
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    // A static executable has no PT_INTERP (type 3) program header naming a dynamic loader.
    let has_interp = (0..phnum).any(|i| elf[phoff + i * phentsize..][..4] == 3u32.to_le_bytes());
    assert!(!has_interp, "tug-probe must not need the dynamic loader");
}

#[test]
fn probe_reports_the_host_view() {
    let out = Command::new(probe::path()).env("TUG_PROBE_MARK", "x1").output().expect("run probe");
    assert!(out.status.success());
    let r = report(&out.stdout);
    assert_eq!(r["uid"], 0);
    assert!(r["pid"].as_u64().unwrap() > 1);
    assert!(r["env"].as_array().unwrap().iter().any(|e| e == "TUG_PROBE_MARK=x1"));
    assert!(r["capabilities"]["effective"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"));
    assert_eq!(r["no_new_privs"], false);
    assert_eq!(r["seccomp"], "disabled");
    assert!(r["mounts"].as_array().unwrap().iter().any(|m| m["target"] == "/"));
    assert!(r["namespaces"]["net"].as_str().unwrap().starts_with("net:["));
    assert!(r["rlimits"]["RLIMIT_NOFILE"]["soft"].as_u64().unwrap() > 0);
}

#[test]
fn probe_sees_a_nodes_interfaces() {
    let cluster = Cluster::new(1).expect("cluster");
    let node = &cluster.nodes[0];
    let out = node.command(&[probe::path().to_str().unwrap()]).output().expect("run probe");
    let r = report(&out.stdout);
    let eth0 =
        r["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "eth0").expect("eth0").clone();
    assert_eq!(eth0["addresses"][0], node.ip.to_string());
}

#[test]
fn probe_exit_and_fork_commands() {
    let st = Command::new(probe::path()).args(["exit", "7"]).status().expect("run");
    assert_eq!(st.code(), Some(7));
    let out = Command::new(probe::path()).args(["fork", "3"]).output().expect("run");
    assert_eq!(report(&out.stdout)["forked"], 3);
    let st = Command::new(probe::path()).arg("bogus").status().expect("run");
    assert_eq!(st.code(), Some(2));
}

/// The probe's gRPC health server against the agent's gRPC prober, inside a node: SERVING
/// passes; NOT_SERVING, an unknown service and a closed port fail in kubelet's words.
#[test]
fn probe_serves_grpc_health_to_the_agents_prober() {
    use std::time::Duration;
    use tug_agent::pods::grpc;
    let cluster = Cluster::new(1).expect("cluster");
    let node = &cluster.nodes[0];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("_"), "SERVING\n").unwrap();
    std::fs::write(dir.path().join("db"), "NOT_SERVING\n").unwrap();
    node.spawn(&[
        probe::path().to_str().unwrap(),
        "serve-grpc-health",
        "19090",
        dir.path().to_str().unwrap(),
    ])
    .unwrap();
    let addr = std::net::SocketAddr::from((node.ip, 19090));
    let ns = std::path::PathBuf::from(format!("/run/netns/{}", node.netns));
    let call = |service: &'static str| {
        tug_agent::network::netns::run_in(Some(&ns), move || {
            grpc::probe(addr, service, Duration::from_secs(2))
        })
        .unwrap()
    };
    let up = tug_integration::wait_for(Duration::from_secs(5), || call("").is_ok());
    assert!(up, "{:?}", call(""));
    assert_eq!(call("db"), Err("service unhealthy (responded with \"NOT_SERVING\")".into()));
    assert_eq!(
        call("gone"),
        Err("error: health rpc probe failed: rpc error: code = NotFound desc = unknown service".into())
    );
    std::fs::write(dir.path().join("db"), "SERVING\n").unwrap();
    assert_eq!(call("db"), Ok(()));
    let closed = std::net::SocketAddr::from((node.ip, 19091));
    let err =
        tug_agent::network::netns::run_in(Some(&ns), move || grpc::probe(closed, "", Duration::from_secs(1)))
            .unwrap()
            .unwrap_err();
    assert!(err.starts_with("error: failed to connect service at \"10.250.0.10:19091\""), "{err}");
}
