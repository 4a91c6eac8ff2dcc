//! A rules directory's decisions are never stale: the daemon reads the
//! rules by path for every connection, as the reference does, so a change
//! acts on the very next connection however it was made, including the
//! five writes of issue 12 that no inotify event reports (each of which a
//! rules cache that trusted inotify missed):
//!
//! 1. a native AIO write (`io_submit`) through a descriptor opened before;
//! 2. a write through a shared mapping made before the rules were read;
//! 3. a write through a descriptor that fanotify opened;
//! 4. a write to a loop device (`/dev/loopN`) whose backing file is the
//!    env file;
//! 5. an env file that is a block device node, changed through the
//!    device's other node.
//!
//! Each case starts our daemon and the reference's (side by side, on the
//! same kind of tree) on a rules directory whose env file
//! `S6_FDHOLDER_STORE_REGEX` holds `^a`, makes two successful connections
//! (so that a cache, if any, is filled and used), rewrites `^a` as `^b` by
//! that method, and checks the very next connection may store `b` and no
//! longer `a`: the right to store `a` is revoked at once.
//!
//! Then the edits a user makes with ordinary tools, each seen by the next
//! connection of both daemons; and issue 12's item 4: the daemon makes no
//! `statfs` call after start-up (a rules directory on a FUSE mount whose
//! `statfs` never answers would hang every client).

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, have_reference, is_root};
use fdholder::Client;

fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if have_reference() {
        v.push(Impl::Reference);
    }
    v
}

fn me() -> String {
    format!("uid/{}", rustix::process::geteuid().as_raw())
}

fn dl() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

/// The rights of a fresh connection, in short: `refused`, or the words
/// `list` (may list) and each of the ids `a`, `b` it may store.
fn probe(sock: &Path) -> String {
    let Ok(mut c) = Client::connect(sock, dl()) else {
        return "refused".into();
    };
    let mut got = Vec::new();
    match c.list(dl()) {
        Ok(_) => got.push("list"),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(_) => return "refused".into(),
    }
    let f = std::fs::File::open("/dev/null").unwrap();
    for id in ["a", "b"] {
        match c.store(f.as_fd(), id.as_bytes(), None, dl()) {
            Ok(()) => {
                got.push(id);
                c.delete(id.as_bytes(), dl()).unwrap();
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(_) => return "refused".into(),
        }
    }
    got.join(" ")
}

/// Writes a rule for our uid at `rules/key` allowing `list` (if asked) and
/// storing ids that match `re` (none if `None`).
fn rule(rules: &Path, key: &str, list: bool, re: Option<&str>) {
    let mut env: Vec<(&str, Option<&str>)> = Vec::new();
    if list {
        env.push(("S6_FDHOLDER_LIST", Some("")));
    }
    if let Some(re) = re {
        env.push(("S6_FDHOLDER_STORE_REGEX", Some(re)));
    }
    common::allow(rules, key, &env);
}

/// The usual tree: `dir/rules`, our uid may list and store `^a`.
fn base(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    rule(&rules, &me(), true, Some("^a"));
    rules
}

fn env_file(dir: &Path, var: &str) -> PathBuf {
    dir.join("rules").join(me()).join("env").join(var)
}

/// What every writer script starts with: `ready()` says the set-up is
/// done (descriptor opened, mapping made...) and waits for the go;
/// `written()` says the write is done and keeps everything open until
/// stdin closes, so that no close or unmap event can help a cache.
const PY_PRELUDE: &str = r#"
import ctypes, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(r, what):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ': ' + os.strerror(e))
    return r
def ready():
    print('ready', flush=True)
    sys.stdin.readline()
def written():
    print('written', flush=True)
    sys.stdin.read()
path = sys.argv[1]
"#;

/// A python3 process that prepares a write (before the daemon first reads
/// the rules) and makes it when told.
struct Writer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Writer {
    /// Runs `script` (after [`PY_PRELUDE`]) on `target`, until it is ready.
    fn start(script: &str, target: &Path) -> Writer {
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(format!("{PY_PRELUDE}{script}"))
            .arg(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 is needed to write the rules");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut w = Writer { child, out };
        w.expect("ready");
        w
    }

    fn expect(&mut self, what: &str) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        if line != format!("{what}\n") {
            let _ = self.child.kill();
            let st = self.child.wait().unwrap();
            panic!("python3 writer did not say {what:?} (said {line:?}, {st})");
        }
    }

    /// Makes the write, and returns once it is done.
    fn write(&mut self) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        self.expect("written");
    }

    /// Lets the script close everything and exit; it must succeed.
    fn finish(&mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "python3 writer");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // After `finish`, it has exited (and been waited for) already.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// 1. A native AIO write (`io_submit` of an `IOCB_CMD_PWRITE`) through a
///    descriptor opened for writing before the daemon read the rules.
const PY_AIO: &str = r#"
NR = {'x86_64': (206, 209, 208), 'aarch64': (0, 2, 4)}[os.uname().machine]
fd = os.open(path, os.O_WRONLY)
ready()
ctx = ctypes.c_ulong(0)
check(libc.syscall(ctypes.c_long(NR[0]), ctypes.c_long(8), ctypes.byref(ctx)), 'io_setup')
data = ctypes.create_string_buffer(b'^b', 2)
# struct iocb: data, key, rw_flags, opcode (1: PWRITE), reqprio, fildes,
# buf, nbytes, offset, reserved2, flags, resfd.
iocb = ctypes.create_string_buffer(struct.pack('=QIIHhIQQqQII',
    0, 0, 0, 1, 0, fd, ctypes.addressof(data), 2, 0, 0, 0, 0), 64)
iocbs = (ctypes.c_void_p * 1)(ctypes.addressof(iocb))
n = check(libc.syscall(ctypes.c_long(NR[1]), ctx, ctypes.c_long(1), iocbs), 'io_submit')
assert n == 1, n
ev = ctypes.create_string_buffer(32)
n = check(libc.syscall(ctypes.c_long(NR[2]), ctx, ctypes.c_long(1), ctypes.c_long(1), ev, None), 'io_getevents')
assert n == 1, n
res = struct.unpack_from('=QQqq', ev.raw)[2]
assert res == 2, res
written()
"#;

/// 2. A write through a `MAP_SHARED` mapping made before the daemon read
///    the rules.
const PY_MMAP: &str = r#"
f = open(path, 'r+b')
m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
ready()
m[0:2] = b'^b'
written()
"#;

/// 3. A write through the descriptor a fanotify event carries (fanotify
///    opens it itself, with no notification).
const PY_FANOTIFY: &str = r#"
libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
FAN_CLASS_NOTIF, FAN_CLOEXEC, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD = 0, 1, 1, 0x20, -100
fan = check(libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, os.O_RDWR), 'fanotify_init')
check(libc.fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, path.encode()), 'fanotify_mark')
os.close(os.open(path, os.O_RDONLY))
buf = os.read(fan, 4096)
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid.
_, _, _, _, mask, fd, _ = struct.unpack_from('=IBBHQii', buf)
assert mask & FAN_OPEN and fd >= 0, (mask, fd)
os.close(fan)
ready()
assert os.pwrite(fd, b'^b', 0) == 2
written()
"#;

/// 4. and 5. A write to a block device (`path` is `/dev/loopN`), then
///    fsync (so that a loop device writes it to its backing file).
const PY_BLOCK: &str = r#"
fd = os.open(path, os.O_RDWR)
ready()
assert os.pwrite(fd, b'^b', 0) == 2
os.fsync(fd)
written()
"#;

/// A loop device attached to a file, detached when dropped.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// Attaches a free loop device to `file`; fails loudly if loop devices
    /// cannot be had (the test needs one: it must not pass without).
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup (util-linux) is needed");
        assert!(
            out.status.success(),
            "losetup -f --show {}: {}: loop devices are needed for this test",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop { dev }
    }

    /// The device's number (`st_rdev`).
    fn rdev(&self) -> u64 {
        std::fs::metadata(&self.dev).unwrap().rdev()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// What a loop device's backing file holds: the env file's line, then
/// NULs up to a whole 4096-byte page (a loop device is a whole number of
/// 512-byte sectors long). Only the first line of an env file counts.
fn page(line: &[u8]) -> Vec<u8> {
    let mut v = line.to_vec();
    v.resize(4096, 0);
    v
}

/// One stale-write case, on each implementation: `setup` builds the tree
/// in a fresh directory and returns what the writer writes to (and
/// anything to keep alive until the end); the writer is started, and does
/// its set-up, before the daemon first reads the rules.
fn stale_case<G>(name: &str, script: &str, setup: impl Fn(&Path) -> (PathBuf, G)) {
    for which in impls() {
        let dir = common::tmpdir(name);
        let (target, guard) = setup(&dir);
        let mut writer = Writer::start(script, &target);
        let d = Daemon::with_rules(which, "-i", dir.join("rules"));
        assert_eq!(probe(&d.sock), "list a", "{name} {which:?}: before");
        assert_eq!(probe(&d.sock), "list a", "{name} {which:?}: again");
        writer.write();
        let after = probe(&d.sock);
        let again = probe(&d.sock);
        writer.finish();
        drop(d);
        drop(guard);
        assert_eq!(after, "list b", "{name} {which:?}: after the write");
        assert_eq!(again, "list b", "{name} {which:?}: and after that");
    }
}

#[test]
fn an_aio_write_through_an_earlier_descriptor_acts_at_once() {
    stale_case("aio", PY_AIO, |dir| {
        base(dir);
        (env_file(dir, "S6_FDHOLDER_STORE_REGEX"), ())
    });
}

#[test]
fn a_write_through_an_earlier_shared_mapping_acts_at_once() {
    stale_case("mmap", PY_MMAP, |dir| {
        base(dir);
        (env_file(dir, "S6_FDHOLDER_STORE_REGEX"), ())
    });
}

#[test]
fn a_write_through_a_descriptor_fanotify_opened_acts_at_once() {
    if !is_root("fanotify_init") {
        return;
    }
    stale_case("fanotify", PY_FANOTIFY, |dir| {
        base(dir);
        (env_file(dir, "S6_FDHOLDER_STORE_REGEX"), ())
    });
}

#[test]
fn a_write_to_the_loop_device_backed_by_an_env_file_acts_at_once() {
    if !is_root("losetup") {
        return;
    }
    stale_case("loopback", PY_BLOCK, |dir| {
        base(dir);
        let f = env_file(dir, "S6_FDHOLDER_STORE_REGEX");
        std::fs::write(&f, page(b"^a\n")).unwrap();
        let lo = Loop::attach(&f);
        (lo.dev.clone(), lo)
    });
}

#[test]
fn an_env_file_that_is_a_block_device_node_acts_at_once() {
    if !is_root("losetup and mknod") {
        return;
    }
    stale_case("blocknode", PY_BLOCK, |dir| {
        base(dir);
        let backing = dir.join("backing");
        std::fs::write(&backing, page(b"^a\n")).unwrap();
        let lo = Loop::attach(&backing);
        let f = env_file(dir, "S6_FDHOLDER_STORE_REGEX");
        std::fs::remove_file(&f).unwrap();
        let rdev = lo.rdev();
        let st = Command::new("mknod")
            .arg(&f)
            .arg("b")
            .arg(libc::major(rdev).to_string())
            .arg(libc::minor(rdev).to_string())
            .status()
            .unwrap();
        assert!(st.success(), "mknod");
        (lo.dev.clone(), lo)
    });
}

/// The daemon under `strace -f`, tracing the statfs family and `write`
/// (the readiness notification is the marker of start-up's end): after
/// start-up, connections judged against a rules directory (allowed,
/// denied, no rule) make no `statfs` call, which on a FUSE mount whose
/// `statfs` never answers would hang the daemon for ever (the reference
/// never calls it).
#[test]
fn no_statfs_on_the_accept_path() {
    let dir = common::tmpdir("statfs");
    let rules = base(&dir);
    common::deny(&rules, "gid/0");
    let trace = dir.join("trace");
    let trace_s = trace.to_str().unwrap().to_string();
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            rules: Some(("-i", rules.clone())),
            wrap: &[
                "strace",
                "-f",
                "-qq",
                "-o",
                &trace_s,
                "-e",
                "trace=%%statfs,write",
            ],
            ..Opts::default()
        },
    );
    for _ in 0..3 {
        assert_eq!(probe(&d.sock), "list a");
    }
    // Our uid's rule gone: the deny of gid/0 or no rule decides.
    std::fs::remove_dir_all(rules.join(me())).unwrap();
    assert_eq!(probe(&d.sock), "refused");
    rule(&rules, &me(), false, Some("^b"));
    assert_eq!(probe(&d.sock), "b");
    // The daemon is strace's child: killing strace would leave it running
    // (detached), and the trace unfinished. It is told to stop, and strace
    // then ends with it.
    let mut d = d;
    let daemon = traced_child(d.child.id());
    rustix::process::kill_process(daemon, rustix::process::Signal::TERM).unwrap();
    common::wait_timeout(&mut d.child, Duration::from_secs(10));
    drop(d);
    let text = std::fs::read_to_string(&trace).unwrap();
    let ready = text
        .lines()
        .position(|l| l.contains("write(1, \"\\n\", 1)"))
        .unwrap_or_else(|| panic!("no readiness write in the trace:\n{text}"));
    let after: Vec<&str> = text
        .lines()
        .skip(ready)
        .filter(|l| l.contains("statfs"))
        .collect();
    assert!(after.is_empty(), "statfs calls after start-up: {after:#?}");
}

/// A FUSE server on `/dev/fuse` (python3 and ctypes, no library): it
/// mounts on `argv[1]` a rules directory allowing `uid/<argv[2]>` with
/// `S6_FDHOLDER_LIST`, answers lookups, attributes, opens, reads and
/// directory reads, and never answers `statfs`.
const PY_FUSE: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(r, what):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ': ' + os.strerror(e))
    return r
mnt = sys.argv[1]
uid = sys.argv[2]
S_IFDIR, S_IFREG = 0o040000, 0o100000
# nodeid: (mode, content or children {name: nodeid})
nodes = {
    1: (S_IFDIR | 0o755, {b'uid': 2}),
    2: (S_IFDIR | 0o755, {uid.encode(): 3}),
    3: (S_IFDIR | 0o755, {b'allow': 4, b'env': 5}),
    4: (S_IFREG | 0o644, b''),
    5: (S_IFDIR | 0o755, {b'S6_FDHOLDER_LIST': 6}),
    6: (S_IFREG | 0o644, b'\n'),
}
fd = check(os.open('/dev/fuse', os.O_RDWR), 'open /dev/fuse')
opts = 'fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions' % fd
check(libc.mount(b'fdholdertest', mnt.encode(), b'fuse', ctypes.c_ulong(6), opts.encode()), 'mount')
print('ready', flush=True)
def attr(n):
    mode, c = nodes[n]
    size = 0 if mode & S_IFDIR else len(c)
    return struct.pack('=QQQQQQIIIIIIIIII', n, size, 0, 0, 0, 0, 0, 0, 0,
                       mode, 2 if mode & S_IFDIR else 1, 0, 0, 0, 4096, 0)
def reply(unique, err=0, data=b''):
    os.write(fd, struct.pack('=IiQ', 16 + len(data), -err, unique) + data)
while True:
    try:
        req = os.read(fd, 1 << 20)
    except OSError as e:
        if e.errno == 19:  # ENODEV: unmounted
            break
        if e.errno in (2, 4, 11):  # ENOENT: request gone
            continue
        raise
    length, op, unique, node = struct.unpack_from('=IIQQ', req)
    body = req[40:length]
    if op == 26:  # INIT
        major, minor, ra, flags = struct.unpack_from('=IIII', body)
        out = struct.pack('=IIIIHHIIHHII', 7, min(minor, 31), ra, 0, 16, 12, 4096, 1, 32, 0, 0, 0)
        reply(unique, 0, out.ljust(64, b'\0'))
    elif op == 1:  # LOOKUP
        name = body.split(b'\0')[0]
        mode, c = nodes[node]
        child = c.get(name) if mode & S_IFDIR else None
        if child is None:
            reply(unique, 2)
        else:
            reply(unique, 0, struct.pack('=QQQQII', child, 0, 0, 0, 0, 0) + attr(child))
    elif op == 3:  # GETATTR
        reply(unique, 0, struct.pack('=QII', 0, 0, 0) + attr(node))
    elif op in (14, 27):  # OPEN, OPENDIR
        reply(unique, 0, struct.pack('=QII', 0, 0, 0))
    elif op == 15:  # READ
        fh, off, size = struct.unpack_from('=QQI', body)
        reply(unique, 0, nodes[node][1][off:off + size])
    elif op == 28:  # READDIR
        fh, off, size = struct.unpack_from('=QQI', body)
        out = b''
        for i, (name, child) in enumerate(nodes[node][1].items()):
            if i < off:
                continue
            kind = 4 if nodes[child][0] & S_IFDIR else 8
            ent = struct.pack('=QQII', child, i + 1, len(name), kind) + name
            ent = ent.ljust((len(ent) + 7) // 8 * 8, b'\0')
            if len(out) + len(ent) > size:
                break
            out += ent
        reply(unique, 0, out)
    elif op == 17:  # STATFS: never answered
        pass
    elif op in (2, 42, 36):  # FORGET, BATCH_FORGET, INTERRUPT: no answer
        pass
    elif op in (18, 29, 25, 34):  # RELEASE, RELEASEDIR, FLUSH, ACCESS
        reply(unique)
    elif op == 38:  # DESTROY
        reply(unique)
        break
    else:
        reply(unique, 38)  # ENOSYS
"#;

/// The FUSE server, in a mount namespace of its own (so that no other
/// process on the machine meets its `statfs` that never answers), and the
/// daemon, started in that namespace. Dropped server first: a daemon
/// waiting for an answer cannot die until the server is gone.
struct FuseCase {
    server: Child,
    daemon: Option<Daemon>,
}

impl Drop for FuseCase {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        drop(self.daemon.take());
    }
}

/// Issue 12, item 4: a rules directory on a FUSE mount whose `statfs`
/// never answers (reads do). The reference never calls `statfs` and
/// serves; ours must serve too.
#[test]
fn a_rules_dir_on_fuse_whose_statfs_never_answers_is_served() {
    if !is_root("mounting a FUSE filesystem") {
        return;
    }
    let uid = rustix::process::geteuid().as_raw().to_string();
    for which in impls() {
        let dir = common::tmpdir("fuse");
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut server = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "/usr/bin/python3",
                "-c",
                PY_FUSE,
            ])
            .arg(&mnt)
            .arg(&uid)
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) is needed");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut case = FuseCase {
            server,
            daemon: None,
        };
        assert_eq!(line, "ready\n", "the FUSE server did not mount");
        let ns = format!("--mount=/proc/{}/ns/mnt", case.server.id());
        let d = case.daemon.insert(Daemon::start_with(
            which,
            Opts {
                rules: Some(("-i", mnt.clone())),
                wrap: &["nsenter", &ns, "--"],
                ..Opts::default()
            },
        ));
        assert_eq!(probe(&d.sock), "list", "{which:?}");
        assert_eq!(probe(&d.sock), "list", "{which:?}: again");
        drop(case);
    }
}

/// The one child of process `pid` (a tracer's tracee).
fn traced_child(pid: u32) -> rustix::process::Pid {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let kid: i32 = kids.split_whitespace().next().unwrap().parse().unwrap();
    rustix::process::Pid::from_raw(kid).unwrap()
}

// The edits a user makes with ordinary tools: each acts on the very next
// connection, as with the reference (whose rights are the expected ones).

/// Runs one edit case on each implementation: `setup` builds the tree in
/// a fresh directory and returns the path to give `-i`; `edit` changes it;
/// the next connection must have `after` rights (the reference's).
fn case(
    name: &str,
    setup: impl Fn(&Path) -> PathBuf,
    before: &str,
    edit: impl Fn(&Path),
    after: &str,
) {
    for which in impls() {
        let dir = common::tmpdir(name);
        let rules = setup(&dir);
        let d = Daemon::with_rules(which, "-i", rules);
        assert_eq!(probe(&d.sock), before, "{name} {which:?}: before");
        assert_eq!(probe(&d.sock), before, "{name} {which:?}: again");
        edit(&dir);
        assert_eq!(probe(&d.sock), after, "{name} {which:?}: after the edit");
        assert_eq!(probe(&d.sock), after, "{name} {which:?}: and after that");
    }
}

#[test]
fn env_file_rewritten_renamed_removed_emptied_truncated_or_added() {
    let re = |dir: &Path| env_file(dir, "S6_FDHOLDER_STORE_REGEX");
    let list = |dir: &Path| env_file(dir, "S6_FDHOLDER_LIST");
    case(
        "inplace",
        base,
        "list a",
        |dir| std::fs::write(re(dir), "^b\n").unwrap(),
        "list b",
    );
    case(
        "rename",
        base,
        "list a",
        |dir| {
            let tmp = re(dir).with_file_name(".new");
            std::fs::write(&tmp, "^[ab]\n").unwrap();
            std::fs::rename(&tmp, re(dir)).unwrap();
        },
        "list a b",
    );
    case(
        "removed",
        base,
        "list a",
        |dir| std::fs::remove_file(list(dir)).unwrap(),
        "a",
    );
    case(
        "emptied",
        base,
        "list a",
        |dir| std::fs::write(list(dir), "").unwrap(),
        "a",
    );
    case(
        "truncated",
        base,
        "list a",
        |dir| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(re(dir))
                .unwrap()
                .set_len(0)
                .unwrap();
        },
        "list",
    );
    case(
        "added",
        |dir| {
            let rules = dir.join("rules");
            rule(&rules, &me(), false, Some("^a"));
            rules
        },
        "a",
        |dir| std::fs::write(list(dir), "\n").unwrap(),
        "list a",
    );
    case(
        "hardlink",
        |dir| {
            let rules = base(dir);
            std::fs::hard_link(re(dir), dir.join("elsewhere")).unwrap();
            rules
        },
        "list a",
        |dir| std::fs::write(dir.join("elsewhere"), "^b\n").unwrap(),
        "list b",
    );
    case(
        "envdir",
        base,
        "list a",
        |dir| {
            let env = dir.join("rules").join(me()).join("env");
            std::fs::rename(&env, env.with_file_name("env.old")).unwrap();
            std::fs::create_dir(&env).unwrap();
            std::fs::write(env.join("S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap();
        },
        "b",
    );
}

#[test]
fn allow_deny_and_keys_changed() {
    let key = |dir: &Path| dir.join("rules").join(me());
    case(
        "noallow",
        base,
        "list a",
        |dir| std::fs::remove_file(key(dir).join("allow")).unwrap(),
        "refused",
    );
    case(
        "deny",
        base,
        "list a",
        |dir| {
            std::fs::remove_file(key(dir).join("allow")).unwrap();
            std::fs::write(key(dir).join("deny"), "").unwrap();
        },
        "refused",
    );
    case(
        "allowback",
        |dir| {
            let rules = base(dir);
            std::fs::remove_file(key(dir).join("allow")).unwrap();
            rules
        },
        "refused",
        |dir| std::fs::write(key(dir).join("allow"), "").unwrap(),
        "list a",
    );
    case(
        "keyswap",
        base,
        "list a",
        |dir| {
            let rules = dir.join("rules");
            rule(&rules, "uid/new", false, Some("^b"));
            std::fs::rename(key(dir), key(dir).with_file_name("old")).unwrap();
            std::fs::rename(rules.join("uid/new"), key(dir)).unwrap();
        },
        "b",
    );
    // The daemon runs as our uid, so `uid/self` is tried before `uid/<n>`:
    // creating it takes over at once; a deny there refuses.
    case(
        "selfkey",
        base,
        "list a",
        |dir| rule(&dir.join("rules"), "uid/self", false, Some("^b")),
        "b",
    );
    case(
        "selfdeny",
        base,
        "list a",
        |dir| common::deny(&dir.join("rules"), "uid/self"),
        "refused",
    );
}

#[test]
fn rules_dir_an_ancestor_or_a_symlink_switched() {
    case(
        "rootswap",
        base,
        "list a",
        |dir| {
            rule(&dir.join("next"), &me(), false, Some("^b"));
            std::fs::rename(dir.join("rules"), dir.join("prev")).unwrap();
            std::fs::rename(dir.join("next"), dir.join("rules")).unwrap();
        },
        "b",
    );
    // The s6-rc way of switching a live directory: a new symlink renamed
    // over the old one.
    case(
        "symlink",
        |dir| {
            rule(&dir.join("v1"), &me(), true, Some("^a"));
            rule(&dir.join("v2"), &me(), false, Some("^b"));
            std::os::unix::fs::symlink("v1", dir.join("live")).unwrap();
            dir.join("live")
        },
        "list a",
        |dir| {
            std::os::unix::fs::symlink("v2", dir.join("live.new")).unwrap();
            std::fs::rename(dir.join("live.new"), dir.join("live")).unwrap();
        },
        "b",
    );
    // A key that is a symlink out of the tree: its target's edits act.
    case(
        "keylink",
        |dir| {
            let rules = dir.join("rules");
            rule(&dir.join("real"), "k", true, Some("^a"));
            std::fs::create_dir_all(rules.join("uid")).unwrap();
            std::os::unix::fs::symlink(dir.join("real/k"), rules.join(me())).unwrap();
            rules
        },
        "list a",
        |dir| std::fs::write(dir.join("real/k/env/S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap(),
        "list b",
    );
}

/// The rules directory's parent replaced by a rename while the daemon
/// runs: the reference, and ours with `-S`, read the new rules. Ours
/// sandboxed (the default) may read only beneath the rules' parent as it
/// was at start (Landlock rules hold inodes, see docs/s6-fdholderd.md,
/// "Sandbox"), so it refuses every client: it fails closed, and never
/// keeps granting what the old rules granted.
#[test]
fn rules_dir_parent_switched() {
    let mut runs: Vec<(Impl, &[&str], &str)> =
        vec![(Impl::Ours, &[], "refused"), (Impl::Ours, &["-S"], "b")];
    if have_reference() {
        runs.push((Impl::Reference, &[], "b"));
    }
    for (which, args, after) in runs {
        let dir = common::tmpdir("parentswap");
        let rules = dir.join("cur").join("rules");
        rule(&rules, &me(), true, Some("^a"));
        let d = Daemon::start_with(
            which,
            Opts {
                args,
                rules: Some(("-i", rules)),
                ..Opts::default()
            },
        );
        assert_eq!(probe(&d.sock), "list a", "{which:?} {args:?}: before");
        rule(&dir.join("next").join("rules"), &me(), false, Some("^b"));
        std::fs::rename(dir.join("cur"), dir.join("prev")).unwrap();
        std::fs::rename(dir.join("next"), dir.join("cur")).unwrap();
        assert_eq!(
            probe(&d.sock),
            after,
            "{which:?} {args:?}: after the switch"
        );
        assert_eq!(probe(&d.sock), after, "{which:?} {args:?}: and after that");
    }
}

/// Runs `mount` or `umount` with `args`; it must succeed.
fn mount(args: &[&OsStr]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

#[test]
fn bind_mount_over_a_key_then_unmount() {
    if !is_root("mounting over a rules key") {
        return;
    }
    for which in impls() {
        let dir = common::tmpdir("mount");
        let rules = base(&dir);
        rule(&dir.join("other"), "k", false, Some("^b"));
        let key = rules.join(me());
        let d = Daemon::with_rules(which, "-i", rules.clone());
        assert_eq!(probe(&d.sock), "list a", "{which:?}");
        let other = dir.join("other/k");
        mount(&[
            "mount".as_ref(),
            "--bind".as_ref(),
            other.as_os_str(),
            key.as_os_str(),
        ]);
        let mounted = probe(&d.sock);
        mount(&["umount".as_ref(), key.as_os_str()]);
        assert_eq!(mounted, "b", "{which:?}: after mount");
        assert_eq!(probe(&d.sock), "list a", "{which:?}: after umount");
    }
}

#[test]
fn a_burst_of_edits_each_seen_by_the_next_connection() {
    for which in impls() {
        let dir = common::tmpdir("burst");
        let rules = base(&dir);
        let d = Daemon::with_rules(which, "-i", rules);
        let re = env_file(&dir, "S6_FDHOLDER_STORE_REGEX");
        let list = env_file(&dir, "S6_FDHOLDER_LIST");
        for i in 0..50 {
            let (content, want_re) = if i % 2 == 0 { ("^b", "b") } else { ("^a", "a") };
            std::fs::write(&re, content).unwrap();
            if i % 3 == 0 {
                std::fs::remove_file(&list).unwrap();
            } else {
                std::fs::write(&list, "").unwrap();
            }
            // An empty LIST file unsets it, as a removed one does.
            assert_eq!(probe(&d.sock), want_re, "{which:?} round {i}");
            std::fs::write(&list, "x\n").unwrap();
            assert_eq!(
                probe(&d.sock),
                format!("list {want_re}"),
                "{which:?} round {i}"
            );
        }
    }
}

#[test]
fn rights_stay_right_near_the_fd_limit() {
    // With RLIMIT_NOFILE 400 and 390 fds held, every lookup still reads
    // the rules (one descriptor at a time) and sees each edit.
    let dir = common::tmpdir("nearlimit");
    let rules = base(&dir);
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            nofile: Some(400),
            rules: Some(("-i", rules)),
            ..Opts::default()
        },
    );
    let f = std::fs::File::open("/dev/null").unwrap();
    let mut c = Client::connect(&d.sock, dl()).unwrap();
    let mut held = 0;
    while held < 390 {
        match c.store(f.as_fd(), format!("a{held}").as_bytes(), None, dl()) {
            Ok(()) => held += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENFILE) => break,
            Err(e) => panic!("store {held}: {e}"),
        }
    }
    assert!(held > 300, "only {held} held");
    drop(c);
    std::fs::write(env_file(&dir, "S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap();
    let mut c = Client::connect(&d.sock, dl()).unwrap();
    c.list(dl()).unwrap();
    let e = c
        .store(f.as_fd(), b"a-new", None, dl())
        .expect_err("^a revoked");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
}

#[test]
fn a_fifo_in_the_rules_never_hangs_the_daemon() {
    // The reference blocks for ever opening a FIFO put in a rules
    // directory; ours opens rule files non-blocking: a FIFO reads as an
    // empty file (the variable is unset), and the daemon serves on.
    let dir = common::tmpdir("fifo");
    let rules = base(&dir);
    let list = env_file(&dir, "S6_FDHOLDER_LIST");
    std::fs::remove_file(&list).unwrap();
    let st = Command::new("mkfifo").arg(&list).status().unwrap();
    assert!(st.success());
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    assert_eq!(probe(&d.sock), "a");
    assert_eq!(probe(&d.sock), "a");
    std::fs::remove_file(&list).unwrap();
    std::fs::write(&list, "\n").unwrap();
    assert_eq!(probe(&d.sock), "list a");
}
