//! certificates.k8s.io/v1 CertificateSigningRequests: the registry
//! strategies (pkg/registry/certificates/certificates/strategy.go) of the
//! object and of its `/status` and `/approval` subresources, the validation
//! of pkg/apis/certificates/validation, and a stand-in for
//! kube-controller-manager's approving and signing controllers for the
//! `kubernetes.io/kubelet-serving` signer ([`auto_sign_pass`]).

use super::kinds::{by_plural, is_dns_label, is_dns_subdomain, LABEL_MSG, SUBDOMAIN_MSG};
use super::status::FieldError;
use super::store::{random_bytes, timestamp, Store, Sub};
use super::tls::Pki;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber, SignatureAlgorithm,
};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

/// The signer of kubelets' serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// certificates.LegacyUnknownSignerName, refused by v1.
const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// allValidUsages, sorted as sets.String.List() sorts them.
const USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];
const TRUE_ONLY: &[&str] = &["True"];
const ALL_STATUSES: &[&str] = &["False", "True", "Unknown"];
/// trueConditionTypes.
const TRUE_TYPES: [&str; 3] = ["Approved", "Denied", "Failed"];

/// Which write is validated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Main,
    Status,
    Approval,
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn conditions(csr: &Value) -> Vec<Value> {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn of_type(csr: &Value, t: &str) -> Vec<Value> {
    conditions(csr)
        .into_iter()
        .filter(|c| c["type"] == t)
        .collect()
}

/// A base64 field (`[]byte` in Go) decoded; undecodable reads as empty
/// (the typed decode has already refused bad base64 with a 400).
fn bytes_at(obj: &Value, pointer: &str) -> Vec<u8> {
    STANDARD.decode(str_at(obj, pointer)).unwrap_or_default()
}

/// Go's `%#v` of a `[]byte`, as field.Invalid prints one.
fn go_bytes(b: &[u8]) -> String {
    let items: Vec<String> = b.iter().map(|x| format!("0x{x:x}")).collect();
    format!("[]byte{{{}}}", items.join(", "))
}

// ----- the request -----

/// What the signer reads of a parsed request.
pub struct Request {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// SANs other than DNS names and IP addresses (emails, URIs, ...), by kind.
    pub other_sans: Vec<&'static str>,
    key: RequestKey,
}

/// The request's public key, for rcgen to put in a certificate.
struct RequestKey {
    alg: &'static SignatureAlgorithm,
    key: Vec<u8>,
}

impl rcgen::PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// certificates.ParseCSR and CheckSignature: the first PEM block must be a
/// CERTIFICATE REQUEST that parses and whose signature verifies.
pub fn parse_request(pem: &[u8]) -> Result<Request, String> {
    let block = match Pem::iter_from_buffer(pem).next() {
        Some(Ok(block)) if block.label == "CERTIFICATE REQUEST" => block,
        _ => return Err("PEM block type must be CERTIFICATE REQUEST".into()),
    };
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|_| "x509: malformed certificate request".to_string())?;
    let spki = &csr.certification_request_info.subject_pki;
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let (alg, failure): (&'static SignatureAlgorithm, &str) =
        match (alg_oid.as_str(), curve.as_deref()) {
            ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                "x509: ECDSA verification failure",
            ),
            ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                "x509: ECDSA verification failure",
            ),
            ("1.3.101.112", _) => (&rcgen::PKCS_ED25519, "x509: Ed25519 verification failure"),
            ("1.2.840.113549.1.1.1", _) => {
                (&rcgen::PKCS_RSA_SHA256, "crypto/rsa: verification error")
            }
            _ => return Err("x509: cannot verify signature: algorithm unimplemented".into()),
        };
    check_signature(&csr).map_err(|_| failure.to_string())?;
    let subject = &csr.certification_request_info.subject;
    let mut request = Request {
        common_name: subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .last()
            .map(str::to_string),
        organizations: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect(),
        dns_names: vec![],
        ips: vec![],
        other_sans: vec![],
        key: RequestKey {
            alg,
            key: spki.subject_public_key.as_ref().to_vec(),
        },
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => request.dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => request
                        .ips
                        .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                    16 => request
                        .ips
                        .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                    _ => request.other_sans.push("IP"),
                },
                GeneralName::RFC822Name(_) => request.other_sans.push("email"),
                GeneralName::URI(_) => request.other_sans.push("URI"),
                _ => request.other_sans.push("other"),
            }
        }
    }
    Ok(request)
}

/// CertificateRequest.CheckSignature: the declared signature algorithm
/// over the request info, with the request's own key (ring's verifiers, as
/// rustls has them).
fn check_signature(csr: &X509CertificationRequest) -> Result<(), ()> {
    use tokio_rustls::rustls::SignatureScheme;
    let scheme = match csr.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.10045.4.3.2" => SignatureScheme::ECDSA_NISTP256_SHA256,
        "1.2.840.10045.4.3.3" => SignatureScheme::ECDSA_NISTP384_SHA384,
        "1.2.840.113549.1.1.11" => SignatureScheme::RSA_PKCS1_SHA256,
        "1.2.840.113549.1.1.12" => SignatureScheme::RSA_PKCS1_SHA384,
        "1.2.840.113549.1.1.13" => SignatureScheme::RSA_PKCS1_SHA512,
        "1.3.101.112" => SignatureScheme::ED25519,
        _ => return Err(()),
    };
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let key = csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .as_ref();
    let message = csr.certification_request_info.raw;
    let signature = csr.signature_value.as_ref();
    let verifies = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, algs)| algs.iter())
        .any(|alg| alg.verify_signature(key, message, signature).is_ok());
    if verifies {
        Ok(())
    } else {
        Err(())
    }
}

/// validateCertificate: PEM CERTIFICATE blocks only, at least one, each
/// parsing. Empty is fine.
fn validate_certificate(pem: &[u8]) -> Result<(), String> {
    if pem.is_empty() {
        return Ok(());
    }
    let mut blocks = 0;
    for block in Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {:?}",
                block.label
            ));
        }
        blocks += 1;
        x509_parser::certificate::X509Certificate::from_der(&block.contents)
            .map_err(|_| "x509: malformed certificate".to_string())?;
    }
    if blocks == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    Ok(())
}

// ----- validation -----

/// certificateValidationOptions.
#[derive(Default)]
struct Opts {
    approval: bool,
    certificate: bool,
    both_approved_and_denied: bool,
    legacy_signer: bool,
    duplicate_condition_types: bool,
    empty_condition_type: bool,
    arbitrary_certificate: bool,
    unknown_usages: bool,
    duplicate_usages: bool,
}

fn usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|u| u.as_str().unwrap_or("").to_string())
        .collect()
}

fn has_duplicates(items: &[String]) -> bool {
    items
        .iter()
        .enumerate()
        .any(|(i, x)| items[..i].contains(x))
}

/// getValidationOptions: what the stored object's existing problems excuse.
fn options(new: &Value, old: Option<&Value>) -> Opts {
    let Some(old) = old else {
        return Opts::default();
    };
    let types: Vec<String> = conditions(old)
        .iter()
        .map(|c| c["type"].as_str().unwrap_or("").to_string())
        .collect();
    let old_usages = usages(old);
    let old_cert = bytes_at(old, "/status/certificate");
    Opts {
        both_approved_and_denied: types.iter().any(|t| t == "Approved")
            && types.iter().any(|t| t == "Denied"),
        legacy_signer: str_at(old, "/spec/signerName") == LEGACY_UNKNOWN,
        duplicate_condition_types: has_duplicates(&types),
        empty_condition_type: types.iter().any(String::is_empty),
        arbitrary_certificate: bytes_at(new, "/status/certificate") == old_cert
            || validate_certificate(&old_cert).is_err(),
        unknown_usages: old_usages.iter().any(|u| !USAGES.contains(&u.as_str())),
        duplicate_usages: has_duplicates(&old_usages),
        ..Opts::default()
    }
}

/// ValidateCertificateSigningRequestCreate, but for the object meta
/// (kinds.rs checks that).
pub fn validate_create(csr: &Value) -> Vec<FieldError> {
    validate(csr, &Opts::default())
}

/// apivalidation.ValidateSignerName.
fn validate_signer_name(name: &str) -> Vec<FieldError> {
    const FIELD: &str = "spec.signerName";
    let mut errs = vec![];
    if name.is_empty() {
        return vec![FieldError::required(FIELD, "")];
    }
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() != 2 {
        return vec![FieldError::invalid(
            FIELD,
            json!(name),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )];
    }
    let (domain, path) = (segments[0], segments[1]);
    if domain.len() > 253 {
        errs.push(FieldError::invalid(
            FIELD,
            json!(domain),
            "must have at most 253 bytes",
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        if !is_dns_label(label) {
            let why = if label.len() > 63 {
                "must be no more than 63 characters"
            } else {
                LABEL_MSG
            };
            errs.push(FieldError::invalid(
                FIELD,
                json!(domain),
                &format!("validating label {label:?}: {why}"),
            ));
            break;
        }
    }
    if labels.len() < 2 {
        errs.push(FieldError::invalid(
            FIELD,
            json!(domain),
            "should be a domain with at least two segments separated by dots",
        ));
    }
    let max = 253usize.saturating_sub(domain.len() + 1);
    if path.len() > max {
        errs.push(FieldError::invalid(
            FIELD,
            json!(path),
            &format!("must have at most {max} bytes"),
        ));
    } else if !is_dns_subdomain(path) {
        errs.push(FieldError::invalid(FIELD, json!(path), SUBDOMAIN_MSG));
    }
    errs
}

/// validateCertificateSigningRequest (without the object meta).
fn validate(csr: &Value, opts: &Opts) -> Vec<FieldError> {
    let mut errs = vec![];
    let request = bytes_at(csr, "/spec/request");
    if let Err(why) = parse_request(&request) {
        errs.push(FieldError::invalid_shown(
            "spec.request",
            go_bytes(&request),
            &why,
        ));
    }
    let usages = usages(csr);
    if usages.is_empty() {
        errs.push(FieldError::required("spec.usages", ""));
    }
    if !opts.unknown_usages {
        for (i, u) in usages.iter().enumerate() {
            if !USAGES.contains(&u.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("spec.usages[{i}]"),
                    json!(u),
                    USAGES,
                ));
            }
        }
    }
    if !opts.duplicate_usages {
        for (i, u) in usages.iter().enumerate() {
            if usages[..i].contains(u) {
                errs.push(FieldError::duplicate(format!("spec.usages[{i}]"), json!(u)));
            }
        }
    }
    let signer = str_at(csr, "/spec/signerName");
    if !opts.legacy_signer && signer == LEGACY_UNKNOWN {
        errs.push(FieldError::invalid(
            "spec.signerName",
            json!(signer),
            "the legacy signerName is not allowed via this API version",
        ));
    } else {
        errs.extend(validate_signer_name(signer));
    }
    if let Some(secs) = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .filter(|s| *s < 600)
    {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            json!(secs),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    errs.extend(validate_conditions(csr, opts));
    if !opts.arbitrary_certificate {
        if let Err(why) = validate_certificate(&bytes_at(csr, "/status/certificate")) {
            errs.push(FieldError::invalid(
                "status.certificate",
                json!("<certificate data>"),
                &why,
            ));
        }
    }
    errs
}

/// validateConditions.
fn validate_conditions(csr: &Value, opts: &Opts) -> Vec<FieldError> {
    let mut errs = vec![];
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<String> = vec![];
    for (i, c) in conditions(csr).iter().enumerate() {
        let at = format!("status.conditions[{i}]");
        let t = c["type"].as_str().unwrap_or("");
        let status = c["status"].as_str().unwrap_or("");
        if !opts.empty_condition_type && t.is_empty() {
            errs.push(FieldError::required(format!("{at}.type"), ""));
        }
        let allowed = if TRUE_TYPES.contains(&t) {
            TRUE_ONLY
        } else {
            ALL_STATUSES
        };
        if status.is_empty() {
            errs.push(FieldError::required(format!("{at}.status"), ""));
        } else if !allowed.contains(&status) {
            errs.push(FieldError::not_supported(
                format!("{at}.status"),
                json!(status),
                allowed,
            ));
        }
        if !opts.both_approved_and_denied {
            let clash = match t {
                "Approved" => {
                    approved = true;
                    denied
                }
                "Denied" => {
                    denied = true;
                    approved
                }
                _ => false,
            };
            if clash {
                errs.push(FieldError::invalid(
                    format!("{at}.type"),
                    json!(t),
                    "Approved and Denied conditions are mutually exclusive",
                ));
            }
        }
        if !opts.duplicate_condition_types {
            if seen.iter().any(|s| s == t) {
                errs.push(FieldError::duplicate(format!("{at}.type"), json!(t)));
            }
            seen.push(t.to_string());
        }
    }
    errs
}

/// ValidateCertificateSigningRequest{,Status,Approval}Update (the object
/// meta aside).
pub fn validate_update(new: &Value, old: &Value, path: Path) -> Vec<FieldError> {
    let mut opts = options(new, Some(old));
    opts.certificate = path == Path::Status;
    opts.approval = path == Path::Approval;
    let mut errs = validate(new, &opts);
    for t in TRUE_TYPES {
        if of_type(new, t).len() < of_type(old, t).len() {
            errs.push(FieldError::forbidden(
                "status.conditions",
                &format!("updates may not remove a condition of type {t:?}"),
            ));
        }
    }
    if !opts.approval {
        for t in ["Approved", "Denied"] {
            let (n, o) = (of_type(new, t), of_type(old, t));
            if n.len() > o.len() {
                errs.push(FieldError::forbidden(
                    "status.conditions",
                    &format!("updates may not add a condition of type {t:?}"),
                ));
            } else if n.len() == o.len() && n != o {
                errs.push(FieldError::forbidden(
                    "status.conditions",
                    &format!(
                        "updates may not modify a condition of type {t:?}\n{}",
                        json!({ "old": o, "new": n })
                    ),
                ));
            }
        }
    }
    let (new_cert, old_cert) = (
        bytes_at(new, "/status/certificate"),
        bytes_at(old, "/status/certificate"),
    );
    if new_cert != old_cert {
        if !opts.certificate {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "updates may not set certificate content",
            ));
        } else if !old_cert.is_empty() {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }
    errs
}

// ----- the strategies -----

/// csrStrategy.PrepareForCreate: the requester's identity replaces whatever
/// the body said; no status.
pub fn prepare_for_create(csr: &mut Value, user: Option<&Value>) {
    if !csr["spec"].is_object() {
        csr["spec"] = json!({});
    }
    let spec = csr["spec"].as_object_mut().unwrap();
    for field in ["username", "uid", "groups", "extra"] {
        spec.remove(field);
    }
    if let Some(user) = user {
        for (from, to) in [
            ("username", "username"),
            ("uid", "uid"),
            ("groups", "groups"),
            ("extra", "extra"),
        ] {
            let value = &user[from];
            let empty = value.is_null()
                || value.as_str().is_some_and(str::is_empty)
                || value.as_array().is_some_and(Vec::is_empty)
                || value.as_object().is_some_and(|m| m.is_empty());
            if !empty {
                spec.insert(to.to_string(), value.clone());
            }
        }
    }
    csr["status"] = json!({});
}

/// populateConditionTimestamps.
fn populate_condition_timestamps(new: &mut Value, old: &Value) {
    let now = timestamp(jiff::Timestamp::now());
    let olds = conditions(old);
    let Some(conds) = new
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for c in conds.iter_mut().filter(|c| c.is_object()) {
        if c["lastUpdateTime"].is_null() {
            c["lastUpdateTime"] = now.clone();
        }
        if c["lastTransitionTime"].is_null() {
            let earlier = olds
                .iter()
                .find(|o| {
                    o["type"] == c["type"]
                        && o["status"] == c["status"]
                        && !o["lastTransitionTime"].is_null()
                })
                .map(|o| o["lastTransitionTime"].clone());
            c["lastTransitionTime"] = earlier.unwrap_or_else(|| now.clone());
        }
    }
}

/// csrStatusStrategy.PrepareForUpdate, once the new status is in place
/// (the spec is the old one already): the Approved and Denied conditions
/// stay as they were when their number did not change.
pub fn prepare_for_status_update(new: &mut Value, old: &Value) {
    for t in ["Approved", "Denied"] {
        let olds = of_type(old, t);
        let indices: Vec<usize> = conditions(new)
            .iter()
            .enumerate()
            .filter(|(_, c)| c["type"] == t)
            .map(|(i, _)| i)
            .collect();
        if olds.len() == indices.len() {
            for (i, o) in indices.into_iter().zip(olds) {
                new["status"]["conditions"][i] = o;
            }
        }
    }
    populate_condition_timestamps(new, old);
}

/// csrApprovalStrategy.PrepareForUpdate: `new` is the stored object; only
/// the conditions written change.
pub fn prepare_for_approval_update(new: &mut Value, conditions: Option<Value>, old: &Value) {
    if !new["status"].is_object() {
        new["status"] = json!({});
    }
    let status = new["status"].as_object_mut().unwrap();
    match conditions.filter(|c| !c.is_null()) {
        Some(c) => status.insert("conditions".into(), c),
        None => status.remove("conditions"),
    };
    populate_condition_timestamps(new, old);
}

// ----- the approver and signer -----

/// What the approver requires of a kubelet serving request (the usages and
/// subject rules of csrsigning's ValidateKubeletServingCSR, and only DNS and
/// IP subject alternative names).
fn check_kubelet_serving(csr: &Value) -> Result<Request, String> {
    let request = parse_request(&bytes_at(csr, "/spec/request"))?;
    if request.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    let cn = request.common_name.as_deref().unwrap_or("");
    if cn.strip_prefix("system:node:").unwrap_or("").is_empty() {
        return Err("subject common name does not begin with system:node:".into());
    }
    if let Some(kind) = request.other_sans.first() {
        return Err(format!("{kind} subjectAltNames are not allowed"));
    }
    if request.dns_names.is_empty() && request.ips.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    const ALLOWED: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
    let usages = usages(csr);
    if !usages.iter().any(|u| u == "server auth")
        || usages.iter().any(|u| !ALLOWED.contains(&u.as_str()))
    {
        return Err(format!(
            "usages did not match {ALLOWED:?} (\"key encipherment\" optional): {usages:?}"
        ));
    }
    Ok(request)
}

/// The certificate for an approved request: its subject and SANs, valid
/// from now for `lifetime` (or `spec.expirationSeconds` if shorter), with
/// the requested key usages and serverAuth.
fn issue(ca: &Pki, csr: &Value, request: &Request, lifetime: Duration) -> Result<String, String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(cn) = &request.common_name {
        dn.push(DnType::CommonName, cn.as_str());
    }
    for o in &request.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    params.distinguished_name = dn;
    for name in &request.dns_names {
        let name = name.clone().try_into().map_err(|e| format!("{e}"))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in &request.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let requested = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(|s| Duration::from_secs(s.max(0) as u64));
    let ttl = requested.map_or(lifetime, |r| r.min(lifetime));
    let now = Duration::from_secs(jiff::Timestamp::now().as_second().max(0) as u64);
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + now;
    params.not_after = params.not_before + ttl;
    let mut serial = random_bytes::<16>();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let usages = usages(csr);
    if usages.iter().any(|u| u == "digital signature") {
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    }
    if usages.iter().any(|u| u == "key encipherment") {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    ca.sign(&params, &request.key).map_err(|e| e.to_string())
}

fn condition(t: &str, reason: &str, message: &str) -> Value {
    json!({ "type": t, "status": "True", "reason": reason, "message": message })
}

/// One pass of the approver and the signer over every CSR for
/// [`KUBELET_SERVING`]: an undecided request is Approved (reason
/// `AutoApproved`) or Denied (`AutoDenied`); an approved one without a
/// certificate gets one from `ca`, or a `Failed` condition if the signer
/// will not sign it. Writes go through the `/approval` and `/status`
/// strategies. Returns whether anything was written.
pub fn auto_sign_pass(st: &mut Store, ca: &Pki, lifetime: Duration) -> bool {
    let kind = by_plural("certificatesigningrequests");
    let mut wrote = false;
    for mut csr in st.objects_of(kind, None) {
        if str_at(&csr, "/spec/signerName") != KUBELET_SERVING {
            continue;
        }
        let name = str_at(&csr, "/metadata/name").to_string();
        let decided = |csr: &Value, t: &str| !of_type(csr, t).is_empty();
        if decided(&csr, "Denied") || decided(&csr, "Failed") {
            continue;
        }
        let checked = check_kubelet_serving(&csr);
        if !decided(&csr, "Approved") {
            let mut conds = conditions(&csr);
            conds.push(match &checked {
                Ok(_) => condition(
                    "Approved",
                    "AutoApproved",
                    "Auto approving kubelet serving certificate after SubjectAccessReview.",
                ),
                Err(why) => condition("Denied", "AutoDenied", why),
            });
            csr["status"]["conditions"] = Value::Array(conds);
            match st.update(kind, None, &name, Sub::Approval, csr) {
                Ok((updated, _)) => csr = updated,
                Err(_) => continue,
            }
            wrote = true;
            if checked.is_err() {
                continue;
            }
        }
        if !str_at(&csr, "/status/certificate").is_empty() {
            continue;
        }
        match checked.and_then(|request| issue(ca, &csr, &request, lifetime)) {
            Ok(pem) => csr["status"]["certificate"] = json!(STANDARD.encode(pem)),
            Err(why) => {
                let mut conds = conditions(&csr);
                conds.push(condition("Failed", "SignerValidationFailure", &why));
                csr["status"]["conditions"] = Value::Array(conds);
            }
        }
        if st.update(kind, None, &name, Sub::Status, csr).is_ok() {
            wrote = true;
        }
    }
    wrote
}
