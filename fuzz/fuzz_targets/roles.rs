//! Any JSON as each role's `signed` part: parsing must never panic.
#![no_main]
use aktualizr_rs_metadata::{Root, SnapshotMeta, TargetsMeta, TimestampMeta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = Root::parse("root", v.clone());
        let _ = TimestampMeta::parse("timestamp", v.clone());
        let _ = SnapshotMeta::parse("snapshot", v.clone());
        if let Ok(t) = TargetsMeta::parse("targets", v) {
            if let Some(d) = &t.delegations {
                let _ = d.roles_for("a/b/c.txt");
            }
        }
    }
});
