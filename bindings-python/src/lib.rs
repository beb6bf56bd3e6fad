//! Python bindings of the Polybus engine: the native module `polybus._polybus` under the
//! pure-Python package `polybus`. Thin by design: values are converted here, behaviour lives in
//! the `polybus` crate. Messages cross the GIL in batches and no wait holds the GIL.

mod broker;
mod completion;
mod consumer;
mod dead_letters;
mod decode;
mod errors;
mod headers;
mod logs;
mod payload;
mod producer;
mod receipt;
mod runtime;
mod sending;

use pyo3::prelude::*;

/// The engine's allocator for everything this extension allocates (see `polybus::allocator`).
#[global_allocator]
static ALLOCATOR: polybus::allocator::EngineAllocator = polybus::allocator::EngineAllocator;

/// The native module.
#[pymodule]
fn _polybus(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<broker::Broker>()?;
    m.add_class::<consumer::NativeConsumer>()?;
    m.add_class::<producer::ProducerBase>()?;
    m.add_class::<receipt::Receipt>()?;
    m.add_class::<sending::Sending>()?;
    m.add("NOT_DECODED", decode::not_decoded(m.py())?)?;
    m.add_function(wrap_pyfunction!(decode::decode_body, m)?)?;
    m.add("LOG_QUEUE_CAPACITY", polybus::logs::QUEUE_CAPACITY)?;
    m.add_function(wrap_pyfunction!(logs::install_logging, m)?)?;
    m.add_function(wrap_pyfunction!(logs::set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(logs::next_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(logs::take_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(logs::wake_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(logs::log_records_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(logs::log_records_after_fork, m)?)?;
    errors::register(m)?;
    Ok(())
}
