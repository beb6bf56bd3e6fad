//! Polybus messages to Kafka records and back: the payload is the value, the key the key, the
//! timestamp the record's CreateTime, and id, content type, attempt and user headers travel
//! as Kafka headers.

use rdkafka::Timestamp;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::producer::{Record, Ticket};
use crate::message::{Message, now_ms};
use crate::wire::{
    HEADER_ATTEMPT, HEADER_CONTENT_TYPE, HEADER_ID, parse_attempt, sniff_content_type,
};

/// The record for `message`, its report going to `ticket`; it borrows the message's topic, key
/// and payload.
pub(super) fn to_record(message: &Message, attempt: u32, ticket: Box<Ticket>) -> Record<'_> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 3)
        .insert(Header {
            key: HEADER_ID,
            value: Some(message.id.as_bytes()),
        })
        .insert(Header {
            key: HEADER_CONTENT_TYPE,
            value: Some(message.content_type.as_bytes()),
        });
    if attempt > 1 {
        // librdkafka copies header values, so the text need not outlive the call.
        let attempt_text = attempt.to_string();
        headers = headers.insert(Header {
            key: HEADER_ATTEMPT,
            value: Some(attempt_text.as_bytes()),
        });
    }
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name.as_str(),
            value: Some(value.as_bytes()),
        });
    }
    let mut record = BaseRecord::with_opaque_to(&message.topic, ticket)
        .payload(&message.payload[..])
        .headers(headers)
        .timestamp(message.timestamp_ms);
    if let Some(key) = &message.key {
        record = record.key(key.as_str());
    }
    record
}

/// A received record as a message, with the attempt it carries. Records from other producers
/// get a stable id (`topic-partition-offset`) and a sniffed content type.
pub(super) fn from_record<M: rdkafka::Message>(record: &M) -> (Message, u32) {
    let payload = record.payload().unwrap_or_default();
    let mut id = None;
    let mut content_type = None;
    let mut attempt = 1;
    let mut headers = crate::message::Headers::new();
    if let Some(record_headers) = record.headers() {
        for header in record_headers.iter() {
            let value = header.value.unwrap_or_default();
            match header.key {
                HEADER_ID => id = Some(String::from_utf8_lossy(value).into_owned()),
                HEADER_CONTENT_TYPE => {
                    content_type = Some(String::from_utf8_lossy(value).into_owned())
                }
                HEADER_ATTEMPT => attempt = parse_attempt(Some(value)),
                name => {
                    headers.insert(name.to_owned(), String::from_utf8_lossy(value).into_owned());
                }
            }
        }
    }
    let id = id.unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            record.topic(),
            record.partition(),
            record.offset()
        )
    });
    let content_type = content_type.unwrap_or_else(|| sniff_content_type(payload).to_owned());
    let timestamp_ms = match record.timestamp() {
        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => ms,
        Timestamp::NotAvailable => now_ms(),
    };
    let mut message = Message::received(
        record.topic(),
        bytes::Bytes::copy_from_slice(payload),
        id,
        content_type,
        timestamp_ms,
    );
    message.key = record
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned());
    message.headers = headers;
    (message, attempt)
}
