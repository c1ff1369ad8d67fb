//! The quarantine's storage: per-thread-shard rings of freed blocks waiting
//! before their memory goes back to the inner allocator, and the per-thread
//! batches that fill them.
//!
//! A freed block joins its thread's batch of up to [`BATCH`] blocks; a full
//! batch goes into the thread's shard under one lock. When a thread ends,
//! its batch is handed over (`ORPHANS`) to the next push. Pushing and
//! evicting belong to the allocator, which owns the inner allocator the
//! memory returns to; this file holds the data and answers where a
//! quarantined block was freed ([`free_record`]).
//!
//! A thread that has one of the [`LocalRing`]s (the first sixteen threads
//! to free, in any mode) puts a freed block into its own ring instead: no
//! lock, no batch, and the block that has waited its turn is the one the
//! thread's next allocation of the same layout gets back, while its memory
//! and header are still in the cache. A slot keeps the free's site and, with
//! event backtraces on, its stack id. The local ring holds as many blocks
//! and bytes as a shard does, so a thread's use-after-free window is the
//! same as with the shards; a thread without a local ring uses the shards.
//!
//! Invariants: a block is in at most one place (a batch, the orphans, one
//! ring or one local ring), and only while its header is `FREED`; a ring's
//! buffer comes from `mmap` and is reached only through its shard's mutex;
//! a local ring is changed only by the thread that owns it, and read by
//! others only through its slots' atomics.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::bookkeeping::{bookkeeping, map_anonymous, thread_address};
use crate::site::Site;
use crate::stackdepot::StackId;

pub(crate) const SHARDS: usize = 16;

pub(crate) struct Entry {
    pub p: usize,
    pub site: Option<Site>,
    pub trace: Option<StackId>,
}

pub(crate) struct Ring {
    buf: *mut Entry,
    pub cap: usize,
    head: usize,
    pub len: usize,
    pub bytes: usize,
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

    pub(crate) fn ensure(&mut self, cap: usize) -> bool {
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

    pub(crate) fn push(&mut self, e: Entry) {
        let i = (self.head + self.len) % self.cap;
        // SAFETY: i < cap and the slot is vacant (len < cap).
        unsafe { self.buf.add(i).write(e) };
        self.len += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<Entry> {
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

pub(crate) static QUARANTINE: [Mutex<Ring>; SHARDS] = [const { Mutex::new(Ring::EMPTY) }; SHARDS];

/// Freed blocks a thread collects before it takes its shard's lock once for
/// all of them (a thread without a local ring, event backtraces off).
pub(crate) const BATCH: usize = 32;

thread_local! {
    pub(crate) static PENDING_P: [Cell<usize>; BATCH] = const { [const { Cell::new(0) }; BATCH] };
    pub(crate) static PENDING_SITE: [Cell<Option<Site>>; BATCH] = const { [const { Cell::new(None) }; BATCH] };
    static PENDING_LEN: Cell<usize> = const { Cell::new(0) };
    /// 0: not asked yet; 1: batching, the flusher is registered; 2: no
    /// batching on this thread (registering, or the thread is ending).
    static BATCHING: Cell<u8> = const { Cell::new(0) };
    /// Its destructor hands the pending blocks of an ending thread over.
    static FLUSHER: Flusher = const { Flusher };
}

/// Blocks that ended threads left pending, adopted by the next push.
pub(crate) static ORPHANS: Mutex<Vec<(usize, Option<Site>)>> = Mutex::new(Vec::new());
pub(crate) static HAS_ORPHANS: AtomicBool = AtomicBool::new(false);

struct Flusher;

impl Drop for Flusher {
    fn drop(&mut self) {
        BATCHING.with(|b| b.set(2));
        // The blocks of this thread's local ring stay in it, quarantined,
        // for the next thread that takes the ring over.
        let ring = LOCAL.with(|l| l.replace(ptr::null()));
        if !ring.is_null() {
            // SAFETY: LOCAL only ever holds a `&'static LocalRing`.
            unsafe { &*ring }.owned.store(false, Ordering::Release);
        }
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
pub(crate) enum Batch {
    /// It waits in this thread's batch.
    Added,
    /// The batch is full: the caller pushes the whole batch
    /// (`PENDING_*[..BATCH]`, now emptied) and the block under one lock.
    Full,
    /// No batching on this thread now: the caller pushes the block alone.
    Unavailable,
}

/// True when this thread's flusher is registered, so that what the thread
/// keeps for itself (its batch, its local ring) is handed over when it
/// ends.
#[inline]
fn flusher_ready() -> bool {
    match BATCHING.with(Cell::get) {
        1 => true,
        0 => {
            // The first access registers the flusher's destructor (with the
            // C library, not through Rust's allocator); frees meanwhile go
            // straight to the shard.
            BATCHING.with(|b| b.set(2));
            if FLUSHER.try_with(|_| ()).is_err() {
                return false;
            }
            BATCHING.with(|b| b.set(1));
            true
        }
        _ => false,
    }
}

/// Adds a freed block to this thread's pending batch.
#[inline]
pub(crate) fn batch(p: usize, site: Option<Site>) -> Batch {
    if !flusher_ready() {
        return Batch::Unavailable;
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
pub(crate) fn my_shard() -> usize {
    let a = thread_address();
    (a >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - 4)
}

// ---------------------------------------------------------------------------
// The per-thread rings.

/// How far behind the oldest block an allocation may take a block of its
/// layout back: a block taken then has waited at least `cap - 8` frees
/// instead of `cap`, and an allocation whose layout is not the oldest
/// block's (frees come in the reverse order of allocations, so it seldom
/// is) still finds the block it can reuse.
const REUSE_WINDOW: usize = 8;

/// The slots a ring has beyond its bound: one for the block that is due,
/// and room for the vacant slots, which lie within the first
/// `REUSE_WINDOW + 1`.
const SPARE_SLOTS: usize = REUSE_WINDOW + 2;

/// How many threads can have a local ring at once; a thread beyond them
/// uses the shards. As many as there are shards, so that the local rings
/// together hold no more than the shards would.
const LOCAL_RINGS: usize = SHARDS;

/// One freed block in a local ring: its address (0 for a vacant slot), its
/// header's meta word when it was freed (so that an allocation looking for
/// a block of its layout reads the ring, not the blocks), the word of the
/// site that freed it (`Site::to_word`, or 0) and the stack of the free
/// (`StackId::word`, or 0).
struct Slot {
    p: AtomicUsize,
    meta: AtomicUsize,
    site: AtomicUsize,
    trace: AtomicU32,
}

/// A thread's own quarantine: a ring of up to `cap + 1` freed blocks, in
/// the order they were freed, and the vacant slots of blocks an allocation
/// took back from among the oldest few.
///
/// Invariants: only the thread that set `owned` (and holds the ring in its
/// `LOCAL`) changes `head`, `len`, `holes`, `bytes` and the slots; the other
/// threads only read the slots (to say where a block was freed). A slot's
/// `site` and `trace` are written before its `p` (release), so a reader that
/// sees `p`, then the site and trace, then the same `p` again read those of
/// that free. `len` counts the slots from `head` on, `holes` the vacant ones
/// among them (all within the first `REUSE_WINDOW + 1`, where they are
/// made). The blocks exceed `cap` only between a free and the next
/// allocation or free: the oldest block has then waited `cap` frees and is
/// *due*.
pub(crate) struct LocalRing {
    owned: AtomicBool,
    buf: AtomicPtr<Slot>,
    /// The number of slots in `buf`: the block bound, plus one, plus room
    /// for the vacant slots.
    slots: AtomicUsize,
    head: AtomicUsize,
    len: AtomicUsize,
    holes: AtomicUsize,
    bytes: AtomicUsize,
}

impl LocalRing {
    const fn empty() -> LocalRing {
        LocalRing {
            owned: AtomicBool::new(false),
            buf: AtomicPtr::new(ptr::null_mut()),
            slots: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            holes: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> &Slot {
        // SAFETY: `buf` holds `slots` slots (set before the ring is handed
        // to its owner), never unmapped, and callers pass i < slots.
        unsafe { &*self.buf.load(Ordering::Relaxed).add(i) }
    }

    /// How many blocks wait; more than `cap` when the oldest is due.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) - self.holes.load(Ordering::Relaxed)
    }

    /// Whether every slot is taken (blocks and vacant ones): the oldest must
    /// go before another push. Never at steady state (the slots outnumber
    /// what the bounds let wait); a guard for the push.
    #[inline(always)]
    pub(crate) fn is_full(&self) -> bool {
        self.len.load(Ordering::Relaxed) >= self.slots.load(Ordering::Relaxed)
    }

    /// The bytes the waiting blocks hold.
    #[inline(always)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The most blocks the ring waits for before the oldest is due.
    #[inline(always)]
    pub(crate) fn cap(&self) -> usize {
        self.slots.load(Ordering::Relaxed) - SPARE_SLOTS
    }

    /// Takes out a block that has waited at least `cap - REUSE_WINDOW`
    /// frees (one of the oldest few) for which `fits(p, meta)` holds (`meta`
    /// as it was pushed), and returns it; `size` is the bytes such a block
    /// holds. The oldest is taken as
    /// [`pop`](Self::pop) does; one behind it leaves a vacant slot, which
    /// the ring passes over when it reaches the front. Only the owner.
    #[inline(always)]
    pub(crate) fn take_due(
        &self,
        size: usize,
        fits: impl Fn(usize, usize) -> bool,
    ) -> Option<usize> {
        let len = self.len.load(Ordering::Relaxed);
        // The block at position k (0: the oldest) has been followed by
        // `len - 1 - k` frees (vacant slots were frees too).
        let need = self.cap().saturating_sub(REUSE_WINDOW);
        if len == 0 || len - 1 < need {
            return None;
        }
        let last = (len - 1 - need).min(REUSE_WINDOW);
        let (head, slots) = (
            self.head.load(Ordering::Relaxed),
            self.slots.load(Ordering::Relaxed),
        );
        for k in 0..=last {
            let mut i = head + k;
            if i >= slots {
                i -= slots;
            }
            let slot = self.slot(i);
            let p = slot.p.load(Ordering::Relaxed);
            if p == 0 || !fits(p, slot.meta.load(Ordering::Relaxed)) {
                continue;
            }
            if k == 0 {
                self.pop(size);
            } else {
                slot.p.store(0, Ordering::Relaxed);
                self.holes
                    .store(self.holes.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                self.bytes
                    .store(self.bytes().saturating_sub(size), Ordering::Relaxed);
            }
            return Some(p);
        }
        None
    }

    /// The oldest slot's block, if the ring is not empty: 0 for a vacant
    /// slot (a block taken out from behind the oldest), which the caller
    /// pops with a size of 0.
    #[inline(always)]
    pub(crate) fn oldest(&self) -> Option<usize> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(
            self.slot(self.head.load(Ordering::Relaxed))
                .p
                .load(Ordering::Relaxed),
        )
    }

    /// Adds a freed block of `size` bytes whose header holds `meta`. The
    /// owner first makes room: at most `cap` blocks wait before the push.
    #[inline(always)]
    pub(crate) fn push(
        &self,
        p: usize,
        meta: usize,
        site: Option<Site>,
        trace: Option<StackId>,
        size: usize,
    ) {
        let (slots, len) = (
            self.slots.load(Ordering::Relaxed),
            self.len.load(Ordering::Relaxed),
        );
        debug_assert!(len < slots);
        let mut i = self.head.load(Ordering::Relaxed) + len;
        if i >= slots {
            i -= slots;
        }
        let slot = self.slot(i);
        slot.site
            .store(site.map_or(0, Site::to_word), Ordering::Relaxed);
        slot.trace.store(StackId::word(trace), Ordering::Relaxed);
        slot.meta.store(meta, Ordering::Relaxed);
        slot.p.store(p, Ordering::Release);
        self.len.store(len + 1, Ordering::Relaxed);
        self.bytes.store(self.bytes() + size, Ordering::Relaxed);
    }

    /// Takes the oldest block (of `size` bytes; 0 for a vacant slot) out:
    /// it is no longer quarantined here.
    #[inline(always)]
    pub(crate) fn pop(&self, size: usize) {
        let head = self.head.load(Ordering::Relaxed);
        let slot = self.slot(head);
        if slot.p.load(Ordering::Relaxed) == 0 {
            self.holes
                .store(self.holes.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        }
        slot.p.store(0, Ordering::Relaxed);
        let next = head + 1;
        let slots = self.slots.load(Ordering::Relaxed);
        self.head
            .store(if next == slots { 0 } else { next }, Ordering::Relaxed);
        self.len
            .store(self.len.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        self.bytes
            .store(self.bytes().saturating_sub(size), Ordering::Relaxed);
    }

    /// Where the block at `p` was freed (the site and the stack), if it
    /// waits here. Any thread.
    fn find(&self, p: usize) -> Option<(Option<Site>, Option<StackId>)> {
        let buf = self.buf.load(Ordering::Acquire);
        if buf.is_null() {
            return None;
        }
        let slots = self.slots.load(Ordering::Acquire);
        (0..slots).find_map(|i| {
            let slot = self.slot(i);
            if slot.p.load(Ordering::Acquire) != p {
                return None;
            }
            let word = slot.site.load(Ordering::Acquire);
            let trace = slot.trace.load(Ordering::Acquire);
            if slot.p.load(Ordering::Acquire) != p {
                return None;
            }
            // SAFETY: a slot's site is 0 or a word `Site::to_word` made.
            let site = unsafe { Site::from_word(word) };
            Some((site, StackId::from_word(trace)))
        })
    }
}

static LOCAL_RING: [LocalRing; LOCAL_RINGS] = [const { LocalRing::empty() }; LOCAL_RINGS];

thread_local! {
    /// This thread's local ring, or null (none taken yet, or none free).
    static LOCAL: Cell<*const LocalRing> = const { Cell::new(ptr::null()) };
    /// Frees until this thread asks again for a local ring when none was
    /// free.
    static LOCAL_RETRY: Cell<u32> = const { Cell::new(0) };
}

/// This thread's local ring if it has one; no other work. For the
/// allocation path, which only takes a due block out of it.
#[inline(always)]
pub(crate) fn local_ring_if_any() -> Option<&'static LocalRing> {
    let r = LOCAL.try_with(Cell::get).ok()?;
    // SAFETY: LOCAL only ever holds null or a `&'static LocalRing`.
    unsafe { r.as_ref() }
}

/// This thread's local ring, taking a free one (sized for `cap` blocks) on
/// first use. `None` when the thread cannot have one: its locals are going
/// away, or every ring is taken (it then asks again now and then).
#[inline]
pub(crate) fn local_ring(cap: usize) -> Option<&'static LocalRing> {
    match local_ring_if_any() {
        Some(r) => Some(r),
        None => take_local_ring(cap),
    }
}

#[cold]
#[inline(never)]
fn take_local_ring(cap: usize) -> Option<&'static LocalRing> {
    let wait = LOCAL_RETRY.try_with(Cell::get).ok()?;
    if wait > 0 {
        LOCAL_RETRY.with(|w| w.set(wait - 1));
        return None;
    }
    if cap == 0 || !flusher_ready() {
        return None;
    }
    for ring in &LOCAL_RING {
        if ring
            .owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        if ring.buf.load(Ordering::Relaxed).is_null() {
            let Some(buf) = map_anonymous((cap + SPARE_SLOTS) * std::mem::size_of::<Slot>()) else {
                ring.owned.store(false, Ordering::Release);
                return None;
            };
            // Zeroed pages are vacant slots.
            ring.slots.store(cap + SPARE_SLOTS, Ordering::Relaxed);
            ring.buf.store(buf.cast(), Ordering::Release);
        }
        LOCAL.with(|l| l.set(ring));
        return Some(ring);
    }
    LOCAL_RETRY.with(|w| w.set(4096));
    None
}

/// Where a quarantined block was freed: the call site and the backtrace, as
/// far as they were recorded.
pub(crate) fn free_record(p: usize) -> (Option<Site>, Option<StackId>) {
    if let Some(site) = pending_site(p) {
        return (site, None);
    }
    if let Some(found) = local_ring_if_any().and_then(|r| r.find(p)) {
        return found;
    }
    if let Some(found) = LOCAL_RING.iter().find_map(|r| r.find(p)) {
        return found;
    }
    let _g = bookkeeping();
    for shard in &QUARANTINE {
        let ring = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = ring.find(p) {
            return (e.site, e.trace);
        }
    }
    (None, None)
}

/// The orphans' lock and every ring's (in index order), held across `fork`
/// (see `crate::fork`). The orphans come first: a push takes (and lets go
/// of) them before its ring. Nothing else holds two rings at once.
///
/// In the child, the batches of the threads that did not survive the fork
/// are simply gone: their blocks stay `FREED` and are never given back (a
/// leak in the child, never a double free), and nothing waits for them.
pub(super) struct ForkLocks {
    _orphans: MutexGuard<'static, Vec<(usize, Option<Site>)>>,
    _rings: [MutexGuard<'static, Ring>; SHARDS],
}

pub(super) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _orphans: ORPHANS.lock().unwrap_or_else(|e| e.into_inner()),
        // `from_fn` calls the closure in increasing index order.
        _rings: std::array::from_fn(|i| QUARANTINE[i].lock().unwrap_or_else(|e| e.into_inner())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A local ring of `cap` blocks with its own slots, owned by the test.
    fn ring(cap: usize) -> LocalRing {
        let r = LocalRing::empty();
        let buf = map_anonymous((cap + SPARE_SLOTS) * std::mem::size_of::<Slot>())
            .expect("the slots are mapped");
        r.slots.store(cap + SPARE_SLOTS, Ordering::Relaxed);
        r.buf.store(buf.cast(), Ordering::Release);
        r
    }

    /// Random frees and allocations against a model of the ring (a queue
    /// of the slots from the oldest on, `None` for a vacant one), with the
    /// owner's eviction rule: every block leaves exactly once, taken back
    /// only among the oldest `REUSE_WINDOW + 1` and only when it has waited
    /// `cap - REUSE_WINDOW` frees; the counts and bytes agree with the
    /// model, and the slots never run out.
    #[test]
    fn take_due_and_eviction_match_a_model() {
        const CAP: usize = 64;
        let r = ring(CAP);
        let mut model: VecDeque<Option<(usize, usize)>> = VecDeque::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        let mut next_p = 0x1000usize;
        let (mut gone, mut taken) = (0usize, 0usize);
        for step in 0..200_000 {
            // Three sizes, so that the oldest block often does not fit.
            let size = [16, 48, 200][rand(3)];
            if rand(2) == 0 {
                // A free: make room as `push_local` does, then push.
                while r.len() > r.cap() || r.is_full() {
                    let old = r.oldest().expect("a full ring has an oldest slot");
                    let front = model.pop_front().expect("the model agrees");
                    match front {
                        None => {
                            assert_eq!(old, 0, "step {step}: a vacant slot");
                            r.pop(0);
                        }
                        Some((p, s)) => {
                            assert_eq!(old, p, "step {step}: the oldest block");
                            r.pop(s);
                            gone += 1;
                        }
                    }
                }
                next_p += 0x100;
                r.push(next_p, size, None, None, size);
                model.push_back(Some((next_p, size)));
            } else {
                // An allocation of `size`: the model's answer first.
                let len = model.len();
                let need = CAP - REUSE_WINDOW;
                let expect = if len == 0 || len - 1 < need {
                    None
                } else {
                    (0..=(len - 1 - need).min(REUSE_WINDOW))
                        .find(|&k| matches!(model[k], Some((_, s)) if s == size))
                };
                let got = r.take_due(size, |_, m| m == size);
                match expect {
                    None => assert_eq!(got, None, "step {step}"),
                    Some(k) => {
                        let (p, _) = model[k].expect("found above");
                        assert_eq!(got, Some(p), "step {step}");
                        if k == 0 {
                            model.pop_front();
                        } else {
                            model[k] = None;
                        }
                        taken += 1;
                        assert!(
                            r.find(p).is_none(),
                            "step {step}: a taken block is not found"
                        );
                    }
                }
            }
            let blocks = model.iter().flatten().count();
            let holes = model.len() - blocks;
            assert_eq!(r.len(), blocks, "step {step}");
            assert_eq!(r.holes.load(Ordering::Relaxed), holes, "step {step}");
            assert!(
                holes <= REUSE_WINDOW + 1,
                "step {step}: {holes} vacant slots"
            );
            let bytes: usize = model.iter().flatten().map(|&(_, s)| s).sum();
            assert_eq!(r.bytes(), bytes, "step {step}");
            if let Some(&Some((p, _))) = model.back() {
                assert!(r.find(p).is_some(), "step {step}: a waiting block is found");
            }
        }
        let waiting = model.iter().flatten().count();
        assert_eq!(gone + taken + waiting, (next_p - 0x1000) / 0x100);
        assert!(taken > 10_000, "allocations took blocks back: {taken}");
    }
}
