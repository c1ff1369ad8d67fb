//! What a violation does once found: counted, logged as JSON when
//! `FFI_CHECK_LOG` is set, then collected (inside [`capture`]) or acted on
//! (panic, abort, log). Inside a callback body the panic action becomes an
//! abort, and inside the tracking allocator too: a panic may not unwind
//! into C or out of `dealloc`.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use once_cell::sync::OnceCell;

use super::stats::VIOLATIONS;
use super::Violation;
use crate::stderr::write_stderr;

thread_local! {
    static CAPTURES: RefCell<Vec<Vec<Violation>>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as running a callback body (a panic there would
/// unwind into C). Returns the guard that unmarks it.
pub(crate) fn enter_callback() -> CallbackGuard {
    let _ = CALLBACK_DEPTH.try_with(|d| d.set(d.get() + 1));
    CallbackGuard(())
}

pub(crate) struct CallbackGuard(());

impl Drop for CallbackGuard {
    fn drop(&mut self) {
        let _ = CALLBACK_DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// True while this thread runs a callback body that C called.
pub(crate) fn in_callback() -> bool {
    CALLBACK_DEPTH.try_with(|d| d.get() > 0).unwrap_or(false)
}

/// Acts on a violation: counts it, logs it as JSON when `FFI_CHECK_LOG` is
/// set, then collects it (inside [`capture`]) or carries out the action.
#[cold]
#[inline(never)]
#[track_caller]
pub(crate) fn emit(v: Violation) {
    if !crate::mode::checks_on() {
        // Off (or compiled out): nothing is reported, whatever found it.
        return;
    }
    if let Some(slot) = VIOLATIONS.get(v.kind().index()) {
        slot.fetch_add(1, Ordering::Relaxed);
    }
    log_json(&v);
    let mut pending = Some(v);
    let captured = CAPTURES.try_with(|c| match c.borrow_mut().last_mut() {
        Some(frame) => {
            frame.extend(pending.take());
            true
        }
        None => false,
    });
    let Some(v) = pending else { return };
    match captured {
        Ok(_) => act(v),
        // The thread's locals are being torn down (a tracked value dropped
        // by a thread-local destructor): no capture can be active, and
        // panicking here would abort. The report is printed.
        Err(_) => write_stderr(&format!("{v}\n")),
    }
}

#[track_caller]
fn act(v: Violation) {
    let text = format!("{v}\n");
    match crate::mode::action() {
        crate::Action::Log => write_stderr(&text),
        crate::Action::Abort => {
            write_stderr(&text);
            std::process::abort();
        }
        crate::Action::Panic => {
            if in_callback() {
                write_stderr(&text);
                write_stderr("ffi-check: aborting: a panic here would unwind into C\n");
                std::process::abort();
            }
            if crate::bookkeeping::in_allocator() {
                write_stderr(&text);
                write_stderr(
                    "ffi-check: aborting: a panic here would unwind out of the global allocator\n",
                );
                std::process::abort();
            }
            if std::thread::panicking() {
                // Never panic while unwinding: that would abort with a far
                // less helpful message.
                write_stderr(&text);
                return;
            }
            if in_thread_local_destructor() {
                // A panic out of a thread-local destructor aborts the whole
                // process (the thread's, or at exit the main thread's): the
                // report is printed and the program goes on.
                write_stderr(&text);
                write_stderr(
                    "ffi-check: not panicking: a panic inside a thread-local destructor would abort the process\n",
                );
                return;
            }
            // The message is the full report, so the panic hook prints it
            // and `#[should_panic(expected = ...)]` can match its words.
            panic!("{v}");
        }
    }
}

/// Whether this thread is running thread-local destructors (at thread exit,
/// or the main thread's at process exit): C's runtime calls them from
/// `__call_tls_dtors`, which a walk of the stack finds. Rust offers no way
/// to ask; this runs only when a violation is about to panic.
#[cold]
fn in_thread_local_destructor() -> bool {
    let mut found = false;
    crate::bookkeeping::walk_stack(|frame| {
        // SAFETY: dladdr only reads the loader's tables; `info` is plain
        // data it fills in.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: as above; any address may be asked about.
        if unsafe { libc::dladdr(frame.ip(), &mut info) } != 0 && !info.dli_sname.is_null() {
            // SAFETY: dladdr names the symbol with a NUL-terminated string
            // of the loaded object.
            let name = unsafe { std::ffi::CStr::from_ptr(info.dli_sname) };
            found = name.to_bytes() == b"__call_tls_dtors";
        }
        !found
    });
    found
}

/// Runs `f`, collecting the violations that happen on this thread inside it
/// instead of acting on them. Nests: an inner `capture` keeps its own.
/// Other threads are unaffected.
///
/// ```
/// use ffi_check::{capture, c_malloc, c_free, ViolationKind};
/// # if !ffi_check::COMPILED_IN { return; } // compiled out, nothing stops the real double free
/// let (_, violations) = capture(|| {
///     let p = c_malloc(16);
///     // SAFETY: p came from c_malloc; the second free is the mistake under test.
///     unsafe { c_free(p); c_free(p); }
/// });
/// assert_eq!(violations.len(), 1);
/// assert_eq!(violations[0].kind(), ViolationKind::DoubleFree);
/// ```
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Violation>) {
    struct Frame;
    impl Drop for Frame {
        fn drop(&mut self) {
            // Runs on unwinding too, so a panicking closure does not leave
            // its frame behind to swallow later violations.
            let _ = CAPTURES.try_with(|c| c.borrow_mut().pop());
        }
    }
    let _ = CAPTURES.try_with(|c| c.borrow_mut().push(Vec::new()));
    let frame = Frame;
    let r = f();
    let got = CAPTURES
        .try_with(|c| c.borrow_mut().last_mut().map(std::mem::take))
        .ok()
        .flatten()
        .unwrap_or_default();
    drop(frame);
    (r, got)
}

// ---- the JSON-lines log -------------------------------------------------

static LOG: OnceCell<Option<std::fs::File>> = OnceCell::new();

fn log_json(v: &Violation) {
    let file = LOG.get_or_init(|| {
        let path = std::env::var_os("FFI_CHECK_LOG")?;
        if path.is_empty() {
            write_stderr("ffi-check: ignoring empty FFI_CHECK_LOG (it names the file to log to); not logging\n");
            return None;
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                write_stderr(&format!(
                    "ffi-check: cannot open FFI_CHECK_LOG={path:?}: {e}; not logging\n"
                ));
                None
            }
        }
    });
    if let Some(mut f) = file.as_ref() {
        // One write of one whole line on an O_APPEND file: lines from several
        // threads or processes do not interleave.
        let mut line = v.to_json();
        line.push('\n');
        if let Err(e) = f.write_all(line.as_bytes()) {
            log_write_failed(&e);
        }
    }
}

/// Says once per process that the log lost a line: a full disk or a closed
/// file must not make the log silently incomplete.
#[cold]
fn log_write_failed(e: &std::io::Error) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        let path = std::env::var_os("FFI_CHECK_LOG").unwrap_or_default();
        write_stderr(&format!(
            "ffi-check: cannot write to FFI_CHECK_LOG={path:?}: {e}; violations are missing from the log (they are still reported here)\n"
        ));
    }
}
