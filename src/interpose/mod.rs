//! The C allocator, interposed (cargo feature `interpose`, SPEC §6).
//!
//! With the feature on and the checks compiled in, this module defines
//! `malloc`, `calloc`, `realloc`, `reallocarray`, `free`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc` and `malloc_usable_size`
//! in the final binary, as jemalloc's and mimalloc's override features do.
//! The dynamic linker binds every C library of the process to them (glibc
//! documents the replacement, and its own `strdup`, `getline`, `asprintf`
//! allocate through them), and they forward to glibc's allocator
//! (`__libc_malloc` and friends) with a header of ffi-check's in front of
//! each block (`heap`'s C blocks). So, with nothing on the C side:
//!
//! - every C heap block is tracked C memory of family `malloc`, attributed
//!   to the `call!` the thread is in;
//! - C1: C's own double free is `DoubleFree` naming both frees; C's `free`
//!   of a Rust heap block (the tracking allocator's), of an interior
//!   pointer, of the stack, static data, a mapping or a wild address is
//!   `InvalidFree`; and the offending free is never carried out;
//! - C2: a freed C block waits in a quarantine, so a pointer to it or
//!   into it that crosses a `call!` is `UseAfterFree` naming the free
//!   (`heap`'s walk back to the nearest header);
//! - C3: leaks are found by reachability (`heap`'s leak scan);
//! - a `CBox` (or any region the registry knows) freed or reallocated by C
//!   through its user pointer is that region's free: its record is marked
//!   freed (or moves with the block), nothing stale remains.
//!
//! Blocks that reach `free` without a header of ours were made before the
//! interposed allocator was in use (the dynamic loader's early ones):
//! judged by the registry and by glibc's chunk plausibility
//! (`cbox::check_free`), they are forwarded to glibc.
//!
//! The fast paths take no lock but the quarantine shard's on a free, read
//! the mode with one relaxed load, and never read the environment (they may
//! run before `main`, or under glibc's or Rust's environment lock). A
//! violation is reported from the cold paths under the bookkeeping guard, as
//! inside a callback: a panic action aborts after the report instead of
//! unwinding into C.

use std::ffi::c_void;

use crate::bookkeeping::{bookkeeping, guarded};
use crate::cbox::{check_free, Verdict};
use crate::family::FAMILY_MALLOC;
use crate::heap::{self, c_state, CBlock};
use crate::registry::{self, NewRegion, RegionKind, Release};
use crate::report::ViolationKind;
use crate::report::{c_block_detail, emit, enter_callback, msg, ReportRegion, Violation};
use crate::site::Site;

/// Checks on, without ever reading the environment (as the tracking
/// allocator's test).
#[inline(always)]
fn checks_on_raw() -> bool {
    crate::mode::raw_mode() != 0
}

const MIN_ALIGN: usize = 16;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}

fn set_errno(e: i32) {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = e };
}

#[inline(always)]
fn alloc(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    let p = heap::c_alloc(size, align, zeroed);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

// ---- the entry points ---------------------------------------------------------

/// `malloc`, interposed: a block of C memory attributed to the current call.
///
/// # Safety
/// As C's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc(size, MIN_ALIGN, false)
}

/// `calloc`, interposed.
///
/// # Safety
/// As C's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => alloc(total, MIN_ALIGN, true),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `free`, interposed: C1 and C2 for every C free.
///
/// # Safety
/// As C's `free` (an invalid pointer is reported and left alone).
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    let a = p as usize;
    if a == 0 {
        return;
    }
    if let Some(b) = heap::c_header(a) {
        if b.state & (c_state::INTERNAL | c_state::RUST) != 0 {
            // SAFETY: the checker's own block, or the inner block of a Rust
            // heap block the tracking allocator gives back.
            return unsafe { heap::c_release(a) };
        }
        if b.state & (c_state::FREED | c_state::REGISTERED) == 0 {
            if !checks_on_raw() || guarded() {
                // SAFETY: a live C block its owner is done with.
                return unsafe { heap::c_release(a) };
            }
            let site = crate::frame::current_site();
            if heap::c_mark_freed(a, b.size, site) {
                // SAFETY: now FREED; its owner is done with it.
                return unsafe { heap::c_quarantine(a, b.size) };
            }
        }
    }
    free_slow(a);
}

/// `realloc`, interposed: with the checks on a C block always moves (a new
/// block, a copy, the old one to the quarantine), so a pointer kept into
/// the old block is a use after free the checker sees.
///
/// # Safety
/// As C's `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    let a = p as usize;
    if a == 0 {
        return alloc(size, MIN_ALIGN, false);
    }
    if let Some(b) = heap::c_header(a) {
        let plain = b.state & (c_state::INTERNAL | c_state::RUST) != 0
            || (b.state & (c_state::FREED | c_state::REGISTERED) == 0
                && (!checks_on_raw() || guarded()));
        if plain && b.align <= MIN_ALIGN {
            // SAFETY: a live block of ours, owned by the caller.
            let q = unsafe { heap::c_resize(a, size) };
            if q.is_null() {
                set_errno(libc::ENOMEM);
            }
            return q;
        }
        if b.state & (c_state::FREED | c_state::REGISTERED) == 0 && !plain {
            let q = alloc(size, MIN_ALIGN, false);
            if q.is_null() {
                return q;
            }
            // SAFETY: both blocks hold the bytes copied and do not overlap;
            // the old block is then freed as `free` would.
            unsafe {
                std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), b.size.min(size));
                free(p);
            }
            return q;
        }
    }
    realloc_slow(a, size)
}

/// `reallocarray`, interposed.
///
/// # Safety
/// As C's `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `posix_memalign`, interposed.
///
/// # Safety
/// As C's `posix_memalign`: `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || align % std::mem::size_of::<usize>() != 0 {
        return libc::EINVAL;
    }
    let p = heap::c_alloc(size, align.max(MIN_ALIGN), false);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a writable pointer.
    unsafe { *out = p };
    0
}

/// `aligned_alloc`, interposed.
///
/// # Safety
/// As C's `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    alloc(size, align.max(MIN_ALIGN), false)
}

/// `memalign`, interposed (glibc rounds an alignment that is not a power of
/// two up to one).
///
/// # Safety
/// As C's `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    let Some(align) = align.max(MIN_ALIGN).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    };
    alloc(size, align, false)
}

/// `valloc`, interposed.
///
/// # Safety
/// As C's `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc(size, page_size(), false)
}

/// `pvalloc`, interposed.
///
/// # Safety
/// As C's `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    let Some(rounded) = size.max(1).checked_next_multiple_of(page) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    alloc(rounded, page, false)
}

/// `malloc_usable_size`, interposed: the size asked for (a block of ours
/// holds no more that the program may use).
///
/// # Safety
/// As C's `malloc_usable_size`.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    let a = p as usize;
    if a == 0 {
        return 0;
    }
    match heap::c_header(a) {
        Some(b) => b.size,
        // SAFETY: a block without our header is glibc's own.
        None if crate::probe::not_a_malloc_block(a).is_none() => unsafe {
            heap::foreign_usable_size(a)
        },
        None => 0,
    }
}

// ---- the cold paths --------------------------------------------------------------

/// The registry's way of giving a registered C block back when its record
/// leaves the quarantine: straight to glibc (its free was judged already).
unsafe extern "C" fn release_registered(p: *mut c_void) {
    let a = p as usize;
    match heap::c_header(a) {
        // SAFETY: the registry's record was this block's; it is released
        // once, when the record leaves the quarantine.
        Some(_) => unsafe { heap::c_release(a) },
        // SAFETY: as above, for a block without our header.
        None => unsafe { free(p) },
    }
}

/// Every free that is not a live, unregistered C block of ours.
#[cold]
#[inline(never)]
fn free_slow(a: usize) {
    if crate::bookkeeping::deallocating(a) {
        // A destroy function the checker called, freeing the block whose
        // free it just judged: given back now (the record says released).
        if heap::c_header(a).is_some_and(|b| !b.freed()) {
            // SAFETY: the block's owner is done with it; judged once.
            return unsafe { heap::c_release(a) };
        }
    }
    if guarded() || !checks_on_raw() {
        return free_unchecked(a);
    }
    let _g = bookkeeping();
    let _c = enter_callback();
    let site = crate::frame::current_site();
    match heap::c_header(a) {
        Some(b) if b.freed() => report_double_free(b, site, "free"),
        Some(b) if b.registered() => free_registered(a, b, site),
        Some(b) => {
            // A race with another free of the same block: it won.
            report_double_free(b, site, "free")
        }
        None => free_unknown(a, site),
    }
}

/// A free with the checks off, or by the checker itself: nothing is
/// judged, only the right memory is given back.
fn free_unchecked(a: usize) {
    match heap::c_header(a) {
        // SAFETY: a live block of ours (a freed one is left alone: it waits
        // in the quarantine, and giving it back twice would corrupt glibc).
        Some(b) if !b.freed() => {
            if b.registered() && crate::mode::COMPILED_IN {
                registry::remove(a);
            }
            // SAFETY: as above.
            unsafe { heap::c_release(a) }
        }
        Some(_) => {}
        None => {
            if crate::mode::COMPILED_IN && !registry::nothing_live() {
                registry::remove(a);
            }
            if crate::probe::not_a_malloc_block(a).is_none() {
                // SAFETY: a plausible glibc block without our header.
                unsafe { heap::foreign_free(a as *mut c_void) };
            }
        }
    }
}

/// C freeing a block the registry knows (a `CBox`, `c_malloc`,
/// `CBox::into_raw` handed to C): the registry's free.
fn free_registered(a: usize, b: CBlock, site: Option<Site>) {
    match check_free(a, FAMILY_MALLOC, "free", site) {
        Verdict::Skip => {}
        Verdict::Tracked(id) => {
            registry::mark_freed(a, Some(id), site, Release::C(release_registered));
        }
        Verdict::Untracked => {
            // The registry let go of it: an ordinary C block.
            if heap::c_mark_freed(a, b.size, site) {
                // SAFETY: now FREED; its owner is done with it.
                unsafe { heap::c_quarantine(a, b.size) };
            }
        }
    }
}

/// A free of a pointer without a header of ours: a Rust heap block, a
/// pointer into a C block, a region only the registry knows (a guarded
/// `CBox`), a foreign glibc block, or no heap block at all.
fn free_unknown(a: usize, site: Option<Site>) {
    if crate::heap::block_at(a).is_none() && registry::lookup_for_free(a).is_none() {
        if let Some(b) = heap::c_block_containing(a) {
            return report_interior(a, b, site, "free");
        }
    }
    let verdict = check_free(a, FAMILY_MALLOC, "free", site);
    // SAFETY: the verdict is the checks' (Skip does nothing); a tracked
    // region is freed through the registry, a foreign plausible block goes
    // to glibc (through `free_checked`'s `free`, which lands in
    // `free_unchecked` under the bookkeeping guard).
    unsafe { crate::cbox::free_checked(a as *mut c_void, verdict, &crate::Deallocator::LIBC, site) }
}

fn report_double_free(b: CBlock, site: Option<Site>, api: &'static str) {
    let during = |s: Option<Site>| {
        s.map_or_else(
            || "outside any checked call".to_owned(),
            |s| format!("during the call at {s}"),
        )
    };
    emit(
        Violation::new(
            ViolationKind::DoubleFree,
            format!("{} (`{api}`)", msg::DOUBLE_FREE),
        )
        .note(format!("first freed {}", during(b.free_site())))
        .note(format!("freed again {}", during(site)))
        .note("the second free is not carried out".into())
        .with_site(site)
        .region(ReportRegion::new("freed twice", c_block_detail(b))),
    );
}

fn report_interior(a: usize, b: CBlock, site: Option<Site>, api: &'static str) {
    let v = if b.freed() {
        Violation::new(
            ViolationKind::UseAfterFree,
            format!("{api} of a pointer into freed memory (`{api}`)"),
        )
        .region(ReportRegion::new("freed region", c_block_detail(b)))
    } else {
        Violation::new(
            ViolationKind::InvalidFree,
            format!("{} (`{api}`)", msg::FREE_INTERIOR),
        )
        .region(ReportRegion::new(
            "freed pointer is inside",
            c_block_detail(b),
        ))
    };
    emit(
        v.note(format!(
            "the pointer is {} bytes into a C block of {} bytes",
            a - b.start,
            b.size
        ))
        .note("the free is not carried out: passing it on would corrupt the heap or crash".into())
        .with_site(site),
    );
}

/// Every `realloc` that is not of a live, unregistered C block of ours
/// with the checks on.
#[cold]
#[inline(never)]
fn realloc_slow(a: usize, size: usize) -> *mut c_void {
    let checked = !guarded() && checks_on_raw();
    let site = crate::frame::current_site();
    let header = heap::c_header(a);
    if let Some(b) = header {
        if b.freed() {
            if checked {
                let _g = bookkeeping();
                let _c = enter_callback();
                report_double_free(b, site, "realloc");
            }
            return std::ptr::null_mut();
        }
        if !b.registered() || !checked {
            // A block of ours that no record names (or the checks are off):
            // a new block of the same domain and alignment, a copy, a free.
            let q = alloc(size, b.align.max(MIN_ALIGN), false);
            if !q.is_null() {
                // SAFETY: both blocks hold the bytes copied; the old block
                // is freed once and not used again.
                unsafe {
                    std::ptr::copy_nonoverlapping(a as *const u8, q.cast::<u8>(), b.size.min(size));
                    free(a as *mut c_void);
                }
            }
            return q;
        }
    }
    if !checked {
        return realloc_foreign(a, size);
    }
    let g = bookkeeping();
    let _c = enter_callback();
    if header.is_none() && heap::block_at(a).is_none() && registry::lookup_for_free(a).is_none() {
        if let Some(b) = heap::c_block_containing(a) {
            report_interior(a, b, site, "realloc");
            return std::ptr::null_mut();
        }
    }
    // The free checks without the free: a realloc of freed, managed,
    // interior or foreign memory is the same mistake as a free of it.
    // Refused, it returns NULL and leaves the block alone, as a failed
    // realloc does.
    match check_free(a, FAMILY_MALLOC, "realloc", site) {
        Verdict::Skip => std::ptr::null_mut(),
        Verdict::Untracked => {
            drop(g);
            match header {
                Some(b) => {
                    let q = alloc(size, MIN_ALIGN, false);
                    if !q.is_null() {
                        // SAFETY: as above.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                a as *const u8,
                                q.cast::<u8>(),
                                b.size.min(size),
                            );
                            free(a as *mut c_void);
                        }
                    }
                    q
                }
                None => realloc_foreign(a, size),
            }
        }
        Verdict::Tracked(id) => {
            let (Some(info), Some(detail)) = (registry::lookup(a), registry::detail(a)) else {
                return std::ptr::null_mut();
            };
            drop(g);
            let q = alloc(size, MIN_ALIGN, false);
            if q.is_null() {
                return q;
            }
            // SAFETY: the region holds its recorded size; the new block
            // `size` bytes; they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(a as *const u8, q.cast::<u8>(), info.size.min(size))
            };
            let _g = bookkeeping();
            // The record moves with the block: the old one is freed (and its
            // memory given back when it leaves the quarantine), the new one
            // keeps its family and flags.
            let release = if header.is_some() {
                release_registered
            } else {
                crate::guard::real_free(a, free, site)
            };
            registry::mark_freed(a, Some(id), site, Release::C(release));
            registry::insert(NewRegion {
                start: q as usize,
                size,
                kind: RegionKind::C,
                family: info.family,
                flags: info.flags & !registry::flags::RELEASED,
                site: site.or(detail.alloc_site),
                type_name: None,
            });
            q
        }
    }
}

/// `realloc` of a glibc block without our header (made before the
/// interposed allocator was in use): it moves into a block of ours.
fn realloc_foreign(a: usize, size: usize) -> *mut c_void {
    if crate::probe::not_a_malloc_block(a).is_some() {
        return std::ptr::null_mut();
    }
    // SAFETY: a plausible glibc block without our header.
    let keep = unsafe { heap::foreign_usable_size(a) };
    let q = alloc(size, MIN_ALIGN, false);
    if !q.is_null() {
        // SAFETY: glibc's block holds `keep` bytes; it is given back once.
        unsafe {
            std::ptr::copy_nonoverlapping(a as *const u8, q.cast::<u8>(), keep.min(size));
            heap::foreign_free(a as *mut c_void);
        }
    }
    q
}
