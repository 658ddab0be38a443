//! Living under systemd: `sd_notify` messages (READY, STATUS, WATCHDOG, STOPPING) and the
//! decision of `ostree-pending-reboot.service` (`aktualizr-rs reboot-if-pending`).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Sends `message` to systemd's notification socket (`$NOTIFY_SOCKET`, a path or an abstract
/// name starting with `@`); does nothing when not started by systemd with `Type=notify`.
pub fn notify(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let bytes = socket.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(message.as_bytes(), &addr)
        } else {
            s.send_to(message.as_bytes(), Path::new(&socket))
        }
    });
    if let Err(e) = sent {
        tracing::debug!("sd_notify {message:?}: {e}");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC` when it is meant for this
/// process (`$WATCHDOG_PID` unset or ours), else None.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Why `reboot-if-pending` did or did not reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootDecision {
    /// Reboot now.
    Reboot,
    /// Do not reboot, for this reason.
    Skip(String),
}

/// Lists systemd inhibitor locks that block shutdown (`systemd-inhibit --list`); an
/// unavailable logind counts as no locks (logged).
pub fn blocking_inhibitors() -> Vec<String> {
    let out = std::process::Command::new("systemd-inhibit")
        .args(["--list", "--no-pager", "--no-legend"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.iter().any(|w| w.split(':').any(|x| x == "shutdown"))
                    && words.contains(&"block")
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect(),
        Ok(o) => {
            tracing::info!(
                "systemd-inhibit --list: {}; assuming no inhibitor locks",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            Vec::new()
        }
        Err(e) => {
            tracing::info!("systemd-inhibit: {e}; assuming no inhibitor locks");
            Vec::new()
        }
    }
}

/// Decides whether to reboot into the pending update: the sentinel exists, the update the
/// client recorded as pending is a pending (or staged) deployment, the lock file
/// `<sentinel dir>/reboot.lock` does not exist, and no inhibitor lock blocks shutdown.
pub fn reboot_decision(
    sentinel: &Path,
    pending_sha: Option<&str>,
    deployments: &[aktualizr_rs_store::Deployment],
    inhibitors: &[String],
) -> RebootDecision {
    if !sentinel.exists() {
        return RebootDecision::Skip(format!(
            "no reboot pending ({} does not exist)",
            sentinel.display()
        ));
    }
    let Some(sha) = pending_sha else {
        return RebootDecision::Skip("no update is recorded as pending".into());
    };
    let pending = deployments
        .iter()
        .any(|d| d.commit == sha && (d.roles.contains(&"pending") || d.roles.contains(&"staged")));
    if !pending {
        return RebootDecision::Skip(format!("commit {sha} is not a pending deployment"));
    }
    let lock = sentinel.with_file_name("reboot.lock");
    if lock.exists() {
        return RebootDecision::Skip(format!(
            "{} exists (an application holds off the reboot)",
            lock.display()
        ));
    }
    if let Some(i) = inhibitors.first() {
        return RebootDecision::Skip(format!("a systemd inhibitor lock blocks shutdown: {i}"));
    }
    RebootDecision::Reboot
}

/// Runs `[bootloader] reboot_command` with `sh -c`.
pub fn run_reboot_command(command: &str) -> Result<()> {
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .with_context(|| format!("running the reboot command {command:?}"))?;
    anyhow::ensure!(
        status.success(),
        "the reboot command {command:?} failed: {status}"
    );
    Ok(())
}
