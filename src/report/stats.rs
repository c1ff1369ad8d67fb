//! The public counters: violations by kind, counted as they are emitted,
//! beside the region, pin and retain counters the floors below keep.

use std::sync::atomic::{AtomicU64, Ordering};

use super::ViolationKind;

// ---- counters -------------------------------------------------------------

pub(super) static VIOLATIONS: [AtomicU64; ViolationKind::ALL.len()] =
    [const { AtomicU64::new(0) }; ViolationKind::ALL.len()];

/// Counters of the whole process, from [`stats`].
///
/// ```
/// let s = ffi_check::stats();
/// let _ = s.live_c_regions + s.live_managed_regions;
/// let _ = s.violations(ffi_check::ViolationKind::Leak);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Live managed regions (`Managed`, `Pinned`).
    pub live_managed_regions: u64,
    /// Live C regions.
    pub live_c_regions: u64,
    /// Bytes in live managed regions.
    pub live_managed_bytes: u64,
    /// Bytes in live C regions.
    pub live_c_bytes: u64,
    /// Managed regions freed so far.
    pub freed_managed_regions: u64,
    /// C regions freed so far.
    pub freed_c_regions: u64,
    /// Freed regions still remembered in the quarantine.
    pub quarantined_regions: u64,
    /// Pins held right now (by `Pinner`s and `Pinned`s).
    pub pins: u64,
    /// Retains C holds right now.
    pub retains: u64,
    violations: [u64; ViolationKind::ALL.len()],
}

impl Stats {
    /// Violations of `kind` reported so far (captured ones included).
    pub fn violations(&self, kind: ViolationKind) -> u64 {
        self.violations[kind.index()]
    }
    /// All violations reported so far.
    pub fn total_violations(&self) -> u64 {
        self.violations.iter().sum()
    }
}

/// The process-wide counters.
///
/// ```
/// let before = ffi_check::stats().live_c_regions;
/// let b = ffi_check::CBox::new(1u8);
/// if ffi_check::COMPILED_IN {
///     assert!(ffi_check::stats().live_c_regions >= before + 1);
/// }
/// drop(b);
/// ```
pub fn stats() -> Stats {
    let r = crate::stats::totals();
    let mut violations = [0; ViolationKind::ALL.len()];
    for (slot, v) in violations.iter_mut().zip(VIOLATIONS.iter()) {
        *slot = v.load(Ordering::Relaxed);
    }
    Stats {
        live_managed_regions: r.live[0],
        live_c_regions: r.live[1],
        live_managed_bytes: r.live_bytes[0],
        live_c_bytes: r.live_bytes[1],
        freed_managed_regions: r.freed[0],
        freed_c_regions: r.freed[1],
        quarantined_regions: r.quarantined,
        pins: r.pins,
        retains: r.retains,
        violations,
    }
}
