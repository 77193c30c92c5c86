//! `image-exec`: drops to a container's user, then runs its program, inside
//! an OCI image's root.
//!
//! On the host a container switches user with `setpriv` (see
//! `unitlet_core::translate`); systemd's `User=` cannot do it, as systemd
//! 252 refuses a numeric user its host user database does not know. An
//! image's root has neither `setpriv` nor the host's libraries, so this
//! helper is built statically (`build.rs`), with nothing but the C
//! library's system calls, and bound read-only into each such unit.
//!
//! Usage: `image-exec UID GID GROUPS DROP -- PROGRAM ARGS...`, where
//! GROUPS is a comma-separated list of supplementary group ids (empty:
//! none) and DROP the capabilities (numbers, comma-separated) to remove
//! from the bounding set once the ids are switched (the unit's bounding
//! set keeps CAP_SETUID and CAP_SETGID for this helper alone). A bare
//! PROGRAM is looked up on the container's `PATH`, as runc does.

use std::os::unix::process::CommandExt;

extern "C" {
    fn setgroups(size: usize, list: *const u32) -> i32;
    fn setresgid(r: u32, e: u32, s: u32) -> i32;
    fn setresuid(r: u32, e: u32, s: u32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

const PR_CAPBSET_DROP: i32 = 24;

fn fail(what: &str) -> ! {
    eprintln!("image-exec: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(127)
}

fn ids(list: &str) -> Vec<u32> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| fail(&format!("bad id {s:?}"))))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: image-exec UID GID GROUPS DROP -- PROGRAM ARGS...");
        std::process::exit(127)
    };
    if sep != 4 || sep + 1 >= args.len() {
        eprintln!("usage: image-exec UID GID GROUPS DROP -- PROGRAM ARGS...");
        std::process::exit(127)
    }
    let uid: u32 = args[0].parse().unwrap_or_else(|_| fail("bad uid"));
    let gid: u32 = args[1].parse().unwrap_or_else(|_| fail("bad gid"));
    let groups = ids(&args[2]);
    let drop = ids(&args[3]);
    // SAFETY: plain system calls on values owned here; nothing else runs
    // in this process yet.
    unsafe {
        // First, while CAP_SETPCAP is still effective: a capability leaves
        // the bounding set, not the effective set, so the switch below
        // still has CAP_SETUID and CAP_SETGID.
        for cap in drop {
            if prctl(PR_CAPBSET_DROP, u64::from(cap), 0, 0, 0) != 0 {
                fail("dropping a capability from the bounding set");
            }
        }
        if setgroups(groups.len(), groups.as_ptr()) != 0 {
            fail("setgroups");
        }
        if setresgid(gid, gid, gid) != 0 {
            fail("setresgid");
        }
        if setresuid(uid, uid, uid) != 0 {
            fail("setresuid");
        }
    }
    let program = &args[sep + 1];
    let err = std::process::Command::new(program)
        .args(&args[sep + 2..])
        .exec();
    if err.kind() == std::io::ErrorKind::NotFound && !program.contains('/') {
        eprintln!("exec: {program:?}: executable file not found in $PATH");
    } else {
        eprintln!("exec: {program:?}: {err}");
    }
    std::process::exit(127)
}
