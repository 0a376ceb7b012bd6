//! `Store.set_async`: a write whose asyncio future completes when the group commit covering it is durable.
//!
//! A write that is settled at once (under "periodic" and "never", or refused) completes its future here, on the
//! loop's thread. Any other is handed to [`ussdb::Durable::then`], whose callback runs on a thread of the
//! library's once the write is durable (never on the engine's commit thread, which serves every waiter). That
//! callback does not take the GIL: it queues the outcome for one Python thread of this module's (`ussdb-notify`,
//! a daemon thread started on first use in each process), which takes the GIL once for all the outcomes queued
//! and schedules each on its event loop with `call_soon_threadsafe` (a GIL hand-over per write halved the writes
//! per second of a busy loop). A thousand writes in flight are a thousand small objects and no thread each; they
//! share the store's fsyncs.
//!
//! The queue's reader is a Python thread, not a Rust one, so that interpreter shutdown treats it as it treats
//! every daemon thread.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{FORK_GENERATION, engine_error};

/// A durable (or failed) write: its event loop, its asyncio future and its outcome.
type Settled = (Py<PyAny>, Py<PyAny>, ussdb::Result<()>);

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

/// Hands an outcome to the event loop that awaits it.
fn schedule(py: Python<'_>, (event_loop, future, result): Settled) {
    let error = match result {
        Ok(()) => py.None(),
        Err(e) => engine_error(e).into_value(py).into_any(),
    };
    let scheduled = wrap_pyfunction!(_complete, py).and_then(|complete| {
        event_loop.call_method1(py, "call_soon_threadsafe", (complete, future, error))
    });
    // A `RuntimeError` is `call_soon_threadsafe` on a closed loop: the program has moved on. Anything else has no
    // caller to go to, and is reported as Python reports errors in callbacks.
    if let Err(e) = scheduled
        && !e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py)
    {
        e.write_unraisable(py, None);
    }
}

/// The receiving end of the queue, handed to its thread as a Python object.
#[pyclass(frozen)]
struct Inbox(Mutex<Option<Receiver<Settled>>>);

/// The `ussdb-notify` thread's body: wait (without the GIL) for settled writes, then schedule every one queued.
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
        let settled = py.detach(|| {
            let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            // Every sender gone: a thread that lost the race to start, or a replaced one in a forked child.
            let first = queue.recv().ok()?;
            Some(
                std::iter::once(first)
                    .chain(queue.try_iter())
                    .collect::<Vec<_>>(),
            )
        });
        let Some(settled) = settled else { return };
        for one in settled {
            schedule(py, one);
        }
    }
}

/// The queue into this process's `ussdb-notify` thread (started on first use, and again in a forked child, where
/// the parent's thread does not exist), with the fork generation it was started in.
static QUEUE: Mutex<Option<(u64, Sender<Settled>)>> = Mutex::new(None);

fn queue(py: Python<'_>) -> PyResult<Sender<Settled>> {
    let generation = FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed);
    let current = || {
        let slot = QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
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
    let mut slot = QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
    match slot.as_ref() {
        // Another thread started one first: that one serves, and this one ends as `sender` is dropped.
        Some((made_in, theirs)) if *made_in == generation => Ok(theirs.clone()),
        _ => {
            *slot = Some((generation, sender.clone()));
            Ok(sender)
        }
    }
}

/// The asyncio future of `event_loop` (the running loop) that completes when `durable` (a write already appended)
/// is durable, or with its `ussdb.Error`.
pub(crate) fn awaitable<'py>(
    py: Python<'py>,
    event_loop: Bound<'py, PyAny>,
    mut durable: ussdb::Durable,
) -> PyResult<Bound<'py, PyAny>> {
    let future = event_loop.call_method0("create_future")?;
    if let Some(result) = durable.now() {
        match result {
            Ok(()) => future.call_method1("set_result", (py.None(),))?,
            Err(e) => future.call_method1("set_exception", (engine_error(e).into_value(py),))?,
        };
        return Ok(future);
    }
    let queue = queue(py)?;
    let (event_loop, target) = (event_loop.unbind(), future.clone().unbind());
    py.detach(|| {
        durable.then(move |result| {
            // A failed send is a forked child's copy of a parent's write: nobody in the child awaits it.
            let _ = queue.send((event_loop, target, result));
        });
    });
    Ok(future)
}

/// The running event loop, or `RuntimeError` (asyncio's own) when there is none.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("asyncio")?.call_method0("get_running_loop")
}
