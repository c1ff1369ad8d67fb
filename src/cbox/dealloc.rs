//! [`Deallocator`]: a C deallocator with a name, and the allocator family
//! it stands for.

use std::ffi::c_void;
use std::fmt;

use crate::family::{family_of_deallocator, FAMILY_MALLOC};

/// A C deallocator with a name: the family a piece of C memory belongs to.
///
/// Memory adopted with a deallocator (`CBox::from_raw_with`, [`c_adopt_with`](crate::c_adopt_with))
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
    pub(super) name: &'static str,
    pub(super) free: unsafe extern "C" fn(*mut c_void),
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

    /// The destroy function of an opaque C handle, `unsafe extern "C"
    /// fn(*mut T)` as C declares it (`void db_close(db *)`), as a
    /// deallocator: a handle adopted with it (`CBox::from_raw_with`) is
    /// destroyed exactly once on drop, and a second destroy of it is
    /// `DoubleFree` like any C free. No shim function is needed.
    ///
    /// ```
    /// use ffi_check::{CBox, Deallocator};
    /// #[repr(C)]
    /// pub struct Db { _private: [u8; 0] }
    /// extern "C" fn db_open() -> *mut Db {
    ///     // SAFETY: malloc has no preconditions.
    ///     unsafe { libc::malloc(16) }.cast()
    /// }
    /// unsafe extern "C" fn db_close(db: *mut Db) {
    ///     // SAFETY: db came from db_open and is closed once.
    ///     unsafe { libc::free(db.cast()) }
    /// }
    /// const DB_CLOSE: Deallocator = Deallocator::destroy("db_close", db_close);
    /// // SAFETY: db_open returns a fresh handle that nobody else owns.
    /// let db = unsafe { CBox::from_raw_with(db_open(), DB_CLOSE) }.expect("opened");
    /// drop(db); // db_close runs here, once
    /// ```
    pub const fn destroy<T>(
        name: &'static str,
        destroy: unsafe extern "C" fn(*mut T),
    ) -> Deallocator {
        // SAFETY: `*mut T` and `*mut c_void` are both thin pointers, which
        // Rust's ABI rules make compatible as arguments: calling `destroy`
        // through the `*mut c_void` signature passes the same pointer the
        // same way, and it is only ever called with a pointer adopted as `T`.
        let free = unsafe {
            std::mem::transmute::<unsafe extern "C" fn(*mut T), unsafe extern "C" fn(*mut c_void)>(
                destroy,
            )
        };
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
    pub(super) fn is_libc(&self) -> bool {
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
