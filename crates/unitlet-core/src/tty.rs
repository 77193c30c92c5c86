//! Containers with `stdin: true` or `tty: true`: their unit's main process
//! is the agent's own `tty-host` helper, which holds the container's stdin
//! (or terminal) and serves attach clients on a unix socket. The helper
//! belongs to the unit, not to the agent, so a restarted (or `kill -9`ed)
//! agent finds the socket again and attaches to the same terminal.
//!
//! This module is the pure part: where a container's socket is, and how an
//! `ExecStart` is wrapped into (and read back out of) the helper's command
//! line. Everything stays an argv: no user string becomes unit-file text.

use sha2::{Digest, Sha256};

/// Where attach sockets live: `<ATTACH_DIR>/<pod uid>/<container>.sock`.
/// Under `/run` (a tmpfs) so nothing of a terminal outlives a reboot.
pub const ATTACH_DIR: &str = "/run/unitlet/attach";

/// The longest path a unix socket address holds: `sun_path` is 108 bytes
/// on Linux, one of them the terminating NUL.
pub const SUN_PATH_MAX: usize = 107;

/// The `tty-host` subcommand's name in the agent's command line.
pub const SUBCOMMAND: &str = "tty-host";

/// The directory of a pod's attach sockets (see [`attach_socket`]); the
/// agent may remove it once the pod is gone.
pub fn attach_dir(uid: &str) -> String {
    format!("{ATTACH_DIR}/{}", component(uid, 36))
}

/// The attach socket of container `container` of the pod with UID `uid`:
/// `/run/unitlet/attach/<uid>/<container>.sock`.
///
/// The readable form fits `sun_path` for every API-server UID (36 bytes)
/// and container names up to 45 bytes (20 + 36 + 1 + 45 + 5 = 107). A
/// longer name (names go up to 63 bytes), or a UID longer than 36 bytes or
/// with characters outside `[A-Za-z0-9-]`, is replaced by `_` and 32 hex
/// digits of its SHA-256, so the path is at most 20 + 33 + 1 + 33 + 5 = 92
/// bytes. `_` never occurs in a DNS label (container names) nor in a UUID,
/// so a hashed component cannot collide with a readable one.
pub fn attach_socket(uid: &str, container: &str) -> String {
    let dir = attach_dir(uid);
    let room = SUN_PATH_MAX - dir.len() - "/".len() - ".sock".len();
    format!("{dir}/{}.sock", component(container, room))
}

/// `s` if it is short and plain enough to be a path component, else its
/// hashed form.
fn component(s: &str, max: usize) -> String {
    let plain = !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-');
    if plain {
        return s.to_string();
    }
    let digest = Sha256::digest(s.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("_{hex}")
}

/// The `ExecStart` of a container run under the agent's `tty-host`:
/// `(agent_exe, [agent_exe, "tty-host", "--socket", socket, ["--tty"],
/// ["--stdin-once"], ["--owner", "UID:GID"], "--", exec_start_path,
/// argv[1..]...])`.
///
/// `argv[0]` is the program name systemd would pass; the helper runs the
/// program by path with that path as `argv[0]` (unitlet's ExecStart always
/// has `argv[0] == path`). When the program is `setpriv` switching to
/// `--reuid=`/`--regid=` (translate's runAsUser/runAsGroup), `--owner`
/// hands the terminal or pipes to that user, so the program can reopen
/// them (`/dev/stdin`, its `/dev/pts/N`), as runc does for a container's
/// user. The helper itself stays root: it makes the socket under `/run`.
pub fn wrap(
    exec_start_path: &str,
    argv: &[String],
    agent_exe: &str,
    socket: &str,
    tty: bool,
    stdin_once: bool,
) -> (String, Vec<String>) {
    let mut out = vec![
        agent_exe.to_string(),
        SUBCOMMAND.to_string(),
        "--socket".to_string(),
        socket.to_string(),
    ];
    if tty {
        out.push("--tty".into());
    }
    if stdin_once {
        out.push("--stdin-once".into());
    }
    if let Some(owner) = setpriv_owner(exec_start_path, argv) {
        out.push("--owner".into());
        out.push(owner);
    }
    out.push("--".into());
    out.push(exec_start_path.to_string());
    out.extend(argv.iter().skip(1).cloned());
    (agent_exe.to_string(), out)
}

/// `UID:GID` of a `setpriv --reuid=UID --regid=GID ... --` command line.
fn setpriv_owner(path: &str, argv: &[String]) -> Option<String> {
    if !path.ends_with("/setpriv") {
        return None;
    }
    let opts = argv.iter().skip(1).take_while(|a| *a != "--");
    let (mut uid, mut gid) = (None, None);
    for a in opts {
        if let Some(v) = a.strip_prefix("--reuid=") {
            uid = v.parse::<u32>().ok();
        } else if let Some(v) = a.strip_prefix("--regid=") {
            gid = v.parse::<u32>().ok();
        }
    }
    Some(format!("{}:{}", uid?, gid?))
}

/// The program's argv inside an argv made by [`wrap`] (what follows the
/// helper's `--`), or `None` if `argv` is not a `tty-host` command line.
/// Whatever reads a unit's `ExecStart` to learn how the container runs
/// (the `setpriv` prefix of exec and probes) reads this part.
pub fn unwrap(argv: &[String]) -> Option<&[String]> {
    if argv.get(1).map(String::as_str) != Some(SUBCOMMAND) {
        return None;
    }
    let mut i = 2;
    while let Some(a) = argv.get(i) {
        match a.as_str() {
            "--" => return Some(&argv[i + 1..]),
            "--socket" | "--owner" => i += 2,
            "--tty" | "--stdin-once" => i += 1,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const UID: &str = "0f3c2b9e-6a51-4c7e-9d2a-5b8e1f4a7c30";

    #[test]
    fn sockets_are_readable_for_ordinary_names() {
        assert_eq!(
            attach_socket(UID, "shell"),
            format!("/run/unitlet/attach/{UID}/shell.sock")
        );
        assert_eq!(attach_dir(UID), format!("/run/unitlet/attach/{UID}"));
        let longest_plain = "a".repeat(45);
        let p = attach_socket(UID, &longest_plain);
        assert_eq!(p.len(), SUN_PATH_MAX);
        assert!(p.ends_with(&format!("/{longest_plain}.sock")));
    }

    #[test]
    fn every_socket_fits_sun_path() {
        let long_name = "c".repeat(63);
        let long_uid = "u".repeat(300);
        for (uid, name) in [
            (UID, long_name.as_str()),
            (long_uid.as_str(), long_name.as_str()),
            ("weird/uid with spaces", "x"),
            ("", ""),
        ] {
            let p = attach_socket(uid, name);
            assert!(p.len() <= SUN_PATH_MAX, "{p} is {} bytes", p.len());
            assert!(p.starts_with("/run/unitlet/attach/"), "{p}");
            // One directory per pod, one file per container: no separator
            // from the inputs survives.
            assert_eq!(p.matches('/').count(), 5, "{p}");
        }
    }

    #[test]
    fn hashed_names_are_distinct_and_stable() {
        let a = attach_socket(UID, &"a".repeat(46));
        let b = attach_socket(UID, &"a".repeat(47));
        assert_ne!(a, b);
        assert_eq!(a, attach_socket(UID, &"a".repeat(46)));
        assert!(a.contains("/_"), "{a}");
        // A plain name that looks like a hash stays plain: no collision.
        let file = a.rsplit('/').next().unwrap().trim_end_matches(".sock");
        let lookalike = file.trim_start_matches('_');
        assert_ne!(attach_socket(UID, lookalike), a);
        // A path-like UID cannot escape the attach directory.
        assert_ne!(attach_dir("../../etc"), "/run/unitlet/attach/../../etc");
        assert!(attach_dir("../../etc").starts_with("/run/unitlet/attach/_"));
    }

    #[test]
    fn wrapping_puts_the_program_after_the_helpers_options() {
        let argv = strings(&["/bin/sh", "-c", "echo $HOME; exit 3"]);
        let (path, wrapped) = wrap(
            "/bin/sh",
            &argv,
            "/usr/bin/unitlet",
            "/run/unitlet/attach/u/c.sock",
            true,
            true,
        );
        assert_eq!(path, "/usr/bin/unitlet");
        assert_eq!(
            wrapped,
            strings(&[
                "/usr/bin/unitlet",
                "tty-host",
                "--socket",
                "/run/unitlet/attach/u/c.sock",
                "--tty",
                "--stdin-once",
                "--",
                "/bin/sh",
                "-c",
                "echo $HOME; exit 3",
            ])
        );
        assert_eq!(unwrap(&wrapped), Some(&argv[..]));

        let (_, plain) = wrap(
            "/bin/cat",
            &strings(&["cat"]),
            "/x/unitlet",
            "/s",
            false,
            false,
        );
        assert_eq!(
            plain,
            strings(&["/x/unitlet", "tty-host", "--socket", "/s", "--", "/bin/cat"])
        );
        assert_eq!(unwrap(&plain), Some(&strings(&["/bin/cat"])[..]));
    }

    #[test]
    fn arguments_that_look_like_options_stay_the_programs() {
        let argv = strings(&["/bin/sh", "-c", "x", "--", "--tty", "--owner"]);
        let (_, wrapped) = wrap(&argv[0], &argv, "/u", "/s", false, true);
        assert_eq!(unwrap(&wrapped), Some(&argv[..]));
    }

    #[test]
    fn a_program_that_drops_privileges_gets_its_streams_handed_over() {
        let argv = strings(&[
            "/usr/bin/setpriv",
            "--reuid=4321",
            "--regid=99",
            "--clear-groups",
            "--",
            "/bin/sh",
            "--regid=1",
        ]);
        let (_, wrapped) = wrap(&argv[0], &argv, "/u", "/s", true, false);
        assert_eq!(
            wrapped[..9],
            strings(&[
                "/u",
                "tty-host",
                "--socket",
                "/s",
                "--tty",
                "--owner",
                "4321:99",
                "--",
                "/usr/bin/setpriv"
            ])[..]
        );
        assert_eq!(unwrap(&wrapped), Some(&argv[..]));
        // No owner without both ids, or for another program.
        let partial = strings(&["/usr/bin/setpriv", "--reuid=5", "--", "/bin/sh"]);
        assert!(!wrap(&partial[0], &partial, "/u", "/s", true, false)
            .1
            .contains(&"--owner".to_string()));
        let other = strings(&["/bin/env", "--reuid=1", "--regid=2"]);
        assert!(!wrap(&other[0], &other, "/u", "/s", true, false)
            .1
            .contains(&"--owner".to_string()));
    }

    #[test]
    fn other_command_lines_are_not_unwrapped() {
        assert_eq!(unwrap(&strings(&["/bin/sh", "-c", "x"])), None);
        assert_eq!(
            unwrap(&strings(&["/u", "tty-host", "--socket", "/s"])),
            None
        );
        assert_eq!(
            unwrap(&strings(&["/u", "tty-host", "--bogus", "--", "/bin/sh"])),
            None
        );
        assert_eq!(unwrap(&[]), None);
    }
}
