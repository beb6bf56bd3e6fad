//! The message model: what a producer sends and a consumer receives on every broker.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Message headers: string keys to string values, kept in key order.
pub type Headers = BTreeMap<String, String>;

/// Content type of JSON payloads (the default).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of raw byte payloads.
pub const CONTENT_TYPE_BYTES: &str = "application/octet-stream";
/// Content type of UTF-8 text payloads.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// Longest topic name accepted (Kafka's limit, the strictest of the brokers).
pub const MAX_TOPIC_LEN: usize = 249;

/// A message: an id, a topic, an optional key, headers, a payload and its content type.
///
/// Build one with [`Message::json`], [`Message::bytes`] or [`Message::text`], then refine it with
/// the `with_*` methods. The id is a UUIDv7 (time ordered) unless set with [`Message::with_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Unique id, kept across brokers and retries (used for deduplication).
    pub id: String,
    /// Destination: Kafka topic, RabbitMQ routing key, Redis key or channel.
    pub topic: String,
    /// Ordering and partitioning key: messages with the same key keep their order.
    pub key: Option<String>,
    /// User headers.
    pub headers: Headers,
    /// The body, as bytes.
    pub payload: Bytes,
    /// MIME type of the payload.
    pub content_type: String,
    /// Creation time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Message {
    /// A message with a raw byte payload (`application/octet-stream`).
    pub fn bytes(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message::new(topic.into(), payload.into(), CONTENT_TYPE_BYTES)
    }

    /// A new message: a fresh id and the current time.
    fn new(topic: String, payload: Bytes, content_type: &str) -> Self {
        // One clock read: the id's time part is the message's timestamp.
        let timestamp_ms = now_ms();
        Message {
            id: message_id_at(timestamp_ms),
            topic,
            key: None,
            headers: Headers::new(),
            payload,
            content_type: content_type.to_owned(),
            timestamp_ms,
        }
    }

    /// A message read from a broker, with the id, content type and time it carries: no id is
    /// generated and no clock read for it.
    pub(crate) fn received(
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        id: String,
        content_type: String,
        timestamp_ms: i64,
    ) -> Self {
        Message {
            id,
            topic: topic.into(),
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            content_type,
            timestamp_ms,
        }
    }

    /// A message with a UTF-8 text payload.
    pub fn text(topic: impl Into<String>, text: impl Into<String>) -> Self {
        Message::new(topic.into(), text.into().into(), CONTENT_TYPE_TEXT)
    }

    /// A message whose payload is `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        // Most bodies are small: start with room for one rather than growing from nothing.
        let mut body = Vec::with_capacity(128);
        serde_json::to_writer(&mut body, value)?;
        Ok(Message::new(topic.into(), body.into(), CONTENT_TYPE_JSON))
    }

    /// Sets the id (for example to keep the id of an upstream event).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds or replaces one header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Decodes the payload as JSON into `T`.
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            Error::Codec(format!(
                "message {} on {:?} is not valid JSON for the expected type: {err}",
                self.id, self.topic
            ))
        })
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.payload)
            .map_err(|err| Error::Codec(format!("message {} is not UTF-8: {err}", self.id)))
    }

    /// Checks what every broker requires: a usable topic, a non-empty id, sane headers.
    pub fn validate(&self) -> Result<()> {
        validate_topic(&self.topic).map_err(Error::InvalidMessage)?;
        if self.id.is_empty() {
            return Err(Error::InvalidMessage("message id is empty".into()));
        }
        if self.id.len() > 255 || !printable(&self.id) {
            return Err(Error::InvalidMessage(format!(
                "message id {:?} must be at most 255 printable characters",
                truncate(&self.id)
            )));
        }
        for name in self.headers.keys() {
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == ':') {
                return Err(Error::InvalidMessage(format!(
                    "header name {name:?} must be non-empty, without ':' or control characters"
                )));
            }
            if crate::wire::RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(Error::InvalidMessage(format!(
                    "header name {name:?} is reserved for the transport; set the id or content type on the message instead"
                )));
            }
        }
        Ok(())
    }
}

/// Checks a topic name: non-empty, at most [`MAX_TOPIC_LEN`] bytes, no whitespace or control
/// characters. Returns a message naming the problem.
pub fn validate_topic(topic: &str) -> std::result::Result<(), String> {
    if topic.is_empty() {
        return Err("topic is empty".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic {:?} is {} bytes long; the limit is {MAX_TOPIC_LEN}",
            truncate(topic),
            topic.len()
        ));
    }
    // Most names are plain ASCII: checked byte by byte before the Unicode rules.
    if topic.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    if let Some(bad) = topic.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "topic {topic:?} contains the character {bad:?}; whitespace and control characters are not allowed"
        ));
    }
    Ok(())
}

/// True when `text` has no control character (ASCII checked byte by byte first).
fn printable(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b)) || !text.chars().any(char::is_control)
}

/// A new time-ordered message id (UUIDv7, hyphenated lowercase). The random bits come from a
/// per-thread generator rather than the OS, so an id costs no system call.
pub fn new_message_id() -> String {
    message_id_at(now_ms())
}

/// A new message id whose time part is `timestamp_ms`.
fn message_id_at(timestamp_ms: i64) -> String {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    let millis = u64::try_from(timestamp_ms).unwrap_or_default();
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    // Written into a buffer of its exact length: one allocation, no formatting machinery.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect::<String>() + if s.chars().count() > 40 { "…" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_message_round_trips_its_payload() {
        let msg = Message::json("orders.created", &serde_json::json!({"order_id": 1})).unwrap();
        assert_eq!(msg.content_type, CONTENT_TYPE_JSON);
        let value: serde_json::Value = msg.decode_json().unwrap();
        assert_eq!(value["order_id"], 1);
    }

    #[test]
    fn ids_are_uuid_v7_and_unique() {
        let a = Message::bytes("t", "x");
        let b = Message::bytes("t", "x");
        assert_ne!(a.id, b.id);
        let parsed = uuid::Uuid::parse_str(&a.id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        // The id's time part is the message's timestamp.
        let (seconds, nanos) = parsed.get_timestamp().unwrap().to_unix();
        assert_eq!(
            i64::try_from(seconds * 1000).unwrap() + i64::from(nanos / 1_000_000),
            a.timestamp_ms
        );
    }

    #[test]
    fn ids_from_many_threads_never_collide() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..10_000).map(|_| new_message_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(all.insert(id), "an id was made twice");
            }
        }
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn validation_names_the_bad_part() {
        let err = Message::bytes("", "x").validate().unwrap_err().to_string();
        assert!(err.contains("topic is empty"), "{err}");
        let err = Message::bytes("a b", "x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("' '"), "{err}");
        let err = Message::bytes("t", "x")
            .with_header("bad:name", "v")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad:name"), "{err}");
        let long = "t".repeat(MAX_TOPIC_LEN + 1);
        let err = Message::bytes(long, "x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("250 bytes"), "{err}");
    }

    #[test]
    fn invalid_json_error_names_the_message() {
        let msg = Message::bytes("t", "not json").with_id("m-1");
        let err = msg
            .decode_json::<serde_json::Value>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("m-1"), "{err}");
    }
}
