//! `[ssh] revoked_keys`: OpenSSH's revoked-keys file, as sshd's `RevokedKeys` reads it: either
//! a text file of public keys (one per line, `#` comments) or a binary Key Revocation List made
//! by `ssh-keygen -k` (PROTOCOL.krl): keys, SHA-1 and SHA-256 fingerprints, and certificates by
//! serial (lists, ranges, bitmaps) and by key id, per CA.
//!
//! The KRL's own signature sections are not checked (sshd does not check them either: the file
//! is the operator's, like the config).

use std::collections::HashSet;
use std::path::Path;

use sha2::Digest;
use ssh_key::encoding::Encode;
use ssh_key::public::KeyData;
use ssh_key::Certificate;

use super::watched::{public_key_lines, FileError};

const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;

/// Certificates one CA (or any CA) revoked.
#[derive(Debug, Default)]
struct CertRevocations {
    /// The CA's key blob; `None`: certificates of any CA (key ids only, in practice).
    ca: Option<Vec<u8>>,
    /// Inclusive serial ranges (lists become one-serial ranges).
    serials: Vec<(u64, u64)>,
    /// `(first serial, big-endian bitmap)`: bit `i` from the end revokes `first + i`.
    bitmaps: Vec<(u64, Vec<u8>)>,
    key_ids: HashSet<String>,
}

impl CertRevocations {
    fn serial_revoked(&self, serial: u64) -> bool {
        self.serials
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&serial))
            || self.bitmaps.iter().any(|(first, bits)| {
                let Some(i) = serial.checked_sub(*first) else {
                    return false;
                };
                let (byte, bit) = ((i / 8) as usize, i % 8);
                byte < bits.len() && bits[bits.len() - 1 - byte] & (1 << bit) != 0
            })
    }
}

/// A loaded revoked-keys file.
#[derive(Debug, Default)]
pub struct RevocationList {
    /// Public-key blobs (the wire encoding of the plain key).
    keys: HashSet<Vec<u8>>,
    sha1: HashSet<Vec<u8>>,
    sha256: HashSet<Vec<u8>>,
    certs: Vec<CertRevocations>,
}

impl RevocationList {
    /// Reads `path`: a KRL when it starts with the KRL magic, else a text file of public keys.
    pub fn load(path: &Path) -> Result<RevocationList, FileError> {
        let bytes = std::fs::read(path).map_err(|e| FileError::io(path, &e))?;
        if bytes.starts_with(KRL_MAGIC) {
            parse_krl(&bytes).map_err(|message| FileError::at(path, None, message))
        } else {
            parse_text(&bytes, path)
        }
    }

    /// How many entries the list holds (keys, fingerprints, certificate sections).
    pub fn len(&self) -> usize {
        self.keys.len() + self.sha1.len() + self.sha256.len() + self.certs.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a plain key (or a certificate's key, or a CA key) is revoked.
    pub fn key_revoked(&self, key: &KeyData) -> bool {
        let Ok(blob) = key.encode_vec() else {
            // Not reached for keys that came off the wire; refuse rather than guess.
            return true;
        };
        self.keys.contains(&blob)
            || self.sha256.contains(sha2::Sha256::digest(&blob).as_slice())
            || (!self.sha1.is_empty() && self.sha1.contains(sha1::Sha1::digest(&blob).as_slice()))
    }

    /// Whether a certificate is revoked: by its serial or key id under its CA, or because its
    /// key or its CA's key is.
    pub fn cert_revoked(&self, cert: &Certificate) -> bool {
        if self.key_revoked(cert.public_key()) || self.key_revoked(cert.signature_key()) {
            return true;
        }
        let ca = cert.signature_key().encode_vec().unwrap_or_default();
        self.certs
            .iter()
            .filter(|s| s.ca.as_ref().is_none_or(|c| *c == ca))
            .any(|s| s.key_ids.contains(cert.key_id()) || s.serial_revoked(cert.serial()))
    }
}

fn parse_text(bytes: &[u8], path: &Path) -> Result<RevocationList, FileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        FileError::at(
            path,
            None,
            "neither a KRL nor a text file of public keys".into(),
        )
    })?;
    let mut list = RevocationList::default();
    for (line, key) in public_key_lines(text, path, "a public key")? {
        let blob = key
            .key_data()
            .encode_vec()
            .map_err(|e| FileError::at(path, Some(line), e.to_string()))?;
        list.keys.insert(blob);
    }
    Ok(list)
}

/// A cursor over SSH wire encoding with errors that say what was being read.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated KRL ({what})"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_krl(bytes: &[u8]) -> Result<RevocationList, String> {
    let mut w = Wire(bytes);
    w.take(KRL_MAGIC.len(), "magic")?;
    let version = w.u32("format version")?;
    if version != KRL_FORMAT_VERSION {
        return Err(format!(
            "KRL format version {version} is not supported (1 is)"
        ));
    }
    w.u64("krl version")?;
    w.u64("generated date")?;
    w.u64("flags")?;
    w.string("reserved")?;
    w.string("comment")?;
    let mut list = RevocationList::default();
    while !w.done() {
        let kind = w.u8("section type")?;
        let mut data = Wire(w.string("section")?);
        match kind {
            SECTION_CERTIFICATES => list.certs.push(parse_cert_section(&mut data)?),
            SECTION_EXPLICIT_KEY => {
                while !data.done() {
                    list.keys.insert(data.string("revoked key")?.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA1 => {
                while !data.done() {
                    list.sha1.insert(data.string("SHA-1 fingerprint")?.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA256 => {
                while !data.done() {
                    list.sha256
                        .insert(data.string("SHA-256 fingerprint")?.to_vec());
                }
            }
            // Signatures come last and cover what precedes them; nothing after is revocation.
            SECTION_SIGNATURE => break,
            other => return Err(format!("unknown KRL section type {other}")),
        }
    }
    Ok(list)
}

fn parse_cert_section(w: &mut Wire<'_>) -> Result<CertRevocations, String> {
    let ca = w.string("CA key")?;
    w.string("reserved")?;
    let mut out = CertRevocations {
        ca: (!ca.is_empty()).then(|| ca.to_vec()),
        ..CertRevocations::default()
    };
    while !w.done() {
        let kind = w.u8("certificate section type")?;
        let mut data = Wire(w.string("certificate section")?);
        match kind {
            CERT_SERIAL_LIST => {
                while !data.done() {
                    let s = data.u64("serial")?;
                    out.serials.push((s, s));
                }
            }
            CERT_SERIAL_RANGE => {
                let lo = data.u64("serial range")?;
                let hi = data.u64("serial range")?;
                out.serials.push((lo, hi));
            }
            CERT_SERIAL_BITMAP => {
                let first = data.u64("bitmap offset")?;
                // An mpint: big-endian, possibly with a leading zero byte.
                out.bitmaps.push((first, data.string("bitmap")?.to_vec()));
            }
            CERT_KEY_ID => {
                while !data.done() {
                    let id = data.string("key id")?;
                    out.key_ids.insert(String::from_utf8_lossy(id).into_owned());
                }
            }
            other => return Err(format!("unknown KRL certificate section type {other:#x}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bits_count_from_the_end() {
        let s = CertRevocations {
            bitmaps: vec![(100, vec![0b0000_0001, 0b1000_0010])],
            ..Default::default()
        };
        assert!(s.serial_revoked(101));
        assert!(s.serial_revoked(107));
        assert!(s.serial_revoked(108));
        assert!(!s.serial_revoked(100));
        assert!(!s.serial_revoked(99));
        assert!(!s.serial_revoked(116));
    }

    #[test]
    fn truncated_and_unknown_krls_are_errors_not_empty_lists() {
        let mut k = KRL_MAGIC.to_vec();
        k.extend(1u32.to_be_bytes());
        assert!(parse_krl(&k).unwrap_err().contains("truncated"));
        k.extend([0u8; 24]);
        k.extend(0u32.to_be_bytes());
        k.extend(0u32.to_be_bytes());
        assert!(parse_krl(&k).unwrap().is_empty());
        k.push(9);
        k.extend(0u32.to_be_bytes());
        assert!(parse_krl(&k).unwrap_err().contains("unknown KRL section"));
    }
}
