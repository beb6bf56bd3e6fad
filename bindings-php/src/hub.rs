//! `Polybus\Hub`: tasks to a queue broker, events to a stream broker, events replayed by time.

use ext_php_rs::boxed::ZBox;
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendCallable, ZendClassObject, ZendHashTable};

use crate::broker::Broker;

/// Routes tasks (work queues: each task to one worker, e.g. RabbitMQ) and events (streams:
/// every group gets every event, history can be replayed, e.g. Kafka) to their brokers.
#[php_class]
#[php(name = "Polybus\\Hub")]
pub struct Hub {
    tasks: Broker,
    events: Broker,
}

#[php_impl]
impl Hub {
    /// Tasks go to `$tasks`, events to `$events` (the same broker may serve both).
    pub fn __construct(tasks: &Broker, events: &Broker) -> PhpResult<Self> {
        Ok(Hub {
            tasks: tasks.share()?,
            events: events.share()?,
        })
    }

    /// Publishes a task to the task broker; returns its id. `$options` as `publishMessage`.
    pub fn publish_task(
        &self,
        destination: String,
        payload: &ZendHashTable,
        options: Option<&ZendHashTable>,
    ) -> PhpResult<String> {
        self.tasks.publish_message(destination, payload, options)
    }

    /// Publishes an event to the event broker; returns its id. `$options` as `publishMessage`.
    pub fn publish_event(
        &self,
        destination: String,
        payload: &ZendHashTable,
        options: Option<&ZendHashTable>,
    ) -> PhpResult<String> {
        self.events.publish_message(destination, payload, options)
    }

    /// The task broker (consume tasks with it).
    pub fn tasks(&self) -> PhpResult<ZBox<ZendClassObject<Broker>>> {
        Ok(ZendClassObject::new(self.tasks.share()?))
    }

    /// The event broker (consume events with it).
    pub fn events(&self) -> PhpResult<ZBox<ZendClassObject<Broker>>> {
        Ok(ZendClassObject::new(self.events.share()?))
    }

    /// Consumes events of `$destination` from the first one at or after `$since`
    /// (milliseconds since the epoch), as `Broker::consume` does with `start` set to
    /// `timestamp:$since`. Throws `ConfigurationException` where the event broker keeps no
    /// history (RabbitMQ, Redis lists).
    #[php(defaults(timeout = 30.0))]
    #[php(optional = "timeout")]
    pub fn replay_events(
        &self,
        destination: String,
        since: i64,
        handler: ZendCallable,
        limit: i64,
        timeout: f64,
        options: Option<&ZendHashTable>,
    ) -> PhpResult<i64> {
        let mut merged = match options {
            Some(options) => options.to_owned(),
            None => ZendHashTable::new(),
        };
        merged.insert("start", format!("timestamp:{since}"))?;
        crate::consume::consume(
            &self.events,
            destination,
            handler,
            limit,
            timeout,
            Some(&merged),
        )
    }
}
