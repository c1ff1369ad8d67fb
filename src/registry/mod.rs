//! The registry: every tracked region, live or recently freed, and the
//! containing-address lookup that every check asks.
//!
//! # Design
//!
//! Regions never overlap (they come from real allocators; a record that a new
//! allocation overlaps is stale and is dropped), so the only region that can
//! contain an address is the one with the greatest start at or below it.
//!
//! The address space is cut into 4 KiB pages. The registry is made of these
//! parts, each of which states what it holds and the invariants it keeps:
//!
//! - [`block`]: the records of the regions that start in one page, after
//!   the sorted offsets of their starts; the blocks' size classes and the
//!   arena they are carved from.
//! - [`record`]: a stored record (four words) and its encoding: decoding a
//!   record into a [`Region`] and encoding it back.
//! - [`directory`]: the four-level page directory (each page's slot and
//!   cover) and the list of huge regions.
//! - [`shard`]: the shards, their sequence numbers (reads take no lock) and
//!   the writer's primitives that add and remove a page's records.
//! - [`lookup`](mod@lookup): the lock-free containing-address lookup.
//! - [`recent`]: each thread's recent answers.
//! - [`unpinned`]: the per-page unpinned counts, and the long scan's reader
//!   that asks them before any lookup.
//! - [`quarantine`]: freed regions, held back from reuse.
//! - [`sites`]: the interned allocation sites.
//! - [`ids`]: region ids and thread serials.
//! - [`bounds`]: the lowest and highest address ever tracked.
//! - [`register`]: registering and forgetting regions.
//! - [`live_c`]: the live C regions, listed for the mode-2 scan.
//!
//! This module holds the region types the rest of the crate sees, the
//! operations on one record under its shard's lock ([`update`],
//! [`update_containing`], [`for_each`], [`detail`]), and re-exports the rest
//! of the registry's face from the parts.
//!
//! Every part's invariants are held under each shard's lock (and at every
//! even sequence number).
//!
//! Lock order: a shard's mutex, then the directory's, the huge list's or the
//! site table's (never the other way round); no two shard mutexes at once
//! (only `fork`'s prepare handler holds them all, taken in index order). Under
//! a shard's mutex the thread does bookkeeping, so no free made there takes
//! the tracking allocator's locks. Where these stand among the crate's other
//! locks: `crate::fork`.

mod block;
mod bounds;
mod directory;
mod ids;
mod live_c;
mod lookup;
mod quarantine;
mod recent;
mod record;
mod register;
mod shard;
mod sites;
#[cfg(test)]
mod tests;
mod unpinned;

use std::sync::atomic::Ordering;

use crate::site::Site;
use crate::stackdepot::StackId;

use block::PAGE_SHIFT;
use ids::THREAD_BITS;
use record::W_INDICES;
use shard::{shard_of, ShardInner, SHARDS};
use sites::provenance_at;

pub(crate) use bounds::{bound_words, managed_bounds, nothing_live};
pub(crate) use ids::{new_id, next_id, thread_serial};
pub(crate) use live_c::{
    hulls as live_c_hulls, spans as live_c_spans, spans_in as live_c_spans_in, GUARD_PAD,
};
pub(crate) use lookup::{exact_facts, lookup, lookup_for_free};
pub(crate) use quarantine::{mark_freed, mark_freed_if, Marked, Release};
pub(crate) use recent::unpinned_managed_start;
pub use record::REGION_RECORD_BYTES;
pub(crate) use register::{insert, promote_heap_block, remove, NewRegion};
pub(crate) use unpinned::ScanReader;

/// What kind of memory a region is.
///
/// ```
/// use ffi_check::RegionKind;
/// assert_eq!(RegionKind::Managed.to_string(), "managed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RegionKind {
    /// Memory Rust owns and Rust frees (`Managed`, `Pinned`).
    Managed,
    /// Memory from a C allocator (`CBox`, `c_malloc`, `ffi_check_malloc`).
    C,
}

impl std::fmt::Display for RegionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegionKind::Managed => "managed",
            RegionKind::C => "C",
        })
    }
}

/// Whether a region is still allocated.
///
/// ```
/// use ffi_check::RegionState;
/// assert_eq!(RegionState::Freed.to_string(), "freed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RegionState {
    /// Allocated.
    Live,
    /// Freed, and remembered in the quarantine.
    Freed,
}

impl std::fmt::Display for RegionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegionState::Live => "live",
            RegionState::Freed => "freed",
        })
    }
}

/// Region flags.
pub(crate) mod flags {
    /// The region's type can hold an aligned pointer: lending it scans it.
    pub const HOLDS_POINTERS: u8 = 1 << 0;
    /// Marked as an intended leak: not reported by the leak checks.
    pub const INTENDED_LEAK: u8 = 1 << 1;
    /// Owned by a `Pinned<T>`: pinned for its whole life.
    pub const PINNED_FOREVER: u8 = 1 << 2;
    /// Freed, and its memory already given back (a library's deallocator
    /// runs at once, not from the quarantine): the range may be reused, so
    /// only an exact second free is still judged by this record.
    pub const RELEASED: u8 = 1 << 3;
    /// Not a region: the place of one that left the quarantine, kept so
    /// that the next region starting at the same address takes it without
    /// moving its page's other records. Every reader treats it as absent.
    pub const VACANT: u8 = 1 << 4;
}

/// The rare, large facts about a region, kept apart from the record (in its
/// shard's slab, by index) so the common record stays small: most regions
/// never need any of them. The slab holds them by value, so a region with
/// event backtraces costs no allocation of its own: a million of them do
/// not scatter a million small blocks of the checker's through C's heap.
#[derive(Default)]
pub(crate) struct Extra {
    /// The type name and the free site live in the record's interned
    /// provenance; here only when the provenance table is full.
    pub type_name: Option<&'static str>,
    pub alloc_trace: Option<StackId>,
    pub free_site: Option<Site>,
    pub free_trace: Option<StackId>,
    pub pin_site: Option<Site>,
    pub pin_trace: Option<StackId>,
    pub retain_site: Option<Site>,
    pub retain_trace: Option<StackId>,
    pub leak_reason: Option<String>,
}

/// One tracked range, as the rest of the crate sees and edits it: decoded
/// from the stored record under the shard's lock, and encoded back after an
/// [`update`]. Its start is the key it was found by.
pub(crate) struct Region {
    pub size: usize,
    pub site: Option<Site>,
    /// The type allocated (`Managed<T>`, `CBox<T>`), when known.
    pub type_name: Option<&'static str>,
    /// Where it was freed, once freed.
    pub free_site: Option<Site>,
    pub extra: Option<Extra>,
    /// The region's id (upper 40 bits: unique for the first 2^40 regions)
    /// and the serial of the thread that created it (lower 24 bits).
    tag: u64,
    /// Pins held (saturating).
    pub pins: u16,
    /// Retains C holds (saturating).
    pub retains: u16,
    pub kind: RegionKind,
    pub state: RegionState,
    pub family: u8,
    pub flags: u8,
    /// The interned index of `site`, `type_name` and `free_site` together,
    /// when whoever made this value interned them just before (a new
    /// region); 0: interned when the record is written. A view decoded from
    /// a record has 0, so editing its fields is always safe.
    pub(super) interned: u32,
}

impl Region {
    /// Live managed memory that nothing pins (as [`RegionInfo::is_unpinned_managed`]).
    fn is_unpinned_managed(&self) -> bool {
        self.kind == RegionKind::Managed && self.state == RegionState::Live && self.pins == 0
    }

    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }
    /// The region's id: ids grow with time, so a scope started at id `n`
    /// owns the regions with ids `>= n`.
    pub fn id(&self) -> u64 {
        self.tag >> THREAD_BITS
    }
    /// The serial of the thread that created the region.
    pub fn thread(&self) -> u32 {
        (self.tag & ((1 << THREAD_BITS) - 1)) as u32
    }
}

/// A copy of a region's small facts, read without a lock and used after.
/// 32 bytes, laid out for cheap copies.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RegionInfo {
    pub start: usize,
    pub size: usize,
    pub id: u64,
    pub pins: u16,
    pub kind: RegionKind,
    pub state: RegionState,
    pub family: u8,
    pub flags: u8,
}

impl RegionInfo {
    /// Live managed memory that nothing pins: what P1/P2/P4/P5 forbid C to
    /// hold.
    pub fn is_unpinned_managed(&self) -> bool {
        self.kind == RegionKind::Managed && self.state == RegionState::Live && self.pins == 0
    }

    fn contains(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.start.saturating_add(self.size.max(1))
    }
}

// ---- records under their shard's lock ------------------------------------------

/// Runs `f` on the region that starts exactly at `start`, under its shard's
/// lock. `f` must not call back into the registry.
pub(crate) fn update<R>(start: usize, f: impl FnOnce(&mut Region) -> R) -> Option<R> {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    // Most updates are of regions that exist; a miss costs the lock anyway.
    let mut w = shard_of(start).write();
    let (b, i) = ShardInner::find_exact(start)?;
    let mut view = w.view(b, i);
    let result = f(&mut view);
    w.store_view(b, i, start, view);
    Some(result)
}

/// Runs `f` on the region that contains `addr`, under its shard's lock.
pub(crate) fn update_containing<R>(
    addr: usize,
    f: impl FnOnce(usize, &mut Region) -> R,
) -> Option<R> {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let info = lookup(addr)?;
    let mut w = shard_of(info.start).write();
    let (b, i) = ShardInner::find_exact(info.start)?;
    if b.info(i, info.start).id != info.id {
        return None;
    }
    let mut view = w.view(b, i);
    let result = f(info.start, &mut view);
    w.store_view(b, i, info.start, view);
    Some(result)
}

/// Calls `f` on every region, one shard at a time (each shard is locked
/// only while it is visited). `f` must not call back into the registry.
pub(crate) fn for_each(mut f: impl FnMut(usize, &Region)) {
    // What `f` allocates and frees under the shard's lock is bookkeeping: a
    // free there must not take the allocator's quarantine locks, which come
    // before the shards'.
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    // A leak check visits every record, the quarantined ones included (a
    // million in mode 2): each record's words are read once, and the site
    // of the record before is reused (neighbours mostly share one).
    let mut last_site = (0u32, Default::default());
    for shard in SHARDS.iter() {
        let mut inner = shard.lock();
        let inner = &mut *inner;
        for p in 0..inner.pages.len() {
            let (page, slot) = inner.pages[p];
            let Some((b, len)) = slot.block() else {
                continue;
            };
            for i in 0..len.min(b.cap()) {
                let start = (page << PAGE_SHIFT) | b.off(i);
                let words = b.words(i);
                if record::words_vacant(&words) {
                    continue;
                }
                let (site_ix, extra_ix) =
                    ((words[W_INDICES] >> 32) as u32, words[W_INDICES] as u32);
                if site_ix != last_site.0 {
                    last_site = (site_ix, provenance_at(site_ix));
                }
                let view = inner.decode(words, last_site.1);
                f(start, &view);
                // Nothing but the extra moved: put it back where it was.
                if extra_ix != 0 {
                    inner.extras[extra_ix as usize - 1] = view.extra;
                }
            }
        }
    }
}

/// A full, owned description of a region for a report (cold path).
#[derive(Clone, Debug)]
pub(crate) struct RegionDetail {
    pub start: usize,
    pub size: usize,
    pub kind: RegionKind,
    pub state: RegionState,
    pub pins: u16,
    pub retains: u16,
    pub type_name: Option<&'static str>,
    pub family: u8,
    pub alloc_site: Option<Site>,
    pub alloc_trace: Option<StackId>,
    pub free_site: Option<Site>,
    pub free_trace: Option<StackId>,
    pub pin_site: Option<Site>,
    pub pin_trace: Option<StackId>,
    pub retain_site: Option<Site>,
    pub retain_trace: Option<StackId>,
    pub leak_reason: Option<String>,
}

impl RegionDetail {
    fn of(start: usize, r: &Region) -> RegionDetail {
        let e = r.extra.as_ref();
        RegionDetail {
            start,
            size: r.size,
            kind: r.kind,
            state: r.state,
            pins: r.pins,
            retains: r.retains,
            type_name: r.type_name.or(e.and_then(|e| e.type_name)),
            family: r.family,
            alloc_site: r.site,
            alloc_trace: e.and_then(|e| e.alloc_trace),
            free_site: r.free_site.or(e.and_then(|e| e.free_site)),
            free_trace: e.and_then(|e| e.free_trace),
            pin_site: e.and_then(|e| e.pin_site),
            pin_trace: e.and_then(|e| e.pin_trace),
            retain_site: e.and_then(|e| e.retain_site),
            retain_trace: e.and_then(|e| e.retain_trace),
            leak_reason: e.and_then(|e| e.leak_reason.clone()),
        }
    }
}

/// The details of the region starting at `start`.
#[cold]
pub(crate) fn detail(start: usize) -> Option<RegionDetail> {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let mut inner = shard_of(start).lock();
    let (b, i) = ShardInner::find_exact(start)?;
    let view = inner.view(b, i);
    let detail = RegionDetail::of(start, &view);
    let ix = b.rec(i)[W_INDICES].load(Ordering::Relaxed) as u32;
    if ix != 0 {
        inner.extras[ix as usize - 1] = view.extra;
    }
    Some(detail)
}

// ---- fork -------------------------------------------------------------------

/// The registry's locks, held across `fork` (see `crate::fork`): every
/// shard's mutex (in index order), then the directory's, the huge list's
/// and the site table's. Dropping the value releases them.
pub(crate) struct ForkLocks {
    _shards: [crate::spin::SpinGuard<'static, ShardInner>; shard::NSHARDS],
    _directory: directory::ForkLocks,
    _sites: sites::ForkLock,
    _live_c: live_c::ForkLock,
}

/// Takes the registry's locks for `fork`'s prepare handler.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _shards: shard::lock_all_for_fork(),
        _directory: directory::lock_for_fork(),
        _sites: sites::lock_for_fork(),
        _live_c: live_c::lock_for_fork(),
    }
}
