//! The live C regions, listed apart from the records: what the mode-2 scan
//! reads, found without visiting every record (a million of them in mode 2,
//! most of them freed and quarantined).
//!
//! The list is kept only once a mode-2 scan has asked for it ([`spans`]
//! switches it on and fills it from the records once); before that, a C
//! region costs nothing more to register or free.
//!
//! Invariant: while the list is on, it holds every live C record, by start,
//! with its id, and no entry an older id than the record at the same start
//! (an entry is dropped only with the id it was added with, so a free that
//! comes late never drops the entry of a newer region at the same address).
//! Stale entries of ranges a newer region overlaps are dropped by that
//! region's insert. Entries are added under the record's shard lock when the
//! list is filled, and after the record was written otherwise, so the list
//! never misses a region that is live.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{RegionKind, RegionState};
use crate::writewatch::Unwatched;

/// Whether the list is kept.
static ON: AtomicBool = AtomicBool::new(false);

/// The live C regions, start → (size, id), and the pages they cover,
/// merged into ranges, as of the last change (`None` once stale).
pub(crate) struct Live {
    regions: BTreeMap<usize, (usize, u64)>,
    hulls: Option<Vec<(usize, usize)>>,
}

/// Off the watched pages (see `writewatch::Unwatched`): every scan takes
/// this lock.
static LIVE: Unwatched<Mutex<Live>> = Unwatched::new(|| {
    Mutex::new(Live {
        regions: BTreeMap::new(),
        hulls: None,
    })
});

fn live() -> MutexGuard<'static, Live> {
    // Every change is completed before anything that could panic.
    LIVE.get().lock().unwrap_or_else(|e| e.into_inner())
}

/// A region was registered: `[start, start + size)`, with `id`; listed
/// when it is C memory.
pub(super) fn added(start: usize, size: usize, id: u64, c: bool) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let _g = crate::bookkeeping::bookkeeping();
    let end = start.saturating_add(size.max(1));
    let mut guard = live();
    let live = &mut *guard;
    // Older entries the new region overlaps are stale (their records were
    // purged by this insert).
    let stale: Vec<usize> = live
        .regions
        .range(..end)
        .rev()
        .take_while(|(&s, &(len, _))| s >= start || s.saturating_add(len.max(1)) > start)
        .filter(|(&s, &(len, old))| old < id && s.saturating_add(len.max(1)) > start)
        .map(|(&s, _)| s)
        .collect();
    if !stale.is_empty() {
        live.hulls = None;
    }
    for s in stale {
        live.regions.remove(&s);
    }
    match live.regions.get(&start) {
        _ if !c => {}
        Some(&(_, old)) if old > id => {}
        _ => {
            live.regions.insert(start, (size, id));
            live.hulls = None;
        }
    }
}

/// The C region `id` at `start` is no longer live (freed or forgotten).
pub(super) fn gone(start: usize, id: u64) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let _g = crate::bookkeeping::bookkeeping();
    let mut live = live();
    if live.regions.get(&start).is_some_and(|&(_, old)| old == id) {
        live.regions.remove(&start);
        live.hulls = None;
    }
}

/// Calls `f(start, size)` for every live C region, in address order. The
/// first call switches the list on and fills it from the records (one visit
/// of every record, once per process). `f` runs under the list's lock and
/// must not register or free regions.
pub(crate) fn spans(mut f: impl FnMut(usize, usize)) {
    switch_on();
    let _g = crate::bookkeeping::bookkeeping();
    for (&start, &(size, _)) in live().regions.iter() {
        f(start, size);
    }
}

/// The pages the live C regions cover, as sorted, merged `(start, end)`
/// ranges of `page`-aligned addresses: recomputed only after a region came
/// or went, so a scan between changes pays for the ranges, not the regions.
pub(crate) fn hulls(page: usize) -> Vec<(usize, usize)> {
    switch_on();
    let _g = crate::bookkeeping::bookkeeping();
    let mut guard = live();
    let live = &mut *guard;
    if live.hulls.is_none() {
        let mut hulls: Vec<(usize, usize)> = Vec::new();
        for (&start, &(size, _)) in &live.regions {
            let s = start & !(page - 1);
            let e = start.saturating_add(size.max(1)).saturating_add(page - 1) & !(page - 1);
            match hulls.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => hulls.push((s, e)),
            }
        }
        live.hulls = Some(hulls);
    }
    live.hulls.clone().unwrap_or_default()
}

/// Calls `f(start, size)` for every live C region that overlaps
/// `[from, to)`, in address order. As [`spans`], under the list's lock.
pub(crate) fn spans_in(from: usize, to: usize, mut f: impl FnMut(usize, usize)) {
    switch_on();
    let _g = crate::bookkeeping::bookkeeping();
    let live = live();
    // The region that starts before `from` may reach into it (regions do
    // not overlap, so only the last one before can).
    if let Some((&start, &(size, _))) = live.regions.range(..from).next_back() {
        if start.saturating_add(size.max(1)) > from {
            f(start, size);
        }
    }
    for (&start, &(size, _)) in live.regions.range(from..to) {
        f(start, size);
    }
}

/// Switches the list on, filling it from the records the first time.
fn switch_on() {
    // A load first: the flag is a static, and a swap would write its page
    // at every scan.
    if !ON.load(Ordering::Acquire) && !ON.swap(true, Ordering::AcqRel) {
        // From now on every insert and free keeps the list; the records
        // live before are added here, each under its shard's lock, so a
        // free that follows one is seen after its entry.
        super::for_each(|start, r| {
            if r.kind == RegionKind::C && r.state == RegionState::Live {
                added(start, r.size, r.id(), true);
            }
        });
    }
}

/// The list's lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _live: MutexGuard<'static, Live>,
}

pub(super) fn lock_for_fork() -> ForkLock {
    ForkLock { _live: live() }
}
