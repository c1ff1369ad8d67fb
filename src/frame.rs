//! The `call!` this thread is in: its callee and call site, so that what
//! happens during a call (a free inside it, a retain, a C allocation) can be
//! attributed to it.
//!
//! A [`Frame`] lives inside the boundary's `Call`, which stays in place from
//! its `enter` to its drop; the thread-local names the innermost one and
//! each frame remembers the one it hides. One word, written twice per call:
//! this is on the hot path of every checked call.
//!
//! Ground floor: the tracking allocator and the rule front ends read the
//! current call here, without reaching up into the boundary that sets it.

use std::cell::Cell;

use crate::site::Site;

/// The part of a checked call that others may name: the callee (as `call!`
/// wrote its path) and the call site. Made by `call!` beside its `Call`,
/// not by hand.
#[doc(hidden)]
pub struct Frame {
    pub(crate) callee: &'static str,
    pub(crate) site: Site,
}

impl Frame {
    /// The frame of a call to `callee` (the path as `call!` wrote it) from
    /// the caller's site.
    #[track_caller]
    #[inline(always)]
    pub fn new(callee: &'static str) -> Frame {
        Frame {
            callee,
            site: Site::caller(),
        }
    }
}

thread_local! {
    /// The frame of the checked call this thread is inside (the innermost
    /// one), or null.
    static CURRENT: Cell<*const Frame> = const { Cell::new(std::ptr::null()) };
}

/// Makes `frame` the thread's current call and returns the one it hides, or
/// `None` when the thread's locals are gone (the call is then not entered).
///
/// The caller keeps `frame` in place and calls [`leave`] with the returned
/// value before it moves or drops.
#[inline(always)]
pub(crate) fn enter(frame: *const Frame) -> Option<*const Frame> {
    CURRENT.try_with(|c| c.replace(frame)).ok()
}

/// Restores the call that [`enter`] returned.
#[inline(always)]
pub(crate) fn leave(prev: *const Frame) {
    let _ = CURRENT.try_with(|c| c.set(prev));
}

/// How many plain heap blocks an outermost call remembers lending.
const LENT_SLOTS: usize = 8;

thread_local! {
    /// Mode 2: the starts of the plain heap blocks (tracking allocator)
    /// this thread lent to C as raw pointers since its outermost call
    /// began, the last [`LENT_SLOTS`] of them, and how many were noted.
    static LENT: Cell<([usize; LENT_SLOTS], usize)> = const { Cell::new(([0; LENT_SLOTS], 0)) };
}

/// Notes that the heap block starting at `start` is lent to C by the call
/// in progress (mode 2).
pub(crate) fn note_lent(start: usize) {
    let _ = LENT.try_with(|l| {
        let (mut slots, n) = l.get();
        slots[n % LENT_SLOTS] = start;
        l.set((slots, n + 1));
    });
}

/// Whether the block starting at `start` was noted by [`note_lent`] since
/// the last [`forget_lent`].
pub(crate) fn was_lent(start: usize) -> bool {
    LENT.try_with(|l| {
        let (slots, n) = l.get();
        slots[..n.min(LENT_SLOTS)].contains(&start)
    })
    .unwrap_or(false)
}

/// Forgets what was lent: the outermost call is over.
pub(crate) fn forget_lent() {
    let _ = LENT.try_with(|l| l.set(([0; LENT_SLOTS], 0)));
}

/// The call this thread is in, if any: the callee's name and the call site.
pub(crate) fn current_call() -> Option<(&'static str, Site)> {
    let frame = CURRENT.try_with(|c| c.get()).ok()?;
    if frame.is_null() {
        return None;
    }
    // SAFETY: CURRENT is only ever set by `enter` to a frame that its owner
    // keeps in place until it calls `leave`, which restores the previous
    // value; it is read only on this thread, so a non-null value is live.
    let frame = unsafe { &*frame };
    Some((callee_name(frame.callee), frame.site))
}

/// The call site of the call this thread is in, if any: what a C
/// allocation made during the call is attributed to (no name lookup: this
/// is on the path of every interposed `malloc`).
#[inline(always)]
#[cfg_attr(
    not(all(feature = "interpose", any(debug_assertions, feature = "always"))),
    allow(dead_code)
)]
pub(crate) fn current_site() -> Option<Site> {
    let frame = CURRENT.try_with(|c| c.get()).ok()?;
    if frame.is_null() {
        return None;
    }
    // SAFETY: as in `current_call`: a non-null CURRENT is a live frame of
    // this thread.
    Some(unsafe { (*frame).site })
}

/// The callee's own name from the path `call!` was given (`ffi :: png_write`
/// gives `png_write`), as cgocheck names the C function. Done only when a
/// report needs it: the call path carries the path as the macro wrote it.
pub(crate) fn callee_name(path: &'static str) -> &'static str {
    path.rsplit("::").next().map_or(path, str::trim)
}
