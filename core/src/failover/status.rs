//! What a [`FailoverBroker`](super::FailoverBroker) is doing, for `status()` and its watch channel.

use std::fmt;

/// Where publishes go right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FailoverState {
    /// Straight to the primary; the spool is empty.
    #[default]
    Primary,
    /// To the spool: the primary is unreachable.
    Spooling,
    /// To the spool, while the spool is replayed to the primary, which is reachable again.
    Replaying,
}

impl FailoverState {
    /// `primary`, `spooling` or `replaying`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverState::Primary => "primary",
            FailoverState::Spooling => "spooling",
            FailoverState::Replaying => "replaying",
        }
    }
}

impl fmt::Display for FailoverState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a [`FailoverBroker`](super::FailoverBroker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverStatus {
    /// Where publishes go.
    pub state: FailoverState,
    /// Messages in the spool, not yet replayed.
    pub spool_depth: u64,
    /// Disk space the spool's segment files take.
    pub spool_bytes: u64,
    /// Messages replayed to the primary since this broker was opened.
    pub replayed_total: u64,
    /// Messages spooled since this broker was opened.
    pub spooled_total: u64,
    /// The last error from the primary that sent messages to the spool or held up a replay.
    pub last_error: Option<String>,
}
