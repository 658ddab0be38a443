//! `aktualizr-rs once` end to end over mutual TLS against `uptane-repo serve`, with real
//! OSTree: the happy path, finalization after a (simulated) reboot, a rollback, and attacks.
//! Each attack ends with no new deployment, the attack in the next manifest, and the device
//! still able to take the next valid update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use aktualizr_rs_metadata::{sign_envelope, Scheme, SigningKey, Timestamp};
use aktualizr_rs_testsupport::{commit_fake_os, ostree, workspace_bin};
use serde_json::{json, Value};

const OS: &str = "fakeos";
const REF: &str = "fakeos/x86_64/stable";
const SERIAL: &str = "ecu-1";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .output()
        .unwrap()
}

fn backend(args: &[&str]) -> String {
    let out = run(workspace_bin("uptane-repo").to_str().unwrap(), args);
    assert!(
        out.status.success(),
        "uptane-repo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

use aktualizr_rs_testsupport::KillOnDrop as Served;

/// A backend with OSTree targets fakeos-1 .. fakeos-3, a device `dev1` (ECU `ecu-1`,
/// hardware `hw1`) with an unbooted sysroot on v1, and its configuration.
struct Fixture {
    tmp: tempfile::TempDir,
    commits: Vec<String>,
    server: Option<Served>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture {
            tmp,
            commits: Vec::new(),
            server: None,
        };
        backend(&["init", f.s("b")]);
        backend(&["provision", "-d", f.s("b"), "dev1", "--hardware-id", "hw1"]);
        ostree(&["init", &format!("--repo={}", f.s("src")), "--mode=archive"]);
        for v in 1..=3u32 {
            let content = format!("version {v}\n");
            let c = commit_fake_os(
                &f.p("src"),
                f.tmp.path(),
                REF,
                v,
                &[("usr/share/version", content.as_bytes())],
            );
            backend(&[
                "push-ostree",
                "-d",
                f.s("b"),
                "--repo",
                f.s("src"),
                "--ref",
                REF,
                "--name",
                &format!("fakeos-{v}"),
                "--hardware-id",
                "hw1",
            ]);
            f.commits.push(c);
        }
        let sysroot = f.s("sysroot");
        std::fs::create_dir(sysroot).unwrap();
        ostree(&["admin", "init-fs", sysroot]);
        ostree(&["admin", "os-init", OS, "--sysroot", sysroot]);
        let repo = format!("--repo={sysroot}/ostree/repo");
        ostree(&["config", &repo, "set", "sysroot.bootloader", "none"]);
        ostree(&["pull-local", &repo, f.s("src"), &f.commits[0]]);
        ostree(&[
            "admin",
            "deploy",
            "--sysroot",
            sysroot,
            "--os",
            OS,
            &f.commits[0],
        ]);
        f.serve(&[]);
        f
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn s(&self, rel: &str) -> &'static str {
        Box::leak(self.p(rel).to_str().unwrap().to_owned().into_boxed_str())
    }

    /// (Re)starts `uptane-repo serve` with `extra` options and points the device at it.
    fn serve(&mut self, extra: &[&str]) {
        self.server = None;
        let (server, url) = aktualizr_rs_testsupport::serve_backend(
            &workspace_bin("uptane-repo"),
            &self.p("b"),
            extra,
        );
        self.server = Some(server);
        // The provisioned sota.toml, and a later file for this sandbox: it overrides the
        // server URL and points sysroot, storage and sentinel into the test directory.
        std::fs::write(
            self.p("zz-local.toml"),
            format!(
                "[tls]\nserver = \"{url}\"\n[pacman]\nsysroot = \"{}\"\nos = {OS}\nimages_path = \"{}\"\n\
                 [storage]\npath = \"{}\"\n[bootloader]\nreboot_sentinel_dir = \"{}\"\nreboot_command = \"touch {}\"\n\
                 [provision]\nprimary_ecu_serial = {SERIAL}\n[uptane]\npolling_sec = 1\n",
                self.p("sysroot").display(),
                self.p("images").display(),
                self.p("storage").display(),
                self.p("run").display(),
                self.p("rebooted").display()
            ),
        )
        .unwrap();
    }

    fn client(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "-c",
            self.s("b/devices/dev1/sota.toml"),
            "-c",
            self.s("zz-local.toml"),
        ];
        all.extend_from_slice(args);
        run(env!("CARGO_BIN_EXE_aktualizr-rs"), &all)
    }

    /// `aktualizr-rs ARGS` with extra environment variables.
    fn client_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"));
        cmd.args([
            "-c",
            self.s("b/devices/dev1/sota.toml"),
            "-c",
            self.s("zz-local.toml"),
        ])
        .args(args)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn once(&self) -> Result<String, String> {
        let out = self.client(&["once"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn assign(&self, target: &str) {
        backend(&["assign", "-d", self.s("b"), "dev1", SERIAL, target]);
    }

    /// The commits of the sysroot's deployments, newest first.
    fn deployments(&self) -> Vec<String> {
        let out = self.client(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["commit"].as_str().unwrap().to_owned())
            .collect()
    }

    fn sentinel(&self) -> PathBuf {
        self.p("run/need_reboot")
    }

    /// The last manifest the backend received, ECU part.
    fn last_ecu_manifest(&self) -> Value {
        let m: Value =
            serde_json::from_slice(&std::fs::read(self.p("b/devices/dev1/manifest.json")).unwrap())
                .unwrap();
        m["signed"]["ecu_version_manifests"][SERIAL]["signed"].clone()
    }

    fn last_manifest(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.p("b/devices/dev1/manifest.json")).unwrap())
            .unwrap()
    }

    fn events(&self) -> Vec<String> {
        let log = backend(&["device-log", "-d", self.s("b"), "dev1", "--json"]);
        log.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["path"] == "/events")
            .flat_map(|e| e["body"].as_array().unwrap().clone())
            .map(|e| e["eventType"]["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn key(&self, rel: &str) -> SigningKey {
        let text = std::fs::read_to_string(self.p(rel)).unwrap();
        let pem: String = text.lines().skip(1).collect::<Vec<_>>().join("\n");
        SigningKey::from_pkcs8_pem(&pem, Scheme::Ed25519).unwrap()
    }

    /// Writes the device's Director targets as given, signed with the Director's targets key,
    /// with the next version (for a Director served with --director-root-and-targets-only).
    fn forge_director_targets(&self, targets: Value) {
        let path = self.p("b/director/devices/dev1/targets.json");
        let old: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let signed = json!({
            "_type": "targets", "spec_version": "1.0.0",
            "version": old["signed"]["version"].as_u64().unwrap() + 1,
            "expires": Timestamp(Timestamp::now().0 + 86_400).to_string(),
            "targets": targets,
            "custom": {"deviceId": "dev1", "correlationId": "forged"},
        });
        let key = self.key("b/keys/director/targets.pem");
        std::fs::write(&path, sign_envelope(&signed, &[&key]).unwrap()).unwrap();
    }

    fn director_entry(&self, commit: &str, length: u64, ecu: &str, hw: &str) -> Value {
        json!({"length": length, "hashes": {"sha256": commit},
               "custom": {"ecuIdentifiers": {ecu: {"hardwareId": hw}}, "targetFormat": "OSTREE"}})
    }

    /// After an attack: nothing new deployed, the attack in the last manifest, and the next
    /// valid update still installs.
    fn assert_attack_then_recovery(&mut self, err: &str, expect_in_error: &str) {
        assert!(err.contains(expect_in_error), "{err}");
        assert_eq!(
            self.deployments(),
            vec![self.commits[0].clone()],
            "nothing new deployed"
        );
        assert!(!self.sentinel().exists());
        let attacks = self.last_ecu_manifest()["attacks_detected"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !attacks.is_empty(),
            "the manifest after the attack reports it"
        );
        self.serve(&[]);
        self.assign("fakeos-3");
        let out = self.once().unwrap();
        assert!(out.contains("fakeos-3 installed"), "{out}");
        assert_eq!(self.deployments()[0], self.commits[2]);
    }
}

#[test]
fn happy_path_then_finalize_after_reboot() {
    let f = Fixture::new();
    // Nothing assigned: up to date, registered, manifest sent with the running commit.
    assert!(f.once().unwrap().contains("up to date"));
    let m = f.last_ecu_manifest();
    assert_eq!(
        m["installed_image"]["fileinfo"]["hashes"]["sha256"],
        f.commits[0].as_str()
    );
    assert_eq!(m["attacks_detected"], "");
    // The manifest is signed by the ECU key registered with the Director.
    let log = backend(&["device-log", "-d", f.s("b"), "dev1", "--json"]);
    let ecus: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["path"] == "/director/ecus")
        .unwrap();
    assert_eq!(ecus["body"]["primary_ecu_serial"], SERIAL);
    assert_eq!(ecus["body"]["ecus"][0]["hardware_identifier"], "hw1");
    let manifest = f.last_manifest();
    let sig = &manifest["signatures"][0];
    assert_eq!(sig["method"], "ed25519");

    f.assign("fakeos-2");
    let out = f.once().unwrap();
    assert!(
        out.contains("fakeos-2 installed; reboot to apply it"),
        "{out}"
    );
    assert_eq!(
        f.deployments(),
        vec![f.commits[1].clone(), f.commits[0].clone()]
    );
    assert!(f.sentinel().exists());
    let status = String::from_utf8(f.client(&["status"]).stdout).unwrap();
    assert!(status.contains("Uptane target: fakeos-2"), "{status}");
    assert!(status.contains("Reboot pending: yes"), "{status}");
    assert_eq!(
        f.events(),
        [
            "EcuDownloadStarted",
            "EcuDownloadCompleted",
            "EcuInstallationStarted",
            "EcuInstallationApplied"
        ]
    );
    // One update at a time: while the reboot is pending, nothing else happens.
    f.assign("fakeos-3");
    assert!(f.once().unwrap().contains("waits for a reboot"));
    assert_eq!(f.deployments().len(), 2);

    // "Reboot": the sentinel (on tmpfs) is gone; unbooted, the first deployment is current.
    std::fs::remove_file(f.sentinel()).unwrap();
    f.assign("fakeos-2");
    assert!(f.once().unwrap().contains("up to date"));
    let manifest = f.last_manifest();
    let report = &manifest["signed"]["installation_report"]["report"];
    assert_eq!(report["result"]["success"], true, "{manifest}");
    assert_eq!(report["items"][0]["ecu"], SERIAL);
    assert_eq!(
        f.last_ecu_manifest()["installed_image"]["filepath"],
        "fakeos-2"
    );
    assert_eq!(f.events().last().unwrap(), "EcuInstallationCompleted");

    // Device data went once each (it did not change between the cycles).
    let log = backend(&["device-log", "-d", f.s("b"), "dev1", "--json"]);
    let paths: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for p in [
        "/system_info",
        "/system_info/network",
        "/system_info/config",
    ] {
        assert_eq!(
            paths.iter().filter(|x| *x == p).count(),
            1,
            "{p}: {paths:?}"
        );
    }
    let config = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["path"] == "/system_info/config")
        .unwrap();
    assert!(config["body"]["text"]
        .as_str()
        .unwrap()
        .contains("pacman.os = \"fakeos\""));
}

#[test]
fn rollback_is_reported_and_not_retried() {
    let f = Fixture::new();
    f.assign("fakeos-2");
    assert!(f.once().unwrap().contains("installed"));
    // The new deployment did not boot: the bootloader fell back to v1 (simulated by removing
    // the new deployment) and the sentinel is gone after the reboot.
    ostree(&["admin", "undeploy", "--sysroot", f.s("sysroot"), "0"]);
    std::fs::remove_file(f.sentinel()).unwrap();
    assert!(f.once().unwrap().contains("up to date"));
    let manifest = f.last_manifest();
    let report = &manifest["signed"]["installation_report"]["report"];
    assert_eq!(report["result"]["success"], false, "{manifest}");
    assert!(report["result"]["description"]
        .as_str()
        .unwrap()
        .contains("rolled back"));
    // Still assigned, but not installed again.
    assert!(f.once().unwrap().contains("up to date"));
    assert_eq!(f.deployments(), vec![f.commits[0].clone()]);
    // A different target is.
    f.assign("fakeos-3");
    assert!(f.once().unwrap().contains("fakeos-3 installed"));
}

/// A Director serving only root and targets, whose targets (signed with its key) assign
/// `name` with fakeos-`version`'s commit, `length`, to `ecu` with hardware ID `hw`: the cycle
/// is refused with `expect` in the error, then the device recovers.
fn forged_director_attack(
    name: &str,
    version: usize,
    length: u64,
    ecu: &str,
    hw: &str,
    expect: &str,
) {
    let mut f = Fixture::new();
    f.serve(&["--director-root-and-targets-only"]);
    f.forge_director_targets(
        json!({name: f.director_entry(&f.commits[version - 1], length, ecu, hw)}),
    );
    let err = f.once().unwrap_err();
    f.assert_attack_then_recovery(&err, expect);
}

#[test]
fn director_target_absent_from_the_image_repository() {
    forged_director_attack("not-in-image", 2, 0, SERIAL, "hw1", "does not sign");
}

#[test]
fn director_hash_or_length_differs_from_the_image_repository() {
    // fakeos-2's name with fakeos-3's commit.
    forged_director_attack("fakeos-2", 3, 0, SERIAL, "hw1", "in the Image repository");
    forged_director_attack("fakeos-2", 2, 5, SERIAL, "hw1", "length 5 in the Director");
}

#[test]
fn wrong_hardware_id_or_unknown_ecu() {
    forged_director_attack("fakeos-2", 2, 0, SERIAL, "other-hw", "the ECU's is \"hw1\"");
    forged_director_attack(
        "fakeos-2",
        2,
        0,
        "ecu-9",
        "hw1",
        "not an ECU of this device",
    );
}

#[test]
fn director_targets_replayed_from_an_older_version() {
    let mut f = Fixture::new();
    f.assign("fakeos-1");
    assert!(f.once().unwrap().contains("up to date"));
    f.assign("fakeos-1");
    assert!(f.once().unwrap().contains("up to date"));
    // The server replays the previous targets version. With timestamp and snapshot, the
    // unchanged timestamp means the trusted targets stay and the replay is never fetched.
    f.serve(&["--old-director-targets"]);
    assert!(f.once().unwrap().contains("up to date"));
    // A Director serving only root and targets: the lower version is a rollback.
    f.serve(&["--old-director-targets", "--director-root-and-targets-only"]);
    let err = f.once().unwrap_err();
    f.assert_attack_then_recovery(&err, "rollback");
}

#[test]
fn expired_image_timestamp_is_a_freeze() {
    let mut f = Fixture::new();
    let key = f.key("b/keys/image/timestamp.pem");
    let path = f.p("b/repo/timestamp.json");
    let old: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut signed = old["signed"].clone();
    signed["version"] = json!(signed["version"].as_u64().unwrap() + 1);
    signed["expires"] = json!("2020-01-01T00:00:00Z");
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, sign_envelope(&signed, &[&key]).unwrap()).unwrap();
    f.assign("fakeos-2");
    let err = f.once().unwrap_err();
    assert!(err.contains("expired"), "{err}");
    std::fs::write(&path, original).unwrap();
    backend(&["refresh", "-d", f.s("b")]);
    f.assert_attack_then_recovery(&err, "timestamp");
}

#[test]
fn image_root_rotation_with_too_few_signatures() {
    let mut f = Fixture::new();
    // Root v2 with a new root key, signed only by the new key (not by v1's).
    let root1: Value =
        serde_json::from_slice(&std::fs::read(f.p("b/repo/1.root.json")).unwrap()).unwrap();
    let new_key = SigningKey::generate(Scheme::Ed25519).unwrap();
    let mut signed = root1["signed"].clone();
    signed["version"] = json!(2);
    let old_id = signed["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    signed["keys"].as_object_mut().unwrap().remove(&old_id);
    signed["keys"][new_key.keyid()] = new_key.public().to_json().clone();
    signed["roles"]["root"]["keyids"] = json!([new_key.keyid()]);
    std::fs::write(
        f.p("b/repo/2.root.json"),
        sign_envelope(&signed, &[&new_key]).unwrap(),
    )
    .unwrap();
    f.assign("fakeos-2");
    let err = f.once().unwrap_err();
    assert!(err.contains("threshold"), "{err}");
    std::fs::remove_file(f.p("b/repo/2.root.json")).unwrap();
    f.assert_attack_then_recovery(&err, "root");
}

#[test]
fn corrupted_treehub_object() {
    let mut f = Fixture::new();
    f.serve(&["--corrupt-treehub-objects"]);
    f.assign("fakeos-2");
    let err = f.once().unwrap_err();
    assert!(err.contains("downloading fakeos-2"), "{err}");
    assert_eq!(f.deployments(), vec![f.commits[0].clone()]);
    assert!(f.events().contains(&"EcuDownloadCompleted".to_owned()));
    f.serve(&[]);
    assert!(f.once().unwrap().contains("fakeos-2 installed"));
}

#[test]
fn info_and_the_daemon() {
    let mut f = Fixture::new();
    let out = f.client(&["info", "--json"]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["device_id"], "dev1");
    assert_eq!(info["registered"], false);
    assert_eq!(info["current"]["commit"], f.commits[0].as_str());
    f.once().unwrap();
    let out = f.client(&["info"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Registered: yes"), "{text}");
    assert!(
        text.contains("director metadata versions: root 1 timestamp 1 snapshot 1 targets 1"),
        "{text}"
    );

    // The daemon polls every second: an assignment is picked up without a restart.
    let mut args = vec![
        "-c",
        f.s("b/devices/dev1/sota.toml"),
        "-c",
        f.s("zz-local.toml"),
        "daemon",
    ];
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
        .args(&args)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    f.assign("fakeos-2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f.sentinel().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not install"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let term = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    term(daemon.id());
    assert!(
        daemon.wait().unwrap().success(),
        "SIGTERM ends the daemon cleanly"
    );
    assert_eq!(f.deployments()[0], f.commits[1]);

    // SIGTERM in the middle of a slow cycle also ends it at once and cleanly.
    f.serve(&["--delay-ms", "3000"]);
    args.truncate(4);
    args.push("daemon");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let started = std::time::Instant::now();
    term(daemon.id());
    assert!(daemon.wait().unwrap().success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn check_download_install_and_finalize_as_separate_steps() {
    let f = Fixture::new();
    f.assign("fakeos-2");
    let step = |cmd: &str| {
        let out = f.client(&[cmd]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(step("check").trim(), "fakeos-2 is available");
    assert_eq!(f.deployments().len(), 1);
    let repo = format!("--repo={}", f.p("sysroot/ostree/repo").display());
    let has_commit = || {
        Command::new("ostree")
            .args(["show", &repo, &f.commits[1]])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!has_commit(), "check downloads nothing");
    assert_eq!(step("download").trim(), "fakeos-2 is downloaded");
    assert!(has_commit());
    assert_eq!(f.deployments().len(), 1, "download installs nothing");
    assert!(!f.sentinel().exists());
    assert_eq!(
        step("install").trim(),
        "fakeos-2 installed; reboot to apply it"
    );
    assert_eq!(
        step("finalize").trim(),
        "fakeos-2 is installed and waits for a reboot"
    );
    std::fs::remove_file(f.sentinel()).unwrap();
    assert_eq!(step("finalize").trim(), "up to date");
    assert_eq!(
        f.last_manifest()["signed"]["installation_report"]["report"]["result"]["success"],
        true
    );
}

#[test]
fn binary_target_is_stored_and_a_cut_download_resumes() {
    let mut f = Fixture::new();
    let fw: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.p("fw.bin"), &fw).unwrap();
    backend(&[
        "add-file",
        "-d",
        f.s("b"),
        f.s("fw.bin"),
        "--name",
        "fw-1.bin",
        "--hardware-id",
        "hw1",
    ]);
    let log = f.p("access.log");
    let log_s = log.to_str().unwrap();
    // The connection drops after 100,000 bytes of the file.
    f.serve(&["--drop-after-bytes", "100000", "--access-log", log_s]);
    f.assign("fw-1.bin");
    let err = f.once().unwrap_err();
    assert!(err.contains("downloading fw-1.bin"), "{err}");
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &fw).as_ref());
    let part = f.p(&format!("images/{sha}.part"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 100_000);
    // The next cycle asks for the rest only.
    f.serve(&["--access-log", log_s]);
    std::fs::write(&log, "").unwrap();
    let out = f.once().unwrap();
    assert!(
        out.contains("fw-1.bin installed (stored; no reboot needed)"),
        "{out}"
    );
    assert_eq!(std::fs::read(f.p(&format!("images/{sha}"))).unwrap(), fw);
    assert!(!part.exists());
    let access = std::fs::read_to_string(&log).unwrap();
    let line = access
        .lines()
        .find(|l| l.contains("/repo/targets/fw-1.bin"))
        .unwrap();
    assert!(line.ends_with(" 206 200000"), "{line}");
    assert_eq!(f.deployments().len(), 1, "a binary target deploys nothing");
    f.once().unwrap();
    assert_eq!(
        f.last_ecu_manifest()["installed_image"]["filepath"],
        "fw-1.bin"
    );
    assert!(f.once().unwrap().contains("up to date"));
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = aktualizr_rs_testsupport::workspace().join("systemd");
    let mut units = Vec::new();
    for name in [
        "aktualizr-rs.service",
        "ostree-pending-reboot.service",
        "ostree-pending-reboot.timer",
    ] {
        // The units name the installed binary; verify checks that it exists.
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap()
            .replace("/usr/bin/aktualizr-rs", env!("CARGO_BIN_EXE_aktualizr-rs"));
        std::fs::write(tmp.path().join(name), text).unwrap();
        units.push(tmp.path().join(name));
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze is missing: run scripts/setup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");

    // scripts/install-device puts binary, units and tmpfiles entry in place.
    let root = tmp.path().join("root");
    let out = Command::new(aktualizr_rs_testsupport::workspace().join("scripts/install-device"))
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/bin/aktualizr-rs",
        "usr/lib/systemd/system/aktualizr-rs.service",
        "usr/lib/systemd/system/ostree-pending-reboot.timer",
        "usr/lib/tmpfiles.d/aktualizr-rs.conf",
        "usr/share/dbus-1/system.d/org.aktualizr_rs.Client.conf",
    ] {
        assert!(root.join(f).exists(), "{f}");
    }
}

#[test]
fn pending_reboot_only_when_pending_and_not_inhibited() {
    let f = Fixture::new();
    let reboot = |env: &[(&str, &str)]| {
        let out = f.client_env(&["reboot-if-pending"], env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let rebooted = f.p("rebooted");
    // No sentinel: nothing to do.
    assert!(reboot(&[]).contains("no reboot pending"));
    assert!(!rebooted.exists());
    f.assign("fakeos-2");
    f.once().unwrap();
    // The lock file holds it off.
    let lock = f.p("run/reboot.lock");
    std::fs::write(&lock, b"").unwrap();
    assert!(reboot(&[]).contains("reboot.lock exists"));
    std::fs::remove_file(&lock).unwrap();
    // A systemd inhibitor lock on shutdown holds it off (systemd-inhibit faked on PATH).
    let bin = f.p("fakebin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("systemd-inhibit");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'backup 0 root 123 backup shutdown:sleep Backup running block'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    assert!(reboot(&[("PATH", &path)]).contains("inhibitor lock blocks shutdown"));
    assert!(!rebooted.exists());
    // Otherwise: reboot.
    assert!(reboot(&[]).contains("rebooting into the pending update"));
    assert!(rebooted.exists());
    std::fs::remove_file(&rebooted).unwrap();
    // The recorded update is no longer a pending deployment: no reboot.
    ostree(&["admin", "undeploy", "--sysroot", f.s("sysroot"), "0"]);
    assert!(reboot(&[]).contains("is not a pending deployment"));
    assert!(!rebooted.exists());
}

#[test]
fn daemon_speaks_sd_notify_and_pings_the_watchdog() {
    let f = Fixture::new();
    let sock_path = f.p("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
        .args([
            "-c",
            f.s("b/devices/dev1/sota.toml"),
            "-c",
            f.s("zz-local.toml"),
            "daemon",
        ])
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen
        .iter()
        .any(|m: &String| m.starts_with("STATUS=up to date"))
        && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        let n = sock.recv(&mut buf).expect("no sd_notify message in 20 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(seen[0], "READY=1\nSTATUS=started");
    assert!(Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(daemon.wait().unwrap().success());
    loop {
        let n = sock.recv(&mut buf).expect("no STOPPING=1");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
}

impl Fixture {
    /// Appends configuration (after serve(), which rewrites the file).
    fn add_config(&self, text: &str) {
        let mut c = std::fs::read_to_string(self.p("zz-local.toml")).unwrap();
        c.push_str(text);
        std::fs::write(self.p("zz-local.toml"), c).unwrap();
    }

    /// `aktualizr-rs ARGS` at a fake local time; stdout, which must be a success.
    fn at(&self, now: &str, args: &[&str]) -> String {
        let out = self.client_env(args, &[("AKTUALIZR_RS_FAKE_NOW", now)]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[test]
fn install_waits_for_approval_across_restarts() {
    let f = Fixture::new();
    f.add_config("[consent]\ninstall_approval = true\n");
    f.assign("fakeos-2");
    let now = "2026-11-27T12:00";
    let out = f.at(now, &["once"]);
    assert!(
        out.contains("waiting for approval to install (aktualizr-rs approve install)"),
        "{out}"
    );
    assert_eq!(f.deployments().len(), 1, "not installed");
    // Each command is a new process: the waiting state is persisted and shown.
    let status = f.at(now, &["status"]);
    assert!(
        status.contains(
            "Waiting for: approval to install (aktualizr-rs approve install), for fakeos-2"
        ),
        "{status}"
    );
    assert!(f.at(now, &["once"]).contains("waiting for approval"));
    assert!(f
        .at(now, &["approve", "install"])
        .contains("approved: install of fakeos-2"));
    assert!(f.at(now, &["once"]).contains("fakeos-2 installed"));
    assert!(!f.at(now, &["status"]).contains("Waiting for"));
    // The approval was used up: the next update waits again.
    std::fs::remove_file(f.sentinel()).unwrap();
    f.at(now, &["once"]);
    f.assign("fakeos-3");
    assert!(f
        .at(now, &["once"])
        .contains("waiting for approval to install"));
}

#[test]
fn download_and_reboot_windows() {
    let f = Fixture::new();
    f.add_config("[consent]\ndownload_window = Mon-Fri 01:00-05:00\nreboot_window = Sat,Sun 02:00-04:00\nreboot_approval = true\n");
    f.assign("fakeos-2");
    // Saturday noon: outside the download window; nothing is fetched.
    let out = f.at("2026-11-28T12:00", &["once"]);
    assert!(
        out.contains(
            "waiting for the download window Mon-Fri 01:00-05:00, which opens Mon 2026-11-30 01:00"
        ),
        "{out}"
    );
    assert_eq!(f.deployments().len(), 1);
    // Monday 01:30: inside; downloaded and installed.
    assert!(f
        .at("2026-11-30T01:30", &["once"])
        .contains("fakeos-2 installed"));
    // The reboot waits for its approval, then for its window.
    let rebooted = f.p("rebooted");
    let out = f.at("2026-11-30T01:31", &["reboot-if-pending"]);
    assert!(
        out.contains("not rebooting: waiting for approval to reboot"),
        "{out}"
    );
    f.at("2026-11-30T01:32", &["approve", "reboot"]);
    let out = f.at("2026-11-30T01:33", &["reboot-if-pending"]);
    assert!(
        out.contains(
            "waiting for the reboot window Sat,Sun 02:00-04:00, which opens Sat 2026-12-05 02:00"
        ),
        "{out}"
    );
    assert!(!rebooted.exists());
    assert!(f
        .at("2026-12-05T02:10", &["reboot-if-pending"])
        .contains("rebooting"));
    assert!(rebooted.exists());
}

/// A private dbus-daemon configured like the system bus, with our policy file included.
struct Bus {
    _child: Served,
    address: String,
}

impl Bus {
    fn start(dir: &std::path::Path) -> Bus {
        let policy =
            aktualizr_rs_testsupport::workspace().join("systemd/org.aktualizr_rs.Client.conf");
        let socket = dir.join("bus");
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
  <include>{}</include>
</busconfig>
"#,
                socket.display(),
                policy.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .spawn()
            .expect("dbus-daemon is missing: run scripts/setup");
        let bus = Bus {
            _child: Served(child),
            address: format!("unix:path={}", socket.display()),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "dbus-daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bus
    }

    fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .unwrap()
    }

    fn call(&self, method: &str, extra: &[&str]) {
        let mut args = vec![
            "call",
            "org.aktualizr_rs.Client",
            "/org/aktualizr_rs/Client",
            "org.aktualizr_rs.Client1",
            method,
        ];
        args.extend_from_slice(extra);
        let out = self.busctl(&args);
        assert!(
            out.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn property(&self, name: &str) -> String {
        let out = self.busctl(&[
            "get-property",
            "org.aktualizr_rs.Client",
            "/org/aktualizr_rs/Client",
            "org.aktualizr_rs.Client1",
            name,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text.is_empty() {
            return format!("(busctl: {})", String::from_utf8_lossy(&out.stderr).trim());
        }
        text
    }

    fn wait_for(&self, name: &str, expected: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v = self.property(name);
            if v == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} is {v:?}, expected {expected:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
fn dbus_api_on_a_real_bus_daemon() {
    let f = Fixture::new();
    f.add_config("[consent]\ninstall_approval = true\n[uptane]\npolling_sec = 3600\n");
    let busdir = f.p("dbus");
    std::fs::create_dir(&busdir).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(f.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&busdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = Bus::start(&busdir);
    let monitor_out = std::fs::File::create(f.p("monitor.log")).unwrap();
    let mut monitor = Served(
        Command::new("dbus-monitor")
            .arg("--address")
            .arg(&bus.address)
            .arg("type='signal',interface='org.aktualizr_rs.Client1'")
            .stdout(monitor_out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut daemon = Served(
        Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
            .args([
                "-c",
                f.s("b/devices/dev1/sota.toml"),
                "-c",
                f.s("zz-local.toml"),
                "daemon",
            ])
            .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stderr(std::fs::File::create(f.p("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    bus.wait_for("State", "s \"idle\"");
    assert_eq!(bus.property("NeedReboot"), "b false");
    assert_eq!(
        bus.property("CurrentTarget"),
        format!("s \"{}\"", f.commits[0])
    );

    f.assign("fakeos-2");
    bus.call("CheckNow", &[]);
    bus.wait_for("State", "s \"update-available\"");
    bus.call("Install", &[]);
    bus.wait_for("State", "s \"waiting\"");
    assert!(
        bus.property("Waiting").contains("approval to install"),
        "{}",
        bus.property("Waiting")
    );
    bus.call("Approve", &["s", "install"]);
    bus.call("Install", &[]);
    bus.wait_for("State", "s \"reboot-pending\"");
    assert_eq!(bus.property("NeedReboot"), "b true");
    assert_eq!(bus.property("PendingTarget"), "s \"fakeos-2\"");
    assert_eq!(bus.property("Progress"), "u 100");
    bus.call("Pause", &[]);
    bus.wait_for("State", "s \"paused\"");
    bus.call("Resume", &[]);
    bus.wait_for("State", "s \"reboot-pending\"");
    let bad = bus.busctl(&[
        "call",
        "org.aktualizr_rs.Client",
        "/org/aktualizr_rs/Client",
        "org.aktualizr_rs.Client1",
        "Approve",
        "s",
        "everything",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected download, install or reboot"));

    // The policy: anyone reads properties, only root (and group aktualizr) calls methods.
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
            .arg(format!("--address={}", bus.address))
            .args(args)
            .output()
            .unwrap()
    };
    let read = nobody(&[
        "get-property",
        "org.aktualizr_rs.Client",
        "/org/aktualizr_rs/Client",
        "org.aktualizr_rs.Client1",
        "State",
    ]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let call = nobody(&[
        "call",
        "org.aktualizr_rs.Client",
        "/org/aktualizr_rs/Client",
        "org.aktualizr_rs.Client1",
        "CheckNow",
    ]);
    assert!(!call.status.success());
    assert!(
        String::from_utf8_lossy(&call.stderr)
            .to_lowercase()
            .contains("denied"),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );

    // status asks the running daemon.
    let status = f.client_env(&["status"], &[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("Daemon: reboot-pending"));

    assert!(Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(daemon.0.wait().unwrap().success());
    let _ = monitor.0.kill();
    let _ = monitor.0.wait();
    let log = std::fs::read_to_string(f.p("monitor.log")).unwrap();
    assert!(log.contains("member=StateChanged"), "{log}");
    assert!(log.contains("member=Progress"), "{log}");
}

#[test]
fn shared_credential_provisioning_from_credentials_zip() {
    let f = Fixture::new();
    let url = std::fs::read_to_string(f.p("b/serve.url")).unwrap();
    backend(&[
        "credentials",
        "-d",
        f.s("b"),
        f.s("credentials.zip"),
        "--url",
        url.trim(),
    ]);
    // A device with no credentials of its own and no server in its configuration: both come
    // from the archive.
    std::fs::write(
        f.p("shared.toml"),
        format!(
            "[provision]\nprovision_path = \"{}\"\ndevice_id = dev2\nprimary_ecu_serial = ecu-2\n\
             primary_ecu_hardware_id = hw1\n[pacman]\nsysroot = \"{}\"\nos = {OS}\n\
             [storage]\npath = \"{}\"\n[bootloader]\nreboot_sentinel_dir = \"{}\"\n",
            f.p("credentials.zip").display(),
            f.p("sysroot").display(),
            f.p("storage2").display(),
            f.p("run2").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["-c", f.s("shared.toml")];
        all.extend_from_slice(args);
        let out = run(env!("CARGO_BIN_EXE_aktualizr-rs"), &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["once"]).contains("up to date"));
    // The device got its own certificate (CN dev2) and uses it from then on.
    let cert = std::fs::read_to_string(f.p("storage2/client.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(f.p("b/devices/dev2/device.json").exists());
    let log = backend(&["device-log", "-d", f.s("b"), "dev2", "--json"]);
    assert!(log.contains("/director/ecus"), "{log}");
    let info: Value = serde_json::from_str(&run(&["info", "--json"])).unwrap();
    assert_eq!(info["device_id"], "dev2");
    backend(&["assign", "-d", f.s("b"), "dev2", "ecu-2", "fakeos-2"]);
    assert!(run(&["once"]).contains("fakeos-2 installed"));
    // A second run does not register again.
    std::fs::remove_file(f.p("run2/need_reboot")).unwrap();
    assert!(run(&["once"]).contains("up to date"));
}
