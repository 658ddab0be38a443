//! Helpers shared by the integration tests of the workspace (a dev-dependency only): where
//! the workspace and the python-tuf venv are, `tests/interop/serve.py` on an ephemeral port,
//! the ostree CLI. They panic on setup failures, naming what is missing: that is the point of
//! a test helper.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The python of the venv `scripts/setup` creates (or `AKTUALIZR_RS_PYTHON`).
pub fn python() -> PathBuf {
    let p = std::env::var_os("AKTUALIZR_RS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "python-tuf venv not found at {}: run scripts/setup (or set AKTUALIZR_RS_PYTHON)",
        p.display()
    );
    p
}

/// A binary of another workspace member (say `uptane-repo`), next to this test's own
/// target directory; `cargo test --workspace` builds it.
pub fn workspace_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo build --workspace, or run cargo test --workspace)",
        bin.display()
    );
    bin
}

/// A script in `tests/interop/`.
pub fn interop_script(name: &str) -> PathBuf {
    workspace().join("tests/interop").join(name)
}

/// Waits up to 20 s for `path` to exist and returns its content.
pub fn wait_for_file(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = std::fs::read_to_string(path) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, killed and reaped when dropped (also when a test panics).
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `uptane-repo serve DIR --port 0 EXTRA...` (the binary `bin`) and its URL once it listens.
pub fn serve_backend(bin: &Path, dir: &Path, extra: &[&str]) -> (KillOnDrop, String) {
    let _ = std::fs::remove_file(dir.join("serve.url"));
    let child = Command::new(bin)
        .arg("serve")
        .arg(dir)
        .args(["--port", "0"])
        .args(extra)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting uptane-repo serve");
    let guard = KillOnDrop(child);
    let url = wait_for_file(&dir.join("serve.url"), "uptane-repo serve");
    (guard, url)
}

/// `tests/interop/serve.py` on an ephemeral 127.0.0.1 port, killed on drop.
#[derive(Debug)]
pub struct ServePy {
    _child: KillOnDrop,
    /// `SCHEME://127.0.0.1:PORT`.
    pub url: String,
}

impl ServePy {
    /// Serves `dir` over plain HTTP.
    pub fn start(dir: &Path) -> ServePy {
        ServePy::start_with(dir, &[], "http")
    }

    /// Serves `dir` with serve.py's `extra` options, as `scheme`.
    pub fn start_with(dir: &Path, extra: &[&str], scheme: &str) -> ServePy {
        let portfile = dir.with_extension("port");
        let _ = std::fs::remove_file(&portfile);
        let child = Command::new("python3")
            .arg(interop_script("serve.py"))
            .arg(dir)
            .arg(&portfile)
            .args(extra)
            .spawn()
            .expect("starting serve.py (python3 is missing: run scripts/setup)");
        let child = KillOnDrop(child);
        let port = wait_for_file(&portfile, "serve.py");
        ServePy {
            _child: child,
            url: format!("{scheme}://127.0.0.1:{}", port.trim()),
        }
    }
}

/// Runs the ostree CLI (with `OSTREE_SYSROOT_DEBUG=mutable-deployments`, so test sysroots
/// can be removed) and returns its stdout; panics with its stderr on failure.
pub fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .output()
        .expect("the ostree CLI is missing: run scripts/setup");
    assert!(
        out.status.success(),
        "ostree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Commits a bootable fake rootfs (a kernel and initramfs in `usr/lib/modules/<kver>/`, an
/// os-release, plus `files`) to `repo` on `branch` with `version` metadata, updates the
/// summary, and returns the commit checksum. `scratch` holds the tree.
pub fn commit_fake_os(
    repo: &Path,
    scratch: &Path,
    branch: &str,
    version: u32,
    files: &[(&str, &[u8])],
) -> String {
    let root = scratch.join(format!("rootfs-{version}"));
    for d in ["usr/bin", "usr/etc", "usr/lib/modules/6.1.0-test"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("usr/lib/modules/6.1.0-test/vmlinuz"), b"kernel").unwrap();
    std::fs::write(
        root.join("usr/lib/modules/6.1.0-test/initramfs.img"),
        b"initrd",
    )
    .unwrap();
    std::fs::write(root.join("usr/etc/os-release"), b"ID=fakeos\n").unwrap();
    for (p, content) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let repo_arg = format!("--repo={}", repo.display());
    let out = ostree(&[
        "commit",
        &repo_arg,
        "-b",
        branch,
        "-s",
        &format!("v{version}"),
        &format!("--add-metadata-string=version={version}"),
        "--bootable",
        root.to_str().unwrap(),
    ]);
    ostree(&["summary", &repo_arg, "-u"]);
    out.trim().to_owned()
}
