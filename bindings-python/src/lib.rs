//! Python bindings of the Polybus engine. The PyO3 module (`polybus._polybus`) arrives with
//! the Python package issue; until then this crate only pins the dependency on the core.

/// Version of the engine these bindings wrap.
pub fn engine_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
