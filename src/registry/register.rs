//! Registering and forgetting regions.
//!
//! Regions never overlap, so a record that a new region overlaps is stale
//! (freed memory that was reused, or live memory freed behind the checker's
//! back): registering first drops every such record, then adds the new one.
//! Forgetting drops a record without quarantining it.
//!
//! Invariant: regions do not overlap (the records a new region overlaps are
//! gone before it is added), and every record added or dropped is counted
//! in the statistics.

use std::sync::atomic::Ordering;

use crate::site::Site;

use super::block::{PAGE_MASK, PAGE_SHIFT};
use super::bounds::{widen, EVER_TRACKED, HI, LO, MANAGED_HI, MANAGED_LO};
use super::directory::{leaf_exists, page_slot, PageSlot, FANOUT};
use super::ids::{new_id, thread_serial, THREAD_BITS};
use super::live_c;
use super::lookup::{covering_start, probe_exact};
use super::record::rec_vacant;
use super::shard::{read_stable, shard_of, ShardInner};
use super::sites::{intern, Provenance};
use super::{Extra, Region, RegionInfo, RegionKind, RegionState};

/// What to register.
pub(crate) struct NewRegion {
    pub start: usize,
    pub size: usize,
    pub kind: RegionKind,
    pub family: u8,
    pub flags: u8,
    pub site: Option<Site>,
    pub type_name: Option<fn() -> &'static str>,
}

/// Makes the live heap block of the tracking allocator at `addr` known to
/// the registry (the first time it is pinned or retained, or found held by
/// C), so pins, retains, interior pointers and rule P3 apply to it. Returns
/// false when there was nothing to do: not such a block, or known already.
/// Without the tracking allocator this is one load.
pub(crate) fn promote_heap_block(addr: usize, site: Option<Site>) -> bool {
    let Some(block) = crate::heap::try_promote(addr) else {
        return false;
    };
    let _g = crate::bookkeeping::bookkeeping();
    insert(NewRegion {
        start: addr,
        size: block.size,
        kind: RegionKind::Managed,
        family: 0,
        flags: if crate::heap::may_hold_pointers(block.align, block.size) {
            super::flags::HOLDS_POINTERS
        } else {
            0
        },
        site,
        type_name: None,
    });
    true
}

/// Registers a live region and returns its id. Stale records it overlaps
/// (freed regions whose memory was reused, or live records of memory that was
/// freed behind the checker's back) are dropped.
pub(crate) fn insert(new: NewRegion) -> u64 {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let id = new_id();
    let size = new.size.max(1);
    let end = new.start.saturating_add(size);
    let trace = crate::mode::event_backtraces()
        .then(crate::stackdepot::capture)
        .flatten();
    // The type name goes with the interned site, not into the `Extra`: most
    // regions then need none.
    let extra = trace.map(|trace| Extra {
        alloc_trace: Some(trace),
        ..Extra::default()
    });
    let type_name = new.type_name.map(|f| f());
    let mut region = Region {
        size: new.size,
        site: new.site,
        type_name,
        free_site: None,
        extra,
        tag: (id << THREAD_BITS) | u64::from(thread_serial()),
        pins: 0,
        retains: 0,
        kind: new.kind,
        state: RegionState::Live,
        family: new.family,
        flags: new.flags,
        interned: 0,
    };
    widen(&LO, &HI, new.start, size);
    if new.kind == RegionKind::Managed {
        crate::heap::mark_registered(new.start);
        widen(&MANAGED_LO, &MANAGED_HI, new.start, size);
    }
    // A block of the interposed C allocator (C memory, or Rust's heap
    // without the tracking allocator): its frees and leaks now follow the
    // registry's rules.
    #[cfg(feature = "interpose")]
    crate::heap::mark_c_registered(new.start);
    // Interned before the shard lock (the site table has its own), and
    // handed to the record's encoding with the region.
    region.interned = intern(Provenance {
        site: new.site,
        type_name,
        free_site: None,
    });
    // Most registrations overlap no record, which one search of the page
    // under the lock shows: no purge. The others purge the stale records
    // they overlap first.
    let placed = shard_of(new.start)
        .write()
        .insert_if_clear(new.start, region);
    let mut stale = Vec::new();
    if let Some(region) = placed {
        stale = purge(new.start, end);
        let replaced = shard_of(new.start).write().insert(new.start, region);
        stale.extend(replaced);
    }
    live_c::added(new.start, new.size, id, new.kind == RegionKind::C);
    if !EVER_TRACKED.load(Ordering::Relaxed) {
        EVER_TRACKED.store(true, Ordering::Relaxed);
    }
    crate::stats::region_created(new.kind == RegionKind::C, new.size);
    for old in &stale {
        forget_removed(old);
    }
    id
}

/// Drops the records that overlap `[start, end)` and returns them: only
/// stale ones can (live allocations do not overlap), so this is
/// bookkeeping, not a check. Candidates are found without a lock and
/// confirmed under their shard's.
fn purge(start: usize, end: usize) -> Vec<Region> {
    let mut removed = Vec::new();
    if start == 0 || start >= HI.load(Ordering::Relaxed) || end <= LO.load(Ordering::Relaxed) {
        return removed;
    }
    let mut confirm = |s: usize| {
        let mut w = shard_of(s).write();
        // A vacant record that starts inside the range goes too: no region
        // may contain the start of one.
        let Some((b, i)) = ShardInner::find_slot(s) else {
            return;
        };
        let info = b.info(i, s);
        if s == start && info.flags & super::flags::VACANT != 0 {
            // The new region takes this place as it is.
            return;
        }
        if info.start < end && start < info.start.saturating_add(info.size.max(1)) {
            removed.extend(w.remove_any(s));
        }
    };
    // The region that contains `start`, begun before it: the greatest
    // start below `start` in its page (or, with none, the page's cover or
    // the huge list), found in the same look at the page as the regions
    // starting inside the range, and confirmed under its lock like them.
    let first_page = start >> PAGE_SHIFT;
    // Regions that start inside the range.
    let mut page = first_page;
    let last = (end - 1) >> PAGE_SHIFT;
    while page <= last {
        if !leaf_exists(page) {
            if page == first_page {
                if let Some(s) = covering_start(start, page).filter(|&s| s < start) {
                    confirm(s);
                }
            }
            // Nothing was ever tracked in this leaf's 16 MiB.
            page = (page | (FANOUT - 1)) + 1;
            if page == 0 {
                break;
            }
            continue;
        }
        // The first page is read as one consistent state (the region begun
        // before `start` is found there); the others as they are (their
        // candidates are confirmed under the lock).
        let (found_before, candidates) = if page == first_page {
            read_stable(shard_of(page << PAGE_SHIFT), || {
                page_candidates(page, start, end, true)
            })
            .0
        } else {
            page_candidates(page, start, end, false)
        };
        let before = match found_before {
            Some(Before::At(s)) => Some(s),
            Some(Before::Cover) => covering_start(start, page),
            None => None,
        };
        if let Some(s) = before.filter(|&s| s < start) {
            confirm(s);
        }
        for s in candidates {
            confirm(s);
        }
        page += 1;
    }
    removed
}

/// Where the region that contains a new region's start but begins before it
/// is: at this start, or named by the page's cover or the huge list.
#[derive(Clone, Copy)]
enum Before {
    At(usize),
    Cover,
}

/// The records of `page` that start in `[start, end)` (a vacant one at
/// `start` excepted: the new region takes its place), and, for the page
/// `start` is in (`first`), where the region that contains `start` but
/// begins before it is: the page's greatest start below it, else the
/// page's cover or the huge list (asked by the caller, outside this read).
fn page_candidates(
    page: usize,
    start: usize,
    end: usize,
    first: bool,
) -> (Option<Before>, Vec<usize>) {
    let base = page << PAGE_SHIFT;
    let mut candidates = Vec::new();
    let Some((b, len)) = page_slot(page).and_then(PageSlot::block) else {
        return (first.then_some(Before::Cover), candidates);
    };
    let len = len.min(b.cap());
    let from = start.max(base) & PAGE_MASK;
    let pred = b.predecessor(len, from);
    let before = match pred {
        _ if !first => None,
        Some(i) if b.off(i) < from => {
            let r = b.info(i, base | b.off(i));
            (r.flags & super::flags::VACANT == 0 && r.start.saturating_add(r.size.max(1)) > start)
                .then_some(Before::At(r.start))
        }
        Some(_) => None,
        None => Some(Before::Cover),
    };
    let first_ix = match pred {
        Some(i) if b.off(i) == from => i,
        Some(i) => i + 1,
        None => 0,
    };
    for i in first_ix..len {
        let s = base | b.off(i);
        if s >= end {
            break;
        }
        if s == start && rec_vacant(b.rec(i)) {
            // The new region takes this place as it is (confirmed again
            // under the lock, by the insertion itself).
            continue;
        }
        candidates.push(s);
    }
    (before, candidates)
}

pub(super) fn forget_removed(r: &Region) {
    crate::stats::region_gone(
        r.kind == RegionKind::C,
        r.size,
        r.state == RegionState::Live,
    );
}

/// Forgets the region starting at `start` without quarantining it.
pub(crate) fn remove(start: usize) -> Option<RegionInfo> {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    // Most removes of an untracked pointer (a mode-0 free) find nothing:
    // they are answered without the lock, and without changing the shard's
    // sequence number (which would void other threads' recent answers).
    read_stable(shard_of(start), || probe_exact(start)).0?;
    let r = shard_of(start).write().remove(start)?;
    // A freed record's quarantine entry is skipped on eviction (id mismatch).
    let info = RegionInfo {
        start,
        size: r.size,
        id: r.id(),
        pins: r.pins,
        kind: r.kind,
        state: r.state,
        family: r.family,
        flags: r.flags,
    };
    if info.kind == RegionKind::C && info.state == RegionState::Live {
        live_c::gone(start, info.id);
    }
    forget_removed(&r);
    Some(info)
}
