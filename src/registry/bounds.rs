//! The bounds of everything ever tracked: the lowest and highest address, the
//! same for managed memory, and whether anything was tracked at all.
//!
//! They are the pre-filter that lets a scan or a lookup of an unrelated word
//! return without touching the directory, and a mode-0 free skip the
//! registry.
//!
//! Invariant: the bounds only widen, and the flag is only ever set, so every
//! region ever registered lies inside them (every managed one inside the
//! managed bounds).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Lowest and highest address ever tracked, and the same for managed memory:
/// the bounds pre-filter that lets a scan or a lookup of an unrelated word
/// return without touching the directory.
pub(super) static LO: AtomicUsize = AtomicUsize::new(usize::MAX);
pub(super) static HI: AtomicUsize = AtomicUsize::new(0);
pub(super) static MANAGED_LO: AtomicUsize = AtomicUsize::new(usize::MAX);
pub(super) static MANAGED_HI: AtomicUsize = AtomicUsize::new(0);

/// Set once anything is tracked: until then a mode-0 free skips the
/// registry entirely.
pub(super) static EVER_TRACKED: AtomicBool = AtomicBool::new(false);

/// The addresses of the bounds themselves: statics of the checker that
/// hold the start of a tracked region, which the mode-2 scan of the
/// program's statics must not take for a pointer kept.
pub(crate) fn bound_words() -> [usize; 4] {
    [&LO, &HI, &MANAGED_LO, &MANAGED_HI].map(|a| a as *const AtomicUsize as usize)
}

pub(super) fn widen(lo: &AtomicUsize, hi: &AtomicUsize, start: usize, size: usize) {
    // Load first: after warm-up the bounds rarely move, and a plain load
    // keeps the cache line shared between threads.
    if start < lo.load(Ordering::Relaxed) {
        lo.fetch_min(start, Ordering::Relaxed);
    }
    let end = start.saturating_add(size);
    if end > hi.load(Ordering::Relaxed) {
        hi.fetch_max(end, Ordering::Relaxed);
    }
}

/// True while nothing was ever tracked: a mode-0 free can skip the
/// registry.
#[inline]
pub(crate) fn nothing_live() -> bool {
    !EVER_TRACKED.load(Ordering::Relaxed)
}

/// The lowest and highest managed address ever tracked (`lo >= hi` when none).
#[inline]
pub(crate) fn managed_bounds() -> (usize, usize) {
    (
        MANAGED_LO.load(Ordering::Relaxed),
        MANAGED_HI.load(Ordering::Relaxed),
    )
}
