//! Ctrl-C as a request to stop at the next safe point, for the commands that have one (import stops at a line
//! boundary and prints what it imported; bench stops and removes its scratch store). Other commands keep the
//! default action: Ctrl-C ends them at once, which the store survives like any crash.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The exit status of a command stopped by Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
pub const EXIT_CODE: u8 = 130;

/// Set by the signal handler itself, on the thread the signal interrupts (the main thread, for a Ctrl-C sent to
/// the process), so the flag is set before that thread goes on: what it reads next is read with the flag set.
static REQUESTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// From now on, the first Ctrl-C sets [`requested`] instead of ending the process; a second one ends it at once
/// with [`EXIT_CODE`], for when the first is not acted on soon (say, while a read from a terminal waits for
/// input). Interrupted reads and writes are restarted, not failed with `EINTR`.
pub fn catch() {
    let flag = REQUESTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    // In this order: the shutdown hook runs first and does nothing until the flag hook has set the flag once.
    // If either cannot be installed, Ctrl-C keeps its default action: the command ends at once, which the store
    // survives like any crash.
    let _ = signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        i32::from(EXIT_CODE),
        Arc::clone(flag),
    );
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(flag));
}

/// True once Ctrl-C was pressed after [`catch`].
pub fn requested() -> bool {
    REQUESTED
        .get()
        .is_some_and(|flag| flag.load(Ordering::SeqCst))
}

/// An input that ends at the next line boundary once Ctrl-C was pressed, so an import of JSON Lines stops after
/// a whole record and its report says exactly what was stored. Counts the lines it handed out.
pub struct UntilInterrupted<R> {
    inner: BufReader<R>,
    /// Whether everything handed out so far ends with a newline (or nothing was).
    at_line_start: bool,
    /// Newlines in every buffer read so far, counted once per buffer (the unconsumed rest is subtracted when
    /// asked), which costs far less than counting each line as it is consumed.
    newlines_read: u64,
    stopped: bool,
}

impl<R: Read> UntilInterrupted<R> {
    pub fn new(inner: R) -> UntilInterrupted<R> {
        UntilInterrupted {
            inner: BufReader::with_capacity(1 << 16, inner),
            at_line_start: true,
            newlines_read: 0,
            stopped: false,
        }
    }

    /// Whole lines handed out (the last one may lack its newline at the end of the input).
    pub fn lines(&self) -> u64 {
        self.newlines_read - newlines(self.inner.buffer())
    }

    /// True when the input was cut short by Ctrl-C.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

fn newlines(bytes: &[u8]) -> u64 {
    // Counted in runs of at most 255 bytes into a `u8`, a loop the compiler turns into wide vector compares.
    bytes
        .chunks(255)
        .map(|run| u64::from(run.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'))))
        .sum()
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
        let refill = self.inner.buffer().is_empty();
        let buf = self.inner.fill_buf()?;
        if refill {
            self.newlines_read += newlines(buf);
        }
        if interrupted && let Some(end) = buf.iter().position(|&b| b == b'\n') {
            // Finish the line under way, then end.
            return Ok(&buf[..=end]);
        }
        Ok(buf)
    }

    fn consume(&mut self, amount: usize) {
        if let Some(&last) = amount
            .checked_sub(1)
            .and_then(|i| self.inner.buffer().get(i))
        {
            self.at_line_start = last == b'\n';
        }
        self.inner.consume(amount);
    }
}
