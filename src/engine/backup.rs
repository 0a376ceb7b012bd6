//! Online backup: a consistent copy of the store (a prefix of its log) while writes and compaction go on.
//!
//! Sealed segments and hint files are never written again, so they are hard-linked into the copy where the file
//! system allows (copied otherwise). The active segment is copied up to a length taken under the log mutex after
//! an fsync, so the copy ends at a record boundary and holds nothing that was not durable. Compaction is paused
//! while the files are linked or copied (it would unlink inputs under the copy's feet); writes are not. The copy
//! gets the manifest of that instant and the seed, each written durably, and the directory is fsynced last.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Engine;
use crate::dir;
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::seed::SEED_FILE;
use crate::{Error, Result};

/// What a backup copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// Segment files in the copy.
    pub segments: u64,
    /// Files hard-linked (no bytes copied).
    pub linked: u64,
    /// Files copied byte by byte.
    pub copied: u64,
    /// Bytes of segment files in the copy.
    pub bytes: u64,
}

impl Engine {
    /// Copies the store into `dest`, which must not exist or be an empty directory.
    pub(crate) fn backup(&self, dest: &Path) -> Result<BackupReport> {
        let occupied = match fs::read_dir(dest) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("read backup directory", dest, e)),
        };
        if occupied {
            return Err(Error::InvalidOption {
                option: "backup destination",
                reason: format!(
                    "{} is not empty; a backup goes into a new or empty directory",
                    dest.display()
                ),
            });
        }
        dir::create(dest)?;
        // Compaction would unlink files while they are linked or copied: it waits.
        let _pass = self.compaction.lock_pass();
        self.check_poison()?;
        // Everything acknowledged so far is made durable, then the instant is taken: the manifest and the active
        // segment's length, with no append in flight.
        self.sync()?;
        let (manifest, active, active_len) = {
            let log = self.lock_log();
            let manifest = self.lock_manifest().clone();
            (
                manifest,
                std::sync::Arc::clone(&log.active),
                log.active.len(),
            )
        };
        let mut report = BackupReport::default();
        for entry in &manifest.sealed {
            let name = dir::segment_file_name(entry.file_id);
            link_or_copy(&self.dir.join(&name), &dest.join(&name), &mut report)?;
            report.segments += 1;
            report.bytes += entry.len;
            if entry.hint != 0 {
                let hint = dir::hint_file_name(entry.file_id);
                link_or_copy(&self.dir.join(&hint), &dest.join(&hint), &mut report)?;
            }
        }
        // The active segment keeps growing: copy the prefix that was durable at the instant.
        let name = dir::segment_file_name(active.file_id());
        copy_prefix(active.file(), active.path(), &dest.join(&name), active_len)?;
        report.segments += 1;
        report.copied += 1;
        report.bytes += active_len;
        let seed = fs::read(self.dir.join(SEED_FILE))
            .map_err(|e| Error::io("read seed file", self.dir.join(SEED_FILE), e))?;
        dir::write_durably(&crate::StdVfs, dest, SEED_FILE, &seed, "write seed file")?;
        let mut copy = Manifest {
            retired: Vec::new(),
            ..manifest
        };
        copy.write(&crate::StdVfs, dest).map_err(|(e, _)| e)?;
        dir::sync_dir(&crate::StdVfs, dest)?;
        log::info!(
            "backup of {} into {}: {} segments, {} bytes ({} files linked, {} copied); {MANIFEST_FILE} written last",
            self.dir.display(),
            dest.display(),
            report.segments,
            report.bytes,
            report.linked,
            report.copied
        );
        Ok(report)
    }
}

/// Hard-links `from` to `to` (an immutable file), or copies it when the file system cannot link (another
/// device); the copy is fsynced.
fn link_or_copy(from: &Path, to: &Path, report: &mut BackupReport) -> Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => {
            report.linked += 1;
            Ok(())
        }
        Err(_) => {
            fs::copy(from, to).map_err(|e| Error::io("copy into backup", to, e))?;
            fs::File::open(to)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("fsync backup file", to, e))?;
            report.copied += 1;
            Ok(())
        }
    }
}

/// Copies the first `len` bytes of the active segment to `to` and fsyncs it.
fn copy_prefix(from: &dyn crate::VFile, from_path: &Path, to: &Path, len: u64) -> Result<()> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::io("create backup file", to, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let got = from
            .read_at(chunk, done)
            .map_err(|e| Error::io("read segment for backup", from_path, e))?;
        if got == 0 {
            return Err(Error::corrupted(
                from_path,
                done,
                "the segment is shorter than its durable length",
            ));
        }
        out.write_all(chunk.get(..got).unwrap_or_default())
            .map_err(|e| Error::io("write backup file", to, e))?;
        done += got as u64;
    }
    out.sync_all()
        .map_err(|e| Error::io("fsync backup file", to, e))
}
