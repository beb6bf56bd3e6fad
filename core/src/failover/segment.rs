//! Segment files: `<spool_dir>/<id, 20 digits>.seg`, an 8-byte magic header then records
//! (see [`record`](super::record)). Ids only grow; a segment is appended to by one open spool
//! and never again after it is closed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{self, Frame};
use super::spool::io_error;
use crate::error::Result;

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"PBSPOOL1";
/// Offset of the first record in a segment.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
const SUFFIX: &str = ".seg";

/// The path of segment `id` in `dir`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

/// The segments in `dir`, by id, with their sizes. Other files are ignored.
pub fn list(dir: &Path) -> Result<BTreeMap<u64, u64>> {
    let mut segments = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|err| io_error(format!("listing {}", dir.display()), err))?;
    for entry in entries {
        let entry = entry.map_err(|err| io_error(format!("listing {}", dir.display()), err))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let len = entry
            .metadata()
            .map_err(|err| io_error(format!("reading {}", entry.path().display()), err))?
            .len();
        segments.insert(id, len);
    }
    Ok(segments)
}

/// Creates segment `id` with its header; the file is opened for appending.
pub fn create(dir: &Path, id: u64) -> Result<File> {
    let path = path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(|err| io_error(format!("creating {}", path.display()), err))?;
    file.write_all(MAGIC)
        .map_err(|err| io_error(format!("writing {}", path.display()), err))?;
    Ok(file)
}

/// A reader positioned at `offset` of segment `id`.
pub fn reader(dir: &Path, id: u64, offset: u64) -> Result<BufReader<File>> {
    let path = path(dir, id);
    let mut file =
        File::open(&path).map_err(|err| io_error(format!("opening {}", path.display()), err))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|err| io_error(format!("reading {}", path.display()), err))?;
    Ok(BufReader::with_capacity(256 * 1024, file))
}

/// What checking a segment found.
pub struct Scan {
    /// Intact records from the starting offset on.
    pub records: u64,
    /// The offset just after the last intact record: the segment's usable length.
    pub end: u64,
    /// Why the bytes after `end` are unusable, if there are any.
    pub damage: Option<String>,
}

/// Checks segment `id` from `offset` (a record boundary) to its end, record by record.
pub fn scan(dir: &Path, id: u64, offset: u64) -> Result<Scan> {
    let file_path = path(dir, id);
    let mut file = File::open(&file_path)
        .map_err(|err| io_error(format!("opening {}", file_path.display()), err))?;
    let mut magic = [0u8; MAGIC.len()];
    let header_ok = std::io::Read::read_exact(&mut file, &mut magic).is_ok() && &magic == MAGIC;
    if !header_ok {
        return Ok(Scan {
            records: 0,
            end: 0,
            damage: Some("the segment header is missing or not a Polybus spool header".into()),
        });
    }
    let offset = offset.max(HEADER_LEN);
    let mut input = reader(dir, id, offset)?;
    let mut scan = Scan {
        records: 0,
        end: offset,
        damage: None,
    };
    loop {
        match record::read_frame(&mut input)
            .map_err(|err| io_error(format!("reading {}", file_path.display()), err))?
        {
            Frame::Record(_, size) => {
                scan.records += 1;
                scan.end += size;
            }
            Frame::End => return Ok(scan),
            Frame::Damaged(why) => {
                scan.damage = Some(why);
                return Ok(scan);
            }
        }
    }
}

/// Cuts segment `id` back to `len` bytes, durably.
pub fn truncate(dir: &Path, id: u64, len: u64) -> Result<()> {
    let path = path(dir, id);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|err| io_error(format!("opening {}", path.display()), err))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|err| io_error(format!("truncating {}", path.display()), err))
}

/// Deletes segment `id`; one already gone is fine.
pub fn remove(dir: &Path, id: u64) -> Result<()> {
    let path = path(dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error(format!("deleting {}", path.display()), err)),
    }
}

/// Makes the directory's entries (created, renamed files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|err| io_error(format!("syncing {}", dir.display()), err))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
