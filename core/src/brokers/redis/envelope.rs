//! The JSON envelope that carries a Polybus message through a Redis list or pub/sub channel,
//! which have no headers of their own:
//!
//! ```json
//! {"polybus":1,"id":"0190…","topic":"orders.created","key":"customer-7",
//!  "headers":{"trace-id":"abc"},"timestamp":1718000000000,"attempt":2,"payload":{"order_id":1}}
//! ```
//!
//! A JSON payload is embedded as it is (`payload`, byte for byte); any other payload travels
//! base64-encoded in `payload_base64` instead. Fields at their defaults are left out, as they
//! make up most of a small message: no `key`, no `headers`, `attempt` 1, and `content_type`
//! `application/json` for an embedded payload. An item that is not such an envelope (what a
//! plain `LPUSH topic '{"source_id":1}'` writes) is a foreign payload: taken whole, with a fresh
//! id and its content type sniffed.

use std::io::{self, Write};

use ::redis::{RedisWrite, ToRedisArgs};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json_check;
use crate::message::{CONTENT_TYPE_JSON, Headers, Message};
use crate::wire::{is_json_content_type, sniff_content_type};

/// The envelope format version, written as the `polybus` field.
pub(super) const VERSION: u32 = 1;

#[derive(Deserialize)]
struct Incoming<'a> {
    polybus: u32,
    id: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// The payload as an embeddable JSON value, when it is JSON and embedding keeps it byte for
/// byte (no surrounding whitespace; `null` is left out as it would read as "no payload").
fn embeddable(message: &Message) -> Option<&[u8]> {
    let payload = &message.payload[..];
    (is_json_content_type(&message.content_type)
        && payload != b"null"
        && json_check::is_single_value(payload))
    .then_some(payload)
}

/// The envelope for `message` on its `attempt`, as JSON bytes.
pub(super) fn encode(message: &Message, attempt: u32) -> Vec<u8> {
    let payload = embeddable(message);
    let mut out = Vec::with_capacity(encoded_len(message, payload));
    // Writing into a Vec cannot fail.
    let _ = write(message, attempt, payload, &mut out);
    out
}

/// An upper bound of what [`Item`] writes for `message`, without looking into its payload.
pub(super) fn max_item_len(message: &Message, envelope: bool) -> usize {
    if envelope {
        encoded_len(message, None)
    } else {
        message.payload.len()
    }
}

/// An upper estimate of the envelope's length, so buffers are not grown while writing.
fn encoded_len(message: &Message, payload: Option<&[u8]>) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 6)
        .sum();
    let payload_len = match payload {
        Some(_) => message.payload.len(),
        None => message.payload.len().div_ceil(3) * 4,
    };
    160 + message.id.len()
        + message.topic.len()
        + message.key.as_deref().map_or(0, str::len)
        + message.content_type.len()
        + headers
        + payload_len
}

/// Writes the envelope field by field: strings go through `serde_json`'s escaping, an
/// embeddable payload is copied as it is and any other payload is base64-encoded in place
/// (base64 needs no escaping), with no intermediate string.
fn write<W: Write + ?Sized>(
    message: &Message,
    attempt: u32,
    payload: Option<&[u8]>,
    out: &mut W,
) -> io::Result<()> {
    field(out, b"{\"polybus\":", &VERSION)?;
    field(out, b",\"id\":", &message.id)?;
    field(out, b",\"topic\":", &message.topic)?;
    if let Some(key) = &message.key {
        field(out, b",\"key\":", key)?;
    }
    if !message.headers.is_empty() {
        field(out, b",\"headers\":", &message.headers)?;
    }
    if payload.is_none() || message.content_type != CONTENT_TYPE_JSON {
        field(out, b",\"content_type\":", &message.content_type)?;
    }
    field(out, b",\"timestamp\":", &message.timestamp_ms)?;
    if attempt > 1 {
        field(out, b",\"attempt\":", &attempt)?;
    }
    match payload {
        Some(raw) => {
            out.write_all(b",\"payload\":")?;
            out.write_all(raw)?;
        }
        None => {
            out.write_all(b",\"payload_base64\":\"")?;
            let mut encoded = [0u8; 1024];
            for chunk in message.payload.chunks(768) {
                let written = BASE64
                    .encode_slice(chunk, &mut encoded)
                    .map_err(io::Error::other)?;
                out.write_all(&encoded[..written])?;
            }
            out.write_all(b"\"")?;
        }
    }
    out.write_all(b"}")
}

/// Writes `prefix` (punctuation and a field name) and `value` as JSON.
fn field<W: Write + ?Sized, T: Serialize + ?Sized>(
    out: &mut W,
    prefix: &[u8],
    value: &T,
) -> io::Result<()> {
    out.write_all(prefix)?;
    serde_json::to_writer(out, value).map_err(io::Error::from)
}

/// What is written for a message: its envelope, or its bare payload when envelopes are off.
/// As a command argument it is written straight into the command's buffer.
pub(super) struct Item<'a> {
    /// The message.
    pub message: &'a Message,
    /// The attempt it is on (1 when first published).
    pub attempt: u32,
    /// Whether the message travels in an envelope.
    pub envelope: bool,
}

impl ToRedisArgs for Item<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        if !self.envelope {
            out.write_arg(&self.message.payload);
            return;
        }
        let payload = embeddable(self.message);
        out.reserve_space_for_args([encoded_len(self.message, payload)]);
        // Writing into a command's buffer cannot fail.
        let _ = write(
            self.message,
            self.attempt,
            payload,
            &mut out.writer_for_next_arg(),
        );
    }
}

/// Reads an item taken from `topic`: the message and the attempt it is on.
pub(super) fn decode(raw: &[u8], topic: &str) -> (Message, u32) {
    if let Some(decoded) = decode_envelope(raw, topic) {
        return decoded;
    }
    let payload = Bytes::copy_from_slice(raw);
    let content_type = sniff_content_type(raw);
    (
        Message::bytes(topic, payload).with_content_type(content_type),
        1,
    )
}

fn decode_envelope(raw: &[u8], topic: &str) -> Option<(Message, u32)> {
    let first = raw.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' || !raw.windows(9).any(|w| w == b"\"polybus\"") {
        return None;
    }
    let incoming: Incoming<'_> = serde_json::from_slice(raw).ok()?;
    if incoming.polybus < 1 || incoming.id.is_empty() {
        return None;
    }
    let payload = match (incoming.payload, &incoming.payload_base64) {
        (Some(json), _) => Bytes::copy_from_slice(json.get().as_bytes()),
        (None, Some(encoded)) => Bytes::from(BASE64.decode(encoded).ok()?),
        (None, None) => Bytes::new(),
    };
    // Left out, it is JSON for an embedded payload; a base64 one is sniffed.
    let content_type = match (incoming.content_type, incoming.payload) {
        (Some(content_type), _) => content_type,
        (None, Some(_)) => CONTENT_TYPE_JSON.to_owned(),
        (None, None) => sniff_content_type(&payload).to_owned(),
    };
    let timestamp_ms = incoming.timestamp.unwrap_or_else(crate::message::now_ms);
    let mut message = Message::received(topic, payload, incoming.id, content_type, timestamp_ms);
    message.key = incoming.key;
    message.headers = incoming.headers;
    let attempt = incoming.attempt.filter(|a| *a >= 1).unwrap_or(1);
    Some((message, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payloads_are_embedded_and_round_trip() {
        let message = Message::json("orders", &serde_json::json!({"order_id": 1}))
            .unwrap()
            .with_key("k")
            .with_header("trace-id", "abc");
        let raw = encode(&message, 2);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.starts_with(r#"{"polybus":1,"id":""#), "{text}");
        assert!(text.contains(r#""payload":{"order_id":1}"#), "{text}");
        let (back, attempt) = decode(&raw, "orders");
        assert_eq!(back, message);
        assert_eq!(attempt, 2);
    }

    #[test]
    fn fields_at_their_defaults_are_left_out_and_read_back() {
        for body in [&br#"{"order_id":1}"#[..], br#""a JSON string""#, b"42"] {
            let message = Message::bytes("orders", body).with_content_type(CONTENT_TYPE_JSON);
            let raw = encode(&message, 1);
            let text = String::from_utf8(raw.clone()).unwrap();
            for absent in ["\"key\"", "\"headers\"", "\"content_type\"", "\"attempt\""] {
                assert!(!text.contains(absent), "{absent} in {text}");
            }
            assert!(text.contains(r#""topic":"orders""#), "{text}");
            assert_eq!(decode(&raw, "orders"), (message, 1));
        }
        // A base64 payload keeps its content type, as does JSON of another type.
        let message = Message::bytes("t", &b"\x00"[..]);
        let raw = encode(&message, 1);
        assert!(
            String::from_utf8_lossy(&raw).contains(r#""content_type":"application/octet-stream""#)
        );
        assert_eq!(decode(&raw, "t").0, message);
        let message =
            Message::bytes("t", &b"{}"[..]).with_content_type("application/cloudevents+json");
        assert_eq!(decode(&encode(&message, 1), "t").0, message);
    }

    #[test]
    fn binary_payloads_travel_as_base64() {
        let message =
            Message::bytes("t", &b"\x00binary\xff"[..]).with_content_type("application/x-test");
        let raw = encode(&message, 1);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains("payload_base64"), "{text}");
        assert_eq!(decode(&raw, "t").0, message);
    }

    #[test]
    fn long_binary_payloads_are_standard_base64() {
        let body: Vec<u8> = (0..5000u32).map(|n| (n % 251) as u8).collect();
        let message = Message::bytes("t", body.clone());
        let raw = encode(&message, 1);
        let item: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(item["payload_base64"], BASE64.encode(&body));
        assert_eq!(decode(&raw, "t").0.payload, body);
    }

    #[test]
    fn json_that_would_not_round_trip_is_base64() {
        for body in [&b" {\"a\":1}"[..], b"null", b"{bad"] {
            let message = Message::bytes("t", body).with_content_type("application/json");
            let raw = encode(&message, 1);
            assert!(String::from_utf8_lossy(&raw).contains("payload_base64"));
            assert_eq!(decode(&raw, "t").0.payload, message.payload);
        }
    }

    #[test]
    fn foreign_items_are_taken_whole() {
        let (message, attempt) = decode(br#"{"source_id":1}"#, "source.fetch.failed");
        assert_eq!(&message.payload[..], br#"{"source_id":1}"#);
        assert_eq!(message.content_type, "application/json");
        assert_eq!(message.topic, "source.fetch.failed");
        assert_eq!(attempt, 1);
        assert!(!message.id.is_empty());
        let (message, _) = decode(b"plain text", "t");
        assert_eq!(message.content_type, "application/octet-stream");
        // Mentions the field but is not an envelope.
        let (message, _) = decode(br#"{"polybus":"yes"}"#, "t");
        assert_eq!(&message.payload[..], br#"{"polybus":"yes"}"#);
    }
}
