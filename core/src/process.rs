//! Which process this is, for the bindings' per-process state (a runtime, an event loop port)
//! that a child made by `fork()` must create anew.

/// A number that changes in a child after `fork()`: cheaper than comparing `getpid()`, which is
/// a system call on every use. Calls from one process always get the same value.
#[cfg(unix)]
pub fn generation() -> u64 {
    use std::sync::Once;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Forks this process has gone through, raised in each child by a `pthread_atfork` hook.
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static HOOK: Once = Once::new();

    extern "C" fn forked() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }

    HOOK.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic counter in the child.
        unsafe {
            libc::pthread_atfork(None, None, Some(forked));
        }
    });
    FORKS.load(Ordering::Relaxed)
}

/// Without `fork()`, the process id.
#[cfg(not(unix))]
pub fn generation() -> u64 {
    u64::from(std::process::id())
}

#[cfg(all(test, unix))]
mod tests {
    use super::generation;

    #[test]
    fn a_forked_child_sees_a_new_generation_and_the_parent_keeps_its_own() {
        let before = generation();
        assert_eq!(generation(), before);
        // SAFETY: the child only reads an atomic and exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if generation() == before + 1 { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child saw the parent's generation"
        );
        assert_eq!(generation(), before);
    }
}
