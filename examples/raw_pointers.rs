//! Raw-pointer FFI code checked without wrappers: the tracking allocator.
//!
//! ```text
//! cargo run --example raw_pointers
//! ```
//!
//! With `TrackingAllocator` installed, every Rust heap block is managed
//! memory, so `call!` checks the `as_ptr()` / `into_raw()` code most FFI
//! crates already have. Each mistake runs inside `capture` and its report is
//! printed; the example exits non-zero if one is not reported as expected.

#[path = "../tests/common/fixtures.rs"]
mod fixtures;

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

use ffi_check::{c_free, c_malloc, call, capture, Pinner, TrackingAllocator, ViolationKind};
use fixtures::*;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

fn expect(what: &str, kind: ViolationKind, vs: &[ffi_check::Violation], missing: &mut u32) {
    println!("\n== {what}");
    match vs.iter().find(|v| v.kind() == kind) {
        Some(v) => println!("{v}"),
        None => {
            println!("MISSING: expected {kind}, got {vs:?}");
            *missing += 1;
        }
    }
}

#[allow(dangling_pointers_from_temporaries)]
fn main() {
    if !ffi_check::COMPILED_IN {
        println!(
            "raw_pointers: the checks are compiled out of this build; run it in a debug build"
        );
        return;
    }
    ffi_check::set_mode(ffi_check::Mode::Check);
    // A backtrace at every free, so the report can name the line that freed.
    ffi_check::set_event_backtraces(Some(true));
    let mut missing = 0;

    // Correct: the temporary lives until the call returns.
    // SAFETY: fx_strlen reads a NUL-terminated string.
    let n = unsafe { call!(fx_strlen(CString::new("hello").unwrap().as_ptr())) };
    println!("ok: a CString temporary inside the call lives through it ({n} bytes)");

    let (_, v) = capture(|| {
        let p = CString::new("hello").unwrap().as_ptr(); // freed at the end of this line
                                                         // SAFETY: deliberately passes the dangling pointer (the quarantine
                                                         // keeps its memory mapped, so C reads stale bytes, not unmapped ones).
        unsafe { call!(fx_strlen(p)) }
    });
    expect(
        "C2: the dangling CString temporary",
        ViolationKind::UseAfterFree,
        &v,
        &mut missing,
    );

    // P1: an argv of CString pointers lends pointers to unpinned memory.
    let args: Vec<CString> = ["-v", "input"]
        .iter()
        .map(|s| CString::new(*s).unwrap())
        .collect();
    let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    let (_, v) = capture(|| {
        // SAFETY: fx_sum_nested reads nothing when n is 0.
        unsafe { call!(fx_sum_nested(argv.as_ptr().cast::<*const c_int>(), 0)) }
    });
    expect(
        "P1: argv of unpinned strings",
        ViolationKind::UnpinnedNested,
        &v,
        &mut missing,
    );
    let (_, v) = capture(|| {
        let mut pinner = Pinner::new();
        for a in &args {
            pinner.pin_ptr(a.as_ptr());
        }
        // SAFETY: as above, with every string pinned.
        unsafe { call!(fx_sum_nested(argv.as_ptr().cast::<*const c_int>(), 0)) }
    });
    println!(
        "\nok: the same argv with its strings pinned ({} reports)",
        v.len()
    );
    missing += v.len() as u32;

    // C1 across domains: C's free of Rust memory, Rust's free of C memory.
    let rust = CString::new("rust's").unwrap().into_raw();
    let (_, v) = capture(|| {
        // SAFETY: deliberately frees Rust memory with C's free (refused).
        unsafe { c_free(rust.cast::<c_void>()) }
    });
    expect(
        "C1: C frees a CString::into_raw pointer",
        ViolationKind::InvalidFree,
        &v,
        &mut missing,
    );
    // SAFETY: the refused block is intact; Rust takes it back.
    drop(unsafe { CString::from_raw(rust) });

    let c = c_malloc(8).cast::<u64>();
    let (_, v) = capture(|| {
        // SAFETY: deliberately hands malloc memory to Rust's allocator (refused).
        drop(unsafe { Box::from_raw(c) })
    });
    expect(
        "C1: Box::from_raw of malloc memory",
        ViolationKind::InvalidFree,
        &v,
        &mut missing,
    );
    // SAFETY: still C's block: C frees it.
    unsafe { c_free(c.cast()) };

    ffi_check::set_event_backtraces(None);
    if missing == 0 {
        println!("\nraw_pointers: every mistake reported, every correct pattern silent");
    } else {
        println!("\nraw_pointers: {missing} expectation(s) not met");
        std::process::exit(1);
    }
}
