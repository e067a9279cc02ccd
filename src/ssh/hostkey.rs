//! The SSH host key: generated on first run, reused afterwards, never silently replaced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

/// Why the host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The file exists but is not a usable OpenSSH private key.
    #[error("{path}: not a valid OpenSSH private key ({detail}); fix or remove it (a new key changes the host fingerprint users trust)")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// The parser's reason.
        detail: String,
    },
    /// The file exists but is encrypted with a passphrase.
    #[error("{path}: the host key is encrypted; the gateway needs an unencrypted key")]
    Encrypted {
        /// The key file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Key generation failed.
    #[error("generating a host key: {0}")]
    Generate(String),
}

/// Whether the key was just created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the existing file.
    Loaded,
    /// Generated now and written (mode 0600).
    Generated,
}

/// Loads `path`, or generates an Ed25519 key there (mode 0600, parent directory 0700) when the
/// file does not exist. Any other problem is an error: replacing a key silently would change the
/// fingerprint every user has pinned.
pub fn load_or_generate(path: &Path) -> Result<(PrivateKey, Origin), HostKeyError> {
    let io = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key =
                PrivateKey::from_openssh(text.trim_start()).map_err(|e| HostKeyError::Corrupt {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
            if key.is_encrypted() {
                return Err(HostKeyError::Encrypted {
                    path: path.to_owned(),
                });
            }
            Ok((key, Origin::Loaded))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::fsutil::create_private_dir(dir).map_err(io)?;
            }
            let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
                .map_err(|e| HostKeyError::Generate(e.to_string()))?;
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| HostKeyError::Generate(e.to_string()))?;
            // create_new: two gateways starting at once must not overwrite each other's key.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(pem.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            if let Ok(public) = key.public_key().to_openssh() {
                let mut pub_path = path.as_os_str().to_owned();
                pub_path.push(".pub");
                // The .pub file is a convenience for operators; failing to write it is harmless.
                let _ = std::fs::write(pub_path, format!("{public}\n"));
            }
            Ok((key, Origin::Generated))
        }
        Err(e) => Err(io(e)),
    }
}

/// `SHA256:…` fingerprint of the key's public half.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_and_corrupt_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host_ed25519");
        let (k1, o1) = load_or_generate(&path).unwrap();
        assert_eq!(o1, Origin::Generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, o2) = load_or_generate(&path).unwrap();
        assert_eq!(o2, Origin::Loaded);
        assert_eq!(fingerprint(&k1), fingerprint(&k2));
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_generate(&path),
            Err(HostKeyError::Corrupt { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }
}
