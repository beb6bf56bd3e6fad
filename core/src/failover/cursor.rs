//! The replay cursor: `<spool_dir>/cursor`, where replay resumes. 28 bytes: magic, segment id
//! and offset (u64 LE), crc32 of those. Written to `cursor.tmp`, fsync'd, then renamed over
//! the old one (and the directory fsync'd), so it is always either the old or the new cursor.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::segment;
use super::spool::io_error;
use crate::error::Result;

const FILE: &str = "cursor";
const TEMP: &str = "cursor.tmp";
const MAGIC: &[u8; 8] = b"PBCURSR1";
const LEN: usize = 28;

/// Reads the cursor: `(segment id, offset)`, or `None` when there is none or it is unreadable
/// (then replay starts at the oldest segment: at-least-once, nothing skipped).
pub fn read(dir: &Path) -> Result<Option<(u64, u64)>> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(format!("reading {}", path.display()), err)),
    };
    if bytes.len() != LEN
        || &bytes[..8] != MAGIC
        || crc32fast::hash(&bytes[..24]).to_le_bytes() != bytes[24..]
    {
        tracing::warn!(path = %path.display(), "the spool cursor is unreadable; replaying from the oldest segment");
        return Ok(None);
    }
    let segment = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let offset = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    Ok(Some((segment, offset)))
}

/// Replaces the cursor durably.
pub fn write(dir: &Path, segment: u64, offset: u64) -> Result<()> {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&segment.to_le_bytes());
    bytes.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let temp = dir.join(TEMP);
    let mut file =
        File::create(&temp).map_err(|err| io_error(format!("creating {}", temp.display()), err))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| io_error(format!("writing {}", temp.display()), err))?;
    let path = dir.join(FILE);
    std::fs::rename(&temp, &path).map_err(|err| {
        io_error(
            format!("renaming {} to {}", temp.display(), path.display()),
            err,
        )
    })?;
    segment::sync_dir(dir)
}
