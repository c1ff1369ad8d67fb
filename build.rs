use std::env;

fn main() {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").unwrap();
    let out_dir = env::var("OUT_DIR").unwrap();
    let include = format!("{manifest_dir}/csrc");

    // The C fixture library used by tests, examples and benches. It is not
    // linked into the library itself (cargo_metadata(false) suppresses
    // rustc-link-lib); targets that want it link it by name.
    cc::Build::new()
        .file("csrc/fixtures/fixtures.c")
        .include(&include)
        .warnings(true)
        .extra_warnings(true)
        .cargo_metadata(false)
        .compile("ffi_check_fixtures");

    println!("cargo:rustc-link-search=native={out_dir}");
    println!("cargo:include={include}");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build.rs");
}
