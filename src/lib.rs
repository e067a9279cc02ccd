//! hermes-ssh-gateway: an SSH gateway that runs a terminal program (by default `hermes --tui`)
//! and tells it who is typing.
//!
//! Module map (every arrow points one way; nothing points back at a front):
//!
//! ```text
//! ssh ──┐                ┌─► identity   who someone is: keys, OIDC, tickets, shared state
//!       ├─► sessions ──► ├─► launcher   running a program for an identity, confined
//! web ──┘   (PTY core)   └─► ops        audit, metrics, live sessions, shutdown, admin socket
//! tui: screens (sign-in, picker, admin console)     config: gateway.toml as types
//! ```
//!
//! The fronts (`ssh`, `web`) never import each other; `identity` imports neither russh nor
//! axum; `launcher` knows no front. The binary's `main.rs` is the command line and its
//! `startup.rs` assembles these parts from a `Config`.

// Audited exceptions: launcher::process (registering owned fds with the reactor; the pre_exec
// hook), launcher::confine (the system calls the child makes before exec), launcher::reaper
// (ignoring signals), ops::memory (malloc_trim).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod fsutil;
pub mod identity;
pub mod launcher;
pub mod ops;
pub mod periodic;
pub mod sessions;
pub mod ssh;
pub mod tui;
pub mod web;

#[cfg(test)]
mod proptests;
