//! Confirmed publishes on connections of their own. A caller that awaits each publish (PHP's
//! `publish`, a Rust loop) writes the message's frames and reads its confirmation on its own
//! task: with lapin every publish crossed to its I/O thread and back twice (the frames written,
//! the confirmation read), ~180 µs a publish on a local broker. These connections speak just
//! enough AMQP 0-9-1 for that: the handshake (PLAIN), one channel in confirm mode, publishes
//! and what can answer them (ack, nack, return, a closed channel or connection). Frames are
//! written and parsed by `amq-protocol`, as lapin's are.
//!
//! They are plain TCP only (with TLS, publishes go through lapin's connection). They send no
//! heartbeats (one is only used while a caller waits on it): the broker closes one left idle
//! for two of its heartbeat intervals (at most [`HEARTBEAT_MAX`] s each), and one idle longer
//! than [`IDLE_LIMIT`] is not used again. A caller finding [`IN_USE`] of them busy, or none
//! that can be opened (a connection limit, say), publishes on the shared channel (see
//! [`DirectPool`]).

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, ProtocolVersion, WriteContext};
use amq_protocol::frame::{gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Buf, BytesMut};
use lapin::BasicProperties;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Answer, confirm_timed_out};
use crate::brokers::direct_pool::{DirectPool, Lease};
use crate::config::AmqpConfig;
use crate::error::{Error, Result};

/// Idle connections kept for the next caller.
const POOL_IDLE: usize = 4;
/// Connections in use at once; a caller beyond them publishes on the shared channel.
const IN_USE: usize = 4;
/// A connection unused this long is closed rather than trusted (no heartbeats keep it alive).
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// The longest heartbeat interval asked for (the broker's own, if shorter).
const HEARTBEAT_MAX: u16 = 60;
/// After a connection could not be opened, publishes use the shared channel this long.
const OPEN_BACKOFF: Duration = Duration::from_secs(30);
/// The largest frame asked for (the server may ask for less).
const FRAME_MAX: u32 = 128 * 1024;
/// The one channel a connection opens.
const CHANNEL: u16 = 1;
/// Bytes of a frame around its payload: type, channel, size, and the end octet.
const FRAME_HEADER: usize = 7;
const FRAME_END: u8 = 0xCE;

/// Where and as whom direct connections connect.
pub(super) struct DirectPublisher {
    host: String,
    port: u16,
    username: String,
    password: String,
    vhost: String,
    name: String,
    target: String,
    connect_timeout: Duration,
    pool: DirectPool<DirectConnection>,
    /// When a connection last could not be opened.
    open_failed: Mutex<Option<Instant>>,
    /// The broker closed a publish's channel (an exchange deleted, say): the shared channel
    /// should declare the topology again.
    channel_closed: AtomicBool,
}

/// One publish: where it goes and what it carries.
pub(super) struct Publish<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub payload: &'a [u8],
    pub properties: BasicProperties,
}

impl DirectPublisher {
    /// Direct connections for `config`, or `None` with TLS (lapin's connection publishes then).
    pub fn new(
        config: &AmqpConfig,
        target: &str,
        name: &str,
        connect_timeout: Duration,
    ) -> Option<Self> {
        if config.tls {
            return None;
        }
        Some(DirectPublisher {
            host: config.host.clone(),
            port: config.port,
            username: config.username.clone(),
            password: config.password.expose().to_owned(),
            vhost: config.vhost.clone(),
            name: name.to_owned(),
            target: target.to_owned(),
            connect_timeout,
            pool: DirectPool::new(IN_USE, POOL_IDLE, Some(IDLE_LIMIT)),
            open_failed: Mutex::new(None),
            channel_closed: AtomicBool::new(false),
        })
    }

    /// Publishes and waits (at most `timeout`) for the broker's confirmation. `None` when every
    /// direct connection is busy or none can be opened: the caller publishes on the shared
    /// channel instead.
    pub async fn publish(&self, publish: Publish<'_>, timeout: Duration) -> Option<Result<()>> {
        if self.resting() {
            return None;
        }
        let lease = self.pool.lease()?;
        match tokio::time::timeout(timeout, self.publish_now(lease, &publish)).await {
            Ok(outcome) => outcome,
            Err(_) => Some(Err(confirm_timed_out(publish.routing_key, timeout))),
        }
    }

    /// True when the broker's channel was closed by a publish since the last call.
    pub fn take_channel_closed(&self) -> bool {
        self.channel_closed.swap(false, Ordering::AcqRel)
    }

    async fn publish_now(
        &self,
        mut lease: Lease<'_, DirectConnection>,
        publish: &Publish<'_>,
    ) -> Option<Result<()>> {
        // A kept connection the server closed while it sat idle has said so (a close, a
        // heartbeat, or the end of the stream) and is not used.
        let (mut conn, reused) = match lease.idle().filter(DirectConnection::is_quiet) {
            Some(conn) => (conn, true),
            None => (self.open().await?, false),
        };
        let mut outcome = conn.publish(publish).await;
        // One that is lost as it is used (the server, or the network, dropped it while it sat
        // idle) is replaced and the message published once more on the new one: it may then
        // arrive twice (it kept its id), never not at all.
        if reused && matches!(outcome, Err(Failure::Io(_) | Failure::ConnectionClosed(_))) {
            conn = self.open().await?;
            outcome = conn.publish(publish).await;
        }
        Some(match outcome {
            Ok(answer) => {
                lease.keep(conn);
                answer.into_result(publish.routing_key)
            }
            Err(failure) => {
                if matches!(failure, Failure::ChannelClosed(_)) {
                    self.channel_closed.store(true, Ordering::Release);
                }
                Err(failure.into_error(&self.target))
            }
        })
    }

    /// True while publishes keep off direct connections after one could not be opened.
    fn resting(&self) -> bool {
        let failed = self.open_failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.is_some_and(|at| at.elapsed() < OPEN_BACKOFF)
    }

    /// A new connection, or `None` (noted, and logged) when it cannot be opened.
    async fn open(&self) -> Option<DirectConnection> {
        match tokio::time::timeout(self.connect_timeout, DirectConnection::open(self)).await {
            Ok(Ok(conn)) => Some(conn),
            failed => {
                let reason = match failed {
                    Ok(Err(failure)) => failure.reason(),
                    _ => format!("no answer within {:?}", self.connect_timeout),
                };
                tracing::debug!(target_url = %self.target, %reason, "no direct publishing connection; publishing on the shared channel");
                *self.open_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                None
            }
        }
    }

    /// Closes the idle connections (the broker is closing).
    pub fn clear(&self) {
        self.pool.clear();
    }
}

/// Why a connection cannot go on (it is dropped).
#[derive(Debug)]
enum Failure {
    /// Reading or writing failed: the message may or may not have reached the broker.
    Io(io::Error),
    /// The server closed the channel, with its reason (the publish's fault, such as an
    /// exchange that does not exist).
    ChannelClosed(String),
    /// The server closed the connection, with its reason.
    ConnectionClosed(String),
    /// The server sent something this connection does not expect.
    Protocol(String),
}

impl Failure {
    fn reason(self) -> String {
        match self {
            Failure::Io(err) => err.to_string(),
            Failure::ChannelClosed(reason) | Failure::ConnectionClosed(reason) => reason,
            Failure::Protocol(reason) => format!("unexpected AMQP traffic: {reason}"),
        }
    }

    fn into_error(self, target: &str) -> Error {
        match self {
            Failure::ChannelClosed(reason) => Error::Broker {
                backend: "rabbitmq",
                reason,
            },
            other => Error::Connection {
                target: target.to_owned(),
                reason: other.reason(),
            },
        }
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Failure::Io(err)
    }
}

type Step<T> = std::result::Result<T, Failure>;

/// A connection with channel 1 open in confirm mode.
struct DirectConnection {
    stream: TcpStream,
    input: BytesMut,
    output: Vec<u8>,
    frame_max: u32,
    /// The delivery tag the next publish gets.
    next_tag: u64,
    /// Open, and between whole frames on both sides: a goodbye can be sent.
    in_step: bool,
}

impl DirectConnection {
    async fn open(to: &DirectPublisher) -> Step<Self> {
        let stream = TcpStream::connect((to.host.as_str(), to.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = DirectConnection {
            stream,
            input: BytesMut::with_capacity(4096),
            output: Vec::with_capacity(4096),
            frame_max: FRAME_MAX,
            next_tag: 1,
            in_step: false,
        };
        conn.push(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()))?;
        conn.flush().await?;
        match conn.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => {
                let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
                if !offered.split(' ').any(|m| m == "PLAIN") {
                    return Err(Failure::ConnectionClosed(format!(
                        "the server offers no PLAIN authentication (only {offered})"
                    )));
                }
            }
            other => return Err(unexpected("connection.start", &other)),
        }
        let mut response = Vec::with_capacity(to.username.len() + to.password.len() + 2);
        response.push(0);
        response.extend_from_slice(to.username.as_bytes());
        response.push(0);
        response.extend_from_slice(to.password.as_bytes());
        conn.method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(&to.name),
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )?;
        conn.flush().await?;
        let tune = match conn.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => return Err(unexpected("connection.tune", &other)),
        };
        if tune.frame_max != 0 {
            conn.frame_max = tune.frame_max.min(FRAME_MAX);
        }
        conn.method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 1,
                frame_max: conn.frame_max,
                heartbeat: match tune.heartbeat {
                    0 => 0,
                    offered => offered.min(HEARTBEAT_MAX),
                },
            })),
        )?;
        conn.method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: to.vhost.as_str().into(),
            })),
        )?;
        conn.flush().await?;
        match conn.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected("connection.open-ok", &other)),
        }
        conn.method_frame(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        conn.method_frame(
            CHANNEL,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )?;
        conn.flush().await?;
        match conn.method().await? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected("channel.open-ok", &other)),
        }
        match conn.method().await? {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
            other => return Err(unexpected("confirm.select-ok", &other)),
        }
        conn.in_step = true;
        Ok(conn)
    }

    /// True when nothing arrived while the connection sat idle: an idle connection is sent
    /// nothing but a close (or its end).
    fn is_quiet(&self) -> bool {
        let mut byte = [0u8; 1];
        self.input.is_empty()
            && matches!(self.stream.try_read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }

    /// Publishes one message and reads until its confirmation.
    async fn publish(&mut self, publish: &Publish<'_>) -> Step<Answer> {
        self.in_step = false;
        let tag = self.next_tag;
        self.next_tag += 1;
        self.method_frame(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: publish.exchange.into(),
                routing_key: publish.routing_key.into(),
                mandatory: publish.mandatory,
                immediate: false,
            })),
        )?;
        self.push(&AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: publish.payload.len() as u64,
                properties: publish.properties.clone(),
            },
        ))?;
        let chunk = (self.frame_max as usize)
            .saturating_sub(FRAME_HEADER + 1)
            .max(1);
        for part in publish.payload.chunks(chunk) {
            self.push(&AMQPFrame::Body(CHANNEL, part.to_vec()))?;
        }
        self.flush().await?;
        let mut returned = None;
        loop {
            match self.frame().await? {
                AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))
                    if covers(ack.delivery_tag, ack.multiple, tag) =>
                {
                    self.in_step = true;
                    return Ok(returned.map_or(Answer::Confirmed, Answer::Returned));
                }
                AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(nack)))
                    if covers(nack.delivery_tag, nack.multiple, tag) =>
                {
                    self.in_step = true;
                    return Ok(Answer::Nacked);
                }
                AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Return(back))) => {
                    returned = Some(format!("{} {}", back.reply_code, back.reply_text.as_str()));
                }
                // The returned message's header and body, and heartbeats: nothing to do.
                AMQPFrame::Header(..)
                | AMQPFrame::Body(..)
                | AMQPFrame::Heartbeat
                | AMQPFrame::InvalidHeartbeat(_) => {}
                AMQPFrame::Method(_, method) => return Err(self.closing(method).await),
                AMQPFrame::ProtocolHeader(version) => {
                    return Err(Failure::Protocol(format!(
                        "the server asked for protocol {version}"
                    )));
                }
            }
        }
    }

    /// The failure for an unexpected method, with the server's reason for a closed channel or
    /// connection. A closed connection is answered (so the server logs a clean close); after a
    /// closed channel the connection is still in step, and dropping it says goodbye.
    async fn closing(&mut self, method: AMQPClass) -> Failure {
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                self.in_step = true;
                Failure::ChannelClosed(format!(
                    "the broker closed the channel: {} {}",
                    close.reply_code,
                    close.reply_text.as_str()
                ))
            }
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                let ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                if self.method_frame(0, ok).is_ok() {
                    let _ = self.flush().await;
                }
                Failure::ConnectionClosed(format!(
                    "the broker closed the connection: {} {}",
                    close.reply_code,
                    close.reply_text.as_str()
                ))
            }
            other => unexpected("a publisher confirm", &other),
        }
    }

    /// The next method frame (heartbeats skipped); a server's close is a failure.
    async fn method(&mut self) -> Step<AMQPClass> {
        loop {
            match self.frame().await? {
                AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    return Err(Failure::ConnectionClosed(format!(
                        "the broker refused the connection: {} {}",
                        c.reply_code,
                        c.reply_text.as_str()
                    )));
                }
                AMQPFrame::Method(_, method) => return Ok(method),
                AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => {}
                other => {
                    return Err(Failure::Protocol(format!(
                        "{other} while waiting for a method"
                    )));
                }
            }
        }
    }

    /// Reads one whole frame.
    async fn frame(&mut self) -> Step<AMQPFrame> {
        loop {
            if let Some(size) = frame_size(&self.input, self.frame_max)? {
                if self.input.len() >= size {
                    let frame = parse_frame(&self.input[..size])
                        .map(|(_, frame)| frame)
                        .map_err(|err| Failure::Protocol(format!("unreadable frame: {err}")))?;
                    self.input.advance(size);
                    return Ok(frame);
                }
                self.input.reserve(size - self.input.len());
            } else {
                self.input.reserve(4096);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                )));
            }
        }
    }

    fn method_frame(&mut self, channel: u16, method: AMQPClass) -> Step<()> {
        self.push(&AMQPFrame::Method(channel, method))
    }

    /// Serializes `frame` after what is waiting to be written.
    fn push(&mut self, frame: &AMQPFrame) -> Step<()> {
        let output = std::mem::take(&mut self.output);
        let context = gen_frame(frame)(WriteContext::from(output))
            .map_err(|err| Failure::Protocol(format!("cannot encode {frame}: {err}")))?;
        self.output = context.into_inner().0;
        Ok(())
    }

    async fn flush(&mut self) -> Step<()> {
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        Ok(())
    }
}

impl Drop for DirectConnection {
    /// Says goodbye without waiting for the answer, so the broker logs a closed connection
    /// rather than a lost one: only between whole frames, and only if the socket takes it at
    /// once.
    fn drop(&mut self) {
        if !self.in_step {
            return;
        }
        self.output.clear();
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "polybus closing".into(),
            class_id: 0,
            method_id: 0,
        }));
        if self.method_frame(0, close).is_ok() {
            let _ = self.stream.try_write(&self.output);
        }
    }
}

/// The size of the frame at the head of `input`, once its header is there; a frame over
/// `frame_max` or without its end octet is an error.
fn frame_size(input: &[u8], frame_max: u32) -> Step<Option<usize>> {
    if input.len() < FRAME_HEADER {
        return Ok(None);
    }
    let payload = u32::from_be_bytes([input[3], input[4], input[5], input[6]]);
    if payload > frame_max {
        return Err(Failure::Protocol(format!(
            "a frame of {payload} bytes, over the {frame_max} agreed"
        )));
    }
    let size = FRAME_HEADER + payload as usize + 1;
    if input.len() >= size && input[size - 1] != FRAME_END {
        return Err(Failure::Protocol("a frame without its end octet".into()));
    }
    Ok(Some(size))
}

/// Whether an ack or nack for `delivery_tag` (`multiple`: and every tag before) covers `tag`.
fn covers(delivery_tag: u64, multiple: bool, tag: u64) -> bool {
    delivery_tag == tag || (multiple && delivery_tag >= tag)
}

fn unexpected(waiting_for: &str, got: &AMQPClass) -> Failure {
    Failure::Protocol(format!("{got:?} while waiting for {waiting_for}"))
}

/// What the client tells the server about itself: its name (shown in the management UI) and
/// that it understands nacks and closes for a failed authentication.
fn client_properties(name: &str) -> FieldTable {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "basic.nack",
        "authentication_failure_close",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert(
        "product".into(),
        AMQPValue::LongString("polybus".as_bytes().into()),
    );
    properties.insert(
        "connection_name".into(),
        AMQPValue::LongString(name.as_bytes().into()),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_are_read_from_the_header_and_checked() {
        assert!(matches!(frame_size(&[1, 0, 1], 4096), Ok(None)));
        let mut frame = vec![8, 0, 0, 0, 0, 0, 0, FRAME_END];
        assert!(matches!(frame_size(&frame, 4096), Ok(Some(8))));
        frame[7] = 0;
        assert!(frame_size(&frame, 4096).is_err());
        let big = [3, 0, 1, 0, 2, 0, 0];
        assert!(frame_size(&big, 4096).is_err());
        assert!(matches!(frame_size(&big, 200_000), Ok(Some(131_080))));
    }

    #[test]
    fn an_ack_covers_its_tag_and_with_multiple_every_tag_before() {
        assert!(covers(5, false, 5));
        assert!(!covers(6, false, 5));
        assert!(covers(6, true, 5));
        assert!(!covers(4, true, 5));
    }

    #[test]
    fn answers_become_the_errors_the_shared_channel_gives() {
        assert!(Answer::Confirmed.into_result("jobs").is_ok());
        let returned = Answer::Returned("312 NO_ROUTE".into())
            .into_result("jobs")
            .unwrap_err()
            .to_string();
        assert!(
            returned.contains("unroutable") && returned.contains("NO_ROUTE"),
            "{returned}"
        );
        let nacked = Answer::Nacked.into_result("jobs").unwrap_err().to_string();
        assert!(nacked.contains("nack"), "{nacked}");
    }
}
