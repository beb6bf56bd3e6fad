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

use super::direct::{
    IN_USE, POOL_IDLE, Wire, closed_by_server, handshake, handshake_failed, in_step, resend,
    timed_out,
};
use super::resp::Reply;
use crate::brokers::direct_pool::DirectPool;

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
    /// The socket's read and write timeouts as last set: set again only when a call needs
    /// another, so a run of calls with the same bound makes no extra system call.
    socket_timeout: Duration,
}

/// The time left until `deadline`, or the timeout error for `what`.
fn left(deadline: Instant, what: &str) -> RedisResult<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left.max(MIN_WAIT)),
        _ => Err(timed_out(what)),
    }
}

impl BlockingConnection {
    /// Connects to `host:port` (each address tried in turn, each for at most
    /// `connect_timeout`) and sets the connection up, all before `deadline`.
    fn open(
        host: &str,
        port: u16,
        info: &ConnectionInfo,
        name: &str,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> RedisResult<Self> {
        let mut last = None;
        let mut stream = None;
        for addr in (host, port).to_socket_addrs()? {
            let wait = connect_timeout.min(left(deadline, "connecting")?);
            match TcpStream::connect_timeout(&addr, wait) {
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
        let mut conn = BlockingConnection {
            stream,
            wire: Wire::default(),
            scratch: vec![0; SCRATCH],
            socket_timeout: Duration::ZERO,
        };
        for (cmd, required) in handshake(info, name) {
            let wait = left(deadline, "connecting")?;
            if let Err(err) = conn.query(&cmd, wait, deadline)
                && handshake_failed(&err, required)
            {
                return Err(err);
            }
        }
        Ok(conn)
    }

    /// Sets the socket's read and write timeouts to `wait` unless they are already.
    fn wait_at_most(&mut self, wait: Duration) -> io::Result<()> {
        if wait != self.socket_timeout {
            self.stream.set_read_timeout(Some(wait))?;
            self.stream.set_write_timeout(Some(wait))?;
            self.socket_timeout = wait;
        }
        Ok(())
    }

    /// Sends `cmd` and reads its reply by `deadline`. `timeout` is the call's whole bound: the
    /// socket waits that long (a stable value, set once) for the first part of the reply, and
    /// only the time left for any later part.
    fn query(&mut self, cmd: &Cmd, timeout: Duration, deadline: Instant) -> RedisResult<Reply> {
        self.wait_at_most(timeout)?;
        self.wire.start(cmd)?;
        self.stream.write_all(&self.wire.out)?;
        let mut first = true;
        loop {
            if let Some(reply) = self.wire.reply()? {
                return Ok(reply);
            }
            if !first {
                let wait = left(deadline, "waiting for a reply")?;
                if wait < self.socket_timeout {
                    self.wait_at_most(wait)?;
                }
            }
            first = false;
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(closed_by_server()),
                Ok(n) => self.wire.buf.extend_from_slice(&self.scratch[..n]),
                // A signal, or the socket's wait ran out: the deadline decides.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => return Err(err.into()),
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

    /// Runs `cmd` on the calling thread within `timeout` (and the broker's response timeout),
    /// connecting first when no idle connection is kept, or `None` when it cannot: not plain
    /// TCP, or [`IN_USE`] callers hold a connection. A connection that failed is dropped; one
    /// that failed on its first use after sitting idle (the server closed it) is replaced and
    /// the command sent again, within the same bound.
    pub fn query(&self, cmd: &Cmd, timeout: Duration) -> Option<RedisResult<Reply>> {
        let (host, port) = self.tcp.as_ref()?;
        let mut lease = self.pool.lease()?;
        let timeout = timeout.min(self.response_timeout).max(MIN_WAIT);
        let deadline = Instant::now() + timeout;
        let open = || {
            BlockingConnection::open(
                host,
                *port,
                &self.info,
                &self.name,
                self.connect_timeout,
                deadline,
            )
        };
        let (mut conn, reused) = match lease.idle() {
            Some(conn) => (conn, true),
            None => match open() {
                Ok(conn) => (conn, false),
                Err(err) => return Some(Err(err)),
            },
        };
        let mut reply = conn.query(cmd, timeout, deadline);
        if resend(reused, &reply) {
            conn = match open() {
                Ok(conn) => conn,
                Err(err) => return Some(Err(err)),
            };
            reply = conn.query(cmd, timeout, deadline);
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
