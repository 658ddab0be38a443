//! The backend directory: keys, the Director and Image repositories' signed metadata, devices.
//!
//! Layout of `DIR` (everything a client can fetch is a plain file):
//! ```text
//! backend.json                     key type, expiry, port, server URL
//! keys/{director,image}/ROLE.pem   PKCS#8 signing keys (ROLE = root, targets, snapshot, timestamp)
//! keys/{director,image}/root-vN.pem  root keys replaced by rotate-root (kept for the record)
//! director/root.json, N.root.json  the Director's roots (shared by all devices)
//! director/devices/ID/{targets,snapshot,timestamp}.json, N.targets.json   per device
//! repo/{root,N.root,timestamp,snapshot,targets}.json, repo/targets/NAME   the Image repository
//! treehub/                         OSTree archive repository
//! pki/{ca,server}.{pem,key}        TLS: the CA devices and the server trust, the server identity
//! devices/ID/device.json           hardware ID, registered ECUs
//! devices/ID/{client.pem,pkey.pem,root.crt,sota.toml}   what `provision` hands the device
//! devices/ID/log.jsonl             everything the device sent (`device-log ID`)
//! ```
//! Every file is replaced atomically (temp file, fsync, rename).

use std::path::{Path, PathBuf};

use aktualizr_rs_fsutil::{atomic_write, atomic_write_private};
use aktualizr_rs_metadata::{sign_envelope, Scheme, SigningKey, Timestamp};
use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};

/// The four top-level roles, in the order they are signed.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// Which repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The Uptane Director (per-device targets).
    Director,
    /// The Uptane Image repository.
    Image,
}

impl Kind {
    /// The directory served under `/director` or `/repo`.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Director => "director",
            Kind::Image => "repo",
        }
    }
    fn keys(self) -> &'static str {
        match self {
            Kind::Director => "director",
            Kind::Image => "image",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "director" => Ok(Kind::Director),
            "image" | "repo" => Ok(Kind::Image),
            _ => Err(format!("{s:?}: expected director or image")),
        }
    }
}

/// Parses a key type as `init --key-type` takes it.
pub fn parse_key_type(s: &str) -> Result<Scheme, String> {
    match s {
        "ed25519" => Ok(Scheme::Ed25519),
        "ecdsa" | "ecdsa-p256" => Ok(Scheme::EcdsaP256),
        "ecdsa-p384" => Ok(Scheme::EcdsaP384),
        "rsa" => Ok(Scheme::RsaPssSha256),
        _ => Err(format!(
            "{s:?}: expected ed25519, ecdsa (P-256), ecdsa-p384 or rsa"
        )),
    }
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Ed25519 => "ed25519",
        Scheme::EcdsaP256 => "ecdsa",
        Scheme::EcdsaP384 => "ecdsa-p384",
        Scheme::RsaPssSha256 => "rsa",
    }
}

/// Generates a signing key; RSA keys come from `openssl genpkey` (ring cannot make them).
pub fn generate_key(scheme: Scheme) -> Result<SigningKey> {
    if scheme != Scheme::RsaPssSha256 {
        return Ok(SigningKey::generate(scheme)?);
    }
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .context("running openssl to generate an RSA key (install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(SigningKey::from_pkcs8_pem(
        &String::from_utf8_lossy(&out.stdout),
        scheme,
    )?)
}

/// An open backend directory.
#[derive(Debug)]
pub struct Backend {
    /// The directory.
    pub dir: PathBuf,
    /// `backend.json`.
    pub config: Value,
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_bytes(path, &bytes)
}

/// Writes `bytes` atomically, creating the parent directory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    create_parent(path)?;
    atomic_write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret (a private key) atomically with mode 0600, creating the parent directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    create_parent(path)?;
    atomic_write_private(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// Reads a JSON file, naming it in the error.
pub fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

impl Backend {
    /// Creates `dir` with new keys and the first metadata of both repositories.
    pub fn init(dir: &Path, scheme: Scheme, expires_days: u32, port: u16) -> Result<Backend> {
        if dir.join("backend.json").exists() {
            bail!("{} is already a backend directory", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = json!({
            "key_type": scheme_name(scheme),
            "expires_days": expires_days,
            "port": port,
        });
        let b = Backend {
            dir: dir.to_owned(),
            config,
        };
        for kind in [Kind::Director, Kind::Image] {
            for role in ROLES {
                b.save_key(kind, role, &generate_key(scheme)?)?;
            }
            b.write_root(kind, 1)?;
        }
        b.publish_image_targets(Map::new())?;
        write_json(&dir.join("backend.json"), &b.config)?;
        Ok(b)
    }

    /// Opens an existing backend directory.
    pub fn open(dir: &Path) -> Result<Backend> {
        let config = read_json(&dir.join("backend.json")).with_context(|| {
            format!(
                "{} is not a backend directory (run `uptane-repo init` first)",
                dir.display()
            )
        })?;
        Ok(Backend {
            dir: dir.to_owned(),
            config,
        })
    }

    /// A path inside the directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn scheme(&self) -> Result<Scheme> {
        let name = self.config["key_type"].as_str().unwrap_or("ed25519");
        parse_key_type(name).map_err(|e| anyhow::anyhow!("backend.json key_type: {e}"))
    }

    /// The expiry of newly signed metadata.
    fn expires(&self) -> String {
        let days = self.config["expires_days"].as_i64().unwrap_or(365);
        Timestamp(Timestamp::now().0 + days * 86_400).to_string()
    }

    /// The port `serve` listens on and provisioned devices connect to.
    pub fn port(&self) -> u16 {
        self.config["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(8443)
    }

    fn key_path(&self, kind: Kind, role: &str) -> PathBuf {
        self.path(&format!("keys/{}/{role}.pem", kind.keys()))
    }

    fn save_key(&self, kind: Kind, role: &str, key: &SigningKey) -> Result<()> {
        let path = self.key_path(kind, role);
        write_private(
            &path,
            format!("{}\n{}", scheme_line(key.scheme()), key.to_pkcs8_pem()).as_bytes(),
        )
    }

    fn key(&self, kind: Kind, role: &str) -> Result<SigningKey> {
        load_key(&self.key_path(kind, role))
    }

    fn sign(&self, kind: Kind, role: &str, signed: &Value) -> Result<Vec<u8>> {
        let key = self.key(kind, role)?;
        Ok(sign_envelope(signed, &[&key])?)
    }

    /// The current version of a role file (0 when absent).
    pub fn version_of(path: &Path) -> u64 {
        read_json(path)
            .ok()
            .and_then(|v| v["signed"]["version"].as_u64())
            .unwrap_or(0)
    }

    fn root_signed(&self, kind: Kind, version: u64) -> Result<Value> {
        let mut keys = Map::new();
        let mut roles = Map::new();
        for role in ROLES {
            let k = self.key(kind, role)?;
            keys.insert(k.keyid().to_owned(), k.public().to_json().clone());
            roles.insert(
                role.to_owned(),
                json!({"keyids": [k.keyid()], "threshold": 1}),
            );
        }
        Ok(json!({
            "_type": "root",
            "spec_version": "1.0.0",
            "version": version,
            "expires": self.expires(),
            "consistent_snapshot": false,
            "keys": keys,
            "roles": roles,
        }))
    }

    fn write_root(&self, kind: Kind, version: u64) -> Result<()> {
        let signed = self.root_signed(kind, version)?;
        let bytes = self.sign(kind, "root", &signed)?;
        let dir = self.path(kind.dir());
        write_bytes(&dir.join(format!("{version}.root.json")), &bytes)?;
        write_bytes(&dir.join("root.json"), &bytes)
    }

    /// Replaces the root key of `kind`: the new root (version + 1) is signed by the old and
    /// the new key, so clients that trust the old root accept it.
    pub fn rotate_root(&self, kind: Kind) -> Result<u64> {
        let dir = self.path(kind.dir());
        let version = Self::version_of(&dir.join("root.json")) + 1;
        let old = self.key(kind, "root")?;
        let new = generate_key(self.scheme()?)?;
        let old_path = self.path(&format!("keys/{}/root-v{}.pem", kind.keys(), version - 1));
        std::fs::copy(self.key_path(kind, "root"), &old_path)
            .with_context(|| format!("keeping the old root key as {}", old_path.display()))?;
        self.save_key(kind, "root", &new)?;
        let signed = self.root_signed(kind, version)?;
        let bytes = sign_envelope(&signed, &[&old, &new])?;
        write_bytes(&dir.join(format!("{version}.root.json")), &bytes)?;
        write_bytes(&dir.join("root.json"), &bytes)?;
        Ok(version)
    }

    /// Signs `targets` as the next targets version of the role set in `dir`, then its
    /// snapshot and timestamp; also keeps `N.targets.json`.
    fn publish(
        &self,
        kind: Kind,
        dir: &Path,
        targets: Map<String, Value>,
        custom: Option<Value>,
    ) -> Result<u64> {
        let version = Self::version_of(&dir.join("targets.json")) + 1;
        let mut signed = json!({
            "_type": "targets",
            "spec_version": "1.0.0",
            "version": version,
            "expires": self.expires(),
            "targets": targets,
        });
        if let Some(custom) = custom {
            signed["custom"] = custom;
        }
        let bytes = self.sign(kind, "targets", &signed)?;
        write_bytes(&dir.join(format!("{version}.targets.json")), &bytes)?;
        write_bytes(&dir.join("targets.json"), &bytes)?;
        self.resign_snapshot_timestamp(kind, dir)?;
        Ok(version)
    }

    /// Signs a new snapshot (naming the current targets version) and timestamp in `dir`.
    fn resign_snapshot_timestamp(&self, kind: Kind, dir: &Path) -> Result<()> {
        let targets_version = Self::version_of(&dir.join("targets.json"));
        let snapshot = json!({
            "_type": "snapshot",
            "spec_version": "1.0.0",
            "version": Self::version_of(&dir.join("snapshot.json")) + 1,
            "expires": self.expires(),
            "meta": {"targets.json": {"version": targets_version}},
        });
        let snapshot_bytes = self.sign(kind, "snapshot", &snapshot)?;
        write_bytes(&dir.join("snapshot.json"), &snapshot_bytes)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &snapshot_bytes);
        let timestamp = json!({
            "_type": "timestamp",
            "spec_version": "1.0.0",
            "version": Self::version_of(&dir.join("timestamp.json")) + 1,
            "expires": self.expires(),
            "meta": {"snapshot.json": {
                "version": snapshot["version"],
                "length": snapshot_bytes.len(),
                "hashes": {"sha256": hex::encode(digest.as_ref())},
            }},
        });
        let bytes = self.sign(kind, "timestamp", &timestamp)?;
        write_bytes(&dir.join("timestamp.json"), &bytes)
    }

    /// The Image repository's current targets.
    pub fn image_targets(&self) -> Result<Map<String, Value>> {
        let v = read_json(&self.path("repo/targets.json"))?;
        Ok(v["signed"]["targets"]
            .as_object()
            .cloned()
            .unwrap_or_default())
    }

    /// Publishes `targets` as the Image repository's next targets version.
    pub fn publish_image_targets(&self, targets: Map<String, Value>) -> Result<u64> {
        self.publish(Kind::Image, &self.path("repo"), targets, None)
    }

    /// Adds (or replaces) one Image-repository target.
    pub fn add_image_target(&self, name: &str, info: Value) -> Result<u64> {
        check_target_name(name)?;
        let mut targets = self.image_targets()?;
        targets.insert(name.to_owned(), info);
        self.publish_image_targets(targets)
    }

    /// The directory of a device's Director metadata.
    pub fn director_device_dir(&self, device: &str) -> PathBuf {
        self.path(&format!("director/devices/{device}"))
    }

    /// A device's record (`devices/ID/device.json`).
    pub fn device(&self, device: &str) -> Result<Value> {
        read_json(&self.path(&format!("devices/{device}/device.json"))).with_context(|| {
            format!("device {device:?} is not provisioned (run `uptane-repo provision {device}`)")
        })
    }

    /// Saves a device's record.
    pub fn save_device(&self, device: &str, record: &Value) -> Result<()> {
        write_json(&self.path(&format!("devices/{device}/device.json")), record)
    }

    /// Writes the device's Director targets: `target` for ECU `serial`, or nothing.
    pub fn assign(
        &self,
        device: &str,
        assignment: Option<(&str, &str, Option<&str>)>,
    ) -> Result<u64> {
        let record = self.device(device)?;
        let mut targets = Map::new();
        let mut custom = json!({"deviceId": device});
        if let Some((serial, target, correlation)) = assignment {
            let image = self.image_targets()?;
            let info = image.get(target).with_context(|| {
                format!("target {target:?} is not in the Image repository (push-ostree or add-file it first)")
            })?;
            // The ECU's hardware ID: as registered by the device, else as provisioned.
            let hwid = record["ecus"]
                .as_array()
                .and_then(|ecus| {
                    ecus.iter()
                        .find(|e| e["ecu_serial"] == serial)
                        .and_then(|e| e["hardware_identifier"].as_str())
                })
                .or_else(|| record["hardware_id"].as_str())
                .context("the device has no hardware ID")?
                .to_owned();
            let mut entry = json!({
                "length": info["length"],
                "hashes": info["hashes"],
                "custom": {"ecuIdentifiers": {serial: {"hardwareId": hwid}}},
            });
            if let Some(format) = info["custom"].get("targetFormat") {
                entry["custom"]["targetFormat"] = format.clone();
            }
            targets.insert(target.to_owned(), entry);
            custom["correlationId"] = json!(correlation.map_or_else(
                || format!("urn:uptane-repo:{device}:{}", Timestamp::now().0),
                str::to_owned
            ));
        }
        let dir = self.director_device_dir(device);
        self.publish(Kind::Director, &dir, targets, Some(custom))
    }

    /// Re-signs every snapshot and timestamp (and nothing else), for metadata about to expire.
    pub fn refresh(&self) -> Result<usize> {
        let mut dirs = vec![(Kind::Image, self.path("repo"))];
        if let Ok(entries) = std::fs::read_dir(self.path("director/devices")) {
            for e in entries {
                dirs.push((Kind::Director, e?.path()));
            }
        }
        for (kind, dir) in &dirs {
            self.resign_snapshot_timestamp(*kind, dir)?;
        }
        Ok(dirs.len())
    }
}

fn scheme_line(s: Scheme) -> String {
    format!("# scheme: {}", scheme_name(s))
}

/// Loads a key file written by this tool (`# scheme: NAME` then the PEM).
pub fn load_key(path: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default();
    let name = first
        .strip_prefix("# scheme: ")
        .with_context(|| format!("{}: first line should be `# scheme: NAME`", path.display()))?;
    let scheme = parse_key_type(name).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text, scheme).with_context(|| format!("loading {}", path.display()))
}

/// Target names become file names under `repo/targets/`: no empty segments, no `.`/`..`.
pub fn check_target_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        bail!("{name:?} is not a usable target name (relative path, no empty, . or .. segments)");
    }
    Ok(())
}
