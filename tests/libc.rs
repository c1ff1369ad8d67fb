//! The rules against a real C library: the system's libc, through the `libc`
//! crate's declarations.
//!
//! Correct use of `qsort`, `strdup`/`free`, `setenv`/`getenv`, `pipe` and
//! `writev` is never reported; the classic mistakes with them are: a string
//! from `strdup` freed twice (C1), a NULL from `getenv` read as a string
//! (X2), and an `iovec` array lent to `writev` while the buffers it points
//! to are unpinned (P1, Go's first rule).
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::ffi::CStr;
use std::mem::size_of;
use std::os::raw::{c_char, c_int, c_void};

use common::{assert_report_line, assert_rust_site, is_child, only, run_child, text};
use ffi_check::{
    assert_clean, c_adopt, c_free, call, callback, capture, str_from_c, to_c, CBox, Managed,
    Pinned, Pinner, RegionKind, RegionState, ViolationKind,
};

const THIS_FILE: &str = file!();

// ---- qsort: a Rust comparison C calls back ------------------------------------

/// `qsort`'s comparison: C passes pointers to two elements of the array it
/// sorts, as `const void *`.
unsafe extern "C" fn compare_ints(a: *const c_void, b: *const c_void) -> c_int {
    callback!({
        // SAFETY: qsort passes pointers to two `c_int`s of the array it was
        // given, valid for the duration of the comparison.
        let (a, b) = unsafe { (*a.cast::<c_int>(), *b.cast::<c_int>()) };
        c_int::from(a > b) - c_int::from(a < b)
    })
}

#[test]
fn qsort_with_a_rust_comparison_sorts_and_is_not_reported() {
    let mut items = Managed::from_vec(vec![42 as c_int, -7, 0, 19, 3, 3, -100, 8]);
    let n = items.len();
    assert_clean(|| {
        // SAFETY: `items` is `n` ints lent for the call; `compare_ints`
        // reads two of them per call and C does not keep them.
        unsafe {
            call!(libc::qsort(
                &mut items,
                n,
                size_of::<c_int>(),
                Some(compare_ints as unsafe extern "C" fn(*const c_void, *const c_void) -> c_int)
            ))
        }
    });
    assert_eq!(*items, [-100, -7, 0, 3, 3, 8, 19, 42]);
}

// ---- strdup/free: C memory Rust owns ------------------------------------------

#[test]
fn strdup_result_adopted_by_cbox_is_freed_once_on_drop() {
    assert_clean(|| {
        // SAFETY: strdup copies a NUL-terminated string into malloc'd memory.
        let p = unsafe { call!(libc::strdup(c"duplicated")) };
        // SAFETY: p is NULL or a malloc'd string nobody else owns.
        let copy = unsafe { CBox::from_raw_cstr(p) }.expect("strdup succeeds");
        assert_eq!(copy.to_str(), Ok("duplicated"));
        // The drop frees it with `free`, once.
    });
}

#[test]
fn strdup_result_freed_twice_is_reported_and_freed_once() {
    // SAFETY: strdup copies a NUL-terminated string into malloc'd memory.
    let p = unsafe { call!(libc::strdup(c"twice")) };
    assert!(!p.is_null());
    // SAFETY: p is a live NUL-terminated string.
    let size = unsafe { libc::strlen(p) } + 1;
    let (p, adopt_line) = (c_adopt(p.cast::<c_void>(), size), line!());
    // SAFETY: p came from strdup (malloc) and is live.
    unsafe { c_free(p) };
    let first_free_line = line!() - 1;
    // SAFETY: the second free is the mistake under test; the check skips it.
    let (_, v) = capture(|| unsafe { c_free(p) });
    let second_free_line = line!() - 1;

    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::DoubleFree,
        "C1",
        "ffi-check: double free of C memory (`free`)",
    );
    let r = &v.regions()[0];
    assert_eq!((r.addr(), r.size()), (p as usize, size));
    assert_eq!((r.kind(), r.state()), (RegionKind::C, RegionState::Freed));
    // Allocated (adopted) here, first freed here, freed again here.
    assert_rust_site(r.alloc_site(), THIS_FILE, adopt_line);
    assert_rust_site(r.free_site(), THIS_FILE, first_free_line);
    assert_rust_site(v.call_site(), THIS_FILE, second_free_line);
    // Reaching this line proves `free` ran once: glibc aborts on a double
    // free of a small block.
}

// ---- setenv/getenv: strings both ways -----------------------------------------

/// `setenv` may move the environment while another thread reads it (glibc
/// reallocates the array), and the tests of this binary run in threads: the
/// round trip runs alone, in a child process.
#[test]
fn setenv_then_getenv_reads_the_value_back() {
    let out = run_child("child_setenv_then_getenv", &[]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}

#[test]
fn child_setenv_then_getenv() {
    if !is_child("child_setenv_then_getenv") {
        return;
    }
    let name = CBox::from_str(&format!("LIBC_RS_ROUND_TRIP_{}", std::process::id()));
    let value = CBox::from_str("a value set from Rust");
    let got = assert_clean(|| {
        // SAFETY: name and value are live C strings; setenv copies them.
        let rc = unsafe { call!(libc::setenv(&name, &value, 1)) };
        assert_eq!(rc, 0);
        // SAFETY: name is a live C string.
        let p = unsafe { call!(libc::getenv(&name)) };
        assert!(!p.is_null());
        // SAFETY: getenv returned a live NUL-terminated string; it is copied
        // out before the environment changes again.
        unsafe { str_from_c(p) }.to_owned()
    });
    assert_eq!(got, "a value set from Rust");
    assert_eq!(
        std::env::var(format!("LIBC_RS_ROUND_TRIP_{}", std::process::id())).as_deref(),
        Ok("a value set from Rust")
    );
}

/// A variable no test sets.
fn unset_name() -> CBox<CStr> {
    CBox::from_str(&format!("LIBC_RS_NEVER_SET_{}", std::process::id()))
}

#[test]
fn getenv_of_an_unset_variable_read_as_a_string_is_reported() {
    let name = unset_name();
    // SAFETY: name is a live C string.
    let p: *const c_char = unsafe { call!(libc::getenv(&name)) };
    assert!(p.is_null());
    // SAFETY: the NULL is the mistake under test; the check reports it and
    // gives the empty string instead of reading.
    let (s, v) = capture(|| unsafe { str_from_c(p) });
    let read_line = line!() - 1;
    assert_eq!(s, "");
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::NullPointer,
        "X2",
        "ffi-check: NULL pointer where a C string was expected",
    );
    assert_rust_site(v.call_site(), THIS_FILE, read_line);
}

#[test]
fn getenv_of_an_unset_variable_checked_for_null_is_not_reported() {
    let name = unset_name();
    let got = assert_clean(|| {
        // SAFETY: name is a live C string.
        let p = unsafe { call!(libc::getenv(&name)) };
        if p.is_null() {
            None
        } else {
            // SAFETY: a non-NULL result of getenv is a NUL-terminated string.
            Some(unsafe { str_from_c(p) }.to_owned())
        }
    });
    assert_eq!(got, None);
}

// ---- writev: an array of pointers lent to C ----------------------------------

/// A pipe whose ends are closed on drop.
struct Pipe {
    read: c_int,
    write: c_int,
}

impl Pipe {
    fn new() -> Pipe {
        let mut fds: [c_int; 2] = [-1; 2];
        // SAFETY: pipe writes two descriptors into the array.
        let rc = unsafe { call!(libc::pipe(fds.as_mut_ptr())) };
        assert_eq!(rc, 0, "pipe: {}", std::io::Error::last_os_error());
        Pipe {
            read: fds[0],
            write: fds[1],
        }
    }

    /// Reads `n` bytes that were written to the pipe.
    fn read_back(&self, n: usize) -> Vec<u8> {
        let mut buf = Managed::from_vec(vec![0u8; n]);
        let mut got = 0;
        while got < n {
            let want = n - got;
            // SAFETY: `buf` is n writable bytes lent for the call; read
            // writes at most `want` of them from offset `got`.
            let r = unsafe {
                call!(libc::read(
                    self.read,
                    buf.as_mut_ptr().add(got).cast::<c_void>(),
                    want
                ))
            };
            assert!(r > 0, "read: {}", std::io::Error::last_os_error());
            got += r as usize;
        }
        buf.to_vec()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: the descriptors are ours and closed once.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// An `iovec` naming the bytes of a managed buffer.
fn iovec_of(buf: &Managed<[u8]>) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: buf.len(),
    }
}

#[test]
fn writev_of_iovecs_pointing_to_unpinned_buffers_is_reported() {
    let pipe = Pipe::new();
    let head = Managed::from_vec(b"head:".to_vec());
    let body = Managed::from_vec(b"body".to_vec());
    let iovs = Managed::from_vec(vec![iovec_of(&head), iovec_of(&body)]);
    let count: c_int = to_c(iovs.len());

    let (written, v) = capture(|| {
        // SAFETY: the iovecs name live bytes for the call; the missing pins
        // are the mistake under test.
        unsafe { call!(libc::writev(pipe.write, &iovs, count)) }
    });
    assert_eq!(written, 9, "the call is still made");
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::UnpinnedNested,
        "P1",
        "ffi-check: argument 2 of `writev` has managed pointer to unpinned managed pointer",
    );
    assert_eq!(v.callee(), Some("writev"));
    let regions = v.regions();
    assert_eq!(regions[0].addr(), iovs.addr(), "{v}");
    assert_eq!(regions[1].addr(), head.addr(), "{v}");
    assert_eq!(pipe.read_back(9), b"head:body");
}

/// The Rust idiom for C APIs that take an array of pointers (`writev`'s
/// `iovec`s, `execv`'s `argv`, a table of buffers): the array itself is
/// only lent for the call, but it holds pointers C follows, so what they
/// point to must be pinned while C can see it. Pin each buffer with a
/// `Pinner` (or own it in a `Pinned<T>`, next test) before lending the
/// array, and let the pinner drop after the call.
#[test]
fn writev_of_iovecs_pointing_to_pinned_buffers_is_not_reported() {
    let pipe = Pipe::new();
    let head = Managed::from_vec(b"head:".to_vec());
    let body = Managed::from_vec(b"body".to_vec());
    let iovs = Managed::from_vec(vec![iovec_of(&head), iovec_of(&body)]);
    let count: c_int = to_c(iovs.len());

    let written = assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(&head);
        pinner.pin(&body);
        // SAFETY: the iovecs name live, pinned bytes for the call.
        unsafe { call!(libc::writev(pipe.write, &iovs, count)) }
    });
    assert_eq!(written, 9);
    assert_eq!(pipe.read_back(9), b"head:body");
}

#[test]
fn writev_of_iovecs_pointing_into_pinned_owners_is_not_reported() {
    let pipe = Pipe::new();
    let head = Pinned::from_vec(b"pinned ".to_vec());
    let body = Pinned::from_vec(b"for life".to_vec());
    let iovs = Managed::from_vec(vec![
        libc::iovec {
            iov_base: head.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: body.len(),
        },
    ]);
    let count: c_int = to_c(iovs.len());

    // SAFETY: the iovecs name live, pinned bytes for the call.
    let written = assert_clean(|| unsafe { call!(libc::writev(pipe.write, &iovs, count)) });
    assert_eq!(written, 15);
    assert_eq!(pipe.read_back(15), b"pinned for life");
}
