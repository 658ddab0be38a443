"""Writes TUF repositories with python-tuf's Metadata API, for aktualizr-rs to read.

Usage: make_repo.py OUT_DIR [--expired-timestamp]

OUT_DIR/metadata: 1.root.json, 2.root.json, 3.root.json (key rotations, threshold 1 -> 2),
N.snapshot.json, N.targets.json, N.<role>.json, timestamp.json (consistent snapshots).
OUT_DIR/targets: <dir>/<sha256>.<basename>.
OUT_DIR/expected.json: {"targets": {path: content}, "roles": [delegated role names]}.

Keys: ed25519, RSA (rsassa-pss-sha256) and ECDSA (P-256, P-384) mixed across roles.
Delegations: paths globs with a nested and a terminating role, and succinct hash bins.
"""

import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from cryptography.hazmat.primitives.asymmetric import ec
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Key,
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

SER = JSONSerializer(compact=False)


def main() -> None:
    out = sys.argv[1]
    expired_ts = "--expired-timestamp" in sys.argv
    meta_dir = os.path.join(out, "metadata")
    tgt_dir = os.path.join(out, "targets")
    os.makedirs(meta_dir, exist_ok=True)
    os.makedirs(tgt_dir, exist_ok=True)
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)

    def p384():
        priv = ec.generate_private_key(ec.SECP384R1())
        return CryptoSigner(priv)

    signers = {
        "root": [CryptoSigner.generate_ed25519()],
        "timestamp": [CryptoSigner.generate_ecdsa()],
        "snapshot": [CryptoSigner.generate_rsa()],
        "targets": [p384()],
    }

    root = Metadata(Root(expires=expires, consistent_snapshot=True))
    for role, ss in signers.items():
        for s in ss:
            root.signed.add_key(s.public_key, role)

    def write_root(md, sign_with):
        md.signatures.clear()
        for s in sign_with:
            md.sign(s, append=True)
        md.to_file(os.path.join(meta_dir, f"{md.signed.version}.root.json"), SER)

    write_root(root, signers["root"])
    # v2: a second root key (RSA) and threshold 2; signed by old and new keys.
    new_root_key = CryptoSigner.generate_rsa()
    root.signed.version = 2
    root.signed.add_key(new_root_key.public_key, "root")
    root.signed.roles["root"].threshold = 2
    write_root(root, signers["root"] + [new_root_key])
    signers["root"].append(new_root_key)
    # v3: replace the ed25519 root key by an ECDSA one, keep threshold 2; rotate timestamp key.
    old = signers["root"][0]
    repl = CryptoSigner.generate_ecdsa()
    root.signed.version = 3
    root.signed.revoke_key(old.public_key.keyid, "root")
    root.signed.add_key(repl.public_key, "root")
    root.signed.revoke_key(signers["timestamp"][0].public_key.keyid, "timestamp")
    signers["timestamp"] = [CryptoSigner.generate_ed25519()]
    root.signed.add_key(signers["timestamp"][0].public_key, "timestamp")
    write_root(root, [old, new_root_key, repl])
    signers["root"] = [new_root_key, repl]

    expected = {}
    roles_meta = {}

    def add_target(md, path, content):
        base = tgt_dir
        info = TargetFile.from_data(path, content, ["sha256", "sha512"])
        md.signed.targets[path] = info
        dirname, _, basename = path.rpartition("/")
        for h in info.hashes.values():
            fname = os.path.join(base, dirname, f"{h}.{basename}")
            os.makedirs(os.path.dirname(fname), exist_ok=True)
            with open(fname, "wb") as f:
                f.write(content)
        expected[path] = content.decode()

    def write_role(name, md, signer):
        md.sign(signer)
        fname = f"{md.signed.version}.{name}.json" if name == "targets" else f"{md.signed.version}.{name}.json"
        data = md.to_bytes(SER)
        with open(os.path.join(meta_dir, fname.replace("/", "%2F")), "wb") as f:
            f.write(data)
        roles_meta[f"{name}.json"] = MetaFile(
            version=md.signed.version,
            length=len(data),
            hashes={"sha256": hashlib.sha256(data).hexdigest()},
        )

    # Delegated roles (keys per role).
    rkeys = {n: CryptoSigner.generate_ed25519() for n in ["apps", "apps-beta", "images", "decoy"]}
    bins_key = CryptoSigner.generate_ecdsa()

    targets = Metadata(Targets(expires=expires))
    add_target(targets, "README.txt", b"top-level target\n")
    add_target(targets, "dir/sub/file.txt", b"a file in a subdirectory\n")

    def delegated(name, keys, paths, terminating):
        return DelegatedRole(
            name=name, keyids=[k.public_key.keyid for k in keys], threshold=1,
            terminating=terminating, paths=paths,
        )

    targets.signed.delegations = Delegations(
        keys={s.public_key.keyid: s.public_key for s in rkeys.values()},
        roles={
            "apps": delegated("apps", [rkeys["apps"]], ["apps/*"], False),
            # terminating: the search for images/* stops here, "decoy" is never reached.
            "images": delegated("images", [rkeys["images"]], ["images/*"], True),
            "decoy": delegated("decoy", [rkeys["decoy"]], ["images/*"], False),
        },
    )
    apps = Metadata(Targets(expires=expires))
    add_target(apps, "apps/hello.tar", b"hello app\n")
    apps.signed.delegations = Delegations(
        keys={rkeys["apps-beta"].public_key.keyid: rkeys["apps-beta"].public_key},
        roles={"apps-beta": delegated("apps-beta", [rkeys["apps-beta"]], ["apps/beta-*"], False)},
    )
    beta = Metadata(Targets(expires=expires))
    add_target(beta, "apps/beta-tool.tar", b"beta tool, from a nested delegation\n")

    images = Metadata(Targets(expires=expires))
    add_target(images, "images/os.img", b"os image\n")
    decoy = Metadata(Targets(expires=expires))
    decoy.signed.targets["images/evil.img"] = TargetFile.from_data("images/evil.img", b"evil", ["sha256"])

    # Hash bins under "images"? No: a separate succinct delegation from "bins-parent".
    bins_parent = Metadata(Targets(expires=expires))
    succinct = SuccinctRoles(keyids=[bins_key.public_key.keyid], threshold=1, bit_length=4, name_prefix="bin")
    bins_parent.signed.delegations = Delegations(keys={bins_key.public_key.keyid: bins_key.public_key}, roles=None, succinct_roles=succinct)
    targets.signed.delegations.roles["bins-parent"] = delegated("bins-parent", [rkeys["apps"]], ["pkgs/*"], False)
    bins = {name: Metadata(Targets(expires=expires)) for name in succinct.get_roles()}
    for i in range(12):
        path = f"pkgs/pkg-{i}.deb"
        add_target(bins[succinct.get_role_for_target(path)], path, f"package {i}\n".encode())

    write_role("apps-beta", beta, rkeys["apps-beta"])
    write_role("apps", apps, rkeys["apps"])
    write_role("images", images, rkeys["images"])
    write_role("decoy", decoy, rkeys["decoy"])
    for name, md in bins.items():
        write_role(name, md, bins_key)
    write_role("bins-parent", bins_parent, rkeys["apps"])
    write_role("targets", targets, signers["targets"][0])

    snapshot = Metadata(Snapshot(expires=expires))
    snapshot.signed.meta = roles_meta
    snapshot.sign(signers["snapshot"][0])
    snap_bytes = snapshot.to_bytes(SER)
    with open(os.path.join(meta_dir, f"{snapshot.signed.version}.snapshot.json"), "wb") as f:
        f.write(snap_bytes)

    ts_expires = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1) if expired_ts else expires
    timestamp = Metadata(Timestamp(expires=ts_expires))
    timestamp.signed.snapshot_meta = MetaFile(version=1, length=len(snap_bytes), hashes={"sha256": hashlib.sha256(snap_bytes).hexdigest()})
    timestamp.sign(signers["timestamp"][0])
    timestamp.to_file(os.path.join(meta_dir, "timestamp.json"), SER)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"targets": expected, "roles": sorted(n.removesuffix(".json") for n in roles_meta)}, f)


if __name__ == "__main__":
    main()
