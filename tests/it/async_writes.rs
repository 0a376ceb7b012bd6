//! `Store::set_async`: many concurrent writers share a few fsyncs without a thread each, and every resolved
//! future's write survives a reopen; `Durable::then` and `Durable::now` for callers without an async runtime.

use ussdb::{Durability, Error, Options, Store};

use crate::common::{map, open, tempdir};

#[test]
fn a_thousand_concurrent_async_sets_share_few_fsyncs_and_all_survive() {
    let dir = tempdir();
    let store = open(
        dir.path(),
        Options::default().durability(Durability::Immediate),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .set_async(&map(&format!("user-{i}"), "c", &format!("v{i}"), None))
                    .await
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("durable");
        }
    });
    let fsyncs = store.stats().fsyncs;
    assert!(
        (1..1000).contains(&fsyncs),
        "{fsyncs} fsyncs for 1000 writes"
    );
    drop(store);
    let store = open(dir.path(), Options::default());
    for i in 0..1000 {
        let got = store.get(&format!("user-{i}"), "c").expect("get");
        assert_eq!(got.map(|m| m.variation_name), Some(format!("v{i}")));
    }
}

#[test]
fn an_async_set_that_cannot_be_stored_resolves_to_its_error() {
    let dir = tempdir();
    let store = open(dir.path(), Options::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bad = runtime.block_on(store.set_async(&map("", "c", "v", None)));
    assert!(matches!(bad, Err(Error::InvalidKey { .. })), "{bad:?}");
    runtime
        .block_on(store.set_async(&map("u", "c", "v", None)))
        .expect("durable");
    drop(store);
    let reader = Store::open_with(dir.path(), Options::default().read_only(true)).expect("open");
    let refused = runtime.block_on(reader.set_async(&map("u", "c", "w", None)));
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
}

#[test]
fn then_calls_back_once_each_write_is_durable_from_one_thread_of_the_librarys() {
    let dir = tempdir();
    let store = open(
        dir.path(),
        Options::default().durability(Durability::Immediate),
    );
    let (sender, outcomes) = std::sync::mpsc::channel();
    for i in 0..300 {
        let sender = sender.clone();
        let watcher = store.clone();
        store
            .set_async(&map(&format!("user-{i}"), "c", "v", None))
            .then(move |result| {
                // Durable means an fsync ran after the append: at least one since the store opened.
                let fsyncs = watcher.stats().fsyncs;
                let thread = std::thread::current().name().map(str::to_owned);
                let _ = sender.send((result, fsyncs, thread));
            });
    }
    drop(sender);
    let outcomes: Vec<_> = outcomes.iter().collect();
    assert_eq!(outcomes.len(), 300);
    for (result, fsyncs, thread) in &outcomes {
        assert!(result.is_ok(), "{result:?}");
        assert!(*fsyncs >= 1);
        // Not the commit thread: a callback there would hold up every other waiter.
        assert_ne!(thread.as_deref(), Some("ussdb-commit"));
    }
    let fsyncs = store.stats().fsyncs;
    assert!((1..300).contains(&fsyncs), "{fsyncs} fsyncs for 300 writes");
    drop(store);
    let store = open(dir.path(), Options::default());
    assert_eq!(store.stats().mappings, 300);
}

#[test]
fn a_settled_write_is_known_now_and_its_callback_runs_on_the_calling_thread() {
    let dir = tempdir();
    // Periodic: a write is as durable as it gets once it is written.
    let store = open(
        dir.path(),
        Options::default().durability(Durability::Periodic(std::time::Duration::from_secs(1))),
    );
    let mut written = store.set_async(&map("u", "c", "v", None));
    assert!(matches!(written.now(), Some(Ok(()))));
    let mut refused = store.set_async(&map("", "c", "v", None));
    assert!(matches!(refused.now(), Some(Err(Error::InvalidKey { .. }))));

    let caller = std::thread::current().id();
    let (sender, outcome) = std::sync::mpsc::channel();
    store
        .set_async(&map("", "c", "v", None))
        .then(move |result| {
            let _ = sender.send((result, std::thread::current().id()));
        });
    let (result, thread) = outcome.try_recv().expect("called before then returned");
    assert!(
        matches!(result, Err(Error::InvalidKey { .. })),
        "{result:?}"
    );
    assert_eq!(thread, caller);
}
