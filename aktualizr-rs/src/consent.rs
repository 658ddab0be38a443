//! Consent gates and maintenance windows for download, install and reboot.
//!
//! Configuration (`[consent]`, an aktualizr-rs extension):
//! - `download_approval`, `install_approval`, `reboot_approval` (true/false, default false):
//!   the step waits until approved (`aktualizr-rs approve <operation>`);
//! - `download_window`, `install_window`, `reboot_window` (default empty: any time): the
//!   step runs only inside the window, `[DAYS] HH:MM-HH:MM` in the device's local time zone,
//!   DAYS as `Mon-Fri`, `Sat,Sun`, `*` or left out for every day; a window whose end is
//!   before its start runs past midnight (`Sat 23:00-02:00`).
//!
//! Approvals live in the persisted state (they survive a restart) and are used up by the
//! step they approve. The clock is the system's local time, or `$AKTUALIZR_RS_FAKE_NOW`
//! (`YYYY-MM-DDTHH:MM`, local), a test hook.

use chrono::{Datelike as _, Duration, NaiveDate, NaiveDateTime, NaiveTime};

/// A gated step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Downloading an update.
    Download,
    /// Installing it (deploying as pending).
    Install,
    /// Rebooting into it.
    Reboot,
}

impl Operation {
    /// The name used in configuration keys, state and `approve`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Download => "download",
            Operation::Install => "install",
            Operation::Reboot => "reboot",
        }
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Operation, String> {
        match s {
            "download" => Ok(Operation::Download),
            "install" => Ok(Operation::Install),
            "reboot" => Ok(Operation::Reboot),
            _ => Err(format!("{s:?}: expected download, install or reboot")),
        }
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A weekly time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
}

fn day_index(s: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("{s:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

impl Window {
    /// Parses `[DAYS] HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let text = text.trim();
        let (days_part, times) = match text.rsplit_once(' ') {
            Some((d, t)) => (d.trim(), t),
            None => ("*", text),
        };
        let mut days = [false; 7];
        if days_part == "*" {
            days = [true; 7];
        } else {
            for part in days_part.split(',') {
                match part.trim().split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day_index(a.trim())?, day_index(b.trim())?);
                        let mut i = a;
                        loop {
                            days[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => days[day_index(part.trim())?] = true,
                }
            }
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("{text:?}: expected [DAYS] HH:MM-HH:MM"))?;
        let time = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .map_err(|_| format!("{text:?}: {t:?} is not HH:MM"))
        };
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err(format!("{text:?}: the window is empty"));
        }
        Ok(Window {
            text: text.to_owned(),
            days,
            start,
            end,
        })
    }

    fn span(&self, day: NaiveDate) -> Option<(NaiveDateTime, NaiveDateTime)> {
        if !self.days[day.weekday().num_days_from_monday() as usize] {
            return None;
        }
        let start = day.and_time(self.start);
        let end_day = if self.end > self.start {
            day
        } else {
            day + Duration::days(1)
        };
        Some((start, end_day.and_time(self.end)))
    }

    /// Whether `t` is inside the window.
    pub fn contains(&self, t: NaiveDateTime) -> bool {
        [t.date() - Duration::days(1), t.date()]
            .into_iter()
            .filter_map(|d| self.span(d))
            .any(|(s, e)| s <= t && t < e)
    }

    /// When the window next opens after `t`.
    pub fn next_open(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        (0..8)
            .filter_map(|i| self.span(t.date() + Duration::days(i)))
            .map(|(s, _)| s)
            .find(|s| *s > t)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The local time now (or `$AKTUALIZR_RS_FAKE_NOW`).
pub fn now_local() -> NaiveDateTime {
    if let Ok(fake) = std::env::var("AKTUALIZR_RS_FAKE_NOW") {
        if let Ok(t) = NaiveDateTime::parse_from_str(&fake, "%Y-%m-%dT%H:%M") {
            return t;
        }
    }
    chrono::Local::now().naive_local()
}

/// What a step waits for, if anything: approval (unless `approved`), or the window.
pub fn blocked(
    op: Operation,
    needs_approval: bool,
    approved: bool,
    window: Option<&Window>,
    now: NaiveDateTime,
) -> Option<String> {
    if needs_approval && !approved {
        return Some(format!(
            "approval to {} (aktualizr-rs approve {})",
            op.name(),
            op.name()
        ));
    }
    let w = window?;
    if w.contains(now) {
        return None;
    }
    Some(match w.next_open(now) {
        Some(t) => format!(
            "the {} window {w}, which opens {}",
            op.name(),
            t.format("%a %Y-%m-%d %H:%M")
        ),
        None => format!("the {} window {w}", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").unwrap()
    }

    #[test]
    fn windows_parse_and_contain() {
        // 2026-11-27 is a Friday.
        let w = Window::parse("Mon-Fri 01:00-05:00").unwrap();
        assert!(w.contains(at("2026-11-27T01:00")));
        assert!(w.contains(at("2026-11-27T04:59")));
        assert!(!w.contains(at("2026-11-27T05:00")));
        assert!(!w.contains(at("2026-11-28T02:00")), "Saturday");
        assert_eq!(
            w.next_open(at("2026-11-28T02:00")),
            Some(at("2026-11-30T01:00"))
        );
        // Across midnight, days naming the start day.
        let w = Window::parse("Sat 23:00-02:00").unwrap();
        assert!(w.contains(at("2026-11-28T23:30")));
        assert!(
            w.contains(at("2026-11-29T01:59")),
            "Sunday morning belongs to Saturday's window"
        );
        assert!(!w.contains(at("2026-11-29T23:30")));
        let w = Window::parse("03:00-04:00").unwrap();
        assert!(w.contains(at("2026-11-29T03:30")));
        let w = Window::parse("Sat,Sun 10:00-12:00").unwrap();
        assert!(w.contains(at("2026-11-29T11:00")));
        assert!(!w.contains(at("2026-11-27T11:00")));
        let w = Window::parse("Fri-Mon 10:00-12:00").unwrap();
        assert!(w.contains(at("2026-11-30T11:00")), "wraps past Sunday");
        for bad in [
            "Mon-Fri",
            "Xyz 01:00-02:00",
            "01:00-01:00",
            "1-2",
            "Mon 25:00-26:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocked_says_what_it_waits_for() {
        let w = Window::parse("Mon-Fri 01:00-05:00").unwrap();
        let sat = at("2026-11-28T12:00");
        let r = blocked(Operation::Install, true, false, Some(&w), sat).unwrap();
        assert!(
            r.contains("approval to install (aktualizr-rs approve install)"),
            "{r}"
        );
        let r = blocked(Operation::Install, true, true, Some(&w), sat).unwrap();
        assert!(r.contains("opens Mon 2026-11-30 01:00"), "{r}");
        assert_eq!(
            blocked(
                Operation::Install,
                false,
                false,
                Some(&w),
                at("2026-11-27T02:00")
            ),
            None
        );
        assert_eq!(blocked(Operation::Reboot, false, false, None, sat), None);
    }
}
