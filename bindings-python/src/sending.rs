//! `Sending`: what a single `send` returns, a native future of the message's receipt.
//!
//! It speaks asyncio's future protocol (`asyncio.isfuture` holds, so `gather`, `wait_for`,
//! `shield`, tasks and `run_until_complete` take it as they take an `asyncio.Future`) and the
//! coroutine protocol (so `create_task` takes it too; like any coroutine, `asyncio.wait` wants
//! it wrapped in a task).
//!
//! Why native: a thousand sends gathered are a thousand futures. The loop's port settles a
//! tick's worth of them in one pass and runs their done callbacks right there, where an
//! `asyncio.Future` would schedule one `call_soon` handle per callback for a later turn of the
//! loop. The callbacks still run on the loop, outside any task, each in its own context, and an
//! exception one raises is reported to the loop's exception handler as asyncio does; only
//! `cancel` (called from user code) schedules them with `call_soon`.

use pyo3::exceptions::{
    PyBaseException, PyKeyboardInterrupt, PyStopIteration, PySystemExit, PyTypeError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

/// Where a publish stands.
enum State {
    Pending,
    Done(Py<PyAny>),
    Failed {
        exception: Py<PyAny>,
        /// The exception's traceback when it came: raising it again starts from there, so
        /// every `result()` or `await` does not add its frames to the last one's.
        traceback: Py<PyAny>,
        retrieved: bool,
    },
    Cancelled(Option<Py<PyAny>>),
}

/// A done callback and the context it runs in.
pub struct Callback {
    func: Py<PyAny>,
    context: Py<PyAny>,
}

/// A publish under way: a future of its `Receipt` that is also a coroutine.
#[pyclass(module = "polybus._polybus")]
pub struct Sending {
    event_loop: Option<Py<PyAny>>,
    state: State,
    callbacks: Vec<Callback>,
    blocking: bool,
}

/// What a publish came to: its receipt, or the exception instance it failed with.
pub type Outcome = Result<Py<PyAny>, Py<PyAny>>;

/// Callbacks of a settled future, to run once every future of the batch is settled.
pub struct Settled {
    future: Py<Sending>,
    callbacks: Vec<Callback>,
}

fn asyncio_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    cell.import(py, "asyncio", name).cloned()
}

fn invalid_state(py: Python<'_>, text: &str) -> PyErr {
    static INVALID_STATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    match asyncio_attr(py, &INVALID_STATE, "InvalidStateError").and_then(|t| t.call1((text,))) {
        Ok(err) => PyErr::from_value(err),
        Err(err) => err,
    }
}

fn cancelled_error(py: Python<'_>, message: Option<&Py<PyAny>>) -> PyErr {
    static CANCELLED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let made = asyncio_attr(py, &CANCELLED, "CancelledError").and_then(|t| match message {
        Some(message) => t.call1((message.clone_ref(py),)),
        None => t.call0(),
    });
    match made {
        Ok(err) => PyErr::from_value(err),
        Err(err) => err,
    }
}

fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    static COPY_CONTEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(COPY_CONTEXT
        .import(py, "contextvars", "copy_context")?
        .call0()?
        .unbind())
}

impl Sending {
    /// A pending future of `event_loop`.
    pub fn new(event_loop: Py<PyAny>) -> Self {
        Sending {
            event_loop: Some(event_loop),
            state: State::Pending,
            callbacks: Vec::new(),
            blocking: false,
        }
    }

    fn is_pending(&self) -> bool {
        matches!(self.state, State::Pending)
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.event_loop
            .as_ref()
            .map(|l| l.bind(py).clone())
            .ok_or_else(|| PyTypeError::new_err("this Sending was cleared"))
    }

    /// Settles a pending future with a value (`Ok`) or an exception instance (`Err`); returns
    /// its callbacks for [`run_settled`], or hands the outcome back when the future was no
    /// longer pending (its wait was cancelled).
    pub fn settle(future: &Bound<'_, Sending>, outcome: Outcome) -> Result<Settled, Outcome> {
        let mut me = future.borrow_mut();
        if !me.is_pending() {
            return Err(outcome);
        }
        let py = future.py();
        me.state = match outcome {
            Ok(value) => State::Done(value),
            Err(exception) => State::Failed {
                traceback: exception
                    .bind(py)
                    .getattr(pyo3::intern!(py, "__traceback__"))
                    .map_or_else(|_| py.None(), Bound::unbind),
                exception,
                retrieved: false,
            },
        };
        let callbacks = std::mem::take(&mut me.callbacks);
        Ok(Settled {
            future: future.clone().unbind(),
            callbacks,
        })
    }

    /// Schedules `callbacks` with `call_soon`, as asyncio does.
    fn schedule(slf: &Bound<'_, Sending>, callbacks: Vec<Callback>) -> PyResult<()> {
        let py = slf.py();
        let event_loop = slf.borrow().event_loop(py)?;
        for Callback { func, context } in callbacks {
            let kwargs = PyDict::new(py);
            kwargs.set_item("context", context)?;
            event_loop.call_method(pyo3::intern!(py, "call_soon"), (func, slf), Some(&kwargs))?;
        }
        Ok(())
    }
}

/// Runs the callbacks of settled futures in order, each in its context. An exception from a
/// callback goes to the loop's exception handler; `SystemExit` and `KeyboardInterrupt`
/// propagate, after the callbacks not run yet were scheduled with `call_soon`.
pub fn run_settled(py: Python<'_>, settled: Vec<Settled>) -> PyResult<()> {
    let mut settled = settled.into_iter();
    while let Some(Settled { future, callbacks }) = settled.next() {
        let future = future.into_bound(py);
        let mut callbacks = callbacks.into_iter();
        while let Some(Callback { func, context }) = callbacks.next() {
            let Err(err) = context
                .bind(py)
                .call_method1(pyo3::intern!(py, "run"), (&func, &future))
            else {
                continue;
            };
            if err.is_instance_of::<PySystemExit>(py)
                || err.is_instance_of::<PyKeyboardInterrupt>(py)
            {
                let mut rest = vec![(future.clone(), callbacks.collect::<Vec<_>>())];
                rest.extend(settled.map(|s| (s.future.into_bound(py), s.callbacks)));
                for (future, callbacks) in rest {
                    if let Err(failed) = Sending::schedule(&future, callbacks) {
                        failed.write_unraisable(py, Some(future.as_any()));
                    }
                }
                return Err(err);
            }
            report(py, &future, &func, err);
        }
    }
    Ok(())
}

/// Hands the failure of a publish whose wait was cancelled to the loop's exception handler:
/// nobody awaits it any more, and a failed publish is never silent.
pub fn report_after_cancel(future: &Bound<'_, Sending>, exception: Py<PyAny>) {
    let message = "a publish whose wait was cancelled (Sending.cancel, a wait_for timeout) failed";
    to_exception_handler(future, message, exception.bind(future.py()));
}

/// Hands a callback's exception to the loop's exception handler, as asyncio's handles do.
fn report(py: Python<'_>, future: &Bound<'_, Sending>, func: &Py<PyAny>, err: PyErr) {
    let message = match func.bind(py).repr() {
        Ok(func) => format!("Exception in callback {func}"),
        Err(_) => "Exception in a callback".to_owned(),
    };
    to_exception_handler(future, &message, err.value(py));
}

/// Calls the future's loop's `call_exception_handler` with `message`, `exception` and the
/// future (not borrowed while the handler runs: it may use the future).
fn to_exception_handler(future: &Bound<'_, Sending>, message: &str, exception: &Bound<'_, PyAny>) {
    let py = future.py();
    let event_loop = future.borrow().event_loop(py);
    match event_loop {
        Ok(event_loop) => hand_to_loop(&event_loop, message, exception, Some(future.as_any())),
        Err(err) => err.write_unraisable(py, Some(future.as_any())),
    }
}

/// `event_loop.call_exception_handler({"message", "exception", "future"})`; a handler that
/// fails is reported as unraisable.
fn hand_to_loop(
    event_loop: &Bound<'_, PyAny>,
    message: &str,
    exception: &Bound<'_, PyAny>,
    future: Option<&Bound<'_, PyAny>>,
) {
    let py = event_loop.py();
    let reported = (|| -> PyResult<()> {
        let context = PyDict::new(py);
        context.set_item("message", message)?;
        context.set_item("exception", exception)?;
        if let Some(future) = future {
            context.set_item("future", future)?;
        }
        event_loop.call_method1(pyo3::intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    })();
    if let Err(failed) = reported {
        failed.write_unraisable(py, future);
    }
}

#[pymethods]
impl Sending {
    /// The loop the publish reports to.
    fn get_loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.event_loop(py).map(Bound::unbind)
    }

    /// True once the receipt or an error came, or the wait was cancelled.
    fn done(&self) -> bool {
        !self.is_pending()
    }

    /// True when the wait was cancelled (the publish itself carried on).
    fn cancelled(&self) -> bool {
        matches!(self.state, State::Cancelled(_))
    }

    /// The receipt; raises the publish's error, `CancelledError`, or `InvalidStateError` while
    /// pending.
    fn result(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &mut self.state {
            State::Pending => Err(invalid_state(py, "Result is not set.")),
            State::Cancelled(message) => Err(cancelled_error(py, message.as_ref())),
            State::Failed {
                exception,
                traceback,
                retrieved,
            } => {
                *retrieved = true;
                let exception = exception.bind(py);
                exception.setattr(pyo3::intern!(py, "__traceback__"), traceback.bind(py))?;
                Err(PyErr::from_value(exception.clone()))
            }
            State::Done(value) => Ok(value.clone_ref(py)),
        }
    }

    /// The publish's error, or None; raises `CancelledError`, or `InvalidStateError` while
    /// pending.
    fn exception(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &mut self.state {
            State::Pending => Err(invalid_state(py, "Exception is not set.")),
            State::Cancelled(message) => Err(cancelled_error(py, message.as_ref())),
            State::Failed {
                exception,
                retrieved,
                ..
            } => {
                *retrieved = true;
                Ok(Some(exception.clone_ref(py)))
            }
            State::Done(_) => Ok(None),
        }
    }

    /// Calls `func(self)` once done, in `context` (default: a copy of the current one).
    #[pyo3(signature = (func, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        func: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let context = match context {
            Some(context) if !context.is_none(py) => context,
            _ => copy_context(py)?,
        };
        let callback = Callback { func, context };
        let mut me = slf.borrow_mut();
        if me.is_pending() {
            me.callbacks.push(callback);
            return Ok(());
        }
        drop(me);
        Sending::schedule(slf, vec![callback])
    }

    /// Removes every registration of `func`; returns how many there were.
    fn remove_done_callback(slf: &Bound<'_, Self>, func: &Bound<'_, PyAny>) -> PyResult<usize> {
        let callbacks = std::mem::take(&mut slf.borrow_mut().callbacks);
        let before = callbacks.len();
        let mut kept = Vec::with_capacity(before);
        let mut failure = None;
        for callback in callbacks {
            let same = callback.func.bind(slf.py());
            match if same.is(func) {
                Ok(true)
            } else {
                same.eq(func)
            } {
                Ok(true) => {}
                Ok(false) => kept.push(callback),
                Err(err) => {
                    kept.push(callback);
                    failure.get_or_insert(err);
                }
            }
        }
        let removed = before - kept.len();
        let mut me = slf.borrow_mut();
        kept.append(&mut me.callbacks);
        me.callbacks = kept;
        failure.map_or(Ok(removed), Err)
    }

    /// Stops waiting (the publish itself carries on); returns False when already done.
    #[pyo3(signature = (msg=None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        let callbacks = {
            let mut me = slf.borrow_mut();
            if !me.is_pending() {
                return Ok(false);
            }
            me.state = State::Cancelled(msg);
            std::mem::take(&mut me.callbacks)
        };
        Sending::schedule(slf, callbacks)?;
        Ok(true)
    }

    /// The `CancelledError` a cancelled wait raises (asyncio's `gather` asks for it).
    fn _make_cancelled_error(&self, py: Python<'_>) -> Py<PyAny> {
        let message = match &self.state {
            State::Cancelled(message) => message.as_ref(),
            _ => None,
        };
        cancelled_error(py, message).into_value(py).into_any()
    }

    /// The message `cancel` was given (asyncio's `gather` reads it).
    #[getter]
    fn _cancel_message(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.state {
            State::Cancelled(message) => message.as_ref().map(|m| m.clone_ref(py)),
            _ => None,
        }
    }

    /// asyncio's marker of a future a task waits on.
    #[getter(_asyncio_future_blocking)]
    fn future_blocking(&self) -> bool {
        self.blocking
    }

    #[setter(_asyncio_future_blocking)]
    fn set_future_blocking(&mut self, value: bool) {
        self.blocking = value;
    }

    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Yields itself while pending (to the task awaiting it), then returns the receipt.
    fn __next__(mut slf: PyRefMut<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        if slf.is_pending() {
            slf.blocking = true;
            let me: Py<Sending> = slf.into();
            return Ok(Some(me.into_any()));
        }
        let value = slf.result(py)?;
        Err(PyStopIteration::new_err((value,)))
    }

    /// Coroutine protocol: advances the wait for the receipt.
    fn send(slf: PyRefMut<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        if !value.is_none() {
            return Err(PyTypeError::new_err(
                "can't send non-None value to a Sending",
            ));
        }
        Self::__next__(slf)
    }

    /// Coroutine protocol: raises the given exception where the wait is.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        _slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let val = val.filter(|v| !v.is_none());
        let exception = match typ.cast::<PyType>() {
            Ok(kind) if kind.is_subclass_of::<PyBaseException>()? => match val {
                Some(val) if val.is_instance(kind)? => val.clone(),
                Some(val) => match val.cast::<PyTuple>() {
                    Ok(args) => kind.call1(args)?,
                    Err(_) => kind.call1((val,))?,
                },
                None => kind.call0()?,
            },
            _ if typ.is_instance_of::<PyBaseException>() => {
                if val.is_some() {
                    return Err(PyTypeError::new_err(
                        "instance exception may not have a separate value",
                    ));
                }
                typ.clone()
            }
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "exceptions must be classes or instances deriving from BaseException, not {}",
                    typ.get_type().name()?
                )));
            }
        };
        if let Some(tb) = tb.filter(|tb| !tb.is_none()) {
            exception.setattr("__traceback__", tb)?;
        }
        Err(PyErr::from_value(exception))
    }

    /// Coroutine protocol: abandons the wait (the publish itself carries on).
    fn close(&self) {}

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        // Values taken out first: their repr may run Python code that uses this future.
        let (what, value) = match &slf.borrow().state {
            State::Pending => return Ok("<Sending pending>".to_owned()),
            State::Cancelled(_) => return Ok("<Sending cancelled>".to_owned()),
            State::Done(value) => ("result", value.clone_ref(py)),
            State::Failed { exception, .. } => ("exception", exception.clone_ref(py)),
        };
        Ok(format!(
            "<Sending finished {what}={}>",
            value.bind(py).repr()?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        match &self.state {
            State::Done(value) => visit.call(value)?,
            State::Failed {
                exception,
                traceback,
                ..
            } => {
                visit.call(exception)?;
                visit.call(traceback)?;
            }
            State::Cancelled(message) => visit.call(message)?,
            State::Pending => {}
        }
        for callback in &self.callbacks {
            visit.call(&callback.func)?;
            visit.call(&callback.context)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.event_loop = None;
        self.state = State::Cancelled(None);
        self.callbacks.clear();
    }
}

impl Drop for Sending {
    /// A failed publish nobody asked about is reported, as asyncio reports a future's exception
    /// that was never retrieved.
    fn drop(&mut self) {
        let (
            State::Failed {
                exception,
                retrieved: false,
                ..
            },
            Some(event_loop),
        ) = (&self.state, &self.event_loop)
        else {
            return;
        };
        Python::try_attach(|py| {
            let pending = PyErr::take(py);
            hand_to_loop(
                event_loop.bind(py),
                "Sending exception was never retrieved",
                exception.bind(py),
                None,
            );
            if let Some(pending) = pending {
                pending.restore(py);
            }
        });
    }
}
