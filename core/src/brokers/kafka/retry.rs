//! Retry topics: a message nacked with a delay is copied to its consumer group's retry topic
//! with its due time, then read back by the group and delivered again once due.
//!
//! The copy is the original record (id, key, payload, content type, user headers) with the
//! next attempt in `polybus-attempt` and these internal headers, removed again when it is read
//! back:
//!
//! - `polybus-topic`: the topic the message was published to;
//! - `polybus-retry-due-ms`: when it is due, milliseconds since the Unix epoch;
//! - `polybus-origin-partition` and `polybus-origin-offset`: where the original record is (set
//!   on the first retry and carried over by later ones);
//! - `polybus-timestamp`: the message's own timestamp (the copy's record timestamp is when it
//!   was written, so the retry topic's retention counts from then).

use rdkafka::message::Header;

use super::codec::to_record;
use super::producer::{Record, Ticket};
use crate::message::{Message, now_ms};
use crate::wire::{
    HEADER_ORIGIN_OFFSET, HEADER_ORIGIN_PARTITION, HEADER_RETRY_DUE, HEADER_TIMESTAMP, HEADER_TOPIC,
};

/// Appended to the group name to name its retry topic.
const SUFFIX: &str = ".retry";
/// Longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// Where the original record of a retried message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// What a record read from a retry topic says besides the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Retried {
    /// When the message is due, milliseconds since the Unix epoch.
    pub due_ms: i64,
    /// The original record, when the copy names it.
    pub origin: Option<Origin>,
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The retry topic of consumer group `group`: `<group>.retry` when that is a valid Kafka topic
/// name; otherwise the group with every character Kafka does not allow (outside
/// `[A-Za-z0-9._-]`) replaced by `_`, cut to fit 249 characters, followed by `-` and a hash of
/// the exact group name (so different groups never share one), then `.retry`.
pub(super) fn retry_topic(group: &str) -> String {
    if group.chars().all(allowed) && group.len() + SUFFIX.len() <= MAX_TOPIC_LEN {
        return format!("{group}{SUFFIX}");
    }
    let hash = format!("{:016x}", fnv1a(group.as_bytes()));
    let room = MAX_TOPIC_LEN - SUFFIX.len() - hash.len() - 1;
    let head: String = group
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(room)
        .collect();
    format!("{head}-{hash}{SUFFIX}")
}

/// 64-bit FNV-1a: a hash that stays the same across Rust releases and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The copy of `message` to write to `retry_topic`, on delivery `attempt`, due at `due_ms`, its
/// report going to `ticket`.
pub(super) fn retry_record<'a>(
    message: &'a Message,
    attempt: u32,
    retry_topic: &'a str,
    due_ms: i64,
    origin: Origin,
    ticket: Box<Ticket>,
) -> Record<'a> {
    let mut record = to_record(message, attempt, ticket);
    record.topic = retry_topic;
    record.timestamp = Some(now_ms());
    let internal = [
        (HEADER_TOPIC, message.topic.clone()),
        (HEADER_TIMESTAMP, message.timestamp_ms.to_string()),
        (HEADER_RETRY_DUE, due_ms.to_string()),
        (HEADER_ORIGIN_PARTITION, origin.partition.to_string()),
        (HEADER_ORIGIN_OFFSET, origin.offset.to_string()),
    ];
    let mut headers = record.headers.take().unwrap_or_default();
    for (key, value) in &internal {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    record.headers = Some(headers);
    record
}

/// Turns a message read from a retry topic back into the message as published: its topic and
/// timestamp restored and the internal headers removed. Returns its due time and origin.
pub(super) fn restore(message: &mut Message) -> Retried {
    let headers = &mut message.headers;
    let topic = headers.remove(HEADER_TOPIC);
    let timestamp = headers
        .remove(HEADER_TIMESTAMP)
        .and_then(|t| t.parse().ok());
    let due_ms = headers
        .remove(HEADER_RETRY_DUE)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let partition = headers
        .remove(HEADER_ORIGIN_PARTITION)
        .and_then(|p| p.parse().ok());
    let offset = headers
        .remove(HEADER_ORIGIN_OFFSET)
        .and_then(|o| o.parse().ok());
    if let Some(topic) = topic.filter(|t| !t.is_empty()) {
        message.topic = topic;
    }
    if let Some(timestamp) = timestamp {
        message.timestamp_ms = timestamp;
    }
    let origin = match (partition, offset) {
        (Some(partition), Some(offset)) => Some(Origin { partition, offset }),
        _ => None,
    };
    Retried { due_ms, origin }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Headers, OwnedMessage, Timestamp};

    use super::*;
    use crate::brokers::kafka::codec::from_record;
    use crate::brokers::kafka::producer::Deliveries;

    #[test]
    fn valid_group_names_are_kept() {
        assert_eq!(retry_topic("billing.v2_eu-1"), "billing.v2_eu-1.retry");
        let longest = "g".repeat(MAX_TOPIC_LEN - SUFFIX.len());
        assert_eq!(retry_topic(&longest), format!("{longest}.retry"));
    }

    #[test]
    fn other_group_names_are_sanitised_and_told_apart() {
        let a = retry_topic("billing/eu west");
        let b = retry_topic("billing_eu_west");
        let c = retry_topic("billing:eu west");
        assert_eq!(b, "billing_eu_west.retry");
        assert!(
            a.starts_with("billing_eu_west-") && a.ends_with(".retry"),
            "{a}"
        );
        assert_ne!(a, c, "different groups, different retry topics");
        assert_eq!(a, retry_topic("billing/eu west"), "stable");
        for name in [
            a,
            c,
            retry_topic(&"é".repeat(400)),
            retry_topic(&"x".repeat(300)),
        ] {
            assert!(name.len() <= MAX_TOPIC_LEN, "{name}");
            assert!(name.chars().all(allowed), "{name}");
        }
    }

    #[test]
    fn a_retried_message_reads_back_as_published() {
        let mut sent = Message::text("orders", "hello")
            .with_key("k")
            .with_header("tenant", "eu");
        sent.timestamp_ms = 1_000;
        let origin = Origin {
            partition: 3,
            offset: 42,
        };
        let deliveries = Deliveries::new(1);
        let record = retry_record(&sent, 2, "g.retry", 5_000, origin, deliveries.ticket(0));
        assert_eq!(record.topic, "g.retry");
        assert_ne!(record.timestamp, Some(1_000));
        let headers = record.headers.clone().unwrap();
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert!(names.contains(&HEADER_RETRY_DUE), "{names:?}");
        let read = OwnedMessage::new(
            Some(b"hello".to_vec()),
            Some(b"k".to_vec()),
            "g.retry".to_owned(),
            Timestamp::CreateTime(9_000),
            1,
            7,
            Some(headers),
        );
        let (mut got, attempt) = from_record(&read);
        let retried = restore(&mut got);
        assert_eq!(attempt, 2);
        assert_eq!(
            retried,
            Retried {
                due_ms: 5_000,
                origin: Some(origin)
            }
        );
        assert_eq!(got, sent);
    }
}
