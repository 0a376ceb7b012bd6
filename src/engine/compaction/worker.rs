//! The background compaction thread (`ussdb-compact`): woken when a segment is sealed and every second, it runs
//! a pass over the threshold; after failures it backs off, so a full disk or a damaged segment is not hammered.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::Engine;
use crate::{Error, Result};

/// How often the background compaction thread looks for work when no segment was sealed meanwhile.
const POLL: Duration = Duration::from_secs(1);
/// The longest pause of the background compaction thread after failed passes.
const MAX_BACKOFF: Duration = Duration::from_secs(64);

/// The running thread; [`CompactionWorker::stop`] (or drop) stops and joins it.
pub(crate) struct CompactionWorker {
    engine: Weak<Engine>,
    handle: Option<JoinHandle<()>>,
}

impl CompactionWorker {
    /// Starts the thread. It holds the engine only while it runs a pass.
    pub(crate) fn spawn(engine: &Arc<Engine>, threshold: f64) -> Result<CompactionWorker> {
        let weak = Arc::downgrade(engine);
        let in_thread = Weak::clone(&weak);
        let handle = std::thread::Builder::new()
            .name("ussdb-compact".into())
            .spawn(move || run(&in_thread, threshold))
            .map_err(|e| Error::io("start the compaction thread", "ussdb-compact", e))?;
        Ok(CompactionWorker {
            engine: weak,
            handle: Some(handle),
        })
    }

    /// Stops the thread (a pass in flight stops early) and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            engine.compaction.stop();
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for CompactionWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(engine: &Weak<Engine>, threshold: f64) {
    let mut backoff = POLL;
    loop {
        let Some(strong) = engine.upgrade() else {
            break;
        };
        if !strong.compaction.wait(POLL) {
            break;
        }
        match strong.compact(threshold, false) {
            Ok(()) => backoff = POLL,
            Err(_) if strong.compaction.closing.load(Ordering::Acquire) => break,
            // The store refuses writes until reopened; so does compaction.
            Err(_) if strong.poisoned() => break,
            Err(e) => {
                log::error!(
                    "background compaction in {} failed (next try in {backoff:?}): {e}",
                    strong.dir.display()
                );
                if !strong.compaction.sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
