//! Stored records and their encoding.
//!
//! **Records.** Four words: the tag (id and creating thread), the indices of
//! the region's [`Extra`] (in the shard's slab, touched only under the lock)
//! and of its allocation [`Site`] (interned once per distinct site), its size,
//! and one word packing pins, retains, flags, allocator family, kind and
//! state. With the 2-byte offset that is 34 bytes a region
//! ([`REGION_RECORD_BYTES`]), plus the unused tail of its page's block.
//! Writers decode a record into a [`Region`] (the view the rest of the crate
//! edits) and encode it back. A reader without the lock decodes only the
//! small facts, into a [`RegionInfo`].
//!
//! A record may be *vacant* ([`vacant_words`]): the place of a region
//! that left the quarantine, kept until the next region starting at the
//! same address takes it (an allocator hands a freed address out again
//! soon), so that neither the eviction nor that registration moves the
//! page's other records. Every reader treats a vacant record as absent; no
//! region contains the start of a vacant record (a registration drops the
//! vacant records that start inside it, as it drops stale ones).
//!
//! Invariants (held under the shard's lock, and at every even sequence
//! number):
//! - a record's extra index is its `Extra`'s place in the shard's slab plus
//!   one (0: none); while a decoded view holds the `Extra`, the index stays
//!   the record's, and encoding the view puts the `Extra` back;
//! - encoding a view back keeps its page's unpinned count (see
//!   [`count_unpinned`]) when the record starts or stops being live,
//!   unpinned managed memory.

use std::sync::atomic::{AtomicU64, Ordering};

use super::block::Block;
use super::ids::THREAD_BITS;
use super::shard::ShardInner;
use super::sites::{intern, intern_freed, provenance_at, Provenance};
use super::unpinned::count_unpinned;
use super::{Extra, Region, RegionInfo, RegionKind, RegionState};

/// Words per stored record: tag; extra and site indices; size; packed facts.
pub(super) const REC_WORDS: usize = 4;
pub(super) const W_TAG: usize = 0;
pub(super) const W_INDICES: usize = 1;
const W_SIZE: usize = 2;
const W_FACTS: usize = 3;

// The packed facts word: pins in bits 0..16, retains 16..32, flags 32..40,
// family 40..48, kind bit 48 (set: C), state bit 49 (set: freed).
const RETAINS_SHIFT: u32 = 16;
const FLAGS_SHIFT: u32 = 32;
const FAMILY_SHIFT: u32 = 40;
const KIND_C: u64 = 1 << 48;
const STATE_FREED: u64 = 1 << 49;

fn pack_facts(
    pins: u16,
    retains: u16,
    flags: u8,
    family: u8,
    kind: RegionKind,
    state: RegionState,
) -> u64 {
    u64::from(pins)
        | u64::from(retains) << RETAINS_SHIFT
        | u64::from(flags) << FLAGS_SHIFT
        | u64::from(family) << FAMILY_SHIFT
        | if kind == RegionKind::C { KIND_C } else { 0 }
        | if state == RegionState::Freed {
            STATE_FREED
        } else {
            0
        }
}

fn facts_kind(facts: u64) -> RegionKind {
    if facts & KIND_C != 0 {
        RegionKind::C
    } else {
        RegionKind::Managed
    }
}

fn facts_state(facts: u64) -> RegionState {
    if facts & STATE_FREED != 0 {
        RegionState::Freed
    } else {
        RegionState::Live
    }
}

#[inline(always)]
pub(super) fn info_of(r: &[AtomicU64; REC_WORDS], start: usize) -> RegionInfo {
    let tag = r[W_TAG].load(Ordering::Relaxed);
    let size = r[W_SIZE].load(Ordering::Relaxed) as usize;
    let facts = r[W_FACTS].load(Ordering::Relaxed);
    RegionInfo {
        start,
        size,
        id: tag >> THREAD_BITS,
        pins: facts as u16,
        kind: facts_kind(facts),
        state: facts_state(facts),
        family: (facts >> FAMILY_SHIFT) as u8,
        flags: (facts >> FLAGS_SHIFT) as u8,
    }
}

/// The retains C holds on the stored record `r` (saturating).
#[inline(always)]
pub(super) fn retains_of(r: &[AtomicU64; REC_WORDS]) -> u16 {
    (r[W_FACTS].load(Ordering::Relaxed) >> RETAINS_SHIFT) as u16
}

const VACANT: u64 = (super::flags::VACANT as u64) << FLAGS_SHIFT;

/// Whether the stored record `words` is vacant (no region: see
/// [`vacant_words`]).
#[inline(always)]
pub(super) fn words_vacant(words: &[u64; REC_WORDS]) -> bool {
    words[W_FACTS] & VACANT != 0
}

/// Whether the stored record `r` is vacant.
#[inline(always)]
pub(super) fn rec_vacant(r: &[AtomicU64; REC_WORDS]) -> bool {
    r[W_FACTS].load(Ordering::Relaxed) & VACANT != 0
}

/// The words of a vacant record: the place of a region that left the
/// quarantine, kept (with its tag and size, for nobody) so that the next
/// region starting there takes it without moving its page's other records.
/// No `Extra`, no site; freed, so it is never unpinned managed memory.
pub(super) fn vacant_words(tag: u64, size: usize) -> [u64; REC_WORDS] {
    [tag, 0, size as u64, STATE_FREED | VACANT]
}

/// Whether the stored record `words` is live, unpinned managed memory.
#[inline(always)]
fn words_unpinned(words: &[u64; REC_WORDS]) -> bool {
    words[W_FACTS] & (KIND_C | STATE_FREED | 0xffff) == 0
}

// ---- views: a record decoded for a writer, and encoded back (under the lock) ----

impl ShardInner {
    fn put_extra(&mut self, ix: u32, extra: Option<Extra>) -> u32 {
        match (ix, extra) {
            (0, None) => 0,
            (0, Some(e)) => match self.free_extras.pop() {
                Some(ix) => {
                    self.extras[ix as usize - 1] = Some(e);
                    ix
                }
                None => {
                    self.extras.push(Some(e));
                    self.extras.len() as u32
                }
            },
            (ix, Some(e)) => {
                self.extras[ix as usize - 1] = Some(e);
                ix
            }
            (ix, None) => {
                self.extras[ix as usize - 1] = None;
                self.free_extras.push(ix);
                0
            }
        }
    }

    /// Decodes record `i` of `b` into a view, moving its `Extra` out (the
    /// index stays the record's; [`ShardInner::store_view`] puts it back).
    pub(super) fn view(&mut self, b: Block, i: usize) -> Region {
        let words = b.words(i);
        let provenance = provenance_at((words[W_INDICES] >> 32) as u32);
        self.decode(words, provenance)
    }

    /// The view of a record's words (its `Extra` moved out of the slab).
    pub(super) fn decode(&mut self, words: [u64; REC_WORDS], provenance: Provenance) -> Region {
        let facts = words[W_FACTS];
        Region {
            size: words[W_SIZE] as usize,
            site: provenance.site,
            type_name: provenance.type_name,
            free_site: provenance.free_site,
            extra: match words[W_INDICES] as u32 {
                0 => None,
                ix => self.extras[ix as usize - 1].take(),
            },
            tag: words[W_TAG],
            pins: facts as u16,
            retains: (facts >> RETAINS_SHIFT) as u16,
            kind: facts_kind(facts),
            state: facts_state(facts),
            family: (facts >> FAMILY_SHIFT) as u8,
            flags: (facts >> FLAGS_SHIFT) as u8,
            interned: 0,
        }
    }

    /// Encodes a view back into record `i` of `b`, the record of the region
    /// starting at `start` (inside a write), keeping the pages' unpinned
    /// counts.
    pub(super) fn store_view(&mut self, b: Block, i: usize, start: usize, view: Region) {
        let old = b.words(i);
        let (was, now) = (words_unpinned(&old), view.is_unpinned_managed());
        let words = self.encode(old[W_INDICES] as u32, view);
        b.write_rec(i, words);
        if was != now {
            count_unpinned(start, now);
        }
    }

    /// Marks record `i` of `b` (the live region starting at `start`)
    /// freed in place, `free_site` in its provenance and, with `released`,
    /// flagged [`RELEASED`](super::flags::RELEASED): a free without a
    /// backtrace changes nothing else, so it needs no view. False (and
    /// nothing changed) when the site table is full: the caller then goes
    /// through a view.
    pub(super) fn set_freed(
        &mut self,
        b: Block,
        i: usize,
        start: usize,
        free_site: Option<crate::site::Site>,
        released: bool,
    ) -> bool {
        let old = b.words(i);
        let extra_ix = old[W_INDICES] as u32;
        let alloc_ix = (old[W_INDICES] >> 32) as u32;
        let site_ix = intern_freed(alloc_ix, free_site);
        if site_ix == 0 && (alloc_ix != 0 || free_site.is_some()) {
            return false;
        }
        let released = if released {
            u64::from(super::flags::RELEASED) << FLAGS_SHIFT
        } else {
            0
        };
        let r = b.rec(i);
        r[W_INDICES].store(
            u64::from(extra_ix) | u64::from(site_ix) << 32,
            Ordering::Relaxed,
        );
        r[W_FACTS].store(old[W_FACTS] | STATE_FREED | released, Ordering::Relaxed);
        if words_unpinned(&old) {
            count_unpinned(start, false);
        }
        true
    }

    pub(super) fn encode(&mut self, old_extra_ix: u32, view: Region) -> [u64; REC_WORDS] {
        let provenance = Provenance {
            site: view.site,
            type_name: view.type_name,
            free_site: view.free_site,
        };
        let mut site_ix = match view.interned {
            0 => intern(provenance),
            ix => ix,
        };
        let mut extra = view.extra;
        if site_ix == 0 && provenance != Provenance::default() {
            // The table is full: the facts go into the region's `Extra`.
            site_ix = intern(Provenance {
                type_name: None,
                free_site: None,
                ..provenance
            });
            let e = extra.get_or_insert_with(Default::default);
            e.type_name = e.type_name.or(provenance.type_name);
            e.free_site = e.free_site.or(provenance.free_site);
        }
        let extra_ix = self.put_extra(old_extra_ix, extra);
        [
            view.tag,
            u64::from(extra_ix) | u64::from(site_ix) << 32,
            view.size as u64,
            pack_facts(
                view.pins,
                view.retains,
                view.flags,
                view.family,
                view.kind,
                view.state,
            ),
        ]
    }
}

/// Bytes of bookkeeping per region before the unused tail of its page's
/// block: the 32-byte record plus its 2-byte offset in the page's sorted
/// offsets. The benchmarks measure the whole cost per region (blocks,
/// directory, everything the registry allocates).
///
/// ```
/// assert_eq!(ffi_check::REGION_RECORD_BYTES, 34);
/// ```
pub const REGION_RECORD_BYTES: usize = REC_WORDS * 8 + 2;
