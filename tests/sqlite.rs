//! The real SQLite (built from its bundled source) under ffi-check: the safe
//! layer in `examples/wrappers/sqlite.rs` is silent on correct use over
//! thousands of calls, and each real mistake around SQLite is reported with
//! its kind, its words and sites in this file.
//!
//! SQLite's allocator is ffi-check's hooks (`SQLITE_CONFIG_MALLOC`, set once
//! by `sqlite::setup` before SQLite initialises), so all of SQLite's memory is
//! tracked C memory attributed to the `call!` that allocated it.

// The checks only exist in builds that compile them in.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

#[path = "../examples/wrappers/sqlite.rs"]
mod sqlite;

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;

use common::{
    assert_report, assert_report_line, assert_rust_site, child_passes, is_child, kinds, only,
};
use ffi_check::hooks::{Family, SqliteMemMethods};
use ffi_check::{
    c_free, c_free_with, call, capture, unchecked, LeakCheck, Managed, Pinned, ViolationKind,
};
use libsqlite3_sys as sql;
use sqlite::{Connection, Sqlite, Value};

const THIS_FILE: &str = file!();

/// `sqlite3_mprintf("%s", text)`, raw: SQLite memory the caller must give
/// back with `sqlite3_free`.
#[track_caller]
fn mprintf(text: &CStr) -> *mut c_char {
    sqlite::setup().expect("setup");
    // SAFETY: a "%s" format and one C string for it.
    unsafe { call!(sql::sqlite3_mprintf(c"%s", unchecked(text.as_ptr()))) }
}

// ---- the allocator ------------------------------------------------------------

/// The hooks' struct is SQLite's `sqlite3_mem_methods`, field for field.
#[test]
fn the_hooks_have_the_layout_of_sqlite3_mem_methods() {
    use std::mem::{align_of, offset_of, size_of};
    type M = sql::sqlite3_mem_methods;
    type H = SqliteMemMethods;
    assert_eq!(size_of::<H>(), size_of::<M>());
    assert_eq!(align_of::<H>(), align_of::<M>());
    assert_eq!(offset_of!(H, x_malloc), offset_of!(M, xMalloc));
    assert_eq!(offset_of!(H, x_free), offset_of!(M, xFree));
    assert_eq!(offset_of!(H, x_realloc), offset_of!(M, xRealloc));
    assert_eq!(offset_of!(H, x_size), offset_of!(M, xSize));
    assert_eq!(offset_of!(H, x_roundup), offset_of!(M, xRoundup));
    assert_eq!(offset_of!(H, x_init), offset_of!(M, xInit));
    assert_eq!(offset_of!(H, x_shutdown), offset_of!(M, xShutdown));
    assert_eq!(offset_of!(H, app_data), offset_of!(M, pAppData));
}

/// SQLite's allocations are tracked C memory of the `sqlite3_free` family,
/// attributed to the line of the call that made them, and given back when
/// the statement is finalized.
#[test]
fn sqlites_memory_is_tracked_at_the_line_of_the_call() {
    let conn = Connection::open_in_memory().expect("open");
    conn.execute_batch("CREATE TABLE t(x)").expect("create");
    let scope = LeakCheck::start();
    let stmt = conn.prepare("SELECT x, x + 1 FROM t WHERE x > ?1");
    let line = line!() - 1;
    let stmt = stmt.expect("prepare");
    let live = scope.finish();
    let group = live
        .groups()
        .iter()
        .find(|g| g.site().is_some_and(|s| s.line() == line))
        .unwrap_or_else(|| panic!("nothing at line {line}: {live}"));
    assert_rust_site(group.site(), THIS_FILE, line);
    let leak = group.violation();
    assert_eq!(leak.regions()[0].allocator(), "sqlite3_free");

    let scope = LeakCheck::start();
    drop(stmt);
    drop(conn);
    assert!(scope.finish().is_empty());
}

// ---- correct use: silent --------------------------------------------------------

/// A table of 2,000 rows written with text and blobs bound both ways
/// (copied, and kept by SQLite from pinned memory), read back and compared,
/// with SQLite strings owned by `CBox`es and an error path: thousands of
/// SQLite calls, no violation, and every byte SQLite allocated given back
/// once the connection closes.
#[test]
fn thousands_of_binds_steps_and_reads_are_clean() {
    const ROWS: i64 = 2000;
    let scope = LeakCheck::start();
    let ((), v) = capture(|| {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, data BLOB, note TEXT)",
        )
        .expect("create");
        let kept_note = Pinned::from_string("kept by SQLite, pinned by Rust".to_owned());
        let kept_blob = Pinned::from_vec(vec![0xC0u8, 0xFF, 0xEE]);
        {
            let mut insert = conn
                .prepare("INSERT INTO t(id, name, data, note) VALUES (?1, ?2, ?3, ?4)")
                .expect("prepare");
            conn.execute_batch("BEGIN").expect("begin");
            for id in 0..ROWS {
                insert.bind_int64(1, id).expect("bind");
                insert.bind_text(2, &format!("row {id} é")).expect("bind");
                if id % 7 == 0 {
                    // SAFETY: kept_blob is pinned and outlives the statement.
                    unsafe { insert.bind_blob_static(3, &kept_blob) }.expect("bind");
                } else {
                    insert
                        .bind_blob(3, &id.to_le_bytes()[..(id % 9) as usize])
                        .expect("bind");
                }
                if id % 5 == 0 {
                    // SAFETY: kept_note is pinned and outlives the statement.
                    unsafe { insert.bind_text_static(4, &kept_note) }.expect("bind");
                } else {
                    insert.bind_null(4).expect("bind");
                }
                assert!(!insert.step().expect("step"));
                insert.reset().expect("reset");
            }
            conn.execute_batch("COMMIT").expect("commit");
            let sql = insert.expanded_sql().expect("expanded");
            assert!(sql.to_str().unwrap().starts_with("INSERT INTO t"));
        }

        let mut select = conn
            .prepare("SELECT id, name, data, note FROM t WHERE id >= ?1 ORDER BY id")
            .expect("prepare");
        select.bind_int64(1, 0).expect("bind");
        let mut id = 0;
        while select.step().expect("step") {
            assert_eq!(select.column(0), Value::Integer(id));
            assert_eq!(select.column(1), Value::Text(format!("row {id} é")));
            let data = if id % 7 == 0 {
                vec![0xC0, 0xFF, 0xEE]
            } else {
                id.to_le_bytes()[..(id % 9) as usize].to_vec()
            };
            let data = if data.is_empty() {
                Value::Blob(vec![])
            } else {
                Value::Blob(data)
            };
            assert_eq!(select.column(2), data);
            let note = if id % 5 == 0 {
                Value::Text("kept by SQLite, pinned by Rust".into())
            } else {
                Value::Null
            };
            assert_eq!(select.column(3), note);
            id += 1;
        }
        assert_eq!(id, ROWS);
        drop(select);

        for text in ["plain", "it's", ""] {
            let quoted = sqlite::quote(text).expect("quote");
            assert_eq!(
                quoted.to_str().unwrap(),
                format!("'{}'", text.replace('\'', "''"))
            );
        }
        let err = conn.prepare("SELEC nothing").err().expect("a syntax error");
        assert_eq!(err.code, sql::SQLITE_ERROR);
        assert!(err.message.contains("syntax error"), "{}", err.message);
        let err = conn
            .execute_batch("INSERT INTO missing VALUES (1)")
            .expect_err("no table");
        assert!(err.message.contains("no such table"), "{}", err.message);
        drop(conn);
        drop(kept_note);
        drop(kept_blob);
    });
    assert!(v.is_empty(), "{}", v[0]);
    let leaks = scope.finish();
    assert!(leaks.is_empty(), "{leaks}");
}

// ---- C3: what SQLite allocated for a statement is given back by finalize --------

#[test]
fn an_unfinalized_statement_leaks_at_the_prepare_line() {
    let conn = Connection::open_in_memory().expect("open");
    let db = conn.handle();
    let mut stmt: *mut sql::sqlite3_stmt = std::ptr::null_mut();
    let scope = LeakCheck::start();
    let (text, tail) = (c"SELECT 1, 'two'", std::ptr::null_mut::<*const c_char>());
    // SAFETY: an open connection, a NUL-terminated statement, an out-pointer.
    let rc = unsafe { call!(sql::sqlite3_prepare_v2(db, text, -1, Some(&mut stmt), tail)) };
    let prepare_line = line!() - 1;
    assert_eq!(rc, sql::SQLITE_OK);
    // SAFETY: a statement just prepared.
    assert_eq!(unsafe { call!(sql::sqlite3_step(stmt)) }, sql::SQLITE_ROW);
    // The mistake: no sqlite3_finalize.
    let report = scope.finish();
    let group = report
        .groups()
        .iter()
        .find(|g| g.site().is_some_and(|s| s.line() == prepare_line))
        .unwrap_or_else(|| panic!("no leak at line {prepare_line}: {report}"));
    assert_rust_site(group.site(), THIS_FILE, prepare_line);
    assert_report(
        &group.violation(),
        ViolationKind::Leak,
        &format!(
            "leak of C memory: {} byte(s) in {} allocation(s) from {THIS_FILE}:{prepare_line}:",
            group.bytes(),
            group.count()
        ),
    );
    assert!(report.to_string().contains(&format!(
        "of C memory allocated at {THIS_FILE}:{prepare_line}:"
    )));

    // Finalized, the statement's memory is given back.
    let scope = LeakCheck::start();
    // SAFETY: prepared above, finalized once.
    unsafe { call!(sql::sqlite3_finalize(stmt)) };
    assert!(scope.finish().is_empty());
}

#[test]
fn a_connection_never_closed_leaks_at_the_open_line() {
    let scope = LeakCheck::start();
    let conn = Connection::open_in_memory().expect("open");
    let open_line = line!() - 1;
    let db = conn.handle();
    std::mem::forget(conn); // the mistake
    let report = scope.finish();
    let group = report
        .groups()
        .iter()
        .find(|g| g.site().is_some_and(|s| s.line() == open_line))
        .unwrap_or_else(|| panic!("no leak at line {open_line}: {report}"));
    assert_rust_site(group.site(), THIS_FILE, open_line);
    // SAFETY: opened above, closed once.
    assert_eq!(unsafe { call!(sql::sqlite3_close(db)) }, sql::SQLITE_OK);
}

// ---- C1: SQLite's memory goes back through sqlite3_free, once ---------------------

#[test]
fn mprintf_text_freed_with_free_is_mismatched() {
    let p = mprintf(c"hello");
    // SAFETY: refused: the memory is SQLite's.
    let ((), v) = capture(|| unsafe { c_free(p.cast()) });
    let line = line!() - 1;
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::MismatchedFree,
        "C1",
        "ffi-check: C memory freed with the wrong deallocator: allocated by `sqlite3_free`, freed with `free`",
    );
    assert_rust_site(v.call_site(), THIS_FILE, line);
    // The text is intact: the free was not carried out.
    // SAFETY: p is still SQLite's live string.
    assert_eq!(unsafe { CStr::from_ptr(p) }.to_bytes(), b"hello");
    // SAFETY: SQLite's memory, freed once with its deallocator.
    let ((), v) = capture(|| unsafe { call!(sql::sqlite3_free(p.cast::<c_void>())) });
    assert!(v.is_empty(), "{}", v[0]);
}

#[test]
fn mprintf_text_freed_twice_is_a_double_free() {
    let p = mprintf(c"twice");
    let mprintf_line = line!() - 1;
    // SAFETY: the first free is right, the second is the mistake (refused).
    let ((), v) = capture(|| unsafe {
        call!(sql::sqlite3_free(p.cast::<c_void>()));
        call!(sql::sqlite3_free(p.cast::<c_void>()));
    });
    let second_line = line!() - 2;
    // Passing the freed pointer to C at all is C2; freeing it again is C1.
    assert_eq!(
        kinds(&v),
        [ViolationKind::UseAfterFree, ViolationKind::DoubleFree]
    );
    assert_report_line(
        &v[0],
        ViolationKind::UseAfterFree,
        "C2",
        "ffi-check: argument 1 of `sqlite3_free` is a pointer into freed memory",
    );
    let v = &v[1];
    assert_report_line(
        v,
        ViolationKind::DoubleFree,
        "C1",
        "ffi-check: double free of C memory (`sqlite3_free`)",
    );
    assert_rust_site(v.call_site(), THIS_FILE, second_line);
    let region = &v.regions()[0];
    assert_eq!(region.addr(), p as usize);
    assert_rust_site(region.alloc_site(), THIS_FILE, mprintf_line);
    assert_rust_site(region.free_site(), THIS_FILE, second_line - 1);
}

/// The same through the ffi-check API: a `CBox` of SQLite memory frees with
/// `sqlite3_free`; freeing it again by hand is the double free.
#[test]
fn sqlite_memory_freed_by_its_box_and_again_by_hand_is_a_double_free() {
    let quoted = sqlite::quote("boxed").expect("quote");
    let p = quoted.as_ptr().cast_mut().cast::<c_void>();
    drop(quoted);
    // SAFETY: refused: already freed by the box.
    let ((), v) = capture(|| unsafe { c_free_with(p, &Sqlite::DEALLOCATOR) });
    let line = line!() - 1;
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::DoubleFree,
        "double free of C memory (`sqlite3_free`)",
    );
    assert_rust_site(v.call_site(), THIS_FILE, line);
}

// ---- P2 and P3: text SQLite keeps (SQLITE_STATIC) ---------------------------------

/// Bound with `SQLITE_STATIC`, SQLite keeps the pointer after the call: the
/// text must be pinned.
#[test]
fn static_text_in_unpinned_memory_is_retained() {
    if ffi_check::mode() == ffi_check::Mode::Full {
        // Mode 2 reports it at the call itself, by scanning: see
        // `mode_2_finds_sqlites_pointer_to_unpinned_static_text`.
        return;
    }
    let conn = Connection::open_in_memory().expect("open");
    let mut stmt = conn.prepare("SELECT ?1").expect("prepare");
    let text = Managed::from_string("not pinned".to_owned());
    // SAFETY: `text` outlives the statement (dropped after it below).
    let (r, v) = capture(|| unsafe { stmt.bind_text_static(1, &text) });
    let line = line!() - 1;
    r.expect("bind");
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::Retained,
        "P2",
        "ffi-check: C keeps a pointer to unpinned managed memory after the call",
    );
    assert_rust_site(v.call_site(), THIS_FILE, line);
    assert_eq!(v.regions()[0].addr(), text.addr());
    assert!(stmt.step().expect("step"));
    assert_eq!(stmt.column(0), Value::Text("not pinned".into()));
    drop(stmt); // SQLite lets go
    drop(text);
}

/// The text SQLite keeps is dropped before the statement runs: reported at
/// the drop, and the memory is kept (leaked) so SQLite still reads the text.
#[test]
fn static_text_dropped_before_step_is_freed_while_retained() {
    let conn = Connection::open_in_memory().expect("open");
    let mut stmt = conn.prepare("SELECT ?1").expect("prepare");
    let text = Pinned::from_string("dies too early".to_owned());
    let addr = text.addr();
    // SAFETY: deliberately broken: `text` is dropped while SQLite keeps it;
    // ffi-check keeps its memory alive, so the step below still reads it.
    unsafe { stmt.bind_text_static(1, &text) }.expect("bind");
    let bind_line = line!() - 1;
    let ((), v) = capture(|| drop(text));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::FreedWhileRetained,
        "managed memory freed while C still holds a pointer to it",
    );
    let region = &v.regions()[0];
    assert_eq!(region.addr(), addr);
    assert_rust_site(region.retain_site(), THIS_FILE, bind_line);
    assert!(v
        .to_string()
        .contains("the memory is kept (leaked) so that C's pointer stays valid"));
    assert!(stmt.step().expect("step"));
    assert_eq!(stmt.column(0), Value::Text("dies too early".into()));
}

/// The right way: pinned memory that outlives the statement, and a rebind
/// lets go of the old text.
#[test]
fn static_text_pinned_until_finalize_is_clean() {
    let conn = Connection::open_in_memory().expect("open");
    let first = Pinned::from_string("first".to_owned());
    let second = Pinned::from_vec(b"second".to_vec());
    let ((), v) = capture(|| {
        let mut stmt = conn.prepare("SELECT ?1").expect("prepare");
        // SAFETY: `first` is pinned and outlives the statement.
        unsafe { stmt.bind_text_static(1, &first) }.expect("bind");
        assert!(stmt.step().expect("step"));
        assert_eq!(stmt.column(0), Value::Text("first".into()));
        stmt.reset().expect("reset");
        // SAFETY: as above; SQLite lets go of `first` here.
        unsafe { stmt.bind_blob_static(1, &second) }.expect("bind");
        assert!(stmt.step().expect("step"));
        assert_eq!(stmt.column(0), Value::Blob(b"second".to_vec()));
    });
    assert!(v.is_empty(), "{}", v[0]);
    drop(first);
    drop(second);
}

// ---- mode 2 -------------------------------------------------------------------

/// Mode 2 scans tracked C memory after each call: SQLite's copy of a
/// parameter bound with `SQLITE_STATIC` (in the statement's memory, tracked
/// through the hooks) points to unpinned Rust memory, which is `Retained`
/// without anyone declaring it.
#[test]
fn mode_2_finds_sqlites_pointer_to_unpinned_static_text() {
    const NAME: &str = "mode_2_finds_sqlites_pointer_to_unpinned_static_text";
    if is_child(NAME) {
        let conn = Connection::open_in_memory().expect("open");
        let stmt = conn.prepare("SELECT ?1").expect("prepare");
        let text = Managed::from_string("not pinned".to_owned());
        let p = text.as_ptr().cast::<c_char>();
        let len: std::os::raw::c_int = ffi_check::to_c(text.len());
        let raw = stmt.handle();
        // SAFETY: a live statement; the text outlives it (dropped below).
        let (rc, v) = capture(|| unsafe {
            call!(sql::sqlite3_bind_text(raw, 1, p, len, sql::SQLITE_STATIC()))
        });
        let line = line!() - 2;
        assert_eq!(rc, sql::SQLITE_OK);
        let v = only(&v);
        assert_report(
            v,
            ViolationKind::Retained,
            "C keeps a pointer to unpinned managed memory",
        );
        assert_eq!(v.callee(), Some("sqlite3_bind_text"));
        assert_rust_site(v.call_site(), THIS_FILE, line);
        assert!(v.regions().iter().any(|r| r.addr() == text.addr()));
        let _ = capture(|| drop(stmt));
        return;
    }
    child_passes(NAME, &[("FFI_CHECK", "2")]);
}

/// In mode 2 the correct layer stays silent too.
#[test]
fn mode_2_is_silent_on_the_wrapper() {
    const NAME: &str = "mode_2_is_silent_on_the_wrapper";
    if is_child(NAME) {
        let kept = Pinned::from_string("pinned while SQLite keeps it".to_owned());
        let scope = LeakCheck::start();
        ffi_check::assert_clean(|| {
            let conn = Connection::open_in_memory().expect("open");
            conn.execute_batch("CREATE TABLE t(a TEXT, b BLOB)")
                .expect("create");
            let mut insert = conn
                .prepare("INSERT INTO t VALUES (?1, ?2)")
                .expect("prepare");
            for i in 0..200u32 {
                // SAFETY: `kept` is pinned and outlives the statement.
                unsafe { insert.bind_text_static(1, &kept) }.expect("bind");
                insert.bind_blob(2, &i.to_le_bytes()).expect("bind");
                assert!(!insert.step().expect("step"));
                insert.reset().expect("reset");
            }
            drop(insert);
            let mut count = conn.prepare("SELECT count(*) FROM t").expect("prepare");
            assert!(count.step().expect("step"));
            assert_eq!(count.column(0), Value::Integer(200));
        });
        assert!(scope.finish().is_empty());
        return;
    }
    child_passes(NAME, &[("FFI_CHECK", "2")]);
}
