//! Progress bars on stderr, drawn only when stderr is a terminal, so pipes and logs stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `total` units (bytes when `bytes`), or a spinner when the total is unknown; hidden off a terminal.
pub fn bar(message: &'static str, total: Option<u64>, bytes: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    // Short enough for an 80-column terminal, where a wrapped bar redraws as a new line every tick.
    let template = match (total.is_some(), bytes) {
        (true, true) => "{msg} [{bar:25}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        (true, false) => "{msg} [{bar:25}] {human_pos}/{human_len} ({eta})",
        (false, true) => "{msg} {spinner} {bytes} ({bytes_per_sec})",
        (false, false) => "{msg} {spinner} {elapsed}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
