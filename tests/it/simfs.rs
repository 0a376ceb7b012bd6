//! The simulated file system every fault test runs on: a [`Vfs`] over the real directory (each call goes on to
//! [`StdVfs`], so the store runs exactly as in production) that keeps a model of what is durable and follows one
//! fault [`Plan`].
//!
//! ## What it can do to a store
//!
//! - fail the Nth write: cleanly, after half the buffer, or after half the buffer with ENOSPC;
//! - fail the Nth fsync (of a file or of the directory), and every truncation;
//! - cap the bytes all files may hold together (writes past it are cut short with ENOSPC);
//! - halt at the Nth mutating call: that call and every later one fails, as if the process or the machine had
//!   died there. Reads of open files and lengths go on, so a test can still ask the dying store what it serves.
//!   What the directory holds afterwards is the test's choice: left as it is, it is a process crash (`kill -9`:
//!   the page cache keeps everything written); rewritten with [`SimFs::restore_durable_image`], it is a power
//!   cut (only what fsyncs covered survives).
//!
//! ## The durable image
//!
//! Power loss is modelled exactly, per inode and per directory entry: each file holds what it held at its last
//! `sync_data`, and the directory holds the names it had at its last `sync_dir`. So after a cut, files created
//! or renamed since the last directory fsync vanish, removed ones come back, a rename that replaced a file is
//! undone, and every file is cut back to its synced contents. A file that existed before the layer first saw it
//! counts as durable as it was then. The LOCK file and `create_dir_all` bypass the layer, which is fine: neither
//! holds data.
//!
//! A "mutating call" is one that changes the disk or its durability: write, fsync, truncation, creation,
//! rename, removal, directory fsync. The Nth such call is the same call in every run of the same workload (with
//! background compaction off), which is what lets a test crash at every one of them in turn.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ussdb::{Durability, Options, StdVfs, VFile, Vfs};

use crate::common::{Rng, tempdir};

/// How the planned write fails.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WriteFault {
    /// The write fails and writes nothing.
    Error,
    /// Half the buffer reaches the file, then the write fails: a torn write.
    Half,
    /// Half the buffer reaches the file, then the write fails with ENOSPC, as a full disk does.
    NoSpace,
}

/// The faults to inject. Call numbers count from 1 since the file system was made (see [`Counters`]); the
/// `SimFs::*_next_*` helpers turn "the next one" into such a number.
#[derive(Default, Debug)]
pub struct Plan {
    /// Fails this write, in this way.
    pub fail_write: Option<(u64, WriteFault)>,
    /// Fails this fsync (of a file or of the directory). Like Linux after a failed fsync, the durable image does
    /// not advance: what was dirty may be gone.
    pub fail_sync: Option<u64>,
    /// Fails every truncation (the one that undoes a failed append, in particular).
    pub fail_set_len: bool,
    /// Bytes all files may hold together.
    pub capacity: Option<u64>,
    /// Halts at this mutating call: it and everything after fails.
    pub halt_at: Option<u64>,
}

/// What happened so far: which call number the plan's numbers refer to, and the figures a test prints.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub writes: u64,
    /// File and directory fsyncs together.
    pub syncs: u64,
    pub mutations: u64,
    /// Faults injected: failed writes, fsyncs and truncations, ENOSPCs, and the call a halt failed.
    pub injected: u64,
    /// The last injected fsync failure was part of creating a file (an fsync of a `.tmp` file, or of the
    /// directory): no acknowledged record depends on it, so the store may go on (see `faults.rs`).
    pub failed_sync_was_creation: bool,
    /// The call the halt stopped, such as "write 0000000007.seg.tmp", for failure messages. `None` while the
    /// file system runs.
    pub halted: Option<String>,
}

/// The model of the disk: which inode each name points to, now and as of the last directory fsync, and what
/// each inode held at its last fsync.
#[derive(Default)]
struct Disk {
    next_inode: u64,
    names: HashMap<PathBuf, u64>,
    durable_names: HashMap<PathBuf, u64>,
    synced: HashMap<u64, Vec<u8>>,
}

impl Disk {
    /// The inode behind `path`, which exists; a file the layer has not seen before is durable as it is.
    fn inode(&mut self, path: &Path) -> u64 {
        if let Some(&inode) = self.names.get(path) {
            return inode;
        }
        let inode = self.new_inode(path, std::fs::read(path).unwrap_or_default());
        self.durable_names.insert(path.to_owned(), inode);
        inode
    }

    fn new_inode(&mut self, path: &Path, synced: Vec<u8>) -> u64 {
        self.next_inode += 1;
        let inode = self.next_inode;
        self.names.insert(path.to_owned(), inode);
        self.synced.insert(inode, synced);
        inode
    }

    fn used_bytes(&self) -> u64 {
        self.names
            .keys()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Everything behind the file system's one lock: one lock, so the Nth call is well defined with many threads.
#[derive(Default)]
pub struct Sim {
    pub plan: Plan,
    pub counts: Counters,
    disk: Disk,
}

impl Sim {
    fn inject(&mut self) -> io::Error {
        self.counts.injected += 1;
        io::Error::other("injected fault")
    }

    fn check_running(&self) -> io::Result<()> {
        match &self.counts.halted {
            Some(at) => Err(io::Error::other(format!("halted at {at}"))),
            None => Ok(()),
        }
    }

    /// Counts a mutating call; fails it if the file system is halted, or halts here.
    fn mutation(&mut self, what: &str, path: &Path) -> io::Result<()> {
        self.check_running()?;
        self.counts.mutations += 1;
        if self.plan.halt_at == Some(self.counts.mutations) {
            let name = path.file_name().unwrap_or(path.as_os_str());
            self.counts.halted = Some(format!("{what} {}", name.to_string_lossy()));
            return Err(self.inject());
        }
        Ok(())
    }

    /// Counts an fsync; true if the plan fails it.
    fn sync_fails(&mut self) -> bool {
        self.counts.syncs += 1;
        self.plan.fail_sync == Some(self.counts.syncs)
    }
}

/// The simulated file system. Clones share one state, so a test keeps one to steer the store that owns another.
#[derive(Clone, Default)]
pub struct SimFs(Arc<Mutex<Sim>>);

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimFs")
    }
}

impl SimFs {
    /// The plan, the counters and the model, for a test to read or change between calls of the store.
    pub fn lock(&self) -> MutexGuard<'_, Sim> {
        // A panicking test thread must not hide the figures from the others.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counts(&self) -> Counters {
        self.lock().counts.clone()
    }

    /// This file system, for `Options::vfs`.
    pub fn vfs(&self) -> Arc<dyn Vfs> {
        Arc::new(self.clone())
    }

    /// 4 KiB segments (a rotation every few writes) and compaction only when the test asks, so the Nth call is
    /// the same call in every run. No disk reserve: the sweeps fail every call of a store's own files in turn
    /// (the reserve and a full disk have their tests in `full_disk.rs`).
    pub fn options(&self, durability: Durability) -> Options {
        Options::default()
            .segment_size(4096)
            .durability(durability)
            .auto_compaction(false)
            .disk_reserve(0)
            .vfs(self.vfs())
    }

    /// Fails the next write, in the way given.
    pub fn fail_next_write(&self, fault: WriteFault) {
        let mut sim = self.lock();
        sim.plan.fail_write = Some((sim.counts.writes + 1, fault));
    }

    /// Fails the next fsync, of a file or of the directory.
    pub fn fail_next_sync(&self) {
        let mut sim = self.lock();
        sim.plan.fail_sync = Some(sim.counts.syncs + 1);
    }

    /// Lets `calls` more mutating calls through, and halts at the one after.
    pub fn halt_after(&self, calls: u64) {
        let mut sim = self.lock();
        sim.plan.halt_at = Some(sim.counts.mutations + calls + 1);
    }

    /// Halts now, between calls: the moment a test pulls the plug itself.
    pub fn halt_now(&self) {
        let mut sim = self.lock();
        if sim.counts.halted.is_none() {
            sim.counts.halted = Some("a halt between calls".to_owned());
        }
    }

    /// Rewrites the directory to what had reached the disk: a power cut at the halt (or now, if the file system
    /// still runs). The store must be dropped first. The file system stays halted: its model no longer matches
    /// the directory, so any later call through it would be a mistake.
    pub fn restore_durable_image(&self) {
        self.restore(None);
    }

    /// Like [`SimFs::restore_durable_image`], but the page cache wrote back a random subset of the 4 KiB pages
    /// written since each file's last fsync, in no particular order: a dropped page reads as zeros (or as its
    /// synced part), and the file ends with the last page that made it.
    pub fn restore_scrambled_image(&self, rng: &mut Rng) {
        self.restore(Some(rng));
    }

    fn restore(&self, mut scramble: Option<&mut Rng>) {
        self.halt_now();
        let sim = self.lock();
        let disk = &sim.disk;
        let current: HashMap<u64, Vec<u8>> = disk
            .names
            .iter()
            .map(|(path, &inode)| (inode, std::fs::read(path).unwrap_or_default()))
            .collect();
        for path in disk.names.keys().chain(disk.durable_names.keys()) {
            let _ = std::fs::remove_file(path);
        }
        for (path, inode) in &disk.durable_names {
            let mut bytes = disk.synced[inode].clone();
            if let (Some(rng), Some(now)) = (scramble.as_deref_mut(), current.get(inode)) {
                // The store only appends between fsyncs, so the unsynced part is what lies past the synced end.
                if now.len() > bytes.len() && now.starts_with(&bytes) {
                    let synced = bytes.len();
                    let mut end = synced;
                    bytes.resize(now.len(), 0);
                    let mut page = synced - synced % 4096;
                    while page < now.len() {
                        let (from, to) = (page.max(synced), (page + 4096).min(now.len()));
                        if rng.below(2) == 0 {
                            bytes[from..to].copy_from_slice(&now[from..to]);
                            end = to;
                        }
                        page += 4096;
                    }
                    bytes.truncate(end);
                }
            }
            std::fs::write(path, &bytes).expect("restore a file's durable contents");
        }
    }
}

/// A file of [`SimFs`]. It keeps its inode, not its name: the handle follows the file through renames, as an
/// open file descriptor does.
struct SimFile {
    inner: Box<dyn VFile>,
    inode: u64,
    fs: SimFs,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimFile({})", self.inode)
    }
}

impl SimFile {
    /// The file's name now, for messages and for telling a file being created (still `.tmp`) from the others.
    fn name(&self, sim: &Sim) -> PathBuf {
        sim.disk
            .names
            .iter()
            .find(|&(_, &i)| i == self.inode)
            .map_or_else(|| PathBuf::from("(removed)"), |(p, _)| p.clone())
    }
}

impl Vfs for SimFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let mut sim = self.lock();
        sim.mutation("create", path)?;
        let inner = StdVfs.create_new(path)?;
        // Never fsynced: after a power cut the file may exist (if the directory was synced), but holds nothing.
        let inode = sim.disk.new_inode(path, Vec::new());
        Ok(Box::new(SimFile {
            inner,
            inode,
            fs: self.clone(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let mut sim = self.lock();
        sim.check_running()?;
        let inner = StdVfs.open(path)?;
        let inode = sim.disk.inode(path);
        Ok(Box::new(SimFile {
            inner,
            inode,
            fs: self.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        sim.mutation("rename to", to)?;
        if !from.exists() {
            // Fails as the real call does, without making up a file.
            return StdVfs.rename(from, to);
        }
        let inode = sim.disk.inode(from);
        if to.exists() {
            // The file being replaced may be one the layer never opened: learn its durable contents before
            // they are gone, so that a power cut before the directory fsync brings them back.
            sim.disk.inode(to);
        }
        StdVfs.rename(from, to)?;
        sim.disk.names.remove(from);
        sim.disk.names.insert(to.to_owned(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        sim.mutation("remove", path)?;
        if !path.exists() {
            return StdVfs.remove_file(path);
        }
        // Learned first, so that a power cut before the directory fsync brings the file back.
        sim.disk.inode(path);
        StdVfs.remove_file(path)?;
        sim.disk.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        sim.mutation("sync dir", dir)?;
        if sim.sync_fails() {
            sim.counts.failed_sync_was_creation = true;
            return Err(sim.inject());
        }
        // No real fsync: durability is what the model says, and the fault tests fsync thousands of times.
        sim.disk.durable_names = sim
            .disk
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.lock().check_running()?;
        StdVfs.list_dir(dir)
    }
}

impl VFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // Never fails, not even after a halt: the tests ask a dying store what it still serves.
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut sim = self.fs.lock();
        let name = self.name(&sim);
        sim.mutation("write", &name)?;
        sim.counts.writes += 1;
        let fault = match sim.plan.fail_write {
            Some((n, fault)) if n == sim.counts.writes => Some(fault),
            _ => None,
        };
        let fault = fault.or_else(|| {
            let capacity = sim.plan.capacity?;
            let len = self.inner.len().ok()?;
            let grows = (offset + buf.len() as u64).saturating_sub(len);
            (sim.disk.used_bytes() + grows > capacity).then_some(WriteFault::NoSpace)
        });
        match fault {
            None => self.inner.write_all_at(buf, offset),
            Some(WriteFault::Error) => Err(sim.inject()),
            Some(WriteFault::Half) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                Err(sim.inject())
            }
            Some(WriteFault::NoSpace) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                sim.inject();
                Err(io::Error::from_raw_os_error(28))
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut sim = self.fs.lock();
        let name = self.name(&sim);
        sim.mutation("fsync", &name)?;
        if sim.sync_fails() {
            sim.counts.failed_sync_was_creation = name.extension().is_some_and(|e| e == "tmp");
            return Err(sim.inject());
        }
        // No real fsync (see `sync_dir`): the model's copy is what survives a simulated power cut.
        let mut contents = vec![0; self.inner.len()? as usize];
        let got = self.inner.read_at(&mut contents, 0)?;
        contents.truncate(got);
        sim.disk.synced.insert(self.inode, contents);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut sim = self.fs.lock();
        let name = self.name(&sim);
        sim.mutation("set_len", &name)?;
        if sim.plan.fail_set_len {
            return Err(sim.inject());
        }
        self.inner.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

// ---- The simulator's own checks: the fault tests prove nothing if it does not do what it claims ----

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn a_power_cut_keeps_exactly_what_fsyncs_covered() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("old"), b"before").expect("a file from before the layer");
    std::fs::write(d.join("replaced"), b"first").expect("a file a rename replaces");
    let fs = SimFs::default();
    // Synced file and directory: survives whole, but not what was appended after its fsync.
    let kept = fs.create_new(&d.join("kept")).expect("create");
    kept.write_all_at(b"durable", 0).expect("write");
    kept.sync_data().expect("fsync");
    fs.sync_dir(d).expect("sync dir");
    kept.write_all_at(b" and lost", 7).expect("write");
    // Synced contents, but the directory never learned the name: gone.
    let unnamed = fs.create_new(&d.join("unnamed")).expect("create");
    unnamed.write_all_at(b"x", 0).expect("write");
    unnamed.sync_data().expect("fsync");
    // Removal and a replacing rename without a directory fsync: undone.
    fs.remove_file(&d.join("old")).expect("remove");
    let new = fs.create_new(&d.join("new.tmp")).expect("create");
    new.write_all_at(b"second", 0).expect("write");
    new.sync_data().expect("fsync");
    fs.rename(&d.join("new.tmp"), &d.join("replaced"))
        .expect("rename");
    assert_eq!(fs.counts().mutations, 13);
    fs.restore_durable_image();
    assert_eq!(read(&d.join("kept")).as_deref(), Some(&b"durable"[..]));
    assert_eq!(read(&d.join("unnamed")), None);
    assert_eq!(read(&d.join("old")).as_deref(), Some(&b"before"[..]));
    assert_eq!(read(&d.join("replaced")).as_deref(), Some(&b"first"[..]));
    assert_eq!(read(&d.join("new.tmp")), None);
    assert!(fs.open(&d.join("kept")).is_err(), "restored means halted");
}

#[test]
fn a_halt_fails_its_call_and_every_later_one_but_not_reads() {
    let dir = tempdir();
    let fs = SimFs::default();
    let file = fs.create_new(&dir.path().join("f")).expect("create");
    fs.halt_after(1);
    file.write_all_at(b"stays", 0)
        .expect("the one call let through");
    assert!(file.write_all_at(b"!", 5).is_err(), "the halting call");
    assert!(file.sync_data().is_err());
    assert!(
        fs.rename(&dir.path().join("f"), &dir.path().join("g"))
            .is_err()
    );
    assert!(fs.list_dir(dir.path()).is_err());
    let mut buf = [0; 5];
    assert_eq!(file.read_at(&mut buf, 0).expect("read"), 5);
    assert_eq!(&buf, b"stays");
    let counts = fs.counts();
    assert_eq!(counts.injected, 1);
    assert_eq!(counts.halted.as_deref(), Some("write f"));
    // Left as it is, the directory is a process crash: what was written stays without an fsync.
    assert_eq!(read(&dir.path().join("f")).as_deref(), Some(&b"stays"[..]));
}

#[test]
fn each_write_fault_and_a_failed_fsync_do_what_they_say() {
    let dir = tempdir();
    let fs = SimFs::default();
    let file = fs.create_new(&dir.path().join("f")).expect("create");
    fs.fail_next_write(WriteFault::Error);
    assert!(file.write_all_at(b"abcd", 0).is_err());
    assert_eq!(
        file.len().expect("len"),
        0,
        "a clean failure writes nothing"
    );
    fs.fail_next_write(WriteFault::Half);
    assert!(file.write_all_at(b"abcd", 0).is_err());
    assert_eq!(read(&dir.path().join("f")).as_deref(), Some(&b"ab"[..]));
    fs.fail_next_write(WriteFault::NoSpace);
    let full = file.write_all_at(b"efgh", 2).expect_err("ENOSPC");
    assert_eq!(full.kind(), io::ErrorKind::StorageFull);
    assert_eq!(read(&dir.path().join("f")).as_deref(), Some(&b"abef"[..]));
    fs.lock().plan.capacity = Some(6);
    file.write_all_at(b"gh", 4).expect("fits");
    let full = file.write_all_at(b"ij", 6).expect_err("past the capacity");
    assert_eq!(full.kind(), io::ErrorKind::StorageFull);
    fs.lock().plan.fail_set_len = true;
    assert!(file.set_len(2).is_err());
    fs.fail_next_sync();
    assert!(file.sync_data().is_err());
    assert!(!fs.counts().failed_sync_was_creation, "f is no .tmp file");
    file.sync_data().expect("only the planned fsync fails");
    assert_eq!(fs.counts().injected, 6);
}
