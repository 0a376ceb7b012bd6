//! Recovery: torn tails are cut off, damage elsewhere is reported with file and offset, failed fsyncs poison.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ussdb::{Durability, Error, Options, StdVfs, Store, VFile, Vfs};

use crate::common::{copy_dir, map, open, segment_files, small_segments, tempdir};

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let dir = tempdir();
    let options = Options::default().durability(Durability::Never);
    // End offsets of the c{i} record and of the i-th overwrite of "shared".
    let (mut ends_c, mut ends_shared) = (Vec::new(), Vec::new());
    {
        let store = open(dir.path(), options.clone());
        let len = || {
            std::fs::metadata(&segment_files(dir.path())[0])
                .expect("len")
                .len()
        };
        for i in 0..4 {
            let goals = (i % 2 == 1).then(|| "g".repeat(i * 7));
            store
                .set(&map(
                    "user",
                    &format!("c{i}"),
                    &format!("v{i}"),
                    goals.as_deref(),
                ))
                .expect("set");
            ends_c.push(len());
            store
                .set(&map("user", "shared", &format!("v{i}"), None))
                .expect("overwrite");
            ends_shared.push(len());
        }
    }
    let seg_name = segment_files(dir.path())[0]
        .file_name()
        .expect("name")
        .to_owned();
    let full = *ends_shared.last().expect("writes");
    for cut in 20..full {
        let copy = copy_dir(dir.path());
        let seg = copy.path().join(&seg_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        file.set_len(cut).expect("truncate");
        drop(file);
        let store = Store::open_with(copy.path(), options.clone())
            .unwrap_or_else(|e| panic!("open after a cut at {cut} failed: {e}"));
        for (i, &end) in ends_c.iter().enumerate() {
            let got = store.get("user", &format!("c{i}")).expect("get");
            assert_eq!(got.is_some(), end <= cut, "cut at {cut}: c{i}");
        }
        let shared = store
            .get("user", "shared")
            .expect("get")
            .map(|m| m.variation_name);
        let complete = ends_shared.iter().filter(|&&end| end <= cut).count();
        let want = complete.checked_sub(1).map(|i| format!("v{i}"));
        assert_eq!(
            shared, want,
            "cut at {cut}: the newest complete overwrite wins"
        );
        // The cut really happened: the store accepts writes and keeps them.
        store
            .set(&map("after", "cut", "v", None))
            .expect("write after recovery");
        drop(store);
        let store = Store::open_with(copy.path(), options.clone()).expect("reopen");
        assert!(
            store.get("after", "cut").expect("get").is_some(),
            "cut at {cut}"
        );
    }
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let dir = tempdir();
    drop({
        let store = open(dir.path(), small_segments());
        store.set(&map("u", "c", "v", None)).expect("set");
        store
    });
    let seg = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let len = bytes.len();
    bytes.extend_from_slice(&[0u8; 100]);
    std::fs::write(&seg, &bytes).expect("write");
    let store = open(dir.path(), small_segments());
    assert!(store.get("u", "c").expect("get").is_some());
    drop(store);
    assert_eq!(
        std::fs::metadata(&seg).expect("len").len(),
        len as u64,
        "zeros cut off"
    );
}

#[test]
fn a_flipped_byte_in_an_old_segment_names_file_and_offset() {
    let dir = tempdir();
    {
        // Without hint files, so open scans every segment (with hints, the damage is found on read:
        // see hints::damage_under_a_hint_is_reported_on_read).
        let store = open(dir.path(), small_segments().auto_compaction(false));
        for i in 0..300 {
            store
                .set(&map(
                    &format!("user-{i}"),
                    "campaign",
                    "variation",
                    Some("goal"),
                ))
                .expect("set");
        }
    }
    let files = segment_files(dir.path());
    assert!(
        files.len() >= 3,
        "the test needs several segments, got {}",
        files.len()
    );
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).expect("write");
    match Store::open_with(dir.path(), small_segments()) {
        Err(Error::Corrupted { path, offset, .. }) => {
            assert_eq!(&path, victim);
            assert!(
                offset <= at as u64 && at as u64 - offset < 100,
                "offset {offset} vs flipped byte {at}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_newest_segment_is_not_taken_for_a_torn_write() {
    let dir = tempdir();
    {
        let store = open(dir.path(), Options::default().durability(Durability::Never));
        for i in 0..50 {
            store
                .set(&map(&format!("user-{i}"), "campaign", "variation", None))
                .expect("set");
        }
    }
    let seg = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let err = Store::open(dir.path()).expect_err("damage must not be cut off silently");
    assert!(
        matches!(&err, Error::Corrupted { path, .. } if *path == seg),
        "{err}"
    );
    assert!(err.is_corruption());
}

#[test]
fn leftover_temporary_files_are_removed_on_open() {
    let dir = tempdir();
    drop(open(dir.path(), small_segments()));
    let tmp = dir.path().join("0000000009.seg.tmp");
    std::fs::write(&tmp, b"half a header").expect("write");
    drop(open(dir.path(), small_segments()));
    assert!(!tmp.exists());
}

/// Passes everything to the real file system, but fails fsync while `fail` is set.
#[derive(Debug, Default)]
struct FailingFsync {
    fail: Arc<AtomicBool>,
}

struct FailingFile {
    inner: Box<dyn VFile>,
    fail: Arc<AtomicBool>,
}

impl fmt::Debug for FailingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FailingFile")
    }
}

impl Vfs for FailingFsync {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        Ok(Box::new(FailingFile {
            inner: StdVfs.create_new(path)?,
            fail: Arc::clone(&self.fail),
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        Ok(Box::new(FailingFile {
            inner: StdVfs.open(path)?,
            fail: Arc::clone(&self.fail),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdVfs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdVfs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdVfs.sync_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdVfs.list_dir(dir)
    }
}

impl VFile for FailingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

#[test]
fn after_a_failed_fsync_the_store_refuses_writes_until_reopened() {
    let dir = tempdir();
    let vfs = Arc::new(FailingFsync::default());
    let fail = Arc::clone(&vfs.fail);
    let options = Options::default()
        .durability(Durability::Immediate)
        .vfs(vfs);
    let store = open(dir.path(), options.clone());
    store.set(&map("u", "before", "v", None)).expect("set");
    fail.store(true, Ordering::SeqCst);
    let err = store
        .set(&map("u", "during", "v", None))
        .expect_err("fsync fails");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    fail.store(false, Ordering::SeqCst);
    let err = store
        .set(&map("u", "after", "v", None))
        .expect_err("poisoned");
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(matches!(
        store.delete("u", "before"),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
    assert!(
        store
            .get("u", "before")
            .expect("reads still work")
            .is_some()
    );
    drop(store);
    let store = open(dir.path(), options);
    assert!(store.get("u", "before").expect("get").is_some());
    store
        .set(&map("u", "after", "v", None))
        .expect("a reopened store takes writes again");
}
