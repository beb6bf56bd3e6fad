//! The tokio runtime behind the module: one per process, created lazily, and created anew in a
//! child after `fork()` (the parent's worker threads do not exist there), so the module stays
//! usable in pre-forking servers (gunicorn, celery).

use std::cell::OnceCell;
use std::pin::Pin;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use pyo3_async_runtimes::generic::{ContextExt, Runtime as GenericRuntime};
use tokio::runtime::Runtime;
use tokio::task::{JoinError, JoinHandle};

/// The runtime of the current process, with the id of the process that created it.
static CURRENT: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// This process's runtime, created on first use (and again after a fork).
pub fn get() -> &'static Runtime {
    let pid = std::process::id();
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, runtime)) = *current
        && owner == pid
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
    *current = Some((pid, runtime));
    runtime
}

/// The runtime as pyo3-async-runtimes sees it.
pub struct ForkSafe;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl GenericRuntime for ForkSafe {
    type JoinError = JoinError;
    type JoinHandle = JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        get().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        get().spawn_blocking(f)
    }
}

impl ContextExt for ForkSafe {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|c| c.get().cloned())
            .unwrap_or_default()
    }
}

/// Runs `fut` on the runtime and returns a Python awaitable of its result.
pub fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<ForkSafe, F, T>(py, fut)
}
