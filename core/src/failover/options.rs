//! Settings of a [`FailoverBroker`](super::FailoverBroker): where the spool lives, how hard it
//! syncs, how big it may grow, how often the primary is probed.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest replay batch accepted.
pub const MAX_REPLAY_BATCH: usize = 100_000;

/// When appends to the spool reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fsync` before the publish returns: no acknowledged message is lost, even on power loss.
    #[default]
    Always,
    /// `fsync` in the background at this interval: a power loss may lose the messages spooled
    /// in the last interval; a process crash loses nothing.
    Interval(Duration),
    /// Never `fsync`; the OS writes back when it likes. Survives a process crash, not a power
    /// loss.
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(every) => write!(f, "interval:{}ms", every.as_millis()),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    /// Parses `always`, `never` or `interval:<duration>` (`interval:100ms`, `interval:1s`; a
    /// bare number is milliseconds).
    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim().to_ascii_lowercase();
        match text.as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => match other.split_once(':') {
                Some(("interval", every)) => {
                    let every = parse_duration("fsync", every)?;
                    if every.is_zero() {
                        return Err(Error::config(
                            "fsync",
                            "the interval must be longer than 0 (use `always` to sync every append)",
                        ));
                    }
                    Ok(FsyncPolicy::Interval(every))
                }
                _ => Err(Error::config(
                    "fsync",
                    format!(
                        "{s:?} is not always, never or interval:<duration> (e.g. interval:100ms)"
                    ),
                )),
            },
        }
    }
}

/// Settings of a [`FailoverBroker`](super::FailoverBroker) and its spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverOptions {
    /// Directory of the spool (created if missing). One broker at a time may use it.
    pub spool_dir: PathBuf,
    /// When spooled messages reach the disk (default [`FsyncPolicy::Always`]).
    pub fsync: FsyncPolicy,
    /// Disk space the spool may take; a publish that would exceed it fails (default 1 GiB).
    pub max_spool_bytes: u64,
    /// Size at which a segment file is closed and a new one started (default 64 MiB).
    pub segment_bytes: u64,
    /// Pause between attempts to reach the primary; doubles on each failure up to 16 times
    /// this (default 1 s).
    pub probe_interval: Duration,
    /// Messages replayed per `publish_batch` (default 500).
    pub replay_batch: usize,
    /// How long a publish may wait for the primary before the message is spooled instead
    /// (default 5 s). A client that buffers through an outage (Kafka's producer holds messages
    /// up to `message.timeout.ms`) would otherwise hold the caller for that long. The primary
    /// may still deliver a message it timed out on, so it can arrive twice (same id).
    pub publish_timeout: Duration,
}

impl FailoverOptions {
    /// Options with a spool in `spool_dir` and every other setting at its default.
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        FailoverOptions {
            spool_dir: spool_dir.into(),
            fsync: FsyncPolicy::Always,
            max_spool_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            probe_interval: Duration::from_secs(1),
            replay_batch: 500,
            publish_timeout: Duration::from_secs(5),
        }
    }

    /// Builds options from key/value pairs (as bindings pass a dict): `spool_dir` (required),
    /// `fsync`, `max_spool_bytes` and `segment_bytes` (bytes, or with a unit: `64MiB`, `1GB`),
    /// `probe_interval` and `publish_timeout` (`500ms`, `2s`; a bare number is milliseconds)
    /// and `replay_batch`.
    /// Unknown keys are rejected by name. The result is validated.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut options = FailoverOptions::new(PathBuf::new());
        for (key, value) in pairs {
            let value = value.trim();
            match key.trim() {
                "spool_dir" => options.spool_dir = PathBuf::from(value),
                "fsync" => options.fsync = value.parse()?,
                "max_spool_bytes" => options.max_spool_bytes = parse_bytes(key, value)?,
                "segment_bytes" => options.segment_bytes = parse_bytes(key, value)?,
                "probe_interval" => options.probe_interval = parse_duration(key, value)?,
                "publish_timeout" => options.publish_timeout = parse_duration(key, value)?,
                "replay_batch" => {
                    options.replay_batch = value.parse().map_err(|_| {
                        Error::config(key, format!("{value:?} is not a whole number"))
                    })?
                }
                other => {
                    return Err(Error::config(
                        format!("failover option `{other}`"),
                        "unknown; expected spool_dir, fsync, max_spool_bytes, segment_bytes, probe_interval, publish_timeout or replay_batch",
                    ));
                }
            }
        }
        options.validate()?;
        Ok(options)
    }

    /// Checks the settings, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.spool_dir.as_os_str().is_empty() {
            return Err(Error::config(
                "spool_dir",
                "the spool directory is required",
            ));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(Error::config(
                "segment_bytes",
                format!(
                    "{} is below the minimum of {MIN_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            ));
        }
        if self.max_spool_bytes < self.segment_bytes {
            return Err(Error::config(
                "max_spool_bytes",
                format!(
                    "{} is smaller than segment_bytes ({})",
                    self.max_spool_bytes, self.segment_bytes
                ),
            ));
        }
        if self.probe_interval < Duration::from_millis(1) {
            return Err(Error::config("probe_interval", "must be at least 1ms"));
        }
        if self.publish_timeout < Duration::from_millis(1) {
            return Err(Error::config("publish_timeout", "must be at least 1ms"));
        }
        if self.replay_batch == 0 || self.replay_batch > MAX_REPLAY_BATCH {
            return Err(Error::config(
                "replay_batch",
                format!(
                    "{} is not between 1 and {MAX_REPLAY_BATCH}",
                    self.replay_batch
                ),
            ));
        }
        Ok(())
    }
}

/// Parses `250ms`, `2s`, `1m` or a bare number of milliseconds.
fn parse_duration(part: &str, value: &str) -> Result<Duration> {
    let value = value.trim();
    let bad = || {
        Error::config(
            part,
            format!("{value:?} is not a duration such as 250ms, 2s or 1m"),
        )
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim() {
        "" | "ms" => number,
        "s" => number.checked_mul(1000).ok_or_else(bad)?,
        "m" | "min" => number.checked_mul(60_000).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(millis))
}

/// Parses a byte size: a bare number, or with `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), in any case.
fn parse_bytes(part: &str, value: &str) -> Result<u64> {
    let bad = || {
        Error::config(
            part,
            format!("{value:?} is not a size such as 1048576, 64MiB or 1GB"),
        )
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}
