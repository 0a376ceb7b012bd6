//! When a write is durable: the [`Durability`] modes, group commit (writers waiting for one fsync share it) and
//! the periodic fsync loop of [`Durability::Periodic`].

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Error, Result};

/// When a write reaches the disk, and so what a crash can take away.
///
/// | mode | `set` returns after | process crash (kill -9, panic) loses | power loss or kernel crash loses |
/// | --- | --- | --- | --- |
/// | `Immediate` (default) | `fdatasync` | nothing acknowledged | nothing acknowledged |
/// | `Periodic(d)` | `write(2)` | nothing acknowledged | at most the last `d` of writes |
/// | `Never` | `write(2)` | nothing acknowledged | whatever the OS had not written back (typically up to ~30 s) |
///
/// With `Immediate`, writers that arrive while an fsync runs share the next one (group commit), so many
/// concurrent writers cost far fewer fsyncs than writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged write is on stable storage.
    Immediate,
    /// Writes survive a process crash at once, and a power loss after at most this interval.
    Periodic(Duration),
    /// Writes survive a process crash; the OS decides when they reach the disk.
    Never,
}

/// The interval of `"periodic"` when none is given: an OS crash takes at most the last 100 ms of writes. The CLI
/// and the bindings use it, so "periodic" promises the same everywhere.
pub const DEFAULT_PERIODIC_INTERVAL: Duration = Duration::from_millis(100);

impl FromStr for Durability {
    type Err = Error;

    /// Reads `immediate`, `never`, `periodic` (every [`DEFAULT_PERIODIC_INTERVAL`]) or `periodic:<N>ms`.
    fn from_str(s: &str) -> Result<Durability> {
        let bad = |reason: String| Error::InvalidOption {
            option: "durability",
            reason,
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "immediate" => Ok(Durability::Immediate),
            "never" => Ok(Durability::Never),
            "periodic" => Ok(Durability::Periodic(DEFAULT_PERIODIC_INTERVAL)),
            other => {
                let ms = other
                    .strip_prefix("periodic:")
                    .map(|rest| rest.strip_suffix("ms").unwrap_or(rest))
                    .ok_or_else(|| {
                        bad(format!(
                            "{s:?} is not one of immediate, periodic, periodic:<N>ms, never"
                        ))
                    })?;
                match ms.parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(Durability::Periodic(Duration::from_millis(ms))),
                    _ => Err(bad(format!(
                        "{s:?}: the interval must be a whole number of milliseconds above zero"
                    ))),
                }
            }
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Immediate => f.write_str("immediate"),
            Durability::Never => f.write_str("never"),
            Durability::Periodic(d) => write!(f, "periodic:{}ms", d.as_millis()),
        }
    }
}

/// Group commit: writers wait until an fsync covers their position in the log; the first waiter runs that fsync
/// for everyone (the leader) and writers that arrive meanwhile share the next one.
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<CommitState>,
    done: Condvar,
}

#[derive(Default)]
struct CommitState {
    /// Everything up to this log position is durable.
    synced: u64,
    /// A leader is running an fsync.
    busy: bool,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything up to this log position is durable.
    pub(crate) fn synced(&self) -> u64 {
        self.lock().synced
    }

    /// Notes that everything up to `position` is durable (an fsync outside group commit covered it).
    pub(crate) fn advance(&self, position: u64) {
        let mut state = self.lock();
        if position > state.synced {
            state.synced = position;
            self.done.notify_all();
        }
    }

    /// Returns once an fsync covered `position`. `check` is asked before each wait (a poisoned store stops
    /// waiting); `fsync` runs one fsync and returns the position it covers.
    pub(crate) fn wait_for(
        &self,
        position: u64,
        check: impl Fn() -> Result<()>,
        fsync: impl Fn() -> Result<u64>,
    ) -> Result<()> {
        let mut state = self.lock();
        loop {
            check()?;
            if state.synced >= position {
                return Ok(());
            }
            if state.busy {
                state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.busy = true;
            drop(state);
            let result = fsync();
            state = self.lock();
            state.busy = false;
            if let Ok(target) = result
                && target > state.synced
            {
                state.synced = target;
            }
            self.done.notify_all();
            result?;
        }
    }
}

/// The `ussdb-sync` thread of [`Durability::Periodic`]: calls `sync` every interval until stopped, or until
/// `sync` says there is nothing left to sync (the store is gone).
pub(crate) struct PeriodicSync {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl PeriodicSync {
    /// Starts the thread. `sync` returns false when the store it syncs no longer exists.
    pub(crate) fn spawn(
        interval: Duration,
        sync: impl Fn() -> bool + Send + 'static,
    ) -> Result<PeriodicSync> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let in_thread = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("ussdb-sync".into())
            .spawn(move || {
                let (stopped, wake) = &*in_thread;
                let mut guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
                while !*guard {
                    guard = match wake.wait_timeout(guard, interval) {
                        Ok((guard, _)) => guard,
                        Err(e) => e.into_inner().0,
                    };
                    if *guard {
                        break;
                    }
                    drop(guard);
                    if !sync() {
                        break;
                    }
                    guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
                }
            })
            .map_err(|e| Error::io("start the background fsync thread", "ussdb-sync", e))?;
        Ok(PeriodicSync {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for PeriodicSync {
    fn drop(&mut self) {
        self.stop();
    }
}
