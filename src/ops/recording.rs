//! Session recordings in asciicast v2 (playable with `asciinema play`), one file per session,
//! named by user id and start time, mode 0600.
//!
//! A writer task owns the file and is fed through a bounded queue, so memory stays bounded (a
//! slow disk slows the session a little rather than buffering without limit). A write error —
//! a full disk — stops the recording and is logged; the session itself goes on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Chunks queued before the session waits for the disk.
const QUEUE: usize = 256;

enum Rec {
    Output(Vec<u8>),
    Resize(u16, u16),
    Marker(String),
}

/// Feeds one session's recording; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Rec>,
    path: PathBuf,
}

/// The asciicast v2 header line.
pub fn header(cols: u16, rows: u16, term: &str, title: &str, timestamp: i64) -> String {
    let h = serde_json::json!({
        "version": 2, "width": cols, "height": rows, "timestamp": timestamp,
        "env": {"TERM": term}, "title": title,
    });
    format!("{h}\n")
}

impl Recorder {
    /// Creates the file `<dir>/<user>-<UTC time>-<session id>.cast` and starts the writer.
    pub async fn start(
        dir: &Path,
        user: &str,
        session_id: u64,
        cols: u16,
        rows: u16,
        term: &str,
    ) -> std::io::Result<Recorder> {
        crate::fsutil::private_dir(dir)?;
        let now = chrono::Utc::now();
        let path = dir.join(format!(
            "{user}-{}-{session_id}.cast",
            now.format("%Y%m%dT%H%M%SZ")
        ));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        file.write_all(header(cols, rows, term, user, now.timestamp()).as_bytes())
            .await?;
        let (tx, mut rx) = mpsc::channel::<Rec>(QUEUE);
        let shown = path.display().to_string();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut carry: Vec<u8> = Vec::new();
            let mut out = tokio::io::BufWriter::new(file);
            while let Some(rec) = rx.recv().await {
                let t = start.elapsed().as_secs_f64();
                let line = match rec {
                    Rec::Output(bytes) => {
                        carry.extend_from_slice(&bytes);
                        let text = take_utf8(&mut carry);
                        if text.is_empty() {
                            continue;
                        }
                        serde_json::json!([t, "o", text]).to_string()
                    }
                    Rec::Resize(c, r) => {
                        serde_json::json!([t, "r", format!("{c}x{r}")]).to_string()
                    }
                    Rec::Marker(label) => serde_json::json!([t, "m", label]).to_string(),
                };
                let res = async {
                    out.write_all(line.as_bytes()).await?;
                    out.write_all(b"\n").await?;
                    // Flush when the queue is drained: bounded loss on a crash, few syscalls.
                    if rx.is_empty() {
                        out.flush().await?;
                    }
                    Ok::<(), std::io::Error>(())
                }
                .await;
                if let Err(e) = res {
                    tracing::error!(path = %shown, error = %e, "recording stopped (write failed); the session goes on");
                    return;
                }
            }
            let _ = out.flush().await;
        });
        Ok(Recorder { tx, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records output; returns false once the recording has stopped.
    pub async fn output(&self, bytes: &[u8]) -> bool {
        self.tx.send(Rec::Output(bytes.to_vec())).await.is_ok()
    }

    /// Records a resize.
    pub async fn resize(&self, cols: u16, rows: u16) -> bool {
        self.tx.send(Rec::Resize(cols, rows)).await.is_ok()
    }

    /// Records a marker (asciicast v2 `m`), e.g. a client attaching; dropped when the queue is
    /// full rather than waited for.
    pub fn marker(&self, label: &str) {
        let _ = self.tx.try_send(Rec::Marker(label.to_owned()));
    }
}

/// Takes the longest valid UTF-8 prefix out of `buf` (invalid bytes become U+FFFD), leaving an
/// incomplete trailing sequence for the next chunk.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    match std::str::from_utf8(buf) {
        Ok(s) => {
            let s = s.to_owned();
            buf.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            let valid = e.valid_up_to();
            let s = String::from_utf8_lossy(&buf[..valid]).into_owned();
            buf.drain(..valid);
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let mut buf = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut buf), "");
        buf.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_utf8(&mut buf), "é");
        let mut bad = vec![b'a', 0xff, b'b'];
        assert_eq!(take_utf8(&mut bad), "a\u{fffd}b");
    }

    #[tokio::test]
    async fn a_recording_is_valid_asciicast_v2() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::start(dir.path(), "alice", 7, 80, 24, "xterm")
            .await
            .unwrap();
        assert!(r.output(b"hello \xc3").await);
        assert!(r.output(b"\xa9\r\n").await);
        assert!(r.resize(100, 30).await);
        let path = r.path().to_owned();
        drop(r);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let h: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(h["version"], 2);
        assert_eq!(h["width"], 80);
        let events: Vec<serde_json::Value> =
            lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        let out: String = events
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap())
            .collect();
        assert_eq!(out, "hello é\r\n");
        assert!(events.iter().any(|e| e[1] == "r" && e[2] == "100x30"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("alice-"));
    }
}
