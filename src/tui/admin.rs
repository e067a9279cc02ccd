//! `hermes-ssh-gateway sessions`: the live sessions of a running gateway, like `top`; select one
//! and end it. `--json` prints the list once for scripts. Talks to the admin socket.

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
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms.
    pub last_input_ms: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
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
    let mut status = String::from("↑/↓ select · e end the selected session · q quit");
    let result = (|| -> std::io::Result<()> {
        loop {
            terminal.draw(|f| {
                let [top, bottom] =
                    Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(f.area());
                let header = Row::new(
                    [
                        "ID", "USER", "METHOD", "FRONT", "REMOTE", "STARTED", "IDLE", "IN", "OUT",
                        "COMMAND",
                    ]
                    .map(|h| Cell::from(h).style(Style::default().add_modifier(Modifier::BOLD))),
                );
                let body = rows.iter().map(|r| {
                    Row::new(vec![
                        r.id.to_string(),
                        r.node.clone(),
                        r.user.clone(),
                        r.method.clone(),
                        r.front.clone(),
                        r.remote.clone(),
                        ago(r.started_ms),
                        ago(r.last_input_ms),
                        bytes(r.bytes_in),
                        bytes(r.bytes_out),
                        r.command.clone(),
                    ])
                });
                let widths = [
                    Constraint::Length(5),
                    Constraint::Length(10),
                    Constraint::Length(18),
                    Constraint::Length(13),
                    Constraint::Length(5),
                    Constraint::Length(16),
                    Constraint::Length(8),
                    Constraint::Length(7),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Fill(1),
                ];
                let table = Table::new(body, widths)
                    .header(header)
                    .row_highlight_style(Style::default().bg(Color::Blue).fg(Color::White))
                    .block(
                        Block::bordered()
                            .title(format!(" hermes-ssh-gateway sessions ({}) ", rows.len())),
                    );
                f.render_stateful_widget(table, top, &mut state);
                f.render_widget(Paragraph::new(Line::from(status.clone())), bottom);
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
