//! The spool directory's lock: an exclusive `flock` on `<spool_dir>/lock`, held while the
//! spool is open, so two brokers (in one process or two) never write the same spool. The OS
//! releases it when the process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::spool::io_error;
use crate::error::{Error, Result};

/// Name of the lock file inside the spool directory.
pub const LOCK_FILE: &str = "lock";

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, failing at once (never waiting) when someone else holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| io_error(format!("opening the lock file {}", path.display()), err))?;
        try_lock(&file).map_err(|err| {
            if err.kind() == std::io::ErrorKind::WouldBlock {
                Error::config(
                    "spool_dir",
                    format!(
                        "{} is in use by another failover broker (its lock file {} is held); give each broker its own spool directory",
                        dir.display(),
                        path.display()
                    ),
                )
            } else {
                io_error(format!("locking {}", path.display()), err)
            }
        })?;
        // The holder's pid, for whoever finds the directory busy.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DirLock { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Without `flock`, the directory is not guarded: keep one broker per spool directory.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<()> {
    Ok(())
}
