use crate::common::{map, memory_tempdir, open};
use ussdb::{Durability, Options, Store};

#[test]
fn scratch_debug() {
    let manual = || {
        Options::default()
            .segment_size(4096)
            .durability(Durability::Never)
            .auto_compaction(false)
    };
    let dir = memory_tempdir();
    let store = open(dir.path(), manual());
    for round in 0..8 {
        for k in 0..200 {
            if (k + round) % 7 == 0 {
                store.delete(&format!("user-{k}"), "camp").unwrap();
                continue;
            }
            let goals = (k % 3 == 0).then(|| "g".repeat(k * 3));
            store
                .set(&map(
                    &format!("user-{k}"),
                    "camp",
                    &format!("v{round}"),
                    goals.as_deref(),
                ))
                .unwrap();
        }
    }
    store.compact().unwrap();
    eprintln!("after compact: {:?}", store.stats());
    let ls = || {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().len())
            })
            .collect();
        v.sort();
        v
    };
    eprintln!("{:?}", ls());
    drop(store);
    eprintln!("{:?}", ls());
    let store = Store::open_with(dir.path(), manual()).unwrap();
    eprintln!("reopen: {:?}", store.stats());
    store.compact().unwrap();
    eprintln!("compact: {:?}", store.stats());
    eprintln!("{:?}", ls());
}
