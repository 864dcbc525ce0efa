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
    pub fn start() -> EtcdProcess {
        let dir = tempfile::Builder::new().prefix("tug-etcd-").tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
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
        let listening = || std::net::TcpStream::connect(("127.0.0.1", client)).is_ok();
        assert!(
            crate::wait_for(std::time::Duration::from_secs(20), listening),
            "etcd did not listen on {endpoint}"
        );
        EtcdProcess { child, _dir: dir, endpoint }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
