//! Crash during compaction: a file layer that stops working after the Nth change to the disk stands in for a
//! `kill -9` at that point (everything written stays, nothing after it happens). For every N until compaction
//! completes, the reopened store must hold exactly the model, and compact and reopen cleanly again.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ussdb::{CampaignUserMap, Durability, Options, StdVfs, Store, VFile, Vfs};

use crate::common::{copy_dir_to_memory, map, memory_tempdir, open};

type Model = HashMap<(String, String), CampaignUserMap>;

/// Passes everything to the real file system until `budget` changes have been made, then fails every change.
#[derive(Debug)]
struct StopAfter {
    budget: Arc<AtomicI64>,
    /// What the change that failed first was meant to do.
    stopped_at: Arc<std::sync::Mutex<Option<String>>>,
}

impl StopAfter {
    fn spend(&self, what: &str, path: &Path) -> io::Result<()> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Ok(());
        }
        let mut stopped = self.stopped_at.lock().expect("lock");
        if stopped.is_none() {
            *stopped = Some(format!(
                "{what} {}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("")
            ));
        }
        Err(io::Error::other("injected crash"))
    }
}

struct StopFile {
    inner: Box<dyn VFile>,
    path: PathBuf,
    vfs: Arc<StopAfter>,
}

impl fmt::Debug for StopFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StopFile({})", self.path.display())
    }
}

#[derive(Debug)]
struct Handle(Arc<StopAfter>);

impl Vfs for Handle {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        self.0.spend("create", path)?;
        let inner = StdVfs.create_new(path)?;
        Ok(Box::new(StopFile {
            inner,
            path: path.to_owned(),
            vfs: Arc::clone(&self.0),
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let inner = StdVfs.open(path)?;
        Ok(Box::new(StopFile {
            inner,
            path: path.to_owned(),
            vfs: Arc::clone(&self.0),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.spend("rename to", to)?;
        StdVfs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.spend("remove", path)?;
        StdVfs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.spend("sync dir", dir)?;
        StdVfs.sync_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdVfs.list_dir(dir)
    }
}

impl VFile for StopFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.vfs.spend("write", &self.path)?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.vfs.spend("fsync", &self.path)?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.vfs.spend("set_len", &self.path)?;
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

fn manual() -> Options {
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
        .auto_compaction(false)
}

fn check(dir: &Path, model: &Model, keys: &[(String, String)], what: &str) -> Store {
    let store =
        Store::open_with(dir, manual()).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    for (u, c) in keys {
        let want = model.get(&(u.clone(), c.clone()));
        assert_eq!(
            store.get(u, c).expect("get").as_ref(),
            want,
            "{what}: {u}/{c}"
        );
    }
    assert_eq!(store.stats().mappings, model.len() as u64, "{what}");
    store
}

/// Runs `compact` on copies of `template` with the disk stopping after 0, 1, 2, ... changes, until it completes.
fn crash_at_every_step(
    template: &Path,
    model: &Model,
    keys: &[(String, String)],
    compact: &dyn Fn(&Store),
) -> usize {
    for n in 0.. {
        let copy = copy_dir_to_memory(template);
        let vfs = Arc::new(StopAfter {
            budget: Arc::new(AtomicI64::new(i64::MAX)),
            stopped_at: Arc::new(std::sync::Mutex::new(None)),
        });
        let store = open(
            copy.path(),
            manual().vfs(Arc::new(Handle(Arc::clone(&vfs)))),
        );
        vfs.budget.store(n, Ordering::SeqCst);
        compact(&store);
        let finished = vfs.stopped_at.lock().expect("lock").is_none();
        // Whatever compaction did in memory, reads still answer from the model until the store closes.
        for (u, c) in keys.iter().take(20) {
            let want = model.get(&(u.clone(), c.clone()));
            assert_eq!(
                store.get(u, c).expect("get").as_ref(),
                want,
                "step {n}, before reopen"
            );
        }
        drop(store);
        let what = format!(
            "crash at step {n} ({:?})",
            vfs.stopped_at.lock().expect("lock")
        );
        let store = check(copy.path(), model, keys, &what);
        store
            .compact()
            .unwrap_or_else(|e| panic!("{what}: compaction after reopen: {e}"));
        drop(store);
        drop(check(
            copy.path(),
            model,
            keys,
            &format!("{what}, compacted again"),
        ));
        let left: Vec<_> = std::fs::read_dir(copy.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{what}: temporary files left: {left:?}");
        if finished {
            return n as usize;
        }
    }
    unreachable!()
}

fn build(dir: &Path, rounds: usize, delete_every: usize) -> (Model, Vec<(String, String)>) {
    build_keys(dir, 40, rounds, delete_every)
}

fn build_keys(
    dir: &Path,
    count: usize,
    rounds: usize,
    delete_every: usize,
) -> (Model, Vec<(String, String)>) {
    let store = open(dir, manual());
    let mut model = Model::new();
    let keys: Vec<(String, String)> = (0..count)
        .map(|k| (format!("user-{k}"), format!("camp-{}", k % 3)))
        .collect();
    for round in 0..rounds {
        for (k, (u, c)) in keys.iter().enumerate() {
            if (k + round).is_multiple_of(delete_every) {
                store.delete(u, c).expect("delete");
                model.remove(&(u.clone(), c.clone()));
            } else {
                let m = map(u, c, &format!("v{round}"), Some(&"g".repeat(k * 2)));
                store.set(&m).expect("set");
                model.insert((u.clone(), c.clone()), m);
            }
        }
    }
    (model, keys)
}

#[test]
fn a_crash_at_any_step_of_a_full_compaction_loses_nothing() {
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 5);
    let steps = crash_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact();
    });
    eprintln!("full compaction: {steps} steps");
    assert!(
        steps > 20,
        "compaction took only {steps} steps: the test covers too little"
    );
}

#[test]
fn a_crash_at_any_step_of_compacting_a_middle_run_keeps_tombstones() {
    // The run does not start at the oldest segment, so its tombstones must survive every step.
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 3);
    let steps = crash_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact_file_range_for_tests(3, 6);
    });
    assert!(steps > 8, "compaction took only {steps} steps");
}

/// A power cut: only what was fsynced survives. File contents count as of their last `sync_data`, directory
/// entries as of the last `sync_dir`. Everything is passed to the real file system too, so the store runs as
/// usual; after `budget` changes the next one fails, and the image of that moment is kept.
#[derive(Debug, Default)]
struct Shadow {
    files: HashMap<u64, (Vec<u8>, Vec<u8>)>,
    dir: HashMap<String, u64>,
    durable_dir: HashMap<String, u64>,
    next_inode: u64,
    budget: i64,
    image: Option<HashMap<String, Vec<u8>>>,
}

impl Shadow {
    fn spend(&mut self) -> io::Result<()> {
        if self.image.is_none() && self.budget <= 0 {
            let image = self
                .durable_dir
                .iter()
                .map(|(name, inode)| (name.clone(), self.files[inode].1.clone()))
                .collect();
            self.image = Some(image);
        }
        self.budget -= 1;
        match self.image {
            Some(_) => Err(io::Error::other("power cut")),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
struct PowerCut(Arc<std::sync::Mutex<Shadow>>);

struct CutFile {
    inner: Box<dyn VFile>,
    inode: u64,
    shadow: PowerCut,
}

impl fmt::Debug for CutFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CutFile({})", self.inode)
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("file name")
        .to_owned()
}

impl PowerCut {
    /// Starts with every file of `dir` durable.
    fn over(dir: &Path) -> PowerCut {
        let mut shadow = Shadow {
            budget: i64::MAX,
            ..Shadow::default()
        };
        for entry in std::fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            shadow.next_inode += 1;
            shadow
                .files
                .insert(shadow.next_inode, (bytes.clone(), bytes));
            shadow.dir.insert(name_of(&path), shadow.next_inode);
        }
        shadow.durable_dir = shadow.dir.clone();
        PowerCut(Arc::new(std::sync::Mutex::new(shadow)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shadow> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Vfs for PowerCut {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let mut shadow = self.lock();
        shadow.spend()?;
        let inner = StdVfs.create_new(path)?;
        shadow.next_inode += 1;
        let inode = shadow.next_inode;
        shadow.files.insert(inode, (Vec::new(), Vec::new()));
        shadow.dir.insert(name_of(path), inode);
        Ok(Box::new(CutFile {
            inner,
            inode,
            shadow: self.clone(),
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let inode = *self
            .lock()
            .dir
            .get(&name_of(path))
            .expect("opened files are known");
        Ok(Box::new(CutFile {
            inner: StdVfs.open(path)?,
            inode,
            shadow: self.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut shadow = self.lock();
        shadow.spend()?;
        StdVfs.rename(from, to)?;
        let inode = shadow
            .dir
            .remove(&name_of(from))
            .expect("renamed file is known");
        shadow.dir.insert(name_of(to), inode);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut shadow = self.lock();
        shadow.spend()?;
        StdVfs.remove_file(path)?;
        shadow.dir.remove(&name_of(path));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut shadow = self.lock();
        shadow.spend()?;
        StdVfs.sync_dir(dir)?;
        shadow.durable_dir = shadow.dir.clone();
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdVfs.list_dir(dir)
    }
}

impl VFile for CutFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut shadow = self.shadow.lock();
        shadow.spend()?;
        self.inner.write_all_at(buf, offset)?;
        let current = &mut shadow.files.get_mut(&self.inode).expect("inode").0;
        let end = offset as usize + buf.len();
        if current.len() < end {
            current.resize(end, 0);
        }
        current[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut shadow = self.shadow.lock();
        shadow.spend()?;
        self.inner.sync_data()?;
        let file = shadow.files.get_mut(&self.inode).expect("inode");
        file.1 = file.0.clone();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut shadow = self.shadow.lock();
        shadow.spend()?;
        self.inner.set_len(len)?;
        shadow
            .files
            .get_mut(&self.inode)
            .expect("inode")
            .0
            .resize(len as usize, 0);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

/// Runs `compact` with a power cut after 0, 1, 2, ... changes; the image of each cut must reopen as the model.
fn power_cut_at_every_step(
    template: &Path,
    model: &Model,
    keys: &[(String, String)],
    compact: &dyn Fn(&Store),
) -> usize {
    for n in 0.. {
        let copy = copy_dir_to_memory(template);
        let cut = PowerCut::over(copy.path());
        let store = open(copy.path(), manual().vfs(Arc::new(cut.clone())));
        cut.lock().budget = n;
        compact(&store);
        drop(store);
        let (image, finished) = {
            let mut shadow = cut.lock();
            let finished = shadow.image.is_none();
            shadow.budget = 0;
            let _ = shadow.spend();
            (shadow.image.take().expect("image"), finished)
        };
        let after = memory_tempdir();
        for (name, bytes) in &image {
            std::fs::write(after.path().join(name), bytes).expect("write image");
        }
        let what = format!("power cut after {n} changes");
        let store = check(after.path(), model, keys, &what);
        store
            .compact()
            .unwrap_or_else(|e| panic!("{what}: compaction after reopen: {e}"));
        drop(store);
        drop(check(
            after.path(),
            model,
            keys,
            &format!("{what}, compacted again"),
        ));
        if finished {
            return n as usize;
        }
    }
    unreachable!()
}

#[test]
fn a_power_cut_at_any_step_of_a_full_compaction_loses_nothing() {
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 5);
    let steps = power_cut_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact();
    });
    assert!(steps > 20, "compaction took only {steps} steps");
}

#[test]
fn a_power_cut_at_any_step_of_compacting_a_middle_run_keeps_tombstones() {
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 3);
    let steps = power_cut_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact_file_range_for_tests(3, 6);
    });
    assert!(steps > 8, "compaction took only {steps} steps");
}

#[test]
fn a_crash_or_power_cut_while_hint_files_are_written_loses_nothing() {
    // No dead bytes anywhere: the pass only writes a hint file for each sealed segment.
    let template = memory_tempdir();
    let (model, keys) = build_keys(template.path(), 200, 1, usize::MAX);
    let write_hints = |store: &Store| {
        let _ = store.compact();
    };
    let steps = crash_at_every_step(template.path(), &model, &keys, &write_hints);
    assert!(steps > 3, "writing hints took only {steps} steps");
    power_cut_at_every_step(template.path(), &model, &keys, &write_hints);
}
