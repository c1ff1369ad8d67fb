//! The output of ffi-check-bindgen, compiled and linked, for the generator's
//! tests (`bindings/tests/`): its build script generates checked wrappers
//! for libsqlite3-sys's bundled bindings and for `src/shapes_raw.rs`, and
//! this crate includes them.
//!
//! [`sqlite3`] is also the recipe for the user of a `-sys` crate that does
//! not ship checked bindings: the `-sys` crate's own items, each function
//! replaced by its checked wrapper.

/// libsqlite3-sys with every non-variadic function checked: the glob brings
/// its types, constants and statics (and its raw functions, which the
/// wrappers defined here shadow).
pub mod sqlite3 {
    pub use libsqlite3_sys::*;
    include!(concat!(env!("OUT_DIR"), "/sqlite3_checked.rs"));
}

/// The awkward shapes, raw.
pub mod shapes_raw;

/// The awkward shapes, checked.
pub mod shapes {
    pub use crate::shapes_raw::*;
    include!(concat!(env!("OUT_DIR"), "/shapes_checked.rs"));
}

mod shapes_c;

/// What the build script generated: the bindings file it read, the text it
/// wrote and the report, for the tests to hold against the bindings.
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/facts.rs"));
}
