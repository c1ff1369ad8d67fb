//! `fork()` while other threads use the checker.
//!
//! The child of a `fork` has one thread, the one that forked; a lock another
//! thread held at that moment stays held in the child for good, and the
//! child's next use of it hangs. So `fork`'s *prepare* handler takes every
//! lock of the checker, the *parent* handler releases them, and the *child*
//! handler releases them too (nothing else is left to hold them there). With
//! every registry shard's mutex held, no shard's sequence number is odd.
//!
//! # The lock order
//!
//! The one order of all the crate's global locks, outermost first: every
//! path that holds two of them at once takes them in this order, and the
//! prepare handler takes them all in it.
//!
//! 1. `roots`: the scans' lock (`SEEN`), then the roots (`ROOTS`), then the
//!    statics found holding a pointer (`HELD_WORDS`): a mode-2 scan holds
//!    the first while it reads the others, the guarded blocks and registry
//!    shards, and allocates and frees;
//! 2. `guard`: the guarded blocks (`BLOCKS`);
//! 3. `pin`: the pinner table (`PINNERS`);
//! 4. `family`: the allocator families (`FAMILIES`, for writing);
//! 5. `site`: the interned C sites (`C_SITES`);
//! 6. `heap`: the lent list (`LENT`, a leaf: its holder does bookkeeping),
//!    the quarantine's orphans (`ORPHANS`), then its 16 rings in index
//!    order. A free made under any of the locks above goes into the
//!    quarantine; a push takes the orphans and lets go of them before it
//!    takes its ring. With the `interpose` feature, then the 16 rings of
//!    the C blocks' quarantine (`RINGS`, leaves: their holder only gives
//!    blocks back to glibc);
//! 7. `registry`: the 64 shards in index order (a quarantine ring evicting a
//!    block forgets it under its shard), then the directory, the huge list
//!    and the site table (taken inside a shard's write), then the list of
//!    live C regions (taken inside a shard's lock when it is filled);
//! 8. `bookkeeping`: the backtrace lock, a leaf (in mode 2 a free made
//!    under the locks of 1 to 5 takes a backtrace; nothing of the checker is
//!    locked under it). Every backtrace the checker takes or resolves goes
//!    through it, so with it held no thread of the checker is inside the
//!    `backtrace` crate's own lock either;
//! 9. `stackdepot`: the depot's 16 shards in index order, leaves (a capture
//!    is stored under one, with nothing taken inside).
//!
//! No two rings and no two shards are ever held at once except here, so
//! taking them in index order cannot meet a thread that holds them the
//! other way round.
//!
//! Locks that are not the checker's stay as they are: the standard
//! library's (its stderr lock, which the checker's reports do not take; the
//! environment's), and the `backtrace` crate's when the program itself
//! takes backtraces with it. The C library looks after its own (`malloc`,
//! stdio).
//!
//! # What the child lacks
//!
//! Per-thread state of the threads that did not survive the fork is simply
//! gone: their batches of freed blocks are never given back (a leak in the
//! child, never a double free: no one else has them), their thread ids and
//! recent answers are never asked for, and the counter stripes they owned stay
//! owned (what they counted still counts; the child's own threads share
//! stripes sooner). The count of checked calls in
//! progress that make mode-2 scans wait is set back to the forking thread's
//! own (`roots::after_fork_in_child`).
//!
//! The handlers are registered before `main`, from the constructor below,
//! so they are in place before any thread of the program can fork. They
//! never panic (a poisoned lock is taken as it is) and never allocate.

use std::cell::UnsafeCell;

/// Every lock of the crate, in the order above (the order of the fields,
/// and of their initialisers in [`prepare`]).
struct Held {
    roots: crate::roots::ForkLocks,
    guard: crate::guard::ForkLock,
    pin: crate::pin::ForkLock,
    family: crate::family::ForkLock,
    site: crate::site::ForkLock,
    heap: crate::heap::ForkLocks,
    registry: crate::registry::ForkLocks,
    bookkeeping: crate::bookkeeping::ForkLocks,
    stackdepot: crate::stackdepot::ForkLocks,
}

impl Held {
    /// Releases everything, the innermost first (releasing never waits, so
    /// the order is a matter of tidiness).
    fn release(self) {
        let Held {
            roots,
            guard,
            pin,
            family,
            site,
            heap,
            registry,
            bookkeeping,
            stackdepot,
        } = self;
        drop(stackdepot);
        drop(bookkeeping);
        drop(registry);
        drop(heap);
        drop(site);
        drop(family);
        drop(pin);
        drop(guard);
        drop(roots);
    }
}

/// Where the guards wait between the prepare handler and the parent's or
/// the child's.
struct Slot(UnsafeCell<Option<Held>>);

// SAFETY: the slot is only touched by the fork handlers, which run on the
// forking thread, and only while that thread holds every lock of `Held`:
// `prepare` stores the guards after it has taken all of them, `parent` and
// `child` take them out before they release any. A second thread that forks
// at the same time blocks in its `prepare` on the first lock until they are
// released, so two threads never reach the slot at once, and the mutex
// hand-over orders one's accesses before the other's. The guards inside
// (not `Send`) are released on the thread that took them: in the child,
// the copy of the forking thread.
unsafe impl Sync for Slot {}

static HELD: Slot = Slot(UnsafeCell::new(None));

/// Before the fork: takes every lock, in the order above.
extern "C" fn prepare() {
    // Whatever the forking thread frees meanwhile is bookkeeping: the
    // tracking allocator takes none of the locks held here.
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    let held = Held {
        roots: crate::roots::lock_for_fork(),
        guard: crate::guard::lock_for_fork(),
        pin: crate::pin::lock_for_fork(),
        family: crate::family::lock_for_fork(),
        site: crate::site::lock_for_fork(),
        heap: crate::heap::lock_for_fork(),
        registry: crate::registry::lock_for_fork(),
        bookkeeping: crate::bookkeeping::lock_for_fork(),
        stackdepot: crate::stackdepot::lock_for_fork(),
    };
    // SAFETY: this thread holds every lock of `held` (see `Slot`); the slot
    // is empty (the last fork's handlers emptied it), so nothing is dropped.
    unsafe { *HELD.0.get() = Some(held) };
}

/// The guards `prepare` left.
fn take() -> Option<Held> {
    // SAFETY: this thread still holds every lock the guards stand for (see
    // `Slot`).
    unsafe { (*HELD.0.get()).take() }
}

/// In the parent, after the fork: releases everything.
extern "C" fn parent() {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    if let Some(held) = take() {
        held.release();
    }
}

/// In the child, after the fork: only this thread exists, so nothing else
/// holds the locks; forgets the other threads' calls and releases them.
extern "C" fn child() {
    let _bookkeeping = crate::bookkeeping::bookkeeping();
    crate::roots::after_fork_in_child();
    if let Some(held) = take() {
        held.release();
    }
    // Takes the write watch's lock, so only once every lock is released.
    crate::writewatch::after_fork_in_child();
}

/// Registers the handlers before `main`, so they are in place before any
/// thread of the program can fork (compiled out, there is nothing to lock).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static REGISTER_FORK_HANDLERS: extern "C" fn() = {
    extern "C" fn register() {
        if crate::mode::COMPILED_IN {
            // SAFETY: three plain `extern "C"` functions that never unwind,
            // registered once (a constructor runs once).
            unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        }
    }
    register
};
