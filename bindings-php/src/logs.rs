//! The engine's log records for PHP. PHP runs code on one thread, so records wait in the
//! engine's queue and are passed on whenever PHP calls into the extension (publishing,
//! consuming between batches, flushing, closing): to the PSR-3 logger set with
//! `Broker::setLogger()`, or else to PHP's `error_log()`.

use std::cell::{Cell, RefCell};

use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendCallable, ZendHashTable, Zval};
use ext_php_rs::zend::ExecutorGlobals;
use polybus::logs::{self, LogLevel, LogRecord};

use crate::errors::config_error;

/// Records passed on per batch taken from the queue.
const BATCH: usize = 500;

thread_local! {
    /// The PSR-3 logger (an object with `log($level, $message, $context)`), if set.
    static LOGGER: RefCell<Option<Zval>> = const { RefCell::new(None) };
    /// Records are being passed on (a logger calling into Polybus must not start again).
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// The engine level for a PSR-3 level name (or `off`).
fn level_from(name: &str) -> Result<Option<LogLevel>, String> {
    Ok(Some(match name.to_ascii_lowercase().as_str() {
        "debug" => LogLevel::Debug,
        "info" | "notice" => LogLevel::Info,
        "warning" => LogLevel::Warn,
        "error" | "critical" | "alert" | "emergency" => LogLevel::Error,
        "off" | "none" => return Ok(None),
        _ => {
            return Err(format!(
                "invalid configuration (level): unknown log level \"{name}\"; expected debug, info, notice, warning, error, critical, alert, emergency or off"
            ));
        }
    }))
}

/// The PSR-3 name of an engine level.
fn psr_level(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warning",
        LogLevel::Info => "info",
        LogLevel::Debug | LogLevel::Trace => "debug",
    }
}

/// Starts collecting the engine's records (module startup), at warnings and above.
pub fn install() {
    logs::install();
}

/// `Broker::setLogger()`: records at `level` and above go to `logger` (`null`: `error_log()`).
pub fn set_logger(logger: Option<&Zval>, level: &str) -> PhpResult<()> {
    let level = level_from(level).map_err(config_error)?;
    let logger = match logger.filter(|l| !l.is_null()) {
        None => None,
        Some(logger) => {
            let has_log = logger.is_object()
                && ZendCallable::try_from_name("method_exists")
                    .and_then(|exists| exists.try_call(vec![logger, &"log"]))
                    .is_ok_and(|found| found.bool() == Some(true));
            if !has_log {
                return Err(config_error(
                    "invalid configuration (logger): expected a PSR-3 logger, an object with a log($level, $message, $context) method",
                ));
            }
            Some(logger.shallow_clone())
        }
    };
    // Records waiting now go where they were meant to.
    forward();
    logs::set_level(level);
    // The old logger is let go outside the borrow: its destructor may call into Polybus.
    let old = LOGGER.with(|slot| slot.replace(logger));
    drop(old);
    Ok(())
}

/// Forgets the logger (request shutdown: PHP frees the request's objects after this).
pub fn clear_logger() {
    let old = LOGGER.with(RefCell::take);
    drop(old);
}

/// Passes on the records waiting now. Cheap when none waits (one atomic load). Not while a
/// PHP exception is pending (PHP would skip the calls: the records wait for the next time),
/// nor from inside a logger that called into Polybus (the outer call carries on).
pub fn forward() {
    if !logs::pending() || ExecutorGlobals::has_exception() || FORWARDING.with(Cell::get) {
        return;
    }
    FORWARDING.with(|f| f.set(true));
    forward_waiting();
    FORWARDING.with(|f| f.set(false));
}

/// Passes on what the queue holds now, batch by batch, until a logger throws.
fn forward_waiting() {
    // Bounded: a source faster than the logger must not keep PHP here.
    for _ in 0..=logs::QUEUE_CAPACITY / BATCH {
        let mut batch = logs::try_take(BATCH).into_iter();
        let full = batch.len() == BATCH;
        while let Some(record) = batch.next() {
            emit(&record);
            if ExecutorGlobals::has_exception() {
                // The logger threw: the rest waits for the next call.
                logs::put_back(batch.collect());
                return;
            }
        }
        if !full {
            return;
        }
    }
}

fn emit(record: &LogRecord) {
    // A handle of its own: the logger may call into Polybus (even `setLogger`) meanwhile.
    let logger = LOGGER.with(|slot| slot.borrow().as_ref().map(Zval::shallow_clone));
    if let Some(logger) = logger {
        let mut context = ZendHashTable::new();
        let _ = context.insert("logger", record.logger_name());
        for (name, value) in &record.fields {
            let _ = context.insert(name.as_str(), value.as_str());
        }
        let message = record.message.clone();
        if logger
            .try_call_method("log", vec![&psr_level(record.level), &message, &context])
            .is_ok()
        {
            return;
        }
    }
    let line = format!(
        "polybus {}: {} [{}]",
        psr_level(record.level),
        record.text(),
        record.logger_name()
    );
    if let Ok(error_log) = ZendCallable::try_from_name("error_log") {
        let _ = error_log.try_call(vec![&line]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psr_levels_map_to_engine_levels() {
        assert_eq!(level_from("warning"), Ok(Some(LogLevel::Warn)));
        assert_eq!(level_from("NOTICE"), Ok(Some(LogLevel::Info)));
        assert_eq!(level_from("critical"), Ok(Some(LogLevel::Error)));
        assert_eq!(level_from("off"), Ok(None));
        let err = level_from("loud").unwrap_err();
        assert!(err.contains("\"loud\""), "{err}");
        assert_eq!(psr_level(LogLevel::Trace), "debug");
    }
}
