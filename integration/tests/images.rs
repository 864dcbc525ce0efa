//! Images end to end: a real registry (Debian's docker-registry on loopback) fed by skopeo,
//! the store, layer unpacking and overlay rootfs mounts. Root only.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tug_images::auth::from_dockerconfigjson;
use tug_images::manifest::Platform;
use tug_images::{PullPolicy, Puller, Store};
use tug_integration::images::{Compress, Layer, Layout, Registry, push, sha256};

fn store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::Builder::new().prefix("tug-images").tempdir().unwrap();
    let s = Store::open(dir.path().join("store")).unwrap();
    (dir, Arc::new(s))
}

/// `tar -C dir -cf out .`: the directory as an archive, as `docker save` or a tarred layout.
fn tar_dir(dir: &Path, out: &Path) {
    let st =
        std::process::Command::new("tar").arg("-C").arg(dir).arg("-cf").arg(out).arg(".").status().unwrap();
    assert!(st.success(), "tar {}", dir.display());
}

fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer of the length given.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "getxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
    buf[..usize::try_from(len).unwrap()].to_vec()
}

/// An image whose top layer changes the busybox layer below it in every way overlayfs has.
fn layered_layout(dir: &Path) -> Layout {
    let mut layout = Layout::new(dir);
    let base = Layer::new()
        .busybox()
        .dir("data")
        .file("data/gone", b"deleted above")
        .dir("data/hidden")
        .file("data/hidden/old", b"hidden by an opaque dir above")
        .file("data/kept", b"kept");
    // The hard link's target comes before it in the same layer, as tar writes them.
    let top = Layer::new()
        .file("data/.wh.gone", b"")
        .dir("data/hidden")
        .file("data/hidden/.wh..wh..opq", b"")
        .file("data/hidden/new", b"new")
        .file("data/kept-too", b"kept too")
        .hardlink("data/kept-link", "data/kept-too")
        .file_owned("data/owned", b"x", 0o4750, 1234, 5678)
        .symlink("data/link", "kept")
        .file_with_xattr("data/xattr", b"x", "user.tug", b"yes");
    let m = layout.image(&[(base.tar(), Compress::Gzip), (top.tar(), Compress::Zstd)], &["/bin/sh"], "amd64");
    layout.tag(m, "tug.test/layered:1");
    layout
}

#[test]
fn layers_keep_whiteouts_opaque_dirs_links_owners_and_xattrs() {
    let (dir, store) = store();
    layered_layout(&dir.path().join("layout"));
    let got = tug_images::import::import(&store, &dir.path().join("layout"), None).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "tug.test/layered:1");
    let rootfs = store.prepare("tug-it-layered", &got[0]).unwrap();
    let d = rootfs.join("data");
    assert!(!d.join("gone").exists(), "a whiteout deletes the lower file");
    assert_eq!(entries(&d.join("hidden")), ["new"], "an opaque dir hides the lower dir's content");
    assert_eq!(std::fs::read(d.join("kept")).unwrap(), b"kept");
    let (a, b) =
        (std::fs::metadata(d.join("kept-too")).unwrap(), std::fs::metadata(d.join("kept-link")).unwrap());
    assert_eq!(a.ino(), b.ino(), "a hard link shares its target's inode");
    assert_eq!(std::fs::read_link(d.join("link")).unwrap(), Path::new("kept"));
    let owned = std::fs::metadata(d.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o7777), (1234, 5678, 0o4750));
    assert_eq!(xattr(&d.join("xattr"), "user.tug"), b"yes");
    assert!(std::fs::symlink_metadata(rootfs.join("bin/sh")).unwrap().file_type().is_symlink());
    // Writes go to the container's upper dir, never into a shared layer.
    std::fs::write(rootfs.join("data/kept"), b"changed").unwrap();
    let layer = store.layer_path(&tug_images::digest::Digest::parse(&got[0].layers[0].diff_id).unwrap());
    assert_eq!(std::fs::read(layer.join("data/kept")).unwrap(), b"kept");
    // In use: rm refuses; after the snapshot goes, rm removes everything.
    let err = store.remove(std::slice::from_ref(&got[0].name)).unwrap_err();
    assert!(err.contains("in use by container tug-it-layered"), "{err}");
    store.remove_snapshot("tug-it-layered").unwrap();
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("tug-it-layered"));
    store.remove(std::slice::from_ref(&got[0].name)).unwrap();
    assert!(entries(&store.root().join("blobs/sha256")).is_empty());
    assert!(entries(&store.root().join("layers")).is_empty());
}

#[test]
fn a_layer_escaping_its_directory_is_refused_and_leaves_nothing() {
    let (dir, store) = store();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", Layer::new().dir("a").raw_file("a/../../escaped", b"pwned").tar()),
        (
            "symlink",
            Layer::new()
                .symlink("evil", outside.to_str().unwrap())
                .file("evil/pwned", b"written through a symlink")
                .tar(),
        ),
        ("hardlink", Layer::new().raw_file("x", b"").hardlink("h", "/etc/passwd").tar()),
    ];
    for (name, tar) in cases {
        let l = dir.path().join(format!("layout-{name}"));
        let mut layout = Layout::new(&l);
        let m = layout.image(&[(tar, Compress::Gzip)], &["/bin/sh"], "amd64");
        layout.tag(m, "tug.test/evil:1");
        let err = tug_images::import::import(&store, &l, None).unwrap_err();
        let want = match name {
            "dotdot" => "escape the layer",
            "symlink" => "is a symlink",
            _ => "not in this layer",
        };
        assert!(err.contains(want), "{name}: {err}");
        assert!(entries(&store.root().join("layers")).is_empty(), "{name}: a refused layer is not kept");
        assert!(entries(&store.root().join("tmp")).is_empty(), "{name}: nothing left in tmp");
        assert!(store.images().unwrap().is_empty());
    }
    assert!(entries(&outside).is_empty(), "nothing written outside the layer");
    assert!(!dir.path().join("escaped").exists());
}

#[test]
fn docker_save_archives_and_oci_layout_tars_import() {
    let (dir, store) = store();
    // docker save: manifest.json, the config, plain layer tars.
    let save = dir.path().join("save");
    std::fs::create_dir_all(save.join("l1")).unwrap();
    let layer = Layer::new().busybox().file("hello", b"from docker save").tar();
    std::fs::write(save.join("l1/layer.tar"), &layer).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/cat", "/hello"]}, "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}});
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    std::fs::write(save.join(&config_name), &config).unwrap();
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": ["hello:1"], "Layers": ["l1/layer.tar"]}]);
    std::fs::write(save.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let archive = dir.path().join("hello.tar");
    tar_dir(&save, &archive);
    let got = tug_images::import::import(&store, &archive, None).unwrap();
    assert_eq!(got[0].name, "docker.io/library/hello:1");
    let cfg = store.config(&got[0]).unwrap();
    assert_eq!(cfg.config.cmd.unwrap(), ["/bin/cat", "/hello"]);
    let rootfs = store.prepare("tug-it-save", &got[0]).unwrap();
    assert_eq!(std::fs::read(rootfs.join("hello")).unwrap(), b"from docker save");
    store.remove_snapshot("tug-it-save").unwrap();

    // An OCI layout as a tar, named only by a tag: --name is required, and works.
    let l = dir.path().join("layout");
    let mut layout = Layout::new(&l);
    let m = layout.image(&[(layer.clone(), Compress::Gzip)], &["/bin/sh"], "amd64");
    layout.tag(m, "1.0");
    let tar = dir.path().join("layout.tar");
    tar_dir(&l, &tar);
    let err = tug_images::import::import(&store, &tar, None).unwrap_err();
    assert!(err.contains("--name"), "{err}");
    let got = tug_images::import::import(&store, &tar, Some("tug.test/layout:1.0")).unwrap();
    assert_eq!(got[0].name, "tug.test/layout:1.0");
    // Both images share the one busybox layer.
    assert_eq!(entries(&store.root().join("layers")).len(), 1);
    assert!(entries(&store.root().join("tmp")).is_empty());
    // A file that is neither.
    std::fs::write(dir.path().join("junk"), b"not a tar").unwrap();
    assert!(tug_images::import::import(&store, &dir.path().join("junk"), None).is_err());
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Pushes a two-layer image (busybox gzip, app zstd) and a two-platform index.
fn populate(reg: &Registry, dir: &Path, creds: Option<(&str, &str)>) -> String {
    let l = dir.join("push");
    let mut layout = Layout::new(&l);
    let base = Layer::new().busybox().tar();
    let app = Layer::new().file("app", b"zstd layer").tar();
    let m = layout.image(&[(base.clone(), Compress::Gzip), (app, Compress::Zstd)], &["/bin/sh"], "amd64");
    let digest = m["digest"].as_str().unwrap().to_string();
    layout.tag(m, "app");
    let amd =
        layout.image(&[(Layer::new().file("arch", b"amd64").tar(), Compress::Gzip)], &["/bin/sh"], "amd64");
    let arm =
        layout.image(&[(Layer::new().file("arch", b"arm64").tar(), Compress::Gzip)], &["/bin/sh"], "arm64");
    let idx = layout.multi_arch(&[arm, amd]);
    layout.tag(idx, "multi");
    push(&l, "app", &format!("{}/tug/app:1", reg.addr), creds, false);
    push(&l, "multi", &format!("{}/tug/multi:1", reg.addr), creds, true);
    digest
}

#[test]
fn pulls_by_tag_digest_and_platform_with_gzip_and_zstd_layers() {
    let reg = Registry::start(None);
    let (dir, store) = store();
    let digest = populate(&reg, dir.path(), None);
    let puller = Puller::new(Arc::clone(&store), vec![reg.addr.clone()]);
    rt().block_on(async {
        let by_tag =
            puller.ensure(&format!("{}/tug/app:1", reg.addr), PullPolicy::Always, None).await.unwrap();
        assert_eq!(by_tag.digest, digest);
        assert_eq!(by_tag.layers.len(), 2);
        assert!(by_tag.layers[1].media_type.ends_with("zstd"));
        let by_digest = puller
            .ensure(&format!("{}/tug/app@{digest}", reg.addr), PullPolicy::IfNotPresent, None)
            .await
            .unwrap();
        assert_eq!(by_digest.digest, digest);
        let rootfs = store.prepare("tug-it-pull", &by_tag).unwrap();
        assert_eq!(std::fs::read(rootfs.join("app")).unwrap(), b"zstd layer");
        assert!(rootfs.join("bin/busybox").exists());
        store.remove_snapshot("tug-it-pull").unwrap();

        let multi =
            puller.ensure(&format!("{}/tug/multi:1", reg.addr), PullPolicy::Always, None).await.unwrap();
        assert!(multi.index_digest.is_some());
        let layer = store.layer_path(&tug_images::digest::Digest::parse(&multi.layers[0].diff_id).unwrap());
        assert_eq!(std::fs::read(layer.join("arch")).unwrap(), b"amd64", "the node's platform is chosen");

        let s390 = Puller::new(Arc::clone(&store), vec![reg.addr.clone()]).with_platform(Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        });
        let err =
            s390.ensure(&format!("{}/tug/multi:1", reg.addr), PullPolicy::Always, None).await.unwrap_err();
        assert_eq!(err.reason, "ErrImagePull");
        assert!(
            err.message.contains("no image for linux/s390x") && err.message.contains("linux/amd64"),
            "{err}"
        );

        let missing =
            puller.ensure(&format!("{}/tug/nope:1", reg.addr), PullPolicy::Always, None).await.unwrap_err();
        assert!(missing.message.contains("tug/nope"), "{missing}");
    });
    assert!(entries(&store.root().join("tmp")).is_empty());
}

#[test]
fn pull_policies_and_one_pull_for_many_waiters() {
    let reg = Registry::start(None);
    let (dir, store) = store();
    populate(&reg, dir.path(), None);
    let puller = Puller::new(Arc::clone(&store), vec![reg.addr.clone()]);
    let image = format!("{}/tug/app:1", reg.addr);
    rt().block_on(async {
        let err = puller.ensure(&image, PullPolicy::Never, None).await.unwrap_err();
        assert_eq!(err.reason, "ErrImageNeverPull");
        let bad = puller.ensure("Not/Valid:1", PullPolicy::Always, None).await.unwrap_err();
        assert_eq!(bad.reason, "InvalidImageName");
        // Eight pods wanting the same image: one pull, the same record for all.
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let p = Arc::clone(&puller);
                let i = image.clone();
                tokio::spawn(async move { p.ensure(&i, PullPolicy::IfNotPresent, None).await })
            })
            .collect();
        let mut records = Vec::new();
        for w in waiters {
            records.push(w.await.unwrap().unwrap());
        }
        assert!(records.iter().all(|r| r == &records[0]), "all waiters share one pull's record");
        assert_eq!(puller.pulls_started(), 1, "one pull for eight waiters");
    });
    drop(reg);
    rt().block_on(async {
        // The registry is gone: IfNotPresent and Never use the store; Always fails.
        puller.ensure(&image, PullPolicy::IfNotPresent, None).await.unwrap();
        puller.ensure(&image, PullPolicy::Never, None).await.unwrap();
        let err = puller.ensure(&image, PullPolicy::Always, None).await.unwrap_err();
        assert_eq!(err.reason, "ErrImagePull");
    });
}

/// Pushes the test image with tug/s3cret, then: anonymous and wrong-password pulls fail with
/// the registry's words and store nothing; the right pull secret pulls.
fn pulls_only_with_credentials(reg: &Registry) {
    let (dir, store) = store();
    populate(reg, dir.path(), Some(("tug", "s3cret")));
    let puller = Puller::new(Arc::clone(&store), vec![reg.addr.clone()]);
    let image = format!("{}/tug/app:1", reg.addr);
    let secret = |user: &str, pass: &str| {
        let json = format!(r#"{{"auths":{{"{}":{{"username":"{user}","password":"{pass}"}}}}}}"#, reg.addr);
        from_dockerconfigjson(json.as_bytes(), &reg.addr, "regcred").unwrap()
    };
    rt().block_on(async {
        let anon = puller.ensure(&image, PullPolicy::Always, None).await.unwrap_err();
        assert!(
            anon.reason == "ErrImagePull" && anon.message.contains("Not authorized"),
            "anonymous: {anon}"
        );
        let wrong = puller.ensure(&image, PullPolicy::Always, secret("tug", "wrong")).await.unwrap_err();
        assert!(
            wrong.reason == "ErrImagePull" && wrong.message.contains("Not authorized"),
            "wrong password: {wrong}"
        );
        assert!(store.images().unwrap().is_empty());
        let ok = puller.ensure(&image, PullPolicy::Always, secret("tug", "s3cret")).await;
        let ok = ok.unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
        assert_eq!(ok.layers.len(), 2);
    });
}

#[test]
fn registry_auth_required_refused_and_accepted() {
    pulls_only_with_credentials(&Registry::start(Some(("tug", "s3cret"))));
}

/// The token server gives anonymous callers a token that grants nothing, refuses a wrong
/// password, and signs a token granting the pull for the right one.
#[test]
fn bearer_token_auth_from_a_token_server() {
    use tug_integration::images::{Auth, TokenServer};
    let tokens = TokenServer::start("tug", "s3cret");
    let reg = Registry::start_with(Some(Auth::Token {
        realm: tokens.realm.clone(),
        cert_pem: tokens.cert_pem.clone(),
    }));
    pulls_only_with_credentials(&reg);
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_stored() {
    let reg = Registry::start(None);
    let (dir, store) = store();
    populate(&reg, dir.path(), None);
    let puller = Puller::new(Arc::clone(&store), vec![reg.addr.clone()]);
    let image = format!("{}/tug/app:1", reg.addr);
    // Learn the layer digests, then corrupt the zstd layer in the registry's storage.
    let rec = rt().block_on(puller.ensure(&image, PullPolicy::Always, None)).unwrap();
    store.remove(std::slice::from_ref(&rec.name)).unwrap();
    let blob = reg.blob_file(&rec.layers[1].blob);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let err = rt().block_on(puller.ensure(&image, PullPolicy::Always, None)).unwrap_err();
    assert_eq!(err.reason, "ErrImagePull");
    assert!(
        err.message.contains(&rec.layers[1].blob) && err.message.to_lowercase().contains("digest"),
        "{err}"
    );
    let hex = &rec.layers[1].blob[7..];
    assert!(
        !entries(&store.root().join("blobs/sha256")).iter().any(|b| b == hex),
        "the corrupt blob is not stored"
    );
    assert!(entries(&store.root().join("tmp")).is_empty(), "no partial download is left");
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn garbage_collection_keeps_images_in_use() {
    let (dir, store) = store();
    let l = dir.path().join("layout");
    let mut layout = Layout::new(&l);
    let a = layout.image(&[(Layer::new().file("a", b"a").tar(), Compress::Gzip)], &["/a"], "amd64");
    let b = layout.image(&[(Layer::new().file("b", b"b").tar(), Compress::Gzip)], &["/b"], "amd64");
    layout.tag(a, "tug.test/a:1").tag(b, "tug.test/b:1");
    let got = tug_images::import::import(&store, &l, None).unwrap();
    assert_eq!(got.len(), 2);
    store.prepare("tug-it-gc", &got[0]).unwrap();
    // A high threshold of 100 is collection off.
    assert!(store.gc(100, 100, Duration::ZERO).unwrap().images.is_empty());
    // Images younger than the minimum age stay, however full the disk.
    assert!(store.gc(0, 0, Duration::from_secs(120)).unwrap().images.is_empty());
    // Over the threshold (any use is over 0%): every unused image goes, the one in use stays.
    let removed = store.gc(0, 0, Duration::ZERO).unwrap();
    assert_eq!(removed.images, ["tug.test/b:1"]);
    assert_eq!(store.images().unwrap().len(), 1);
    store.remove_snapshot("tug-it-gc").unwrap();
}

/// Removes a snapshot (unmounting its rootfs) when dropped, also when the test panics.
struct SnapshotGuard<'a>(&'a Store, &'static str);

impl Drop for SnapshotGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.remove_snapshot(self.1);
    }
}

#[test]
fn the_example_image_imports_with_the_cli_and_runs_on_an_overlay_rootfs() {
    let dir = tempfile::Builder::new().prefix("tug-images").tempdir().unwrap();
    let layout = dir.path().join("example");
    let root = tug_integration::probe::workspace_root();
    let st = std::process::Command::new("bash")
        .arg(root.join("scripts/example-image.sh"))
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/example-image.sh");
    let tug = tug_integration::bins::path("tug-cli", "tug");
    let store_dir = dir.path().join("store");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&tug)
            .arg("image")
            .arg("--image-root")
            .arg(&store_dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(&["import", layout.to_str().unwrap()]);
    assert!(ok && out.starts_with("imported tug.local/busybox-httpd:1 (sha256:"), "{out}");
    let (ok, out) = cli(&["ls"]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("IMAGE") && lines[0].contains("IMAGE ID") && lines[0].ends_with("SIZE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("tug.local/busybox-httpd ") && lines[1].split_whitespace().nth(1) == Some("1"),
        "{out}"
    );

    let store = Store::open(&store_dir).unwrap();
    let rec = store.find("tug.local/busybox-httpd:1").unwrap().unwrap();
    let cfg = store.config(&rec).unwrap();
    assert_eq!(cfg.config.cmd.as_ref().unwrap()[0], "/bin/httpd");
    let rootfs = store.prepare("tug-it-example", &rec).unwrap();
    let _guard = SnapshotGuard(&store, "tug-it-example");
    let mut bundle = tug_integration::bundle::Bundle::new(&["/bin/cat", "/www/index.html"]);
    bundle.spec["root"]["path"] = serde_json::json!(rootfs.to_str().unwrap());
    let out = bundle.run("tug-it-example");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<h1>Hello from Tug</h1>\n");

    let (ok, out) = cli(&["rm", "tug.local/busybox-httpd:1"]);
    assert!(!ok && out.contains("in use by container tug-it-example"), "{out}");
    drop(bundle);
    store.remove_snapshot("tug-it-example").unwrap();
    let (ok, out) = cli(&["rm", "tug.local/busybox-httpd:1"]);
    assert!(ok && out.contains("Deleted: tug.local/busybox-httpd:1"), "{out}");
    let (ok, out) = cli(&["rm", "tug.local/busybox-httpd:1"]);
    assert!(!ok && out.contains("not found"), "{out}");
}

/// Writes a `docker save` directory at `save` whose config lists `diff_ids` and whose one
/// layer entry is `layer` (written by the caller).
fn docker_save(save: &Path, diff_ids: &[String]) {
    std::fs::create_dir_all(save.join("l1")).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let config = serde_json::to_vec(&config).unwrap();
    std::fs::write(save.join("config.json"), &config).unwrap();
    let manifest =
        serde_json::json!([{"Config": "config.json", "RepoTags": ["evil:1"], "Layers": ["l1/layer.tar"]}]);
    std::fs::write(save.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// Archives someone else made: a layer that is a symlink to a node file or to /dev/zero, a
/// FIFO, a blob over the size allowed, whiteouts naming `.` or `..`, and a layer that claims
/// the diff ID of one already in the store. Each is refused with a message naming it, and
/// the store is as it was.
#[test]
fn archives_that_reach_for_the_node_are_refused() {
    let (dir, store) = store();
    let layer = Layer::new().busybox().tar();
    let save = dir.path().join("save");
    docker_save(&save, &[sha256(&layer)]);
    let entry = save.join("l1/layer.tar");
    for target in ["/etc/passwd", "/dev/zero"] {
        std::os::unix::fs::symlink(target, &entry).unwrap();
        let err = tug_images::import::import(&store, &save, None).unwrap_err();
        assert!(err.contains("layer l1/layer.tar") && err.contains("symbolic link"), "{target}: {err}");
        // The same inside a tar archive (unpacked, then refused).
        let tar = dir.path().join("evil.tar");
        tar_dir(&save, &tar);
        let err = tug_images::import::import(&store, &tar, None).unwrap_err();
        assert!(err.contains("symbolic link"), "{target} in a tar: {err}");
        std::fs::remove_file(&entry).unwrap();
    }
    nix::unistd::mkfifo(&entry, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let err = tug_images::import::import(&store, &save, None).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_file(&entry).unwrap();
    std::fs::write(&entry, &layer).unwrap();
    let err = tug_images::import::import_with(&store, &save, None, 1024).unwrap_err();
    assert!(err.contains("more than the largest blob allowed"), "{err}");
    assert!(store.images().unwrap().is_empty());

    // Whiteouts of `.` and `..`: refused, and the store's tmp/ is still there.
    for name in ["data/.wh..", "data/.wh...", ".wh.."] {
        let l = dir.path().join("layout-wh");
        let _ = std::fs::remove_dir_all(&l);
        let mut layout = Layout::new(&l);
        let tar = Layer::new().dir("data").file("data/keep", b"x").raw_file(name, b"").tar();
        let m = layout.image(&[(tar, Compress::Gzip)], &["/bin/sh"], "amd64");
        layout.tag(m, "tug.test/wh:1");
        let err = tug_images::import::import(&store, &l, None).unwrap_err();
        assert!(err.contains("names no entry"), "{name}: {err}");
        assert!(store.root().join("tmp").is_dir(), "{name}: the store's tmp/ stays");
    }

    // A layer already in the store, claimed by an archive whose blob is something else.
    std::fs::remove_file(&entry).unwrap();
    std::fs::write(&entry, &layer).unwrap();
    tug_images::import::import(&store, &save, None).unwrap();
    let other = Layer::new().file("pwned", b"not busybox").tar();
    std::fs::write(&entry, &other).unwrap();
    let err = tug_images::import::import(&store, &save, Some("evil:2")).unwrap_err();
    assert!(err.contains("hashes to") && err.contains(&sha256(&layer)), "{err}");
    assert_eq!(store.images().unwrap().len(), 1, "only the honest image");
}

#[test]
fn the_cli_pull_shows_each_layer_and_tells_a_new_image_from_an_unchanged_one() {
    let reg = Registry::start(None);
    let (dir, _store) = store();
    populate(&reg, dir.path(), None);
    let image = format!("{}/tug/app:1", reg.addr);
    let root = dir.path().join("cli-store");
    let pull = || {
        let o = std::process::Command::new(tug_integration::bins::path("tug-cli", "tug"))
            .args([
                "image",
                "pull",
                "--image-root",
                root.to_str().unwrap(),
                "--insecure-registry",
                &reg.addr,
                &image,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Not a terminal: a line per layer as it moves on, no bars.
    let first = pull();
    assert!(first.starts_with("1: Pulling from tug/app\n"), "{first}");
    assert_eq!(first.matches(": Pull complete\n").count(), 2, "{first}");
    assert!(!first.contains('\x1b'), "{first}");
    assert!(first.contains("\nDigest: sha256:"), "{first}");
    assert!(first.ends_with(&format!("Status: Downloaded newer image for {image}\n")), "{first}");
    let second = pull();
    assert_eq!(second.matches(": Already exists\n").count(), 2, "{second}");
    assert!(second.ends_with(&format!("Status: Image is up to date for {image}\n")), "{second}");
}
