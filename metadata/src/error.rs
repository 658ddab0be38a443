//! The one error type of this crate.

use crate::time::Timestamp;

/// Everything that can make metadata untrustworthy, or make a request of this crate invalid.
///
/// Security-relevant failures are structured: they name the role, the rule and the values, so a
/// caller can report them (Uptane version reports carry them as attack classes, see
/// [`Error::attack`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not JSON, or not metadata of the expected shape.
    #[error("{role}: malformed metadata: {reason}")]
    Malformed {
        /// The role whose metadata was being parsed.
        role: String,
        /// What is wrong, with the field name.
        reason: String,
    },
    /// The metadata could not be put in canonical JSON form (for example it contains a float).
    #[error("{role}: cannot encode as canonical JSON: {reason}")]
    Canonical {
        /// The role whose metadata was being encoded.
        role: String,
        /// Why.
        reason: String,
    },
    /// The `_type` field names another role type.
    #[error("{role}: expected metadata of type {expected:?}, found {found:?}")]
    WrongType {
        /// The role being loaded.
        role: String,
        /// The type the role must have.
        expected: &'static str,
        /// The type the metadata declares.
        found: String,
    },
    /// `spec_version` is not a 1.x version.
    #[error("{role}: unsupported spec_version {found:?} (expected 1.x)")]
    UnsupportedSpecVersion {
        /// The role being loaded.
        role: String,
        /// The declared version.
        found: String,
    },
    /// Fewer distinct keys of the role signed the metadata than its threshold requires.
    #[error("{role}: signature threshold not met: {found} valid signature(s) from distinct keys of {delegator}, {needed} needed")]
    ThresholdNotMet {
        /// The role whose metadata was being verified.
        role: String,
        /// The role whose keys were used (`root` for top-level roles, the delegator otherwise).
        delegator: String,
        /// Distinct authorised keys with a valid signature.
        found: u64,
        /// The threshold.
        needed: u64,
    },
    /// A new version is lower than the trusted one (a rollback attack).
    #[error("{role}: version rollback: trusted version {trusted}, new version {new}")]
    Rollback {
        /// The role.
        role: String,
        /// The version trusted so far.
        trusted: u64,
        /// The version offered.
        new: u64,
    },
    /// The metadata has another version than the one its referrer (root chain, timestamp or
    /// snapshot) demands.
    #[error("{role}: version mismatch: expected version {expected}, found {found}")]
    VersionMismatch {
        /// The role.
        role: String,
        /// The version the referrer demands.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// A new timestamp has the same version as the trusted one: nothing changed (not an
    /// error for the refresh workflow, which keeps the trusted timestamp).
    #[error("{role}: same version {version} as the trusted metadata")]
    EqualVersion {
        /// The role.
        role: String,
        /// The version.
        version: u64,
    },
    /// The metadata has expired (a freeze attack).
    #[error("{role}: expired at {expires} (now {now})")]
    Expired {
        /// The role.
        role: String,
        /// Its expiry.
        expires: Timestamp,
        /// The reference time it was checked against.
        now: Timestamp,
    },
    /// The bytes are longer than allowed (an endless-data attack), or do not have the
    /// length the referrer lists.
    #[error("{role}: length mismatch: expected {expected} bytes, got {found}")]
    LengthMismatch {
        /// The role or target.
        role: String,
        /// The expected (or maximum) length.
        expected: u64,
        /// The length found (at least this many bytes when a download was cut off).
        found: u64,
    },
    /// A hash does not match the one the referrer lists.
    #[error("{role}: {algorithm} hash mismatch: expected {expected}, got {found}")]
    HashMismatch {
        /// The role or target.
        role: String,
        /// The hash algorithm.
        algorithm: String,
        /// The listed hash (hex).
        expected: String,
        /// The computed hash (hex).
        found: String,
    },
    /// A referrer lists a hash algorithm this crate cannot compute, so the data cannot be checked.
    #[error("{role}: unsupported hash algorithm {algorithm:?}")]
    UnsupportedHash {
        /// The role or target.
        role: String,
        /// The algorithm name.
        algorithm: String,
    },
    /// A role the workflow needs is not listed where it must be.
    #[error("{role}: not listed in {listed_in}")]
    NotListed {
        /// The missing role.
        role: String,
        /// Where it should have been listed (`snapshot`, `timestamp`, a delegator).
        listed_in: String,
    },
    /// A role listed in the trusted snapshot disappeared from the new one (a rollback attack).
    #[error("snapshot: {role} was listed in trusted snapshot version {trusted_snapshot} but is missing from the new one")]
    RoleRemoved {
        /// The role meta file name that disappeared.
        role: String,
        /// The version of the trusted snapshot.
        trusted_snapshot: u64,
    },
    /// A workflow step was called out of order (a bug in the caller, not an attack).
    #[error("workflow: {0}")]
    Workflow(&'static str),
    /// A target or role name that cannot be used safely (empty, `..`, absolute...).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A target is not found in the (delegated) targets metadata.
    #[error("target {0:?} not found")]
    TargetNotFound(String),
    /// A key could not be read or used for signing.
    #[error("key: {0}")]
    Key(String),
    /// Too many root rotations, or too many delegations visited.
    #[error("{what}: limit of {limit} reached")]
    LimitReached {
        /// What was being counted.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The repository does not have a file the workflow requires (HTTP 404 or 403).
    #[error("{name}: not found in the repository")]
    Missing {
        /// The file name.
        name: String,
    },
    /// The fetcher failed (network, I/O). Its message is kept as text because the fetcher
    /// is the caller's code.
    #[error("fetching {name}: {source}")]
    Fetch {
        /// The file being fetched.
        name: String,
        /// The fetcher's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An Uptane rule is broken: the Director's targets name an unknown ECU, a wrong
    /// hardware ID or another device, or disagree with the Image repository.
    #[error("uptane: {target}: {reason}")]
    Uptane {
        /// The target (or ECU) concerned.
        target: String,
        /// What is wrong, with the values.
        reason: String,
        /// The attack class this is evidence of.
        attack: Attack,
    },
    /// The local metadata store failed.
    #[error("storing {name}: {source}")]
    Store {
        /// The file being stored.
        name: String,
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The Uptane attack classes a verification failure is evidence of (Uptane Standard 2.1 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attack {
    /// Older metadata or images offered as new.
    Rollback,
    /// Metadata that stopped being updated (expired).
    Freeze,
    /// Metadata or images not signed by a threshold of trusted keys, or not matching their hashes.
    ArbitrarySoftware,
    /// More data than allowed.
    EndlessData,
    /// Metadata of different repositories or versions mixed.
    MixAndMatch,
}

impl Error {
    /// The attack class this failure is evidence of, if it is one.
    pub fn attack(&self) -> Option<Attack> {
        match self {
            Error::Rollback { .. } | Error::RoleRemoved { .. } => Some(Attack::Rollback),
            Error::Expired { .. } => Some(Attack::Freeze),
            Error::ThresholdNotMet { .. } | Error::HashMismatch { .. } => {
                Some(Attack::ArbitrarySoftware)
            }
            Error::LengthMismatch { .. } => Some(Attack::EndlessData),
            Error::VersionMismatch { .. } | Error::NotListed { .. } => Some(Attack::MixAndMatch),
            Error::Uptane { attack, .. } => Some(*attack),
            _ => None,
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
