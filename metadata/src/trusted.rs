//! The trusted metadata of one repository, updated role by role as the TUF client workflow
//! (specification §5.3-5.6) requires. Every `update_*` takes the bytes received; nothing here
//! does I/O.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::schema::{Envelope, Root, SnapshotMeta, TargetsMeta, TimestampMeta};
use crate::time::Timestamp;

/// Metadata that passed verification.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    /// The parsed metadata.
    pub meta: T,
    /// The canonical bytes and signatures, kept to verify a delegated role again against
    /// another delegator.
    envelope: Envelope,
}

#[derive(Debug, Clone)]
struct TrustedTargets {
    verified: Verified<TargetsMeta>,
    /// The delegators whose keys this role has been verified against.
    verified_by: Vec<String>,
}

/// The trusted metadata of one repository.
///
/// Built from a trusted root; each update verifies new bytes against what is already trusted
/// and the reference time given at construction.
#[derive(Debug, Clone)]
pub struct TrustedSet {
    now: Timestamp,
    root: Verified<Root>,
    timestamp: Option<Verified<TimestampMeta>>,
    snapshot: Option<Verified<SnapshotMeta>>,
    targets: HashMap<String, TrustedTargets>,
}

fn parse<T>(
    role: &str,
    bytes: &[u8],
    f: impl FnOnce(&str, &str) -> Result<T>,
) -> Result<(T, Envelope)> {
    // Canonical form first: what has none (or has a duplicate key) is never interpreted.
    let (env, signed) = Envelope::parse(role, bytes)?;
    Ok((f(role, signed)?, env))
}

fn expired(role: &str, expires: Timestamp, now: Timestamp) -> Error {
    Error::Expired {
        role: role.to_owned(),
        expires,
        now,
    }
}

impl TrustedSet {
    /// Starts from a root the caller trusts (shipped with the device, or stored by an earlier
    /// run). It must be signed by a threshold of its own root keys; its expiry is not checked
    /// here (only the final root of the chain must be unexpired).
    pub fn new(root_bytes: &[u8], now: Timestamp) -> Result<TrustedSet> {
        let (root, envelope) = parse("root", root_bytes, Root::from_raw)?;
        root.verify_role("root", &envelope)?;
        Ok(TrustedSet {
            now,
            root: Verified {
                meta: root,
                envelope,
            },
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
        })
    }

    /// The reference time of expiry checks.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The trusted root.
    pub fn root(&self) -> &Root {
        &self.root.meta
    }

    /// The trusted timestamp, if loaded.
    pub fn timestamp(&self) -> Option<&TimestampMeta> {
        self.timestamp.as_ref().map(|v| &v.meta)
    }

    /// The trusted snapshot, if loaded.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|v| &v.meta)
    }

    /// A trusted targets role (`targets` or a delegated role), if loaded.
    pub fn targets(&self, role: &str) -> Option<&TargetsMeta> {
        self.targets.get(role).map(|t| &t.verified.meta)
    }

    /// Verifies root version N+1: signed by a threshold of the trusted root's keys and of its
    /// own, with exactly the next version. Expiry is not checked (see [`Self::check_root_expiry`]).
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<&Root> {
        if self.timestamp.is_some() {
            return Err(Error::Workflow("root cannot be updated after timestamp"));
        }
        let (new, envelope) = parse("root", bytes, Root::from_raw)?;
        self.root.meta.verify_role("root", &envelope)?;
        let expected = self.root.meta.common.version + 1;
        if new.common.version != expected {
            return Err(Error::VersionMismatch {
                role: "root".into(),
                expected,
                found: new.common.version,
            });
        }
        new.verify_role("root", &envelope)?;
        self.root = Verified {
            meta: new,
            envelope,
        };
        Ok(&self.root.meta)
    }

    /// Fails if the (final) trusted root has expired.
    pub fn check_root_expiry(&self) -> Result<()> {
        let c = &self.root.meta.common;
        if c.is_expired(self.now) {
            return Err(expired("root", c.expires, self.now));
        }
        Ok(())
    }

    /// Verifies a timestamp against the root and the trusted timestamp.
    ///
    /// A new timestamp with the same version as the trusted one gives
    /// [`Error::EqualVersion`] and the trusted one stays. An expired timestamp is kept as
    /// trusted (for rollback checks of the next one) but the call fails with [`Error::Expired`].
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<&TimestampMeta> {
        if self.snapshot.is_some() {
            return Err(Error::Workflow(
                "timestamp cannot be updated after snapshot",
            ));
        }
        self.check_root_expiry()?;
        let (new, envelope) = parse("timestamp", bytes, TimestampMeta::from_raw)?;
        self.root.meta.verify_role("timestamp", &envelope)?;
        if let Some(old) = &self.timestamp {
            let (trusted, found) = (old.meta.common.version, new.common.version);
            if found < trusted {
                return Err(Error::Rollback {
                    role: "timestamp".into(),
                    trusted,
                    new: found,
                });
            }
            if found == trusted {
                return Err(Error::EqualVersion {
                    role: "timestamp".into(),
                    version: found,
                });
            }
            let (trusted, found) = (old.meta.snapshot.version, new.snapshot.version);
            if found < trusted {
                return Err(Error::Rollback {
                    role: "snapshot".into(),
                    trusted,
                    new: found,
                });
            }
        }
        let expires = new.common.expires;
        self.timestamp = Some(Verified {
            meta: new,
            envelope,
        });
        if expires <= self.now {
            return Err(expired("timestamp", expires, self.now));
        }
        Ok(self.timestamp().expect("just set"))
    }

    fn final_timestamp(&self) -> Result<&TimestampMeta> {
        let ts = self
            .timestamp()
            .ok_or(Error::Workflow("snapshot needs a trusted timestamp"))?;
        if ts.common.is_expired(self.now) {
            return Err(expired("timestamp", ts.common.expires, self.now));
        }
        Ok(ts)
    }

    /// Verifies a snapshot against the timestamp (length and hashes, unless `from_local_cache`,
    /// where the timestamp may already list a newer snapshot), the root, and the trusted
    /// snapshot (no targets role may disappear or go down).
    ///
    /// The new snapshot is kept as trusted before the final checks (expiry, version equal to
    /// the timestamp's), so that a cached snapshot that is no longer current still protects
    /// the next one against rollback.
    pub fn update_snapshot(
        &mut self,
        bytes: &[u8],
        from_local_cache: bool,
    ) -> Result<&SnapshotMeta> {
        if self.targets.contains_key("targets") {
            return Err(Error::Workflow("snapshot cannot be updated after targets"));
        }
        let meta = self.final_timestamp()?.snapshot.clone();
        if !from_local_cache {
            meta.verify("snapshot", bytes)?;
        }
        let (new, envelope) = parse("snapshot", bytes, SnapshotMeta::from_raw)?;
        self.root.meta.verify_role("snapshot", &envelope)?;
        if let Some(old) = &self.snapshot {
            for (name, old_file) in &old.meta.meta {
                let Some(new_file) = new.meta.get(name) else {
                    return Err(Error::RoleRemoved {
                        role: name.clone(),
                        trusted_snapshot: old.meta.common.version,
                    });
                };
                if new_file.version < old_file.version {
                    return Err(Error::Rollback {
                        role: name.trim_end_matches(".json").to_owned(),
                        trusted: old_file.version,
                        new: new_file.version,
                    });
                }
            }
        }
        self.snapshot = Some(Verified {
            meta: new,
            envelope,
        });
        self.final_snapshot()?;
        Ok(self.snapshot().expect("just set"))
    }

    fn final_snapshot(&self) -> Result<&SnapshotMeta> {
        let snap = self
            .snapshot()
            .ok_or(Error::Workflow("targets need a trusted snapshot"))?;
        if snap.common.is_expired(self.now) {
            return Err(expired("snapshot", snap.common.expires, self.now));
        }
        let expected = self.final_timestamp()?.snapshot.version;
        if snap.common.version != expected {
            return Err(Error::VersionMismatch {
                role: "snapshot".into(),
                expected,
                found: snap.common.version,
            });
        }
        Ok(snap)
    }

    /// Verifies targets metadata of `role` (`targets`, delegated by `root`, or a delegated
    /// role, delegated by `delegator`) against the snapshot (listed, length, hashes, version),
    /// the delegator's keys, and expiry.
    pub fn update_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<&TargetsMeta> {
        let snap = self.final_snapshot()?;
        let file = crate::names::role_file(role);
        let meta = snap.meta.get(&file).ok_or_else(|| Error::NotListed {
            role: role.to_owned(),
            listed_in: "snapshot".into(),
        })?;
        meta.verify(role, bytes)?;
        let expected = meta.version;
        let (new, envelope) = parse(role, bytes, TargetsMeta::from_raw)?;
        self.verify_against(role, delegator, &envelope)?;
        if new.common.version != expected {
            return Err(Error::VersionMismatch {
                role: role.to_owned(),
                expected,
                found: new.common.version,
            });
        }
        if new.common.is_expired(self.now) {
            return Err(expired(role, new.common.expires, self.now));
        }
        let entry = TrustedTargets {
            verified: Verified {
                meta: new,
                envelope,
            },
            verified_by: vec![delegator.to_owned()],
        };
        self.targets.insert(role.to_owned(), entry);
        Ok(self.targets(role).expect("just set"))
    }

    /// Verifies the targets of an Uptane Director that serves only root and targets (as
    /// aktualizr's servers do): signed by a threshold of the root's targets keys, not expired,
    /// no delegations (a Director delegates nothing), and a version not below
    /// `trusted_version`, the version of the Director targets trusted before (rollback).
    pub fn update_director_targets(
        &mut self,
        bytes: &[u8],
        trusted_version: Option<u64>,
    ) -> Result<&TargetsMeta> {
        self.check_root_expiry()?;
        let (new, envelope) = parse("targets", bytes, TargetsMeta::from_raw)?;
        self.root.meta.verify_role("targets", &envelope)?;
        if let Some(trusted) = trusted_version {
            if new.common.version < trusted {
                return Err(Error::Rollback {
                    role: "targets".into(),
                    trusted,
                    new: new.common.version,
                });
            }
        }
        if new.common.is_expired(self.now) {
            return Err(expired("targets", new.common.expires, self.now));
        }
        if new.delegations.is_some() {
            return Err(Error::Malformed {
                role: "targets".into(),
                reason: "a Director's targets must not delegate".into(),
            });
        }
        let entry = TrustedTargets {
            verified: Verified {
                meta: new,
                envelope,
            },
            verified_by: vec!["root".to_owned()],
        };
        self.targets.insert("targets".to_owned(), entry);
        Ok(self.targets("targets").expect("just set"))
    }

    fn verify_against(&self, role: &str, delegator: &str, envelope: &Envelope) -> Result<()> {
        if delegator == "root" {
            if role != "targets" {
                return Err(Error::NotListed {
                    role: role.into(),
                    listed_in: "root".into(),
                });
            }
            return self.root.meta.verify_role("targets", envelope);
        }
        let parent = self
            .targets(delegator)
            .ok_or(Error::Workflow("delegator is not trusted"))?;
        parent.verify_delegate(delegator, role, envelope)
    }

    /// A targets role already trusted, checked against `delegator`: when the role was verified
    /// only against other delegators, its signatures are verified again with `delegator`'s keys
    /// for it. `Ok(None)` when the role is not loaded yet.
    pub fn trusted_targets_via(
        &mut self,
        role: &str,
        delegator: &str,
    ) -> Result<Option<&TargetsMeta>> {
        let Some(entry) = self.targets.get(role) else {
            return Ok(None);
        };
        if !entry.verified_by.iter().any(|d| d == delegator) {
            self.verify_against(role, delegator, &entry.verified.envelope)?;
            if let Some(e) = self.targets.get_mut(role) {
                e.verified_by.push(delegator.to_owned());
            }
        }
        Ok(self.targets(role))
    }
}
