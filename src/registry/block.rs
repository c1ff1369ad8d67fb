//! Blocks: the records that start in one page.
//!
//! The address space is cut into 4 KiB pages. The records of the regions
//! that *start* in a page live together in one block: a small sorted array of
//! the starts' 12-bit offsets in the page, and after it the records, 32 bytes
//! each (see [`record`](super::record)). A block's capacity is one of a few
//! size classes; a page that fills its block moves to a block of the next
//! class. Blocks are carved from a shard's arena chunks and, like directory
//! nodes, never freed: a block that a page outgrows or empties goes to its
//! shard's free list, for reuse by another page of the same shard.
//!
//! Invariants (held under the shard's lock, and at every even sequence
//! number):
//! - a page's block lists the offsets of the records that start in the page,
//!   strictly increasing, as many as its slot's count, and regions do not
//!   overlap;
//! - a block's vacant count is the number of its records that are vacant
//!   (a quarantined region's record after its eviction, kept in its place
//!   until the next region starting there takes it), and is less than its
//!   slot's count: a page whose records would all be vacant has no block;
//! - a block's size class never changes (a reused block keeps its class), and
//!   the directory word naming a block carries that class.

use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{info_of, REC_WORDS};
use super::RegionInfo;

pub(super) const PAGE_SHIFT: u32 = 12;
pub(super) const PAGE_MASK: usize = (1 << PAGE_SHIFT) - 1;

/// Capacities of a page's block, in records. Steps of at most 1.5× keep the
/// unused tail of a block small; a page can hold 4096 one-byte regions.
const CLASSES: [usize; 22] = [
    1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
    4096,
];
pub(super) const NCLASSES: usize = CLASSES.len();
/// Blocks are aligned to 32 bytes, so a block pointer's low five bits are
/// free: they hold its class, and one atomic word names a block and its
/// size together.
const CLASS_MASK: usize = 31;

/// One cache-line quarter: the unit blocks are made of. A record is exactly
/// one, so it never straddles two cache lines.
#[repr(C, align(32))]
pub(super) struct Quad([AtomicU64; REC_WORDS]);

/// The quads before the records: one word for the block's position in its
/// shard's page list, then the offsets, four to a word.
const fn index_quads(class: usize) -> usize {
    (1 + CLASSES[class].div_ceil(4)).div_ceil(REC_WORDS)
}

const fn block_quads(class: usize) -> usize {
    index_quads(class) + CLASSES[class]
}

/// [`index_quads`] and [`block_quads`] of every class, computed once.
const INDEX_QUADS: [usize; NCLASSES] = {
    let mut t = [0; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = index_quads(c);
        c += 1;
    }
    t
};
const BLOCK_QUADS: [usize; NCLASSES] = {
    let mut t = [0; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = block_quads(c);
        c += 1;
    }
    t
};

/// Quads per arena chunk (32 KiB): blocks are carved from a shard's
/// current chunk, so the blocks of pages made together lie together (a leak
/// check reads them in that order) and cost no allocator header each.
const ARENA_QUADS: usize = 1024;

/// One page's records: `[pos][offsets: four u16 a word]` padded to a quad,
/// then one quad per record. Every word is atomic, so a reader racing a
/// writer reads stale values, never torn or undefined ones. The number of
/// records lives in the page's directory slot, beside the block pointer,
/// so a reader learns both from one cache line.
///
/// The handle caches the block's class (which never changes) and where its
/// records begin.
#[derive(Clone, Copy)]
pub(super) struct Block {
    quads: &'static [Quad],
    class: usize,
    records: usize,
}

impl Block {
    /// A new block of `class`, carved from `arena` (refilled when short).
    pub(super) fn carve(arena: &mut &'static [Quad], class: usize) -> Block {
        let n = BLOCK_QUADS[class];
        if arena.len() < n {
            *arena = new_chunk(n.max(ARENA_QUADS));
        }
        let (quads, rest) = arena.split_at(n);
        *arena = rest;
        Block {
            quads,
            class,
            records: INDEX_QUADS[class],
        }
    }

    /// The directory word naming this block: its address and its class.
    pub(super) fn tagged(self) -> usize {
        self.quads.as_ptr() as usize | self.class
    }

    /// The block a directory word names.
    #[inline(always)]
    pub(super) fn at(tagged: usize) -> Option<Block> {
        let ptr = (tagged & !CLASS_MASK) as *const Quad;
        if ptr.is_null() {
            return None;
        }
        let class = (tagged & CLASS_MASK).min(NCLASSES - 1);
        // SAFETY: a non-zero directory word is `Block::tagged` of a block
        // made by `Block::carve`: `BLOCK_QUADS[class]` quads of a leaked
        // arena chunk, with `class` in the same word (so the two always
        // agree), published with Release and read with Acquire. Chunks are
        // never freed, so the quads stay valid forever.
        let quads = unsafe { std::slice::from_raw_parts(ptr, BLOCK_QUADS[class]) };
        Some(Block {
            quads,
            class,
            records: INDEX_QUADS[class],
        })
    }

    #[inline(always)]
    fn word(self, k: usize) -> &'static AtomicU64 {
        &self.quads[k / REC_WORDS].0[k % REC_WORDS]
    }
    #[inline(always)]
    pub(super) fn class(self) -> usize {
        self.class
    }
    #[inline(always)]
    pub(super) fn cap(self) -> usize {
        CLASSES[self.class]
    }
    /// The block's position in its shard's page list (the low half of its
    /// first word).
    pub(super) fn pos(self) -> usize {
        (self.word(0).load(Ordering::Relaxed) & 0xffff_ffff) as usize
    }
    pub(super) fn set_pos(self, pos: usize) {
        let w = self.word(0).load(Ordering::Relaxed) & !0xffff_ffff;
        self.word(0).store(w | pos as u64, Ordering::Relaxed);
    }
    /// How many of the block's records are vacant (the high half of its
    /// first word; see [`record`](super::record)).
    pub(super) fn vacant(self) -> usize {
        (self.word(0).load(Ordering::Relaxed) >> 32) as usize
    }
    pub(super) fn set_vacant(self, n: usize) {
        let w = self.word(0).load(Ordering::Relaxed) & 0xffff_ffff;
        self.word(0).store(w | (n as u64) << 32, Ordering::Relaxed);
    }
    #[inline(always)]
    pub(super) fn off(self, i: usize) -> usize {
        let w = self.word(1 + i / 4).load(Ordering::Relaxed);
        ((w >> ((i % 4) * 16)) & 0xffff) as usize
    }
    pub(super) fn set_off(self, i: usize, off: usize) {
        let word = self.word(1 + i / 4);
        let shift = (i % 4) * 16;
        let w = word.load(Ordering::Relaxed) & !(0xffff << shift);
        word.store(w | (off as u64) << shift, Ordering::Relaxed);
    }
    /// Moves the offsets at `[from, len)` one place up, to
    /// `[from + 1, len + 1)` (`len < cap`), a word of four offsets at a time: the place at
    /// `from` is the caller's to set. Inserting into a full page moves some
    /// fifty offsets; one at a time, each read-modify-write of a packed
    /// word waits on the one before.
    pub(super) fn shift_offs_up(self, from: usize, len: usize) {
        if from >= len {
            return;
        }
        let (first, last) = (from / 4, len / 4);
        let keep = (1u64 << (16 * (from % 4))) - 1;
        for k in (first..=last).rev() {
            let cur = self.word(1 + k).load(Ordering::Relaxed);
            let new = if k == first {
                (cur & keep) | ((cur << 16) & !keep)
            } else {
                (cur << 16) | (self.word(k).load(Ordering::Relaxed) >> 48)
            };
            self.word(1 + k).store(new, Ordering::Relaxed);
        }
    }
    /// Moves the offsets at `[at + 1, len)` one place down, over the one at
    /// `at` (`at < len`), a word at a time.
    pub(super) fn shift_offs_down(self, at: usize, len: usize) {
        if at + 1 >= len {
            return;
        }
        let (first, last) = (at / 4, (len - 1) / 4);
        let keep = (1u64 << (16 * (at % 4))) - 1;
        for k in first..=last {
            let cur = self.word(1 + k).load(Ordering::Relaxed);
            let next = if k < last {
                self.word(2 + k).load(Ordering::Relaxed)
            } else {
                0
            };
            let shifted = (cur >> 16) | (next << 48);
            let new = if k == first {
                (cur & keep) | (shifted & !keep)
            } else {
                shifted
            };
            self.word(1 + k).store(new, Ordering::Relaxed);
        }
    }
    #[inline(always)]
    pub(super) fn rec(self, i: usize) -> &'static [AtomicU64; REC_WORDS] {
        &self.quads[self.records + i].0
    }
    /// Record `i`'s words.
    #[inline(always)]
    pub(super) fn words(self, i: usize) -> [u64; REC_WORDS] {
        let r = self.rec(i);
        [
            r[0].load(Ordering::Relaxed),
            r[1].load(Ordering::Relaxed),
            r[2].load(Ordering::Relaxed),
            r[3].load(Ordering::Relaxed),
        ]
    }
    pub(super) fn copy_rec(self, from: usize, to: Block, at: usize) {
        let (src, dst) = (self.rec(from), to.rec(at));
        for w in 0..REC_WORDS {
            dst[w].store(src[w].load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    /// Moves the records at `[from, len)` one place up, to
    /// `[from + 1, len + 1)` (`len < cap`), the highest first: what an
    /// insertion at `from` makes room with. One bounds check for the whole
    /// range, then a plain loop of loads and stores.
    pub(super) fn move_recs_up(self, from: usize, len: usize) {
        if from >= len {
            return;
        }
        let recs = &self.quads[self.records + from..=self.records + len];
        for j in (1..recs.len()).rev() {
            let (src, dst) = (&recs[j - 1].0, &recs[j].0);
            for w in 0..REC_WORDS {
                dst[w].store(src[w].load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
    /// Moves the records at `[at + 1, len)` one place down, over the one at
    /// `at` (`at < len`), the lowest first.
    pub(super) fn move_recs_down(self, at: usize, len: usize) {
        if at + 1 >= len {
            return;
        }
        let recs = &self.quads[self.records + at..self.records + len];
        for j in 1..recs.len() {
            let (src, dst) = (&recs[j].0, &recs[j - 1].0);
            for w in 0..REC_WORDS {
                dst[w].store(src[w].load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
    pub(super) fn write_rec(self, i: usize, words: [u64; REC_WORDS]) {
        for (dst, w) in self.rec(i).iter().zip(words) {
            dst.store(w, Ordering::Relaxed);
        }
    }

    /// The index of the greatest of the first `len` offsets that is at or
    /// below `off`. Terminates, and stays in bounds, whatever a racing read
    /// sees.
    #[inline(always)]
    pub(super) fn predecessor(self, len: usize, off: usize) -> Option<usize> {
        let len = len.min(self.cap());
        if len == 0 {
            return None;
        }
        let g = guess(len, off);
        self.predecessor_near(len, off, g, self.off(g))
    }

    /// [`Block::predecessor`], given the offset at the guessed index `g`
    /// (`len` already clamped, `g < len`).
    #[inline(always)]
    pub(super) fn predecessor_near(
        self,
        len: usize,
        off: usize,
        g: usize,
        at_g: usize,
    ) -> Option<usize> {
        if at_g <= off {
            if g + 1 == len || self.off(g + 1) > off {
                return Some(g);
            }
            Some(self.search(g + 1, len - g - 1, off))
        } else if g == 0 || self.off(0) > off {
            None
        } else {
            Some(self.search(0, g, off))
        }
    }

    /// The greatest index in `[lo, lo + n)` whose offset is at or below
    /// `off`, given that `lo`'s is. Branch-free: the steps depend only on
    /// `n`, so a search mispredicts no branch on its way.
    #[inline(always)]
    fn search(self, lo: usize, n: usize, off: usize) -> usize {
        let (mut base, mut n) = (lo, n);
        while n > 1 {
            let half = n / 2;
            let mid = base + half;
            base = if self.off(mid) <= off { mid } else { base };
            n -= half;
        }
        base
    }

    pub(super) fn exact(self, len: usize, off: usize) -> Option<usize> {
        self.predecessor(len, off).filter(|&i| self.off(i) == off)
    }

    #[inline(always)]
    pub(super) fn info(self, i: usize, start: usize) -> RegionInfo {
        info_of(self.rec(i), start)
    }
}

/// A zeroed arena chunk of `n` quads, never freed.
fn new_chunk(n: usize) -> &'static [Quad] {
    let quads: Vec<Quad> = (0..n)
        .map(|_| Quad([const { AtomicU64::new(0) }; REC_WORDS]))
        .collect();
    Box::leak(quads.into_boxed_slice())
}

/// Where in a page of `len` records the offset `off` most likely sits, if
/// the regions that start in the page are spread evenly (they are, roughly,
/// in an allocator's page of one size class).
#[inline(always)]
pub(super) fn guess(len: usize, off: usize) -> usize {
    ((off * len) >> PAGE_SHIFT).min(len - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time offset shifts and the bulk record moves against
    /// moving one offset and one record at a time, at every start and
    /// length of a 64-record class.
    #[test]
    fn shifts_match_one_at_a_time() {
        let class = 9; // 64 records
        let mut arena: &'static [Quad] = &[];
        let (a, b) = (
            Block::carve(&mut arena, class),
            Block::carve(&mut arena, class),
        );
        let cap = a.cap();
        let fill = |blk: Block| {
            for i in 0..cap {
                blk.set_off(i, 1000 + i);
                let w = i as u64;
                blk.write_rec(i, [w, w << 8, w << 16, !w]);
            }
        };
        let state = |blk: Block, n: usize| {
            (0..n)
                .map(|i| (blk.off(i), blk.words(i)))
                .collect::<Vec<_>>()
        };
        for len in 1..cap {
            for at in 0..len {
                // Up: the place at `at` is the caller's to set.
                fill(a);
                fill(b);
                a.shift_offs_up(at, len);
                a.move_recs_up(at, len);
                for j in (at..len).rev() {
                    b.set_off(j + 1, b.off(j));
                    b.copy_rec(j, b, j + 1);
                }
                a.set_off(at, 7);
                b.set_off(at, 7);
                assert_eq!(state(a, len + 1), state(b, len + 1), "up at {at} len {len}");
                // Down, over the one at `at`.
                fill(a);
                fill(b);
                a.shift_offs_down(at, len);
                a.move_recs_down(at, len);
                for j in at + 1..len {
                    b.set_off(j - 1, b.off(j));
                    b.copy_rec(j, b, j - 1);
                }
                assert_eq!(
                    state(a, len - 1),
                    state(b, len - 1),
                    "down at {at} len {len}"
                );
            }
        }
    }
}
