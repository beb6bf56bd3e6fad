//! The Polybus PHP extension: `Polybus\Broker`, `Polybus\Message`,
//! `Polybus\MessageBrokerInterface` and the `Polybus\Exception\*` classes, over the engine
//! (crate `polybus`). The binding converts values, owns the runtime and the objects'
//! lifecycle, and offers a blocking PHP surface; the behaviour lives in the engine.
//!
//! Load it with `php -d extension=/path/to/libpolybus_php.so`.

#![cfg_attr(windows, feature(abi_vectorcall))]

mod broker;
mod config;
mod consume;
mod convert;
mod dead_letters;
mod errors;
mod hub;
mod interface;
mod logs;
mod message;
mod php_array;
mod runtime;

use std::time::Duration;

use ext_php_rs::prelude::*;
use ext_php_rs::zend::ModuleEntry;
use ext_php_rs::{info_table_end, info_table_row, info_table_start};

/// The engine's allocator for everything this extension allocates (see `polybus::allocator`).
#[global_allocator]
static ALLOCATOR: polybus::allocator::EngineAllocator = polybus::allocator::EngineAllocator;

/// How long module shutdown waits for the runtime's tasks before PHP unloads the library.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// Version of the engine this extension wraps.
pub fn engine_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `phpinfo()` / `php -i` section.
extern "C" fn module_info(_module: *mut ModuleEntry) {
    info_table_start!();
    info_table_row!("polybus support", "enabled");
    info_table_row!("polybus version", engine_version());
    info_table_row!("backends", "memory, null, kafka, rabbitmq, redis");
    info_table_end!();
}

/// Module startup: starts collecting the engine's log records (see [`logs`]) and registers the
/// exception classes (plain PHP classes, see [`errors`]). Returns PHP's `FAILURE` (-1) when
/// they cannot be registered, and PHP reports the extension as not started.
extern "C" fn module_startup(_type: i32, _module_number: i32) -> i32 {
    match std::panic::catch_unwind(|| {
        logs::install();
        errors::register_classes()
    }) {
        Ok(Ok(())) => 0,
        _ => -1,
    }
}

/// Request shutdown: the log records still waiting are passed on, then the logger is let go
/// before PHP frees the request's objects.
extern "C" fn request_shutdown(_type: i32, _module_number: i32) -> i32 {
    let _ = std::panic::catch_unwind(|| {
        logs::forward();
        logs::clear_logger();
    });
    0
}

/// Module shutdown: stop the runtime and its keeper thread before PHP unloads this library, so no
/// thread runs code that is no longer mapped. Objects (and their flushes) are gone by now:
/// PHP destroys them at the end of the request.
extern "C" fn module_shutdown(_type: i32, _module_number: i32) -> i32 {
    // Nothing may unwind into PHP from here.
    let _ = std::panic::catch_unwind(|| runtime::shutdown(RUNTIME_SHUTDOWN));
    0
}

/// Registers the extension's interface and classes.
#[php_module]
pub fn get_module(module: ModuleBuilder) -> ModuleBuilder {
    module
        .name("polybus")
        .version(engine_version())
        .interface::<interface::PhpInterfaceMessageBrokerInterface>()
        .class::<message::Message>()
        .class::<dead_letters::DeadLetter>()
        .class::<broker::Broker>()
        .class::<hub::Hub>()
        .startup_function(module_startup)
        .shutdown_function(module_shutdown)
        .request_shutdown_function(request_shutdown)
        .info_function(module_info)
}
