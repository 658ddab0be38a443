//! TUF and Uptane metadata: verification and signing, without I/O.
//!
//! This crate decides whether a device trusts metadata. It takes bytes and the current time
//! and returns verified metadata or a typed [`Error`]. It does no I/O of its own: the
//! [`Updater`] runs the TUF client workflow over a [`Fetch`] and a [`MetadataCache`] that the
//! caller implements (with HTTP and files in the daemon, in memory in tests).
//!
//! What it is not: an HTTP client, a file store, or a repository server.
//!
//! ```
//! use aktualizr_rs_metadata::{sign_envelope, Scheme, SigningKey, Timestamp, TrustedSet};
//! use serde_json::json;
//!
//! let key = SigningKey::generate(Scheme::Ed25519).unwrap();
//! let role = json!({"keyids": [key.keyid()], "threshold": 1});
//! let root = json!({
//!     "_type": "root", "spec_version": "1.0.31", "version": 1,
//!     "expires": "2030-01-01T00:00:00Z", "consistent_snapshot": true,
//!     "keys": {key.keyid(): key.public().to_json()},
//!     "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role},
//! });
//! let bytes = sign_envelope(&root, &[&key]).unwrap();
//! let now = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
//! let trusted = TrustedSet::new(&bytes, now).unwrap();
//! assert_eq!(trusted.root().common.version, 1);
//! ```

pub mod canonical;
mod crypto;
mod error;
mod glob;
pub mod names;
mod schema;
mod sign;
mod time;
mod trusted;
mod updater;
pub mod uptane;

pub use crypto::{key_id, pem_encode, PublicKey, Scheme, SigningKey};
pub use error::{Attack, Error, Result};
pub use glob::path_matches;
pub use schema::{
    Common, DelegatedRole, Delegations, Envelope, MetaFile, RoleKeys, Root, Signature,
    SnapshotMeta, SuccinctRoles, TargetFile, TargetsMeta, TimestampMeta, TOP_LEVEL_ROLES,
};
pub use sign::sign_envelope;
pub use time::Timestamp;
pub use trusted::{TrustedSet, Verified};
pub use updater::{Fetch, Limits, MetadataCache, Updater};
