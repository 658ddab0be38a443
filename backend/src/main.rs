//! `uptane-repo`: a small, honest OTA backend for aktualizr-rs (and aktualizr): an Uptane
//! Director and Image repository, a treehub, and the device API over mutual TLS, all kept
//! as files in one directory. For tests, the demo and people who host a small fleet.
//! docs/backend.md is the guide; `repo.rs` documents the directory layout.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

mod pki;
mod repo;
mod serve;

use repo::{Backend, Kind};

#[derive(Debug, Parser)]
#[command(
    name = "uptane-repo",
    version,
    about = "A local OTA backend: Uptane Director and Image repositories, treehub, device API over mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a backend in DIR: keys and metadata of both repositories, a CA, a server
    /// certificate for 127.0.0.1/localhost, an empty treehub.
    Init {
        /// The backend directory (created).
        dir: PathBuf,
        /// Metadata key type: ed25519, ecdsa (P-256), ecdsa-p384 or rsa (2048, via openssl).
        #[arg(long, default_value = "ed25519", value_parser = repo::parse_key_type)]
        key_type: aktualizr_rs_metadata::Scheme,
        /// Days until newly signed metadata expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
        /// The port `serve` listens on and devices' sota.toml names.
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
    /// Issue a device's certificate and key and write them, the CA and a ready sota.toml to
    /// DIR/devices/DEVICE_ID/.
    Provision {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The device ID (the certificate's CN): letters, digits, '-', '_', '.'.
        device_id: String,
        /// The primary ECU's hardware ID.
        #[arg(long, default_value = "primary-hw")]
        hardware_id: String,
    },
    /// Write a credentials.zip for shared-credential provisioning (aktualizr's
    /// `[provision] provision_path`): devices holding it register themselves with
    /// `POST /devices` and get their own certificate.
    Credentials {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The archive to write.
        out: PathBuf,
        /// The server URL devices use (autoprov.url); default https://127.0.0.1:<port>.
        #[arg(long)]
        url: Option<String>,
    },
    /// Copy an OSTree commit into the treehub (only the objects it lacks) and add it to the
    /// Image repository as an OSTREE target.
    PushOstree {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The OSTree repository holding the commit.
        #[arg(long)]
        repo: PathBuf,
        /// The ref (branch) whose commit to push.
        #[arg(long = "ref")]
        reference: String,
        /// The target name; default: `<last part of the ref>-<version>`.
        #[arg(long)]
        name: Option<String>,
        /// The version; default: the commit's `version` metadata.
        #[arg(long)]
        version: Option<String>,
        /// Hardware IDs that may install it (repeatable).
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
    },
    /// Add a binary (non-OSTree) target: stored under repo/targets/, with length, sha256
    /// and sha512.
    AddFile {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The file.
        file: PathBuf,
        /// The target name; default: the file name.
        #[arg(long)]
        name: Option<String>,
        /// The version (custom.version).
        #[arg(long, default_value = "1")]
        version: String,
        /// Hardware IDs that may install it (repeatable).
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
    },
    /// Assign TARGET to the ECU ECU_SERIAL of DEVICE: write the device's Director targets
    /// (ecuIdentifiers, correlation ID, device ID) and re-sign its snapshot and timestamp.
    Assign {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The device.
        device: String,
        /// The ECU serial.
        ecu_serial: String,
        /// The Image-repository target name.
        target: String,
        /// The correlation ID; default: a new one.
        #[arg(long)]
        correlation_id: Option<String>,
    },
    /// Withdraw a device's assignment (empty Director targets).
    Unassign {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The device.
        device: String,
    },
    /// Replace a repository's root key: the new root is signed by the old and the new key.
    RotateRoot {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// director or image.
        #[arg(long)]
        repo: Kind,
    },
    /// Re-sign every snapshot and timestamp with a fresh expiry.
    Refresh {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
    },
    /// Serve DIR over HTTPS on 127.0.0.1 (client certificates required) until SIGTERM.
    Serve {
        /// The backend directory.
        dir: PathBuf,
        /// The port; default: backend.json's. 0 picks a free one (written to DIR/serve.url).
        #[arg(long)]
        port: Option<u16>,
        /// The Director serves only root and targets (no timestamp/snapshot), as
        /// aktualizr's servers do.
        #[arg(long)]
        director_root_and_targets_only: bool,
        /// Fault: wait this many milliseconds before every response.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Fault: cut treehub and target file responses after N bytes, dropping the
        /// connection.
        #[arg(long)]
        drop_after_bytes: Option<usize>,
        /// Fault: corrupt every treehub content object served.
        #[arg(long)]
        corrupt_treehub_objects: bool,
        /// Fault: serve each device its previous Director targets version (a replay).
        #[arg(long)]
        old_director_targets: bool,
        /// Append a line per request to this file: device, method, path, status, request
        /// and response body bytes.
        #[arg(long)]
        access_log: Option<PathBuf>,
    },
    /// Print everything DEVICE sent (manifests, events, device data), oldest first.
    DeviceLog {
        /// The backend directory.
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// The device.
        device: String,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Device IDs become directory names and certificate CNs.
pub(crate) fn check_device_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        bail!(
            "{id:?} is not a usable device ID (1-64 of A-Z a-z 0-9 - _ ., not starting with '.')"
        );
    }
    Ok(())
}

fn device_dir(b: &Backend, id: &str) -> PathBuf {
    b.path(&format!("devices/{id}"))
}

/// Issues the device's certificate and writes its files; returns (cert, key) PEM.
fn issue_and_record(b: &Backend, id: &str, hardware_id: Option<&str>) -> Result<(String, String)> {
    check_device_id(id)?;
    if b.device(id).is_ok() {
        bail!(
            "device {id:?} is already provisioned ({})",
            device_dir(b, id).display()
        );
    }
    let (cert, key) = pki::issue_device(&b.dir, id)?;
    let dir = device_dir(b, id);
    repo::write_bytes(&dir.join("client.pem"), cert.as_bytes())?;
    repo::write_private(&dir.join("pkey.pem"), key.as_bytes())?;
    std::fs::copy(b.path("pki/ca.pem"), dir.join("root.crt"))?;
    b.save_device(id, &json!({"device_id": id, "hardware_id": hardware_id}))?;
    b.assign(id, None)?;
    Ok((cert, key))
}

fn provision(b: &Backend, id: &str, hardware_id: &str) -> Result<PathBuf> {
    issue_and_record(b, id, Some(hardware_id))?;
    let dir = device_dir(b, id);
    let abs = std::fs::canonicalize(&dir)?;
    let server = format!("https://127.0.0.1:{}", b.port());
    let toml = format!(
        r#"# Written by `uptane-repo provision {id}`. The device's identity is its client
# certificate (CN = {id}); the server is the uptane-repo backend in {backend}.
[tls]
server = "{server}"

[provision]
mode = "DeviceCred"
primary_ecu_hardware_id = "{hardware_id}"

[import]
base_path = "{base}"
tls_cacert_path = "root.crt"
tls_clientcert_path = "client.pem"
tls_pkey_path = "pkey.pem"

# The Director, Image repository and treehub URLs derive from [tls] server:
# {server}/director, {server}/repo, {server}/treehub.
[pacman]
type = "ostree"
"#,
        backend = std::fs::canonicalize(&b.dir)?.display(),
        base = abs.display(),
    );
    repo::write_bytes(&dir.join("sota.toml"), toml.as_bytes())?;
    Ok(dir)
}

/// Provisions `id` for `POST /devices` and returns its credentials as PKCS#12 (no password).
pub(crate) fn provision_p12(b: &Backend, id: &str) -> Result<Vec<u8>> {
    issue_and_record(b, id, None)?;
    let dir = device_dir(b, id);
    p12_bundle(
        &dir.join("client.pem"),
        &dir.join("pkey.pem"),
        &dir.join("root.crt"),
    )
}

/// A PKCS#12 bundle (no password) of a certificate, its key and the CA (openssl).
fn p12_bundle(cert: &Path, key: &Path, ca: &Path) -> Result<Vec<u8>> {
    let out = Process::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:", "-inkey"])
        .arg(key)
        .arg("-in")
        .arg(cert)
        .arg("-certfile")
        .arg(ca)
        .output()
        .context("running openssl pkcs12 (install openssl)")?;
    if !out.status.success() {
        bail!("openssl pkcs12: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// `credentials`: a credentials.zip for shared-credential provisioning: a fleet-wide
/// certificate (CN `shared-provisioning`) and key with the CA as `autoprov_credentials.p12`,
/// the server URL as `autoprov.url`, the CA as `root.crt`.
fn credentials(b: &Backend, out: &Path, url: Option<String>) -> Result<()> {
    use std::io::Write as _;
    let (cert, key) = pki::issue_device(&b.dir, "shared-provisioning")?;
    let cert_path = b.path("pki/shared.pem");
    let key_path = b.path("pki/shared.key");
    repo::write_bytes(&cert_path, cert.as_bytes())?;
    repo::write_private(&key_path, key.as_bytes())?;
    let p12 = p12_bundle(&cert_path, &key_path, &b.path("pki/ca.pem"))?;
    let url = url.unwrap_or_else(|| format!("https://127.0.0.1:{}", b.port()));
    let tmp = out.with_extension("zip.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in [
        ("autoprov_credentials.p12", p12),
        ("autoprov.url", url.into_bytes()),
        ("root.crt", std::fs::read(b.path("pki/ca.pem"))?),
    ] {
        zip.start_file(name, opts)?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn ostree(args: &[&str]) -> Result<String> {
    let out = Process::new("ostree")
        .args(args)
        .output()
        .context("running the ostree CLI (install ostree)")?;
    if !out.status.success() {
        bail!(
            "ostree {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn treehub(b: &Backend) -> Result<String> {
    let path = b.path("treehub");
    if !path.join("config").exists() {
        ostree(&[
            "init",
            "--mode=archive",
            &format!("--repo={}", path.display()),
        ])?;
    }
    Ok(format!("--repo={}", path.display()))
}

fn now_string() -> String {
    aktualizr_rs_metadata::Timestamp::now().to_string()
}

fn push_ostree(
    b: &Backend,
    src: &Path,
    reference: &str,
    name: Option<String>,
    version: Option<String>,
    hardware_ids: Vec<String>,
) -> Result<(String, String)> {
    let th = treehub(b)?;
    let src_s = src.to_str().context("the repository path is not UTF-8")?;
    let commit = ostree(&["rev-parse", &format!("--repo={src_s}"), reference])?;
    // pull-local copies only the objects the treehub lacks, and sets the ref.
    ostree(&["pull-local", &th, src_s, reference])?;
    ostree(&["summary", "-u", &th])?;
    let version = match version {
        Some(v) => v,
        None => ostree(&[
            "show",
            &format!("--repo={src_s}"),
            "--print-metadata-key=version",
            &commit,
        ])
        .map(|v| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|_| commit[..12].to_owned()),
    };
    let base = reference.rsplit('/').next().unwrap_or(reference).to_owned();
    let name = name.unwrap_or_else(|| format!("{base}-{version}"));
    let now = now_string();
    b.add_image_target(
        &name,
        json!({
            "length": 0,
            "hashes": {"sha256": commit},
            "custom": {
                "name": base,
                "version": version,
                "hardwareIds": hardware_ids,
                "targetFormat": "OSTREE",
                "uri": null,
                "createdAt": now,
                "updatedAt": now,
            },
        }),
    )?;
    Ok((name, commit))
}

fn add_file(
    b: &Backend,
    file: &Path,
    name: Option<String>,
    version: String,
    hardware_ids: Vec<String>,
) -> Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = match name {
        Some(n) => n,
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .context("the file name is not UTF-8; give --name")?
            .to_owned(),
    };
    repo::check_target_name(&name)?;
    let digest = |alg| hex::encode(ring::digest::digest(alg, &bytes).as_ref());
    repo::write_bytes(&b.path("repo/targets").join(&name), &bytes)?;
    let now = now_string();
    b.add_image_target(
        &name,
        json!({
            "length": bytes.len(),
            "hashes": {"sha256": digest(&ring::digest::SHA256), "sha512": digest(&ring::digest::SHA512)},
            "custom": {
                "name": name,
                "version": version,
                "hardwareIds": hardware_ids,
                "targetFormat": "BINARY",
                "createdAt": now,
                "updatedAt": now,
            },
        }),
    )?;
    Ok(name)
}

fn print_log(dir: &Path, device: &str, as_json: bool) -> Result<()> {
    let records = serve::device_log(dir, device)?;
    if records.is_empty() && !dir.join("devices").join(device).exists() {
        bail!("no device {device:?} in {}", dir.display());
    }
    for r in records {
        if as_json {
            println!("{r}");
        } else {
            let body: &Value = &r["body"];
            println!(
                "{} {} {}\n    {}",
                r["time"].as_str().unwrap_or_default(),
                r["method"].as_str().unwrap_or_default(),
                r["path"].as_str().unwrap_or_default(),
                body
            );
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Init {
            dir,
            key_type,
            expires_days,
            port,
        } => {
            let b = Backend::init(&dir, key_type, expires_days, port)?;
            pki::init(&b.dir)?;
            treehub(&b)?;
            println!("initialized {}", dir.display());
        }
        Cmd::Provision {
            dir,
            device_id,
            hardware_id,
        } => {
            let out = provision(&Backend::open(&dir)?, &device_id, &hardware_id)?;
            println!("{}", out.join("sota.toml").display());
        }
        Cmd::Credentials { dir, out, url } => {
            credentials(&Backend::open(&dir)?, &out, url)?;
            println!("{}", out.display());
        }
        Cmd::PushOstree {
            dir,
            repo,
            reference,
            name,
            version,
            hardware_ids,
        } => {
            let b = Backend::open(&dir)?;
            let (name, commit) = push_ostree(&b, &repo, &reference, name, version, hardware_ids)?;
            println!("{name} {commit}");
        }
        Cmd::AddFile {
            dir,
            file,
            name,
            version,
            hardware_ids,
        } => println!(
            "{}",
            add_file(&Backend::open(&dir)?, &file, name, version, hardware_ids)?
        ),
        Cmd::Assign {
            dir,
            device,
            ecu_serial,
            target,
            correlation_id,
        } => {
            let v = Backend::open(&dir)?.assign(
                &device,
                Some((&ecu_serial, &target, correlation_id.as_deref())),
            )?;
            println!("{device}: Director targets version {v}: {target} on {ecu_serial}");
        }
        Cmd::Unassign { dir, device } => {
            let v = Backend::open(&dir)?.assign(&device, None)?;
            println!("{device}: Director targets version {v}: nothing assigned");
        }
        Cmd::RotateRoot { dir, repo } => {
            let v = Backend::open(&dir)?.rotate_root(repo)?;
            println!("{} root version {v}", repo.dir());
        }
        Cmd::Refresh { dir } => {
            let n = Backend::open(&dir)?.refresh()?;
            println!("re-signed snapshot and timestamp of {n} role sets");
        }
        Cmd::Serve {
            dir,
            port,
            director_root_and_targets_only,
            delay_ms,
            drop_after_bytes,
            corrupt_treehub_objects,
            old_director_targets,
            access_log,
        } => {
            let b = Backend::open(&dir)?;
            let opts = serve::Options {
                port: port.unwrap_or_else(|| b.port()),
                director_root_and_targets_only,
                faults: serve::Faults {
                    delay: delay_ms.map(Duration::from_millis),
                    drop_after_bytes,
                    corrupt_treehub_objects,
                    old_director_targets,
                },
                access_log,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(serve::serve(&dir, opts))?;
        }
        Cmd::DeviceLog { dir, device, json } => print_log(&dir, &device, json)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uptane-repo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
