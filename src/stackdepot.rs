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
//! ([`MAX_FRAMES`] return addresses, no allocation), hashes the
//! addresses and looks them up in one of [`SHARDS`] tables; only a stack
//! never seen before is copied in. Nothing is ever removed: an id stays
//! valid for the life of the process.
//!
//! Invariants: an id `(shard << SHARD_SHIFT) | (n + 1)` names entry `n` of
//! that shard, whose frames are `frames[start..start + len]`; the hash index
//! holds each entry's index once, under its hash; everything is reached
//! through its shard's mutex, and allocated as bookkeeping.
//!
//! A ground-floor module: it uses only [`bookkeeping`](crate::bookkeeping)
//! and [`unwind`](crate::unwind).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::bookkeeping::bookkeeping;

/// The most return addresses a stack keeps (the innermost ones).
pub(crate) const MAX_FRAMES: usize = 32;

const SHARDS: usize = 16;
const SHARD_SHIFT: u32 = 28;

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

struct Entry {
    hash: u64,
    start: u32,
    len: u32,
}

struct Shard {
    /// Open addressing over the entries: 0 is empty, else index + 1.
    index: Vec<u32>,
    entries: Vec<Entry>,
    frames: Vec<usize>,
}

impl Shard {
    fn find_or_add(&mut self, hash: u64, ips: &[usize]) -> Option<u32> {
        if self.entries.len() * 2 >= self.index.len() {
            self.grow();
        }
        let mask = self.index.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            match self.index[slot] {
                0 => break,
                n => {
                    let e = &self.entries[n as usize - 1];
                    if e.hash == hash
                        && self.frames[e.start as usize..(e.start + e.len) as usize] == *ips
                    {
                        return Some(n);
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
        let n = u32::try_from(self.entries.len() + 1).ok()?;
        let start = u32::try_from(self.frames.len()).ok()?;
        if n >= 1 << SHARD_SHIFT {
            return None;
        }
        self.frames.extend_from_slice(ips);
        self.entries.push(Entry {
            hash,
            start,
            len: ips.len() as u32,
        });
        self.index[slot] = n;
        Some(n)
    }

    fn grow(&mut self) {
        let cap = (self.index.len() * 2).max(1024);
        let mut index = vec![0u32; cap];
        for (i, e) in self.entries.iter().enumerate() {
            let mut slot = e.hash as usize & (cap - 1);
            while index[slot] != 0 {
                slot = (slot + 1) & (cap - 1);
            }
            index[slot] = i as u32 + 1;
        }
        self.index = index;
    }

    fn bytes(&self) -> usize {
        self.index.capacity() * 4
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.frames.capacity() * std::mem::size_of::<usize>()
    }
}

static DEPOT: [Mutex<Shard>; SHARDS] = [const {
    Mutex::new(Shard {
        index: Vec::new(),
        entries: Vec::new(),
        frames: Vec::new(),
    })
}; SHARDS];

fn shard(i: usize) -> MutexGuard<'static, Shard> {
    // Every change is completed before anything that could panic.
    DEPOT[i].lock().unwrap_or_else(|e| e.into_inner())
}

/// The hash of a stack: two lanes over alternate frames (so the
/// multiplications of neighbouring frames overlap), then mixed.
fn hash(ips: &[usize]) -> u64 {
    const K: u64 = 0x0100_0000_01b3;
    let (mut a, mut b) = (0xcbf2_9ce4_8422_2325u64, 0x9e37_79b9_7f4a_7c15u64);
    let mut pairs = ips.chunks_exact(2);
    for pair in &mut pairs {
        a = (a ^ pair[0] as u64).wrapping_mul(K);
        b = (b ^ pair[1] as u64).wrapping_mul(K);
    }
    if let [last] = pairs.remainder() {
        a = (a ^ *last as u64).wrapping_mul(K);
    }
    let mut h = a ^ b.rotate_left(32) ^ ips.len() as u64;
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
    intern(&ips[..n])
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
    let _g = bookkeeping();
    let n = shard(s).find_or_add(h, ips)?;
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
        Some(e) => shard.frames[e.start as usize..(e.start + e.len) as usize].to_vec(),
        None => Vec::new(),
    }
}

/// What the depot holds, in bytes (its tables' capacity).
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
        let ids: Vec<_> = (0..5000usize)
            .map(|i| (i, intern(&[i, i + 7, 99]).unwrap()))
            .collect();
        for (i, id) in ids {
            assert_eq!(frames(id), vec![i, i + 7, 99]);
        }
    }
}
