//! Each thread's recent answers.
//!
//! **Recent answers.** A thread also keeps its last few answers with the
//! sequence number of the shard they came from; while the shard has not
//! changed, the answer holds, and the scan asks it one byte (is this live,
//! unpinned managed memory?) without reading the record.
//!
//! Invariant: a kept answer is used only while its shard's sequence number
//! is the one kept with it.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::bounds::{MANAGED_HI, MANAGED_LO};
use super::lookup::find;
use super::shard::Shard;
use super::{RegionInfo, RegionKind, RegionState};

/// A thread's recent answers: the regions it found lately, each with the
/// sequence number of the shard it came from. While that shard has not
/// changed, the answer holds, and a lookup that hits here reads no
/// directory and no record.
///
/// Kept as parallel arrays of small cells, so a probe compares two words per
/// entry and copies out only the answer it returns.
struct RecentHits {
    ranges: [Cell<(usize, usize)>; RECENT],
    /// Whether the answer is live unpinned managed memory: what the pointer
    /// scan asks of every candidate word, kept apart so it reads one byte.
    unpinned: [Cell<bool>; RECENT],
    versions: [Cell<u64>; RECENT],
    shards: [Cell<Option<&'static Shard>>; RECENT],
    infos: [Cell<RegionInfo>; RECENT],
    next: Cell<usize>,
}

const RECENT: usize = 4;

const NO_INFO: RegionInfo = RegionInfo {
    start: 0,
    size: 0,
    id: 0,
    pins: 0,
    kind: RegionKind::C,
    state: RegionState::Freed,
    family: 0,
    flags: 0,
};

thread_local! {
    static RECENT_HITS: RecentHits = const {
        RecentHits {
            ranges: [const { Cell::new((0, 0)) }; RECENT],
            unpinned: [const { Cell::new(false) }; RECENT],
            versions: [const { Cell::new(0) }; RECENT],
            shards: [const { Cell::new(None) }; RECENT],
            infos: [const { Cell::new(NO_INFO) }; RECENT],
            next: Cell::new(0),
        }
    };
}

pub(super) fn remember(shard: &'static Shard, version: u64, info: RegionInfo) {
    let _ = RECENT_HITS.try_with(|r| {
        let i = r.next.get();
        r.next.set((i + 1) % RECENT);
        r.ranges[i].set((info.start, info.start.saturating_add(info.size.max(1))));
        r.unpinned[i].set(info.is_unpinned_managed());
        r.versions[i].set(version);
        r.shards[i].set(Some(shard));
        r.infos[i].set(info);
    });
}

impl RecentHits {
    /// The entry whose region contains `addr`, if its shard has not
    /// changed since the answer was kept.
    #[inline(always)]
    fn valid_entry(&self, addr: usize) -> Option<usize> {
        let i = self.ranges.iter().position(|c| {
            let (start, end) = c.get();
            start <= addr && addr < end
        })?;
        let shard = self.shards[i].get()?;
        (shard.version.load(Ordering::Acquire) == self.versions[i].get()).then_some(i)
    }
}

#[inline(always)]
pub(super) fn recall(addr: usize) -> Option<RegionInfo> {
    RECENT_HITS
        .try_with(|r| r.valid_entry(addr).map(|i| r.infos[i].get()))
        .ok()
        .flatten()
}

/// For the pointer scan: the start of the live, unpinned managed region that
/// contains `addr`, if that is what `addr` points into. A still-valid recent
/// answer settles it without reading a record.
#[inline(always)]
pub(crate) fn unpinned_managed_start(addr: usize, remember: bool) -> Option<usize> {
    if addr < MANAGED_LO.load(Ordering::Relaxed) || addr >= MANAGED_HI.load(Ordering::Relaxed) {
        return None;
    }
    let recalled = RECENT_HITS
        .try_with(|r| {
            r.valid_entry(addr)
                .map(|i| r.unpinned[i].get().then(|| r.ranges[i].get().0))
        })
        .ok()
        .flatten();
    match recalled {
        Some(answer) => answer,
        None => find(addr, remember)
            .filter(RegionInfo::is_unpinned_managed)
            .map(|r| r.start),
    }
}
