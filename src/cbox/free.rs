//! The free checks of rules C1 and C2: a double free, a free of an
//! interior pointer, of managed memory, of a Rust heap block or of memory
//! from another allocator family is reported, and then *not* carried out;
//! a free of memory the checker never saw passes unchecked unless it is
//! certainly not from a C allocator (the stack, static data).

use std::ffi::c_void;

use super::Deallocator;
use crate::family::{family_name, FAMILY_MALLOC};
use crate::mode::{checks_on, COMPILED_IN};
use crate::registry::{self, flags, RegionKind, RegionState, Release};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::site::Site;

/// What a free should do after its check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// The checker does not track the block: free it now.
    Untracked,
    /// A tracked, live block (with this id) of the right family: hand it to
    /// [`free_checked`].
    Tracked(u64),
    /// Do not touch it: freeing it would corrupt memory (the violation has
    /// been reported).
    Skip,
}

/// Rule C1/C2 for a free of `ptr` by deallocator `family` (`api` names it).
/// Changes nothing: the caller finishes the free according to the verdict.
#[track_caller]
pub(crate) fn check_free(ptr: usize, family: u8, api: &'static str, site: Option<Site>) -> Verdict {
    if ptr == 0 {
        return Verdict::Untracked;
    }
    if !checks_on() {
        if COMPILED_IN && !registry::nothing_live() {
            // Keep the registry true even with checks off, so turning them
            // back on cannot produce stale reports.
            registry::remove(ptr);
        }
        return Verdict::Untracked;
    }
    let Some(r) = registry::lookup_for_free(ptr) else {
        // A Rust heap block (tracking allocator) handed to C's `free`.
        if c_free_of_rust_block(ptr, api, site) {
            return Verdict::Skip;
        }
        // A C block of the interposed allocator: its `free` judges it.
        #[cfg(feature = "interpose")]
        if crate::heap::c_block_at(ptr).is_some() {
            return Verdict::Untracked;
        }
        // Memory the checker never saw: C's own allocations that were not
        // adopted pass unchecked, but a stack address or static data is
        // certainly not from a C allocator.
        if let Some(what) = never_allocated(ptr).or_else(|| not_allocated_by(ptr, family)) {
            emit(
                Violation::new(
                    ViolationKind::InvalidFree,
                    format!("{} (`{api}`)", msg::FREE_NOT_HEAP),
                )
                .note(format!("the pointer {ptr:#x} is {what}"))
                .note(
                    "the free is not carried out: passing it on would corrupt the heap or crash"
                        .into(),
                )
                .with_site(site),
            );
            return Verdict::Skip;
        }
        return Verdict::Untracked;
    };
    if r.start != ptr && r.flags & flags::RELEASED != 0 {
        // Inside a range whose memory was given back: no longer known.
        return Verdict::Untracked;
    }
    if r.start != ptr {
        if r.state == RegionState::Freed {
            emit(
                Violation::new(
                    ViolationKind::UseAfterFree,
                    format!("free of a pointer into freed memory (`{api}`)"),
                )
                .note(format!(
                    "the pointer is {} bytes into the freed region",
                    ptr - r.start
                ))
                .with_site(site)
                .region_at("freed region", r.start),
            );
            return Verdict::Skip;
        }
        emit(
            Violation::new(
                ViolationKind::InvalidFree,
                format!("{} (`{api}`)", msg::FREE_INTERIOR),
            )
            .note(format!(
                "the pointer is {} bytes into a {} region",
                ptr - r.start,
                r.kind
            ))
            .with_site(site)
            .region_at("freed pointer is inside", r.start),
        );
        return Verdict::Skip;
    }
    if r.state == RegionState::Freed {
        emit(
            Violation::new(
                ViolationKind::DoubleFree,
                format!("{} (`{api}`)", msg::DOUBLE_FREE),
            )
            .with_site(site)
            .region_at("freed twice", r.start),
        );
        return Verdict::Skip;
    }
    if r.kind == RegionKind::Managed {
        emit(
            Violation::new(
                ViolationKind::InvalidFree,
                format!("{} (`{api}`)", msg::FREE_MANAGED),
            )
            .note("allocated by Rust, freed by a C deallocator".into())
            .with_site(site)
            .region_at("managed region", r.start),
        );
        return Verdict::Skip;
    }
    // A library's deallocator may wrap `free` (a destroy function does), so
    // malloc memory freed by one is allowed; library memory freed by `free`
    // or by another library's deallocator is not.
    if r.family != family && !(r.family == FAMILY_MALLOC && family != FAMILY_MALLOC) {
        emit(
            Violation::new(
                ViolationKind::MismatchedFree,
                format!(
                    "{}: allocated by `{}`, freed with `{api}`",
                    msg::MISMATCHED_FREE,
                    family_name(r.family)
                ),
            )
            .with_site(site)
            .region_at("C region", r.start),
        );
        return Verdict::Skip;
    }
    Verdict::Tracked(r.id)
}

/// Finishes a free that [`check_free`] allowed: a tracked block goes to the
/// quarantine (which gives it back to `dealloc` later), an untracked one is
/// freed now.
///
/// # Safety
/// `ptr` came from `dealloc`'s allocator, its owner is done with it, and the
/// verdict is not `Skip`.
pub(crate) unsafe fn free_checked(
    ptr: *mut c_void,
    verdict: Verdict,
    dealloc: &Deallocator,
    site: Option<Site>,
) {
    if verdict == Verdict::Skip {
        return;
    }
    // A guarded block (mode 2) starts before the pointer C sees.
    let dealloc_fn = crate::guard::real_free(ptr as usize, dealloc.free, site);
    match verdict {
        Verdict::Skip => {}
        Verdict::Tracked(id) if dealloc.is_libc() => {
            // Plain malloc memory waits in the quarantine.
            registry::mark_freed(ptr as usize, Some(id), site, Release::C(dealloc_fn));
        }
        Verdict::Tracked(id) => {
            // A library's deallocator runs now: it may be a destroy function
            // with effects of its own, and it may free through
            // `ffi_check_free` itself (which then records the free). If it
            // did not, the record is marked freed and released here.
            // A destroy function that ends in C's `free` of this very block
            // (the interposed one, feature `interpose`) is not judged again.
            let _dealloc = crate::bookkeeping::deallocating_section(ptr as usize);
            // SAFETY: forwarded contract.
            unsafe { dealloc_fn(ptr) };
            registry::mark_freed(ptr as usize, Some(id), site, Release::Released);
        }
        // SAFETY: forwarded contract.
        Verdict::Untracked => unsafe { dealloc_fn(ptr) },
    }
}

/// The common free of a box's block, in one look at its record: memory
/// from C's `malloc` whose record is a live C block, starting at `ptr`, of
/// a family `free` may free. That is every check [`check_free`] makes on
/// such a block, judged under the shard's lock; the block goes to the
/// quarantine as [`free_checked`] would send it. Returns false, having
/// changed nothing, when anything else holds (checks off, mode 2's guarded
/// blocks, another deallocator, no such record): the caller then takes the
/// checked path, which reports what is wrong.
///
/// # Safety
/// As [`free_checked`]'s: `ptr` came from `dealloc`'s allocator and its
/// owner is done with it (and the value in it is dropped already, or needs
/// no drop: the block may be released before this returns).
pub(crate) unsafe fn free_plain(ptr: usize, dealloc: &Deallocator, site: Option<Site>) -> bool {
    if !dealloc.is_libc() || !checks_on() || crate::guard::any_guarded() {
        return false;
    }
    let family = dealloc.family();
    let marked = registry::mark_freed_if(ptr, site, Release::C(dealloc.free), |r, _| {
        r.kind == RegionKind::C && r.family == family
    });
    matches!(marked, registry::Marked::Freed(_))
}

/// A whole checked free: [`check_free`], then [`free_checked`]. What
/// `c_free`, `c_free_with` and C's `ffi_check_free` do.
///
/// # Safety
/// As [`free_checked`]: `ptr` is null or came from `dealloc`'s allocator and
/// is not used after this.
#[track_caller]
pub(crate) unsafe fn free_through_checks(
    ptr: *mut c_void,
    dealloc: &Deallocator,
    site: Option<Site>,
) {
    let verdict = check_free(ptr as usize, dealloc.family(), dealloc.name, site);
    // SAFETY: forwarded contract; the check found no record saying otherwise.
    unsafe { free_checked(ptr, verdict, dealloc, site) }
}

/// `c_free` (or `ffi_check_free`) of `ptr`: when it is a Rust heap block of
/// the tracking allocator, C must not free it. Reports `InvalidFree` and
/// returns true (the caller must then leave the memory alone).
#[track_caller]
fn c_free_of_rust_block(ptr: usize, api: &'static str, site: Option<Site>) -> bool {
    let Some(b) = crate::heap::block_at(ptr) else {
        return false;
    };
    let _g = crate::bookkeeping::bookkeeping();
    let v = Violation::new(
        ViolationKind::InvalidFree,
        format!("{} (`{api}`)", msg::FREE_MANAGED),
    )
    .note(format!(
        "allocated by Rust's allocator, freed with `{api}` (C): Rust memory is freed by Rust ({})",
        if b.freed {
            "and Rust already freed this block"
        } else {
            "take it back with `CString::from_raw` or `Box::from_raw` and drop it"
        }
    ))
    .with_site(site);
    emit(v.region_at_any("Rust heap block", b.start));
    true
}

/// What `ptr` is when it certainly did not come from a heap allocator: the
/// current thread's stack, or the image (code, static data) of a loaded
/// program or library. Cold: only frees of untracked pointers ask.
#[cold]
pub(super) fn never_allocated(ptr: usize) -> Option<&'static str> {
    if on_this_stack(ptr) {
        return Some("on this thread's stack");
    }
    // SAFETY: dladdr only reads the loader's tables; `info` is plain data
    // it fills in.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; any address may be asked about.
    if unsafe { libc::dladdr(ptr as *const c_void, &mut info) } != 0 {
        return Some("in the static data or code of a loaded program or library");
    }
    None
}

/// What `ptr` is when it cannot be a live block of the allocator of
/// `family`: unreadable memory for any allocator, and for `malloc`'s family
/// anything without a sane chunk header. Cold: only frees of untracked
/// pointers ask.
#[cold]
fn not_allocated_by(ptr: usize, family: u8) -> Option<&'static str> {
    if family == FAMILY_MALLOC {
        return crate::probe::not_a_malloc_block(ptr);
    }
    // A library's allocator has a layout of its own: at least the block
    // must be memory.
    (!crate::probe::readable(ptr)).then_some(crate::probe::UNREADABLE)
}

/// Whether `ptr` lies in the current thread's stack.
fn on_this_stack(ptr: usize) -> bool {
    let (lo, hi) = crate::probe::stack_bounds();
    lo <= ptr && ptr < hi
}
