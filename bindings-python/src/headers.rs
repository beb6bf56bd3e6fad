//! Message headers from Python: any mapping of `str` to `str`, one conversion for every way of
//! publishing (`send`, `send_sync`, `send_batch`), with errors that name the bad header.

use std::collections::HashMap;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// Headers from a dict, or from any other mapping (anything with `items()`) of strings to
/// strings; no headers stay none.
pub fn header_map(headers: Option<&Bound<'_, PyAny>>) -> PyResult<Option<HashMap<String, String>>> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    let mut map = HashMap::new();
    if let Ok(dict) = headers.cast::<PyDict>() {
        map.reserve(dict.len());
        for (name, value) in dict {
            let (name, value) = pair(&name, &value)?;
            map.insert(name, value);
        }
        return Ok(Some(map));
    }
    let items = headers.getattr("items").map_err(|_| {
        PyTypeError::new_err(format!(
            "headers must be a mapping of str to str, not {}",
            type_name(headers)
        ))
    })?;
    for item in items.call0()?.try_iter()? {
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
        let (name, value) = pair(&name, &value)?;
        map.insert(name, value);
    }
    Ok(Some(map))
}

/// One header as strings, or a `TypeError` naming it.
fn pair(name: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let name = name.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "header names must be str, not {} ({})",
            type_name(name),
            repr(name)
        ))
    })?;
    let name = name.to_str()?.to_owned();
    let value = value.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "header {name:?} must be a str, not {} ({})",
            type_name(value),
            repr(value)
        ))
    })?;
    Ok((name, value.to_str()?.to_owned()))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// A short repr for an error message.
fn repr(value: &Bound<'_, PyAny>) -> String {
    let text = value
        .repr()
        .map_or_else(|_| "?".to_owned(), |r| r.to_string());
    if text.chars().count() > 40 {
        text.chars().take(40).collect::<String>() + "…"
    } else {
        text
    }
}
