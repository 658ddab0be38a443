//! `aktualizr-rs tuf`: a generic TUF client on the metadata crate, speaking the client-under-test
//! protocol of the TUF conformance suite (theupdateframework/tuf-conformance, CLIENT-CLI.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aktualizr_rs_metadata::{names, Fetch, Limits, MetadataCache, Timestamp, TrustedSet, Updater};
use anyhow::{bail, Context as _, Result};

use aktualizr_rs_fsutil::atomic_write;

/// Fetches files relative to a base URL with reqwest, one request at a time, reading at most
/// the cap plus one byte.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    base: String,
}

/// An HTTP failure, with the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request failed (connection, TLS, timeout, body).
    #[error("GET {url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status other than 403/404.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
}

impl HttpFetcher {
    /// A fetcher for files under `base` (a trailing `/` is added if missing).
    pub fn new(client: reqwest::Client, base: &str) -> HttpFetcher {
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        HttpFetcher { client, base }
    }

    /// A plain HTTP(S) client with the timeouts the TUF client uses: a stalled connection fails
    /// (slow-retrieval attack) while a slow but moving one continues.
    pub fn default_client() -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")
    }
}

impl Fetch for HttpFetcher {
    type Error = HttpError;

    async fn fetch(&mut self, name: &str, max_len: u64) -> Result<Option<Vec<u8>>, HttpError> {
        let url = format!("{}{name}", self.base);
        let req_err = |source| HttpError::Request {
            url: url.clone(),
            source,
        };
        let mut resp = self.client.get(&url).send().await.map_err(req_err)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(HttpError::Status { url, status });
        }
        // Sized from Content-Length (never beyond the cap) so a large file is not copied
        // around while the buffer grows.
        let expected = resp
            .content_length()
            .unwrap_or(0)
            .min(max_len.saturating_add(1));
        let mut body = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(req_err)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max_len {
                break;
            }
        }
        Ok(Some(body))
    }
}

/// Trusted metadata in a directory, under non-versioned names, written atomically.
#[derive(Debug, Clone)]
pub struct DirCache {
    dir: PathBuf,
}

impl DirCache {
    /// A cache in `dir`.
    pub fn new(dir: &Path) -> DirCache {
        DirCache {
            dir: dir.to_owned(),
        }
    }
}

impl MetadataCache for DirCache {
    type Error = std::io::Error;

    fn load(&self, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(file)).ok()
    }

    fn store(&mut self, file: &str, bytes: &[u8]) -> std::io::Result<()> {
        atomic_write(&self.dir.join(file), bytes)
    }

    fn remove(&mut self, file: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `init`: trust `trusted_root`. It is stored as given (the protocol expects no checks, and the
/// workflow verifies it before every use); a root that does not verify gets a warning now.
pub fn init(metadata_dir: &Path, trusted_root: &Path) -> Result<()> {
    let bytes = std::fs::read(trusted_root)
        .with_context(|| format!("reading {}", trusted_root.display()))?;
    if let Err(e) = TrustedSet::new(&bytes, Timestamp::now()) {
        tracing::warn!(
            "{}: {e}; refresh will fail until a valid root is given",
            trusted_root.display()
        );
    }
    std::fs::create_dir_all(metadata_dir)
        .with_context(|| format!("creating {}", metadata_dir.display()))?;
    atomic_write(&metadata_dir.join("root.json"), &bytes)
        .with_context(|| format!("writing {}/root.json", metadata_dir.display()))
}

fn updater(
    metadata_dir: &Path,
    metadata_url: &str,
    client: &reqwest::Client,
) -> Result<Updater<HttpFetcher, DirCache>> {
    let fetcher = HttpFetcher::new(client.clone(), metadata_url);
    Updater::new(
        fetcher,
        DirCache::new(metadata_dir),
        Limits::default(),
        Timestamp::now(),
    )
    .with_context(|| format!("loading trusted metadata from {}", metadata_dir.display()))
}

/// `refresh`: the full top-level refresh.
pub async fn refresh(metadata_dir: &Path, metadata_url: &str) -> Result<()> {
    let client = HttpFetcher::default_client()?;
    let mut up = updater(metadata_dir, metadata_url, &client)?;
    up.refresh()
        .await
        .with_context(|| format!("refreshing metadata from {metadata_url}"))?;
    // The process ends next: freeing 100,000 parsed targets one by one would only cost time.
    std::mem::forget(up);
    Ok(())
}

/// `download`: refresh, then find, download and verify each target in order.
pub async fn download(
    metadata_dir: &Path,
    metadata_url: &str,
    target_names: &[String],
    target_base_url: &str,
    target_dir: &Path,
) -> Result<()> {
    let client = HttpFetcher::default_client()?;
    let mut up = updater(metadata_dir, metadata_url, &client)?;
    up.refresh()
        .await
        .with_context(|| format!("refreshing metadata from {metadata_url}"))?;
    let mut targets = HttpFetcher::new(client, target_base_url);
    std::fs::create_dir_all(target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    for name in target_names {
        let info = up
            .find_target(name)
            .await
            .with_context(|| format!("looking up target {name:?}"))?;
        let Some(info) = info else {
            bail!("target {name:?} is not listed by any role on its delegation path");
        };
        let path = target_dir.join(names::encode_component(name));
        if let Ok(existing) = std::fs::read(&path) {
            if info.verify(name, &existing).is_ok() {
                tracing::info!(target = %name, "already downloaded");
                continue;
            }
        }
        let url_path = up.target_url_path(name, &info);
        let bytes = targets
            .fetch(&url_path, info.length)
            .await
            .with_context(|| format!("downloading target {name:?}"))?
            .with_context(|| {
                format!("target {name:?}: {url_path} not found on {target_base_url}")
            })?;
        info.verify(name, &bytes)
            .with_context(|| format!("verifying target {name:?}"))?;
        atomic_write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(target = %name, bytes = bytes.len(), "downloaded");
    }
    Ok(())
}
