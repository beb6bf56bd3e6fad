//! How librdkafka's client errors are logged.
//!
//! librdkafka recovers from what its error callback reports (fatal errors aside) and tells of
//! a failed connection three ways: its own `FAIL` log line, a `BrokerTransportFailure` and,
//! when no broker is left, an `AllBrokersDown`, again on every reconnect attempt. rust-rdkafka's
//! default logs every callback as an error, so a broker that was down for a minute left
//! hundreds of error lines. Here: the transport failure is left to librdkafka's line (debug),
//! "all brokers down" is a warning at most once a minute per client, fatal errors are errors
//! and the rest warnings. rust-rdkafka's producer calls the callback twice for one error, so
//! the same error again within a second is not logged again.

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
#[derive(Default)]
pub(super) struct ErrorReports {
    /// When "all brokers down" was last logged.
    all_down: Mutex<Option<Instant>>,
    /// The last error reported and when.
    last: Mutex<Option<(String, Instant)>>,
}

impl ErrorReports {
    /// Logs `error` (librdkafka's error callback), `reason` being librdkafka's explanation.
    pub(super) fn report(&self, error: &KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .as_ref()
                .is_some_and(|(seen, at)| *seen == text && at.elapsed() < REPEAT_WITHIN)
            {
                return;
            }
            *last = Some((text, Instant::now()));
        }
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(error = %error, "kafka: {reason}");
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                let mut last = self.all_down.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= ALL_DOWN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        reason,
                        "kafka: no broker is reachable; librdkafka keeps reconnecting (said at most once a minute)"
                    );
                } else {
                    tracing::debug!(reason, "kafka: no broker is reachable");
                }
            }
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(error = %error, "kafka: fatal client error: {reason}");
            }
            _ => tracing::warn!(error = %error, "kafka: client error: {reason}"),
        }
    }
}

/// The context of the broker's producer and admin client: only the error reports differ from
/// rust-rdkafka's default.
#[derive(Default)]
pub(super) struct ClientReports(ErrorReports);

impl ClientContext for ClientReports {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.report(&error, reason);
    }
}
