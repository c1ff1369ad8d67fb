//! SQLite with the tracking allocator installed: the raw-pointer mistake no
//! wrapper type can catch, a dangling `CString` temporary handed to
//! `sqlite3_prepare_v2`, is `UseAfterFree` naming the line that freed it.
//! (A test binary of its own: the global allocator is per program.)

// The checks only exist in builds that compile them in.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

#[path = "../examples/wrappers/sqlite.rs"]
mod sqlite;

use std::ffi::CString;
use std::os::raw::c_int;

use common::{assert_report, assert_rust_site, only};
use ffi_check::{call, capture, to_c, TrackingAllocator, ViolationKind};
use libsqlite3_sys as sql;
use sqlite::Connection;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

#[test]
#[allow(dangling_pointers_from_temporaries)]
fn a_dangling_cstring_temporary_passed_to_prepare_is_use_after_free() {
    ffi_check::set_event_backtraces(Some(true));
    let db = Connection::open_in_memory().expect("open");
    let mut stmt: *mut sql::sqlite3_stmt = std::ptr::null_mut();
    let ((rc, freed_at, call_at), v) = capture(|| {
        let sql_text = CString::new("SELECT 1").unwrap().as_ptr();
        let freed_at = line!() - 1;
        // SAFETY: deliberately passes the dangling pointer; the quarantine
        // keeps the freed bytes mapped and unchanged, so SQLite still reads
        // "SELECT 1".
        let rc = unsafe {
            call!(sql::sqlite3_prepare_v2(
                db.handle(),
                sql_text,
                -1,
                std::ptr::addr_of_mut!(stmt),
                std::ptr::null_mut()
            ))
        };
        let call_at = line!() - 8;
        (rc, freed_at, call_at)
    });
    ffi_check::set_event_backtraces(None);
    assert_eq!(rc, sql::SQLITE_OK);
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 2 of `sqlite3_prepare_v2` is a pointer into freed memory",
    );
    assert_rust_site(v.call_site(), file!(), call_at);
    let text = v.to_string();
    let freed = text
        .split("first freed")
        .nth(1)
        .expect("the free's backtrace");
    // Lines are named where there is debug info (not in an optimised test
    // build).
    if cfg!(debug_assertions) {
        assert!(
            freed.contains(&format!("tests/sqlite_tracking.rs:{freed_at}")),
            "{text}"
        );
    }
    assert!(
        text.contains("dangling_pointers_from_temporaries"),
        "{text}"
    );
    // SAFETY: stmt came from sqlite3_prepare_v2, finalized once.
    unsafe { call!(sql::sqlite3_finalize(stmt)) };
}

#[test]
fn the_same_statement_bound_to_a_variable_is_clean() {
    let db = Connection::open_in_memory().expect("open");
    let mut stmt: *mut sql::sqlite3_stmt = std::ptr::null_mut();
    let sql_text = CString::new("SELECT 1").unwrap();
    let len: c_int = to_c(sql_text.as_bytes().len());
    ffi_check::assert_clean(|| {
        // SAFETY: sql_text lives through the call; stmt is written by SQLite,
        // then stepped and finalized once.
        unsafe {
            let rc = call!(sql::sqlite3_prepare_v2(
                db.handle(),
                sql_text.as_ptr(),
                len,
                std::ptr::addr_of_mut!(stmt),
                std::ptr::null_mut()
            ));
            assert_eq!(rc, sql::SQLITE_OK);
            assert_eq!(call!(sql::sqlite3_step(stmt)), sql::SQLITE_ROW);
            call!(sql::sqlite3_finalize(stmt));
        }
    });
}
