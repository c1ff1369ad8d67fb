//! The process-wide counters behind [`stats`](crate::stats): live and freed
//! regions by kind, bytes, the quarantine's size, pins and retains.
//!
//! Ground floor: the registry and the pin front end count here, the report
//! floor adds the violation counts and builds the public
//! [`Stats`](crate::Stats). Counting is relaxed atomics only, never a lock.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Pins held right now (by `Pinner`s and `Pinned`s).
pub(crate) static PINS: AtomicU64 = AtomicU64::new(0);
/// Retains C holds right now.
pub(crate) static RETAINS: AtomicU64 = AtomicU64::new(0);

/// The region counters, striped: each thread counts in the stripe its
/// serial picks, so threads that allocate at once do not fight over one
/// cache line; [`totals`] adds the stripes up. A block freed on another
/// thread than the one that made it is counted down in another stripe, so a
/// stripe can go below zero; the sums are right.
#[repr(align(128))]
struct RegionCounters {
    live: [AtomicI64; 2],
    live_bytes: [AtomicI64; 2],
    freed: [AtomicI64; 2],
    quarantined: AtomicI64,
}

const STRIPES: usize = 16;

static COUNTERS: [RegionCounters; STRIPES] = [const {
    RegionCounters {
        live: [const { AtomicI64::new(0) }; 2],
        live_bytes: [const { AtomicI64::new(0) }; 2],
        freed: [const { AtomicI64::new(0) }; 2],
        quarantined: AtomicI64::new(0),
    }
}; STRIPES];

static NEXT_STRIPE: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's stripe, handed out round-robin.
    static STRIPE: u32 = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed);
}

fn stripe() -> &'static RegionCounters {
    let serial = STRIPE.try_with(|s| *s).unwrap_or(0);
    &COUNTERS[serial as usize % STRIPES]
}

/// Which half of each two-way counter: managed memory or C memory.
#[inline]
fn index(c_memory: bool) -> usize {
    usize::from(c_memory)
}

/// A region was registered (C memory when `c_memory`, managed otherwise).
pub(crate) fn region_created(c_memory: bool, size: usize) {
    let c = stripe();
    let k = index(c_memory);
    c.live[k].fetch_add(1, Ordering::Relaxed);
    c.live_bytes[k].fetch_add(size as i64, Ordering::Relaxed);
}

/// A live region was freed and its record went to the quarantine.
pub(crate) fn region_freed(c_memory: bool, size: usize) {
    let c = stripe();
    let k = index(c_memory);
    c.live[k].fetch_sub(1, Ordering::Relaxed);
    c.live_bytes[k].fetch_sub(size as i64, Ordering::Relaxed);
    c.freed[k].fetch_add(1, Ordering::Relaxed);
    c.quarantined.fetch_add(1, Ordering::Relaxed);
}

/// A record left the registry: live (unregistered without a free) or freed
/// (evicted from the quarantine).
pub(crate) fn region_gone(c_memory: bool, size: usize, was_live: bool) {
    let c = stripe();
    if was_live {
        let k = index(c_memory);
        c.live[k].fetch_sub(1, Ordering::Relaxed);
        c.live_bytes[k].fetch_sub(size as i64, Ordering::Relaxed);
    } else {
        c.quarantined.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sums of the counters, indexed `[managed, C]` where two-way.
pub(crate) struct Totals {
    pub live: [u64; 2],
    pub live_bytes: [u64; 2],
    pub freed: [u64; 2],
    pub quarantined: u64,
    pub pins: u64,
    pub retains: u64,
}

/// The sum over the stripes of one counter (never below zero).
fn total(get: impl Fn(&RegionCounters) -> &AtomicI64) -> u64 {
    let sum: i64 = COUNTERS
        .iter()
        .map(|c| get(c).load(Ordering::Relaxed))
        .sum();
    u64::try_from(sum).unwrap_or(0)
}

/// Every counter, summed now (each one relaxed: not one snapshot).
pub(crate) fn totals() -> Totals {
    Totals {
        live: [total(|c| &c.live[0]), total(|c| &c.live[1])],
        live_bytes: [total(|c| &c.live_bytes[0]), total(|c| &c.live_bytes[1])],
        freed: [total(|c| &c.freed[0]), total(|c| &c.freed[1])],
        quarantined: total(|c| &c.quarantined),
        pins: PINS.load(Ordering::Relaxed),
        retains: RETAINS.load(Ordering::Relaxed),
    }
}
