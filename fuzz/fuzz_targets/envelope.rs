//! Any bytes as metadata: parsing and canonicalisation must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = aktualizr_rs_metadata::Envelope::parse("fuzz", data);
});
