//! `tug-bpf`: BPF programs for Tug, compiled from data to bytecode in pure Rust.
//!
//! The first program is the cgroup v2 device filter (`BPF_PROG_TYPE_CGROUP_DEVICE`): OCI
//! device rules in ([`DeviceRule`]), instructions out ([`device_filter`]), checked without root
//! by running them in [`interpret`], then loaded and attached by the thin [`loader`].
//!
//! ```
//! use tug_bpf::{DeviceRule, DeviceKind, Access, device_filter, interpret, Request};
//! let rules = [DeviceRule::allow(Some(DeviceKind::Char), Some(1), Some(3), Access::ALL)];
//! let prog = device_filter(&rules);
//! assert!(interpret(&prog, Request { kind: DeviceKind::Char, major: 1, minor: 3, access: Access::READ }));
//! assert!(!interpret(&prog, Request { kind: DeviceKind::Block, major: 8, minor: 0, access: Access::READ }));
//! ```

pub mod loader;

/// `b` or `c` (an OCI rule's `a` is `None`: any kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Char,
}

impl DeviceKind {
    /// The kernel's `BPF_DEVCG_DEV_*` value.
    fn code(self) -> i32 {
        match self {
            DeviceKind::Block => 1,
            DeviceKind::Char => 2,
        }
    }
}

/// Access bits as the kernel encodes them (`BPF_DEVCG_ACC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    /// From an OCI access string (`rwm`, `r`, …).
    pub fn parse(s: &str) -> Option<Access> {
        s.chars().try_fold(Access(0), |a, c| match c {
            'r' => Some(Access(a.0 | 2)),
            'w' => Some(Access(a.0 | 4)),
            'm' => Some(Access(a.0 | 1)),
            _ => None,
        })
    }
}

/// One device rule; `None` fields match anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: Option<DeviceKind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    pub fn allow(
        kind: Option<DeviceKind>,
        major: Option<u32>,
        minor: Option<u32>,
        access: Access,
    ) -> DeviceRule {
        DeviceRule { allow: true, kind, major, minor, access }
    }

    pub fn deny(
        kind: Option<DeviceKind>,
        major: Option<u32>,
        minor: Option<u32>,
        access: Access,
    ) -> DeviceRule {
        DeviceRule { allow: false, kind, major, minor, access }
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8-byte encoding the kernel reads.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h) for the subset the filter uses.
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, dst, src, off, imm }
}

/// Compiles rules into a device filter. Later rules override earlier ones (the order of
/// `devices.allow`/`devices.deny` writes in cgroup v1), so the program checks them last
/// first; a device no rule matches is denied.
pub fn device_filter(rules: &[DeviceRule]) -> Vec<Insn> {
    // The context is `struct bpf_cgroup_dev_ctx`: access_type = (access << 16) | type, then
    // major and minor. r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut checks: Vec<Insn> = Vec::new();
        if let Some(k) = rule.kind {
            checks.push(insn(JNE_K, 2, 0, 0, k.code()));
        }
        if rule.access.0 & 7 != 7 {
            // Every requested access bit must be among the rule's: (access & !rule) == 0.
            checks.push(insn(ALU64_MOV_X, 6, 3, 0, 0));
            checks.push(insn(ALU64_AND_K, 6, 0, 0, i32::try_from(!rule.access.0 & 7).unwrap_or(7)));
            checks.push(insn(JNE_K, 6, 0, 0, 0));
        }
        if let Some(m) = rule.major {
            checks.push(insn(JNE_K, 4, 0, 0, i32::try_from(m).unwrap_or(i32::MAX)));
        }
        if let Some(m) = rule.minor {
            checks.push(insn(JNE_K, 5, 0, 0, i32::try_from(m).unwrap_or(i32::MAX)));
        }
        let catch_all = checks.is_empty();
        let verdict = [insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)), insn(EXIT, 0, 0, 0, 0)];
        // Each failed check jumps past the rest of this rule's block.
        let len = checks.len() + verdict.len();
        for (i, c) in checks.iter_mut().enumerate() {
            if c.code == JNE_K {
                c.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
            }
        }
        p.extend(checks);
        p.extend(verdict);
        // A rule that matches everything decides every access: whatever would follow is
        // unreachable, which the kernel's verifier refuses.
        if catch_all {
            return p;
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// A device access, as the kernel hands it to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    pub access: Access,
}

/// Runs a device filter on one request in a small interpreter of the instructions
/// [`device_filter`] emits; true when the program allows the access.
///
/// # Panics
/// On an instruction outside that subset, or a jump out of the program: both are bugs in the
/// compiler this interpreter exists to test.
pub fn interpret(prog: &[Insn], req: Request) -> bool {
    let ctx = [(req.access.0 << 16) | u32::try_from(req.kind.code()).unwrap_or(0), req.major, req.minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (d, s) = (usize::from(i.dst), usize::from(i.src));
        // Immediates are sign-extended to 64 bits, as the kernel does.
        #[allow(clippy::cast_sign_loss)] // reinterpreting the sign-extended bits is the point
        let imm = i64::from(i.imm) as u64;
        match i.code {
            LDX_W => {
                assert_eq!(s, 1, "loads come from the context in r1");
                r[d] = u64::from(ctx[usize::try_from(i.off).unwrap_or(0) / 4]);
            }
            ALU64_MOV_X => r[d] = r[s],
            ALU64_MOV_K => r[d] = imm,
            ALU64_AND_K => r[d] &= imm,
            ALU64_RSH_K => r[d] >>= imm,
            JNE_K => {
                if r[d] != imm {
                    pc = pc.checked_add_signed(isize::from(i.off)).unwrap_or(usize::MAX);
                }
            }
            EXIT => return r[0] != 0,
            other => panic!("opcode {other:#x} is not in the device filter's subset"),
        }
        pc += 1;
        assert!(pc < prog.len(), "jump out of the program");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceKind::{Block, Char};

    fn req(kind: DeviceKind, major: u32, minor: u32, access: &str) -> Request {
        Request { kind, major, minor, access: Access::parse(access).unwrap() }
    }

    /// Instructions no path reaches (older verifiers refuse such programs).
    fn unreachable(prog: &[Insn]) -> Vec<usize> {
        let mut seen = vec![false; prog.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= prog.len() || seen[pc] {
                continue;
            }
            seen[pc] = true;
            match prog[pc].code {
                EXIT => {}
                JNE_K => {
                    todo.push(pc + 1);
                    todo.push(pc.checked_add_signed(isize::from(prog[pc].off) + 1).unwrap_or(usize::MAX));
                }
                _ => todo.push(pc + 1),
            }
        }
        seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect()
    }

    /// Data-driven: rules → (request, allowed?) pairs.
    fn check(rules: &[DeviceRule], cases: &[(Request, bool)]) {
        let prog = device_filter(rules);
        assert_eq!(unreachable(&prog), Vec::<usize>::new(), "every instruction is reachable for {rules:?}");
        for (r, want) in cases {
            assert_eq!(interpret(&prog, *r), *want, "{r:?} under {rules:?}");
        }
    }

    #[test]
    fn nothing_matches_nothing_is_allowed() {
        check(&[], &[(req(Char, 1, 3, "r"), false)]);
    }

    #[test]
    fn the_usual_container_rules() {
        let rules = [
            DeviceRule::deny(None, None, None, Access::ALL),
            DeviceRule::allow(Some(Char), Some(1), Some(3), Access::ALL),
            DeviceRule::allow(Some(Char), Some(136), None, Access::parse("rw").unwrap()),
        ];
        check(
            &rules,
            &[
                (req(Char, 1, 3, "rw"), true),
                (req(Char, 1, 3, "m"), true),
                (req(Char, 1, 5, "r"), false),
                (req(Block, 8, 0, "r"), false),
                (req(Block, 8, 0, "m"), false),
                (req(Char, 136, 7, "rw"), true),
                (req(Char, 136, 7, "m"), false),
                (req(Block, 136, 7, "r"), false),
            ],
        );
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let rules = [
            DeviceRule::allow(None, None, None, Access::ALL),
            DeviceRule::deny(Some(Block), Some(8), None, Access::ALL),
        ];
        check(
            &rules,
            &[(req(Block, 8, 1, "r"), false), (req(Block, 9, 1, "r"), true), (req(Char, 8, 1, "r"), true)],
        );
    }

    #[test]
    fn access_strings() {
        assert_eq!(Access::parse("rwm"), Some(Access::ALL));
        assert_eq!(Access::parse(""), Some(Access(0)));
        assert_eq!(Access::parse("x"), None);
    }

    #[test]
    fn encoding_matches_the_kernel_layout() {
        assert_eq!(insn(LDX_W, 2, 1, 4, 0).encode(), [0x61, 0x12, 4, 0, 0, 0, 0, 0]);
        assert_eq!(insn(JNE_K, 4, 0, -1, 8).encode(), [0x55, 0x04, 0xff, 0xff, 8, 0, 0, 0]);
    }
}
