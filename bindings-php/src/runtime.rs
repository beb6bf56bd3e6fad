//! The one tokio runtime of the process, created on first use, and bounded blocking waits on it.
//!
//! PHP calls the extension from one thread and expects each call to return; the engine is
//! async. Every blocking call goes through [`block_on`] with a deadline, so no call waits
//! without bound.
//!
//! The runtime is a current-thread one: while PHP waits in a call, its own thread drives the
//! I/O and the engine's tasks, so a publish is a write and a read on the calling thread, with no
//! hand-off to a worker thread and back (with worker threads, those two wake-ups cost more than
//! the round trip to a local Redis). Between calls, while PHP runs its own code, a keeper thread
//! drives the runtime every [`KEEPER_TICK`], so heartbeats, reconnects, confirms and failover
//! replays go on. A process forked after the runtime started (pcntl_fork, php-fpm's workers are
//! forked before any request) gets a fresh runtime and keeper: the parent's threads do not
//! exist in the child.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// How often the keeper drives the runtime while no PHP call does.
const KEEPER_TICK: Duration = Duration::from_millis(20);

/// Scheduler rounds per keeper tick: each polls the I/O driver without waiting and runs the
/// tasks that are ready.
const KEEPER_ROUNDS: usize = 4;

/// The runtime of this process, and the thread that drives it between PHP calls.
struct Engine {
    /// The process that created it (`polybus::process::generation`).
    generation: u64,
    runtime: Arc<Runtime>,
    /// A PHP call is driving the runtime (the keeper leaves it alone).
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

/// What a call needs to drive the runtime.
struct Driver {
    runtime: Arc<Runtime>,
    busy: Arc<AtomicBool>,
}

fn driver() -> std::io::Result<Driver> {
    let mut slot = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let generation = polybus::process::generation();
    if let Some(engine) = slot.as_ref() {
        if engine.generation == generation {
            return Ok(Driver {
                runtime: engine.runtime.clone(),
                busy: engine.busy.clone(),
            });
        }
        // Forked: the parent's keeper thread is gone, and dropping its runtime could wait for
        // blocking threads that do not exist here. Leak it instead.
        if let Some(stale) = slot.take() {
            std::mem::forget(stale);
        }
    }
    let runtime = Arc::new(
        Builder::new_current_thread()
            .thread_name("polybus-php")
            .enable_all()
            .build()?,
    );
    let busy = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (runtime, busy, stop) = (Arc::downgrade(&runtime), busy.clone(), stop.clone());
        std::thread::Builder::new()
            .name("polybus-php-keeper".into())
            .spawn(move || keep(runtime, busy, stop))?
    };
    *slot = Some(Engine {
        generation,
        runtime: runtime.clone(),
        busy: busy.clone(),
        stop,
        keeper: Some(keeper),
    });
    Ok(Driver { runtime, busy })
}

/// The keeper: every tick that finds no PHP call driving the runtime, runs what is ready.
fn keep(runtime: Weak<Runtime>, busy: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    loop {
        std::thread::park_timeout(KEEPER_TICK);
        if stop.load(Ordering::Acquire) {
            return;
        }
        if busy.load(Ordering::Acquire) {
            continue;
        }
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        // A task's panic stays in its task; anything else must not end the keeper.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                for _ in 0..KEEPER_ROUNDS {
                    tokio::task::yield_now().await;
                }
            })
        }));
    }
}

/// Marks a PHP call as driving the runtime for as long as it lives.
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn new(flag: Arc<AtomicBool>) -> Busy {
        flag.store(true, Ordering::Release);
        Busy(flag)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs `future` to completion on the calling thread, which drives the runtime meanwhile.
/// Without a deadline: for futures that bound themselves.
pub fn run<F: Future>(future: F) -> std::io::Result<F::Output> {
    let driver = driver()?;
    let _busy = Busy::new(driver.busy);
    Ok(driver.runtime.block_on(future))
}

/// Runs `future` to completion on the runtime, giving up after `limit` (the future is then
/// dropped, which cancels it).
pub fn block_on<F: Future>(limit: Duration, future: F) -> Result<F::Output, BlockError> {
    run(async { tokio::time::timeout(limit, future).await })
        .map_err(BlockError::Runtime)?
        .map_err(|_| BlockError::Elapsed(limit))
}

/// Scheduler rounds a future added to an [`InOrder`] queue gets at once: enough for it to hand
/// its request to its connection and for the connection's task to write it.
const START_ROUNDS: usize = 4;

/// A boxed future that can be polled on the runtime's thread.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Futures polled strictly in the order they were added, each time a PHP call drives the
/// runtime, and left waiting in between while PHP does other work. A future added behind
/// others is never polled before them, so requests they hand to one connection keep their order.
pub struct InOrder<T> {
    slots: VecDeque<Slot<T>>,
}

enum Slot<T> {
    Running(Pending<T>),
    Done(T),
}

impl<T> InOrder<T> {
    /// An empty queue.
    pub fn new() -> Self {
        InOrder {
            slots: VecDeque::new(),
        }
    }

    /// Adds `future` behind the others and gives them all a few turns on the runtime (bounded
    /// by `limit`), so its requests are on their way; it is left running. Returns the results
    /// finished meanwhile, in order.
    pub fn push(&mut self, future: Pending<T>, limit: Duration) -> Result<Vec<T>, BlockError> {
        self.slots.push_back(Slot::Running(future));
        self.wait(usize::MAX, limit)
    }

    /// Drives the runtime until at most `keep` futures are unfinished (bounded by `limit`).
    /// Returns the results finished meanwhile, in order.
    pub fn wait(&mut self, keep: usize, limit: Duration) -> Result<Vec<T>, BlockError> {
        let mut finished = Vec::new();
        let mut rounds = 0;
        block_on(
            limit,
            std::future::poll_fn(|cx| {
                for slot in &mut self.slots {
                    if let Slot::Running(future) = slot
                        && let Poll::Ready(output) = future.as_mut().poll(cx)
                    {
                        *slot = Slot::Done(output);
                    }
                }
                while let Some(Slot::Done(_)) = self.slots.front() {
                    if let Some(Slot::Done(output)) = self.slots.pop_front() {
                        finished.push(output);
                    }
                }
                if rounds < START_ROUNDS {
                    // Let the connections' tasks run (and write) before looking again.
                    rounds += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if self.slots.len() <= keep {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }),
        )?;
        Ok(finished)
    }
}

/// Why a blocking wait did not produce a value.
#[derive(Debug)]
pub enum BlockError {
    /// The runtime could not be created (its keeper thread could not be spawned).
    Runtime(std::io::Error),
    /// The deadline passed.
    Elapsed(Duration),
}

/// Stops the keeper and the runtime at module shutdown, before PHP unloads the extension's
/// code: no thread may outlive the library it runs in. Waits at most `limit` for tasks.
pub fn shutdown(limit: Duration) {
    let taken = ENGINE.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(mut engine) = taken else {
        return;
    };
    if engine.generation != polybus::process::generation() {
        std::mem::forget(engine);
        return;
    }
    engine.stop.store(true, Ordering::Release);
    if let Some(keeper) = engine.keeper.take() {
        keeper.thread().unpark();
        let _ = keeper.join();
    }
    match Arc::try_unwrap(engine.runtime) {
        Ok(runtime) => runtime.shutdown_timeout(limit),
        // Someone still holds it (a broker dropped late): leave it be rather than block.
        Err(shared) => std::mem::forget(shared),
    }
}
