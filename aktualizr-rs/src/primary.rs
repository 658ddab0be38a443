//! The Uptane primary: one update cycle (`aktualizr-rs once`), as aktualizr does it.
//!
//! 1. Finalize: if an install was pending and the device has rebooted (the sentinel is gone),
//!    the current deployment tells whether it took effect; a failure is remembered and that
//!    target is not installed again until the Director assigns a different one.
//! 2. Register the ECUs once (`POST /director/ecus`), send the signed manifest.
//! 3. Director: root chain (trust on first use of `1.root.json`), then timestamp, snapshot and
//!    targets when it serves them, else targets straight under the root (aktualizr's servers);
//!    the Uptane checks of [`aktualizr_rs_metadata::uptane`]. Image repository: the full TUF
//!    workflow, then the Director-Image match for every assignment.
//! 4. Download (OSTree pull through the store's worker process), install (pending deployment,
//!    reboot sentinel), events. Every failure is reported in the next manifest and installs
//!    nothing; the previously trusted metadata stays.
//!
//! State is atomic files under `[storage] path` (see [`State`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aktualizr_rs_fsutil::{atomic_write, atomic_write_private, create_private_dir};
use aktualizr_rs_metadata::{
    canonical::to_canonical, uptane, Error as MetaError, Limits, Scheme, SigningKey, Timestamp,
    TrustedSet, Updater,
};
use aktualizr_rs_store::{Commit, PullOptions, Store, Worker};
use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::config::Config;
use crate::consent::Operation;
use crate::tuf_client::{DirCache, HttpFetcher};

/// What is persisted between cycles, in `<storage>/state.json` (replaced atomically).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The raw JSON (kept as a value: new fields never break an older file).
    pub json: Value,
}

impl State {
    fn path(storage: &Path) -> PathBuf {
        storage.join("state.json")
    }

    /// Loads the state (empty when there is none yet).
    pub fn load(storage: &Path) -> Result<State> {
        let path = State::path(storage);
        match std::fs::read(&path) {
            Ok(b) => Ok(State {
                json: serde_json::from_slice(&b)
                    .with_context(|| format!("parsing {}", path.display()))?,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State { json: json!({}) }),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// What the client waits for before its next step, as `status` says it: the reason, and
    /// the target when one is known.
    pub fn waiting(&self) -> Option<String> {
        let w = &self.json["waiting"];
        w["reason"].as_str().map(|r| match w["target"].as_str() {
            Some(t) if !t.is_empty() => format!("{r}, for {t}"),
            _ => r.to_owned(),
        })
    }

    /// Saves the state atomically.
    pub fn save(&self, storage: &Path) -> Result<()> {
        let path = State::path(storage);
        atomic_write(&path, serde_json::to_string_pretty(&self.json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// The result of one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing assigned, or what is assigned is installed.
    UpToDate,
    /// An install waits for the reboot; nothing else is done meanwhile.
    RebootPending(String),
    /// The target was installed as the pending deployment; the device must reboot.
    Installed(String),
    /// (`check`) The target is assigned, verified, and not installed yet.
    Available(String),
    /// (`download`) The target is verified and downloaded, not installed yet.
    Downloaded(String),
    /// A binary target was verified and stored in `[pacman] images_path`; no reboot needed.
    Stored(String),
    /// A step waits for an approval or a time window (the reason).
    Waiting(String),
}

/// Whether `op` of `target` (name, sha256) may run now under the `[consent]` gates. When it
/// may, an approval it used is consumed and any waiting record cleared; when it may not, the
/// waiting record says why (the caller saves the state).
pub fn gate(
    config: &Config,
    state: &mut State,
    op: crate::consent::Operation,
    target: (String, String),
) -> Result<Option<String>> {
    let (name, sha) = target;
    let key = format!("consent.{}_window", op.name());
    let window = match config.str(&key) {
        "" => None,
        w => Some(crate::consent::Window::parse(w).map_err(|e| {
            anyhow::anyhow!("[consent] {}: {e}", key.trim_start_matches("consent."))
        })?),
    };
    let needs = config.bool(&format!("consent.{}_approval", op.name()));
    let approval = &state.json["approvals"][op.name()];
    let approved = approval == &json!("*") || approval == &json!(sha);
    match crate::consent::blocked(
        op,
        needs,
        approved,
        window.as_ref(),
        crate::consent::now_local(),
    ) {
        Some(reason) => {
            state.json["waiting"] =
                json!({"operation": op.name(), "reason": reason, "target": name, "sha256": sha});
            Ok(Some(reason))
        }
        None => {
            if needs {
                if let Some(a) = state.json["approvals"].as_object_mut() {
                    a.remove(op.name());
                }
            }
            state.json["waiting"] = Value::Null;
            Ok(None)
        }
    }
}

/// How far a cycle goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Verify metadata and say what is assigned.
    Check,
    /// Also download it.
    Download,
    /// Also install it (the whole cycle).
    Install,
}

/// The files of the device's TLS identity (the treehub pull uses them too).
#[derive(Debug)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The device's identity and clients, from the configuration.
#[derive(Debug)]
pub struct Primary {
    config: Config,
    storage: PathBuf,
    tls: TlsFiles,
    client: reqwest::Client,
    device_id: String,
    serial: String,
    hardware_id: String,
    key: SigningKey,
    worker: Worker,
    progress: Option<tokio::sync::mpsc::UnboundedSender<(&'static str, u32)>>,
}

/// Records an approval of `op` in the state under `storage`: of the target waiting for it,
/// else of the next one. Returns what was approved.
pub fn approve(storage: &Path, op: Operation) -> Result<String> {
    let mut state = State::load(storage)?;
    let waiting = &state.json["waiting"];
    let (what, target) = if waiting["operation"] == op.name() {
        (
            waiting["sha256"].clone(),
            waiting["target"].as_str().unwrap_or("?").to_owned(),
        )
    } else {
        (json!("*"), "the next update".to_owned())
    };
    if !state.json["approvals"].is_object() {
        state.json["approvals"] = json!({});
    }
    state.json["approvals"][op.name()] = what;
    state.save(storage)?;
    Ok(format!("{} of {target}", op.name()))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The common name of a PEM certificate.
fn cert_cn(pem: &[u8]) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = p.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

impl Primary {
    /// Sets up from the configuration: the storage directory (mode 0700), the TLS identity
    /// from `[import]`, the ECU key (generated once), serial and hardware ID.
    pub fn new(config: Config, worker: Worker) -> Result<Primary> {
        let storage = PathBuf::from(config.str("storage.path"));
        create_private_dir(&storage)
            .with_context(|| format!("creating the storage directory {}", storage.display()))?;
        // The device's identity: [import] paths, else the credentials that shared-credential
        // provisioning stored (crate::provision).
        let (stored_cert, stored_key, stored_ca) = crate::provision::stored_paths(&storage);
        let path = |key: &str, stored: PathBuf| {
            config.import_path(key).or_else(|| stored.exists().then_some(stored)).with_context(|| {
                format!(
                    "[import] {} is not set and no credentials were provisioned: set the [import] paths, or [provision] provision_path to a credentials.zip",
                    key.trim_start_matches("import.")
                )
            })
        };
        let tls = TlsFiles {
            cert: path("import.tls_clientcert_path", stored_cert)?,
            key: path("import.tls_pkey_path", stored_key)?,
            ca: path("import.tls_cacert_path", stored_ca)?,
        };
        let cert = read(&tls.cert, "client certificate")?;
        let client = crate::provision::mtls_client(
            &cert,
            &read(&tls.key, "client key")?,
            &read(&tls.ca, "CA certificate")?,
        )?;
        let device_id = match config.str("provision.device_id") {
            "" => cert_cn(&cert).context(
                "the client certificate has no common name (device ID); set [provision] device_id",
            )?,
            id => id.to_owned(),
        };
        let key = ecu_key(&config, &storage)?;
        let serial = match config.str("provision.primary_ecu_serial") {
            "" => key.keyid().to_owned(),
            s => s.to_owned(),
        };
        let hardware_id = match config.str("provision.primary_ecu_hardware_id") {
            "" => hostname(),
            h => h.to_owned(),
        };
        Ok(Primary {
            config,
            storage,
            tls,
            client,
            device_id,
            serial,
            hardware_id,
            key,
            worker,
            progress: None,
        })
    }

    /// The Waiting outcome when the `[consent]` gate holds `op` of this target back.
    fn gated(
        &self,
        state: &mut State,
        op: Operation,
        target: &str,
        sha: &str,
    ) -> Result<Option<Outcome>> {
        Ok(
            gate(&self.config, state, op, (target.to_owned(), sha.to_owned()))?
                .map(Outcome::Waiting),
        )
    }

    /// Sends `(phase, percent)` progress to `tx` during cycles.
    pub fn with_progress(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<(&'static str, u32)>,
    ) -> Primary {
        self.progress = Some(tx);
        self
    }

    fn report(&self, phase: &'static str, percent: u32) {
        if let Some(tx) = &self.progress {
            let _ = tx.send((phase, percent));
        }
    }

    /// The storage directory.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// What `aktualizr-rs info` shows (aktualizr-info's content): identity, registration,
    /// current and pending image, trusted metadata versions, the last error.
    pub fn info(&self) -> Result<Value> {
        let state = State::load(&self.storage)?;
        let current = self.store().ok().and_then(|s| s.current().ok().flatten());
        let version = |repo: &str, role: &str| {
            std::fs::read(
                self.storage
                    .join("metadata")
                    .join(repo)
                    .join(format!("{role}.json")),
            )
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["signed"]["version"].as_u64())
        };
        let mut metadata = serde_json::Map::new();
        for repo in ["director", "image"] {
            let mut roles = serde_json::Map::new();
            for role in ["root", "timestamp", "snapshot", "targets"] {
                roles.insert(role.to_owned(), json!(version(repo, role)));
            }
            metadata.insert(repo.to_owned(), Value::Object(roles));
        }
        Ok(json!({
            "schema": 1,
            "device_id": self.device_id,
            "primary_ecu_serial": self.serial,
            "primary_ecu_hardware_id": self.hardware_id,
            "registered": state.json["registered"] == json!(true),
            "current": current.map(|d| json!({"commit": d.commit, "target": d.target, "version": d.version})),
            "pending": state.json.get("pending").cloned().unwrap_or(Value::Null),
            "reboot_sentinel": self.config.reboot_sentinel().exists(),
            "director_mode": state.json.get("director_mode").cloned().unwrap_or(Value::Null),
            "metadata": metadata,
            "failed_targets": state.json.get("failed_targets").cloned().unwrap_or(json!([])),
            "waiting": state.waiting(),
            "last_error": state.json.get("last_error").cloned().unwrap_or(Value::Null),
            "storage": self.storage.display().to_string(),
        }))
    }

    /// Seconds between polls (`[uptane] polling_sec`).
    pub fn polling(&self) -> Duration {
        Duration::from_secs(
            u64::try_from(self.config.int("uptane.polling_sec"))
                .unwrap_or(10)
                .max(1),
        )
    }

    /// The device ID, primary ECU serial and hardware ID.
    pub fn identity(&self) -> (&str, &str, &str) {
        (&self.device_id, &self.serial, &self.hardware_id)
    }

    fn store(&self) -> Result<Store> {
        let sysroot = self.config.sysroot();
        Ok(Store::open(&sysroot, self.config.os())
            .with_context(|| format!("opening the OSTree sysroot {}", sysroot.display()))?
            .with_staging(self.config.bool("pacman.stage")))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &Value,
    ) -> Result<reqwest::StatusCode> {
        let r = self
            .client
            .request(method.clone(), url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        Ok(r.status())
    }

    /// One update cycle.
    pub async fn once(&self) -> Result<Outcome> {
        self.cycle(Phase::Install).await
    }

    /// Only the finalization after a reboot (and the manifest that reports it).
    pub async fn finalize_only(&self) -> Result<Outcome> {
        let mut state = State::load(&self.storage)?;
        self.finalize(&mut state)?;
        if let Some(p) = state.json["pending"]["target"].as_str() {
            return Ok(Outcome::RebootPending(p.to_owned()));
        }
        self.register(&mut state).await?;
        self.send_manifest(&mut state).await?;
        self.flush_events(&mut state).await;
        Ok(Outcome::UpToDate)
    }

    /// A cycle up to `phase`.
    pub async fn cycle(&self, phase: Phase) -> Result<Outcome> {
        let mut state = State::load(&self.storage)?;
        self.finalize(&mut state)?;
        if let Some(p) = state.json["pending"]["target"].as_str() {
            // One update at a time: nothing else until the reboot.
            let p = p.to_owned();
            self.flush_events(&mut state).await;
            return Ok(Outcome::RebootPending(p));
        }
        self.register(&mut state).await?;
        self.report_device_data(&mut state).await;
        self.send_manifest(&mut state).await?;
        let result = self.check_and_install(&mut state, phase).await;
        if let Err(e) = &result {
            let attack = e
                .chain()
                .find_map(|c| c.downcast_ref::<MetaError>())
                .and_then(MetaError::attack);
            if let Some(a) = attack {
                state.json["attacks_detected"] = json!(format!("{a:?}: {e:#}"));
            }
            state.json["last_error"] = json!(format!("{e:#}"));
        } else {
            state.json["attacks_detected"] = json!("");
            state.json["last_error"] = Value::Null;
        }
        state.save(&self.storage)?;
        self.flush_events(&mut state).await;
        if result.is_err() {
            // The failure goes into the next manifest now, not a poll later.
            let _ = self.send_manifest(&mut state).await;
        }
        result
    }

    /// After a reboot: did the pending deployment boot?
    fn finalize(&self, state: &mut State) -> Result<()> {
        let pending = state.json["pending"].clone();
        let Some(target) = pending["target"].as_str() else {
            return Ok(());
        };
        if self.config.reboot_sentinel().exists() {
            return Ok(()); // not rebooted yet
        }
        let current = self.store()?.current()?;
        let booted = current.as_ref().map(|d| d.commit.as_str());
        let sha = pending["sha256"].as_str().unwrap_or_default();
        let success = booted == Some(sha);
        let correlation = pending["correlation_id"].clone();
        let (code, description) = if success {
            ("OK", format!("{target} is running"))
        } else {
            (
                "INSTALL_FAILED",
                format!(
                    "rolled back: {target} ({sha}) did not boot; running {}",
                    booted.unwrap_or("nothing")
                ),
            )
        };
        tracing::info!(target, success, "{description}");
        if success {
            state.json["installed_binary"] = Value::Null;
            state.json["installed"] =
                json!({"target": target, "sha256": sha, "length": pending["length"]});
        } else {
            let failed = state.json["failed_targets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut failed = failed;
            failed.push(json!(sha));
            state.json["failed_targets"] = json!(failed);
        }
        state.json["installation_result"] = json!({
            "correlation_id": correlation,
            "success": success,
            "code": code,
            "description": description,
        });
        self.queue_event(
            state,
            "EcuInstallationCompleted",
            &correlation,
            Some(success),
        );
        state.json["pending"] = Value::Null;
        state.save(&self.storage)
    }

    async fn register(&self, state: &mut State) -> Result<()> {
        if state.json["registered"] == json!(true) {
            return Ok(());
        }
        let public = self.key.public().to_json();
        let body = json!({
            "primary_ecu_serial": self.serial,
            "ecus": [{
                "hardware_identifier": self.hardware_id,
                "ecu_serial": self.serial,
                "clientKey": {
                    "keytype": public["keytype"].as_str().unwrap_or_default().to_uppercase(),
                    "keyval": {"public": public["keyval"]["public"]},
                },
            }],
        });
        let url = match self.config.str("provision.ecu_registration_endpoint") {
            "" => bail!("[tls] server (or [uptane] director_server) is not configured"),
            u => u.to_owned(),
        };
        let status = self.send(reqwest::Method::POST, &url, &body).await?;
        // 409: already registered (by an earlier run that lost its state, say).
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            bail!("registering the ECUs at {url}: HTTP {status}");
        }
        state.json["registered"] = json!(true);
        state.save(&self.storage)
    }

    /// The signed vehicle manifest (aktualizr's format, reference §3.1).
    fn manifest(&self, state: &mut State) -> Result<Value> {
        let counter = state.json["report_counter"].as_u64().unwrap_or(0) + 1;
        state.json["report_counter"] = json!(counter);
        let installed = self.installed_image(state)?;
        let ecu_signed = json!({
            "attacks_detected": state.json["attacks_detected"].as_str().unwrap_or(""),
            "ecu_serial": self.serial,
            "installed_image": installed,
            "previous_timeserver_time": "1970-01-01T00:00:00Z",
            "timeserver_time": "1970-01-01T00:00:00Z",
            "report_counter": counter.to_string(),
        });
        let mut signed = json!({
            "primary_ecu_serial": self.serial,
            "ecu_version_manifests": {
                (self.serial.clone()): {"signatures": [self.signature(&ecu_signed)?], "signed": ecu_signed},
            },
        });
        if let Some(r) = state
            .json
            .get("installation_result")
            .filter(|r| !r.is_null())
        {
            let result = json!({"success": r["success"], "code": r["code"], "description": r["description"]});
            signed["installation_report"] = json!({
                "content_type": "application/vnd.com.here.otac.installationReport.v1",
                "report": {
                    "correlation_id": r["correlation_id"],
                    "raw_report": r["description"],
                    "result": result,
                    "items": [{"ecu": self.serial, "result": result}],
                },
            });
        }
        Ok(json!({"signatures": [self.signature(&signed)?], "signed": signed}))
    }

    /// aktualizr's signature dialect: `method` and a base64 signature.
    fn signature(&self, signed: &Value) -> Result<Value> {
        use base64::Engine as _;
        let canonical =
            to_canonical(signed).map_err(|e| anyhow::anyhow!("canonical JSON: {}", e.0))?;
        let sig = self.key.sign_bytes(&canonical)?;
        Ok(json!({
            "keyid": self.key.keyid(),
            "method": self.key.scheme().name(),
            "sig": base64::engine::general_purpose::STANDARD.encode(sig),
        }))
    }

    /// What the primary runs: the current deployment, by its recorded target name, else by
    /// the installed record, else by its commit.
    fn installed_image(&self, state: &State) -> Result<Value> {
        let b = &state.json["installed_binary"];
        if let Some(name) = b["target"].as_str() {
            return Ok(
                json!({"filepath": name, "fileinfo": {"length": b["length"], "hashes": {"sha256": b["sha256"]}}}),
            );
        }
        let current = self.store()?.current()?;
        let Some(d) = current else {
            return Ok(
                json!({"filepath": "none", "fileinfo": {"length": 0, "hashes": {"sha256": ""}}}),
            );
        };
        let name = d
            .target
            .clone()
            .or_else(|| {
                (state.json["installed"]["sha256"] == json!(d.commit))
                    .then(|| {
                        state.json["installed"]["target"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .flatten()
            })
            .unwrap_or_else(|| d.commit.clone());
        Ok(json!({"filepath": name, "fileinfo": {"length": 0, "hashes": {"sha256": d.commit}}}))
    }

    async fn send_manifest(&self, state: &mut State) -> Result<()> {
        let manifest = self.manifest(state)?;
        state.save(&self.storage)?;
        let url = format!("{}/manifest", self.config.str("uptane.director_server"));
        let status = self.send(reqwest::Method::PUT, &url, &manifest).await?;
        if !status.is_success() {
            bail!("sending the manifest to {url}: HTTP {status}");
        }
        // Delivered: the installation result has been reported.
        state.json["installation_result"] = Value::Null;
        state.save(&self.storage)
    }

    fn metadata_dir(&self, repo: &str) -> Result<PathBuf> {
        let dir = self.storage.join("metadata").join(repo);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Trust on first use: without a trusted root, `1.root.json` from the server becomes it.
    async fn bootstrap_root(&self, dir: &Path, fetcher: &mut HttpFetcher) -> Result<()> {
        use aktualizr_rs_metadata::Fetch as _;
        if dir.join("root.json").exists() {
            return Ok(());
        }
        let bytes = fetcher
            .fetch("1.root.json", Limits::default().root_max_length)
            .await?
            .context("1.root.json not found")?;
        TrustedSet::new(&bytes, Timestamp::now()).context("the first root does not verify")?;
        atomic_write(&dir.join("root.json"), &bytes)?;
        Ok(())
    }

    /// The Director's verified targets.
    async fn director_targets(
        &self,
        state: &mut State,
    ) -> Result<aktualizr_rs_metadata::TargetsMeta> {
        let url = self.config.str("uptane.director_server").to_owned();
        let dir = self.metadata_dir("director")?;
        let mut fetcher = HttpFetcher::new(self.client.clone(), &url);
        self.bootstrap_root(&dir, &mut fetcher)
            .await
            .context("Director root")?;
        let mut up = Updater::new(
            fetcher.clone(),
            DirCache::new(&dir),
            Limits::default(),
            Timestamp::now(),
        )?;
        match up.refresh().await {
            Ok(()) => {
                let t = up
                    .trusted()
                    .targets("targets")
                    .context("no Director targets")?
                    .clone();
                if t.delegations.is_some() {
                    bail!("the Director's targets delegate, which a Director must not do");
                }
                state.json["director_mode"] = json!("full");
                return Ok(t);
            }
            Err(MetaError::Missing { name }) if name == "timestamp.json" => {}
            Err(e) => return Err(e).context("verifying the Director's metadata"),
        }
        // A Director that serves only root and targets (aktualizr's servers): the root chain
        // was updated above; targets are verified straight under the root.
        state.json["director_mode"] = json!("root-and-targets");
        use aktualizr_rs_metadata::Fetch as _;
        let root = std::fs::read(dir.join("root.json"))?;
        let mut trusted = TrustedSet::new(&root, Timestamp::now())?;
        let bytes = fetcher
            .fetch("targets.json", Limits::default().targets_max_length)
            .await?
            .context("the Director has no targets.json")?;
        let trusted_version = std::fs::read(dir.join("targets.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["signed"]["version"].as_u64());
        let t = trusted
            .update_director_targets(&bytes, trusted_version)
            .context("verifying the Director's targets")?
            .clone();
        atomic_write(&dir.join("targets.json"), &bytes)?;
        Ok(t)
    }

    async fn check_and_install(&self, state: &mut State, phase: Phase) -> Result<Outcome> {
        let director = self.director_targets(state).await?;
        let ecus = [uptane::Ecu {
            serial: self.serial.clone(),
            hardware_id: self.hardware_id.clone(),
        }];
        let assignments = uptane::director_assignments(&director, &ecus, Some(&self.device_id))?;
        let correlation = director
            .common
            .extra
            .get("custom")
            .and_then(|c| c.get("correlationId"))
            .cloned()
            .unwrap_or(Value::Null);
        let Some(a) = assignments.into_iter().next() else {
            return Ok(Outcome::UpToDate);
        };
        let sha = a
            .file
            .hashes
            .iter()
            .find(|(alg, _)| alg == "sha256")
            .map(|(_, h)| h.clone())
            .context("the assigned target has no sha256")?;
        let current = self.store()?.current()?;
        if current.as_ref().is_some_and(|d| d.commit == sha)
            || state.json["installed_binary"]["sha256"] == json!(sha)
        {
            return Ok(Outcome::UpToDate);
        }
        if state.json["failed_targets"]
            .as_array()
            .is_some_and(|f| f.iter().any(|s| s == &json!(sha)))
        {
            tracing::warn!(target = %a.target, "this target failed to boot before; not installing it again until the Director assigns another");
            return Ok(Outcome::UpToDate);
        }
        // The Image repository: full TUF, then the Director-Image match.
        let image_dir = self.metadata_dir("image")?;
        let repo_url = self.config.str("uptane.repo_server").to_owned();
        let mut fetcher = HttpFetcher::new(self.client.clone(), &repo_url);
        self.bootstrap_root(&image_dir, &mut fetcher)
            .await
            .context("Image repository root")?;
        let mut image = Updater::new(
            fetcher,
            DirCache::new(&image_dir),
            Limits::default(),
            Timestamp::now(),
        )?;
        image
            .refresh()
            .await
            .context("verifying the Image repository's metadata")?;
        let image_entry = image.find_target(&a.target).await?;
        let installed_counter = state.json["installed"]["release_counter"].as_u64();
        uptane::match_image(&a, image_entry.as_ref(), installed_counter)?;
        let format = image_entry
            .as_ref()
            .and_then(|e| e.custom())
            .and_then(|c| c.get("targetFormat"))
            .and_then(|v| v.as_str())
            .unwrap_or("OSTREE")
            .to_owned();
        if format == "BINARY" {
            let entry = image_entry.context("no Image entry")?;
            if phase == Phase::Check {
                return Ok(Outcome::Available(a.target));
            }
            let url_path = image.target_url_path(&a.target, &entry);
            if let Some(wait) = self.gated(state, Operation::Download, &a.target, &sha)? {
                return Ok(wait);
            }
            self.queue_event(state, "EcuDownloadStarted", &correlation, None);
            state.save(&self.storage)?;
            let stored = self.download_binary(&a.target, &entry, &url_path).await;
            self.queue_event(
                state,
                "EcuDownloadCompleted",
                &correlation,
                Some(stored.is_ok()),
            );
            state.save(&self.storage)?;
            let path = stored.with_context(|| format!("downloading {}", a.target))?;
            if phase == Phase::Download {
                return Ok(Outcome::Downloaded(a.target));
            }
            if let Some(wait) = self.gated(state, Operation::Install, &a.target, &sha)? {
                return Ok(wait);
            }
            self.queue_event(state, "EcuInstallationStarted", &correlation, None);
            state.json["installed_binary"] = json!({
                "target": a.target, "sha256": sha, "length": entry.length,
                "path": path.display().to_string(),
            });
            state.json["installation_result"] = json!({
                "correlation_id": correlation, "success": true, "code": "OK",
                "description": format!("{} stored as {}", a.target, path.display()),
            });
            self.queue_event(state, "EcuInstallationCompleted", &correlation, Some(true));
            state.save(&self.storage)?;
            return Ok(Outcome::Stored(a.target));
        }
        if format != "OSTREE" {
            bail!(
                "target {}: format {format} is not supported (OSTREE or BINARY)",
                a.target
            );
        }
        let commit: Commit = sha.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        self.report("check", 100);
        if phase == Phase::Check {
            return Ok(Outcome::Available(a.target));
        }

        // Download.
        if let Some(wait) = self.gated(state, Operation::Download, &a.target, &sha)? {
            return Ok(wait);
        }
        self.queue_event(state, "EcuDownloadStarted", &correlation, None);
        state.save(&self.storage)?;
        let mut opts = PullOptions::new(self.config.str("pacman.ostree_server"));
        opts.tls_client_cert = Some(self.tls.cert.clone());
        opts.tls_client_key = Some(self.tls.key.clone());
        opts.tls_ca = Some(self.tls.ca.clone());
        let os = self.config.os();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<aktualizr_rs_store::PullStats>();
        let reporter = self.progress.clone();
        let progress = tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                if let Some(r) = &reporter {
                    let pct = (u64::from(s.fetched) * 100 / u64::from(s.requested.max(1))).min(100);
                    let _ = r.send(("download", u32::try_from(pct).unwrap_or(100)));
                }
                tracing::info!(
                    fetched = s.fetched,
                    requested = s.requested,
                    bytes = s.bytes,
                    "downloading"
                );
            }
        });
        let pulled = aktualizr_rs_store::pull(
            &self.worker,
            &self.config.sysroot(),
            os,
            &commit,
            &opts,
            Some(tx),
        )
        .await;
        let _ = progress.await;
        self.queue_event(
            state,
            "EcuDownloadCompleted",
            &correlation,
            Some(pulled.is_ok()),
        );
        state.save(&self.storage)?;
        let stats = pulled.with_context(|| format!("downloading {}", a.target))?;
        tracing::info!(target = %a.target, objects = stats.fetched, bytes = stats.bytes, "downloaded");
        if phase == Phase::Download {
            return Ok(Outcome::Downloaded(a.target));
        }

        // Install.
        if let Some(wait) = self.gated(state, Operation::Install, &a.target, &sha)? {
            return Ok(wait);
        }
        self.queue_event(state, "EcuInstallationStarted", &correlation, None);
        self.store()?
            .deploy(&commit, Some(&a.target))
            .with_context(|| format!("deploying {}", a.target))?;
        state.json["pending"] = json!({
            "target": a.target,
            "sha256": sha,
            "length": a.file.length,
            "correlation_id": correlation,
            "release_counter": image_entry.as_ref().and_then(|e| e.custom()).and_then(|c| c.get("releaseCounter")).cloned(),
        });
        self.queue_event(state, "EcuInstallationApplied", &correlation, None);
        self.report("install", 100);
        state.save(&self.storage)?;
        let dir = PathBuf::from(self.config.str("bootloader.reboot_sentinel_dir"));
        aktualizr_rs_store::write_reboot_sentinel(
            &dir,
            self.config.str("bootloader.reboot_sentinel_name"),
        )?;
        Ok(Outcome::Installed(a.target))
    }

    /// Device data, each sent when it changed since the last successful send (by SHA-256 of
    /// what would be sent, kept in the state): hardware info, installed packages, network
    /// info, configuration. Failures are logged and retried next cycle.
    async fn report_device_data(&self, state: &mut State) {
        let server = self
            .config
            .str("tls.server")
            .trim_end_matches('/')
            .to_owned();
        let mut items: Vec<(&str, reqwest::Method, String, &str, Vec<u8>)> = vec![(
            "hardware_info",
            reqwest::Method::PUT,
            format!("{server}/system_info"),
            "application/json",
            hardware_info().to_string().into_bytes(),
        )];
        if let Some(packages) =
            installed_packages(Path::new(self.config.str("pacman.packages_file")))
        {
            items.push((
                "installed_packages",
                reqwest::Method::PUT,
                format!("{server}/core/installed"),
                "application/json",
                packages.to_string().into_bytes(),
            ));
        }
        if self.config.bool("telemetry.report_network") {
            items.push((
                "network_info",
                reqwest::Method::PUT,
                format!("{server}/system_info/network"),
                "application/json",
                network_info(&server).to_string().into_bytes(),
            ));
        }
        if self.config.bool("telemetry.report_config") {
            let mut text = String::new();
            for (key, setting) in self.config.effective() {
                text.push_str(&format!("{key} = {:?}\n", setting.value));
            }
            items.push((
                "configuration",
                reqwest::Method::POST,
                format!("{server}/system_info/config"),
                "application/toml",
                text.into_bytes(),
            ));
        }
        for (kind, method, url, content_type, body) in items {
            let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
            if state.json["device_data"][kind] == json!(hash) {
                continue;
            }
            let sent = self
                .client
                .request(method.clone(), &url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    if !state.json["device_data"].is_object() {
                        state.json["device_data"] = json!({});
                    }
                    state.json["device_data"][kind] = json!(hash);
                }
                Ok(r) => tracing::warn!("{method} {url}: HTTP {}", r.status()),
                Err(e) => tracing::warn!("{method} {url}: {e}"),
            }
        }
        if let Err(e) = state.save(&self.storage) {
            tracing::warn!("saving the state: {e:#}");
        }
    }

    /// Downloads a binary target into the content-addressed blob store
    /// (`<images_path>/<sha256>`): resumes a partial `<sha256>.part` with a Range request,
    /// never takes more than the listed length, and keeps the file only when length and every
    /// hash match. A blob already stored is not downloaded again.
    async fn download_binary(
        &self,
        target: &str,
        file: &aktualizr_rs_metadata::TargetFile,
        url_path: &str,
    ) -> Result<PathBuf> {
        use tokio::io::AsyncWriteExt as _;
        let dir = PathBuf::from(self.config.str("pacman.images_path"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let sha = file
            .hashes
            .iter()
            .find(|(a, _)| a == "sha256")
            .map(|(_, h)| h.clone())
            .context("no sha256")?;
        let done = dir.join(&sha);
        if std::fs::read(&done).is_ok_and(|b| file.verify(target, &b).is_ok()) {
            return Ok(done);
        }
        let part = dir.join(format!("{sha}.part"));
        let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
        if have > file.length {
            have = 0;
        }
        let url = format!(
            "{}/targets/{url_path}",
            self.config.str("uptane.repo_server").trim_end_matches('/')
        );
        let mut req = self.client.get(&url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let append = match resp.status() {
            reqwest::StatusCode::PARTIAL_CONTENT => true,
            s if s.is_success() => false,
            s => bail!("GET {url}: HTTP {s}"),
        };
        if !append {
            have = 0;
        }
        tracing::info!(target, resume_from = have, "downloading binary target");
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&part)
            .await
            .with_context(|| format!("opening {}", part.display()))?;
        let mut total = have;
        while let Some(chunk) = resp.chunk().await.with_context(|| format!("GET {url}"))? {
            total += chunk.len() as u64;
            if total > file.length {
                drop(out);
                let _ = std::fs::remove_file(&part);
                return Err(MetaError::LengthMismatch {
                    role: target.to_owned(),
                    expected: file.length,
                    found: total,
                }
                .into());
            }
            out.write_all(&chunk).await?;
        }
        out.sync_all().await?;
        drop(out);
        let bytes = std::fs::read(&part)?;
        if let Err(e) = file.verify(target, &bytes) {
            let _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
        std::fs::rename(&part, &done)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(done)
    }

    fn queue_event(
        &self,
        state: &mut State,
        kind: &str,
        correlation: &Value,
        success: Option<bool>,
    ) {
        let mut event = json!({"ecu": self.serial});
        if correlation.as_str().is_some_and(|c| !c.is_empty()) {
            event["correlationId"] = correlation.clone();
        }
        if let Some(s) = success {
            event["success"] = json!(s);
        }
        let mut queue = state.json["events"].as_array().cloned().unwrap_or_default();
        queue.push(json!({
            "id": uuid4(),
            "deviceTime": Timestamp::now().to_string(),
            "eventType": {"id": kind, "version": 0},
            "event": event,
        }));
        state.json["events"] = json!(queue);
    }

    /// Posts the queued events as JSON arrays: 2xx or 404 (a server without events) drops
    /// them, 413 halves the batch; anything else keeps them for the next cycle.
    async fn flush_events(&self, state: &mut State) {
        let url = format!(
            "{}/events",
            self.config.str("tls.server").trim_end_matches('/')
        );
        let mut queue = state.json["events"].as_array().cloned().unwrap_or_default();
        let mut batch = queue.len();
        while !queue.is_empty() && batch > 0 {
            let n = batch.min(queue.len());
            let body = Value::Array(queue[..n].to_vec());
            match self.send(reqwest::Method::POST, &url, &body).await {
                Ok(s) if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => {
                    queue.drain(..n);
                }
                Ok(s) if s == reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
                    if n == 1 {
                        queue.remove(0); // a single event too large for the server
                    }
                    batch = (n / 2).max(1);
                }
                Ok(s) => {
                    tracing::warn!("posting events to {url}: HTTP {s}; kept for later");
                    break;
                }
                Err(e) => {
                    tracing::warn!("posting events: {e:#}; kept for later");
                    break;
                }
            }
        }
        state.json["events"] = json!(queue);
        if let Err(e) = state.save(&self.storage) {
            tracing::warn!("saving the event queue: {e:#}");
        }
    }
}

/// The device ID shared-credential provisioning registers: `[provision] device_id`, else
/// one derived from the ECU key (unique per device, stable across runs).
pub fn provisioning_device_id(config: &Config) -> Result<String> {
    match config.str("provision.device_id") {
        "" => {
            let storage = PathBuf::from(config.str("storage.path"));
            create_private_dir(&storage)
                .with_context(|| format!("creating the storage directory {}", storage.display()))?;
            Ok(format!(
                "device-{}",
                &ecu_key(config, &storage)?.keyid()[..16]
            ))
        }
        id => Ok(id.to_owned()),
    }
}

/// The ECU key: `[import] uptane_private_key_path` if set, else `<storage>/ecukey.pem`,
/// generated once. ed25519 is generated; RSA keys (aktualizr's default `RSA2048`) cannot be
/// generated here and must be imported.
fn ecu_key(config: &Config, storage: &Path) -> Result<SigningKey> {
    let key_type = config.str("uptane.key_type");
    let scheme = match key_type.to_ascii_uppercase().as_str() {
        "ED25519" => Scheme::Ed25519,
        "RSA2048" | "RSA3072" | "RSA4096" => Scheme::RsaPssSha256,
        other => {
            bail!("[uptane] key_type {other:?}: expected ED25519, RSA2048, RSA3072 or RSA4096")
        }
    };
    if let Some(path) = config.import_path("import.uptane_private_key_path") {
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the ECU key {}", path.display()))?;
        return SigningKey::from_pkcs8_pem(&pem, scheme)
            .with_context(|| format!("loading the ECU key {}", path.display()));
    }
    let path = storage.join("ecukey.pem");
    if let Ok(pem) = std::fs::read_to_string(&path) {
        return SigningKey::from_pkcs8_pem(&pem, Scheme::Ed25519)
            .with_context(|| format!("loading the ECU key {}", path.display()));
    }
    if scheme != Scheme::Ed25519 {
        bail!("[uptane] key_type {key_type}: RSA ECU keys cannot be generated by aktualizr-rs; set key_type = ED25519 or import a key ([import] uptane_private_key_path)");
    }
    let key = SigningKey::generate(Scheme::Ed25519)?;
    atomic_write_private(&path, key.to_pkcs8_pem().as_bytes())
        .with_context(|| format!("writing the ECU key {}", path.display()))?;
    Ok(key)
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A small hardware description (aktualizr sends `lshw -json`, which devices rarely have).
fn hardware_info() -> Value {
    let memory_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    json!({
        "id": hostname(),
        "class": "system",
        "architecture": std::env::consts::ARCH,
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "product": read_trimmed("/sys/class/dmi/id/product_name"),
        "vendor": read_trimmed("/sys/class/dmi/id/sys_vendor"),
        "memory_kb": memory_kb,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
    })
}

/// `[pacman] packages_file`: lines `name version` (None when the file is absent).
fn installed_packages(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let list: Vec<Value> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(json!({"name": it.next()?, "version": it.next().unwrap_or("")}))
        })
        .collect();
    Some(Value::Array(list))
}

/// The address and interface the device reaches the server with, and its MAC.
fn network_info(server: &str) -> Value {
    let host_port = server
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:443")
        .to_owned();
    let host_port = if host_port.contains(':') {
        host_port
    } else {
        format!("{host_port}:443")
    };
    // A UDP "connect" sends nothing; it only picks the route and so the local address.
    let local = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect(&host_port)?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mac = default_interface()
        .and_then(|i| read_trimmed(&format!("/sys/class/net/{i}/address")))
        .unwrap_or_default();
    json!({"local_ipv4": local, "mac": mac, "hostname": hostname()})
}

/// The interface of the default route (`/proc/net/route`, destination 00000000).
fn default_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| f[0].to_owned())
    })
}

/// A random (version 4) UUID.
fn uuid4() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
