//! `polybus::Error` as Python exceptions, one class per kind under `PolybusError`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _polybus,
    PolybusError,
    PyException,
    "Base class of every Polybus error."
);
create_exception!(
    _polybus,
    ConfigurationError,
    PolybusError,
    "A broker URL or option is wrong."
);
create_exception!(
    _polybus,
    BrokerConnectionError,
    PolybusError,
    "The broker cannot be reached."
);
create_exception!(
    _polybus,
    BrokerError,
    PolybusError,
    "The broker refused or failed an operation."
);
create_exception!(
    _polybus,
    InvalidMessageError,
    PolybusError,
    "A message or subscription is invalid."
);
create_exception!(
    _polybus,
    PolybusTimeoutError,
    PolybusError,
    "An operation did not finish in time."
);
create_exception!(
    _polybus,
    ClosedError,
    PolybusError,
    "The producer, consumer or broker is closed."
);
create_exception!(
    _polybus,
    UnsupportedError,
    PolybusError,
    "The broker cannot do what was asked."
);

/// Converts an engine error into the matching Python exception.
pub fn to_py(err: polybus::Error) -> PyErr {
    use polybus::Error as E;
    let text = err.to_string();
    match err {
        E::Config { .. } | E::BackendNotEnabled { .. } => ConfigurationError::new_err(text),
        E::Connection { .. } => BrokerConnectionError::new_err(text),
        E::Broker { .. } | E::Codec(_) => BrokerError::new_err(text),
        E::InvalidMessage(_) | E::InvalidSubscription(_) => InvalidMessageError::new_err(text),
        E::Timeout { .. } => PolybusTimeoutError::new_err(text),
        E::Closed(_) => ClosedError::new_err(text),
        E::Unsupported { .. } => UnsupportedError::new_err(text),
        _ => PolybusError::new_err(text),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PolybusError", py.get_type::<PolybusError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add(
        "BrokerConnectionError",
        py.get_type::<BrokerConnectionError>(),
    )?;
    m.add("BrokerError", py.get_type::<BrokerError>())?;
    m.add("InvalidMessageError", py.get_type::<InvalidMessageError>())?;
    m.add("PolybusTimeoutError", py.get_type::<PolybusTimeoutError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    Ok(())
}
