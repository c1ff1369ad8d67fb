//! Rules C1, C2 and C3: C memory is freed exactly once, by its own
//! deallocator, never through a dangling pointer, and before the end.
//!
//! C1 (`DoubleFree`, `InvalidFree`, `MismatchedFree`): a bad free is
//! reported with the sites that explain it and is then *not* carried out, so
//! the process survives the mistake. C2 (`UseAfterFree`): a pointer into
//! freed memory never crosses the boundary. C3 (`Leak`): a `LeakCheck` scope
//! (or the at-exit report) lists what was never freed, grouped by the site
//! that allocated it, the way LeakSanitizer does.

// Without the checks compiled in there is nothing to observe.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::ffi::c_void;
use std::os::raw::c_char;
use std::sync::{Arc, Barrier};

use common::fixtures;
use common::{assert_c_site, assert_report, assert_rust_site, is_child, only, run_child, text};
use ffi_check::{
    assert_clean, c_free, c_free_with, c_malloc, call, capture, intended_leak, str_from_c, CBox,
    Deallocator, LeakCheck, Managed, RegionKind, RegionState, ViolationKind,
};

const THIS_FILE: &str = file!();

/// `fx_alloc`'s family: a library-specific allocator, as `sqlite3_free` is
/// SQLite's.
const FX_DEALLOC: Deallocator = Deallocator::new("fx_dealloc", fixtures::fx_dealloc);

// ---- C1: DoubleFree ---------------------------------------------------------

#[test]
fn double_free_from_rust_reports_both_sites_and_frees_once() {
    let (p, alloc_line) = (c_malloc(40), line!());
    // SAFETY: p came from c_malloc and is live.
    unsafe { c_free(p) };
    let first_free_line = line!() - 1;
    // SAFETY: the second free is the mistake under test; the check skips it.
    let (_, v) = capture(|| unsafe { c_free(p) });
    let second_free_line = line!() - 1;
    let v = only(&v);
    assert_report(v, ViolationKind::DoubleFree, "double free of C memory");
    assert!(v.first_line().contains("`free`"), "{v}");
    assert_eq!(v.rule(), "C1");
    let r = &v.regions()[0];
    assert_eq!(r.addr(), p as usize);
    assert_eq!(r.size(), 40);
    assert_eq!(r.kind(), RegionKind::C);
    assert_eq!(r.state(), RegionState::Freed);
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    assert_rust_site(r.free_site(), THIS_FILE, first_free_line);
    assert_rust_site(v.call_site(), THIS_FILE, second_free_line);
    let text = v.to_string();
    assert!(
        text.contains(&format!("allocated at {THIS_FILE}:{alloc_line}:")),
        "{text}"
    );
    assert!(
        text.contains(&format!("first freed at {THIS_FILE}:{first_free_line}:")),
        "{text}"
    );
    // Reaching this line is the proof that `free` did not run twice: the C
    // allocator aborts on a double free.
}

#[test]
fn double_free_of_cbox_after_c_freed_it_is_reported_on_drop() {
    let (mut b, alloc_line) = (CBox::new(7u32), line!());
    // SAFETY: fx_free_it frees the box's malloc'd block; the box's own free
    // on drop is the mistake under test, and the check skips it.
    unsafe { call!(fixtures::fx_free_it(b.as_mut_ptr().cast::<c_void>())) };
    let (_, v) = capture(|| drop(b));
    let v = only(&v);
    assert_report(v, ViolationKind::DoubleFree, "double free of C memory");
    let r = &v.regions()[0];
    assert_eq!(r.size(), std::mem::size_of::<u32>());
    assert_eq!(r.type_name(), Some("u32"));
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    // The first free is C's, inside `fx_free_it`.
    assert_c_site(r.free_site());
}

#[test]
fn double_free_inside_c_is_reported_once_with_the_first_free_site() {
    let (p, alloc_line) = (c_malloc(24), line!());
    // SAFETY: fx_free_twice frees p twice; the checker lets only the first
    // free through.
    let (_, v) = capture(|| unsafe { call!(fixtures::fx_free_twice(p)) });
    let v = only(&v);
    assert_report(v, ViolationKind::DoubleFree, "double free of C memory");
    let r = &v.regions()[0];
    assert_eq!(r.addr(), p as usize);
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    let first = r.free_site().expect("first free site");
    let second = v.call_site().expect("second free site");
    assert!(first.is_c() && second.is_c(), "{v}");
    assert_eq!(
        second.line(),
        first.line() + 1,
        "fx_free_twice frees on consecutive lines: {v}"
    );
}

// ---- C1: InvalidFree --------------------------------------------------------

#[test]
fn c_freeing_managed_memory_is_reported_and_not_done() {
    let (managed, alloc_line) = (Managed::new(99u64), line!());
    // SAFETY: the checker refuses to free managed memory, so fx_free_it
    // does not touch it; the mistake is what is under test.
    let (_, v) =
        capture(|| unsafe { fixtures::fx_free_it(managed.as_ptr().cast_mut().cast::<c_void>()) });
    let v = only(&v);
    assert_report(v, ViolationKind::InvalidFree, "C free of managed memory");
    let r = &v.regions()[0];
    assert_eq!(r.kind(), RegionKind::Managed);
    assert_eq!(r.addr(), managed.addr());
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    assert_c_site(v.call_site());
    // Not freed: the value is intact and Rust frees it as usual.
    assert_eq!(*managed, 99);
}

#[test]
fn freeing_an_interior_pointer_is_reported_and_not_done() {
    let (p, alloc_line) = (c_malloc(16), line!());
    // SAFETY: p + 4 is inside the 16-byte block; the checker refuses the
    // free, which is the mistake under test.
    let (_, v) = capture(|| unsafe { c_free(p.cast::<u8>().add(4).cast::<c_void>()) });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "free of a pointer into the middle of C memory",
    );
    assert!(v.to_string().contains("4 bytes into"), "{v}");
    let r = &v.regions()[0];
    assert_eq!(r.addr(), p as usize);
    assert_eq!(r.state(), RegionState::Live);
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    // The block is still live and is freed properly, once.
    assert_clean(|| {
        // SAFETY: p came from c_malloc and was not freed.
        unsafe { c_free(p) }
    });
}

#[test]
fn freeing_a_stack_address_is_reported_and_not_done() {
    let mut local = [0u8; 16];
    let p = local.as_mut_ptr().cast::<c_void>();
    let line = line!() + 2;
    // SAFETY: the checker refuses the free, which is the mistake under test.
    let (_, v) = capture(|| unsafe { c_free(p) });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "free of a pointer no C allocator returned",
    );
    assert!(v.to_string().contains("on this thread's stack"), "{v}");
    assert_rust_site(v.call_site(), THIS_FILE, line);
    local[0] = 1;
    assert_eq!(local[0], 1);
}

#[test]
fn freeing_static_data_is_reported_and_not_done() {
    // SAFETY: fx_version returns a static string.
    let version = unsafe { fixtures::fx_version() };
    // SAFETY: the checker refuses the free, which is the mistake under test.
    let (_, v) = capture(|| unsafe { c_free(version.cast_mut().cast()) });
    assert_report(
        only(&v),
        ViolationKind::InvalidFree,
        "free of a pointer no C allocator returned",
    );
    // The string is still there.
    // SAFETY: a static NUL-terminated string.
    assert_eq!(unsafe { str_from_c(version) }, "fixtures 1.0");
}

#[test]
fn passing_a_cbox_by_value_hands_it_to_c() {
    assert_clean(|| {
        let buf = CBox::from_elem(7u8, 32);
        // SAFETY: fx_free_it frees what it is given, which C now owns.
        unsafe { call!(fixtures::fx_free_it(buf)) };
    });
}

extern "C" {
    // The crate's C API, as C code calls it (csrc/ffi_check.h).
    fn ffi_check_realloc_at(
        ptr: *mut c_void,
        size: usize,
        file: *const c_char,
        line: std::os::raw::c_int,
    ) -> *mut c_void;
}

#[test]
fn realloc_moves_the_tracking_to_the_new_block() {
    let scope = LeakCheck::start();
    let p = c_malloc(16);
    // SAFETY: p is a live malloc block; realloc returns its successor.
    let q = unsafe { ffi_check_realloc_at(p, 4096, c"grow.c".as_ptr(), 7) };
    assert!(!q.is_null());
    let report = scope.finish();
    // One live block: the new one, 4096 bytes, allocated at the C site.
    assert_eq!(report.leaked_allocations(), 1, "{report}");
    assert_eq!(report.leaked_bytes(), 4096, "{report}");
    assert_eq!(report.groups()[0].site().map(|s| s.line()), Some(7));
    assert_clean(|| {
        // SAFETY: q is the live block realloc returned.
        unsafe { c_free(q) }
    });
}

#[test]
fn realloc_of_a_freed_block_is_refused() {
    let p = c_malloc(16);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    // SAFETY: the checker refuses the realloc (the mistake under test).
    let (q, v) = capture(|| unsafe { ffi_check_realloc_at(p, 32, c"grow.c".as_ptr(), 9) });
    assert!(q.is_null(), "a refused realloc returns NULL");
    assert_report(
        only(&v),
        ViolationKind::DoubleFree,
        "double free of C memory (`realloc`)",
    );
}

#[test]
fn realloc_of_a_stack_address_is_refused() {
    let mut local = [0u8; 8];
    // SAFETY: the checker refuses the realloc (the mistake under test).
    let (q, v) = capture(|| unsafe {
        ffi_check_realloc_at(local.as_mut_ptr().cast(), 32, c"grow.c".as_ptr(), 11)
    });
    assert!(q.is_null());
    assert_report(
        only(&v),
        ViolationKind::InvalidFree,
        "free of a pointer no C allocator returned (`realloc`)",
    );
    local[0] = 1;
    assert_eq!(local[0], 1);
}

// ---- C1: MismatchedFree -----------------------------------------------------

#[test]
fn mismatched_free_names_both_deallocators() {
    // SAFETY: fx_alloc_string returns a fresh fx_alloc'd copy that nobody
    // else owns; it is adopted with its own deallocator.
    let b = unsafe {
        let p = fixtures::fx_alloc_string(c"library string".as_ptr());
        CBox::from_raw_cstr_with(p, FX_DEALLOC).expect("non-null")
    };
    let p = b.into_raw().cast::<c_void>();
    // SAFETY: the checker refuses to give fx_alloc memory to `free`, which
    // is the mistake under test.
    let (_, v) = capture(|| unsafe { c_free(p) });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::MismatchedFree,
        "C memory freed with the wrong deallocator",
    );
    let first = v.first_line();
    assert!(first.contains("`fx_dealloc`"), "{first}");
    assert!(first.contains("`free`"), "{first}");
    assert_eq!(v.regions()[0].allocator(), "fx_dealloc");
    // The block was left alone: its own deallocator frees it (fx_dealloc
    // aborts on a block it did not make or already freed).
    assert_clean(|| {
        // SAFETY: p is fx_alloc memory, not freed yet.
        unsafe { c_free_with(p, &FX_DEALLOC) }
    });
}

#[test]
fn a_box_that_takes_over_library_memory_as_mallocs_is_refused_at_its_drop() {
    // SAFETY: fx_alloc_string returns a fresh fx_alloc'd copy that nobody
    // else owns; it is adopted with its own deallocator, then handed on.
    let p = unsafe {
        let p = fixtures::fx_alloc_string(c"library string".as_ptr());
        CBox::from_raw_cstr_with(p, FX_DEALLOC).expect("non-null")
    }
    .into_raw();
    // The mistake under test: the same block adopted again as `malloc`'s.
    // SAFETY: p is live fx_alloc memory; the checker refuses the free.
    let wrong = unsafe { CBox::from_raw_cstr(p) }.expect("a live C block is adopted");
    let ((), v) = capture(|| drop(wrong));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::MismatchedFree,
        "C memory freed with the wrong deallocator",
    );
    assert!(
        v.first_line().contains("`fx_dealloc`"),
        "{}",
        v.first_line()
    );
    // The block was left alone: its own deallocator frees it (fx_dealloc
    // aborts on a block it did not make or already freed).
    assert_clean(|| {
        // SAFETY: p is fx_alloc memory, not freed yet.
        unsafe { c_free_with(p.cast::<c_void>(), &FX_DEALLOC) }
    });
}

// ---- C1: correct patterns -----------------------------------------------------

#[test]
fn adopting_a_c_string_and_dropping_it_once_is_ok() {
    assert_clean(|| {
        // SAFETY: fx_greet returns a fresh malloc'd string the caller owns.
        let greeting = unsafe {
            let p = call!(fixtures::fx_greet(c"ferris"));
            CBox::from_raw_cstr(p).expect("non-null")
        };
        assert_eq!(greeting.to_str(), Ok("hello, ferris"));
    });
}

#[test]
fn into_raw_then_c_frees_is_ok() {
    assert_clean(|| {
        let b = CBox::new([1u8; 32]);
        let p = b.into_raw();
        // SAFETY: C takes ownership of the malloc'd block and frees it once.
        unsafe { call!(fixtures::fx_free_it(p.cast::<c_void>())) };
    });
}

#[test]
fn create_destroy_pair_is_ok() {
    assert_clean(|| {
        // SAFETY: the counter is created, used and destroyed by its own API.
        unsafe {
            let c = call!(fixtures::fx_counter_new(41));
            assert!(!c.is_null());
            assert_eq!(call!(fixtures::fx_counter_incr(c)), 42);
            call!(fixtures::fx_counter_free(c));
        }
    });
}

#[test]
fn cbox_from_raw_with_frees_with_the_custom_deallocator() {
    assert_clean(|| {
        // SAFETY: a fresh fx_alloc'd string nobody else owns, adopted with
        // its own deallocator.
        let s = unsafe {
            let p = fixtures::fx_alloc_string(c"private heap".as_ptr());
            CBox::from_raw_cstr_with(p, FX_DEALLOC).expect("non-null")
        };
        assert_eq!(s.to_bytes(), b"private heap");
        assert_eq!(s.deallocator().name(), "fx_dealloc");
        // Dropping calls fx_dealloc, which aborts on memory it did not make.
        drop(s);
    });
}

/// The library's destroy function as a deallocator: it frees through
/// `ffi_check_free` itself.
unsafe extern "C" fn counter_destroy(p: *mut c_void) {
    // SAFETY: only used for CBoxes that own an fx_counter.
    unsafe { fixtures::fx_counter_free(p.cast()) }
}

#[test]
fn owning_an_object_through_its_destroy_function_is_ok() {
    let destroy = Deallocator::new("fx_counter_free", counter_destroy);
    assert_clean(|| {
        // SAFETY: a fresh counter nobody else owns, adopted with the
        // library's own destroy function.
        let mut c = unsafe {
            CBox::<fixtures::FxCounter>::from_raw_with(fixtures::fx_counter_new(1), destroy)
                .expect("non-null")
        };
        // SAFETY: c is a live counter.
        assert_eq!(unsafe { call!(fixtures::fx_counter_incr(&mut c)) }, 2);
        drop(c);
    });
}

#[test]
fn freeing_a_destroyed_object_again_is_a_double_free() {
    let destroy = Deallocator::new("fx_counter_free", counter_destroy);
    // SAFETY: a fresh counter, adopted with its destroy function.
    let c = unsafe { fixtures::fx_counter_new(1) };
    // SAFETY: as above.
    let b = unsafe { CBox::<fixtures::FxCounter>::from_raw_with(c, destroy) }.expect("non-null");
    b.free();
    // SAFETY: the second free is the mistake under test; it is not done.
    let (_, v) = capture(|| unsafe { c_free_with(c.cast(), &destroy) });
    assert_report(
        only(&v),
        ViolationKind::DoubleFree,
        "double free of C memory",
    );
}

// ---- C2: UseAfterFree -------------------------------------------------------

#[test]
fn passing_a_pointer_into_a_freed_block_is_use_after_free() {
    let (p, alloc_line) = (c_malloc(48), line!());
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
    let free_line = line!() - 1;
    // A pointer 8 bytes in, with length 0: C reads nothing, the crossing
    // alone is the mistake.
    let inside = p.cast::<u8>().wrapping_add(8).cast_const();
    // SAFETY: fx_checksum reads 0 bytes.
    let (sum, v) = capture(|| unsafe { call!(fixtures::fx_checksum(inside, 0)) });
    assert_eq!(sum, 0);
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "is a pointer into freed memory",
    );
    assert!(
        v.first_line()
            .starts_with("ffi-check: argument 1 of `fx_checksum`"),
        "{v}"
    );
    assert_eq!(v.callee(), Some("fx_checksum"));
    assert!(
        v.to_string().contains("8 bytes into the freed region"),
        "{v}"
    );
    let r = &v.regions()[0];
    assert_eq!(r.addr(), p as usize);
    assert_eq!(r.state(), RegionState::Freed);
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    assert_rust_site(r.free_site(), THIS_FILE, free_line);
    assert!(v
        .to_string()
        .contains(&format!("first freed at {THIS_FILE}:{free_line}:")));
}

#[test]
fn passing_a_dropped_cbox_address_is_use_after_free() {
    let (b, alloc_line) = (CBox::from_elem(0u8, 64), line!());
    let old = b.as_ptr();
    // `free` records its line; a plain `drop` cannot know its caller.
    let free_line = line!() + 1;
    b.free();
    // SAFETY: fx_fill writes 0 bytes.
    let (n, v) = capture(|| unsafe { call!(fixtures::fx_fill(old.cast_mut(), 0, 1)) });
    assert_eq!(n, 0);
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "is a pointer into freed memory",
    );
    assert_eq!(v.callee(), Some("fx_fill"));
    let r = &v.regions()[0];
    assert_eq!(r.addr(), old as usize);
    assert_eq!(r.state(), RegionState::Freed);
    assert_rust_site(r.alloc_site(), THIS_FILE, alloc_line);
    // The freeing site is where the box was freed.
    assert_rust_site(r.free_site(), THIS_FILE, free_line);
}

#[test]
fn reading_a_freed_c_string_is_use_after_free() {
    let s = CBox::from_str("gone");
    let p: *const c_char = s.as_ptr();
    drop(s);
    // SAFETY: the checker finds p in a freed region and does not read it.
    let (text, v) = capture(|| unsafe { str_from_c(p) });
    assert_eq!(text, "");
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "is a pointer into freed memory",
    );
    assert!(v.first_line().contains("C string"), "{v}");
    assert_eq!(v.regions()[0].state(), RegionState::Freed);
}

#[test]
fn a_fresh_allocation_at_a_reused_address_is_not_use_after_free() {
    // C's allocator hands a freed block's address out again at once (the
    // same size on the same thread, almost always): the new block is new
    // memory, not a use of the old one.
    assert_clean(|| {
        let old = c_malloc(200);
        // SAFETY: old came from c_malloc and is freed once.
        unsafe { c_free(old) };
        let block = c_malloc(200);
        // SAFETY: block came from c_malloc and is freed once.
        unsafe { c_free(block) };
        let buffer = CBox::from_elem(0u8, 200);
        drop(buffer);
        let text = CBox::from_str(&"x".repeat(199));
        drop(text);
    });
}

#[test]
fn rust_memory_at_a_freed_c_address_is_not_use_after_free() {
    // Rust's allocator and C's share one heap: a Rust buffer may take the
    // address of C memory freed a moment ago. Lending it is correct.
    assert_clean(|| {
        let old = c_malloc(24);
        // SAFETY: old came from c_malloc and is freed once.
        unsafe { c_free(old) };
        let bytes = Box::new([1u8; 24]);
        // SAFETY: fx_checksum reads the 24 bytes of a live Box.
        let sum = unsafe { call!(fixtures::fx_checksum(bytes.as_ptr(), bytes.len())) };
        assert_eq!(sum, 24);
    });
}

#[test]
fn passing_a_live_block_is_ok() {
    assert_clean(|| {
        let p = c_malloc(16);
        // SAFETY: p is a live 16-byte block.
        unsafe {
            assert_eq!(call!(fixtures::fx_fill(p.cast::<u8>(), 16, 2)), 16);
            assert_eq!(call!(fixtures::fx_checksum(p.cast::<u8>(), 16)), 32);
            c_free(p);
        }
    });
}

// ---- C3: Leak -----------------------------------------------------------------

#[test]
fn leak_check_groups_leaks_by_allocation_site() {
    let scope = LeakCheck::start();
    let (raw, raw_line) = (c_malloc(10), line!());
    // SAFETY: fx_leak returns fresh memory; nobody frees it inside the scope.
    let from_c = unsafe { call!(fixtures::fx_leak(20)) };
    let (given_away, box_line) = (CBox::new([0u64; 4]).into_raw(), line!());
    let mut looped = Vec::new();
    let mut loop_line = 0;
    for _ in 0..2 {
        looped.push(c_malloc(3));
        loop_line = line!() - 1;
    }
    let report = scope.finish();

    assert!(!report.is_empty());
    assert_eq!(report.groups().len(), 4, "{report}");
    assert_eq!(report.leaked_allocations(), 5);
    assert_eq!(report.leaked_bytes(), 10 + 20 + 32 + 6);
    let group_at = |line: u32| {
        report
            .groups()
            .iter()
            .find(|g| {
                g.site()
                    .is_some_and(|s| s.file() == THIS_FILE && s.line() == line)
            })
            .unwrap_or_else(|| panic!("no group at line {line}: {report}"))
    };
    let g = group_at(raw_line);
    assert_eq!((g.count(), g.bytes()), (1, 10));
    assert_eq!(g.example_addr(), raw as usize);
    let g = group_at(box_line);
    assert_eq!((g.count(), g.bytes()), (1, 32));
    let g = group_at(loop_line);
    assert_eq!((g.count(), g.bytes()), (2, 6));
    let g = report
        .groups()
        .iter()
        .find(|g| g.site().is_some_and(|s| s.is_c()))
        .expect("the C allocation's group");
    assert_eq!((g.count(), g.bytes()), (1, 20));
    assert_c_site(g.site());

    // SAFETY: each block came from malloc (fx_leak's with ffi_check_malloc)
    // and is freed once.
    unsafe {
        c_free(raw);
        c_free(from_c);
        c_free(given_away.cast::<c_void>());
        looped.into_iter().for_each(|p| c_free(p));
    }
}

#[test]
fn leak_report_reads_like_leak_sanitizer() {
    let scope = LeakCheck::start();
    let mut blocks = Vec::new();
    let mut line = 0;
    for _ in 0..2 {
        blocks.push(c_malloc(12));
        line = line!() - 1;
    }
    let report = scope.finish();
    let text = report.to_string();
    assert!(text.contains("detected memory leaks"), "{text}");
    assert!(
        text.contains("Leak of 24 byte(s) in 2 allocation(s) of C memory allocated at"),
        "{text}"
    );
    assert!(text.contains(&format!("{THIS_FILE}:{line}:")), "{text}");
    assert!(
        text.contains("SUMMARY: ffi-check: 24 byte(s) leaked in 2 allocation(s)"),
        "{text}"
    );
    // SAFETY: each block came from c_malloc and is freed once.
    unsafe { blocks.into_iter().for_each(|p| c_free(p)) };
}

#[test]
fn leaks_are_leak_violations() {
    let scope = LeakCheck::start();
    let (p, line) = (c_malloc(17), line!());
    let report = scope.finish();
    let vs = report.violations();
    let v = only(&vs);
    assert_report(v, ViolationKind::Leak, "leak of C memory");
    assert_eq!(v.rule(), "C3");
    let first = v.first_line();
    assert!(first.contains("17 byte(s) in 1 allocation(s)"), "{first}");
    assert!(first.contains(&format!("{THIS_FILE}:{line}:")), "{first}");
    assert_rust_site(v.regions()[0].alloc_site(), THIS_FILE, line);
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p) };
}

#[test]
fn intended_leak_is_not_counted() {
    let scope = LeakCheck::start();
    let p = c_malloc(64);
    intended_leak(p, "a table C keeps until exit");
    let report = scope.finish();
    assert!(report.is_empty(), "{report}");
    assert_eq!(report.leaked_bytes(), 0);
    assert_eq!(report.intended_leaks(), 1);
    assert!(report.violations().is_empty());
    assert!(report.to_string().contains("a table C keeps until exit"));
}

#[test]
fn cbox_leak_intended_is_not_counted() {
    let scope = LeakCheck::start();
    let forever: &'static mut u32 = CBox::new(5u32).leak_intended("lives as long as the program");
    *forever += 1;
    let report = scope.finish();
    assert!(report.is_empty(), "{report}");
    assert_eq!(report.intended_leaks(), 1);
    assert_eq!(*forever, 6);
}

#[test]
fn freed_memory_is_not_a_leak() {
    let scope = LeakCheck::start();
    // SAFETY: every block is freed once, by the owner that made it.
    unsafe {
        c_free(c_malloc(8));
        drop(CBox::from_str("temporary"));
        let c = call!(fixtures::fx_counter_new(0));
        call!(fixtures::fx_counter_free(c));
    }
    let report = scope.finish();
    assert!(report.is_empty(), "{report}");
    assert!(report.violations().is_empty());
}

#[test]
fn leak_checks_on_parallel_threads_see_only_their_own_leaks() {
    const THREADS: usize = 4;
    let outer = LeakCheck::start();
    // Every thread leaks before any thread finishes its scope, so a report
    // that saw other threads' memory would show it.
    let leaked = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let leaked = Arc::clone(&leaked);
            std::thread::spawn(move || {
                let scope = LeakCheck::start();
                let count = i + 1;
                let size = 100 + i;
                let blocks: Vec<usize> = (0..count).map(|_| c_malloc(size) as usize).collect();
                let line = line!() - 1;
                leaked.wait();
                let report = scope.finish();
                leaked.wait();
                // SAFETY: each block came from c_malloc and is freed once.
                unsafe { blocks.iter().for_each(|p| c_free(*p as *mut c_void)) };
                (count, size, line, report)
            })
        })
        .collect();
    for h in handles {
        let (count, size, line, report) = h.join().expect("thread ran");
        assert_eq!(report.groups().len(), 1, "{report}");
        let g = &report.groups()[0];
        assert_eq!(g.count(), count, "{report}");
        assert_eq!(g.bytes(), count * size, "{report}");
        assert_rust_site(g.site(), THIS_FILE, line);
    }
    let report = outer.finish();
    assert!(
        report.is_empty(),
        "another thread's leaks showed up: {report}"
    );
}

#[test]
fn exit_leak_report_child() {
    if !is_child("exit_leak_report_child") {
        return;
    }
    let p = c_malloc(37);
    let site = format!("{THIS_FILE}:{}:", line!() - 1);
    println!("child allocation site: {site}");
    // The block is never freed: the process exits with it live.
    std::hint::black_box(p);
}

#[test]
fn leaks_env_prints_the_leak_report_at_exit() {
    let out = run_child("exit_leak_report_child", &[("FFI_CHECK_LEAKS", "1")]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    let site = stdout
        .lines()
        .find_map(|l| l.split_once("child allocation site: ").map(|(_, s)| s))
        .unwrap_or_else(|| panic!("the child did not run: {stdout}"));
    assert!(stderr.contains("detected memory leaks"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Leak of 37 byte(s) in 1 allocation(s) of C memory allocated at {site}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("SUMMARY: ffi-check: 37 byte(s) leaked in 1 allocation(s)"),
        "{stderr}"
    );
}

// ---- opaque handles with a destroy function -------------------------------------

/// An opaque C handle type, as bindgen declares one.
#[repr(C)]
struct Handle {
    _private: [u8; 0],
}

extern "C" fn handle_open() -> *mut Handle {
    // SAFETY: malloc has no preconditions.
    unsafe { libc::malloc(32) }.cast()
}

/// `void handle_close(handle *)`: the library's destroy function.
unsafe extern "C" fn handle_close(h: *mut Handle) {
    // SAFETY: h came from handle_open and is closed once (the checks see to
    // the second time).
    unsafe { libc::free(h.cast()) }
}

const HANDLE_CLOSE: Deallocator = Deallocator::destroy("handle_close", handle_close);

#[test]
fn an_opaque_handle_owned_with_its_destroy_function_is_destroyed_once() {
    // SAFETY: a fresh handle nobody else owns.
    let h = unsafe { CBox::from_raw_with(handle_open(), HANDLE_CLOSE) }.expect("opened");
    let (_, v) = capture(|| drop(h));
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn destroying_an_opaque_handle_twice_is_double_free() {
    // SAFETY: a fresh handle nobody else owns.
    let h = unsafe { CBox::from_raw_with(handle_open(), HANDLE_CLOSE) }.expect("opened");
    let p = h.into_raw();
    // SAFETY: p is the adopted handle; it is destroyed once here.
    unsafe { c_free_with(p.cast(), &HANDLE_CLOSE) };
    // SAFETY: the second destroy is the mistake under test; the check skips it.
    let ((), v) = capture(|| unsafe { c_free_with(p.cast(), &HANDLE_CLOSE) });
    if ffi_check::COMPILED_IN {
        let v = only(&v);
        assert_report(v, ViolationKind::DoubleFree, "double free of C memory");
    }
}
