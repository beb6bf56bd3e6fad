//! How librdkafka's client errors are logged.
//!
//! librdkafka recovers from what its error callback reports (fatal errors aside) and tells of
//! a failed connection three ways: its own `FAIL` log line, a `BrokerTransportFailure` and,
//! when no broker is left, an `AllBrokersDown`, again on every reconnect attempt. rust-rdkafka's
//! default logs every callback as an error, so a broker that was down for a minute left
//! hundreds of error lines. Here: the transport failure is left to librdkafka's line (debug),
//! "all brokers down" is a warning at most once a minute per client, fatal errors are errors
//! and the rest warnings. One error often arrives twice (rust-rdkafka's producer calls the
//! callback twice; a consumer's poll returns the error its callback had), so the same error
//! code again within a second is not logged again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The least time between two "all brokers down" warnings of one client.
const ALL_DOWN_EVERY: Duration = Duration::from_secs(60);
/// The same error again within this time is one error reported twice.
const REPEAT_WITHIN: Duration = Duration::from_secs(1);

/// Logs one client's errors (see the module documentation).
pub(super) struct ErrorReports {
    /// Which client, for the records: `producer`, `admin`, `consumer of group "g"`.
    client: String,
    /// When "all brokers down" was last logged.
    all_down: Mutex<Option<Instant>>,
    /// The last error reported (its code, or its text when it has none) and when.
    last: Mutex<Option<(String, Instant)>>,
}

impl ErrorReports {
    /// The reports of `client`.
    pub(super) fn new(client: impl Into<String>) -> ErrorReports {
        ErrorReports {
            client: client.into(),
            all_down: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// Logs `error`: from librdkafka's error callback (`reason` its explanation) or a
    /// consumer's poll (no reason).
    pub(super) fn report(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let key = match code {
            Some(code) => format!("{code:?}"),
            None => error.to_string(),
        };
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .as_ref()
                .is_some_and(|(seen, at)| *seen == key && at.elapsed() < REPEAT_WITHIN)
            {
                return;
            }
            *last = Some((key, Instant::now()));
        }
        match code {
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(client = %self.client, error = %error, reason, "kafka: a broker connection failed");
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                let mut last = self.all_down.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= ALL_DOWN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        client = %self.client,
                        reason,
                        "kafka: no broker is reachable; librdkafka keeps reconnecting (said at most once a minute)"
                    );
                } else {
                    tracing::debug!(client = %self.client, reason, "kafka: no broker is reachable");
                }
            }
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(client = %self.client, error = %error, reason, "kafka: fatal client error");
            }
            _ => {
                tracing::warn!(client = %self.client, error = %error, reason, "kafka: client error")
            }
        }
    }
}

/// The context of the broker's producer and admin client: only the error reports differ from
/// rust-rdkafka's default.
pub(super) struct ClientReports(ErrorReports);

impl ClientReports {
    /// The context of `client`.
    pub(super) fn new(client: &str) -> ClientReports {
        ClientReports(ErrorReports::new(client))
    }
}

impl ClientContext for ClientReports {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.report(&error, reason);
    }
}
