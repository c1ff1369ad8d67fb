//! The per-page unpinned counts, and the long pointer scan's reader that
//! asks them before any lookup.
//!
//! **Unpinned counts.** Beside each page's slot, the directory keeps a
//! 2-byte count of the live, unpinned managed regions that start in the
//! page, kept by every write that makes a record start or stop being one
//! (insert, pin, unpin, free, remove, purge): one count a change, whatever
//! the region's size. A long pointer scan asks a word's page before any
//! lookup: a zero count, a cover (if any) that is not unpinned managed
//! memory, and no huge region mean no region there can break rule P1, so
//! an array of pointers to pinned values, which an allocator puts side by
//! side in a few pages, costs a few loads a word. A missed decrement would
//! only cost lookups; a missed increment would hide violations, so the
//! tests compare every count with a model.
//!
//! Invariant (held under each shard's lock, and at every even sequence
//! number):
//! - a page's unpinned count is the number of live, unpinned managed records
//!   that start in it.

use std::sync::atomic::{AtomicU16, Ordering};

use super::block::{PAGE_MASK, PAGE_SHIFT};
use super::bounds::{MANAGED_HI, MANAGED_LO};
use super::directory::{leaf_or_create, page_entry, PageSlot, FANOUT, HUGE_COUNT};
use super::lookup::{find_versioned, probe_exact};
use super::recent::remember;
use super::shard::{read_stable, shard_of, Shard};
use super::{RegionInfo, RegionKind};

/// Adds one to (`up`) or takes one from the unpinned count of the page
/// `start` is in. Called inside a write of `start`'s shard whenever a
/// record starts or stops being live, unpinned managed memory; only that
/// shard's writers change the count, so a load and a store do. With the
/// page's cover (the one region that reaches into it from before), a count
/// of zero proves that no such region contains an address of the page, and
/// the pointer scan dismisses the address without a lookup. A page holds at
/// most 4096 starts, so the count never wraps; a count left too high would
/// only cost lookups.
pub(super) fn count_unpinned(start: usize, up: bool) {
    let page = start >> PAGE_SHIFT;
    let count = &leaf_or_create(page).1[page & (FANOUT - 1)];
    let n = count.load(Ordering::Relaxed);
    let n = if up {
        n.wrapping_add(1)
    } else {
        n.wrapping_sub(1)
    };
    count.store(n, Ordering::Relaxed);
}

/// Lookups for a long scan. Lookups take no lock, so the reader holds
/// nothing between them; it keeps its last answer instead (valid while that
/// region's shard is unchanged), so a run of words pointing into one region
/// (an array of pointers into one buffer) skips the directory, and it
/// leaves the thread's recent answers alone while it scans (a long scan
/// would flush them without profit). Dropped, it hands its last answer to
/// them: the region a scan found is the one its caller asks about next.
///
/// It also keeps the slot and unpinned count of the last page it asked
/// about (neither ever moves), and whether that page's cover is unpinned
/// managed memory (valid while the cover's shard is unchanged), so a run of
/// words pointing into pages where no unpinned managed region starts or
/// reaches (an array of pointers to pinned values, which an allocator puts
/// side by side) costs a few loads a word and no lookup.
pub(crate) struct ScanReader {
    last: Option<(RegionInfo, &'static Shard, u64)>,
    page: usize,
    entry: Option<(&'static PageSlot, &'static AtomicU16)>,
    /// The page's cover word, its shard and sequence number, and whether
    /// it names live, unpinned managed memory.
    cover: Option<(u32, &'static Shard, u64, bool)>,
}

impl ScanReader {
    pub(crate) fn new() -> ScanReader {
        ScanReader {
            last: None,
            page: usize::MAX,
            entry: None,
            cover: None,
        }
    }

    /// The start of the live, unpinned managed region that contains `addr`,
    /// if that is what `addr` points into.
    #[inline(always)]
    pub(crate) fn unpinned_managed_start(&mut self, addr: usize) -> Option<usize> {
        if addr < MANAGED_LO.load(Ordering::Relaxed) || addr >= MANAGED_HI.load(Ordering::Relaxed) {
            return None;
        }
        if !self.page_may_hold_unpinned(addr) {
            return None;
        }
        self.lookup_managed(addr)
            .filter(RegionInfo::is_unpinned_managed)
            .map(|r| r.start)
    }

    /// The managed region (live or freed, pinned or not) that contains
    /// `addr`, when the page filter lets `addr` through; `None` when no
    /// live, unpinned managed region can contain it. For a caller that
    /// remembers the region for the addresses around (the mode-2 scan).
    #[inline]
    pub(crate) fn managed_region(&mut self, addr: usize) -> Option<RegionInfo> {
        if addr < MANAGED_LO.load(Ordering::Relaxed) || addr >= MANAGED_HI.load(Ordering::Relaxed) {
            return None;
        }
        if !self.page_may_hold_unpinned(addr) {
            return None;
        }
        self.lookup_managed(addr)
    }

    /// False when no live, unpinned managed region contains an address of
    /// `addr`'s page: none starts in it (its count is zero), the region that
    /// reaches into it from before (its cover), if any, is not one, and no
    /// huge region (which writes no covers) exists.
    #[inline(always)]
    fn page_may_hold_unpinned(&mut self, addr: usize) -> bool {
        if HUGE_COUNT.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let page = addr >> PAGE_SHIFT;
        if page != self.page {
            // A page without a leaf has no region and is not kept: its
            // leaf may appear.
            let Some(entry) = page_entry(page) else {
                return false;
            };
            (self.page, self.entry, self.cover) = (page, Some(entry), None);
        }
        let Some((slot, count)) = self.entry else {
            return true;
        };
        // A count changes inside the write that changes the record it
        // counts, and is read as one word: the value seen was exact at some
        // moment of the scan, as a lookup's answer is.
        if count.load(Ordering::Relaxed) != 0 {
            return true;
        }
        let c = slot.cover.load(Ordering::Acquire);
        if c == 0 {
            return false;
        }
        if let Some((kept, shard, version, unpinned)) = self.cover {
            if kept == c && shard.version.load(Ordering::Acquire) == version {
                return unpinned;
            }
        }
        self.cover_unpinned(page, c)
    }

    /// Whether the cover `c` of `page` names live, unpinned managed memory
    /// (kept until the page, the cover or its shard changes).
    #[inline(never)]
    fn cover_unpinned(&mut self, page: usize, c: u32) -> bool {
        let (back, off) = (c as usize >> PAGE_SHIFT, c as usize & PAGE_MASK);
        if back > page {
            return true;
        }
        let start = ((page - back) << PAGE_SHIFT) | off;
        let shard = shard_of(start);
        let (answer, version) = read_stable(shard, || probe_exact(start));
        let unpinned = answer.is_some_and(|r| r.is_unpinned_managed());
        self.cover = Some((c, shard, version, unpinned));
        unpinned
    }

    /// The managed region (live or freed) that contains `addr`, if any.
    fn lookup_managed(&mut self, addr: usize) -> Option<RegionInfo> {
        if addr < MANAGED_LO.load(Ordering::Relaxed) || addr >= MANAGED_HI.load(Ordering::Relaxed) {
            return None;
        }
        let still_valid = self.last.filter(|(info, shard, version)| {
            info.contains(addr) && shard.version.load(Ordering::Acquire) == *version
        });
        let found = match still_valid {
            Some(last) => Some(last),
            None => find_versioned(addr),
        };
        if found.is_some() {
            self.last = found;
        }
        found
            .map(|(info, _, _)| info)
            .filter(|r| r.kind == RegionKind::Managed)
    }
}

impl Drop for ScanReader {
    fn drop(&mut self) {
        if let Some((info, shard, version)) = self.last.take() {
            remember(shard, version, info);
        }
    }
}
