//! Polybus messages to AMQP messages and back: the payload is the body; id, content type and
//! a seconds timestamp use the native properties; topic, key, millisecond timestamp and attempt
//! travel as `polybus-*` headers beside the user headers. Messages are published persistent.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::topology::long_string;
use crate::message::{Message, new_message_id, now_ms};
use crate::wire::{
    HEADER_ATTEMPT, HEADER_ID, HEADER_KEY, HEADER_TIMESTAMP, HEADER_TOPIC, RESERVED_HEADERS,
    parse_attempt, sniff_content_type,
};

/// AMQP delivery mode of persistent messages.
const PERSISTENT: u8 = 2;

/// The properties (headers included) for `message` on its `attempt`-th delivery.
pub(super) fn properties(message: &Message, attempt: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(name.as_str().into(), long_string(value));
    }
    if let Some(key) = &message.key {
        headers.insert(HEADER_KEY.into(), long_string(key));
    }
    headers.insert(
        HEADER_TIMESTAMP.into(),
        AMQPValue::LongLongInt(message.timestamp_ms),
    );
    // Retries and dead letters travel under other routing keys: the topic goes along.
    headers.insert(HEADER_TOPIC.into(), long_string(&message.topic));
    if attempt > 1 {
        headers.insert(
            HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(attempt as i64),
        );
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_content_type(message.content_type.as_str().into())
        .with_timestamp((message.timestamp_ms.max(0) / 1000) as u64)
        .with_delivery_mode(PERSISTENT)
        .with_app_id("polybus".into())
        .with_headers(headers)
}

/// A received AMQP message as a Polybus message, with the attempt it carries. Messages from
/// other producers get a new id when they have no `message_id`, and a sniffed content type.
pub(super) fn from_amqp(
    routing_key: &str,
    properties: &BasicProperties,
    body: Vec<u8>,
) -> (Message, u32) {
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .unwrap_or_else(|| sniff_content_type(&body).to_owned());
    let id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_else(new_message_id);
    let timestamp_ms = properties
        .timestamp()
        .map(|seconds| seconds as i64 * 1000)
        .unwrap_or_else(now_ms);
    let mut message = Message::received(routing_key, body, id, content_type, timestamp_ms);
    let mut attempt = 1;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let name = name.as_str();
            match name {
                HEADER_KEY => message.key = text(value),
                HEADER_TOPIC => {
                    if let Some(topic) = text(value) {
                        message.topic = topic;
                    }
                }
                HEADER_TIMESTAMP => {
                    if let Some(ms) = integer(value) {
                        message.timestamp_ms = ms;
                    }
                }
                HEADER_ATTEMPT => {
                    attempt = parse_attempt(text(value).as_deref().map(str::as_bytes))
                }
                _ if RESERVED_HEADERS.contains(&name) || name == HEADER_ID => {}
                _ => {
                    if let Some(value) = text(value).or_else(|| serde_json::to_string(value).ok()) {
                        message.headers.insert(name.to_owned(), value);
                    }
                }
            }
        }
    }
    (message, attempt)
}

/// A header value as text, for strings and numbers.
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        other => integer(other).map(|n| n.to_string()),
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip() {
        let sent = Message::text("orders.created", "hi")
            .with_key("customer-1")
            .with_header("tenant", "eu")
            .with_timestamp_ms(1_700_000_000_123);
        let props = properties(&sent, 3);
        let (got, attempt) = from_amqp("orders.created", &props, b"hi".to_vec());
        assert_eq!(got, sent);
        assert_eq!(attempt, 3);
    }

    #[test]
    fn a_plain_amqp_message_is_read_with_defaults() {
        let (got, attempt) = from_amqp("jobs", &BasicProperties::default(), br#"{"a":1}"#.to_vec());
        assert_eq!(got.content_type, "application/json");
        assert_eq!(attempt, 1);
        assert!(!got.id.is_empty());
    }
}
