//! Rule P1 (Go's first cgo rule): Rust may lend C a pointer to managed memory
//! for the duration of a call only if that memory holds no pointer to
//! *unpinned* managed memory. A pointer into an array lends the whole
//! allocation. Checked against the C fixture library.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::{c_int, c_ulong, c_void};

use common::fixtures::{self, FxView};
use common::{assert_report_line, only};
use ffi_check::{
    assert_clean, call, capture, CBox, Managed, Pinned, Pinner, Violation, ViolationKind,
};

const NESTED_FIRST_LINE: &str =
    "ffi-check: argument 1 of `fx_sum_nested` has managed pointer to unpinned managed pointer";

/// The shape every P1 report has: its kind, the first line, the help line.
fn assert_unpinned_nested(v: &Violation, first_line: &str) {
    assert_report_line(v, ViolationKind::UnpinnedNested, "P1", first_line);
}

#[test]
fn lending_table_of_unpinned_pointers_is_reported() {
    let (first, first_line) = (Managed::<c_int>::new(1), line!());
    let second = Managed::<c_int>::new(2);
    let (table, table_line) = (Managed::new([first.as_ptr(), second.as_ptr()]), line!());

    let (sum, violations) = capture(|| {
        // SAFETY: the table holds two pointers to live ints.
        unsafe { call!(fixtures::fx_sum_nested(&table, 2)) }
    });
    assert_eq!(sum, 3, "the call is still made");

    let v = only(&violations);
    assert_unpinned_nested(v, NESTED_FIRST_LINE);
    assert_eq!(v.callee(), Some("fx_sum_nested"));
    let site = v.call_site().expect("the call site");
    assert_eq!(site.file(), file!());
    assert!(!site.is_c());

    let regions = v.regions();
    assert_eq!(regions.len(), 2, "{v}");
    let lent = &regions[0];
    assert_eq!(lent.role(), "lent");
    assert_eq!(lent.addr(), table.addr());
    assert_eq!(lent.size(), 2 * std::mem::size_of::<*const c_int>());
    let lent_site = lent.alloc_site().expect("where the table was allocated");
    assert_eq!((lent_site.file(), lent_site.line()), (file!(), table_line));

    let target = &regions[1];
    assert_eq!(target.role(), "points to");
    assert_eq!(target.addr(), first.addr());
    assert_eq!(target.type_name(), Some("i32"));
    let target_site = target
        .alloc_site()
        .expect("where the pointee was allocated");
    assert_eq!(
        (target_site.file(), target_site.line()),
        (file!(), first_line)
    );

    let report = v.to_string();
    assert!(report.contains("  rule P1 (UnpinnedNested)"), "{report}");
    assert!(report.contains("in call to `fx_sum_nested`"), "{report}");
    assert!(
        report.contains(&format!("allocated at {}:{table_line}:", file!())),
        "{report}"
    );
    assert!(
        report.contains(&format!("allocated at {}:{first_line}:", file!())),
        "{report}"
    );
}

#[test]
fn lending_vec_of_unpinned_pointers_is_reported() {
    let values: Vec<Managed<c_int>> = (1..=4).map(Managed::new).collect();
    let table = Managed::from_vec(values.iter().map(|m| m.as_ptr()).collect::<Vec<_>>());

    let (sum, violations) = capture(|| {
        // SAFETY: the table holds four pointers to live ints.
        unsafe { call!(fixtures::fx_sum_nested(&table, table.len())) }
    });
    assert_eq!(sum, 10);

    let v = only(&violations);
    assert_unpinned_nested(v, NESTED_FIRST_LINE);
    assert_eq!(v.callee(), Some("fx_sum_nested"));
    assert_eq!(v.regions()[0].role(), "lent");
    assert_eq!(v.regions()[0].addr(), table.addr());
    assert_eq!(v.regions()[1].role(), "points to");
    assert!(values.iter().any(|m| m.addr() == v.regions()[1].addr()));
}

#[test]
fn lending_struct_holding_unpinned_pointer_is_reported() {
    let (data, data_line) = (Managed::from_vec(vec![5 as c_int, 6, 7]), line!());
    let view = Managed::new(FxView {
        data: data.as_ptr(),
        len: data.len(),
    });

    let (sum, violations) = capture(|| {
        // SAFETY: the view points to three live ints.
        unsafe { call!(fixtures::fx_sum_view(&view)) }
    });
    assert_eq!(sum, 18);

    let v = only(&violations);
    assert_unpinned_nested(
        v,
        "ffi-check: argument 1 of `fx_sum_view` has managed pointer to unpinned managed pointer",
    );
    assert_eq!(v.callee(), Some("fx_sum_view"));
    assert_eq!(v.call_site().map(|s| s.file()), Some(file!()));
    assert_eq!(v.regions()[0].role(), "lent");
    assert_eq!(v.regions()[0].addr(), view.addr());
    assert_eq!(v.regions()[1].role(), "points to");
    assert_eq!(v.regions()[1].addr(), data.addr());
    let site = v.regions()[1].alloc_site().expect("allocation site");
    assert_eq!((site.file(), site.line()), (file!(), data_line));
}

#[test]
fn pointer_into_middle_of_table_lends_whole_allocation() {
    let unpinned = Managed::<c_int>::new(1);
    let pinned = Managed::<c_int>::new(2);
    let mut pinner = Pinner::new();
    pinner.pin(&pinned);
    // C is handed only the second entry, which points to pinned memory; the
    // first entry, outside what C is told about, still makes it a violation.
    let table = Managed::from_vec(vec![unpinned.as_ptr(), pinned.as_ptr()]);

    let (sum, violations) = capture(|| {
        // SAFETY: one entry past the start is in bounds; it points to a live int.
        unsafe { call!(fixtures::fx_sum_nested(table.as_ptr().add(1), 1)) }
    });
    assert_eq!(sum, 2);

    let v = only(&violations);
    assert_unpinned_nested(v, NESTED_FIRST_LINE);
    assert_eq!(v.regions()[0].role(), "lent");
    assert_eq!(
        v.regions()[0].addr(),
        table.addr(),
        "the whole table is lent"
    );
    assert_eq!(v.regions()[1].addr(), unpinned.addr());
    assert!(
        v.to_string()
            .contains("the nested pointer is at offset 0 of the lent memory"),
        "{v}"
    );
}

#[test]
fn user_data_holding_unpinned_pointer_is_reported_with_its_argument_number() {
    unsafe extern "C" fn ignore(_user: *mut c_void, _item: c_int) -> c_int {
        ffi_check::callback!({ 0 })
    }
    let target = Managed::<c_int>::new(9);
    let mut user = Managed::new([target.as_ptr()]);
    let items = Managed::from_vec(vec![1 as c_int, 2]);
    let visit: fixtures::FxVisitFn = Some(ignore);

    let (calls, violations) = capture(|| {
        // SAFETY: `ignore` never reads the user data; the items are live.
        unsafe { call!(fixtures::fx_for_each(&items, items.len(), visit, &mut user)) }
    });
    assert_eq!(calls, 2);

    let v = only(&violations);
    assert_unpinned_nested(
        v,
        "ffi-check: argument 4 of `fx_for_each` has managed pointer to unpinned managed pointer",
    );
    assert_eq!(v.callee(), Some("fx_for_each"));
    assert_eq!(v.regions()[0].addr(), user.addr());
    assert_eq!(v.regions()[1].addr(), target.addr());
}

#[test]
fn one_unpinned_pointer_among_many_pinned_is_found() {
    // A long table (more than a few words) is scanned with one shard lock
    // held across runs of lookups; the one unpinned entry is still found.
    let pinned: Vec<Pinned<c_int>> = (0..100).map(Pinned::new).collect();
    let loose = Managed::<c_int>::new(1000);
    let mut ptrs: Vec<*const c_int> = pinned.iter().map(|p| p.as_ptr()).collect();
    ptrs.insert(70, loose.as_ptr());
    let table = Managed::from_vec(ptrs);
    let (sum, v) = capture(|| {
        // SAFETY: the table holds 101 pointers to live ints.
        unsafe { call!(fixtures::fx_sum_nested(&table, 101)) }
    });
    assert_eq!(sum, (0..100).sum::<i64>() + 1000);
    let v = only(&v);
    assert_unpinned_nested(v, NESTED_FIRST_LINE);
    assert!(
        v.to_string().contains("at offset 560 of the lent memory"),
        "{v}"
    );
    assert_eq!(v.regions()[1].addr(), loose.as_ptr() as usize);
}

#[test]
fn many_pinned_pointers_are_ok() {
    let pinned: Vec<Pinned<c_int>> = (0..300).map(Pinned::new).collect();
    let table = Managed::from_vec(pinned.iter().map(|p| p.as_ptr()).collect::<Vec<_>>());
    let sum = assert_clean(|| {
        // SAFETY: the table holds 300 pointers to live, pinned ints.
        unsafe { call!(fixtures::fx_sum_nested(&table, 300)) }
    });
    assert_eq!(sum, (0..300).sum::<i64>());
}

#[test]
fn lending_pinned_nested_is_ok() {
    let first = Managed::<c_int>::new(1);
    let second = Managed::<c_int>::new(2);
    let mut pinner = Pinner::new();
    pinner.pin(&first);
    pinner.pin(&second);
    let table = Managed::new([first.as_ptr(), second.as_ptr()]);

    let sum = assert_clean(|| {
        // SAFETY: the table holds two pointers to live ints.
        unsafe { call!(fixtures::fx_sum_nested(&table, 2)) }
    });
    assert_eq!(sum, 3);
}

#[test]
fn lending_pointers_into_pinned_values_is_ok() {
    let values: Vec<Pinned<c_int>> = (1..=3).map(Pinned::new).collect();
    let table = Managed::from_vec(values.iter().map(|p| p.as_ptr()).collect::<Vec<_>>());
    let data = Pinned::from_vec(vec![4 as c_int, 5]);
    let view = Managed::new(FxView {
        data: data.as_ptr(),
        len: data.len(),
    });

    let (sum, view_sum) = assert_clean(|| {
        // SAFETY: every pointer in the table and the view is to live ints.
        unsafe {
            (
                call!(fixtures::fx_sum_nested(&table, table.len())),
                call!(fixtures::fx_sum_view(&view)),
            )
        }
    });
    assert_eq!((sum, view_sum), (6, 9));
}

#[test]
fn lending_pointers_to_c_memory_is_ok() {
    let first = CBox::<c_int>::new(20);
    let second = CBox::<c_int>::new(22);
    let table = Managed::new([first.as_ptr(), second.as_ptr()]);
    let data = CBox::from_slice(&[1 as c_int, 2, 3]);
    let view = Managed::new(FxView {
        data: data.as_ptr(),
        len: 3,
    });

    let (sum, view_sum) = assert_clean(|| {
        // SAFETY: every pointer in the table and the view is to live C ints.
        unsafe {
            (
                call!(fixtures::fx_sum_nested(&table, 2)),
                call!(fixtures::fx_sum_view(&view)),
            )
        }
    });
    assert_eq!((sum, view_sum), (42, 6));
}

#[test]
fn byte_buffers_are_never_scanned() {
    let unpinned = Managed::<u64>::new(7);
    // Bytes that spell an address of unpinned managed memory: a byte buffer
    // can hold no pointer C would follow, so it is never scanned.
    let mut bytes = unpinned.addr().to_ne_bytes().repeat(4);
    bytes.extend_from_slice(&[1, 2, 3]);
    let mut buf = Managed::from_vec(bytes);
    assert!(!buf.is_scanned());
    let expected: c_ulong = buf.iter().map(|b| c_ulong::from(*b)).sum();

    let sum = assert_clean(|| {
        // SAFETY: `buf` is `buf.len()` readable bytes.
        unsafe { call!(fixtures::fx_checksum(&buf, buf.len())) }
    });
    assert_eq!(sum, expected);

    let n = buf.len();
    let written = assert_clean(|| {
        // SAFETY: `buf` is `n` writable bytes.
        unsafe { call!(fixtures::fx_fill(&mut buf, n, 1)) }
    });
    assert_eq!(written, n);
    assert!(buf.iter().all(|b| *b == 1));
}

#[test]
fn words_that_look_like_pointers_are_scanned() {
    let unpinned = Managed::<u64>::new(7);
    let words = Managed::from_vec(vec![unpinned.addr() as u64; 4]);
    assert!(words.is_scanned());

    let (_, violations) = capture(|| {
        // SAFETY: `words` is 32 readable bytes.
        unsafe { call!(fixtures::fx_checksum(&words, 32)) }
    });
    let v = only(&violations);
    assert_unpinned_nested(
        v,
        "ffi-check: argument 1 of `fx_checksum` has managed pointer to unpinned managed pointer",
    );
    assert_eq!(v.regions()[1].addr(), unpinned.addr());
}

#[test]
fn pointer_free_words_are_not_scanned() {
    let unpinned = Managed::<u64>::new(7);
    let words = Managed::from_vec(vec![unpinned.addr() as u64; 4]).pointer_free();
    assert!(!words.is_scanned());

    let expected: c_ulong = unpinned
        .addr()
        .to_ne_bytes()
        .iter()
        .map(|b| 4 * c_ulong::from(*b))
        .sum();
    let sum = assert_clean(|| {
        // SAFETY: `words` is 32 readable bytes.
        unsafe { call!(fixtures::fx_checksum(&words, 32)) }
    });
    assert_eq!(sum, expected);
}

#[test]
fn lending_after_unpin_is_reported_again() {
    let first = Managed::<c_int>::new(1);
    let second = Managed::<c_int>::new(2);
    let table = Managed::new([first.as_ptr(), second.as_ptr()]);
    let mut pinner = Pinner::new();
    pinner.pin(&first);
    pinner.pin(&second);

    let sum = assert_clean(|| {
        // SAFETY: the table holds two pointers to live ints.
        unsafe { call!(fixtures::fx_sum_nested(&table, 2)) }
    });
    assert_eq!(sum, 3);

    pinner.unpin();
    let (sum, violations) = capture(|| {
        // SAFETY: as above; the ints are still alive, only unpinned.
        unsafe { call!(fixtures::fx_sum_nested(&table, 2)) }
    });
    assert_eq!(sum, 3);
    let v = only(&violations);
    assert_unpinned_nested(v, NESTED_FIRST_LINE);
    assert_eq!(v.regions()[1].addr(), first.addr());
}

#[test]
fn call_with_managed_buffer_works_end_to_end() {
    assert_clean(|| {
        let mut buf = Managed::from_vec(vec![0u8; 100]);
        let n = buf.len();
        // SAFETY: `buf` is `n` writable bytes.
        let written = unsafe { call!(fixtures::fx_fill(&mut buf, n, 3)) };
        assert_eq!(written, 100);
        assert!(buf.iter().all(|b| *b == 3));
        // SAFETY: `buf` is `n` readable bytes.
        let sum = unsafe { call!(fixtures::fx_checksum(&buf, n)) };
        assert_eq!(sum, 300);
    });
}
