//! The lock-free containing-address lookup.
//!
//! A lookup is one directory walk, one search over at most a page's worth of
//! 2-byte offsets, and one record read; if nothing starts in the page at or
//! below the address, the page's cover names the only candidate. Nothing
//! grows with the number of regions. The search starts where the offset would
//! sit if the page's regions were spread evenly (in an allocator's page of one
//! size class they are), and the record at that guess is read together with
//! the guessed offset, so a lookup of memory that is in no cache usually waits
//! for one miss rather than three in a row.
//!
//! A lookup changes nothing shared and keeps no invariant of its own: it
//! relies on those of the blocks, the directory and the shards, and its
//! answer is one consistent state of the shard it read (see
//! [`read_stable`]).

use std::sync::atomic::Ordering;

use super::block::{guess, PAGE_MASK, PAGE_SHIFT};
use super::bounds::{HI, LO};
use super::directory::{huge_containing, page_slot, PageSlot, HUGE_COUNT};
use super::recent::{recall, remember};
use super::record::info_of;
use super::shard::{read_stable, shard_of, Shard, ShardInner};
use super::{flags, RegionInfo};

/// The region (live or quarantined) that contains `addr`, if any. Freed
/// records whose memory was already given back are not trusted here: the
/// range may belong to someone else by now.
#[inline]
pub(crate) fn lookup(addr: usize) -> Option<RegionInfo> {
    if addr < LO.load(Ordering::Relaxed) || addr >= HI.load(Ordering::Relaxed) {
        return None;
    }
    lookup_slow(addr, true).filter(|r| r.flags & flags::RELEASED == 0)
}

/// Like [`lookup`], including released records: what a free asks, since a
/// second free of the exact same pointer is a double free either way.
pub(crate) fn lookup_for_free(addr: usize) -> Option<RegionInfo> {
    if addr < LO.load(Ordering::Relaxed) || addr >= HI.load(Ordering::Relaxed) {
        return None;
    }
    lookup_slow(addr, true)
}

/// What one page says about an address.
#[derive(Clone, Copy)]
enum Probe {
    /// The region that contains it.
    Hit(RegionInfo),
    /// The greatest start at or below it is the page's, and ends before it.
    Miss,
    /// Nothing in the page starts at or below it: ask the page's cover.
    Before,
}

/// The page's answer. The record at the guessed index is read together with
/// the guessed offset, before either is known to be right: when the guess
/// holds (the usual case), a lookup of memory that is not in any cache
/// waits for one miss, not one after another.
#[inline(always)]
fn probe(page: usize, addr: usize) -> Probe {
    let Some((b, len)) = page_slot(page).and_then(PageSlot::block) else {
        return Probe::Before;
    };
    let len = len.min(b.cap());
    if len == 0 {
        return Probe::Before;
    }
    let off = addr & PAGE_MASK;
    let g = guess(len, off);
    let at_g = b.off(g);
    let guessed = info_of(b.rec(g), 0);
    let Some(i) = b.predecessor_near(len, off, g, at_g) else {
        return Probe::Before;
    };
    let start = (page << PAGE_SHIFT) | b.off(i);
    let info = if i == g {
        RegionInfo { start, ..guessed }
    } else {
        b.info(i, start)
    };
    // A vacant record is no region; nothing contains its start, so no
    // region of an earlier page reaches past it either.
    if info.contains(addr) && info.flags & flags::VACANT == 0 {
        Probe::Hit(info)
    } else {
        Probe::Miss
    }
}

/// The record that starts exactly at `start`, read without a lock.
pub(super) fn probe_exact(start: usize) -> Option<RegionInfo> {
    let (b, i) = ShardInner::find_exact(start)?;
    Some(b.info(i, start))
}

/// The small facts of the region that starts exactly at `start` and the
/// retains C holds on it, read without a lock: what a drop asks first (rule
/// P3). A retain racing the drop is as racy with a lock as without one; a
/// read that takes no lock also leaves the shard's sequence number, and so
/// every thread's recent answers, alone.
pub(crate) fn exact_facts(start: usize) -> Option<(RegionInfo, u16)> {
    read_stable(shard_of(start), || {
        let (b, i) = ShardInner::find_exact(start)?;
        Some((b.info(i, start), super::record::retains_of(b.rec(i))))
    })
    .0
}

/// The lock-free lookup: the address's page, then its cover (or the huge
/// list). `keep` stores the answer in the thread's recent answers.
#[inline(never)]
pub(super) fn find(addr: usize, keep: bool) -> Option<RegionInfo> {
    let (info, shard, version) = find_versioned(addr)?;
    if keep {
        remember(shard, version, info);
    }
    Some(info)
}

/// The region that contains `addr`, with the shard it belongs to and the
/// sequence number the answer is valid for.
#[inline(always)]
pub(super) fn find_versioned(addr: usize) -> Option<(RegionInfo, &'static Shard, u64)> {
    let page = addr >> PAGE_SHIFT;
    let shard = shard_of(addr);
    let (answer, version) = read_stable(shard, || probe(page, addr));
    match answer {
        Probe::Hit(info) => Some((info, shard, version)),
        Probe::Miss => None,
        Probe::Before => find_covering(addr, page),
    }
}

/// The start of the region that reaches into `page` from before it (its
/// cover), or else of the huge region, if it contains `addr` (a
/// registration's purge confirms it under its shard's lock).
pub(super) fn covering_start(addr: usize, page: usize) -> Option<usize> {
    find_covering(addr, page).map(|(r, _, _)| r.start)
}

#[inline(always)]
fn find_covering(addr: usize, page: usize) -> Option<(RegionInfo, &'static Shard, u64)> {
    let cover = page_slot(page).and_then(|s| s.cover_start(page));
    let start = match cover {
        Some(start) => start,
        None if HUGE_COUNT.load(Ordering::Relaxed) > 0 => huge_containing(addr)?,
        None => return None,
    };
    let shard = shard_of(start);
    let (answer, version) = read_stable(shard, || probe_exact(start));
    let info = answer.filter(|r| r.contains(addr))?;
    Some((info, shard, version))
}

/// The lookup behind the bounds pre-filter: the thread's recent answers
/// first, then the directory.
#[inline(always)]
fn lookup_slow(addr: usize, keep: bool) -> Option<RegionInfo> {
    match recall(addr) {
        Some(info) => Some(info),
        None => find(addr, keep),
    }
}
