//! The raw API: [`c_malloc`], [`c_free`], [`c_adopt`] and their
//! deallocator-aware forms, [`intended_leak`], and the registration every
//! C block made or adopted by the crate goes through.

use std::ffi::c_void;

use super::free::never_allocated;
use super::{free_through_checks, Deallocator};
use crate::family::FAMILY_MALLOC;
use crate::mode::checks_on;
use crate::registry::{self, flags, NewRegion, RegionKind, RegionState};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::site::Site;

/// Registers a block the crate just allocated (no record can be
/// trustworthy about a fresh block: it replaces any).
pub(super) fn track_new(
    ptr: usize,
    size: usize,
    site: Site,
    type_name: Option<fn() -> &'static str>,
) {
    if ptr == 0 || !checks_on() {
        return;
    }
    registry::insert(NewRegion {
        start: ptr,
        size,
        kind: RegionKind::C,
        family: FAMILY_MALLOC,
        flags: 0,
        site: Some(site),
        type_name,
    });
}

/// Registers `[ptr, ptr + size)`, returned by C, as live C memory of
/// `family`, or takes over an existing record of it. A pointer into a
/// quarantined block is C2: that memory cannot have been handed out again.
///
/// Returns false when the adoption is refused: memory that no C allocator
/// returned (the middle of a tracked block, managed memory, a Rust heap
/// block, the stack, static data) is reported (`InvalidFree`: freeing it
/// later would be one) and not registered, so no record of it is replaced
/// and nothing frees it twice.
pub(super) fn adopt(
    ptr: usize,
    size: usize,
    family: u8,
    site: Site,
    type_name: Option<fn() -> &'static str>,
) -> bool {
    if ptr == 0 || !checks_on() {
        return true;
    }
    if let Some(r) = registry::lookup(ptr) {
        if r.state == RegionState::Live && r.start == ptr && r.kind == RegionKind::C {
            // Already tracked (allocated through ffi_check_malloc in C): keep
            // its allocation site, which is the more useful one.
            return true;
        }
        if r.state == RegionState::Freed {
            emit(
                Violation::new(
                    ViolationKind::UseAfterFree,
                    format!("pointer returned from C {}", msg::USE_AFTER_FREE_ARG),
                )
                .with_site(Some(site))
                .region_at("freed region", r.start),
            );
            // The record stays: it still owns the quarantined block.
            return true;
        }
        let what = if r.kind == RegionKind::Managed {
            "managed memory (Rust's, freed by Rust)".to_owned()
        } else {
            format!("{} bytes into a tracked C block", ptr - r.start)
        };
        refuse(ptr, &what, site, Some(r.start));
        return false;
    }
    if crate::heap::block_at(ptr).is_some() {
        refuse(
            ptr,
            "a Rust heap block (tracking allocator)",
            site,
            Some(ptr),
        );
        return false;
    }
    if let Some(what) = never_allocated(ptr) {
        refuse(ptr, what, site, None);
        return false;
    }
    registry::insert(NewRegion {
        start: ptr,
        size,
        kind: RegionKind::C,
        family,
        flags: 0,
        site: Some(site),
        type_name,
    });
    true
}

#[cold]
fn refuse(ptr: usize, what: &str, site: Site, region: Option<usize>) {
    let v = Violation::new(ViolationKind::InvalidFree, msg::ADOPT_NOT_HEAP.to_owned())
        .note(format!("the pointer {ptr:#x} is {what}"))
        .note("it is not adopted: owning it would free memory no C allocator gave out".into())
        .with_site(Some(site));
    emit(match region {
        Some(start) => v.region_at_any("adopted pointer is in", start),
        None => v,
    });
}

/// Allocates `size` bytes with C's `malloc` and tracks them as C memory that
/// Rust owns (a leak until [`c_free`]d). Returns null when malloc does.
///
/// ```
/// let p = ffi_check::c_malloc(32);
/// assert!(!p.is_null());
/// // SAFETY: p came from c_malloc and is freed once.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[track_caller]
pub fn c_malloc(size: usize) -> *mut c_void {
    let p = malloc_scannable(size);
    track_new(p as usize, size, Site::caller(), None);
    p
}

/// `malloc` for memory the checker tracks. In mode 2 the block is zeroed:
/// the scans of C memory read every word of it, and the stale words a fresh
/// `malloc` block holds (old pointers into memory long since reused) would
/// otherwise read as pointers C stored.
pub(crate) fn malloc_scannable(size: usize) -> *mut c_void {
    if crate::mode::full() {
        // SAFETY: calloc has no preconditions.
        unsafe { libc::calloc(1, size.max(1)) }
    } else {
        // SAFETY: malloc has no preconditions.
        unsafe { libc::malloc(size.max(1)) }
    }
}

/// Frees C memory with `free`, checking rule C1: a double free, a free of an
/// interior pointer or of managed memory, or a free of memory from another
/// allocator family is reported, and then *not* carried out.
///
/// Pointers the checker never saw are passed to `free` unchecked: adopt
/// memory C returns (`CBox::from_raw`, [`c_adopt`]) to have its frees checked.
///
/// # Safety
/// `ptr` is null or came from the C allocator and is not used after this.
///
/// ```
/// let p = ffi_check::c_malloc(8);
/// // SAFETY: p came from c_malloc and is freed once.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[track_caller]
pub unsafe fn c_free(ptr: *mut c_void) {
    // SAFETY: the caller promises ptr came from malloc and is not used after.
    unsafe { free_through_checks(ptr, &Deallocator::LIBC, Some(Site::caller())) }
}

/// Frees C memory with the deallocator `dealloc`, checking rule C1 as
/// [`c_free`] does.
///
/// # Safety
/// `ptr` is null or was allocated by `dealloc`'s allocator and is not used
/// after this.
#[track_caller]
pub unsafe fn c_free_with(ptr: *mut c_void, dealloc: &Deallocator) {
    // SAFETY: as promised by the caller.
    unsafe { free_through_checks(ptr, dealloc, Some(Site::caller())) }
}

/// Tracks `size` bytes at `ptr`, returned by C's `malloc` family, as C memory
/// that Rust now owns: its free is checked and a missing free is a leak.
/// Returns `ptr`. Memory no C allocator returned (the middle of a tracked
/// block, managed memory, the stack, static data) is reported
/// (`InvalidFree`) and not adopted; `ptr` is still returned, and a later
/// [`c_free`] of it is refused the same way.
///
/// ```
/// // SAFETY: malloc has no preconditions.
/// let p = unsafe { libc::malloc(16) };
/// let p = ffi_check::c_adopt(p, 16);
/// // SAFETY: p came from malloc and is freed once.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[track_caller]
pub fn c_adopt(ptr: *mut c_void, size: usize) -> *mut c_void {
    let _ = adopt(ptr as usize, size, FAMILY_MALLOC, Site::caller(), None);
    ptr
}

/// Like [`c_adopt`], for memory from a library's own allocator, freed by
/// `dealloc`.
#[track_caller]
pub fn c_adopt_with(ptr: *mut c_void, size: usize, dealloc: &Deallocator) -> *mut c_void {
    let _ = adopt(ptr as usize, size, dealloc.family(), Site::caller(), None);
    ptr
}

/// Marks the tracked allocation at `ptr` as an intended leak: it lives for
/// the rest of the program on purpose, and leak reports list it apart, with
/// `reason`, instead of as a leak.
///
/// ```
/// let p = ffi_check::c_malloc(64);
/// ffi_check::intended_leak(p, "global table C keeps until exit");
/// ```
#[track_caller]
pub fn intended_leak<T: ?Sized>(ptr: *const T, reason: &str) {
    if !checks_on() {
        return;
    }
    let addr = ptr.cast::<u8>() as usize;
    // A C block of the interposed allocator that no record names yet: it
    // gets one, so that the registry's leak rules (intended) apply to it.
    #[cfg(feature = "interpose")]
    if registry::lookup(addr).is_none() {
        if let Some(b) = crate::heap::c_block_at(addr).filter(|b| !b.freed()) {
            registry::insert(registry::NewRegion {
                start: b.start,
                size: b.size,
                kind: registry::RegionKind::C,
                family: crate::family::FAMILY_MALLOC,
                flags: 0,
                site: b.alloc_site,
                type_name: None,
            });
        }
    }
    let reason = reason.to_owned();
    registry::update_containing(addr, |_, r| {
        r.flags |= flags::INTENDED_LEAK;
        r.extra_mut().leak_reason = Some(reason);
    });
}
