//! `tug-supervisor`: one per container, started by `tug-shim supervise` (see
//! `tug_shim::supervisor`). Kept apart from `tug-shim` so that an idle supervisor carries only
//! its loop: the runtime's setup code runs in short-lived `tug-shim` children.
//! `tug-supervisor pause LABEL [CGROUP-PROCS]` is a pod's pause process
//! (`tug_shim::supervisor::pause`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    if arg(0) == "pause" {
        tug_shim::supervisor::pause::serve(args.get(2).map(String::as_str))
    }
    tug_shim::supervisor::serve(arg(0), arg(1))
}
