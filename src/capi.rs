//! The C side: the `extern "C"` functions declared in `csrc/ffi_check.h`.
//!
//! C code linked into the program calls these to allocate tracked C memory
//! (with its `__FILE__`/`__LINE__`), to free it through the C1 checks, and to
//! declare the pointers it keeps (`ffi_check_retain`) and drops
//! (`ffi_check_release`), and to register C storage that mode 2 scans
//! (`ffi_check_add_root`, `ffi_check_remove_root`). None of them ever unwinds into C: a violation with
//! the panic action aborts here after its report, as inside a callback.

use std::ffi::c_void;
use std::os::raw::{c_char, c_int};

use crate::cbox::{check_free, free_through_checks, Deallocator, Verdict};
use crate::family::FAMILY_MALLOC;
use crate::mode::checks_on;
use crate::registry::{self, NewRegion, RegionKind};
use crate::report::enter_callback;
use crate::site::Site;
use crate::stderr::write_stderr;

/// Runs `f` with the guarantees C needs: a panic action aborts instead of
/// unwinding, and any panic inside the checker aborts with a message.
fn from_c<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let _guard = enter_callback();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            write_stderr(&format!(
                "ffi-check: panic inside `{what}` called from C; aborting\n"
            ));
            std::process::abort();
        }
    }
}

fn c_site(file: *const c_char, line: c_int) -> Option<Site> {
    // SAFETY: the header passes __FILE__, a string literal.
    unsafe { Site::from_c(file, line) }
}

fn track(p: *mut c_void, size: usize, file: *const c_char, line: c_int) {
    if p.is_null() || !checks_on() {
        return;
    }
    registry::insert(NewRegion {
        start: p as usize,
        size,
        kind: RegionKind::C,
        family: FAMILY_MALLOC,
        flags: 0,
        site: c_site(file, line),
        type_name: None,
    });
}

/// `malloc` that tracks the block as C memory allocated at `file:line`.
#[no_mangle]
pub extern "C" fn ffi_check_malloc_at(
    size: usize,
    file: *const c_char,
    line: c_int,
) -> *mut c_void {
    from_c("ffi_check_malloc", || {
        let p = crate::cbox::malloc_scannable(size);
        track(p, size, file, line);
        p
    })
}

/// `calloc` that tracks the block.
#[no_mangle]
pub extern "C" fn ffi_check_calloc_at(
    count: usize,
    size: usize,
    file: *const c_char,
    line: c_int,
) -> *mut c_void {
    from_c("ffi_check_calloc", || {
        let Some(total) = count.checked_mul(size) else {
            return std::ptr::null_mut();
        };
        // SAFETY: calloc has no preconditions.
        let p = unsafe { libc::calloc(total.max(1), 1) };
        track(p, total, file, line);
        p
    })
}

/// `realloc` through the checks: the old block must be live C memory from
/// malloc (C1/C2); the new block is tracked in its place.
#[no_mangle]
pub extern "C" fn ffi_check_realloc_at(
    ptr: *mut c_void,
    size: usize,
    file: *const c_char,
    line: c_int,
) -> *mut c_void {
    if ptr.is_null() {
        return ffi_check_malloc_at(size, file, line);
    }
    from_c("ffi_check_realloc", || {
        // The free checks, without the free: a realloc of freed, managed,
        // interior, stack or foreign memory is the same mistake as a free
        // of it. Refused, it returns NULL and leaves the block alone, as a
        // failed realloc does.
        let site = c_site(file, line);
        if check_free(ptr as usize, FAMILY_MALLOC, "realloc", site) == Verdict::Skip {
            return std::ptr::null_mut();
        }
        // Mode 2 zeroes what a growing realloc adds (see `malloc_scannable`).
        let old_size = crate::mode::full()
            .then(|| registry::lookup(ptr as usize).filter(|r| r.start == ptr as usize))
            .flatten()
            .map(|r| r.size);
        // SAFETY: ptr is live malloc memory (checked above when tracked); a
        // guarded block (mode 2) is moved, since its base is not `ptr`.
        let q = match unsafe { crate::guard::realloc(ptr as usize, size) } {
            Some(q) => q,
            // SAFETY: as above, and not guarded.
            None => unsafe { libc::realloc(ptr, size.max(1)) },
        };
        if let (false, Some(old)) = (q.is_null(), old_size) {
            if size > old {
                // SAFETY: q has `size` writable bytes; the tail past the old
                // size is fresh.
                unsafe { std::ptr::write_bytes(q.cast::<u8>().add(old), 0, size - old) };
            }
        }
        if !q.is_null() {
            // With checks off, `check_free` already forgot the old block.
            if checks_on() {
                registry::remove(ptr as usize);
            }
            track(q, size, file, line);
        }
        q
    })
}

/// `strdup` that tracks the copy.
#[no_mangle]
pub extern "C" fn ffi_check_strdup_at(
    s: *const c_char,
    file: *const c_char,
    line: c_int,
) -> *mut c_char {
    if s.is_null() {
        return std::ptr::null_mut();
    }
    from_c("ffi_check_strdup", || {
        // SAFETY: C passes a NUL-terminated string.
        let p = unsafe { libc::strdup(s) };
        if !p.is_null() {
            // SAFETY: p is the fresh NUL-terminated copy.
            let len = unsafe { libc::strlen(p) } + 1;
            track(p.cast(), len, file, line);
        }
        p
    })
}

/// `free` through the C1/C2 checks: a double free, a free of managed
/// memory or of an interior pointer, or a free of another allocator's memory
/// is reported and not carried out.
#[no_mangle]
pub extern "C" fn ffi_check_free_at(ptr: *mut c_void, file: *const c_char, line: c_int) {
    if ptr.is_null() {
        return;
    }
    from_c("ffi_check_free", || {
        // SAFETY: C passes memory from malloc that it no longer uses; the
        // checks refuse what is not.
        unsafe { free_through_checks(ptr, &Deallocator::LIBC, c_site(file, line)) }
    })
}

/// C declares it keeps `ptr` after the current call (rule P2).
#[no_mangle]
pub extern "C" fn ffi_check_retain_at(ptr: *const c_void, file: *const c_char, line: c_int) {
    from_c("ffi_check_retain", || {
        crate::pin::retain_at(ptr as usize, c_site(file, line))
    })
}

/// C declares it dropped a pointer it had retained.
#[no_mangle]
pub extern "C" fn ffi_check_release_at(ptr: *const c_void, _file: *const c_char, _line: c_int) {
    from_c("ffi_check_release", || crate::pin::release_at(ptr as usize))
}

/// C registers `[ptr, ptr + len)` (a global table, say) as a root that the
/// mode-2 scan reads (rule P2). Returns 1 when registered, 0 when refused
/// (not readable memory for its whole length: `InvalidRoot`).
#[no_mangle]
pub extern "C" fn ffi_check_add_root_at(
    ptr: *const c_void,
    len: usize,
    file: *const c_char,
    line: c_int,
) -> c_int {
    from_c("ffi_check_add_root", || {
        c_int::from(crate::roots::add_root_at(
            ptr as usize,
            len,
            c_site(file, line),
        ))
    })
}

/// C unregisters the root starting at `ptr`.
#[no_mangle]
pub extern "C" fn ffi_check_remove_root_at(ptr: *const c_void, _file: *const c_char, _line: c_int) {
    from_c("ffi_check_remove_root", || {
        crate::roots::remove_root_at(ptr as usize);
    })
}
