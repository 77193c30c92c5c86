//! `unitlet tty-host`: the main process of a container that asked for
//! `stdin: true` or `tty: true` (see `core::tty`), in the role conmon
//! plays for CRI-O. It holds the container's stdin (a pipe) or terminal (a
//! pty it allocates), runs the program as its only child, and serves
//! attach clients on a unix socket. It belongs to the unit, not to the
//! agent: an agent that is restarted (or `kill -9`ed) finds the socket
//! again and attaches to the same terminal.
//!
//! * With `--tty` the program runs in a session of its own with the pty's
//!   slave as controlling terminal and as stdin, stdout and stderr.
//!   Everything read from the master goes to the host's stdout (the
//!   journal: `kubectl logs` works) and to every attached client.
//! * Without it the program's stdin is a pipe, and its stdout and stderr
//!   are pipes the host copies to its own stdout and stderr (the journal)
//!   and, kept apart, to the clients. Relaying here rather than leaving
//!   attach to follow the journal gives attach its stdout/stderr split and
//!   output with no journal latency.
//! * With `--owner UID:GID` (a program that drops privileges itself, with
//!   `setpriv`), the terminal's slave or the pipes' program ends are given
//!   to that user, as runc does, so the program can reopen them.
//! * The program's exit status is the host's (a signal N as 128 + N), so
//!   systemd's `ExecMainStatus` is the container's exit code; a program
//!   that cannot be executed makes the host exit 203, systemd's own
//!   `EXIT_EXEC`, so it reads as an ExecStart that could not run. SIGTERM,
//!   SIGINT and SIGHUP are forwarded to the program. The socket is removed
//!   on exit.
//!
//! # Protocol
//!
//! Frames in both directions: one type byte, the payload's length as a
//! big-endian u32, the payload (at most [`MAX_PAYLOAD`] bytes).
//!
//! | dir | type | payload | meaning |
//! |---|---|---|---|
//! | c→h | `h` | 1 byte: bit 0 = stdin | hello, first frame; whether this client's input goes to the program |
//! | c→h | `i` | bytes | input for the program (ignored from clients without stdin) |
//! | c→h | `c` | empty | this client's input ended |
//! | c→h | `r` | cols, rows: 2 × u16 BE | terminal size (`TIOCSWINSZ` on the master; ignored without `--tty`) |
//! | h→c | `a` | empty | attached: the answer to hello; every output after it reaches this client |
//! | h→c | `o` | bytes | the program's stdout (everything, with `--tty`) |
//! | h→c | `e` | bytes | the program's stderr (never with `--tty`) |
//! | h→c | `x` | i32 BE | the program's exit status; the host closes the connection after it |
//!
//! Several clients may attach at once; each gets the output from the
//! moment it attached (the `a` frame; like the kubelet's attach, nothing
//! earlier). A
//! client that falls more than [`CLIENT_QUEUE`] chunks behind is
//! disconnected rather than allowed to hold up the program. With
//! `--stdin-once` (Kubernetes' `stdinOnce`), the first client that attached
//! with stdin closes the program's stdin when it sends `c` or disconnects:
//! the pipe is closed, or the terminal hung up (the master closed, as
//! containerd does; the program's session gets SIGHUP and reads EOF).
//! Without it the program's stdin stays open for the next client.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Output chunks queued for one client before it counts as too slow.
pub const CLIENT_QUEUE: usize = 256;
/// How long output still in the terminal or pipes may take to arrive
/// after the program exited (a process it left behind may hold them).
const DRAIN: Duration = Duration::from_secs(2);
/// How long clients get to read the exit frame before the host exits.
const FLUSH: Duration = Duration::from_secs(1);
/// How long input queued before a terminal's hangup may take to be written.
const HANGUP_FLUSH: Duration = Duration::from_secs(1);
/// How long each side waits for the other's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the program's output at a time.
const CHUNK: usize = 16 * 1024;
/// systemd's `EXIT_EXEC`.
const EXIT_EXEC: i32 = 203;

const HELLO: u8 = b'h';
const INPUT: u8 = b'i';
const CLOSE: u8 = b'c';
const RESIZE: u8 = b'r';
const STDOUT: u8 = b'o';
const STDERR: u8 = b'e';
const EXIT: u8 = b'x';
const ATTACHED: u8 = b'a';

/// A frame from an attach client to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// The first frame: whether this client's input goes to the program.
    Hello {
        /// Input from this client reaches the program.
        stdin: bool,
    },
    /// Input for the program.
    Stdin(Vec<u8>),
    /// This client's input ended.
    CloseStdin,
    /// The client's terminal size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// A frame from the host to an attach client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    /// The program's output (all of it, on a terminal).
    Stdout(Vec<u8>),
    /// The program's error output (without a terminal).
    Stderr(Vec<u8>),
    /// The program's exit status (a signal N as 128 + N); the last frame.
    Exit(i32),
}

/// A frame that breaks the protocol.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A payload over [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// A type byte this side does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A known type with a payload of the wrong size.
    #[error("frame type {kind:?} with a {len}-byte payload")]
    BadLength {
        /// The type byte, as a character.
        kind: char,
        /// Its payload's length.
        len: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection ended inside a frame")]
    Truncated,
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn sized<const N: usize>(kind: u8, p: &[u8]) -> Result<[u8; N], FrameError> {
    p.try_into().map_err(|_| FrameError::BadLength {
        kind: kind as char,
        len: p.len(),
    })
}

impl ClientMsg {
    /// The frame's bytes (input over [`MAX_PAYLOAD`] must be split first).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientMsg::Hello { stdin } => frame(HELLO, &[u8::from(*stdin)]),
            ClientMsg::Stdin(d) => frame(INPUT, d),
            ClientMsg::CloseStdin => frame(CLOSE, &[]),
            ClientMsg::Resize { cols, rows } => {
                let mut p = cols.to_be_bytes().to_vec();
                p.extend_from_slice(&rows.to_be_bytes());
                frame(RESIZE, &p)
            }
        }
    }

    /// The message of a frame.
    pub fn decode(kind: u8, p: Vec<u8>) -> Result<Self, FrameError> {
        Ok(match kind {
            HELLO => ClientMsg::Hello {
                stdin: sized::<1>(kind, &p)?[0] & 1 == 1,
            },
            INPUT => ClientMsg::Stdin(p),
            CLOSE => {
                sized::<0>(kind, &p)?;
                ClientMsg::CloseStdin
            }
            RESIZE => {
                let b = sized::<4>(kind, &p)?;
                ClientMsg::Resize {
                    cols: u16::from_be_bytes([b[0], b[1]]),
                    rows: u16::from_be_bytes([b[2], b[3]]),
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

impl HostMsg {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HostMsg::Stdout(d) => frame(STDOUT, d),
            HostMsg::Stderr(d) => frame(STDERR, d),
            HostMsg::Exit(code) => frame(EXIT, &code.to_be_bytes()),
        }
    }

    /// The message of a frame.
    pub fn decode(kind: u8, p: Vec<u8>) -> Result<Self, FrameError> {
        Ok(match kind {
            STDOUT => HostMsg::Stdout(p),
            STDERR => HostMsg::Stderr(p),
            EXIT => HostMsg::Exit(i32::from_be_bytes(sized::<4>(kind, &p)?)),
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

/// Takes one whole frame (type, payload) off the front of `buf`, if there.
pub fn split_frame(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
    let Some(head) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let kind = buf[0];
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((kind, payload)))
}

/// Frames read off a byte stream. [`FrameReader::next`] is cancel-safe
/// (bytes read are kept until their frame is whole), so it can sit in a
/// `select!`.
#[derive(Debug)]
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `r`.
    pub fn new(r: R) -> Self {
        FrameReader { r, buf: Vec::new() }
    }

    /// The next frame; `None` at a clean end of the stream.
    pub async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        loop {
            if let Some(f) = split_frame(&mut self.buf)? {
                return Ok(Some(f));
            }
            self.buf.reserve(CHUNK);
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(FrameError::Truncated),
                };
            }
        }
    }
}

/// Attaches to the host listening on `socket`; `stdin` says whether this
/// client's input goes to the program. Returns once the host has taken
/// the client on: all output from then on reaches it. The two halves work
/// independently.
pub async fn connect(socket: &Path, stdin: bool) -> io::Result<(ClientInput, ClientOutput)> {
    let (r, mut w) = UnixStream::connect(socket).await?.into_split();
    w.write_all(&ClientMsg::Hello { stdin }.encode()).await?;
    let mut frames = FrameReader::new(r);
    use io::ErrorKind::{ConnectionAborted, InvalidData, TimedOut};
    match tokio::time::timeout(HELLO_TIMEOUT, frames.next()).await {
        Ok(Ok(Some((ATTACHED, _)))) => Ok((ClientInput { w }, ClientOutput(frames))),
        Ok(Ok(Some((kind, _)))) => Err(io::Error::new(InvalidData, FrameError::UnknownType(kind))),
        Ok(Ok(None)) => Err(io::Error::new(ConnectionAborted, "the program has exited")),
        Ok(Err(e)) => Err(io::Error::new(InvalidData, e)),
        Err(_) => Err(io::Error::new(TimedOut, "the terminal host did not answer")),
    }
}

/// What an attach client sends. Dropping it detaches the client (the host
/// sees its connection end); keep it while output is still wanted.
#[derive(Debug)]
pub struct ClientInput {
    w: OwnedWriteHalf,
}

impl ClientInput {
    /// Sends input for the program.
    pub async fn stdin(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.w
                .write_all(&ClientMsg::Stdin(chunk.to_vec()).encode())
                .await?;
        }
        Ok(())
    }

    /// Says this client's input ended.
    pub async fn close_stdin(&mut self) -> io::Result<()> {
        self.w.write_all(&ClientMsg::CloseStdin.encode()).await
    }

    /// Sets the terminal's size.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> io::Result<()> {
        self.w
            .write_all(&ClientMsg::Resize { cols, rows }.encode())
            .await
    }
}

/// What an attach client receives.
#[derive(Debug)]
pub struct ClientOutput(FrameReader<OwnedReadHalf>);

impl ClientOutput {
    /// The next message; `None` once the host closed the connection
    /// (after [`HostMsg::Exit`], or because this client was too slow).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<HostMsg>, FrameError> {
        match self.0.next().await? {
            Some((kind, p)) => HostMsg::decode(kind, p).map(Some),
            None => Ok(None),
        }
    }
}

/// What `unitlet tty-host` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The socket to serve attach clients on.
    pub socket: PathBuf,
    /// Run the program on a terminal.
    pub tty: bool,
    /// Close the program's stdin when the first client with stdin leaves.
    pub stdin_once: bool,
    /// The user and group the program runs as, when it drops privileges
    /// itself (`setpriv`): its terminal or pipes are given to them.
    pub owner: Option<(u32, u32)>,
    /// The program (a path; also its argv\[0\]).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Why the host could not run the program.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The attach socket (or its directory) could not be made.
    #[error("attach socket {path}: {what}: {source}")]
    Socket {
        /// What failed.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The terminal could not be set up.
    #[error("terminal: {0}")]
    Terminal(io::Error),
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// Signals could not be watched, or the program not waited for.
    #[error("{0}")]
    Process(io::Error),
}

/// What client tasks ask of whoever holds the program's stdin.
#[derive(Debug)]
enum Ctl {
    Input(Vec<u8>),
    Resize(u16, u16),
    Close,
}

struct Peer {
    id: u64,
    tx: mpsc::Sender<Arc<Vec<u8>>>,
    writer: JoinHandle<()>,
}

/// The attached clients.
struct Hub {
    /// `None` once the host is finishing: no more clients.
    peers: Mutex<Option<Vec<Peer>>>,
    /// Whether a client with stdin attached (the one `--stdin-once` means).
    stdin_claimed: AtomicBool,
}

impl Hub {
    fn new() -> Self {
        Hub {
            peers: Mutex::new(Some(Vec::new())),
            stdin_claimed: AtomicBool::new(false),
        }
    }

    fn add(&self, peer: Peer) -> bool {
        match self.peers.lock().expect("not poisoned").as_mut() {
            Some(v) => {
                v.push(peer);
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        if let Some(v) = self.peers.lock().expect("not poisoned").as_mut() {
            v.retain(|p| p.id != id);
        }
    }

    /// Queues `msg` for every client; drops the ones too far behind.
    fn broadcast(&self, msg: HostMsg) {
        let f = Arc::new(msg.encode());
        if let Some(v) = self.peers.lock().expect("not poisoned").as_mut() {
            v.retain(|p| p.tx.try_send(f.clone()).is_ok());
        }
    }

    /// Sends the exit status to every client and waits (bounded) until it
    /// was written; no client attaches after this.
    async fn finish(&self, code: i32) {
        let peers = self.peers.lock().expect("not poisoned").take();
        let f = Arc::new(HostMsg::Exit(code).encode());
        let _ = tokio::time::timeout(FLUSH, async {
            let mut writers = Vec::new();
            for p in peers.into_iter().flatten() {
                let _ = p.tx.send(f.clone()).await;
                writers.push(p.writer);
            }
            for w in writers {
                let _ = w.await;
            }
        })
        .await;
    }
}

/// Reads `--owner`'s `UID:GID`.
pub fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not UID:GID");
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// `unitlet tty-host`: runs the program as described in the module
/// documentation and returns the status to exit with.
pub async fn main(opts: Options) -> i32 {
    match run(&opts).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("unitlet tty-host: {e}");
            match e {
                HostError::Spawn { .. } => EXIT_EXEC,
                _ => 1,
            }
        }
    }
}

/// Runs the program until it exits; its exit status (a signal N as 128 + N).
async fn run(opts: &Options) -> Result<i32, HostError> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = listen(&opts.socket)?;
    let socket = RemoveOnDrop(&opts.socket);
    // Watched before the program starts: a SIGTERM then is forwarded once
    // it runs instead of killing the host.
    let watch = |k| signal(k).map_err(HostError::Process);
    let mut term = watch(SignalKind::terminate())?;
    let mut int = watch(SignalKind::interrupt())?;
    let mut hup = watch(SignalKind::hangup())?;
    let hub = Arc::new(Hub::new());
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    let mut cmd = tokio::process::Command::new(&opts.program);
    cmd.args(&opts.args);
    let spawn_err = |source| HostError::Spawn {
        program: opts.program.clone(),
        source,
    };
    let mut outputs = Vec::new();
    let mut child = if opts.tty {
        let (master, slave) = open_terminal().map_err(HostError::Terminal)?;
        give(&slave, opts.owner);
        let dup = || slave.try_clone().map(std::process::Stdio::from);
        let (i, o, e) = (dup(), dup(), dup());
        cmd.stdin(i.map_err(HostError::Terminal)?)
            .stdout(o.map_err(HostError::Terminal)?)
            .stderr(e.map_err(HostError::Terminal)?);
        if std::env::var_os("TERM").is_none() {
            // As containerd gives a container with a terminal.
            cmd.env("TERM", "xterm");
        }
        // SAFETY: only async-signal-safe calls (setsid, ioctl) run between
        // fork and exec.
        #[allow(unsafe_code)] // session and terminal are set between fork and exec
        unsafe {
            cmd.pre_exec(|| {
                if nix::libc::setsid() < 0 || nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        // The master reads EIO (the end) only once every copy of the
        // slave is closed: the host keeps none.
        drop(cmd);
        drop(slave);
        // SAFETY: an OwnedFd stays open, on the same file description,
        // for as long as the AsyncFd that owns it, and always returns that
        // same descriptor from as_raw_fd.
        #[allow(unsafe_code)] // tokio's only non-deprecated way to poll a pty master
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|e| HostError::Terminal(e.into_parts().1))?;
        outputs.push(tokio::spawn(terminal(master, ctl_rx, hub.clone())));
        child
    } else {
        use tokio::net::unix::pipe;
        let pipes = || -> io::Result<_> {
            let flags = nix::fcntl::OFlag::O_CLOEXEC;
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (
                nix::unistd::pipe2(flags)?,
                nix::unistd::pipe2(flags)?,
                nix::unistd::pipe2(flags)?,
            );
            for end in [&in_r, &out_w, &err_w] {
                give(end, opts.owner);
            }
            let ours = (
                pipe::Sender::from_owned_fd(in_w)?,
                pipe::Receiver::from_owned_fd(out_r)?,
                pipe::Receiver::from_owned_fd(err_r)?,
            );
            Ok((ours, (in_r, out_w, err_w)))
        };
        let ((stdin, out, err), (i, o, e)) = pipes().map_err(HostError::Process)?;
        cmd.stdin(i).stdout(o).stderr(e);
        let child = cmd.spawn().map_err(spawn_err)?;
        // The program's ends: its output ends (EOF) only once it and what
        // it started close them.
        drop(cmd);
        tokio::spawn(feed(stdin, ctl_rx));
        let h = hub.clone();
        outputs.push(tokio::spawn(copy_out(out, tokio::io::stdout(), h, false)));
        let h = hub.clone();
        outputs.push(tokio::spawn(copy_out(err, tokio::io::stderr(), h, true)));
        child
    };
    let server = tokio::spawn(serve(listener, hub.clone(), ctl_tx, opts.stdin_once));
    let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let forward = |sig| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    };
    let status = loop {
        use nix::sys::signal::Signal;
        tokio::select! {
            s = child.wait() => break s.map_err(HostError::Process)?,
            _ = term.recv() => forward(Signal::SIGTERM),
            _ = int.recv() => forward(Signal::SIGINT),
            _ = hup.recv() => forward(Signal::SIGHUP),
        }
    };
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    // What the program wrote last reaches the journal and the clients
    // before its exit status.
    let _ = tokio::time::timeout(DRAIN, async {
        for t in outputs {
            let _ = t.await;
        }
    })
    .await;
    server.abort();
    drop(socket);
    hub.finish(code).await;
    Ok(code)
}

/// Removes the socket when the host is done with it, on every way out.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Listens on `path`: its directory made (0700), a stale socket replaced,
/// the socket itself 0600. The socket is bound and made listening under a
/// temporary name and renamed into place, so a client never finds `path`
/// refusing connections (or with the umask's mode) while the host starts.
fn listen(path: &Path) -> Result<UnixListener, HostError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let fail = |what| {
        move |source| HostError::Socket {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail("creating its directory"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(fail("restricting its directory"))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(fail("refusing to replace")(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )))
        }
        // A stale socket is replaced by the rename below.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("inspecting")(e)),
    }
    // Short (at most 8 bytes after the directory) for `sun_path`'s sake.
    let tmp = dir.join(format!(".{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(fail("listening"))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(fail("restricting"))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(fail("putting in place")));
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed.map(|()| l)
}

/// A pty: the master (non-blocking) and the slave, both close-on-exec,
/// 80×24 until a client says otherwise.
fn open_terminal() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let flags = OFlag::from_bits_retain(fcntl(&pty.master, FcntlArg::F_GETFL)?);
    fcntl(&pty.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok((pty.master, pty.slave))
}

/// Makes one of the program's standard streams its user's, as runc does,
/// so a program that drops privileges can still reopen it (`/dev/stdin`,
/// its terminal's `/dev/pts/N`). Best effort: without CAP_CHOWN the
/// streams stay root's and work as long as they are not reopened.
fn give(fd: &OwnedFd, owner: Option<(u32, u32)>) {
    use nix::unistd::{Gid, Uid};
    if let Some((uid, gid)) = owner {
        let _ = nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    }
}

fn set_size(fd: &OwnedFd, cols: u16, rows: u16) {
    let ws = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    #[allow(unsafe_code)] // no safe wrapper in nix for a terminal's size
    unsafe {
        nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}

/// The terminal's master: output to the journal and the clients, input
/// and sizes from the clients. Returns when the terminal ends (EIO: the
/// program and everything it left holding the slave are gone) or is hung
/// up (`--stdin-once`), closing the master. A hangup first writes the
/// input that came before it (for at most [`HANGUP_FLUSH`]); input the
/// program has not read by then is discarded with the hangup, as with
/// containerd, which closes the console when stdin ends.
async fn terminal(master: AsyncFd<OwnedFd>, mut ctl: mpsc::Receiver<Ctl>, hub: Arc<Hub>) {
    let mut journal = tokio::io::stdout();
    let mut buf = vec![0u8; CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    let mut ctl_open = true;
    let mut hangup: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = hangup {
            if pending.is_empty() || tokio::time::Instant::now() >= at {
                return;
            }
        }
        tokio::select! {
            ready = master.readable() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(io::Error::from)) {
                    Ok(Ok(0)) => return,
                    Ok(Ok(n)) => {
                        hub.broadcast(HostMsg::Stdout(buf[..n].to_vec()));
                        let _ = journal.write_all(&buf[..n]).await;
                        let _ = journal.flush().await;
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(_)) => return,
                    Err(_would_block) => {}
                }
            }
            ready = master.writable(), if !pending.is_empty() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), &pending).map_err(io::Error::from)) {
                    Ok(Ok(n)) => drop(pending.drain(..n)),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(_)) => pending.clear(),
                    Err(_would_block) => {}
                }
            }
            // Input waits (and so do the clients) while the program does
            // not read what it has.
            msg = ctl.recv(), if ctl_open && hangup.is_none() && pending.len() < MAX_PAYLOAD => match msg {
                Some(Ctl::Input(d)) => pending.extend_from_slice(&d),
                Some(Ctl::Resize(cols, rows)) => set_size(master.get_ref(), cols, rows),
                Some(Ctl::Close) => hangup = Some(tokio::time::Instant::now() + HANGUP_FLUSH),
                None => ctl_open = false,
            },
            () = tokio::time::sleep_until(hangup.unwrap_or_else(tokio::time::Instant::now)), if hangup.is_some() => {}
        }
    }
}

/// The program's stdin pipe without a terminal: input from the clients;
/// closed on [`Ctl::Close`].
async fn feed(mut stdin: impl AsyncWrite + Unpin, mut ctl: mpsc::Receiver<Ctl>) {
    let mut broken = false;
    while let Some(msg) = ctl.recv().await {
        match msg {
            // A program that closed its stdin gets no more; clients are
            // still read so they are not held up.
            Ctl::Input(d) if !broken => broken = stdin.write_all(&d).await.is_err(),
            Ctl::Close => return,
            _ => {}
        }
    }
}

/// One output pipe without a terminal, to the host's own stream (the
/// journal) and the clients.
async fn copy_out(
    mut from: impl AsyncRead + Unpin,
    mut journal: impl AsyncWrite + Unpin,
    hub: Arc<Hub>,
    stderr: bool,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = buf[..n].to_vec();
        hub.broadcast(match stderr {
            true => HostMsg::Stderr(data),
            false => HostMsg::Stdout(data),
        });
        let _ = journal.write_all(&buf[..n]).await;
        let _ = journal.flush().await;
    }
}

/// Accepts clients until the host finishes.
async fn serve(listener: UnixListener, hub: Arc<Hub>, ctl: mpsc::Sender<Ctl>, stdin_once: bool) {
    let mut next = 0u64;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                next += 1;
                tokio::spawn(client(s, next, hub.clone(), ctl.clone(), stdin_once));
            }
            // Out of descriptors, say: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One attached client: its frames to the program, the output to it.
async fn client(s: UnixStream, id: u64, hub: Arc<Hub>, ctl: mpsc::Sender<Ctl>, stdin_once: bool) {
    let (r, mut w) = s.into_split();
    let mut frames = FrameReader::new(r);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, frames.next()).await;
    let Ok(Ok(Some((kind, p)))) = hello else {
        return;
    };
    let Ok(ClientMsg::Hello { stdin }) = ClientMsg::decode(kind, p) else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Arc<Vec<u8>>>(CLIENT_QUEUE);
    // Queued before any output can be: the client's first frame.
    let _ = tx.try_send(Arc::new(frame(ATTACHED, &[])));
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if w.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    if !hub.add(Peer { id, tx, writer }) {
        return;
    }
    // The client whose leaving closes the program's stdin.
    let once = stdin && stdin_once && !hub.stdin_claimed.swap(true, Ordering::SeqCst);
    let mut closed = false;
    while let Ok(Some((kind, p))) = frames.next().await {
        // A send fails once stdin is closed (its holder is gone); the
        // client keeps getting output.
        let _ = match ClientMsg::decode(kind, p) {
            Ok(ClientMsg::Stdin(d)) if stdin => ctl.send(Ctl::Input(d)).await,
            Ok(ClientMsg::Resize { cols, rows }) => ctl.send(Ctl::Resize(cols, rows)).await,
            Ok(ClientMsg::CloseStdin) if once && !closed => {
                closed = true;
                ctl.send(Ctl::Close).await
            }
            // Input from a client without stdin, a second hello, a close
            // that closes nothing.
            Ok(_) => Ok(()),
            Err(_) => break,
        };
    }
    if once && !closed {
        let _ = ctl.send(Ctl::Close).await;
    }
    hub.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_encoding() {
        let client = [
            ClientMsg::Hello { stdin: true },
            ClientMsg::Hello { stdin: false },
            ClientMsg::Stdin(b"ls -l\r".to_vec()),
            ClientMsg::Stdin(Vec::new()),
            ClientMsg::CloseStdin,
            ClientMsg::Resize { cols: 300, rows: 2 },
        ];
        let host = [
            HostMsg::Stdout(b"\x1b[1mhi\r\n".to_vec()),
            HostMsg::Stderr(b"oops".to_vec()),
            HostMsg::Exit(-1),
            HostMsg::Exit(143),
        ];
        let mut wire: Vec<u8> = client.iter().flat_map(ClientMsg::encode).collect();
        for m in &client {
            let (k, p) = split_frame(&mut wire).unwrap().unwrap();
            assert_eq!(&ClientMsg::decode(k, p).unwrap(), m);
        }
        assert!(wire.is_empty());
        let mut wire: Vec<u8> = host.iter().flat_map(HostMsg::encode).collect();
        for m in &host {
            let (k, p) = split_frame(&mut wire).unwrap().unwrap();
            assert_eq!(&HostMsg::decode(k, p).unwrap(), m);
        }
    }

    #[test]
    fn owners_are_numeric_pairs() {
        assert_eq!(parse_owner("4321:7"), Ok((4321, 7)));
        for bad in ["4321", "a:b", "1:", ":1", "1:2:3", "-1:0"] {
            assert!(parse_owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_wire_format_is_type_length_payload() {
        assert_eq!(
            ClientMsg::Resize { cols: 80, rows: 24 }.encode(),
            [b'r', 0, 0, 0, 4, 0, 80, 0, 24]
        );
        assert_eq!(HostMsg::Exit(7).encode(), [b'x', 0, 0, 0, 4, 0, 0, 0, 7]);
        assert_eq!(
            ClientMsg::Hello { stdin: true }.encode(),
            [b'h', 0, 0, 0, 1, 1]
        );
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let whole = HostMsg::Stdout(b"hello".to_vec()).encode();
        for cut in 0..whole.len() {
            let mut buf = whole[..cut].to_vec();
            assert!(split_frame(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
            buf.extend_from_slice(&whole[cut..]);
            assert_eq!(
                split_frame(&mut buf).unwrap(),
                Some((b'o', b"hello".to_vec()))
            );
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut huge = vec![b'i'];
        huge.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(
            split_frame(&mut huge),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            ClientMsg::decode(b'r', vec![0, 80, 0]),
            Err(FrameError::BadLength { kind: 'r', len: 3 })
        ));
        assert!(matches!(
            ClientMsg::decode(b'o', vec![]),
            Err(FrameError::UnknownType(b'o'))
        ));
        assert!(matches!(
            HostMsg::decode(b'x', vec![0; 8]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            ClientMsg::decode(b'c', vec![1]),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[tokio::test]
    async fn frames_arrive_whole_from_a_trickling_stream() {
        let (mut a, b) = tokio::io::duplex(3);
        let msgs = vec![
            HostMsg::Stdout(vec![7u8; 1000]),
            HostMsg::Stderr(b"e".to_vec()),
            HostMsg::Exit(3),
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(HostMsg::encode).collect();
        tokio::spawn(async move {
            a.write_all(&wire).await.unwrap();
            a.write_all(&[b'o', 0]).await.unwrap();
        });
        let mut r = FrameReader::new(b);
        for m in msgs {
            let (k, p) = r.next().await.unwrap().unwrap();
            assert_eq!(HostMsg::decode(k, p).unwrap(), m);
        }
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
    }
}
