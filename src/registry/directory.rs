//! The directory: each page's slot, and the list of huge regions.
//!
//! A four-level radix directory (like a page table) maps a page number to its
//! *slot*: the block (its address and size class in one word), the number of
//! records in it, and the page's *cover*, naming the region, begun in an
//! earlier page, that reaches into this one (a region writes its start into
//! the cover of every later page it reaches). Beside each slot, a leaf keeps
//! the page's unpinned count (see [`unpinned`](super::unpinned)). Nodes are
//! made on first use and never freed, so a reader may hold one forever.
//!
//! Regions larger than [`HUGE`] do not write covers (a terabyte reservation
//! would write millions); they are kept in a short side list consulted only
//! while one exists.
//!
//! Invariant (held under each shard's lock, and at every even sequence
//! number):
//! - the cover of a page, when set, names the record (of at most [`HUGE`]
//!   bytes) that reaches into the page from an earlier one; every record
//!   larger than [`HUGE`] is in the huge list.

use std::alloc::Layout;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::block::{Block, PAGE_MASK, PAGE_SHIFT};

/// A page's entry: its block (tagged with its class) and how many records
/// the block holds, and its cover: the region from an earlier page that
/// reaches into this one, as `pages back << 12 | offset` (0: none).
pub(super) struct PageSlot {
    pub(super) block: AtomicUsize,
    pub(super) len: AtomicU32,
    pub(super) cover: AtomicU32,
}

impl PageSlot {
    /// The page's block and its number of records.
    #[inline(always)]
    pub(super) fn block(&self) -> Option<(Block, usize)> {
        let b = Block::at(self.block.load(Ordering::Acquire))?;
        Some((b, self.len.load(Ordering::Relaxed) as usize))
    }

    /// The start of the region that reaches into `page` from before it.
    pub(super) fn cover_start(&self, page: usize) -> Option<usize> {
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
pub(super) const FANOUT: usize = 1 << FANOUT_BITS;
/// Page-number bits the root level indexes (the top 16 of 52).
const ROOT_BITS: u32 = usize::BITS - PAGE_SHIFT - 3 * FANOUT_BITS;

/// 4096 pages: 16 MiB of address space. Beside each page's slot, the
/// page's unpinned count: how many live, unpinned managed regions start in
/// the page (see [`count_unpinned`](super::unpinned::count_unpinned)).
pub(super) struct Leaf([PageSlot; FANOUT], pub(super) [AtomicU16; FANOUT]);
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

/// The root level: 65,536 uppers (512 KiB).
type Root = [AtomicPtr<Upper>; 1 << ROOT_BITS];

/// The root level, mapped when the first region is registered. Not a
/// static array: half a megabyte in the middle of the program's `.bss`
/// would split the statics the mode-2 scan watches into pieces, one
/// question to the kernel each.
static ROOT: AtomicPtr<Root> = AtomicPtr::new(null_mut());

/// The root level, if anything was ever registered.
#[inline(always)]
fn root() -> Option<&'static Root> {
    // SAFETY: a non-null root is a zero-filled anonymous mapping of a
    // `Root` (null `AtomicPtr`s), published with Release (read here with
    // Acquire), never unmapped.
    unsafe { ROOT.load(Ordering::Acquire).as_ref() }
}

/// The root level, mapped now if it is not yet.
#[cold]
fn root_or_create() -> &'static Root {
    if let Some(r) = root() {
        return r;
    }
    // Straight from the kernel: no allocator is involved.
    if !crate::bookkeeping::map_into(&ROOT, std::mem::size_of::<Root>()) {
        std::alloc::handle_alloc_error(Layout::new::<Root>());
    }
    root().expect("the root level was just published")
}
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
pub(super) fn page_slot(page: usize) -> Option<&'static PageSlot> {
    let upper = node(&root()?[page >> (3 * FANOUT_BITS)])?;
    let mid = node(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)])?;
    let leaf = node(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)])?;
    Some(&leaf.0[page & (FANOUT - 1)])
}

pub(super) fn page_slot_or_create(page: usize) -> &'static PageSlot {
    &leaf_or_create(page).0[page & (FANOUT - 1)]
}

pub(super) fn leaf_or_create(page: usize) -> &'static Leaf {
    let upper = child_or_create(&root_or_create()[page >> (3 * FANOUT_BITS)]);
    let mid = child_or_create(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)]);
    child_or_create(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)])
}

/// The slot and the unpinned count of `page`, if its leaf exists.
#[inline(always)]
pub(super) fn page_entry(page: usize) -> Option<(&'static PageSlot, &'static AtomicU16)> {
    let upper = node(&root()?[page >> (3 * FANOUT_BITS)])?;
    let mid = node(&upper.0[(page >> (2 * FANOUT_BITS)) & (FANOUT - 1)])?;
    let leaf = node(&mid.0[(page >> FANOUT_BITS) & (FANOUT - 1)])?;
    let k = page & (FANOUT - 1);
    Some((&leaf.0[k], &leaf.1[k]))
}

/// Whether the leaf holding `page` exists (a purge skips absent leaves).
pub(super) fn leaf_exists(page: usize) -> bool {
    let Some(upper) = root().and_then(|r| node(&r[page >> (3 * FANOUT_BITS)])) else {
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
pub(super) static HUGE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The directory's and the huge list's locks, held across `fork` (see
/// `crate::fork`): taken after every shard's, as a writer takes them.
pub(super) struct ForkLocks {
    _directory: MutexGuard<'static, ()>,
    _huge: MutexGuard<'static, Vec<(usize, usize)>>,
}

pub(super) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _directory: DIRECTORY.lock().unwrap_or_else(|e| e.into_inner()),
        _huge: HUGE_LIST.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// Writes (or clears) the covers of a region: the pages after its start
/// page that it reaches. Called inside a write of the region's shard.
pub(super) fn set_covers(start: usize, size: usize, on: bool) {
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

#[cold]
pub(super) fn huge_containing(addr: usize) -> Option<usize> {
    let list = HUGE_LIST.lock().unwrap_or_else(|e| e.into_inner());
    list.iter()
        .find(|&&(s, e)| s <= addr && addr < e)
        .map(|&(s, _)| s)
}
