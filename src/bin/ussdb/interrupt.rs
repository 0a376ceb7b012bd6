//! Ctrl-C as a request to stop at the next safe point, for the commands that have one (import stops at a line
//! boundary and prints what it imported; bench stops and removes its scratch store). Other commands keep the
//! default action: Ctrl-C ends them at once, which the store survives like any crash.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status of a command stopped by Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
pub const EXIT_CODE: u8 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Only stores to an atomic: the one kind of work that is safe inside a signal handler.
extern "C" fn on_sigint(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// From now on, the first Ctrl-C sets [`requested`] instead of ending the process. `SA_RESETHAND` puts the
/// default action back as the handler runs, so a second Ctrl-C ends the process at once if the first is not
/// acted on (say, while a read from a terminal waits for input). `SA_RESTART` keeps interrupted reads and
/// writes going instead of failing them with `EINTR`.
pub fn catch() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: `action` is fully initialised (zeroed, then every field this call reads is set); the handler only
    // touches an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        // On failure Ctrl-C keeps its default action: the command ends at once, as it would without this.
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// True once Ctrl-C was pressed after [`catch`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// An input that ends at the next line boundary once Ctrl-C was pressed, so an import of JSON Lines stops after
/// a whole record and its report says exactly what was stored. Counts the lines it handed out.
pub struct UntilInterrupted<R> {
    inner: BufReader<R>,
    /// Whether everything handed out so far ends with a newline (or nothing was).
    at_line_start: bool,
    lines: u64,
    stopped: bool,
}

impl<R: Read> UntilInterrupted<R> {
    pub fn new(inner: R) -> UntilInterrupted<R> {
        UntilInterrupted {
            inner: BufReader::with_capacity(1 << 16, inner),
            at_line_start: true,
            lines: 0,
            stopped: false,
        }
    }

    /// Whole lines handed out (the last one may lack its newline at the end of the input).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// True when the input was cut short by Ctrl-C.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

impl<R: Read> Read for UntilInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for UntilInterrupted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let interrupted = requested();
        if interrupted && self.at_line_start {
            self.stopped = true;
        }
        if self.stopped {
            return Ok(&[]);
        }
        let buf = self.inner.fill_buf()?;
        if interrupted && let Some(end) = buf.iter().position(|&b| b == b'\n') {
            // Finish the line under way, then end.
            return Ok(&buf[..=end]);
        }
        Ok(buf)
    }

    fn consume(&mut self, amount: usize) {
        if amount == 0 {
            return;
        }
        let handed = &self.inner.buffer()[..amount.min(self.inner.buffer().len())];
        self.lines += handed.iter().filter(|&&b| b == b'\n').count() as u64;
        self.at_line_start = handed.last() == Some(&b'\n');
        self.inner.consume(amount);
    }
}
