//! The session picker: shown at login when the user has several detached sessions. Rendering
//! and key handling only; the front feeds it keys and writes its frames.

use ratatui::layout::Alignment;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph};

pub use super::fallback::{ENTER, LEAVE};

/// One row of the picker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The session id.
    pub id: String,
    /// When it started, as shown ("14:02 UTC").
    pub started: String,
    /// How long since its last output, as shown ("3m ago").
    pub last_output: String,
    /// The command.
    pub command: String,
}

/// What the user chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Attach the session at this index.
    Attach(usize),
    /// Start a new session.
    New,
    /// Leave without either.
    Quit,
}

/// The picker's state.
#[derive(Debug)]
pub struct Picker {
    entries: Vec<Entry>,
    selected: usize,
}

impl Picker {
    /// A picker over `entries` (most recently active first), the first one selected.
    pub fn new(entries: Vec<Entry>) -> Picker {
        Picker {
            entries,
            selected: 0,
        }
    }

    /// Handles the bytes of one read from the terminal (several keys may arrive at once);
    /// `Some` once the user decided.
    pub fn key(&mut self, mut bytes: &[u8]) -> Option<Choice> {
        while let Some(&b) = bytes.first() {
            let (up, down) = (self.selected.saturating_sub(1), self.selected + 1);
            let (step, choice) = match bytes {
                [0x1b, b'[' | b'O', b'A', ..] => (3, Some(up)),
                [0x1b, b'[' | b'O', b'B', ..] => (3, Some(down)),
                _ => match b {
                    b'\r' | b'\n' => return Some(Choice::Attach(self.selected)),
                    b'n' | b'N' => return Some(Choice::New),
                    b'q' | 0x03 | 0x04 => return Some(Choice::Quit),
                    b'k' => (1, Some(up)),
                    b'j' => (1, Some(down)),
                    _ => (1, None),
                },
            };
            if let Some(to) = choice {
                self.selected = to.min(self.entries.len().saturating_sub(1));
            }
            bytes = &bytes[step..];
        }
        None
    }

    /// The picker drawn for a `cols`×`rows` terminal (alternate screen entered).
    pub fn render(&self, cols: u16, rows: u16) -> Vec<u8> {
        let mut out = ENTER.to_vec();
        let height = (self.entries.len() as u16).saturating_add(6);
        let area = super::screen_area(cols, rows.min(height), 40, 6);
        if let Some(drawn) = super::draw(area, self.widget()) {
            out.extend_from_slice(&drawn);
        }
        out
    }

    fn widget(&self) -> Paragraph<'static> {
        let mut lines = vec![Line::from(Span::styled(
            "  id       started     last output  command",
            Style::default().add_modifier(Modifier::DIM),
        ))];
        for (i, e) in self.entries.iter().enumerate() {
            let text = format!(
                "{} {:<8} {:<11} {:<12} {}",
                if i == self.selected { ">" } else { " " },
                e.id,
                e.started,
                e.last_output,
                e.command
            );
            let style = if i == self.selected {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            };
            lines.push(Line::from(Span::styled(text, style)));
        }
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(
            "Enter: attach   n: new session   q: quit",
            Style::default().add_modifier(Modifier::DIM),
        )));
        Paragraph::new(lines).block(
            Block::bordered()
                .border_type(BorderType::Rounded)
                .title(" Your sessions ")
                .title_alignment(Alignment::Center)
                .border_style(Style::default().fg(Color::Cyan)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            started: "14:02 UTC".into(),
            last_output: "1m ago".into(),
            command: "hermes --tui".into(),
        }
    }

    #[test]
    fn arrows_move_enter_attaches_n_starts_q_quits() {
        let mut p = Picker::new(vec![entry("aaaaaa"), entry("bbbbbb")]);
        assert_eq!(p.key(b"\x1b[B"), None);
        assert_eq!(p.key(b"\x1b[B"), None, "stays on the last");
        assert_eq!(p.key(b"\r"), Some(Choice::Attach(1)));
        assert_eq!(p.key(b"\x1b[A"), None);
        assert_eq!(p.key(b"\r"), Some(Choice::Attach(0)));
        assert_eq!(p.key(b"n"), Some(Choice::New));
        assert_eq!(p.key(b"q"), Some(Choice::Quit));
        // Keys that arrive in one read.
        let mut p = Picker::new(vec![entry("aaaaaa"), entry("bbbbbb")]);
        assert_eq!(p.key(b"\x1b[B\r"), Some(Choice::Attach(1)));
        let drawn = String::from_utf8_lossy(&p.render(80, 24)).to_string();
        assert!(
            drawn.contains("aaaaaa") && drawn.contains("bbbbbb"),
            "{drawn}"
        );
    }
}
