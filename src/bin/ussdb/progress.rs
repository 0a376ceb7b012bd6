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
    let template = match (total.is_some(), bytes) {
        (true, true) => "{msg:>9} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        (true, false) => "{msg:>9} [{bar:32}] {human_pos}/{human_len} {per_sec} eta {eta}",
        (false, true) => "{msg:>9} {spinner} {bytes} {bytes_per_sec}",
        (false, false) => "{msg:>9} {spinner} {human_pos} {per_sec}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
