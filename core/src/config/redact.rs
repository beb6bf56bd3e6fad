//! Keeping credentials out of errors, logs and `Debug` output.

use std::fmt;

/// A credential. `Debug` and `Display` print `***`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces the password in any `scheme://user:password@host...` string with `***`, even when
/// the string is not a valid URL. Strings without credentials come back unchanged.
pub fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &raw[rest_start..];
    let Some(at) = rest.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &rest[..at];
    let host_part = &rest[at + 1..];
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{}{user}:***@{host_part}", &raw[..rest_start]),
        // A lone user position may hold a token (as some Redis URLs do): hide it too.
        None => format!("{}***@{host_part}", &raw[..rest_start]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@localhost:5672/"),
            "amqp://guest:***@localhost:5672/"
        );
        assert_eq!(
            redact_url("redis://:p@ss@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://token@host"), "redis://***@host");
        assert_eq!(redact_url("kafka://host:9092"), "kafka://host:9092");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
