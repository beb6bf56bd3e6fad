//! Helpers shared by the scenarios: unique names, bounded waits, recording handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polybus::{Capabilities, Delivery, SharedBroker, Subscription};

/// Upper bound of any single wait in the suite: a scenario never hangs.
pub const WAIT: Duration = Duration::from_secs(30);

pub use super::common::{init_tracing, unique};

/// Returns false (and says why) when the backend lacks what a scenario needs.
pub fn requires(broker: &SharedBroker, what: &str, check: impl Fn(&Capabilities) -> bool) -> bool {
    let ok = check(&broker.capabilities());
    if !ok {
        eprintln!(
            "skipped: the {} backend does not declare {what}",
            broker.name()
        );
    }
    ok
}

/// The next delivery, or a panic naming what was awaited.
pub async fn recv(subscription: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, subscription.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("subscription failed while waiting for {what}: {err}"),
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("no delivery within {WAIT:?} while waiting for {what}"),
    }
}

/// Asserts that nothing arrives within `quiet`.
pub async fn expect_nothing(subscription: &mut Subscription, quiet: Duration, why: &str) {
    if let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, subscription.next()).await {
        panic!(
            "expected no delivery ({why}), got {:?} attempt {}",
            delivery.message.id, delivery.attempt
        );
    }
}

/// Waits until `done()` holds, checking every 5 ms, or panics with `what`.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts, per message id, how many times a handler succeeded with it.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<HashMap<String, u32>>>);

impl Tally {
    pub fn record(&self, id: &str) {
        *self.0.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    }

    pub fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }

    pub fn snapshot(&self) -> HashMap<String, u32> {
        self.0.lock().unwrap().clone()
    }
}
