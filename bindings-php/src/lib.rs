//! PHP extension of the Polybus engine. The ext-php-rs module arrives with the PHP extension
//! issue; until then this crate only pins the dependency on the core.

/// Version of the engine this extension wraps.
pub fn engine_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
