//! C heap blocks (feature `interpose`): the header the interposed C
//! allocator writes in front of every block that `malloc` and friends hand
//! out, the quarantine of blocks C freed, and the walk over every block.
//!
//! # Headers
//!
//! A C block carries a 32-byte header just before the pointer C sees:
//!
//! | at      | word                                                        |
//! |---------|-------------------------------------------------------------|
//! | `p-32`  | the allocation site (the `call!` in progress), or 0          |
//! | `p-24`  | live: the allocating thread's serial and sequence number; freed: the free site |
//! | `p-16`  | meta: size, alignment, state (the tracking allocator's format) |
//! | `p-8`   | identity: `p ^ C_KEY`                                       |
//!
//! The identity key differs from the tracking allocator's (`KEY`): that is
//! the *domain bit*. One look at the word before a pointer tells a C block
//! from a Rust heap block, and either from anything else. Both domains
//! count their headers in the one page map of `heap`, so a header is read
//! only on a page that holds one: probing a wild pointer (`free(0x1234)`)
//! never touches unmapped memory.
//!
//! Rust's own heap reaches `malloc` too (the tracking allocator's inner
//! allocator is `System`, which calls it): such a block is marked `RUST`
//! (the tracking allocator runs its inner allocator in a
//! [`rust_inner_section`](crate::bookkeeping::rust_inner_section)), and
//! what the checker allocates for itself is `INTERNAL`; neither is C memory,
//! and neither is ever checked.
//!
//! Invariants:
//! - a header is installed before its block is handed out and uninstalled
//!   (identity zeroed, page count decremented) before the memory goes back
//!   to glibc;
//! - the state only gains bits while the block lives (`REGISTERED`, then
//!   `FREED`); `FREED` is set once, by an atomic `fetch_or`, so of two
//!   racing frees exactly one wins;
//! - a `FREED` block waits in the quarantine (its memory still allocated)
//!   until it is evicted, and only eviction gives it back.
//!
//! Nothing here takes a lock on the allocation path; a C free takes one
//! uncontended quarantine shard lock.

// Without the checks compiled in the entry points that use this are not
// either (see `crate::interpose`).
#![cfg_attr(not(any(debug_assertions, feature = "always")), allow(dead_code))]

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{meta_align, meta_of, meta_size, meta_state, page_count, page_count_or_create};
use super::{root_map, HDR, KEY, LEAF_LEN, PAGE_SHIFT};
use crate::site::Site;
use crate::stackdepot::StackId;

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
}

/// Bytes of header before each C block.
pub(crate) const C_HDR: usize = 32;
/// The C domain's identity key: the tracking allocator's with a bit flipped.
const C_KEY: usize = KEY ^ (1 << 4);

/// C block states (the top byte of the meta word).
pub(crate) mod c_state {
    /// A live C block.
    pub const LIVE: usize = 1;
    /// Freed, waiting in the quarantine.
    pub const FREED: usize = 2;
    /// Allocated by ffi-check's own bookkeeping: never checked.
    pub const INTERNAL: usize = 4;
    /// The memory of a Rust heap block (the tracking allocator's inner
    /// allocator asked for it): never checked as C memory.
    pub const RUST: usize = 8;
    /// The registry has a record of it (a `CBox`, `c_malloc`, an adoption):
    /// its frees and leaks follow the registry's rules.
    pub const REGISTERED: usize = 16;
}

/// What the allocator knows of a C block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CBlock {
    pub start: usize,
    pub size: usize,
    pub align: usize,
    pub state: usize,
    pub alloc_site: Option<Site>,
    /// Live: thread serial (upper 24 bits) and sequence number; freed: the
    /// free site's word.
    tag: usize,
}

impl CBlock {
    /// Freed, in the quarantine.
    pub fn freed(&self) -> bool {
        self.state & c_state::FREED != 0
    }
    /// C memory (not Rust's heap, not the checker's own).
    pub fn is_c(&self) -> bool {
        self.state & (c_state::INTERNAL | c_state::RUST) == 0
    }
    /// Known to the registry.
    pub fn registered(&self) -> bool {
        self.state & c_state::REGISTERED != 0
    }
    /// Where it was freed, for a freed block.
    pub fn free_site(&self) -> Option<Site> {
        if !self.freed() {
            return None;
        }
        // SAFETY: a freed block's tag word holds a site word (or 0).
        unsafe { Site::from_word(self.tag) }
    }
    /// The allocating thread's serial and the block's sequence number on
    /// it, for a live block.
    pub fn clock(&self) -> (u32, u64) {
        ((self.tag >> 40) as u32, (self.tag & ((1 << 40) - 1)) as u64)
    }
}

#[inline(always)]
fn word(p: usize, back: usize) -> &'static AtomicUsize {
    // SAFETY: callers pass a block of ours (identity checked, or being
    // installed), whose header words are mapped, aligned and only accessed
    // atomically by ffi-check.
    unsafe { &*((p - back) as *const AtomicUsize) }
}

/// The C block of the interposed allocator that starts at `p` (any
/// domain, live or freed), or `None`.
#[inline(always)]
pub(crate) fn c_header(p: usize) -> Option<CBlock> {
    if p & (HDR - 1) != 0 || p < C_HDR {
        return None;
    }
    let count = page_count(p - HDR)?;
    if count.load(Ordering::Relaxed) == 0 {
        return None;
    }
    // SAFETY: a header of ours lives on the page of p - 16, so the page is
    // mapped, and p - 8 lies on it.
    let id = unsafe { &*((p - 8) as *const AtomicUsize) };
    if id.load(Ordering::Acquire) != p ^ C_KEY {
        return None;
    }
    Some(read_block(p))
}

/// The header of the block at `p`, known to be ours.
#[inline(always)]
fn read_block(p: usize) -> CBlock {
    let meta = word(p, 16).load(Ordering::Acquire);
    CBlock {
        start: p,
        size: meta_size(meta),
        align: meta_align(meta),
        state: meta_state(meta),
        // SAFETY: the site word is 0 or a site's word (see `c_alloc`).
        alloc_site: unsafe { Site::from_word(word(p, 32).load(Ordering::Relaxed)) },
        tag: word(p, 24).load(Ordering::Acquire),
    }
}

/// The C block (C domain only, live or freed) starting at `p`.
#[inline]
pub(crate) fn c_block_at(p: usize) -> Option<CBlock> {
    c_header(p).filter(CBlock::is_c)
}

/// The C block that contains `addr` (its start or an interior byte), found
/// by the walk back of [`c_freed_block_containing`]. Cold: for reports of
/// frees of interior pointers.
#[cold]
pub(crate) fn c_block_containing(addr: usize) -> Option<CBlock> {
    if let Some(b) = c_block_at(addr) {
        return Some(b);
    }
    let (lo, hi) = c_bounds();
    if addr < lo || addr >= hi {
        return None;
    }
    block_around(addr).filter(CBlock::is_c)
}

/// Marks the pages of the bytes of a block about to be freed (`p`, `size`
/// bytes) in `FREED_PAGES`: one load per page once they are marked.
#[inline(always)]
fn mark_freed_pages(p: usize, size: usize) {
    mark_page(&FREED_PAGES, p);
    let last = (p + size.max(1) - 1) >> PAGE_SHIFT;
    if last != p >> PAGE_SHIFT {
        mark_more_freed_pages(p >> PAGE_SHIFT, last);
    }
}

/// The pages after the first of a freed block that spans several.
#[cold]
#[inline(never)]
fn mark_more_freed_pages(first: usize, last: usize) {
    for page in first + 1..=last {
        mark_page(&FREED_PAGES, page << PAGE_SHIFT);
    }
}

/// The freed C block (waiting in the quarantine) that `addr` points into,
/// at its start or at any byte inside it: an object handle, or a handle to
/// a field of an object, used after C freed the object.
///
/// For a pointer into a page where no C block was ever freed this is a few
/// loads (the bounds and one bit). Otherwise it reads back from `addr`, a
/// granule (16 bytes) at a time, for the nearest header of ours, and
/// `addr` is inside a block only if it is inside that one (blocks do not
/// overlap). It reads only the pages the page map counts a header on (so
/// mapped), skips the others unread, and goes no further back than the
/// largest block the quarantine keeps. The block the last walk on this
/// thread found is remembered: a pointer into it again (a loop over a
/// buffer, a handle passed call after call) costs one header read, the
/// header being read afresh each time (freed since, or given back and
/// reused, the walk runs again).
#[inline]
pub(crate) fn c_freed_block_containing(addr: usize) -> Option<CBlock> {
    let (lo, hi) = c_bounds();
    if addr < lo || addr >= hi || !page_marked(&FREED_PAGES, addr) {
        return None;
    }
    let last = !LAST_FOUND.with(Cell::get);
    let b = match c_header(last) {
        Some(b) if addr >= last && addr < last + b.size.max(1) => b,
        _ => {
            let b = block_around(addr)?;
            LAST_FOUND.with(|c| c.set(!b.start));
            b
        }
    };
    (b.is_c() && b.freed()).then_some(b)
}

thread_local! {
    /// The start of the block the last walk of this thread found around a
    /// pointer, complemented (!0: none): only a hint, its header is read
    /// again each time. Complemented, it is no pointer to the block for the
    /// leak scan, which reads this thread's TLS as a root.
    static LAST_FOUND: Cell<usize> = const { Cell::new(!0) };
}

/// The block of ours (any domain, live or freed) that contains `addr`,
/// found by the walk back described at [`c_freed_block_containing`].
#[inline(never)]
fn block_around(addr: usize) -> Option<CBlock> {
    const PAGE: usize = 1 << PAGE_SHIFT;
    let lowest = addr.saturating_sub(SHARD_BYTES).max(C_HDR);
    let mut p = addr & !(HDR - 1);
    while p >= lowest {
        // The candidates whose header is on this page: p - 16 on it.
        let page = (p - HDR) & !(PAGE - 1);
        if page_count(page).is_some_and(|c| c.load(Ordering::Relaxed) != 0) {
            let floor = (page + HDR).max(lowest);
            while p >= floor {
                // SAFETY: a header of ours is on the page of p - 16 (its
                // count is not zero), so the page is mapped, and p - 8 is
                // on it, aligned; header words are accessed atomically.
                let id = unsafe { &*((p - 8) as *const AtomicUsize) };
                if id.load(Ordering::Acquire) == p ^ C_KEY {
                    let b = read_block(p);
                    return (addr < p + b.size.max(1)).then_some(b);
                }
                p -= HDR;
            }
        }
        p = page;
    }
    None
}

// ---- the thread clock ------------------------------------------------------

thread_local! {
    /// This thread's serial (0 until its first C block) and the sequence
    /// number of its next C block.
    static CLOCK: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
}

static NEXT_SERIAL: AtomicUsize = AtomicUsize::new(1);

/// This thread's serial and the sequence number its next C block gets:
/// a leak scope started now owns the blocks this thread makes from here.
pub(crate) fn c_clock() -> (u32, u64) {
    let (serial, seq) = CLOCK.try_with(Cell::get).unwrap_or((0, 0));
    if serial == 0 {
        return (first_block_on_thread(), 0);
    }
    (serial, seq)
}

/// The tag of a fresh C block: the thread's serial and the next sequence
/// number. A thread's first block gives it a serial and records its stack
/// for the leak scan.
#[inline(always)]
fn next_tag() -> usize {
    let Ok((serial, seq)) = CLOCK.try_with(Cell::get) else {
        return 0;
    };
    let serial = if serial == 0 {
        first_block_on_thread()
    } else {
        serial
    };
    let _ = CLOCK.try_with(|c| c.set((serial, seq + 1)));
    ((serial as usize & 0xff_ffff) << 40) | (seq as usize & ((1 << 40) - 1))
}

#[cold]
fn first_block_on_thread() -> u32 {
    let serial = (NEXT_SERIAL.fetch_add(1, Ordering::Relaxed) & 0xff_ffff).max(1) as u32;
    let _ = CLOCK.try_with(|c| c.set((serial, 0)));
    super::c_reach::record_thread();
    serial
}

// ---- making and giving back blocks ------------------------------------------

static C_LO: AtomicUsize = AtomicUsize::new(usize::MAX);
static C_HI: AtomicUsize = AtomicUsize::new(0);

/// The bounds of every header ever installed (`lo >= hi` when none).
pub(crate) fn c_bounds() -> (usize, usize) {
    (C_LO.load(Ordering::Relaxed), C_HI.load(Ordering::Relaxed))
}

/// The domain a fresh block belongs to: the checker's own, Rust's heap, or C.
#[inline(always)]
fn domain() -> usize {
    if crate::bookkeeping::guarded() {
        c_state::INTERNAL
    } else if crate::bookkeeping::rust_inner() {
        c_state::RUST
    } else {
        c_state::LIVE
    }
}

/// A fresh block of `size` bytes aligned to `align` (a power of two), with
/// its header installed; null when glibc has no memory.
#[inline]
pub(crate) fn c_alloc(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    let h = align.max(C_HDR);
    let Some(total) = size.checked_add(h) else {
        return std::ptr::null_mut();
    };
    if size > super::SIZE_MASK {
        return std::ptr::null_mut();
    }
    // SAFETY: plain glibc allocations; memalign with a power of two.
    let base = unsafe {
        if align <= 16 {
            if zeroed {
                __libc_calloc(1, total)
            } else {
                __libc_malloc(total)
            }
        } else {
            let b = __libc_memalign(align, total);
            if zeroed && !b.is_null() {
                std::ptr::write_bytes(b.cast::<u8>(), 0, total);
            }
            b
        }
    };
    if base.is_null() {
        return base;
    }
    let p = base as usize + h;
    let st = domain();
    let (site, tag) = if st == c_state::LIVE {
        (
            crate::frame::current_site().map_or(0, Site::to_word),
            next_tag(),
        )
    } else {
        (0, 0)
    };
    if !install(p, size, align, st, site, tag) {
        // SAFETY: base came from glibc just now.
        unsafe { __libc_free(base) };
        return std::ptr::null_mut();
    }
    if site != 0 && crate::mode::raw_event_backtraces() {
        remember_trace(p);
    }
    p as *mut c_void
}

// ---- allocation backtraces -------------------------------------------------------
//
// With event backtraces on, a C block allocated during a checked call keeps
// the stack that allocated it (C's frames under the `call!`), for its
// reports and its leak group. The header has no room for it, so the stacks
// live beside, by block start, in a table that exists only once a trace was
// taken: nothing of it is on the path of a `malloc` with backtraces off.
//
// Lock order: a quarantine ring (evicting a block) before `TRACES`. The
// table's own memory is the checker's (`INTERNAL`), whose frees never come
// back here, so holding `TRACES` while the map grows cannot re-enter it.

static TRACES: Mutex<Option<HashMap<usize, StackId>>> = Mutex::new(None);
/// Set once the first trace is kept: until then no free looks at the table.
static ANY_TRACE: AtomicBool = AtomicBool::new(false);

fn traces() -> MutexGuard<'static, Option<HashMap<usize, StackId>>> {
    // Every change is completed before anything that could panic.
    TRACES.lock().unwrap_or_else(|e| e.into_inner())
}

#[cold]
#[inline(never)]
fn remember_trace(p: usize) {
    let Some(id) = crate::stackdepot::capture() else {
        return;
    };
    let _g = crate::bookkeeping::bookkeeping();
    traces().get_or_insert_with(HashMap::new).insert(p, id);
    ANY_TRACE.store(true, Ordering::Relaxed);
}

/// Forgets the trace of the C block at `p`, which goes back to glibc.
#[inline]
fn forget_trace(p: usize) {
    if ANY_TRACE.load(Ordering::Relaxed) {
        let _g = crate::bookkeeping::bookkeeping();
        if let Some(map) = traces().as_mut() {
            map.remove(&p);
        }
    }
}

/// The stack that allocated the C block at `start`, when event backtraces
/// were on: for reports and leak groups only.
pub(crate) fn c_alloc_trace(start: usize) -> Option<StackId> {
    if !ANY_TRACE.load(Ordering::Relaxed) {
        return None;
    }
    let _g = crate::bookkeeping::bookkeeping();
    traces().as_ref()?.get(&start).copied()
}

#[inline(always)]
fn install(p: usize, size: usize, align: usize, st: usize, site: usize, tag: usize) -> bool {
    let Some(count) = page_count_or_create(p - HDR) else {
        return false;
    };
    word(p, 32).store(site, Ordering::Relaxed);
    word(p, 24).store(tag, Ordering::Relaxed);
    word(p, 16).store(meta_of(size, align, st), Ordering::Relaxed);
    word(p, 8).store(p ^ C_KEY, Ordering::Release);
    count.fetch_add(1, Ordering::Relaxed);
    if site != 0 {
        mark_c_page(p - HDR);
    }
    if p < C_LO.load(Ordering::Relaxed) {
        C_LO.fetch_min(p, Ordering::Relaxed);
    }
    let end = p.saturating_add(size.max(1));
    if end > C_HI.load(Ordering::Relaxed) {
        C_HI.fetch_max(end, Ordering::Relaxed);
    }
    true
}

#[inline(always)]
fn uninstall(p: usize) {
    word(p, 8).store(0, Ordering::Release);
    if let Some(count) = page_count(p - HDR) {
        count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gives the block at `p` back to glibc now.
///
/// # Safety
/// `p` is a block of ours, nothing uses it any more, and it is given back
/// once.
#[inline]
pub(crate) unsafe fn c_release(p: usize) {
    let meta = word(p, 16).load(Ordering::Acquire);
    let h = meta_align(meta).max(C_HDR);
    // Only C's blocks have traces (the checker's own never do: the table's
    // memory is among them).
    if meta_state(meta) & (c_state::INTERNAL | c_state::RUST) == 0 {
        forget_trace(p);
    }
    uninstall(p);
    // SAFETY: p - h is what glibc returned for the block.
    unsafe { __libc_free((p - h) as *mut c_void) };
}

/// Resizes the block at `p` in place (glibc may move it), keeping its
/// state, site and tag: for blocks nothing checks (Rust's heap, the
/// checker's own, C memory with the checks off). Null (and `p` untouched)
/// when glibc has no memory.
///
/// # Safety
/// `p` is a live block of ours with alignment 16 at most, owned by the
/// caller.
pub(crate) unsafe fn c_resize(p: usize, size: usize) -> *mut c_void {
    let b = read_block(p);
    let Some(total) = size.checked_add(C_HDR) else {
        return std::ptr::null_mut();
    };
    if b.align > 16 || size > super::SIZE_MASK {
        return std::ptr::null_mut();
    }
    let (site, tag) = (
        word(p, 32).load(Ordering::Relaxed),
        word(p, 24).load(Ordering::Relaxed),
    );
    uninstall(p);
    // SAFETY: p - C_HDR is the glibc block (alignment 16 means h = C_HDR).
    let nb = unsafe { __libc_realloc((p - C_HDR) as *mut c_void, total) };
    if nb.is_null() {
        install(p, b.size, b.align, b.state, site, tag);
        return nb;
    }
    let np = nb as usize + C_HDR;
    if !install(np, size, b.align, b.state, site, tag) {
        // SAFETY: nb is glibc's block, just returned.
        unsafe { __libc_free(nb) };
        return std::ptr::null_mut();
    }
    np as *mut c_void
}

/// Frees a block that glibc made before the interposed allocator was in
/// use (the dynamic loader's early blocks, say): it has no header of ours.
///
/// # Safety
/// `p` is a live glibc block nothing uses any more.
pub(crate) unsafe fn foreign_free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { __libc_free(p) }
}

/// How many bytes a foreign glibc block can hold, from its chunk header.
///
/// # Safety
/// `p` is a live glibc block.
pub(crate) unsafe fn foreign_usable_size(p: usize) -> usize {
    let Some(word) = crate::probe::read_word(p - 8) else {
        return 0;
    };
    let size = word & !7;
    if word & 2 != 0 {
        size.saturating_sub(16)
    } else {
        size.saturating_sub(8)
    }
}

/// Marks the live C block at `p` as known to the registry.
pub(crate) fn mark_c_registered(p: usize) {
    if let Some(b) = c_header(p) {
        if b.is_c() && !b.freed() {
            word(p, 16).fetch_or(c_state::REGISTERED << super::STATE_SHIFT, Ordering::AcqRel);
        }
    }
}

/// Marks the C block at `p` (of `size` bytes, as its header says) freed at
/// `site`. False when it was already freed (a double free, or a free
/// racing another).
#[inline]
pub(crate) fn c_mark_freed(p: usize, size: usize, site: Option<Site>) -> bool {
    mark_freed_pages(p, size);
    let old = word(p, 16).fetch_or(c_state::FREED << super::STATE_SHIFT, Ordering::AcqRel);
    if meta_state(old) & c_state::FREED != 0 {
        return false;
    }
    word(p, 24).store(site.map_or(0, Site::to_word), Ordering::Release);
    true
}

/// True once the tracking allocator is in use: Rust's heap is then told
/// apart from C's (its blocks are `RUST`), and a C block is C memory.
pub(crate) fn rust_heap_apart() -> bool {
    super::INSTALLED.load(Ordering::Relaxed)
}

// ---- the quarantine -----------------------------------------------------------

const SHARDS: usize = 16;
/// Blocks and bytes each shard holds back from reuse: 64 Ki blocks and
/// 64 MiB in all; a freed block larger than one shard's bytes goes back at
/// once.
const SHARD_BLOCKS: usize = 4096;
const SHARD_BYTES: usize = 4 << 20;

struct Ring {
    slots: [usize; SHARD_BLOCKS],
    head: usize,
    len: usize,
    bytes: usize,
}

static RINGS: [Mutex<Ring>; SHARDS] = [const {
    Mutex::new(Ring {
        slots: [0; SHARD_BLOCKS],
        head: 0,
        len: 0,
        bytes: 0,
    })
}; SHARDS];

fn ring(i: usize) -> MutexGuard<'static, Ring> {
    RINGS[i].lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts the freed block at `p` (marked `FREED`) into this thread's
/// quarantine shard, giving back the oldest blocks beyond the bounds.
///
/// # Safety
/// `p` is a FREED block of ours that its owner no longer uses.
#[inline]
pub(crate) unsafe fn c_quarantine(p: usize, size: usize) {
    if size > SHARD_BYTES {
        // SAFETY: forwarded contract.
        return unsafe { c_release(p) };
    }
    let mut r = ring(super::my_shard());
    while r.len == SHARD_BLOCKS || r.bytes + size > SHARD_BYTES {
        let tail = (r.head + SHARD_BLOCKS - r.len) % SHARD_BLOCKS;
        let old = r.slots[tail];
        r.len -= 1;
        let old_size = meta_size(word(old, 16).load(Ordering::Relaxed));
        r.bytes -= old_size;
        // SAFETY: a quarantined block is ours, FREED and unused.
        unsafe { c_release(old) };
    }
    let head = r.head;
    r.slots[head] = p;
    r.head = (head + 1) % SHARD_BLOCKS;
    r.len += 1;
    r.bytes += size;
}

/// The quarantine's locks, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLocks {
    _rings: [MutexGuard<'static, Ring>; SHARDS],
    _traces: MutexGuard<'static, Option<HashMap<usize, StackId>>>,
}

/// Takes every quarantine shard's lock, in index order, then the traces'.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _rings: std::array::from_fn(ring),
        _traces: traces(),
    }
}

// ---- the walk -------------------------------------------------------------------

/// Calls `f` with every block of ours (any domain, live or freed), found by
/// walking the pages the page map says hold a header. Each page is copied
/// through a safe probe first, so a block freed meanwhile cannot fault the
/// walk. Used by the leak scan and the mode-2 scan, never on a hot path.
pub(crate) fn for_each_c_block(mut f: impl FnMut(CBlock)) {
    let (lo, hi) = c_bounds();
    if lo >= hi {
        return;
    }
    let leaf_shift = PAGE_SHIFT + super::LEAF_BITS;
    let mut page = [0u8; 1 << PAGE_SHIFT];
    let first = lo >> leaf_shift;
    let roots = ((hi - 1) >> leaf_shift) + 1 - first;
    let Some(map) = root_map() else {
        return;
    };
    for (root, slot) in map.iter().enumerate().skip(first).take(roots) {
        let leaf = slot.load(Ordering::Acquire);
        if leaf.is_null() {
            continue;
        }
        for i in 0..LEAF_LEN {
            // SAFETY: a non-null leaf is a live, never-freed array of
            // LEAF_LEN counters.
            let count = unsafe { &*leaf.add(i) };
            if count.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let base = ((root << super::LEAF_BITS) | i) << PAGE_SHIFT;
            for_each_on_page(base, &mut page, &mut f);
        }
    }
}

/// Overwrites the dead stack below the caller's frame, where a walk over the
/// blocks just left their addresses: another thread's leak scan reads this
/// thread's whole stack (it cannot know where its live part ends), and a
/// stale address there would keep a leaked block reachable.
#[inline(never)]
pub(crate) fn wipe_dead_stack() {
    let mut junk = [0usize; 2048];
    std::hint::black_box(&mut junk);
}

// ---- the pages of C blocks made during calls -----------------------------------

/// For every page, a bit set once a header of a C block allocated during a
/// checked call was installed on it (never cleared): the mode-2 scan, which
/// runs at every outermost call, walks only these pages, not the whole heap.
/// Leaves of 2^18 bits come straight from `mmap`.
static C_PAGES: PageBits =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; 1 << (48 - PAGE_SHIFT - super::LEAF_BITS)];

/// For every page, a bit set once a C block that covers part of it was
/// freed (never cleared): a pointer into a page without it is into no
/// freed C block, so the boundary's look for one (the hot path of every
/// pointer argument nothing else knows) stops at one load there.
static FREED_PAGES: PageBits =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; 1 << (48 - PAGE_SHIFT - super::LEAF_BITS)];
const C_LEAF_WORDS: usize = LEAF_LEN / 64;

/// A map of one bit per page, set once and never cleared; its leaves of
/// 2^18 bits come straight from `mmap`.
type PageBits = [AtomicPtr<AtomicU64>; 1 << (48 - PAGE_SHIFT - super::LEAF_BITS)];

#[inline(always)]
fn mark_c_page(addr: usize) {
    mark_page(&C_PAGES, addr);
}

/// Sets the bit of the page of `addr` in `map` (a load only, once it is set).
#[inline(always)]
fn mark_page(map: &'static PageBits, addr: usize) {
    let page = addr >> PAGE_SHIFT;
    let root = page >> super::LEAF_BITS;
    if root >= map.len() {
        return;
    }
    let mut leaf = map[root].load(Ordering::Acquire);
    if leaf.is_null() {
        leaf = create_c_leaf(map, root);
        if leaf.is_null() {
            return;
        }
    }
    let i = page & (LEAF_LEN - 1);
    // SAFETY: a non-null leaf is a live, never-freed array of C_LEAF_WORDS
    // words, and i / 64 < C_LEAF_WORDS.
    let w = unsafe { &*leaf.add(i / 64) };
    let bit = 1u64 << (i % 64);
    if w.load(Ordering::Relaxed) & bit == 0 {
        w.fetch_or(bit, Ordering::Relaxed);
    }
}

/// The bit of the page of `addr` in `map`.
#[inline(always)]
fn page_marked(map: &'static PageBits, addr: usize) -> bool {
    let page = addr >> PAGE_SHIFT;
    let root = page >> super::LEAF_BITS;
    if root >= map.len() {
        return false;
    }
    let leaf = map[root].load(Ordering::Acquire);
    if leaf.is_null() {
        return false;
    }
    let i = page & (LEAF_LEN - 1);
    // SAFETY: as in `mark_page`.
    let w = unsafe { &*leaf.add(i / 64) };
    w.load(Ordering::Relaxed) & (1u64 << (i % 64)) != 0
}

#[cold]
fn create_c_leaf(map: &'static PageBits, root: usize) -> *mut AtomicU64 {
    let bytes = C_LEAF_WORDS * std::mem::size_of::<AtomicU64>();
    // Zeroed pages are valid `AtomicU64`s.
    let Some(fresh) = crate::bookkeeping::map_anonymous(bytes) else {
        return std::ptr::null_mut();
    };
    match map[root].compare_exchange(
        std::ptr::null_mut(),
        fresh.cast(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => fresh.cast(),
        Err(other) => {
            // SAFETY: the mapping was never published; another thread's won.
            unsafe { libc::munmap(fresh, bytes) };
            other
        }
    }
}

/// Calls `f` with every block of ours whose header is on `page` (copied
/// through a safe probe first, so a block freed meanwhile cannot fault).
fn for_each_on_page(base: usize, page: &mut [u8; 1 << PAGE_SHIFT], f: &mut impl FnMut(CBlock)) {
    if !crate::probe::read(base, page) {
        return;
    }
    // A meta word on this page at offset o is the header of the block at
    // base + o + 16, whose identity follows it.
    for o in (0..page.len()).step_by(HDR) {
        let id = usize::from_ne_bytes(page[o + 8..o + 16].try_into().expect("8 bytes"));
        let p = base + o + HDR;
        if id != p ^ C_KEY {
            continue;
        }
        let meta = usize::from_ne_bytes(page[o..o + 8].try_into().expect("8 bytes"));
        let (site, tag) = if o >= HDR {
            let w = |at: usize| usize::from_ne_bytes(page[at..at + 8].try_into().expect("8 bytes"));
            (w(o - 16), w(o - 8))
        } else {
            (
                crate::probe::read_word(p - 32).unwrap_or(0),
                crate::probe::read_word(p - 24).unwrap_or(0),
            )
        };
        f(CBlock {
            start: p,
            size: meta_size(meta),
            align: meta_align(meta),
            state: meta_state(meta),
            // SAFETY: our header's site word is 0 or a site's word.
            alloc_site: unsafe { Site::from_word(site) },
            tag,
        });
    }
}

/// Calls `f(start, len)` for every live C heap block that C allocated
/// during a checked call (C domain, not freed): what the mode-2 scan reads
/// besides the registry's regions. The blocks the registry knows are left
/// out (the scan has them already), and so are those allocated outside any
/// call: Rust code reaches `malloc` too (the standard library allocates its
/// thread handles with `System` directly), and what Rust keeps in them is
/// no C pointer.
///
/// Without the tracking allocator nothing is: Rust's whole heap is then
/// `malloc`'s too, and a Rust block allocated during a call (a callback's,
/// a report's) would pass for C memory.
pub(crate) fn for_each_live_c(mut f: impl FnMut(usize, usize)) {
    if !rust_heap_apart() {
        return;
    }
    let mut visit = |b: CBlock| {
        if b.is_c() && !b.freed() && !b.registered() && b.alloc_site.is_some() {
            f(b.start, b.size);
        }
    };
    let (lo, hi) = c_bounds();
    if lo >= hi {
        return;
    }
    let leaf_shift = PAGE_SHIFT + super::LEAF_BITS;
    let mut page = [0u8; 1 << PAGE_SHIFT];
    let roots = (lo >> leaf_shift)
        ..((hi - 1) >> leaf_shift)
            .saturating_add(1)
            .min(C_PAGES.len());
    for root in roots {
        let leaf = C_PAGES[root].load(Ordering::Acquire);
        if leaf.is_null() {
            continue;
        }
        for wi in 0..C_LEAF_WORDS {
            // SAFETY: a non-null leaf is a live array of C_LEAF_WORDS words.
            let mut bits = unsafe { &*leaf.add(wi) }.load(Ordering::Relaxed);
            while bits != 0 {
                let i = wi * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if page_count(((root << super::LEAF_BITS) | i) << PAGE_SHIFT)
                    .map_or(true, |c| c.load(Ordering::Relaxed) == 0)
                {
                    continue;
                }
                let base = ((root << super::LEAF_BITS) | i) << PAGE_SHIFT;
                for_each_on_page(base, &mut page, &mut visit);
            }
        }
    }
    wipe_dead_stack();
}
