//! `hermes-ssh-gateway demo-tui`: shows the identity variables and terminal size it received and
//! redraws on resize. Useful as `[session] command` to try the gateway without Hermes.

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::Alignment;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph};

/// Variables worth showing, in this order; any other `*USER_ID*` variable follows.
const SHOWN: &[&str] = &[
    "HERMES_DASHBOARD_USER_ID",
    "HERMES_SESSION_USER_ID",
    "HERMES_HOME",
    "USER",
    "HOME",
    "TERM",
    "LANG",
];

fn lines(cols: u16, rows: u16) -> Vec<Line<'static>> {
    let label = Style::default().add_modifier(Modifier::BOLD);
    let mut names: Vec<String> = SHOWN.iter().map(|s| s.to_string()).collect();
    let mut extra: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.contains("USER_ID") && !names.contains(k))
        .collect();
    extra.sort();
    names.extend(extra);
    let mut out = vec![
        Line::from(vec![
            Span::styled("terminal  ", label),
            Span::raw(format!("{cols}x{rows}")),
        ]),
        Line::from(""),
    ];
    for name in names {
        let value = std::env::var(&name).unwrap_or_else(|_| "(unset)".into());
        out.push(Line::from(vec![
            Span::styled(format!("{name:<26}"), label),
            Span::styled(value, Style::default().fg(Color::Cyan)),
        ]));
    }
    out.push(Line::from(""));
    out.push(Line::from(Span::styled(
        "resize the window to see it redraw; q, Esc or Ctrl-D quits",
        Style::default().add_modifier(Modifier::DIM),
    )));
    out
}

/// Runs the demo on the current terminal until the user quits.
pub fn run() -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> std::io::Result<()> {
        loop {
            terminal.draw(|f| {
                let area = f.area();
                let block = Block::bordered()
                    .border_type(BorderType::Rounded)
                    .title(" hermes-ssh-gateway demo ")
                    .title_alignment(Alignment::Center);
                f.render_widget(
                    Paragraph::new(lines(area.width, area.height)).block(block),
                    area,
                );
            })?;
            if !event::poll(Duration::from_secs(1))? {
                continue;
            }
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => break,
                        KeyCode::Char('c') | KeyCode::Char('d') if ctrl => break,
                        _ => {}
                    }
                }
                // Resize and anything else: loop around and redraw.
                _ => {}
            }
        }
        Ok(())
    })();
    ratatui::try_restore()?;
    result
}
