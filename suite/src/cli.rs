//! What every command-line program shares, written once: its arguments,
//! POSIX getopt, messages in the skalibs style (`prog: fatal: unable to X:
//! strerror`), the exit codes, number parsing and exec.
//!
//! Exit codes: 0 success, 1 the daemon refused, 100 wrong usage, 111 a system
//! call failed; exec failures exit 127 (program not found) or 126.
//!
//! Messages go to descriptor 2 in one `write` each, and a failed write is
//! ignored, as skalibs' `strerr` does: with stderr closed nothing is said,
//! with stderr a pipe without reader the program dies of SIGPIPE (unless
//! its parent ignores SIGPIPE: then it goes on to its exit code). No
//! program panics over its stderr.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fdholder::client::{Client, Deadline};

/// How many leading arguments are not the program's own: 1 (`argv[0]`) when
/// run by its own name, 2 when run as `fdholder PROGRAM args...`.
static ARGS_SKIPPED: AtomicUsize = AtomicUsize::new(1);

/// Sets how many leading arguments [`args`] skips (the multicall dispatcher
/// does, before running a program).
pub fn set_args_skipped(n: usize) {
    ARGS_SKIPPED.store(n, Ordering::Relaxed);
}

/// Whether the program was run as `fdholder PROGRAM args...` (see
/// [`set_args_skipped`]), not by its own name.
pub fn run_by_first_argument() -> bool {
    ARGS_SKIPPED.load(Ordering::Relaxed) == 2
}

/// The running program's arguments, without its name.
pub fn args() -> impl Iterator<Item = OsString> {
    std::env::args_os().skip(ARGS_SKIPPED.load(Ordering::Relaxed))
}

/// Writes `msg` to descriptor 2 in one go; errors are ignored (see the
/// module documentation).
pub fn write_stderr(msg: &[u8]) {
    let mut rest = msg;
    let fd = rustix::stdio::stderr();
    while !rest.is_empty() {
        match rustix::io::write(fd, rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Formats one message line and writes it to stderr.
fn say(name: &str, kind: &str, msg: std::fmt::Arguments<'_>) {
    write_stderr(format!("{name}: {kind}{msg}\n").as_bytes());
}

/// Exit code: the daemon refused the operation.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code: wrong usage.
pub const EXIT_USAGE: i32 = 100;
/// Exit code: a system call failed.
pub const EXIT_SYS: i32 = 111;

/// A program's identity: its name and its usage line.
#[derive(Debug, Clone, Copy)]
pub struct Prog {
    /// Name, as it prefixes every message.
    pub name: &'static str,
    /// The usage line, without the `prog: usage: ` prefix.
    pub usage: &'static str,
}

/// The text of an error as C's `strerror` gives it (no "(os error N)").
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match e.raw_os_error() {
        Some(n) => s
            .strip_suffix(&format!(" (os error {n})"))
            .unwrap_or(&s)
            .to_string(),
        None => s,
    }
}

impl Prog {
    /// Prints `prog: usage: <usage>` and exits 100.
    pub fn die_usage(&self) -> ! {
        say(self.name, "usage: ", format_args!("{}", self.usage));
        std::process::exit(EXIT_USAGE)
    }

    /// Prints `prog: fatal: <msg>` and exits with `code`.
    pub fn die(&self, code: i32, msg: impl std::fmt::Display) -> ! {
        say(self.name, "fatal: ", format_args!("{msg}"));
        std::process::exit(code)
    }

    /// Prints `prog: fatal: unable to <what>: <strerror>` and exits with `code`.
    pub fn die_unable(&self, code: i32, what: impl std::fmt::Display, e: &io::Error) -> ! {
        self.die(code, format_args!("unable to {}: {}", what, strerror(e)))
    }

    /// Prints `prog: warning: <msg>`.
    pub fn warn(&self, msg: impl std::fmt::Display) {
        say(self.name, "warning: ", format_args!("{msg}"));
    }

    /// Prints `prog: info: <msg>`.
    pub fn info(&self, msg: impl std::fmt::Display) {
        say(self.name, "info: ", format_args!("{msg}"));
    }

    /// Parses the command line (without `argv[0]`) with POSIX getopt rules
    /// for `optstring` (`"d:t:T:"`: a letter, `:` if it takes an argument).
    /// Parsing stops at the first non-option or after `--`; those and what
    /// follows are returned as operands. A bad option is a usage error.
    pub fn getopt(&self, optstring: &str) -> Parsed {
        self.getopt_from(args(), optstring)
    }

    /// [`Prog::getopt`] over the given arguments.
    pub fn getopt_from(&self, args: impl IntoIterator<Item = OsString>, optstring: &str) -> Parsed {
        getopt(args, optstring).unwrap_or_else(|_| self.die_usage())
    }

    /// Parses an unsigned decimal option value, or dies with usage.
    pub fn uint(&self, s: &OsStr) -> u32 {
        parse_uint(s).unwrap_or_else(|| self.die_usage())
    }

    /// Parses the command line of a program whose only option is
    /// `-t timeout`: returns the deadline and the operands.
    pub fn getopt_timeout(&self) -> (Deadline, Vec<OsString>) {
        let (opts, args) = self.getopt("t:");
        let mut deadline = None;
        for (_, v) in opts {
            deadline = self.timeout(&v);
        }
        (deadline, args)
    }

    /// Parses the command line of a program whose options are `-D`
    /// (delete what is handed over) and `-t timeout`: returns whether `-D`
    /// was given, the deadline and the operands.
    pub fn getopt_delete_timeout(&self) -> (bool, Deadline, Vec<OsString>) {
        let (opts, args) = self.getopt("Dt:");
        let (mut delete, mut deadline) = (false, None);
        for (c, v) in opts {
            match c {
                'D' => delete = true,
                _ => deadline = self.timeout(&v),
            }
        }
        (delete, deadline, args)
    }

    /// Parses a `-t timeout` value (milliseconds, 0 = none) into a deadline.
    pub fn timeout(&self, s: &OsStr) -> Deadline {
        deadline_ms(self.uint(s))
    }

    /// Connects to the daemon at `path`, or dies 111 with the reference's
    /// message (`what` is "" or e.g. "source ").
    ///
    /// A path too long for a socket address is reported as EPROTO, as
    /// skalibs' `ipc_connect` does (in every version), where the library
    /// says ENAMETOOLONG.
    pub fn connect(&self, what: &str, path: &OsStr, deadline: Deadline) -> Client {
        Client::connect(path, deadline).unwrap_or_else(|e| {
            let e = if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
                io::Error::from_raw_os_error(libc::EPROTO)
            } else {
                e
            };
            self.die_unable(
                EXIT_SYS,
                format_args!(
                    "connect to a {what}fd-holder daemon at {}",
                    path.to_string_lossy()
                ),
                &e,
            )
        })
    }

    /// Replaces the process with `argv` (searched in `PATH` when it has
    /// no `/`), with `modifs` applied to the environment as skalibs'
    /// `mexec` does (see [`merge_env`]). Signal dispositions, the signal
    /// mask and descriptors pass through untouched. On failure, exits 127
    /// if the program is not found, 126 otherwise.
    pub fn exec(&self, argv: &[OsString], modifs: &[(OsString, Option<OsString>)]) -> ! {
        let Some(file) = argv.first() else {
            self.die_usage()
        };
        let cstr = |s: Vec<u8>| {
            CString::new(s).unwrap_or_else(|_| self.die(EXIT_USAGE, "argument contains a NUL byte"))
        };
        let args: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes().to_vec())).collect();
        let env: Vec<CString> = merge_env(crate::sys::environ(), modifs)
            .into_iter()
            .map(cstr)
            .collect();
        let e = execvep(file.as_bytes(), &args, &env);
        let code = if e.raw_os_error() == Some(libc::ENOENT) {
            127
        } else {
            126
        };
        self.die_unable(code, format_args!("exec {}", file.to_string_lossy()), &e)
    }
}

/// skalibs' default search path, when `PATH` is unset.
const DEFAULT_PATH: &[u8] = b"/usr/bin:/bin";

/// skalibs' `execvep`: `file` as is if it has a `/`, else each non-empty
/// entry of `PATH` (of this process's environment) in turn, going on past
/// ENOENT, EACCES, EPERM, EISDIR and ENOTDIR, and stopping at any other
/// error; the error reported is the last one that was not ENOENT, else
/// ENOENT.
fn execvep(file: &[u8], argv: &[CString], envp: &[CString]) -> io::Error {
    let Ok(c) = CString::new(file) else {
        return io::Error::from_raw_os_error(libc::EINVAL);
    };
    if file.contains(&b'/') {
        return crate::sys::execve(&c, argv, envp);
    }
    let path = std::env::var_os("PATH").map_or(DEFAULT_PATH.to_vec(), OsString::into_vec);
    let mut saved: Option<io::Error> = None;
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for dir in path.split(|&b| b == b':').filter(|d| !d.is_empty()) {
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(file);
        let Ok(full) = CString::new(full) else {
            continue;
        };
        let e = crate::sys::execve(&full, argv, envp);
        let errno = e.raw_os_error().unwrap_or(0);
        if errno != libc::ENOENT {
            let fatal = ![libc::EACCES, libc::EPERM, libc::EISDIR, libc::ENOTDIR].contains(&errno);
            saved = Some(io::Error::from_raw_os_error(errno));
            if fatal {
                break;
            }
        }
        last = e;
    }
    saved.unwrap_or(last)
}

/// The environment `envp` with `modifs` applied in order, exactly as
/// skalibs' `env_merge`: for each modification, the first variable of that
/// name is removed by moving the last variable into its place, then, if the
/// modification has a value, `KEY=VALUE` is appended. So inherited
/// variables keep their order, modified ones come last in the order given.
pub fn merge_env(mut envp: Vec<Vec<u8>>, modifs: &[(OsString, Option<OsString>)]) -> Vec<Vec<u8>> {
    for (key, value) in modifs {
        let key = key.as_bytes();
        if let Some(j) = envp
            .iter()
            .position(|v| v.len() > key.len() && v.starts_with(key) && v[key.len()] == b'=')
        {
            envp.swap_remove(j);
        }
        if let Some(value) = value {
            let mut kv = key.to_vec();
            kv.push(b'=');
            kv.extend_from_slice(value.as_bytes());
            envp.push(kv);
        }
    }
    envp
}

/// Appends `id` quoted as `s6-fdholder-list` prints it: `\a \b \t \n \v
/// \f \r` and `\\`, `\0xHH` (lower-case hex) for other controls, DEL and
/// bytes from 0x80; everything else as is.
pub fn quote(out: &mut Vec<u8>, id: &[u8]) {
    for &c in id {
        let esc = match c {
            0x07 => b'a',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0b => b'v',
            0x0c => b'f',
            b'\r' => b'r',
            b'\\' => b'\\',
            0x20..=0x7e => {
                out.push(c);
                continue;
            }
            _ => {
                out.extend_from_slice(format!("\\0x{c:02x}").as_bytes());
                continue;
            }
        };
        out.extend_from_slice(&[b'\\', esc]);
    }
}

/// Options (letter, argument or empty) and operands, as getopt returns them.
pub type Parsed = (Vec<(char, OsString)>, Vec<OsString>);

/// The getopt engine (lexopt underneath). `Err` on an unknown option, a
/// missing argument or a long option.
pub fn getopt(
    args: impl IntoIterator<Item = OsString>,
    optstring: &str,
) -> Result<Parsed, lexopt::Error> {
    let mut p = lexopt::Parser::from_args(args);
    let mut opts = Vec::new();
    let mut operands = Vec::new();
    while let Some(arg) = p.next()? {
        match arg {
            lexopt::Arg::Short(c) => {
                let i = optstring
                    .find(c)
                    .filter(|_| c != ':')
                    .ok_or(lexopt::Error::UnexpectedOption(c.to_string()))?;
                if optstring[i + c.len_utf8()..].starts_with(':') {
                    opts.push((c, p.value()?));
                } else {
                    opts.push((c, OsString::new()));
                }
            }
            lexopt::Arg::Long(l) => return Err(lexopt::Error::UnexpectedOption(format!("--{l}"))),
            lexopt::Arg::Value(v) => {
                operands.push(v);
                operands.extend(p.raw_args()?);
                break;
            }
        }
    }
    Ok((opts, operands))
}

/// Parses an unsigned decimal number as skalibs' `uint0_scan`: digits only,
/// the whole string, no sign.
pub fn parse_uint(s: &OsStr) -> Option<u32> {
    let b = s.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses an unsigned octal number as skalibs' `uint0_oscan`: octal digits
/// only, the whole string, no sign, no overflow.
pub fn parse_uint_octal(s: &OsStr) -> Option<u32> {
    let b = s.as_bytes();
    match scan_uint_prefix(b, 8) {
        Some((v, n)) if n == b.len() => Some(v),
        _ => None,
    }
}

/// Scans the longest prefix of `s` that is a number in `base` (at most 10)
/// and fits in a `u32`, as skalibs' `uint32_scan_base`: digits that would
/// overflow are left unread. Returns the value and the bytes read, or
/// `None` if no digit was read.
fn scan_uint_prefix(s: &[u8], base: u32) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    let mut n = 0;
    for &c in s {
        let Some(d) = (c as char).to_digit(base) else {
            break;
        };
        let Some(next) = v.checked_mul(base).and_then(|x| x.checked_add(d)) else {
            break;
        };
        v = next;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// Scans a list of decimal numbers as skalibs' `uint32_scanlist` (used for
/// gid lists): numbers separated by runs of `,:; \t\r\n`, at most `max` of
/// them, stopping silently at the first thing that is not a number.
/// Returns the numbers and how many bytes were read (0 if none: callers
/// treat that as invalid unless `s` is empty).
pub fn scan_uint_list(s: &[u8], max: usize) -> (Vec<u32>, usize) {
    let mut list = Vec::new();
    let mut len = 0;
    while len < s.len() && list.len() < max {
        let Some((v, n)) = scan_uint_prefix(&s[len..], 10) else {
            break;
        };
        list.push(v);
        len += n;
        while len < s.len() && b",:; \t\r\n".contains(&s[len]) {
            len += 1;
        }
    }
    (list, len)
}

/// Parses a gid list as the reference's `-G` does (see [`scan_uint_list`]):
/// `None` when nothing could be read from a non-empty string.
pub fn parse_gidlist(s: &OsStr) -> Option<Vec<u32>> {
    let (list, n) = scan_uint_list(s.as_bytes(), 65536);
    (n > 0 || s.is_empty()).then_some(list)
}

/// A deadline `ms` milliseconds from now; 0 means none.
pub fn deadline_ms(ms: u32) -> Deadline {
    (ms != 0).then(|| Instant::now() + Duration::from_millis(ms.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Strings = (Vec<(char, String)>, Vec<String>);

    fn go(args: &[&str], optstring: &str) -> Result<Strings, ()> {
        getopt(args.iter().map(OsString::from), optstring)
            .map(|(o, a)| {
                (
                    o.into_iter()
                        .map(|(c, v)| (c, v.into_string().unwrap()))
                        .collect(),
                    a.into_iter().map(|v| v.into_string().unwrap()).collect(),
                )
            })
            .map_err(|_| ())
    }

    #[test]
    fn posix_getopt() {
        let (o, a) = go(&["-Dt", "100", "sock", "id", "prog", "-x"], "Dt:").unwrap();
        assert_eq!(o, vec![('D', "".into()), ('t', "100".into())]);
        assert_eq!(a, vec!["sock", "id", "prog", "-x"]);
        let (o, a) = go(&["-t100", "--", "-sock"], "t:").unwrap();
        assert_eq!(o, vec![('t', "100".into())]);
        assert_eq!(a, vec!["-sock"]);
        let (o, a) = go(&["-", "x"], "t:").unwrap();
        assert!(o.is_empty());
        assert_eq!(a, vec!["-", "x"]);
        assert!(go(&["-x"], "t:").is_err());
        assert!(go(&["-t"], "t:").is_err());
        assert!(go(&["--long"], "t:").is_err());
        assert!(go(&["-:"], "t:").is_err());
    }

    #[test]
    fn uints() {
        assert_eq!(parse_uint(OsStr::new("0")), Some(0));
        assert_eq!(parse_uint(OsStr::new("4294967295")), Some(u32::MAX));
        assert_eq!(parse_uint(OsStr::new("4294967296")), None);
        assert_eq!(parse_uint(OsStr::new("+1")), None);
        assert_eq!(parse_uint(OsStr::new("")), None);
        assert_eq!(parse_uint(OsStr::new("1x")), None);
    }

    #[test]
    fn octal_and_lists() {
        assert_eq!(parse_uint_octal(OsStr::new("0750")), Some(0o750));
        assert_eq!(parse_uint_octal(OsStr::new("8")), None);
        assert_eq!(parse_uint_octal(OsStr::new("")), None);
        assert_eq!(parse_uint_octal(OsStr::new("37777777777")), Some(u32::MAX));
        assert_eq!(parse_uint_octal(OsStr::new("40000000000")), None);
        assert_eq!(scan_uint_list(b"", 10), (vec![], 0));
        assert_eq!(scan_uint_list(b"1,,2", 10), (vec![1, 2], 4));
        assert_eq!(scan_uint_list(b"1:2; 3\n", 10), (vec![1, 2, 3], 7));
        assert_eq!(scan_uint_list(b"1x,2", 10), (vec![1], 1));
        assert_eq!(scan_uint_list(b" 1", 10), (vec![], 0));
        assert_eq!(scan_uint_list(b"1,2,3", 2), (vec![1, 2], 4));
        // Digits that would overflow start the next number, as in skalibs.
        assert_eq!(
            scan_uint_list(b"99999999999", 10),
            (vec![999999999, 99], 11)
        );
    }

    #[test]
    fn strerror_text() {
        assert_eq!(
            strerror(&io::Error::from_raw_os_error(libc::EBUSY)),
            "Device or resource busy"
        );
    }
}
