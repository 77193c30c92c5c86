//! The HTTPS side: a throwaway certificate authority made at start, the
//! serving certificate it signs, client certificates for kubeconfigs, and the
//! listener that does the TLS handshakes before axum sees a connection.
//!
//! Like kube-apiserver (`--client-ca-file`), a client certificate is optional
//! at the TLS layer, but one that the CA did not sign fails the handshake; a
//! verified one names the user by its subject's common name
//! (k8s.io/apiserver/pkg/authentication/request/x509's CommonNameUserConversion).
//! Everything uses ring, the crypto provider kube's rustls is built with.

use super::http::Peer;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client gets to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The names the serving certificate is valid for.
const SERVING_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// A server's certificate authority, and what it signed for the server.
pub struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The serving certificate and its key (PKCS#8 DER).
    serving: (CertificateDer<'static>, Vec<u8>),
}

/// An issued certificate and its key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// A fresh CA and a serving certificate for [`SERVING_NAMES`].
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::default();
        // A name of its own, so that a certificate from another fixture's
        // CA fails as from an unknown issuer, not as a bad signature.
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let ca_name = format!("unitlet-test-ca-{}-{n}", std::process::id());
        ca.distinguished_name = name(&ca_name, None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate().expect("serving key");
        let mut serving = CertificateParams::new(SERVING_NAMES.map(str::to_string).to_vec())
            .expect("serving certificate names");
        serving.distinguished_name = name("kube-apiserver", None);
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.use_authority_key_identifier_extension = true;
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .expect("sign the serving certificate");

        Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            issuer,
            serving: (serving_cert.der().clone(), serving_key.serialize_der()),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate signed by the CA, for user `common_name` in
    /// group `organization`, as a kubelet's (CN `system:node:NAME`,
    /// O `system:nodes`).
    pub fn issue_client(&self, common_name: &str, organization: &str) -> Issued {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, Some(organization));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign a client certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A certificate the CA signs for `public_key` with `params` (PEM).
    pub fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, rcgen::Error> {
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }

    /// The acceptor: TLS 1.2 or 1.3, HTTP/1.1 by ALPN (all axum serves
    /// here), client certificates optional but verified against the CA.
    pub fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("trust the CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .expect("client certificate verifier");
        let (cert, key) = &self.serving;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
            )
            .expect("serving certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// A subject: CN, and O if given.
fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// A listener whose connections come out of the TLS handshake. Handshakes
/// run on their own tasks, so a slow or failing client holds up no other;
/// one that fails (an untrusted client certificate, a client that does not
/// trust the CA) closes its connection, as kube-apiserver's does.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`. Call within the server's runtime.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        let addr = tcp.local_addr().expect("listener address");
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: wait, as axum does.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task ended: the server is shutting down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        let (_, connection) = stream.io().get_ref();
        // rustls only hands over a chain it verified against the CA.
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first());
        let user = leaf
            .and_then(|leaf| common_name(leaf))
            .filter(|cn| !cn.is_empty());
        Peer {
            tls: true,
            user,
            groups: leaf.map(|leaf| organizations(leaf)).unwrap_or_default(),
            addr: Some(*stream.remote_addr()),
        }
    }
}

// ----- reading a certificate's subject -----

/// The organizations of a DER certificate's subject, in order: the groups
/// of its user (CommonNameUserConversion).
fn organizations(cert: &[u8]) -> Vec<String> {
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(cert) else {
        return vec![];
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect()
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OBJECT_IDENTIFIER: u8 = 0x06;
/// `[0] EXPLICIT Version` of a TBSCertificate.
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3, as DER contents.
const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
/// UTF8String, PrintableString, IA5String: the string types a CN comes in
/// (others, such as BMPString, are not read: no user).
const STRINGS: [u8; 3] = [0x0c, 0x13, 0x16];

/// One DER element of `input`: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The contents of the element of `input` if it has tag `want`, and what follows.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = element(input)?;
    (tag == want).then_some((contents, rest))
}

/// The common name of a DER certificate's subject (the last one, if there
/// are several, as Go's pkix.Name keeps it), or None.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, then the subject.
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (mut rdns, _) = expect(tbs, SEQUENCE)?;
    let mut cn = None;
    while !rdns.is_empty() {
        let (mut rdn, rest) = expect(rdns, SET)?;
        rdns = rest;
        while !rdn.is_empty() {
            let (attribute, rest) = expect(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = expect(attribute, OBJECT_IDENTIFIER)?;
            if oid == COMMON_NAME {
                let (tag, text, _) = element(value)?;
                cn = STRINGS
                    .contains(&tag)
                    .then(|| String::from_utf8(text.to_vec()).ok())
                    .flatten();
            }
        }
    }
    cn
}
