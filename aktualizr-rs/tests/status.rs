//! `aktualizr-rs status` on a real OSTree sysroot, deployed with the ostree CLI (a commit the
//! client has no record of: it must be shown by its checksum, never as "unknown").

// Test helpers panic on setup failures; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use aktualizr_rs_testsupport::{commit_fake_os, ostree};

#[test]
fn status_shows_deployments_by_commit_and_the_reboot_sentinel() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |rel: &str| tmp.path().join(rel);
    let sysroot = p("sysroot");
    std::fs::create_dir(&sysroot).unwrap();
    let s = sysroot.to_str().unwrap();
    ostree(&["admin", "init-fs", s]);
    ostree(&["admin", "os-init", "fakeos", "--sysroot", s]);
    let repo = format!("--repo={s}/ostree/repo");
    ostree(&["config", &repo, "set", "sysroot.bootloader", "none"]);
    let commit = commit_fake_os(
        &sysroot.join("ostree/repo"),
        tmp.path(),
        "fakeos/stable",
        7,
        &[],
    );
    let commit = commit.as_str();
    ostree(&[
        "admin",
        "deploy",
        "--sysroot",
        s,
        "--os",
        "fakeos",
        "fakeos/stable",
    ]);

    let run = |extra: &[&str]| {
        let sentinel = p("run/need_reboot");
        let out = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
            .args([
                "status",
                "--sysroot",
                s,
                "--os",
                "fakeos",
                "--reboot-sentinel",
            ])
            .arg(&sentinel)
            .args(extra)
            .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&[]);
    assert!(
        text.contains(&format!("fakeos {commit}.0 (pending)")),
        "{text}"
    );
    assert!(text.contains("Version: 7"), "{text}");
    assert!(text.contains("none recorded"), "{text}");
    assert!(!text.to_lowercase().contains("unknown"), "{text}");
    assert!(text.contains("Reboot pending: no"), "{text}");

    std::fs::create_dir_all(p("run")).unwrap();
    std::fs::write(p("run/need_reboot"), b"").unwrap();
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["reboot_pending"], true);
    assert_eq!(json["deployments"][0]["commit"], commit);
    assert_eq!(json["deployments"][0]["version"], "7");
    assert_eq!(
        json["deployments"][0]["roles"],
        serde_json::json!(["pending"])
    );

    // Without flags, the sysroot, OS and sentinel come from the configuration (`-c`),
    // written as aktualizr accepts it: some values quoted, some not.
    let conf = p("sota.toml");
    std::fs::write(
        &conf,
        format!(
            "[pacman]\nsysroot = \"{s}\"\nos = fakeos\n[bootloader]\nreboot_sentinel_dir = {}\n",
            p("run").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
        .args(["status", "--json", "-c"])
        .arg(&conf)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["os"], "fakeos");
    assert_eq!(json["reboot_pending"], true);
    assert_eq!(json["deployments"][0]["commit"], commit);

    // A wrong type in the configuration names the file, the key and the type.
    std::fs::write(&conf, "[uptane]\npolling_sec = soon\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs"))
        .args(["status", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sota.toml: line 2: uptane.polling_sec = \"soon\": expected an integer"),
        "{err}"
    );
}
