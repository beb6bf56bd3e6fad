//! The one tokio runtime of the process, created on first use, and bounded blocking waits on it.
//!
//! PHP calls the extension from one thread and expects each call to return; the engine is
//! async. Every blocking call goes through [`block_on`] with a deadline, so no call waits
//! without bound. A process forked after the runtime started (pcntl_fork, php-fpm's workers
//! are forked before any request) gets a fresh runtime: the parent's worker threads do not
//! exist in the child.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// Worker threads of the runtime: the PHP thread only waits, the workers drive the I/O.
const WORKER_THREADS: usize = 2;

/// The runtime and the process it was created in.
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime of this process, created on first use.
pub fn runtime() -> std::io::Result<Arc<Runtime>> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((owner, runtime)) = slot.as_ref() {
        if *owner == pid {
            return Ok(runtime.clone());
        }
        // Forked: the parent's worker threads are gone, so dropping its runtime would wait
        // for them for ever. Leak it instead.
        if let Some((_, stale)) = slot.take() {
            std::mem::forget(stale);
        }
    }
    let runtime = Arc::new(
        Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("polybus-php")
            .enable_all()
            .build()?,
    );
    *slot = Some((pid, runtime.clone()));
    Ok(runtime)
}

/// Runs `future` to completion on the runtime, giving up after `limit` (the future is then
/// dropped, which cancels it).
pub fn block_on<F: Future>(limit: Duration, future: F) -> Result<F::Output, BlockError> {
    let runtime = runtime().map_err(BlockError::Runtime)?;
    runtime
        .block_on(async { tokio::time::timeout(limit, future).await })
        .map_err(|_| BlockError::Elapsed(limit))
}

/// Why a blocking wait did not produce a value.
#[derive(Debug)]
pub enum BlockError {
    /// The runtime could not be created (threads could not be spawned).
    Runtime(std::io::Error),
    /// The deadline passed.
    Elapsed(Duration),
}

/// Stops the runtime at module shutdown, before PHP unloads the extension's code: worker
/// threads must not outlive the library they run in. Waits at most `limit` for tasks.
pub fn shutdown(limit: Duration) {
    let taken = RUNTIME.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((owner, runtime)) = taken {
        if owner != std::process::id() {
            std::mem::forget(runtime);
            return;
        }
        match Arc::try_unwrap(runtime) {
            Ok(runtime) => runtime.shutdown_timeout(limit),
            // Someone still holds it (a broker dropped late): leave it be rather than block.
            Err(shared) => std::mem::forget(shared),
        }
    }
}
