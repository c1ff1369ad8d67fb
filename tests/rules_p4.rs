//! Rule P4: a callback may not return to C a pointer to unpinned managed
//! memory. The callbacks here are driven by the C fixtures
//! `fx_call_producer` and `fx_for_each`, with their state passed as user
//! data.
//!
//! A violation inside a `callback!` body aborts under the default panic
//! action (a panic may not unwind into C), so every mistake here is made
//! inside `capture`.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::{c_int, c_void};

use common::fixtures;
use common::{assert_report_line, only};
use ffi_check::{
    assert_clean, call, callback, capture, CBox, Managed, Pinned, Violation, ViolationKind,
};

/// The shape every P4 report has: its kind, the first line, the help line.
fn assert_callback_returned_unpinned(v: &Violation, first_line: &str) {
    assert_report_line(v, ViolationKind::CallbackReturnedUnpinned, "P4", first_line);
}

/// Hands C the address of the `Managed<u32>` passed as user data: the
/// mistake, since nothing pins it.
unsafe extern "C" fn produce_unpinned(user: *mut c_void) -> *const c_void {
    callback!({
        // SAFETY: the caller passes a live `Managed<u32>` as user data.
        let m = unsafe { &*(user as *const Managed<u32>) };
        m.as_ptr().cast::<c_void>()
    })
}

/// Hands C the address of the `Pinned<u32>` passed as user data.
unsafe extern "C" fn produce_pinned(user: *mut c_void) -> *const c_void {
    callback!({
        // SAFETY: the caller passes a live `Pinned<u32>` as user data.
        let p = unsafe { &*(user as *const Pinned<u32>) };
        p.as_ptr().cast::<c_void>()
    })
}

/// Hands C the address of the `Pinned<[*const u32; 1]>` passed as user data.
unsafe extern "C" fn produce_pinned_table(user: *mut c_void) -> *const c_void {
    callback!({
        // SAFETY: the caller passes a live `Pinned<[*const u32; 1]>`.
        let p = unsafe { &*(user as *const Pinned<[*const u32; 1]>) };
        p.as_ptr().cast::<c_void>()
    })
}

/// Hands C the address of the `CBox<u32>` passed as user data.
unsafe extern "C" fn produce_c_memory(user: *mut c_void) -> *const c_void {
    callback!({
        // SAFETY: the caller passes a live `CBox<u32>` as user data.
        let b = unsafe { &*(user as *const CBox<u32>) };
        b.as_ptr().cast::<c_void>()
    })
}

/// Runs `producer` through the C fixture with `user` as its user data.
fn drive<T>(
    producer: unsafe extern "C" fn(*mut c_void) -> *const c_void,
    user: &T,
) -> *const c_void {
    let cb: fixtures::FxProduceFn = Some(producer);
    let user = user as *const T as *mut c_void;
    // SAFETY: each producer reads its user data as the `T` given here, which
    // outlives the call.
    unsafe { call!(fixtures::fx_call_producer(cb, user)) }
}

#[test]
fn callback_returning_unpinned_managed_pointer_is_reported() {
    let value = Managed::new(21u32);
    let (returned, violations) = capture(|| drive(produce_unpinned, &value));
    assert_eq!(returned, value.as_ptr().cast::<c_void>());

    let v = only(&violations);
    assert_callback_returned_unpinned(
        v,
        "ffi-check: result of callback `produce_unpinned` is unpinned managed pointer",
    );
    assert_eq!(v.callee(), Some("produce_unpinned"));
    assert_eq!(v.call_site().map(|s| s.file()), Some(file!()));
    let region = &v.regions()[0];
    assert_eq!(region.role(), "returned");
    assert_eq!(region.addr(), value.addr());
    assert_eq!(region.type_name(), Some("u32"));
    assert_eq!(region.alloc_site().map(|s| s.file()), Some(file!()));
}

#[test]
fn callback_returning_pinned_memory_holding_unpinned_pointer_is_reported() {
    let target = Managed::new(5u32);
    let table = Pinned::new([target.as_ptr()]);
    let (_, violations) = capture(|| drive(produce_pinned_table, &table));

    let v = only(&violations);
    assert_callback_returned_unpinned(
        v,
        "ffi-check: result of callback `produce_pinned_table` points to unpinned managed pointer",
    );
    assert_eq!(v.callee(), Some("produce_pinned_table"));
    assert_eq!(v.regions()[0].role(), "returned");
    assert_eq!(v.regions()[0].addr(), table.addr());
    assert_eq!(v.regions()[1].role(), "points to");
    assert_eq!(v.regions()[1].addr(), target.addr());
}

#[test]
fn callback_returning_pinned_memory_is_ok() {
    let value = Pinned::new(22u32);
    let returned = assert_clean(|| drive(produce_pinned, &value));
    assert_eq!(returned, value.as_ptr().cast::<c_void>());
}

#[test]
fn callback_returning_c_memory_is_ok() {
    let value = CBox::new(23u32);
    let returned = assert_clean(|| drive(produce_c_memory, &value));
    assert_eq!(returned, value.as_ptr().cast::<c_void>());
}

#[repr(C)]
struct Tally {
    calls: usize,
    sum: i64,
    stop_at: c_int,
}

/// Counts and sums the items; asks C to stop at `stop_at`.
unsafe extern "C" fn count(user: *mut c_void, item: c_int) -> c_int {
    callback!({
        // SAFETY: the caller passes a live, unshared `Tally` as user data.
        let tally = unsafe { &mut *(user as *mut Tally) };
        tally.calls += 1;
        tally.sum += i64::from(item);
        c_int::from(item == tally.stop_at)
    })
}

#[test]
fn for_each_with_counting_callback_is_ok() {
    let items = Managed::from_vec(vec![1 as c_int, 2, 3, 4]);
    let mut tally = Tally {
        calls: 0,
        sum: 0,
        stop_at: -1,
    };
    let visit: fixtures::FxVisitFn = Some(count);
    let calls = assert_clean(|| {
        let user = &mut tally as *mut Tally as *mut c_void;
        // SAFETY: `count` reads `tally` as a `Tally`; the items are live.
        unsafe { call!(fixtures::fx_for_each(&items, items.len(), visit, user)) }
    });
    assert_eq!(calls, 4);
    assert_eq!((tally.calls, tally.sum), (4, 10));
}

#[test]
fn for_each_stops_when_callback_says_so() {
    let items = Managed::from_vec(vec![1 as c_int, 2, 3, 4]);
    let mut tally = Tally {
        calls: 0,
        sum: 0,
        stop_at: 2,
    };
    let visit: fixtures::FxVisitFn = Some(count);
    let calls = assert_clean(|| {
        let user = &mut tally as *mut Tally as *mut c_void;
        // SAFETY: `count` reads `tally` as a `Tally`; the items are live.
        unsafe { call!(fixtures::fx_for_each(&items, items.len(), visit, user)) }
    });
    assert_eq!(calls, 2);
    assert_eq!((tally.calls, tally.sum), (2, 3));
}
