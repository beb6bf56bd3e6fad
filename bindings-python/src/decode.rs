//! Received JSON payloads decoded into Python values without running Python code.
//!
//! The result is what `json.loads` gives for the same bytes. Whatever this decoder might read
//! differently is left to `polybus._codec.decode` (the job then carries [`NOT_DECODED`]):
//! anything serde_json refuses (NaN and Infinity literals, lone surrogates, other encodings,
//! nesting deeper than 128), numbers of 19 digits or more, which Python reads as exact
//! integers, and `-0`, Python's integer 0. Floats are read with correct rounding (serde_json's
//! `float_roundtrip`), like Python's `float()`.

use std::fmt;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Digits in a row from which a number may not fit an `i64`/`u64`.
const LONG_DIGIT_RUN: usize = 19;

/// The marker put in a job instead of a body the engine left to Python to decode.
pub fn not_decoded(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static MARKER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    MARKER.get_or_try_init(py, || {
        Ok(py.import("builtins")?.getattr("object")?.call0()?.unbind())
    })
}

/// The body of a received payload: decoded JSON when the content type is JSON and the engine
/// reads it exactly as Python would, else the [`not_decoded`] marker.
pub fn body<'py>(
    py: Python<'py>,
    payload: &[u8],
    content_type: &str,
) -> PyResult<Bound<'py, PyAny>> {
    if polybus::wire::is_json_content_type(content_type)
        && !needs_python(payload)
        && let Some(value) = json(py, payload)
    {
        return Ok(value);
    }
    Ok(not_decoded(py)?.bind(py).clone())
}

/// Whether the document may hold a number serde_json reads differently from Python: 19 digits
/// or more in a row (an integer past 64 bits becomes a float), or `-0` not followed by a
/// fraction or exponent (Python's integer 0, serde_json's -0.0). Text that merely looks like
/// either is decoded by Python too, correctly.
fn needs_python(payload: &[u8]) -> bool {
    let mut run = 0;
    for (at, byte) in payload.iter().enumerate() {
        if byte.is_ascii_digit() {
            run += 1;
            if run >= LONG_DIGIT_RUN {
                return true;
            }
            if *byte == b'0'
                && run == 1
                && at > 0
                && payload[at - 1] == b'-'
                && !matches!(payload.get(at + 1), Some(b'.' | b'e' | b'E' | b'0'..=b'9'))
            {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Decodes a JSON document into Python values; `None` when serde_json refuses it.
fn json<'py>(py: Python<'py>, payload: &[u8]) -> Option<Bound<'py, PyAny>> {
    let mut reader = serde_json::Deserializer::from_slice(payload);
    let value = Value(py).deserialize(&mut reader).ok()?;
    reader.end().ok()?;
    Some(value)
}

/// Builds any JSON value as a Python object.
#[derive(Clone, Copy)]
struct Value<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for Value<'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn py_err<E: de::Error>(err: PyErr) -> E {
    E::custom(err)
}

impl<'de, 'py> Visitor<'de> for Value<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, v).to_owned().into_any())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(PyInt::new(self.0, v).into_any())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(PyInt::new(self.0, v).into_any())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.0, v).into_any())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v).into_any())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(py_err)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            let value = map.next_value_seed(self)?;
            dict.set_item(key, value).map_err(py_err)?;
        }
        Ok(dict.into_any())
    }
}

/// Builds an object key as a Python `str`.
struct Key<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for Key<'py> {
    type Value = Bound<'py, PyString>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'py> Visitor<'de> for Key<'py> {
    type Value = Bound<'py, PyString>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v))
    }
}

/// `_decode_body(payload, content_type)`: what a handler of this payload receives from the
/// engine's decoder (`NOT_DECODED` when Python decodes it). For tests.
#[pyfunction]
#[pyo3(name = "_decode_body")]
pub fn decode_body<'py>(
    py: Python<'py>,
    payload: &[u8],
    content_type: &str,
) -> PyResult<Bound<'py, PyAny>> {
    body(py, payload, content_type)
}
