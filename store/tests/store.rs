//! The store against real OSTree: repositories built with the ostree CLI, served over HTTP on
//! 127.0.0.1, pulled and deployed into an unbooted test sysroot.

// Test helpers panic on setup failures; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use aktualizr_rs_store::{pull, write_reboot_sentinel, Commit, Error, PullOptions, Store, Worker};

const OS: &str = "fakeos";
const REF: &str = "fakeos/x86_64/stable";

fn mutable_deployments() {
    // Read by libostree when a Sysroot is created: without it, deployments are made immutable
    // (chattr +i) and the test directories cannot be removed.
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("OSTREE_SYSROOT_DEBUG", "mutable-deployments"));
}

use aktualizr_rs_testsupport::{commit_fake_os, ostree, ServePy};

/// Serves `dir` on an ephemeral 127.0.0.1 port (plain HTTP).
fn serve(dir: &Path) -> ServePy {
    ServePy::start(dir)
}

/// Serves `dir` with serve.py's `extra` options, as `scheme`.
fn serve_with(dir: &Path, extra: &[&str], scheme: &str) -> ServePy {
    ServePy::start_with(dir, extra, scheme)
}

/// A treehub (archive repo) served on 127.0.0.1 and an unbooted sysroot with `fakeos`.
struct Fixture {
    server: ServePy,
    tmp: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// libostree keeps process-wide state (the environment it reads, GLib's default main
/// context); the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Fixture {
    fn new() -> Fixture {
        let turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        mutable_deployments();
        let tmp = tempfile::tempdir().unwrap();
        let srv = tmp.path().join("srv");
        ostree(&[
            "init",
            &format!("--repo={}", srv.to_str().unwrap()),
            "--mode=archive",
        ]);
        let sysroot = tmp.path().join("sysroot");
        std::fs::create_dir(&sysroot).unwrap();
        ostree(&["admin", "init-fs", sysroot.to_str().unwrap()]);
        ostree(&[
            "admin",
            "os-init",
            OS,
            "--sysroot",
            sysroot.to_str().unwrap(),
        ]);
        let repo = sysroot.join("ostree/repo");
        ostree(&[
            "config",
            &format!("--repo={}", repo.to_str().unwrap()),
            "set",
            "sysroot.bootloader",
            "none",
        ]);
        let server = serve(&tmp.path().join("srv"));
        Fixture {
            server,
            tmp,
            _turn: turn,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Commits a bootable fake rootfs (version `version`, plus `files`) and updates the summary.
    fn commit(&self, version: u32, files: &[(&str, &[u8])]) -> Commit {
        commit_fake_os(&self.path("srv"), self.tmp.path(), REF, version, files)
            .parse()
            .unwrap()
    }

    fn store(&self) -> Store {
        Store::open(&self.path("sysroot"), Some(OS)).unwrap()
    }

    fn opts(&self) -> PullOptions {
        PullOptions::new(&self.server.url)
    }

    /// [`pull`] with `worker` into this fixture's sysroot, on a runtime of its own.
    fn worker_pull(
        &self,
        worker: &Worker,
        commit: &Commit,
        opts: &PullOptions,
        progress: Option<tokio::sync::mpsc::UnboundedSender<aktualizr_rs_store::PullStats>>,
    ) -> Result<aktualizr_rs_store::PullStats, Error> {
        runtime().block_on(pull(
            worker,
            &self.path("sysroot"),
            Some(OS),
            commit,
            opts,
            progress,
        ))
    }

    fn fsck(&self) {
        ostree(&[
            "fsck",
            &format!("--repo={}", self.path("sysroot/ostree/repo").display()),
        ]);
    }
}

fn many_files(n: usize, salt: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("usr/share/data/file-{i}"),
                format!("{salt} content of file {i}\n")
                    .repeat(20)
                    .into_bytes(),
            )
        })
        .collect()
}

#[test]
fn pull_deploy_status_and_sentinel() {
    let f = Fixture::new();
    let v1 = f.commit(1, &[]);
    let store = f.store();
    let progress = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let seen = progress.clone();
    let stats = store
        .pull(&v1, &f.opts(), move |s| seen.set(s.fetched))
        .unwrap();
    assert!(stats.fetched > 0 && stats.bytes > 0, "{stats:?}");
    assert_eq!(
        progress.get(),
        stats.fetched,
        "the last progress report has the final count"
    );
    store.deploy(&v1, Some("fakeos-v1")).unwrap();
    let deployments = store.deployments().unwrap();
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let d = &deployments[0];
    assert_eq!(d.commit, v1.as_str());
    assert_eq!(d.version.as_deref(), Some("1"));
    assert_eq!(d.target.as_deref(), Some("fakeos-v1"));
    assert_eq!(d.os, OS);
    assert!(
        d.roles.contains(&"pending"),
        "unbooted: the first deployment counts as pending: {d:?}"
    );
    // Unbooted, the first deployment counts as the current one (aktualizr's non-booted mode).
    assert_eq!(store.current().unwrap().unwrap().commit, v1.as_str());
    // `ostree admin status` sees it too.
    let status = ostree(&[
        "admin",
        "status",
        "--sysroot",
        f.path("sysroot").to_str().unwrap(),
    ]);
    assert!(status.contains(v1.as_str()), "{status}");

    let sentinel = write_reboot_sentinel(&f.path("run/aktualizr-session"), "need_reboot").unwrap();
    assert!(sentinel.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.path("run/aktualizr-session"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    f.fsck();
}

#[test]
fn second_version_pulls_only_the_changed_objects() {
    let f = Fixture::new();
    let files = many_files(200, "v1");
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let v1 = f.commit(1, &refs);
    let mut changed = files.clone();
    changed[0].1 = b"changed content\n".to_vec();
    changed[1].1 = b"changed content too\n".to_vec();
    let refs: Vec<(&str, &[u8])> = changed
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let v2 = f.commit(2, &refs);
    let store = f.store();
    let first = store.pull(&v1, &f.opts(), |_| {}).unwrap();
    let second = store.pull(&v2, &f.opts(), |_| {}).unwrap();
    assert!(first.fetched > 200, "{first:?}");
    // The two changed files, their directory trees up to the root, and the commit.
    assert!(second.fetched < 20, "incremental pull fetched {second:?}");
    // A complete commit is not fetched again.
    assert_eq!(
        store.pull(&v2, &f.opts(), |_| {}).unwrap(),
        Default::default()
    );
    f.fsck();
}

#[test]
fn unknown_commit_fails_and_deploys_nothing() {
    let f = Fixture::new();
    f.commit(1, &[]);
    let store = f.store();
    let missing: Commit = "0".repeat(64).parse().unwrap();
    let err = store.pull(&missing, &f.opts(), |_| {}).unwrap_err();
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
    assert!(store.deployments().unwrap().is_empty());
    assert!(store.deploy(&missing, None).is_err());
    assert!(store.deployments().unwrap().is_empty());
}

#[test]
fn corrupted_object_on_the_server_fails_the_pull() {
    let f = Fixture::new();
    let v1 = f.commit(
        1,
        &[(
            "usr/bin/tool",
            b"a tool that will be corrupted on the server\n",
        )],
    );
    // Corrupt every content object of the served archive repository (.filez files).
    let mut corrupted = 0;
    for dir in std::fs::read_dir(f.path("srv/objects")).unwrap() {
        for obj in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = obj.unwrap().path();
            if p.extension().is_some_and(|e| e == "filez") {
                let mut bytes = std::fs::read(&p).unwrap();
                let n = bytes.len();
                bytes[n - 1] ^= 0xff;
                std::fs::write(&p, bytes).unwrap();
                corrupted += 1;
            }
        }
    }
    assert!(corrupted > 0);
    let store = f.store();
    assert!(store.pull(&v1, &f.opts(), |_| {}).is_err());
    assert!(
        store.deploy(&v1, None).is_err(),
        "an incomplete commit must not deploy"
    );
    assert!(store.deployments().unwrap().is_empty());
    f.fsck();
}

#[test]
fn commit_checksums_are_validated() {
    assert!("abc".parse::<Commit>().is_err());
    assert!("A".repeat(64).parse::<Commit>().is_err());
    assert!("a".repeat(64).parse::<Commit>().is_ok());
}

#[test]
fn deploying_keeps_pending_and_one_rollback_and_prunes_older_commits() {
    let f = Fixture::new();
    let store = f.store();
    let mut commits = Vec::new();
    for v in 1..=4u32 {
        let c = f.commit(v, &[("usr/share/version", format!("{v}\n").as_bytes())]);
        store.pull(&c, &f.opts(), |_| {}).unwrap();
        store.deploy(&c, Some(&format!("fakeos-v{v}"))).unwrap();
        commits.push(c);
    }
    let deployments = store.deployments().unwrap();
    let listed: Vec<&str> = deployments.iter().map(|d| d.commit.as_str()).collect();
    assert_eq!(
        listed,
        vec![commits[3].as_str(), commits[2].as_str()],
        "{deployments:?}"
    );
    assert!(deployments[0].roles.contains(&"pending"));
    // Objects only the pruned deployments used are gone from the repository.
    let repo = f.path("sysroot/ostree/repo");
    let out = Command::new("ostree")
        .args([
            "show",
            &format!("--repo={}", repo.display()),
            commits[0].as_str(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "commit v1 should have been pruned");
    f.fsck();
}

/// The worker binary of this crate.
fn worker() -> Worker {
    Worker::new(env!("CARGO_BIN_EXE_aktualizr-rs-store-worker"), &[])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The number of objects in the served repository (all of them belong to the commits).
fn served_objects(f: &Fixture) -> u32 {
    let mut n = 0;
    for dir in std::fs::read_dir(f.path("srv/objects")).unwrap() {
        n += std::fs::read_dir(dir.unwrap().path()).unwrap().count() as u32;
    }
    n
}

#[test]
fn worker_pull_reports_progress_and_deploys() {
    let f = Fixture::new();
    let v1 = f.commit(1, &[]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stats = f.worker_pull(&worker(), &v1, &f.opts(), Some(tx)).unwrap();
    assert!(stats.fetched >= served_objects(&f), "{stats:?}");
    let mut last = None;
    while let Ok(s) = rx.try_recv() {
        last = Some(s);
    }
    assert_eq!(
        last,
        Some(stats),
        "the last progress report is the final count"
    );
    f.store().deploy(&v1, None).unwrap();
    f.fsck();
}

#[test]
fn worker_errors_come_back_with_the_workers_message() {
    let f = Fixture::new();
    f.commit(1, &[]);
    let missing: Commit = "0".repeat(64).parse().unwrap();
    let err = f
        .worker_pull(&worker(), &missing, &f.opts(), None)
        .unwrap_err();
    assert!(matches!(err, Error::Pull(_)), "{err:?}");
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
    let missing_worker = Worker::new("/nonexistent/worker", &[]);
    let err = f
        .worker_pull(&missing_worker, &missing, &f.opts(), None)
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/worker"), "{err}");
}

#[test]
fn stalled_treehub_fails_within_the_low_speed_window() {
    let mut f = Fixture::new();
    let v1 = f.commit(1, &[]);
    // Every object request hangs for 10 minutes: a treehub that stopped answering.
    f.server = serve_with(&f.path("srv"), &["--delay-objects", "600"], "http");
    let mut opts = f.opts();
    opts.low_speed_limit_bytes = 1;
    opts.low_speed_time_seconds = 2;
    let started = Instant::now();
    let err = f.worker_pull(&worker(), &v1, &opts, None).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Stalled { .. }), "{err:?}");
    assert!(err.to_string().contains("below 1 bytes/s for 2 s"), "{err}");
    // Not a timing test: a pull that waited for the server would take ten minutes.
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(f.store().deployments().unwrap().is_empty());
    f.fsck();
}

#[test]
fn slow_but_moving_treehub_completes() {
    let mut f = Fixture::new();
    let files = many_files(120, "slow");
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let v1 = f.commit(1, &refs);
    // Each object takes 0.3 s: the pull takes longer than the 2 s low-speed window, but
    // bytes keep arriving every second.
    f.server = serve_with(&f.path("srv"), &["--delay-objects", "0.3"], "http");
    let mut opts = f.opts();
    opts.low_speed_limit_bytes = 1;
    opts.low_speed_time_seconds = 2;
    let started = Instant::now();
    let stats = f.worker_pull(&worker(), &v1, &opts, None).unwrap();
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "the pull must outlast the low-speed window for this test to mean anything: {took:?}"
    );
    assert!(stats.fetched >= served_objects(&f), "{stats:?}");
    f.fsck();
}

#[test]
fn pull_killed_half_way_leaves_a_consistent_repo_and_resumes() {
    let mut f = Fixture::new();
    let files = many_files(300, "kill");
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let v1 = f.commit(1, &refs);
    let total = served_objects(&f);
    f.server = serve_with(&f.path("srv"), &["--delay-objects", "0.05"], "http");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aktualizr-rs-store-worker"))
        .args(["--sysroot", f.path("sysroot").to_str().unwrap()])
        .args(["--os", OS, "--commit", v1.as_str(), "--url", &f.server.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead as _;
    let mut fetched_before_kill = 0;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let fetched: u32 = line.split(' ').nth(1).unwrap().parse().unwrap();
        if fetched >= total / 3 {
            fetched_before_kill = fetched;
            break;
        }
        assert!(line.starts_with("progress"), "finished too early: {line}");
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(fetched_before_kill > 0 && fetched_before_kill < total);
    f.fsck();

    let store = f.store();
    let rest = store.pull(&v1, &f.opts(), |_| {}).unwrap();
    // Objects that were in flight at the kill are fetched again (at most libostree's
    // outstanding requests, plus those written but not yet reported).
    assert!(
        rest.fetched <= total - fetched_before_kill + 16,
        "fetched {} again of {total} after {fetched_before_kill} had arrived",
        rest.fetched
    );
    store.deploy(&v1, None).unwrap();
    f.fsck();
}

#[test]
fn extra_headers_are_sent_with_every_request() {
    let mut f = Fixture::new();
    let v1 = f.commit(1, &[]);
    f.server = serve_with(
        &f.path("srv"),
        &["--require-header", "X-Device-Token: s3cret"],
        "http",
    );
    let store = f.store();
    let err = store.pull(&v1, &f.opts(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut opts = f.opts();
    opts.headers = vec![("X-Device-Token".into(), "s3cret".into())];
    let stats = store.pull(&v1, &opts, |_| {}).unwrap();
    assert!(stats.fetched >= served_objects(&f), "{stats:?}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is missing: run scripts/setup");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_pki(dir: &Path) {
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "ed25519",
                "-out",
                &format!("{name}.key"),
            ],
        )
    };
    key("ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        key(name);
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[test]
fn pulls_over_https_with_a_client_certificate() {
    let mut f = Fixture::new();
    let v1 = f.commit(1, &[]);
    let pki = f.path("pki");
    std::fs::create_dir(&pki).unwrap();
    make_pki(&pki);
    let p = |n: &str| pki.join(n).to_str().unwrap().to_owned();
    f.server = serve_with(
        &f.path("srv"),
        &["--tls", &p("server.pem"), &p("server.key"), &p("ca.pem")],
        "https",
    );
    let store = f.store();
    let mut opts = f.opts();
    opts.tls_ca = Some(pki.join("ca.pem"));
    // Without a client certificate the server refuses the handshake.
    assert!(store.pull(&v1, &opts, |_| {}).is_err());
    opts.tls_client_cert = Some(pki.join("client.pem"));
    opts.tls_client_key = Some(pki.join("client.key"));
    let stats = store.pull(&v1, &opts, |_| {}).unwrap();
    assert!(stats.fetched >= served_objects(&f), "{stats:?}");
    store.deploy(&v1, Some("fakeos-v1")).unwrap();
    f.fsck();
}

#[test]
fn pull_refuses_when_the_repository_reserve_would_be_crossed() {
    let f = Fixture::new();
    let v1 = f.commit(1, &[]);
    ostree(&[
        "config",
        &format!("--repo={}", f.path("sysroot/ostree/repo").display()),
        "set",
        "core.min-free-space-size",
        "100000TB",
    ]);
    let err = f.store().pull(&v1, &f.opts(), |_| {}).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("min-free-space"), "{err}");
    // Nothing was fetched.
    assert!(!f
        .path("sysroot/ostree/repo/objects")
        .read_dir()
        .unwrap()
        .any(|d| { d.unwrap().path().read_dir().unwrap().next().is_some() }));
}
