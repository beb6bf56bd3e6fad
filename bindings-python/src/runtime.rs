//! The tokio runtime behind the module: one per process, created lazily, and created anew in a
//! child after `fork()` (the parent's worker threads do not exist there), so the module stays
//! usable in pre-forking servers (gunicorn, celery).

use std::sync::Mutex;

use tokio::runtime::Runtime;

/// The runtime of the current process, with the generation that created it.
static CURRENT: Mutex<Option<(u64, &'static Runtime)>> = Mutex::new(None);

/// This process's runtime, created on first use (and again after a fork).
pub fn get() -> &'static Runtime {
    let generation = polybus::process::generation();
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, runtime)) = *current
        && owner == generation
    {
        return runtime;
    }
    // A parent's runtime is leaked on purpose in a child: its threads are gone, and dropping
    // it would wait for them.
    let runtime: &'static Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("polybus")
            .enable_all()
            .build()
            .unwrap_or_else(|err| panic!("cannot start the polybus runtime: {err}")),
    ));
    *current = Some((generation, runtime));
    runtime
}
