//! Connections for a caller that blocks its own thread on a command (a PHP `publish`, Python's
//! `send_sync`): the command is one `send` and its reply one `recv` on a plain socket, with no
//! async runtime woken or waited on. On a local server that is ~2 µs less a round trip than
//! the runtime's wake-ups and timers, which is most of what a single publish costs beyond the
//! server's own work.
//!
//! Plain TCP only (a TLS or Unix socket URL goes through the async path), and at most
//! [`IN_USE`] callers at once, like [`super::direct::Singles`]: past that many, callers use the
//! async path.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use ::redis::{Cmd, ConnectionAddr, ConnectionInfo, RedisResult};

use super::direct::{Wire, closed_by_server, handshake, in_step, resend, timed_out};
use super::resp::Reply;
use crate::brokers::direct_pool::DirectPool;

/// Callers holding a connection at once, and idle connections kept.
const IN_USE: usize = 4;
const POOL_IDLE: usize = 4;

/// The most one read takes off the socket.
const SCRATCH: usize = 16 * 1024;

/// The shortest wait for a reply (a socket refuses a zero timeout: it would mean none).
const MIN_WAIT: Duration = Duration::from_millis(1);

/// One blocking connection.
struct BlockingConnection {
    stream: TcpStream,
    wire: Wire,
    /// Where each read lands before it joins the unread bytes (zeroed once, not per read).
    scratch: Vec<u8>,
    /// The socket's read timeout as last set (set again only when a caller asks another).
    read_timeout: Duration,
}

impl BlockingConnection {
    /// Connects to `host:port` within `connect_timeout` (each address tried in turn) and sets
    /// the connection up.
    fn open(
        host: &str,
        port: u16,
        info: &ConnectionInfo,
        name: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let mut last = None;
        let mut stream = None;
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(err) => last = Some(err),
            }
        }
        let stream = match (stream, last) {
            (Some(stream), _) => stream,
            (None, Some(err)) => return Err(err.into()),
            (None, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} resolves to no address"),
                )
                .into());
            }
        };
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(response_timeout))?;
        stream.set_read_timeout(Some(response_timeout))?;
        let mut conn = BlockingConnection {
            stream,
            wire: Wire::default(),
            scratch: vec![0; SCRATCH],
            read_timeout: response_timeout,
        };
        for (cmd, required) in handshake(info, name) {
            if let Err(err) = conn.query(&cmd, response_timeout)
                && (required || !super::direct::answered(&err))
            {
                return Err(err);
            }
        }
        Ok(conn)
    }

    /// Sends `cmd` and reads its reply, waiting at most `timeout` for each part of it.
    fn query(&mut self, cmd: &Cmd, timeout: Duration) -> RedisResult<Reply> {
        if timeout != self.read_timeout {
            self.stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = timeout;
        }
        // Set once a reply comes in parts (rare): a whole one needs no clock.
        let mut deadline = None;
        self.wire.start(cmd)?;
        self.stream.write_all(&self.wire.out)?;
        loop {
            if let Some(reply) = self.wire.reply()? {
                return Ok(reply);
            }
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(closed_by_server()),
                Ok(n) => self.wire.buf.extend_from_slice(&self.scratch[..n]),
                // A signal: go on waiting, within the deadline.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out("waiting for a reply"));
                }
                Err(err) => return Err(err.into()),
            }
            let now = Instant::now();
            if now >= *deadline.get_or_insert(now + timeout) {
                return Err(timed_out("waiting for a reply"));
            }
        }
    }
}

/// The blocking connections of one broker.
pub(super) struct BlockingSingles {
    /// Where to connect: `None` for an address these connections do not serve (TLS, Unix).
    tcp: Option<(String, u16)>,
    info: ConnectionInfo,
    name: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    pool: DirectPool<BlockingConnection>,
}

impl BlockingSingles {
    pub fn new(
        info: ConnectionInfo,
        name: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let tcp = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
            _ => None,
        };
        BlockingSingles {
            tcp,
            info,
            name: name.to_owned(),
            connect_timeout,
            response_timeout,
            pool: DirectPool::new(IN_USE, POOL_IDLE, None),
        }
    }

    /// Runs `cmd` on the calling thread, waiting at most `timeout` (and the broker's response
    /// timeout) for its reply, or `None` when it cannot: not plain TCP, or [`IN_USE`] callers
    /// hold a connection. A connection that failed is dropped; one that failed on its first
    /// use after sitting idle (the server closed it) is replaced and the command sent again.
    pub fn query(&self, cmd: &Cmd, timeout: Duration) -> Option<RedisResult<Reply>> {
        let (host, port) = self.tcp.as_ref()?;
        let mut lease = self.pool.lease()?;
        let timeout = timeout.min(self.response_timeout).max(MIN_WAIT);
        let open = || {
            BlockingConnection::open(
                host,
                *port,
                &self.info,
                &self.name,
                self.connect_timeout.min(timeout),
                self.response_timeout,
            )
        };
        let (mut conn, reused) = match lease.idle() {
            Some(conn) => (conn, true),
            None => match open() {
                Ok(conn) => (conn, false),
                Err(err) => return Some(Err(err)),
            },
        };
        let mut reply = conn.query(cmd, timeout);
        if resend(reused, &reply) {
            conn = match open() {
                Ok(conn) => conn,
                Err(err) => return Some(Err(err)),
            };
            reply = conn.query(cmd, timeout);
        }
        if in_step(&reply) {
            lease.keep(conn);
        }
        Some(reply)
    }

    /// Closes the idle connections, and those given back from now on.
    pub fn clear(&self) {
        self.pool.clear();
    }
}
