//! Builds the C word list the way a `-sys` crate builds its library: the
//! include directory of ffi-check's C header comes from its `links`
//! metadata, as `DEP_FFI_CHECK_INCLUDE`.

fn main() {
    let include = std::env::var("DEP_FFI_CHECK_INCLUDE")
        .expect("ffi-check exports its include directory (links = \"ffi_check\")");
    cc::Build::new()
        .file("csrc/wordlist.c")
        .include(&include)
        .warnings(true)
        .extra_warnings(true)
        .compile("wordlist");
    println!("cargo:rerun-if-changed=csrc");
}
