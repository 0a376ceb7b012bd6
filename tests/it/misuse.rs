//! Bad input and misuse get a clear error, never a panic.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use ussdb::{CampaignUserMap, Durability, Error, MAX_ID_LEN, MAX_VALUE_LEN, Options, Store};

use crate::common::{crc32, map, open, segment_files, small_segments, tempdir};

#[test]
fn empty_and_oversized_ids_are_refused() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let long = "x".repeat(MAX_ID_LEN + 1);
    for (u, c, field) in [
        ("", "c", "user_id"),
        ("u", "", "campaign_key"),
        (long.as_str(), "c", "user_id"),
    ] {
        match store.set(&map(u, c, "v", None)) {
            Err(Error::InvalidKey { field: f, .. }) => assert_eq!(f, field),
            other => panic!("set({u:.8}, {c}) gave {other:?}"),
        }
        assert!(matches!(store.get(u, c), Err(Error::InvalidKey { .. })));
        assert!(matches!(store.delete(u, c), Err(Error::InvalidKey { .. })));
    }
    assert!(matches!(
        store.forget_user(""),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        store.campaigns_of(&long),
        Err(Error::InvalidKey { .. })
    ));
    let max = "y".repeat(MAX_ID_LEN);
    store
        .set(&map(&max, &max, "v", None))
        .expect("ids at the limit are fine");
    assert!(store.get(&max, &max).expect("get").is_some());
}

#[test]
fn an_empty_variation_name_is_refused_by_set_and_by_batches() {
    // Regression: an empty variation name was stored, though no SDK ever writes one.
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let empty = map("u", "c", "", None);
    match store.set(&empty) {
        Err(Error::InvalidKey { field, .. }) => assert_eq!(field, "variation_name"),
        other => panic!("set with an empty variation gave {other:?}"),
    }
    let mut batch = ussdb::Batch::new();
    assert!(matches!(
        batch.push(&empty, None),
        Err(Error::InvalidKey { .. })
    ));
    assert!(batch.is_empty());
    assert_eq!(store.get("u", "c").expect("get"), None);
}

#[test]
fn oversized_values_are_refused_and_nothing_is_written() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let huge = "g".repeat(MAX_VALUE_LEN);
    let err = store
        .set(&map("u", "c", "v", Some(&huge)))
        .expect_err("too large");
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("\"u\""),
        "the error names the key: {err}"
    );
    assert_eq!(store.get("u", "c").expect("get"), None);
    let big = "g".repeat(MAX_VALUE_LEN - 64);
    store
        .set(&map("u", "c", "v", Some(&big)))
        .expect("just under the limit is fine, even above the segment size");
    drop(store);
    let store = open(dir.path(), small_segments());
    assert_eq!(
        store
            .get("u", "c")
            .expect("get")
            .and_then(|m| m.goal_identifier)
            .map(|g| g.len()),
        Some(big.len())
    );
}

#[test]
fn a_file_is_not_a_store_directory() {
    let dir = tempdir();
    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").expect("write");
    assert!(matches!(
        Store::open(&file),
        Err(Error::NotADirectory { .. })
    ));
    let err = Store::open(file.join("below")).expect_err("below a file");
    assert!(err.to_string().contains("below"), "{err}");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let err = Store::open(dir.path()).expect_err("second open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(store);
    Store::open(dir.path()).expect("open after the first handle is gone");
}

#[test]
fn reopening_while_another_thread_spawns_processes_is_not_refused_as_locked() {
    // Regression: `open` failed with `Locked` when any thread was starting a child process as the previous
    // handle closed, because the child holds the lock file's description from fork until exec.
    let dir = tempdir();
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicU32::new(0));
    let spawner = {
        let (stop, spawned) = (Arc::clone(&stop), Arc::clone(&spawned));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && spawned.load(Ordering::Relaxed) < 10_000 {
                std::process::Command::new("true")
                    .status()
                    .expect("run `true`");
                spawned.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // At least 500 reopens, and on until 20 processes were started meanwhile (bounded either way).
    let mut reopens = 0u32;
    let mut result = Ok(());
    while result.is_ok()
        && reopens < 200_000
        && (reopens < 500 || spawned.load(Ordering::Relaxed) < 20)
    {
        result = Store::open(dir.path()).map(drop);
        reopens += 1;
    }
    stop.store(true, Ordering::Relaxed);
    spawner.join().expect("spawner thread");
    result.unwrap_or_else(|e| panic!("reopen {reopens} failed: {e}"));
    assert!(
        spawned.load(Ordering::Relaxed) >= 20,
        "too few processes were started while the store was reopened"
    );
}

#[test]
fn data_files_are_private_to_the_owner() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    store.set(&map("u", "c", "v", None)).expect("set");
    for file in segment_files(dir.path())
        .into_iter()
        .chain([dir.path().join("LOCK")])
    {
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[test]
fn bad_magic_and_future_versions_are_named() {
    let dir = tempdir();
    drop(open(dir.path(), small_segments()));
    let seg = segment_files(dir.path()).remove(0);
    let good = std::fs::read(&seg).expect("read");

    let mut bad = good.clone();
    bad[0] = b'X';
    std::fs::write(&seg, &bad).expect("write");
    assert!(matches!(Store::open(dir.path()), Err(Error::BadMagic { path }) if path == seg));

    let mut future = good.clone();
    future[8] = 9;
    let crc = crc32(&future[..16]);
    future[16..20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &future).expect("write");
    match Store::open(dir.path()) {
        Err(Error::UnsupportedVersion {
            found: 9,
            supported: 3,
            path,
        }) => assert_eq!(path, seg),
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempdir();
    for options in [
        Options::default().segment_size(10),
        Options::default().segment_size(u64::MAX),
        Options::default().durability(Durability::Periodic(std::time::Duration::ZERO)),
    ] {
        assert!(matches!(
            Store::open_with(dir.path(), options),
            Err(Error::InvalidOption { .. })
        ));
    }
}

#[test]
fn errors_are_std_errors_with_context() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<Error>();
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let err = store
        .set(&CampaignUserMap::new("", "c", "v"))
        .expect_err("empty id");
    assert!(err.to_string().contains("user_id"), "{err}");
}
