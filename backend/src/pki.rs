//! TLS identities: the backend CA, the server certificate (127.0.0.1 and localhost) and
//! device certificates (CN = device ID), all ECDSA P-256 (what every TLS stack on a device
//! accepts, libcurl-gnutls in libostree included).

use std::path::Path;

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::repo::{write_bytes, write_private};

fn validity(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
}

/// Creates `pki/ca.{pem,key}` and `pki/server.{pem,key}` in `dir`.
pub fn init(dir: &Path) -> Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "uptane-repo device CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    let ca = p.self_signed(&ca_key)?;
    write_bytes(&dir.join("pki/ca.pem"), ca.pem().as_bytes())?;
    write_private(&dir.join("pki/ca.key"), ca_key.serialize_pem().as_bytes())?;

    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut p);
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    write_bytes(&dir.join("pki/server.pem"), cert.pem().as_bytes())?;
    write_private(&dir.join("pki/server.key"), key.serialize_pem().as_bytes())
}

/// Issues a client certificate with CN `device` signed by the backend CA; returns the
/// certificate and key PEM.
pub fn issue_device(dir: &Path, device: &str) -> Result<(String, String)> {
    let read = |rel: &str| {
        std::fs::read_to_string(dir.join(rel))
            .with_context(|| format!("reading {}", dir.join(rel).display()))
    };
    let ca_key = KeyPair::from_pem(&read("pki/ca.key")?)?;
    let ca = CertificateParams::from_ca_cert_pem(&read("pki/ca.pem")?)?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, device);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut p);
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
