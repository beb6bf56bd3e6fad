//! The behaviour suite on the embedded memory broker.

mod conformance;

use std::sync::Arc;

use polybus::SharedBroker;
use polybus::brokers::memory::MemoryBroker;
use polybus::config::MemoryConfig;

async fn memory() -> SharedBroker {
    Arc::new(MemoryBroker::new(MemoryConfig::default()))
}

conformance::suite!(memory);
