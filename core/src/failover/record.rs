//! One spooled message on disk: `[body length: u32 LE][crc32 of length and body: u32 LE][body]`.
//!
//! The body holds the whole [`Message`]: a format version byte, then id, topic, optional key,
//! headers, content type, timestamp and payload, each string or byte field prefixed with its
//! length (u32 LE). The checksum covers the length too, so a torn or garbled tail is detected.

use std::io::Read;

use bytes::Bytes;

use crate::message::{Headers, Message};

/// Bytes before the body: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Largest body accepted when reading; anything longer is taken for garbage.
pub const MAX_BODY: usize = 1 << 30;
const VERSION: u8 = 1;

/// `message` framed for appending to a segment.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        64 + message.id.len()
            + message.topic.len()
            + message.payload.len()
            + message.content_type.len(),
    );
    body.push(VERSION);
    put_bytes(&mut body, message.id.as_bytes());
    put_bytes(&mut body, message.topic.as_bytes());
    match &message.key {
        Some(key) => {
            body.push(1);
            put_bytes(&mut body, key.as_bytes());
        }
        None => body.push(0),
    }
    body.extend_from_slice(&(message.headers.len() as u32).to_le_bytes());
    for (name, value) in &message.headers {
        put_bytes(&mut body, name.as_bytes());
        put_bytes(&mut body, value.as_bytes());
    }
    put_bytes(&mut body, message.content_type.as_bytes());
    body.extend_from_slice(&message.timestamp_ms.to_le_bytes());
    put_bytes(&mut body, &message.payload);

    let length = (body.len() as u32).to_le_bytes();
    let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
    frame.extend_from_slice(&length);
    frame.extend_from_slice(&checksum(&length, &body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// What reading one frame found.
pub enum Frame {
    /// A whole, intact record, and its size on disk.
    Record(Box<Message>, u64),
    /// Nothing more: the reader is at the end.
    End,
    /// A partial or damaged record (a torn write): everything from here is unusable.
    Damaged(String),
}

/// Reads the frame at the reader's position.
pub fn read_frame(reader: &mut impl Read) -> std::io::Result<Frame> {
    let mut header = [0u8; FRAME_HEADER];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < FRAME_HEADER {
        return Ok(Frame::Damaged(format!(
            "a record header is cut short ({got} of {FRAME_HEADER} bytes)"
        )));
    }
    let length_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
    let length = u32::from_le_bytes(length_bytes) as usize;
    let expected = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if length > MAX_BODY {
        return Ok(Frame::Damaged(format!(
            "a record claims {length} bytes, more than any record can hold"
        )));
    }
    let mut body = vec![0u8; length];
    let got = read_full(reader, &mut body)?;
    if got < length {
        return Ok(Frame::Damaged(format!(
            "a record is cut short ({got} of {length} bytes)"
        )));
    }
    if checksum(&length_bytes, &body) != expected {
        return Ok(Frame::Damaged("a record's checksum does not match".into()));
    }
    match decode(&body) {
        Some(message) => Ok(Frame::Record(
            Box::new(message),
            (FRAME_HEADER + length) as u64,
        )),
        None => Ok(Frame::Damaged(
            "a record's checksum matches but its content cannot be read".into(),
        )),
    }
}

fn checksum(length: &[u8; 4], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length);
    hasher.update(body);
    hasher.finalize()
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn decode(body: &[u8]) -> Option<Message> {
    let mut input = Cursor(body);
    if input.u8()? != VERSION {
        return None;
    }
    let id = input.string()?;
    let topic = input.string()?;
    let key = match input.u8()? {
        0 => None,
        1 => Some(input.string()?),
        _ => return None,
    };
    let count = input.u32()?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = input.string()?;
        let value = input.string()?;
        headers.insert(name, value);
    }
    let content_type = input.string()?;
    let timestamp_ms = i64::from_le_bytes(input.take(8)?.try_into().ok()?);
    let payload = Bytes::copy_from_slice(input.bytes()?);
    if !input.0.is_empty() {
        return None;
    }
    Some(Message {
        id,
        topic,
        key,
        headers,
        payload,
        content_type,
        timestamp_ms,
    })
}

/// A reader over a record body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_with_every_field() {
        let message = Message::bytes("orders", vec![0u8, 1, 2, 255])
            .with_key("k")
            .with_header("a", "1")
            .with_header("b", "é")
            .with_content_type("x/y")
            .with_timestamp_ms(-5);
        let frame = encode(&message);
        match read_frame(&mut &frame[..]).unwrap() {
            Frame::Record(read, size) => {
                assert_eq!(*read, message);
                assert_eq!(size as usize, frame.len());
            }
            _ => panic!("not read back"),
        }
    }

    #[test]
    fn a_cut_or_flipped_frame_is_damaged() {
        let frame = encode(&Message::text("t", "hello"));
        for cut in 1..frame.len() {
            assert!(matches!(
                read_frame(&mut &frame[..cut]).unwrap(),
                Frame::Damaged(_)
            ));
        }
        let mut flipped = frame.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read_frame(&mut &flipped[..]).unwrap(),
            Frame::Damaged(_)
        ));
        assert!(matches!(read_frame(&mut &[][..]).unwrap(), Frame::End));
    }
}
