//! Compiles nothing: the C API (`csrc/ffi_check.h`) is implemented in Rust.
//! With `links = "ffi_check"`, the header directory reaches the build
//! scripts of dependent crates as `DEP_FFI_CHECK_INCLUDE`.

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:include={manifest_dir}/csrc");
    println!("cargo:rerun-if-changed=build.rs");
}
