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
        })
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
