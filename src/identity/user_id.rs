//! The user id: validated once, then safe to put in environment values, log fields and a single
//! path component.

use std::fmt;

/// Longest user id accepted, in bytes.
pub const MAX_LEN: usize = 128;

/// A validated user id.
///
/// Invariants (checked by [`UserId::parse`], the only constructor): 1 to [`MAX_LEN`] bytes; no
/// control characters, whitespace, `/`, `\` or NUL; not `.` or `..`; not starting with `-`
/// (so it can never be read as an option). It can therefore be substituted into one path component
/// without escaping its parent directory, and into an environment value without breaking it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct UserId(String);

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        UserId::parse(&s)
    }
}

/// Why a string is not a valid user id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserId {
    /// Empty string.
    #[error("the user id is empty")]
    Empty,
    /// Over [`MAX_LEN`] bytes.
    #[error("the user id is longer than {MAX_LEN} bytes")]
    TooLong,
    /// `.` or `..`.
    #[error("the user id {0:?} is a relative path name")]
    Dots(String),
    /// Starts with `-`.
    #[error("the user id {0:?} starts with '-'")]
    LeadingDash(String),
    /// Contains a forbidden character.
    #[error("the user id {id:?} contains {what}")]
    BadChar {
        /// The rejected id (escaped by Debug when printed).
        id: String,
        /// A description of the offending character.
        what: &'static str,
    },
}

impl UserId {
    /// Validates `s` as a user id.
    pub fn parse(s: &str) -> Result<UserId, InvalidUserId> {
        if s.is_empty() {
            return Err(InvalidUserId::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(InvalidUserId::TooLong);
        }
        if s == "." || s == ".." {
            return Err(InvalidUserId::Dots(s.into()));
        }
        if s.starts_with('-') {
            return Err(InvalidUserId::LeadingDash(s.into()));
        }
        for c in s.chars() {
            let what = match c {
                '/' => "a '/' (path separator)",
                '\\' => "a '\\' (path separator)",
                c if c.is_control() => "a control character",
                c if c.is_whitespace() => "white space",
                _ => continue,
            };
            return Err(InvalidUserId::BadChar { id: s.into(), what });
        }
        Ok(UserId(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

impl std::str::FromStr for UserId {
    type Err = InvalidUserId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in [
            "alice",
            "alice@example.com",
            "auth0|1234",
            "Zoë",
            "a.b",
            "x..y",
            "_svc",
        ] {
            assert_eq!(UserId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_path_tricks_and_controls() {
        for bad in [
            "", ".", "..", "../root", "a/b", "a\\b", "a\nb", "a\tb", "a b", "a\0b", "-rf",
            "\u{7f}x", "a\u{85}b",
        ] {
            assert!(UserId::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(UserId::parse(&"x".repeat(MAX_LEN)).is_ok());
        assert_eq!(
            UserId::parse(&"x".repeat(MAX_LEN + 1)),
            Err(InvalidUserId::TooLong)
        );
    }
}
