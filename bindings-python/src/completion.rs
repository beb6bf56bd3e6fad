//! Awaitables of engine work, completed in batches.
//!
//! A call such as `publish` creates an `asyncio.Future` on the running loop and spawns the
//! engine's future on the tokio runtime. When that finishes, the runtime thread does not take
//! the GIL: it queues the result on the loop's [`Port`] and, if the queue was empty, writes one
//! byte to a socket the loop watches (`loop.add_reader`). The loop then resolves every queued
//! future in one callback, holding the GIL it already has. A thousand sends completing together
//! cost one wake-up of the loop, not a thousand GIL hand-offs between threads.
//!
//! Single publishes travel the same way in the other direction: `publish` puts the message in
//! the port's outbox, and the first one of a loop tick schedules a flush at the end of the
//! tick that hands everything queued to the engine as one `publish_batch` per broker.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use polybus::{Message, SharedBroker};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;
use tokio::task::AbortHandle;

use crate::errors::to_py;
use crate::receipt::Receipt;
use crate::sending::Sending;

/// A finished piece of work, waiting for the loop to hand its value to the awaiting future.
pub trait Ready: Send + 'static {
    /// The value (or exception) the future resolves with.
    fn into_value(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>>;

    /// Called instead of [`Ready::into_value`] when the future was cancelled meanwhile, so work
    /// that must not vanish (a batch of jobs) can be handed back.
    fn abandon(self: Box<Self>) {}
}

/// A plain result: converted to Python on the loop.
struct Value<T>(PyResult<T>);

impl<T> Ready for Value<T>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    fn into_value(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.0.and_then(|value| value.into_py_any(py))
    }
}

/// A future with the result it is waiting for.
type Resolved = (Py<PyAny>, Box<dyn Ready>);

/// A message waiting for the end of the loop tick, with the broker and the future it is for.
type Outgoing = (SharedBroker, Message, Py<PyAny>);

/// The completion queue (and the publish outbox) of one event loop.
struct Port {
    queue: Mutex<Vec<Resolved>>,
    outbox: Mutex<Vec<Outgoing>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    /// The loop, weakly: a port must not keep a closed loop alive.
    event_loop: Py<PyWeakrefReference>,
    /// The process that created the port (a forked child needs a port of its own).
    generation: u64,
}

impl Port {
    fn open(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Port>> {
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(|err| {
            PyRuntimeError::new_err(format!("cannot create a wake-up socket: {err}"))
        })?;
        for end in [&wake_tx, &wake_rx] {
            end.set_nonblocking(true).map_err(|err| {
                PyRuntimeError::new_err(format!(
                    "cannot make the wake-up socket non-blocking: {err}"
                ))
            })?;
        }
        let port = Arc::new(Port {
            queue: Mutex::new(Vec::new()),
            outbox: Mutex::new(Vec::new()),
            event_loop: PyWeakrefReference::new(event_loop)?.unbind(),
            generation: polybus::process::generation(),
            wake_tx,
            wake_rx,
        });
        event_loop
            .call_method1(
                "add_reader",
                (port.wake_rx.as_raw_fd(), Drain(port.clone())),
            )
            .map_err(|err| {
                PyRuntimeError::new_err(format!(
                    "polybus needs an event loop that can watch file descriptors \
                     (loop.add_reader), such as asyncio's default loop or uvloop: {err}"
                ))
            })?;
        Ok(port)
    }

    /// Whether this port serves `event_loop` in this process.
    fn serves(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> bool {
        self.generation == polybus::process::generation()
            && self
                .event_loop
                .bind(py)
                .upgrade()
                .is_some_and(|l| l.is(event_loop))
    }

    /// Queues a result; wakes the loop if the queue was empty.
    fn push(&self, future: Py<PyAny>, ready: Box<dyn Ready>) {
        self.push_many(std::iter::once((future, ready)));
    }

    /// Queues many results at once.
    fn push_many(&self, results: impl IntoIterator<Item = Resolved>) {
        let was_empty = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let before = queue.len();
            queue.extend(results);
            before == 0 && !queue.is_empty()
        };
        if was_empty {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// Hands the outbox to the engine: one batch per run of messages for the same broker.
    fn flush_outbox(self: &Arc<Self>) {
        let outgoing = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        let mut outgoing = outgoing.into_iter().peekable();
        while let Some((broker, message, future)) = outgoing.next() {
            let mut messages = vec![message];
            let mut futures = vec![future];
            while let Some((_, message, future)) =
                outgoing.next_if(|(next, _, _)| Arc::ptr_eq(next, &broker))
            {
                messages.push(message);
                futures.push(future);
            }
            let port = self.clone();
            crate::runtime::get().spawn(async move {
                let results = broker.publish_batch(messages).await;
                port.push_many(futures.into_iter().zip(results).map(|(future, result)| {
                    let ready: Box<dyn Ready> =
                        Box::new(Value(result.map(Receipt::from).map_err(to_py)));
                    (future, ready)
                }));
            });
        }
    }

    /// Resolves everything queued (on the loop's thread). `Sending` futures are settled first,
    /// all of them, then their done callbacks run (see [`crate::sending`]).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut sink = [0u8; 256];
        loop {
            match (&self.wake_rx).read(&mut sink) {
                Ok(n) if n > 0 => continue,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        let ready = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut settled = Vec::new();
        for (future, ready) in ready {
            let future = future.bind(py);
            if let Ok(sending) = future.cast::<Sending>() {
                let outcome = ready
                    .into_value(py)
                    .map_err(|err| err.into_value(py).into_any());
                match Sending::settle(sending, outcome) {
                    Ok(done) => settled.push(done),
                    // Its wait was cancelled: a failure still reaches the loop's handler.
                    Err(Err(exception)) => crate::sending::report_after_cancel(sending, exception),
                    Err(Ok(_)) => {}
                }
                continue;
            }
            let done = future
                .call_method0(pyo3::intern!(py, "done"))
                .and_then(|d| d.is_truthy())
                .unwrap_or(true);
            if done {
                ready.abandon();
                continue;
            }
            let outcome = match ready.into_value(py) {
                Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,)),
                Err(err) => {
                    future.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),))
                }
            };
            if let Err(err) = outcome {
                err.write_unraisable(py, Some(future));
            }
        }
        crate::sending::run_settled(py, settled)
    }
}

/// The loop's reader callback for a port's wake-up socket.
#[pyclass(module = "polybus._polybus", frozen)]
struct Drain(Arc<Port>);

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        self.0.drain(py)
    }
}

/// The loop's end-of-tick callback that flushes a port's outbox.
#[pyclass(module = "polybus._polybus", frozen)]
struct FlushOutbox(Arc<Port>);

#[pymethods]
impl FlushOutbox {
    fn __call__(&self) {
        self.0.flush_outbox();
    }
}

/// Cancels the engine's future when the awaiting `asyncio.Future` is cancelled.
#[pyclass(module = "polybus._polybus", frozen)]
struct AbortOnCancel(Mutex<Option<AbortHandle>>);

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let handle = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && future.call_method0("cancelled")?.is_truthy()?
        {
            handle.abort();
        }
        Ok(())
    }
}

thread_local! {
    /// The port used last on this thread: the fast path (one loop per thread is the rule).
    static LAST: RefCell<Option<Arc<Port>>> = const { RefCell::new(None) };
}

/// The running loop's port, opened on first use.
fn port_of(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Port>> {
    if let Some(port) = LAST.with_borrow(|last| last.clone())
        && port.serves(py, event_loop)
    {
        return Ok(port);
    }
    // Other loops' ports, by loop (weakly): a thread may run several loops one after another.
    static PORTS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let ports = PORTS
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("weakref")?
                .getattr("WeakKeyDictionary")?
                .call0()?
                .unbind())
        })?
        .bind(py);
    let known = ports.call_method1("get", (event_loop,))?;
    let port = match known.cast::<PortHandle>() {
        Ok(handle) if handle.get().0.serves(py, event_loop) => handle.get().0.clone(),
        _ => {
            let port = Port::open(event_loop)?;
            ports.set_item(event_loop, PortHandle(port.clone()))?;
            port
        }
    };
    LAST.with_borrow_mut(|last| *last = Some(port.clone()));
    Ok(port)
}

/// A port as a Python value (kept in the registry of loops).
#[pyclass(module = "polybus._polybus", frozen)]
struct PortHandle(Arc<Port>);

/// The running loop, or a clear error outside one.
fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    running_loop_or_none(py)?.ok_or_else(|| {
        PyRuntimeError::new_err(
            "no running asyncio event loop: await this from a coroutine \
             (from blocking code use the *_sync / *_blocking variants)",
        )
    })
}

fn spawn_ready<'py, F>(py: Python<'py>, work: F, cancellable: bool) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Box<dyn Ready>> + Send + 'static,
{
    let event_loop = running_loop(py)?;
    let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    start(py, &event_loop, &future, work, cancellable)?;
    Ok(future)
}

/// Spawns `work`; its result goes to `future` (of `event_loop`) through the loop's port.
fn start<F>(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    future: &Bound<'_, PyAny>,
    work: F,
    cancellable: bool,
) -> PyResult<()>
where
    F: Future<Output = Box<dyn Ready>> + Send + 'static,
{
    let port = port_of(py, event_loop)?;
    let awaiting = future.clone().unbind();
    let task = crate::runtime::get().spawn(async move {
        let ready = work.await;
        port.push(awaiting, ready);
    });
    if cancellable {
        future.call_method1(
            pyo3::intern!(py, "add_done_callback"),
            (AbortOnCancel(Mutex::new(Some(task.abort_handle()))),),
        )?;
    }
    Ok(())
}

/// Publishes `message` with `broker` at the end of this loop tick, together with the other
/// messages of the tick; returns the [`Sending`] (of `event_loop`, the running loop) that
/// resolves with its receipt.
pub fn send<'py>(
    py: Python<'py>,
    event_loop: &Bound<'py, PyAny>,
    broker: SharedBroker,
    message: Message,
) -> PyResult<Bound<'py, Sending>> {
    let port = port_of(py, event_loop)?;
    let sending = Bound::new(py, Sending::new(event_loop.clone().unbind()))?;
    let first = {
        let mut outbox = port.outbox.lock().unwrap_or_else(|e| e.into_inner());
        outbox.push((broker, message, sending.clone().into_any().unbind()));
        outbox.len() == 1
    };
    if first {
        event_loop.call_method1(pyo3::intern!(py, "call_soon"), (FlushOutbox(port),))?;
    }
    Ok(sending)
}

/// The running asyncio loop, or None outside one.
pub fn running_loop_or_none(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    // `_get_running_loop` returns None instead of raising: no exception made per call.
    let event_loop = GET_RUNNING_LOOP
        .import(py, "asyncio", "_get_running_loop")?
        .call0()?;
    Ok((!event_loop.is_none()).then_some(event_loop))
}

/// Runs `work` on the runtime; returns an `asyncio.Future` of its result. Cancelling the future
/// does not stop the work (a publish under way carries on).
pub fn spawn<'py, F, T>(py: Python<'py>, work: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    spawn_ready(
        py,
        async move { Box::new(Value(work.await)) as Box<dyn Ready> },
        false,
    )
}

/// Like [`spawn`], and cancelling the future stops the work (waits, polls).
pub fn spawn_cancellable<'py, F, T>(py: Python<'py>, work: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    spawn_with(py, async move { Value(work.await) })
}

/// Like [`spawn_with`], except that when `now` has the result at hand the future returned is
/// already done: no trip through the runtime and the loop's wake-up socket. `now` runs once
/// the future exists, so nothing it takes is lost to a missing loop.
pub fn spawn_unless_ready<'py, F, R>(
    py: Python<'py>,
    now: impl FnOnce() -> Option<R>,
    work: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = R> + Send + 'static,
    R: Ready,
{
    let event_loop = running_loop(py)?;
    let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    let Some(ready) = now() else {
        let work = async move { Box::new(work.await) as Box<dyn Ready> };
        start(py, &event_loop, &future, work, true)?;
        return Ok(future);
    };
    match Box::new(ready).into_value(py) {
        Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,))?,
        Err(err) => {
            future.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),))?
        }
    };
    Ok(future)
}

/// Like [`spawn_cancellable`] for work whose result must be handed back when nobody takes it.
pub fn spawn_with<'py, F, R>(py: Python<'py>, work: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = R> + Send + 'static,
    R: Ready,
{
    spawn_ready(
        py,
        async move { Box::new(work.await) as Box<dyn Ready> },
        true,
    )
}
