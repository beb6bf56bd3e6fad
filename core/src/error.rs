//! Typed errors of the engine. Every message is safe to show: URLs in it are redacted.

use std::time::Duration;

/// The result type used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A broker URL or option could not be understood. `part` names what is wrong.
    #[error("invalid configuration ({part}): {reason}")]
    Config {
        /// The part of the configuration that is wrong, e.g. `scheme`, `port`, `mode`.
        part: String,
        /// Why it is wrong, with the redacted input where useful.
        reason: String,
    },
    /// A message was rejected before it reached a broker (empty topic, bad header...).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A subscription request was rejected (no topics, zero concurrency...).
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    /// The backend for this URL is not compiled into this build.
    #[error("the {backend} backend is not enabled in this build (cargo feature `{feature}`)")]
    BackendNotEnabled {
        /// Backend name, e.g. `kafka`.
        backend: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },
    /// The backend cannot do what was asked (see [`crate::Capabilities`]).
    #[error("the {backend} backend does not support {feature}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked for.
        feature: String,
    },
    /// The broker could not be reached or the connection was lost.
    #[error("connection to {target} failed: {reason}")]
    Connection {
        /// The redacted address.
        target: String,
        /// What the client library said.
        reason: String,
    },
    /// The broker refused or failed an operation.
    #[error("{backend} broker error: {reason}")]
    Broker {
        /// Backend name.
        backend: &'static str,
        /// What the broker said.
        reason: String,
    },
    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        operation: String,
        /// How long we waited.
        after: Duration,
    },
    /// The producer, subscription or broker was already closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// A payload could not be encoded or decoded.
    #[error("payload codec error: {0}")]
    Codec(String),
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(part: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            part: part.into(),
            reason: reason.into(),
        }
    }

    /// True when retrying the same operation later may succeed (connection loss, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Codec(err.to_string())
    }
}
