//! seccomp: `linux.seccomp` translated into a plan (pure, every refusal names its field) and
//! compiled into a filter by libseccomp, loaded as late as the process allows — right before
//! `execve` when `no_new_privs` is set, otherwise before capabilities are dropped (loading a
//! filter without `no_new_privs` needs CAP_SYS_ADMIN). [`profile`] holds the built-in default
//! profile the agent applies to every pod that does not ask otherwise.
//!
//! Why libseccomp (the C library, through the `libseccomp` crate) rather than the pure-Rust
//! `seccompiler`: an OCI profile gives each rule its own action and errno, compares arguments
//! with every operator (masked equality included), lists several architectures (x86_64 with
//! its x86 and x32 compat ABIs) and filter flags — libseccomp expresses all of it in one
//! filter, while `seccompiler` has a single match action per filter and one architecture. It
//! is also what runc and crun use, so a profile behaves the same under Tug as under the
//! anchors. The cost is a C library: `libseccomp-dev` at build time (`make deps`) and
//! `libseccomp2` at run time, which every Debian and Ubuntu host with systemd already has.

pub mod profile;

use crate::plan::SpecError;
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::LinuxSeccomp;
use std::str::FromStr;

/// What a rule (or the default) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KillThread,
    KillProcess,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    fn to_scmp(self) -> ScmpAction {
        match self {
            Action::KillThread => ScmpAction::KillThread,
            Action::KillProcess => ScmpAction::KillProcess,
            Action::Trap => ScmpAction::Trap,
            Action::Errno(e) => ScmpAction::Errno(i32::from(e)),
            Action::Trace(t) => ScmpAction::Trace(t),
            Action::Log => ScmpAction::Log,
            Action::Allow => ScmpAction::Allow,
        }
    }
}

/// One argument comparison: `(index, operator, value, valueTwo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    pub index: u32,
    pub op: Op,
    pub value: u64,
    pub value_two: u64,
}

/// The comparison operators of the OCI spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & value) == valueTwo`.
    MaskedEq,
}

/// One `linux.seccomp.syscalls[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub args: Vec<ArgCheck>,
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompPlan {
    pub default: Action,
    pub arches: Vec<ScmpArch>,
    /// SECCOMP_FILTER_FLAG_LOG.
    pub log: bool,
    /// SECCOMP_FILTER_FLAG_SPEC_ALLOW.
    pub spec_allow: bool,
    pub rules: Vec<Rule>,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), reason: reason.into() }
}

/// The spec's name for an enum value (`SCMP_ACT_ERRNO`, `SCMP_ARCH_X86_64`, …).
fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn action(name: &str, errno: Option<u32>, field: &str) -> Result<Action, SpecError> {
    let small = |v: Option<u32>, what: &str, default: u16| -> Result<u16, SpecError> {
        v.map_or(Ok(default), |v| {
            u16::try_from(v).map_err(|_| bad(format!("{field}.{what}"), format!("{v} is above 65535")))
        })
    };
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        // No errno given: EPERM, as runc does.
        "SCMP_ACT_ERRNO" => Action::Errno(small(errno, "errnoRet", 1)?),
        "SCMP_ACT_TRACE" => Action::Trace(small(errno, "errnoRet", 1)?),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_NOTIFY" => {
            return Err(bad(field, "SCMP_ACT_NOTIFY needs a seccomp agent, which tug-shim does not support"));
        }
        other => return Err(bad(field, format!("unknown action {other:?}"))),
    })
}

/// Translates `linux.seccomp`. Unknown syscall names are kept and skipped when the filter is
/// built (as runc does: a profile may name calls this kernel or architecture lacks).
pub fn plan(s: &LinuxSeccomp) -> Result<SeccompPlan, SpecError> {
    let default =
        action(&name_of(&s.default_action()), s.default_errno_ret(), "linux.seccomp.defaultAction")?;
    let mut arches = Vec::new();
    for (i, a) in s.architectures().iter().flatten().enumerate() {
        let name = name_of(a);
        arches
            .push(ScmpArch::from_str(&name).map_err(|_| {
                bad(format!("linux.seccomp.architectures[{i}]"), format!("unknown {name:?}"))
            })?);
    }
    let (mut log, mut spec_allow) = (false, false);
    for (i, f) in s.flags().iter().flatten().enumerate() {
        match name_of(f).as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => log = true,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => spec_allow = true,
            // Only meaningful with a seccomp agent's notifications.
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => {}
            other => {
                return Err(bad(format!("linux.seccomp.flags[{i}]"), format!("unsupported flag {other:?}")));
            }
        }
    }
    if s.listener_path().is_some() {
        return Err(bad("linux.seccomp.listenerPath", "seccomp agents are not supported"));
    }
    let mut rules = Vec::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        if sc.names().is_empty() {
            return Err(bad(format!("{field}.names"), "must list at least one syscall"));
        }
        let act = action(&name_of(&sc.action()), sc.errno_ret(), &format!("{field}.action"))?;
        let mut args = Vec::new();
        for (j, a) in sc.args().iter().flatten().enumerate() {
            let index = u32::try_from(a.index()).ok().filter(|i| *i < 6).ok_or_else(|| {
                bad(format!("{field}.args[{j}].index"), format!("{} is not 0..5", a.index()))
            })?;
            let op = match name_of(&a.op()).as_str() {
                "SCMP_CMP_NE" => Op::Ne,
                "SCMP_CMP_LT" => Op::Lt,
                "SCMP_CMP_LE" => Op::Le,
                "SCMP_CMP_EQ" => Op::Eq,
                "SCMP_CMP_GE" => Op::Ge,
                "SCMP_CMP_GT" => Op::Gt,
                "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
                other => {
                    return Err(bad(format!("{field}.args[{j}].op"), format!("unknown operator {other:?}")));
                }
            };
            args.push(ArgCheck { index, op, value: a.value(), value_two: a.value_two().unwrap_or(0) });
        }
        rules.push(Rule { names: sc.names().clone(), action: act, args });
    }
    Ok(SeccompPlan { default, arches, log, spec_allow, rules })
}

fn compare(a: &ArgCheck) -> ScmpArgCompare {
    let op = match a.op {
        Op::Ne => ScmpCompareOp::NotEqual,
        Op::Lt => ScmpCompareOp::Less,
        Op::Le => ScmpCompareOp::LessOrEqual,
        Op::Eq => ScmpCompareOp::Equal,
        Op::Ge => ScmpCompareOp::GreaterEqual,
        Op::Gt => ScmpCompareOp::Greater,
        Op::MaskedEq => ScmpCompareOp::MaskedEqual(a.value),
    };
    let datum = if a.op == Op::MaskedEq { a.value_two } else { a.value };
    ScmpArgCompare::new(a.index, op, datum)
}

/// Builds the filter (no syscall made yet: [`ScmpFilterContext::load`] installs it).
pub fn compile(p: &SeccompPlan) -> Result<ScmpFilterContext, String> {
    let mut ctx = ScmpFilterContext::new(p.default.to_scmp()).map_err(|e| format!("seccomp: {e}"))?;
    // tug-shim sets no_new_privs itself, exactly when the spec asks.
    ctx.set_ctl_nnp(false).map_err(|e| format!("seccomp: {e}"))?;
    // A binary tree over syscall numbers instead of a linear chain: a few comparisons per
    // call rather than hundreds for a large allow-list (also at load, when the kernel runs
    // the filter for every syscall number to fill its action cache).
    ctx.set_ctl_optimize(2).map_err(|e| format!("seccomp: {e}"))?;
    if p.log {
        ctx.set_ctl_log(true).map_err(|e| format!("seccomp flag LOG: {e}"))?;
    }
    if p.spec_allow {
        ctx.set_ctl_ssb(true).map_err(|e| format!("seccomp flag SPEC_ALLOW: {e}"))?;
    }
    for arch in &p.arches {
        if !ctx.is_arch_present(*arch).unwrap_or(false) {
            ctx.add_arch(*arch).map_err(|e| format!("seccomp architecture {arch:?}: {e}"))?;
        }
    }
    for rule in &p.rules {
        // A rule that does what the default does adds nothing (libseccomp refuses it).
        if rule.action == p.default {
            continue;
        }
        for name in &rule.names {
            let Ok(sc) = ScmpSyscall::from_name(name) else { continue };
            // Checks on one argument index are alternatives (libseccomp cannot AND two
            // comparisons of the same argument): one rule each, as runc does.
            let mut seen = std::collections::HashSet::new();
            let same_index = rule.args.iter().any(|a| !seen.insert(a.index));
            let groups: Vec<Vec<ScmpArgCompare>> = if same_index {
                rule.args.iter().map(|a| vec![compare(a)]).collect()
            } else {
                vec![rule.args.iter().map(compare).collect()]
            };
            for cmps in groups {
                let added = if cmps.is_empty() {
                    ctx.add_rule(rule.action.to_scmp(), sc)
                } else {
                    ctx.add_rule_conditional(rule.action.to_scmp(), sc, &cmps)
                };
                added.map_err(|e| format!("seccomp rule for {name}: {e}"))?;
            }
        }
    }
    Ok(ctx)
}

/// A filter ready to install: classic BPF instructions as the kernel takes them, and the
/// `seccomp(2)` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub program: Vec<u8>,
    pub flags: u32,
}

/// Compiles a profile, or reads it from `cache` (a directory, keyed by the SHA-256 of the
/// plan and the libseccomp version): generating the BPF for a large profile takes libseccomp
/// about 10 ms, reading it back a few microseconds, and the agent gives most pods the same
/// default profile.
pub fn prepare(p: &SeccompPlan, cache: Option<&std::path::Path>) -> Result<Filter, String> {
    use sha2::Digest;
    let flags = (if p.log { libc::SECCOMP_FILTER_FLAG_LOG } else { 0 })
        | (if p.spec_allow { libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW } else { 0 });
    let flags = u32::try_from(flags).unwrap_or(0);
    let version = libseccomp::ScmpVersion::current().map(|v| format!("{v:?}")).unwrap_or_default();
    let key = sha2::Sha256::digest(format!("{version}\noptimize=2\n{p:?}").as_bytes());
    let name: String = key.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = cache {
        if let Ok(program) = std::fs::read(dir.join(format!("{name}.bpf"))) {
            if !program.is_empty() && program.len() % 8 == 0 {
                return Ok(Filter { program, flags });
            }
        }
    }
    let ctx = compile(p)?;
    // SAFETY: memfd_create with a static name; the descriptor is owned right away.
    let fd = unsafe { libc::memfd_create(c"tug-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("seccomp: memfd: {}", nix::Error::last()));
    }
    // SAFETY: `fd` was just returned to us and nothing else owns it.
    let mut file =
        std::fs::File::from(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    ctx.export_bpf(&file).map_err(|e| format!("seccomp: {e}"))?;
    let mut program = Vec::new();
    std::io::Seek::rewind(&mut file).map_err(|e| format!("seccomp: {e}"))?;
    std::io::Read::read_to_end(&mut file, &mut program).map_err(|e| format!("seccomp: {e}"))?;
    if let Some(dir) = cache {
        // Written aside and renamed: a reader never sees half a filter.
        let _ = std::fs::create_dir_all(dir);
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        if std::fs::write(&tmp, &program).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(format!("{name}.bpf")));
        }
    }
    Ok(Filter { program, flags })
}

impl Filter {
    /// Installs the filter on this thread (the caller is single-threaded).
    pub fn load(&self) -> Result<(), nix::Error> {
        let len = u16::try_from(self.program.len() / 8).map_err(|_| nix::Error::E2BIG)?;
        let prog = libc::sock_fprog { len, filter: self.program.as_ptr().cast_mut().cast() };
        // SAFETY: `prog` points at `len` sock_filter instructions in `self.program`, which
        // outlives the call; the kernel copies them.
        let rc = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, self.flags, &raw const prog)
        };
        nix::Error::result(rc).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<SeccompPlan, SpecError> {
        plan(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn a_profile_translates() {
        let p = parse(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }))
        .unwrap();
        assert_eq!(p.default, Action::Errno(38));
        assert_eq!(p.arches, [ScmpArch::X8664, ScmpArch::X86]);
        assert!(p.log && !p.spec_allow);
        assert_eq!(
            p.rules[2].args[0],
            ArgCheck { index: 0, op: Op::MaskedEq, value: 2114060288, value_two: 0 }
        );
        compile(&p).expect("libseccomp builds it");
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(&p, Some(dir.path())).unwrap();
        assert_eq!(first.flags, u32::try_from(libc::SECCOMP_FILTER_FLAG_LOG).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "cached");
        assert_eq!(prepare(&p, Some(dir.path())).unwrap(), first, "read back from the cache");
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v| parse(v).unwrap_err().to_string();
        assert_eq!(
            err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["x"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}
            ]})),
            "linux.seccomp.syscalls[0].args[0].index: 7 is not 0..5"
        );
        assert_eq!(
            err(
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]})
            ),
            "linux.seccomp.syscalls[0].names: must list at least one syscall"
        );
        assert_eq!(
            err(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000})),
            "linux.seccomp.defaultAction.errnoRet: 70000 is above 65535"
        );
        assert!(err(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"})).contains("seccomp agent"));
    }

    #[test]
    fn unknown_syscalls_are_skipped_and_default_actions_dropped() {
        let p = parse(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["no_such_call_tug", "getppid"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
        ]}))
        .unwrap();
        compile(&p).expect("built without the unknown name and the redundant rule");
    }
}
