//! The store's locks: one writer per directory, whatever happens to the `LOCK` file; readers that share.

use ussdb::{Error, Options, Store};

use crate::common::{map, open, small_segments, tempdir};

fn listing(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_writer_is_refused_even_after_the_lock_file_is_removed() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    store.set(&map("u", "c", "v", None)).expect("set");
    std::fs::remove_file(dir.path().join("LOCK")).expect("rm LOCK");
    let before = listing(dir.path());
    match Store::open_with(dir.path(), small_segments()) {
        Err(Error::Locked { .. }) => {}
        other => panic!("a second writer opened the store: {other:?}"),
    }
    // The refused open touched nothing: the running writer's files are as they were.
    assert_eq!(listing(dir.path()), before);
    store
        .set(&map("u", "c2", "v2", None))
        .expect("the first writer goes on");
}

#[test]
fn a_reader_opens_beside_readers_but_never_beside_a_writer() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    for i in 0..200 {
        store
            .set(&map(&format!("u{i}"), "c", "v", None))
            .expect("set");
    }
    let read_only = || small_segments().read_only(true);
    assert!(matches!(
        Store::open_with(dir.path(), read_only()),
        Err(Error::Locked { .. })
    ));
    drop(store);
    let a = open(dir.path(), read_only());
    let b = open(dir.path(), read_only());
    assert!(matches!(
        Store::open_with(dir.path(), small_segments()),
        Err(Error::Locked { .. })
    ));
    assert_eq!(
        a.get("u7", "c")
            .expect("get")
            .map(|m| m.variation_name)
            .as_deref(),
        Some("v")
    );
    assert_eq!(b.stats().mappings, 200);
    assert!(
        ussdb::verify_dir(dir.path())
            .expect("verify beside readers")
            .is_clean()
    );
}

#[test]
fn a_read_only_store_writes_nothing_and_refuses_writes() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    for i in 0..100 {
        store
            .set(&map(&format!("u{i}"), "c", "v", None))
            .expect("set");
    }
    drop(store);
    // A torn last write and no LOCK file: a reader leaves both as they are.
    let newest = {
        let bytes = std::fs::read(dir.path().join("MANIFEST")).expect("manifest");
        let id = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        dir.path().join(format!("{id:010}.seg"))
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .expect("open");
    std::io::Write::write_all(&mut f, &[1, 2, 3, 4, 5, 6, 7]).expect("tear");
    drop(f);
    std::fs::remove_file(dir.path().join("LOCK")).expect("rm LOCK");
    let before = listing(dir.path());

    let store = open(dir.path(), Options::default().read_only(true));
    assert_eq!(store.stats().mappings, 100);
    assert_eq!(
        store
            .get("u3", "c")
            .expect("get")
            .map(|m| m.variation_name)
            .as_deref(),
        Some("v")
    );
    for result in [
        store.set(&map("u", "c", "v", None)),
        store.delete("u3", "c").map(drop),
        store.forget_user("u3").map(drop),
        store.compact(),
    ] {
        assert!(matches!(result, Err(Error::ReadOnly { .. })), "{result:?}");
    }
    store.sync().expect("sync has nothing to do");
    drop(store);
    assert_eq!(
        listing(dir.path()),
        before,
        "a reader changed the directory"
    );

    // The next writer cuts the torn write as usual.
    let store = open(dir.path(), small_segments());
    assert_eq!(store.stats().mappings, 100);
}

#[test]
fn a_read_only_open_of_a_missing_or_empty_directory_creates_nothing() {
    let dir = tempdir();
    let missing = dir.path().join("nope");
    assert!(Store::open_with(&missing, Options::default().read_only(true)).is_err());
    assert!(!missing.exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert!(Store::open_with(&empty, Options::default().read_only(true)).is_err());
    assert_eq!(std::fs::read_dir(&empty).expect("list").count(), 0);
}
