//! Guarded loans (mode 2): guard bytes around the C memory a [`CBox`] owns,
//! HotSpot's `-Xcheck:jni` idea for Rust FFI.
//!
//! Rule C4: C writes only inside the C memory it is given. A buffer lent to
//! C with the wrong length (the room for a NUL forgotten, a count in elements
//! taken for bytes) is the classic way C corrupts the heap, and the damage
//! shows much later, somewhere else. In mode 2 every block a `CBox` allocates
//! with `malloc` gets [`GUARD`] bytes of a known pattern on both sides; they
//! are checked at every boundary crossing (before and after each outermost
//! `call!`) and when the block is freed, so an overrun is reported at the
//! call that made it, with the block's allocation site.
//!
//! Only blocks ffi-check allocates itself can be guarded: adopted memory
//! (`CBox::from_raw`, `c_adopt`) came from someone else's allocator, and
//! `c_malloc`'s raw pointers may be freed by C's own `free`. Memory layout of
//! a guarded block:
//!
//! ```text
//! base                 base + GUARD (what C and the registry see)
//! | front guard        | the block (size bytes)  | back guard |
//! ```
//!
//! `free` needs `base`, so every free of a guarded block goes through
//! [`real_free`], and a box handed to C for good ([`unguard`]) is first moved
//! into a plain `malloc` block that C's own `free` accepts.
//!
//! Invariants: an entry in `BLOCKS` is a live guarded block, keyed by the
//! address C sees; `COUNT` is the number of entries (read without the lock,
//! so mode 1 pays one relaxed load per free and nothing else).

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::registry::{self, NewRegion, RegionKind, Release};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::site::Site;
use crate::writewatch::Unwatched;

/// Guard bytes on each side: 16 keeps the block as aligned as `malloc`'s.
pub(crate) const GUARD: usize = 16;

// The write watch covers this much around each C region (see
// `registry::GUARD_PAD`): a write into a guard is seen by the next scan.
const _: () = assert!(GUARD <= registry::GUARD_PAD);

/// The guard pattern (MSVC's "no man's land" byte).
const PATTERN: u8 = 0xFD;

/// Live guarded blocks: the address C sees, and the block's size.
/// Both off the watched pages (see `writewatch::Unwatched`): every mode-2
/// scan takes the lock, and a `CBox` allocation or free changes both.
static BLOCKS: Unwatched<Mutex<BTreeMap<usize, usize>>> =
    Unwatched::new(|| Mutex::new(BTreeMap::new()));
static COUNT: Unwatched<AtomicUsize> = Unwatched::new(|| AtomicUsize::new(0));

fn blocks() -> std::sync::MutexGuard<'static, BTreeMap<usize, usize>> {
    // Every change is completed before anything that could panic.
    BLOCKS.get().lock().unwrap_or_else(|e| e.into_inner())
}

/// The guarded blocks' lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _blocks: std::sync::MutexGuard<'static, BTreeMap<usize, usize>>,
}

/// Takes the guarded blocks' lock for `fork`'s prepare handler; dropping
/// the value releases it.
pub(crate) fn lock_for_fork() -> ForkLock {
    ForkLock { _blocks: blocks() }
}

/// Allocates `size` bytes with `malloc`, guarded, and returns the address C
/// will see (null when `malloc` fails).
pub(crate) fn alloc(size: usize) -> *mut c_void {
    let Some(total) = size.checked_add(2 * GUARD) else {
        return std::ptr::null_mut();
    };
    // The registry tracks the user block; with the C allocator interposed,
    // the guarded block around it is the checker's own (never a second C
    // block to scan or to report as leaked).
    let base = {
        let _g = crate::bookkeeping::bookkeeping();
        // SAFETY: malloc has no preconditions.
        unsafe { libc::malloc(total) }.cast::<u8>()
    };
    if base.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `base` is a fresh block of `total` bytes: the front guard is
    // its first GUARD bytes, the back guard the GUARD bytes after the block.
    unsafe {
        std::ptr::write_bytes(base, PATTERN, GUARD);
        std::ptr::write_bytes(base.add(GUARD + size), PATTERN, GUARD);
    }
    // SAFETY: GUARD < total.
    let user = unsafe { base.add(GUARD) };
    blocks().insert(user as usize, size);
    COUNT.get().fetch_add(1, Ordering::Relaxed);
    user.cast()
}

/// Frees a guarded block given the address C sees.
///
/// # Safety
/// `user` came from [`alloc`], is no longer in `BLOCKS`, and is freed once.
unsafe extern "C" fn free_guarded(user: *mut c_void) {
    // SAFETY: forwarded contract: the block starts GUARD bytes before `user`.
    unsafe { libc::free(user.cast::<u8>().sub(GUARD).cast()) }
}

/// Whether `user` is a live guarded block: its size if so.
fn size_of(user: usize) -> Option<usize> {
    if COUNT.get().load(Ordering::Relaxed) == 0 {
        return None;
    }
    blocks().get(&user).copied()
}

/// What a guard check found: the block, and the first changed byte's
/// position relative to the block's start (negative: before it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Overrun {
    pub start: usize,
    pub size: usize,
    pub offset: isize,
    pub changed: usize,
}

/// Checks both guards of the block at `user` (`size` bytes) and restores
/// them, so one overrun is reported once.
///
/// # Safety
/// `user` is a live guarded block of `size` bytes.
unsafe fn check_block(user: usize, size: usize) -> Option<Overrun> {
    let base = user - GUARD;
    // SAFETY: both guards lie inside the live block (caller's contract).
    let (front, back) = unsafe {
        (
            std::slice::from_raw_parts_mut(base as *mut u8, GUARD),
            std::slice::from_raw_parts_mut((user + size) as *mut u8, GUARD),
        )
    };
    let changed = |g: &[u8]| g.iter().filter(|b| **b != PATTERN).count();
    let (cf, cb) = (changed(front), changed(back));
    if cf == 0 && cb == 0 {
        return None;
    }
    // The byte nearest the block is the one C is likeliest to have meant.
    let offset = if cb > 0 {
        let i = back.iter().position(|b| *b != PATTERN).unwrap_or(0);
        (size + i) as isize
    } else {
        let i = front.iter().rposition(|b| *b != PATTERN).unwrap_or(0);
        i as isize - GUARD as isize
    };
    front.fill(PATTERN);
    back.fill(PATTERN);
    Some(Overrun {
        start: user,
        size,
        offset,
        changed: cf + cb,
    })
}

/// Checks every live guarded block (a boundary crossing). Called with no
/// registry lock held; the reports are made by the caller.
pub(crate) fn check_all() -> Vec<Overrun> {
    if COUNT.get().load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let blocks = blocks();
    blocks
        .iter()
        // SAFETY: every entry is a live guarded block of that size; it
        // cannot be freed meanwhile, since a free takes this lock first
        // (`real_free`).
        .filter_map(|(&user, &size)| unsafe { check_block(user, size) })
        .collect()
}

/// Checks the live guarded blocks whose guards lie in one of `ranges`
/// (sorted, disjoint `(start, end)`: the pages written since the last
/// check, by the write watch): a guard nothing wrote is still intact.
pub(crate) fn check_in(ranges: &[(usize, usize)]) -> Vec<Overrun> {
    if COUNT.get().load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let blocks = blocks();
    let mut found = Vec::new();
    let mut last = None;
    for &(from, to) in ranges {
        // A block whose back guard reaches into the range starts before
        // it; blocks do not overlap, so the last one before is the only one.
        let before = blocks
            .range(..from.saturating_add(GUARD))
            .next_back()
            .filter(|(&user, &size)| user + size + GUARD > from);
        let inside = blocks.range(from.saturating_add(GUARD)..to.saturating_add(GUARD));
        for (&user, &size) in before.into_iter().chain(inside) {
            if last.is_some_and(|l| l >= user) {
                continue;
            }
            last = Some(user);
            // SAFETY: as in `check_all`: a live guarded block of that size,
            // which cannot be freed while this lock is held.
            if let Some(o) = unsafe { check_block(user, size) } {
                found.push(o);
            }
        }
    }
    found
}

/// Whether any guarded block is live (none outside mode 2, unless mode 2
/// made them before a switch): a free that finds none needs no
/// [`real_free`].
pub(crate) fn any_guarded() -> bool {
    COUNT.get().load(Ordering::Relaxed) != 0
}

/// Forgets the guarded block at `user`, checking its guards one last time.
/// `None` when it is not a guarded block.
fn forget(user: usize) -> Option<Option<Overrun>> {
    if COUNT.get().load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut blocks = blocks();
    let size = blocks.remove(&user)?;
    COUNT.get().fetch_sub(1, Ordering::Relaxed);
    // SAFETY: the block was live and guarded until just now, and its owner
    // is giving it up: nothing else touches it.
    Some(unsafe { check_block(user, size) })
}

/// The deallocator that really frees the block at `ptr`: `free` of the base
/// for a guarded block (whose guards are checked, one last time, here), or
/// `free` itself for anything else. The block is forgotten as guarded.
pub(crate) fn real_free(
    ptr: usize,
    free: unsafe extern "C" fn(*mut c_void),
    site: Option<Site>,
) -> unsafe extern "C" fn(*mut c_void) {
    match forget(ptr) {
        None => free,
        Some(overrun) => {
            if let Some(o) = overrun {
                report(&o, None, site, "found when the block was freed");
            }
            free_guarded
        }
    }
}

/// A guarded block handed to C for good (`CBox::into_raw`, a `CBox` passed
/// by value): C frees it with its own `free`, which needs the real base, so
/// the contents move to a plain `malloc` block that takes over the region's
/// record. The old block goes to the quarantine, freed, so a pointer C kept
/// to it is still caught (C2). Anything else is returned as it is.
pub(crate) fn unguard(ptr: NonNull<u8>, type_name: fn() -> &'static str) -> NonNull<u8> {
    let user = ptr.as_ptr() as usize;
    let Some(size) = size_of(user) else {
        return ptr;
    };
    // SAFETY: malloc has no preconditions.
    let Some(fresh) = NonNull::new(unsafe { libc::malloc(size.max(1)) }.cast::<u8>()) else {
        // Out of memory: leave it guarded (glibc refuses C's `free` of it
        // loudly, which is better than a wrong free here).
        return ptr;
    };
    // SAFETY: both blocks hold `size` bytes and are distinct allocations.
    unsafe { std::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), size) };
    if let Some(Some(o)) = forget(user) {
        report(&o, None, None, "found when the block was handed to C");
    }
    match registry::detail(user) {
        Some(d) if crate::mode::checks_on() => {
            registry::insert(NewRegion {
                start: fresh.as_ptr() as usize,
                size,
                kind: RegionKind::C,
                family: d.family,
                flags: 0,
                site: d.alloc_site,
                type_name: Some(type_name),
            });
            registry::mark_freed(user, None, None, Release::C(free_guarded));
        }
        detail => {
            if detail.is_some() {
                registry::remove(user);
            }
            // SAFETY: the block is ours, no longer guarded nor used; freed
            // once.
            unsafe { free_guarded(user as *mut c_void) };
        }
    }
    fresh
}

/// `realloc` of a guarded block (C was lent it with `as_ptr` and grows it):
/// a plain `malloc` block of `size` bytes with the old contents; the old
/// block is freed. `None` when `ptr` is not guarded. The caller updates the
/// registry.
///
/// # Safety
/// `ptr` is a live block whose owner gives it up.
pub(crate) unsafe fn realloc(ptr: usize, size: usize) -> Option<*mut c_void> {
    let old = size_of(ptr)?;
    // SAFETY: malloc has no preconditions.
    let fresh = unsafe { libc::malloc(size.max(1)) };
    if fresh.is_null() {
        // A failed realloc leaves the old block alone.
        return Some(fresh);
    }
    // SAFETY: the copy stays inside both blocks.
    unsafe { std::ptr::copy_nonoverlapping(ptr as *const u8, fresh.cast::<u8>(), old.min(size)) };
    if let Some(Some(o)) = forget(ptr) {
        report(&o, None, None, "found when the block was reallocated");
    }
    // SAFETY: the old block is no longer guarded nor used; freed once.
    unsafe { free_guarded(ptr as *mut c_void) };
    Some(fresh)
}

/// Reports an overrun found at a boundary crossing or a free.
#[cold]
pub(crate) fn report(
    o: &Overrun,
    call: Option<(&'static str, Site)>,
    site: Option<Site>,
    when: &str,
) {
    let message = if o.offset < 0 {
        msg::GUARD_BEFORE
    } else {
        msg::GUARD_AFTER
    };
    let message = match call {
        Some((callee, _)) => format!("{message} (`{callee}`)"),
        None => message.to_owned(),
    };
    let position = if o.offset < 0 {
        format!("{} byte(s) before its start", -o.offset)
    } else {
        format!("at byte {} of a {}-byte block", o.offset, o.size)
    };
    emit(
        Violation::new(ViolationKind::GuardOverrun, message)
            .note(format!(
                "{} guard byte(s) changed, the nearest {position}; {when}",
                o.changed
            ))
            .with_callee(call.map(|c| c.0))
            .with_site(call.map(|c| c.1).or(site))
            .region_at("overrun region", o.start),
    );
}
