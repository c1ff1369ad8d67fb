//! The stack depot: every backtrace the checker keeps for an event (an
//! allocation, a pin, a retain, a free), stored once as raw return
//! addresses and named by a 4-byte [`StackId`], resolved to functions, files
//! and lines only when a report prints it.
//!
//! The idea is LeakSanitizer's and AddressSanitizer's `sanitizer_stackdepot`:
//! a program makes a few thousand distinct stacks and millions of events, so
//! keeping each event's frames (a resolved-later `backtrace::Backtrace` is
//! about a kilobyte with its boxed frames) costs most of mode 2's memory;
//! keeping one id an event and each distinct stack once costs almost none.
//!
//! A capture walks the stack (with [`unwind`](crate::unwind)'s cached
//! unwind rules) into a fixed buffer on the stack
//! ([`MAX_FRAMES`] return addresses, no allocation), compares them with
//! the thread's last few distinct stacks ([`RECENT_STACKS`], in the
//! thread's own memory: most allocations come from a few sites in a loop),
//! and only then hashes the addresses and looks them up in one of
//! [`SHARDS`] tables; only a stack never seen before is copied in. Nothing
//! is ever removed: an id stays valid for the life of the process.
//!
//! A stack seen before (nearly every capture) is found without a lock and
//! without allocating: each shard publishes its hash index (an array of
//! atomic words, each 0 or the address of a stored stack) through an
//! atomic pointer, and a stored stack (its hash, its id, its length and its
//! frames, in consecutive words) never moves, changes or goes away once
//! published. A reader probes the index it loaded and compares the frames
//! of the stacks whose hash matches; a stack it does not find (new, or
//! added since to a newer index) is looked up again, and added, under the
//! shard's mutex.
//!
//! Invariants: an id `(shard << SHARD_SHIFT) | (n + 1)` names entry `n` of
//! that shard (`entries[n]`, the address of its stored stack); a stored
//! stack is written whole before its address is stored (`Release`) in an
//! index slot, and never written again; an index is written only while it
//! is its shard's published one, holds each entry's address once, under its
//! hash, and is at most half full (so every probe meets an empty slot); a
//! grown index is published (`Release`) only when it holds every entry; an
//! index replaced, and every chunk of stored stacks, stays allocated for
//! the life of the process (the waste of the replaced indexes is less than
//! the current one). Everything is written under its shard's mutex, and
//! allocated as bookkeeping.
//!
//! A ground-floor module: it uses only [`bookkeeping`](crate::bookkeeping)
//! and [`unwind`](crate::unwind).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::bookkeeping::bookkeeping;

/// The most return addresses a stack keeps (the innermost ones).
pub(crate) const MAX_FRAMES: usize = 32;

const SHARDS: usize = 16;
const SHARD_SHIFT: u32 = 28;

/// A stored stack's words before its frames: its hash, then its entry
/// number `n + 1` in the high half and its length in the low half.
const HEADER: usize = 2;

/// The smallest index (slots); each growth doubles it.
const MIN_INDEX: usize = 1024;

/// The first chunk of stored stacks (words); each next chunk doubles, up to
/// [`MAX_CHUNK`].
const MIN_CHUNK: usize = 512;
const MAX_CHUNK: usize = 64 * 1024;

/// A stored stack: 4 bytes wherever an event keeps its backtrace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StackId(NonZeroU32);

impl StackId {
    /// The id as a word for an atomic slot (0 stands for none).
    pub(crate) fn word(id: Option<StackId>) -> u32 {
        id.map_or(0, |id| id.0.get())
    }

    /// The id a slot's word holds ([`StackId::word`]'s inverse).
    pub(crate) fn from_word(word: u32) -> Option<StackId> {
        NonZeroU32::new(word).map(StackId)
    }
}

/// What the shard's mutex guards: the writers' side.
struct Shard {
    /// The address of each entry's stored stack, by entry number.
    entries: Vec<usize>,
    /// The published index's slots (its length, a power of two; 0 before
    /// the first).
    slots: usize,
    /// Where the next stored stack goes in the current chunk, and the words
    /// left there.
    next: usize,
    left: usize,
    /// The last chunk's size (words).
    chunk: usize,
    /// Bytes of every index and chunk ever allocated.
    bytes: usize,
}

static DEPOT: [Mutex<Shard>; SHARDS] = [const {
    Mutex::new(Shard {
        entries: Vec::new(),
        slots: 0,
        next: 0,
        left: 0,
        chunk: 0,
        bytes: 0,
    })
}; SHARDS];

/// Each shard's published index: null before its first stack, else the
/// first of `1 + len` atomic words, the first holding `len` (a power of
/// two), the others the slots. Never freed.
static INDEX: [AtomicPtr<AtomicUsize>; SHARDS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SHARDS];

fn shard(i: usize) -> MutexGuard<'static, Shard> {
    // Every change is completed before anything that could panic.
    DEPOT[i].lock().unwrap_or_else(|e| e.into_inner())
}

/// The entry number + 1 of the stack `ips` hashed `hash` in the index at
/// `index`, or `Err(slot)`: the empty slot where it would go.
///
/// # Safety
/// `index` is an index once published (`Acquire`-loaded from [`INDEX`], or
/// read under the shard's mutex): its length word, its slots and the stored
/// stacks they point to are never freed, and each stored stack was written
/// whole before its address was stored.
#[inline(always)]
unsafe fn probe(index: *const AtomicUsize, hash: u64, ips: &[usize]) -> Result<u32, usize> {
    // SAFETY: the first word of an index is its length, never changed.
    let mask = unsafe { &*index }.load(Ordering::Relaxed) - 1;
    let mut slot = hash as usize & mask;
    loop {
        // SAFETY: `slot <= mask`, and the index has `mask + 1` slots after
        // its length word.
        let at = unsafe { &*index.add(1 + slot) }.load(Ordering::Acquire);
        if at == 0 {
            return Err(slot);
        }
        let stored = at as *const usize;
        // SAFETY: `at` is a stored stack's address (`Acquire`: its words
        // were written before it was published, and are never written
        // again): `HEADER` words, then `len` frames.
        let (h, id_len) = unsafe { (*stored, *stored.add(1)) };
        if h == hash as usize && id_len as u32 as usize == ips.len() {
            // SAFETY: as above; `len` frames follow the header.
            let frames = unsafe { std::slice::from_raw_parts(stored.add(HEADER), ips.len()) };
            if frames == ips {
                return Ok((id_len >> 32) as u32);
            }
        }
        // At most half the slots are taken: an empty one comes.
        slot = (slot + 1) & mask;
    }
}

/// A new index of `len` slots (a power of two), empty, as bookkeeping.
fn new_index(len: usize) -> *mut AtomicUsize {
    let _g = bookkeeping();
    let words: Box<[AtomicUsize]> = (0..=len)
        .map(|i| AtomicUsize::new(if i == 0 { len } else { 0 }))
        .collect();
    Box::leak(words).as_mut_ptr()
}

impl Shard {
    /// The stack `ips` hashed `hash`, found or added, in shard `s`: its
    /// entry number + 1. Called with the shard's mutex held (`self`).
    fn find_or_add(&mut self, s: usize, hash: u64, ips: &[usize]) -> Option<u32> {
        if self.entries.len() * 2 >= self.slots {
            self.grow(s);
        }
        let index = INDEX[s].load(Ordering::Acquire);
        // SAFETY: the published index (`grow` published one above, if
        // there was none), read under the mutex.
        let slot = match unsafe { probe(index, hash, ips) } {
            Ok(n) => return Some(n),
            Err(slot) => slot,
        };
        let n = u32::try_from(self.entries.len() + 1).ok()?;
        if n >= 1 << SHARD_SHIFT {
            return None;
        }
        let at = self.store(hash, n, ips);
        self.entries.push(at);
        // SAFETY: `slot` is one of the published index's slots (its
        // length is `self.slots`, and `slot < self.slots`).
        let word = unsafe { &*index.add(1 + slot) };
        // Publishes the stored stack, written whole above.
        word.store(at, Ordering::Release);
        Some(n)
    }

    /// Copies the stack into the current chunk (a new one when it has no
    /// room) and returns its address.
    fn store(&mut self, hash: u64, n: u32, ips: &[usize]) -> usize {
        let words = HEADER + ips.len();
        if self.left < words {
            self.chunk = (self.chunk * 2).clamp(MIN_CHUNK, MAX_CHUNK).max(words);
            let _g = bookkeeping();
            let chunk: Box<[usize]> = vec![0usize; self.chunk].into_boxed_slice();
            self.next = Box::leak(chunk).as_mut_ptr() as usize;
            self.left = self.chunk;
            self.bytes += self.chunk * std::mem::size_of::<usize>();
        }
        let at = self.next as *mut usize;
        // SAFETY: `[at, at + words)` lies in the current chunk (`left >=
        // words` words from `next`), which this shard's mutex holder alone
        // writes, and no reader sees before its address is published.
        unsafe {
            at.write(hash as usize);
            at.add(1).write((n as usize) << 32 | ips.len());
            std::ptr::copy_nonoverlapping(ips.as_ptr(), at.add(HEADER), ips.len());
        }
        self.next += words * std::mem::size_of::<usize>();
        self.left -= words;
        at as usize
    }

    /// Publishes an index twice the size, holding every entry.
    fn grow(&mut self, s: usize) {
        let len = (self.slots * 2).max(MIN_INDEX);
        let index = new_index(len);
        for &at in &self.entries {
            // SAFETY: `at` is a stored stack: its first word is its hash.
            let hash = unsafe { *(at as *const usize) };
            let mut slot = hash & (len - 1);
            loop {
                // SAFETY: `slot < len`, the new index's slot count; no
                // reader sees it yet.
                let word = unsafe { &*index.add(1 + slot) };
                if word.load(Ordering::Relaxed) == 0 {
                    word.store(at, Ordering::Relaxed);
                    break;
                }
                slot = (slot + 1) & (len - 1);
            }
        }
        // The old index (if any) stays allocated: readers may hold it.
        INDEX[s].store(index, Ordering::Release);
        self.slots = len;
        self.bytes += (len + 1) * std::mem::size_of::<usize>();
    }

    fn bytes(&self) -> usize {
        self.bytes + self.entries.capacity() * std::mem::size_of::<usize>()
    }
}

/// The hash of a stack: four lanes over every fourth frame (so the
/// multiplications of neighbouring frames overlap), then mixed.
fn hash(ips: &[usize]) -> u64 {
    const K: u64 = 0x0100_0000_01b3;
    let mut lanes = [
        0xcbf2_9ce4_8422_2325u64,
        0x9e37_79b9_7f4a_7c15u64,
        0xc2b2_ae3d_27d4_eb4fu64,
        0x1656_67b1_9e37_79f9u64,
    ];
    let mut quads = ips.chunks_exact(4);
    for quad in &mut quads {
        for (lane, &ip) in lanes.iter_mut().zip(quad) {
            *lane = (*lane ^ ip as u64).wrapping_mul(K);
        }
    }
    for (lane, &ip) in lanes.iter_mut().zip(quads.remainder()) {
        *lane = (*lane ^ ip as u64).wrapping_mul(K);
    }
    let [a, b, c, d] = lanes;
    let mut h = a ^ b.rotate_left(16) ^ c.rotate_left(32) ^ d.rotate_left(48) ^ ips.len() as u64;
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    h
}

/// The caller's stack, stored (once) in the depot. `None` only when the
/// stack is empty or the depot is full (2^28 distinct stacks a shard).
///
/// The stack is walked with the cached unwind rules of
/// [`unwind`](crate::unwind) (a table probe and a load or two a frame),
/// or, where a frame has none, with the platform unwinder (DWARF unwind
/// tables, about two microseconds for a deep stack); both give the same
/// return addresses, the first being where the caller of `capture` returns
/// to.
#[inline(never)]
pub(crate) fn capture() -> Option<StackId> {
    let mut ips = [0usize; MAX_FRAMES];
    let n = if PLATFORM_ONLY.load(Ordering::Relaxed) {
        crate::unwind::platform(&mut ips, 0)
    } else {
        crate::unwind::walk(&mut ips, 0)
    };
    let ips = &ips[..n];
    if RECENT_BUSY.with(|b| b.replace(true)) {
        // A capture interrupted (by a signal handler) on this thread is
        // using the recent stacks: this one goes to the depot alone.
        return intern(ips);
    }
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let recent = RECENT.with(|r| r.get());
    // SAFETY: this thread's alone; no other reference to it exists while
    // `RECENT_BUSY` is set (a handler interrupting this capture sees it and
    // leaves the cache alone).
    let recent = unsafe { &mut *recent };
    let id = recent.find(ips).or_else(|| {
        let id = intern(ips);
        if let Some(id) = id {
            recent.put(ips, id);
        }
        id
    });
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    RECENT_BUSY.with(|b| b.set(false));
    id
}

/// How many of its last distinct stacks a thread remembers.
const RECENT_STACKS: usize = 4;

/// A thread's last few distinct stacks and their ids: an allocation in a
/// loop, or two that alternate (a `String` and the `Box` that holds it),
/// meet the same stacks again and again, and comparing the frames of a few
/// stacks in the thread's own cache lines costs less than hashing them and
/// reading the depot's.
struct Recent {
    lens: [usize; RECENT_STACKS],
    ids: [u32; RECENT_STACKS],
    frames: [[usize; MAX_FRAMES]; RECENT_STACKS],
    next: usize,
}

impl Recent {
    /// No stack yet (no length matches `usize::MAX`).
    const EMPTY: Recent = Recent {
        lens: [usize::MAX; RECENT_STACKS],
        ids: [0; RECENT_STACKS],
        frames: [[0; MAX_FRAMES]; RECENT_STACKS],
        next: 0,
    };

    fn find(&self, ips: &[usize]) -> Option<StackId> {
        (0..RECENT_STACKS)
            .find(|&k| self.lens[k] == ips.len() && self.frames[k][..ips.len()] == *ips)
            .and_then(|k| StackId::from_word(self.ids[k]))
    }

    fn put(&mut self, ips: &[usize], id: StackId) {
        let k = self.next;
        self.next = (k + 1) % RECENT_STACKS;
        self.lens[k] = ips.len();
        self.ids[k] = StackId::word(Some(id));
        self.frames[k][..ips.len()].copy_from_slice(ips);
    }
}

thread_local! {
    /// This thread's recent stacks (constant initialiser, no destructor:
    /// usable at any time on any thread).
    static RECENT: std::cell::UnsafeCell<Recent> =
        const { std::cell::UnsafeCell::new(Recent::EMPTY) };
    /// Whether a capture is using [`RECENT`].
    static RECENT_BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether every capture walks with the platform unwinder, as before the
/// cached unwind rules (for the benchmarks' before-and-after in one run).
static PLATFORM_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes every capture walk with the platform unwinder (`true`), or with
/// the cached unwind rules again (`false`, the default).
pub(crate) fn set_platform_only(on: bool) {
    PLATFORM_ONLY.store(on, Ordering::Relaxed);
}

/// The caller's stack as [`capture`] stored it before the cached unwind
/// rules: every capture walked by the platform unwinder. For the
/// benchmarks, beside [`capture`].
#[inline(never)]
pub(crate) fn capture_with_platform_unwinder() -> Option<StackId> {
    let mut ips = [0usize; MAX_FRAMES];
    let n = crate::unwind::platform(&mut ips, 0);
    intern(&ips[..n])
}

/// How event stacks are walked, and how many walks so far needed the
/// platform unwinder, for the benchmarks' output.
pub(crate) fn walker() -> String {
    format!(
        "cached unwind rules ({} walks fell back to the platform unwinder)",
        crate::unwind::fallbacks()
    )
}

/// Stores `ips` (innermost first) and returns its id.
pub(crate) fn intern(ips: &[usize]) -> Option<StackId> {
    if ips.is_empty() {
        return None;
    }
    let h = hash(ips);
    let s = (h >> 60) as usize % SHARDS;
    let index = INDEX[s].load(Ordering::Acquire);
    let found = if index.is_null() {
        None
    } else {
        // SAFETY: `index` is the shard's index, published (`Acquire`).
        unsafe { probe(index, h, ips) }.ok()
    };
    let n = match found {
        Some(n) => n,
        None => {
            let _g = bookkeeping();
            shard(s).find_or_add(s, h, ips)?
        }
    };
    NonZeroU32::new(((s as u32) << SHARD_SHIFT) | n).map(StackId)
}

/// The return addresses of a stored stack, innermost first.
pub(crate) fn frames(id: StackId) -> Vec<usize> {
    let (s, n) = (
        (id.0.get() >> SHARD_SHIFT) as usize,
        (id.0.get() & ((1 << SHARD_SHIFT) - 1)) as usize,
    );
    let _g = bookkeeping();
    let shard = shard(s);
    match shard.entries.get(n - 1) {
        Some(&at) => {
            let at = at as *const usize;
            // SAFETY: `at` is a stored stack: its header, then `len` frames,
            // never written again.
            unsafe {
                let len = *at.add(1) as u32 as usize;
                std::slice::from_raw_parts(at.add(HEADER), len).to_vec()
            }
        }
        None => Vec::new(),
    }
}

/// What the depot holds, in bytes (every index and chunk it allocated).
pub(crate) fn bytes() -> usize {
    (0..SHARDS).map(|i| shard(i).bytes()).sum()
}

/// The depot's locks, held across `fork` (see `crate::fork`): leaves,
/// taken last.
pub(crate) struct ForkLocks {
    _shards: [MutexGuard<'static, Shard>; SHARDS],
}

/// Takes every shard's lock, in index order, for `fork`'s prepare handler.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        // `from_fn` calls the closure in increasing index order.
        _shards: std::array::from_fn(shard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn captured_here() -> Option<StackId> {
        capture()
    }

    #[test]
    fn the_same_stack_is_stored_once() {
        let a = intern(&[1, 2, 3]).unwrap();
        let b = intern(&[1, 2, 3]).unwrap();
        let c = intern(&[1, 2, 4]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(frames(a), vec![1, 2, 3]);
        assert_eq!(frames(c), vec![1, 2, 4]);
        assert_eq!(intern(&[]), None);
    }

    #[test]
    fn a_capture_in_a_loop_is_one_stack() {
        let ids: Vec<_> = (0..100).map(|_| captured_here().unwrap()).collect();
        assert!(ids.iter().all(|&id| id == ids[0]));
        assert!(!frames(ids[0]).is_empty());
        assert!(frames(ids[0]).len() <= MAX_FRAMES);
    }

    #[test]
    fn both_walks_store_the_same_stack() {
        #[inline(never)]
        fn both() -> (Option<StackId>, Option<StackId>) {
            (capture(), capture_with_platform_unwinder())
        }
        let (fast, platform) = both();
        let (fast, platform) = (frames(fast.unwrap()), frames(platform.unwrap()));
        // Two call sites in `both`: the first addresses differ, the rest
        // (`both`'s callers) are the same.
        assert_eq!(fast[1..], platform[1..]);
        assert!(fast.len() > 2);
    }

    #[test]
    fn many_distinct_stacks_keep_their_frames() {
        // Enough to grow every shard's index a few times.
        let ids: Vec<_> = (0..40_000usize)
            .map(|i| (i, intern(&[i, i + 7, 99]).unwrap()))
            .collect();
        for (i, id) in ids {
            assert_eq!(frames(id), vec![i, i + 7, 99]);
        }
    }

    #[test]
    fn a_thread_s_recent_stacks_answer_for_the_depot_and_only_for_their_own_frames() {
        let mut recent = Recent::EMPTY;
        let stacks: Vec<Vec<usize>> = (0..RECENT_STACKS + 2)
            .map(|k| vec![0x51_0000 + k, 0x52_0000, 0x53_0000])
            .collect();
        let ids: Vec<StackId> = stacks.iter().map(|s| intern(s).unwrap()).collect();
        for (s, &id) in stacks.iter().zip(&ids) {
            assert_eq!(recent.find(s), None);
            recent.put(s, id);
            assert_eq!(recent.find(s), Some(id));
        }
        // The oldest were put out; the last `RECENT_STACKS` answer.
        assert_eq!(recent.find(&stacks[0]), None);
        assert_eq!(
            recent.find(&stacks[RECENT_STACKS + 1]),
            ids[RECENT_STACKS + 1].into()
        );
        // A prefix, or the same frames and one more, is another stack.
        let last = &stacks[RECENT_STACKS + 1];
        assert_eq!(recent.find(&last[..2]), None);
        assert_eq!(recent.find(&[&last[..], &[1]].concat()), None);
    }

    #[test]
    fn captures_alternating_between_more_stacks_than_a_thread_remembers_keep_their_ids() {
        // Six call sites, each a function of its own (with code of its
        // own, so none is merged with another).
        macro_rules! sites {
            ($($name:ident = $k:literal),*) => {
                $(
                    #[inline(never)]
                    fn $name() -> Option<StackId> {
                        std::hint::black_box($k);
                        capture()
                    }
                )*
            };
        }
        sites!(s0 = 0, s1 = 1, s2 = 2, s3 = 3, s4 = 4, s5 = 5);
        let sites: [fn() -> Option<StackId>; 6] = [s0, s1, s2, s3, s4, s5];
        // From one call site here, in an order that cycles through more
        // stacks than the thread remembers, forwards and backwards.
        let order = (0..6).chain((0..20).flat_map(|_| (0..6).rev().chain(0..6)));
        let mut first: [Option<StackId>; 6] = [None; 6];
        for k in order {
            let id = sites[k]().unwrap();
            assert_eq!(*first[k].get_or_insert(id), id, "site {k}");
        }
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 6);
    }

    #[test]
    fn a_capture_while_the_recent_stacks_are_in_use_goes_to_the_depot_alone() {
        let cache = || {
            // SAFETY: this thread's cache, read while no capture runs.
            RECENT.with(|r| unsafe {
                let r = &*r.get();
                (r.lens, r.ids, r.next)
            })
        };
        let before = captured_here().unwrap();
        let kept = cache();
        // As a signal handler's capture would, inside another capture on
        // this thread: it leaves the cache alone (and busy, for the
        // capture it interrupted to clear).
        RECENT_BUSY.with(|b| b.set(true));
        let during = captured_here().unwrap();
        assert_eq!(cache(), kept);
        assert!(RECENT_BUSY.with(|b| b.get()));
        RECENT_BUSY.with(|b| b.set(false));
        // Its stack is stored all the same (another call site: another
        // stack).
        assert_ne!(during, before);
        assert!(frames(during).len() > 2);
    }

    #[test]
    fn stacks_one_frame_apart_anywhere_get_ids_of_their_own() {
        // Deep stacks of nearby return addresses that differ in one frame,
        // by a few bytes, at any depth, or only in their length, each keep
        // their own id and frames.
        let base: Vec<usize> = (0..MAX_FRAMES).map(|k| 0x55_5555_1000 + k * 0x40).collect();
        let mut stacks = vec![base.clone(), base[..MAX_FRAMES - 1].to_vec()];
        for depth in 0..MAX_FRAMES {
            for delta in 1..=64usize {
                let mut s = base.clone();
                s[depth] += delta;
                stacks.push(s);
            }
        }
        let ids: Vec<_> = stacks.iter().map(|s| intern(s).unwrap()).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), stacks.len());
        for (s, id) in stacks.iter().zip(ids) {
            assert_eq!(&frames(id), s);
        }
    }

    #[test]
    fn threads_storing_the_same_stacks_at_once_get_the_same_ids() {
        // Eight threads store the same 4,000 new stacks in different
        // orders while the indexes grow: each stack gets one id, whoever
        // stored it first, and keeps its frames.
        let base = 0x7000_0000usize;
        let per_thread: Vec<Vec<(usize, StackId)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8usize)
                .map(|t| {
                    s.spawn(move || {
                        (0..4000usize)
                            .map(|k| (k * 7 + t * 613) % 4000)
                            .map(|i| (i, intern(&[base + i, i, 5, 3]).unwrap()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut first = vec![None; 4000];
        for (i, id) in per_thread.into_iter().flatten() {
            assert_eq!(*first[i].get_or_insert(id), id, "stack {i}");
        }
        for (i, id) in first.into_iter().enumerate() {
            assert_eq!(frames(id.unwrap()), vec![base + i, i, 5, 3]);
        }
    }
}
