//! Asynchronous durability waits: one thread (`ussdb-commit`, started on first use) serves every future waiting
//! for its write to become durable, so a thousand requests in flight share a handful of fsyncs and park no
//! thread each. The futures register a `Waker` with the position their write ended at; the thread waits in group
//! commit (leading an fsync or sharing one) up to the highest registered position, then wakes every future it
//! covered. Runtime-agnostic: nothing here knows an executor.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::thread::JoinHandle;

use super::Engine;
use crate::{Error, Result};

#[derive(Default)]
struct Waiting {
    waiters: Vec<(u64, Waker)>,
    stop: bool,
}

type Shared = Arc<(Mutex<Waiting>, Condvar)>;

/// The thread and its queue; stopping (or dropping) it wakes every waiter, which then sees the store's state.
pub(crate) struct Committer {
    shared: Shared,
    handle: Option<JoinHandle<()>>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Waiting> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl Committer {
    /// Starts the thread; it holds the engine only while it waits for an fsync.
    pub(crate) fn spawn(engine: &Arc<Engine>) -> Result<Committer> {
        let shared: Shared = Arc::default();
        let in_thread = Arc::clone(&shared);
        let weak = Arc::downgrade(engine);
        let handle = std::thread::Builder::new()
            .name("ussdb-commit".into())
            .spawn(move || run(&in_thread, &weak))
            .map_err(|e| Error::io("start the commit thread", "ussdb-commit", e))?;
        Ok(Committer {
            shared,
            handle: Some(handle),
        })
    }

    /// Wakes `waker` once everything up to `position` is durable (or the store can no longer promise it).
    pub(crate) fn register(&self, position: u64, waker: Waker) {
        let mut waiting = lock(&self.shared);
        if waiting.stop {
            drop(waiting);
            waker.wake();
            return;
        }
        waiting.waiters.push((position, waker));
        self.shared.1.notify_one();
    }

    /// Stops the thread and wakes every waiter.
    pub(crate) fn stop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.1.notify_all();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        for (_, waker) in std::mem::take(&mut lock(&self.shared).waiters) {
            waker.wake();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Shared, engine: &Weak<Engine>) {
    loop {
        let target = {
            let mut waiting = lock(shared);
            while waiting.waiters.is_empty() && !waiting.stop {
                waiting = shared.1.wait(waiting).unwrap_or_else(|e| e.into_inner());
            }
            if waiting.stop {
                return;
            }
            waiting.waiters.iter().map(|&(p, _)| p).max().unwrap_or(0)
        };
        let Some(strong) = engine.upgrade() else {
            return;
        };
        // Waits in group commit with the synchronous writers: whoever comes first leads the fsync.
        let result = strong.wait_position(target);
        drop(strong);
        let woken: Vec<Waker> = {
            let mut waiting = lock(shared);
            let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting.waiters)
                .into_iter()
                // On an error every waiter wakes and finds it (the store is poisoned) when it polls.
                .partition(|&(p, _)| result.is_err() || p <= target);
            waiting.waiters = rest;
            done.into_iter().map(|(_, w)| w).collect()
        };
        for waker in woken {
            waker.wake();
        }
    }
}
