//! Shared-credential provisioning, as the Linux microPlatform instructions use it:
//! `[provision] provision_path` names a `credentials.zip` holding `autoprov_credentials.p12`
//! (a certificate and key shared by a fleet, and the CA) and `autoprov.url` (the server).
//! With the shared identity the client asks `POST <provision server>/devices`
//! `{"deviceId", "ttl"}` for the device's own credentials (PKCS#12) and keeps them in the
//! storage directory (`client.pem`, `pkey.pem`, `root.crt`, written atomically); from then
//! on only the device's own identity is used.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use std::time::Duration;

use aktualizr_rs_fsutil::{atomic_write, atomic_write_private, create_private_dir};
use aktualizr_rs_metadata::pem_encode;
use anyhow::{bail, Context as _, Result};

use crate::config::Config;

/// A certificate, its key and the CA, as PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
    /// The CA certificate(s).
    pub ca: String,
}

/// The HTTP client of a device: mutual TLS with `cert` + `key` (PEM), trusting only `ca`,
/// with the timeouts and user agent the client uses for every server request.
pub fn mtls_client(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<reqwest::Client> {
    let mut identity = cert.to_vec();
    identity.extend_from_slice(key);
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca).context("parsing the CA certificate")?,
        )
        .identity(
            reqwest::Identity::from_pem(&identity)
                .context("parsing the client certificate and key")?,
        )
        .connect_timeout(Duration::from_secs(60))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("aktualizr-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// Reads a PKCS#12 bundle: the key, its certificate, and the other certificates as the CA.
pub fn identity_from_p12(data: &[u8], password: &str) -> Result<Identity> {
    let store = p12_keystore::KeyStore::from_pkcs12(data, password)
        .map_err(|e| anyhow::anyhow!("reading PKCS#12: {e}"))?;
    let (_, chain) = store
        .private_key_chain()
        .context("the PKCS#12 bundle has no private key")?;
    let leaf = chain
        .chain()
        .first()
        .context("the PKCS#12 bundle has no certificate for its key")?;
    let mut ca = String::new();
    for c in &chain.chain()[1..] {
        ca.push_str(&pem_encode(c.as_der(), "CERTIFICATE"));
    }
    for (_, entry) in store.entries() {
        if let p12_keystore::KeyStoreEntry::Certificate(c) = entry {
            if c != leaf {
                ca.push_str(&pem_encode(c.as_der(), "CERTIFICATE"));
            }
        }
    }
    Ok(Identity {
        cert: pem_encode(leaf.as_der(), "CERTIFICATE"),
        key: pem_encode(chain.key(), "PRIVATE KEY"),
        ca,
    })
}

/// The files of the device's own credentials in `storage`.
pub fn stored_paths(storage: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        storage.join("client.pem"),
        storage.join("pkey.pem"),
        storage.join("root.crt"),
    )
}

/// Reads `credentials.zip`: the shared identity and the server URL (`autoprov.url`).
pub fn read_credentials_zip(path: &Path, password: &str) -> Result<(Identity, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("reading {} as zip", path.display()))?;
    let mut read = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .with_context(|| format!("{}: no {name} in the archive", path.display()))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    };
    let p12 = read("autoprov_credentials.p12")?;
    let url = String::from_utf8_lossy(&read("autoprov.url")?)
        .trim()
        .to_owned();
    let identity = identity_from_p12(&p12, password)
        .with_context(|| format!("{}: autoprov_credentials.p12", path.display()))?;
    Ok((identity, url))
}

/// Takes `tls.server` from the credentials archive when the configuration does not set it.
pub fn apply_server_url(config: &mut Config) -> Result<()> {
    let zip = config.str("provision.provision_path").to_owned();
    if zip.is_empty() || !config.str("tls.server").is_empty() {
        return Ok(());
    }
    let (_, url) = read_credentials_zip(Path::new(&zip), config.str("provision.p12_password"))?;
    config.set_server(&url);
    Ok(())
}

/// Provisions the device with the shared credentials when it has no identity yet: nothing to
/// do when `[import]` names a certificate or the storage holds one.
pub async fn ensure_device_credentials(
    config: &Config,
    storage: &Path,
    device_id: &str,
) -> Result<()> {
    let zip = config.str("provision.provision_path");
    if zip.is_empty() || config.import_path("import.tls_clientcert_path").is_some() {
        return Ok(());
    }
    let (cert_path, key_path, ca_path) = stored_paths(storage);
    if cert_path.exists() && key_path.exists() && ca_path.exists() {
        return Ok(());
    }
    let (shared, _) = read_credentials_zip(Path::new(zip), config.str("provision.p12_password"))?;
    let client = mtls_client(
        shared.cert.as_bytes(),
        shared.key.as_bytes(),
        shared.ca.as_bytes(),
    )
    .context("the shared identity in the credentials archive")?;
    let url = format!(
        "{}/devices",
        config.str("provision.server").trim_end_matches('/')
    );
    let ttl: u64 = config.str("provision.expiry_days").parse().unwrap_or(36000);
    let body = serde_json::json!({"deviceId": device_id, "ttl": ttl});
    let resp = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "registering device {device_id:?} at {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let own = identity_from_p12(&bytes, "").context("the device credentials from the server")?;
    create_private_dir(storage).with_context(|| format!("creating {}", storage.display()))?;
    let write = |path: &Path, text: &str, private: bool| {
        let written = if private {
            atomic_write_private(path, text.as_bytes())
        } else {
            atomic_write(path, text.as_bytes())
        };
        written.with_context(|| format!("writing {}", path.display()))
    };
    write(&ca_path, &own.ca, false)?;
    write(&cert_path, &own.cert, false)?;
    write(&key_path, &own.key, true)?;
    tracing::info!(device_id, "provisioned with the shared credentials");
    Ok(())
}
