//! What a [`FailoverBroker`](super::FailoverBroker) and its background tasks share: the spool
//! and the state under one lock (so "spool or primary" and the append are decided together),
//! the primary connection, and the status channel.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::options::FailoverOptions;
use super::spool::{Spool, SpoolPosition, Spooled};
use super::status::{FailoverState, FailoverStatus};
use crate::broker::SharedBroker;
use crate::capabilities::Capabilities;
use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::message::Message;

/// The spool and the state, changed together under [`Shared::core`].
pub(super) struct Core {
    pub spool: Spool,
    pub state: FailoverState,
    pub spooled_total: u64,
    pub replayed_total: u64,
    pub last_error: Option<String>,
}

impl Core {
    fn status(&self) -> FailoverStatus {
        FailoverStatus {
            state: self.state,
            spool_depth: self.spool.depth(),
            spool_bytes: self.spool.bytes(),
            replayed_total: self.replayed_total,
            spooled_total: self.spooled_total,
            last_error: self.last_error.clone(),
        }
    }
}

pub(super) struct Shared {
    pub options: FailoverOptions,
    /// `None` once the broker is closed or dropped: the spool (and its lock) is released.
    core: Mutex<Option<Core>>,
    /// A copy of `Core::state`, read without the lock on the publish path.
    state: AtomicU8,
    primary: Mutex<Option<SharedBroker>>,
    /// How to (re)connect the primary when it was not reachable at open.
    connector: Option<BrokerConfig>,
    connecting: tokio::sync::Mutex<()>,
    /// Name and capabilities of the primary, once known.
    described: Mutex<Option<(&'static str, Capabilities)>>,
    status: watch::Sender<FailoverStatus>,
    /// Wakes the replayer when the state leaves `Primary`.
    pub wake: Notify,
    pub cancel: CancellationToken,
    pub closed: AtomicBool,
}

impl Shared {
    pub fn new(
        options: FailoverOptions,
        spool: Spool,
        primary: Option<SharedBroker>,
        connector: Option<BrokerConfig>,
    ) -> Shared {
        let state = if primary.is_none() || !spool.is_empty() {
            FailoverState::Spooling
        } else {
            FailoverState::Primary
        };
        let core = Core {
            spool,
            state,
            spooled_total: 0,
            replayed_total: 0,
            last_error: None,
        };
        let (status, _) = watch::channel(core.status());
        let described = primary.as_ref().map(|p| (p.name(), p.capabilities()));
        Shared {
            options,
            core: Mutex::new(Some(core)),
            state: AtomicU8::new(encode(state)),
            primary: Mutex::new(primary),
            connector,
            connecting: tokio::sync::Mutex::new(()),
            described: Mutex::new(described),
            status,
            wake: Notify::new(),
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> FailoverStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<FailoverStatus> {
        self.status.subscribe()
    }

    pub fn state(&self) -> FailoverState {
        decode(self.state.load(Ordering::Acquire))
    }

    pub fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed("failover broker"))
        } else {
            Ok(())
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Core>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core, then publishes the status; `Closed` once the spool is released.
    pub fn with_core<T>(&self, f: impl FnOnce(&mut Core) -> T) -> Result<T> {
        let mut guard = self.lock();
        let core = guard.as_mut().ok_or(Error::Closed("failover broker"))?;
        let before = core.state;
        let out = f(core);
        if core.state != before {
            self.state.store(encode(core.state), Ordering::Release);
            log_transition(before, core.state, core);
            if before == FailoverState::Primary {
                self.wake.notify_one();
            }
        }
        self.status.send_replace(core.status());
        Ok(out)
    }

    /// Releases the spool (and its lock), syncing it first.
    pub fn release_spool(&self) {
        if let Some(core) = self.lock().take() {
            drop(core);
            self.state
                .store(encode(FailoverState::Spooling), Ordering::Release);
        }
    }

    /// Appends `messages` (blocking I/O): the state leaves `Primary` if it was there.
    /// `cause` is the primary's error that sent them here, if any.
    pub fn append(&self, messages: &[Message], cause: Option<String>) -> Result<()> {
        self.with_core(|core| {
            core.spool.append(messages)?;
            core.spooled_total += messages.len() as u64;
            if cause.is_some() {
                core.last_error = cause;
            }
            if core.state == FailoverState::Primary {
                core.state = FailoverState::Spooling;
            }
            Ok(())
        })?
    }

    /// Reads the next replay batch (blocking I/O).
    pub fn read_batch(&self) -> Result<Vec<Spooled>> {
        let max = self.options.replay_batch;
        let mut guard = self.lock();
        let core = guard.as_mut().ok_or(Error::Closed("failover broker"))?;
        core.spool.read(max)
    }

    /// Records `count` messages replayed up to `position` (blocking I/O).
    pub fn commit(&self, position: SpoolPosition, count: u64) -> Result<()> {
        self.with_core(|core| {
            core.spool.commit(position)?;
            core.replayed_total += count;
            if core.state == FailoverState::Spooling {
                core.state = FailoverState::Replaying;
            }
            Ok(())
        })?
    }

    /// Back to `Primary` if the spool is empty and the primary connected; true if so.
    pub fn try_switch_to_primary(&self) -> Result<bool> {
        let connected = self.connected_primary().is_some();
        self.with_core(|core| {
            if connected && core.spool.is_empty() {
                core.state = FailoverState::Primary;
                true
            } else {
                false
            }
        })
    }

    /// The primary was found unreachable (or failed a replay): note why, leave `Replaying`.
    pub fn primary_failed(&self, error: &Error) {
        let _ = self.with_core(|core| {
            core.last_error = Some(error.to_string());
            if core.state == FailoverState::Replaying {
                core.state = FailoverState::Spooling;
            }
        });
    }

    /// Syncs the spool (blocking I/O).
    pub fn sync(&self) -> Result<()> {
        match self.lock().as_mut() {
            Some(core) => core.spool.sync(),
            None => Ok(()),
        }
    }

    /// The primary, if connected.
    pub fn connected_primary(&self) -> Option<SharedBroker> {
        self.primary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The primary, connecting it first if it was unreachable so far.
    pub async fn primary(&self) -> Result<SharedBroker> {
        if let Some(primary) = self.connected_primary() {
            return Ok(primary);
        }
        let Some(config) = &self.connector else {
            return Err(Error::Closed("failover primary"));
        };
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(primary) = self.connected_primary() {
            return Ok(primary);
        }
        let primary = crate::brokers::connect(config).await?;
        tracing::info!(primary = %config, "failover: connected to the primary");
        *self.described.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((primary.name(), primary.capabilities()));
        *self.primary.lock().unwrap_or_else(|e| e.into_inner()) = Some(primary.clone());
        Ok(primary)
    }

    /// The primary's name, or the configured backend's while it was never reached.
    pub fn name(&self) -> &'static str {
        if let Some((name, _)) = *self.described.lock().unwrap_or_else(|e| e.into_inner()) {
            return name;
        }
        self.connector
            .as_ref()
            .map_or("failover", |config| config.kind().as_str())
    }

    /// The primary's default prefetch, or the configured backend's while it was never reached.
    pub fn default_prefetch(&self) -> usize {
        if let Some(primary) = self.connected_primary() {
            return primary.default_prefetch();
        }
        self.connector
            .as_ref()
            .map_or(crate::broker::DEFAULT_PREFETCH, |config| {
                config.kind().default_prefetch()
            })
    }

    /// The primary's capabilities; all false while it was never reached.
    pub fn capabilities(&self) -> Capabilities {
        self.described
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(_, caps)| caps)
            .unwrap_or_default()
    }
}

fn log_transition(from: FailoverState, to: FailoverState, core: &Core) {
    let depth = core.spool.depth();
    let error = core.last_error.as_deref().unwrap_or("");
    match to {
        FailoverState::Spooling => {
            tracing::warn!(%from, %to, spool_depth = depth, error, "failover: the primary is unreachable; spooling to disk")
        }
        FailoverState::Replaying => {
            tracing::info!(%from, %to, spool_depth = depth, "failover: the primary is back; replaying the spool")
        }
        FailoverState::Primary => {
            tracing::info!(%from, %to, replayed_total = core.replayed_total, "failover: the spool is drained; publishing to the primary")
        }
    }
}

fn encode(state: FailoverState) -> u8 {
    match state {
        FailoverState::Primary => 0,
        FailoverState::Spooling => 1,
        FailoverState::Replaying => 2,
    }
}

fn decode(value: u8) -> FailoverState {
    match value {
        0 => FailoverState::Primary,
        1 => FailoverState::Spooling,
        _ => FailoverState::Replaying,
    }
}

/// True for errors that mean the primary is unreachable (the message goes to the spool):
/// connection loss, timeouts, a closed connection.
pub(super) fn is_outage(error: &Error) -> bool {
    error.is_transient() || matches!(error, Error::Closed(_))
}

/// A copy of `error` for each of several results (errors are not `Clone`).
pub(super) fn copy_error(error: &Error) -> Error {
    match error {
        Error::Closed(what) => Error::Closed(what),
        Error::Broker { backend, reason } => Error::Broker {
            backend,
            reason: reason.clone(),
        },
        Error::Config { part, reason } => Error::config(part.clone(), reason.clone()),
        other => Error::Broker {
            backend: "failover",
            reason: other.to_string(),
        },
    }
}
