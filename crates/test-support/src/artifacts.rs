//! A loopback HTTP server that serves artifact archives, for the fetch
//! tests and the pull benchmark, and helpers that build archives in memory.
//!
//! It speaks HTTP/1.1 itself (one request per connection, then
//! `Connection: close`) rather than going through hyper, because the tests
//! need responses a well-behaved server library will not send: a body cut
//! off after N bytes under a `Content-Length` that promises more, a slow
//! trickle, a status that has nothing to do with the file. It runs on its
//! own thread with its own runtime, so the same server works from a
//! `#[tokio::test]` (either flavour), a plain thread, or the benchmark,
//! and a test's runtime being busy or blocked never stalls the server.
//!
//! Every knob is per path and may be changed while the server runs; every
//! request is counted per path, so a test can assert "exactly one
//! download".

use sha2::Digest as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Credentials the server demands (of every path) before it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequiredAuth {
    /// `Authorization: Basic base64(user:password)`.
    Basic { username: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

/// How one path misbehaves.
#[derive(Debug, Clone, Default)]
struct Knobs {
    status: Option<u16>,
    location: Option<String>,
    truncate_after: Option<u64>,
    delay: Option<Duration>,
    bytes_per_sec: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, Arc<Vec<u8>>>,
    dir: Option<PathBuf>,
    knobs: HashMap<String, Knobs>,
    auth: Option<RequiredAuth>,
    requests: HashMap<String, usize>,
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct ArtifactServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `/path` for `path` or `/path`, without a query.
fn norm(path: &str) -> String {
    let p = path.split(['?', '#']).next().unwrap_or("");
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

impl ArtifactServer {
    /// A server on an ephemeral loopback port, serving nothing yet.
    pub fn start() -> ArtifactServer {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("artifact-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the artifact server's runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((conn, _)) = accepted else { continue };
                                let st = st.clone();
                                tokio::spawn(async move {
                                    let _ = serve(conn, st).await;
                                });
                            }
                        }
                    }
                });
            })
            .expect("spawn the artifact server");
        ArtifactServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, norm(path))
    }

    /// Serves `data` at `path` (replacing what was there).
    pub fn put(&self, path: &str, data: impl Into<Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(norm(path), Arc::new(data.into()));
    }

    /// Serves the files under `dir` for paths not `put` (`/a/b.tar.gz` is
    /// `dir/a/b.tar.gz`; `..` is never followed).
    pub fn serve_dir(&self, dir: &Path) {
        self.state.lock().unwrap().dir = Some(dir.to_path_buf());
    }

    fn knobs(&self, path: &str, f: impl FnOnce(&mut Knobs)) {
        f(self
            .state
            .lock()
            .unwrap()
            .knobs
            .entry(norm(path))
            .or_default());
    }

    /// Answers `path` with `status` (and its reason as the body) instead
    /// of the file.
    pub fn set_status(&self, path: &str, status: u16) {
        self.knobs(path, |k| k.status = Some(status));
    }

    /// Answers `path` with a redirect (`status`, e.g. 302) to `location`.
    pub fn redirect(&self, path: &str, status: u16, location: &str) {
        self.knobs(path, |k| {
            k.status = Some(status);
            k.location = Some(location.to_string());
        });
    }

    /// Sends only the first `n` bytes of `path`'s body, then closes the
    /// connection, while `Content-Length` still promises all of it.
    pub fn truncate_after(&self, path: &str, n: u64) {
        self.knobs(path, |k| k.truncate_after = Some(n));
    }

    /// Waits `delay` before answering `path`.
    pub fn delay(&self, path: &str, delay: Duration) {
        self.knobs(path, |k| k.delay = Some(delay));
    }

    /// Sends `path`'s body at about `bytes_per_sec`.
    pub fn throttle(&self, path: &str, bytes_per_sec: u64) {
        self.knobs(path, |k| k.bytes_per_sec = Some(bytes_per_sec.max(1)));
    }

    /// Drops every knob of `path`: it is served plainly again.
    pub fn clear(&self, path: &str) {
        self.state.lock().unwrap().knobs.remove(&norm(path));
    }

    /// Demands `auth` of every request (`None`: no more).
    pub fn require_auth(&self, auth: Option<RequiredAuth>) {
        self.state.lock().unwrap().auth = auth;
    }

    /// Requests for `path` so far, whatever they were answered.
    pub fn requests(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(&norm(path))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A URL on loopback where nothing listens (a port that was just free).
pub fn dead_url(path: &str) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("local address");
    drop(l);
    format!("http://{addr}{}", norm(path))
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// Reads the request head (the body of a GET or HEAD is empty).
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = norm(first.next().unwrap_or("/"));
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    Ok(Some(Request {
        method,
        path,
        authorization,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn authorized(required: &Option<RequiredAuth>, given: Option<&str>) -> bool {
    use base64::Engine as _;
    match required {
        None => true,
        Some(RequiredAuth::Basic { username, password }) => {
            let want =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            given.and_then(|g| g.strip_prefix("Basic ")) == Some(want.as_str())
        }
        Some(RequiredAuth::Bearer(token)) => {
            given.and_then(|g| g.strip_prefix("Bearer ")) == Some(token.as_str())
        }
    }
}

/// What a path's body comes from.
enum Body {
    Memory(Arc<Vec<u8>>),
    File(PathBuf, u64),
}

async fn short(conn: &mut TcpStream, status: u16, extra: &str) -> std::io::Result<()> {
    let body = format!("{status} {}\n", reason(status));
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n{extra}\r\n",
        reason(status),
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let _ = conn.set_nodelay(true);
    let Some(req) = read_head(&mut conn).await? else {
        return Ok(());
    };
    let (knobs, auth, body) = {
        let mut st = state.lock().unwrap();
        *st.requests.entry(req.path.clone()).or_default() += 1;
        let knobs = st.knobs.get(&req.path).cloned().unwrap_or_default();
        let body = match st.files.get(&req.path) {
            Some(d) => Some(Body::Memory(d.clone())),
            None => st.dir.as_ref().and_then(|dir| {
                let rel = Path::new(req.path.trim_start_matches('/'));
                if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return None;
                }
                let p = dir.join(rel);
                let len = std::fs::metadata(&p).ok().filter(|m| m.is_file())?.len();
                Some(Body::File(p, len))
            }),
        };
        (knobs, st.auth.clone(), body)
    };
    if let Some(d) = knobs.delay {
        tokio::time::sleep(d).await;
    }
    if req.method != "GET" && req.method != "HEAD" {
        return short(&mut conn, 405, "").await;
    }
    if !authorized(&auth, req.authorization.as_deref()) {
        let challenge = match auth {
            Some(RequiredAuth::Bearer(_)) => "WWW-Authenticate: Bearer\r\n",
            _ => "WWW-Authenticate: Basic realm=\"artifacts\"\r\n",
        };
        return short(&mut conn, 401, challenge).await;
    }
    if let Some(status) = knobs.status {
        let extra = knobs
            .location
            .map(|l| format!("Location: {l}\r\n"))
            .unwrap_or_default();
        return short(&mut conn, status, &extra).await;
    }
    let Some(body) = body else {
        return short(&mut conn, 404, "").await;
    };
    let len = match &body {
        Body::Memory(d) => d.len() as u64,
        Body::File(_, len) => *len,
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    if req.method == "HEAD" {
        return conn.shutdown().await;
    }
    let send = knobs.truncate_after.map_or(len, |t| t.min(len));
    let mut pace = Pace::new(knobs.bytes_per_sec);
    match body {
        Body::Memory(d) => {
            let mut off = 0usize;
            while (off as u64) < send {
                let n = pace.chunk().min((send - off as u64) as usize);
                conn.write_all(&d[off..off + n]).await?;
                off += n;
                pace.sent(n).await;
            }
        }
        Body::File(p, _) => {
            let mut f = tokio::fs::File::open(&p).await?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = send;
            while left > 0 {
                let want = pace.chunk().min(buf.len()).min(left as usize);
                let n = f.read(&mut buf[..want]).await?;
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n]).await?;
                left -= n as u64;
                pace.sent(n).await;
            }
        }
    }
    conn.flush().await?;
    // Closing the connection is what a truncated body looks like: the
    // client has had fewer bytes than promised and no more will come.
    conn.shutdown().await
}

/// Paces a body at a rate (or not at all).
struct Pace {
    bytes_per_sec: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Pace {
    fn new(bytes_per_sec: Option<u64>) -> Pace {
        Pace {
            bytes_per_sec,
            start: Instant::now(),
            sent: 0,
        }
    }

    /// How much to write next: a twentieth of a second's worth when paced,
    /// large writes otherwise (the benchmark wants the server out of the way).
    fn chunk(&self) -> usize {
        match self.bytes_per_sec {
            Some(r) => (r / 20).clamp(1, 1 << 20) as usize,
            None => 1 << 20,
        }
    }

    async fn sent(&mut self, n: usize) {
        self.sent += n as u64;
        if let Some(r) = self.bytes_per_sec {
            let due = self.start + Duration::from_secs_f64(self.sent as f64 / r as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A tar archive of `files` (path, content), each a regular file of mode
/// 0755 (so any can be a program), directories implied.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    append(&mut b, files);
    b.into_inner().expect("a tar in memory")
}

/// [`tar`], gzipped (default level).
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    append(&mut b, files);
    b.into_inner()
        .and_then(|gz| gz.finish())
        .expect("a tar.gz in memory")
}

fn append<W: std::io::Write>(b: &mut ::tar::Builder<W>, files: &[(&str, &[u8])]) {
    for (path, data) in files {
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("a tar entry");
    }
}

/// `sha256:<hex>` of `data`, as an artifact pin is written.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(url: &str, auth: Option<&str>) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = std::net::TcpStream::connect(host).unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
        (status, out[end + 4..].to_vec())
    }

    #[test]
    fn serves_counts_and_misbehaves_on_request() {
        let s = ArtifactServer::start();
        s.put("a.tar", b"hello".to_vec());
        assert_eq!(get(&s.url("/a.tar"), None), (200, b"hello".to_vec()));
        assert_eq!(get(&s.url("/nope"), None).0, 404);
        s.truncate_after("/a.tar", 2);
        assert_eq!(get(&s.url("/a.tar"), None), (200, b"he".to_vec()));
        s.set_status("/a.tar", 503);
        assert_eq!(get(&s.url("/a.tar"), None).0, 503);
        s.clear("/a.tar");
        s.require_auth(Some(RequiredAuth::Bearer("t".into())));
        assert_eq!(get(&s.url("/a.tar"), None).0, 401);
        assert_eq!(get(&s.url("/a.tar"), Some("Bearer t")).0, 200);
        assert_eq!(s.requests("/a.tar"), 5);
        let dir = tempfile_dir();
        std::fs::write(dir.join("f.tar"), b"from disk").unwrap();
        s.serve_dir(&dir);
        s.require_auth(None);
        assert_eq!(get(&s.url("/f.tar"), None), (200, b"from disk".to_vec()));
        assert_eq!(get(&s.url("/../f.tar"), None).0, 404);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("artifacts-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
