//! Replies in RESP2 read straight off a connection's buffer: a bulk string is a slice of the
//! buffer it arrived in, not a copy, and no value is made until the whole reply is there.
//! Subscriptions read their blocking commands' replies (`XREADGROUP`, `BLMOVE`) this way; the
//! parser redis-rs uses for everything else made one allocation per field and cost more than
//! a third of a streams consumer's engine time.

use bytes::{Bytes, BytesMut};

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// A nil bulk string or array.
    Nil,
    /// A simple string (`+OK`).
    Status(Bytes),
    /// An error reply, without its leading `-`.
    Error(Bytes),
    Int(i64),
    Bulk(Bytes),
    Array(Vec<Reply>),
}

/// What was wrong with a reply the server sent.
#[derive(Debug, thiserror::Error)]
#[error("invalid reply from the redis server: {0}")]
pub(super) struct ProtocolError(&'static str);

/// Nested arrays deeper than this are refused (no reply read here nests beyond 4).
const MAX_DEPTH: usize = 32;

/// Bulk strings longer than this are refused (the server's own limit is 512 MiB).
const MAX_BULK: usize = 512 * 1024 * 1024;

impl Reply {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Reply::Bulk(bytes) | Reply::Status(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The bytes of a bulk or simple string, taken over.
    pub fn into_bytes(self) -> Option<Bytes> {
        match self {
            Reply::Bulk(bytes) | Reply::Status(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The same reply as a redis-rs value.
    pub fn into_value(self) -> ::redis::Value {
        use ::redis::Value;
        match self {
            Reply::Nil => Value::Nil,
            Reply::Status(text) => Value::SimpleString(String::from_utf8_lossy(&text).into_owned()),
            Reply::Error(text) => Value::SimpleString(String::from_utf8_lossy(&text).into_owned()),
            Reply::Int(n) => Value::Int(n),
            Reply::Bulk(bytes) => Value::BulkString(bytes.to_vec()),
            Reply::Array(items) => Value::Array(items.into_iter().map(Reply::into_value).collect()),
        }
    }

    /// The items of an array (a nil reply or any other has none).
    pub fn into_items(self) -> Vec<Reply> {
        match self {
            Reply::Array(items) => items,
            _ => Vec::new(),
        }
    }
}

/// Takes the first reply off `buf` once it is complete; `None` (and `buf` untouched) while more
/// of it is still to come.
pub(super) fn take(buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
    let Some(len) = measure(buf)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    let mut at = 0;
    Ok(Some(build(&frame, &mut at)))
}

/// The length of the first complete reply in `buf`, checking its framing on the way, without
/// making anything.
fn measure(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    // How many values each open array still waits for; the reply itself is one value.
    let mut open: Vec<u64> = vec![1];
    let mut at = 0;
    while let Some(waiting) = open.last_mut() {
        if *waiting == 0 {
            open.pop();
            continue;
        }
        *waiting -= 1;
        let Some((kind, line, next)) = line(buf, at)? else {
            return Ok(None);
        };
        at = next;
        match kind {
            b'+' | b'-' => {}
            b':' => {
                number(line)?;
            }
            b'$' => {
                let len = number(line)?;
                if len >= 0 {
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|len| *len <= MAX_BULK)
                        .ok_or(ProtocolError("bulk string too long"))?;
                    let end = at + len;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(ProtocolError("bulk string not followed by CRLF"));
                    }
                    at = end + 2;
                }
            }
            b'*' => {
                let len = number(line)?;
                if len > 0 {
                    if open.len() >= MAX_DEPTH {
                        return Err(ProtocolError("arrays nested too deep"));
                    }
                    open.push(len as u64);
                }
            }
            _ => return Err(ProtocolError("unknown reply type")),
        }
    }
    Ok(Some(at))
}

/// The reply at `*at` of a frame [`measure`] checked; moves `*at` past it.
fn build(frame: &Bytes, at: &mut usize) -> Reply {
    let (kind, start, end) = {
        // The frame was checked: every line is there and well formed.
        let (kind, line, next) = line(frame, *at).ok().flatten().unwrap_or((b'-', &[], *at));
        let start = *at + 1;
        let end = start + line.len();
        *at = next;
        (kind, start, end)
    };
    match kind {
        b'+' => Reply::Status(frame.slice(start..end)),
        b'-' => Reply::Error(frame.slice(start..end)),
        b':' => Reply::Int(number(&frame[start..end]).unwrap_or_default()),
        b'$' => match usize::try_from(number(&frame[start..end]).unwrap_or(-1)) {
            Ok(len) => {
                let bulk = frame.slice(*at..*at + len);
                *at += len + 2;
                Reply::Bulk(bulk)
            }
            Err(_) => Reply::Nil,
        },
        _ => match usize::try_from(number(&frame[start..end]).unwrap_or(-1)) {
            Ok(len) => Reply::Array((0..len).map(|_| build(frame, at)).collect()),
            Err(_) => Reply::Nil,
        },
    }
}

/// A reply's first line: its type byte, the rest of the line, and where the next line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The line starting at `at`; `None` while its CRLF has not arrived.
fn line(buf: &[u8], at: usize) -> Result<Option<Line<'_>>, ProtocolError> {
    let Some(rest) = buf.get(at..).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if newline < 2 || rest[newline - 1] != b'\r' {
        return Err(ProtocolError("line not ended by CRLF"));
    }
    Ok(Some((rest[0], &rest[1..newline - 1], at + newline + 1)))
}

fn number(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ProtocolError("not a number where one was expected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn reads_every_kind_of_reply() {
        let mut buf = BytesMut::from(
            &b"+OK\r\n-NOGROUP no such group\r\n:-42\r\n$5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"[..],
        );
        let mut replies = Vec::new();
        while let Some(reply) = take(&mut buf).unwrap() {
            replies.push(reply);
        }
        assert_eq!(
            replies,
            [
                Reply::Status(Bytes::from_static(b"OK")),
                Reply::Error(Bytes::from_static(b"NOGROUP no such group")),
                Reply::Int(-42),
                bulk("he\r\no"),
                bulk(""),
                Reply::Nil,
                Reply::Nil,
                Reply::Array(vec![]),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn reads_a_stream_read_reply_only_once_all_of_it_arrived() {
        let wire: &[u8] = b"*1\r\n*2\r\n$6\r\norders\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$7\r\npayload\r\n$2\r\n{}\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n+next\r\n";
        let end = wire.len() - b"+next\r\n".len();
        // Every cut short of the end is incomplete and leaves the buffer as it was.
        for cut in 0..end {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(take(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(wire);
        let reply = take(&mut buf).unwrap().unwrap();
        let entry = |id: &str, fields: Reply| Reply::Array(vec![bulk(id), fields]);
        assert_eq!(
            reply,
            Reply::Array(vec![Reply::Array(vec![
                bulk("orders"),
                Reply::Array(vec![
                    entry("1-0", Reply::Array(vec![bulk("payload"), bulk("{}")])),
                    entry("2-0", Reply::Nil),
                ]),
            ])])
        );
        assert_eq!(&buf[..], b"+next\r\n");
    }

    #[test]
    fn refuses_what_is_not_resp2() {
        for wire in [
            &b"%1\r\n"[..],
            b"$x\r\n",
            b"$3\r\nabcd\r\n",
            b":1\n",
            b"$99999999999\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            assert!(
                take(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut deep = BytesMut::from("*1\r\n".repeat(MAX_DEPTH + 1).as_bytes());
        assert!(take(&mut deep).is_err());
    }
}
