//! A small safe layer over the real SQLite (built from its bundled source),
//! with ffi-check as its debug-mode safety layer.
//!
//! Shared by `examples/sqlite.rs` and `tests/sqlite.rs`.
//!
//! - SQLite's allocator is ffi-check's hooks ([`setup`] sets
//!   `SQLITE_CONFIG_MALLOC` before SQLite initialises): every allocation
//!   SQLite makes is tracked C memory of family [`Sqlite`], attributed to the
//!   line of the call that made it (with SQLite's lookaside sub-allocator
//!   off, so each object is an allocation of its own). A statement never
//!   finalized is a leak at
//!   the line that prepared it; a connection never closed, one at the line
//!   that opened it.
//! - Memory SQLite hands out (`sqlite3_mprintf`, `sqlite3_expanded_sql`, an
//!   error message) is owned by a [`CBox`] whose deallocator is the real
//!   `sqlite3_free`: freeing it with C's `free` is `MismatchedFree`, twice is
//!   `DoubleFree`.
//! - Text and blobs bound with `SQLITE_TRANSIENT` are copied by SQLite. Bound
//!   with `SQLITE_STATIC`, SQLite keeps the pointer until the statement is
//!   finalized or the parameter is bound again: the wrapper declares that
//!   ([`ffi_check::retain`] / [`ffi_check::release`]), so unpinned memory is
//!   `Retained` (P2) and memory dropped while SQLite keeps it is
//!   `FreedWhileRetained` (P3).
//!
//! Every FFI call goes through [`ffi_check::call!`]; the public methods are
//! `#[track_caller]`, so reports name the caller's line.

#![allow(dead_code)]

use std::ffi::{c_void, CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};
use std::sync::OnceLock;

use ffi_check::hooks::{self, Family};
use ffi_check::{call, slice_from_c, to_c, unchecked, CBox, Deallocator, Managed, Pinned};
use libsqlite3_sys as sql;

/// SQLite's memory: allocated through the hooks, freed by `sqlite3_free`
/// (which ends in the hooks' `xFree`).
pub struct Sqlite;

impl hooks::Family for Sqlite {
    const DEALLOCATOR: Deallocator = Deallocator::new("sqlite3_free", sql::sqlite3_free);
}

/// The methods handed to `SQLITE_CONFIG_MALLOC` (SQLite copies them).
static METHODS: hooks::SqliteMemMethods = hooks::SqliteMemMethods::new::<Sqlite>();

/// An SQLite result code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// SQLite's (extended) result code.
    pub code: c_int,
    /// SQLite's message.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SQLite error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

fn error_of(db: *mut sql::sqlite3, code: c_int) -> Error {
    // SAFETY: sqlite3_errmsg accepts any connection (NULL included) and
    // returns a NUL-terminated string valid until the next call.
    let message = unsafe { ffi_check::string_from_c(sql::sqlite3_errmsg(db)) };
    Error { code, message }
}

fn plain_error(code: c_int, message: &str) -> Error {
    Error {
        code,
        message: message.to_owned(),
    }
}

/// Routes SQLite's allocator into ffi-check, then initialises SQLite; once
/// per process, before any other use of SQLite (afterwards SQLite refuses a
/// new allocator). Every constructor here calls it.
pub fn setup() -> Result<(), Error> {
    static DONE: OnceLock<Result<(), Error>> = OnceLock::new();
    DONE.get_or_init(|| {
        let methods: *const hooks::SqliteMemMethods = &METHODS;
        // SAFETY: before SQLite initialises; `methods` has the layout of
        // sqlite3_mem_methods, and SQLite copies it.
        let rc = unsafe {
            call!(sql::sqlite3_config(
                sql::SQLITE_CONFIG_MALLOC,
                unchecked(methods)
            ))
        };
        if rc != sql::SQLITE_OK {
            return Err(plain_error(
                rc,
                "SQLITE_CONFIG_MALLOC refused: SQLite was initialised before setup()",
            ));
        }
        // No lookaside: SQLite would otherwise carve its small objects
        // (statements, expressions) out of one block per connection, and the
        // checker would see that block instead of each object.
        // SAFETY: before SQLite initialises; a slot size and count of 0.
        let rc = unsafe {
            call!(sql::sqlite3_config(
                sql::SQLITE_CONFIG_LOOKASIDE,
                unchecked(0 as c_int),
                unchecked(0 as c_int)
            ))
        };
        if rc != sql::SQLITE_OK {
            return Err(plain_error(rc, "SQLITE_CONFIG_LOOKASIDE refused"));
        }
        // SAFETY: no preconditions.
        let rc = unsafe { call!(sql::sqlite3_initialize()) };
        if rc != sql::SQLITE_OK {
            return Err(plain_error(rc, "sqlite3_initialize failed"));
        }
        Ok(())
    })
    .clone()
}

/// Formats `text` as an SQL string literal with `sqlite3_mprintf("%Q")`:
/// SQLite memory, owned by a `CBox` that frees it with `sqlite3_free`.
#[track_caller]
pub fn quote(text: &str) -> Result<CBox<CStr>, Error> {
    setup()?;
    let text = CString::new(text).map_err(|_| plain_error(sql::SQLITE_MISUSE, "NUL in text"))?;
    // SAFETY: a "%Q" format and one C string for it.
    let p = unsafe { call!(sql::sqlite3_mprintf(c"%Q", unchecked(text.as_ptr()))) };
    // SAFETY: p is null or a NUL-terminated string from sqlite3_malloc.
    unsafe { CBox::from_raw_cstr_with(p, Sqlite::DEALLOCATOR) }
        .ok_or_else(|| plain_error(sql::SQLITE_NOMEM, "sqlite3_mprintf failed"))
}

/// A database connection, closed on drop.
pub struct Connection {
    db: *mut sql::sqlite3,
}

impl Connection {
    /// Opens a fresh in-memory database.
    #[track_caller]
    pub fn open_in_memory() -> Result<Connection, Error> {
        setup()?;
        let mut db: *mut sql::sqlite3 = std::ptr::null_mut();
        let flags = sql::SQLITE_OPEN_READWRITE | sql::SQLITE_OPEN_CREATE;
        // SAFETY: a NUL-terminated name, an out-pointer, no VFS name.
        let rc = unsafe {
            call!(sql::sqlite3_open_v2(
                c":memory:",
                Some(&mut db),
                flags,
                std::ptr::null::<c_char>()
            ))
        };
        let conn = Connection { db };
        if rc != sql::SQLITE_OK {
            return Err(error_of(conn.db, rc));
        }
        Ok(conn)
    }

    /// Runs one or more statements that return no rows.
    #[track_caller]
    pub fn execute_batch(&self, sql_text: &str) -> Result<(), Error> {
        let text =
            CString::new(sql_text).map_err(|_| plain_error(sql::SQLITE_MISUSE, "NUL in SQL"))?;
        let mut message: *mut c_char = std::ptr::null_mut();
        // SAFETY: an open connection, a NUL-terminated statement, no
        // callback, an out-pointer for the message.
        let rc = unsafe {
            call!(sql::sqlite3_exec(
                self.db,
                &text,
                None,
                std::ptr::null_mut::<c_void>(),
                Some(&mut message)
            ))
        };
        // SAFETY: null or SQLite's message, from sqlite3_malloc: ours now.
        let message = unsafe { CBox::from_raw_cstr_with(message, Sqlite::DEALLOCATOR) };
        if rc == sql::SQLITE_OK {
            return Ok(());
        }
        Err(Error {
            code: rc,
            message: message.map_or_else(String::new, |m| m.to_string_lossy().into_owned()),
        })
    }

    /// Compiles one statement.
    #[track_caller]
    pub fn prepare(&self, sql_text: &str) -> Result<Statement<'_>, Error> {
        let text =
            CString::new(sql_text).map_err(|_| plain_error(sql::SQLITE_MISUSE, "NUL in SQL"))?;
        let mut stmt: *mut sql::sqlite3_stmt = std::ptr::null_mut();
        // SAFETY: an open connection, a NUL-terminated statement (length -1:
        // up to the NUL), an out-pointer, no tail.
        let rc = unsafe {
            call!(sql::sqlite3_prepare_v2(
                self.db,
                &text,
                -1,
                Some(&mut stmt),
                std::ptr::null_mut::<*const c_char>()
            ))
        };
        if rc != sql::SQLITE_OK {
            return Err(error_of(self.db, rc));
        }
        if stmt.is_null() {
            return Err(plain_error(sql::SQLITE_MISUSE, "no statement in the SQL"));
        }
        // SAFETY: a statement just prepared.
        let params = unsafe { call!(sql::sqlite3_bind_parameter_count(stmt)) };
        Ok(Statement {
            stmt,
            kept: vec![None; usize::try_from(params).unwrap_or(0) + 1],
            _conn: PhantomData,
        })
    }

    /// The raw handle, for code that calls SQLite itself.
    pub fn handle(&self) -> *mut sql::sqlite3 {
        self.db
    }

    /// Rows changed by the last statement.
    pub fn changes(&self) -> i64 {
        // SAFETY: an open connection.
        unsafe { call!(sql::sqlite3_changes64(self.db)) }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: opened by `open_in_memory`, closed once. Every
        // `Statement` borrows the connection, so all are finalized by now.
        unsafe { call!(sql::sqlite3_close(self.db)) };
    }
}

/// Rust memory that SQLite may keep a pointer to (`SQLITE_STATIC`): memory
/// ffi-check tracks, so that it can tell whether it is pinned.
pub trait KeptText {
    /// The text SQLite will read.
    fn text(&self) -> &str;
}
impl KeptText for Managed<str> {
    fn text(&self) -> &str {
        self
    }
}
impl KeptText for Pinned<str> {
    fn text(&self) -> &str {
        self
    }
}

/// Bytes SQLite may keep a pointer to; see [`KeptText`].
pub trait KeptBytes {
    /// The bytes SQLite will read.
    fn bytes(&self) -> &[u8];
}
impl KeptBytes for Managed<[u8]> {
    fn bytes(&self) -> &[u8] {
        self
    }
}
impl KeptBytes for Pinned<[u8]> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// One row's column.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Integer(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// A blob.
    Blob(Vec<u8>),
}

/// A prepared statement, finalized on drop.
pub struct Statement<'c> {
    stmt: *mut sql::sqlite3_stmt,
    /// What SQLite keeps per parameter (bound with `SQLITE_STATIC`), by
    /// index (1-based).
    kept: Vec<Option<*const u8>>,
    _conn: PhantomData<&'c Connection>,
}

impl Statement<'_> {
    fn index(&self, i: usize) -> Result<c_int, Error> {
        if i == 0 || i >= self.kept.len() {
            return Err(plain_error(sql::SQLITE_RANGE, "no such parameter"));
        }
        Ok(to_c(i))
    }

    /// SQLite dropped what parameter `i` pointed to.
    fn forget_kept(&mut self, i: usize) {
        if let Some(p) = self.kept[i].take() {
            ffi_check::release(p);
        }
    }

    fn check(&self, rc: c_int) -> Result<(), Error> {
        if rc == sql::SQLITE_OK {
            return Ok(());
        }
        // SAFETY: a live statement.
        let db = unsafe { call!(sql::sqlite3_db_handle(self.stmt)) };
        Err(error_of(db, rc))
    }

    /// Binds an integer to parameter `i` (1-based).
    #[track_caller]
    pub fn bind_int64(&mut self, i: usize, value: i64) -> Result<(), Error> {
        let n = self.index(i)?;
        // SAFETY: a live statement, a valid index.
        let rc = unsafe { call!(sql::sqlite3_bind_int64(self.stmt, n, value)) };
        self.forget_kept(i);
        self.check(rc)
    }

    /// Binds NULL to parameter `i`.
    #[track_caller]
    pub fn bind_null(&mut self, i: usize) -> Result<(), Error> {
        let n = self.index(i)?;
        // SAFETY: a live statement, a valid index.
        let rc = unsafe { call!(sql::sqlite3_bind_null(self.stmt, n)) };
        self.forget_kept(i);
        self.check(rc)
    }

    /// Binds a copy of `text` to parameter `i` (`SQLITE_TRANSIENT`: SQLite
    /// copies it during the call, so any `&str` will do).
    #[track_caller]
    pub fn bind_text(&mut self, i: usize, text: &str) -> Result<(), Error> {
        let n = self.index(i)?;
        let len: c_int = to_c(text.len());
        // SAFETY: a live statement, `len` bytes of text, copied by SQLite.
        let rc = unsafe {
            call!(sql::sqlite3_bind_text(
                self.stmt,
                n,
                text.as_ptr().cast::<c_char>(),
                len,
                sql::SQLITE_TRANSIENT()
            ))
        };
        self.forget_kept(i);
        self.check(rc)
    }

    /// Binds a copy of `bytes` to parameter `i` (`SQLITE_TRANSIENT`).
    #[track_caller]
    pub fn bind_blob(&mut self, i: usize, bytes: &[u8]) -> Result<(), Error> {
        let n = self.index(i)?;
        let len: c_int = to_c(bytes.len());
        // SAFETY: a live statement, `len` bytes, copied by SQLite.
        let rc = unsafe {
            call!(sql::sqlite3_bind_blob(
                self.stmt,
                n,
                bytes.as_ptr().cast::<c_void>(),
                len,
                sql::SQLITE_TRANSIENT()
            ))
        };
        self.forget_kept(i);
        self.check(rc)
    }

    /// Binds `text` to parameter `i` without a copy (`SQLITE_STATIC`):
    /// SQLite keeps a pointer to it until the statement is finalized or `i`
    /// is bound again. The wrapper tells ffi-check so: unpinned memory is
    /// `Retained` (rule P2), memory dropped before then is
    /// `FreedWhileRetained` (rule P3).
    ///
    /// # Safety
    /// `text` stays alive and in place until the statement is finalized or
    /// parameter `i` is bound again: keep it in a [`Pinned`] that outlives
    /// the statement.
    #[track_caller]
    pub unsafe fn bind_text_static<T: KeptText + ?Sized>(
        &mut self,
        i: usize,
        text: &T,
    ) -> Result<(), Error> {
        let n = self.index(i)?;
        let text = text.text();
        let len: c_int = to_c(text.len());
        let p = text.as_ptr();
        let stmt = self.stmt;
        // SAFETY: a live statement, `len` bytes of text that the caller
        // keeps alive for as long as SQLite keeps the pointer.
        self.keep(i, p, || unsafe {
            call!(sql::sqlite3_bind_text(
                stmt,
                n,
                p.cast::<c_char>(),
                len,
                sql::SQLITE_STATIC()
            ))
        })
    }

    /// Binds `bytes` to parameter `i` without a copy (`SQLITE_STATIC`); see
    /// [`Statement::bind_text_static`].
    ///
    /// # Safety
    /// As for [`Statement::bind_text_static`].
    #[track_caller]
    pub unsafe fn bind_blob_static<T: KeptBytes + ?Sized>(
        &mut self,
        i: usize,
        bytes: &T,
    ) -> Result<(), Error> {
        let n = self.index(i)?;
        let bytes = bytes.bytes();
        let len: c_int = to_c(bytes.len());
        let p = bytes.as_ptr();
        let stmt = self.stmt;
        // SAFETY: as in bind_text_static.
        self.keep(i, p, || unsafe {
            call!(sql::sqlite3_bind_blob(
                stmt,
                n,
                p.cast::<c_void>(),
                len,
                sql::SQLITE_STATIC()
            ))
        })
    }

    /// Makes a `SQLITE_STATIC` bind of `p` to parameter `i` and tells
    /// ffi-check that SQLite keeps `p` from now on (until the parameter is
    /// bound again, cleared, or the statement finalized).
    #[track_caller]
    fn keep(&mut self, i: usize, p: *const u8, bind: impl FnOnce() -> c_int) -> Result<(), Error> {
        let rc = bind();
        self.forget_kept(i);
        self.check(rc)?;
        ffi_check::retain(p);
        self.kept[i] = Some(p);
        Ok(())
    }

    /// Unbinds every parameter (SQLite lets go of what it kept).
    #[track_caller]
    pub fn clear_bindings(&mut self) -> Result<(), Error> {
        // SAFETY: a live statement.
        let rc = unsafe { call!(sql::sqlite3_clear_bindings(self.stmt)) };
        for i in 0..self.kept.len() {
            self.forget_kept(i);
        }
        self.check(rc)
    }

    /// Runs the statement one step: true when a row is ready.
    #[track_caller]
    pub fn step(&mut self) -> Result<bool, Error> {
        // SAFETY: a live statement whose bindings are alive.
        let rc = unsafe { call!(sql::sqlite3_step(self.stmt)) };
        match rc {
            sql::SQLITE_ROW => Ok(true),
            sql::SQLITE_DONE => Ok(false),
            _ => self.check(rc).map(|()| false),
        }
    }

    /// Makes the statement ready to run again (bindings stay).
    #[track_caller]
    pub fn reset(&mut self) -> Result<(), Error> {
        // SAFETY: a live statement.
        let rc = unsafe { call!(sql::sqlite3_reset(self.stmt)) };
        self.check(rc)
    }

    /// Column `i` (0-based) of the current row.
    #[track_caller]
    pub fn column(&mut self, i: usize) -> Value {
        let n: c_int = to_c(i);
        // SAFETY: a statement positioned on a row; SQLite's pointers stay
        // valid until the next step, reset or finalize, and are copied out
        // before any of those.
        unsafe {
            match call!(sql::sqlite3_column_type(self.stmt, n)) {
                sql::SQLITE_INTEGER => {
                    Value::Integer(call!(sql::sqlite3_column_int64(self.stmt, n)))
                }
                sql::SQLITE_FLOAT => Value::Real(call!(sql::sqlite3_column_double(self.stmt, n))),
                sql::SQLITE_TEXT => {
                    let p = call!(sql::sqlite3_column_text(self.stmt, n));
                    let len = call!(sql::sqlite3_column_bytes(self.stmt, n));
                    let bytes = slice_from_c(p, usize::try_from(len).unwrap_or(0));
                    Value::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                sql::SQLITE_BLOB => {
                    let p = call!(sql::sqlite3_column_blob(self.stmt, n));
                    let len = call!(sql::sqlite3_column_bytes(self.stmt, n));
                    let bytes = slice_from_c(p.cast::<u8>(), usize::try_from(len).unwrap_or(0));
                    Value::Blob(bytes.to_vec())
                }
                _ => Value::Null,
            }
        }
    }

    /// The statement's SQL with its parameters filled in: SQLite memory,
    /// freed by `sqlite3_free` when the box drops.
    #[track_caller]
    pub fn expanded_sql(&self) -> Option<CBox<CStr>> {
        // SAFETY: a live statement.
        let p = unsafe { call!(sql::sqlite3_expanded_sql(self.stmt)) };
        // SAFETY: null or a NUL-terminated string from sqlite3_malloc.
        unsafe { CBox::from_raw_cstr_with(p, Sqlite::DEALLOCATOR) }
    }

    /// The raw handle, for code that calls SQLite itself.
    pub fn handle(&self) -> *mut sql::sqlite3_stmt {
        self.stmt
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: prepared by `Connection::prepare`, finalized once.
        unsafe { call!(sql::sqlite3_finalize(self.stmt)) };
        for i in 0..self.kept.len() {
            self.forget_kept(i);
        }
    }
}
