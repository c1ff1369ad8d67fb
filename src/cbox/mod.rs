//! C memory: [`CBox`], the raw [`c_malloc`] / [`c_free`] / [`c_adopt`] API,
//! allocator families ([`Deallocator`]), and the free checks of rule C1
//! (exactly once, with the right deallocator, never on managed memory) and
//! C2 (never into freed memory).
//!
//! The parts: `dealloc` names deallocators and their families, `free` holds
//! the free checks every deallocation path goes through (the wrappers, the
//! raw API, the C API and the allocator hooks), `raw` the raw functions;
//! this file the owning [`CBox`] itself.

use std::ffi::{c_void, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::raw::c_char;
use std::ptr::NonNull;

use crate::mode::{checks_on, COMPILED_IN};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::site::Site;
use raw::{adopt, track_new};

mod dealloc;
mod free;
mod raw;

pub use dealloc::Deallocator;
pub(crate) use free::{check_free, free_checked, free_plain, free_through_checks, Verdict};
pub(crate) use raw::malloc_scannable;
pub use raw::{c_adopt, c_adopt_with, c_free, c_free_with, c_malloc, intended_leak};

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
        // A value without drop glue in a plain `malloc` block: the check
        // and the free in one look at the record.
        if COMPILED_IN && !std::mem::needs_drop::<T>() {
            // SAFETY: the box owns its block, from `dealloc`'s allocator,
            // and is done with it; the value needs no drop.
            if unsafe { free_plain(ptr.cast::<u8>() as usize, &self.dealloc, site) } {
                return;
            }
        }
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
    /// A pointer no C allocator returned (the middle of a tracked block,
    /// managed memory, a Rust heap block, the stack, static data) is
    /// reported (`InvalidFree`) and gives `None`: it is not adopted.
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
        if !adopt(
            ptr.as_ptr() as usize,
            std::mem::size_of::<T>(),
            dealloc.family(),
            Site::caller(),
            Some(std::any::type_name::<T>),
        ) {
            return None;
        }
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

    /// Adopts `len` elements at `ptr` from C's `malloc` family. `NULL`, and
    /// a pointer no C allocator returned (reported, as for
    /// [`CBox::from_raw`]), give `None`.
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
        if !adopt(
            ptr as usize,
            std::mem::size_of::<T>().saturating_mul(len),
            dealloc.family(),
            Site::caller(),
            Some(std::any::type_name::<[T]>),
        ) {
            return None;
        }
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
    /// (`UnterminatedString`, reported), and a pointer no C allocator
    /// returned (`InvalidFree`, reported, as for `CBox::from_raw`).
    ///
    /// Its own name, not `from_raw`: `CBox::from_raw(p)` of a `*mut c_char`
    /// adopts one `c_char`, and a shared name would need a turbofish at
    /// every call.
    ///
    /// ```
    /// use ffi_check::CBox;
    /// // SAFETY: strdup returns a fresh malloc'd copy (or NULL).
    /// let p = unsafe { libc::strdup(c"from C".as_ptr()) };
    /// // SAFETY: p is NULL or a NUL-terminated malloc'd string nobody else owns.
    /// let s = unsafe { CBox::from_raw_cstr(p) }.expect("strdup succeeds");
    /// assert_eq!(s.to_bytes(), b"from C");
    /// ```
    ///
    /// # Safety
    /// `ptr` is null or points to a NUL-terminated string allocated by
    /// `malloc` and owned by nobody else.
    #[track_caller]
    pub unsafe fn from_raw_cstr(ptr: *mut c_char) -> Option<CBox<CStr>> {
        // SAFETY: forwarded contract.
        unsafe { Self::from_raw_cstr_with(ptr, Deallocator::LIBC) }
    }

    /// Adopts a C string from a library's own allocator.
    ///
    /// # Safety
    /// As [`CBox::from_raw_cstr`], with `dealloc`'s allocator.
    #[track_caller]
    pub unsafe fn from_raw_cstr_with(ptr: *mut c_char, dealloc: Deallocator) -> Option<CBox<CStr>> {
        if ptr.is_null() {
            return None;
        }
        let site = Site::caller();
        // SAFETY: forwarded contract; the length is bounded by the tracked
        // region when there is one.
        let len = unsafe { crate::convert::c_strlen(ptr, Some(site))? };
        if !adopt(
            ptr as usize,
            len + 1,
            dealloc.family(),
            site,
            Some(std::any::type_name::<CStr>),
        ) {
            return None;
        }
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
