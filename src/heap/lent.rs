//! Blocks lent to C as `*mut` pointers: candidates for an ownership
//! hand-over (`Box::into_raw`, `CString::into_raw`), listed by the leak
//! report while they live.
//!
//! A block is noted once (its header gains `LENT`); the list forgets blocks
//! freed since whenever it doubles past 1,024 entries, so it tracks live
//! hand-overs only. The list is allocated under the bookkeeping guard.

use std::sync::atomic::Ordering;

use super::{block_at, header, meta_state, state, words, STATE_SHIFT};
use crate::bookkeeping::bookkeeping;
use crate::site::Site;
use crate::spin::{SpinGuard, SpinMutex};

struct Lent {
    addr: usize,
    site: Option<Site>,
    /// The callee's path as `call!` wrote it (named when listed).
    callee_path: &'static str,
}

static LENT: SpinMutex<Vec<Lent>> = SpinMutex::new(Vec::new());

/// Notes that the live block at `addr` was passed to C as a `*mut` pointer
/// (what `Box::into_raw` and `CString::into_raw` produce). Once per block.
/// `callee_path` is the callee as `call!` wrote it (`ffi::png_write`): it is
/// shortened to the function's name only when the list is read.
pub(crate) fn note_lent_mut(addr: usize, callee_path: &'static str, site: Site) {
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
    let mut lent = LENT.lock();
    if lent.len() >= 1024 && lent.len().is_power_of_two() {
        // Forget blocks that were freed since (their header is gone or no
        // longer lent), so the list tracks live hand-overs only.
        lent.retain(|l| still_lent(l.addr));
    }
    lent.push(Lent {
        addr,
        site: Some(site),
        callee_path,
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
    let lent = LENT.lock();
    // A block lent, freed, handed out again and lent again is listed twice
    // (its header names its latest loan only): the latest entry is kept.
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<HandedToC> = lent
        .iter()
        .rev()
        .filter(|l| seen.insert(l.addr) && still_lent(l.addr))
        .filter_map(|l| {
            let b = block_at(l.addr)?;
            Some(HandedToC {
                addr: l.addr,
                size: b.size,
                callee: crate::frame::callee_name(l.callee_path),
                site: l.site,
            })
        })
        .collect();
    out.reverse();
    out
}

/// The lent list's lock, held across `fork` (see `crate::fork`).
pub(super) struct ForkLock {
    _lent: SpinGuard<'static, Vec<Lent>>,
}

pub(super) fn lock_for_fork() -> ForkLock {
    ForkLock { _lent: LENT.lock() }
}
