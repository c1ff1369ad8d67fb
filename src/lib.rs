//! # ffi-check: cgocheck for Rust FFI
//!
//! `ffi-check` checks, at run time, the rules for passing pointers between
//! Rust and C. It does for Rust FFI what Go's `cgocheck` does for cgo, and
//! more: it also proves that C memory is freed exactly once, finds leaks with
//! the site that allocated them, catches C keeping pointers it was only lent,
//! and makes every conversion at the boundary explicit and lossless.
//!
//! The checks are compiled in with `debug_assertions` (or the `always`
//! feature) and vanish otherwise: [`call!`] becomes the plain call and the
//! wrappers plain owners.
//!
//! ## The idea in one example
//!
//! Wrap Rust memory you lend to C in [`Managed`], C memory you own in
//! [`CBox`], and make the call through [`call!`]:
//!
//! ```
//! use ffi_check::{call, CBox, Managed};
//! use std::os::raw::c_char;
//!
//! // A C function (written in Rust here so the example runs anywhere).
//! extern "C" fn fill(buf: *mut u8, len: usize, value: u8) -> usize {
//!     // SAFETY: the caller lends `len` writable bytes.
//!     unsafe { std::ptr::write_bytes(buf, value, len) };
//!     len
//! }
//!
//! let mut buf = Managed::from_vec(vec![0u8; 64]);
//! let n = buf.len();
//! let written = call!(fill(&mut buf, n, 7));
//! assert_eq!(written, 64);
//! assert!(buf.iter().all(|b| *b == 7));
//!
//! let name = CBox::from_str("world");          // malloc'd, NUL-terminated
//! let p: *const c_char = name.as_ptr();        // a named method, never implicit
//! # let _ = p;
//! ```
//!
//! A violation reads like cgocheck's panic, then says more:
//!
//! ```text
//! ffi-check: argument 1 of `fx_sum_nested` has managed pointer to unpinned managed pointer
//!   rule P1 (UnpinnedNested)
//!   the nested pointer is at offset 0 of the lent memory
//!   at tests/rules_p1.rs:33:18 in call to `fx_sum_nested` on thread `lending_table_of_unpinned_pointers_is_reported`
//!   lent: 0x7f1e9802ef20 (16 bytes, managed memory holding `[*const i32; 2]`, live, unpinned)
//!       allocated at tests/rules_p1.rs:29:32
//!   points to: 0x7f1e98000ce0 (4 bytes, managed memory holding `i32`, live, unpinned)
//!       allocated at tests/rules_p1.rs:27:32
//!   backtrace of the violation:
//!       0: rules_p1::lending_table_of_unpinned_pointers_is_reported::{{closure}}
//!              at tests/rules_p1.rs:33
//!       ...
//! help: pin the memory the nested pointer points to (`Pinner::pin`, or keep it in a `Pinned<T>`) for as long as C can see it
//! ```
//!
//! ## The rules
//!
//! "Managed memory" in P1, P2, P4 and P5 is memory declared [`Managed`] or
//! [`Pinned`]: Go's discipline, since it is what you asked to be held to it.
//! A plain heap block of the [`TrackingAllocator`] never moves, so C holding
//! it is harmless until Rust frees it: for it the rule is P3 (freed while C
//! holds it) and C2, unless the rules are [`strict`].
//!
//! | id | rule | violation |
//! |----|------|-----------|
//! | P1 | Memory lent to C for a call holds no pointer to *unpinned* managed memory. | [`UnpinnedNested`](ViolationKind::UnpinnedNested) |
//! | P2 | C keeps no pointer to unpinned managed memory after the call. | [`Retained`](ViolationKind::Retained), [`InvalidRoot`](ViolationKind::InvalidRoot) (a root the scans cannot read) |
//! | P3 | Managed memory is not freed or unpinned while C holds it, nor dropped while pinned. | [`FreedWhileRetained`](ViolationKind::FreedWhileRetained), [`FreedWhilePinned`](ViolationKind::FreedWhilePinned) |
//! | P4 | A callback returns no pointer to unpinned managed memory. | [`CallbackReturnedUnpinned`](ViolationKind::CallbackReturnedUnpinned) |
//! | P5 | Rust stores no pointer to unpinned managed memory into C memory. | [`StoredUnpinned`](ViolationKind::StoredUnpinned) |
//! | P6 | A pin ends. | [`LeakedPin`](ViolationKind::LeakedPin) |
//! | C1 | C memory is freed once, by its own deallocator; managed memory never by C. | [`DoubleFree`](ViolationKind::DoubleFree), [`InvalidFree`](ViolationKind::InvalidFree), [`MismatchedFree`](ViolationKind::MismatchedFree) |
//! | C2 | No pointer into freed memory crosses the boundary or is freed again. | [`UseAfterFree`](ViolationKind::UseAfterFree) |
//! | C3 | C memory Rust owns is freed before the end. | [`Leak`](ViolationKind::Leak) |
//! | C4 | Memory is written and read only inside its bounds: C inside the C memory it is given (mode 2 guard bytes), Rust inside the buffers C returns. | [`GuardOverrun`](ViolationKind::GuardOverrun), [`OutOfBounds`](ViolationKind::OutOfBounds) |
//! | X1 | Numbers cross only through explicit, lossless conversions. | [`LossyConversion`](ViolationKind::LossyConversion) |
//! | X2 | Strings cross only through explicit conversions. | [`InteriorNul`](ViolationKind::InteriorNul), [`NullPointer`](ViolationKind::NullPointer), [`UnterminatedString`](ViolationKind::UnterminatedString), [`InvalidUtf8`](ViolationKind::InvalidUtf8) |
//! | X3 | Wrappers never turn into raw pointers implicitly. | compile time |
//!
//! The examples below use [`capture`] to collect the violations instead of
//! panicking, as property tests do.
//!
//! ### P1: lend only what holds no unpinned pointers
//!
//! ```
//! use ffi_check::{call, capture, Managed, Pinner, ViolationKind};
//! extern "C" fn first(items: *const *const i32) -> i32 {
//!     // SAFETY: the caller lends one valid pointer.
//!     unsafe { **items }
//! }
//! let value = Managed::new(7);
//! let table = Managed::new([value.as_ptr()]);
//! let (_, v) = capture(|| call!(first(&table)));
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(v[0].kind(), ViolationKind::UnpinnedNested);
//! # }
//! let mut pinner = Pinner::new();
//! pinner.pin(&value);                       // the fix: pin what the table points to
//! assert_eq!(ffi_check::assert_clean(|| call!(first(&table))), 7);
//! ```
//!
//! ### P2 and P3: what C keeps must be pinned, and released before it dies
//!
//! ```
//! use ffi_check::{capture, retain, release, Managed, Pinned, ViolationKind};
//! let lent = Managed::new(1u64);
//! let (_, v) = capture(|| retain(lent.as_ptr()));   // C says "I keep this"
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(v[0].kind(), ViolationKind::Retained);
//! # }
//! # release(lent.as_ptr());
//! let kept = Pinned::new(2u64);
//! retain(kept.as_ptr());                              // fine: pinned
//! release(kept.as_ptr());                             // and let go before the drop
//! ```
//!
//! ### P4: callbacks return C memory or pinned memory
//!
//! ```
//! use ffi_check::{callback, CBox};
//! extern "C" fn make_greeting() -> *const u8 {
//!     callback!({ CBox::from_slice(b"hi\0").into_raw() as *const u8 })
//! }
//! let p = make_greeting();
//! // SAFETY: p is a malloc'd block C now owns.
//! unsafe { ffi_check::c_free(p as *mut _) };
//! ```
//!
//! ### P5: what Rust stores in C memory is pinned
//!
//! ```
//! use ffi_check::{capture, CBox, Managed, ViolationKind};
//! let mut slot = CBox::new(std::ptr::null::<u32>());
//! let value = Managed::new(5u32);
//! let (_, v) = capture(|| slot.set(value.as_ptr()));
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(v[0].kind(), ViolationKind::StoredUnpinned);
//! # }
//! slot.set(std::ptr::null()); // let go before `value` drops
//! ```
//!
//! ### P6: a pin must end
//!
//! ```
//! use ffi_check::{LeakCheck, Managed, Pinner};
//! let m = Managed::new(0u8);
//! let scope = LeakCheck::start();
//! let mut pinner = Pinner::new();
//! pinner.pin(&m);
//! std::mem::forget(pinner);                 // the mistake
//! let report = scope.finish();
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(report.leaked_pins().len(), 1);
//! # }
//! # std::mem::forget(m);
//! ```
//!
//! ### C1 and C2: free C memory once, with its own deallocator
//!
//! ```
//! use ffi_check::{c_free, c_malloc, capture, ViolationKind};
//! # if !ffi_check::COMPILED_IN { return; } // compiled out, nothing stops the real double free
//! let p = c_malloc(32);
//! // SAFETY: p came from c_malloc; the second free is the mistake.
//! let (_, v) = capture(|| unsafe { c_free(p); c_free(p) });
//! assert_eq!(v[0].kind(), ViolationKind::DoubleFree);   // and it was not freed twice
//! ```
//!
//! ### C3: nothing leaks unnoticed
//!
//! ```
//! let scope = ffi_check::LeakCheck::start();
//! let p = ffi_check::c_malloc(100);
//! let report = scope.finish();
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(report.leaked_bytes(), 100);
//! # }
//! # // SAFETY: p came from c_malloc and is freed once.
//! # unsafe { ffi_check::c_free(p) };
//! ```
//!
//! ### X1 and X2: explicit, lossless conversions
//!
//! ```
//! use std::os::raw::c_int;
//! let len: usize = 1 << 20;
//! let n: c_int = ffi_check::to_c(len);              // checked: fits
//! assert_eq!(n, 1 << 20);
//! assert!(ffi_check::try_to_c::<usize, c_int>(usize::MAX).is_err());
//! let s = ffi_check::CBox::from_str("no NUL inside");
//! // SAFETY: s is a live C string.
//! assert_eq!(unsafe { ffi_check::str_from_c(s.as_ptr()) }, "no NUL inside");
//! ```
//!
//! ### Mode 2: what C keeps, found by scanning
//!
//! With `FFI_CHECK=2` ([`Mode::Full`]) the tracked C memory and the
//! registered roots ([`add_root`], [`watch_library`], `ffi_check_add_root`
//! in C) are scanned before and after each outermost [`call!`], and when
//! memory is unpinned or dropped: C keeping a lent pointer is `Retained`
//! without C saying so, a raw store by Rust is `StoredUnpinned`, and
//! dropping what C still points to is `FreedWhileRetained`.
//! [`scan_c_memory`] runs the scan on demand.
//!
//! ```
//! use ffi_check::{call, capture, Managed, Mode, ViolationKind};
//! extern "C" fn keep_in(table: *mut *const u64, p: *const u64) {
//!     // SAFETY: the caller lends a table with room for one pointer.
//!     unsafe { *table = p };                        // C keeps what it was lent
//! }
//! # let before = ffi_check::mode();
//! ffi_check::set_mode(Mode::Full);
//! let table = ffi_check::c_malloc(8).cast::<*const u64>(); // tracked C memory
//! let lent = Managed::new(1u64);
//! let (_, v) = capture(|| call!(keep_in(table, &lent)));
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(v[0].kind(), ViolationKind::Retained);
//! # }
//! // SAFETY: the table is C memory owned here; emptied, then freed once.
//! unsafe { *table = std::ptr::null(); ffi_check::c_free(table.cast()) };
//! # ffi_check::set_mode(before);
//! ```
//!
//! ## Pointer maps: lend a struct by its pointer words
//!
//! A type that implements [`PointerMap`] (derive it with the helper crate
//! `ffi-check-derive`) says where its pointers are: `call!` then reads only
//! those words when it lends the type, and never reads a type whose map is
//! empty, as Go's check reads a type's pointer bitmap. Undeclared types are
//! scanned word by word.
//!
//! ```
//! use ffi_check::{call, capture, Managed, PointerMap, PointerWords, ViolationKind};
//! #[repr(C)]
//! struct Job { id: usize, data: *const u64 }
//! // SAFETY: `data` is the one pointer (the derive writes this).
//! unsafe impl PointerMap for Job {
//!     const POINTERS: PointerWords =
//!         PointerWords::NONE.field(std::mem::offset_of!(Job, data), PointerWords::WORD);
//! }
//! extern "C" fn run(job: *const Job) -> usize {
//!     // SAFETY: the caller lends one Job.
//!     unsafe { (*job).id }
//! }
//! let value = Managed::new(7u64);
//! // `id` holds an address, but it is a number: not read.
//! let job = Managed::new(Job { id: value.addr(), data: std::ptr::null() });
//! assert_eq!(ffi_check::assert_clean(|| call!(run(&job))), value.addr());
//! // `data` is a pointer: an unpinned target is reported.
//! let job = Managed::new(Job { id: 1, data: value.as_ptr() });
//! let (_, v) = capture(|| call!(run(&job)));
//! # if ffi_check::COMPILED_IN {
//! assert_eq!(v[0].kind(), ViolationKind::UnpinnedNested);
//! # }
//! ```
//!
//! ## Raw-pointer code, and libraries with their own allocator
//!
//! Code that passes `v.as_ptr()` or `CString::into_raw()` to C is checked
//! without wrappers once [`TrackingAllocator`] is the global allocator: every
//! Rust heap block is then managed memory, a pointer into a freed block is
//! `UseAfterFree`, C's `free` of a Rust block and Rust's free of C memory
//! are `InvalidFree`. Libraries that let the host supply the allocator
//! (zlib's `zalloc`/`zfree`, SQLite's `SQLITE_CONFIG_MALLOC`) take
//! [`hooks`]' functions, so all their internal memory is tracked C memory
//! attributed to the `call!` that allocated it.
//!
//! Libraries that do not (plain C: `malloc`, `free`, pointers in its own
//! statics) are seen through the C allocator itself with the `interpose`
//! feature: ffi-check then defines `malloc`, `free`, `realloc` and the rest
//! in the final binary, forwarding to glibc's, so C's double frees, its
//! `free()` of Rust blocks or of wild pointers (never carried out), handles
//! used after C destroyed them, and C blocks no pointer reaches any more
//! (leaks, found by reachability as LeakSanitizer finds them) are reported
//! with the `call!` they happened in. Compiled out, the feature defines
//! nothing.
//!
//! ## Modes and environment
//!
//! | variable | values | effect |
//! |----------|--------|--------|
//! | `FFI_CHECK` | `0`, `1` (default), `2` | [`Mode::Off`], [`Mode::Check`], [`Mode::Full`] |
//! | `FFI_CHECK_ACTION` | `panic` (default), `abort`, `log` | what a violation does ([`Action`]) |
//! | `FFI_CHECK_BACKTRACE` | `0`, `1` | backtraces at every allocation, pin and free (default: on in mode 2; mode 1 records `file:line:col` sites and a backtrace of each violation) |
//! | `FFI_CHECK_LEAKS` | `1` | print the leak report at exit |
//! | `FFI_CHECK_LOG` | a path | append every violation as one JSON line |
//! | `FFI_CHECK_STRICT` | `1` | Go's discipline for plain heap blocks too ([`strict`]) |
//!
//! A malformed value is reported once on stderr and the default is used.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

// The modules stand on floors; each uses only the floors below it (where a
// low floor must set off something high, the high one registers itself):
//
// - ground: `site` (call sites), `mode` (configuration), `stderr`,
//   `bookkeeping` (the checker's own allocations and re-entrancy guard),
//   `stats` (counters), `family` (allocator families), `frame` (the call a
//   thread is in), `probe` (safe reads of memory the checker has no record
//   of), `segments` (the loaded objects' segments: where statics live),
//   `stackdepot` (event backtraces, stored once as return addresses),
//   `unwind` (the stack walk: cached unwind rules per return address),
//   `writewatch` (the pages written since the last scan, from the kernel),
//   `pointer_map` (where a type's pointers are: layouts only);
// - the memory model: `heap` (the tracking allocator's block headers, page
//   map and quarantine rings), then `registry` (every tracked region);
// - `report`: violations, their text, and what one does; it describes a
//   region by asking the memory model;
// - `scan` (pointer scans), `guard` (mode-2 guard bytes), `convert` (X1,
//   X2);
// - the rules' front ends: `cbox` (C memory, C1, C2), `roots` (mode-2 roots,
//   P2 scans), `managed`, `pin` (P2, P3, P6), `leak` (C3);
// - the boundary and the entry points: `call` (`call!`, P1, P4), `alloc`
//   (the `GlobalAlloc` front), `capi` (the C API), `hooks`, `interpose`
//   (the C allocator's entry points, feature `interpose`);
// - `fork`: the `fork` handlers, which take every module's locks (each
//   module lends its own) in the one order the crate's locks nest in.

mod alloc;
mod bookkeeping;
mod call;
mod capi;
mod cbox;
mod convert;
mod family;
#[cfg(target_os = "linux")]
mod fork;
mod frame;
mod guard;
mod heap;
// The C allocator's entry points (`malloc`, `free`, ...): defined only with
// the feature and the checks compiled in, so a release build without
// `always` leaves glibc's allocator untouched.
pub mod hooks;
#[cfg(all(
    feature = "interpose",
    target_os = "linux",
    any(debug_assertions, feature = "always")
))]
mod interpose;
mod leak;
mod managed;
mod mode;
mod pin;
mod pointer_map;
mod probe;
#[cfg(feature = "proptest")]
#[path = "proptest_support.rs"]
pub mod proptest;
mod registry;
mod report;
mod roots;
mod scan;
mod segments;
mod site;
mod spin;
mod stackdepot;
mod stats;
mod stderr;
mod unwind;
mod writewatch;

pub use alloc::TrackingAllocator;
pub use call::{unchecked, CArg, CReturn, Unchecked};
pub use cbox::{
    c_adopt, c_adopt_with, c_free, c_free_with, c_malloc, intended_leak, CBox, Deallocator,
};
pub use convert::{bytes_from_c, slice_from_c, str_from_c, string_from_c, to_c, try_to_c, ToC};
pub use heap::HandedToC;
pub use leak::{assert_clean, leak_report, LeakCheck, LeakGroup, LeakReport, LeakedPin};
pub use managed::Managed;
pub use mode::{
    action, mode, set_action, set_event_backtraces, set_mode, set_strict, strict, strictly, Action,
    Mode, COMPILED_IN,
};
pub use pin::{release, retain, Pinned, Pinner};
pub use pointer_map::{PointerMap, PointerWords};
pub use registry::{RegionKind, RegionState, REGION_RECORD_BYTES};
pub use report::{capture, stats, ReportRegion, Stats, Violation, ViolationKind};
pub use roots::{add_root, remove_root, scan_c_memory, watch_library};
pub use scan::PointerFree;
pub use site::Site;

/// Implementation details of the macros. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::call::{
        checking_mode, enclosing_fn, run_callback, ArgWrap, Call, ViaCArg, ViaFnItem, ViaRef,
    };
    pub use crate::frame::Frame;
    pub use crate::pointer_map::{
        FreeMut, FreeRef, FreeWrapped, FreeWrappedMut, MapMut, MapRef, MapWrapped, MapWrappedMut,
        NoMap, Probe,
    };

    /// For the registry benchmarks: whether a tracked region contains `addr`.
    pub fn registry_contains(addr: usize) -> bool {
        crate::registry::lookup(addr).is_some()
    }

    /// For the registry benchmarks: forgets the region starting at `addr`.
    pub fn registry_forget(addr: usize) {
        crate::registry::remove(addr);
    }

    /// For the mode-2 benchmarks: an event backtrace as mode 2 takes one
    /// (raw return addresses, stored once in the stack depot), unresolved.
    /// Returns whether one was stored.
    pub fn capture_event_stack() -> bool {
        crate::stackdepot::capture().is_some()
    }

    /// For the mode-2 benchmarks: an event backtrace as mode 2 took one
    /// before the stack depot (`backtrace::Backtrace::new_unresolved`).
    pub fn capture_unresolved_backtrace() -> usize {
        crate::bookkeeping::capture_backtrace().frames().len()
    }

    /// For the mode-2 benchmarks: how event stacks are walked, and how many
    /// walks the platform unwinder took over.
    pub fn stack_walker() -> String {
        crate::stackdepot::walker()
    }

    /// For the capture benchmarks: an event backtrace stored in the stack
    /// depot as it was before the cached unwind rules (every stack walked
    /// by the platform unwinder). Returns whether one was stored.
    pub fn capture_event_stack_platform() -> bool {
        crate::stackdepot::capture_with_platform_unwinder().is_some()
    }

    /// For the capture benchmarks: makes every event backtrace walk with
    /// the platform unwinder, as before the cached unwind rules (`true`), or
    /// with the cached rules again (`false`, the default).
    pub fn set_platform_unwinder(on: bool) {
        crate::stackdepot::set_platform_only(on);
    }

    /// For the capture benchmarks: the stack walk alone (cached unwind
    /// rules, no depot), into `ips`; returns how many addresses it wrote.
    #[inline(never)]
    pub fn walk_stack(ips: &mut [usize]) -> usize {
        crate::unwind::walk(ips, 0)
    }

    /// For the unwinder's tests: the return addresses of the caller's
    /// callers (the first is where the caller returns to), by the cached
    /// unwind rules only; `None` where a frame has none.
    #[inline(never)]
    pub fn fast_stack(ips: &mut [usize]) -> Option<usize> {
        crate::unwind::walk_fast(ips, 1)
    }

    /// For the unwinder's tests: the same addresses as [`fast_stack`], by
    /// the platform unwinder (`_Unwind_Backtrace`).
    #[inline(never)]
    pub fn platform_stack(ips: &mut [usize]) -> usize {
        crate::unwind::platform(ips, 1)
    }

    /// For the unwinder's tests: how many stack walks so far met a frame
    /// without a cached rule and were done by the platform unwinder.
    pub fn stack_walk_fallbacks() -> usize {
        crate::unwind::fallbacks()
    }

    /// For the mode-2 benchmarks: turns the write watch off, or lets the
    /// next scan start it again (where the kernel has it).
    pub fn set_write_watch(on: bool) {
        crate::writewatch::set_enabled(on);
    }

    /// For the mode-2 benchmarks: the bytes the stack depot holds.
    pub fn stack_depot_bytes() -> usize {
        crate::stackdepot::bytes()
    }
}

/// Makes a checked Rust→C call: `call!(f(a, b, …))`.
///
/// Each argument goes through [`CArg`], which converts it to the type `f`
/// takes and checks it: memory lent to C holds no pointer to unpinned managed
/// memory (P1), no pointer into freed memory crosses (C2). The call site and
/// the callee's name go into any report, and into what C does during the
/// call (a retain names the call that lent the pointer).
///
/// The macro calls `f` as written, so an `unsafe` callee needs an `unsafe`
/// block around the macro. Compiled out, it is the plain call.
///
/// ```
/// use ffi_check::{call, Managed};
/// extern "C" fn sum(p: *const u32, n: usize) -> u32 {
///     // SAFETY: the caller lends n readable u32s.
///     unsafe { std::slice::from_raw_parts(p, n) }.iter().sum()
/// }
/// let v = Managed::from_vec(vec![1u32, 2, 3]);
/// assert_eq!(call!(sum(&v, v.len())), 6);
/// ```
///
/// Arguments can also be plain references (`&cfg`, `&mut out_len`), raw
/// pointers (looked through by their pointee's type when they point into the
/// live stack or a static), and function items, bare or in `Some(..)`, where
/// C takes a callback:
///
/// ```
/// use std::os::raw::c_int;
/// type Visit = unsafe extern "C" fn(c_int) -> c_int;
/// unsafe extern "C" fn double(x: c_int) -> c_int {
///     ffi_check::callback!({ 2 * x })
/// }
/// extern "C" fn apply(f: Option<Visit>, g: Visit, x: c_int) -> c_int {
///     // SAFETY: both are callbacks of the right type.
///     unsafe { f.map_or(x, |f| f(x)) + g(x) }
/// }
/// assert_eq!(ffi_check::call!(apply(Some(double), double, 3)), 12);
/// ```
///
/// An argument with no conversion to the parameter's type does not compile
/// (a struct by value goes through [`unchecked`]):
///
/// ```compile_fail
/// #[repr(C)] #[derive(Clone, Copy)] struct Point { x: i32, y: i32 }
/// extern "C" fn norm1(p: Point) -> i32 { p.x.abs() + p.y.abs() }
/// ffi_check::call!(norm1(Point { x: 3, y: -4 }));
/// ```
#[macro_export]
macro_rules! call {
    ($($f:ident)::+ ( $($args:tt)* )) => {
        // One relaxed load decides, and its mode is kept for the call (mode
        // 2 scans around an outermost one); compiled out, the mode is a
        // constant 0 and only the plain call remains.
        match $crate::__private::checking_mode() {
            0 => {
                #[allow(unused_imports)]
                use $crate::__private::{ViaCArg as _, ViaFnItem as _, ViaRef as _};
                $crate::__call_args!(@pass ($($f)::+) [] $($args)*)
            }
            __ffi_check_mode => {
                #[allow(unused_imports)]
                use $crate::__private::{ViaCArg as _, ViaFnItem as _, ViaRef as _};
                #[allow(unused_imports)]
                use $crate::__private::{
                    FreeMut as _, FreeRef as _, FreeWrapped as _, FreeWrappedMut as _,
                    MapMut as _, MapRef as _, MapWrapped as _, MapWrappedMut as _, NoMap as _,
                };
                let __ffi_check_frame = $crate::__private::Frame::new(stringify!($($f)::+));
                let mut __ffi_check_call = $crate::__private::Call::new(&__ffi_check_frame);
                let __ffi_check_call = &mut __ffi_check_call;
                __ffi_check_call.enter(__ffi_check_mode);
                $crate::__call_args!(@lower ($($f)::+) __ffi_check_call [] $($args)*)
            }
        }
    };
}

/// The arguments of [`call!`], one at a time. `Some(f)` with a path inside
/// is passed as it is written, so that the callee's parameter type turns a
/// function item into the function pointer C takes; every other argument
/// goes through [`CArg`] (or the plain-reference or function-item paths).
#[doc(hidden)]
#[macro_export]
macro_rules! __call_args {
    (@lower ($($f:tt)*) $c:ident [$($done:tt)*]) => {
        $($f)*( $($done)* )
    };
    (@lower $f:tt $c:ident [$($done:tt)*] Some($g:path) $(, $($rest:tt)*)?) => {
        $crate::__call_args!(@lower $f $c
            [$($done)* { $c.plain(); ::core::option::Option::Some($g) },] $($($rest)*)?)
    };
    (@lower $f:tt $c:ident [$($done:tt)*] $a:expr $(, $($rest:tt)*)?) => {
        $crate::__call_args!(@lower $f $c
            [$($done)*
                // The argument's pointer map, if its type declares one
                // (chosen at compile time), then its conversion and check.
                // A `match` rather than a `let` keeps the argument's
                // temporaries alive until the call returns, as in the plain
                // call.
                match $crate::__private::ArgWrap($a) {
                    #[allow(unused_mut)]
                    mut __ffi_check_arg => {
                        // Stored only when there is one (known at compile
                        // time): lending consumes it.
                        if let ::core::option::Option::Some(__ffi_check_map) =
                            (&&&$crate::__private::Probe::of(&__ffi_check_arg.0)).lent_map()
                        {
                            $c.map_next(__ffi_check_map);
                        }
                        __ffi_check_arg.lower_arg($c)
                    }
                },
            ] $($($rest)*)?)
    };
    (@pass ($($f:tt)*) [$($done:tt)*]) => {
        $($f)*( $($done)* )
    };
    (@pass $f:tt [$($done:tt)*] Some($g:path) $(, $($rest:tt)*)?) => {
        $crate::__call_args!(@pass $f [$($done)* ::core::option::Option::Some($g),] $($($rest)*)?)
    };
    (@pass $f:tt [$($done:tt)*] $a:expr $(, $($rest:tt)*)?) => {
        $crate::__call_args!(@pass $f
            [$($done)* $crate::__private::ArgWrap($a).pass_arg(),] $($($rest)*)?)
    };
}

/// Wraps the body of a Rust function that C calls: `callback!({ … })`.
///
/// Inside the body a violation with the panic action aborts after its report
/// (a panic may not unwind into C), a panic of the body itself aborts with a
/// clear message, and the returned value is checked against rule P4 (no
/// pointer to unpinned managed memory goes back to C). The callback's name in
/// reports is the enclosing function's.
///
/// ```
/// use std::os::raw::{c_int, c_void};
/// unsafe extern "C" fn count(user: *mut c_void, _item: c_int) -> c_int {
///     ffi_check::callback!({
///         // SAFETY: C passes back the `&mut usize` it was given as user data.
///         unsafe { *(user as *mut usize) += 1 };
///         0
///     })
/// }
/// let mut n = 0usize;
/// // SAFETY: `count` is called the way C would call it.
/// unsafe { count(&mut n as *mut usize as *mut c_void, 5) };
/// assert_eq!(n, 1);
/// ```
#[macro_export]
macro_rules! callback {
    ($body:block) => {{
        fn __ffi_check_here() {}
        let __ffi_check_name =
            $crate::__private::enclosing_fn(::std::any::type_name_of_val(&__ffi_check_here));
        $crate::__private::run_callback(__ffi_check_name, move || $body)
    }};
}
