//! The tracking allocator (SPEC §6): with it installed as the global
//! allocator, every Rust heap block is managed memory, so raw-pointer FFI
//! code (`v.as_ptr()`, `CString::into_raw`, `Box::into_raw`) is checked by
//! [`call!`](crate::call!) without wrappers.
//!
//! # Design
//!
//! This is the allocator's front: it makes and frees blocks through the
//! inner allocator and decides what each free means. What a block *is* (its
//! header, the page map, the quarantine's rings) is the memory model's, one
//! floor down in `heap`, where the checks that probe blocks find it too.
//!
//! A freed block waits in a bounded quarantine before its memory is reused: a
//! pointer into it meanwhile is `UseAfterFree`, named with the call that
//! freed it (or, with event backtraces on, the backtrace of the free). Each
//! of the first sixteen threads to free keeps its frees in a ring of its own
//! (no lock), and a block whose turn has come goes straight to the next
//! allocation of the same layout; other threads batch theirs into shared
//! shards. Either way there is no global lock.
//!
//! A block becomes *interesting* when it is pinned or retained: it is then
//! promoted into the registry (by the pin front end), which knows pins, retains and
//! interior pointers, and its free is checked against rule P3. Everything
//! the checker allocates for itself is made under a per-thread guard that
//! bypasses all of this, so its bookkeeping never recurses into tracking.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::Ordering;

use crate::bookkeeping::{allocator_report, bookkeeping, guarded};
use crate::heap::{
    batch, block_at, freed_meta, header, inner_layout, install, local_ring, local_ring_if_any,
    meta_align, meta_of, meta_size, meta_state, my_shard, state, uninstall, words, Batch, Entry,
    LocalRing, BATCH, HAS_ORPHANS, ORPHANS, PENDING_P, PENDING_SITE, QUARANTINE, SHARDS,
};
use crate::registry::{self, RegionKind};
use crate::report::{emit, Violation, ViolationKind};
use crate::site::Site;
use crate::stackdepot::StackId;

/// Checks on, without ever initialising the mode from the environment (the
/// allocator may run before `main`, or while the environment lock is held):
/// an uninitialised mode counts as the default, on.
#[inline(always)]
fn checks_on_raw() -> bool {
    crate::mode::COMPILED_IN && crate::mode::raw_mode() != 0
}

// ---------------------------------------------------------------------------
// The allocator.

/// Tracks every Rust heap block, so that raw-pointer FFI code is checked
/// like code that uses the wrappers (SPEC §6).
///
/// Install it once per program:
///
/// ```
/// use ffi_check::TrackingAllocator;
///
/// #[global_allocator]
/// static ALLOC: TrackingAllocator = TrackingAllocator::new();
///
/// let v = vec![1u8, 2, 3];
/// assert_eq!(v.len(), 3);
/// ```
///
/// With it installed, [`call!`](crate::call!) checks raw pointer arguments
/// the way it checks wrapper arguments:
///
/// - a pointer to a block freed a moment ago (the dangling temporary of
///   `let p = CString::new(s).unwrap().as_ptr();`) is `UseAfterFree`, named
///   with the call that freed it, or the backtrace of the free when event
///   backtraces are on (`FFI_CHECK_BACKTRACE=1`, or mode 2);
/// - a block lent to C whose layout can hold pointers is scanned for
///   pointers to other, unpinned heap blocks (rule P1): pin them with
///   [`Pinner::pin_ptr`](crate::Pinner::pin_ptr);
/// - `c_free` (or C's `ffi_check_free`) of a Rust heap block, and Rust's
///   deallocation of C memory (`Box::from_raw` or `CString::from_raw` on a
///   `malloc`'d pointer), are `InvalidFree` with both sides named; a second
///   Rust deallocation of one block is `DoubleFree`. The memory is then left
///   alone, never freed by the wrong allocator.
///
/// Compiled out (release builds without the `always` feature) it is the
/// inner allocator and nothing more: no header, no quarantine.
///
/// Freed blocks wait in a quarantine (by default up to 64 Ki blocks and
/// 64 MiB, see [`quarantine`](TrackingAllocator::quarantine)) before their
/// memory is reused. Each thread holds its own share of it (a sixteenth of
/// each bound) in a lock-free ring. With checks off (`FFI_CHECK=0`), blocks are freed at
/// once and nothing is checked; the 16-byte header per block stays.
///
/// The allocator cannot unwind: a violation it finds itself (a bad free) with
/// the panic action prints its report and aborts, as inside a callback.
/// Inside [`capture`](crate::capture) it is collected as usual.
pub struct TrackingAllocator<A: GlobalAlloc = System> {
    inner: A,
    quarantine_blocks: usize,
    quarantine_bytes: usize,
}

impl TrackingAllocator<System> {
    /// The tracking allocator over the system allocator, with the default
    /// quarantine.
    pub const fn new() -> TrackingAllocator<System> {
        TrackingAllocator::with_allocator(System)
    }
}

impl Default for TrackingAllocator<System> {
    fn default() -> Self {
        TrackingAllocator::new()
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// The tracking allocator over `inner`, which provides the memory.
    ///
    /// ```
    /// use ffi_check::TrackingAllocator;
    /// use std::alloc::System;
    /// static _ALLOC: TrackingAllocator<System> = TrackingAllocator::with_allocator(System);
    /// ```
    pub const fn with_allocator(inner: A) -> TrackingAllocator<A> {
        TrackingAllocator {
            inner,
            quarantine_blocks: 64 * 1024,
            quarantine_bytes: 64 << 20,
        }
    }

    /// Sets how many freed blocks, and how many bytes, wait before their
    /// memory is reused. `0` blocks turns the quarantine off (use after free
    /// is then seen only until the memory is reused). A freed block larger
    /// than a sixteenth of `bytes` is given back at once.
    ///
    /// ```
    /// use ffi_check::TrackingAllocator;
    /// static _ALLOC: TrackingAllocator = TrackingAllocator::new().quarantine(1 << 20, 256 << 20);
    /// ```
    pub const fn quarantine(mut self, blocks: usize, bytes: usize) -> TrackingAllocator<A> {
        self.quarantine_blocks = blocks;
        self.quarantine_bytes = bytes;
        self
    }

    #[inline]
    unsafe fn alloc_impl(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if let Some(p) = self.reuse_due(layout) {
            if zeroed {
                // SAFETY: the block is ours, `layout.size()` bytes, and now
                // live for the caller alone.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
        let Some((inner, h)) = inner_layout(layout.size(), layout.align()) else {
            return ptr::null_mut();
        };
        // With the C allocator interposed, the inner allocator's `malloc`
        // must know this block is Rust's heap, not C memory.
        #[cfg(feature = "interpose")]
        let _rust = crate::bookkeeping::rust_inner_section();
        // SAFETY: `inner` has a non-zero size (it includes the header).
        let base = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(inner)
            } else {
                self.inner.alloc(inner)
            }
        };
        if base.is_null() {
            return base;
        }
        let p = base as usize + h;
        let st = if guarded() {
            state::INTERNAL
        } else {
            state::LIVE
        };
        if !install(p, layout.size(), layout.align(), st) {
            // SAFETY: base came from inner.alloc with `inner` just now.
            unsafe { self.inner.dealloc(base, inner) };
            return ptr::null_mut();
        }
        p as *mut u8
    }

    /// A block of this thread's local ring that is due (one of its oldest
    /// few, which has waited nearly its `cap` frees) and has exactly this
    /// layout: handed out again
    /// as it is, header installed, instead of going back to the inner
    /// allocator for `malloc` to hand out later. This is what the inner
    /// allocator would do with it (give the memory just freed to the next
    /// request of its size), minus the round trip through it and the page
    /// map's two locked counts, and with the block still in the cache.
    #[inline(always)]
    fn reuse_due(&self, layout: Layout) -> Option<*mut u8> {
        let ring = local_ring_if_any()?;
        if guarded() {
            return None;
        }
        let live = meta_of(layout.size(), layout.align(), state::LIVE);
        // Only a block that was plain (never promoted nor internal; lent to
        // C as `*mut` it may have been: the lent list forgets it once it is
        // live and not lent) with the very same size and alignment: its
        // inner layout is the one `release` will give back.
        let plain = freed_meta(live);
        let lent = freed_meta(meta_of(
            layout.size(),
            layout.align(),
            state::LIVE | state::LENT,
        ));
        // The ring's copy of the meta word picks the block; its header,
        // which is the truth, confirms it (a block's state only gains bits).
        let p = ring.take_due(layout.size(), |p, m| {
            if m != plain && m != lent {
                return false;
            }
            // SAFETY: a block in a local ring is ours and FREED: still
            // allocated from the inner allocator, its header mapped.
            let (now, _) = unsafe { words(p) };
            now.load(Ordering::Relaxed) == m
        })?;
        // SAFETY: as above; the block is out of the ring, the caller's now.
        let (m, _) = unsafe { words(p) };
        m.store(live, Ordering::Release);
        Some(p as *mut u8)
    }

    /// Gives the block at `p` back to the inner allocator.
    ///
    /// # Safety
    /// `p` is a block of ours with `meta`, and nothing uses it any more.
    unsafe fn release(&self, p: usize, meta: usize) {
        let Some((inner, h)) = inner_layout(meta_size(meta), meta_align(meta)) else {
            return;
        };
        uninstall(p);
        // SAFETY: (p - h, inner) is exactly what inner.alloc returned.
        unsafe { self.inner.dealloc((p - h) as *mut u8, inner) };
    }

    /// Puts a freed user block into the quarantine, evicting the oldest
    /// ones beyond the limits.
    ///
    /// # Safety
    /// As for [`release`](Self::release); the block's meta is already FREED.
    unsafe fn quarantine_block(&self, p: usize, meta: usize, site: Option<Site>) {
        let size = meta_size(meta);
        if self.quarantine_blocks / SHARDS == 0 || size > self.quarantine_bytes / SHARDS {
            // SAFETY: as the caller vouches.
            unsafe { self.release(p, meta) };
            return;
        }
        let backtraces = crate::mode::raw_event_backtraces();
        let trace = if backtraces {
            crate::stackdepot::capture()
        } else {
            None
        };
        if let Some(ring) = local_ring(self.quarantine_blocks / SHARDS) {
            // SAFETY: as the caller vouches.
            unsafe { self.push_local(ring, p, meta, site, trace) };
            return;
        }
        if backtraces {
            // SAFETY: as the caller vouches.
            unsafe { self.push_locked(std::iter::once(Entry { p, site, trace })) };
            return;
        }
        match batch(p, site) {
            Batch::Added => return,
            Batch::Unavailable => {
                // SAFETY: as the caller vouches.
                unsafe {
                    self.push_locked(std::iter::once(Entry {
                        p,
                        site,
                        trace: None,
                    }))
                };
                return;
            }
            Batch::Full => {}
        }
        let full = PENDING_P.with(|ps| {
            PENDING_SITE.with(|ss| {
                let items: [(usize, Option<Site>); BATCH] =
                    std::array::from_fn(|i| (ps[i].get(), ss[i].get()));
                items
            })
        });
        let items = full.into_iter().map(|(p, site)| Entry {
            p,
            site,
            trace: None,
        });
        // SAFETY: every pending block was freed by its owner and is FREED.
        unsafe {
            self.push_locked(items.chain(std::iter::once(Entry {
                p,
                site,
                trace: None,
            })))
        };
    }

    /// Puts a freed block (its header holding `meta`) into this thread's local ring,
    /// first giving back the oldest blocks beyond its bounds (the
    /// due block a matching allocation did not take, and any the byte bound
    /// asks for).
    ///
    /// # Safety
    /// As for [`quarantine_block`](Self::quarantine_block); `ring` is this
    /// thread's.
    #[inline]
    unsafe fn push_local(
        &self,
        ring: &LocalRing,
        p: usize,
        meta: usize,
        site: Option<Site>,
        trace: Option<StackId>,
    ) {
        let size = meta_size(meta);
        let max_bytes = self.quarantine_bytes / SHARDS;
        while ring.len() > ring.cap()
            || (ring.len() > 0 && ring.bytes() + size > max_bytes)
            || ring.is_full()
        {
            let Some(old) = ring.oldest() else { break };
            if old == 0 {
                // A vacant slot: its block was taken back by an allocation.
                ring.pop(0);
                continue;
            }
            // SAFETY: a block in a local ring is ours, FREED, and unused.
            let old_meta = unsafe { words(old).0.load(Ordering::Acquire) };
            ring.pop(meta_size(old_meta));
            // SAFETY: as above; it left the ring just now.
            unsafe {
                self.evict(
                    Entry {
                        p: old,
                        site: None,
                        trace: None,
                    },
                    old_meta,
                )
            };
        }
        ring.push(p, meta, site, trace, size);
    }

    /// Pushes freed blocks into this thread's quarantine shard under one
    /// lock, evicting the oldest beyond the limits (and first adopting the
    /// blocks that exited threads left pending).
    ///
    /// # Safety
    /// Each entry is a block of ours, FREED, that nothing uses any more.
    unsafe fn push_locked(&self, items: impl Iterator<Item = Entry>) {
        let cap = self.quarantine_blocks / SHARDS;
        let max_bytes = self.quarantine_bytes / SHARDS;
        let orphan_list = if HAS_ORPHANS.load(Ordering::Relaxed) {
            let _g = bookkeeping();
            HAS_ORPHANS.store(false, Ordering::Relaxed);
            std::mem::take(&mut *ORPHANS.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            Vec::new()
        };
        let orphans = orphan_list.iter().map(|&(p, site)| Entry {
            p,
            site,
            trace: None,
        });
        let mut ring = QUARANTINE[my_shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let usable = ring.ensure(cap);
        for e in orphans.chain(items) {
            // SAFETY: a FREED block of ours is still allocated: its header
            // is mapped.
            let meta = unsafe { words(e.p).0.load(Ordering::Acquire) };
            let size = meta_size(meta);
            if !usable {
                // SAFETY: as the caller vouches.
                unsafe { self.evict(e, meta) };
                continue;
            }
            while ring.len >= ring.cap || ring.bytes + size > max_bytes {
                let Some(old) = ring.pop() else { break };
                // SAFETY: a quarantined block is ours, FREED, and unused.
                let old_meta = unsafe { words(old.p).0.load(Ordering::Acquire) };
                ring.bytes = ring.bytes.saturating_sub(meta_size(old_meta));
                // SAFETY: as above.
                unsafe { self.evict(old, old_meta) };
            }
            ring.bytes += size;
            ring.push(e);
        }
        drop(ring);
        let _g = bookkeeping();
        drop(orphan_list);
    }

    /// Gives a block leaving the quarantine back to the inner allocator.
    ///
    /// # Safety
    /// `e.p` is a FREED block of ours with `meta`, unused.
    unsafe fn evict(&self, e: Entry, meta: usize) {
        if meta_state(meta) & state::PROMOTED != 0 {
            let _g = bookkeeping();
            registry::remove(e.p);
        }
        // SAFETY: as the caller vouches.
        unsafe { self.release(e.p, meta) };
    }

    #[inline]
    unsafe fn free_user(&self, p: usize, meta: usize) {
        let st = meta_state(meta);
        if st & state::PROMOTED != 0 {
            // SAFETY: passed on from the caller.
            return unsafe { self.free_promoted(p, meta) };
        }
        if !checks_on_raw() || guarded() {
            // SAFETY: the block is live and its owner is done with it.
            return unsafe { self.release(p, meta) };
        }
        // SAFETY: header() found ours at p.
        let (m, _) = unsafe { words(p) };
        let freed = freed_meta(meta);
        m.store(freed, Ordering::Release);
        let site = crate::frame::current_site();
        // SAFETY: the block is ours, now FREED, and unused by its owner.
        unsafe { self.quarantine_block(p, freed, site) };
    }

    #[cold]
    unsafe fn free_promoted(&self, p: usize, meta: usize) {
        let _g = bookkeeping();
        let _r = allocator_report();
        // SAFETY: header() found ours at p.
        let (m, _) = unsafe { words(p) };
        let freed = freed_meta(meta);
        if !checks_on_raw() {
            registry::remove(p);
            // SAFETY: the owner is done with the block.
            return unsafe { self.release(p, meta) };
        }
        if !crate::managed::release(p) {
            // Pinned or retained: reported, and kept (leaked) so that C's
            // pointer stays valid.
            m.store(freed, Ordering::Release);
            return;
        }
        let site = crate::frame::current_site();
        registry::mark_freed(p, None, site, registry::Release::Nothing);
        m.store(freed, Ordering::Release);
        // SAFETY: the block is ours, now FREED, and unused by its owner.
        unsafe { self.quarantine_block(p, freed, site) };
    }

    #[cold]
    fn bad_free(&self, p: usize, what: &'static str) {
        if guarded() || !checks_on_raw() {
            return;
        }
        let _g = bookkeeping();
        let _r = allocator_report();
        match header(p) {
            Some(meta) if meta_state(meta) & state::FREED != 0 => {
                let block = block_at(p);
                let mut v = Violation::new(
                    ViolationKind::DoubleFree,
                    format!("double free of a Rust heap block ({what})"),
                )
                .note("the block was already freed by Rust's allocator".into());
                if let Some(b) = block {
                    v = v.region(crate::report::ReportRegion::new(
                        "freed twice",
                        crate::report::heap_detail(b),
                    ));
                }
                emit(v.with_site(crate::frame::current_call().map(|(_, s)| s)));
            }
            _ => {
                let c = registry::lookup_for_free(p).filter(|r| r.kind == RegionKind::C);
                let mut v = Violation::new(
                    ViolationKind::InvalidFree,
                    format!("Rust's allocator asked to free memory it did not allocate ({what})"),
                );
                v = match c {
                    Some(r) => v
                        .note(format!(
                            "allocated by C (`{}`), freed by Rust's allocator: C memory goes back to C's deallocator",
                            crate::family::family_name(r.family)
                        ))
                        .region_at("C region", r.start),
                    None => v.note(format!(
                        "the pointer {p:#x} is not a block of Rust's allocator: memory from C's `malloc` (through `Box::from_raw` or `CString::from_raw`) goes back to C's `free`"
                    )),
                };
                emit(v.note(
                    "the memory is left alone (leaked), never freed by the wrong allocator".into(),
                ));
            }
        }
    }

    /// In-place realloc of a block that needs no quarantine.
    ///
    /// # Safety
    /// As for `GlobalAlloc::realloc`, with `meta` the block's header.
    unsafe fn realloc_in_place(&self, p: usize, meta: usize, new_size: usize) -> *mut u8 {
        let (size, align) = (meta_size(meta), meta_align(meta));
        let (Some((old_inner, h)), Some(_)) =
            (inner_layout(size, align), inner_layout(new_size, align))
        else {
            return ptr::null_mut();
        };
        let st = meta_state(meta) & (state::INTERNAL | state::LIVE);
        uninstall(p);
        // SAFETY: (p - h, old_inner) is the inner block; the new size is
        // valid for its alignment (checked by inner_layout).
        let nb = unsafe {
            self.inner
                .realloc((p - h) as *mut u8, old_inner, new_size + h)
        };
        if nb.is_null() {
            install(p, size, align, st);
            return nb;
        }
        let np = nb as usize + h;
        if !install(np, new_size, align, st) {
            let (l, _) = inner_layout(new_size, align).expect("checked above");
            // SAFETY: nb is the inner block just returned, with layout l.
            unsafe { self.inner.dealloc(nb, l) };
            return ptr::null_mut();
        }
        np as *mut u8
    }
}

// SAFETY: every block comes from the inner allocator with a layout at least
// as large and as aligned as asked (the header sits in the extra bytes
// before the pointer returned), and goes back to it with that same layout.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on: compiled out, this is the inner allocator.
            return unsafe { self.inner.alloc(layout) };
        }
        // SAFETY: passed on.
        unsafe { self.alloc_impl(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: passed on.
        unsafe { self.alloc_impl(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on: the block came from inner.alloc.
            return unsafe { self.inner.dealloc(ptr, layout) };
        }
        let p = ptr as usize;
        let Some(meta) = header(p) else {
            return self.bad_free(p, "`dealloc`");
        };
        let st = meta_state(meta);
        if st & state::INTERNAL != 0 {
            // SAFETY: an internal block of ours, done with.
            return unsafe { self.release(p, meta) };
        }
        if st & state::FREED != 0 {
            return self.bad_free(p, "`dealloc`");
        }
        // SAFETY: a live user block whose owner is done with it.
        unsafe { self.free_user(p, meta) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !crate::mode::COMPILED_IN {
            // SAFETY: passed on: the block came from inner.alloc.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        let p = ptr as usize;
        let meta = header(p);
        if let Some(meta) = meta {
            let st = meta_state(meta);
            let plain = st & state::INTERNAL != 0
                || (st & (state::FREED | state::PROMOTED | state::LENT) == 0
                    && (!checks_on_raw() || guarded()));
            if plain {
                // SAFETY: passed on.
                return unsafe { self.realloc_in_place(p, meta, new_size) };
            }
        }
        // Checked: the old block goes to the quarantine, so a pointer kept
        // across a growing push is seen (`UseAfterFree`).
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: new_layout has a non-zero size (realloc's contract).
        let fresh = unsafe { self.alloc_impl(new_layout, false) };
        if fresh.is_null() {
            return fresh;
        }
        match meta {
            Some(meta) if meta_state(meta) & state::FREED == 0 => {
                // SAFETY: both blocks are valid for the smaller size and do
                // not overlap; the old one is then freed as `dealloc` would.
                unsafe {
                    ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                    self.free_user(p, meta);
                }
            }
            _ => {
                self.bad_free(p, "`realloc`");
                // SAFETY: the caller vouches for layout.size() readable
                // bytes at ptr (it is left alone afterwards).
                unsafe { ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size)) };
            }
        }
        fresh
    }
}

/// Reads the environment (mode, action, backtraces) before `main`, so that
/// the allocator, which never reads it itself, follows `FFI_CHECK` from the
/// first allocation `main` makes.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static READ_ENVIRONMENT_EARLY: extern "C" fn() = {
    extern "C" fn read_environment() {
        let _ = std::panic::catch_unwind(|| {
            let _ = crate::mode::mode();
            let _ = crate::mode::action();
            let _ = crate::mode::event_backtraces();
        });
    }
    read_environment
};
