//! The content-addressed image store of aktualizr-rs: OSTree through libostree.
//!
//! It pulls the commit a verified Uptane target names from a treehub into the device's
//! repository (only missing objects travel), checks it is complete and is the commit expected,
//! deploys it as the pending deployment, writes the reboot sentinel, and lists deployments.
//!
//! What it is not: a verifier. Trust comes from Uptane (`metadata/`): the commit checksum
//! given here is the target's verified sha256, and GPG verification is off.
//!
//! Every libostree call blocks. [`Store`] offers the blocking calls; [`pull`] runs a pull in a
//! worker process (see [`worker`]) that a stall detector kills when the transfer stalls, and
//! that is killed when the future is dropped.
//!
//! ```no_run
//! use aktualizr_rs_store::{Commit, PullOptions, Store};
//! let store = Store::open("/".as_ref(), Some("lmp")).unwrap();
//! let commit: Commit = "1a2b…".parse().unwrap_or_else(|_| unreachable!());
//! # let _ = (store, commit);
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ostree::gio;
use ostree::gio::prelude::FileExt as _;
use ostree::glib;

pub mod worker;
pub use worker::{pull, worker_main, Worker};

/// The default directory of the reboot sentinel (aktualizr's `[bootloader] reboot_sentinel_dir`).
pub const DEFAULT_REBOOT_SENTINEL_DIR: &str = "/run/aktualizr-session";

/// The default name of the reboot sentinel (aktualizr's `[bootloader] reboot_sentinel_name`).
pub const DEFAULT_REBOOT_SENTINEL_NAME: &str = "need_reboot";

/// The name of the remote this crate configures in the device repository (aktualizr's).
pub const REMOTE: &str = "aktualizr-remote";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A libostree call failed.
    #[error("{what}: {source}")]
    Ostree {
        /// What was being done.
        what: String,
        /// libostree's error.
        #[source]
        source: glib::Error,
    },
    /// A GLib main context could not be made this thread's default.
    #[error("acquiring a GLib main context: {0}")]
    MainContext(glib::BoolError),
    /// The pulled commit is not the expected one, or is incomplete.
    #[error("commit {commit}: {reason}")]
    BadCommit {
        /// The expected commit.
        commit: Commit,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The transfer stayed below the low-speed limit for the low-speed window.
    #[error("pulling commit {commit} stalled: below {limit} bytes/s for {seconds} s (after {} objects, {} bytes)", stats.fetched, stats.bytes)]
    Stalled {
        /// The commit being pulled.
        commit: Commit,
        /// The low-speed limit, bytes per second.
        limit: u32,
        /// The low-speed window, seconds.
        seconds: u32,
        /// What had been transferred.
        stats: PullStats,
    },
    /// The pull worker reported an error (its message).
    #[error("{0}")]
    Pull(String),
    /// The pull worker misbehaved (could not start, died, spoke nonsense).
    #[error("pull worker: {0}")]
    Worker(String),
    /// The repository's filesystem has less free space than the repository reserves
    /// (`core.min-free-space-size` / `core.min-free-space-percent`).
    #[error("not enough free space in {repo}: {free} bytes free, the repository reserves {reserved} bytes (core.min-free-space-size/-percent in its config)")]
    NoSpace {
        /// The repository path.
        repo: PathBuf,
        /// Free bytes.
        free: u64,
        /// Reserved bytes.
        reserved: u64,
    },
    /// The OS name is not known and cannot be found (nothing booted, none configured).
    #[error("no OS name configured and none can be derived from {0}")]
    NoOsName(PathBuf),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn ostree_err(what: impl Into<String>) -> impl FnOnce(glib::Error) -> Error {
    let what = what.into();
    move |source| Error::Ostree { what, source }
}

/// An OSTree commit checksum: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Commit(String);

impl FromStr for Commit {
    type Err = String;
    fn from_str(s: &str) -> Result<Commit, String> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Commit(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not an OSTree commit checksum (64 lowercase hex digits)"
            ))
        }
    }
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Commit {
    /// The checksum as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How to pull from a treehub.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The treehub URL (an OSTree archive repository over HTTP(S)).
    pub url: String,
    /// TLS client certificate, key and CA (aktualizr's `tls-client-cert-path`, ...).
    pub tls_client_cert: Option<PathBuf>,
    /// TLS client key.
    pub tls_client_key: Option<PathBuf>,
    /// CA to verify the treehub with.
    pub tls_ca: Option<PathBuf>,
    /// Extra HTTP headers.
    pub headers: Vec<(String, String)>,
    /// A transfer slower than this many bytes per second ...
    ///
    /// Applied by [`pull`]'s stall detector, which kills the worker process. Also passed to
    /// libostree as the `low-speed-limit-bytes` pull option, which libostree 2022.7 (Debian
    /// 12) ignores and later versions apply themselves.
    pub low_speed_limit_bytes: u32,
    /// ... for this many seconds fails (a stall), while a slow but moving one goes on
    /// (`low-speed-time-seconds`).
    pub low_speed_time_seconds: u32,
    /// Retries of a failed network request.
    pub network_retries: u32,
}

impl PullOptions {
    /// Options for `url` with the defaults: no TLS client identity, 1 byte/s over 60 s
    /// (curl's low-speed semantics, as libostree uses them), 3 retries (aktualizr's 3 tries).
    pub fn new(url: &str) -> PullOptions {
        PullOptions {
            url: url.to_owned(),
            tls_client_cert: None,
            tls_client_key: None,
            tls_ca: None,
            headers: Vec::new(),
            low_speed_limit_bytes: 1,
            low_speed_time_seconds: 60,
            network_retries: 3,
        }
    }
}

/// What one pull transferred.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Objects fetched.
    pub fetched: u32,
    /// Objects requested.
    pub requested: u32,
    /// Bytes transferred.
    pub bytes: u64,
}

/// One deployment, as `ostree admin status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The OS name (stateroot).
    pub os: String,
    /// The commit.
    pub commit: String,
    /// The deploy serial.
    pub serial: i32,
    /// The `version` metadata of the commit, if any.
    pub version: Option<String>,
    /// The origin refspec.
    pub refspec: Option<String>,
    /// The Uptane target name recorded in the origin when this crate deployed it.
    pub target: Option<String>,
    /// Roles: booted, pending, staged, rollback.
    pub roles: Vec<&'static str>,
}

/// The device's OSTree sysroot and repository.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    sysroot: ostree::Sysroot,
    os: String,
    stage: bool,
}

impl Store {
    /// Opens the sysroot at `path`. The OS name is `os`, or else the booted deployment's, or
    /// else (an unbooted sysroot) the first deployment's.
    pub fn open(path: &Path, os: Option<&str>) -> Result<Store> {
        let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
        sysroot
            .load(gio::Cancellable::NONE)
            .map_err(ostree_err(format!("loading sysroot {}", path.display())))?;
        let os = match os {
            Some(os) => os.to_owned(),
            None => sysroot
                .booted_deployment()
                .or_else(|| sysroot.deployments().into_iter().next())
                .map(|d| d.osname().to_string())
                .ok_or_else(|| Error::NoOsName(path.to_owned()))?,
        };
        Ok(Store {
            path: path.to_owned(),
            sysroot,
            os,
            stage: false,
        })
    }

    /// Stage deployments (`stage_tree`) on a booted system instead of writing them at once:
    /// libostree then finalizes the staged deployment at shutdown
    /// (`ostree-finalize-staged.service`), so /etc changes made until the reboot are kept.
    /// Ignored where nothing is booted (staging needs a booted system).
    pub fn with_staging(mut self, stage: bool) -> Store {
        self.stage = stage;
        self
    }

    /// Whether the sysroot is the booted system.
    pub fn is_booted(&self) -> bool {
        self.sysroot.booted_deployment().is_some()
    }

    /// The OS name deployments go to.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// Pulls `commit` from the treehub. A commit already complete in the repository is not
    /// fetched again. Fails unless the repository then holds exactly that commit, complete.
    /// `on_progress` is called (on this thread, about once a second) with the counts so far.
    pub fn pull(
        &self,
        commit: &Commit,
        opts: &PullOptions,
        on_progress: impl FnMut(&PullStats) + 'static,
    ) -> Result<PullStats> {
        self.pull_cancellable(commit, opts, on_progress, &gio::Cancellable::new())
    }

    /// [`Self::pull`], stopped (with an error) when `cancel` is cancelled.
    pub fn pull_cancellable(
        &self,
        commit: &Commit,
        opts: &PullOptions,
        on_progress: impl FnMut(&PullStats) + 'static,
        cancel: &gio::Cancellable,
    ) -> Result<PullStats> {
        let repo = self.sysroot.repo();
        if is_complete(&repo, commit) {
            return Ok(PullStats::default());
        }
        check_free_space(&repo)?;
        let remote_opts = glib::VariantDict::new(None);
        remote_opts.insert("gpg-verify", false);
        remote_opts.insert("gpg-verify-summary", false);
        let path_opt = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        if let Some(p) = path_opt(&opts.tls_client_cert) {
            remote_opts.insert("tls-client-cert-path", p);
        }
        if let Some(p) = path_opt(&opts.tls_client_key) {
            remote_opts.insert("tls-client-key-path", p);
        }
        if let Some(p) = path_opt(&opts.tls_ca) {
            remote_opts.insert("tls-ca-path", p);
        }
        repo.remote_change(
            None::<&gio::File>,
            ostree::RepoRemoteChange::DeleteIfExists,
            REMOTE,
            None,
            None,
            gio::Cancellable::NONE,
        )
        .map_err(ostree_err("removing the old treehub remote"))?;
        repo.remote_change(
            None::<&gio::File>,
            ostree::RepoRemoteChange::Add,
            REMOTE,
            Some(&opts.url),
            Some(&remote_opts.end()),
            gio::Cancellable::NONE,
        )
        .map_err(ostree_err(format!(
            "configuring the treehub remote {}",
            opts.url
        )))?;

        let pull_opts = glib::VariantDict::new(None);
        pull_opts.insert("refs", vec![commit.as_str().to_owned()]);
        pull_opts.insert("flags", ostree::RepoPullFlags::NONE.bits() as i32);
        pull_opts.insert("n-network-retries", opts.network_retries);
        pull_opts.insert("low-speed-limit-bytes", opts.low_speed_limit_bytes);
        pull_opts.insert("low-speed-time-seconds", opts.low_speed_time_seconds);
        if !opts.headers.is_empty() {
            pull_opts.insert("http-headers", opts.headers.clone());
        }
        let stats = std::rc::Rc::new(std::cell::RefCell::new(PullStats::default()));
        // A main context of this thread's own: the pull iterates the thread-default context,
        // and two pulls on two threads must not share the global one. The AsyncProgress must
        // be made inside it: it signals on the context that was the default when it was made.
        let context = glib::MainContext::new();
        let result = context
            .with_thread_default(|| {
                let progress = ostree::AsyncProgress::new();
                let stats = stats.clone();
                // connect_changed wants a Fn; the callback is FnMut.
                let on_progress = std::cell::RefCell::new(on_progress);
                progress.connect_changed(move |p| {
                    let mut s = stats.borrow_mut();
                    s.fetched = p.uint("fetched");
                    s.requested = p.uint("requested");
                    s.bytes = p.uint64("bytes-transferred");
                    (on_progress.borrow_mut())(&s);
                });
                let result =
                    repo.pull_with_options(REMOTE, &pull_opts.end(), Some(&progress), Some(cancel));
                progress.finish();
                result
            })
            .map_err(Error::MainContext)?;
        result.map_err(ostree_err(format!(
            "pulling commit {commit} from {}",
            opts.url
        )))?;
        let final_stats = stats.borrow().clone();
        if !is_complete(&repo, commit) {
            return Err(Error::BadCommit {
                commit: commit.clone(),
                reason: "not complete in the repository after the pull".into(),
            });
        }
        Ok(final_stats)
    }

    /// Deploys `commit` (already pulled) as the pending deployment, with the merge
    /// deployment's kernel arguments, recording `target` in the origin so `status` can show
    /// it; then keeps booted, pending and one rollback deployment and prunes the repository.
    /// With [`Self::with_staging`] on a booted system the deployment is staged instead.
    pub fn deploy(&self, commit: &Commit, target: Option<&str>) -> Result<()> {
        let sysroot = &self.sysroot;
        sysroot.lock().map_err(ostree_err("locking the sysroot"))?;
        let result = (|| {
            let origin = sysroot.origin_new_from_refspec(&format!("{REMOTE}:{commit}"));
            if let Some(t) = target {
                origin.set_string("aktualizr-rs", "target", t);
            }
            let merge = sysroot.merge_deployment(Some(&self.os));
            if self.stage && sysroot.booted_deployment().is_some() {
                sysroot
                    .stage_tree(
                        Some(&self.os),
                        commit.as_str(),
                        Some(&origin),
                        merge.as_ref(),
                        &[],
                        gio::Cancellable::NONE,
                    )
                    .map_err(ostree_err(format!("staging commit {commit}")))?;
                return Ok(());
            }
            let deployment = sysroot
                .deploy_tree(
                    Some(&self.os),
                    commit.as_str(),
                    Some(&origin),
                    merge.as_ref(),
                    &[],
                    gio::Cancellable::NONE,
                )
                .map_err(ostree_err(format!("deploying commit {commit}")))?;
            sysroot
                .simple_write_deployment(
                    Some(&self.os),
                    &deployment,
                    merge.as_ref(),
                    ostree::SysrootSimpleWriteDeploymentFlags::NONE,
                    gio::Cancellable::NONE,
                )
                .map_err(ostree_err(format!("writing deployment of {commit}")))
        })();
        sysroot.unlock();
        result?;
        sysroot
            .load(gio::Cancellable::NONE)
            .map_err(ostree_err("reloading the sysroot"))
    }

    /// The deployment running now: the booted one, or where nothing is booted (tests, image
    /// builders; aktualizr's non-booted mode) the first deployment. After a reboot, the
    /// update took effect when this is the commit that was pending.
    pub fn current(&self) -> Result<Option<Deployment>> {
        let all = self.deployments()?;
        let booted = all.iter().position(|d| d.roles.contains(&"booted"));
        Ok(all.into_iter().nth(booted.unwrap_or(0)))
    }

    /// The deployments, newest first, with their roles.
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        let sysroot = &self.sysroot;
        sysroot
            .load(gio::Cancellable::NONE)
            .map_err(ostree_err("reloading the sysroot"))?;
        let repo = sysroot.repo();
        let booted = sysroot.booted_deployment();
        let staged = sysroot.staged_deployment();
        // Always with the OS name: `None` aborts the process when nothing is booted.
        let (pending, rollback) = sysroot.query_deployments_for(Some(&self.os));
        let same = |a: &Option<ostree::Deployment>, b: &ostree::Deployment| {
            a.as_ref().is_some_and(|a| a.equal(b))
        };
        let mut out = Vec::new();
        for d in sysroot.deployments() {
            let mut roles = Vec::new();
            if same(&booted, &d) {
                roles.push("booted");
            }
            if same(&staged, &d) {
                roles.push("staged");
            }
            if same(&pending, &d) {
                roles.push("pending");
            }
            if same(&rollback, &d) {
                roles.push("rollback");
            }
            let origin = d.origin();
            let refspec = origin
                .as_ref()
                .and_then(|o| o.string("origin", "refspec").ok())
                .map(|s| s.to_string());
            let target = origin
                .as_ref()
                .and_then(|o| o.string("aktualizr-rs", "target").ok())
                .map(|s| s.to_string());
            let commit = d.csum().to_string();
            out.push(Deployment {
                os: d.osname().to_string(),
                version: commit_version(&repo, &commit),
                commit,
                serial: d.deployserial(),
                refspec,
                target,
                roles,
            });
        }
        Ok(out)
    }

    /// The sysroot path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Refuses when the repository's filesystem is already at or below the space the repository
/// reserves: libostree would fail part-way through the pull.
fn check_free_space(repo: &ostree::Repo) -> Result<()> {
    let repo_dir = repo.path();
    let path = repo_dir.path().unwrap_or_default();
    let reserved = repo
        .min_free_space_bytes()
        .map_err(ostree_err("reading the repository's min-free-space"))?;
    let info = repo_dir
        .query_filesystem_info("filesystem::free", gio::Cancellable::NONE)
        .map_err(ostree_err(format!(
            "reading the free space of {}",
            path.display()
        )))?;
    let free = info.attribute_uint64("filesystem::free");
    if free <= reserved {
        return Err(Error::NoSpace {
            repo: path,
            free,
            reserved,
        });
    }
    Ok(())
}

fn is_complete(repo: &ostree::Repo, commit: &Commit) -> bool {
    matches!(repo.load_commit(commit.as_str()), Ok((_, state)) if !state.contains(ostree::RepoCommitState::PARTIAL))
}

fn commit_version(repo: &ostree::Repo, commit: &str) -> Option<String> {
    let (v, _) = repo.load_commit(commit).ok()?;
    let meta = v.child_value(0);
    glib::VariantDict::new(Some(&meta))
        .lookup::<String>("version")
        .ok()
        .flatten()
}

/// Writes the reboot sentinel `dir/name` (the directory is created with mode 0700), after
/// the deployment has been written and synced.
pub fn write_reboot_sentinel(dir: &Path, name: &str) -> Result<PathBuf> {
    let io = |what: String| move |source| Error::Io { what, source };
    aktualizr_rs_fsutil::create_private_dir(dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?;
    f.sync_all()
        .map_err(io(format!("syncing {}", path.display())))?;
    Ok(path)
}
