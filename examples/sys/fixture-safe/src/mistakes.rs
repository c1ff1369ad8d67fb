//! Mistakes a wrapper makes, kept here on purpose so that the tests can show
//! the checked bindings catching each one at its line. Each is a variant of
//! a correct method of [`TagSet`]; never use them.

use std::ffi::CString;
use std::mem::ManuallyDrop;

use ffi_check_fixture_sys as sys;

use crate::{result, Error, TagSet};

impl TagSet {
    /// [`add`](TagSet::add), passing the pointer of a temporary: the
    /// `CString` is freed at the end of the `let`, before C reads it.
    #[allow(unknown_lints, renamed_and_removed_lints)]
    #[allow(temporary_cstring_as_ptr, dangling_pointers_from_temporaries)]
    pub fn add_with_dangling_pointer(&mut self, tag: &str) -> Result<bool, Error> {
        let tag = CString::new(tag).unwrap().as_ptr();
        // SAFETY: none: `tag` dangles, which is the mistake.
        let rc = unsafe { sys::tagset_add(self.raw.as_ptr(), tag) }; // mistake: dangling
        result(rc)
    }

    /// [`set_label`](TagSet::set_label), letting the `CString` drop at the
    /// end of the method while C keeps its pointer (`tagset_set_label` keeps
    /// it, not a copy).
    pub fn set_label_dropping_it(&mut self, label: &str) {
        let label = CString::new(label).unwrap();
        // SAFETY: none: C keeps the pointer after `label` drops, which is
        // the mistake.
        unsafe { sys::tagset_set_label(self.raw.as_ptr(), label.as_ptr()) }; // mistake: kept
    } // mistake: `label` drops here while C keeps it

    /// [`join`](TagSet::join), also freeing the C string by hand: its owner
    /// frees it again when it drops.
    pub fn join_freeing_twice(&self, sep: &str) -> String {
        let joined = self.join_c(sep);
        let text = joined.to_string();
        // SAFETY: none: the owner frees the string again, which is the
        // mistake.
        unsafe { sys::tagset_string_free(joined.0.as_ptr()) }; // mistake: first free
        text
    }

    /// [`join`](TagSet::join), forgetting to free the C string.
    pub fn join_leaking(&self, sep: &str) -> String {
        let joined = ManuallyDrop::new(self.join_c(sep)); // mistake: leaked
        joined.to_string()
    }
}
