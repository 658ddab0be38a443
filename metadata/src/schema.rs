//! The TUF metadata formats: parsed from the received bytes into typed structs, keeping every
//! field this crate does not know (`extra`) so Uptane's `custom` data and future fields survive.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::crypto::{decode_signature, PublicKey};
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// The top-level role names.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// Field access with errors that name the role and the field.
struct Fields<'a> {
    role: &'a str,
    obj: Map<String, Value>,
    /// Where the object is in the metadata, for error messages (built only on error).
    path: Cow<'a, str>,
}

impl<'a> Fields<'a> {
    fn new(role: &'a str, path: impl Into<Cow<'a, str>>, value: Value) -> Result<Fields<'a>> {
        let path = path.into();
        match value {
            Value::Object(obj) => Ok(Fields { role, obj, path }),
            other => Err(malformed(
                role,
                format!("{path}: expected an object, found {}", kind(&other)),
            )),
        }
    }

    fn err(&self, field: &str, expected: &str, found: Option<&Value>) -> Error {
        let found = found.map_or("nothing", kind);
        malformed(
            self.role,
            format!(
                "{}{field}: expected {expected}, found {found}",
                self.prefix()
            ),
        )
    }

    fn prefix(&self) -> String {
        if self.path.is_empty() {
            String::new()
        } else {
            format!("{}.", self.path)
        }
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        self.obj.shift_remove(field)
    }

    fn string(&mut self, field: &str) -> Result<String> {
        match self.take(field) {
            Some(Value::String(s)) => Ok(s),
            other => Err(self.err(field, "a string", other.as_ref())),
        }
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        match self.take(field) {
            Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().unwrap_or_default()),
            other => Err(self.err(field, "a non-negative integer", other.as_ref())),
        }
    }

    fn positive(&mut self, field: &str) -> Result<u64> {
        match self.take(field) {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
                Ok(n.as_u64().unwrap_or_default())
            }
            other => Err(self.err(field, "a positive integer", other.as_ref())),
        }
    }

    fn opt_u64(&mut self, field: &str) -> Result<Option<u64>> {
        if self.obj.contains_key(field) {
            self.u64(field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn bool(&mut self, field: &str) -> Result<bool> {
        match self.take(field) {
            Some(Value::Bool(b)) => Ok(b),
            other => Err(self.err(field, "a boolean", other.as_ref())),
        }
    }

    fn object(&mut self, field: &str) -> Result<Map<String, Value>> {
        match self.take(field) {
            Some(Value::Object(m)) => Ok(m),
            other => Err(self.err(field, "an object", other.as_ref())),
        }
    }

    fn strings(&mut self, field: &str) -> Result<Vec<String>> {
        match self.take(field) {
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()),
            other => Err(self.err(field, "an array of strings", other.as_ref())),
        }
    }

    fn opt_strings(&mut self, field: &str) -> Result<Option<Vec<String>>> {
        if self.obj.contains_key(field) {
            self.strings(field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn rest(self) -> Map<String, Value> {
        self.obj
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn malformed(role: &str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        role: role.to_owned(),
        reason: reason.into(),
    }
}

/// One signature of an envelope.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The key ID the signature claims.
    pub keyid: String,
    /// The decoded signature bytes; `None` when the value is not valid hex/base64 (it then
    /// counts for nothing).
    pub sig: Option<Vec<u8>>,
}

/// The `{"signed": ..., "signatures": [...]}` envelope of received metadata: the signatures and
/// the canonical bytes they cover.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The signatures as received.
    pub signatures: Vec<Signature>,
    /// The canonical JSON of `signed`: what the signatures cover.
    pub canonical: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    signed: &'a serde_json::value::RawValue,
    signatures: Vec<Value>,
}

impl Envelope {
    /// Parses received bytes into the envelope and the text of `signed` as received.
    /// `role` only names the metadata in errors.
    pub fn parse<'b>(role: &str, bytes: &'b [u8]) -> Result<(Envelope, &'b str)> {
        let (signatures, signed) = Envelope::split(role, bytes)?;
        let canonical = Envelope::canonical_of(role, signed)?;
        Ok((
            Envelope {
                signatures,
                canonical,
            },
            signed,
        ))
    }

    /// Reads the signatures and finds the text of `signed`, without canonicalising it.
    pub fn split<'b>(role: &str, bytes: &'b [u8]) -> Result<(Vec<Signature>, &'b str)> {
        let raw: RawEnvelope<'b> = serde_json::from_slice(bytes)
            .map_err(|e| malformed(role, format!("not TUF metadata JSON: {e}")))?;
        let signed = raw.signed.get();
        if !signed.starts_with('{') {
            return Err(malformed(role, "signed: expected an object"));
        }
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for (i, s) in raw.signatures.into_iter().enumerate() {
            let mut f = Fields::new(role, format!("signatures[{i}]"), s)?;
            let aktualizr_dialect = f.obj.contains_key("method");
            let keyid = f.string("keyid")?;
            let sig = f.string("sig")?;
            signatures.push(Signature {
                keyid,
                sig: decode_signature(&sig, aktualizr_dialect),
            });
        }
        Ok((signatures, signed))
    }

    /// The canonical form of the text of `signed`, straight from the received text: no value
    /// tree is built, and an object with a duplicate key is refused before any parser
    /// interprets it.
    pub fn canonical_of(role: &str, signed: &str) -> Result<Vec<u8>> {
        crate::canonical::canonicalize(signed.as_bytes()).map_err(|e| Error::Canonical {
            role: role.to_owned(),
            reason: e.0,
        })
    }

    /// The distinct authorised keys (by key ID and by key material) with a valid signature.
    pub fn count_valid(&self, keys: &HashMap<String, PublicKey>, keyids: &[String]) -> u64 {
        let mut seen_ids: Vec<&str> = Vec::new();
        let mut seen_material: Vec<&[u8]> = Vec::new();
        for keyid in keyids {
            if seen_ids.contains(&keyid.as_str()) {
                continue;
            }
            let Some(key) = keys.get(keyid) else { continue };
            let Some(material) = key.material() else {
                continue;
            };
            if seen_material.contains(&material) {
                continue;
            }
            let signed = self.signatures.iter().any(|s| {
                s.keyid == *keyid
                    && s.sig
                        .as_deref()
                        .is_some_and(|sig| key.verify(&self.canonical, sig))
            });
            if signed {
                seen_ids.push(keyid);
                seen_material.push(material);
            }
        }
        seen_ids.len() as u64
    }

    /// Checks that a threshold of the given keys signed this envelope.
    pub fn verify(
        &self,
        role: &str,
        delegator: &str,
        keys: &HashMap<String, PublicKey>,
        keyids: &[String],
        threshold: u64,
    ) -> Result<()> {
        let found = self.count_valid(keys, keyids);
        if found < threshold {
            return Err(Error::ThresholdNotMet {
                role: role.to_owned(),
                delegator: delegator.to_owned(),
                found,
                needed: threshold,
            });
        }
        Ok(())
    }
}

/// Fields every role has.
#[derive(Debug, Clone)]
pub struct Common {
    /// `spec_version`, a 1.x version.
    pub spec_version: String,
    /// `version`, at least 1.
    pub version: u64,
    /// `expires`.
    pub expires: Timestamp,
    /// Fields of `signed` this crate does not interpret.
    pub extra: Map<String, Value>,
}

impl Common {
    fn parse(f: &mut Fields<'_>, expected_type: &'static str) -> Result<(u64, String, Timestamp)> {
        let ty = f.string("_type")?;
        if ty != expected_type {
            return Err(Error::WrongType {
                role: f.role.to_owned(),
                expected: expected_type,
                found: ty,
            });
        }
        let spec_version = f.string("spec_version")?;
        let parts: Vec<&str> = spec_version.split('.').collect();
        let numeric = parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != "1" {
            return Err(Error::UnsupportedSpecVersion {
                role: f.role.to_owned(),
                found: spec_version,
            });
        }
        let version = f.positive("version")?;
        let expires_str = f.string("expires")?;
        let expires = Timestamp::parse(&expires_str).ok_or_else(|| {
            malformed(
                f.role,
                format!("expires: expected YYYY-MM-DDTHH:MM:SSZ, found {expires_str:?}"),
            )
        })?;
        Ok((version, spec_version, expires))
    }

    fn finish(parsed: (u64, String, Timestamp), f: Fields<'_>) -> Common {
        let (version, spec_version, expires) = parsed;
        Common {
            spec_version,
            version,
            expires,
            extra: f.rest(),
        }
    }

    /// Whether the metadata is expired at `now` (expiry is inclusive, as in python-tuf).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }
}

/// The keys and threshold of a role.
#[derive(Debug, Clone)]
pub struct RoleKeys {
    /// Authorised key IDs.
    pub keyids: Vec<String>,
    /// How many of them must sign, at least 1.
    pub threshold: u64,
}

fn parse_role_keys(f: &mut Fields<'_>) -> Result<RoleKeys> {
    let keyids = f.strings("keyids")?;
    let mut sorted = keyids.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != keyids.len() {
        return Err(malformed(
            f.role,
            format!("{}keyids: duplicate key IDs", f.prefix()),
        ));
    }
    let threshold = f.positive("threshold")?;
    Ok(RoleKeys { keyids, threshold })
}

fn parse_keys(role: &str, keys: Map<String, Value>) -> Result<HashMap<String, PublicKey>> {
    keys.into_iter()
        .map(|(id, v)| {
            PublicKey::from_json(&id, &v)
                .map(|k| (id.clone(), k))
                .map_err(|e| malformed(role, format!("keys.{id}: {e}")))
        })
        .collect()
}

/// Root metadata.
#[derive(Debug, Clone)]
pub struct Root {
    /// Common fields.
    pub common: Common,
    /// Whether the repository uses consistent snapshots.
    pub consistent_snapshot: bool,
    /// All keys, by declared key ID.
    pub keys: HashMap<String, PublicKey>,
    /// The four top-level roles.
    pub roles: HashMap<String, RoleKeys>,
}

impl Root {
    /// Parses the text of the `signed` part.
    pub fn from_raw(role: &str, signed: &str) -> Result<Root> {
        let v: Value = serde_json::from_str(signed).map_err(|e| malformed(role, e.to_string()))?;
        Root::parse(role, v)
    }

    /// Parses the `signed` part of root metadata.
    pub fn parse(role: &str, signed: Value) -> Result<Root> {
        let mut f = Fields::new(role, "", signed)?;
        let common = Common::parse(&mut f, "root")?;
        let consistent_snapshot = if f.obj.contains_key("consistent_snapshot") {
            f.bool("consistent_snapshot")?
        } else {
            false
        };
        let keys = parse_keys(role, f.object("keys")?)?;
        let mut roles = HashMap::new();
        for (name, v) in f.object("roles")? {
            let mut rf = Fields::new(role, format!("roles.{name}"), v)?;
            roles.insert(name, parse_role_keys(&mut rf)?);
        }
        if roles.len() != 4 || !TOP_LEVEL_ROLES.iter().all(|r| roles.contains_key(*r)) {
            let mut names: Vec<_> = roles.keys().cloned().collect();
            names.sort();
            return Err(malformed(
                role,
                format!(
                    "roles: expected exactly root, timestamp, snapshot, targets; found {names:?}"
                ),
            ));
        }
        Ok(Root {
            common: Common::finish(common, f),
            consistent_snapshot,
            keys,
            roles,
        })
    }

    /// Checks that a threshold of `role`'s keys signed `env`.
    pub fn verify_role(&self, role: &str, env: &Envelope) -> Result<()> {
        let r = self.roles.get(role).ok_or_else(|| Error::NotListed {
            role: role.to_owned(),
            listed_in: "root".into(),
        })?;
        env.verify(role, "root", &self.keys, &r.keyids, r.threshold)
    }
}

/// Version (and optionally length and hashes) of a metadata file, as timestamp and snapshot list it.
#[derive(Debug, Clone)]
pub struct MetaFile {
    /// The version.
    pub version: u64,
    /// The length in bytes, if listed.
    pub length: Option<u64>,
    /// Hashes by algorithm (hex), in document order, if listed.
    pub hashes: Option<Vec<(String, String)>>,
    /// Fields this crate does not interpret.
    pub extra: Map<String, Value>,
}

fn parse_hashes(f: &mut Fields<'_>) -> Result<Vec<(String, String)>> {
    let m = f.object("hashes")?;
    if m.is_empty() {
        return Err(malformed(
            f.role,
            format!("{}hashes: must not be empty", f.prefix()),
        ));
    }
    m.into_iter()
        .map(|(alg, v)| match v {
            Value::String(h) => Ok((alg, h)),
            other => Err(malformed(
                f.role,
                format!(
                    "{}hashes.{alg}: expected a string, found {}",
                    f.prefix(),
                    kind(&other)
                ),
            )),
        })
        .collect()
}

impl MetaFile {
    fn parse<'a>(role: &'a str, path: impl Into<Cow<'a, str>>, v: Value) -> Result<MetaFile> {
        let mut f = Fields::new(role, path, v)?;
        let version = f.positive("version")?;
        let length = f.opt_u64("length")?;
        let hashes = if f.obj.contains_key("hashes") {
            Some(parse_hashes(&mut f)?)
        } else {
            None
        };
        Ok(MetaFile {
            version,
            length,
            hashes,
            extra: f.rest(),
        })
    }

    /// Checks `data` against the listed length and hashes (those that are listed).
    pub fn verify(&self, role: &str, data: &[u8]) -> Result<()> {
        if let Some(length) = self.length {
            check_length(role, length, data)?;
        }
        if let Some(hashes) = &self.hashes {
            check_hashes(role, hashes, data)?;
        }
        Ok(())
    }
}

pub(crate) fn check_length(role: &str, expected: u64, data: &[u8]) -> Result<()> {
    if data.len() as u64 != expected {
        return Err(Error::LengthMismatch {
            role: role.to_owned(),
            expected,
            found: data.len() as u64,
        });
    }
    Ok(())
}

pub(crate) fn check_hashes(role: &str, hashes: &[(String, String)], data: &[u8]) -> Result<()> {
    for (alg, expected) in hashes {
        let algorithm = match alg.as_str() {
            "sha256" => &ring::digest::SHA256,
            "sha384" => &ring::digest::SHA384,
            "sha512" => &ring::digest::SHA512,
            _ => {
                return Err(Error::UnsupportedHash {
                    role: role.to_owned(),
                    algorithm: alg.clone(),
                })
            }
        };
        let found = hex::encode(ring::digest::digest(algorithm, data));
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::HashMismatch {
                role: role.to_owned(),
                algorithm: alg.clone(),
                expected: expected.clone(),
                found,
            });
        }
    }
    Ok(())
}

/// Timestamp metadata.
#[derive(Debug, Clone)]
pub struct TimestampMeta {
    /// Common fields.
    pub common: Common,
    /// What it says of `snapshot.json`.
    pub snapshot: MetaFile,
}

impl TimestampMeta {
    /// Parses the text of the `signed` part.
    pub fn from_raw(role: &str, signed: &str) -> Result<TimestampMeta> {
        let v: Value = serde_json::from_str(signed).map_err(|e| malformed(role, e.to_string()))?;
        TimestampMeta::parse(role, v)
    }

    /// Parses the `signed` part of timestamp metadata.
    pub fn parse(role: &str, signed: Value) -> Result<TimestampMeta> {
        let mut f = Fields::new(role, "", signed)?;
        let common = Common::parse(&mut f, "timestamp")?;
        let mut meta = f.object("meta")?;
        let snapshot = meta.shift_remove("snapshot.json");
        let (Some(snapshot), true) = (snapshot, meta.is_empty()) else {
            return Err(malformed(
                role,
                "meta: expected exactly one entry, \"snapshot.json\"",
            ));
        };
        let snapshot = MetaFile::parse(role, "meta.snapshot.json", snapshot)?;
        Ok(TimestampMeta {
            common: Common::finish(common, f),
            snapshot,
        })
    }
}

/// Snapshot metadata.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    /// Common fields.
    pub common: Common,
    /// Targets metadata files (`targets.json`, `<role>.json`) by file name.
    pub meta: BTreeMap<String, MetaFile>,
}

impl SnapshotMeta {
    /// Parses the text of the `signed` part.
    pub fn from_raw(role: &str, signed: &str) -> Result<SnapshotMeta> {
        let v: Value = serde_json::from_str(signed).map_err(|e| malformed(role, e.to_string()))?;
        SnapshotMeta::parse(role, v)
    }

    /// Parses the `signed` part of snapshot metadata.
    pub fn parse(role: &str, signed: Value) -> Result<SnapshotMeta> {
        let mut f = Fields::new(role, "", signed)?;
        let common = Common::parse(&mut f, "snapshot")?;
        let meta = f
            .object("meta")?
            .into_iter()
            .map(|(name, v)| {
                let mf = MetaFile::parse(role, format!("meta.{name}"), v)?;
                Ok((name, mf))
            })
            .collect::<Result<_>>()?;
        Ok(SnapshotMeta {
            common: Common::finish(common, f),
            meta,
        })
    }
}

/// One target file.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetFile {
    /// The length in bytes.
    pub length: u64,
    /// Hashes by algorithm (hex), in document order (the first one names consistent-snapshot
    /// target files).
    pub hashes: Vec<(String, String)>,
    /// Fields this crate does not interpret, `custom` among them.
    pub extra: Map<String, Value>,
}

impl TargetFile {
    /// The `custom` object, if any.
    pub fn custom(&self) -> Option<&Value> {
        self.extra.get("custom")
    }

    /// Checks length and every hash of `data`.
    pub fn verify(&self, name: &str, data: &[u8]) -> Result<()> {
        check_length(name, self.length, data)?;
        check_hashes(name, &self.hashes, data)
    }
}

/// A delegation to a named role.
#[derive(Debug, Clone)]
pub struct DelegatedRole {
    /// The role name.
    pub name: String,
    /// Its keys and threshold.
    pub keys: RoleKeys,
    /// Whether the search stops at this role when it matches.
    pub terminating: bool,
    /// Path patterns (`*` and `?` do not cross `/`), if the delegation uses them.
    pub paths: Option<Vec<String>>,
    /// Prefixes of the target path's SHA-256 (hex), if the delegation uses them.
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Fields this crate does not interpret.
    pub extra: Map<String, Value>,
}

impl DelegatedRole {
    /// Whether this delegation covers `target`.
    pub fn covers(&self, target: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| crate::glob::path_matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let hash = hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                target.as_bytes(),
            ));
            return prefixes.iter().any(|p| hash.starts_with(p.as_str()));
        }
        false
    }
}

/// Succinct hash-bin delegations (TAP 15).
#[derive(Debug, Clone)]
pub struct SuccinctRoles {
    /// Keys and threshold shared by every bin.
    pub keys: RoleKeys,
    /// Number of leading bits of the target path's SHA-256 that select the bin (1..=32).
    pub bit_length: u32,
    /// Bin names are `<name_prefix>-<hex bin number>`.
    pub name_prefix: String,
    /// Fields this crate does not interpret.
    pub extra: Map<String, Value>,
}

impl SuccinctRoles {
    /// The bin role responsible for `target`.
    pub fn role_for(&self, target: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, target.as_bytes());
        let d = digest.as_ref();
        let first = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let bin = u64::from(first) >> (32 - self.bit_length);
        let width = format!("{:x}", (1u64 << self.bit_length) - 1).len();
        format!("{}-{bin:0width$x}", self.name_prefix)
    }

    /// Whether `role` is one of the bins.
    pub fn is_bin(&self, role: &str) -> bool {
        let width = format!("{:x}", (1u64 << self.bit_length) - 1).len();
        let Some(suffix) = role
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == width
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < (1u64 << self.bit_length))
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

/// The delegations of a targets role.
#[derive(Debug, Clone)]
pub struct Delegations {
    /// Keys of the delegated roles, by declared key ID.
    pub keys: HashMap<String, PublicKey>,
    /// Delegations to named roles, in search order.
    pub roles: Option<Vec<DelegatedRole>>,
    /// Succinct hash-bin delegations.
    pub succinct_roles: Option<SuccinctRoles>,
    /// Fields this crate does not interpret.
    pub extra: Map<String, Value>,
}

impl Delegations {
    fn parse(role: &str, v: Value) -> Result<Delegations> {
        let mut f = Fields::new(role, "delegations", v)?;
        let keys = parse_keys(role, f.object("keys")?)?;
        let roles = match f.take("roles") {
            None => None,
            Some(Value::Array(items)) => {
                let mut out: Vec<DelegatedRole> = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let mut rf = Fields::new(role, format!("delegations.roles[{i}]"), item)?;
                    let name = rf.string("name")?;
                    if TOP_LEVEL_ROLES.contains(&name.as_str())
                        || out.iter().any(|r| r.name == name)
                    {
                        return Err(malformed(role, format!("delegations.roles[{i}].name: {name:?} is a top-level role or used twice")));
                    }
                    let keys = parse_role_keys(&mut rf)?;
                    let terminating = rf.bool("terminating")?;
                    let paths = rf.opt_strings("paths")?;
                    let path_hash_prefixes = rf.opt_strings("path_hash_prefixes")?;
                    if paths.is_some() && path_hash_prefixes.is_some() {
                        return Err(malformed(
                            role,
                            format!(
                                "delegations.roles[{i}]: both paths and path_hash_prefixes are set"
                            ),
                        ));
                    }
                    out.push(DelegatedRole {
                        name,
                        keys,
                        terminating,
                        paths,
                        path_hash_prefixes,
                        extra: rf.rest(),
                    });
                }
                Some(out)
            }
            Some(other) => {
                return Err(malformed(
                    role,
                    format!(
                        "delegations.roles: expected an array, found {}",
                        kind(&other)
                    ),
                ))
            }
        };
        let succinct_roles = match f.take("succinct_roles") {
            None => None,
            Some(v) => {
                let mut sf = Fields::new(role, "delegations.succinct_roles", v)?;
                let keys = parse_role_keys(&mut sf)?;
                let bit_length = sf.positive("bit_length")?;
                if bit_length > 32 {
                    return Err(sf.err("bit_length", "an integer from 1 to 32", None));
                }
                let name_prefix = sf.string("name_prefix")?;
                Some(SuccinctRoles {
                    keys,
                    bit_length: bit_length as u32,
                    name_prefix,
                    extra: sf.rest(),
                })
            }
        };
        if roles.is_some() == succinct_roles.is_some() {
            return Err(malformed(
                role,
                "delegations: exactly one of roles and succinct_roles must be set",
            ));
        }
        Ok(Delegations {
            keys,
            roles,
            succinct_roles,
            extra: f.rest(),
        })
    }

    /// The keys and threshold this delegation gives `role`, if it delegates to it.
    pub fn role_keys(&self, role: &str) -> Option<&RoleKeys> {
        if let Some(roles) = &self.roles {
            return roles.iter().find(|r| r.name == role).map(|r| &r.keys);
        }
        self.succinct_roles
            .as_ref()
            .filter(|s| s.is_bin(role))
            .map(|s| &s.keys)
    }

    /// The roles to search for `target`, in order, each with its `terminating` flag.
    pub fn roles_for(&self, target: &str) -> Vec<(String, bool)> {
        if let Some(roles) = &self.roles {
            return roles
                .iter()
                .filter(|r| r.covers(target))
                .map(|r| (r.name.clone(), r.terminating))
                .collect();
        }
        self.succinct_roles
            .iter()
            .map(|s| (s.role_for(target), false))
            .collect()
    }
}

/// Targets metadata (top-level or delegated).
#[derive(Debug, Clone)]
pub struct TargetsMeta {
    /// Common fields.
    pub common: Common,
    /// Target files by target path.
    pub targets: HashMap<String, TargetFile>,
    /// The delegations, if any.
    pub delegations: Option<Delegations>,
}

impl TargetsMeta {
    /// Parses the `signed` part of targets metadata.
    pub fn parse(role: &str, signed: Value) -> Result<TargetsMeta> {
        TargetsMeta::from_raw(role, &signed.to_string())
    }

    /// Parses the text of the `signed` part of targets metadata.
    ///
    /// Targets metadata can list 100,000 targets, so the `targets` object is read straight into
    /// [`TargetFile`]s; only the other (small) fields go through a `Value`.
    pub fn from_raw(role: &str, signed: &str) -> Result<TargetsMeta> {
        let raw: raw_targets::Signed =
            serde_json::from_str(signed).map_err(|e| malformed(role, e.to_string()))?;
        let mut f = Fields::new(role, "", Value::Object(raw.rest))?;
        let common = Common::parse(&mut f, "targets")?;
        let targets = raw
            .targets
            .ok_or_else(|| malformed(role, "targets: expected an object, found nothing"))?;
        let delegations = match f.take("delegations") {
            None => None,
            Some(v) => Some(Delegations::parse(role, v)?),
        };
        Ok(TargetsMeta {
            common: Common::finish(common, f),
            targets,
            delegations,
        })
    }

    /// The target file listed under `path`.
    pub fn target(&self, path: &str) -> Option<&TargetFile> {
        self.targets.get(path)
    }

    /// Checks that a threshold of the keys this role delegates to `role` signed `env`.
    pub fn verify_delegate(&self, delegator: &str, role: &str, env: &Envelope) -> Result<()> {
        let not_listed = || Error::NotListed {
            role: role.to_owned(),
            listed_in: format!("{delegator} delegations"),
        };
        let d = self.delegations.as_ref().ok_or_else(not_listed)?;
        let rk = d.role_keys(role).ok_or_else(not_listed)?;
        env.verify(role, delegator, &d.keys, &rk.keyids, rk.threshold)
    }
}

/// Deserialisation of targets metadata without a value tree for the `targets` object.
mod raw_targets {
    use std::collections::HashMap;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
    use serde_json::{Map, Value};

    use super::TargetFile;

    /// The `signed` object: `targets` read as target files, every other field kept as JSON.
    pub(super) struct Signed {
        pub targets: Option<HashMap<String, TargetFile>>,
        pub rest: Map<String, Value>,
    }

    impl<'de> de::Deserialize<'de> for Signed {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Signed;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a targets metadata object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Signed, A::Error> {
                    let mut out = Signed {
                        targets: None,
                        rest: Map::new(),
                    };
                    while let Some(key) = map.next_key::<String>()? {
                        if key == "targets" {
                            out.targets = Some(map.next_value_seed(Targets)?);
                        } else {
                            let v = map.next_value::<Value>()?;
                            out.rest.insert(key, v);
                        }
                    }
                    Ok(out)
                }
            }
            d.deserialize_map(V)
        }
    }

    struct Targets;

    impl<'de> DeserializeSeed<'de> for Targets {
        type Value = HashMap<String, TargetFile>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Targets {
        type Value = HashMap<String, TargetFile>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of target files (targets)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = HashMap::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(path) = map.next_key::<String>()? {
                let target = map.next_value_seed(File(&path))?;
                out.insert(path, target);
            }
            Ok(out)
        }
    }

    /// One target file; the path names it in errors.
    struct File<'p>(&'p str);

    impl<'de> DeserializeSeed<'de> for File<'_> {
        type Value = TargetFile;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<TargetFile, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for File<'_> {
        type Value = TargetFile;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a target file object (targets.{})", self.0)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TargetFile, A::Error> {
            let (mut length, mut hashes, mut extra) = (None, None, Map::new());
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "length" => length = Some(map.next_value::<u64>()?),
                    "hashes" => hashes = Some(map.next_value_seed(Hashes)?),
                    _ => {
                        let v = map.next_value::<Value>()?;
                        extra.insert(key, v);
                    }
                }
            }
            let path = self.0;
            let length = length
                .ok_or_else(|| de::Error::custom(format!("targets.{path}.length: missing")))?;
            let hashes: Vec<(String, String)> = hashes
                .ok_or_else(|| de::Error::custom(format!("targets.{path}.hashes: missing")))?;
            if hashes.is_empty() {
                return Err(de::Error::custom(format!(
                    "targets.{path}.hashes: must not be empty"
                )));
            }
            Ok(TargetFile {
                length,
                hashes,
                extra,
            })
        }
    }

    /// `hashes`, in document order.
    struct Hashes;

    impl<'de> DeserializeSeed<'de> for Hashes {
        type Value = Vec<(String, String)>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Hashes {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of hex hashes by algorithm")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(2);
            while let Some(alg) = map.next_key::<String>()? {
                out.push((alg, map.next_value::<String>()?));
            }
            Ok(out)
        }
    }
}
