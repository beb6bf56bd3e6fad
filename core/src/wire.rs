//! The parts of the wire format shared by every backend: the names of the transport headers
//! and how a message from a non-Polybus producer is read.
//!
//! On brokers with native headers (Kafka, RabbitMQ) the payload is the body and the fields
//! below travel as headers (RabbitMQ uses its native `message_id`, `content_type` and
//! `timestamp` properties instead where it has them). User headers travel as they are.

/// Header carrying the message id.
pub const HEADER_ID: &str = "polybus-id";
/// Header carrying the payload's content type.
pub const HEADER_CONTENT_TYPE: &str = "polybus-content-type";
/// Header carrying the delivery attempt a retried message is on (absent means 1).
pub const HEADER_ATTEMPT: &str = "polybus-attempt";

/// Header carrying the message key, on brokers without a native key (RabbitMQ).
pub const HEADER_KEY: &str = "polybus-key";
/// Header carrying the timestamp in milliseconds, on brokers whose native timestamp is coarser
/// (RabbitMQ's is in seconds).
pub const HEADER_TIMESTAMP: &str = "polybus-timestamp";

/// Header carrying the topic, on brokers where a retried or dead-lettered message travels
/// under another routing key (RabbitMQ).
pub const HEADER_TOPIC: &str = "polybus-topic";

/// Dead-letter header: why the message failed for good.
pub const DLQ_ERROR: &str = "polybus-dlq-error";
/// Dead-letter header: the kind of error (exception class, error type).
pub const DLQ_ERROR_TYPE: &str = "polybus-dlq-error-type";
/// Dead-letter header: how many deliveries were tried.
pub const DLQ_ATTEMPTS: &str = "polybus-dlq-attempts";
/// Dead-letter header: the topic the message failed on.
pub const DLQ_TOPIC: &str = "polybus-dlq-topic";
/// Dead-letter header: the consumer group it failed in.
pub const DLQ_GROUP: &str = "polybus-dlq-group";
/// Dead-letter header: partition it was read from, where the broker has partitions.
pub const DLQ_PARTITION: &str = "polybus-dlq-partition";
/// Dead-letter header: offset (or stream id) it was read from, where the broker has one.
pub const DLQ_OFFSET: &str = "polybus-dlq-offset";
/// Dead-letter header: first failure, milliseconds since the Unix epoch.
pub const DLQ_FIRST_FAILURE: &str = "polybus-dlq-first-failure-ms";
/// Dead-letter header: last failure, milliseconds since the Unix epoch.
pub const DLQ_LAST_FAILURE: &str = "polybus-dlq-last-failure-ms";
/// Header set on a message when it first fails, so retries carry the first failure time.
pub const HEADER_FIRST_FAILURE: &str = "polybus-first-failure-ms";
/// Header on a copy waiting in a retry topic (Kafka): when it becomes due, milliseconds since
/// the Unix epoch.
pub const HEADER_RETRY_DUE: &str = "polybus-retry-due-ms";
/// Header on a copy waiting in a retry topic (Kafka): partition of the original record.
pub const HEADER_ORIGIN_PARTITION: &str = "polybus-origin-partition";
/// Header on a copy waiting in a retry topic (Kafka): offset of the original record.
pub const HEADER_ORIGIN_OFFSET: &str = "polybus-origin-offset";

/// Header names reserved for the transport: a user header may not use them.
pub const RESERVED_HEADERS: [&str; 9] = [
    HEADER_ID,
    HEADER_CONTENT_TYPE,
    HEADER_ATTEMPT,
    HEADER_KEY,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
    HEADER_RETRY_DUE,
    HEADER_ORIGIN_PARTITION,
    HEADER_ORIGIN_OFFSET,
];

/// Whether a content type is JSON: `application/json` or any `+json` type, parameters and case
/// ignored (the rule Python's `polybus._codec.decode` follows too).
pub fn is_json_content_type(content_type: &str) -> bool {
    if content_type == crate::message::CONTENT_TYPE_JSON {
        return true;
    }
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let essence = essence.as_bytes();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() >= 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// The content type to assume for a payload that came without one (a non-Polybus producer):
/// JSON when it parses as a JSON object or array, raw bytes otherwise.
pub fn sniff_content_type(payload: &[u8]) -> &'static str {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{' | b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
    {
        crate::message::CONTENT_TYPE_JSON
    } else {
        crate::message::CONTENT_TYPE_BYTES
    }
}

/// Parses an attempt header; anything unreadable counts as the first attempt.
pub fn parse_attempt(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/vnd.api+json"));
        assert!(!is_json_content_type("text/plain"));
        // Non-ASCII text is compared byte by byte, never split inside a character.
        assert!(is_json_content_type("x/é+json"));
        assert!(!is_json_content_type("xéjson"));
        assert!(!is_json_content_type("é"));
    }

    #[test]
    fn foreign_json_is_recognised() {
        assert_eq!(sniff_content_type(br#" {"a": 1}"#), "application/json");
        assert_eq!(sniff_content_type(b"[1,2]"), "application/json");
        assert_eq!(sniff_content_type(b"{not json"), "application/octet-stream");
        assert_eq!(sniff_content_type(b"42"), "application/octet-stream");
    }

    #[test]
    fn attempts_default_to_one() {
        assert_eq!(parse_attempt(None), 1);
        assert_eq!(parse_attempt(Some(b"3")), 3);
        assert_eq!(parse_attempt(Some(b"0")), 1);
        assert_eq!(parse_attempt(Some(b"x")), 1);
    }
}
