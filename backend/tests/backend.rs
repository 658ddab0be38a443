//! `uptane-repo` end to end: every command, `serve` over mutual TLS on an ephemeral
//! 127.0.0.1 port talked to with plain HTTPS requests (with and without a client
//! certificate), the Director metadata verified with our `metadata/`, and the Image
//! repository refreshed by python-tuf's ngclient.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aktualizr_rs_metadata::{uptane, Timestamp, TrustedSet};
use aktualizr_rs_testsupport::{
    commit_fake_os, interop_script, ostree, python, serve_backend, KillOnDrop, ServePy,
};
use serde_json::{json, Value};

fn uptane_repo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uptane-repo"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `uptane-repo ARGS`, expecting success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = uptane_repo(args);
    assert!(
        out.status.success(),
        "uptane-repo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `uptane-repo ARGS`, expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = uptane_repo(args);
    assert!(!out.status.success(), "uptane-repo {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

struct Served {
    _server: KillOnDrop,
    url: String,
}

fn serve(dir: &Path, extra: &[&str]) -> Served {
    let (server, url) = serve_backend(Path::new(env!("CARGO_BIN_EXE_uptane-repo")), dir, extra);
    Served {
        _server: server,
        url,
    }
}

/// A backend with device `dev1` (hardware `hw1`), an OSTree target `stable-1` and a binary
/// target `fw.bin`.
struct Fixture {
    tmp: tempfile::TempDir,
    commit: String,
}

impl Fixture {
    fn new(key_type: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let f = Fixture {
            tmp,
            commit: String::new(),
        };
        ok(&[
            "init",
            f.s("b"),
            "--key-type",
            key_type,
            "--expires-days",
            "30",
        ]);
        ok(&["provision", "-d", f.s("b"), "dev1", "--hardware-id", "hw1"]);
        ostree(&["init", &format!("--repo={}", f.s("src")), "--mode=archive"]);
        let commit = commit_fake_os(&f.p("src"), f.tmp.path(), "os/x86_64/stable", 1, &[]);
        let out = ok(&[
            "push-ostree",
            "-d",
            f.s("b"),
            "--repo",
            f.s("src"),
            "--ref",
            "os/x86_64/stable",
            "--hardware-id",
            "hw1",
        ]);
        assert_eq!(out.trim(), format!("stable-1 {commit}"));
        std::fs::write(f.p("fw.bin"), b"firmware image\n").unwrap();
        ok(&[
            "add-file",
            "-d",
            f.s("b"),
            f.s("fw.bin"),
            "--hardware-id",
            "hw1",
        ]);
        Fixture { commit, ..f }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn s(&self, rel: &str) -> &str {
        // Leaked so that argument lists can borrow it; a test process is short-lived.
        Box::leak(self.p(rel).to_str().unwrap().to_owned().into_boxed_str())
    }

    fn json(&self, rel: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.p(rel)).unwrap()).unwrap()
    }

    /// An HTTPS client with dev1's identity (or none), trusting the backend CA.
    fn client(&self, identity: bool) -> reqwest::blocking::Client {
        let dev = self.p("b/devices/dev1");
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(dev.join("root.crt")).unwrap()).unwrap();
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
        if identity {
            let mut pem = std::fs::read(dev.join("client.pem")).unwrap();
            pem.extend(std::fs::read(dev.join("pkey.pem")).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}

fn get(c: &reqwest::blocking::Client, url: &str) -> (u16, Vec<u8>) {
    let r = c.get(url).send().unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// Verifies a device's Director metadata (root, timestamp, snapshot, targets) as fetched.
fn verify_director(root: &[u8], ts: &[u8], snap: &[u8], targets: &[u8]) -> TrustedSet {
    let mut t = TrustedSet::new(root, Timestamp::now()).unwrap();
    t.update_timestamp(ts).unwrap();
    t.update_snapshot(snap, false).unwrap();
    t.update_targets(targets, "targets", "root").unwrap();
    t
}

#[test]
fn init_provision_push_assign_serve_and_the_device_api() {
    let f = Fixture::new("ed25519");
    // provision wrote a ready sota.toml and the device's credentials.
    let toml = std::fs::read_to_string(f.p("b/devices/dev1/sota.toml")).unwrap();
    assert!(
        toml.contains("server = \"https://127.0.0.1:8443\""),
        "{toml}"
    );
    assert!(toml.contains("primary_ecu_hardware_id = \"hw1\""), "{toml}");
    assert!(
        toml.contains("tls_clientcert_path = \"client.pem\""),
        "{toml}"
    );
    // push-ostree put the commit in the treehub and an OSTREE target in the Image repo.
    ostree(&["show", &format!("--repo={}", f.s("b/treehub")), &f.commit]);
    let image = f.json("b/repo/targets.json");
    let t = &image["signed"]["targets"]["stable-1"];
    assert_eq!(t["length"], 0);
    assert_eq!(t["hashes"]["sha256"], f.commit.as_str());
    assert_eq!(t["custom"]["targetFormat"], "OSTREE");
    assert_eq!(t["custom"]["hardwareIds"], json!(["hw1"]));
    assert_eq!(t["custom"]["version"], "1");
    let fw = &image["signed"]["targets"]["fw.bin"];
    assert_eq!(fw["length"], 15);
    assert!(fw["hashes"]["sha512"].as_str().unwrap().len() == 128);

    let out = ok(&[
        "assign",
        "-d",
        f.s("b"),
        "dev1",
        "ecu-1",
        "stable-1",
        "--correlation-id",
        "corr-7",
    ]);
    assert!(out.contains("version 2"), "{out}");
    let srv = serve(&f.p("b"), &[]);
    let c = f.client(true);
    let url = |p: &str| format!("{}{p}", srv.url);
    let (code, root) = get(&c, &url("/director/root.json"));
    assert_eq!(code, 200);
    let (_, root1) = get(&c, &url("/director/1.root.json"));
    assert_eq!(root, root1);
    let (_, ts) = get(&c, &url("/director/timestamp.json"));
    let (_, snap) = get(&c, &url("/director/snapshot.json"));
    let (_, targets) = get(&c, &url("/director/targets.json"));
    let trusted = verify_director(&root, &ts, &snap, &targets);
    let dt = trusted.targets("targets").unwrap();
    let entry = &dt.targets["stable-1"];
    assert_eq!(entry.hashes, vec![("sha256".to_owned(), f.commit.clone())]);
    assert_eq!(
        entry.custom().unwrap()["ecuIdentifiers"],
        json!({"ecu-1": {"hardwareId": "hw1"}})
    );
    let signed: Value = serde_json::from_slice(&targets).unwrap();
    assert_eq!(
        signed["signed"]["custom"],
        json!({"deviceId": "dev1", "correlationId": "corr-7"})
    );
    // The Uptane checks of metadata/ accept what the backend signed: the assignment to this
    // device's ECU matches the Image repository's entry; another device is refused.
    let ecus = [uptane::Ecu {
        serial: "ecu-1".into(),
        hardware_id: "hw1".into(),
    }];
    let assigned = uptane::director_assignments(dt, &ecus, Some("dev1")).unwrap();
    assert_eq!(assigned.len(), 1);
    let (_, image_targets) = get(&c, &url("/repo/targets.json"));
    let image_signed: Value = serde_json::from_slice(&image_targets).unwrap();
    let image_meta =
        aktualizr_rs_metadata::TargetsMeta::parse("targets", image_signed["signed"].clone())
            .unwrap();
    uptane::match_image(&assigned[0], image_meta.targets.get("stable-1"), None).unwrap();
    assert!(uptane::director_assignments(dt, &ecus, Some("dev2")).is_err());

    // The Image repository, its targets and the treehub are served too.
    assert_eq!(get(&c, &url("/repo/timestamp.json")).0, 200);
    assert_eq!(get(&c, &url("/repo/targets/fw.bin")).1, b"firmware image\n");
    let r = c
        .get(url("/repo/targets/fw.bin"))
        .header("Range", "bytes=9-")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), b"image\n");
    assert_eq!(get(&c, &url("/treehub/config")).0, 200);
    assert_eq!(
        get(
            &c,
            &url(&format!(
                "/treehub/objects/{}/{}.commit",
                &f.commit[..2],
                &f.commit[2..]
            ))
        )
        .0,
        200
    );
    assert_eq!(get(&c, &url("/repo/../backend.json")).0, 404);
    assert_eq!(get(&c, &url("/repo/..%2Fbackend.json")).0, 400);
    assert_eq!(get(&c, &url("/nothing")).0, 404);

    // Without a client certificate there is no answer at all.
    assert!(f
        .client(false)
        .get(url("/director/root.json"))
        .send()
        .is_err());
    assert!(f
        .client(false)
        .get(url("/repo/targets/fw.bin"))
        .send()
        .is_err());

    // The device API: each request is stored per device and shown by device-log.
    let ecus = json!({"primary_ecu_serial": "ecu-1", "ecus": [{"ecu_serial": "ecu-1", "hardware_identifier": "hw1-rev2", "clientKey": {}}]});
    let sent: Vec<(&str, &str, Value)> = vec![
        ("POST", "/director/ecus", ecus),
        (
            "PUT",
            "/director/manifest",
            json!({"signatures": [], "signed": {"primary_ecu_serial": "ecu-1"}}),
        ),
        (
            "POST",
            "/events",
            json!([{"id": "e1", "eventType": {"id": "EcuDownloadStarted", "version": 0}}]),
        ),
        ("PUT", "/system_info", json!({"id": "hw"})),
        (
            "PUT",
            "/system_info/network",
            json!({"local_ipv4": "10.0.0.2"}),
        ),
        (
            "PUT",
            "/core/installed",
            json!([{"name": "busybox", "version": "1"}]),
        ),
    ];
    for (method, path, body) in &sent {
        let r = c
            .request(method.parse().unwrap(), url(path))
            .json(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{method} {path}");
    }
    let r = c
        .post(url("/system_info/config"))
        .header("Content-Type", "application/toml")
        .body("[tls]\nserver = \"x\"\n")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        c.put(url("/director/manifest"))
            .body("not json")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        c.post(url("/no/such/api"))
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    let log: Vec<Value> = ok(&["device-log", "-d", f.s("b"), "dev1", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), sent.len() + 1, "{log:?}");
    for ((method, path, body), entry) in sent.iter().zip(&log) {
        assert_eq!(entry["method"], *method);
        assert_eq!(entry["path"], *path);
        assert_eq!(entry["body"], *body);
    }
    assert_eq!(log[6]["body"]["text"], "[tls]\nserver = \"x\"\n");
    let text = ok(&["device-log", "-d", f.s("b"), "dev1"]);
    assert!(text.contains("PUT /director/manifest"), "{text}");
    assert!(f.p("b/devices/dev1/manifest.json").exists());
    // The ECU registration is recorded; a new assignment uses the registered hardware ID.
    ok(&["assign", "-d", f.s("b"), "dev1", "ecu-1", "fw.bin"]);
    let (_, targets) = get(&c, &url("/director/targets.json"));
    let v: Value = serde_json::from_slice(&targets).unwrap();
    assert_eq!(
        v["signed"]["targets"]["fw.bin"]["custom"]["ecuIdentifiers"]["ecu-1"]["hardwareId"],
        "hw1-rev2"
    );
    assert_eq!(v["signed"]["version"], 3);
    assert!(v["signed"]["custom"]["correlationId"]
        .as_str()
        .unwrap()
        .starts_with("urn:uptane-repo:dev1:"));
}

#[test]
fn director_modes_and_fault_switches() {
    let f = Fixture::new("ed25519");
    ok(&["assign", "-d", f.s("b"), "dev1", "ecu-1", "stable-1"]);
    ok(&["assign", "-d", f.s("b"), "dev1", "ecu-1", "fw.bin"]);
    let c = f.client(true);
    {
        let srv = serve(&f.p("b"), &["--director-root-and-targets-only"]);
        assert_eq!(
            get(&c, &format!("{}/director/timestamp.json", srv.url)).0,
            404
        );
        assert_eq!(
            get(&c, &format!("{}/director/snapshot.json", srv.url)).0,
            404
        );
        assert_eq!(
            get(&c, &format!("{}/director/targets.json", srv.url)).0,
            200
        );
    }
    {
        let srv = serve(
            &f.p("b"),
            &["--old-director-targets", "--corrupt-treehub-objects"],
        );
        let (_, t) = get(&c, &format!("{}/director/targets.json", srv.url));
        let v: Value = serde_json::from_slice(&t).unwrap();
        assert_eq!(
            v["signed"]["version"], 2,
            "the previous version is replayed"
        );
        assert!(v["signed"]["targets"]["stable-1"].is_object());
        // Every .filez object differs from the stored one.
        let objects = f.p("b/treehub/objects");
        let mut checked = 0;
        for d in std::fs::read_dir(&objects).unwrap() {
            for o in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let o = o.unwrap().path();
                if o.extension().is_some_and(|e| e == "filez") {
                    let rel = o
                        .strip_prefix(f.p("b"))
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let (_, served) = get(&c, &format!("{}/{rel}", srv.url));
                    assert_ne!(served, std::fs::read(&o).unwrap());
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
    }
    {
        let srv = serve(&f.p("b"), &["--drop-after-bytes", "4"]);
        // The connection is dropped mid-body: the client sees an error, not a short file.
        let r = c
            .get(format!("{}/repo/targets/fw.bin", srv.url))
            .send()
            .unwrap();
        assert_eq!(r.content_length(), Some(15));
        assert!(r.bytes().is_err());
        // Metadata is not cut.
        assert_eq!(get(&c, &format!("{}/repo/root.json", srv.url)).0, 200);
    }
    {
        let log = f.p("access.log");
        let srv = serve(&f.p("b"), &["--access-log", log.to_str().unwrap()]);
        assert_eq!(get(&c, &format!("{}/repo/targets/fw.bin", srv.url)).0, 200);
        assert_eq!(get(&c, &format!("{}/nothing", srv.url)).0, 404);
        let lines = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines[0], "dev1 GET /repo/targets/fw.bin 0 200 15");
        assert!(
            lines[1].starts_with("dev1 GET /nothing 0 404 "),
            "{lines:?}"
        );
    }
    {
        let srv = serve(&f.p("b"), &["--delay-ms", "300"]);
        let started = std::time::Instant::now();
        assert_eq!(get(&c, &format!("{}/repo/root.json", srv.url)).0, 200);
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    }
}

/// python-tuf's ngclient refreshes the Image repository and downloads a binary target.
fn ngclient_refresh(f: &Fixture, tag: &str) {
    let srv = ServePy::start(&f.p("b/repo"));
    let out = Command::new(python())
        .arg(interop_script("ngclient.py"))
        .arg(f.p("b/repo/1.root.json"))
        .arg(f.p(&format!("ng-{tag}/metadata")))
        .arg(&srv.url)
        .arg(format!("{}/targets", srv.url))
        .arg(f.p(&format!("ng-{tag}/targets")))
        .arg("fw.bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ngclient: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let downloaded = String::from_utf8(out.stdout).unwrap();
    let local = downloaded.split_whitespace().nth(1).unwrap();
    assert_eq!(std::fs::read(local).unwrap(), b"firmware image\n");
}

#[test]
fn python_tuf_refreshes_the_image_repository_across_key_types_and_rotations() {
    for key_type in ["ed25519", "ecdsa", "rsa"] {
        let f = Fixture::new(key_type);
        ngclient_refresh(&f, "before");
        let out = ok(&["rotate-root", "-d", f.s("b"), "--repo", "image"]);
        assert_eq!(out.trim(), "repo root version 2");
        ok(&["rotate-root", "-d", f.s("b"), "--repo", "image"]);
        ok(&[
            "add-file",
            "-d",
            f.s("b"),
            f.s("fw.bin"),
            "--name",
            "fw-2.bin",
            "--hardware-id",
            "hw1",
        ]);
        // A client that trusts root v1 walks to v3 (each signed by the old and the new key).
        ngclient_refresh(&f, "after");
        let root3 = f.json("b/repo/3.root.json");
        assert_eq!(root3["signatures"].as_array().unwrap().len(), 2);
        assert!(f.p("b/keys/image/root-v1.pem").exists());
    }
}

#[test]
fn director_root_rotation_verifies_with_our_metadata() {
    let f = Fixture::new("ecdsa");
    let root1 = std::fs::read(f.p("b/director/1.root.json")).unwrap();
    ok(&["rotate-root", "-d", f.s("b"), "--repo", "director"]);
    let root2 = std::fs::read(f.p("b/director/2.root.json")).unwrap();
    let mut t = TrustedSet::new(&root1, Timestamp::now()).unwrap();
    t.update_root(&root2).unwrap();
    assert_eq!(t.root().common.version, 2);
    ok(&["assign", "-d", f.s("b"), "dev1", "ecu-1", "stable-1"]);
    let dir = f.p("b/director/devices/dev1");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    verify_director(
        &root2,
        &read("timestamp.json"),
        &read("snapshot.json"),
        &read("targets.json"),
    );
}

#[test]
fn refresh_resigns_snapshots_and_timestamps() {
    let f = Fixture::new("ed25519");
    let version = |rel: &str| f.json(rel)["signed"]["version"].as_u64().unwrap();
    let before = (
        version("b/repo/timestamp.json"),
        version("b/director/devices/dev1/timestamp.json"),
    );
    let out = ok(&["refresh", "-d", f.s("b")]);
    assert!(out.contains("2 role sets"), "{out}");
    assert_eq!(version("b/repo/timestamp.json"), before.0 + 1);
    assert_eq!(
        version("b/director/devices/dev1/timestamp.json"),
        before.1 + 1
    );
    // Still a valid chain for python-tuf.
    ngclient_refresh(&f, "refreshed");
}

#[test]
fn shared_credential_registration_returns_pkcs12() {
    let f = Fixture::new("ed25519");
    let srv = serve(&f.p("b"), &[]);
    let c = f.client(true);
    let r = c
        .post(format!("{}/devices", srv.url))
        .json(&json!({"deviceId": "dev2", "ttl": 36000}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    std::fs::write(f.p("dev2.p12"), r.bytes().unwrap()).unwrap();
    let info = Command::new("openssl")
        .args(["pkcs12", "-nokeys", "-passin", "pass:", "-in"])
        .arg(f.p("dev2.p12"))
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(String::from_utf8_lossy(&info.stdout).contains("CN = dev2"));
    let again = c
        .post(format!("{}/devices", srv.url))
        .json(&json!({"deviceId": "dev2"}))
        .send()
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    assert!(again.text().unwrap().contains("device_already_registered"));
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let f = Fixture::new("ed25519");
    let b = f.s("b");
    assert!(fails(&["init", b]).contains("already a backend directory"));
    assert!(fails(&["provision", "-d", b, "dev1"]).contains("already provisioned"));
    assert!(fails(&["provision", "-d", b, "../evil"]).contains("not a usable device ID"));
    assert!(fails(&["assign", "-d", b, "dev1", "ecu-1", "nope"])
        .contains("\"nope\" is not in the Image repository"));
    assert!(fails(&["assign", "-d", b, "nobody", "ecu-1", "stable-1"]).contains("not provisioned"));
    assert!(fails(&[
        "add-file",
        "-d",
        b,
        f.s("fw.bin"),
        "--name",
        "../x",
        "--hardware-id",
        "h"
    ])
    .contains("not a usable target name"));
    assert!(fails(&["init", f.s("other"), "--key-type", "dsa"]).contains("expected ed25519"));
    assert!(fails(&["assign", "-d", f.s("nowhere"), "dev1", "e", "t"])
        .contains("not a backend directory"));
    assert!(fails(&[
        "push-ostree",
        "-d",
        b,
        "--repo",
        f.s("src"),
        "--ref",
        "no/such/ref",
        "--hardware-id",
        "h"
    ])
    .contains("ostree rev-parse"));
}
