//! Terminal screens drawn with ratatui: the fallback screen shown when the program cannot start,
//! and `demo-tui`, a small program to try the gateway without Hermes.

pub mod admin;
pub mod demo;
pub mod fallback;
