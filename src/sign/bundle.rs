//! DSSE envelopes and Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`),
//! the format cosign 3 writes by default: a bundle holds either a DSSE
//! envelope (an in-toto statement, signed over DSSE's pre-authentication
//! encoding) or a message signature (a digest and a signature over it), and
//! verification material (here a public-key hint; kiln verifies with the
//! keys it is given and reads no transparency-log entry).

use base64::Engine;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};

use super::cosign::{self, NamedKey};
use crate::digest::Digest;
use crate::json::canonical;

/// Media type of a Sigstore bundle (a layer's, and a referrer's artifact type).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Media type of a DSSE envelope, as an attestation layer.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The predicate type of an image signature as an in-toto statement (cosign 3).
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// The in-toto statement type of signatures in bundles.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// The DSSE payload type of in-toto statements.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The 32 bytes a SHA-256 digest is.
fn raw(d: &Digest) -> Vec<u8> {
    hex::decode(d.hex()).unwrap_or_default()
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// DSSE's pre-authentication encoding: what the signature covers.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A DSSE envelope (as a JSON value) around the in-toto `statement`, signed with `key`.
pub fn envelope_value(statement: &[u8], key: &SigningKey) -> Value {
    let sig = cosign::sign_bytes(key, &pae(INTOTO_PAYLOAD_TYPE, statement));
    json!({
        "payloadType": INTOTO_PAYLOAD_TYPE,
        "payload": b64(statement),
        "signatures": [{ "keyid": "", "sig": sig }],
    })
}

/// The statement an image signature signs in a bundle: the image digest
/// as subject, predicate type [`SIGN_PREDICATE`], empty predicate.
pub fn signature_statement(digest: &Digest) -> Vec<u8> {
    canonical(&json!({
        "_type": STATEMENT_V1,
        "subject": [{ "digest": { "sha256": digest.hex() } }],
        "predicateType": SIGN_PREDICATE,
        "predicate": {},
    }))
}

/// The base64 SHA-256 of the key's DER SubjectPublicKeyInfo: the hint a
/// keyed bundle names its key by.
pub fn key_hint(key: &SigningKey) -> String {
    use p256::pkcs8::EncodePublicKey;
    let der = key
        .verifying_key()
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    b64(&raw(&Digest::of(&der)))
}

/// A bundle holding a DSSE envelope of `statement`, signed with `key`.
pub fn dsse_bundle(statement: &[u8], key: &SigningKey) -> Vec<u8> {
    canonical(&json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": { "publicKey": { "hint": key_hint(key) } },
        "dsseEnvelope": envelope_value(statement, key),
    }))
}

/// What a DSSE envelope holds, read with some keys.
#[derive(Debug)]
pub enum Opened {
    /// Not a DSSE envelope (or bundle) kiln can read.
    Unreadable,
    /// An envelope or signature no given key signed.
    Unsigned,
    /// A signed in-toto statement (`Null` if it is not JSON), and the key that signed it.
    Statement(Value, usize),
    /// A message signature over this digest (hex of the SHA-256), and the key.
    Message(String, usize),
}

/// Opens a DSSE envelope (a JSON value) and checks its signatures against `keys`.
pub fn open_envelope_value(env: &Value, keys: &[NamedKey]) -> Opened {
    let payload_type = env["payloadType"].as_str().unwrap_or_default();
    let Some(body) = unb64(env["payload"].as_str().unwrap_or_default()) else {
        return Opened::Unreadable;
    };
    let signed = env["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| {
            let sig = s["sig"].as_str().unwrap_or_default();
            keys.iter()
                .position(|k| cosign::verify_bytes(&k.key, &pae(payload_type, &body), sig))
        });
    match signed {
        None => Opened::Unsigned,
        Some(k) => Opened::Statement(serde_json::from_slice(&body).unwrap_or(Value::Null), k),
    }
}

/// Opens a Sigstore bundle and checks it against `keys`.
pub fn open_bundle(bytes: &[u8], keys: &[NamedKey]) -> Opened {
    let bundle: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if bundle["dsseEnvelope"].is_object() {
        return open_envelope_value(&bundle["dsseEnvelope"], keys);
    }
    let message = &bundle["messageSignature"];
    if !message.is_object() {
        return Opened::Unreadable;
    }
    let (Some(digest), Some(sig)) = (
        unb64(
            message["messageDigest"]["digest"]
                .as_str()
                .unwrap_or_default(),
        ),
        unb64(message["signature"].as_str().unwrap_or_default()),
    ) else {
        return Opened::Unreadable;
    };
    let algorithm = message["messageDigest"]["algorithm"]
        .as_str()
        .unwrap_or("SHA2_256");
    let Ok(sig) = Signature::from_der(&sig) else {
        return Opened::Unreadable;
    };
    if algorithm != "SHA2_256" || digest.len() != 32 {
        return Opened::Unreadable;
    }
    match keys
        .iter()
        .position(|k| k.key.verify_prehash(&digest, &sig).is_ok())
    {
        Some(k) => Opened::Message(hex::encode(&digest), k),
        None => Opened::Unsigned,
    }
}

/// Whether the in-toto `statement` names `digest` among its subjects.
pub fn names_digest(statement: &Value, digest: &Digest) -> bool {
    statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"]["sha256"].as_str() == Some(digest.hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec() {
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab".to_vec());
    }

    #[test]
    fn a_dsse_bundle_opens_with_its_key_only() {
        let key = super::super::keys::generate();
        let other = super::super::keys::generate();
        let d = Digest::of(b"m");
        let bundle = dsse_bundle(&signature_statement(&d), &key);
        let named = |k: &SigningKey| NamedKey {
            path: "k.pub".into(),
            key: *k.verifying_key(),
        };
        match open_bundle(&bundle, &[named(&other), named(&key)]) {
            Opened::Statement(st, 1) => {
                assert!(names_digest(&st, &d));
                assert_eq!(st["predicateType"], SIGN_PREDICATE);
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            open_bundle(&bundle, &[named(&other)]),
            Opened::Unsigned
        ));
        assert!(matches!(
            open_bundle(b"{}", &[named(&key)]),
            Opened::Unreadable
        ));
    }

    #[test]
    fn a_message_signature_bundle_opens() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let key = super::super::keys::generate();
        let d = Digest::of(b"manifest");
        let sig: Signature = key.sign_prehash(&raw(&d)).unwrap();
        let bundle = canonical(&json!({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "messageSignature": {
                "messageDigest": { "algorithm": "SHA2_256", "digest": b64(&raw(&d)) },
                "signature": b64(sig.to_der().as_bytes()),
            },
        }));
        let named = NamedKey {
            path: "k.pub".into(),
            key: *key.verifying_key(),
        };
        match open_bundle(&bundle, &[named]) {
            Opened::Message(hex, 0) => assert_eq!(hex, d.hex()),
            o => panic!("{o:?}"),
        }
    }
}
