//! `hermes-ssh-gateway sessions`: the live sessions of a running gateway, like `top`; select one
//! to watch it read-only (`w`) or end it (`e`). `--json` prints the list once for scripts,
//! `--watch ID` watches one directly. Talks to the admin socket.
//!
//! [`Console`] is the same view for an operator by identity (`ssh -t host admin`): the SSH
//! front feeds it keys and writes its frames, as with the session picker.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use serde::Deserialize;

use crate::ops::admin::request;

/// One session as the admin socket lists it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct SessionRow {
    /// Id (unique per node).
    pub id: u64,
    /// The gateway node running it (empty for a single node).
    #[serde(default)]
    pub node: String,
    /// User.
    pub user: String,
    /// Method.
    pub method: String,
    /// Front.
    pub front: String,
    /// Remote address.
    pub remote: String,
    /// Command.
    pub command: String,
    /// The Unix account the program runs as ("" until it has started, or from an older node).
    #[serde(default)]
    pub account: String,
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms.
    pub last_input_ms: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Clients attached (0: detached).
    #[serde(default = "one")]
    pub clients: u32,
    /// Read-only watchers.
    #[serde(default)]
    pub watchers: u32,
}

/// Older nodes report no client count: their sessions always have their one client.
fn one() -> u32 {
    1
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// The console's columns: heading and width.
const COLUMNS: [(&str, Constraint); 13] = [
    ("ID", Constraint::Length(5)),
    ("NODE", Constraint::Length(10)),
    ("USER", Constraint::Length(18)),
    ("ACCOUNT", Constraint::Length(16)),
    ("METHOD", Constraint::Length(13)),
    ("FRONT", Constraint::Length(5)),
    ("REMOTE", Constraint::Length(16)),
    ("STARTED", Constraint::Length(8)),
    ("IDLE", Constraint::Length(7)),
    ("STATE", Constraint::Length(12)),
    ("IN", Constraint::Length(10)),
    ("OUT", Constraint::Length(10)),
    ("COMMAND", Constraint::Fill(1)),
];

/// One session's cells, in the order of `COLUMNS`.
fn cells(r: &SessionRow) -> [String; 13] {
    [
        r.id.to_string(),
        r.node.clone(),
        r.user.clone(),
        r.account.clone(),
        r.method.clone(),
        r.front.clone(),
        r.remote.clone(),
        ago(r.started_ms),
        ago(r.last_input_ms),
        state(r),
        bytes(r.bytes_in),
        bytes(r.bytes_out),
        r.command.clone(),
    ]
}

/// "detached", "attached", "attached ×2", with "+1 w" for watchers.
fn state(r: &SessionRow) -> String {
    let mut s = match r.clients {
        0 => "detached".to_owned(),
        1 => "attached".to_owned(),
        n => format!("attached ×{n}"),
    };
    if r.watchers > 0 {
        s.push_str(&format!(" +{}w", r.watchers));
    }
    s
}

/// The table and the status line under it; `selected` is highlighted (and kept in view).
struct View<'a> {
    rows: &'a [SessionRow],
    selected: usize,
    status: &'a str,
    title: &'a str,
}

impl ratatui::widgets::Widget for View<'_> {
    fn render(self, area: ratatui::layout::Rect, buf: &mut ratatui::buffer::Buffer) {
        use ratatui::widgets::StatefulWidget;
        let [top, bottom] =
            Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
        let header = Row::new(
            COLUMNS
                .map(|(h, _)| Cell::from(h).style(Style::default().add_modifier(Modifier::BOLD))),
        );
        let body = self.rows.iter().map(|r| Row::new(cells(r)));
        let table = Table::new(body, COLUMNS.map(|(_, w)| w))
            .header(header)
            .row_highlight_style(Style::default().bg(Color::Blue).fg(Color::White))
            .block(Block::bordered().title(format!(" {} ({}) ", self.title, self.rows.len())));
        let mut state = TableState::default().with_selected(Some(self.selected));
        StatefulWidget::render(table, top, buf, &mut state);
        ratatui::widgets::Widget::render(Paragraph::new(Line::from(self.status)), bottom, buf);
    }
}

const HELP: &str = "↑/↓ select · w watch (q stops) · e end the selected session · q quit";

/// What an operator asked for in a [`Console`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAction {
    /// Leave the console.
    Quit,
    /// Watch this session (by the id the list shows).
    Watch(u64),
    /// End this session.
    End(u64),
}

/// The sessions console drawn into bytes, for a terminal at the other end of a channel.
#[derive(Debug)]
pub struct Console {
    rows: Vec<SessionRow>,
    selected: usize,
    /// The line under the table.
    pub status: String,
}

impl Console {
    /// A console over `rows`, the first selected.
    pub fn new(rows: Vec<SessionRow>) -> Console {
        Console {
            rows,
            selected: 0,
            status: HELP.into(),
        }
    }

    /// New rows (a refresh); the selection stays in range.
    pub fn set_rows(&mut self, rows: Vec<SessionRow>) {
        self.selected = self.selected.min(rows.len().saturating_sub(1));
        self.rows = rows;
    }

    /// Handles the bytes of one read from the terminal; `Some` for what needs the gateway.
    pub fn key(&mut self, mut bytes: &[u8]) -> Option<ConsoleAction> {
        while !bytes.is_empty() {
            // (bytes used, rows to move, what to do)
            let (step, by, act) = match bytes {
                [0x1b, b'[' | b'O', b'A', ..] => (3, -1, None),
                [0x1b, b'[' | b'O', b'B', ..] => (3, 1, None),
                [0x1b, b'[', b'3', b'~', ..] => (4, 0, Some('e')),
                [b'k', ..] => (1, -1, None),
                [b'j', ..] => (1, 1, None),
                [b'w' | b'\r' | b'\n', ..] => (1, 0, Some('w')),
                [b'e', ..] => (1, 0, Some('e')),
                [b'q' | 0x1b | 0x03 | 0x04, ..] => return Some(ConsoleAction::Quit),
                _ => (1, 0, None),
            };
            let last = self.rows.len().saturating_sub(1);
            self.selected = self.selected.saturating_add_signed(by).min(last);
            let id = self.rows.get(self.selected).map(|r| r.id);
            match (act, id) {
                (Some('w'), Some(id)) => return Some(ConsoleAction::Watch(id)),
                (Some(_), Some(id)) => return Some(ConsoleAction::End(id)),
                _ => {}
            }
            bytes = &bytes[step..];
        }
        None
    }

    /// The console drawn for a `cols`×`rows` terminal (alternate screen entered).
    pub fn render(&self, cols: u16, rows: u16) -> Vec<u8> {
        let mut out = super::picker::ENTER.to_vec();
        let area = super::screen_area(cols, rows, 60, 6);
        let view = View {
            rows: &self.rows,
            selected: self.selected,
            status: &self.status,
            title: "hermes-ssh-gateway sessions",
        };
        if let Some(drawn) = super::draw(area, view) {
            out.extend_from_slice(&drawn);
        }
        out
    }
}

/// The list, once.
pub fn fetch(socket: &Path) -> std::io::Result<Vec<SessionRow>> {
    let line = block_on(request(socket, "list"))??;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// Ends a session.
pub fn end(socket: &Path, id: u64) -> std::io::Result<bool> {
    let line = block_on(request(socket, &format!("end {id}")))??;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    Ok(v["ended"].as_bool().unwrap_or(false))
}

/// What to write after watching, so the operator's terminal is left as it was whatever modes the
/// watched program had set: main screen, no mouse reporting, no bracketed paste, normal keypad,
/// visible cursor, plain attributes.
pub const RESET_MODES: &[u8] =
    b"\x1b[?1049l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?1l\x1b>\x1b[?25h\x1b[0m\r\n";

/// Watches session `id` read-only in this terminal (it must be in raw mode) until `q` or
/// Ctrl-] is pressed or the session ends; returns the line to show afterwards.
pub fn watch(socket: &Path, id: u64) -> std::io::Result<String> {
    use std::io::{BufRead, Read, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    (&stream).write_all(format!("watch {id}\n").as_bytes())?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    reader.read_line(&mut head)?;
    let head: serde_json::Value = serde_json::from_str(&head).map_err(std::io::Error::other)?;
    if let Some(e) = head["error"].as_str() {
        return Ok(format!("error: {e}"));
    }
    let what = format!(
        "session {} of {} ({})",
        head["watching"],
        head["user"].as_str().unwrap_or("?"),
        head["session"].as_str().unwrap_or("?")
    );
    let copier = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let line = loop {
        if copier.is_finished() {
            break format!("{what} ended");
        }
        if !event::poll(Duration::from_millis(100))? {
            continue;
        }
        if let Event::Key(k) = event::read()? {
            let ctrl_bracket = k.code == KeyCode::Char(']')
                && k.modifiers
                    .contains(ratatui::crossterm::event::KeyModifiers::CONTROL);
            if k.kind == KeyEventKind::Press && (k.code == KeyCode::Char('q') || ctrl_bracket) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                break format!("stopped watching {what}");
            }
        }
    };
    let _ = copier.join();
    let mut out = std::io::stdout();
    out.write_all(RESET_MODES)?;
    out.flush()?;
    Ok(line)
}

/// [`watch`] from a plain shell: raw mode for the keys, and the closing line printed after.
pub fn watch_in_raw_mode(socket: &Path, id: u64) -> std::io::Result<()> {
    ratatui::crossterm::terminal::enable_raw_mode()?;
    let line = watch(socket, id);
    ratatui::crossterm::terminal::disable_raw_mode()?;
    println!("{}", line?);
    Ok(())
}

fn ago(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The interactive view.
pub fn run(socket: &Path) -> std::io::Result<()> {
    // Fail before touching the terminal when the gateway is not there.
    let mut rows = fetch(socket)?;
    let mut terminal = ratatui::try_init()?;
    let mut state = TableState::default().with_selected(Some(0));
    let mut status = String::from(HELP);
    let result = (|| -> std::io::Result<()> {
        loop {
            terminal.draw(|f| {
                let view = View {
                    rows: &rows,
                    selected: state.selected().unwrap_or(0),
                    status: &status,
                    title: "hermes-ssh-gateway sessions",
                };
                f.render_widget(view, f.area());
            })?;
            if event::poll(Duration::from_secs(1))? {
                if let Event::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Down | KeyCode::Char('j') => state.select_next(),
                        KeyCode::Up | KeyCode::Char('k') => state.select_previous(),
                        KeyCode::Char('w') | KeyCode::Enter => {
                            if let Some(id) =
                                state.selected().and_then(|i| rows.get(i)).map(|r| r.id)
                            {
                                // The watched screen replaces the table until the operator is done.
                                terminal.clear()?;
                                status =
                                    watch(socket, id).unwrap_or_else(|e| format!("error: {e}"));
                                terminal.clear()?;
                            }
                        }
                        KeyCode::Char('e') | KeyCode::Delete => {
                            if let Some(r) = state.selected().and_then(|i| rows.get(i)) {
                                status = match end(socket, r.id) {
                                    Ok(true) => format!("ended session {} of {}", r.id, r.user),
                                    Ok(false) => format!("session {} is already gone", r.id),
                                    Err(e) => format!("error: {e}"),
                                };
                            }
                        }
                        _ => {}
                    }
                }
            }
            rows = fetch(socket)?;
            if state.selected().is_some_and(|i| i >= rows.len()) {
                state.select(Some(rows.len().saturating_sub(1)));
            }
        }
    })();
    ratatui::try_restore()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_heading_sits_over_its_own_value() {
        let row = SessionRow {
            id: 7,
            node: "node-a".into(),
            user: "alice".into(),
            method: "key".into(),
            front: "ssh".into(),
            remote: "127.0.0.1:5000".into(),
            command: "hermes --tui".into(),
            account: "hermes-alice".into(),
            started_ms: 0,
            last_input_ms: 0,
            bytes_in: 0,
            bytes_out: 0,
            clients: 0,
            watchers: 1,
        };
        let cells = cells(&row);
        let at = |h: &str| {
            let i = COLUMNS.iter().position(|(c, _)| *c == h).unwrap();
            cells[i].clone()
        };
        assert_eq!(at("ID"), "7");
        assert_eq!(at("NODE"), "node-a");
        assert_eq!(at("USER"), "alice");
        assert_eq!(at("ACCOUNT"), "hermes-alice");
        assert_eq!(at("STATE"), "detached +1w");
        assert_eq!(at("METHOD"), "key");
        assert_eq!(at("FRONT"), "ssh");
        assert_eq!(at("REMOTE"), "127.0.0.1:5000");
        assert_eq!(at("COMMAND"), "hermes --tui");
    }

    #[test]
    fn rows_from_a_node_without_accounts_still_parse() {
        let json = r#"{"id":1,"user":"bob","method":"key","front":"ssh","remote":"r",
            "command":"c","started_ms":1,"last_input_ms":1,"bytes_in":0,"bytes_out":0}"#;
        let row: SessionRow = serde_json::from_str(json).unwrap();
        assert_eq!(row.account, "");
        assert_eq!(row.node, "");
    }
}
