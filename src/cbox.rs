//! C memory: [`CBox`], the raw [`c_malloc`] / [`c_free`] / [`c_adopt`] API,
//! allocator families ([`Deallocator`]), and the free checks of rule C1
//! (exactly once, with the right deallocator, never on managed memory) and
//! C2 (never into freed memory).

use std::ffi::{c_void, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::raw::c_char;
use std::ptr::NonNull;

use crate::family::{family_name, family_of_deallocator, FAMILY_MALLOC};
use crate::mode::{checks_on, COMPILED_IN};
use crate::registry::{self, flags, NewRegion, RegionKind, RegionState, Release};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::site::Site;

/// A C deallocator with a name: the family a piece of C memory belongs to.
///
/// Memory adopted with a deallocator (`CBox::from_raw_with`, [`c_adopt_with`])
/// must be freed by it; freeing it with another one is `MismatchedFree`.
///
/// ```
/// use ffi_check::Deallocator;
/// // A library's own allocator, as `sqlite3_free` is SQLite's.
/// unsafe extern "C" fn my_free(p: *mut std::ffi::c_void) { libc::free(p) }
/// const MY_FREE: Deallocator = Deallocator::new("my_free", my_free);
/// assert_eq!(MY_FREE.name(), "my_free");
/// assert_eq!(Deallocator::LIBC.name(), "free");
/// ```
#[derive(Clone, Copy)]
pub struct Deallocator {
    name: &'static str,
    free: unsafe extern "C" fn(*mut c_void),
}

unsafe extern "C" fn libc_free(p: *mut c_void) {
    // SAFETY: forwarded from a caller of a `Deallocator`, who promises `p`
    // came from malloc and is freed once.
    unsafe { libc::free(p) }
}

impl Deallocator {
    /// C's `free`: the family of `malloc`, `calloc`, `realloc`, `strdup`.
    pub const LIBC: Deallocator = Deallocator::new("free", libc_free);

    /// A deallocator called `name`.
    pub const fn new(name: &'static str, free: unsafe extern "C" fn(*mut c_void)) -> Deallocator {
        Deallocator { name, free }
    }

    /// Its name, as reports print it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn family(&self) -> u8 {
        family_of(self)
    }

    /// Whether this is C's `free` (a pointer comparison, no table lookup).
    fn is_libc(&self) -> bool {
        self.free as *const () == libc_free as *const ()
    }
}

impl fmt::Debug for Deallocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Deallocator({})", self.name)
    }
}

fn family_of(d: &Deallocator) -> u8 {
    if d.is_libc() {
        return FAMILY_MALLOC;
    }
    family_of_deallocator(d.name, d.free as *const () as usize)
}

/// What a free should do after its check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// The checker does not track the block: free it now.
    Untracked,
    /// A tracked, live block (with this id) of the right family: hand it to
    /// [`free_checked`].
    Tracked(u64),
    /// Do not touch it: freeing it would corrupt memory (the violation has
    /// been reported).
    Skip,
}

/// Rule C1/C2 for a free of `ptr` by deallocator `family` (`api` names it).
/// Changes nothing: the caller finishes the free according to the verdict.
pub(crate) fn check_free(ptr: usize, family: u8, api: &'static str, site: Option<Site>) -> Verdict {
    if ptr == 0 {
        return Verdict::Untracked;
    }
    if !checks_on() {
        if COMPILED_IN && !registry::nothing_live() {
            // Keep the registry true even with checks off, so turning them
            // back on cannot produce stale reports.
            registry::remove(ptr);
        }
        return Verdict::Untracked;
    }
    let Some(r) = registry::lookup_for_free(ptr) else {
        // A Rust heap block (tracking allocator) handed to C's `free`.
        if c_free_of_rust_block(ptr, api, site) {
            return Verdict::Skip;
        }
        // Memory the checker never saw: C's own allocations that were not
        // adopted pass unchecked, but a stack address or static data is
        // certainly not from a C allocator.
        if let Some(what) = never_allocated(ptr) {
            emit(
                Violation::new(
                    ViolationKind::InvalidFree,
                    format!("{} (`{api}`)", msg::FREE_NOT_HEAP),
                )
                .note(format!("the pointer {ptr:#x} is {what}"))
                .with_site(site),
            );
            return Verdict::Skip;
        }
        return Verdict::Untracked;
    };
    if r.start != ptr && r.flags & flags::RELEASED != 0 {
        // Inside a range whose memory was given back: no longer known.
        return Verdict::Untracked;
    }
    if r.start != ptr {
        if r.state == RegionState::Freed {
            emit(
                Violation::new(
                    ViolationKind::UseAfterFree,
                    format!("free of a pointer into freed memory (`{api}`)"),
                )
                .note(format!(
                    "the pointer is {} bytes into the freed region",
                    ptr - r.start
                ))
                .with_site(site)
                .region_at("freed region", r.start),
            );
            return Verdict::Skip;
        }
        emit(
            Violation::new(
                ViolationKind::InvalidFree,
                format!("{} (`{api}`)", msg::FREE_INTERIOR),
            )
            .note(format!(
                "the pointer is {} bytes into a {} region",
                ptr - r.start,
                r.kind
            ))
            .with_site(site)
            .region_at("freed pointer is inside", r.start),
        );
        return Verdict::Skip;
    }
    if r.state == RegionState::Freed {
        emit(
            Violation::new(
                ViolationKind::DoubleFree,
                format!("{} (`{api}`)", msg::DOUBLE_FREE),
            )
            .with_site(site)
            .region_at("freed twice", r.start),
        );
        return Verdict::Skip;
    }
    if r.kind == RegionKind::Managed {
        emit(
            Violation::new(
                ViolationKind::InvalidFree,
                format!("{} (`{api}`)", msg::FREE_MANAGED),
            )
            .note("allocated by Rust, freed by a C deallocator".into())
            .with_site(site)
            .region_at("managed region", r.start),
        );
        return Verdict::Skip;
    }
    // A library's deallocator may wrap `free` (a destroy function does), so
    // malloc memory freed by one is allowed; library memory freed by `free`
    // or by another library's deallocator is not.
    if r.family != family && !(r.family == FAMILY_MALLOC && family != FAMILY_MALLOC) {
        emit(
            Violation::new(
                ViolationKind::MismatchedFree,
                format!(
                    "{}: allocated by `{}`, freed with `{api}`",
                    msg::MISMATCHED_FREE,
                    family_name(r.family)
                ),
            )
            .with_site(site)
            .region_at("C region", r.start),
        );
        return Verdict::Skip;
    }
    Verdict::Tracked(r.id)
}

/// Finishes a free that [`check_free`] allowed: a tracked block goes to the
/// quarantine (which gives it back to `dealloc` later), an untracked one is
/// freed now.
///
/// # Safety
/// `ptr` came from `dealloc`'s allocator, its owner is done with it, and the
/// verdict is not `Skip`.
pub(crate) unsafe fn free_checked(
    ptr: *mut c_void,
    verdict: Verdict,
    dealloc: &Deallocator,
    site: Option<Site>,
) {
    if verdict == Verdict::Skip {
        return;
    }
    // A guarded block (mode 2) starts before the pointer C sees.
    let dealloc_fn = crate::guard::real_free(ptr as usize, dealloc.free, site);
    match verdict {
        Verdict::Skip => {}
        Verdict::Tracked(id) if dealloc.is_libc() => {
            // Plain malloc memory waits in the quarantine.
            registry::mark_freed(ptr as usize, Some(id), site, Release::C(dealloc_fn));
        }
        Verdict::Tracked(id) => {
            // A library's deallocator runs now: it may be a destroy function
            // with effects of its own, and it may free through
            // `ffi_check_free` itself (which then records the free). If it
            // did not, the record is marked freed and released here.
            // SAFETY: forwarded contract.
            unsafe { dealloc_fn(ptr) };
            registry::mark_freed(ptr as usize, Some(id), site, Release::Released);
        }
        // SAFETY: forwarded contract.
        Verdict::Untracked => unsafe { dealloc_fn(ptr) },
    }
}

/// A whole checked free: [`check_free`], then [`free_checked`]. What
/// `c_free`, `c_free_with` and C's `ffi_check_free` do.
///
/// # Safety
/// As [`free_checked`]: `ptr` is null or came from `dealloc`'s allocator and
/// is not used after this.
pub(crate) unsafe fn free_through_checks(
    ptr: *mut c_void,
    dealloc: &Deallocator,
    site: Option<Site>,
) {
    let verdict = check_free(ptr as usize, dealloc.family(), dealloc.name, site);
    // SAFETY: forwarded contract; the check found no record saying otherwise.
    unsafe { free_checked(ptr, verdict, dealloc, site) }
}

/// `c_free` (or `ffi_check_free`) of `ptr`: when it is a Rust heap block of
/// the tracking allocator, C must not free it. Reports `InvalidFree` and
/// returns true (the caller must then leave the memory alone).
fn c_free_of_rust_block(ptr: usize, api: &'static str, site: Option<Site>) -> bool {
    let Some(b) = crate::heap::block_at(ptr) else {
        return false;
    };
    let _g = crate::bookkeeping::bookkeeping();
    let v = Violation::new(
        ViolationKind::InvalidFree,
        format!("{} (`{api}`)", msg::FREE_MANAGED),
    )
    .note(format!(
        "allocated by Rust's allocator, freed with `{api}` (C): Rust memory is freed by Rust ({})",
        if b.freed {
            "and Rust already freed this block"
        } else {
            "take it back with `CString::from_raw` or `Box::from_raw` and drop it"
        }
    ))
    .with_site(site);
    emit(v.region_at_any("Rust heap block", b.start));
    true
}

/// What `ptr` is when it certainly did not come from a heap allocator: the
/// current thread's stack, or the image (code, static data) of a loaded
/// program or library. Cold: only frees of untracked pointers ask.
#[cold]
fn never_allocated(ptr: usize) -> Option<&'static str> {
    if on_this_stack(ptr) {
        return Some("on this thread's stack");
    }
    // SAFETY: dladdr only reads the loader's tables; `info` is plain data
    // it fills in.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; any address may be asked about.
    if unsafe { libc::dladdr(ptr as *const c_void, &mut info) } != 0 {
        return Some("in the static data or code of a loaded program or library");
    }
    None
}

/// Whether `ptr` lies in the current thread's stack.
fn on_this_stack(ptr: usize) -> bool {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread;
    // pthread_attr_getstack reads it; the attribute is destroyed once.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return false;
        }
        let mut base: *mut c_void = std::ptr::null_mut();
        let mut size: usize = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut base, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        ok && ptr >= base as usize && ptr < base as usize + size
    }
}

/// Registers a block the crate just allocated (no record can be
/// trustworthy about a fresh block: it replaces any).
fn track_new(ptr: usize, size: usize, site: Site, type_name: Option<fn() -> &'static str>) {
    if ptr == 0 || !checks_on() {
        return;
    }
    registry::insert(NewRegion {
        start: ptr,
        size,
        kind: RegionKind::C,
        family: FAMILY_MALLOC,
        flags: 0,
        site: Some(site),
        type_name,
    });
}

/// Registers `[ptr, ptr + size)`, returned by C, as live C memory of
/// `family`, or takes over an existing record of it. A pointer into a
/// quarantined block is C2: that memory cannot have been handed out again.
fn adopt(ptr: usize, size: usize, family: u8, site: Site, type_name: Option<fn() -> &'static str>) {
    if ptr == 0 || !checks_on() {
        return;
    }
    if let Some(r) = registry::lookup(ptr) {
        if r.state == RegionState::Live && r.start == ptr && r.kind == RegionKind::C {
            // Already tracked (allocated through ffi_check_malloc in C): keep
            // its allocation site, which is the more useful one.
            return;
        }
        if r.state == RegionState::Freed {
            emit(
                Violation::new(
                    ViolationKind::UseAfterFree,
                    format!("pointer returned from C {}", msg::USE_AFTER_FREE_ARG),
                )
                .with_site(Some(site))
                .region_at("freed region", r.start),
            );
            // The record stays: it still owns the quarantined block.
            return;
        }
    }
    registry::insert(NewRegion {
        start: ptr,
        size,
        kind: RegionKind::C,
        family,
        flags: 0,
        site: Some(site),
        type_name,
    });
}

/// Allocates `size` bytes with C's `malloc` and tracks them as C memory that
/// Rust owns (a leak until [`c_free`]d). Returns null when malloc does.
///
/// ```
/// let p = ffi_check::c_malloc(32);
/// assert!(!p.is_null());
/// // SAFETY: p came from c_malloc and is freed once.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[track_caller]
pub fn c_malloc(size: usize) -> *mut c_void {
    let p = malloc_scannable(size);
    track_new(p as usize, size, Site::caller(), None);
    p
}

/// `malloc` for memory the checker tracks. In mode 2 the block is zeroed:
/// the scans of C memory read every word of it, and the stale words a fresh
/// `malloc` block holds (old pointers into memory long since reused) would
/// otherwise read as pointers C stored.
pub(crate) fn malloc_scannable(size: usize) -> *mut c_void {
    if crate::mode::full() {
        // SAFETY: calloc has no preconditions.
        unsafe { libc::calloc(1, size.max(1)) }
    } else {
        // SAFETY: malloc has no preconditions.
        unsafe { libc::malloc(size.max(1)) }
    }
}

/// Frees C memory with `free`, checking rule C1: a double free, a free of an
/// interior pointer or of managed memory, or a free of memory from another
/// allocator family is reported, and then *not* carried out.
///
/// Pointers the checker never saw are passed to `free` unchecked: adopt
/// memory C returns (`CBox::from_raw`, [`c_adopt`]) to have its frees checked.
///
/// # Safety
/// `ptr` is null or came from the C allocator and is not used after this.
///
/// ```
/// let p = ffi_check::c_malloc(8);
/// // SAFETY: p came from c_malloc and is freed once.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[track_caller]
pub unsafe fn c_free(ptr: *mut c_void) {
    // SAFETY: the caller promises ptr came from malloc and is not used after.
    unsafe { free_through_checks(ptr, &Deallocator::LIBC, Some(Site::caller())) }
}

/// Frees C memory with the deallocator `dealloc`, checking rule C1 as
/// [`c_free`] does.
///
/// # Safety
/// `ptr` is null or was allocated by `dealloc`'s allocator and is not used
/// after this.
#[track_caller]
pub unsafe fn c_free_with(ptr: *mut c_void, dealloc: &Deallocator) {
    // SAFETY: as promised by the caller.
    unsafe { free_through_checks(ptr, dealloc, Some(Site::caller())) }
}

/// Tracks `size` bytes at `ptr`, returned by C's `malloc` family, as C memory
/// that Rust now owns: its free is checked and a missing free is a leak.
/// Returns `ptr`.
///
/// ```
/// // SAFETY: malloc has no preconditions.
/// let p = unsafe { libc::malloc(16) };
/// let p = ffi_check::c_adopt(p, 16);
/// // SAFETY: p came from malloc and is freed once.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[track_caller]
pub fn c_adopt(ptr: *mut c_void, size: usize) -> *mut c_void {
    adopt(ptr as usize, size, FAMILY_MALLOC, Site::caller(), None);
    ptr
}

/// Like [`c_adopt`], for memory from a library's own allocator, freed by
/// `dealloc`.
#[track_caller]
pub fn c_adopt_with(ptr: *mut c_void, size: usize, dealloc: &Deallocator) -> *mut c_void {
    adopt(ptr as usize, size, dealloc.family(), Site::caller(), None);
    ptr
}

/// Marks the tracked allocation at `ptr` as an intended leak: it lives for
/// the rest of the program on purpose, and leak reports list it apart, with
/// `reason`, instead of as a leak.
///
/// ```
/// let p = ffi_check::c_malloc(64);
/// ffi_check::intended_leak(p, "global table C keeps until exit");
/// ```
#[track_caller]
pub fn intended_leak<T: ?Sized>(ptr: *const T, reason: &str) {
    if !checks_on() {
        return;
    }
    let reason = reason.to_owned();
    registry::update_containing(ptr.cast::<u8>() as usize, |_, r| {
        r.flags |= flags::INTENDED_LEAK;
        r.extra_mut().leak_reason = Some(reason);
    });
}

/// An owner of C memory: allocated by `malloc` (or adopted from C, with its
/// deallocator), freed exactly once when dropped.
///
/// `CBox<T>` holds one value, `CBox<[T]>` a buffer, `CBox<CStr>` a
/// NUL-terminated C string. It never turns into a raw pointer by itself
/// (rule X3): use [`CBox::as_ptr`], [`CBox::into_raw`], or pass it to
/// [`call!`](crate::call!).
///
/// ```
/// use ffi_check::CBox;
/// let mut n = CBox::new(41i32);
/// *n += 1;
/// assert_eq!(*n, 42);
///
/// let buf = CBox::from_slice(&[1u8, 2, 3]);
/// assert_eq!(&*buf, &[1, 2, 3]);
///
/// let s = CBox::from_str("hello");
/// assert_eq!(s.to_bytes(), b"hello");
/// ```
pub struct CBox<T: ?Sized> {
    ptr: NonNull<T>,
    dealloc: Deallocator,
    _owns: PhantomData<T>,
}

// SAFETY: a CBox uniquely owns its allocation, like Box; C allocators are
// thread-safe.
unsafe impl<T: ?Sized + Send> Send for CBox<T> {}
// SAFETY: shared access only hands out &T.
unsafe impl<T: ?Sized + Sync> Sync for CBox<T> {}

impl<T: ?Sized> CBox<T> {
    /// The address, for reports and comparisons.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr().cast::<u8>() as usize
    }

    /// The deallocator this box frees with.
    pub fn deallocator(&self) -> &Deallocator {
        &self.dealloc
    }

    /// Marks the allocation as an intended leak and gives up ownership: the
    /// memory lives for the rest of the program.
    #[track_caller]
    pub fn leak_intended(self, reason: &str) -> &'static mut T {
        intended_leak(self.ptr.as_ptr().cast_const(), reason);
        let mut this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the allocation is never freed from now on, so the
        // reference is valid for 'static.
        unsafe { this.ptr.as_mut() }
    }

    /// Frees the box now, recording this line as the site of the free (a
    /// plain drop records a site only with backtraces on, since `Drop`
    /// cannot know its caller).
    ///
    /// ```
    /// let b = ffi_check::CBox::new(5u16);
    /// b.free();
    /// ```
    #[track_caller]
    pub fn free(self) {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.free_at(Some(Site::caller()));
    }

    fn free_at(&mut self, site: Option<Site>) {
        let ptr = self.ptr.as_ptr();
        // Check first: after a double free (C freed it behind the box's
        // back) the value must not be dropped, let alone freed again.
        let verdict = if COMPILED_IN {
            check_free(
                ptr.cast::<u8>() as usize,
                self.dealloc.family(),
                self.dealloc.name,
                site,
            )
        } else {
            Verdict::Untracked
        };
        if verdict == Verdict::Skip {
            return;
        }
        // SAFETY: the box owns an initialised T in memory from `dealloc`'s
        // allocator (the constructors' contracts): the value is dropped once,
        // then the memory is released once (now or from the quarantine).
        unsafe {
            std::ptr::drop_in_place(ptr);
            free_checked(ptr.cast::<c_void>(), verdict, &self.dealloc, site);
        }
    }

    /// Hands ownership to C and returns the start address (what passing a
    /// `CBox` by value to `call!` does).
    pub(crate) fn into_raw_addr(self) -> usize {
        self.into_raw_inner().as_ptr() as usize
    }

    /// Gives up ownership; returns the address C owns from now on.
    fn into_raw_inner(self) -> NonNull<u8> {
        let this = std::mem::ManuallyDrop::new(self);
        // C frees what it owns with its own `free`: a guarded block (mode 2)
        // moves to a plain one first.
        crate::guard::unguard(this.ptr.cast::<u8>(), std::any::type_name::<T>)
    }
}

impl<T: ?Sized> Drop for CBox<T> {
    fn drop(&mut self) {
        self.free_at(None);
    }
}

fn malloc_for(size: usize, align: usize) -> *mut c_void {
    if align <= crate::guard::GUARD && crate::mode::full() {
        // Mode 2: guard bytes on both sides, checked at each crossing.
        return crate::guard::alloc(size);
    }
    let size = size.max(1);
    if align <= 16 {
        // SAFETY: malloc has no preconditions; glibc aligns to 16.
        unsafe { libc::malloc(size) }
    } else {
        let mut p = std::ptr::null_mut();
        // SAFETY: align is a power of two and a multiple of the pointer size.
        let rc = unsafe { libc::posix_memalign(&mut p, align, size) };
        if rc == 0 {
            p
        } else {
            std::ptr::null_mut()
        }
    }
}

#[cold]
fn alloc_failed(size: usize) -> ! {
    std::alloc::handle_alloc_error(
        std::alloc::Layout::from_size_align(size.max(1), 1).expect("valid layout"),
    )
}

impl<T> CBox<T> {
    /// Moves `value` into memory from `malloc`.
    #[track_caller]
    pub fn new(value: T) -> CBox<T> {
        let size = std::mem::size_of::<T>();
        let p = malloc_for(size, std::mem::align_of::<T>()).cast::<T>();
        let Some(ptr) = NonNull::new(p) else {
            alloc_failed(size)
        };
        // SAFETY: fresh allocation, large and aligned enough for T.
        unsafe { ptr.as_ptr().write(value) };
        track_new(
            ptr.as_ptr() as usize,
            size,
            Site::caller(),
            Some(std::any::type_name::<T>),
        );
        CBox {
            ptr,
            dealloc: Deallocator::LIBC,
            _owns: PhantomData,
        }
    }

    /// Adopts a pointer C returned from its `malloc` family (`NULL` gives
    /// `None`): Rust owns it now and frees it with `free` on drop.
    ///
    /// # Safety
    /// `ptr` is null or points to an initialised `T` allocated by `malloc`,
    /// owned by nobody else.
    #[track_caller]
    pub unsafe fn from_raw(ptr: *mut T) -> Option<CBox<T>> {
        // SAFETY: forwarded contract.
        unsafe { Self::from_raw_with(ptr, Deallocator::LIBC) }
    }

    /// Adopts a pointer C returned from a library's own allocator, freed by
    /// `dealloc` on drop (`sqlite3_free`, say).
    ///
    /// # Safety
    /// `ptr` is null or points to an initialised `T` allocated by
    /// `dealloc`'s allocator, owned by nobody else.
    #[track_caller]
    pub unsafe fn from_raw_with(ptr: *mut T, dealloc: Deallocator) -> Option<CBox<T>> {
        let ptr = NonNull::new(ptr)?;
        adopt(
            ptr.as_ptr() as usize,
            std::mem::size_of::<T>(),
            dealloc.family(),
            Site::caller(),
            Some(std::any::type_name::<T>),
        );
        Some(CBox {
            ptr,
            dealloc,
            _owns: PhantomData,
        })
    }

    /// Hands ownership to C: the box is not freed by Rust any more; C must
    /// free it with the box's deallocator.
    pub fn into_raw(self) -> *mut T {
        self.into_raw_inner().as_ptr().cast::<T>()
    }

    /// The address of the value, for C.
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }

    /// The address of the value, for C to write through.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Stores `value`, checking rule P5: a value holding a pointer to
    /// unpinned managed memory may not be stored in C memory.
    ///
    /// ```
    /// let mut slot = ffi_check::CBox::new(std::ptr::null::<u8>());
    /// let pinned = ffi_check::Pinned::new(7u8);
    /// slot.set(pinned.as_ptr()); // pinned: allowed
    /// slot.set(std::ptr::null()); // C memory lets go before the pin ends
    /// ```
    #[track_caller]
    pub fn set(&mut self, value: T) {
        if checks_on() && std::mem::align_of::<T>() >= std::mem::align_of::<usize>() {
            let site = Site::caller();
            let addr = &value as *const T as usize;
            // SAFETY: `value` is a live local of size_of::<T>() bytes.
            let hit = unsafe { crate::scan::find_unpinned(addr, std::mem::size_of::<T>()) };
            if let Some((offset, target)) = hit {
                emit(
                    Violation::new(
                        ViolationKind::StoredUnpinned,
                        msg::STORED_UNPINNED.to_owned(),
                    )
                    .note(format!("stored at offset {offset} of the C region"))
                    .with_site(Some(site))
                    .region_at("C region written", self.addr())
                    .region_at("points to", target),
                );
            }
        }
        // SAFETY: the box owns an initialised T; the old value is dropped.
        unsafe { *self.ptr.as_ptr() = value };
    }
}

impl<T> CBox<[T]> {
    /// Copies `items` into memory from `malloc`.
    #[track_caller]
    pub fn from_slice(items: &[T]) -> CBox<[T]>
    where
        T: Copy,
    {
        let size = std::mem::size_of_val(items);
        let p = malloc_for(size, std::mem::align_of::<T>()).cast::<T>();
        if p.is_null() {
            alloc_failed(size)
        }
        // SAFETY: fresh allocation of size_of_val(items) bytes, aligned for T.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), p, items.len()) };
        track_new(
            p as usize,
            size,
            Site::caller(),
            Some(std::any::type_name::<[T]>),
        );
        let slice = std::ptr::slice_from_raw_parts_mut(p, items.len());
        CBox {
            ptr: NonNull::new(slice).expect("non-null"),
            dealloc: Deallocator::LIBC,
            _owns: PhantomData,
        }
    }

    /// `len` copies of `value` in memory from `malloc`: a buffer for C to
    /// fill.
    #[track_caller]
    pub fn from_elem(value: T, len: usize) -> CBox<[T]>
    where
        T: Copy,
    {
        let size = std::mem::size_of::<T>().saturating_mul(len);
        let p = malloc_for(size, std::mem::align_of::<T>()).cast::<T>();
        if p.is_null() {
            alloc_failed(size)
        }
        for i in 0..len {
            // SAFETY: i < len, inside the fresh allocation.
            unsafe { p.add(i).write(value) };
        }
        track_new(
            p as usize,
            size,
            Site::caller(),
            Some(std::any::type_name::<[T]>),
        );
        let slice = std::ptr::slice_from_raw_parts_mut(p, len);
        CBox {
            ptr: NonNull::new(slice).expect("non-null"),
            dealloc: Deallocator::LIBC,
            _owns: PhantomData,
        }
    }

    /// Adopts `len` elements at `ptr` from C's `malloc` family.
    ///
    /// # Safety
    /// `ptr` is null or points to `len` initialised `T` allocated by `malloc`,
    /// owned by nobody else.
    #[track_caller]
    pub unsafe fn from_raw_parts(ptr: *mut T, len: usize) -> Option<CBox<[T]>> {
        // SAFETY: forwarded contract.
        unsafe { Self::from_raw_parts_with(ptr, len, Deallocator::LIBC) }
    }

    /// Adopts `len` elements at `ptr` from a library's allocator.
    ///
    /// # Safety
    /// As [`CBox::from_raw_parts`], with `dealloc`'s allocator.
    #[track_caller]
    pub unsafe fn from_raw_parts_with(
        ptr: *mut T,
        len: usize,
        dealloc: Deallocator,
    ) -> Option<CBox<[T]>> {
        NonNull::new(ptr)?;
        adopt(
            ptr as usize,
            std::mem::size_of::<T>().saturating_mul(len),
            dealloc.family(),
            Site::caller(),
            Some(std::any::type_name::<[T]>),
        );
        let slice = std::ptr::slice_from_raw_parts_mut(ptr, len);
        Some(CBox {
            ptr: NonNull::new(slice).expect("non-null"),
            dealloc,
            _owns: PhantomData,
        })
    }

    /// The address of the first element, for C.
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr().cast::<T>()
    }

    /// The address of the first element, for C to write through.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr().cast::<T>()
    }

    /// Hands ownership to C; returns the first element's address.
    pub fn into_raw(self) -> *mut T {
        self.into_raw_inner().as_ptr().cast::<T>()
    }
}

impl CBox<CStr> {
    /// Builds a NUL-terminated C string in memory from `malloc`.
    ///
    /// An interior NUL is rule X2 (`InteriorNul`); when the violation does
    /// not panic, the string is cut at the NUL, which is what C would read.
    ///
    /// ```
    /// let s = ffi_check::CBox::from_str("héllo");
    /// assert_eq!(s.to_str().unwrap(), "héllo");
    /// ```
    #[track_caller]
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> CBox<CStr> {
        let site = Site::caller();
        match Self::build(s.as_bytes(), site) {
            Ok(b) => b,
            Err((v, cut)) => {
                emit(v);
                Self::build(&s.as_bytes()[..cut], site)
                    .unwrap_or_else(|_| unreachable!("no NUL before the first NUL"))
            }
        }
    }

    /// Like [`CBox::from_str`], returning the violation instead of reporting
    /// it.
    ///
    /// ```
    /// assert!(ffi_check::CBox::try_from_str("a\0b").is_err() || !ffi_check::COMPILED_IN);
    /// ```
    #[track_caller]
    pub fn try_from_str(s: &str) -> Result<CBox<CStr>, Violation> {
        Self::build(s.as_bytes(), Site::caller()).map_err(|(v, _)| v)
    }

    fn build(bytes: &[u8], site: Site) -> Result<CBox<CStr>, (Violation, usize)> {
        if let Some(i) = bytes.iter().position(|b| *b == 0) {
            return Err((
                Violation::new(ViolationKind::InteriorNul, msg::INTERIOR_NUL.to_owned())
                    .note(format!("NUL at byte {i} of {}", bytes.len()))
                    .with_site(Some(site)),
                i,
            ));
        }
        let size = bytes.len() + 1;
        let p = malloc_for(size, 1).cast::<u8>();
        if p.is_null() {
            alloc_failed(size)
        }
        // SAFETY: fresh allocation of len + 1 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            p.add(bytes.len()).write(0);
        }
        track_new(p as usize, size, site, Some(std::any::type_name::<CStr>));
        // SAFETY: the bytes end with their only NUL.
        let cstr =
            unsafe { CStr::from_bytes_with_nul_unchecked(std::slice::from_raw_parts(p, size)) };
        Ok(CBox {
            ptr: NonNull::from(cstr),
            dealloc: Deallocator::LIBC,
            _owns: PhantomData,
        })
    }

    /// Adopts a C string C returned from `malloc` (`strdup`, say). `NULL`
    /// gives `None`; so does a string with no NUL within its tracked region
    /// (`UnterminatedString`, reported).
    ///
    /// # Safety
    /// `ptr` is null or points to a NUL-terminated string allocated by
    /// `malloc` and owned by nobody else.
    #[track_caller]
    pub unsafe fn from_raw(ptr: *mut c_char) -> Option<CBox<CStr>> {
        // SAFETY: forwarded contract.
        unsafe { Self::from_raw_with(ptr, Deallocator::LIBC) }
    }

    /// Adopts a C string from a library's own allocator.
    ///
    /// # Safety
    /// As [`CBox::<CStr>::from_raw`], with `dealloc`'s allocator.
    #[track_caller]
    pub unsafe fn from_raw_with(ptr: *mut c_char, dealloc: Deallocator) -> Option<CBox<CStr>> {
        if ptr.is_null() {
            return None;
        }
        let site = Site::caller();
        // SAFETY: forwarded contract; the length is bounded by the tracked
        // region when there is one.
        let len = unsafe { crate::convert::c_strlen(ptr, Some(site))? };
        adopt(
            ptr as usize,
            len + 1,
            dealloc.family(),
            site,
            Some(std::any::type_name::<CStr>),
        );
        // SAFETY: len + 1 bytes, the last one NUL.
        let cstr = unsafe {
            CStr::from_bytes_with_nul_unchecked(std::slice::from_raw_parts(
                ptr.cast::<u8>(),
                len + 1,
            ))
        };
        Some(CBox {
            ptr: NonNull::from(cstr),
            dealloc,
            _owns: PhantomData,
        })
    }

    /// The string's address, for C.
    pub fn as_ptr(&self) -> *const c_char {
        self.ptr.as_ptr().cast::<c_char>()
    }

    /// Hands ownership to C; returns the string's address.
    pub fn into_raw(self) -> *mut c_char {
        self.into_raw_inner().as_ptr().cast::<c_char>()
    }
}

impl<T: ?Sized> Deref for CBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the box owns an initialised, live T.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> DerefMut for CBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the box owns an initialised, live T; &mut self is unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CBox").field(&&**self).finish()
    }
}
