//! Region ids and thread serials.
//!
//! A record's tag packs the region's id (upper 40 bits) and the serial of the
//! thread that created it (lower [`THREAD_BITS`]). Ids are handed to threads
//! in blocks, from one shared sequence.
//!
//! Invariants: ids are unique (for the first 2^40 regions), and grow along
//! each thread, so a leak scope started at id `n` owns the regions with ids
//! `>= n`; a thread's serial never changes.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub(super) const THREAD_BITS: u32 = 24;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);

/// Ids are handed to threads in blocks, so making a region does not touch a
/// shared counter. Ids are unique, and grow along each thread: a leak scope
/// (which is per thread) can tell its regions by id.
const ID_BLOCK: u64 = 1024;

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
