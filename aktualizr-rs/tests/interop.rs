//! Interoperability with python-tuf, both ways, over HTTP on 127.0.0.1:
//! repositories written by python-tuf's Metadata API are refreshed by `aktualizr-rs tuf`, and
//! repositories written by our signing code are refreshed by python-tuf's `ngclient.Updater`.
//!
//! Needs the venv that `scripts/setup` creates (`.venv`, or `AKTUALIZR_RS_PYTHON`).

// Test helpers panic on setup failures; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aktualizr_rs_metadata::{sign_envelope, Scheme, SigningKey};
use serde_json::{json, Map, Value};

use aktualizr_rs_testsupport::{interop_script as script, python, ServePy as Server};

fn aktualizr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
        .arg("tuf")
        .args(args)
        .output()
        .expect("running aktualizr-rs")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

/// A repository written by python-tuf, and a client directory for us.
struct PythonRepo {
    tmp: tempfile::TempDir,
    server: Server,
    expected: Value,
}

impl PythonRepo {
    fn new(extra: &[&str]) -> PythonRepo {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let out = Command::new(python())
            .arg(script("make_repo.py"))
            .arg(&repo)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_repo.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = serde_json::from_slice(&read(repo.join("expected.json"))).unwrap();
        let server = Server::start(&repo);
        let r = PythonRepo {
            tmp,
            server,
            expected,
        };
        ok(&aktualizr(&[
            "--metadata-dir",
            r.path("client/metadata").to_str().unwrap(),
            "init",
            r.path("repo/metadata/1.root.json").to_str().unwrap(),
        ]));
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn refresh(&self) -> Output {
        let md = self.path("client/metadata");
        let url = format!("{}/metadata", self.server.url);
        aktualizr(&[
            "--metadata-dir",
            md.to_str().unwrap(),
            "--metadata-url",
            &url,
            "refresh",
        ])
    }

    fn download(&self, targets: &[&str]) -> Output {
        let md = self.path("client/metadata");
        let td = self.path("client/targets");
        let url = format!("{}/metadata", self.server.url);
        let turl = format!("{}/targets", self.server.url);
        let mut args = vec![
            "--metadata-dir",
            md.to_str().unwrap(),
            "--metadata-url",
            &url,
        ];
        for t in targets {
            args.extend(["--target-name", t]);
        }
        args.extend([
            "--target-base-url",
            &turl,
            "--target-dir",
            td.to_str().unwrap(),
            "download",
        ]);
        aktualizr(&args)
    }
}

/// The file names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn python_tuf_repository_is_refreshed_and_downloaded_by_aktualizr_rs() {
    refresh_and_download_everything(&PythonRepo::new(&[]));
}

/// python-tuf's defaults: compact JSON, snapshot and timestamp entries without length or hashes
/// (our default size caps apply), 256 hash bins.
#[test]
fn python_tuf_repository_with_its_defaults_is_refreshed_and_downloaded_by_aktualizr_rs() {
    refresh_and_download_everything(&PythonRepo::new(&["--python-defaults"]));
}

fn refresh_and_download_everything(r: &PythonRepo) {
    let md = r.path("client/metadata");
    let served = r.path("repo/metadata");
    let stored = r.expected["stored"].as_object().unwrap();
    let assert_stored = |local: &str| {
        let from = stored[local].as_str().unwrap();
        assert_eq!(
            read(md.join(local)),
            read(served.join(from)),
            "{local} is not {from} byte for byte"
        );
    };

    // Top-level refresh: root after two rotations (1 -> 2 -> 3), timestamp, snapshot and
    // targets, each stored byte for byte as served.
    ok(&r.refresh());
    for local in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        assert_stored(local);
    }

    // Every target, found through paths globs, a nested delegation, a terminating one, a role
    // name that needs percent-encoding and succinct hash bins.
    let targets: Vec<(&str, &str)> = r.expected["targets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
    ok(&r.download(&names));
    // Stored under the target path percent-encoded, '/' included (Python's
    // urllib.parse.quote(path, safe="")), and nothing else in the target dir.
    let td = r.path("client/targets");
    let files = &r.expected["target_files"];
    for (name, content) in &targets {
        let file = td.join(files[*name].as_str().unwrap());
        assert_eq!(String::from_utf8(read(file)).unwrap(), *content, "{name}");
    }
    let mut expected_files: Vec<String> = files
        .as_object()
        .unwrap()
        .values()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    expected_files.sort();
    assert_eq!(listing(&td), expected_files, "target dir");

    // Each role on a search path stored as served (role names percent-encoded); nothing
    // else in the metadata dir: no role behind the terminating delegation, no hash bin that
    // holds none of the targets, no leftover temporary file.
    for local in stored.keys() {
        assert_stored(local);
    }
    let mut expected_md: Vec<String> = stored.keys().cloned().collect();
    expected_md.sort();
    assert_eq!(listing(&md), expected_md, "metadata dir");

    // A target listed only by a role behind the terminating delegation is not found.
    for name in r.expected["shadowed"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let out = r.download(&[name]);
        assert_eq!(out.status.code(), Some(1), "{name} was found");
        assert_eq!(listing(&td), expected_files, "target dir after {name}");
    }
    for local in r.expected["not_fetched"].as_array().unwrap() {
        assert!(
            !md.join(local.as_str().unwrap()).exists(),
            "{local} fetched"
        );
    }
}

#[test]
fn tampered_target_from_python_tuf_repository_is_not_stored() {
    let r = PythonRepo::new(&[]);
    let content = r.expected["targets"]["apps/hello.tar"].as_str().unwrap();
    // Replace the served content (same length) under both hash-prefixed names.
    let dir = r.path("repo/targets/apps");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.to_str().unwrap().ends_with(".hello.tar") {
            std::fs::write(&p, "X".repeat(content.len())).unwrap();
        }
    }
    let out = r.download(&["apps/hello.tar"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hash mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No target file, and no partial or temporary file either.
    let td = r.path("client/targets");
    assert!(
        !td.exists() || listing(&td).is_empty(),
        "{:?}",
        listing(&td)
    );
}

#[test]
fn expired_timestamp_from_python_tuf_repository_is_rejected() {
    let r = PythonRepo::new(&["--expired-timestamp"]);
    let out = r.refresh();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!r.path("client/metadata/timestamp.json").exists());
    // The root rotations before the timestamp step were verified and are kept.
    assert_eq!(
        read(r.path("client/metadata/root.json")),
        read(r.path("repo/metadata/3.root.json"))
    );
}

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A 2048-bit RSA key in PKCS#8 PEM, made by python's `cryptography` (ring cannot generate RSA
/// keys).
fn rsa_key() -> SigningKey {
    let out = Command::new(python())
        .arg("-c")
        .arg(
            "from cryptography.hazmat.primitives import serialization as s\n\
             from cryptography.hazmat.primitives.asymmetric import rsa\n\
             k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n\
             print(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode())",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    SigningKey::from_pkcs8_pem(
        std::str::from_utf8(&out.stdout).unwrap(),
        Scheme::RsaPssSha256,
    )
    .unwrap()
}

/// Writes a consistent-snapshot repository with our signing code: root v1 (ed25519) rotated to
/// v2 (ECDSA P-256, signed by both), ECDSA P-384 targets, a delegated role signed with
/// RSA-PSS, targets in subdirectories. Returns the target paths and contents.
fn write_our_repository(dir: &Path) -> Vec<(&'static str, &'static [u8])> {
    let k = SigningKey::generate;
    let (root1, root2) = (k(Scheme::Ed25519).unwrap(), k(Scheme::EcdsaP256).unwrap());
    let (ts, snap) = (k(Scheme::Ed25519).unwrap(), k(Scheme::EcdsaP256).unwrap());
    let (tgt, dele) = (k(Scheme::EcdsaP384).unwrap(), rsa_key());
    let expires = "2099-01-01T00:00:00Z";
    let md = dir.join("metadata");
    let role = |k: &SigningKey| json!({"keyids": [k.keyid()], "threshold": 1});
    let root = |v: u64, rk: &SigningKey| {
        let mut keys = Map::new();
        for key in [rk, &ts, &snap, &tgt] {
            keys.insert(key.keyid().into(), key.public().to_json().clone());
        }
        json!({"_type": "root", "spec_version": "1.0.31", "version": v, "expires": expires, "consistent_snapshot": true,
               "keys": keys, "roles": {"root": role(rk), "timestamp": role(&ts), "snapshot": role(&snap), "targets": role(&tgt)}})
    };
    write(
        &md.join("1.root.json"),
        &sign_envelope(&root(1, &root1), &[&root1]).unwrap(),
    );
    write(
        &md.join("2.root.json"),
        &sign_envelope(&root(2, &root2), &[&root1, &root2]).unwrap(),
    );

    let files: Vec<(&'static str, &'static [u8])> = vec![
        ("top.txt", b"top-level\n"),
        ("dir/sub/deep.txt", b"in a subdirectory\n"),
        ("dir/\u{fc}n\u{ef}code.txt", b"a UTF-8 target path\n"),
        ("delegated/app.bin", b"from the delegated role\n"),
    ];
    // Unrecognized fields python-tuf keeps and re-encodes to verify our signatures: the
    // canonical form must agree on UTF-8, escapes (only '"' and '\\'), control characters,
    // integers, null, nesting and key order.
    let custom = json!({"hardwareIds": ["\u{fc}-board"], "quote": "a\"b\\c", "tab": "x\ty",
        "n": -3, "big": 18_446_744_073_709_551_615_u64, "nested": {"z": [1, true, null], "a": {}}});
    let (mut top, mut deleg) = (Map::new(), Map::new());
    for (path, content) in &files {
        let info = json!({"length": content.len(), "hashes": {"sha256": sha256(content)},
            "custom": custom});
        let (d, base) = path
            .rsplit_once('/')
            .map_or(("".to_owned(), *path), |(d, b)| (format!("{d}/"), b));
        write(
            &dir.join("targets")
                .join(format!("{d}{}.{base}", sha256(content))),
            content,
        );
        if path.starts_with("delegated/") {
            deleg.insert((*path).into(), info);
        } else {
            top.insert((*path).into(), info);
        }
    }
    let d = sign_envelope(&json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": expires, "targets": deleg}), &[&dele]).unwrap();
    write(&md.join("1.delegated.json"), &d);
    let t = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": expires, "targets": top,
        "delegations": {"keys": {dele.keyid(): dele.public().to_json()},
            "roles": [{"name": "delegated", "keyids": [dele.keyid()], "threshold": 1, "terminating": false, "paths": ["delegated/*"]}]}});
    let t = sign_envelope(&t, &[&tgt]).unwrap();
    write(&md.join("1.targets.json"), &t);
    let mf = |b: &[u8]| json!({"version": 1, "length": b.len(), "hashes": {"sha256": sha256(b)}});
    let s = sign_envelope(
        &json!({"_type": "snapshot", "spec_version": "1.0.31", "version": 1, "expires": expires,
        "meta": {"targets.json": mf(&t), "delegated.json": mf(&d)}}),
        &[&snap],
    )
    .unwrap();
    write(&md.join("1.snapshot.json"), &s);
    let ts_md = json!({"_type": "timestamp", "spec_version": "1.0.31", "version": 1, "expires": expires, "meta": {"snapshot.json": mf(&s)}});
    write(
        &md.join("timestamp.json"),
        &sign_envelope(&ts_md, &[&ts]).unwrap(),
    );
    files
}

fn ngclient(dir: &Path, server: &Server, targets: &[&str]) -> Output {
    Command::new(python())
        .arg(script("ngclient.py"))
        .arg(dir.join("repo/metadata/1.root.json"))
        .arg(dir.join("ng/metadata"))
        .arg(format!("{}/metadata", server.url))
        .arg(format!("{}/targets", server.url))
        .arg(dir.join("ng/targets"))
        .args(targets)
        .output()
        .unwrap()
}

#[test]
fn repository_signed_by_us_is_refreshed_by_python_tuf() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_our_repository(&tmp.path().join("repo"));
    let server = Server::start(&tmp.path().join("repo"));
    let names: Vec<&str> = files.iter().map(|f| f.0).collect();
    let out = ngclient(tmp.path(), &server, &names);
    ok(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    for (name, content) in &files {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in {stdout}"));
        let local = line.split_once(' ').unwrap().1;
        assert_eq!(read(local), *content, "{name}");
    }
    // python-tuf trusts root version 2 (our rotation, signed by old and new keys).
    let root: Value =
        serde_json::from_slice(&read(tmp.path().join("ng/metadata/root.json"))).unwrap();
    assert_eq!(root["signed"]["version"], 2);
}

#[test]
fn repository_with_a_forged_signature_is_rejected_by_python_tuf() {
    let tmp = tempfile::tempdir().unwrap();
    write_our_repository(&tmp.path().join("repo"));
    let ts_path = tmp.path().join("repo/metadata/timestamp.json");
    let mut ts: Value = serde_json::from_slice(&read(&ts_path)).unwrap();
    let sig = ts["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let (first, rest) = sig.split_at(1);
    let flipped = format!("{}{rest}", if first == "0" { "1" } else { "0" });
    ts["signatures"][0]["sig"] = json!(flipped);
    std::fs::write(&ts_path, serde_json::to_vec(&ts).unwrap()).unwrap();
    let server = Server::start(&tmp.path().join("repo"));
    let out = ngclient(tmp.path(), &server, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "python-tuf accepted a forged timestamp signature"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unsigned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
