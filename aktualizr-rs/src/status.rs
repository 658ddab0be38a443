//! `aktualizr-rs status`: the deployments as `ostree admin status` shows them, with the Uptane
//! target of each and whether a reboot is pending; or the same as versioned JSON.

use aktualizr_rs_store::Deployment;
use serde_json::json;

/// The version of the `--json` schema. Bump it on any incompatible change.
pub const JSON_SCHEMA: u32 = 1;

/// What `status` reports.
#[derive(Debug, Clone)]
pub struct Status {
    /// The OS name (stateroot).
    pub os: String,
    /// Deployments, newest first.
    pub deployments: Vec<Deployment>,
    /// Whether the reboot sentinel exists.
    pub reboot_pending: bool,
    /// What the client waits for before its next step (an approval, a window), if anything.
    pub waiting: Option<String>,
    /// The running daemon's state (over D-Bus), or None when no daemon answers.
    pub daemon: Option<String>,
}

impl Status {
    /// Human-readable text, in the layout of `ostree admin status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.deployments.is_empty() {
            out.push_str(&format!("No deployments of {}.\n", self.os));
        }
        for d in &self.deployments {
            let mark = if d.roles.contains(&"booted") {
                '*'
            } else {
                ' '
            };
            let roles = if d.roles.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.roles.join(", "))
            };
            out.push_str(&format!(
                "{mark} {} {}.{}{roles}\n",
                d.os, d.commit, d.serial
            ));
            if let Some(v) = &d.version {
                out.push_str(&format!("    Version: {v}\n"));
            }
            match &d.target {
                Some(t) => out.push_str(&format!("    Uptane target: {t}\n")),
                None => out.push_str(
                    "    Uptane target: none recorded (not installed by aktualizr-rs; shown by commit)\n",
                ),
            }
            if let Some(r) = &d.refspec {
                out.push_str(&format!("    origin refspec: {r}\n"));
            }
        }
        out.push_str(if self.reboot_pending {
            "Reboot pending: yes (the new deployment boots at the next reboot)\n"
        } else {
            "Reboot pending: no\n"
        });
        if let Some(w) = &self.waiting {
            out.push_str(&format!("Waiting for: {w}\n"));
        }
        match &self.daemon {
            Some(d) => out.push_str(&format!("Daemon: {d}\n")),
            None => out.push_str("Daemon: not running (state read from disk)\n"),
        }
        out
    }

    /// The `--json` document (schema [`JSON_SCHEMA`]).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "schema": JSON_SCHEMA,
            "os": self.os,
            "reboot_pending": self.reboot_pending,
            "waiting": self.waiting,
            "daemon": self.daemon,
            "deployments": self.deployments.iter().map(|d| json!({
                "os": d.os,
                "commit": d.commit,
                "serial": d.serial,
                "version": d.version,
                "target": d.target,
                "refspec": d.refspec,
                "roles": d.roles,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            os: "lmp".into(),
            deployments: vec![
                Deployment {
                    os: "lmp".into(),
                    commit: "a".repeat(64),
                    serial: 0,
                    version: Some("2".into()),
                    refspec: Some("aktualizr-remote:aaaa".into()),
                    target: Some("raspberrypi4-64-lmp-2".into()),
                    roles: vec!["pending"],
                },
                Deployment {
                    os: "lmp".into(),
                    commit: "b".repeat(64),
                    serial: 0,
                    version: None,
                    refspec: None,
                    target: None,
                    roles: vec!["booted"],
                },
            ],
            reboot_pending: true,
            waiting: None,
            daemon: None,
        }
    }

    #[test]
    fn text_marks_booted_and_never_says_unknown() {
        let text = sample().render();
        assert!(
            text.contains(&format!("* lmp {}.0 (booted)", "b".repeat(64))),
            "{text}"
        );
        assert!(
            text.contains(&format!("  lmp {}.0 (pending)", "a".repeat(64))),
            "{text}"
        );
        assert!(text.contains("Uptane target: raspberrypi4-64-lmp-2"));
        assert!(text.contains("none recorded"));
        assert!(!text.to_lowercase().contains("unknown"));
        assert!(text.contains("Reboot pending: yes"));
    }

    #[test]
    fn json_is_versioned_and_complete() {
        let v = sample().to_json();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["reboot_pending"], true);
        assert_eq!(v["deployments"][0]["target"], "raspberrypi4-64-lmp-2");
        assert_eq!(v["deployments"][0]["roles"][0], "pending");
        assert_eq!(v["deployments"][1]["target"], serde_json::Value::Null);
        assert_eq!(v["deployments"][1]["commit"], "b".repeat(64));
    }
}
