//! Modes, actions and the environment that selects them (SPEC §3).
//!
//! The mode is one relaxed atomic byte. Every check in the crate starts with
//! [`checks_on`], which is that single load when the checks are compiled in
//! and a constant `false` when they are compiled out, so a program that turns
//! the checks off pays one load per boundary crossing and nothing more.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU8, Ordering};

/// True when the checks are compiled into this build: with
/// `debug_assertions`, or with the cargo feature `always`.
///
/// Compiled out, [`call!`](crate::call!) is the plain call and the wrappers are
/// plain owners; nothing is registered and nothing is reported.
///
/// ```
/// if ffi_check::COMPILED_IN {
///     println!("ffi-check is checking this build");
/// }
/// ```
pub const COMPILED_IN: bool = cfg!(any(debug_assertions, feature = "always"));

/// How much is checked, like `GODEBUG=cgocheck=N`.
///
/// Selected at start-up by `FFI_CHECK=0|1|2` and overridden by [`set_mode`].
///
/// ```
/// use ffi_check::Mode;
/// assert!(Mode::Full > Mode::Check && Mode::Check > Mode::Off);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Mode {
    /// `FFI_CHECK=0`: nothing is checked; memory is still freed correctly.
    Off = 0,
    /// `FFI_CHECK=1` (the default): every rule that can be checked at the
    /// moment of the event: loans, frees, pins, retains C declares,
    /// conversions, leaks.
    Check = 1,
    /// `FFI_CHECK=2`: everything in `Check`, plus the scans of tracked C
    /// memory and roots around each outermost call (what C keeps), guard
    /// bytes around every `CBox` block, backtraces at every event, and a
    /// larger quarantine of freed ranges.
    Full = 2,
}

/// What a violation does once it is reported (`FFI_CHECK_ACTION`).
///
/// Inside [`capture`](crate::capture) violations are collected instead; inside
/// a [`callback!`](crate::callback!) body `Panic` becomes `Abort`, because a
/// panic may not unwind into C.
///
/// ```
/// ffi_check::set_action(ffi_check::Action::Panic); // the default
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Action {
    /// Print the report and panic with it (the default, as Go does).
    Panic = 0,
    /// Print the report and abort the process.
    Abort = 1,
    /// Print the report and carry on; the offending operation is skipped when
    /// carrying it out would corrupt memory (a double free is not done twice).
    Log = 2,
}

const UNINIT: u8 = u8::MAX;

static MODE: AtomicU8 = AtomicU8::new(UNINIT);
static ACTION: AtomicU8 = AtomicU8::new(UNINIT);
static BACKTRACE: AtomicU8 = AtomicU8::new(UNINIT);

/// The current mode.
///
/// ```
/// let _ = ffi_check::mode();
/// ```
#[inline]
pub fn mode() -> Mode {
    if !COMPILED_IN {
        return Mode::Off;
    }
    match MODE.load(Ordering::Relaxed) {
        0 => Mode::Off,
        1 => Mode::Check,
        2 => Mode::Full,
        _ => init_mode(),
    }
}

/// True when checks run: compiled in and the mode is not `Off`. This is the
/// hot-path test: one relaxed load.
#[inline(always)]
pub(crate) fn checks_on() -> bool {
    if !COMPILED_IN {
        return false;
    }
    match MODE.load(Ordering::Relaxed) {
        0 => false,
        UNINIT => init_mode() != Mode::Off,
        _ => true,
    }
}

/// The mode as a byte when checks run (1 or 2), else 0: the same one
/// relaxed load as [`checks_on`], whose value `call!` keeps for the rest of
/// the call (mode 2 scans around an outermost call) instead of reading it
/// again.
#[inline(always)]
pub(crate) fn checking_mode() -> u8 {
    if !COMPILED_IN {
        return 0;
    }
    match MODE.load(Ordering::Relaxed) {
        UNINIT => init_mode() as u8,
        m => m,
    }
}

/// The mode byte as stored, without reading the environment: `u8::MAX`
/// while uninitialised. For the tracking allocator, which may run before
/// `main` or while the environment's lock is held.
#[inline(always)]
pub(crate) fn raw_mode() -> u8 {
    MODE.load(Ordering::Relaxed)
}

/// [`event_backtraces`] without reading the environment (as [`raw_mode`]).
#[inline]
pub(crate) fn raw_event_backtraces() -> bool {
    match BACKTRACE.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => raw_mode() == Mode::Full as u8,
    }
}

/// True in mode 2.
#[inline]
pub(crate) fn full() -> bool {
    mode() == Mode::Full
}

/// Sets the mode for the whole process, overriding `FFI_CHECK`.
///
/// Memory registered while checks were on is still tracked (and freed
/// correctly) after they are turned off; memory created while they are off
/// is simply not known to the checker.
///
/// ```
/// use ffi_check::{set_mode, mode, Mode};
/// let before = mode();
/// set_mode(Mode::Full);
/// assert_eq!(mode(), if ffi_check::COMPILED_IN { Mode::Full } else { Mode::Off });
/// set_mode(before);
/// ```
pub fn set_mode(mode: Mode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// The current action.
///
/// ```
/// let _ = ffi_check::action();
/// ```
pub fn action() -> Action {
    match ACTION.load(Ordering::Relaxed) {
        0 => Action::Panic,
        1 => Action::Abort,
        2 => Action::Log,
        _ => init_action(),
    }
}

/// Sets what a violation does, overriding `FFI_CHECK_ACTION`.
///
/// ```
/// use ffi_check::{set_action, action, Action};
/// let before = action();
/// set_action(Action::Log);
/// assert_eq!(action(), Action::Log);
/// set_action(before);
/// ```
pub fn set_action(action: Action) {
    ACTION.store(action as u8, Ordering::Relaxed);
}

/// Whether full backtraces are captured at allocation, pin and free.
///
/// `FFI_CHECK_BACKTRACE=1|0`; the default is on in mode 2 and off in mode 1,
/// where every event still records its `file:line:col` call site (free) and
/// the violating event itself always captures a backtrace.
#[inline]
pub(crate) fn event_backtraces() -> bool {
    match BACKTRACE.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        2 => full(),
        _ => event_backtraces_from_env(),
    }
}

/// The first ask: reads `FFI_CHECK_BACKTRACE` and keeps the answer.
#[cold]
#[inline(never)]
fn event_backtraces_from_env() -> bool {
    let v = parse_env("FFI_CHECK_BACKTRACE", 2, |s| match s {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    });
    BACKTRACE.store(v, Ordering::Relaxed);
    v == 1 || (v == 2 && full())
}

/// Overrides `FFI_CHECK_BACKTRACE`: `Some(true)` captures a backtrace at every
/// allocation, pin and free; `None` restores the default (on in mode 2).
///
/// ```
/// ffi_check::set_event_backtraces(Some(true));
/// ffi_check::set_event_backtraces(None);
/// ```
pub fn set_event_backtraces(on: Option<bool>) {
    let v = match on {
        Some(false) => 0,
        Some(true) => 1,
        None => 2,
    };
    BACKTRACE.store(v, Ordering::Relaxed);
}

#[cold]
#[inline(never)]
fn init_mode() -> Mode {
    let v = parse_env("FFI_CHECK", 1, |s| match s {
        "0" => Some(0),
        "1" => Some(1),
        "2" => Some(2),
        _ => None,
    });
    // Another thread may have called `set_mode` meanwhile: it wins.
    let _ = MODE.compare_exchange(UNINIT, v, Ordering::Relaxed, Ordering::Relaxed);
    mode()
}

#[cold]
#[inline(never)]
fn init_action() -> Action {
    let v = parse_env("FFI_CHECK_ACTION", 0, |s| match s {
        "panic" => Some(0),
        "abort" => Some(1),
        "log" => Some(2),
        _ => None,
    });
    let _ = ACTION.compare_exchange(UNINIT, v, Ordering::Relaxed, Ordering::Relaxed);
    action()
}

/// Reads a variable; a malformed value is reported once on stderr and the
/// default is used. Never panics: the host program must not crash because of
/// its environment.
pub(crate) fn parse_env(name: &str, default: u8, parse: impl Fn(&str) -> Option<u8>) -> u8 {
    let Some(raw) = std::env::var_os(name) else {
        return default;
    };
    match raw.to_str().map(str::trim).and_then(&parse) {
        Some(v) => v,
        None => {
            warn_malformed(name, &raw);
            default
        }
    }
}

#[cold]
fn warn_malformed(name: &str, raw: &OsString) {
    // Each reader runs once per process (its result is cached), so this
    // prints once per variable.
    crate::stderr::write_stderr(&format!(
        "ffi-check: ignoring malformed {name}={raw:?}; using the default\n"
    ));
}

/// `FFI_CHECK_LEAKS=1`: print the leak report at exit.
pub(crate) fn leaks_at_exit() -> bool {
    parse_env("FFI_CHECK_LEAKS", 0, |s| match s {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    }) == 1
}

// ---- strict rules ------------------------------------------------------------

static STRICT: AtomicU8 = AtomicU8::new(UNINIT);

thread_local! {
    /// This thread's override of [`strict`]: 0 follows the process, 1 is
    /// off, 2 is on (set by [`strictly`] for the length of a closure).
    static STRICT_HERE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Whether Go's strict discipline applies to *all* Rust memory, plain heap
/// blocks included (`FFI_CHECK_STRICT=1`, [`set_strict`], or inside
/// [`strictly`]).
///
/// By default the rules are Rust's: Rust heap memory never moves, so C
/// holding a pointer to a plain heap block (one of the
/// [`TrackingAllocator`](crate::TrackingAllocator), not declared
/// [`Managed`](crate::Managed)) is harmless until Rust frees it; what is
/// reported is that free while C still holds the pointer
/// (`FreedWhileRetained`) and C's use of it afterwards (`UseAfterFree`). A
/// pointer table of plain buffers lent for one call, a `Box::into_raw`
/// hand-over, a callback returning a boxed value: nothing to report. Memory
/// declared `Managed` keeps Go's discipline either way: a nested pointer to
/// it must be pinned at the call (`UnpinnedNested`), and C may keep it only
/// pinned (`Retained`). Strict, plain heap blocks are held to the same.
///
/// ```
/// assert!(!ffi_check::strict() || std::env::var_os("FFI_CHECK_STRICT").is_some());
/// ```
pub fn strict() -> bool {
    match STRICT_HERE.try_with(std::cell::Cell::get).unwrap_or(0) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    match STRICT.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let v = parse_env("FFI_CHECK_STRICT", 0, |s| match s {
                "0" => Some(0),
                "1" => Some(1),
                _ => None,
            });
            let _ = STRICT.compare_exchange(UNINIT, v, Ordering::Relaxed, Ordering::Relaxed);
            STRICT.load(Ordering::Relaxed) == 1
        }
    }
}

/// Sets [`strict`] for the whole process, overriding `FFI_CHECK_STRICT`.
///
/// ```
/// let before = ffi_check::strict();
/// ffi_check::set_strict(true);
/// assert!(ffi_check::strict());
/// ffi_check::set_strict(before);
/// ```
pub fn set_strict(on: bool) {
    STRICT.store(u8::from(on), Ordering::Relaxed);
}

/// Runs `f` with [`strict`] set to `on` on this thread only (other threads
/// keep the process's setting), as a test of one code path wants.
///
/// ```
/// assert!(ffi_check::strictly(true, ffi_check::strict));
/// assert!(!ffi_check::strictly(false, ffi_check::strict));
/// ```
pub fn strictly<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            let was = self.0;
            let _ = STRICT_HERE.try_with(|s| s.set(was));
        }
    }
    let was = STRICT_HERE
        .try_with(|s| s.replace(if on { 2 } else { 1 }))
        .unwrap_or(0);
    let _restore = Restore(was);
    f()
}
