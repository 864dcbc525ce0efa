use super::*;
use std::os::unix::fs::symlink;

/// A root with a sibling directory `outside` that nothing beneath the root may reach.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new().prefix("tug-beneath").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "node secret").unwrap();
        Fixture { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    fn open(&self, scope: Scope) -> Root {
        Root::open_dir(self.root(), scope).unwrap()
    }
}

#[test]
fn symlinks_out_of_a_volume_are_refused() {
    let f = Fixture::new();
    symlink(f.outside(), f.root().join("abs")).unwrap();
    symlink("../outside", f.root().join("rel")).unwrap();
    symlink("/", f.root().join("slash")).unwrap();
    let r = f.open(Scope::Beneath);
    for bad in ["abs", "rel", "slash", "abs/new/dir", "..", "etc/../../outside", "/etc"] {
        let e = r.mkdir_all(Path::new(bad), 0o755).unwrap_err();
        assert!(matches!(e, Error::Escape { .. }), "{bad}: {e}");
    }
    assert!(!f.outside().join("new").exists(), "nothing was made outside");
    let inside = r.mkdir_all(Path::new("a/b/../c"), 0o755).unwrap();
    assert_eq!(std::fs::read_link(fd_path(&inside)).unwrap(), f.root().join("a/c"));
}

#[test]
fn symlinks_in_a_rootfs_resolve_inside_it() {
    let f = Fixture::new();
    symlink(f.outside(), f.root().join("abs")).unwrap();
    symlink("../../../../..", f.root().join("up")).unwrap();
    symlink("/etc", f.root().join("etc-link")).unwrap();
    let r = f.open(Scope::InRoot);
    let cases = [
        ("abs/x", f.root().join(f.outside().strip_prefix("/").unwrap()).join("x")),
        ("up/y", f.root().join("y")),
        ("etc-link/z", f.root().join("etc/z")),
    ];
    // Made on the first pass; found whole on the second (one lookup, the same answer).
    for pass in ["made", "found"] {
        for (rel, want) in &cases {
            let fd = r.mkdir_all(Path::new(rel), 0o755).unwrap();
            assert_eq!(&std::fs::read_link(fd_path(&fd)).unwrap(), want, "{rel} ({pass})");
        }
    }
    assert!(!f.outside().join("x").exists());
    let file = r.create_file(Path::new("up/etc/hosts"), 0o644).unwrap();
    assert_eq!(std::fs::read_link(fd_path(&file)).unwrap(), f.root().join("etc/hosts"));
}

#[test]
fn a_dangling_symlink_on_the_way_has_its_target_made_inside() {
    let f = Fixture::new();
    symlink("/nowhere/deeper", f.root().join("dangling")).unwrap();
    symlink("../outside/new", f.root().join("dangling-up")).unwrap();
    symlink("loop2", f.root().join("loop1")).unwrap();
    symlink("loop1", f.root().join("loop2")).unwrap();
    let r = f.open(Scope::InRoot);
    let fd = r.mkdir_all(Path::new("dangling/x"), 0o755).unwrap();
    assert_eq!(std::fs::read_link(fd_path(&fd)).unwrap(), f.root().join("nowhere/deeper/x"));
    let fd = r.mkdir_all(Path::new("dangling-up/y"), 0o755).unwrap();
    assert_eq!(std::fs::read_link(fd_path(&fd)).unwrap(), f.root().join("outside/new/y"));
    assert!(!f.outside().join("new").exists(), "nothing was made outside");
    assert!(r.mkdir_all(Path::new("loop1/z"), 0o755).is_err(), "a loop ends");
    let b = f.open(Scope::Beneath);
    for bad in ["dangling/x", "dangling-up/y"] {
        assert!(matches!(b.mkdir_all(Path::new(bad), 0o755), Err(Error::Escape { .. })), "{bad}");
    }
}

#[test]
fn only_regular_files_are_read_and_only_so_much() {
    let f = Fixture::new();
    std::fs::write(f.root().join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    symlink(f.outside().join("secret"), f.root().join("etc/group")).unwrap();
    nix::unistd::mkfifo(&f.root().join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    symlink("/etc/passwd", f.root().join("etc/passwd-link")).unwrap();
    let r = f.open(Scope::InRoot);
    assert_eq!(r.read_regular(Path::new("etc/passwd"), 4096).unwrap(), b"root:x:0:0::/:/bin/sh\n");
    assert_eq!(r.read_regular(Path::new("etc/passwd-link"), 4096).unwrap(), b"root:x:0:0::/:/bin/sh\n");
    // The node's file named by an absolute link is looked up in the root, where it is not.
    assert!(matches!(
        r.read_regular(Path::new("etc/group"), 4096),
        Err(Error::Io { source: Errno::ENOENT, .. })
    ));
    assert!(matches!(r.read_regular(Path::new("etc/fifo"), 4096), Err(Error::NotRegular { .. })));
    assert!(matches!(r.read_regular(Path::new("etc"), 4096), Err(Error::NotRegular { .. })));
    assert!(matches!(r.read_regular(Path::new("etc/passwd"), 5), Err(Error::TooLarge { max: 5, .. })));
}

#[test]
fn magic_links_are_never_followed() {
    let f = Fixture::new();
    symlink("/proc/self/root", f.root().join("magic")).unwrap();
    let r = Root::open_dir("/", Scope::Beneath).unwrap();
    let e = r.open(f.root().join("magic/etc").strip_prefix("/").unwrap(), OFlag::O_PATH).unwrap_err();
    assert!(matches!(e, Error::Io { source: Errno::ELOOP, .. } | Error::Escape { .. }), "{e}");
}

#[test]
fn remove_all_removes_links_not_their_targets() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.root().join("gen/sub")).unwrap();
    std::fs::write(f.root().join("gen/sub/file"), "x").unwrap();
    symlink(f.outside(), f.root().join("gen/to-outside")).unwrap();
    symlink(f.outside(), f.root().join("swapped")).unwrap();
    let r = f.open(Scope::Beneath);
    remove_all_at(r.fd(), Path::new("gen")).unwrap();
    remove_all_at(r.fd(), Path::new("swapped")).unwrap();
    remove_all_at(r.fd(), Path::new("missing")).unwrap();
    assert!(!f.root().join("gen").exists() && !f.root().join("swapped").exists());
    assert!(f.outside().join("secret").exists(), "the links' targets stay");
}

#[test]
fn no_links_refuses_every_symlink() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.root().join("blobs")).unwrap();
    std::fs::write(f.root().join("blobs/real"), "layer").unwrap();
    symlink("real", f.root().join("blobs/inside")).unwrap();
    symlink(f.outside().join("secret"), f.root().join("blobs/host")).unwrap();
    symlink("/dev/zero", f.root().join("blobs/zero")).unwrap();
    let r = f.open(Scope::NoLinks);
    assert_eq!(r.read_regular(Path::new("blobs/real"), 64).unwrap(), b"layer");
    for link in ["blobs/inside", "blobs/host", "blobs/zero"] {
        let e = r.open_regular(Path::new(link)).unwrap_err();
        assert!(matches!(e, Error::Link { .. }), "{link}: {e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
