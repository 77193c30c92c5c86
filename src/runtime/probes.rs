//! Running probes: one task per probe of each running container instance.
//!
//! As the kubelet's prober: HTTP, TCP and gRPC checks are made by the agent
//! against the pod's IP; an exec probe runs the command with the
//! container's user, environment and working directory and is moved into
//! the container's cgroup. Results are folded with the thresholds of
//! [`ProbeState`]; a change is kept per instance (systemd invocation) and
//! the pod is queued, so its status follows. A failed liveness or startup
//! probe kills the container (SIGTERM, SIGKILL after the grace period); the
//! reconciler then restarts it under the pod's restart policy and back-off.

use crate::core::probe::Action;
use crate::systemd::{ExecContext, Units};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Output kept from a probe for its event, as the kubelet keeps 10 KiB.
const MAX_OUTPUT: usize = 10 * 1024;

/// Runs one probe action once. `Ok` is success; `Err` says why it failed,
/// in the kubelet's words where it has them.
pub async fn run(
    sd: &dyn Units,
    unit: &str,
    action: &Action,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Tcp { host, port } => {
            let addr = host_port(host, *port);
            match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let url = format!(
                "{}://{}{path}",
                if *https { "https" } else { "http" },
                host_port(host, *port)
            );
            match tokio::time::timeout(timeout, http_get(*https, host, *port, path, headers))
                .await
            {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
                Err(_) => Err(format!(
                    "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
        Action::Grpc {
            host,
            port,
            service,
        } => {
            let addr = host_port(host, *port);
            match tokio::time::timeout(timeout, grpc_check(host, *port, service)).await {
                Ok(Ok(1)) => Ok(()),
                Ok(Ok(status)) => Err(format!(
                    "service unhealthy (responded with {:?})",
                    serving_status_name(status)
                )),
                Ok(Err(e)) => Err(format!("failed to connect service {addr:?}: {e}")),
                Err(_) => Err(format!(
                    "timeout: health rpc did not complete within {}s",
                    timeout.as_secs()
                )),
            }
        }
        Action::Exec { argv } => exec(sd, unit, argv, timeout).await,
    }
}

/// Runs a lifecycle hook, bounded by `limit`.
pub async fn run_hook(
    sd: &dyn Units,
    unit: &str,
    hook: &crate::core::probe::Hook,
    limit: Duration,
) -> Result<(), String> {
    match hook {
        crate::core::probe::Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
        crate::core::probe::Hook::Action(a) => run(sd, unit, a, limit).await,
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `host:port`, over TLS without verifying the server (as
/// the kubelet's HTTPS probes: they check liveness, not identity).
async fn connect(https: bool, host: &str, port: u16) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect(host_port(host, port))
        .await
        .map_err(|e| format!("dial tcp {}: {e}", host_port(host, port)))?;
    if !https {
        return Ok(Box::new(tcp));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(tls))
}

/// An HTTP/1.1 GET; the status code.
async fn http_get(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let io = connect(https, host, port).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header(
            "User-Agent",
            format!("kube-probe/unitlet-{}", env!("CARGO_PKG_VERSION")),
        )
        .header("Accept", "*/*");
    // A Host header of the probe's replaces the default, as in the kubelet.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("Host", host_port(host, port));
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    // Read (a bounded part of) the body, so the server sees a normal client.
    let mut body = resp.into_body();
    let mut read = 0;
    while read < MAX_OUTPUT {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    Ok(code)
}

/// `grpc.health.v1.Health/Check` over HTTP/2 (prior knowledge); the
/// `ServingStatus` number the server answered.
async fn grpc_check(host: &str, port: u16, service: &str) -> Result<i32, String> {
    let io = connect(false, host, port).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        host_port(host, port)
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("user-agent", "kube-probe/unitlet")
    .body(http_body_util::Full::new(Bytes::from(grpc_request(
        service,
    ))))
    .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let header_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = trailer_status.or(header_status).unwrap_or_default();
    if status != "0" {
        return Err(format!("rpc error: code = {status}"));
    }
    grpc_response_status(&collected.to_bytes())
        .ok_or_else(|| "malformed health check response".to_string())
}

/// A length-prefixed `HealthCheckRequest { service }`.
pub fn grpc_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when absent,
/// as protobuf defaults), or `None` if it does not parse.
pub fn grpc_response_status(frame: &[u8]) -> Option<i32> {
    let len = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
    let mut msg = frame.get(5..5 + len)?;
    let mut status = 0;
    let read_varint = |m: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (b, rest) = m.split_first()?;
            *m = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while !msg.is_empty() {
        let tag = read_varint(&mut msg)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = read_varint(&mut msg)? as i32,
            (_, 0) => {
                read_varint(&mut msg)?;
            }
            (_, 2) => {
                let n = read_varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn serving_status_name(n: i32) -> &'static str {
    match n {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNRECOGNIZED",
    }
}

/// Runs `argv` with the container's user, groups, environment and working
/// directory, moved into the container's cgroup as soon as it exists.
async fn exec(
    sd: &dyn Units,
    unit: &str,
    argv: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let ctx = sd.exec_context(unit).await.map_err(|e| e.to_string())?;
    let (program, args) = exec_argv(&ctx, argv);
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(exec_env(&ctx))
        // The gate enters the working directory, in the unit's namespace.
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("failed to run {:?}: {e}", argv[0]))?;
    if let Some(pid) = child.id() {
        if let Err(e) = sd.attach(unit, pid).await {
            tracing::warn!(unit, error = %e, "exec probe runs outside the container's cgroup");
        }
    }
    // Open the gate (see `exec_argv`): the command runs now, in the cgroup.
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("command {:?} timed out", argv.join(" "))),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if text.len() > MAX_OUTPUT {
                let mut cut = MAX_OUTPUT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            if out.status.success() {
                Ok(())
            } else {
                let code = out.status.code().map_or_else(
                    || {
                        format!(
                            "signal {}",
                            std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0)
                        )
                    },
                    |c| format!("exit code {c}"),
                );
                Err(format!(
                    "command {:?} exited with {code}: {}",
                    argv.join(" "),
                    text.trim_end()
                ))
            }
        }
    }
}

/// A shell that waits for one line on stdin, then becomes the command
/// (`exec "$@"`, so the argv passes unchanged): the agent moves it into the
/// container's cgroup first, so nothing the command runs starts outside.
/// (systemd moves a process only once it exists, and a gate in the child
/// before exec would block the spawn, which waits for the exec.) It also
/// enters the unit's working directory, given as its first argument: that
/// directory may exist only in the unit's mount namespace (a volume).
const GATE: [&str; 4] = [
    "/bin/sh",
    "-c",
    "read -r _; cd -- \"$1\" || exit 126; shift; exec \"$@\"",
    "unitlet-exec",
];

/// The program and arguments for a command in the container's context:
/// into the unit's mount namespace, where its volumes are (`nsenter`,
/// with the unit's working directory there), then the unit's own
/// privilege drop (`setpriv … --`, with `--no-new-privs` when the unit
/// has it), then the [`GATE`], then `argv`.
pub fn exec_argv(ctx: &ExecContext, argv: &[String]) -> (String, Vec<String>) {
    exec_context_argv(ctx, argv, false)
}

/// The same gate, reading fd 3 instead of stdin (which then belongs to
/// the command: `kubectl exec -i`); fd 3 is closed before the command runs.
const GATE_FD3: [&str; 4] = [
    "/bin/sh",
    "-c",
    "read -r _ <&3; exec 3<&-; cd -- \"$1\" || exit 126; shift; exec \"$@\"",
    "unitlet-exec",
];

/// [`exec_argv`], with the gate on fd 3 when `gate_fd3`.
pub fn exec_context_argv(
    ctx: &ExecContext,
    argv: &[String],
    gate_fd3: bool,
) -> (String, Vec<String>) {
    let unescaped: Vec<String> = ctx.exec_argv.iter().map(|a| a.replace("$$", "$")).collect();
    // Under the tty-host helper, the program (and its setpriv) follows it.
    let stored = crate::core::tty::unwrap(&unescaped).unwrap_or(&unescaped);
    let mut full: Vec<String> = Vec::new();
    if ctx.main_pid > 0 {
        full.extend([
            "/usr/bin/nsenter".to_string(),
            format!("--target={}", ctx.main_pid),
            "--mount".into(),
            "--".into(),
        ]);
    }
    let mut setpriv: Vec<String> = Vec::new();
    if stored.first().is_some_and(|p| p.ends_with("/setpriv")) {
        if let Some(end) = stored.iter().position(|a| a == "--") {
            setpriv.extend_from_slice(&stored[..end]);
        }
    }
    if ctx.no_new_privileges {
        if setpriv.is_empty() {
            setpriv.push("/usr/bin/setpriv".into());
        }
        setpriv.push("--no-new-privs".into());
    }
    if !setpriv.is_empty() {
        full.extend(setpriv);
        full.push("--".into());
    }
    let gate = if gate_fd3 { GATE_FD3 } else { GATE };
    full.extend(gate.iter().map(|s| s.to_string()));
    full.push(if ctx.working_directory.is_empty() {
        "/".into()
    } else {
        ctx.working_directory.trim_start_matches('-').to_string()
    });
    full.extend_from_slice(argv);
    let program = full.remove(0);
    (program, full)
}

/// The environment of the unit: `Environment=`, then its env files (ours,
/// in the format [`crate::core::unit::env_file_text`] writes), later wins.
pub fn exec_env(ctx: &ExecContext) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ctx
        .environment
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for f in &ctx.environment_files {
        if let Ok(text) = std::fs::read_to_string(f) {
            env.extend(crate::core::unit::parse_env_file_text(&text));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    out.reverse();
    out
}

/// Accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct AnyServer(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _server_name: &tokio_rustls::rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_round_trip() {
        assert_eq!(grpc_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(grpc_request("db"), vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        assert_eq!(grpc_response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_response_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        // An empty message is status 0 (UNKNOWN); unknown fields are skipped.
        assert_eq!(grpc_response_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(
            grpc_response_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Some(1)
        );
        assert_eq!(grpc_response_status(&[0, 0, 0, 0, 9]), None);
    }

    #[test]
    fn exec_keeps_the_units_privilege_drop_and_env_order() {
        let ctx = ExecContext {
            environment: vec!["HOME=/".into(), "A=1".into(), "A=2".into()],
            environment_files: vec![],
            working_directory: "/srv".into(),
            main_pid: 0,
            no_new_privileges: false,
            exec_argv: [
                "/usr/bin/setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "--",
                "/bin/app",
                "$$HOME",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        let (p, a) = exec_argv(&ctx, &["cat".into(), "/tmp/x".into()]);
        assert_eq!(p, "/usr/bin/setpriv");
        let gate = GATE.map(str::to_string);
        let mut want: Vec<String> = ["--reuid=1000", "--regid=1000", "--clear-groups", "--"]
            .map(str::to_string)
            .to_vec();
        want.extend(gate.clone());
        want.extend(["/srv".to_string(), "cat".into(), "/tmp/x".into()]);
        assert_eq!(a, want);
        let plain = ExecContext {
            exec_argv: vec!["/bin/app".into()],
            ..ctx.clone()
        };
        let (p, a) = exec_argv(&plain, &["true".into()]);
        assert_eq!(p, "/bin/sh");
        assert_eq!(
            a[2..],
            ["unitlet-exec".to_string(), "/srv".into(), "true".into()]
        );
        // Running, with NoNewPrivileges: into its mount namespace, in its
        // working directory there, with no_new_privs.
        let running = ExecContext {
            main_pid: 42,
            no_new_privileges: true,
            working_directory: "/data".into(),
            ..plain.clone()
        };
        let (p, a) = exec_argv(&running, &["true".into()]);
        assert_eq!(p, "/usr/bin/nsenter");
        assert_eq!(
            a[..6],
            [
                "--target=42",
                "--mount",
                "--",
                "/usr/bin/setpriv",
                "--no-new-privs",
                "--"
            ]
        );
        let mut want = GATE.map(str::to_string).to_vec();
        want.extend(["/data".to_string(), "true".into()]);
        assert_eq!(a[6..], want);
        assert_eq!(
            exec_env(&ctx),
            [
                ("HOME".to_string(), "/".to_string()),
                ("A".into(), "2".into())
            ]
        );
    }
}
