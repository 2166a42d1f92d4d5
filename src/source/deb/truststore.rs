//! Java's trust store, `/etc/ssl/certs/java/cacerts`, written as data: what
//! `ca-certificates-java`'s trigger would have made by running a Java
//! program. The store is a PKCS#12 file (RFC 7292) holding each CA
//! certificate as a Java *trusted certificate entry*: a `certBag` with the
//! alias as `friendlyName` and Oracle's trusted-key-usage attribute, without
//! which Java ignores a certificate that has no key. Certificates are public,
//! so they are stored unencrypted; the file's integrity is protected by an
//! HMAC-SHA-256 keyed from the store password `changeit` (Java's and
//! Debian's default), so `keytool -storepass changeit` and `openssl pkcs12
//! -passin pass:changeit` verify it.
//!
//! Reproducible: the MAC salt is a SHA-256 of the content it authenticates
//! and the iteration count is fixed, so the bytes depend only on the
//! certificates and their aliases. The DER encoder below writes only the
//! few shapes this file needs.

use sha2::{Digest as _, Sha256};

/// The store password, Java's and Debian's default.
pub const STORE_PASSWORD: &str = "changeit";

/// The MAC's key-derivation iteration count (Java's own default).
pub const MAC_ITERATIONS: u32 = 10_000;

/// Where Java runtimes look for the system trust store on Debian.
pub const PATH: &str = "etc/ssl/certs/java/cacerts";

// Object identifiers, DER-encoded contents (without tag and length).
/// 1.2.840.113549.1.7.1 (PKCS#7 data)
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// 1.2.840.113549.1.12.10.1.3 (PKCS#12 certBag)
const OID_CERT_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x03,
];
/// 1.2.840.113549.1.9.22.1 (x509Certificate)
const OID_X509: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x16, 0x01];
/// 1.2.840.113549.1.9.20 (friendlyName)
const OID_FRIENDLY_NAME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x14];
/// 2.16.840.1.113894.746875.1.1 (Oracle's trusted key usage)
const OID_TRUSTED_KEY_USAGE: &[u8] = &[
    0x60, 0x86, 0x48, 0x01, 0x86, 0xf9, 0x66, 0xad, 0xca, 0x7b, 0x01, 0x01,
];
/// 2.5.29.37.0 (anyExtendedKeyUsage)
const OID_ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
/// 2.16.840.1.101.3.4.2.1 (SHA-256)
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// The alias `ca-certificates-java` gives the certificate file at `path`:
/// `debian:` and the name of its `/etc/ssl/certs` link (the `.crt` file's
/// name, spaces and commas made `_`, parentheses `=`, with `.pem`),
/// lower-cased as Java key stores keep aliases.
pub fn alias_for(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.strip_suffix(".crt").unwrap_or(name);
    let link: String = stem
        .chars()
        .map(|c| match c {
            ' ' | ',' => '_',
            '(' | ')' => '=',
            c => c,
        })
        .collect();
    format!("debian:{}.pem", link.to_lowercase())
}

/// The first certificate of a PEM file, as DER, or why there is none (Java's
/// certificate reader, which Debian's tool uses, takes the first one too).
pub fn first_certificate(pem: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(pem).map_err(|_| "the file is not text".to_string())?;
    let start = text
        .find(BEGIN)
        .ok_or_else(|| format!("no `{BEGIN}` line"))?
        + BEGIN.len();
    let len = text[start..]
        .find(END)
        .ok_or_else(|| format!("no `{END}` line after `{BEGIN}`"))?;
    let body: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("the base64 between the PEM lines does not decode: {e}"))?;
    check_certificate(&der)?;
    Ok(der)
}

/// Checks the outline of an X.509 certificate: one DER SEQUENCE of the
/// to-be-signed SEQUENCE, the algorithm SEQUENCE and the signature BIT STRING.
fn check_certificate(der: &[u8]) -> std::result::Result<(), String> {
    let bad = |what: &str| format!("the DER is not an X.509 certificate: {what}");
    let (tag, body, rest) = read_tlv(der).ok_or_else(|| bad("truncated"))?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(bad("not one SEQUENCE"));
    }
    let mut at = body;
    for want in [0x30, 0x30, 0x03] {
        let (tag, _, rest) = read_tlv(at).ok_or_else(|| bad("a field is truncated"))?;
        if tag != want {
            return Err(bad("unexpected field"));
        }
        at = rest;
    }
    if !at.is_empty() {
        return Err(bad("trailing fields"));
    }
    Ok(())
}

/// One DER element: its tag, contents and what follows it.
fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = len << 8 | x as usize;
        }
        b = &b[n..];
        if len < 0x80 {
            return None; // not the shortest form, which DER requires
        }
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A DER SET OF: its elements sorted by their encodings.
fn set_of(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.sort();
    tlv(0x31, &parts.concat())
}

fn oid(content: &[u8]) -> Vec<u8> {
    tlv(0x06, content)
}

fn explicit0(inner: &[u8]) -> Vec<u8> {
    tlv(0xa0, inner)
}

fn integer(n: u32) -> Vec<u8> {
    let mut bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|&b| b == 0)
        .collect();
    if bytes.first().is_none_or(|&b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

/// A password or alias as a BMPString's bytes (UTF-16 big-endian).
fn bmp(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// The PKCS#12 trust store holding `certs` (alias, DER certificate) in that
/// order, each a trusted certificate entry, with a MAC under `password`.
pub fn pkcs12(certs: &[(String, Vec<u8>)], password: &str) -> Vec<u8> {
    let bags: Vec<Vec<u8>> = certs
        .iter()
        .map(|(alias, der)| {
            let cert_bag = seq(&[&oid(OID_X509), &explicit0(&tlv(0x04, der))]);
            let friendly = seq(&[
                &oid(OID_FRIENDLY_NAME),
                &set_of(vec![tlv(0x1e, &bmp(alias))]),
            ]);
            let trusted = seq(&[&oid(OID_TRUSTED_KEY_USAGE), &set_of(vec![oid(OID_ANY_EKU)])]);
            seq(&[
                &oid(OID_CERT_BAG),
                &explicit0(&cert_bag),
                &set_of(vec![friendly, trusted]),
            ])
        })
        .collect();
    let safe_contents = tlv(0x30, &bags.concat());
    let data = |content: &[u8]| seq(&[&oid(OID_DATA), &explicit0(&tlv(0x04, content))]);
    let auth_safe = seq(&[&data(&safe_contents)]);
    let salt: Vec<u8> = Sha256::digest(&auth_safe).to_vec();
    let mut pass = bmp(password);
    pass.extend_from_slice(&[0, 0]);
    let key = kdf(&pass, &salt, MAC_ITERATIONS);
    let mac = hmac_sha256(&key, &auth_safe);
    let digest_info = seq(&[&seq(&[&oid(OID_SHA256), &[0x05, 0x00]]), &tlv(0x04, &mac)]);
    let mac_data = seq(&[&digest_info, &tlv(0x04, &salt), &integer(MAC_ITERATIONS)]);
    seq(&[&integer(3), &data(&auth_safe), &mac_data])
}

/// RFC 7292 appendix B.2 with SHA-256, for the MAC key (ID 3), 32 bytes:
/// one block of output, so only `A_1` is needed.
fn kdf(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    const V: usize = 64;
    let fill = |s: &[u8]| -> Vec<u8> {
        if s.is_empty() {
            return Vec::new();
        }
        let len = V * s.len().div_ceil(V);
        s.iter().copied().cycle().take(len).collect()
    };
    let mut hasher = Sha256::new();
    hasher.update([3u8; V]);
    hasher.update(fill(salt));
    hasher.update(fill(password));
    let mut a: [u8; 32] = hasher.finalize().into();
    for _ in 1..iterations {
        a = Sha256::digest(a).into();
    }
    a
}

/// HMAC-SHA-256 (RFC 2104) with a key no longer than the block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    assert!(key.len() <= 64, "keys here are 32 bytes");
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_as_ca_certificates_java_names_them() {
        assert_eq!(
            alias_for("usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"),
            "debian:isrg_root_x1.pem"
        );
        assert_eq!(
            alias_for("usr/share/ca-certificates/mozilla/AC RAIZ (FNMT), x.crt"),
            "debian:ac_raiz_=fnmt=__x.pem"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn der_lengths_use_the_shortest_form() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(integer(3), [0x02, 0x01, 0x03]);
        assert_eq!(integer(10_000), [0x02, 0x02, 0x27, 0x10]);
        assert_eq!(integer(128), [0x02, 0x02, 0x00, 0x80]);
    }

    /// The bytes are a function of the certificates and aliases alone: a
    /// change here moves the digest of every image with a Java trust store.
    #[test]
    fn the_store_bytes_are_pinned() {
        let der = seq(&[
            &seq(&[&integer(1)]),
            &seq(&[&oid(OID_SHA256)]),
            &tlv(0x03, &[0]),
        ]);
        check_certificate(&der).unwrap();
        let certs = vec![("debian:a.pem".to_string(), der.clone())];
        let store = pkcs12(&certs, STORE_PASSWORD);
        assert_eq!(store, pkcs12(&certs, STORE_PASSWORD));
        assert_eq!(
            hex::encode(Sha256::digest(&store)),
            "f3293eaf1bc7cfd71679cb3a17ee1b3e8d46778fc089e6708134f9223af6b755"
        );
        let other = vec![("debian:b.pem".to_string(), der)];
        assert_ne!(store, pkcs12(&other, STORE_PASSWORD));
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert!(first_certificate(b"hello").unwrap_err().contains("BEGIN"));
        let not_der = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(first_certificate(not_der)
            .unwrap_err()
            .contains("not an X.509"));
        let not_b64 = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(first_certificate(not_b64).unwrap_err().contains("base64"));
    }
}
