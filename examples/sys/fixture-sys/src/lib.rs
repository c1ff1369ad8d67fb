//! Raw bindings to tagset (`csrc/tagset.h`), a small C library of text
//! tags, shaped like a `-sys` crate: the C is built by `build.rs`, and the
//! bindings are bindgen's output, checked in (`src/bindings.rs`, made by
//! `regenerate-bindings.sh`) as libsqlite3-sys and libz-sys ship theirs.
//!
//! ## The `ffi-check` feature
//!
//! With it, every function here has the same name and signature and calls
//! the C function through `ffi_check::call!`: the build script generates the
//! wrappers from `src/bindings.rs` with `ffi-check-bindgen`, and this file
//! includes them at the crate root, where they shadow the raw functions that
//! `pub use bindings::*` re-exports. The C library is also compiled with
//! `ffi_check_redirect.h`, so its `malloc` and `free` are ffi-check's.
//!
//! Code that calls these functions changes nothing: its tests turn the
//! feature on (a dev-dependency with `features = ["ffi-check"]`, or a
//! feature of its own that forwards it), and each violation is reported at
//! the line of that code that made the call. `ffi-check-fixture-safe` is
//! such a crate.

/// bindgen's output, as generated.
#[allow(non_camel_case_types)]
mod bindings {
    include!("bindings.rs");
}

pub use bindings::*;

#[cfg(feature = "ffi-check")]
include!(concat!(env!("OUT_DIR"), "/checked.rs"));

/// Whether the functions of this crate are the checked ones.
pub const CHECKED: bool = cfg!(feature = "ffi-check");
