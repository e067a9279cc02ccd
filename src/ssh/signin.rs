//! The in-session device sign-in: draws the URL, the code and a QR code as channel data (a
//! ratatui screen on a PTY, plain text on stderr otherwise), polls the IdP, and returns the
//! identity the moment it approves.
//!
//! Channel data is the one thing every OpenSSH client shows as is, whatever its LogLevel
//! (keyboard-interactive text is hidden by `-q` and octal-escapes every non-ASCII byte), and it
//! needs no Enter key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph, Wrap};
use ratatui::{Terminal, TerminalOptions, Viewport};
use russh::server::Msg;
use russh::ChannelWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::oidc::{Approved, Challenge, FlowError, Oidc};
use crate::launcher::TermSize;
use crate::tui::fallback::{ENTER, LEAVE};

/// Keys that cancel a sign-in: q, Q, Ctrl-C, Ctrl-D, Esc.
fn is_cancel(data: &[u8]) -> bool {
    data.iter().any(|b| matches!(b, b'q' | b'Q' | 0x03 | 0x04)) || data == [0x1b]
}

/// The QR code of `uri` as lines of Unicode half blocks (two modules per character cell),
/// with the quiet zone. Dark modules are the glyphs' foreground.
pub fn qr_lines(uri: &str) -> Option<Vec<String>> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    let text = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    Some(text.lines().map(str::to_owned).collect())
}

fn countdown(left: Duration) -> String {
    let s = left.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// The sign-in screen, drawn into bytes for a terminal of a given size.
struct Screen {
    term: Option<Terminal<CrosstermBackend<Vec<u8>>>>,
    size: Option<TermSize>,
    qr: Option<Vec<String>>,
    /// Which key will be remembered, and until when.
    note: Option<String>,
}

impl Screen {
    fn new(challenge: &Challenge, note: Option<String>) -> Screen {
        Screen {
            term: None,
            size: None,
            qr: qr_lines(challenge.best_uri()),
            note,
        }
    }

    /// Rows the text box and the QR code take at `width` columns (wrapped text included).
    fn rows_needed(&self, challenge: &Challenge, status: &str, width: u16) -> u16 {
        let text = text_lines(challenge, status, self.note.as_deref());
        let qr = self.qr.as_ref().map_or(0, Vec::len) as u16;
        (wrapped_rows(&text, width) + 2).saturating_add(qr)
    }

    /// The bytes that bring the client's screen up to date (a full repaint after a resize).
    fn frame(&mut self, challenge: &Challenge, size: TermSize, status: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if self.size != Some(size) || self.term.is_none() {
            // Only as tall as the content: a pending connection keeps this screen for minutes.
            let mut area = crate::tui::screen_area(size.cols, size.rows, 20, 6);
            area.height = area
                .height
                .min(self.rows_needed(challenge, status, area.width).max(6));
            self.term = Terminal::with_options(
                CrosstermBackend::new(Vec::new()),
                TerminalOptions {
                    viewport: Viewport::Fixed(area),
                },
            )
            .ok();
            self.size = Some(size);
            out.extend_from_slice(ENTER);
        }
        let Some(term) = self.term.as_mut() else {
            return out;
        };
        let qr = self.qr.clone();
        let note = self.note.clone();
        let drawn = term.draw(|f| {
            let area = f.area();
            let text = text_lines(challenge, status, note.as_deref());
            let text_height = wrapped_rows(&text, area.width) + 2;
            let qr_fits = qr.as_ref().is_some_and(|q| {
                let w = q.first().map(|l| l.chars().count()).unwrap_or(0) as u16;
                q.len() as u16 + text_height <= area.height && w + 4 <= area.width
            });
            let [top, bottom] = Layout::vertical([
                Constraint::Length(text_height.min(area.height)),
                Constraint::Fill(1),
            ])
            .areas(area);
            let block = Block::bordered()
                .border_type(BorderType::Rounded)
                .title(" Sign in to Hermes ")
                .border_style(Style::default().fg(Color::Cyan));
            f.render_widget(
                Paragraph::new(text).block(block).wrap(Wrap { trim: false }),
                top,
            );
            if let (true, Some(q)) = (qr_fits, qr.as_ref()) {
                let w = q.first().map(|l| l.chars().count()).unwrap_or(0) as u16;
                let h = (q.len() as u16).min(bottom.height);
                let x = bottom.x + 2;
                let qr_area = Rect::new(x, bottom.y, w.min(bottom.width.saturating_sub(2)), h);
                let lines: Vec<Line> = q.iter().map(|l| Line::from(l.clone())).collect();
                // Black on white whatever the terminal's theme: scanners need dark-on-light.
                f.render_widget(
                    Paragraph::new(lines).style(Style::default().fg(Color::Black).bg(Color::White)),
                    qr_area,
                );
            }
        });
        if drawn.is_ok() {
            out.append(term.backend_mut().writer_mut());
        }
        out
    }
}

/// Rows `lines` take inside a box `width` columns wide, word-wrapped (a wrapped line may need
/// a row more than its length alone says, since words are not split).
fn wrapped_rows(lines: &[Line<'_>], width: u16) -> u16 {
    let inner = usize::from(width.saturating_sub(2).max(1));
    let rows: usize = lines
        .iter()
        .map(|l| match l.width() {
            w if w <= inner => 1,
            w => w.div_ceil(inner) + 1,
        })
        .sum();
    u16::try_from(rows).unwrap_or(u16::MAX)
}

fn text_lines(challenge: &Challenge, status: &str, note: Option<&str>) -> Vec<Line<'static>> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let code = Style::default()
        .fg(Color::Yellow)
        .add_modifier(Modifier::BOLD);
    let mut lines = Vec::new();
    // Without a complete URL (Google, Entra ID) the code must be typed: one line says both.
    let go = if challenge.verification_uri_complete.is_some() {
        lines.push(Line::from(vec![
            Span::raw("Open "),
            Span::styled(challenge.best_uri().to_owned(), bold),
            Span::raw(" on any device,"),
        ]));
        "or go to "
    } else {
        "Go to "
    };
    lines.push(Line::from(vec![
        Span::raw(go),
        Span::styled(challenge.verification_uri.clone(), bold),
        Span::raw(" and enter  "),
        Span::styled(challenge.user_code.clone(), code),
    ]));
    lines.push(Line::from(""));
    if let Some(n) = note {
        lines.push(Line::from(n.to_owned()));
    }
    lines.push(Line::from(Span::styled(
        status.to_owned(),
        Style::default().add_modifier(Modifier::DIM),
    )));
    lines
}

/// The same as text lines for a session without a PTY.
pub fn plain_text(challenge: &Challenge, note: Option<&str>) -> String {
    let mut s = String::from("\r\n  Sign in to Hermes\r\n");
    let go = match &challenge.verification_uri_complete {
        Some(complete) => format!("  Open {complete} on any device,\r\n  or go to "),
        None => "  Go to ".to_owned(),
    };
    s.push_str(&format!(
        "{go}{} and enter  {}\r\n\r\n",
        challenge.verification_uri, challenge.user_code
    ));
    if let Some(qr) = qr_lines(challenge.best_uri()) {
        for l in qr {
            // Black on white whatever the terminal's theme: scanners need dark-on-light.
            s.push_str("  \x1b[30;107m");
            s.push_str(&l);
            s.push_str("\x1b[0m\r\n");
        }
    }
    if let Some(n) = note {
        s.push_str(&format!("  {n}\r\n"));
    }
    let left = challenge
        .expires_at
        .saturating_duration_since(Instant::now());
    s.push_str(&format!(
        "  Waiting for approval… (the code expires in {})\r\n",
        countdown(left)
    ));
    s
}

/// Where the sign-in draws and reads.
pub struct SigninIo<'a> {
    /// The session channel.
    pub writer: &'a ChannelWriteHalf<Msg>,
    /// What the user types.
    pub input: &'a mut mpsc::Receiver<Bytes>,
    /// Cancelled when the client goes away.
    pub closed: &'a CancellationToken,
    /// The terminal size, when there is a PTY.
    pub size: Option<Box<dyn Fn() -> TermSize + Send + 'a>>,
    /// A line saying which key will be remembered after the sign-in, and until when.
    pub note: Option<String>,
}

/// Runs a device sign-in in this channel. The screen is left before returning.
pub async fn run(io: SigninIo<'_>, oidc: &Arc<Oidc>) -> Result<Approved, FlowError> {
    let SigninIo {
        writer,
        input,
        closed,
        size,
        note,
    } = io;
    let send = |bytes: Vec<u8>| async move {
        let _ = writer.data_bytes(Bytes::from(bytes)).await;
    };

    let flow = tokio::select! {
        f = oidc.start_device_flow() => f?,
        _ = closed.cancelled() => return Err(FlowError::Cancelled),
    };
    let challenge = flow.challenge().clone();
    // The user code is a bearer secret until it expires (whoever types it first approves the
    // sign-in), so it stays out of info-level logs that are often shipped elsewhere.
    tracing::info!("device sign-in started");
    tracing::debug!(user_code = %challenge.user_code, "device sign-in code");

    let mut screen = Screen::new(&challenge, note.clone());
    let status = |left: Duration| {
        format!(
            "Waiting for approval… {} left   (q to cancel)",
            countdown(left)
        )
    };
    match &size {
        Some(size) => {
            let left = challenge
                .expires_at
                .saturating_duration_since(Instant::now());
            send(screen.frame(&challenge, size(), &status(left))).await;
        }
        None => {
            let _ = writer
                .extended_data_bytes(1, Bytes::from(plain_text(&challenge, note.as_deref())))
                .await;
        }
    }

    let wait = flow.wait();
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut input_open = true;
    let result = loop {
        tokio::select! {
            r = &mut wait => break r,
            _ = closed.cancelled() => break Err(FlowError::Cancelled),
            data = input.recv(), if input_open => match data {
                Some(d) if is_cancel(&d) => break Err(FlowError::Cancelled),
                Some(_) => {}
                None => input_open = false,
            },
            _ = tick.tick() => {
                if let Some(size) = &size {
                    let left = challenge.expires_at.saturating_duration_since(Instant::now());
                    send(screen.frame(&challenge, size(), &status(left))).await;
                }
            }
        }
    };
    if size.is_some() {
        send(LEAVE.to_vec()).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge {
            verification_uri: "https://idp.example.com/device".into(),
            verification_uri_complete: Some(
                "https://idp.example.com/device?user_code=WDJB-MJHT".into(),
            ),
            user_code: "WDJB-MJHT".into(),
            expires_at: Instant::now() + Duration::from_secs(600),
            interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn plain_text_has_url_code_and_qr() {
        let t = plain_text(&challenge(), Some("This key will be remembered"));
        assert!(t.contains("This key will be remembered"));
        assert!(t.contains("https://idp.example.com/device?user_code=WDJB-MJHT"));
        assert!(t.contains("enter  WDJB-MJHT"));
        assert!(t.contains('█') || t.contains('▀'));
        assert!(t.contains("10:00") || t.contains("9:59"));
    }

    #[test]
    fn cancel_keys() {
        assert!(is_cancel(b"q") && is_cancel(&[3]) && is_cancel(&[0x1b]));
        assert!(!is_cancel(b"x") && !is_cancel(b"\x1b[A"));
    }

    #[test]
    fn screen_draws_and_redraws_only_changes() {
        let c = challenge();
        let mut s = Screen::new(&c, None);
        let size = TermSize::clamped(100, 40, 0, 0);
        let first = s.frame(&c, size, "Waiting… 10:00 left");
        assert!(first.starts_with(ENTER));
        let second = s.frame(&c, size, "Waiting… 9:59 left");
        assert!(!second.starts_with(ENTER));
        assert!(second.len() < first.len() / 4, "only the countdown changes");
    }
}
