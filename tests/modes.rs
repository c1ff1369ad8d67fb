//! SPEC §3, modes: `FFI_CHECK=0|1|2`, malformed values, `set_mode`, and
//! whether the checks are compiled in.
//!
//! The mode is process-wide, so every test here runs this test binary again
//! as a child process with the environment set; each child test does nothing
//! unless the variable `FFI_CHECK_TEST_CHILD` names it.

// The checks only exist in builds that compile them in.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::c_int;

use common::{child_passes, fixtures, is_child, kinds};
use ffi_check::{
    action, c_free, c_malloc, call, capture, mode, release, retain, set_mode, stats, to_c, Action,
    CBox, Managed, Mode, ViolationKind, COMPILED_IN,
};

// ---- child processes and shorthands ------------------------------------------

/// Three mistakes that mode 1 reports: lending a table of unpinned
/// pointers (P1), a lossy conversion (X1), and C keeping a pointer to
/// unpinned memory (P2). Returns what `capture` collected.
fn three_mistakes() -> Vec<ViolationKind> {
    let value = Managed::new(5 as c_int);
    let table = Managed::new([value.as_ptr()]);
    let kept = Managed::new(9u64);
    let (sum, v) = capture(|| {
        // SAFETY: fx_sum_nested reads one pointer to one live int.
        let sum = unsafe { call!(fixtures::fx_sum_nested(&table, 1)) };
        let _: c_int = to_c(1usize << 40);
        retain(kept.as_ptr());
        release(kept.as_ptr());
        sum
    });
    assert_eq!(sum, 5);
    kinds(&v)
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

// ---- compiled in -------------------------------------------------------------

/// Test builds have `debug_assertions`, so the checks are in. (Whether they
/// vanish from release builds is shown by `benches/call.rs`: `cargo bench`
/// runs with `COMPILED_IN=false` and times `call!` against the raw call.)
#[test]
fn checks_are_compiled_into_test_builds() {
    const { assert!(COMPILED_IN) };
    assert_ne!(mode(), Mode::Off, "in-process tests run with the checks on");
}

// ---- the default, mode 1 ----------------------------------------------------

#[test]
fn no_variable_means_check_mode() {
    child_passes("child_default_mode", &[]);
}

#[test]
fn child_default_mode() {
    if !is_child("child_default_mode") {
        return;
    }
    assert_eq!(mode(), Mode::Check);
    assert_eq!(action(), Action::Panic);
    assert_eq!(
        three_mistakes(),
        [
            ViolationKind::UnpinnedNested,
            ViolationKind::LossyConversion,
            ViolationKind::Retained
        ]
    );
}

// ---- FFI_CHECK=0 --------------------------------------------------------------

#[test]
fn mode_0_reports_nothing_and_still_frees() {
    let stderr = child_passes("child_mode_0", &[("FFI_CHECK", "0")]);
    assert!(!stderr.contains("ffi-check"), "{stderr}");
}

#[test]
fn child_mode_0() {
    if !is_child("child_mode_0") {
        return;
    }
    assert_eq!(mode(), Mode::Off);
    let before = stats();
    assert_eq!(three_mistakes(), []);

    // CBox still frees: 256 MiB made and dropped one MiB at a time must not
    // stay resident, and nothing is left registered.
    let rss = resident_bytes();
    for i in 0..256 {
        let block = CBox::from_elem(i as u8, 1 << 20);
        assert_eq!(block[1000], i as u8);
    }
    let p = c_malloc(64);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    let grown = resident_bytes().saturating_sub(rss);
    assert!(
        grown < 64 << 20,
        "{grown} bytes still resident after the drops"
    );

    let after = stats();
    assert!(after.live_c_regions <= before.live_c_regions);
    assert_eq!(after.total_violations(), before.total_violations());
}

// ---- FFI_CHECK=2 --------------------------------------------------------------

#[test]
fn mode_2_is_full_and_checks() {
    child_passes("child_mode_2", &[("FFI_CHECK", "2")]);
}

#[test]
fn child_mode_2() {
    if !is_child("child_mode_2") {
        return;
    }
    assert_eq!(mode(), Mode::Full);
    assert_eq!(
        three_mistakes(),
        [
            ViolationKind::UnpinnedNested,
            ViolationKind::LossyConversion,
            ViolationKind::Retained
        ]
    );
    let p = c_malloc(16);
    // SAFETY: p came from c_malloc; the second free is the mistake under
    // test, which the checker reports and does not carry out.
    let ((), v) = capture(|| unsafe {
        c_free(p);
        c_free(p);
    });
    assert_eq!(kinds(&v), [ViolationKind::DoubleFree]);
}

#[test]
fn mode_2_records_a_backtrace_at_each_free() {
    child_passes("child_mode_2_free_backtrace", &[("FFI_CHECK", "2")]);
}

#[test]
fn child_mode_2_free_backtrace() {
    if !is_child("child_mode_2_free_backtrace") {
        return;
    }
    let p = c_malloc(16);
    // SAFETY: p came from c_malloc; the second free is the mistake under
    // test, which the checker reports and does not carry out.
    let ((), v) = capture(|| unsafe {
        c_free(p);
        c_free(p);
    });
    let report = v[0].to_string();
    assert!(
        report.contains("first freed at tests/modes.rs:"),
        "{report}"
    );
    if !cfg!(debug_assertions) {
        // An optimised test build (`--release --features always`) has no
        // debug info and inlines this function into its caller: the
        // backtrace is recorded, but its frames have no names to check.
        return;
    }
    // The frames printed under "first freed at", up to the next event or
    // the violation's own backtrace.
    let free_trace: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("first freed at tests/modes.rs:"))
        .skip(1)
        .take_while(|l| l.starts_with("          "))
        .collect();
    let frames: Vec<&str> = free_trace
        .iter()
        .map(|l| l.trim_start())
        .filter(|l| !l.starts_with("at "))
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| f.contains("child_mode_2_free_backtrace")),
        "{report}"
    );
    // Like the violation's own backtrace, it starts in the user's code,
    // not inside the checker.
    assert!(
        frames[0].contains("child_mode_2_free_backtrace"),
        "{report}"
    );
}

// ---- malformed values -------------------------------------------------------------

fn malformed_warnings<'a>(stderr: &'a str, var: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.contains(&format!("{var}=")))
        .collect()
}

#[test]
fn malformed_mode_warns_once_and_uses_check() {
    let stderr = child_passes("child_malformed_mode", &[("FFI_CHECK", "banana")]);
    let warnings = malformed_warnings(&stderr, "FFI_CHECK");
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].starts_with("ffi-check: "), "{stderr}");
    assert!(warnings[0].contains("banana"), "{stderr}");
}

#[test]
fn child_malformed_mode() {
    if !is_child("child_malformed_mode") {
        return;
    }
    assert_eq!(mode(), Mode::Check);
    assert_eq!(mode(), Mode::Check);
    assert_eq!(three_mistakes().len(), 3);
}

#[test]
fn malformed_action_warns_once_and_uses_panic() {
    let stderr = child_passes("child_malformed_action", &[("FFI_CHECK_ACTION", "explode")]);
    let warnings = malformed_warnings(&stderr, "FFI_CHECK_ACTION");
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].starts_with("ffi-check: "), "{stderr}");
    assert!(warnings[0].contains("explode"), "{stderr}");
    // The default action ran: the violation's report is in the panic.
    assert!(
        stderr.contains("ffi-check: double free of C memory"),
        "{stderr}"
    );
}

#[test]
fn child_malformed_action() {
    if !is_child("child_malformed_action") {
        return;
    }
    assert_eq!(mode(), Mode::Check);
    assert_eq!(action(), Action::Panic);
    assert_eq!(action(), Action::Panic);
    let p = c_malloc(16);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    // SAFETY: the second free is the mistake under test; the checker panics
    // before freeing anything.
    let outcome = std::panic::catch_unwind(|| unsafe { c_free(p) });
    assert!(outcome.is_err(), "the default action panics");
}

// ---- set_mode ---------------------------------------------------------------------

#[test]
fn set_mode_turns_checks_off_and_on_at_run_time() {
    child_passes("child_set_mode", &[]);
}

#[test]
fn child_set_mode() {
    if !is_child("child_set_mode") {
        return;
    }
    assert_eq!(mode(), Mode::Check);
    assert_eq!(three_mistakes().len(), 3);

    // Memory registered while checks are on is still freed, and forgotten,
    // when it is dropped after they are turned off.
    let before = stats().live_c_regions;
    let kept = CBox::new(7u32);
    assert_eq!(stats().live_c_regions, before + 1);

    set_mode(Mode::Off);
    assert_eq!(mode(), Mode::Off);
    assert_eq!(three_mistakes(), []);
    drop(kept);
    assert_eq!(stats().live_c_regions, before);

    set_mode(Mode::Full);
    assert_eq!(mode(), Mode::Full);
    assert_eq!(three_mistakes().len(), 3);

    set_mode(Mode::Check);
    assert_eq!(three_mistakes().len(), 3);
}
