//! Runs the generator as a crate using it would: over libsqlite3-sys's
//! bundled bindings (found next to the C sources libsqlite3-sys exports as
//! `DEP_SQLITE3_INCLUDE`) and over `src/shapes_raw.rs`. Also writes what the
//! tests compare against (`facts.rs`): the bindings file's path, the
//! generated text and the report.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    // libsqlite3-sys with `bundled` (and without `buildtime_bindgen`) uses
    // the bindings it ships beside its C sources.
    let include = env::var("DEP_SQLITE3_INCLUDE").expect(
        "libsqlite3-sys exports the directory of its bundled sources (links = \"sqlite3\")",
    );
    let sqlite3 = Path::new(&include).join("bindgen_bundled_version.rs");
    let sqlite3_out = out_dir.join("sqlite3_checked.rs");
    let sqlite3_report = ffi_check_bindgen::generate(&sqlite3, "libsqlite3_sys", &sqlite3_out)
        .unwrap_or_else(|e| panic!("{e}"));

    let shapes = Path::new("src/shapes_raw.rs");
    let shapes_out = out_dir.join("shapes_checked.rs");
    let shapes_report = ffi_check_bindgen::generate(shapes, "crate::shapes_raw", &shapes_out)
        .unwrap_or_else(|e| panic!("{e}"));

    let mut facts = String::new();
    let _ = writeln!(
        facts,
        "pub const SQLITE3_BINDINGS: &str = {:?};",
        sqlite3.display().to_string()
    );
    for (name, file, report) in [
        ("SQLITE3", &sqlite3_out, &sqlite3_report),
        ("SHAPES", &shapes_out, &shapes_report),
    ] {
        let _ = writeln!(
            facts,
            "pub const {name}_CHECKED: &str = include_str!({:?});",
            file.display().to_string()
        );
        let _ = writeln!(
            facts,
            "pub const {name}_WRAPPED: &[&str] = &{:?};",
            report.wrapped()
        );
        let skipped: Vec<String> = report.skipped().iter().map(ToString::to_string).collect();
        let _ = writeln!(facts, "pub const {name}_SKIPPED: &[&str] = &{skipped:?};");
        let unchecked: Vec<String> = report.unchecked().iter().map(ToString::to_string).collect();
        let _ = writeln!(
            facts,
            "pub const {name}_UNCHECKED: &[&str] = &{unchecked:?};"
        );
    }
    std::fs::write(out_dir.join("facts.rs"), facts).unwrap();

    println!("cargo:rerun-if-changed={}", sqlite3.display());
    println!("cargo:rerun-if-changed=src/shapes_raw.rs");
    println!("cargo:rerun-if-changed=build.rs");
}
