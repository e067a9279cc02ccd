//! hermes-ssh-gateway: an SSH gateway that runs a terminal program (by default `hermes --tui`)
//! and tells it who is typing.
//!
//! Module map (arrows point one way): `ssh` → `identity`, `launcher` → `config`.
//! The identity core and the launcher know no front; `main.rs` only wires things.

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
