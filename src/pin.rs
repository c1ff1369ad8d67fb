//! Pinning: [`Pinner`] (Go's `runtime.Pinner`) and [`Pinned<T>`], the
//! promises that let C keep a pointer to managed memory (rules P2–P6).
//!
//! A pin is a count on the region. Rules P1, P2, P4 and P5 ask "is this
//! managed memory pinned?"; rule P3 asks it again when the memory is dropped
//! or unpinned while C holds it; rule P6 needs to know which `Pinner` holds
//! which pins, so live pinners are kept in a table until they unpin.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use crate::managed::{raw_pointer_methods, report_retained_at_free, Managed};
use crate::mode::checks_on;
use crate::registry::{self, flags, RegionKind, RegionState};
use crate::report::msg;
use crate::site::Site;
use crate::stats::PINS;

/// Pins managed memory so C may keep pointers to it until it is unpinned,
/// like Go's `runtime.Pinner`. Everything it pinned is unpinned by
/// [`unpin`](Pinner::unpin) or on drop; a `Pinner` leaked while it pins
/// something (`mem::forget`) is reported as `LeakedPin` (rule P6).
///
/// ```
/// use ffi_check::{Managed, Pinner};
/// let inner = Managed::new(5i32);
/// let mut pinner = Pinner::new();
/// pinner.pin(&inner);
/// // ... C may keep `inner.as_ptr()` until the pinner unpins ...
/// pinner.unpin();
/// ```
pub struct Pinner {
    id: u64,
    site: Site,
    /// Pins taken, so an unused pinner never touches the table.
    pinned: usize,
}

struct PinnerRecord {
    site: Site,
    thread: u32,
    pins: Vec<(usize, u64)>,
}

static PINNERS: Mutex<Option<HashMap<u64, PinnerRecord>>> = Mutex::new(None);

fn with_pinners<R>(f: impl FnOnce(&mut HashMap<u64, PinnerRecord>) -> R) -> R {
    let mut guard = PINNERS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// The pinner table's lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _pinners: MutexGuard<'static, Option<HashMap<u64, PinnerRecord>>>,
}

/// Takes the pinner table's lock for `fork`'s prepare handler; dropping the
/// value releases it.
pub(crate) fn lock_for_fork() -> ForkLock {
    ForkLock {
        _pinners: PINNERS.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// A pinner still holding pins, for the leak report.
#[derive(Clone, Debug)]
pub(crate) struct PinnerLeak {
    pub site: Site,
    pub id: u64,
    pub regions: Vec<usize>,
}

/// Pinners that still hold pins (created on `thread` with id >= `first_id`
/// when given).
pub(crate) fn live_pinners(scope: Option<(u32, u64)>) -> Vec<PinnerLeak> {
    with_pinners(|t| {
        let mut v: Vec<PinnerLeak> = t
            .iter()
            .filter(|(id, r)| {
                !r.pins.is_empty()
                    && scope.map_or(true, |(th, first)| r.thread == th && **id >= first)
            })
            .map(|(id, r)| PinnerLeak {
                site: r.site,
                id: *id,
                regions: r.pins.iter().map(|p| p.0).collect(),
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    })
}

impl Pinner {
    /// A pinner that pins nothing yet.
    #[track_caller]
    pub fn new() -> Pinner {
        Pinner {
            id: registry::new_id(),
            site: Site::caller(),
            pinned: 0,
        }
    }

    /// Pins the memory of `m` until [`unpin`](Pinner::unpin) or drop.
    #[track_caller]
    pub fn pin<T: ?Sized>(&mut self, m: &Managed<T>) {
        if m.is_tracked() {
            self.pin_addr(m.addr(), Site::caller());
        }
    }

    /// Pins the tracked managed region that contains `ptr` (with the
    /// tracking allocator, any Rust heap pointer). Untracked memory is
    /// ignored.
    #[track_caller]
    pub fn pin_ptr<T: ?Sized>(&mut self, ptr: *const T) {
        self.pin_addr(ptr.cast::<u8>() as usize, Site::caller());
    }

    fn pin_addr(&mut self, addr: usize, site: Site) {
        if !checks_on() {
            return;
        }
        let trace = crate::mode::event_backtraces()
            .then(crate::stackdepot::capture)
            .flatten();
        // A heap block of the tracking allocator becomes known to the
        // registry the first time it is pinned.
        registry::promote_heap_block(addr, Some(site));
        let pinned = registry::update_containing(addr, |start, r| {
            if r.kind != RegionKind::Managed || r.state != RegionState::Live {
                return None;
            }
            r.pins = r.pins.saturating_add(1);
            let e = r.extra_mut();
            e.pin_site = Some(site);
            e.pin_trace = trace;
            Some((start, r.id()))
        })
        .flatten();
        if let Some(pin) = pinned {
            PINS.fetch_add(1, Ordering::Relaxed);
            self.pinned += 1;
            let (id, creator) = (self.id, self.site);
            with_pinners(|t| {
                t.entry(id)
                    .or_insert_with(|| PinnerRecord {
                        site: creator,
                        thread: registry::thread_serial(),
                        pins: Vec::new(),
                    })
                    .pins
                    .push(pin)
            });
        }
    }

    /// Unpins everything this pinner pinned. Unpinning memory C still holds
    /// a retain on is `FreedWhileRetained` (rule P3).
    pub fn unpin(&mut self) {
        if self.pinned == 0 {
            return;
        }
        self.pinned = 0;
        let pins = with_pinners(|t| t.remove(&self.id).map(|r| r.pins).unwrap_or_default());
        let full = crate::mode::full();
        for (start, id) in pins {
            if let Some(size) = unpin_region(start, id).filter(|_| full) {
                // Mode 2: C memory still pointing into it is P3.
                crate::roots::check_release(start, size, true);
            }
        }
    }
}

/// Drops one pin of region (`start`, `id`); reports P3 when C still holds a
/// retain on memory that is now unpinned. Returns the region's size when it
/// is now live, unpinned and not retained (what mode 2 then checks).
fn unpin_region(start: usize, id: u64) -> Option<usize> {
    let after = registry::update(start, |r| {
        if r.id() != id {
            return None;
        }
        r.pins = r.pins.saturating_sub(1);
        (r.pins == 0 && r.state == RegionState::Live).then_some((r.retains > 0, r.size))
    })
    .flatten();
    // The pin was counted when it was taken, whatever became of the region.
    PINS.fetch_sub(1, Ordering::Relaxed);
    let (retained, size) = after?;
    if retained && checks_on() {
        report_retained_at_free(start, msg::UNPINNED_WHILE_RETAINED);
        return None;
    }
    Some(size)
}

impl Default for Pinner {
    #[track_caller]
    fn default() -> Pinner {
        Pinner::new()
    }
}

impl Drop for Pinner {
    fn drop(&mut self) {
        self.unpin();
    }
}

impl fmt::Debug for Pinner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinner")
            .field("created_at", &self.site)
            .field("pins", &self.pinned)
            .finish()
    }
}

/// Managed memory pinned for its whole life: C may keep pointers to it
/// until it is dropped (and must release them before).
///
/// ```
/// use ffi_check::Pinned;
/// let table = Pinned::from_vec(vec![0u32; 16]);
/// let p: *const u32 = table.as_ptr(); // valid until `table` drops
/// assert_eq!(table.len(), 16);
/// # let _ = p;
/// ```
pub struct Pinned<T: ?Sized> {
    inner: Option<Managed<T>>,
}

/// `call!` lends a `Pinned<T>`'s contents: their pointer map is `T`'s.
impl<T: ?Sized> crate::pointer_map::Wrapper for Pinned<T> {
    type Inner = T;
}

impl<T: ?Sized> Pinned<T> {
    /// Pins an existing `Managed` for the rest of its life.
    #[track_caller]
    pub fn from_managed(m: Managed<T>) -> Pinned<T> {
        if m.is_tracked() && checks_on() {
            let site = Site::caller();
            let pinned = registry::update(m.addr(), |r| {
                r.pins = r.pins.saturating_add(1);
                r.flags |= flags::PINNED_FOREVER;
                r.extra_mut().pin_site = Some(site);
            });
            if pinned.is_some() {
                PINS.fetch_add(1, Ordering::Relaxed);
            }
        }
        Pinned { inner: Some(m) }
    }

    /// Takes over a `Box`.
    #[track_caller]
    pub fn from_box(b: Box<T>) -> Pinned<T> {
        Pinned::from_managed(Managed::from_box(b))
    }

    pub(crate) fn managed(&self) -> &Managed<T> {
        self.inner.as_ref().expect("present until drop")
    }

    fn managed_mut(&mut self) -> &mut Managed<T> {
        self.inner.as_mut().expect("present until drop")
    }

    /// The start address.
    pub fn addr(&self) -> usize {
        self.managed().addr()
    }

    /// Declares the contents pointer-free, as
    /// [`Managed::pointer_free`] does: lending never scans them.
    ///
    /// ```
    /// let samples = ffi_check::Pinned::from_vec(vec![0u64; 512]).pointer_free();
    /// assert_eq!(samples.len(), 512);
    /// ```
    pub fn pointer_free(mut self) -> Pinned<T>
    where
        T: crate::PointerFree,
    {
        if let Some(m) = self.inner.take() {
            self.inner = Some(m.pointer_free());
        }
        self
    }
}

impl<T> Pinned<T> {
    /// Moves `value` to the heap, pinned.
    #[track_caller]
    pub fn new(value: T) -> Pinned<T> {
        Pinned::from_managed(Managed::new(value))
    }
}

impl<T> Pinned<[T]> {
    /// Takes over a `Vec`, pinned.
    #[track_caller]
    pub fn from_vec(v: Vec<T>) -> Pinned<[T]> {
        Pinned::from_managed(Managed::from_vec(v))
    }
}

impl Pinned<str> {
    /// Takes over a `String`, pinned.
    #[track_caller]
    pub fn from_string(s: String) -> Pinned<str> {
        Pinned::from_managed(Managed::from_string(s))
    }
}

impl Pinned<CStr> {
    /// Takes over a `CString`, pinned.
    #[track_caller]
    pub fn from_cstring(s: CString) -> Pinned<CStr> {
        Pinned::from_managed(Managed::from_cstring(s))
    }
}

impl<T: ?Sized> Drop for Pinned<T> {
    fn drop(&mut self) {
        let Some(m) = self.inner.take() else { return };
        if m.is_tracked() {
            let had_pin = registry::update(m.addr(), |r| {
                if r.flags & flags::PINNED_FOREVER == 0 {
                    return false;
                }
                r.flags &= !flags::PINNED_FOREVER;
                r.pins = r.pins.saturating_sub(1);
                true
            });
            if had_pin == Some(true) {
                PINS.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // The Managed's own drop checks P3 (retains, other pinners).
        drop(m);
    }
}

impl<T: ?Sized> Deref for Pinned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.managed()
    }
}

impl<T: ?Sized> DerefMut for Pinned<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.managed_mut()
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Pinned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pinned").field(&&**self).finish()
    }
}

raw_pointer_methods!(Pinned);

/// Records that C keeps a pointer to the memory at `addr` after the current
/// call (rule P2): legal for pinned managed memory and for C memory; for
/// unpinned memory declared `Managed` it is `Retained`, at once; for a plain
/// heap block only when the rules are [`strict`](crate::strict) (otherwise
/// its free while still retained is `FreedWhileRetained`).
pub(crate) fn retain_at(addr: usize, site: Option<Site>) {
    if addr == 0 || !checks_on() {
        return;
    }
    let trace = crate::mode::event_backtraces()
        .then(crate::stackdepot::capture)
        .flatten();
    // A freed heap block the registry does not know (one it knows is
    // reported below, from its record).
    if let Some(block) = crate::heap::block_at(addr)
        .filter(|b| b.freed && (!b.promoted || registry::lookup(addr).is_none()))
    {
        return report_retained_freed(block.start, site);
    }
    registry::promote_heap_block(addr, site);
    let outcome = registry::update_containing(addr, |start, r| {
        if r.state != RegionState::Live {
            return (start, r.state, r.kind, true, r.family);
        }
        if r.kind == RegionKind::Managed {
            r.retains = r.retains.saturating_add(1);
            let e = r.extra_mut();
            e.retain_site = site;
            e.retain_trace = trace;
        }
        (start, r.state, r.kind, r.pins == 0, r.family)
    });
    let Some((start, state, kind, unpinned, family)) = outcome else {
        return;
    };
    // A plain heap block C keeps is Rust's rule, not Go's: harmless until
    // it is freed while C still holds it (then `FreedWhileRetained`).
    let unpinned = unpinned && (family == crate::family::FAMILY_RUST || crate::mode::strict());
    if state == RegionState::Freed {
        return report_retained_freed(start, site);
    }
    if kind == RegionKind::Managed {
        crate::stats::RETAINS.fetch_add(1, Ordering::Relaxed);
        if unpinned {
            let call = crate::frame::current_call();
            let mut v = crate::report::Violation::new(
                crate::ViolationKind::Retained,
                match call {
                    Some((callee, _)) => format!("{} (`{callee}`)", msg::RETAINED),
                    None => msg::RETAINED.to_owned(),
                },
            )
            .with_site(site)
            .with_callee(call.map(|c| c.0));
            if let Some((_, call_site)) = call {
                v = v.note(format!("lent by the call at {call_site}"));
            }
            crate::report::emit(v.region_at("retained region", start));
        }
    }
}

/// C retained a pointer into the freed region (or heap block) at `start`.
#[cold]
fn report_retained_freed(start: usize, site: Option<Site>) {
    crate::report::emit(
        crate::report::Violation::new(
            crate::ViolationKind::UseAfterFree,
            msg::RETAINED_FREED.to_owned(),
        )
        .with_site(site)
        .with_callee(crate::frame::current_call().map(|c| c.0))
        .region_at_any("freed region", start),
    );
}

/// Records that C dropped a pointer it had retained.
pub(crate) fn release_at(addr: usize) {
    if addr == 0 || !crate::mode::COMPILED_IN {
        return;
    }
    let released = registry::update_containing(addr, |_, r| {
        if r.kind == RegionKind::Managed && r.retains > 0 {
            r.retains -= 1;
            true
        } else {
            false
        }
    });
    if released == Some(true) {
        crate::stats::RETAINS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Declares, from Rust, that C keeps `ptr` after the current call returns
/// (what `ffi_check_retain` says from C). Retaining unpinned managed memory
/// is `Retained` (rule P2); dropping or unpinning retained memory before
/// [`release`] is `FreedWhileRetained` (rule P3).
///
/// ```
/// let m = ffi_check::Pinned::new(3u32);
/// ffi_check::retain(m.as_ptr());   // C keeps it: fine, it is pinned
/// ffi_check::release(m.as_ptr());  // C let go before the drop
/// ```
#[track_caller]
pub fn retain<T: ?Sized>(ptr: *const T) {
    retain_at(ptr.cast::<u8>() as usize, Some(Site::caller()));
}

/// Declares that C no longer keeps `ptr` (what `ffi_check_release` says).
///
/// A release with no retain to match (of memory never retained, or one
/// more than the retains) changes nothing and is not reported: the count
/// never goes below zero, so a later retain is still held and a free while
/// it is held is still `FreedWhileRetained`. C code releases on paths where
/// it never kept anything (a destroy function that releases whatever its
/// slot held), and the harm retains guard against, freeing what C still
/// holds, cannot come from a release too many.
///
/// ```
/// let m = ffi_check::Pinned::new(1u8);
/// ffi_check::release(m.as_ptr()); // never retained: nothing happens
/// ```
pub fn release<T: ?Sized>(ptr: *const T) {
    release_at(ptr.cast::<u8>() as usize);
}
