//! A plain connection that runs one command at a time and reads its reply with [`resp`]: what
//! a subscription's blocking reads use. It connects as redis-rs would (TCP or TLS, `AUTH`,
//! `SELECT`), names itself and learns its client id for `CLIENT UNBLOCK`.

use std::io;
use std::time::Duration;

use ::redis::{Cmd, ConnectionAddr, ConnectionInfo, RedisError, RedisResult};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::{self, Reply};
use crate::brokers::direct_pool::DirectPool;

/// A byte stream to the server: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How much room the read buffer gets before each read.
const READ_CHUNK: usize = 64 * 1024;

pub(super) struct DirectConnection {
    io: Box<dyn Io>,
    wire: Wire,
    /// The server's id for this connection (`CLIENT ID`).
    pub client_id: Option<i64>,
}

/// One command at a time on a connection: its encoding, and its reply read off what arrived.
#[derive(Default)]
pub(super) struct Wire {
    /// What arrived and was not taken yet.
    pub buf: BytesMut,
    /// The command being sent.
    pub out: Vec<u8>,
    /// A command was sent and its reply not read (the caller gave up on it): the connection
    /// is out of step and must be replaced.
    pending: bool,
}

impl Wire {
    /// Encodes `cmd` into [`Wire::out`]; refused while an earlier reply is unread.
    pub fn start(&mut self, cmd: &Cmd) -> RedisResult<()> {
        if self.pending {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier command's reply was never read",
            )
            .into());
        }
        self.pending = true;
        self.out.clear();
        cmd.write_packed_command(&mut self.out);
        Ok(())
    }

    /// The reply, once all of it arrived; an error reply is an `Err`.
    pub fn reply(&mut self) -> RedisResult<Option<Reply>> {
        match resp::take(&mut self.buf).map_err(io::Error::other)? {
            None => Ok(None),
            Some(reply) => {
                self.pending = false;
                match reply {
                    Reply::Error(text) => Err(server_error(&text)),
                    reply => Ok(Some(reply)),
                }
            }
        }
    }
}

/// The commands that set up a new connection, in order, each with whether an error reply
/// fails the connection: `AUTH` and `SELECT` as the URL asks, then `CLIENT SETNAME` (a user
/// without the CLIENT commands, such as an ACL or a managed service, still connects: the name
/// is only for `CLIENT LIST`).
pub(super) fn handshake(info: &ConnectionInfo, name: &str) -> Vec<(Cmd, bool)> {
    let mut steps = Vec::new();
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut auth = ::redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            auth.arg(user);
        }
        auth.arg(password);
        steps.push((auth, true));
    }
    if settings.db() != 0 {
        let mut select = ::redis::cmd("SELECT");
        select.arg(settings.db());
        steps.push((select, true));
    }
    let mut setname = ::redis::cmd("CLIENT");
    setname.arg("SETNAME").arg(name);
    steps.push((setname, false));
    steps
}

impl DirectConnection {
    /// Connects to `info` within `timeout` and names the connection `name`.
    pub async fn open(info: &ConnectionInfo, name: &str, timeout: Duration) -> RedisResult<Self> {
        match tokio::time::timeout(timeout, Self::connect(info, name)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("connecting")),
        }
    }

    async fn connect(info: &ConnectionInfo, name: &str) -> RedisResult<Self> {
        let io: Box<dyn Io> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Box::new(tcp(host, *port).await?),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                let tls = native_tls::TlsConnector::builder()
                    .danger_accept_invalid_certs(*insecure)
                    .danger_accept_invalid_hostnames(*insecure)
                    .build()
                    .map_err(|err| io::Error::other(err.to_string()))?;
                let stream = tokio_native_tls::TlsConnector::from(tls)
                    .connect(host, tcp(host, *port).await?)
                    .await
                    .map_err(|err| io::Error::other(err.to_string()))?;
                Box::new(stream)
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("no direct connection to {other}"),
                )
                .into());
            }
        };
        let mut conn = DirectConnection {
            io,
            wire: Wire::default(),
            client_id: None,
        };
        for (cmd, required) in handshake(info, name) {
            if let Err(err) = conn.query(&cmd).await
                && handshake_failed(&err, required)
            {
                return Err(err);
            }
        }
        // Without the id (no CLIENT commands), a block is not ended early.
        match conn.query(::redis::cmd("CLIENT").arg("ID")).await {
            Ok(Reply::Int(id)) => conn.client_id = Some(id),
            Err(err) if !answered(&err) => return Err(err),
            _ => {}
        }
        Ok(conn)
    }

    /// Sends `cmd` and reads its reply; an error reply is an `Err`.
    pub async fn query(&mut self, cmd: &Cmd) -> RedisResult<Reply> {
        self.wire.start(cmd)?;
        self.io.write_all(&self.wire.out).await?;
        loop {
            if let Some(reply) = self.wire.reply()? {
                return Ok(reply);
            }
            self.wire.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.wire.buf).await? == 0 {
                return Err(closed_by_server());
            }
        }
    }
}

async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether `err` on a [`handshake`] step fails the connection: any error on a required step,
/// and on the others anything but the server's refusal.
pub(super) fn handshake_failed(err: &RedisError, required: bool) -> bool {
    required || !answered(err)
}

/// The error for a connection the server closed.
pub(super) fn closed_by_server() -> RedisError {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    )
    .into()
}

/// True when `err` is the server's error reply (it answered: the connection is in step), not a
/// failure to reach it or read it.
pub(super) fn answered(err: &RedisError) -> bool {
    err.code().is_some()
}

/// The redis-rs error for an error reply (its code, such as `NOGROUP`, kept).
fn server_error(text: &[u8]) -> RedisError {
    let mut line = Vec::with_capacity(text.len() + 3);
    line.push(b'-');
    line.extend_from_slice(text);
    line.extend_from_slice(b"\r\n");
    match ::redis::parse_redis_value(&line).and_then(|value| value.extract_error()) {
        Err(err) => err,
        Ok(_) => io::Error::other(String::from_utf8_lossy(text).into_owned()).into(),
    }
}

/// Connections for commands whose caller waits for each reply (a single publish): a command
/// is one write and one read on the caller's task, without the hand-offs of redis-rs'
/// multiplexed connection (~5 µs a round trip on a local server).
pub(super) struct Singles {
    info: ConnectionInfo,
    name: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    pool: DirectPool<DirectConnection>,
}

/// Callers holding a connection at once, and idle connections kept (for the blocking
/// connections too).
pub(super) const IN_USE: usize = 4;
pub(super) const POOL_IDLE: usize = 4;

impl Singles {
    pub fn new(
        info: ConnectionInfo,
        name: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Singles {
            info,
            name: name.to_owned(),
            connect_timeout,
            response_timeout,
            pool: DirectPool::new(IN_USE, POOL_IDLE, None),
        }
    }

    /// Closes the idle connections, and those given back from now on.
    pub fn clear(&self) {
        self.pool.clear();
    }

    /// Runs `cmd` on a connection of its own, or `None` when [`IN_USE`] callers hold one (the
    /// caller uses the multiplexed connection). A connection that failed is dropped; one that
    /// failed on its first use after sitting idle (the server closed it) is replaced and the
    /// command sent once more.
    pub async fn query(&self, cmd: &Cmd) -> Option<RedisResult<Reply>> {
        let mut lease = self.pool.lease()?;
        let (mut conn, reused) = match lease.idle() {
            Some(conn) => (conn, true),
            None => match self.open().await {
                Ok(conn) => (conn, false),
                Err(err) => return Some(Err(err)),
            },
        };
        let mut reply = within(self.response_timeout, conn.query(cmd)).await;
        if resend(reused, &reply) {
            conn = match self.open().await {
                Ok(conn) => conn,
                Err(err) => return Some(Err(err)),
            };
            reply = within(self.response_timeout, conn.query(cmd)).await;
        }
        if in_step(&reply) {
            lease.keep(conn);
        }
        Some(reply)
    }

    async fn open(&self) -> RedisResult<DirectConnection> {
        DirectConnection::open(&self.info, &self.name, self.connect_timeout).await
    }
}

/// Whether a command that failed is sent once more on a new connection: when it failed on a
/// kept one with an I/O error (the server closed it while it sat idle), and not after a
/// timeout (the server is there, only slow, and may have run the command).
pub(super) fn resend(reused: bool, reply: &RedisResult<Reply>) -> bool {
    reused
        && reply
            .as_ref()
            .is_err_and(|err| err.is_io_error() && !err.is_timeout())
}

/// Whether a connection is in step after `reply`: a reply, even an error reply, leaves it so;
/// anything else may not.
pub(super) fn in_step(reply: &RedisResult<Reply>) -> bool {
    reply.as_ref().map_or_else(answered, |_| true)
}

pub(super) fn timed_out(what: &str) -> RedisError {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}")).into()
}

/// Runs `query` within `timeout`.
pub(super) async fn within<T>(
    timeout: Duration,
    query: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, query)
        .await
        .unwrap_or_else(|_| Err(timed_out("waiting for a reply")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reply_keeps_its_code() {
        let err = server_error(b"NOGROUP No such key 'x' or consumer group 'g'");
        assert_eq!(err.code(), Some("NOGROUP"));
        let err = server_error(b"ERR unknown command");
        assert!(err.to_string().contains("unknown command"), "{err}");
    }
}
