//! The TUF client workflow over one fetch seam: refresh the top-level metadata, then search
//! the delegations for targets.

use std::collections::HashSet;
use std::future::Future;

use crate::error::{Error, Result};
use crate::names::{encode_component, metadata_url_name, role_file, target_url_path};
use crate::schema::{RoleKeys, TargetFile};
use crate::time::Timestamp;
use crate::trusted::TrustedSet;

/// Where metadata comes from: the only I/O of the workflow.
pub trait Fetch {
    /// The fetcher's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Fetches `name` (already percent-encoded, relative to the repository's metadata base).
    /// Reads at most `max_len + 1` bytes, so that an over-long answer is seen as such without
    /// reading all of it. `Ok(None)` means the file does not exist (HTTP 403/404).
    fn fetch(
        &mut self,
        name: &str,
        max_len: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, Self::Error>>;
}

/// Where trusted metadata is kept between runs, byte for byte as received.
///
/// File names are `root.json`, `timestamp.json`, `snapshot.json`, `targets.json` and
/// `<percent-encoded role>.json`. Implementations must write atomically.
pub trait MetadataCache {
    /// The cache's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stored bytes of `file`, if any.
    fn load(&self, file: &str) -> Option<Vec<u8>>;
    /// Replaces `file` with `bytes`.
    fn store(&mut self, file: &str, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Removes `file`; removing a file that does not exist succeeds.
    fn remove(&mut self, file: &str) -> Result<(), Self::Error>;
}

/// Size and count limits of the workflow.
///
/// The defaults are python-tuf's `ngclient.UpdaterConfig` (tuf 5.x-7.x), the client the TUF
/// conformance suite was written against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Root versions fetched in one refresh at most (python-tuf: 256).
    pub max_root_rotations: u64,
    /// Targets roles visited in one target search at most (python-tuf: 32).
    pub max_delegations: u64,
    /// Bytes of one root version (python-tuf: 512,000).
    pub root_max_length: u64,
    /// Bytes of the timestamp (python-tuf: 16,384).
    pub timestamp_max_length: u64,
    /// Bytes of the snapshot when the timestamp does not list its length (python-tuf: 2,000,000).
    pub snapshot_max_length: u64,
    /// Bytes of a targets role when the snapshot does not list its length (python-tuf: 5,000,000).
    pub targets_max_length: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: 256,
            max_delegations: 32,
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
        }
    }
}

/// A TUF client for one repository.
#[derive(Debug)]
pub struct Updater<F, C> {
    fetcher: F,
    cache: C,
    limits: Limits,
    trusted: TrustedSet,
    refreshed: bool,
}

fn fetch_err<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Fetch {
        name: name.to_owned(),
        source: Box::new(e),
    }
}

fn store_err<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Store {
        name: name.to_owned(),
        source: Box::new(e),
    }
}

impl<F: Fetch, C: MetadataCache> Updater<F, C> {
    /// Starts from the trusted `root.json` in `cache`.
    pub fn new(fetcher: F, cache: C, limits: Limits, now: Timestamp) -> Result<Self> {
        let root = cache.load("root.json").ok_or(Error::Missing {
            name: "trusted root.json in the metadata cache".into(),
        })?;
        let trusted = TrustedSet::new(&root, now)?;
        Ok(Updater {
            fetcher,
            cache,
            limits,
            trusted,
            refreshed: false,
        })
    }

    /// The trusted metadata.
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// The metadata cache.
    pub fn cache(&self) -> &C {
        &self.cache
    }

    async fn fetch(&mut self, name: &str, max_len: u64) -> Result<Vec<u8>> {
        let bytes = self
            .fetcher
            .fetch(name, max_len)
            .await
            .map_err(fetch_err(name))?
            .ok_or_else(|| Error::Missing {
                name: name.to_owned(),
            })?;
        if bytes.len() as u64 > max_len {
            return Err(Error::LengthMismatch {
                role: name.to_owned(),
                expected: max_len,
                found: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    fn store(&mut self, file: &str, bytes: &[u8]) -> Result<()> {
        self.cache.store(file, bytes).map_err(store_err(file))
    }

    /// The full top-level refresh: root chain, timestamp, snapshot, top-level targets.
    pub async fn refresh(&mut self) -> Result<()> {
        self.load_root().await?;
        self.load_timestamp().await?;
        self.load_snapshot().await?;
        self.load_targets("targets", "root").await?;
        self.refreshed = true;
        Ok(())
    }

    async fn load_root(&mut self) -> Result<()> {
        let keys_of =
            |t: &TrustedSet, role: &str| -> Option<RoleKeys> { t.root().roles.get(role).cloned() };
        let same = |a: &Option<RoleKeys>, b: &Option<RoleKeys>| match (a, b) {
            (Some(a), Some(b)) => a.keyids == b.keyids && a.threshold == b.threshold,
            _ => false,
        };
        let before = (
            keys_of(&self.trusted, "timestamp"),
            keys_of(&self.trusted, "snapshot"),
        );
        let first = self.trusted.root().common.version + 1;
        for version in first..first.saturating_add(self.limits.max_root_rotations) {
            let name = metadata_url_name("root", Some(version));
            let max = self.limits.root_max_length;
            let bytes = match self
                .fetcher
                .fetch(&name, max)
                .await
                .map_err(fetch_err(&name))?
            {
                None => break,
                Some(b) if b.len() as u64 > max => {
                    return Err(Error::LengthMismatch {
                        role: name,
                        expected: max,
                        found: b.len() as u64,
                    })
                }
                Some(b) => b,
            };
            self.trusted.update_root(&bytes)?;
            self.store("root.json", &bytes)?;
        }
        self.trusted.check_root_expiry()?;
        // Spec §5.3.11: after a rotation of the timestamp or snapshot keys, forget the trusted
        // timestamp and snapshot, so a fast-forward attack that was signed by the old keys
        // cannot block updates.
        let after = (
            keys_of(&self.trusted, "timestamp"),
            keys_of(&self.trusted, "snapshot"),
        );
        if !same(&before.0, &after.0) || !same(&before.1, &after.1) {
            for file in ["timestamp.json", "snapshot.json"] {
                self.cache.remove(file).map_err(store_err(file))?;
            }
        }
        Ok(())
    }

    async fn load_timestamp(&mut self) -> Result<()> {
        if let Some(local) = self.cache.load("timestamp.json") {
            // A cached timestamp that fails verification is ignored; an expired one stays
            // trusted for the rollback check of the new one.
            let _ = self.trusted.update_timestamp(&local);
        }
        let bytes = self
            .fetch("timestamp.json", self.limits.timestamp_max_length)
            .await?;
        match self.trusted.update_timestamp(&bytes) {
            Ok(_) => self.store("timestamp.json", &bytes),
            // Same version: nothing changed; the trusted timestamp stays.
            Err(Error::EqualVersion { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn load_snapshot(&mut self) -> Result<()> {
        if let Some(local) = self.cache.load("snapshot.json") {
            if self.trusted.update_snapshot(&local, true).is_ok() {
                return Ok(());
            }
        }
        let meta = &self
            .trusted
            .timestamp()
            .ok_or(Error::Workflow("snapshot needs a trusted timestamp"))?
            .snapshot;
        let max = meta.length.unwrap_or(self.limits.snapshot_max_length);
        let version = self
            .trusted
            .root()
            .consistent_snapshot
            .then_some(meta.version);
        let name = metadata_url_name("snapshot", version);
        let bytes = self.fetch(&name, max).await?;
        self.trusted.update_snapshot(&bytes, false)?;
        self.store("snapshot.json", &bytes)
    }

    async fn load_targets(&mut self, role: &str, delegator: &str) -> Result<()> {
        if self.trusted.trusted_targets_via(role, delegator)?.is_some() {
            return Ok(());
        }
        let file = format!("{}.json", encode_component(role));
        if let Some(local) = self.cache.load(&file) {
            if self.trusted.update_targets(&local, role, delegator).is_ok() {
                return Ok(());
            }
        }
        let snapshot = self
            .trusted
            .snapshot()
            .ok_or(Error::Workflow("targets need a trusted snapshot"))?;
        let meta = snapshot
            .meta
            .get(&role_file(role))
            .ok_or_else(|| Error::NotListed {
                role: role.to_owned(),
                listed_in: "snapshot".into(),
            })?;
        let max = meta.length.unwrap_or(self.limits.targets_max_length);
        let version = self
            .trusted
            .root()
            .consistent_snapshot
            .then_some(meta.version);
        let name = metadata_url_name(role, version);
        let bytes = self.fetch(&name, max).await?;
        self.trusted.update_targets(&bytes, role, delegator)?;
        self.store(&file, &bytes)
    }

    /// Finds `path` through the delegations: a pre-order depth-first search from the top-level
    /// targets, fetching each role only when the search reaches it, honouring `terminating`,
    /// visiting at most [`Limits::max_delegations`] roles. Refreshes first if that has not been
    /// done. `Ok(None)` when no role on the search lists the target.
    pub async fn find_target(&mut self, path: &str) -> Result<Option<TargetFile>> {
        if !self.refreshed {
            self.refresh().await?;
        }
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: HashSet<String> = HashSet::new();
        let mut budget = self.limits.max_delegations;
        while budget > 0 {
            let Some((role, delegator)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(&role, &delegator).await?;
            let targets = self
                .trusted
                .targets(&role)
                .ok_or(Error::Workflow("role not loaded"))?;
            if let Some(found) = targets.target(path) {
                return Ok(Some(found.clone()));
            }
            budget -= 1;
            let mut children = Vec::new();
            if let Some(d) = &targets.delegations {
                for (child, terminating) in d.roles_for(path) {
                    children.push((child, role.clone()));
                    if terminating {
                        to_visit.clear();
                        break;
                    }
                }
            }
            visited.insert(role);
            to_visit.extend(children.into_iter().rev());
        }
        Ok(None)
    }

    /// The path of a target relative to the targets base URL (encoded; with the hash prefix
    /// when the repository uses consistent snapshots).
    pub fn target_url_path(&self, path: &str, target: &TargetFile) -> String {
        let hash = self
            .trusted
            .root()
            .consistent_snapshot
            .then(|| target.hashes.first().map(|(_, h)| h.as_str()))
            .flatten();
        target_url_path(path, hash)
    }
}
