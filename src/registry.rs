//! The registry: every tracked region, live or recently freed, and the
//! containing-address lookup that every check asks.
//!
//! # Design
//!
//! The address space is cut into 1 MiB chunks; a region smaller than a chunk
//! lives in the shard its *start* hashes to, a larger one in a separate
//! `large` shard that is skipped while it is empty (one relaxed load). Regions
//! never overlap (they come from real allocators; a record that a new
//! allocation overlaps is stale and is dropped), so the only region that can
//! contain an address is the one with the greatest start at or below it, and
//! that start lies in the address's chunk or the chunk before. A lookup is
//! therefore at most two ordered-map searches, each under one shard's read
//! lock: no global lock, no step that grows with the number of regions beyond
//! the logarithm of one shard.
//!
//! Freed regions stay in their shard, marked freed, in a per-shard bounded
//! FIFO (the quarantine), so a late use or a second free names the region and
//! the site that freed it. The quarantine also holds the freed *memory* back
//! from reuse (it gives a block back to its allocator only when the block
//! leaves the FIFO): that is what makes a freed record trustworthy, since no
//! new allocation can sit in a range the record still names. A library's own
//! deallocator runs at once instead (it may be a destroy function), and its
//! record is marked released: it then judges only an exact second free.
//!
//! Each shard keeps its records in a slab of fixed-size segments (40 bytes a
//! record, no per-record allocation) and an ordered index from start address
//! to slot, so a million regions cost about 62 bytes each in all.
//!
//! Reads are made cheap in two ways. Each shard has a version that every
//! write bumps; a thread keeps its last few answers with the version they
//! came from, and a lookup that finds a still-valid answer there takes no
//! lock and writes no shared memory (so threads do not slow each other down
//! through a lock's cache line). A long scan instead holds one shard's read
//! lock across a run of lookups ([`ScanReader`]).
//!
//! Invariants, held under each shard's lock:
//! - a region's index key is its start address, and regions do not overlap;
//! - every slot is either referenced by exactly one index entry or listed as
//!   vacant;
//! - every freed region has an entry in its shard's quarantine FIFO; entries
//!   whose region was since replaced are skipped on eviction (ids differ).

use std::alloc::Layout;
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// One tracked range: 40 bytes. Its start is the key of the shard's index.
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

/// A copy of a region's small facts, taken under the shard lock and used
/// after it is released. 32 bytes, laid out for cheap copies.
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
    fn of(start: usize, r: &Region) -> RegionInfo {
        RegionInfo {
            start,
            size: r.size,
            id: r.id(),
            kind: r.kind,
            state: r.state,
            pins: r.pins,
            family: r.family,
            flags: r.flags,
        }
    }

    /// Live managed memory that nothing pins: what P1/P2/P4/P5 forbid C to
    /// hold.
    pub fn is_unpinned_managed(&self) -> bool {
        self.kind == RegionKind::Managed && self.state == RegionState::Live && self.pins == 0
    }
}

const CHUNK_SHIFT: u32 = 20;
const CHUNK: usize = 1 << CHUNK_SHIFT;
const SHARD_BITS: u32 = 6;
const NSHARDS: usize = 1 << SHARD_BITS;
/// Records per slab segment: segments never move or grow, so the slab wastes
/// at most one partly filled segment per shard.
const SEGMENT: usize = 1024;

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

/// One shard: an ordered index from start address to a slot of the slab,
/// the slab of records, and the quarantine FIFO.
#[derive(Default)]
struct ShardInner {
    index: BTreeMap<usize, u32>,
    segments: Vec<Vec<Region>>,
    vacant: Vec<u32>,
    quarantine: VecDeque<Quarantined>,
    quarantine_bytes: usize,
}

impl ShardInner {
    fn slot(&self, slot: u32) -> &Region {
        let i = slot as usize;
        &self.segments[i / SEGMENT][i % SEGMENT]
    }
    fn slot_mut(&mut self, slot: u32) -> &mut Region {
        let i = slot as usize;
        &mut self.segments[i / SEGMENT][i % SEGMENT]
    }
    fn get(&self, start: usize) -> Option<&Region> {
        self.index.get(&start).map(|s| self.slot(*s))
    }
    fn get_mut(&mut self, start: usize) -> Option<&mut Region> {
        let slot = *self.index.get(&start)?;
        Some(self.slot_mut(slot))
    }
    /// The region with the greatest start at or below `addr`.
    fn predecessor(&self, addr: usize) -> Option<(usize, &Region)> {
        let (&s, &slot) = self.index.range(..=addr).next_back()?;
        Some((s, self.slot(slot)))
    }
    fn insert(&mut self, start: usize, region: Region) -> Option<Region> {
        let slot = match self.vacant.pop() {
            Some(slot) => {
                *self.slot_mut(slot) = region;
                slot
            }
            None => {
                if self.segments.last().map_or(true, |s| s.len() == SEGMENT) {
                    self.segments.push(Vec::with_capacity(SEGMENT));
                }
                let n = self.segments.len();
                self.segments[n - 1].push(region);
                ((n - 1) * SEGMENT + self.segments[n - 1].len() - 1) as u32
            }
        };
        let old = self.index.insert(start, slot)?;
        Some(self.take_slot(old))
    }
    fn remove(&mut self, start: usize) -> Option<Region> {
        let slot = self.index.remove(&start)?;
        Some(self.take_slot(slot))
    }
    /// Empties a slot (its record moves out; the slot is reused later).
    fn take_slot(&mut self, slot: u32) -> Region {
        self.vacant.push(slot);
        let r = self.slot_mut(slot);
        Region {
            size: r.size,
            site: r.site,
            extra: r.extra.take(),
            tag: r.tag,
            pins: r.pins,
            retains: r.retains,
            kind: r.kind,
            state: r.state,
            family: r.family,
            flags: r.flags,
        }
    }
}

/// A shard: its lock, and a version that every write bumps, so a thread's
/// cached answer about this shard can be checked with one plain load.
/// Aligned to two cache lines so that neighbouring shards never share one.
#[repr(align(128))]
struct Shard {
    lock: RwLock<ShardInner>,
    version: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            lock: RwLock::new(ShardInner {
                index: BTreeMap::new(),
                segments: Vec::new(),
                vacant: Vec::new(),
                quarantine: VecDeque::new(),
                quarantine_bytes: 0,
            }),
            version: AtomicU64::new(0),
        }
    }
    // A panic while a shard is locked leaves it consistent (every mutation
    // is completed before anything that could panic), so a poisoned lock is
    // used as is: the checker must not turn one panic into a cascade.
    fn read(&self) -> RwLockReadGuard<'_, ShardInner> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Every change to a shard goes through here, and so bumps its version
    /// (while holding the lock, before the change is made).
    fn write(&self) -> RwLockWriteGuard<'_, ShardInner> {
        let guard = self.lock.write().unwrap_or_else(|e| e.into_inner());
        self.version.fetch_add(1, Ordering::Release);
        guard
    }
}

static SHARDS: [Shard; NSHARDS] = [const { Shard::new() }; NSHARDS];
static LARGE: Shard = Shard::new();
static LARGE_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The largest small region ever registered: an address further than this
/// into its chunk cannot be inside a region that starts in the chunk before.
static MAX_SMALL: AtomicUsize = AtomicUsize::new(0);

/// Lowest and highest address ever tracked, and the same for managed memory:
/// the bounds pre-filter that lets a scan or a lookup of an unrelated word
/// return without touching a lock.
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

#[inline]
fn shard_index(addr: usize) -> usize {
    let chunk = (addr >> CHUNK_SHIFT) as u64;
    (chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS)) as usize
}

#[inline]
fn shard_for_start(start: usize, size: usize) -> &'static Shard {
    if size >= CHUNK {
        &LARGE
    } else {
        &SHARDS[shard_index(start)]
    }
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
    let _bookkeeping = crate::alloc::bookkeeping();
    let id = new_id();
    let size = new.size.max(1);
    if size >= CHUNK {
        remove_overlapping(new.start, size);
    } else {
        remove_overlapping_around(new.start, size);
    }
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
        crate::alloc::mark_registered(new.start);
        widen(&MANAGED_LO, &MANAGED_HI, new.start, size);
    }
    let shard = shard_for_start(new.start, size);
    let mut stale = Vec::new();
    {
        let mut inner = shard.write();
        // Stale records in the region's own shard go under the same lock
        // as the insert: the common case costs one lock.
        for s in overlapping(&inner, new.start, new.start.saturating_add(size)) {
            stale.extend(inner.remove(s));
        }
        stale.extend(inner.insert(new.start, region));
    }
    if size >= CHUNK {
        LARGE_COUNT.fetch_add(1, Ordering::Relaxed);
    } else if size > MAX_SMALL.load(Ordering::Relaxed) {
        MAX_SMALL.fetch_max(size, Ordering::Relaxed);
    }
    if !EVER_TRACKED.load(Ordering::Relaxed) {
        EVER_TRACKED.store(true, Ordering::Relaxed);
    }
    crate::report::stats_region_created(new.kind, new.size);
    for old in &stale {
        forget_removed(old);
    }
    id
}

/// The starts of the records in `inner` that overlap `[start, end)`.
fn overlapping(inner: &ShardInner, start: usize, end: usize) -> Vec<usize> {
    let before = inner
        .predecessor(start.saturating_sub(1))
        .filter(|(s, r)| *s < start && s.saturating_add(r.size.max(1)) > start)
        .map(|(s, _)| s);
    let within = inner.index.range(start..end).map(|(s, _)| *s);
    before.into_iter().chain(within).collect()
}

/// Drops the stale records that overlap a small region `[start, start +
/// size)` from the shards *other* than its own (which `insert` purges under
/// its own lock): the large shard, the previous chunk's shard when a small
/// region could reach across, and the next chunk's when the region does.
fn remove_overlapping_around(start: usize, size: usize) {
    let end = start.saturating_add(size);
    if !purge_large(start, end) {
        return;
    }
    let here = shard_index(start);
    if start >= CHUNK && start & (CHUNK - 1) < MAX_SMALL.load(Ordering::Relaxed) {
        let prev = shard_index(start - CHUNK);
        if prev != here {
            purge(&SHARDS[prev], start, end);
        }
    }
    if (end - 1) >> CHUNK_SHIFT != start >> CHUNK_SHIFT {
        let next = shard_index(end - 1);
        if next != here {
            purge(&SHARDS[next], start, end);
        }
    }
}

/// The first step of every purge: false when `[start, end)` lies outside
/// every range ever tracked (nothing to do); otherwise purges the large
/// shard, which any range may overlap.
fn purge_large(start: usize, end: usize) -> bool {
    if start >= HI.load(Ordering::Relaxed) || end <= LO.load(Ordering::Relaxed) {
        return false;
    }
    if LARGE_COUNT.load(Ordering::Relaxed) > 0 {
        purge(&LARGE, start, end);
    }
    true
}

/// Drops the records of `shard` that overlap `[start, end)`.
fn purge(shard: &'static Shard, start: usize, end: usize) {
    // Read first: overlaps are rare, and a read lock does not stop other
    // threads' lookups.
    if start == 0 || overlapping(&shard.read(), start, end).is_empty() {
        return;
    }
    let mut inner = shard.write();
    let stale = overlapping(&inner, start, end);
    let removed: Vec<Region> = stale.into_iter().filter_map(|s| inner.remove(s)).collect();
    drop(inner);
    for r in &removed {
        forget_removed(r);
    }
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

/// Drops the records that overlap `[start, start + size)`: only stale ones
/// can (live allocations do not overlap), so this is bookkeeping, not a check.
fn remove_overlapping(start: usize, size: usize) {
    let end = start.saturating_add(size);
    if !purge_large(start, end) {
        return;
    }
    // Small regions start in the chunk before `start` up to the one holding
    // `end - 1`; visit each shard once.
    let first = (start >> CHUNK_SHIFT).saturating_sub(1);
    let last = (end - 1) >> CHUNK_SHIFT;
    let mut seen = 0u64;
    for chunk in first..=last {
        let idx = shard_index(chunk << CHUNK_SHIFT);
        if seen & (1 << idx) == 0 {
            seen |= 1 << idx;
            purge(&SHARDS[idx], start, end);
        }
        if seen == u64::MAX {
            break;
        }
    }
}

fn forget_removed(r: &Region) {
    if r.size.max(1) >= CHUNK {
        LARGE_COUNT.fetch_sub(1, Ordering::Relaxed);
    }
    crate::report::stats_region_gone(r.kind, r.size, r.state == RegionState::Live);
}

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

fn find_in(shard: &'static Shard, addr: usize, keep: bool) -> Option<RegionInfo> {
    let inner = shard.read();
    // Read under the lock: no write is in progress, so the answer below is
    // exactly what this version of the shard says.
    let version = shard.version.load(Ordering::Acquire);
    let (s, r) = inner.predecessor(addr)?;
    let info = (addr < s.saturating_add(r.size.max(1))).then(|| RegionInfo::of(s, r))?;
    drop(inner);
    if keep {
        remember(shard, version, info);
    }
    Some(info)
}

/// A thread's recent answers: the regions it found lately, each with the
/// version of the shard it came from. While that shard has not changed, the
/// answer holds, and a lookup that hits here takes no lock and writes no
/// shared memory, so threads that look up at the same time do not slow each
/// other down (a read lock would bounce its cache line between them).
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
/// answer settles it without a lock and without copying a whole record.
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
        None => lookup_locked(addr, remember)
            .filter(RegionInfo::is_unpinned_managed)
            .map(|r| r.start),
    }
}

/// The lookup behind the bounds pre-filter: the thread's recent answers
/// first (inline, no lock), then the shards.
#[inline(always)]
fn lookup_slow(addr: usize, keep: bool) -> Option<RegionInfo> {
    match recall(addr) {
        Some(info) => Some(info),
        None => lookup_locked(addr, keep),
    }
}

#[inline(never)]
fn lookup_locked(addr: usize, keep: bool) -> Option<RegionInfo> {
    let here = shard_index(addr);
    if let Some(r) = find_in(&SHARDS[here], addr, keep) {
        return Some(r);
    }
    // A small region that starts in the previous chunk may reach into this
    // one, if any small region is long enough to.
    if addr >= CHUNK && addr & (CHUNK - 1) < MAX_SMALL.load(Ordering::Relaxed) {
        let prev = shard_index(addr - CHUNK);
        if prev != here {
            if let Some(r) = find_in(&SHARDS[prev], addr, keep) {
                return Some(r);
            }
        }
    }
    if LARGE_COUNT.load(Ordering::Relaxed) > 0 {
        return find_in(&LARGE, addr, keep);
    }
    None
}

/// Lookups for a long scan: it keeps the read lock of the shard it last
/// looked in, so a run of words that point into one shard (an array of
/// pointers to buffers allocated together) costs one lock, not one each.
/// Only one shard is held at a time, and only for the scan: drop the reader
/// before doing anything else with the registry (a report, say).
pub(crate) struct ScanReader {
    held: Option<(usize, RwLockReadGuard<'static, ShardInner>)>,
}

impl ScanReader {
    pub(crate) fn new() -> ScanReader {
        ScanReader { held: None }
    }

    /// The managed region (live or freed) that contains `addr`, if any.
    pub(crate) fn lookup_managed(&mut self, addr: usize) -> Option<RegionInfo> {
        if addr < MANAGED_LO.load(Ordering::Relaxed) || addr >= MANAGED_HI.load(Ordering::Relaxed) {
            return None;
        }
        let here = shard_index(addr);
        let found = self.find(here, addr).or_else(|| {
            if addr >= CHUNK && addr & (CHUNK - 1) < MAX_SMALL.load(Ordering::Relaxed) {
                let prev = shard_index(addr - CHUNK);
                if prev != here {
                    return self.find(prev, addr);
                }
            }
            None
        });
        let found = match found {
            Some(r) => Some(r),
            None if LARGE_COUNT.load(Ordering::Relaxed) > 0 => {
                self.held = None;
                find_in(&LARGE, addr, false)
            }
            None => None,
        };
        found.filter(|r| r.kind == RegionKind::Managed)
    }

    fn find(&mut self, idx: usize, addr: usize) -> Option<RegionInfo> {
        if self.held.as_ref().map(|(i, _)| *i) != Some(idx) {
            // Release the old shard before taking the next: one at a time.
            self.held = None;
            self.held = Some((idx, SHARDS[idx].read()));
        }
        let (_, inner) = self.held.as_ref()?;
        let (s, r) = inner.predecessor(addr)?;
        (addr < s.saturating_add(r.size.max(1))).then(|| RegionInfo::of(s, r))
    }
}

/// The shard that holds the region starting exactly at `start`, if any
/// (while no large region exists, the small shard without a look).
fn shard_of(start: usize) -> Option<&'static Shard> {
    let small = &SHARDS[shard_index(start)];
    if LARGE_COUNT.load(Ordering::Relaxed) == 0 {
        return Some(small);
    }
    if small.read().index.contains_key(&start) {
        return Some(small);
    }
    if LARGE_COUNT.load(Ordering::Relaxed) > 0 && LARGE.read().index.contains_key(&start) {
        return Some(&LARGE);
    }
    None
}

/// Runs `f` on the region that starts exactly at `start`, under its shard's
/// write lock. `f` must not call back into the registry.
pub(crate) fn update<R>(start: usize, f: impl FnOnce(&mut Region) -> R) -> Option<R> {
    let _bookkeeping = crate::alloc::bookkeeping();
    let shard = shard_of(start)?;
    let mut inner = shard.write();
    inner.get_mut(start).map(f)
}

/// Runs `f` on the region that contains `addr`, under its shard's write lock.
pub(crate) fn update_containing<R>(
    addr: usize,
    f: impl FnOnce(usize, &mut Region) -> R,
) -> Option<R> {
    let _bookkeeping = crate::alloc::bookkeeping();
    let info = lookup(addr)?;
    let shard = shard_of(info.start)?;
    let mut inner = shard.write();
    let r = inner.get_mut(info.start)?;
    (r.id() == info.id).then(|| f(info.start, r))
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
    let _bookkeeping = crate::alloc::bookkeeping();
    let trace = crate::mode::event_backtraces().then(Backtrace::new_unresolved);
    let shard = shard_of(start);
    let Some(shard) = shard else {
        // SAFETY: the caller hands over a block it owns and no longer uses.
        unsafe { release.run(start) };
        return None;
    };
    let mut inner = shard.write();
    let Some(r) = inner.get_mut(start) else {
        drop(inner);
        // SAFETY: as above.
        unsafe { release.run(start) };
        return None;
    };
    let before = RegionInfo::of(start, r);
    if expect_id.is_some_and(|id| id != before.id) {
        // Another block took this address since the caller's check: this
        // free is not about it.
        drop(inner);
        // SAFETY: as above.
        unsafe { release.run(start) };
        return None;
    }
    if r.state != RegionState::Live {
        drop(inner);
        // A second free of a quarantined block must never release it twice:
        // the callers report it and skip; this is a last line of defence.
        return Some(before);
    }
    r.state = RegionState::Freed;
    if matches!(release, Release::Released) {
        r.flags |= flags::RELEASED;
    }
    if site.is_some() || trace.is_some() {
        let extra = r.extra_mut();
        extra.free_site = site;
        extra.free_trace = trace;
    }
    inner.quarantine.push_back(Quarantined {
        start,
        id: before.id,
        size: before.size,
        release,
    });
    inner.quarantine_bytes += before.size;
    let (max_blocks, max_bytes) = quarantine_limits();
    let mut evicted = Vec::new();
    while inner.quarantine.len() > 1
        && (inner.quarantine.len() > max_blocks || inner.quarantine_bytes > max_bytes)
    {
        let Some(q) = inner.quarantine.pop_front() else {
            break;
        };
        inner.quarantine_bytes -= q.size;
        let current = inner
            .get(q.start)
            .is_some_and(|r| r.id() == q.id && r.state == RegionState::Freed);
        if current {
            let r = inner.remove(q.start).expect("present");
            evicted.push((q, r));
        }
        // Otherwise the record was replaced: the range was reused behind the
        // checker's back, so giving it back now would free someone else's
        // memory. It is left alone (a leak, never a corruption).
    }
    drop(inner);
    crate::report::stats_region_freed(before.kind, before.size);
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
    let _bookkeeping = crate::alloc::bookkeeping();
    let shard = shard_of(start)?;
    let r = shard.write().remove(start)?;
    // A freed record's quarantine entry is skipped on eviction (id mismatch).
    let info = RegionInfo::of(start, &r);
    forget_removed(&r);
    Some(info)
}

/// True while nothing was ever tracked: a mode-0 free can skip the
/// registry.
#[inline]
pub(crate) fn nothing_live() -> bool {
    !EVER_TRACKED.load(Ordering::Relaxed)
}

/// Calls `f` on every region, one shard at a time (each shard is read-locked
/// only while it is visited). `f` must not call back into the registry.
pub(crate) fn for_each(mut f: impl FnMut(usize, &Region)) {
    for shard in SHARDS.iter().chain(std::iter::once(&LARGE)) {
        let inner = shard.read();
        for (&s, &slot) in inner.index.iter() {
            f(s, inner.slot(slot));
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

/// The details of the region starting at `start` (the record with that id,
/// when `id` is given).
#[cold]
pub(crate) fn detail(start: usize) -> Option<RegionDetail> {
    let shard = shard_of(start)?;
    let inner = shard.read();
    inner.get(start).map(|r| RegionDetail::of(start, r))
}

/// Bytes of bookkeeping per region before the index's node overhead: the
/// 40-byte record plus its index entry (start address and slot number).
/// The benchmarks measure the whole cost per region, overhead included.
///
/// ```
/// assert_eq!(ffi_check::REGION_RECORD_BYTES, 52);
/// ```
pub const REGION_RECORD_BYTES: usize =
    std::mem::size_of::<Region>() + std::mem::size_of::<usize>() + std::mem::size_of::<u32>();

/// The lowest and highest managed address ever tracked (`lo >= hi` when none).
#[inline]
pub(crate) fn managed_bounds() -> (usize, usize) {
    (
        MANAGED_LO.load(Ordering::Relaxed),
        MANAGED_HI.load(Ordering::Relaxed),
    )
}
