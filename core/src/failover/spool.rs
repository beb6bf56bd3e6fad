//! The durable local spool: messages appended in order to segment files, read back in order
//! from a persisted cursor, segments deleted once replayed.
//!
//! Layout of the spool directory: `lock` (see [`DirLock`]), `cursor` (see
//! [`cursor`](super::cursor)) and `<id>.seg` segment files (see [`segment`](super::segment)).
//! Opening a spool checks every unreplayed record; a damaged tail (a write torn by a crash) is
//! cut off with a warning, and appends always start a new segment, so old segments are never
//! written again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::lock::DirLock;
use super::options::{FailoverOptions, FsyncPolicy};
use super::record::{self, Frame};
use super::{cursor, segment};
use crate::error::{Error, Result};
use crate::message::Message;

/// The [`Error`] for a failed spool operation: what was being done and what the OS said.
pub(crate) fn io_error(doing: String, err: std::io::Error) -> Error {
    Error::Broker {
        backend: "failover",
        reason: format!("spool: {doing}: {err}"),
    }
}

/// A place in the spool: just after some record (or at the cursor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolPosition {
    segment: u64,
    offset: u64,
    /// Records before this position since the spool was opened (cursor = 0 at open).
    seq: u64,
}

/// A message read back from the spool, and the position just after it (to commit).
#[derive(Clone, Debug)]
pub struct Spooled {
    /// The message as it was appended.
    pub message: Message,
    /// Commit this to mark the message (and all before it) replayed.
    pub position: SpoolPosition,
}

/// The segment appends go to.
struct Active {
    id: u64,
    file: File,
}

/// An open spool directory; holds its lock until dropped.
pub struct Spool {
    dir: PathBuf,
    fsync: FsyncPolicy,
    max_bytes: u64,
    segment_bytes: u64,
    /// Live segments and their lengths.
    segments: BTreeMap<u64, u64>,
    active: Option<Active>,
    next_id: u64,
    /// Where replay resumes (persisted in the cursor file).
    cursor: SpoolPosition,
    /// Just after the last record.
    end: SpoolPosition,
    /// Appends not yet fsync'd (policy `Interval`).
    dirty: bool,
    /// Set when a failed append could not be undone: the spool refuses appends from then on.
    broken: Option<String>,
    _lock: DirLock,
}

impl Spool {
    /// Opens (creating if needed) the spool in `options.spool_dir`, takes its lock, checks the
    /// records not yet replayed and cuts off a damaged tail.
    pub fn open(options: &FailoverOptions) -> Result<Spool> {
        options.validate()?;
        let dir = options.spool_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|err| io_error(format!("creating {}", dir.display()), err))?;
        let lock = DirLock::acquire(&dir)?;
        let mut segments = segment::list(&dir)?;

        let (start_segment, start_offset) = match cursor::read(&dir)? {
            Some(position) => position,
            None => (
                segments.keys().next().copied().unwrap_or(0),
                segment::HEADER_LEN,
            ),
        };
        // Segments before the cursor were replayed; a crash came before their deletion.
        let replayed: Vec<u64> = segments.range(..start_segment).map(|(id, _)| *id).collect();
        for id in replayed {
            segment::remove(&dir, id)?;
            segments.remove(&id);
        }

        let last = segments
            .iter()
            .filter(|(_, len)| **len >= segment::HEADER_LEN)
            .map(|(id, _)| *id)
            .next_back();
        let mut records = 0;
        let mut headless = Vec::new();
        for (id, len) in segments.iter_mut() {
            if *len < segment::HEADER_LEN {
                // Created, but the crash came before its header was written.
                tracing::warn!(path = %segment::path(&dir, *id).display(), "removing a spool segment without a header");
                headless.push(*id);
                continue;
            }
            let from = if *id == start_segment {
                start_offset
            } else {
                segment::HEADER_LEN
            };
            if from > *len {
                continue; // shorter than the cursor: nothing left in it
            }
            let scan = segment::scan(&dir, *id, from)?;
            if scan.end < segment::HEADER_LEN {
                return Err(Error::config(
                    "spool_dir",
                    format!(
                        "{} does not start with a Polybus spool header; move it out of the spool directory",
                        segment::path(&dir, *id).display()
                    ),
                ));
            }
            records += scan.records;
            if let Some(damage) = scan.damage {
                let path = segment::path(&dir, *id);
                let lost = *len - scan.end;
                if Some(*id) == last {
                    tracing::warn!(path = %path.display(), offset = scan.end, bytes = lost, %damage, "cutting a torn write off the spool's tail");
                } else {
                    tracing::error!(path = %path.display(), offset = scan.end, bytes = lost, %damage, "a spool segment is damaged; the records after the damage are dropped");
                }
                segment::truncate(&dir, *id, scan.end)?;
                *len = scan.end;
            }
        }
        for id in headless {
            segment::remove(&dir, id)?;
            segments.remove(&id);
        }

        let cursor = SpoolPosition {
            segment: start_segment,
            offset: start_offset,
            seq: 0,
        };
        let end = match segments.iter().next_back() {
            Some((id, len)) => SpoolPosition {
                segment: *id,
                offset: *len,
                seq: records,
            },
            None => cursor,
        };
        let next_id = segments
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(start_segment)
            + 1;
        if records > 0 {
            tracing::info!(dir = %dir.display(), messages = records, "opened a spool with messages to replay");
        }
        Ok(Spool {
            dir,
            fsync: options.fsync,
            max_bytes: options.max_spool_bytes,
            segment_bytes: options.segment_bytes,
            segments,
            active: None,
            next_id,
            cursor,
            end,
            dirty: false,
            broken: None,
            _lock: lock,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Messages not yet replayed.
    pub fn depth(&self) -> u64 {
        self.end.seq - self.cursor.seq
    }

    /// True when every message has been replayed.
    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// Disk space the segment files take.
    pub fn bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    /// Appends `messages` in order, all or none; with [`FsyncPolicy::Always`] they are on disk
    /// when this returns. Fails without writing anything when they would take the spool past
    /// `max_spool_bytes`.
    pub fn append(&mut self, messages: &[Message]) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::Broker {
                backend: "failover",
                reason: format!("spool {} is unusable: {why}", self.dir.display()),
            });
        }
        if messages.is_empty() {
            return Ok(());
        }
        let frames: Vec<Vec<u8>> = messages.iter().map(record::encode).collect();
        let plan = self.plan(&frames);
        let needed: u64 = frames.iter().map(|f| f.len() as u64).sum::<u64>()
            + plan.iter().filter(|p| p.0.is_none()).count() as u64 * segment::HEADER_LEN;
        if self.bytes() + needed > self.max_bytes {
            return Err(Error::Broker {
                backend: "failover",
                reason: format!(
                    "the spool in {} is full: {} messages ({} bytes) wait for the primary, {needed} more bytes would pass max_spool_bytes ({})",
                    self.dir.display(),
                    self.depth(),
                    self.bytes(),
                    self.max_bytes
                ),
            });
        }
        let end_before = self.end;
        let mut undo: Vec<(u64, Option<u64>)> = Vec::new();
        match self.write_plan(&frames, &plan, &mut undo) {
            Ok(()) => {
                self.end.seq += messages.len() as u64;
                Ok(())
            }
            Err(err) => {
                self.undo(undo);
                self.end = end_before;
                Err(err)
            }
        }
    }

    /// Splits `frames` over segments: `(None, range)` for a range that starts a new segment,
    /// `(Some(id), range)` for one that goes to the active segment.
    fn plan(&self, frames: &[Vec<u8>]) -> Vec<(Option<u64>, std::ops::Range<usize>)> {
        let mut plan: Vec<(Option<u64>, std::ops::Range<usize>)> = Vec::new();
        let mut current = self
            .active
            .as_ref()
            .map(|a| (Some(a.id), self.segments.get(&a.id).copied().unwrap_or(0)));
        for (index, frame) in frames.iter().enumerate() {
            let size = frame.len() as u64;
            let fits = matches!(current, Some((_, len)) if len <= segment::HEADER_LEN || len + size <= self.segment_bytes);
            if !fits {
                current = Some((None, segment::HEADER_LEN));
                plan.push((None, index..index));
            } else if plan.is_empty() {
                plan.push((current.and_then(|c| c.0), index..index));
            }
            let last = plan.last_mut().expect("a range");
            last.1.end = index + 1;
            if let Some((_, len)) = current.as_mut() {
                *len += size;
            }
        }
        plan
    }

    fn write_plan(
        &mut self,
        frames: &[Vec<u8>],
        plan: &[(Option<u64>, std::ops::Range<usize>)],
        undo: &mut Vec<(u64, Option<u64>)>,
    ) -> Result<()> {
        for (target, range) in plan {
            if target.is_none() {
                self.rotate(undo)?;
            }
            let active = self.active.as_mut().expect("an active segment");
            let id = active.id;
            let len = self.segments.get(&id).copied().unwrap_or(0);
            if !undo.iter().any(|(u, _)| *u == id) {
                undo.push((id, Some(len)));
            }
            let mut buffer = Vec::with_capacity(frames[range.clone()].iter().map(Vec::len).sum());
            for frame in &frames[range.clone()] {
                buffer.extend_from_slice(frame);
            }
            active.file.write_all(&buffer).map_err(|err| {
                io_error(
                    format!("appending to {}", segment::path(&self.dir, id).display()),
                    err,
                )
            })?;
            let new_len = len + buffer.len() as u64;
            self.segments.insert(id, new_len);
            self.end.segment = id;
            self.end.offset = new_len;
        }
        match self.fsync {
            FsyncPolicy::Always => self.sync_active()?,
            FsyncPolicy::Interval(_) => self.dirty = true,
            FsyncPolicy::Never => {}
        }
        Ok(())
    }

    /// Closes the active segment (syncing it unless the policy is `Never`) and starts a new one.
    fn rotate(&mut self, undo: &mut Vec<(u64, Option<u64>)>) -> Result<()> {
        if self.fsync != FsyncPolicy::Never {
            self.sync_active()?;
        }
        self.active = None;
        let id = self.next_id;
        self.next_id += 1;
        let file = segment::create(&self.dir, id);
        undo.push((id, None));
        let file = file?;
        self.segments.insert(id, segment::HEADER_LEN);
        if self.fsync != FsyncPolicy::Never {
            file.sync_data().map_err(|err| {
                io_error(
                    format!("syncing {}", segment::path(&self.dir, id).display()),
                    err,
                )
            })?;
            segment::sync_dir(&self.dir)?;
        }
        self.active = Some(Active { id, file });
        Ok(())
    }

    /// Takes a failed append back: new segments deleted, the others cut to their old length.
    fn undo(&mut self, undo: Vec<(u64, Option<u64>)>) {
        self.active = None;
        for (id, previous) in undo {
            let outcome = match previous {
                None => segment::remove(&self.dir, id).map(|()| {
                    self.segments.remove(&id);
                }),
                Some(len) => segment::truncate(&self.dir, id, len).map(|()| {
                    self.segments.insert(id, len);
                }),
            };
            if let Err(err) = outcome {
                tracing::error!(error = %err, "a failed spool append could not be undone; the spool takes no more appends");
                self.broken = Some(err.to_string());
            }
        }
    }

    fn sync_active(&mut self) -> Result<()> {
        if let Some(active) = &self.active {
            active.file.sync_data().map_err(|err| {
                io_error(
                    format!("syncing {}", segment::path(&self.dir, active.id).display()),
                    err,
                )
            })?;
        }
        self.dirty = false;
        Ok(())
    }

    /// Makes every append so far durable (for [`FsyncPolicy::Interval`] and `flush`).
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            self.sync_active()?;
        }
        Ok(())
    }

    /// Reads up to `max` messages from the cursor on, in append order, without moving it.
    pub fn read(&self, max: usize) -> Result<Vec<Spooled>> {
        let mut out = Vec::new();
        let mut position = self.cursor;
        let mut input: Option<(u64, std::io::BufReader<File>)> = None;
        while out.len() < max && position.seq < self.end.seq {
            let len = self.segments.get(&position.segment).copied().unwrap_or(0);
            if position.offset >= len {
                let Some((next, _)) = self.segments.range(position.segment + 1..).next() else {
                    break;
                };
                position.segment = *next;
                position.offset = segment::HEADER_LEN;
                continue;
            }
            if input.as_ref().map(|(id, _)| *id) != Some(position.segment) {
                input = Some((
                    position.segment,
                    segment::reader(&self.dir, position.segment, position.offset)?,
                ));
            }
            let (_, reader) = input.as_mut().expect("a reader");
            let path = || segment::path(&self.dir, position.segment);
            match record::read_frame(reader)
                .map_err(|err| io_error(format!("reading {}", path().display()), err))?
            {
                Frame::Record(message, size) => {
                    position.offset += size;
                    position.seq += 1;
                    out.push(Spooled {
                        message: *message,
                        position,
                    });
                }
                Frame::End => {
                    return Err(Error::Broker {
                        backend: "failover",
                        reason: format!(
                            "spool: {} ends at {} but {len} bytes were written",
                            path().display(),
                            position.offset
                        ),
                    });
                }
                Frame::Damaged(why) => {
                    return Err(Error::Broker {
                        backend: "failover",
                        reason: format!(
                            "spool: {} is damaged at offset {}: {why}",
                            path().display(),
                            position.offset
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Marks everything up to `position` replayed: the cursor is written and fsync'd, then
    /// segments wholly before it are deleted (all of them once the spool is empty).
    pub fn commit(&mut self, position: SpoolPosition) -> Result<()> {
        if position.seq <= self.cursor.seq || position.seq > self.end.seq {
            return Ok(());
        }
        let mut position = position;
        // At the end of a closed segment: move on to the next one, so it can be deleted.
        while position.offset >= self.segments.get(&position.segment).copied().unwrap_or(0)
            && let Some((next, _)) = self.segments.range(position.segment + 1..).next()
        {
            position.segment = *next;
            position.offset = segment::HEADER_LEN;
        }
        cursor::write(&self.dir, position.segment, position.offset)?;
        self.cursor = position;
        let drained = self.cursor.seq == self.end.seq;
        if drained {
            self.active = None;
        }
        let done: Vec<u64> = if drained {
            self.segments.keys().copied().collect()
        } else {
            self.segments
                .range(..position.segment)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in done {
            segment::remove(&self.dir, id)?;
            self.segments.remove(&id);
        }
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(err) = self.sync() {
            tracing::error!(error = %err, "syncing the spool on close failed");
        }
    }
}
