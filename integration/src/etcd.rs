//! A real etcd (Debian's `etcd-server`) on loopback ports of its own, for the store's
//! conformance suite and the control-plane tests on the etcd backend.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

/// A real etcd (Debian's `etcd-server`) on loopback ports of its own, killed on drop.
pub struct EtcdProcess {
    child: Child,
    _dir: tempfile::TempDir,
    pub endpoint: String,
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

impl EtcdProcess {
    /// Starts etcd on two free loopback ports. A port picked free can be taken by another
    /// test before etcd binds it (etcd then exits): it is tried again on new ports.
    pub fn start() -> EtcdProcess {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("tug-etcd-").tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client}");
            let mut child = Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--name", "tug-test"])
                .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &format!("tug-test=http://127.0.0.1:{peer}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd (make deps installs etcd-server)");
            let mut exited = false;
            let listening = crate::wait_for(std::time::Duration::from_secs(20), || {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                exited || std::net::TcpStream::connect(("127.0.0.1", client)).is_ok()
            });
            if listening && !exited {
                return EtcdProcess { child, _dir: dir, endpoint };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = format!("etcd did not listen on {endpoint}{}", if exited { " (it exited)" } else { "" });
        }
        panic!("{last}, three times");
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An etcd cluster of one member per simulated node (`10.250.0.x:2379`, peers on `:2380`),
/// each in its node's network namespace, killed on drop.
pub struct EtcdCluster {
    members: Vec<(Child, tempfile::TempDir)>,
    /// `http://IP:2379` of each member, in order.
    pub endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Starts one member on each node and waits until the cluster answers a write.
    pub fn start_in(nodes: &[&crate::cluster::Node]) -> EtcdCluster {
        let names: Vec<String> = (0..nodes.len()).map(|i| format!("tug-m{i}")).collect();
        let initial: Vec<String> =
            nodes.iter().zip(&names).map(|(n, name)| format!("{name}=http://{}:2380", n.ip)).collect();
        let mut cluster = EtcdCluster { members: Vec::new(), endpoints: Vec::new() };
        for (node, name) in nodes.iter().zip(&names) {
            let dir = tempfile::Builder::new().prefix("tug-etcd-").tempdir().unwrap();
            let client = format!("http://{}:2379", node.ip);
            let peer = format!("http://{}:2380", node.ip);
            let child = node
                .command(&["etcd"])
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--name", name])
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "tug-test"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd (make deps installs etcd-server)");
            cluster.members.push((child, dir));
            cluster.endpoints.push(client);
        }
        // A member answers its health endpoint once the cluster has a leader.
        let healthy = crate::wait_for(std::time::Duration::from_secs(60), || {
            nodes[0]
                .command(&["curl", "-sf", "--max-time", "2", &format!("{}/health", cluster.endpoints[0])])
                .output()
                .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true"))
        });
        assert!(healthy, "the etcd cluster did not become healthy");
        cluster
    }

    /// The endpoints as `--etcd-endpoints` takes them.
    pub fn endpoints_flag(&self) -> String {
        self.endpoints.join(",")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `--pki-secret-file` for etcd-backed replicas (mode 0600): the directory, kept while it
/// lives, and the file's path.
pub fn pki_secret() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new().prefix("tug-pki-secret").tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "bm90LWEtcmVhbC1zZWNyZXQtYnV0LWxvbmctZW5vdWdo\n").expect("write the secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let path = secret.to_str().expect("a UTF-8 temp path").to_string();
    (dir, path)
}
