//! A real OCI registry for the image tests: Debian's `docker-registry`
//! (the CNCF distribution) on a free port with its storage in a temporary
//! directory, and busybox images built with `umoci` and pushed with
//! `skopeo`, so the puller meets what a user's registry serves, byte for
//! byte, and the tests can reach into the storage to tamper with a blob.
//!
//! Everything here shells out to those tools; [`missing_tools`] says which
//! are absent, so that a test can skip with a reason instead of failing.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tools the registry tests need, and which of them are missing.
pub fn missing_tools() -> Vec<&'static str> {
    ["docker-registry", "umoci", "skopeo", "busybox"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect()
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

/// A private directory under /tmp, removed on drop (the harness has no
/// tempfile crate of its own).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = nix::unistd::mkdtemp(&std::env::temp_dir().join("unitlet-registry-XXXXXX"))
            .expect("a temporary directory");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, panicking with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An address of this machine that is not loopback, if it has one (for
/// the tests of plain HTTP to a registry that must speak TLS).
pub fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
}

/// A `docker-registry` process, killed (and its storage removed) on drop.
pub struct Registry {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
    creds: Option<(String, String)>,
}

impl Registry {
    /// A registry on a free loopback port, anonymous.
    pub fn start() -> Registry {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), None)
    }

    /// A registry with HTTP basic authentication (htpasswd, bcrypt) for
    /// one user; `None` when neither `htpasswd` nor Python's `crypt` can
    /// make a bcrypt hash.
    pub fn start_with_auth(user: &str, password: &str) -> Option<Registry> {
        let _ = bcrypt_line(user, password)?;
        Some(Self::start_on(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some((user.to_string(), password.to_string())),
        ))
    }

    /// A registry listening on `ip` (a free port).
    pub fn start_on(ip: IpAddr, creds: Option<(String, String)>) -> Registry {
        let dir = TempDir::new();
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::new(ip, port);
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((u, p)) = &creds {
            let line = bcrypt_line(u, p).expect("a bcrypt tool");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{line}\n")).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: unitlet-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let mut r = Registry {
            child,
            dir,
            addr,
            creds,
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + crate::patient(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            if let Ok((status, _, _)) = http(self.addr, "GET", "/v2/", &[], b"") {
                if status == 200 || status == 401 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `host:port`, as an image reference names the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes tag `tag` of the OCI layout `layout` as `repo:dest_tag`,
    /// with `extra` skopeo options; returns the manifest digest.
    pub fn push(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        dest_tag: &str,
        extra: &[&str],
    ) -> String {
        let digestfile = self
            .dir
            .path()
            .join(format!("digest-{repo}-{dest_tag}").replace('/', "_"));
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digestfile)
            .args(extra);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.host()));
        run(&mut cmd);
        std::fs::read_to_string(&digestfile)
            .expect("the digest")
            .trim()
            .to_string()
    }

    fn auth_header(&self) -> Vec<(String, String)> {
        match &self.creds {
            Some((u, p)) => vec![(
                "Authorization".into(),
                format!("Basic {}", base64_encode(format!("{u}:{p}").as_bytes())),
            )],
            None => vec![],
        }
    }

    /// The raw manifest `reference` (a tag or digest) of `repo`.
    pub fn manifest(&self, repo: &str, reference: &str) -> Vec<u8> {
        let mut headers = self.auth_header();
        headers.push((
            "Accept".into(),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
                .into(),
        ));
        let (status, _, body) = http(
            self.addr,
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            b"",
        )
        .expect("the registry answers");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        body
    }

    /// Puts an image index as `repo:tag`, one entry per `(manifest
    /// digest, os, architecture)` (each an image manifest already in
    /// `repo`); returns the index's digest.
    pub fn put_index(&self, repo: &str, tag: &str, entries: &[(&str, &str, &str)]) -> String {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(digest, os, arch)| {
                let size = self.manifest(repo, digest).len();
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "size": size,
                    "platform": {"os": os, "architecture": arch},
                })
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .expect("JSON");
        let mut headers = self.auth_header();
        headers.push((
            "Content-Type".into(),
            "application/vnd.oci.image.index.v1+json".into(),
        ));
        let (status, _, answer) = http(
            self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &headers,
            &body,
        )
        .expect("the registry answers");
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        use sha2::Digest as _;
        format!("sha256:{:x}", sha2::Sha256::digest(&body))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `user:bcrypt-hash`, from `htpasswd -B` or Python's `crypt`, at the lowest
/// cost (the registry checks it on every request).
fn bcrypt_line(user: &str, password: &str) -> Option<String> {
    if which("htpasswd").is_some() {
        let out = Command::new("htpasswd")
            .args(["-nbB", "-C", "4", user, password])
            .output()
            .ok()?;
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(sys.argv[1]+':'+crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
            user,
            password,
        ])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && line.contains(":$2")).then_some(line)
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// One HTTP/1.1 exchange (`Connection: close`): status, headers, body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, head, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 2 + n {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[(eol + 4 + n).min(b.len())..];
    }
    out
}

/// The user database of the test images: `app` (1000:1000), in `staff` (50).
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
/// See [`PASSWD`].
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n";

/// An OCI image layout holding busybox images, built with `umoci`.
pub struct Layout {
    dir: TempDir,
}

impl Layout {
    /// The layout's path (`oci:<path>:<tag>` to skopeo).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    fn umoci(&self) -> Command {
        let mut c = Command::new("umoci");
        c.current_dir(self.dir.path());
        c
    }

    /// Tag `v1`: one layer with a static busybox at `/bin/busybox`, `sh`,
    /// `ls`, `cat`, `echo`, `id` linked to it (symlinks, and `cat` a hard
    /// link), [`PASSWD`] and [`GROUP`], `/home/app` owned by app,
    /// `/etc/doomed` (for [`Self::whiteout`]), a setuid file; config:
    /// entrypoint `/bin/sh -c`, cmd `echo hello`, env `A=1`, `B=two`,
    /// working directory `/home/app`, user `app:staff`.
    pub fn busybox() -> Layout {
        let l = Layout {
            dir: TempDir::new(),
        };
        run(l.umoci().args(["init", "--layout", "layout"]));
        run(l.umoci().args(["new", "--image", "layout:base"]));
        run(l
            .umoci()
            .args(["unpack", "--image", "layout:base", "bundle"]));
        let rootfs = l.dir.path().join("bundle/rootfs");
        for d in ["bin", "etc", "home/app", "tmp", "usr/bin"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("a directory");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
        for applet in ["sh", "ls", "echo", "id"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("a symlink");
        }
        std::fs::hard_link(rootfs.join("bin/busybox"), rootfs.join("bin/cat")).expect("a link");
        std::os::unix::fs::symlink("/bin/busybox", rootfs.join("usr/bin/env")).expect("a symlink");
        std::fs::write(rootfs.join("etc/passwd"), PASSWD).expect("passwd");
        std::fs::write(rootfs.join("etc/group"), GROUP).expect("group");
        std::fs::write(rootfs.join("etc/doomed"), "to be whited out\n").expect("doomed");
        std::fs::write(rootfs.join("bin/suid"), "#!/bin/sh\n").expect("suid");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            rootfs.join("bin/suid"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .expect("chmod");
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000), Some(1000)).expect("chown");
        run(l.umoci().args(["repack", "--image", "layout:v1", "bundle"]));
        run(l.umoci().args([
            "config",
            "--image",
            "layout:v1",
            "--config.entrypoint",
            "/bin/sh",
            "--config.entrypoint",
            "-c",
            "--config.cmd",
            "echo hello",
            "--config.env",
            "A=1",
            "--config.env",
            "B=two",
            "--config.workingdir",
            "/home/app",
            "--config.user",
            "app:staff",
        ]));
        l
    }

    /// Tag `v2`: `v1` and a second layer that deletes `/etc/doomed` (a
    /// whiteout) and adds `/etc/added`.
    pub fn whiteout(&self) {
        run(self
            .umoci()
            .args(["unpack", "--image", "layout:v1", "bundle2"]));
        let rootfs = self.dir.path().join("bundle2/rootfs");
        std::fs::remove_file(rootfs.join("etc/doomed")).expect("rm");
        std::fs::write(rootfs.join("etc/added"), "added\n").expect("added");
        run(self
            .umoci()
            .args(["repack", "--image", "layout:v2", "bundle2"]));
    }
}
