//! Signing keys: ECDSA P-256, as PKCS#8 PEM (`PRIVATE KEY`), SEC1 PEM
//! (`EC PRIVATE KEY`), or cosign's encrypted form (`ENCRYPTED SIGSTORE
//! PRIVATE KEY`: scrypt-derived key, NaCl secretbox over the PKCS#8 DER), so
//! teams keep their cosign keys. Public keys are SPKI PEM (`PUBLIC KEY`).
//! Key material and passwords are never printed.

use std::path::Path;

use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::der::pem;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use crate::error::{Error, IoContext, Result};

const ENCRYPTED_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];
/// scrypt cost for keys kiln encrypts (cosign's default).
const SCRYPT_LOG_N: u8 = 15;

fn bad_key(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(
        format!("`{}` is not a usable key: {why}", path.display()),
        Some("use a P-256 key from `kiln keygen` or `cosign generate-key-pair`".into()),
    )
}

/// A new random P-256 key.
pub fn generate() -> SigningKey {
    SigningKey::random(&mut OsRng)
}

/// Reads a private key; `password` is asked for only if the key is encrypted.
pub fn load_private(path: &Path, password: &dyn Fn() -> Result<String>) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).at("read key", path)?;
    let (label, der) = pem::decode_vec(text.trim().as_bytes()).map_err(|e| bad_key(path, e))?;
    match label {
        "PRIVATE KEY" => SigningKey::from_pkcs8_der(&der).map_err(|e| bad_key(path, e)),
        "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der)
            .map(SigningKey::from)
            .map_err(|e| bad_key(path, e)),
        l if ENCRYPTED_LABELS.contains(&l) => {
            let plain = decrypt(&der, &password()?).map_err(|why| {
                Error::invalid(
                    format!("cannot decrypt `{}`: {why}", path.display()),
                    Some("check the password in `KILN_PASSWORD` (or `COSIGN_PASSWORD`)".into()),
                )
            })?;
            SigningKey::from_pkcs8_der(&plain).map_err(|e| bad_key(path, e))
        }
        other => Err(bad_key(path, format!("a PEM block labelled `{other}`"))),
    }
}

/// Reads a public key (SPKI PEM).
pub fn load_public(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).at("read key", path)?;
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| bad_key(path, e))
}

/// The private key as PEM: PKCS#8, or cosign's encrypted form when `password` is given.
pub fn private_pem(key: &SigningKey, password: Option<&str>) -> String {
    let der = key.to_pkcs8_der().expect("P-256 keys encode as PKCS#8");
    match password {
        None => der
            .to_pem("PRIVATE KEY", LineEnding::LF)
            .expect("PEM encoding cannot fail")
            .to_string(),
        Some(pw) => {
            let blob = encrypt(der.as_bytes(), pw);
            pem::encode_string(ENCRYPTED_LABELS[0], pem::LineEnding::LF, &blob)
                .expect("PEM encoding cannot fail")
        }
    }
}

/// The public key as SPKI PEM.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("P-256 keys encode as SPKI")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> std::result::Result<Vec<u8>, String> {
    let s = v.as_str().ok_or("a field is missing")?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())
}

fn derive(
    password: &str,
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> std::result::Result<[u8; 32], String> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| e.to_string())?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut key).map_err(|e| e.to_string())?;
    Ok(key)
}

fn encrypt(plain: &[u8], password: &str) -> Vec<u8> {
    let mut salt = [0u8; 32];
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let key =
        derive(password, &salt, SCRYPT_LOG_N, 8, 1).expect("fixed scrypt parameters are valid");
    let cipher = XSalsa20Poly1305::new(&key.into());
    let sealed = cipher
        .encrypt(&nonce.into(), plain)
        .expect("secretbox encryption cannot fail");
    let doc = json!({
        "kdf": { "name": "scrypt", "params": { "N": 1u64 << SCRYPT_LOG_N, "r": 8, "p": 1 }, "salt": b64(&salt) },
        "cipher": { "name": "nacl/secretbox", "nonce": b64(&nonce) },
        "ciphertext": b64(&sealed),
    });
    serde_json::to_vec(&doc).expect("JSON values serialise")
}

fn decrypt(blob: &[u8], password: &str) -> std::result::Result<Vec<u8>, String> {
    let doc: Value = serde_json::from_slice(blob)
        .map_err(|e| format!("not cosign's encrypted key format: {e}"))?;
    if doc["kdf"]["name"] != "scrypt" || doc["cipher"]["name"] != "nacl/secretbox" {
        return Err("unsupported key encryption (expected scrypt and nacl/secretbox)".into());
    }
    let params = &doc["kdf"]["params"];
    let n = params["N"].as_u64().ok_or("no scrypt N")?;
    if !n.is_power_of_two() || n < 2 {
        return Err("scrypt N is not a power of two".into());
    }
    let log_n = n.trailing_zeros() as u8;
    let r = params["r"].as_u64().ok_or("no scrypt r")? as u32;
    let p = params["p"].as_u64().ok_or("no scrypt p")? as u32;
    let salt = unb64(&doc["kdf"]["salt"])?;
    let nonce = unb64(&doc["cipher"]["nonce"])?;
    let sealed = unb64(&doc["ciphertext"])?;
    if nonce.len() != 24 {
        return Err("the nonce is not 24 bytes".into());
    }
    let key = derive(password, &salt, log_n, r, p)?;
    let cipher = XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(nonce.as_slice().into(), sealed.as_slice())
        .map_err(|_| "wrong password, or the key file is damaged".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_keys_round_trip_and_refuse_wrong_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate();
        let path = dir.path().join("k.key");
        std::fs::write(&path, private_pem(&key, Some("pw"))).unwrap();
        let loaded = load_private(&path, &|| Ok("pw".into())).unwrap();
        assert_eq!(loaded.to_bytes(), key.to_bytes());
        assert!(load_private(&path, &|| Ok("nope".into())).is_err());
        let plain = dir.path().join("p.key");
        std::fs::write(&plain, private_pem(&key, None)).unwrap();
        let asked = std::cell::Cell::new(false);
        load_private(&plain, &|| {
            asked.set(true);
            Ok(String::new())
        })
        .unwrap();
        assert!(!asked.get(), "a plain key needs no password");
        let pubp = dir.path().join("k.pub");
        std::fs::write(&pubp, public_pem(key.verifying_key())).unwrap();
        assert_eq!(&load_public(&pubp).unwrap(), key.verifying_key());
    }
}
