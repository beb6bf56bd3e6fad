//! `ProducerBase`: the native part of `polybus.Producer`, its `send`.
//!
//! `send` is the hot path of a Python service that publishes one message at a time. As a
//! method of a native base class it runs no Python frame per message, and it is still an
//! ordinary class attribute: a subclass overrides it and `mock.patch.object(Producer, "send")`
//! replaces it as users expect.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::broker::{Broker, message as message_of};

/// The base class of `polybus.Producer`, holding its broker.
#[pyclass(module = "polybus._polybus", subclass, frozen)]
pub struct ProducerBase {
    broker: Py<Broker>,
}

#[pymethods]
impl ProducerBase {
    #[new]
    fn new(broker: Py<Broker>) -> Self {
        ProducerBase { broker }
    }

    /// The native broker connection.
    #[getter]
    fn broker(&self, py: Python<'_>) -> Py<Broker> {
        self.broker.clone_ref(py)
    }

    /// Publishes one message; await the result for the broker's receipt.
    ///
    /// Inside a running loop the publish is under way when `send` returns (as with
    /// confluent-kafka's `produce`; the sends of one loop tick reach the engine together, as one
    /// batch), and invalid messages raise at once. The result is a `Sending`: a future
    /// (`asyncio.isfuture`) that is also a coroutine, so `await`, `asyncio.gather` (without a
    /// task per message), `asyncio.wait_for`, `asyncio.shield` and `asyncio.create_task` all
    /// accept it. Called before a loop runs (`asyncio.run(producer.send(...))`) it returns a
    /// coroutine that publishes when awaited. From blocking code use `send_sync`.
    #[pyo3(signature = (topic, message, *, key=None, headers=None, message_id=None))]
    fn send<'py>(
        slf: &Bound<'py, Self>,
        topic: String,
        message: Bound<'py, PyAny>,
        key: Option<String>,
        headers: Option<Bound<'py, PyAny>>,
        message_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let Some(event_loop) = crate::completion::running_loop_or_none(py)? else {
            static LATER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            return LATER
                .import(py, "polybus._producer", "_send_when_awaited")?
                .call1((slf, topic, message, key, headers, message_id));
        };
        let message = message_of((topic, message, key, headers, message_id))?;
        let broker = slf.get().broker.bind(py).get().inner.clone();
        crate::completion::send(py, &event_loop, broker, message).map(Bound::into_any)
    }
}
