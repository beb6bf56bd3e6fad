//! The exception classes of the extension and how the engine's errors map onto them.
//!
//! Every class extends `Polybus\Exception\PolybusException`, itself a `\RuntimeException`, so
//! `catch (PolybusException $e)` catches everything the extension throws. Messages come from
//! the engine, which redacts passwords before they reach any error.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use ext_php_rs::args::ArgInfoTables;
use ext_php_rs::builders::ClassBuilder;
use ext_php_rs::class::ClassEntryInfo;
use ext_php_rs::exception::PhpException;
use ext_php_rs::zend::{ClassEntry, ce};

use crate::runtime::BlockError;

unsafe extern "C" {
    /// SPL's `RuntimeException`, exported by the PHP binary (`PHPAPI`).
    static spl_ce_RuntimeException: *mut ClassEntry;
}

/// `\RuntimeException`. SPL is part of every PHP build and starts before dynamically loaded
/// extensions, so the class entry is set when this extension registers its classes; should it
/// not be, `\Exception` is the parent.
fn runtime_exception() -> &'static ClassEntry {
    // SAFETY: the symbol is a pointer PHP sets once at SPL's startup and never frees before
    // module shutdown; it is read here during this extension's startup, after SPL's.
    unsafe { spl_ce_RuntimeException.as_ref() }.unwrap_or_else(ce::exception)
}

/// The exception classes, parent first. They are plain PHP classes (no Rust object behind
/// them), so userland code can construct, extend and rethrow them like any exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `Polybus\Exception\PolybusException`: base class of every exception the extension throws.
    Polybus,
    /// `ConfigurationException`: a URL, configuration array or option is invalid; the message
    /// names the bad part.
    Configuration,
    /// `ConnectionException`: the broker could not be reached, or the connection was lost.
    Connection,
    /// `PublishException`: the broker refused or failed a publish.
    Publish,
    /// `InvalidMessageException`: a payload is not JSON-encodable, or a header or topic is bad.
    InvalidMessage,
    /// `ConsumeException`: subscribing or consuming failed.
    Consume,
    /// `TimeoutException`: an operation did not finish within its time limit.
    Timeout,
}

impl Class {
    /// Every class, the base first (registration order).
    pub const ALL: [Class; 7] = [
        Class::Polybus,
        Class::Configuration,
        Class::Connection,
        Class::Publish,
        Class::InvalidMessage,
        Class::Consume,
        Class::Timeout,
    ];

    /// The PHP class name.
    pub fn name(self) -> &'static str {
        match self {
            Class::Polybus => "Polybus\\Exception\\PolybusException",
            Class::Configuration => "Polybus\\Exception\\ConfigurationException",
            Class::Connection => "Polybus\\Exception\\ConnectionException",
            Class::Publish => "Polybus\\Exception\\PublishException",
            Class::InvalidMessage => "Polybus\\Exception\\InvalidMessageException",
            Class::Consume => "Polybus\\Exception\\ConsumeException",
            Class::Timeout => "Polybus\\Exception\\TimeoutException",
        }
    }

    /// The registered class entry (`\Exception` if registration has not run).
    pub fn entry(self) -> &'static ClassEntry {
        let entry = REGISTERED[self as usize].load(Ordering::Acquire);
        // SAFETY: set once at module startup to a class entry PHP keeps until module shutdown,
        // after which no PHP code (and so none of ours) runs.
        unsafe { entry.as_ref() }.unwrap_or_else(ce::exception)
    }
}

/// The class entries PHP registered, by [`Class`] index.
static REGISTERED: [AtomicPtr<ClassEntry>; 7] = [const { AtomicPtr::new(ptr::null_mut()) }; 7];

fn base_entry() -> &'static ClassEntry {
    Class::Polybus.entry()
}

/// Registers the exception classes; called from the module startup function.
pub fn register_classes() -> ext_php_rs::error::Result<()> {
    for class in Class::ALL {
        let parent: ClassEntryInfo = match class {
            Class::Polybus => (runtime_exception, "\\RuntimeException"),
            _ => (base_entry, Class::Polybus.name()),
        };
        let register: fn(&'static mut ClassEntry, ArgInfoTables) = match class {
            Class::Polybus => |ce, _| store(Class::Polybus, ce),
            Class::Configuration => |ce, _| store(Class::Configuration, ce),
            Class::Connection => |ce, _| store(Class::Connection, ce),
            Class::Publish => |ce, _| store(Class::Publish, ce),
            Class::InvalidMessage => |ce, _| store(Class::InvalidMessage, ce),
            Class::Consume => |ce, _| store(Class::Consume, ce),
            Class::Timeout => |ce, _| store(Class::Timeout, ce),
        };
        ClassBuilder::new(class.name())
            .extends(parent)
            .registration(register)
            .register()?;
    }
    Ok(())
}

fn store(class: Class, entry: &'static mut ClassEntry) {
    REGISTERED[class as usize].store(entry, Ordering::Release);
}

/// What the extension was doing when an engine error happened: it picks the exception class
/// for errors that do not say it themselves (a broker refusal while publishing is a
/// `PublishException`, while consuming a `ConsumeException`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// Creating the broker.
    Connect,
    /// Publishing or flushing.
    Publish,
    /// Subscribing or consuming.
    Consume,
}

/// An exception of `class` with `message`.
pub fn throw(class: Class, message: impl Into<String>) -> PhpException {
    PhpException::new(message.into(), 0, class.entry())
}

/// A `ConfigurationException`.
pub fn config_error(message: impl Into<String>) -> PhpException {
    throw(Class::Configuration, message)
}

/// The PHP exception for an engine error.
pub fn engine_error(err: &polybus::Error, context: Context) -> PhpException {
    engine_error_with(err, context, err.to_string())
}

/// The PHP exception class for an engine error, with another message (one that adds context).
pub fn engine_error_with(err: &polybus::Error, context: Context, message: String) -> PhpException {
    use polybus::Error as E;
    match err {
        E::Config { .. }
        | E::InvalidSubscription(_)
        | E::BackendNotEnabled { .. }
        | E::Unsupported { .. } => throw(Class::Configuration, message),
        E::Connection { .. } => throw(Class::Connection, message),
        E::Timeout { .. } => throw(Class::Timeout, message),
        E::InvalidMessage(_) | E::Codec(_) => throw(Class::InvalidMessage, message),
        _ => match context {
            Context::Publish => throw(Class::Publish, message),
            Context::Consume => throw(Class::Consume, message),
            Context::Connect => throw(Class::Connection, message),
        },
    }
}

/// The PHP exception for a blocking wait that did not complete.
pub fn block_error(err: BlockError, operation: &str) -> PhpException {
    match err {
        BlockError::Elapsed(after) => throw(
            Class::Timeout,
            format!("{operation} timed out after {:.3} s", after.as_secs_f64()),
        ),
        BlockError::Runtime(io) => throw(
            Class::Polybus,
            format!("the Polybus runtime could not start its threads: {io}"),
        ),
    }
}
