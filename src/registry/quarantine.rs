//! The quarantine: freed regions, remembered and held back from reuse.
//!
//! **Quarantine.** Freed regions stay recorded, marked freed, in a per-shard
//! bounded FIFO, so a late use or a second free names the region and the site
//! that freed it. The quarantine also holds the freed *memory* back from
//! reuse (it gives a block back to its allocator only when the block leaves
//! the FIFO): that is what makes a freed record trustworthy, since no new
//! allocation can sit in a range the record still names. A library's own
//! deallocator runs at once instead (it may be a destroy function), and its
//! record is marked released: it then judges only an exact second free.
//!
//! A region the FIFO lets go leaves its record *vacant* (see
//! [`record`](super::record)): its memory goes back to its allocator, which
//! soon hands the same address out again, and the region registered there
//! then takes the record's place as it is, so neither the eviction nor
//! that registration moves the other records of the page.
//!
//! Invariant (held under each shard's lock, and at every even sequence
//! number):
//! - every freed region has an entry in its shard's quarantine FIFO; entries
//!   whose region was since replaced are skipped on eviction (ids differ).

use std::alloc::Layout;
use std::ffi::c_void;

use crate::site::Site;

use super::shard::{shard_of, Place, ShardInner};
use super::{flags, RegionInfo, RegionState};

/// How a quarantined block's memory is given back when it leaves the
/// quarantine. Holding the memory until then is what makes a freed record
/// trustworthy: no allocation can reuse the range while the record names it,
/// so a pointer into it really is a pointer into freed memory.
#[derive(Clone, Copy)]
pub(crate) enum Release {
    /// Nothing to give back: the memory is kept for good (C may still
    /// hold a pointer into it, so it is leaked rather than freed).
    Nothing,
    /// A C deallocator.
    C(unsafe extern "C" fn(*mut c_void)),
    /// Rust's global allocator.
    Rust(Layout),
    /// Given back already by the caller: the record is kept only to catch
    /// a second free of the same pointer.
    Released,
}

impl Release {
    /// Gives the memory at `start` back.
    ///
    /// # Safety
    /// `start` is the block this release was recorded for, nothing uses it
    /// any more, and it is released once.
    unsafe fn run(self, start: usize) {
        match self {
            Release::Nothing | Release::Released => {}
            // SAFETY: forwarded contract: the block came from this
            // deallocator's allocator.
            Release::C(free) => unsafe { free(start as *mut c_void) },
            // SAFETY: forwarded contract: the block came from the global
            // allocator with this layout.
            Release::Rust(layout) => unsafe { std::alloc::dealloc(start as *mut u8, layout) },
        }
    }
}

/// A freed block waiting in the quarantine.
pub(super) struct Quarantined {
    start: usize,
    id: u64,
    size: usize,
    release: Release,
    /// Where its record sat when it was freed: its eviction looks there
    /// first (records seldom move in a page whose regions come and go in
    /// place).
    place: Place,
}

/// What a freed region costs the quarantine beyond its own bytes: its
/// record, its quarantine entry, its boxed facts (the event backtraces are
/// 4-byte ids into the stack depot) and the allocator's header of a block.
/// The byte bound counts it, so a million freed 8-byte blocks are bounded by
/// what they really hold, not by their 8 MiB of contents.
const BOOKKEEPING_BYTES: usize = super::REGION_RECORD_BYTES
    + std::mem::size_of::<Quarantined>()
    + std::mem::size_of::<super::Extra>()
    + 2 * std::mem::size_of::<usize>();

/// How many freed blocks, and how many bytes (theirs and their
/// bookkeeping's, [`BOOKKEEPING_BYTES`] each), each shard holds back from
/// reuse: 64 Ki blocks / 64 MiB in all in mode 1, 1 Mi blocks / 256 MiB in
/// mode 2.
fn quarantine_limits() -> (usize, usize) {
    if crate::mode::full() {
        (1 << 14, 4 << 20)
    } else {
        (1 << 10, 1 << 20)
    }
}

/// Counts an evicted region gone in the statistics.
fn count_gone(r: &RegionInfo) {
    debug_assert_eq!(r.state, RegionState::Freed);
    crate::stats::region_gone(r.kind == super::RegionKind::C, r.size, false);
}

/// How many quarantined blocks one free evicts at most.
const EVICT_AT_ONCE: usize = 4;

/// Marks the live region starting at `start` freed and puts it in the
/// quarantine, which gives its memory back with `release` when the block is
/// evicted (the oldest first, once the shard holds too many blocks or bytes).
/// Returns the region as it was just before; `None` when there is no such
/// region, in which case `release` runs at once.
pub(crate) fn mark_freed(
    start: usize,
    expect_id: Option<u64>,
    site: Option<Site>,
    release: Release,
) -> Option<RegionInfo> {
    let marked = mark_freed_if(start, site, release, |before, _| {
        // Another block took this address since the caller's check: this
        // free is not about it.
        expect_id.map_or(true, |id| id == before.id)
    });
    match marked {
        // A second free of a quarantined block must never release it twice:
        // the callers report it and skip; this is a last line of defence.
        Marked::Freed(before) | Marked::NotLive(before) => Some(before),
        Marked::Refused | Marked::Missing => {
            // SAFETY: the caller hands over a block it owns and no longer
            // uses.
            unsafe { release.run(start) };
            None
        }
    }
}

/// What [`mark_freed_if`] found and did.
pub(crate) enum Marked {
    /// The region was live and `accept`ed: it is freed and quarantined (it
    /// was this just before).
    Freed(RegionInfo),
    /// The region is not live (freed already): nothing changed.
    NotLive(RegionInfo),
    /// The live region was not `accept`ed: nothing changed.
    Refused,
    /// No region starts at `start`: nothing changed.
    Missing,
}

/// [`mark_freed`] of the region starting at `start` if it is live and
/// `accept` takes it (judged under the shard's lock, on the record as it
/// is: its facts and its count of C's retains), in one look at the record;
/// otherwise nothing changes (and nothing is released). For a free whose
/// checks are all about the record: the check and the marking need one
/// search of the page, not two.
pub(crate) fn mark_freed_if(
    start: usize,
    site: Option<Site>,
    release: Release,
    accept: impl FnOnce(&RegionInfo, u16) -> bool,
) -> Marked {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let trace = crate::mode::event_backtraces()
        .then(crate::stackdepot::capture)
        .flatten();
    let mut w = shard_of(start).write();
    let Some((b, i, place)) = ShardInner::find_placed(start) else {
        return Marked::Missing;
    };
    let before = b.info(i, start);
    if before.state != RegionState::Live {
        return Marked::NotLive(before);
    }
    if !accept(&before, super::record::retains_of(b.rec(i))) {
        return Marked::Refused;
    }
    // The free site goes into the record's interned provenance; only a
    // backtrace needs the region's `Extra`.
    let released = matches!(release, Release::Released);
    if trace.is_some() || !w.set_freed(b, i, start, site, released) {
        let mut view = w.view(b, i);
        view.state = RegionState::Freed;
        if released {
            view.flags |= flags::RELEASED;
        }
        view.free_site = site;
        if trace.is_some() {
            view.extra_mut().free_trace = trace;
        }
        w.store_view(b, i, start, view);
    }
    w.quarantine.push_back(Quarantined {
        start,
        id: before.id,
        size: before.size,
        release,
        place,
    });
    w.quarantine_bytes += before.size + BOOKKEEPING_BYTES;
    let (max_blocks, max_bytes) = quarantine_limits();
    // At most a few evictions a free, kept on the stack (no allocation on
    // the common path: one free evicts one block at steady state); a
    // quarantine over its limits after a mode change drains over the next
    // frees.
    let mut evicted: [Option<(Quarantined, RegionInfo)>; EVICT_AT_ONCE] =
        [const { None }; EVICT_AT_ONCE];
    let mut n = 0;
    while n < EVICT_AT_ONCE
        && w.quarantine.len() > 1
        && (w.quarantine.len() > max_blocks || w.quarantine_bytes > max_bytes)
    {
        let Some(q) = w.quarantine.pop_front() else {
            break;
        };
        w.quarantine_bytes -= q.size + BOOKKEEPING_BYTES;
        // Its place stays for the next region starting there (soon: an
        // allocator hands a freed address out again first).
        let current = |r: &RegionInfo| r.id == q.id && r.state == RegionState::Freed;
        if let Some(r) = w.vacate(q.start, Some(q.place), current) {
            evicted[n] = Some((q, r));
            n += 1;
        }
        // Otherwise the record was replaced: the range was reused behind the
        // checker's back, so giving it back now would free someone else's
        // memory. It is left alone (a leak, never a corruption).
    }
    drop(w);
    if before.kind == super::RegionKind::C {
        super::live_c::gone(start, before.id);
    }
    crate::stats::region_freed(before.kind == super::RegionKind::C, before.size);
    // By reference, the filled slots only: moving the array out would copy
    // all of it.
    for (q, r) in evicted[..n].iter().flatten() {
        count_gone(r);
        // SAFETY: the block left the quarantine: it was freed by its owner,
        // held back from reuse since, and is released exactly once, here.
        unsafe { q.release.run(q.start) };
    }
    Marked::Freed(before)
}

/// Evicts the quarantined region starting at `start` now, as the
/// quarantine does when it is full (its memory is not given back): for the
/// registry's model test.
#[cfg(test)]
pub(super) fn evict_now(start: usize) -> bool {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let mut w = shard_of(start).write();
    let gone = w.vacate(start, None, |r| r.state == RegionState::Freed);
    drop(w);
    gone.inspect(count_gone).is_some()
}
