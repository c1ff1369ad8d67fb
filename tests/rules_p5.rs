//! Rule P5: Rust may not store a pointer to unpinned managed memory into C
//! memory, where C may find it after Rust has moved or freed what it points
//! to. Checked on every `CBox::set`.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::c_int;

use common::fixtures::FxView;
use common::{assert_report_line, only};
use ffi_check::{assert_clean, capture, CBox, Managed, Pinned, Pinner, Violation, ViolationKind};

/// The shape every P5 report has: its kind, the first line, the help line.
fn assert_stored_unpinned(v: &Violation) {
    let first_line = "ffi-check: unpinned managed pointer stored into C memory";
    assert_report_line(v, ViolationKind::StoredUnpinned, "P5", first_line);
}

#[test]
fn storing_unpinned_pointer_in_c_memory_is_reported() {
    let mut slot = CBox::new(std::ptr::null::<c_int>());
    let (value, value_line) = (Managed::<c_int>::new(3), line!());

    let (_, violations) = capture(|| slot.set(value.as_ptr()));
    assert_eq!(*slot, value.as_ptr(), "the store is still made");

    let v = only(&violations);
    assert_stored_unpinned(v);
    assert_eq!(v.call_site().map(|s| s.file()), Some(file!()));
    let regions = v.regions();
    assert_eq!(regions[0].role(), "C region written");
    assert_eq!(regions[0].addr(), slot.addr());
    assert_eq!(regions[1].role(), "points to");
    assert_eq!(regions[1].addr(), value.addr());
    let site = regions[1]
        .alloc_site()
        .expect("where the pointee was allocated");
    assert_eq!((site.file(), site.line()), (file!(), value_line));
    // C memory lets go before the pointee drops (in mode 2 a scan would
    // otherwise find the pointer there: `FreedWhileRetained`).
    slot.set(std::ptr::null());
}

#[test]
fn storing_struct_holding_unpinned_pointer_in_c_memory_is_reported() {
    let data = Managed::from_vec(vec![1 as c_int, 2, 3]);
    let mut view = CBox::new(FxView {
        data: std::ptr::null(),
        len: 0,
    });

    let (_, violations) = capture(|| {
        view.set(FxView {
            data: data.as_ptr(),
            len: data.len(),
        })
    });
    let v = only(&violations);
    assert_stored_unpinned(v);
    assert_eq!(v.regions()[0].addr(), view.addr());
    assert_eq!(v.regions()[1].addr(), data.addr());
}

#[test]
fn storing_pinned_pointer_in_c_memory_is_ok() {
    let value = Pinned::<c_int>::new(4);
    assert_clean(|| {
        let mut slot = CBox::new(std::ptr::null::<c_int>());
        slot.set(value.as_ptr());
        assert_eq!(*slot, value.as_ptr());
    });
}

#[test]
fn storing_pointer_pinned_by_a_pinner_is_ok() {
    let value = Managed::<c_int>::new(5);
    let mut pinner = Pinner::new();
    pinner.pin(&value);
    assert_clean(|| {
        let mut slot = CBox::new(std::ptr::null::<c_int>());
        slot.set(value.as_ptr());
    });
}

#[test]
fn storing_pointer_to_c_memory_is_ok() {
    assert_clean(|| {
        let value = CBox::<c_int>::new(6);
        let mut slot = CBox::new(std::ptr::null::<c_int>());
        slot.set(value.as_ptr());
        // SAFETY: the slot points to the live C int.
        assert_eq!(unsafe { **slot }, 6);
    });
}
