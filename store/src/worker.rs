//! Pulls in a child process, watched by a stall detector that can kill it.
//!
//! libostree 2022.7 ignores the `low-speed-*` pull options, and cancelling its pull takes
//! effect only when the outstanding HTTP requests return, so a treehub that stops answering
//! would hold an in-process pull for as long as it stalls. [`pull`] therefore runs the pull in
//! a child process (the *worker*: any executable that calls [`worker_main`] with its
//! arguments) and ends it with SIGKILL when it stalls or when the future is dropped. A killed
//! pull leaves the repository consistent (libostree stages objects in `tmp/` and commits them
//! by rename); the next pull fetches only what is still missing.
//!
//! The worker speaks a line protocol on stdout: `progress F R B` while it runs (objects
//! fetched, requested, bytes), then `done F R B`, or `error MESSAGE` and exit status 1.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt as _;

use crate::{Commit, Error, PullOptions, PullStats, Result, Store};

/// How to start the pull worker: a program and the arguments that put it in worker mode
/// (the request's arguments are appended).
#[derive(Debug, Clone)]
pub struct Worker {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the request's (a hidden subcommand, say).
    pub args: Vec<OsString>,
}

impl Worker {
    /// `program args... REQUEST...`.
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Worker {
        Worker {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
        }
    }
}

/// The worker's arguments for one pull.
fn request_args(
    sysroot: &Path,
    os: Option<&str>,
    commit: &Commit,
    opts: &PullOptions,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--sysroot".into(),
        sysroot.into(),
        "--commit".into(),
        commit.as_str().into(),
        "--url".into(),
        opts.url.clone().into(),
        "--retries".into(),
        opts.network_retries.to_string().into(),
    ];
    if let Some(os) = os {
        a.extend(["--os".into(), os.into()]);
    }
    for (flag, path) in [
        ("--tls-client-cert", &opts.tls_client_cert),
        ("--tls-client-key", &opts.tls_client_key),
        ("--tls-ca", &opts.tls_ca),
    ] {
        if let Some(p) = path {
            a.extend([flag.into(), p.into()]);
        }
    }
    for (name, value) in &opts.headers {
        a.extend(["--header".into(), format!("{name}={value}").into()]);
    }
    a
}

struct Request {
    sysroot: PathBuf,
    os: Option<String>,
    commit: Commit,
    opts: PullOptions,
}

fn parse_request(args: Vec<OsString>) -> std::result::Result<Request, String> {
    let mut it = args.into_iter();
    let (mut sysroot, mut os, mut commit, mut url) = (None, None, None, None);
    let (mut cert, mut key, mut ca, mut headers, mut retries) = (None, None, None, Vec::new(), 3);
    while let Some(flag) = it.next() {
        let flag = flag.to_string_lossy().into_owned();
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let text = || {
            value
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{flag}: not UTF-8"))
        };
        match flag.as_str() {
            "--sysroot" => sysroot = Some(PathBuf::from(&value)),
            "--os" => os = Some(text()?),
            "--commit" => commit = Some(text()?.parse::<Commit>()?),
            "--url" => url = Some(text()?),
            "--tls-client-cert" => cert = Some(PathBuf::from(&value)),
            "--tls-client-key" => key = Some(PathBuf::from(&value)),
            "--tls-ca" => ca = Some(PathBuf::from(&value)),
            "--header" => {
                let t = text()?;
                let (n, v) = t
                    .split_once('=')
                    .ok_or_else(|| format!("--header {t:?}: expected NAME=VALUE"))?;
                headers.push((n.to_owned(), v.to_owned()));
            }
            "--retries" => {
                retries = text()?.parse().map_err(|e| format!("--retries: {e}"))?;
            }
            other => return Err(format!("unknown worker flag {other}")),
        }
    }
    let mut opts = PullOptions::new(&url.ok_or("--url is required")?);
    opts.tls_client_cert = cert;
    opts.tls_client_key = key;
    opts.tls_ca = ca;
    opts.headers = headers;
    opts.network_retries = retries;
    Ok(Request {
        sysroot: sysroot.ok_or("--sysroot is required")?,
        os,
        commit: commit.ok_or("--commit is required")?,
        opts,
    })
}

fn stats_line(kind: &str, s: &PullStats) -> String {
    format!("{kind} {} {} {}", s.fetched, s.requested, s.bytes)
}

/// The worker: pulls as the arguments say, reporting on stdout (see the module docs).
/// Call it from a program's `main` with the arguments after the worker-mode marker.
pub fn worker_main(args: Vec<OsString>) -> ExitCode {
    use std::io::Write as _;
    let result = parse_request(args).and_then(|req| {
        let store = Store::open(&req.sysroot, req.os.as_deref()).map_err(|e| e.to_string())?;
        store
            .pull(&req.commit, &req.opts, |s| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", stats_line("progress", s));
                let _ = out.flush();
            })
            .map_err(|e| e.to_string())
    });
    let mut out = std::io::stdout().lock();
    let (line, code) = match result {
        Ok(s) => (stats_line("done", &s), ExitCode::SUCCESS),
        Err(e) => (format!("error {}", e.replace('\n', " ")), ExitCode::FAILURE),
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    code
}

fn parse_stats(rest: &str) -> Option<PullStats> {
    let mut it = rest.split(' ').map(str::parse::<u64>);
    let (f, r, b) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    Some(PullStats {
        fetched: u32::try_from(f).ok()?,
        requested: u32::try_from(r).ok()?,
        bytes: b,
    })
}

/// Watches the transfer rate: a pull slower than `limit` bytes/s for `window` has stalled
/// (curl's low-speed rule, which libostree 2022.7 does not apply).
#[derive(Debug)]
struct StallDetector {
    limit: u64,
    window: Duration,
    last_check: (Instant, u64),
    last_fast: Instant,
}

impl StallDetector {
    fn new(opts: &PullOptions, now: Instant) -> StallDetector {
        StallDetector {
            limit: u64::from(opts.low_speed_limit_bytes),
            window: Duration::from_secs(u64::from(opts.low_speed_time_seconds.max(1))),
            last_check: (now, 0),
            last_fast: now,
        }
    }

    /// Records `bytes` so far at `now`; true when the pull has stalled.
    fn check(&mut self, now: Instant, bytes: u64) -> bool {
        let (then, before) = self.last_check;
        let secs = now.duration_since(then).as_secs_f64();
        if secs >= 1.0 || bytes > before {
            let rate = bytes.saturating_sub(before) as f64 / secs.max(1.0);
            if rate >= self.limit as f64 && bytes > before {
                self.last_fast = now;
            }
            self.last_check = (now, bytes);
        }
        now.duration_since(self.last_fast) >= self.window
    }
}

/// Pulls `commit` into the sysroot at `sysroot` in a worker process, sending progress to
/// `progress`. Fails with [`Error::Stalled`] when the transfer stays below
/// `opts.low_speed_limit_bytes` per second for `opts.low_speed_time_seconds` (a slow but
/// moving pull goes on). Dropping the future kills the worker.
pub async fn pull(
    worker: &Worker,
    sysroot: &Path,
    os: Option<&str>,
    commit: &Commit,
    opts: &PullOptions,
    progress: Option<tokio::sync::mpsc::UnboundedSender<PullStats>>,
) -> Result<PullStats> {
    let io = |what: &str| {
        let what = format!("{what} ({})", worker.program.display());
        move |source| Error::Io { what, source }
    };
    let mut child = tokio::process::Command::new(&worker.program)
        .args(&worker.args)
        .args(request_args(sysroot, os, commit, opts))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("starting the pull worker"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Worker("no stdout".into()))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut detector = StallDetector::new(opts, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = PullStats::default();
    let mut outcome: Option<std::result::Result<PullStats, String>> = None;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line.map_err(io("reading the pull worker's output"))? else { break };
                let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match (kind, parse_stats(rest)) {
                    ("progress", Some(s)) => {
                        last = s.clone();
                        if let Some(tx) = &progress {
                            let _ = tx.send(s);
                        }
                    }
                    ("done", Some(s)) => outcome = Some(Ok(s)),
                    ("error", _) => outcome = Some(Err(rest.to_owned())),
                    _ => return Err(Error::Worker(format!("unexpected output {line:?}"))),
                }
            }
            _ = tick.tick() => {
                if detector.check(Instant::now(), last.bytes) {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(Error::Stalled {
                        commit: commit.clone(),
                        limit: opts.low_speed_limit_bytes,
                        seconds: opts.low_speed_time_seconds,
                        stats: last,
                    });
                }
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(io("waiting for the pull worker"))?;
    match outcome {
        Some(Ok(s)) if status.success() => {
            if let Some(tx) = &progress {
                let _ = tx.send(s.clone());
            }
            Ok(s)
        }
        Some(Err(message)) => Err(Error::Pull(message)),
        _ => Err(Error::Worker(format!(
            "ended with {status} without a result"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let mut opts = PullOptions::new("https://treehub.example/api");
        opts.tls_client_cert = Some("/c.pem".into());
        opts.tls_ca = Some("/ca.pem".into());
        opts.headers = vec![("X-Tok".into(), "a=b c".into())];
        opts.network_retries = 7;
        let commit: Commit = "ab".repeat(32).parse().unwrap_or_else(|e| panic!("{e}"));
        let args = request_args(Path::new("/sysroot"), Some("lmp"), &commit, &opts);
        let req = parse_request(args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.sysroot, Path::new("/sysroot"));
        assert_eq!(req.os.as_deref(), Some("lmp"));
        assert_eq!(req.commit, commit);
        assert_eq!(req.opts.url, opts.url);
        assert_eq!(req.opts.tls_client_cert, opts.tls_client_cert);
        assert_eq!(req.opts.tls_client_key, None);
        assert_eq!(req.opts.tls_ca, opts.tls_ca);
        assert_eq!(req.opts.headers, opts.headers);
        assert_eq!(req.opts.network_retries, 7);
        assert!(parse_request(vec!["--bogus".into(), "x".into()]).is_err());
        assert!(parse_request(vec!["--url".into()]).is_err());
    }

    #[test]
    fn stall_detector_follows_curls_low_speed_rule() {
        let mut opts = PullOptions::new("http://x");
        opts.low_speed_limit_bytes = 100;
        opts.low_speed_time_seconds = 3;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = StallDetector::new(&opts, t0);
        // Moving at 200 B/s: never stalled.
        for s in 1..=10 {
            assert!(!d.check(at(s), s * 200), "second {s}");
        }
        // Then 50 B/s, below the limit: stalled once the window has passed.
        assert!(!d.check(at(11), 2050));
        assert!(!d.check(at(12), 2100));
        assert!(d.check(at(13), 2150));
        // Nothing at all from the start: stalled after the window.
        let mut d = StallDetector::new(&opts, t0);
        assert!(!d.check(at(2), 0));
        assert!(d.check(at(3), 0));
    }
}
