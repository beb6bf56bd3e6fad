//! `Broker`: a connection to one broker, publishing from asyncio or blocking code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use polybus::config::{BrokerKind, resolve_config};
use polybus::hub::HubConfig;
use polybus::{
    BlockingPublish, DeadLetters, FailoverBroker, FailoverOptions, Message, RedriveOptions,
    SharedBroker,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::consumer::{ConsumerSettings, NativeConsumer};
use crate::dead_letters::{Records, report};
use crate::errors::to_py;
use crate::receipt::Receipt;

/// A message to publish, as Python hands it over: topic, message (encoded here), key, headers,
/// id.
pub type Outgoing<'py> = (
    String,
    Bound<'py, PyAny>,
    Option<String>,
    Option<Bound<'py, PyAny>>,
    Option<String>,
);

/// Builds and checks a message from what Python handed over.
pub fn message((topic, value, key, headers, id): Outgoing<'_>) -> PyResult<Message> {
    let headers = crate::headers::header_map(headers.as_ref())?;
    let (payload, content_type) = crate::payload::encode(&value)?;
    let mut message = Message::bytes(topic, payload).with_content_type(content_type);
    message.key = key;
    if let Some(headers) = headers {
        message.headers.extend(headers);
    }
    if let Some(id) = id {
        message.id = id;
    }
    message.validate().map_err(to_py)?;
    Ok(message)
}

/// A connection to one broker (Kafka, RabbitMQ, Redis, memory or null).
#[pyclass(module = "polybus._polybus", frozen)]
pub struct Broker {
    pub(crate) inner: SharedBroker,
    url: String,
}

#[pymethods]
impl Broker {
    /// Connects from a URL, or from a broker kind plus the environment; `options` become URL
    /// query parameters.
    #[staticmethod]
    #[pyo3(signature = (url=None, broker=None, bootstrap_servers=None, options=None, failover=None))]
    fn connect(
        py: Python<'_>,
        url: Option<String>,
        broker: Option<String>,
        bootstrap_servers: Option<String>,
        options: Option<BTreeMap<String, String>>,
        failover: Option<BTreeMap<String, String>>,
    ) -> PyResult<Broker> {
        let kind: Option<BrokerKind> = broker.map(|b| b.parse()).transpose().map_err(to_py)?;
        let options = options.unwrap_or_default();
        let config = resolve_config(
            kind,
            url.as_deref(),
            bootstrap_servers.as_deref(),
            options.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |name| std::env::var(name).ok(),
        )
        .map_err(to_py)?;
        let failover = failover
            .map(|pairs| {
                FailoverOptions::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            })
            .transpose()
            .map_err(to_py)?;
        // The `polybus` logger's level as it is now: librdkafka reads its own when created.
        crate::logs::sync_python_level(py);
        let runtime = crate::runtime::get();
        let inner = py
            .detach(|| {
                runtime.block_on(async {
                    match failover {
                        Some(options) => FailoverBroker::connect(&config, options)
                            .await
                            .map(|b| Arc::new(b) as SharedBroker),
                        None => polybus::connect(&config).await,
                    }
                })
            })
            .map_err(to_py)?;
        Ok(Broker {
            inner,
            url: config.redacted_url(),
        })
    }

    /// Connects a hub: `(tasks, events)`, the same broker twice when the URLs and failover
    /// settings are the same.
    #[staticmethod]
    #[pyo3(signature = (tasks_url, events_url, tasks_failover=None, events_failover=None))]
    fn hub(
        py: Python<'_>,
        tasks_url: String,
        events_url: String,
        tasks_failover: Option<BTreeMap<String, String>>,
        events_failover: Option<BTreeMap<String, String>>,
    ) -> PyResult<(Broker, Broker)> {
        let options = |pairs: Option<BTreeMap<String, String>>| {
            pairs
                .map(|pairs| {
                    FailoverOptions::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                })
                .transpose()
                .map_err(to_py)
        };
        let mut config = HubConfig::new(tasks_url.clone(), events_url.clone());
        config.tasks_failover = options(tasks_failover)?;
        config.events_failover = options(events_failover)?;
        let redacted = |url: &str| {
            polybus::BrokerConfig::parse(url)
                .map(|c| c.redacted_url())
                .unwrap_or_default()
        };
        let runtime = crate::runtime::get();
        let hub = py
            .detach(|| runtime.block_on(config.connect()))
            .map_err(to_py)?;
        Ok((
            Broker {
                inner: hub.tasks().clone(),
                url: redacted(&tasks_url),
            },
            Broker {
                inner: hub.events().clone(),
                url: redacted(&events_url),
            },
        ))
    }

    /// The failover broker's state (`state`, `spool_depth`, `spool_bytes`, `replayed_total`,
    /// `spooled_total`, `last_error`), or None when this broker has no failover.
    fn failover_status<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(status) = self.inner.failover_status() else {
            return Ok(None);
        };
        let dict = PyDict::new(py);
        dict.set_item("state", status.state.as_str())?;
        dict.set_item("spool_depth", status.spool_depth)?;
        dict.set_item("spool_bytes", status.spool_bytes)?;
        dict.set_item("replayed_total", status.replayed_total)?;
        dict.set_item("spooled_total", status.spooled_total)?;
        dict.set_item("last_error", status.last_error)?;
        Ok(Some(dict))
    }

    /// Backend name: memory, null, kafka, rabbitmq or redis.
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// The broker URL with any password replaced by `***`.
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// What the backend can do, by capability name.
    #[getter]
    fn capabilities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.capabilities();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("persistent", c.persistent),
            ("consumer_groups", c.consumer_groups),
            ("fan_out", c.fan_out),
            ("ordering_per_key", c.ordering_per_key),
            ("acknowledgements", c.acknowledgements),
            ("redelivery", c.redelivery),
            ("delayed_redelivery", c.delayed_redelivery),
            ("replay", c.replay),
            ("offset_replay", c.offset_replay),
            ("native_headers", c.native_headers),
            ("pattern_subscriptions", c.pattern_subscriptions),
            ("ordered_batches", c.ordered_batches),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// Publishes `messages` to `topic` pipelined; resolves with their receipts, or raises the
    /// first error once every message was tried (the others were published). Messages that
    /// cannot be encoded, or a topic or headers that are invalid, raise before anything is sent.
    #[pyo3(signature = (topic, messages, keys=None, headers=None))]
    fn publish_batch<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        messages: &Bound<'py, PyAny>,
        keys: Option<Vec<Option<String>>>,
        headers: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let headers = crate::headers::header_map(headers.as_ref())?;
        let values: Vec<Bound<'py, PyAny>> = messages.try_iter()?.collect::<PyResult<_>>()?;
        if let Some(keys) = &keys
            && keys.len() != values.len()
        {
            return Err(PyValueError::new_err(format!(
                "{} keys for {} messages",
                keys.len(),
                values.len()
            )));
        }
        let mut keys = keys.map(Vec::into_iter);
        let mut batch = Vec::with_capacity(values.len());
        for value in &values {
            let (payload, content_type) = crate::payload::encode(value)?;
            let mut message =
                Message::bytes(topic.clone(), payload).with_content_type(content_type);
            message.key = keys.as_mut().and_then(Iterator::next).flatten();
            if let Some(headers) = &headers {
                message.headers.extend(headers.clone());
            }
            batch.push(message);
        }
        // Topic and headers are the same for every message: checking one checks them all.
        if let Some(first) = batch.first() {
            first.validate().map_err(to_py)?;
        }
        let broker = self.inner.clone();
        crate::completion::spawn(py, async move {
            let mut receipts = Vec::with_capacity(batch.len());
            for result in broker.publish_batch(batch).await {
                receipts.push(Receipt::from(result.map_err(to_py)?));
            }
            Ok(receipts)
        })
    }

    /// Publishes one message and waits for the broker, without holding the GIL.
    fn publish_blocking(&self, py: Python<'_>, outgoing: Outgoing<'_>) -> PyResult<Receipt> {
        let message = message(outgoing)?;
        let broker = self.inner.clone();
        let runtime = crate::runtime::get();
        // No bound of its own: the backend's bound on a publish applies, as it does to `publish`.
        py.detach(|| match broker.publish_blocking(message, Duration::MAX) {
            BlockingPublish::Done(receipt) => receipt,
            BlockingPublish::Declined(message) => runtime.block_on(broker.publish(message)),
        })
        .map(Receipt::from)
        .map_err(to_py)
    }

    /// Waits until everything published so far was accepted, for at most `timeout` seconds.
    #[pyo3(signature = (timeout=30.0))]
    fn flush<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let broker = self.inner.clone();
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        crate::completion::spawn(
            py,
            async move { broker.flush(timeout).await.map_err(to_py) },
        )
    }

    /// Flushes and closes the connection.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let broker = self.inner.clone();
        crate::completion::spawn(py, async move { broker.close().await.map_err(to_py) })
    }

    /// Flushes and closes, blocking (for `atexit` and synchronous code).
    fn close_blocking(&self, py: Python<'_>) -> PyResult<()> {
        let broker = self.inner.clone();
        let runtime = crate::runtime::get();
        py.detach(|| runtime.block_on(broker.close()))
            .map_err(to_py)
    }

    /// Starts a consumer whose messages are fetched with `NativeConsumer.next_batch`.
    fn consumer<'py>(
        &self,
        py: Python<'py>,
        settings: ConsumerSettings,
    ) -> PyResult<Bound<'py, PyAny>> {
        let broker = self.inner.clone();
        crate::completion::spawn(
            py,
            async move { NativeConsumer::start(broker, settings).await },
        )
    }

    /// How many dead letters wait in `dlq_topic` (not redriven yet).
    fn dead_letter_count<'py>(
        &self,
        py: Python<'py>,
        dlq_topic: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dead = DeadLetters::new(self.inner.clone());
        crate::completion::spawn(
            py,
            async move { dead.count(&dlq_topic).await.map_err(to_py) },
        )
    }

    /// The oldest `limit` dead letters of `dlq_topic`, left in place; a dict each.
    fn dead_letter_list<'py>(
        &self,
        py: Python<'py>,
        dlq_topic: String,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dead = DeadLetters::new(self.inner.clone());
        crate::completion::spawn(py, async move {
            dead.list(&dlq_topic, limit)
                .await
                .map(Records)
                .map_err(to_py)
        })
    }

    /// Republishes dead letters of `dlq_topic` to their topics (or `to`): `(moved, left)`.
    #[pyo3(signature = (dlq_topic, limit=None, to=None))]
    fn dead_letter_redrive<'py>(
        &self,
        py: Python<'py>,
        dlq_topic: String,
        limit: Option<usize>,
        to: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dead = DeadLetters::new(self.inner.clone());
        let options = RedriveOptions { limit, to };
        crate::completion::spawn(py, async move {
            dead.redrive(&dlq_topic, options)
                .await
                .map(report)
                .map_err(to_py)
        })
    }

    fn __repr__(&self) -> String {
        format!("<polybus Broker {}>", self.url)
    }
}
