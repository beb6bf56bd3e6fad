//! What `send` accepts, encoded for the wire without running Python code for the common cases:
//! `bytes` as they are, `str` as UTF-8 text, and dicts, lists, tuples, numbers, booleans and
//! None as compact JSON. Anything else (pydantic models, datetimes, dict keys that are not
//! strings, NaN) goes through `polybus._codec.encode`, which defines the behaviour.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Content type of JSON payloads.
pub const JSON: &str = "application/json";
/// Content type of text payloads.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// Content type of raw bytes.
pub const BYTES: &str = "application/octet-stream";

/// Deeper values than this are left to Python (which reports cycles clearly).
const MAX_DEPTH: usize = 64;

/// Encodes `value`: the payload and its content type.
pub fn encode(value: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, String)> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok((bytes.as_bytes().to_vec(), BYTES.to_owned()));
    }
    if let Ok(text) = value.cast::<PyString>()
        && let Ok(text) = text.to_str()
    {
        return Ok((text.as_bytes().to_vec(), TEXT.to_owned()));
    }
    if value.is_instance_of::<PyDict>() || value.is_instance_of::<PyList>() {
        let mut out = Vec::with_capacity(128);
        if write_json(value, &mut out, 0)? {
            return Ok((out, JSON.to_owned()));
        }
    }
    in_python(value)
}

/// `polybus._codec.encode(value)`.
fn in_python(value: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, String)> {
    static ENCODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    ENCODE
        .import(value.py(), "polybus._codec", "encode")?
        .call1((value,))?
        .extract()
}

/// Writes `value` as JSON; false (with `out` in any state) when it holds something only
/// Python knows how to encode.
fn write_json(value: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<bool> {
    if depth > MAX_DEPTH {
        return Ok(false);
    }
    if value.is_none() {
        out.extend_from_slice(b"null");
        return Ok(true);
    }
    if let Ok(flag) = value.cast::<PyBool>() {
        out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
        return Ok(true);
    }
    if let Ok(text) = value.cast::<PyString>() {
        let Ok(text) = text.to_str() else {
            return Ok(false); // lone surrogates: Python escapes them
        };
        return Ok(write_serde(text, out));
    }
    if let Ok(number) = value.cast::<PyInt>() {
        if let Ok(n) = number.extract::<i64>() {
            return Ok(write_serde(&n, out));
        }
        if let Ok(n) = number.extract::<u64>() {
            return Ok(write_serde(&n, out));
        }
        return Ok(false);
    }
    if let Ok(number) = value.cast::<PyFloat>() {
        let n = number.value();
        // NaN and infinities are not JSON; Python decides what to do with them.
        return Ok(n.is_finite() && write_serde(&n, out));
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        out.push(b'{');
        for (index, (key, item)) in dict.iter().enumerate() {
            let Ok(key) = key.cast::<PyString>() else {
                return Ok(false);
            };
            let Ok(key) = key.to_str() else {
                return Ok(false);
            };
            if index > 0 {
                out.push(b',');
            }
            write_serde(key, out);
            out.push(b':');
            if !write_json(&item, out, depth + 1)? {
                return Ok(false);
            }
        }
        out.push(b'}');
        return Ok(true);
    }
    if let Ok(list) = value.cast::<PyList>() {
        return write_items(list.iter(), out, depth);
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        return write_items(tuple.iter(), out, depth);
    }
    Ok(false)
}

fn write_items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut Vec<u8>,
    depth: usize,
) -> PyResult<bool> {
    out.push(b'[');
    for (index, item) in items.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if !write_json(&item, out, depth + 1)? {
            return Ok(false);
        }
    }
    out.push(b']');
    Ok(true)
}

/// A scalar through serde_json (string escaping, shortest round-trip floats).
fn write_serde<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> bool {
    serde_json::to_writer(out, value).is_ok()
}
