//! Per-user Unix accounts for tests that need them (root only): a per-run prefix, and every
//! account made with it removed again (`userdel -r`) on drop.

use std::process::Command;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the account tests create Unix accounts with useradd and need root (CI runs as root)"
    );
}

/// A per-test account prefix (unique per run and per test) and cleanup of what it created.
pub struct Accounts {
    pub prefix: String,
}

impl Accounts {
    pub fn new(tag: &str) -> Accounts {
        require_root();
        Accounts {
            prefix: format!("hgt{}{tag}-", std::process::id() % 100_000),
        }
    }
    pub fn name(&self, user: &str) -> String {
        format!("{}{user}", self.prefix)
    }
    pub fn passwd(&self, user: &str) -> Option<nix::unistd::User> {
        nix::unistd::User::from_name(&self.name(user)).unwrap()
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
            return;
        };
        for line in passwd.lines() {
            let name = line.split(':').next().unwrap_or("");
            if name.starts_with(&self.prefix) {
                let _ = Command::new("pkill").args(["-KILL", "-u", name]).status();
                let _ = Command::new("userdel").args(["-r", "-f", name]).output();
            }
        }
    }
}
