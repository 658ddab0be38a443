//! The TUF client workflow against repositories built in memory with a fixed `now`.
//! Each test is named after the attack or rule it covers.

// Test helpers panic on setup failures; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;

use aktualizr_rs_metadata::{
    sign_envelope, Attack, Error, Fetch, Limits, MetadataCache, Scheme, SigningKey, Timestamp,
    TrustedSet, Updater,
};
use serde_json::{json, Value};

const EXPIRES: &str = "2030-01-01T00:00:00Z";

fn now() -> Timestamp {
    Timestamp::parse("2025-06-01T00:00:00Z").unwrap()
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("in-memory futures never wait"),
    }
}

/// Files a test server serves, and the requests it got.
#[derive(Default)]
struct Server {
    files: HashMap<String, Vec<u8>>,
    requests: Vec<String>,
}

#[derive(Clone, Default)]
struct MemFetch(Rc<RefCell<Server>>);

impl Fetch for MemFetch {
    type Error = Infallible;
    async fn fetch(&mut self, name: &str, max_len: u64) -> Result<Option<Vec<u8>>, Infallible> {
        let mut s = self.0.borrow_mut();
        s.requests.push(name.to_owned());
        Ok(s.files
            .get(name)
            .map(|b| b[..b.len().min(max_len as usize + 1)].to_vec()))
    }
}

#[derive(Clone, Default)]
struct MemCache(Rc<RefCell<HashMap<String, Vec<u8>>>>);

impl MetadataCache for MemCache {
    type Error = Infallible;
    fn load(&self, file: &str) -> Option<Vec<u8>> {
        self.0.borrow().get(file).cloned()
    }
    fn store(&mut self, file: &str, bytes: &[u8]) -> Result<(), Infallible> {
        self.0.borrow_mut().insert(file.to_owned(), bytes.to_vec());
        Ok(())
    }
    fn remove(&mut self, file: &str) -> Result<(), Infallible> {
        self.0.borrow_mut().remove(file);
        Ok(())
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn meta(bytes: &[u8], version: u64) -> Value {
    json!({"version": version, "length": bytes.len(), "hashes": {"sha256": sha256(bytes)}})
}

fn role_keys(keys: &[&SigningKey], threshold: u64) -> Value {
    json!({"keyids": keys.iter().map(|k| k.keyid()).collect::<Vec<_>>(), "threshold": threshold})
}

/// A repository with one key per top-level role, consistent snapshots, published on a server.
struct Repo {
    server: Rc<RefCell<Server>>,
    root_keys: Vec<SigningKey>,
    root_threshold: u64,
    timestamp_key: SigningKey,
    snapshot_key: SigningKey,
    targets_key: SigningKey,
    root_version: u64,
    timestamp_version: u64,
    snapshot_version: u64,
    /// Role name -> (version, signed bytes).
    targets_files: Vec<(String, u64, Vec<u8>)>,
    expires: HashMap<&'static str, String>,
}

impl Repo {
    fn new() -> Repo {
        let k = || SigningKey::generate(Scheme::Ed25519).unwrap();
        let mut r = Repo {
            server: Rc::default(),
            root_keys: vec![k()],
            root_threshold: 1,
            timestamp_key: k(),
            snapshot_key: k(),
            targets_key: k(),
            root_version: 0,
            timestamp_version: 0,
            snapshot_version: 0,
            targets_files: Vec::new(),
            expires: HashMap::new(),
        };
        r.publish_root(None);
        r.set_targets(json!({"file.txt": target(b"hello")}), None);
        r.publish();
        r
    }

    fn expiry(&self, role: &str) -> String {
        self.expires
            .get(role)
            .cloned()
            .unwrap_or_else(|| EXPIRES.to_owned())
    }

    fn root_signed(&self) -> Value {
        let mut keys = serde_json::Map::new();
        for k in self.root_keys.iter().chain([
            &self.timestamp_key,
            &self.snapshot_key,
            &self.targets_key,
        ]) {
            keys.insert(k.keyid().to_owned(), k.public().to_json().clone());
        }
        let rk: Vec<&SigningKey> = self.root_keys.iter().collect();
        json!({
            "_type": "root", "spec_version": "1.0.31", "version": self.root_version,
            "expires": self.expiry("root"), "consistent_snapshot": true, "keys": keys,
            "roles": {
                "root": role_keys(&rk, self.root_threshold),
                "timestamp": role_keys(&[&self.timestamp_key], 1),
                "snapshot": role_keys(&[&self.snapshot_key], 1),
                "targets": role_keys(&[&self.targets_key], 1),
            },
        })
    }

    /// Publishes the next root version, signed by the current root keys and by `extra_signers`.
    fn publish_root(&mut self, extra_signers: Option<&[&SigningKey]>) -> Vec<u8> {
        self.root_version += 1;
        let signed = self.root_signed();
        let mut signers: Vec<&SigningKey> = self.root_keys.iter().collect();
        signers.extend(extra_signers.unwrap_or_default());
        let bytes = sign_envelope(&signed, &signers).unwrap();
        self.serve(&format!("{}.root.json", self.root_version), bytes.clone());
        bytes
    }

    fn serve(&self, name: &str, bytes: Vec<u8>) {
        self.server
            .borrow_mut()
            .files
            .insert(name.to_owned(), bytes);
    }

    fn set_targets(&mut self, targets: Value, delegations: Option<Value>) {
        let version = self
            .targets_files
            .iter()
            .find(|t| t.0 == "targets")
            .map_or(0, |t| t.1)
            + 1;
        let mut signed = json!({"_type": "targets", "spec_version": "1.0.31", "version": version,
            "expires": self.expiry("targets"), "targets": targets});
        if let Some(d) = delegations {
            signed["delegations"] = d;
        }
        let bytes = sign_envelope(&signed, &[&self.targets_key]).unwrap();
        self.put_role("targets", version, bytes);
    }

    fn put_role(&mut self, role: &str, version: u64, bytes: Vec<u8>) {
        self.serve(
            &format!(
                "{version}.{}.json",
                aktualizr_rs_metadata::names::encode_component(role)
            ),
            bytes.clone(),
        );
        self.targets_files.retain(|t| t.0 != role);
        self.targets_files.push((role.to_owned(), version, bytes));
    }

    /// Re-signs snapshot and timestamp over the current targets roles.
    fn publish(&mut self) {
        self.snapshot_version += 1;
        let mut m = serde_json::Map::new();
        for (role, version, bytes) in &self.targets_files {
            m.insert(format!("{role}.json"), meta(bytes, *version));
        }
        let snap = json!({"_type": "snapshot", "spec_version": "1.0.31", "version": self.snapshot_version,
            "expires": self.expiry("snapshot"), "meta": m});
        let snap = sign_envelope(&snap, &[&self.snapshot_key]).unwrap();
        self.serve(
            &format!("{}.snapshot.json", self.snapshot_version),
            snap.clone(),
        );
        self.publish_timestamp(&snap);
    }

    fn publish_timestamp(&mut self, snap: &[u8]) {
        self.timestamp_version += 1;
        let ts = json!({"_type": "timestamp", "spec_version": "1.0.31", "version": self.timestamp_version,
            "expires": self.expiry("timestamp"), "meta": {"snapshot.json": meta(snap, self.snapshot_version)}});
        self.serve(
            "timestamp.json",
            sign_envelope(&ts, &[&self.timestamp_key]).unwrap(),
        );
    }

    /// A client that trusts root version 1.
    fn client(&self) -> Client {
        let cache = MemCache::default();
        cache.0.borrow_mut().insert(
            "root.json".into(),
            self.server.borrow().files["1.root.json"].clone(),
        );
        Client {
            fetch: MemFetch(self.server.clone()),
            cache,
        }
    }

    fn requests(&self) -> Vec<String> {
        std::mem::take(&mut self.server.borrow_mut().requests)
    }
}

fn target(content: &[u8]) -> Value {
    json!({"length": content.len(), "hashes": {"sha256": sha256(content)}})
}

struct Client {
    fetch: MemFetch,
    cache: MemCache,
}

impl Client {
    fn updater(&self) -> Updater<MemFetch, MemCache> {
        Updater::new(
            self.fetch.clone(),
            self.cache.clone(),
            Limits::default(),
            now(),
        )
        .unwrap()
    }

    fn refresh(&self) -> Result<(), Error> {
        block_on(self.updater().refresh())
    }

    fn find(&self, path: &str) -> Result<Option<aktualizr_rs_metadata::TargetFile>, Error> {
        let mut up = self.updater();
        block_on(up.find_target(path))
    }

    fn cached_version(&self, file: &str) -> Option<u64> {
        let bytes = self.cache.load(file)?;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["signed"]["version"].as_u64()
    }
}

#[test]
fn fresh_client_refreshes_and_finds_target() {
    let repo = Repo::new();
    let client = repo.client();
    client.refresh().unwrap();
    assert_eq!(client.cached_version("timestamp.json"), Some(1));
    assert_eq!(client.cached_version("snapshot.json"), Some(1));
    assert_eq!(client.cached_version("targets.json"), Some(1));
    let t = client.find("file.txt").unwrap().unwrap();
    assert_eq!(t.length, 5);
    assert!(t.verify("file.txt", b"hello").is_ok());
    assert!(matches!(
        t.verify("file.txt", b"hellO"),
        Err(Error::HashMismatch { .. })
    ));
    assert!(client.find("other.txt").unwrap().is_none());
}

#[test]
fn unchanged_repository_costs_root_probe_and_timestamp_only() {
    let repo = Repo::new();
    let client = repo.client();
    client.refresh().unwrap();
    repo.requests();
    client.refresh().unwrap();
    assert_eq!(repo.requests(), vec!["2.root.json", "timestamp.json"]);
}

#[test]
fn root_rotation_needs_threshold_of_old_and_new_keys() {
    let mut repo = Repo::new();
    let client = repo.client();
    let old = std::mem::replace(
        &mut repo.root_keys,
        vec![SigningKey::generate(Scheme::EcdsaP256).unwrap()],
    );
    // Signed by the new key only: the old root's threshold is not met.
    repo.publish_root(None);
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(err, Error::ThresholdNotMet { ref role, .. } if role == "root"),
        "{err}"
    );
    assert_eq!(err.attack(), Some(Attack::ArbitrarySoftware));
    // Signed by old and new: accepted and stored.
    repo.root_version -= 1;
    repo.publish_root(Some(&[&old[0]]));
    client.refresh().unwrap();
    assert_eq!(client.cached_version("root.json"), Some(2));
}

#[test]
fn root_signed_by_old_keys_only_is_rejected() {
    let mut repo = Repo::new();
    let client = repo.client();
    let old = std::mem::replace(
        &mut repo.root_keys,
        vec![SigningKey::generate(Scheme::Ed25519).unwrap()],
    );
    repo.root_version += 1;
    let signed = repo.root_signed();
    repo.serve("2.root.json", sign_envelope(&signed, &[&old[0]]).unwrap());
    assert!(matches!(
        client.refresh(),
        Err(Error::ThresholdNotMet { .. })
    ));
    assert_eq!(client.cached_version("root.json"), Some(1));
}

#[test]
fn root_version_skipping_is_rejected() {
    let mut repo = Repo::new();
    let client = repo.client();
    repo.root_version += 2; // 2.root.json will say version 3
    let signed = repo.root_signed();
    let keys: Vec<&SigningKey> = repo.root_keys.iter().collect();
    repo.serve("2.root.json", sign_envelope(&signed, &keys).unwrap());
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(
            err,
            Error::VersionMismatch {
                expected: 2,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn expired_intermediate_root_is_fine_but_expired_final_root_is_a_freeze() {
    let mut repo = Repo::new();
    let client = repo.client();
    repo.expires.insert("root", "2020-01-01T00:00:00Z".into());
    repo.publish_root(None);
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(err, Error::Expired { ref role, .. } if role == "root"),
        "{err}"
    );
    assert_eq!(err.attack(), Some(Attack::Freeze));
    assert!(
        !repo.requests().contains(&"timestamp.json".to_owned()),
        "no timestamp fetched after an expired root"
    );
    repo.expires.remove("root");
    repo.publish_root(None);
    client.refresh().unwrap();
    assert_eq!(client.cached_version("root.json"), Some(3));
}

#[test]
fn replayed_timestamp_with_lower_version_is_rejected() {
    let mut repo = Repo::new();
    let client = repo.client();
    let v1 = repo.server.borrow().files["timestamp.json"].clone();
    repo.publish();
    client.refresh().unwrap();
    repo.serve("timestamp.json", v1);
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rollback {
                trusted: 2,
                new: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.attack(), Some(Attack::Rollback));
    assert_eq!(client.cached_version("timestamp.json"), Some(2));
}

#[test]
fn changed_timestamp_with_same_version_is_ignored() {
    let mut repo = Repo::new();
    let client = repo.client();
    client.refresh().unwrap();
    let before = client.cache.load("timestamp.json").unwrap();
    // Same version 1, different expiry: a different file.
    repo.timestamp_version -= 1;
    repo.expires
        .insert("timestamp", "2029-01-01T00:00:00Z".into());
    let snap = repo.server.borrow().files["1.snapshot.json"].clone();
    repo.publish_timestamp(&snap);
    client.refresh().unwrap();
    assert_eq!(client.cache.load("timestamp.json").unwrap(), before);
}

#[test]
fn timestamp_listing_older_snapshot_is_a_rollback() {
    let mut repo = Repo::new();
    let client = repo.client();
    repo.publish(); // snapshot 2
    client.refresh().unwrap();
    // Timestamp 3 points to snapshot 1.
    let snap1 = repo.server.borrow().files["1.snapshot.json"].clone();
    repo.snapshot_version = 1;
    repo.timestamp_version = 2;
    repo.publish_timestamp(&snap1);
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(err, Error::Rollback { ref role, trusted: 2, new: 1 } if role == "snapshot"),
        "{err}"
    );
}

#[test]
fn expired_timestamp_is_a_freeze() {
    let mut repo = Repo::new();
    repo.expires
        .insert("timestamp", "2025-05-01T00:00:00Z".into());
    repo.publish();
    let client = repo.client();
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(err, Error::Expired { ref role, .. } if role == "timestamp"),
        "{err}"
    );
    assert!(client.cache.load("timestamp.json").is_none());
}

#[test]
fn expired_snapshot_and_targets_are_a_freeze() {
    for role in ["snapshot", "targets"] {
        let mut repo = Repo::new();
        repo.expires.insert(role, "2025-05-01T00:00:00Z".into());
        repo.set_targets(json!({}), None);
        repo.publish();
        let err = repo.client().refresh().unwrap_err();
        assert!(
            matches!(err, Error::Expired { role: ref r, .. } if r == role),
            "{role}: {err}"
        );
    }
}

#[test]
fn snapshot_not_matching_timestamp_hash_is_rejected() {
    let repo = Repo::new();
    let mut snap: Value =
        serde_json::from_slice(&repo.server.borrow().files["1.snapshot.json"]).unwrap();
    snap["signed"]["expires"] = json!("2029-01-01T00:00:00Z");
    let tampered = sign_envelope(&snap["signed"], &[&repo.snapshot_key]).unwrap();
    let client = repo.client();
    repo.serve("1.snapshot.json", tampered);
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch { .. } | Error::HashMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn snapshot_dropping_a_targets_role_is_a_rollback() {
    let mut repo = Repo::new();
    let client = repo.client();
    client.refresh().unwrap();
    repo.targets_files.clear();
    repo.publish();
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(err, Error::RoleRemoved { ref role, .. } if role == "targets.json"),
        "{err}"
    );
    assert_eq!(err.attack(), Some(Attack::Rollback));
}

#[test]
fn snapshot_listing_older_targets_is_a_rollback() {
    let mut repo = Repo::new();
    let client = repo.client();
    repo.set_targets(json!({}), None);
    repo.publish();
    client.refresh().unwrap();
    repo.targets_files[0].1 = 1;
    let v1 = repo.server.borrow().files["1.targets.json"].clone();
    repo.targets_files[0].2 = v1;
    repo.publish();
    let err = client.refresh().unwrap_err();
    assert!(
        matches!(err, Error::Rollback { ref role, trusted: 2, new: 1 } if role == "targets"),
        "{err}"
    );
}

#[test]
fn oversized_timestamp_is_endless_data() {
    let repo = Repo::new();
    repo.serve("timestamp.json", vec![b' '; 20_000]);
    let err = repo.client().refresh().unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                expected: 16_384,
                found: 16_385,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.attack(), Some(Attack::EndlessData));
}

/// A root whose threshold of 2 is "met" only by counting one key twice must be rejected.
fn assert_counted_once(doc: &Value) {
    let err = TrustedSet::new(&serde_json::to_vec(doc).unwrap(), now()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                found: 1,
                needed: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicated_signature_counts_once() {
    let repo = Repo::new();
    let k2 = SigningKey::generate(Scheme::Ed25519).unwrap();
    let mut signed = repo.root_signed();
    signed["roles"]["root"] = role_keys(&[&repo.root_keys[0], &k2], 2);
    signed["keys"][k2.keyid()] = k2.public().to_json().clone();
    let sig = repo.root_keys[0].sign(&signed).unwrap();
    let doc = json!({"signatures": [sig, sig], "signed": signed});
    assert_counted_once(&doc);
}

#[test]
fn same_key_under_two_ids_counts_once() {
    let repo = Repo::new();
    let k = &repo.root_keys[0];
    let mut signed = repo.root_signed();
    let alias = "alias-of-the-root-key";
    signed["keys"][alias] = k.public().to_json().clone();
    signed["roles"]["root"] = json!({"keyids": [k.keyid(), alias], "threshold": 2});
    let sig = k.sign(&signed).unwrap();
    let mut sig2 = sig.clone();
    sig2["keyid"] = json!(alias);
    let doc = json!({"signatures": [sig, sig2], "signed": signed});
    assert_counted_once(&doc);
}

#[test]
fn key_of_unknown_type_is_skipped() {
    let repo = Repo::new();
    let mut signed = repo.root_signed();
    signed["keys"]["future"] =
        json!({"keytype": "sphincs", "scheme": "sphincs-shake", "keyval": {"public": "00"}});
    let mut roles = signed["roles"]["root"]["keyids"]
        .as_array()
        .unwrap()
        .clone();
    roles.push(json!("future"));
    signed["roles"]["root"]["keyids"] = json!(roles);
    let bytes = sign_envelope(&signed, &[&repo.root_keys[0]]).unwrap();
    TrustedSet::new(&bytes, now()).unwrap();
}

#[test]
fn spec_version_must_be_1_x() {
    let repo = Repo::new();
    for (v, ok) in [
        ("1.0", true),
        ("1.99.5", true),
        ("2.0.0", false),
        ("1", false),
        ("1.x.0", false),
    ] {
        let mut signed = repo.root_signed();
        signed["spec_version"] = json!(v);
        let bytes = sign_envelope(&signed, &[&repo.root_keys[0]]).unwrap();
        assert_eq!(TrustedSet::new(&bytes, now()).is_ok(), ok, "{v}");
    }
}

#[test]
fn metadata_of_wrong_type_is_rejected() {
    let repo = Repo::new();
    let mut signed = repo.root_signed();
    signed["_type"] = json!("targets");
    let bytes = sign_envelope(&signed, &[&repo.root_keys[0]]).unwrap();
    assert!(matches!(
        TrustedSet::new(&bytes, now()),
        Err(Error::WrongType { .. })
    ));
}

#[test]
fn signature_over_reserialized_content_is_not_needed_unknown_fields_kept() {
    let repo = Repo::new();
    let mut signed = repo.root_signed();
    signed["x-vendor"] = json!({"nested": [1, 2, "three"]});
    let bytes = sign_envelope(&signed, &[&repo.root_keys[0]]).unwrap();
    let t = TrustedSet::new(&bytes, now()).unwrap();
    assert_eq!(
        t.root().common.extra["x-vendor"],
        json!({"nested": [1, 2, "three"]})
    );
    // Any change to the signed part invalidates the signature.
    let mut doc: Value = serde_json::from_slice(&bytes).unwrap();
    doc["signed"]["x-vendor"]["nested"][0] = json!(5);
    assert!(TrustedSet::new(&serde_json::to_vec(&doc).unwrap(), now()).is_err());
}

#[test]
fn rotated_timestamp_key_recovers_from_fast_forward_attack() {
    let mut repo = Repo::new();
    let client = repo.client();
    // An attacker with the timestamp key pushes version 1000.
    repo.timestamp_version = 999;
    let snap = repo.server.borrow().files["1.snapshot.json"].clone();
    repo.publish_timestamp(&snap);
    client.refresh().unwrap();
    assert_eq!(client.cached_version("timestamp.json"), Some(1000));
    // The owners rotate the timestamp key and restart at version 1.
    repo.timestamp_key = SigningKey::generate(Scheme::Ed25519).unwrap();
    repo.publish_root(None);
    repo.timestamp_version = 0;
    repo.publish_timestamp(&snap);
    client.refresh().unwrap();
    assert_eq!(client.cached_version("timestamp.json"), Some(1));
}

/// A repository whose top-level targets delegates as given, with each delegated role signed
/// by its own key.
fn delegated_repo(
    roles: &[(&str, &str, Value, bool, Value)],
) -> (Repo, HashMap<String, SigningKey>) {
    // (name, delegator, paths, terminating, targets)
    let mut repo = Repo::new();
    let mut keys: HashMap<String, SigningKey> = HashMap::new();
    for (name, ..) in roles {
        keys.insert(
            (*name).to_owned(),
            SigningKey::generate(Scheme::Ed25519).unwrap(),
        );
    }
    let delegations_of = |parent: &str| -> Option<Value> {
        let children: Vec<_> = roles.iter().filter(|r| r.1 == parent).collect();
        if children.is_empty() {
            return None;
        }
        let mut k = serde_json::Map::new();
        let list: Vec<Value> = children
            .iter()
            .map(|(name, _, paths, terminating, _)| {
                let key = &keys[*name];
                k.insert(key.keyid().to_owned(), key.public().to_json().clone());
                json!({"name": name, "keyids": [key.keyid()], "threshold": 1, "terminating": terminating, "paths": paths})
            })
            .collect();
        Some(json!({"keys": k, "roles": list}))
    };
    repo.set_targets(json!({}), delegations_of("targets"));
    for (name, _, _, _, targets) in roles {
        let mut signed = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1,
            "expires": EXPIRES, "targets": targets});
        if let Some(d) = delegations_of(name) {
            signed["delegations"] = d;
        }
        let bytes = sign_envelope(&signed, &[&keys[*name]]).unwrap();
        repo.put_role(name, 1, bytes);
    }
    repo.publish();
    (repo, keys)
}

#[test]
fn delegations_are_searched_depth_first_and_fetched_lazily() {
    let (repo, _) = delegated_repo(&[
        ("a", "targets", json!(["*.txt"]), false, json!({})),
        (
            "a1",
            "a",
            json!(["*"]),
            false,
            json!({"x.txt": target(b"from a1")}),
        ),
        (
            "b",
            "targets",
            json!(["*.txt"]),
            false,
            json!({"x.txt": target(b"from b")}),
        ),
        ("c", "targets", json!(["*.bin"]), false, json!({})),
    ]);
    let client = repo.client();
    client.refresh().unwrap();
    repo.requests();
    let t = client.find("x.txt").unwrap().unwrap();
    assert!(t.verify("x.txt", b"from a1").is_ok());
    assert_eq!(
        repo.requests(),
        vec!["2.root.json", "timestamp.json", "1.a.json", "1.a1.json"]
    );
}

#[test]
fn terminating_delegation_stops_the_search() {
    let (repo, _) = delegated_repo(&[
        ("a", "targets", json!(["*.txt"]), true, json!({})),
        (
            "b",
            "targets",
            json!(["*.txt"]),
            false,
            json!({"x.txt": target(b"from b")}),
        ),
    ]);
    let client = repo.client();
    assert!(client.find("x.txt").unwrap().is_none());
    assert!(!repo.requests().contains(&"1.b.json".to_owned()));
}

#[test]
fn target_outside_delegated_paths_is_not_trusted() {
    let (repo, _) = delegated_repo(&[(
        "a",
        "targets",
        json!(["dir/*"]),
        false,
        json!({"other/x.txt": target(b"sneaky"), "dir/y.txt": target(b"y")}),
    )]);
    let client = repo.client();
    assert!(client.find("other/x.txt").unwrap().is_none());
    assert!(client.find("dir/y.txt").unwrap().is_some());
    // `*` does not cross `/`.
    assert!(client.find("dir/sub/y.txt").unwrap().is_none());
}

#[test]
fn cached_delegated_role_is_verified_again_for_another_delegator() {
    // `shared` is delegated by `a` (with its real key) and by `b` (with a key that never
    // signed it). Found through `a` first, it must not be trusted through `b` afterwards.
    let (mut repo, keys) = delegated_repo(&[
        ("a", "targets", json!(["a/*"]), false, json!({})),
        ("b", "targets", json!(["b/*"]), false, json!({})),
        (
            "shared",
            "a",
            json!(["*/*"]),
            false,
            json!({"a/x": target(b"ax"), "b/x": target(b"bx")}),
        ),
    ]);
    // Rewrite b to delegate `shared` to a different key.
    let other = SigningKey::generate(Scheme::Ed25519).unwrap();
    let b = json!({"_type": "targets", "spec_version": "1.0.31", "version": 2, "expires": EXPIRES, "targets": {},
        "delegations": {"keys": {other.keyid(): other.public().to_json()},
            "roles": [{"name": "shared", "keyids": [other.keyid()], "threshold": 1, "terminating": false, "paths": ["b/*"]}]}});
    repo.put_role("b", 2, sign_envelope(&b, &[&keys["b"]]).unwrap());
    repo.publish();
    let client = repo.client();
    let mut up = client.updater();
    assert!(block_on(up.find_target("a/x")).unwrap().is_some());
    let err = block_on(up.find_target("b/x")).unwrap_err();
    assert!(
        matches!(err, Error::ThresholdNotMet { ref role, ref delegator, .. } if role == "shared" && delegator == "b"),
        "{err}"
    );
}

#[test]
fn hash_bin_delegations_find_targets() {
    let mut repo = Repo::new();
    let bins_key = SigningKey::generate(Scheme::EcdsaP256).unwrap();
    let delegations = json!({"keys": {bins_key.keyid(): bins_key.public().to_json()},
        "succinct_roles": {"keyids": [bins_key.keyid()], "threshold": 1, "bit_length": 3, "name_prefix": "bin"}});
    repo.set_targets(json!({}), Some(delegations));
    let succinct = aktualizr_rs_metadata::SuccinctRoles {
        keys: aktualizr_rs_metadata::RoleKeys {
            keyids: vec![],
            threshold: 1,
        },
        bit_length: 3,
        name_prefix: "bin".into(),
        extra: Default::default(),
    };
    let mut bins: HashMap<String, serde_json::Map<String, Value>> = (0..8)
        .map(|i| (format!("bin-{i}"), Default::default()))
        .collect();
    let names: Vec<String> = (0..20).map(|i| format!("pkg/file{i}.tar")).collect();
    for n in &names {
        bins.get_mut(&succinct.role_for(n))
            .unwrap()
            .insert(n.clone(), target(n.as_bytes()));
    }
    for (bin, targets) in bins {
        let signed = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": EXPIRES, "targets": targets});
        repo.put_role(&bin, 1, sign_envelope(&signed, &[&bins_key]).unwrap());
    }
    repo.publish();
    let client = repo.client();
    for n in &names {
        let t = client.find(n).unwrap().unwrap();
        assert!(t.verify(n, n.as_bytes()).is_ok());
    }
}

#[test]
fn delegated_role_not_signed_by_delegated_key_is_rejected() {
    let (mut repo, _) = delegated_repo(&[(
        "a",
        "targets",
        json!(["*"]),
        false,
        json!({"x": target(b"x")}),
    )]);
    let attacker = SigningKey::generate(Scheme::Ed25519).unwrap();
    let signed = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": EXPIRES, "targets": {"x": target(b"evil")}});
    repo.put_role("a", 1, sign_envelope(&signed, &[&attacker]).unwrap());
    repo.publish();
    let err = repo.client().find("x").unwrap_err();
    assert!(matches!(err, Error::ThresholdNotMet { .. }), "{err}");
}
