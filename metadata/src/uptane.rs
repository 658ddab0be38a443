//! Uptane's checks on top of TUF (no I/O): what the verified Director targets assign to this
//! device's ECUs, and whether each assignment matches the Image repository
//! (Uptane Standard 2.1 §5.4.4.2 step 10, §5.2.3.1; ../shared/reference/uptane-primary.md A.4,
//! A.7).
//!
//! [`director_assignments`] checks the Director's targets: every target names the ECUs that
//! should install it (`custom.ecuIdentifiers`), each ECU at most once, only ECUs of this
//! device, with this ECU's hardware ID; the device binding (`custom.deviceId` at the top of
//! the signed targets, when present) names this device. [`match_image`] then checks one
//! assignment against the Image repository's entry for exactly the same target name: same
//! length, every hash equal, the ECU's hardware ID among `custom.hardwareIds`, and a release
//! counter (`custom.releaseCounter`, when present) not lower than the one installed.

use crate::error::{Attack, Error, Result};
use crate::schema::{TargetFile, TargetsMeta};

/// One ECU of this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ecu {
    /// The ECU serial.
    pub serial: String,
    /// The ECU's hardware ID.
    pub hardware_id: String,
}

/// A target the Director assigns to one ECU.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The ECU serial.
    pub ecu_serial: String,
    /// The ECU's hardware ID.
    pub hardware_id: String,
    /// The target name.
    pub target: String,
    /// The Director's entry for it.
    pub file: TargetFile,
}

fn broken(target: &str, reason: String, attack: Attack) -> Error {
    Error::Uptane {
        target: target.to_owned(),
        reason,
        attack,
    }
}

/// The assignments of the verified Director targets for this device's `ecus`. `device_id`
/// is checked against the top-level `custom.deviceId` when the Director binds its targets to
/// a device. Targets for no ECU of this device are refused (they are not ours to install).
pub fn director_assignments(
    targets: &TargetsMeta,
    ecus: &[Ecu],
    device_id: Option<&str>,
) -> Result<Vec<Assignment>> {
    let custom = targets.common.extra.get("custom");
    if let (Some(bound), Some(ours)) = (
        custom
            .and_then(|c| c.get("deviceId"))
            .and_then(|v| v.as_str()),
        device_id,
    ) {
        if bound != ours {
            return Err(broken(
                "targets",
                format!("the Director's targets are for device {bound:?}, this is {ours:?}"),
                Attack::MixAndMatch,
            ));
        }
    }
    let mut names: Vec<&String> = targets.targets.keys().collect();
    names.sort();
    let mut out: Vec<Assignment> = Vec::new();
    for name in names {
        let file = &targets.targets[name];
        let ids = file
            .custom()
            .and_then(|c| c.get("ecuIdentifiers"))
            .and_then(|v| v.as_object())
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                broken(
                    name,
                    "the Director's entry names no ECU (custom.ecuIdentifiers)".into(),
                    Attack::ArbitrarySoftware,
                )
            })?;
        for (serial, id) in ids {
            let ecu = ecus.iter().find(|e| &e.serial == serial).ok_or_else(|| {
                broken(
                    name,
                    format!("assigned to ECU {serial:?}, which is not an ECU of this device"),
                    Attack::ArbitrarySoftware,
                )
            })?;
            let hw = id.get("hardwareId").and_then(|v| v.as_str()).unwrap_or("");
            if hw != ecu.hardware_id {
                return Err(broken(
                    name,
                    format!(
                        "assigned to ECU {serial:?} with hardware ID {hw:?}, the ECU's is {:?}",
                        ecu.hardware_id
                    ),
                    Attack::ArbitrarySoftware,
                ));
            }
            if let Some(other) = out.iter().find(|a| &a.ecu_serial == serial) {
                return Err(broken(
                    name,
                    format!(
                        "ECU {serial:?} is assigned two targets ({:?} and {name:?})",
                        other.target
                    ),
                    Attack::MixAndMatch,
                ));
            }
            out.push(Assignment {
                ecu_serial: serial.clone(),
                hardware_id: ecu.hardware_id.clone(),
                target: name.clone(),
                file: file.clone(),
            });
        }
    }
    Ok(out)
}

fn release_counter(file: &TargetFile) -> Option<u64> {
    file.custom()?.get("releaseCounter")?.as_u64()
}

/// Checks an assignment against the Image repository's entry for the same target name
/// (`None`: the Image repository does not have it). `installed_counter` is the release
/// counter of what the ECU runs now, if known.
pub fn match_image(
    a: &Assignment,
    image: Option<&TargetFile>,
    installed_counter: Option<u64>,
) -> Result<()> {
    let name = &a.target;
    let image = image.ok_or_else(|| {
        broken(
            name,
            "the Director assigns a target the Image repository does not sign".into(),
            Attack::ArbitrarySoftware,
        )
    })?;
    if image.length != a.file.length {
        return Err(broken(
            name,
            format!(
                "length {} in the Director, {} in the Image repository",
                a.file.length, image.length
            ),
            Attack::ArbitrarySoftware,
        ));
    }
    if a.file.hashes.is_empty() {
        return Err(broken(
            name,
            "the Director lists no hash".into(),
            Attack::ArbitrarySoftware,
        ));
    }
    for (alg, hash) in &a.file.hashes {
        match image.hashes.iter().find(|(ia, _)| ia == alg) {
            Some((_, ih)) if ih.eq_ignore_ascii_case(hash) => {}
            Some((_, ih)) => {
                return Err(broken(
                    name,
                    format!("{alg} {hash} in the Director, {ih} in the Image repository"),
                    Attack::ArbitrarySoftware,
                ))
            }
            None => {
                return Err(broken(
                    name,
                    format!("the Image repository lists no {alg} hash"),
                    Attack::ArbitrarySoftware,
                ))
            }
        }
    }
    let hwids = image
        .custom()
        .and_then(|c| c.get("hardwareIds"))
        .and_then(|v| v.as_array());
    if !hwids.is_some_and(|ids| ids.iter().any(|h| h.as_str() == Some(&a.hardware_id))) {
        return Err(broken(
            name,
            format!(
                "hardware ID {:?} is not among the Image repository's hardwareIds",
                a.hardware_id
            ),
            Attack::ArbitrarySoftware,
        ));
    }
    if let (Some(new), Some(old)) = (release_counter(image), installed_counter) {
        if new < old {
            return Err(broken(
                name,
                format!("release counter {new} is lower than the installed {old}"),
                Attack::Rollback,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SHA: &str = "aaaa000000000000000000000000000000000000000000000000000000000000";

    fn director(custom: Value, targets: Value) -> TargetsMeta {
        let signed = json!({
            "_type": "targets", "spec_version": "1.0.0", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "targets": targets, "custom": custom,
        });
        TargetsMeta::parse("targets", signed).unwrap()
    }

    fn entry(ecus: Value) -> Value {
        json!({"length": 0, "hashes": {"sha256": SHA}, "custom": {"ecuIdentifiers": ecus}})
    }

    fn ecus() -> Vec<Ecu> {
        vec![
            Ecu {
                serial: "primary".into(),
                hardware_id: "hw-a".into(),
            },
            Ecu {
                serial: "second".into(),
                hardware_id: "hw-b".into(),
            },
        ]
    }

    fn image(length: u64, sha: &str, hwids: Value, extra: Value) -> TargetFile {
        let signed = json!({
            "_type": "targets", "spec_version": "1.0.0", "version": 1,
            "expires": "2030-01-01T00:00:00Z",
            "targets": {"t": {"length": length, "hashes": {"sha256": sha},
                              "custom": {"hardwareIds": hwids, "releaseCounter": extra}}},
        });
        TargetsMeta::parse("targets", signed).unwrap().targets["t"].clone()
    }

    fn attack(r: Result<impl std::fmt::Debug>) -> Attack {
        r.unwrap_err().attack().unwrap()
    }

    #[test]
    fn assignments_for_known_ecus_with_their_hardware() {
        let d = director(
            json!({"deviceId": "dev1", "correlationId": "c"}),
            json!({"os-2": entry(json!({"primary": {"hardwareId": "hw-a"}})),
                   "fw-9": entry(json!({"second": {"hardwareId": "hw-b"}}))}),
        );
        let a = director_assignments(&d, &ecus(), Some("dev1")).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].target.as_str(), a[0].ecu_serial.as_str()),
            ("fw-9", "second")
        );
        assert_eq!(
            (a[1].target.as_str(), a[1].ecu_serial.as_str()),
            ("os-2", "primary")
        );
        // Empty targets: nothing to do.
        let empty = director(json!({"deviceId": "dev1"}), json!({}));
        assert!(director_assignments(&empty, &ecus(), Some("dev1"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn director_rule_breaks_are_attacks() {
        let one = |ecus_json: Value| director(json!({}), json!({"t": entry(ecus_json)}));
        // Unknown ECU serial.
        let d = one(json!({"stranger": {"hardwareId": "hw-a"}}));
        assert_eq!(
            attack(director_assignments(&d, &ecus(), None)),
            Attack::ArbitrarySoftware
        );
        // Wrong hardware ID.
        let d = one(json!({"primary": {"hardwareId": "hw-b"}}));
        let e = director_assignments(&d, &ecus(), None).unwrap_err();
        assert!(e.to_string().contains("the ECU's is \"hw-a\""), "{e}");
        // No ECU named.
        let d = one(json!({}));
        assert!(director_assignments(&d, &ecus(), None).is_err());
        // One ECU, two targets.
        let d = director(
            json!({}),
            json!({"t1": entry(json!({"primary": {"hardwareId": "hw-a"}})),
                   "t2": entry(json!({"primary": {"hardwareId": "hw-a"}}))}),
        );
        assert_eq!(
            attack(director_assignments(&d, &ecus(), None)),
            Attack::MixAndMatch
        );
        // Targets bound to another device (a replay of someone else's).
        let d = director(json!({"deviceId": "dev2"}), json!({}));
        assert_eq!(
            attack(director_assignments(&d, &ecus(), Some("dev1"))),
            Attack::MixAndMatch
        );
    }

    #[test]
    fn image_match_checks_length_hashes_hardware_and_release_counter() {
        let d = director(
            json!({}),
            json!({"t": entry(json!({"primary": {"hardwareId": "hw-a"}}))}),
        );
        let a = &director_assignments(&d, &ecus(), None).unwrap()[0];
        let good = image(0, SHA, json!(["hw-a", "hw-z"]), json!(5));
        match_image(a, Some(&good), Some(5)).unwrap();
        match_image(a, Some(&good), None).unwrap();
        assert_eq!(
            attack(match_image(a, None, None)),
            Attack::ArbitrarySoftware
        );
        let other_sha = SHA.replace("aaaa", "bbbb");
        assert_eq!(
            attack(match_image(
                a,
                Some(&image(0, &other_sha, json!(["hw-a"]), json!(1))),
                None
            )),
            Attack::ArbitrarySoftware
        );
        assert_eq!(
            attack(match_image(
                a,
                Some(&image(7, SHA, json!(["hw-a"]), json!(1))),
                None
            )),
            Attack::ArbitrarySoftware
        );
        let e = match_image(a, Some(&image(0, SHA, json!(["hw-b"]), json!(1))), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("not among the Image repository's hardwareIds"),
            "{e}"
        );
        assert_eq!(
            attack(match_image(
                a,
                Some(&image(0, SHA, json!(["hw-a"]), json!(4))),
                Some(5)
            )),
            Attack::Rollback
        );
    }
}
