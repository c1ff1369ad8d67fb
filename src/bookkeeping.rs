//! The checker's own bookkeeping: the per-thread guard under which ffi-check
//! allocates for itself, the flag that says the tracking allocator is
//! reporting, memory straight from the kernel, and the one lock every
//! backtrace is taken and resolved under.
//!
//! Everything the checker allocates (registry records, report text, leak
//! lists) is made inside a [`Bookkeeping`] section, so the tracking allocator
//! marks it internal and never checks or tracks it: the checker's own
//! allocations cannot recurse into its checks. The guard is a thread-local
//! `Cell` with a constant initialiser and no destructor, usable on any
//! thread at any time (before `main`, in a thread's last destructor).
//!
//! This is the crate's ground floor: it uses no other module.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use backtrace::Backtrace;

thread_local! {
    /// Set while ffi-check itself allocates (its bookkeeping, its reports):
    /// such blocks are internal and nothing about them is checked. Constant
    /// initialiser and no destructor: usable on any thread, at any time.
    static GUARD: Cell<bool> = const { Cell::new(false) };
    /// Set while the allocator reports: a panic may not unwind out of it.
    static IN_ALLOCATOR: Cell<bool> = const { Cell::new(false) };
    /// Set while the tracking allocator asks its inner allocator for memory:
    /// with the C allocator interposed (feature `interpose`), what `malloc`
    /// hands out meanwhile is Rust's heap, not C memory.
    static RUST_INNER: Cell<bool> = const { Cell::new(false) };
    /// The C block a library deallocator (a destroy function) is freeing
    /// for the checker right now, or 0: its own `free` of that block is the
    /// one the checker already judged.
    static DEALLOCATING: Cell<usize> = const { Cell::new(0) };
}

/// Marks `ptr` as being freed by a library deallocator on this thread until
/// the value drops (see [`deallocating`]).
pub(crate) struct Deallocating {
    was: usize,
}

/// Starts a [`Deallocating`] section for `ptr`.
pub(crate) fn deallocating_section(ptr: usize) -> Deallocating {
    Deallocating {
        was: DEALLOCATING.with(|d| d.replace(ptr)),
    }
}

impl Drop for Deallocating {
    fn drop(&mut self) {
        let was = self.was;
        DEALLOCATING.with(|d| d.set(was));
    }
}

/// True while a library deallocator the checker called frees `ptr` on this
/// thread.
#[cfg_attr(
    not(all(feature = "interpose", any(debug_assertions, feature = "always"))),
    allow(dead_code)
)]
pub(crate) fn deallocating(ptr: usize) -> bool {
    ptr != 0 && DEALLOCATING.try_with(Cell::get).ok() == Some(ptr)
}

/// Marks the current thread as doing ffi-check's own bookkeeping until the
/// value drops: what it allocates meanwhile is internal and unchecked.
pub(crate) struct Bookkeeping {
    was: bool,
}

/// Starts a [`Bookkeeping`] section.
#[inline]
pub(crate) fn bookkeeping() -> Bookkeeping {
    Bookkeeping {
        was: GUARD.with(|g| g.replace(true)),
    }
}

impl Drop for Bookkeeping {
    #[inline]
    fn drop(&mut self) {
        let was = self.was;
        GUARD.with(|g| g.set(was));
    }
}

/// True inside a [`Bookkeeping`] section on this thread.
#[inline]
pub(crate) fn guarded() -> bool {
    GUARD.with(Cell::get)
}

/// An address that is distinct for every live thread (that of its guard),
/// for spreading threads over shards without a counter.
#[inline]
pub(crate) fn thread_address() -> usize {
    GUARD.with(|g| g as *const Cell<bool> as usize)
}

/// True while the tracking allocator is reporting on this thread: the panic
/// action must not unwind out of `dealloc`.
pub(crate) fn in_allocator() -> bool {
    IN_ALLOCATOR.with(Cell::get)
}

/// Marks the current thread as reporting from inside the allocator until the
/// value drops (see [`in_allocator`]).
pub(crate) struct AllocatorReport {
    was: bool,
}

/// Starts an [`AllocatorReport`] section.
pub(crate) fn allocator_report() -> AllocatorReport {
    AllocatorReport {
        was: IN_ALLOCATOR.with(|g| g.replace(true)),
    }
}

impl Drop for AllocatorReport {
    fn drop(&mut self) {
        let was = self.was;
        IN_ALLOCATOR.with(|g| g.set(was));
    }
}

/// Marks the current thread as inside the tracking allocator's inner
/// allocator until the value drops (see [`rust_inner`]).
#[cfg_attr(
    not(all(feature = "interpose", any(debug_assertions, feature = "always"))),
    allow(dead_code)
)]
pub(crate) struct RustInner {
    was: bool,
}

/// Starts a [`RustInner`] section.
#[inline(always)]
#[cfg_attr(
    not(all(feature = "interpose", any(debug_assertions, feature = "always"))),
    allow(dead_code)
)]
pub(crate) fn rust_inner_section() -> RustInner {
    RustInner {
        was: RUST_INNER.with(|g| g.replace(true)),
    }
}

impl Drop for RustInner {
    #[inline(always)]
    fn drop(&mut self) {
        let was = self.was;
        RUST_INNER.with(|g| g.set(was));
    }
}

/// True while the tracking allocator's inner allocator runs on this thread:
/// a C allocation made meanwhile is the memory of a Rust heap block.
#[inline(always)]
#[cfg_attr(
    not(all(feature = "interpose", any(debug_assertions, feature = "always"))),
    allow(dead_code)
)]
pub(crate) fn rust_inner() -> bool {
    RUST_INNER.with(Cell::get)
}

/// Fresh zeroed memory straight from the kernel: no allocator is involved,
/// so the allocator's own tables can never recurse into it.
pub(crate) fn map_anonymous(bytes: usize) -> Option<*mut libc::c_void> {
    // SAFETY: an anonymous private mapping of `bytes`, owned by the caller.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p)
}

/// Maps `bytes` of zero-filled memory and publishes it in `slot` unless
/// another thread published a mapping there first (then the fresh one is
/// unmapped). Returns false only when the kernel refuses the memory; the
/// slot may then still be null.
pub(crate) fn map_into<T>(slot: &AtomicPtr<T>, bytes: usize) -> bool {
    let Some(fresh) = map_anonymous(bytes) else {
        return false;
    };
    if slot
        .compare_exchange(
            ptr::null_mut(),
            fresh.cast(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: the mapping was never published; another thread's won.
        unsafe { libc::munmap(fresh, bytes) };
    }
    true
}

// ---- backtraces ------------------------------------------------------------

/// Held around every backtrace the checker takes or resolves. The
/// `backtrace` crate serialises them behind a lock of its own that no one
/// outside can take; holding this one across `fork` (see `crate::fork`)
/// means no thread of the checker is inside that lock when the process
/// forks, so the child can take backtraces too. A leaf: nothing else of the
/// checker is locked under it (the work is done as bookkeeping, so the
/// allocator takes none of its locks).
static BACKTRACES: Mutex<()> = Mutex::new(());

fn backtraces() -> MutexGuard<'static, ()> {
    BACKTRACES.lock().unwrap_or_else(|e| e.into_inner())
}

/// A backtrace of the caller, frames unresolved (resolved only if printed).
#[inline(never)]
pub(crate) fn capture_backtrace() -> Backtrace {
    let _g = bookkeeping();
    let _lock = backtraces();
    Backtrace::new_unresolved()
}

/// Resolves the frames of `bt` (file, line, function names).
pub(crate) fn resolve_backtrace(bt: &mut Backtrace) {
    let _g = bookkeeping();
    let _lock = backtraces();
    bt.resolve();
}

/// Resolves one code address: `f(function, file, line)` for each symbol
/// there (several where calls were inlined).
pub(crate) fn resolve_address(
    addr: usize,
    mut f: impl FnMut(Option<String>, Option<std::path::PathBuf>, Option<u32>),
) {
    let _g = bookkeeping();
    let _lock = backtraces();
    // SAFETY: the backtrace lock above is held, which serialises this with
    // every other resolution of the checker's (the `backtrace` crate's
    // symbol caches are not thread-safe without it).
    unsafe {
        backtrace::resolve_unsynchronized(addr as *mut std::ffi::c_void, |sym| {
            f(
                sym.name().map(|n| format!("{n:#}")),
                sym.filename().map(std::path::Path::to_path_buf),
                sym.lineno(),
            )
        })
    };
}

/// Walks the caller's stack, frame by frame, until `f` returns false.
pub(crate) fn walk_stack(f: impl FnMut(&backtrace::Frame) -> bool) {
    let _g = bookkeeping();
    let _lock = backtraces();
    backtrace::trace(f);
}

/// The backtrace lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLocks {
    _backtraces: MutexGuard<'static, ()>,
}

/// Takes the backtrace lock for `fork`'s prepare handler; dropping the
/// value releases it.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _backtraces: backtraces(),
    }
}
