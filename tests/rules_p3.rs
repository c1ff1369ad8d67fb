//! Rule P3: managed memory may not be freed, or unpinned, while C still holds
//! a pointer into it (`FreedWhileRetained`), and a `Managed` may not be
//! dropped while a `Pinner` still pins it (`FreedWhilePinned`).
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::c_void;

use common::fixtures;
use common::{assert_report_line, forget, only, slot};
use ffi_check::{assert_clean, call, capture, Managed, Pinned, Pinner, Violation, ViolationKind};

/// The shape every P3 report has: its kind, the first line, the help line.
fn assert_p3_report(v: &Violation, kind: ViolationKind, first_line: &str) {
    assert_report_line(v, kind, "P3", first_line);
}

/// The retain site of the report's region is `fx_keep`'s call of
/// `ffi_check_retain` in the C fixture library.
fn assert_retained_by_fixture(v: &Violation, addr: usize) {
    let region = &v.regions()[0];
    assert_eq!(region.role(), "retained region");
    assert_eq!(region.addr(), addr);
    let retain = region.retain_site().expect("where C retained it");
    assert!(retain.is_c(), "{retain}");
    assert!(
        retain.file().ends_with("csrc/fixtures/fixtures.c"),
        "{retain}"
    );
    let report = v.to_string();
    assert!(
        report.contains(&format!("retained by C at {retain}")),
        "{report}"
    );
    assert!(report.contains("fixtures.c"), "{report}");
}

fn keep<T: ?Sized>(p: *const T) {
    // SAFETY: fx_keep only stores the pointer in the global slot.
    unsafe { call!(fixtures::fx_keep(p.cast::<c_void>())) }
}

#[test]
fn dropping_pinned_memory_c_still_keeps_is_reported() {
    let _slot = slot();
    let kept = Pinned::new(0x5eed_u64);
    let addr = kept.addr();
    assert_clean(|| keep(kept.as_ptr()));

    let (_, violations) = capture(|| drop(kept));
    let v = only(&violations);
    assert_p3_report(
        v,
        ViolationKind::FreedWhileRetained,
        "ffi-check: managed memory freed while C still holds a pointer to it",
    );
    assert_retained_by_fixture(v, addr);
    assert!(
        v.to_string()
            .contains("the memory is kept (leaked) so that C's pointer stays valid"),
        "{v}"
    );

    // The memory was leaked, not freed: C's pointer still reads the value.
    // SAFETY: the slot holds the kept pointer, whose memory was not freed.
    let still = unsafe { *fixtures::fx_kept().cast::<u64>() };
    assert_eq!(still, 0x5eed);
    forget();
}

#[test]
fn unpinning_memory_c_still_keeps_is_reported() {
    let _slot = slot();
    let kept = Managed::new(6u64);
    let mut pinner = Pinner::new();
    pinner.pin(&kept);
    assert_clean(|| keep(kept.as_ptr()));

    let (_, violations) = capture(|| pinner.unpin());
    let v = only(&violations);
    assert_p3_report(
        v,
        ViolationKind::FreedWhileRetained,
        "ffi-check: managed memory unpinned while C still holds a pointer to it",
    );
    assert_retained_by_fixture(v, kept.addr());

    // Releasing it afterwards lets the memory drop cleanly.
    assert_clean(|| {
        forget();
        drop(kept);
    });
}

#[test]
fn releasing_before_drop_is_ok() {
    let _slot = slot();
    assert_clean(|| {
        let kept = Pinned::new(7u64);
        keep(kept.as_ptr());
        forget();
        drop(kept);
    });
}

#[test]
fn releasing_before_unpin_is_ok() {
    let _slot = slot();
    assert_clean(|| {
        let kept = Managed::new(8u64);
        let mut pinner = Pinner::new();
        pinner.pin(&kept);
        keep(kept.as_ptr());
        forget();
        pinner.unpin();
        drop(kept);
    });
}

#[test]
fn dropping_managed_memory_a_pinner_pins_is_reported() {
    let (value, value_line) = (Managed::new(9u64), line!());
    let addr = value.addr();
    let mut pinner = Pinner::new();
    let pin_line = line!() + 1;
    pinner.pin(&value);

    let (_, violations) = capture(|| drop(value));
    let v = only(&violations);
    assert_p3_report(
        v,
        ViolationKind::FreedWhilePinned,
        "ffi-check: managed memory dropped while a Pinner still pins it",
    );
    let region = &v.regions()[0];
    assert_eq!(region.role(), "pinned region");
    assert_eq!(region.addr(), addr);
    let alloc = region.alloc_site().expect("where it was allocated");
    assert_eq!((alloc.file(), alloc.line()), (file!(), value_line));
    let pin = region.pin_site().expect("where it was pinned");
    assert_eq!((pin.file(), pin.line()), (file!(), pin_line));

    // The pinner may still unpin what it pinned.
    assert_clean(|| pinner.unpin());
}

#[test]
fn dropping_after_unpin_is_ok() {
    assert_clean(|| {
        let value = Managed::new(10u64);
        let mut pinner = Pinner::new();
        pinner.pin(&value);
        pinner.unpin();
        drop(value);
    });
}

#[test]
fn dropping_after_the_pinner_drops_is_ok() {
    assert_clean(|| {
        let value = Managed::new(11u64);
        {
            let mut pinner = Pinner::new();
            pinner.pin(&value);
        }
        drop(value);
    });
}
