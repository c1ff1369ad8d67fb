//! The generator over a real `-sys` crate's pre-generated bindings:
//! libsqlite3-sys's bundled `bindgen_bundled_version.rs`, found and wrapped
//! by the build script of `ffi-check-bindgen-output` (`bindings/output/`),
//! whose `sqlite3` module is libsqlite3-sys with every function checked.
//!
//! Every non-variadic function of the file is wrapped, the result compiles
//! (that crate builds), wrapped functions work, correct use is clean, and
//! mistakes are reported at the lines of this file that made the calls.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::raw::c_int;
use std::ptr::null_mut;
use std::sync::OnceLock;

use ffi_check::hooks::{self, Family};
use ffi_check::{capture, Deallocator, ViolationKind};
use ffi_check_bindgen_output::generated::{
    SQLITE3_BINDINGS, SQLITE3_CHECKED, SQLITE3_SKIPPED, SQLITE3_UNCHECKED, SQLITE3_WRAPPED,
};
use ffi_check_bindgen_output::sqlite3 as checked;

#[global_allocator]
static ALLOC: ffi_check::TrackingAllocator = ffi_check::TrackingAllocator::new();

/// The functions of the bindings file's top-level extern blocks, read here
/// without the generator: (non-variadic, variadic, statics).
fn foreign_items() -> (Vec<String>, Vec<String>, Vec<String>) {
    let source = std::fs::read_to_string(SQLITE3_BINDINGS).expect("the bindings file");
    let file = syn::parse_file(&source).expect("bindgen's output parses");
    let (mut plain, mut variadic, mut statics) = (Vec::new(), Vec::new(), Vec::new());
    for item in &file.items {
        let syn::Item::ForeignMod(block) = item else {
            continue;
        };
        for item in &block.items {
            match item {
                syn::ForeignItem::Fn(f) if f.sig.variadic.is_some() => {
                    variadic.push(f.sig.ident.to_string())
                }
                syn::ForeignItem::Fn(f) => plain.push(f.sig.ident.to_string()),
                syn::ForeignItem::Static(s) => statics.push(s.ident.to_string()),
                other => panic!(
                    "an item the test does not expect: {}",
                    quote::quote!(#other)
                ),
            }
        }
    }
    (plain, variadic, statics)
}

#[test]
fn every_non_variadic_function_is_wrapped() {
    let (plain, variadic, statics) = foreign_items();
    assert!(plain.len() > 250, "{} functions", plain.len());
    assert_eq!(SQLITE3_WRAPPED, plain.as_slice());
    for name in &plain {
        assert!(
            SQLITE3_CHECKED.contains(&format!("pub unsafe fn {name}(")),
            "`{name}` is not in the generated file"
        );
    }
    // What is skipped is exactly the variadic functions and the statics.
    let skipped: BTreeSet<&str> = SQLITE3_SKIPPED
        .iter()
        .map(|s| s.split('`').nth(1).expect("a name in backquotes"))
        .collect();
    let expected: BTreeSet<&str> = variadic
        .iter()
        .chain(&statics)
        .map(String::as_str)
        .collect();
    assert_eq!(skipped, expected);
    for v in &variadic {
        assert!(SQLITE3_SKIPPED.contains(
            &format!("`{v}`: variadic (`call!` takes a fixed list of arguments)").as_str()
        ));
    }
    // SQLite passes no struct by value: every argument goes to `call!`.
    assert!(SQLITE3_UNCHECKED.is_empty(), "{SQLITE3_UNCHECKED:#?}");
    println!(
        "{} functions wrapped; skipped: {} variadic ({}), {} statics ({})",
        plain.len(),
        variadic.len(),
        variadic.join(", "),
        statics.len(),
        statics.join(", ")
    );
}

#[test]
fn the_compiled_file_is_what_the_generator_writes() {
    let source = std::fs::read_to_string(SQLITE3_BINDINGS).unwrap();
    let g = ffi_check_bindgen::Config::new("libsqlite3_sys")
        .generate_source(&source, "bindgen_bundled_version.rs")
        .unwrap();
    assert_eq!(g.code, SQLITE3_CHECKED);
}

/// SQLite's memory from ffi-check's hooks, so that it is tracked C memory.
struct Sqlite;
impl Family for Sqlite {
    const DEALLOCATOR: Deallocator = Deallocator::new("sqlite3_free", libsqlite3_sys::sqlite3_free);
}
static METHODS: hooks::SqliteMemMethods = hooks::SqliteMemMethods::new::<Sqlite>();

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // `sqlite3_config` is variadic, so it has no wrapper: the raw one.
        // SAFETY: before SQLite initialises; SQLite copies the methods.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(
                libsqlite3_sys::SQLITE_CONFIG_MALLOC,
                &METHODS as *const hooks::SqliteMemMethods,
            )
        };
        assert_eq!(rc, checked::SQLITE_OK);
    });
}

#[test]
fn wrapped_functions_work_and_correct_use_is_clean() {
    setup();
    let ((), violations) = capture(|| {
        // SAFETY: no preconditions.
        let version = unsafe { checked::sqlite3_libversion_number() };
        assert_eq!(version, checked::SQLITE_VERSION_NUMBER);

        let mut db = null_mut();
        // SAFETY: a C string and a place for the connection.
        let rc = unsafe { checked::sqlite3_open(c":memory:".as_ptr(), &mut db) };
        assert_eq!(rc, checked::SQLITE_OK);
        let sql = CString::new("create table t(x); insert into t values (41), (1);").unwrap();
        // SAFETY: an open connection and a C string; no callback.
        let rc = unsafe { checked::sqlite3_exec(db, sql.as_ptr(), None, null_mut(), null_mut()) };
        assert_eq!(rc, checked::SQLITE_OK);

        let query = "select sum(x) from t";
        let mut stmt = null_mut();
        // SAFETY: the query's bytes with their length, a place for the
        // statement.
        let rc = unsafe {
            checked::sqlite3_prepare_v2(
                db,
                query.as_ptr().cast(),
                c_int::try_from(query.len()).unwrap(),
                &mut stmt,
                null_mut(),
            )
        };
        assert_eq!(rc, checked::SQLITE_OK);
        // SAFETY: a prepared statement, stepped once to its row.
        unsafe {
            assert_eq!(checked::sqlite3_step(stmt), checked::SQLITE_ROW);
            assert_eq!(checked::sqlite3_column_int(stmt, 0), 42);
            assert_eq!(checked::sqlite3_finalize(stmt), checked::SQLITE_OK);
            assert_eq!(checked::sqlite3_close(db), checked::SQLITE_OK);
        }
    });
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_freed_string_and_a_double_free_are_reported_at_the_calling_line() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    setup();
    let mut db = null_mut();
    // SAFETY: a C string and a place for the connection.
    let rc = unsafe { checked::sqlite3_open(c":memory:".as_ptr(), &mut db) };
    assert_eq!(rc, checked::SQLITE_OK);

    // A statement from a string already dropped.
    let sql = CString::new("select 1").unwrap();
    let p = sql.as_ptr();
    drop(sql);
    let mut stmt = null_mut();
    let line = line!() + 3;
    let (_, v) = capture(|| {
        // SAFETY: none: `p` dangles, which is the mistake under test.
        unsafe { checked::sqlite3_prepare_v2(db, p, 9, &mut stmt, null_mut()) }
    });
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].kind(), ViolationKind::UseAfterFree);
    assert_eq!(v[0].callee(), Some("sqlite3_prepare_v2"));
    let site = v[0].call_site().expect("a site");
    assert_eq!((site.file(), site.line()), (file!(), line));
    // SAFETY: the statement (if SQLite made one from what the freed block
    // still held) and the connection are live.
    unsafe {
        checked::sqlite3_finalize(stmt);
        checked::sqlite3_close(db);
    }

    // SQLite memory (tracked: it comes from the hooks) freed twice.
    // SAFETY: a malloc of 16 bytes, freed once.
    let block = unsafe { checked::sqlite3_malloc(16) };
    // SAFETY: as above.
    unsafe { checked::sqlite3_free(block) };
    let line = line!() + 3;
    let (_, v) = capture(|| {
        // SAFETY: none: the second free is the mistake under test.
        unsafe { checked::sqlite3_free(block) }
    });
    let kinds: Vec<ViolationKind> = v.iter().map(|v| v.kind()).collect();
    assert_eq!(kinds[0], ViolationKind::UseAfterFree, "{v:#?}");
    let site = v[0].call_site().expect("a site");
    assert_eq!((site.file(), site.line()), (file!(), line));
    assert!(kinds.contains(&ViolationKind::DoubleFree), "{v:#?}");
    println!("{}", v[0]);
}
