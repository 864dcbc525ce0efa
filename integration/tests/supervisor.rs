//! The supervisor (`tug-shim supervise`): containers that outlive the process that started
//! them, CRI logs, exit status, the control socket. Root tests.

use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tug_integration::bundle::Bundle;
use tug_integration::leaks::process_alive;
use tug_integration::wait_for;
use tug_shim::supervisor::protocol::{Client, Reply, Request};

/// A supervised container; on drop the container is killed and the supervisor told to go
/// (or, failing that, SIGKILLed by pid).
struct Supervised {
    bundle: Bundle,
    id: String,
    pid: u32,
}

impl Supervised {
    fn start(mut bundle: Bundle, id: &str, extra: &[&str]) -> Supervised {
        bundle.write(id);
        let b = bundle.path().display().to_string();
        let (state, log) = (bundle.path().join("sup"), bundle.path().join("logs").join(format!("{id}.log")));
        let mut args = vec!["supervise", "--bundle", &b, "--state"];
        let (state_s, log_s) = (state.display().to_string(), log.display().to_string());
        args.extend([state_s.as_str(), "--log-path", log_s.as_str()]);
        args.extend(extra);
        args.push(id);
        let out = bundle.shim_output(&args);
        assert!(out.status.success(), "supervise: {}", String::from_utf8_lossy(&out.stderr));
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the supervisor's pid");
        Supervised { bundle, id: id.to_string(), pid }
    }

    fn socket(&self) -> PathBuf {
        self.bundle.path().join("sup").join(&self.id).join("control.sock")
    }

    /// A client whose calls fail after a minute instead of hanging the suite.
    fn client(&self) -> Client {
        let c = Client::connect(&self.socket()).expect("connect to the supervisor");
        c.set_timeout(Some(Duration::from_secs(60)));
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.bundle.path().join("logs").join(format!("{}.log", self.id)))
            .unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> String {
        wait_for(Duration::from_secs(20), || self.log().contains(needle));
        self.log()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.socket()) {
            let _ = c.call(&Request::Kill { signal: 9, all: true });
            let _ = c.call(&Request::Wait);
            let _ = c.call(&Request::Shutdown);
        }
        if !wait_for(Duration::from_secs(5), || !process_alive(self.pid)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(0)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Kills and reaps a child when dropped, also when the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TICKER: &str = "trap 'echo got-term; exit 3' TERM; echo hello; echo oops >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";

#[test]
fn the_container_outlives_its_starter_and_a_new_process_takes_over() {
    let b = Bundle::new(&["/bin/sh", "-c", TICKER]);
    // The starter stands in for the agent: a shell that launches the supervisor, then is
    // SIGKILLed.
    let mut bundle = b;
    bundle.write("outlive");
    let state = bundle.path().join("sup");
    let log = bundle.path().join("logs/outlive.log");
    let starter = KillOnDrop(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --root {} supervise --bundle {} --state {} --log-path {} outlive > {}/sup.pid; exec sleep 600",
            tug_integration::bundle::shim_binary().display(),
            bundle.root().display(),
            bundle.path().display(),
            state.display(),
            log.display(),
            bundle.path().display()
        ))
        .spawn()
        .unwrap());
    let pid_file = bundle.path().join("sup.pid");
    wait_for(Duration::from_secs(20), || {
        !std::fs::read_to_string(&pid_file).unwrap_or_default().trim().is_empty()
    });
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let s = Supervised { bundle, id: "outlive".into(), pid };
    drop(starter);
    assert!(process_alive(s.pid), "the supervisor outlives its starter");
    let before = s.wait_log("tick 3");
    assert!(before.contains(" stdout F hello\n") && before.contains(" stderr F oops\n"), "{before}");
    // A new process finds the supervisor from the state directory alone.
    let found = tug_shim::supervisor::list(&s.bundle.path().join("sup"));
    assert_eq!(found.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["outlive"]);
    let mut c = Client::connect(&found[0].1).unwrap();
    c.set_timeout(Some(Duration::from_secs(60)));
    let Reply::State { status, .. } = c.call(&Request::State).unwrap() else { panic!("state") };
    assert_eq!(status, "running");
    let later = s.wait_log("tick 8");
    assert!(later.contains("tick 8"), "logs keep flowing: {later}");
    assert_eq!(c.call(&Request::Kill { signal: 15, all: false }).unwrap(), Reply::Ok);
    let Reply::Exited(exit) = c.call(&Request::Wait).unwrap() else { panic!("exited") };
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (3, None, false));
    assert!(s.wait_log("got-term").contains(" stdout F got-term\n"));
    assert_eq!(tug_shim::supervisor::recorded_exit(&s.bundle.path().join("sup"), "outlive").unwrap().code, 3);
    let err = c.call(&Request::Kill { signal: 15, all: false }).unwrap_err();
    assert_eq!(err.to_string(), "supervisor: container not running");
}

#[test]
fn long_lines_split_into_partial_records_and_logs_rotate() {
    let b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "i=0; while [ $i -lt 100 ]; do printf '%01000d' 0; i=$((i+1)); done; echo; echo end",
    ]);
    let s = Supervised::start(b, "long", &["--log-line-max", "16384", "--log-max-size", "1000000"]);
    let log = s.wait_log("stdout F end");
    let records: Vec<(&str, usize)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_, _, tag, content) = (f.next(), f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            (tag, content.len())
        })
        .collect();
    assert_eq!(
        records,
        [
            ("P", 16384),
            ("P", 16384),
            ("P", 16384),
            ("P", 16384),
            ("P", 16384),
            ("P", 16384),
            ("F", 1696),
            ("F", 3)
        ]
    );
    drop(s);
    let b = Bundle::new(&["/bin/sh", "-c", "i=0; while [ $i -lt 50 ]; do echo line-$i; i=$((i+1)); done"]);
    let s = Supervised::start(b, "rot", &["--log-max-size", "500", "--log-max-files", "3"]);
    s.wait_log("line-49");
    let dir = s.bundle.path().join("logs");
    assert!(
        dir.join("rot.log.1").exists() && dir.join("rot.log.2").exists() && !dir.join("rot.log.3").exists()
    );
    for f in ["rot.log", "rot.log.1", "rot.log.2"] {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() <= 500, "{f} is within the size limit");
    }
}

#[test]
fn oom_kills_are_reported() {
    let mut b = Bundle::new(&["/bin/tug-probe", "hog", "512"]);
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let s = Supervised::start(b, "oom", &[]);
    let Reply::Exited(exit) = s.client().call(&Request::Wait).unwrap() else { panic!("exited") };
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (137, Some(9), true));
}

#[test]
fn orphans_are_reaped_when_there_is_no_pid_namespace() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "sleep 0.3 & sleep 0.3 & exit 0"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    let s = Supervised::start(b, "orphans", &[]);
    let Reply::Exited(exit) = s.client().call(&Request::Wait).unwrap() else { panic!("exited") };
    assert_eq!(exit.code, 0);
    // The sleeps were re-parented to the supervisor (the subreaper); once they end, none may
    // stay a zombie.
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|st| {
                let rest = st.rsplit_once(") ").map(|r| r.1).unwrap_or("");
                let mut f = rest.split(' ');
                f.next() == Some("Z") && f.next() == Some(s.pid.to_string().as_str())
            })
            .count()
    };
    let children = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .is_ok_and(|st| st.contains(&format!(") S {} ", s.pid)))
        })
    };
    wait_for(Duration::from_secs(10), || zombies() == 0 && !children());
    assert_eq!(zombies(), 0, "zombie children of the supervisor");
}

#[test]
fn stats_update_and_signals_over_the_control_socket() {
    let mut b =
        Bundle::new(&["/bin/sh", "-c", "trap 'exit 10' USR1; echo ready; while true; do sleep 0.05; done"]);
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    let s = Supervised::start(b, "ctl", &[]);
    let mut c = s.client();
    assert_eq!(c.id, "ctl");
    let Reply::Stats(st) = c.call(&Request::Stats).unwrap() else { panic!("stats") };
    assert_eq!(st.memory_limit_bytes, Some(67_108_864));
    assert!(st.pids >= 1 && st.memory_usage_bytes > 0, "{st:?}");
    assert_eq!(
        c.call(&Request::Update { resources: json!({"memory": {"limit": 134217728}}) }).unwrap(),
        Reply::Ok
    );
    let Reply::Stats(st) = c.call(&Request::Stats).unwrap() else { panic!("stats") };
    assert_eq!(st.memory_limit_bytes, Some(134_217_728), "limits change in place");
    assert!(c.call(&Request::Hello { version: 99 }).unwrap_err().to_string().contains("protocol version 99"));
    assert!(c.call(&Request::Shutdown).unwrap_err().to_string().contains("still running"));
    // A pid-namespace init ignores signals it has no handler for: send only once the trap is set.
    assert!(s.wait_log("stdout F ready").contains("ready"));
    assert_eq!(c.call(&Request::Kill { signal: 10, all: false }).unwrap(), Reply::Ok);
    let Reply::Exited(exit) = c.call(&Request::Wait).unwrap() else { panic!("exited") };
    assert_eq!(exit.code, 10);
}

#[test]
fn a_stale_socket_is_cleaned_up_and_a_live_one_is_refused() {
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    let stale = b.path().join("sup/stale1");
    std::fs::create_dir_all(&stale).unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.join("control.sock")).unwrap());
    b.write("stale1");
    let s = Supervised::start(b, "stale1", &[]);
    assert!(s.client().pid > 0, "a new supervisor took the stale socket's place");
    let again = s.bundle.shim_output(&[
        "supervise",
        "--bundle",
        s.bundle.path().to_str().unwrap(),
        "--state",
        s.bundle.path().join("sup").to_str().unwrap(),
        "stale1",
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a supervisor for stale1 is already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// The container's own process spec with other arguments, as the agent builds an exec.
fn process(s: &Supervised, args: &[&str], terminal: bool) -> serde_json::Value {
    let mut p = s.bundle.spec["process"].clone();
    p["args"] = json!(args);
    p["terminal"] = json!(terminal);
    p
}

#[test]
fn exec_streams_stdin_stdout_stderr_and_the_exit_code() {
    let s = Supervised::start(Bundle::new(&["/bin/sleep", "600"]), "exec1", &[]);
    let script = "read a; echo out:$a; echo err:$a >&2; cat; exit 6";
    let (pid, mut st) = s.client().exec(process(&s, &["sh", "-c", script], false)).unwrap();
    assert!(pid > 0);
    st.set_timeout(Some(Duration::from_secs(60)));
    st.write_stdin(b"first\nsecond line\n").unwrap();
    st.close_stdin().unwrap();
    let all = st.collect().unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout), "out:first\nsecond line\n");
    assert_eq!(String::from_utf8_lossy(&all.stderr), "err:first\n");
    assert_eq!(all.exit.unwrap().code, 6);
    // The exec'd process's output is its client's alone, not the container's log.
    assert!(!s.log().contains("out:first"));
    // A missing program is an error reply, not a session.
    let err = s.client().exec(process(&s, &["nothere"], false)).err().unwrap();
    assert_eq!(err.to_string(), "supervisor: exec: \"nothere\": executable file not found in $PATH");
}

#[test]
fn exec_with_a_terminal_and_resize() {
    let s = Supervised::start(Bundle::new(&["/bin/sleep", "600"]), "exec2", &[]);
    let mut p = process(&s, &["sh", "-c", "tty; read x; stty size; exit 3"], true);
    p["consoleSize"] = json!({"height": 20, "width": 70});
    let (_, mut st) = s.client().exec(p).unwrap();
    st.set_timeout(Some(Duration::from_secs(60)));
    // The terminal echoes input as it arrives: send it once the first line is out.
    let mut first = Vec::new();
    while !first.ends_with(b"\n") {
        match st.next_output().unwrap() {
            Some(tug_shim::supervisor::protocol::Output::Stdout(d)) => first.extend(d),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&first).replace('\r', ""), "/dev/pts/0\n");
    st.resize(40, 132).unwrap();
    st.write_stdin(b"go\n").unwrap();
    let all = st.collect().unwrap();
    let text = String::from_utf8_lossy(&all.stdout).replace('\r', "");
    // stdout and stderr are one stream on a terminal.
    assert_eq!(text, "go\n40 132\n");
    assert!(all.stderr.is_empty());
    assert_eq!(all.exit.unwrap().code, 3);
}

#[test]
fn attach_follows_the_containers_output_and_feeds_its_stdin() {
    let b =
        Bundle::new(&["/bin/sh", "-c", "echo hello; while read l; do echo got:$l; done; echo bye; exit 9"]);
    let s = Supervised::start(b, "attach1", &["--stdin"]);
    s.wait_log("stdout F hello");
    let mut st = s.client().attach(true).unwrap();
    st.set_timeout(Some(Duration::from_secs(60)));
    st.write_stdin(b"one\n").unwrap();
    let first = st.next_output().unwrap();
    assert_eq!(first, Some(tug_shim::supervisor::protocol::Output::Stdout(b"got:one\n".to_vec())));
    // A second client without stdin sees the same output.
    let mut watcher = s.client().attach(false).unwrap();
    watcher.set_timeout(Some(Duration::from_secs(60)));
    st.write_stdin(b"two\n").unwrap();
    st.close_stdin().unwrap();
    let all = st.collect().unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout), "got:two\nbye\n");
    assert_eq!(all.exit.unwrap().code, 9);
    let seen = watcher.collect().unwrap();
    assert_eq!(String::from_utf8_lossy(&seen.stdout), "got:two\nbye\n");
    assert!(s.log().contains(" stdout F got:one\n"), "attached output still goes to the log");
    // Without --stdin, attaching with stdin is refused.
    let s2 = Supervised::start(Bundle::new(&["/bin/sleep", "600"]), "attach2", &[]);
    let err = s2.client().attach(true).err().unwrap();
    assert!(err.to_string().contains("stdin is not open"), "{err}");
}

#[test]
fn a_container_with_a_terminal_logs_it_and_resizes() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "while true; do stty size; sleep 0.1; done"]);
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["consoleSize"] = json!({"height": 10, "width": 50});
    let s = Supervised::start(b, "tty1", &[]);
    s.wait_log("stdout F 10 50");
    assert_eq!(s.client().call(&Request::Resize { rows: 44, cols: 111 }).unwrap(), Reply::Ok);
    assert!(s.wait_log("stdout F 44 111").contains("44 111"));
    let s2 = Supervised::start(Bundle::new(&["/bin/sleep", "600"]), "tty2", &[]);
    let err = s2.client().call(&Request::Resize { rows: 1, cols: 1 }).unwrap_err();
    assert!(err.to_string().contains("no terminal"), "{err}");
}

#[test]
fn kill_delivers_each_signal_and_sigkill_ends_the_container() {
    let names = ["HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "CONT", "WINCH"];
    let traps: String = names.iter().map(|n| format!("trap 'echo got-{n}' {n}; ")).collect();
    let script = format!("{traps} echo ready; while true; do sleep 0.05; done");
    let s = Supervised::start(Bundle::new(&["/bin/sh", "-c", &script]), "signals", &[]);
    s.wait_log("stdout F ready");
    let mut c = s.client();
    for name in names {
        let sig: nix::sys::signal::Signal = format!("SIG{name}").parse().unwrap();
        assert_eq!(c.call(&Request::Kill { signal: sig as i32, all: false }).unwrap(), Reply::Ok);
        assert!(s.wait_log(&format!("stdout F got-{name}\n")).contains(&format!("got-{name}")), "{name}");
    }
    assert_eq!(c.call(&Request::Kill { signal: 9, all: false }).unwrap(), Reply::Ok);
    let Reply::Exited(exit) = c.call(&Request::Wait).unwrap() else { panic!("exited") };
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (137, Some(9), false));
}
