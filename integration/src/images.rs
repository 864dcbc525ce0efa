//! Test images and a real registry.
//!
//! - [`Layer`]: a layer tar built entry by entry — files, directories, symlinks, hard links,
//!   whiteouts, and raw names (`../escape`) that no well-behaved tool writes.
//! - [`Layout`]: an OCI image layout on disk (blobs, manifests, an index, multi-arch indexes).
//! - [`Registry`]: Debian's `docker-registry` on a loopback port with a private storage
//!   directory, optionally behind htpasswd basic auth, killed by PID on drop; [`push`] copies a
//!   layout into it with `skopeo`.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A layer tar under construction.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Layer { builder }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(mut self, path: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.builder.append_data(&mut h, path, &[][..]).expect("dir");
        self
    }

    pub fn file(self, path: &str, content: &[u8]) -> Layer {
        self.file_owned(path, content, 0o644, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, content: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, mode, content.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.builder.append_data(&mut h, path, content).expect("file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut h, path, target).expect("symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.builder.append_link(&mut h, path, target).expect("hard link");
        self
    }

    /// A file with a PAX `SCHILY.xattr.NAME` record.
    pub fn file_with_xattr(mut self, path: &str, content: &[u8], name: &str, value: &[u8]) -> Layer {
        let key = format!("SCHILY.xattr.{name}");
        self.builder.append_pax_extensions([(key.as_str(), value)]).expect("pax");
        let mut h = Self::header(tar::EntryType::Regular, 0o644, content.len() as u64);
        self.builder.append_data(&mut h, path, content).expect("file");
        self
    }

    /// An entry whose name is written byte for byte (the tar crate refuses `..` otherwise).
    pub fn raw_file(mut self, name: &str, content: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, content.len() as u64);
        let bytes = name.as_bytes();
        assert!(bytes.len() < 100, "raw names must fit the old header");
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        self.builder.append(&h, content).expect("raw entry");
        self
    }

    /// The busybox userland: /bin/busybox, applets as symlinks, a passwd file.
    pub fn busybox(self) -> Layer {
        let bb = std::fs::read("/bin/busybox").expect("read /bin/busybox (install busybox-static)");
        let mut l = self.dir("bin").dir("etc").dir("tmp").dir("proc").dir("sys").dir("dev");
        l = l.file_owned("bin/busybox", &bb, 0o755, 0, 0);
        for applet in ["sh", "cat", "ls", "echo", "sleep", "true", "wget", "httpd", "stat", "id"] {
            l = l.symlink(&format!("bin/{applet}"), "busybox");
        }
        l.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    None,
    Gzip,
    Zstd,
}

impl Compress {
    pub fn media_type(self) -> &'static str {
        match self {
            Compress::None => "application/vnd.oci.image.layer.v1.tar",
            Compress::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compress::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn apply(self, tar: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match self {
            Compress::None => tar.to_vec(),
            Compress::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).expect("gzip");
                e.finish().expect("gzip")
            }
            Compress::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
        }
    }
}

/// An OCI image layout being written.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        Layout { dir: dir.to_path_buf(), index: Vec::new() }
    }

    /// Writes a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let d = sha256(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), bytes).expect("blob");
        json!({"mediaType": media_type, "digest": d, "size": bytes.len()})
    }

    /// An image manifest for these layer tars (bottom first) with a config running `cmd`;
    /// returns the manifest's descriptor (not yet in the index).
    pub fn image(&self, layers: &[(Vec<u8>, Compress)], cmd: &[&str], arch: &str) -> Value {
        let diff_ids: Vec<String> = layers.iter().map(|(t, _)| sha256(t)).collect();
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config =
            self.blob("application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
        let layers: Vec<Value> = layers.iter().map(|(t, c)| self.blob(c.media_type(), &c.apply(t))).collect();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        });
        let mut d =
            self.blob("application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap());
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        d
    }

    /// An index over several platform manifests; returns its descriptor.
    pub fn multi_arch(&self, manifests: &[Value]) -> Value {
        let index = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
        });
        self.blob("application/vnd.oci.image.index.v1+json", &serde_json::to_vec(&index).unwrap())
    }

    /// Lists `desc` in index.json under the tag or name `ref_name`.
    pub fn tag(&mut self, mut desc: Value, ref_name: &str) -> &mut Layout {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": ref_name});
        if let Some(o) = desc.as_object_mut() {
            o.remove("platform");
        }
        self.index.push(desc);
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.index});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).expect("index.json");
        self
    }
}

/// Debian's docker-registry on 127.0.0.1, storage in a private directory.
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `auth`, every request needs that user and password.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        Registry::start_with(auth.map(|(u, p)| Auth::Basic(u.to_string(), p.to_string())))
    }

    /// Starts a registry with basic auth, or bearer tokens from a [`TokenServer`].
    pub fn start_with(auth: Option<Auth>) -> Registry {
        let dir = tempfile::Builder::new().prefix("tug-registry").tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("data");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        match auth {
            Some(Auth::Basic(user, pass)) => {
                let hash = bcrypt::hash(pass, 4).expect("bcrypt");
                std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).expect("htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: tug-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            Some(Auth::Token { realm, cert_pem }) => {
                std::fs::write(dir.path().join("token.pem"), cert_pem).expect("token cert");
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    dir.path().join("token.pem").display()
                ));
            }
            None => {}
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("start docker-registry (install it: make deps)");
        let r = Registry { addr, storage, child, _dir: dir };
        let up = crate::wait_for(std::time::Duration::from_secs(20), || {
            std::net::TcpStream::connect(&r.addr).is_ok()
        });
        assert!(up, "docker-registry did not listen on {}: {}", r.addr, r.log());
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file holding blob `digest` in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a [`Registry`] authenticates.
pub enum Auth {
    /// htpasswd: this user and password.
    Basic(String, String),
    /// Bearer tokens from `realm`, signed by the key of `cert_pem`.
    Token { realm: String, cert_pem: String },
}

pub const TOKEN_SERVICE: &str = "tug-test-registry";
pub const TOKEN_ISSUER: &str = "tug-test-issuer";

/// A token server on 127.0.0.1, as Docker's registries use (`auth: token`): `GET /token?
/// service=…&scope=repository:NAME:pull,push` with basic credentials answers a JWT (ES256,
/// its certificate in the `x5c` header) granting the asked actions to the one known user;
/// anonymous callers get a token granting nothing; wrong credentials get 401. Runs on a
/// thread until the process ends.
pub struct TokenServer {
    pub realm: String,
    pub cert_pem: String,
}

impl TokenServer {
    pub fn start(user: &str, pass: &str) -> TokenServer {
        use base64::Engine;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = rcgen::CertificateParams::new(vec!["tug-token-issuer".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
        )
        .expect("signing key");
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let realm = format!("http://{}/token", listener.local_addr().expect("addr"));
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve_token(stream, &expected, &signer, &x5c);
            }
        });
        TokenServer { realm, cert_pem: cert.pem() }
    }
}

fn serve_token(
    mut stream: std::net::TcpStream,
    expected: &str,
    signer: &aws_lc_rs::signature::EcdsaKeyPair,
    x5c: &str,
) -> std::io::Result<()> {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let reply = |stream: &mut std::net::TcpStream, code: &str, body: &str| {
        write!(
            stream,
            "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let granted = match authorization.as_deref() {
        None => false,
        Some(a) if a == expected => true,
        Some(_) => {
            return reply(
                &mut stream,
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
        }
    };
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let decode = |s: &str| {
        s.replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2F", "/")
            .replace("%2f", "/")
            .replace("%2C", ",")
            .replace("%2c", ",")
    };
    let access: Vec<serde_json::Value> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .filter(|_| granted)
        .filter_map(|scope| {
            let scope = decode(scope);
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?.to_string(), parts.next()?.to_string(), parts.next()?.to_string());
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": if granted { "tug" } else { "" }, "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input =
        format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = signer
        .sign(&aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| std::io::Error::other("signing"))?;
    let token = format!("{signing_input}.{}", b64(sig.as_ref()));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    reply(&mut stream, "200 OK", &body)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// `skopeo copy` of `layout:tag` to `registry/repo`; `all` copies every platform of an index.
pub fn push(layout: &Path, tag: &str, dest: &str, creds: Option<(&str, &str)>, all: bool) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]);
    if all {
        cmd.arg("--all");
    }
    if let Some((u, p)) = creds {
        cmd.arg(format!("--dest-creds={u}:{p}"));
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo (install it: make deps)");
    assert!(out.status.success(), "skopeo copy to {dest}: {}", String::from_utf8_lossy(&out.stderr));
}
