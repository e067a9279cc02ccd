//! The screen a user sees when the configured program cannot be started.
//!
//! It is rendered into bytes (ANSI escapes) for a terminal of the client's size, so the SSH front
//! can send it as channel data; a plain-text version serves sessions without a PTY.

use ratatui::layout::Alignment;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph, Wrap};

use crate::identity::Identity;
use crate::launcher::LaunchError;

/// Bytes that switch to the alternate screen, clear it and hide the cursor.
pub const ENTER: &[u8] = b"\x1b[?1049h\x1b[2J\x1b[H\x1b[?25l";
/// Bytes that restore the cursor and leave the alternate screen.
pub const LEAVE: &[u8] = b"\x1b[0m\x1b[?25h\x1b[?1049l";

fn hint(error: &LaunchError) -> &'static str {
    match error {
        LaunchError::NotFound { .. } => {
            "Install the program for the account the gateway runs as (for Hermes: pip install hermes-agent), or set [session] command in gateway.toml."
        }
        LaunchError::NotExecutable { .. } => {
            "Make the program executable (chmod +x) for the account the gateway runs as, or point [session] command at the right file."
        }
        LaunchError::Workdir { .. } => {
            "Check [session] workdir in gateway.toml and the permissions of its parent directory."
        }
        LaunchError::Account(_) => {
            "Ask the operator to create your account, or to set [session] create_accounts / [session.accounts] in gateway.toml."
        }
        LaunchError::Limits(_) => {
            "The gateway could not set up resource limits; the operator should check [session.limits] and the gateway's log."
        }
        LaunchError::Sandbox(_) => {
            "The gateway could not set up the sandbox your program runs in; the operator should check [session.sandbox] and the gateway's log."
        }
        LaunchError::Other(_) => "See the gateway's log for details.",
    }
}

fn who(identity: &Identity) -> String {
    match &identity.key_fingerprint {
        Some(fp) => format!(
            "{} (signed in by {}, {fp})",
            identity.user_id, identity.method
        ),
        None => format!("{} (signed in by {})", identity.user_id, identity.method),
    }
}

/// The screen as terminal bytes for a `cols`×`rows` terminal (alternate screen entered).
pub fn render(
    identity: &Identity,
    command: &str,
    error: &LaunchError,
    cols: u16,
    rows: u16,
) -> Vec<u8> {
    let mut out = ENTER.to_vec();
    let area = super::screen_area(cols, rows, 20, 8);
    match super::draw(area, screen(identity, command, error)) {
        Some(drawn) => out.extend_from_slice(&drawn),
        None => out.extend_from_slice(plain(identity, command, error).as_bytes()),
    }
    out
}

/// The screen's widget (shared by the renderer and the tests).
fn screen<'a>(identity: &Identity, command: &str, error: &LaunchError) -> Paragraph<'a> {
    let label = Style::default().add_modifier(Modifier::BOLD);
    let lines = vec![
        Line::from(vec![
            Span::styled("You are  ", label),
            Span::raw(who(identity)),
        ]),
        Line::from(""),
        Line::from(vec![
            Span::styled("Program  ", label),
            Span::raw(command.to_owned()),
        ]),
        Line::from(vec![
            Span::styled("Problem  ", label),
            Span::styled(error.to_string(), Style::default().fg(Color::Red)),
        ]),
        Line::from(""),
        Line::from(vec![
            Span::styled("Operator ", label),
            Span::raw(hint(error)),
        ]),
        Line::from(""),
        Line::from(Span::styled(
            "Press any key to disconnect.",
            Style::default().add_modifier(Modifier::DIM),
        )),
    ];
    let block = Block::bordered()
        .border_type(BorderType::Rounded)
        .title(" Hermes could not be started ")
        .title_alignment(Alignment::Center)
        .border_style(Style::default().fg(Color::Yellow));
    Paragraph::new(lines)
        .block(block)
        .wrap(Wrap { trim: false })
}

/// The same information as plain text lines (for sessions without a PTY).
pub fn plain(identity: &Identity, command: &str, error: &LaunchError) -> String {
    format!(
        "hermes-ssh-gateway: cannot start {command:?} for {}: {error}\r\nhermes-ssh-gateway: {}\r\n",
        who(identity),
        hint(error)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::UserId;

    #[test]
    fn screen_names_user_program_and_fix() {
        let id = Identity::from_mapped_key(UserId::parse("alice").unwrap(), "SHA256:abc".into());
        let err = LaunchError::NotFound {
            program: "hermes".into(),
            path: "/usr/bin".into(),
        };
        let backend = ratatui::backend::TestBackend::new(220, 20);
        let mut term = ratatui::Terminal::new(backend).unwrap();
        term.draw(|f| f.render_widget(screen(&id, "hermes --tui", &err), f.area()))
            .unwrap();
        let buf = term.backend().buffer();
        let text: String = buf.content().iter().map(|c| c.symbol()).collect();
        assert!(render(&id, "hermes --tui", &err, 100, 20).starts_with(ENTER));
        for needle in [
            "alice",
            "hermes --tui",
            "not found",
            "pip install hermes-agent",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
        assert!(plain(&id, "hermes --tui", &err).contains("alice"));
    }
}
