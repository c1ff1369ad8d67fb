//! Managed memory: [`Managed<T>`], heap memory Rust owns and Rust frees,
//! tracked so that lending it to C can be checked (rules P1–P5).

use std::ffi::{CStr, CString};
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

use crate::family::FAMILY_RUST;
use crate::mode::{checks_on, COMPILED_IN};
use crate::registry::{self, flags, NewRegion, RegionKind, RegionState, Release};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::scan::{may_hold_pointers, PointerFree};
use crate::site::Site;
use std::alloc::Layout;

/// Rust-owned heap memory that may be lent to C, tracked by the checker.
///
/// Rust code uses it through `Deref`/`DerefMut` like a `Box`. C gets a
/// pointer only through a named method ([`as_ptr`](Managed::as_ptr)) or as a
/// [`call!`](crate::call!) argument (rule X3), and only for the call: to let C
/// keep it, pin it ([`Pinner`](crate::Pinner)) or use [`Pinned`](crate::Pinned).
///
/// ```
/// use ffi_check::Managed;
/// let mut buf = Managed::from_vec(vec![0u8; 64]);
/// buf[0] = 1;
/// let p: *const u8 = buf.as_ptr();
/// assert_eq!(buf.len(), 64);
/// # let _ = p;
/// let name = Managed::from_string(String::from("abc"));
/// assert_eq!(&*name, "abc");
/// ```
pub struct Managed<T: ?Sized> {
    boxed: ManuallyDrop<Box<T>>,
    /// Lending it scans it: its type can hold an aligned pointer and was not
    /// declared `PointerFree`.
    scan: bool,
    /// Registered with the checker (checks were on at creation, size > 0).
    tracked: bool,
}

impl<T: ?Sized> Managed<T> {
    /// Takes over a `Box`.
    #[track_caller]
    pub fn from_box(boxed: Box<T>) -> Managed<T> {
        let size = std::mem::size_of_val(&*boxed);
        let scan = may_hold_pointers(std::mem::align_of_val(&*boxed), size);
        let tracked = COMPILED_IN && size > 0 && checks_on();
        if tracked {
            registry::insert(NewRegion {
                start: (&*boxed as *const T).cast::<u8>() as usize,
                size,
                kind: RegionKind::Managed,
                family: FAMILY_RUST,
                flags: if scan { flags::HOLDS_POINTERS } else { 0 },
                site: Some(Site::caller()),
                type_name: Some(std::any::type_name::<T>),
            });
        }
        Managed {
            boxed: ManuallyDrop::new(boxed),
            scan,
            tracked,
        }
    }

    /// The start address.
    pub fn addr(&self) -> usize {
        (&**self.boxed as *const T).cast::<u8>() as usize
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        std::mem::size_of_val(&**self.boxed)
    }

    /// Whether lending it scans it for nested pointers.
    pub fn is_scanned(&self) -> bool {
        self.scan
    }

    /// Declares the contents pointer-free: lending never scans them (the
    /// check Go gets from the type's pointer bitmap). Types aligned below a
    /// pointer need no declaration.
    pub fn pointer_free(mut self) -> Managed<T>
    where
        T: PointerFree,
    {
        self.scan = false;
        if self.tracked {
            registry::update(self.addr(), |r| r.flags &= !flags::HOLDS_POINTERS);
        }
        self
    }

    pub(crate) fn is_tracked(&self) -> bool {
        self.tracked
    }

    pub(crate) fn raw(&self) -> *const T {
        &**self.boxed
    }

    pub(crate) fn raw_mut(&mut self) -> *mut T {
        &mut **self.boxed
    }
}

/// `call!` lends a `Managed<T>`'s contents: their pointer map is `T`'s.
impl<T: ?Sized> crate::pointer_map::Wrapper for Managed<T> {
    type Inner = T;
}

impl<T> Managed<T> {
    /// Moves `value` to the heap.
    #[track_caller]
    pub fn new(value: T) -> Managed<T> {
        Managed::from_box(Box::new(value))
    }

    /// Gives the value back, freeing the tracked memory (with the same checks
    /// as a drop).
    pub fn into_inner(self) -> T {
        let mut this = ManuallyDrop::new(self);
        if COMPILED_IN && this.tracked {
            let keep = !release(this.addr());
            let layout = Layout::for_value(&**this.boxed);
            // SAFETY: `this` is never dropped, so the box is taken out once;
            // its memory is then owned by the raw pointer.
            let raw = Box::into_raw(unsafe { ManuallyDrop::take(&mut this.boxed) });
            // SAFETY: raw points to a live, initialised T; reading it moves
            // the value out, and the box memory is never used as a T again.
            let value = unsafe { std::ptr::read(raw) };
            // When kept, C may still read the block: it is never freed.
            if !keep {
                // SAFETY: the value has moved out; the block is unused.
                unsafe { quarantine(raw as usize, layout) };
            }
            return value;
        }
        // SAFETY: `this` is never dropped; the box is taken out once.
        let boxed = unsafe { ManuallyDrop::take(&mut this.boxed) };
        *boxed
    }
}

impl<T> Managed<[T]> {
    /// Takes over a `Vec` (its spare capacity is released first, so the
    /// tracked region is exactly the elements).
    #[track_caller]
    pub fn from_vec(v: Vec<T>) -> Managed<[T]> {
        Managed::from_box(v.into_boxed_slice())
    }
}

impl Managed<str> {
    /// Takes over a `String`.
    #[track_caller]
    pub fn from_string(s: String) -> Managed<str> {
        Managed::from_box(s.into_boxed_str())
    }
}

impl Managed<CStr> {
    /// Takes over a `CString`: a NUL-terminated string C can read for the
    /// duration of a call.
    #[track_caller]
    pub fn from_cstring(s: CString) -> Managed<CStr> {
        Managed::from_box(s.into_boxed_c_str())
    }
}

/// Rule P3 at the end of a managed region's life. Returns false when the
/// memory must not be freed (C still holds it, or a `Pinner` still pins it):
/// it is then marked freed but kept, leaked, so C's pointer stays valid and
/// the program does not crash. When it returns true, the caller frees the
/// memory through [`quarantine`].
pub(crate) fn release(start: usize) -> bool {
    // Read without the shard's lock: nothing is written here.
    let Some((info, retains)) = registry::exact_facts(start) else {
        return true;
    };
    let (state, pins, size, family) = (info.state, info.pins, info.size, info.family);
    if state != RegionState::Live || !checks_on() {
        return true;
    }
    if retains > 0 {
        report_retained_at_free(start, msg::FREED_WHILE_RETAINED);
    } else if pins > 0 {
        emit(
            Violation::new(
                ViolationKind::FreedWhilePinned,
                msg::FREED_WHILE_PINNED.to_owned(),
            )
            .region_at("pinned region", start),
        );
    }
    // Mode 2: C memory that still points into it is P3 too, unless C itself
    // is giving a plain heap block back: a free made while this thread is
    // inside a checked call (or a `callback!` body) is made by Rust code C
    // called, a destructor freeing what C held, whose pointer is C's own to
    // forget.
    let given_back = || {
        family != crate::family::FAMILY_RUST
            && (crate::report::in_callback() || crate::frame::current_call().is_some())
    };
    let keep = retains > 0
        || pins > 0
        || (crate::mode::full()
            && !given_back()
            && crate::roots::check_release(start, size, false));
    if keep {
        registry::mark_freed(start, None, None, Release::Nothing);
    }
    !keep
}

/// Hands a managed block whose value is gone to the quarantine, which gives
/// it back to the global allocator later (so no new allocation reuses the
/// range while its freed record can still name it).
///
/// # Safety
/// `start` is a live block from the global allocator with `layout`, its
/// value already dropped or moved out, and nothing uses it any more.
unsafe fn quarantine(start: usize, layout: Layout) {
    registry::mark_freed(start, None, None, Release::Rust(layout));
}

#[cold]
pub(crate) fn report_retained_at_free(start: usize, message: &str) {
    emit(
        Violation::new(ViolationKind::FreedWhileRetained, message.to_owned())
            .note("the memory is kept (leaked) so that C's pointer stays valid".into())
            .region_at("retained region", start),
    );
}

/// The common end of a managed region, in one look at its record: a value
/// without drop glue whose live record nothing pins and C does not retain
/// is marked freed and its block handed to the quarantine. False, having
/// changed nothing, when anything else holds (checks off, mode 2's scan of
/// what C still points at, a pin, a retain, no live record): the caller
/// then takes [`release`]'s path, which reports what is wrong.
///
/// # Safety
/// As [`quarantine`]'s: `start` is a live block from the global allocator
/// with `layout`, whose value needs no drop, and nothing uses it any more
/// if this returns true.
unsafe fn release_plain(start: usize, layout: Layout) -> bool {
    if !checks_on() || crate::mode::full() {
        return false;
    }
    let marked = registry::mark_freed_if(start, None, Release::Rust(layout), |r, retains| {
        r.kind == RegionKind::Managed && retains == 0 && r.pins == 0
    });
    matches!(marked, registry::Marked::Freed(_))
}

impl<T: ?Sized> Drop for Managed<T> {
    fn drop(&mut self) {
        if COMPILED_IN && self.tracked {
            if !std::mem::needs_drop::<T>() {
                let layout = Layout::for_value(&**self.boxed);
                // SAFETY: the box's block, from the global allocator with
                // `layout`; its value needs no drop; on true the quarantine
                // owns the block and `boxed` is never used again.
                if unsafe { release_plain(self.addr(), layout) } {
                    return;
                }
            }
            if !release(self.addr()) {
                return;
            }
            let layout = Layout::for_value(&**self.boxed);
            // SAFETY: taken once, here; `boxed` is not used afterwards.
            let raw = Box::into_raw(unsafe { ManuallyDrop::take(&mut self.boxed) });
            // SAFETY: raw is the box's live value; it is dropped once and its
            // block (from the global allocator with `layout`) is handed to
            // the quarantine, unused from now on.
            unsafe {
                std::ptr::drop_in_place(raw);
                quarantine(raw.cast::<u8>() as usize, layout);
            }
            return;
        }
        // SAFETY: dropped once, here; `boxed` is not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.boxed) }
    }
}

impl<T: ?Sized> Deref for Managed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.boxed
    }
}

impl<T: ?Sized> DerefMut for Managed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.boxed
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Managed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Managed").field(&&**self.boxed).finish()
    }
}

impl<T> From<Vec<T>> for Managed<[T]> {
    #[track_caller]
    fn from(v: Vec<T>) -> Self {
        Managed::from_vec(v)
    }
}

impl From<String> for Managed<str> {
    #[track_caller]
    fn from(s: String) -> Self {
        Managed::from_string(s)
    }
}

impl<T: ?Sized> From<Box<T>> for Managed<T> {
    #[track_caller]
    fn from(b: Box<T>) -> Self {
        Managed::from_box(b)
    }
}

/// `as_ptr` / `as_mut_ptr` for the owners of managed memory, per shape: a
/// value gives `*const T`, a slice its first element, a string its first
/// byte, a C string its first `c_char`.
macro_rules! raw_pointer_methods {
    ($owner:ident) => {
        impl<T> $owner<T> {
            /// The value's address, for C (rule X3: a named method).
            pub fn as_ptr(&self) -> *const T {
                self.managed().raw()
            }
            /// The value's address, for C to write through.
            pub fn as_mut_ptr(&mut self) -> *mut T {
                self.managed_mut().raw_mut()
            }
        }
        impl<T> $owner<[T]> {
            /// The first element's address, for C.
            pub fn as_ptr(&self) -> *const T {
                self.managed().raw().cast::<T>()
            }
            /// The first element's address, for C to write through.
            pub fn as_mut_ptr(&mut self) -> *mut T {
                self.managed_mut().raw_mut().cast::<T>()
            }
        }
        impl $owner<str> {
            /// The first byte's address (not NUL-terminated: pass the length).
            pub fn as_ptr(&self) -> *const u8 {
                self.managed().raw().cast::<u8>()
            }
        }
        impl $owner<CStr> {
            /// The string's address, NUL-terminated, for C.
            pub fn as_ptr(&self) -> *const std::os::raw::c_char {
                self.managed().raw().cast::<std::os::raw::c_char>()
            }
        }
    };
}

impl<T: ?Sized> Managed<T> {
    fn managed(&self) -> &Managed<T> {
        self
    }
    fn managed_mut(&mut self) -> &mut Managed<T> {
        self
    }
}

raw_pointer_methods!(Managed);
pub(crate) use raw_pointer_methods;
