"""Writes a TUF repository with python-tuf's Metadata API, for aktualizr-rs to read.

Usage: make_repo.py OUT_DIR [--expired-timestamp] [--python-defaults]

--python-defaults writes what python-tuf does when nothing is asked of it: compact JSON
(Metadata.to_bytes()), and snapshot and timestamp entries with a version only (no length, no
hashes, so a client falls back to its default size caps); the hash bins use bit_length 8
(256 bins) instead of 4.

OUT_DIR/metadata: consistent snapshots, as python-tuf's repository examples lay them out:
  1.root.json, 2.root.json, 3.root.json (two key rotations, threshold 1 -> 2, each new root
  signed by a threshold of the old and of the new root keys), N.snapshot.json, N.targets.json,
  N.<role>.json (role names percent-encoded like urllib.parse.quote(name, safe="")) and
  timestamp.json. Every role has a different version, so a client that builds a versioned name
  from the wrong entry fetches nothing.
OUT_DIR/targets: <dir>/<hash>.<basename>, for both the sha256 and the sha512 of each target.
OUT_DIR/expected.json:
  "targets":     {target path: content} for every target a client can find;
  "target_files": {target path: its file in the client's target dir}, quote(path, safe="");
  "stored":      {file in the client's metadata dir: file served under OUT_DIR/metadata} for
                 every role that downloading all those targets reaches;
  "not_fetched": files the client must never fetch (behind a terminating delegation, or hash
                 bins that hold none of the targets);
  "shadowed":    targets listed only by a role behind a terminating delegation (not found).

Keys: ed25519, RSA (rsassa-pss-sha256) and ECDSA (P-256, P-384) mixed across roles; snapshot
needs two signatures of different schemes (threshold 2).
Delegations from targets, searched in this order:
  apps            paths apps/*       -> apps-beta (nested) paths apps/beta-*
  images          paths images/*     terminating: "decoy" (also images/*) is never reached
  decoy           paths images/*
  ci/nightly büilds  paths nightly/* (a role name that must be percent-encoded, '/' included)
  by-hash         path_hash_prefixes (the sha256 of "hashed/x.bin" starts with one of them)
  bins-parent     paths pkgs/*       -> succinct hash bins bin-0 .. bin-f (bit_length 4)
                                        or bin-00 .. bin-ff (bit_length 8)
"""

import hashlib
import json
import os
import sys
import urllib.parse
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

# Indented output by default: the bytes differ from the canonical form, so a client that
# verifies a re-serialization instead of the bytes received would fail.
SER = JSONSerializer(compact=False)
VERSION_ONLY = False


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def p384() -> CryptoSigner:
    return CryptoSigner(ec.generate_private_key(ec.SECP384R1()))


class Repo:
    def __init__(self, out: str):
        self.meta_dir = os.path.join(out, "metadata")
        self.tgt_dir = os.path.join(out, "targets")
        os.makedirs(self.meta_dir, exist_ok=True)
        os.makedirs(self.tgt_dir, exist_ok=True)
        self.targets: dict[str, str] = {}
        self.snapshot_meta: dict[str, MetaFile] = {}
        self.served: dict[str, str] = {}  # role -> served file name

    def write(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.meta_dir, name), "wb") as f:
            f.write(data)

    def add_target(self, md: Metadata, path: str, content: bytes) -> None:
        info = TargetFile.from_data(path, content, ["sha256", "sha512"])
        # Kept by the client, and part of what was signed: escapes, UTF-8 (written as \u00fc
        # by json.dumps), a control character, a big integer, null and nesting.
        info.unrecognized_fields["custom"] = {
            "hardwareIds": ["\u00fc-board"],
            "quote": 'a"b\\c',
            "tab": "x\ty",
            "n": -3,
            "big": 2**64 - 1,
            "nested": {"z": [1, True, None], "a": {}},
        }
        md.signed.targets[path] = info
        dirname, _, basename = path.rpartition("/")
        for h in info.hashes.values():
            fname = os.path.join(self.tgt_dir, dirname, f"{h}.{basename}")
            os.makedirs(os.path.dirname(fname), exist_ok=True)
            with open(fname, "wb") as f:
                f.write(content)
        self.targets[path] = content.decode()

    def write_targets_role(self, name: str, md: Metadata, signers: list, version: int) -> None:
        md.signed.version = version
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes(SER)
        fname = f"{version}.{quote(name)}.json"
        self.write(fname, data)
        self.served[name] = fname
        self.snapshot_meta[f"{name}.json"] = meta_file(version, data)


def meta_file(version: int, data: bytes) -> MetaFile:
    if VERSION_ONLY:
        return MetaFile(version=version)
    return MetaFile(
        version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}
    )


def delegated(name: str, keys: list, paths: list, terminating: bool = False) -> DelegatedRole:
    return DelegatedRole(
        name=name,
        keyids=[k.public_key.keyid for k in keys],
        threshold=1,
        terminating=terminating,
        paths=paths,
    )


def main() -> None:
    global SER, VERSION_ONLY
    out = sys.argv[1]
    expired_ts = "--expired-timestamp" in sys.argv
    bin_bits = 4
    if "--python-defaults" in sys.argv:
        SER, VERSION_ONLY, bin_bits = JSONSerializer(compact=True), True, 8
    repo = Repo(out)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    expires = now + timedelta(days=365)

    signers = {
        "root": [CryptoSigner.generate_ed25519()],
        "timestamp": [CryptoSigner.generate_ecdsa()],
        "snapshot": [CryptoSigner.generate_rsa(), CryptoSigner.generate_ed25519()],
        "targets": [p384()],
    }

    # Root v1: one ed25519 root key, threshold 1.
    root = Metadata(Root(expires=expires, consistent_snapshot=True))
    for role, ss in signers.items():
        for s in ss:
            root.signed.add_key(s.public_key, role)
    root.signed.roles["snapshot"].threshold = 2

    def write_root(sign_with: list) -> None:
        root.signatures.clear()
        for s in sign_with:
            root.sign(s, append=True)
        repo.write(f"{root.signed.version}.root.json", root.to_bytes(SER))

    write_root(signers["root"])
    # Root v2: a second root key (RSA), threshold 2; signed by the old key and both new ones.
    rsa_root = CryptoSigner.generate_rsa()
    root.signed.version = 2
    root.signed.add_key(rsa_root.public_key, "root")
    root.signed.roles["root"].threshold = 2
    write_root(signers["root"] + [rsa_root])
    # Root v3: the ed25519 root key replaced by an ECDSA one (threshold 2 of v2 = ed25519 + RSA,
    # threshold 2 of v3 = RSA + ECDSA), and the timestamp key rotated from ECDSA to ed25519.
    old_ed = signers["root"][0]
    ecdsa_root = CryptoSigner.generate_ecdsa()
    root.signed.version = 3
    root.signed.revoke_key(old_ed.public_key.keyid, "root")
    root.signed.add_key(ecdsa_root.public_key, "root")
    root.signed.revoke_key(signers["timestamp"][0].public_key.keyid, "timestamp")
    signers["timestamp"] = [CryptoSigner.generate_ed25519()]
    root.signed.add_key(signers["timestamp"][0].public_key, "timestamp")
    write_root([old_ed, rsa_root, ecdsa_root])

    # Delegated roles, one key each; the hash bins share an ECDSA key.
    names = ["apps", "apps-beta", "images", "decoy", "ci/nightly büilds", "by-hash", "bins-parent"]
    rkeys = {n: CryptoSigner.generate_ed25519() for n in names}
    rkeys["images"] = CryptoSigner.generate_rsa()
    bins_key = CryptoSigner.generate_ecdsa()

    targets = Metadata(Targets(expires=expires))
    repo.add_target(targets, "README.txt", b"top-level target\n")
    repo.add_target(targets, "dir/sub/file.txt", b"a file in a subdirectory\n")
    top_level = ["apps", "images", "decoy", "ci/nightly büilds", "by-hash", "bins-parent"]
    hashed = "hashed/x.bin"
    prefix = hashlib.sha256(hashed.encode()).hexdigest()[:4]
    other = "0000" if prefix != "0000" else "ffff"
    targets.signed.delegations = Delegations(
        keys={rkeys[n].public_key.keyid: rkeys[n].public_key for n in top_level},
        roles={
            "apps": delegated("apps", [rkeys["apps"]], ["apps/*"]),
            "images": delegated("images", [rkeys["images"]], ["images/*"], terminating=True),
            "decoy": delegated("decoy", [rkeys["decoy"]], ["images/*"]),
            "ci/nightly büilds": delegated(
                "ci/nightly büilds", [rkeys["ci/nightly büilds"]], ["nightly/*"]
            ),
            "by-hash": DelegatedRole(
                name="by-hash",
                keyids=[rkeys["by-hash"].public_key.keyid],
                threshold=1,
                terminating=False,
                path_hash_prefixes=[other, prefix],
            ),
            "bins-parent": delegated("bins-parent", [rkeys["bins-parent"]], ["pkgs/*"]),
        },
    )

    apps = Metadata(Targets(expires=expires))
    repo.add_target(apps, "apps/hello.tar", b"hello app\n")
    apps.signed.delegations = Delegations(
        keys={rkeys["apps-beta"].public_key.keyid: rkeys["apps-beta"].public_key},
        roles={"apps-beta": delegated("apps-beta", [rkeys["apps-beta"]], ["apps/beta-*"])},
    )
    beta = Metadata(Targets(expires=expires))
    repo.add_target(beta, "apps/beta-tool.tar", b"beta tool, from a nested delegation\n")

    images = Metadata(Targets(expires=expires))
    repo.add_target(images, "images/os.img", b"os image\n")
    decoy = Metadata(Targets(expires=expires))
    shadowed = "images/evil.img"
    decoy.signed.targets[shadowed] = TargetFile.from_data(shadowed, b"evil", ["sha256"])

    nightly = Metadata(Targets(expires=expires))
    repo.add_target(nightly, "nightly/büild 1.bin", b"a nightly build, role name encoded\n")
    by_hash = Metadata(Targets(expires=expires))
    repo.add_target(by_hash, hashed, b"found by path_hash_prefixes\n")

    bins_parent = Metadata(Targets(expires=expires))
    succinct = SuccinctRoles(
        keyids=[bins_key.public_key.keyid], threshold=1, bit_length=bin_bits, name_prefix="bin"
    )
    bins_parent.signed.delegations = Delegations(
        keys={bins_key.public_key.keyid: bins_key.public_key}, roles=None, succinct_roles=succinct
    )
    bins = {name: Metadata(Targets(expires=expires)) for name in succinct.get_roles()}
    for i in range(12):
        path = f"pkgs/pkg-{i}.deb"
        repo.add_target(bins[succinct.get_role_for_target(path)], path, f"package {i}\n".encode())

    version = iter(range(2, 1000))
    repo.write_targets_role("targets", targets, signers["targets"], next(version))
    repo.write_targets_role("apps", apps, [rkeys["apps"]], next(version))
    repo.write_targets_role("apps-beta", beta, [rkeys["apps-beta"]], next(version))
    repo.write_targets_role("images", images, [rkeys["images"]], next(version))
    repo.write_targets_role("decoy", decoy, [rkeys["decoy"]], next(version))
    repo.write_targets_role("ci/nightly büilds", nightly, [rkeys["ci/nightly büilds"]], next(version))
    repo.write_targets_role("by-hash", by_hash, [rkeys["by-hash"]], next(version))
    repo.write_targets_role("bins-parent", bins_parent, [rkeys["bins-parent"]], next(version))
    for name, md in bins.items():
        repo.write_targets_role(name, md, [bins_key], next(version))

    snapshot = Metadata(Snapshot(expires=expires, version=next(version)))
    snapshot.signed.meta = repo.snapshot_meta
    for s in signers["snapshot"]:
        snapshot.sign(s, append=True)
    snap_bytes = snapshot.to_bytes(SER)
    repo.write(f"{snapshot.signed.version}.snapshot.json", snap_bytes)

    ts_expires = now - timedelta(days=1) if expired_ts else expires
    timestamp = Metadata(Timestamp(expires=ts_expires, version=next(version)))
    timestamp.signed.snapshot_meta = meta_file(snapshot.signed.version, snap_bytes)
    timestamp.sign(signers["timestamp"][0])
    repo.write("timestamp.json", timestamp.to_bytes(SER))

    # What a client that downloads every target in "targets" trusts afterwards.
    reached = ["targets", "apps", "apps-beta", "images", "ci/nightly büilds", "by-hash"]
    reached += ["bins-parent"]
    reached += [n for n, md in bins.items() if md.signed.targets]
    stored = {
        "root.json": "3.root.json",
        "timestamp.json": "timestamp.json",
        "snapshot.json": f"{snapshot.signed.version}.snapshot.json",
    }
    stored.update({f"{quote(n)}.json": repo.served[n] for n in reached})
    not_fetched = [f"{quote(n)}.json" for n in repo.served if n not in reached]
    assert len(reached) - 7 >= 4, "the targets should land in several hash bins"
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(
            {
                "targets": repo.targets,
                "target_files": {p: quote(p) for p in repo.targets},
                "stored": stored,
                "not_fetched": not_fetched,
                "shadowed": [shadowed],
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
