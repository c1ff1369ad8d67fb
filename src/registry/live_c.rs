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
/// merged into ranges (`None` until a scan asks, or after stale entries
/// were dropped), with the page size they were computed for. A region that
/// comes or goes updates the ranges in place: a program that allocates and
/// frees C memory around every call pays for the ranges near it, not a walk
/// of all live regions.
pub(crate) struct Live {
    regions: BTreeMap<usize, (usize, u64)>,
    hulls: Option<(usize, Vec<(usize, usize)>)>,
}

/// The widest guard a C region carries on each side: mode 2's guarded
/// `CBox` blocks have their guard bytes just outside the region
/// (`crate::guard::GUARD`, which asserts it fits), and the write watch must
/// see C write there too (a block that starts on a page boundary has its
/// front guard on the page before).
pub(crate) const GUARD_PAD: usize = 16;

/// The pages `[start, start + size)` and the guard bytes around it touch,
/// `page`-aligned.
fn pages_of(start: usize, size: usize, page: usize) -> (usize, usize) {
    (
        start.saturating_sub(GUARD_PAD) & !(page - 1),
        start
            .saturating_add(size.max(1))
            .saturating_add(GUARD_PAD)
            .saturating_add(page - 1)
            & !(page - 1),
    )
}

/// Adds the pages `[s, e)` to sorted, disjoint ranges that merge when they
/// touch.
fn add_pages(hulls: &mut Vec<(usize, usize)>, s: usize, e: usize) {
    let i = hulls.partition_point(|h| h.1 < s);
    let j = hulls.partition_point(|h| h.0 <= e);
    if i == j {
        hulls.insert(i, (s, e));
    } else {
        let merged = (s.min(hulls[i].0), e.max(hulls[j - 1].1));
        hulls.splice(i..j, [merged]);
    }
}

/// Takes the pages `[s, e)` out of the ranges (they lie in one of them).
fn remove_pages(hulls: &mut Vec<(usize, usize)>, s: usize, e: usize) {
    let i = hulls.partition_point(|h| h.1 <= s);
    let Some(&(hs, he)) = hulls.get(i) else {
        return;
    };
    if hs >= e {
        return;
    }
    let pieces = [(hs, s.max(hs)), (e.min(he), he)];
    hulls.splice(i..=i, pieces.into_iter().filter(|p| p.0 < p.1));
}

impl Live {
    /// The region at `start` (`size` bytes) left the list: its pages that
    /// no neighbour shares leave the ranges.
    fn forget_pages(&mut self, start: usize, size: usize) {
        let Some((page, hulls)) = &mut self.hulls else {
            return;
        };
        let page = *page;
        let (mut s, mut e) = pages_of(start, size, page);
        // Regions do not overlap: only the one before can share the first
        // page, and only the one after the last.
        if let Some((&ps, &(plen, _))) = self.regions.range(..start).next_back() {
            if pages_of(ps, plen, page).1 > s {
                s += page;
            }
        }
        if let Some((&ns, &(nlen, _))) = self.regions.range(start..).next() {
            if pages_of(ns, nlen, page).0 < e {
                e -= page;
            }
        }
        if s < e {
            remove_pages(hulls, s, e);
        }
    }
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
#[inline]
pub(super) fn added(start: usize, size: usize, id: u64, c: bool) {
    // Off until the first mode-2 scan asks: one load on the common path.
    if ON.load(Ordering::Acquire) {
        add_listed(start, size, id, c);
    }
}

#[inline(never)]
fn add_listed(start: usize, size: usize, id: u64, c: bool) {
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
            if let Some(&(old_size, _)) = live.regions.get(&start) {
                live.regions.remove(&start);
                live.forget_pages(start, old_size);
            }
            live.regions.insert(start, (size, id));
            if let Some((page, hulls)) = &mut live.hulls {
                let (s, e) = pages_of(start, size, *page);
                add_pages(hulls, s, e);
            }
        }
    }
}

/// The C region `id` at `start` is no longer live (freed or forgotten).
#[inline]
pub(super) fn gone(start: usize, id: u64) {
    if ON.load(Ordering::Acquire) {
        forget_listed(start, id);
    }
}

#[inline(never)]
fn forget_listed(start: usize, id: u64) {
    let _g = crate::bookkeeping::bookkeeping();
    let mut live = live();
    if let Some(&(size, old)) = live.regions.get(&start) {
        if old == id {
            live.regions.remove(&start);
            live.forget_pages(start, size);
        }
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
    if !matches!(&live.hulls, Some((p, _)) if *p == page) {
        live.hulls = Some((page, compute_hulls(&live.regions, page)));
    }
    live.hulls
        .as_ref()
        .map(|(_, h)| h.clone())
        .unwrap_or_default()
}

/// The pages of all the regions, merged: one walk of them all.
fn compute_hulls(regions: &BTreeMap<usize, (usize, u64)>, page: usize) -> Vec<(usize, usize)> {
    let mut hulls: Vec<(usize, usize)> = Vec::new();
    for (&start, &(size, _)) in regions {
        let (s, e) = pages_of(start, size, page);
        match hulls.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => hulls.push((s, e)),
        }
    }
    hulls
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranges kept in place as regions come and go are the ones a walk
    /// of all regions computes, at every step (small regions sharing pages,
    /// regions spanning pages, neighbours touching).
    #[test]
    fn ranges_kept_in_place_match_a_full_walk() {
        const PAGE: usize = 4096;
        let mut live = Live {
            regions: BTreeMap::new(),
            hulls: Some((PAGE, Vec::new())),
        };
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for step in 0..20_000 {
            // Slots of 64 bytes over 64 pages: a region takes a few slots.
            let slot = (next() % 4096) as usize;
            let start = 0x10_0000 + slot * 64;
            let size = [8, 48, 64, 200, 5000, 9000][(next() % 6) as usize];
            let end = start + size;
            let overlaps = live
                .regions
                .range(..end)
                .next_back()
                .is_some_and(|(&s, &(len, _))| s + len.max(1) > start);
            if let Some(&(len, _)) = live.regions.get(&start) {
                live.regions.remove(&start);
                live.forget_pages(start, len);
            } else if !overlaps {
                live.regions.insert(start, (size, step));
                if let Some((page, hulls)) = &mut live.hulls {
                    let (s, e) = pages_of(start, size, *page);
                    add_pages(hulls, s, e);
                }
            }
            let kept = &live.hulls.as_ref().unwrap().1;
            assert_eq!(kept, &compute_hulls(&live.regions, PAGE), "step {step}");
        }
    }
}
