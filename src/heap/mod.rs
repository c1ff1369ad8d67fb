//! The tracking allocator's memory model: the header in front of every
//! Rust heap block, the page map that says where headers are, the blocks
//! lent to C as `*mut`, and the quarantine's rings of freed blocks.
//!
//! This floor knows what a heap block *is*; the allocator that makes and
//! frees them ([`TrackingAllocator`](crate::TrackingAllocator)) sits at the
//! top of the crate and uses it, and so do the checks in between (the
//! pointer scan, the boundary, pins, the report's description of a block).
//!
//! # Headers
//!
//! Each block carries a 16-byte header just before the pointer Rust sees:
//! its size, alignment and state, and a word that names the block's own
//! address (XOR a key), so a header is recognised only where one was written.
//! A lock-free page map counts, for every 4 KiB page, the headers that live
//! on it; the checker reads a header only on a page that holds one, so
//! probing an arbitrary address (a C handle, a stack pointer) never touches
//! unmapped memory. Finding the block a pointer starts is therefore a few
//! loads, without a lock and without a registry entry per block.
//!
//! Invariants:
//! - a page's count is the number of installed headers on it (a header is
//!   installed before its block is handed out and uninstalled before the
//!   block goes back to the inner allocator), so a page with a non-zero
//!   count is mapped;
//! - a header's identity word is the block's address XOR the key exactly
//!   while the block belongs to ffi-check's allocator;
//! - the state only gains bits while the block lives (`PROMOTED`, `LENT`,
//!   then `FREED`); `INTERNAL` blocks (the checker's own) are never checked;
//! - `PROMOTED` means the registry has (or had) the block's record, so the
//!   scan asks the registry, not the header.
//!
//! The page map's leaves come straight from `mmap`: no allocator is involved,
//! so the allocator's own tables never recurse into it.

use std::alloc::Layout;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicUsize, Ordering};

use crate::bookkeeping::map_into;

#[cfg(feature = "interpose")]
mod c_block;
#[cfg(feature = "interpose")]
mod c_reach;
mod lent;
mod quarantine;

#[cfg(feature = "interpose")]
#[cfg_attr(not(any(debug_assertions, feature = "always")), allow(unused_imports))]
pub(crate) use c_block::{
    c_alloc, c_alloc_trace, c_block_at, c_block_containing, c_clock, c_freed_block_containing,
    c_header, c_mark_freed, c_quarantine, c_release, c_resize, c_state, for_each_live_c,
    foreign_free, foreign_usable_size, mark_c_registered, wipe_dead_stack, CBlock,
};
#[cfg(feature = "interpose")]
pub(crate) use c_reach::unreachable_c_blocks;

pub use lent::HandedToC;
pub(crate) use lent::{handed_to_c, note_lent_mut};
pub(crate) use quarantine::{
    batch, free_record, local_ring, local_ring_if_any, my_shard, Batch, Entry, LocalRing, BATCH,
    HAS_ORPHANS, ORPHANS, PENDING_P, PENDING_SITE, QUARANTINE, SHARDS,
};

/// The memory model's locks, held across `fork` (see `crate::fork`): the
/// lent list's, then the quarantine's orphans' and rings'. Dropping the
/// value releases them.
pub(crate) struct ForkLocks {
    _lent: lent::ForkLock,
    _quarantine: quarantine::ForkLocks,
    #[cfg(feature = "interpose")]
    _c_quarantine: c_block::ForkLocks,
}

/// Takes the memory model's locks for `fork`'s prepare handler.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _lent: lent::lock_for_fork(),
        _quarantine: quarantine::lock_for_fork(),
        #[cfg(feature = "interpose")]
        _c_quarantine: c_block::lock_for_fork(),
    }
}

/// Bytes of header before each block.
pub(crate) const HDR: usize = 16;
/// Mixed into the identity word so that only a header ffi-check wrote matches.
const KEY: usize = 0x6666_692d_6368_6b21;

pub(crate) const SIZE_MASK: usize = (1 << 48) - 1;
const ALIGN_SHIFT: u32 = 48;
pub(crate) const STATE_SHIFT: u32 = 56;

/// Header states (the top byte of the meta word).
pub(crate) mod state {
    /// A live block of user code.
    pub const LIVE: usize = 1;
    /// Freed by Rust, waiting in the quarantine.
    pub const FREED: usize = 2;
    /// Allocated by ffi-check's own bookkeeping: never checked.
    pub const INTERNAL: usize = 4;
    /// Known to the registry (pinned or retained once).
    pub const PROMOTED: usize = 8;
    /// Lent to C as a `*mut` pointer (a candidate `into_raw` hand-over).
    pub const LENT: usize = 16;
}

/// Set once the first block is allocated: probes are pointless before.
static INSTALLED: AtomicBool = AtomicBool::new(false);
static HEAP_LO: AtomicUsize = AtomicUsize::new(usize::MAX);
static HEAP_HI: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// The page map: for each 4 KiB page, how many of our headers are on it.

const PAGE_SHIFT: usize = 12;
const LEAF_BITS: usize = 18;
const ROOT_BITS: usize = 48 - PAGE_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

/// The page map's root: a leaf pointer for each GiB of address space
/// (2 MiB).
type Root = [AtomicPtr<AtomicU16>; 1 << ROOT_BITS];

/// The root, mapped with the first leaf. Not a static array: two megabytes
/// in the middle of the program's `.bss` would split the statics the
/// mode-2 scan watches into pieces, one question to the kernel each.
static ROOT: AtomicPtr<Root> = AtomicPtr::new(ptr::null_mut());

/// The page map's root, if a leaf was ever created.
#[inline(always)]
fn root_map() -> Option<&'static Root> {
    // SAFETY: a non-null root is a zero-filled anonymous mapping of a
    // `Root` (null `AtomicPtr`s), published with Release (read here with
    // Acquire), never unmapped.
    unsafe { ROOT.load(Ordering::Acquire).as_ref() }
}

/// The page map's root, mapped now if it is not yet (`None` when the
/// kernel refuses the memory).
#[cold]
fn root_map_or_create() -> Option<&'static Root> {
    if let Some(r) = root_map() {
        return Some(r);
    }
    // Zeroed pages are null `AtomicPtr`s.
    map_into(&ROOT, std::mem::size_of::<Root>());
    root_map()
}

/// The addresses of the heap's bounds: statics of the checker that hold a
/// block's start, which the mode-2 scan of the statics skips.
pub(crate) fn bound_words() -> [usize; 2] {
    [&HEAP_LO, &HEAP_HI].map(|a| a as *const AtomicUsize as usize)
}

#[inline(always)]
fn leaf_slot(addr: usize) -> Option<(usize, usize)> {
    let page = addr >> PAGE_SHIFT;
    let root = page >> LEAF_BITS;
    (root < 1 << ROOT_BITS).then_some((root, page & (LEAF_LEN - 1)))
}

#[inline(always)]
fn page_count(addr: usize) -> Option<&'static AtomicU16> {
    let (root, i) = leaf_slot(addr)?;
    let leaf = root_map()?[root].load(Ordering::Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: a non-null leaf is a live, never-freed array of LEAF_LEN
    // counters, and i < LEAF_LEN.
    Some(unsafe { &*leaf.add(i) })
}

#[cold]
fn create_leaf(root: usize) -> Option<&'static AtomicPtr<AtomicU16>> {
    let bytes = LEAF_LEN * std::mem::size_of::<AtomicU16>();
    // Zeroed pages are valid `AtomicU16`s.
    let slot = &root_map_or_create()?[root];
    map_into(slot, bytes).then_some(())?;
    Some(slot)
}

#[inline]
fn page_count_or_create(addr: usize) -> Option<&'static AtomicU16> {
    if let Some(c) = page_count(addr) {
        return Some(c);
    }
    let (root, _) = leaf_slot(addr)?;
    create_leaf(root)?;
    page_count(addr)
}

// ---------------------------------------------------------------------------
// Headers.

#[inline(always)]
pub(crate) fn meta_of(size: usize, align: usize, st: usize) -> usize {
    size | ((align.trailing_zeros() as usize) << ALIGN_SHIFT) | (st << STATE_SHIFT)
}

#[inline(always)]
pub(crate) fn meta_size(meta: usize) -> usize {
    meta & SIZE_MASK
}

#[inline(always)]
pub(crate) fn meta_align(meta: usize) -> usize {
    1 << ((meta >> ALIGN_SHIFT) & 0xff)
}

#[inline(always)]
pub(crate) fn meta_state(meta: usize) -> usize {
    meta >> STATE_SHIFT
}

/// `meta` with the FREED state added.
#[inline(always)]
pub(crate) fn freed_meta(meta: usize) -> usize {
    meta | (state::FREED << STATE_SHIFT)
}

/// The header words of the block at `p`: meta, then identity.
///
/// # Safety
/// `p - HDR .. p` is mapped: a header of ours is on its page.
#[inline(always)]
pub(crate) unsafe fn words(p: usize) -> (&'static AtomicUsize, &'static AtomicUsize) {
    let h = p.wrapping_sub(HDR) as *const AtomicUsize;
    // SAFETY: the caller vouches the 16 bytes are mapped; they are aligned
    // (p is 16-aligned), and only ever accessed atomically by ffi-check.
    unsafe { (&*h, &*h.add(1)) }
}

/// The meta word of the block that starts at `p`, if ffi-check's allocator
/// made it (and has not given it back).
#[inline(always)]
pub(crate) fn header(p: usize) -> Option<usize> {
    if p & (HDR - 1) != 0 || p < HDR {
        return None;
    }
    let count = page_count(p - HDR)?;
    if count.load(Ordering::Relaxed) == 0 {
        return None;
    }
    // SAFETY: a header of ours lives on this page, so the page is mapped
    // (its block is still allocated from the inner allocator).
    let (meta, id) = unsafe { words(p) };
    if id.load(Ordering::Acquire) != p ^ KEY {
        return None;
    }
    Some(meta.load(Ordering::Acquire))
}

fn widen(p: usize, size: usize) {
    if p < HEAP_LO.load(Ordering::Relaxed) {
        HEAP_LO.fetch_min(p, Ordering::Relaxed);
    }
    let end = p.saturating_add(size.max(1));
    if end > HEAP_HI.load(Ordering::Relaxed) {
        HEAP_HI.fetch_max(end, Ordering::Relaxed);
    }
}

/// Writes the header of a fresh block. False when the page map cannot
/// cover it (the caller then gives the memory back).
#[inline]
pub(crate) fn install(p: usize, size: usize, align: usize, st: usize) -> bool {
    let Some(count) = page_count_or_create(p - HDR) else {
        return false;
    };
    // SAFETY: the 16 bytes before p are the block's own header space.
    let (meta, id) = unsafe { words(p) };
    meta.store(meta_of(size, align, st), Ordering::Relaxed);
    id.store(p ^ KEY, Ordering::Release);
    count.fetch_add(1, Ordering::Relaxed);
    if st != state::INTERNAL {
        widen(p, size);
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
    }
    true
}

/// Erases the header of a block about to go back to the inner allocator.
#[inline]
pub(crate) fn uninstall(p: usize) {
    // SAFETY: the block is still allocated, so its header is mapped.
    let (_, id) = unsafe { words(p) };
    id.store(0, Ordering::Release);
    if let Some(count) = page_count(p - HDR) {
        count.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn inner_layout(size: usize, align: usize) -> Option<(Layout, usize)> {
    if size > SIZE_MASK {
        return None;
    }
    let h = align.max(HDR);
    let total = size.checked_add(h)?;
    Layout::from_size_align(total, h).ok().map(|l| (l, h))
}

/// What the allocator knows of a block, for the checks and the reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub start: usize,
    pub size: usize,
    pub align: usize,
    pub freed: bool,
    /// Known to the registry (pinned or retained once, or a wrapper's box).
    pub promoted: bool,
}

/// The user block of the tracking allocator that starts at `addr`, live or
/// waiting in the quarantine. `None` for anything else (the allocator is not
/// installed, `addr` is inside a block, or not a heap block of ours).
#[inline]
pub(crate) fn block_at(addr: usize) -> Option<Block> {
    if !INSTALLED.load(Ordering::Relaxed)
        || addr < HEAP_LO.load(Ordering::Relaxed)
        || addr >= HEAP_HI.load(Ordering::Relaxed)
    {
        return None;
    }
    let meta = header(addr)?;
    let st = meta_state(meta);
    if st & state::INTERNAL != 0 {
        return None;
    }
    Some(Block {
        start: addr,
        size: meta_size(meta),
        align: meta_align(meta),
        freed: st & state::FREED != 0,
        promoted: st & state::PROMOTED != 0,
    })
}

/// The bounds of every user block ever allocated (`lo >= hi` when none), for
/// the scan's pre-filter.
#[inline]
pub(crate) fn heap_bounds() -> (usize, usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        return (usize::MAX, 0);
    }
    (
        HEAP_LO.load(Ordering::Relaxed),
        HEAP_HI.load(Ordering::Relaxed),
    )
}

/// For the pointer scan: `addr` is the start of a live, unpinned heap block
/// that the registry does not know (a promoted one is the registry's).
#[inline]
pub(crate) fn unpinned_block_at(addr: usize) -> bool {
    if !INSTALLED.load(Ordering::Relaxed) {
        return false;
    }
    match header(addr) {
        Some(meta) => meta_state(meta) & (state::INTERNAL | state::FREED | state::PROMOTED) == 0,
        None => false,
    }
}

/// True when a value with this alignment and size could hold an aligned
/// pointer: a block whose layout says otherwise is never scanned.
#[inline]
pub(crate) const fn may_hold_pointers(align: usize, size: usize) -> bool {
    align >= std::mem::align_of::<usize>() && size >= std::mem::size_of::<usize>()
}

/// Marks the live heap block at `addr` as known to the registry, the first
/// time it is pinned or retained, and returns it if this call did so (the
/// caller then registers it). Without the allocator this is one load; a
/// block already known costs a header read, no locked instruction.
pub(crate) fn try_promote(addr: usize) -> Option<Block> {
    let block = block_at(addr)?;
    if block.freed || block.promoted {
        return None;
    }
    // SAFETY: block_at found our header at addr, so it is mapped.
    let (meta, _) = unsafe { words(addr) };
    let old = meta.fetch_or(state::PROMOTED << STATE_SHIFT, Ordering::AcqRel);
    if meta_state(old) & state::PROMOTED != 0 {
        return None;
    }
    Some(block)
}

/// The registry now knows the managed region at `start` (a `Managed` or
/// `Pinned` box): the pointer scan must ask the registry about it, not the
/// header.
pub(crate) fn mark_registered(start: usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        return;
    }
    if let Some(meta) = header(start) {
        if meta_state(meta) & (state::LIVE | state::PROMOTED) == state::LIVE {
            // SAFETY: header() found ours at start.
            let (m, _) = unsafe { words(start) };
            m.fetch_or(state::PROMOTED << STATE_SHIFT, Ordering::AcqRel);
        }
    }
}
