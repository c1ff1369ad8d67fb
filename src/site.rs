//! Sites: where in the source an event happened (`file:line:col`).
//!
//! A site costs one word. Rust sites are the `&'static Location` that
//! `#[track_caller]` hands out for free; C sites (`__FILE__`, `__LINE__` from
//! `csrc/ffi_check.h`) are interned once per distinct line and leaked, so they
//! are `'static` too. Recording a site is therefore cheap enough to do at every
//! allocation, pin and free, which is what lets mode 1 name the line of a
//! first free without paying for a backtrace.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::Location;
use std::sync::{Mutex, MutexGuard};

/// A place in the source code: a Rust `file:line:col` or a C `file:line`.
///
/// ```
/// let site = ffi_check::Site::caller();
/// assert!(site.file().ends_with(".rs"));
/// assert!(site.line() > 0);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Site(NonZeroUsize);

// Invariant: the word is either the address of a `&'static Location<'static>`
// (low bit clear) or the address of a leaked `CSite` plus one (low bit set).
// Both types are aligned to at least 4, so the low bit is free for the tag.
const C_TAG: usize = 1;

struct CSite {
    file: &'static str,
    line: u32,
}

/// The interned C sites: (`__FILE__` address, line) → the tagged word.
static C_SITES: Mutex<Option<HashMap<(usize, u32), usize>>> = Mutex::new(None);

/// The C site table's lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _sites: MutexGuard<'static, Option<HashMap<(usize, u32), usize>>>,
}

/// Takes the C site table's lock for `fork`'s prepare handler; dropping the
/// value releases it.
pub(crate) fn lock_for_fork() -> ForkLock {
    ForkLock {
        _sites: C_SITES.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

impl Site {
    /// The site of the caller (through `#[track_caller]` frames).
    #[track_caller]
    #[inline]
    pub fn caller() -> Site {
        Site::from_location(Location::caller())
    }

    /// The site as one word (for hashing: equal words, equal sites).
    #[inline]
    pub(crate) fn word(self) -> usize {
        self.0.get()
    }

    /// Wraps a Rust location.
    #[inline]
    pub fn from_location(loc: &'static Location<'static>) -> Site {
        let addr = loc as *const Location<'static> as usize;
        Site(NonZeroUsize::new(addr).expect("references are non-null"))
    }

    /// Interns a C `__FILE__`/`__LINE__` pair. A null `file` gives `None`.
    ///
    /// # Safety
    /// `file`, when not null, points to a NUL-terminated string that lives
    /// for the rest of the program (a string literal, as `__FILE__` is).
    pub(crate) unsafe fn from_c(file: *const libc::c_char, line: i32) -> Option<Site> {
        if file.is_null() {
            return None;
        }
        thread_local! {
            // A small direct-mapped cache in front of the shared table: C
            // allocates from few lines, many times, on many threads.
            static CACHE: [Cell<(usize, u32, usize)>; 16] =
                const { [const { Cell::new((0, 0, 0)) }; 16] };
        }
        let line = u32::try_from(line).unwrap_or(0);
        let key = (file as usize, line);
        let slot = (key.0 >> 3)
            .wrapping_add(key.1 as usize)
            .wrapping_mul(0x9E37_79B9)
            >> 7
            & 15;
        if let Ok(entry) = CACHE.try_with(|c| c[slot].get()) {
            if entry.0 == key.0 && entry.1 == key.1 && entry.2 != 0 {
                return Some(Site(
                    NonZeroUsize::new(entry.2).expect("cached sites are non-zero"),
                ));
            }
        }
        let mut sites = C_SITES.lock().unwrap_or_else(|e| e.into_inner());
        let map = sites.get_or_insert_with(HashMap::new);
        let addr = *map.entry(key).or_insert_with(|| {
            // SAFETY: the caller promises a NUL-terminated, 'static string.
            let bytes = unsafe { std::ffi::CStr::from_ptr(file) }.to_bytes();
            let file: &'static str =
                Box::leak(String::from_utf8_lossy(bytes).into_owned().into_boxed_str());
            Box::leak(Box::new(CSite { file, line })) as *const CSite as usize
        });
        drop(sites);
        let word = addr | C_TAG;
        let _ = CACHE.try_with(|c| c[slot].set((key.0, key.1, word)));
        Some(Site(NonZeroUsize::new(word).expect("non-null")))
    }

    fn decode(self) -> Decoded {
        let word = self.0.get();
        if word & C_TAG == 0 {
            // SAFETY: by the invariant above, an untagged word is the address
            // of a `&'static Location<'static>`.
            Decoded::Rust(unsafe { &*(word as *const Location<'static>) })
        } else {
            // SAFETY: by the invariant above, a tagged word is one past the
            // address of a leaked, never-freed `CSite`.
            Decoded::C(unsafe { &*((word & !C_TAG) as *const CSite) })
        }
    }

    /// The source file.
    pub fn file(&self) -> &'static str {
        match self.decode() {
            Decoded::Rust(l) => l.file(),
            Decoded::C(c) => c.file,
        }
    }

    /// The line (1-based).
    pub fn line(&self) -> u32 {
        match self.decode() {
            Decoded::Rust(l) => l.line(),
            Decoded::C(c) => c.line,
        }
    }

    /// The column, for Rust sites.
    pub fn column(&self) -> Option<u32> {
        match self.decode() {
            Decoded::Rust(l) => Some(l.column()),
            Decoded::C(_) => None,
        }
    }

    /// True when the site is in C code.
    pub fn is_c(&self) -> bool {
        matches!(self.decode(), Decoded::C(_))
    }
}

enum Decoded {
    Rust(&'static Location<'static>),
    C(&'static CSite),
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decode() {
            Decoded::Rust(l) => write!(f, "{}:{}:{}", l.file(), l.line(), l.column()),
            Decoded::C(c) => write!(f, "{}:{} (C)", c.file, c.line),
        }
    }
}

impl fmt::Debug for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
