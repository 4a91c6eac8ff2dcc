//! The only module with `unsafe`: thin safe wrappers over the few C library
//! calls that `rustix` does not cover.
//!
//! - POSIX extended regular expressions (`regcomp`/`regexec`), so that access
//!   rules match identifiers exactly as the reference daemon does: it uses the
//!   same C library functions.
//! - Blocking signals and reading them from a `signalfd`, for the daemon's
//!   event loop.
//! - Process credentials (`setgroups`, `setgid`, `setuid`) through the C
//!   library, which applies them to every thread of the process.
//! - The daemon's sandbox: `PR_SET_NO_NEW_PRIVS`, a seccomp filter, and
//!   Landlock's three system calls (what to allow is `crate::sandbox`'s).

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd};

// glibc's values (see <regex.h>); `libc` does not export them for linux-gnu.
const REG_EXTENDED: libc::c_int = 1;
const REG_NOSUB: libc::c_int = 8;

unsafe extern "C" {
    fn regcomp(
        preg: *mut libc::regex_t,
        pattern: *const libc::c_char,
        cflags: libc::c_int,
    ) -> libc::c_int;
    fn regexec(
        preg: *const libc::regex_t,
        string: *const libc::c_char,
        nmatch: libc::size_t,
        pmatch: *mut libc::c_void,
        eflags: libc::c_int,
    ) -> libc::c_int;
    fn regerror(
        errcode: libc::c_int,
        preg: *const libc::regex_t,
        errbuf: *mut libc::c_char,
        errbuf_size: libc::size_t,
    ) -> libc::size_t;
    fn regfree(preg: *mut libc::regex_t);
}

/// A compiled POSIX extended regular expression (`REG_EXTENDED | REG_NOSUB`).
pub struct Regex {
    // Boxed so that the compiled pattern never moves: glibc keeps no
    // self-pointers today, but POSIX does not promise a `regex_t` is movable.
    re: Box<libc::regex_t>,
    /// The pattern is `.*` (or empty, which means `.*`): it matches the
    /// empty string at the start of any subject, so every search succeeds
    /// and `regexec` need not run. This is the usual "every id" right.
    matches_all: bool,
    /// The pattern as given, for an in-place upgrade to compile it again.
    source: Box<[u8]>,
}

impl Regex {
    /// Compiles `pattern` as the reference does: an empty pattern means `.*`
    /// (POSIX leaves the empty ERE undefined). On failure, returns the C
    /// library's error message.
    pub fn new(pattern: &[u8]) -> Result<Regex, String> {
        let pattern = if pattern.is_empty() {
            &b".*"[..]
        } else {
            pattern
        };
        let c = CString::new(pattern).map_err(|_| "pattern contains a NUL byte".to_string())?;
        let mut re: Box<MaybeUninit<libc::regex_t>> = Box::new(MaybeUninit::uninit());
        // SAFETY: `re` points to writable storage for one regex_t and `c` is a
        // valid NUL-terminated string for the duration of the call.
        let r = unsafe { regcomp(re.as_mut_ptr(), c.as_ptr(), REG_EXTENDED | REG_NOSUB) };
        if r != 0 {
            let mut buf = [0 as libc::c_char; 256];
            // SAFETY: regerror writes at most `buf.len()` bytes, NUL-terminated;
            // it may read the partially initialised regex_t, which glibc allows
            // right after a failed regcomp.
            unsafe { regerror(r, re.as_ptr(), buf.as_mut_ptr(), buf.len()) };
            // SAFETY: regerror NUL-terminated the buffer (it is non-empty).
            let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
            return Err(msg.to_string_lossy().into_owned());
        }
        // SAFETY: regcomp returned 0, so it fully initialised the regex_t.
        let re = unsafe { Box::from_raw(Box::into_raw(re).cast::<libc::regex_t>()) };
        Ok(Regex {
            re,
            matches_all: pattern == b".*",
            source: pattern.into(),
        })
    }

    /// The pattern it was compiled from (`.*` for the empty one).
    pub fn source(&self) -> &[u8] {
        &self.source
    }

    /// Whether the regex matches anywhere in `s` (unanchored search).
    pub fn is_match(&self, s: &CStr) -> bool {
        if self.matches_all {
            return true;
        }
        // SAFETY: `self.re` was initialised by a successful regcomp, `s` is
        // NUL-terminated, and with nmatch 0 no match array is written.
        unsafe { regexec(&*self.re, s.as_ptr(), 0, std::ptr::null_mut(), 0) == 0 }
    }
}

impl Drop for Regex {
    fn drop(&mut self) {
        // SAFETY: the regex_t was initialised by regcomp and is freed once.
        unsafe { regfree(&mut *self.re) }
    }
}

impl std::fmt::Debug for Regex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Regex")
    }
}

/// Blocks `signals` for the calling thread (the daemon is single-threaded)
/// and returns a non-blocking, close-on-exec `signalfd` that reports them.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only touches it.
    let set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    };
    // SAFETY: `set` is a valid, initialised sigset_t; the old set is not wanted.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `set` is valid; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a `signalfd`, or `None` if none is
/// pending.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<u32>> {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    match rustix::io::read(fd, &mut info) {
        Ok(n) if n == info.len() => Ok(Some(u32::from_ne_bytes([
            info[0], info[1], info[2], info[3],
        ]))),
        Ok(_) => Ok(None),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Ignores SIGPIPE, so that writing to a closed peer is an EPIPE error.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition and no handler code runs.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores `sig` (SIGTERM, SIGHUP...): for `s6-fdholder-sdnotify`'s
/// watcher, which must outlive a signal sent to its process group until
/// the program it watches has exited.
pub fn ignore_signal(sig: libc::c_int) {
    // SAFETY: SIG_IGN is a valid disposition and no handler code runs.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// What [`fork`] returned in the process that called it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the new process.
    Child,
    /// In the calling process: the child's pid.
    Parent(rustix::process::Pid),
}

/// `fork()`. Only for a single-threaded program (every program of the
/// suite is), where the child may run any code.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the process has one thread, so the child inherits no lock
    // held by another thread; both sides go on with a consistent copy.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => Ok(Forked::Child),
        p if p > 0 => Ok(Forked::Parent(
            rustix::process::Pid::from_raw(p).ok_or_else(io::Error::last_os_error)?,
        )),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `_exit(code)`: ends the process at once, without flushing stdio or
/// running anything registered to run at exit (for the middle process of
/// a double fork, whose copies of the parent's buffers are not its own).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of the process.
    unsafe { libc::_exit(code) }
}

/// A datagram received by [`recv_datagram`], with what came along.
#[derive(Debug)]
pub struct Datagram {
    /// Its real length (more than the buffer when `truncated`).
    pub len: usize,
    /// It did not fit the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// Its control data did not fit (`MSG_CTRUNC`): fds were lost (closed
    /// by the kernel).
    pub control_truncated: bool,
    /// The fds it carried (`SCM_RIGHTS`), close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The sender's pid, uid and gid (`SCM_CREDENTIALS`). A pid of 0 is
    /// the kernel's way of saying the sender is not in this pid namespace.
    pub cred: Option<(i32, u32, u32)>,
}

/// Receives one datagram from `sock` without waiting (`None`: none is
/// queued), into `buf`, with at most what `control` can hold of control
/// data (`SCM_RIGHTS`, `SCM_CREDENTIALS`; other kinds are skipped).
///
/// Written here rather than with `rustix::net::recvmsg`, whose `UCred`
/// holds the pid as a non-zero type: the kernel writes 0 there for a
/// sender in another pid namespace.
pub fn recv_datagram(
    sock: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
) -> io::Result<Option<Datagram>> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control);
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    // SAFETY: `msg` points to `iov` (describing `buf`) and to `control`,
    // all alive and writable for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    let mut out = Datagram {
        len: n as usize,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds: Vec::new(),
        cred: None,
    };
    // SAFETY: the kernel filled `msg.msg_control` with msg_controllen bytes
    // of well-formed control messages; CMSG_FIRSTHDR and CMSG_NXTHDR stay
    // inside them and return null at the end.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` points to a complete cmsghdr inside the control data.
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        // SAFETY: CMSG_DATA and CMSG_LEN only compute with their arguments.
        let (data, payload) = unsafe { (libc::CMSG_DATA(c), len - libc::CMSG_LEN(0) as usize) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                // SAFETY: the payload holds that many fds, which the
                // kernel just installed in this process for the caller.
                let fd = unsafe { data.cast::<libc::c_int>().add(i).read_unaligned() };
                if fd >= 0 {
                    // SAFETY: a new descriptor, owned by nothing else.
                    out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        } else if level == libc::SOL_SOCKET
            && kind == libc::SCM_CREDENTIALS
            && payload >= std::mem::size_of::<libc::ucred>()
        {
            // SAFETY: the payload holds a struct ucred (any bits are valid).
            let u = unsafe { data.cast::<libc::ucred>().read_unaligned() };
            out.cred = Some((u.pid, u.uid, u.gid));
        }
        // SAFETY: as for CMSG_FIRSTHDR, with `c` one of its results.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(Some(out))
}

/// Closes descriptor 1, as the reference daemon does with its stdout, so
/// that its descriptor budget (RLIMIT_NOFILE − 6 held fds) is the same.
///
/// The caller must never write to stdout afterwards: a later descriptor
/// (a client's socket) may get number 1.
pub fn close_stdout() {
    // SAFETY: nothing in this process owns fd 1 as an OwnedFd; std's Stdout
    // handle only borrows it, and the caller promises not to use it again.
    unsafe { libc::close(1) };
}

/// Sets the supplementary group list of the whole process.
pub fn setgroups(gids: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a valid gid_t slice.
    if unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the real, effective and saved gid of the whole process.
pub fn setgid(gid: u32) -> io::Result<()> {
    // SAFETY: plain system call on integers.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the real, effective and saved uid of the whole process.
pub fn setuid(uid: u32) -> io::Result<()> {
    // SAFETY: plain system call on integers.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: this process and whatever it execs can
/// never gain privileges (set-id bits and file capabilities are ignored).
/// Required for an unprivileged seccomp filter and Landlock domain.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: plain system call on integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs a seccomp BPF filter on the calling thread (the daemon has no
/// other), for good. No-new-privs must be set first (or the caller have
/// CAP_SYS_ADMIN). EINVAL when the kernel has no seccomp filters.
pub fn install_seccomp_filter(filter: &'static [libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` describes `len` valid instructions that outlive the
    // call; the kernel copies them and never writes through the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct landlock_ruleset_attr` (ABI 6 layout: a kernel with an older
/// ABI accepts it as long as the fields it does not know are zero).
#[repr(C)]
struct LandlockRulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's header).
#[repr(C, packed)]
struct LandlockPathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `LANDLOCK_CREATE_RULESET_VERSION`.
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
/// `LANDLOCK_RULE_PATH_BENEATH`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// The kernel's Landlock ABI version (1, 2, ...); ENOSYS when the kernel
/// has no Landlock, EOPNOTSUPP when it is built in but disabled at boot.
pub fn landlock_abi() -> io::Result<u32> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag, the
    // call reads no memory and only returns the version.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<LandlockRulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// A new Landlock ruleset that handles (denies unless a rule allows) the
/// given filesystem rights, TCP rights and scopes (bit masks of the
/// kernel's `LANDLOCK_ACCESS_FS_*`, `LANDLOCK_ACCESS_NET_*`,
/// `LANDLOCK_SCOPE_*`, all known to the running kernel's ABI).
pub fn landlock_create_ruleset(fs: u64, net: u64, scoped: u64) -> io::Result<OwnedFd> {
    let attr = LandlockRulesetAttr {
        handled_access_fs: fs,
        handled_access_net: net,
        scoped,
    };
    // SAFETY: `attr` is a valid ruleset attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const LandlockRulesetAttr,
            std::mem::size_of::<LandlockRulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Adds to `ruleset` a rule allowing `access` (filesystem rights) on the
/// file or directory `parent` and, for a directory, on everything beneath.
pub fn landlock_allow_beneath(
    ruleset: std::os::fd::BorrowedFd<'_>,
    parent: std::os::fd::BorrowedFd<'_>,
    access: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = LandlockPathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: both descriptors are open for the call, `attr` is a valid
    // path-beneath attribute; flags must be 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const LandlockPathBeneathAttr,
            0u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Confines the calling thread (the daemon has no other), for good, to
/// `ruleset`. No-new-privs must be set first.
pub fn landlock_restrict_self(ruleset: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system call on an open descriptor and flags 0.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Borrows the descriptor numbered `n`, inherited from the parent (`-d fd`,
/// `S6_FD_i`), after checking that it is open. EBADF if it is not.
///
/// The borrow is `'static` because the programs that call this never close
/// the descriptors they are told about by number.
pub fn borrow_fd_number(n: u32) -> io::Result<std::os::fd::BorrowedFd<'static>> {
    let n = libc::c_int::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: F_GETFD on any integer is harmless; it only reports whether
    // the number is an open descriptor.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is open (checked above) and, per this function's contract,
    // stays open for the rest of the process.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(n) })
}

/// `dup2(fd, n)`: makes descriptor number `n` a copy of `fd`, not
/// close-on-exec, closing whatever had that number; for a program that
/// puts descriptors at the numbers the next program expects, then execs
/// (`s6-fdholder-sdlisten`). `fd` must not be numbered `n` (dup2 would
/// then leave its close-on-exec flag as it is).
///
/// The caller owns no descriptor numbered `n`: what had that number was
/// inherited, and is given up. The new descriptor belongs to nobody in
/// this process; it stays open for the program exec'd.
pub fn dup2_number(fd: std::os::fd::BorrowedFd<'_>, n: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let n = libc::c_int::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: dup2 touches no memory; no OwnedFd of the process is numbered
    // `n` (the caller's contract), so none is closed or aliased behind its back.
    if unsafe { libc::dup2(fd.as_raw_fd(), n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of descriptor number `n`, inherited across an exec
/// (an in-place upgrade names its descriptors by number in its state),
/// after checking that it is open; marks it close-on-exec again. EBADF if
/// it is not open.
///
/// The caller adopts each number at most once: nothing else in the
/// process owns these descriptors.
pub fn adopt_fd(n: i32) -> io::Result<OwnedFd> {
    if n < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_SETFD on any integer is harmless; it fails with EBADF if
    // `n` is not open.
    if unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is open (checked above), was inherited, and per this
    // function's contract is owned by nothing else in the process.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The process's environment as it stands, every `KEY=VALUE` string in
/// order, byte for byte (what the next program would be handed).
pub fn environ() -> Vec<Vec<u8>> {
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    let mut out = Vec::new();
    // SAFETY: glibc's `environ` is a NULL-terminated array of NUL-terminated
    // strings; this single-threaded reading happens while nothing calls
    // setenv (no program of the suite does).
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            out.push(CStr::from_ptr(*p).to_bytes().to_vec());
            p = p.add(1);
        }
    }
    out
}

/// `execve(path, argv, envp)`: replaces the process image, keeping every
/// signal disposition, the signal mask and every descriptor not marked
/// close-on-exec. Returns only on failure, with the error.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: `path` and every element are NUL-terminated strings that
    // outlive the call; both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Defines the program's C `main`, calling `$run`, as the reference's
/// programs start: std's runtime set-up is skipped, so that a closed
/// standard descriptor stays closed (std would reopen it on /dev/null),
/// SIGPIPE keeps the disposition the parent gave it (std would ignore it),
/// and none of std's start-up system calls run (the stack-guard probe
/// through /proc/self/maps, sigaltstack: about 20). std still works: glibc
/// hands the arguments and the environment to std, and `process::exit`
/// flushes stdout.
///
/// Use in a crate with `#![no_main]`.
#[macro_export]
macro_rules! c_main {
    ($run:path) => {
        // SAFETY: this is the only symbol named `main` in the program (std's
        // is disabled by `no_main`), with the C signature glibc calls.
        #[unsafe(no_mangle)]
        extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
            $run();
            ::std::process::exit(0)
        }
    };
}

/// Sends `sig` to thread `tid` of this process (`tgkill`). Not used by the
/// programs: the in-process fuzz target (suite/tests/fuzzstate/) signals
/// the thread it runs [`crate::daemon::run`] in, whose signalfd takes it.
#[doc(hidden)]
pub fn signal_thread(tid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill takes plain integers and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(re: &str, s: &str) -> bool {
        Regex::new(re.as_bytes())
            .unwrap()
            .is_match(&CString::new(s).unwrap())
    }

    #[test]
    fn regex_semantics() {
        assert!(m("", "anything"));
        assert!(m("foo", "xfoox"));
        assert!(!m("^foo$", "xfoo"));
        assert!(m("^(a|b)$", "b"));
        assert!(m("^[[:digit:]]+$", "123"));
        assert!(!m(".^", "x"));
        assert!(Regex::new(b"(").is_err());
    }

    /// `.*` and the empty pattern skip `regexec`: the C library, given the
    /// same language spelled so that it does run (`(.*)`, `^`), agrees on
    /// every kind of id, bytes above 0x7f and newlines included.
    #[test]
    fn match_all_shortcut_agrees_with_regexec() {
        let all = [Regex::new(b"").unwrap(), Regex::new(b".*").unwrap()];
        assert!(all.iter().all(|r| r.matches_all));
        let spelled = [Regex::new(b"(.*)").unwrap(), Regex::new(b"^").unwrap()];
        assert!(spelled.iter().all(|r| !r.matches_all));
        let mut ids: Vec<Vec<u8>> = vec![vec![], b"x".to_vec(), b"\n".to_vec(), b"a\nb".to_vec()];
        ids.extend((1u8..=255).map(|b| vec![b]));
        ids.extend((1u8..=255).map(|b| vec![b'a', b, 0xff, b'z']));
        ids.push(vec![0xc3; 3000]);
        for id in ids {
            let id = CString::new(id).unwrap();
            for r in all.iter().chain(spelled.iter()) {
                assert!(r.is_match(&id), "{id:?}");
            }
        }
    }
}
