//! Shards: the writers' mutex and the readers' sequence number, and the
//! writer's primitives that add and remove a page's records.
//!
//! **Reads take no lock.** Each shard (pages grouped by 1 MiB chunk, hashed
//! to one of 64 shards) has a mutex for writers and a sequence number that a
//! writer makes odd before it changes anything and even again after. A
//! reader reads the number, reads the directory and blocks with plain atomic
//! loads, and reads the number again: if it is unchanged and even, what it
//! read is one consistent state. Readers write no shared memory (no lock's
//! cache line bounces between threads) and execute no locked instruction, so
//! a processor overlaps the cache misses of successive lookups. This is only
//! sound because everything a reader may touch stays mapped and is only ever
//! read and written through atomics: directory nodes and blocks are never
//! freed; a block that a page outgrows goes to its shard's free list for
//! reuse by another page of the same shard (such reuse happens inside a
//! write, so a reader that raced it sees the sequence number move and reads
//! again). A reader that keeps finding a write in progress waits on the mutex.
//!
//! Every change to a shard goes through a [`Writing`], which keeps the
//! sequence number odd for as long as it lives.
//!
//! Invariant (held under the shard's lock, and at every even sequence
//! number):
//! - a page has a block exactly when some record starts in it, and the block
//!   is in its shard's page list at the position its first word names.
//!
//! Lock order: a shard's mutex, then the directory's, the huge list's or the
//! site table's (never the other way round); no two shard mutexes at once.

use crate::spin::{SpinGuard, SpinMutex};
use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::block::{Block, Quad, NCLASSES, PAGE_MASK, PAGE_SHIFT};
use super::directory::{page_slot, page_slot_or_create, set_covers, PageSlot, HUGE_COUNT};
use super::quarantine::Quarantined;
use super::record::{rec_vacant, vacant_words, W_INDICES, W_TAG};
use super::unpinned::count_unpinned;
use super::{Extra, Region, RegionInfo};

const CHUNK_SHIFT: u32 = 20;
const SHARD_BITS: u32 = 6;
pub(super) const NSHARDS: usize = 1 << SHARD_BITS;

/// How many times a reader retries while writes keep changing its shard,
/// before it waits on the shard's mutex.
const SPINS: usize = 64;

/// What a shard's mutex guards: the bookkeeping only writers touch.
pub(super) struct ShardInner {
    /// What is left of the current arena chunk.
    arena: &'static [Quad],
    /// Blocks that pages outgrew or emptied, by class, for reuse.
    free_blocks: [Vec<Block>; NCLASSES],
    /// The pages of this shard that have a block, with their slots (a leak
    /// check visits them all, without walking the directory).
    pub(super) pages: Vec<(usize, &'static PageSlot)>,
    /// The records' `Extra`s, by value (a record holds its index plus one;
    /// freed places are reused through `free_extras`).
    pub(super) extras: Vec<Option<Extra>>,
    pub(super) free_extras: Vec<u32>,
    pub(super) quarantine: VecDeque<Quarantined>,
    pub(super) quarantine_bytes: usize,
}

/// A shard: its writers' mutex, and its sequence number (odd while a write
/// is in progress), which also tells a thread whether an answer it kept is
/// still good. Aligned to two cache lines so that neighbouring shards never
/// share one.
#[repr(align(128))]
pub(super) struct Shard {
    lock: SpinMutex<ShardInner>,
    pub(super) version: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            lock: SpinMutex::new(ShardInner {
                arena: &[],
                free_blocks: [const { Vec::new() }; NCLASSES],
                pages: Vec::new(),
                extras: Vec::new(),
                free_extras: Vec::new(),
                quarantine: VecDeque::new(),
                quarantine_bytes: 0,
            }),
            version: AtomicU64::new(0),
        }
    }
    /// The mutex, for reading under it (no write in progress meanwhile).
    pub(super) fn lock(&self) -> SpinGuard<'_, ShardInner> {
        self.lock.lock()
    }
    /// Every change to a shard goes through here: the sequence number is
    /// odd from before the first change until after the last (the guard
    /// makes it even again when dropped, also while unwinding).
    pub(super) fn write(&'static self) -> Writing {
        let inner = self.lock();
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v | 1, Ordering::Relaxed);
        // Orders the odd number before every store of the write: a reader
        // that sees any of them (with Acquire) then sees the number odd, or
        // later.
        fence(Ordering::Release);
        Writing { inner, shard: self }
    }
}

pub(super) struct Writing {
    inner: SpinGuard<'static, ShardInner>,
    shard: &'static Shard,
}

impl Drop for Writing {
    fn drop(&mut self) {
        // Runs before the mutex guard (a field) is dropped.
        let v = self.shard.version.load(Ordering::Relaxed);
        self.shard.version.store((v | 1) + 1, Ordering::Release);
    }
}

impl std::ops::Deref for Writing {
    type Target = ShardInner;
    fn deref(&self) -> &ShardInner {
        &self.inner
    }
}

impl std::ops::DerefMut for Writing {
    fn deref_mut(&mut self) -> &mut ShardInner {
        &mut self.inner
    }
}

pub(super) static SHARDS: [Shard; NSHARDS] = [const { Shard::new() }; NSHARDS];

#[inline(always)]
pub(super) fn shard_of(addr: usize) -> &'static Shard {
    let chunk = (addr >> CHUNK_SHIFT) as u64;
    &SHARDS[(chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS)) as usize]
}

/// Every shard's mutex, in index order, held across `fork` (see
/// `crate::fork`): nothing else ever holds two, so the order is free of
/// cycles. A writer makes its shard's sequence number odd only while it
/// holds the mutex, and even again before it lets go, so while these are
/// held every sequence number is even, and so it is in the child.
pub(super) fn lock_all_for_fork() -> [SpinGuard<'static, ShardInner>; NSHARDS] {
    // `from_fn` calls the closure in increasing index order.
    std::array::from_fn(|i| SHARDS[i].lock())
}

/// Runs the read `f` until it saw one consistent state of `shard`, and
/// returns its answer with the sequence number it is valid for.
#[inline(always)]
pub(super) fn read_stable<T>(shard: &'static Shard, f: impl Fn() -> T) -> (T, u64) {
    for _ in 0..SPINS {
        let v = shard.version.load(Ordering::Acquire);
        if v & 1 == 0 {
            let answer = f();
            // Orders the reads above before the second look at the number.
            fence(Ordering::Acquire);
            if shard.version.load(Ordering::Relaxed) == v {
                return (answer, v);
            }
        }
        std::hint::spin_loop();
    }
    read_locked(shard, f)
}

/// A reader that kept meeting writes (or a writer that was descheduled
/// mid-write) waits for the mutex: no write runs while it holds it.
#[cold]
#[inline(never)]
fn read_locked<T>(shard: &'static Shard, f: impl Fn() -> T) -> (T, u64) {
    let _inner = shard.lock();
    let v = shard.version.load(Ordering::Relaxed);
    (f(), v)
}

// ---- the writer's primitives (inside a `Writing`) ---------------------------------
// (Decoding a record into a view and encoding it back: see `record`.)

impl ShardInner {
    fn take_block(&mut self, class: usize) -> Block {
        match self.free_blocks[class].pop() {
            Some(b) => b,
            None => Block::carve(&mut self.arena, class),
        }
    }

    /// The block of `page` and the index of the record starting at `start`
    /// (not a vacant one).
    pub(super) fn find_exact(start: usize) -> Option<(Block, usize)> {
        let (b, i) = Self::find_slot(start)?;
        (!rec_vacant(b.rec(i))).then_some((b, i))
    }

    /// As [`ShardInner::find_exact`], a vacant record included.
    pub(super) fn find_slot(start: usize) -> Option<(Block, usize)> {
        let (b, len) = page_slot(start >> PAGE_SHIFT)?.block()?;
        Some((b, b.exact(len, start & PAGE_MASK)?))
    }

    /// As [`ShardInner::find_exact`], for a writer that keeps where the
    /// record is (a free, for its eviction): the thread's recent places
    /// answer first (a free soon after its registration).
    pub(super) fn find_placed(start: usize) -> Option<(Block, usize, Place)> {
        let (b, i, place) = match recall_place(start) {
            Some((place, b, i)) => (b, i, place),
            None => {
                let slot = page_slot(start >> PAGE_SHIFT)?;
                let (b, len) = slot.block()?;
                let i = b.exact(len, start & PAGE_MASK)?;
                (b, i, Place::new(slot, i))
            }
        };
        (!rec_vacant(b.rec(i))).then_some((b, i, place))
    }

    /// Adds a record starting at `start`; returns the record it replaced
    /// (one with the same start: stale).
    pub(super) fn insert(&mut self, start: usize, view: Region) -> Option<Region> {
        let page = start >> PAGE_SHIFT;
        let off = start & PAGE_MASK;
        let slot = page_slot_or_create(page);
        let size = view.size;
        let (b, len) = match slot.block() {
            Some(found) => found,
            None => {
                let b = self.take_block(0);
                b.set_pos(self.pages.len());
                b.set_vacant(0);
                self.pages.push((page, slot));
                slot.len.store(0, Ordering::Relaxed);
                slot.block.store(b.tagged(), Ordering::Release);
                (b, 0)
            }
        };
        let pred = b.predecessor(len, off);
        if let Some(i) = pred.filter(|&i| b.off(i) == off) {
            if rec_vacant(b.rec(i)) {
                self.fill_vacant(slot, b, i, start, view);
                set_covers(start, size, true);
                return None;
            }
            let old = self.view(b, i);
            let old_ix = b.rec(i)[W_INDICES].load(Ordering::Relaxed) as u32;
            if old_ix != 0 {
                self.free_extras.push(old_ix);
            }
            set_covers(start, old.size, false);
            let (was, now) = (old.is_unpinned_managed(), view.is_unpinned_managed());
            if was != now {
                count_unpinned(start, now);
            }
            let words = self.encode(0, view);
            b.write_rec(i, words);
            set_covers(start, size, true);
            return Some(old);
        }
        let at = pred.map_or(0, |i| i + 1);
        self.insert_at(slot, b, len, at, start, view);
        set_covers(start, size, true);
        None
    }

    /// Adds the record of a region starting at `start` when no record can
    /// overlap it, which one search of its page under the lock shows; the
    /// common registration. Returns `None` when it is added, the region
    /// back otherwise (the caller then purges the stale records and
    /// inserts).
    ///
    /// Regions do not overlap, and no region contains the start of a vacant
    /// record (a registration that overlaps one removes it). So when the
    /// region ends inside its page, before the page's next record, the only
    /// record that could overlap it is the one before it: a vacant place at
    /// `start` itself (taken as it is: an allocator hands a block that just
    /// left the quarantine out again), or the page's greatest start below
    /// `start` (a vacant one, or one that ends at or before `start`, is no
    /// overlap), or, with none in the page, a region reaching in from an
    /// earlier page (ruled out when the page has no cover and there is no
    /// huge region).
    pub(super) fn insert_if_clear(&mut self, start: usize, view: Region) -> Option<Region> {
        let page = start >> PAGE_SHIFT;
        let off = start & PAGE_MASK;
        let end = off + view.size.max(1);
        if end > PAGE_MASK + 1 {
            return Some(view);
        }
        let slot = page_slot(page);
        let Some((slot, b, len)) = slot.and_then(|s| s.block().map(|(b, len)| (s, b, len))) else {
            // Nothing starts in the page: clear unless a region reaches in.
            if slot.is_some_and(|s| s.cover.load(Ordering::Acquire) != 0)
                || HUGE_COUNT.load(Ordering::Relaxed) != 0
            {
                return Some(view);
            }
            let replaced = self.insert(start, view);
            debug_assert!(replaced.is_none());
            return None;
        };
        let len = len.min(b.cap());
        // A place this thread just vacated (its eviction gave the block
        // back, and the allocator hands it out again) needs no search.
        let pred = match recall_place(start) {
            Some((_, _, i)) => Some(i),
            None => b.predecessor(len, off),
        };
        let at = match pred {
            Some(i) if b.off(i) == off => {
                if !rec_vacant(b.rec(i)) || (i + 1 < len && b.off(i + 1) < end) {
                    return Some(view);
                }
                self.fill_vacant(slot, b, i, start, view);
                return None;
            }
            Some(i) => {
                let before = b.info(i, (page << PAGE_SHIFT) | b.off(i));
                if before.flags & super::flags::VACANT == 0
                    && before.start.saturating_add(before.size.max(1)) > start
                {
                    return Some(view);
                }
                i + 1
            }
            None => {
                if slot.cover.load(Ordering::Acquire) != 0
                    || HUGE_COUNT.load(Ordering::Relaxed) != 0
                {
                    return Some(view);
                }
                0
            }
        };
        if at < len && b.off(at) < end {
            return Some(view);
        }
        self.insert_at(slot, b, len, at, start, view);
        None
    }

    /// Writes the record of the region starting at `start` into the vacant
    /// record `i` of `b` (the place of a region that left the quarantine,
    /// taken as it is: no extra, no covers, not unpinned).
    fn fill_vacant(
        &mut self,
        slot: &'static PageSlot,
        b: Block,
        i: usize,
        start: usize,
        view: Region,
    ) {
        b.set_vacant(b.vacant() - 1);
        if view.is_unpinned_managed() {
            count_unpinned(start, true);
        }
        let words = self.encode(0, view);
        b.write_rec(i, words);
        remember_place(start, slot, i);
    }

    /// Puts the record of the region starting at `start` at index `at` of
    /// its page's `len` records, moving the later ones up (into a block of
    /// the next class when this one is full).
    fn insert_at(
        &mut self,
        slot: &'static PageSlot,
        b: Block,
        len: usize,
        at: usize,
        start: usize,
        view: Region,
    ) {
        let off = start & PAGE_MASK;
        let b = if len == b.cap() {
            self.grow(slot, b, len)
        } else {
            b
        };
        b.shift_offs_up(at, len);
        b.move_recs_up(at, len);
        b.set_off(at, off);
        if view.is_unpinned_managed() {
            count_unpinned(start, true);
        }
        let words = self.encode(0, view);
        b.write_rec(at, words);
        slot.len.store(len as u32 + 1, Ordering::Relaxed);
        remember_place(start, slot, at);
    }

    /// Moves a full page's records to a block of the next class.
    fn grow(&mut self, slot: &PageSlot, old: Block, len: usize) -> Block {
        let class = (old.class() + 1).min(NCLASSES - 1);
        let b = self.take_block(class);
        for i in 0..len {
            b.set_off(i, old.off(i));
            old.copy_rec(i, b, i);
        }
        b.set_pos(old.pos());
        b.set_vacant(old.vacant());
        slot.block.store(b.tagged(), Ordering::Release);
        self.free_blocks[old.class()].push(old);
        b
    }

    /// Removes the record starting at `start`, returning its view (`None`
    /// when there is none, or it is vacant: then nothing changes).
    pub(super) fn remove(&mut self, start: usize) -> Option<Region> {
        let (b, i) = Self::find_exact(start)?;
        self.remove_at(start, b, i)
    }

    /// Removes the record starting at `start`, vacant or not; returns its
    /// view when it was not vacant (what a registration that overlaps it
    /// drops).
    pub(super) fn remove_any(&mut self, start: usize) -> Option<Region> {
        let (b, i) = Self::find_slot(start)?;
        if rec_vacant(b.rec(i)) {
            b.set_vacant(b.vacant() - 1);
            self.drop_rec(start, b, i);
            return None;
        }
        self.remove_at(start, b, i)
    }

    fn remove_at(&mut self, start: usize, b: Block, i: usize) -> Option<Region> {
        let view = self.view(b, i);
        self.forget_rec(start, b, i, &b.info(i, start));
        self.drop_rec(start, b, i);
        Some(view)
    }

    /// What a record that stops naming a region (`info`, the region starting
    /// at `start`) gives up, wherever its place goes: its `Extra`, the
    /// covers of the pages it reaches into, its page's unpinned count.
    fn forget_rec(&mut self, start: usize, b: Block, i: usize, info: &RegionInfo) {
        let extra_ix = b.rec(i)[W_INDICES].load(Ordering::Relaxed) as u32;
        if extra_ix != 0 {
            self.extras[extra_ix as usize - 1] = None;
            self.free_extras.push(extra_ix);
        }
        set_covers(start, info.size, false);
        if info.is_unpinned_managed() {
            count_unpinned(start, false);
        }
    }

    /// Takes record `i` of `b` (of the region starting at `start`) out of
    /// its page; a page left with vacant records only gives its block up.
    fn drop_rec(&mut self, start: usize, b: Block, i: usize) {
        let Some(slot) = page_slot(start >> PAGE_SHIFT) else {
            return;
        };
        let len = (slot.len.load(Ordering::Relaxed) as usize).min(b.cap());
        b.shift_offs_down(i, len);
        b.move_recs_down(i, len);
        slot.len.store(len as u32 - 1, Ordering::Relaxed);
        if len - 1 == b.vacant() {
            self.drop_block(slot, b);
        }
    }

    /// Gives up the block of a page whose records are all vacant (or that
    /// has none left).
    fn drop_block(&mut self, slot: &PageSlot, b: Block) {
        slot.block.store(0, Ordering::Release);
        slot.len.store(0, Ordering::Relaxed);
        let pos = b.pos();
        self.pages.swap_remove(pos);
        if let Some((m, _)) = self.pages.get(pos).and_then(|(_, s)| s.block()) {
            m.set_pos(pos);
        }
        self.free_blocks[b.class()].push(b);
    }

    /// Makes the record of the (quarantined) region starting at `start`
    /// vacant, if `current` says it is still the one meant, returning its
    /// small facts: the region is gone, its place stays for the next region
    /// starting there. A page left with vacant records only gives its block
    /// up.
    pub(super) fn vacate(
        &mut self,
        start: usize,
        place: Option<Place>,
        current: impl FnOnce(&RegionInfo) -> bool,
    ) -> Option<RegionInfo> {
        let (b, i) = match place.and_then(|p| p.holds(start)) {
            Some((b, i)) if !rec_vacant(b.rec(i)) => (b, i),
            Some(_) => return None,
            None => Self::find_exact(start)?,
        };
        let info = b.info(i, start);
        if !current(&info) {
            return None;
        }
        let tag = b.rec(i)[W_TAG].load(Ordering::Relaxed);
        self.forget_rec(start, b, i, &info);
        b.write_rec(i, vacant_words(tag, info.size));
        let vacant = b.vacant() + 1;
        b.set_vacant(vacant);
        let slot = match place {
            Some(p) => p.slot,
            None => page_slot(start >> PAGE_SHIFT)?,
        };
        if vacant == slot.len.load(Ordering::Relaxed) as usize {
            self.drop_block(slot, b);
        } else {
            // The allocator hands the block out again soon: its
            // registration finds the vacant place here.
            remember_place(start, slot, i);
        }
        Some(info)
    }
}

// ---- each thread's recent places ------------------------------------------------

/// Where a record sat when it was last found or written: its page's slot
/// and its index in the page's records. Checked before use (see
/// [`Place::holds`]), so a place that went stale only costs the search it
/// was meant to save.
#[derive(Clone, Copy)]
pub(super) struct Place {
    slot: &'static PageSlot,
    index: u32,
}

impl Place {
    fn new(slot: &'static PageSlot, i: usize) -> Place {
        Place {
            slot,
            index: i as u32,
        }
    }

    /// The block and index of the record starting at `start`, if this
    /// place still holds it: the index is inside the page's records and
    /// holds `start`'s offset. A page's offsets are distinct, so that
    /// record is the one (vacant or not), whichever block the slot names
    /// now (records move only within their page, and a block that grows
    /// keeps their order). Every read is atomic, so a lock-free reader may
    /// ask as well (its sequence number then vouches for the whole read).
    #[inline(always)]
    pub(super) fn holds(self, start: usize) -> Option<(Block, usize)> {
        let (b, len) = self.slot.block()?;
        let len = len.min(b.cap());
        let i = self.index as usize;
        (i < len && b.off(i) == start & PAGE_MASK).then_some((b, i))
    }
}

/// A thread's recent places, by start: a free soon after a registration,
/// and a registration of the block an eviction just gave back, find their
/// record here without walking the directory or searching the page. Only
/// writers ask them: the lock-free lookups stay as they were.
const PLACES: usize = 8;
const _: () = assert!(PLACES.is_power_of_two());

thread_local! {
    static RECENT_PLACES: [std::cell::Cell<(usize, Option<Place>)>; PLACES] =
        const { [const { std::cell::Cell::new((0, None)) }; PLACES] };
}

#[inline(always)]
fn place_of(start: usize) -> usize {
    // Multiplicative: blocks an allocator lays out 16, 64 or 128 bytes
    // apart spread over every entry.
    ((start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - PLACES.trailing_zeros())) as usize
}

/// The place this thread kept for the record starting at `start`, if it
/// still holds it, with the record's block and index.
#[inline(always)]
fn recall_place(start: usize) -> Option<(Place, Block, usize)> {
    let place = match RECENT_PLACES.try_with(|places| places[place_of(start)].get()) {
        Ok((s, Some(place))) if s == start => place,
        _ => return None,
    };
    let (b, i) = place.holds(start)?;
    Some((place, b, i))
}

#[inline(always)]
fn remember_place(start: usize, slot: &'static PageSlot, i: usize) {
    let _ = RECENT_PLACES.try_with(|places| {
        places[place_of(start)].set((start, Some(Place::new(slot, i))));
    });
}
