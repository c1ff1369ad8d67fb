//! Rule P6: a pin must end. A `Pinner` leaked while it pins something is
//! reported in the leak report, in Go's words ("found leaking pinned
//! pointer").
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use common::assert_report_line;
use ffi_check::{assert_clean, capture, LeakCheck, Managed, Pinner, ViolationKind};

const LEAKED_PIN_FIRST_LINE: &str =
    "ffi-check: found leaking pinned pointer; forgot to call Pinner::unpin()?";

#[test]
fn forgetting_a_pinner_that_pins_is_a_leaked_pin() {
    let value = Managed::new(1u64);
    let scope = LeakCheck::start();
    let (mut pinner, pinner_line) = (Pinner::new(), line!());
    pinner.pin(&value);
    std::mem::forget(pinner);
    let report = scope.finish();

    assert!(!report.is_empty());
    let pins = report.leaked_pins();
    assert_eq!(pins.len(), 1, "{report}");
    assert_eq!(pins[0].pinned_regions(), 1);
    assert_eq!(
        (pins[0].site().file(), pins[0].site().line()),
        (file!(), pinner_line)
    );

    let violations = report.violations();
    let v = violations
        .iter()
        .find(|v| v.kind() == ViolationKind::LeakedPin)
        .expect("a LeakedPin violation");
    assert_report_line(v, ViolationKind::LeakedPin, "P6", LEAKED_PIN_FIRST_LINE);
    let text = v.to_string();
    assert_eq!(v.regions()[0].role(), "still pinned");
    assert_eq!(v.regions()[0].addr(), value.addr());
    assert!(
        text.contains(&format!("the Pinner created at {}:{pinner_line}:", file!())),
        "{text}"
    );

    // The pin never ends, so the memory must never be dropped either.
    std::mem::forget(value);
}

#[test]
fn dropping_memory_whose_pinner_was_forgotten_is_freed_while_pinned() {
    let value = Managed::new(2u64);
    let addr = value.addr();
    let mut pinner = Pinner::new();
    pinner.pin(&value);
    std::mem::forget(pinner);

    let (_, violations) = capture(|| drop(value));
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0].kind(), ViolationKind::FreedWhilePinned);
    assert_eq!(violations[0].regions()[0].addr(), addr);
}

#[test]
fn pinner_that_unpins_leaves_no_leaked_pin() {
    let value = Managed::new(3u64);
    let scope = LeakCheck::start();
    let mut pinner = Pinner::new();
    pinner.pin(&value);
    pinner.unpin();
    std::mem::forget(pinner);
    let report = scope.finish();
    assert!(report.leaked_pins().is_empty(), "{report}");
    assert!(report.is_empty(), "{report}");
}

#[test]
fn pinner_that_drops_leaves_no_leaked_pin() {
    let value = Managed::new(4u64);
    assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(&value);
        drop(pinner);
    });
    let scope = LeakCheck::start();
    {
        let mut pinner = Pinner::new();
        pinner.pin(&value);
    }
    let report = scope.finish();
    assert!(report.leaked_pins().is_empty(), "{report}");
    assert!(report.violations().is_empty(), "{report}");
}

#[test]
fn forgetting_a_pinner_that_pins_nothing_is_not_a_leaked_pin() {
    let scope = LeakCheck::start();
    std::mem::forget(Pinner::new());
    let report = scope.finish();
    assert!(report.leaked_pins().is_empty(), "{report}");
}

#[test]
fn assert_clean_reports_a_leaked_pin() {
    let value = Managed::new(5u64);
    let outcome = std::panic::catch_unwind(|| {
        assert_clean(|| {
            let mut pinner = Pinner::new();
            pinner.pin(&value);
            std::mem::forget(pinner);
        })
    });
    let payload = outcome.expect_err("assert_clean panics on a leaked pin");
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("found leaking pinned pointer"), "{text}");
    std::mem::forget(value);
}
