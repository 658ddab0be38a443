//! Writes a small signed TUF repository with the signing code of this crate: consistent
//! snapshots, two root versions (a key rotation), ed25519 and ECDSA keys, a delegation, and
//! targets in subdirectories. Used by `scripts/demo`.
//!
//! Usage: `cargo run --example sample_repo -- OUT_DIR [--bulk-targets N]`
//! `--bulk-targets N` adds N more targets (`bulk/file-<i>.bin`, listed but not written) to the
//! top-level targets, for benchmarks.
//! Writes `OUT_DIR/metadata/` (`1.root.json`, `2.root.json`, `N.snapshot.json`, ...,
//! `timestamp.json`) and `OUT_DIR/targets/` (`<dir>/<sha256>.<basename>`).

use std::path::Path;

use aktualizr_rs_metadata::{sign_envelope, Scheme, SigningKey};
use serde_json::{json, Map, Value};

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .get(1)
        .ok_or("usage: sample_repo OUT_DIR [--bulk-targets N]")?;
    let bulk: usize = match args.get(2).map(String::as_str) {
        Some("--bulk-targets") => args
            .get(3)
            .ok_or("--bulk-targets needs a number")?
            .parse()?,
        Some(other) => return Err(format!("unknown argument {other:?}").into()),
        None => 0,
    };
    let out = Path::new(out);
    let (meta, targets_dir) = (out.join("metadata"), out.join("targets"));
    let key = |s| SigningKey::generate(s);
    // Benchmarks (--bulk-targets) measure ed25519 repositories; the demo shows ECDSA keys too.
    let bench = bulk > 0;
    let scheme = |demo| if bench { Scheme::Ed25519 } else { demo };
    let (root1, root2) = (key(Scheme::Ed25519)?, key(scheme(Scheme::EcdsaP256))?);
    let (ts, snap, tgt) = (
        key(Scheme::Ed25519)?,
        key(Scheme::Ed25519)?,
        key(scheme(Scheme::EcdsaP384))?,
    );
    let apps = key(Scheme::Ed25519)?;
    let expires = "2035-01-01T00:00:00Z";

    let role = |k: &SigningKey| json!({"keyids": [k.keyid()], "threshold": 1});
    let root = |version: u64, root_key: &SigningKey| {
        let mut keys = Map::new();
        for k in [root_key, &ts, &snap, &tgt] {
            keys.insert(k.keyid().into(), k.public().to_json().clone());
        }
        json!({"_type": "root", "spec_version": "1.0.31", "version": version, "expires": expires,
               "consistent_snapshot": true, "keys": keys,
               "roles": {"root": role(root_key), "timestamp": role(&ts), "snapshot": role(&snap), "targets": role(&tgt)}})
    };
    write(
        &meta,
        "1.root.json",
        &sign_envelope(&root(1, &root1), &[&root1])?,
    )?;
    // Root key rotation: version 2 is signed by the old and the new root key.
    write(
        &meta,
        "2.root.json",
        &sign_envelope(&root(2, &root2), &[&root1, &root2])?,
    )?;

    let mut files: Vec<(&str, Vec<u8>)> = vec![
        (
            "images/os-v1.img",
            b"operating system image, version 1\n".to_vec(),
        ),
        (
            "README.txt",
            b"a sample TUF repository written by aktualizr-rs\n".to_vec(),
        ),
    ];
    files.push(("apps/hello/hello-1.0.tar", b"hello app 1.0\n".to_vec()));
    let mut top = Map::new();
    let mut delegated = Map::new();
    for (path, content) in &files {
        let info = json!({"length": content.len(), "hashes": {"sha256": sha256(content)}});
        let (dir, base) = path.rsplit_once('/').map_or(("", *path), |(d, b)| (d, b));
        let stored = if dir.is_empty() {
            format!("{}.{base}", sha256(content))
        } else {
            format!("{dir}/{}.{base}", sha256(content))
        };
        write(&targets_dir, &stored, content)?;
        if path.starts_with("apps/") {
            delegated.insert((*path).into(), info);
        } else {
            top.insert((*path).into(), info);
        }
    }
    for i in 0..bulk {
        let content = format!("bulk target {i}");
        top.insert(
            format!("bulk/file-{i}.bin"),
            json!({"length": content.len(), "hashes": {"sha256": sha256(content.as_bytes())}}),
        );
    }
    let apps_md = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": expires, "targets": delegated});
    let apps_bytes = sign_envelope(&apps_md, &[&apps])?;
    write(&meta, "1.apps.json", &apps_bytes)?;
    let targets_md = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": expires, "targets": top,
        "delegations": {"keys": {apps.keyid(): apps.public().to_json()},
            "roles": [{"name": "apps", "keyids": [apps.keyid()], "threshold": 1, "terminating": true, "paths": ["apps/*/*"]}]}});
    let targets_bytes = sign_envelope(&targets_md, &[&tgt])?;
    write(&meta, "1.targets.json", &targets_bytes)?;
    let metafile =
        |b: &[u8]| json!({"version": 1, "length": b.len(), "hashes": {"sha256": sha256(b)}});
    let snapshot = json!({"_type": "snapshot", "spec_version": "1.0.31", "version": 1, "expires": expires,
        "meta": {"targets.json": metafile(&targets_bytes), "apps.json": metafile(&apps_bytes)}});
    let snapshot_bytes = sign_envelope(&snapshot, &[&snap])?;
    write(&meta, "1.snapshot.json", &snapshot_bytes)?;
    let timestamp: Value = json!({"_type": "timestamp", "spec_version": "1.0.31", "version": 1, "expires": expires,
        "meta": {"snapshot.json": metafile(&snapshot_bytes)}});
    write(&meta, "timestamp.json", &sign_envelope(&timestamp, &[&ts])?)?;
    println!("{}", out.display());
    Ok(())
}
