//! What a long command does with SIGINT (Ctrl-C), SIGTERM (a scheduler's preemption) and
//! SIGXFSZ (`ulimit -f`). Without handlers each ends the process at once and the work since
//! the last checkpoint is lost. With [`stop_on_interrupt`] the first SIGINT or SIGTERM only
//! records itself; the training loop asks [`stop_requested`] once per step, ends that step and
//! writes a checkpoint, and the command exits with 128 + the signal's number, as a shell
//! reports a process ended by it. A second signal ends the process at once, as without a
//! handler. Under data parallelism every rank must stop at the same step, so the loop asks
//! this one function, which can be made to agree across ranks.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::flag;

/// The first SIGINT or SIGTERM received, 0 for none.
static RECEIVED: LazyLock<Arc<AtomicUsize>> = LazyLock::new(|| Arc::new(AtomicUsize::new(0)));

/// Makes SIGINT and SIGTERM request a stop instead of ending the process; only for commands
/// whose loops ask [`stop_requested`].
pub fn stop_on_interrupt() -> std::io::Result<()> {
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Handlers run in the order registered: the first signal finds `stopping` false and
        // sets it; a second finds it set and ends the process as the signal's default would.
        flag::register_conditional_default(signal, Arc::clone(&stopping))?;
        flag::register(signal, Arc::clone(&stopping))?;
        flag::register_usize(signal, Arc::clone(&RECEIVED), signal as usize)?;
    }
    Ok(())
}

/// Whether a SIGINT or SIGTERM asked the current work to stop.
pub fn stop_requested() -> bool {
    received().is_some()
}

/// The signal that asked to stop, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => i32::try_from(signal).ok(),
    }
}

/// Records `signal` as if it had arrived, so that the current work stops at its next check; for
/// a host that handles signals itself (the Python module, on KeyboardInterrupt). `None` clears
/// a past request before new work.
pub fn set_received(signal: Option<i32>) {
    RECEIVED.store(signal.map_or(0, |s| s.max(0) as usize), Ordering::SeqCst);
}

/// The conventional exit status of a process that stopped for `signal`: 128 + its number.
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// A write past the file-size limit (`ulimit -f`) then fails with "File too large", named with
/// its path like a full disk, instead of SIGXFSZ ending the process without a word and leaving
/// its temporary file: a handler that does nothing replaces the signal's default action.
pub fn fail_writes_past_file_limit() -> std::io::Result<()> {
    flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false))).map(drop)
}
