//! Terminal screens drawn with ratatui: the fallback screen shown when the program cannot start,
//! the session picker, and `demo-tui`, a small program to try the gateway without Hermes.

pub mod admin;
pub mod demo;
pub mod fallback;
pub mod picker;

use ratatui::layout::Rect;

/// The widest screen the gateway draws itself (sign-in, fallback). ratatui keeps two buffers of
/// 48-byte cells for a screen, so 200×60 costs at most 1.2 MB, whatever size a client claims.
pub const MAX_SCREEN_COLS: u16 = 200;
/// The tallest screen the gateway draws itself.
pub const MAX_SCREEN_ROWS: u16 = 60;

/// The area a screen drawn by the gateway may cover in a client's `cols`×`rows` terminal.
///
/// The size comes from the client (up to 65535×65535), and ratatui allocates a cell buffer of
/// the whole area, twice: capping it keeps a screen's cost fixed whatever a client claims. A
/// smaller terminal gets exactly its own size, so the screen still fits; the `min_*` floors only
/// keep layouts from degenerating when a client reports a tiny window.
pub fn screen_area(cols: u16, rows: u16, min_cols: u16, min_rows: u16) -> Rect {
    Rect::new(
        0,
        0,
        cols.clamp(min_cols.min(MAX_SCREEN_COLS), MAX_SCREEN_COLS),
        rows.clamp(min_rows.min(MAX_SCREEN_ROWS), MAX_SCREEN_ROWS),
    )
}

/// `widget` drawn into `area` as terminal bytes (for screens sent over a channel, not a local
/// terminal); `None` when ratatui cannot draw it.
pub fn draw(area: Rect, widget: impl ratatui::widgets::Widget) -> Option<Vec<u8>> {
    use ratatui::backend::CrosstermBackend;
    use ratatui::{Terminal, TerminalOptions, Viewport};
    let mut term = Terminal::with_options(
        CrosstermBackend::new(Vec::<u8>::new()),
        TerminalOptions {
            viewport: Viewport::Fixed(area),
        },
    )
    .ok()?;
    term.draw(|f| f.render_widget(widget, f.area())).ok()?;
    Some(term.backend().writer().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sizes_are_capped_and_small_ones_kept() {
        let a = screen_area(u16::MAX, u16::MAX, 20, 6);
        assert_eq!((a.width, a.height), (MAX_SCREEN_COLS, MAX_SCREEN_ROWS));
        let a = screen_area(80, 24, 20, 6);
        assert_eq!((a.width, a.height), (80, 24));
        let a = screen_area(0, 0, 20, 6);
        assert_eq!((a.width, a.height), (20, 6));
    }
}
