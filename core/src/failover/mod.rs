//! Failover publishing: [`FailoverBroker`] wraps a primary broker and keeps every acknowledged
//! publish through a primary outage in a durable local [`Spool`], replayed in order once the
//! primary is back.
//!
//! ```no_run
//! # async fn demo() -> polybus::Result<()> {
//! use std::sync::Arc;
//! use polybus::failover::{FailoverBroker, FailoverOptions};
//!
//! let options = FailoverOptions::from_pairs([("spool_dir", "/var/lib/app/spool"), ("fsync", "always")])?;
//! let broker = Arc::new(FailoverBroker::connect_url("redis://127.0.0.1:6379/0", options).await?);
//! let receipt = polybus::Publisher::publish(&*broker, polybus::Message::text("orders", "hi")).await?;
//! if receipt.spooled {
//!     println!("the primary is down; the message waits in the spool: {:?}", broker.status());
//! }
//! # Ok(()) }
//! ```

mod broker;
mod cursor;
mod lock;
mod options;
mod record;
mod replay;
mod segment;
mod shared;
mod spool;
mod status;

pub use broker::FailoverBroker;
pub use options::{FailoverOptions, FsyncPolicy, MAX_REPLAY_BATCH, MIN_SEGMENT_BYTES};
pub use spool::{Spool, SpoolPosition, Spooled};
pub use status::{FailoverState, FailoverStatus};
