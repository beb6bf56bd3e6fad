//! `Receipt`: what the broker reported for a published message.

use polybus::PublishReceipt;
use pyo3::prelude::*;

/// What the broker reported for a published message.
#[pyclass(
    module = "polybus._polybus",
    name = "Receipt",
    frozen,
    get_all,
    eq,
    hash,
    skip_from_py_object
)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The message id.
    id: String,
    /// Kafka: the partition written to.
    partition: Option<i32>,
    /// Kafka: the offset written at.
    offset: Option<i64>,
    /// Redis streams: the entry id.
    stream_id: Option<String>,
    /// Redis pub/sub: how many subscribers received it.
    receivers: Option<u64>,
    /// True when the primary broker was unreachable and the message went to the failover
    /// spool (it is replayed, in order, once the primary is back).
    spooled: bool,
}

impl From<PublishReceipt> for Receipt {
    fn from(r: PublishReceipt) -> Self {
        Receipt {
            id: r.id,
            partition: r.partition,
            offset: r.offset,
            stream_id: r.stream_id,
            receivers: r.receivers,
            spooled: r.spooled,
        }
    }
}

#[pymethods]
impl Receipt {
    #[new]
    #[pyo3(signature = (id, partition=None, offset=None, stream_id=None, receivers=None, spooled=false))]
    fn new(
        id: String,
        partition: Option<i32>,
        offset: Option<i64>,
        stream_id: Option<String>,
        receivers: Option<u64>,
        spooled: bool,
    ) -> Self {
        Receipt {
            id,
            partition,
            offset,
            stream_id,
            receivers,
            spooled,
        }
    }

    fn __repr__(&self) -> String {
        let mut parts = vec![format!("id={:?}", self.id)];
        if let Some(p) = self.partition {
            parts.push(format!("partition={p}"));
        }
        if let Some(o) = self.offset {
            parts.push(format!("offset={o}"));
        }
        if let Some(s) = &self.stream_id {
            parts.push(format!("stream_id={s:?}"));
        }
        if let Some(r) = self.receivers {
            parts.push(format!("receivers={r}"));
        }
        if self.spooled {
            parts.push("spooled=True".to_owned());
        }
        format!("Receipt({})", parts.join(", "))
    }
}
