//! Mode 2 reads the program's statics: a C library compiled into the program
//! (the `cc` crate's static library, as a `-sys` crate builds it; it
//! includes no ffi-check header) that keeps a lent pointer in a `static` of
//! its own is found, in both styles of use: `Managed` memory is `Retained`
//! at the call, and a plain `Vec` buffer (the tracking allocator) freed
//! while the static still holds it is `FreedWhileRetained` at the drop,
//! naming the call that lent it. Rust's own statics hold pointers to its
//! own memory across calls: nothing.
//!
//! Each test runs in child processes in mode 2 (the scan's memory of what
//! it found is process-wide), once with the write watch and once with the
//! full scan (`FFI_CHECK_WRITE_WATCH=0`).
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::fixtures::fx_table_put;
use common::fixtures::keeper::{keeper_forget, keeper_keep, keeper_kept};
use common::{assert_report, assert_rust_site, only};
use ffi_check::{assert_clean, call, capture, Managed, TrackingAllocator, ViolationKind};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

/// What mode 2 says on stderr, once, about how it reads C memory.
const WATCHED: &str = "ffi-check: mode 2 reads only the pages written during each call (write watch: userfaultfd + PAGEMAP_SCAN)";
const NO_WATCH: &str =
    "ffi-check: mode 2 reads all the C memory it scans at every call (no write watch: ";
const WATCH_OFF: &str = "ffi-check: mode 2 reads all the C memory it scans at every call (the write watch is off: FFI_CHECK_WRITE_WATCH=0)";

/// Runs the test `name` in child processes in mode 2, once with the write
/// watch (where the kernel has it) and once with the full scan it falls
/// back to; true in the child.
fn in_mode_2_child(name: &str) -> bool {
    if common::is_child(name) {
        return true;
    }
    let watched = common::child_passes(name, &[("FFI_CHECK", "2"), ("FFI_CHECK_WRITE_WATCH", "1")]);
    assert_eq!(
        watched.matches(WATCHED).count() + watched.matches(NO_WATCH).count(),
        1,
        "mode 2 says once how it reads C memory:\n{watched}"
    );
    let full = common::child_passes(name, &[("FFI_CHECK", "2"), ("FFI_CHECK_WRITE_WATCH", "0")]);
    assert_eq!(
        full.matches(WATCH_OFF).count(),
        1,
        "FFI_CHECK_WRITE_WATCH=0 forces the full scan:\n{full}"
    );
    false
}

#[test]
fn a_c_static_keeping_a_lent_managed_pointer_is_retained_naming_the_static() {
    if !in_mode_2_child("a_c_static_keeping_a_lent_managed_pointer_is_retained_naming_the_static") {
        return;
    }
    let lent = Managed::new(5u64);
    let (_, v) = capture(|| {
        // SAFETY: keeper_keep only stores the pointer; it is forgotten below,
        // before `lent` drops.
        unsafe { call!(keeper_keep(lent.as_ptr().cast::<c_void>())) }
    });
    let call_line = line!() - 2;
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::Retained,
        "C keeps a pointer to unpinned managed memory after the call (`keeper_keep`)",
    );
    assert_rust_site(v.call_site(), file!(), call_line);
    assert_eq!(v.regions()[0].addr(), lent.addr());
    let text = v.to_string();
    eprintln!("{text}");
    assert!(
        text.contains("held by: the main program's .bss, in `keeper_slot` at offset 0"),
        "the report names the C static: {text}"
    );
    // SAFETY: no arguments; the static lets go before the drop.
    unsafe { call!(keeper_forget()) };
    assert_clean(|| drop(lent));
}

#[test]
fn dropping_managed_memory_a_c_static_still_holds_is_freed_while_retained() {
    if !in_mode_2_child("dropping_managed_memory_a_c_static_still_holds_is_freed_while_retained") {
        return;
    }
    let lent = Managed::new(6u64);
    // SAFETY: keeper_keep only stores the pointer.
    let (_, v) = capture(|| unsafe { call!(keeper_keep(lent.as_ptr().cast::<c_void>())) });
    assert_eq!(v.len(), 1, "{v:?}");
    let (_, v) = capture(|| drop(lent));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::FreedWhileRetained,
        "managed memory freed while C still holds a pointer to it",
    );
    let text = v.to_string();
    eprintln!("{text}");
    assert!(text.contains("in `keeper_slot`"), "{text}");
    assert!(
        text.contains("kept since the call to `keeper_keep` at"),
        "{text}"
    );
    // SAFETY: no arguments (the memory was kept, leaked).
    unsafe { call!(keeper_forget()) };
}

#[test]
fn a_vec_buffer_a_c_static_keeps_and_rust_then_drops_is_freed_while_retained() {
    if !in_mode_2_child("a_vec_buffer_a_c_static_keeps_and_rust_then_drops_is_freed_while_retained")
    {
        return;
    }
    let kept = vec![7u8; 32];
    let (_, v) = capture(|| {
        // SAFETY: keeper_keep only stores the pointer.
        unsafe { call!(keeper_keep(kept.as_ptr().cast::<c_void>())) }
    });
    let call_line = line!() - 2;
    assert!(
        v.is_empty(),
        "keeping a plain buffer is no violation: {v:?}"
    );
    // SAFETY: no arguments.
    assert_eq!(unsafe { keeper_kept() }, kept.as_ptr().cast::<c_void>());
    let (_, v) = capture(|| drop(kept));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::FreedWhileRetained,
        "managed memory freed while C still holds a pointer to it",
    );
    let text = v.to_string();
    eprintln!("{text}");
    assert!(text.contains("found by the mode-2 scan"), "{text}");
    assert!(
        text.contains("held by: the main program's .bss, in `keeper_slot` at offset 0"),
        "the report names the C static: {text}"
    );
    let call_at = format!(
        "kept since the call to `keeper_keep` at {}:{call_line}",
        file!()
    );
    assert!(text.contains(&call_at), "the report names the call: {text}");
    // SAFETY: no arguments (the buffer was kept, leaked).
    unsafe { call!(keeper_forget()) };
}

#[test]
fn a_vec_buffer_the_c_static_lets_go_of_before_the_drop_is_ok() {
    if !in_mode_2_child("a_vec_buffer_the_c_static_lets_go_of_before_the_drop_is_ok") {
        return;
    }
    let kept = vec![8u8; 32];
    assert_clean(|| {
        // SAFETY: keeper_keep only stores the pointer; forgotten before the
        // drop.
        unsafe {
            call!(keeper_keep(kept.as_ptr().cast::<c_void>()));
            call!(keeper_forget());
        }
        drop(kept);
    });
}

/// What a Rust static holds: the address of a `Managed` value, and of a
/// plain heap buffer.
static RUST_SLOT: AtomicUsize = AtomicUsize::new(0);
static RUST_BUFFER: AtomicUsize = AtomicUsize::new(0);

#[test]
fn a_rust_static_holding_unpinned_managed_memory_across_calls_is_not_reported() {
    if !in_mode_2_child(
        "a_rust_static_holding_unpinned_managed_memory_across_calls_is_not_reported",
    ) {
        return;
    }
    let value = Managed::new(9u64);
    let buffer = vec![1u8; 64];
    assert_clean(|| {
        RUST_SLOT.store(value.addr(), Ordering::SeqCst);
        RUST_BUFFER.store(buffer.as_ptr() as usize, Ordering::SeqCst);
        for _ in 0..3 {
            // SAFETY: no arguments.
            unsafe { call!(keeper_forget()) };
        }
        // Written between calls, too.
        let other = Managed::new(10u64);
        RUST_SLOT.store(other.addr(), Ordering::SeqCst);
        // SAFETY: no arguments.
        unsafe { call!(keeper_forget()) };
        RUST_SLOT.store(0, Ordering::SeqCst);
        drop(other);
    });
    // The static still points to them when they drop: Rust's own business.
    assert_clean(|| {
        RUST_SLOT.store(value.addr(), Ordering::SeqCst);
        drop(value);
        drop(buffer);
    });
    RUST_SLOT.store(0, Ordering::SeqCst);
    RUST_BUFFER.store(0, Ordering::SeqCst);
}

/// The same pointer kept in tracked C memory, in a table past the first
/// page of a larger C block: found with the write watch (which reads only
/// the page written) and with the full scan alike.
#[test]
fn a_pointer_kept_past_the_first_page_of_a_large_c_block_is_retained() {
    if !in_mode_2_child("a_pointer_kept_past_the_first_page_of_a_large_c_block_is_retained") {
        return;
    }
    let table = ffi_check::CBox::from_elem(std::ptr::null::<c_void>(), 4096);
    let t = table.as_ptr() as *mut *mut c_void;
    let lent = Managed::new(11u64);
    let (_, v) = capture(|| {
        // SAFETY: slot 515 is inside the C block; cleared below.
        unsafe { call!(fx_table_put(t, 515, lent.as_ptr().cast::<c_void>())) }
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::Retained,
        "C keeps a pointer to unpinned managed memory after the call (`fx_table_put`)",
    );
    let text = v.to_string();
    assert!(text.contains("at offset 4120"), "{text}");
    // SAFETY: as above.
    unsafe { call!(fx_table_put(t, 515, std::ptr::null::<c_void>())) };
    assert_clean(|| drop(lent));
    drop(table);
}
