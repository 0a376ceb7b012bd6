//! One adapter per store. Each keeps the engine's own idiom (one transaction per set where the
//! engine has transactions) so that a set costs what an SDK integration would pay.

pub mod fjall_store;
pub mod hashmap_store;
pub mod lmdb_store;
pub mod redb_store;
#[cfg(feature = "rocksdb")]
pub mod rocks_store;
pub mod sled_store;
pub mod ussdb_store;

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;

/// Calls `sync` every [`crate::SYNC_PERIOD`] on a thread of its own, the peers' stand-in for
/// `ussdb::Durability::Periodic`. Dropping it stops and joins the thread, so it must be declared
/// before the database handle it syncs.
pub struct Syncer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub fn start(name: &str, mut sync: impl FnMut() + Send + 'static) -> Syncer {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-sync"))
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(crate::SYNC_PERIOD)
                {
                    sync();
                }
            })
            .expect("spawn sync thread");
        Syncer {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
