//! The thread that runs [`Durable::then`](crate::Durable::then) callbacks, for callers with no async runtime of
//! their own (the Python and Node bindings).
//!
//! A waiting write is a future and a callback. The commit thread (`engine/waiters.rs`) wakes the future; the wake
//! only queues it for this thread (`ussdb-callbacks`, one per process, started on first use and again in a forked
//! child), which polls it and, once it is ready, runs the callback. So the commit thread never runs a caller's
//! code (a binding's callback may wait for an interpreter lock), and no thread waits per write.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::{Error, Result};

/// What to call with a write's outcome.
pub(crate) type Done = Box<dyn FnOnce(Result<()>) + Send>;
/// A write's durability, as a future.
pub(crate) type Waiting = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// One waiting write: `None` once its callback ran.
struct Pending {
    state: Mutex<Option<(Waiting, Done)>>,
    /// The queue of the notifier of the process that made it.
    notify: Sender<Arc<Pending>>,
}

impl Wake for Pending {
    fn wake(self: Arc<Self>) {
        // The notifier never stops while its process lives; a failed send is a forked child's wake of a write
        // made in its parent, which nobody in the child waits for.
        let _ = self.notify.clone().send(self);
    }
}

impl Pending {
    /// Polls the write; once it is ready, drops the future and runs the callback, outside the lock (the future
    /// may hold the last handle of a store, whose drop closes it).
    fn poll(self: &Arc<Self>) {
        let ready = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let Some((waiting, _)) = state.as_mut() else {
                return;
            };
            let waker = Waker::from(Arc::clone(self));
            match waiting.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(result) => state.take().map(|parts| (parts, result)),
                Poll::Pending => None,
            }
        };
        if let Some(((waiting, done), result)) = ready {
            drop(waiting);
            done(result);
        }
    }
}

/// The notifier's queue, with the id of the process that started it.
static NOTIFIER: Mutex<Option<(u32, Sender<Arc<Pending>>)>> = Mutex::new(None);

fn notifier() -> std::io::Result<Sender<Arc<Pending>>> {
    let pid = std::process::id();
    let mut slot = NOTIFIER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((started_in, sender)) = slot.as_ref()
        && *started_in == pid
    {
        return Ok(sender.clone());
    }
    let (sender, queue) = std::sync::mpsc::channel::<Arc<Pending>>();
    std::thread::Builder::new()
        .name("ussdb-callbacks".into())
        .spawn(move || {
            for pending in queue {
                // A callback that panics loses its own outcome, not the thread that serves every other write.
                let _ = catch_unwind(AssertUnwindSafe(|| pending.poll()));
            }
        })?;
    *slot = Some((pid, sender.clone()));
    Ok(sender)
}

/// Runs `done` with `waiting`'s outcome: at once on this thread if it is ready now, else on the notifier thread
/// once it is.
pub(crate) fn when_ready(waiting: Waiting, done: Done) {
    let notify = match notifier() {
        Ok(notify) => notify,
        Err(e) => {
            return done(Err(Error::io(
                "start the callback thread",
                "ussdb-callbacks",
                e,
            )));
        }
    };
    let pending = Arc::new(Pending {
        state: Mutex::new(Some((waiting, done))),
        notify,
    });
    pending.poll();
}
