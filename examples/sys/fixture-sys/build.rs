//! Builds the C library, as a `-sys` crate does. With the `ffi-check`
//! feature it also
//!
//! - compiles the C with `ffi_check_redirect.h` force-included (found
//!   through `DEP_FFI_CHECK_INCLUDE`), so that the library's `malloc`,
//!   `realloc` and `free` are ffi-check's: its objects are tracked C memory,
//!   and a double free of one is reported, not carried out;
//! - generates the checked bindings from the pre-generated `src/bindings.rs`
//!   into `OUT_DIR/checked.rs`, which `src/lib.rs` includes in place of the
//!   raw functions.

fn main() {
    let mut build = cc::Build::new();
    build
        .file("csrc/tagset.c")
        .include("csrc")
        .warnings(true)
        .extra_warnings(true);

    #[cfg(feature = "ffi-check")]
    {
        let include = std::env::var("DEP_FFI_CHECK_INCLUDE")
            .expect("ffi-check exports its include directory (links = \"ffi_check\")");
        build
            .include(&include)
            .flag("-include")
            .flag("ffi_check_redirect.h");

        let out_dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
        let out = std::path::Path::new(&out_dir).join("checked.rs");
        let report = ffi_check_bindgen::generate("src/bindings.rs".as_ref(), "bindings", &out)
            .unwrap_or_else(|e| panic!("{e}"));
        for skipped in report.skipped() {
            println!("cargo:warning=not checked: {skipped}");
        }
        println!("cargo:rerun-if-changed=src/bindings.rs");
    }
    build.compile("tagset");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build.rs");
}
