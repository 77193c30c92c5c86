//! `unitlet tty-host` run directly (no systemd): the built binary hosts a
//! program, and the attach client of `unitlet::ttyhost` (the one the
//! kubelet API uses) talks to it over its socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use unitlet::ttyhost::{connect, ClientInput, ClientOutput, HostMsg};

/// Every wait in these tests; far above what any step takes, also on a
/// 2-core machine busy with the end-to-end tier's control planes.
const WAIT: Duration = Duration::from_secs(30);

struct Host {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts `tty-host` with `flags` on `program`, and waits for its socket.
async fn host(flags: &[&str], program: &[&str]) -> Host {
    wait_socket(start(flags, program)).await
}

async fn wait_socket(mut h: Host) -> Host {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !h.socket.exists() {
        if let Ok(Some(status)) = h.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = h.child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            panic!("tty-host ended ({status}) before making its socket: {err}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no socket at {}",
            h.socket.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h
}

/// Starts `tty-host` with `flags` on `program`.
fn start(flags: &[&str], program: &[&str]) -> Host {
    start_in(tempfile::tempdir().unwrap(), flags, program)
}

/// Starts `tty-host` with its socket at `<dir>/pod/c.sock`.
fn start_in(dir: tempfile::TempDir, flags: &[&str], program: &[&str]) -> Host {
    // A directory the host has to make (unless the test made it).
    let socket = dir.path().join("pod").join("c.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_unitlet"))
        .arg("tty-host")
        .arg("--socket")
        .arg(&socket)
        .args(flags)
        .arg("--")
        .args(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Host {
        child,
        socket,
        _dir: dir,
    }
}

async fn attach(socket: &Path, stdin: bool) -> (ClientInput, ClientOutput) {
    connect(socket, stdin).await.unwrap()
}

/// What a client saw.
#[derive(Default, Debug)]
struct Seen {
    stdout: String,
    stderr: String,
    exit: Option<i32>,
}

/// Reads until `until` holds (or the host ends the connection); fails
/// after [`WAIT`].
async fn read_until(out: &mut ClientOutput, seen: &mut Seen, until: impl Fn(&Seen) -> bool) {
    let r = tokio::time::timeout(WAIT, async {
        while !until(seen) {
            match out.next().await.unwrap() {
                Some(HostMsg::Stdout(b)) => seen.stdout.push_str(&String::from_utf8_lossy(&b)),
                Some(HostMsg::Stderr(b)) => seen.stderr.push_str(&String::from_utf8_lossy(&b)),
                Some(HostMsg::Exit(c)) => seen.exit = Some(c),
                None => return,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "timed out; saw {seen:?}");
}

/// The host's exit code and everything it wrote to its stdout (the journal).
async fn finish(mut h: Host) -> (i32, String) {
    let mut journal = String::new();
    let mut out = h.child.stdout.take().unwrap();
    let status = tokio::time::timeout(WAIT, async {
        out.read_to_string(&mut journal).await.unwrap();
        h.child.wait().await.unwrap()
    })
    .await
    .expect("the host exits");
    assert!(!h.socket.exists(), "the socket is removed on exit");
    (status.code().expect("an exit, not a signal"), journal)
}

#[tokio::test]
async fn a_terminal_echoes_input_runs_it_resizes_and_reports_the_exit() {
    let h = host(&["--tty"], &["/bin/sh"]).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&h.socket), 0o600);
    assert_eq!(mode(h.socket.parent().unwrap()), 0o700);

    let (mut input, mut out) = attach(&h.socket, true).await;
    let mut seen = Seen::default();
    // The product appears only if the shell ran the line, not in its echo.
    input.stdin(b"echo $((6*7))x\n").await.unwrap();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("42x")).await;
    assert!(seen.stdout.contains("echo $((6*7))x"), "echoed: {seen:?}");

    input.resize(123, 45).await.unwrap();
    input.stdin(b"stty size\n").await.unwrap();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("45 123")).await;

    input.stdin(b"exit 7\n").await.unwrap();
    read_until(&mut out, &mut seen, |s| s.exit.is_some()).await;
    assert_eq!(seen.exit, Some(7));
    let (code, journal) = finish(h).await;
    assert_eq!(code, 7, "the program's status is the host's");
    assert!(
        journal.contains("42x"),
        "terminal output reaches the journal: {journal:?}"
    );
}

#[tokio::test]
async fn stdin_once_closes_stdin_when_the_first_client_leaves() {
    let h = host(&["--stdin-once"], &["/bin/cat"]).await;
    // A watcher without stdin sees the output and the end.
    let (_watch_in, mut watch) = attach(&h.socket, false).await;
    let (mut input, mut out) = attach(&h.socket, true).await;
    input.stdin(b"ping\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("ping\n")).await;
    drop((input, out));

    let mut watched = Seen::default();
    read_until(&mut watch, &mut watched, |s| s.exit.is_some()).await;
    assert_eq!(watched.exit, Some(0), "cat read EOF and exited");
    assert_eq!(watched.stdout, "ping\n");
    let (code, journal) = finish(h).await;
    assert_eq!(code, 0);
    assert_eq!(journal, "ping\n");
}

#[tokio::test]
async fn without_stdin_once_the_next_client_gets_stdin_and_signals_are_forwarded() {
    let h = host(&[], &["/bin/cat"]).await;
    let (mut input, mut out) = attach(&h.socket, true).await;
    input.stdin(b"one\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("one\n")).await;
    input.close_stdin().await.unwrap();
    drop((input, out));

    let (mut input, mut out) = attach(&h.socket, true).await;
    input.stdin(b"two\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("two\n")).await;
    assert_eq!(seen.stdout, "two\n", "only what came after attaching");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    read_until(&mut out, &mut seen, |s| s.exit.is_some()).await;
    assert_eq!(seen.exit, Some(128 + 15), "cat was terminated by SIGTERM");
    let (code, _) = finish(h).await;
    assert_eq!(code, 143);
}

#[tokio::test]
async fn without_a_terminal_stdout_and_stderr_stay_apart() {
    let h = host(
        &["--stdin-once"],
        &[
            "/bin/sh",
            "-c",
            "read line; echo \"got $line\"; echo oops >&2; exit 3",
        ],
    )
    .await;
    let (mut input, mut out) = attach(&h.socket, true).await;
    input.stdin(b"x\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.exit.is_some()).await;
    assert_eq!(seen.stdout, "got x\n");
    assert_eq!(seen.stderr, "oops\n");
    assert_eq!(seen.exit, Some(3));
    assert_eq!(finish(h).await.0, 3);
}

#[tokio::test]
async fn a_program_that_cannot_run_exits_as_systemds_exec_failure() {
    let mut h = start(&[], &["/nonexistent/program"]);
    let mut stderr = h.child.stderr.take().unwrap();
    assert_eq!(finish(h).await.0, 203);
    let mut msg = String::new();
    stderr.read_to_string(&mut msg).await.unwrap();
    assert!(msg.contains("/nonexistent/program"), "{msg}");
}

#[tokio::test]
async fn stdin_once_hangs_up_a_terminal_when_the_first_client_leaves() {
    let h = host(&["--tty", "--stdin-once"], &["/bin/sh"]).await;
    let (_watch_in, mut watch) = attach(&h.socket, false).await;
    let (mut input, mut out) = attach(&h.socket, true).await;
    input.stdin(b"echo $((6*7))x\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("42x")).await;
    drop((input, out));
    // The shell gets SIGHUP (or reads EOF) and ends; the watcher hears of it.
    let mut watched = Seen::default();
    read_until(&mut watch, &mut watched, |s| s.exit.is_some()).await;
    let (code, _) = finish(h).await;
    assert!(code == 128 + 1 || code == 0, "status {code}");
    assert_eq!(watched.exit, Some(code));
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_anything_else_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pod").join("c.sock");
    std::fs::create_dir(socket.parent().unwrap()).unwrap();
    // What a host killed with SIGKILL leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let h = start_in(dir, &["--stdin-once"], &["/bin/cat"]);
    // Refused until the host's socket takes the stale one's place.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut input, mut out) = loop {
        match connect(&h.socket, true).await {
            Ok(c) => break c,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    input.stdin(b"fresh\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.stdout.contains("fresh\n")).await;
    drop((input, out));
    assert_eq!(finish(h).await.0, 0);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pod").join("c.sock");
    std::fs::create_dir(socket.parent().unwrap()).unwrap();
    std::fs::write(&socket, "precious").unwrap();
    let mut h = start_in(dir, &[], &["/bin/cat"]);
    let status = tokio::time::timeout(WAIT, h.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

#[tokio::test]
async fn a_program_that_drops_privileges_can_reopen_its_streams() {
    if !nix::unistd::geteuid().is_root() {
        // setpriv and handing a terminal to another user need root.
        eprintln!("skipped: needs root");
        return;
    }
    let setpriv = [
        "/usr/bin/setpriv",
        "--reuid=4321",
        "--regid=4321",
        "--clear-groups",
        "--",
        "/bin/sh",
        "-c",
    ];
    // Its terminal, by name (tmux, screen, sudo do that).
    let mut program = setpriv.to_vec();
    program.push("id -u; echo x > $(tty) && echo reopened");
    // It ends on its own, and its socket with it: nothing to wait for.
    let h = start(&["--tty", "--owner", "4321:4321"], &program);
    let (code, journal) = finish(h).await;
    assert_eq!(code, 0, "{journal}");
    assert!(journal.contains("4321\r\n"), "{journal:?}");
    assert!(journal.contains("reopened"), "{journal:?}");
    // Its stdin pipe, by name.
    let mut program = setpriv.to_vec();
    program.push("read line < /dev/stdin; echo \"got $line\"");
    let h = host(&["--stdin-once", "--owner", "4321:4321"], &program).await;
    let (mut input, mut out) = attach(&h.socket, true).await;
    input.stdin(b"y\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut out, &mut seen, |s| s.exit.is_some()).await;
    assert_eq!(seen.stdout, "got y\n", "{seen:?}");
    assert_eq!(seen.exit, Some(0));
    assert_eq!(finish(h).await.0, 0);
}
