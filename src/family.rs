//! Allocator families: which allocator a piece of memory came from, as a
//! small number a region record carries in one byte.
//!
//! 0 is libc's `malloc`/`free`, 1 is Rust's allocator (managed memory), and
//! 2.. are named deallocators (a library's own `free`, a destroy function),
//! numbered on first use by the address of their function. A number never
//! changes meaning once handed out; past 254 distinct deallocators the rest
//! share the last number rather than fail.
//!
//! Ground floor of the memory model: the registry stores the numbers, the
//! report names them, the C front end ([`Deallocator`](crate::Deallocator))
//! hands them out.

use std::sync::{RwLock, RwLockWriteGuard};

/// libc's `malloc` family.
pub(crate) const FAMILY_MALLOC: u8 = 0;
/// Rust's allocator: managed memory.
pub(crate) const FAMILY_RUST: u8 = 1;

static FAMILIES: RwLock<Vec<(&'static str, usize)>> = RwLock::new(Vec::new());

/// The family of the deallocator called `name` whose function is at `addr`
/// (not libc's `free`, which is [`FAMILY_MALLOC`]): the number it was given
/// on first use, or a fresh one.
pub(crate) fn family_of_deallocator(name: &'static str, addr: usize) -> u8 {
    {
        let fams = FAMILIES.read().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = fams.iter().position(|(_, a)| *a == addr) {
            return (i + 2) as u8;
        }
    }
    let mut fams = FAMILIES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = fams.iter().position(|(_, a)| *a == addr) {
        return (i + 2) as u8;
    }
    if fams.len() >= 253 {
        // More distinct deallocators than any program has; fold the rest
        // into the last slot rather than fail.
        return 254;
    }
    fams.push((name, addr));
    (fams.len() + 1) as u8
}

/// The name of an allocator family, for reports.
pub(crate) fn family_name(family: u8) -> &'static str {
    match family {
        FAMILY_MALLOC => "malloc",
        FAMILY_RUST => "Rust's allocator",
        n => FAMILIES
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(usize::from(n) - 2)
            .map_or("a C allocator", |(name, _)| *name),
    }
}

/// The family table's lock, held (for writing, so no reader is inside
/// either) across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _families: RwLockWriteGuard<'static, Vec<(&'static str, usize)>>,
}

/// Takes the family table's lock for `fork`'s prepare handler; dropping the
/// value releases it.
pub(crate) fn lock_for_fork() -> ForkLock {
    ForkLock {
        _families: FAMILIES.write().unwrap_or_else(|e| e.into_inner()),
    }
}
