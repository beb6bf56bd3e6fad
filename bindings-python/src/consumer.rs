//! `NativeConsumer`: the engine's consumer runtime, feeding an asyncio loop in batches.

use std::sync::Arc;
use std::time::Duration;

use polybus::bridge::{HandlerBridge, Job};
use polybus::{
    Consumer, ConsumerOptions, ConsumerStats, DeadLetter, Dedup, HandlerError, ReadySignal,
    RetryPolicy, SharedBroker, StartPosition, SubscriptionSpec,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyTuple};

use crate::completion::Ready;
use crate::errors::to_py;

/// Consumer settings as Python hands them over: a dict with these keys.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct ConsumerSettings {
    topics: Vec<String>,
    group: String,
    concurrency: usize,
    /// Every message in the order received, one at a time, the prefetch handed over ahead.
    sequential: bool,
    /// `None`: the broker's default ([`polybus::Broker::default_prefetch`]).
    prefetch: Option<usize>,
    start: String,
    max_retries: Option<u32>,
    retry_delay: f64,
    retry_backoff: f64,
    max_retry_delay: f64,
    jitter: f64,
    dead_letter: Option<String>,
    dedup: Option<String>,
    dedup_ttl: f64,
    drain_timeout: f64,
    /// The handler takes the decoded message alone: jobs carry no metadata (see [`JobBatch`]).
    body_only: bool,
}

impl ConsumerSettings {
    /// Jobs handed to Python at once, waiting there for a free worker so the workers never
    /// idle while the engine refills: the prefetch, at least `concurrency`.
    fn in_flight(&self, prefetch: usize) -> usize {
        prefetch.max(self.concurrency).max(1)
    }

    async fn options(&self, in_flight: usize) -> PyResult<ConsumerOptions> {
        let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
        Ok(ConsumerOptions {
            retry: RetryPolicy {
                max_retries: self.max_retries,
                initial_delay: seconds(self.retry_delay),
                multiplier: self.retry_backoff,
                max_delay: seconds(self.max_retry_delay),
                jitter: self.jitter,
            },
            dead_letter: match self.dead_letter.as_deref() {
                None => DeadLetter::default(),
                Some(text) => text.parse().map_err(to_py)?,
            },
            dedup: match self.dedup.as_deref() {
                None => None,
                Some(spec) => Some(
                    Dedup::open(spec, seconds(self.dedup_ttl))
                        .await
                        .map_err(to_py)?,
                ),
            },
            drain_timeout: seconds(self.drain_timeout),
            sequential_ahead: self.sequential.then_some(in_flight),
        })
    }
}

/// A batch of jobs as a list of tuples:
/// `(token, run, body, payload, content_type, topic, id, key, headers, timestamp_ms, attempt,
/// partition, offset)`: jobs with the same `run` id are handled one after another, in order;
/// `body` is the decoded JSON payload, or `NOT_DECODED` for Python to decode. With
/// `body_only`, a job is its first five items, and `payload` and `content_type` are `None`
/// when the body was decoded: a handler of the message alone needs nothing else, and the
/// objects not made are most of the cost of a job.
pub struct JobBatch {
    jobs: Vec<Job>,
    bridge: Arc<HandlerBridge>,
    body_only: bool,
}

impl JobBatch {
    fn full<'py>(py: Python<'py>, job: Job) -> PyResult<Bound<'py, PyTuple>> {
        let m = job.message;
        let headers = PyDict::new(py);
        for (name, value) in m.headers {
            headers.set_item(name, value)?;
        }
        let body = crate::decode::body(py, &m.payload, &m.content_type)?;
        PyTuple::new(
            py,
            [
                job.token.into_pyobject(py)?.into_any(),
                job.run.into_pyobject(py)?.into_any(),
                body,
                PyBytes::new(py, &m.payload).into_any(),
                m.content_type.into_pyobject(py)?.into_any(),
                m.topic.into_pyobject(py)?.into_any(),
                m.id.into_pyobject(py)?.into_any(),
                m.key.into_pyobject(py)?.into_any(),
                headers.into_any(),
                m.timestamp_ms.into_pyobject(py)?.into_any(),
                job.attempt.into_pyobject(py)?.into_any(),
                job.meta.partition.into_pyobject(py)?.into_any(),
                job.meta.offset.into_pyobject(py)?.into_any(),
            ],
        )
    }

    fn body_only<'py>(py: Python<'py>, job: Job) -> PyResult<Bound<'py, PyTuple>> {
        let m = &job.message;
        let body = crate::decode::body(py, &m.payload, &m.content_type)?;
        let (payload, content_type) = if body.is(crate::decode::not_decoded(py)?) {
            (
                PyBytes::new(py, &m.payload).into_any(),
                m.content_type.as_str().into_pyobject(py)?.into_any(),
            )
        } else {
            (py.None().into_bound(py), py.None().into_bound(py))
        };
        PyTuple::new(
            py,
            [
                job.token.into_pyobject(py)?.into_any(),
                job.run.into_pyobject(py)?.into_any(),
                body,
                payload,
                content_type,
            ],
        )
    }
}

impl Ready for JobBatch {
    fn into_value(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let list = PyList::empty(py);
        for job in self.jobs {
            let item = if self.body_only {
                Self::body_only(py, job)?
            } else {
                Self::full(py, job)?
            };
            list.append(item)?;
        }
        Ok(list.into_any().unbind())
    }

    /// Nobody awaits the batch any more (the pump was cancelled): its jobs go back to the
    /// consumer's retry policy rather than waiting for outcomes that never come.
    fn abandon(self: Box<Self>) {
        self.bridge.complete(self.jobs.into_iter().map(|job| {
            (
                job.token,
                Err(HandlerError::retryable(
                    "the consumer's pump was cancelled before handling the message",
                )),
            )
        }));
    }
}

/// Counters as a dict.
pub struct Stats(ConsumerStats);

impl<'py> IntoPyObject<'py> for Stats {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.0;
        let dict = PyDict::new(py);
        for (name, value) in [
            ("received", s.received),
            ("succeeded", s.succeeded),
            ("failed", s.failed),
            ("retried", s.retried),
            ("rejected", s.rejected),
            ("dead_lettered", s.dead_lettered),
            ("duplicates", s.duplicates),
            ("released", s.released),
            ("settle_errors", s.settle_errors),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

/// A running consumer of the engine whose handler is Python code.
#[pyclass(module = "polybus._polybus", frozen)]
pub struct NativeConsumer {
    bridge: Arc<HandlerBridge>,
    body_only: bool,
    consumer: Arc<tokio::sync::Mutex<Option<Consumer>>>,
    ready: ReadySignal,
    stats: Arc<std::sync::Mutex<ConsumerStats>>,
}

impl NativeConsumer {
    pub async fn start(
        broker: SharedBroker,
        settings: ConsumerSettings,
    ) -> PyResult<NativeConsumer> {
        let prefetch = settings
            .prefetch
            .unwrap_or_else(|| broker.default_prefetch());
        let in_flight = settings.in_flight(prefetch);
        let spec = SubscriptionSpec::new(settings.topics.clone(), settings.group.clone())
            .with_concurrency(in_flight)
            .with_prefetch(prefetch)
            .with_start(settings.start.parse::<StartPosition>().map_err(to_py)?);
        let bridge = HandlerBridge::new(in_flight);
        let options = settings.options(in_flight).await?;
        let consumer = Consumer::start(broker, spec, bridge.handler(), options)
            .await
            .map_err(to_py)?;
        Ok(NativeConsumer {
            bridge,
            body_only: settings.body_only,
            ready: consumer.ready(),
            consumer: Arc::new(tokio::sync::Mutex::new(Some(consumer))),
            stats: Arc::default(),
        })
    }
}

#[pymethods]
impl NativeConsumer {
    /// Waits up to `wait` seconds for at least one message, then takes up to `max`. Messages
    /// already waiting are taken at once: the future returned is done.
    fn next_batch<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        wait: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let bridge = self.bridge.clone();
        let body_only = self.body_only;
        let wait = Duration::from_secs_f64(wait.max(0.0));
        let at_hand = {
            let bridge = bridge.clone();
            move || {
                let jobs = bridge.try_next_batch(max);
                (!jobs.is_empty()).then_some(JobBatch {
                    jobs,
                    bridge,
                    body_only,
                })
            }
        };
        crate::completion::spawn_unless_ready(py, at_hand, async move {
            let jobs = bridge.next_batch(max, wait).await;
            JobBatch {
                jobs,
                bridge,
                body_only,
            }
        })
    }

    /// Reports outcomes: a token alone for a success, `(token, error, error_type, permanent)`
    /// for a failure, `(token,)` for a message not handled (the consumer is stopping and had
    /// not started it: it goes back to the broker). Well-formed outcomes are reported even when
    /// another one is not.
    fn complete(&self, outcomes: &Bound<'_, PyList>) -> PyResult<()> {
        let mut settled = Vec::with_capacity(outcomes.len());
        let mut malformed = None;
        for item in outcomes.iter() {
            if let Ok(token) = item.cast::<PyInt>() {
                settled.push((token.extract::<u64>()?, Ok(())));
                continue;
            }
            if let Ok((token,)) = item.extract::<(u64,)>() {
                settled.push((token, Err(HandlerError::not_handled())));
                continue;
            }
            match item.extract::<(u64, String, Option<String>, bool)>() {
                Ok((token, message, kind, permanent)) => {
                    let mut err = if permanent {
                        HandlerError::permanent(message)
                    } else {
                        HandlerError::retryable(message)
                    };
                    err.kind = kind;
                    settled.push((token, Err(err)));
                }
                Err(err) => malformed = Some(err),
            }
        }
        self.bridge.complete(settled);
        malformed.map_or(Ok(()), Err)
    }

    /// Waits until the subscription receives (for Kafka: partitions assigned).
    fn wait_ready<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let mut ready = self.ready.clone();
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        crate::completion::spawn_cancellable(
            py,
            async move { ready.wait(timeout).await.map_err(to_py) },
        )
    }

    /// Stops fetching, drains in-flight messages (keep completing them meanwhile), closes.
    fn stop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let consumer = self.consumer.clone();
        let stats = self.stats.clone();
        crate::completion::spawn(py, async move {
            let Some(running) = consumer.lock().await.take() else {
                return Ok(Stats(*stats.lock().unwrap_or_else(|e| e.into_inner())));
            };
            let report = running.stop().await.map_err(to_py)?;
            *stats.lock().unwrap_or_else(|e| e.into_inner()) = report.stats;
            Ok(Stats(report.stats))
        })
    }

    /// Current counters.
    fn stats(&self) -> Stats {
        if let Ok(guard) = self.consumer.try_lock()
            && let Some(consumer) = guard.as_ref()
        {
            return Stats(consumer.stats());
        }
        Stats(*self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Messages handed to Python and not completed yet.
    #[getter]
    fn in_flight(&self) -> usize {
        self.bridge.in_flight()
    }
}
