//! The safe wrapper over the checked bindings (the `-sys` crate's
//! `ffi-check` feature, on for this crate's tests): correct use is clean and
//! frees all the C memory it allocates, and each seeded mistake of
//! `src/mistakes.rs` is reported with the wrapper's own file and line, though
//! the wrapper's source never names ffi-check.
//!
//! The scenarios of C keeping what Rust gave it run twice: in mode 1 (this
//! process) and in mode 2 (`FFI_CHECK=2`, in a child process running the
//! one test, see [`in_mode_2`]): a destructor C calls with the boxed closure
//! it kept, an `iovec`-style array of Rust buffers, and a label C keeps the
//! pointer of, kept alive by the wrapper (clean) or dropped while C keeps it
//! (the seeded mistake, `FreedWhileRetained` in mode 2).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ffi_check::{capture, LeakCheck, Site, Violation, ViolationKind};
use ffi_check_fixture_safe::TagSet;
use ffi_check_fixture_sys as sys;

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

// ---- mode 2 in a child process -------------------------------------------------

/// The variable that names the one test a child process runs.
const CHILD: &str = "FFI_CHECK_TEST_CHILD";

/// The variables that configure ffi-check; a child starts without them.
const FFI_CHECK_VARS: [&str; 6] = [
    "FFI_CHECK_STRICT",
    "FFI_CHECK",
    "FFI_CHECK_ACTION",
    "FFI_CHECK_LOG",
    "FFI_CHECK_LEAKS",
    "FFI_CHECK_BACKTRACE",
];

/// True in the child process started for the test `name`, which then runs
/// its body in mode 2. In the parent, runs this test binary's test `name`
/// alone with `FFI_CHECK=2`, asserts that it ran and passed, and returns
/// false (at once, with the checks compiled out).
fn in_mode_2(name: &str) -> bool {
    if !ffi_check::COMPILED_IN {
        return false;
    }
    if std::env::var(CHILD).as_deref() == Ok(name) {
        assert_eq!(ffi_check::mode(), ffi_check::Mode::Full, "the child's mode");
        return true;
    }
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    // `--include-ignored`: the child runs the test when the parent does,
    // ignored or not.
    cmd.args([
        "--exact",
        name,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for var in FFI_CHECK_VARS {
        cmd.env_remove(var);
    }
    let out = cmd
        .env(CHILD, name)
        .env("FFI_CHECK", "2")
        .output()
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "child {name} did not run:\n{stdout}\n{stderr}"
    );
    false
}

// ---- a destructor C calls ------------------------------------------------------

/// C keeps the boxed closure as user data and hands it back to the
/// trampoline from `tagset_free`, which frees it: correct, clean.
fn destructor_hand_over() {
    let first = Arc::new(AtomicUsize::new(0));
    let second = Arc::new(AtomicUsize::new(0));
    let v = ffi_check::assert_clean(|| {
        let mut tags = TagSet::new();
        tags.add("red").unwrap();
        let f = Arc::clone(&first);
        tags.on_drop(move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        tags.add("blue").unwrap();
        assert_eq!(Arc::strong_count(&first), 2, "the closure holds a clone");
        // Replaced: C calls the earlier destructor at once.
        let s = Arc::clone(&second);
        tags.on_drop(move || {
            s.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(first.load(Ordering::SeqCst), 1);
        assert_eq!(Arc::strong_count(&first), 1);
        assert_eq!(Arc::strong_count(&second), 2);
        drop(tags);
        second.load(Ordering::SeqCst)
    });
    assert_eq!(v, 1, "the destructor ran once");
    assert_eq!(Arc::strong_count(&second), 1, "the closure was dropped");
}

#[test]
fn a_destructor_c_calls_gets_its_closure_back_cleanly() {
    destructor_hand_over();
}

/// Clean in mode 2 too: the box C holds was remembered after
/// `tagset_on_free`, and it is freed inside the trampoline C calls from
/// `tagset_free`, while the set still points to it: a free made by Rust code
/// C called during a checked call is C giving the block back.
#[test]
fn mode_2_a_destructor_c_calls_gets_its_closure_back_cleanly() {
    if in_mode_2("mode_2_a_destructor_c_calls_gets_its_closure_back_cleanly") {
        destructor_hand_over();
    }
}

// ---- an iovec-style array --------------------------------------------------------

/// An array of `tagset_bytes` pointing into Rust buffers, read by C for the
/// call and copied: clean, from a `Vec` (the wrapper) and from the stack.
fn iovec_call() {
    let owned: Vec<String> = ["red", "green", "red", "a\0b"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let tags: Vec<&str> = owned.iter().map(String::as_str).chain(["blue"]).collect();
    let scope = LeakCheck::start();
    ffi_check::assert_clean(|| {
        let mut set = TagSet::with_limits(0, 4);
        // "green" is too long, the second "red" is there, "a\0b" holds a NUL.
        assert_eq!(set.add_all(&tags), 2);
        assert_eq!(set.join(","), "red,blue");
        assert_eq!(set.add_all(&[]), 0);
    });
    // The same call with the array on the stack.
    let (red, blue) = (String::from("red"), String::from("blue"));
    let items = [
        sys::tagset_bytes {
            bytes: red.as_ptr().cast(),
            len: red.len(),
        },
        sys::tagset_bytes {
            bytes: blue.as_ptr().cast(),
            len: blue.len(),
        },
    ];
    ffi_check::assert_clean(|| {
        // SAFETY: a new set, two descriptors of readable bytes alive for the
        // call, and the set freed once.
        unsafe {
            let set = sys::tagset_new();
            assert!(!set.is_null());
            assert_eq!(sys::tagset_add_all(set, items.as_ptr(), items.len()), 2);
            assert_eq!(sys::tagset_len(set), 2);
            sys::tagset_free(set);
        }
    });
    let report = scope.finish();
    if ffi_check::COMPILED_IN {
        assert_eq!(report.leaked_bytes(), 0, "{report}");
    }
}

#[test]
fn an_iovec_style_call_is_clean() {
    iovec_call();
}

#[test]
fn mode_2_an_iovec_style_call_is_clean() {
    if in_mode_2("mode_2_an_iovec_style_call_is_clean") {
        iovec_call();
    }
}

// ---- a buffer C keeps ------------------------------------------------------------

/// The label C keeps the pointer of, kept alive by the wrapper until it is
/// replaced (the earlier one then drops, no longer pointed to) or the set
/// is freed (it drops after): clean.
fn kept_label() {
    ffi_check::assert_clean(|| {
        let mut tags = TagSet::new();
        assert_eq!(tags.label(), None);
        tags.set_label("colours").unwrap();
        tags.add("red").unwrap();
        assert_eq!(tags.label().as_deref(), Some("colours"));
        tags.set_label("hues").unwrap();
        assert_eq!(tags.label().as_deref(), Some("hues"));
        assert_eq!(
            tags.set_label("a\0b"),
            Err(ffi_check_fixture_safe::Error::Nul)
        );
        assert_eq!(tags.label().as_deref(), Some("hues"));
    });
}

#[test]
fn a_label_the_wrapper_keeps_alive_is_clean() {
    kept_label();
}

#[test]
fn mode_2_a_label_the_wrapper_keeps_alive_is_clean() {
    if in_mode_2("mode_2_a_label_the_wrapper_keeps_alive_is_clean") {
        kept_label();
    }
}

/// Mode 1 does not see this mistake: the `CString` is a plain heap block,
/// C keeping a pointer to it is not a violation by itself, and its free
/// is not checked against what C holds (that takes mode 2's scan). Nothing
/// is asserted here; the label, which now dangles, is not read.
#[test]
fn a_label_dropped_while_c_keeps_it_is_not_seen_in_mode_1() {
    let mut tags = TagSet::new();
    let _ = capture(|| tags.set_label_dropping_it("colours"));
}

/// Mode 2: after the call, the scan finds the set pointing to the `CString`
/// and remembers it; its drop at the end of the wrapper's method is
/// `FreedWhileRetained`, and the report names `src/mistakes.rs`. The block
/// is kept (leaked), so C's pointer stays valid.
#[test]
fn mode_2_a_label_dropped_while_c_keeps_it_is_freed_while_retained() {
    if !in_mode_2("mode_2_a_label_dropped_while_c_keeps_it_is_freed_while_retained") {
        return;
    }
    let mut tags = TagSet::new();
    let ((), v) = capture(|| tags.set_label_dropping_it("colours"));
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].kind(), ViolationKind::FreedWhileRetained, "{}", v[0]);
    let text = v[0].to_string();
    eprintln!("{text}");
    // The report names the wrapper's call that C kept the pointer from. (Its
    // backtrace does not show the wrapper's frames: the checker skips the
    // leading frames of crates named `ffi_check_*` as its own.)
    let call = line_of(MISTAKES, "// mistake: kept");
    assert!(
        text.contains(&format!(
            "retained by C at examples/sys/fixture-safe/src/mistakes.rs:{call}:"
        )),
        "{text}"
    );
    // Kept, so C's pointer still reads valid memory: the empty string that
    // `CString`'s drop leaves (it clears the first byte before the free).
    assert_eq!(tags.label().as_deref(), Some(""));
}
