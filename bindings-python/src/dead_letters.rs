//! Dead letters as Python sees them: records as dicts, redrive reports as tuples.

use polybus::{DeadLetterRecord, RedriveReport};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

/// Dead-letter records, each a dict of the message fields and the parsed failure fields.
pub struct Records(pub Vec<DeadLetterRecord>);

impl<'py> IntoPyObject<'py> for Records {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for r in self.0 {
            let d = PyDict::new(py);
            let m = r.message;
            d.set_item("id", m.id)?;
            d.set_item("topic", m.topic)?;
            d.set_item("key", m.key)?;
            d.set_item("headers", m.headers.into_iter().collect::<Vec<_>>())?;
            d.set_item("payload", PyBytes::new(py, &m.payload))?;
            d.set_item("content_type", m.content_type)?;
            d.set_item("timestamp_ms", m.timestamp_ms)?;
            d.set_item("error", r.error)?;
            d.set_item("error_type", r.error_type)?;
            d.set_item("attempts", r.attempts)?;
            d.set_item("original_topic", r.original_topic)?;
            d.set_item("group", r.group)?;
            d.set_item("partition", r.partition)?;
            d.set_item("offset", r.offset)?;
            d.set_item("first_failure_ms", r.first_failure_ms)?;
            d.set_item("last_failure_ms", r.last_failure_ms)?;
            list.append(d)?;
        }
        Ok(list)
    }
}

/// A redrive report as `(moved, [(id, reason), ...])`.
pub fn report(report: RedriveReport) -> (u64, Vec<(String, String)>) {
    let left = report
        .left
        .into_iter()
        .map(|l| (l.id, l.reason.to_string()))
        .collect();
    (report.moved, left)
}
