//! The engine's log records for Python's `logging`: the `polybus._logs` thread takes them in
//! batches (one GIL acquisition per batch, the wait without the GIL) and logs each under its
//! logger (`polybus.brokers.redis.streams`, `polybus.librdkafka`...).

use std::time::Duration;

use polybus::logs::{self, LogLevel, LogRecord};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Python's number for trace records (below `logging.DEBUG`).
const TRACE: u8 = 5;

/// One record as `(levelno, logger name, text, fields)`.
type PyRecord<'py> = (u8, String, String, Bound<'py, PyDict>);

/// Makes the engine's records go to Python; false when another Rust subscriber has them.
#[pyfunction]
pub fn install_logging() -> bool {
    logs::install()
}

/// Passes on records at Python level `levelno` and above; `None` or above `CRITICAL`: none.
#[pyfunction]
#[pyo3(signature = (levelno))]
pub fn set_log_level(levelno: Option<i64>) {
    logs::set_level(match levelno {
        None => None,
        Some(n) if n > 50 => None,
        Some(n) if n >= 40 => Some(LogLevel::Error),
        Some(n) if n >= 30 => Some(LogLevel::Warn),
        Some(n) if n >= 20 => Some(LogLevel::Info),
        Some(n) if n >= 10 => Some(LogLevel::Debug),
        Some(_) => Some(LogLevel::Trace),
    });
}

/// Waits up to `wait` seconds (without the GIL) for records, then takes up to `max`.
#[pyfunction]
pub fn next_log_records(py: Python<'_>, max: usize, wait: f64) -> PyResult<Vec<PyRecord<'_>>> {
    let wait = Duration::from_secs_f64(wait.clamp(0.0, 60.0));
    let records = py.detach(|| logs::take(max, wait));
    records.into_iter().map(|r| to_python(py, r)).collect()
}

/// Takes up to `max` waiting records without waiting.
#[pyfunction]
pub fn take_log_records(py: Python<'_>, max: usize) -> PyResult<Vec<PyRecord<'_>>> {
    logs::try_take(max)
        .into_iter()
        .map(|r| to_python(py, r))
        .collect()
}

/// Makes a waiting `next_log_records` return now.
#[pyfunction]
pub fn wake_log_records() {
    logs::wake();
}

/// Before `os.fork()`: the queue's lock is taken, so the child does not inherit it held.
#[pyfunction]
pub fn log_records_before_fork() {
    logs::before_fork();
}

/// After `os.fork()`, in the parent and (`child`) the child.
#[pyfunction]
pub fn log_records_after_fork(child: bool) {
    logs::after_fork(child);
}

/// Has `polybus._logs` read the `polybus` logger's level now (a broker is being connected).
/// A failure (the package half imported) leaves the level as it was.
pub fn sync_python_level(py: Python<'_>) {
    let _ = py
        .import("polybus._logs")
        .and_then(|module| module.call_method0("sync_level"));
}

fn to_python(py: Python<'_>, record: LogRecord) -> PyResult<PyRecord<'_>> {
    let levelno = match record.level {
        LogLevel::Error => 40,
        LogLevel::Warn => 30,
        LogLevel::Info => 20,
        LogLevel::Debug => 10,
        LogLevel::Trace => TRACE,
    };
    let fields = PyDict::new(py);
    for (name, value) in &record.fields {
        fields.set_item(name, value)?;
    }
    Ok((levelno, record.logger_name(), record.text(), fields))
}
