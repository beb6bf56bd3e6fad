//! Connections: the shared command connection (a redis-rs `ConnectionManager`, which reconnects
//! by itself), a dedicated connection per subscription for blocking reads (reconnected here
//! with capped exponential backoff), and the mapping of redis-rs errors to [`Error`].

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, RedisError, ServerErrorKind,
    Value,
};
use tokio::sync::Notify;

use super::direct::{self, DirectConnection};
use super::resp::Reply;
use super::settings::Settings;
use crate::error::Error;
use crate::subscription::DeliverySink;

/// How many commands may wait in a connection's pipeline channel (redis-rs' default is 50; a
/// consumer acknowledging hundreds of messages at once needs more).
const PIPELINE_BUFFER: usize = 1024;

/// The first and the longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Makes the shared command connection. One plain connection attempt comes first, so an
/// unreachable server is reported at once rather than after the manager's retries.
pub(super) async fn manager(
    client: &Client,
    settings: &Settings,
) -> Result<ConnectionManager, Error> {
    let probe = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connection_timeout))
        .set_response_timeout(Some(settings.response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&probe)
        .await
        .map_err(|err| Error::Connection {
            target: settings.target.clone(),
            reason: err.to_string(),
        })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connection_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        .set_min_delay(BACKOFF_MIN)
        .set_max_delay(BACKOFF_MAX)
        .set_number_of_retries(6)
        .set_pipeline_buffer_size(PIPELINE_BUFFER);
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|err| Error::Connection {
            target: settings.target.clone(),
            reason: err.to_string(),
        })
}

/// The [`Error`] for a redis-rs error.
pub(super) fn error(settings: &Settings, err: RedisError) -> Error {
    if err.is_timeout() {
        Error::Timeout {
            operation: format!("a command to {}", settings.target),
            after: settings.response_timeout,
        }
    } else if is_connection_error(&err) {
        Error::Connection {
            target: settings.target.clone(),
            reason: err.to_string(),
        }
    } else {
        Error::Broker {
            backend: "redis",
            reason: err.to_string(),
        }
    }
}

/// True when retrying on a new connection later may succeed: I/O failures and a server that
/// is loading, read-only (failing over) or busy.
pub(super) fn is_transient(err: &RedisError) -> bool {
    is_connection_error(err)
        || err.is_timeout()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::ClusterDown
            )
        )
        || err.code() == Some("BUSY")
}

fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal()
}

/// True for the server's "no such consumer group" error (the group or stream was deleted).
pub(super) fn is_no_group(err: &RedisError) -> bool {
    err.code() == Some("NOGROUP")
}

/// Capped exponential backoff with jitter.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    /// Back to the shortest pause, after a success.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// Sleeps for the next pause (between half of it and all of it); false when the
    /// subscription closed meanwhile.
    pub async fn wait(&mut self, sink: &DeliverySink) -> bool {
        let pause = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = sink.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

/// A subscription's own connection for blocking reads (`BLMOVE`, `XREADGROUP ... BLOCK`), which
/// would stall every other command on a shared connection. Its replies are read with
/// [`resp`](super::resp): a stream read's fields stay slices of the buffer they arrived in.
pub(super) struct Dedicated {
    info: ConnectionInfo,
    settings: Arc<Settings>,
    /// The client name shown by `CLIENT LIST`.
    name: String,
    conn: Option<DirectConnection>,
    backoff: Backoff,
}

/// What a blocking read came back with.
pub(super) enum Blocked {
    /// The server's reply (nil when the block timed out or was interrupted).
    Reply(Reply),
    /// The command failed; the connection is replaced before the next read.
    Failed(RedisError),
    /// The subscription closed before the read could be sent.
    Closed,
}

impl Dedicated {
    /// A connection named `polybus-<mode>-<group>-<consumer>` in `CLIENT LIST`.
    pub fn new(client: &Client, settings: Arc<Settings>, group: &str, consumer: &str) -> Self {
        let name = format!("polybus-{}-{group}-{consumer}", settings.mode.as_str())
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        Dedicated {
            info: client.get_connection_info().clone(),
            settings,
            name,
            conn: None,
            backoff: Backoff::new(),
        }
    }

    /// The connection, (re)connecting with backoff; `None` once the subscription closed.
    async fn connection(&mut self, sink: &DeliverySink) -> Option<&mut DirectConnection> {
        while self.conn.is_none() {
            if sink.is_cancelled() {
                return None;
            }
            let connecting =
                DirectConnection::open(&self.info, &self.name, self.settings.connection_timeout);
            let attempt = tokio::select! {
                _ = sink.cancelled() => return None,
                attempt = connecting => attempt,
            };
            match attempt {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.backoff.reset();
                }
                Err(err) => {
                    tracing::warn!(target_url = %self.settings.target, error = %err, "redis connection for blocking reads failed; retrying");
                    if !self.backoff.wait(sink).await {
                        return None;
                    }
                }
            }
        }
        self.conn.as_mut()
    }

    /// Runs a blocking command. When the subscription closes or `wake` is notified meanwhile,
    /// asks the server (through `manager`) to end the block early, so the caller can stop or
    /// re-plan at once; the reply is then nil.
    pub async fn blocking(
        &mut self,
        cmd: &Cmd,
        manager: &ConnectionManager,
        sink: &DeliverySink,
        wake: &Notify,
    ) -> Blocked {
        // The reply to a blocking read comes after the block at the latest.
        let timeout = self.settings.block + self.settings.response_timeout;
        let Some(conn) = self.connection(sink).await else {
            return Blocked::Closed;
        };
        let client_id = conn.client_id;
        let reply = {
            let read = direct::within(timeout, conn.query(cmd));
            tokio::pin!(read);
            let mut interrupted = false;
            loop {
                tokio::select! {
                    biased;
                    reply = &mut read => break reply,
                    _ = sink.cancelled(), if !interrupted => interrupted = true,
                    _ = wake.notified(), if !interrupted => interrupted = true,
                    // The command may not have reached the server when the first request to
                    // end it did: ask again until it returns.
                    _ = tokio::time::sleep(Duration::from_millis(100)), if interrupted => {}
                }
                if interrupted && let Some(id) = client_id {
                    let mut manager = manager.clone();
                    let _ = ::redis::cmd("CLIENT")
                        .arg("UNBLOCK")
                        .arg(id)
                        .query_async::<Value>(&mut manager)
                        .await;
                }
            }
        };
        match reply {
            Ok(reply) => Blocked::Reply(reply),
            Err(err) => {
                // The connection's state is unknown after a failure: start a fresh one.
                self.conn = None;
                Blocked::Failed(err)
            }
        }
    }

    /// Waits before the next attempt after a failure; false once the subscription closed.
    pub async fn pause(&mut self, sink: &DeliverySink) -> bool {
        self.backoff.wait(sink).await
    }

    /// A successful read: the next failure starts with the shortest pause again.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
    }
}

/// Reads a reply as text.
pub(super) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Reads a reply as an integer.
pub(super) fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
        Value::SimpleString(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// The items of an array reply (a nil reply has none).
pub(super) fn items_of(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}
