//! ffi-check on the real SQLite: a small safe layer
//! (`examples/wrappers/sqlite.rs`) with SQLite's allocator routed into
//! ffi-check (`SQLITE_CONFIG_MALLOC` with `ffi_check::hooks`).
//!
//! ```text
//! cargo run --example sqlite
//! ```
//!
//! It runs the layer the right way (which must be silent: "ok: ...") and
//! then makes each real mistake around SQLite inside `ffi_check::capture`,
//! printing the report. It exits non-zero if a correct pattern was reported
//! or a mistake was not.

#[path = "wrappers/checklist.rs"]
mod checklist;
#[path = "wrappers/sqlite.rs"]
mod sqlite;

use std::ffi::c_void;
use std::os::raw::c_char;

use checklist::{checks_ready, Checklist};
use ffi_check::{c_free, call, unchecked, Managed, Pinned, ViolationKind};
use libsqlite3_sys as sql;
use sqlite::{Connection, Value};

fn main() {
    if !checks_ready("sqlite") {
        return;
    }
    if let Err(e) = sqlite::setup() {
        eprintln!("sqlite: {e}");
        std::process::exit(1);
    }
    let mut list = Checklist::new("sqlite");
    correct_use(&mut list);
    c3_an_unfinalized_statement(&mut list);
    c1_sqlites_memory_goes_back_through_sqlite3_free(&mut list);
    p2_p3_text_sqlite_keeps(&mut list);
    std::process::exit(list.finish());
}

fn correct_use(list: &mut Checklist) {
    list.section("correct use: the layer, silent; every byte SQLite allocates is tracked");
    list.ok(
        "open, create, insert 500 rows binding text and blobs (copied, and kept from pinned memory), read them back, close",
        || {
            let note = Pinned::from_string("kept by SQLite, pinned by Rust".to_owned());
            let conn = Connection::open_in_memory().expect("open");
            conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, data BLOB, note TEXT)")
                .expect("create");
            let mut insert = conn
                .prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4)")
                .expect("prepare");
            for id in 0..500i64 {
                insert.bind_int64(1, id).expect("bind");
                insert.bind_text(2, &format!("row {id}")).expect("bind");
                insert.bind_blob(3, &id.to_le_bytes()).expect("bind");
                // SAFETY: `note` is pinned and outlives the statement.
                unsafe { insert.bind_text_static(4, &note) }.expect("bind");
                insert.step().expect("step");
                insert.reset().expect("reset");
            }
            drop(insert);
            let mut select = conn.prepare("SELECT name, data, note FROM t ORDER BY id").expect("prepare");
            let mut rows = 0i64;
            while select.step().expect("step") {
                assert_eq!(select.column(0), Value::Text(format!("row {rows}")));
                assert_eq!(select.column(1), Value::Blob(rows.to_le_bytes().to_vec()));
                assert_eq!(select.column(2), Value::Text((*note).to_owned()));
                rows += 1;
            }
            println!("    {rows} rows written and read back");
        },
    );
    list.ok(
        "sqlite3_mprintf text owned by a CBox that frees it with sqlite3_free",
        || {
            let quoted = sqlite::quote("it's").expect("quote");
            println!("    {:?}", quoted);
        },
    );
}

fn c3_an_unfinalized_statement(list: &mut Checklist) {
    list.section("C3: sqlite3_finalize gives a statement's memory back; without it, the leak names the prepare");
    let conn = Connection::open_in_memory().expect("open");
    let db = conn.handle();
    let mut stmt: *mut sql::sqlite3_stmt = std::ptr::null_mut();
    list.leak(
        "sqlite3_prepare_v2 without sqlite3_finalize",
        file!(),
        || {
            let (text, tail) = (c"SELECT 1, 'two'", std::ptr::null_mut::<*const c_char>());
            // SAFETY: an open connection, a NUL-terminated statement, an out-pointer.
            let rc = unsafe { call!(sql::sqlite3_prepare_v2(db, text, -1, Some(&mut stmt), tail)) };
            assert_eq!(rc, sql::SQLITE_OK);
            line!() - 2
        },
    );
    // SAFETY: prepared above, finalized once (the clean-up).
    unsafe { call!(sql::sqlite3_finalize(stmt)) };
}

fn c1_sqlites_memory_goes_back_through_sqlite3_free(list: &mut Checklist) {
    list.section("C1: SQLite's memory is freed once, by sqlite3_free");
    // SAFETY: a "%s" format and one C string for it.
    let p = unsafe { call!(sql::sqlite3_mprintf(c"%s", unchecked(c"hello".as_ptr()))) };
    list.mistake(
        "free sqlite3_mprintf's text with free (refused: SQLite still owns it)",
        &[ViolationKind::MismatchedFree],
        // SAFETY: refused by the checker: the memory is SQLite's.
        || unsafe { c_free(p.cast()) },
    );
    list.mistake(
        "free it with sqlite3_free, then again",
        &[ViolationKind::UseAfterFree, ViolationKind::DoubleFree],
        // SAFETY: the first free is right; the second one is refused.
        || unsafe {
            call!(sql::sqlite3_free(p.cast::<c_void>()));
            call!(sql::sqlite3_free(p.cast::<c_void>()));
        },
    );
}

fn p2_p3_text_sqlite_keeps(list: &mut Checklist) {
    list.section(
        "P2 and P3: text bound with SQLITE_STATIC is kept by SQLite until finalize or rebind",
    );
    let conn = Connection::open_in_memory().expect("open");

    let mut stmt = conn.prepare("SELECT ?1").expect("prepare");
    let unpinned = Managed::from_string("not pinned".to_owned());
    list.mistake(
        "bind text from unpinned memory with SQLITE_STATIC",
        &[ViolationKind::Retained],
        // SAFETY: `unpinned` outlives the statement (dropped after it).
        || unsafe { stmt.bind_text_static(1, &unpinned) }.expect("bind"),
    );
    drop(stmt);
    drop(unpinned);

    let mut stmt = conn.prepare("SELECT ?1").expect("prepare");
    let text = Pinned::from_string("dies too early".to_owned());
    // SAFETY: deliberately broken below; ffi-check keeps the memory alive.
    unsafe { stmt.bind_text_static(1, &text) }.expect("bind");
    list.mistake(
        "drop the bound text before the statement runs",
        &[ViolationKind::FreedWhileRetained],
        || drop(text),
    );
    list.ok(
        "the step still reads the text (the checker kept it alive); finalize",
        move || {
            assert!(stmt.step().expect("step"));
            assert_eq!(stmt.column(0), Value::Text("dies too early".into()));
            drop(stmt);
        },
    );
}
