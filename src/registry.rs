//! The registry: every tracked region, live or recently freed, and the
//! containing-address lookup that every check asks.
//!
//! # Design
//!
//! Regions never overlap (they come from real allocators; a record that a new
//! allocation overlaps is stale and is dropped), so the only region that can
//! contain an address is the one with the greatest start at or below it.
//!
//! **Pages.** The address space is cut into 4 KiB pages. The records of the
//! regions that *start* in a page live together in one block: a small sorted
//! array of the starts' 12-bit offsets in the page, and after it the records,
//! 32 bytes each. A four-level radix directory (like a page table) maps a page
//! number to its *slot*: the block (its address and size class in one word),
//! the number of records in it, and the page's *cover*, naming the region,
//! begun in an earlier page, that reaches into this one (a region writes its
//! start into the cover of every later page it reaches). A lookup is one
//! directory walk, one search over at most a page's worth of 2-byte offsets,
//! and one record read; if nothing starts in the page at or below the
//! address, the page's cover names the only candidate. Nothing grows with the
//! number of regions. The search starts where the offset would sit if the
//! page's regions were spread evenly (in an allocator's page of one size
//! class they are), and the record at that guess is read together with the
//! guessed offset, so a lookup of memory that is in no cache usually waits
//! for one miss rather than three in a row. Regions larger than [`HUGE`] do
//! not write covers (a terabyte reservation would write millions); they are
//! kept in a short side list consulted only while one exists.
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
//! **Records.** Four words: the tag (id and creating thread), the indices of
//! the region's [`Extra`] (in the shard's slab, touched only under the lock)
//! and of its allocation [`Site`] (interned once per distinct site), its size,
//! and one word packing pins, retains, flags, allocator family, kind and
//! state. With the 2-byte offset that is 34 bytes a region
//! ([`REGION_RECORD_BYTES`]), plus the unused tail of its page's block.
//! Writers decode a record into a [`Region`] (the view the rest of the crate
//! edits) and encode it back.
//!
//! **Quarantine.** Freed regions stay recorded, marked freed, in a per-shard
//! bounded FIFO, so a late use or a second free names the region and the site
//! that freed it. The quarantine also holds the freed *memory* back from
//! reuse (it gives a block back to its allocator only when the block leaves
//! the FIFO): that is what makes a freed record trustworthy, since no new
//! allocation can sit in a range the record still names. A library's own
//! deallocator runs at once instead (it may be a destroy function), and its
//! record is marked released: it then judges only an exact second free.
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
//! **Recent answers.** A thread also keeps its last few answers with the
//! sequence number of the shard they came from; while the shard has not
//! changed, the answer holds, and the scan asks it one byte (is this live,
//! unpinned managed memory?) without reading the record.
//!
//! Invariants, held under each shard's lock (and at every even sequence
//! number):
//! - a page's block lists the offsets of the records that start in the page,
//!   strictly increasing, as many as its slot's count, and regions do not
//!   overlap;
//! - a page has a block exactly when some record starts in it, and the block
//!   is in its shard's page list at the position its first word names;
//! - the cover of a page, when set, names the record (of at most [`HUGE`]
//!   bytes) that reaches into the page from an earlier one; every record
//!   larger than [`HUGE`] is in the huge list;
//! - a block's size class never changes (a reused block keeps its class), and
//!   the directory word naming a block carries that class;
//! - every freed region has an entry in its shard's quarantine FIFO; entries
//!   whose region was since replaced are skipped on eviction (ids differ);
//! - a page's unpinned count is the number of live, unpinned managed records
//!   that start in it.
//!
//! Lock order: a shard's mutex, then the directory's, the huge list's or the
//! site table's (never the other way round); no two shard mutexes at once.

use std::alloc::Layout;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ptr::null_mut;
use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Mutex, MutexGuard, OnceLock};

use backtrace::Backtrace;

use crate::site::Site;

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
}

/// The rare, large facts about a region, boxed so the common record stays
/// small: most regions never need any of them.
#[derive(Default)]
pub(crate) struct Extra {
    pub type_name: Option<fn() -> &'static str>,
    pub alloc_trace: Option<Backtrace>,
    pub free_site: Option<Site>,
    pub free_trace: Option<Backtrace>,
    pub pin_site: Option<Site>,
    pub pin_trace: Option<Backtrace>,
    pub retain_site: Option<Site>,
    pub retain_trace: Option<Backtrace>,
    pub leak_reason: Option<String>,
}

const THREAD_BITS: u32 = 24;

/// One tracked range, as the rest of the crate sees and edits it: decoded
/// from the stored record under the shard's lock, and encoded back after an
/// [`update`]. Its start is the key it was found by.
pub(crate) struct Region {
    pub size: usize,
    pub site: Option<Site>,
    pub extra: Option<Box<Extra>>,
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

// ---- stored records ----------------------------------------------------------

/// Words per stored record: tag; extra and site indices; size; packed facts.
const REC_WORDS: usize = 4;
const W_TAG: usize = 0;
const W_INDICES: usize = 1;
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

// ---- blocks: the records that start in one page --------------------------------

const PAGE_SHIFT: u32 = 12;
const PAGE_MASK: usize = (1 << PAGE_SHIFT) - 1;

/// Capacities of a page's block, in records. Steps of at most 1.5× keep the
/// unused tail of a block small; a page can hold 4096 one-byte regions.
const CLASSES: [usize; 22] = [
    1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
    4096,
];
const NCLASSES: usize = CLASSES.len();
/// Blocks are aligned to 32 bytes, so a block pointer's low five bits are
/// free: they hold its class, and one atomic word names a block and its
/// size together.
const CLASS_MASK: usize = 31;

/// One cache-line quarter: the unit blocks are made of. A record is exactly
/// one, so it never straddles two cache lines.
#[repr(C, align(32))]
struct Quad([AtomicU64; REC_WORDS]);

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
struct Block {
    quads: &'static [Quad],
    class: usize,
    records: usize,
}

impl Block {
    /// A new block of `class`, carved from `arena` (refilled when short).
    fn carve(arena: &mut &'static [Quad], class: usize) -> Block {
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
    fn tagged(self) -> usize {
        self.quads.as_ptr() as usize | self.class
    }

    /// The block a directory word names.
    #[inline(always)]
    fn at(tagged: usize) -> Option<Block> {
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
    fn class(self) -> usize {
        self.class
    }
    #[inline(always)]
    fn cap(self) -> usize {
        CLASSES[self.class]
    }
    fn pos(self) -> usize {
        self.word(0).load(Ordering::Relaxed) as usize
    }
    fn set_pos(self, pos: usize) {
        self.word(0).store(pos as u64, Ordering::Relaxed);
    }
    #[inline(always)]
    fn off(self, i: usize) -> usize {
        let w = self.word(1 + i / 4).load(Ordering::Relaxed);
        ((w >> ((i % 4) * 16)) & 0xffff) as usize
    }
    fn set_off(self, i: usize, off: usize) {
        let word = self.word(1 + i / 4);
        let shift = (i % 4) * 16;
        let w = word.load(Ordering::Relaxed) & !(0xffff << shift);
        word.store(w | (off as u64) << shift, Ordering::Relaxed);
    }
    #[inline(always)]
    fn rec(self, i: usize) -> &'static [AtomicU64; REC_WORDS] {
        &self.quads[self.records + i].0
    }
    /// Record `i`'s words.
    #[inline(always)]
    fn words(self, i: usize) -> [u64; REC_WORDS] {
        let r = self.rec(i);
        [
            r[0].load(Ordering::Relaxed),
            r[1].load(Ordering::Relaxed),
            r[2].load(Ordering::Relaxed),
            r[3].load(Ordering::Relaxed),
        ]
    }
    fn copy_rec(self, from: usize, to: Block, at: usize) {
        let (src, dst) = (self.rec(from), to.rec(at));
        for w in 0..REC_WORDS {
            dst[w].store(src[w].load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    fn write_rec(self, i: usize, words: [u64; REC_WORDS]) {
        for (dst, w) in self.rec(i).iter().zip(words) {
            dst.store(w, Ordering::Relaxed);
        }
    }

    /// The index of the greatest of the first `len` offsets that is at or
    /// below `off`. Terminates, and stays in bounds, whatever a racing read
    /// sees.
    #[inline(always)]
    fn predecessor(self, len: usize, off: usize) -> Option<usize> {
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
    fn predecessor_near(self, len: usize, off: usize, g: usize, at_g: usize) -> Option<usize> {
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

    fn exact(self, len: usize, off: usize) -> Option<usize> {
        self.predecessor(len, off).filter(|&i| self.off(i) == off)
    }

    #[inline(always)]
    fn info(self, i: usize, start: usize) -> RegionInfo {
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
fn guess(len: usize, off: usize) -> usize {
    ((off * len) >> PAGE_SHIFT).min(len - 1)
}

#[inline(always)]
fn info_of(r: &[AtomicU64; REC_WORDS], start: usize) -> RegionInfo {
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

// ---- the directory -------------------------------------------------------------

/// A page's entry: its block (tagged with its class) and how many records
/// the block holds, and its cover: the region from an earlier page that
/// reaches into this one, as `pages back << 12 | offset` (0: none).
struct PageSlot {
    block: AtomicUsize,
    len: AtomicU32,
    cover: AtomicU32,
}

impl PageSlot {
    /// The page's block and its number of records.
    #[inline(always)]
    fn block(&self) -> Option<(Block, usize)> {
        let b = Block::at(self.block.load(Ordering::Acquire))?;
        Some((b, self.len.load(Ordering::Relaxed) as usize))
    }

    /// The start of the region that reaches into `page` from before it.
    fn cover_start(&self, page: usize) -> Option<usize> {
        let c = self.cover.load(Ordering::Acquire) as usize;
        let back = c >> PAGE_SHIFT;
        (c != 0 && back <= page).then(|| ((page - back) << PAGE_SHIFT) | (c & PAGE_MASK))
    }
}

/// The cover word a region starting at `start` writes into `page`.
fn cover_word(start: usize, page: usize) -> u32 {
    (((page - (start >> PAGE_SHIFT)) << PAGE_SHIFT) | (start & PAGE_MASK)) as u32
}

const FANOUT_BITS: u32 = 12;
const FANOUT: usize = 1 << FANOUT_BITS;
/// Page-number bits the root level indexes (the top 16 of 52).
const ROOT_BITS: u32 = usize::BITS - PAGE_SHIFT - 3 * FANOUT_BITS;

/// 4096 pages: 16 MiB of address space. Beside each page's slot, the
/// page's unpinned count: how many live, unpinned managed regions start in
/// the page (see [`count_unpinned`]).
struct Leaf([PageSlot; FANOUT], [AtomicU16; FANOUT]);
/// 4096 leaves: 64 GiB.
struct Mid([AtomicPtr<Leaf>; FANOUT]);
/// 4096 mids: 256 TiB.
struct Upper([AtomicPtr<Mid>; FANOUT]);

/// Directory nodes are allocated zero-filled.
///
/// # Safety
/// The all-zero bit pattern is a valid value of the type.
unsafe trait ZeroNode {}
// SAFETY: null `AtomicPtr`s and zero `AtomicUsize`/`AtomicU32`/`AtomicU16`s
// (same bit validity as raw pointers and integers).
unsafe impl ZeroNode for Leaf {}
// SAFETY: as above.
unsafe impl ZeroNode for Mid {}
// SAFETY: as above.
unsafe impl ZeroNode for Upper {}

static ROOT: [AtomicPtr<Upper>; 1 << ROOT_BITS] =
    [const { AtomicPtr::new(null_mut()) }; 1 << ROOT_BITS];
/// Serialises the creation of directory nodes (rare: once per 16 MiB of
/// address space tracked).
static DIRECTORY: Mutex<()> = Mutex::new(());

/// A node of the directory: never freed, so readers may hold it forever.
fn node<T>(ptr: &AtomicPtr<T>) -> Option<&'static T> {
    // SAFETY: a non-null node pointer comes from `child_or_create`: a
    // zero-filled allocation of a `ZeroNode` type, published with Release
    // (read here with Acquire), never freed.
    unsafe { ptr.load(Ordering::Acquire).as_ref() }
}

fn child_or_create<T: ZeroNode>(ptr: &AtomicPtr<T>) -> &'static T {
    if let Some(n) = node(ptr) {
        return n;
    }
    let _guard = DIRECTORY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = node(ptr) {
        return n;
    }
    let layout = Layout::new::<T>();
    // SAFETY: the layout is not zero-sized (every node is a 4096-entry array).
    let raw = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if raw.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    ptr.store(raw, Ordering::Release);
    // SAFETY: zero is a valid `T` (`ZeroNode`), and the node is never freed.
    unsafe { &*raw }
}

/// The directory entry of `page`, if its leaf exists.
#[inline(always)]
fn page_slot(page: usize) -> Option<&'static PageSlot> {
    let upper = node(&ROOT[page >> (3 * FANOUT_BITS)])?;
    let mid = node(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)])?;
    let leaf = node(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)])?;
    Some(&leaf.0[page & (FANOUT - 1)])
}

fn page_slot_or_create(page: usize) -> &'static PageSlot {
    &leaf_or_create(page).0[page & (FANOUT - 1)]
}

fn leaf_or_create(page: usize) -> &'static Leaf {
    let upper = child_or_create(&ROOT[page >> (3 * FANOUT_BITS)]);
    let mid = child_or_create(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)]);
    child_or_create(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)])
}

/// The slot and the unpinned count of `page`, if its leaf exists.
#[inline(always)]
fn page_entry(page: usize) -> Option<(&'static PageSlot, &'static AtomicU16)> {
    let upper = node(&ROOT[page >> (3 * FANOUT_BITS)])?;
    let mid = node(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)])?;
    let leaf = node(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)])?;
    let k = page & (FANOUT - 1);
    Some((&leaf.0[k], &leaf.1[k]))
}

/// Adds one to (`up`) or takes one from the unpinned count of the page
/// `start` is in. Called inside a write of `start`'s shard whenever a
/// record starts or stops being live, unpinned managed memory; only that
/// shard's writers change the count, so a load and a store do. With the
/// page's cover (the one region that reaches into it from before), a count
/// of zero proves that no such region contains an address of the page, and
/// the pointer scan dismisses the address without a lookup. A page holds at
/// most 4096 starts, so the count never wraps; a count left too high would
/// only cost lookups.
fn count_unpinned(start: usize, up: bool) {
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

/// Whether the stored record `words` is live, unpinned managed memory.
#[inline(always)]
fn words_unpinned(words: &[u64; REC_WORDS]) -> bool {
    words[W_FACTS] & (KIND_C | STATE_FREED | 0xffff) == 0
}

/// Whether the leaf holding `page` exists (a purge skips absent leaves).
fn leaf_exists(page: usize) -> bool {
    let Some(upper) = node(&ROOT[page >> (3 * FANOUT_BITS)]) else {
        return false;
    };
    let Some(mid) = node(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)]) else {
        return false;
    };
    node(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)]).is_some()
}

/// Regions larger than this do not write covers into the pages they reach
/// (256 MiB: at most 65,536 covers per region); they go to the huge list.
const HUGE: usize = 256 << 20;

/// The `(start, end)` of every record larger than [`HUGE`].
static HUGE_LIST: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
static HUGE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Writes (or clears) the covers of a region: the pages after its start
/// page that it reaches. Called inside a write of the region's shard.
fn set_covers(start: usize, size: usize, on: bool) {
    let size = size.max(1);
    let first = (start >> PAGE_SHIFT) + 1;
    let last = (start.saturating_add(size) - 1) >> PAGE_SHIFT;
    if first > last {
        return;
    }
    if size > HUGE {
        let mut list = HUGE_LIST.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            list.push((start, start.saturating_add(size)));
        } else if let Some(i) = list.iter().position(|&(s, _)| s == start) {
            list.swap_remove(i);
        }
        HUGE_COUNT.store(list.len(), Ordering::Relaxed);
        return;
    }
    for page in first..=last {
        let cover = cover_word(start, page);
        if on {
            page_slot_or_create(page)
                .cover
                .store(cover, Ordering::Release);
        } else if let Some(slot) = page_slot(page) {
            // Another record may have taken the page over (the old one was
            // stale): only clear what this region wrote.
            if slot.cover.load(Ordering::Relaxed) == cover {
                slot.cover.store(0, Ordering::Release);
            }
        }
    }
}

// ---- interned sites --------------------------------------------------------------

const SITE_CHUNK: usize = 1024;
/// At most 4 Mi distinct sites; any beyond are recorded as unknown.
const SITE_CHUNKS: usize = 4096;

/// Index → site: append-only, readable without a lock.
static SITES: [OnceLock<Box<[OnceLock<Site>; SITE_CHUNK]>>; SITE_CHUNKS] =
    [const { OnceLock::new() }; SITE_CHUNKS];
/// Site → index, for interning.
static SITE_INDEX: Mutex<Option<HashMap<Site, u32, BuildHasherDefault<WordHasher>>>> =
    Mutex::new(None);

/// A multiplicative hash of the words a key writes (sites are one word).
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

thread_local! {
    /// A direct-mapped cache in front of the site index: a program
    /// allocates from few lines, many times.
    static SITE_CACHE: [Cell<(Option<Site>, u32)>; 64] =
        const { [const { Cell::new((None, 0)) }; 64] };
}

/// The index of `site` (0 for none).
fn intern(site: Option<Site>) -> u32 {
    let Some(site) = site else {
        return 0;
    };
    let mut h = WordHasher::default();
    site.hash(&mut h);
    let slot = (h.finish() >> 58) as usize;
    if let Ok((cached, ix)) = SITE_CACHE.try_with(|c| c[slot].get()) {
        if cached == Some(site) {
            return ix;
        }
    }
    let mut index = SITE_INDEX.lock().unwrap_or_else(|e| e.into_inner());
    let map = index.get_or_insert_with(Default::default);
    let next = map.len() + 1;
    let ix = *map.entry(site).or_insert_with(|| {
        if next >= SITE_CHUNK * SITE_CHUNKS {
            return 0;
        }
        let chunk = SITES[next / SITE_CHUNK]
            .get_or_init(|| Box::new([const { OnceLock::new() }; SITE_CHUNK]));
        let _ = chunk[next % SITE_CHUNK].set(site);
        next as u32
    });
    drop(index);
    let _ = SITE_CACHE.try_with(|c| c[slot].set((Some(site), ix)));
    ix
}

fn site_at(ix: u32) -> Option<Site> {
    let ix = ix as usize;
    SITES
        .get(ix / SITE_CHUNK)?
        .get()?
        .get(ix % SITE_CHUNK)?
        .get()
        .copied()
}

// ---- shards ----------------------------------------------------------------------

const CHUNK_SHIFT: u32 = 20;
const SHARD_BITS: u32 = 6;
const NSHARDS: usize = 1 << SHARD_BITS;

/// How many times a reader retries while writes keep changing its shard,
/// before it waits on the shard's mutex.
const SPINS: usize = 64;

/// How a quarantined block's memory is given back when it leaves the
/// quarantine. Holding the memory until then is what makes a freed record
/// trustworthy: no allocation can reuse the range while the record names it,
/// so a pointer into it really is a pointer into freed memory.
#[derive(Clone, Copy)]
pub(crate) enum Release {
    /// Nothing to give back: the memory is kept for good (C may still
    /// hold a pointer into it, so it is leaked rather than freed).
    Nothing,
    /// A C deallocator.
    C(unsafe extern "C" fn(*mut c_void)),
    /// Rust's global allocator.
    Rust(Layout),
    /// Given back already by the caller: the record is kept only to catch
    /// a second free of the same pointer.
    Released,
}

impl Release {
    /// Gives the memory at `start` back.
    ///
    /// # Safety
    /// `start` is the block this release was recorded for, nothing uses it
    /// any more, and it is released once.
    pub(crate) unsafe fn run(self, start: usize) {
        match self {
            Release::Nothing | Release::Released => {}
            // SAFETY: forwarded contract: the block came from this
            // deallocator's allocator.
            Release::C(free) => unsafe { free(start as *mut c_void) },
            // SAFETY: forwarded contract: the block came from the global
            // allocator with this layout.
            Release::Rust(layout) => unsafe { std::alloc::dealloc(start as *mut u8, layout) },
        }
    }
}

/// A freed block waiting in the quarantine.
struct Quarantined {
    start: usize,
    id: u64,
    size: usize,
    release: Release,
}

/// What a shard's mutex guards: the bookkeeping only writers touch.
struct ShardInner {
    /// What is left of the current arena chunk.
    arena: &'static [Quad],
    /// Blocks that pages outgrew or emptied, by class, for reuse.
    free_blocks: [Vec<Block>; NCLASSES],
    /// The pages of this shard that have a block, with their slots (a leak
    /// check visits them all, without walking the directory).
    pages: Vec<(usize, &'static PageSlot)>,
    /// The records' `Extra`s (a record holds its index plus one).
    extras: Vec<Option<Box<Extra>>>,
    free_extras: Vec<u32>,
    quarantine: VecDeque<Quarantined>,
    quarantine_bytes: usize,
}

/// A shard: its writers' mutex, and its sequence number (odd while a write
/// is in progress), which also tells a thread whether an answer it kept is
/// still good. Aligned to two cache lines so that neighbouring shards never
/// share one.
#[repr(align(128))]
struct Shard {
    lock: Mutex<ShardInner>,
    version: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            lock: Mutex::new(ShardInner {
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
    // A panic while a shard is locked leaves it consistent (every change to
    // the stored records is completed before anything that could panic), so
    // a poisoned lock is used as is: the checker must not turn one panic
    // into a cascade.
    /// The mutex, for reading under it (no write in progress meanwhile).
    fn lock(&self) -> MutexGuard<'_, ShardInner> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Every change to a shard goes through here: the sequence number is
    /// odd from before the first change until after the last (the guard
    /// makes it even again when dropped, also while unwinding).
    fn write(&'static self) -> Writing {
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

struct Writing {
    inner: MutexGuard<'static, ShardInner>,
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

static SHARDS: [Shard; NSHARDS] = [const { Shard::new() }; NSHARDS];

#[inline(always)]
fn shard_of(addr: usize) -> &'static Shard {
    let chunk = (addr >> CHUNK_SHIFT) as u64;
    &SHARDS[(chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS)) as usize]
}

/// Runs the read `f` until it saw one consistent state of `shard`, and
/// returns its answer with the sequence number it is valid for.
#[inline(always)]
fn read_stable<T>(shard: &'static Shard, f: impl Fn() -> T) -> (T, u64) {
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

impl ShardInner {
    fn take_block(&mut self, class: usize) -> Block {
        match self.free_blocks[class].pop() {
            Some(b) => b,
            None => Block::carve(&mut self.arena, class),
        }
    }

    fn put_extra(&mut self, ix: u32, extra: Option<Box<Extra>>) -> u32 {
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
    fn view(&mut self, b: Block, i: usize) -> Region {
        let words = b.words(i);
        let site = site_at((words[W_INDICES] >> 32) as u32);
        self.decode(words, site)
    }

    /// The view of a record's words (its `Extra` moved out of the slab).
    fn decode(&mut self, words: [u64; REC_WORDS], site: Option<Site>) -> Region {
        let facts = words[W_FACTS];
        Region {
            size: words[W_SIZE] as usize,
            site,
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
        }
    }

    /// Encodes a view back into record `i` of `b`, the record of the region
    /// starting at `start` (inside a write), keeping the pages' unpinned
    /// counts.
    fn store_view(&mut self, b: Block, i: usize, start: usize, view: Region) {
        let old = b.words(i);
        let (was, now) = (words_unpinned(&old), view.is_unpinned_managed());
        let words = self.encode(old[W_INDICES] as u32, view);
        b.write_rec(i, words);
        if was != now {
            count_unpinned(start, now);
        }
    }

    fn encode(&mut self, old_extra_ix: u32, view: Region) -> [u64; REC_WORDS] {
        let site_ix = intern(view.site);
        let extra_ix = self.put_extra(old_extra_ix, view.extra);
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

    /// The block of `page` and the index of the record starting at `start`.
    fn find_exact(start: usize) -> Option<(Block, usize)> {
        let (b, len) = page_slot(start >> PAGE_SHIFT)?.block()?;
        Some((b, b.exact(len, start & PAGE_MASK)?))
    }

    /// Adds a record starting at `start`; returns the record it replaced
    /// (one with the same start: stale).
    fn insert(&mut self, start: usize, view: Region) -> Option<Region> {
        let page = start >> PAGE_SHIFT;
        let off = start & PAGE_MASK;
        let slot = page_slot_or_create(page);
        let size = view.size;
        let (b, len) = match slot.block() {
            Some(found) => found,
            None => {
                let b = self.take_block(0);
                b.set_pos(self.pages.len());
                self.pages.push((page, slot));
                slot.len.store(0, Ordering::Relaxed);
                slot.block.store(b.tagged(), Ordering::Release);
                (b, 0)
            }
        };
        let pred = b.predecessor(len, off);
        if let Some(i) = pred.filter(|&i| b.off(i) == off) {
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
        let b = if len == b.cap() {
            self.grow(slot, b, len)
        } else {
            b
        };
        for j in (at..len).rev() {
            b.set_off(j + 1, b.off(j));
            b.copy_rec(j, b, j + 1);
        }
        b.set_off(at, off);
        if view.is_unpinned_managed() {
            count_unpinned(start, true);
        }
        let words = self.encode(0, view);
        b.write_rec(at, words);
        slot.len.store(len as u32 + 1, Ordering::Relaxed);
        set_covers(start, size, true);
        None
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
        slot.block.store(b.tagged(), Ordering::Release);
        self.free_blocks[old.class()].push(old);
        b
    }

    /// Removes the record starting at `start`, returning its view.
    fn remove(&mut self, start: usize) -> Option<Region> {
        let page = start >> PAGE_SHIFT;
        let slot = page_slot(page)?;
        let (b, len) = slot.block()?;
        let i = b.exact(len, start & PAGE_MASK)?;
        let view = self.view(b, i);
        // The record's extra index is freed with it.
        let extra_ix = b.rec(i)[W_INDICES].load(Ordering::Relaxed) as u32;
        if extra_ix != 0 {
            self.free_extras.push(extra_ix);
        }
        for j in i + 1..len {
            b.set_off(j - 1, b.off(j));
            b.copy_rec(j, b, j - 1);
        }
        slot.len.store(len as u32 - 1, Ordering::Relaxed);
        if len == 1 {
            slot.block.store(0, Ordering::Release);
            let pos = b.pos();
            self.pages.swap_remove(pos);
            if let Some((m, _)) = self.pages.get(pos).and_then(|(_, s)| s.block()) {
                m.set_pos(pos);
            }
            self.free_blocks[b.class()].push(b);
        }
        set_covers(start, view.size, false);
        if view.is_unpinned_managed() {
            count_unpinned(start, false);
        }
        Some(view)
    }
}

// ---- ids and threads -------------------------------------------------------------

/// Lowest and highest address ever tracked, and the same for managed memory:
/// the bounds pre-filter that lets a scan or a lookup of an unrelated word
/// return without touching the directory.
static LO: AtomicUsize = AtomicUsize::new(usize::MAX);
static HI: AtomicUsize = AtomicUsize::new(0);
static MANAGED_LO: AtomicUsize = AtomicUsize::new(usize::MAX);
static MANAGED_HI: AtomicUsize = AtomicUsize::new(0);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);

/// Ids are handed to threads in blocks, so making a region does not touch a
/// shared counter. Ids are unique, and grow along each thread: a leak scope
/// (which is per thread) can tell its regions by id.
const ID_BLOCK: u64 = 1024;

/// Set once anything is tracked: until then a mode-0 free skips the
/// registry entirely.
static EVER_TRACKED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static THREAD_SERIAL: u32 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) & ((1 << THREAD_BITS) - 1);
    /// This thread's next id and the end of its block.
    static THREAD_IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A small number naming the current thread in region records.
pub(crate) fn thread_serial() -> u32 {
    THREAD_SERIAL.try_with(|t| *t).unwrap_or(0)
}

/// A fresh id (for a region or a pinner).
pub(crate) fn new_id() -> u64 {
    THREAD_IDS
        .try_with(|ids| {
            let (mut next, mut end) = ids.get();
            if next == end {
                next = NEXT_ID.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next + ID_BLOCK;
            }
            ids.set((next + 1, end));
            next
        })
        // A thread whose locals are gone takes its id straight from the
        // shared sequence.
        .unwrap_or_else(|_| NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// The id this thread's next region will get: regions this thread creates
/// after this call have ids at least this large.
pub(crate) fn next_id() -> u64 {
    THREAD_IDS
        .try_with(|ids| {
            let (next, end) = ids.get();
            if next == end {
                // Take the next block now, so the answer is a real lower
                // bound for the ids to come.
                let next = NEXT_ID.fetch_add(ID_BLOCK, Ordering::Relaxed);
                ids.set((next, next + ID_BLOCK));
                next
            } else {
                next
            }
        })
        .unwrap_or_else(|_| NEXT_ID.load(Ordering::Relaxed))
}

/// How many freed blocks, and how many of their bytes, each shard holds
/// back from reuse: 64 Ki blocks / 64 MiB in all in mode 1, 1 Mi blocks /
/// 256 MiB in mode 2.
fn quarantine_limits() -> (usize, usize) {
    if crate::mode::full() {
        (1 << 14, 4 << 20)
    } else {
        (1 << 10, 1 << 20)
    }
}

// ---- registering and forgetting ---------------------------------------------------

/// What to register.
pub(crate) struct NewRegion {
    pub start: usize,
    pub size: usize,
    pub kind: RegionKind,
    pub family: u8,
    pub flags: u8,
    pub site: Option<Site>,
    pub type_name: Option<fn() -> &'static str>,
}

/// Registers a live region and returns its id. Stale records it overlaps
/// (freed regions whose memory was reused, or live records of memory that was
/// freed behind the checker's back) are dropped.
pub(crate) fn insert(new: NewRegion) -> u64 {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let id = new_id();
    let size = new.size.max(1);
    let end = new.start.saturating_add(size);
    let mut stale = purge(new.start, end);
    let trace = crate::mode::event_backtraces().then(Backtrace::new_unresolved);
    let extra = (trace.is_some() || new.type_name.is_some()).then(|| {
        Box::new(Extra {
            type_name: new.type_name,
            alloc_trace: trace,
            ..Extra::default()
        })
    });
    let region = Region {
        size: new.size,
        site: new.site,
        extra,
        tag: (id << THREAD_BITS) | u64::from(thread_serial()),
        pins: 0,
        retains: 0,
        kind: new.kind,
        state: RegionState::Live,
        family: new.family,
        flags: new.flags,
    };
    widen(&LO, &HI, new.start, size);
    if new.kind == RegionKind::Managed {
        crate::heap::mark_registered(new.start);
        widen(&MANAGED_LO, &MANAGED_HI, new.start, size);
    }
    // Interned before the shard lock: the site table has its own.
    intern(new.site);
    let replaced = shard_of(new.start).write().insert(new.start, region);
    stale.extend(replaced);
    if !EVER_TRACKED.load(Ordering::Relaxed) {
        EVER_TRACKED.store(true, Ordering::Relaxed);
    }
    crate::stats::region_created(new.kind == RegionKind::C, new.size);
    for old in &stale {
        forget_removed(old);
    }
    id
}

/// Drops the records that overlap `[start, end)` and returns them: only
/// stale ones can (live allocations do not overlap), so this is
/// bookkeeping, not a check. Candidates are found without a lock and
/// confirmed under their shard's.
fn purge(start: usize, end: usize) -> Vec<Region> {
    let mut removed = Vec::new();
    if start == 0 || start >= HI.load(Ordering::Relaxed) || end <= LO.load(Ordering::Relaxed) {
        return removed;
    }
    let mut confirm = |s: usize| {
        let mut w = shard_of(s).write();
        let Some((b, i)) = ShardInner::find_exact(s) else {
            return;
        };
        let info = b.info(i, s);
        if info.start < end && start < info.start.saturating_add(info.size.max(1)) {
            removed.extend(w.remove(s));
        }
    };
    // The region that contains `start`, begun before it.
    if let Some(r) = find(start, false) {
        if r.start < start {
            confirm(r.start);
        }
    }
    // Regions that start inside the range.
    let mut page = start >> PAGE_SHIFT;
    let last = (end - 1) >> PAGE_SHIFT;
    while page <= last {
        if !leaf_exists(page) {
            // Nothing was ever tracked in this leaf's 16 MiB.
            page = (page | (FANOUT - 1)) + 1;
            if page == 0 {
                break;
            }
            continue;
        }
        let base = page << PAGE_SHIFT;
        let mut candidates = Vec::new();
        if let Some((b, len)) = page_slot(page).and_then(PageSlot::block) {
            // From the first offset at or after `start` (a racing read may
            // see anything: candidates are confirmed under the lock).
            let len = len.min(b.cap());
            let from = start.max(base) & PAGE_MASK;
            let first = match b.predecessor(len, from) {
                Some(i) if b.off(i) == from => i,
                Some(i) => i + 1,
                None => 0,
            };
            for i in first..len {
                let s = base | b.off(i);
                if s >= end {
                    break;
                }
                candidates.push(s);
            }
        }
        for s in candidates {
            confirm(s);
        }
        page += 1;
    }
    removed
}

fn widen(lo: &AtomicUsize, hi: &AtomicUsize, start: usize, size: usize) {
    // Load first: after warm-up the bounds rarely move, and a plain load
    // keeps the cache line shared between threads.
    if start < lo.load(Ordering::Relaxed) {
        lo.fetch_min(start, Ordering::Relaxed);
    }
    let end = start.saturating_add(size);
    if end > hi.load(Ordering::Relaxed) {
        hi.fetch_max(end, Ordering::Relaxed);
    }
}

fn forget_removed(r: &Region) {
    crate::stats::region_gone(
        r.kind == RegionKind::C,
        r.size,
        r.state == RegionState::Live,
    );
}

// ---- lookups ------------------------------------------------------------------------

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
    if info.contains(addr) {
        Probe::Hit(info)
    } else {
        Probe::Miss
    }
}

/// The record that starts exactly at `start`, read without a lock.
fn probe_exact(start: usize) -> Option<RegionInfo> {
    let (b, i) = ShardInner::find_exact(start)?;
    Some(b.info(i, start))
}

/// The lock-free lookup: the address's page, then its cover (or the huge
/// list). `keep` stores the answer in the thread's recent answers.
#[inline(never)]
fn find(addr: usize, keep: bool) -> Option<RegionInfo> {
    let (info, shard, version) = find_versioned(addr)?;
    if keep {
        remember(shard, version, info);
    }
    Some(info)
}

/// The region that contains `addr`, with the shard it belongs to and the
/// sequence number the answer is valid for.
#[inline(always)]
fn find_versioned(addr: usize) -> Option<(RegionInfo, &'static Shard, u64)> {
    let page = addr >> PAGE_SHIFT;
    let shard = shard_of(addr);
    let (answer, version) = read_stable(shard, || probe(page, addr));
    match answer {
        Probe::Hit(info) => Some((info, shard, version)),
        Probe::Miss => None,
        Probe::Before => find_covering(addr, page),
    }
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

#[cold]
fn huge_containing(addr: usize) -> Option<usize> {
    let list = HUGE_LIST.lock().unwrap_or_else(|e| e.into_inner());
    list.iter()
        .find(|&&(s, e)| s <= addr && addr < e)
        .map(|&(s, _)| s)
}

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

fn remember(shard: &'static Shard, version: u64, info: RegionInfo) {
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
fn recall(addr: usize) -> Option<RegionInfo> {
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

/// The lookup behind the bounds pre-filter: the thread's recent answers
/// first, then the directory.
#[inline(always)]
fn lookup_slow(addr: usize, keep: bool) -> Option<RegionInfo> {
    match recall(addr) {
        Some(info) => Some(info),
        None => find(addr, keep),
    }
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

// ---- changing records ----------------------------------------------------------------

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

/// Marks the live region starting at `start` freed and puts it in the
/// quarantine, which gives its memory back with `release` when the block is
/// evicted (the oldest first, once the shard holds too many blocks or bytes).
/// Returns the region as it was just before; `None` when there is no such
/// region, in which case `release` runs at once.
pub(crate) fn mark_freed(
    start: usize,
    expect_id: Option<u64>,
    site: Option<Site>,
    release: Release,
) -> Option<RegionInfo> {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let trace = crate::mode::event_backtraces().then(Backtrace::new_unresolved);
    let mut w = shard_of(start).write();
    let Some((b, i)) = ShardInner::find_exact(start) else {
        drop(w);
        // SAFETY: the caller hands over a block it owns and no longer uses.
        unsafe { release.run(start) };
        return None;
    };
    let before = b.info(i, start);
    if expect_id.is_some_and(|id| id != before.id) {
        // Another block took this address since the caller's check: this
        // free is not about it.
        drop(w);
        // SAFETY: as above.
        unsafe { release.run(start) };
        return None;
    }
    if before.state != RegionState::Live {
        drop(w);
        // A second free of a quarantined block must never release it twice:
        // the callers report it and skip; this is a last line of defence.
        return Some(before);
    }
    let mut view = w.view(b, i);
    view.state = RegionState::Freed;
    if matches!(release, Release::Released) {
        view.flags |= flags::RELEASED;
    }
    if site.is_some() || trace.is_some() {
        let extra = view.extra_mut();
        extra.free_site = site;
        extra.free_trace = trace;
    }
    w.store_view(b, i, start, view);
    w.quarantine.push_back(Quarantined {
        start,
        id: before.id,
        size: before.size,
        release,
    });
    w.quarantine_bytes += before.size;
    let (max_blocks, max_bytes) = quarantine_limits();
    let mut evicted = Vec::new();
    while w.quarantine.len() > 1
        && (w.quarantine.len() > max_blocks || w.quarantine_bytes > max_bytes)
    {
        let Some(q) = w.quarantine.pop_front() else {
            break;
        };
        w.quarantine_bytes -= q.size;
        let current =
            probe_exact(q.start).is_some_and(|r| r.id == q.id && r.state == RegionState::Freed);
        if current {
            if let Some(r) = w.remove(q.start) {
                evicted.push((q, r));
            }
        }
        // Otherwise the record was replaced: the range was reused behind the
        // checker's back, so giving it back now would free someone else's
        // memory. It is left alone (a leak, never a corruption).
    }
    drop(w);
    crate::stats::region_freed(before.kind == RegionKind::C, before.size);
    for (q, r) in evicted {
        forget_removed(&r);
        // SAFETY: the block left the quarantine: it was freed by its owner,
        // held back from reuse since, and is released exactly once, here.
        unsafe { q.release.run(q.start) };
    }
    Some(before)
}

/// Forgets the region starting at `start` without quarantining it.
pub(crate) fn remove(start: usize) -> Option<RegionInfo> {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    // Most removes of an untracked pointer (a mode-0 free) find nothing:
    // they are answered without the lock, and without changing the shard's
    // sequence number (which would void other threads' recent answers).
    read_stable(shard_of(start), || probe_exact(start)).0?;
    let r = shard_of(start).write().remove(start)?;
    // A freed record's quarantine entry is skipped on eviction (id mismatch).
    let info = RegionInfo {
        start,
        size: r.size,
        id: r.id(),
        pins: r.pins,
        kind: r.kind,
        state: r.state,
        family: r.family,
        flags: r.flags,
    };
    forget_removed(&r);
    Some(info)
}

/// True while nothing was ever tracked: a mode-0 free can skip the
/// registry.
#[inline]
pub(crate) fn nothing_live() -> bool {
    !EVER_TRACKED.load(Ordering::Relaxed)
}

/// Calls `f` on every region, one shard at a time (each shard is locked
/// only while it is visited). `f` must not call back into the registry.
pub(crate) fn for_each(mut f: impl FnMut(usize, &Region)) {
    // A leak check visits every record, the quarantined ones included (a
    // million in mode 2): each record's words are read once, and the site
    // of the record before is reused (neighbours mostly share one).
    let mut last_site = (0u32, None);
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
                let (site_ix, extra_ix) =
                    ((words[W_INDICES] >> 32) as u32, words[W_INDICES] as u32);
                if site_ix != last_site.0 {
                    last_site = (site_ix, site_at(site_ix));
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
    pub alloc_trace: Option<Backtrace>,
    pub free_site: Option<Site>,
    pub free_trace: Option<Backtrace>,
    pub pin_site: Option<Site>,
    pub pin_trace: Option<Backtrace>,
    pub retain_site: Option<Site>,
    pub retain_trace: Option<Backtrace>,
    pub leak_reason: Option<String>,
}

impl RegionDetail {
    pub(crate) fn of(start: usize, r: &Region) -> RegionDetail {
        let e = r.extra.as_deref();
        RegionDetail {
            start,
            size: r.size,
            kind: r.kind,
            state: r.state,
            pins: r.pins,
            retains: r.retains,
            type_name: e.and_then(|e| e.type_name).map(|f| f()),
            family: r.family,
            alloc_site: r.site,
            alloc_trace: e.and_then(|e| e.alloc_trace.clone()),
            free_site: e.and_then(|e| e.free_site),
            free_trace: e.and_then(|e| e.free_trace.clone()),
            pin_site: e.and_then(|e| e.pin_site),
            pin_trace: e.and_then(|e| e.pin_trace.clone()),
            retain_site: e.and_then(|e| e.retain_site),
            retain_trace: e.and_then(|e| e.retain_trace.clone()),
            leak_reason: e.and_then(|e| e.leak_reason.clone()),
        }
    }
}

/// The details of the region starting at `start`.
#[cold]
pub(crate) fn detail(start: usize) -> Option<RegionDetail> {
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

/// Bytes of bookkeeping per region before the unused tail of its page's
/// block: the 32-byte record plus its 2-byte offset in the page's sorted
/// offsets. The benchmarks measure the whole cost per region (blocks,
/// directory, everything the registry allocates).
///
/// ```
/// assert_eq!(ffi_check::REGION_RECORD_BYTES, 34);
/// ```
pub const REGION_RECORD_BYTES: usize = REC_WORDS * 8 + 2;

/// The lowest and highest managed address ever tracked (`lo >= hi` when none).
#[inline]
pub(crate) fn managed_bounds() -> (usize, usize) {
    (
        MANAGED_LO.load(Ordering::Relaxed),
        MANAGED_HI.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    //! The registry against a plain ordered map of the same regions, and
    //! lock-free readers racing writers on the same pages. Each test uses
    //! its own window of synthetic addresses (the registry never reads the
    //! memory it tracks).

    use super::*;
    use std::collections::BTreeMap;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn add(start: usize, size: usize, kind: RegionKind) -> u64 {
        insert(NewRegion {
            start,
            size,
            kind,
            family: 0,
            flags: 0,
            site: Some(Site::caller()),
            type_name: None,
        })
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Model {
        size: usize,
        id: u64,
        freed: bool,
        pins: u16,
        managed: bool,
    }

    /// Every page's unpinned count in `[base, base + span)` is exactly the
    /// number of the model's live, unpinned managed regions starting in it.
    fn check_counts(model: &BTreeMap<usize, Model>, base: usize, span: usize) {
        let mut want: BTreeMap<usize, u16> = BTreeMap::new();
        for (&s, m) in model {
            if m.managed && !m.freed && m.pins == 0 {
                *want.entry(s >> PAGE_SHIFT).or_default() += 1;
            }
        }
        for page in base >> PAGE_SHIFT..(base + span) >> PAGE_SHIFT {
            let got = page_entry(page).map_or(0, |(_, c)| c.load(Ordering::Relaxed));
            let want = want.get(&page).copied().unwrap_or(0);
            assert_eq!(got, want, "unpinned count of page {page:#x}");
        }
    }

    /// The model's region containing `addr`.
    fn containing(model: &BTreeMap<usize, Model>, addr: usize) -> Option<(usize, Model)> {
        let (&s, &m) = model.range(..=addr).next_back()?;
        (addr < s + m.size.max(1)).then_some((s, m))
    }

    fn random_size(rng: &mut Rng) -> usize {
        match rng.below(10) {
            0 => 0,
            1..=5 => 1 + rng.below(128),
            6 | 7 => 1 + rng.below(6000),
            8 => 4096 * (1 + rng.below(4)),
            _ => 1 + rng.below(300_000),
        }
    }

    /// Checks every address of interest: region edges and random ones.
    fn check_lookups(model: &mut BTreeMap<usize, Model>, base: usize, span: usize, rng: &mut Rng) {
        let mut probes: Vec<usize> = Vec::new();
        for (&s, m) in model.iter() {
            let end = s + m.size.max(1);
            probes.extend([s, s.saturating_sub(1), end - 1, end, s + m.size.max(1) / 2]);
        }
        probes.extend((0..200).map(|_| base + rng.below(span)));
        for addr in probes {
            let want = containing(model, addr);
            let got = lookup_for_free(addr);
            match (want, got) {
                (Some((s, m)), Some(r)) => {
                    assert_eq!((r.start, r.size, r.id), (s, m.size, m.id), "at {addr:#x}");
                    assert_eq!(r.state == RegionState::Freed, m.freed, "at {addr:#x}");
                    assert_eq!(r.pins, m.pins, "at {addr:#x}");
                    assert_eq!(
                        lookup(addr).is_some(),
                        !m.freed,
                        "released filter at {addr:#x}"
                    );
                }
                (Some((s, m)), None) if m.freed => {
                    // Evicted from the quarantine: the record must be gone.
                    assert!(detail(s).is_none(), "freed {s:#x} is half there");
                    model.remove(&s);
                }
                (None, None) => {}
                (want, got) => panic!("at {addr:#x}: model {want:x?}, registry {got:x?}"),
            }
        }
    }

    #[test]
    fn registry_agrees_with_an_ordered_map() {
        const BASE: usize = 0x6a10_0000_0000 - 3 * 4096;
        const SPAN: usize = 6 << 20;
        for seed in 1..=6u64 {
            let base = BASE + (seed as usize) * (64 << 20);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut model: BTreeMap<usize, Model> = BTreeMap::new();
            for step in 0..1500 {
                match rng.below(8) {
                    0..=3 => {
                        let start = base + rng.below(SPAN);
                        let size = random_size(&mut rng);
                        let end = start + size.max(1);
                        let stale: Vec<usize> = model
                            .iter()
                            .filter(|(&s, m)| s < end && start < s + m.size.max(1))
                            .map(|(&s, _)| s)
                            .collect();
                        for s in stale {
                            model.remove(&s);
                        }
                        let kind = if rng.below(2) == 0 {
                            RegionKind::C
                        } else {
                            RegionKind::Managed
                        };
                        let id = add(start, size, kind);
                        model.insert(
                            start,
                            Model {
                                size,
                                id,
                                freed: false,
                                pins: 0,
                                managed: kind == RegionKind::Managed,
                            },
                        );
                    }
                    4 => {
                        if let Some((&s, _)) = model.iter().nth(rng.below(model.len().max(1))) {
                            let gone = remove(s).expect("a modelled region is registered");
                            assert_eq!(gone.start, s);
                            model.remove(&s);
                        }
                    }
                    5 => {
                        let n = rng.below(model.len().max(1));
                        if let Some((&s, m)) = model.iter_mut().nth(n) {
                            let before = mark_freed(s, Some(m.id), None, Release::Released);
                            if !m.freed {
                                assert_eq!(before.map(|r| r.state), Some(RegionState::Live));
                            }
                            m.freed = true;
                        }
                    }
                    6 => {
                        let n = rng.below(model.len().max(1));
                        if let Some((&s, m)) = model.iter_mut().nth(n) {
                            // Pins come and go; unpinned regions count.
                            let unpin = m.pins > 0 && rng.below(2) == 0;
                            let pins = update(s, |r| {
                                if unpin {
                                    r.pins -= 1;
                                } else {
                                    r.pins += 1;
                                }
                                r.extra_mut().leak_reason = Some(format!("step {step}"));
                                r.pins
                            });
                            if unpin {
                                m.pins -= 1;
                            } else {
                                m.pins += 1;
                            }
                            assert_eq!(pins, Some(m.pins));
                            let d = detail(s).expect("present");
                            assert_eq!(d.leak_reason.as_deref(), Some(&*format!("step {step}")));
                        }
                    }
                    _ => {
                        check_lookups(&mut model, base, SPAN, &mut rng);
                        check_counts(&model, base, SPAN + (1 << 20));
                    }
                }
            }
            check_lookups(&mut model, base, SPAN, &mut rng);
            check_counts(&model, base, SPAN + (1 << 20));
            let mut seen = BTreeMap::new();
            for_each(|s, r| {
                if (base..base + SPAN + (1 << 20)).contains(&s) {
                    seen.insert(s, (r.size, r.id()));
                }
            });
            let want: BTreeMap<usize, (usize, u64)> =
                model.iter().map(|(&s, m)| (s, (m.size, m.id))).collect();
            assert_eq!(seen, want, "seed {seed}");
            for s in want.keys() {
                remove(*s);
            }
            check_counts(&BTreeMap::new(), base, SPAN + (1 << 20));
            for addr in (0..2000).map(|_| base + rng.below(SPAN)) {
                assert!(lookup_for_free(addr).is_none(), "{addr:#x} after clearing");
            }
        }
    }

    #[test]
    fn large_and_huge_regions_are_found_from_any_page() {
        let base = 0x6b00_0000_0000;
        let big = base + 123;
        let id = add(big, 5 << 20, RegionKind::Managed);
        let huge = base + (1 << 30);
        let huge_id = add(huge, 300 << 20, RegionKind::C);
        for addr in [big, big + 4096, big + (3 << 20) + 17, big + (5 << 20) - 1] {
            assert_eq!(lookup(addr).map(|r| (r.start, r.id)), Some((big, id)));
        }
        assert!(lookup(big + (5 << 20)).is_none());
        assert!(lookup(big - 1).is_none());
        for addr in [huge + 1, huge + (150 << 20), huge + (300 << 20) - 1] {
            assert_eq!(lookup(addr).map(|r| (r.start, r.id)), Some((huge, huge_id)));
        }
        // A small region inside a page the big one reaches is stale: it
        // replaces the big record.
        let small = big + (2 << 20);
        add(small, 64, RegionKind::C);
        assert!(detail(big).is_none());
        assert!(lookup(big + (3 << 20)).is_none());
        assert_eq!(lookup(small + 8).map(|r| r.start), Some(small));
        remove(small);
        remove(huge);
        assert!(lookup(huge + (150 << 20)).is_none());
    }

    #[test]
    fn readers_never_see_a_write_half_done() {
        // Reader-owned regions at even slots, churned ones at odd slots of
        // the same pages: every lookup of a reader's region must find it
        // whole, and of a gap, nothing, while the writer grows, shrinks and
        // empties those pages' blocks.
        let base = 0x6c00_0000_0000;
        let slot = move |i: usize| base + i * 96;
        let stable: Vec<(usize, u64)> = (0..400)
            .map(|i| (slot(2 * i), add(slot(2 * i), 40, RegionKind::Managed)))
            .collect();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(7);
                while !stop.load(Ordering::Relaxed) {
                    let s = slot(2 * rng.below(400) + 1);
                    add(s, 48, RegionKind::C);
                    if rng.below(3) > 0 {
                        remove(s);
                    }
                }
            })
        };
        let mut rng = Rng(11);
        for _ in 0..300_000 {
            let (s, id) = stable[rng.below(stable.len())];
            let r = find(s + 39, false).expect("a stable region");
            assert_eq!((r.start, r.size, r.id), (s, 40, id));
            assert!(find(s + 40, false).is_none(), "the gap after {s:#x}");
            assert!(find(s + 95, false).is_none() || find(s + 96, false).is_some());
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer");
        for i in 0..800 {
            remove(slot(i));
        }
    }
}
