//! The audit log: one JSON object per line, append-only, fsync'd per record, mode 0600.
//!
//! Records are written by a dedicated thread fed through a bounded queue, so the async workers
//! never wait for the disk; the schema is in the README. Never a token or secret.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Records queued before writers block (a stuck disk must not grow memory without bound).
const QUEUE: usize = 4096;

/// Handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: std::sync::mpsc::SyncSender<Value>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (creating, mode 0600) `path` for appending and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Created private when missing; an existing one may be a shared log directory and
            // is left as it is: the file itself is what must be private.
            crate::fsutil::create_private_dir(dir)?;
        }
        crate::fsutil::private_file(path)?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Value>(QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                for mut record in rx {
                    if let Value::Object(m) = &mut record {
                        m.insert(
                            "ts".into(),
                            Value::String(
                                chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            ),
                        );
                    }
                    let mut line = record.to_string();
                    line.push('\n');
                    if let Err(e) = file
                        .write_all(line.as_bytes())
                        .and_then(|_| file.sync_data())
                    {
                        tracing::error!(path = %shown, error = %e, "audit log write failed");
                    }
                }
            })?;
        Ok(AuditLog {
            tx,
            path: path.to_owned(),
        })
    }

    /// Queues a record (blocks only when the writer is far behind).
    pub fn write(&self, record: Value) {
        if self.tx.send(record).is_err() {
            tracing::error!(path = %self.path.display(), "audit writer is gone; record lost");
        }
    }
}
