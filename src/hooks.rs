//! Allocator hooks: ready `extern "C"` allocation functions to hand to a C
//! library that lets its host supply the allocator (zlib's `zalloc`/`zfree`,
//! SQLite's `SQLITE_CONFIG_MALLOC`, libcurl's `curl_global_init_mem`,
//! libxml2's `xmlMemSetup`, ...).
//!
//! Routed through these hooks, every allocation the library makes for itself
//! becomes tracked C memory, attributed to the site of the [`call!`](crate::call!) the
//! thread is in when the library allocates. So:
//!
//! - forgetting the library's destroy function (`deflateEnd`,
//!   `sqlite3_finalize`) shows up in a [`LeakCheck`](crate::LeakCheck) or the
//!   exit leak report, grouped under the line of the call that allocated (the
//!   `deflateInit_`, the `sqlite3_prepare_v2`) — rule C3;
//! - memory the library hands out is checked when it is freed: freed twice is
//!   `DoubleFree`, freed with another deallocator (C's `free` for text from
//!   `sqlite3_mprintf`) is `MismatchedFree` — rule C1;
//! - a pointer into library memory that was freed (or that a `realloc` moved)
//!   is caught when it crosses a `call!` — rule C2;
//! - the library's internal state is C memory the checker knows, so mode 2
//!   can scan it for pointers into unpinned Rust memory (rule P2).
//!
//! # Families
//!
//! Each library's memory is a [`Family`] of its own, named by the
//! [`Deallocator`] its users free it with. Memory from the hooks of family
//! `F` must be freed through the hooks of `F` or through
//! `F::DEALLOCATOR` (with [`c_free_with`](crate::c_free_with), or a
//! [`CBox`](crate::CBox) made by `from_raw_with`); any other deallocator is
//! `MismatchedFree`. Two families are ready: [`Zlib`], and for SQLite,
//! declare one whose deallocator is the real `sqlite3_free` (see
//! [`SqliteMemMethods`]), so that a `CBox` of SQLite memory frees through
//! SQLite and keeps its memory statistics right.
//!
//! Declaring a family for another library takes three lines:
//!
//! ```
//! use ffi_check::{hooks, Deallocator};
//! /// libxml2's memory, freed with `xmlFree`.
//! struct Xml;
//! impl hooks::Family for Xml {
//!     const DEALLOCATOR: Deallocator = Deallocator::new("xmlFree", hooks::free::<Xml>);
//! }
//! // xmlMemSetup(hooks::free::<Xml>, hooks::malloc::<Xml>,
//! //             hooks::realloc::<Xml>, hooks::strdup::<Xml>);
//! let p = hooks::malloc::<Xml>(32);
//! // SAFETY: p came from the hooks of the same family and is freed once.
//! unsafe { hooks::free::<Xml>(p) };
//! ```
//!
//! # What the hooks do with the memory
//!
//! - Every block comes from `calloc`: zeroed, so a conservative scan (mode 2)
//!   never reads a stale word left by an earlier use of the block as a
//!   pointer.
//! - A freed block waits in the quarantine before it goes back to `free`, so
//!   a late use or a second free names it and the site that freed it.
//! - With the checks on, `realloc` of a tracked block always moves it (a new
//!   block, a copy, the old block to the quarantine): a pointer the library
//!   kept into the old block is then a use after free the checker sees, not
//!   a read that works by luck.
//! - With the checks off or compiled out they are `calloc`, `realloc` and
//!   `free`, nothing more.
//!
//! Every hook is an `extern "C"` function that never unwinds: a violation
//! with the panic action aborts after its report (a panic may not cross C),
//! as in a [`callback!`](crate::callback!).
//!
//! # zlib
//!
//! ```
//! use ffi_check::{call, hooks, to_c, LeakCheck, Pinned};
//! use libz_sys as z;
//!
//! let mut stream = Pinned::new(z::z_stream {
//!     next_in: std::ptr::null_mut(), avail_in: 0, total_in: 0,
//!     next_out: std::ptr::null_mut(), avail_out: 0, total_out: 0,
//!     msg: std::ptr::null_mut(), state: std::ptr::null_mut(),
//!     zalloc: hooks::zalloc,                    // zlib's memory is tracked
//!     zfree: hooks::zfree,
//!     opaque: std::ptr::null_mut(), data_type: 0, adler: 0, reserved: 0,
//! });
//! let size: std::os::raw::c_int = to_c(std::mem::size_of::<z::z_stream>());
//! let scope = LeakCheck::start();
//! // SAFETY: a fresh stream, zlib's own version string and struct size.
//! let rc = unsafe { call!(z::deflateInit_(&mut stream, 6, z::zlibVersion(), size)) };
//! assert_eq!(rc, z::Z_OK);
//! # if ffi_check::COMPILED_IN {
//! assert!(!scope.finish().is_empty());          // zlib's state, until deflateEnd
//! # } else { let _ = scope.finish(); }
//! // SAFETY: the stream was initialised above and is ended once.
//! unsafe { call!(z::deflateEnd(&mut stream)) };
//! ```

use std::ffi::c_void;
use std::os::raw::{c_char, c_int, c_uint};

use crate::cbox::{check_free, free_checked, Deallocator, Verdict};
use crate::frame::current_call;
use crate::mode::checks_on;
use crate::registry::{self, NewRegion, RegionKind, RegionState};
use crate::report::enter_callback;
use crate::site::Site;
use crate::stderr::write_stderr;

// ---- families ------------------------------------------------------------

/// A library's memory: the allocations made through the hooks of one
/// library, and the deallocator that frees them.
///
/// The family is told apart by its deallocator's function (as
/// [`Deallocator`] families always are): two families whose deallocators are
/// the same function are one family. The deallocator's name is what reports
/// print (`allocated by \`sqlite3_free\``).
///
/// ```
/// use ffi_check::{hooks, Deallocator};
/// struct Curl;
/// impl hooks::Family for Curl {
///     const DEALLOCATOR: Deallocator = Deallocator::new("curl_free", hooks::free::<Curl>);
/// }
/// assert_eq!(<Curl as hooks::Family>::DEALLOCATOR.name(), "curl_free");
/// ```
pub trait Family: 'static {
    /// What frees this library's memory from outside the library: the hook
    /// [`free::<Self>`](free) itself, or the library's own free function
    /// when it has one (`sqlite3_free`), which ends in the hook.
    const DEALLOCATOR: Deallocator;
}

/// zlib's memory (its stream state, window and tables), allocated through
/// [`zalloc`] and freed through [`zfree`] by `deflateEnd` / `inflateEnd`.
/// Reports name its deallocator `zlib zfree`.
#[derive(Debug)]
pub struct Zlib;

impl Family for Zlib {
    const DEALLOCATOR: Deallocator = Deallocator::new("zlib zfree", free::<Zlib>);
}

// ---- the shared core -----------------------------------------------------

/// Runs a hook body with the guarantees C needs: a violation with the panic
/// action aborts after its report instead of unwinding, and a panic inside
/// the checker aborts with a message.
fn from_c<R>(hook: &str, body: impl FnOnce() -> R) -> R {
    let _guard = enter_callback();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(_) => {
            write_stderr(&format!(
                "ffi-check: panic inside the allocator hook `{hook}` called from C; aborting\n"
            ));
            std::process::abort();
        }
    }
}

/// The site of the `call!` this thread is in: what the library's
/// allocations and frees are attributed to.
fn call_site() -> Option<Site> {
    current_call().map(|(_, site)| site)
}

/// A zeroed block of `size` bytes, tracked as C memory of family `F`.
fn allocate<F: Family>(size: usize) -> *mut c_void {
    // SAFETY: calloc has no preconditions.
    let p = unsafe { libc::calloc(1, size.max(1)) };
    if !p.is_null() && checks_on() {
        track::<F>(p, size);
    }
    p
}

/// Registers a block the hooks just allocated. A fresh block replaces any
/// record of its range (a released block of another family, say).
fn track<F: Family>(p: *mut c_void, size: usize) {
    registry::insert(NewRegion {
        start: p as usize,
        size,
        kind: RegionKind::C,
        family: F::DEALLOCATOR.family(),
        flags: 0,
        site: call_site(),
        type_name: None,
    });
}

/// Frees a block through the C1/C2 checks as a free of family `F`.
///
/// # Safety
/// `ptr` is null or a block the library no longer uses.
unsafe fn release<F: Family>(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    let site = call_site();
    let verdict = check_free(
        ptr as usize,
        F::DEALLOCATOR.family(),
        F::DEALLOCATOR.name(),
        site,
    );
    // Every hook block comes from calloc, so C's free gives it back (through
    // the quarantine when tracked); the family was judged just above.
    // SAFETY: forwarded contract; a refused free (`Skip`) does nothing.
    unsafe { free_checked(ptr, verdict, &Deallocator::LIBC, site) }
}

/// `realloc` for family `F`; see the module docs for why a tracked block
/// always moves.
///
/// # Safety
/// `ptr` is null or a live block from the hooks of `F`.
unsafe fn reallocate<F: Family>(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return allocate::<F>(size);
    }
    let site = call_site();
    // The free checks, without the free: a realloc of freed, managed,
    // interior or foreign memory is the same mistake as a free of it.
    // Refused, it returns NULL and leaves the block alone, as a failed
    // realloc does.
    let verdict = check_free(ptr as usize, F::DEALLOCATOR.family(), "realloc", site);
    match verdict {
        Verdict::Skip => std::ptr::null_mut(),
        Verdict::Tracked(_) => {
            let q = allocate::<F>(size);
            if q.is_null() {
                return q;
            }
            // SAFETY: ptr is a live block (checked above); both blocks hold
            // at least the bytes copied, and they do not overlap.
            unsafe {
                let keep = usable_size(ptr).min(size);
                std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), q.cast::<u8>(), keep);
                free_checked(ptr, verdict, &Deallocator::LIBC, site);
            }
            q
        }
        Verdict::Untracked => {
            // SAFETY: ptr is a live calloc block the checker does not know
            // (allocated while the checks were off).
            let old = unsafe { usable_size(ptr) };
            // SAFETY: as above.
            let q = unsafe { libc::realloc(ptr, size.max(1)) };
            if q.is_null() {
                return q;
            }
            if size > old {
                // SAFETY: [old, size) lies inside the new block.
                unsafe { std::ptr::write_bytes(q.cast::<u8>().add(old), 0, size - old) };
            }
            if checks_on() {
                track::<F>(q, size);
            }
            q
        }
    }
}

/// How many bytes the block at `ptr` can hold.
///
/// # Safety
/// `ptr` is a live block from `calloc`/`realloc`.
unsafe fn usable_size(ptr: *mut c_void) -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: forwarded contract.
        unsafe { libc::malloc_usable_size(ptr) }
    }
    #[cfg(target_vendor = "apple")]
    {
        // SAFETY: forwarded contract.
        unsafe { libc::malloc_size(ptr) }
    }
    #[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
    {
        // No way to ask the C allocator: only tracked blocks are known.
        registry::lookup(ptr as usize).map_or(0, |r| r.size)
    }
}

/// The size the hooks report for `ptr`: the usable size of a live block,
/// the recorded size of one that waits in the quarantine (which the C
/// allocator must not be asked about after a double free).
///
/// # Safety
/// `ptr` is a block from the hooks.
unsafe fn block_size(ptr: *mut c_void) -> usize {
    if checks_on() {
        if let Some(r) = registry::lookup(ptr as usize) {
            if r.start == ptr as usize && r.state == RegionState::Freed {
                return r.size;
            }
        }
    }
    // SAFETY: forwarded contract; not a freed block the checker knows.
    unsafe { usable_size(ptr) }
}

// ---- zlib ----------------------------------------------------------------

/// zlib's `alloc_func`: put it in `z_stream.zalloc` (with [`zfree`] in
/// `zfree`) before `deflateInit` / `inflateInit`, and zlib's state becomes
/// tracked C memory of family [`Zlib`], allocated at the `call!` of the
/// init. `opaque` is not used.
///
/// ```
/// let p = ffi_check::hooks::zalloc(std::ptr::null_mut(), 4, 16);
/// assert!(!p.is_null());
/// // SAFETY: p came from zalloc and is freed once, with zfree.
/// unsafe { ffi_check::hooks::zfree(std::ptr::null_mut(), p) };
/// ```
pub extern "C" fn zalloc(opaque: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    let _ = opaque;
    from_c("zalloc", || {
        // c_uint to usize is lossless on every target zlib supports.
        match (items as usize).checked_mul(size as usize) {
            Some(bytes) => allocate::<Zlib>(bytes),
            None => std::ptr::null_mut(),
        }
    })
}

/// zlib's `free_func`, the pair of [`zalloc`]: frees through the C1/C2
/// checks as family [`Zlib`].
///
/// # Safety
/// `ptr` is null or came from [`zalloc`] and is not used after this.
pub unsafe extern "C" fn zfree(opaque: *mut c_void, ptr: *mut c_void) {
    let _ = opaque;
    // SAFETY: forwarded contract.
    from_c("zfree", || unsafe { release::<Zlib>(ptr) })
}

// ---- the generic shapes --------------------------------------------------

/// `malloc(size)` for family `F`: a zeroed block tracked as `F`'s memory.
/// Returns null when the C allocator does.
///
/// ```
/// use ffi_check::{hooks, Deallocator};
/// struct Lib;
/// impl hooks::Family for Lib {
///     const DEALLOCATOR: Deallocator = Deallocator::new("lib_free", hooks::free::<Lib>);
/// }
/// let p = hooks::malloc::<Lib>(100);
/// // SAFETY: p came from the hooks of `Lib`.
/// unsafe {
///     assert!(hooks::size::<Lib>(p) >= 100);
///     hooks::free::<Lib>(p);
/// }
/// ```
pub extern "C" fn malloc<F: Family>(size: usize) -> *mut c_void {
    from_c("malloc", || allocate::<F>(size))
}

/// `calloc(count, size)` for family `F`. Returns null when the product
/// overflows or the C allocator fails.
pub extern "C" fn calloc<F: Family>(count: usize, size: usize) -> *mut c_void {
    from_c("calloc", || match count.checked_mul(size) {
        Some(bytes) => allocate::<F>(bytes),
        None => std::ptr::null_mut(),
    })
}

/// `realloc(ptr, size)` for family `F`: `realloc(NULL, n)` is `malloc(n)`,
/// and a `size` of 0 gives a fresh minimal block (the old one is freed), so
/// the result is null only on failure or refusal. A realloc of memory that
/// is not live memory of `F` is reported as its free would be and refused
/// (null, the block left alone).
///
/// # Safety
/// `ptr` is null or a live block from the hooks of `F`, not used after this
/// unless null is returned.
pub unsafe extern "C" fn realloc<F: Family>(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    from_c("realloc", || unsafe { reallocate::<F>(ptr, size) })
}

/// `free(ptr)` for family `F`, through the C1/C2 checks: a double free, a
/// free of managed, interior or stack memory, or of another family's memory
/// is reported and not carried out.
///
/// # Safety
/// `ptr` is null or came from the hooks of `F` and is not used after this.
pub unsafe extern "C" fn free<F: Family>(ptr: *mut c_void) {
    // SAFETY: forwarded contract.
    from_c("free", || unsafe { release::<F>(ptr) })
}

/// `size(ptr)`: how many bytes the block can hold (at least what was asked
/// for). 0 for null.
///
/// # Safety
/// `ptr` is null or came from the hooks of `F`.
pub unsafe extern "C" fn size<F: Family>(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: forwarded contract.
    from_c("size", || unsafe { block_size(ptr) })
}

/// `strdup(s)` for family `F` (libxml2's `xmlMemSetup` asks for one).
/// Returns null for a null `s`.
///
/// # Safety
/// `s` is null or a NUL-terminated string.
pub unsafe extern "C" fn strdup<F: Family>(s: *const c_char) -> *mut c_char {
    if s.is_null() {
        return std::ptr::null_mut();
    }
    from_c("strdup", || {
        // SAFETY: forwarded contract.
        let len = unsafe { libc::strlen(s) } + 1;
        let p = allocate::<F>(len).cast::<c_char>();
        if !p.is_null() {
            // SAFETY: p holds len bytes; s holds len bytes with its NUL.
            unsafe { std::ptr::copy_nonoverlapping(s, p, len) };
        }
        p
    })
}

// ---- SQLite --------------------------------------------------------------

/// SQLite's `sqlite3_mem_methods`, laid out as `sqlite3.h` declares it, for
/// `sqlite3_config(SQLITE_CONFIG_MALLOC, &methods)` before SQLite
/// initialises (the first `sqlite3_open` or `sqlite3_initialize`). SQLite
/// copies it; all of its memory then comes from the hooks of family `F`.
///
/// Give `F` the real `sqlite3_free` as its deallocator: memory that SQLite
/// hands out (`sqlite3_mprintf`, `sqlite3_expanded_sql`) may then be owned
/// by a `CBox::from_raw_with(p, F::DEALLOCATOR)`, which frees it through
/// SQLite (keeping SQLite's memory statistics right), and freeing it with
/// `free` is `MismatchedFree`.
///
/// ```
/// use ffi_check::{hooks, hooks::Family, Deallocator};
/// use libsqlite3_sys as sql;
///
/// struct Sqlite;
/// impl hooks::Family for Sqlite {
///     const DEALLOCATOR: Deallocator = Deallocator::new("sqlite3_free", sql::sqlite3_free);
/// }
/// static METHODS: hooks::SqliteMemMethods = hooks::SqliteMemMethods::new::<Sqlite>();
///
/// // SAFETY: before SQLite initialises; SQLite copies the methods.
/// let rc = unsafe { sql::sqlite3_config(sql::SQLITE_CONFIG_MALLOC, &METHODS as *const hooks::SqliteMemMethods) };
/// assert_eq!(rc, sql::SQLITE_OK);
/// // SAFETY: sqlite3_mprintf with a format without conversions.
/// let p = unsafe { sql::sqlite3_mprintf(c"hello".as_ptr()) };
/// // SAFETY: p is SQLite memory (from the hooks) holding a C string.
/// let text = unsafe { ffi_check::CBox::from_raw_cstr_with(p, Sqlite::DEALLOCATOR) };
/// assert_eq!(text.unwrap().to_bytes(), b"hello");      // freed with sqlite3_free
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SqliteMemMethods {
    /// `xMalloc`: [`sqlite_malloc`].
    pub x_malloc: Option<unsafe extern "C" fn(c_int) -> *mut c_void>,
    /// `xFree`: [`sqlite_free`].
    pub x_free: Option<unsafe extern "C" fn(*mut c_void)>,
    /// `xRealloc`: [`sqlite_realloc`].
    pub x_realloc: Option<unsafe extern "C" fn(*mut c_void, c_int) -> *mut c_void>,
    /// `xSize`: [`sqlite_size`].
    pub x_size: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    /// `xRoundup`: [`sqlite_roundup`].
    pub x_roundup: Option<unsafe extern "C" fn(c_int) -> c_int>,
    /// `xInit`: [`sqlite_init`].
    pub x_init: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    /// `xShutdown`: [`sqlite_shutdown`].
    pub x_shutdown: Option<unsafe extern "C" fn(*mut c_void)>,
    /// `pAppData`: null (the hooks keep no state of their own).
    pub app_data: *mut c_void,
}

// SAFETY: the struct holds function pointers and a null `app_data` that
// nothing dereferences; sharing it between threads shares only those.
unsafe impl Sync for SqliteMemMethods {}
// SAFETY: as above.
unsafe impl Send for SqliteMemMethods {}

impl SqliteMemMethods {
    /// The hooks of family `F`, ready for `SQLITE_CONFIG_MALLOC`.
    pub const fn new<F: Family>() -> SqliteMemMethods {
        SqliteMemMethods {
            x_malloc: Some(sqlite_malloc::<F>),
            x_free: Some(sqlite_free::<F>),
            x_realloc: Some(sqlite_realloc::<F>),
            x_size: Some(sqlite_size::<F>),
            x_roundup: Some(sqlite_roundup),
            x_init: Some(sqlite_init),
            x_shutdown: Some(sqlite_shutdown),
            app_data: std::ptr::null_mut(),
        }
    }
}

/// `xMalloc`: `n` bytes of family `F` (null for a negative `n`).
pub extern "C" fn sqlite_malloc<F: Family>(n: c_int) -> *mut c_void {
    from_c("xMalloc", || match usize::try_from(n) {
        Ok(n) => allocate::<F>(n),
        Err(_) => std::ptr::null_mut(),
    })
}

/// `xFree`: frees a block of family `F` through the checks (what
/// `sqlite3_free` ends in).
///
/// # Safety
/// `ptr` is null or came from the hooks of `F` and is not used after this.
pub unsafe extern "C" fn sqlite_free<F: Family>(ptr: *mut c_void) {
    // SAFETY: forwarded contract.
    from_c("xFree", || unsafe { release::<F>(ptr) })
}

/// `xRealloc`: resizes a block of family `F` (null for a negative `n`).
///
/// # Safety
/// As [`realloc`].
pub unsafe extern "C" fn sqlite_realloc<F: Family>(ptr: *mut c_void, n: c_int) -> *mut c_void {
    from_c("xRealloc", || match usize::try_from(n) {
        // SAFETY: forwarded contract.
        Ok(n) => unsafe { reallocate::<F>(ptr, n) },
        Err(_) => std::ptr::null_mut(),
    })
}

/// `xSize`: the usable size of a block of family `F` (saturated to
/// `c_int`).
///
/// # Safety
/// As [`size`].
pub unsafe extern "C" fn sqlite_size<F: Family>(ptr: *mut c_void) -> c_int {
    // SAFETY: forwarded contract.
    let n = unsafe { size::<F>(ptr) };
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// `xRoundup`: `n` rounded up to a multiple of 8, the granule SQLite's own
/// allocator uses (negative and overflowing sizes are left as they are, so
/// the allocation fails).
pub extern "C" fn sqlite_roundup(n: c_int) -> c_int {
    n.checked_add(7).map_or(n, |m| m & !7)
}

/// `xInit`: nothing to set up; returns `SQLITE_OK` (0).
pub extern "C" fn sqlite_init(app_data: *mut c_void) -> c_int {
    let _ = app_data;
    0
}

/// `xShutdown`: nothing to tear down.
pub extern "C" fn sqlite_shutdown(app_data: *mut c_void) {
    let _ = app_data;
}

#[cfg(all(test, any(debug_assertions, feature = "always")))]
mod tests {
    use super::*;
    use crate::{c_free, c_free_with, capture, LeakCheck, ViolationKind};

    struct Lib;
    impl Family for Lib {
        const DEALLOCATOR: Deallocator = Deallocator::new("lib_free", free::<Lib>);
    }
    struct Other;
    impl Family for Other {
        const DEALLOCATOR: Deallocator = Deallocator::new("other_free", free::<Other>);
    }

    #[test]
    fn families_are_distinct_from_each_other_and_from_malloc() {
        let fams = [
            Lib::DEALLOCATOR.family(),
            Other::DEALLOCATOR.family(),
            Zlib::DEALLOCATOR.family(),
            Deallocator::LIBC.family(),
        ];
        for (i, a) in fams.iter().enumerate() {
            for b in &fams[i + 1..] {
                assert_ne!(a, b, "{fams:?}");
            }
        }
    }

    #[test]
    fn blocks_are_zeroed_tracked_and_freed_clean() {
        let scope = LeakCheck::start();
        let p = malloc::<Lib>(64).cast::<u8>();
        // SAFETY: 64 fresh bytes.
        assert!(unsafe { std::slice::from_raw_parts(p, 64) }
            .iter()
            .all(|b| *b == 0));
        let r = registry::lookup(p as usize).expect("tracked");
        assert_eq!((r.size, r.kind), (64, RegionKind::C));
        assert_eq!(r.family, Lib::DEALLOCATOR.family());
        assert_eq!(scope.finish().leaked_bytes(), 64);
        let scope = LeakCheck::start();
        // SAFETY: p came from malloc::<Lib> and is freed once.
        let ((), v) = capture(|| unsafe { free::<Lib>(p.cast()) });
        assert!(v.is_empty(), "{v:?}");
        assert!(scope.finish().is_empty());
    }

    #[test]
    fn realloc_moves_keeps_the_bytes_and_zeroes_the_rest() {
        let p = malloc::<Lib>(8).cast::<u8>();
        // SAFETY: 8 bytes at p.
        unsafe { std::ptr::copy_nonoverlapping(b"ffi-chk!".as_ptr(), p, 8) };
        // SAFETY: p is a live block of `Lib`.
        let q = unsafe { realloc::<Lib>(p.cast(), 4096) }.cast::<u8>();
        assert_ne!(p, q, "a tracked block moves");
        // SAFETY: q holds 4096 bytes.
        let bytes = unsafe { std::slice::from_raw_parts(q, 4096) };
        assert_eq!(&bytes[..8], b"ffi-chk!");
        assert!(bytes[8..].iter().all(|b| *b == 0));
        assert_eq!(
            registry::lookup(p as usize).map(|r| r.state),
            Some(RegionState::Freed)
        );
        // The old block is freed: freeing it again is a double free.
        // SAFETY: the second free is refused, not carried out.
        let ((), v) = capture(|| unsafe { free::<Lib>(p.cast()) });
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind(), ViolationKind::DoubleFree);
        // SAFETY: q is live and freed once.
        unsafe { free::<Lib>(q.cast()) };
    }

    #[test]
    fn freeing_with_another_familys_deallocator_is_mismatched() {
        let p = malloc::<Lib>(16);
        // SAFETY: refused: the block is `Lib`'s.
        let ((), v) = capture(|| unsafe { c_free(p) });
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind(), ViolationKind::MismatchedFree);
        assert!(v[0]
            .first_line()
            .contains("allocated by `lib_free`, freed with `free`"));
        // SAFETY: refused as well.
        let ((), v) = capture(|| unsafe { free::<Other>(p) });
        assert_eq!(v[0].kind(), ViolationKind::MismatchedFree);
        // SAFETY: the family's own deallocator: accepted, once.
        let ((), v) = capture(|| unsafe { c_free_with(p, &Lib::DEALLOCATOR) });
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn size_and_roundup_answer_what_sqlite_asks() {
        let p = malloc::<Lib>(10);
        // SAFETY: p is a live block of `Lib`.
        unsafe {
            assert!(size::<Lib>(p) >= 10);
            assert!(sqlite_size::<Lib>(p) >= 10);
            assert_eq!(size::<Lib>(std::ptr::null_mut()), 0);
            free::<Lib>(p);
            assert_eq!(sqlite_roundup(1), 8);
            assert_eq!(sqlite_roundup(8), 8);
            assert_eq!(sqlite_roundup(c_int::MAX), c_int::MAX);
            assert_eq!(sqlite_init(std::ptr::null_mut()), 0);
        }
        assert_eq!(calloc::<Lib>(usize::MAX, 2), std::ptr::null_mut());
    }

    #[test]
    fn strdup_copies_into_the_family() {
        // SAFETY: a NUL-terminated literal.
        let p = unsafe { strdup::<Lib>(c"zlib".as_ptr()) };
        // SAFETY: p is the copy.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes(), b"zlib");
        assert_eq!(
            registry::lookup(p as usize).map(|r| r.family),
            Some(Lib::DEALLOCATOR.family())
        );
        // SAFETY: freed once, by its family.
        unsafe { free::<Lib>(p.cast()) };
    }
}
