//! `Polybus\MessageBrokerInterface`: the one-method contract application code depends on.

use ext_php_rs::prelude::*;
use ext_php_rs::types::ZendHashTable;

/// What application code needs from a broker: publish an array payload to a destination.
/// `Polybus\Broker` implements it; so can userland classes (the Laravel package's
/// `NullMessageBroker`, test doubles).
#[php_interface]
#[php(name = "Polybus\\MessageBrokerInterface")]
pub trait MessageBrokerInterface {
    /// Publishes `payload`, JSON-encoded, to `destination`.
    fn publish(&self, destination: String, payload: &ZendHashTable) -> PhpResult<()>;
}
