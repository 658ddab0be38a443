//! Public keys, signature verification and signing, on `ring`.
//!
//! Supported (key type, scheme) pairs, as securesystemslib names them:
//! `ed25519`/`ed25519` (hex public key), `ecdsa` or `ecdsa-sha2-nistp256`/`ecdsa-sha2-nistp256`,
//! the same for `nistp384`, and `rsa`/`rsassa-pss-sha256` or `rsa`/`rsa-pkcs1v15-sha256` (PEM
//! SubjectPublicKeyInfo). aktualizr's dialect (`ED25519` / `RSA` key types without a scheme, base64
//! signatures with a `method`) is read too. A key of any other type or scheme parses but verifies
//! nothing: it is skipped, not fatal.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _};
use serde_json::{json, Map, Value};

use crate::canonical::to_canonical;
use crate::error::{Error, Result};

/// The verification algorithm a public key is used with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verifier {
    Ed25519(Vec<u8>),
    EcdsaP256(Vec<u8>),
    EcdsaP384(Vec<u8>),
    RsaPss(Vec<u8>),
    RsaPkcs1(Vec<u8>),
    /// An unknown type or scheme, or key material that does not parse: never verifies.
    Unsupported,
}

/// A public key as metadata lists it, with its declared key ID.
#[derive(Debug, Clone)]
pub struct PublicKey {
    keyid: String,
    json: Value,
    verifier: Verifier,
}

impl PublicKey {
    /// Reads a key object (`{"keytype", "scheme", "keyval": {"public"}}`) listed under `keyid`.
    ///
    /// Fails only when the object is not of that shape; an unsupported type, scheme or key
    /// material gives a key that verifies nothing.
    pub fn from_json(keyid: &str, json: &Value) -> std::result::Result<PublicKey, String> {
        let obj = json.as_object().ok_or("key is not an object")?;
        let keytype = obj
            .get("keytype")
            .and_then(Value::as_str)
            .ok_or("key has no string \"keytype\"")?;
        let scheme = match obj.get("scheme") {
            Some(Value::String(s)) => Some(s.as_str()),
            None => None,
            Some(_) => return Err("key \"scheme\" is not a string".into()),
        };
        let public = obj
            .get("keyval")
            .and_then(Value::as_object)
            .ok_or("key has no object \"keyval\"")?
            .get("public")
            .and_then(Value::as_str);
        let verifier = match public {
            Some(public) => verifier_for(keytype, scheme, public),
            None => Verifier::Unsupported,
        };
        Ok(PublicKey {
            keyid: keyid.to_owned(),
            json: json.clone(),
            verifier,
        })
    }

    /// The key ID the metadata declares for this key.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The key object as listed in metadata.
    pub fn to_json(&self) -> &Value {
        &self.json
    }

    /// Whether this key can verify anything (its type and scheme are supported).
    pub fn is_supported(&self) -> bool {
        self.verifier != Verifier::Unsupported
    }

    /// Identity of the key material, used to count a key listed under two IDs only once.
    pub(crate) fn material(&self) -> Option<&[u8]> {
        match &self.verifier {
            Verifier::Ed25519(k)
            | Verifier::EcdsaP256(k)
            | Verifier::EcdsaP384(k)
            | Verifier::RsaPss(k)
            | Verifier::RsaPkcs1(k) => Some(k),
            Verifier::Unsupported => None,
        }
    }

    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let (alg, key): (&dyn sig::VerificationAlgorithm, &[u8]) = match &self.verifier {
            Verifier::Ed25519(k) => (&sig::ED25519, k),
            Verifier::EcdsaP256(k) => (&sig::ECDSA_P256_SHA256_ASN1, k),
            Verifier::EcdsaP384(k) => (&sig::ECDSA_P384_SHA384_ASN1, k),
            Verifier::RsaPss(k) => (&sig::RSA_PSS_2048_8192_SHA256, k),
            Verifier::RsaPkcs1(k) => (&sig::RSA_PKCS1_2048_8192_SHA256, k),
            Verifier::Unsupported => return false,
        };
        sig::UnparsedPublicKey::new(alg, key)
            .verify(message, signature)
            .is_ok()
    }
}

fn verifier_for(keytype: &str, scheme: Option<&str>, public: &str) -> Verifier {
    // aktualizr's dialect: upper-case types, no scheme.
    let scheme = scheme.unwrap_or(match keytype {
        "ED25519" => "ed25519",
        "RSA" => "rsassa-pss-sha256",
        _ => "",
    });
    let keytype = keytype.to_ascii_lowercase();
    let parsed = match (keytype.as_str(), scheme) {
        ("ed25519", "ed25519") => hex::decode(public)
            .ok()
            .filter(|k| k.len() == 32)
            .map(Verifier::Ed25519),
        ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
            spki(public, Alg::EcP256).map(Verifier::EcdsaP256)
        }
        ("ecdsa" | "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384") => {
            spki(public, Alg::EcP384).map(Verifier::EcdsaP384)
        }
        ("rsa", "rsassa-pss-sha256") => spki(public, Alg::Rsa).map(Verifier::RsaPss),
        ("rsa", "rsa-pkcs1v15-sha256") => spki(public, Alg::Rsa).map(Verifier::RsaPkcs1),
        _ => None,
    };
    parsed.unwrap_or(Verifier::Unsupported)
}

/// Decodes a signature value: hex in TUF, base64 in aktualizr's dialect (which has `method`).
pub(crate) fn decode_signature(sig: &str, aktualizr_dialect: bool) -> Option<Vec<u8>> {
    if aktualizr_dialect {
        base64::engine::general_purpose::STANDARD.decode(sig).ok()
    } else {
        hex::decode(sig).ok()
    }
}

// --- DER / PEM ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rsa,
    EcP256,
    EcP384,
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// Reads one DER element: (tag, content, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn pem_decode(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Encodes DER as PEM with `label` (`CERTIFICATE`, `PRIVATE KEY`, ...), 64 columns.
pub fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Extracts the key bytes ring wants (RSAPublicKey DER, or the EC point) from a PEM
/// SubjectPublicKeyInfo of the expected algorithm.
fn spki(pem: &str, alg: Alg) -> Option<Vec<u8>> {
    let der = pem_decode(pem, "PUBLIC KEY")?;
    let (tag, spki, rest) = der_next(&der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (tag, alg_id, rest) = der_next(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, bits, rest) = der_next(rest)?;
    if tag != 0x03 || !rest.is_empty() {
        return None;
    }
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    let (tag, oid, params) = der_next(alg_id)?;
    if tag != 0x06 {
        return None;
    }
    let ok = match alg {
        Alg::Rsa => oid == OID_RSA,
        Alg::EcP256 | Alg::EcP384 => {
            let want = if alg == Alg::EcP256 {
                OID_P256
            } else {
                OID_P384
            };
            oid == OID_EC_PUBLIC_KEY
                && matches!(der_next(params), Some((0x06, curve, _)) if curve == want)
        }
    };
    ok.then(|| key.to_vec())
}

fn spki_pem(alg: Alg, key: &[u8]) -> String {
    let alg_id = match alg {
        Alg::Rsa => [der_wrap(0x06, OID_RSA), vec![0x05, 0x00]].concat(),
        Alg::EcP256 => [der_wrap(0x06, OID_EC_PUBLIC_KEY), der_wrap(0x06, OID_P256)].concat(),
        Alg::EcP384 => [der_wrap(0x06, OID_EC_PUBLIC_KEY), der_wrap(0x06, OID_P384)].concat(),
    };
    let bits = [&[0u8][..], key].concat();
    let spki = der_wrap(
        0x30,
        &[der_wrap(0x30, &alg_id), der_wrap(0x03, &bits)].concat(),
    );
    pem_encode(&spki, "PUBLIC KEY")
}

// --- signing --------------------------------------------------------------------------------

/// The signature schemes this crate can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    EcdsaP256,
    /// `ecdsa-sha2-nistp384`.
    EcdsaP384,
    /// `rsassa-pss-sha256`.
    RsaPssSha256,
}

impl Scheme {
    /// The scheme name as metadata writes it.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::EcdsaP256 => "ecdsa-sha2-nistp256",
            Scheme::EcdsaP384 => "ecdsa-sha2-nistp384",
            Scheme::RsaPssSha256 => "rsassa-pss-sha256",
        }
    }

    /// The key type as metadata writes it.
    pub fn keytype(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::EcdsaP256 | Scheme::EcdsaP384 => "ecdsa",
            Scheme::RsaPssSha256 => "rsa",
        }
    }
}

enum Pair {
    Ed25519(sig::Ed25519KeyPair),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair),
}

/// A private key that signs metadata, with its TUF public key and key ID.
pub struct SigningKey {
    scheme: Scheme,
    pair: Pair,
    pkcs8: Vec<u8>,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("scheme", &self.scheme)
            .field("keyid", &self.public.keyid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key. RSA keys cannot be generated here (ring has no RSA key
    /// generation): create them with `openssl genpkey` and load them with [`Self::from_pkcs8`].
    pub fn generate(scheme: Scheme) -> Result<SigningKey> {
        let rng = SystemRandom::new();
        let pkcs8 = match scheme {
            Scheme::Ed25519 => sig::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| Error::Key("ed25519 key generation failed".into()))?,
            Scheme::EcdsaP256 | Scheme::EcdsaP384 => {
                sig::EcdsaKeyPair::generate_pkcs8(ecdsa_alg(scheme), &rng)
                    .map_err(|_| Error::Key("ecdsa key generation failed".into()))?
            }
            Scheme::RsaPssSha256 => {
                return Err(Error::Key(
                    "RSA keys cannot be generated in-process; load one from PKCS#8".into(),
                ))
            }
        };
        SigningKey::from_pkcs8(pkcs8.as_ref(), scheme)
    }

    /// Loads a PKCS#8 private key (DER) for `scheme`.
    pub fn from_pkcs8(der: &[u8], scheme: Scheme) -> Result<SigningKey> {
        let bad = |e: &dyn std::fmt::Display| Error::Key(format!("{}: {e}", scheme.name()));
        let (pair, alg, public) = match scheme {
            Scheme::Ed25519 => {
                let pair =
                    sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| bad(&e))?;
                let public = hex::encode(pair.public_key().as_ref());
                (Pair::Ed25519(pair), None, public)
            }
            Scheme::EcdsaP256 | Scheme::EcdsaP384 => {
                let rng = SystemRandom::new();
                let pair = sig::EcdsaKeyPair::from_pkcs8(ecdsa_alg(scheme), der, &rng)
                    .map_err(|e| bad(&e))?;
                let alg = if scheme == Scheme::EcdsaP256 {
                    Alg::EcP256
                } else {
                    Alg::EcP384
                };
                let public = spki_pem(alg, pair.public_key().as_ref());
                (Pair::Ecdsa(pair), Some(alg), public)
            }
            Scheme::RsaPssSha256 => {
                let pair = sig::RsaKeyPair::from_pkcs8(der).map_err(|e| bad(&e))?;
                let public = spki_pem(Alg::Rsa, pair.public().as_ref());
                (Pair::Rsa(pair), Some(Alg::Rsa), public)
            }
        };
        let _ = alg;
        let json = json!({
            "keytype": scheme.keytype(),
            "scheme": scheme.name(),
            "keyval": {"public": public},
        });
        let keyid = key_id(&json)?;
        let public = PublicKey::from_json(&keyid, &json).map_err(Error::Key)?;
        Ok(SigningKey {
            scheme,
            pair,
            pkcs8: der.to_vec(),
            public,
        })
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8) for `scheme`.
    pub fn from_pkcs8_pem(pem: &str, scheme: Scheme) -> Result<SigningKey> {
        let der = pem_decode(pem, "PRIVATE KEY")
            .ok_or_else(|| Error::Key("no PEM PRIVATE KEY block".into()))?;
        SigningKey::from_pkcs8(&der, scheme)
    }

    /// The private key as PEM PKCS#8, to store it.
    pub fn to_pkcs8_pem(&self) -> String {
        pem_encode(&self.pkcs8, "PRIVATE KEY")
    }

    /// The scheme of this key.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The public key, with the key ID securesystemslib would compute.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key ID.
    pub fn keyid(&self) -> &str {
        &self.public.keyid
    }

    /// Signs `message` and returns the raw signature.
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ed25519(p) => Ok(p.sign(message).as_ref().to_vec()),
            Pair::Ecdsa(p) => p
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::Key("ecdsa signing failed".into())),
            Pair::Rsa(p) => {
                let mut out = vec![0; p.public().modulus_len()];
                p.sign(&sig::RSA_PSS_SHA256, &rng, message, &mut out)
                    .map_err(|_| Error::Key("rsa signing failed".into()))?;
                Ok(out)
            }
        }
    }

    /// Signs the canonical form of `signed` and returns the TUF signature object
    /// (`{"keyid", "sig"}`, hex).
    pub fn sign(&self, signed: &Value) -> Result<Value> {
        let bytes = to_canonical(signed).map_err(|e| Error::Canonical {
            role: "signed".into(),
            reason: e.0,
        })?;
        Ok(json!({"keyid": self.keyid(), "sig": hex::encode(self.sign_bytes(&bytes)?)}))
    }
}

fn ecdsa_alg(scheme: Scheme) -> &'static sig::EcdsaSigningAlgorithm {
    if scheme == Scheme::EcdsaP384 {
        &sig::ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &sig::ECDSA_P256_SHA256_ASN1_SIGNING
    }
}

/// The key ID securesystemslib computes: SHA-256 of the canonical JSON of the key's
/// `keytype`, `scheme` and `keyval`.
pub fn key_id(key: &Value) -> Result<String> {
    let mut m = Map::new();
    for field in ["keytype", "scheme", "keyval"] {
        if let Some(v) = key.get(field) {
            m.insert(field.into(), v.clone());
        }
    }
    let bytes = to_canonical(&Value::Object(m)).map_err(|e| Error::Canonical {
        role: "key".into(),
        reason: e.0,
    })?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &bytes,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_signs_and_verifies() {
        for scheme in [Scheme::Ed25519, Scheme::EcdsaP256, Scheme::EcdsaP384] {
            let key = SigningKey::generate(scheme).unwrap();
            let s = key.sign_bytes(b"hello").unwrap();
            assert!(key.public().is_supported(), "{scheme:?}");
            assert!(key.public().verify(b"hello", &s), "{scheme:?}");
            assert!(!key.public().verify(b"hellO", &s), "{scheme:?}");
            let again = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem(), scheme).unwrap();
            assert_eq!(again.keyid(), key.keyid());
        }
    }

    #[test]
    fn unknown_key_types_parse_but_verify_nothing() {
        let k = PublicKey::from_json(
            "abc",
            &json!({"keytype": "dsa", "scheme": "dsa-sha1", "keyval": {"public": "00"}}),
        )
        .unwrap();
        assert!(!k.is_supported());
        assert!(!k.verify(b"x", b"y"));
        let mismatched = PublicKey::from_json(
            "abc",
            &json!({"keytype": "ed25519", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": "00"}}),
        )
        .unwrap();
        assert!(!mismatched.is_supported());
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 5, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let der = der_wrap(0x04, &content);
            let (tag, c, rest) = der_next(&der).unwrap();
            assert_eq!((tag, c.len(), rest.len()), (0x04, len, 0));
        }
    }
}
