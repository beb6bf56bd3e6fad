//! The background tasks of a [`FailoverBroker`](super::FailoverBroker): the replayer, which
//! probes the primary and sends the spool to it in order, and the interval fsync.

use std::sync::Arc;
use std::time::Duration;

use super::options::FsyncPolicy;
use super::shared::Shared;
use super::status::FailoverState;
use crate::error::{Error, Result};

/// How many times the probe interval the pause between attempts may grow to.
const MAX_BACKOFF_FACTOR: u32 = 16;

/// Capped exponential backoff with jitter, from the probe interval up.
struct Backoff {
    base: Duration,
    next: Duration,
}

impl Backoff {
    fn new(base: Duration) -> Self {
        Backoff { base, next: base }
    }

    fn reset(&mut self) {
        self.next = self.base;
    }

    /// The next pause (between 75% and 100% of it); the one after is twice as long.
    fn next(&mut self) -> Duration {
        let pause = self.next.mul_f64(0.75 + fastrand::f64() / 4.0);
        self.next = (self.next * 2).min(self.base * MAX_BACKOFF_FACTOR);
        pause
    }
}

/// Runs a blocking spool operation off the async threads.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
) -> Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|err| Error::Broker {
            backend: "failover",
            reason: format!("a spool task failed: {err}"),
        })?
}

/// Sleeps for `pause`; false when the broker closed meanwhile.
async fn pause(shared: &Shared, pause: Duration) -> bool {
    tokio::select! {
        _ = shared.cancel.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

/// Replays the spool whenever the state is not `Primary`, until the broker closes.
///
/// Each round: connect the primary if needed, read a batch from the cursor, `publish_batch`
/// it, commit the cursor past the acknowledged prefix. A failure pauses with backoff and the
/// round starts again from the cursor; an empty spool switches publishes back to the primary.
pub(super) async fn run_replayer(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(shared.options.probe_interval);
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        if shared.state() == FailoverState::Primary {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = shared.wake.notified() => {}
            }
            // The primary just failed a publish: give it a moment before probing.
            backoff.reset();
            if !pause(&shared, backoff.next()).await {
                return;
            }
            continue;
        }
        match replay_round(&shared).await {
            Ok(true) => backoff.reset(),
            Ok(false) => {
                backoff.reset();
                if !pause(&shared, Duration::from_millis(1)).await {
                    return;
                }
            }
            Err(Error::Closed("failover broker")) => return,
            Err(err) => {
                shared.primary_failed(&err);
                let wait = backoff.next();
                tracing::debug!(error = %err, retry_in = ?wait, "failover: replay held up");
                if !pause(&shared, wait).await {
                    return;
                }
            }
        }
    }
}

/// One replay step. `Ok(true)`: a batch went through; `Ok(false)`: nothing was replayed (the
/// spool is empty, and publishes go to the primary unless one is being spooled right now).
async fn replay_round(shared: &Arc<Shared>) -> Result<bool> {
    let primary = tokio::select! {
        _ = shared.cancel.cancelled() => return Err(Error::Closed("failover broker")),
        primary = shared.primary() => primary?,
    };
    let batch = blocking(shared, |s| s.read_batch()).await?;
    if batch.is_empty() {
        blocking(shared, |s| s.try_switch_to_primary()).await?;
        return Ok(false);
    }
    let count = batch.len();
    let mut positions = Vec::with_capacity(count);
    let mut messages = Vec::with_capacity(count);
    for spooled in batch {
        positions.push(spooled.position);
        messages.push(spooled.message);
    }
    let results = tokio::select! {
        _ = shared.cancel.cancelled() => return Err(Error::Closed("failover broker")),
        results = primary.publish_batch(messages) => results,
    };
    let acknowledged = results.iter().take_while(|r| r.is_ok()).count();
    if acknowledged > 0 {
        let position = positions[acknowledged - 1];
        blocking(shared, move |s| s.commit(position, acknowledged as u64)).await?;
    }
    match results.into_iter().nth(acknowledged) {
        None => Ok(true),
        Some(Err(err)) => {
            if !super::shared::is_outage(&err) {
                tracing::error!(error = %err, "failover: the primary refused a spooled message; retrying it with backoff");
            }
            Err(err)
        }
        Some(Ok(_)) => unreachable!("the acknowledged prefix ends at a failure"),
    }
}

/// Fsyncs the spool at the policy's interval, until the broker closes.
pub(super) async fn run_interval_sync(shared: Arc<Shared>) {
    let FsyncPolicy::Interval(every) = shared.options.fsync else {
        return;
    };
    while pause(&shared, every).await {
        if let Err(err) = blocking(&shared, |s| s.sync()).await {
            tracing::error!(error = %err, "failover: syncing the spool failed");
        }
    }
}
