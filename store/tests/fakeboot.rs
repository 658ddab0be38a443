//! The fake-booted tier (root only; `scripts/test` runs it with `--include-ignored`): a
//! deployment made to look booted with `tests/fake-booted.sh` (mount and PID namespaces plus
//! chroot), to cover what needs a booted system: the booted / pending / rollback labels,
//! staging with `stage_tree` and its finalization, and "did the pending deployment boot".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use aktualizr_rs_store::{Commit, Store};
use aktualizr_rs_testsupport::{ostree, workspace};

/// The directory holding `aktualizr-rs-store-probe`, bound into the chroot at /tmp/bin.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_aktualizr-rs-store-probe"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A bootable tree with what a chroot needs: top-level dirs and the merged-/usr symlinks.
fn commit_tree(repo: &Path, scratch: &Path, version: u32) -> Commit {
    let root = scratch.join(format!("tree-{version}"));
    for d in [
        "usr/bin",
        "usr/etc",
        "usr/lib/modules/6.1.0-test",
        "usr/lib64",
        "usr/sbin",
        "sysroot",
        "boot",
        "var",
        "proc",
        "dev",
        "run",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, to) in [
        ("ostree", "sysroot/ostree"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    std::fs::write(root.join("usr/lib/modules/6.1.0-test/vmlinuz"), b"kernel").unwrap();
    std::fs::write(
        root.join("usr/lib/modules/6.1.0-test/initramfs.img"),
        b"initrd",
    )
    .unwrap();
    std::fs::write(
        root.join("usr/etc/os-release"),
        format!("ID=fakeos\nVERSION_ID={version}\n"),
    )
    .unwrap();
    let out = ostree(&[
        "commit",
        &format!("--repo={}", repo.display()),
        "-b",
        "fakeos/stable",
        &format!("--add-metadata-string=version={version}"),
        "--bootable",
        root.to_str().unwrap(),
    ]);
    out.trim().parse().unwrap()
}

/// Runs `script` (bash) fake-booted into `deployment`; returns stdout.
fn fake_booted(sysroot: &Path, deployment: &Path, script: &str) -> String {
    let out = Command::new(workspace().join("tests/fake-booted.sh"))
        .arg(sysroot)
        .arg(deployment)
        .arg(bin_dir())
        .arg(script)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fake-booted {script:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "root only (mount and PID namespaces); scripts/test runs it"]
fn booted_labels_staging_and_the_reboot_check() {
    std::env::set_var("OSTREE_SYSROOT_DEBUG", "mutable-deployments");
    let tmp = tempfile::tempdir().unwrap();
    let sysroot = tmp.path().join("sysroot");
    std::fs::create_dir(&sysroot).unwrap();
    let s = sysroot.to_str().unwrap();
    ostree(&["admin", "init-fs", s]);
    ostree(&["admin", "os-init", "fakeos", "--sysroot", s]);
    let repo = sysroot.join("ostree/repo");
    ostree(&[
        "config",
        &format!("--repo={}", repo.display()),
        "set",
        "sysroot.bootloader",
        "none",
    ]);
    let v1 = commit_tree(&repo, tmp.path(), 1);
    let v2 = commit_tree(&repo, tmp.path(), 2);
    let store = Store::open(&sysroot, Some("fakeos")).unwrap();
    store.deploy(&v1, Some("fakeos-1")).unwrap();
    let deploy_dir = |c: &Commit| sysroot.join(format!("ostree/deploy/fakeos/deploy/{c}.0"));

    // Booted into v1: labelled booted; nothing pending.
    let status = fake_booted(
        &sysroot,
        &deploy_dir(&v1),
        "/tmp/bin/aktualizr-rs-store-probe status",
    );
    assert_eq!(status.trim(), format!("{v1} booted"));

    // Staging v2 while booted, then what ostree-finalize-staged.service does at shutdown.
    let out = fake_booted(
        &sysroot,
        &deploy_dir(&v1),
        &format!(
            "/tmp/bin/aktualizr-rs-store-probe stage {v2} && /tmp/bin/aktualizr-rs-store-probe status && echo -- && \
             ostree admin finalize-staged >/dev/null && /tmp/bin/aktualizr-rs-store-probe status"
        ),
    );
    let (staged, finalized) = out.split_once("--\n").unwrap();
    assert_eq!(
        staged.trim(),
        format!("{v2} staged,pending\n{v1} booted"),
        "{out}"
    );
    assert_eq!(
        finalized.trim(),
        format!("{v2} pending\n{v1} booted"),
        "{out}"
    );
    // The staged deployment kept the origin with the target name.
    let d = Store::open(&sysroot, Some("fakeos"))
        .unwrap()
        .deployments()
        .unwrap();
    assert_eq!(d[0].target.as_deref(), Some("fakeos-staged"));

    // "After the reboot": v2 booted, v1 the rollback; the current deployment is v2, which
    // was the pending one.
    let status = fake_booted(
        &sysroot,
        &deploy_dir(&v2),
        "/tmp/bin/aktualizr-rs-store-probe status && /tmp/bin/aktualizr-rs-store-probe current",
    );
    assert_eq!(status.trim(), format!("{v2} booted\n{v1} rollback\n{v2}"));

    // "A rollback": booting v1 again leaves v2 pending and v1 current.
    let status = fake_booted(
        &sysroot,
        &deploy_dir(&v1),
        "/tmp/bin/aktualizr-rs-store-probe current",
    );
    assert_eq!(status.trim(), v1.as_str());
}
