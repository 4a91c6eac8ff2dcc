//! Compiles the seccomp allowlist of `s6-fdholderd` (see `src/sandbox.rs`
//! and `docs/s6-fdholderd.md`, "Sandbox") into a BPF program for the target
//! architecture, with rust-vmm's `seccompiler` (a build dependency only: the
//! binary carries the program's bytes, not the compiler). It writes
//! `$OUT_DIR/seccomp_filter.rs`, included by `src/sandbox.rs`:
//!
//! `const SECCOMP_FILTER: Option<&[libc::sock_filter]>`, the BPF
//! instructions, or `None` on an architecture that seccompiler does not
//! support (the daemon then warns at run time).
//!
//! Syscall names go through seccompiler's own table for the target
//! architecture, so a cross build gets the target's numbers.
//!
//! It also gives the release link of the binary two size options
//! ([`small_link`]).

use std::fmt::Write as _;

/// What is refused: the call fails with this errno (EPERM) and the
/// daemon goes on; it never kills (the daemon holds descriptors that a
/// whole system depends on, and a killed holder loses them all).
const DENY_ERRNO: u32 = 1;

/// Which architectures a syscall exists on (x86_64 has a few legacy calls
/// that aarch64 never had: glibc and rustix use them there).
#[derive(Clone, Copy, PartialEq)]
enum Arch {
    All,
    X86_64Only,
}

/// A condition on one argument: `(arg & mask) == value` (32-bit compare).
type MaskedEq = (u8, u64, u64);

// Open flags and protection bits: the same values on x86_64 and aarch64
// (asm-generic).
const O_ACCMODE: u64 = 0o3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const PROT_EXEC: u64 = 0x4;
const PR_GET_AUXV: u64 = 0x4155_5856;
const SIGABRT: u64 = 6;
const SIGKILL: u64 = 9;
const MAP_ANONYMOUS: u64 = 0x20;

/// An open flag argument that opens read-only and creates or truncates
/// nothing.
const READ_ONLY_OPEN: u64 = O_ACCMODE | O_CREAT | O_TRUNC;

/// The allowlist: every system call the daemon makes once it has started
/// (found by running the daemon's tests under `strace -f` and by reading
/// the code), with the condition it must meet, if any. Keep in step with
/// `docs/s6-fdholderd.md`.
const ALLOWED: &[(&str, Arch, Option<MaskedEq>)] = &[
    // The event loop.
    ("epoll_pwait", Arch::All, None),
    ("epoll_wait", Arch::X86_64Only, None),
    ("epoll_ctl", Arch::All, None),
    ("ppoll", Arch::All, None),
    ("poll", Arch::X86_64Only, None),
    // Clients: accept, credentials, messages with descriptors, close.
    ("accept4", Arch::All, None),
    ("getsockopt", Arch::All, None),
    ("recvmsg", Arch::All, None),
    ("sendmsg", Arch::All, None),
    ("read", Arch::All, None),
    ("write", Arch::All, None), // answers, and stderr
    ("close", Arch::All, None),
    ("fcntl", Arch::All, None),
    // Rules (a directory looked up by path, a cdb read on SIGHUP) and the
    // count of open descriptors: read-only opens only (Landlock, where
    // the kernel has it, also limits where).
    ("openat", Arch::All, Some((2, READ_ONLY_OPEN, 0))),
    ("open", Arch::X86_64Only, Some((1, READ_ONLY_OPEN, 0))),
    ("access", Arch::X86_64Only, None),
    ("faccessat", Arch::All, None),
    ("statx", Arch::All, None),
    ("newfstatat", Arch::All, None),
    ("fstat", Arch::All, None),
    ("getdents64", Arch::All, None),
    ("lseek", Arch::All, None),
    // The describe request: what a held descriptor is (besides fstat,
    // fcntl and getsockopt above): its /proc/self/fd link, read with
    // readlinkat (no Landlock right covers it), and a socket's addresses.
    ("readlinkat", Arch::All, None),
    ("getsockname", Arch::All, None),
    ("getpeername", Arch::All, None),
    // Memory (the allocator), never executable.
    ("brk", Arch::All, None),
    ("mmap", Arch::All, Some((2, PROT_EXEC, 0))),
    ("mprotect", Arch::All, Some((2, PROT_EXEC, 0))),
    ("munmap", Arch::All, None),
    ("mremap", Arch::All, None),
    ("madvise", Arch::All, None),
    // Time (normally the vDSO; rustix finds it through the auxiliary
    // vector, read with prctl(PR_GET_AUXV) the first time it is needed).
    ("clock_gettime", Arch::All, None),
    ("prctl", Arch::All, Some((0, u32::MAX as u64, PR_GET_AUXV))),
    // Signals, exit: an abort (a bug) still raises SIGABRT
    // (rt_sigprocmask, getpid, tgkill).
    ("rt_sigprocmask", Arch::All, None),
    ("getpid", Arch::All, None),
    ("tgkill", Arch::All, Some((2, u32::MAX as u64, SIGABRT))),
    ("exit_group", Arch::All, None),
    // The in-place upgrade (SIGUSR2, src/upgrade.rs): the state in a
    // sealed memfd, the trial run of the new binary (a pipe, fork, dup2 of
    // the pipe to its stdin, wait, SIGKILL at the timeout), the exec.
    ("memfd_create", Arch::All, None),
    ("pipe2", Arch::All, None),
    ("clone", Arch::All, None),
    ("wait4", Arch::All, None),
    ("kill", Arch::All, Some((1, u32::MAX as u64, SIGKILL))),
    ("dup2", Arch::X86_64Only, None),
    ("dup3", Arch::All, None),
    ("execve", Arch::All, None),
    // The new program's start (the filter stays across exec): the dynamic
    // loader maps the libraries executable (file-backed mappings only:
    // anonymous memory still never is), glibc sets up the thread, std
    // seeds its hash maps; then the daemon's own set-up (getcwd for a
    // relative argv[0], the signalfd, epoll, credentials, limits read,
    // never set).
    ("mmap", Arch::All, Some((3, MAP_ANONYMOUS, 0))),
    ("arch_prctl", Arch::X86_64Only, None),
    ("set_tid_address", Arch::All, None),
    ("set_robust_list", Arch::All, None),
    ("rseq", Arch::All, None),
    ("prlimit64", Arch::All, Some((2, u32::MAX as u64, 0))),
    ("getrandom", Arch::All, None),
    ("pread64", Arch::All, None),
    ("getcwd", Arch::All, None),
    ("readlink", Arch::X86_64Only, None),
    ("rt_sigaction", Arch::All, None),
    ("signalfd4", Arch::All, None),
    ("epoll_create1", Arch::All, None),
    ("geteuid", Arch::All, None),
    ("getegid", Arch::All, None),
];

/// The release link of the `fdholder` binary on Linux with glibc: relative
/// relocations packed (`-z pack-relative-relocs`, DT_RELR: glibc 2.36 and
/// binutils 2.38 or later; an older `ld` ignores it with a warning), about
/// 11 KB less, and the unwind tables discarded by
/// `link/discard-unwind-tables.ld` (an implicit linker script, which GNU
/// ld and lld take), about 48 KB less: with panic = "abort" nothing
/// unwinds. `FDHOLDER_PLAIN_LINK=1` leaves the link as cargo makes it (a
/// linker that takes no linker script, such as mold).
fn small_link() {
    println!("cargo:rerun-if-changed=link/discard-unwind-tables.ld");
    println!("cargo:rerun-if-env-changed=FDHOLDER_PLAIN_LINK");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("FDHOLDER_PLAIN_LINK") == "1"
    {
        return;
    }
    let script = std::path::Path::new(&var("CARGO_MANIFEST_DIR"))
        .join("link")
        .join("discard-unwind-tables.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins={}", script.display());
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    small_link();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let target = match seccompiler::TargetArch::try_from(arch.as_str()) {
        Ok(t @ (seccompiler::TargetArch::x86_64 | seccompiler::TargetArch::aarch64))
            if os == "linux" =>
        {
            Some(t)
        }
        _ => None,
    };
    let code = match target {
        None => {
            println!(
                "cargo:warning=no seccomp allowlist for {arch}-{os}: s6-fdholderd will run without one"
            );
            "const SECCOMP_FILTER: Option<&[libc::sock_filter]> = None;\n".to_string()
        }
        Some(t) => {
            let x86 = t == seccompiler::TargetArch::x86_64;
            let mut rules = String::new();
            for (name, on, cond) in ALLOWED {
                if *on == Arch::X86_64Only && !x86 {
                    continue;
                }
                if !rules.is_empty() {
                    rules.push(',');
                }
                match cond {
                    None => write!(rules, r#"{{"syscall":"{name}"}}"#).unwrap(),
                    Some((index, mask, val)) => write!(
                        rules,
                        r#"{{"syscall":"{name}","args":[{{"index":{index},"type":"dword","op":{{"masked_eq":{mask}}},"val":{val}}}]}}"#
                    )
                    .unwrap(),
                }
            }
            let json = format!(
                r#"{{"daemon":{{"mismatch_action":{{"errno":{DENY_ERRNO}}},"match_action":"allow","filter":[{rules}]}}}}"#
            );
            let mut map = seccompiler::compile_from_json(json.as_bytes(), t)
                .unwrap_or_else(|e| panic!("seccomp allowlist: {e}"));
            let prog = map.remove("daemon").unwrap();
            let mut s =
                String::from("const SECCOMP_FILTER: Option<&[libc::sock_filter]> = Some(&[\n");
            for i in &prog {
                writeln!(
                    s,
                    "    libc::sock_filter {{ code: {}, jt: {}, jf: {}, k: {:#x} }},",
                    i.code, i.jt, i.jf, i.k
                )
                .unwrap();
            }
            s.push_str("]);\n");
            s
        }
    };
    std::fs::write(out.join("seccomp_filter.rs"), code).unwrap();
}
