//! The serving certificate from the cluster (`--rotate-server-certificates`):
//! a `kubernetes.io/kubelet-serving` CertificateSigningRequest for
//! `system:node:<node>` in `system:nodes` with a SAN for every published
//! address, approved and signed by the cluster, kept in the state
//! directory, and renewed at a random point between 70% and 90% of its
//! lifetime, as the kubelet's certificate manager does. The TLS layer asks
//! [`Rotating`] for the certificate at each handshake, so a renewal takes
//! effect without a restart.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, PostParams};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// The signer kubelets' serving certificates come from.
pub const SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The current serving certificate, swapped on renewal.
#[derive(Debug)]
pub struct Rotating {
    current: RwLock<Arc<CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for Rotating {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

impl Rotating {
    /// A certificate that never changes (files, self-signed).
    pub fn fixed(ck: CertifiedKey) -> Arc<Rotating> {
        Arc::new(Rotating {
            current: RwLock::new(Arc::new(ck)),
        })
    }
}

/// A certificate with its key, as PEM, and when it is valid.
struct Issued {
    cert_pem: String,
    key_pem: String,
    not_before: i64,
    not_after: i64,
}

fn parse(cert_pem: &str, key_pem: &str) -> Result<(Issued, CertifiedKey), String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let first = chain.first().ok_or("no certificate in the PEM")?;
    let (_, x) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let (not_before, not_after) = (
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
    Ok((
        Issued {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            not_before,
            not_after,
        },
        ck,
    ))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// When to renew: a random point between 70% and 90% of the lifetime.
pub fn renew_at(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let life = (not_after - not_before).max(0);
    let per_mille = 700 + (200.0 * jitter.clamp(0.0, 1.0)).round() as i64;
    not_before + life * per_mille / 1000
}

fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1000) / 1000.0
}

/// Asks the cluster for a serving certificate and waits for it.
async fn request(
    client: &kube::Client,
    node: &str,
    addresses: &[String],
) -> Result<(Issued, CertifiedKey), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    for a in addresses {
        let san = match a.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                a.clone()
                    .try_into()
                    .map_err(|e| format!("address {a}: {e:?}"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let pem = csr.pem().map_err(|e| e.to_string())?;
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let obj = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(pem.into_bytes()),
            signer_name: SIGNER.into(),
            // An ECDSA key: no key encipherment, as the kubelet asks.
            usages: Some(vec!["digital signature".into(), "server auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .map_err(|e| format!("cannot create the CertificateSigningRequest: {e}"))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    info!(csr = name, "asked for a serving certificate");
    // Wait for the approver and signer: one GET of this one object a
    // second, only while a certificate is outstanding (a watch would save
    // little for a request that is answered once).
    loop {
        let got = api
            .get(&name)
            .await
            .map_err(|e| format!("CertificateSigningRequest {name}: {e}"))?;
        let status = got.status.unwrap_or_default();
        for c in status.conditions.iter().flatten() {
            if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
                return Err(format!(
                    "CertificateSigningRequest {name} was {}: {}",
                    c.type_,
                    c.message.clone().unwrap_or_default()
                ));
            }
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert_pem = String::from_utf8_lossy(&cert.0).into_owned();
            let key_pem = key.serialize_pem();
            return parse(&cert_pem, &key_pem);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn save(dir: &Path, issued: &Issued) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(".kubelet-server.pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(issued.cert_pem.as_bytes())?;
    f.write_all(issued.key_pem.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, dir.join("kubelet-server-current.pem"))
}

fn load(dir: &Path) -> Option<(Issued, CertifiedKey)> {
    let text = std::fs::read_to_string(dir.join("kubelet-server-current.pem")).ok()?;
    let split = text
        .find("-----BEGIN PRIVATE KEY-----")
        .or_else(|| text.find("-----BEGIN EC PRIVATE KEY-----"))?;
    let (cert, key) = text.split_at(split);
    parse(cert, key).ok()
}

/// The serving certificate, from the state directory if one there is
/// still good for a while, else from a new CSR (retried until the cluster
/// signs one); then renewed in the background for as long as the process
/// runs.
pub async fn bootstrap(
    client: kube::Client,
    node: String,
    addresses: Vec<String>,
    dir: PathBuf,
) -> Arc<Rotating> {
    let fresh = |i: &Issued| now() < renew_at(i.not_before, i.not_after, 0.0);
    let (issued, ck) = match load(&dir).filter(|(i, _)| fresh(i)) {
        Some(x) => x,
        None => loop {
            match request(&client, &node, &addresses).await {
                Ok(x) => {
                    if let Err(e) = save(&dir, &x.0) {
                        warn!(error = %e, "cannot keep the serving certificate");
                    }
                    break x;
                }
                Err(e) => {
                    warn!(
                        error = e,
                        "no serving certificate yet; asking again in 30 s"
                    );
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        },
    };
    let rotating = Arc::new(Rotating {
        current: RwLock::new(Arc::new(ck)),
    });
    let me = rotating.clone();
    tokio::spawn(async move {
        let mut due = renew_at(issued.not_before, issued.not_after, jitter());
        loop {
            let wait = (due - now()).max(1) as u64;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match request(&client, &node, &addresses).await {
                Ok((i, ck)) => {
                    if let Err(e) = save(&dir, &i) {
                        warn!(error = %e, "cannot keep the serving certificate");
                    }
                    info!(not_after = i.not_after, "serving certificate renewed");
                    *me.current.write().unwrap() = Arc::new(ck);
                    due = renew_at(i.not_before, i.not_after, jitter());
                }
                Err(e) => {
                    warn!(
                        error = e,
                        "cannot renew the serving certificate; trying again in 30 s"
                    );
                    due = now() + 30;
                }
            }
        }
    });
    rotating
}

/// Names of the self-signed certificate and key in the certificate
/// directory: the kubelet's own (`--cert-dir`), so an admin finds them where
/// they would look.
const SELF_SIGNED: (&str, &str) = ("kubelet.crt", "kubelet.key");

/// How long a self-signed certificate is made for (the kubelet's: a year).
const SELF_SIGNED_DAYS: i64 = 365;

/// Whether a certificate names every one of `addresses` as a SAN.
fn names_all(cert_pem: &str, addresses: &[String]) -> bool {
    use rustls::pki_types::pem::PemObject;
    let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok((_, x)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return false;
    };
    use x509_parser::extensions::GeneralName;
    addresses.iter().all(|a| {
        san.value
            .general_names
            .iter()
            .any(|g| match (g, a.parse::<std::net::IpAddr>()) {
                (GeneralName::DNSName(d), Err(_)) => d.eq_ignore_ascii_case(a),
                (GeneralName::IPAddress(b), Ok(std::net::IpAddr::V4(ip))) => *b == ip.octets(),
                (GeneralName::IPAddress(b), Ok(std::net::IpAddr::V6(ip))) => *b == ip.octets(),
                _ => false,
            })
    })
}

/// The serving certificate a kubelet makes for itself when none is
/// configured: kept in `dir` and used again across restarts while it is
/// valid for at least another day and still names every address (a new
/// node name or IP gets a new one), so clients that pinned it keep working.
pub fn self_signed(dir: &Path, node: &str, addresses: &[String]) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (dir.join(SELF_SIGNED.0), dir.join(SELF_SIGNED.1));
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        match parse(&cert, &key) {
            Ok((i, ck)) if i.not_after > now() + 86_400 && names_all(&cert, addresses) => {
                return Ok(ck)
            }
            Ok(_) => {
                info!(cert = %cert_path.display(), "the self-signed serving certificate is expiring or names other addresses; making a new one")
            }
            Err(e) => {
                warn!(cert = %cert_path.display(), error = e, "cannot read the self-signed serving certificate; making a new one")
            }
        }
    }
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    for a in addresses {
        params
            .subject_alt_names
            .push(match a.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(
                    a.clone()
                        .try_into()
                        .map_err(|e| format!("address {a}: {e:?}"))?,
                ),
            });
    }
    let (y, m, d) = day_at(now() - 86_400)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = day_at(now() + SELF_SIGNED_DAYS * 86_400)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    write_private(dir, SELF_SIGNED.1, &key_pem)
        .and_then(|()| write_private(dir, SELF_SIGNED.0, &cert_pem))
        .map_err(|e| {
            format!(
                "cannot keep the self-signed certificate in {}: {e}",
                dir.display()
            )
        })?;
    info!(cert = %cert_path.display(), "made a self-signed serving certificate");
    parse(&cert_pem, &key_pem).map(|(_, ck)| ck)
}

/// Midnight UTC of the day `secs` falls in, as rcgen takes dates.
fn day_at(secs: i64) -> Result<(i32, u8, u8), String> {
    let d = jiff::Timestamp::from_second(secs)
        .map_err(|e| e.to_string())?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    Ok((i32::from(d.year()), d.month() as u8, d.day() as u8))
}

/// Writes `name` in `dir` (0700) as a 0600 file, atomically.
fn write_private(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_kept_until_the_addresses_change() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let addrs = vec!["10.0.0.7".to_string(), "node-a".to_string()];
        let first = self_signed(&pki, "node-a", &addrs).unwrap();
        let pem = std::fs::read_to_string(pki.join("kubelet.crt")).unwrap();
        assert!(names_all(&pem, &addrs));
        use std::os::unix::fs::PermissionsExt;
        for f in ["kubelet.crt", "kubelet.key"] {
            let mode = std::fs::metadata(pki.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let again = self_signed(&pki, "node-a", &addrs).unwrap();
        assert_eq!(first.cert, again.cert, "reused across restarts");
        let moved = vec!["10.0.0.8".to_string(), "node-a".to_string()];
        let other = self_signed(&pki, "node-a", &moved).unwrap();
        assert_ne!(
            first.cert, other.cert,
            "a new address gets a new certificate"
        );
        let pem = std::fs::read_to_string(pki.join("kubelet.crt")).unwrap();
        assert!(names_all(&pem, &moved) && !names_all(&pem, &addrs));
        std::fs::write(pki.join("kubelet.crt"), "garbage").unwrap();
        assert!(
            self_signed(&pki, "node-a", &moved).is_ok(),
            "a broken file is replaced"
        );
    }

    #[test]
    fn renewal_falls_between_70_and_90_percent() {
        assert_eq!(renew_at(1000, 2000, 0.0), 1700);
        assert_eq!(renew_at(1000, 2000, 1.0), 1900);
        assert_eq!(renew_at(1000, 2000, 0.5), 1800);
        assert_eq!(renew_at(1000, 2000, 7.0), 1900, "clamped");
    }

    #[test]
    fn a_saved_certificate_loads_back() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["n1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (issued, _) = parse(&cert.pem(), &key.serialize_pem()).unwrap();
        save(dir.path(), &issued).unwrap();
        let (back, _) = load(dir.path()).expect("loads");
        assert_eq!(back.not_after, issued.not_after);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("kubelet-server-current.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
