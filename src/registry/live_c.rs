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

/// Whether the list is kept.
static ON: AtomicBool = AtomicBool::new(false);

/// Start → (size, id).
static LIVE: Mutex<BTreeMap<usize, (usize, u64)>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, (usize, u64)>> {
    // Every change is completed before anything that could panic.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A region was registered: `[start, start + size)`, with `id`; listed
/// when it is C memory.
pub(super) fn added(start: usize, size: usize, id: u64, c: bool) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let _g = crate::bookkeeping::bookkeeping();
    let end = start.saturating_add(size.max(1));
    let mut live = live();
    // Older entries the new region overlaps are stale (their records were
    // purged by this insert).
    let stale: Vec<usize> = live
        .range(..end)
        .rev()
        .take_while(|(&s, &(len, _))| s >= start || s.saturating_add(len.max(1)) > start)
        .filter(|(&s, &(len, old))| old < id && s.saturating_add(len.max(1)) > start)
        .map(|(&s, _)| s)
        .collect();
    for s in stale {
        live.remove(&s);
    }
    match live.get(&start) {
        _ if !c => {}
        Some(&(_, old)) if old > id => {}
        _ => {
            live.insert(start, (size, id));
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
    if live.get(&start).is_some_and(|&(_, old)| old == id) {
        live.remove(&start);
    }
}

/// Calls `f(start, size)` for every live C region, in address order. The
/// first call switches the list on and fills it from the records (one visit
/// of every record, once per process). `f` runs under the list's lock and
/// must not register or free regions.
pub(crate) fn spans(mut f: impl FnMut(usize, usize)) {
    if !ON.swap(true, Ordering::AcqRel) {
        // From now on every insert and free keeps the list; the records
        // live before are added here, each under its shard's lock, so a
        // free that follows one is seen after its entry.
        super::for_each(|start, r| {
            if r.kind == RegionKind::C && r.state == RegionState::Live {
                added(start, r.size, r.id(), true);
            }
        });
    }
    let _g = crate::bookkeeping::bookkeeping();
    for (&start, &(size, _)) in live().iter() {
        f(start, size);
    }
}

/// The list's lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _live: MutexGuard<'static, BTreeMap<usize, (usize, u64)>>,
}

pub(super) fn lock_for_fork() -> ForkLock {
    ForkLock { _live: live() }
}
