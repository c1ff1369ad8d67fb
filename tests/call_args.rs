//! The argument shapes `call!` takes beyond the wrappers: a plain `&T` or
//! `&mut T` (an out-parameter, a struct on the stack), lent for the call and
//! looked through by its type, and the shapes the wrappers already had.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::c_int;

use common::fixtures::{self, FxView};
use common::{assert_report_line, only};
use ffi_check::{assert_clean, call, capture, Managed, Pinner, ViolationKind};

#[test]
fn a_mut_reference_is_an_out_parameter() {
    let mut len = 0usize;
    assert_clean(|| {
        // SAFETY: fx_unterminated writes the length through the pointer.
        let p = unsafe { call!(fixtures::fx_unterminated(&mut len)) };
        // SAFETY: p came from the fixture's tracked malloc; freed once.
        unsafe { ffi_check::c_free(p.cast()) };
    });
    assert_eq!(len, 4, "C wrote through the reference");
}

#[test]
fn a_reference_to_a_struct_on_the_stack_is_lent_and_looked_through() {
    let values = Managed::from_vec(vec![1 as c_int, 2, 3]);
    let view = FxView {
        data: values.as_ptr(),
        len: values.len(),
    };
    // The struct lives on the stack; its pointer is to unpinned memory
    // declared `Managed`: rule P1, found by the struct's type.
    let (sum, v) = capture(|| {
        // SAFETY: the view names three live ints.
        unsafe { call!(fixtures::fx_sum_view(&view)) }
    });
    assert_eq!(sum, 6);
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::UnpinnedNested,
        "P1",
        "ffi-check: argument 1 of `fx_sum_view` has managed pointer to unpinned managed pointer",
    );
    // Pinned, the same call is clean.
    let sum = assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(&values);
        // SAFETY: as above.
        unsafe { call!(fixtures::fx_sum_view(&view)) }
    });
    assert_eq!(sum, 6);
}

#[test]
fn a_mut_reference_passes_where_c_takes_a_const_pointer() {
    let values = Managed::from_vec(vec![4 as c_int, 5]);
    let mut view = FxView {
        data: values.as_ptr(),
        len: values.len(),
    };
    let sum = assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(&values);
        // SAFETY: the view names two live, pinned ints.
        unsafe { call!(fixtures::fx_sum_view(&mut view)) }
    });
    assert_eq!(sum, 9);
}

#[test]
fn a_mut_reference_to_a_number_is_written_by_c() {
    extern "C" fn set(p: *mut u64) -> c_int {
        // SAFETY: the caller lends one writable u64.
        unsafe { *p = 42 };
        0
    }
    let mut n = 0u64;
    // Lent as a value that could hold a pointer (its word is read by the
    // scan: zero points nowhere), then written by C.
    let r = assert_clean(|| call!(set(&mut n)));
    assert_eq!((r, n), (0, 42));
}

#[test]
fn checks_off_a_reference_is_passed_as_it_is() {
    const NAME: &str = "checks_off_a_reference_is_passed_as_it_is";
    if !common::is_child(NAME) {
        common::child_passes(NAME, &[("FFI_CHECK", "0")]);
        return;
    }
    assert_eq!(ffi_check::mode(), ffi_check::Mode::Off);
    let mut len = 0usize;
    // SAFETY: as in the out-parameter test.
    let p = unsafe { call!(fixtures::fx_unterminated(&mut len)) };
    assert_eq!(len, 4);
    // SAFETY: p came from the fixture's malloc; freed once.
    unsafe { ffi_check::c_free(p.cast()) };
    // A function item in `Some(..)` takes the unchecked path as it is.
    let items = [1 as c_int, 2];
    let mut total: c_int = 0;
    // SAFETY: two live ints; `add_item` adds each to `total`.
    let calls = unsafe {
        call!(fixtures::fx_for_each(
            items.as_ptr(),
            items.len(),
            Some(add_item),
            &mut total as *mut c_int as *mut std::os::raw::c_void,
        ))
    };
    assert_eq!((calls, total), (2, 3));
}

#[test]
fn a_raw_pointer_to_a_struct_on_the_stack_is_looked_through_by_its_type() {
    let values = Managed::from_vec(vec![1 as c_int, 2]);
    let view = FxView {
        data: values.as_ptr(),
        len: values.len(),
    };
    let p: *const FxView = &view;
    assert_looked_through(p, &values, 3);
}

/// A raw pointer to a view of `values` is looked through by its type: the
/// unpinned ints are `UnpinnedNested`, and once pinned the call is clean.
/// Both calls return `sum`.
fn assert_looked_through(p: *const FxView, values: &Managed<[c_int]>, sum: i64) {
    let (got, v) = capture(|| {
        // SAFETY: the view names live ints.
        unsafe { call!(fixtures::fx_sum_view(p)) }
    });
    assert_eq!(got, sum);
    assert_report_line(
        only(&v),
        ViolationKind::UnpinnedNested,
        "P1",
        "ffi-check: argument 1 of `fx_sum_view` has managed pointer to unpinned managed pointer",
    );
    let got = assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(values);
        // SAFETY: as above, pinned.
        unsafe { call!(fixtures::fx_sum_view(p)) }
    });
    assert_eq!(got, sum);
}

#[test]
fn a_raw_pointer_to_a_dead_value_or_a_wild_address_does_not_crash_the_check() {
    // A pointer to a value whose scope ended, and a wild one: the check
    // reads only the live part of this thread's stack, so neither crashes
    // it, and C (which ignores them here) gets them as they are.
    extern "C" fn ignore(_p: *const FxView) -> c_int {
        0
    }
    let dangling: *const FxView = {
        let view = FxView {
            data: std::ptr::null(),
            len: 0,
        };
        &view as *const FxView
    };
    let r = assert_clean(|| call!(ignore(dangling)));
    assert_eq!(r, 0);
    let wild = 0x10 as *const FxView;
    assert_eq!(assert_clean(|| call!(ignore(wild))), 0);
}

// ---- function items --------------------------------------------------------

unsafe extern "C" fn add_item(user: *mut std::os::raw::c_void, item: c_int) -> c_int {
    ffi_check::callback!({
        // SAFETY: the test passes a `&mut c_int` as the user data.
        unsafe { *user.cast::<c_int>() += item };
        0
    })
}

#[test]
fn some_function_item_is_a_nullable_callback() {
    // `Some(f)` with a function item inside, as in plain Rust: the callee's
    // parameter type (`Option<unsafe extern "C" fn …>`) makes the pointer.
    let items = Managed::from_vec(vec![1 as c_int, 2, 3]);
    let mut total: c_int = 0;
    let calls = assert_clean(|| {
        // SAFETY: three live ints; `add_item` adds each to `total`.
        unsafe {
            call!(fixtures::fx_for_each(
                &items,
                items.len(),
                Some(add_item),
                &mut total as *mut c_int as *mut std::os::raw::c_void,
            ))
        }
    });
    assert_eq!((calls, total), (3, 6));
}

#[test]
fn a_bare_function_item_is_a_function_pointer() {
    // A callee that takes a non-nullable callback, as many C APIs do.
    type Visit = unsafe extern "C" fn(*mut std::os::raw::c_void, c_int) -> c_int;
    extern "C" fn apply(f: Visit, user: *mut std::os::raw::c_void, item: c_int) -> c_int {
        // SAFETY: `f` is a callback of the right type; `user` is its data.
        unsafe { f(user, item) }
    }
    let mut total: c_int = 10;
    let r = assert_clean(|| {
        call!(apply(
            add_item,
            &mut total as *mut c_int as *mut std::os::raw::c_void,
            5
        ))
    });
    assert_eq!((r, total), (0, 15));
}

#[test]
fn none_is_a_null_callback() {
    // No items, so C never calls the (null) callback.
    let items = Managed::from_vec(Vec::<c_int>::new());
    let calls = assert_clean(|| {
        // SAFETY: no items, no callback.
        unsafe {
            call!(fixtures::fx_for_each(
                &items,
                items.len(),
                None,
                std::ptr::null_mut()
            ))
        }
    });
    assert_eq!(calls, 0);
}

// ---- raw pointers to statics -----------------------------------------------

/// A C-style global descriptor, as a program keeps a config or table in a
/// `static` and lends C a pointer to it.
static mut GLOBAL_VIEW: FxView = FxView {
    data: std::ptr::null(),
    len: 0,
};

#[test]
fn a_raw_pointer_to_a_static_is_looked_through_by_its_type() {
    // The static is the program's own: in mode 2 every outermost call
    // scans the program's statics for what appeared during it, so another
    // test's call running meanwhile would find this test's write into the
    // static. Alone in a child process, in the parent's mode.
    if !common::alone_in_child("a_raw_pointer_to_a_static_is_looked_through_by_its_type") {
        return;
    }
    let values = Managed::from_vec(vec![4 as c_int, 5]);
    let p: *mut FxView = std::ptr::addr_of_mut!(GLOBAL_VIEW);
    // SAFETY: only this test touches the static.
    unsafe {
        (*p).data = values.as_ptr();
        (*p).len = values.len();
    }
    assert_looked_through(p.cast_const(), &values, 9);
    // SAFETY: as above; the view no longer names the ints.
    unsafe { (*p).data = std::ptr::null() };
}
