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
