//! Rust declarations of the C fixture library (`csrc/fixtures/fixtures.h`),
//! a small C library with the shapes real C APIs have: create/destroy pairs,
//! strings, buffers, callbacks with user data, kept pointers, a private
//! allocator, and a few functions that misbehave on purpose.
//!
//! The build script compiles it into the static library `ffi_check_fixtures`.
//! Tests reach this file as `common::fixtures`, examples include it with
//! `#[path = "../tests/common/fixtures.rs"] mod fixtures;`, so it depends on
//! nothing else in `tests/`.

#![allow(dead_code)]

use std::os::raw::{c_char, c_int, c_long, c_uchar, c_ulong, c_void};

/// Opaque `fx_counter`.
#[repr(C)]
pub struct FxCounter {
    _private: [u8; 0],
}

/// `fx_view`: a borrowed view of ints (a struct holding a pointer).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FxView {
    pub data: *const c_int,
    pub len: usize,
}

/// `fx_visit_fn`: `int (*)(void *user, int item)`.
pub type FxVisitFn = Option<unsafe extern "C" fn(*mut c_void, c_int) -> c_int>;

/// `fx_produce_fn`: `const void *(*)(void *user)`.
pub type FxProduceFn = Option<unsafe extern "C" fn(*mut c_void) -> *const c_void>;

#[link(name = "ffi_check_fixtures", kind = "static")]
extern "C" {
    // create/destroy

    /// Allocates a counter (with `ffi_check_malloc`) starting at `start`.
    pub fn fx_counter_new(start: c_int) -> *mut FxCounter;
    /// Increments the counter and returns its new value.
    pub fn fx_counter_incr(c: *mut FxCounter) -> c_int;
    /// Frees a counter (with `ffi_check_free`); NULL is ok.
    pub fn fx_counter_free(c: *mut FxCounter);

    // strings

    /// The static string "fixtures 1.0"; never freed.
    pub fn fx_version() -> *const c_char;
    /// "hello, <name>", NUL-terminated, `ffi_check_malloc`'d; the caller frees it.
    pub fn fx_greet(name: *const c_char) -> *mut c_char;
    /// `strlen(s)`.
    pub fn fx_strlen(s: *const c_char) -> usize;
    /// `ffi_check_malloc(4)` holding "abcd" with NO terminating NUL; `*len_out = 4`.
    pub fn fx_unterminated(len_out: *mut usize) -> *mut c_char;
    /// `ffi_check_malloc`'d bytes `{0x66, 0xff, 0xfe, 0}`: invalid UTF-8, NUL-terminated.
    pub fn fx_bad_utf8() -> *mut c_char;

    // buffers

    /// `memset(buf, value, len)`, returns `len`; `buf` may be NULL when `len == 0`.
    pub fn fx_fill(buf: *mut c_uchar, len: usize, value: c_uchar) -> usize;
    /// Sum of the `len` bytes of `buf`.
    pub fn fx_checksum(buf: *const c_uchar, len: usize) -> c_ulong;
    /// Sum of `*items[i]` for `i` in `0..n`.
    pub fn fx_sum_nested(items: *const *const c_int, n: usize) -> c_long;
    /// Sum of `v->data[0..v->len]`.
    pub fn fx_sum_view(v: *const FxView) -> c_long;

    // callbacks with user data

    /// Calls `cb(user, items[i])` in order, stopping early when it returns
    /// nonzero; returns the number of calls made.
    pub fn fx_for_each(items: *const c_int, n: usize, cb: FxVisitFn, user: *mut c_void) -> c_int;
    /// Returns `cb(user)`.
    pub fn fx_call_producer(cb: FxProduceFn, user: *mut c_void) -> *const c_void;

    // keeping a lent pointer (one global slot)

    /// Stores `p` in the slot and calls `ffi_check_retain(p)`.
    pub fn fx_keep(p: *const c_void);
    /// Returns the pointer in the slot.
    pub fn fx_kept() -> *const c_void;
    /// Empties the slot, calling `ffi_check_release` if it held a pointer.
    pub fn fx_forget();
    /// Stores `p` in a second slot without telling ffi-check.
    pub fn fx_keep_silently(p: *const c_void);
    /// Empties the second slot.
    pub fn fx_forget_silently();

    // a library-specific allocator: NOT tracked, NOT libc-compatible

    /// Allocates `n` bytes behind a 16-byte magic header.
    pub fn fx_alloc(n: usize) -> *mut c_void;
    /// Frees memory from `fx_alloc`; NULL is ok; aborts on a bad block.
    pub fn fx_dealloc(p: *mut c_void);
    /// Copy of `s` in `fx_alloc`'d memory.
    pub fn fx_alloc_string(s: *const c_char) -> *mut c_char;

    // misbehaving on purpose

    /// `ffi_check_free(p)` twice.
    pub fn fx_free_twice(p: *mut c_void);
    /// `ffi_check_free(p)`, whatever `p` is.
    pub fn fx_free_it(p: *mut c_void);
    /// `n` zeroed bytes from `ffi_check_malloc`, meant to be leaked.
    pub fn fx_leak(n: usize) -> *mut c_void;
    /// `*slot = p`: C writes a pointer into memory it was given.
    pub fn fx_store_ptr(slot: *mut *mut c_void, p: *const c_void);

    // C keeping pointers in its own memory (what mode 2 scans)

    /// A zeroed table of `n` pointers in tracked C memory (`ffi_check_calloc`).
    pub fn fx_table_new(n: usize) -> *mut *mut c_void;
    /// `t[i] = p`.
    pub fn fx_table_put(t: *mut *mut c_void, i: usize, p: *const c_void);
    /// `t[i] = n` (a number).
    pub fn fx_table_put_number(t: *mut *mut c_void, i: usize, n: usize);
    /// `t[i] = ffi_check_malloc(n)`: C keeping its own memory.
    pub fn fx_table_put_own(t: *mut *mut c_void, i: usize, n: usize);
    /// `ffi_check_free(t[i]); t[i] = NULL`.
    pub fn fx_table_free_slot(t: *mut *mut c_void, i: usize);
    /// Frees the table.
    pub fn fx_table_free(t: *mut *mut c_void);
    /// Registers the static 4-pointer table as a root (`ffi_check_add_root`).
    pub fn fx_root_register();
    /// Unregisters it (`ffi_check_remove_root`).
    pub fn fx_root_unregister();
    /// `fx_root_table[i] = p`.
    pub fn fx_root_put(i: usize, p: *const c_void);
    /// The static table's address.
    pub fn fx_root_table_addr() -> *const c_void;
    /// `p[offset] = value`, inside the buffer or not.
    pub fn fx_poke(p: *mut c_uchar, offset: c_long, value: c_uchar);
}

/// The shared-library fixture (`csrc/fixtures/shared.c`), loaded with
/// `dlopen` from the path the build script passes in
/// `FFI_CHECK_SHARED_FIXTURE`; it is not linked.
pub mod shared {
    use std::ffi::{c_void, CString};

    /// `shfx_keep(i, p)`: keeps `p` in slot `i` of the library's global table.
    pub type KeepFn = unsafe extern "C" fn(usize, *const c_void);
    /// `shfx_kept(i)`: slot `i`.
    pub type KeptFn = unsafe extern "C" fn(usize) -> *const c_void;
    /// `shfx_forget()`: empties every slot.
    pub type ForgetFn = unsafe extern "C" fn();

    /// The loaded library's functions.
    pub struct SharedFixture {
        pub keep: KeepFn,
        pub kept: KeptFn,
        pub forget: ForgetFn,
    }

    /// The library's file name, as `watch_library` matches it.
    pub const NAME: &str = "libffi_check_shared_fixture";

    /// Loads the library (once; later calls find it loaded) and looks its
    /// functions up.
    pub fn load() -> SharedFixture {
        let path = CString::new(env!("FFI_CHECK_SHARED_FIXTURE")).expect("a path");
        // SAFETY: dlopen of a plain C library with no constructors.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen of the shared fixture failed");
        let sym = |name: &str| {
            let name = CString::new(name).expect("a symbol name");
            // SAFETY: `handle` is a loaded library; `name` is NUL-terminated.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            assert!(!p.is_null(), "no symbol {name:?} in the shared fixture");
            p
        };
        // SAFETY: each symbol is the C function of shared.c with the
        // signature of its type.
        unsafe {
            SharedFixture {
                keep: std::mem::transmute::<*mut c_void, KeepFn>(sym("shfx_keep")),
                kept: std::mem::transmute::<*mut c_void, KeptFn>(sym("shfx_kept")),
                forget: std::mem::transmute::<*mut c_void, ForgetFn>(sym("shfx_forget")),
            }
        }
    }
}
