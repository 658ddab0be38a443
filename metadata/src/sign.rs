//! Writing signed metadata.

use serde_json::{json, Value};

use crate::crypto::SigningKey;
use crate::error::{Error, Result};

/// Signs `signed` with every key and returns the metadata file
/// (`{"signatures": [...], "signed": ...}`), pretty-printed as python-tuf writes it.
pub fn sign_envelope(signed: &Value, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    let signatures = keys
        .iter()
        .map(|k| k.sign(signed))
        .collect::<Result<Vec<_>>>()?;
    let envelope = json!({"signatures": signatures, "signed": signed});
    serde_json::to_vec_pretty(&envelope).map_err(|e| Error::Canonical {
        role: "envelope".into(),
        reason: e.to_string(),
    })
}
