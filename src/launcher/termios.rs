//! The client's terminal modes, applied to a new PTY.
//!
//! portable-pty has no API for them, and ignoring them shows `^H` where the client's erase key
//! sends Backspace, so the important ones are applied with termios on the master side. The
//! types are plain data: a front translates its protocol's encoding into them.

use std::os::fd::AsFd;

use nix::sys::termios::{
    self, InputFlags, LocalFlags, OutputFlags, SetArg, SpecialCharacterIndices,
};

/// A special character the client may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlChar {
    /// Interrupt (^C).
    Intr,
    /// Quit (^\).
    Quit,
    /// Erase one character (^? or ^H).
    Erase,
    /// Erase the line (^U).
    Kill,
    /// End of file (^D).
    Eof,
    /// Suspend (^Z).
    Susp,
    /// Erase a word (^W).
    Werase,
    /// Literal next (^V).
    Lnext,
    /// Reprint the line (^R).
    Rprnt,
}

/// A boolean terminal flag the client may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeFlag {
    /// Map CR to NL on input.
    Icrnl,
    /// XON/XOFF flow control.
    Ixon,
    /// Input is UTF-8 (erase removes whole characters).
    Iutf8,
    /// Signals from INTR/QUIT/SUSP.
    Isig,
    /// Canonical (line) mode.
    Icanon,
    /// Echo input.
    Echo,
    /// Echo erase as backspace-space-backspace.
    Echoe,
    /// Echo NL after KILL.
    Echok,
    /// Output post-processing.
    Opost,
    /// Map NL to CR-NL on output.
    Onlcr,
}

/// Modes requested by the client; anything not listed keeps the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalModes {
    /// Special characters (a value of 255 disables one, as in RFC 4254).
    pub chars: Vec<(ControlChar, u8)>,
    /// Flags.
    pub flags: Vec<(ModeFlag, bool)>,
}

impl TerminalModes {
    /// Applies the modes to the terminal behind `fd`.
    pub fn apply<Fd: AsFd>(&self, fd: Fd) -> nix::Result<()> {
        if self.chars.is_empty() && self.flags.is_empty() {
            return Ok(());
        }
        let mut t = termios::tcgetattr(&fd)?;
        for &(c, v) in &self.chars {
            let idx = match c {
                ControlChar::Intr => SpecialCharacterIndices::VINTR,
                ControlChar::Quit => SpecialCharacterIndices::VQUIT,
                ControlChar::Erase => SpecialCharacterIndices::VERASE,
                ControlChar::Kill => SpecialCharacterIndices::VKILL,
                ControlChar::Eof => SpecialCharacterIndices::VEOF,
                ControlChar::Susp => SpecialCharacterIndices::VSUSP,
                ControlChar::Werase => SpecialCharacterIndices::VWERASE,
                ControlChar::Lnext => SpecialCharacterIndices::VLNEXT,
                ControlChar::Rprnt => SpecialCharacterIndices::VREPRINT,
            };
            // 255 means "disabled" on the wire; the kernel spells that _POSIX_VDISABLE (0).
            t.control_chars[idx as usize] = if v == 255 { 0 } else { v };
        }
        for &(f, on) in &self.flags {
            match f {
                ModeFlag::Icrnl => t.input_flags.set(InputFlags::ICRNL, on),
                ModeFlag::Ixon => t.input_flags.set(InputFlags::IXON, on),
                ModeFlag::Iutf8 => t.input_flags.set(InputFlags::IUTF8, on),
                ModeFlag::Isig => t.local_flags.set(LocalFlags::ISIG, on),
                ModeFlag::Icanon => t.local_flags.set(LocalFlags::ICANON, on),
                ModeFlag::Echo => t.local_flags.set(LocalFlags::ECHO, on),
                ModeFlag::Echoe => t.local_flags.set(LocalFlags::ECHOE, on),
                ModeFlag::Echok => t.local_flags.set(LocalFlags::ECHOK, on),
                ModeFlag::Opost => t.output_flags.set(OutputFlags::OPOST, on),
                ModeFlag::Onlcr => t.output_flags.set(OutputFlags::ONLCR, on),
            }
        }
        termios::tcsetattr(&fd, SetArg::TCSANOW, &t)
    }
}
