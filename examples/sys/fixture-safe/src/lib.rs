//! A safe wrapper over tagset (`ffi-check-fixture-sys`), written as one is
//! written over any `-sys` crate: raw calls, `CString`s, an owner that frees
//! in `Drop`. Nothing here names ffi-check. The tests build the `-sys`
//! crate with its `ffi-check` feature, so every call below is checked, and
//! a report names the line of this crate that made the call.
//!
//! Besides strings in and out, the wrapper shows three ways C holds on to
//! Rust memory: a boxed closure handed to C as a destructor's user data
//! ([`TagSet::on_drop`]), an array of descriptors of Rust buffers read for
//! one call ([`TagSet::add_all`]), and a string C keeps the pointer of,
//! kept alive by the wrapper ([`TagSet::set_label`]).
//!
//! ```
//! let mut tags = ffi_check_fixture_safe::TagSet::new();
//! assert_eq!(tags.add("red"), Ok(true));
//! assert_eq!(tags.add("red"), Ok(false));
//! tags.add("blue").unwrap();
//! assert_eq!(tags.join(", "), "red, blue");
//! ```
//!
//! A length cast with `as` before a call is out of the checker's sight (the
//! checked binding gets the `c_int` C gets), so the casts that can lose a
//! value are linted instead: lengths go through `try_from`.

#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::ffi::{c_void, CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;

use ffi_check_fixture_sys as sys;

pub mod mistakes;

/// Why a tag was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The tag holds a NUL byte.
    Nul,
    /// The set's limits refuse it, or memory ran out.
    Refused,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Nul => "a tag holds no NUL byte",
            Error::Refused => "the set refused the tag",
        })
    }
}

impl std::error::Error for Error {}

/// A set of text tags, in the order they were added, with an optional
/// label and a closure to run when it drops.
pub struct TagSet {
    raw: NonNull<sys::tagset>,
    /// The label C points to (`tagset_set_label` keeps the pointer, not a
    /// copy): kept alive here until it is replaced or the set is freed.
    /// Dropped after `Drop::drop` has freed the set.
    label: Option<CString>,
}

/// What [`TagSet::on_drop`] hands to C as user data: a thin pointer to a
/// boxed closure.
type OnDrop = Box<dyn FnOnce() + Send>;

impl TagSet {
    /// An empty set without limits.
    pub fn new() -> TagSet {
        // SAFETY: no preconditions.
        let raw = unsafe { sys::tagset_new() };
        TagSet {
            raw: NonNull::new(raw).expect("tagset_new: out of memory"),
            label: None,
        }
    }

    /// An empty set of at most `max_tags` tags of at most `max_len` bytes
    /// (0: no limit).
    pub fn with_limits(max_tags: usize, max_len: usize) -> TagSet {
        let set = TagSet::new();
        let limits = sys::tagset_limits { max_tags, max_len };
        // SAFETY: a live set; the limits are plain numbers.
        unsafe { sys::tagset_set_limits(set.raw.as_ptr(), limits) };
        set
    }

    /// Adds `tag`: `Ok(true)` if it is new, `Ok(false)` if it was there.
    pub fn add(&mut self, tag: &str) -> Result<bool, Error> {
        let tag = CString::new(tag).map_err(|_| Error::Nul)?;
        // SAFETY: a live set and a C string that outlives the call.
        let rc = unsafe { sys::tagset_add(self.raw.as_ptr(), tag.as_ptr()) };
        result(rc)
    }

    /// Adds the bytes of `tag` (no NUL needed), as [`add`](TagSet::add).
    pub fn add_bytes(&mut self, tag: &[u8]) -> Result<bool, Error> {
        if tag.contains(&0) {
            return Err(Error::Nul);
        }
        let len = c_int::try_from(tag.len()).map_err(|_| Error::Refused)?;
        // SAFETY: a live set and `len` readable bytes.
        let rc = unsafe { sys::tagset_add_bytes(self.raw.as_ptr(), tag.as_ptr().cast(), len) };
        result(rc)
    }

    /// Adds each of `tags` in one call; returns how many were added (a tag
    /// already there, refused by the limits, or holding a NUL is skipped).
    pub fn add_all(&mut self, tags: &[&str]) -> usize {
        let items: Vec<sys::tagset_bytes> = tags
            .iter()
            .map(|t| sys::tagset_bytes {
                bytes: t.as_ptr().cast(),
                len: t.len(),
            })
            .collect();
        // SAFETY: a live set and `items.len()` descriptors, each of `len`
        // readable bytes, all alive for the call (C copies what it adds).
        let added = unsafe { sys::tagset_add_all(self.raw.as_ptr(), items.as_ptr(), items.len()) };
        usize::try_from(added).unwrap_or(0)
    }

    /// Sets the set's label. C keeps the pointer, so the string is kept in
    /// the `TagSet` until it is replaced or the set is freed.
    pub fn set_label(&mut self, label: &str) -> Result<(), Error> {
        let label = CString::new(label).map_err(|_| Error::Nul)?;
        // SAFETY: a live set and a C string that stays alive (in
        // `self.label`) until it is replaced or the set is freed.
        unsafe { sys::tagset_set_label(self.raw.as_ptr(), label.as_ptr()) };
        // The earlier label, which C no longer points to, drops here.
        self.label = Some(label);
        Ok(())
    }

    /// The set's label, copied.
    pub fn label(&self) -> Option<String> {
        // SAFETY: a live set; the label it returns is valid until it is
        // replaced, and it is copied at once.
        unsafe {
            let p = sys::tagset_label(self.raw.as_ptr());
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }

    /// Runs `f` when the set is freed (C calls it from `tagset_free`, as a
    /// destructor). A later `on_drop` replaces `f`, which then runs at once.
    pub fn on_drop(&mut self, f: impl FnOnce() + Send + 'static) {
        unsafe extern "C" fn run(user: *mut c_void) {
            // SAFETY: `user` is the `Box<OnDrop>` of `on_drop`, given back
            // by C once.
            let f = unsafe { Box::from_raw(user.cast::<OnDrop>()) };
            // A panic may not unwind into C.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                std::process::abort();
            }
        }
        let f: Box<OnDrop> = Box::new(Box::new(f));
        let user = Box::into_raw(f).cast::<c_void>();
        // SAFETY: a live set, and a callback that takes back the user data
        // it is given, which C calls once.
        unsafe { sys::tagset_on_free(self.raw.as_ptr(), Some(run), user) };
    }

    /// Whether `tag` is in the set.
    pub fn contains(&self, tag: &str) -> bool {
        let Ok(tag) = CString::new(tag) else {
            return false;
        };
        // SAFETY: a live set and a C string that outlives the call.
        unsafe { sys::tagset_contains(self.raw.as_ptr(), tag.as_ptr()) == 1 }
    }

    /// The number of tags.
    pub fn len(&self) -> usize {
        // SAFETY: a live set.
        unsafe { sys::tagset_len(self.raw.as_ptr()) }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tag at `index`, copied.
    pub fn get(&self, index: usize) -> Option<String> {
        // SAFETY: a live set; the tag it returns is valid until the set
        // changes, and it is copied at once.
        unsafe {
            let p = sys::tagset_get(self.raw.as_ptr(), index);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }

    /// Calls `f` with each tag in order until it returns `false`; returns
    /// how many tags it saw.
    pub fn each(&self, mut f: impl FnMut(&str) -> bool) -> usize {
        unsafe extern "C" fn visit(user: *mut c_void, tag: *const c_char) -> c_int {
            // SAFETY: `user` is the `&mut dyn FnMut` below, alive for the
            // walk; the tag is a C string of the set.
            let (f, tag) = unsafe {
                (
                    &mut *user.cast::<&mut dyn FnMut(&str) -> bool>(),
                    CStr::from_ptr(tag),
                )
            };
            c_int::from(!f(&tag.to_string_lossy()))
        }
        let mut f: &mut dyn FnMut(&str) -> bool = &mut f;
        let user = (&mut f as *mut &mut dyn FnMut(&str) -> bool).cast::<c_void>();
        // SAFETY: a live set, a callback that takes back the user data it is
        // given, and that user data alive for the call.
        unsafe { sys::tagset_each(self.raw.as_ptr(), Some(visit), user) }
    }

    /// The tags joined with `sep`.
    pub fn join(&self, sep: &str) -> String {
        let joined = self.join_c(sep);
        joined.to_string()
    }

    /// The C string of `tagset_join`, owned.
    fn join_c(&self, sep: &str) -> Joined {
        let sep = CString::new(sep.replace('\0', "")).expect("no NUL left");
        // SAFETY: a live set and a C string that outlives the call.
        let p = unsafe { sys::tagset_join(self.raw.as_ptr(), sep.as_ptr()) };
        Joined(NonNull::new(p).expect("tagset_join: out of memory"))
    }
}

impl Default for TagSet {
    fn default() -> TagSet {
        TagSet::new()
    }
}

impl Drop for TagSet {
    fn drop(&mut self) {
        // SAFETY: the set is live and freed once, here.
        unsafe { sys::tagset_free(self.raw.as_ptr()) };
    }
}

/// A string of `tagset_join`, freed with `tagset_string_free` on drop.
struct Joined(NonNull<c_char>);

impl Joined {
    fn as_c_str(&self) -> &CStr {
        // SAFETY: tagset_join returns a NUL-terminated string, live until
        // this owner frees it.
        unsafe { CStr::from_ptr(self.0.as_ptr()) }
    }
}

impl fmt::Display for Joined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_c_str().to_string_lossy())
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        // SAFETY: the string came from tagset_join and is freed once, here.
        unsafe { sys::tagset_string_free(self.0.as_ptr()) }
    }
}

fn result(rc: c_int) -> Result<bool, Error> {
    match rc {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(Error::Refused),
    }
}
