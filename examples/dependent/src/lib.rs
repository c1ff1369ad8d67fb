//! A crate that depends on ffi-check the way a `-sys` crate and its safe
//! wrapper do. Its C code (`csrc/wordlist.c`) is ordinary C that includes
//! `ffi_check_redirect.h`, found through `DEP_FFI_CHECK_INCLUDE` in
//! `build.rs`, so its `malloc`, `realloc`, `strdup` and `free` are tracked by
//! ffi-check with the C file and line that made each block.
//!
//! ```
//! let mut words = ffi_check_dependent::WordList::new();
//! words.push("hello");
//! words.push("world");
//! assert_eq!(words.len(), 2);
//! assert_eq!(words.get(1).as_deref(), Some("world"));
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::os::raw::{c_char, c_int};

use ffi_check::{call, str_from_c, CBox};

/// The C library's declarations (`csrc/wordlist.h`).
pub mod sys {
    use std::os::raw::{c_char, c_int};

    /// Opaque `wordlist`.
    #[repr(C)]
    pub struct Wordlist {
        _private: [u8; 0],
    }

    extern "C" {
        /// An empty list; NULL when out of memory.
        pub fn wl_new() -> *mut Wordlist;
        /// Appends a copy of `word`; 0 on success.
        pub fn wl_add(wl: *mut Wordlist, word: *const c_char) -> c_int;
        /// The number of words.
        pub fn wl_len(wl: *const Wordlist) -> usize;
        /// Word `i` (owned by the list), or NULL past the end.
        pub fn wl_get(wl: *const Wordlist, i: usize) -> *const c_char;
        /// Frees the list and its words.
        pub fn wl_free(wl: *mut Wordlist);
        /// The bug on purpose: frees the list but not its words.
        pub fn wl_free_forgetting_words(wl: *mut Wordlist);
    }
}

/// A list of words kept by the C library.
pub struct WordList {
    raw: *mut sys::Wordlist,
}

impl WordList {
    /// An empty list.
    pub fn new() -> WordList {
        // SAFETY: wl_new has no preconditions.
        let raw = unsafe { call!(sys::wl_new()) };
        assert!(!raw.is_null(), "out of memory");
        WordList { raw }
    }

    /// Appends a copy of `word` (cut at an interior NUL, which is reported).
    pub fn push(&mut self, word: &str) {
        let word = CBox::from_str(word);
        // SAFETY: `raw` is a live list; the word is copied by C.
        let rc: c_int = unsafe { call!(sys::wl_add(self.raw, &word)) };
        assert_eq!(rc, 0, "out of memory");
    }

    /// The number of words.
    pub fn len(&self) -> usize {
        // SAFETY: `raw` is a live list.
        unsafe { call!(sys::wl_len(self.raw.cast_const())) }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Word `i`, when there is one.
    pub fn get(&self, i: usize) -> Option<String> {
        // SAFETY: `raw` is a live list.
        let p: *const c_char = unsafe { call!(sys::wl_get(self.raw.cast_const(), i)) };
        // SAFETY: a non-null result is a NUL-terminated word the list owns,
        // copied here before the list can change.
        (!p.is_null()).then(|| unsafe { str_from_c(p) }.to_owned())
    }

    /// Frees the list the wrong way, leaking its words: for the leak tests.
    pub fn free_forgetting_words(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `raw` is a live list, freed once (`self` is not dropped).
        unsafe { call!(sys::wl_free_forgetting_words(this.raw)) }
    }
}

impl Default for WordList {
    fn default() -> WordList {
        WordList::new()
    }
}

impl Drop for WordList {
    fn drop(&mut self) {
        // SAFETY: `raw` is a live list, freed once.
        unsafe { call!(sys::wl_free(self.raw)) }
    }
}
