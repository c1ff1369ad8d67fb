//! The process-wide counters behind [`stats`](crate::stats): live and freed
//! regions by kind, bytes, the quarantine's size, pins and retains.
//!
//! Ground floor: the registry and the pin front end count here, the report
//! floor adds the violation counts and builds the public
//! [`Stats`](crate::Stats). Counting is relaxed atomics only, never a lock, and
//! a thread that owns its stripe counts without a locked instruction.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Pins held right now (by `Pinner`s and `Pinned`s).
pub(crate) static PINS: AtomicU64 = AtomicU64::new(0);
/// Retains C holds right now.
pub(crate) static RETAINS: AtomicU64 = AtomicU64::new(0);

/// The region counters, striped: each of the first [`OWNED`] threads alive
/// at once owns a stripe and counts in it alone, with plain loads and
/// stores (no locked instruction on the path that registers and frees a
/// region); any other thread counts with atomic additions in one of the
/// [`SHARED`] stripes, handed out round-robin. [`totals`] adds the stripes up. A
/// block freed on another thread than the one that made it is counted down
/// in another stripe, so a stripe can go below zero; the sums are right.
#[repr(align(128))]
struct RegionCounters {
    live: [AtomicI64; 2],
    live_bytes: [AtomicI64; 2],
    freed: [AtomicI64; 2],
    quarantined: AtomicI64,
}

/// Stripes a thread owns alone while it lives (one bit each in
/// [`FREE_OWNED`]).
const OWNED: usize = 64;
/// Stripes the threads beyond the first [`OWNED`] share.
const SHARED: usize = 16;

static COUNTERS: [RegionCounters; OWNED + SHARED] = [const {
    RegionCounters {
        live: [const { AtomicI64::new(0) }; 2],
        live_bytes: [const { AtomicI64::new(0) }; 2],
        freed: [const { AtomicI64::new(0) }; 2],
        quarantined: AtomicI64::new(0),
    }
}; OWNED + SHARED];

/// The owned stripes no living thread holds (bit `i`: stripe `i`). A thread
/// that ends gives its stripe back with what it counted in it: the next
/// owner adds to those counts, so the sums stay right.
static FREE_OWNED: AtomicU64 = AtomicU64::new(u64::MAX);

static NEXT_SHARED: AtomicU32 = AtomicU32::new(0);

/// A thread's stripe: one of the first [`OWNED`], which the thread owns
/// alone, or a shared one.
struct Stripe {
    index: u32,
}

impl Stripe {
    fn owned(&self) -> bool {
        (self.index as usize) < OWNED
    }
}

impl Stripe {
    fn claim() -> Stripe {
        let mut free = FREE_OWNED.load(Ordering::Acquire);
        while free != 0 {
            let bit = free.trailing_zeros();
            // Acquire: what the stripe's last owner counted (before it gave
            // the stripe back with Release) is seen by the plain loads here.
            match FREE_OWNED.compare_exchange_weak(
                free,
                free & !(1 << bit),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Stripe { index: bit },
                Err(now) => free = now,
            }
        }
        let n = NEXT_SHARED.fetch_add(1, Ordering::Relaxed) as usize % SHARED;
        Stripe {
            index: (OWNED + n) as u32,
        }
    }
}

impl Drop for Stripe {
    fn drop(&mut self) {
        if self.owned() {
            // Release: this thread's counts go with the stripe to its next
            // owner.
            FREE_OWNED.fetch_or(1 << self.index, Ordering::Release);
        }
    }
}

thread_local! {
    static STRIPE: Stripe = Stripe::claim();
}

/// Runs `f` on the calling thread's stripe, with the way to count in it.
#[inline]
fn count(f: impl Fn(&RegionCounters, Add)) {
    let done = STRIPE.try_with(|s| f(&COUNTERS[s.index as usize], Add(s.owned())));
    if done.is_err() {
        // A thread whose locals are gone counts in the first shared stripe.
        f(&COUNTERS[OWNED], Add(false));
    }
}

/// How a thread counts in its stripe: alone (a load and a store) or shared
/// (an atomic addition).
#[derive(Clone, Copy)]
struct Add(bool);

impl Add {
    #[inline]
    fn to(self, c: &AtomicI64, delta: i64) {
        if self.0 {
            // Only this thread writes this stripe.
            c.store(
                c.load(Ordering::Relaxed).wrapping_add(delta),
                Ordering::Relaxed,
            );
        } else {
            c.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

/// Which half of each two-way counter: managed memory or C memory.
#[inline]
fn index(c_memory: bool) -> usize {
    usize::from(c_memory)
}

/// A region was registered (C memory when `c_memory`, managed otherwise).
pub(crate) fn region_created(c_memory: bool, size: usize) {
    let k = index(c_memory);
    count(|c, add| {
        add.to(&c.live[k], 1);
        add.to(&c.live_bytes[k], size as i64);
    });
}

/// A live region was freed and its record went to the quarantine.
pub(crate) fn region_freed(c_memory: bool, size: usize) {
    let k = index(c_memory);
    count(|c, add| {
        add.to(&c.live[k], -1);
        add.to(&c.live_bytes[k], -(size as i64));
        add.to(&c.freed[k], 1);
        add.to(&c.quarantined, 1);
    });
}

/// A record left the registry: live (unregistered without a free) or freed
/// (evicted from the quarantine).
pub(crate) fn region_gone(c_memory: bool, size: usize, was_live: bool) {
    count(|c, add| {
        if was_live {
            let k = index(c_memory);
            add.to(&c.live[k], -1);
            add.to(&c.live_bytes[k], -(size as i64));
        } else {
            add.to(&c.quarantined, -1);
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// The stripe the calling thread counts in.
    fn mine() -> (u32, bool) {
        STRIPE.with(|s| (s.index, s.owned()))
    }

    /// More threads alive at once than there are owned stripes: no two
    /// living threads own the same stripe, the rest share, and the owned
    /// stripes of threads that ended are owned again by later ones.
    #[test]
    fn living_threads_never_own_the_same_stripe() {
        let n = OWNED + 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let s = mine();
                    // Everyone holds their stripe until all have one.
                    barrier.wait();
                    s
                })
            })
            .collect();
        let stripes: Vec<(u32, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut owned: Vec<u32> = stripes.iter().filter(|s| s.1).map(|s| s.0).collect();
        let shared = stripes.iter().filter(|s| !s.1).count();
        owned.sort_unstable();
        let distinct = {
            let mut d = owned.clone();
            d.dedup();
            d.len()
        };
        assert_eq!(
            distinct,
            owned.len(),
            "an owned stripe held twice: {owned:?}"
        );
        assert!(owned.iter().all(|&i| (i as usize) < OWNED));
        assert!(stripes
            .iter()
            .filter(|s| !s.1)
            .all(|s| (OWNED..OWNED + SHARED).contains(&(s.0 as usize))));
        // Other tests' threads may hold some owned stripes meanwhile, so at
        // least eight of these threads shared.
        assert!(shared >= 8, "{shared} shared");
        // Those threads are gone: a new one owns a stripe again.
        let later = std::thread::spawn(mine).join().unwrap();
        assert!(later.1, "no owned stripe came back: {later:?}");
    }
}
