//! The safe wrapper over the checked bindings (the `-sys` crate's
//! `ffi-check` feature, on for this crate's tests): correct use is clean and
//! frees all the C memory it allocates, and each seeded mistake of
//! `src/mistakes.rs` is reported with the wrapper's own file and line, though
//! the wrapper's source never names ffi-check.

use ffi_check::{capture, LeakCheck, Site, Violation, ViolationKind};
use ffi_check_fixture_safe::TagSet;

// A Rust heap block freed and then passed to C is caught only when the
// checker knows the heap: the tracking allocator makes every block of this
// test binary managed memory.
#[global_allocator]
static ALLOC: ffi_check::TrackingAllocator = ffi_check::TrackingAllocator::new();

/// The line of `source` (a file of this crate) that holds `marker`.
fn line_of(source: &str, marker: &str) -> u32 {
    let lines: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "`{marker}` once in the source");
    u32::try_from(lines[0]).unwrap()
}

fn assert_site(v: &Violation, file: &str, line: u32) {
    let site: Site = v.call_site().unwrap_or_else(|| panic!("no site in\n{v}"));
    assert!(
        site.file().ends_with(file) && site.line() == line,
        "expected {file}:{line}, got {site}\n{v}"
    );
}

const LIB: &str = include_str!("../src/lib.rs");
const MISTAKES: &str = include_str!("../src/mistakes.rs");

// The tests run over the checked bindings (the dev-dependency's feature).
const _: () = assert!(ffi_check_fixture_sys::CHECKED);

#[test]
fn correct_use_is_clean_and_frees_what_it_allocates() {
    let scope = LeakCheck::start();
    let ((), violations) = capture(|| {
        let mut tags = TagSet::with_limits(3, 8);
        assert_eq!(tags.add("red"), Ok(true));
        assert_eq!(tags.add("red"), Ok(false));
        assert_eq!(tags.add_bytes(b"green"), Ok(true));
        assert_eq!(
            tags.add("much too long"),
            Err(ffi_check_fixture_safe::Error::Refused)
        );
        assert_eq!(tags.add("a\0b"), Err(ffi_check_fixture_safe::Error::Nul));
        assert!(tags.contains("green") && !tags.contains("blue"));
        assert_eq!(tags.len(), 2);
        assert_eq!(tags.get(1).as_deref(), Some("green"));
        assert_eq!(tags.get(2), None);
        let mut seen = Vec::new();
        assert_eq!(
            tags.each(|t| {
                seen.push(t.to_owned());
                true
            }),
            2
        );
        assert_eq!(seen, ["red", "green"]);
        assert_eq!(tags.each(|_| false), 1);
        assert_eq!(tags.join(" + "), "red + green");
        assert_eq!(TagSet::new().join(","), "");
    });
    assert!(violations.is_empty(), "{violations:#?}");
    let report = scope.finish();
    if ffi_check::COMPILED_IN {
        assert_eq!(report.leaked_bytes(), 0, "{report}");
    }
}

#[test]
fn a_dangling_cstring_is_reported_at_the_wrappers_line() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let mut tags = TagSet::new();
    let (_, v) = capture(|| tags.add_with_dangling_pointer("red"));
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].kind(), ViolationKind::UseAfterFree);
    assert_eq!(v[0].callee(), Some("tagset_add"));
    assert_eq!(
        v[0].message(),
        "argument 2 of `tagset_add` is a pointer into freed memory"
    );
    assert_site(
        &v[0],
        "fixture-safe/src/mistakes.rs",
        line_of(MISTAKES, "// mistake: dangling"),
    );
}

#[test]
fn a_double_free_is_reported_at_the_wrappers_line_and_not_carried_out() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let mut tags = TagSet::new();
    tags.add("red").unwrap();
    tags.add("blue").unwrap();
    let (text, v) = capture(|| tags.join_freeing_twice("|"));
    assert_eq!(text, "red|blue");
    let kinds: Vec<ViolationKind> = v.iter().map(Violation::kind).collect();
    // The second free passes a pointer into freed memory (the checked
    // binding, at the owner's `Drop`), and C's free of it is refused.
    assert_eq!(
        kinds,
        [ViolationKind::UseAfterFree, ViolationKind::DoubleFree],
        "{v:#?}"
    );
    assert_eq!(v[0].callee(), Some("tagset_string_free"));
    let drop_line = line_of(LIB, "unsafe { sys::tagset_string_free(self.0.as_ptr()) }");
    assert_site(&v[0], "fixture-safe/src/lib.rs", drop_line);
    // C's own free names C's line.
    assert!(v[1].call_site().is_some_and(|s| s.is_c()), "{}", v[1]);
}

/// The leak names the C line that allocated (the block was allocated by C,
/// inside the call), not the wrapper's.
#[test]
fn a_leaked_c_string_is_reported() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let mut tags = TagSet::new();
    tags.add("red").unwrap();
    let scope = LeakCheck::start();
    let text = tags.join_leaking(",");
    let report = scope.finish();
    assert_eq!(text, "red");
    assert_eq!(report.leaked_bytes(), 4, "{report}");
    let site = report.groups()[0].site().expect("an allocation site");
    assert!(site.is_c() && site.file() == "csrc/tagset.c", "{report}");
}
