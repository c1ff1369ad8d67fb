//! The tracking allocator (SPEC §6): with it installed as the global
//! allocator, every Rust heap block is managed memory, so raw-pointer FFI
//! code (`v.as_ptr()`, `CString::into_raw`, `Box::into_raw`) is checked by
//! [`call!`](crate::call!) without wrappers.
//!
//! # Design
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
//! A freed block waits in a bounded quarantine (sharded by thread, so there
//! is no global lock) before its memory goes back to the inner allocator: a
//! pointer into it meanwhile is `UseAfterFree`, named with the call that
//! freed it (or, with event backtraces on, the backtrace of the free).
//!
//! A block becomes *interesting* when it is pinned or retained: it is then
//! promoted into the registry (see `pin_ptr`), which knows pins, retains and
//! interior pointers, and its free is checked against rule P3. Everything
//! the checker allocates for itself is made under a per-thread guard that
//! bypasses all of this, so its bookkeeping never recurses into tracking.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicUsize, Ordering};
use std::sync::Mutex;

use backtrace::Backtrace;

use crate::registry::{self, flags, RegionDetail, RegionKind, RegionState};
use crate::report::{emit, Violation, ViolationKind};
use crate::site::Site;

/// Bytes of header before each block.
const HDR: usize = 16;
/// Mixed into the identity word so that only a header ffi-check wrote matches.
const KEY: usize = 0x6666_692d_6368_6b21;

const SIZE_MASK: usize = (1 << 48) - 1;
const ALIGN_SHIFT: u32 = 48;
const STATE_SHIFT: u32 = 56;

/// Header states (the top byte of the meta word).
mod state {
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

thread_local! {
    /// Set while ffi-check itself allocates (its bookkeeping, its reports):
    /// such blocks are internal and nothing about them is checked. Constant
    /// initialiser and no destructor: usable on any thread, at any time.
    static GUARD: Cell<bool> = const { Cell::new(false) };
    /// Set while the allocator reports: a panic may not unwind out of it.
    static IN_ALLOCATOR: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as doing ffi-check's own bookkeeping until the
/// value drops: what it allocates meanwhile is internal and unchecked.
pub(crate) struct Bookkeeping {
    was: bool,
}

/// Starts a [`Bookkeeping`] section.
#[inline]
pub(crate) fn bookkeeping() -> Bookkeeping {
    Bookkeeping {
        was: GUARD.with(|g| g.replace(true)),
    }
}

impl Drop for Bookkeeping {
    #[inline]
    fn drop(&mut self) {
        let was = self.was;
        GUARD.with(|g| g.set(was));
    }
}

#[inline]
fn guarded() -> bool {
    GUARD.with(Cell::get)
}

/// True while the tracking allocator is reporting on this thread: the panic
/// action must not unwind out of `dealloc`.
pub(crate) fn in_allocator() -> bool {
    IN_ALLOCATOR.with(Cell::get)
}

struct AllocatorReport {
    was: bool,
}

fn allocator_report() -> AllocatorReport {
    AllocatorReport {
        was: IN_ALLOCATOR.with(|g| g.replace(true)),
    }
}

impl Drop for AllocatorReport {
    fn drop(&mut self) {
        let was = self.was;
        IN_ALLOCATOR.with(|g| g.set(was));
    }
}

/// Checks on, without ever initialising the mode from the environment (the
/// allocator may run before `main`, or while the environment lock is held):
/// an uninitialised mode counts as the default, on.
#[inline(always)]
fn checks_on_raw() -> bool {
    crate::mode::COMPILED_IN && crate::mode::raw_mode() != 0
}

// ---------------------------------------------------------------------------
// The page map: for each 4 KiB page, how many of our headers are on it.

const PAGE_SHIFT: usize = 12;
const LEAF_BITS: usize = 18;
const ROOT_BITS: usize = 48 - PAGE_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

static ROOT: [AtomicPtr<AtomicU16>; 1 << ROOT_BITS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS];

#[inline(always)]
fn leaf_slot(addr: usize) -> Option<(usize, usize)> {
    let page = addr >> PAGE_SHIFT;
    let root = page >> LEAF_BITS;
    (root < ROOT.len()).then_some((root, page & (LEAF_LEN - 1)))
}

#[inline(always)]
fn page_count(addr: usize) -> Option<&'static AtomicU16> {
    let (root, i) = leaf_slot(addr)?;
    let leaf = ROOT[root].load(Ordering::Acquire);
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
    let fresh = map_anonymous(bytes)?;
    let slot = &ROOT[root];
    if slot
        .compare_exchange(
            ptr::null_mut(),
            fresh.cast(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: the mapping was never published; another thread's won.
        unsafe { libc::munmap(fresh, bytes) };
    }
    Some(slot)
}

/// Fresh zeroed memory straight from the kernel: no allocator is involved,
/// so the allocator's own tables can never recurse into it.
fn map_anonymous(bytes: usize) -> Option<*mut libc::c_void> {
    // SAFETY: an anonymous private mapping of `bytes`, owned by the caller.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p)
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
fn meta_of(size: usize, align: usize, st: usize) -> usize {
    size | ((align.trailing_zeros() as usize) << ALIGN_SHIFT) | (st << STATE_SHIFT)
}

#[inline(always)]
fn meta_size(meta: usize) -> usize {
    meta & SIZE_MASK
}

#[inline(always)]
fn meta_align(meta: usize) -> usize {
    1 << ((meta >> ALIGN_SHIFT) & 0xff)
}

#[inline(always)]
fn meta_state(meta: usize) -> usize {
    meta >> STATE_SHIFT
}

/// `meta` with the FREED state added.
#[inline(always)]
fn freed_meta(meta: usize) -> usize {
    meta | (state::FREED << STATE_SHIFT)
}

/// The header words of the block at `p`: meta, then identity.
///
/// # Safety
/// `p - HDR .. p` is mapped: a header of ours is on its page.
#[inline(always)]
unsafe fn words(p: usize) -> (&'static AtomicUsize, &'static AtomicUsize) {
    let h = p.wrapping_sub(HDR) as *const AtomicUsize;
    // SAFETY: the caller vouches the 16 bytes are mapped; they are aligned
    // (p is 16-aligned), and only ever accessed atomically by ffi-check.
    unsafe { (&*h, &*h.add(1)) }
}

/// The meta word of the block that starts at `p`, if ffi-check's allocator
/// made it (and has not given it back).
#[inline(always)]
fn header(p: usize) -> Option<usize> {
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
fn install(p: usize, size: usize, align: usize, st: usize) -> bool {
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
fn uninstall(p: usize) {
    // SAFETY: the block is still allocated, so its header is mapped.
    let (_, id) = unsafe { words(p) };
    id.store(0, Ordering::Release);
    if let Some(count) = page_count(p - HDR) {
        count.fetch_sub(1, Ordering::Relaxed);
    }
}

fn inner_layout(size: usize, align: usize) -> Option<(Layout, usize)> {
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

impl Block {
    /// Could hold an aligned pointer (its layout's alignment says so).
    pub(crate) fn may_hold_pointers(&self) -> bool {
        crate::scan::may_hold_pointers(self.align, self.size)
    }
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

/// Makes the live heap block at `addr` known to the registry (the first time
/// it is pinned or retained), so pins, retains, interior pointers and rule P3
/// apply to it. Without the allocator this is one load; a block already
/// known costs a header read, no locked instruction.
pub(crate) fn promote(addr: usize, site: Option<Site>) {
    let Some(block) = block_at(addr) else {
        return;
    };
    if block.freed || block.promoted {
        return;
    }
    // SAFETY: block_at found our header at addr, so it is mapped.
    let (meta, _) = unsafe { words(addr) };
    let old = meta.fetch_or(state::PROMOTED << STATE_SHIFT, Ordering::AcqRel);
    if meta_state(old) & state::PROMOTED != 0 {
        return;
    }
    let _g = bookkeeping();
    registry::insert(registry::NewRegion {
        start: addr,
        size: block.size,
        kind: RegionKind::Managed,
        family: 0,
        flags: if block.may_hold_pointers() {
            flags::HOLDS_POINTERS
        } else {
            0
        },
        site,
        type_name: None,
    });
}

// ---------------------------------------------------------------------------
// Blocks lent to C as `*mut` (candidates for an `into_raw` hand-over).

struct Lent {
    addr: usize,
    site: Option<Site>,
    callee: &'static str,
}

static LENT: Mutex<Vec<Lent>> = Mutex::new(Vec::new());

/// Notes that the live block at `addr` was passed to C as a `*mut` pointer
/// (what `Box::into_raw` and `CString::into_raw` produce). Once per block.
pub(crate) fn note_lent_mut(addr: usize, callee: &'static str, site: Site) {
    // A block lent before is known: one load, no locked instruction.
    match header(addr) {
        Some(meta) if meta_state(meta) & (state::LENT | state::INTERNAL | state::FREED) == 0 => {}
        _ => return,
    }
    // SAFETY: header() found ours at addr.
    let (meta, _) = unsafe { words(addr) };
    let old = meta.fetch_or(state::LENT << STATE_SHIFT, Ordering::AcqRel);
    if meta_state(old) & (state::LENT | state::INTERNAL | state::FREED) != 0 {
        return;
    }
    let _g = bookkeeping();
    let mut lent = LENT.lock().unwrap_or_else(|e| e.into_inner());
    if lent.len() >= 1024 && lent.len().is_power_of_two() {
        // Forget blocks that were freed since (their header is gone or no
        // longer lent), so the list tracks live hand-overs only.
        lent.retain(|l| still_lent(l.addr));
    }
    lent.push(Lent {
        addr,
        site: Some(site),
        callee,
    });
}

fn still_lent(addr: usize) -> bool {
    header(addr).is_some_and(|m| {
        let st = meta_state(m);
        st & state::LENT != 0 && st & state::FREED == 0
    })
}

/// A Rust heap block that was passed to C as a `*mut` pointer and is still
/// live: if C took ownership (`Box::into_raw`, `CString::into_raw`), nothing
/// will ever free it unless C hands it back.
#[derive(Clone, Debug)]
pub struct HandedToC {
    /// Start address.
    pub addr: usize,
    /// Size in bytes.
    pub size: usize,
    /// The C function it was first passed to.
    pub callee: &'static str,
    /// The `call!` that passed it.
    pub site: Option<Site>,
}

/// The live blocks lent to C as `*mut`, oldest first.
pub(crate) fn handed_to_c() -> Vec<HandedToC> {
    let _g = bookkeeping();
    let lent = LENT.lock().unwrap_or_else(|e| e.into_inner());
    lent.iter()
        .filter(|l| still_lent(l.addr))
        .filter_map(|l| {
            let b = block_at(l.addr)?;
            Some(HandedToC {
                addr: l.addr,
                size: b.size,
                callee: l.callee,
                site: l.site,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The quarantine.

const SHARDS: usize = 16;

struct Entry {
    p: usize,
    site: Option<Site>,
    trace: Option<Box<Backtrace>>,
}

struct Ring {
    buf: *mut Entry,
    cap: usize,
    head: usize,
    len: usize,
    bytes: usize,
}

// SAFETY: the ring's buffer is owned by the ring and only reached through
// the mutex around it.
unsafe impl Send for Ring {}

impl Ring {
    const EMPTY: Ring = Ring {
        buf: ptr::null_mut(),
        cap: 0,
        head: 0,
        len: 0,
        bytes: 0,
    };

    fn ensure(&mut self, cap: usize) -> bool {
        if !self.buf.is_null() {
            return true;
        }
        let Some(buf) = map_anonymous(cap * std::mem::size_of::<Entry>()) else {
            return false;
        };
        self.buf = buf.cast();
        self.cap = cap;
        true
    }

    fn push(&mut self, e: Entry) {
        let i = (self.head + self.len) % self.cap;
        // SAFETY: i < cap and the slot is vacant (len < cap).
        unsafe { self.buf.add(i).write(e) };
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Entry> {
        if self.len == 0 {
            return None;
        }
        // SAFETY: the slot at head holds an entry (len > 0); it is moved out
        // and the slot becomes vacant.
        let e = unsafe { self.buf.add(self.head).read() };
        self.head = (self.head + 1) % self.cap;
        self.len -= 1;
        Some(e)
    }

    fn find(&self, p: usize) -> Option<&Entry> {
        (0..self.len).rev().find_map(|k| {
            // SAFETY: the k-th entry from head is occupied.
            let e = unsafe { &*self.buf.add((self.head + k) % self.cap) };
            (e.p == p).then_some(e)
        })
    }
}

static QUARANTINE: [Mutex<Ring>; SHARDS] = [const { Mutex::new(Ring::EMPTY) }; SHARDS];

/// Freed blocks a thread collects before it takes its shard's lock once for
/// all of them (mode 1, without event backtraces).
const BATCH: usize = 32;

thread_local! {
    static PENDING_P: [Cell<usize>; BATCH] = const { [const { Cell::new(0) }; BATCH] };
    static PENDING_SITE: [Cell<Option<Site>>; BATCH] = const { [const { Cell::new(None) }; BATCH] };
    static PENDING_LEN: Cell<usize> = const { Cell::new(0) };
    /// 0: not asked yet; 1: batching, the flusher is registered; 2: no
    /// batching on this thread (registering, or the thread is ending).
    static BATCHING: Cell<u8> = const { Cell::new(0) };
    /// Its destructor hands the pending blocks of an ending thread over.
    static FLUSHER: Flusher = const { Flusher };
}

/// Blocks that ended threads left pending, adopted by the next push.
static ORPHANS: Mutex<Vec<(usize, Option<Site>)>> = Mutex::new(Vec::new());
static HAS_ORPHANS: AtomicBool = AtomicBool::new(false);

struct Flusher;

impl Drop for Flusher {
    fn drop(&mut self) {
        BATCHING.with(|b| b.set(2));
        let n = PENDING_LEN.with(|l| l.replace(0));
        if n == 0 {
            return;
        }
        let _g = bookkeeping();
        let mut orphans = ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
        PENDING_P.with(|ps| {
            PENDING_SITE.with(|ss| {
                for i in 0..n {
                    orphans.push((ps[i].get(), ss[i].get()));
                }
            })
        });
        HAS_ORPHANS.store(true, Ordering::Relaxed);
    }
}

/// What [`batch`] did with a freed block.
enum Batch {
    /// It waits in this thread's batch.
    Added,
    /// The batch is full: the caller pushes the whole batch
    /// (`PENDING_*[..BATCH]`, now emptied) and the block under one lock.
    Full,
    /// No batching on this thread now: the caller pushes the block alone.
    Unavailable,
}

/// Adds a freed block to this thread's pending batch.
#[inline]
fn batch(p: usize, site: Option<Site>) -> Batch {
    match BATCHING.with(Cell::get) {
        1 => {}
        0 => {
            // The first access registers the flusher's destructor (with the
            // C library, not through Rust's allocator); frees meanwhile go
            // straight to the shard.
            BATCHING.with(|b| b.set(2));
            if FLUSHER.try_with(|_| ()).is_err() {
                return Batch::Unavailable;
            }
            BATCHING.with(|b| b.set(1));
        }
        _ => return Batch::Unavailable,
    }
    let n = PENDING_LEN.with(Cell::get);
    if n == BATCH {
        PENDING_LEN.with(|l| l.set(0));
        return Batch::Full;
    }
    PENDING_P.with(|ps| ps[n].set(p));
    PENDING_SITE.with(|ss| ss[n].set(site));
    PENDING_LEN.with(|l| l.set(n + 1));
    Batch::Added
}

/// This thread's pending entry for `p`, if any.
fn pending_site(p: usize) -> Option<Option<Site>> {
    let n = PENDING_LEN.with(Cell::get);
    PENDING_P.with(|ps| {
        (0..n)
            .rev()
            .find(|&i| ps[i].get() == p)
            .map(|i| PENDING_SITE.with(|ss| ss[i].get()))
    })
}

#[inline]
fn my_shard() -> usize {
    let a = GUARD.with(|g| g as *const Cell<bool> as usize);
    (a >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - 4)
}

/// Where a quarantined block was freed: the call site and the backtrace, as
/// far as they were recorded.
fn free_record(p: usize) -> (Option<Site>, Option<Backtrace>) {
    if let Some(site) = pending_site(p) {
        return (site, None);
    }
    let _g = bookkeeping();
    for shard in &QUARANTINE {
        let ring = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = ring.find(p) {
            return (e.site, e.trace.as_deref().cloned());
        }
    }
    (None, None)
}

/// The description of the block at `block.start` for a report.
pub(crate) fn detail(block: Block) -> RegionDetail {
    let (free_site, free_trace) = if block.freed {
        free_record(block.start)
    } else {
        (None, None)
    };
    RegionDetail {
        start: block.start,
        size: block.size,
        kind: RegionKind::Managed,
        state: if block.freed {
            RegionState::Freed
        } else {
            RegionState::Live
        },
        pins: 0,
        retains: 0,
        type_name: None,
        family: 0,
        alloc_site: None,
        alloc_trace: None,
        free_site,
        free_trace,
        pin_site: None,
        pin_trace: None,
        retain_site: None,
        retain_trace: None,
        leak_reason: None,
    }
}

/// Adds the heap block at `start` to a report, from the registry when it
/// knows the block and from the allocator otherwise.
pub(crate) fn region_for_report(v: Violation, role: &'static str, start: usize) -> Violation {
    if let Some(d) = registry::detail(start) {
        return v.region(crate::report::ReportRegion::new(role, d));
    }
    match block_at(start) {
        Some(b) => v
            .region(crate::report::ReportRegion::new(role, detail(b)))
            .note("the region is a Rust heap block (tracking allocator)".into()),
        None => v,
    }
}

// ---------------------------------------------------------------------------
// The allocator.

/// Tracks every Rust heap block, so that raw-pointer FFI code is checked
/// like code that uses the wrappers (SPEC §6).
///
/// Install it once per program:
///
/// ```
/// use ffi_check::TrackingAllocator;
///
/// #[global_allocator]
/// static ALLOC: TrackingAllocator = TrackingAllocator::new();
///
/// let v = vec![1u8, 2, 3];
/// assert_eq!(v.len(), 3);
/// ```
///
/// With it installed, [`call!`](crate::call!) checks raw pointer arguments
/// the way it checks wrapper arguments:
///
/// - a pointer to a block freed a moment ago (the dangling temporary of
///   `let p = CString::new(s).unwrap().as_ptr();`) is `UseAfterFree`, named
///   with the call that freed it, or the backtrace of the free when event
///   backtraces are on (`FFI_CHECK_BACKTRACE=1`, or mode 2);
/// - a block lent to C whose layout can hold pointers is scanned for
///   pointers to other, unpinned heap blocks (rule P1): pin them with
///   [`Pinner::pin_ptr`](crate::Pinner::pin_ptr);
/// - `c_free` (or C's `ffi_check_free`) of a Rust heap block, and Rust's
///   deallocation of C memory (`Box::from_raw` or `CString::from_raw` on a
///   `malloc`'d pointer), are `InvalidFree` with both sides named; a second
///   Rust deallocation of one block is `DoubleFree`. The memory is then left
///   alone, never freed by the wrong allocator.
///
/// Compiled out (release builds without the `always` feature) it is the
/// inner allocator and nothing more: no header, no quarantine.
///
/// Freed blocks wait in a quarantine (by default up to 64 Ki blocks and
/// 64 MiB, see [`quarantine`](TrackingAllocator::quarantine)) before their
/// memory is reused. With checks off (`FFI_CHECK=0`), blocks are freed at
/// once and nothing is checked; the 16-byte header per block stays.
///
/// The allocator cannot unwind: a violation it finds itself (a bad free) with
/// the panic action prints its report and aborts, as inside a callback.
/// Inside [`capture`](crate::capture) it is collected as usual.
pub struct TrackingAllocator<A: GlobalAlloc = System> {
    inner: A,
    quarantine_blocks: usize,
    quarantine_bytes: usize,
}

impl TrackingAllocator<System> {
    /// The tracking allocator over the system allocator, with the default
    /// quarantine.
    pub const fn new() -> TrackingAllocator<System> {
        TrackingAllocator::with_allocator(System)
    }
}

impl Default for TrackingAllocator<System> {
    fn default() -> Self {
        TrackingAllocator::new()
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// The tracking allocator over `inner`, which provides the memory.
    ///
    /// ```
    /// use ffi_check::TrackingAllocator;
    /// use std::alloc::System;
    /// static _ALLOC: TrackingAllocator<System> = TrackingAllocator::with_allocator(System);
    /// ```
    pub const fn with_allocator(inner: A) -> TrackingAllocator<A> {
        TrackingAllocator {
            inner,
            quarantine_blocks: 64 * 1024,
            quarantine_bytes: 64 << 20,
        }
    }

    /// Sets how many freed blocks, and how many bytes, wait before their
    /// memory is reused. `0` blocks turns the quarantine off (use after free
    /// is then seen only until the memory is reused). A freed block larger
    /// than a sixteenth of `bytes` is given back at once.
    ///
    /// ```
    /// use ffi_check::TrackingAllocator;
    /// static _ALLOC: TrackingAllocator = TrackingAllocator::new().quarantine(1 << 20, 256 << 20);
    /// ```
    pub const fn quarantine(mut self, blocks: usize, bytes: usize) -> TrackingAllocator<A> {
        self.quarantine_blocks = blocks;
        self.quarantine_bytes = bytes;
        self
    }

    #[inline]
    unsafe fn alloc_impl(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let Some((inner, h)) = inner_layout(layout.size(), layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: `inner` has a non-zero size (it includes the header).
        let base = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(inner)
            } else {
                self.inner.alloc(inner)
            }
        };
        if base.is_null() {
            return base;
        }
        let p = base as usize + h;
        let st = if guarded() {
            state::INTERNAL
        } else {
            state::LIVE
        };
        if !install(p, layout.size(), layout.align(), st) {
            // SAFETY: base came from inner.alloc with `inner` just now.
            unsafe { self.inner.dealloc(base, inner) };
            return ptr::null_mut();
        }
        p as *mut u8
    }

    /// Gives the block at `p` back to the inner allocator.
    ///
    /// # Safety
    /// `p` is a block of ours with `meta`, and nothing uses it any more.
    unsafe fn release(&self, p: usize, meta: usize) {
        let Some((inner, h)) = inner_layout(meta_size(meta), meta_align(meta)) else {
            return;
        };
        uninstall(p);
        // SAFETY: (p - h, inner) is exactly what inner.alloc returned.
        unsafe { self.inner.dealloc((p - h) as *mut u8, inner) };
    }

    /// Puts a freed user block into the quarantine, evicting the oldest
    /// ones beyond the limits.
    ///
    /// # Safety
    /// As for [`release`](Self::release); the block's meta is already FREED.
    unsafe fn quarantine_block(&self, p: usize, meta: usize, site: Option<Site>) {
        let size = meta_size(meta);
        if self.quarantine_blocks / SHARDS == 0 || size > self.quarantine_bytes / SHARDS {
            // SAFETY: as the caller vouches.
            unsafe { self.release(p, meta) };
            return;
        }
        if crate::mode::raw_event_backtraces() {
            let trace = {
                let _g = bookkeeping();
                Some(Box::new(Backtrace::new_unresolved()))
            };
            // SAFETY: as the caller vouches.
            unsafe { self.push_locked(std::iter::once(Entry { p, site, trace })) };
            return;
        }
        match batch(p, site) {
            Batch::Added => return,
            Batch::Unavailable => {
                // SAFETY: as the caller vouches.
                unsafe {
                    self.push_locked(std::iter::once(Entry {
                        p,
                        site,
                        trace: None,
                    }))
                };
                return;
            }
            Batch::Full => {}
        }
        let full = PENDING_P.with(|ps| {
            PENDING_SITE.with(|ss| {
                let items: [(usize, Option<Site>); BATCH] =
                    std::array::from_fn(|i| (ps[i].get(), ss[i].get()));
                items
            })
        });
        let items = full.into_iter().map(|(p, site)| Entry {
            p,
            site,
            trace: None,
        });
        // SAFETY: every pending block was freed by its owner and is FREED.
        unsafe {
            self.push_locked(items.chain(std::iter::once(Entry {
                p,
                site,
                trace: None,
            })))
        };
    }

    /// Pushes freed blocks into this thread's quarantine shard under one
    /// lock, evicting the oldest beyond the limits (and first adopting the
    /// blocks that exited threads left pending).
    ///
    /// # Safety
    /// Each entry is a block of ours, FREED, that nothing uses any more.
    unsafe fn push_locked(&self, items: impl Iterator<Item = Entry>) {
        let cap = self.quarantine_blocks / SHARDS;
        let max_bytes = self.quarantine_bytes / SHARDS;
        let orphan_list = if HAS_ORPHANS.load(Ordering::Relaxed) {
            let _g = bookkeeping();
            HAS_ORPHANS.store(false, Ordering::Relaxed);
            std::mem::take(&mut *ORPHANS.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            Vec::new()
        };
        let orphans = orphan_list.iter().map(|&(p, site)| Entry {
            p,
            site,
            trace: None,
        });
        let mut ring = QUARANTINE[my_shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let usable = ring.ensure(cap);
        for e in orphans.chain(items) {
            // SAFETY: a FREED block of ours is still allocated: its header
            // is mapped.
            let meta = unsafe { words(e.p).0.load(Ordering::Acquire) };
            let size = meta_size(meta);
            if !usable {
                // SAFETY: as the caller vouches.
                unsafe { self.evict(e, meta) };
                continue;
            }
            while ring.len >= ring.cap || ring.bytes + size > max_bytes {
                let Some(old) = ring.pop() else { break };
                // SAFETY: a quarantined block is ours, FREED, and unused.
                let old_meta = unsafe { words(old.p).0.load(Ordering::Acquire) };
                ring.bytes = ring.bytes.saturating_sub(meta_size(old_meta));
                // SAFETY: as above.
                unsafe { self.evict(old, old_meta) };
            }
            ring.bytes += size;
            ring.push(e);
        }
        drop(ring);
        let _g = bookkeeping();
        drop(orphan_list);
    }

    /// Gives a block leaving the quarantine back to the inner allocator.
    ///
    /// # Safety
    /// `e.p` is a FREED block of ours with `meta`, unused.
    unsafe fn evict(&self, e: Entry, meta: usize) {
        if meta_state(meta) & state::PROMOTED != 0 {
            let _g = bookkeeping();
            registry::remove(e.p);
        }
        // SAFETY: as the caller vouches.
        unsafe { self.release(e.p, meta) };
        if e.trace.is_some() {
            let _g = bookkeeping();
            drop(e.trace);
        }
    }

    #[inline]
    unsafe fn free_user(&self, p: usize, meta: usize) {
        let st = meta_state(meta);
        if st & state::PROMOTED != 0 {
            // SAFETY: passed on from the caller.
            return unsafe { self.free_promoted(p, meta) };
        }
        if !checks_on_raw() || guarded() {
            // SAFETY: the block is live and its owner is done with it.
            return unsafe { self.release(p, meta) };
        }
        // SAFETY: header() found ours at p.
        let (m, _) = unsafe { words(p) };
        let freed = freed_meta(meta);
        m.store(freed, Ordering::Release);
        let site = crate::call::current_call().map(|(_, s)| s);
        // SAFETY: the block is ours, now FREED, and unused by its owner.
        unsafe { self.quarantine_block(p, freed, site) };
    }

    #[cold]
    unsafe fn free_promoted(&self, p: usize, meta: usize) {
        let _g = bookkeeping();
        let _r = allocator_report();
        // SAFETY: header() found ours at p.
        let (m, _) = unsafe { words(p) };
        let freed = freed_meta(meta);
        if !checks_on_raw() {
            registry::remove(p);
            // SAFETY: the owner is done with the block.
            return unsafe { self.release(p, meta) };
        }
        if !crate::managed::release(p) {
            // Pinned or retained: reported, and kept (leaked) so that C's
            // pointer stays valid.
            m.store(freed, Ordering::Release);
            return;
        }
        let site = crate::call::current_call().map(|(_, s)| s);
        registry::mark_freed(p, None, site, registry::Release::Nothing);
        m.store(freed, Ordering::Release);
        // SAFETY: the block is ours, now FREED, and unused by its owner.
        unsafe { self.quarantine_block(p, freed, site) };
    }

    #[cold]
    fn bad_free(&self, p: usize, what: &'static str) {
        if guarded() || !checks_on_raw() {
            return;
        }
        let _g = bookkeeping();
        let _r = allocator_report();
        match header(p) {
            Some(meta) if meta_state(meta) & state::FREED != 0 => {
                let block = block_at(p);
                let mut v = Violation::new(
                    ViolationKind::DoubleFree,
                    format!("double free of a Rust heap block ({what})"),
                )
                .note("the block was already freed by Rust's allocator".into());
                if let Some(b) = block {
                    v = v.region(crate::report::ReportRegion::new("freed twice", detail(b)));
                }
                emit(v.with_site(crate::call::current_call().map(|(_, s)| s)));
            }
            _ => {
                let c = registry::lookup_for_free(p).filter(|r| r.kind == RegionKind::C);
                let mut v = Violation::new(
                    ViolationKind::InvalidFree,
                    format!("Rust's allocator asked to free memory it did not allocate ({what})"),
                );
                v = match c {
                    Some(r) => v
                        .note(format!(
                            "allocated by C (`{}`), freed by Rust's allocator: C memory goes back to C's deallocator",
                            crate::cbox::family_name(r.family)
                        ))
                        .region_at("C region", r.start),
                    None => v.note(format!(
                        "the pointer {p:#x} is not a block of Rust's allocator: memory from C's `malloc` (through `Box::from_raw` or `CString::from_raw`) goes back to C's `free`"
                    )),
                };
                emit(v.note(
                    "the memory is left alone (leaked), never freed by the wrong allocator".into(),
                ));
            }
        }
    }

    /// In-place realloc of a block that needs no quarantine.
    ///
    /// # Safety
    /// As for `GlobalAlloc::realloc`, with `meta` the block's header.
    unsafe fn realloc_in_place(&self, p: usize, meta: usize, new_size: usize) -> *mut u8 {
        let (size, align) = (meta_size(meta), meta_align(meta));
        let (Some((old_inner, h)), Some(_)) =
            (inner_layout(size, align), inner_layout(new_size, align))
        else {
            return ptr::null_mut();
        };
        let st = meta_state(meta) & (state::INTERNAL | state::LIVE);
        uninstall(p);
        // SAFETY: (p - h, old_inner) is the inner block; the new size is
        // valid for its alignment (checked by inner_layout).
        let nb = unsafe {
            self.inner
                .realloc((p - h) as *mut u8, old_inner, new_size + h)
        };
        if nb.is_null() {
            install(p, size, align, st);
            return nb;
        }
        let np = nb as usize + h;
        if !install(np, new_size, align, st) {
            let (l, _) = inner_layout(new_size, align).expect("checked above");
            // SAFETY: nb is the inner block just returned, with layout l.
            unsafe { self.inner.dealloc(nb, l) };
            return ptr::null_mut();
        }
        np as *mut u8
    }
}

// SAFETY: every block comes from the inner allocator with a layout at least
// as large and as aligned as asked (the header sits in the extra bytes
// before the pointer returned), and goes back to it with that same layout.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on: compiled out, this is the inner allocator.
            return unsafe { self.inner.alloc(layout) };
        }
        // SAFETY: passed on.
        unsafe { self.alloc_impl(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: passed on.
        unsafe { self.alloc_impl(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on: the block came from inner.alloc.
            return unsafe { self.inner.dealloc(ptr, layout) };
        }
        let p = ptr as usize;
        let Some(meta) = header(p) else {
            return self.bad_free(p, "`dealloc`");
        };
        let st = meta_state(meta);
        if st & state::INTERNAL != 0 {
            // SAFETY: an internal block of ours, done with.
            return unsafe { self.release(p, meta) };
        }
        if st & state::FREED != 0 {
            return self.bad_free(p, "`dealloc`");
        }
        // SAFETY: a live user block whose owner is done with it.
        unsafe { self.free_user(p, meta) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on: the block came from inner.alloc.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        let p = ptr as usize;
        let meta = header(p);
        if let Some(meta) = meta {
            let st = meta_state(meta);
            let plain = st & state::INTERNAL != 0
                || (st & (state::FREED | state::PROMOTED | state::LENT) == 0
                    && (!checks_on_raw() || guarded()));
            if plain {
                // SAFETY: passed on.
                return unsafe { self.realloc_in_place(p, meta, new_size) };
            }
        }
        // Checked: the old block goes to the quarantine, so a pointer kept
        // across a growing push is seen (`UseAfterFree`).
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: new_layout has a non-zero size (realloc's contract).
        let fresh = unsafe { self.alloc_impl(new_layout, false) };
        if fresh.is_null() {
            return fresh;
        }
        match meta {
            Some(meta) if meta_state(meta) & state::FREED == 0 => {
                // SAFETY: both blocks are valid for the smaller size and do
                // not overlap; the old one is then freed as `dealloc` would.
                unsafe {
                    ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                    self.free_user(p, meta);
                }
            }
            _ => {
                self.bad_free(p, "`realloc`");
                // SAFETY: the caller vouches for layout.size() readable
                // bytes at ptr (it is left alone afterwards).
                unsafe { ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size)) };
            }
        }
        fresh
    }
}

/// `c_free` (or `ffi_check_free`) of `ptr`: when it is a Rust heap block of
/// the tracking allocator, C must not free it. Reports `InvalidFree` and
/// returns true (the caller must then leave the memory alone).
pub(crate) fn c_free_of_rust_block(ptr: usize, api: &'static str, site: Option<Site>) -> bool {
    let Some(b) = block_at(ptr) else {
        return false;
    };
    let _g = bookkeeping();
    let v = Violation::new(
        ViolationKind::InvalidFree,
        format!("{} (`{api}`)", crate::report::msg::FREE_MANAGED),
    )
    .note(format!(
        "allocated by Rust's allocator, freed with `{api}` (C): Rust memory is freed by Rust ({})",
        if b.freed {
            "and Rust already freed this block"
        } else {
            "take it back with `CString::from_raw` or `Box::from_raw` and drop it"
        }
    ))
    .with_site(site);
    emit(region_for_report(v, "Rust heap block", b.start));
    true
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

/// Reads the environment (mode, action, backtraces) before `main`, so that
/// the allocator, which never reads it itself, follows `FFI_CHECK` from the
/// first allocation `main` makes.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static READ_ENVIRONMENT_EARLY: extern "C" fn() = {
    extern "C" fn read_environment() {
        let _ = std::panic::catch_unwind(|| {
            let _ = crate::mode::mode();
            let _ = crate::mode::action();
            let _ = crate::mode::event_backtraces();
        });
    }
    read_environment
};
