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
//! Invariants: a block is in at most one place (a batch, the orphans or one
//! ring), and only while its header is `FREED`; a ring's buffer comes from
//! `mmap` and is reached only through its shard's mutex.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
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
/// all of them (mode 1, without event backtraces).
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

/// Adds a freed block to this thread's pending batch.
#[inline]
pub(crate) fn batch(p: usize, site: Option<Site>) -> Batch {
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
pub(crate) fn my_shard() -> usize {
    let a = thread_address();
    (a >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - 4)
}

/// Where a quarantined block was freed: the call site and the backtrace, as
/// far as they were recorded.
pub(crate) fn free_record(p: usize) -> (Option<Site>, Option<StackId>) {
    if let Some(site) = pending_site(p) {
        return (site, None);
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
