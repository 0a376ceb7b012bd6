//! `Store::set_async`: many concurrent writers share a few fsyncs without a thread each, and every resolved
//! future's write survives a reopen.

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
