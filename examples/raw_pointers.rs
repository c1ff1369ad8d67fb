//! Raw-pointer FFI code checked without wrappers: the tracking allocator.
//!
//! ```text
//! cargo run --example raw_pointers
//! ```
//!
//! With `TrackingAllocator` installed, every Rust heap block is managed
//! memory, so `call!` checks the `as_ptr()` / `into_raw()` code most FFI
//! crates already have. Each correct pattern must pass silently; each mistake
//! runs inside `capture` and its report is printed. The example exits
//! non-zero if an expectation is not met.

#[path = "wrappers/checklist.rs"]
mod checklist;
// The C fixture library's declarations (the workspace crate in `fixtures/`).
use ffi_check_fixtures as fixtures;

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

use checklist::{checks_ready, Checklist};
use ffi_check::{c_free, c_malloc, call, Pinner, TrackingAllocator, ViolationKind};
use fixtures::*;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

#[allow(dangling_pointers_from_temporaries)]
fn main() {
    if !checks_ready("raw_pointers") {
        return;
    }
    // A backtrace at every free, so a report can name the line that freed.
    ffi_check::set_event_backtraces(Some(true));
    let mut list = Checklist::new("raw_pointers");

    list.section("C2: no pointer into freed memory crosses");
    list.ok(
        "a CString temporary inside the call lives through it",
        || {
            // SAFETY: fx_strlen reads a NUL-terminated string.
            unsafe { call!(fx_strlen(CString::new("hello").unwrap().as_ptr())) }
        },
    );
    list.mistake(
        "the dangling CString temporary",
        &[ViolationKind::UseAfterFree],
        || {
            // The temporary is freed at the end of this statement.
            let p = CString::new("hello").unwrap().as_ptr();
            // SAFETY: deliberately passes the dangling pointer (the
            // quarantine keeps its memory mapped, so C reads stale bytes).
            unsafe { call!(fx_strlen(p)) }
        },
    );

    list.section("P1, P3: Rust heap memory never moves; freeing what C holds is the hazard");
    let args: Vec<CString> = ["-v", "input"]
        .iter()
        .map(|s| CString::new(*s).unwrap())
        .collect();
    let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    let lend_argv = || {
        // SAFETY: fx_sum_nested reads nothing when n is 0.
        unsafe { call!(fx_sum_nested(argv.as_ptr().cast::<*const c_int>(), 0)) }
    };
    list.ok("an argv of CString pointers lent for one call", lend_argv);
    let kept = CString::new("kept by C").unwrap();
    // SAFETY: fx_keep keeps the pointer in C's slot (and says so); the slot
    // is emptied below.
    unsafe { call!(fx_keep(kept.as_ptr().cast::<c_void>())) };
    list.mistake(
        "a string dropped while C still keeps it",
        &[ViolationKind::FreedWhileRetained],
        // Reported, and the block kept (leaked) so C's pointer stays valid.
        || drop(kept),
    );
    // SAFETY: empties C's slot.
    unsafe { call!(fx_forget()) };
    list.mistake(
        "with strict rules (FFI_CHECK_STRICT=1), an argv of unpinned strings",
        &[ViolationKind::UnpinnedNested],
        || ffi_check::strictly(true, lend_argv),
    );
    list.ok("strict, the same argv with its strings pinned", || {
        ffi_check::strictly(true, || {
            let mut pinner = Pinner::new();
            for a in &args {
                pinner.pin_ptr(a.as_ptr());
            }
            lend_argv()
        })
    });

    list.section("C1: each side frees its own memory");
    let rust = CString::new("rust's").unwrap().into_raw();
    list.mistake(
        "C frees a CString::into_raw pointer",
        &[ViolationKind::InvalidFree],
        // SAFETY: deliberately frees Rust memory with C's free (refused).
        || unsafe { c_free(rust.cast::<c_void>()) },
    );
    // SAFETY: the refused block is intact; Rust takes it back.
    drop(unsafe { CString::from_raw(rust) });
    let c = c_malloc(8).cast::<u64>();
    list.mistake(
        "Box::from_raw of malloc memory",
        &[ViolationKind::InvalidFree],
        // SAFETY: deliberately hands malloc memory to Rust's allocator
        // (refused).
        || drop(unsafe { Box::from_raw(c) }),
    );
    // SAFETY: still C's block: C frees it.
    unsafe { c_free(c.cast()) };

    ffi_check::set_event_backtraces(None);
    std::process::exit(list.finish());
}
