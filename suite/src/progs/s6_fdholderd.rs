//! `s6-fdholderd`: the fd-holding daemon. Its stdin is a bound, listening
//! Unix stream socket. See `docs/s6-fdholderd.md`.

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{EXIT_SYS, EXIT_USAGE, Prog};
use crate::daemon::{self, Config, MAXCONN_LIMIT, RulesConfig};
use crate::sandbox::Shortfall;

const PROG: Prog = Prog {
    name: "s6-fdholderd",
    usage: "s6-fdholderd [ -v verbosity ] [ -1 ] [ -c maxconn ] [ -n maxfds ] [ -t timeout ] [ -T lameducktimeout ] [ -S ] [ -i rulesdir | -x rulesfile ]",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    // After an upgrade: the state left by the previous program.
    let resume = crate::upgrade::inherited(&PROG);
    let (opts, _) = PROG.getopt("v:1Sc:n:i:x:t:T:");
    let mut cfg = Config {
        verbosity: 1,
        maxconn: 16,
        maxfds: 1000,
        client_timeout: None,
        lameduck_timeout: None,
        rules: RulesConfig::Dir(PathBuf::new()),
        exec: crate::upgrade::ExecSelf::current(),
    };
    let mut rules = None;
    let mut notify = false;
    let mut sandbox = true;
    let ms = |v| (v != 0).then(|| Duration::from_millis(u64::from(v)));
    for (c, v) in opts {
        match c {
            'v' => cfg.verbosity = PROG.uint(&v),
            '1' => notify = true,
            'S' => sandbox = false,
            'c' => cfg.maxconn = PROG.uint(&v),
            'n' => cfg.maxfds = PROG.uint(&v),
            't' => cfg.client_timeout = ms(PROG.uint(&v)),
            'T' => cfg.lameduck_timeout = ms(PROG.uint(&v)),
            'i' => rules = Some(RulesConfig::Dir(v.into())),
            'x' => rules = Some(RulesConfig::Cdb(v.into())),
            _ => PROG.die_usage(),
        }
    }
    cfg.rules = rules.unwrap_or_else(|| PROG.die(EXIT_USAGE, "no access rights specified!"));
    cfg.maxconn = cfg.maxconn.clamp(1, MAXCONN_LIMIT);
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if lim.current.is_some_and(|cur| cur < 7) {
        PROG.die(EXIT_SYS, "open file limit too low");
    }
    // -n is lowered by the daemon, once its descriptors are open, to the
    // room the limit leaves: the reference lowers it to the limit - 6 only
    // when it exceeds the limit itself, and assumes what is open, so held
    // fds can take the last descriptors and the daemon can then accept
    // nobody (not even to delete).
    cfg.maxfds = cfg.maxfds.max(1);
    // A trial run of an upgrade (the check variable set): what would stop
    // this program from serving (its options, the limit, its rules) has
    // been checked or is now; then it answers and exits, touching nothing.
    if let Some(state) = &resume {
        crate::upgrade::acknowledge_trial(&PROG, state, || drop(open_rules(&cfg.rules)));
    }

    let stdin = io::stdin();
    let listener = stdin.as_fd();
    match rustix::fs::fstat(listener) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket => {}
        Ok(_) => PROG.die(EXIT_USAGE, "stdin is not a socket"),
        Err(e) => PROG.die_unable(EXIT_SYS, "fstat stdin", &e.into()),
    }
    // Without -1, stdout is closed at once; with -1, after the newline.
    // Nothing in this program writes to stdout otherwise.
    let stdout = io::stdout();
    if resume.is_some() {
        // Readiness was signalled and stdout closed by the first program;
        // descriptor 1 may now be anything of the state's.
    } else if notify {
        if let Err(e) = rustix::io::fcntl_getfd(stdout.as_fd()) {
            PROG.die(
                EXIT_USAGE,
                format_args!(
                    "called with option -1 but stdout said: {}",
                    crate::cli::strerror(&e.into())
                ),
            );
        }
    } else {
        crate::sys::close_stdout();
    }
    // Readiness implies confinement: the sandbox is applied once the
    // socket, the rules and the daemon's own descriptors are open, before
    // the readiness newline (see crate::sandbox).
    let rules_cfg = cfg.rules.clone();
    let exe_path: Option<PathBuf> = cfg.exec.as_ref().map(|e| {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(e.path.to_bytes()))
    });
    let cfg_verbosity = cfg.verbosity;
    let ready = || {
        if sandbox {
            match crate::sandbox::confine(&rules_cfg, exe_path.as_deref()) {
                Ok(short) => {
                    for s in short.into_iter().filter(|_| cfg_verbosity >= 1) {
                        match s {
                            Shortfall::LandlockAbi(abi) => {
                                PROG.warn(format_args!("sandbox: {}ABI {abi}", s.warning()))
                            }
                            _ => PROG.warn(format_args!("sandbox: {}", s.warning())),
                        }
                    }
                }
                Err(f) => PROG.die_unable(EXIT_SYS, f.step, &f.err),
            }
        }
        if notify {
            let _ = rustix::io::write(stdout.as_fd(), b"\n");
            crate::sys::close_stdout();
        }
    };
    let rules = match (daemon::open_rules(&cfg.rules), &resume) {
        (Ok(r), _) => r,
        // After an upgrade (the trial read these rules a moment ago),
        // nothing held may be lost for them: refuse every client until a
        // SIGHUP reads them, as with an invalid cdb.
        (Err(e), Some(_)) => {
            PROG.warn(format_args!(
                "unable to open the rules after the upgrade: {}: refusing every connection until SIGHUP reads them",
                crate::cli::strerror(&e)
            ));
            crate::rules::Rules::RefuseAll(crate::rules::cdb::BadCdb)
        }
        (Err(e), None) => die_rules(&cfg.rules, &e),
    };
    match daemon::run(listener, cfg, rules, ready, resume) {
        Ok(code) => std::process::exit(code),
        Err(e) => PROG.die(
            EXIT_SYS,
            format_args!("unable to run: {}", crate::cli::strerror(&e)),
        ),
    }
}

/// The rules of `rules`, or death as the reference dies of them.
fn open_rules(rules: &RulesConfig) -> crate::rules::Rules {
    daemon::open_rules(rules).unwrap_or_else(|e| die_rules(rules, &e))
}

/// Dies of rules that cannot be opened, with the reference's message.
fn die_rules(rules: &RulesConfig, e: &io::Error) -> ! {
    match rules {
        RulesConfig::Cdb(f) => {
            PROG.die_unable(EXIT_SYS, format_args!("cdb_init {}", f.display()), e)
        }
        RulesConfig::Dir(_) => PROG.die_unable(EXIT_SYS, "open rules", e),
    }
}
