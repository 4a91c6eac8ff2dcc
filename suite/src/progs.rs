//! The programs, one file each, named after the program. Each has a
//! `main()` that reads [`crate::cli::args`] and exits or execs.

pub mod s6_accessrules_cdb_from_fs;
pub mod s6_accessrules_fs_from_cdb;
pub mod s6_applyuidgid;
pub mod s6_fdholder_daemon;
pub mod s6_fdholder_delete;
pub mod s6_fdholder_getdump;
pub mod s6_fdholder_list;
pub mod s6_fdholder_retrieve;
pub mod s6_fdholder_sdlisten;
pub mod s6_fdholder_sdnotify;
pub mod s6_fdholder_setdump;
pub mod s6_fdholder_store;
pub mod s6_fdholder_transferdump;
pub mod s6_fdholderd;
pub mod s6_ipcserver_socketbinder;

/// Every program of the suite: its name and its `main`.
pub const PROGRAMS: &[(&str, fn())] = &[
    (
        "s6-accessrules-cdb-from-fs",
        s6_accessrules_cdb_from_fs::main,
    ),
    (
        "s6-accessrules-fs-from-cdb",
        s6_accessrules_fs_from_cdb::main,
    ),
    ("s6-applyuidgid", s6_applyuidgid::main),
    ("s6-fdholder-daemon", s6_fdholder_daemon::main),
    ("s6-fdholder-delete", s6_fdholder_delete::main),
    ("s6-fdholder-getdump", s6_fdholder_getdump::main),
    ("s6-fdholder-list", s6_fdholder_list::main),
    ("s6-fdholder-retrieve", s6_fdholder_retrieve::main),
    ("s6-fdholder-sdlisten", s6_fdholder_sdlisten::main),
    ("s6-fdholder-sdnotify", s6_fdholder_sdnotify::main),
    ("s6-fdholder-setdump", s6_fdholder_setdump::main),
    ("s6-fdholder-store", s6_fdholder_store::main),
    ("s6-fdholder-transferdump", s6_fdholder_transferdump::main),
    ("s6-fdholderd", s6_fdholderd::main),
    ("s6-ipcserver-socketbinder", s6_ipcserver_socketbinder::main),
];

/// The `main` of the program called `name`.
pub fn find(name: &[u8]) -> Option<fn()> {
    PROGRAMS
        .iter()
        .find(|(n, _)| n.as_bytes() == name)
        .map(|&(_, main)| main)
}
