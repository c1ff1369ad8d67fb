use std::env;
use std::path::Path;

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

    // One fixture as a shared library, for `watch_library`: the tests dlopen
    // it by the absolute path below. Built with the compiler cc picked.
    let shared = Path::new(&out_dir).join("libffi_check_shared_fixture.so");
    let compiler = cc::Build::new().get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-Wall", "-Wextra", "-o"])
        .arg(&shared)
        .arg(Path::new(&manifest_dir).join("csrc/fixtures/shared.c"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler for shared.c: {e}"));
    assert!(status.success(), "compiling csrc/fixtures/shared.c failed");
    println!(
        "cargo:rustc-env=FFI_CHECK_SHARED_FIXTURE={}",
        shared.display()
    );

    println!("cargo:rustc-link-search=native={out_dir}");
    println!("cargo:include={include}");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build.rs");
}
