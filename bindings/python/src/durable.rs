//! `Store.set_async`: a write whose asyncio future completes when the group commit covering it is durable.
//!
//! The engine's [`ussdb::Durable`] future is woken by the engine's commit thread, which must never wait for the
//! GIL (it serves every waiter of the store). So each woken write is handed to one Python thread of this module's
//! own (`ussdb-notify`, a daemon thread started on first use in each process): it polls the write again and, once
//! it is durable or has failed, schedules the result on the write's event loop with `call_soon_threadsafe`. A
//! thousand writes in flight are a thousand small objects and no thread each; they share the store's fsyncs.
//!
//! The notifier is a Python thread, not a Rust one, so that interpreter shutdown treats it as it treats every
//! daemon thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{FORK_GENERATION, engine_error};

/// One write waiting to be durable.
struct Pending {
    /// `None` once it resolved.
    durable: Mutex<Option<ussdb::Durable>>,
    /// The event loop and the asyncio future to complete; taken (under the GIL) when the result is handed over.
    target: Mutex<Option<(Py<PyAny>, Py<PyAny>)>>,
    /// Where a wake sends it: the notifier of the process that made it.
    notify: Sender<Arc<Pending>>,
}

impl Wake for Pending {
    fn wake(self: Arc<Self>) {
        // A failed send means the notifier is gone (a forked child's copy of a parent's write): nobody is left
        // to await it.
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

    /// Hands the result to the event loop that awaits it. Under the GIL, on any thread.
    fn resolve(&self, py: Python<'_>, result: ussdb::Result<()>) {
        let Some((event_loop, future)) = self
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let error = match result {
            Ok(()) => py.None(),
            Err(e) => engine_error(e).into_value(py).into_any(),
        };
        let scheduled = wrap_pyfunction!(_complete, py).and_then(|complete| {
            event_loop.call_method1(py, "call_soon_threadsafe", (complete, future, error))
        });
        // An error here means the loop is closed: nothing can await the future any more.
        if let Err(e) = scheduled {
            log_unraisable(py, e);
        }
    }
}

/// Completes `future` on its own loop, unless it was cancelled meanwhile.
#[pyfunction]
fn _complete(future: &Bound<'_, PyAny>, error: &Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if error.is_none() {
        future.call_method1("set_result", (error.py().None(),))?;
    } else {
        future.call_method1("set_exception", (error,))?;
    }
    Ok(())
}

/// Reports an error that has no caller to go to, as Python reports errors in callbacks.
fn log_unraisable(py: Python<'_>, e: PyErr) {
    if e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
        // `call_soon_threadsafe` on a closed loop: the program has moved on; not worth a report.
        return;
    }
    e.write_unraisable(py, None);
}

/// The receiving end of the notifier's queue, handed to its thread as a Python object.
#[pyclass(frozen)]
struct Inbox(Mutex<Option<Receiver<Arc<Pending>>>>);

/// The notifier thread's body: wait (without the GIL) for woken writes, poll them, hand over the ready ones.
#[pyfunction]
fn _notify(py: Python<'_>, inbox: &Bound<'_, Inbox>) {
    let Some(queue) = inbox
        .get()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return;
    };
    // A `Receiver` may move between threads but not be shared; the lock makes the borrow below shareable.
    let queue = Mutex::new(queue);
    loop {
        let ready = py.detach(|| {
            let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            // Every sender gone: a notifier that lost the race to start, or a replaced one in a forked child.
            let first = queue.recv().ok()?;
            let ready: Vec<_> = std::iter::once(first)
                .chain(queue.try_iter())
                .filter_map(|pending| pending.poll().map(|result| (pending, result)))
                .collect();
            Some(ready)
        });
        let Some(ready) = ready else { return };
        for (pending, result) in ready {
            pending.resolve(py, result);
        }
    }
}

/// The notifier of this process (started on first use, and again in a forked child, where the parent's thread
/// does not exist), as the sender a write is woken into.
static NOTIFIER: Mutex<Option<(u64, Sender<Arc<Pending>>)>> = Mutex::new(None);

fn notifier(py: Python<'_>) -> PyResult<Sender<Arc<Pending>>> {
    let generation = FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed);
    let current = || {
        let slot = NOTIFIER.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some((made_in, sender)) if *made_in == generation => Some(sender.clone()),
            _ => None,
        }
    };
    if let Some(sender) = current() {
        return Ok(sender);
    }
    // Started with no lock held: `Thread.start` lets go of the GIL until the thread runs, and another thread that
    // took the GIL meanwhile may be waiting here too.
    let (sender, receiver) = std::sync::mpsc::channel();
    let inbox = Py::new(py, Inbox(Mutex::new(Some(receiver))))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("target", wrap_pyfunction!(_notify, py)?)?;
    kwargs.set_item("args", (inbox,))?;
    kwargs.set_item("name", "ussdb-notify")?;
    kwargs.set_item("daemon", true)?;
    py.import("threading")?
        .getattr("Thread")?
        .call((), Some(&kwargs))?
        .call_method0("start")?;
    let mut slot = NOTIFIER.lock().unwrap_or_else(PoisonError::into_inner);
    match slot.as_ref() {
        // Another thread started one first: that one serves, and this one ends as `sender` is dropped.
        Some((made_in, theirs)) if *made_in == generation => Ok(theirs.clone()),
        _ => {
            *slot = Some((generation, sender.clone()));
            Ok(sender)
        }
    }
}

/// Starts waiting for `durable` (a write already appended) and returns the asyncio future of the running loop
/// that completes when it is durable. Raises `RuntimeError` outside a running event loop (before appending).
pub(crate) fn awaitable<'py>(
    py: Python<'py>,
    event_loop: Bound<'py, PyAny>,
    durable: ussdb::Durable,
) -> PyResult<Bound<'py, PyAny>> {
    let future = event_loop.call_method0("create_future")?;
    let pending = Arc::new(Pending {
        durable: Mutex::new(Some(durable)),
        target: Mutex::new(Some((event_loop.unbind(), future.clone().unbind()))),
        notify: notifier(py)?,
    });
    // Ready at once under "periodic" and "never" durability (a write there is as durable as it gets when it
    // is written), or when the write failed.
    if let Some(result) = py.detach(|| pending.poll()) {
        pending
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match result {
            Ok(()) => future.call_method1("set_result", (py.None(),))?,
            Err(e) => future.call_method1("set_exception", (engine_error(e).into_value(py),))?,
        };
    }
    Ok(future)
}

/// The running event loop, or `RuntimeError` (asyncio's own) when there is none.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("asyncio")?.call_method0("get_running_loop")
}
