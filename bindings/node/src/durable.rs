//! `setAsync`'s wait for durability, without a thread per write.
//!
//! The write is appended on the calling thread (a `write(2)`, as a synchronous `set` under "periodic" makes) and
//! its Promise settles when the engine's [`ussdb::Durable`] future is ready: under "immediate", once the group
//! commit covering it has fsynced; under "periodic" and "never", at once. The engine's commit thread wakes the
//! future; one thread of the addon's (`ussdb-notify`, started on first use) polls it again and settles the
//! Promise through its threadsafe function. A thousand writes in flight are a thousand small objects, share the
//! store's fsyncs, and hold none of the libuv pool's four threads (where each would wait out an fsync).

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use napi::JsDeferred;
use napi::bindgen_prelude::*;

use crate::{Failure, Outcome};

/// What settles a write's Promise, on the JS thread.
pub(crate) type Settle = Box<dyn FnOnce(Env) -> Result<()> + Send>;

/// The Promise side of a write.
pub(crate) type Deferred = JsDeferred<(), Settle>;

/// One write waiting to be durable.
struct Pending {
    /// `None` once it resolved.
    durable: Mutex<Option<ussdb::Durable>>,
    /// Taken when the Promise is settled.
    deferred: Mutex<Option<Deferred>>,
    /// The store's path, for the message of an error.
    path: Arc<str>,
    /// Where a wake sends it.
    notify: Sender<Arc<Pending>>,
}

impl Wake for Pending {
    fn wake(self: Arc<Self>) {
        // The notifier never stops while the process lives, so the send cannot fail but at exit.
        let _ = self.notify.clone().send(self);
    }
}

impl Pending {
    /// Polls the write once; its result when it is ready (only the first time).
    fn poll(self: &Arc<Self>) -> Option<ussdb::Result<()>> {
        let mut slot = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        let durable = slot.as_mut()?;
        let waker = Waker::from(Arc::clone(self));
        match Pin::new(durable).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => {
                *slot = None;
                Some(result)
            }
            Poll::Pending => None,
        }
    }

    fn settle(&self, result: ussdb::Result<()>) {
        let taken = self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(deferred) = taken {
            settle(
                deferred,
                result.map_err(Failure::Engine),
                Arc::clone(&self.path),
            );
        }
    }
}

/// Resolves `deferred`, or rejects it with the JS `Error` (and its `code`) of `result`'s failure. Any thread.
pub(crate) fn settle(deferred: Deferred, result: Outcome<()>, path: Arc<str>) {
    match result {
        Ok(()) => deferred.resolve(Box::new(|_| Ok(()))),
        // The error object can only be made on the JS thread: the resolver makes it there and rejects with it.
        Err(failure) => deferred.resolve(Box::new(move |env| Err(failure.into_napi(&env, &path)))),
    }
}

/// The sender into the notifier thread, started on first use.
static NOTIFIER: Mutex<Option<Sender<Arc<Pending>>>> = Mutex::new(None);

fn notifier() -> std::io::Result<Sender<Arc<Pending>>> {
    let mut slot = NOTIFIER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sender) = slot.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, queue) = std::sync::mpsc::channel::<Arc<Pending>>();
    std::thread::Builder::new()
        .name("ussdb-notify".into())
        .spawn(move || {
            for pending in queue {
                if let Some(result) = pending.poll() {
                    pending.settle(result);
                }
            }
        })?;
    *slot = Some(sender.clone());
    Ok(sender)
}

/// Settles `deferred` when `durable` (a write already appended to the store at `path`) is durable.
pub(crate) fn settle_when_durable(durable: ussdb::Durable, deferred: Deferred, path: Arc<str>) {
    let notify = match notifier() {
        Ok(notify) => notify,
        Err(e) => {
            return deferred.reject(Error::from_reason(format!(
                "ussdb: could not start the thread that completes setAsync for {path}: {e}"
            )));
        }
    };
    let pending = Arc::new(Pending {
        durable: Mutex::new(Some(durable)),
        deferred: Mutex::new(Some(deferred)),
        path,
        notify,
    });
    // Ready at once under "periodic" and "never" (and for a write that failed); else the commit thread wakes it.
    if let Some(result) = pending.poll() {
        pending.settle(result);
    }
}
