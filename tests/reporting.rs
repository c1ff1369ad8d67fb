//! SPEC §4, reporting: what a violation does (`capture`, `assert_clean`, the
//! actions), what a report looks like (the text and the JSON line), the
//! `FFI_CHECK_LOG` file, and the `stats()` counters.
//!
//! The actions and the log file are process-wide, so those tests run this
//! test binary again as a child process with the environment set; each child
//! test does nothing unless the variable `FFI_CHECK_TEST_CHILD` names it.

// The checks only exist in builds that compile them in.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Barrier};

use common::{fixtures, is_child, kinds, run_child, text};
use ffi_check::{
    assert_clean, c_free, c_malloc, call, callback, capture, stats, to_c, Managed, RegionKind,
    RegionState, ViolationKind,
};

// ---- shorthands --------------------------------------------------------------

/// A double free of a fresh 32-byte block through `c_free`.
fn double_free() {
    let p = c_malloc(32);
    // SAFETY: p came from c_malloc; the second free is the mistake under
    // test, which the checker reports and does not carry out.
    unsafe {
        c_free(p);
        c_free(p);
    }
}

/// A `LossyConversion`: 2^40 does not fit in a `c_int`.
fn lossy() {
    let _: c_int = to_c(1usize << 40);
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .expect("a string panic payload"),
    }
}

// ---- capture ----------------------------------------------------------------

#[test]
fn capture_collects_violations_instead_of_panicking() {
    let ((), v) = capture(double_free);
    assert_eq!(kinds(&v), [ViolationKind::DoubleFree]);
    let report = v[0].to_string();
    assert!(report.starts_with("ffi-check: double free"), "{report}");
    assert!(report.lines().last().unwrap().starts_with("help: "));
}

#[test]
fn capture_returns_the_closure_value() {
    let (n, v) = capture(|| 6 * 7);
    assert_eq!(n, 42);
    assert!(v.is_empty());
}

#[test]
fn capture_sees_only_this_threads_violations() {
    // Both threads are inside `capture` at the same time, and each makes one
    // violation while the other is still inside.
    let both_inside = Arc::new(Barrier::new(2));
    let other_done = Arc::new(Barrier::new(2));
    let (b1, b2) = (Arc::clone(&both_inside), Arc::clone(&other_done));
    let other = std::thread::Builder::new()
        .name("capture-other".into())
        .spawn(move || {
            capture(|| {
                b1.wait();
                double_free();
                b2.wait();
            })
            .1
        })
        .unwrap();
    let ((), mine) = capture(|| {
        both_inside.wait();
        other_done.wait();
        lossy();
    });
    let theirs = other.join().unwrap();
    assert_eq!(kinds(&mine), [ViolationKind::LossyConversion]);
    assert_eq!(kinds(&theirs), [ViolationKind::DoubleFree]);
    assert_eq!(theirs[0].thread(), "capture-other");
    assert_ne!(mine[0].thread(), "capture-other");
}

#[test]
fn capture_does_not_swallow_other_threads_violations() {
    // A thread outside `capture` keeps the default action (panic) while this
    // thread is inside one.
    let ((), mine) = capture(|| {
        let other = std::thread::spawn(double_free);
        let outcome = other.join();
        assert!(
            outcome.is_err(),
            "the other thread's double free must panic"
        );
    });
    assert!(mine.is_empty(), "{mine:?}");
}

#[test]
fn capture_nests_inner_keeps_its_own() {
    let ((inner_v, ()), outer_v) = capture(|| {
        lossy();
        let ((), inner) = capture(double_free);
        lossy();
        (inner, ())
    });
    assert_eq!(kinds(&inner_v), [ViolationKind::DoubleFree]);
    assert_eq!(
        kinds(&outer_v),
        [
            ViolationKind::LossyConversion,
            ViolationKind::LossyConversion
        ]
    );
}

#[test]
fn capture_ends_when_its_closure_panics() {
    let outcome = catch_unwind(|| capture(|| panic!("boom inside capture")));
    assert!(outcome.is_err());
    // No capture is left active: the next violation takes the default action.
    let after = catch_unwind(lossy);
    let message = panic_message(after.expect_err("the violation must panic"));
    assert!(message.starts_with("ffi-check: "), "{message}");
}

#[test]
fn capture_after_inner_panic_reports_to_the_outer() {
    let ((), outer) = capture(|| {
        let inner = catch_unwind(|| capture(|| panic!("boom in the inner capture")));
        assert!(inner.is_err());
        lossy();
    });
    assert_eq!(kinds(&outer), [ViolationKind::LossyConversion]);
}

// ---- the default action -------------------------------------------------------

#[test]
fn default_action_panics_with_the_report() {
    let before = stats();
    let p = c_malloc(32);
    // SAFETY: p came from c_malloc and is freed once here.
    unsafe { c_free(p) };
    // SAFETY: the second free is the mistake under test; the checker panics
    // before freeing anything.
    let outcome = catch_unwind(|| unsafe { c_free(p) });
    let message = panic_message(outcome.expect_err("a double free must panic"));
    let first = message.lines().next().unwrap();
    assert!(first.starts_with("ffi-check: double free"), "{message}");
    assert!(message.lines().any(|l| l == "  rule C1 (DoubleFree)"));
    assert!(message.lines().last().unwrap().starts_with("help: "));
    // Reaching this line means the block was not freed twice: the C
    // allocator aborts the process on a real double free.
    assert!(
        stats().violations(ViolationKind::DoubleFree)
            > before.violations(ViolationKind::DoubleFree)
    );
}

// ---- assert_clean ---------------------------------------------------------------

#[test]
fn assert_clean_returns_the_value_when_clean() {
    let n = assert_clean(|| {
        let buf = Managed::from_vec(vec![1u8, 2, 3]);
        let n = buf.len();
        // SAFETY: fx_checksum reads the n bytes lent to it.
        unsafe { call!(fixtures::fx_checksum(&buf, n)) }
    });
    assert_eq!(n, 6);
}

#[test]
fn assert_clean_panics_on_a_violation() {
    let outcome = catch_unwind(|| assert_clean(double_free));
    let message = panic_message(outcome.expect_err("assert_clean must panic"));
    assert!(
        message.starts_with("ffi-check: assert_clean found 1 violation(s)"),
        "{message}"
    );
    assert!(message.contains("ffi-check: double free"), "{message}");
    assert!(message.contains("  rule C1 (DoubleFree)"), "{message}");
    assert!(message.contains("help: "), "{message}");
}

#[test]
fn assert_clean_panics_on_a_leak() {
    let mut leaked: *mut c_void = std::ptr::null_mut();
    let line = line!() + 1;
    let outcome = catch_unwind(AssertUnwindSafe(|| assert_clean(|| leaked = c_malloc(24))));
    let message = panic_message(outcome.expect_err("assert_clean must panic"));
    assert!(
        message.starts_with("ffi-check: assert_clean found 0 violation(s) and 1 leak group(s)"),
        "{message}"
    );
    assert!(message.contains("24"), "{message}");
    assert!(
        message.contains(&format!("tests/reporting.rs:{line}:")),
        "{message}"
    );
    // SAFETY: leaked came from c_malloc and is freed once.
    unsafe { c_free(leaked) };
}

// ---- stats --------------------------------------------------------------------

#[test]
fn stats_count_live_c_regions() {
    let before = stats();
    let p = c_malloc(40);
    let after = stats();
    // Other tests free C memory meanwhile: count their frees back in.
    let freed_meanwhile = after.freed_c_regions - before.freed_c_regions;
    assert!(after.live_c_regions + freed_meanwhile > before.live_c_regions);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    assert!(stats().freed_c_regions > after.freed_c_regions);
}

#[test]
fn stats_count_captured_violations_by_kind() {
    let before = stats();
    let ((), v) = capture(lossy);
    assert_eq!(v.len(), 1);
    let after = stats();
    assert!(
        after.violations(ViolationKind::LossyConversion)
            > before.violations(ViolationKind::LossyConversion)
    );
    assert!(after.total_violations() > before.total_violations());
}

// ---- the report's text and JSON ----------------------------------------------------

#[test]
fn report_text_has_rule_regions_site_and_help() {
    let p = c_malloc(32);
    let alloc_line = line!() - 1;
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    let free_line = line!() - 1;
    // SAFETY: the second free is the mistake under test; it is not done.
    let ((), v) = capture(|| unsafe { c_free(p) });
    let site_line = line!() - 1;
    assert_eq!(v.len(), 1);
    let report = v[0].to_string();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], v[0].first_line());
    assert!(
        lines[0].starts_with("ffi-check: double free of C memory"),
        "{report}"
    );
    assert_eq!(lines[1], "  rule C1 (DoubleFree)");
    let thread = std::thread::current().name().unwrap().to_owned();
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("  at tests/reporting.rs:{site_line}:"))
                && l.ends_with(&format!(" on thread `{thread}`"))
        ),
        "{report}"
    );
    let region = format!("{:#x} (32 bytes, C memory, freed", p as usize);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  ") && l.contains(&region)),
        "{report}"
    );
    assert!(
        lines.iter().any(|l| l
            .trim_start()
            .starts_with(&format!("allocated at tests/reporting.rs:{alloc_line}:"))),
        "{report}"
    );
    assert!(
        lines.iter().any(|l| l
            .trim_start()
            .starts_with(&format!("first freed at tests/reporting.rs:{free_line}:"))),
        "{report}"
    );
    assert_eq!(*lines.last().unwrap(), v[0].help());
    assert!(lines.last().unwrap().starts_with("help: "));
}

#[test]
fn report_accessors_name_what_the_text_says() {
    let p = c_malloc(16);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    // SAFETY: the second free is the mistake under test; it is not done.
    let ((), v) = capture(|| unsafe { c_free(p) });
    let site_line = line!() - 1;
    let v = &v[0];
    assert_eq!(v.kind(), ViolationKind::DoubleFree);
    assert_eq!(v.rule(), "C1");
    assert_eq!(v.first_line(), format!("ffi-check: {}", v.message()));
    assert_eq!(v.callee(), None);
    let site = v.call_site().expect("the free's site");
    assert_eq!(site.file(), "tests/reporting.rs");
    assert_eq!(site.line(), site_line);
    let r = &v.regions()[0];
    assert_eq!(r.addr(), p as usize);
    assert_eq!(r.size(), 16);
    assert_eq!(r.kind(), RegionKind::C);
    assert_eq!(r.state(), RegionState::Freed);
    assert!(r.alloc_site().is_some() && r.free_site().is_some());
}

#[test]
fn report_json_is_one_line_with_the_stable_fields() {
    let p = c_malloc(32);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    // SAFETY: the second free is the mistake under test; it is not done.
    let ((), v) = capture(|| unsafe { c_free(p) });
    let site_line = line!() - 1;
    let json = v[0].to_json();
    assert!(!json.contains('\n'), "{json}");
    assert!(json.starts_with("{\"kind\":\"DoubleFree\","), "{json}");
    assert!(json.ends_with('}'), "{json}");
    assert!(json.contains("\"rule\":\"C1\""), "{json}");
    assert!(
        json.contains(&format!(
            "\"message\":\"{}\"",
            v[0].first_line().replace('"', "\\\"")
        )),
        "{json}"
    );
    assert!(json.contains("\"callee\":null"), "{json}");
    assert!(
        json.contains(&format!("\"site\":\"tests/reporting.rs:{site_line}:")),
        "{json}"
    );
    let thread = std::thread::current().name().unwrap().to_owned();
    assert!(json.contains(&format!("\"thread\":\"{thread}\"")), "{json}");
    assert!(json.contains("\"regions\":[{"), "{json}");
    assert!(
        json.contains(&format!("\"addr\":\"{:#x}\"", p as usize)),
        "{json}"
    );
    assert!(json.contains("\"size\":32"), "{json}");
    assert!(json.contains("\"kind\":\"C\""), "{json}");
    assert!(json.contains("\"state\":\"freed\""), "{json}");
}

#[test]
fn report_json_names_the_callee_of_a_call() {
    let value = Managed::new(5 as c_int);
    let table = Managed::new([value.as_ptr()]);
    // SAFETY: fx_sum_nested reads one pointer to one live int.
    let (sum, v) = capture(|| unsafe { call!(fixtures::fx_sum_nested(&table, 1)) });
    let site_line = line!() - 1;
    assert_eq!(sum, 5);
    assert_eq!(kinds(&v), [ViolationKind::UnpinnedNested]);
    let json = v[0].to_json();
    assert!(json.starts_with("{\"kind\":\"UnpinnedNested\","), "{json}");
    assert!(json.contains("\"rule\":\"P1\""), "{json}");
    assert!(json.contains("\"callee\":\"fx_sum_nested\""), "{json}");
    assert!(
        json.contains(&format!("\"site\":\"tests/reporting.rs:{site_line}:")),
        "{json}"
    );
    assert!(json.contains("\"kind\":\"managed\""), "{json}");
    assert!(json.contains("\"state\":\"live\""), "{json}");
}

// ---- FFI_CHECK_LOG -------------------------------------------------------------------

#[test]
fn log_file_gets_one_json_line_per_violation() {
    let path = std::env::temp_dir().join(format!("ffi-check-log-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let out = run_child(
        "child_two_threads_violate_inside_capture",
        &[("FFI_CHECK_LOG", path.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(&path).expect("the log file");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    for line in &lines {
        assert!(
            line.starts_with("{\"kind\":") && line.ends_with('}'),
            "{line}"
        );
    }
    let double = lines
        .iter()
        .find(|l| l.starts_with("{\"kind\":\"DoubleFree\","));
    let lossy = lines
        .iter()
        .find(|l| l.starts_with("{\"kind\":\"LossyConversion\","));
    assert!(
        double.expect(&log).contains("\"thread\":\"log-writer-a\""),
        "{log}"
    );
    assert!(
        lossy.expect(&log).contains("\"thread\":\"log-writer-b\""),
        "{log}"
    );
}

#[test]
fn child_two_threads_violate_inside_capture() {
    if !is_child("child_two_threads_violate_inside_capture") {
        return;
    }
    let a = std::thread::Builder::new()
        .name("log-writer-a".into())
        .spawn(|| capture(double_free).1.len())
        .unwrap();
    let b = std::thread::Builder::new()
        .name("log-writer-b".into())
        .spawn(|| capture(lossy).1.len())
        .unwrap();
    assert_eq!(a.join().unwrap() + b.join().unwrap(), 2);
}

// ---- FFI_CHECK_ACTION ---------------------------------------------------------------

const AFTER: &str = "carried on after the double free";

#[test]
fn log_action_reports_and_carries_on() {
    let out = run_child(
        "child_double_free_outside_capture",
        &[("FFI_CHECK_ACTION", "log")],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(text(&out.stdout).contains(AFTER));
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("ffi-check: double free of C memory")),
        "{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l == "  rule C1 (DoubleFree)"),
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l.starts_with("help: ")), "{stderr}");
}

#[test]
fn abort_action_reports_and_aborts() {
    use std::os::unix::process::ExitStatusExt;
    let out = run_child(
        "child_double_free_outside_capture",
        &[("FFI_CHECK_ACTION", "abort")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), None, "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(!text(&out.stdout).contains(AFTER));
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("ffi-check: double free of C memory")),
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l.starts_with("help: ")), "{stderr}");
}

#[test]
fn child_double_free_outside_capture() {
    if !is_child("child_double_free_outside_capture") {
        return;
    }
    double_free();
    println!("{AFTER}");
}

unsafe extern "C" fn free_twice_visitor(user: *mut c_void, _item: c_int) -> c_int {
    callback!({
        // SAFETY: C passes back the c_malloc'd block it was given as user
        // data; the second free is the mistake under test.
        unsafe {
            c_free(user);
            c_free(user);
        }
        0
    })
}

#[test]
fn panic_inside_a_callback_aborts_instead_of_unwinding_into_c() {
    use std::os::unix::process::ExitStatusExt;
    let out = run_child("child_callback_double_frees", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(!text(&out.stdout).contains(AFTER));
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("ffi-check: double free of C memory")),
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l.starts_with("help: ")), "{stderr}");
    assert!(stderr.contains("would unwind into C"), "{stderr}");
}

#[test]
fn child_callback_double_frees() {
    if !is_child("child_callback_double_frees") {
        return;
    }
    let items = Managed::from_vec(vec![1 as c_int]);
    let block = c_malloc(8);
    // SAFETY: fx_for_each reads one int and calls the visitor once with
    // `block` as its user data.
    unsafe {
        call!(fixtures::fx_for_each(
            &items,
            1,
            Some(free_twice_visitor as unsafe extern "C" fn(*mut c_void, c_int) -> c_int),
            block
        ))
    };
    println!("{AFTER}");
}

// ---- where a panic points ----------------------------------------------------

extern "C" fn first_byte(p: *const u8) -> u8 {
    // SAFETY: the test passes a pointer into a block it keeps allocated
    // (freed but quarantined, so still mapped).
    unsafe { *p }
}

/// Runs `f`, which must panic with a violation, and returns the file and
/// line the panic names (its location, as the panic hook sees it).
fn panic_location(f: impl FnOnce()) -> (String, u32) {
    use std::sync::Mutex;
    static SEEN: Mutex<Option<(String, u32)>> = Mutex::new(None);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| (l.file().to_owned(), l.line()));
        *SEEN.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    assert!(r.is_err(), "the violation panicked");
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("the panic has a location")
}

#[test]
fn a_violation_panics_at_the_users_line() {
    if !is_child("a_violation_panics_at_the_users_line") {
        let out = run_child(
            "a_violation_panics_at_the_users_line",
            &[("FFI_CHECK_ACTION", "panic")],
        );
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        return;
    }
    let here = file!().to_owned();

    let (file, line) = panic_location(|| {
        let _: c_int = to_c(1usize << 40); // the conversion's line
    });
    assert_eq!((file, line), (here.clone(), line!() - 2), "a conversion");

    let p = c_malloc(8);
    // SAFETY: p came from c_malloc and is freed once here.
    unsafe { c_free(p) };
    let (file, line) = panic_location(|| {
        // SAFETY: the second free is the mistake under test: reported, skipped.
        unsafe { c_free(p) }; // the free's line
    });
    assert_eq!((file, line), (here.clone(), line!() - 2), "a free");

    let q = c_malloc(8).cast::<u8>();
    // SAFETY: q came from c_malloc and is freed once here.
    unsafe { c_free(q.cast::<c_void>()) };
    let (file, line) = panic_location(|| {
        let _ = call!(first_byte(q as *const u8)); // the call's line
    });
    assert_eq!((file, line), (here, line!() - 2), "a call");
}
