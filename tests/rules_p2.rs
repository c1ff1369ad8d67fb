//! Rule P2: C may not keep a pointer to unpinned managed memory after the
//! call that lent it returns. `fx_keep` stores its argument in a global slot
//! and says so (`ffi_check_retain`), so the check fires at once.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::c_void;

use common::fixtures;
use common::{assert_report_line, forget, only, slot};
use ffi_check::{
    assert_clean, call, capture, CBox, Managed, Pinned, Pinner, Violation, ViolationKind,
};

/// The shape every P2 report has: its kind, the first line, the help line.
fn assert_retained(v: &Violation, first_line: &str) {
    assert_report_line(v, ViolationKind::Retained, "P2", first_line);
}

#[test]
fn c_keeping_unpinned_managed_pointer_is_reported_at_once() {
    let _slot = slot();
    let lent = Managed::new(1u64);

    let (_, violations) = capture(|| {
        // SAFETY: fx_keep stores the pointer; the memory outlives the slot
        // (it is emptied below, before `lent` drops).
        unsafe { call!(fixtures::fx_keep(&lent)) }
    });
    assert_eq!(
        // SAFETY: fx_kept only reads the slot.
        unsafe { fixtures::fx_kept() },
        lent.as_ptr().cast::<c_void>()
    );
    forget();

    let v = only(&violations);
    assert_retained(
        v,
        "ffi-check: C keeps a pointer to unpinned managed memory after the call (`fx_keep`)",
    );
    assert_eq!(v.callee(), Some("fx_keep"));
    let site = v.call_site().expect("the C site that retained it");
    assert!(site.is_c(), "{site}");
    assert!(site.file().ends_with("fixtures.c"), "{site}");

    let region = &v.regions()[0];
    assert_eq!(region.role(), "retained region");
    assert_eq!(region.addr(), lent.addr());
    assert_eq!(region.type_name(), Some("u64"));
    assert_eq!(region.alloc_site().map(|s| s.file()), Some(file!()));
    let report = v.to_string();
    assert!(
        report.contains(&format!("lent by the call at {}:", file!())),
        "{report}"
    );
}

#[test]
fn c_keeping_unpinned_pointer_outside_call_names_no_callee() {
    let _slot = slot();
    let lent = Managed::new(2u64);

    let (_, violations) = capture(|| {
        // SAFETY: as above; called directly, not through `call!`.
        unsafe { fixtures::fx_keep(lent.as_ptr().cast()) }
    });
    forget();

    let v = only(&violations);
    assert_retained(
        v,
        "ffi-check: C keeps a pointer to unpinned managed memory after the call",
    );
    assert_eq!(v.callee(), None);
    assert_eq!(v.regions()[0].addr(), lent.addr());
}

#[test]
fn keeping_pinned_memory_is_ok() {
    let _slot = slot();
    let kept = Pinned::new(3u64);
    assert_clean(|| {
        // SAFETY: the memory is pinned and outlives the slot.
        unsafe { call!(fixtures::fx_keep(&kept)) };
        assert_eq!(
            // SAFETY: fx_kept only reads the slot.
            unsafe { fixtures::fx_kept() },
            kept.as_ptr().cast::<c_void>()
        );
        forget();
    });
}

#[test]
fn keeping_memory_pinned_by_a_pinner_is_ok() {
    let _slot = slot();
    let kept = Managed::new(4u64);
    assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(&kept);
        // SAFETY: the memory is pinned and outlives the slot.
        unsafe { call!(fixtures::fx_keep(&kept)) };
        forget();
        pinner.unpin();
    });
}

#[test]
fn keeping_c_memory_is_ok() {
    let _slot = slot();
    assert_clean(|| {
        let kept = CBox::new(5u64);
        // SAFETY: the C memory outlives the slot.
        unsafe { call!(fixtures::fx_keep(&kept)) };
        assert_eq!(
            // SAFETY: fx_kept only reads the slot.
            unsafe { fixtures::fx_kept() },
            kept.as_ptr().cast::<c_void>()
        );
        forget();
    });
}
